//! Per-packet cost of `lb_xdp` and `lb_tc` by BPF_PROG_TEST_RUN beside no-op programs, with small
//! tables and at scale, and frames per second of live XDP frames redirected over a veth.
//!
//! The kernel runs a repeated test on one buffer, so a program that rewrites the packet sees its
//! own output from the second repeat on. Every `lb` case therefore runs one packet per call
//! (`repeat = 1`, a fresh copy each time) and takes the kernel's duration of that call; the
//! no-op floor is measured the same way, so the harness's own cost is in both. Only programs
//! that leave the packet alone also get the kernel's repeat loop, as a hot-cache reference.
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    process::Command,
    time::Instant,
};

use aya::{
    maps::Array,
    programs::{SchedClassifier, TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
};
use lb_common::{
    Backend, BackendKey, Config, FLOW_F_REPLY, Flow, FlowKey, SVC_F_LEAST_CONN, Service, ServiceKey,
};
use lb_tests::{
    netns::{FibNs, in_netns},
    packets::{self, Pkt, TCP_ACK, TCP_PSH, TCP_SYN},
};
use lb_user::{
    dataplane::{
        Dataplane,
        fast_dns::FastRecords,
        ifaces,
        loader::{Capacities, FastDns},
    },
    dns::zone::{Records, Zone},
    services::{Balance, Desired, Listener, Protocol, ServiceSpec},
};
use serde_json::json;

use super::{
    Effort,
    report::{Report, Spread, Table},
};

const NS: &str = "lbb-pkt";
use lb_tests::packets::verdict::{TC_ACT_OK, TC_ACT_REDIRECT, XDP_PASS, XDP_REDIRECT, XDP_TX};

/// The scale run's tables.
const SCALE_SERVICES: u32 = 10_000;
const SCALE_BACKENDS: u32 = 100;
const SCALE_FLOWS: u32 = 1_000_000;

fn sa(s: &str) -> SocketAddrV4 {
    s.parse().expect("address literal")
}

/// The namespace of `tests/prog_test_run.rs`, plus the veth pair `bb0`/`bb1` for live frames.
fn env() -> FibNs {
    FibNs::new(
        NS,
        &[
            "link add bb0 type veth peer name bb1",
            "link set bb0 up",
            "link set bb1 up",
        ],
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hook {
    Xdp,
    Tc,
}

impl Hook {
    fn name(self) -> &'static str {
        match self {
            Hook::Xdp => "XDP",
            Hook::Tc => "TC",
        }
    }
    fn lb(self) -> &'static str {
        match self {
            Hook::Xdp => "lb_xdp",
            Hook::Tc => "lb_tc",
        }
    }
    fn noop(self) -> &'static str {
        match self {
            Hook::Xdp => "bench_noop",
            Hook::Tc => "bench_tc_noop",
        }
    }
    fn forwarded(self) -> u32 {
        match self {
            Hook::Xdp => XDP_REDIRECT,
            Hook::Tc => TC_ACT_REDIRECT,
        }
    }
    fn passed(self) -> u32 {
        match self {
            Hook::Xdp => XDP_PASS,
            Hook::Tc => TC_ACT_OK,
        }
    }
}

fn verdict_name(hook: Hook, v: u32) -> String {
    match (hook, v) {
        (Hook::Xdp, 0) => "ABORTED".into(),
        (Hook::Xdp, 1) => "DROP".into(),
        (Hook::Xdp, 2) => "PASS".into(),
        (Hook::Xdp, 3) => "TX".into(),
        (Hook::Xdp, 4) => "REDIRECT".into(),
        (Hook::Tc, 0) => "OK".into(),
        (Hook::Tc, 2) => "SHOT".into(),
        (Hook::Tc, 7) => "REDIRECT".into(),
        (_, v) => format!("verdict {v}"),
    }
}

/// The data plane as the daemon loads it (unpinned), with the benchmark's reference programs
/// loaded beside it.
struct Plane {
    dp: Dataplane,
}

