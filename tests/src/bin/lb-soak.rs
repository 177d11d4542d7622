//! `lb-soak`: the soak under churn that `cargo xtask soak` runs (not CI; 10 minutes by default).
//!
//! The agent topology with eight task servers, the real daemon following the Marathon stand-in,
//! and from eight client addresses at once: short TCP requests, bulk downloads and long-lived
//! echo connections (every byte checked), and UDP sessions (every answer from the task the
//! session started on). Meanwhile the stand-in changes something every second (scales an app,
//! moves its tasks to other addresses, kills a task through TASK_KILLING, flips health), ends
//! its event streams, answers 502 and then garbage for a while; and the daemon is restarted
//! every minute, alternating between two builds (`--other-lb`), each swapping its programs into
//! the pinned links.
//!
//! It fails on: any failed connection, corrupted byte or UDP answer from another task (every
//! task server stays up the whole time, so every backend stays healthy, whatever Marathon
//! says); any `drop_*` or `error_*` counter of the data plane; daemon RSS beyond 110% of the
//! warmed-up figure; and, once the traffic stops and Marathon is back at the first state, flow
//! entries, services, backends and allowed ranges in the maps not back at their baseline, or
//! service and backend ids in use not back at theirs (none draining).
use std::{
    fs,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use clap::Parser;
use lb_tests::{
    lb::NsStandin,
    marathon_standin::Mode,
    netns::{AGENT, TASKS, Topology, in_netns, lb_bin},
    pattern,
};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(name = "lb-soak")]
struct Args {
    /// How long the traffic and the churn run.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// Restart the daemon this often (0: never).
    #[arg(long, default_value_t = 60)]
    restart_every: u64,
    /// A second `lb` build; restarts alternate between it and `$LB_BIN` (default: `$LB_BIN`
    /// again, whose programs are still loaded anew and swapped into the links at every start).
    #[arg(long)]
    other_lb: Option<PathBuf>,
    /// Seed of the churn and the traffic (random if not given; printed for a replay).
    #[arg(long)]
    seed: Option<u64>,
    /// Where the report's JSON goes.
    #[arg(long, default_value = "target/soak")]
    out: PathBuf,
}

const VIP: Ipv4Addr = AGENT;
const WEB_PORT: u16 = 10000;
const API_PORT: u16 = 10001;
/// The task servers: the topology's three and five more on the agent.
const EXTRA_TASKS: u8 = 5;
const CLIENTS: u8 = 8;
const BULK_BYTES: usize = 4 << 20;

/// A small seeded generator (xorshift64*): the soak needs reproducible choices, not quality.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn client_addr(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, 10 + i)
}

/// What the traffic saw, shared by the workers.
#[derive(Default)]
struct Tally {
    short_ok: AtomicU64,
    bulk_ok: AtomicU64,
    long_ok: AtomicU64,
    long_exchanges: AtomicU64,
    udp_sessions: AtomicU64,
    udp_answers: AtomicU64,
    bytes_checked: AtomicU64,
    failures: AtomicU64,
    /// The first failures, with what was going on.
    failed: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed);
        if n < 50 {
            self.failed.lock().unwrap().push(what);
        }
    }
}

fn connect(from: Ipv4Addr, port: u16) -> Result<TcpStream, String> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .map_err(|e| e.to_string())?;
    sock.bind(&SocketAddrV4::new(from, 0).into())
        .map_err(|e| format!("bind {from}: {e}"))?;
    let target = SocketAddrV4::new(VIP, port);
    sock.connect_timeout(&target.into(), Duration::from_secs(3))
        .map_err(|e| format!("connect {target} from {from}: {e}"))?;
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    Ok(s)
}

/// Reads an HTTP/1.0 answer's header; returns the body bytes read with it.
fn read_head(s: &mut TcpStream) -> Result<(String, Vec<u8>), String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).map_err(|e| format!("read head: {e}"))?;
        if n == 0 {
            return Err(format!(
                "closed before the header end ({} bytes)",
                buf.len()
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            return Ok((head, buf[end + 4..].to_vec()));
        }
    }
}

