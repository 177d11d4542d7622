//! A reference model of the data plane in plain host Rust: given the maps' contents, the routes
//! the kernel knows and one frame, what `lb_xdp` or `lb_tc` must answer, what bytes leave and
//! which map entries change. The fuzzer (`crate::fuzz`) holds the BPF programs to it.
//!
//! It follows the README's description of the packet path, step by step (`Model::path`): read
//! the frame, the port gate, the flow table (or a new flow: service, backend, NAT port), the TTL,
//! the route (cached in the flow or from the FIB), the rewrite. Each step is a function of its
//! own so that new rules (an admission step for source ranges or refusing empty services, a
//! least-connections pick) slot in as one more function. Where the data plane is known to
//! differ from what the model holds to be right, `Deviations` says so, one switch per
//! difference, each with a packet that shows it; the fuzzer runs with the data plane's
//! current set (`Deviations::LB_EBPF`) so that it finds new differences only.
pub mod frame;

use std::collections::{BTreeMap, HashMap, HashSet};

use lb_common::{
    Backend, BackendKey, CFG_F_PRESERVE_CLIENT_IP, Config, Counters, FLOW_F_BACKEND_CLOSED_FIRST,
    FLOW_F_CLOSED, FLOW_F_CLOSING, FLOW_F_FIN_BACKEND, FLOW_F_FIN_CLIENT, FLOW_F_REPLY, FLOW_F_TS,
    FLOW_F_TS_INIT, Flow, FlowKey, IPPROTO_UDP, PORT_BACKEND, PORT_SERVICE, RT_F_PEER, RT_F_XDP,
    SVC_F_AFFINITY_SOURCE, SVC_F_ALLOW_LIST, Service, ServiceKey, Stat, TS_CLOCK_SHIFT,
};

use frame::{
    ETH_LEN, Headers, LengthRules, TCP_ACK, TCP_RST, TCP_SYN, ip_residual, l4_residual, set_check,
};

/// Backends one service may have (the data plane's bound on its index arithmetic).
pub const MAX_BACKENDS_PER_SERVICE: u32 = 4_096;
/// NAT ports probed for one new flow before it is refused.
pub const NAT_PORT_TRIES: u32 = 32;
/// A flow's `last_seen_ns` is refreshed only when it is older than this (fewer writes to a
/// shared cache line); the map shows it, so the model keeps it too.
pub const TOUCH_EVERY_NS: u64 = 100_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Xdp,
    Tc,
}

/// What the program tells the kernel to do with the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
    /// XDP only: back out of the interface it came in on.
    Tx,
    Redirect,
}

impl Verdict {
    /// The return value `BPF_PROG_TEST_RUN` reports for this verdict of `hook`'s program.
    pub fn code(self, hook: Hook) -> u32 {
        use crate::packets::verdict::*;
        match (hook, self) {
            (Hook::Xdp, Self::Pass) => XDP_PASS,
            (Hook::Xdp, Self::Drop) => XDP_DROP,
            (Hook::Xdp, Self::Tx) => XDP_TX,
            (Hook::Xdp, Self::Redirect) => XDP_REDIRECT,
            (Hook::Tc, Self::Pass) => TC_ACT_OK,
            (Hook::Tc, Self::Drop) => TC_ACT_SHOT,
            (Hook::Tc, Self::Redirect) => TC_ACT_REDIRECT,
            (Hook::Tc, Self::Tx) => unreachable!("TC has no XDP_TX"),
        }
    }
}

/// Causes that drop the packet (README: "Packets that claim to be ours but cannot be handled
/// are dropped and counted"); every other cause passes it on unchanged.
pub fn drops(stat: Stat) -> bool {
    matches!(
        stat,
        Stat::DropFragment
            | Stat::DropNatPorts
            | Stat::DropFlowInsert
            | Stat::ErrBackendLookup
            | Stat::ErrRewrite
            | Stat::DropDenied
    )
}

/// The kernel's FIB answer for a destination, as `bpf_fib_lookup` gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fib {
    Neighbour {
        ifindex: u32,
        smac: [u8; 6],
        dmac: [u8; 6],
        mtu: u16,
    },
    /// A route out of `ifindex` but no resolved neighbour.
    NoNeighbour { ifindex: u32 },
    /// Local, unreachable, too big...: the stack decides.
    Stack,
}

/// The routes of the namespace the programs run in, and the interface test runs arrive on.
#[derive(Clone, Debug)]
pub struct Env {
    pub ingress: u32,
    /// The namespace's own addresses (raw, network order): routed locally, never forwarded.
    pub local: Vec<u32>,
    /// (prefix, length, answer), longest prefix first wins; a destination matching none has
    /// no route.
    pub routes: Vec<(u32, u8, Fib)>,
}

impl Env {
    /// What the FIB answers for `dst` (raw). XDP asks with the IP header's total length, which
    /// the kernel checks against the route's MTU; TC asks without, and the kernel checks the
    /// skb (the frame) against the device MTU plus link headers instead (`is_skb_forwardable`).
    pub fn fib(&self, dst: u32, hook: Hook, tot_len: u16, frame_len: usize) -> Fib {
        if self.local.contains(&dst) {
            return Fib::Stack;
        }
        let host = u32::from_be(dst);
        let best = self
            .routes
            .iter()
            .filter(|(p, len, _)| *len == 0 || (host ^ p) >> (32 - *len as u32) == 0)
            .max_by_key(|(_, len, _)| *len);
        match best {
            None => Fib::Stack,
            Some((_, _, Fib::Neighbour { mtu, .. }))
                if (hook == Hook::Xdp && tot_len > *mtu)
                    || (hook == Hook::Tc && frame_len > *mtu as usize + ETH_LEN + 4) =>
            {
                Fib::Stack
            }
            Some((_, _, f)) => *f,
        }
    }
}

