//! DNS for Calico tasks, end to end: the real daemon follows the Marathon stand-in in the agent
//! namespace and `dig` asks it from the client namespace, over the veths, for every name
//! Mesos-DNS and dcos-net give a task; a scale-up shows in answers within a second; NXDOMAIN
//! carries the SOA; a set larger than 512 bytes comes back truncated over UDP and whole over
//! TCP.
use std::time::Duration;

use lb_tests::{
    lb::{self, NsStandin, wait_for},
    marathon_standin::Mode,
    netns::{AGENT, Topology},
};
use lb_user::dns::names::task_hash;
use serde_json::{Value, json};

/// The guide's three Calico addresses, and a fourth for the scale-up.
const IPS: [&str; 4] = [
    "192.168.84.196",
    "192.168.57.66",
    "192.168.12.5",
    "192.168.33.3",
];
const METRICS: &str = "127.0.0.1:9191";

fn task(id: &str, ip: &str) -> Value {
    json!({"id": id, "state": "TASK_RUNNING", "host": AGENT.to_string(), "slaveId": "agent-S1",
           "ipAddresses": [{"ipAddress": ip, "protocol": "IPv4"}], "ports": []})
}

fn calico_app(id: &str, group: &str, service_port: u16, tasks: Vec<Value>) -> Value {
    json!({
        "id": id, "instances": tasks.len(),
        "container": {"type": "DOCKER", "docker": {"image": "nginx"},
                      "portMappings": [{"containerPort": 80, "servicePort": service_port, "protocol": "tcp", "name": "http"}]},
        "networks": [{"name": "calico", "mode": "container"}],
        "labels": {"HAPROXY_GROUP": group},
        "tasks": tasks
    })
}

/// nginx scaled to `n` (balanced: group external), an app of another group in a Marathon group
/// (`/prod/api`, never balanced, still named), and `/big` with 60 tasks.
fn apps(n: usize) -> Value {
    let nginx = (0..n)
        .map(|i| task(&format!("nginx.{i}"), IPS[i]))
        .collect();
    let big = (0..60)
        .map(|i| task(&format!("big.{i}"), &format!("192.168.200.{}", i + 1)))
        .collect();
    json!({"apps": [
        calico_app("/nginx", "external", 10000, nginx),
        calico_app("/prod/api", "internal", 10001, vec![task("prod_api.1", "192.168.1.10")]),
        calico_app("/big", "internal", 10002, big),
    ]})
}

/// What dig printed, parsed.
#[derive(Debug, Default)]
struct Dig {
    status: String,
    flags: Vec<String>,
    /// (type, data) of the answer section.
    answers: Vec<(String, String)>,
    authority: Vec<(String, String)>,
    additional: Vec<(String, String)>,
    raw: String,
}

impl Dig {
    fn a(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .answers
            .iter()
            .filter(|(t, _)| t == "A")
            .map(|(_, d)| d.clone())
            .collect();
        v.sort();
        v
    }
}

fn dig(topo: &Topology, args: &str) -> Dig {
    let raw = topo.sh(
        "client",
        &format!("dig @{AGENT} -p 53 +time=2 +tries=1 +nocmd +nostats {args}"),
    );
    let mut d = Dig {
        raw: raw.clone(),
        ..Dig::default()
    };
    let mut section = "";
    for line in raw.lines() {
        if let Some(rest) = line.split("status: ").nth(1) {
            d.status = rest.split(',').next().unwrap_or_default().to_owned();
        } else if let Some(rest) = line.strip_prefix(";; flags: ") {
            d.flags = rest
                .split(';')
                .next()
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_owned)
                .collect();
        } else if line.starts_with(";; ANSWER SECTION") {
            section = "answer";
        } else if line.starts_with(";; AUTHORITY SECTION") {
            section = "authority";
        } else if line.starts_with(";; ADDITIONAL SECTION") {
            section = "additional";
        } else if line.trim().is_empty() || line.starts_with(';') {
            if line.trim().is_empty() {
                section = "";
            }
        } else {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 5 {
                let rr = (f[3].to_owned(), f[4..].join(" "));
                match section {
                    "answer" => d.answers.push(rr),
                    "authority" => d.authority.push(rr),
                    "additional" => d.additional.push(rr),
                    _ => {}
                }
            }
        }
    }
    d
}

