//! HTTP virtual hosts against HAProxy as marathon-lb configures a `HAPROXY_0_VHOST` app: wrk
//! (plain and TLS) and a large download from the client, through the agent to the same nginx
//! tasks.
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Front {
    Haproxy,
    Lb,
}

impl Front {
    const ALL: [Front; 2] = [Front::Haproxy, Front::Lb];
    fn label(self) -> &'static str {
        match self {
            Front::Haproxy => "HAProxy, as marathon-lb configures a vhost",
            Front::Lb => "lb's HTTP front end",
        }
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
    Download,
}

impl Metric {
    const ALL: [Metric; 7] = [
        Metric::KeepAlive,
        Metric::NewConn,
        Metric::TlsKeepAlive,
        Metric::TlsNewConn,
        Metric::P50,
        Metric::P99,
        Metric::Download,
    ];
    fn label(self) -> &'static str {
        match self {
            Metric::KeepAlive => "requests/s, keep-alive",
            Metric::NewConn => "requests/s, new connection each",
            Metric::TlsKeepAlive => "TLS requests/s, keep-alive",
            Metric::TlsNewConn => "TLS requests/s, new connection (handshake) each",
            Metric::P50 => "latency p50 µs, keep-alive, 32 connections",
            Metric::P99 => "latency p99 µs, keep-alive, 32 connections",
            Metric::Download => "100 MB download, Gbit/s",
        }
    }
    fn higher_is_better(self) -> bool {
        !matches!(self, Metric::P50 | Metric::P99)
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
    let acl = VHOST.replace('.', "_");
    format!(
        "global\n  maxconn 9000\n  pidfile {dir}/haproxy.pid\n\
         defaults\n  retries 3\n  backlog 10000\n  maxconn 10000\n  timeout connect 3s\n  \
         timeout client 30s\n  timeout server 30s\n  timeout tunnel 3600s\n  timeout http-keep-alive 1s\n  \
         timeout http-request 15s\n  timeout queue 30s\n  timeout tarpit 60s\n  option dontlognull\n  \
         option http-server-close\n  option redispatch\n\
         frontend marathon_http_in\n  bind *:80\n  mode http\n  \
         acl host_{acl} hdr(host) -i {VHOST}\n  use_backend nginx_{SERVICE_PORT} if host_{acl}\n\
         frontend marathon_https_in\n  bind *:443 ssl crt {dir}/{CERT}\n  mode http\n  \
         use_backend nginx_{SERVICE_PORT} if {{ ssl_fc_sni {VHOST} }}\n\
         frontend nginx_{SERVICE_PORT}\n  bind *:{SERVICE_PORT}\n  mode http\n  use_backend nginx_{SERVICE_PORT}\n\
         backend nginx_{SERVICE_PORT}\n  balance roundrobin\n  mode http\n  option forwardfor\n  \
         http-request set-header X-Forwarded-Port %[dst_port]\n  \
         http-request add-header X-Forwarded-Proto https if {{ ssl_fc }}\n{}\n",
        servers.join("\n")
    )
}

/// The same app as Marathon lists it, for lb: the three tasks at their Calico IPs, port 80.
fn apps_doc() -> Value {
    json!({"apps": [{
        "id": "/nginx", "instances": TASKS.len(),
        "container": {"type": "DOCKER", "docker": {"image": "nginx"},
                      "portMappings": [{"containerPort": 80, "servicePort": SERVICE_PORT, "protocol": "tcp"}]},
        "networks": [{"name": "calico", "mode": "container"}],
        "labels": {"HAPROXY_GROUP": "external", "HAPROXY_0_VHOST": VHOST},
        "tasks": TASKS.iter().map(|(t, ip, _, _)| json!({
            "id": format!("nginx.{t}"), "appId": "/nginx", "state": "TASK_RUNNING",
            "host": AGENT.to_string(), "ports": [], "servicePorts": [SERVICE_PORT],
            "ipAddresses": [{"ipAddress": ip.to_string(), "protocol": "IPv4"}],
        })).collect::<Vec<_>>(),
    }]})
}

/// nginx in the tasks (the traffic section's), and `f` on the agent's port 80.
fn setup(f: Front) -> (Topology, Option<NsStandin>) {
    let mut topo = traffic::topology(PREFIX, Contender::Plain);
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
        Front::Lb => {
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
                ],
                1,
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

fn measure(f: Front, effort: &Effort, notes: &mut Vec<String>) -> Vec<(Metric, f64)> {
    let (topo, standin) = setup(f);
    let url = format!("http://{AGENT}/");
    let host = format!("Host: {VHOST}");
    let secs = effort.seconds;
    let mut got = Vec::new();
    let _ = wrk_with(&topo, &url, 4, 1, false, &[&host]);
    let mut note = |what: &str, e: String| notes.push(format!("{} {what}: {e}", f.label()));
    match wrk_with(&topo, &url, CONNECTIONS, secs, false, &[&host]) {
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
    match wrk_with(&topo, &url, CONNECTIONS, secs, true, &[&host]) {
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
        match wrk_with(&topo, &tls, CONNECTIONS, secs, close, &[]) {
            Ok(w) => {
                got.push((m, w.rps));
                if let Some(e) = w.errors {
                    note(m.label(), e);
                }
            }
            Err(e) => note(m.label(), e),
        }
    }
    let downloads: Vec<f64> = (0..3)
        .filter_map(|_| match download(&topo) {
            Ok(g) => Some(g),
            Err(e) => {
                note("download", e);
                None
            }
        })
        .collect();
    if !downloads.is_empty() {
        got.push((Metric::Download, Spread::of(&downloads).median));
    }
    let _ = fs::remove_dir_all(format!("/etc/netns/{}", topo.ns("client")));
    drop(topo);
    drop(standin);
    thread::sleep(Duration::from_millis(500));
    got
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
            "The traffic section's topology and nginx tasks (t1, t2 on the agent, t3 behind agent2); one app \
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
             32 connections: at saturation, not a fixed rate). Download: `curl` of a 100 MB file from nginx \
             through the vhost, median of 3 per round. {rounds} round(s), each front end on a fresh topology, \
             interleaved, order rotated per round; median (min–max) over rounds.",
            secs = effort.seconds,
            rounds = effort.rounds
        ),
    );
    for f in Front::ALL {
        for m in Metric::ALL {
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
            let digits = if m == Metric::Download { 2 } else { 0 };
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
    for m in [
        Metric::KeepAlive,
        Metric::NewConn,
        Metric::TlsKeepAlive,
        Metric::TlsNewConn,
    ] {
        let what = format!("HTTP vhost {}, lb ≥ 1.0× HAProxy", m.label());
        match (spread(Front::Lb, m), spread(Front::Haproxy, m)) {
            (Some(l), Some(h)) => report.targets.push(Target {
                what,
                got: format!(
                    "{:.2}× ({:.0} vs {:.0})",
                    l.median / h.median,
                    l.median,
                    h.median
                ),
                met: Some(l.median >= h.median),
            }),
            _ => report.targets.push(Target {
                what,
                got: "missing figures".into(),
                met: None,
            }),
        }
    }
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
        ] {
            assert!(c.contains(line), "{line:?} missing from:\n{c}");
        }
        assert_eq!(c.matches("  server ").count(), TASKS.len());
    }
}
