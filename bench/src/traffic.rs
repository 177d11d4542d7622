//! Real traffic through the agent topology: nginx in the task namespaces, wrk and iperf3 from the
//! client, with plain routing, HAProxy, nftables and `lb` (XDP and TC) each on a fresh topology.
use std::{
    collections::BTreeMap, fs, net::SocketAddrV4, path::Path, process::Command, thread,
    time::Duration,
};

use lb_tests::{
    lb,
    netns::{AGENT, TASKS, Topology, in_netns, wait_tcp},
};
use serde_json::{Value, json};

use super::{
    Effort,
    report::{Report, Spread, Table, Target},
};

const PREFIX: &str = "lbb";
/// The balanced HTTP service (all three tasks) and the throughput service (t1's iperf3 only:
/// iperf3 opens a control and a data connection, which must reach the same server).
const WEB_PORT: u16 = 10000;
const IPERF_PORT: u16 = 10001;
const TASK_IPERF: u16 = 5201;
/// Concurrent connections for the request-rate runs.
pub(super) const CONNECTIONS: u32 = 32;
/// wrk processes (one thread each) that share those connections, for every contender.
const LOADERS: u32 = 3;
/// Size of the file every task's nginx serves at `/big/100m`.
pub(super) const BIG_FILE: u64 = 100 << 20;

/// What carries the client's traffic to the tasks. The traffic section measures the first five;
/// the sustained section adds `lb`'s DNAT mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Contender {
    /// No balancer: the client addresses the tasks themselves, through the agent's routing.
    Plain,
    Haproxy,
    Nftables,
    LbXdp,
    LbTc,
    /// `lb --hook tc --preserve-client-ip`: DNAT, replies route back through the agent.
    LbTcPreserve,
}

