//! The planner: from what the maps hold (the applied state) and the desired services, the map
//! operations that make the one the other. Unchanged services cost nothing; a changed backend
//! set is written as a new generation, then switched to with one update of the service entry,
//! so no packet ever sees half a change; old generations go after a grace. Nothing here
//! touches the kernel: `maps::execute` runs the operations, and host tests run them on a fake.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use lb_common::{Backend, BackendKey, FLOW_F_REPLY, MAX_BACKENDS_PER_SERVICE, Service, ServiceKey};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use super::{
    convert::{
        backend_addr, backend_value, balance_of, ip, listener_of, service_flags, service_key, sock,
    },
    loader::Capacities,
    maps::LbMaps,
    ports::PortGate,
};
use crate::services::{Balance, Cidr, Desired, Listener, ServiceSpec};

/// How long a replaced backend generation stays readable for packets already in flight.
pub const GRACE: Duration = Duration::from_secs(1);

/// One write to the maps, in the order the plan needs them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A new id's counters start from zero (a reused slot keeps an old owner's otherwise).
    ZeroServiceCounters(u32),
    ZeroBackendCounters(u32),
    PutBackend(BackendKey, Backend),
    DeleteBackend(BackendKey),
    /// A word of the port gate (`LB_PORTS`).
    PutPortWord(u32, u64),
    PutService(ServiceKey, Service),
    DeleteService(ServiceKey),
    /// A client range allowed to reach the service with this id (`LB_ACL`).
    PutAllow(u32, Cidr),
    DeleteAllow(u32, Cidr),
    /// A leastconn backend's live flows as the sweep counted them (`LB_BE_LIVE`).
    SetBackendLive(u32, u64),
}

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

/// The operations of one apply, and what could not be applied (each with its reason; the
/// rest of the services are applied regardless).
#[derive(Debug, Default)]
pub struct Plan {
    pub ops: Vec<Op>,
    pub report: ApplyReport,
    pub refused: Vec<String>,
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

pub struct Planner {
    pub services: BTreeMap<Listener, AppliedService>,
    pub draining: BTreeMap<u32, DrainingBackend>,
    service_ids: Ids,
    backend_ids: Ids,
    /// Backend id by (listener, address), stable while the backend is active or draining.
    backend_index: HashMap<(Listener, SocketAddrV4), u32>,
    pending_deletes: VecDeque<(Instant, Vec<BackendKey>)>,
    /// Ids of removed services whose flows may still be counting.
    retired_services: BTreeSet<u32>,
    ports: PortGate,
}

impl Planner {
    /// Rebuilds the applied state from what the (possibly pinned) maps hold, so a restarted
    /// daemon continues the same ids and generations and rewrites nothing unchanged. The
    /// operations returned rewrite the whole port gate from the services and flows found.
    pub fn adopt(maps: &impl LbMaps, caps: &Capacities, now: Instant) -> (Self, Vec<Op>) {
        let mut p = Self {
            services: BTreeMap::new(),
            draining: BTreeMap::new(),
            service_ids: Ids::new(caps.services),
            backend_ids: Ids::new(caps.backend_ids),
            backend_index: HashMap::new(),
            pending_deletes: VecDeque::new(),
            retired_services: BTreeSet::new(),
            ports: PortGate::default(),
        };
        let mut orphan_slots = maps.backend_keys();
        let mut allowed: BTreeMap<u32, Vec<Cidr>> = BTreeMap::new();
        for (id, range) in maps.allowed() {
            allowed.entry(id).or_default().push(range);
        }
        for (key, svc) in maps.services() {
            let Some(listener) = listener_of(&key) else {
                continue;
            };
            let allow = allowed.remove(&svc.id).unwrap_or_default();
            p.adopt_service(maps, listener, svc, allow);
            orphan_slots.retain(|k| !(k.service_id == svc.id && k.generation == svc.generation));
        }
        // Backends that left their set before the restart but still carry flows: keep their ids
        // (and counters) reserved and show them draining, as the previous daemon did.
        maps.for_each_flow(&mut |k, f| {
            p.ports.add_flow(k, f);
            if f.flags & FLOW_F_REPLY != 0 || p.backend_ids.contains(f.backend_id) {
                return;
            }
            let listener = p
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
            let Some(listener) = listener else { return };
            let addr = sock(f.new_dst, f.new_dport);
            p.backend_ids.mark(f.backend_id);
            p.backend_index.insert((listener, addr), f.backend_id);
            p.draining.insert(
                f.backend_id,
                DrainingBackend {
                    listener,
                    addr,
                    id: f.backend_id,
                },
            );
            if !p.services.values().any(|a| a.id == f.service_id) {
                p.service_ids.mark(f.service_id);
                p.retired_services.insert(f.service_id);
            }
        });
        for a in p.services.values() {
            p.ports
                .add_service(&a.spec.listener, a.backends.iter().map(|b| b.addr));
        }
        let mut ops = p.ports.flush(true);
        // Ranges of services that are gone: a later service with the same id must not inherit them.
        for (id, ranges) in allowed {
            ops.extend(ranges.into_iter().map(|r| Op::DeleteAllow(id, r)));
        }
        // Slots of generations no service points at: leftovers of an interrupted swap.
        if !orphan_slots.is_empty() {
            p.pending_deletes.push_back((now, orphan_slots));
        }
        (p, ops)
    }