impl Plane {
    /// Loads the object at `caps`; `setup` writes its tables.
    fn load(caps: Capacities, dns: Option<FastDns>, setup: impl FnOnce(&mut Dataplane)) -> Self {
        let mut dp = Dataplane::load_with_dns(caps, None, dns).expect("load the data plane");
        for name in ["bench_noop", "bench_redirect", "bench_drop"] {
            let p: &mut Xdp = dp.ebpf.program_mut(name).unwrap().try_into().unwrap();
            p.load()
                .unwrap_or_else(|e| panic!("verifier refuses {name}: {e}"));
        }
        let p: &mut SchedClassifier = dp
            .ebpf
            .program_mut("bench_tc_noop")
            .unwrap()
            .try_into()
            .unwrap();
        p.load()
            .unwrap_or_else(|e| panic!("verifier refuses bench_tc_noop: {e}"));
        dp.maps.write_config(&Config::default()).unwrap();
        dp.maps
            .write_local_addrs(&ifaces::ipv4_addresses())
            .unwrap();
        // XDP forwards on its own only between trusted interfaces; a test run's ingress is lo.
        let list = ifaces::list();
        for name in ["lo", "up0", "cali0"] {
            dp.maps.xdp_tx.insert(list[name].index, 1, 0).unwrap();
        }
        dp.maps.bump_route_gen().unwrap();
        setup(&mut dp);
        Self { dp }
    }

    /// One BPF_PROG_TEST_RUN: (verdict, kernel-reported ns per repeat).
    fn run(&self, prog: &str, data: &[u8], repeat: u32) -> (u32, u64) {
        let opts = TestRunOptions {
            data_in: Some(data),
            repeat,
            ..TestRunOptions::new()
        };
        let p = self.dp.ebpf.program(prog).expect("program in the object");
        let res = if let Ok(x) = <&Xdp>::try_from(p) {
            x.test_run(opts)
        } else {
            <&SchedClassifier>::try_from(p)
                .expect("XDP or TC program")
                .test_run(opts)
        }
        .unwrap_or_else(|e| panic!("{prog} test run: {e}"));
        (res.return_value, res.duration.as_nanos() as u64)
    }

    /// Removes the flow `key` opened and its reply entry, so the next packet opens it anew.
    fn forget(&mut self, key: &FlowKey) {
        let flows = &mut self.dp.maps.flows;
        if let Ok(f) = flows.get(key, 0) {
            let _ = flows.remove(&FlowKey::peer_of(&f, key.proto));
            let _ = flows.remove(key);
        }
    }
}

fn key(p: &Pkt) -> FlowKey {
    p.flow_key()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Case {
    Noop,
    NewFlow,
    NewFlowLeastConn,
    Established,
    Reply,
    Udp,
    NotService,
    DnsAnswer,
    DnsToServer,
}

impl Case {
    const ALL: [Case; 7] = [
        Case::Noop,
        Case::NewFlow,
        Case::NewFlowLeastConn,
        Case::Established,
        Case::Reply,
        Case::Udp,
        Case::NotService,
    ];
    fn label(self) -> &'static str {
        match self {
            Case::Noop => "no-op program (floor)",
            Case::NewFlow => "new TCP flow (SYN)",
            Case::NewFlowLeastConn => "new TCP flow, leastconn (SYN)",
            Case::Established => "established TCP flow",
            Case::Reply => "reply (backend → client)",
            Case::Udp => "UDP datagram, known flow",
            Case::NotService => "not a service (passed)",
            Case::DnsAnswer => "DNS A query, answered in place (3 addresses)",
            Case::DnsToServer => "DNS A query for a name not held (passed to the server)",
        }
    }
}

/// What one case measured: per-run medians of the per-call durations, and the verdicts seen.
struct Measured {
    per_call: Spread,
    /// Per run, this case's median over the median of the no-op calls interleaved with it
    /// (one before each of its calls, on the same bytes): drift between runs (frequency,
    /// caches, a noisy neighbour) moves both, so the ratio is steadier than either figure.
    paired_ratio: Option<Spread>,
    hot_loop: Option<Spread>,
    verdicts: BTreeMap<String, usize>,
    expected: String,
}

/// The packets of each case for a service on `port` (TCP and UDP) of the agent 10.0.0.1.
struct Packets {
    tcp_port: u16,
    udp_port: u16,
    /// A TCP service with `balance leastconn` over 8 or more backends.
    leastconn_port: u16,
}

