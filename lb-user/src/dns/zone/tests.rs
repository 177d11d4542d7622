use std::net::Ipv4Addr;

use serde_json::json;

use super::*;
use crate::marathon::{api::parse_apps, translate::IpSource};

fn zone_of(apps: serde_json::Value, opts: &TranslateOptions) -> Zone {
    let parsed = parse_apps(apps.to_string().as_bytes()).expect("apps parse");
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    let mut resolve = |host: &str| match host {
        "agent-a.example" => Some(Ipv4Addr::new(1, 2, 3, 11)),
        _ => None,
    };
    Zone::build(&parsed.apps, opts, &ZoneOptions::default(), &mut resolve)
}

fn a(z: &Zone, name: &str) -> Vec<String> {
    z.names
        .get(name)
        .map(|r| r.a.iter().map(ToString::to_string).collect())
        .unwrap_or_default()
}

fn srv(z: &Zone, name: &str) -> Vec<String> {
    z.names
        .get(name)
        .map(|r| {
            r.srv
                .iter()
                .map(|s| format!("{}:{}", s.target, s.port))
                .collect()
        })
        .unwrap_or_default()
}

fn calico_task(id: &str, ip: &str, agent: &str, state: &str) -> serde_json::Value {
    json!({"id": id, "host": "10.0.0.1", "state": state, "slaveId": agent, "ports": [],
           "ipAddresses": [{"ipAddress": ip, "protocol": "IPv4"}]})
}

/// The guide's nginx scaled to 3 on Calico, in a group lb does not balance, plus a fourth task
/// still staging: every running task gets its names, the group does not matter.
fn nginx() -> serde_json::Value {
    json!({"apps": [{
        "id": "/nginx", "instances": 4,
        "container": {"type": "DOCKER", "docker": {"image": "nginx"},
                      "portMappings": [{"containerPort": 80, "servicePort": 10000, "protocol": "tcp", "name": "http"},
                                       {"containerPort": 53, "protocol": "udp,tcp"}]},
        "networks": [{"name": "calico", "mode": "container"}],
        "labels": {"HAPROXY_GROUP": "internal"},
        "tasks": [
            calico_task("nginx.1", "192.168.84.196", "agent-S1", "TASK_RUNNING"),
            calico_task("nginx.2", "192.168.57.66", "agent-S2", "TASK_RUNNING"),
            calico_task("nginx.3", "192.168.12.5", "agent-S1", "TASK_LOST"),
            calico_task("nginx.4", "192.168.99.9", "agent-S1", "TASK_STAGING"),
        ]
    }]})
}

#[test]
fn calico_tasks_answer_with_their_own_addresses_whatever_the_group() {
    let z = zone_of(nginx(), &TranslateOptions::default());
    assert_eq!(
        a(&z, "nginx.marathon.mesos"),
        vec!["192.168.12.5", "192.168.57.66", "192.168.84.196"],
        "running and lost tasks, not staging ones"
    );
    assert_eq!(a(&z, "nginx.marathon.slave.mesos"), vec!["10.0.0.1"]);
    assert_eq!(
        a(&z, "nginx.marathon.containerip.dcos.thisdcos.directory"),
        a(&z, "nginx.marathon.mesos")
    );
    assert_eq!(
        a(&z, "nginx.marathon.autoip.dcos.thisdcos.directory"),
        a(&z, "nginx.marathon.mesos"),
        "no host ports mapped: autoip is the container IP"
    );
    assert_eq!(
        a(&z, "nginx.marathon.agentip.dcos.thisdcos.directory"),
        vec!["10.0.0.1"]
    );
    let c1 = format!(
        "nginx-{}-s1.marathon.mesos",
        super::super::names::task_hash("nginx.1")
    );
    assert_eq!(a(&z, &c1), vec!["192.168.84.196"]);
    let slave_c1 = c1.replace(".marathon.mesos", ".marathon.slave.mesos");
    assert_eq!(a(&z, &slave_c1), vec!["10.0.0.1"]);
    // Container ports, per protocol; the second port serves both.
    let tcp = srv(&z, "_nginx._tcp.marathon.mesos");
    assert_eq!(tcp.len(), 6, "3 tasks × 2 tcp ports: {tcp:?}");
    assert!(tcp.contains(&format!("{c1}:80")) && tcp.contains(&format!("{c1}:53")));
    assert_eq!(srv(&z, "_nginx._udp.marathon.mesos"), {
        let mut v: Vec<String> = ["nginx.1", "nginx.2", "nginx.3"]
            .iter()
            .zip(["s1", "s2", "s1"])
            .map(|(id, s)| {
                format!(
                    "nginx-{}-{s}.marathon.mesos:53",
                    super::super::names::task_hash(id)
                )
            })
            .collect();
        v.sort();
        v
    });
    // Mesos-DNS's named-port records: the first port mapping is named "http", the second
    // has no name (and no record of its own).
    let named = srv(&z, "_http._nginx._tcp.marathon.mesos");
    assert_eq!(named.len(), 3, "{named:?}");
    assert!(named.contains(&format!("{c1}:80")) && named.iter().all(|t| t.ends_with(":80")));
    assert!(srv(&z, "_http._nginx._udp.marathon.mesos").is_empty());
    assert!(
        !z.names.keys().any(|n| n.starts_with("__")),
        "no record for an unnamed port"
    );
    // No host ports: no `.slave.` SRV.
    assert!(srv(&z, "_nginx._tcp.marathon.slave.mesos").is_empty());
    // Every SRV target has its A record.
    for r in z.names.values() {
        for s in &r.srv {
            assert!(z.names.contains_key(&s.target), "{} has no A", s.target);
        }
    }
}

