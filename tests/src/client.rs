//! Client side of the traffic: plain blocking sockets, meant to run inside `netns::in_netns`.
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket},
    time::Duration,
};

/// What a task said about one request: its name and the peer address it saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub task: String,
    pub peer: String,
}

impl Answer {
    fn parse(body: &str) -> Result<Self, String> {
        let mut words = body.split_whitespace();
        let task = words
            .next()
            .ok_or_else(|| format!("empty answer {body:?}"))?
            .to_owned();
        let peer = words
            .next()
            .and_then(|w| w.strip_prefix("peer="))
            .ok_or_else(|| format!("no peer in {body:?}"))?
            .to_owned();
        Ok(Self { task, peer })
    }

    /// The IP part of the peer the task saw.
    pub fn peer_ip(&self) -> &str {
        self.peer.rsplit_once(':').map_or(&self.peer, |(ip, _)| ip)
    }
}

/// One HTTP/1.0 request on a new TCP connection; returns the body.
pub fn http_get(target: SocketAddrV4, path: &str, timeout: Duration) -> Result<Vec<u8>, String> {
    let s = TcpStream::connect_timeout(&target.into(), timeout)
        .map_err(|e| format!("connect {target}: {e}"))?;
    request(s, target, path, timeout)
}

/// Asks a service over TCP which task answers, from the client address `from`.
pub fn tcp_ask_from(
    from: Ipv4Addr,
    target: SocketAddrV4,
    timeout: Duration,
) -> Result<Answer, String> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .map_err(|e| e.to_string())?;
    sock.bind(&SocketAddrV4::new(from, 0).into())
        .map_err(|e| format!("bind {from}: {e}"))?;
    sock.connect_timeout(&target.into(), timeout)
        .map_err(|e| format!("connect {target} from {from}: {e}"))?;
    let body = request(sock.into(), target, "/", timeout)?;
    Answer::parse(&String::from_utf8_lossy(&body))
}

fn request(
    mut s: TcpStream,
    target: SocketAddrV4,
    path: &str,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {target}\r\n\r\n")
        .map_err(|e| format!("send to {target}: {e}"))?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)
        .map_err(|e| format!("read from {target}: {e}"))?;
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no header end from {target}"))?;
    Ok(resp[split + 4..].to_vec())
}

/// Asks a service over TCP which task answers.
pub fn tcp_ask(target: SocketAddrV4, timeout: Duration) -> Result<Answer, String> {
    let body = http_get(target, "/", timeout)?;
    Answer::parse(&String::from_utf8_lossy(&body))
}

/// Asks a service over UDP from an ephemeral port. Two calls may get the same port, and then
/// they are one flow (as conntrack sees it too): to count flows, use `udp_ask_from`.
pub fn udp_ask(target: SocketAddrV4, timeout: Duration) -> Result<Answer, String> {
    udp_ask_from(0, target, timeout)
}

/// Asks a service over UDP from source port `port` (0: any).
pub fn udp_ask_from(port: u16, target: SocketAddrV4, timeout: Duration) -> Result<Answer, String> {
    let s = UdpSocket::bind(("0.0.0.0", port)).map_err(|e| format!("bind UDP port {port}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.connect(target)
        .map_err(|e| format!("connect {target}: {e}"))?;
    s.send(b"who?")
        .map_err(|e| format!("send to {target}: {e}"))?;
    let mut buf = [0u8; 512];
    let n = s
        .recv(&mut buf)
        .map_err(|e| format!("no UDP answer from {target}: {e}"))?;
    Answer::parse(&String::from_utf8_lossy(&buf[..n]))
}

/// Fetches `/bytes/N` and checks every byte against the server's pattern.
pub fn fetch_and_check(target: SocketAddrV4, n: usize, timeout: Duration) -> Result<(), String> {
    let body = http_get(target, &format!("/bytes/{n}"), timeout)?;
    if body.len() != n {
        return Err(format!("got {} bytes of {n}", body.len()));
    }
    match body
        .iter()
        .enumerate()
        .find(|(i, b)| **b != crate::pattern(*i))
    {
        Some((i, b)) => Err(format!(
            "byte {i} is {b:#x}, expected {:#x}",
            crate::pattern(i)
        )),
        None => Ok(()),
    }
}
