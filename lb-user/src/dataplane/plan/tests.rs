//! The planner against a fake of the maps: ids, generations, draining, grace, adoption.
use std::collections::{BTreeMap, HashMap as StdHashMap};

use anyhow::Result;
use lb_common::{Flow, FlowKey};

use super::*;
use crate::{
    dataplane::{convert::be_ip, maps::execute},
    services::{Cidr, Protocol},
};

/// The maps as plain collections: what `Maps` does to the kernel's, without a kernel.
#[derive(Default)]
struct Fake {
    services: BTreeMap<ServiceKey, Service>,
    backends: StdHashMap<BackendKey, Backend>,
    ports: BTreeMap<u32, u64>,
    zeroed: Vec<Op>,
    flows: Vec<(FlowKey, Flow)>,
    acl: BTreeSet<(u32, Cidr)>,
    live: BTreeMap<u32, u64>,
}

impl LbMaps for Fake {
    fn run(&mut self, op: &Op) -> Result<()> {
        match op {
            Op::ZeroServiceCounters(_) | Op::ZeroBackendCounters(_) => self.zeroed.push(op.clone()),
            Op::PutBackend(k, b) => {
                self.backends.insert(*k, *b);
            }
            Op::DeleteBackend(k) => {
                self.backends.remove(k);
            }
            Op::PutPortWord(w, bits) => {
                self.ports.insert(*w, *bits);
            }
            Op::PutService(k, s) => {
                self.services.insert(*k, *s);
            }
            Op::DeleteService(k) => {
                self.services.remove(k);
            }
            Op::PutAllow(id, r) => {
                self.acl.insert((*id, *r));
            }
            Op::DeleteAllow(id, r) => {
                self.acl.remove(&(*id, *r));
            }
            Op::SetBackendLive(id, n) => {
                self.live.insert(*id, *n);
            }
        }
        Ok(())
    }
    fn services(&self) -> Vec<(ServiceKey, Service)> {
        self.services.iter().map(|(k, s)| (*k, *s)).collect()
    }
    fn backend(&self, key: &BackendKey) -> Option<Backend> {
        self.backends.get(key).copied()
    }
    fn backend_keys(&self) -> Vec<BackendKey> {
        self.backends.keys().copied().collect()
    }
    fn for_each_flow(&self, f: &mut dyn FnMut(&FlowKey, &Flow)) {
        for (k, v) in &self.flows {
            f(k, v);
        }
    }
    fn allowed(&self) -> Vec<(u32, Cidr)> {
        self.acl.iter().copied().collect()
    }
}

const NAT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

fn listener(port: u16) -> Listener {
    Listener {
        bind: None,
        port,
        protocol: Protocol::Tcp,
    }
}

fn spec(port: u16, backends: &[&str]) -> ServiceSpec {
    ServiceSpec {
        name: format!("svc_{port}"),
        listener: listener(port),
        balance: Default::default(),
        app_id: None,
        port_index: None,
        backends: backends.iter().map(|b| b.parse().unwrap()).collect(),
        allow: Vec::new(),
    }
}

fn allowing(spec: ServiceSpec, ranges: &[&str]) -> ServiceSpec {
    ServiceSpec {
        allow: Cidr::normalize(ranges.iter().map(|r| r.parse().unwrap()).collect()),
        ..spec
    }
}

/// The index of the first op matching `f`.
fn at(ops: &[Op], f: impl Fn(&Op) -> bool) -> usize {
    ops.iter()
        .position(f)
        .unwrap_or_else(|| panic!("not in {ops:?}"))
}

fn desired(specs: &[ServiceSpec]) -> Desired {
    Desired {
        services: specs.to_vec(),
    }
}

fn caps(services: u32, backend_ids: u32) -> Capacities {
    Capacities {
        services,
        backend_ids,
        ..Capacities::default()
    }
}

