//! The per-app catalog gives exactly what a full translation of the same apps gives: on every
//! fixture (built up and torn down app by app) and on random sequences of per-app changes that
//! exercise the cross-app rules (listener clashes, deployment groups, bad tasks).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::PathBuf,
};

use bytes::Bytes;
use lb_user::marathon::{
    api::{App, AppsBody, parse_app},
    catalog::Catalog,
    translate::{PortRange, TranslateOptions, translate},
};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};
use serde_json::{Value, json};

fn resolve(host: &str) -> Option<Ipv4Addr> {
    match host {
        "agent-1.example" => Some(Ipv4Addr::new(10, 0, 0, 11)),
        "agent-2.example" => Some(Ipv4Addr::new(10, 0, 0, 30)),
        _ => None,
    }
}

fn options() -> Vec<TranslateOptions> {
    vec![
        TranslateOptions::default(),
        TranslateOptions {
            groups: vec!["*".into()],
            health_check: true,
            ..TranslateOptions::default()
        },
        TranslateOptions {
            strict_mode: true,
            ..TranslateOptions::default()
        },
    ]
}

/// The catalog's translation against a full one of the catalog's own apps.
fn assert_same(catalog: &Catalog, what: &str) {
    let apps: Vec<App> = catalog.apps().values().cloned().collect();
    let full = translate(&apps, catalog.options(), &mut resolve);
    let kept = catalog.translation();
    assert_eq!(kept.desired, full.desired, "{what}: desired differs");
    assert_eq!(kept, full, "{what}: skipped or unsupported differ");
}

