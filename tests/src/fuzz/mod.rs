//! The differential fuzzer: drives generated and mutated packets through `lb_xdp` and `lb_tc`
//! with `BPF_PROG_TEST_RUN` and holds every answer to the reference model (`crate::model`).
//!
//! Work comes in batches. Each batch writes a fresh scenario into the maps (services, backends,
//! configuration, flows in every state), then sends packets one at a time, each through XDP,
//! TC, or XDP and then TC when XDP passes it (as on an agent). Per packet: the verdict and
//! the output bytes equal the model's (a pass is byte-identical to the input); a rewritten
//! packet whose input checksums verified verifies too; every flow entry the model says the
//! packet wrote, and the packet's own key, hold what the model says. Per batch: the whole flow
//! table equals the model's (no entry the model does not expect), and so do the counters of
//! `LB_STATS`, the per-service and per-backend counters and the cursors.
//!
//! Batch `i` of a run with seed `S` uses seed `S + i` alone, on empty maps: a failure prints the
//! batch's seed, and `LB_FUZZ_SEED=<that> LB_FUZZ_PACKETS=<n>` replays it first.
pub mod input;

use std::{collections::HashMap, fmt::Write as _, time::Instant};

use aya::maps::IterableMap as _;

use aya::{
    maps::PerCpuValues,
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
    util::nr_cpus,
};
use lb_common::{Config, Counters, Flow, FlowKey, PORT_GATE_WORDS, Stat, port_gate_slot};
use lb_user::dataplane::{
    Dataplane, batch,
    flows::{sum_stats, sum_u64},
    ifaces,
    loader::Capacities,
};
use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::{
    model::{
        Deviations, Env, Fib, Hook, Model, Outcome, State, Tally, Verdict,
        frame::{self, LengthRules, same_checksum},
        peer_key,
    },
    netns::FibNs,
};

/// The namespace the fuzzer runs in (its own: it may run beside other kernel tests' names).
pub const NS: &str = "lbf-env";

pub const UP0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0a, 0x01];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0a, 0x02];
pub const CALI0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
pub const TASK1_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x0b];

/// Builds the namespace: `FibNs` (up0 to the client 10.0.0.2, cali0 to the task 192.168.1.11,
/// both neighbours resolved), a second agent address, and a task without a neighbour entry.
pub fn namespace() -> FibNs {
    FibNs::new(
        NS,
        &[
            "addr add 10.9.0.1/24 dev up0",
            "route add 192.168.1.12/32 dev cali0",
        ],
    )
}

fn raw(s: &str) -> u32 {
    u32::from(s.parse::<std::net::Ipv4Addr>().unwrap()).to_be()
}

/// The FIB of `namespace()` as the model sees it (to be called inside the namespace).
pub fn env(ifs: input::Ifaces) -> Env {
    let host = |s: &str| u32::from_be(raw(s));
    let neigh = |ifindex, dmac| Fib::Neighbour {
        ifindex,
        smac: if ifindex == ifs.up0 {
            UP0_MAC
        } else {
            CALI0_MAC
        },
        dmac,
        mtu: 1500,
    };
    Env {
        ingress: ifs.lo,
        local: input::LOCAL_ADDRS.iter().map(|a| raw(a)).collect(),
        routes: vec![
            (host("10.0.0.0"), 24, Fib::NoNeighbour { ifindex: ifs.up0 }),
            (host("10.0.0.2"), 32, neigh(ifs.up0, CLIENT_MAC)),
            (host("10.9.0.0"), 24, Fib::NoNeighbour { ifindex: ifs.up0 }),
            (host("192.168.1.11"), 32, neigh(ifs.cali0, TASK1_MAC)),
            (
                host("192.168.1.12"),
                32,
                Fib::NoNeighbour { ifindex: ifs.cali0 },
            ),
            // The subnets' broadcast addresses (the local table's): not unicast, not forwarded.
            (host("10.0.0.255"), 32, Fib::Stack),
            (host("10.9.0.255"), 32, Fib::Stack),
        ],
    }
}

