//! What the fuzzer feeds the data plane: map contents (a scenario: services, backends, flows
//! in every state, configuration) and packets (valid ones for those maps, replies, every kind
//! of bad input, random bytes, mutations of valid packets), all drawn from one seeded RNG.
use std::net::{Ipv4Addr, SocketAddrV4};

use lb_common::{
    Backend, BackendKey, CFG_F_PRESERVE_CLIENT_IP, Config, FLOW_F_BACKEND_CLOSED_FIRST,
    FLOW_F_CLOSED, FLOW_F_CLOSING, FLOW_F_FIN_BACKEND, FLOW_F_FIN_CLIENT, FLOW_F_REPLY, FLOW_F_TS,
    FLOW_F_TS_INIT, Flow, FlowKey, IPPROTO_TCP, IPPROTO_UDP, PORT_BACKEND, PORT_SERVICE, RT_F_XDP,
    SVC_F_AFFINITY_SOURCE, SVC_F_ALLOW_LIST, Service, ServiceKey,
};
use rand::{Rng, rngs::StdRng, seq::IndexedRandom};

use crate::{
    model::{State, peer_key},
    packets::{Pkt, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, ts_option},
};

/// The interfaces of the fuzzer's namespace, by index.
#[derive(Clone, Copy, Debug)]
pub struct Ifaces {
    pub lo: u32,
    pub up0: u32,
    pub cali0: u32,
}

fn ip(s: &str) -> u32 {
    u32::from(s.parse::<Ipv4Addr>().unwrap()).to_be()
}

/// Agent addresses (both on up0), a bind address that is not local, and the wildcard.
const SERVICE_ADDRS: [&str; 4] = ["0.0.0.0", "10.0.0.1", "10.9.0.1", "10.0.0.5"];
pub const LOCAL_ADDRS: [&str; 2] = ["10.0.0.1", "10.9.0.1"];
/// Clients: a resolved neighbour, unresolved ones, one without a route, a task, the agent.
const CLIENTS: [&str; 6] = [
    "10.0.0.2",
    "10.0.0.3",
    "10.9.0.7",
    "203.0.113.9",
    "192.168.1.11",
    "10.0.0.1",
];
/// Allowed ranges: some hold some of `CLIENTS`, at every kind of prefix length.
const ALLOWED: [(&str, u8); 7] = [
    ("10.0.0.0", 8),
    ("10.0.0.2", 32),
    ("10.0.0.0", 31),
    ("10.9.0.0", 16),
    ("203.0.113.0", 24),
    ("192.168.0.0", 16),
    ("0.0.0.0", 0),
];
/// Tasks: a resolved neighbour, an unresolved one, one behind the uplink, one without a
/// route, the agent itself.
const BACKENDS: [&str; 5] = [
    "192.168.1.11",
    "192.168.1.12",
    "10.0.0.2",
    "172.16.0.9",
    "10.0.0.1",
];
const NAT_ADDRS: [&str; 3] = ["10.0.0.1", "10.9.0.1", "0.0.0.0"];
/// Service and backend ports overlap on purpose: a reply's source port is then also a
/// service port, and a client's packet may look like a reply.
const SERVICE_PORTS: [u16; 3] = [80, 10000, 10001];
const BACKEND_PORTS: [u16; 3] = [80, 8080, 10000];

fn pick<T: Copy>(rng: &mut StdRng, xs: &[T]) -> T {
    *xs.choose(rng).unwrap()
}

fn timeout(rng: &mut StdRng) -> u64 {
    pick(rng, &[1, 1_000_000, 1_000_000_000, 3_600_000_000_000])
}