/// Plans `d` and runs it on `maps`.
fn apply(p: &mut Planner, maps: &mut Fake, d: &Desired, now: Instant) -> Plan {
    let plan = p.apply(d, &mut |_| NAT, now);
    execute(maps, &plan.ops).unwrap();
    plan
}

fn fresh(c: &Capacities) -> (Planner, Fake) {
    let mut maps = Fake::default();
    let (p, ops) = Planner::adopt(&maps, c, Instant::now());
    execute(&mut maps, &ops).unwrap();
    (p, maps)
}

/// The backends a service entry points at, as addresses in slot order.
fn served(maps: &Fake, port: u16) -> Vec<SocketAddrV4> {
    let svc = maps.services[&service_key(&listener(port))];
    (0..svc.count)
        .map(|index| {
            let k = BackendKey {
                service_id: svc.id,
                generation: svc.generation,
                index,
            };
            backend_addr(&maps.backends[&k])
        })
        .collect()
}

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

#[test]
fn a_new_service_is_written_backends_and_gate_first_and_its_entry_last() {
    let (mut p, mut maps) = fresh(&Capacities::default());
    let plan = apply(
        &mut p,
        &mut maps,
        &desired(&[spec(10000, &["192.168.0.2:80", "192.168.0.1:80"])]),
        Instant::now(),
    );
    assert_eq!(plan.report.added, 1);
    let ops = &plan.ops;
    assert_eq!(ops[0], Op::ZeroServiceCounters(0));
    assert!(matches!(ops.last(), Some(Op::PutService(_, s)) if s.count == 2 && s.generation == 0));
    let first_service = ops
        .iter()
        .position(|o| matches!(o, Op::PutService(..)))
        .unwrap();
    let last_backend = ops
        .iter()
        .rposition(|o| matches!(o, Op::PutBackend(..)))
        .unwrap();
    let last_port = ops
        .iter()
        .rposition(|o| matches!(o, Op::PutPortWord(..)))
        .unwrap();
    assert!(last_backend < first_service && last_port < first_service);
    // Sorted, so every instance and every restart orders the set the same way.
    assert_eq!(
        served(&maps, 10000),
        [
            "192.168.0.1:80".parse::<SocketAddrV4>().unwrap(),
            "192.168.0.2:80".parse().unwrap()
        ]
    );
    // The same state again writes nothing.
    let again = apply(
        &mut p,
        &mut maps,
        &desired(&[spec(10000, &["192.168.0.1:80", "192.168.0.2:80"])]),
        Instant::now(),
    );
    assert!(again.ops.is_empty(), "{:?}", again.ops);
    assert_eq!(again.report.unchanged, 1);
}

#[test]
fn a_changed_set_is_a_new_generation_and_the_old_goes_after_the_grace() {
    let (mut p, mut maps) = fresh(&Capacities::default());
    let t0 = Instant::now();
    apply(
        &mut p,
        &mut maps,
        &desired(&[spec(10000, &["192.168.0.1:80", "192.168.0.2:80"])]),
        t0,
    );
    let old_ids: Vec<u32> = p.services[&listener(10000)]
        .backends
        .iter()
        .map(|b| b.id)
        .collect();
    let plan = apply(
        &mut p,
        &mut maps,
        &desired(&[spec(10000, &["192.168.0.1:80", "192.168.0.3:80"])]),
        t0,
    );
    assert_eq!(plan.report.changed, 1);
    let svc = maps.services[&service_key(&listener(10000))];
    assert_eq!((svc.id, svc.generation), (0, 1));
    // The kept backend keeps its id (and counters); the new one gets a fresh id.
    let now: Vec<u32> = p.services[&listener(10000)]
        .backends
        .iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(now[0], old_ids[0]);
    assert!(!old_ids.contains(&now[1]));
    assert_eq!(
        maps.backends.len(),
        4,
        "both generations readable during the grace"
    );
    // The one that left drains while flows use it.
    assert_eq!(p.draining.keys().copied().collect::<Vec<_>>(), [old_ids[1]]);
    let in_use = BTreeSet::from([old_ids[1]]);
    let ops = p.tick(t0 + GRACE / 2, &in_use, &BTreeSet::new());
    assert!(ops.is_empty(), "still in its grace");
    execute(&mut maps, &p.tick(t0 + GRACE, &in_use, &BTreeSet::new())).unwrap();
    assert_eq!(maps.backends.len(), 2, "old generation deleted");
    assert!(p.draining.contains_key(&old_ids[1]), "its flows still run");
    p.tick(t0 + GRACE, &BTreeSet::new(), &BTreeSet::new());
    assert!(p.draining.is_empty());
    // Its id is free again, and a backend that comes back while draining keeps its id.
    apply(
        &mut p,
        &mut maps,
        &desired(&[spec(
            10000,
            &["192.168.0.1:80", "192.168.0.3:80", "192.168.0.4:80"],
        )]),
        t0,
    );
    assert!(
        p.services[&listener(10000)]
            .backends
            .iter()
            .any(|b| b.id == old_ids[1])
    );
}

