//! `lbt-rate`: HTTP latency at a fixed request rate below saturation (an open loop, as wrk2
//! measures it; wrk2 is not packaged). `--connections` keep-alive connections share the rate,
//! each sending its requests on a fixed schedule. A request held back by the answer before it
//! counts from the time it was due, so a slow answer also counts against the requests it
//! delayed (no coordinated omission); one sent on time counts from when it went out (tokio's
//! timer wakes up to a millisecond late, which is this program's delay, not the server's),
//! unless it went out more than `TIMER_SLACK` late. The rate achieved is printed too.
//! Prints sent, answered, errors and latency percentiles as JSON.
use std::{net::SocketAddrV4, sync::Arc, time::Duration};

use clap::Parser;
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::{Instant, sleep_until, timeout},
};

#[derive(Parser, Debug)]
#[command(name = "lbt-rate")]
struct Args {
    /// The front end.
    #[arg(long, value_name = "IP:PORT")]
    to: SocketAddrV4,
    /// The virtual host (Host header).
    #[arg(long)]
    host: String,
    /// Requests per second, all connections together.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    rate: u32,
    /// Keep-alive connections sharing the rate.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    connections: u32,
    /// Length of the run, seconds (after one second of warm-up at the same rate).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,
}

/// An answer slower than this counts as failed and its connection is replaced.
const LIMIT: Duration = Duration::from_secs(5);
const WARMUP: Duration = Duration::from_secs(1);
/// How late tokio's timer may wake (its resolution is a millisecond).
const TIMER_SLACK: Duration = Duration::from_millis(2);

#[derive(Default)]
struct Tally {
    sent: u64,
    latency_us: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
}

fn main() {
    let a = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let out = rt.block_on(run(a));
    println!("{out}");
}

async fn run(a: Args) -> serde_json::Value {
    let request: Arc<[u8]> = format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", a.host)
        .into_bytes()
        .into();
    let start = Instant::now() + Duration::from_millis(100);
    let measure_from = start + WARMUP;
    let end = measure_from + Duration::from_secs(a.seconds);
    let interval = Duration::from_secs_f64(f64::from(a.connections) / f64::from(a.rate));
    let workers: Vec<_> = (0..a.connections)
        .map(|i| {
            let first = start + interval.mul_f64(f64::from(i) / f64::from(a.connections));
            let request = request.clone();
            tokio::spawn(worker(a.to, request, first, interval, measure_from, end))
        })
        .collect();
    let mut all = Tally::default();
    for w in workers {
        let t = w.await.expect("worker");
        all.sent += t.sent;
        all.errors += t.errors;
        all.latency_us.extend(t.latency_us);
        if all.first_error.is_none() {
            all.first_error = t.first_error;
        }
    }
    all.latency_us.sort_unstable();
    let pct = |p: f64| -> Option<u32> {
        let v = &all.latency_us;
        (!v.is_empty()).then(|| v[((v.len() - 1) as f64 * p).round() as usize])
    };
    json!({
        "rate": a.rate, "connections": a.connections, "seconds": a.seconds,
        "sent": all.sent, "answered": all.latency_us.len(), "errors": all.errors,
        "achieved_rate": all.latency_us.len() as f64 / a.seconds as f64,
        "first_error": all.first_error,
        "p50_us": pct(0.5), "p90_us": pct(0.9), "p99_us": pct(0.99), "p999_us": pct(0.999),
        "max_us": all.latency_us.last(),
    })
}

/// One connection's share: a request every `interval` from `first`, counted from `from`.
async fn worker(
    to: SocketAddrV4,
    request: Arc<[u8]>,
    first: Instant,
    interval: Duration,
    from: Instant,
    end: Instant,
) -> Tally {
    let mut t = Tally::default();
    let mut conn: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut due = first;
    let mut free_at = first;
    while due < end {
        sleep_until(due).await;
        let counted = due >= from;
        // Late by more than the timer's slack, the program itself is behind: that counts.
        let now = Instant::now();
        let late = now.saturating_duration_since(due);
        let sent_at = if free_at > due || late > TIMER_SLACK {
            due
        } else {
            now
        };
        let result = async {
            if conn.is_none() {
                let s = TcpStream::connect(to).await?;
                s.set_nodelay(true)?;
                conn = Some(s);
            }
            let s = conn.as_mut().expect("connected");
            s.write_all(&request).await?;
            read_response(s, &mut buf).await
        };
        match timeout(LIMIT, result).await {
            Ok(Ok(())) => {
                if counted {
                    t.sent += 1;
                    let us = sent_at.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                    t.latency_us.push(us);
                }
            }
            failed => {
                conn = None;
                if counted {
                    t.sent += 1;
                    t.errors += 1;
                    if t.first_error.is_none() {
                        t.first_error = Some(match failed {
                            Err(_) => format!("no answer within {LIMIT:?}"),
                            Ok(Err(e)) => e.to_string(),
                            Ok(Ok(())) => unreachable!(),
                        });
                    }
                }
            }
        }
        free_at = Instant::now();
        due += interval;
    }
    t
}

/// Reads one response framed by Content-Length (what nginx sends for its page); an answer
/// without one, or not 200, is an error.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    buf.clear();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 16 * 1024 {
            return Err(bad("answer head over 16 KiB".into()));
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(bad("closed before the answer".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    if !head.starts_with("HTTP/1.1 200") {
        let line = head.lines().next().unwrap_or("").to_owned();
        return Err(bad(format!("status line {line:?}")));
    }
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .ok_or_else(|| bad("no Content-Length".into()))?;
    while buf.len() < head_end + length {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(bad("closed mid-body".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}