/// The contents of every map the packet path reads or writes.
#[derive(Clone, Debug, Default)]
pub struct State {
    pub config: Config,
    pub services: HashMap<ServiceKey, Service>,
    pub backends: HashMap<BackendKey, Backend>,
    pub flows: HashMap<FlowKey, Flow>,
    /// `LB_LOCAL_ADDRS` keys (raw).
    pub local_addrs: HashSet<u32>,
    pub xdp_tx: HashSet<u32>,
    /// `LB_PEER_IFS` keys.
    pub peer_ifs: HashSet<u32>,
    /// `LB_RR` and `LB_NAT_CURSOR` (an absent id holds 0).
    pub rr: HashMap<u32, u32>,
    pub nat_cursor: HashMap<u32, u32>,
    /// `LB_PORTS` as (kind, protocol, port in host order).
    pub ports: HashSet<(u32, u8, u16)>,
    /// `LB_ACL` as (service id, range address (raw, network order), prefix length).
    pub acl: HashSet<(u32, u32, u8)>,
    /// Array sizes: `LB_RR`/`LB_SVC_STATS` and `LB_NAT_CURSOR`/`LB_BE_STATS`.
    pub max_services: u32,
    pub max_backend_ids: u32,
}

impl State {
    /// Whether `client` (raw) is inside one of service `id`'s ranges.
    fn allows(&self, id: u32, client: u32) -> bool {
        self.acl.iter().any(|&(sid, addr, len)| {
            let mask = u32::MAX.checked_shl(32 - len as u32).unwrap_or(0);
            sid == id && (u32::from_be(client) ^ u32::from_be(addr)) & mask == 0
        })
    }

    /// The port gate: could the packet be a service's or a flow's at all?
    fn gate(&self, key: &FlowKey) -> bool {
        self.ports
            .contains(&(PORT_SERVICE, key.proto, u16::from_be(key.dport)))
            || self
                .ports
                .contains(&(PORT_BACKEND, key.proto, u16::from_be(key.sport)))
    }

    /// Applies the map changes of an outcome.
    pub fn apply(&mut self, o: &Outcome) {
        for (k, v) in &o.flows {
            match v {
                Some(f) => self.flows.insert(*k, *f),
                None => self.flows.remove(k),
            };
        }
        self.rr.extend(&o.rr);
        self.nat_cursor.extend(&o.nat_cursor);
    }
}

/// Differences between the model and the data plane that are known and reported. With a
/// switch off the model does what it holds to be right; `LB_EBPF` switches on those the
/// current data plane has, so the fuzzer passes on them and fails on anything new.
#[derive(Clone, Copy, Debug)]
pub struct Deviations {
    /// Length checks the data plane does not make (see `LengthRules`): it rewrites and forwards
    /// a segment whose lengths do not add up (IPv4 total length past the frame's end, TCP data
    /// offset under 5 words or past the datagram, UDP length under 8 or past the datagram)
    /// instead of passing it for the stack to judge, as `Stat::PassMalformed` says it does. A
    /// truncated segment whose timestamp option is cut is dropped as `ErrRewrite` instead.
    /// Shown by `tests/fuzz.rs`, `known_deviation_a_segment_whose_lengths_do_not_add_up...`:
    /// a SYN to a service whose total length claims 100 bytes more than the frame holds.
    pub lenient_lengths: bool,
    /// FIN/RST and the timestamp decision are marked on the entry at the flow's peer key even
    /// when that entry belongs to another flow (its own peer key is not this entry's key).
    /// Full NAT: client 10.0.0.2:40000 opens flow A (NAT port 1024), sends FIN, opens flow B
    /// on the same tuple (A's reply entry stays, reserving 1024); A's task then sends its FIN
    /// to 10.0.0.1:1024, and B's forward entry turns CLOSING|FIN_BACKEND (10 s to live) though
    /// B never closed. `tests/fuzz.rs`, `known_deviation_a_late_fin_of_an_old_flow...`.
    pub marks_foreign_peer: bool,
}

impl Deviations {
    /// What the model holds to be right.
    pub const NONE: Self = Self {
        lenient_lengths: false,
        marks_foreign_peer: false,
    };
    /// What lb-ebpf does today: both deviations the fuzzer found are fixed.
    pub const LB_EBPF: Self = Self::NONE;

    pub fn lengths(&self) -> LengthRules {
        let strict = !self.lenient_lengths;
        LengthRules {
            tot_len_past_frame: strict,
            tcp_doff: strict,
            udp_len: strict,
        }
    }
}

