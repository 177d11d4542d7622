//! `cargo xtask setup | build | test | demo | fuzz | bench | soak`: the project's own tooling. Every command
//! first brings the machine to a working build (idempotently), so a fresh clone needs nothing else.
mod bench;
mod demo;
mod setup;
mod soak;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need: nightly rust-src, bpf-linker, Debian packages.
    Setup,
    /// Build the BPF object and `target/release/lb` with it embedded.
    Build,
    /// Run every test: format and lint checks, host unit tests, then the kernel tests
    /// (BPF_PROG_TEST_RUN tables and network-namespace end-to-end tests) one at a time.
    Test {
        /// Only the fast host tests (no root or kernel needed beyond the build).
        #[arg(long)]
        host_only: bool,
        /// Passed to the kernel test binaries as a name filter.
        filter: Option<String>,
    },
    /// Show the balancer at work: agent topology, Marathon stand-in, `lb run`, traffic.
    Demo,
    /// Differential fuzzing of the data plane against its reference model (tests/src/model):
    /// N packets through each of the XDP and TC programs with BPF_PROG_TEST_RUN. Needs root;
    /// run it under the kernel-test lock (`flock /tmp/lb-kernel.lock cargo xtask fuzz ...`).
    Fuzz {
        /// Program runs per hook (CI runs 1,000,000).
        #[arg(long, default_value_t = 10_000_000)]
        packets: u64,
        /// The run's seed (decimal or 0x-hex), to replay a failure; random if not given.
        #[arg(long)]
        seed: Option<String>,
        /// Report every failing batch rather than stopping at the first.
        #[arg(long)]
        keep_going: bool,
        /// Known deviations of the data plane from the model not to allow: `all`, or a
        /// comma-separated list of `lengths`, `peer` (see tests/src/model/mod.rs).
        #[arg(long)]
        strict: Option<String>,
    },
    /// Measure the data plane and its peers (HAProxy, nftables) in one run.
    Bench {
        /// A smoke run (shorter measurements, one round) that finishes in about four minutes.
        #[arg(long)]
        quick: bool,
    },
    /// Traffic through the agent while Marathon churns and the daemon restarts and upgrades
    /// (tests/src/bin/lb-soak.rs); fails on any lost connection, corrupted byte, RSS growth
    /// or map entry not returned. Needs root; not part of `test`.
    Soak {
        /// How long the traffic and the churn run.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        /// Restart the daemon this often (0: never).
        #[arg(long, default_value_t = 60)]
        restart_every: u64,
        /// A git revision to build as the second `lb`, swapped in at every other restart
        /// (default: the same build at every restart).
        #[arg(long)]
        upgrade_from: Option<String>,
        /// The churn's and the traffic's seed, to replay a run.
        #[arg(long)]
        seed: Option<u64>,
    },
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_owned()
}

/// Runs a command in the workspace root, failing with the command line if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    cmd.current_dir(root());
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    // `cargo run` describes xtask's package in these; build scripts that watch them (ring's)
    // would otherwise rerun, and their dependents rebuild, whenever a build here alternates
    // with a plain `cargo build`.
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_MANIFEST_")
            || [
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
            ]
            .contains(&&*k)
        {
            cmd.env_remove(&key);
        }
    }
    cmd
}

pub fn build_release() -> Result<PathBuf> {
    setup::ensure()?;
    eprintln!("==> building the BPF object and target/release/lb");
    run(cargo().args(["build", "--release", "--package", "lb-user", "--bin", "lb"]))?;
    Ok(root().join("target/release/lb"))
}

fn test(host_only: bool, filter: Option<String>) -> Result<()> {
    setup::ensure()?;
    eprintln!("==> format and lint");
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    eprintln!("==> host tests (no kernel features needed)");
    run(cargo().args(["test", "--workspace", "--exclude", "lb-tests"]))?;
    run(cargo().args(["test", "--package", "lb-tests", "--lib", "--bins"]))?;
    if host_only {
        return Ok(());
    }
    if !is_root() {
        bail!("the kernel tests need root (BPF, network namespaces); run as root");
    }
    let lb = build_release()?;
    eprintln!("==> kernel tests (serial: they share the kernel)");
    let mut cmd = cargo();
    cmd.args([
        "test",
        "--release",
        "--package",
        "lb-tests",
        "--tests",
        "--",
    ])
    .args(["--test-threads=1"])
    .env("LB_BIN", &lb);
    if let Some(f) = filter {
        cmd.arg(f);
    }
    run(&mut cmd)
}

/// Runs the fuzz test (tests/tests/fuzz.rs) with the count and seed given.
fn fuzz(
    packets: u64,
    seed: Option<String>,
    keep_going: bool,
    strict: Option<String>,
) -> Result<()> {
    setup::ensure()?;
    if !is_root() {
        bail!("the fuzzer loads BPF programs and makes a network namespace; run as root");
    }
    let mut cmd = cargo();
    cmd.args([
        "test",
        "--release",
        "--package",
        "lb-tests",
        "--test",
        "fuzz",
        "--",
        "--test-threads=1",
        "--nocapture",
    ])
    .env("LB_FUZZ_PACKETS", packets.to_string());
    if let Some(s) = seed {
        cmd.env("LB_FUZZ_SEED", s);
    }
    if keep_going {
        cmd.env("LB_FUZZ_KEEP_GOING", "1");
    }
    if let Some(s) = strict {
        cmd.env("LB_FUZZ_STRICT", s);
    }
    run(&mut cmd)
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Setup => setup::ensure(),
        Cmd::Build => build_release().map(|p| eprintln!("built {}", p.display())),
        Cmd::Test { host_only, filter } => test(host_only, filter),
        Cmd::Demo => demo::run(),
        Cmd::Fuzz {
            packets,
            seed,
            keep_going,
            strict,
        } => fuzz(packets, seed, keep_going, strict),
        Cmd::Bench { quick } => bench::run(quick),
        Cmd::Soak {
            seconds,
            restart_every,
            upgrade_from,
            seed,
        } => soak::run(soak::Options {
            seconds,
            restart_every,
            other_rev: upgrade_from,
            seed,
        }),
    }
}
