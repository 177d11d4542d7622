//! Address and port rewriting with incremental checksum updates: the IPv4 header checksum
//! by hand (it is always complete), TCP/UDP through the hook, which knows the skb's state.
use lb_common::{
    FLOW_F_REPLY, FLOW_F_TS, Flow, Stat, csum,
    tcpopt::{TSECR_OFF, TSVAL_OFF},
};

use crate::{
    context::{Packet, ptr_at},
    parse::{
        ETH_DST_OFF, ETH_SRC_OFF, IP_CHECK_OFF, IP_DST_OFF, IP_SRC_OFF, IP_TTL_OFF, L4_DPORT_OFF,
        L4_SPORT_OFF, Parsed,
    },
};

/// Link-layer addresses for a packet that is redirected straight to its next hop.
pub struct Macs {
    pub src: [u8; 6],
    pub dst: [u8; 6],
}

#[inline(always)]
fn write<C: Packet, T>(ctx: &C, off: usize, v: T) -> Result<(), Stat> {
    let p: *mut T = ptr_at(ctx, off).ok_or(Stat::ErrRewrite)?;
    // SAFETY: bounds checked by ptr_at.
    unsafe { p.write_unaligned(v) };
    Ok(())
}

/// How the rewritten packet leaves.
pub enum Hop<'a> {
    /// To the kernel stack, which routes it and decrements the TTL itself.
    Stack,
    /// By redirect: this hop decrements the TTL (the caller made sure it is above 1), and
    /// sets the MACs when the FIB gave them (otherwise the kernel's neighbour code does).
    Routed(Option<&'a Macs>),
}

/// Applies `flow`'s rewrite to the packet.
#[inline(always)]
pub fn rewrite<C: Packet>(ctx: &mut C, p: &Parsed, flow: &Flow, hop: Hop<'_>) -> Result<(), Stat> {
    let key = &p.key;
    // Direct writes first: the checksum helpers of TC invalidate packet pointers.
    let mut ip_check: u16 = {
        let c: *const u16 = ptr_at(ctx, IP_CHECK_OFF).ok_or(Stat::ErrRewrite)?;
        // SAFETY: bounds checked by ptr_at.
        unsafe { c.read_unaligned() }
    };
    ip_check = csum::update32(ip_check, key.src, flow.new_src);
    ip_check = csum::update32(ip_check, key.dst, flow.new_dst);
    write(ctx, IP_SRC_OFF, flow.new_src)?;
    write(ctx, IP_DST_OFF, flow.new_dst)?;
    if let Hop::Routed(macs) = hop {
        // TTL shares a 16-bit word with the protocol: update that word.
        let old_word = u16::from_be_bytes([p.ttl, key.proto]).to_be();
        let new_word = u16::from_be_bytes([p.ttl - 1, key.proto]).to_be();
        ip_check = csum::update16(ip_check, old_word, new_word);
        write(ctx, IP_TTL_OFF, p.ttl - 1)?;
        if let Some(macs) = macs {
            write(ctx, ETH_DST_OFF, macs.dst)?;
            write(ctx, ETH_SRC_OFF, macs.src)?;
        }
    }
    write(ctx, IP_CHECK_OFF, ip_check)?;
    write(ctx, p.l4_off + L4_SPORT_OFF, flow.new_sport)?;
    write(ctx, p.l4_off + L4_DPORT_OFF, flow.new_dport)?;

    let off = p.l4_check_off();
    let udp = p.is_udp();
    if key.src != flow.new_src {
        ctx.l4_csum(off, key.src, flow.new_src, 4, true, udp)?;
    }
    if key.dst != flow.new_dst {
        ctx.l4_csum(off, key.dst, flow.new_dst, 4, true, udp)?;
    }
    if key.sport != flow.new_sport {
        ctx.l4_csum(off, key.sport as u32, flow.new_sport as u32, 2, false, udp)?;
    }
    if key.dport != flow.new_dport {
        ctx.l4_csum(off, key.dport as u32, flow.new_dport as u32, 2, false, udp)?;
    }
    if flow.flags & FLOW_F_TS != 0 {
        shift_timestamp(ctx, p, flow)?;
    }
    Ok(())
}

/// Full NAT's timestamp translation: TSval + `ts_off` towards the backend, TSecr - `ts_off`
/// back to the client. A segment without the option (or with a malformed option list) is
/// left as it is.
#[inline(always)]
fn shift_timestamp<C: Packet>(ctx: &mut C, p: &Parsed, flow: &Flow) -> Result<(), Stat> {
    let Some(at) = p.ts_at else {
        return Ok(());
    };
    let (field, delta) = if flow.flags & FLOW_F_REPLY == 0 {
        (at + TSVAL_OFF, flow.ts_off)
    } else {
        (at + TSECR_OFF, flow.ts_off.wrapping_neg())
    };
    let old: u32 = {
        let f: *const u32 = ptr_at(ctx, field).ok_or(Stat::ErrRewrite)?;
        // SAFETY: bounds checked by ptr_at.
        unsafe { f.read_unaligned() }
    };
    let new = u32::from_be(old).wrapping_add(delta).to_be();
    write(ctx, field, new)?;
    let (o, n) = if (field - p.l4_off) % 2 == 1 {
        (csum::at_odd_offset(old), csum::at_odd_offset(new))
    } else {
        (old, new)
    };
    ctx.l4_csum(p.l4_check_off(), o, n, 4, false, false)
}
