//! The userspace DNS server: hickory-server's UDP and TCP listeners (EDNS0 sizes honoured, TC
//! set on UDP answers that do not fit) with a handler of our own that answers from the latest
//! zone the daemon handed over, forwards or refuses names outside the zones, and answers
//! SERVFAIL until the first Marathon state arrives.
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result};
use hickory_proto::{
    op::{Edns, Header, HeaderCounts, Message, Metadata, OpCode, ResponseCode},
    rr::{DNSClass, Record, RecordType},
};
use hickory_server::{
    Server,
    net::{runtime::Time, xfer::Protocol},
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    zone_handler::MessageResponseBuilder,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::watch,
    time::timeout,
};
use tracing::{debug, info, warn};

use super::{answer::Answers, stats::DnsStats, zone::Zone};

/// How long an upstream has to answer a forwarded query.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// An idle TCP client is dropped after this.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// The largest UDP answer we send, whatever a client advertises (RFC 9715's advice).
const MAX_UDP_PAYLOAD: u16 = 1232;

/// How the server answers.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub domain: String,
    pub ttl: u32,
    pub upstream: Option<SocketAddr>,
}

/// The listening sockets, bound before anything else starts so that a taken port fails `lb run`.
pub struct Bound {
    udp: Vec<UdpSocket>,
    tcp: Vec<TcpListener>,
    pub addrs: Vec<SocketAddr>,
}

/// Binds UDP and TCP on every address (TCP on the port UDP got, for port 0).
pub async fn bind(listen: &[SocketAddr]) -> Result<Bound> {
    let mut b = Bound {
        udp: Vec::new(),
        tcp: Vec::new(),
        addrs: Vec::new(),
    };
    for addr in listen {
        let udp = UdpSocket::bind(addr)
            .await
            .with_context(|| format!("binding --dns-listen {addr} (UDP)"))?;
        let local = udp.local_addr()?;
        let tcp = TcpListener::bind(local)
            .await
            .with_context(|| format!("binding --dns-listen {local} (TCP)"))?;
        b.udp.push(udp);
        b.tcp.push(tcp);
        b.addrs.push(local);
    }
    Ok(b)
}

/// Serves until the process ends: one task turns each zone the daemon sends into records,
/// hickory-server's tasks answer from the newest.
pub fn spawn(
    bound: Bound,
    cfg: ServeConfig,
    mut zones: watch::Receiver<Option<Arc<Zone>>>,
    stats: Arc<DnsStats>,
) {
    stats.enable();
    let (answers_tx, answers) = watch::channel::<Option<Arc<Answers>>>(None);
    let ttl = cfg.ttl;
    let prep_stats = stats.clone();
    tokio::spawn(async move {
        let mut serial: u32 = 0;
        let mut last: Option<Arc<Answers>> = None;
        loop {
            let zone = zones.borrow_and_update().clone();
            if let Some(zone) = zone
                && last.as_ref().is_none_or(|a| !Arc::ptr_eq(a.zone(), &zone))
            {
                serial = serial.wrapping_add(1);
                // Only the names that changed since the last zone are made again.
                let a = match &last {
                    Some(prev) => prev.next(zone, serial),
                    None => Answers::of(zone, ttl, serial),
                };
                prep_stats.zone(a.names, a.records, serial);
                debug!(
                    names = a.names,
                    records = a.records,
                    serial,
                    "DNS zone updated"
                );
                let a = Arc::new(a);
                last = Some(Arc::clone(&a));
                answers_tx.send_replace(Some(a));
            }
            if zones.changed().await.is_err() {
                return;
            }
        }
    });
    let handler = Handler {
        outline: Answers::new(
            &Zone {
                domain: cfg.domain.clone(),
                ..Zone::default()
            },
            ttl,
            0,
        ),
        answers,
        upstream: cfg.upstream,
        stats,
        turn: AtomicUsize::new(0),
    };
    let mut server = Server::new(handler);
    for s in bound.udp {
        server.register_socket(s);
    }
    for l in bound.tcp {
        server.register_listener(l, TCP_IDLE, 64);
    }
    info!(listen = ?bound.addrs, "DNS for Marathon tasks");
    tokio::spawn(async move {
        if let Err(e) = server.block_until_done().await {
            warn!("DNS server stopped: {e}");
        }
    });
}

struct Handler {
    /// The apexes alone: which names are ours before any zone arrives.
    outline: Answers,
    answers: watch::Receiver<Option<Arc<Answers>>>,
    upstream: Option<SocketAddr>,
    stats: Arc<DnsStats>,
    turn: AtomicUsize,
}

