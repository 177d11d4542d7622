//! One request through the front end, as HAProxy in marathon-lb's `mode http` with
//! `option http-server-close` handles it: routed on its own, sent to the next backend of its
//! rule, with `option forwardfor`'s `X-Forwarded-For`, `X-Forwarded-Port` and (over TLS)
//! `X-Forwarded-Proto`. Where HAProxy opens a connection to the task per request, this reuses
//! an idle one to the same task when it has one (`pool`). An `Upgrade` answered 101 joins the
//! two connections byte for byte (over a connection of its own), in the kernel when both are
//! plain TCP (`splice`).
use std::{
    collections::HashSet,
    net::{SocketAddr, SocketAddrV4},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{
    Request, Response, StatusCode, Version,
    body::Incoming,
    client::conn::http1::SendRequest,
    header::{self, HeaderMap, HeaderName, HeaderValue},
    upgrade::Upgraded,
};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};
use tracing::debug;

use super::{
    CLIENT_TIMEOUT,
    framing::Framing,
    idle::Idle,
    pool::{Pool, Returning},
    routes::{Route, Routes, host_name},
    splice,
    stats::FrontStats,
};

pub type Body = BoxBody<Bytes, hyper::Error>;

/// marathon-lb's `timeout connect`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// marathon-lb's `timeout server`: how long a backend may take to answer, and stay silent.
pub const SERVER_TIMEOUT: Duration = Duration::from_secs(60);
/// HAProxy's `retries 3` with `option redispatch`: a backend that refuses the connection is
/// replaced by the next one, at most this many times.
const RETRIES: usize = 3;

/// The routes in force, with a round-robin cursor per rule that survives route changes (kept
/// by backend name), so that a Marathon event does not restart every rotation, and the idle
/// connections to the tasks.
#[derive(Debug, Default)]
pub struct Table {
    pub routes: Arc<Routes>,
    cursors: Vec<Arc<AtomicUsize>>,
    pub pool: Arc<Pool>,
    /// What the front end did, for `/metrics`.
    pub stats: Arc<FrontStats>,
    /// Upgraded connections relayed with splice(2) (not `--no-splice`).
    pub splice: bool,
}

impl Table {
    /// No routes yet; requests are counted in `stats`.
    pub fn empty(stats: Arc<FrontStats>, splice: bool) -> Self {
        Self {
            stats,
            splice,
            ..Self::default()
        }
    }

    /// The table for `routes`, taking over `old`'s cursors for the backends both have, and its
    /// idle connections to the tasks that are still in a rule.
    pub fn new(routes: Arc<Routes>, old: &Table) -> Self {
        let tasks: HashSet<SocketAddrV4> = routes
            .rules
            .iter()
            .flat_map(|r| r.backends.iter().copied())
            .collect();
        old.pool.keep_only(&tasks);
        let cursors = routes
            .rules
            .iter()
            .map(|r| {
                old.routes
                    .rules
                    .iter()
                    .position(|o| o.backend == r.backend)
                    .map_or_else(Arc::default, |i| old.cursors[i].clone())
            })
            .collect();
        Self {
            routes,
            cursors,
            pool: old.pool.clone(),
            stats: old.stats.clone(),
            splice: old.splice,
        }
    }
}

/// What the proxy knows of the client's connection.
#[derive(Clone, Debug)]
pub struct Conn {
    pub client: SocketAddr,
    /// The port the client connected to (`X-Forwarded-Port`, HAProxy's `dst_port`).
    pub local_port: u16,
    /// The TLS server name the client asked for; Some("") never occurs.
    pub sni: Option<String>,
    pub tls: bool,
}

/// Answers one request: a HAProxy error page, a redirect, or the backend's response.
pub async fn handle(
    req: Request<Incoming>,
    table: Arc<Table>,
    conn: Arc<Conn>,
) -> Result<Response<Body>, std::convert::Infallible> {
    let resp = answer(req, &table, &conn).await;
    table.stats.answered(resp.status().as_u16());
    Ok(resp)
}

