//! A task for tests and the demo: answers HTTP on TCP and datagrams on UDP with its own name
//! and the peer address it sees, so a test can tell which task served it and from where.
//! `GET /bytes/N` streams N bytes of a known pattern (for transfer-integrity checks).
//! Behind the HTTP front end: the `X-Forwarded-*` headers it got are added to the answer
//! (`xff=`, `xfport=`, `xfproto=`), and a request with `Upgrade` is answered 101, after which
//! every byte is echoed back. An HTTP/1.1 request without `Connection: close` keeps the
//! connection open for the next one, as real servers do (HTTP/1.0 ones close it).
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream, UdpSocket},
    thread,
};

use lb_tests::pattern;

fn serve(mut conn: TcpStream, name: &str) {
    let peer = conn.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let mut reader = BufReader::new(conn.try_clone().expect("clone stream"));
    while answer(&mut conn, &mut reader, name, &peer) {}
}

/// Answers one request; true when the connection stays open for another.
fn answer(conn: &mut TcpStream, reader: &mut BufReader<TcpStream>, name: &str, peer: &str) -> bool {
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return false;
    }
    let mut keep_alive = line.trim_end().ends_with("HTTP/1.1");
    // Read the request headers, keeping those a proxy adds.
    let mut h = String::new();
    let mut seen = String::new();
    let mut upgrade = None;
    let mut body_len: u64 = 0;
    let mut chunked = false;
    while reader.read_line(&mut h).map(|n| n > 2).unwrap_or(false) {
        if let Some((k, v)) = h.split_once(':') {
            let v = v.trim();
            match k.trim().to_ascii_lowercase().as_str() {
                "x-forwarded-for" => seen.push_str(&format!(" xff={v}")),
                "x-forwarded-port" => seen.push_str(&format!(" xfport={v}")),
                "x-forwarded-proto" => seen.push_str(&format!(" xfproto={v}")),
                "upgrade" => upgrade = Some(v.to_owned()),
                "content-length" => body_len = v.parse().unwrap_or(0),
                "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
                "connection" if v.eq_ignore_ascii_case("close") => keep_alive = false,
                _ => {}
            }
        }
        h.clear();
    }
    // The request's body is read before answering: closing a socket with unread bytes resets
    // the connection and drops the answer not yet sent (a chunked upload then got a 502).
    let body = if chunked {
        skip_chunked(reader)
    } else {
        std::io::copy(&mut reader.take(body_len), &mut std::io::sink()).map(drop)
    };
    if body.is_err() {
        return false;
    }
    if let Some(proto) = upgrade {
        let _ = write!(
            conn,
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: {proto}\r\nConnection: Upgrade\r\n\r\n"
        );
        // Bytes the reader already holds came after the head: echo them first.
        let early = reader.buffer().to_vec();
        let _ = conn.write_all(&early);
        // Large reads: a bulk echo should measure the path, not this loop.
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match reader.get_mut().read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        return false;
    }
    let version = if keep_alive { "HTTP/1.1" } else { "HTTP/1.0" };
    let path = line.split_whitespace().nth(1).unwrap_or("/");
    if let Some(n) = path
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<usize>().ok())
    {
        let _ = write!(conn, "{version} 200 OK\r\nContent-Length: {n}\r\n\r\n");
        let mut buf = vec![0u8; 64 * 1024];
        let mut sent = 0;
        while sent < n {
            let chunk = (n - sent).min(buf.len());
            for (j, b) in buf[..chunk].iter_mut().enumerate() {
                *b = pattern(sent + j);
            }
            if conn.write_all(&buf[..chunk]).is_err() {
                return false;
            }
            sent += chunk;
        }
    } else {
        let body = format!("{name} peer={peer}{seen}\n");
        let _ = write!(
            conn,
            "{version} 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
    }
    keep_alive
}

/// Reads a chunked body (RFC 9112 §7.1) to its end, trailers included.
fn skip_chunked(r: &mut impl BufRead) -> std::io::Result<()> {
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "bad chunk size");
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let size = line.split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size, 16).map_err(|_| bad())?;
        if size == 0 {
            // Trailer fields, up to the empty line.
            loop {
                line.clear();
                if r.read_line(&mut line)? <= 2 {
                    return Ok(());
                }
            }
        }
        // The chunk and the CRLF after it.
        std::io::copy(&mut r.take(size + 2), &mut std::io::sink())?;
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