/// A fresh scenario: what the maps hold before the batch's first packet. `now` is the clock
/// at setup, which injected flows' times are placed around.
pub fn scenario(rng: &mut StdRng, ifs: Ifaces, max: (u32, u32), now: u64) -> State {
    let (nat_port_min, nat_port_max) = pick(
        rng,
        &[
            (1024, 32767),
            (20000, 20003),
            (20000, 20000),
            (30000, 20000),
            (0, 5),
        ],
    );
    let config = Config {
        flags: if rng.random_bool(0.3) {
            CFG_F_PRESERVE_CLIENT_IP
        } else {
            0
        },
        nat_port_min,
        nat_port_max,
        tcp_timeout_ns: timeout(rng),
        tcp_closing_timeout_ns: timeout(rng),
        tcp_closed_timeout_ns: timeout(rng),
        tcp_time_wait_timeout_ns: timeout(rng),
        udp_timeout_ns: timeout(rng),
        route_gen: rng.random_range(1..u32::MAX),
        _pad: 0,
    };
    let mut st = State {
        config,
        max_services: max.0,
        max_backend_ids: max.1,
        ..State::default()
    };
    st.local_addrs = LOCAL_ADDRS.iter().map(|a| ip(a)).collect();
    for i in [ifs.lo, ifs.up0, ifs.cali0] {
        if rng.random_bool(0.6) {
            st.xdp_tx.insert(i);
        }
        if rng.random_bool(0.5) {
            st.peer_ifs.insert(i);
        }
    }
    let n_services = rng.random_range(1..=5);
    for _ in 0..n_services {
        let key = ServiceKey {
            addr: ip(pick(rng, &SERVICE_ADDRS)),
            port: pick(rng, &SERVICE_PORTS).to_be(),
            proto: if rng.random_bool(0.7) {
                IPPROTO_TCP
            } else {
                IPPROTO_UDP
            },
            _pad: 0,
        };
        let id = if rng.random_bool(0.03) {
            max.0 + rng.random_range(0..3)
        } else {
            rng.random_range(0..8)
        };
        let n = rng.random_range(0..=3u32);
        let service = Service {
            id,
            count: match rng.random_range(0..20) {
                0 => n + 1,
                1 => 5000,
                _ => n,
            },
            generation: rng.random_range(0..4),
            flags: if rng.random_bool(0.25) {
                SVC_F_AFFINITY_SOURCE
            } else {
                0
            } | if rng.random_bool(0.3) {
                SVC_F_ALLOW_LIST
            } else {
                0
            },
        };
        // Ranges for the id (shared by services that share it, as the map is keyed by id),
        // sometimes none at all: a flagged service without ranges admits nobody.
        if service.flags & SVC_F_ALLOW_LIST != 0 || rng.random_bool(0.1) {
            for _ in 0..rng.random_range(0..=3) {
                let (addr, len) = pick(rng, &ALLOWED);
                st.acl.insert((id, ip(addr), len));
            }
        }
        for index in 0..n {
            if rng.random_bool(0.05) {
                continue;
            }
            let b = Backend {
                addr: ip(pick(rng, &BACKENDS)),
                nat_addr: ip(if rng.random_bool(0.9) {
                    pick(rng, &NAT_ADDRS[..2])
                } else {
                    NAT_ADDRS[2]
                }),
                port: pick(rng, &BACKEND_PORTS).to_be(),
                _pad: 0,
                id: if rng.random_bool(0.03) {
                    max.1 + rng.random_range(0..3)
                } else {
                    rng.random_range(0..6)
                },
            };
            let bkey = BackendKey {
                service_id: id,
                generation: service.generation,
                index,
            };
            st.backends.insert(bkey, b);
            st.ports
                .insert((PORT_BACKEND, key.proto, u16::from_be(b.port)));
            if b.id < max.1 {
                st.nat_cursor.insert(b.id, rng.random());
            }
        }
        st.ports
            .insert((PORT_SERVICE, key.proto, u16::from_be(key.port)));
        if id < max.0 {
            st.rr.insert(id, rng.random());
        }
        st.services.insert(key, service);
    }
    // A stale or generous gate now and then: the gate may only ever let more through.
    for _ in 0..rng.random_range(0..3) {
        let kind = pick(rng, &[PORT_SERVICE, PORT_BACKEND]);
        let proto = pick(rng, &[IPPROTO_TCP, IPPROTO_UDP]);
        let port = pick(rng, &[80, 8080, 10000, 10001, 40000, 20000, 53]);
        st.ports.insert((kind, proto, port));
    }
    let n_flows = rng.random_range(0..=6);
    for _ in 0..n_flows {
        inject_flow(rng, &mut st, ifs, now);
    }
    st
}

