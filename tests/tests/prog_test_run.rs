//! BPF_PROG_TEST_RUN tables in Katran's style: input packet, map contents, expected verdict and
//! expected output bytes, for both programs (XDP and TC). They run in a namespace of their own
//! whose routes and static neighbours make the FIB answers known (`netns::FibNs`): the uplink
//! `up0` leads to the client, `cali0` to the tasks; 192.168.1.11 has a known neighbour,
//! 192.168.1.12 has none.
use std::net::{Ipv4Addr, SocketAddrV4};

use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use lb_common::{
    CFG_F_PRESERVE_CLIENT_IP, Config, FLOW_F_TS, Flow, FlowKey, IPPROTO_TCP, ServiceKey, Stat,
};
use lb_tests::{
    netns::{FibNs, in_netns, sh},
    packets::{Pkt, Seen, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, read},
};
use lb_user::{
    dataplane::{
        Dataplane,
        flows::{sum_stats, sum_u64},
        ifaces,
        loader::Capacities,
    },
    services::{Balance, Cidr, Desired, Listener, Protocol, ServiceSpec},
};

const NS: &str = "lbp-env";
use lb_tests::packets::verdict::{
    TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX,
};

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0a, 0x02];
const TASK1_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x0b];

fn sa(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

/// The namespace every table runs in: `FibNs` plus a second agent address and a task
/// (192.168.1.12) with a route but no neighbour entry.
fn env() -> FibNs {
    FibNs::new(
        NS,
        &[
            "addr add 10.9.0.1/24 dev up0",
            "route add 192.168.1.12/32 dev cali0",
        ],
    )
}

struct Lb {
    dp: Dataplane,
}

fn service(
    name: &str,
    bind: Option<&str>,
    port: u16,
    protocol: Protocol,
    backends: &[&str],
) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        listener: Listener {
            bind: bind.map(|b| b.parse().unwrap()),
            port,
            protocol,
        },
        balance: Balance::RoundRobin,
        app_id: None,
        port_index: None,
        backends: backends.iter().map(|b| sa(b)).collect(),
        allow: Vec::new(),
    }
}

impl Lb {
    /// Loads the data plane unpinned, as the daemon does, and applies `services` through it.
    fn new(services: Vec<ServiceSpec>, preserve: bool) -> Self {
        let mut dp =
            Dataplane::load(Capacities::default(), None).expect("verifier accepts both programs");
        let cfg = Config {
            flags: if preserve {
                CFG_F_PRESERVE_CLIENT_IP
            } else {
                0
            },
            ..Config::default()
        };
        dp.maps.write_config(&cfg).unwrap();
        dp.maps
            .write_local_addrs(&ifaces::ipv4_addresses())
            .unwrap();
        dp.apply(&Desired { services }).unwrap();
        Self { dp }
    }

    fn allow_xdp_redirect(&mut self, ifname: &str) {
        let idx = ifaces::list()[ifname].index;
        self.dp.maps.xdp_tx.insert(idx, 1, 0).unwrap();
        // As the daemon does: cached routes carry LB_XDP_TX's verdict.
        self.dp.maps.bump_route_gen().unwrap();
    }

    fn run(&mut self, prog: &str, input: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; input.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            ..TestRunOptions::new()
        };
        let res = if prog == "lb_xdp" {
            let p: &mut Xdp = self.dp.ebpf.program_mut(prog).unwrap().try_into().unwrap();
            p.test_run(opts)
        } else {
            let p: &mut SchedClassifier =
                self.dp.ebpf.program_mut(prog).unwrap().try_into().unwrap();
            p.test_run(opts)
        }
        .unwrap_or_else(|e| panic!("{prog} test run: {e}"));
        out.truncate(res.data_size_out as usize);
        (res.return_value, out)
    }

    fn xdp(&mut self, input: &[u8]) -> (u32, Vec<u8>) {
        self.run("lb_xdp", input)
    }

    fn tc(&mut self, input: &[u8]) -> (u32, Vec<u8>) {
        self.run("lb_tc", input)
    }

    fn flow(&mut self, key: FlowKey) -> Option<Flow> {
        self.dp.maps.flows.get(&key, 0).ok()
    }

    fn flow_count(&mut self) -> usize {
        self.dp.maps.flows.keys().count()
    }

    fn stat(&mut self, s: Stat) -> u64 {
        sum_stats(&self.dp.maps.stats)[s as usize]
    }
}

fn key(p: &Pkt) -> FlowKey {
    p.flow_key()
}

fn addr_of(raw_ip: u32, raw_port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(u32::from_be(raw_ip)), u16::from_be(raw_port))
}

/// The packet `p` as it must leave after a rewrite to `src`/`dst`, routed (TTL-1, MACs) or not.
fn expected(
    p: &Pkt,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    macs: Option<([u8; 6], [u8; 6])>,
) -> Vec<u8> {
    let mut e = p.clone();
    e.src = src;
    e.dst = dst;
    if let Some((smac, dmac)) = macs {
        e.ttl -= 1;
        e.src_mac = smac;
        e.dst_mac = dmac;
    }
    e.bytes()
}

fn web() -> Vec<ServiceSpec> {
    vec![
        service("web", None, 10000, Protocol::Tcp, &["192.168.1.11:80"]),
        service("dns", None, 10001, Protocol::Udp, &["192.168.1.11:53"]),
        service(
            "bound",
            Some("10.0.0.5"),
            10002,
            Protocol::Tcp,
            &["192.168.1.12:80"],
        ),
        service("empty", None, 10003, Protocol::Tcp, &[]),
    ]
}

const UP0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0a, 0x01];
const CALI0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];

/// The verifier explores every path of a program up to a million instructions; a change that
/// nears the limit fails here, with the figure, before it fails to load on some kernel.
#[test]
fn the_verifier_accepts_both_programs_with_headroom() {
    let lb = Lb::new(web(), false);
    let counts: Vec<(&str, u32)> = ["lb_xdp", "lb_tc"]
        .into_iter()
        .map(|name| {
            let info = lb.dp.ebpf.program(name).unwrap().info().unwrap();
            let n = info
                .verified_instruction_count()
                .expect("the kernel reports verified instructions");
            (name, n)
        })
        .collect();
    eprintln!("verified instructions: {counts:?}");
    for (name, n) in counts {
        assert!(
            n < 600_000,
            "{name}: {n} verified instructions of the 1,000,000 limit"
        );
    }
}

