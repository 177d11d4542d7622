//! The DNS fast path of the XDP program, through `BPF_PROG_TEST_RUN`: A queries for names in
//! `LB_DNS_A` answered in place (parsed back with hickory-proto), everything else passed
//! byte-identical to the userspace server, and nothing at all while the fast path is off.
use std::net::Ipv4Addr;

use aya::programs::{TestRun, TestRunOptions, Xdp};
use hickory_proto::{
    op::{Message, MessageType, ResponseCode},
    rr::{RData, RecordType},
};
use lb_common::{DnsName, DnsStat, MAP_DNS_A};
use lb_tests::packets::{
    Pkt, dns_query, read,
    verdict::{XDP_PASS, XDP_TX},
};
use lb_user::{
    dataplane::{
        Dataplane,
        fast_dns::FastRecords,
        loader::{Capacities, FastDns},
        pins::PinLayout,
    },
    dns::zone::{Records, Zone},
};

const SERVER: &str = "10.0.0.1:53";
const ON: FastDns = FastDns {
    addr: Some(Ipv4Addr::new(10, 0, 0, 1)),
    port: 53,
    ttl: 5,
};
const CLIENT: &str = "10.0.0.2:41000";
/// `BPF_PROG_TEST_RUN` runs XDP programs as if on the loopback interface.
const LO: u32 = 1;

struct Fast {
    dp: Dataplane,
}

fn addrs(n: u8) -> Vec<Ipv4Addr> {
    (1..=n).map(|i| Ipv4Addr::new(192, 168, 0, i)).collect()
}

/// The names both paths answer for: A sets of 1, 3 and 8 addresses, one of nine (too many for
/// the fast path), and a long dcos-net name.
fn zone() -> Zone {
    let mut zone = Zone {
        domain: "mesos".into(),
        ..Zone::default()
    };
    for (name, n) in [
        ("web.marathon.mesos", 3),
        ("one.marathon.mesos", 1),
        ("eight.marathon.mesos", 8),
        ("nine.marathon.mesos", 9),
        ("nginx.marathon.containerip.dcos.thisdcos.directory", 3),
    ] {
        zone.names.insert(
            name.into(),
            Records {
                a: addrs(n),
                srv: vec![],
            },
        );
    }
    zone
}

impl Fast {
    fn new(dns: Option<FastDns>) -> Self {
        let mut f = Self::empty(Capacities::default(), dns);
        let zone = zone();
        let mut fast = FastRecords::adopt(&f.dp.maps);
        assert_eq!(
            fast.sync(&mut f.dp.maps, &zone).unwrap(),
            (4, 0),
            "nine addresses stay out"
        );
        f
    }

    /// Loaded at `caps`, with no names yet.
    fn empty(caps: Capacities, dns: Option<FastDns>) -> Self {
        let mut dp = Dataplane::load_with_dns(caps, None, dns)
            .expect("the verifier accepts both programs with the DNS fast path");
        dp.maps.xdp_tx.insert(LO, 1, 0).unwrap();
        Self { dp }
    }

    fn on() -> Self {
        Self::new(Some(ON))
    }

    fn run(&mut self, input: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; input.len() + 512];
        let p: &mut Xdp = self
            .dp
            .ebpf
            .program_mut("lb_xdp")
            .unwrap()
            .try_into()
            .unwrap();
        let res = p
            .test_run(TestRunOptions {
                data_in: Some(input),
                data_out: Some(&mut out),
                ..TestRunOptions::new()
            })
            .expect("lb_xdp test run");
        out.truncate(res.data_size_out as usize);
        (res.return_value, out)
    }

    fn dns_stat(&self, s: DnsStat) -> u64 {
        self.dp
            .maps
            .dns_stats
            .get(&(s as u32), 0)
            .unwrap()
            .iter()
            .sum()
    }
}

fn frame(payload: Vec<u8>, to: &str) -> Vec<u8> {
    let mut p = Pkt::udp(CLIENT.parse().unwrap(), to.parse().unwrap());
    p.payload = payload;
    p.bytes()
}

