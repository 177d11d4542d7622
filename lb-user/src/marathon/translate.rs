//! marathon-lb's rules, turning Marathon apps and their tasks into the services the agent balances.
//! Pure: data in, data out; the only outside help is `resolve`, for agents named by hostname.
//!
//! The reference is marathon-lb 1.x (`marathon_lb.py` `get_apps`/`config`, `utils.py`). Where an
//! L4 balancer cannot do what HAProxy did, or where marathon-lb would crash or be ambiguous, the
//! choice made here is written next to the code, and what is lost is reported in `Translation`.
use std::{
    collections::{BTreeMap, HashMap, btree_map::Entry},
    fmt,
    net::{Ipv4Addr, SocketAddrV4},
    str::FromStr,
};

use serde::Serialize;

use super::api::{App, PortMapping, Task};
use crate::services::{Balance, Desired, Listener, Protocol, ServiceSpec};

/// What the operator chose (marathon-lb's `--group`, `--health-check`, `--strict-mode`, and
/// Mesos-DNS's `IPSources`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TranslateOptions {
    /// Only ports whose group is listed are balanced; `*` takes every port, grouped or not.
    pub groups: Vec<String>,
    /// Keep only tasks with a passing Marathon health check, for apps that have health checks.
    pub health_check: bool,
    /// Balance only ports labelled `HAPROXY_{n}_ENABLED=true`.
    pub strict_mode: bool,
    /// Where a task's address comes from, first usable wins.
    pub ip_sources: Vec<IpSource>,
}

impl Default for TranslateOptions {
    fn default() -> Self {
        Self {
            groups: vec!["external".to_owned()],
            health_check: false,
            strict_mode: false,
            ip_sources: vec![IpSource::Netinfo, IpSource::Host],
        }
    }
}

/// Where a backend's address comes from, as Mesos-DNS's `IPSources`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IpSource {
    /// The task's own address (`ipAddresses`) and the port inside the container: only for
    /// apps on a container network (IP-per-task, e.g. Calico). A bridge address is private to
    /// its agent, and a host-networked task's address is its agent's, so neither counts here.
    Netinfo,
    /// The agent (`host`, resolved) and the host port Mesos gave the task (`ports`).
    Host,
}

impl FromStr for IpSource {
    type Err = UnknownIpSource;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "netinfo" => Ok(Self::Netinfo),
            "host" => Ok(Self::Host),
            _ => Err(UnknownIpSource(s.to_owned())),
        }
    }
}

impl fmt::Display for IpSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Netinfo => "netinfo",
            Self::Host => "host",
        })
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown IP source {0:?}: expected \"netinfo\" or \"host\"")]
pub struct UnknownIpSource(pub String);

/// The result: what to balance, and what could not be taken over from marathon-lb.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Translation {
    pub desired: Desired,
    /// Apps, ports and tasks left out because their data makes no sense or clashes.
    pub skipped: Vec<Skipped>,
    /// Balanced ports carrying labels only HAProxy could honour (HTTP, TLS, templates).
    pub unsupported: Vec<Unsupported>,
}

