//! End to end through real veth links: a client, the agent running `lb run`, two Calico-style
//! tasks on it and one behind a second agent. Real TCP and UDP from the client namespace.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use serde_json::Value;

use lb_tests::{
    client::{Answer, fetch_and_check, tcp_ask, tcp_ask_from, udp_ask, udp_ask_from},
    lb::{self, wait_for},
    netns::{AGENT, AGENT_BACKNET, CLIENT, TASKS, Topology, in_netns, server_bin},
};

const T: Duration = Duration::from_secs(3);

fn vip(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(AGENT, port)
}

/// A services file with TCP and UDP on 10000 over the three tasks.
fn write_services(topo: &Topology) -> String {
    services_file(
        topo,
        r#"{"name": "web_10000", "port": 10000, "protocol": "tcp", "backends": TASKS},
           {"name": "dns_10000", "port": 10000, "protocol": "udp", "backends": TASKS}"#,
    )
}

/// A services file of `services` (JSON objects, `TASKS` standing for the three tasks' list).
fn services_file(topo: &Topology, services: &str) -> String {
    let backends: Vec<String> = TASKS
        .iter()
        .map(|(_, a, _, _)| format!("\"{a}:80\""))
        .collect();
    let path = format!("/tmp/{}-services.json", topo.prefix);
    let services = services.replace("TASKS", &format!("[{}]", backends.join(", ")));
    fs::write(&path, format!(r#"{{"services": [{services}]}}"#)).unwrap();
    path
}

fn spread(answers: &[Answer]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for a in answers {
        *m.entry(a.task.clone()).or_default() += 1;
    }
    m
}

fn even(answers: &[Answer]) {
    let s = spread(answers);
    assert_eq!(
        s.keys().cloned().collect::<Vec<_>>(),
        vec!["t1", "t2", "t3"],
        "every task served: {s:?}"
    );
    assert!(
        s.values().all(|n| *n == answers.len() / 3),
        "round-robin spreads evenly: {s:?}"
    );
}

/// The checks shared by both hooks: balance, integrity, and what must stay untouched.
fn balances_and_leaves_the_rest_alone(topo: &mut Topology, expect_nat: bool) {
    let client_ns = topo.ns("client");
    let tcp: Vec<Answer> = in_netns(&client_ns, || {
        (0..30)
            .map(|_| tcp_ask(vip(10000), T).expect("TCP through lb"))
            .collect()
    });
    even(&tcp);
    // A port of its own for every datagram: an ephemeral port that repeats within the UDP
    // timeout is the same flow, to the same task, and that once made this 11/10/9.
    let udp: Vec<Answer> = in_netns(&client_ns, || {
        (0..30)
            .map(|i| udp_ask_from(21000 + i, vip(10000), T).expect("UDP through lb"))
            .collect()
    });
    even(&udp);
    for a in tcp.iter().chain(&udp) {
        if expect_nat {
            assert!(
                [AGENT.to_string(), AGENT_BACKNET.to_string()].contains(&a.peer_ip().to_owned()),
                "full NAT: {} saw {} instead of an agent address",
                a.task,
                a.peer
            );
        } else {
            assert_eq!(
                a.peer_ip(),
                CLIENT.to_string(),
                "DNAT: {} must see the client",
                a.task
            );
        }
    }
    // Several megabytes come back intact, from a local and from the remote task.
    in_netns(&client_ns, || {
        for _ in 0..3 {
            fetch_and_check(vip(10000), 8 << 20, Duration::from_secs(20))
                .expect("8 MiB transfer intact");
        }
    });
    // The agent's own ports and direct traffic to task IPs are undisturbed.
    let agent_port = SocketAddrV4::new(AGENT, 8080);
    let agent_answer = in_netns(&client_ns, move || {
        tcp_ask(agent_port, T).expect("agent's own service")
    });
    assert_eq!(agent_answer.task, "agent");
    assert_eq!(agent_answer.peer_ip(), CLIENT.to_string());
    let agent_udp = in_netns(&client_ns, move || {
        udp_ask(agent_port, T).expect("agent's own UDP")
    });
    assert_eq!(agent_udp.task, "agent");
    for (task, addr, _, _) in TASKS {
        let direct = in_netns(&client_ns, move || {
            tcp_ask(SocketAddrV4::new(addr, 80), T).expect("direct to task")
        });
        assert_eq!(
            (direct.task.as_str(), direct.peer_ip()),
            (task, CLIENT.to_string().as_str()),
            "direct to {addr}"
        );
    }
    lb::assert_no_drops(topo, &[]);
}

fn topology(prefix: &str) -> Topology {
    let mut topo = Topology::new(prefix);
    topo.start_tasks();
    let mut own = topo.cmd("agent", &server_bin());
    own.args(["agent", "8080"]);
    topo.spawn("agent-service", own);
    topo
}

#[test]
fn full_nat_over_tc_balances_tcp_and_udp_across_three_tasks() {
    let mut topo = topology("lbe1");
    // A veth pair with both ends in the agent: neither end's peer is elsewhere.
    topo.sh(
        "agent",
        "ip link add lbpair0 type veth peer name lbpair1 && ip link set lbpair0 up && ip link set lbpair1 up",
    );
    let services = write_services(&topo);
    lb::start(
        &mut topo,
        "lb",
        &[
            "--iface",
            "eth*",
            "--iface",
            "cali*",
            "--hook",
            "tc",
            "--redirect-peer",
            "--config",
            &services,
        ],
        2,
    );
    balances_and_leaves_the_rest_alone(&mut topo, true);
    let st = lb::status(&topo).unwrap();
    let web = st["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "web_10000")
        .unwrap();
    assert!(
        web["new_flows"].as_u64().unwrap() >= 33,
        "counters follow traffic: {web}"
    );
    // The veths whose peers are in other namespaces take packets by bpf_redirect_peer (the
    // traffic above went that way to t1 and t2): LB_PEER_IFS names the tasks' links, the link
    // to agent2 and the uplink (whose peer in the client namespace has the uplink's own index,
    // which `iflink` could not tell from a peer here), and neither end of the pair whose peers
    // are both here.
    let index = |dev: &str| agent_link(&topo, dev, "ifindex");
    assert_eq!(
        agent_link(&topo, "eth0", "iflink"),
        index("eth0"),
        "the uplink's peer has its index"
    );
    let keys = peer_ifs(&topo);
    let elsewhere: BTreeSet<u32> = ["cali-t1", "cali-t2", "eth0", "eth1"].map(index).into();
    assert_eq!(
        keys, elsewhere,
        "LB_PEER_IFS: every veth of the agent with its peer elsewhere"
    );
    for dev in ["lbpair0", "lbpair1"] {
        assert!(
            !keys.contains(&index(dev)),
            "{dev}'s peer is here: {keys:?}"
        );
    }
}

/// TCP and UDP checksum errors the namespace's stack has counted (`/proc/net/snmp`'s
/// `InCsumErrors`): segments and datagrams it dropped because their checksum was wrong.
fn csum_errors(topo: &Topology, ns: &str) -> u64 {
    let snmp = topo.sh(ns, "cat /proc/net/snmp");
    let mut total = 0;
    for proto in ["Tcp:", "Udp:"] {
        let mut rows = snmp.lines().filter(|l| l.starts_with(proto));
        let (names, values) = (rows.next().unwrap(), rows.next().unwrap());
        let at = names
            .split_whitespace()
            .position(|n| n == "InCsumErrors")
            .unwrap_or_else(|| panic!("no InCsumErrors in {names}"));
        total += values
            .split_whitespace()
            .nth(at)
            .unwrap()
            .parse::<u64>()
            .unwrap();
    }
    total
}

#[test]
fn full_nat_over_tc_keeps_offloaded_checksums_right() {
    let mut topo = topology("lbe9");
    // The namespaces send with checksum offload, so the packets TC rewrites carry partial
    // checksums (the pseudo-header's sum, which the device completes), and a veth would hand
    // them on unchecked. With checksum offload off on every link of the agent, the kernel
    // completes each one in software as the packet leaves (large segments are cut there too)
    // and the receiver checks it: a partial checksum the rewrite got wrong is dropped and
    // counted. Redirects without --redirect-peer, which would skip the device's transmit path.
    for dev in ["eth0", "eth1", "cali-t1", "cali-t2"] {
        topo.sh("agent", &format!("ethtool -K {dev} tx off >/dev/null"));
    }
    let services = write_services(&topo);
    lb::start(
        &mut topo,
        "lb",
        &[
            "--iface", "eth*", "--iface", "cali*", "--hook", "tc", "--config", &services,
        ],
        2,
    );
    let roles = ["client", "t1", "t2", "t3"];
    let before: Vec<u64> = roles.iter().map(|r| csum_errors(&topo, r)).collect();
    balances_and_leaves_the_rest_alone(&mut topo, true);
    let after: Vec<u64> = roles.iter().map(|r| csum_errors(&topo, r)).collect();
    assert_eq!(before, after, "checksum errors in {roles:?}");
    let st = lb::status(&topo).unwrap();
    assert!(
        st["dataplane"]["redirect"].as_u64().unwrap() > 1000,
        "TC redirects: {}",
        st["dataplane"]
    );
}

#[test]
fn full_nat_with_xdp_redirecting_where_it_can() {
    let mut topo = topology("lbe2");
    // XDP may forward between veths only if their peers send complete checksums (a veth hands
    // XDP the sender's offloaded, partial ones) and accept XDP frames (GRO on gives them NAPI).
    // Physical NICs are like that by nature; here the far ends are made so.
    for ns in ["client", "t1", "t2", "agent2"] {
        topo.sh(ns, "ethtool -K eth0 gro on tx off >/dev/null");
    }
    let services = write_services(&topo);
    lb::start(
        &mut topo,
        "lb",
        &[
            "--iface",
            "eth*",
            "--iface",
            "cali*",
            "--hook",
            "xdp",
            "--xdp-redirect",
            "*",
            "--config",
            &services,
        ],
        2,
    );
    balances_and_leaves_the_rest_alone(&mut topo, true);
    let st = lb::status(&topo).unwrap();
    assert!(
        st["dataplane"]["redirect"].as_u64().unwrap() > 1000,
        "XDP and TC redirect: {}",
        st["dataplane"]
    );
    for (name, a) in st["daemon"]["interfaces"].as_object().unwrap() {
        assert_eq!(a["xdp"], true, "{name} has XDP");
    }
}

#[test]
fn preserve_client_ip_lets_backends_see_the_client() {
    let mut topo = topology("lbe3");
    // Replies to the client must come back through the agent: the second agent routes so.
    let services = write_services(&topo);
    lb::start(
        &mut topo,
        "lb",
        &[
            "--iface",
            "eth*",
            "--iface",
            "cali*",
            "--hook",
            "tc",
            "--preserve-client-ip",
            "--config",
            &services,
        ],
        2,
    );
    balances_and_leaves_the_rest_alone(&mut topo, false);
    // Without --redirect-peer every packet goes out of the veths: none is listed for its peer.
    assert_eq!(peer_ifs(&topo), BTreeSet::new(), "no --redirect-peer");
}

/// A number the agent's sysfs gives for link `dev` (`ifindex`, `iflink`).
fn agent_link(topo: &Topology, dev: &str, what: &str) -> u32 {
    let out = topo.sh("agent", &format!("cat /sys/class/net/{dev}/{what}"));
    out.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{dev} {what}: {e}: {out}"))
}

/// The ifindexes in `LB_PEER_IFS`, from bpftool.
fn peer_ifs(topo: &Topology) -> BTreeSet<u32> {
    let pin = topo.pin_path().display().to_string();
    let dump = topo.sh(
        "agent",
        &format!("bpftool -j map dump pinned {pin}/LB_PEER_IFS"),
    );
    let entries: Vec<Value> = serde_json::from_str(&dump).unwrap_or_else(|e| panic!("{e}: {dump}"));
    entries
        .iter()
        .map(|e| {
            e["formatted"]["key"]
                .as_u64()
                .unwrap_or_else(|| panic!("{e}")) as u32
        })
        .collect()
}

#[test]
fn restart_keeps_live_connections_and_detach_removes_everything() {
    let mut topo = topology("lbe4");
    let services = write_services(&topo);
    let args = [
        "--iface", "eth*", "--iface", "cali*", "--hook", "tc", "--config", &services,
    ];
    lb::start(&mut topo, "lb", &args, 2);
    let client_ns = topo.ns("client");
    // A live connection: request line sent, response read in two halves across the restart.
    let mut conn = in_netns(&client_ns, || {
        let mut s = TcpStream::connect_timeout(&vip(10000).into(), T).expect("connect");
        s.set_read_timeout(Some(T)).unwrap();
        s.write_all(b"GET /bytes/4000000 HTTP/1.0\r\n\r\n").unwrap();
        s
    });
    let mut first = vec![0u8; 100_000];
    conn.read_exact(&mut first)
        .expect("first part before the restart");
    let links_before = pinned_links(&topo);
    // A stream of new connections across stop, start and program replacement.
    let stop = Arc::new(AtomicBool::new(false));
    let stream = {
        let stop = stop.clone();
        let ns = client_ns.clone();
        thread::spawn(move || {
            in_netns(&ns, move || {
                let (mut ok, mut failed) = (0, Vec::new());
                while !stop.load(Ordering::Relaxed) && ok < 100_000 {
                    match tcp_ask(vip(10000), T) {
                        Ok(_) => ok += 1,
                        Err(e) => failed.push(e),
                    }
                    thread::sleep(Duration::from_millis(5));
                }
                (ok, failed)
            })
        })
    };

    assert!(topo.stop("lb").success(), "lb exits cleanly on SIGTERM");
    // Daemon gone: the data plane keeps forwarding old and new connections.
    in_netns(&client_ns, || {
        for _ in 0..6 {
            tcp_ask(vip(10000), T).expect("new connection while the daemon is stopped");
        }
    });
    let st = lb::status(&topo).expect("status works without the daemon");
    assert_eq!(st["daemon"]["running"], false);
    assert_eq!(st["services"].as_array().unwrap().len(), 2);

    // The second daemon asks for another size of the DNS fast path's table, which is made
    // anew (its names are the zone's); every other map is adopted as it is.
    let mut args2 = args.to_vec();
    args2.extend(["--max-dns-names", "1000"]);
    lb::start(&mut topo, "lb2", &args2, 2);
    let log = fs::read_to_string(format!("/tmp/{}-lb2.log", topo.prefix)).unwrap();
    assert!(
        log.contains("adopted pinned data plane"),
        "second run adopts: {log}"
    );
    assert!(
        log.contains("LB_DNS_A: made anew"),
        "LB_DNS_A replaced at its new size: {log}"
    );
    let dns_a = topo.pin_path().join("LB_DNS_A");
    let json = topo.sh(
        "agent",
        &format!("bpftool -j map show pinned {}", dns_a.display()),
    );
    let v: Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("bpftool map JSON: {e}: {json}"));
    assert_eq!(v["max_entries"], 1000, "{json}");
    assert!(
        !log.contains("services applied"),
        "nothing changed, nothing rewritten: {log}"
    );
    // The new daemon put its own program into the same links: the interfaces never went bare.
    let links_after = pinned_links(&topo);
    assert_eq!(links_before.len(), links_after.len());
    for ((path, link, prog), (path2, link2, prog2)) in links_before.iter().zip(&links_after) {
        assert_eq!(
            (path, link),
            (path2, link2),
            "same link kept across the restart"
        );
        assert_ne!(prog, prog2, "{path}: program replaced inside the link");
    }
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = stream.join().unwrap();
    assert!(
        ok > 20 && failed.is_empty(),
        "{ok} connections succeeded, failures: {failed:?}"
    );
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest)
        .expect("rest of the response after the restart");
    let body_len =
        first.len() + rest.len() - first.windows(4).position(|w| w == b"\r\n\r\n").unwrap() - 4;
    assert_eq!(body_len, 4_000_000, "the live connection saw no failure");
    lb::assert_no_drops(&topo, &[]);

    assert!(topo.stop("lb2").success());
    let out = lb::lb(
        &topo,
        &["detach", "--pin-path", topo.pin_path().to_str().unwrap()],
    );
    assert!(
        out.contains("cali-t1"),
        "detach names what it removed: {out}"
    );
    assert!(
        fs::read_dir(topo.pin_path())
            .map(|d| d.count())
            .unwrap_or(0)
            == 0,
        "pins removed"
    );
    let filters = topo.sh(
        "agent",
        "ip link show; bpftool net show 2>/dev/null || true",
    );
    assert!(
        !filters.contains("lb_tc") && !filters.contains("lb_xdp"),
        "programs detached:\n{filters}"
    );
    // Traffic to the service port now reaches the agent's stack, which has nothing there.
    let refused = in_netns(&client_ns, || tcp_ask(vip(10000), Duration::from_secs(1)));
    assert!(refused.is_err(), "service gone after detach: {refused:?}");
}

/// (pin, link id, program id) of every pinned link, from bpftool.
/// What `lb flows --json` lists for each of these client connections, in their order.
fn flows_of(topo: &Topology, pin: &str, conns: &[&TcpStream]) -> Vec<Value> {
    let listed: Value =
        serde_json::from_str(&lb::lb(topo, &["flows", "--json", "--pin-path", pin])).unwrap();
    conns
        .iter()
        .map(|s| {
            let local = s.local_addr().unwrap().to_string();
            listed
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["client"] == local.as_str())
                .cloned()
                .unwrap_or_else(|| panic!("{local} not in {listed}"))
        })
        .collect()
}

