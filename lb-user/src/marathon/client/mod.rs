//! The Marathon REST client: fetches `/v2/apps?embed=apps.tasks` (and one app, `/v2/apps/{id}`)
//! as raw bytes and opens the event stream, failing over between several Marathon URLs and
//! following leader redirects with credentials. Credentials live in `auth`, errors in `errors`.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue, LOCATION};
use reqwest::{StatusCode, Url};

mod auth;
mod errors;
#[cfg(test)]
mod tests;

use auth::percent_decode;
pub use auth::{Auth, Redacted, Secret, redact_url};
use errors::describe;
pub use errors::{AttemptError, AttemptErrorKind, ClientError};

/// The path and query of the full-state read; `embed=apps.tasks` puts each app's tasks in the
/// same document so one request yields a consistent picture.
pub const APPS_PATH: &str = "v2/apps?embed=apps.tasks";

/// The path and query of one app's read, with its tasks; `None` for an id that is not one of
/// Marathon's (lowercase letters, digits, `-`, `.`, `/`-separated), which then never reaches a URL.
pub fn app_path(id: &str) -> Option<String> {
    let rest = id.strip_prefix('/')?;
    let valid = !rest.is_empty()
        && rest.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        });
    valid.then(|| format!("v2/apps/{rest}?embed=app.tasks"))
}

/// Everything the client needs; see `Default` for the timeouts chosen.
#[derive(Clone)]
pub struct ClientConfig {
    /// Marathon base URLs (e.g. `http://master1:8080`, `https://leader.mesos/marathon`), tried in order.
    pub urls: Vec<Url>,
    pub auth: Auth,
    /// PEM file with extra CA certificates to trust (added to the built-in web PKI roots).
    pub ca_cert: Option<PathBuf>,
    /// Time allowed to establish the TCP (and TLS) connection to one URL before trying the next.
    pub connect_timeout: Duration,
    /// Time allowed for one whole `/v2/apps` read (and for the event stream's response headers).
    pub request_timeout: Duration,
    /// How many redirects (to the Marathon leader) to follow before giving up on a URL.
    pub max_redirects: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            auth: Auth::None,
            ca_cert: None,
            connect_timeout: Duration::from_secs(5),
            // A large cluster's /v2/apps with embedded tasks runs to megabytes; Marathon can be slow.
            request_timeout: Duration::from_secs(30),
            max_redirects: 5,
        }
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // By hand: `Url`'s own Debug would print user-info given as http://user:pass@host.
        f.debug_struct("ClientConfig")
            .field(
                "urls",
                &self.urls.iter().map(redact_url).collect::<Vec<_>>(),
            )
            .field("auth", &self.auth)
            .field("ca_cert", &self.ca_cert)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("max_redirects", &self.max_redirects)
            .finish()
    }
}

/// The Marathon client. Cheap to share behind an `Arc`; the only mutable state is an atomic index
/// of the URL that answered last, so that a dead first URL does not cost a timeout on every read.
pub struct MarathonClient {
    http: reqwest::Client,
    urls: Vec<Url>,
    auth: Auth,
    request_timeout: Duration,
    max_redirects: usize,
    preferred: AtomicUsize,
}

impl fmt::Debug for MarathonClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MarathonClient")
            .field(
                "urls",
                &self.urls.iter().map(redact_url).collect::<Vec<_>>(),
            )
            .field("auth", &self.auth)
            .field("request_timeout", &self.request_timeout)
            .field("max_redirects", &self.max_redirects)
            .finish_non_exhaustive()
    }
}

/// What kind of request we are making, which decides headers and timeouts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RequestKind {
    /// A bounded read: the whole body under `request_timeout`.
    Json,
    /// A long-lived stream: only the response headers are under `request_timeout`.
    EventStream,
}

/// A successful answer: a whole body, or a stream still to be read.
enum Answer {
    Body(Bytes),
    Stream(reqwest::Response),
}