/// GETs a path of the Mesos-DNS HTTP interface from the client, as a script would: the status
/// and the body.
fn mesos_dns_http(topo: &Topology, path: &str) -> (u16, String) {
    let out = topo.sh(
        "client",
        &format!("curl -s -m 3 -w '\\n%{{http_code}}' http://{AGENT}:8123{path}"),
    );
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn sorted(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[test]
fn dig_from_the_client_gets_every_name_fresh_and_whole() {
    let mut topo = Topology::new("lbd1");
    let m = NsStandin::start(&topo.ns("agent"));
    // Marathon answers 503 at first: DNS must say SERVFAIL, never NXDOMAIN.
    m.standin.set_mode(Mode::Fail(503));
    m.standin.set_apps(apps(3));
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
            "--resync-interval",
            "1",
            "--dns-listen",
            "0.0.0.0:53",
            "--dns-http-listen",
            "0.0.0.0:8123",
            "--metrics",
            METRICS,
        ],
        0,
    );
    let d = dig(&topo, "nginx.marathon.mesos");
    assert_eq!(d.status, "SERVFAIL", "before the first sync: {}", d.raw);
    let (code, body) = mesos_dns_http(&topo, "/v1/hosts/nginx.marathon.mesos");
    assert_eq!(code, 503, "before the first sync: {body}");

    m.standin.set_mode(Mode::Normal);
    wait_for("the first sync reaches DNS", Duration::from_secs(5), || {
        dig(&topo, "nginx.marathon.mesos").status == "NOERROR"
    });

    // The guide's example: three Calico IPs, authoritative, TTL 5, rotated per query.
    let d = dig(&topo, "nginx.marathon.mesos");
    assert_eq!(d.a(), sorted(&IPS[..3]), "{}", d.raw);
    assert!(d.flags.contains(&"aa".to_owned()), "{}", d.raw);
    assert!(d.raw.contains("\t5\tIN\tA\t"), "TTL 5: {}", d.raw);
    let firsts: std::collections::BTreeSet<String> = (0..6)
        .map(|_| dig(&topo, "nginx.marathon.mesos").answers[0].1.clone())
        .collect();
    assert!(firsts.len() > 1, "answers rotate: {firsts:?}");

    // dcos-net's names, the agents' names, the per-task canonical names.
    for kind in ["containerip", "autoip"] {
        let d = dig(
            &topo,
            &format!("nginx.marathon.{kind}.dcos.thisdcos.directory"),
        );
        assert_eq!(d.a(), sorted(&IPS[..3]), "{kind}: {}", d.raw);
    }
    let agent = AGENT.to_string();
    for name in [
        "nginx.marathon.agentip.dcos.thisdcos.directory",
        "nginx.marathon.slave.mesos",
    ] {
        assert_eq!(dig(&topo, name).a(), vec![agent.clone()], "{name}");
    }
    let canonical = format!("nginx-{}-s1.marathon.mesos", task_hash("nginx.1"));
    assert_eq!(dig(&topo, &canonical).a(), vec![IPS[1].to_owned()]);
    assert_eq!(
        dig(&topo, &canonical.replace(".marathon.", ".marathon.slave.")).a(),
        vec![agent.clone()]
    );

    // SRV: each task's canonical name and container port, their addresses as glue.
    let d = dig(&topo, "_nginx._tcp.marathon.mesos SRV");
    assert_eq!(d.answers.len(), 3, "{}", d.raw);
    assert!(
        d.answers
            .iter()
            .all(|(t, data)| t == "SRV" && data.starts_with("0 0 80 nginx-")),
        "{}",
        d.raw
    );
    assert!(d.raw.contains(&format!("{canonical}.")), "{}", d.raw);
    assert_eq!(d.additional.iter().filter(|(t, _)| t == "A").count(), 3);
    // The same under the port's name (the port mapping is named "http"), as Mesos-DNS has it.
    let named = dig(&topo, "_http._nginx._tcp.marathon.mesos SRV");
    let mut plain = d.answers.clone();
    let mut answers = named.answers.clone();
    plain.sort();
    answers.sort();
    assert_eq!(answers, plain, "{}", named.raw);

    // Every app is named, whatever its group; both forms of a grouped app's name.
    for name in ["api-prod.marathon.mesos", "api.prod.marathon.mesos"] {
        assert_eq!(
            dig(&topo, name).a(),
            vec!["192.168.1.10".to_owned()],
            "{name}"
        );
    }

    // Mesos-DNS's HTTP interface answers from the same zone, in its JSON shapes.
    let (code, body) = mesos_dns_http(&topo, "/v1/hosts/nginx.marathon.mesos");
    assert_eq!(code, 200, "{body}");
    let hosts: Vec<Value> = serde_json::from_str(&body).expect("hosts JSON");
    let mut ips: Vec<&str> = hosts.iter().map(|h| h["ip"].as_str().unwrap()).collect();
    ips.sort();
    assert_eq!(ips, sorted(&IPS[..3]), "{body}");
    assert!(
        hosts.iter().all(|h| h["host"] == "nginx.marathon.mesos."),
        "{body}"
    );
    let (_, body) = mesos_dns_http(&topo, "/v1/services/_nginx._tcp.marathon.mesos");
    let services: Vec<Value> = serde_json::from_str(&body).expect("services JSON");
    assert_eq!(services.len(), 3, "{body}");
    assert!(
        services.iter().all(|s| s["port"] == "80"
            && s["host"].as_str().unwrap().starts_with("nginx-")
            && IPS[..3].contains(&s["ip"].as_str().unwrap())),
        "{body}"
    );
    let (code, body) = mesos_dns_http(&topo, "/v1/hosts/nope.marathon.mesos");
    assert_eq!((code, body.as_str()), (200, r#"[{"host":"","ip":""}]"#));
    let (_, body) = mesos_dns_http(&topo, "/v1/config");
    let config: Value = serde_json::from_str(&body).expect("config JSON");
    assert_eq!(
        (config["Domain"].as_str(), config["TTL"].as_u64()),
        (Some("mesos"), Some(5))
    );
    // The same interface on the metrics listener, with every task and its records.
    let enumerated = lb::agent_http(&topo, 9191, "/v1/enumerate")
        .expect("/v1/enumerate on the metrics listener");
    let enumerated: Value = serde_json::from_slice(&enumerated).expect("enumerate JSON");
    let tasks = enumerated["frameworks"][0]["tasks"]
        .as_array()
        .expect("tasks");
    let nginx: Vec<&Value> = tasks.iter().filter(|t| t["name"] == "nginx").collect();
    assert_eq!(nginx.len(), 3, "{enumerated}");
    assert_eq!(tasks.len(), 3 + 1 + 60, "nginx, prod/api and big's tasks");
    assert!(
        nginx.iter().all(|t| t["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| { r["name"] == "nginx.marathon.mesos." && r["rtype"] == "A" })),
        "{enumerated}"
    );

    // Unknown names: NXDOMAIN with the SOA; known names of another type: no data, SOA.
    let d = dig(&topo, "nope.marathon.mesos");
    assert_eq!(d.status, "NXDOMAIN", "{}", d.raw);
    assert_eq!(d.authority.first().map(|a| a.0.as_str()), Some("SOA"));
    let d = dig(&topo, "nginx.marathon.mesos AAAA");
    assert_eq!((d.status.as_str(), d.answers.len()), ("NOERROR", 0));
    assert_eq!(d.authority.first().map(|a| a.0.as_str()), Some("SOA"));
    assert_eq!(dig(&topo, "example.com").status, "REFUSED");

    // A scale-up is in the answers within a second of Marathon's event.
    m.standin
        .set_app("/nginx", Some(apps(4)["apps"][0].clone()));
    let took = wait_for(
        "the scale-up in DNS answers",
        Duration::from_secs(1),
        || dig(&topo, "nginx.marathon.mesos").a() == sorted(&IPS),
    );
    eprintln!("scale-up to DNS answer: {took:?}");

    // 60 addresses do not fit 512 bytes: TC over UDP, the whole set over TCP.
    let d = dig(&topo, "+noedns +ignore big.marathon.mesos");
    assert!(d.flags.contains(&"tc".to_owned()), "{}", d.raw);
    assert!(d.answers.len() < 60);
    let d = dig(&topo, "+noedns big.marathon.mesos");
    assert_eq!(d.a().len(), 60, "dig retried over TCP: {}", d.raw);
    let d = dig(&topo, "_big._tcp.marathon.mesos SRV");
    assert_eq!(d.answers.len(), 60, "{}", d.raw);
    assert_eq!(d.additional.iter().filter(|(t, _)| t == "A").count(), 60);
    // EDNS0's size is honoured: a 4096-byte buffer (capped at 1232) holds more than 512.
    let d = dig(&topo, "+bufsize=4096 +ignore big.marathon.mesos");
    assert!(
        !d.flags.contains(&"tc".to_owned()) && d.answers.len() == 60,
        "{}",
        d.raw
    );

    // Marathon failing after that: the last good state keeps answering.
    m.standin.set_mode(Mode::Fail(503));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(dig(&topo, "nginx.marathon.mesos").a(), sorted(&IPS));

    // `lb dns` asks the daemon as dig does; `lb status` and /metrics count the queries.
    let out = lb::lb(
        &topo,
        &[
            "dns",
            "nginx.marathon.mesos",
            "--pin-path",
            topo.pin_path().to_str().unwrap(),
        ],
    );
    assert!(out.starts_with(";; NOERROR"), "{out}");
    for ip in IPS {
        assert!(out.contains(ip), "{out}");
    }
    let out = lb::lb(
        &topo,
        &[
            "dns",
            "_nginx._tcp.marathon.mesos",
            "--type",
            "srv",
            "--pin-path",
            topo.pin_path().to_str().unwrap(),
        ],
    );
    assert_eq!(out.matches("\tSRV\t").count(), 4, "{out}");
    wait_for("lb status shows DNS", Duration::from_secs(5), || {
        lb::status(&topo).is_some_and(|st| {
            st["dns"]["queries"]["userspace A NXDOMAIN"].as_u64() >= Some(1)
                && st["dns"]["ready"] == true
        })
    });
    let st = lb::status(&topo).unwrap();
    assert!(st["dns"]["names"].as_u64().unwrap() > 60, "{}", st["dns"]);
    let human = lb::lb(
        &topo,
        &["status", "--pin-path", topo.pin_path().to_str().unwrap()],
    );
    assert!(
        human.contains("dns: on 0.0.0.0:53 for mesos, zone "),
        "{human}"
    );
    let metrics = lb::agent_http(&topo, 9191, "/metrics").expect("metrics");
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains(r#"lb_dns_queries_total{path="userspace",type="SRV",rcode="NOERROR"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"lb_dns_queries_total{path="userspace",type="A",rcode="SERVFAIL"}"#),
        "{metrics}"
    );
    drop(log);
}

/// The XDP fast path through the uplink: A queries for names it holds are answered by the XDP
/// program on the agent's eth0 (counted as `xdp`, never reaching the server), the rest by the
/// server as before, and a scale-up reaches the XDP answers too.
#[test]
fn the_fast_path_answers_from_xdp_through_the_uplink() {
    let mut topo = Topology::new("lbd3");
    // The client's end stands for a NIC: see `attach_xdp_pass`.
    lb_tests::netns::attach_xdp_pass(&topo.ns("client"), "eth0");
    let m = NsStandin::start(&topo.ns("agent"));
    m.standin.set_apps(apps(3));
    let url = m.standin.url();
    let log = lb::start(
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
            "eth0",
            "--marathon",
            &url,
            "--dns-listen",
            "0.0.0.0:53",
            "--dns-fast-path",
        ],
        0,
    );
    wait_for("the first sync reaches DNS", Duration::from_secs(5), || {
        dig(&topo, "nginx.marathon.mesos").status == "NOERROR"
    });
    let fast = |topo: &Topology| {
        lb::status(topo).map_or(0, |st| {
            st["dns"]["queries"]["xdp A NOERROR"].as_u64().unwrap_or(0)
        })
    };
    // Those first queries may have been answered by either; count from a settled figure.
    std::thread::sleep(Duration::from_millis(2500));
    let before = fast(&topo);
    let firsts: std::collections::BTreeSet<String> = (0..10)
        .map(|_| {
            let d = dig(&topo, "nginx.marathon.mesos");
            assert_eq!(d.a(), sorted(&IPS[..3]), "{}", d.raw);
            assert!(d.flags.contains(&"aa".to_owned()), "{}", d.raw);
            d.answers[0].1.clone()
        })
        .collect();
    assert!(firsts.len() > 1, "answers rotate: {firsts:?}");
    // Upper case and no EDNS: the same answer.
    let d = dig(&topo, "+noedns NGINX.Marathon.MESOS");
    assert_eq!(d.a(), sorted(&IPS[..3]), "{}", d.raw);
    wait_for("the XDP answers counted", Duration::from_secs(5), || {
        fast(&topo) >= before + 11
    });
    // Others go to the server: SRV, and a name with more addresses than the map holds.
    let d = dig(&topo, "_nginx._tcp.marathon.mesos SRV");
    assert_eq!(d.answers.len(), 3, "{}", d.raw);
    let d = dig(&topo, "+bufsize=4096 big.marathon.mesos");
    assert_eq!(d.a().len(), 60, "{}", d.raw);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        fast(&topo),
        before + 11,
        "only the eleven A queries went through XDP"
    );
    // A scale-up reaches the fast path's map too.
    m.standin
        .set_app("/nginx", Some(apps(4)["apps"][0].clone()));
    wait_for(
        "the scale-up in XDP answers",
        Duration::from_secs(1),
        || dig(&topo, "nginx.marathon.mesos").a() == sorted(&IPS),
    );
    lb::assert_no_drops(&topo, &[]);
    drop(log);
}
