//! Static services from a JSON file (`lb run --config FILE`), for running without Marathon.
//! The whole file is validated before anything is applied; errors name the field and value.
use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
};

use serde::Deserialize;
use thiserror::Error;

use crate::services::{Balance, Cidr, Desired, Listener, Protocol, ServiceSpec};

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not valid JSON for a services file: {source}")]
    Syntax {
        path: String,
        source: serde_json::Error,
    },
    #[error("{path}: {field}: {problem}")]
    Invalid {
        path: String,
        field: String,
        problem: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    services: Vec<RawService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: String,
    port: serde_json::Value,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    bind: Option<String>,
    #[serde(default)]
    balance: Option<String>,
    backends: Vec<String>,
    /// Client ranges allowed; absent or empty: `--allow`, else every client.
    #[serde(default)]
    allow: Vec<String>,
}

pub fn load(path: &Path) -> Result<Desired, ConfigError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: p.clone(),
        source,
    })?;
    parse(&text, &p)
}

/// Parses and validates a services file; `origin` names it in errors.
pub fn parse(text: &str, origin: &str) -> Result<Desired, ConfigError> {
    let file: File = serde_json::from_str(text).map_err(|source| ConfigError::Syntax {
        path: origin.to_owned(),
        source,
    })?;
    let invalid = |field: String, problem: String| ConfigError::Invalid {
        path: origin.to_owned(),
        field,
        problem,
    };
    let mut services = Vec::new();
    let mut names = BTreeSet::new();
    let mut listeners = BTreeSet::new();
    for (i, raw) in file.services.into_iter().enumerate() {
        let at = |f: &str| format!("services[{i}].{f}");
        if raw.name.trim().is_empty() {
            return Err(invalid(at("name"), "must not be empty".into()));
        }
        if !names.insert(raw.name.clone()) {
            return Err(invalid(
                at("name"),
                format!("{:?} is used by an earlier service", raw.name),
            ));
        }
        let port = match raw.port.as_u64() {
            Some(p @ 1..=65535) => p as u16,
            _ => {
                return Err(invalid(
                    at("port"),
                    format!("{} is not a port (1-65535)", raw.port),
                ));
            }
        };
        let protocol = match raw.protocol.as_deref().unwrap_or("tcp") {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            other => {
                return Err(invalid(
                    at("protocol"),
                    format!("{other:?} is not \"tcp\" or \"udp\""),
                ));
            }
        };
        let bind = match raw.bind.as_deref() {
            None => None,
            Some(b) => match b.parse::<Ipv4Addr>() {
                Ok(a) if a.is_unspecified() => None,
                Ok(a) => Some(a),
                Err(_) => return Err(invalid(at("bind"), format!("{b:?} is not an IPv4 address"))),
            },
        };
        let balance = match raw.balance.as_deref().unwrap_or("roundrobin") {
            "roundrobin" => Balance::RoundRobin,
            "source" => Balance::Source,
            "leastconn" => Balance::LeastConn,
            other => {
                return Err(invalid(
                    at("balance"),
                    format!("{other:?} is not \"roundrobin\", \"source\" or \"leastconn\""),
                ));
            }
        };
        let mut backends = Vec::with_capacity(raw.backends.len());
        for (j, b) in raw.backends.iter().enumerate() {
            match b.parse::<SocketAddrV4>() {
                Ok(a) if a.port() != 0 && !a.ip().is_unspecified() => backends.push(a),
                _ => {
                    return Err(invalid(
                        format!("services[{i}].backends[{j}]"),
                        format!("{b:?} is not an IPv4 address:port"),
                    ));
                }
            }
        }
        backends.sort();
        backends.dedup();
        let mut allow = Vec::with_capacity(raw.allow.len());
        for (j, a) in raw.allow.iter().enumerate() {
            allow.push(
                a.parse::<Cidr>()
                    .map_err(|e| invalid(format!("services[{i}].allow[{j}]"), e))?,
            );
        }
        let listener = Listener {
            bind,
            port,
            protocol,
        };
        if !listeners.insert(listener) {
            return Err(invalid(
                at("port"),
                format!("{listener} is already served by an earlier service"),
            ));
        }
        services.push(ServiceSpec {
            name: raw.name,
            listener,
            balance,
            app_id: None,
            port_index: None,
            backends,
            allow: Cidr::normalize(allow),
        });
    }
    services.sort_by_key(|s| s.listener);
    Ok(Desired { services })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse(text, "t.json")
            .expect_err("should be rejected")
            .to_string()
    }

    #[test]
    fn the_documented_example_parses() {
        let d = parse(
            r#"{"services": [{"name": "web_10000", "port": 10000, "protocol": "tcp", "bind": "10.0.0.5",
                "backends": ["192.168.84.196:80", "192.168.57.66:80"]},
               {"name": "dns", "port": 10053, "protocol": "udp", "backends": []}]}"#,
            "t.json",
        )
        .unwrap();
        assert_eq!(d.services.len(), 2);
        let web = d.services.iter().find(|s| s.name == "web_10000").unwrap();
        assert_eq!(web.listener.bind, Some("10.0.0.5".parse().unwrap()));
        assert_eq!(
            web.backends,
            vec![
                "192.168.57.66:80".parse().unwrap(),
                "192.168.84.196:80".parse().unwrap()
            ]
        );
        let dns = d.services.iter().find(|s| s.name == "dns").unwrap();
        assert_eq!(
            (dns.listener.bind, dns.listener.protocol),
            (None, Protocol::Udp)
        );
    }

    #[test]
    fn allowed_ranges_are_read_and_bad_ones_named() {
        let d = parse(
            r#"{"services": [{"name": "db", "port": 5432, "backends": [],
                "allow": ["10.0.0.0/8", "192.168.1.7", "10.0.0.0/8"]}]}"#,
            "t.json",
        )
        .unwrap();
        let allow: Vec<String> = d.services[0].allow.iter().map(|c| c.to_string()).collect();
        assert_eq!(allow, ["10.0.0.0/8", "192.168.1.7/32"]);
        assert!(
            err(
                r#"{"services": [{"name": "db", "port": 5432, "backends": [],
                "allow": ["10.0.0.0/8", "10.0.0.0/99"]}]}"#
            )
            .contains("services[0].allow[1]: \"10.0.0.0/99\": prefix length 99 is over 32")
        );
    }

    #[test]
    fn errors_name_the_field_and_value() {
        let e = err(r#"{"services": [{"name": "a", "port": 70000, "backends": []}]}"#);
        assert!(e.contains("services[0].port") && e.contains("70000"), "{e}");
        let e = err(
            r#"{"services": [{"name": "a", "port": 1, "backends": ["1.2.3.4:80", "1.2.3.400:80"]}]}"#,
        );
        assert!(
            e.contains("services[0].backends[1]") && e.contains("1.2.3.400:80"),
            "{e}"
        );
        let e =
            err(r#"{"services": [{"name": "a", "port": 1, "protocol": "sctp", "backends": []}]}"#);
        assert!(
            e.contains("services[0].protocol") && e.contains("sctp"),
            "{e}"
        );
        let e =
            err(r#"{"services": [{"name": "a", "port": 1, "bind": "example", "backends": []}]}"#);
        assert!(
            e.contains("services[0].bind") && e.contains("example"),
            "{e}"
        );
        let e = err(r#"{"services": [{"name": "a", "port": "80", "backends": []}]}"#);
        assert!(
            e.contains("services[0].port") && e.contains("\"80\""),
            "{e}"
        );
        let e =
            err(r#"{"services": [{"name": "a", "port": 1, "balance": "first", "backends": []}]}"#);
        assert!(
            e.contains("services[0].balance") && e.contains("first"),
            "{e}"
        );
        let e = err(r#"{"services": [{"name": "a", "port": 1, "backends": ["1.2.3.4:0"]}]}"#);
        assert!(e.contains("backends[0]"), "{e}");
    }

    #[test]
    fn conflicts_and_unknown_fields_are_rejected() {
        let e = err(
            r#"{"services": [{"name": "a", "port": 1, "backends": []}, {"name": "a", "port": 2, "backends": []}]}"#,
        );
        assert!(e.contains("services[1].name"), "{e}");
        let e = err(
            r#"{"services": [{"name": "a", "port": 1, "backends": []}, {"name": "b", "port": 1, "backends": []}]}"#,
        );
        assert!(
            e.contains("services[1].port") && e.contains("*:1/tcp"),
            "{e}"
        );
        let e = err(r#"{"services": [{"name": "a", "port": 1, "bakends": []}]}"#);
        assert!(e.contains("bakends"), "{e}");
        let e = err("not json");
        assert!(e.contains("t.json"), "{e}");
    }

    #[test]
    fn same_port_on_two_protocols_or_binds_is_fine() {
        let d = parse(
            r#"{"services": [{"name": "a", "port": 53, "protocol": "udp", "backends": []},
                             {"name": "b", "port": 53, "protocol": "tcp", "backends": []},
                             {"name": "c", "port": 53, "bind": "10.0.0.1", "backends": []}]}"#,
            "t.json",
        )
        .unwrap();
        assert_eq!(d.services.len(), 3);
    }
}