    fn adopt_service(
        &mut self,
        maps: &impl LbMaps,
        listener: Listener,
        svc: Service,
        allow: Vec<Cidr>,
    ) {
        let mut applied = Vec::new();
        for index in 0..svc.count {
            let k = BackendKey {
                service_id: svc.id,
                generation: svc.generation,
                index,
            };
            if let Some(b) = maps.backend(&k) {
                let addr = backend_addr(&b);
                self.backend_ids.mark(b.id);
                self.backend_index.insert((listener, addr), b.id);
                applied.push(AppliedBackend {
                    addr,
                    id: b.id,
                    nat: ip(b.nat_addr),
                });
            }
        }
        self.service_ids.mark(svc.id);
        let spec = ServiceSpec {
            name: format!("{listener}"),
            listener,
            balance: balance_of(svc.flags),
            app_id: None,
            port_index: None,
            backends: applied.iter().map(|b| b.addr).collect(),
            allow: Cidr::normalize(allow),
        };
        self.services.insert(
            listener,
            AppliedService {
                id: svc.id,
                generation: svc.generation,
                spec,
                backends: applied,
            },
        );
    }

    /// The operations that take the maps from what is applied to `desired`. `nat` gives the
    /// full-NAT source address towards a backend.
    pub fn apply(
        &mut self,
        desired: &Desired,
        nat: &mut dyn FnMut(SocketAddrV4) -> Ipv4Addr,
        now: Instant,
    ) -> Plan {
        let mut plan = Plan::default();
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
            plan.ops.push(Op::DeleteService(service_key(&listener)));
            // After the service: no new flow looks its ranges up any more.
            plan.ops
                .extend(old.spec.allow.iter().map(|r| Op::DeleteAllow(old.id, *r)));
            self.retire(&old, &[], now);
            // Its id (and counter slot) stays taken while its flows drain.
            self.retired_services.insert(old.id);
            plan.report.removed += 1;
        }
        for (listener, spec) in want {
            if let Err(why) = self.apply_service(&mut plan, listener, spec, nat, now) {
                warn!(service = %spec.name, "not applied: {why}");
                plan.refused.push(format!("{}: {why}", spec.name));
            }
        }
        plan
    }

