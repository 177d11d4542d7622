//! What can go wrong talking to Marathon: configuration errors, and per-URL attempt failures
//! (already redacted) gathered when every URL failed.
use std::{fmt, path::PathBuf};

use reqwest::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no Marathon URL configured")]
    NoUrls,
    #[error("{0:?} is not a Marathon app id")]
    BadAppId(String),
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
pub(super) fn describe(err: reqwest::Error) -> AttemptErrorKind {
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
