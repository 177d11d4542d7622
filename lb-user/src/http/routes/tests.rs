//! Routing as marathon-lb configures HAProxy: apps translated by the L4 rules, then routed.
use std::{collections::BTreeMap, net::Ipv4Addr};

use serde_json::{Value, json};

use super::*;
use crate::marathon::{
    api::parse_app,
    translate::{TranslateOptions, translate},
};

/// A Calico app `id` on service port `port` with `tasks` running at 192.168.0.<n>:80.
fn app(id: &str, port: u16, tasks: &[u8], labels: Value) -> Value {
    let tasks: Vec<Value> = tasks
        .iter()
        .map(|n| {
            json!({
                "id": format!("{id}.{n}"), "host": "10.0.0.1", "state": "TASK_RUNNING",
                "ipAddresses": [{"ipAddress": format!("192.168.0.{n}"), "protocol": "IPv4"}],
            })
        })
        .collect();
    let mut labels = labels;
    labels["HAPROXY_GROUP"] = json!("external");
    json!({
        "id": id,
        "container": {"type": "DOCKER", "docker": {"image": "nginx"},
                      "portMappings": [{"containerPort": 80, "servicePort": port, "protocol": "tcp"}]},
        "networks": [{"name": "calico", "mode": "container"}],
        "labels": labels,
        "tasks": tasks,
    })
}

fn routes_of(apps: &[Value]) -> Routes {
    let apps: Vec<App> = apps
        .iter()
        .map(|v| parse_app(&serde_json::to_vec(v).unwrap()).expect("test app parses"))
        .collect();
    let t = translate(&apps, &TranslateOptions::default(), &mut |h| {
        panic!("unexpected resolve({h})")
    });
    let by_id: BTreeMap<String, App> = apps.into_iter().map(|a| (a.id.clone(), a)).collect();
    routes(&by_id, &t.desired.services)
}

/// The backend name a request goes to, "redirect" or "503".
fn to(r: &Routes, host: Option<&str>, path: &str, tls: bool) -> String {
    match r.route(host, path, tls) {
        Route::Rule(i) => r.rules[i].backend.clone(),
        Route::RedirectToHttps => "redirect".into(),
        Route::NoRoute => "503".into(),
    }
}

#[test]
fn the_guide_app_routes_its_vhost_to_its_tasks() {
    let r = routes_of(&[app(
        "/nginx",
        10000,
        &[1, 2, 3],
        json!({"HAPROXY_0_VHOST": "mytask.acme.org"}),
    )]);
    assert_eq!(r.rules.len(), 1);
    let rule = &r.rules[0];
    assert_eq!(rule.backend, "nginx_10000");
    assert_eq!(rule.hosts, ["mytask.acme.org"]);
    assert_eq!(
        rule.backends,
        (1..=3)
            .map(|n| SocketAddrV4::new(Ipv4Addr::new(192, 168, 0, n), 80))
            .collect::<Vec<_>>()
    );
    assert!(r.has_vhosts());
    assert_eq!(to(&r, Some("mytask.acme.org"), "/", false), "nginx_10000");
}

#[test]
fn hosts_match_case_insensitively_and_ignore_the_port() {
    let r = routes_of(&[app(
        "/web",
        10000,
        &[1],
        json!({"HAPROXY_0_VHOST": "Web.Example.COM"}),
    )]);
    for host in [
        "web.example.com",
        "WEB.EXAMPLE.COM",
        "web.example.com:80",
        "Web.Example.Com:8080",
        " web.example.com ",
    ] {
        assert_eq!(to(&r, Some(host), "/", false), "web_10000", "{host:?}");
    }
    for host in ["example.com", "web.example.com.evil", "eb.example.com", ""] {
        assert_eq!(to(&r, Some(host), "/", false), "503", "{host:?}");
    }
    assert_eq!(to(&r, None, "/", false), "503", "no Host at all");
}

#[test]
fn host_names_lose_their_port_only() {
    assert_eq!(host_name("a.b:80"), "a.b");
    assert_eq!(host_name("a.b"), "a.b");
    assert_eq!(host_name("[::1]:443"), "[::1]");
    assert_eq!(host_name("[::1]"), "[::1]");
    assert_eq!(host_name("a.b:x"), "a.b:x");
}

#[test]
fn comma_lists_name_several_hosts_for_one_backend() {
    let r = routes_of(&[
        app(
            "/a",
            10000,
            &[1],
            json!({"HAPROXY_0_VHOST": "a.example.com, www.a.example.com,A2.example.com"}),
        ),
        app(
            "/b",
            10001,
            &[2],
            json!({"HAPROXY_0_VHOST": "b.example.com"}),
        ),
    ]);
    assert_eq!(
        r.rules[0].hosts,
        ["a.example.com", "www.a.example.com", "a2.example.com"]
    );
    for host in ["a.example.com", "www.a.example.com", "a2.example.com:80"] {
        assert_eq!(to(&r, Some(host), "/", false), "a_10000", "{host}");
    }
    assert_eq!(to(&r, Some("b.example.com"), "/x", false), "b_10001");
    assert_eq!(to(&r, Some("c.example.com"), "/", false), "503");
}