    fn apply_service(
        &mut self,
        plan: &mut Plan,
        listener: Listener,
        spec: &ServiceSpec,
        nat: &mut dyn FnMut(SocketAddrV4) -> Ipv4Addr,
        now: Instant,
    ) -> Result<(), String> {
        // The common case at scale: nothing changed. Decided without allocating, since a
        // Marathon event re-plans every service.
        if let Some(cur) = self.services.get(&listener)
            && cur.spec == *spec
            && cur.backends.iter().all(|b| b.nat == nat(b.addr))
        {
            plan.report.unchanged += 1;
            return Ok(());
        }
        let mut addrs = spec.backends.clone();
        addrs.sort();
        addrs.dedup();
        if addrs.len() > MAX_BACKENDS_PER_SERVICE as usize {
            warn!(service = %spec.name, count = addrs.len(), "too many backends; keeping the first {MAX_BACKENDS_PER_SERVICE}");
            addrs.truncate(MAX_BACKENDS_PER_SERVICE as usize);
        }
        let nats: Vec<Ipv4Addr> = addrs.iter().map(|a| nat(*a)).collect();
        if let Some(cur) = self.services.get_mut(&listener) {
            let same_set = cur.backends.len() == addrs.len()
                && cur
                    .backends
                    .iter()
                    .zip(&addrs)
                    .zip(&nats)
                    .all(|((b, a), n)| b.addr == *a && b.nat == *n);
            if same_set && cur.spec.balance == spec.balance && cur.spec.allow == spec.allow {
                cur.spec = ServiceSpec {
                    backends: addrs,
                    ..spec.clone()
                };
                plan.report.unchanged += 1;
                return Ok(());
            }
        }
        let old = self.services.get(&listener).cloned();
        let applied = self.take_ids(plan, listener, spec, addrs, &nats, old.as_ref())?;
        let old_allow = old.as_ref().map_or(&[][..], |o| &o.spec.allow[..]);
        self.write(plan, listener, &applied, old_allow);
        match old {
            Some(old) => {
                self.retire(&old, &applied.backends, now);
                plan.report.changed += 1;
            }
            None => plan.report.added += 1,
        }
        self.services.insert(listener, applied);
        Ok(())
    }

    /// The ids of a new or changed service: its own (a new generation of it when it exists)
    /// and its backends'. When ids run out, what was taken is given back, so the state stays
    /// what the maps hold.
    fn take_ids(
        &mut self,
        plan: &mut Plan,
        listener: Listener,
        spec: &ServiceSpec,
        addrs: Vec<SocketAddrV4>,
        nats: &[Ipv4Addr],
        old: Option<&AppliedService>,
    ) -> Result<AppliedService, String> {
        let (id, generation) = match old {
            Some(cur) => (cur.id, cur.generation.wrapping_add(1)),
            None => {
                let id = self
                    .service_ids
                    .take()
                    .ok_or("no free service id (raise --max-services)")?;
                plan.ops.push(Op::ZeroServiceCounters(id));
                (id, 0)
            }
        };
        let mut backends = Vec::with_capacity(addrs.len());
        let mut taken = Vec::new();
        for (addr, nat) in addrs.iter().zip(nats) {
            let Some((bid, new)) = self.backend_id(plan, listener, *addr) else {
                for (addr, bid) in taken {
                    self.backend_index.remove(&(listener, addr));
                    self.backend_ids.release(bid);
                }
                if old.is_none() {
                    self.service_ids.release(id);
                }
                return Err("no free backend id (raise --max-backends)".into());
            };
            if new {
                taken.push((*addr, bid));
            }
            backends.push(AppliedBackend {
                addr: *addr,
                id: bid,
                nat: *nat,
            });
        }
        Ok(AppliedService {
            id,
            generation,
            spec: ServiceSpec {
                backends: addrs,
                ..spec.clone()
            },
            backends,
        })
    }

