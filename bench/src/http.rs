//! HTTP virtual hosts against HAProxy as marathon-lb configures a `HAPROXY_0_VHOST` app: wrk
//! (plain and TLS) at saturation, latency at a fixed rate (`lbt-rate`) and a large download from
//! the client, through the agent to the same nginx tasks; and one upgraded connection's
//! throughput (`lbt-tunnel`) to an echoing `lbt-server` in the tasks, with lb's splice(2)
//! relay and without it (`--no-splice`).
use std::{fs, net::SocketAddrV4, path::Path, thread, time::Duration};

use lb_tests::{
    lb::{self, NsStandin},
    netns::{AGENT, TASKS, Topology, in_netns, wait_tcp},
};
use serde_json::{Value, json};

use super::{
    Effort,
    report::{Report, Spread, Table, Target},
    traffic::{self, BIG_FILE, CONNECTIONS, Contender, client_cmd, wrk_with},
};

const PREFIX: &str = "lbbh";
const VHOST: &str = "bench.acme.org";
const SERVICE_PORT: u16 = 10000;
/// The vhost's certificate and key (PEM), for both front ends: RSA 2048, as marathon-lb's
/// `run` script makes its default one.
const CERT: &str = "bench.pem";
/// A second vhost app: `lbt-server` in each task on `ECHO_PORT`, echoing after an upgrade.
const ECHO_VHOST: &str = "echo.acme.org";
const ECHO_PORT: u16 = 8080;
const ECHO_SERVICE_PORT: u16 = 10001;
/// The fixed rate of the latency figures, requests/s: about a third of HAProxy's keep-alive
/// saturation on this machine, so neither front end queues.
const FIXED_RATE: u32 = 5000;
/// Bytes sent up an upgraded connection (and echoed back) per tunnel measurement.
const TUNNEL_BYTES: u64 = 1 << 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Front {
    Haproxy,
    Lb,
    /// lb with `--no-splice`: measured for the tunnel alone, to show what splice(2) brings.
    LbCopy,
}

impl Front {
    const ALL: [Front; 3] = [Front::Haproxy, Front::Lb, Front::LbCopy];
    fn label(self) -> &'static str {
        match self {
            Front::Haproxy => "HAProxy, as marathon-lb configures a vhost",
            Front::Lb => "lb's HTTP front end",
            Front::LbCopy => "lb's HTTP front end, --no-splice",
        }
    }

    fn measures(self, m: Metric) -> bool {
        self != Front::LbCopy || m == Metric::Tunnel
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Metric {
    KeepAlive,
    NewConn,
    TlsKeepAlive,
    TlsNewConn,
    P50,
    P99,
    FixedP50,
    FixedP99,
    FixedP999,
    Download,
    Tunnel,
}

impl Metric {
    const ALL: [Metric; 11] = [
        Metric::KeepAlive,
        Metric::NewConn,
        Metric::TlsKeepAlive,
        Metric::TlsNewConn,
        Metric::P50,
        Metric::P99,
        Metric::FixedP50,
        Metric::FixedP99,
        Metric::FixedP999,
        Metric::Download,
        Metric::Tunnel,
    ];
    fn label(self) -> &'static str {
        match self {
            Metric::KeepAlive => "requests/s, keep-alive",
            Metric::NewConn => "requests/s, new connection each",
            Metric::TlsKeepAlive => "TLS requests/s, keep-alive",
            Metric::TlsNewConn => "TLS requests/s, new connection (handshake) each",
            Metric::P50 => "latency p50 µs, keep-alive, 32 connections",
            Metric::P99 => "latency p99 µs, keep-alive, 32 connections",
            Metric::FixedP50 => "latency p50 µs at a fixed 5,000 requests/s",
            Metric::FixedP99 => "latency p99 µs at a fixed 5,000 requests/s",
            Metric::FixedP999 => "latency p99.9 µs at a fixed 5,000 requests/s",
            Metric::Download => "100 MB download, Gbit/s",
            Metric::Tunnel => "upgraded connection, 1 GiB echoed, Gbit/s each way",
        }
    }
    fn higher_is_better(self) -> bool {
        !matches!(
            self,
            Metric::P50 | Metric::P99 | Metric::FixedP50 | Metric::FixedP99 | Metric::FixedP999
        )
    }
}