async fn answer(mut req: Request<Incoming>, table: &Table, conn: &Conn) -> Response<Body> {
    if req.headers().get_all(header::HOST).iter().count() > 1 {
        // RFC 9112 §3.2: a request with more than one Host is refused; which one a router
        // believes would be a way around it.
        return error_page(StatusCode::BAD_REQUEST);
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()));
    // marathon-lb routes :443 by SNI; a client that sent none is routed by its Host.
    let name = conn.sni.as_deref().or(host.as_deref());
    let route = table.routes.route(name, req.uri().path(), conn.tls);
    let i = match route {
        Route::NoRoute => return error_page(StatusCode::SERVICE_UNAVAILABLE),
        Route::RedirectToHttps => return redirect_to_https(host.as_deref(), &req),
        Route::Rule(i) => i,
    };
    let rule = &table.routes.rules[i];
    if !rule.admits(conn.client.ip()) {
        return error_page(StatusCode::FORBIDDEN);
    }
    let upgrade = wants_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    prepare(&mut req, conn, upgrade, name);
    // An upgrade takes its connection for good, and a connection authenticated for one client
    // must not serve another: those get a new one, never a pooled one.
    let private = upgrade || per_connection_auth(req.headers(), header::AUTHORIZATION);
    let pool = (!private).then_some(&table.pool);
    let Some(mut to) = Backend::next(&rule.backends, &table.cursors[i], pool).await else {
        return error_page(StatusCode::SERVICE_UNAVAILABLE);
    };
    table.stats.task_connection(to.reused);
    let mut resp = match to.exchange(req.map(BodyExt::boxed)).await {
        Ok(r) => r,
        Err(status) => {
            debug!(backend = %to.addr, %status, "backend failed");
            return error_page(status);
        }
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let backend_upgrade = hyper::upgrade::on(&mut resp);
        let (stats, splice) = (table.stats.clone(), table.splice);
        tokio::spawn(async move {
            let (Ok(client), Ok(server)) = (client_upgrade.await, backend_upgrade.await) else {
                return;
            };
            if let Err(e) = tunnel(client, server, splice, &stats).await {
                debug!("tunnel: {e}");
            }
        });
        return resp.map(|b| b.boxed());
    }
    strip_hop_by_hop(resp.headers_mut());
    let pool = pool.filter(|_| !per_connection_auth(resp.headers(), header::WWW_AUTHENTICATE));
    match pool {
        Some(pool) => resp.map(|b| Returning::new(b, pool.clone(), to.addr, to.sender).boxed()),
        None => resp.map(|b| b.boxed()),
    }
}

/// Relays an upgraded connection until both ends close: in the kernel (`splice::relay`) when
/// the client's connection is plain TCP, through buffers otherwise (TLS, or `--no-splice`).
/// The inactivity timeouts hold either way.
async fn tunnel(
    client: Upgraded,
    server: Upgraded,
    splice: bool,
    stats: &FrontStats,
) -> std::io::Result<()> {
    type ClientIo = TokioIo<Framing<Idle<TcpStream>>>;
    type ServerIo = TokioIo<Idle<TcpStream>>;
    // Every task connection is a `ServerIo` (`open`); a client's is a `ClientIo` unless TLS.
    let server = match server.downcast::<ServerIo>() {
        Ok(s) if splice => s,
        Ok(s) => return copy(client, &s.read_buf, s.io.into_inner(), stats).await,
        Err(server) => return copy(client, &[], TokioIo::new(server), stats).await,
    };
    match client.downcast::<ClientIo>() {
        Ok(c) => {
            stats.tunnel(true);
            let client = c.io.into_inner().into_inner().into_inner();
            let idle = CLIENT_TIMEOUT.min(SERVER_TIMEOUT);
            let task = server.io.into_inner().into_inner();
            splice::relay(client, &c.read_buf, task, &server.read_buf, idle).await?;
            Ok(())
        }
        Err(client) => copy(client, &server.read_buf, server.io.into_inner(), stats).await,
    }
}

