//! Loading the BPF object, attaching it to interfaces, and keeping its maps in step with the
//! desired services. Maps and links live under the pin path, so a restart adopts them.
//! `Dataplane` owns it all: the programs, a typed handle to every map (`maps`), and the
//! applied state, changed by plans (`plan`) that `maps::execute` writes.
pub mod attach;
pub mod batch;
pub mod convert;
pub mod fast_dns;
pub mod flows;
pub mod ifaces;
pub mod loader;
pub mod maps;
pub mod pins;
pub mod plan;
mod plane;
pub mod ports;

pub use plane::Dataplane;

/// The BPF object built by `build.rs` from `lb-ebpf`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf.o"));

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`, so flow ages compare.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
