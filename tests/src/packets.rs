//! Building test packets byte by byte (Ethernet, IPv4 with optional options and fragment
//! fields, TCP or UDP) with correct checksums, and reading the fields of an output packet.
use std::net::{Ipv4Addr, SocketAddrV4};

use lb_common::{FlowKey, csum};

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_PSH: u8 = 0x08;

#[derive(Clone, Debug)]
pub struct Pkt {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub ether_type: u16,
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub proto: u8,
    pub ttl: u8,
    pub tcp_flags: u8,
    pub ip_options: Vec<u8>,
    /// TCP option bytes (a multiple of 4, at most 40), after the fixed header.
    pub tcp_options: Vec<u8>,
    /// The raw flags+offset field (host order): 0x2000 = more fragments.
    pub frag: u16,
    pub payload: Vec<u8>,
    /// Send UDP without a checksum (0).
    pub udp_no_checksum: bool,
}

impl Pkt {
    fn new(proto: u8, src: SocketAddrV4, dst: SocketAddrV4) -> Self {
        Self {
            dst_mac: [0x02, 0, 0, 0, 0, 0x01],
            src_mac: [0x02, 0, 0, 0, 0, 0x02],
            ether_type: 0x0800,
            src,
            dst,
            proto,
            ttl: 64,
            tcp_flags: 0,
            ip_options: Vec::new(),
            tcp_options: Vec::new(),
            frag: 0,
            payload: b"hello, balancer".to_vec(),
            udp_no_checksum: false,
        }
    }

    pub fn tcp(src: SocketAddrV4, dst: SocketAddrV4, flags: u8) -> Self {
        Self {
            tcp_flags: flags,
            ..Self::new(6, src, dst)
        }
    }

    pub fn udp(src: SocketAddrV4, dst: SocketAddrV4) -> Self {
        Self::new(17, src, dst)
    }

    /// With the option list Linux puts on a SYN: MSS, SACK permitted, timestamps, NOP,
    /// window scale.
    pub fn with_syn_timestamps(mut self, tsval: u32, tsecr: u32) -> Self {
        self.tcp_options = [2, 4, 5, 0xb4, 4, 2].to_vec();
        self.tcp_options.extend(ts_option(tsval, tsecr));
        self.tcp_options.extend([1, 3, 3, 7]);
        self
    }

    /// With the option list of a data segment: NOP, NOP, timestamps.
    pub fn with_timestamps(mut self, tsval: u32, tsecr: u32) -> Self {
        self.tcp_options = vec![1, 1];
        self.tcp_options.extend(ts_option(tsval, tsecr));
        self
    }
}

/// The timestamp option's ten bytes.
pub fn ts_option(tsval: u32, tsecr: u32) -> Vec<u8> {
    let mut o = vec![8, 10];
    o.extend(tsval.to_be_bytes());
    o.extend(tsecr.to_be_bytes());
    o
}

/// A DNS query as dig sends it (RD and AD set): header, one question for `name` of type
/// `qtype`, and an OPT record (DO set) when `edns` gives its version and option bytes.
pub fn dns_query(id: u16, name: &str, qtype: u16, edns: Option<(u8, &[u8])>) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend([0x01, 0x20]);
    q.extend([0, 1, 0, 0, 0, 0, 0, u8::from(edns.is_some())]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend(label.as_bytes());
    }
    q.push(0);
    q.extend(qtype.to_be_bytes());
    q.extend([0, 1]);
    if let Some((version, options)) = edns {
        q.extend([0, 0, 41, 0x10, 0x00, 0, version, 0x80, 0]);
        q.extend((options.len() as u16).to_be_bytes());
        q.extend(options);
    }
    q
}

impl Pkt {
    /// The flow-table key this packet looks up: its addresses, ports and protocol as the
    /// data plane reads them (network order).
    pub fn flow_key(&self) -> FlowKey {
        FlowKey {
            src: u32::from(*self.src.ip()).to_be(),
            dst: u32::from(*self.dst.ip()).to_be(),
            sport: self.src.port().to_be(),
            dport: self.dst.port().to_be(),
            proto: self.proto,
            _pad: [0; 3],
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        let (sp, dp) = (self.src.port().to_be_bytes(), self.dst.port().to_be_bytes());
        if self.proto == 6 {
            l4.extend_from_slice(&sp);
            l4.extend_from_slice(&dp);
            l4.extend_from_slice(&0x0102_0304u32.to_be_bytes()); // seq
            l4.extend_from_slice(&0x0a0b_0c0du32.to_be_bytes()); // ack
            assert!(
                self.tcp_options.len().is_multiple_of(4) && self.tcp_options.len() <= 40,
                "TCP options must pad to 4 bytes"
            );
            l4.push(((20 + self.tcp_options.len()) / 4) as u8 * 16);
            l4.push(self.tcp_flags);
            l4.extend_from_slice(&0xfaf0u16.to_be_bytes()); // window
            l4.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
            l4.extend_from_slice(&self.tcp_options);
        } else {
            l4.extend_from_slice(&sp);
            l4.extend_from_slice(&dp);
            l4.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
            l4.extend_from_slice(&[0, 0]);
        }
        l4.extend_from_slice(&self.payload);
        let (s, d) = (self.src.ip().octets(), self.dst.ip().octets());
        let check_at = if self.proto == 6 { 16 } else { 6 };
        if !(self.proto == 17 && self.udp_no_checksum) {
            let mut c = csum::l4_checksum(s, d, self.proto, &l4);
            if self.proto == 17 && c == 0 {
                c = 0xffff;
            }
            l4[check_at..check_at + 2].copy_from_slice(&c.to_ne_bytes());
        }
        let ihl = 20 + self.ip_options.len();
        assert!(
            ihl.is_multiple_of(4) && ihl <= 60,
            "IP options must pad to 4 bytes"
        );
        let mut ip = vec![(4 << 4) | (ihl / 4) as u8, 0];
        ip.extend_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&0x1234u16.to_be_bytes());
        ip.extend_from_slice(&self.frag.to_be_bytes());
        ip.push(self.ttl);
        ip.push(self.proto);
        ip.extend_from_slice(&[0, 0]);
        ip.extend_from_slice(&s);
        ip.extend_from_slice(&d);
        ip.extend_from_slice(&self.ip_options);
        let c = csum::checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_ne_bytes());
        let mut out = Vec::new();
        out.extend_from_slice(&self.dst_mac);
        out.extend_from_slice(&self.src_mac);
        out.extend_from_slice(&self.ether_type.to_be_bytes());
        out.extend_from_slice(&ip);
        out.extend_from_slice(&l4);
        out
    }
}