/// What one packet does: the verdict, the bytes that leave, and every map change.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub verdict: Verdict,
    /// The cause counted for the packet (a pass, drop or error cause, `Redirect` or
    /// `PassToStack`).
    pub cause: Stat,
    pub out: Vec<u8>,
    /// The packet was rewritten (its checksums must then verify if the input's did).
    pub rewritten: bool,
    /// The final value of every flow-table key the packet wrote (None: deleted), in key order.
    pub flows: Vec<(FlowKey, Option<Flow>)>,
    pub rr: BTreeMap<u32, u32>,
    pub nat_cursor: BTreeMap<u32, u32>,
    /// Every `LB_STATS` increment, `cause` included.
    pub stats: Vec<Stat>,
    /// (service id, backend id): a new flow counted.
    pub new_flow: Option<(u32, u32)>,
    /// Service id: a new connection refused for want of backends (`LB_SVC_REFUSED`).
    pub refused: Option<u32>,
    /// Service id: a packet dropped for a client outside its ranges (`LB_SVC_DENIED`).
    pub denied: Option<u32>,
    /// (service id, backend id, bytes): a forwarded packet counted.
    pub traffic: Option<(u32, u32, u64)>,
}

/// An order for flow keys, so outcomes list their changes deterministically.
pub fn key_order(k: &FlowKey) -> (u8, u32, u32, u16, u16) {
    (k.proto, k.src, k.dst, k.sport, k.dport)
}

/// The model's working copy for one packet: reads see the packet's own earlier writes.
struct Tx<'a> {
    st: &'a State,
    flows: HashMap<FlowKey, Option<Flow>>,
    rr: BTreeMap<u32, u32>,
    nat_cursor: BTreeMap<u32, u32>,
    stats: Vec<Stat>,
    new_flow: Option<(u32, u32)>,
    refused: Option<u32>,
    denied: Option<u32>,
    traffic: Option<(u32, u32, u64)>,
}

impl<'a> Tx<'a> {
    fn flow(&self, k: &FlowKey) -> Option<Flow> {
        match self.flows.get(k) {
            Some(v) => *v,
            None => self.st.flows.get(k).copied(),
        }
    }
    fn put(&mut self, k: FlowKey, f: Flow) {
        self.flows.insert(k, Some(f));
    }
    fn del(&mut self, k: &FlowKey) {
        if self.flow(k).is_some() {
            self.flows.insert(*k, None);
        }
    }
    fn update(&mut self, k: &FlowKey, f: impl FnOnce(&mut Flow)) -> bool {
        match self.flow(k) {
            Some(mut v) => {
                f(&mut v);
                self.put(*k, v);
                true
            }
            None => false,
        }
    }
    fn rr_next(&mut self, id: u32) -> u32 {
        let v = self
            .rr
            .get(&id)
            .copied()
            .unwrap_or_else(|| self.st.rr.get(&id).copied().unwrap_or(0));
        self.rr.insert(id, v.wrapping_add(1));
        v
    }
    fn nat_next(&mut self, id: u32) -> u32 {
        let v = self
            .nat_cursor
            .get(&id)
            .copied()
            .unwrap_or_else(|| self.st.nat_cursor.get(&id).copied().unwrap_or(0));
        self.nat_cursor.insert(id, v.wrapping_add(1));
        v
    }
}

/// The flow a packet belongs to, and whether it found it in the table (the route cache lives
/// in a found entry; a flow this packet created caches its route from the next packet on).
struct Tracked {
    flow: Flow,
    found: bool,
}

/// How the rewritten packet leaves: routed by this hop (TTL decremented, MACs set when known)
/// or handed to the stack as it is.
enum Hop {
    Macs([u8; 6], [u8; 6]),
    Unresolved,
    Stack,
}

pub fn peer_key(flow: &Flow, proto: u8) -> FlowKey {
    FlowKey {
        src: flow.new_dst,
        dst: flow.new_src,
        sport: flow.new_dport,
        dport: flow.new_sport,
        proto,
        _pad: [0; 3],
    }
}

/// README, `--tcp-*-timeout` and `--udp-timeout`: how long a flow may stay idle.
pub fn timeout(cfg: &Config, proto: u8, flags: u32) -> u64 {
    if proto == IPPROTO_UDP {
        return cfg.udp_timeout_ns;
    }
    let closed = flags & FLOW_F_CLOSED == FLOW_F_CLOSED;
    let time_wait = flags & FLOW_F_BACKEND_CLOSED_FIRST != 0 && flags & FLOW_F_TS == 0;
    match (closed, flags & FLOW_F_CLOSING != 0) {
        (true, _) if time_wait => cfg.tcp_time_wait_timeout_ns,
        (true, _) => cfg.tcp_closed_timeout_ns,
        (false, true) => cfg.tcp_closing_timeout_ns,
        (false, false) => cfg.tcp_timeout_ns,
    }
}

pub struct Model {
    pub env: Env,
    pub deviations: Deviations,
}