/// Puts a flow in some state straight into the table, both directions or one, as a daemon
/// restart, an eviction or an earlier connection may leave it.
fn inject_flow(rng: &mut StdRng, st: &mut State, ifs: Ifaces, now: u64) {
    let Some((skey, svc)) = st
        .services
        .iter()
        .map(|(k, s)| (*k, *s))
        .collect::<Vec<_>>()
        .choose(rng)
        .copied()
    else {
        return;
    };
    let backend = Backend {
        addr: ip(pick(rng, &BACKENDS)),
        nat_addr: ip(pick(rng, &NAT_ADDRS[..2])),
        port: pick(rng, &BACKEND_PORTS).to_be(),
        _pad: 0,
        id: rng.random_range(0..6),
    };
    let preserve = st.config.flags & CFG_F_PRESERVE_CLIENT_IP != 0;
    let client = ip(pick(rng, &CLIENTS));
    let sport = rng.random_range(40000..40008u16).to_be();
    let vip = if skey.addr == 0 {
        ip(pick(rng, &LOCAL_ADDRS))
    } else {
        skey.addr
    };
    let key = FlowKey {
        src: client,
        dst: vip,
        sport,
        dport: skey.port,
        proto: skey.proto,
        _pad: [0; 3],
    };
    let nat_port = if preserve {
        sport
    } else {
        rng.random_range(20000..20004u16).to_be()
    };
    let flags = pick(
        rng,
        &[
            0,
            FLOW_F_TS,
            FLOW_F_TS_INIT,
            FLOW_F_CLOSING | FLOW_F_FIN_CLIENT,
            FLOW_F_CLOSING | FLOW_F_FIN_BACKEND | FLOW_F_BACKEND_CLOSED_FIRST,
            FLOW_F_CLOSING | FLOW_F_CLOSED,
            FLOW_F_CLOSING | FLOW_F_CLOSED | FLOW_F_BACKEND_CLOSED_FIRST,
            FLOW_F_CLOSING | FLOW_F_CLOSED | FLOW_F_BACKEND_CLOSED_FIRST | FLOW_F_TS,
        ],
    );
    let last_seen = match rng.random_range(0..4) {
        0 => now.saturating_sub(4_000_000_000_000),
        1 => now.saturating_sub(200_000_000),
        2 => now + 1_000_000_000_000,
        _ => now,
    };
    let mut fwd = Flow {
        new_src: if preserve { client } else { backend.nat_addr },
        new_dst: backend.addr,
        new_sport: nat_port,
        new_dport: backend.port,
        flags,
        service_id: svc.id,
        backend_id: backend.id,
        ts_off: rng.random(),
        created_ns: now.saturating_sub(rng.random_range(0..1_000_000_000)),
        last_seen_ns: last_seen,
        ..Flow::default()
    };
    if rng.random_bool(0.5) {
        route_cache(rng, st, ifs, &mut fwd);
    }
    let mut reply = Flow {
        new_src: key.dst,
        new_dst: key.src,
        new_sport: key.dport,
        new_dport: key.sport,
        flags: flags | FLOW_F_REPLY,
        rt_gen: 0,
        ..fwd
    };
    if rng.random_bool(0.5) {
        route_cache(rng, st, ifs, &mut reply);
    }
    if rng.random_bool(0.3) {
        reply.last_seen_ns = pick(rng, &[now, now.saturating_sub(4_000_000_000_000)]);
    }
    let rkey = peer_key(&fwd, key.proto);
    match rng.random_range(0..10) {
        0 => {
            st.flows.insert(key, fwd);
        }
        1 => {
            st.flows.insert(rkey, reply);
        }
        _ => {
            st.flows.insert(key, fwd);
            st.flows.insert(rkey, reply);
        }
    }
    st.ports
        .insert((PORT_BACKEND, key.proto, u16::from_be(backend.port)));
}

