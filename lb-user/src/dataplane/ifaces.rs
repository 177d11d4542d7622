//! The agent's interfaces and IPv4 addresses, read from the kernel, and a netlink watcher
//! that says when they change (Calico adds a `cali*` veth for every new task).
use std::{
    collections::BTreeMap,
    ffi::CStr,
    fs, io,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    path::Path,
    time::Duration,
};

use aya::programs::{SchedClassifier, tc::TcAttachType};
use futures_util::StreamExt as _;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::MulticastGroup;
use tokio::sync::mpsc;
use tracing::warn;

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

/// The veths of `present` whose peer is in another network namespace (a Calico task's
/// `cali*` link): TC may hand a packet bound there to the peer directly (`bpf_redirect_peer`,
/// which the kernel refuses, dropping the packet, for any other kind of link or for a peer in
/// this namespace). The kernel says where a link's peer is: `IFLA_LINK_NETNSID` comes with a
/// link whose peer is in another namespace, and only then. A link whose driver or whose peer's
/// place cannot be read is left out: the data plane then redirects to it as to any link. So
/// is a veth with a tcx egress program (a policy program, say): a packet handed to the peer
/// would pass it by.
pub fn peer_veths(present: &BTreeMap<String, Iface>) -> Vec<u32> {
    let elsewhere = match links_with_peer_elsewhere_settled() {
        Ok(set) => set,
        Err(e) => {
            warn!("reading where the links' peers are (netlink): {e}; none taken as a peer");
            return Vec::new();
        }
    };
    let mut out: Vec<u32> = present
        .values()
        .filter(|i| elsewhere.contains(&i.index))
        .filter(|i| driver(&i.name).as_deref() == Some("veth"))
        .filter(|i| {
            SchedClassifier::query_tcx(&i.name, TcAttachType::Egress)
                .is_ok_and(|(_, progs)| progs.is_empty())
        })
        .map(|i| i.index)
        .collect();
    out.sort_unstable();
    out
}

/// How often a dump that links changed under (`NLM_F_DUMP_INTR`) is read again before the
/// last one is taken as it is (the link event that interrupted it makes the daemon read again).
const DUMP_ATTEMPTS: u32 = 4;

/// [`links_with_peer_elsewhere`], read again while the kernel says links changed during the
/// dump, so that a link created or moved meanwhile is not missed.
///
/// A read that fails outright is an error even after an interrupted one: the caller then takes
/// no link as a peer, the safe side (the data plane redirects to them as to any link).
fn links_with_peer_elsewhere_settled() -> io::Result<std::collections::BTreeSet<u32>> {
    let mut attempt = 1;
    loop {
        let (links, interrupted) = links_with_peer_elsewhere()?;
        if !interrupted {
            return Ok(links);
        }
        if attempt == DUMP_ATTEMPTS {
            warn!(
                "links kept changing during {DUMP_ATTEMPTS} reads of where their peers are \
                 (netlink); using the last, until the next link event"
            );
            return Ok(links);
        }
        attempt += 1;
    }
}

/// The indexes of this namespace's links that carry `IFLA_LINK_NETNSID`: their peer (or
/// lower link) is in another network namespace. One `RTM_GETLINK` dump, read synchronously:
/// the caller runs on the daemon's data-plane task between two map writes.
/// The second value says whether the kernel flagged the dump as interrupted by a change.
fn links_with_peer_elsewhere() -> io::Result<(std::collections::BTreeSet<u32>, bool)> {
    use netlink_packet_core::{NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NetlinkHeader};
    use netlink_packet_route::link::{LinkAttribute, LinkMessage};
    use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = 1;
    let mut req = NetlinkMessage::new(
        header,
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetLink(LinkMessage::default())),
    );
    req.finalize();
    let mut buf = vec![0; req.buffer_len()];
    req.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let mut out = std::collections::BTreeSet::new();
    let mut interrupted = false;
    loop {
        let (bytes, _) = socket.recv_from_full()?;
        let mut at = 0;
        while at < bytes.len() {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes[at..])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = msg.header.length as usize;
            interrupted |= msg.header.flags & NLM_F_DUMP_INTR != 0;
            match msg.payload {
                // A dump that failed in the kernel says so in its end message.
                NetlinkPayload::Done(done) if done.code != 0 => {
                    return Err(io::Error::from_raw_os_error(-done.code));
                }
                NetlinkPayload::Done(_) => return Ok((out, interrupted)),
                NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link))
                    if link
                        .attributes
                        .iter()
                        .any(|a| matches!(a, LinkAttribute::LinkNetNsId(_))) =>
                {
                    out.insert(link.header.index);
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            at += len;
        }
    }
}

