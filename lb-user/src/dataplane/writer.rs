//! Applies a desired state to the maps as a difference: unchanged services cost nothing, and
//! a changed backend set is written as a new generation, then switched to with one update of
//! the service entry, so no packet ever sees half a change. Old generations go after a grace.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap as StdHashMap, VecDeque},
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{Array, HashMap, Map, PerCpuArray, PerCpuValues},
    util::nr_cpus,
};
use lb_common::{
    Backend, BackendKey, Config, Counters, FLOW_F_REPLY, Flow, FlowKey, LocalAddr,
    MAP_BACKEND_STATS, MAP_BACKENDS, MAP_CONFIG, MAP_FLOWS, MAP_LOCAL_ADDRS, MAP_SERVICE_STATS,
    MAP_SERVICES, MAX_BACKENDS_PER_SERVICE, SVC_F_AFFINITY_SOURCE, Service, ServiceKey,
};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use super::{ifaces, loader::Capacities, ports::PortGate};
use crate::services::{Balance, Desired, Listener, Protocol, ServiceSpec};

/// How long a replaced backend generation stays readable for packets already in flight.
const GRACE: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedBackend {
    pub addr: SocketAddrV4,
    pub id: u32,
    /// Source address in full-NAT mode.
    pub nat: Ipv4Addr,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedService {
    pub id: u32,
    pub generation: u32,
    pub spec: ServiceSpec,
    pub backends: Vec<AppliedBackend>,
}

/// A backend that left its service's set: no new flows, existing ones run to their end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainingBackend {
    pub listener: Listener,
    pub addr: SocketAddrV4,
    pub id: u32,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
    pub unchanged: usize,
}

pub fn service_key(l: &Listener) -> ServiceKey {
    ServiceKey {
        addr: l.bind.map_or(0, |a| u32::from(a).to_be()),
        port: l.port.to_be(),
        proto: l.protocol.ip_proto(),
        _pad: 0,
    }
}

pub fn listener_of(k: &ServiceKey) -> Option<Listener> {
    Some(Listener {
        bind: (k.addr != 0).then(|| Ipv4Addr::from(u32::from_be(k.addr))),
        port: u16::from_be(k.port),
        protocol: Protocol::from_ip_proto(k.proto)?,
    })
}

pub fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Map> {
    ebpf.map_mut(name)
        .with_context(|| format!("map {name} missing from the object"))
}

/// Lowest free ids first, so ids (and their counter slots) stay small and dense; O(log n)
/// per id, so a state of tens of thousands of backends applies in one pass.
#[derive(Debug, Default)]
struct Ids {
    used: BTreeSet<u32>,
    /// Ids below `next` that are not in use.
    free: BTreeSet<u32>,
    next: u32,
    limit: u32,
}

impl Ids {
    fn new(limit: u32) -> Self {
        Self {
            limit,
            ..Self::default()
        }
    }

    fn take(&mut self) -> Option<u32> {
        let id = match self.free.pop_first() {
            Some(id) => id,
            None if self.next < self.limit => {
                self.next += 1;
                self.next - 1
            }
            None => return None,
        };
        self.used.insert(id);
        Some(id)
    }

    /// Marks an id found in the maps (adoption) as used.
    fn mark(&mut self, id: u32) {
        if id >= self.next {
            self.free.extend(self.next..id);
            self.next = id + 1;
        }
        self.free.remove(&id);
        self.used.insert(id);
    }

    fn release(&mut self, id: u32) {
        if self.used.remove(&id) {
            self.free.insert(id);
        }
    }

    fn contains(&self, id: u32) -> bool {
        self.used.contains(&id)
    }
}

pub struct Writer {
    pub services: BTreeMap<Listener, AppliedService>,
    pub draining: BTreeMap<u32, DrainingBackend>,
    service_ids: Ids,
    backend_ids: Ids,
    /// Backend id by (listener, address), stable while the backend is active or draining.
    backend_index: StdHashMap<(Listener, SocketAddrV4), u32>,
    pending_deletes: VecDeque<(Instant, Vec<BackendKey>)>,
    /// Ids of removed services whose flows may still be counting.
    retired_services: BTreeSet<u32>,
    nat_cache: StdHashMap<Ipv4Addr, Ipv4Addr>,
    ports: PortGate,
}

