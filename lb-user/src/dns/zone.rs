//! The DNS zone: which names exist and what they hold, derived from Marathon's apps alone (a
//! pure function, as the L4 services are). Every app gets names, whatever its `HAPROXY_GROUP`;
//! only tasks `lb` counts as running get records (`translate::task_serves`), at the address
//! the IP sources pick (`Cx::endpoint`, the rule backends follow).
//!
//! The zone is plain data, names in lowercase without the final dot, addresses sorted: the
//! userspace server turns it into records, and a kernel fast path can take its A records as a
//! map from wire-format names (`Zone::a_wire`) to addresses.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    sync::Arc,
};

use serde::Serialize;

use super::names::{AppNames, DCOS_DOMAIN, label, task_name};
use crate::marathon::{
    api::{App, Task},
    translate::{
        Cx, Mode, Resolver, TranslateOptions, container_ports, networking_mode, port_mappings,
        protocols, task_serves,
    },
};
use crate::services::Protocol;

/// What the operator chose for names (`--dns-domain`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneOptions {
    /// Mesos-DNS's domain, `mesos` by default.
    pub domain: String,
}

impl Default for ZoneOptions {
    fn default() -> Self {
        Self {
            domain: "mesos".to_owned(),
        }
    }
}

/// An SRV record's target and port (priority 0, weight 0, as Mesos-DNS writes them).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct SrvTarget {
    pub target: String,
    pub port: u16,
}

/// The records of one name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Records {
    /// Sorted, no duplicates; the server rotates them per answer.
    pub a: Vec<Ipv4Addr>,
    /// Sorted, no duplicates.
    pub srv: Vec<SrvTarget>,
}

/// One record of a task as Mesos-DNS's `/v1/enumerate` lists it: the name with its final dot,
/// the address (A) or `target:port` (SRV).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EnumRecord {
    pub name: String,
    pub host: String,
    pub rtype: &'static str,
}

/// A task's records, as `/v1/enumerate` lists them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EnumTask {
    /// The Mesos task name (`web.prod` for `/prod/web`).
    pub name: String,
    pub id: String,
    pub records: Vec<EnumRecord>,
}

/// Every name `lb` answers for, with its records.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Zone {
    /// Mesos-DNS's domain (`mesos`).
    pub domain: String,
    /// By name: lowercase, no final dot.
    pub names: BTreeMap<String, Records>,
    /// Apps and tasks that got no names, and why.
    pub skipped: Vec<String>,
    /// Each app's tasks with their records, by app id (shared with the app's fragment, so a
    /// copy of the zone does not copy them).
    #[serde(skip)]
    pub tasks: BTreeMap<String, Arc<Vec<EnumTask>>>,
}

impl Zone {
    /// The apexes `lb` is authoritative for: Mesos-DNS's domain and dcos-net's.
    pub fn apexes(&self) -> [&str; 2] {
        [&self.domain, DCOS_DOMAIN]
    }

    /// Records in all (A and SRV).
    pub fn record_count(&self) -> usize {
        self.names.values().map(|r| r.a.len() + r.srv.len()).sum()
    }

    /// Names holding A records, in DNS wire format (lowercase labels, each behind its length
    /// byte, the root's zero at the end), with their addresses: the key and value a BPF map
    /// for the kernel's fast path would hold (a query's name compares byte for byte after
    /// lowercasing).
    pub fn a_wire(&self) -> impl Iterator<Item = (Vec<u8>, &[Ipv4Addr])> {
        self.names
            .iter()
            .filter(|(_, r)| !r.a.is_empty())
            .map(|(n, r)| (wire(n), r.a.as_slice()))
    }

    /// Derives the zone from Marathon's apps. `resolve` turns agent hostnames into addresses
    /// (IPv4 literals never reach it), as in `translate`.
    pub fn build<'a>(
        apps: impl IntoIterator<Item = &'a App>,
        opts: &TranslateOptions,
        zone: &ZoneOptions,
        resolve: &mut dyn FnMut(&str) -> Option<Ipv4Addr>,
    ) -> Zone {
        let mut resolver = Resolver::new(resolve);
        let mut b = Builder {
            domain: clean_domain(zone),
            ..Builder::default()
        };
        let mut tasks = BTreeMap::new();
        for app in apps {
            b.app(app, opts, &mut resolver);
            tasks.insert(app.id.clone(), Arc::new(std::mem::take(&mut b.tasks)));
        }
        let mut names = b.names;
        for r in names.values_mut() {
            r.a.sort();
            r.a.dedup();
            r.srv.sort();
            r.srv.dedup();
        }
        Zone {
            domain: b.domain,
            names,
            skipped: b.skipped,
            tasks,
        }
    }
}