/// Response codes as dig and Prometheus labels write them.
pub fn rcode_name(c: ResponseCode) -> String {
    match c {
        ResponseCode::NoError => "NOERROR".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        other => u16::from(other).to_string(),
    }
}

/// What to send back, before encoding.
struct Reply {
    code: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
    /// An upstream's flags to pass on (truncation of its own UDP answer).
    truncated: bool,
}

impl Reply {
    fn code(code: ResponseCode) -> Self {
        Self {
            code,
            authoritative: false,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
            truncated: false,
        }
    }
}

impl Handler {
    async fn reply(&self, request: &Request) -> (Reply, String) {
        if request.metadata.op_code != OpCode::Query {
            return (Reply::code(ResponseCode::NotImp), "-".into());
        }
        let [query] = request.queries.queries() else {
            return (Reply::code(ResponseCode::FormErr), "-".into());
        };
        let qtype = query.query_type();
        let label = qtype.to_string();
        if query.query_class() != DNSClass::IN {
            return (Reply::code(ResponseCode::Refused), label);
        }
        let answers = self.answers.borrow().clone();
        let name = query.name();
        if let Some(answers) = answers {
            let turn = self.turn.fetch_add(1, Ordering::Relaxed);
            if let Some(l) = answers.lookup(name, qtype, turn) {
                return (
                    Reply {
                        code: l.code,
                        authoritative: l.authoritative,
                        answers: l.answers,
                        authorities: l.authorities,
                        additionals: l.additionals,
                        truncated: false,
                    },
                    label,
                );
            }
        } else if self.outline.in_zone(name) {
            // Before the first Marathon state nothing is known: never NXDOMAIN, which
            // resolvers would cache.
            return (Reply::code(ResponseCode::ServFail), label);
        }
        let Some(upstream) = self.upstream else {
            return (Reply::code(ResponseCode::Refused), label);
        };
        match forward(upstream, request.as_slice(), request.protocol()).await {
            Ok(m) => (
                Reply {
                    code: m.metadata.response_code,
                    authoritative: false,
                    answers: m.answers,
                    authorities: m.authorities,
                    additionals: m
                        .additionals
                        .into_iter()
                        .filter(|r| r.record_type() != RecordType::OPT)
                        .collect(),
                    truncated: m.metadata.truncation,
                },
                label,
            ),
            Err(e) => {
                debug!(%upstream, "forwarding failed: {e:#}");
                (Reply::code(ResponseCode::ServFail), label)
            }
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let (reply, qtype) = self.reply(request).await;
        // EDNS0: answer with OPT when asked with it; the client's buffer size, capped, bounds
        // the UDP answer (hickory sets TC when it does not fit).
        let edns = request.edns.as_ref().map(|e| {
            let mut o = Edns::new();
            o.set_max_payload(e.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            o
        });
        let mut builder = MessageResponseBuilder::new(&request.queries, None);
        if let Some(e) = &edns {
            builder.edns(e);
        }
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.response_code = reply.code;
        metadata.authoritative = reply.authoritative;
        metadata.recursion_available = self.upstream.is_some();
        metadata.truncation = reply.truncated;
        let response = builder.build(
            metadata,
            reply.answers.iter(),
            reply.authorities.iter(),
            std::iter::empty(),
            reply.additionals.iter(),
        );
        let info = match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(e) => {
                debug!("sending a DNS answer failed: {e}");
                let mut m = Metadata::response_from_request(&request.metadata);
                m.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata: m,
                    counts: HeaderCounts::default(),
                })
            }
        };
        self.stats
            .query("userspace", &qtype, &rcode_name(info.response_code));
        info
    }
}