#[test]
fn paths_narrow_a_vhost_and_path_rules_come_first() {
    // /api is listed after /site by id, but a path weighs 1: it is tried first.
    let r = routes_of(&[
        app("/site", 10000, &[1], json!({"HAPROXY_0_VHOST": "x.org"})),
        app(
            "/x-api",
            10001,
            &[2],
            json!({"HAPROXY_0_VHOST": "x.org", "HAPROXY_0_PATH": "/api /v2/api"}),
        ),
    ]);
    assert_eq!(
        r.rules
            .iter()
            .map(|r| r.backend.as_str())
            .collect::<Vec<_>>(),
        ["x-api_10001", "site_10000"]
    );
    assert_eq!(r.rules[0].weight, 1);
    assert_eq!(to(&r, Some("x.org"), "/api", false), "x-api_10001");
    assert_eq!(to(&r, Some("x.org"), "/api/users", false), "x-api_10001");
    assert_eq!(to(&r, Some("x.org"), "/v2/api/x", false), "x-api_10001");
    // path_beg is a plain prefix, and case-sensitive without -i.
    assert_eq!(to(&r, Some("x.org"), "/apix", false), "x-api_10001");
    assert_eq!(to(&r, Some("x.org"), "/API", false), "site_10000");
    assert_eq!(to(&r, Some("x.org"), "/", false), "site_10000");
    assert_eq!(to(&r, Some("x.org"), "/v2", false), "site_10000");
    // A path alone does not route: the host must match too.
    assert_eq!(to(&r, Some("y.org"), "/api", false), "503");
}

#[test]
fn a_path_only_vhost_leaves_other_paths_unrouted() {
    let r = routes_of(&[app(
        "/api",
        10000,
        &[1],
        json!({"HAPROXY_0_VHOST": "x.org", "HAPROXY_0_PATH": "-i /Api"}),
    )]);
    assert_eq!(
        r.rules[0].paths,
        Some(Paths {
            prefixes: vec!["/Api".into()],
            ignore_case: true
        })
    );
    assert_eq!(to(&r, Some("x.org"), "/api/1", false), "api_10000");
    assert_eq!(to(&r, Some("x.org"), "/APIS", false), "api_10000");
    assert_eq!(to(&r, Some("x.org"), "/other", false), "503");
}

#[test]
fn backend_weight_orders_rules_before_paths() {
    let r = routes_of(&[
        app(
            "/a",
            10000,
            &[1],
            json!({"HAPROXY_0_VHOST": "x.org", "HAPROXY_0_PATH": "/"}),
        ),
        app(
            "/b",
            10001,
            &[2],
            json!({"HAPROXY_0_VHOST": "x.org", "HAPROXY_0_BACKEND_WEIGHT": "5"}),
        ),
        app(
            "/c",
            10002,
            &[3],
            json!({"HAPROXY_0_VHOST": "x.org", "HAPROXY_0_BACKEND_WEIGHT": "-1"}),
        ),
        app(
            "/d",
            10003,
            &[4],
            json!({"HAPROXY_0_VHOST": "x.org", "HAPROXY_0_BACKEND_WEIGHT": "lots"}),
        ),
    ]);
    assert_eq!(
        r.rules
            .iter()
            .map(|r| (r.backend.as_str(), r.weight))
            .collect::<Vec<_>>(),
        [
            ("b_10001", 5),
            ("a_10000", 1),
            ("d_10003", 0),
            ("c_10002", -1)
        ]
    );
    assert_eq!(to(&r, Some("x.org"), "/anything", false), "b_10001");
}

#[test]
fn equal_weights_keep_app_id_then_service_port_order() {
    let r = routes_of(&[
        app("/z", 10000, &[1], json!({"HAPROXY_0_VHOST": "x.org"})),
        app("/m", 10002, &[2], json!({"HAPROXY_0_VHOST": "x.org"})),
        app("/m2", 10001, &[3], json!({"HAPROXY_0_VHOST": "x.org"})),
    ]);
    assert_eq!(
        r.rules
            .iter()
            .map(|r| r.backend.as_str())
            .collect::<Vec<_>>(),
        ["m_10002", "m2_10001", "z_10000"]
    );
    assert_eq!(to(&r, Some("x.org"), "/", false), "m_10002");
}

#[test]
fn an_app_without_backends_gives_way_to_the_next_match() {
    let r = routes_of(&[
        app("/a", 10000, &[], json!({"HAPROXY_0_VHOST": "x.org"})),
        app("/b", 10001, &[2], json!({"HAPROXY_0_VHOST": "x.org"})),
        app("/c", 10002, &[], json!({"HAPROXY_0_VHOST": "only.org"})),
    ]);
    assert_eq!(r.rules.len(), 3, "every vhost is known");
    assert!(r.has_vhosts());
    assert_eq!(to(&r, Some("x.org"), "/", false), "b_10001");
    assert_eq!(to(&r, Some("only.org"), "/", false), "503");
}