impl Contender {
    const ALL: [Contender; 5] = [
        Contender::Plain,
        Contender::Haproxy,
        Contender::Nftables,
        Contender::LbXdp,
        Contender::LbTc,
    ];
    pub(super) fn label(self) -> &'static str {
        match self {
            Contender::Plain => "no balancer, tasks direct (limit)",
            Contender::Haproxy => "HAProxy (marathon-lb style)",
            Contender::Nftables => "nftables DNAT + masquerade",
            Contender::LbXdp => "lb --hook xdp",
            Contender::LbTc => "lb --hook tc",
            Contender::LbTcPreserve => "lb --hook tc --preserve-client-ip",
        }
    }
    pub(super) fn is_lb(self) -> bool {
        matches!(
            self,
            Contender::LbXdp | Contender::LbTc | Contender::LbTcPreserve
        )
    }
    /// The one web address a single connection goes to: t1 itself without a balancer.
    fn web(self) -> SocketAddrV4 {
        match self {
            Contender::Plain => SocketAddrV4::new(TASKS[0].1, 80),
            _ => SocketAddrV4::new(AGENT, WEB_PORT),
        }
    }
    /// Where request-rate load goes: the three tasks directly without a balancer, so the
    /// limit has the same three servers behind it as the balancers do.
    pub(super) fn webs(self) -> Vec<SocketAddrV4> {
        match self {
            Contender::Plain => TASKS
                .iter()
                .map(|(_, a, _, _)| SocketAddrV4::new(*a, 80))
                .collect(),
            _ => vec![SocketAddrV4::new(AGENT, WEB_PORT)],
        }
    }
    fn iperf(self) -> SocketAddrV4 {
        match self {
            Contender::Plain => SocketAddrV4::new(TASKS[0].1, TASK_IPERF),
            _ => SocketAddrV4::new(AGENT, IPERF_PORT),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Metric {
    NewConn,
    KeepAlive,
    Throughput,
    P50,
    P99,
}

impl Metric {
    const ALL: [Metric; 5] = [
        Metric::NewConn,
        Metric::KeepAlive,
        Metric::Throughput,
        Metric::P50,
        Metric::P99,
    ];
    fn label(self) -> &'static str {
        match self {
            Metric::NewConn => "requests/s, new connection each",
            Metric::KeepAlive => "requests/s, keep-alive",
            Metric::Throughput => "TCP throughput, Gbit/s",
            Metric::P50 => "latency p50, µs (1 connection)",
            Metric::P99 => "latency p99, µs (1 connection)",
        }
    }
    fn higher_is_better(self) -> bool {
        !matches!(self, Metric::P50 | Metric::P99)
    }
}

fn nginx_conf(dir: &str) -> String {
    // One process (no master), so killing it leaves nothing behind; a tiny fixed answer, so the
    // figures are about the path, not the server; `/big/100m` (`BIG_FILE`) for downloads.
    format!(
        "daemon off;\nmaster_process off;\nworker_rlimit_nofile 65536;\npid {dir}/nginx.pid;\n\
         error_log stderr error;\nevents {{ worker_connections 16384; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 1000000;\n  client_body_temp_path {dir};\n  \
         proxy_temp_path {dir};\n  fastcgi_temp_path {dir};\n  uwsgi_temp_path {dir};\n  scgi_temp_path {dir};\n  \
         server {{\n    listen 80 reuseport backlog=4096;\n    location / {{ return 200 \"ok\\n\"; }}\n    \
         location /big/ {{ root {dir}; }}\n  }}\n}}\n"
    )
}

fn haproxy_conf(dir: &str) -> String {
    // Global maxconn: marathon-lb's 50,000 needs ~100,000 descriptors, above this machine's hard
    // limit (20,000) which root here may not raise; 9,000 never binds at 32 connections.
    // Otherwise marathon-lb's defaults as far as TCP mode uses them (defaults' backlog,
    // maxconn, retries, redispatch, timeouts), one frontend and backend per service port, no
    // health checks (the apps declare none), no logging.
    let servers: Vec<String> = TASKS
        .iter()
        .map(|(t, a, _, _)| format!("  server {t} {a}:80"))
        .collect();
    format!(
        "global\n  maxconn 9000\n  pidfile {dir}/haproxy.pid\n\
         defaults\n  retries 3\n  backlog 10000\n  maxconn 10000\n  timeout connect 3s\n  \
         timeout client 30s\n  timeout server 30s\n  timeout tunnel 3600s\n  option redispatch\n  \
         option dontlognull\n\
         frontend web_{WEB_PORT}\n  bind *:{WEB_PORT}\n  mode tcp\n  use_backend web_{WEB_PORT}\n\
         backend web_{WEB_PORT}\n  balance roundrobin\n  mode tcp\n{}\n\
         frontend iperf_{IPERF_PORT}\n  bind *:{IPERF_PORT}\n  mode tcp\n  use_backend iperf_{IPERF_PORT}\n\
         backend iperf_{IPERF_PORT}\n  balance roundrobin\n  mode tcp\n  server t1 {}:{TASK_IPERF}\n",
        servers.join("\n"),
        TASKS[0].1
    )
}

fn nft_rules() -> String {
    let [(_, a1, ..), (_, a2, ..), (_, a3, ..)] = TASKS;
    format!(
        "table ip lbb {{\n\
         chain pre {{ type nat hook prerouting priority dstnat; policy accept;\n\
           ip daddr {AGENT} tcp dport {WEB_PORT} dnat ip to numgen inc mod 3 map {{ 0 : {a1} . 80, 1 : {a2} . 80, 2 : {a3} . 80 }}\n\
           ip daddr {AGENT} tcp dport {IPERF_PORT} dnat ip to {a1}:{TASK_IPERF}\n\
         }}\n\
         chain post {{ type nat hook postrouting priority srcnat; policy accept;\n\
           ct status dnat masquerade\n\
         }}\n}}\n"
    )
}

fn services_json(dir: &str) -> String {
    let backends: Vec<String> = TASKS
        .iter()
        .map(|(_, a, _, _)| format!("\"{a}:80\""))
        .collect();
    let path = format!("{dir}/services.json");
    fs::write(
        &path,
        format!(
            r#"{{"services": [
                {{"name": "web_{WEB_PORT}", "port": {WEB_PORT}, "protocol": "tcp", "backends": [{}]}},
                {{"name": "iperf_{IPERF_PORT}", "port": {IPERF_PORT}, "protocol": "tcp", "backends": ["{}:{TASK_IPERF}"]}}]}}"#,
            backends.join(", "),
            TASKS[0].1
        ),
    )
    .expect("write services file");
    path
}

fn log(dir: &str, name: &str) -> fs::File {
    fs::File::create(format!("{dir}/{name}.log")).expect("create a log file")
}

