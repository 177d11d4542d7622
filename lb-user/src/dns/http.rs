//! Mesos-DNS's HTTP interface, on the metrics listener and on `--dns-http-listen` (its
//! `HttpPort`): `GET /v1/version`, `/v1/config`, `/v1/hosts/{host}` (the A records of a name),
//! `/v1/services/{service}` (its SRV records, each with its target's first address) and
//! `/v1/enumerate` (every task with its records), in Mesos-DNS's JSON shapes, so that scripts
//! written against Mesos-DNS keep working. Answered from the same zone as DNS.
use std::{net::SocketAddr, sync::Arc};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Serialize;
use serde_json::json;
use tokio::sync::watch;

use super::zone::{EnumTask, Zone};

/// What `/v1/config` reports (Mesos-DNS's field names, for the fields that mean something here).
#[derive(Clone, Debug)]
pub struct HttpConfig {
    pub domain: String,
    pub ttl: u32,
    /// The DNS server's addresses.
    pub dns_listen: Vec<SocketAddr>,
    pub http_listen: SocketAddr,
}

#[derive(Clone)]
struct AppState {
    config: Arc<HttpConfig>,
    zone: watch::Receiver<Option<Arc<Zone>>>,
}

/// Mesos-DNS's `/v1/hosts` entry.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct HostRecord {
    pub host: String,
    pub ip: String,
}

/// Mesos-DNS's `/v1/services` entry (the port as a string, as it writes it).
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct ServiceRecord {
    pub service: String,
    pub host: String,
    pub ip: String,
    pub port: String,
}

/// The name as Mesos-DNS looks it up: lowercase, with the final dot (the zone keeps names
/// without it).
fn fqdn(name: &str) -> String {
    let mut n = name.trim().to_ascii_lowercase();
    if !n.ends_with('.') {
        n.push('.');
    }
    n
}