fn route_cache(rng: &mut StdRng, st: &State, ifs: Ifaces, f: &mut Flow) {
    f.rt_gen = if rng.random_bool(0.7) {
        st.config.route_gen
    } else {
        st.config.route_gen.wrapping_add(1)
    };
    f.rt_in = if rng.random_bool(0.8) {
        ifs.lo
    } else {
        ifs.up0
    };
    f.rt_ifindex = pick(rng, &[ifs.up0, ifs.cali0, ifs.lo, 999]);
    f.rt_smac = rng.random();
    f.rt_dmac = rng.random();
    let mtu: u32 = pick(rng, &[0, 1500, 60, 9000]);
    f.rt_flags = (mtu << 16) | if rng.random_bool(0.5) { RT_F_XDP } else { 0 };
}

fn sock(raw: u32, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(u32::from_be(raw)), u16::from_be(port))
}

fn tcp_options(rng: &mut StdRng) -> Vec<u8> {
    let tsval = rng.random();
    let tsecr = rng.random();
    match rng.random_range(0..8) {
        0 | 1 => Vec::new(),
        2 => {
            Pkt::tcp(sock(0, 0), sock(0, 0), 0)
                .with_syn_timestamps(tsval, tsecr)
                .tcp_options
        }
        3 | 4 => {
            Pkt::tcp(sock(0, 0), sock(0, 0), 0)
                .with_timestamps(tsval, tsecr)
                .tcp_options
        }
        5 => {
            // Unaligned: window scale right before it.
            let mut o = vec![3, 3, 7];
            o.extend(ts_option(tsval, tsecr));
            o.extend([0, 0, 0]);
            o
        }
        6 => {
            // Far down a list of NOPs: beyond the search, or just within it.
            let nops = rng.random_range(12..=20usize).min(28);
            let mut o = vec![1; nops];
            o.extend(ts_option(tsval, tsecr));
            while o.len() % 4 != 0 {
                o.push(0);
            }
            o.truncate(40);
            o
        }
        _ => {
            // Garbage.
            let n = rng.random_range(1..=10usize) * 4;
            let mut o: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            if rng.random_bool(0.5) {
                let at = rng.random_range(0..n.saturating_sub(10).max(1));
                o[at] = 8;
                if at + 1 < n {
                    o[at + 1] = pick(rng, &[10, 9, 11, 0, 1, 40]);
                }
            }
            o
        }
    }
}

fn tcp_flags(rng: &mut StdRng) -> u8 {
    pick(
        rng,
        &[
            TCP_SYN,
            TCP_SYN,
            TCP_ACK,
            TCP_ACK | TCP_PSH,
            TCP_ACK | TCP_PSH,
            TCP_FIN | TCP_ACK,
            TCP_RST,
            TCP_RST | TCP_ACK,
            TCP_SYN | TCP_ACK,
            0,
            0xff,
        ],
    )
}