impl Model {
    /// What `hook`'s program does with `frame` when the maps hold `st` and its clock reads `now`.
    pub fn step(&self, st: &State, hook: Hook, frame: &[u8], now: u64) -> Outcome {
        let mut tx = Tx {
            st,
            flows: HashMap::new(),
            rr: BTreeMap::new(),
            nat_cursor: BTreeMap::new(),
            stats: Vec::new(),
            new_flow: None,
            refused: None,
            denied: None,
            traffic: None,
        };
        let mut out = frame.to_vec();
        let (verdict, cause, rewritten) = match self.path(&mut tx, hook, frame, &mut out, now) {
            Ok((v, cause)) => (v, cause, true),
            Err(stat) => {
                out = frame.to_vec();
                let v = if drops(stat) {
                    Verdict::Drop
                } else {
                    Verdict::Pass
                };
                (v, stat, false)
            }
        };
        // Denials are counted per service only (`LB_STATS` has no slot for them).
        if (cause as u32) < lb_common::STAT_COUNT {
            tx.stats.push(cause);
        }
        let mut flows: Vec<_> = tx.flows.into_iter().collect();
        flows.sort_by_key(|(k, _)| key_order(k));
        Outcome {
            verdict,
            cause,
            out,
            rewritten,
            flows,
            rr: tx.rr,
            nat_cursor: tx.nat_cursor,
            stats: tx.stats,
            new_flow: tx.new_flow,
            refused: tx.refused,
            denied: tx.denied,
            traffic: tx.traffic,
        }
    }

    fn path(
        &self,
        tx: &mut Tx,
        hook: Hook,
        frame: &[u8],
        out: &mut [u8],
        now: u64,
    ) -> Result<(Verdict, Stat), Stat> {
        let h = frame::parse(frame, self.deviations.lengths())?;
        if !tx.st.gate(&h.key) {
            return Err(Stat::PassNotService);
        }
        let t = self.track(tx, hook, &h, now)?;
        if h.ttl <= 1 {
            // The stack answers with ICMP time exceeded.
            return Err(Stat::PassTtl);
        }
        let (route, xdp) = self.route(tx, hook, &h, &t, frame.len());
        let (hop, verdict, cause) = match (hook, route) {
            (
                Hook::Xdp,
                Fib::Neighbour {
                    ifindex,
                    smac,
                    dmac,
                    ..
                },
            ) if xdp => {
                let v = if ifindex == self.env.ingress {
                    Verdict::Tx
                } else {
                    Verdict::Redirect
                };
                (Hop::Macs(smac, dmac), v, Stat::Redirect)
            }
            // XDP forwards only between interfaces trusted with complete checksums.
            (Hook::Xdp, _) => return Err(Stat::PassToTc),
            (Hook::Tc, Fib::Neighbour { smac, dmac, .. }) => {
                (Hop::Macs(smac, dmac), Verdict::Redirect, Stat::Redirect)
            }
            (Hook::Tc, Fib::NoNeighbour { .. }) => {
                (Hop::Unresolved, Verdict::Redirect, Stat::Redirect)
            }
            (Hook::Tc, Fib::Stack) => (Hop::Stack, Verdict::Pass, Stat::PassToStack),
        };
        self.rewrite(tx, &h, &t.flow, hop, out, now)?;
        tx.traffic = Some((t.flow.service_id, t.flow.backend_id, h.tot_len as u64));
        Ok((verdict, cause))
    }

    // ---- Connection tracking ----------------------------------------------------------

    fn track(&self, tx: &mut Tx, hook: Hook, h: &Headers, now: u64) -> Result<Tracked, Stat> {
        let cfg = tx.st.config;
        if let Some(flow) = tx.flow(&h.key) {
            let idle = now.saturating_sub(flow.last_seen_ns);
            let expired = idle > timeout(&cfg, h.key.proto, flow.flags);
            // A client's new SYN on a tuple it has closed is a new connection.
            let reopened =
                flow.flags & (FLOW_F_CLOSING | FLOW_F_REPLY) == FLOW_F_CLOSING && h.opens();
            if !expired && !reopened {
                if h.first_fragment {
                    return Err(Stat::DropFragment);
                }
                if idle > TOUCH_EVERY_NS {
                    tx.update(&h.key, |e| e.last_seen_ns = now);
                }
                if h.closes() {
                    self.mark(tx, &h.key, &flow, FLOW_F_CLOSING | close_bits(h, &flow), 0);
                }
                return Ok(Tracked { flow, found: true });
            }
            // DNAT: the client's own kernel reused its port, which it does only when safe.
            let force = reopened && cfg.flags & CFG_F_PRESERVE_CLIENT_IP != 0;
            self.retire(tx, &h.key, &flow, now, force);
            tx.stats.push(Stat::FlowReplaced);
        }
        let service = lookup_service(tx.st, &h.key).ok_or(Stat::PassNotService)?;
        // Admission (issue 12): a service with allowed ranges drops every packet of a client
        // outside them before anything else (README: "Source ranges per service").
        if service.flags & SVC_F_ALLOW_LIST != 0 && !tx.st.allows(service.id, h.key.src) {
            tx.denied = Some(service.id);
            return Err(Stat::DropDenied);
        }
        if h.first_fragment {
            return Err(Stat::DropFragment);
        }
        if h.is_tcp() && !h.opens() {
            return Err(Stat::PassMidstream);
        }
        // Admission (issue 13): a service without backends refuses new connections, by
        // handing them to the stack, which has no socket there (README). XDP leaves them to
        // TC, which counts them, so each counts once.
        if service.count == 0 {
            return Err(match hook {
                Hook::Xdp => Stat::PassToTc,
                Hook::Tc => {
                    tx.refused = Some(service.id);
                    Stat::RefusedNoBackend
                }
            });
        }
        let flow = self.create(tx, h, &service, now)?;
        Ok(Tracked { flow, found: false })
    }

