//! The translation from Marathon's `/v2/apps` to services, on the project's fixtures (both API
//! shapes, every rule) and on marathon-lb's own test inputs with the results marathon-lb expects.
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
};

use lb_user::{
    marathon::{
        api::{ParsedApps, parse_app, parse_apps},
        translate::{IpSource, Skipped, TranslateOptions, Translation, Unsupported, translate},
    },
    services::{Balance, Listener, Protocol, ServiceSpec},
};

fn own_fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/marathon")
        .join(name)
}

/// Reference captures beside the checkout (`<repo>/../shared`); never copied into the repository.
fn shared_fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/marathon")
        .join(name)
}

fn parse(path: PathBuf) -> ParsedApps {
    let body = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    parse_apps(&body).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// Parses a fixture that must parse completely.
fn apps(path: PathBuf) -> ParsedApps {
    let parsed = parse(path.clone());
    assert!(
        parsed.errors.is_empty(),
        "{}: app errors {:?}",
        path.display(),
        parsed.errors
    );
    for app in &parsed.apps {
        assert!(
            app.task_errors.is_empty(),
            "{}: task errors {:?}",
            app.id,
            app.task_errors
        );
    }
    parsed
}

/// Resolves the fixtures' two agent names; IP literals must never reach it.
fn resolve(host: &str) -> Option<Ipv4Addr> {
    assert!(
        host.parse::<Ipv4Addr>().is_err(),
        "resolve called for the IP literal {host}"
    );
    match host {
        "agent-1.example" => Some(Ipv4Addr::new(10, 0, 0, 11)),
        "agent-2.example" => Some(Ipv4Addr::new(10, 0, 0, 30)),
        _ => None,
    }
}

fn run(parsed: &ParsedApps, opts: &TranslateOptions) -> Translation {
    translate(&parsed.apps, opts, &mut resolve)
}

fn opts(groups: &[&str]) -> TranslateOptions {
    TranslateOptions {
        groups: groups.iter().map(|g| g.to_string()).collect(),
        ..TranslateOptions::default()
    }
}

fn addrs(list: &[&str]) -> Vec<SocketAddrV4> {
    let mut v: Vec<SocketAddrV4> = list
        .iter()
        .map(|a| a.parse().unwrap_or_else(|e| panic!("{a}: {e}")))
        .collect();
    v.sort();
    v
}

fn listener(s: &str) -> Listener {
    let (addr, proto) = s
        .split_once('/')
        .unwrap_or_else(|| panic!("listener {s} lacks /proto"));
    let (bind, port) = addr
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("listener {s} lacks :port"));
    Listener {
        bind: if bind == "*" {
            None
        } else {
            Some(bind.parse().expect("bind address"))
        },
        port: port.parse().expect("port"),
        protocol: match proto {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            p => panic!("protocol {p}"),
        },
    }
}

fn service<'t>(t: &'t Translation, l: &str) -> &'t ServiceSpec {
    let l = listener(l);
    t.desired
        .services
        .iter()
        .find(|s| s.listener == l)
        .unwrap_or_else(|| {
            let have: Vec<String> = t
                .desired
                .services
                .iter()
                .map(|s| s.listener.to_string())
                .collect();
            panic!("no service on {l}; services: {have:?}")
        })
}

fn listeners(t: &Translation) -> Vec<String> {
    t.desired
        .services
        .iter()
        .map(|s| s.listener.to_string())
        .collect()
}

/// Asserts one service completely: name, app, port index, balance and backends.
fn assert_service(
    t: &Translation,
    l: &str,
    name: &str,
    app: &str,
    index: usize,
    balance: Balance,
    backends: &[&str],
) {
    let s = service(t, l);
    assert_eq!(s.name, name, "name of {l}");
    assert_eq!(s.app_id.as_deref(), Some(app), "app of {l}");
    assert_eq!(s.port_index, Some(index), "port index of {l}");
    assert_eq!(s.balance, balance, "balance of {l}");
    assert_eq!(s.backends, addrs(backends), "backends of {l}");
}

fn skipped_for<'t>(t: &'t Translation, app: &str) -> Vec<&'t Skipped> {
    t.skipped.iter().filter(|s| s.app_id == app).collect()
}

/// The one skip entry of `app` at `port`/`task`, whose reason mentions `needle`.
fn assert_skipped(
    t: &Translation,
    app: &str,
    port: Option<usize>,
    task: Option<&str>,
    needle: &str,
) {
    let hits: Vec<&Skipped> = t
        .skipped
        .iter()
        .filter(|s| s.app_id == app && s.port_index == port && s.task_id.as_deref() == task)
        .filter(|s| s.reason.contains(needle))
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "want one skip of {app} {port:?} {task:?} with {needle:?}; all: {:#?}",
        t.skipped
    );
}

fn assert_sorted(t: &Translation) {
    let ls: Vec<Listener> = t.desired.services.iter().map(|s| s.listener).collect();
    let mut sorted = ls.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        ls, sorted,
        "services not sorted by listener, or a listener is shared"
    );
    for s in &t.desired.services {
        let mut b = s.backends.clone();
        b.sort();
        b.dedup();
        assert_eq!(
            s.backends, b,
            "backends of {} not sorted and unique",
            s.name
        );
    }
}