/// How much to run, and what to do on a failure.
#[derive(Clone, Debug)]
pub struct Options {
    pub seed: u64,
    /// Runs per hook (a chained packet counts once for each hook it ran through).
    pub packets_per_hook: u64,
    /// Packets per batch (a fresh scenario each).
    pub batch: usize,
    /// Report every failing batch instead of stopping at the first.
    pub keep_going: bool,
    /// Compare the whole flow table after every packet, not only at the end of a batch (slow:
    /// a few hundred packets a second; for finding where a batch's tables parted).
    pub paranoid: bool,
    pub deviations: Deviations,
}

impl Options {
    /// From `LB_FUZZ_SEED` (decimal or 0x-hex; random if unset), `LB_FUZZ_PACKETS` (per hook),
    /// `LB_FUZZ_KEEP_GOING=1`, `LB_FUZZ_PARANOID=1` and `LB_FUZZ_STRICT` (known deviations
    /// of the data plane not to allow: `all`, or some of `lengths,peer`).
    pub fn from_env(default_packets: u64) -> Self {
        let seed = std::env::var("LB_FUZZ_SEED")
            .ok()
            .map(|s| parse_u64(&s).unwrap_or_else(|| panic!("LB_FUZZ_SEED={s}: not a number")))
            .unwrap_or_else(rand::random);
        let packets = std::env::var("LB_FUZZ_PACKETS")
            .ok()
            .map(|s| parse_u64(&s).unwrap_or_else(|| panic!("LB_FUZZ_PACKETS={s}: not a number")))
            .unwrap_or(default_packets);
        let flag = |name| std::env::var(name).is_ok_and(|v| v == "1");
        Self {
            seed,
            packets_per_hook: packets,
            batch: 2000,
            keep_going: flag("LB_FUZZ_KEEP_GOING"),
            paranoid: flag("LB_FUZZ_PARANOID"),
            deviations: strict(std::env::var("LB_FUZZ_STRICT").unwrap_or_default()),
        }
    }
}

/// The data plane's known deviations, less those `LB_FUZZ_STRICT` names (`1` or `all`: every
/// one; else a comma-separated list of `lengths`, `peer`).
fn strict(names: String) -> Deviations {
    let mut d = Deviations::LB_EBPF;
    for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match name {
            "1" | "all" => d = Deviations::NONE,
            "lengths" => d.lenient_lengths = false,
            "peer" => d.marks_foreign_peer = false,
            other => panic!("LB_FUZZ_STRICT: unknown deviation {other} (lengths, peer, all)"),
        }
    }
    d
}

