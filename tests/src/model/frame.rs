//! The model's own reading of a frame (what the data plane is meant to treat as an IPv4 TCP/UDP
//! packet it may balance) and its own checksum arithmetic, written from the RFCs rather than
//! from lb-ebpf: Ethernet II, IPv4 (RFC 791), TCP (RFC 9293) and its timestamp option (RFC
//! 7323), UDP (RFC 768), the Internet checksum (RFC 1071).
use lb_common::{FlowKey, IPPROTO_TCP, IPPROTO_UDP, Stat};

pub const ETH_LEN: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Options of a TCP header (RFC 9293 §3.1: kinds 0 and 1 are one byte, the rest carry a
/// length) that the data plane walks before giving up on finding the timestamp option
/// (README, Limits: "among the first 16 TCP options").
pub const TS_SEARCH_OPTIONS: usize = 16;

/// What a frame says about itself, as far as the balancer needs it.
#[derive(Clone, Debug)]
pub struct Headers {
    pub key: FlowKey,
    pub ihl: usize,
    /// Offset of the TCP/UDP header in the frame.
    pub l4: usize,
    pub tot_len: u16,
    pub ttl: u8,
    pub tcp_flags: u8,
    /// More fragments follow (offset 0): only the first fragment carries the ports.
    pub first_fragment: bool,
    /// Offset in the frame of the timestamp option of a TCP segment, if it has a well-formed one
    /// within its header.
    pub ts_at: Option<usize>,
}

impl Headers {
    pub fn is_tcp(&self) -> bool {
        self.key.proto == IPPROTO_TCP
    }

    /// SYN without ACK: a connection attempt.
    pub fn opens(&self) -> bool {
        self.is_tcp() && self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }

    pub fn closes(&self) -> bool {
        self.is_tcp() && self.tcp_flags & (TCP_FIN | TCP_RST) != 0
    }

    pub fn l4_check_at(&self) -> usize {
        self.l4 + if self.is_tcp() { 16 } else { 6 }
    }
}

/// Which length checks the model applies beyond the ones the data plane is known to make; see
/// `Deviations` in the parent module for why each is switchable.
#[derive(Clone, Copy, Debug)]
pub struct LengthRules {
    /// `tot_len` larger than the bytes the frame holds after the Ethernet header.
    pub tot_len_past_frame: bool,
    /// TCP data offset below 5 words, or a TCP header longer than the datagram.
    pub tcp_doff: bool,
    /// UDP length field below 8 or beyond the datagram.
    pub udp_len: bool,
}

impl LengthRules {
    /// Only the checks every reading makes (the data plane's own).
    pub const NONE: Self = Self {
        tot_len_past_frame: false,
        tcp_doff: false,
        udp_len: false,
    };
}

fn be16(f: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*f.get(at)?, *f.get(at + 1)?]))
}

fn raw32(f: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(f.get(at..at + 4)?.try_into().ok()?))
}

fn raw16(f: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(f.get(at..at + 2)?.try_into().ok()?))
}

/// Reads a frame; `Err` is the reason a packet is none of the balancer's business as a
/// TCP/UDP packet (it then passes untouched).
pub fn parse(f: &[u8], rules: LengthRules) -> Result<Headers, Stat> {
    let ether_type = be16(f, 12).ok_or(Stat::PassNotIpv4)?;
    if ether_type != ETHERTYPE_IPV4 {
        return Err(Stat::PassNotIpv4);
    }
    let ip = &f[ETH_LEN..];
    if ip.len() < 20 {
        return Err(Stat::PassMalformed);
    }
    let ihl = (ip[0] & 0x0f) as usize * 4;
    if ip[0] >> 4 != 4 || ihl < 20 {
        return Err(Stat::PassMalformed);
    }
    let proto = ip[9];
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return Err(Stat::PassNotL4);
    }
    let tot_len = u16::from_be_bytes([ip[2], ip[3]]);
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    if frag & 0x1fff != 0 {
        return Err(Stat::PassFragment);
    }
    let first_fragment = frag & 0x2000 != 0;
    let fixed_l4 = if proto == IPPROTO_TCP { 20 } else { 8 };
    if (tot_len as usize) < ihl + fixed_l4 && !first_fragment {
        return Err(Stat::PassMalformed);
    }
    if rules.tot_len_past_frame && tot_len as usize > ip.len() && !first_fragment {
        return Err(Stat::PassMalformed);
    }
    let l4 = ETH_LEN + ihl;
    // The ports are what a first fragment is recognised by; without them nothing is known.
    let sport = raw16(f, l4).ok_or(Stat::PassMalformed)?;
    let dport = raw16(f, l4 + 2).ok_or(Stat::PassMalformed)?;
    if f.len() < l4 + fixed_l4 && !first_fragment {
        return Err(Stat::PassMalformed);
    }
    let mut tcp_flags = 0;
    let mut ts_at = None;
    if proto == IPPROTO_TCP {
        tcp_flags = f.get(l4 + 13).copied().unwrap_or(0);
        let doff = f.get(l4 + 12).map_or(0, |b| (b >> 4) as usize * 4);
        if rules.tcp_doff && !first_fragment && (doff < 20 || ihl + doff > tot_len as usize) {
            return Err(Stat::PassMalformed);
        }
        if doff > 20 && ihl + doff <= tot_len as usize {
            ts_at = find_timestamp(f, l4 + 20, doff - 20);
        }
    } else if rules.udp_len && !first_fragment {
        let ulen = be16(f, l4 + 4).unwrap_or(0) as usize;
        if ulen < 8 || ulen > tot_len as usize - ihl {
            return Err(Stat::PassMalformed);
        }
    }
    Ok(Headers {
        key: FlowKey {
            src: raw32(f, ETH_LEN + 12).unwrap_or(0),
            dst: raw32(f, ETH_LEN + 16).unwrap_or(0),
            sport,
            dport,
            proto,
            _pad: [0; 3],
        },
        ihl,
        l4,
        tot_len,
        ttl: ip[8],
        tcp_flags,
        first_fragment,
        ts_at,
    })
}