impl MarathonClient {
    pub fn new(cfg: &ClientConfig) -> Result<Self, ClientError> {
        if cfg.urls.is_empty() {
            return Err(ClientError::NoUrls);
        }
        let mut auth = cfg.auth.clone();
        let mut urls = Vec::with_capacity(cfg.urls.len());
        for url in &cfg.urls {
            if !matches!(url.scheme(), "http" | "https") {
                return Err(ClientError::BadUrl {
                    url: redact_url(url),
                    reason: "scheme must be http or https",
                });
            }
            if url.cannot_be_a_base() || url.host().is_none() {
                return Err(ClientError::BadUrl {
                    url: redact_url(url),
                    reason: "no host",
                });
            }
            // Credentials in the URL become basic auth, and the URL we keep (and reqwest sees, and
            // might print) has none.
            if !url.username().is_empty() || url.password().is_some() {
                let from_url = Auth::Basic {
                    user: Secret::new(percent_decode(url.username())),
                    password: Secret::new(percent_decode(url.password().unwrap_or(""))),
                };
                match &auth {
                    Auth::None => auth = from_url,
                    existing if *existing == from_url => {}
                    _ => {
                        return Err(ClientError::ConflictingAuth {
                            url: redact_url(url),
                        });
                    }
                }
            }
            let mut clean: Url = redact_url(url)
                .parse()
                .expect("a redacted valid URL stays valid");
            // Base URLs like https://leader.mesos/marathon must join as a directory.
            if !clean.path().ends_with('/') {
                let path = format!("{}/", clean.path());
                clean.set_path(&path);
            }
            urls.push(clean);
        }

        let mut builder = reqwest::Client::builder()
            // Redirects are followed by hand: reqwest drops Authorization when the host changes,
            // and a Marathon standby redirects to the leader, which is another host.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(cfg.connect_timeout)
            .user_agent(concat!("lb/", env!("CARGO_PKG_VERSION")))
            .use_rustls_tls();
        if let Some(path) = &cfg.ca_cert {
            let pem = std::fs::read(path).map_err(|source| ClientError::CaFile {
                path: path.clone(),
                source,
            })?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ClientError::CaPem {
                    path: path.clone(),
                    reason: Some(e.without_url().to_string()),
                })?;
            if certs.is_empty() {
                return Err(ClientError::CaPem {
                    path: path.clone(),
                    reason: None,
                });
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Build(e.without_url().to_string()))?;
        Ok(Self {
            http,
            urls,
            auth,
            request_timeout: cfg.request_timeout,
            max_redirects: cfg.max_redirects,
            preferred: AtomicUsize::new(0),
        })
    }

    /// The configured base URLs, without credentials.
    pub fn urls(&self) -> &[Url] {
        &self.urls
    }

    /// Reads `/v2/apps?embed=apps.tasks` and returns the body untouched; parsing is the caller's.
    pub async fn fetch_apps(&self) -> Result<Bytes, ClientError> {
        match self.get(APPS_PATH, RequestKind::Json).await? {
            (Answer::Body(body), _) => Ok(body),
            (Answer::Stream(_), _) => unreachable!("a JSON request yields a body"),
        }
    }

    /// Reads `/v2/apps/{id}?embed=app.tasks` (`{"app": {...}}`) and returns the body untouched,
    /// or `None` when Marathon answers 404: it has no such app (any more).
    pub async fn fetch_app(&self, id: &str) -> Result<Option<Bytes>, ClientError> {
        let path = app_path(id).ok_or_else(|| ClientError::BadAppId(id.to_owned()))?;
        match self.get(&path, RequestKind::Json).await {
            Ok((Answer::Body(body), _)) => Ok(Some(body)),
            Ok((Answer::Stream(_), _)) => unreachable!("a JSON request yields a body"),
            Err(e)
                if e.attempts()
                    .iter()
                    .any(|a| a.kind == AttemptErrorKind::Status(StatusCode::NOT_FOUND)) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Opens `path_and_query` (relative to a base URL) as an event stream and returns the response
    /// once its headers say 2xx, with the (redacted) URL that answered.
    pub async fn open_event_stream(
        &self,
        path_and_query: &str,
    ) -> Result<(reqwest::Response, String), ClientError> {
        match self.get(path_and_query, RequestKind::EventStream).await? {
            (Answer::Stream(response), url) => Ok((response, redact_url(&url))),
            (Answer::Body(_), _) => unreachable!("an event-stream request yields a stream"),
        }
    }

    /// Tries every URL once, starting with the one that answered last, and returns the first 2xx
    /// answer together with the URL that produced it (after redirects).
    async fn get(
        &self,
        path_and_query: &str,
        kind: RequestKind,
    ) -> Result<(Answer, Url), ClientError> {
        let n = self.urls.len();
        let start = self.preferred.load(Ordering::Relaxed) % n;
        let mut attempts = Vec::new();
        for i in 0..n {
            let index = (start + i) % n;
            let url = match self.urls[index].join(path_and_query) {
                Ok(url) => url,
                Err(e) => {
                    attempts.push(AttemptError {
                        url: redact_url(&self.urls[index]),
                        kind: AttemptErrorKind::BadUrl(e.to_string()),
                    });
                    continue;
                }
            };
            match self.get_following_redirects(url, kind).await {
                Ok(ok) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok(ok);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "Marathon request failed, trying the next URL");
                    attempts.push(e);
                }
            }
        }
        Err(ClientError::AllFailed(attempts))
    }