/// The answer's DNS message, after checking the frame around it: addresses, ports and MACs
/// swapped, valid IP checksum, lengths that add up, UDP checksum zero (IPv4 allows it).
fn answer_of(input: &[u8], out: &[u8]) -> Message {
    let seen = read(out);
    let asked = read(input);
    assert_eq!((seen.src, seen.dst), (asked.dst, asked.src));
    assert_eq!((seen.src_mac, seen.dst_mac), (asked.dst_mac, asked.src_mac));
    assert!(seen.ip_checksum_ok, "IP checksum");
    assert_eq!(seen.l4_checksum, 0, "UDP checksum left out");
    let tot = u16::from_be_bytes([out[16], out[17]]) as usize;
    assert_eq!(tot + 14, out.len(), "IP total length is the frame's");
    let udp_len = u16::from_be_bytes([out[38], out[39]]) as usize;
    assert_eq!(udp_len, tot - 20, "UDP length");
    Message::from_vec(&out[42..]).expect("the answer parses")
}

fn a_records(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .map(|r| match &r.data {
            RData::A(a) => a.0,
            other => panic!("not an A record: {other:?}"),
        })
        .collect()
}

/// With the fast path on, lb_xdp has more to verify; it must stay as far from the limit as
/// `prog_test_run`'s headroom test asks of the programs without it.
#[test]
fn the_verifier_accepts_the_fast_path_with_headroom() {
    let f = Fast::on();
    let info = f.dp.ebpf.program("lb_xdp").unwrap().info().unwrap();
    let n = info
        .verified_instruction_count()
        .expect("the kernel reports verified instructions");
    eprintln!("lb_xdp with the DNS fast path: {n} verified instructions");
    // The default build (fast path off) keeps the 600,000 budget of `prog_test_run.rs`. With
    // it on, the answer grows at the front of the frame and the question moves down in the
    // program (a veth gives XDP no room at the back), about 90,000 instructions more: 700,000
    // still leaves 30% of the kernel's limit.
    assert!(
        n < 700_000,
        "{n} verified instructions of the 1,000,000 limit"
    );
}

#[test]
fn a_queries_for_held_names_are_answered_in_place() {
    let mut f = Fast::on();
    let input = frame(dns_query(0x1234, "WeB.Marathon.MESOS", 1, None), SERVER);
    let (verdict, out) = f.run(&input);
    assert_eq!(verdict, XDP_TX);
    let m = answer_of(&input, &out);
    assert_eq!(m.metadata.id, 0x1234);
    assert_eq!(m.metadata.message_type, MessageType::Response);
    assert!(m.metadata.authoritative && m.metadata.recursion_desired);
    assert!(!m.metadata.recursion_available && !m.metadata.truncation);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.queries.len(), 1);
    assert_eq!(
        m.queries[0].name().to_string(),
        "WeB.Marathon.MESOS.",
        "the question as asked"
    );
    assert_eq!(m.queries[0].query_type(), RecordType::A);
    let mut got = a_records(&m);
    assert!(
        m.answers
            .iter()
            .all(|r| r.ttl == 5 && r.name == *m.queries[0].name())
    );
    got.sort();
    assert_eq!(got, addrs(3));
    assert!(m.additionals.is_empty() && m.authorities.is_empty() && m.edns.is_none());
    // One and eight addresses: the smallest and the largest answer.
    for (name, n) in [("one.marathon.mesos", 1), ("eight.marathon.mesos", 8)] {
        let input = frame(dns_query(7, name, 1, None), SERVER);
        let (verdict, out) = f.run(&input);
        assert_eq!(verdict, XDP_TX, "{name}");
        let mut got = a_records(&answer_of(&input, &out));
        got.sort();
        assert_eq!(got, addrs(n), "{name}");
    }
    assert_eq!(f.dns_stat(DnsStat::Answered), 3);
    assert_eq!(f.dns_stat(DnsStat::ToServer), 0);
}

