//! The real daemon following a Marathon stand-in in the agent topology: marathon-lb's rules
//! decide the backends, changes reach the data plane within a second, removed tasks drain,
//! traffic keeps flowing while Marathon is down, and metrics and /healthz tell the truth.
use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddrV4, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use lb_tests::{
    client::tcp_ask,
    lb::{self, NsStandin, wait_for},
    marathon_standin::Mode,
    netns::{AGENT, CLIENT, TASKS, Topology, in_netns},
};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(3);

/// A task as Marathon 1.5+ reports it: Calico IP, state, and a health-check result.
fn task(i: usize, state: &str, alive: Option<bool>) -> Value {
    let (name, ip, _, _) = TASKS[i];
    let mut t = json!({
        "id": format!("nginx.{name}"), "appId": "/nginx", "state": state, "host": AGENT.to_string(),
        "ipAddresses": [{"ipAddress": ip.to_string(), "protocol": "IPv4"}], "ports": [], "servicePorts": [10000],
        "slaveId": "agent-S1", "stagedAt": "2026-11-21T10:00:00.000Z", "startedAt": "2026-11-21T10:00:01.000Z",
        "version": "2026-11-21T09:59:00.000Z"
    });
    if let Some(alive) = alive {
        t["healthCheckResults"] = json!([{"alive": alive, "consecutiveFailures": 0, "instanceId": format!("nginx.marathon-{name}")}]);
    }
    t
}

/// The nginx app of Calico's "Connecting to Tasks" guide, in Marathon 1.5+ shape, plus an app
/// of another group (never served) and an L7-labelled one (served at L4, reported).
fn apps(tasks: Vec<Value>) -> Value {
    json!({"apps": [
        {
            "id": "/nginx", "instances": tasks.len(),
            "container": {"type": "DOCKER", "docker": {"image": "nginx:1.13"},
                          "portMappings": [{"containerPort": 80, "servicePort": 10000, "protocol": "tcp", "name": "http"}]},
            "networks": [{"name": "calico", "mode": "container"}],
            "labels": {"HAPROXY_GROUP": "external", "HAPROXY_0_VHOST": "nginx.example.com",
                       "HAPROXY_0_AUTH": "realm:admin:$6$hash"},
            "healthChecks": [{"protocol": "MESOS_HTTP", "path": "/", "portIndex": 0}],
            "tasks": tasks
        },
        {
            "id": "/internal", "instances": 1,
            "container": {"type": "DOCKER", "docker": {"image": "x"},
                          "portMappings": [{"containerPort": 80, "servicePort": 10001, "protocol": "tcp"}]},
            "networks": [{"name": "calico", "mode": "container"}],
            "labels": {"HAPROXY_GROUP": "internal"},
            "tasks": [task(0, "TASK_RUNNING", None)]
        }
    ]})
}

fn addr(i: usize) -> String {
    format!("{}:80", TASKS[i].1)
}

fn served_by(topo: &Topology, n: usize) -> Vec<String> {
    let mut v: Vec<String> = in_netns(&topo.ns("client"), move || {
        (0..n)
            .map(|_| {
                tcp_ask(SocketAddrV4::new(AGENT, 10000), T)
                    .expect("request through lb")
                    .task
            })
            .collect()
    });
    v.sort();
    v.dedup();
    v
}