/// Sends the client's query, as it came, to `upstream` over the client's transport.
async fn forward(upstream: SocketAddr, query: &[u8], protocol: Protocol) -> Result<Message> {
    let bytes = timeout(UPSTREAM_TIMEOUT, async {
        if protocol == Protocol::Udp {
            let local: SocketAddr = if upstream.is_ipv4() {
                "0.0.0.0:0".parse()?
            } else {
                "[::]:0".parse()?
            };
            let s = UdpSocket::bind(local).await?;
            s.connect(upstream).await?;
            s.send(query).await?;
            let mut buf = vec![0u8; 65535];
            let n = s.recv(&mut buf).await?;
            buf.truncate(n);
            anyhow::Ok(buf)
        } else {
            let mut s = TcpStream::connect(upstream).await?;
            let len = u16::try_from(query.len())?;
            s.write_all(&len.to_be_bytes()).await?;
            s.write_all(query).await?;
            let n = s.read_u16().await?;
            let mut buf = vec![0u8; usize::from(n)];
            s.read_exact(&mut buf).await?;
            anyhow::Ok(buf)
        }
    })
    .await
    .context("upstream timed out")??;
    let m = Message::from_vec(&bytes).context("upstream's answer does not parse")?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::dns::{
        query::ask,
        zone::{Records, SrvTarget},
    };

    fn zone(tasks: u8) -> Zone {
        let mut z = Zone {
            domain: "mesos".into(),
            ..Zone::default()
        };
        let mut all = Records::default();
        for i in 0..tasks {
            let ip = Ipv4Addr::new(192, 168, 7, i);
            let target = format!("big-aaaa{i:02}-s1.marathon.mesos");
            z.names.insert(
                target.clone(),
                Records {
                    a: vec![ip],
                    srv: vec![],
                },
            );
            all.a.push(ip);
            all.srv.push(SrvTarget { target, port: 80 });
        }
        z.names.insert(
            "big.marathon.mesos".into(),
            Records {
                a: all.a,
                srv: vec![],
            },
        );
        z.names.insert(
            "_big._tcp.marathon.mesos".into(),
            Records {
                a: vec![],
                srv: all.srv,
            },
        );
        z
    }

    async fn start(upstream: Option<SocketAddr>) -> (SocketAddr, watch::Sender<Option<Arc<Zone>>>) {
        let bound = bind(&["127.0.0.1:0".parse().unwrap()]).await.unwrap();
        let addr = bound.addrs[0];
        let (tx, rx) = watch::channel(None);
        spawn(
            bound,
            ServeConfig {
                domain: "mesos".into(),
                ttl: 5,
                upstream,
            },
            rx,
            Arc::new(DnsStats::default()),
        );
        (addr, tx)
    }

    #[tokio::test]
    async fn servfail_until_the_first_zone_then_answers_and_truncates() {
        let (addr, zones) = start(None).await;
        let a = ask(addr, "big.marathon.mesos", RecordType::A)
            .await
            .unwrap();
        assert_eq!(a.rcode, "SERVFAIL", "{a:?}");
        let a = ask(addr, "example.com", RecordType::A).await.unwrap();
        assert_eq!(a.rcode, "REFUSED");

        zones.send_replace(Some(Arc::new(zone(3))));
        let answered = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                let a = ask(addr, "big.marathon.mesos", RecordType::A)
                    .await
                    .unwrap();
                if a.rcode == "NOERROR" {
                    return a;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the zone is served");
        assert!(answered.authoritative);
        assert_eq!(answered.answers.len(), 3);
        let a = ask(addr, "nope.marathon.mesos", RecordType::A)
            .await
            .unwrap();
        assert_eq!(a.rcode, "NXDOMAIN");
        assert!(a.authority[0].contains("SOA"), "{a:?}");

        // 200 SRV records with their glue cannot fit 1232 bytes: TC, then all of it over TCP.
        zones.send_replace(Some(Arc::new(zone(200))));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let a = ask(addr, "_big._tcp.marathon.mesos", RecordType::SRV)
            .await
            .unwrap();
        assert_eq!(a.transport, "tcp");
        assert_eq!((a.answers.len(), a.additional.len()), (200, 200));
    }

    #[tokio::test]
    async fn names_outside_the_zones_go_upstream_when_given() {
        // The upstream: another server, for domain `other`.
        let bound = bind(&["127.0.0.1:0".parse().unwrap()]).await.unwrap();
        let upstream = bound.addrs[0];
        let (up_tx, up_rx) = watch::channel(None);
        spawn(
            bound,
            ServeConfig {
                domain: "other".into(),
                ttl: 7,
                upstream: None,
            },
            up_rx,
            Arc::new(DnsStats::default()),
        );
        let mut z = zone(2);
        z.domain = "other".into();
        z.names = z
            .names
            .into_iter()
            .map(|(k, v)| (k.replace(".mesos", ".other"), v))
            .collect();
        up_tx.send_replace(Some(Arc::new(z)));
        let (addr, zones) = start(Some(upstream)).await;
        zones.send_replace(Some(Arc::new(zone(1))));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let a = ask(addr, "big.marathon.other", RecordType::A)
            .await
            .unwrap();
        assert_eq!(
            (a.rcode.as_str(), a.authoritative),
            ("NOERROR", false),
            "{a:?}"
        );
        assert_eq!(a.answers.len(), 2);
        let a = ask(addr, "nope.marathon.other", RecordType::A)
            .await
            .unwrap();
        assert_eq!(a.rcode, "NXDOMAIN");
        // Our own zones stay ours.
        let a = ask(addr, "big.marathon.mesos", RecordType::A)
            .await
            .unwrap();
        assert_eq!((a.rcode.as_str(), a.answers.len()), ("NOERROR", 1));
    }
}