/// marathon-lb's templates for one app with `HAPROXY_0_VHOST` (HAPROXY_HEAD's defaults, the
/// `marathon_http_in` frontend with the vhost's ACL, the app's service-port frontend and its
/// backend with HAPROXY_BACKEND_HTTP_OPTIONS), without logging, stats and health checks.
fn haproxy_conf(dir: &str) -> String {
    // Global maxconn as in the traffic section (marathon-lb's 50,000 needs more descriptors
    // than this machine allows).
    let servers: Vec<String> = TASKS
        .iter()
        .map(|(_, a, _, _)| format!("  server {}_80 {a}:80", a.to_string().replace('.', "_")))
        .collect();
    let echo_servers: Vec<String> = TASKS
        .iter()
        .map(|(_, a, _, _)| {
            format!(
                "  server {}_{ECHO_PORT} {a}:{ECHO_PORT}",
                a.to_string().replace('.', "_")
            )
        })
        .collect();
    let acl = VHOST.replace('.', "_");
    let echo_acl = ECHO_VHOST.replace('.', "_");
    format!(
        "global\n  maxconn 9000\n  pidfile {dir}/haproxy.pid\n\
         defaults\n  retries 3\n  backlog 10000\n  maxconn 10000\n  timeout connect 3s\n  \
         timeout client 30s\n  timeout server 30s\n  timeout tunnel 3600s\n  timeout http-keep-alive 1s\n  \
         timeout http-request 15s\n  timeout queue 30s\n  timeout tarpit 60s\n  option dontlognull\n  \
         option http-server-close\n  option redispatch\n\
         frontend marathon_http_in\n  bind *:80\n  mode http\n  \
         acl host_{acl} hdr(host) -i {VHOST}\n  use_backend nginx_{SERVICE_PORT} if host_{acl}\n  \
         acl host_{echo_acl} hdr(host) -i {ECHO_VHOST}\n  \
         use_backend echo_{ECHO_SERVICE_PORT} if host_{echo_acl}\n\
         frontend marathon_https_in\n  bind *:443 ssl crt {dir}/{CERT}\n  mode http\n  \
         use_backend nginx_{SERVICE_PORT} if {{ ssl_fc_sni {VHOST} }}\n\
         frontend nginx_{SERVICE_PORT}\n  bind *:{SERVICE_PORT}\n  mode http\n  use_backend nginx_{SERVICE_PORT}\n\
         backend nginx_{SERVICE_PORT}\n  balance roundrobin\n  mode http\n  option forwardfor\n  \
         http-request set-header X-Forwarded-Port %[dst_port]\n  \
         http-request add-header X-Forwarded-Proto https if {{ ssl_fc }}\n{}\n\
         backend echo_{ECHO_SERVICE_PORT}\n  balance roundrobin\n  mode http\n  option forwardfor\n  \
         http-request set-header X-Forwarded-Port %[dst_port]\n  \
         http-request add-header X-Forwarded-Proto https if {{ ssl_fc }}\n{}\n",
        servers.join("\n"),
        echo_servers.join("\n")
    )
}

/// The same apps as Marathon lists them, for lb: the three tasks at their Calico IPs.
fn apps_doc() -> Value {
    let app = |name: &str, vhost: &str, port: u16, service_port: u16| {
        json!({
            "id": format!("/{name}"), "instances": TASKS.len(),
            "container": {"type": "DOCKER", "docker": {"image": name},
                          "portMappings": [{"containerPort": port, "servicePort": service_port, "protocol": "tcp"}]},
            "networks": [{"name": "calico", "mode": "container"}],
            "labels": {"HAPROXY_GROUP": "external", "HAPROXY_0_VHOST": vhost},
            "tasks": TASKS.iter().map(|(t, ip, _, _)| json!({
                "id": format!("{name}.{t}"), "appId": format!("/{name}"), "state": "TASK_RUNNING",
                "host": AGENT.to_string(), "ports": [], "servicePorts": [service_port],
                "ipAddresses": [{"ipAddress": ip.to_string(), "protocol": "IPv4"}],
            })).collect::<Vec<_>>(),
        })
    };
    json!({"apps": [
        app("nginx", VHOST, 80, SERVICE_PORT),
        app("echo", ECHO_VHOST, ECHO_PORT, ECHO_SERVICE_PORT),
    ]})
}

