//! Toolchain set-up, idempotent: nightly's rust-src (for `-Z build-std=core`), bpf-linker
//! built against the nightly's own LLVM (no other LLVM 22 is installable), Debian packages.
use std::{fs, os::unix::fs::symlink, path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::run;

const BPF_LINKER_VERSION: &str = "0.13.0";
/// Run time and test time: `ip`, `bpftool`, `ethtool` (the XDP test tunes veth offloads),
/// `curl` and `openssl` (the HTTP front end's tests: requests as users make them, a certificate).
const PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("bpftool", "bpftool"),
    ("ethtool", "ethtool"),
    ("curl", "curl"),
    ("openssl", "openssl"),
    // `dig`, for the DNS end-to-end tests.
    ("dig", "bind9-dnsutils"),
];

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn have(bin: &str) -> bool {
    output(Command::new("sh").args(["-c", &format!("command -v {bin}")])).is_some()
}

fn nightly_sysroot() -> Result<PathBuf> {
    let s = output(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))
        .context("the nightly toolchain is missing: `rustup toolchain install nightly` (this machine has one preinstalled)")?;
    Ok(PathBuf::from(s.trim()))
}

fn ensure_rust_src() -> Result<()> {
    let sysroot = nightly_sysroot()?;
    if sysroot.join("lib/rustlib/src/rust/library/core").exists() {
        return Ok(());
    }
    eprintln!("==> installing rust-src for nightly");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn ensure_bpf_linker() -> Result<()> {
    // It links to nightly's libLLVM, which only nightly's environment puts on the loader path.
    if let Some(v) =
        output(Command::new("rustup").args(["run", "nightly", "bpf-linker", "--version"]))
        && v.contains(BPF_LINKER_VERSION)
    {
        return Ok(());
    }
    let sysroot = nightly_sysroot()?;
    let lib = sysroot.join("lib");
    let llvm = fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            let n = p.file_name().unwrap_or_default().to_string_lossy();
            n.starts_with("libLLVM.so.") && n.contains("nightly")
        })
        .with_context(|| format!("no libLLVM.so.*-nightly in {}", lib.display()))?;
    // bpf-linker links against libLLVM.so under $LLVM_PREFIX/lib: point one at nightly's.
    let prefix = crate::root().join("target/llvm-nightly");
    fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = fs::remove_file(&link);
    symlink(&llvm, &link).with_context(|| format!("linking {}", link.display()))?;
    eprintln!(
        "==> building bpf-linker {BPF_LINKER_VERSION} against {} (about two minutes)",
        llvm.display()
    );
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--force",
        ])
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("LLVM_PREFIX", &prefix))?;
    if output(Command::new("rustup").args(["run", "nightly", "bpf-linker", "--version"])).is_none()
    {
        bail!("bpf-linker was installed but does not run under nightly: is ~/.cargo/bin on PATH?");
    }
    Ok(())
}

/// Installs Debian packages whose binaries are missing (`bin`, `package` pairs).
pub fn ensure_packages(wanted: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(bin, _)| !have(bin))
        .map(|(_, p)| *p)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !crate::is_root() {
        bail!(
            "missing packages {missing:?}; install them as root (apt-get install {})",
            missing.join(" ")
        );
    }
    eprintln!("==> apt-get install {}", missing.join(" "));
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

pub fn ensure() -> Result<()> {
    ensure_rust_src()?;
    ensure_bpf_linker()?;
    ensure_packages(PACKAGES)
}
