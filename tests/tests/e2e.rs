//! End to end through real veth links: a client, the agent running `lb run`, two Calico-style
//! tasks on it and one behind a second agent. Real TCP and UDP from the client namespace.
use std::{
    collections::BTreeMap,
    fs,
    io::{Read, Write},
    net::{SocketAddrV4, TcpStream},
    time::Duration,
};

use lb_tests::{
    client::{Answer, fetch_and_check, tcp_ask, udp_ask},
    lb,
    netns::{AGENT, AGENT_BACKNET, CLIENT, TASKS, Topology, in_netns, server_bin},
};

const T: Duration = Duration::from_secs(3);

fn vip(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(AGENT, port)
}

/// A services file with TCP and UDP on 10000 over the three tasks.
fn write_services(topo: &Topology) -> String {
    let backends: Vec<String> = TASKS
        .iter()
        .map(|(_, a, _, _)| format!("\"{a}:80\""))
        .collect();
    let path = format!("/tmp/{}-services.json", topo.prefix);
    fs::write(
        &path,
        format!(
            r#"{{"services": [
                {{"name": "web_10000", "port": 10000, "protocol": "tcp", "backends": [{b}]}},
                {{"name": "dns_10000", "port": 10000, "protocol": "udp", "backends": [{b}]}}]}}"#,
            b = backends.join(", ")
        ),
    )
    .unwrap();
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
    let udp: Vec<Answer> = in_netns(&client_ns, || {
        (0..30)
            .map(|_| udp_ask(vip(10000), T).expect("UDP through lb"))
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
    let services = write_services(&topo);
    lb::start(
        &mut topo,
        "lb",
        &[
            "--iface", "eth*", "--iface", "cali*", "--hook", "tc", "--config", &services,
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

    lb::start(&mut topo, "lb2", &args, 2);
    let log = fs::read_to_string(format!("/tmp/{}-lb2.log", topo.prefix)).unwrap();
    assert!(
        log.contains("adopted pinned data plane"),
        "second run adopts: {log}"
    );
    assert!(
        !log.contains("services applied"),
        "nothing changed, nothing rewritten: {log}"
    );
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest)
        .expect("rest of the response after the restart");
    let body_len =
        first.len() + rest.len() - first.windows(4).position(|w| w == b"\r\n\r\n").unwrap() - 4;
    assert_eq!(body_len, 4_000_000, "the live connection saw no failure");

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