#[test]
fn edns_queries_get_an_opt_record_without_their_options() {
    let mut f = Fast::on();
    // dig's default: a client cookie.
    let cookie = [0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8];
    let long = "nginx.marathon.containerip.dcos.thisdcos.directory";
    for (name, options) in [
        ("web.marathon.mesos", &[][..]),
        ("web.marathon.mesos", &cookie[..]),
        (long, &cookie[..]),
    ] {
        let input = frame(dns_query(9, name, 1, Some((0, options))), SERVER);
        let (verdict, out) = f.run(&input);
        assert_eq!(verdict, XDP_TX, "{name}, options {options:?}");
        let m = answer_of(&input, &out);
        let edns = m.edns.as_ref().expect("an OPT record");
        assert_eq!(edns.max_payload(), 1232);
        assert_eq!(edns.version(), 0);
        assert!(edns.options().as_ref().is_empty(), "no option echoed");
        assert_eq!(a_records(&m).len(), 3);
    }
}

#[test]
fn answers_rotate_from_a_random_start() {
    let mut f = Fast::on();
    let mut firsts = std::collections::BTreeSet::new();
    for id in 0..64 {
        let input = frame(dns_query(id, "web.marathon.mesos", 1, None), SERVER);
        let (_, out) = f.run(&input);
        let got = a_records(&answer_of(&input, &out));
        // A rotation of the sorted list, whatever its start.
        let at = got.iter().position(|a| *a == addrs(3)[0]).unwrap();
        let mut turned = got.clone();
        turned.rotate_left(at);
        assert_eq!(turned, addrs(3), "{got:?} is a rotation");
        firsts.insert(got[0]);
    }
    assert_eq!(firsts.len(), 3, "every address comes first sometimes");
}

#[test]
fn everything_else_to_the_server_passes_untouched() {
    let mut f = Fast::on();
    let web = |id| dns_query(id, "web.marathon.mesos", 1, None);
    let mut compressed = dns_query(1, "web.marathon.mesos", 1, None);
    compressed.truncate(12);
    compressed.extend([3, b'w', b'e', b'b', 0xc0, 12, 0, 1, 0, 1]);
    let mut response = web(2);
    response[2] |= 0x80;
    let mut two_questions = web(3);
    two_questions[5] = 2;
    let mut trailing = web(4);
    trailing.push(0);
    let mut opcode = web(5);
    opcode[2] |= 0x28; // UPDATE
    let long = format!("{}.marathon.mesos", "x".repeat(50));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("AAAA", dns_query(10, "web.marathon.mesos", 28, None)),
        ("SRV", dns_query(11, "web.marathon.mesos", 33, None)),
        (
            "a name it does not hold",
            dns_query(12, "nope.marathon.mesos", 1, None),
        ),
        (
            "a name with nine addresses",
            dns_query(13, "nine.marathon.mesos", 1, None),
        ),
        ("a name longer than the key", dns_query(14, &long, 1, None)),
        ("compression in the question", compressed),
        ("a response", response),
        ("two questions", two_questions),
        ("bytes after the question", trailing),
        ("another opcode", opcode),
        (
            "EDNS version 1",
            dns_query(15, "web.marathon.mesos", 1, Some((1, &[]))),
        ),
    ];
    for (what, payload) in &cases {
        let input = frame(payload.clone(), SERVER);
        let (verdict, out) = f.run(&input);
        assert_eq!((verdict, &out), (XDP_PASS, &input), "{what}");
    }
    let counted = f.dns_stat(DnsStat::ToServer);
    assert_eq!(counted, cases.len() as u64, "each counted once");
    // Not to the server: another port, another address. Not counted as DNS.
    for to in ["10.0.0.1:5353", "10.0.0.9:53"] {
        let input = frame(web(20), to);
        let (verdict, out) = f.run(&input);
        assert_eq!((verdict, &out), (XDP_PASS, &input), "to {to}");
    }
    // Cut short at every length: never answered, never changed.
    let whole = frame(web(21), SERVER);
    for len in 14..whole.len() {
        let (verdict, out) = f.run(&whole[..len]);
        assert_eq!(
            (verdict, &out[..]),
            (XDP_PASS, &whole[..len]),
            "cut at {len}"
        );
    }
    // An interface whose peer may not take XDP frames: the server answers.
    f.dp.maps.xdp_tx.remove(&LO).unwrap();
    let (verdict, out) = f.run(&whole);
    assert_eq!((verdict, &out), (XDP_PASS, &whole), "not in LB_XDP_TX");
    assert_eq!(f.dns_stat(DnsStat::Answered), 0);
}