// ---- Marathon 1.4, host networking: ports, labels, protocols, task states ----

#[test]
fn host_networking_multi_port_with_label_overrides() {
    let parsed = apps(own_fixture("host-1.4.json"));
    let t = run(&parsed, &TranslateOptions::default());
    assert_sorted(&t);
    assert_eq!(
        listeners(&t),
        [
            "*:5353/udp",
            "*:10010/tcp",
            "10.0.0.5:10012/tcp",
            "10.0.0.5:10012/udp"
        ],
        "{t:#?}"
    );
    // Kept: running (one by hostname), lost, unreachable, no state; the task of an older
    // version with two ports serves ports 0 and 1 only.
    assert_service(
        &t,
        "*:10010/tcp",
        "web_api_10010",
        "/web/api",
        0,
        Balance::Source,
        &[
            "10.0.0.11:31001",
            "10.0.0.12:31011",
            "10.0.0.13:31021",
            "10.0.0.25:31151",
            "10.0.0.30:31171",
        ],
    );
    // HAPROXY_1_PORT replaces the service port, in the name too; udp from portDefinitions.
    assert_service(
        &t,
        "*:5353/udp",
        "web_api_5353",
        "/web/api",
        1,
        Balance::RoundRobin,
        &[
            "10.0.0.11:31002",
            "10.0.0.12:31012",
            "10.0.0.13:31022",
            "10.0.0.25:31152",
            "10.0.0.30:31172",
        ],
    );
    // `udp,tcp` is two services on the bound address, with the same backends.
    for l in ["10.0.0.5:10012/tcp", "10.0.0.5:10012/udp"] {
        assert_service(
            &t,
            l,
            "web_api_10012",
            "/web/api",
            2,
            Balance::RoundRobin,
            &[
                "10.0.0.11:31003",
                "10.0.0.12:31013",
                "10.0.0.13:31023",
                "10.0.0.25:31153",
            ],
        );
    }
    // Excluded states are routine, not skips (an unplaced staging task included); a running
    // task without a host is one.
    assert_eq!(t.skipped.len(), 1, "{:#?}", t.skipped);
    assert_skipped(&t, "/web/api", None, Some("web_api.no-host"), "no host");
    assert!(t.unsupported.is_empty(), "{:#?}", t.unsupported);
}

#[test]
fn every_excluded_task_state_is_left_out() {
    let parsed = apps(own_fixture("host-1.4.json"));
    let t = run(&parsed, &TranslateOptions::default());
    // 10.0.0.14 to 10.0.0.24 carry STAGING, STARTING, KILLING, FINISHED, FAILED, KILLED, ERROR,
    // DROPPED, GONE, GONE_BY_OPERATOR and UNKNOWN.
    for s in &t.desired.services {
        for b in &s.backends {
            let last = b.ip().octets()[3];
            assert!(
                !(14..=24).contains(&last),
                "a task in an excluded state serves {}: {b}",
                s.name
            );
        }
    }
}

#[test]
fn hostnames_are_resolved_once_and_literals_never() {
    let parsed = apps(own_fixture("host-1.4.json"));
    let mut asked = Vec::new();
    let mut counting = |h: &str| {
        asked.push(h.to_owned());
        resolve(h)
    };
    translate(&parsed.apps, &TranslateOptions::default(), &mut counting);
    asked.sort();
    assert_eq!(asked, ["agent-1.example", "agent-2.example"]);
}

#[test]
fn ip_source_host_only_and_netinfo_only() {
    // Host only: Calico tasks have no host ports, so nothing serves, each task says why.
    let calico = apps(own_fixture("calico-1.5.json"));
    let host_only = TranslateOptions {
        ip_sources: vec![IpSource::Host],
        ..TranslateOptions::default()
    };
    let t = run(&calico, &host_only);
    assert!(service(&t, "*:10040/tcp").backends.is_empty(), "{t:#?}");
    assert_skipped(
        &t,
        "/calico/dual",
        None,
        Some("calico_dual.a"),
        "host: the task has no host ports",
    );
    // Host-networked apps are unaffected by the choice.
    assert_eq!(
        service(&t, "*:10043/tcp").backends,
        addrs(&["172.24.0.14:31043"])
    );

    // Netinfo only: fine for Calico, but bridge and host networking have no task address to use.
    let netinfo_only = TranslateOptions {
        ip_sources: vec![IpSource::Netinfo],
        ..TranslateOptions::default()
    };
    let t = run(&calico, &netinfo_only);
    assert_eq!(
        service(&t, "*:10040/tcp").backends,
        addrs(&["192.168.3.30:8080", "192.168.3.31:8080"])
    );
    assert!(service(&t, "*:10043/tcp").backends.is_empty());
    assert_skipped(
        &t,
        "/calico/host-mode",
        None,
        Some("calico_host-mode.a"),
        "do not apply to Host networking",
    );

    // Host first: a Calico task with host ports is reached through its agent.
    let parsed = apps(own_fixture("calico-1.4.json"));
    let host_first = TranslateOptions {
        ip_sources: vec![IpSource::Host, IpSource::Netinfo],
        ..TranslateOptions::default()
    };
    let t = run(&parsed, &host_first);
    assert_eq!(
        service(&t, "*:10030/tcp").backends,
        addrs(&["172.24.0.4:31555", "192.168.1.10:80", "192.168.1.11:80"])
    );
}

