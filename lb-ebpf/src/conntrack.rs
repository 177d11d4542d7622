//! Connection tracking: find the flow a packet belongs to (either direction), or create one
//! for a new connection to a service, choosing its backend and, in full NAT, its source port.
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::bindings::{BPF_ANY, BPF_NOEXIST};
use aya_log_ebpf::warn;
use lb_common::{
    Backend, BackendKey, CFG_F_PRESERVE_CLIENT_IP, Config, FLOW_F_BACKEND_CLOSED_FIRST,
    FLOW_F_CLOSED, FLOW_F_CLOSING, FLOW_F_FIN_BACKEND, FLOW_F_FIN_CLIENT, FLOW_F_LEAST_CONN,
    FLOW_F_REPLY, FLOW_F_TS_INIT, Flow, FlowKey, IPPROTO_TCP, LEASTCONN_SCAN,
    MAX_BACKENDS_PER_SERVICE, NAT_PORT_TRIES, SVC_F_AFFINITY_SOURCE, SVC_F_ALLOW_LIST,
    SVC_F_LEAST_CONN, Service, ServiceKey, Stat,
};

use crate::{
    context::Packet,
    maps::{
        LB_BACKENDS, LB_BE_LIVE, LB_BE_STATS, LB_FLOWS, LB_LOCAL_ADDRS, LB_NAT_CURSOR, LB_RR,
        LB_SERVICES, LB_SVC_REFUSED, LB_SVC_STATS, allowed, config, count, count_denied,
    },
    parse::{Parsed, TCP_RST},
};

/// Refresh `last_seen_ns` at most this often: fewer writes to a shared cache line.
const TOUCH_EVERY_NS: u64 = 100_000_000;

/// A packet's flow, and its map entry when the packet found an existing one (the route cache
/// lives there; a flow created by this packet caches its route from the next one on).
pub struct Tracked {
    pub flow: Flow,
    pub entry: Option<*mut Flow>,
}

/// Returns the flow for this packet: an existing one, or a new one if the packet opens a
/// connection to a service. `Err` says why the packet is not (or cannot be) balanced. The
/// context only says which hook runs (a refused connection is the hook's to answer).
#[inline(always)]
pub fn track<C: Packet>(_hook: &C, p: &Parsed, now: u64) -> Result<Tracked, Stat> {
    let cfg = config();
    if let Some(entry) = LB_FLOWS.get_ptr_mut(&p.key) {
        // SAFETY: the map hands out a pointer to a live element; we copy it out.
        let flow = unsafe { *entry };
        let idle = now.saturating_sub(flow.last_seen_ns);
        let expired = idle > cfg.timeout_ns(p.key.proto, flow.flags);
        // A client reusing its port after a close starts a new connection.
        let reopened =
            flow.flags & (FLOW_F_CLOSING | FLOW_F_REPLY) == FLOW_F_CLOSING && p.is_tcp_open();
        if !expired && !reopened {
            if p.first_fragment {
                return Err(Stat::DropFragment);
            }
            if idle > TOUCH_EVERY_NS {
                // SAFETY: as above; a racing writer can only store another recent time.
                unsafe { (*entry).last_seen_ns = now };
            }
            if p.key.proto == IPPROTO_TCP && p.is_tcp_close() {
                let side = if flow.flags & FLOW_F_REPLY == 0 {
                    FLOW_F_FIN_CLIENT
                } else if flow.flags & FLOW_F_FIN_CLIENT == 0 {
                    // The backend closes first: it will hold the connection in TIME_WAIT.
                    FLOW_F_FIN_BACKEND | FLOW_F_BACKEND_CLOSED_FIRST
                } else {
                    FLOW_F_FIN_BACKEND
                };
                // An RST leaves no TIME_WAIT anywhere.
                let bits = if p.tcp_flags & TCP_RST != 0 {
                    FLOW_F_CLOSED
                } else {
                    side
                };
                mark(entry, &p.key, &flow, FLOW_F_CLOSING | bits, 0);
                if flow.flags & FLOW_F_LEAST_CONN != 0
                    && flow.flags & FLOW_F_CLOSED != FLOW_F_CLOSED
                    && bits | (flow.flags & FLOW_F_CLOSED) == FLOW_F_CLOSED
                {
                    count_live(flow.backend_id, u64::MAX);
                }
            }
            return Ok(Tracked {
                flow,
                entry: Some(entry),
            });
        }
        // In DNAT the client's own kernel reused its port, which it does only when that is
        // safe: its new SYN replaces the old connection in both directions, as conntrack does.
        let force = reopened && cfg.flags & CFG_F_PRESERVE_CLIENT_IP != 0;
        retire(&p.key, &flow, &cfg, now, force);
        count(Stat::FlowReplaced);
    }

    let service = lookup_service(&p.key).ok_or(Stat::PassNotService)?;
    // Before anything else about the packet: a client outside the service's ranges gets
    // nothing from it (HAProxy's `tcp-request connection reject`), not even a refusal.
    if service.flags & SVC_F_ALLOW_LIST != 0 && !allowed(service.id, p.key.src) {
        count_denied(service.id);
        return Err(Stat::DropDenied);
    }
    if p.first_fragment {
        return Err(Stat::DropFragment);
    }
    if p.key.proto == IPPROTO_TCP && !p.is_tcp_open() {
        return Err(Stat::PassMidstream);
    }
    create::<C>(p, &service, &cfg, now).map(|flow| Tracked { flow, entry: None })
}

