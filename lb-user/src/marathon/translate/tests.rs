//! Unit tests of the translation's private rules; the fixture-driven tests are in `tests/`.
use serde_json::json;

use std::net::{Ipv4Addr, SocketAddrV4};

use super::{
    ports::{Mode, networking_mode, port_slots, protocols},
    units::timestamp,
    *,
};
use crate::{
    marathon::api::App,
    services::{Balance, Protocol},
};

fn app(v: serde_json::Value) -> App {
    crate::marathon::api::parse_app(&serde_json::to_vec(&v).expect("JSON"))
        .unwrap_or_else(|e| panic!("test app does not parse: {e}"))
}

fn no_dns(host: &str) -> Option<Ipv4Addr> {
    panic!("unexpected resolve({host})")
}

fn run(apps: &[App], opts: &TranslateOptions) -> Translation {
    translate(apps, opts, &mut no_dns)
}

/// A host-networked app on service port `port` with one running task on 10.9.0.1:31000.
fn host_app(id: &str, port: i64, labels: serde_json::Value) -> serde_json::Value {
    json!({
        "id": id,
        "portDefinitions": [{ "port": port }],
        "labels": labels,
        "tasks": [{ "id": format!("{id}.1"), "host": "10.9.0.1", "ports": [31000], "state": "TASK_RUNNING" }],
    })
}

#[test]
fn ip_source_parses_and_prints() {
    assert_eq!("netinfo".parse::<IpSource>(), Ok(IpSource::Netinfo));
    assert_eq!(" Host ".parse::<IpSource>(), Ok(IpSource::Host));
    assert_eq!(
        "mesos".parse::<IpSource>(),
        Err(UnknownIpSource("mesos".into()))
    );
    assert_eq!(IpSource::Netinfo.to_string(), "netinfo");
    assert_eq!(IpSource::Host.to_string(), "host");
    let d = TranslateOptions::default();
    assert_eq!(d.groups, ["external"]);
    assert_eq!(d.ip_sources, [IpSource::Netinfo, IpSource::Host]);
    assert!(!d.health_check && !d.strict_mode);
}

#[test]
fn networking_mode_follows_marathon_lb_precedence() {
    let mode = |v: serde_json::Value| networking_mode(&app(v));
    assert_eq!(mode(json!({ "id": "/a" })), Ok(Mode::Host));
    assert_eq!(
        mode(json!({ "id": "/a", "ipAddress": null })),
        Ok(Mode::Host)
    );
    assert_eq!(
        mode(json!({ "id": "/a", "ipAddress": {} })),
        Ok(Mode::Container)
    );
    // A docker network other than USER/BRIDGE leaves `ipAddress`'s verdict alone.
    assert_eq!(
        mode(
            json!({ "id": "/a", "ipAddress": {}, "container": { "docker": { "network": "HOST" } } })
        ),
        Ok(Mode::Container)
    );
    assert_eq!(
        mode(
            json!({ "id": "/a", "ipAddress": {}, "container": { "docker": { "network": "BRIDGE" } } })
        ),
        Ok(Mode::Bridge)
    );
    assert_eq!(
        mode(json!({ "id": "/a", "container": { "docker": { "network": "USER" } } })),
        Ok(Mode::Container)
    );
    // networks come last, and the last network decides.
    assert_eq!(
        mode(
            json!({ "id": "/a", "container": { "docker": { "network": "USER" } },
                     "networks": [{ "mode": "container/bridge" }] })
        ),
        Ok(Mode::Bridge)
    );
    assert_eq!(
        mode(json!({ "id": "/a", "networks": [{ "mode": "host" }, { "name": "calico" }] })),
        Ok(Mode::Container)
    );
    assert!(mode(json!({ "id": "/a", "networks": [{ "mode": "ipvlan" }] })).is_err());
}

#[test]
fn port_mappings_prefer_docker_then_container() {
    let a = app(json!({
        "id": "/a",
        "networks": [{ "mode": "container/bridge" }],
        "container": {
            "docker": { "portMappings": [{ "containerPort": 1, "servicePort": 10001 }] },
            "portMappings": [{ "containerPort": 2, "servicePort": 10002 }],
        },
        "portDefinitions": [{ "port": 10003 }],
    }));
    let slots = port_slots(&a, Mode::Bridge);
    assert_eq!(
        slots.iter().map(|s| s.service_port).collect::<Vec<_>>(),
        [Some(10001)]
    );
    // Mappings without any service port give way to portDefinitions, then `ports`.
    let a = app(json!({
        "id": "/a",
        "container": { "portMappings": [{ "containerPort": 2 }] },
        "ports": [10004, 10005],
    }));
    let slots = port_slots(&a, Mode::Bridge);
    assert_eq!(
        slots.iter().map(|s| s.service_port).collect::<Vec<_>>(),
        [Some(10004), Some(10005)]
    );
    // Host networking never reads port mappings.
    let a = app(json!({
        "id": "/a",
        "container": { "portMappings": [{ "containerPort": 2, "servicePort": 10002 }] },
    }));
    assert!(port_slots(&a, Mode::Host).is_empty());
}