// ---- Bridge networking, Marathon 1.5+ ----

#[test]
fn bridge_networking_uses_agent_and_host_ports() {
    let parsed = apps(own_fixture("bridge-1.5.json"));
    let t = run(&parsed, &TranslateOptions::default());
    assert_sorted(&t);
    assert_eq!(
        listeners(&t),
        ["*:10020/tcp", "*:10021/tcp", "*:10021/udp", "*:10022/tcp"]
    );
    assert_service(
        &t,
        "*:10020/tcp",
        "shop_cart_10020",
        "/shop/cart",
        0,
        Balance::RoundRobin,
        &["10.1.0.1:20001", "10.1.0.2:20011"],
    );
    for l in ["*:10021/tcp", "*:10021/udp"] {
        assert_service(
            &t,
            l,
            "shop_cart_10021",
            "/shop/cart",
            1,
            Balance::RoundRobin,
            &["10.1.0.1:20002", "10.1.0.2:20012"],
        );
    }
    // UCR with bridge networking: the same rule, never the container's bridge address.
    assert_service(
        &t,
        "*:10022/tcp",
        "shop_static_10022",
        "/shop/static",
        0,
        Balance::RoundRobin,
        &["10.1.0.3:31999"],
    );
    assert!(t.skipped.is_empty(), "{:#?}", t.skipped);
}

// ---- Container networking (IP-per-task), 1.4 and 1.5+ ----

#[test]
fn calico_marathon_1_4_docker_user_and_ip_address() {
    let parsed = apps(own_fixture("calico-1.4.json"));
    let t = run(&parsed, &TranslateOptions::default());
    assert_sorted(&t);
    assert_eq!(
        listeners(&t),
        ["*:10030/tcp", "*:10031/tcp", "*:10052/tcp"],
        "{t:#?}"
    );
    // The task without an address yet falls back to the agent, and has no host port either;
    // the one with a host port serves through the agent.
    assert_service(
        &t,
        "*:10030/tcp",
        "calico_docker_10030",
        "/calico/docker",
        0,
        Balance::RoundRobin,
        &["192.168.1.10:80", "192.168.1.11:80", "172.24.0.4:31555"],
    );
    assert_skipped(
        &t,
        "/calico/docker",
        None,
        Some("calico_docker.no-ip-yet"),
        "no IPv4 address in ipAddresses",
    );
    // ipAddress.discovery.ports gives the container port; HAPROXY_0_PORT the service port
    // Marathon 1.4 does not assign.
    assert_service(
        &t,
        "*:10031/tcp",
        "calico_mesos_10031",
        "/calico/mesos",
        0,
        Balance::RoundRobin,
        &["192.168.2.20:8443"],
    );
    // No service port and no HAPROXY_0_PORT: marathon-lb's made-up port from
    // --min/max-serv-port-ip-per-task (10050-10100): 10050 + sha1("/calico/noport-7000-0")'s
    // first 8 hex digits mod 51.
    assert_service(
        &t,
        "*:10052/tcp",
        "calico_noport_10052",
        "/calico/noport",
        0,
        Balance::RoundRobin,
        &["192.168.2.21:7000"],
    );
    assert_eq!(t.skipped.len(), 1, "{:#?}", t.skipped);
    // With the assignment turned off (either flag 0), such a port is left out, and says why.
    let off = TranslateOptions {
        ip_per_task_ports: None,
        ..TranslateOptions::default()
    };
    let t = run(&parsed, &off);
    assert_eq!(listeners(&t), ["*:10030/tcp", "*:10031/tcp"], "{t:#?}");
    assert_skipped(
        &t,
        "/calico/noport",
        Some(0),
        None,
        "HAPROXY_0_PORT is not set",
    );
    assert_eq!(t.skipped.len(), 2, "{:#?}", t.skipped);
}