impl Packets {
    fn syn(&self, port: u16, i: usize) -> Pkt {
        // Many client ports and addresses, as many clients would send.
        // Not 10.0.0.2, whose established flows the other cases use.
        let client = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 3), 1024 + (i % 60_000) as u16);
        Pkt::tcp(
            client,
            SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), port),
            TCP_SYN,
        )
    }
    fn established(&self) -> Pkt {
        let mut p = Pkt::tcp(
            sa("10.0.0.2:33333"),
            SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), self.tcp_port),
            TCP_ACK | TCP_PSH,
        );
        p.payload = vec![0x61; 64];
        p
    }
    fn udp(&self) -> Pkt {
        let mut p = Pkt::udp(
            sa("10.0.0.2:5353"),
            SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), self.udp_port),
        );
        p.payload = vec![0x62; 64];
        p
    }
    fn not_service(&self) -> Pkt {
        let mut p = Pkt::tcp(sa("10.0.0.2:33334"), sa("10.0.0.1:9999"), TCP_ACK | TCP_PSH);
        p.payload = vec![0x63; 64];
        p
    }
}

fn measure(plane: &mut Plane, hook: Hook, case: Case, pk: &Packets, effort: &Effort) -> Measured {
    let est = pk.established();
    // Established flows exist before the measurement: their SYN (or first datagram) went first.
    let opened = Pkt::tcp(est.src, est.dst, TCP_SYN);
    plane.forget(&key(&opened));
    plane.run(hook.lb(), &opened.bytes(), 1);
    let udp = pk.udp();
    plane.forget(&key(&udp));
    plane.run(hook.lb(), &udp.bytes(), 1);
    let fwd = plane
        .dp
        .maps
        .flows
        .get(&key(&opened), 0)
        .expect("the SYN opened a flow");
    let reply = {
        let mut p = Pkt::tcp(
            SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(fwd.new_dst)),
                u16::from_be(fwd.new_dport),
            ),
            SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(fwd.new_src)),
                u16::from_be(fwd.new_sport),
            ),
            TCP_ACK | TCP_PSH,
        );
        p.payload = vec![0x64; 64];
        p
    };
    let (prog, fixed, expected): (&str, Option<Vec<u8>>, u32) = match case {
        Case::Noop => (hook.noop(), Some(est.bytes()), hook.passed()),
        Case::NewFlow | Case::NewFlowLeastConn => (hook.lb(), None, hook.forwarded()),
        Case::Established => (hook.lb(), Some(est.bytes()), hook.forwarded()),
        Case::Reply => (hook.lb(), Some(reply.bytes()), hook.forwarded()),
        Case::Udp => (hook.lb(), Some(udp.bytes()), hook.forwarded()),
        Case::NotService => (hook.lb(), Some(pk.not_service().bytes()), hook.passed()),
        Case::DnsAnswer | Case::DnsToServer => unreachable!("measured by dns_cases"),
    };
    let paired = case != Case::Noop;
    let syn_port = if case == Case::NewFlowLeastConn {
        pk.leastconn_port
    } else {
        pk.tcp_port
    };
    let mut n = 0usize;
    let mut timed = Timed::default();
    for _ in 0..effort.runs {
        timed.run(
            plane,
            hook,
            prog,
            paired,
            effort.calls,
            |plane| match &fixed {
                Some(b) => b.clone(),
                None => {
                    // The previous SYN's flow goes first (untimed): the next SYN must find
                    // the table as that one did.
                    if n > 0 {
                        plane.forget(&key(&pk.syn(syn_port, n - 1)));
                    }
                    n += 1;
                    pk.syn(syn_port, n - 1).bytes()
                }
            },
        );
    }
    if fixed.is_none() && n > 0 {
        plane.forget(&key(&pk.syn(syn_port, n - 1)));
    }
    // The kernel's own loop is valid only where the program leaves the packet as it found it.
    let hot_loop = match (case, &fixed) {
        (Case::Noop | Case::NotService, Some(bytes)) => {
            let v: Vec<f64> = (0..effort.runs)
                .map(|_| plane.run(prog, bytes, effort.repeat).1 as f64)
                .collect();
            Some(Spread::of(&v))
        }
        _ => None,
    };
    timed.measured(paired, hot_loop, verdict_name(hook, expected))
}

/// Per-call timings of one case over runs: each run's median duration, and its median over
/// the no-op calls interleaved with it.
#[derive(Default)]
struct Timed {
    run_medians: Vec<f64>,
    run_ratios: Vec<f64>,
    verdicts: BTreeMap<String, usize>,
}