impl Writer {
    /// Rebuilds the writer's view from what is already in the (possibly pinned) maps, so a
    /// restarted daemon continues the same ids and generations and rewrites nothing unchanged.
    pub fn adopt(ebpf: &mut Ebpf, caps: &Capacities) -> Result<Self> {
        let mut w = Self {
            services: BTreeMap::new(),
            draining: BTreeMap::new(),
            service_ids: Ids::new(caps.services),
            backend_ids: Ids::new(caps.backend_ids),
            backend_index: StdHashMap::new(),
            pending_deletes: VecDeque::new(),
            retired_services: BTreeSet::new(),
            nat_cache: StdHashMap::new(),
            ports: PortGate::default(),
        };
        let services: Vec<(ServiceKey, Service)> = {
            let m: HashMap<_, ServiceKey, Service> = HashMap::try_from(map(ebpf, MAP_SERVICES)?)?;
            m.iter().filter_map(Result::ok).collect()
        };
        let backends: HashMap<_, BackendKey, Backend> =
            HashMap::try_from(map(ebpf, MAP_BACKENDS)?)?;
        let mut all_slots: Vec<BackendKey> = backends.keys().filter_map(Result::ok).collect();
        for (key, svc) in services {
            let Some(listener) = listener_of(&key) else {
                continue;
            };
            let mut applied = Vec::new();
            for index in 0..svc.count {
                let k = BackendKey {
                    service_id: svc.id,
                    generation: svc.generation,
                    index,
                };
                if let Ok(b) = backends.get(&k, 0) {
                    let addr = SocketAddrV4::new(
                        Ipv4Addr::from(u32::from_be(b.addr)),
                        u16::from_be(b.port),
                    );
                    w.backend_ids.mark(b.id);
                    w.backend_index.insert((listener, addr), b.id);
                    applied.push(AppliedBackend {
                        addr,
                        id: b.id,
                        nat: Ipv4Addr::from(u32::from_be(b.nat_addr)),
                    });
                }
            }
            w.service_ids.mark(svc.id);
            all_slots.retain(|k| !(k.service_id == svc.id && k.generation == svc.generation));
            let spec = ServiceSpec {
                name: format!("{listener}"),
                listener,
                balance: if svc.flags & SVC_F_AFFINITY_SOURCE != 0 {
                    Balance::Source
                } else {
                    Balance::RoundRobin
                },
                app_id: None,
                port_index: None,
                backends: applied.iter().map(|b| b.addr).collect(),
            };
            w.services.insert(
                listener,
                AppliedService {
                    id: svc.id,
                    generation: svc.generation,
                    spec,
                    backends: applied,
                },
            );
        }
        // Backends that left their set before the restart but still carry flows: keep their ids
        // (and counters) reserved and show them draining, as the previous daemon did.
        let flows: HashMap<_, FlowKey, Flow> = HashMap::try_from(map(ebpf, MAP_FLOWS)?)?;
        for (k, f) in flows.iter().filter_map(Result::ok) {
            w.ports.add_flow(&k, &f);
            if f.flags & FLOW_F_REPLY != 0 || w.backend_ids.contains(f.backend_id) {
                continue;
            }
            let listener = w
                .services
                .values()
                .find(|a| a.id == f.service_id)
                .map(|a| a.spec.listener)
                .or_else(|| {
                    listener_of(&ServiceKey {
                        addr: k.dst,
                        port: k.dport,
                        proto: k.proto,
                        _pad: 0,
                    })
                });
            let Some(listener) = listener else { continue };
            let addr = SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(f.new_dst)),
                u16::from_be(f.new_dport),
            );
            w.backend_ids.mark(f.backend_id);
            w.backend_index.insert((listener, addr), f.backend_id);
            w.draining.insert(
                f.backend_id,
                DrainingBackend {
                    listener,
                    addr,
                    id: f.backend_id,
                },
            );
            if !w.services.values().any(|a| a.id == f.service_id) {
                w.service_ids.mark(f.service_id);
                w.retired_services.insert(f.service_id);
            }
        }
        for a in w.services.values() {
            w.ports
                .add_service(&a.spec.listener, a.backends.iter().map(|b| b.addr));
        }
        w.ports.flush(ebpf, true)?;
        // Slots of generations no service points at: leftovers of an interrupted swap.
        if !all_slots.is_empty() {
            w.pending_deletes.push_back((Instant::now(), all_slots));
        }
        Ok(w)
    }

    fn nat_for(&mut self, addr: SocketAddrV4) -> Ipv4Addr {
        if let Some(a) = self.nat_cache.get(addr.ip()) {
            return *a;
        }
        let nat = ifaces::source_for(addr).unwrap_or_else(|e| {
            warn!(backend = %addr, "no route to backend ({e}); full NAT will use 0.0.0.0 until one appears");
            Ipv4Addr::UNSPECIFIED
        });
        if !nat.is_unspecified() {
            self.nat_cache.insert(*addr.ip(), nat);
        }
        nat
    }

    /// Forgets cached NAT sources (routes or addresses changed).
    pub fn routes_changed(&mut self) {
        self.nat_cache.clear();
    }

    fn zero_counters(ebpf: &mut Ebpf, map_name: &str, id: u32) -> Result<()> {
        let mut stats: PerCpuArray<_, Counters> = PerCpuArray::try_from(map(ebpf, map_name)?)?;
        let zeros =
            PerCpuValues::try_from(vec![Counters::default(); nr_cpus().map_err(|(_, e)| e)?])?;
        stats
            .set(id, zeros, 0)
            .with_context(|| format!("{map_name}[{id}]"))?;
        Ok(())
    }

    fn backend_id(
        &mut self,
        ebpf: &mut Ebpf,
        listener: Listener,
        addr: SocketAddrV4,
    ) -> Result<u32> {
        if let Some(id) = self.backend_index.get(&(listener, addr)) {
            self.draining.remove(id);
            return Ok(*id);
        }
        let id = self
            .backend_ids
            .take()
            .context("no free backend id (raise --max-backends)")?;
        Self::zero_counters(ebpf, MAP_BACKEND_STATS, id)?;
        self.backend_index.insert((listener, addr), id);
        Ok(id)
    }

    /// Writes the difference between what is applied and `desired`.
    pub fn apply(&mut self, ebpf: &mut Ebpf, desired: &Desired) -> Result<ApplyReport> {
        let mut report = ApplyReport::default();
        let want: BTreeMap<Listener, &ServiceSpec> =
            desired.services.iter().map(|s| (s.listener, s)).collect();

        let gone: Vec<Listener> = self
            .services
            .keys()
            .filter(|l| !want.contains_key(l))
            .copied()
            .collect();
        for listener in gone {
            let old = self.services.remove(&listener).expect("listed above");
            let mut svcs: HashMap<_, ServiceKey, Service> =
                HashMap::try_from(map(ebpf, MAP_SERVICES)?)?;
            svcs.remove(&service_key(&listener)).ok();
            self.retire(&old, &[]);
            // Its id (and counter slot) stays taken while its flows drain.
            self.retired_services.insert(old.id);
            report.removed += 1;
        }

        for (listener, spec) in want {
            let mut addrs = spec.backends.clone();
            addrs.sort();
            addrs.dedup();
            if addrs.len() > MAX_BACKENDS_PER_SERVICE as usize {
                warn!(service = %spec.name, count = addrs.len(), "too many backends; keeping the first {MAX_BACKENDS_PER_SERVICE}");
                addrs.truncate(MAX_BACKENDS_PER_SERVICE as usize);
            }
            let nats: Vec<Ipv4Addr> = addrs.iter().map(|a| self.nat_for(*a)).collect();
            if let Some(cur) = self.services.get_mut(&listener) {
                let same_set = cur.backends.len() == addrs.len()
                    && cur
                        .backends
                        .iter()
                        .zip(&addrs)
                        .zip(&nats)
                        .all(|((b, a), n)| b.addr == *a && b.nat == *n);
                if same_set && cur.spec.balance == spec.balance {
                    cur.spec = ServiceSpec {
                        backends: addrs,
                        ..(*spec).clone()
                    };
                    report.unchanged += 1;
                    continue;
                }
            }
            let (id, generation, old) = match self.services.get(&listener) {
                Some(cur) => (cur.id, cur.generation.wrapping_add(1), Some(cur.clone())),
                None => {
                    let id = self
                        .service_ids
                        .take()
                        .context("no free service id (raise --max-services)")?;
                    Self::zero_counters(ebpf, MAP_SERVICE_STATS, id)?;
                    (id, 0, None)
                }
            };
            let mut backends = Vec::with_capacity(addrs.len());
            for (addr, nat) in addrs.iter().zip(&nats) {
                backends.push(AppliedBackend {
                    addr: *addr,
                    id: self.backend_id(ebpf, listener, *addr)?,
                    nat: *nat,
                });
            }
            {
                let mut slots: HashMap<_, BackendKey, Backend> =
                    HashMap::try_from(map(ebpf, MAP_BACKENDS)?)?;
                for (index, b) in backends.iter().enumerate() {
                    let key = BackendKey {
                        service_id: id,
                        generation,
                        index: index as u32,
                    };
                    let value = Backend {
                        addr: u32::from(*b.addr.ip()).to_be(),
                        nat_addr: u32::from(b.nat).to_be(),
                        port: b.addr.port().to_be(),
                        _pad: 0,
                        id: b.id,
                    };
                    slots
                        .insert(key, value, 0)
                        .with_context(|| format!("writing backend {} of {}", b.addr, spec.name))?;
                }
            }
            let svc = Service {
                id,
                count: backends.len() as u32,
                generation,
                flags: if spec.balance == Balance::Source {
                    SVC_F_AFFINITY_SOURCE
                } else {
                    0
                },
            };
            // The gate opens before the service answers, so its first packet gets through.
            self.ports
                .add_service(&listener, backends.iter().map(|b| b.addr));
            self.ports.flush(ebpf, false)?;
            let mut svcs: HashMap<_, ServiceKey, Service> =
                HashMap::try_from(map(ebpf, MAP_SERVICES)?)?;
            svcs.insert(service_key(&listener), svc, 0)
                .with_context(|| format!("writing service {}", spec.name))?;
            debug!(service = %spec.name, %listener, backends = backends.len(), generation, "applied");
            let applied = AppliedService {
                id,
                generation,
                spec: ServiceSpec {
                    backends: addrs,
                    ..(*spec).clone()
                },
                backends,
            };
            match old {
                Some(old) => {
                    self.retire(&old, &applied.backends);
                    report.changed += 1;
                }
                None => report.added += 1,
            }
            self.services.insert(listener, applied);
        }
        Ok(report)
    }

    /// Schedules the slots of `old`'s generation for deletion and marks its backends that
    /// are not in `kept` as draining.
    fn retire(&mut self, old: &AppliedService, kept: &[AppliedBackend]) {
        let slots = (0..old.backends.len() as u32)
            .map(|index| BackendKey {
                service_id: old.id,
                generation: old.generation,
                index,
            })
            .collect();
        self.pending_deletes
            .push_back((Instant::now() + GRACE, slots));
        for b in &old.backends {
            if !kept.iter().any(|k| k.id == b.id) {
                self.draining.insert(
                    b.id,
                    DrainingBackend {
                        listener: old.spec.listener,
                        addr: b.addr,
                        id: b.id,
                    },
                );
            }
        }
    }

    /// Housekeeping: deletes old generations past their grace, and frees the ids of draining
    /// backends and removed services that no live flow uses any more.
    pub fn tick(
        &mut self,
        ebpf: &mut Ebpf,
        in_use: &BTreeSet<u32>,
        services_in_use: &BTreeSet<u32>,
    ) -> Result<()> {
        let now = Instant::now();
        while self.pending_deletes.front().is_some_and(|(t, _)| *t <= now) {
            let (_, keys) = self.pending_deletes.pop_front().expect("checked");
            let mut slots: HashMap<_, BackendKey, Backend> =
                HashMap::try_from(map(ebpf, MAP_BACKENDS)?)?;
            for k in keys {
                slots.remove(&k).ok();
            }
        }
        let done: Vec<u32> = self
            .draining
            .keys()
            .filter(|id| !in_use.contains(id))
            .copied()
            .collect();
        for id in done {
            let d = self.draining.remove(&id).expect("listed");
            self.backend_index.remove(&(d.listener, d.addr));
            self.backend_ids.release(id);
        }
        let done: Vec<u32> = self
            .retired_services
            .iter()
            .filter(|id| !services_in_use.contains(id))
            .copied()
            .collect();
        for id in done {
            self.retired_services.remove(&id);
            self.service_ids.release(id);
        }
        Ok(())
    }
}

