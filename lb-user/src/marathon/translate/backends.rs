//! One unit's candidate services: which ports are balanced (groups, labels) and which tasks
//! serve them at which address (states, health, draining, IP sources).
use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddrV4},
};

use super::{
    Candidate, IpSource, Skipped, TranslateOptions,
    ports::{
        Mode, Slot, balance, container_ports, networking_mode, port_mappings, port_slots,
        protocols, unsupported_labels,
    },
    skip,
    units::{Unit, UnitTask, alive},
};
use crate::{
    marathon::api::{App, Task},
    services::{Balance, Cidr, Listener, Protocol, ServiceSpec},
};

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

/// Translating one unit: the options, the resolver, and what was left out so far.
pub(crate) struct Cx<'o, 'r, 's> {
    pub opts: &'o TranslateOptions,
    /// Service ports made up for this unit's app (IP-per-task without any), by port index.
    pub assigned: Option<&'o [Option<u16>]>,
    pub resolver: &'r mut Resolver<'s>,
    pub skipped: Vec<Skipped>,
}

/// `resolve` with a memory: each hostname is asked at most once per resolver.
pub(crate) struct Resolver<'r> {
    resolve: &'r mut dyn FnMut(&str) -> Option<Ipv4Addr>,
    cache: HashMap<String, Option<Ipv4Addr>>,
}

impl<'r> Resolver<'r> {
    pub(crate) fn new(resolve: &'r mut dyn FnMut(&str) -> Option<Ipv4Addr>) -> Self {
        Self {
            resolve,
            cache: HashMap::new(),
        }
    }

    pub(crate) fn get(&mut self, host: &str) -> Option<Ipv4Addr> {
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

/// A task reachable at `ip`, with its ports by index.
pub(crate) struct Endpoint {
    pub ip: Ipv4Addr,
    pub ports: Vec<Option<i64>>,
}

/// A port selected for balancing, before backends.
struct Port {
    index: usize,
    service_port: u16,
    bind: Option<Ipv4Addr>,
    protocols: Vec<Protocol>,
    balance: Balance,
    allow: Vec<Cidr>,
    unsupported: Vec<String>,
}

impl Cx<'_, '_, '_> {
    pub(super) fn skip(
        &mut self,
        app_id: &str,
        port: Option<usize>,
        task: Option<&str>,
        reason: String,
    ) {
        self.skipped.push(skip(app_id, port, task, reason));
    }

    pub(super) fn unit(&mut self, unit: &Unit<'_>, out: &mut Vec<Candidate>) {
        let app = unit.app;
        let mode = match networking_mode(app) {
            Ok(m) => m,
            Err(reason) => return self.skip(&app.id, None, None, reason),
        };
        let mut slots = port_slots(app, mode);
        for (slot, port) in slots.iter_mut().zip(self.assigned.unwrap_or_default()) {
            if slot.service_port.is_none() {
                slot.service_port = port.map(i64::from);
            }
        }
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
            let mut backends = Vec::with_capacity(endpoints.len());
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
                        allow: port.allow.clone(),
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
                             before 1.5), none was left to assign from the IP-per-task range \
                             (or the app has no task with an address yet), and HAPROXY_{i}_PORT \
                             is not set"
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

        // A balance lb does not have is round-robin, reported with the L7-only labels.
        let balance = label("BALANCE")
            .and_then(|v| balance(v))
            .unwrap_or_default();

        // marathon-lb's allow-list: addresses and ranges separated by spaces; one bad entry
        // would make HAProxy refuse its whole configuration, so here it refuses only the port.
        let allow = match label("BACKEND_NETWORK_ALLOWED_ACL").map(|v| v.trim()) {
            None | Some("") => self.opts.allow.clone(),
            Some(v) => match v.split_whitespace().map(str::parse).collect() {
                Ok(ranges) => Cidr::normalize(ranges),
                Err(e) => {
                    self.skip(
                        &app.id,
                        Some(i),
                        None,
                        format!("HAPROXY_{i}_BACKEND_NETWORK_ALLOWED_ACL: {e}"),
                    );
                    return None;
                }
            },
        };

        Some(Port {
            index: i,
            service_port,
            bind,
            protocols,
            balance,
            allow,
            unsupported: unsupported_labels(app, i, self.opts.vhosts),
        })
    }

    /// The tasks that serve, with their addresses: running (or lost, unreachable), healthy when
    /// asked, not draining, and reachable by one of the IP sources.
    fn endpoints<'u>(&mut self, unit: &Unit<'u>, mode: Mode) -> Vec<(UnitTask<'u>, Endpoint)> {
        let app = unit.app;
        let mut out = Vec::new();
        for t in &unit.tasks {
            let task = t.task;
            if !running_state(task) {
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
            if !healthy_enough(self.opts, app, task) {
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

    /// Where the task is reached: the first of the IP sources that applies, with its ports.
    pub(crate) fn endpoint(
        &mut self,
        app: &App,
        mode: Mode,
        task: &Task,
    ) -> Result<Endpoint, String> {
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

/// Whether the task's state lets it serve: running, or lost or unreachable behind a
/// partition. No state (old captures) means running, as in marathon-lb.
fn running_state(task: &Task) -> bool {
    !task
        .state
        .as_deref()
        .is_some_and(|s| EXCLUDED_TASK_STATES.contains(&s))
}

/// With `--health-check`, apps that have health checks keep only tasks with a live result.
fn healthy_enough(opts: &TranslateOptions, app: &App, task: &Task) -> bool {
    !opts.health_check || app.health_checks.is_empty() || alive(task)
}

/// Whether `lb` counts the task as running, by the rules backends follow (state, placed on an
/// agent, health when asked): the one test every front end (services, DNS) applies.
pub(crate) fn task_serves(opts: &TranslateOptions, app: &App, task: &Task) -> bool {
    running_state(task) && !task.host.is_empty() && healthy_enough(opts, app, task)
}

/// The task's own address and its container's ports. marathon-lb takes `ipAddresses[0]`
/// whatever its family; an IPv4 balancer takes the first IPv4 one.
fn netinfo(app: &App, task: &Task) -> Result<Endpoint, String> {
    let ip = task
        .ip_addresses
        .iter()
        .find_map(|a| a.ip_address.as_deref()?.trim().parse::<Ipv4Addr>().ok())
        .ok_or_else(|| "the task has no IPv4 address in ipAddresses (yet)".to_owned())?;
    let ports: Vec<Option<i64>> = container_ports(app).into_iter().map(|(p, ..)| p).collect();
    if ports.is_empty() {
        return Err("the app lists no container ports".to_owned());
    }
    Ok(Endpoint { ip, ports })
}