/// Exact (address, port, protocol) first; then the wildcard, if the address is the agent's.
#[inline(always)]
fn lookup_service(key: &FlowKey) -> Option<Service> {
    let mut skey = ServiceKey {
        addr: key.dst,
        port: key.dport,
        proto: key.proto,
        _pad: 0,
    };
    // SAFETY: copied out at once.
    if let Some(s) = unsafe { LB_SERVICES.get(&skey) } {
        return Some(*s);
    }
    // SAFETY: only tested for presence.
    unsafe { LB_LOCAL_ADDRS.get(&key.dst) }?;
    skey.addr = 0;
    // SAFETY: copied out at once.
    unsafe { LB_SERVICES.get(&skey) }.copied()
}

/// Sets and clears flags on both directions of the flow found at `key` (a FIN or RST, so
/// both expire by the same timeout; timestamps chosen or declined, so both rewrite them or
/// neither does).
#[inline(always)]
pub fn mark(entry: *mut Flow, key: &FlowKey, flow: &Flow, set: u32, clear: u32) {
    // SAFETY: entry points at a live map element.
    unsafe { (*entry).flags = ((*entry).flags | set) & !clear };
    if let Some(peer) = own_peer_mut(key, flow) {
        // SAFETY: as above.
        unsafe { (*peer).flags = ((*peer).flags | set) & !clear };
    }
}

/// The other direction's entry of `flow` (found under `key`), in place, if it still belongs to
/// it: after a client reused its tuple, the entry at the old flow's peer key is the new flow's,
/// and an old flow's late FIN must not close it (the fuzzer found that).
#[inline(always)]
pub fn own_peer_mut(key: &FlowKey, flow: &Flow) -> Option<*mut Flow> {
    let peer = LB_FLOWS.get_ptr_mut(FlowKey::peer_of(flow, key.proto))?;
    // SAFETY: a live map element, read once.
    let back = FlowKey::peer_of(unsafe { &*peer }, key.proto);
    (back == *key).then_some(peer)
}