#[test]
fn follows_marathon_live_drains_and_survives_marathon_failures() {
    let mut topo = Topology::new("lbm1");
    topo.start_tasks();
    let m = NsStandin::start(&topo.ns("agent"));
    // t1 and t2 healthy, t3 failing its health check.
    m.standin.set_apps(apps(vec![
        task(0, "TASK_RUNNING", Some(true)),
        task(1, "TASK_RUNNING", Some(true)),
        task(2, "TASK_RUNNING", Some(false)),
    ]));
    let url = m.standin.url();
    let log = lb::start(
        &mut topo,
        "lb",
        &[
            "--iface",
            "eth*",
            "--iface",
            "cali*",
            "--marathon",
            &url,
            "--group",
            "external",
            "--health-check",
            "--resync-interval",
            "1",
        ],
        1,
    );
    assert_eq!(
        lb::active_backends(&topo, 10000),
        vec![addr(0), addr(1)],
        "healthy tasks only"
    );
    let st = lb::status(&topo).unwrap();
    assert_eq!(
        st["services"].as_array().unwrap().len(),
        1,
        "the internal group is not served: {st}"
    );
    let svc = &st["services"][0];
    assert_eq!(
        (svc["name"].as_str(), svc["app_id"].as_str()),
        (Some("nginx_10000"), Some("/nginx"))
    );
    assert_eq!(served_by(&topo, 10), vec!["t1", "t2"]);

    // A connection that must survive its task leaving the set: keep one that landed on t1.
    let client_ns = topo.ns("client");
    let mut conn = in_netns(&client_ns, || {
        for _ in 0..10 {
            let mut s =
                TcpStream::connect_timeout(&SocketAddrV4::new(AGENT, 10000).into(), T).unwrap();
            s.set_read_timeout(Some(T)).unwrap();
            s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
            let mut head = [0u8; 64];
            let n = s.read(&mut head).unwrap();
            drop(s);
            if String::from_utf8_lossy(&head[..n]).contains("200") {
                break;
            }
        }
        // Now a long transfer: it stays open while the test does not read.
        let mut s = TcpStream::connect_timeout(&SocketAddrV4::new(AGENT, 10000).into(), T).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        s.write_all(b"GET /bytes/3000000 HTTP/1.0\r\n\r\n").unwrap();
        s
    });
    let mut first = vec![0u8; 50_000];
    conn.read_exact(&mut first)
        .expect("start of the long transfer");
    let flows = lb::lb(
        &topo,
        &[
            "flows",
            "--json",
            "--pin-path",
            topo.pin_path().to_str().unwrap(),
        ],
    );
    let flows: Value = serde_json::from_str(&flows).unwrap();
    let long_backend = flows
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["state"] == "active")
        .map(|f| f["backend"].as_str().unwrap().to_owned())
        .expect("the long transfer is tracked");

    // The task serving it is killed, t3 turns healthy: within a second the maps follow.
    let mut next = vec![
        task(0, "TASK_RUNNING", Some(true)),
        task(1, "TASK_RUNNING", Some(true)),
        task(2, "TASK_RUNNING", Some(true)),
    ];
    let gone = TASKS
        .iter()
        .position(|(_, ip, _, _)| long_backend.starts_with(&ip.to_string()))
        .unwrap();
    next[gone] = task(gone, "TASK_KILLING", Some(true));
    let mut want: Vec<String> = (0..3).filter(|i| *i != gone).map(addr).collect();
    want.sort();
    m.standin.set_apps(apps(next));
    let took = wait_for(
        "event reaches the data plane",
        Duration::from_secs(1),
        || lb::active_backends(&topo, 10000) == want,
    );
    eprintln!("event to data plane, as seen by `lb status`: {took:?}");
    let st = lb::status(&topo).unwrap();
    let draining: Vec<&Value> = st["services"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["state"] == "draining")
        .collect();
    assert_eq!(draining.len(), 1, "the killed task drains: {st}");
    let names: Vec<String> = want
        .iter()
        .map(|a| {
            TASKS
                .iter()
                .find(|t| a.starts_with(&t.1.to_string()))
                .unwrap()
                .0
                .to_owned()
        })
        .collect();
    assert_eq!(
        served_by(&topo, 12),
        names,
        "new flows avoid the draining task"
    );
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest)
        .expect("the draining connection completes");
    let header = first.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(
        first.len() + rest.len() - header,
        3_000_000,
        "no byte lost on the draining task"
    );

    // Marathon fails in every way: the data plane keeps the last good state and keeps serving.
    for mode in [Mode::Fail(502), Mode::Garbage, Mode::Fail(500)] {
        m.standin.set_mode(mode.clone());
        m.standin
            .set_apps(apps(vec![task(0, "TASK_RUNNING", Some(true))]));
        // Resyncs run every second: give each failure mode a couple of them.
        std::thread::sleep(Duration::from_millis(2200));
        assert_eq!(
            lb::active_backends(&topo, 10000),
            want,
            "{mode:?}: last good state kept"
        );
        assert_eq!(served_by(&topo, 6), names, "{mode:?}: traffic flows");
    }
    let st = lb::status(&topo).unwrap();
    assert!(
        st["sync"]["last_error"].is_string(),
        "the failure is reported: {}",
        st["sync"]
    );
    // Marathon back: the state it now holds applies (only t1, which is healthy).
    m.standin.set_mode(Mode::Normal);
    m.standin
        .set_apps(apps(vec![task(0, "TASK_RUNNING", Some(true))]));
    wait_for("recovery", Duration::from_secs(5), || {
        lb::active_backends(&topo, 10000) == vec![addr(0)]
    });
    assert_eq!(served_by(&topo, 4), vec!["t1"]);
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.matches("L7-only labels").count(),
        1,
        "AUTH reported once, not per sync (VHOST is served):\n{text}"
    );
    assert!(!text.contains("password"), "no credentials in logs");
    lb::assert_no_drops(&topo, &[]);
}