#[test]
fn with_the_fast_path_off_nothing_is_answered_or_counted() {
    let mut f = Fast::new(None);
    let input = frame(dns_query(1, "web.marathon.mesos", 1, None), SERVER);
    let (verdict, out) = f.run(&input);
    assert_eq!((verdict, &out), (XDP_PASS, &input));
    assert_eq!(
        f.dns_stat(DnsStat::Answered) + f.dns_stat(DnsStat::ToServer),
        0
    );
}

#[test]
fn a_cleared_zone_empties_the_map() {
    let mut f = Fast::on();
    let mut fast = FastRecords::adopt(&f.dp.maps);
    assert_eq!(fast.sync(&mut f.dp.maps, &Zone::default()).unwrap(), (0, 4));
    let input = frame(dns_query(1, "web.marathon.mesos", 1, None), SERVER);
    let (verdict, out) = f.run(&input);
    assert_eq!((verdict, &out), (XDP_PASS, &input), "no longer held");
}

/// `--max-dns-names 2` with four names to hold: two are answered in place, two pass to the
/// server untouched, and no write fails; a name that leaves the zone makes room for one left
/// out.
#[test]
fn a_full_map_leaves_names_to_the_server() {
    let caps = Capacities {
        dns_names: 2,
        ..Capacities::default()
    };
    let mut f = Fast::empty(caps, Some(ON));
    let mut zone = zone();
    let mut fast = FastRecords::adopt(&f.dp.maps);
    let (written, removed) = fast
        .sync(&mut f.dp.maps, &zone)
        .expect("a full map is no error");
    assert_eq!((written, removed, fast.left_out()), (2, 0, 2));
    let held: Vec<DnsName> = f.dp.maps.dns_a.keys().map(Result::unwrap).collect();
    assert_eq!(held.len(), 2);
    let names = [
        "web.marathon.mesos",
        "one.marathon.mesos",
        "eight.marathon.mesos",
        "nginx.marathon.containerip.dcos.thisdcos.directory",
    ];
    let verdicts: Vec<u32> = names
        .iter()
        .map(|name| {
            let input = frame(dns_query(1, name, 1, None), SERVER);
            let (verdict, out) = f.run(&input);
            if verdict == XDP_PASS {
                assert_eq!(out, input, "{name} passes untouched");
            }
            verdict
        })
        .collect();
    assert_eq!(
        verdicts.iter().filter(|v| **v == XDP_TX).count(),
        2,
        "{verdicts:?}"
    );
    assert_eq!(
        verdicts.iter().filter(|v| **v == XDP_PASS).count(),
        2,
        "{verdicts:?}"
    );
    // One held name leaves the zone: one left out takes its place.
    let gone = names
        .iter()
        .zip(&verdicts)
        .find(|(_, v)| **v == XDP_TX)
        .map(|(n, _)| *n)
        .unwrap();
    zone.names.remove(gone);
    assert_eq!(fast.sync(&mut f.dp.maps, &zone).unwrap(), (1, 1));
    assert_eq!(fast.left_out(), 1);
    let input = frame(dns_query(2, gone, 1, None), SERVER);
    let (verdict, out) = f.run(&input);
    assert_eq!((verdict, &out), (XDP_PASS, &input), "{gone} is gone");
}

/// A name taken out of `LB_DNS_A` behind the daemon's back (by hand, with bpftool) is what a
/// removal wants: later syncs go on, where the removal's error used to fail each of them.
#[test]
fn a_name_already_gone_does_not_stop_later_syncs() {
    let mut f = Fast::on();
    let mut fast = FastRecords::adopt(&f.dp.maps);
    let mut zone = zone();
    let mut web = DnsName::default();
    web.wire[..20].copy_from_slice(b"\x03web\x08marathon\x05mesos\x00");
    f.dp.maps.dns_a.remove(&web).expect("held after the sync");
    zone.names.remove("web.marathon.mesos");
    zone.names.insert(
        "new.marathon.mesos".into(),
        Records {
            a: addrs(2),
            srv: vec![],
        },
    );
    assert_eq!(fast.sync(&mut f.dp.maps, &zone).unwrap(), (1, 1));
    let input = frame(dns_query(1, "new.marathon.mesos", 1, None), SERVER);
    assert_eq!(
        f.run(&input).0,
        XDP_TX,
        "the name after the removal is written"
    );
}