#[test]
fn calico_marathon_1_5_networks() {
    let parsed = apps(own_fixture("calico-1.5.json"));
    let t = run(&parsed, &TranslateOptions::default());
    assert_sorted(&t);
    assert_eq!(
        listeners(&t),
        ["*:10040/tcp", "*:10041/udp", "*:10042/tcp", "*:10043/tcp"],
        "{t:#?}"
    );
    // The first IPv4 address, past an IPv6 one.
    assert_service(
        &t,
        "*:10040/tcp",
        "calico_dual_10040",
        "/calico/dual",
        0,
        Balance::RoundRobin,
        &["192.168.3.30:8080", "192.168.3.31:8080"],
    );
    assert_service(
        &t,
        "*:10041/udp",
        "calico_dual_10041",
        "/calico/dual",
        1,
        Balance::RoundRobin,
        &["192.168.3.30:53", "192.168.3.31:53"],
    );
    // A network without a mode is a container network.
    assert_service(
        &t,
        "*:10042/tcp",
        "calico_default-mode_10042",
        "/calico/default-mode",
        0,
        Balance::RoundRobin,
        &["192.168.3.40:9000"],
    );
    // `networks: [{mode: host}]`.
    assert_service(
        &t,
        "*:10043/tcp",
        "calico_host-mode_10043",
        "/calico/host-mode",
        0,
        Balance::RoundRobin,
        &["172.24.0.14:31043"],
    );
    assert_skipped(
        &t,
        "/calico/strange-mode",
        None,
        None,
        "unknown networking mode \"overlay\"",
    );
    assert_eq!(t.skipped.len(), 1, "{:#?}", t.skipped);
}

// ---- Health ----

#[test]
fn health_checks_keep_only_alive_tasks_when_asked() {
    let parsed = apps(own_fixture("health.json"));
    let with = TranslateOptions {
        health_check: true,
        ..TranslateOptions::default()
    };
    let t = run(&parsed, &with);
    // 1.4 results keyed `taskId`: alive, and one alive result out of two; not the dead one nor
    // the one without results yet.
    assert_eq!(
        service(&t, "*:10100/tcp").backends,
        addrs(&["10.2.0.1:21001", "10.2.0.4:21004"])
    );
    // 1.5+ results keyed `instanceId`.
    assert_eq!(
        service(&t, "*:10101/tcp").backends,
        addrs(&["10.2.1.1:22001"])
    );
    // No health checks on the app: results do not matter.
    assert_eq!(
        service(&t, "*:10102/tcp").backends,
        addrs(&["10.2.2.1:23001", "10.2.2.2:23002"])
    );
    assert!(t.skipped.is_empty(), "{:#?}", t.skipped);

    let t = run(&parsed, &TranslateOptions::default());
    assert_eq!(
        service(&t, "*:10100/tcp").backends,
        addrs(&[
            "10.2.0.1:21001",
            "10.2.0.2:21002",
            "10.2.0.3:21003",
            "10.2.0.4:21004"
        ])
    );
    assert_eq!(
        service(&t, "*:10101/tcp").backends,
        addrs(&["10.2.1.1:22001", "10.2.1.2:22002"])
    );
}

#[test]
fn health_results_parse_under_both_keys() {
    let parsed = apps(own_fixture("health.json"));
    let old = &parsed
        .apps
        .iter()
        .find(|a| a.id == "/health/old")
        .expect("/health/old")
        .tasks[0];
    assert_eq!(
        old.health_check_results[0].task_id.as_deref(),
        Some("health_old.alive")
    );
    assert_eq!(old.health_check_results[0].instance_id, None);
    let new = &parsed
        .apps
        .iter()
        .find(|a| a.id == "/health/new")
        .expect("/health/new")
        .tasks[0];
    assert_eq!(
        new.health_check_results[0].instance_id.as_deref(),
        Some("health_new.marathon-alive")
    );
    assert_eq!(new.health_check_results[0].task_id, None);
}

// ---- Groups and strict mode ----

#[test]
fn groups_select_ports() {
    let parsed = apps(own_fixture("groups.json"));
    let ports = |groups: &[&str], strict: bool| -> Vec<u16> {
        let o = TranslateOptions {
            strict_mode: strict,
            ..opts(groups)
        };
        run(&parsed, &o)
            .desired
            .services
            .iter()
            .map(|s| s.listener.port)
            .collect()
    };
    // The per-port group overrides the app's; ENABLED=false turns a port off without strict
    // mode too; no group at all is only for `*`.
    assert_eq!(
        ports(&["external"], false),
        [10050, 10052, 10054, 10056, 10058, 10059]
    );
    assert_eq!(ports(&["internal"], false), [10051, 10052, 10055]);
    assert_eq!(
        ports(&["external", "internal"], false),
        [10050, 10051, 10052, 10054, 10055, 10056, 10058, 10059]
    );
    assert_eq!(
        ports(&["*"], false),
        [
            10050, 10051, 10052, 10053, 10054, 10055, 10056, 10058, 10059
        ]
    );
    assert_eq!(ports(&["nobody"], false), Vec::<u16>::new());
    assert_eq!(ports(&[], false), Vec::<u16>::new());
    // Strict: only ports labelled enabled with one of marathon-lb's true spellings ("Yes").
    assert_eq!(ports(&["external"], true), [10056, 10059]);
    assert_eq!(ports(&["*"], true), [10056, 10059]);
}

// ---- Labels an L4 balancer cannot honour ----

