//! Where a rewritten packet goes: the kernel's FIB tells the egress interface and, when the
//! neighbour is resolved, both MAC addresses, so the packet can skip the stack entirely.
use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup},
    helpers::generated::bpf_fib_lookup as fib_lookup,
};
use lb_common::Flow;

use crate::{context::Packet, nat::Macs, parse::Parsed};

const AF_INET: u8 = 2;

pub enum Route {
    /// Next hop resolved: redirect out of `ifindex` with these MACs.
    Neighbour { ifindex: u32, macs: Macs },
    /// Route known, neighbour not resolved: TC can still redirect and let the kernel resolve it.
    NoNeighbour { ifindex: u32 },
    /// Local, unreachable, needs fragmenting, forwarding disabled...: the stack decides.
    Stack,
}

/// Looks up the route of the packet as it will be after `flow`'s rewrite.
/// `tot_len` lets XDP learn that the packet exceeds the egress MTU; TC passes 0 so the
/// kernel checks the skb itself (which may be a GSO super-packet).
#[inline(always)]
pub fn route<C: Packet>(ctx: &C, p: &Parsed, flow: &Flow, tot_len: u16) -> Route {
    // SAFETY: an all-zero bpf_fib_lookup is a valid (empty) request.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = p.key.proto;
    params.sport = flow.new_sport;
    params.dport = flow.new_dport;
    params.__bindgen_anon_1.tot_len = tot_len;
    params.ifindex = ctx.ingress_ifindex();
    params.__bindgen_anon_3.ipv4_src = flow.new_src;
    params.__bindgen_anon_4.ipv4_dst = flow.new_dst;
    // SAFETY: params is a properly sized, initialised request; ctx is the program's context.
    let ret = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            &mut params,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    match ret as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => Route::Neighbour {
            ifindex: params.ifindex,
            macs: Macs {
                src: params.smac,
                dst: params.dmac,
            },
        },
        BPF_FIB_LKUP_RET_NO_NEIGH => Route::NoNeighbour {
            ifindex: params.ifindex,
        },
        _ => Route::Stack,
    }
}