#[test]
fn health_checks_and_ip_sources_follow_the_backend_rules() {
    let mut apps = nginx();
    apps["apps"][0]["healthChecks"] = json!([{"protocol": "MESOS_HTTP", "portIndex": 0}]);
    apps["apps"][0]["tasks"][0]["healthCheckResults"] = json!([{"alive": true}]);
    apps["apps"][0]["tasks"][1]["healthCheckResults"] = json!([{"alive": false}]);
    let opts = TranslateOptions {
        health_check: true,
        ..TranslateOptions::default()
    };
    let z = zone_of(apps.clone(), &opts);
    assert_eq!(a(&z, "nginx.marathon.mesos"), vec!["192.168.84.196"]);
    // Without --health-check every running task.
    assert_eq!(
        a(
            &zone_of(apps, &TranslateOptions::default()),
            "nginx.marathon.mesos"
        )
        .len(),
        3
    );
    // `--ip-source host`: the agent's address, as Mesos-DNS's IPSources ["host"]; the tasks
    // have no host ports, so no SRV.
    let host_only = TranslateOptions {
        ip_sources: vec![IpSource::Host],
        ..TranslateOptions::default()
    };
    let mut with_ports = nginx();
    for t in apps_tasks(&mut with_ports) {
        t["ports"] = json!([31000, 31001]);
    }
    let z = zone_of(with_ports, &host_only);
    assert_eq!(a(&z, "nginx.marathon.mesos"), vec!["10.0.0.1"]);
    assert_eq!(
        a(&z, "nginx.marathon.containerip.dcos.thisdcos.directory").len(),
        3,
        "containerip is always the container's address"
    );
    assert!(
        srv(&z, "_nginx._tcp.marathon.mesos")
            .iter()
            .all(|s| s.ends_with(":31000") || s.ends_with(":31001")),
        "host addresses go with host ports"
    );
    assert_eq!(srv(&z, "_nginx._tcp.marathon.slave.mesos").len(), 6);
    assert_eq!(srv(&z, "_nginx._udp.marathon.slave.mesos").len(), 6);
}

fn apps_tasks(apps: &mut serde_json::Value) -> impl Iterator<Item = &mut serde_json::Value> {
    apps["apps"][0]["tasks"].as_array_mut().unwrap().iter_mut()
}

