//! The DNS fast path: an A query for a name the daemon put in `LB_DNS_A`, sent to the address
//! and port of `--dns-listen`, is answered in place and sent back out of the interface it came
//! in on (XDP_TX), without reaching the stack. Everything else to that port passes to the
//! userspace server untouched, which answers it as before: other types and classes, names the
//! map does not hold or longer than `DNS_NAME_MAX`, compression in the question, EDNS versions
//! other than 0, bytes after the question, IP options, and interfaces not in `LB_XDP_TX` (their
//! peers may not take XDP frames).
//!
//! Off unless `--dns-fast-path` is given. The answer is longer than the query: the frame grows
//! at the front (every XDP frame has headroom; a veth gives none at the back) and the headers
//! and the question move down to the new start.
//!
//! The answer is the question with the A records after it (each names the question by the
//! pointer `0xc00c`), rotated from a random start, authoritative, with an OPT record of
//! 1,232 bytes (and no options) when the query had one. The UDP checksum is left at zero, which
//! IPv4 allows, so the answer costs no pass over its bytes.
use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::xdp_action::XDP_TX,
    helpers::{
        bpf_get_prandom_u32, bpf_xdp_adjust_head, bpf_xdp_adjust_tail, bpf_xdp_get_buff_len,
        generated::bpf_xdp_load_bytes,
    },
    programs::XdpContext,
};
use lb_common::{DNS_ADDRS_MAX, DNS_NAME_MAX, DnsName, DnsStat, IPPROTO_UDP, Stat};

use crate::{
    context::{Packet, ptr_at},
    maps::{LB_DNS_A, LB_XDP_TX, count_dns},
    mem::{NAME_WORDS, NameSlot, write_bytes, zero_name},
    parse::{ETH_LEN, Parsed},
};

/// Set by the daemon when it loads the programs (`--dns-listen`, `--dns-ttl`): the port, in
/// network order (0: the fast path is off, and the verifier drops it from the program); the
/// address, in network order (0: any); the records' TTL.
#[unsafe(no_mangle)]
static LB_DNS_PORT: u16 = 0;
#[unsafe(no_mangle)]
static LB_DNS_ADDR: u32 = 0;
#[unsafe(no_mangle)]
static LB_DNS_TTL: u32 = 0;

const IP_LEN: usize = 20;
const UDP_OFF: usize = ETH_LEN + IP_LEN;
const UDP_LEN: usize = 8;
const DNS_OFF: usize = UDP_OFF + UDP_LEN;
const DNS_HDR: usize = 12;
const NAME_OFF: usize = DNS_OFF + DNS_HDR;
/// Type and class after the name.
const QTAIL: usize = 4;
/// Name pointer, type, class, TTL, length, address.
const ANSWER_LEN: usize = 16;
const OPT_LEN: usize = 11;
const TYPE_A: [u8; 2] = [0, 1];
const CLASS_IN: [u8; 2] = [0, 1];
const TYPE_OPT: [u8; 2] = [0, 41];
const EDNS_UDP_SIZE: u16 = 1232;

/// The most an answer outgrows its query: every record, and an OPT where the query had none
/// (a mask: a power of two less one, so that the verifier keeps offsets bounded).
const MAX_GROWTH: usize = 255;
const _: () = assert!(DNS_ADDRS_MAX * ANSWER_LEN + OPT_LEN <= MAX_GROWTH);

/// The length of the wire-format name at the start of `raw`, root label included, if its end
/// lies within the first `loaded` bytes: labels only (a compression pointer or a reserved
/// label type sends the query to the server). A label is at least one byte behind its length,
/// so a name of `DNS_NAME_MAX` bytes has fewer than `DNS_NAME_MAX / 2` labels.
#[inline(always)]
fn name_len(raw: &DnsName, loaded: usize) -> Option<usize> {
    let mut i = 0usize;
    for _ in 0..DNS_NAME_MAX / 2 {
        if i >= loaded {
            return None;
        }
        let len = *raw.wire.get(i)? as usize;
        if len == 0 {
            return Some(i + 1);
        }
        if len > 63 {
            return None;
        }
        i += len + 1;
    }
    None
}

/// Eight bytes with `A`–`Z` made lowercase and every other byte as it was (label lengths are at
/// most 63, below `A`, so a whole name is lowered at once), without a branch or a byte loop.
#[inline(always)]
fn lower8(x: u64) -> u64 {
    const ONES: u64 = u64::MAX / 0xff;
    let low7 = x & (0x7f * ONES);
    // The top bit of each byte: its low seven bits are at least `A`, and above `Z`.
    let from_a = low7 + (0x80 - b'A' as u64) * ONES;
    let past_z = low7 + (0x7f - b'Z' as u64) * ONES;
    let upper = from_a & !past_z & !x & (0x80 * ONES);
    x | upper >> 2
}

