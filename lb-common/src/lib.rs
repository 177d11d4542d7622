//! Map keys, values, names and limits shared by the BPF data plane and the `lb` daemon.
//! Everything here is `#[repr(C)]` plain data with explicit padding, so both sides agree byte for byte.
#![no_std]

pub mod csum;
pub mod tcpopt;

use core::mem::size_of;

/// Addresses and ports in map keys and values are kept in network byte order,
/// exactly as they appear in packets, so the data plane never swaps bytes.
/// Userspace converts with `u32::from_be`/`to_be` at the edge.
pub type Be32 = u32;
pub type Be16 = u16;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

// ---- Map names (BPF object names are limited to 15 bytes) -------------------

/// `ServiceKey -> Service`. Written by the daemon, read by the data plane for new flows.
pub const MAP_SERVICES: &str = "LB_SERVICES";
/// `BackendKey -> Backend`. Written by the daemon (a new generation per change), read on new flows.
pub const MAP_BACKENDS: &str = "LB_BACKENDS";
/// `FlowKey -> Flow` (LRU). Written by the data plane (both directions of every flow),
/// read by it on every packet; the daemon reads it for `lb flows` and removes expired pairs.
pub const MAP_FLOWS: &str = "LB_FLOWS";
/// `u32 (IPv4, network order) -> LocalAddr`: the agent's own addresses, on which wildcard
/// services answer. Written by the daemon from netlink.
pub const MAP_LOCAL_ADDRS: &str = "LB_LOCAL_ADDRS";
/// `u32 ifindex -> u32`: interfaces where XDP may forward on its own: frames arrive with
/// complete checksums and the interface accepts redirected XDP frames. Written by the daemon.
pub const MAP_XDP_TX: &str = "LB_XDP_TX";
/// `u32 ifindex -> u32`: veths of this namespace whose peer is in another one (a Calico
/// task's `cali*` link). TC hands a packet bound there straight to the peer's ingress
/// (`bpf_redirect_peer`), skipping the veth's queue and a second softirq pass. Written by the
/// daemon from the interfaces it finds; a map of its own, so that pins of earlier builds are
/// adopted as they are.
pub const MAP_PEER_IFS: &str = "LB_PEER_IFS";
/// `[0] -> Config`. Written by the daemon at start, read by the data plane.
pub const MAP_CONFIG: &str = "LB_CONFIG";
/// `service id -> u32` round-robin cursor, advanced atomically by the data plane.
pub const MAP_RR: &str = "LB_RR";
/// `backend id -> u32` NAT port cursor (full NAT), advanced atomically by the data plane.
pub const MAP_NAT_CURSOR: &str = "LB_NAT_CURSOR";
/// `u32 word -> u64` bitmap of the ports that may concern the data plane (`port_gate_slot`):
/// service ports (as destination) and backend ports (as the source of replies), per protocol.
/// Written by the daemon (bits only ever added while it runs), read first by the data plane,
/// so a packet on any other port passes after one array read, with no hash lookup.
pub const MAP_PORTS: &str = "LB_PORTS";
/// Per-CPU `service id -> Counters`. Written by the data plane, summed by the daemon.
pub const MAP_SERVICE_STATS: &str = "LB_SVC_STATS";
/// Per-CPU `backend id -> Counters`. Written by the data plane, summed by the daemon.
pub const MAP_BACKEND_STATS: &str = "LB_BE_STATS";
/// Per-CPU `service id -> u64`: new connections to the service refused because it had no
/// backends (`Stat::RefusedNoBackend`). Written by the data plane (TC), summed by the daemon.
/// A map of its own, so that pins of earlier builds are adopted as they are.
pub const MAP_SERVICE_REFUSED: &str = "LB_SVC_REFUSED";
/// Per-CPU `Stat as u32 -> u64`: drops, errors and passes by cause.
pub const MAP_STATS: &str = "LB_STATS";
/// LPM trie `AclKey -> u32`: the client ranges allowed to open flows to a service whose
/// flags carry `SVC_F_ALLOW_LIST` (marathon-lb's `HAPROXY_{n}_BACKEND_NETWORK_ALLOWED_ACL`,
/// the `allow` of a static file, `--allow`). Written by the daemon, read on new flows.
pub const MAP_ACL: &str = "LB_ACL";
/// Per-CPU `service id -> u64`: packets to the service dropped because their client is
/// outside its allowed ranges (`Stat::DropDenied`). Written by the data plane, summed by the
/// daemon. A map of its own, so that pins of earlier builds are adopted as they are.
pub const MAP_SERVICE_DENIED: &str = "LB_SVC_DENIED";
/// `backend id -> u64`: the live flows of a leastconn service's backend. The data plane adds
/// one for each new flow it gives the backend and takes one off when a packet closes such a
/// flow (atomic adds on the shared slot; a value above `i64::MAX`, a close that raced a
/// recount, reads as zero). Expiry and LRU evictions, which no program sees, come off at the
/// daemon's sweep of the flow table, which writes every leastconn backend's count anew. A map
/// of its own, so that pins of earlier builds are adopted as they are.
pub const MAP_BACKEND_LIVE: &str = "LB_BE_LIVE";
/// `DnsName -> DnsAddrs`: the A records the XDP fast path answers with, written by the
/// daemon from the DNS zone (names of at most `DNS_NAME_MAX` wire bytes with at most
/// `DNS_ADDRS_MAX` addresses; the userspace server answers the rest).
pub const MAP_DNS_A: &str = "LB_DNS_A";
/// Per-CPU `DnsStat as u32 -> u64`: queries the fast path answered, and those it left to the
/// userspace server.
pub const MAP_DNS_STATS: &str = "LB_DNS_STATS";