/// The other direction's entry of `flow` (found under `key`), if it still belongs to it: a
/// reused key may since carry a new flow with another rewrite.
#[inline(always)]
fn own_peer(key: &FlowKey, flow: &Flow) -> Option<(FlowKey, Flow)> {
    let peer_key = FlowKey::peer_of(flow, key.proto);
    // SAFETY: copied out at once.
    let peer = unsafe { *LB_FLOWS.get_ptr(&peer_key)? };
    (FlowKey::peer_of(&peer, key.proto) == *key).then_some((peer_key, peer))
}

/// Drops a stale entry. Its other direction goes too, unless it is still in force (and not
/// `force`d): a closed flow's reply entry keeps the NAT port reserved while the backend holds
/// TIME_WAIT, even when the client's side of the key is reused at once.
#[inline(always)]
fn retire(key: &FlowKey, flow: &Flow, cfg: &Config, now: u64, force: bool) {
    if let Some((peer_key, peer)) = own_peer(key, flow)
        && (force || now.saturating_sub(peer.last_seen_ns) > cfg.timeout_ns(key.proto, peer.flags))
    {
        let _ = LB_FLOWS.remove(&peer_key);
    }
    let _ = LB_FLOWS.remove(key);
}

#[inline(always)]
fn pick_backend(p: &Parsed, service: &Service) -> Result<Backend, Stat> {
    let count = service.count;
    if count > MAX_BACKENDS_PER_SERVICE {
        return Err(Stat::ErrBackendLookup);
    }
    let index = if service.flags & SVC_F_AFFINITY_SOURCE != 0 {
        // HAProxy's `balance source`: the same client address lands on the same backend
        // while the set is unchanged.
        let h = u32::from_be(p.key.src).wrapping_mul(0x9e37_79b1);
        (h ^ (h >> 16)).checked_rem(count).unwrap_or(0)
    } else {
        let cursor = LB_RR
            .get_ptr_mut(service.id)
            .ok_or(Stat::ErrBackendLookup)?;
        // SAFETY: array elements are stable for the map's life; the add is atomic (BPF ISA v3
        // fetch-and-add), so concurrent new flows on other CPUs each get their own turn.
        // (The BPF target has no CAS, so core's AtomicU32 is unavailable; the intrinsic is.
        // SeqCst on purpose: LLVM 22 lowers a Relaxed add to the non-fetching `lock add` even
        // when the old value is used, and every BPF fetch-add is fully ordered anyway.)
        let turn: u32 = unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::SeqCst }>(cursor, 1) };
        let turn = turn.checked_rem(count).unwrap_or(0);
        least_loaded(service.id, service.generation, count, turn, service.flags)
    };
    let key = BackendKey {
        service_id: service.id,
        generation: service.generation,
        index,
    };
    // SAFETY: copied out at once.
    unsafe { LB_BACKENDS.get(&key) }
        .copied()
        .ok_or(Stat::ErrBackendLookup)
}

/// A leastconn flow of `backend_id` was created (`by` 1) or closed (`by` u64::MAX, which
/// takes one off, wrapping; see MAP_BACKEND_LIVE for a close that races the daemon's recount).
#[inline(always)]
fn count_live(backend_id: u32, by: u64) {
    if let Some(live) = LB_BE_LIVE.get_ptr_mut(backend_id) {
        // SAFETY: array elements are stable for the map's life; an atomic add, as for LB_RR.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(live, by) };
    }
}

