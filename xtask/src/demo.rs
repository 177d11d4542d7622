//! `cargo xtask demo`: builds `lb` and the demo's helpers, then becomes the demo
//! (`tests/src/bin/lb-demo.rs`), which owns the terminal and cleans up on Ctrl-C.
use std::os::unix::process::CommandExt as _;
use std::process::Command;

use anyhow::{Result, bail};

use crate::{build_release, cargo, root, run as run_cmd};

pub fn run() -> Result<()> {
    if !crate::is_root() {
        bail!(
            "the demo needs root: it loads BPF programs, creates network namespaces and mounts a \
             bpffs. Run it as root, e.g. `sudo -E env \"PATH=$PATH\" cargo xtask demo`"
        );
    }
    let lb = build_release()?;
    eprintln!("==> building the demo, the task server and the Marathon stand-in (lb-tests)");
    run_cmd(cargo().args(["build", "--release", "--package", "lb-tests", "--bins"]))?;
    let bin = root().join("target/release");
    eprintln!("==> running the demo (Ctrl-C stops it and cleans up)");
    // exec: the demo gets the terminal's signals itself, and its exit status is ours.
    let err = Command::new(bin.join("lb-demo"))
        .current_dir(root())
        .env("LB_BIN", &lb)
        .env("LBT_SERVER", bin.join("lbt-server"))
        .exec();
    bail!("starting {}: {err}", bin.join("lb-demo").display())
}