#[test]
fn traffic_that_is_not_ours_passes_byte_identical() {
    let _env = env();
    in_netns(NS, || {
        let mut lb = Lb::new(web(), false);
        // Trust the test-run ingress (lo) so XDP makes every decision itself.
        lb.allow_xdp_redirect("lo");
        let client = sa("10.0.0.2:40000");
        let mut arp = Pkt::tcp(client, sa("10.0.0.1:10000"), TCP_SYN);
        arp.ether_type = 0x0806;
        let mut v6 = Pkt::tcp(client, sa("10.0.0.1:10000"), TCP_SYN);
        v6.ether_type = 0x86dd;
        let mut icmp = Pkt::tcp(client, sa("10.0.0.1:10000"), TCP_SYN);
        icmp.proto = 1;
        let mut later_fragment = Pkt::udp(client, sa("10.0.0.1:10001"));
        later_fragment.frag = 0x0010;
        let syn = Pkt::tcp(client, sa("10.0.0.1:10000"), TCP_SYN).bytes();
        let cases: Vec<(&str, Vec<u8>, Stat)> = vec![
            ("ARP", arp.bytes(), Stat::PassNotIpv4),
            ("IPv6 ethertype", v6.bytes(), Stat::PassNotIpv4),
            ("ICMP", icmp.bytes(), Stat::PassNotL4),
            (
                "unknown port",
                Pkt::tcp(client, sa("10.0.0.1:9999"), TCP_SYN).bytes(),
                Stat::PassNotService,
            ),
            (
                "service port on a task IP",
                Pkt::tcp(client, sa("192.168.1.11:10000"), TCP_SYN).bytes(),
                Stat::PassNotService,
            ),
            (
                "bound service on another address",
                Pkt::tcp(client, sa("10.0.0.1:10002"), TCP_SYN).bytes(),
                Stat::PassNotService,
            ),
            (
                "ACK without a flow",
                Pkt::tcp(client, sa("10.0.0.1:10000"), TCP_ACK).bytes(),
                Stat::PassMidstream,
            ),
            (
                "non-first fragment",
                later_fragment.bytes(),
                Stat::PassFragment,
            ),
            (
                "Ethernet header only",
                syn[..14].to_vec(),
                Stat::PassMalformed,
            ),
            (
                "IP header cut",
                syn[..14 + 12].to_vec(),
                Stat::PassMalformed,
            ),
            (
                "TCP header cut",
                syn[..14 + 20 + 10].to_vec(),
                Stat::PassMalformed,
            ),
            (
                "TTL 1",
                {
                    let mut p = Pkt::tcp(client, sa("10.0.0.1:10000"), TCP_SYN);
                    p.ttl = 1;
                    p.bytes()
                },
                Stat::PassTtl,
            ),
        ];
        for (name, input, stat) in cases {
            // The kernel's skb test harness itself refuses an IPv4 frame without a whole IP header,
            // so that one only reaches the XDP program (which sees raw frames, as on the wire).
            let progs: &[&str] = if input.len() <= 14 + 20 {
                &["lb_xdp"]
            } else {
                &["lb_xdp", "lb_tc"]
            };
            for &prog in progs {
                let before = lb.stat(stat);
                let (verdict, out) = lb.run(prog, &input);
                let pass = if prog == "lb_xdp" {
                    XDP_PASS
                } else {
                    TC_ACT_OK
                };
                assert_eq!(verdict, pass, "{name}: {prog} verdict");
                assert_eq!(out, input, "{name}: {prog} changed the packet");
                assert_eq!(
                    lb.stat(stat),
                    before + 1,
                    "{name}: {prog} did not count {}",
                    stat.name()
                );
            }
        }
        // TTL 1 creates the flow before deciding not to forward; nothing else did.
        assert!(
            lb.flow_count() <= 2,
            "only the TTL case may have created a flow"
        );
    });
}

#[test]
fn packets_that_claim_to_be_ours_but_cannot_be_handled_are_dropped_and_counted() {
    let _env = env();
    in_netns(NS, || {
        let mut lb = Lb::new(web(), false);
        let mut first_fragment = Pkt::udp(sa("10.0.0.2:40001"), sa("10.0.0.1:10001"));
        first_fragment.frag = 0x2000;
        let (v, _) = lb.xdp(&first_fragment.bytes());
        assert_eq!(v, XDP_DROP, "first fragment to a service");
        assert_eq!(lb.stat(Stat::DropFragment), 1);
    });
}

/// marathon-lb writes no frontend for an app without tasks, so its clients are refused at
/// once; here the stack, which has no socket on the port, answers for the data plane.
#[test]
fn a_new_connection_to_a_service_without_backends_is_left_to_the_stack_to_refuse() {
    let _env = env();
    in_netns(NS, || {
        let mut lb = Lb::new(web(), false);
        let empty = lb
            .dp
            .maps
            .services
            .get(
                &ServiceKey {
                    addr: 0,
                    port: 10003u16.to_be(),
                    proto: IPPROTO_TCP,
                    _pad: 0,
                },
                0,
            )
            .expect("the empty service is in the map")
            .id;
        let refused = |lb: &mut Lb| sum_u64(&lb.dp.maps.service_refused, empty);
        for n in 1..=2u64 {
            let syn = Pkt::tcp(sa("10.0.0.2:40002"), sa("10.0.0.1:10003"), TCP_SYN).bytes();
            // XDP leaves it to TC, which counts it once.
            let (v, out) = lb.xdp(&syn);
            assert_eq!((v, &out), (XDP_PASS, &syn), "XDP passes it untouched");
            assert_eq!(refused(&mut lb), n - 1, "XDP does not count it");
            let (v, out) = lb.tc(&syn);
            assert_eq!((v, &out), (TC_ACT_OK, &syn), "TC passes it untouched");
            assert_eq!(lb.stat(Stat::RefusedNoBackend), n);
            assert_eq!(refused(&mut lb), n, "counted for the service");
        }
        assert_eq!(lb.flow_count(), 0, "no flow was created");
        let udp = Pkt::udp(sa("10.0.0.2:40003"), sa("10.0.0.1:10003"));
        let (v, _) = lb.tc(&udp.bytes());
        assert_eq!(v, TC_ACT_OK, "UDP to a TCP-only port is not the service's");
        assert_eq!(refused(&mut lb), 2);
    });
}

#[test]
fn full_nat_new_flow_established_and_reply() {
    let _env = env();
    in_netns(NS, || {
        let mut lb = Lb::new(web(), false);
        let client = sa("10.0.0.2:40000");
        let vip = sa("10.0.0.1:10000");
        let syn = Pkt::tcp(client, vip, TCP_SYN);

        // XDP cannot redirect to cali0 yet: it creates the flow and leaves the packet to TC.
        let (v, out) = lb.xdp(&syn.bytes());
        assert_eq!(
            (v, &out),
            (XDP_PASS, &syn.bytes()),
            "XDP hands over untouched"
        );
        assert_eq!(lb.stat(Stat::PassToTc), 1);
        let fwd = lb.flow(key(&syn)).expect("forward entry");
        assert_eq!(addr_of(fwd.new_dst, fwd.new_dport), sa("192.168.1.11:80"));
        let nat = addr_of(fwd.new_src, fwd.new_sport);
        assert!(
            (1024..=32767).contains(&nat.port()),
            "NAT port {nat} in range"
        );
        assert!(
            nat.ip().octets()[0] == 10,
            "NAT address is an agent address: {nat}"
        );

        // TC finds the flow and redirects to the task with the neighbour's MAC.
        let (v, out) = lb.tc(&syn.bytes());
        assert_eq!(v, TC_ACT_REDIRECT);
        assert_eq!(
            out,
            expected(
                &syn,
                nat,
                sa("192.168.1.11:80"),
                Some((CALI0_MAC, TASK1_MAC))
            )
        );
        let seen = read(&out);
        assert!(seen.ip_checksum_ok && seen.l4_checksum_ok, "{seen:?}");

        // cali0 takes XDP frames, but the ingress (lo in a test run) is not trusted to deliver
        // complete checksums: XDP still leaves the packet to TC.
        lb.allow_xdp_redirect("cali0");
        let (v, out) = lb.xdp(&syn.bytes());
        assert_eq!(
            (v, out),
            (XDP_PASS, syn.bytes()),
            "untrusted ingress: XDP hands over"
        );
        // Both ends trusted: XDP forwards on its own; established packets follow the flow.
        lb.allow_xdp_redirect("lo");
        let mut ack = Pkt::tcp(client, vip, TCP_ACK | TCP_PSH);
        ack.payload = vec![7; 100];
        let (v, out) = lb.xdp(&ack.bytes());
        assert_eq!(v, XDP_REDIRECT);
        assert_eq!(
            out,
            expected(
                &ack,
                nat,
                sa("192.168.1.11:80"),
                Some((CALI0_MAC, TASK1_MAC))
            )
        );

        // The reply comes back from the task to the NAT address and leaves as the service.
        let reply = Pkt::tcp(sa("192.168.1.11:80"), nat, TCP_SYN | TCP_ACK);
        let (v, out) = lb.tc(&reply.bytes());
        assert_eq!(v, TC_ACT_REDIRECT);
        assert_eq!(
            out,
            expected(&reply, vip, client, Some((UP0_MAC, CLIENT_MAC)))
        );
        lb.allow_xdp_redirect("up0");
        let (v, out) = lb.xdp(&reply.bytes());
        assert_eq!(v, XDP_REDIRECT);
        assert_eq!(
            out,
            expected(&reply, vip, client, Some((UP0_MAC, CLIENT_MAC)))
        );
        assert_eq!(lb.stat(Stat::FlowCreated), 1, "one flow for all of it");
    });
}

