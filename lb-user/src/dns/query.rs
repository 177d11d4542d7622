//! `lb dns NAME`: asks the running daemon's DNS listener, as `dig` would (UDP with EDNS0, TCP
//! again when the answer is truncated), and prints what it answered. Asking the server rather
//! than recomputing the zone shows exactly what clients get: the rotation, the SOA, SERVFAIL
//! before the first sync. The listener is found in the daemon's state file.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, bail};
use clap::{Args, ValueEnum};
use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query},
    rr::{Name, RData, Record, RecordType},
};
use serde::Serialize;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpStream, UdpSocket},
    time::timeout,
};

use super::server::rcode_name;
use crate::{cli::PinArgs, observe::state::DaemonState};

/// `lb dns`'s arguments.
#[derive(Debug, Args)]
pub struct DnsQueryArgs {
    /// The name to ask for, e.g. `nginx.marathon.mesos`.
    pub name: String,
    /// The question's type.
    #[arg(long = "type", value_enum, default_value = "a")]
    pub qtype: QueryType,
    /// The server to ask (default: the daemon's first `--dns-listen`, from its state file).
    #[arg(long, value_name = "ADDR:PORT")]
    pub server: Option<SocketAddr>,
    /// The daemon's state file (default: the one `lb run` writes for the pin path).
    #[arg(long, value_name = "FILE")]
    pub state_file: Option<PathBuf>,
    #[command(flatten)]
    pub pin: PinArgs,
    /// Machine-readable JSON instead of dig-like text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum QueryType {
    A,
    Srv,
    Soa,
    Any,
}

impl From<QueryType> for RecordType {
    fn from(t: QueryType) -> Self {
        match t {
            QueryType::A => RecordType::A,
            QueryType::Srv => RecordType::SRV,
            QueryType::Soa => RecordType::SOA,
            QueryType::Any => RecordType::ANY,
        }
    }
}

/// An answer as `lb dns --json` prints it.
#[derive(Debug, Serialize)]
pub struct Answered {
    pub server: String,
    /// `udp`, or `tcp` when the UDP answer was truncated and asked again.
    pub transport: &'static str,
    pub rcode: String,
    pub authoritative: bool,
    pub answers: Vec<String>,
    pub authority: Vec<String>,
    pub additional: Vec<String>,
}

/// The server `lb dns` asks: `--server`, else the daemon's first listener (a wildcard address
/// is asked on loopback).
pub fn server_of(args: &DnsQueryArgs) -> Result<SocketAddr> {
    if let Some(s) = args.server {
        return Ok(s);
    }
    let file = args
        .state_file
        .clone()
        .unwrap_or_else(|| crate::cli::default_state_file(&args.pin.pin_path));
    let text = std::fs::read(&file)
        .with_context(|| format!("reading the daemon's state file {}", file.display()))?;
    let state: DaemonState = serde_json::from_slice(&text)
        .with_context(|| format!("parsing the daemon's state file {}", file.display()))?;
    let Some(dns) = state.dns else {
        bail!("the daemon serves no DNS (start `lb run` with --dns-listen, or give --server)");
    };
    let first = dns
        .listen
        .first()
        .context("the daemon lists no DNS listener")?;
    let mut addr: SocketAddr = first
        .parse()
        .with_context(|| format!("listener {first:?} in the state file"))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    Ok(addr)
}

fn question(name: &str, qtype: RecordType) -> Result<Message> {
    let mut n = Name::from_ascii(name).with_context(|| format!("{name:?} is not a DNS name"))?;
    n.set_fqdn(true);
    let mut m = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.queries.push(Query::query(n, qtype));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    m.edns = Some(edns);
    Ok(m)
}

/// Asks `server` over UDP, and over TCP when the answer comes back truncated.
pub async fn ask(server: SocketAddr, name: &str, qtype: RecordType) -> Result<Answered> {
    let q = question(name, qtype)?;
    let bytes = q.to_vec()?;
    let limit = Duration::from_secs(3);
    let local: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let udp = UdpSocket::bind(local).await?;
    udp.connect(server).await?;
    udp.send(&bytes).await?;
    let mut buf = vec![0u8; 65535];
    let n = timeout(limit, udp.recv(&mut buf))
        .await
        .with_context(|| format!("no answer from {server} within {limit:?}"))??;
    let mut m = Message::from_vec(&buf[..n]).context("the answer does not parse")?;
    let mut transport = "udp";
    if m.metadata.truncation {
        let mut s = timeout(limit, TcpStream::connect(server))
            .await
            .with_context(|| format!("connecting to {server} over TCP"))??;
        s.write_all(&u16::try_from(bytes.len())?.to_be_bytes())
            .await?;
        s.write_all(&bytes).await?;
        let len = timeout(limit, s.read_u16()).await??;
        let mut body = vec![0u8; usize::from(len)];
        timeout(limit, s.read_exact(&mut body)).await??;
        m = Message::from_vec(&body).context("the TCP answer does not parse")?;
        transport = "tcp";
    }
    if m.metadata.id != q.metadata.id {
        bail!("the answer's id does not match the question's");
    }
    let show = |rs: &[Record]| rs.iter().map(record_line).collect();
    Ok(Answered {
        server: server.to_string(),
        transport,
        rcode: rcode_name(m.metadata.response_code),
        authoritative: m.metadata.authoritative,
        answers: show(&m.answers),
        authority: show(&m.authorities),
        additional: show(
            &m.additionals
                .iter()
                .filter(|r| r.record_type() != RecordType::OPT)
                .cloned()
                .collect::<Vec<_>>(),
        ),
    })
}

/// One record as dig prints it: name, TTL, class, type, data.
fn record_line(r: &Record) -> String {
    let data = match &r.data {
        RData::A(a) => a.0.to_string(),
        other => other.to_string(),
    };
    format!("{}\t{}\tIN\t{}\t{}", r.name, r.ttl, r.record_type(), data)
}

/// dig-like text.
pub fn render(a: &Answered) -> String {
    let mut out = format!(
        ";; {} from {} over {}{}\n",
        a.rcode,
        a.server,
        a.transport,
        if a.authoritative {
            ", authoritative"
        } else {
            ""
        }
    );
    for (title, rs) in [
        ("ANSWER", &a.answers),
        ("AUTHORITY", &a.authority),
        ("ADDITIONAL", &a.additional),
    ] {
        if !rs.is_empty() {
            out.push_str(&format!(";; {title}\n"));
            for r in rs {
                out.push_str(r);
                out.push('\n');
            }
        }
    }
    out
}
