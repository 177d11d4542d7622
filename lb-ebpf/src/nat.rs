//! Address and port rewriting with incremental checksum updates: the IPv4 header checksum
//! by hand (it is always complete), TCP/UDP through the hook, which knows the skb's state.
use lb_common::{
    FLOW_F_REPLY, FLOW_F_TS, FLOW_F_TS_INIT, Flow, Stat, TS_CLOCK_SHIFT,
    csum::{self, Diff},
    tcpopt::{TSECR_OFF, TSVAL_OFF},
};

use crate::{
    conntrack::{mark, own_peer_mut},
    context::{Packet, ptr_at},
    maps::LB_FLOWS,
    parse::{
        ETH_DST_OFF, ETH_SRC_OFF, IP_CHECK_OFF, IP_DST_OFF, IP_SRC_OFF, IP_TTL_OFF, L4_DPORT_OFF,
        L4_SPORT_OFF, Parsed, TCP_ACK, TCP_SYN, tcp_timestamp,
    },
};

/// Link-layer addresses for a packet that is redirected straight to its next hop.
#[derive(Clone, Copy)]
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

/// How the rewritten packet leaves: to the kernel stack, which routes it and decrements the
/// TTL itself, or by redirect, where this hop decrements the TTL (the caller made sure it is
/// above 1) and sets the MACs when the FIB gave them (otherwise the kernel's neighbour code
/// does). Plain fields rather than an enum with a reference: LLVM spilled the unused payload
/// of such an enum uninitialised, which the verifier refuses.
pub struct Hop {
    routed: bool,
    set_macs: bool,
    macs: Macs,
}

impl Hop {
    pub const STACK: Self = Self {
        routed: false,
        set_macs: false,
        macs: Macs {
            src: [0; 6],
            dst: [0; 6],
        },
    };
    pub const UNRESOLVED: Self = Self {
        routed: true,
        ..Self::STACK
    };

    pub const fn to(macs: Macs) -> Self {
        Self {
            routed: true,
            set_macs: true,
            macs,
        }
    }
}

/// Applies `flow`'s rewrite to the packet.
#[inline(always)]
pub fn rewrite<C: Packet>(
    ctx: &mut C,
    p: &Parsed,
    flow: &Flow,
    hop: Hop,
    now: u64,
) -> Result<(), Stat> {
    let key = &p.key;
    // Direct writes first: the checksum helpers of TC invalidate packet pointers.
    let ip_check: u16 = {
        let c: *const u16 = ptr_at(ctx, IP_CHECK_OFF).ok_or(Stat::ErrRewrite)?;
        // SAFETY: bounds checked by ptr_at.
        unsafe { c.read_unaligned() }
    };
    let addrs = Diff::NONE
        .add32(key.src, flow.new_src)
        .add32(key.dst, flow.new_dst);
    let mut ip_diff = addrs;
    write(ctx, IP_SRC_OFF, flow.new_src)?;
    write(ctx, IP_DST_OFF, flow.new_dst)?;
    if hop.routed {
        // TTL shares a 16-bit word with the protocol: update that word.
        let old_word = u16::from_be_bytes([p.ttl, key.proto]).to_be();
        let new_word = u16::from_be_bytes([p.ttl - 1, key.proto]).to_be();
        ip_diff = ip_diff.add16(old_word, new_word);
        write(ctx, IP_TTL_OFF, p.ttl - 1)?;
        if hop.set_macs {
            write(ctx, ETH_DST_OFF, hop.macs.dst)?;
            write(ctx, ETH_SRC_OFF, hop.macs.src)?;
        }
    }
    write(ctx, IP_CHECK_OFF, ip_diff.apply(ip_check))?;
    write(ctx, p.l4_off + L4_SPORT_OFF, flow.new_sport)?;
    write(ctx, p.l4_off + L4_DPORT_OFF, flow.new_dport)?;
    let mut plain = Diff::NONE
        .add16(key.sport, flow.new_sport)
        .add16(key.dport, flow.new_dport);
    if flow.flags & (FLOW_F_TS | FLOW_F_TS_INIT) != 0 {
        plain = plain.plus(shift_timestamp(ctx, p, flow, now)?);
    }
    // Every direct write is done: the TC helper invalidates packet pointers.
    ctx.l4_csum(p.l4_check_off(), addrs, plain, p.is_udp())
}

/// Full NAT's timestamp translation: TSval + `ts_off` towards the backend, TSecr - `ts_off`
/// back to the client. A segment without the option (or with a malformed option list) is
/// left as it is. The first rewrite of a new flow's SYN chooses `ts_off` (so the backend sees
/// the balancer's clock); a backend's SYN-ACK without timestamps turns translation off.
#[inline(always)]
fn shift_timestamp<C: Packet>(
    ctx: &mut C,
    p: &Parsed,
    flow: &Flow,
    now: u64,
) -> Result<Diff, Stat> {
    // Walked here, at the end of the path, so the verifier does not carry every possible
    // offset through the rest of the program.
    let at = tcp_timestamp(ctx, p);
    let mut ts_off = flow.ts_off;
    if flow.flags & FLOW_F_TS_INIT != 0 {
        let mut set = 0;
        if let Some(at) = at {
            let tsval: u32 = read(ctx, at + TSVAL_OFF)?;
            ts_off = ((now >> TS_CLOCK_SHIFT) as u32).wrapping_sub(u32::from_be(tsval));
            set = FLOW_F_TS;
        }
        if let Some(entry) = LB_FLOWS.get_ptr_mut(&p.key) {
            // SAFETY: a live map element; the reply entry gets the same offset below.
            unsafe { (*entry).ts_off = ts_off };
            if let Some(peer) = own_peer_mut(&p.key, flow) {
                // SAFETY: as above.
                unsafe { (*peer).ts_off = ts_off };
            }
            mark(entry, &p.key, flow, set, FLOW_F_TS_INIT);
        }
        if set == 0 {
            return Ok(Diff::NONE);
        }
    } else if flow.flags & (FLOW_F_REPLY | FLOW_F_TS) == FLOW_F_REPLY | FLOW_F_TS
        && p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK
        && at.is_none()
    {
        // The backend declined timestamps: nothing to shift, and its TIME_WAIT will judge a
        // reused port by sequence numbers alone, so the reservation stays (Config::timeout_ns).
        if let Some(entry) = LB_FLOWS.get_ptr_mut(&p.key) {
            mark(entry, &p.key, flow, 0, FLOW_F_TS);
        }
        return Ok(Diff::NONE);
    }
    let Some(at) = at else {
        return Ok(Diff::NONE);
    };
    let (field, delta) = if flow.flags & FLOW_F_REPLY == 0 {
        (at + TSVAL_OFF, ts_off)
    } else {
        (at + TSECR_OFF, ts_off.wrapping_neg())
    };
    let old: u32 = read(ctx, field)?;
    let new = u32::from_be(old).wrapping_add(delta).to_be();
    write(ctx, field, new)?;
    Ok(if (field - p.l4_off) % 2 == 1 {
        Diff::NONE.add32(csum::at_odd_offset(old), csum::at_odd_offset(new))
    } else {
        Diff::NONE.add32(old, new)
    })
}

#[inline(always)]
fn read<C: Packet, T: Copy>(ctx: &C, off: usize) -> Result<T, Stat> {
    let f: *const T = ptr_at(ctx, off).ok_or(Stat::ErrRewrite)?;
    // SAFETY: bounds checked by ptr_at.
    Ok(unsafe { f.read_unaligned() })
}