impl Timed {
    /// One run of `calls` calls of `prog`, each on the bytes `next` builds (untimed), each
    /// after the no-op program on the same bytes when `paired`.
    fn run(
        &mut self,
        plane: &mut Plane,
        hook: Hook,
        prog: &str,
        paired: bool,
        calls: usize,
        mut next: impl FnMut(&mut Plane) -> Vec<u8>,
    ) {
        let mut samples = Vec::with_capacity(calls);
        let mut floors = Vec::with_capacity(calls);
        for _ in 0..calls {
            let bytes = next(plane);
            if paired {
                floors.push(plane.run(hook.noop(), &bytes, 1).1 as f64);
            }
            let (v, ns) = plane.run(prog, &bytes, 1);
            *self.verdicts.entry(verdict_name(hook, v)).or_insert(0) += 1;
            samples.push(ns as f64);
        }
        samples.sort_by(f64::total_cmp);
        let median = super::report::median_sorted(&samples);
        self.run_medians.push(median);
        if paired {
            floors.sort_by(f64::total_cmp);
            self.run_ratios
                .push(median / super::report::median_sorted(&floors).max(1.0));
        }
    }

    fn measured(self, paired: bool, hot_loop: Option<Spread>, expected: String) -> Measured {
        Measured {
            per_call: Spread::of(&self.run_medians),
            paired_ratio: paired.then(|| Spread::of(&self.run_ratios)),
            hot_loop,
            verdicts: self.verdicts,
            expected,
        }
    }
}

/// The DNS fast path's port and its names: `DNS_NAMES` hold three addresses each.
const DNS_PORT: u16 = 53;
const DNS_NAMES: usize = 1_000;

/// A standard A query for `name` with an EDNS0 OPT record (as dig and dnsperf send), from the
/// client to the agent's DNS port.
fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut p = Pkt::udp(
        sa("10.0.0.2:41000"),
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), DNS_PORT),
    );
    p.payload = packets::dns_query(id, name, 1, Some((0, &[])));
    p.bytes()
}

/// The XDP program with the DNS fast path on (`--dns-fast-path`), `DNS_NAMES` names in
/// `LB_DNS_A` as the daemon writes them: a query answered in place, and one for a name the map
/// does not hold, which goes to the userspace server. A plane of its own, so that the other
/// cases run the program as it is built without the fast path.
fn dns_cases(effort: &Effort) -> Vec<(Hook, Case, Measured)> {
    let dns = FastDns {
        addr: Some(Ipv4Addr::new(10, 0, 0, 1)),
        port: DNS_PORT,
        ttl: 5,
    };
    let name = |i: usize| format!("app{i:04}.marathon.mesos");
    let mut plane = Plane::load(Capacities::default(), Some(dns), |dp| {
        let mut zone = Zone {
            domain: "mesos".into(),
            ..Zone::default()
        };
        for i in 0..DNS_NAMES {
            let a = (1..=3)
                .map(|t| Ipv4Addr::new(192, 168, (i / 250) as u8, (i % 250) as u8 + t))
                .collect();
            zone.names.insert(name(i), Records { a, srv: vec![] });
        }
        let mut fast = FastRecords::adopt(&dp.maps);
        fast.sync(&mut dp.maps, &zone).expect("write LB_DNS_A");
    });
    let mut out = Vec::new();
    for (case, expected) in [(Case::DnsAnswer, XDP_TX), (Case::DnsToServer, XDP_PASS)] {
        let mut timed = Timed::default();
        let mut i = 0usize;
        for _ in 0..effort.runs {
            timed.run(&mut plane, Hook::Xdp, "lb_xdp", true, effort.calls, |_| {
                i += 1;
                // Cycling through the names, as dnsperf does.
                let asked = match case {
                    Case::DnsAnswer => name(i % DNS_NAMES),
                    _ => format!("gone{:04}.marathon.mesos", i % DNS_NAMES),
                };
                dns_query(i as u16, &asked)
            });
        }
        out.push((
            Hook::Xdp,
            case,
            timed.measured(true, None, verdict_name(Hook::Xdp, expected)),
        ));
    }
    out
}

