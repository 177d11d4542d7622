//! A task for tests and the demo: answers HTTP on TCP and datagrams on UDP with its own name
//! and the peer address it sees, so a test can tell which task served it and from where.
//! `GET /bytes/N` streams N bytes of a known pattern (for transfer-integrity checks).
use std::{
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream, UdpSocket},
    thread,
};

use lb_tests::pattern;

fn serve(mut conn: TcpStream, name: &str) {
    let peer = conn.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let mut reader = BufReader::new(conn.try_clone().expect("clone stream"));
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    // Drain the request headers.
    let mut h = String::new();
    while reader.read_line(&mut h).map(|n| n > 2).unwrap_or(false) {
        h.clear();
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/");
    if let Some(n) = path
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<usize>().ok())
    {
        let _ = write!(conn, "HTTP/1.0 200 OK\r\nContent-Length: {n}\r\n\r\n");
        let mut buf = vec![0u8; 64 * 1024];
        let mut sent = 0;
        while sent < n {
            let chunk = (n - sent).min(buf.len());
            for (j, b) in buf[..chunk].iter_mut().enumerate() {
                *b = pattern(sent + j);
            }
            if conn.write_all(&buf[..chunk]).is_err() {
                return;
            }
            sent += chunk;
        }
    } else {
        let body = format!("{name} peer={peer}\n");
        let _ = write!(
            conn,
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let name = args
        .next()
        .expect("usage: lbt-server NAME [TCP_PORT] [UDP_PORT]");
    let tcp_port: u16 = args.next().map_or(80, |p| p.parse().expect("TCP port"));
    let udp_port: u16 = args
        .next()
        .map_or(tcp_port, |p| p.parse().expect("UDP port"));
    let udp = UdpSocket::bind(("0.0.0.0", udp_port)).expect("bind UDP");
    let uname = name.clone();
    thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((_, peer)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(format!("{uname} peer={peer}\n").as_bytes(), peer);
        }
    });
    let listener = TcpListener::bind(("0.0.0.0", tcp_port)).expect("bind TCP");
    for conn in listener.incoming().flatten() {
        let name = name.clone();
        thread::spawn(move || serve(conn, &name));
    }
}