#[test]
fn a_removed_service_keeps_its_id_while_its_flows_drain() {
    let (mut p, mut maps) = fresh(&Capacities::default());
    let t0 = Instant::now();
    apply(
        &mut p,
        &mut maps,
        &desired(&[spec(10000, &["192.168.0.1:80"])]),
        t0,
    );
    let plan = apply(&mut p, &mut maps, &desired(&[]), t0);
    assert_eq!(plan.report.removed, 1);
    assert!(maps.services.is_empty());
    p.tick(t0 + GRACE, &BTreeSet::from([0]), &BTreeSet::from([0]));
    apply(
        &mut p,
        &mut maps,
        &desired(&[spec(10001, &["192.168.0.2:80"])]),
        t0,
    );
    assert_eq!(
        p.services[&listener(10001)].id,
        1,
        "id 0 still counts the old flows"
    );
    p.tick(t0 + GRACE, &BTreeSet::new(), &BTreeSet::new());
    apply(
        &mut p,
        &mut maps,
        &desired(&[
            spec(10001, &["192.168.0.2:80"]),
            spec(10002, &["192.168.0.3:80"]),
        ]),
        t0,
    );
    assert_eq!(
        p.services[&listener(10002)].id,
        0,
        "freed once no flow uses it"
    );
}

#[test]
fn a_restart_adopts_ids_generations_and_draining_backends_and_rewrites_nothing() {
    let c = Capacities::default();
    let (mut p, mut maps) = fresh(&c);
    let t0 = Instant::now();
    let state = desired(&[
        spec(10000, &["192.168.0.1:80", "192.168.0.2:80"]),
        spec(10001, &["192.168.0.9:53"]),
    ]);
    apply(&mut p, &mut maps, &state, t0);
    let changed = desired(&[
        spec(10000, &["192.168.0.1:80"]),
        spec(10001, &["192.168.0.9:53"]),
    ]);
    apply(&mut p, &mut maps, &changed, t0);
    let gone = *p.draining.keys().next().unwrap();
    // A flow still on the backend that left, as the data plane would hold it.
    maps.flows.push((
        FlowKey {
            src: 1,
            dst: 0,
            sport: 1,
            dport: 10000u16.to_be(),
            proto: 6,
            _pad: [0; 3],
        },
        Flow {
            new_dst: be_ip(Ipv4Addr::new(192, 168, 0, 2)),
            new_dport: 80u16.to_be(),
            service_id: 0,
            backend_id: gone,
            ..Flow::default()
        },
    ));
    let (mut again, ops) = Planner::adopt(&maps, &c, t0);
    execute(&mut maps, &ops).unwrap();
    for (l, a) in &p.services {
        let b = &again.services[l];
        assert_eq!(
            (b.id, b.generation, &b.backends),
            (a.id, a.generation, &a.backends),
            "{l}"
        );
    }
    assert_eq!(again.draining.keys().collect::<Vec<_>>(), [&gone]);
    let plan = apply(&mut again, &mut maps, &changed, t0);
    assert!(
        plan.ops.is_empty(),
        "adopted state is applied state: {:?}",
        plan.ops
    );
    // The old generation's slots, left by the swap, go at the next tick.
    let ops = again.tick(t0, &BTreeSet::from([gone]), &BTreeSet::new());
    assert_eq!(ops.len(), 2, "{ops:?}");
}