fn parse_u64(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Report {
    pub xdp_runs: u64,
    pub tc_runs: u64,
    pub batches: u64,
    /// Inputs the kernel's test harness itself refused (too short for it), per hook.
    pub refused: u64,
    pub by_kind: HashMap<&'static str, u64>,
    pub by_cause: HashMap<String, u64>,
    pub failures: Vec<String>,
    pub seconds: f64,
}

/// The loaded data plane, driven through `BPF_PROG_TEST_RUN`.
pub struct Kernel {
    dp: Dataplane,
    out: Vec<u8>,
    max: (u32, u32),
}

impl Kernel {
    pub fn load() -> Self {
        let caps = Capacities::default();
        let dp = Dataplane::load(caps, None).expect("the verifier accepts both programs");
        Self {
            dp,
            out: vec![0; 4096],
            max: (caps.services, caps.backend_ids),
        }
    }

    /// One run: the verdict and the bytes, or None if the test harness refused the input.
    fn run(&mut self, hook: Hook, frame: &[u8]) -> Option<(u32, Vec<u8>)> {
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut self.out),
            ..TestRunOptions::new()
        };
        let res = match hook {
            Hook::Xdp => {
                let p: &mut Xdp = self.dp.ebpf.program_mut("lb_xdp")?.try_into().ok()?;
                p.test_run(opts)
            }
            Hook::Tc => {
                let p: &mut SchedClassifier = self.dp.ebpf.program_mut("lb_tc")?.try_into().ok()?;
                p.test_run(opts)
            }
        }
        .ok()?;
        let n = (res.data_size_out as usize).min(self.out.len());
        Some((res.return_value, self.out[..n].to_vec()))
    }

    fn flow(&self, k: &FlowKey) -> Option<Flow> {
        self.dp.maps.flows.get(k, 0).ok()
    }

    fn all_flows(&self) -> HashMap<FlowKey, Flow> {
        batch::lookup_all::<FlowKey, Flow>(self.dp.maps.flows.map())
            .expect("BPF_MAP_LOOKUP_BATCH on the flow table")
            .into_iter()
            .collect()
    }

    fn stats(&self) -> Vec<u64> {
        sum_stats(&self.dp.maps.stats)
    }

    fn counters(&self, service: bool, id: u32) -> Counters {
        let m = if service {
            &self.dp.maps.service_stats
        } else {
            &self.dp.maps.backend_stats
        };
        m.get(&id, 0)
            .map(|v| {
                v.iter().fold(Counters::default(), |a, c| Counters {
                    packets: a.packets + c.packets,
                    bytes: a.bytes + c.bytes,
                    new_flows: a.new_flows + c.new_flows,
                })
            })
            .unwrap_or_default()
    }

    fn zero_counters(&mut self, service: bool, id: u32) {
        let zeros = PerCpuValues::try_from(vec![Counters::default(); nr_cpus().unwrap()]).unwrap();
        let m = if service {
            &mut self.dp.maps.service_stats
        } else {
            &mut self.dp.maps.backend_stats
        };
        m.set(id, zeros, 0).unwrap();
        if service {
            let zeros = PerCpuValues::try_from(vec![0u64; nr_cpus().unwrap()]).unwrap();
            self.dp.maps.service_refused.set(id, zeros, 0).unwrap();
            let zeros = PerCpuValues::try_from(vec![0u64; nr_cpus().unwrap()]).unwrap();
            self.dp.maps.service_denied.set(id, zeros, 0).unwrap();
        }
    }

    /// Makes the maps hold exactly `st` (the maps hold nothing of an earlier batch).
    fn write(&mut self, st: &State) {
        let m = &mut self.dp.maps;
        m.config.set(0, st.config, 0).unwrap();
        for (k, s) in &st.services {
            m.services.insert(k, s, 0).unwrap();
        }
        for (k, b) in &st.backends {
            m.backends.insert(k, b, 0).unwrap();
        }
        for a in &st.local_addrs {
            m.local_addrs
                .insert(a, lb_common::LocalAddr::default(), 0)
                .unwrap();
        }
        for i in &st.xdp_tx {
            m.xdp_tx.insert(i, 1, 0).unwrap();
        }
        for i in &st.peer_ifs {
            m.peer_ifs.insert(i, 1, 0).unwrap();
        }
        for (id, v) in &st.rr {
            m.rr.set(*id, *v, 0).unwrap();
        }
        for (id, v) in &st.nat_cursor {
            m.nat_cursor.set(*id, *v, 0).unwrap();
        }
        for (w, bits) in gate_words(st) {
            m.ports.set(w, bits, 0).unwrap();
        }
        for (k, f) in &st.flows {
            m.flows.insert(k, f, 0).unwrap();
        }
        for k in acl_keys(st) {
            m.acl.insert(&k, 1, 0).unwrap();
        }
    }

    /// Empties what `st` (the model's state at the end of a batch) put in the maps.
    fn clear(&mut self, st: &State) {
        let flows: Vec<FlowKey> = self.all_flows().into_keys().collect();
        let m = &mut self.dp.maps;
        for k in flows {
            m.flows.remove(&k).ok();
        }
        for k in st.services.keys() {
            m.services.remove(k).ok();
        }
        for k in st.backends.keys() {
            m.backends.remove(k).ok();
        }
        for a in &st.local_addrs {
            m.local_addrs.remove(a).ok();
        }
        for i in &st.xdp_tx {
            m.xdp_tx.remove(i).ok();
        }
        for i in &st.peer_ifs {
            m.peer_ifs.remove(i).ok();
        }
        for (w, _) in gate_words(st) {
            m.ports.set(w, 0, 0).unwrap();
        }
        for k in acl_keys(st) {
            m.acl.remove(&k).ok();
        }
        m.config.set(0, Config::default(), 0).unwrap();
    }
}