/// `balance leastconn`: of the `LEASTCONN_SCAN` backends from index `turn` on (wrapping, so a
/// smaller set is compared whole), the first with the fewest live flows in `LB_BE_LIVE` (the
/// new flow counts there once it is created). Starting at the round-robin turn spreads ties,
/// and in a larger set moves the window compared. Round-robin services get `turn` back.
///
/// Written for the verifier: a function of its own (a BPF-to-BPF call, scalars in and out)
/// that every round-robin choice goes through too, so the caller keeps one path, and a loop
/// that never ends early on the set's size (inlined with an early end, lb_tc took 125k more
/// instructions: the loop's every length, once per path reaching it).
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn least_loaded(
    service_id: u32,
    generation: u32,
    count: u32,
    turn: u32,
    flags: u32,
) -> u32 {
    if flags & SVC_F_LEAST_CONN == 0 || count == 0 {
        return turn;
    }
    let mut best = turn;
    let mut best_live = u64::MAX;
    for i in 0..LEASTCONN_SCAN {
        let index = (turn + i) % count;
        let key = BackendKey {
            service_id,
            generation,
            index,
        };
        // SAFETY: copied out at once.
        let Some(id) = (unsafe { LB_BACKENDS.get(&key) }).map(|b| b.id) else {
            continue;
        };
        // Below zero (wrapped) is zero.
        let live = LB_BE_LIVE
            .get(id)
            .map_or(u64::MAX, |n| (*n as i64).max(0) as u64);
        if live < best_live {
            best_live = live;
            best = index;
        }
    }
    best
}

/// Claims `rkey` for a reply entry: free, or held by a flow that has expired. With
/// `reopen` (DNAT, where the key is the client's own address and port) also one held by a
/// closed connection: the client's kernel reused its port, which it does only when safe.
#[inline(always)]
fn claim_reply(rkey: &FlowKey, reply: &Flow, cfg: &Config, now: u64, reopen: bool) -> bool {
    if LB_FLOWS.insert(rkey, reply, BPF_NOEXIST as u64).is_ok() {
        return true;
    }
    let Some(held) = LB_FLOWS.get_ptr(rkey) else {
        return false;
    };
    // SAFETY: copied out at once.
    let held = unsafe { *held };
    let closed = reopen && held.flags & FLOW_F_CLOSED == FLOW_F_CLOSED;
    if !closed && now.saturating_sub(held.last_seen_ns) <= cfg.timeout_ns(rkey.proto, held.flags) {
        return false;
    }
    if let Some((peer_key, _)) = own_peer(rkey, &held) {
        let _ = LB_FLOWS.remove(&peer_key);
    }
    count(Stat::FlowReplaced);
    LB_FLOWS.insert(rkey, reply, BPF_ANY as u64).is_ok()
}

#[inline(always)]
fn create<C: Packet>(p: &Parsed, service: &Service, cfg: &Config, now: u64) -> Result<Flow, Stat> {
    if service.count == 0 {
        return Err(refuse::<C>(service.id));
    }
    let backend = pick_backend(p, service)?;
    let key = &p.key;
    let preserve = cfg.flags & CFG_F_PRESERVE_CLIENT_IP != 0;
    let mut fwd = Flow {
        new_src: if preserve { key.src } else { backend.nat_addr },
        new_dst: backend.addr,
        new_sport: key.sport,
        new_dport: backend.port,
        flags: 0,
        service_id: service.id,
        backend_id: backend.id,
        created_ns: now,
        last_seen_ns: now,
        ..Flow::default()
    };
    if service.flags & SVC_F_LEAST_CONN != 0 {
        // Counted on its backend once it is in the table; its close counts it off.
        fwd.flags |= FLOW_F_LEAST_CONN;
    }
    if !preserve && key.proto == IPPROTO_TCP {
        // The options are read once per packet, where the rewrite needs them (nat.rs): one
        // walk of them, late in the program, keeps the verifier's work small.
        fwd.flags |= FLOW_F_TS_INIT;
    }
    // Replies arrive from the backend and must look as if the service sent them.
    let reply = Flow {
        new_src: key.dst,
        new_dst: key.src,
        new_sport: key.dport,
        new_dport: key.sport,
        flags: fwd.flags | FLOW_F_REPLY,
        ..fwd
    };
    let mut rkey = FlowKey::new(
        backend.addr,
        fwd.new_src,
        backend.port,
        key.sport,
        key.proto,
    );
    if preserve {
        if !claim_reply(&rkey, &reply, cfg, now, key.proto == IPPROTO_TCP) {
            warn!(
                &(),
                "reply tuple {:i}:{} -> {:i}:{} already tracked: new flow dropped",
                u32::from_be(rkey.src),
                u16::from_be(rkey.sport),
                u32::from_be(rkey.dst),
                u16::from_be(rkey.dport)
            );
            return Err(Stat::DropFlowInsert);
        }
    } else {
        rkey.dport = claim_nat_port(&mut rkey, &reply, &backend, cfg, now)?;
        fwd.new_sport = rkey.dport;
    }
    if LB_FLOWS.insert(key, &fwd, BPF_NOEXIST as u64).is_err() {
        // Another CPU created this flow first (a retransmitted SYN): use its choice.
        let _ = LB_FLOWS.remove(&rkey);
        return match LB_FLOWS.get_ptr(key) {
            // SAFETY: copied out at once.
            Some(won) => Ok(unsafe { *won }),
            None => Err(Stat::DropFlowInsert),
        };
    }
    count(Stat::FlowCreated);
    count_new_flow(service.id, backend.id);
    if fwd.flags & FLOW_F_LEAST_CONN != 0 {
        // Counted once the flow exists: a SYN refused for want of a NAT port adds nothing.
        count_live(backend.id, 1);
    }
    Ok(fwd)
}