/// A fresh topology named `prefix` with nginx and an iperf3 server in every task and `c` in
/// place on the agent, the veths set up for XDP.
pub(super) fn topology(prefix: &str, c: Contender) -> Topology {
    topology_for(prefix, c, true)
}

/// `topology`, with the veths set up for XDP (`xdp`: GRO on, checksum offload and with it
/// TSO off at the far ends, for every contender alike) or left at the kernel's defaults (an L7
/// proxy's view of a NIC: segmentation offloads on).
pub(super) fn topology_for(prefix: &str, c: Contender, xdp: bool) -> Topology {
    let mut topo = Topology::new(prefix);
    // XDP needs these on veth (see tests/e2e.rs); every contender gets them, for fairness.
    for ns in ["client", "t1", "t2", "agent2"].into_iter().filter(|_| xdp) {
        topo.sh(ns, "ethtool -K eth0 gro on tx off >/dev/null");
    }
    for ns in ["client", "agent", "agent2", "t1", "t2", "t3"] {
        // Many short connections: let the client reuse TIME_WAIT ports, same for everyone.
        topo.sh(
            ns,
            "sysctl -qw net.ipv4.tcp_tw_reuse=1 net.ipv4.ip_local_port_range='32768 60999' \
             net.core.somaxconn=4096 net.ipv4.tcp_max_syn_backlog=4096",
        );
    }
    let dir = format!("/tmp/{prefix}-run");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("bench run directory");
    for (task, addr, _, _) in TASKS {
        let tdir = format!("{dir}/{task}");
        fs::create_dir_all(&tdir).unwrap();
        fs::write(format!("{tdir}/nginx.conf"), nginx_conf(&tdir)).unwrap();
        // Sparse: 100 MB of zeros from the page cache, nothing on disk.
        fs::create_dir_all(format!("{tdir}/big")).unwrap();
        fs::File::create(format!("{tdir}/big/100m"))
            .and_then(|f| f.set_len(BIG_FILE))
            .expect("the download file");
        let mut ng = topo.cmd(task, Path::new("nginx"));
        ng.stderr(log(&tdir, "nginx"));
        ng.args(["-p", &tdir, "-c", &format!("{tdir}/nginx.conf")]);
        topo.spawn(&format!("nginx-{task}"), ng);
        let mut ip = topo.cmd(task, Path::new("iperf3"));
        // Its complaints about the readiness probe's empty connections go to a file.
        ip.args(["-s", "-p", &TASK_IPERF.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(log(&tdir, "iperf3"));
        topo.spawn(&format!("iperf3-{task}"), ip);
        for port in [80, TASK_IPERF] {
            let target = SocketAddrV4::new(addr, port);
            let up = in_netns(&topo.ns("client"), move || {
                wait_tcp(target, Duration::from_secs(10))
            });
            assert!(up, "{task} does not answer on {target}");
        }
    }
    match c {
        Contender::Plain => {}
        Contender::Haproxy => {
            let cfg = format!("{dir}/haproxy.cfg");
            fs::write(&cfg, haproxy_conf(&dir)).unwrap();
            let mut h = topo.cmd("agent", Path::new("haproxy"));
            h.stderr(log(&dir, "haproxy"))
                .stdout(std::process::Stdio::null());
            h.args(["-db", "-f", &cfg]);
            topo.spawn("haproxy", h);
        }
        Contender::Nftables => {
            let rules = format!("{dir}/rules.nft");
            fs::write(&rules, nft_rules()).unwrap();
            topo.sh("agent", &format!("nft -f {rules}"));
        }
        Contender::LbXdp | Contender::LbTc | Contender::LbTcPreserve => {
            let services = services_json(&dir);
            // Peer redirect on for the tasks' veths, which carry no egress policy here; not for
            // the uplink and the link to agent2, whose peers stand for other hosts (a NIC there
            // could not hand a packet into the far side).
            let mut args = vec![
                "--iface",
                "eth*",
                "--iface",
                "cali*",
                "--redirect-peer",
                "--redirect-peer-iface",
                "cali*",
                "--config",
                &services,
            ];
            match c {
                Contender::LbXdp => args.extend(["--hook", "xdp", "--xdp-redirect", "*"]),
                Contender::LbTcPreserve => args.extend(["--hook", "tc", "--preserve-client-ip"]),
                _ => args.extend(["--hook", "tc"]),
            }
            lb::start(&mut topo, "lb", &args, 2);
        }
    }
    for target in [c.web(), c.iperf()] {
        let up = in_netns(&topo.ns("client"), move || {
            wait_tcp(target, Duration::from_secs(10))
        });
        assert!(up, "{} does not answer on {target}", c.label());
    }
    topo
}

/// Runs a command in the client namespace, bounded by `limit` seconds, and returns its stdout.
pub(super) fn client_cmd(topo: &Topology, args: &[&str], limit: u32) -> Result<String, String> {
    let mut cmd = Command::new("timeout");
    cmd.args([
        "-k",
        "5",
        &limit.to_string(),
        "ip",
        "netns",
        "exec",
        &topo.ns("client"),
    ])
    .args(args);
    let out = cmd.output().map_err(|e| format!("{args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// wrk's `Requests/sec`, its latency percentiles (µs) and any errors it reported.
pub(super) struct Wrk {
    pub(super) rps: f64,
    pub(super) p50_us: Option<f64>,
    pub(super) p99_us: Option<f64>,
    pub(super) errors: Option<String>,
}

fn duration_us(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e6)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|v| v * mult)
}

fn parse_wrk(out: &str) -> Result<Wrk, String> {
    let rps = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no Requests/sec in wrk output:\n{out}"))?;
    let pct = |p: &str| {
        out.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(p))
            .and_then(duration_us)
    };
    let errors: Vec<&str> = out
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("Socket errors") || l.starts_with("Non-2xx"))
        .collect();
    Ok(Wrk {
        rps,
        p50_us: pct("50%"),
        p99_us: pct("99%"),
        errors: (!errors.is_empty()).then(|| errors.join("; ")),
    })
}

/// `conns` connections from [`LOADERS`] wrk processes run at the same time, the i-th aimed at
/// `targets[i % len]`, their request rates summed (latency is left out: a sum of distributions is
/// none of them). Every contender gets the same load generators: the limit's three aim at the
/// three tasks, a balancer's three at its one address, so the difference is the balancer alone.
fn wrk_spread(
    topo: &Topology,
    targets: &[SocketAddrV4],
    conns: u32,
    secs: u32,
    close: bool,
) -> Result<Wrk, String> {
    let n = LOADERS;
    let results: Vec<(SocketAddrV4, Result<Wrk, String>)> = thread::scope(|s| {
        let runs: Vec<_> = (0..n)
            .map(|i| {
                let t = targets[i as usize % targets.len()];
                // The remainder goes to the first loaders: 32 over 3 is 11, 11, 10.
                let c = conns / n + u32::from(i < conns % n);
                let url = format!("http://{t}/");
                (t, s.spawn(move || wrk(topo, &url, c, secs, close)))
            })
            .collect();
        runs.into_iter()
            .map(|(t, r)| (t, r.join().expect("a wrk thread panicked")))
            .collect()
    });
    let mut sum = Wrk {
        rps: 0.0,
        p50_us: None,
        p99_us: None,
        errors: None,
    };
    let mut errors = Vec::new();
    for (t, r) in results {
        let w = r?;
        sum.rps += w.rps;
        if let Some(e) = w.errors {
            errors.push(format!("{t}: {e}"));
        }
    }
    sum.errors = (!errors.is_empty()).then(|| errors.join("; "));
    Ok(sum)
}

fn wrk(topo: &Topology, url: &str, conns: u32, secs: u32, close: bool) -> Result<Wrk, String> {
    wrk_with(topo, url, conns, secs, close, &[])
}

/// `wrk` with extra request headers (`-H`), e.g. a virtual host's `Host`.
pub(super) fn wrk_with(
    topo: &Topology,
    url: &str,
    conns: u32,
    secs: u32,
    close: bool,
    headers: &[&str],
) -> Result<Wrk, String> {
    let c = conns.to_string();
    let d = format!("{secs}s");
    let mut args = vec![
        "wrk",
        "-t1",
        "-c",
        &c,
        "-d",
        &d,
        "--latency",
        "--timeout",
        "2s",
    ];
    if close {
        args.extend(["-H", "Connection: close"]);
    }
    for h in headers {
        args.extend(["-H", h]);
    }
    args.push(url);
    parse_wrk(&client_cmd(topo, &args, secs + 20)?)
}

fn iperf(topo: &Topology, target: SocketAddrV4, secs: u32) -> Result<f64, String> {
    let out = client_cmd(
        topo,
        &[
            "iperf3",
            "-c",
            &target.ip().to_string(),
            "-p",
            &target.port().to_string(),
            "-t",
            &secs.to_string(),
            "-J",
        ],
        secs + 20,
    )?;
    let v: Value = serde_json::from_str(&out).map_err(|e| format!("iperf3 JSON: {e}"))?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .ok_or_else(|| format!("no throughput in iperf3 output: {}", v["error"]))
}

/// One contender, one round: every metric on one fresh topology.
fn measure(
    c: Contender,
    effort: &Effort,
    notes: &mut Vec<String>,
    counters: &mut Vec<String>,
) -> BTreeMap<Metric, f64> {
    let topo = topology(PREFIX, c);
    let url = format!("http://{}/", c.web());
    let secs = effort.seconds;
    let mut got = BTreeMap::new();
    // A short warm-up so the first measured second does not pay for cold caches and ARP.
    let _ = wrk(&topo, &url, 4, 1, false);
    let mut note = |what: &str, e: String| notes.push(format!("{} {what}: {e}", c.label()));
    match wrk_spread(&topo, &c.webs(), CONNECTIONS, secs, true) {
        Ok(w) => {
            got.insert(Metric::NewConn, w.rps);
            if let Some(e) = w.errors {
                note("new connections", e);
            }
        }
        Err(e) => note("new connections", e),
    }
    match wrk_spread(&topo, &c.webs(), CONNECTIONS, secs, false) {
        Ok(w) => {
            got.insert(Metric::KeepAlive, w.rps);
            if let Some(e) = w.errors {
                note("keep-alive", e);
            }
        }
        Err(e) => note("keep-alive", e),
    }
    match wrk(&topo, &url, 1, secs, false) {
        Ok(w) => {
            if let Some(p) = w.p50_us {
                got.insert(Metric::P50, p);
            }
            if let Some(p) = w.p99_us {
                got.insert(Metric::P99, p);
            }
        }
        Err(e) => note("latency", e),
    }
    match iperf(&topo, c.iperf(), secs) {
        Ok(g) => {
            got.insert(Metric::Throughput, g);
        }
        Err(e) => note("iperf3", e),
    }
    if c.is_lb()
        && let Some(st) = lb::status(&topo)
    {
        // The data plane's own account of the run: drops and passes by cause.
        let now: Vec<String> = st["dataplane"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, v)| {
                (k.starts_with("drop") || k.starts_with("error") || k.starts_with("flow"))
                    && v.as_u64() != Some(0)
            })
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        counters.push(format!("{}: {}", c.label(), now.join(", ")));
    }
    drop(topo);
    // Let the namespaces' sockets and conntrack go before the next contender starts.
    thread::sleep(Duration::from_millis(500));
    got
}