/// One app's names with its records (unsorted, perhaps repeated), and why parts of it got none:
/// a zone is the union of its apps' fragments.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Fragment {
    pub names: BTreeMap<String, Records>,
    pub skipped: Vec<String>,
    /// A serving task's agent did not resolve: worth building again later.
    pub unresolved: bool,
    /// The app's tasks with their records (`/v1/enumerate`).
    pub tasks: Arc<Vec<EnumTask>>,
}

impl Fragment {
    /// `app`'s names under `domain` (already trimmed and lowercase).
    pub(crate) fn of(
        app: &App,
        opts: &TranslateOptions,
        domain: &str,
        resolver: &mut Resolver<'_>,
    ) -> Fragment {
        let mut b = Builder {
            domain: domain.to_owned(),
            ..Builder::default()
        };
        b.app(app, opts, resolver);
        Fragment {
            names: b.names,
            skipped: b.skipped,
            unresolved: b.unresolved,
            tasks: Arc::new(b.tasks),
        }
    }
}

/// The records of one name from the records several fragments give it: sorted, no duplicates.
pub(crate) fn merged<'r>(parts: impl IntoIterator<Item = &'r Records>) -> Records {
    let mut out = Records::default();
    for r in parts {
        out.a.extend_from_slice(&r.a);
        out.srv.extend_from_slice(&r.srv);
    }
    out.a.sort();
    out.a.dedup();
    out.srv.sort();
    out.srv.dedup();
    out
}

/// The domain as names are built under it: no dots at the ends, lowercase.
pub(crate) fn clean_domain(opts: &ZoneOptions) -> String {
    opts.domain.trim_matches('.').to_ascii_lowercase()
}

/// `a.b.c` in DNS wire format: `\x01a\x01b\x01c\x00`.
pub fn wire(name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 2);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
    }
    out.push(0);
    out
}

#[derive(Default)]
struct Builder {
    domain: String,
    names: BTreeMap<String, Records>,
    skipped: Vec<String>,
    unresolved: bool,
    tasks: Vec<EnumTask>,
    /// The records of the task being built, for its `EnumTask`.
    current: Vec<EnumRecord>,
}

impl Builder {
    fn a(&mut self, name: String, ip: Ipv4Addr) {
        self.current.push(EnumRecord {
            name: format!("{name}."),
            host: ip.to_string(),
            rtype: "A",
        });
        self.names.entry(name).or_default().a.push(ip);
    }

    fn srv(&mut self, name: String, target: &str, port: u16) {
        self.current.push(EnumRecord {
            name: format!("{name}."),
            host: format!("{target}.:{port}"),
            rtype: "SRV",
        });
        self.names.entry(name).or_default().srv.push(SrvTarget {
            target: target.to_owned(),
            port,
        });
    }