/// Mesos-DNS's own example state (factories/fake.json): `liquor-store`'s two tasks on agents
/// `…-0` and `…-1`, and `car-store` on host ports in bridge mode.
#[test]
fn mesos_dns_examples() {
    let z = zone_of(
        json!({"apps": [
            {"id": "/liquor-store", "ipAddress": {"discovery": {"ports": [
                {"number": 80, "name": "http", "protocol": "tcp"},
                {"number": 443, "name": "https", "protocol": "tcp"}]}},
             "tasks": [
                {"id": "liquor-store.b8db9f73-562f-11e4-a088-c20493233aa5", "host": "1.2.3.11",
                 "slaveId": "20140803-125133-3041283216-5050-2410-0", "state": "TASK_RUNNING",
                 "ports": [31354, 31355], "ipAddresses": [{"ipAddress": "10.3.0.1"}]},
                {"id": "liquor-store.b71166c1-562f-11e4-a088-c20493233aa5", "host": "agent-a.example",
                 "slaveId": "20140827-000744-3041283216-5050-2116-1", "state": "TASK_RUNNING",
                 "ports": [31737, 31738], "ipAddresses": [{"ipAddress": "10.3.0.2"}]}]},
            {"id": "/car-store", "container": {"type": "DOCKER", "docker": {"network": "BRIDGE",
                "portMappings": [{"containerPort": 80, "hostPort": 0}, {"containerPort": 81, "hostPort": 0, "protocol": "udp"}]}},
             "tasks": [
                {"id": "car-store.43758382-562f-11e4-a088-c20493233aa5", "host": "1.2.3.11",
                 "slaveId": "20140803-125133-3041283216-5050-2410-0", "state": "TASK_RUNNING",
                 "ports": [31364, 31365], "ipAddresses": [{"ipAddress": "172.17.0.2"}]}]}
        ]}),
        &TranslateOptions::default(),
    );
    assert_eq!(
        a(&z, "liquor-store.marathon.mesos"),
        vec!["10.3.0.1", "10.3.0.2"]
    );
    assert_eq!(
        a(&z, "liquor-store.marathon.slave.mesos"),
        vec!["1.2.3.11"],
        "both agents resolve to 1.2.3.11 here; one record"
    );
    assert_eq!(
        srv(&z, "_liquor-store._tcp.marathon.mesos"),
        vec![
            "liquor-store-4dfjd-0.marathon.mesos:80",
            "liquor-store-4dfjd-0.marathon.mesos:443",
            "liquor-store-zasmd-1.marathon.mesos:80",
            "liquor-store-zasmd-1.marathon.mesos:443",
        ]
    );
    assert!(srv(&z, "_liquor-store._udp.marathon.mesos").is_empty());
    assert_eq!(
        a(&z, "liquor-store-zasmd-1.marathon.mesos"),
        vec!["10.3.0.2"]
    );
    // Bridge mode: the agent's address and the host ports, as Mesos-DNS answers car-store.
    assert_eq!(a(&z, "car-store.marathon.mesos"), vec!["1.2.3.11"]);
    assert_eq!(
        srv(&z, "_car-store._tcp.marathon.slave.mesos"),
        vec![
            "car-store-zinaz-0.marathon.slave.mesos:31364",
            "car-store-zinaz-0.marathon.slave.mesos:31365",
        ]
    );
    assert_eq!(
        srv(&z, "_car-store._udp.marathon.slave.mesos"),
        srv(&z, "_car-store._tcp.marathon.slave.mesos")
    );
    assert_eq!(
        srv(&z, "_car-store._tcp.marathon.mesos"),
        vec!["car-store-zinaz-0.marathon.mesos:31364"]
    );
    assert_eq!(
        srv(&z, "_car-store._udp.marathon.mesos"),
        vec!["car-store-zinaz-0.marathon.mesos:31365"]
    );
    assert_eq!(
        a(&z, "car-store.marathon.autoip.dcos.thisdcos.directory"),
        vec!["1.2.3.11"],
        "host ports mapped: autoip is the agent"
    );
    assert_eq!(
        a(&z, "car-store.marathon.containerip.dcos.thisdcos.directory"),
        vec!["172.17.0.2"]
    );
}