pub fn run(effort: &Effort, report: &mut Report) {
    let mut samples: BTreeMap<(Contender, Metric), Vec<f64>> = BTreeMap::new();
    let mut notes = Vec::new();
    let mut counters = Vec::new();
    for round in 0..effort.rounds {
        // Interleaved, and the order turned each round, so drift in the machine's load
        // spreads over all contenders instead of landing on one.
        let mut order = Contender::ALL.to_vec();
        order.rotate_left(round % Contender::ALL.len());
        for c in order {
            eprintln!("    round {}: {}", round + 1, c.label());
            let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                measure(c, effort, &mut notes, &mut counters)
            }));
            match got {
                Ok(got) => {
                    for (m, v) in got {
                        samples.entry((c, m)).or_default().push(v);
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
                        c.label(),
                        round + 1
                    ));
                }
            }
        }
    }
    let spread = |c: Contender, m: Metric| samples.get(&(c, m)).map(|v| Spread::of(v));
    let mut t = Table::new(
        "Through the agent: client → agent → tasks, real TCP",
        &[
            "contender",
            "metric",
            "median (min–max)",
            "÷ limit",
            "÷ HAProxy",
        ],
        &format!(
            "Topology of the end-to-end tests (client → agent → tasks t1, t2 on the agent, t3 behind agent2), nginx \
             (one process, fixed 3-byte answer) in every task, load from the client namespace. Each contender runs \
             on a fresh topology per round ({} round(s), interleaved, order rotated per round); figures are the \
             median and min–max over rounds. Same tuning for all: GRO on and TX checksum offload off on the \
             far-end veths (what XDP needs), tcp_tw_reuse on the client. Requests/s: three `wrk -t1` processes \
             at the same time sharing {CONNECTIONS} connections (11, 11, 10), `-d{}s`, their rates summed, with \
             `Connection: close` (a TCP connection per request) or keep-alive; the same three for every contender. Throughput: `iperf3 \
             -t {}` to t1's iperf3 server (one-backend service port for the balancers: iperf3's control and data \
             connections must meet the same server). Latency: wrk's latency distribution with one keep-alive \
             connection (closed loop: the next request leaves when the answer is in; not a fixed-rate test). The \
             limit has no balancer: for requests/s, the three wrk aim at the three tasks (one each) where a \
             balancer's aim at its address; for throughput and latency, which one connection measures, t1 \
             directly. The balancers spread over t1, t2 and t3 (t3 one hop further). Ratios: median ÷ the limit's / HAProxy's median (for latency, above 1 is slower).",
            effort.rounds, effort.seconds, effort.seconds
        ),
    );
    for c in Contender::ALL {
        for m in Metric::ALL {
            let Some(s) = spread(c, m) else {
                t.row(
                    vec![
                        c.label().into(),
                        m.label().into(),
                        "not measured".into(),
                        "—".into(),
                        "—".into(),
                    ],
                    json!({"contender": c.label(), "metric": m.label(), "value": null}),
                );
                continue;
            };
            let digits = if m == Metric::Throughput { 2 } else { 0 };
            let ratio = |other: Contender| spread(other, m).map(|o| s.median / o.median);
            let (rl, rh) = (ratio(Contender::Plain), ratio(Contender::Haproxy));
            t.row(
                vec![
                    c.label().into(),
                    m.label().into(),
                    s.show(digits),
                    rl.map_or("—".into(), |r| format!("{r:.2}")),
                    rh.map_or("—".into(), |r| format!("{r:.2}")),
                ],
                json!({"contender": c.label(), "metric": m.label(), "value": s.json(),
                       "ratio_to_limit": rl, "ratio_to_haproxy": rh, "higher_is_better": m.higher_is_better()}),
            );
        }
    }
    report.tables.push(t);
    let median = |c, m| spread(c, m).map(|s| s.median);
    let lb = Contender::LbXdp;
    for lbc in [Contender::LbXdp, Contender::LbTc] {
        let name = if lbc == lb { "xdp" } else { "tc" };
        match (
            median(lbc, Metric::NewConn),
            median(Contender::Haproxy, Metric::NewConn),
            median(Contender::Nftables, Metric::NewConn),
        ) {
            (Some(l), Some(h), Some(n)) => {
                report.targets.push(Target {
                    what: format!("new-connection requests/s, lb ({name}) ≥ 1.5× HAProxy"),
                    got: format!("{:.2}× ({l:.0} vs {h:.0})", l / h),
                    met: Some(l >= 1.5 * h),
                });
                report.targets.push(Target {
                    what: format!("new-connection requests/s, lb ({name}) ≥ nftables"),
                    got: format!("{:.2}× ({l:.0} vs {n:.0})", l / n),
                    met: Some(l >= n),
                });
            }
            _ => report.targets.push(Target {
                what: format!("new-connection requests/s, lb ({name}) vs HAProxy and nftables"),
                got: "missing figures".into(),
                met: None,
            }),
        }
        match (
            median(lbc, Metric::KeepAlive),
            median(Contender::Plain, Metric::KeepAlive),
        ) {
            (Some(l), Some(p)) => report.targets.push(Target {
                what: format!("keep-alive requests/s, lb ({name}) within 10% of the limit (no balancer, three tasks)"),
                got: format!("{:.2}× ({l:.0} vs {p:.0})", l / p),
                met: Some(l >= 0.9 * p),
            }),
            _ => report.targets.push(Target {
                what: format!("keep-alive requests/s, lb ({name}) within 10% of the limit (no balancer, three tasks)"),
                got: "missing figures".into(),
                met: None,
            }),
        }
    }
    for n in notes {
        report.failures.push(format!("traffic: {n}"));
    }
    if !counters.is_empty() {
        report.notes.push(format!(
            "data-plane counters after each lb traffic run (flows, drops, errors; `lb status --json`): {}",
            counters.join("; ")
        ));
    }
}