/// Writes the run-time settings the data plane reads for every new flow.
/// Writes the data plane's configuration. The route generation always moves on from the one
/// in force (also one left by an earlier daemon), so no flow keeps a route cached before.
pub fn write_config(ebpf: &mut Ebpf, cfg: &Config) -> Result<()> {
    let mut m: Array<_, Config> = Array::try_from(map(ebpf, MAP_CONFIG)?)?;
    let old = m.get(&0, 0).context("reading LB_CONFIG")?;
    let cfg = Config {
        route_gen: next_route_gen(old.route_gen),
        ..*cfg
    };
    m.set(0, cfg, 0).context("writing LB_CONFIG")?;
    Ok(())
}

/// Invalidates every cached route (routes, neighbours, links or `LB_XDP_TX` changed): the
/// configuration in force, written again, which moves the generation on.
pub fn bump_route_gen(ebpf: &mut Ebpf) -> Result<()> {
    let m: Array<_, Config> = Array::try_from(map(ebpf, MAP_CONFIG)?)?;
    let cfg = m.get(&0, 0).context("reading LB_CONFIG")?;
    write_config(ebpf, &cfg)
}

/// 0 means "no route cached" in a flow, so the generation skips it when it wraps.
const fn next_route_gen(gen_: u32) -> u32 {
    match gen_.wrapping_add(1) {
        0 => 1,
        g => g,
    }
}