/// RFC 7323 §2: the timestamp option is kind 8, length 10. Walks at most
/// `TS_SEARCH_OPTIONS` options; a malformed length, an end-of-list or a kind or length byte
/// the frame does not hold ends the search with nothing (nothing unparsed is ever rewritten).
fn find_timestamp(f: &[u8], start: usize, len: usize) -> Option<usize> {
    let mut i = 0;
    for _ in 0..TS_SEARCH_OPTIONS {
        if i >= len {
            return None;
        }
        match *f.get(start + i)? {
            0 => return None,
            1 => i += 1,
            kind => {
                if i + 1 >= len {
                    return None;
                }
                let olen = *f.get(start + i + 1)? as usize;
                if olen < 2 || i + olen > len {
                    return None;
                }
                if kind == 8 {
                    return (olen == 10).then_some(start + i);
                }
                i += olen;
            }
        }
    }
    None
}

/// One's-complement sum of `data` as big-endian 16-bit words, folded to 16 bits.
pub fn ones_sum(data: &[u8], mut acc: u32) -> u16 {
    for pair in data.chunks(2) {
        let hi = pair[0] as u32;
        let lo = pair.get(1).copied().unwrap_or(0) as u32;
        acc += (hi << 8) | lo;
        acc = (acc & 0xffff) + (acc >> 16);
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The IPv4 header's sum (checksum field included): 0xffff when valid.
pub fn ip_residual(f: &[u8], ihl: usize) -> u16 {
    ones_sum(&f[ETH_LEN..(ETH_LEN + ihl).min(f.len())], 0)
}

/// The TCP/UDP segment's sum with its pseudo-header (checksum field included), over the
/// bytes the IP header says it has (or the frame holds, if fewer): 0xffff when valid.
pub fn l4_residual(f: &[u8], h: &Headers) -> u16 {
    let seg_len = (h.tot_len as usize).saturating_sub(h.ihl);
    let end = (h.l4 + seg_len).min(f.len());
    let mut pseudo = [0u8; 12];
    pseudo[..8].copy_from_slice(&f[ETH_LEN + 12..ETH_LEN + 20]);
    pseudo[9] = h.key.proto;
    pseudo[10..].copy_from_slice(&(seg_len as u16).to_be_bytes());
    let p = ones_sum(&pseudo, 0) as u32;
    ones_sum(&f[h.l4..end.max(h.l4)], p)
}

/// Sets the 16-bit checksum at `at` so that `residual` (a closure summing the region with the
/// field in place) comes out as `want`: the rewrite keeps a valid checksum valid and an invalid
/// one invalid by the same amount, as an incremental update (RFC 1624) does.
pub fn set_check(f: &mut [u8], at: usize, want: u16, residual: impl Fn(&[u8]) -> u16) {
    f[at] = 0;
    f[at + 1] = 0;
    let without = residual(f);
    // without + c ≡ want (mod 0xffff)  ⇒  c = want + ~without
    let c = ones_sum(&[], want as u32 + (!without) as u32);
    f[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// Two checksum fields that verify alike: equal, or the two forms of one's-complement zero.
pub fn same_checksum(a: u16, b: u16) -> bool {
    a == b || (a == 0 && b == 0xffff) || (a == 0xffff && b == 0)
}