/// `LB_ACL` keys as the model's ranges make them.
fn acl_keys(st: &State) -> Vec<aya::maps::lpm_trie::Key<lb_common::AclData>> {
    st.acl
        .iter()
        .map(|&(id, addr, len)| {
            let k = lb_common::AclKey::range(id, addr, len);
            aya::maps::lpm_trie::Key::new(k.prefix_len, k.data)
        })
        .collect()
}

/// `LB_PORTS` words as the model's port set makes them.
fn gate_words(st: &State) -> HashMap<u32, u64> {
    let mut words = HashMap::new();
    for (kind, proto, port) in &st.ports {
        let (w, bit) = port_gate_slot(*kind, *proto, *port);
        assert!(w < PORT_GATE_WORDS);
        *words.entry(w).or_insert(0) |= bit;
    }
    words
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Whether the actual output matches the model's: exactly, except that where the model
/// rewrote the packet its checksum fields may hold the other form of one's-complement zero.
fn same_output(o: &Outcome, input: &[u8], out: &[u8], rules: LengthRules) -> bool {
    if o.verdict == Verdict::Drop {
        // A dropped packet goes nowhere; its bytes are the program's scratch.
        return true;
    }
    if !o.rewritten || o.out.len() != out.len() {
        return o.out == out;
    }
    let Ok(h) = frame::parse(input, rules) else {
        return o.out == out;
    };
    let checks = [14 + 10, h.l4_check_at()];
    let mut i = 0;
    while i < out.len() {
        if let Some(&at) = checks.iter().find(|&&at| at == i) {
            let a = u16::from_be_bytes([o.out[at], o.out[at + 1]]);
            let b = u16::from_be_bytes([out[at], out[at + 1]]);
            let udp_zero = !h.is_tcp() && at != 24 && (a == 0) != (b == 0);
            if !same_checksum(a, b) || udp_zero {
                return false;
            }
            i += 2;
            continue;
        }
        if o.out[i] != out[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// A rewritten packet whose input checksums verified must verify.
fn checksums_hold(input: &[u8], out: &[u8], rules: LengthRules) -> Result<(), String> {
    let Ok(h) = frame::parse(input, rules) else {
        return Ok(());
    };
    if frame::ip_residual(input, h.ihl) == 0xffff && frame::ip_residual(out, h.ihl) != 0xffff {
        return Err("the IPv4 header checksum no longer verifies".into());
    }
    let udp_none = !h.is_tcp() && input[h.l4_check_at()..h.l4_check_at() + 2] == [0, 0];
    let whole = input.len() >= h.l4 + (h.tot_len as usize).saturating_sub(h.ihl);
    if !udp_none && whole && frame::l4_residual(input, &h) == 0xffff {
        let oh = frame::parse(out, rules).map_err(|s| format!("output unreadable: {s:?}"))?;
        if frame::l4_residual(out, &oh) != 0xffff {
            return Err("the TCP/UDP checksum no longer verifies".into());
        }
    }
    Ok(())
}

/// Checks one run against the model; on success returns the outcome it matched.
struct Judge<'a> {
    model: &'a Model,
    st: &'a State,
    hook: Hook,
    input: &'a [u8],
    t0: u64,
    t1: u64,
}

impl Judge<'_> {
    fn matches(
        &self,
        o: &Outcome,
        code: u32,
        out: &[u8],
        actual: &mut dyn FnMut(&FlowKey) -> Option<Flow>,
    ) -> Result<(), String> {
        let rules = self.model.deviations.lengths();
        if o.verdict.code(self.hook) != code {
            return Err(format!(
                "verdict {code}, model {:?} ({:?}) = {}",
                o.verdict,
                o.cause,
                o.verdict.code(self.hook)
            ));
        }
        if !same_output(o, self.input, out, rules) {
            return Err(format!(
                "output bytes differ\n  model  {}\n  actual {}",
                hex(&o.out),
                hex(out)
            ));
        }
        for (k, want) in &o.flows {
            let got = actual(k);
            if got != *want {
                return Err(format!(
                    "flow {}\n  model  {want:?}\n  actual {got:?}",
                    show_key(k)
                ));
            }
        }
        // The packet's own key and its flow's other direction: unchanged where the model
        // changed nothing (an entry written elsewhere shows in the end-of-batch check).
        if let Ok(h) = frame::parse(self.input, LengthRules::NONE) {
            let mut keys = vec![h.key];
            if let Some(f) = self.st.flows.get(&h.key) {
                keys.push(peer_key(f, h.key.proto));
            }
            for key in keys {
                if o.flows.iter().any(|(k, _)| *k == key) {
                    continue;
                }
                let (got, want) = (actual(&key), self.st.flows.get(&key).copied());
                if got != want {
                    return Err(format!(
                        "flow {} changed behind the model's back\n  model  {want:?}\n  actual {got:?}",
                        show_key(&key)
                    ));
                }
            }
        }
        Ok(())
    }

    /// The clock readings the program may have used: the window's ends, every time in the
    /// window that an entry the packet may have written holds (a flow created or touched
    /// stores the program's clock), and the readings a new timestamp offset implies
    /// (`ts_off = (now >> TS_CLOCK_SHIFT) - TSval`).
    fn candidates(
        &self,
        at_ends: [&Outcome; 2],
        actual: &mut dyn FnMut(&FlowKey) -> Option<Flow>,
    ) -> Vec<u64> {
        let mut keys: Vec<FlowKey> = at_ends
            .iter()
            .flat_map(|o| o.flows.iter().map(|(k, _)| *k))
            .collect();
        let h = frame::parse(self.input, LengthRules::NONE).ok();
        if let Some(h) = &h {
            keys.push(h.key);
            if let Some(f) = self.st.flows.get(&h.key) {
                keys.push(peer_key(f, h.key.proto));
            }
        }
        let tsval = h.as_ref().and_then(|h| {
            let at = h.ts_at? + 2;
            Some(u32::from_be_bytes(
                self.input.get(at..at + 4)?.try_into().ok()?,
            ))
        });
        let window = self.t0..=self.t1;
        let mut c = vec![self.t0, self.t1];
        for k in keys {
            let Some(got) = actual(&k) else {
                continue;
            };
            c.extend(
                [got.last_seen_ns, got.created_ns]
                    .into_iter()
                    .filter(|t| window.contains(t)),
            );
            let before = self.st.flows.get(&k).map(|f| f.ts_off);
            if let Some(tsval) = tsval
                && Some(got.ts_off) != before
            {
                let clk = got.ts_off.wrapping_add(tsval) as u64;
                let base = ((self.t0 >> 48) << 48) | (clk << lb_common::TS_CLOCK_SHIFT);
                c.extend([base, base | 0xffff].map(|n| n.clamp(self.t0, self.t1)));
            }
        }
        c.sort_unstable();
        c.dedup();
        c
    }
}

fn show_key(k: &FlowKey) -> String {
    let a = |r: u32, p: u16| {
        format!(
            "{}:{}",
            std::net::Ipv4Addr::from(u32::from_be(r)),
            u16::from_be(p)
        )
    };
    format!("{} {} -> {}", k.proto, a(k.src, k.sport), a(k.dst, k.dport))
}

/// Runs the fuzzer in the current network namespace (`namespace()`'s), loading the data plane.
pub fn run(opts: &Options) -> Report {
    let ifs_all = ifaces::list();
    let idx = |n: &str| {
        ifs_all
            .get(n)
            .unwrap_or_else(|| panic!("no {n} in {NS}"))
            .index
    };
    let ifs = input::Ifaces {
        lo: idx("lo"),
        up0: idx("up0"),
        cali0: idx("cali0"),
    };
    let model = Model {
        env: env(ifs),
        deviations: opts.deviations,
    };
    let mut k = Kernel::load();
    let mut report = Report::default();
    let started = Instant::now();
    let mut batch_no = 0u64;
    while report.xdp_runs < opts.packets_per_hook || report.tc_runs < opts.packets_per_hook {
        let seed = opts.seed.wrapping_add(batch_no);
        batch_no += 1;
        if let Err(e) = run_batch(&model, &mut k, ifs, seed, opts, &mut report) {
            let msg = format!(
                "batch seed {seed:#x} (replay: LB_FUZZ_SEED={seed:#x} LB_FUZZ_PACKETS={}): {e}",
                opts.batch
            );
            eprintln!("FUZZ FAILURE {msg}");
            report.failures.push(msg);
            if !opts.keep_going {
                break;
            }
        }
        report.batches += 1;
    }
    report.seconds = started.elapsed().as_secs_f64();
    report
}

fn run_batch(
    model: &Model,
    k: &mut Kernel,
    ifs: input::Ifaces,
    seed: u64,
    opts: &Options,
    report: &mut Report,
) -> Result<(), String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let now = lb_user::dataplane::monotonic_ns();
    let mut st = input::scenario(&mut rng, ifs, k.max, now);
    k.write(&st);
    let ids = (
        st.services
            .values()
            .map(|s| s.id)
            .filter(|i| *i < k.max.0)
            .collect::<Vec<_>>(),
        st.backends
            .values()
            .map(|b| b.id)
            .chain(0..6)
            .filter(|i| *i < k.max.1)
            .collect::<Vec<_>>(),
    );
    for id in ids.0.clone() {
        k.zero_counters(true, id);
    }
    for id in ids.1.clone() {
        k.zero_counters(false, id);
    }
    let stats_before = k.stats();
    let mut tally = Tally::default();
    let result = (|| {
        for i in 0..opts.batch {
            let (frame, kind) = input::frame(&mut rng, &st);
            *report.by_kind.entry(kind).or_default() += 1;
            let chain = rng.random_range(0..3);
            let hooks: &[Hook] = match chain {
                0 => &[Hook::Xdp],
                1 => &[Hook::Tc],
                _ => &[Hook::Xdp, Hook::Tc],
            };
            for &hook in hooks {
                let verdict =
                    one(model, k, &mut st, &mut tally, hook, &frame, report).map_err(|e| {
                        format!(
                            "packet {i} ({kind}) through {hook:?}: {e}\n  input  {}",
                            hex(&frame)
                        )
                    })?;
                match hook {
                    Hook::Xdp => report.xdp_runs += 1,
                    Hook::Tc => report.tc_runs += 1,
                }
                if opts.paranoid {
                    compare_tables(k, &st).map_err(|e| {
                        format!(
                            "after packet {i} ({kind}) through {hook:?}: {e}\n  input  {}",
                            hex(&frame)
                        )
                    })?;
                }
                if verdict != Some(Verdict::Pass) {
                    break;
                }
            }
        }
        check_batch(k, &st, &tally, &stats_before, &ids)
    })();
    k.clear(&st);
    result
}

/// One packet through one hook, checked; returns the verdict (None: the harness refused it).
fn one(
    model: &Model,
    k: &mut Kernel,
    st: &mut State,
    tally: &mut Tally,
    hook: Hook,
    frame: &[u8],
    report: &mut Report,
) -> Result<Option<Verdict>, String> {
    let t0 = lb_user::dataplane::monotonic_ns();
    let ran = k.run(hook, frame);
    let t1 = lb_user::dataplane::monotonic_ns();
    let Some((code, out)) = ran else {
        // The kernel's harness refuses frames too short for it (under an Ethernet header; for
        // TC an IPv4 or IPv6 frame without a whole fixed IP header): nothing ran.
        let ether_type = frame.get(12..14).map(|e| u16::from_be_bytes([e[0], e[1]]));
        let ip_header = match ether_type {
            Some(0x0800) => 20,
            Some(0x86dd) => 40,
            _ => 0,
        };
        let short = frame.len() < 14 || (hook == Hook::Tc && frame.len() < 14 + ip_header);
        if !short {
            return Err(format!(
                "the test harness refused a {}-byte frame",
                frame.len()
            ));
        }
        report.refused += 1;
        return Ok(None);
    };
    let judge = Judge {
        model,
        st,
        hook,
        input: frame,
        t0,
        t1,
    };
    let mut seen: HashMap<FlowKey, Option<Flow>> = HashMap::new();
    let mut actual = |key: &FlowKey| *seen.entry(*key).or_insert_with(|| k.flow(key));
    let a = model.step(st, hook, frame, t0);
    let mut chosen = None;
    let mut first_err = None;
    match judge.matches(&a, code, &out, &mut actual) {
        Ok(()) => chosen = Some(a.clone()),
        Err(e) => first_err = Some(e),
    }
    let mut others = String::new();
    if chosen.is_none() {
        let b = model.step(st, hook, frame, t1);
        for now in judge.candidates([&a, &b], &mut actual) {
            let o = model.step(st, hook, frame, now);
            match judge.matches(&o, code, &out, &mut actual) {
                Ok(()) => {
                    chosen = Some(o);
                    break;
                }
                Err(e) => {
                    let _ = write!(others, "\n  at now = t0 + {} ns: {e}", now - t0);
                }
            }
        }
    }
    let Some(o) = chosen else {
        return Err(format!(
            "{}\n  model cause {:?}, stats {:?}, flows written {}\n  other clock readings in [t0, t0 + {}]:{others}",
            first_err.unwrap_or_default(),
            a.cause,
            a.stats,
            a.flows.iter().fold(String::new(), |mut s, (k, v)| {
                let _ = write!(s, "\n    {} = {v:?}", show_key(k));
                s
            }),
            t1 - t0
        ));
    };
    if o.rewritten {
        checksums_hold(frame, &out, model.deviations.lengths())?;
    }
    *report
        .by_cause
        .entry(format!("{hook:?} {:?}", o.cause))
        .or_default() += 1;
    tally.add(st, &o);
    st.apply(&o);
    Ok(Some(o.verdict))
}

/// End of a batch: the whole flow table, the counters and the cursors as the model has them.
fn check_batch(
    k: &Kernel,
    st: &State,
    tally: &Tally,
    stats_before: &[u64],
    ids: &(Vec<u32>, Vec<u32>),
) -> Result<(), String> {
    compare_tables(k, st)?;
    let after = k.stats();
    let stats = if tally.stats.is_empty() {
        vec![0; after.len()]
    } else {
        tally.stats.clone()
    };
    for (i, s) in Stat::ALL.iter().enumerate() {
        let delta = after[i] - stats_before[i];
        if delta != stats[i] {
            return Err(format!(
                "LB_STATS {}: counted {delta}, model {}",
                s.name(),
                stats[i]
            ));
        }
    }
    for &id in &ids.0 {
        let want = tally.services.get(&id).copied().unwrap_or_default();
        let got = k.counters(true, id);
        if got != want {
            return Err(format!("LB_SVC_STATS[{id}]: {got:?}, model {want:?}"));
        }
        let want = tally.refused.get(&id).copied().unwrap_or_default();
        let got = sum_u64(&k.dp.maps.service_refused, id);
        if got != want {
            return Err(format!("LB_SVC_REFUSED[{id}]: {got}, model {want}"));
        }
        let want = tally.denied.get(&id).copied().unwrap_or_default();
        let got = sum_u64(&k.dp.maps.service_denied, id);
        if got != want {
            return Err(format!("LB_SVC_DENIED[{id}]: {got}, model {want}"));
        }
    }
    for &id in &ids.1 {
        let want = tally.backends.get(&id).copied().unwrap_or_default();
        let got = k.counters(false, id);
        if got != want {
            return Err(format!("LB_BE_STATS[{id}]: {got:?}, model {want:?}"));
        }
    }
    for (id, v) in &st.rr {
        let got = k.dp.maps.rr.get(id, 0).unwrap();
        if got != *v {
            return Err(format!("LB_RR[{id}]: {got}, model {v}"));
        }
    }
    for (id, v) in &st.nat_cursor {
        let got = k.dp.maps.nat_cursor.get(id, 0).unwrap();
        if got != *v {
            return Err(format!("LB_NAT_CURSOR[{id}]: {got}, model {v}"));
        }
    }
    Ok(())
}

/// The whole flow table against the model's: no entry the model does not expect, none missing.
fn compare_tables(k: &Kernel, st: &State) -> Result<(), String> {
    let table = k.all_flows();
    let mut diffs = Vec::new();
    for (key, f) in &table {
        if st.flows.get(key) != Some(f) {
            diffs.push(format!(
                "  {}: table {f:?}, model {:?}",
                show_key(key),
                st.flows.get(key)
            ));
        }
    }
    for (key, f) in &st.flows {
        if !table.contains_key(key) {
            diffs.push(format!(
                "  {}: missing from the table, model {f:?}",
                show_key(key)
            ));
        }
    }
    if !diffs.is_empty() {
        diffs.sort_by_key(|d| d.clone());
        return Err(format!(
            "flow table differs from the model's:\n{}",
            diffs.join("\n")
        ));
    }
    Ok(())
}

/// A scripted run for the tests of known deviations: `st` written into freshly emptied maps,
/// then `packets` one by one, each checked as the fuzzer checks them, then the whole table.
/// Runs in the current namespace (`namespace()`'s). Err says where the model and the data
/// plane part.
pub fn replay(
    st: impl FnOnce(&mut State, input::Ifaces),
    packets: &[(Hook, Vec<u8>)],
    deviations: Deviations,
) -> Result<(), String> {
    let all = ifaces::list();
    let ifs = input::Ifaces {
        lo: all["lo"].index,
        up0: all["up0"].index,
        cali0: all["cali0"].index,
    };
    let model = Model {
        env: env(ifs),
        deviations,
    };
    let mut k = Kernel::load();
    let mut state = State {
        max_services: k.max.0,
        max_backend_ids: k.max.1,
        local_addrs: input::LOCAL_ADDRS.iter().map(|a| raw(a)).collect(),
        ..State::default()
    };
    st(&mut state, ifs);
    k.write(&state);
    let mut tally = Tally::default();
    let mut report = Report::default();
    let result = (|| {
        for (i, (hook, frame)) in packets.iter().enumerate() {
            one(
                &model,
                &mut k,
                &mut state,
                &mut tally,
                *hook,
                frame,
                &mut report,
            )
            .map_err(|e| format!("packet {i} through {hook:?}: {e}"))?;
        }
        compare_tables(&k, &state)
    })();
    k.clear(&state);
    result
}
