//! `lbt-load`: closed-loop HTTP load with a new TCP connection per request, spread over several
//! source addresses and targets; prints per-window rates, failures by kind and latency as JSON.
use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use clap::Parser;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpSocket,
    time::{Instant, timeout, timeout_at},
};

/// New-connection HTTP load: every request opens its own TCP connection (closed loop).
#[derive(Parser, Debug)]
#[command(name = "lbt-load")]
struct Args {
    /// Source address to bind connections to (repeatable); connections take them in turn.
    #[arg(long = "from", required = true, value_name = "IP")]
    from: Vec<Ipv4Addr>,
    /// Target to connect to (repeatable); connections are spread evenly over the targets.
    #[arg(long = "to", required = true, value_name = "IP:PORT")]
    to: Vec<SocketAddrV4>,
    /// Concurrent workers, each with one request in flight at a time.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    connections: u32,
    /// Length of the run, seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,
    /// Length of a reporting window, seconds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    window: u64,
    /// Longest a connect, and then the request and its answer, may take before the attempt
    /// counts as failed (seconds, fractions allowed).
    #[arg(long, default_value = "2", value_parser = parse_secs)]
    timeout: Duration,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|e| format!("{s:?} is not a number of seconds: {e}"))?;
    if !(v > 0.0 && v.is_finite()) {
        return Err(format!(
            "timeout {s:?} must be a positive number of seconds"
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
/// Linux's IP_BIND_ADDRESS_NO_PORT: bind the address now, pick the port at connect time with
/// the whole 4-tuple in view, so source ports are shared across targets instead of exhausted.
const IP_BIND_ADDRESS_NO_PORT: libc::c_int = 24;

/// Why an attempt failed; the index into the per-kind counters.
#[derive(Clone, Copy, Debug)]
enum Failure {
    ConnectRefused,
    ConnectTimeout,
    /// Any other connect error, e.g. no local port left or no route.
    ConnectError,
    Reset,
    ReadTimeout,
    BadStatus,
    /// Any other error while sending the request or reading the answer.
    ReadError,
}

impl Failure {
    const ALL: [Failure; 7] = [
        Failure::ConnectRefused,
        Failure::ConnectTimeout,
        Failure::ConnectError,
        Failure::Reset,
        Failure::ReadTimeout,
        Failure::BadStatus,
        Failure::ReadError,
    ];
    fn name(self) -> &'static str {
        match self {
            Failure::ConnectRefused => "connect_refused",
            Failure::ConnectTimeout => "connect_timeout",
            Failure::ConnectError => "connect_error",
            Failure::Reset => "reset",
            Failure::ReadTimeout => "read_timeout",
            Failure::BadStatus => "bad_status",
            Failure::ReadError => "read_error",
        }
    }
}

/// A failed attempt: its kind and what the system said, kept for the first of each kind.
type Failed = (Failure, String);

fn connect_failure(e: std::io::Error) -> Failed {
    let kind = match e.kind() {
        std::io::ErrorKind::ConnectionRefused => Failure::ConnectRefused,
        std::io::ErrorKind::ConnectionReset => Failure::Reset,
        std::io::ErrorKind::TimedOut => Failure::ConnectTimeout,
        _ => Failure::ConnectError,
    };
    (kind, format!("connect: {e}"))
}

fn read_failure(e: std::io::Error) -> Failed {
    let kind = match e.kind() {
        std::io::ErrorKind::ConnectionReset
        | std::io::ErrorKind::ConnectionAborted
        | std::io::ErrorKind::BrokenPipe => Failure::Reset,
        std::io::ErrorKind::TimedOut => Failure::ReadTimeout,
        _ => Failure::ReadError,
    };
    (kind, format!("request: {e}"))
}

/// Whether the answer starts with an HTTP status line saying 200.
fn status_ok(head: &[u8]) -> bool {
    let mut parts = head.splitn(3, |b| *b == b' ');
    matches!(
        (parts.next(), parts.next()),
        (Some(version), Some(code)) if version.starts_with(b"HTTP/1.") && code.starts_with(b"200")
    )
}

/// One request on a new connection from `from` to `to`; `buf` is scratch space for the answer.
async fn attempt(
    from: Ipv4Addr,
    to: SocketAddrV4,
    limit: Duration,
    buf: &mut [u8],
) -> Result<(), Failed> {
    let setup = |e: std::io::Error| (Failure::ConnectError, format!("socket set-up: {e}"));
    let sock = TcpSocket::new_v4().map_err(setup)?;
    let one: libc::c_int = 1;
    // SAFETY: a valid socket and a c_int option value of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(setup(std::io::Error::last_os_error()));
    }
    sock.bind(SocketAddr::V4(SocketAddrV4::new(from, 0)))
        .map_err(setup)?;
    let mut stream = match timeout(limit, sock.connect(SocketAddr::V4(to))).await {
        Err(_) => return Err((Failure::ConnectTimeout, "connect: timed out".into())),
        Ok(r) => r.map_err(connect_failure)?,
    };
    let exchange = async {
        stream.write_all(REQUEST).await?;
        // Keep the first bytes (the status line); read the rest to EOF.
        let mut head = 0;
        loop {
            let n = stream.read(&mut buf[head.min(64)..]).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(head.min(64));
            }
            head += n;
        }
    };
    let head = match timeout(limit, exchange).await {
        Err(_) => return Err((Failure::ReadTimeout, "request: timed out".into())),
        Ok(r) => r.map_err(read_failure)?,
    };
    if !status_ok(&buf[..head]) {
        let line = String::from_utf8_lossy(&buf[..head]);
        let line = line.lines().next().unwrap_or("").to_owned();
        return Err((Failure::BadStatus, format!("status line {line:?}")));
    }
    Ok(())
}