#[test]
fn preserve_client_ip_rewrites_only_the_destination() {
    let _env = env();
    in_netns(NS, || {
        let mut lb = Lb::new(web(), true);
        let client = sa("10.0.0.2:40100");
        let vip = sa("10.0.0.1:10000");
        let syn = Pkt::tcp(client, vip, TCP_SYN);
        let (v, out) = lb.tc(&syn.bytes());
        assert_eq!(v, TC_ACT_REDIRECT);
        assert_eq!(
            out,
            expected(
                &syn,
                client,
                sa("192.168.1.11:80"),
                Some((CALI0_MAC, TASK1_MAC))
            )
        );
        let reply = Pkt::tcp(sa("192.168.1.11:80"), client, TCP_SYN | TCP_ACK);
        let (v, out) = lb.tc(&reply.bytes());
        assert_eq!(v, TC_ACT_REDIRECT);
        assert_eq!(
            out,
            expected(&reply, vip, client, Some((UP0_MAC, CLIENT_MAC)))
        );
    });
}

#[test]
fn udp_flows_and_checksums() {
    let _env = env();
    in_netns(NS, || {
        let mut lb = Lb::new(web(), false);
        let client = sa("10.0.0.2:5353");
        let vip = sa("10.0.0.1:10001");
        let q = Pkt::udp(client, vip);
        let (v, out) = lb.tc(&q.bytes());
        assert_eq!(v, TC_ACT_REDIRECT);
        let fwd = lb.flow(key(&q)).expect("UDP flow");
        let nat = addr_of(fwd.new_src, fwd.new_sport);
        assert_eq!(
            out,
            expected(&q, nat, sa("192.168.1.11:53"), Some((CALI0_MAC, TASK1_MAC)))
        );
        assert!(read(&out).l4_checksum_ok);
        // A datagram without checksum keeps none; XDP computes the same as TC.
        let mut bare = Pkt::udp(client, vip);
        bare.udp_no_checksum = true;
        lb.allow_xdp_redirect("cali0");
        lb.allow_xdp_redirect("lo");
        let (v, out) = lb.xdp(&bare.bytes());
        assert_eq!(v, XDP_REDIRECT);
        assert_eq!(read(&out).l4_checksum, 0, "UDP checksum 0 stays 0");
        assert_eq!(
            out,
            expected(
                &bare,
                nat,
                sa("192.168.1.11:53"),
                Some((CALI0_MAC, TASK1_MAC))
            )
        );
        let (v, out) = lb.xdp(&q.bytes());
        assert_eq!(v, XDP_REDIRECT);
        assert_eq!(
            out,
            expected(&q, nat, sa("192.168.1.11:53"), Some((CALI0_MAC, TASK1_MAC)))
        );
        let (v, out) = lb.tc(&bare.bytes());
        assert_eq!(v, TC_ACT_REDIRECT);
        assert_eq!(read(&out).l4_checksum, 0, "UDP checksum 0 stays 0 in TC");
        // A rewrite whose checksum comes out 0 must send it as 0xffff (0 means none). The
        // payload word that makes it so is the checksum the datagram gets with a zero word.
        let to_task =
            |p: &Pkt| expected(p, nat, sa("192.168.1.11:53"), Some((CALI0_MAC, TASK1_MAC)));
        const UDP_CHECK: std::ops::Range<usize> = 14 + 20 + 6..14 + 20 + 8;
        let mut zero = Pkt::udp(client, vip);
        zero.payload = vec![0, 0];
        zero.payload = to_task(&zero)[UDP_CHECK].to_vec();
        let want = to_task(&zero);
        assert_eq!(want[UDP_CHECK], [0xff, 0xff], "the payload makes the sum 0");
        let (v, out) = lb.tc(&zero.bytes());
        assert_eq!((v, &out), (TC_ACT_REDIRECT, &want), "TC");
        let (v, out) = lb.xdp(&zero.bytes());
        assert_eq!((v, &out), (XDP_REDIRECT, &want), "XDP");
    });
}

#[test]
fn ip_options_are_handled_at_the_right_offset() {
    let _env = env();
    in_netns(NS, || {
        let mut lb = Lb::new(web(), false);
        let mut syn = Pkt::tcp(sa("10.0.0.2:40200"), sa("10.0.0.1:10000"), TCP_SYN);
        syn.ip_options = vec![1, 1, 1, 0]; // NOP NOP NOP EOL
        let (v, out) = lb.tc(&syn.bytes());
        assert_eq!(v, TC_ACT_REDIRECT);
        let fwd = lb.flow(key(&syn)).expect("flow");
        let nat = addr_of(fwd.new_src, fwd.new_sport);
        assert_eq!(
            out,
            expected(
                &syn,
                nat,
                sa("192.168.1.11:80"),
                Some((CALI0_MAC, TASK1_MAC))
            )
        );
    });
}

#[test]
fn unresolved_neighbour_goes_through_the_kernel() {
    let _env = env();
    in_netns(NS, || {
        let mut lb = Lb::new(web(), false);
        // Bound service: 10.0.0.5 is not local, yet the exact match applies; its backend
        // 192.168.1.12 has a route but no neighbour entry.
        let syn = Pkt::tcp(sa("10.0.0.2:40300"), sa("10.0.0.5:10002"), TCP_SYN);
        lb.allow_xdp_redirect("cali0");
        lb.allow_xdp_redirect("lo");
        let (v, out) = lb.xdp(&syn.bytes());
        assert_eq!(
            (v, out),
            (XDP_PASS, syn.bytes()),
            "XDP leaves unresolved next hops to TC"
        );
        let (v, out) = lb.tc(&syn.bytes());
        assert_eq!(v, TC_ACT_REDIRECT, "bpf_redirect_neigh");
        let fwd = lb.flow(key(&syn)).expect("flow");
        let nat = addr_of(fwd.new_src, fwd.new_sport);
        let mut want = syn.clone();
        want.ttl -= 1;
        want.src = nat;
        want.dst = sa("192.168.1.12:80");
        assert_eq!(
            out,
            want.bytes(),
            "rewritten, TTL decremented, MACs left to the kernel"
        );
    });
}

