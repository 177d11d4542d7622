//! Where a rewritten packet goes: the kernel's FIB tells the egress interface and, when the
//! neighbour is resolved, both MAC addresses, so the packet can skip the stack entirely.
use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup},
    helpers::generated::bpf_fib_lookup as fib_lookup,
};
use lb_common::{Flow, RT_F_PEER, RT_F_XDP};

use crate::{
    conntrack::Tracked,
    context::Packet,
    maps::{LB_PEER_IFS, LB_XDP_TX, route_gen},
    nat::Macs,
    parse::Parsed,
};

const AF_INET: u8 = 2;

pub enum Route {
    /// Next hop resolved: redirect out of `ifindex` with these MACs; `mtu` as the FIB said
    /// (0 when it was not asked to check).
    Neighbour { ifindex: u32, macs: Macs, mtu: u16 },
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
            // SAFETY: on success the kernel leaves the egress MTU in the union (5.13+).
            mtu: unsafe { params.__bindgen_anon_1.mtu_result },
        },
        BPF_FIB_LKUP_RET_NO_NEIGH => Route::NoNeighbour {
            ifindex: params.ifindex,
        },
        _ => Route::Stack,
    }
}

/// Where a flow's packet goes, whether XDP may send it there itself (ingress and egress
/// both in `LB_XDP_TX`), and whether TC may hand it to the egress veth's peer (`LB_PEER_IFS`).
pub struct Hop {
    pub route: Route,
    pub xdp: bool,
    pub peer: bool,
}

/// `route`, answered from the flow entry while the daemon's route generation and the ingress
/// interface are those it was cached with: an established packet then makes no FIB lookup
/// and no `LB_XDP_TX` lookup. `tot_len` as for `route`; a cached route says nothing about the
/// MTU unless it was cached from a lookup that checked it, so XDP looks up again then.
#[inline(always)]
pub fn cached_route<C: Packet>(ctx: &C, p: &Parsed, t: &Tracked, tot_len: u16) -> Hop {
    let flow = &t.flow;
    let ingress = ctx.ingress_ifindex();
    let gen_ = route_gen();
    let mtu = (flow.rt_flags >> 16) as u16;
    if flow.rt_gen == gen_ && flow.rt_in == ingress && (tot_len == 0 || mtu != 0) {
        if tot_len > mtu {
            return Hop {
                route: Route::Stack,
                xdp: false,
                peer: false,
            };
        }
        return Hop {
            route: Route::Neighbour {
                ifindex: flow.rt_ifindex,
                macs: Macs {
                    src: flow.rt_smac,
                    dst: flow.rt_dmac,
                },
                mtu,
            },
            xdp: flow.rt_flags & RT_F_XDP != 0,
            peer: flow.rt_flags & RT_F_PEER != 0,
        };
    }
    let route = route(ctx, p, flow, tot_len);
    let (mut xdp, mut peer) = (false, false);
    if let Route::Neighbour { ifindex, macs, mtu } = &route {
        // SAFETY: only tested for presence.
        xdp = unsafe { LB_XDP_TX.get(&ingress).is_some() && LB_XDP_TX.get(ifindex).is_some() };
        // SAFETY: only tested for presence.
        peer = unsafe { LB_PEER_IFS.get(ifindex).is_some() };
        if let Some(entry) = t.entry {
            // SAFETY: a live map element; a racing CPU writes the same answer. The generation
            // goes last, so a reader never takes a half-written entry for a valid one.
            unsafe {
                (*entry).rt_ifindex = *ifindex;
                (*entry).rt_in = ingress;
                (*entry).rt_smac = macs.src;
                (*entry).rt_dmac = macs.dst;
                (*entry).rt_flags = ((*mtu as u32) << 16)
                    | if xdp { RT_F_XDP } else { 0 }
                    | if peer { RT_F_PEER } else { 0 };
                (*entry).rt_gen = gen_;
            }
        }
    }
    Hop { route, xdp, peer }
}