#[test]
fn a_service_without_free_ids_is_refused_alone_and_takes_nothing() {
    let (mut p, mut maps) = fresh(&caps(8, 3));
    let plan = apply(
        &mut p,
        &mut maps,
        &desired(&[
            spec(10000, &["192.168.0.1:80", "192.168.0.2:80"]),
            spec(10001, &["192.168.1.1:80", "192.168.1.2:80"]),
        ]),
        Instant::now(),
    );
    assert_eq!(plan.report.added, 1);
    assert_eq!(plan.refused.len(), 1, "{:?}", plan.refused);
    assert!(plan.refused[0].contains("svc_10001") && plan.refused[0].contains("--max-backends"));
    assert_eq!(maps.services.len(), 1);
    // What the refused one took was given back: one id left, and a one-backend service fits.
    let plan = apply(
        &mut p,
        &mut maps,
        &desired(&[
            spec(10000, &["192.168.0.1:80", "192.168.0.2:80"]),
            spec(10002, &["192.168.2.1:80"]),
        ]),
        Instant::now(),
    );
    assert!(plan.refused.is_empty(), "{:?}", plan.refused);
    assert_eq!(p.services[&listener(10002)].id, 1);
}

#[test]
fn allowed_ranges_are_in_place_before_the_service_checks_them_and_leave_after() {
    let (mut p, mut maps) = fresh(&Capacities::default());
    let t0 = Instant::now();
    let r = |s: &str| s.parse::<Cidr>().unwrap();
    let open = spec(10000, &["192.168.0.1:80"]);
    // From open to closed: the ranges first, then the entry with the flag.
    let plan = apply(
        &mut p,
        &mut maps,
        &desired(&[allowing(open.clone(), &["10.0.0.0/8", "1.2.3.4"])]),
        t0,
    );
    let put = at(
        &plan.ops,
        |o| matches!(o, Op::PutAllow(_, c) if *c == r("1.2.3.4/32")),
    );
    let svc = at(&plan.ops, |o| matches!(o, Op::PutService(..)));
    assert!(put < svc, "{:?}", plan.ops);
    let id = p.services[&listener(10000)].id;
    assert_eq!(
        maps.acl,
        BTreeSet::from([(id, r("1.2.3.4/32")), (id, r("10.0.0.0/8"))])
    );
    assert_ne!(
        maps.services[&service_key(&listener(10000))].flags & lb_common::SVC_F_ALLOW_LIST,
        0
    );
    // The same again: nothing.
    let same = apply(
        &mut p,
        &mut maps,
        &desired(&[allowing(open.clone(), &["1.2.3.4", "10.0.0.0/8"])]),
        t0,
    );
    assert!(same.ops.is_empty(), "{:?}", same.ops);
    // One range swapped: the new one before the entry, the old one after it.
    let plan = apply(
        &mut p,
        &mut maps,
        &desired(&[allowing(open.clone(), &["10.0.0.0/8", "5.6.7.0/24"])]),
        t0,
    );
    let put = at(
        &plan.ops,
        |o| matches!(o, Op::PutAllow(_, c) if *c == r("5.6.7.0/24")),
    );
    let svc = at(&plan.ops, |o| matches!(o, Op::PutService(..)));
    let del = at(
        &plan.ops,
        |o| matches!(o, Op::DeleteAllow(_, c) if *c == r("1.2.3.4/32")),
    );
    assert!(put < svc && svc < del, "{:?}", plan.ops);
    assert!(
        !plan
            .ops
            .iter()
            .any(|o| matches!(o, Op::PutAllow(_, c) if *c == r("10.0.0.0/8")))
    );
    assert_eq!(
        maps.acl,
        BTreeSet::from([(id, r("10.0.0.0/8")), (id, r("5.6.7.0/24"))])
    );
    // A restart adopts the ranges and rewrites nothing.
    let (mut again, ops) = Planner::adopt(&maps, &Capacities::default(), t0);
    execute(&mut maps, &ops).unwrap();
    let want = desired(&[allowing(open.clone(), &["10.0.0.0/8", "5.6.7.0/24"])]);
    let plan = apply(&mut again, &mut maps, &want, t0);
    assert!(plan.ops.is_empty(), "{:?}", plan.ops);
    // Open again: the flag goes first, then the ranges.
    let plan = apply(
        &mut again,
        &mut maps,
        &desired(std::slice::from_ref(&open)),
        t0,
    );
    let svc = at(&plan.ops, |o| matches!(o, Op::PutService(..)));
    let del = at(&plan.ops, |o| matches!(o, Op::DeleteAllow(..)));
    assert!(svc < del, "{:?}", plan.ops);
    assert!(maps.acl.is_empty());
    assert_eq!(
        maps.services[&service_key(&listener(10000))].flags & lb_common::SVC_F_ALLOW_LIST,
        0
    );
}