    async fn get_following_redirects(
        &self,
        mut url: Url,
        kind: RequestKind,
    ) -> Result<(Answer, Url), AttemptError> {
        let fail = |url: &Url, kind| AttemptError {
            url: redact_url(url),
            kind,
        };
        for _ in 0..=self.max_redirects {
            let mut request = self.http.get(url.clone());
            request = match kind {
                RequestKind::Json => request
                    .header(ACCEPT, "application/json")
                    .timeout(self.request_timeout),
                RequestKind::EventStream => request.header(ACCEPT, "text/event-stream"),
            };
            if let Some(value) = self.auth.header() {
                request = request.header(AUTHORIZATION, value);
            }
            let response = match tokio::time::timeout(self.request_timeout, request.send()).await {
                Err(_) => return Err(fail(&url, AttemptErrorKind::Timeout)),
                Ok(Err(e)) => return Err(fail(&url, describe(e))),
                Ok(Ok(response)) => response,
            };
            let status = response.status();
            if status.is_success() {
                return match kind {
                    // Read here, so that a connection breaking mid-body moves on to the next URL;
                    // the request's own timeout still bounds it.
                    RequestKind::Json => match read_body(response).await {
                        Ok(body) => Ok((Answer::Body(body), url)),
                        Err(e) => Err(fail(&url, describe(e))),
                    },
                    RequestKind::EventStream => Ok((Answer::Stream(response), url)),
                };
            }
            if status.is_redirection() {
                let next = redirect_target(&url, response.headers().get(LOCATION))
                    .map_err(|e| fail(&url, AttemptErrorKind::BadRedirect(e)))?;
                tracing::debug!(from = %Redacted(&url), to = %Redacted(&next), "following Marathon redirect");
                url = next;
                continue;
            }
            let kind = match status {
                StatusCode::BAD_GATEWAY
                | StatusCode::SERVICE_UNAVAILABLE
                | StatusCode::GATEWAY_TIMEOUT => AttemptErrorKind::NoLeader(status),
                _ => AttemptErrorKind::Status(status),
            };
            return Err(fail(&url, kind));
        }
        Err(fail(
            &url,
            AttemptErrorKind::TooManyRedirects(self.max_redirects),
        ))
    }
}

/// A whole answer's body, gathered chunk by chunk into one buffer sized by its `Content-Length`:
/// `Response::bytes` holds every chunk until the last and then copies them all into one buffer,
/// which for a large cluster's `/v2/apps` doubles the peak memory of a read (tens of MB).
async fn read_body(mut response: reqwest::Response) -> Result<Bytes, reqwest::Error> {
    /// A `Content-Length` is trusted for the first allocation only up to this; past it the buffer
    /// grows as the bytes actually arrive.
    const PREALLOCATE_AT_MOST: u64 = 64 << 20;
    let size = response
        .content_length()
        .unwrap_or(0)
        .min(PREALLOCATE_AT_MOST);
    let mut body = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    while let Some(chunk) = response.chunk().await? {
        body.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(body))
}

/// Resolves a `Location` header against the URL that answered, refusing anything that would send
/// our credentials somewhere they should not go.
fn redirect_target(from: &Url, location: Option<&HeaderValue>) -> Result<Url, String> {
    let location = location.ok_or("no Location header")?;
    let location = location
        .to_str()
        .map_err(|_| "Location header is not ASCII".to_string())?;
    let mut next = from
        .join(location)
        .map_err(|e| format!("Location is not a URL: {e}"))?;
    match (from.scheme(), next.scheme()) {
        ("http" | "https", "https") | ("http", "http") => {}
        // Following https -> http would send the Authorization header in clear text.
        ("https", "http") => {
            return Err(format!(
                "refusing to downgrade from https to {}",
                redact_url(&next)
            ));
        }
        _ => return Err(format!("unsupported scheme in {}", redact_url(&next))),
    }
    // User-info in a Location is ignored: our credentials are in the header.
    let _ = next.set_username("");
    let _ = next.set_password(None);
    Ok(next)
}