/// Every map's name, in the order of `MAPS` (the order `lb status` and the README list them).
pub const ALL_MAPS: [&str; MAPS.len()] = {
    let mut names = [""; MAPS.len()];
    let mut i = 0;
    while i < MAPS.len() {
        names[i] = MAPS[i].name;
        i += 1;
    }
    names
};

/// Program names in the object (also the names under which they are pinned).
pub const PROG_XDP: &str = "lb_xdp";
pub const PROG_TC: &str = "lb_tc";

// ---- Default capacities (the daemon may override them at load time) ---------

pub const MAX_SERVICES: u32 = 16_384;
/// Backend slots across all services and both generations of a service during a swap.
pub const MAX_BACKEND_SLOTS: u32 = 262_144;
/// Distinct backend ids (for per-backend counters).
pub const MAX_BACKEND_IDS: u32 = 65_536;
/// Flow-table entries: two per flow (one per direction).
pub const MAX_FLOW_ENTRIES: u32 = 524_288;
pub const MAX_LOCAL_ADDRS: u32 = 256;
pub const MAX_XDP_TX: u32 = 1_024;
/// Veths `LB_PEER_IFS` holds (one per task on the agent, plus room).
pub const MAX_PEER_IFS: u32 = 16_384;
/// Allowed ranges across all services (`LB_ACL`; its nodes are allocated as they are used).
pub const MAX_ACL_ENTRIES: u32 = 65_536;
/// Backends one service may have; bounds the data plane's index arithmetic.
pub const MAX_BACKENDS_PER_SERVICE: u32 = 4_096;
/// NAT source ports probed for a new flow before giving up. Probes follow a per-backend
/// cursor, so the next port tried is the one handed out longest ago (the likeliest free):
/// expected probes stay near one until the range is truly full of live flows.
pub const NAT_PORT_TRIES: u32 = 32;

// ---- The port gate -------------------------------------------------------------

/// `LB_PORTS` kinds: a service's port (a packet's destination) or a backend's port (the
/// source of its replies).
pub const PORT_SERVICE: u32 = 0;
pub const PORT_BACKEND: u32 = 2;
/// Words in `LB_PORTS`: 65,536 bits for each of the four kinds (service/backend × TCP/UDP).
pub const PORT_GATE_WORDS: u32 = 4 * 1024;