#[test]
fn l7_labels_are_reported_and_the_port_still_balanced() {
    let parsed = apps(own_fixture("l7.json"));
    let t = run(&parsed, &TranslateOptions::default());
    assert_eq!(
        listeners(&t),
        [
            "*:10093/tcp",
            "*:10094/tcp",
            "*:10095/tcp",
            "*:10096/tcp",
            "*:10097/tcp",
            "*:10097/udp"
        ]
    );
    assert_eq!(
        service(&t, "*:10093/tcp").backends,
        addrs(&["10.7.0.1:38001"])
    );
    assert_eq!(
        service(&t, "*:10094/tcp").balance,
        Balance::RoundRobin,
        "a balance lb does not have (uri) falls back"
    );
    assert_eq!(service(&t, "*:10095/tcp").balance, Balance::Source);
    assert_eq!(
        ranges(service(&t, "*:10094/tcp")),
        ["10.0.0.0/8"],
        "an allow-list is honoured"
    );
    assert_eq!(
        service(&t, "*:10097/udp").backends,
        addrs(&["10.7.0.2:38011"])
    );
    // The front end serves the virtual-host labels; the rest are reported.
    let want = vec![
        Unsupported {
            app_id: "/l7/dual".into(),
            port_index: 0,
            labels: vec!["HAPROXY_0_BALANCE".into()],
        },
        Unsupported {
            app_id: "/l7/site".into(),
            port_index: 0,
            // Not USE_HSTS=false nor STICKY=false: they ask for nothing.
            labels: [
                "HAPROXY_0_AUTH",
                "HAPROXY_0_BACKEND_HEAD",
                "HAPROXY_0_HTTP_BACKEND_PROXYPASS_PATH",
                "HAPROXY_0_MODE",
            ]
            .map(String::from)
            .to_vec(),
        },
        Unsupported {
            app_id: "/l7/site".into(),
            port_index: 1,
            labels: ["HAPROXY_1_BALANCE", "HAPROXY_1_STICKY"]
                .map(String::from)
                .to_vec(),
        },
    ];
    assert_eq!(t.unsupported, want);
    // Without the front end (`--no-vhost`) they are reported too.
    let no_vhost = run(
        &parsed,
        &TranslateOptions {
            vhosts: false,
            ..TranslateOptions::default()
        },
    );
    let labels = |t: &Translation, app: &str| -> Vec<String> {
        t.unsupported
            .iter()
            .filter(|u| u.app_id == app && u.port_index == 0)
            .flat_map(|u| u.labels.clone())
            .collect()
    };
    assert_eq!(
        labels(&no_vhost, "/l7/dual"),
        ["HAPROXY_0_BALANCE", "HAPROXY_0_VHOST"]
    );
    assert_eq!(
        labels(&no_vhost, "/l7/site"),
        [
            "HAPROXY_0_AUTH",
            "HAPROXY_0_BACKEND_HEAD",
            "HAPROXY_0_HTTP_BACKEND_PROXYPASS_PATH",
            "HAPROXY_0_MODE",
            "HAPROXY_0_PATH",
            "HAPROXY_0_REDIRECT_TO_HTTPS",
            "HAPROXY_0_SSL_CERT",
            "HAPROXY_0_VHOST",
        ]
    );
    assert!(t.skipped.is_empty(), "{:#?}", t.skipped);
}

fn ranges(s: &ServiceSpec) -> Vec<String> {
    s.allow.iter().map(|c| c.to_string()).collect()
}

#[test]
fn allowed_networks_label_limits_clients_and_a_bad_range_skips_only_its_port() {
    let parsed = apps(own_fixture("acl.json"));
    let t = run(&parsed, &TranslateOptions::default());
    assert_sorted(&t);
    assert_eq!(
        listeners(&t),
        ["*:10110/tcp", "*:10111/tcp", "*:10111/udp", "*:10112/tcp"],
        "{:#?}",
        t.skipped
    );
    // Separated by any run of spaces; an address alone is a /32; host bits cleared, as
    // HAProxy reads `src 10.1.2.3/8` (and marathon-lb's own example, 167.114.238.0/22).
    assert_eq!(
        ranges(service(&t, "*:10110/tcp")),
        ["10.0.0.0/8", "167.114.236.0/22", "167.114.239.226/32"]
    );
    // Both protocols of a port take its list.
    for l in ["*:10111/tcp", "*:10111/udp"] {
        assert_eq!(ranges(service(&t, l)), ["192.168.0.0/16"], "{l}");
    }
    assert!(
        service(&t, "*:10112/tcp").allow.is_empty(),
        "blank: every client"
    );
    assert_skipped(
        &t,
        "/acl/bad",
        Some(0),
        None,
        "\"10.0.0.0/33\": prefix length 33 is over 32",
    );
    assert_skipped(
        &t,
        "/acl/bad",
        Some(1),
        None,
        "HAPROXY_1_BACKEND_NETWORK_ALLOWED_ACL",
    );
    assert_skipped(&t, "/acl/bad", Some(2), None, "is not an IPv4 address");
    assert!(t.unsupported.is_empty(), "{:?}", t.unsupported);

    // `--allow`: the ranges of every port without its own.
    let with_default = TranslateOptions {
        allow: vec!["10.9.0.0/16".parse().unwrap()],
        ..TranslateOptions::default()
    };
    let t = run(&parsed, &with_default);
    assert_eq!(ranges(service(&t, "*:10112/tcp")), ["10.9.0.0/16"]);
    assert_eq!(ranges(service(&t, "*:10111/udp")), ["192.168.0.0/16"]);
}