/// nginx in the tasks (the traffic section's), and `f` on the agent's port 80.
fn setup(f: Front) -> (Topology, Option<NsStandin>) {
    // lb attaches its data plane with `--hook tc`, which needs no XDP set-up of the veths, so
    // they keep the kernel's defaults (segmentation offloads on), as an HTTP proxy on a NIC has.
    let mut topo = traffic::topology_for(PREFIX, Contender::Plain, false);
    let server = super::helper_bin("lbt-server", "LBT_SERVER");
    for (t, _, _, _) in TASKS {
        let mut echo = topo.cmd(t, &server);
        echo.arg(format!("echo-{t}")).arg(ECHO_PORT.to_string());
        topo.spawn(&format!("echo-{t}"), echo);
    }
    let dir = format!("/tmp/{PREFIX}-run");
    topo.sh(
        "agent",
        &format!(
            "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN={VHOST} \
             -addext subjectAltName=DNS:{VHOST} -keyout {dir}/key.pem -out {dir}/cert.pem 2>/dev/null && \
             cat {dir}/cert.pem {dir}/key.pem > {dir}/{CERT}"
        ),
    );
    // The client finds the vhost by name (so TLS clients send it as SNI): `ip netns exec`
    // mounts /etc/netns/<ns>/hosts over /etc/hosts.
    let etc = format!("/etc/netns/{}", topo.ns("client"));
    fs::create_dir_all(&etc).expect("/etc/netns directory");
    fs::write(
        format!("{etc}/hosts"),
        format!("127.0.0.1 localhost\n{AGENT} {VHOST}\n"),
    )
    .expect("the client's hosts file");
    let standin = match f {
        Front::Haproxy => {
            let cfg = format!("{dir}/haproxy-http.cfg");
            fs::write(&cfg, haproxy_conf(&dir)).unwrap();
            let mut h = topo.cmd("agent", Path::new("haproxy"));
            h.stderr(fs::File::create(format!("{dir}/haproxy-http.log")).unwrap())
                .stdout(std::process::Stdio::null());
            h.args(["-db", "-f", &cfg]);
            topo.spawn("haproxy", h);
            None
        }
        Front::Lb | Front::LbCopy => {
            let m = NsStandin::start(&topo.ns("agent"));
            m.standin.set_apps(apps_doc());
            let url = m.standin.url();
            let cert = format!("{dir}/{CERT}");
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
                    "--marathon",
                    &url,
                    "--http-listen",
                    "0.0.0.0:80",
                    "--https-listen",
                    "0.0.0.0:443",
                    "--ssl-certs",
                    &cert,
                ]
                .into_iter()
                .chain((f == Front::LbCopy).then_some("--no-splice"))
                .collect::<Vec<_>>(),
                2,
            );
            Some(m)
        }
    };
    let target = SocketAddrV4::new(AGENT, 80);
    let up = in_netns(&topo.ns("client"), move || {
        wait_tcp(target, Duration::from_secs(10))
    });
    assert!(up, "{} does not listen on {target}", f.label());
    // The vhost answers from a task before anything is measured.
    let host = format!("Host: {VHOST}");
    let body = client_cmd(
        &topo,
        &[
            "curl",
            "-sS",
            "-m",
            "5",
            "-H",
            &host,
            &format!("http://{AGENT}/"),
        ],
        10,
    )
    .unwrap_or_else(|e| panic!("{}: {e}", f.label()));
    assert_eq!(body, "ok\n", "{} answers the vhost", f.label());
    let body = client_cmd(
        &topo,
        &["curl", "-sS", "-k", "-m", "5", &format!("https://{VHOST}/")],
        10,
    )
    .unwrap_or_else(|e| panic!("{} over TLS: {e}", f.label()));
    assert_eq!(body, "ok\n", "{} answers the vhost over TLS", f.label());
    (topo, standin)
}

/// Downloads `/big/100m` through the vhost; Gbit/s.
fn download(topo: &Topology) -> Result<f64, String> {
    let host = format!("Host: {VHOST}");
    let out = client_cmd(
        topo,
        &[
            "curl",
            "-sS",
            "-m",
            "60",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download} %{speed_download}",
            "-H",
            &host,
            &format!("http://{AGENT}/big/100m"),
        ],
        70,
    )?;
    let mut f = out.split_whitespace();
    let size: u64 = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    let speed: f64 = f
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("curl printed {out:?}"))?;
    if size != BIG_FILE {
        return Err(format!("downloaded {size} bytes of {BIG_FILE}"));
    }
    Ok(speed * 8.0 / 1e9)
}