/// A packet between `src` and `dst` (raw addresses and ports) of `proto`.
fn packet(rng: &mut StdRng, key: FlowKey) -> Pkt {
    let (s, d) = (sock(key.src, key.sport), sock(key.dst, key.dport));
    let mut p = if key.proto == IPPROTO_TCP {
        let mut p = Pkt::tcp(s, d, tcp_flags(rng));
        p.tcp_options = tcp_options(rng);
        p
    } else {
        let mut p = Pkt::udp(s, d);
        p.udp_no_checksum = rng.random_bool(0.2);
        p
    };
    p.ttl = pick(rng, &[64, 64, 64, 2, 1, 0, 255]);
    p.payload = match rng.random_range(0..10) {
        0 => Vec::new(),
        1 => vec![0xab; rng.random_range(1470..1560)],
        _ => (0..rng.random_range(1..64)).map(|_| rng.random()).collect(),
    };
    if rng.random_bool(0.05) {
        let n = rng.random_range(1..=10) * 4;
        p.ip_options = if rng.random_bool(0.5) {
            vec![1; n]
        } else {
            (0..n).map(|_| rng.random()).collect()
        };
    }
    p
}

/// The packet key of a new connection to one of the scenario's services, or somewhere near.
fn to_service(rng: &mut StdRng, st: &State) -> FlowKey {
    let services: Vec<_> = st.services.keys().copied().collect();
    let s = services.choose(rng).copied().unwrap_or_default();
    let dst = if s.addr == 0 || rng.random_bool(0.1) {
        ip(pick(
            rng,
            &["10.0.0.1", "10.9.0.1", "10.0.0.5", "192.168.1.11"],
        ))
    } else {
        s.addr
    };
    FlowKey {
        src: ip(pick(rng, &CLIENTS)),
        dst,
        sport: rng.random_range(40000..40008u16).to_be(),
        dport: if rng.random_bool(0.9) {
            s.port
        } else {
            pick(rng, &SERVICE_PORTS).to_be()
        },
        proto: if rng.random_bool(0.9) {
            s.proto
        } else {
            pick(rng, &[IPPROTO_TCP, IPPROTO_UDP])
        },
        _pad: [0; 3],
    }
}

/// The key of a packet on a tracked flow (either direction): client data, or a reply.
fn on_flow(rng: &mut StdRng, st: &State) -> Option<FlowKey> {
    if st.flows.is_empty() {
        return None;
    }
    let i = rng.random_range(0..st.flows.len());
    st.flows.keys().nth(i).copied()
}

/// One input frame and what kind of input it is (for the report).
pub fn frame(rng: &mut StdRng, st: &State) -> (Vec<u8>, &'static str) {
    let key = match rng.random_range(0..10) {
        0..=3 => to_service(rng, st),
        4..=8 => on_flow(rng, st).unwrap_or_else(|| to_service(rng, st)),
        _ => {
            // Random: anything of the address and port sets.
            FlowKey {
                src: ip(pick(rng, &CLIENTS)),
                dst: ip(pick(rng, &BACKENDS)),
                sport: pick(rng, &[80u16, 8080, 10000, 40000, 20000]).to_be(),
                dport: pick(rng, &[80u16, 8080, 10000, 10001, 20001]).to_be(),
                proto: pick(rng, &[IPPROTO_TCP, IPPROTO_UDP]),
                _pad: [0; 3],
            }
        }
    };
    let p = packet(rng, key);
    let mut bytes = p.bytes();
    let kind = match rng.random_range(0..100) {
        0..=54 => "valid",
        55..=62 => {
            let cut = rng.random_range(14..bytes.len());
            bytes.truncate(cut);
            "truncated"
        }
        63..=66 => {
            // Fragments: first (more fragments) or later (an offset).
            let frag: u16 = pick(rng, &[0x2000, 0x2001, 0x0010, 0x4000, 0x3fff, 0x8000]);
            bytes[14 + 6..14 + 8].copy_from_slice(&frag.to_be_bytes());
            fix_ip_checksum(rng, &mut bytes);
            "fragment"
        }
        67..=74 => {
            bad_length(rng, &mut bytes);
            "bad length"
        }
        75..=78 => {
            // A checksum off by a little: IP or L4.
            let at = pick(
                rng,
                &[
                    14 + 10,
                    14 + 11,
                    l4_check_at(&bytes),
                    l4_check_at(&bytes) + 1,
                ],
            );
            if at < bytes.len() {
                bytes[at] ^= 1 << rng.random_range(0..8);
            }
            "bad checksum"
        }
        79..=82 => {
            let n = rng.random_range(1..=8usize);
            let any = rng.random();
            let et: u16 = pick(rng, &[0x86dd, 0x0806, 0x8100, 0x88a8, any]);
            bytes[12..14].copy_from_slice(&et.to_be_bytes());
            if rng.random_bool(0.5) {
                bytes[14] = (rng.random_range(0..16u8) << 4) | (bytes[14] & 0x0f);
            }
            bytes.truncate(bytes.len().max(14 + n));
            "not IPv4"
        }
        83..=86 => {
            let len = rng.random_range(14..120);
            let mut r: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if rng.random_bool(0.7) && len >= 34 {
                r[12..14].copy_from_slice(&[0x08, 0x00]);
                r[14] = 0x45;
                r[14 + 9] = pick(rng, &[IPPROTO_TCP, IPPROTO_UDP]);
                r[14 + 6] &= 0x20;
                r[14 + 7] = 0;
            }
            bytes = r;
            "random bytes"
        }
        87..=91 => {
            // Protocol and IP-version garbage.
            bytes[14 + 9] = pick(rng, &[1, 47, 132, 255, 0]);
            if rng.random_bool(0.3) {
                bytes[14] = 0x65;
            }
            fix_ip_checksum(rng, &mut bytes);
            "not TCP/UDP"
        }
        _ => {
            for _ in 0..rng.random_range(1..=4) {
                let at = rng.random_range(0..bytes.len());
                bytes[at] = rng.random();
            }
            "mutated"
        }
    };
    (bytes, kind)
}