/// A directory of the test's own on a bpffs outside /sys (which may have none mounted),
/// removed with what is pinned in it.
struct PinDir(PinLayout);

impl PinDir {
    fn new(name: &str) -> Self {
        let fs = PinLayout::new("/run/lbt-bpffs");
        fs.ensure().expect("a bpffs at /run/lbt-bpffs");
        let layout = PinLayout::new(fs.root.join(format!("{name}-{}", std::process::id())));
        layout.ensure().expect("a pin directory on bpffs");
        Self(layout)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0.root);
    }
}

/// `--max-dns-names` changed across a restart: the new `LB_DNS_A`, at the new size, holds the
/// names the old one held (as many as fit) before the zone's first sync, so queries are
/// answered in place from the first packet, as after a restart at the same size; it takes the
/// old one's pin, and nothing is left beside it.
#[test]
fn a_resized_table_answers_its_names_before_the_first_sync() {
    let pins = PinDir::new("dns-resize");
    let at = |dns_names| Capacities {
        dns_names,
        ..Capacities::default()
    };
    let names = [
        "web.marathon.mesos",
        "one.marathon.mesos",
        "eight.marathon.mesos",
        "nginx.marathon.containerip.dcos.thisdcos.directory",
    ];
    let answered = |f: &mut Fast| {
        names
            .iter()
            .filter(|name| f.run(&frame(dns_query(1, name, 1, None), SERVER)).0 == XDP_TX)
            .count()
    };
    let pinned_entries = || {
        let data = aya::maps::MapData::from_pin(pins.0.map(MAP_DNS_A)).expect("LB_DNS_A pinned");
        data.info().unwrap().max_entries()
    };
    {
        let dp = Dataplane::load_with_dns(at(1000), Some(&pins.0), Some(ON)).unwrap();
        let mut f = Fast { dp };
        f.dp.maps.xdp_tx.insert(LO, 1, 0).unwrap();
        let mut fast = FastRecords::adopt(&f.dp.maps);
        assert_eq!(fast.sync(&mut f.dp.maps, &zone()).unwrap(), (4, 0));
        assert_eq!(answered(&mut f), 4);
    }
    // A start that stopped between pinning the new table and renaming it left its pin behind.
    aya::maps::MapData::from_pin(pins.0.map(MAP_DNS_A))
        .unwrap()
        .pin(pins.0.root.join(format!("{MAP_DNS_A}-resized")))
        .expect("a stale pin beside LB_DNS_A");
    for (size, held) in [(64, 4), (2, 2), (1000, 2)] {
        let dp = Dataplane::load_with_dns(at(size), Some(&pins.0), Some(ON))
            .unwrap_or_else(|e| panic!("restart at {size} names: {e:#}"));
        let mut f = Fast { dp };
        f.dp.maps.xdp_tx.insert(LO, 1, 0).unwrap();
        assert_eq!(pinned_entries(), size, "the pin is the new table");
        assert_eq!(answered(&mut f), held, "at {size} names, before any sync");
        let beside: Vec<_> = std::fs::read_dir(&pins.0.root)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(MAP_DNS_A) && n != MAP_DNS_A)
            .collect();
        assert!(beside.is_empty(), "{beside:?}");
    }
}

/// A DNS message cut into its parts as bytes: header flags and counts, the question, and each
/// record of the answer and additional sections as its owner name (decoded, lowercase) and its
/// bytes after the name (type, class, TTL, length, data).
#[derive(Debug, PartialEq, Eq)]
struct Sections {
    flags: Vec<u8>,
    counts: Vec<u8>,
    question: Vec<u8>,
    /// Sorted: both paths rotate the addresses, each from its own start.
    answers: Vec<(String, Vec<u8>)>,
    rest: Vec<(String, Vec<u8>)>,
}