/// Something left out, and why. The narrowest of app, port and task that explains it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Skipped {
    pub app_id: String,
    pub port_index: Option<usize>,
    pub task_id: Option<String>,
    pub reason: String,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "app {}", self.app_id)?;
        if let Some(i) = self.port_index {
            write!(f, " port index {i}")?;
        }
        if let Some(t) = &self.task_id {
            write!(f, " task {t}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// A balanced port whose labels ask for more than L4 balancing; it is balanced without them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Unsupported {
    pub app_id: String,
    pub port_index: usize,
    /// Label names (values are left out: `AUTH` holds a password hash).
    pub labels: Vec<String>,
}

/// Task states marathon-lb leaves out. TASK_LOST and TASK_UNREACHABLE stay: the task may well
/// still be running behind a partition, and marathon-lb keeps routing to it.
const EXCLUDED_TASK_STATES: &[&str] = &[
    "TASK_STAGING",
    "TASK_STARTING",
    "TASK_KILLING",
    "TASK_FINISHED",
    "TASK_FAILED",
    "TASK_KILLED",
    "TASK_ERROR",
    "TASK_DROPPED",
    "TASK_GONE",
    "TASK_GONE_BY_OPERATOR",
    "TASK_UNKNOWN",
];

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
    // A TCP allow-list: it matters, since without it the port is open to every client.
    "BACKEND_NETWORK_ALLOWED_ACL",
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

/// Turns Marathon's apps into the desired services, following marathon-lb.
///
/// `resolve` turns an agent's hostname (`task.host`) into its address; it is not called for
/// IPv4 literals, and at most once per distinct hostname.
pub fn translate(
    apps: &[App],
    opts: &TranslateOptions,
    resolve: &mut dyn FnMut(&str) -> Option<Ipv4Addr>,
) -> Translation {
    let mut cx = Cx {
        opts,
        resolver: Resolver {
            resolve,
            cache: HashMap::new(),
        },
        skipped: Vec::new(),
    };
    for app in apps {
        for e in &app.task_errors {
            cx.skip(&app.id, None, None, e.clone());
        }
    }
    let mut candidates = Vec::new();
    for unit in units(apps, &mut cx) {
        cx.unit(&unit, &mut candidates);
    }

    // Candidates come in app id order, then port index: the first to claim a listener keeps it,
    // which makes the outcome of a clash independent of Marathon's listing order.
    let mut services: BTreeMap<Listener, (ServiceSpec, Vec<String>)> = BTreeMap::new();
    for c in candidates {
        match services.entry(c.spec.listener) {
            Entry::Vacant(v) => {
                v.insert((c.spec, c.unsupported));
            }
            Entry::Occupied(o) => {
                let (holder, _) = o.get();
                cx.skipped.push(Skipped {
                    app_id: c.spec.app_id.clone().unwrap_or_default(),
                    port_index: c.spec.port_index,
                    task_id: None,
                    reason: format!(
                        "listener {} is already taken by {} (app {}, port index {})",
                        c.spec.listener,
                        holder.name,
                        holder.app_id.as_deref().unwrap_or("?"),
                        holder.port_index.map_or("?".to_owned(), |i| i.to_string()),
                    ),
                });
            }
        }
    }

    let mut unsupported = Vec::new();
    let mut desired = Desired::default();
    for (spec, labels) in services.into_values() {
        if !labels.is_empty() {
            unsupported.push(Unsupported {
                app_id: spec.app_id.clone().unwrap_or_default(),
                port_index: spec.port_index.unwrap_or_default(),
                labels,
            });
        }
        desired.services.push(spec);
    }
    // A `udp,tcp` port is two services with the same labels: report it once.
    unsupported.sort();
    unsupported.dedup();
    // Sorted, so that the same apps listed in another order report identically.
    let mut skipped = cx.skipped;
    skipped.sort();
    Translation {
        desired,
        skipped,
        unsupported,
    }
}

struct Cx<'o, 'r> {
    opts: &'o TranslateOptions,
    resolver: Resolver<'r>,
    skipped: Vec<Skipped>,
}

struct Resolver<'r> {
    resolve: &'r mut dyn FnMut(&str) -> Option<Ipv4Addr>,
    cache: HashMap<String, Option<Ipv4Addr>>,
}

impl Resolver<'_> {
    fn get(&mut self, host: &str) -> Option<Ipv4Addr> {
        if let Ok(ip) = host.parse() {
            return Some(ip);
        }
        if let Some(ip) = self.cache.get(host) {
            return *ip;
        }
        let ip = (self.resolve)(host);
        self.cache.insert(host.to_owned(), ip);
        ip
    }
}

/// One service before clashes are settled, with the labels it cannot honour.
struct Candidate {
    spec: ServiceSpec,
    unsupported: Vec<String>,
}

/// What marathon-lb balances as one app: a plain app, or the apps of one zero-downtime
/// deployment group merged under the group's name.
struct Unit<'a> {
    /// The id the backend name comes from: the app's, or `/<HAPROXY_DEPLOYMENT_GROUP>`.
    name_id: String,
    /// The app whose definition (labels, ports, networking) applies: for a deployment, the old one.
    app: &'a App,
    tasks: Vec<UnitTask<'a>>,
}

#[derive(Clone, Copy)]
struct UnitTask<'a> {
    task: &'a Task,
    /// Real id of the app the task belongs to.
    app_id: &'a str,
    /// An old task being replaced in a deployment: it takes no new flows.
    draining: bool,
}

impl<'a> Unit<'a> {
    fn plain(name_id: String, app: &'a App) -> Self {
        let tasks = app
            .tasks
            .iter()
            .map(|task| UnitTask {
                task,
                app_id: &app.id,
                draining: false,
            })
            .collect();
        Self {
            name_id,
            app,
            tasks,
        }
    }
}

/// Groups the apps as marathon-lb's `get_apps` does: apps sharing `HAPROXY_DEPLOYMENT_GROUP`
/// merge into one, the others stand alone. Apps are taken in id order so that the result does
/// not depend on Marathon's listing order (marathon-lb's does, when start times tie).
fn units<'a>(apps: &'a [App], cx: &mut Cx<'_, '_>) -> Vec<Unit<'a>> {
    let mut sorted: Vec<&App> = apps.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let mut units = Vec::new();
    let mut groups: BTreeMap<String, Unit<'a>> = BTreeMap::new();
    for app in sorted {
        // marathon-lb would crash on an empty group name; an empty label means no group here.
        let group = match app.labels.get("HAPROXY_DEPLOYMENT_GROUP") {
            Some(g) if !g.is_empty() => g,
            _ => {
                units.push(Unit::plain(app.id.clone(), app));
                continue;
            }
        };
        let name_id = if group.starts_with('/') {
            group.clone()
        } else {
            format!("/{group}")
        };
        let cur = Unit::plain(name_id.clone(), app);
        let merged = match groups.remove(&name_id) {
            None => cur,
            Some(prev) => merge_deployment(prev, cur, cx),
        };
        groups.insert(name_id, merged);
    }
    units.extend(groups.into_values());
    units.sort_by(|a, b| (&a.name_id, &a.app.id).cmp(&(&b.name_id, &b.app.id)));
    units
}