// ---- Zero-downtime deployments ----

#[test]
fn zdd_pair_merges_and_drains_old_tasks() {
    let parsed = apps(own_fixture("zdd.json"));
    for health_check in [false, true] {
        let t = run(
            &parsed,
            &TranslateOptions {
                health_check,
                ..TranslateOptions::default()
            },
        );
        assert_sorted(&t);
        // shop: blue started first, so it is old and its definition applies (green's alternate
        // port 10061 is not served); two healthy green tasks drain the first two blue ones.
        assert_service(
            &t,
            "*:10060/tcp",
            "shop_10060",
            "/shop-blue",
            0,
            Balance::RoundRobin,
            &["10.4.0.1:25001", "10.4.0.2:25002", "10.4.1.3:26003"],
        );
        assert!(
            t.desired.services.iter().all(|s| s.listener.port != 10061),
            "{t:#?}"
        );
        // A lone app of a deployment group takes the group's name.
        assert_service(
            &t,
            "*:10062/tcp",
            "solo_10062",
            "/solo-v1",
            0,
            Balance::RoundRobin,
            &["10.4.2.1:27001"],
        );
        // batch: b started later but a scaled later, so with NEW_INSTANCES a is the new one;
        // target 3 (a's) allows draining one of b's two tasks.
        assert_service(
            &t,
            "*:10063/tcp",
            "batch_10063",
            "/batch-b",
            0,
            Balance::RoundRobin,
            &["10.4.3.1:28001", "10.4.3.2:28002", "10.4.4.2:29002"],
        );
        assert!(
            t.desired.services.iter().all(|s| s.listener.port != 10064),
            "{t:#?}"
        );
        // broken: an unreadable target drains nothing, and says so.
        assert_service(
            &t,
            "*:10065/tcp",
            "broken_10065",
            "/broken-1",
            0,
            Balance::RoundRobin,
            &["10.4.5.1:30001", "10.4.5.2:30002"],
        );
        assert_skipped(
            &t,
            "/broken-2",
            None,
            None,
            "HAPROXY_DEPLOYMENT_TARGET_INSTANCES \"many\"",
        );
        assert_eq!(t.skipped.len(), 1, "{:#?}", t.skipped);
    }
}

#[test]
fn output_does_not_depend_on_listing_order() {
    let mut parsed = apps(own_fixture("zdd.json"));
    parsed
        .apps
        .extend(parse(own_fixture("malformed.json")).apps);
    let forward = run(&parsed, &TranslateOptions::default());
    parsed.apps.reverse();
    let backward = run(&parsed, &TranslateOptions::default());
    assert_eq!(forward, backward);
}

// ---- Apps clashing on a listener ----

#[test]
fn first_app_by_id_keeps_a_contested_listener() {
    let parsed = apps(own_fixture("conflicts.json"));
    let t = run(&parsed, &TranslateOptions::default());
    assert_sorted(&t);
    assert_eq!(
        listeners(&t),
        [
            "*:10070/tcp",
            "*:10070/udp",
            "*:10071/tcp",
            "10.0.0.9:10070/tcp"
        ]
    );
    assert_eq!(service(&t, "*:10070/tcp").name, "a_first_10070");
    assert_eq!(service(&t, "*:10070/udp").name, "c_udp_10070");
    assert_eq!(service(&t, "10.0.0.9:10070/tcp").name, "d_bound_10070");
    // Within one app, the lower port index keeps it.
    assert_eq!(service(&t, "*:10071/tcp").port_index, Some(0));
    assert_skipped(
        &t,
        "/b/second",
        Some(0),
        None,
        "*:10070/tcp is already taken by a_first_10070",
    );
    assert_skipped(
        &t,
        "/z/last",
        Some(0),
        None,
        "*:10070/tcp is already taken by a_first_10070",
    );
    assert_skipped(
        &t,
        "/e/dup",
        Some(1),
        None,
        "*:10071/tcp is already taken by e_dup_10071",
    );
    // Apps of other groups are none of this balancer's business, clashing or not.
    assert_eq!(t.skipped.len(), 3, "{:#?}", t.skipped);

    let t = run(&parsed, &opts(&["*"]));
    assert_skipped(
        &t,
        "/f/internal",
        Some(0),
        None,
        "already taken by a_first_10070",
    );
}

// ---- Malformed input ----