/// The word and bit of `LB_PORTS` for `port` (host order) of `kind` and `proto`.
#[inline(always)]
pub const fn port_gate_slot(kind: u32, proto: u8, port: u16) -> (u32, u64) {
    let k = kind + if proto == IPPROTO_UDP { 1 } else { 0 };
    ((k << 10) | (port as u32 >> 6), 1u64 << (port & 63))
}

// ---- Services and backends -------------------------------------------------

/// Identifies a service: destination address, port and protocol of the client's packet.
/// `addr == 0` is a wildcard: the service answers on every address in `LB_LOCAL_ADDRS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub addr: Be32,
    pub port: Be16,
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<ServiceKey>() == 8);

/// `Service::flags`: pick the backend from a hash of the client address
/// (HAProxy's `balance source`) instead of round-robin.
pub const SVC_F_AFFINITY_SOURCE: u32 = 1;
/// `Service::flags`: only clients inside the service's ranges in `LB_ACL` may open flows to
/// it; packets from others are dropped and counted in `LB_SVC_DENIED`. Without the flag,
/// every client may (no lookup at all).
pub const SVC_F_ALLOW_LIST: u32 = 2;
/// `Service::flags`: HAProxy's `balance leastconn`: a new flow goes to the backend with the
/// fewest live flows in `LB_BE_LIVE` (ties in round-robin order); sets of up to
/// `LEASTCONN_SCAN` backends are compared whole, larger ones in a window of that many from the
/// round-robin turn.
pub const SVC_F_LEAST_CONN: u32 = 4;
/// The largest backend set leastconn compares whole (and the window in larger ones).
pub const LEASTCONN_SCAN: u32 = 8;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// Stable id: index into `LB_RR` and `LB_SVC_STATS`.
    pub id: u32,
    /// Backends in the current generation; 0 means new connections are refused (the stack
    /// answers them) while flows already tracked drain.
    pub count: u32,
    /// Generation of the backend set in `LB_BACKENDS`. Swapping it is the one
    /// write that moves the service to a new set, so no packet sees half a change.
    pub generation: u32,
    pub flags: u32,
}
const _: () = assert!(size_of::<Service>() == 16);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BackendKey {
    pub service_id: u32,
    pub generation: u32,
    pub index: u32,
}
const _: () = assert!(size_of::<BackendKey>() == 12);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub addr: Be32,
    /// Agent address used as the source in full-NAT mode: the one the kernel
    /// would use to reach `addr`, so replies come back to this agent.
    pub nat_addr: Be32,
    pub port: Be16,
    pub _pad: u16,
    /// Stable id: index into `LB_BE_STATS`.
    pub id: u32,
}
const _: () = assert!(size_of::<Backend>() == 16);

// ---- Access control ----------------------------------------------------------

/// What `LB_ACL` matches on: the service (all 32 bits always part of the prefix) then the
/// client's address (network order, so the prefix covers its leading bits).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AclData {
    pub service_id: u32,
    pub addr: Be32,
}
const _: () = assert!(size_of::<AclData>() == 8);

/// An `LB_ACL` key as the kernel lays out LPM trie keys: the prefix length in bits, then
/// the data (`aya`'s `lpm_trie::Key<AclData>` on both sides has this layout).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AclKey {
    pub prefix_len: u32,
    pub data: AclData,
}
const _: () = assert!(size_of::<AclKey>() == 12);

impl AclKey {
    /// The entry allowing `addr/len` (network order) to reach `service_id`.
    pub const fn range(service_id: u32, addr: Be32, len: u8) -> Self {
        Self {
            prefix_len: 32 + len as u32,
            data: AclData { service_id, addr },
        }
    }

    /// The key a new flow's client is looked up with.
    pub const fn client(service_id: u32, addr: Be32) -> Self {
        Self::range(service_id, addr, 32)
    }
}

// ---- Flows -----------------------------------------------------------------

/// A packet's 5-tuple as it arrives (either direction).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: Be32,
    pub dst: Be32,
    pub sport: Be16,
    pub dport: Be16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<FlowKey>() == 16);