/// Runs one of the benchmark's helpers (`name`, found by `env`) in the client namespace with
/// `args`, bounded by `limit` seconds, and reads the JSON it prints.
fn helper_json(
    topo: &Topology,
    name: &str,
    env: &str,
    args: &[&str],
    limit: u32,
) -> Result<Value, String> {
    let bin = super::helper_bin(name, env);
    let bin = bin.to_string_lossy();
    let argv: Vec<&str> = std::iter::once(&*bin).chain(args.iter().copied()).collect();
    let out = client_cmd(topo, &argv, limit)?;
    serde_json::from_str(&out).map_err(|e| format!("{name} printed {out:?}: {e}"))
}

/// Latency at `FIXED_RATE` over 32 keep-alive connections (`lbt-rate`): p50, p99, p99.9 µs.
fn fixed_rate(topo: &Topology, secs: u32) -> Result<[f64; 3], String> {
    let v = helper_json(
        topo,
        "lbt-rate",
        "LBT_RATE",
        &[
            "--to",
            &format!("{AGENT}:80"),
            "--host",
            VHOST,
            "--rate",
            &FIXED_RATE.to_string(),
            "--connections",
            &CONNECTIONS.to_string(),
            "--seconds",
            &secs.to_string(),
        ],
        secs + 20,
    )?;
    if v["errors"].as_u64() != Some(0) {
        return Err(format!("errors at a fixed rate: {v}"));
    }
    let p = |k: &str| v[k].as_f64().ok_or_else(|| format!("no {k} in {v}"));
    Ok([p("p50_us")?, p("p99_us")?, p("p999_us")?])
}

/// One upgraded connection echoing `TUNNEL_BYTES` (`lbt-tunnel`); Gbit/s each way.
fn tunnel(topo: &Topology) -> Result<f64, String> {
    let v = helper_json(
        topo,
        "lbt-tunnel",
        "LBT_TUNNEL",
        &[
            "--to",
            &format!("{AGENT}:80"),
            "--host",
            ECHO_VHOST,
            "--bytes",
            &TUNNEL_BYTES.to_string(),
        ],
        120,
    )?;
    v["gbit_s"]
        .as_f64()
        .ok_or_else(|| format!("no gbit_s in {v}"))
}

/// The median of three tries of `what`, the failures noted.
fn median_of_3(
    mut what: impl FnMut() -> Result<f64, String>,
    mut note: impl FnMut(String),
) -> Option<f64> {
    let got: Vec<f64> = (0..3)
        .filter_map(|_| what().map_err(&mut note).ok())
        .collect();
    (!got.is_empty()).then(|| Spread::of(&got).median)
}

fn measure(f: Front, effort: &Effort, notes: &mut Vec<String>) -> Vec<(Metric, f64)> {
    let (topo, standin) = setup(f);
    let url = format!("http://{AGENT}/");
    let host = format!("Host: {VHOST}");
    let secs = effort.seconds;
    let mut got = Vec::new();
    let mut note = |what: &str, e: String| notes.push(format!("{} {what}: {e}", f.label()));
    if f.measures(Metric::KeepAlive) {
        let _ = wrk_with(&topo, &url, 4, 1, false, &[&host]);
        saturation(&topo, &url, &host, secs, &mut got, &mut note);
        match fixed_rate(&topo, secs) {
            Ok([p50, p99, p999]) => got.extend([
                (Metric::FixedP50, p50),
                (Metric::FixedP99, p99),
                (Metric::FixedP999, p999),
            ]),
            Err(e) => note("fixed rate", e),
        }
        if let Some(g) = median_of_3(|| download(&topo), |e| note("download", e)) {
            got.push((Metric::Download, g));
        }
    }
    if let Some(g) = median_of_3(|| tunnel(&topo), |e| note("tunnel", e)) {
        got.push((Metric::Tunnel, g));
    }
    let _ = fs::remove_dir_all(format!("/etc/netns/{}", topo.ns("client")));
    drop(topo);
    drop(standin);
    thread::sleep(Duration::from_millis(500));
    got
}

