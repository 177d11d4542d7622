//! Driving the real `lb` binary in the agent namespace: start it, wait for it, ask it for
//! status, and a Marathon stand-in living in the agent namespace for it to follow.
use std::{
    fs,
    path::PathBuf,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    client::http_get,
    marathon_standin::Standin,
    netns::{Topology, in_netns, lb_bin},
};

/// `GET path` from the daemon's HTTP listener on `127.0.0.1:port` in the agent namespace
/// (`/metrics`, `/healthz`, Mesos-DNS's `/v1/…`); the body.
pub fn agent_http(topo: &Topology, port: u16, path: &'static str) -> Result<Vec<u8>, String> {
    in_netns(&topo.ns("agent"), move || {
        http_get(
            std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, port),
            path,
            Duration::from_secs(3),
        )
    })
}

/// Starts `lb run` in the agent namespace with `args` (after `--pin-path`), logging to a file,
/// and waits until its state shows `services` services applied.
pub fn start(topo: &mut Topology, label: &str, args: &[&str], services: usize) -> PathBuf {
    start_within(topo, label, args, services, Duration::from_secs(20))
}

/// `start`, allowing `within` for the services to be applied (large states take longer).
pub fn start_within(
    topo: &mut Topology,
    label: &str,
    args: &[&str],
    services: usize,
    within: Duration,
) -> PathBuf {
    let log = PathBuf::from(format!("/tmp/{}-{label}.log", topo.prefix));
    let out = fs::File::create(&log).expect("create lb log");
    let mut cmd = topo.cmd("agent", &lb_bin());
    cmd.arg("run")
        .arg("--pin-path")
        .arg(topo.pin_path())
        .args(args);
    if !args.contains(&"--metrics") {
        // Daemons of several tests may coexist in different namespaces; any port will do.
        cmd.args(["--metrics", "127.0.0.1:0"]);
    }
    cmd.stdout(Stdio::null()).stderr(out);
    topo.spawn(label, cmd);
    let deadline = Instant::now() + within;
    loop {
        if let Some(st) = status(topo)
            && st["services"].as_array().map_or(0, Vec::len) >= services
            && st["daemon"]["running"] == true
        {
            return log;
        }
        if let Some(st) = topo.exited(label) {
            panic!(
                "lb exited ({st}) before coming up; log:\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "lb did not come up with {services} services within {within:?}; log:\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// `lb status --json`, or None while nothing is pinned yet.
pub fn status(topo: &Topology) -> Option<Value> {
    let out = topo
        .cmd("agent", &lb_bin())
        .arg("status")
        .arg("--json")
        .arg("--pin-path")
        .arg(topo.pin_path())
        .output()
        .expect("run lb status");
    if !out.status.success() {
        return None;
    }
    Some(serde_json::from_slice(&out.stdout).expect("lb status --json prints JSON"))
}

/// Runs an `lb` subcommand in the agent namespace and returns its stdout; panics on failure.
pub fn lb(topo: &Topology, args: &[&str]) -> String {
    let out = topo
        .cmd("agent", &lb_bin())
        .args(args)
        .output()
        .expect("run lb");
    assert!(
        out.status.success(),
        "lb {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts that the data plane dropped nothing and hit no error (every `drop_*` and `error_*`
/// counter of `lb status` is zero), except the causes in `expected`, so a lost packet fails
/// the test with its cause named.
pub fn assert_no_drops(topo: &Topology, expected: &[&str]) {
    let st = status(topo).expect("lb status");
    let bad: Vec<String> = st["dataplane"]
        .as_object()
        .expect("dataplane counters in lb status")
        .iter()
        .filter(|(k, v)| {
            (k.starts_with("drop") || k.starts_with("error"))
                && !expected.contains(&k.as_str())
                && v.as_u64() != Some(0)
        })
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    assert!(
        bad.is_empty(),
        "the data plane dropped packets: {}",
        bad.join(", ")
    );
}

/// Backend addresses of the service listening on `port`, from `lb status --json`.
pub fn active_backends(topo: &Topology, port: u16) -> Vec<String> {
    let Some(st) = status(topo) else {
        return Vec::new();
    };
    let mut out: Vec<String> = st["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["port"] == port)
        .flat_map(|s| s["backends"].as_array().cloned().unwrap_or_default())
        .filter(|b| b["state"] == "active")
        .filter_map(|b| b["address"].as_str().map(str::to_owned))
        .collect();
    out.sort();
    out
}

/// A Marathon stand-in serving from inside a namespace (where the daemon can reach it on
/// loopback), on a runtime of its own that lives as long as this value.
pub struct NsStandin {
    pub standin: Standin,
    _runtime: thread::JoinHandle<()>,
}

impl NsStandin {
    pub fn start(ns: &str) -> Self {
        let path = format!("/var/run/netns/{ns}");
        let (tx, rx) = mpsc::channel();
        let runtime = thread::spawn(move || {
            let file = fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: setns on a valid namespace fd affects only this thread (and threads it creates).
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns({path})");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let s =
                    Standin::start_with("127.0.0.1:0".parse().unwrap(), Duration::from_millis(200))
                        .await;
                tx.send(s).expect("hand over the stand-in");
                std::future::pending::<()>().await;
            });
        });
        let standin = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("stand-in started");
        Self {
            standin,
            _runtime: runtime,
        }
    }
}

/// Waits until `cond` holds, polling; panics with `what` after `within`.
pub fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `sh -c` on the host.
pub fn host_sh(script: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", script])
        .output()
        .expect("sh");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
