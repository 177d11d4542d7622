//! Builds the BPF object (lb-ebpf) with the nightly toolchain and leaves it in OUT_DIR, where
//! `dataplane::OBJECT` embeds it into the `lb` binary.
//!
//! Flags: BTF for the maps (so bpftool decodes them), and BPF ISA v3 for the atomic
//! fetch-and-add of the round-robin cursor. aya-build would do the same but cannot set the CPU.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap();
    for dir in [
        "lb-ebpf/src",
        "lb-ebpf/Cargo.toml",
        "lb-common/src",
        "lb-common/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rerun-if-env-changed=LB_BPF_OBJECT");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("lb-ebpf.o");

    // An object built elsewhere (e.g. by a packager) may be supplied as is.
    if let Some(prebuilt) = env::var_os("LB_BPF_OBJECT") {
        std::fs::copy(&prebuilt, &out)
            .unwrap_or_else(|e| panic!("copying LB_BPF_OBJECT={prebuilt:?}: {e}"));
        return;
    }

    let target_dir = root.join("target/bpf");
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap();
    let rustflags = [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".into(),
        "-Clink-arg=--btf".into(),
        "-Ctarget-cpu=v3".into(),
    ]
    .join("\x1f");
    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        "nightly",
        "cargo",
        "build",
        "--package",
        "lb-ebpf",
        "--bins",
    ])
    .args([
        "--release",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
    ])
    .arg("--target-dir")
    .arg(&target_dir)
    .current_dir(root)
    .env("CARGO_ENCODED_RUSTFLAGS", rustflags);
    // The outer build's compiler settings are for the host toolchain, not this one.
    for key in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO",
    ] {
        cmd.env_remove(key);
    }
    let status = cmd.status().unwrap_or_else(|e| {
        panic!(
            "running `rustup run nightly cargo build` for lb-ebpf: {e} (run `cargo xtask setup`)"
        )
    });
    assert!(
        status.success(),
        "building the BPF object failed ({status}); `cargo xtask setup` installs the toolchain"
    );
    let built: &Path = &target_dir.join("bpfel-unknown-none/release/lb-ebpf");
    std::fs::copy(built, &out).unwrap_or_else(|e| panic!("copying {built:?} to {out:?}: {e}"));
}