#[test]
fn redirects_apply_to_plain_http_before_any_backend() {
    let r = routes_of(&[
        // Weighs more, but HAProxy's redirect rules run before use_backend.
        app(
            "/a",
            10000,
            &[1],
            json!({"HAPROXY_0_VHOST": "x.org", "HAPROXY_0_BACKEND_WEIGHT": "9"}),
        ),
        app(
            "/b",
            10001,
            &[2],
            json!({"HAPROXY_0_VHOST": "x.org,secure.org", "HAPROXY_0_PATH": "/login",
                   "HAPROXY_0_REDIRECT_TO_HTTPS": "true"}),
        ),
        app(
            "/c",
            10002,
            &[3],
            json!({"HAPROXY_0_VHOST": "all.org", "HAPROXY_0_REDIRECT_TO_HTTPS": "Yes"}),
        ),
        app(
            "/d",
            10003,
            &[4],
            json!({"HAPROXY_0_VHOST": "plain.org", "HAPROXY_0_REDIRECT_TO_HTTPS": "false"}),
        ),
    ]);
    assert_eq!(to(&r, Some("x.org"), "/login/x", false), "redirect");
    assert_eq!(to(&r, Some("secure.org:80"), "/login", false), "redirect");
    assert_eq!(to(&r, Some("x.org"), "/other", false), "a_10000");
    assert_eq!(to(&r, Some("secure.org"), "/other", false), "503");
    assert_eq!(to(&r, Some("all.org"), "/", false), "redirect");
    assert_eq!(to(&r, Some("plain.org"), "/", false), "d_10003");
    // Over TLS the same requests reach their backends.
    assert_eq!(to(&r, Some("x.org"), "/login/x", true), "a_10000");
    assert_eq!(to(&r, Some("secure.org"), "/login", true), "b_10001");
    assert_eq!(to(&r, Some("all.org"), "/", true), "c_10002");
}

#[test]
fn only_served_ports_with_a_vhost_route() {
    let mut internal = app(
        "/internal",
        10001,
        &[2],
        json!({"HAPROXY_0_VHOST": "i.org"}),
    );
    internal["labels"]["HAPROXY_GROUP"] = json!("internal");
    let disabled = app(
        "/off",
        10002,
        &[3],
        json!({"HAPROXY_0_VHOST": "off.org", "HAPROXY_0_ENABLED": "false"}),
    );
    let plain = app("/tcp", 10003, &[4], json!({}));
    let empty = app("/empty", 10004, &[5], json!({"HAPROXY_0_VHOST": " , "}));
    let r = routes_of(&[internal, disabled, plain, empty]);
    assert_eq!(r, Routes::default());
    assert!(!r.has_vhosts());
    assert_eq!(to(&r, Some("i.org"), "/", false), "503");
}

#[test]
fn backends_are_the_l4_services_own() {
    // Health checks, states and draining are the translation's business: a killed task and an
    // unhealthy one (with --health-check) are gone from the route as from the service.
    let mut a = app("/a", 10000, &[1, 2, 3], json!({"HAPROXY_0_VHOST": "x.org"}));
    a["healthChecks"] = json!([{"protocol": "HTTP"}]);
    a["tasks"][1]["state"] = json!("TASK_KILLING");
    a["tasks"][0]["healthCheckResults"] = json!([{"alive": true}]);
    a["tasks"][2]["healthCheckResults"] = json!([{"alive": false}]);
    let apps = [parse_app(&serde_json::to_vec(&a).unwrap()).unwrap()];
    let opts = TranslateOptions {
        health_check: true,
        ..TranslateOptions::default()
    };
    let t = translate(&apps, &opts, &mut |_| None);
    let by_id: BTreeMap<String, App> = apps.into_iter().map(|a| (a.id.clone(), a)).collect();
    let r = routes(&by_id, &t.desired.services);
    assert_eq!(r.rules[0].backends, t.desired.services[0].backends);
    assert_eq!(
        r.rules[0].backends,
        [SocketAddrV4::new(Ipv4Addr::new(192, 168, 0, 1), 80)]
    );
}

#[test]
fn ssl_certs_are_collected_once() {
    let r = routes_of(&[
        app(
            "/a",
            10000,
            &[1],
            json!({"HAPROXY_0_VHOST": "a.org", "HAPROXY_0_SSL_CERT": "/etc/ssl/a.pem"}),
        ),
        app(
            "/b",
            10001,
            &[2],
            json!({"HAPROXY_0_VHOST": "b.org", "HAPROXY_0_SSL_CERT": "/etc/ssl/a.pem"}),
        ),
        app(
            "/c",
            10002,
            &[3],
            json!({"HAPROXY_0_SSL_CERT": "/etc/ssl/c.pem"}),
        ),
    ]);
    assert_eq!(
        r.certs,
        ["/etc/ssl/a.pem"],
        "only vhost ports serve on :443"
    );
}

#[test]
fn a_udp_tcp_port_routes_once() {
    let mut a = app("/a", 10000, &[1], json!({"HAPROXY_0_VHOST": "x.org"}));
    a["container"]["portMappings"][0]["protocol"] = json!("udp,tcp");
    let r = routes_of(&[a]);
    assert_eq!(r.rules.len(), 1);
}
