//! Between the maps' plain data (network byte order, flag bits) and the daemon's types: the
//! one place where bytes are swapped and flags are decoded.
use std::net::{Ipv4Addr, SocketAddrV4};

use aya::maps::lpm_trie::Key;
use lb_common::{
    AclData, Backend, SVC_F_AFFINITY_SOURCE, SVC_F_ALLOW_LIST, SVC_F_LEAST_CONN, ServiceKey,
};

use crate::services::{Balance, Cidr, Listener, Protocol};

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

/// A service entry's flags: how it balances, and whether its clients are checked against
/// allowed ranges (`allow` not empty).
pub fn service_flags(balance: Balance, allow: &[Cidr]) -> u32 {
    let balance = match balance {
        Balance::Source => SVC_F_AFFINITY_SOURCE,
        Balance::LeastConn => SVC_F_LEAST_CONN,
        Balance::RoundRobin => 0,
    };
    if allow.is_empty() {
        balance
    } else {
        balance | SVC_F_ALLOW_LIST
    }
}

/// The `LB_ACL` key allowing `range` to reach service `id`.
pub fn acl_key(id: u32, range: &Cidr) -> Key<AclData> {
    let k = lb_common::AclKey::range(id, be_ip(range.addr()), range.prefix_len());
    Key::new(k.prefix_len, k.data)
}

/// The service id and range of an `LB_ACL` key (`None` for a key no daemon writes).
pub fn acl_range(key: &Key<AclData>) -> Option<(u32, Cidr)> {
    let data = key.data();
    let len = u8::try_from(key.prefix_len().checked_sub(32)?).ok()?;
    let range = Cidr::new(ip(data.addr), len).ok()?;
    (be_ip(range.addr()) == data.addr).then_some((data.service_id, range))
}

pub fn balance_of(flags: u32) -> Balance {
    if flags & SVC_F_AFFINITY_SOURCE != 0 {
        Balance::Source
    } else if flags & SVC_F_LEAST_CONN != 0 {
        Balance::LeastConn
    } else {
        Balance::RoundRobin
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_keys_carry_the_service_and_the_range() {
        let range: Cidr = "10.1.0.0/16".parse().unwrap();
        let key = acl_key(7, &range);
        assert_eq!(key.prefix_len(), 48);
        assert_eq!(key.data().service_id, 7);
        assert_eq!(key.data().addr, u32::from_ne_bytes([10, 1, 0, 0]));
        assert_eq!(acl_range(&key), Some((7, range)));
        assert_eq!(acl_range(&Key::new(31, key.data())), None);
        assert_eq!(acl_range(&Key::new(65, key.data())), None);
    }

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
        let some: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        for allow in [&[][..], &some] {
            let flags = service_flags(Balance::Source, allow);
            assert_eq!(balance_of(flags), Balance::Source);
            assert_eq!(flags & SVC_F_ALLOW_LIST != 0, !allow.is_empty());
            let flags = service_flags(Balance::RoundRobin, allow);
            assert_eq!(balance_of(flags), Balance::RoundRobin);
        }
    }
}