/// marathon-lb's zero-downtime-deployment merge: the older app's definition stays, both apps'
/// tasks serve, and as many old tasks as there are healthy new ones are drained (never below
/// `HAPROXY_DEPLOYMENT_TARGET_INSTANCES` in total).
fn merge_deployment<'a>(prev: Unit<'a>, cur: Unit<'a>, cx: &mut Cx<'_, '_>) -> Unit<'a> {
    let started = |u: &Unit<'_>| {
        u.app
            .labels
            .get("HAPROXY_DEPLOYMENT_STARTED_AT")
            .and_then(|s| timestamp(s))
    };
    // A later start makes `cur` the new app; on a tie (or no dates) `prev` counts as new, as in
    // marathon-lb. A missing or unreadable date counts as the earliest possible.
    let cur_is_new = started(&prev) < started(&cur);
    let cur_has_health_checks = !cur.app.health_checks.is_empty();
    let (mut old, mut new) = if cur_is_new { (prev, cur) } else { (cur, prev) };

    let target = match new.app.labels.get("HAPROXY_DEPLOYMENT_NEW_INSTANCES") {
        Some(_) => {
            // marathon-lb tests the label's presence only (its `!= 0` compares a string).
            let scaled = |u: &Unit<'_>| {
                u.app
                    .version_info
                    .as_ref()?
                    .last_scaling_at
                    .as_deref()
                    .and_then(timestamp)
            };
            if scaled(&old) > scaled(&new) {
                std::mem::swap(&mut old, &mut new);
            }
            let label = new.app.labels.get("HAPROXY_DEPLOYMENT_TARGET_INSTANCES");
            match label.and_then(|v| v.trim().parse::<i64>().ok()) {
                Some(t) => Some(t),
                None => {
                    // marathon-lb would stop altogether; draining nothing keeps every task serving.
                    cx.skip(
                        &new.app.id,
                        None,
                        None,
                        format!(
                            "HAPROXY_DEPLOYMENT_TARGET_INSTANCES {:?} is not a number: no old task \
                             of deployment group {} is drained",
                            label.map_or("(missing)", String::as_str),
                            new.name_id
                        ),
                    );
                    None
                }
            }
        }
        None => Some(1),
    };

    // As in marathon-lb, whether health counts is decided by the app met last (`cur`).
    let healthy_new = if cur_has_health_checks {
        new.tasks.iter().filter(|t| alive(t.task)).count() as i64
    } else {
        new.app.instances
    };
    old.tasks.sort_by(|a, b| a.task.id.cmp(&b.task.id));
    if let Some(target) = target {
        let drainable = (healthy_new + old.app.instances - target).max(0);
        let n = (old.tasks.len() as i64)
            .min(healthy_new)
            .min(drainable)
            .max(0) as usize;
        for t in &mut old.tasks[..n] {
            t.draining = true;
        }
    }
    old.tasks.extend(new.tasks);
    old
}

fn alive(task: &Task) -> bool {
    task.health_check_results.iter().any(|r| r.alive)
}

/// An ISO-8601 date and time as comparable numbers, time zone ignored (marathon-lb's zdd.py
/// writes local times without one). None when unreadable.
fn timestamp(s: &str) -> Option<[u64; 7]> {
    let s = s.trim();
    let (date, time) = s.split_once(['T', ' ']).unwrap_or((s, ""));
    let mut parts = [0u64; 7];
    let mut d = date.split('-');
    for part in &mut parts[..3] {
        *part = d.next()?.parse().ok()?;
    }
    if d.next().is_some() {
        return None;
    }
    let time = time.split(['Z', 'z', '+', '-']).next().unwrap_or("");
    if !time.is_empty() {
        let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
        for (part, v) in parts[3..6].iter_mut().zip(hms.split(':')) {
            *part = v.parse().ok()?;
        }
        if !frac.is_empty() {
            let digits: String = frac.chars().take(9).collect();
            parts[6] = format!("{digits:0<9}").parse().ok()?;
        }
    }
    Some(parts)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Host,
    Bridge,
    /// A container network: each task has its own address (IP-per-task).
    Container,
}

/// marathon-lb's `get_app_networking_mode`: 1.4's `ipAddress` and docker network, then 1.5+'s
/// networks, the last one winning.
fn networking_mode(app: &App) -> Result<Mode, String> {
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
fn port_mappings(app: &App) -> &[PortMapping] {
    let Some(c) = app.container.as_ref() else {
        return &[];
    };
    match c.docker.as_ref() {
        Some(d) if !d.port_mappings.is_empty() => &d.port_mappings,
        _ => &c.port_mappings,
    }
}

/// One port of an app: its index is `HAPROXY_{n}_*`'s `n` and the index into a task's ports.
struct Slot {
    service_port: Option<i64>,
    protocol: Option<String>,
}

/// marathon-lb's `get_service_ports`. Entries keep their index even when they lack a port
/// (marathon-lb drops them and shifts the later ones; Marathon's API always writes them).
fn port_slots(app: &App, mode: Mode) -> Vec<Slot> {
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
            .map(|(_, protocol)| Slot {
                service_port: None,
                protocol,
            })
            .collect();
    }
    Vec::new()
}