/// A small table set through the daemon's own `Dataplane::apply`: what `prog_test_run.rs` uses.
fn small_plane() -> Plane {
    let svc = |port, protocol| ServiceSpec {
        name: format!("bench_{port}"),
        listener: Listener {
            bind: None,
            port,
            protocol,
        },
        balance: Balance::RoundRobin,
        app_id: None,
        port_index: None,
        backends: vec![sa("192.168.1.11:80")],
        allow: Vec::new(),
    };
    // leastconn compares up to 8 backends: the routed task on 8 ports.
    let leastconn = ServiceSpec {
        balance: Balance::LeastConn,
        backends: (80..88)
            .map(|port| SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 11), port))
            .collect(),
        ..svc(10002, Protocol::Tcp)
    };
    Plane::load(Capacities::default(), None, |dp| {
        let services = vec![
            svc(10000, Protocol::Tcp),
            svc(10001, Protocol::Udp),
            leastconn,
        ];
        dp.apply(&Desired { services }).unwrap();
    })
}

/// 10,000 TCP services of 100 backends each and one UDP service, written straight into the maps
/// (as the planner lays them out), and one million established flows (two entries each).
fn scale_plane(report_setup: &mut Vec<(String, f64)>) -> (Plane, Packets) {
    let caps = Capacities {
        services: 16_384,
        backend_slots: 1_048_576 + 4_096,
        backend_ids: 1_048_576 + 4_096,
        flow_entries: 2 * SCALE_FLOWS + 262_144,
        ..Capacities::default()
    };
    let t = Instant::now();
    let mut p = Plane::load(caps, None, |_| {});
    report_setup.push((
        "load with raised capacities".into(),
        t.elapsed().as_secs_f64(),
    ));
    let t = Instant::now();
    {
        let services = &mut p.dp.maps.services;
        for s in 0..=SCALE_SERVICES {
            let (port, proto) = if s == SCALE_SERVICES {
                (10_000u16, 17u8)
            } else {
                (10_000 + s as u16, 6u8)
            };
            let count = if s == SCALE_SERVICES {
                1
            } else {
                SCALE_BACKENDS
            };
            services
                .insert(
                    ServiceKey {
                        addr: 0,
                        port: port.to_be(),
                        proto,
                        _pad: 0,
                    },
                    Service {
                        id: s,
                        count,
                        generation: 1,
                        // The second TCP service is the leastconn case's.
                        flags: if s == 1 { SVC_F_LEAST_CONN } else { 0 },
                    },
                    0,
                )
                .unwrap();
        }
    }
    {
        let nat = u32::from(Ipv4Addr::new(10, 0, 0, 1)).to_be();
        let backends = &mut p.dp.maps.backends;
        let mut id = 0;
        for s in 0..=SCALE_SERVICES {
            let count = if s == SCALE_SERVICES {
                1
            } else {
                SCALE_BACKENDS
            };
            for i in 0..count {
                // Every backend of the measured services is the routed task (on its own port),
                // so their packets take the same FIB path as in the small run.
                let addr = if s <= 1 || s == SCALE_SERVICES {
                    Ipv4Addr::new(192, 168, 1, 11)
                } else {
                    Ipv4Addr::new(172, 16, (s >> 8) as u8, s as u8)
                };
                backends
                    .insert(
                        BackendKey {
                            service_id: s,
                            generation: 1,
                            index: i,
                        },
                        Backend {
                            addr: u32::from(addr).to_be(),
                            nat_addr: nat,
                            port: (8000 + i as u16).to_be(),
                            _pad: 0,
                            id,
                        },
                        0,
                    )
                    .unwrap();
                id += 1;
            }
        }
    }
    {
        // The port gate, as the planner would open it for these services.
        let gate = &mut p.dp.maps.ports;
        let mut words = vec![0u64; lb_common::PORT_GATE_WORDS as usize];
        let mut add = |kind, proto, port| {
            let (w, bit) = lb_common::port_gate_slot(kind, proto, port);
            words[w as usize] |= bit;
        };
        for s in 0..SCALE_SERVICES {
            add(lb_common::PORT_SERVICE, 6, 10_000 + s as u16);
        }
        add(lb_common::PORT_SERVICE, 17, 10_000);
        for i in 0..SCALE_BACKENDS {
            add(lb_common::PORT_BACKEND, 6, 8000 + i as u16);
            add(lb_common::PORT_BACKEND, 17, 8000 + i as u16);
        }
        for (w, v) in words.iter().enumerate() {
            if *v != 0 {
                gate.set(w as u32, *v, 0).unwrap();
            }
        }
    }
    report_setup.push((
        format!(
            "write {} services, {} backends",
            SCALE_SERVICES + 1,
            SCALE_SERVICES * SCALE_BACKENDS + 1
        ),
        t.elapsed().as_secs_f64(),
    ));
    let t = Instant::now();
    let now = lb_user::dataplane::monotonic_ns();
    let nat = u32::from(Ipv4Addr::new(10, 0, 0, 1)).to_be();
    for i in 0..SCALE_FLOWS {
        // Clients 10.128.0.0/9, the others' backends (never the measured task), NAT ports unique.
        let client = u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i;
        let s = 1 + i % (SCALE_SERVICES - 1);
        let b = i % SCALE_BACKENDS;
        let baddr = u32::from(Ipv4Addr::new(172, 16, (s >> 8) as u8, s as u8)).to_be();
        let fkey = FlowKey {
            src: client.to_be(),
            dst: nat,
            sport: (40_000 + (i % 20_000) as u16).to_be(),
            dport: (10_000 + s as u16).to_be(),
            proto: 6,
            _pad: [0; 3],
        };
        let fwd = Flow {
            new_src: nat,
            new_dst: baddr,
            new_sport: (20_000 + (i / SCALE_BACKENDS % 11_000) as u16).to_be(),
            new_dport: (8000 + b as u16).to_be(),
            flags: 0,
            service_id: s,
            backend_id: s * SCALE_BACKENDS + b,
            created_ns: now,
            last_seen_ns: now,
            ..Flow::default()
        };
        let reply = Flow {
            new_src: fkey.dst,
            new_dst: fkey.src,
            new_sport: fkey.dport,
            new_dport: fkey.sport,
            flags: FLOW_F_REPLY,
            ..fwd
        };
        let rkey = FlowKey::peer_of(&fwd, 6);
        p.dp.maps.flows.insert(fkey, fwd, 0).unwrap();
        p.dp.maps.flows.insert(rkey, reply, 0).unwrap();
    }
    let entries = p.dp.maps.flows.keys().count();
    report_setup.push((
        format!("insert {SCALE_FLOWS} flows ({entries} entries held after)"),
        t.elapsed().as_secs_f64(),
    ));
    (
        p,
        Packets {
            tcp_port: 10_000,
            udp_port: 10_000,
            leastconn_port: 10_001,
        },
    )
}