/// What one worker saw: counts per window and per failure kind, latencies of successes.
struct Tally {
    ok: Vec<u64>,
    failed: Vec<u64>,
    kinds: [u64; Failure::ALL.len()],
    first: [Option<String>; Failure::ALL.len()],
    latency_us: Vec<u32>,
}

impl Tally {
    fn new(windows: usize) -> Self {
        Self {
            ok: vec![0; windows],
            failed: vec![0; windows],
            kinds: [0; Failure::ALL.len()],
            first: Default::default(),
            latency_us: Vec::new(),
        }
    }

    fn merge(&mut self, other: Tally) {
        for (a, b) in self.ok.iter_mut().zip(other.ok) {
            *a += b;
        }
        for (a, b) in self.failed.iter_mut().zip(other.failed) {
            *a += b;
        }
        for (i, n) in other.kinds.into_iter().enumerate() {
            self.kinds[i] += n;
        }
        for (a, b) in self.first.iter_mut().zip(other.first) {
            if a.is_none() {
                *a = b;
            }
        }
        self.latency_us.extend(other.latency_us);
    }
}

struct Plan {
    from: Vec<Ipv4Addr>,
    to: Vec<SocketAddrV4>,
    timeout: Duration,
    start: Instant,
    deadline: Instant,
    window: Duration,
    windows: usize,
    /// Attempts started so far, over all workers: picks each attempt's source and target.
    next: AtomicUsize,
}

async fn worker(plan: Arc<Plan>) -> Tally {
    let mut tally = Tally::new(plan.windows);
    let mut buf = vec![0u8; 16 * 1024];
    while Instant::now() < plan.deadline {
        let k = plan.next.fetch_add(1, Ordering::Relaxed);
        // Every (source, target) pair in turn, also when their counts share a factor.
        let to = plan.to[k % plan.to.len()];
        let from = plan.from[(k / plan.to.len()) % plan.from.len()];
        let began = Instant::now();
        // An attempt cut short by the end of the run is not counted either way.
        let Ok(outcome) =
            timeout_at(plan.deadline, attempt(from, to, plan.timeout, &mut buf)).await
        else {
            break;
        };
        let done = Instant::now();
        let w = ((done - plan.start).as_nanos() / plan.window.as_nanos()) as usize;
        let w = w.min(plan.windows - 1);
        match outcome {
            Ok(()) => {
                tally.ok[w] += 1;
                let us = (done - began).as_micros().min(u32::MAX as u128) as u32;
                tally.latency_us.push(us);
            }
            Err((kind, msg)) => {
                tally.failed[w] += 1;
                tally.kinds[kind as usize] += 1;
                tally.first[kind as usize].get_or_insert(msg);
            }
        }
    }
    tally
}

