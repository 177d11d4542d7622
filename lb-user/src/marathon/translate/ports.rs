//! An app's networking mode and ports as marathon-lb reads them (`get_app_networking_mode`,
//! `get_service_ports`), and the per-port labels only HAProxy could honour.
use crate::{
    marathon::api::{App, PortMapping},
    services::{Balance, Protocol},
};

/// Per-port labels that only shape HTTP, TLS or HAProxy's own configuration: reported when set.
/// Those taking a boolean (`STICKY`, `REDIRECT_TO_HTTPS`, `USE_HSTS`) and `MODE`/`BALANCE` are
/// judged by value in `unsupported_labels`; the rest of marathon-lb's labels are honoured here.
const L7_LABELS: &[&str] = &[
    "AUTH",
    "VHOST",
    "PATH",
    "SSL_CERT",
    "BIND_OPTIONS",
    "HTTP_BACKEND_PROXYPASS_PATH",
    "HTTP_BACKEND_REVPROXY_PATH",
    "HTTP_BACKEND_REDIR",
    "BACKEND_WEIGHT",
    // Steers HAProxy's own active checks, which this balancer does not run.
    "BACKEND_HEALTHCHECK_PORT_INDEX",
    // Template overrides: raw HAProxy configuration.
    "FRONTEND_HEAD",
    "USERLIST_HEAD",
    "BACKEND_REDIRECT_HTTP_TO_HTTPS",
    "BACKEND_REDIRECT_HTTP_TO_HTTPS_WITH_PATH",
    "BACKEND_HEAD",
    "HTTP_FRONTEND_ACL",
    "MAP_HTTP_FRONTEND_ACL",
    "HTTP_FRONTEND_ACL_ONLY",
    "MAP_HTTP_FRONTEND_ACL_ONLY",
    "HTTP_FRONTEND_ROUTING_ONLY",
    "HTTP_FRONTEND_ROUTING_ONLY_WITH_AUTH",
    "HTTP_FRONTEND_ACL_WITH_AUTH",
    "HTTP_FRONTEND_ACL_WITH_PATH",
    "HTTP_FRONTEND_ACL_WITH_AUTH_AND_PATH",
    "HTTP_FRONTEND_ACL_ONLY_WITH_PATH",
    "HTTP_FRONTEND_ACL_ONLY_WITH_PATH_AND_AUTH",
    "HTTPS_FRONTEND_ACL_ONLY_WITH_PATH",
    "HTTP_FRONTEND_ROUTING_ONLY_WITH_PATH",
    "HTTP_FRONTEND_ROUTING_ONLY_WITH_PATH_AND_AUTH",
    "HTTP_FRONTEND_APPID_ACL",
    "MAP_HTTP_FRONTEND_APPID_ACL",
    "HTTPS_FRONTEND_ACL",
    "MAP_HTTPS_FRONTEND_ACL",
    "HTTPS_FRONTEND_ACL_WITH_AUTH",
    "HTTPS_FRONTEND_ACL_WITH_PATH",
    "HTTPS_FRONTEND_ACL_WITH_AUTH_AND_PATH",
    "BACKEND_HTTP_OPTIONS",
    "HTTP_BACKEND_PROXYPASS_GLUE",
    "HTTP_BACKEND_REVPROXY_GLUE",
    "BACKEND_HSTS_OPTIONS",
    "BACKEND_HTTP_HEALTHCHECK_OPTIONS",
    "BACKEND_TCP_HEALTHCHECK_OPTIONS",
    "BACKEND_STICKY_OPTIONS",
    "BACKEND_SERVER_OPTIONS",
    "BACKEND_SERVER_TCP_HEALTHCHECK_OPTIONS",
    "BACKEND_SERVER_HTTP_HEALTHCHECK_OPTIONS",
    "FRONTEND_BACKEND_GLUE",
    "HTTP_BACKEND_NETWORK_ALLOWED_ACL",
    "TCP_BACKEND_NETWORK_ALLOWED_ACL",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Host,
    Bridge,
    /// A container network: each task has its own address (IP-per-task).
    Container,
}

/// marathon-lb's `get_app_networking_mode`: 1.4's `ipAddress` and docker network, then 1.5+'s
/// networks, the last one winning.
pub(crate) fn networking_mode(app: &App) -> Result<Mode, String> {
    let mut mode = "host";
    if app.ip_address.is_some() {
        mode = "container";
    }
    match app
        .container
        .as_ref()
        .and_then(|c| c.docker.as_ref())
        .and_then(|d| d.network.as_deref())
    {
        Some("USER") => mode = "container",
        Some("BRIDGE") => mode = "container/bridge",
        _ => {}
    }
    for n in &app.networks {
        mode = n.mode.as_deref().unwrap_or("container");
    }
    match mode {
        "host" => Ok(Mode::Host),
        "container/bridge" => Ok(Mode::Bridge),
        "container" => Ok(Mode::Container),
        other => Err(format!("unknown networking mode {other:?}")),
    }
}