fn sections(m: &[u8]) -> Sections {
    // (the name, read through compression pointers; where the bytes after it start)
    let name = |at: usize| -> (String, usize) {
        let (mut i, mut end, mut out) = (at, None, String::new());
        for _ in 0..128 {
            match m[i] {
                0 => return (out, end.unwrap_or(i + 1)),
                l if l & 0xc0 == 0xc0 => {
                    end.get_or_insert(i + 2);
                    i = (usize::from(l & 0x3f) << 8) | usize::from(m[i + 1]);
                }
                l => {
                    let l = usize::from(l);
                    out.push_str(&String::from_utf8_lossy(&m[i + 1..i + 1 + l]).to_lowercase());
                    out.push('.');
                    i += 1 + l;
                }
            }
        }
        panic!("a name loops at {at}");
    };
    let count = |at: usize| u16::from_be_bytes([m[at], m[at + 1]]) as usize;
    let mut i = name(12).1 + 4;
    let question = m[12..i].to_vec();
    let mut records = Vec::new();
    for _ in 0..count(6) + count(8) + count(10) {
        let (owner, fixed) = name(i);
        let end = fixed + 10 + count(fixed + 8);
        records.push((owner, m[fixed..end].to_vec()));
        i = end;
    }
    assert_eq!(i, m.len(), "nothing after the last record");
    let rest = records.split_off(count(6));
    records.sort();
    Sections {
        flags: m[2..4].to_vec(),
        counts: m[4..12].to_vec(),
        question,
        answers: records,
        rest,
    }
}

/// The check: for the same zone, the XDP fast path and the userspace server (the real
/// one, hickory-server on loopback) give byte-for-byte the same header flags, counts, question,
/// and answer and OPT records, with and without EDNS, whatever the name's case. Owner names
/// compare as names: the fast path points each at the question (`c0 0c`), hickory-server
/// writes the first in full (it copies the question without noting it for compression).
#[test]
fn both_paths_give_the_same_answer_sections() {
    let mut f = Fast::on();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(async {
        let bound = lb_user::dns::server::bind(&["127.0.0.1:0".parse().unwrap()])
            .await
            .unwrap();
        let addr = bound.addrs[0];
        let (tx, zones) = tokio::sync::watch::channel(Some(std::sync::Arc::new(zone())));
        lb_user::dns::server::spawn(
            bound,
            lb_user::dns::server::ServeConfig {
                domain: "mesos".into(),
                ttl: 5,
                upstream: None,
            },
            zones,
            std::sync::Arc::default(),
        );
        // The sender lives as long as the runtime: the zone stays.
        std::mem::forget(tx);
        addr
    });
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    let ask = |q: &[u8]| -> Vec<u8> {
        sock.send_to(q, server).unwrap();
        let mut buf = [0u8; 1500];
        let (n, _) = sock.recv_from(&mut buf).expect("the server answers");
        buf[..n].to_vec()
    };
    // The server makes its records from the zone on its own task: wait for them.
    let t = std::time::Instant::now();
    while ask(&dns_query(1, "web.marathon.mesos", 1, None))[3] & 0x0f != 0 {
        assert!(
            t.elapsed().as_secs() < 5,
            "the server never answered NOERROR"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let cookie = [0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8];
    let mut compared = 0;
    for name in [
        "web.marathon.mesos",
        "One.Marathon.Mesos",
        "eight.marathon.mesos",
        "nginx.marathon.containerip.dcos.thisdcos.directory",
    ] {
        for edns in [None, Some((0, &[][..])), Some((0, &cookie[..]))] {
            let q = dns_query(0x4242, name, 1, edns);
            let (verdict, out) = f.run(&frame(q.clone(), SERVER));
            assert_eq!(verdict, XDP_TX, "{name} {edns:?}");
            let kernel = sections(&out[42..]);
            let user = sections(&ask(&q));
            assert_eq!(kernel, user, "{name}, EDNS {edns:?}");
            compared += 1;
        }
    }
    assert_eq!(compared, 12);
}