/// wrk at saturation: keep-alive (with its latency), a connection per request, and both over TLS.
fn saturation(
    topo: &Topology,
    url: &str,
    host: &str,
    secs: u32,
    got: &mut Vec<(Metric, f64)>,
    note: &mut impl FnMut(&str, String),
) {
    match wrk_with(topo, url, CONNECTIONS, secs, false, &[host]) {
        Ok(w) => {
            got.push((Metric::KeepAlive, w.rps));
            got.extend(w.p50_us.map(|p| (Metric::P50, p)));
            got.extend(w.p99_us.map(|p| (Metric::P99, p)));
            if let Some(e) = w.errors {
                note("keep-alive", e);
            }
        }
        Err(e) => note("keep-alive", e),
    }
    match wrk_with(topo, url, CONNECTIONS, secs, true, &[host]) {
        Ok(w) => {
            got.push((Metric::NewConn, w.rps));
            if let Some(e) = w.errors {
                note("new connections", e);
            }
        }
        Err(e) => note("new connections", e),
    }
    let tls = format!("https://{VHOST}/");
    for (m, close) in [(Metric::TlsKeepAlive, false), (Metric::TlsNewConn, true)] {
        match wrk_with(topo, &tls, CONNECTIONS, secs, close, &[]) {
            Ok(w) => {
                got.push((m, w.rps));
                if let Some(e) = w.errors {
                    note(m.label(), e);
                }
            }
            Err(e) => note(m.label(), e),
        }
    }
}