#[test]
fn only_clients_inside_a_services_allowed_ranges_open_flows() {
    let _env = env();
    in_netns(NS, || {
        let range = |s: &str| s.parse::<Cidr>().unwrap();
        let mut lb = Lb::new(
            vec![
                ServiceSpec {
                    allow: vec![range("10.0.0.0/30"), range("10.9.0.7")],
                    ..service("db", None, 10000, Protocol::Tcp, &["192.168.1.11:80"])
                },
                ServiceSpec {
                    allow: vec![range("10.0.0.128/25")],
                    ..service("dns", None, 10001, Protocol::Udp, &["192.168.1.11:53"])
                },
                service("open", None, 10003, Protocol::Tcp, &["192.168.1.11:80"]),
            ],
            false,
        );
        let id = |lb: &mut Lb, port: u16, proto| {
            let k = ServiceKey {
                addr: 0,
                port: port.to_be(),
                proto,
                _pad: 0,
            };
            lb.dp.maps.services.get(&k, 0).unwrap().id
        };
        let (db, dns, open) = (
            id(&mut lb, 10000, IPPROTO_TCP),
            id(&mut lb, 10001, lb_common::IPPROTO_UDP),
            id(&mut lb, 10003, IPPROTO_TCP),
        );
        let denied = |lb: &mut Lb, id| sum_u64(&lb.dp.maps.service_denied, id);
        let mut port = 42000;
        // (client, service, allowed): the edges of each range, and a service with no list.
        let cases = [
            ("10.0.0.0", 10000, true),
            ("10.0.0.3", 10000, true),
            ("10.0.0.4", 10000, false),
            ("9.255.255.255", 10000, false),
            ("10.9.0.7", 10000, true),
            ("10.9.0.6", 10000, false),
            ("10.9.0.8", 10000, false),
            ("10.0.0.128", 10001, true),
            ("10.0.0.255", 10001, true),
            ("10.0.0.127", 10001, false),
            ("10.0.0.4", 10003, true),
            ("9.255.255.255", 10003, true),
        ];
        for prog in ["lb_xdp", "lb_tc"] {
            for (client, svc, allowed) in cases {
                port += 1;
                let src = SocketAddrV4::new(client.parse().unwrap(), port);
                let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), svc);
                let pkt = if svc == 10001 {
                    Pkt::udp(src, dst)
                } else {
                    Pkt::tcp(src, dst, TCP_SYN)
                };
                let service = [(10000, db), (10001, dns), (10003, open)]
                    .iter()
                    .find(|(p, _)| *p == svc)
                    .unwrap()
                    .1;
                let before = denied(&mut lb, service);
                let (v, out) = lb.run(prog, &pkt.bytes());
                let what = format!("{prog}: {client} to {svc}");
                if allowed {
                    assert!(lb.flow(key(&pkt)).is_some(), "{what}: no flow");
                    assert_eq!(denied(&mut lb, service), before, "{what}: counted");
                } else {
                    let drop = if prog == "lb_xdp" {
                        XDP_DROP
                    } else {
                        TC_ACT_SHOT
                    };
                    assert_eq!(
                        (v, out),
                        (drop, pkt.bytes()),
                        "{what}: not dropped as it was"
                    );
                    assert!(lb.flow(key(&pkt)).is_none(), "{what}: a flow was made");
                    assert_eq!(denied(&mut lb, service), before + 1, "{what}: not counted");
                }
            }
        }
        // Any packet of a refused client is dropped, not only the one that opens a flow.
        let ack = Pkt::tcp(sa("10.0.0.4:43000"), sa("10.0.0.1:10000"), TCP_ACK);
        assert_eq!(lb.tc(&ack.bytes()).0, TC_ACT_SHOT);
        assert_eq!(denied(&mut lb, db), 9);
        assert_eq!(denied(&mut lb, dns), 2);
        assert_eq!(denied(&mut lb, open), 0);
        // Denials are counted per service only; `LB_STATS` keeps its size for older pins.
        assert!(
            sum_stats(&lb.dp.maps.stats).len() == lb_common::STAT_COUNT as usize
                && (Stat::DropDenied as u32) >= lb_common::STAT_COUNT
        );
        // Opened to everyone: the flag goes and the refused client gets through.
        lb.dp
            .apply(&Desired {
                services: vec![service(
                    "db",
                    None,
                    10000,
                    Protocol::Tcp,
                    &["192.168.1.11:80"],
                )],
            })
            .unwrap();
        let syn = Pkt::tcp(sa("10.0.0.4:43001"), sa("10.0.0.1:10000"), TCP_SYN);
        lb.tc(&syn.bytes());
        assert!(lb.flow(key(&syn)).is_some(), "open again");
        // db's ranges went after its entry lost the flag; dns's went with the service.
        assert_eq!(lb.dp.maps.acl.keys().count(), 0, "no range is left");
    });
}

#[test]
fn round_robin_spreads_new_flows_and_fin_closes_both_directions() {
    let _env = env();
    in_netns(NS, || {
        let backends = ["192.168.1.11:80", "192.168.1.12:80", "192.168.1.13:80"];
        let mut lb = Lb::new(
            vec![service("web", None, 10000, Protocol::Tcp, &backends)],
            false,
        );
        let mut per = std::collections::BTreeMap::<SocketAddrV4, usize>::new();
        for i in 0..30 {
            let syn = Pkt::tcp(
                SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 41000 + i),
                sa("10.0.0.1:10000"),
                TCP_SYN,
            );
            lb.tc(&syn.bytes());
            let f = lb.flow(key(&syn)).expect("flow");
            *per.entry(addr_of(f.new_dst, f.new_dport)).or_default() += 1;
        }
        assert_eq!(
            per.values().copied().collect::<Vec<_>>(),
            vec![10, 10, 10],
            "{per:?}"
        );

        let client = sa("10.0.0.2:41000");
        let fin = Pkt::tcp(client, sa("10.0.0.1:10000"), TCP_FIN | TCP_ACK);
        lb.tc(&fin.bytes());
        let fwd = lb.flow(key(&fin)).expect("flow after FIN");
        assert_ne!(
            fwd.flags & lb_common::FLOW_F_CLOSING,
            0,
            "forward entry closing"
        );
        let rev = lb.flow(FlowKey::peer_of(&fwd, 6)).expect("reply entry");
        assert_ne!(
            rev.flags & lb_common::FLOW_F_CLOSING,
            0,
            "reply entry closing"
        );
        // The client reuses the port: a new connection, possibly to another backend.
        lb.tc(&Pkt::tcp(client, sa("10.0.0.1:10000"), TCP_SYN).bytes());
        assert_eq!(lb.stat(Stat::FlowReplaced), 1);
        let again = lb.flow(key(&fin)).expect("new flow");
        assert_eq!(again.flags & lb_common::FLOW_F_CLOSING, 0);
    });
}

#[test]
fn source_affinity_keeps_a_client_on_one_backend() {
    let _env = env();
    in_netns(NS, || {
        let mut svc = service(
            "web",
            None,
            10000,
            Protocol::Tcp,
            &["192.168.1.11:80", "192.168.1.12:80", "192.168.1.13:80"],
        );
        svc.balance = Balance::Source;
        let mut lb = Lb::new(vec![svc], false);
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..10 {
            let syn = Pkt::tcp(
                SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 42000 + i),
                sa("10.0.0.1:10000"),
                TCP_SYN,
            );
            lb.tc(&syn.bytes());
            let f = lb.flow(key(&syn)).expect("flow");
            seen.insert(addr_of(f.new_dst, f.new_dport));
        }
        assert_eq!(seen.len(), 1, "one client address, one backend: {seen:?}");
    });
}

/// The live flows `LB_BE_LIVE` holds for each backend of the service on `port`, by address.
fn live_by_backend(lb: &Lb, port: u16) -> std::collections::BTreeMap<SocketAddrV4, u64> {
    ids_by_backend(lb, port)
        .into_iter()
        .map(|(addr, id)| (addr, lb.dp.maps.backend_live.get(&id, 0).unwrap()))
        .collect()
}

/// The backend ids of the service on `port`, by address.
fn ids_by_backend(lb: &Lb, port: u16) -> std::collections::BTreeMap<SocketAddrV4, u32> {
    let svc = lb
        .dp
        .planner
        .services
        .values()
        .find(|s| s.spec.listener.port == port)
        .expect("service applied");
    svc.backends.iter().map(|b| (b.addr, b.id)).collect()
}