#[test]
fn protocols_accept_marathons_spellings() {
    assert_eq!(protocols(None), Ok(vec![Protocol::Tcp]));
    assert_eq!(protocols(Some("")), Ok(vec![Protocol::Tcp]));
    assert_eq!(protocols(Some("UDP")), Ok(vec![Protocol::Udp]));
    assert_eq!(
        protocols(Some("udp,tcp")),
        Ok(vec![Protocol::Tcp, Protocol::Udp])
    );
    assert_eq!(
        protocols(Some("tcp, udp")),
        Ok(vec![Protocol::Tcp, Protocol::Udp])
    );
    assert_eq!(protocols(Some("tcp,tcp")), Ok(vec![Protocol::Tcp]));
    assert!(protocols(Some("sctp")).is_err());
    assert!(protocols(Some("tcp,")).is_err());
}

#[test]
fn timestamps_compare_in_time_order() {
    let t = |s: &str| timestamp(s).unwrap_or_else(|| panic!("{s} does not parse"));
    assert!(t("2016-02-01T14:13:42.499089") < t("2016-02-01T14:57:54.371005"));
    assert!(t("2016-02-01T14:13:42.5") > t("2016-02-01T14:13:42.499089"));
    assert!(t("2016-02-01T14:13:42") < t("2016-02-01T14:13:42.000001"));
    assert!(t("2017-07-14T15:13:34.402Z") < t("2017-07-14T15:13:35Z"));
    assert!(t("2021-01-02") < t("2021-01-02T00:00:01"));
    assert_eq!(t("2021-01-02T03:04:05+02:00"), t("2021-01-02T03:04:05"));
    assert_eq!(timestamp("yesterday"), None);
    assert_eq!(timestamp("2021-13"), None);
    // Unreadable counts as earliest, as marathon-lb's missing date.
    assert!(timestamp("garbage") < Some(t("0001-01-01")));
}

#[test]
fn labels_decide_enabled_bind_and_balance() {
    let apps = [
        app(host_app(
            "/bind-star",
            10001,
            json!({ "HAPROXY_GROUP": "external", "HAPROXY_0_BIND_ADDR": "*" }),
        )),
        app(host_app(
            "/bind-any",
            10002,
            json!({ "HAPROXY_GROUP": "external", "HAPROXY_0_BIND_ADDR": "0.0.0.0" }),
        )),
        app(host_app(
            "/bind-v6",
            10003,
            json!({ "HAPROXY_GROUP": "external", "HAPROXY_0_BIND_ADDR": "::1" }),
        )),
        app(host_app(
            "/balance",
            10004,
            json!({ "HAPROXY_GROUP": "external", "HAPROXY_0_BALANCE": " Source " }),
        )),
        app(host_app(
            "/enabled-1",
            10005,
            json!({ "HAPROXY_GROUP": "external", "HAPROXY_0_ENABLED": "1" }),
        )),
        app(host_app(
            "/enabled-t",
            10006,
            json!({ "HAPROXY_GROUP": "external", "HAPROXY_0_ENABLED": "T" }),
        )),
        app(host_app(
            "/port-ws",
            10007,
            json!({ "HAPROXY_GROUP": "external", "HAPROXY_0_PORT": " 8080 " }),
        )),
        app(host_app(
            "/leastconn",
            10008,
            json!({ "HAPROXY_GROUP": "external", "HAPROXY_0_BALANCE": "leastconn" }),
        )),
        app(host_app(
            "/static-rr",
            10009,
            json!({ "HAPROXY_GROUP": "external", "HAPROXY_0_BALANCE": "static-rr" }),
        )),
    ];
    let t = run(&apps, &TranslateOptions::default());
    let by_app = |id: &str| {
        t.desired
            .services
            .iter()
            .find(|s| s.app_id.as_deref() == Some(id))
    };
    assert_eq!(by_app("/bind-star").map(|s| s.listener.bind), Some(None));
    assert_eq!(by_app("/bind-any").map(|s| s.listener.bind), Some(None));
    assert!(by_app("/bind-v6").is_none());
    assert_eq!(t.skipped.len(), 1, "{:#?}", t.skipped);
    assert!(
        t.skipped[0]
            .reason
            .contains("\"::1\" is not an IPv4 address"),
        "{}",
        t.skipped[0]
    );
    assert_eq!(by_app("/balance").map(|s| s.balance), Some(Balance::Source));
    // marathon-lb's test_config_simple_app_balance.
    assert_eq!(
        by_app("/leastconn").map(|s| s.balance),
        Some(Balance::LeastConn)
    );
    assert_eq!(
        by_app("/static-rr").map(|s| s.balance),
        Some(Balance::RoundRobin)
    );
    // "1" is not one of marathon-lb's true spellings: the label turns the port off.
    assert!(by_app("/enabled-1").is_none());
    assert!(by_app("/enabled-t").is_some());
    assert_eq!(
        by_app("/port-ws").map(|s| (s.listener.port, s.name.as_str())),
        Some((8080, "port-ws_8080"))
    );
    assert!(t.unsupported.is_empty(), "{:#?}", t.unsupported);
}