    /// The entry at `peer_key(flow)`, if it is `flow`'s other direction (its own peer key is
    /// `key`): a reused key may since carry another flow.
    fn own_peer(&self, tx: &Tx, key: &FlowKey, flow: &Flow) -> Option<(FlowKey, Flow)> {
        let pk = peer_key(flow, key.proto);
        let peer = tx.flow(&pk)?;
        (peer_key(&peer, key.proto) == *key).then_some((pk, peer))
    }

    /// Sets and clears flags on both directions of the flow `flow` found at `key`.
    fn mark(&self, tx: &mut Tx, key: &FlowKey, flow: &Flow, set: u32, clear: u32) {
        tx.update(key, |e| e.flags = (e.flags | set) & !clear);
        if let Some(pk) = self.peer_to_touch(tx, key, flow) {
            tx.update(&pk, |e| e.flags = (e.flags | set) & !clear);
        }
    }

    fn peer_to_touch(&self, tx: &Tx, key: &FlowKey, flow: &Flow) -> Option<FlowKey> {
        if self.deviations.marks_foreign_peer {
            Some(peer_key(flow, key.proto))
        } else {
            self.own_peer(tx, key, flow).map(|(k, _)| k)
        }
    }

    /// Removes a stale entry; its other direction goes too unless it is still in force (a
    /// closed flow's reply entry keeps its NAT port reserved), or `force`.
    fn retire(&self, tx: &mut Tx, key: &FlowKey, flow: &Flow, now: u64, force: bool) {
        if let Some((pk, peer)) = self.own_peer(tx, key, flow) {
            let cfg = tx.st.config;
            let idle = now.saturating_sub(peer.last_seen_ns);
            if force || idle > timeout(&cfg, key.proto, peer.flags) {
                tx.del(&pk);
            }
        }
        tx.del(key);
    }

    fn create(&self, tx: &mut Tx, h: &Headers, service: &Service, now: u64) -> Result<Flow, Stat> {
        let backend = self.pick_backend(tx, h, service)?;
        let cfg = tx.st.config;
        let key = h.key;
        let preserve = cfg.flags & CFG_F_PRESERVE_CLIENT_IP != 0;
        let mut fwd = Flow {
            new_src: if preserve { key.src } else { backend.nat_addr },
            new_dst: backend.addr,
            new_sport: key.sport,
            new_dport: backend.port,
            service_id: service.id,
            backend_id: backend.id,
            created_ns: now,
            last_seen_ns: now,
            // Full NAT chooses the timestamp offset at the first rewrite of the SYN.
            flags: if !preserve && h.is_tcp() {
                FLOW_F_TS_INIT
            } else {
                0
            },
            ..Flow::default()
        };
        // Replies come from the backend and must look as if the service sent them.
        let reply = Flow {
            new_src: key.dst,
            new_dst: key.src,
            new_sport: key.dport,
            new_dport: key.sport,
            flags: fwd.flags | FLOW_F_REPLY,
            ..fwd
        };
        let mut rkey = FlowKey {
            src: backend.addr,
            dst: fwd.new_src,
            sport: backend.port,
            dport: key.sport,
            proto: key.proto,
            _pad: [0; 3],
        };
        if preserve {
            if !self.claim_reply(tx, &rkey, &reply, now, h.is_tcp()) {
                return Err(Stat::DropFlowInsert);
            }
        } else {
            rkey.dport = self.claim_nat_port(tx, &mut rkey, &reply, &backend, now)?;
            fwd.new_sport = rkey.dport;
        }
        if tx.flow(&key).is_some() {
            // Only possible when the reply key is the packet's own key: no flow can work.
            tx.del(&rkey);
            return tx.flow(&key).ok_or(Stat::DropFlowInsert);
        }
        tx.put(key, fwd);
        tx.stats.push(Stat::FlowCreated);
        tx.new_flow = Some((service.id, backend.id));
        Ok(fwd)
    }

    fn pick_backend(&self, tx: &mut Tx, h: &Headers, service: &Service) -> Result<Backend, Stat> {
        let count = service.count;
        if count > MAX_BACKENDS_PER_SERVICE {
            return Err(Stat::ErrBackendLookup);
        }
        let index = if service.flags & SVC_F_AFFINITY_SOURCE != 0 {
            source_hash(h.key.src) % count
        } else {
            if service.id >= tx.st.max_services {
                return Err(Stat::ErrBackendLookup);
            }
            tx.rr_next(service.id) % count
        };
        let bkey = BackendKey {
            service_id: service.id,
            generation: service.generation,
            index,
        };
        tx.st
            .backends
            .get(&bkey)
            .copied()
            .ok_or(Stat::ErrBackendLookup)
    }

    /// Takes `rkey` for a reply entry if it is free or held by an expired flow (or, with
    /// `reopen`, by a closed one: DNAT, where the key is the client's own port).
    fn claim_reply(
        &self,
        tx: &mut Tx,
        rkey: &FlowKey,
        reply: &Flow,
        now: u64,
        reopen: bool,
    ) -> bool {
        let Some(held) = tx.flow(rkey) else {
            tx.put(*rkey, *reply);
            return true;
        };
        let cfg = tx.st.config;
        let closed = reopen && held.flags & FLOW_F_CLOSED == FLOW_F_CLOSED;
        let idle = now.saturating_sub(held.last_seen_ns);
        if !closed && idle <= timeout(&cfg, rkey.proto, held.flags) {
            return false;
        }
        if let Some((pk, _)) = self.own_peer(tx, rkey, &held) {
            tx.del(&pk);
        }
        tx.stats.push(Stat::FlowReplaced);
        tx.put(*rkey, *reply);
        true
    }

