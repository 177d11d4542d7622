//! Credentials for Marathon (basic auth, DC/OS tokens), kept out of every log line and error:
//! secrets that print as `<redacted>`, and URLs printed without their user-info.
use std::{fmt, path::Path};

use reqwest::{Url, header::HeaderValue};

use super::ClientError;

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

    pub(super) fn header(&self) -> Option<HeaderValue> {
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

pub(super) fn parse_basic(s: &str) -> Option<Auth> {
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
pub(super) fn base64(input: &[u8]) -> String {
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

pub(super) fn percent_decode(s: &str) -> String {
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
