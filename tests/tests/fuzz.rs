//! The differential fuzzer in CI: a bounded run (1,000,000 packets per hook unless
//! `LB_FUZZ_PACKETS` says otherwise) of `lb_tests::fuzz` against the reference model, and the
//! deviations it found in the data plane, each kept as a regression test with its minimal
//! packets.
use std::net::SocketAddrV4;

use lb_common::{
    Backend, BackendKey, IPPROTO_TCP, PORT_BACKEND, PORT_SERVICE, Service, ServiceKey,
};
use lb_tests::{
    fuzz::{self, Options, input::Ifaces},
    model::{Deviations, Hook, State},
    netns::in_netns,
    packets::{Pkt, TCP_ACK, TCP_FIN, TCP_SYN},
};

/// CI's count: at least a million runs through each hook.
const CI_PACKETS_PER_HOOK: u64 = 1_000_000;

#[test]
fn the_data_plane_agrees_with_the_model() {
    let _ns = fuzz::namespace();
    let opts = Options::from_env(CI_PACKETS_PER_HOOK);
    eprintln!(
        "fuzzing with LB_FUZZ_SEED={:#x}, {} packets per hook",
        opts.seed, opts.packets_per_hook
    );
    let o = opts.clone();
    let report = in_netns(fuzz::NS, move || fuzz::run(&o));
    let rate = (report.xdp_runs + report.tc_runs) as f64 / report.seconds;
    eprintln!(
        "{} XDP and {} TC runs in {} batches, {:.1} s ({rate:.0} runs/s); {} inputs refused by the harness",
        report.xdp_runs, report.tc_runs, report.batches, report.seconds, report.refused
    );
    let mut kinds: Vec<_> = report.by_kind.iter().collect();
    kinds.sort();
    eprintln!("inputs: {kinds:?}");
    let mut causes: Vec<_> = report.by_cause.iter().collect();
    causes.sort();
    eprintln!("outcomes: {causes:?}");
    assert!(
        report.failures.is_empty(),
        "{} failing batch(es) (seed {:#x}):\n{}",
        report.failures.len(),
        opts.seed,
        report.failures.join("\n\n")
    );
    assert!(report.xdp_runs >= opts.packets_per_hook && report.tc_runs >= opts.packets_per_hook);
    // The admission steps are exercised on both hooks, so agreement covers them.
    for cause in ["DropDenied", "Redirect"] {
        for hook in ["Xdp", "Tc"] {
            let key = format!("{hook} {cause}");
            assert!(
                report.by_cause.contains_key(&key),
                "no {key} among the outcomes: {causes:?}"
            );
        }
    }
}

/// A full-NAT TCP service on 10.0.0.1:10000 with the one task 192.168.1.11:80.
fn one_service(st: &mut State, _ifs: Ifaces) {
    let key = ServiceKey {
        addr: raw("10.0.0.1"),
        port: 10000u16.to_be(),
        proto: IPPROTO_TCP,
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
    st.backends.insert(
        BackendKey {
            service_id: 1,
            generation: 0,
            index: 0,
        },
        Backend {
            addr: raw("192.168.1.11"),
            nat_addr: raw("10.0.0.1"),
            port: 80u16.to_be(),
            _pad: 0,
            id: 1,
        },
    );
    st.rr.insert(1, 0);
    st.nat_cursor.insert(1, 0);
    st.ports.insert((PORT_SERVICE, IPPROTO_TCP, 10000));
    st.ports.insert((PORT_BACKEND, IPPROTO_TCP, 80));
}

fn raw(s: &str) -> u32 {
    u32::from(s.parse::<std::net::Ipv4Addr>().unwrap()).to_be()
}

fn sa(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

/// Runs `packets` against the model as it holds right and as it was with deviation `on`
/// switched on: the data plane must agree with the first, and the second must disagree (so
/// the packets do show what the data plane once got wrong).
fn fixed(name: &str, packets: Vec<(Hook, Vec<u8>)>, on: impl Fn(&mut Deviations)) {
    let _ns = fuzz::namespace();
    let mut old = Deviations::NONE;
    on(&mut old);
    let (right, wrong) = in_netns(fuzz::NS, move || {
        (
            fuzz::replay(one_service, &packets, Deviations::LB_EBPF),
            fuzz::replay(one_service, &packets, old),
        )
    });
    if let Err(e) = right {
        panic!("{name}: the data plane disagrees with the model: {e}");
    }
    assert!(
        wrong.is_err(),
        "{name}: the packets no longer tell the old behaviour from the right one"
    );
}

/// Found by the fuzzer (`marks_foreign_peer`): in full NAT the client reuses its port after
/// its FIN (a new flow B on the same client tuple; A's reply entry keeps A's NAT port
/// reserved), then A's backend sends its own FIN on A's NAT port. The data plane used to mark
/// the entry at A's peer key, which is now B's, so B turned CLOSING (a 10 s life) though B
/// never closed. Now only a flow's own other direction is marked.
#[test]
fn a_late_fin_of_an_old_flow_leaves_the_new_flow_on_its_tuple_open() {
    let client = sa("10.0.0.2:40000");
    let vip = sa("10.0.0.1:10000");
    let old_nat = sa("10.0.0.1:1024");
    let packets = vec![
        (Hook::Tc, Pkt::tcp(client, vip, TCP_SYN).bytes()),
        (Hook::Tc, Pkt::tcp(client, vip, TCP_FIN | TCP_ACK).bytes()),
        (Hook::Tc, Pkt::tcp(client, vip, TCP_SYN).bytes()),
        (
            Hook::Tc,
            Pkt::tcp(sa("192.168.1.11:80"), old_nat, TCP_FIN | TCP_ACK).bytes(),
        ),
    ];
    fixed("marks_foreign_peer", packets, |d| {
        d.marks_foreign_peer = true
    });
}

/// Found by the fuzzer (`lenient_lengths`): a SYN whose IPv4 total length claims 100 bytes
/// more than the frame holds used to be balanced (a flow created, the packet rewritten and
/// redirected); now it passes untouched for the stack to judge, as `pass_malformed` says.
#[test]
fn a_segment_whose_lengths_do_not_add_up_passes_untouched() {
    let mut syn = Pkt::tcp(sa("10.0.0.2:40000"), sa("10.0.0.1:10000"), TCP_SYN).bytes();
    let tot = u16::from_be_bytes([syn[16], syn[17]]) + 100;
    syn[16..18].copy_from_slice(&tot.to_be_bytes());
    syn[24..26].fill(0);
    let c = lb_common::csum::checksum(&syn[14..34]);
    syn[24..26].copy_from_slice(&c.to_ne_bytes());
    fixed("lenient_lengths", vec![(Hook::Tc, syn)], |d| {
        d.lenient_lengths = true
    });
}