/// `GET /bytes/n` from `from`, every byte checked against the servers' pattern.
fn fetch(from: Ipv4Addr, n: usize, tally: &Tally) -> Result<(), String> {
    let mut s = connect(from, WEB_PORT)?;
    write!(s, "GET /bytes/{n} HTTP/1.0\r\n\r\n").map_err(|e| format!("send: {e}"))?;
    let (head, mut body) = read_head(&mut s)?;
    if !head.starts_with("HTTP/1.0 200") {
        return Err(format!("answer {head:?}"));
    }
    s.read_to_end(&mut body)
        .map_err(|e| format!("read body after {} bytes: {e}", body.len()))?;
    if body.len() != n {
        return Err(format!("{} bytes of {n}", body.len()));
    }
    if let Some(i) = body.iter().enumerate().position(|(i, b)| *b != pattern(i)) {
        return Err(format!("byte {i} of {n} corrupted"));
    }
    tally.bytes_checked.fetch_add(n as u64, Ordering::Relaxed);
    Ok(())
}

/// A long-lived connection: the servers' echo (an HTTP Upgrade) held for `hold`, 1 KiB sent
/// and read back every 200 ms.
fn long_lived(from: Ipv4Addr, hold: Duration, seed: u64, tally: &Tally) -> Result<u64, String> {
    let mut s = connect(from, API_PORT)?;
    write!(
        s,
        "GET /echo HTTP/1.1\r\nHost: soak\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n"
    )
    .map_err(|e| format!("send: {e}"))?;
    let (head, early) = read_head(&mut s)?;
    if !head.starts_with("HTTP/1.1 101") || !early.is_empty() {
        return Err(format!("upgrade answered {head:?}"));
    }
    let start = Instant::now();
    let mut exchanges = 0u64;
    let mut out = [0u8; 1024];
    let mut back = [0u8; 1024];
    while start.elapsed() < hold {
        for (i, b) in out.iter_mut().enumerate() {
            *b = pattern(i + (seed + exchanges) as usize);
        }
        s.write_all(&out).map_err(|e| {
            format!(
                "exchange {exchanges} after {:?}: send: {e}",
                start.elapsed()
            )
        })?;
        s.read_exact(&mut back).map_err(|e| {
            format!(
                "exchange {exchanges} after {:?}: read: {e}",
                start.elapsed()
            )
        })?;
        if back != out {
            return Err(format!("exchange {exchanges}: echo corrupted"));
        }
        exchanges += 1;
        tally.bytes_checked.fetch_add(1024, Ordering::Relaxed);
        thread::sleep(Duration::from_millis(200));
    }
    Ok(exchanges)
}