/// The ports a container listens on, by index: `ipAddress.discovery.ports` (1.4), else the
/// port mappings' container ports.
fn container_ports(app: &App) -> Vec<(Option<i64>, Option<String>)> {
    let discovery = app
        .ip_address
        .as_ref()
        .and_then(|i| i.discovery.as_ref())
        .map(|d| d.ports.as_slice())
        .unwrap_or_default();
    if !discovery.is_empty() {
        return discovery
            .iter()
            .map(|p| (p.number, p.protocol.clone()))
            .collect();
    }
    port_mappings(app)
        .iter()
        .map(|m| (m.container_port, m.protocol.clone()))
        .collect()
}

/// A task reachable at `ip`, with its ports by index.
struct Endpoint {
    ip: Ipv4Addr,
    ports: Vec<Option<i64>>,
}

/// A port selected for balancing, before backends.
struct Port {
    index: usize,
    service_port: u16,
    bind: Option<Ipv4Addr>,
    protocols: Vec<Protocol>,
    balance: Balance,
    unsupported: Vec<String>,
}

impl Cx<'_, '_> {
    fn skip(&mut self, app_id: &str, port: Option<usize>, task: Option<&str>, reason: String) {
        self.skipped.push(Skipped {
            app_id: app_id.to_owned(),
            port_index: port,
            task_id: task.map(str::to_owned),
            reason,
        });
    }

    fn unit(&mut self, unit: &Unit<'_>, out: &mut Vec<Candidate>) {
        let app = unit.app;
        let mode = match networking_mode(app) {
            Ok(m) => m,
            Err(reason) => return self.skip(&app.id, None, None, reason),
        };
        let slots = port_slots(app, mode);
        let ports: Vec<Port> = slots
            .iter()
            .enumerate()
            .filter_map(|(i, slot)| self.port(app, i, slot))
            .collect();
        if ports.is_empty() {
            return;
        }
        let endpoints = self.endpoints(unit, mode);
        let name = unit
            .name_id
            .strip_prefix('/')
            .unwrap_or(&unit.name_id)
            .replace('/', "_");
        for port in ports {
            let mut backends = Vec::new();
            for (task, ep) in &endpoints {
                match ep.ports.get(port.index).copied().flatten() {
                    // A task of an older version may have fewer ports: it serves those it has.
                    None => {}
                    Some(p) => match u16::try_from(p) {
                        Ok(p) if p != 0 => backends.push(SocketAddrV4::new(ep.ip, p)),
                        _ => self.skip(
                            task.app_id,
                            Some(port.index),
                            Some(&task.task.id),
                            format!("task port {p} is not a port number"),
                        ),
                    },
                }
            }
            backends.sort();
            backends.dedup();
            for &protocol in &port.protocols {
                out.push(Candidate {
                    spec: ServiceSpec {
                        name: format!("{name}_{}", port.service_port),
                        listener: Listener {
                            bind: port.bind,
                            port: port.service_port,
                            protocol,
                        },
                        balance: port.balance,
                        app_id: Some(app.id.clone()),
                        port_index: Some(port.index),
                        backends: backends.clone(),
                    },
                    unsupported: port.unsupported.clone(),
                });
            }
        }
    }

    /// Port `i` if this balancer serves it: in our groups, enabled, with sound labels.
    fn port(&mut self, app: &App, i: usize, slot: &Slot) -> Option<Port> {
        let label = |name: &str| app.labels.get(&format!("HAPROXY_{i}_{name}"));

        // The port's own group overrides the app's; no group at all matches only `*`.
        let groups = label("GROUP").or_else(|| app.labels.get("HAPROXY_GROUP"));
        let wanted = self.opts.groups.iter().any(|g| g == "*")
            || groups.is_some_and(|gs| {
                gs.split(',')
                    .any(|g| self.opts.groups.iter().any(|o| o == g))
            });
        if !wanted {
            return None;
        }
        // The label decides when present, in both modes: `HAPROXY_0_ENABLED=false` turns a port
        // off without strict mode too. Only marathon-lb's spellings of true count.
        let enabled = match label("ENABLED") {
            Some(v) => matches!(v.to_lowercase().as_str(), "true" | "t" | "yes" | "y"),
            None => !self.opts.strict_mode,
        };
        if !enabled {
            return None;
        }

        let service_port = match label("PORT") {
            Some(v) => match v.trim().parse::<i64>() {
                Ok(p) => p,
                Err(_) => {
                    self.skip(
                        &app.id,
                        Some(i),
                        None,
                        format!("HAPROXY_{i}_PORT {v:?} is not a number"),
                    );
                    return None;
                }
            },
            None => match slot.service_port {
                Some(p) if p != 0 => p,
                _ => {
                    self.skip(
                        &app.id,
                        Some(i),
                        None,
                        format!(
                            "the port has no service port (Marathon gives none to IP-per-task apps \
                             before 1.5) and HAPROXY_{i}_PORT is not set"
                        ),
                    );
                    return None;
                }
            },
        };
        let service_port = match u16::try_from(service_port) {
            Ok(p) if p != 0 => p,
            _ => {
                self.skip(
                    &app.id,
                    Some(i),
                    None,
                    format!("service port {service_port} is not a port number (1 to 65535)"),
                );
                return None;
            }
        };

        let bind = match label("BIND_ADDR").map(|v| v.trim()) {
            None | Some("" | "*") => None,
            Some(v) => match v.parse::<Ipv4Addr>() {
                Ok(a) if a.is_unspecified() => None,
                Ok(a) => Some(a),
                Err(_) => {
                    self.skip(
                        &app.id,
                        Some(i),
                        None,
                        format!("HAPROXY_{i}_BIND_ADDR {v:?} is not an IPv4 address"),
                    );
                    return None;
                }
            },
        };

        let protocols = match protocols(slot.protocol.as_deref()) {
            Ok(p) => p,
            Err(reason) => {
                self.skip(&app.id, Some(i), None, reason);
                return None;
            }
        };

        let balance = match label("BALANCE")
            .map(|v| v.trim().to_ascii_lowercase())
            .as_deref()
        {
            Some("source") => Balance::Source,
            _ => Balance::RoundRobin,
        };

        Some(Port {
            index: i,
            service_port,
            bind,
            protocols,
            balance,
            unsupported: unsupported_labels(app, i),
        })
    }