/// `Flow::flags`: this entry translates replies (backend -> client).
pub const FLOW_F_REPLY: u32 = 1;
/// FIN or RST seen in either direction: the flow lives only `tcp_closing_timeout` more.
pub const FLOW_F_CLOSING: u32 = 2;
/// The client sent FIN. With `FLOW_F_FIN_BACKEND` (or after an RST, which sets both) the
/// connection is over, and its NAT port may be taken after `tcp_closed_timeout`.
pub const FLOW_F_FIN_CLIENT: u32 = 4;
/// The backend sent FIN.
pub const FLOW_F_FIN_BACKEND: u32 = 8;
pub const FLOW_F_CLOSED: u32 = FLOW_F_FIN_CLIENT | FLOW_F_FIN_BACKEND;
/// The backend sent the first FIN, so it now holds the connection in TIME_WAIT. Without
/// `FLOW_F_TS` a new flow reusing the NAT port would be refused there (PAWS: another client's
/// timestamps are not the old connection's), so the port stays reserved for
/// `tcp_time_wait_timeout`.
pub const FLOW_F_BACKEND_CLOSED_FIRST: u32 = 16;
/// Full NAT with TCP timestamps on both sides: the client's TSval is shifted by `ts_off` on
/// the way to the backend (and TSecr back on replies), so that every (NAT address, NAT port,
/// backend) tuple shows the backend one clock, the balancer's, rising across connections. A
/// backend in TIME_WAIT then accepts the next SYN on that tuple at once (RFC 6191), and the
/// NAT port is free as soon as the flow is closed.
pub const FLOW_F_TS: u32 = 32;
/// A new full-NAT TCP flow whose timestamp offset is still to be chosen: the first program
/// that rewrites its SYN (XDP or TC) reads the client's TSval, then sets `FLOW_F_TS` and
/// `ts_off`, or nothing when the SYN carries no timestamps.
pub const FLOW_F_TS_INIT: u32 = 64;
/// The flow of a leastconn service: counted in `LB_BE_LIVE` when it was created, and counted
/// off by the packet that closes it (FINs both ways, or an RST).
pub const FLOW_F_LEAST_CONN: u32 = 128;

/// The balancer's timestamp clock for new flows: `bpf_ktime_get_ns() >> TS_CLOCK_SHIFT`,
/// about 15 kHz. Faster than any client's clock (RFC 7323: at most 1 kHz), so a new
/// connection's first TSval is above the last one of any earlier connection on the same
/// tuple; slow enough that 32-bit comparisons hold for 39 hours.
pub const TS_CLOCK_SHIFT: u32 = 16;

/// What to do with packets matching a `FlowKey`: the addresses and ports to write.
/// The entry for the other direction is found by swapping the new addresses and ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    pub new_src: Be32,
    pub new_dst: Be32,
    pub new_sport: Be16,
    pub new_dport: Be16,
    pub flags: u32,
    pub service_id: u32,
    pub backend_id: u32,
    /// With `FLOW_F_TS`: added to the client's TSval towards the backend (host order, mod
    /// 2^32); the reply entry subtracts it from TSecr.
    pub ts_off: u32,
    /// The route cache below is valid while this equals `Config::route_gen` (0: empty).
    pub rt_gen: u32,
    /// `bpf_ktime_get_ns()` when the flow was created and when a packet last matched.
    pub created_ns: u64,
    pub last_seen_ns: u64,
    /// Cached FIB answer for this direction: egress interface and MACs, valid for packets
    /// arriving on `rt_in`; `rt_flags` says what XDP may do with it.
    pub rt_ifindex: u32,
    pub rt_in: u32,
    pub rt_smac: [u8; 6],
    pub rt_dmac: [u8; 6],
    pub rt_flags: u32,
}
const _: () = assert!(size_of::<Flow>() == 72);

/// `Flow::rt_flags`: ingress and egress are both in `LB_XDP_TX`, so XDP may forward.
pub const RT_F_XDP: u32 = 1;
/// `Flow::rt_flags`: the egress is in `LB_PEER_IFS`, so TC may redirect to its peer.
pub const RT_F_PEER: u32 = 2;