/// Turns the name of `len` bytes in `slot` into the map's key: lowered, and zero after its
/// end, a word at a time.
#[inline(always)]
fn make_key(slot: &mut NameSlot, len: usize) {
    let words = slot.words_mut();
    let mut w = 0;
    while w < NAME_WORDS {
        let at = w * 8;
        // The bytes of this word before the name's end (memory order: the low bytes first).
        let keep = if len >= at + 8 {
            u64::MAX
        } else if len <= at {
            0
        } else {
            (1u64 << ((len - at) * 8)) - 1
        };
        words[w] = lower8(words[w]) & keep.to_le();
        w += 1;
    }
}

/// The most bytes `move_down` moves: the headers and a question of the longest name.
const MAX_MOVE: usize = NAME_OFF + DNS_NAME_MAX + QTAIL;
const _: () = assert!(MAX_MOVE < 128);

/// Moves the first `len` bytes (8 to `MAX_MOVE`) at `by` bytes into the frame down to its
/// start, eight at a time, lowest first: the copy goes to lower addresses, so no word is
/// overwritten before it is read. The last eight bytes are read before anything is written
/// and written last, so a length that is no multiple of eight needs no byte loop (a one-byte
/// bounds check compiles to a comparison the verifier takes as proving nothing). Inline
/// copies, where four helper calls (a load and a store per 64-byte piece, through the stack)
/// cost more than the move.
#[inline(always)]
fn move_down(ctx: &XdpContext, by: usize, len: usize) -> Option<()> {
    if !(8..=MAX_MOVE).contains(&len) {
        return None;
    }
    // Masked (a no-op: MAX_MOVE is under 128) so that the offset stays one variable: the
    // verifier refuses a packet pointer with a negative constant part.
    let tail = (len - 8) & 127;
    let last: *const u64 = checked(ctx, by + tail)?;
    // SAFETY: checked against the frame. Word accesses on purpose, though the frame's words
    // need not be aligned: `read_unaligned` compiles to eight byte loads and shifts on the BPF
    // backend, and the kernel takes packet accesses at any alignment where the architecture
    // has efficient unaligned access (x86-64, arm64), as the verifier checks.
    let last = unsafe { *last };
    let mut at = 0usize;
    for _ in 0..MAX_MOVE / 8 {
        if at + 8 > len {
            break;
        }
        let from: *const u64 = checked(ctx, by + at)?;
        let to: *mut u64 = checked(ctx, at)?;
        // SAFETY: as above.
        unsafe { *to = *from };
        at += 8;
    }
    let to: *mut u64 = checked(ctx, tail)?;
    // SAFETY: as above.
    unsafe { *to = last };
    Some(())
}

/// `ptr_at` with the frame's end read again, volatile, so that the compiler keeps every such
/// check: it would drop one it takes as implied by another (a word below one already checked),
/// which the verifier cannot follow, as it does not relate two variable offsets.
#[inline(always)]
fn checked<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    // SAFETY: a read of the program's context.
    let end = unsafe { core::ptr::read_volatile(&(*ctx.ctx).data_end) } as usize;
    let start = ctx.data();
    if start + off + size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

#[inline(always)]
fn global<T: Copy>(v: &T) -> T {
    // SAFETY: a plain read of a static the loader may have set; volatile so that the compiler
    // does not fold the build's zero in.
    unsafe { core::ptr::read_volatile(v) }
}

/// Whether the packet goes to the DNS server's address and port: constants and the parsed key
/// only, nothing looked up.
#[inline(always)]
pub fn for_server(p: &Parsed) -> bool {
    let port = global(&LB_DNS_PORT);
    let addr = global(&LB_DNS_ADDR);
    port != 0
        && p.key.proto == IPPROTO_UDP
        && p.key.dport == port
        && (addr == 0 || p.key.dst == addr)
}

/// Why a query was not answered here.
enum NotHere {
    /// Nothing changed yet: the server gets the query.
    Pass,
    /// The packet was resized and then could not be written: dropped (the client retries).
    Drop,
}