#[test]
fn malformed_apps_cost_only_themselves() {
    let parsed = parse(own_fixture("malformed.json"));
    let errors: Vec<(usize, Option<&str>)> = parsed
        .errors
        .iter()
        .map(|e| (e.index, e.app_id.as_deref()))
        .collect();
    assert_eq!(
        errors,
        [(1, None), (2, None), (3, Some("/bad/labels-type"))],
        "{:#?}",
        parsed.errors
    );
    let bad_task = parsed
        .apps
        .iter()
        .find(|a| a.id == "/bad/task")
        .expect("/bad/task parses");
    assert_eq!(bad_task.task_errors.len(), 2, "{:?}", bad_task.task_errors);
    assert_eq!(bad_task.tasks.len(), 1);
    let nulls = parsed
        .apps
        .iter()
        .find(|a| a.id == "/bad/nulls")
        .expect("/bad/nulls parses");
    assert!(nulls.labels.is_empty() && nulls.tasks.is_empty() && nulls.container.is_none());

    let t = run(&parsed, &TranslateOptions::default());
    assert_sorted(&t);
    assert_eq!(
        listeners(&t),
        [
            "*:10080/tcp",
            "*:10086/tcp",
            "*:10090/tcp",
            "*:10091/tcp",
            "*:10092/tcp"
        ],
        "{t:#?}"
    );
    assert_eq!(
        service(&t, "*:10080/tcp").backends,
        addrs(&["10.6.0.1:32001"])
    );

    // One skip per bad port; the sound port of the same app serves, without the tasks whose
    // own port for it is nonsense.
    assert_skipped(
        &t,
        "/bad/labels",
        Some(0),
        None,
        "HAPROXY_0_PORT \"eighty\" is not a number",
    );
    assert_skipped(
        &t,
        "/bad/labels",
        Some(1),
        None,
        "service port 70000 is not a port number",
    );
    assert_skipped(
        &t,
        "/bad/labels",
        Some(2),
        None,
        "HAPROXY_2_BIND_ADDR \"lb.example.com\" is not an IPv4",
    );
    assert_skipped(
        &t,
        "/bad/labels",
        Some(3),
        None,
        "service port 0 is not a port number",
    );
    assert_skipped(&t, "/bad/labels", Some(4), None, "protocol \"sctp\"");
    assert_skipped(
        &t,
        "/bad/labels",
        Some(5),
        Some("bad_labels.b"),
        "task port 0",
    );
    assert_skipped(
        &t,
        "/bad/labels",
        Some(5),
        Some("bad_labels.c"),
        "task port 65536",
    );
    assert_eq!(skipped_for(&t, "/bad/labels").len(), 7, "{:#?}", t.skipped);
    assert_eq!(
        service(&t, "*:10086/tcp").backends,
        addrs(&["10.6.1.1:33006"])
    );

    // Tasks that do not parse are reported; the others serve.
    assert_eq!(skipped_for(&t, "/bad/task").len(), 2, "{:#?}", t.skipped);
    assert!(
        skipped_for(&t, "/bad/task")
            .iter()
            .any(|s| s.reason.contains("bad_task.a"))
    );
    assert_eq!(
        service(&t, "*:10090/tcp").backends,
        addrs(&["10.6.2.3:36003"])
    );

    assert_skipped(
        &t,
        "/bad/host",
        None,
        Some("bad_host.a"),
        "\"unresolvable.invalid\" does not resolve",
    );
    assert_eq!(
        service(&t, "*:10091/tcp").backends,
        addrs(&["10.6.3.2:37002"])
    );

    // No tasks: still served, with no backends (new flows are dropped, as HAProxy with no server).
    assert!(service(&t, "*:10092/tcp").backends.is_empty());
    assert_skipped(&t, "/bad/no-tasks", Some(1), None, "service port -1");
    assert_skipped(&t, "/bad/no-tasks", Some(2), None, "no service port");

    assert_eq!(t.skipped.len(), 7 + 2 + 1 + 2, "{:#?}", t.skipped);
}

#[test]
fn a_body_without_apps_is_an_error() {
    for body in [
        &b"not json"[..],
        b"[]",
        b"{\"message\": \"Unauthorized\"}",
        b"{\"apps\": 3}",
    ] {
        assert!(
            parse_apps(body).is_err(),
            "{:?} parsed",
            String::from_utf8_lossy(body)
        );
    }
    let empty = parse_apps(b"{\"apps\": null}").expect("null apps");
    assert!(empty.apps.is_empty() && empty.errors.is_empty());
    let empty = parse_apps(b"{\"apps\": []}").expect("no apps");
    assert!(empty.apps.is_empty());
    assert_eq!(
        translate(&empty.apps, &TranslateOptions::default(), &mut resolve),
        Translation::default()
    );
}

// ---- marathon-lb's own inputs and the synthetic captures (read in place, never copied) ----

#[test]
fn shared_synthetic_nginx_calico_both_shapes() {
    for name in [
        "synthetic/nginx-calico-marathon1.4.json",
        "synthetic/nginx-calico-marathon1.5plus.json",
    ] {
        let parsed = apps(shared_fixture(name));
        for health_check in [false, true] {
            let t = run(
                &parsed,
                &TranslateOptions {
                    health_check,
                    ..TranslateOptions::default()
                },
            );
            assert_eq!(listeners(&t), ["*:10000/tcp"], "{name}: {t:#?}");
            assert_service(
                &t,
                "*:10000/tcp",
                "nginx_10000",
                "/nginx",
                0,
                Balance::RoundRobin,
                &["192.168.84.196:80", "192.168.57.66:80", "192.168.12.7:80"],
            );
            assert!(t.skipped.is_empty(), "{name}: {:#?}", t.skipped);
            // The VHOST is served by the front end: nothing to report.
            assert!(t.unsupported.is_empty(), "{name}: {:?}", t.unsupported);
        }
    }
}

