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
    dns,
    forward::{self, Route},
    maps::{count, count_traffic, may_be_ours},
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
    let p = parse(&ctx)?;
    // Queries to the DNS server (a comparison with constants; compiled out while it is off).
    if dns::for_server(&p) {
        return dns::answer(&mut ctx, &p);
    }
    // The port gate first: the agent's other traffic leaves before any clock read or lookup.
    if !may_be_ours(&p.key) {
        return Err(Stat::PassNotService);
    }
    // SAFETY: helper without side effects.
    let now = unsafe { bpf_ktime_get_ns() };
    let t = conntrack::track(&ctx, &p, now)?;
    if p.ttl <= 1 {
        return Err(Stat::PassTtl);
    }
    // A veth hands XDP the sender's skb data, whose TCP/UDP checksum may be only partial
    // (offloaded): rewriting it here would corrupt it. TC sees the skb state and copes. So
    // XDP forwards only between interfaces in LB_XDP_TX (the flow's cached route says
    // whether both ends are); the rest goes to TC untouched.
    let hop = forward::cached_route(&ctx, &p, &t, p.tot_len);
    let Route::Neighbour { ifindex, macs, .. } = hop.route else {
        return Err(Stat::PassToTc);
    };
    if !hop.xdp {
        return Err(Stat::PassToTc);
    }
    nat::rewrite(&mut ctx, &p, &t.flow, Hop::to(macs), now)?;
    count_traffic(t.flow.service_id, t.flow.backend_id, p.tot_len as u64);
    count(Stat::Redirect);
    if ifindex == Packet::ingress_ifindex(&ctx) {
        return Ok(XDP_TX);
    }
    // SAFETY: plain helper call; the verdict it returns is the program's.
    Ok(unsafe { aya_ebpf::helpers::bpf_redirect(ifindex, 0) } as u32)
}
