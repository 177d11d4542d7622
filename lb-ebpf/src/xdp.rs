//! XDP entry point. Forwards by redirect between interfaces listed in `LB_XDP_TX` (frames with
//! complete checksums in, XDP frames accepted out); everything else passes untouched to TC.
use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    helpers::bpf_ktime_get_ns,
    macros::xdp,
    programs::XdpContext,
};
use lb_common::Stat;

use crate::{
    conntrack,
    context::Packet,
    forward::{self, Route},
    maps::{LB_XDP_TX, count, count_traffic},
    nat::{self, Hop},
    parse::parse,
};

#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    match try_lb_xdp(ctx) {
        Ok(action) => action,
        Err(stat) => {
            count(stat);
            if crate::drops(stat) {
                XDP_DROP
            } else {
                XDP_PASS
            }
        }
    }
}

#[inline(always)]
fn try_lb_xdp(mut ctx: XdpContext) -> Result<u32, Stat> {
    let mut p = parse(&ctx)?;
    // SAFETY: helper without side effects.
    let now = unsafe { bpf_ktime_get_ns() };
    let flow = conntrack::track(&ctx, &mut p, now)?;
    // A veth hands XDP the sender's skb data, whose TCP/UDP checksum may be only partial
    // (offloaded): rewriting it here would corrupt it. TC sees the skb state and copes.
    let ingress = Packet::ingress_ifindex(&ctx);
    // SAFETY: only tested for presence.
    if unsafe { LB_XDP_TX.get(&ingress) }.is_none() {
        return Err(Stat::PassToTc);
    }
    if p.ttl <= 1 {
        return Err(Stat::PassTtl);
    }
    let Route::Neighbour { ifindex, macs } = forward::route(&ctx, &p, &flow, p.tot_len) else {
        return Err(Stat::PassToTc);
    };
    // SAFETY: only tested for presence.
    if unsafe { LB_XDP_TX.get(&ifindex) }.is_none() {
        return Err(Stat::PassToTc);
    }
    nat::rewrite(&mut ctx, &p, &flow, Hop::Routed(Some(&macs)))?;
    count_traffic(flow.service_id, flow.backend_id, p.tot_len as u64);
    count(Stat::Redirect);
    if ifindex == ingress {
        return Ok(XDP_TX);
    }
    // SAFETY: plain helper call; the verdict it returns is the program's.
    Ok(unsafe { aya_ebpf::helpers::bpf_redirect(ifindex, 0) } as u32)
}