/// The kernel driver behind a link (`ethtool -i`'s `driver`), e.g. `veth`.
/// Hand-written: one `SIOCETHTOOL` ioctl, which no crate we use wraps.
fn driver(name: &str) -> Option<String> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 0x3;
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        n_priv_flags: u32,
        n_stats: u32,
        testinfo_len: u32,
        eedump_len: u32,
        regdump_len: u32,
    }
    if name.len() >= libc::IFNAMSIZ {
        return None;
    }
    // Any socket takes the ioctl; unbound, it needs no address (nor `lo` up).
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    // SAFETY: all-zero is a valid value of both plain C structs.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    // SAFETY: as above.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&raw mut info).cast();
    // SAFETY: SIOCETHTOOL with GDRVINFO writes at most size_of::<DrvInfo>() bytes into `info`,
    // which outlives the call; `req` names the link, NUL-terminated (checked length).
    let rc = unsafe {
        use std::os::fd::AsRawFd as _;
        libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL, &raw mut req)
    };
    if rc != 0 {
        return None;
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Some(String::from_utf8_lossy(&info.driver[..end]).into_owned())
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

/// What a change in the kernel's network state asks of the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetChange {
    /// A route or neighbour changed: every cached route is stale.
    Routes,
    /// A link or IPv4 address changed (or notifications were lost, so anything may have):
    /// interfaces and addresses are re-read, and cached routes are stale too.
    Links,
}

/// The kernel's word that something changed, as two signals: `routes` at once for every
/// change (cached routes must never outlive their route), `links` for links and addresses.
/// Each carries no detail: it triggers a re-read, so merged signals lose nothing.
pub struct NetWatch {
    pub links: mpsc::Receiver<()>,
    pub routes: mpsc::Receiver<()>,
}

/// The change one rtnetlink notification announces, if any.
pub fn classify(payload: &NetlinkPayload<RouteNetlinkMessage>) -> Option<NetChange> {
    use RouteNetlinkMessage as M;
    match payload {
        NetlinkPayload::InnerMessage(
            M::NewLink(_) | M::DelLink(_) | M::SetLink(_) | M::NewAddress(_) | M::DelAddress(_),
        ) => Some(NetChange::Links),
        NetlinkPayload::InnerMessage(
            M::NewRoute(_) | M::DelRoute(_) | M::NewNeighbour(_) | M::DelNeighbour(_),
        ) => Some(NetChange::Routes),
        // The socket's buffer overflowed: notifications were dropped.
        NetlinkPayload::Overrun(_) => Some(NetChange::Links),
        _ => None,
    }
}