#[test]
fn leastconn_gives_new_flows_to_the_fewest_live_and_the_sweep_counts_them_down() {
    let _env = env();
    in_netns(NS, || {
        let tasks = ["192.168.1.11:80", "192.168.1.12:80", "192.168.1.13:80"];
        let mut svc = service("web", None, 10000, Protocol::Tcp, &tasks);
        svc.balance = Balance::LeastConn;
        let mut lb = Lb::new(vec![svc.clone()], false);
        let vip = sa("10.0.0.1:10000");
        let (t1, t2, t3) = (sa(tasks[0]), sa(tasks[1]), sa(tasks[2]));
        let ids = ids_by_backend(&lb, 10000);
        let mut client = 0u16;
        let mut open = |lb: &mut Lb| -> (SocketAddrV4, SocketAddrV4) {
            client += 1;
            let from = SocketAddrV4::new(Ipv4Addr::new(10, 0, 3, 1), 30000 + client);
            let syn = Pkt::tcp(from, vip, TCP_SYN);
            lb.tc(&syn.bytes());
            let f = lb.flow(key(&syn)).expect("a flow for every SYN");
            (from, addr_of(f.new_dst, f.new_dport))
        };
        // As a sweep would leave them: 5 on the first task, none on the second, 3 on the third.
        lb.dp
            .count_live(&[(ids[&t1], 5), (ids[&t3], 3)].into())
            .unwrap();
        let first: Vec<_> = (0..7).map(|_| open(&mut lb).1).collect();
        assert_eq!(
            &first[..3],
            &[t2, t2, t2],
            "the emptiest task first: {first:?}"
        );
        assert!(
            !first.contains(&t1),
            "the busiest task gets nothing: {first:?}"
        );
        assert_eq!(
            live_by_backend(&lb, 10000),
            [(t1, 5), (t2, 5), (t3, 5)].into(),
            "each new flow counted on its backend"
        );
        // Ties go in round-robin order: three new flows, three different tasks.
        let tied: std::collections::BTreeSet<_> = (0..3).map(|_| open(&mut lb).1).collect();
        assert_eq!(tied.len(), 3, "{tied:?}");
        // The table now holds 1 flow on the first task, 6 on the second, 3 on the third. Of
        // the second's, the first two opened end with an RST and the third with FINs both
        // ways: each is counted off by the packet that closes it.
        let from = |port| SocketAddrV4::new(Ipv4Addr::new(10, 0, 3, 1), port);
        for port in [30001, 30002] {
            lb.tc(&Pkt::tcp(from(port), vip, TCP_RST | TCP_ACK).bytes());
        }
        let fin = Pkt::tcp(from(30003), vip, TCP_FIN | TCP_ACK);
        lb.tc(&fin.bytes());
        let f = lb.flow(key(&fin)).expect("the flow the FINs close");
        let nat = addr_of(f.new_src, f.new_sport);
        let half_closed = live_by_backend(&lb, 10000);
        lb.tc(&Pkt::tcp(t2, nat, TCP_FIN | TCP_ACK).bytes());
        assert_eq!(half_closed[&t2], 4, "an RST closes, one FIN does not");
        assert_eq!(live_by_backend(&lb, 10000)[&t2], 3, "the second FIN closes");
        lb.tc(&Pkt::tcp(from(30001), vip, TCP_RST | TCP_ACK).bytes());
        assert_eq!(
            live_by_backend(&lb, 10000),
            [(t1, 6), (t2, 3), (t3, 6)].into(),
            "closed flows counted off at once, a repeated RST not again"
        );
        // The sweep's recount (every 2 s in the daemon) writes what the table holds: the
        // flows the preset counts made up are gone, expiry and evictions would be too.
        let mut sweeper = lb_user::dataplane::flows::Sweeper::default();
        let mut recount = |lb: &mut Lb, cfg: &Config| {
            let stats = sum_stats(&lb.dp.maps.stats);
            let now = lb_user::dataplane::monotonic_ns();
            let (report, _, _) = sweeper.sweep(&mut lb.dp.maps.flows, &stats, cfg, now);
            lb.dp.count_live(&report.live).unwrap();
        };
        recount(&mut lb, &Config::default());
        assert_eq!(
            live_by_backend(&lb, 10000),
            [(t1, 1), (t2, 3), (t3, 3)].into(),
            "the recount: what the table holds"
        );
        assert_eq!(open(&mut lb).1, t1);
        // A changed set is a new generation: the new task starts from zero (whatever its id's
        // slot held before) and is chosen.
        for id in 0..64 {
            if !ids.values().any(|i| *i == id) {
                lb.dp.maps.backend_live.set(id, 99, 0).unwrap();
            }
        }
        let t4 = sa("192.168.1.14:80");
        svc.backends.push(t4);
        lb.dp
            .apply(&Desired {
                services: vec![svc],
            })
            .unwrap();
        assert_eq!(live_by_backend(&lb, 10000)[&t4], 0);
        assert_eq!(open(&mut lb).1, t4);
        assert_eq!(live_by_backend(&lb, 10000)[&t4], 1);
        // Expiry: once the established timeout has passed, no flow counts any more.
        std::thread::sleep(std::time::Duration::from_millis(2));
        let short = Config {
            tcp_timeout_ns: 1_000_000,
            ..Config::default()
        };
        recount(&mut lb, &short);
        let live = live_by_backend(&lb, 10000);
        assert!(live.values().all(|n| *n == 0), "{live:?}");
        // Through XDP (the interfaces trusted, so it decides itself): the same choice, count
        // and count-off.
        for ifname in ["lo", "up0", "cali0"] {
            lb.allow_xdp_redirect(ifname);
        }
        let ids = ids_by_backend(&lb, 10000);
        let busy = ids
            .iter()
            .filter(|(a, _)| **a != t1)
            .map(|(_, id)| (*id, 5));
        lb.dp.count_live(&busy.collect()).unwrap();
        let syn = Pkt::tcp(from(40000), vip, TCP_SYN);
        assert_eq!(lb.xdp(&syn.bytes()).0, XDP_REDIRECT);
        let f = lb.flow(key(&syn)).expect("XDP opened the flow");
        assert_eq!(addr_of(f.new_dst, f.new_dport), t1);
        assert_eq!(live_by_backend(&lb, 10000)[&t1], 1);
        let rst = Pkt::tcp(from(40000), vip, TCP_RST | TCP_ACK);
        assert_eq!(lb.xdp(&rst.bytes()).0, XDP_REDIRECT);
        assert_eq!(live_by_backend(&lb, 10000)[&t1], 0);
    });
}

#[test]
fn hairpin_to_a_backend_behind_the_same_interface_uses_xdp_tx() {
    let _env = env();
    in_netns(NS, || {
        // A backend reached through the uplink itself (a task on another agent).
        sh(&format!("ip -n {NS} route add 172.16.0.0/16 via 10.0.0.2"));
        let mut lb = Lb::new(
            vec![service(
                "remote",
                None,
                10000,
                Protocol::Tcp,
                &["172.16.0.7:80"],
            )],
            false,
        );
        lb.allow_xdp_redirect("up0");
        // In a test run the ingress interface is lo, so XDP_TX is exercised with lo's index.
        lb.allow_xdp_redirect("lo");
        let syn = Pkt::tcp(sa("10.0.0.2:40400"), sa("10.0.0.1:10000"), TCP_SYN);
        let (v, out) = lb.xdp(&syn.bytes());
        assert_eq!(v, XDP_REDIRECT);
        let s: Seen = read(&out);
        assert_eq!((s.dst, s.dst_mac), (sa("172.16.0.7:80"), CLIENT_MAC));
        assert_ne!(XDP_TX, v, "up0 differs from the ingress (lo)");
    });
}