/// `/v1/hosts/{host}`: one entry per address; one empty entry for a name without any, as
/// Mesos-DNS answers.
pub fn hosts(zone: &Zone, host: &str) -> Vec<HostRecord> {
    let dom = fqdn(host);
    let out: Vec<HostRecord> = zone
        .names
        .get(dom.trim_end_matches('.'))
        .map(|r| {
            r.a.iter()
                .map(|ip| HostRecord {
                    host: dom.clone(),
                    ip: ip.to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    if out.is_empty() {
        vec![HostRecord::default()]
    } else {
        out
    }
}

/// `/v1/services/{service}`: one entry per SRV record, with its target's first address; the
/// service as it was asked (Mesos-DNS echoes it); one empty entry for a name without any.
pub fn services(zone: &Zone, service: &str) -> Vec<ServiceRecord> {
    let dom = fqdn(service);
    let out: Vec<ServiceRecord> = zone
        .names
        .get(dom.trim_end_matches('.'))
        .map(|r| {
            r.srv
                .iter()
                .map(|s| ServiceRecord {
                    service: service.to_owned(),
                    host: fqdn(&s.target),
                    ip: zone
                        .names
                        .get(s.target.as_str())
                        .and_then(|t| t.a.first())
                        .map_or_else(String::new, ToString::to_string),
                    port: s.port.to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    if out.is_empty() {
        vec![ServiceRecord::default()]
    } else {
        out
    }
}

/// `/v1/enumerate`: Mesos-DNS's shape, with the one framework `lb` follows.
#[derive(Debug, Serialize)]
pub struct Enumeration<'z> {
    pub frameworks: [EnumFramework<'z>; 1],
}

#[derive(Debug, Serialize)]
pub struct EnumFramework<'z> {
    pub tasks: Vec<&'z EnumTask>,
    pub name: &'static str,
}

/// Every task with its records, apps in id order.
pub fn enumerate(zone: &Zone) -> Enumeration<'_> {
    Enumeration {
        frameworks: [EnumFramework {
            tasks: zone.tasks.values().flat_map(|t| t.iter()).collect(),
            name: "marathon",
        }],
    }
}

/// The interface's routes, for the metrics listener and for `--dns-http-listen`.
pub fn router(config: HttpConfig, zone: watch::Receiver<Option<Arc<Zone>>>) -> Router {
    Router::new()
        .route("/v1/version", get(version))
        .route("/v1/config", get(config_of))
        .route("/v1/hosts/{host}", get(get_hosts))
        .route("/v1/services/{service}", get(get_services))
        .route("/v1/enumerate", get(get_enumerate))
        .with_state(AppState {
            config: Arc::new(config),
            zone,
        })
}

/// Serves the interface (`router`) alone on `listener` until the task is dropped; other paths 404.
pub async fn serve(listener: tokio::net::TcpListener, routes: Router) -> std::io::Result<()> {
    let app = routes.fallback(|| async { StatusCode::NOT_FOUND });
    axum::serve(listener, app).await
}

async fn version() -> Response {
    Json(json!({
        "Service": "lb (Mesos-DNS interface)",
        "URL": "https://github.com/mesosphere/mesos-dns",
        "Version": env!("CARGO_PKG_VERSION"),
    }))
    .into_response()
}

async fn config_of(State(s): State<AppState>) -> Response {
    let c = &s.config;
    let dns = c.dns_listen.first();
    Json(json!({
        "Domain": c.domain,
        "TTL": c.ttl,
        "Port": dns.map(SocketAddr::port),
        "Listener": dns.map(|a| a.ip().to_string()),
        "HttpPort": c.http_listen.port(),
        "DnsOn": !c.dns_listen.is_empty(),
        "HttpOn": true,
        "IPSources": ["netinfo", "host"],
        "RefreshSeconds": 0,
    }))
    .into_response()
}

/// Answers from the zone; before the first Marathon state there is nothing to answer from:
/// 503, as DNS says SERVFAIL then (never "no such name").
fn from_zone<T: Serialize>(s: &AppState, answer: impl FnOnce(&Zone) -> T) -> Response {
    let zone = s.zone.borrow().clone();
    match zone {
        Some(zone) => Json(answer(&zone)).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "no Marathon state yet"})),
        )
            .into_response(),
    }
}

async fn get_hosts(State(s): State<AppState>, Path(host): Path<String>) -> Response {
    from_zone(&s, |zone| hosts(zone, &host))
}

async fn get_enumerate(State(s): State<AppState>) -> Response {
    from_zone(&s, |zone| {
        serde_json::to_value(enumerate(zone)).unwrap_or_default()
    })
}

async fn get_services(State(s): State<AppState>, Path(service): Path<String>) -> Response {
    from_zone(&s, |zone| services(zone, &service))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::zone::{Records, SrvTarget};

    fn zone() -> Zone {
        let mut z = Zone {
            domain: "mesos".into(),
            ..Zone::default()
        };
        z.names.insert(
            "nginx.marathon.mesos".into(),
            Records {
                a: vec![
                    "192.168.12.5".parse().unwrap(),
                    "192.168.57.66".parse().unwrap(),
                ],
                srv: vec![],
            },
        );
        z.names.insert(
            "nginx-abcde-s1.marathon.mesos".into(),
            Records {
                a: vec!["192.168.12.5".parse().unwrap()],
                srv: vec![],
            },
        );
        z.names.insert(
            "_nginx._tcp.marathon.mesos".into(),
            Records {
                a: vec![],
                srv: vec![SrvTarget {
                    target: "nginx-abcde-s1.marathon.mesos".into(),
                    port: 80,
                }],
            },
        );
        z
    }

    #[test]
    fn hosts_answer_as_mesos_dns_does() {
        let z = zone();
        let got = hosts(&z, "NGINX.marathon.mesos");
        assert_eq!(
            serde_json::to_string(&got).unwrap(),
            r#"[{"host":"nginx.marathon.mesos.","ip":"192.168.12.5"},{"host":"nginx.marathon.mesos.","ip":"192.168.57.66"}]"#
        );
        assert_eq!(
            hosts(&z, "nginx.marathon.mesos."),
            got,
            "the final dot is optional"
        );
        assert_eq!(
            serde_json::to_string(&hosts(&z, "nope.marathon.mesos")).unwrap(),
            r#"[{"host":"","ip":""}]"#
        );
    }

    #[test]
    fn enumerate_lists_tasks_as_mesos_dns_does() {
        let mut z = zone();
        z.tasks.insert(
            "/nginx".into(),
            Arc::new(vec![EnumTask {
                name: "nginx".into(),
                id: "nginx.1".into(),
                records: vec![crate::dns::zone::EnumRecord {
                    name: "nginx.marathon.mesos.".into(),
                    host: "192.168.12.5".into(),
                    rtype: "A",
                }],
            }]),
        );
        assert_eq!(
            serde_json::to_string(&enumerate(&z)).unwrap(),
            r#"{"frameworks":[{"tasks":[{"name":"nginx","id":"nginx.1","records":[{"name":"nginx.marathon.mesos.","host":"192.168.12.5","rtype":"A"}]}],"name":"marathon"}]}"#
        );
    }

    #[test]
    fn services_answer_as_mesos_dns_does() {
        let z = zone();
        assert_eq!(
            serde_json::to_string(&services(&z, "_nginx._tcp.marathon.mesos.")).unwrap(),
            r#"[{"service":"_nginx._tcp.marathon.mesos.","host":"nginx-abcde-s1.marathon.mesos.","ip":"192.168.12.5","port":"80"}]"#
        );
        assert_eq!(
            serde_json::to_string(&services(&z, "_nope._tcp.marathon.mesos")).unwrap(),
            r#"[{"service":"","host":"","ip":"","port":""}]"#
        );
    }
}