fn l4_check_at(f: &[u8]) -> usize {
    let ihl = (f[14] & 0x0f) as usize * 4;
    14 + ihl + if f[14 + 9] == IPPROTO_TCP { 16 } else { 6 }
}

/// Makes the IP header checksum right again (or leaves it wrong, sometimes).
fn fix_ip_checksum(rng: &mut StdRng, f: &mut [u8]) {
    if rng.random_bool(0.2) {
        return;
    }
    let ihl = ((f[14] & 0x0f) as usize * 4).max(20);
    if f.len() < 14 + ihl {
        return;
    }
    f[24] = 0;
    f[25] = 0;
    let c = lb_common::csum::checksum(&f[14..14 + ihl]);
    f[24..26].copy_from_slice(&c.to_ne_bytes());
}

fn bad_length(rng: &mut StdRng, f: &mut [u8]) {
    let tot = u16::from_be_bytes([f[16], f[17]]);
    match rng.random_range(0..5) {
        0 => {
            let any = rng.random();
            let t: u16 = pick(
                rng,
                &[
                    0,
                    20,
                    27,
                    39,
                    tot.wrapping_sub(1),
                    tot.wrapping_add(1),
                    tot.wrapping_add(100),
                    0xffff,
                    any,
                ],
            );
            f[16..18].copy_from_slice(&t.to_be_bytes());
        }
        1 => f[14] = 0x40 | rng.random_range(0..16u8),
        2 => {
            let ihl = (f[14] & 0x0f) as usize * 4;
            if f[14 + 9] == IPPROTO_TCP && f.len() > 14 + ihl + 12 {
                f[14 + ihl + 12] = rng.random_range(0..16u8) << 4;
            }
        }
        3 => {
            let ihl = (f[14] & 0x0f) as usize * 4;
            if f[14 + 9] == IPPROTO_UDP && f.len() > 14 + ihl + 6 {
                let any = rng.random();
                let l: u16 = pick(rng, &[0, 7, 8, 9, 0xffff, any]);
                f[14 + ihl + 4..14 + ihl + 6].copy_from_slice(&l.to_be_bytes());
            }
        }
        _ => {
            // A frame longer than the datagram (Ethernet padding), which is fine.
            return;
        }
    }
    fix_ip_checksum(rng, f);
}