#[test]
fn a_closed_flow_frees_its_nat_port_for_the_next_one() {
    let _env = env();
    in_netns(NS, || {
        let mut lb = Lb::new(web(), false);
        // One NAT port, and closed flows expire at once.
        nat_ports(&mut lb, 20000, 20000);
        let vip = sa("10.0.0.1:10000");
        let (a, b) = (sa("10.0.0.2:41000"), sa("10.0.0.2:41001"));
        assert_eq!(lb.tc(&Pkt::tcp(a, vip, TCP_SYN).bytes()).0, TC_ACT_REDIRECT);
        let fwd = lb.flow(key(&Pkt::tcp(a, vip, TCP_SYN))).unwrap();
        let nat = addr_of(fwd.new_src, fwd.new_sport);
        assert_eq!(nat.port(), 20000);
        assert_eq!(
            lb.tc(&Pkt::tcp(b, vip, TCP_SYN).bytes()).0,
            TC_ACT_SHOT,
            "the only port is taken"
        );
        assert_eq!(lb.stat(Stat::DropNatPorts), 1);
        // Half closed: the port stays taken (the other side may still be sending).
        lb.tc(&Pkt::tcp(a, vip, TCP_FIN | TCP_ACK).bytes());
        let half = lb.flow(key(&Pkt::tcp(a, vip, TCP_SYN))).unwrap();
        assert_eq!(
            half.flags & lb_common::FLOW_F_CLOSED,
            lb_common::FLOW_F_FIN_CLIENT
        );
        assert_eq!(
            lb.tc(&Pkt::tcp(b, vip, TCP_SYN).bytes()).0,
            TC_ACT_SHOT,
            "half-closed keeps its port"
        );
        // The backend's FIN closes it: the next flow gets the port.
        lb.tc(&Pkt::tcp(sa("192.168.1.11:80"), nat, TCP_FIN | TCP_ACK).bytes());
        let closed = lb.flow(key(&Pkt::tcp(a, vip, TCP_SYN))).unwrap();
        assert_eq!(
            closed.flags & lb_common::FLOW_F_CLOSED,
            lb_common::FLOW_F_CLOSED
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
        assert_eq!(
            lb.tc(&Pkt::tcp(b, vip, TCP_SYN).bytes()).0,
            TC_ACT_REDIRECT,
            "port reused after close"
        );
        let again = lb.flow(key(&Pkt::tcp(b, vip, TCP_SYN))).unwrap();
        assert_eq!(again.new_sport, 20000u16.to_be());
        assert!(
            lb.flow(key(&Pkt::tcp(a, vip, TCP_SYN))).is_none(),
            "the closed flow's entries are gone"
        );

        // This time the backend closes first: it will hold TIME_WAIT, so the port stays
        // reserved, even when the client reuses its own port at once.
        lb.tc(&Pkt::tcp(sa("192.168.1.11:80"), nat, TCP_FIN | TCP_ACK).bytes());
        lb.tc(&Pkt::tcp(b, vip, TCP_FIN | TCP_ACK).bytes());
        let tw = lb.flow(key(&Pkt::tcp(b, vip, TCP_SYN))).unwrap();
        assert_ne!(
            tw.flags & lb_common::FLOW_F_BACKEND_CLOSED_FIRST,
            0,
            "{tw:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
        let c = sa("10.0.0.2:41002");
        assert_eq!(
            lb.tc(&Pkt::tcp(c, vip, TCP_SYN).bytes()).0,
            TC_ACT_SHOT,
            "reserved for TIME_WAIT"
        );
        // The client reuses b's port: its old forward entry is replaced, the reservation stays.
        assert_eq!(
            lb.tc(&Pkt::tcp(b, vip, TCP_SYN).bytes()).0,
            TC_ACT_SHOT,
            "still no free port"
        );
        let reply_key = FlowKey {
            src: u32::from(*sa("192.168.1.11:80").ip()).to_be(),
            dst: u32::from(*nat.ip()).to_be(),
            sport: 80u16.to_be(),
            dport: 20000u16.to_be(),
            proto: 6,
            _pad: [0; 3],
        };
        assert!(
            lb.flow(reply_key).is_some(),
            "the reply entry still reserves the port"
        );
    });
}

/// The flow entries of the connection whose client-side packet is `p`: (forward, reply).
fn both(lb: &mut Lb, p: &Pkt) -> (Flow, Flow) {
    let fwd = lb.flow(key(p)).expect("forward entry");
    let rev = lb.flow(FlowKey::peer_of(&fwd, 6)).expect("reply entry");
    (fwd, rev)
}

/// Sends `p` through TC and checks it leaves as `want` (addresses, ports, MACs, TTL and the
/// option bytes) with both checksums valid.
fn through_tc(lb: &mut Lb, p: &Pkt, want: &Pkt, what: &str) -> Seen {
    let (v, out) = lb.tc(&p.bytes());
    assert_eq!(v, TC_ACT_REDIRECT, "{what}: verdict");
    let seen = read(&out);
    assert!(
        seen.ip_checksum_ok && seen.l4_checksum_ok,
        "{what}: {seen:?}"
    );
    assert_eq!(out, want.bytes(), "{what}: output bytes");
    seen
}

/// `p` routed to `src` → `dst` with `macs`, and the timestamp option at `at` (offset in the
/// options) holding `ts`.
fn translated(
    p: &Pkt,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    macs: ([u8; 6], [u8; 6]),
    ts: Option<(usize, u32, u32)>,
) -> Pkt {
    let mut e = p.clone();
    e.src = src;
    e.dst = dst;
    e.ttl -= 1;
    (e.src_mac, e.dst_mac) = macs;
    if let Some((at, tsval, tsecr)) = ts {
        e.tcp_options[at..at + 10].copy_from_slice(&lb_tests::packets::ts_option(tsval, tsecr));
    }
    e
}

#[test]
fn full_nat_shifts_tcp_timestamps_to_the_balancers_clock_and_back() {
    let _env = env();
    in_netns(NS, || {
        let mut lb = Lb::new(web(), false);
        let client = sa("10.0.0.2:43000");
        let vip = sa("10.0.0.1:10000");
        let task = sa("192.168.1.11:80");
        let to_task = (CALI0_MAC, TASK1_MAC);
        let to_client = (UP0_MAC, CLIENT_MAC);
        // A client clock far from the balancer's, so the shift is visible.
        let syn = Pkt::tcp(client, vip, TCP_SYN).with_syn_timestamps(0xfff0_0000, 0);
        lb.tc(&syn.bytes());
        let (fwd, rev) = both(&mut lb, &syn);
        assert_ne!(fwd.flags & FLOW_F_TS, 0, "timestamps tracked: {fwd:?}");
        assert_eq!((rev.flags & FLOW_F_TS, rev.ts_off), (FLOW_F_TS, fwd.ts_off));
        let nat = addr_of(fwd.new_src, fwd.new_sport);
        let shifted = |v: u32| v.wrapping_add(fwd.ts_off);
        // The SYN's TSval is the balancer's clock now: ktime >> TS_CLOCK_SHIFT.
        let clock_now = (uptime_ns() >> lb_common::TS_CLOCK_SHIFT) as u32;
        assert!(
            clock_now.wrapping_sub(shifted(0xfff0_0000)) < 1 << 16,
            "SYN's TSval {} is the balancer's clock (now {clock_now})",
            shifted(0xfff0_0000)
        );
        let syn2 = translated(&syn, nat, task, to_task, Some((6, shifted(0xfff0_0000), 0)));
        through_tc(&mut lb, &syn, &syn2, "retransmitted SYN");

        // The task's SYN-ACK echoes the shifted value; the client gets its own back.
        let synack =
            Pkt::tcp(task, nat, TCP_SYN | TCP_ACK).with_syn_timestamps(777, shifted(0xfff0_0000));
        let want = translated(&synack, vip, client, to_client, Some((6, 777, 0xfff0_0000)));
        through_tc(&mut lb, &synack, &want, "SYN-ACK");

        // Data both ways, the client's clock wrapping past zero on the way.
        let data = Pkt::tcp(client, vip, TCP_ACK | TCP_PSH).with_timestamps(0x0000_0005, 777);
        let want = translated(&data, nat, task, to_task, Some((2, shifted(5), 777)));
        through_tc(&mut lb, &data, &want, "data to the task");
        let back = Pkt::tcp(task, nat, TCP_ACK).with_timestamps(780, shifted(5));
        let want = translated(&back, vip, client, to_client, Some((2, 780, 5)));
        through_tc(&mut lb, &back, &want, "data to the client");

        // The option at an odd offset (window scale right before it, no NOPs).
        let mut odd = Pkt::tcp(client, vip, TCP_ACK);
        odd.tcp_options = vec![3, 3, 7];
        odd.tcp_options.extend(lb_tests::packets::ts_option(9, 780));
        odd.tcp_options.extend([0, 0, 0]);
        let want = translated(&odd, nat, task, to_task, Some((3, shifted(9), 780)));
        through_tc(&mut lb, &odd, &want, "option at an odd offset");

        // XDP computes the same bytes where it forwards on its own.
        lb.allow_xdp_redirect("lo");
        lb.allow_xdp_redirect("cali0");
        let (v, out) = lb.xdp(&odd.bytes());
        assert_eq!((v, out), (XDP_REDIRECT, want.bytes()), "XDP, odd offset");
        let (v, out) = lb.xdp(&data.bytes());
        let want = translated(&data, nat, task, to_task, Some((2, shifted(5), 777)));
        assert_eq!((v, out), (XDP_REDIRECT, want.bytes()), "XDP, data");

        // The FIN carries timestamps too.
        let fin = Pkt::tcp(client, vip, TCP_FIN | TCP_ACK).with_timestamps(11, 780);
        let want = translated(&fin, nat, task, to_task, Some((2, shifted(11), 780)));
        through_tc(&mut lb, &fin, &want, "FIN");

        // Without a well-formed option nothing but addresses and ports changes.
        let mut cases: Vec<(&str, Vec<u8>)> = vec![
            ("no options", vec![]),
            ("only MSS", vec![2, 4, 5, 0xb4]),
            ("timestamp of length 9", {
                let mut o = vec![1, 1, 8, 9];
                o.extend([0; 8]);
                o
            }),
            ("zero-length option first", {
                let mut o = vec![2, 0];
                o.extend(lb_tests::packets::ts_option(1, 2));
                o
            }),
            ("option longer than the list", {
                let mut o = vec![1, 1, 5, 30];
                o.extend(lb_tests::packets::ts_option(1, 2));
                o.extend([0, 0]);
                o
            }),
            ("after the end of the list", {
                let mut o = vec![0, 1];
                o.extend(lb_tests::packets::ts_option(1, 2));
                o
            }),
        ];
        for (name, opts) in cases.drain(..) {
            let mut p = Pkt::tcp(client, vip, TCP_ACK);
            p.tcp_options = opts;
            let want = translated(&p, nat, task, to_task, None);
            through_tc(&mut lb, &p, &want, name);
        }
        // A data offset past the datagram's end: a segment the stack itself would refuse.
        // Nothing is read or rewritten; it passes untouched for the stack to judge.
        let mut lying = Pkt::tcp(client, vip, TCP_ACK).with_timestamps(1, 2);
        lying.payload.clear();
        let mut bytes = lying.bytes();
        bytes[14 + 20 + 12] = 15 << 4;
        let malformed = lb.stat(Stat::PassMalformed);
        let (v, out) = lb.tc(&bytes);
        assert_eq!((v, &out), (TC_ACT_OK, &bytes), "data offset past the end");
        assert_eq!(lb.stat(Stat::PassMalformed), malformed + 1);
        assert_eq!(lb.stat(Stat::ErrRewrite), 0);
    });
}

fn uptime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the struct we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[test]
fn a_backend_that_declines_timestamps_keeps_them_untouched() {
    let _env = env();
    in_netns(NS, || {
        let mut lb = Lb::new(web(), false);
        let client = sa("10.0.0.2:43100");
        let vip = sa("10.0.0.1:10000");
        let task = sa("192.168.1.11:80");
        let syn = Pkt::tcp(client, vip, TCP_SYN).with_syn_timestamps(5000, 0);
        lb.tc(&syn.bytes());
        let (fwd, _) = both(&mut lb, &syn);
        let nat = addr_of(fwd.new_src, fwd.new_sport);
        let mut synack = Pkt::tcp(task, nat, TCP_SYN | TCP_ACK);
        synack.tcp_options = vec![2, 4, 5, 0xb4];
        let want = translated(&synack, vip, client, (UP0_MAC, CLIENT_MAC), None);
        through_tc(&mut lb, &synack, &want, "SYN-ACK without timestamps");
        let (fwd, rev) = both(&mut lb, &syn);
        assert_eq!((fwd.flags & FLOW_F_TS, rev.flags & FLOW_F_TS), (0, 0));
        let odd = Pkt::tcp(client, vip, TCP_ACK).with_timestamps(5001, 0);
        let want = translated(&odd, nat, task, (CALI0_MAC, TASK1_MAC), None);
        through_tc(&mut lb, &odd, &want, "a stray option is left alone");
    });
}

/// NAT ports `min..=max`, and closed flows gone at once (1 ns), so what may take a port
/// depends on the flow's state alone.
fn nat_ports(lb: &mut Lb, min: u16, max: u16) -> Config {
    let cfg = Config {
        nat_port_min: min,
        nat_port_max: max,
        tcp_closed_timeout_ns: 1,
        ..Config::default()
    };
    lb.dp.maps.write_config(&cfg).unwrap();
    cfg
}

#[test]
fn with_timestamps_a_port_closed_by_the_backend_is_free_at_once_and_its_clock_rises() {
    let _env = env();
    in_netns(NS, || {
        let mut lb = Lb::new(web(), false);
        nat_ports(&mut lb, 20000, 20000);
        let vip = sa("10.0.0.1:10000");
        let task = sa("192.168.1.11:80");
        let mut last_tsval_seen_by_task = None;
        // Clients with clocks far apart, as real clients have: the task must see one clock.
        for (i, client_clock) in [4_000_000_000u32, 7, 2_000_000_000, 123_456]
            .into_iter()
            .enumerate()
        {
            let client = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2 + i as u8), 44000);
            let syn = Pkt::tcp(client, vip, TCP_SYN).with_syn_timestamps(client_clock, 0);
            let (v, out) = lb.tc(&syn.bytes());
            assert_eq!(v, TC_ACT_REDIRECT, "connection {i} gets the port");
            let seen = read(&out);
            assert_eq!(seen.src.port(), 20000);
            let (tsval, _) = seen.timestamps.expect("SYN keeps its option");
            if let Some(prev) = last_tsval_seen_by_task {
                assert!(
                    (tsval.wrapping_sub(prev) as i32) > 0,
                    "connection {i}: TSval {tsval} not above the last one {prev}"
                );
            }
            let (fwd, _) = both(&mut lb, &syn);
            let nat = addr_of(fwd.new_src, fwd.new_sport);
            // Some data, then the backend closes first and the client follows.
            let data = Pkt::tcp(client, vip, TCP_ACK).with_timestamps(client_clock + 3, 1);
            let (_, out) = lb.tc(&data.bytes());
            assert_eq!(
                read(&out).timestamps.unwrap().0,
                tsval.wrapping_add(3),
                "the client's clock runs on from the shifted start"
            );
            lb.tc(&Pkt::tcp(task, nat, TCP_FIN | TCP_ACK)
                .with_timestamps(1, tsval)
                .bytes());
            let fin = Pkt::tcp(client, vip, TCP_FIN | TCP_ACK).with_timestamps(client_clock + 4, 1);
            let (_, out) = lb.tc(&fin.bytes());
            last_tsval_seen_by_task = Some(read(&out).timestamps.unwrap().0);
            let (fwd, _) = both(&mut lb, &syn);
            assert_ne!(fwd.flags & lb_common::FLOW_F_BACKEND_CLOSED_FIRST, 0);
            // The clock ticks every 65 µs; real reuse of a port is never that fast.
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(lb.stat(Stat::DropNatPorts), 0);
    });
}

#[test]
fn nat_ports_follow_a_cursor_and_skip_the_ones_in_use() {
    let _env = env();
    in_netns(NS, || {
        let mut lb = Lb::new(web(), false);
        nat_ports(&mut lb, 20000, 20003);
        let vip = sa("10.0.0.1:10000");
        let task = sa("192.168.1.11:80");
        let syn = |port: u16| Pkt::tcp(sa(&format!("10.0.0.2:{port}")), vip, TCP_SYN);
        let port_of = |lb: &mut Lb, c: u16| {
            let (v, out) = lb.tc(&syn(c).bytes());
            (v == TC_ACT_REDIRECT).then(|| read(&out).src.port())
        };
        assert_eq!(port_of(&mut lb, 1), Some(20000));
        assert_eq!(port_of(&mut lb, 2), Some(20001));
        assert_eq!(port_of(&mut lb, 3), Some(20002));
        // The second connection closes (client first: no reservation).
        lb.tc(&Pkt::tcp(sa("10.0.0.2:2"), vip, TCP_FIN | TCP_ACK).bytes());
        lb.tc(&Pkt::tcp(task, sa("10.0.0.1:20001"), TCP_FIN | TCP_ACK).bytes());
        std::thread::sleep(std::time::Duration::from_millis(1));
        assert_eq!(port_of(&mut lb, 4), Some(20003));
        // 20000 is live: skipped; 20001 is free again.
        assert_eq!(port_of(&mut lb, 5), Some(20001));
        // Every port live: refused after the probes, never a port in use.
        assert_eq!(port_of(&mut lb, 6), None);
        assert_eq!(lb.stat(Stat::DropNatPorts), 1);
        assert_eq!(lb.stat(Stat::FlowCreated), 5);
    });
}

#[test]
fn dnat_client_reusing_its_port_after_a_close_starts_a_new_flow() {
    let _env = env();
    in_netns(NS, || {
        let mut lb = Lb::new(web(), true);
        let client = sa("10.0.0.2:45000");
        let vip = sa("10.0.0.1:10000");
        let task = sa("192.168.1.11:80");
        let close_backend_first = |lb: &mut Lb| {
            lb.tc(&Pkt::tcp(task, client, TCP_FIN | TCP_ACK).bytes());
            lb.tc(&Pkt::tcp(client, vip, TCP_FIN | TCP_ACK).bytes());
        };
        let syn = Pkt::tcp(client, vip, TCP_SYN);
        assert_eq!(lb.tc(&syn.bytes()).0, TC_ACT_REDIRECT);
        close_backend_first(&mut lb);
        // The client's kernel reuses the port at once: a new connection, not a drop.
        assert_eq!(lb.tc(&syn.bytes()).0, TC_ACT_REDIRECT, "reused port");
        assert_eq!(lb.stat(Stat::FlowReplaced), 1);
        let (fwd, rev) = both(&mut lb, &syn);
        assert_eq!((fwd.flags, rev.flags), (0, lb_common::FLOW_F_REPLY));
        // Even with the forward entry gone (evicted), the closed reply entry gives way.
        close_backend_first(&mut lb);
        lb.dp.maps.flows.remove(&key(&syn)).unwrap();
        assert_eq!(lb.tc(&syn.bytes()).0, TC_ACT_REDIRECT, "after eviction");
        assert_eq!(lb.stat(Stat::DropFlowInsert), 0);
        // A live connection's reply entry is never taken: the same client port to another
        // service on the same task collides with it and is refused.
        let mut svcs = web();
        svcs.push(service(
            "web2",
            None,
            10004,
            Protocol::Tcp,
            &["192.168.1.11:80"],
        ));
        let mut lb = Lb::new(svcs, true);
        assert_eq!(lb.tc(&syn.bytes()).0, TC_ACT_REDIRECT);
        let other = Pkt::tcp(client, sa("10.0.0.1:10004"), TCP_SYN);
        assert_eq!(lb.tc(&other.bytes()).0, TC_ACT_SHOT, "live reply tuple");
        assert_eq!(lb.stat(Stat::DropFlowInsert), 1);
    });
}

#[test]
fn the_port_gate_follows_services_and_the_flows_still_draining() {
    let _env = env();
    in_netns(NS, || {
        let mut lb = Lb::new(web(), false);
        let client = sa("10.0.0.2:46000");
        let vip = sa("10.0.0.1:10000");
        let syn = Pkt::tcp(client, vip, TCP_SYN);
        assert_eq!(lb.tc(&syn.bytes()).0, TC_ACT_REDIRECT);
        let nat = {
            let f = lb.flow(key(&syn)).unwrap();
            addr_of(f.new_src, f.new_sport)
        };
        // A restarted daemon rebuilds the gate from the services and the flows, then the
        // service goes: its flow drains, both ways, through the gate.
        lb.dp.readopt().unwrap();
        lb.dp.apply(&Desired { services: vec![] }).unwrap();
        let data = Pkt::tcp(client, vip, TCP_ACK);
        assert_eq!(
            lb.tc(&data.bytes()).0,
            TC_ACT_REDIRECT,
            "client side drains"
        );
        let reply = Pkt::tcp(sa("192.168.1.11:80"), nat, TCP_ACK);
        assert_eq!(
            lb.tc(&reply.bytes()).0,
            TC_ACT_REDIRECT,
            "reply side drains"
        );
        // With the flow gone too, the next daemon closes the gate: the port is nobody's.
        let flows = &mut lb.dp.maps.flows;
        let keys: Vec<FlowKey> = flows.keys().filter_map(Result::ok).collect();
        for k in keys {
            flows.remove(&k).unwrap();
        }
        lb.dp.readopt().unwrap();
        assert!(
            lb.dp.maps.ports.iter().all(|w| w.unwrap() == 0),
            "no service, no flow: every port closed"
        );
        let before = lb.stat(Stat::PassNotService);
        let (v, out) = lb.tc(&Pkt::tcp(sa("10.0.0.2:46001"), vip, TCP_SYN).bytes());
        assert_eq!((v, out.len()), (TC_ACT_OK, syn.bytes().len()));
        assert_eq!(lb.stat(Stat::PassNotService), before + 1);
    });
}

#[test]
fn the_sweeper_reads_the_table_in_batches_and_removes_only_expired_flows() {
    let _env = env();
    in_netns(NS, || {
        let mut lb = Lb::new(web(), false);
        let d = Config::default();
        let cfg = nat_ports(&mut lb, d.nat_port_min, d.nat_port_max);
        let vip = sa("10.0.0.1:10000");
        // 5,000 flows (10,000 entries: several batches), every fifth one closed.
        for i in 0..5000u16 {
            let client =
                SocketAddrV4::new(Ipv4Addr::new(10, 0, (i >> 8) as u8 + 1, i as u8), 40000);
            assert_eq!(
                lb.tc(&Pkt::tcp(client, vip, TCP_SYN).bytes()).0,
                TC_ACT_REDIRECT
            );
            if i % 5 == 0 {
                lb.tc(&Pkt::tcp(client, vip, TCP_FIN | TCP_ACK).bytes());
                let f = lb.flow(key(&Pkt::tcp(client, vip, TCP_SYN))).unwrap();
                let nat = addr_of(f.new_src, f.new_sport);
                lb.tc(&Pkt::tcp(sa("192.168.1.11:80"), nat, TCP_FIN | TCP_ACK).bytes());
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
        let stats = sum_stats(&lb.dp.maps.stats);
        let flows = &mut lb.dp.maps.flows;
        let mut sweeper = lb_user::dataplane::flows::Sweeper::default();
        let (report, backends, services) =
            sweeper.sweep(flows, &stats, &cfg, lb_user::dataplane::monotonic_ns());
        assert_eq!(report.expired_removed, 2000, "{report:?}");
        assert_eq!(report.entries, 8000, "{report:?}");
        assert_eq!(flows.keys().count(), 8000);
        assert_eq!((backends.len(), services.len()), (1, 1));
        // The batch read itself (the sweeper falls back to key-by-key reads if it fails).
        use aya::maps::IterableMap as _;
        let all = lb_user::dataplane::batch::lookup_all::<FlowKey, Flow>(flows.map())
            .expect("BPF_MAP_LOOKUP_BATCH on the flow table");
        assert_eq!(all.len(), 8000);
        assert!(all.iter().all(|(k, f)| flows.get(k, 0).ok() == Some(*f)));
    });
}