impl FlowKey {
    /// The key of a 5-tuple, built as four words, padding included. Written out field by
    /// field, the padding's `[0; 3]` is a 3-byte memset, which the BPF backend compiles to a
    /// call to a byte-by-byte loop: on every packet the data plane parses.
    #[inline(always)]
    pub const fn new(src: Be32, dst: Be32, sport: Be16, dport: Be16, proto: u8) -> Self {
        let (s, d) = (sport.to_ne_bytes(), dport.to_ne_bytes());
        let words = [
            src,
            dst,
            u32::from_ne_bytes([s[0], s[1], d[0], d[1]]),
            u32::from_ne_bytes([proto, 0, 0, 0]),
        ];
        // SAFETY: FlowKey is repr(C), 16 bytes and 4-aligned, with no invalid bit patterns;
        // the words hold its fields at their offsets and zeros in the padding.
        unsafe { core::mem::transmute::<[u32; 4], Self>(words) }
    }

    /// Key of the entry for the other direction of the flow this value belongs to.
    #[inline(always)]
    pub const fn peer_of(flow: &Flow, proto: u8) -> Self {
        Self::new(
            flow.new_dst,
            flow.new_src,
            flow.new_dport,
            flow.new_sport,
            proto,
        )
    }
}

// ---- Configuration -----------------------------------------------------------

/// `Config::flags`: DNAT only, backends see the client's address.
pub const CFG_F_PRESERVE_CLIENT_IP: u32 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub flags: u32,
    /// Inclusive NAT source port range (host order) for full NAT.
    pub nat_port_min: u16,
    pub nat_port_max: u16,
    pub tcp_timeout_ns: u64,
    /// After a FIN in one direction (the other may still be sending).
    pub tcp_closing_timeout_ns: u64,
    /// After FINs both ways (client first) or an RST: just long enough for the last ACK.
    pub tcp_closed_timeout_ns: u64,
    /// After FINs both ways, backend first, without timestamps: as long as the backend's
    /// TIME_WAIT.
    pub tcp_time_wait_timeout_ns: u64,
    pub udp_timeout_ns: u64,
    /// Bumped by the daemon whenever routes, neighbours, links or `LB_XDP_TX` change: every
    /// flow's cached route is then looked up again.
    pub route_gen: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<Config>() == 56);

impl Default for Config {
    fn default() -> Self {
        Self {
            flags: 0,
            nat_port_min: 1_024,
            nat_port_max: 32_767,
            tcp_timeout_ns: 3_600 * 1_000_000_000,
            tcp_closing_timeout_ns: 10 * 1_000_000_000,
            tcp_closed_timeout_ns: 2 * 1_000_000_000,
            tcp_time_wait_timeout_ns: 60 * 1_000_000_000,
            udp_timeout_ns: 60 * 1_000_000_000,
            route_gen: 1,
            _pad: 0,
        }
    }
}

