//! The HTTP front end (issue 11): marathon-lb's virtual hosts on :80 and :443, inside `lb run`.
//! `routes` derives which host goes where from the Marathon catalog; `proxy` forwards one
//! request; `tls` holds the certificates; this module listens and follows route changes.
//!
//! Routes arrive on a watch channel from the daemon (one `Arc<Routes>` per Marathon update) and
//! take effect for the next request, with no reload: a request in flight keeps its backend
//! connection, so a task leaving the set finishes what it serves. The app's service port is
//! still balanced at L4 by the data plane.
pub mod framing;
pub mod idle;
pub mod pool;
pub mod proxy;
pub mod routes;
pub mod splice;
pub mod stats;
pub mod tls;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::watch,
    time::timeout,
};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error, info, warn};

use self::{
    idle::Idle,
    proxy::{Conn, Table},
    routes::Routes,
    tls::Cert,
};

/// marathon-lb's `timeout http-request`: the whole request head (and a TLS handshake) within this.
pub const HTTP_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// marathon-lb's `timeout client`: a client connection on which nothing moves is closed.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
/// HAProxy's `tune.http.maxhdr`.
pub const MAX_HEADERS: usize = 101;
/// HAProxy's `tune.bufsize` (16 KiB) bounds a request head.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Where to listen and which certificates to serve.
#[derive(Clone, Debug, Default)]
pub struct FrontConfig {
    /// Given by the operator: bound at start. None: `*:80` once a served app has a VHOST.
    pub http_listen: Option<SocketAddr>,
    /// Given by the operator: bound at start. None: `*:443` once a served app has a VHOST.
    pub https_listen: Option<SocketAddr>,
    /// `--ssl-certs`: PEM files, the first being the default certificate.
    pub ssl_certs: Vec<PathBuf>,
    /// `--no-splice`: upgraded connections relayed through the daemon's buffers.
    pub no_splice: bool,
}

pub const DEFAULT_HTTP: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 80);
pub const DEFAULT_HTTPS: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 443);

/// The front end before its routes: the operator's listeners bound and `--ssl-certs` loaded,
/// so that bad input stops `lb run` before it touches the kernel.
pub struct FrontEnd {
    cfg: FrontConfig,
    http: Option<TcpListener>,
    https: Option<TcpListener>,
    given: Vec<Cert>,
}

impl FrontEnd {
    pub async fn start(cfg: FrontConfig) -> Result<Self> {
        let mut given = Vec::new();
        for f in &cfg.ssl_certs {
            given.push(Cert::load(f).context("--ssl-certs")?);
        }
        let http = match cfg.http_listen {
            Some(a) => Some(bind(a).await.context("--http-listen")?),
            None => None,
        };
        let https = match cfg.https_listen {
            Some(a) => Some(bind(a).await.context("--https-listen")?),
            None => None,
        };
        Ok(Self {
            cfg,
            http,
            https,
            given,
        })
    }

    /// Serves until the routes' sender goes: new routes replace the table, new certificate
    /// files are loaded, and the default listeners open once an app has a vhost.
    pub async fn run(
        mut self,
        mut routes: watch::Receiver<Arc<Routes>>,
        stats: Arc<stats::FrontStats>,
    ) {
        let (table_tx, table_rx) =
            watch::channel(Arc::new(Table::empty(stats, !self.cfg.no_splice)));
        // Idle task connections past their time are closed even when no request comes.
        let _pruner = pool::pruner(table_rx.borrow().pool.clone());
        let mut cert_files: Option<Vec<String>> = None;
        let mut self_signed: Option<Cert> = None;
        let (tls_tx, tls_rx) = watch::channel(None::<Arc<rustls::ServerConfig>>);
        loop {
            let current = routes.borrow_and_update().clone();
            let old = table_rx.borrow().clone();
            table_tx.send_replace(Arc::new(Table::new(current.clone(), &old)));
            if cert_files.as_ref() != Some(&current.certs) {
                let files: Vec<PathBuf> = current.certs.iter().map(PathBuf::from).collect();
                match self.tls_config(&files, &mut self_signed) {
                    Ok(c) => {
                        tls_tx.send_replace(Some(c));
                    }
                    Err(e) => error!("TLS certificates: {e:#}"),
                }
                cert_files = Some(current.certs.clone());
            }
            let wanted = current.has_vhosts();
            if self.http.is_none() && self.cfg.http_listen.is_none() && wanted {
                self.cfg.http_listen = Some(DEFAULT_HTTP);
                match bind(DEFAULT_HTTP).await {
                    Ok(l) => self.http = Some(l),
                    Err(e) => error!("HTTP virtual hosts: {e:#}"),
                }
            }
            if self.https.is_none() && self.cfg.https_listen.is_none() && wanted {
                self.cfg.https_listen = Some(DEFAULT_HTTPS);
                match bind(DEFAULT_HTTPS).await {
                    Ok(l) => self.https = Some(l),
                    Err(e) => error!("HTTPS virtual hosts: {e:#}"),
                }
            }
            if let Some(l) = self.http.take() {
                info!(addr = %local(&l), "HTTP virtual hosts");
                tokio::spawn(accept(l, table_rx.clone(), None));
            }
            if let Some(l) = self.https.take() {
                info!(addr = %local(&l), "HTTPS virtual hosts");
                tokio::spawn(accept(l, table_rx.clone(), Some(tls_rx.clone())));
            }
            if routes.changed().await.is_err() {
                return;
            }
        }
    }