#[test]
fn group_names_are_not_trimmed() {
    // marathon-lb splits on ',' only: " internal" is not "internal". Matching more loosely
    // would expose ports marathon-lb kept private.
    let apps = [app(host_app(
        "/a",
        10001,
        json!({ "HAPROXY_GROUP": "external, internal" }),
    ))];
    assert_eq!(
        run(
            &apps,
            &TranslateOptions {
                groups: vec!["internal".into()],
                ..Default::default()
            }
        )
        .desired
        .services
        .len(),
        0
    );
    assert_eq!(
        run(&apps, &TranslateOptions::default())
            .desired
            .services
            .len(),
        1
    );
}

#[test]
fn deployment_tie_keeps_the_first_by_id_as_new() {
    // Same start time (none): marathon-lb takes the app met first as the new one, and the
    // later one's definition applies. Apps are met in id order here.
    let mk = |id: &str, port: i64, host: &str| {
        app(json!({
            "id": id,
            "instances": 1,
            "portDefinitions": [{ "port": port }],
            "labels": { "HAPROXY_GROUP": "external", "HAPROXY_DEPLOYMENT_GROUP": "dg" },
            "tasks": [{ "id": format!("{id}.1"), "host": host, "ports": [31000], "state": "TASK_RUNNING" }],
        }))
    };
    let apps = [
        mk("/dg-b", 10002, "10.9.0.2"),
        mk("/dg-a", 10001, "10.9.0.1"),
    ];
    let t = run(&apps, &TranslateOptions::default());
    assert_eq!(t.desired.services.len(), 1, "{t:#?}");
    let s = &t.desired.services[0];
    assert_eq!(
        (s.name.as_str(), s.app_id.as_deref()),
        ("dg_10002", Some("/dg-b"))
    );
    // New without health checks counts `instances` (1) as healthy; target 1 lets one old
    // task drain: only the new app's task serves.
    assert_eq!(
        s.backends,
        [SocketAddrV4::new(Ipv4Addr::new(10, 9, 0, 1), 31000)]
    );
}

#[test]
fn deployment_with_health_checks_counts_alive_new_tasks() {
    let mk = |id: &str, started: &str, tasks: serde_json::Value| {
        app(json!({
            "id": id,
            "instances": 2,
            "portDefinitions": [{ "port": 10001 }],
            "healthChecks": [{ "protocol": "TCP" }],
            "labels": { "HAPROXY_GROUP": "external", "HAPROXY_DEPLOYMENT_GROUP": "dg",
                        "HAPROXY_DEPLOYMENT_STARTED_AT": started },
            "tasks": tasks,
        }))
    };
    let old = mk(
        "/dg-old",
        "2020-01-01T00:00:00",
        json!([
            { "id": "old.1", "host": "10.9.1.1", "ports": [31001], "healthCheckResults": [{ "alive": true }] },
            { "id": "old.2", "host": "10.9.1.2", "ports": [31002], "healthCheckResults": [{ "alive": true }] },
        ]),
    );
    // One new task alive, one without results: one old task drains.
    let new = mk(
        "/dg-new",
        "2020-01-02T00:00:00",
        json!([
            { "id": "new.1", "host": "10.9.2.1", "ports": [32001], "healthCheckResults": [{ "alive": true }] },
            { "id": "new.2", "host": "10.9.2.2", "ports": [32002] },
        ]),
    );
    let t = run(&[old, new], &TranslateOptions::default());
    let backends: Vec<String> = t.desired.services[0]
        .backends
        .iter()
        .map(|b| b.to_string())
        .collect();
    assert_eq!(
        backends,
        ["10.9.1.2:31002", "10.9.2.1:32001", "10.9.2.2:32002"]
    );
}

#[test]
fn skipped_reads_as_a_sentence() {
    let s = Skipped {
        app_id: "/a".into(),
        port_index: Some(1),
        task_id: Some("a.1".into()),
        reason: "task port 0 is not a port number".into(),
    };
    assert_eq!(
        s.to_string(),
        "app /a port index 1 task a.1: task port 0 is not a port number"
    );
}

#[test]
fn nested_app_ids_name_backends_like_marathon_lb() {
    let apps = [app(host_app(
        "/prod/web/frontend",
        10001,
        json!({ "HAPROXY_GROUP": "external" }),
    ))];
    let t = run(&apps, &TranslateOptions::default());
    assert_eq!(t.desired.services[0].name, "prod_web_frontend_10001");
}

#[test]
fn a_balance_lb_does_not_have_falls_back_to_round_robin_and_is_reported() {
    let apps = [app(host_app(
        "/by-uri",
        10000,
        json!({ "HAPROXY_GROUP": "external", "HAPROXY_0_BALANCE": "uri" }),
    ))];
    let t = run(&apps, &TranslateOptions::default());
    assert_eq!(t.desired.services[0].balance, Balance::RoundRobin);
    assert_eq!(
        t.unsupported,
        vec![Unsupported {
            app_id: "/by-uri".into(),
            port_index: 0,
            labels: vec!["HAPROXY_0_BALANCE".into()],
        }]
    );
}
