//! Reference programs for `cargo xtask bench`, never attached by `lb`: the floor a packet
//! program cannot go below (`bench_noop`) and a bare redirect to compare forwarding against.
use aya_ebpf::{
    bindings::{
        TC_ACT_OK,
        xdp_action::{XDP_ABORTED, XDP_DROP, XDP_PASS},
    },
    btf_maps::Array,
    helpers::bpf_redirect,
    macros::{btf_map, classifier, xdp},
    programs::{TcContext, XdpContext},
};

/// `[0] -> ifindex` that `bench_redirect` sends every frame to. Written by the benchmark only.
#[btf_map]
static BENCH_IFINDEX: Array<u32, 1> = Array::new();

/// Returns XDP_PASS without touching the packet: the cost of merely running a program.
#[xdp]
pub fn bench_noop(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// TC's floor: returns TC_ACT_OK without touching the skb.
#[classifier]
pub fn bench_tc_noop(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

/// Drops every frame: the receiving end of the live-frames pps measurement, so the peer's
/// stack is not what gets measured.
#[xdp]
pub fn bench_drop(_ctx: XdpContext) -> u32 {
    XDP_DROP
}

/// Redirects every frame, unchanged, to the interface in `BENCH_IFINDEX`.
#[xdp]
pub fn bench_redirect(_ctx: XdpContext) -> u32 {
    match BENCH_IFINDEX.get(0) {
        // SAFETY: plain helper call; its result is the verdict.
        Some(ifindex) => unsafe { bpf_redirect(*ifindex, 0) as u32 },
        None => XDP_ABORTED,
    }
}