    /// The given certificates, then the apps' files that load; a self-signed one (made once)
    /// when there are none.
    fn tls_config(
        &self,
        files: &[PathBuf],
        self_signed: &mut Option<Cert>,
    ) -> Result<Arc<rustls::ServerConfig>> {
        let (from_apps, errors) = tls::load_all(files);
        for e in errors {
            warn!("HAPROXY_n_SSL_CERT skipped: {e}");
        }
        let mut certs: Vec<Cert> = self.given.clone();
        certs.extend(from_apps);
        if certs.is_empty() {
            let generated = match self_signed {
                Some(c) => c.clone(),
                None => {
                    let c = Cert::self_signed(vec!["localhost".to_owned()])?;
                    info!("no certificate given: a self-signed one is served on :443");
                    self_signed.insert(c).clone()
                }
            };
            certs.push(generated);
        }
        Ok(tls::server_config(certs)?)
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))
}

fn local(l: &TcpListener) -> String {
    l.local_addr()
        .map_or_else(|e| e.to_string(), |a| a.to_string())
}

/// Accepts connections for ever; each is served on a task of its own.
async fn accept(
    listener: TcpListener,
    table: watch::Receiver<Arc<Table>>,
    tls: Option<watch::Receiver<Option<Arc<rustls::ServerConfig>>>>,
) {
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors, mostly: wait for connections to close.
                warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let table = table.clone();
        let tls = tls.as_ref().and_then(|t| t.borrow().clone());
        tokio::spawn(async move {
            if let Err(e) = connection(stream, client, table, tls).await {
                debug!(%client, "connection: {e:#}");
            }
        });
    }
}

async fn connection(
    stream: TcpStream,
    client: SocketAddr,
    table: watch::Receiver<Arc<Table>>,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<()> {
    let local_port = stream.local_addr()?.port();
    let stream = Idle::new(stream, CLIENT_TIMEOUT);
    match tls {
        None => {
            let conn = Conn {
                client,
                local_port,
                sni: None,
                tls: false,
            };
            serve(stream, conn, table).await
        }
        Some(cfg) => {
            let stream = timeout(HTTP_REQUEST_TIMEOUT, TlsAcceptor::from(cfg).accept(stream))
                .await
                .context("TLS handshake timed out")?
                .context("TLS handshake")?;
            let sni = stream
                .get_ref()
                .1
                .server_name()
                .filter(|s| !s.is_empty())
                .map(str::to_owned);
            let conn = Conn {
                client,
                local_port,
                sni,
                tls: true,
            };
            serve(stream, conn, table).await
        }
    }
}

/// HTTP/1 on one client connection: every request is routed with the table current when it
/// arrives.
async fn serve<S>(stream: S, conn: Conn, table: watch::Receiver<Arc<Table>>) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Arc::new(conn);
    // Requests with both Content-Length and Transfer-Encoding are refused (framing.rs): the
    // watcher marks them by their place on the connection, the service counts them the same.
    let smuggled = Arc::new(framing::Smuggled::default());
    let stream = framing::Framing::new(stream, smuggled.clone(), MAX_HEADER_BYTES);
    let requests = std::sync::atomic::AtomicU64::new(0);
    let service = service_fn(move |req| {
        let n = requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let refuse = smuggled.is(n);
        let t = table.borrow().clone();
        let conn = conn.clone();
        async move {
            if refuse {
                debug!(client = %conn.client, "Content-Length with Transfer-Encoding: 400");
                return Ok(proxy::error_page(hyper::StatusCode::BAD_REQUEST));
            }
            proxy::handle(req, t, conn).await
        }
    });
    http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HTTP_REQUEST_TIMEOUT)
        .max_headers(MAX_HEADERS)
        .max_header_size(MAX_HEADER_BYTES)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await?;
    Ok(())
}