    /// README: "NAT ports are probed in the order of a per-backend cursor ... a port still
    /// held by a flow is skipped, never reused." Returns the port (raw).
    fn claim_nat_port(
        &self,
        tx: &mut Tx,
        rkey: &mut FlowKey,
        reply: &Flow,
        backend: &Backend,
        now: u64,
    ) -> Result<u16, Stat> {
        let cfg = tx.st.config;
        let (min, max) = if cfg.nat_port_min != 0 && cfg.nat_port_min <= cfg.nat_port_max {
            (cfg.nat_port_min as u32, cfg.nat_port_max as u32)
        } else {
            let d = Config::default();
            (d.nat_port_min as u32, d.nat_port_max as u32)
        };
        if backend.id >= tx.st.max_backend_ids {
            return Err(Stat::ErrBackendLookup);
        }
        for _ in 0..NAT_PORT_TRIES {
            let turn = tx.nat_next(backend.id);
            let port = ((min + turn % (max - min + 1)) as u16).to_be();
            rkey.dport = port;
            if self.claim_reply(tx, rkey, reply, now, false) {
                return Ok(port);
            }
        }
        Err(Stat::DropNatPorts)
    }

    // ---- Routing -----------------------------------------------------------------------

    /// Where the flow's packet goes and whether XDP may send it itself: from the route cached
    /// in the flow entry while the daemon's route generation and the ingress are the ones it
    /// was cached with, else from the FIB (cached then into a found entry).
    fn route(
        &self,
        tx: &mut Tx,
        hook: Hook,
        h: &Headers,
        t: &Tracked,
        frame_len: usize,
    ) -> (Fib, bool) {
        let f = &t.flow;
        let cfg = tx.st.config;
        let ingress = self.env.ingress;
        let tot = match hook {
            Hook::Xdp => h.tot_len,
            Hook::Tc => 0,
        };
        let mtu = (f.rt_flags >> 16) as u16;
        if f.rt_gen == cfg.route_gen && f.rt_in == ingress && (tot == 0 || mtu != 0) {
            if tot > mtu {
                return (Fib::Stack, false);
            }
            let cached = Fib::Neighbour {
                ifindex: f.rt_ifindex,
                smac: f.rt_smac,
                dmac: f.rt_dmac,
                mtu,
            };
            return (cached, f.rt_flags & RT_F_XDP != 0);
        }
        let answer = self.env.fib(f.new_dst, hook, tot, frame_len);
        let mut xdp = false;
        if let Fib::Neighbour {
            ifindex,
            smac,
            dmac,
            mtu,
        } = answer
        {
            xdp = tx.st.xdp_tx.contains(&ingress) && tx.st.xdp_tx.contains(&ifindex);
            let peer = tx.st.peer_ifs.contains(&ifindex);
            if t.found {
                tx.update(&h.key, |e| {
                    e.rt_ifindex = ifindex;
                    e.rt_in = ingress;
                    e.rt_smac = smac;
                    e.rt_dmac = dmac;
                    e.rt_flags = ((mtu as u32) << 16)
                        | if xdp { RT_F_XDP } else { 0 }
                        | if peer { RT_F_PEER } else { 0 };
                    e.rt_gen = cfg.route_gen;
                });
            }
        }
        (answer, xdp)
    }

    // ---- Rewriting ---------------------------------------------------------------------

    fn rewrite(
        &self,
        tx: &mut Tx,
        h: &Headers,
        flow: &Flow,
        hop: Hop,
        out: &mut [u8],
        now: u64,
    ) -> Result<(), Stat> {
        let ip_before = ip_residual(out, h.ihl);
        let l4_before = l4_residual(out, h);
        let l4_check = h.l4_check_at();
        let udp_without_checksum = !h.is_tcp() && out[l4_check] == 0 && out[l4_check + 1] == 0;
        out[ETH_LEN + 12..ETH_LEN + 16].copy_from_slice(&flow.new_src.to_ne_bytes());
        out[ETH_LEN + 16..ETH_LEN + 20].copy_from_slice(&flow.new_dst.to_ne_bytes());
        if !matches!(hop, Hop::Stack) {
            out[ETH_LEN + 8] = h.ttl - 1;
        }
        if let Hop::Macs(smac, dmac) = hop {
            out[0..6].copy_from_slice(&dmac);
            out[6..12].copy_from_slice(&smac);
        }
        out[h.l4..h.l4 + 2].copy_from_slice(&flow.new_sport.to_ne_bytes());
        out[h.l4 + 2..h.l4 + 4].copy_from_slice(&flow.new_dport.to_ne_bytes());
        if flow.flags & (FLOW_F_TS | FLOW_F_TS_INIT) != 0 {
            self.timestamps(tx, h, flow, out, now)?;
        }
        set_check(out, ETH_LEN + 10, ip_before, |f| ip_residual(f, h.ihl));
        if !udp_without_checksum {
            set_check(out, l4_check, l4_before, |f| l4_residual(f, h));
            // UDP: 0 means "no checksum", so a computed 0 is sent as its other form.
            if !h.is_tcp() && out[l4_check] == 0 && out[l4_check + 1] == 0 {
                out[l4_check..l4_check + 2].copy_from_slice(&[0xff, 0xff]);
            }
        }
        Ok(())
    }