fn pinned_links(topo: &Topology) -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    for hook in ["xdp", "tc"] {
        let dir = topo.pin_path().join("links").join(hook);
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = e.path();
            let json = topo.sh(
                "agent",
                &format!("bpftool -j link show pinned {}", path.display()),
            );
            let v: Value = serde_json::from_str(&json)
                .unwrap_or_else(|e| panic!("bpftool link JSON: {e}: {json}"));
            out.push((
                path.display().to_string(),
                v["id"].as_u64().unwrap(),
                v["prog_id"].as_u64().unwrap(),
            ));
        }
    }
    out.sort();
    assert!(!out.is_empty(), "links are pinned");
    out
}

#[test]
fn status_flows_and_bpftool_show_what_the_data_plane_does() {
    let mut topo = topology("lbe5");
    let services = write_services(&topo);
    lb::start(
        &mut topo,
        "lb",
        &[
            "--iface", "eth*", "--iface", "cali*", "--hook", "tc", "--config", &services,
        ],
        2,
    );
    let client_ns = topo.ns("client");
    in_netns(&client_ns, || {
        for _ in 0..6 {
            tcp_ask(vip(10000), T).expect("request");
        }
    });
    // A connection held open, to be listed by `lb flows`.
    let held = in_netns(&client_ns, || {
        TcpStream::connect_timeout(&vip(10000).into(), T).expect("connect")
    });
    let pin = topo.pin_path().display().to_string();
    // What lb created is its owner's alone: the pin directory, every map, the state file.
    let mode = |p: &std::path::Path| {
        use std::os::unix::fs::PermissionsExt as _;
        fs::metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(&topo.pin_path()), 0o700, "pin directory");
    for name in lb_common::ALL_MAPS {
        assert_eq!(mode(&topo.pin_path().join(name)), 0o600, "{name}");
    }
    let state_file = lb_user::cli::default_state_file(&topo.pin_path());
    assert_eq!(mode(&state_file), 0o600, "{}", state_file.display());

    let table = lb::lb(&topo, &["status", "--pin-path", &pin]);
    let lines: Vec<&str> = table.lines().collect();
    let header = lines
        .iter()
        .find(|l| l.starts_with("SERVICE"))
        .unwrap_or_else(|| panic!("no header:\n{table}"));
    let row = lines
        .iter()
        .find(|l| l.starts_with("web_10000"))
        .unwrap_or_else(|| panic!("no web row:\n{table}"));
    assert_eq!(
        header.find("LISTEN"),
        row.find("*:10000/tcp"),
        "columns line up:\n{table}"
    );
    for (_, addr, _, _) in TASKS {
        let b = lines
            .iter()
            .find(|l| l.contains(&format!("{addr}:80")))
            .unwrap_or_else(|| panic!("{addr} missing:\n{table}"));
        assert!(b.contains("active"), "{b}");
        assert_eq!(
            header.find("STATE"),
            b.find("active"),
            "columns line up:\n{table}"
        );
    }
    assert!(table.contains("daemon: running"), "{table}");

    let json: Value =
        serde_json::from_str(&lb::lb(&topo, &["status", "--json", "--pin-path", &pin])).unwrap();
    let web = json["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "web_10000")
        .unwrap();
    let busy = web["backends"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["packets"].as_u64().unwrap() > 0)
        .count();
    assert_eq!(busy, 3, "per-backend counters: {web}");
    assert_eq!(json["flow_table"]["capacity_flows"], 262_144);

    let flows = lb::lb(&topo, &["flows", "--pin-path", &pin]);
    assert!(
        flows.contains("10.0.0.2:") && flows.contains("10.0.0.1:10000"),
        "{flows}"
    );
    let mine = flows_of(&topo, &pin, &[&held]).remove(0);
    assert_eq!(mine["state"], "active");
    assert!(mine["nat"].as_str().unwrap().starts_with("10.0."), "{mine}");
    // Live flows per backend: the held connection on its backend, the six closed ones nowhere
    // (the daemon counts at its sweep, every 2 s).
    let live = |topo: &Topology| -> Vec<(String, u64)> {
        let st = lb::status(topo).expect("lb status");
        let web = st["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "web_10000")
            .cloned()
            .unwrap();
        web["backends"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["live_flows"].as_u64() != Some(0))
            .map(|b| {
                (
                    b["address"].as_str().unwrap().to_owned(),
                    b["live_flows"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let backend = mine["backend"].as_str().unwrap().to_owned();
    wait_for(
        "the held connection counted live",
        Duration::from_secs(5),
        || live(&topo) == vec![(backend.clone(), 1)],
    );
    let table = lb::lb(&topo, &["status", "--pin-path", &pin]);
    let header = table.lines().find(|l| l.starts_with("SERVICE")).unwrap();
    let row = table.lines().find(|l| l.contains(&backend)).unwrap();
    assert_eq!(
        row.split_whitespace().nth(5),
        Some("1"),
        "the LIVE column ({header}):\n{table}"
    );
    drop(held);
    wait_for(
        "the closed connection no longer live",
        Duration::from_secs(5),
        || live(&topo).is_empty(),
    );

    // BTF makes bpftool print field names and decoded values.
    lb::assert_no_drops(&topo, &[]);
    let dump = topo.sh(
        "agent",
        &format!("bpftool map dump pinned {pin}/LB_SERVICES"),
    );
    for field in ["\"port\"", "\"proto\"", "\"generation\"", "\"count\": 3"] {
        assert!(dump.contains(field), "{field} in:\n{dump}");
    }
    let dump = topo.sh(
        "agent",
        &format!("bpftool map dump pinned {pin}/LB_BACKENDS"),
    );
    assert!(
        dump.contains("\"nat_addr\"") && dump.contains("\"service_id\""),
        "{dump}"
    );
}

#[test]
fn nat_port_exhaustion_is_counted_and_logged_from_the_data_plane() {
    let mut topo = topology("lbe6");
    let services = write_services(&topo);
    // One NAT port per backend: the fourth concurrent connection finds none for its backend.
    let log = lb::start(
        &mut topo,
        "lb",
        &[
            "--iface",
            "eth*",
            "--iface",
            "cali*",
            "--hook",
            "tc",
            "--nat-port-range",
            "20000-20000",
            "--config",
            &services,
        ],
        2,
    );
    let client_ns = topo.ns("client");
    let (held, fourth) = in_netns(&client_ns, || {
        let held: Vec<TcpStream> = (0..3)
            .map(|_| {
                TcpStream::connect_timeout(&vip(10000).into(), T).expect("one port per backend")
            })
            .collect();
        (
            held,
            TcpStream::connect_timeout(&vip(10000).into(), Duration::from_secs(1)),
        )
    });
    assert!(fourth.is_err(), "no NAT port left: the SYN is dropped");
    lb::wait_for(
        "the data plane's warning reaches the daemon's log",
        Duration::from_secs(5),
        || {
            fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("no free NAT port towards 192.168.1.11:80")
        },
    );
    let st = lb::status(&topo).unwrap();
    assert!(
        st["dataplane"]["drop_nat_ports_exhausted"]
            .as_u64()
            .unwrap()
            >= 1,
        "{}",
        st["dataplane"]
    );
    lb::assert_no_drops(&topo, &["drop_nat_ports_exhausted"]);
    drop(held);
}

#[test]
fn full_nat_reuses_ports_the_backend_closed_first_for_clients_with_their_own_clocks() {
    let mut topo = topology("lbe7");
    // Four client addresses: Linux gives every address pair its own timestamp offset, so
    // these are four clocks, as four client hosts would have.
    let clients: Vec<Ipv4Addr> = (20..24).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect();
    for c in &clients {
        topo.sh("client", &format!("ip addr add {c}/24 dev eth0"));
    }
    let path = format!("/tmp/{}-services.json", topo.prefix);
    fs::write(
        &path,
        format!(
            r#"{{"services": [{{"name": "web_10000", "port": 10000, "backends": ["{}:80"]}}]}}"#,
            TASKS[0].1
        ),
    )
    .unwrap();
    // 100 NAT ports, free again a second after a close; 400 connections at about 50 a
    // second, each closed by the task first (it holds TIME_WAIT for 60 s): every port is
    // taken about four times while the task still remembers it.
    lb::start(
        &mut topo,
        "lb",
        &[
            "--iface",
            "eth*",
            "--iface",
            "cali*",
            "--hook",
            "tc",
            "--nat-port-range",
            "20000-20099",
            "--tcp-closed-timeout",
            "1",
            // Only the tasks' links: the uplink's peer stands for the client hosts.
            "--redirect-peer",
            "--redirect-peer-iface",
            "cali*",
            "--config",
            &path,
        ],
        1,
    );
    let client_ns = topo.ns("client");
    let workers: Vec<_> = clients
        .iter()
        .map(|&from| {
            let ns = client_ns.clone();
            thread::spawn(move || {
                in_netns(&ns, move || {
                    (0..100)
                        .map(|_| {
                            let a = tcp_ask_from(from, vip(10000), T);
                            thread::sleep(Duration::from_millis(80));
                            a
                        })
                        .collect::<Vec<_>>()
                })
            })
        })
        .collect();
    let mut ports = std::collections::BTreeSet::new();
    let mut failed = Vec::new();
    for w in workers {
        for a in w.join().unwrap() {
            match a {
                Ok(a) => {
                    ports.insert(a.peer.clone());
                }
                Err(e) => failed.push(e),
            }
        }
    }
    assert!(failed.is_empty(), "{} failed: {:?}", failed.len(), failed);
    assert!(
        ports.len() <= 100,
        "the task saw {} NAT source ports for 400 connections",
        ports.len()
    );
    let retrans = topo.sh("client", "nstat -az TcpExtTCPSynRetrans");
    let syn_retrans: u64 = retrans
        .lines()
        .find_map(|l| l.strip_prefix("TcpExtTCPSynRetrans"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no SYN retransmit counter in {retrans}"));
    assert_eq!(syn_retrans, 0, "no SYN was refused and retried");
    lb::assert_no_drops(&topo, &[]);
    let tasks: BTreeSet<u32> = ["cali-t1", "cali-t2"]
        .map(|dev| agent_link(&topo, dev, "ifindex"))
        .into();
    assert_eq!(peer_ifs(&topo), tasks, "--redirect-peer-iface cali*");
}

/// `balance leastconn` with long-lived connections: after one task's connections close, the
/// next ones all go to it, where round-robin would put them on different tasks.
#[test]
fn leastconn_sends_new_connections_to_the_task_with_the_fewest() {
    let mut topo = topology("lbe8");
    let services = services_file(
        &topo,
        r#"{"name": "long_10000", "port": 10000, "balance": "leastconn", "backends": TASKS}"#,
    );
    lb::start(
        &mut topo,
        "lb",
        &[
            "--iface", "eth*", "--iface", "cali*", "--hook", "tc", "--config", &services,
        ],
        1,
    );
    let pin = topo.pin_path().display().to_string();
    let client_ns = topo.ns("client");
    let open = |n: usize| -> Vec<TcpStream> {
        in_netns(&client_ns, move || {
            (0..n)
                .map(|_| TcpStream::connect_timeout(&vip(10000).into(), T).expect("connect"))
                .collect()
        })
    };
    // The task each connection went to, as `lb flows` lists it.
    let tasks_of = |held: &[TcpStream]| -> Vec<String> {
        let conns: Vec<&TcpStream> = held.iter().collect();
        flows_of(&topo, &pin, &conns)
            .iter()
            .map(|f| f["backend"].as_str().unwrap().to_owned())
            .collect()
    };
    let live_on = |task: &str| -> u64 {
        let st = lb::status(&topo).expect("lb status");
        st["services"][0]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["address"] == task)
            .and_then(|b| b["live_flows"].as_u64())
            .unwrap_or_else(|| panic!("{task} in {st}"))
    };
    // The daemon's sweep writes each count from the flow table as it read it, so a flow
    // opened between its read and its write counts only from the next sweep. The connections
    // open just after a sweep, 2 s before the next.
    wait_for("a sweep", Duration::from_secs(5), || {
        lb::status(&topo).expect("lb status")["daemon"]["state_age_s"]
            .as_f64()
            .is_some_and(|age| age < 0.2)
    });
    let held = open(6);
    let on = tasks_of(&held);
    let mut per_task = BTreeMap::<&str, usize>::new();
    for t in &on {
        *per_task.entry(t.as_str()).or_default() += 1;
    }
    assert_eq!(
        per_task.values().copied().collect::<Vec<_>>(),
        vec![2, 2, 2],
        "six connections, two per task: {on:?}"
    );
    // The daemon's sweep (every 2 s) counts them all, then the two on one task close.
    wait_for(
        "six connections counted live",
        Duration::from_secs(6),
        || per_task.keys().all(|t| live_on(t) == 2),
    );
    let emptied = on[0].clone();
    let (closed, kept): (Vec<_>, Vec<_>) =
        held.into_iter().zip(&on).partition(|(_, t)| **t == emptied);
    drop(closed);
    wait_for(
        "the closed connections counted off",
        Duration::from_secs(6),
        || live_on(&emptied) == 0,
    );
    let others: Vec<&String> = on.iter().filter(|t| **t != emptied).collect();
    for t in &others {
        assert_eq!(live_on(t), 2, "{t}");
    }
    let next = open(2);
    assert_eq!(
        tasks_of(&next),
        vec![emptied.clone(), emptied.clone()],
        "both new connections to the task without any"
    );
    drop(kept);
    lb::assert_no_drops(&topo, &[]);
}