/// Answers the query in place (`XDP_TX`), or says why not: `PassNotService` hands it to the
/// stack untouched, `ErrRewrite` drops it.
#[inline(always)]
pub fn answer(ctx: &mut XdpContext, p: &Parsed) -> Result<u32, Stat> {
    match try_answer(ctx, p) {
        Ok(verdict) => {
            count_dns(DnsStat::Answered);
            Ok(verdict)
        }
        Err(NotHere::Pass) => {
            count_dns(DnsStat::ToServer);
            Err(Stat::PassNotService)
        }
        Err(NotHere::Drop) => Err(Stat::ErrRewrite),
    }
}

#[inline(always)]
fn be16(hi: u8, lo: u8) -> u16 {
    (hi as u16) << 8 | lo as u16
}

#[inline(always)]
fn try_answer(ctx: &mut XdpContext, p: &Parsed) -> Result<u32, NotHere> {
    use NotHere::{Drop, Pass};
    if p.first_fragment || p.l4_off != UDP_OFF {
        return Err(Pass);
    }
    let ifindex = Packet::ingress_ifindex(ctx);
    // SAFETY: read-only lookup.
    if unsafe { LB_XDP_TX.get(&ifindex) }.is_none() {
        return Err(Pass);
    }
    let udp: *const [u8; UDP_LEN] = ptr_at(ctx, UDP_OFF).ok_or(Pass)?;
    // SAFETY: ptr_at checked the bytes lie in the packet.
    let udp = unsafe { *udp };
    let udp_len = be16(udp[4], udp[5]) as usize;
    let h: *const [u8; DNS_HDR] = ptr_at(ctx, DNS_OFF).ok_or(Pass)?;
    // SAFETY: as above.
    let h = unsafe { *h };
    // A standard query (QR, opcode, AA and TC clear), one question, nothing else but an OPT.
    let ar = be16(h[10], h[11]);
    if h[2] & 0xfe != 0
        || be16(h[4], h[5]) != 1
        || be16(h[6], h[7]) != 0
        || be16(h[8], h[9]) != 0
        || ar > 1
    {
        return Err(Pass);
    }
    // The name's first DNS_NAME_MAX bytes at most, by one helper call (the parser made sure
    // the frame holds the IP datagram), made the map's key in place.
    let datagram_end = ETH_LEN + p.tot_len as usize;
    if datagram_end <= NAME_OFF {
        return Err(Pass);
    }
    let loaded = (datagram_end - NAME_OFF).min(DNS_NAME_MAX);
    let mut slot = MaybeUninit::uninit();
    let key = zero_name(&mut slot);
    // SAFETY: the slot holds DNS_NAME_MAX bytes and `loaded` is at most that; the helper
    // checks the offset and length against the frame.
    if unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx,
            NAME_OFF as u32,
            key.name_mut().wire.as_mut_ptr().cast(),
            loaded as u32,
        )
    } != 0
    {
        return Err(Pass);
    }
    let name_len = name_len(key.name(), loaded).ok_or(Pass)?;
    make_key(key, name_len);
    let q: *const [u8; QTAIL] = ptr_at(ctx, NAME_OFF + name_len).ok_or(Pass)?;
    // SAFETY: as above.
    let q = unsafe { *q };
    if [q[0], q[1]] != TYPE_A || [q[2], q[3]] != CLASS_IN {
        return Err(Pass);
    }
    let question_end = NAME_OFF + name_len + QTAIL;
    let mut end = question_end;
    if ar == 1 {
        let o: *const [u8; OPT_LEN] = ptr_at(ctx, question_end).ok_or(Pass)?;
        // SAFETY: as above.
        let o = unsafe { *o };
        // Root owner, type OPT, version 0; its options (a cookie, say) are not echoed, as a
        // server that does not know them does.
        if o[0] != 0 || [o[1], o[2]] != TYPE_OPT || o[6] != 0 {
            return Err(Pass);
        }
        end += OPT_LEN + be16(o[9], o[10]) as usize;
    }
    if end != UDP_OFF + udp_len || end != datagram_end {
        return Err(Pass);
    }
    // SAFETY: read-only lookup; the value is copied before the packet changes.
    let rec = match unsafe { LB_DNS_A.get(key.name()) } {
        Some(r) => *r,
        None => return Err(Pass),
    };
    let n = rec.count as usize;
    if n == 0 || n > DNS_ADDRS_MAX {
        return Err(Pass);
    }
    let opt_len = if ar == 1 { OPT_LEN } else { 0 };
    let payload = DNS_HDR + name_len + QTAIL + n * ANSWER_LEN + opt_len;
    // The frame's length from the helper: a difference of packet pointers is no number the
    // verifier lets the program use.
    // SAFETY: plain helper call on the program's context.
    let frame = unsafe { bpf_xdp_get_buff_len(ctx.ctx) } as i32;
    let delta = (DNS_OFF + payload) as i32 - frame;
    if delta > 0 {
        // Grown at the front, where every XDP frame has its headroom: at the back a veth
        // hands XDP an skb's buffer cut to size, and the growth there failed for most queries.
        // The headers and the question then move down to the new start.
        if delta > MAX_GROWTH as i32 {
            return Err(Pass);
        }
        // SAFETY: the helper checks the new start against the headroom.
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, -delta) } != 0 {
            return Err(Pass);
        }
        let grown = delta as usize & MAX_GROWTH;
        move_down(ctx, grown, NAME_OFF + name_len + QTAIL).ok_or(Drop)?;
    } else {
        // One way for a shrink and for no change (one path less for the verifier to walk).
        // SAFETY: the helper checks the new length; shrinking always fits.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
            return Err(Pass);
        }
    }
    // From here the packet is the answer; a failed check below drops it.
    let eth: *mut [u8; 12] = ptr_at(ctx, 0).ok_or(Drop)?;
    // SAFETY: ptr_at checked every pointer below against the packet's new end.
    unsafe {
        let e = *eth;
        let mut out = [0u8; 12];
        out[..6].copy_from_slice(&e[6..]);
        out[6..].copy_from_slice(&e[..6]);
        *eth = out;
    }
    let ip: *mut [u8; IP_LEN] = ptr_at(ctx, ETH_LEN).ok_or(Drop)?;
    unsafe {
        let mut h = *ip;
        let (src, dst) = ([h[12], h[13], h[14], h[15]], [h[16], h[17], h[18], h[19]]);
        h[12..16].copy_from_slice(&dst);
        h[16..20].copy_from_slice(&src);
        h[2..4].copy_from_slice(&((IP_LEN + UDP_LEN + payload) as u16).to_be_bytes());
        h[8] = 64;
        h[10] = 0;
        h[11] = 0;
        let mut sum = 0u32;
        let mut w = 0;
        while w < IP_LEN {
            sum += be16(h[w], h[w + 1]) as u32;
            w += 2;
        }
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        h[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        *ip = h;
    }
    let udp: *mut [u8; UDP_LEN] = ptr_at(ctx, UDP_OFF).ok_or(Drop)?;
    unsafe {
        let u = *udp;
        let len = ((UDP_LEN + payload) as u16).to_be_bytes();
        *udp = [u[2], u[3], u[0], u[1], len[0], len[1], 0, 0];
    }
    let h: *mut [u8; DNS_HDR] = ptr_at(ctx, DNS_OFF).ok_or(Drop)?;
    unsafe {
        let mut d = *h;
        // Response, authoritative, RD as asked; CD as asked (RFC 6840); no error.
        d[2] = 0x84 | (d[2] & 0x01);
        d[3] &= 0x10;
        d[6..8].copy_from_slice(&(n as u16).to_be_bytes());
        d[8] = 0;
        d[9] = 0;
        d[10] = 0;
        d[11] = (ar == 1) as u8;
        *h = d;
    }
    let ttl = global(&LB_DNS_TTL).to_be_bytes();
    // SAFETY: helper without side effects.
    let start = unsafe { bpf_get_prandom_u32() } as usize % n;
    let mut i = 0;
    while i < DNS_ADDRS_MAX {
        if i >= n {
            break;
        }
        let mut k = start + i;
        if k >= n {
            k -= n;
        }
        let Some(addr) = rec.addrs.get(k) else {
            return Err(Drop);
        };
        let a = addr.to_ne_bytes();
        let rr: *mut [u8; ANSWER_LEN] = ptr_at(ctx, question_end + i * ANSWER_LEN).ok_or(Drop)?;
        unsafe {
            *rr = [
                0xc0, 0x0c, 0, 1, 0, 1, ttl[0], ttl[1], ttl[2], ttl[3], 0, 4, a[0], a[1], a[2],
                a[3],
            ];
        }
        i += 1;
    }
    if ar == 1 {
        let o: *mut [u8; OPT_LEN] = ptr_at(ctx, question_end + n * ANSWER_LEN).ok_or(Drop)?;
        let size = EDNS_UDP_SIZE.to_be_bytes();
        unsafe {
            write_bytes(
                o,
                [
                    0,
                    TYPE_OPT[0],
                    TYPE_OPT[1],
                    size[0],
                    size[1],
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                ],
            )
        };
    }
    Ok(XDP_TX)
}
