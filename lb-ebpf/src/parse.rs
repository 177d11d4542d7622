//! Header parsing: IPv4 over Ethernet, TCP and UDP, never reading past the packet.
//! Anything that is not a well-formed IPv4 TCP/UDP packet comes back as the reason to pass it.
use core::mem::offset_of;

use lb_common::{FlowKey, IPPROTO_TCP, IPPROTO_UDP, Stat, tcpopt};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};

use crate::context::{Packet, ptr_at};

pub const ETH_LEN: usize = size_of::<EthHdr>();
pub const ETH_DST_OFF: usize = offset_of!(EthHdr, dst_addr);
pub const ETH_SRC_OFF: usize = offset_of!(EthHdr, src_addr);
const ETH_TYPE_OFF: usize = offset_of!(EthHdr, ether_type);
/// ETH_P_IP as it reads from the wire into a native u16.
const ETH_P_IP_RAW: u16 = 0x0800u16.to_be();

pub const IP_VIHL_OFF: usize = ETH_LEN + offset_of!(Ipv4Hdr, vihl);
pub const IP_TOT_LEN_OFF: usize = ETH_LEN + offset_of!(Ipv4Hdr, tot_len);
pub const IP_FRAGS_OFF: usize = ETH_LEN + offset_of!(Ipv4Hdr, frags);
pub const IP_TTL_OFF: usize = ETH_LEN + offset_of!(Ipv4Hdr, ttl);
pub const IP_CHECK_OFF: usize = ETH_LEN + offset_of!(Ipv4Hdr, check);
pub const IP_SRC_OFF: usize = ETH_LEN + offset_of!(Ipv4Hdr, src_addr);
pub const IP_DST_OFF: usize = ETH_LEN + offset_of!(Ipv4Hdr, dst_addr);
const IP_MIN_LEN: usize = size_of::<Ipv4Hdr>();

/// More-fragments flag and fragment offset, in host order of the `frags` field.
const IP_MF: u16 = 0x2000;
const IP_OFFSET_MASK: u16 = 0x1fff;

// Offsets inside the L4 header.
pub const L4_SPORT_OFF: usize = offset_of!(TcpHdr, source);
pub const L4_DPORT_OFF: usize = offset_of!(TcpHdr, dest);
const _: () = assert!(L4_SPORT_OFF == offset_of!(UdpHdr, src));
const _: () = assert!(L4_DPORT_OFF == offset_of!(UdpHdr, dst));
pub const TCP_CHECK_OFF: usize = offset_of!(TcpHdr, check);
pub const UDP_CHECK_OFF: usize = offset_of!(UdpHdr, check);
/// The flags byte follows the data-offset byte; network-types keeps both in a bitfield,
/// so its offset is spelled out: right after `ack_seq` plus the data-offset byte.
const TCP_FLAGS_OFF: usize = offset_of!(TcpHdr, ack_seq) + 4 + 1;
const _: () = assert!(TCP_FLAGS_OFF == 13);

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

const TCP_DOFF_OFF: usize = offset_of!(TcpHdr, ack_seq) + 4;
const TCP_MIN_LEN: usize = size_of::<TcpHdr>();

/// Bytes the packet path may need to read: Ethernet, the longest IPv4 header, the longest TCP
/// header (its options carry the timestamps that full NAT rewrites).
pub const MAX_HEADERS: u32 = (ETH_LEN + 60 + 60) as u32;

pub struct Parsed {
    pub key: FlowKey,
    /// Offset of the TCP/UDP header (after any IP options).
    pub l4_off: usize,
    pub tcp_flags: u8,
    /// The first fragment of a fragmented datagram (it has ports, the rest do not).
    pub first_fragment: bool,
    pub ttl: u8,
    /// IPv4 total length, host order: the bytes counted for this packet.
    pub tot_len: u16,
    /// Bytes of TCP options (0 for UDP, or when the data offset makes no sense).
    pub tcp_opt_len: usize,
}

impl Parsed {
    #[inline(always)]
    pub const fn is_udp(&self) -> bool {
        self.key.proto == IPPROTO_UDP
    }

    #[inline(always)]
    pub const fn l4_check_off(&self) -> usize {
        self.l4_off
            + if self.is_udp() {
                UDP_CHECK_OFF
            } else {
                TCP_CHECK_OFF
            }
    }

    /// A connection attempt: SYN without ACK.
    #[inline(always)]
    pub const fn is_tcp_open(&self) -> bool {
        self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }

    #[inline(always)]
    pub const fn is_tcp_close(&self) -> bool {
        self.tcp_flags & (TCP_FIN | TCP_RST) != 0
    }
}

