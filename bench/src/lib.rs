//! The measurements behind `cargo xtask bench`: per-packet cost (`packet`), real traffic through
//! the agent against its peers (`traffic`, and a minute of it in `sustained`) and the control
//! plane (`control`), DNS (`dns`) and HTTP virtual hosts (`http`) against their usual servers.
//! They report, never judge.
pub mod control;
pub mod cpu;
pub mod dns;
pub mod http;
pub mod packet;
pub mod report;
pub mod sustained;
pub mod svg;
pub mod traffic;

/// One of the benchmark's helper binaries (`lbt-load`, `lbt-rate`, `lbt-tunnel`, the tests'
/// `lbt-server`): `$env`, else beside the running benchmark binary.
pub fn helper_bin(name: &str, env: &str) -> std::path::PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return p.into();
    }
    let exe = std::env::current_exe().expect("the benchmark's own path");
    let p = exe.with_file_name(name);
    assert!(
        p.exists(),
        "{} not built: `cargo build --release -p lb-bench -p lb-tests --bins` (or set {env})",
        p.display()
    );
    p
}

/// How long and how often to measure: `--quick` is a smoke run, the default a real one.
#[derive(Clone, Copy, Debug)]
pub struct Effort {
    pub quick: bool,
    /// Independent runs of each measurement; figures are their median, spread their min–max.
    pub runs: usize,
    /// BPF_PROG_TEST_RUN calls (one packet each) per run.
    pub calls: usize,
    /// Kernel-side repeats for the loops whose packet the program leaves unchanged.
    pub repeat: u32,
    /// Frames injected per live-frames run.
    pub live_frames: u32,
    /// Rounds of the traffic contenders (each round runs every contender once, interleaved).
    pub rounds: usize,
    /// Seconds per wrk/iperf3 measurement.
    pub seconds: u32,
    /// Seconds of each sustained run: long enough for steady state (TIME_WAIT, NAT ports and
    /// conntrack entries come back into play after about a minute).
    pub sustained_seconds: u64,
}

impl Effort {
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                runs: 3,
                calls: 20_000,
                repeat: 200_000,
                live_frames: 2_000_000,
                rounds: 1,
                seconds: 2,
                sustained_seconds: 15,
            }
        } else {
            Self {
                quick,
                runs: 5,
                calls: 200_000,
                repeat: 1_000_000,
                live_frames: 10_000_000,
                rounds: 3,
                seconds: 5,
                sustained_seconds: 60,
            }
        }
    }
}