pub fn run(effort: &Effort, report: &mut Report) {
    let mut samples: std::collections::BTreeMap<(Front, Metric), Vec<f64>> = Default::default();
    let mut notes = Vec::new();
    for round in 0..effort.rounds {
        let mut order = Front::ALL.to_vec();
        order.rotate_left(round % Front::ALL.len());
        for f in order {
            eprintln!("    round {}: {}", round + 1, f.label());
            let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                measure(f, effort, &mut notes)
            }));
            match got {
                Ok(got) => {
                    for (m, v) in got {
                        samples.entry((f, m)).or_default().push(v);
                    }
                }
                Err(e) => {
                    let msg = e
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_default();
                    notes.push(format!(
                        "{} round {}: set-up failed: {msg}",
                        f.label(),
                        round + 1
                    ));
                }
            }
        }
    }
    // Also after a set-up that panicked.
    let _ = fs::remove_dir_all(format!("/etc/netns/{PREFIX}-client"));
    let spread = |f: Front, m: Metric| samples.get(&(f, m)).map(|v| Spread::of(v));
    let mut t = Table::new(
        "HTTP virtual host: lb's front end against HAProxy as marathon-lb configures it",
        &["front end", "metric", "median (min–max)", "÷ HAProxy"],
        &format!(
            "The traffic section's topology and nginx tasks (t1, t2 on the agent, t3 behind agent2), its veths \
             left at the kernel's defaults (segmentation offloads on; the traffic section turns checksum offload \
             off for XDP); one app \
             `/nginx` with `HAPROXY_0_VHOST={VHOST}` on the three tasks. HAProxy: marathon-lb's templates for \
             that app (defaults with `option http-server-close`, `timeout http-keep-alive 1s`; frontend \
             `marathon_http_in` on :80, `mode http`, `acl … hdr(host) -i {VHOST}`; backend `balance roundrobin`, \
             `mode http`, `option forwardfor`, `http-request set-header X-Forwarded-Port %[dst_port]`, \
             `http-request add-header X-Forwarded-Proto https if {{ ssl_fc }}`), HAProxy's default threads (one \
             per core). lb: `lb run --marathon … --hook tc --http-listen 0.0.0.0:80` following the Marathon \
             stand-in serving that app. HAProxy opens a new connection to a task per request; lb reuses one idle to that task (http/pool.rs). From the client: \
             `wrk -t1 -c{CONNECTIONS} -d{secs}s -H 'Host: {VHOST}'`, keep-alive, then with `Connection: close` \
             (a TCP connection per request); then the same over TLS to `https://{VHOST}/` (SNI {VHOST}; one \
             RSA 2048 certificate for both, HAProxy's `frontend marathon_https_in` with `bind *:443 ssl crt …` \
             and `use_backend … if {{ ssl_fc_sni {VHOST} }}`, lb's `--ssl-certs`); latency is wrk's distribution in the keep-alive run (closed loop, \
             32 connections: at saturation, not a fixed rate). Fixed rate: `lbt-rate` sends {FIXED_RATE} \
             requests/s over {CONNECTIONS} keep-alive connections for {secs} s (after 1 s of warm-up), each on a \
             fixed schedule, latency counted from when a request was due (an open loop, as wrk2). Download: \
             `curl` of a 100 MB file from nginx through the vhost, median of 3 per round. Tunnel: a second app \
             `/echo` (`HAPROXY_0_VHOST={ECHO_VHOST}`, `lbt-server` on :{ECHO_PORT} in the three tasks); \
             `lbt-tunnel` upgrades one connection through the vhost and sends 1 GiB up while the task echoes it \
             back, median of 3 per round; lb relays it with splice(2), and once more with `--no-splice` (through \
             its buffers, as HAProxy in marathon-lb's configuration, which sets no `option splice-*`). \
             {rounds} round(s), each front end on a fresh topology, \
             interleaved, order rotated per round; median (min–max) over rounds.",
            secs = effort.seconds,
            rounds = effort.rounds
        ),
    );
    for f in Front::ALL {
        for m in Metric::ALL.into_iter().filter(|&m| f.measures(m)) {
            let Some(s) = spread(f, m) else {
                t.row(
                    vec![
                        f.label().into(),
                        m.label().into(),
                        "not measured".into(),
                        "—".into(),
                    ],
                    json!({"front_end": f.label(), "metric": m.label(), "value": null}),
                );
                continue;
            };
            let digits = if matches!(m, Metric::Download | Metric::Tunnel) {
                2
            } else {
                0
            };
            let r = spread(Front::Haproxy, m).map(|h| s.median / h.median);
            t.row(
                vec![
                    f.label().into(),
                    m.label().into(),
                    s.show(digits),
                    r.map_or("—".into(), |r| format!("{r:.2}")),
                ],
                json!({"front_end": f.label(), "metric": m.label(), "value": s.json(),
                       "ratio_to_haproxy": r, "higher_is_better": m.higher_is_better()}),
            );
        }
    }
    report.tables.push(t);
    let target = |what: String, l: Option<Spread>, h: Option<Spread>, met: fn(f64, f64) -> bool| {
        match (l, h) {
            (Some(l), Some(h)) => Target {
                what,
                got: format!(
                    "{:.2}× ({:.1} vs {:.1})",
                    l.median / h.median,
                    l.median,
                    h.median
                ),
                met: Some(met(l.median, h.median)),
            },
            _ => Target {
                what,
                got: "missing figures".into(),
                met: None,
            },
        }
    };
    for m in [
        Metric::KeepAlive,
        Metric::NewConn,
        Metric::TlsKeepAlive,
        Metric::TlsNewConn,
    ] {
        report.targets.push(target(
            format!("HTTP vhost {}, lb ≥ 1.0× HAProxy", m.label()),
            spread(Front::Lb, m),
            spread(Front::Haproxy, m),
            |l, h| l >= h,
        ));
    }
    report.targets.push(target(
        format!("HTTP vhost {}, lb ≤ HAProxy", Metric::FixedP99.label()),
        spread(Front::Lb, Metric::FixedP99),
        spread(Front::Haproxy, Metric::FixedP99),
        |l, h| l <= h,
    ));
    report.targets.push(target(
        format!(
            "HTTP vhost {}: splice(2) above lb's --no-splice (kept only if it helps)",
            Metric::Tunnel.label()
        ),
        spread(Front::Lb, Metric::Tunnel),
        spread(Front::LbCopy, Metric::Tunnel),
        |l, c| l > c,
    ));
    for n in notes {
        report.failures.push(format!("http: {n}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haproxy_has_marathon_lbs_vhost_lines() {
        let c = haproxy_conf("/d");
        for line in [
            "  option http-server-close\n",
            "  mode http\n  acl host_bench_acme_org hdr(host) -i bench.acme.org\n  use_backend nginx_10000 if host_bench_acme_org\n",
            "  balance roundrobin\n  mode http\n  option forwardfor\n",
            "  http-request set-header X-Forwarded-Port %[dst_port]\n",
            "  http-request add-header X-Forwarded-Proto https if { ssl_fc }\n",
            "  acl host_echo_acme_org hdr(host) -i echo.acme.org\n  use_backend echo_10001 if host_echo_acme_org\n",
            "backend echo_10001\n  balance roundrobin\n  mode http\n  option forwardfor\n",
        ] {
            assert!(c.contains(line), "{line:?} missing from:\n{c}");
        }
        // The nginx app's three tasks on :80, the echo app's on :8080.
        assert_eq!(c.matches("  server ").count(), 2 * TASKS.len());
        assert_eq!(c.matches(":8080\n").count(), TASKS.len());
    }
}
