//! From the command line and Marathon's answers to desired services: builds the controller's
//! configuration, and turns each snapshot into a `Desired`, reporting skipped apps and L7-only
//! labels once (not at every sync) so logs stay readable on a busy cluster.
use std::{
    collections::{BTreeSet, HashMap},
    net::{Ipv4Addr, ToSocketAddrs},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use tracing::{info, warn};

use super::{
    api,
    client::{Auth, ClientConfig},
    controller::ControllerConfig,
    events::EventStreamConfig,
    translate::{IpSource, TranslateOptions, translate},
};
use crate::{cli::MarathonArgs, services::Desired};

pub fn controller_config(args: &MarathonArgs) -> Result<ControllerConfig> {
    let mut urls = Vec::new();
    for u in &args.urls {
        let url = reqwest::Url::parse(u)
            .map_err(|e| anyhow::anyhow!("--marathon {}: {e}", redact_str(u)))?;
        if !matches!(url.scheme(), "http" | "https") {
            bail!(
                "--marathon {}: only http and https URLs",
                super::client::redact_url(&url)
            );
        }
        urls.push(url);
    }
    let auth = if let Some(a) = &args.marathon_auth {
        Auth::basic(a).context("--marathon-auth")?
    } else if let Some(f) = &args.marathon_auth_file {
        Auth::basic_from_file(f).context("--marathon-auth-file")?
    } else if let Some(t) = &args.marathon_token {
        Auth::token(t.clone())
    } else if let Some(f) = &args.marathon_token_file {
        Auth::token_from_file(f).context("--marathon-token-file")?
    } else {
        Auth::None
    };
    Ok(ControllerConfig {
        client: ClientConfig {
            urls,
            auth,
            ca_cert: args.marathon_ca_cert.clone(),
            ..ClientConfig::default()
        },
        events: EventStreamConfig {
            idle_timeout: Duration::from_secs(args.event_timeout.max(1)),
            ..EventStreamConfig::default()
        },
        resync_interval: Duration::from_secs(args.resync_interval.max(1)),
        ..ControllerConfig::default()
    })
}

/// Hides `user:pass@` in a URL that did not even parse.
fn redact_str(s: &str) -> String {
    match (s.find("://"), s.rfind('@')) {
        (Some(i), Some(j)) if j > i => format!("{}://<redacted>@{}", &s[..i], &s[j + 1..]),
        _ => s.to_owned(),
    }
}

pub fn translate_options(args: &MarathonArgs) -> Result<TranslateOptions> {
    let ip_sources = args
        .ip_sources
        .iter()
        .map(|s| {
            s.parse::<IpSource>()
                .map_err(|e| anyhow::anyhow!("--ip-source {s:?}: {e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(TranslateOptions {
        groups: args.groups.clone(),
        health_check: args.health_check,
        strict_mode: args.strict_mode,
        ip_sources,
    })
}

/// Turns Marathon snapshots into desired services; remembers what it already reported.
pub struct Follower {
    pub opts: TranslateOptions,
    dns: HashMap<String, Option<Ipv4Addr>>,
    reported: BTreeSet<String>,
    /// Reasons for skipped apps, ports or tasks in the last translation (for `lb status`).
    pub skipped: Vec<String>,
}

impl Follower {
    pub fn new(opts: TranslateOptions) -> Self {
        Self {
            opts,
            dns: HashMap::new(),
            reported: BTreeSet::new(),
            skipped: Vec::new(),
        }
    }

    /// Translates one `/v2/apps` body. Errors only when the body as a whole is unusable;
    /// a bad app is skipped with a reason and the rest apply.
    pub fn desired(&mut self, body: &[u8]) -> Result<Desired> {
        let parsed = api::parse_apps(body).context("Marathon's /v2/apps answer")?;
        let mut now_skipped = Vec::new();
        for e in &parsed.errors {
            now_skipped.push(format!(
                "app {} (#{}): unreadable: {}",
                e.app_id.as_deref().unwrap_or("?"),
                e.index,
                e.error
            ));
        }
        let dns = &mut self.dns;
        let mut resolve = |host: &str| -> Option<Ipv4Addr> {
            // Agent host names rarely change; a miss is retried at the next snapshot.
            if let Some(Some(ip)) = dns.get(host) {
                return Some(*ip);
            }
            let ip = (host, 0).to_socket_addrs().ok()?.find_map(|a| match a {
                std::net::SocketAddr::V4(v4) => Some(*v4.ip()),
                std::net::SocketAddr::V6(_) => None,
            });
            dns.insert(host.to_owned(), ip);
            ip
        };
        let t = translate(&parsed.apps, &self.opts, &mut resolve);
        now_skipped.extend(t.skipped.iter().map(ToString::to_string));
        for reason in &now_skipped {
            if self.reported.insert(format!("skip:{reason}")) {
                warn!("skipped: {reason}");
            }
        }
        for u in &t.unsupported {
            let key = format!("l7:{}:{}:{}", u.app_id, u.port_index, u.labels.join(","));
            if self.reported.insert(key) {
                info!(
                    app = %u.app_id,
                    port_index = u.port_index,
                    labels = %u.labels.join(","),
                    "L7-only labels cannot be honoured by an L4 balancer; the port is balanced at L4"
                );
            }
        }
        self.skipped = now_skipped;
        Ok(t.desired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unparseable_urls_lose_their_credentials_in_errors() {
        assert_eq!(
            redact_str("http://u:secret@host:8080/x"),
            "http://<redacted>@host:8080/x"
        );
        assert_eq!(redact_str("http://host:8080"), "http://host:8080");
        let args = MarathonArgs {
            urls: vec!["http://u:secret@bad host".into()],
            marathon_auth: None,
            marathon_auth_file: None,
            marathon_token: None,
            marathon_token_file: None,
            marathon_ca_cert: None,
            groups: vec!["external".into()],
            health_check: false,
            strict_mode: false,
            ip_sources: vec!["netinfo".into()],
            resync_interval: 300,
            event_timeout: 60,
        };
        let e = controller_config(&args).unwrap_err().to_string();
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn bad_ip_source_is_named() {
        let args = MarathonArgs {
            urls: vec![],
            marathon_auth: None,
            marathon_auth_file: None,
            marathon_token: None,
            marathon_token_file: None,
            marathon_ca_cert: None,
            groups: vec![],
            health_check: false,
            strict_mode: false,
            ip_sources: vec!["dns".into()],
            resync_interval: 300,
            event_timeout: 60,
        };
        let e = translate_options(&args).unwrap_err().to_string();
        assert!(e.contains("dns"), "{e}");
    }
}