fn fixture_paths() -> Vec<PathBuf> {
    let own = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/marathon");
    let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/marathon");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&own)
        .unwrap_or_else(|e| panic!("listing {}: {e}", own.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    for name in [
        "marathon-lb__tests_marathon15_apps.json",
        "marathon-lb__tests_zdd_apps.json",
        "synthetic/nginx-calico-marathon1.4.json",
        "synthetic/nginx-calico-marathon1.5plus.json",
    ] {
        paths.push(shared.join(name));
    }
    paths.sort();
    paths
}

#[test]
fn fixtures_app_by_app_match_full_translation() {
    let mut checked = 0;
    for path in fixture_paths() {
        let body = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let split =
            AppsBody::split(body.into()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let parsed = split.parsed();
        for opts in options() {
            let what = format!("{} {opts:?}", path.display());
            // A full read.
            let mut full = Catalog::new(opts.clone());
            full.replace(split.apps(), &mut resolve);
            assert_eq!(
                full.translation(),
                translate(&parsed.apps, &opts, &mut resolve),
                "{what}: full read"
            );
            assert_eq!(full.unreadable(), parsed.errors.as_slice());
            // Built up app by app, in listing order and in reverse, then torn down.
            for reverse in [false, true] {
                let mut c = Catalog::new(opts.clone());
                c.replace(std::iter::empty(), &mut resolve);
                let mut order: Vec<&App> = parsed.apps.iter().collect();
                if reverse {
                    order.reverse();
                }
                for app in &order {
                    c.set_app(&app.id, Some((*app).clone()), &mut resolve);
                    assert_same(&c, &format!("{what}: after adding {}", app.id));
                }
                assert_eq!(c.translation(), full.translation(), "{what}: built up");
                for app in &order {
                    c.set_app(&app.id, None, &mut resolve);
                    assert_same(&c, &format!("{what}: after removing {}", app.id));
                }
                assert!(c.translation().desired.services.is_empty(), "{what}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} fixture runs");
}

#[test]
fn a_single_read_clears_the_apps_unreadable_entry() {
    let body = br#"{"apps": [{"id": "/a", "labels": ["not", "a", "map"]}, {"id": 7}]}"#;
    let split = AppsBody::split(Bytes::from_static(body)).expect("the document parses");
    let mut c = Catalog::new(TranslateOptions::default());
    c.replace(split.apps(), &mut resolve);
    assert_eq!(c.unreadable().len(), 2);
    c.set_app("/a", None, &mut resolve);
    assert_eq!(c.unreadable().len(), 1, "{:?}", c.unreadable());
    assert_eq!(c.unreadable()[0].app_id, None);
}

/// One random app among a few ids, with the rules that reach across apps in play: a small set
/// of service ports (clashes), deployment groups with start dates, health, draining, bad tasks.
fn random_app(rng: &mut StdRng, id: &str) -> Value {
    let mut labels = serde_json::Map::new();
    labels.insert(
        "HAPROXY_GROUP".into(),
        json!(
            *["external", "internal", "external,internal"]
                .choose(rng)
                .expect("choice")
        ),
    );
    if rng.random_bool(0.5) {
        labels.insert(
            "HAPROXY_DEPLOYMENT_GROUP".into(),
            json!(*["dg", "/dg", "other", ""].choose(rng).expect("choice")),
        );
        labels.insert(
            "HAPROXY_DEPLOYMENT_STARTED_AT".into(),
            json!(format!("2020-01-0{}T00:00:00", rng.random_range(1..4))),
        );
        if rng.random_bool(0.5) {
            labels.insert("HAPROXY_DEPLOYMENT_NEW_INSTANCES".into(), json!("1"));
            let target = *["1", "2", "x"].choose(rng).expect("choice");
            labels.insert("HAPROXY_DEPLOYMENT_TARGET_INSTANCES".into(), json!(target));
        }
    }
    if rng.random_bool(0.2) {
        labels.insert("HAPROXY_0_PORT".into(), json!("10001"));
    }
    if rng.random_bool(0.1) {
        labels.insert("HAPROXY_0_ENABLED".into(), json!("false"));
    }
    if rng.random_bool(0.1) {
        labels.insert("HAPROXY_0_VHOST".into(), json!("a.example"));
    }
    let ports: Vec<Value> = (0..rng.random_range(1..3))
        .map(|_| {
            json!({
                "port": *[10001, 10002, 10003, 0].choose(rng).expect("choice"),
                "protocol": *["tcp", "udp", "udp,tcp"].choose(rng).expect("choice"),
            })
        })
        .collect();
    let mut tasks: Vec<Value> = (0..rng.random_range(0..4))
        .map(|t| {
            let mut task = json!({
                "id": format!("{}.{t}", id.trim_start_matches('/')),
                "host": *["10.1.0.1", "10.1.0.2", "agent-1.example", "nowhere.invalid"]
                    .choose(rng)
                    .expect("choice"),
                "ports": [rng.random_range(31000..31004), 32000],
                "state": *["TASK_RUNNING", "TASK_RUNNING", "TASK_KILLING"].choose(rng).expect("choice"),
            });
            if rng.random_bool(0.5) {
                task["healthCheckResults"] = json!([{ "alive": rng.random_bool(0.7) }]);
            }
            task
        })
        .collect();
    if rng.random_bool(0.1) {
        tasks.push(json!({ "id": "bad", "ports": "31000" }));
    }
    let mut app = json!({
        "id": id,
        "instances": rng.random_range(0..3),
        "labels": labels,
        "portDefinitions": ports,
        "tasks": tasks,
        "versionInfo": { "lastScalingAt": format!("2020-02-0{}T00:00:00", rng.random_range(1..4)) },
    });
    if rng.random_bool(0.3) {
        // IP-per-task before Marathon 1.5: discovery ports and no service port, so ports are made
        // up for it, and they depend on the other such apps (clashes, a range running out).
        let discovery: Vec<Value> = (0..rng.random_range(1..3))
            .map(|k| json!({ "number": 80 + k, "protocol": "tcp" }))
            .collect();
        app["ipAddress"] = json!({ "networkName": "calico", "discovery": { "ports": discovery } });
        app["portDefinitions"] = json!([]);
        for (t, task) in app["tasks"]
            .as_array_mut()
            .expect("tasks")
            .iter_mut()
            .enumerate()
        {
            if rng.random_bool(0.8) {
                task["ipAddresses"] =
                    json!([{ "ipAddress": format!("192.168.9.{t}"), "protocol": "IPv4" }]);
            }
        }
    }
    if rng.random_bool(0.3) {
        app["healthChecks"] = json!([{ "protocol": "TCP" }]);
    }
    app
}

/// A full read of random apps among `ids` (some apps kept as they are), checking that the
/// catalog names exactly the apps it changed.
/// `listed` holds each app's document as last given to the catalog.
fn full_read(
    c: &mut Catalog,
    rng: &mut StdRng,
    ids: &[&str],
    listed: &mut BTreeMap<String, Value>,
) {
    let mut apps: Vec<Value> = Vec::new();
    for id in ids {
        if let Some(old) = listed.get(*id).filter(|_| rng.random_bool(0.3)) {
            apps.push(old.clone());
        } else if rng.random_bool(0.6) {
            apps.push(random_app(rng, id));
        }
    }
    *listed = apps
        .iter()
        .map(|a| (a["id"].as_str().expect("an id").to_owned(), a.clone()))
        .collect();
    let body = serde_json::to_vec(&json!({ "apps": apps })).expect("JSON");
    let split = AppsBody::split(body.into()).expect("splits");
    let parsed = split.parsed();
    let differs = |id: &str| c.apps().get(id) != parsed.apps.iter().find(|a| a.id == id);
    let want: BTreeSet<String> = ids
        .iter()
        .filter(|id| differs(id))
        .map(|id| (*id).to_owned())
        .collect();
    assert_eq!(c.replace(split.apps(), &mut resolve), want);
}

#[test]
fn random_per_app_changes_match_full_translation() {
    let ids = ["/a", "/b", "/c", "/dg", "/g/d", "/g/e", "/other"];
    // How often the cross-app rules were in play, so the test cannot pass by never meeting them.
    let (mut clashes, mut groups, mut made_up) = (0, 0, 0);
    for seed in 0..25u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        for opts in options() {
            // A made-up port range that is small (it runs out) and overlaps the apps' own ports.
            let opts = TranslateOptions {
                ip_per_task_ports: Some(PortRange {
                    min: 10003,
                    max: 10006,
                }),
                ..opts
            };
            let mut c = Catalog::new(opts);
            let mut listed = BTreeMap::new();
            // Start from a random full read.
            full_read(&mut c, &mut rng, &ids, &mut listed);
            assert_same(&c, &format!("seed {seed}: start"));
            for step in 0..60 {
                if rng.random_bool(0.1) {
                    full_read(&mut c, &mut rng, &ids, &mut listed);
                    assert_same(&c, &format!("seed {seed} step {step}: full read"));
                    continue;
                }
                let id = *ids.choose(&mut rng).expect("choice");
                let app = if rng.random_bool(0.25) {
                    listed.remove(id);
                    None
                } else {
                    let doc = random_app(&mut rng, id);
                    let json = serde_json::to_vec(&doc).expect("JSON");
                    listed.insert(id.to_owned(), doc);
                    Some(parse_app(&json).expect("generated app parses"))
                };
                let what = format!("seed {seed} step {step}: {id} -> {}", app.is_some());
                c.set_app(id, app, &mut resolve);
                assert_same(&c, &what);
                let t = c.translation();
                clashes +=
                    usize::from(t.skipped.iter().any(|s| s.reason.contains("already taken")));
                groups += usize::from(t.desired.services.iter().any(|s| s.name.starts_with("dg_")));
                made_up += usize::from(t.desired.services.iter().any(|s| s.listener.port >= 10004));
            }
        }
    }
    assert!(
        clashes > 100 && groups > 100 && made_up > 100,
        "clashes {clashes}, groups {groups}, made-up ports {made_up}"
    );
}
