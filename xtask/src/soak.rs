//! `cargo xtask soak`: builds `lb`, the task server and `lb-soak`, optionally a second `lb`
//! from another git revision (the upgrade the soak swaps in and out every restart), and runs
//! the soak as root (see tests/src/bin/lb-soak.rs). Not part of CI: it takes ten minutes.
use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{build_release, cargo, root};

pub struct Options {
    pub seconds: u64,
    pub restart_every: u64,
    pub other_rev: Option<String>,
    pub seed: Option<u64>,
}

/// Builds `rev` in a worktree of its own under target/soak and returns its `lb`.
fn build_rev(rev: &str) -> Result<PathBuf> {
    let out = Command::new("git")
        .args(["rev-parse", "--short", rev])
        .current_dir(root())
        .output()
        .context("git rev-parse")?;
    if !out.status.success() {
        bail!("{rev} is not a revision of this repository");
    }
    let short = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let tree = root().join("target/soak").join(format!("src-{short}"));
    if !tree.exists() {
        crate::run(
            Command::new("git")
                .args(["worktree", "add", "--detach"])
                .arg(&tree)
                .arg(&short),
        )?;
    }
    eprintln!("==> building lb at {rev} ({short}) in {}", tree.display());
    let status = cargo()
        .args(["xtask", "build"])
        .current_dir(&tree)
        .status()
        .context("building the other revision")?;
    if !status.success() {
        bail!("building {rev} failed");
    }
    Ok(tree.join("target/release/lb"))
}

pub fn run(o: Options) -> Result<()> {
    if !crate::is_root() {
        bail!("the soak needs root (BPF, network namespaces); run as root");
    }
    let lb = build_release()?;
    let other = o.other_rev.as_deref().map(build_rev).transpose()?;
    eprintln!("==> building the soak");
    crate::run(cargo().args([
        "build",
        "--release",
        "--package",
        "lb-tests",
        "--bin",
        "lb-soak",
        "--bin",
        "lbt-server",
    ]))?;
    let bin = root().join("target/release");
    let mut cmd = Command::new(bin.join("lb-soak"));
    cmd.args(["--seconds", &o.seconds.to_string()])
        .args(["--restart-every", &o.restart_every.to_string()])
        .args(["--out", &root().join("target/soak").to_string_lossy()])
        .env("LB_BIN", &lb)
        .env("LBT_SERVER", bin.join("lbt-server"));
    if let Some(other) = other {
        cmd.arg("--other-lb").arg(other);
    }
    if let Some(seed) = o.seed {
        cmd.args(["--seed", &seed.to_string()]);
    }
    crate::run(&mut cmd)
}