impl Config {
    /// How long a flow may stay idle before a new packet treats it as gone.
    pub const fn timeout_ns(&self, proto: u8, flags: u32) -> u64 {
        if proto == IPPROTO_UDP {
            self.udp_timeout_ns
        } else if flags & FLOW_F_CLOSED == FLOW_F_CLOSED {
            if flags & (FLOW_F_BACKEND_CLOSED_FIRST | FLOW_F_TS) == FLOW_F_BACKEND_CLOSED_FIRST {
                self.tcp_time_wait_timeout_ns
            } else {
                self.tcp_closed_timeout_ns
            }
        } else if flags & FLOW_F_CLOSING != 0 {
            self.tcp_closing_timeout_ns
        } else {
            self.tcp_timeout_ns
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalAddr {
    pub ifindex: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<LocalAddr>() == 8);

// ---- Counters ----------------------------------------------------------------

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}
const _: () = assert!(size_of::<Counters>() == 24);

/// Data-plane events counted per CPU in `LB_STATS`, by cause.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Not IPv4 (IPv6, ARP, ...): passed.
    PassNotIpv4 = 0,
    /// IPv4 but neither TCP nor UDP: passed.
    PassNotL4,
    /// Headers cut short or lengths that do not add up: passed for the stack to judge.
    PassMalformed,
    /// A fragment without ports (not the first): passed.
    PassFragment,
    /// TCP or UDP that is neither a tracked flow nor a service: passed untouched.
    PassNotService,
    /// TCP without SYN to a service and no flow (e.g. a connection that predates us): passed.
    PassMidstream,
    /// First fragment of a datagram to a service: cannot be balanced without reassembly.
    DropFragment,
    /// A new connection to a service with no backends: passed to the stack, which has no
    /// socket on the port and so answers as for any closed port (a TCP reset, an ICMP port
    /// unreachable), as marathon-lb does by writing no frontend. (Index 7 was
    /// `drop_no_backend` before; the slot is reused so `LB_STATS` keeps its size.)
    RefusedNoBackend,
    /// No free NAT source port after `NAT_PORT_TRIES` probes.
    DropNatPorts,
    /// The flow table refused an insert.
    DropFlowInsert,
    /// Backend index out of range or backend missing mid-swap.
    ErrBackendLookup,
    /// TTL would reach zero: passed so the stack answers with ICMP.
    PassTtl,
    /// Forwarded by redirect to the egress interface.
    Redirect,
    /// Rewritten and handed to the kernel stack (no neighbour or route known).
    PassToStack,
    /// XDP could not redirect to the egress interface: left for the TC program.
    PassToTc,
    /// Flows created.
    FlowCreated,
    /// Stale flow entries replaced by the data plane (expired or reused after close).
    FlowReplaced,
    /// A packet the program could not rewrite (helper failure): dropped.
    ErrRewrite,
    /// A packet to a service from a client outside its allowed ranges: dropped. Counted per
    /// service in `LB_SVC_DENIED` only, outside `LB_STATS` (`STAT_COUNT` stops before it): a
    /// slot there would change that map's size, and pins of earlier builds would no longer be
    /// adopted.
    DropDenied,
}

/// Slots of `LB_STATS`: every `Stat` before `DropDenied`.
pub const STAT_COUNT: u32 = Stat::ErrRewrite as u32 + 1;

impl Stat {
    pub const ALL: [Self; STAT_COUNT as usize] = [
        Self::PassNotIpv4,
        Self::PassNotL4,
        Self::PassMalformed,
        Self::PassFragment,
        Self::PassNotService,
        Self::PassMidstream,
        Self::DropFragment,
        Self::RefusedNoBackend,
        Self::DropNatPorts,
        Self::DropFlowInsert,
        Self::ErrBackendLookup,
        Self::PassTtl,
        Self::Redirect,
        Self::PassToStack,
        Self::PassToTc,
        Self::FlowCreated,
        Self::FlowReplaced,
        Self::ErrRewrite,
    ];

