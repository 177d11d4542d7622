//! `cargo xtask bench [--quick]`: builds `lb` and the benchmark binaries, installs the peers it
//! measures against (HAProxy, nftables, nginx, wrk, iperf3, dnsperf, NSD, unbound) and runs `lb-bench` as root.
use std::process::Command;

use anyhow::{Result, bail};

use crate::{build_release, cargo, root, setup};

/// (binary, Debian package) of what the traffic benchmark drives.
const PACKAGES: &[(&str, &str)] = &[
    ("haproxy", "haproxy"),
    ("nft", "nftables"),
    ("wrk", "wrk"),
    ("iperf3", "iperf3"),
    ("nginx", "nginx-light"),
    // The DNS section: the load generator and the servers lb is measured against.
    ("dnsperf", "dnsperf"),
    ("nsd", "nsd"),
    ("unbound", "unbound"),
];

pub fn run(quick: bool) -> Result<()> {
    if !crate::is_root() {
        bail!("the benchmarks need root (BPF, network namespaces); run as root");
    }
    setup::ensure()?;
    setup::ensure_packages(PACKAGES)?;
    let lb = build_release()?;
    eprintln!("==> building the benchmark binaries");
    // `lb-bench` and its load generators (lb-bench), the task server (lb-tests).
    crate::run(cargo().args([
        "build",
        "--release",
        "--package",
        "lb-bench",
        "--package",
        "lb-tests",
        "--bin",
        "lb-bench",
        "--bin",
        "lbt-load",
        "--bin",
        "lbt-rate",
        "--bin",
        "lbt-tunnel",
        "--bin",
        "lbt-server",
    ]))?;
    let bin = root().join("target/release");
    let mut cmd = Command::new(bin.join("lb-bench"));
    if quick {
        cmd.arg("--quick");
    }
    cmd.args(["--out", &root().join("target/bench").to_string_lossy()])
        .env("LB_BIN", &lb)
        .env("LBT_SERVER", bin.join("lbt-server"))
        .env("LBT_LOAD", bin.join("lbt-load"))
        .env("LBT_RATE", bin.join("lbt-rate"))
        .env("LBT_TUNNEL", bin.join("lbt-tunnel"));
    eprintln!(
        "==> running the benchmarks{}",
        if quick { " (quick)" } else { "" }
    );
    // Output streams straight through: the table on stdout, progress on stderr.
    crate::run(&mut cmd)
}