    /// The writes of `applied`'s generation: its backend slots, the port gate, its new allowed
    /// ranges, then the service entry that switches to them in one update, then the removal
    /// of the ranges it no longer allows (`old_allow`, those of the generation it replaces).
    fn write(
        &mut self,
        plan: &mut Plan,
        listener: Listener,
        applied: &AppliedService,
        old_allow: &[Cidr],
    ) {
        let allow = &applied.spec.allow;
        for (index, b) in applied.backends.iter().enumerate() {
            let key = BackendKey {
                service_id: applied.id,
                generation: applied.generation,
                index: index as u32,
            };
            plan.ops
                .push(Op::PutBackend(key, backend_value(b.addr, b.nat, b.id)));
        }
        // The gate opens before the service answers, so its first packet gets through.
        self.ports
            .add_service(&listener, applied.backends.iter().map(|b| b.addr));
        plan.ops.extend(self.ports.flush(false));
        plan.ops.extend(
            allow
                .iter()
                .filter(|r| !old_allow.contains(r))
                .map(|r| Op::PutAllow(applied.id, *r)),
        );
        let svc = Service {
            id: applied.id,
            count: applied.backends.len() as u32,
            generation: applied.generation,
            flags: service_flags(applied.spec.balance, allow),
        };
        plan.ops.push(Op::PutService(service_key(&listener), svc));
        plan.ops.extend(
            old_allow
                .iter()
                .filter(|r| !allow.contains(r))
                .map(|r| Op::DeleteAllow(applied.id, *r)),
        );
        debug!(service = %applied.spec.name, %listener, backends = applied.backends.len(), generation = applied.generation, "planned");
    }

    /// The backend's id, and whether it is new (a draining backend that comes back keeps its
    /// id and counters).
    fn backend_id(
        &mut self,
        plan: &mut Plan,
        listener: Listener,
        addr: SocketAddrV4,
    ) -> Option<(u32, bool)> {
        if let Some(id) = self.backend_index.get(&(listener, addr)) {
            self.draining.remove(id);
            return Some((*id, false));
        }
        let id = self.backend_ids.take()?;
        plan.ops.push(Op::ZeroBackendCounters(id));
        self.backend_index.insert((listener, addr), id);
        Some((id, true))
    }

    /// Schedules the slots of `old`'s generation for deletion and marks its backends that
    /// are not in `kept` as draining.
    fn retire(&mut self, old: &AppliedService, kept: &[AppliedBackend], now: Instant) {
        let slots = (0..old.backends.len() as u32)
            .map(|index| BackendKey {
                service_id: old.id,
                generation: old.generation,
                index,
            })
            .collect();
        self.pending_deletes.push_back((now + GRACE, slots));
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

    /// `balance leastconn`: the live flows of each backend of a leastconn service, as the
    /// sweep counted them (`live`, by backend id; none counted is zero), for `LB_BE_LIVE`.
    /// Between sweeps the data plane counts flows up as it creates them and off as packets
    /// close them; this recount is how expiry and evictions come off, and it corrects what
    /// the programs miss (a flow opened while the sweep reads the table counts from the
    /// next sweep on).
    pub fn live_counts(&self, live: &BTreeMap<u32, u64>) -> Vec<Op> {
        self.services
            .values()
            .filter(|s| s.spec.balance == Balance::LeastConn)
            .flat_map(|s| &s.backends)
            .map(|b| Op::SetBackendLive(b.id, live.get(&b.id).copied().unwrap_or(0)))
            .collect()
    }

    /// Housekeeping: deletes old generations past their grace, and frees the ids of draining
    /// backends and removed services that no live flow uses any more.
    pub fn tick(
        &mut self,
        now: Instant,
        in_use: &BTreeSet<u32>,
        services_in_use: &BTreeSet<u32>,
    ) -> Vec<Op> {
        let mut ops = Vec::new();
        while self.pending_deletes.front().is_some_and(|(t, _)| *t <= now) {
            let (_, keys) = self.pending_deletes.pop_front().expect("checked");
            ops.extend(keys.into_iter().map(Op::DeleteBackend));
        }
        let (index, backend_ids) = (&mut self.backend_index, &mut self.backend_ids);
        self.draining.retain(|id, d| {
            let keep = in_use.contains(id);
            if !keep {
                index.remove(&(d.listener, d.addr));
                backend_ids.release(*id);
            }
            keep
        });
        let service_ids = &mut self.service_ids;
        self.retired_services.retain(|id| {
            let keep = services_in_use.contains(id);
            if !keep {
                service_ids.release(*id);
            }
            keep
        });
        ops
    }
}

#[cfg(test)]
mod tests;