/// The tunnel through the daemon's buffers; `early` is what the task sent after its 101.
async fn copy(
    client: Upgraded,
    early: &[u8],
    mut server: impl AsyncRead + AsyncWrite + Unpin,
    stats: &FrontStats,
) -> std::io::Result<()> {
    stats.tunnel(false);
    let mut client = TokioIo::new(client);
    client.write_all(early).await?;
    // TLS may hold the tail of what it took until flushed; the copy flushes only its own.
    client.flush().await?;
    tokio::io::copy_bidirectional(&mut client, &mut server).await?;
    Ok(())
}

/// A connection to one backend, ready for a request.
struct Backend {
    addr: SocketAddrV4,
    sender: SendRequest<Body>,
    /// Taken from the pool: the task may have closed it as it was taken.
    reused: bool,
}

impl Backend {
    /// The rule's next backend in turn, over an idle connection from `pool` when it has one,
    /// else a new one; on to the following backend when connecting fails (HAProxy's
    /// redispatch), at most `RETRIES` times.
    async fn next(
        backends: &[SocketAddrV4],
        cursor: &AtomicUsize,
        pool: Option<&Arc<Pool>>,
    ) -> Option<Self> {
        if backends.is_empty() {
            return None;
        }
        let start = cursor.fetch_add(1, Ordering::Relaxed);
        for k in 0..backends.len().min(RETRIES + 1) {
            let addr = backends[(start + k) % backends.len()];
            while let Some(mut sender) = pool.and_then(|p| p.take(addr)) {
                if sender.ready().await.is_ok() {
                    return Some(Self {
                        addr,
                        sender,
                        reused: true,
                    });
                }
            }
            if let Some(sender) = open(addr).await {
                return Some(Self {
                    addr,
                    sender,
                    reused: false,
                });
            }
        }
        None
    }

    /// Sends the request and waits for the response's head. Over a pooled connection the task
    /// closed as it was taken, the request goes again over a new one to the same task: when it
    /// had not gone out, or when it is a bodiless GET, HEAD or OPTIONS (safe to send twice).
    async fn exchange(&mut self, mut req: Request<Body>) -> Result<Response<Incoming>, StatusCode> {
        let mut replay = (self.reused && replayable(&req)).then(|| head_of(&req));
        loop {
            match timeout(SERVER_TIMEOUT, self.sender.try_send_request(req)).await {
                Ok(Ok(resp)) => return Ok(resp),
                Ok(Err(mut e)) => {
                    debug!(backend = %self.addr, reused = self.reused, "backend exchange: {}", e.error());
                    match e.take_message().or_else(|| replay.take()) {
                        Some(unsent) if self.reused => {
                            self.sender = open(self.addr).await.ok_or(StatusCode::BAD_GATEWAY)?;
                            self.reused = false;
                            req = unsent;
                        }
                        _ => return Err(StatusCode::BAD_GATEWAY),
                    }
                }
                Err(_) => return Err(StatusCode::GATEWAY_TIMEOUT),
            }
        }
    }
}

/// A request that may be sent twice: no body, and a method without side effects.
fn replayable(req: &Request<Body>) -> bool {
    use hyper::body::Body as _;
    matches!(
        *req.method(),
        hyper::Method::GET | hyper::Method::HEAD | hyper::Method::OPTIONS
    ) && req.body().is_end_stream()
}

/// A copy of a bodiless request.
fn head_of(req: &Request<Body>) -> Request<Body> {
    let mut copy = Request::new(empty());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

/// Whether `field` names NTLM or Negotiate, which authenticate a connection rather than a
/// request (RFC 4559): such a connection belongs to one client.
fn per_connection_auth(h: &HeaderMap, field: HeaderName) -> bool {
    h.get_all(field)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|v| v.split_whitespace().next())
        .any(|scheme| {
            scheme.eq_ignore_ascii_case("ntlm") || scheme.eq_ignore_ascii_case("negotiate")
        })
}

