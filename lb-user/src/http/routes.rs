//! Which host goes where: marathon-lb's virtual hosts (`HAPROXY_{n}_VHOST`, `_PATH`,
//! `_BACKEND_WEIGHT`, `_REDIRECT_TO_HTTPS`, `_SSL_CERT`) as an ordered rule list, derived from
//! the catalog's apps and the L4 translation's services. Pure: data in, data out.
//!
//! The services decide everything about backends (groups, enabled ports, task states, health,
//! draining, addresses): a rule is a service's backends plus the vhost labels of the app that
//! defines it, so "which tasks become backends" stays in `marathon/translate/`.
//!
//! Order, as marathon-lb writes its `use_backend` lines (HAProxy takes the first that matches):
//! apps by (app id, service port), then a stable sort by weight, highest first, where a port with
//! `PATH` and no weight weighs 1 (marathon-lb's `set_path`), so path rules precede plain ones.
//! HAProxy runs `redirect` rules before any `use_backend`: on plain HTTP a redirecting vhost
//! (and path) answers 301 whatever the order. A rule without backends is left out, as marathon-lb
//! leaves out an app without tasks, so the next matching rule gets the request.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddrV4},
};

use serde::Serialize;

use crate::{
    marathon::api::App,
    services::{Cidr, Protocol, ServiceSpec},
};

/// The HTTP routes of one Marathon state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Routes {
    /// In matching order.
    pub rules: Vec<Rule>,
    /// Certificate files named by `HAPROXY_{n}_SSL_CERT`, sorted, without duplicates.
    pub certs: Vec<String>,
}

/// One app port's virtual hosts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// marathon-lb's backend name (`nginx_10000`): the L4 service's name.
    pub backend: String,
    pub app_id: String,
    pub port_index: usize,
    pub service_port: u16,
    /// Lower-cased names, matched whole and case-insensitively against the Host (or SNI).
    pub hosts: Vec<String>,
    /// `HAPROXY_{n}_PATH`: the request path must start with one of these; None matches all.
    pub paths: Option<Paths>,
    pub redirect_to_https: bool,
    pub weight: i64,
    /// The service's backends (task address, container port), sorted.
    pub backends: Vec<SocketAddrV4>,
    /// The service's allowed client ranges (`HAPROXY_{n}_BACKEND_NETWORK_ALLOWED_ACL`, which
    /// marathon-lb applies to HTTP backends too: `http-request deny`); empty: every client.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<Cidr>,
}

impl Rule {
    /// Whether a client at `ip` may be sent to this rule's backends.
    pub fn admits(&self, ip: IpAddr) -> bool {
        self.allow.is_empty()
            || match ip {
                IpAddr::V4(v4) => self.allow.iter().any(|c| c.contains(v4)),
                IpAddr::V6(v6) => v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| self.allow.iter().any(|c| c.contains(v4))),
            }
    }
}

/// HAProxy's `path_beg` with its flags: `-i` makes the match case-insensitive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Paths {
    pub prefixes: Vec<String>,
    pub ignore_case: bool,
}

impl Paths {
    fn parse(label: &str) -> Option<Self> {
        let mut prefixes = Vec::new();
        let mut ignore_case = false;
        for word in label.split_whitespace() {
            match word {
                "-i" => ignore_case = true,
                // Other `path_beg` flags (`-m beg`, `--`) change nothing for a prefix match.
                w if w.starts_with('-') => {}
                w => prefixes.push(w.to_owned()),
            }
        }
        (!prefixes.is_empty()).then_some(Self {
            prefixes,
            ignore_case,
        })
    }

    pub fn matches(&self, path: &str) -> bool {
        self.prefixes.iter().any(|p| {
            path.len() >= p.len()
                && path.is_char_boundary(p.len())
                && if self.ignore_case {
                    path[..p.len()].eq_ignore_ascii_case(p)
                } else {
                    path.starts_with(p.as_str())
                }
        })
    }
}

/// Where a request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// 301 to the same host and URI over https (`HAPROXY_{n}_REDIRECT_TO_HTTPS`).
    RedirectToHttps,
    /// To `rules[i]`'s backends.
    Rule(usize),
    /// No vhost matches: HAProxy's 503.
    NoRoute,
}

/// The host part of a `Host` header (or SNI): the `:port` is dropped, and an IPv6 literal keeps
/// its brackets.
pub fn host_name(host: &str) -> &str {
    let host = host.trim();
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

impl Routes {
    /// Where a request for `host` (Host header or SNI, with or without port) and `path` goes;
    /// `tls` says whether it came in over TLS (redirects apply to plain HTTP only).
    pub fn route(&self, host: Option<&str>, path: &str, tls: bool) -> Route {
        let Some(host) = host.map(host_name).filter(|h| !h.is_empty()) else {
            return Route::NoRoute;
        };
        let matches = |r: &Rule| {
            r.hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
                && r.paths.as_ref().is_none_or(|p| p.matches(path))
        };
        if !tls && self.rules.iter().any(|r| r.redirect_to_https && matches(r)) {
            return Route::RedirectToHttps;
        }
        self.rules
            .iter()
            .position(|r| !r.backends.is_empty() && matches(r))
            .map_or(Route::NoRoute, Route::Rule)
    }

    /// True when some served app port has a virtual host (then :80 and :443 are opened).
    pub fn has_vhosts(&self) -> bool {
        !self.rules.is_empty()
    }
}

/// The routes of `services` (the L4 translation's, settled), with the labels of `apps`.
pub fn routes(apps: &BTreeMap<String, App>, services: &[ServiceSpec]) -> Routes {
    let mut rules = Vec::new();
    let mut certs = BTreeSet::new();
    for s in services {
        // A `udp,tcp` port is two services; HTTP rides on the TCP one.
        if s.listener.protocol != Protocol::Tcp {
            continue;
        }
        let (Some(app_id), Some(i)) = (&s.app_id, s.port_index) else {
            continue;
        };
        let Some(app) = apps.get(app_id) else {
            continue;
        };
        let label = |name: &str| {
            app.labels
                .get(&format!("HAPROXY_{i}_{name}"))
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
        };
        let Some(vhost) = label("VHOST") else {
            continue;
        };
        let hosts: Vec<String> = vhost
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        if hosts.is_empty() {
            continue;
        }
        let paths = label("PATH").and_then(Paths::parse);
        // marathon-lb's `int(v)` would stop on garbage; here it weighs nothing.
        let mut weight = label("BACKEND_WEIGHT")
            .and_then(|w| w.parse::<i64>().ok())
            .unwrap_or(0);
        if paths.is_some() && weight == 0 {
            weight = 1;
        }
        if let Some(cert) = label("SSL_CERT") {
            certs.insert(cert.to_owned());
        }
        rules.push(Rule {
            backend: s.name.clone(),
            app_id: app_id.clone(),
            port_index: i,
            service_port: s.listener.port,
            hosts,
            paths,
            redirect_to_https: label("REDIRECT_TO_HTTPS").is_some_and(truthy),
            weight,
            backends: s.backends.clone(),
            allow: s.allow.clone(),
        });
    }
    rules.sort_by(|a, b| (&a.app_id, a.service_port).cmp(&(&b.app_id, b.service_port)));
    // Stable: equal weights keep the (app id, service port) order.
    rules.sort_by_key(|r| std::cmp::Reverse(r.weight));
    Routes {
        rules,
        certs: certs.into_iter().collect(),
    }
}

/// marathon-lb's `string_to_bool`.
fn truthy(v: &str) -> bool {
    matches!(v.to_lowercase().as_str(), "true" | "t" | "yes" | "y")
}

#[cfg(test)]
mod tests;
