//! Between the maps' plain data (network byte order, flag bits) and the daemon's types: the
//! one place where bytes are swapped and flags are decoded.
use std::net::{Ipv4Addr, SocketAddrV4};

use lb_common::{Backend, SVC_F_AFFINITY_SOURCE, ServiceKey};

use crate::services::{Balance, Listener, Protocol};

/// An address and port as the maps hold them.
pub fn sock(addr: u32, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip(addr), u16::from_be(port))
}

pub fn ip(addr: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from_be(addr))
}

pub fn be_ip(addr: Ipv4Addr) -> u32 {
    u32::from(addr).to_be()
}

pub fn service_key(l: &Listener) -> ServiceKey {
    ServiceKey {
        addr: l.bind.map_or(0, be_ip),
        port: l.port.to_be(),
        proto: l.protocol.ip_proto(),
        _pad: 0,
    }
}

pub fn listener_of(k: &ServiceKey) -> Option<Listener> {
    Some(Listener {
        bind: (k.addr != 0).then(|| ip(k.addr)),
        port: u16::from_be(k.port),
        protocol: Protocol::from_ip_proto(k.proto)?,
    })
}

pub fn backend_value(addr: SocketAddrV4, nat: Ipv4Addr, id: u32) -> Backend {
    Backend {
        addr: be_ip(*addr.ip()),
        nat_addr: be_ip(nat),
        port: addr.port().to_be(),
        _pad: 0,
        id,
    }
}

pub fn backend_addr(b: &Backend) -> SocketAddrV4 {
    sock(b.addr, b.port)
}

pub fn service_flags(balance: Balance) -> u32 {
    match balance {
        Balance::Source => SVC_F_AFFINITY_SOURCE,
        Balance::RoundRobin => 0,
    }
}

pub fn balance_of(flags: u32) -> Balance {
    if flags & SVC_F_AFFINITY_SOURCE != 0 {
        Balance::Source
    } else {
        Balance::RoundRobin
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_backends_round_trip() {
        let l = Listener {
            bind: Some(Ipv4Addr::new(10, 0, 0, 1)),
            port: 10000,
            protocol: Protocol::Udp,
        };
        assert_eq!(listener_of(&service_key(&l)), Some(l));
        let wildcard = Listener { bind: None, ..l };
        assert_eq!(service_key(&wildcard).addr, 0);
        let a: SocketAddrV4 = "192.168.1.5:8080".parse().unwrap();
        let b = backend_value(a, Ipv4Addr::new(10, 0, 0, 9), 7);
        assert_eq!(backend_addr(&b), a);
        assert_eq!(ip(b.nat_addr), Ipv4Addr::new(10, 0, 0, 9));
        assert_eq!(balance_of(service_flags(Balance::Source)), Balance::Source);
        assert_eq!(
            balance_of(service_flags(Balance::RoundRobin)),
            Balance::RoundRobin
        );
    }
}
