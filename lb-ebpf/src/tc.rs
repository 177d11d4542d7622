//! TC (clsact ingress) entry point. Works on every interface: redirects with the FIB's MACs,
//! lets the kernel resolve a missing neighbour, or hands the rewritten packet to the stack.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_redirect_neigh, bpf_redirect_peer},
    },
    macros::classifier,
    programs::TcContext,
};
use lb_common::Stat;

use crate::{
    conntrack,
    forward::{self, Route},
    maps::{count, count_traffic, may_be_ours},
    nat::{self, Hop},
    parse::{parse, pull_headers, pull_tcp_options},
};

#[classifier]
pub fn lb_tc(ctx: TcContext) -> i32 {
    match try_lb_tc(ctx) {
        Ok(action) => action,
        Err(stat) => {
            count(stat);
            if crate::drops(stat) {
                TC_ACT_SHOT
            } else {
                TC_ACT_OK
            }
        }
    }
}

#[inline(always)]
fn try_lb_tc(mut ctx: TcContext) -> Result<i32, Stat> {
    pull_headers(&mut ctx);
    let p = parse(&ctx)?;
    // The port gate first: the agent's other traffic leaves before any clock read or lookup.
    if !may_be_ours(&p.key) {
        return Err(Stat::PassNotService);
    }
    pull_tcp_options(&mut ctx, &p);
    // SAFETY: helper without side effects.
    let now = unsafe { bpf_ktime_get_ns() };
    let t = conntrack::track(&ctx, &p, now)?;
    let flow = &t.flow;
    if p.ttl <= 1 {
        return Err(Stat::PassTtl);
    }
    let forward::Hop { route, peer, .. } = forward::cached_route(&ctx, &p, &t, 0);
    // One rewrite for every way out: each inlined copy would cost the verifier again.
    let hop = match &route {
        Route::Neighbour { macs, .. } => Hop::to(*macs),
        // The kernel resolves the neighbour and sets the MACs; the TTL is ours.
        Route::NoNeighbour { .. } => Hop::UNRESOLVED,
        Route::Stack => Hop::STACK,
    };
    nat::rewrite(&mut ctx, &p, flow, hop, now)?;
    let action = match route {
        Route::Neighbour { ifindex, .. } => {
            count(Stat::Redirect);
            // A veth whose peer is in another namespace (`LB_PEER_IFS`): the packet enters
            // the peer's ingress at once, where a redirect to the veth would queue it for
            // another softirq pass. Only from TC ingress, which this program is.
            // SAFETY: plain helper calls.
            unsafe {
                if peer {
                    bpf_redirect_peer(ifindex, 0) as i32
                } else {
                    aya_ebpf::helpers::bpf_redirect(ifindex, 0) as i32
                }
            }
        }
        Route::NoNeighbour { ifindex } => {
            count(Stat::Redirect);
            // SAFETY: NULL params ask the kernel to look the neighbour up itself.
            unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) as i32 }
        }
        Route::Stack => {
            count(Stat::PassToStack);
            TC_ACT_OK
        }
    };
    count_traffic(flow.service_id, flow.backend_id, p.tot_len as u64);
    Ok(action)
}