    /// Name used in metrics labels and `lb status`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::PassNotIpv4 => "pass_not_ipv4",
            Self::PassNotL4 => "pass_not_tcp_udp",
            Self::PassMalformed => "pass_malformed",
            Self::PassFragment => "pass_fragment",
            Self::PassNotService => "pass_not_service",
            Self::PassMidstream => "pass_midstream_no_flow",
            Self::DropFragment => "drop_fragment",
            Self::RefusedNoBackend => "refused_no_backend",
            Self::DropNatPorts => "drop_nat_ports_exhausted",
            Self::DropFlowInsert => "drop_flow_insert",
            Self::ErrBackendLookup => "error_backend_lookup",
            Self::PassTtl => "pass_ttl_exceeded",
            Self::Redirect => "redirect",
            Self::PassToStack => "pass_to_stack",
            Self::PassToTc => "pass_to_tc",
            Self::FlowCreated => "flow_created",
            Self::FlowReplaced => "flow_replaced",
            Self::ErrRewrite => "error_rewrite",
            Self::DropDenied => "drop_denied",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type is repr(C), made only of integers, with explicit padding.
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::Service {}
    unsafe impl aya::Pod for super::BackendKey {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::Flow {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::LocalAddr {}
    unsafe impl aya::Pod for super::Counters {}
    unsafe impl aya::Pod for super::DnsName {}
    unsafe impl aya::Pod for super::DnsAddrs {}
    unsafe impl aya::Pod for super::AclData {}
}

// ---- The DNS fast path -----------------------------------------------------------

/// Longest query name the XDP fast path answers, in wire format with the root label.
pub const DNS_NAME_MAX: usize = 64;
/// Most A records in one answer of the fast path.
pub const DNS_ADDRS_MAX: usize = 8;
/// Names the fast path holds by default (`lb run --max-dns-names`).
pub const MAX_DNS_NAMES: u32 = 65_536;

/// A name in DNS wire format (lowercase labels behind their length bytes, the root's zero),
/// zero-padded to `DNS_NAME_MAX`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DnsName {
    pub wire: [u8; DNS_NAME_MAX],
}
const _: () = assert!(size_of::<DnsName>() == DNS_NAME_MAX);

impl Default for DnsName {
    fn default() -> Self {
        Self {
            wire: [0; DNS_NAME_MAX],
        }
    }
}

/// The A records of one name: `count` addresses (network order) in `addrs`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsAddrs {
    pub count: u32,
    pub addrs: [Be32; DNS_ADDRS_MAX],
}
const _: () = assert!(size_of::<DnsAddrs>() == 4 + 4 * DNS_ADDRS_MAX);

/// Slots of `LB_DNS_STATS`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsStat {
    /// Answered in place by the XDP program.
    Answered = 0,
    /// A query to the DNS address and port the fast path did not answer (another type, a
    /// name it does not hold, EDNS options it does not echo, ...): left to the server.
    ToServer,
}
pub const DNS_STAT_COUNT: u32 = DnsStat::ToServer as u32 + 1;

// ---- The map table -------------------------------------------------------------

/// How many entries a map holds: fixed by this build, or one of the capacities the daemon
/// chooses at load time (`lb run --max-services`, `--max-backends`, `--max-flows`,
/// `--max-dns-names`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapSize {
    Fixed(u32),
    Services,
    BackendSlots,
    BackendIds,
    FlowEntries,
    DnsNames,
}

/// One map of the data plane as both sides must agree on it: its name, key and value sizes,
/// and size. `lb-ebpf/src/maps.rs` declares the maps for the kernel; the daemon loads, pins,
/// checks and sizes them from this table alone, and checks the object against it at load.
#[derive(Clone, Copy, Debug)]
pub struct MapDef {
    pub name: &'static str,
    pub key_size: usize,
    pub value_size: usize,
    pub size: MapSize,
}

const fn def<K, V>(name: &'static str, size: MapSize) -> MapDef {
    MapDef {
        name,
        key_size: size_of::<K>(),
        value_size: size_of::<V>(),
        size,
    }
}