#[inline(always)]
fn read<C: Packet, T: Copy>(ctx: &C, off: usize) -> Result<T, Stat> {
    let p: *const T = ptr_at(ctx, off).ok_or(Stat::PassMalformed)?;
    // SAFETY: ptr_at checked that size_of::<T>() bytes at `off` lie inside the packet.
    Ok(unsafe { p.read_unaligned() })
}

/// Makes the fixed headers directly readable and writable where the hook may hold them in
/// fragments (TC), and no more: Ethernet, IPv4 with its options, the first 20 bytes of TCP
/// (UDP's 8 fit in them). A TCP header's options follow with [`pull_tcp_options`], once the
/// packet proves to be the data plane's. Pulling a fixed `MAX_HEADERS` instead moved payload
/// into the head of every segment whose payload sits in page fragments, as a local TCP
/// sender's and GRO's do: a new head allocated and copied per packet, for the agent's other
/// traffic too. A pull the head already covers makes no helper call.
#[inline(always)]
pub fn pull_headers<C: Packet>(ctx: &mut C) {
    let fixed = ETH_LEN + IP_MIN_LEN + TCP_MIN_LEN;
    ctx.pull(upto(ctx, fixed));
    if read::<C, u16>(ctx, ETH_TYPE_OFF) != Ok(ETH_P_IP_RAW) {
        return;
    }
    let Ok(vihl) = read::<C, u8>(ctx, IP_VIHL_OFF) else {
        return;
    };
    let options = (vihl & 0x0f) as usize * 4;
    if options > IP_MIN_LEN {
        ctx.pull(upto(ctx, fixed - IP_MIN_LEN + options));
    }
}

/// Makes `p`'s TCP options directly readable and writable (see [`pull_headers`]).
#[inline(always)]
pub fn pull_tcp_options<C: Packet>(ctx: &mut C, p: &Parsed) {
    if p.tcp_opt_len > 0 {
        ctx.pull(upto(ctx, p.l4_off + TCP_MIN_LEN + p.tcp_opt_len));
    }
}

/// `n`, or the packet's length where that is shorter.
#[inline(always)]
fn upto<C: Packet>(ctx: &C, n: usize) -> u32 {
    let len = ctx.frame_len();
    (if n < len { n } else { len }) as u32
}

#[inline(always)]
pub fn parse<C: Packet>(ctx: &C) -> Result<Parsed, Stat> {
    let ether_type: u16 = read(ctx, ETH_TYPE_OFF).map_err(|_| Stat::PassNotIpv4)?;
    if ether_type != ETH_P_IP_RAW {
        return Err(Stat::PassNotIpv4);
    }
    // The whole fixed header must be there before any field of it is trusted.
    if ptr_at::<C, Ipv4Hdr>(ctx, ETH_LEN).is_none() {
        return Err(Stat::PassMalformed);
    }
    let vihl: u8 = read(ctx, IP_VIHL_OFF)?;
    let ihl = (vihl & 0x0f) as usize * 4;
    if vihl >> 4 != 4 || ihl < IP_MIN_LEN {
        return Err(Stat::PassMalformed);
    }
    let proto: u8 = read(ctx, ETH_LEN + offset_of!(Ipv4Hdr, proto))?;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return Err(Stat::PassNotL4);
    }
    let tot_len = u16::from_be(read(ctx, IP_TOT_LEN_OFF)?);
    let frags = u16::from_be(read(ctx, IP_FRAGS_OFF)?);
    if frags & IP_OFFSET_MASK != 0 {
        return Err(Stat::PassFragment);
    }
    let first_fragment = frags & IP_MF != 0;
    // Lengths that do not add up are the stack's to judge (it drops them): a datagram longer
    // than the frame, then (below) an L4 header longer than the datagram. A first fragment
    // is judged by its ports alone.
    if !first_fragment && ETH_LEN + tot_len as usize > ctx.frame_len() {
        return Err(Stat::PassMalformed);
    }
    let l4_off = ETH_LEN + ihl;
    let l4_len = if proto == IPPROTO_TCP {
        size_of::<TcpHdr>()
    } else {
        size_of::<UdpHdr>()
    };
    // A first fragment may be too short for the whole L4 header; only its ports matter then.
    if (tot_len as usize) < ihl + l4_len && !first_fragment {
        return Err(Stat::PassMalformed);
    }
    let sport: u16 = read(ctx, l4_off + L4_SPORT_OFF)?;
    let dport: u16 = read(ctx, l4_off + L4_DPORT_OFF)?;
    let mut tcp_opt_len = 0;
    let tcp_flags = if proto == IPPROTO_TCP {
        // Rewriting needs the checksum field, so the full fixed header must be present.
        if ptr_at::<C, TcpHdr>(ctx, l4_off).is_none() && !first_fragment {
            return Err(Stat::PassMalformed);
        }
        let doff = (read::<C, u8>(ctx, l4_off + TCP_DOFF_OFF).unwrap_or(0) >> 4) as usize * 4;
        if !first_fragment && (doff < TCP_MIN_LEN || ihl + doff > tot_len as usize) {
            return Err(Stat::PassMalformed);
        }
        if doff > TCP_MIN_LEN && ihl + doff <= tot_len as usize {
            tcp_opt_len = doff - TCP_MIN_LEN;
        }
        read::<C, u8>(ctx, l4_off + TCP_FLAGS_OFF).unwrap_or(0)
    } else {
        match ptr_at::<C, UdpHdr>(ctx, l4_off) {
            None if !first_fragment => return Err(Stat::PassMalformed),
            Some(udp) if !first_fragment => {
                // Through the pointer just checked: the verifier knows its bounds.
                // SAFETY: ptr_at checked that the whole header lies inside the packet.
                let ulen = u16::from_be_bytes(unsafe { (*udp).len }) as usize;
                if ulen < size_of::<UdpHdr>() || ihl + ulen > tot_len as usize {
                    return Err(Stat::PassMalformed);
                }
            }
            _ => {}
        }
        0
    };
    Ok(Parsed {
        key: FlowKey::new(
            read(ctx, IP_SRC_OFF)?,
            read(ctx, IP_DST_OFF)?,
            sport,
            dport,
            proto,
        ),
        l4_off,
        tcp_flags,
        first_fragment,
        ttl: read(ctx, IP_TTL_OFF)?,
        tot_len,
        tcp_opt_len,
    })
}