/// A new connection to `backend`, its HTTP/1 driver running on a task of its own.
async fn open(backend: SocketAddrV4) -> Option<SendRequest<Body>> {
    let stream = match timeout(CONNECT_TIMEOUT, TcpStream::connect(backend)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(%backend, "connect: {e}");
            return None;
        }
        Err(_) => {
            debug!(%backend, "connect: timed out");
            return None;
        }
    };
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(Idle::new(stream, SERVER_TIMEOUT)))
        .await
        .ok()?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            debug!("backend connection: {e}");
        }
    });
    Some(sender)
}

fn wants_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Headers for the backend: hop-by-hop ones go (the backend connection is kept alive for
/// the next request, or carries `upgrade` when the client asked for one), `Expect` too (the
/// front end already answered it), and marathon-lb's `X-Forwarded-*` are added. Tasks are
/// spoken to in HTTP/1.1 whatever the client speaks, as HAProxy does (with a `Host`).
fn prepare(req: &mut Request<Incoming>, conn: &Conn, upgrade: bool, name: Option<&str>) {
    *req.version_mut() = Version::HTTP_11;
    let h = req.headers_mut();
    // HTTP/1.1 needs a Host: an HTTP/1.0 client may have sent none (routed by SNI or by an
    // absolute URI), and the name it was routed by stands in.
    if !h.contains_key(header::HOST)
        && let Some(v) = name.and_then(|n| HeaderValue::from_str(n).ok())
    {
        h.insert(header::HOST, v);
    }
    let upgrade_value = h.get(header::UPGRADE).cloned();
    strip_hop_by_hop(h);
    h.remove(header::EXPECT);
    if let (true, Some(u)) = (upgrade, upgrade_value) {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, u);
    }
    // `option forwardfor` adds a header of its own after any the client sent.
    let ip = conn.client.ip().to_canonical().to_string();
    if let Ok(v) = HeaderValue::from_str(&ip) {
        h.append(X_FORWARDED_FOR, v);
    }
    // `http-request set-header X-Forwarded-Port %[dst_port]`
    h.insert(X_FORWARDED_PORT, HeaderValue::from(conn.local_port));
    // `http-request add-header X-Forwarded-Proto https if { ssl_fc }`
    if conn.tls {
        h.append(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Removes the headers that concern one connection only (RFC 9110 §7.6.1), including those
/// `Connection` names. Framing (`Content-Length`, `Transfer-Encoding`) stays: hyper frames the
/// message from it.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| *n != header::CONTENT_LENGTH && *n != header::TRANSFER_ENCODING)
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in [
        header::CONNECTION,
        header::UPGRADE,
        header::TE,
        header::TRAILER,
        header::PROXY_AUTHENTICATE,
    ] {
        h.remove(n);
    }
    h.remove("keep-alive");
    h.remove("proxy-connection");
}

/// `redirect scheme https code 301`: the same host (without its port) and URI over https.
fn redirect_to_https(host: Option<&str>, req: &Request<Incoming>) -> Response<Body> {
    let uri = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{}{uri}", host.map(host_name).unwrap_or_default());
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::MOVED_PERMANENTLY;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            h.insert(header::LOCATION, v);
        }
        Err(_) => return error_page(StatusCode::BAD_REQUEST),
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

fn empty() -> Body {
    Full::new(Bytes::new()).map_err(|e| match e {}).boxed()
}

/// HAProxy's own error pages; like HAProxy, the connection closes after one.
pub fn error_page(status: StatusCode) -> Response<Body> {
    let text = match status {
        StatusCode::BAD_REQUEST => "Your browser sent an invalid request.",
        StatusCode::FORBIDDEN => "Request forbidden by administrative rules.",
        StatusCode::BAD_GATEWAY => "The server returned an invalid or incomplete response.",
        StatusCode::GATEWAY_TIMEOUT => "The server didn't respond in time.",
        _ => "No server is available to handle this request.",
    };
    let body = format!(
        "<html><body><h1>{} {}</h1>\n{text}\n</body></html>\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
    );
    let mut resp = Response::new(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::routes::Rule;

    fn rule(backend: &str) -> Rule {
        Rule {
            backend: backend.into(),
            app_id: format!("/{backend}"),
            port_index: 0,
            service_port: 10000,
            hosts: vec![format!("{backend}.org")],
            paths: None,
            redirect_to_https: false,
            weight: 0,
            backends: vec![],
            allow: vec![],
        }
    }

    #[test]
    fn a_rule_with_allowed_ranges_admits_only_their_clients() {
        let open = rule("open");
        let closed = Rule {
            allow: vec![
                "10.0.0.0/8".parse().unwrap(),
                "192.168.1.7".parse().unwrap(),
            ],
            ..rule("closed")
        };
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        for client in ["10.1.2.3", "192.168.1.7", "::ffff:10.0.0.1"] {
            assert!(closed.admits(ip(client)), "{client}");
        }
        for client in ["11.0.0.1", "192.168.1.8", "::1", "::ffff:11.0.0.1"] {
            assert!(!closed.admits(ip(client)), "{client}");
            assert!(open.admits(ip(client)), "{client}");
        }
    }

    #[test]
    fn cursors_follow_their_backend_across_route_changes() {
        let first = Table::new(
            Arc::new(Routes {
                rules: vec![rule("a"), rule("b")],
                certs: vec![],
            }),
            &Table::default(),
        );
        first.cursors[1].store(7, Ordering::Relaxed);
        let next = Table::new(
            Arc::new(Routes {
                rules: vec![rule("c"), rule("b")],
                certs: vec![],
            }),
            &first,
        );
        assert_eq!(next.cursors[1].load(Ordering::Relaxed), 7);
        assert_eq!(next.cursors[0].load(Ordering::Relaxed), 0);
    }

    #[test]
    fn hop_by_hop_headers_go_with_those_connection_names() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["content-length", "x-kept"]);
    }

    #[test]
    fn ntlm_and_negotiate_make_a_connection_private() {
        let h = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.append(header::WWW_AUTHENTICATE, HeaderValue::from_static(v));
            h
        };
        for private in [
            "NTLM",
            "Negotiate",
            "Basic realm=\"x\", NTLM",
            "negotiate abc==",
        ] {
            assert!(
                per_connection_auth(&h(private), header::WWW_AUTHENTICATE),
                "{private}"
            );
        }
        for shared in ["Basic realm=\"ntlm\"", "Bearer", "Digest realm=\"x\""] {
            assert!(
                !per_connection_auth(&h(shared), header::WWW_AUTHENTICATE),
                "{shared}"
            );
        }
    }

    #[test]
    fn only_bodiless_safe_requests_are_sent_twice() {
        let req = |method: &str, body: &'static str| {
            let mut r = Request::new(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed());
            *r.method_mut() = method.parse().unwrap();
            r
        };
        assert!(replayable(&req("GET", "")));
        assert!(replayable(&req("HEAD", "")));
        assert!(!replayable(&req("GET", "x")));
        assert!(!replayable(&req("POST", "")));
        let copy = head_of(&req("OPTIONS", ""));
        assert_eq!(copy.method(), "OPTIONS");
    }

    #[test]
    fn upgrade_needs_both_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(!wants_upgrade(&h));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(wants_upgrade(&h));
    }

    #[test]
    fn error_pages_are_haproxys() {
        let r = error_page(StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::CONNECTION], "close");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "text/html");
        assert_eq!(error_page(StatusCode::FORBIDDEN).status(), 403);
    }
}