fn quantile(sorted: &[u32], q: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[i])
}

fn report(args: &Args, plan: &Plan, mut t: Tally) -> Value {
    let run = Duration::from_secs(args.seconds);
    let windows: Vec<Value> = (0..plan.windows)
        .map(|w| {
            let start = plan.window * w as u32;
            let len = (run - start).min(plan.window).as_secs_f64();
            json!({
                "start_s": start.as_secs_f64(),
                "seconds": len,
                "ok": t.ok[w],
                "failed": t.failed[w],
                "rps": t.ok[w] as f64 / len,
            })
        })
        .collect();
    let ok: u64 = t.ok.iter().sum();
    let failed: u64 = t.failed.iter().sum();
    t.latency_us.sort_unstable();
    let failures: serde_json::Map<String, Value> = Failure::ALL
        .iter()
        .map(|f| (f.name().to_owned(), json!(t.kinds[*f as usize])))
        .collect();
    let first: serde_json::Map<String, Value> = Failure::ALL
        .iter()
        .filter_map(|f| {
            t.first[*f as usize]
                .as_ref()
                .map(|m| (f.name().to_owned(), json!(m)))
        })
        .collect();
    json!({
        "from": args.from,
        "to": args.to,
        "connections": args.connections,
        "seconds": args.seconds,
        "window_s": args.window,
        "timeout_s": args.timeout.as_secs_f64(),
        "windows": windows,
        "total": {"ok": ok, "failed": failed, "rps": ok as f64 / run.as_secs_f64()},
        "failures": failures,
        "first_error": first,
        "latency_us": {
            "p50": quantile(&t.latency_us, 0.50),
            "p99": quantile(&t.latency_us, 0.99),
            "p99.9": quantile(&t.latency_us, 0.999),
            "max": t.latency_us.last(),
            // Share of all successful requests' time spent in those over 100 ms: a few long
            // stalls (a retransmission timer) idle a closed loop where percentiles hide them.
            "share_over_100ms": share_over(&t.latency_us, 100_000),
        },
    })
}

/// The fraction of the summed latencies that belongs to latencies above `us`.
fn share_over(sorted: &[u32], us: u32) -> f64 {
    let total: u64 = sorted.iter().map(|&l| u64::from(l)).sum();
    let over: u64 = sorted
        .iter()
        .filter(|&&l| l > us)
        .map(|&l| u64::from(l))
        .sum();
    if total == 0 {
        0.0
    } else {
        over as f64 / total as f64
    }
}

fn main() {
    let args = Args::parse();
    // One thread, like `wrk -t1`: the load generator's share of the machine stays fixed.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let out = rt.block_on(async {
        let start = Instant::now();
        let run = Duration::from_secs(args.seconds);
        let window = Duration::from_secs(args.window);
        let plan = Arc::new(Plan {
            from: args.from.clone(),
            to: args.to.clone(),
            timeout: args.timeout,
            start,
            deadline: start + run,
            window,
            windows: args.seconds.div_ceil(args.window) as usize,
            next: AtomicUsize::new(0),
        });
        let workers: Vec<_> = (0..args.connections)
            .map(|_| tokio::spawn(worker(plan.clone())))
            .collect();
        let mut total = Tally::new(plan.windows);
        for w in workers {
            total.merge(w.await.expect("a load worker panicked"));
        }
        report(&args, &plan, total)
    });
    println!("{out}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_must_say_200() {
        assert!(status_ok(b"HTTP/1.1 200 OK\r\n"));
        assert!(status_ok(b"HTTP/1.0 200 OK\r\n"));
        assert!(!status_ok(b"HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(!status_ok(b"HTTP/1.1 20"));
        assert!(!status_ok(b""));
        assert!(!status_ok(b"SSH-2.0 200"));
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), Some(50));
        assert_eq!(quantile(&v, 0.99), Some(99));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