/// Every map the data plane declares.
pub const MAPS: [MapDef; 19] = [
    def::<ServiceKey, Service>(MAP_SERVICES, MapSize::Services),
    def::<BackendKey, Backend>(MAP_BACKENDS, MapSize::BackendSlots),
    def::<FlowKey, Flow>(MAP_FLOWS, MapSize::FlowEntries),
    def::<u32, LocalAddr>(MAP_LOCAL_ADDRS, MapSize::Fixed(MAX_LOCAL_ADDRS)),
    def::<u32, u32>(MAP_XDP_TX, MapSize::Fixed(MAX_XDP_TX)),
    def::<u32, Config>(MAP_CONFIG, MapSize::Fixed(1)),
    def::<u32, u32>(MAP_RR, MapSize::Services),
    def::<u32, u32>(MAP_NAT_CURSOR, MapSize::BackendIds),
    def::<u32, u64>(MAP_PORTS, MapSize::Fixed(PORT_GATE_WORDS)),
    def::<u32, Counters>(MAP_SERVICE_STATS, MapSize::Services),
    def::<u32, Counters>(MAP_BACKEND_STATS, MapSize::BackendIds),
    def::<u32, u64>(MAP_STATS, MapSize::Fixed(STAT_COUNT)),
    def::<u32, u64>(MAP_SERVICE_REFUSED, MapSize::Services),
    def::<DnsName, DnsAddrs>(MAP_DNS_A, MapSize::DnsNames),
    def::<u32, u64>(MAP_DNS_STATS, MapSize::Fixed(DNS_STAT_COUNT)),
    def::<AclKey, u32>(MAP_ACL, MapSize::Fixed(MAX_ACL_ENTRIES)),
    def::<u32, u64>(MAP_SERVICE_DENIED, MapSize::Services),
    def::<u32, u64>(MAP_BACKEND_LIVE, MapSize::BackendIds),
    def::<u32, u32>(MAP_PEER_IFS, MapSize::Fixed(MAX_PEER_IFS)),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_built_from_words_is_the_key_written_field_by_field() {
        let k = FlowKey::new(0x0a00_0001, 0xc0a8_0102, 0x1234, 0xabcd, IPPROTO_TCP);
        let fields = FlowKey {
            src: 0x0a00_0001,
            dst: 0xc0a8_0102,
            sport: 0x1234,
            dport: 0xabcd,
            proto: IPPROTO_TCP,
            _pad: [0; 3],
        };
        assert_eq!(k, fields);
    }

    #[test]
    fn peer_of_swaps_the_rewrite() {
        let fwd = Flow {
            new_src: 1,
            new_dst: 2,
            new_sport: 3,
            new_dport: 4,
            ..Flow::default()
        };
        let peer = FlowKey::peer_of(&fwd, IPPROTO_TCP);
        assert_eq!((peer.src, peer.dst, peer.sport, peer.dport), (2, 1, 4, 3));
        assert_eq!(peer.proto, IPPROTO_TCP);
    }

    #[test]
    fn stat_names_are_unique_and_cover_all() {
        for (i, s) in Stat::ALL.iter().enumerate() {
            assert_eq!(*s as usize, i, "Stat::ALL out of order at {i}");
            for t in &Stat::ALL[i + 1..] {
                assert_ne!(s.name(), t.name());
            }
        }
    }

    #[test]
    fn map_names_fit_the_kernel_limit() {
        for name in ALL_MAPS {
            assert!(
                name.len() <= 15,
                "{name} is longer than BPF_OBJ_NAME_LEN - 1"
            );
        }
    }

    #[test]
    fn timeouts_follow_protocol_and_state() {
        let c = Config::default();
        assert_eq!(c.timeout_ns(IPPROTO_UDP, 0), c.udp_timeout_ns);
        assert_eq!(c.timeout_ns(IPPROTO_TCP, 0), c.tcp_timeout_ns);
        assert_eq!(
            c.timeout_ns(IPPROTO_TCP, FLOW_F_CLOSING),
            c.tcp_closing_timeout_ns
        );
    }

    #[test]
    fn port_gate_slots_are_distinct_and_in_range() {
        let mut seen = [0u64; PORT_GATE_WORDS as usize];
        for kind in [PORT_SERVICE, PORT_BACKEND] {
            for proto in [IPPROTO_TCP, IPPROTO_UDP] {
                for port in [0u16, 1, 63, 64, 80, 10000, 65535] {
                    let (w, bit) = port_gate_slot(kind, proto, port);
                    assert!(w < PORT_GATE_WORDS);
                    assert_eq!(bit.count_ones(), 1);
                    assert_eq!(seen[w as usize] & bit, 0, "{kind} {proto} {port}");
                    seen[w as usize] |= bit;
                }
            }
        }
    }

    #[test]
    fn time_wait_reservation_only_without_timestamps() {
        let c = Config::default();
        let backend_first = FLOW_F_CLOSING | FLOW_F_CLOSED | FLOW_F_BACKEND_CLOSED_FIRST;
        assert_eq!(
            c.timeout_ns(IPPROTO_TCP, backend_first),
            c.tcp_time_wait_timeout_ns
        );
        assert_eq!(
            c.timeout_ns(IPPROTO_TCP, backend_first | FLOW_F_TS),
            c.tcp_closed_timeout_ns
        );
        assert_eq!(
            c.timeout_ns(IPPROTO_TCP, FLOW_F_CLOSING | FLOW_F_CLOSED),
            c.tcp_closed_timeout_ns
        );
    }
}