    /// The tasks that serve, with their addresses: running (or lost, unreachable), healthy when
    /// asked, not draining, and reachable by one of the IP sources.
    fn endpoints<'u>(&mut self, unit: &Unit<'u>, mode: Mode) -> Vec<(UnitTask<'u>, Endpoint)> {
        let app = unit.app;
        let check_health = self.opts.health_check && !app.health_checks.is_empty();
        let mut out = Vec::new();
        for t in &unit.tasks {
            let task = t.task;
            // No state (old captures) means running, as in marathon-lb.
            if task
                .state
                .as_deref()
                .is_some_and(|s| EXCLUDED_TASK_STATES.contains(&s))
            {
                continue;
            }
            // marathon-lb checks the host first; checking it second spares a report for
            // tasks not yet placed, which are routine.
            if task.host.is_empty() {
                self.skip(
                    t.app_id,
                    None,
                    Some(&task.id),
                    "task has no host".to_owned(),
                );
                continue;
            }
            // marathon-lb falls back to a cached earlier verdict when results are missing; a
            // pure translation has no memory, so a task without results counts as not healthy.
            if check_health && !alive(task) {
                continue;
            }
            if t.draining {
                continue;
            }
            match self.endpoint(app, mode, task) {
                Ok(ep) => out.push((*t, ep)),
                Err(reason) => self.skip(t.app_id, None, Some(&task.id), reason),
            }
        }
        out
    }

    fn endpoint(&mut self, app: &App, mode: Mode, task: &Task) -> Result<Endpoint, String> {
        let mut failures = Vec::new();
        for source in &self.opts.ip_sources {
            let found = match source {
                IpSource::Netinfo if mode != Mode::Container => continue,
                IpSource::Netinfo => netinfo(app, task),
                IpSource::Host => self.host(app, mode, task),
            };
            match found {
                Ok(ep) => return Ok(ep),
                Err(e) => failures.push(format!("{source}: {e}")),
            }
        }
        if failures.is_empty() {
            let sources: Vec<String> = self.opts.ip_sources.iter().map(|s| s.to_string()).collect();
            return Err(format!(
                "no address: the IP sources [{}] do not apply to {mode:?} networking",
                sources.join(", ")
            ));
        }
        Err(format!("no address: {}", failures.join("; ")))
    }

    /// The agent and the task's host ports, with marathon-lb's fallbacks for tasks that list
    /// none (a fixed `portDefinitions` port, or for bridge the container port).
    fn host(&mut self, app: &App, mode: Mode, task: &Task) -> Result<Endpoint, String> {
        let mut ports: Vec<Option<i64>> = task.ports.iter().map(|&p| Some(p)).collect();
        if ports.is_empty() && mode != Mode::Container {
            ports = app.port_definitions.iter().map(|d| d.port).collect();
            if ports.is_empty() && mode == Mode::Bridge {
                ports = port_mappings(app)
                    .iter()
                    .map(|m| m.container_port)
                    .collect();
            }
        }
        if ports.is_empty() {
            return Err("the task has no host ports".to_owned());
        }
        let ip = self
            .resolver
            .get(&task.host)
            .ok_or_else(|| format!("host {:?} does not resolve to an IPv4 address", task.host))?;
        Ok(Endpoint { ip, ports })
    }
}