#[test]
fn metrics_and_healthz_follow_attachment_sync_and_traffic() {
    let mut topo = Topology::new("lbm2");
    topo.start_tasks();
    let m = NsStandin::start(&topo.ns("agent"));
    m.standin.set_mode(Mode::Fail(502));
    m.standin.set_apps(apps(vec![
        task(0, "TASK_RUNNING", Some(true)),
        task(1, "TASK_RUNNING", Some(true)),
    ]));
    let url = m.standin.url();
    // Only a not-yet-existing interface matches, and Marathon fails: unhealthy twice over.
    let log = std::fs::File::create("/tmp/lbm2-lb.log").unwrap();
    let mut cmd = topo.cmd("agent", &lb_tests::netns::lb_bin());
    cmd.arg("run")
        .arg("--pin-path")
        .arg(topo.pin_path())
        .args([
            "--metrics",
            "127.0.0.1:19090",
            "--iface",
            "cali-new*",
            "--marathon",
            &url,
            "--resync-interval",
            "2",
        ])
        .stderr(log);
    topo.spawn("lb", cmd);
    wait_for("metrics endpoint", Duration::from_secs(10), || {
        lb::agent_http(&topo, 19090, "/metrics").is_ok()
    });
    let health = |topo: &Topology| {
        in_netns(&topo.ns("agent"), || {
            let mut s = TcpStream::connect(("127.0.0.1", 19090)).unwrap();
            s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").unwrap();
            let mut r = String::new();
            s.read_to_string(&mut r).unwrap();
            r
        })
    };
    let h = health(&topo);
    assert!(
        h.starts_with("HTTP/1.1 503") || h.starts_with("HTTP/1.0 503"),
        "not attached, never synced: {h}"
    );
    // Marathon recovers; still nothing attached.
    m.standin.set_mode(Mode::Normal);
    m.standin.set_apps(apps(vec![
        task(0, "TASK_RUNNING", Some(true)),
        task(1, "TASK_RUNNING", Some(true)),
    ]));
    wait_for("first sync", Duration::from_secs(10), || {
        lb::active_backends(&topo, 10000).len() == 2
    });
    std::thread::sleep(Duration::from_millis(2500));
    let h = health(&topo);
    assert!(h.contains(" 503"), "synced but not attached: {h}");
    // An interface appears (as Calico adds one per task): attached through netlink, healthy.
    topo.sh(
        "agent",
        "ip link add cali-new0 type veth peer name cali-new0p && ip link set cali-new0 up",
    );
    wait_for("attached and healthy", Duration::from_secs(10), || {
        health(&topo).contains(" 200")
    });
    // Metrics after real traffic (the client side has no lb attached on its path here: attach eth0 too).
    assert!(topo.stop("lb").success());
    lb::start(
        &mut topo,
        "lb2",
        &[
            "--metrics",
            "127.0.0.1:19091",
            "--iface",
            "eth*",
            "--iface",
            "cali*",
            "--marathon",
            &url,
        ],
        1,
    );
    let served = served_by(&topo, 10);
    assert_eq!(served, vec!["t1", "t2"]);
    std::thread::sleep(Duration::from_millis(2500));
    let text = String::from_utf8(lb::agent_http(&topo, 19091, "/metrics").unwrap()).unwrap();
    let line = |name: &str, needle: &str| -> f64 {
        let l = text
            .lines()
            .find(|l| l.starts_with(name) && l.contains(needle))
            .unwrap_or_else(|| panic!("no {name} with {needle} in:\n{text}"));
        l.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(line("lb_service_new_flows_total", "service=\"nginx_10000\"") >= 10.0);
    assert!(
        line(
            "lb_backend_packets_total",
            &format!("backend=\"{}\"", addr(0))
        ) > 0.0
    );
    assert!(
        line(
            "lb_backend_bytes_total",
            &format!("backend=\"{}\"", addr(1))
        ) > 0.0
    );
    assert!(line("lb_flow_table_capacity", "") > 0.0);
    assert!(line("lb_marathon_requests_total", "") >= 1.0);
    assert!(
        text.contains("lb_dataplane_events_total{cause=\"redirect\"}"),
        "{text}"
    );
    assert!(text.contains("lb_event_to_map_seconds_bucket"), "{text}");
    lb::assert_no_drops(&topo, &[]);
}

/// An app with a TCP and a UDP port, its tasks at the given indexes of `TASKS`.
fn echo_app(tasks: &[usize]) -> Value {
    let tasks: Vec<Value> = tasks
        .iter()
        .map(|&i| {
            let mut t = task(i, "TASK_RUNNING", None);
            t["appId"] = json!("/echo");
            t["servicePorts"] = json!([10000, 10001]);
            t
        })
        .collect();
    json!({"apps": [{
        "id": "/echo", "instances": tasks.len(),
        "container": {"type": "DOCKER", "docker": {"image": "echo"},
                      "portMappings": [
                          {"containerPort": 80, "servicePort": 10000, "protocol": "tcp"},
                          {"containerPort": 80, "servicePort": 10001, "protocol": "udp"}]},
        "networks": [{"name": "calico", "mode": "container"}],
        "labels": {"HAPROXY_GROUP": "external"},
        "tasks": tasks
    }]})
}

/// marathon-lb writes no frontend for an app without tasks, so its clients are refused at
/// once; lb keeps the service and lets the agent's stack refuse them (a TCP reset, an ICMP
/// port unreachable), counted per service, while connections already open drain.
#[test]
fn an_app_scaled_to_zero_refuses_new_connections_at_once_and_drains_the_open_ones() {
    let mut topo = Topology::new("lbm3");
    topo.start_tasks();
    let m = NsStandin::start(&topo.ns("agent"));
    m.standin.set_apps(echo_app(&[0]));
    let url = m.standin.url();
    lb::start(
        &mut topo,
        "lb",
        &[
            "--iface",
            "eth*",
            "--iface",
            "cali*",
            "--marathon",
            &url,
            "--group",
            "external",
        ],
        2,
    );
    let client_ns = topo.ns("client");
    let mut conn = in_netns(&client_ns, || {
        let mut s = TcpStream::connect_timeout(&SocketAddrV4::new(AGENT, 10000).into(), T).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        s.write_all(b"GET /bytes/3000000 HTTP/1.0\r\n\r\n").unwrap();
        s
    });
    let mut first = vec![0u8; 50_000];
    conn.read_exact(&mut first)
        .expect("start of the long transfer");

    m.standin.set_apps(echo_app(&[]));
    wait_for("the app's tasks leave", Duration::from_secs(1), || {
        lb::active_backends(&topo, 10000).is_empty()
    });
    let attempts = 20;
    let waits: Vec<Duration> = in_netns(&client_ns, move || {
        (0..attempts)
            .map(|_| {
                let start = Instant::now();
                let e = TcpStream::connect_timeout(&SocketAddrV4::new(AGENT, 10000).into(), T)
                    .expect_err("no backend: the connection is refused");
                assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
                start.elapsed()
            })
            .collect()
    });
    let mut sorted = waits.clone();
    sorted.sort();
    eprintln!(
        "refusals took {:?} (median), {:?} (max)",
        sorted[attempts / 2],
        sorted[attempts - 1]
    );
    // A dropped SYN would be retried after a second; a refusal is a round trip on a veth.
    assert!(
        sorted[attempts - 1] < Duration::from_millis(250),
        "{waits:?}"
    );
    let udp_refused = in_netns(&client_ns, || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.connect(SocketAddrV4::new(AGENT, 10001)).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        s.send(b"anyone?").unwrap();
        s.recv(&mut [0u8; 64])
            .expect_err("no backend: ICMP port unreachable")
            .kind()
    });
    assert_eq!(udp_refused, ErrorKind::ConnectionRefused);

    let mut rest = Vec::new();
    conn.read_to_end(&mut rest)
        .expect("the open connection completes");
    let header = first.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(first.len() + rest.len() - header, 3_000_000, "no byte lost");

    let st = lb::status(&topo).unwrap();
    let refused = |port: u16| {
        st["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["port"] == port)
            .unwrap_or_else(|| panic!("service on {port} kept: {st}"))["refused"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(
        refused(10000),
        attempts as u64,
        "every TCP refusal counted once"
    );
    assert_eq!(refused(10001), 1, "the UDP refusal counted");
    assert_eq!(st["dataplane"]["refused_no_backend"], attempts as u64 + 1);

    // Scaled up again, the service answers.
    m.standin.set_apps(echo_app(&[1]));
    wait_for("the task is back", Duration::from_secs(1), || {
        lb::active_backends(&topo, 10000) == vec![addr(1)]
    });
    assert_eq!(served_by(&topo, 3), vec!["t2"]);
    lb::assert_no_drops(&topo, &[]);
}

/// Marathon before 1.5 gives an IP-per-task app no service port (Marathon #3636); marathon-lb
/// makes one up from `--min/max-serv-port-ip-per-task` with a hash of the app id and the
/// container port, and lb makes up the same one: 10050 + sha1("/legacy-80-0")[..8] mod 51.
#[test]
fn an_ip_per_task_app_without_service_ports_is_served_on_marathon_lbs_port() {
    let mut topo = Topology::new("lbm4");
    topo.start_tasks();
    let m = NsStandin::start(&topo.ns("agent"));
    let tasks: Vec<Value> = [0, 1]
        .iter()
        .map(|&i| {
            let mut t = task(i, "TASK_RUNNING", None);
            t["appId"] = json!("/legacy");
            t["servicePorts"] = json!([]);
            t
        })
        .collect();
    m.standin.set_apps(json!({"apps": [{
        "id": "/legacy", "instances": 2,
        "container": {"type": "DOCKER", "docker": {"image": "nginx", "network": "USER"}},
        "ipAddress": {"networkName": "calico", "discovery": {"ports": [{"number": 80, "name": "http", "protocol": "tcp"}]}},
        "portDefinitions": [],
        "labels": {"HAPROXY_GROUP": "external"},
        "tasks": tasks
    }]}));
    let url = m.standin.url();
    lb::start(
        &mut topo,
        "lb",
        &[
            "--iface",
            "eth*",
            "--iface",
            "cali*",
            "--marathon",
            &url,
            "--group",
            "external",
        ],
        1,
    );
    assert_eq!(
        lb::active_backends(&topo, 10064),
        vec![addr(0), addr(1)],
        "{}",
        lb::status(&topo).unwrap()
    );
    let mut seen: Vec<String> = in_netns(&topo.ns("client"), || {
        (0..4)
            .map(|_| {
                tcp_ask(SocketAddrV4::new(AGENT, 10064), T)
                    .expect("the made-up port answers")
                    .task
            })
            .collect()
    });
    seen.sort();
    assert_eq!(
        seen,
        ["t1", "t1", "t2", "t2"],
        "round-robin over both tasks"
    );
    lb::assert_no_drops(&topo, &[]);
}

/// An app whose TCP and UDP ports allow `allowed` only (marathon-lb's
/// `HAPROXY_{n}_BACKEND_NETWORK_ALLOWED_ACL`), and an app whose range is not one.
fn guarded_apps(allowed: &str) -> Value {
    let mut app = echo_app(&[0]);
    app["apps"][0]["labels"] = json!({
        "HAPROXY_GROUP": "external",
        "HAPROXY_0_BACKEND_NETWORK_ALLOWED_ACL": allowed,
        "HAPROXY_1_BACKEND_NETWORK_ALLOWED_ACL": allowed,
    });
    let mut bad = echo_app(&[1]);
    bad["apps"][0]["id"] = json!("/typo");
    bad["apps"][0]["container"]["portMappings"] =
        json!([{"containerPort": 80, "servicePort": 10002, "protocol": "tcp"}]);
    bad["apps"][0]["labels"] = json!({
        "HAPROXY_GROUP": "external",
        "HAPROXY_0_BACKEND_NETWORK_ALLOWED_ACL": "10.0.0.0/8,10.1.0.0/16",
    });
    let bad_app = bad["apps"][0].take();
    app["apps"].as_array_mut().unwrap().push(bad_app);
    app
}

/// The client namespace's second address, outside the allowed range.
const OTHER_CLIENT: &str = "10.0.0.3";

/// Whether a TCP connection from `from` to the service port is accepted (and answered) within
/// `wait`: shorter than the first SYN retransmit, so a refused client sends exactly one SYN.
fn connects_from(topo: &Topology, from: &'static str, port: u16, wait: Duration) -> bool {
    in_netns(&topo.ns("client"), move || {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.bind(&SocketAddrV4::new(from.parse().unwrap(), 0).into())
            .unwrap();
        match sock.connect_timeout(&SocketAddrV4::new(AGENT, port).into(), wait) {
            Ok(()) => true,
            Err(e) if e.kind() == ErrorKind::TimedOut || e.kind() == ErrorKind::WouldBlock => false,
            Err(e) => panic!("connecting from {from}: {e}"),
        }
    })
}

/// Whether a UDP question from `from` gets an answer within `wait`.
fn answered_from(topo: &Topology, from: &'static str, port: u16, wait: Duration) -> bool {
    in_netns(&topo.ns("client"), move || {
        let s = UdpSocket::bind(SocketAddrV4::new(from.parse().unwrap(), 0)).unwrap();
        s.connect(SocketAddrV4::new(AGENT, port)).unwrap();
        s.set_read_timeout(Some(wait)).unwrap();
        s.send(b"anyone?").unwrap();
        s.recv(&mut [0u8; 2048]).is_ok()
    })
}

/// Only the allowed client reaches the app, on both protocols; the refused one's packets are
/// dropped (it waits, as behind a firewall) and counted per service; a label change opens
/// the port within a second; a bad range costs only its own port, with the reason given.
#[test]
fn an_allowed_networks_label_lets_in_only_its_clients() {
    let mut topo = Topology::new("lbm5");
    topo.start_tasks();
    topo.sh("client", &format!("ip addr add {OTHER_CLIENT}/24 dev eth0"));
    let m = NsStandin::start(&topo.ns("agent"));
    m.standin.set_apps(guarded_apps(&format!("{CLIENT}")));
    let url = m.standin.url();
    lb::start(
        &mut topo,
        "lb",
        &[
            "--iface",
            "eth*",
            "--iface",
            "cali*",
            "--marathon",
            &url,
            "--group",
            "external",
        ],
        2,
    );
    let wait = Duration::from_millis(500);
    let client: &'static str = "10.0.0.2";
    assert_eq!(CLIENT.to_string(), client);
    for _ in 0..3 {
        assert!(
            connects_from(&topo, client, 10000, T),
            "the allowed client connects"
        );
        assert!(
            answered_from(&topo, client, 10001, T),
            "the allowed client is answered"
        );
        assert!(
            !connects_from(&topo, OTHER_CLIENT, 10000, wait),
            "the other is let in"
        );
        assert!(
            !answered_from(&topo, OTHER_CLIENT, 10001, wait),
            "the other is answered"
        );
    }
    let st = lb::status(&topo).unwrap();
    let service = |st: &Value, port: u16| {
        st["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["port"] == port)
            .cloned()
            .unwrap_or_else(|| panic!("no service on {port}: {st}"))
    };
    assert_eq!(service(&st, 10000)["allow"], json!(["10.0.0.2/32"]));
    assert_eq!(
        service(&st, 10000)["denied"],
        3,
        "one SYN per refused attempt"
    );
    assert_eq!(
        service(&st, 10001)["denied"],
        3,
        "one datagram per refused question"
    );
    assert_eq!(st["dataplane"]["drop_denied"], 6);
    // The bad range: that port is not served, and `lb status` says why.
    assert!(
        st["services"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["port"] != 10002),
        "{st}"
    );
    let skipped = st["sync"]["skipped"].to_string();
    assert!(
        skipped.contains("/typo") && skipped.contains("\\\"10.0.0.0/8,10.1.0.0/16\\\""),
        "{skipped}"
    );

    // The label widened to the whole subnet: the other client gets in, within a second.
    m.standin.set_apps(guarded_apps("10.0.0.0/24"));
    wait_for("the wider range applies", Duration::from_secs(1), || {
        lb::status(&topo).is_some_and(|st| service(&st, 10000)["allow"] == json!(["10.0.0.0/24"]))
    });
    assert!(
        connects_from(&topo, OTHER_CLIENT, 10000, T),
        "let in after the change"
    );
    assert!(answered_from(&topo, OTHER_CLIENT, 10001, T));
    // The label removed: everyone.
    m.standin.set_apps(echo_app(&[0]));
    wait_for("the list goes", Duration::from_secs(1), || {
        lb::status(&topo).is_some_and(|st| service(&st, 10000).get("allow").is_none())
    });
    assert!(connects_from(&topo, OTHER_CLIENT, 10000, T));
    let st = lb::status(&topo).unwrap();
    assert_eq!(
        service(&st, 10000)["denied"],
        3,
        "no denial after the change"
    );
    lb::assert_no_drops(&topo, &["drop_denied"]);
}