#[test]
fn groups_odd_names_and_missing_agents() {
    let z = zone_of(
        json!({"apps": [
            {"id": "/prod/Web_App", "networks": [{"mode": "container"}],
             "container": {"portMappings": [{"containerPort": 8080}]},
             "tasks": [calico_task("prod_web.1", "192.168.1.1", "x-S0", "TASK_RUNNING")]},
            {"id": "/prod/unplaced", "networks": [{"mode": "container"}],
             "container": {"portMappings": [{"containerPort": 8080}]},
             "tasks": [{"id": "u.1", "host": "", "state": "TASK_RUNNING"}]},
            {"id": "/nowhere", "tasks": [{"id": "n.1", "host": "unknown.example", "state": "TASK_RUNNING",
                                          "ports": [31000], "slaveId": "x-S9"}]},
        ]}),
        &TranslateOptions::default(),
    );
    assert_eq!(a(&z, "web-app-prod.marathon.mesos"), vec!["192.168.1.1"]);
    assert_eq!(a(&z, "web-app.prod.marathon.mesos"), vec!["192.168.1.1"]);
    assert!(!z.names.keys().any(|n| n.contains("unplaced")));
    // An agent that does not resolve: no address, and the reason is kept.
    assert!(!z.names.keys().any(|n| n.starts_with("nowhere")));
    assert!(
        z.skipped.iter().any(|s| s.contains("/nowhere")),
        "{:?}",
        z.skipped
    );
    let existing = existing_names(&z);
    for n in [
        "mesos",
        "marathon.mesos",
        "dcos.thisdcos.directory",
        "prod.marathon.mesos",
    ] {
        assert!(existing.contains(n), "{n}");
    }
    assert!(!existing.contains("nope.marathon.mesos"));
}

#[test]
fn wire_names_for_a_kernel_map() {
    assert_eq!(
        wire("nginx.marathon.mesos"),
        b"\x05nginx\x08marathon\x05mesos\x00"
    );
    let z = zone_of(nginx(), &TranslateOptions::default());
    let (name, addrs) = z
        .a_wire()
        .find(|(n, _)| n.as_slice() == b"\x05nginx\x08marathon\x05mesos\x00")
        .expect("the app's name");
    assert_eq!(name.len(), 22);
    assert_eq!(addrs.len(), 3);
    assert!(z.record_count() > 10);
}

/// `/v1/enumerate`'s view: each serving task with its own records, as Mesos-DNS lists them;
/// together they are every record of the zone.
#[test]
fn every_serving_task_is_enumerated_with_its_records() {
    let z = zone_of(nginx(), &TranslateOptions::default());
    let tasks = &z.tasks["/nginx"];
    let ids: Vec<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(
        ids,
        ["nginx.1", "nginx.2", "nginx.3"],
        "not the staging task"
    );
    let t1 = &tasks[0];
    assert_eq!(t1.name, "nginx");
    let c1 = format!(
        "nginx-{}-s1.marathon.mesos.",
        super::super::names::task_hash("nginx.1")
    );
    let has = |name: &str, host: &str, rtype: &str| {
        t1.records
            .iter()
            .any(|r| r.name == name && r.host == host && r.rtype == rtype)
    };
    assert!(
        has("nginx.marathon.mesos.", "192.168.84.196", "A"),
        "{t1:?}"
    );
    assert!(has(&c1, "192.168.84.196", "A"), "{t1:?}");
    assert!(
        has("_nginx._tcp.marathon.mesos.", &format!("{c1}:80"), "SRV"),
        "{t1:?}"
    );
    assert!(
        has("_nginx._udp.marathon.mesos.", &format!("{c1}:53"), "SRV"),
        "{t1:?}"
    );
    assert!(
        has("nginx.marathon.slave.mesos.", "10.0.0.1", "A"),
        "{t1:?}"
    );
    // Every record of the zone belongs to some task, and no task has one the zone lacks.
    let mut from_tasks: Vec<(String, String)> = tasks
        .iter()
        .flat_map(|t| t.records.iter())
        .map(|r| (r.name.trim_end_matches('.').to_owned(), r.host.clone()))
        .collect();
    from_tasks.sort();
    from_tasks.dedup();
    let mut from_zone: Vec<(String, String)> = z
        .names
        .iter()
        .flat_map(|(n, r)| {
            r.a.iter().map(move |ip| (n.clone(), ip.to_string())).chain(
                r.srv
                    .iter()
                    .map(move |s| (n.clone(), format!("{}.:{}", s.target, s.port))),
            )
        })
        .collect();
    from_zone.sort();
    assert_eq!(from_tasks, from_zone);
}
