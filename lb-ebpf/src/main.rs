//! The L4 load-balancing data plane: one packet path compiled as an XDP program and as a
//! TC (clsact ingress) program. Entry points live in `xdp.rs` and `tc.rs`; the work is shared.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
mod bench;
#[cfg(target_arch = "bpf")]
mod conntrack;
#[cfg(target_arch = "bpf")]
mod context;
#[cfg(target_arch = "bpf")]
mod dns;
#[cfg(target_arch = "bpf")]
mod forward;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod mem;
#[cfg(target_arch = "bpf")]
mod nat;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod tc;
#[cfg(target_arch = "bpf")]
mod xdp;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // The verifier rejects any reachable panic; this only satisfies the compiler.
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

/// On the host the crate is an empty binary, so `cargo check --workspace` works everywhere.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

/// Causes that drop the packet; every other cause passes it on unchanged.
#[cfg(target_arch = "bpf")]
const fn drops(stat: lb_common::Stat) -> bool {
    use lb_common::Stat::*;
    matches!(
        stat,
        DropFragment | DropNatPorts | DropFlowInsert | ErrBackendLookup | ErrRewrite | DropDenied
    )
}