/// 1.4 keeps port mappings under `container.docker`, 1.5+ under `container`.
pub(crate) fn port_mappings(app: &App) -> &[PortMapping] {
    let Some(c) = app.container.as_ref() else {
        return &[];
    };
    match c.docker.as_ref() {
        Some(d) if !d.port_mappings.is_empty() => &d.port_mappings,
        _ => &c.port_mappings,
    }
}

/// One port of an app: its index is `HAPROXY_{n}_*`'s `n` and the index into a task's ports.
pub(super) struct Slot {
    pub service_port: Option<i64>,
    pub protocol: Option<String>,
}

/// marathon-lb's `get_service_ports`. Entries keep their index even when they lack a port
/// (marathon-lb drops them and shifts the later ones; Marathon's API always writes them).
pub(super) fn port_slots(app: &App, mode: Mode) -> Vec<Slot> {
    if mode != Mode::Host {
        let mappings = port_mappings(app);
        if mappings.iter().any(|m| m.service_port.is_some()) {
            return mappings
                .iter()
                .map(|m| Slot {
                    service_port: m.service_port,
                    protocol: m.protocol.clone(),
                })
                .collect();
        }
    }
    if !app.port_definitions.is_empty() {
        return app
            .port_definitions
            .iter()
            .map(|d| Slot {
                service_port: d.port,
                protocol: d.protocol.clone(),
            })
            .collect();
    }
    if !app.ports.is_empty() {
        return app
            .ports
            .iter()
            .map(|&p| Slot {
                service_port: Some(p),
                protocol: None,
            })
            .collect();
    }
    // Marathon before 1.5 gives IP-per-task apps no service ports. marathon-lb then makes some up
    // from a hash, useful only behind a vhost; here such a port needs `HAPROXY_{n}_PORT`.
    if mode == Mode::Container {
        return container_ports(app)
            .into_iter()
            .map(|(_, protocol, _)| Slot {
                service_port: None,
                protocol,
            })
            .collect();
    }
    Vec::new()
}

/// The ports a container listens on, by index, with their protocols and names:
/// `ipAddress.discovery.ports` (1.4), else the port mappings' container ports.
pub(crate) fn container_ports(app: &App) -> Vec<(Option<i64>, Option<String>, Option<String>)> {
    let discovery = app
        .ip_address
        .as_ref()
        .and_then(|i| i.discovery.as_ref())
        .map(|d| d.ports.as_slice())
        .unwrap_or_default();
    if !discovery.is_empty() {
        return discovery
            .iter()
            .map(|p| (p.number, p.protocol.clone(), p.name.clone()))
            .collect();
    }
    port_mappings(app)
        .iter()
        .map(|m| (m.container_port, m.protocol.clone(), m.name.clone()))
        .collect()
}

/// The balance an `HAPROXY_{n}_BALANCE` value asks for, if lb has it (`static-rr` is
/// round-robin); case and surrounding blanks do not matter, as in HAProxy.
pub(super) fn balance(value: &str) -> Option<Balance> {
    match value.trim().to_ascii_lowercase().as_str() {
        "roundrobin" | "static-rr" => Some(Balance::RoundRobin),
        "source" => Some(Balance::Source),
        "leastconn" => Some(Balance::LeastConn),
        _ => None,
    }
}

/// `tcp`, `udp` or both (`udp,tcp`, either order); missing means `tcp`, as in Marathon.
pub(crate) fn protocols(spec: Option<&str>) -> Result<Vec<Protocol>, String> {
    let spec = spec.map(str::trim).unwrap_or("");
    if spec.is_empty() {
        return Ok(vec![Protocol::Tcp]);
    }
    let mut out = Vec::new();
    for p in spec.split(',') {
        match p.trim().to_ascii_lowercase().as_str() {
            "tcp" => out.push(Protocol::Tcp),
            "udp" => out.push(Protocol::Udp),
            _ => return Err(format!("protocol {spec:?} is neither tcp, udp nor udp,tcp")),
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The labels the HTTP front end serves (`http/routes.rs`), when it runs.
const VHOST_LABELS: &[&str] = &[
    "VHOST",
    "PATH",
    "BACKEND_WEIGHT",
    "REDIRECT_TO_HTTPS",
    "SSL_CERT",
];

/// The labels of port `i` asking for what only HAProxy did, in name order; with `vhosts`, the
/// front end's own labels are served, so not among them.
pub(super) fn unsupported_labels(app: &App, i: usize, vhosts: bool) -> Vec<String> {
    let prefix = format!("HAPROXY_{i}_");
    let truthy = |v: &str| matches!(v.to_lowercase().as_str(), "true" | "t" | "yes" | "y");
    app.labels
        .iter()
        .filter(|(k, v)| {
            let Some(name) = k.strip_prefix(&prefix) else {
                return false;
            };
            if vhosts && VHOST_LABELS.contains(&name) {
                return false;
            }
            match name {
                "MODE" => !v.trim().eq_ignore_ascii_case("tcp"),
                "BALANCE" => balance(v).is_none(),
                "STICKY" | "REDIRECT_TO_HTTPS" | "USE_HSTS" => truthy(v),
                _ => L7_LABELS.contains(&name) && !v.trim().is_empty(),
            }
        })
        .map(|(k, _)| k.clone())
        .collect()
}