fn table_for(title: &str, method: &str, results: &[(Hook, Case, Measured)]) -> Table {
    let mut t = Table::new(
        title,
        &[
            "hook",
            "case",
            "ns/packet, one per call",
            "× no-op",
            "kernel loop ns/packet",
            "verdicts",
        ],
        method,
    );
    for hook in [Hook::Xdp, Hook::Tc] {
        let floor = results
            .iter()
            .find(|(h, c, _)| *h == hook && *c == Case::Noop)
            .map(|(_, _, m)| m.per_call.median);
        for (h, c, m) in results.iter().filter(|(h, ..)| *h == hook) {
            let ratio = match &m.paired_ratio {
                Some(r) => Some(r.median),
                None => floor.map(|f| m.per_call.median / f),
            };
            let unexpected: usize = m
                .verdicts
                .iter()
                .filter(|(v, _)| **v != m.expected)
                .map(|(_, n)| n)
                .sum();
            let verdicts = m
                .verdicts
                .iter()
                .map(|(v, n)| format!("{v}×{n}"))
                .collect::<Vec<_>>()
                .join(", ");
            let verdicts = if unexpected > 0 {
                format!("{verdicts} (**expected {}**)", m.expected)
            } else {
                verdicts
            };
            t.row(
                vec![
                    h.name().into(),
                    c.label().into(),
                    m.per_call.show(0),
                    match &m.paired_ratio {
                        Some(r) => r.show(2),
                        None => ratio.map_or("—".into(), |r| format!("{r:.2}")),
                    },
                    m.hot_loop.map_or("—".into(), |s| s.show(1)),
                    verdicts,
                ],
                json!({
                    "hook": h.name(), "case": c.label(), "ns_per_packet": m.per_call.json(),
                    "ratio_to_noop": ratio, "paired_ratio_to_noop": m.paired_ratio.as_ref().map(|r| r.json()), "kernel_loop_ns": m.hot_loop.map(|s| s.json()),
                    "verdicts": m.verdicts, "expected_verdict": m.expected,
                }),
            );
        }
    }
    t
}

