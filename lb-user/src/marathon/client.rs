//! The Marathon REST client: fetches `/v2/apps?embed=apps.tasks` as raw bytes and opens the event
//! stream, failing over between several Marathon URLs and following leader redirects with credentials.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue, LOCATION};
use reqwest::{StatusCode, Url};

/// The path and query of the full-state read; `embed=apps.tasks` puts each app's tasks in the
/// same document so one request yields a consistent picture.
pub const APPS_PATH: &str = "v2/apps?embed=apps.tasks";

/// A string that must never be printed: its `Debug` says `<redacted>` and it has no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for building the `Authorization` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How to authenticate to Marathon.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Auth {
    #[default]
    None,
    /// HTTP basic auth (`--marathon-auth-credential-file` / `user:pass` in marathon-lb).
    Basic { user: Secret, password: Secret },
    /// DC/OS ACS token, sent as `Authorization: token=<TOKEN>`.
    Token(Secret),
}

impl Auth {
    /// Parses `user:password`; the password may itself contain `:`.
    pub fn basic(user_colon_password: &str) -> Result<Self, ClientError> {
        parse_basic(user_colon_password).ok_or(ClientError::BasicFormat {
            source_desc: "the given value".into(),
        })
    }

    /// Reads `user:password` from the first line of `path` (marathon-lb's credential file format).
    pub fn basic_from_file(path: &Path) -> Result<Self, ClientError> {
        let text = read_secret_file(path)?;
        let first = text.lines().next().unwrap_or("").trim_end_matches('\r');
        parse_basic(first).ok_or_else(|| ClientError::BasicFormat {
            source_desc: format!("the first line of {}", path.display()),
        })
    }

    pub fn token(token: impl Into<String>) -> Self {
        Auth::Token(Secret::new(token))
    }

    /// Reads a token from the first line of `path`, so it need not appear on a command line.
    pub fn token_from_file(path: &Path) -> Result<Self, ClientError> {
        let text = read_secret_file(path)?;
        let token = text.lines().next().unwrap_or("").trim();
        if token.is_empty() {
            return Err(ClientError::EmptyToken {
                path: path.to_owned(),
            });
        }
        Ok(Auth::token(token))
    }

    fn header(&self) -> Option<HeaderValue> {
        let mut value = match self {
            Auth::None => return None,
            Auth::Basic { user, password } => {
                let raw = format!("{}:{}", user.expose(), password.expose());
                HeaderValue::from_str(&format!("Basic {}", base64(raw.as_bytes()))).ok()?
            }
            Auth::Token(token) => {
                HeaderValue::from_str(&format!("token={}", token.expose())).ok()?
            }
        };
        // Keeps hyper and any logging layer from printing it.
        value.set_sensitive(true);
        Some(value)
    }
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Even the user name stays out: it is half of the credential.
        match self {
            Auth::None => f.write_str("None"),
            Auth::Basic { .. } => f.write_str("Basic(<redacted>)"),
            Auth::Token(_) => f.write_str("Token(<redacted>)"),
        }
    }
}

fn parse_basic(s: &str) -> Option<Auth> {
    let (user, password) = s.split_once(':')?;
    if user.is_empty() {
        return None;
    }
    Some(Auth::Basic {
        user: Secret::new(user),
        password: Secret::new(password),
    })
}

fn read_secret_file(path: &Path) -> Result<String, ClientError> {
    std::fs::read_to_string(path).map_err(|source| ClientError::CredentialsFile {
        path: path.to_owned(),
        source,
    })
}

/// Standard base64 with padding; a dozen lines instead of a dependency for one header.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Prints a URL without its user-info, so credentials given as `http://user:pass@host` never reach
/// a log line or an error message.
pub struct Redacted<'a>(pub &'a Url);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(self.0))
    }
}