/// The task's own address and its container's ports. marathon-lb takes `ipAddresses[0]`
/// whatever its family; an IPv4 balancer takes the first IPv4 one.
fn netinfo(app: &App, task: &Task) -> Result<Endpoint, String> {
    let ip = task
        .ip_addresses
        .iter()
        .find_map(|a| a.ip_address.as_deref()?.trim().parse::<Ipv4Addr>().ok())
        .ok_or_else(|| "the task has no IPv4 address in ipAddresses (yet)".to_owned())?;
    let ports: Vec<Option<i64>> = container_ports(app).into_iter().map(|(p, _)| p).collect();
    if ports.is_empty() {
        return Err("the app lists no container ports".to_owned());
    }
    Ok(Endpoint { ip, ports })
}

/// `tcp`, `udp` or both (`udp,tcp`, either order); missing means `tcp`, as in Marathon.
fn protocols(spec: Option<&str>) -> Result<Vec<Protocol>, String> {
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

/// The labels of port `i` asking for what only HAProxy did, in name order.
fn unsupported_labels(app: &App, i: usize) -> Vec<String> {
    let prefix = format!("HAPROXY_{i}_");
    let truthy = |v: &str| matches!(v.to_lowercase().as_str(), "true" | "t" | "yes" | "y");
    app.labels
        .iter()
        .filter(|(k, v)| {
            let Some(name) = k.strip_prefix(&prefix) else {
                return false;
            };
            match name {
                "MODE" => !v.trim().eq_ignore_ascii_case("tcp"),
                "BALANCE" => !matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "roundrobin" | "source"
                ),
                "STICKY" | "REDIRECT_TO_HTTPS" | "USE_HSTS" => truthy(v),
                _ => L7_LABELS.contains(&name) && !v.trim().is_empty(),
            }
        })
        .map(|(k, _)| k.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn app(v: serde_json::Value) -> App {
        super::super::api::parse_app(v).unwrap_or_else(|e| panic!("test app does not parse: {e}"))
    }

    fn no_dns(host: &str) -> Option<Ipv4Addr> {
        panic!("unexpected resolve({host})")
    }

    fn run(apps: &[App], opts: &TranslateOptions) -> Translation {
        translate(apps, opts, &mut no_dns)
    }

    /// A host-networked app on service port `port` with one running task on 10.9.0.1:31000.
    fn host_app(id: &str, port: i64, labels: serde_json::Value) -> serde_json::Value {
        json!({
            "id": id,
            "portDefinitions": [{ "port": port }],
            "labels": labels,
            "tasks": [{ "id": format!("{id}.1"), "host": "10.9.0.1", "ports": [31000], "state": "TASK_RUNNING" }],
        })
    }

    #[test]
    fn ip_source_parses_and_prints() {
        assert_eq!("netinfo".parse::<IpSource>(), Ok(IpSource::Netinfo));
        assert_eq!(" Host ".parse::<IpSource>(), Ok(IpSource::Host));
        assert_eq!(
            "mesos".parse::<IpSource>(),
            Err(UnknownIpSource("mesos".into()))
        );
        assert_eq!(IpSource::Netinfo.to_string(), "netinfo");
        assert_eq!(IpSource::Host.to_string(), "host");
        let d = TranslateOptions::default();
        assert_eq!(d.groups, ["external"]);
        assert_eq!(d.ip_sources, [IpSource::Netinfo, IpSource::Host]);
        assert!(!d.health_check && !d.strict_mode);
    }

    #[test]
    fn networking_mode_follows_marathon_lb_precedence() {
        let mode = |v: serde_json::Value| networking_mode(&app(v));
        assert_eq!(mode(json!({ "id": "/a" })), Ok(Mode::Host));
        assert_eq!(
            mode(json!({ "id": "/a", "ipAddress": null })),
            Ok(Mode::Host)
        );
        assert_eq!(
            mode(json!({ "id": "/a", "ipAddress": {} })),
            Ok(Mode::Container)
        );
        // A docker network other than USER/BRIDGE leaves `ipAddress`'s verdict alone.
        assert_eq!(
            mode(
                json!({ "id": "/a", "ipAddress": {}, "container": { "docker": { "network": "HOST" } } })
            ),
            Ok(Mode::Container)
        );
        assert_eq!(
            mode(
                json!({ "id": "/a", "ipAddress": {}, "container": { "docker": { "network": "BRIDGE" } } })
            ),
            Ok(Mode::Bridge)
        );
        assert_eq!(
            mode(json!({ "id": "/a", "container": { "docker": { "network": "USER" } } })),
            Ok(Mode::Container)
        );
        // networks come last, and the last network decides.
        assert_eq!(
            mode(
                json!({ "id": "/a", "container": { "docker": { "network": "USER" } },
                         "networks": [{ "mode": "container/bridge" }] })
            ),
            Ok(Mode::Bridge)
        );
        assert_eq!(
            mode(json!({ "id": "/a", "networks": [{ "mode": "host" }, { "name": "calico" }] })),
            Ok(Mode::Container)
        );
        assert!(mode(json!({ "id": "/a", "networks": [{ "mode": "ipvlan" }] })).is_err());
    }

    #[test]
    fn port_mappings_prefer_docker_then_container() {
        let a = app(json!({
            "id": "/a",
            "networks": [{ "mode": "container/bridge" }],
            "container": {
                "docker": { "portMappings": [{ "containerPort": 1, "servicePort": 10001 }] },
                "portMappings": [{ "containerPort": 2, "servicePort": 10002 }],
            },
            "portDefinitions": [{ "port": 10003 }],
        }));
        let slots = port_slots(&a, Mode::Bridge);
        assert_eq!(
            slots.iter().map(|s| s.service_port).collect::<Vec<_>>(),
            [Some(10001)]
        );
        // Mappings without any service port give way to portDefinitions, then `ports`.
        let a = app(json!({
            "id": "/a",
            "container": { "portMappings": [{ "containerPort": 2 }] },
            "ports": [10004, 10005],
        }));
        let slots = port_slots(&a, Mode::Bridge);
        assert_eq!(
            slots.iter().map(|s| s.service_port).collect::<Vec<_>>(),
            [Some(10004), Some(10005)]
        );
        // Host networking never reads port mappings.
        let a = app(json!({
            "id": "/a",
            "container": { "portMappings": [{ "containerPort": 2, "servicePort": 10002 }] },
        }));
        assert!(port_slots(&a, Mode::Host).is_empty());
    }

    #[test]
    fn protocols_accept_marathons_spellings() {
        assert_eq!(protocols(None), Ok(vec![Protocol::Tcp]));
        assert_eq!(protocols(Some("")), Ok(vec![Protocol::Tcp]));
        assert_eq!(protocols(Some("UDP")), Ok(vec![Protocol::Udp]));
        assert_eq!(
            protocols(Some("udp,tcp")),
            Ok(vec![Protocol::Tcp, Protocol::Udp])
        );
        assert_eq!(
            protocols(Some("tcp, udp")),
            Ok(vec![Protocol::Tcp, Protocol::Udp])
        );
        assert_eq!(protocols(Some("tcp,tcp")), Ok(vec![Protocol::Tcp]));
        assert!(protocols(Some("sctp")).is_err());
        assert!(protocols(Some("tcp,")).is_err());
    }

    #[test]
    fn timestamps_compare_in_time_order() {
        let t = |s: &str| timestamp(s).unwrap_or_else(|| panic!("{s} does not parse"));
        assert!(t("2016-02-01T14:13:42.499089") < t("2016-02-01T14:57:54.371005"));
        assert!(t("2016-02-01T14:13:42.5") > t("2016-02-01T14:13:42.499089"));
        assert!(t("2016-02-01T14:13:42") < t("2016-02-01T14:13:42.000001"));
        assert!(t("2017-07-14T15:13:34.402Z") < t("2017-07-14T15:13:35Z"));
        assert!(t("2021-01-02") < t("2021-01-02T00:00:01"));
        assert_eq!(t("2021-01-02T03:04:05+02:00"), t("2021-01-02T03:04:05"));
        assert_eq!(timestamp("yesterday"), None);
        assert_eq!(timestamp("2021-13"), None);
        // Unreadable counts as earliest, as marathon-lb's missing date.
        assert!(timestamp("garbage") < Some(t("0001-01-01")));
    }

    #[test]
    fn labels_decide_enabled_bind_and_balance() {
        let apps = [
            app(host_app(
                "/bind-star",
                10001,
                json!({ "HAPROXY_GROUP": "external", "HAPROXY_0_BIND_ADDR": "*" }),
            )),
            app(host_app(
                "/bind-any",
                10002,
                json!({ "HAPROXY_GROUP": "external", "HAPROXY_0_BIND_ADDR": "0.0.0.0" }),
            )),
            app(host_app(
                "/bind-v6",
                10003,
                json!({ "HAPROXY_GROUP": "external", "HAPROXY_0_BIND_ADDR": "::1" }),
            )),
            app(host_app(
                "/balance",
                10004,
                json!({ "HAPROXY_GROUP": "external", "HAPROXY_0_BALANCE": " Source " }),
            )),
            app(host_app(
                "/enabled-1",
                10005,
                json!({ "HAPROXY_GROUP": "external", "HAPROXY_0_ENABLED": "1" }),
            )),
            app(host_app(
                "/enabled-t",
                10006,
                json!({ "HAPROXY_GROUP": "external", "HAPROXY_0_ENABLED": "T" }),
            )),
            app(host_app(
                "/port-ws",
                10007,
                json!({ "HAPROXY_GROUP": "external", "HAPROXY_0_PORT": " 8080 " }),
            )),
        ];
        let t = run(&apps, &TranslateOptions::default());
        let by_app = |id: &str| {
            t.desired
                .services
                .iter()
                .find(|s| s.app_id.as_deref() == Some(id))
        };
        assert_eq!(by_app("/bind-star").map(|s| s.listener.bind), Some(None));
        assert_eq!(by_app("/bind-any").map(|s| s.listener.bind), Some(None));
        assert!(by_app("/bind-v6").is_none());
        assert_eq!(t.skipped.len(), 1, "{:#?}", t.skipped);
        assert!(
            t.skipped[0]
                .reason
                .contains("\"::1\" is not an IPv4 address"),
            "{}",
            t.skipped[0]
        );
        assert_eq!(by_app("/balance").map(|s| s.balance), Some(Balance::Source));
        // "1" is not one of marathon-lb's true spellings: the label turns the port off.
        assert!(by_app("/enabled-1").is_none());
        assert!(by_app("/enabled-t").is_some());
        assert_eq!(
            by_app("/port-ws").map(|s| (s.listener.port, s.name.as_str())),
            Some((8080, "port-ws_8080"))
        );
        assert!(t.unsupported.is_empty(), "{:#?}", t.unsupported);
    }

    #[test]
    fn group_names_are_not_trimmed() {
        // marathon-lb splits on ',' only: " internal" is not "internal". Matching more loosely
        // would expose ports marathon-lb kept private.
        let apps = [app(host_app(
            "/a",
            10001,
            json!({ "HAPROXY_GROUP": "external, internal" }),
        ))];
        assert_eq!(
            run(
                &apps,
                &TranslateOptions {
                    groups: vec!["internal".into()],
                    ..Default::default()
                }
            )
            .desired
            .services
            .len(),
            0
        );
        assert_eq!(
            run(&apps, &TranslateOptions::default())
                .desired
                .services
                .len(),
            1
        );
    }

    #[test]
    fn deployment_tie_keeps_the_first_by_id_as_new() {
        // Same start time (none): marathon-lb takes the app met first as the new one, and the
        // later one's definition applies. Apps are met in id order here.
        let mk = |id: &str, port: i64, host: &str| {
            app(json!({
                "id": id,
                "instances": 1,
                "portDefinitions": [{ "port": port }],
                "labels": { "HAPROXY_GROUP": "external", "HAPROXY_DEPLOYMENT_GROUP": "dg" },
                "tasks": [{ "id": format!("{id}.1"), "host": host, "ports": [31000], "state": "TASK_RUNNING" }],
            }))
        };
        let apps = [
            mk("/dg-b", 10002, "10.9.0.2"),
            mk("/dg-a", 10001, "10.9.0.1"),
        ];
        let t = run(&apps, &TranslateOptions::default());
        assert_eq!(t.desired.services.len(), 1, "{t:#?}");
        let s = &t.desired.services[0];
        assert_eq!(
            (s.name.as_str(), s.app_id.as_deref()),
            ("dg_10002", Some("/dg-b"))
        );
        // New without health checks counts `instances` (1) as healthy; target 1 lets one old
        // task drain: only the new app's task serves.
        assert_eq!(
            s.backends,
            [SocketAddrV4::new(Ipv4Addr::new(10, 9, 0, 1), 31000)]
        );
    }

    #[test]
    fn deployment_with_health_checks_counts_alive_new_tasks() {
        let mk = |id: &str, started: &str, tasks: serde_json::Value| {
            app(json!({
                "id": id,
                "instances": 2,
                "portDefinitions": [{ "port": 10001 }],
                "healthChecks": [{ "protocol": "TCP" }],
                "labels": { "HAPROXY_GROUP": "external", "HAPROXY_DEPLOYMENT_GROUP": "dg",
                            "HAPROXY_DEPLOYMENT_STARTED_AT": started },
                "tasks": tasks,
            }))
        };
        let old = mk(
            "/dg-old",
            "2020-01-01T00:00:00",
            json!([
                { "id": "old.1", "host": "10.9.1.1", "ports": [31001], "healthCheckResults": [{ "alive": true }] },
                { "id": "old.2", "host": "10.9.1.2", "ports": [31002], "healthCheckResults": [{ "alive": true }] },
            ]),
        );
        // One new task alive, one without results: one old task drains.
        let new = mk(
            "/dg-new",
            "2020-01-02T00:00:00",
            json!([
                { "id": "new.1", "host": "10.9.2.1", "ports": [32001], "healthCheckResults": [{ "alive": true }] },
                { "id": "new.2", "host": "10.9.2.2", "ports": [32002] },
            ]),
        );
        let t = run(&[old, new], &TranslateOptions::default());
        let backends: Vec<String> = t.desired.services[0]
            .backends
            .iter()
            .map(|b| b.to_string())
            .collect();
        assert_eq!(
            backends,
            ["10.9.1.2:31002", "10.9.2.1:32001", "10.9.2.2:32002"]
        );
    }

    #[test]
    fn skipped_reads_as_a_sentence() {
        let s = Skipped {
            app_id: "/a".into(),
            port_index: Some(1),
            task_id: Some("a.1".into()),
            reason: "task port 0 is not a port number".into(),
        };
        assert_eq!(
            s.to_string(),
            "app /a port index 1 task a.1: task port 0 is not a port number"
        );
    }

    #[test]
    fn nested_app_ids_name_backends_like_marathon_lb() {
        let apps = [app(host_app(
            "/prod/web/frontend",
            10001,
            json!({ "HAPROXY_GROUP": "external" }),
        ))];
        let t = run(&apps, &TranslateOptions::default());
        assert_eq!(t.desired.services[0].name, "prod_web_frontend_10001");
    }
}