/// Subscribes to rtnetlink's link, IPv4 address, IPv4 route and neighbour notifications
/// (as `ip monitor` does). Must run inside the tokio runtime. Should the subscription end
/// (a message that does not decode ends rtnetlink's stream), it is renewed after a second,
/// with a `Links` signal so that nothing missed meanwhile stays unseen.
pub fn watch() -> io::Result<NetWatch> {
    let messages = subscribe()?;
    let (links_tx, links) = mpsc::channel(1);
    let (routes_tx, routes) = mpsc::channel(1);
    tokio::spawn(async move {
        let mut messages = messages;
        loop {
            while let Some((msg, _)) = messages.next().await {
                let Some(change) = classify(&msg.payload) else {
                    continue;
                };
                if !signal(&routes_tx, &links_tx, change) {
                    return;
                }
            }
            warn!("netlink notifications ended; subscribing again");
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                match subscribe() {
                    Ok(m) => {
                        messages = m;
                        break;
                    }
                    Err(e) => warn!("netlink subscription: {e}"),
                }
            }
            if !signal(&routes_tx, &links_tx, NetChange::Links) {
                return;
            }
        }
    });
    Ok(NetWatch { links, routes })
}

type Messages = futures_channel::mpsc::UnboundedReceiver<(
    NetlinkMessage<RouteNetlinkMessage>,
    netlink_sys::SocketAddr,
)>;

fn subscribe() -> io::Result<Messages> {
    let (conn, _handle, messages) = rtnetlink::new_multicast_connection(&[
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Neigh,
    ])?;
    tokio::spawn(conn);
    Ok(messages)
}

/// Raises the signals `change` calls for; false once the daemon stopped listening.
fn signal(routes: &mpsc::Sender<()>, links: &mpsc::Sender<()>, change: NetChange) -> bool {
    let raise = |tx: &mpsc::Sender<()>| match tx.try_send(()) {
        // Full: a signal is already pending, and one re-read covers both.
        Ok(()) | Err(mpsc::error::TrySendError::Full(())) => true,
        Err(mpsc::error::TrySendError::Closed(())) => false,
    };
    let routes_open = raise(routes);
    let links_open = change != NetChange::Links || raise(links);
    routes_open && links_open
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
    fn notifications_are_sorted_by_what_they_invalidate() {
        use RouteNetlinkMessage as M;
        use netlink_packet_route::{
            address::AddressMessage, link::LinkMessage, neighbour::NeighbourMessage,
            route::RouteMessage,
        };
        let inner = |m| NetlinkPayload::InnerMessage(m);
        assert_eq!(
            classify(&inner(M::NewLink(LinkMessage::default()))),
            Some(NetChange::Links)
        );
        assert_eq!(
            classify(&inner(M::DelAddress(AddressMessage::default()))),
            Some(NetChange::Links)
        );
        assert_eq!(
            classify(&inner(M::NewRoute(RouteMessage::default()))),
            Some(NetChange::Routes)
        );
        assert_eq!(
            classify(&inner(M::DelNeighbour(NeighbourMessage::default()))),
            Some(NetChange::Routes)
        );
        assert_eq!(
            classify(&NetlinkPayload::Overrun(Vec::new())),
            Some(NetChange::Links)
        );
        assert_eq!(classify(&inner(M::GetLink(LinkMessage::default()))), None);
    }

    #[tokio::test]
    async fn a_link_change_raises_both_signals_and_a_route_change_one() {
        let (links_tx, mut links) = mpsc::channel(1);
        let (routes_tx, mut routes) = mpsc::channel(1);
        assert!(signal(&routes_tx, &links_tx, NetChange::Routes));
        assert!(links.try_recv().is_err());
        assert!(routes.try_recv().is_ok());
        assert!(signal(&routes_tx, &links_tx, NetChange::Links));
        assert!(
            signal(&routes_tx, &links_tx, NetChange::Links),
            "a pending signal covers both"
        );
        assert!(links.try_recv().is_ok() && routes.try_recv().is_ok());
        drop(links);
        assert!(!signal(&routes_tx, &links_tx, NetChange::Links));
    }

    #[test]
    fn loopback_is_listed_with_an_address() {
        let ifs = list();
        assert!(ifs.contains_key("lo"), "interfaces: {ifs:?}");
        assert!(ipv4_addresses().iter().any(|(a, _)| a.is_loopback()));
    }
}
