//! The control plane: translating and applying large Marathon states, and how soon a task
//! change reaches the maps when `lb run --marathon` follows a stream of them.
use std::{
    collections::{BTreeMap, HashMap as StdHashMap},
    fs,
    net::Ipv4Addr,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use aya::maps::{HashMap, MapData};
use lb_common::{Backend, BackendKey, MAP_BACKENDS, MAP_SERVICES, Service, ServiceKey};
use lb_tests::{
    lb::{self, NsStandin},
    netns::{Topology, sh},
};
use lb_user::{
    dataplane::{Dataplane, ifaces, loader::Capacities},
    marathon::{api, translate},
};
use serde_json::{Value, json};

use super::{
    Effort,
    report::{Report, Spread, Table, quantile_sorted},
};

const NS: &str = "lbb-ctl";
const TASKS_PER_APP: u32 = 5;

/// A task's address on the Calico network: unique per (app, task, generation of changes).
fn task_ip(app: u32, task: u32) -> Ipv4Addr {
    let n = app * TASKS_PER_APP + task;
    Ipv4Addr::new(192, 168, (n / 250) as u8, (n % 250 + 1) as u8)
}

/// App `i`'s service port.
fn service_port(i: u32) -> u16 {
    u16::try_from(10_000 + i).expect("fewer than 55,535 apps")
}

/// One Calico (container network) app as Marathon 1.5+ lists it with `embed=apps.tasks`.
fn app_json(i: u32, ips: &[Ipv4Addr]) -> Value {
    json!({
        "id": format!("/bench/app-{i:05}"),
        "instances": ips.len(),
        "labels": {"HAPROXY_GROUP": "external"},
        "networks": [{"mode": "container", "name": "calico"}],
        "container": {"type": "MESOS", "portMappings": [
            {"containerPort": 80, "servicePort": service_port(i), "protocol": "tcp", "name": "http"}
        ]},
        "tasks": ips.iter().enumerate().map(|(t, ip)| json!({
            "id": format!("bench_app-{i:05}.{t}"),
            "appId": format!("/bench/app-{i:05}"),
            "host": "10.0.0.1",
            "state": "TASK_RUNNING",
            "ports": [31_000 + t as u32],
            "ipAddresses": [{"ipAddress": ip.to_string(), "protocol": "IPv4"}],
        })).collect::<Vec<_>>(),
    })
}

fn apps_doc(apps: u32) -> Value {
    json!({"apps": (0..apps).map(|i| {
        let ips: Vec<Ipv4Addr> = (0..TASKS_PER_APP).map(|t| task_ip(i, t)).collect();
        app_json(i, &ips)
    }).collect::<Vec<_>>()})
}

fn peak_rss_kib() -> u64 {
    fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The child's side of the translate-and-apply measurement (`lb-bench --control-apply N`), run in
/// a process of its own so that its peak memory is its own. Prints one JSON line.
pub fn apply_child(apps: u32) {
    let body = serde_json::to_vec(&apps_doc(apps)).expect("JSON");
    let rss_before = peak_rss_kib();
    let t = Instant::now();
    let parsed = api::parse_apps(&body).expect("generated apps parse");
    let parse_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let tr = translate::translate(
        &parsed.apps,
        &translate::TranslateOptions::default(),
        &mut |_| None,
    );
    let translate_s = t.elapsed().as_secs_f64();
    let services = tr.desired.services.len();
    let backends: usize = tr.desired.services.iter().map(|s| s.backends.len()).sum();
    let mut dp = Dataplane::load(Capacities::default(), None).expect("load the data plane");
    dp.maps
        .write_local_addrs(&ifaces::ipv4_addresses())
        .unwrap();
    let t = Instant::now();
    dp.apply(&tr.desired).expect("apply");
    let apply_s = t.elapsed().as_secs_f64();
    // One task replaced in one app: what every later Marathon event costs.
    let mut doc = apps_doc(apps);
    doc["apps"][0]["tasks"][0]["ipAddresses"][0]["ipAddress"] = json!("10.250.0.1");
    let body2 = serde_json::to_vec(&doc).expect("JSON");
    let t = Instant::now();
    let parsed = api::parse_apps(&body2).expect("parse");
    let tr = translate::translate(
        &parsed.apps,
        &translate::TranslateOptions::default(),
        &mut |_| None,
    );
    dp.apply(&tr.desired).expect("apply change");
    let change_s = t.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({
            "apps": apps, "services": services, "backends": backends, "json_bytes": body.len(),
            "parse_s": parse_s, "translate_s": translate_s, "apply_s": apply_s,
            "one_change_s": change_s,
            "peak_rss_kib": peak_rss_kib(), "rss_before_kib": rss_before,
        })
    );
}

fn translate_and_apply(effort: &Effort, report: &mut Report) {
    let _ = Command::new("ip").args(["netns", "del", NS]).output();
    // Task addresses route through one uplink, as on an agent, so the NAT source lookup answers.
    let n = format!("ip -n {NS}");
    sh(&format!(
        "ip netns add {NS} && {n} link set lo up && {n} link add eth0 type veth peer name eth0p && \
         {n} link set eth0 up && {n} link set eth0p up && {n} addr add 10.0.0.1/24 dev eth0 && \
         {n} route add 192.168.0.0/16 via 10.0.0.2 && {n} route add 10.250.0.0/16 via 10.0.0.2"
    ));
    let me = std::env::current_exe().expect("own path");
    let mut t = Table::new(
        "Control plane: translate and apply a Marathon state",
        &[
            "apps × tasks",
            "services / backends",
            "parse s",
            "translate s",
            "apply s",
            "one change s",
            "peak RSS MiB",
        ],
        "Generated `/v2/apps?embed=apps.tasks` JSON of Calico apps (one TCP port, 5 running tasks each), \
             parsed by `marathon::api::parse_apps`, translated by `translate::translate` and applied by \
             `Dataplane::apply` (plan and map writes) to a freshly loaded, unattached data plane (default capacities). \
             `one change`: the whole cycle again (parse, translate, apply) after one task of one app moved, \
             as for every later Marathon event. Each size runs in a child process of its own (1,000 apps: 3 \
             times; 10,000 apps: once, full runs only), so the peak RSS (VmHWM, userspace only; map memory \
             is the kernel's) is that size's alone. Median (min–max) over runs.",
    );
    // The 10,000-app apply takes minutes on this VM: once, and only in a full run.
    let sizes: &[(u32, usize)] = if effort.quick {
        &[(1_000, 3)]
    } else {
        &[(1_000, 3), (10_000, 1)]
    };
    for &(apps, runs) in sizes {
        let mut rows: Vec<Value> = Vec::new();
        for _ in 0..runs {
            let out = Command::new("ip")
                .args(["netns", "exec", NS])
                .arg(&me)
                .args(["--control-apply", &apps.to_string()])
                .output()
                .expect("run the control-plane child");
            if !out.status.success() {
                report.failures.push(format!(
                    "control plane, {apps} apps: child failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ));
                break;
            }
            let v: Value = serde_json::from_slice(&out.stdout).expect("child prints JSON");
            rows.push(v);
        }
        if rows.is_empty() {
            continue;
        }
        let s = |k: &str| {
            Spread::of(
                &rows
                    .iter()
                    .map(|r| r[k].as_f64().unwrap_or(0.0))
                    .collect::<Vec<_>>(),
            )
        };
        let rss = Spread::of(
            &rows
                .iter()
                .map(|r| r["peak_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0)
                .collect::<Vec<_>>(),
        );
        t.row(
            vec![
                format!("{apps} × {TASKS_PER_APP}"),
                format!("{} / {}", rows[0]["services"], rows[0]["backends"]),
                s("parse_s").show(3),
                s("translate_s").show(3),
                s("apply_s").show(3),
                s("one_change_s").show(3),
                rss.show(0),
            ],
            json!({"apps": apps, "tasks_per_app": TASKS_PER_APP, "services": rows[0]["services"],
                   "backends": rows[0]["backends"], "json_bytes": rows[0]["json_bytes"],
                   "parse_s": s("parse_s").json(), "translate_s": s("translate_s").json(),
                   "apply_s": s("apply_s").json(), "one_change_s": s("one_change_s").json(),
                   "peak_rss_mib": rss.json()}),
        );
    }
    report.tables.push(t);
    let _ = Command::new("ip").args(["netns", "del", NS]).output();
}

/// Whether the service on `key` currently points at a backend with address `addr` (network
/// order): a handful of lookups, so that the watcher measures the daemon, not its own reading
/// of 50,000 entries.
fn points_at(
    services: &HashMap<MapData, ServiceKey, Service>,
    backends: &HashMap<MapData, BackendKey, Backend>,
    key: &ServiceKey,
    addr: u32,
) -> bool {
    let Ok(s) = services.get(key, 0) else {
        return false;
    };
    (0..s.count).any(|index| {
        let k = BackendKey {
            service_id: s.id,
            generation: s.generation,
            index,
        };
        backends.get(&k, 0).is_ok_and(|b| b.addr == addr)
    })
}

/// The daemon's peak resident memory (VmHWM) in MiB, from /proc.
fn peak_rss_mib(pid: u32) -> f64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// One row of the event-to-map table: `apps` Calico apps followed by `lb run --marathon`, a
/// stream of single-task changes (each announced as Marathon does, by a `status_update_event`
/// naming its app), then a few full reads (an event naming no app), and the daemon's peak RSS.
fn event_latency(effort: &Effort, apps: u32, report: &mut Report) -> Option<(Vec<String>, Value)> {
    const RATE: u32 = 100;
    const FULL_READS: u32 = 3;
    let changes = RATE * if effort.quick { 3 } else { 10 };
    let mut topo = Topology::new("lbbc");
    let standin = NsStandin::start(&topo.ns("agent"));
    let mut ips: Vec<Vec<Ipv4Addr>> = (0..apps)
        .map(|a| (0..TASKS_PER_APP).map(|t| task_ip(a, t)).collect())
        .collect();
    let doc = |ips: &[Vec<Ipv4Addr>]| json!({"apps": ips.iter().enumerate().map(|(i, v)| app_json(i as u32, v)).collect::<Vec<_>>()});
    standin.standin.set_apps(doc(&ips));
    let url = standin.standin.url();
    lb::start_within(
        &mut topo,
        "lb",
        &[
            "--iface",
            "eth*",
            "--iface",
            "cali*",
            "--hook",
            "tc",
            "--marathon",
            &url,
        ],
        apps as usize,
        Duration::from_secs(120),
    );
    let pins = topo.pin_path();
    let services: HashMap<MapData, ServiceKey, Service> =
        HashMap::try_from(aya::maps::Map::HashMap(
            MapData::from_pin(pins.join(MAP_SERVICES)).expect("pinned services"),
        ))
        .unwrap();
    let backends: HashMap<MapData, BackendKey, Backend> =
        HashMap::try_from(aya::maps::Map::HashMap(
            MapData::from_pin(pins.join(MAP_BACKENDS)).expect("pinned backends"),
        ))
        .unwrap();
    // Each app's service key, by service port (they stay while tasks move).
    let keys: StdHashMap<u16, ServiceKey> = services
        .keys()
        .filter_map(Result::ok)
        .map(|k| (u16::from_be(k.port), k))
        .collect();
    // The watcher polls the pinned maps and reports when each awaited address becomes current.
    let (want_tx, want_rx) = mpsc::channel::<(u16, u32, Instant)>();
    let (seen_tx, seen_rx) = mpsc::channel::<f64>();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let watcher = thread::spawn(move || {
        let mut waiting: BTreeMap<(u16, u32), Instant> = BTreeMap::new();
        let mut polls = 0u64;
        let mut poll_time = Duration::ZERO;
        while !stop2.load(Ordering::Relaxed) || !waiting.is_empty() {
            while let Ok((port, addr, at)) = want_rx.try_recv() {
                waiting.insert((port, addr), at);
            }
            if waiting.is_empty() {
                thread::sleep(Duration::from_millis(1));
                continue;
            }
            let t = Instant::now();
            let current: Vec<bool> = waiting
                .keys()
                .map(|(port, addr)| {
                    keys.get(port)
                        .is_some_and(|k| points_at(&services, &backends, k, *addr))
                })
                .collect();
            let now = Instant::now();
            poll_time += now - t;
            polls += 1;
            let mut current = current.into_iter();
            waiting.retain(|_, at| {
                if current.next().expect("one answer per waiting address") {
                    let _ = seen_tx.send((now - *at).as_secs_f64() * 1e3);
                    false
                } else if now - *at > Duration::from_secs(10) {
                    let _ = seen_tx.send(f64::INFINITY);
                    false
                } else {
                    true
                }
            });
        }
        poll_time.as_secs_f64() * 1e3 / polls.max(1) as f64
    });
    let interval = Duration::from_secs(1) / RATE;
    let start = Instant::now();
    for k in 0..changes {
        // Each change moves one task of one app to a new address (a task replaced).
        let app = k % apps;
        let task = ((k / apps) % TASKS_PER_APP) as usize;
        let new = Ipv4Addr::new(10, 250, (k / 250) as u8, (k % 250 + 1) as u8);
        ips[app as usize][task] = new;
        let body = app_json(app, &ips[app as usize]);
        let at = Instant::now();
        standin
            .standin
            .set_app(&format!("/bench/app-{app:05}"), Some(body));
        let _ = want_tx.send((service_port(app), u32::from(new).to_be(), at));
        let next = start + interval * (k + 1);
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            thread::sleep(d);
        }
    }
    let sent_for = start.elapsed().as_secs_f64();
    // Wait for the stream to drain, then full reads: one task moved, announced by an event that
    // names no app (as a deployment's), so the daemon reads and applies the whole state.
    thread::sleep(Duration::from_secs(2));
    let events: Vec<f64> = seen_rx.try_iter().collect();
    for r in 0..FULL_READS {
        let k = changes + r;
        let new = Ipv4Addr::new(10, 250, (k / 250) as u8, (k % 250 + 1) as u8);
        ips[0][0] = new;
        let body = doc(&ips);
        let at = Instant::now();
        standin.standin.set_apps(body);
        let _ = want_tx.send((service_port(0), u32::from(new).to_be(), at));
        thread::sleep(Duration::from_secs(3));
    }
    stop.store(true, Ordering::Relaxed);
    let poll_ms = watcher.join().expect("watcher");
    let mut full: Vec<f64> = seen_rx.try_iter().collect();
    full.sort_by(f64::total_cmp);
    let rss = topo.pid("lb").map_or(0.0, peak_rss_mib);
    let mut lat = events;
    let lost = lat.iter().filter(|v| v.is_infinite()).count();
    lat.retain(|v| v.is_finite());
    lat.sort_by(f64::total_cmp);
    let _ = topo.stop("lb");
    drop(standin);
    drop(topo);
    if lat.is_empty() {
        report.failures.push(format!(
            "control plane, {apps} apps: no change reached the maps"
        ));
        return None;
    }
    let full_ms = full.get(full.len() / 2).copied().unwrap_or(f64::INFINITY);
    Some((
        vec![
            format!("{apps} × {TASKS_PER_APP}"),
            format!("{changes} in {sent_for:.1} s"),
            format!("{:.1}", quantile_sorted(&lat, 0.5)),
            format!("{:.1}", quantile_sorted(&lat, 0.99)),
            format!("{:.1}", lat[lat.len() - 1]),
            lost.to_string(),
            format!("{full_ms:.0}"),
            format!("{rss:.0}"),
            format!("{poll_ms:.2}"),
        ],
        json!({"apps": apps, "tasks_per_app": TASKS_PER_APP, "changes": changes, "rate_per_s": RATE,
               "p50_ms": quantile_sorted(&lat, 0.5), "p99_ms": quantile_sorted(&lat, 0.99),
               "max_ms": lat[lat.len() - 1], "not_seen": lost, "full_read_ms": full,
               "lb_peak_rss_mib": rss, "poll_ms": poll_ms}),
    ))
}

fn event_latencies(effort: &Effort, report: &mut Report) {
    let mut t = Table::new(
        "Control plane: Marathon event to map, under a stream of task changes",
        &[
            "apps × tasks",
            "changes",
            "p50 ms",
            "p99 ms",
            "max ms",
            "not seen in 10 s",
            "full read ms",
            "lb peak RSS MiB",
            "map poll ms",
        ],
        "`lb run --marathon` (the release binary, TC hook) in the agent namespace follows the Marathon \
         stand-in (Calico apps × 5 tasks). Changes at 100/s, each moving one task of one app to a new \
         address: the stand-in replaces that app and announces it as Marathon does, with a \
         `status_update_event` naming the app (`set_app`), so the daemon reads that app alone. \
         Latency = from `set_app` to the new address being a backend of its service's current \
         generation in the pinned `LB_SERVICES`/`LB_BACKENDS` maps, which a watcher polls \
         continuously (one poll takes `map poll ms`, the resolution of the figure). The daemon \
         coalesces events (50 ms). `full read ms`: median of 3 whole-state changes announced by an \
         event naming no app (read, parsed, translated and applied in full). `lb peak RSS`: the \
         daemon's VmHWM at the end.",
    );
    for apps in [1_000, 10_000] {
        if let Some((cells, json)) = event_latency(effort, apps, report) {
            t.row(cells, json);
        }
    }
    report.tables.push(t);
}

pub fn run(effort: &Effort, report: &mut Report) {
    translate_and_apply(effort, report);
    event_latencies(effort, report);
}