/// The fields of an IPv4 TCP/UDP frame, for assertions on program output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub ttl: u8,
    pub ip_checksum_ok: bool,
    pub l4_checksum_ok: bool,
    pub l4_checksum: u16,
    /// TSval and TSecr of a TCP segment's timestamp option, if it has one.
    pub timestamps: Option<(u32, u32)>,
}

pub fn read(frame: &[u8]) -> Seen {
    let ip = &frame[14..];
    let ihl = ((ip[0] & 0x0f) * 4) as usize;
    let tot = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    let l4 = &ip[ihl..tot];
    let s: [u8; 4] = ip[12..16].try_into().unwrap();
    let d: [u8; 4] = ip[16..20].try_into().unwrap();
    let proto = ip[9];
    let check_at = if proto == 6 { 16 } else { 6 };
    let l4_checksum = u16::from_be_bytes([l4[check_at], l4[check_at + 1]]);
    let l4_checksum_ok = if proto == 17 && l4_checksum == 0 {
        true
    } else {
        csum::fold(csum::sum(l4, csum::sum(&pseudo(s, d, proto, l4.len()), 0))) == 0xffff
    };
    let mut timestamps = None;
    if proto == 6 {
        let opts = &l4[20..((l4[12] >> 4) as usize * 4).max(20)];
        if let Some(at) = lb_common::tcpopt::find_timestamp(opts.len(), |i| opts.get(i).copied()) {
            let word = |o: usize| u32::from_be_bytes(opts[at + o..at + o + 4].try_into().unwrap());
            timestamps = Some((word(2), word(6)));
        }
    }
    Seen {
        timestamps,
        dst_mac: frame[0..6].try_into().unwrap(),
        src_mac: frame[6..12].try_into().unwrap(),
        src: SocketAddrV4::new(Ipv4Addr::from(s), u16::from_be_bytes([l4[0], l4[1]])),
        dst: SocketAddrV4::new(Ipv4Addr::from(d), u16::from_be_bytes([l4[2], l4[3]])),
        ttl: ip[8],
        ip_checksum_ok: csum::checksum(&ip[..ihl]) == 0,
        l4_checksum_ok,
        l4_checksum,
    }
}

fn pseudo(s: [u8; 4], d: [u8; 4], proto: u8, len: usize) -> [u8; 12] {
    let mut p = [0u8; 12];
    p[..4].copy_from_slice(&s);
    p[4..8].copy_from_slice(&d);
    p[9] = proto;
    p[10..12].copy_from_slice(&(len as u16).to_be_bytes());
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_packets_have_valid_checksums() {
        let a: SocketAddrV4 = "10.0.0.2:40000".parse().unwrap();
        let b: SocketAddrV4 = "10.0.0.1:10000".parse().unwrap();
        for p in [Pkt::tcp(a, b, TCP_SYN), Pkt::udp(a, b)] {
            let s = read(&p.bytes());
            assert!(s.ip_checksum_ok && s.l4_checksum_ok, "{s:?}");
            assert_eq!((s.src, s.dst), (a, b));
        }
        let mut opt = Pkt::tcp(a, b, TCP_SYN);
        opt.ip_options = vec![1, 1, 1, 0];
        let s = read(&opt.bytes());
        assert!(s.ip_checksum_ok && s.l4_checksum_ok && s.dst == b, "{s:?}");
    }
}

/// Verdicts a packet program returns (the kernel's UAPI values), as `BPF_PROG_TEST_RUN`
/// reports them.
pub mod verdict {
    pub const XDP_DROP: u32 = 1;
    pub const XDP_PASS: u32 = 2;
    pub const XDP_TX: u32 = 3;
    pub const XDP_REDIRECT: u32 = 4;
    pub const TC_ACT_OK: u32 = 0;
    pub const TC_ACT_SHOT: u32 = 2;
    pub const TC_ACT_REDIRECT: u32 = 7;
}