/// Replaces the set of the agent's own addresses (where wildcard services answer).
pub fn write_local_addrs(ebpf: &mut Ebpf, addrs: &[(Ipv4Addr, u32)]) -> Result<()> {
    let mut m: HashMap<_, u32, LocalAddr> = HashMap::try_from(map(ebpf, MAP_LOCAL_ADDRS)?)?;
    let want: BTreeMap<u32, u32> = addrs
        .iter()
        .map(|(a, i)| (u32::from(*a).to_be(), *i))
        .collect();
    let stale: Vec<u32> = m
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !want.contains_key(k))
        .collect();
    for k in stale {
        m.remove(&k).ok();
    }
    for (k, ifindex) in want {
        m.insert(k, LocalAddr { ifindex, _pad: 0 }, 0)
            .with_context(|| format!("LB_LOCAL_ADDRS[{}]", Ipv4Addr::from(u32::from_be(k))))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Ids;

    #[test]
    fn ids_are_dense_reused_and_bounded() {
        let mut ids = Ids::new(4);
        ids.mark(2);
        assert_eq!(
            (ids.take(), ids.take(), ids.take()),
            (Some(0), Some(1), Some(3))
        );
        assert_eq!(ids.take(), None, "limit reached");
        ids.release(1);
        ids.release(1);
        assert_eq!(ids.take(), Some(1), "lowest freed id first");
        assert!(ids.contains(2) && ids.contains(3));
    }
}