/// Claims a NAT source port towards `backend` for the reply entry `rkey` (its `dport`).
/// Ports are probed in the order of a per-backend cursor, so the next one tried is the one
/// handed out longest ago: with short flows it is free at the first probe, and only ports
/// still held by live (or TIME_WAIT-reserved) flows are skipped.
#[inline(always)]
fn claim_nat_port(
    rkey: &mut FlowKey,
    reply: &Flow,
    backend: &Backend,
    cfg: &Config,
    now: u64,
) -> Result<u16, Stat> {
    let (min, max) = if cfg.nat_port_min <= cfg.nat_port_max && cfg.nat_port_min != 0 {
        (cfg.nat_port_min as u32, cfg.nat_port_max as u32)
    } else {
        let d = Config::default();
        (d.nat_port_min as u32, d.nat_port_max as u32)
    };
    let span = max - min + 1;
    let cursor = LB_NAT_CURSOR
        .get_ptr_mut(backend.id)
        .ok_or(Stat::ErrBackendLookup)?;
    for _ in 0..NAT_PORT_TRIES {
        // SAFETY: array elements are stable for the map's life; fetch-and-add as in LB_RR.
        let turn: u32 = unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::SeqCst }>(cursor, 1) };
        let port = ((min + turn.checked_rem(span).unwrap_or(0)) as u16).to_be();
        rkey.dport = port;
        if claim_reply(rkey, reply, cfg, now, false) {
            return Ok(port);
        }
    }
    // Rare and actionable (widen --nat-port-range or add an agent address): say so.
    warn!(
        &(),
        "no free NAT port towards {:i}:{} after {} probes",
        u32::from_be(backend.addr),
        u16::from_be(backend.port),
        NAT_PORT_TRIES
    );
    Err(Stat::DropNatPorts)
}

/// A new connection to a service without backends goes to the stack, which refuses it as
/// for any closed port: the client learns at once instead of waiting for its connect
/// timeout. Counted where the stack is next (TC), so a packet that XDP passes on counts once.
#[inline(always)]
fn refuse<C: Packet>(service_id: u32) -> Stat {
    if C::PASSES_TO_TC {
        return Stat::PassToTc;
    }
    if let Some(c) = LB_SVC_REFUSED.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot.
        unsafe { *c += 1 };
    }
    Stat::RefusedNoBackend
}

#[inline(always)]
fn count_new_flow(service_id: u32, backend_id: u32) {
    if let Some(c) = LB_SVC_STATS.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot.
        unsafe { (*c).new_flows += 1 };
    }
    if let Some(c) = LB_BE_STATS.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU slot.
        unsafe { (*c).new_flows += 1 };
    }
}
