//! `lbt-tunnel`: one upgraded connection's throughput. Sends an HTTP/1.1 `Upgrade` request
//! through a front end to an echoing task (`lbt-server`), then streams `--bytes` up while
//! reading them back; prints the bytes, the seconds and the rate each way as JSON.
use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddrV4, TcpStream},
    thread,
    time::{Duration, Instant},
};

use clap::Parser;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(name = "lbt-tunnel")]
struct Args {
    /// The front end.
    #[arg(long, value_name = "IP:PORT")]
    to: SocketAddrV4,
    /// The virtual host (Host header).
    #[arg(long)]
    host: String,
    /// Bytes sent up (and expected back).
    #[arg(long, default_value_t = 1 << 30)]
    bytes: u64,
}

const BUF: usize = 256 * 1024;

fn main() {
    let a = Args::parse();
    match run(&a) {
        Ok(v) => println!("{v}"),
        Err(e) => {
            eprintln!("lbt-tunnel: {e}");
            std::process::exit(1);
        }
    }
}

fn run(a: &Args) -> Result<serde_json::Value, String> {
    let mut s = TcpStream::connect_timeout(&a.to.into(), Duration::from_secs(5))
        .map_err(|e| format!("connect {}: {e}", a.to))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET /echo HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
        a.host
    )
    .map_err(|e| format!("request: {e}"))?;
    // The 101's head, byte by byte up to its blank line (the echo starts after it).
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            Ok(_) => return Err(format!("closed after {:?}", String::from_utf8_lossy(&head))),
            Err(e) => return Err(format!("reading the answer: {e}")),
        }
        if head.len() > 16 * 1024 {
            return Err("answer head over 16 KiB".into());
        }
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(format!(
            "not upgraded: {:?}",
            String::from_utf8_lossy(&head)
        ));
    }
    let mut up = s.try_clone().map_err(|e| e.to_string())?;
    let total = a.bytes;
    let start = Instant::now();
    let writer = thread::spawn(move || -> std::io::Result<()> {
        let buf: Vec<u8> = (0..BUF).map(|i| (i % 251) as u8).collect();
        let mut left = total;
        while left > 0 {
            let n = left.min(BUF as u64) as usize;
            up.write_all(&buf[..n])?;
            left -= n as u64;
        }
        up.shutdown(Shutdown::Write)
    });
    let mut buf = vec![0u8; BUF];
    let mut back = 0u64;
    while back < total {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => back += n as u64,
            Err(e) => return Err(format!("echo after {back} bytes: {e}")),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    writer
        .join()
        .map_err(|_| "writer panicked".to_string())?
        .map_err(|e| format!("sending: {e}"))?;
    if back != total {
        return Err(format!("{back} of {total} bytes came back"));
    }
    Ok(json!({"bytes": total, "seconds": secs, "gbit_s": total as f64 * 8.0 / secs / 1e9}))
}