#[test]
fn a_removed_service_takes_its_ranges_and_a_restart_clears_orphans() {
    let c = Capacities::default();
    let (mut p, mut maps) = fresh(&c);
    let t0 = Instant::now();
    let closed = allowing(spec(10000, &["192.168.0.1:80"]), &["10.0.0.0/8"]);
    apply(&mut p, &mut maps, &desired(&[closed]), t0);
    assert_eq!(maps.acl.len(), 1);
    let plan = apply(&mut p, &mut maps, &desired(&[]), t0);
    let svc = at(&plan.ops, |o| matches!(o, Op::DeleteService(..)));
    let del = at(&plan.ops, |o| matches!(o, Op::DeleteAllow(..)));
    assert!(svc < del, "{:?}", plan.ops);
    assert!(maps.acl.is_empty());
    // Ranges whose service is gone (a daemon stopped between the two writes) go at adoption,
    // so a later service given the same id does not inherit them.
    maps.acl.insert((7, "10.0.0.0/8".parse().unwrap()));
    let (_, ops) = Planner::adopt(&maps, &c, t0);
    execute(&mut maps, &ops).unwrap();
    assert!(maps.acl.is_empty(), "{:?}", maps.acl);
}

#[test]
fn leastconn_backends_get_the_swept_live_counts_and_others_nothing() {
    let c = caps(8, 16);
    let (mut p, mut maps) = fresh(&c);
    let least = ServiceSpec {
        balance: Balance::LeastConn,
        ..spec(80, &["10.1.0.1:80", "10.1.0.2:80", "10.1.0.3:80"])
    };
    let rr = spec(81, &["10.1.0.1:80"]);
    apply(&mut p, &mut maps, &desired(&[least, rr]), Instant::now());
    let ids: Vec<u32> = p.services[&listener(80)]
        .backends
        .iter()
        .map(|b| b.id)
        .collect();
    let rr_id = p.services[&listener(81)].backends[0].id;
    // The sweep found two flows on the first and five on the round-robin service's backend.
    let counted = BTreeMap::from([(ids[0], 2), (rr_id, 5)]);
    execute(&mut maps, &p.live_counts(&counted)).unwrap();
    assert_eq!(
        maps.live,
        BTreeMap::from([(ids[0], 2), (ids[1], 0), (ids[2], 0)]),
        "every leastconn backend is written, a backend without flows as zero"
    );
}
