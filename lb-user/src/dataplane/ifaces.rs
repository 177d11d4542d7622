//! The agent's interfaces and IPv4 addresses, read from the kernel, and a netlink watcher
//! that says when they change (Calico adds a `cali*` veth for every new task).
use std::{
    collections::BTreeMap,
    ffi::CStr,
    fs, io,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    path::Path,
};

use tokio::sync::mpsc;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Iface {
    pub name: String,
    pub index: u32,
    /// veth, bridge, ... (no `device` link in sysfs); physical NICs can take XDP redirects.
    pub is_virtual: bool,
}

/// Interfaces of this network namespace, by name.
pub fn list() -> BTreeMap<String, Iface> {
    let mut out = BTreeMap::new();
    // SAFETY: if_nameindex returns an array terminated by a zero entry, freed below.
    unsafe {
        let head = libc::if_nameindex();
        if head.is_null() {
            return out;
        }
        let mut p = head;
        while (*p).if_index != 0 {
            let name = CStr::from_ptr((*p).if_name).to_string_lossy().into_owned();
            let is_virtual = !Path::new("/sys/class/net")
                .join(&name)
                .join("device")
                .exists();
            out.insert(
                name.clone(),
                Iface {
                    name,
                    index: (*p).if_index,
                    is_virtual,
                },
            );
            p = p.add(1);
        }
        libc::if_freenameindex(head);
    }
    out
}

/// IPv4 addresses of this namespace with the interface index that holds each.
pub fn ipv4_addresses() -> Vec<(Ipv4Addr, u32)> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list we walk read-only and free with freeifaddrs.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut p = head;
        while !p.is_null() {
            let a = (*p).ifa_addr;
            if !a.is_null() && (*a).sa_family as i32 == libc::AF_INET {
                let sin = &*(a as *const libc::sockaddr_in);
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                let index = libc::if_nametoindex((*p).ifa_name);
                out.push((ip, index));
            }
            p = (*p).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out.sort();
    out.dedup();
    out
}

/// The source address the kernel picks to reach `dst`: the agent address a backend
/// can answer to. A connected UDP socket asks the routing table without sending anything.
pub fn source_for(dst: SocketAddrV4) -> io::Result<Ipv4Addr> {
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    sock.connect(dst)?;
    match sock.local_addr()? {
        std::net::SocketAddr::V4(a) => Ok(*a.ip()),
        std::net::SocketAddr::V6(_) => Err(io::Error::other("IPv6 source for an IPv4 destination")),
    }
}

/// Shell-style match with `*` and `?`, for `--iface 'cali*'`.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

/// Writes `value` to an IPv4 sysctl of one interface, e.g. `accept_local`.
pub fn set_sysctl(iface: &str, key: &str, value: &str) -> io::Result<()> {
    fs::write(format!("/proc/sys/net/ipv4/conf/{iface}/{key}"), value)
}

/// Sends `()` whenever a link or IPv4 address appears, changes or goes away. Events only
/// trigger a re-read of the interface list, so a lost or merged message loses nothing.
pub fn watch() -> io::Result<mpsc::Receiver<()>> {
    watch_groups(libc::RTMGRP_LINK | libc::RTMGRP_IPV4_IFADDR)
}

/// Sends `()` whenever anything a cached route depends on changes: IPv4 routes, neighbours,
/// links and addresses. The data plane caches FIB answers per flow; each event invalidates
/// them all (`writer::bump_route_gen`), so a flow never forwards on a stale next hop.
pub fn watch_routes() -> io::Result<mpsc::Receiver<()>> {
    watch_groups(
        libc::RTMGRP_LINK | libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV4_ROUTE | libc::RTMGRP_NEIGH,
    )
}

// Hand-written netlink on purpose for now: only the fact that something changed matters
// (no message is parsed), which `libc` does in a few lines; the route watcher of a later
// change may move to rtnetlink when messages need reading.
fn watch_groups(groups: i32) -> io::Result<mpsc::Receiver<()>> {
    // SAFETY: plain socket calls on a descriptor we own; the sockaddr is fully initialised.
    let fd = unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut sa: libc::sockaddr_nl = std::mem::zeroed();
        sa.nl_family = libc::AF_NETLINK as u16;
        sa.nl_groups = groups as u32;
        let rc = libc::bind(
            fd,
            &sa as *const libc::sockaddr_nl as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        );
        if rc != 0 {
            let e = io::Error::last_os_error();
            libc::close(fd);
            return Err(e);
        }
        fd
    };
    let (tx, rx) = mpsc::channel(1);
    std::thread::Builder::new()
        .name("netlink".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                // SAFETY: reading into a buffer we own.
                let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // ENOBUFS (overrun) also means "something changed": re-read all the same.
                match tx.try_send(()) {
                    Ok(()) | Err(mpsc::error::TrySendError::Full(())) => {}
                    Err(mpsc::error::TrySendError::Closed(())) => break,
                }
            }
            // SAFETY: closing our own descriptor.
            unsafe { libc::close(fd) };
        })?;
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("cali*", "cali1234abcd"));
        assert!(glob_match("cali*", "cali"));
        assert!(!glob_match("cali*", "eth0"));
        assert!(glob_match("eth?", "eth0"));
        assert!(!glob_match("eth?", "eth10"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("veth-*-a", "veth-task1-a"));
        assert!(glob_match("eth0", "eth0"));
        assert!(!glob_match("eth0", "eth01"));
    }

    #[test]
    fn loopback_is_listed_with_an_address() {
        let ifs = list();
        assert!(ifs.contains_key("lo"), "interfaces: {ifs:?}");
        assert!(ipv4_addresses().iter().any(|(a, _)| a.is_loopback()));
    }
}