/// The URL as a string with user name and password removed.
pub fn redact_url(url: &Url) -> String {
    let mut clean = url.clone();
    // Both only fail for URLs that cannot have user-info, which then have none to hide.
    let _ = clean.set_username("");
    let _ = clean.set_password(None);
    clean.to_string()
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

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no Marathon URL configured")]
    NoUrls,
    #[error("Marathon URL {url} is not usable: {reason}")]
    BadUrl { url: String, reason: &'static str },
    #[error(
        "Marathon URL {url} carries credentials and another authentication was also given; use one"
    )]
    ConflictingAuth { url: String },
    #[error("reading Marathon credentials from {path}: {source}")]
    CredentialsFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Marathon basic auth from {source_desc} is not of the form user:password")]
    BasicFormat { source_desc: String },
    #[error("Marathon token file {path} is empty")]
    EmptyToken { path: PathBuf },
    #[error("reading CA certificate {path}: {source}")]
    CaFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CA certificate file {path} holds no usable PEM certificate{}", .reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
    CaPem {
        path: PathBuf,
        reason: Option<String>,
    },
    #[error("building the HTTP client: {0}")]
    Build(String),
    #[error("every Marathon URL failed: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    AllFailed(Vec<AttemptError>),
}

impl ClientError {
    /// The per-URL failures when every URL was tried, for callers that want to look closer.
    pub fn attempts(&self) -> &[AttemptError] {
        match self {
            ClientError::AllFailed(attempts) => attempts,
            _ => &[],
        }
    }
}

/// Why one URL did not give an answer; `url` is already redacted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptError {
    pub url: String,
    pub kind: AttemptErrorKind,
}

impl fmt::Display for AttemptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GET {}: {}", self.url, self.kind)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptErrorKind {
    /// Could not connect (refused, unreachable, DNS, TLS handshake).
    Connect(String),
    /// Connect or whole-request timeout.
    Timeout,
    /// 502/503/504: Marathon says it has no leader or the proxy in front has no upstream.
    NoLeader(StatusCode),
    /// Any other non-2xx answer.
    Status(StatusCode),
    TooManyRedirects(usize),
    BadRedirect(String),
    /// The base URL and the request path do not join into a URL.
    BadUrl(String),
    /// The connection broke while reading the body.
    Body(String),
}

impl AttemptErrorKind {
    /// Whether another URL or a later retry may well succeed (as opposed to e.g. 401, a config error).
    pub fn is_transient(&self) -> bool {
        !matches!(self, AttemptErrorKind::Status(s) if s.is_client_error())
    }
}

impl fmt::Display for AttemptErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttemptErrorKind::Connect(e) => write!(f, "cannot connect: {e}"),
            AttemptErrorKind::Timeout => f.write_str("timed out"),
            AttemptErrorKind::NoLeader(s) => write!(f, "{s} (no Marathon leader, transient)"),
            AttemptErrorKind::Status(s) => write!(f, "answered {s}"),
            AttemptErrorKind::TooManyRedirects(n) => write!(f, "more than {n} redirects"),
            AttemptErrorKind::BadRedirect(e) => write!(f, "bad redirect: {e}"),
            AttemptErrorKind::BadUrl(e) => write!(f, "bad URL: {e}"),
            AttemptErrorKind::Body(e) => write!(f, "reading the body: {e}"),
        }
    }
}