#[test]
fn shared_marathon15_bridge_app() {
    // marathon-lb: `server 10_0_2_148_1565 10.0.2.148:1565` in backend pywebserver_10101.
    let parsed = apps(shared_fixture("marathon-lb__tests_marathon15_apps.json"));
    let t = run(
        &parsed,
        &TranslateOptions {
            health_check: true,
            ..TranslateOptions::default()
        },
    );
    assert_eq!(listeners(&t), ["*:10101/tcp"]);
    assert_service(
        &t,
        "*:10101/tcp",
        "pywebserver_10101",
        "/pywebserver",
        0,
        Balance::RoundRobin,
        &["10.0.2.148:1565"],
    );
    // Its VHOST is served by the front end.
    assert!(t.unsupported.is_empty(), "{:?}", t.unsupported);
}

#[test]
fn shared_zdd_apps_drain_one_green_task() {
    // marathon-lb: four servers in nginx_10000, the one on 31184 `disabled`; here a disabled
    // server is simply not a backend.
    let parsed = apps(shared_fixture("marathon-lb__tests_zdd_apps.json"));
    let t = run(
        &parsed,
        &TranslateOptions {
            health_check: true,
            ..TranslateOptions::default()
        },
    );
    assert_eq!(listeners(&t), ["*:10000/tcp"], "{t:#?}");
    assert_service(
        &t,
        "*:10000/tcp",
        "nginx_10000",
        "/nginx-green",
        0,
        Balance::RoundRobin,
        &["10.0.1.147:25724", "10.0.6.25:16916", "10.0.6.25:23336"],
    );
    assert!(t.skipped.is_empty(), "{:#?}", t.skipped);
}

#[test]
fn shared_zdd_app_blue_both_shapes() {
    for name in [
        "marathon-lb__tests_zdd_app_blue.json",
        "marathon-lb__tests_zdd_app_blue_marathon1.5.json",
    ] {
        let parsed = apps(shared_fixture(name));
        let t = run(
            &parsed,
            &TranslateOptions {
                health_check: true,
                ..TranslateOptions::default()
            },
        );
        assert_eq!(listeners(&t), ["*:10000/tcp"], "{name}: {t:#?}");
        // Bridge networking: the agent's address, also for the task without ipAddresses.
        assert_service(
            &t,
            "*:10000/tcp",
            "nginx_10000",
            "/nginx-green",
            0,
            Balance::RoundRobin,
            &["10.0.6.25:16916", "10.0.6.25:31184", "10.0.6.25:23336"],
        );
    }
}

#[test]
fn shared_app_definitions_parse_and_translate_as_marathon_lb_would() {
    let read = |name: &str| -> lb_user::marathon::api::App {
        let path = shared_fixture(name);
        let body =
            std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        parse_app(&body).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    // Definitions, not API output: no tasks. The 1-nginx pair is a deployment group "nginx"
    // whose id lacks the leading slash; the service is there, waiting for tasks.
    for name in [
        "marathon-lb__tests_1-nginx.json",
        "marathon-lb__tests_1-nginx-marathon1.5.json",
    ] {
        let app = read(name);
        let t = translate(
            std::slice::from_ref(&app),
            &TranslateOptions::default(),
            &mut resolve,
        );
        assert_eq!(listeners(&t), ["*:10000/tcp"], "{name}");
        assert_eq!(service(&t, "*:10000/tcp").name, "nginx_10000", "{name}");
        assert!(service(&t, "*:10000/tcp").backends.is_empty(), "{name}");
    }
    // Bridge mode wins (networks come last) and no mapping has a service port: as in
    // marathon-lb, no port at all, HAPROXY_0_PORT notwithstanding.
    let app = read("marathon-lb__ci_backends_1.9_docker_ippc.json");
    let t = translate(
        std::slice::from_ref(&app),
        &TranslateOptions::default(),
        &mut resolve,
    );
    assert!(
        t.desired.services.is_empty() && t.skipped.is_empty(),
        "{t:#?}"
    );
    // A container network without port mappings: nothing to balance either.
    let app = read("marathon-lb__ci_backends_ucr_ippc.json");
    let t = translate(
        std::slice::from_ref(&app),
        &TranslateOptions::default(),
        &mut resolve,
    );
    assert!(
        t.desired.services.is_empty() && t.skipped.is_empty(),
        "{t:#?}"
    );
}

#[test]
fn shared_tasks_listing_is_not_an_apps_response() {
    let path = shared_fixture("marathon__tasks.json");
    let body = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let err = parse_apps(&body).expect_err("/v2/tasks parsed as /v2/apps");
    assert!(err.to_string().contains("tasks"), "{err}");
}