/// Offset in the packet of the TCP timestamp option, if the segment carries a well-formed one.
#[inline(always)]
pub fn tcp_timestamp<C: Packet>(ctx: &C, p: &Parsed) -> Option<usize> {
    if p.tcp_opt_len == 0 {
        return None;
    }
    let base = p.l4_off + TCP_MIN_LEN;
    // The layout of nearly every segment, inline: one read rather than a call and a copy.
    let at = if p.tcp_opt_len >= 12 && read::<C, u32>(ctx, base).ok() == Some(tcpopt::NOP_NOP_TS) {
        base + 2
    } else {
        ctx.tcp_timestamp(base, p.tcp_opt_len)?
    };
    // The verifier needs a bound on the offset that reaches the packet pointer. Every offset
    // is below 256 (headers of at most MAX_HEADERS bytes, options of 40), but the compiler,
    // knowing that, drops a plain mask; one it cannot see through stays, and the verifier
    // reads the constant back from the stack.
    let mask: usize = 0xff;
    // SAFETY: a read of a local.
    Some(at & unsafe { core::ptr::read_volatile(&mask) })
}

/// The option walk behind `Packet::tcp_timestamp`: the offset of the timestamp option among
/// the `len` option bytes at `base`, or `NO_TIMESTAMP`. The bytes present are copied onto the
/// stack by the hook's helper and walked there: one bounds check rather than one per byte
/// (which the verifier, in a function of its own, could not follow). Found offsets are below
/// 256 (`base` at most `MAX_HEADERS`, options at most 40 bytes): the callers' mask relies on it.
#[inline(always)]
pub fn walk_tcp_options<C: Packet>(ctx: &C, base: u32, len: u32) -> u32 {
    // The arguments come unbounded into the hooks' global functions.
    if base > MAX_HEADERS {
        return NO_TIMESTAMP;
    }
    let base = base as usize;
    let len = (len as usize).min(tcpopt::MAX_OPTIONS_LEN);
    // The bytes the packet holds directly (TC pulled the headers in): what the rewrite can
    // reach, and what the walk read before it copied them.
    let n = len.min((ctx.data_end() - ctx.data()).saturating_sub(base));
    let mut opts = [0u8; tcpopt::MAX_OPTIONS_LEN];
    if n == 0 || !ctx.load_bytes(base, &mut opts, n) {
        return NO_TIMESTAMP;
    }
    // The walk reads as it would from the packet: the option bytes a short frame lacks are
    // not there (which ends the walk), the rest are.
    tcpopt::find_timestamp(len, |i| if i < n { opts.get(i).copied() } else { None })
        .map_or(NO_TIMESTAMP, |at| (base + at) as u32)
}

/// `walk_tcp_options`' answer for a segment without a well-formed timestamp option.
pub const NO_TIMESTAMP: u32 = u32::MAX;