    /// Full NAT's TCP timestamp translation (README): the first rewrite of a new flow picks
    /// `ts_off` so that TSval towards the backend starts at the balancer's clock; TSval gets
    /// `+ts_off` towards the backend, TSecr `-ts_off` on replies; a backend's SYN-ACK without
    /// the option turns translation off for the flow.
    fn timestamps(
        &self,
        tx: &mut Tx,
        h: &Headers,
        flow: &Flow,
        out: &mut [u8],
        now: u64,
    ) -> Result<(), Stat> {
        let read = |out: &[u8], at: usize| -> Result<u32, Stat> {
            Ok(u32::from_be_bytes(
                out.get(at..at + 4)
                    .ok_or(Stat::ErrRewrite)?
                    .try_into()
                    .unwrap(),
            ))
        };
        let mut ts_off = flow.ts_off;
        if flow.flags & FLOW_F_TS_INIT != 0 {
            let mut set = 0;
            if let Some(at) = h.ts_at {
                ts_off = ((now >> TS_CLOCK_SHIFT) as u32).wrapping_sub(read(out, at + 2)?);
                set = FLOW_F_TS;
            }
            if tx.update(&h.key, |e| e.ts_off = ts_off) {
                if let Some(pk) = self.peer_to_touch(tx, &h.key, flow) {
                    tx.update(&pk, |e| e.ts_off = ts_off);
                }
                self.mark(tx, &h.key, flow, set, FLOW_F_TS_INIT);
            }
            if set == 0 {
                return Ok(());
            }
        } else if flow.flags & (FLOW_F_REPLY | FLOW_F_TS) == FLOW_F_REPLY | FLOW_F_TS
            && h.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK
            && h.ts_at.is_none()
        {
            if tx.flow(&h.key).is_some() {
                self.mark(tx, &h.key, flow, 0, FLOW_F_TS);
            }
            return Ok(());
        }
        let Some(at) = h.ts_at else {
            return Ok(());
        };
        let (field, delta) = if flow.flags & FLOW_F_REPLY == 0 {
            (at + 2, ts_off)
        } else {
            (at + 6, ts_off.wrapping_neg())
        };
        let v = read(out, field)?.wrapping_add(delta);
        out[field..field + 4].copy_from_slice(&v.to_be_bytes());
        Ok(())
    }
}

/// HAProxy's `balance source`: a hash of the client address, the same backend while the set
/// is unchanged (Knuth's multiplicative hash, its high half folded in).
pub fn source_hash(src: u32) -> u32 {
    let h = u32::from_be(src).wrapping_mul(0x9e37_79b1);
    h ^ (h >> 16)
}

/// Exact (address, port, protocol) first; then the wildcard, if the address is the agent's.
fn lookup_service(st: &State, key: &FlowKey) -> Option<Service> {
    let mut skey = ServiceKey {
        addr: key.dst,
        port: key.dport,
        proto: key.proto,
        _pad: 0,
    };
    if let Some(s) = st.services.get(&skey) {
        return Some(*s);
    }
    if !st.local_addrs.contains(&key.dst) {
        return None;
    }
    skey.addr = 0;
    st.services.get(&skey).copied()
}

/// Flags a FIN or RST sets, by which side sends it: an RST ends the connection with no
/// TIME_WAIT anywhere; a backend that closes first will hold TIME_WAIT.
fn close_bits(h: &Headers, flow: &Flow) -> u32 {
    if h.tcp_flags & TCP_RST != 0 {
        FLOW_F_CLOSED
    } else if flow.flags & FLOW_F_REPLY == 0 {
        FLOW_F_FIN_CLIENT
    } else if flow.flags & FLOW_F_FIN_CLIENT == 0 {
        FLOW_F_FIN_BACKEND | FLOW_F_BACKEND_CLOSED_FIRST
    } else {
        FLOW_F_FIN_BACKEND
    }
}

/// Per-service and per-backend counters as the model expects them to have grown.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub stats: Vec<u64>,
    pub services: BTreeMap<u32, Counters>,
    pub backends: BTreeMap<u32, Counters>,
    /// `LB_SVC_REFUSED` by service id.
    pub refused: BTreeMap<u32, u64>,
    /// `LB_SVC_DENIED` by service id.
    pub denied: BTreeMap<u32, u64>,
}