/// Flattens a reqwest error and its causes into one line, minus the URL reqwest would print.
fn describe(err: reqwest::Error) -> AttemptErrorKind {
    if err.is_timeout() {
        return AttemptErrorKind::Timeout;
    }
    let is_connect = err.is_connect();
    let err = err.without_url();
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        let s = cause.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = cause.source();
    }
    if is_connect {
        AttemptErrorKind::Connect(text)
    } else {
        AttemptErrorKind::Body(text)
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
                    RequestKind::Json => match response.bytes().await {
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

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(Some(hi)), Some(Some(lo))) = (
                bytes.get(i + 1).map(|&b| hex(b)),
                bytes.get(i + 2).map(|&b| hex(b)),
            )
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        s.parse().expect("test URL parses")
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want, "base64 of {input:?}");
        }
    }

    #[test]
    fn basic_auth_parses_user_and_password_with_colons() {
        let auth = Auth::basic("alice:pa:ss").expect("user:pass parses");
        assert_eq!(
            auth,
            Auth::Basic {
                user: Secret::new("alice"),
                password: Secret::new("pa:ss")
            }
        );
        assert!(
            Auth::basic("no-colon").is_err(),
            "a value without ':' is rejected"
        );
        assert!(Auth::basic(":pass").is_err(), "an empty user is rejected");
        let header = auth.header().expect("basic auth gives a header");
        assert_eq!(
            header.to_str().expect("ascii"),
            format!("Basic {}", base64(b"alice:pa:ss"))
        );
        assert!(header.is_sensitive(), "the header is marked sensitive");
    }

    #[test]
    fn token_auth_uses_dcos_header_form() {
        let header = Auth::token("abc.def")
            .header()
            .expect("token gives a header");
        assert_eq!(header.to_str().expect("ascii"), "token=abc.def");
    }

    #[test]
    fn credential_files_read_first_line_only() {
        let dir = std::env::temp_dir().join(format!("lb-client-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        let path = dir.join("cred");
        std::fs::write(&path, "bob:s3cret\r\nignored:line\n").expect("write cred file");
        let auth = Auth::basic_from_file(&path).expect("credential file parses");
        assert_eq!(
            auth,
            Auth::Basic {
                user: Secret::new("bob"),
                password: Secret::new("s3cret")
            }
        );
        std::fs::write(&path, "tok-123\n").expect("write token file");
        assert_eq!(
            Auth::token_from_file(&path).expect("token file parses"),
            Auth::token("tok-123")
        );
        std::fs::write(&path, "nocolon\n").expect("write bad cred file");
        let err = Auth::basic_from_file(&path).expect_err("a line without ':' is rejected");
        assert!(
            !err.to_string().contains("nocolon"),
            "the error does not echo the file content: {err}"
        );
        let missing =
            Auth::basic_from_file(&dir.join("missing")).expect_err("a missing file is an error");
        assert!(
            missing.to_string().contains("missing"),
            "the error names the file: {missing}"
        );
        std::fs::remove_dir_all(&dir).expect("remove temp dir");
    }

    #[test]
    fn secrets_never_appear_in_debug_or_errors() {
        let cfg = ClientConfig {
            urls: vec![url("http://alice:hunter2@marathon.example:8080")],
            auth: Auth::None,
            ..ClientConfig::default()
        };
        let debug = format!("{cfg:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("alice"),
            "config Debug leaks: {debug}"
        );
        let client = MarathonClient::new(&cfg).expect("client builds");
        let client_debug = format!("{client:?}");
        assert!(
            !client_debug.contains("hunter2") && !client_debug.contains("alice"),
            "client Debug leaks: {client_debug}"
        );
        assert_eq!(
            client.auth,
            Auth::Basic {
                user: Secret::new("alice"),
                password: Secret::new("hunter2")
            }
        );
        assert!(
            client
                .urls()
                .iter()
                .all(|u| u.username().is_empty() && u.password().is_none()),
            "kept URLs carry no user-info"
        );

        for auth in [
            Auth::basic("alice:hunter2").expect("parses"),
            Auth::token("hunter2"),
        ] {
            let d = format!("{auth:?}");
            assert!(
                !d.contains("hunter2") && !d.contains("alice"),
                "Auth Debug leaks: {d}"
            );
        }
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "<redacted>");
        assert_eq!(
            redact_url(&url("https://alice:hunter2@m.example/marathon")),
            "https://m.example/marathon"
        );

        let bad = ClientConfig {
            urls: vec![url("ftp://alice:hunter2@m.example")],
            ..ClientConfig::default()
        };
        let err = MarathonClient::new(&bad).expect_err("ftp is rejected");
        let text = format!("{err} {err:?}");
        assert!(
            !text.contains("hunter2") && !text.contains("alice"),
            "error leaks: {text}"
        );

        let conflict = ClientConfig {
            urls: vec![url("http://alice:hunter2@m.example")],
            auth: Auth::token("t"),
            ..ClientConfig::default()
        };
        let err = MarathonClient::new(&conflict).expect_err("two kinds of auth are rejected");
        let text = format!("{err} {err:?}");
        assert!(
            !text.contains("hunter2") && !text.contains("alice"),
            "error leaks: {text}"
        );
    }

    #[test]
    fn attempt_errors_redact_and_say_what_was_tried() {
        let err = ClientError::AllFailed(vec![
            AttemptError {
                url: redact_url(&url("http://u:p@a:8080/v2/apps")),
                kind: AttemptErrorKind::Timeout,
            },
            AttemptError {
                url: redact_url(&url("http://b:8080/v2/apps")),
                kind: AttemptErrorKind::NoLeader(StatusCode::SERVICE_UNAVAILABLE),
            },
        ]);
        let text = err.to_string();
        assert_eq!(
            text,
            "every Marathon URL failed: GET http://a:8080/v2/apps: timed out; GET http://b:8080/v2/apps: 503 Service Unavailable (no Marathon leader, transient)"
        );
    }

    #[test]
    fn base_urls_join_as_directories() {
        let cfg = ClientConfig {
            urls: vec![url("https://leader.mesos/marathon")],
            ..ClientConfig::default()
        };
        let client = MarathonClient::new(&cfg).expect("client builds");
        assert_eq!(
            client.urls()[0].join(APPS_PATH).expect("joins").as_str(),
            "https://leader.mesos/marathon/v2/apps?embed=apps.tasks"
        );
    }

    #[test]
    fn redirects_resolve_and_never_downgrade() {
        let from = url("https://a:8443/v2/apps?embed=apps.tasks");
        let h = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(
            redirect_target(&from, Some(&h("https://b:8443/v2/apps?embed=apps.tasks")))
                .expect("absolute")
                .as_str(),
            "https://b:8443/v2/apps?embed=apps.tasks"
        );
        assert_eq!(
            redirect_target(&from, Some(&h("/v2/apps")))
                .expect("relative")
                .as_str(),
            "https://a:8443/v2/apps"
        );
        assert!(
            redirect_target(&from, Some(&h("http://b:8080/v2/apps"))).is_err(),
            "https -> http is refused"
        );
        assert!(
            redirect_target(&from, None).is_err(),
            "no Location is an error"
        );
        let with_userinfo = redirect_target(&url("http://a/"), Some(&h("http://x:y@b/")))
            .expect("userinfo is stripped");
        assert_eq!(with_userinfo.as_str(), "http://b/");
    }

    #[test]
    fn percent_decoding_of_url_credentials() {
        assert_eq!(percent_decode("p%40ss%3Aword"), "p@ss:word");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    /// A throwaway self-signed certificate (no key kept anywhere); only its parsing matters.
    const TEST_CA: &str = "-----BEGIN CERTIFICATE-----\n\
MIIBczCCARmgAwIBAgIUbvo/FpXytYiW/qkBdtqotzUafekwCgYIKoZIzj0EAwIw\n\
DzENMAsGA1UEAwwEdGVzdDAeFw0yNjExMjExODUzMTFaFw0yNjExMjIxODUzMTFa\n\
MA8xDTALBgNVBAMMBHRlc3QwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAReFxfH\n\
C98HVaX2pzOkhjNv9v0N3ZF8PdsOm/zZMNS3Fjz8g8xrUdisZyxdIVpxMA91gJfN\n\
Lit5PpFWtNgeMVTHo1MwUTAdBgNVHQ4EFgQUl8uQvThslCOAsAN3tQUJoDkRgUAw\n\
HwYDVR0jBBgwFoAUl8uQvThslCOAsAN3tQUJoDkRgUAwDwYDVR0TAQH/BAUwAwEB\n\
/zAKBggqhkjOPQQDAgNIADBFAiEAxX6Z8b0UnZl1Ns8NSiS9yxCAR11WiCMBFzFL\n\
SGk4B+QCIF2n7CqGttm8pmj4ftqxMThyfaAyq5LE8xB6coxH4xQh\n\
-----END CERTIFICATE-----\n";

    #[test]
    fn ca_file_is_loaded_or_rejected_with_its_path() {
        let dir = std::env::temp_dir().join(format!("lb-client-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        let cfg = |path: PathBuf| ClientConfig {
            urls: vec![url("https://m.example")],
            ca_cert: Some(path),
            ..ClientConfig::default()
        };
        let good = dir.join("ca.pem");
        std::fs::write(&good, TEST_CA).expect("write CA");
        MarathonClient::new(&cfg(good)).expect("a PEM certificate is accepted");
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").expect("write garbage");
        let err = MarathonClient::new(&cfg(garbage)).expect_err("garbage is rejected");
        assert!(matches!(err, ClientError::CaPem { .. }), "{err:?}");
        assert!(err.to_string().contains("garbage.pem"), "{err}");
        let err = MarathonClient::new(&cfg(dir.join("missing.pem"))).expect_err("missing file");
        assert!(
            matches!(err, ClientError::CaFile { .. }) && err.to_string().contains("missing.pem"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).expect("remove temp dir");
    }
}
