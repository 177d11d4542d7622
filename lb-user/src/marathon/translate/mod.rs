//! marathon-lb's rules, turning Marathon apps and their tasks into the services the agent balances.
//! Pure: data in, data out; the only outside help is `resolve`, for agents named by hostname.
//!
//! The reference is marathon-lb 1.x (`marathon_lb.py` `get_apps`/`config`, `utils.py`). Where an
//! L4 balancer cannot do what HAProxy did, or where marathon-lb would crash or be ambiguous, the
//! choice made here is written next to the code, and what is lost is reported in `Translation`.
//!
//! By job: `units` groups apps as marathon-lb does (zero-downtime deployments merge), `ports`
//! reads an app's networking and ports, `backends` turns one unit into candidate services, and
//! `settle` (here) decides clashes between units. A unit's candidates depend on that unit's apps
//! only, which is what lets `marathon::catalog` re-translate one app without the others.
use std::{
    collections::{BTreeMap, btree_map::Entry},
    fmt,
    net::Ipv4Addr,
    str::FromStr,
};

use serde::Serialize;

use super::api::App;
use crate::services::{Cidr, Desired, Listener, ServiceSpec};

mod assign;
mod backends;
mod ports;
#[cfg(test)]
mod tests;
mod units;

pub use assign::PortRange;
pub(crate) use assign::{Assigned, assign, needs_ports};
pub(crate) use backends::{Cx, Resolver, task_serves};
pub(crate) use ports::{Mode, container_ports, networking_mode, port_mappings, protocols};
pub(crate) use units::{UnitKey, unit_key, units};

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
    /// Where service ports for IP-per-task apps without any come from (marathon-lb's
    /// `--min/max-serv-port-ip-per-task`); `None`: such ports are not served.
    pub ip_per_task_ports: Option<PortRange>,
    /// The client ranges allowed on ports without `HAPROXY_{n}_BACKEND_NETWORK_ALLOWED_ACL`
    /// (`--allow`); empty: every client.
    pub allow: Vec<Cidr>,
    /// The HTTP front end serves the virtual-host labels (`VHOST`, `PATH`, `BACKEND_WEIGHT`,
    /// `REDIRECT_TO_HTTPS`, `SSL_CERT`), so they are not reported as unsupported; false with
    /// `--no-vhost`.
    pub vhosts: bool,
}

impl Default for TranslateOptions {
    fn default() -> Self {
        Self {
            groups: vec!["external".to_owned()],
            health_check: false,
            strict_mode: false,
            ip_sources: vec![IpSource::Netinfo, IpSource::Host],
            ip_per_task_ports: Some(PortRange::default()),
            allow: Vec::new(),
            vhosts: true,
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

/// Turns Marathon's apps into the desired services, following marathon-lb.
///
/// `resolve` turns an agent's hostname (`task.host`) into its address; it is not called for
/// IPv4 literals, and at most once per distinct hostname.
pub fn translate(
    apps: &[App],
    opts: &TranslateOptions,
    resolve: &mut dyn FnMut(&str) -> Option<Ipv4Addr>,
) -> Translation {
    let mut resolver = Resolver::new(resolve);
    let units = units(apps.iter());
    let assigned = assign(&units, opts.ip_per_task_ports);
    let parts: Vec<Part> = units
        .into_iter()
        .map(|unit| Part::of(unit, opts, &assigned, &mut resolver))
        .collect();
    settle(parts.iter())
}

/// One service before clashes are settled, with the labels it cannot honour.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Candidate {
    pub spec: ServiceSpec,
    pub unsupported: Vec<String>,
}

/// The translation of one unit (a plain app, or a deployment group's apps), before clashes with
/// other units are settled: it depends on that unit's apps alone.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Part {
    /// Where the unit stands when units claim listeners: (name id, defining app's id).
    pub order: (String, String),
    /// In port index order, then protocol.
    pub candidates: Vec<Candidate>,
    pub skipped: Vec<Skipped>,
}

impl Part {
    pub(crate) fn of(
        unit: units::Unit<'_>,
        opts: &TranslateOptions,
        assigned: &Assigned,
        resolver: &mut Resolver<'_>,
    ) -> Self {
        let mut cx = backends::Cx {
            opts,
            assigned: assigned.get(&unit.app.id).map(Vec::as_slice),
            resolver,
            skipped: unit.skipped.clone(),
        };
        for app in &unit.members {
            for e in &app.task_errors {
                cx.skip(&app.id, None, None, e.clone());
            }
        }
        let mut candidates = Vec::new();
        cx.unit(&unit, &mut candidates);
        // Kept for as long as the unit does not change: no spare room (a unit has one or two).
        candidates.shrink_to_fit();
        Part {
            order: (unit.name_id.clone(), unit.app.id.clone()),
            candidates,
            skipped: cx.skipped,
        }
    }
}

/// Settles clashes between parts given in claim order: the first to claim a listener keeps it.
/// Parts come in app id order, then port index, which makes the outcome of a clash independent
/// of Marathon's listing order.
pub(crate) fn settle<'p>(parts: impl IntoIterator<Item = &'p Part>) -> Translation {
    let mut services: BTreeMap<Listener, &Candidate> = BTreeMap::new();
    let mut skipped = Vec::new();
    for part in parts {
        skipped.extend(part.skipped.iter().cloned());
        for c in &part.candidates {
            match services.entry(c.spec.listener) {
                Entry::Vacant(v) => {
                    v.insert(c);
                }
                Entry::Occupied(o) => {
                    let holder = &o.get().spec;
                    skipped.push(Skipped {
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
    }

    let mut unsupported = Vec::new();
    let mut desired = Desired {
        services: Vec::with_capacity(services.len()),
    };
    for c in services.into_values() {
        if !c.unsupported.is_empty() {
            unsupported.push(Unsupported {
                app_id: c.spec.app_id.clone().unwrap_or_default(),
                port_index: c.spec.port_index.unwrap_or_default(),
                labels: c.unsupported.clone(),
            });
        }
        desired.services.push(c.spec.clone());
    }
    // A `udp,tcp` port is two services with the same labels: report it once.
    unsupported.sort();
    unsupported.dedup();
    // Sorted, so that the same apps listed in another order report identically.
    skipped.sort();
    Translation {
        desired,
        skipped,
        unsupported,
    }
}

/// A reason something was left out.
pub(crate) fn skip(
    app_id: &str,
    port: Option<usize>,
    task: Option<&str>,
    reason: String,
) -> Skipped {
    Skipped {
        app_id: app_id.to_owned(),
        port_index: port,
        task_id: task.map(str::to_owned),
        reason,
    }
}