impl Tally {
    pub fn add(&mut self, st: &State, o: &Outcome) {
        if self.stats.is_empty() {
            self.stats = vec![0; lb_common::STAT_COUNT as usize];
        }
        for s in &o.stats {
            self.stats[*s as usize] += 1;
        }
        if let Some((s, b)) = o.new_flow {
            if s < st.max_services {
                self.services.entry(s).or_default().new_flows += 1;
            }
            if b < st.max_backend_ids {
                self.backends.entry(b).or_default().new_flows += 1;
            }
        }
        if let Some(s) = o.refused
            && s < st.max_services
        {
            *self.refused.entry(s).or_default() += 1;
        }
        if let Some(s) = o.denied
            && s < st.max_services
        {
            *self.denied.entry(s).or_default() += 1;
        }
        if let Some((s, b, bytes)) = o.traffic {
            if s < st.max_services {
                let c = self.services.entry(s).or_default();
                c.packets += 1;
                c.bytes += bytes;
            }
            if b < st.max_backend_ids {
                let c = self.backends.entry(b).or_default();
                c.packets += 1;
                c.bytes += bytes;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddrV4;

    use lb_common::{PORT_SERVICE, ServiceKey};

    use super::*;
    use crate::packets::{Pkt, TCP_SYN, read};

    fn raw(s: &str) -> u32 {
        u32::from(s.parse::<std::net::Ipv4Addr>().unwrap()).to_be()
    }

    fn model() -> Model {
        Model {
            env: Env {
                ingress: 1,
                local: vec![raw("10.0.0.1")],
                routes: vec![(
                    u32::from_be(raw("192.168.1.11")),
                    32,
                    Fib::Neighbour {
                        ifindex: 3,
                        smac: [2, 0, 0, 0, 1, 1],
                        dmac: [2, 0, 0, 0, 1, 11],
                        mtu: 1500,
                    },
                )],
            },
            deviations: Deviations::NONE,
        }
    }

    fn one_service() -> State {
        let mut st = State {
            max_services: 16,
            max_backend_ids: 16,
            ..State::default()
        };
        let key = ServiceKey {
            addr: raw("10.0.0.1"),
            port: 10000u16.to_be(),
            proto: 6,
            _pad: 0,
        };
        st.services.insert(
            key,
            Service {
                id: 1,
                count: 1,
                generation: 0,
                flags: 0,
            },
        );
        let bkey = BackendKey {
            service_id: 1,
            generation: 0,
            index: 0,
        };
        let b = Backend {
            addr: raw("192.168.1.11"),
            nat_addr: raw("10.0.0.1"),
            port: 80u16.to_be(),
            _pad: 0,
            id: 2,
        };
        st.backends.insert(bkey, b);
        st.ports.insert((PORT_SERVICE, 6, 10000));
        st
    }

    #[test]
    fn a_syn_to_a_service_opens_both_directions_and_leaves_valid_checksums() {
        let (m, mut st) = (model(), one_service());
        let client: SocketAddrV4 = "10.0.0.2:40000".parse().unwrap();
        let syn = Pkt::tcp(client, "10.0.0.1:10000".parse().unwrap(), TCP_SYN)
            .with_syn_timestamps(1000, 0);
        let o = m.step(&st, Hook::Tc, &syn.bytes(), 7 << TS_CLOCK_SHIFT);
        assert_eq!((o.verdict, o.cause), (Verdict::Redirect, Stat::Redirect));
        assert_eq!(o.flows.len(), 2, "forward and reply entries: {:?}", o.flows);
        let seen = read(&o.out);
        assert!(seen.ip_checksum_ok && seen.l4_checksum_ok, "{seen:?}");
        assert_eq!(seen.dst, "192.168.1.11:80".parse().unwrap());
        assert_eq!(seen.src, "10.0.0.1:1024".parse().unwrap());
        assert_eq!(seen.ttl, 63);
        assert_eq!(
            seen.timestamps,
            Some((7, 0)),
            "TSval starts at the balancer's clock"
        );
        assert_eq!(o.nat_cursor.get(&2), Some(&1));
        st.apply(&o);
        // The same SYN again finds the flow: no new entry, the same rewrite.
        let again = m.step(&st, Hook::Tc, &syn.bytes(), 8 << TS_CLOCK_SHIFT);
        assert_eq!(read(&again.out).src, seen.src);
        assert_eq!(again.new_flow, None);
    }

    #[test]
    fn what_is_not_for_a_service_passes_untouched() {
        let (m, st) = (model(), one_service());
        let other = Pkt::tcp(
            "10.0.0.2:40000".parse().unwrap(),
            "10.0.0.1:9999".parse().unwrap(),
            TCP_SYN,
        )
        .bytes();
        let o = m.step(&st, Hook::Xdp, &other, 0);
        assert_eq!((o.verdict, o.cause), (Verdict::Pass, Stat::PassNotService));
        assert_eq!(o.out, other);
        assert!(o.flows.is_empty());
        for cut in 14..other.len() {
            let o = m.step(&st, Hook::Xdp, &other[..cut], 0);
            assert_eq!(o.verdict, Verdict::Pass, "cut at {cut}");
            assert_eq!(o.out, &other[..cut]);
        }
    }

    #[test]
    fn a_checksum_set_by_residual_keeps_an_error_as_it_was() {
        let mut f = Pkt::tcp(
            "10.0.0.2:1".parse().unwrap(),
            "10.0.0.1:2".parse().unwrap(),
            TCP_SYN,
        )
        .bytes();
        f[24] ^= 0x10;
        let before = frame::ip_residual(&f, 20);
        f[26] = 99;
        frame::set_check(&mut f, 24, before, |f| frame::ip_residual(f, 20));
        assert_eq!(frame::ip_residual(&f, 20), before);
        assert_ne!(before, 0xffff);
    }
}