    fn app(&mut self, app: &App, opts: &TranslateOptions, resolver: &mut Resolver<'_>) {
        let Some(names) = AppNames::of(&app.id) else {
            return self
                .skipped
                .push(format!("app {}: no DNS label survives cleaning", app.id));
        };
        let mode = match networking_mode(app) {
            Ok(m) => m,
            Err(reason) => return self.skipped.push(format!("app {}: {reason}", app.id)),
        };
        let port_specs = port_specs(app, mode);
        // dcos-net's autoip: the agent's address when the app maps host ports, else the task's.
        let maps_host_ports =
            mode == Mode::Bridge || port_mappings(app).iter().any(|m| m.host_port.is_some());
        for task in &app.tasks {
            if !task_serves(opts, app, task) {
                continue;
            }
            self.task_records(
                app,
                opts,
                resolver,
                &names,
                mode,
                &port_specs,
                maps_host_ports,
                task,
            );
            let records = std::mem::take(&mut self.current);
            if !records.is_empty() {
                self.tasks.push(EnumTask {
                    name: task_name(&app.id),
                    id: task.id.clone(),
                    records,
                });
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn task_records(
        &mut self,
        app: &App,
        opts: &TranslateOptions,
        resolver: &mut Resolver<'_>,
        names: &AppNames,
        mode: Mode,
        port_specs: &[PortSpec],
        maps_host_ports: bool,
        task: &Task,
    ) {
        let d = self.domain.clone();
        {
            let agent = resolver.get(&task.host);
            self.unresolved |= agent.is_none();
            let container: Vec<Ipv4Addr> = task
                .ip_addresses
                .iter()
                .filter_map(|a| a.ip_address.as_deref()?.trim().parse().ok())
                .collect();
            // The addresses of the task's own names: the IP sources, in order, as for backends.
            let mut cx = Cx {
                opts,
                // Endpoints only: service ports are not needed for names.
                assigned: None,
                resolver,
                skipped: Vec::new(),
            };
            let endpoint = cx.endpoint(app, mode, task);
            let canonical =
                (!task.slave_id.is_empty()).then(|| names.canonical(&task.id, &task.slave_id, &d));
            match &endpoint {
                Ok(ep) => {
                    for host in names.hosts(&d) {
                        self.a(host, ep.ip);
                    }
                    if let Some(c) = &canonical {
                        self.a(c.clone(), ep.ip);
                        for (i, port) in ep.ports.iter().enumerate() {
                            let Some(port) = port.and_then(|p| u16::try_from(p).ok()) else {
                                continue;
                            };
                            if port == 0 {
                                continue;
                            }
                            let Some(spec) = port_specs.get(i) else {
                                continue;
                            };
                            for proto in &spec.protocols {
                                let srv = names.srv(proto_label(*proto), &d);
                                // Mesos-DNS's named-port record beside the plain one.
                                if let Some(name) = &spec.name {
                                    self.srv(format!("_{name}.{srv}"), c, port);
                                }
                                self.srv(srv, c, port);
                            }
                        }
                    }
                }
                Err(reason) => self
                    .skipped
                    .push(format!("app {} task {}: {reason}", app.id, task.id)),
            }
            if let Some(agent) = agent {
                self.a(names.slave_host(&d), agent);
                if !task.slave_id.is_empty() {
                    let c = names.canonical_slave(&task.id, &task.slave_id, &d);
                    self.a(c.clone(), agent);
                    // Mesos-DNS lists every host port under both protocols in `.slave.`.
                    for &port in &task.ports {
                        let Ok(port) = u16::try_from(port) else {
                            continue;
                        };
                        if port == 0 {
                            continue;
                        }
                        let slave = format!("slave.{d}");
                        self.srv(names.srv("tcp", &slave), &c, port);
                        self.srv(names.srv("udp", &slave), &c, port);
                    }
                }
                self.a(names.dcos("agentip"), agent);
            }
            for &ip in &container {
                self.a(names.dcos("containerip"), ip);
            }
            if maps_host_ports {
                if let Some(agent) = agent {
                    self.a(names.dcos("autoip"), agent);
                }
            } else {
                for &ip in &container {
                    self.a(names.dcos("autoip"), ip);
                }
            }
        }
    }
}

/// Each port's protocols and name, by the index task ports and container ports share: the
/// container's ports on a container network, the port mappings in bridge mode, the port
/// definitions on the host. Marathon's default is tcp; a protocol that is neither gets no SRV
/// record. The names are those Marathon gives the task's DiscoveryInfo ports.
fn port_specs(app: &App, mode: Mode) -> Vec<PortSpec> {
    let specs: Vec<(Option<String>, Option<String>)> = match mode {
        Mode::Container => container_ports(app)
            .into_iter()
            .map(|(_, protocol, name)| (protocol, name))
            .collect(),
        Mode::Bridge => port_mappings(app)
            .iter()
            .map(|m| (m.protocol.clone(), m.name.clone()))
            .collect(),
        Mode::Host if !app.port_definitions.is_empty() => app
            .port_definitions
            .iter()
            .map(|d| (d.protocol.clone(), d.name.clone()))
            .collect(),
        Mode::Host => app.ports.iter().map(|_| (None, None)).collect(),
    };
    specs
        .into_iter()
        .map(|(protocol, name)| PortSpec {
            protocols: protocols(protocol.as_deref()).unwrap_or_default(),
            // Mesos-DNS cleans a port name as a label; one that cleans to nothing has no
            // named record.
            name: name.map(|n| label(&n)).filter(|n| !n.is_empty()),
        })
        .collect()
}

/// One port of an app, as its SRV records need it.
struct PortSpec {
    protocols: Vec<Protocol>,
    /// The port's name as a DNS label (`_<name>._<task>._<proto>.marathon.<domain>`).
    name: Option<String>,
}

fn proto_label(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// Every name of the zone and every name above one, up to the apexes: a name in this set
/// exists (NOERROR, perhaps without data); any other name under an apex does not (NXDOMAIN).
pub fn existing_names(zone: &Zone) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let apexes = zone.apexes();
    for a in apexes {
        out.insert(a.to_owned());
    }
    for name in zone.names.keys() {
        let mut n = name.as_str();
        loop {
            if !out.insert(n.to_owned()) || apexes.contains(&n) {
                break;
            }
            match n.split_once('.') {
                Some((_, parent)) => n = parent,
                None => break,
            }
        }
    }
    out
}

pub mod live;
#[cfg(test)]
mod tests;