/// Frames `bench_drop` discarded on `bb1`: those the redirect really delivered.
fn bb1_xdp_drops() -> u64 {
    let out = Command::new("ip")
        .args(["netns", "exec", NS, "ethtool", "-S", "bb1"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.lines()
        .filter_map(|l| l.trim().split_once(':'))
        .filter(|(k, _)| k.starts_with("rx_queue_") && k.ends_with("_xdp_drops"))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

/// Frames per second of `bench_redirect` fed by BPF_F_TEST_XDP_LIVE_FRAMES: the kernel injects
/// frames as if received, the program redirects them to veth `bb0`, whose peer drops them in XDP.
fn live_frames(plane: &mut Plane, effort: &Effort) -> Table {
    let list = ifaces::list();
    {
        let mut m: Array<_, u32> =
            Array::try_from(plane.dp.ebpf.map_mut("BENCH_IFINDEX").unwrap()).unwrap();
        m.set(0, list["bb0"].index, 0).unwrap();
    }
    let drop: &mut Xdp = plane
        .dp
        .ebpf
        .program_mut("bench_drop")
        .unwrap()
        .try_into()
        .unwrap();
    drop.attach("bb1", XdpMode::Driver)
        .expect("attach bench_drop to bb1 (native veth XDP)");
    let frame = Pkt::udp(sa("10.0.0.2:5353"), sa("10.0.0.1:10001")).bytes();
    let mut t = Table::new(
        "Live XDP frames (BPF_F_TEST_XDP_LIVE_FRAMES, batch 64)",
        &[
            "program",
            "Mpps (kernel time)",
            "Mpps (wall clock)",
            "frames per run",
            "frames bb1's XDP dropped (all runs)",
        ],
        "The kernel injects each frame as if received on lo and runs the program in a loop; \
         `bench_redirect` sends them over veth `bb0` to `bb1`, where `bench_drop` discards them \
         in XDP, so the figure covers redirect, veth transmit and the peer's NAPI poll, not the \
         stack. `bench_drop` alone shows the injection's own ceiling. Kernel time is the \
         duration the kernel reports for the loop; wall clock includes the system call. \
         lb_xdp is not run this way: live frames are recycled without being reset, so a \
         program that rewrites them would see its own output. The last column counts every \
         frame bb1's XDP dropped during the runs (delivered frames, plus any the stack itself \
         sent over the link), so a redirect that fails cannot pass for speed.",
    );
    for prog in ["bench_drop", "bench_redirect"] {
        let mut kernel = Vec::new();
        let mut wall = Vec::new();
        let before = bb1_xdp_drops();
        for _ in 0..effort.runs {
            let p: &Xdp = plane.dp.ebpf.program(prog).unwrap().try_into().unwrap();
            let start = Instant::now();
            let res = p
                .test_run(TestRunOptions {
                    data_in: Some(&frame),
                    repeat: effort.live_frames,
                    attrs: TestRunAttrs::new().xdp_live_frames(64),
                    ..TestRunOptions::new()
                })
                .unwrap_or_else(|e| panic!("{prog} live frames: {e}"));
            let secs = start.elapsed().as_secs_f64();
            kernel.push(1e3 / res.duration.as_nanos().max(1) as f64);
            wall.push(effort.live_frames as f64 / secs / 1e6);
        }
        let (k, w) = (Spread::of(&kernel), Spread::of(&wall));
        let injected = effort.live_frames as u64 * effort.runs as u64;
        let arrived = bb1_xdp_drops().saturating_sub(before);
        t.row(
            vec![
                prog.into(),
                k.show(2),
                w.show(2),
                effort.live_frames.to_string(),
                format!("{arrived} of {injected}"),
            ],
            json!({"program": prog, "mpps_kernel": k.json(), "mpps_wall": w.json(),
                   "frames": effort.live_frames, "runs": effort.runs,
                   "dropped_by_bb1": arrived, "injected": injected}),
        );
    }
    t
}

const PER_CALL_METHOD: &str = "One packet per BPF_PROG_TEST_RUN call (repeat = 1, so every call starts from the \
     packet as built), figure = the kernel-reported duration of the call; median over the calls of a run, then \
     median (min–max) over runs. The kernel times only the program run and its own bracket (two clock reads, \
     bottom halves off/on), which the no-op program pays too. `× no-op` compares like with like: before each \
     call of a case the no-op program runs on the same bytes, and the figure is the median over runs of the \
     case's median divided by those no-op calls' median (min–max over runs), so drift between runs cancels. New flows: \
     each SYN opens a flow (service and backend lookup, NAT port claim, two inserts) and the flow is deleted \
     again, untimed, before the next, so every SYN is new and the table stays the same size. Established, \
     reply and UDP packets hit a flow opened before the run. XDP redirects (lo, up0, cali0 trusted) and TC \
     redirects with the FIB's neighbour, as on an agent. `kernel loop` = the kernel's own repeat loop \
     (hot caches), only where the program leaves the packet unchanged.";

pub fn run(effort: &Effort, report: &mut Report) {
    let _env = env();
    let e = *effort;
    let (small, scale, live, setup) = in_netns(NS, move || {
        let mut plane = small_plane();
        let pk = Packets {
            tcp_port: 10_000,
            udp_port: 10_001,
            leastconn_port: 10_002,
        };
        let mut small = Vec::new();
        for hook in [Hook::Xdp, Hook::Tc] {
            for case in Case::ALL {
                let m = measure(&mut plane, hook, case, &pk, &e);
                small.push((hook, case, m));
            }
        }
        small.extend(dns_cases(&e));
        let live = live_frames(&mut plane, &e);
        drop(plane);
        let mut setup = Vec::new();
        let (mut big, pk) = scale_plane(&mut setup);
        let mut scale = Vec::new();
        for hook in [Hook::Xdp, Hook::Tc] {
            for case in Case::ALL {
                let m = measure(&mut big, hook, case, &pk, &e);
                scale.push((hook, case, m));
            }
        }
        (small, scale, live, setup)
    });
    let calls = e.runs * e.calls;
    report.tables.push(table_for(
        "Per packet, small tables (2 services, 1 backend each, a handful of flows)",
        &format!("{PER_CALL_METHOD} Runs: {} × {} calls ({calls} packets per case); kernel loop: {} repeats per run.", e.runs, e.calls, e.repeat),
        &small,
    ));
    report.tables.push(table_for(
        &format!("Per packet at scale ({SCALE_SERVICES} services × {SCALE_BACKENDS} backends, {SCALE_FLOWS} tracked flows)"),
        &format!(
            "Same method and packets as the small run, against maps with raised capacities holding {SCALE_SERVICES} \
             TCP services of {SCALE_BACKENDS} backends and one UDP service, and {SCALE_FLOWS} established flows \
             (both directions, {} entries) inserted from userspace before measuring. Set-up times: {}.",
            2 * SCALE_FLOWS,
            setup.iter().map(|(w, s)| format!("{w} {s:.1} s")).collect::<Vec<_>>().join("; ")
        ),
        &scale,
    ));
    report.tables.push(live);
    // Targets: an established flow under 3× the no-op program, other traffic under 1.5×.
    let targets = [
        (Case::Established, 3.0, "established flow"),
        (Case::NotService, 1.5, "not a service"),
    ];
    for (label, results) in [("small tables", &small), ("at scale", &scale)] {
        for hook in [Hook::Xdp, Hook::Tc] {
            // leastconn's new flow against round-robin's, each over its paired no-op.
            let ratio = |case: Case| {
                results
                    .iter()
                    .find(|(h, c, _)| *h == hook && *c == case)
                    .and_then(|(_, _, m)| m.paired_ratio.as_ref())
                    .map(|r| r.median)
            };
            if let (Some(lc), Some(rr)) = (ratio(Case::NewFlowLeastConn), ratio(Case::NewFlow)) {
                report.targets.push(super::report::Target {
                    what: format!(
                        "new flow, leastconn < 1.5× round-robin's ({}, {label})",
                        hook.name()
                    ),
                    got: format!("{:.2}× ({lc:.2}× vs {rr:.2}× no-op)", lc / rr),
                    met: Some(lc / rr < 1.5),
                });
            }
            for (case, limit, what) in targets {
                let Some((_, _, m)) = results.iter().find(|(h, c, _)| *h == hook && *c == case)
                else {
                    continue;
                };
                let Some(r) = &m.paired_ratio else { continue };
                report.targets.push(super::report::Target {
                    what: format!("{what} < {limit}× no-op ({}, {label})", hook.name()),
                    got: format!(
                        "{:.2}× ({:.2}–{:.2} over runs; {:.0} ns)",
                        r.median, r.min, r.max, m.per_call.median
                    ),
                    met: Some(r.median < limit),
                });
            }
        }
    }
}