/// A UDP session from one source port: a question every 50 ms for `hold`, every answer from
/// the task that gave the first.
fn udp_session(from: Ipv4Addr, hold: Duration) -> Result<u64, String> {
    let s = UdpSocket::bind((from, 0)).map_err(|e| format!("bind {from}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    s.connect((VIP, WEB_PORT))
        .map_err(|e| format!("connect: {e}"))?;
    let local = s.local_addr().map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut first: Option<String> = None;
    let mut answers = 0;
    let mut buf = [0u8; 512];
    while start.elapsed() < hold {
        s.send(b"who?").map_err(|e| format!("send: {e}"))?;
        let n = s.recv(&mut buf).map_err(|e| {
            format!(
                "{local}: no answer to question {answers} after {:?}: {e}",
                start.elapsed()
            )
        })?;
        let task = String::from_utf8_lossy(&buf[..n])
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        match &first {
            None => first = Some(task),
            Some(t) if *t != task => {
                return Err(format!(
                    "{local}: answered by {task} after {t} ({answers} answers)"
                ));
            }
            Some(_) => {}
        }
        answers += 1;
        thread::sleep(Duration::from_millis(50));
    }
    Ok(answers)
}

/// One task of the pool as Marathon lists it.
#[derive(Clone)]
struct Task {
    slot: usize,
    /// Bumped each time the task is started anew (a new Marathon task id).
    incarnation: u64,
    killing: bool,
    alive: bool,
}

/// The Marathon side of the churn: which pool slots each app runs on.
struct World {
    pool: Vec<Ipv4Addr>,
    web: Vec<Task>,
    api: Vec<Task>,
    incarnations: u64,
}

impl World {
    fn initial(pool: Vec<Ipv4Addr>) -> Self {
        let mut w = Self {
            pool,
            web: Vec::new(),
            api: Vec::new(),
            incarnations: 0,
        };
        w.web = (0..3).map(|s| w.task(s)).collect();
        w.api = (3..6).map(|s| w.task(s)).collect();
        w
    }

    fn task(&mut self, slot: usize) -> Task {
        self.incarnations += 1;
        Task {
            slot,
            incarnation: self.incarnations,
            killing: false,
            alive: true,
        }
    }

    fn task_json(&self, app: &str, t: &Task) -> Value {
        json!({
            "id": format!("{app}.{}-{}", t.slot, t.incarnation),
            "state": if t.killing { "TASK_KILLING" } else { "TASK_RUNNING" },
            "host": AGENT.to_string(), "slaveId": "agent-S1",
            "ipAddresses": [{"ipAddress": self.pool[t.slot].to_string(), "protocol": "IPv4"}],
            "ports": [],
            "healthCheckResults": [{"alive": t.alive}],
        })
    }

    fn app_json(&self, id: &str, port: u16, protocol: &str, health: bool) -> Value {
        let tasks = if id == "/web" { &self.web } else { &self.api };
        json!({
            "id": id, "instances": tasks.len(),
            "container": {"type": "DOCKER", "docker": {"image": "nginx"},
                          "portMappings": [{"containerPort": 80, "servicePort": port,
                                            "protocol": protocol, "name": "main"}]},
            "networks": [{"name": "calico", "mode": "container"}],
            "labels": {"HAPROXY_GROUP": "external"},
            "healthChecks": if health { json!([{"protocol": "MESOS_HTTP", "path": "/"}]) } else { json!([]) },
            "tasks": tasks.iter().map(|t| self.task_json(id.trim_start_matches('/'), t)).collect::<Vec<_>>(),
        })
    }

    fn web(&self) -> Value {
        self.app_json("/web", WEB_PORT, "udp,tcp", false)
    }

    fn api(&self) -> Value {
        self.app_json("/api", API_PORT, "tcp", true)
    }

    fn apps(&self) -> Value {
        json!({"apps": [self.web(), self.api()]})
    }

    /// One change, as Marathon would report it; returns what it did and which app changed.
    fn churn(&mut self, rng: &mut Rng) -> (&'static str, &'static str) {
        // A task in TASK_KILLING is gone at the next change of its app.
        let killed = self.web.iter().any(|t| t.killing);
        self.web.retain(|t| !t.killing);
        if killed {
            return ("killed task gone", "/web");
        }
        match rng.below(4) {
            0 => {
                // Scale to 1..=6 tasks on pool slots chosen anew: some stay, some move.
                let n = 1 + rng.below(6) as usize;
                let mut slots: Vec<usize> = self.web.iter().map(|t| t.slot).collect();
                while slots.len() > n {
                    slots.remove(rng.below(slots.len() as u64) as usize);
                }
                while slots.len() < n {
                    let s = rng.below(self.pool.len() as u64) as usize;
                    if !slots.contains(&s) {
                        slots.push(s);
                    }
                }
                let kept: Vec<Task> = self
                    .web
                    .iter()
                    .filter(|t| slots.contains(&t.slot))
                    .cloned()
                    .collect();
                let mut next = kept.clone();
                for s in slots {
                    if !kept.iter().any(|t| t.slot == s) {
                        let t = self.task(s);
                        next.push(t);
                    }
                }
                self.web = next;
                ("scale", "/web")
            }
            1 => {
                // Move one task to another address: a new task elsewhere, the old one gone.
                let i = rng.below(self.web.len() as u64) as usize;
                let s = rng.below(self.pool.len() as u64) as usize;
                if self.web.iter().any(|t| t.slot == s) {
                    return ("move (no free slot)", "/web");
                }
                self.web[i] = self.task(s);
                ("move", "/web")
            }
            2 if self.web.len() > 1 => {
                let i = rng.below(self.web.len() as u64) as usize;
                self.web[i].killing = true;
                ("kill", "/web")
            }
            _ => {
                let i = rng.below(self.api.len() as u64) as usize;
                let alive = self.api.iter().filter(|t| t.alive).count();
                if self.api[i].alive && alive == 1 {
                    // The last healthy task stays healthy; it moves to a free address instead.
                    let used: Vec<usize> = self.api.iter().map(|t| t.slot).collect();
                    let Some(s) = (0..self.pool.len()).find(|s| !used.contains(s)) else {
                        return ("api move (no free slot)", "/api");
                    };
                    self.api[i] = self.task(s);
                    return ("api task moved", "/api");
                }
                self.api[i].alive = !self.api[i].alive;
                ("health flip", "/api")
            }
        }
    }
}

/// The daemon under test, restarted with alternating builds.
struct Daemon {
    builds: [PathBuf; 2],
    started: u64,
    args: Vec<String>,
    log: PathBuf,
}

impl Daemon {
    const LABEL: &str = "lb";

    fn start(&mut self, topo: &mut Topology) -> (u32, Duration) {
        let bin = self.builds[(self.started % 2) as usize].clone();
        self.started += 1;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("daemon log");
        let mut cmd = topo.cmd("agent", &bin);
        cmd.arg("run")
            .arg("--pin-path")
            .arg(topo.pin_path())
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log);
        let t = Instant::now();
        topo.spawn(Self::LABEL, cmd);
        let pid = topo.pid(Self::LABEL).expect("spawned");
        loop {
            if let Some(st) = status(topo, &bin)
                && st["daemon"]["running"] == true
                && st["daemon"]["pid"] == pid
                && st["services"].as_array().map_or(0, Vec::len) >= 3
            {
                return (pid, t.elapsed());
            }
            if let Some(st) = topo.exited(Self::LABEL) {
                panic!("lb exited ({st}); log in {}", self.log.display());
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "lb did not come up within 30 s; log in {}",
                self.log.display()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

fn status(topo: &Topology, bin: &Path) -> Option<Value> {
    let out = topo
        .cmd("agent", bin)
        .args(["status", "--json", "--pin-path"])
        .arg(topo.pin_path())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

fn rss_kib(pid: u32) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Entries of the maps that must come back to their baseline: (map, entries).
fn map_entries(topo: &Topology) -> Vec<(&'static str, usize)> {
    ["LB_FLOWS", "LB_SERVICES", "LB_BACKENDS", "LB_ACL"]
        .into_iter()
        .map(|m| {
            let path = topo.pin_path().join(m);
            let out = Command::new("bpftool")
                .args(["-j", "map", "dump", "pinned"])
                .arg(&path)
                .output()
                .expect("bpftool");
            let n = serde_json::from_slice::<Value>(&out.stdout)
                .ok()
                .and_then(|v| v.as_array().map(Vec::len))
                .unwrap_or_else(|| panic!("bpftool map dump {}", path.display()));
            (m, n)
        })
        .collect()
}

/// The ids `lb status` shows in use: (service ids, backend ids, backends not active).
fn ids(topo: &Topology, bin: &Path) -> (Vec<u64>, Vec<u64>, usize) {
    let st = status(topo, bin).expect("lb status");
    let services = st["services"].as_array().cloned().unwrap_or_default();
    let mut svc: Vec<u64> = services.iter().filter_map(|s| s["id"].as_u64()).collect();
    svc.sort();
    let backends: Vec<&Value> = services
        .iter()
        .flat_map(|s| s["backends"].as_array().into_iter().flatten())
        .collect();
    let mut be: Vec<u64> = backends.iter().filter_map(|b| b["id"].as_u64()).collect();
    be.sort();
    let inactive = backends.iter().filter(|b| b["state"] != "active").count();
    (svc, be, inactive)
}

fn main() {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1
    });
    eprintln!(
        "soak: {} s, restart every {} s, seed {seed}",
        args.seconds, args.restart_every
    );
    let lb = lb_bin();
    let other = args.other_lb.clone().unwrap_or_else(|| lb.clone());

    let mut topo = Topology::new("lbsk");
    topo.start_tasks();
    let mut pool: Vec<Ipv4Addr> = TASKS.iter().map(|t| t.1).collect();
    for i in 0..EXTRA_TASKS {
        let addr = Ipv4Addr::new(192, 168, 1, 21 + i);
        let name = format!("t{}", 4 + i);
        topo.add_task(&name, addr, "agent", &format!("cali-{name}"));
        topo.start_task(&name, addr);
        pool.push(addr);
    }
    for i in 0..CLIENTS {
        topo.sh(
            "client",
            &format!("ip addr add {}/24 dev eth0", client_addr(i)),
        );
    }

    let m = NsStandin::start(&topo.ns("agent"));
    let mut world = World::initial(pool);
    m.standin.set_apps(world.apps());
    let log = PathBuf::from("/tmp/lbsk-lb.log");
    let _ = fs::remove_file(&log);
    let mut daemon = Daemon {
        builds: [lb.clone(), other.clone()],
        started: 0,
        args: [
            "--iface",
            "eth*",
            "--iface",
            "cali*",
            "--marathon",
            &m.standin.url(),
            "--health-check",
            "--resync-interval",
            "5",
            "--metrics",
            "127.0.0.1:0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        log: log.clone(),
    };
    let (mut pid, took) = daemon.start(&mut topo);
    eprintln!("soak: lb up in {took:?}");
    thread::sleep(Duration::from_secs(3));
    let baseline = map_entries(&topo);
    let baseline_ids = ids(&topo, &lb);
    eprintln!("soak: baseline map entries {baseline:?}, ids {baseline_ids:?}");

    // Traffic.
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    let kinds: &[(&str, usize)] = &[("short", 4), ("bulk", 1), ("long", 3), ("udp", 2)];
    let mut n = 0u64;
    for (kind, count) in kinds {
        for _ in 0..*count {
            n += 1;
            let (tally, stop, kind) = (Arc::clone(&tally), Arc::clone(&stop), *kind);
            let wseed = seed ^ (n * 0x9E37_79B9_7F4A_7C15);
            let ns = topo.ns("client");
            workers.push(thread::spawn(move || {
                in_netns(&ns, move || {
                    let mut rng = Rng(wseed | 1);
                    while !stop.load(Ordering::Relaxed) {
                        let from = client_addr(rng.below(u64::from(CLIENTS)) as u8);
                        let begun = Instant::now();
                        let r = match kind {
                            "short" => fetch(from, rng.below(32 << 10) as usize, &tally)
                                .map(|()| tally.short_ok.fetch_add(1, Ordering::Relaxed)),
                            "bulk" => fetch(from, BULK_BYTES, &tally)
                                .map(|()| tally.bulk_ok.fetch_add(1, Ordering::Relaxed)),
                            "long" => {
                                let hold = Duration::from_secs(20 + rng.below(70));
                                long_lived(from, hold, rng.next(), &tally).map(|x| {
                                    tally.long_exchanges.fetch_add(x, Ordering::Relaxed);
                                    tally.long_ok.fetch_add(1, Ordering::Relaxed)
                                })
                            }
                            _ => {
                                udp_session(from, Duration::from_secs(2 + rng.below(6))).map(|x| {
                                    tally.udp_answers.fetch_add(x, Ordering::Relaxed);
                                    tally.udp_sessions.fetch_add(1, Ordering::Relaxed)
                                })
                            }
                        };
                        if let Err(e) = r {
                            tally
                                .fail(format!("{kind} from {from}, {:?} in: {e}", begun.elapsed()));
                        }
                        if kind == "short" {
                            thread::sleep(Duration::from_millis(5));
                        }
                    }
                })
            }));
        }
    }

    // Churn, restarts and RSS samples.
    let mut rng = Rng(seed);
    let start = Instant::now();
    let mut changes: std::collections::BTreeMap<&str, u64> = Default::default();
    let mut restarts: Vec<Duration> = Vec::new();
    let mut rss: Vec<(f64, u64)> = Vec::new();
    let mut last_restart = Instant::now();
    let mut tick = 0u64;
    while start.elapsed() < Duration::from_secs(args.seconds) {
        thread::sleep(Duration::from_secs(1));
        tick += 1;
        // Marathon misbehaving: 502 for 3 s, then garbage for 3 s, every 45 s.
        match tick % 45 {
            30 => m.standin.set_mode(Mode::Fail(502)),
            33 => m.standin.set_mode(Mode::Garbage),
            36 => m.standin.set_mode(Mode::Normal),
            _ => {}
        }
        if tick % 20 == 10 {
            m.standin.end_event_streams();
            *changes.entry("event streams ended").or_default() += 1;
        }
        let (what, app) = world.churn(&mut rng);
        *changes.entry(what).or_default() += 1;
        let doc = if app == "/web" {
            world.web()
        } else {
            world.api()
        };
        m.standin.set_app(app, Some(doc));
        if tick.is_multiple_of(5)
            && let Some(kib) = rss_kib(pid)
        {
            rss.push((start.elapsed().as_secs_f64(), kib));
        }
        if args.restart_every > 0 && last_restart.elapsed().as_secs() >= args.restart_every {
            topo.stop(Daemon::LABEL);
            let (p, took) = daemon.start(&mut topo);
            pid = p;
            restarts.push(took);
            last_restart = Instant::now();
            eprintln!(
                "soak: {:>4.0} s: restart {} ({}) up in {took:?}; {} failures so far",
                start.elapsed().as_secs_f64(),
                restarts.len(),
                daemon.builds[((daemon.started - 1) % 2) as usize].display(),
                tally.failures.load(Ordering::Relaxed)
            );
        }
    }
    eprintln!("soak: stopping the traffic");
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("traffic worker");
    }

    // Back to the first state; the maps must come back to the baseline.
    m.standin.set_mode(Mode::Normal);
    let first = World::initial(world.pool.clone());
    m.standin.set_apps(first.apps());
    let settle = Instant::now();
    // Ids: the same services, as many backend ids as at the start (lowest free ids are
    // reused, so which ids may differ), none draining.
    let ids_back = |now: &(Vec<u64>, Vec<u64>, usize)| {
        now.0 == baseline_ids.0 && now.1.len() == baseline_ids.1.len() && now.2 == 0
    };
    let mut now = map_entries(&topo);
    let mut now_ids = ids(&topo, &lb);
    while (now != baseline || !ids_back(&now_ids)) && settle.elapsed() < Duration::from_secs(120) {
        thread::sleep(Duration::from_secs(2));
        now = map_entries(&topo);
        now_ids = ids(&topo, &lb);
    }
    let settled = settle.elapsed();
    let st = status(&topo, &lb).expect("lb status");
    let counters: Vec<String> = st["dataplane"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, v)| (k.starts_with("drop") || k.starts_with("error")) && v.as_u64() != Some(0))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    topo.stop(Daemon::LABEL);

    // Judge. RSS: warmed up = the highest sample between 30 and 90 s; then at most 110% of it.
    let warm = rss
        .iter()
        .filter(|(t, _)| (30.0..90.0).contains(t))
        .map(|r| r.1)
        .max();
    let peak_after = rss.iter().filter(|(t, _)| *t >= 90.0).map(|r| r.1).max();
    let mut verdict: Vec<String> = Vec::new();
    let failures = tally.failures.load(Ordering::Relaxed);
    if failures > 0 {
        verdict.push(format!("{failures} failed connections or sessions"));
    }
    if !counters.is_empty() {
        verdict.push(format!("data plane counters: {}", counters.join(", ")));
    }
    if let (Some(w), Some(p)) = (warm, peak_after)
        && p * 10 > w * 11
    {
        verdict.push(format!("RSS grew from {w} KiB to {p} KiB"));
    }
    if !ids_back(&now_ids) {
        verdict.push(format!(
            "ids in use {now_ids:?} after {settled:?}, baseline {baseline_ids:?}"
        ));
    }
    if now != baseline {
        verdict.push(format!(
            "map entries {now:?} after {settled:?}, baseline {baseline:?}"
        ));
    }
    let report = json!({
        "seed": seed,
        "seconds": args.seconds,
        "builds": [lb.display().to_string(), other.display().to_string()],
        "restarts": restarts.len(),
        "restart_ms_max": restarts.iter().max().map(|d| d.as_millis() as u64),
        "changes": changes,
        "short_ok": tally.short_ok.load(Ordering::Relaxed),
        "bulk_ok": tally.bulk_ok.load(Ordering::Relaxed),
        "long_ok": tally.long_ok.load(Ordering::Relaxed),
        "long_exchanges": tally.long_exchanges.load(Ordering::Relaxed),
        "udp_sessions": tally.udp_sessions.load(Ordering::Relaxed),
        "udp_answers": tally.udp_answers.load(Ordering::Relaxed),
        "bytes_checked": tally.bytes_checked.load(Ordering::Relaxed),
        "failures": failures,
        "failed": *tally.failed.lock().unwrap(),
        "rss_kib": rss,
        "rss_warm_kib": warm,
        "rss_peak_after_warm_kib": peak_after,
        "baseline": baseline.iter().map(|(m, n)| json!([m, n])).collect::<Vec<_>>(),
        "after": now.iter().map(|(m, n)| json!([m, n])).collect::<Vec<_>>(),
        "ids_baseline": {"services": baseline_ids.0, "backends": baseline_ids.1},
        "ids_after": {"services": now_ids.0, "backends": now_ids.1, "not_active": now_ids.2},
        "settled_s": settled.as_secs_f64(),
        "dataplane_drops": counters,
        "verdict": if verdict.is_empty() { "pass".to_owned() } else { verdict.join("; ") },
    });
    fs::create_dir_all(&args.out).expect("report directory");
    let file = args.out.join(format!("soak-{seed}.json"));
    fs::write(&file, serde_json::to_string_pretty(&report).unwrap()).expect("write report");
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    eprintln!(
        "soak: report in {}; daemon log {}",
        file.display(),
        log.display()
    );
    if !verdict.is_empty() {
        eprintln!("soak: FAILED: {}", verdict.join("; "));
        std::process::exit(1);
    }
    eprintln!("soak: passed");
}
