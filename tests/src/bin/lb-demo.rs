//! The demo behind `cargo xtask demo`: a Mesos public agent in network namespaces, with
//! Calico-style tasks, a Marathon stand-in serving the nginx app of Calico's "Connecting to
//! Tasks" guide, and `lb run` following it. Shows balancing, a scale-up reaching the data
//! plane, `lb status` and the pinned service map. Needs root, `ip` and `bpftool`; `LB_BIN`
//! and `LBT_SERVER` name the binaries (else they are looked for next to this one).
//!
//! Everything it creates goes away when it ends: on success, on failure (also a panic) and on
//! SIGINT, SIGTERM or SIGHUP.
use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    panic,
    process::{Command, ExitCode},
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use lb_tests::{
    client::{Answer, tcp_ask},
    lb::{self, NsStandin},
    netns::{AGENT, AGENT2, TASK_PORT, TASKS, Topology, lb_bin, server_bin},
};
use serde_json::{Value, json};

const PREFIX: &str = "lbdemo";
const SERVICE_PORT: u16 = 10000;
/// The task the scale-up adds: on the agent, behind a new Calico veth.
const T4: (&str, Ipv4Addr, &str, &str) = ("t4", Ipv4Addr::new(192, 168, 1, 14), "agent", "cali-t4");
const ASK: Duration = Duration::from_secs(3);

/// The topology, where both the demo and the signal thread can reach it to tear it down.
static TOPO: Mutex<Option<Topology>> = Mutex::new(None);
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn topo_lock() -> MutexGuard<'static, Option<Topology>> {
    TOPO.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Once a signal came, the demo stops at its next step (unwinding, without a panic message)
/// and leaves the terminal to the clean-up.
fn stop_if_interrupted() {
    if INTERRUPTED.load(Ordering::SeqCst) {
        panic::resume_unwind(Box::new("interrupted"));
    }
}

/// Runs `f` on the topology (which exists from the first step to the clean-up).
fn with_topo<R>(f: impl FnOnce(&mut Topology) -> R) -> R {
    stop_if_interrupted();
    let mut guard = topo_lock();
    stop_if_interrupted();
    f(guard.as_mut().expect("the topology exists"))
}

/// The guide's own DNS example: `dig nginx.marathon.mesos` (and dcos-net's `containerip` name)
/// from the client, against lb in the agent; `n` Calico addresses expected.
fn show_dns(n: usize) -> Result<()> {
    for name in [
        "nginx.marathon.mesos",
        "nginx.marathon.containerip.dcos.thisdcos.directory",
    ] {
        step(&format!("dig @{AGENT} +short {name}   (from the client)"));
        let out = with_topo(|t| t.sh("client", &format!("dig @{AGENT} +time=2 +short {name}")));
        print!(
            "{}",
            out.lines()
                .map(|l| format!("    {l}\n"))
                .collect::<String>()
        );
        let got = out.lines().filter(|l| l.starts_with("192.168.")).count();
        ensure!(
            got == n,
            "expected {n} Calico addresses for {name}, got:\n{out}"
        );
    }
    println!("    lb answers with the tasks' Calico IPs, from the Marathon state it follows");
    Ok(())
}

fn step(what: &str) {
    stop_if_interrupted();
    println!("\n==> {what}");
}

fn log_path() -> String {
    format!("/tmp/{PREFIX}-lb.log")
}

/// Removes what the demo made, reporting it unless `quiet`; false if it was gone already.
/// Holding the lock while tearing down makes a signal arriving meanwhile wait for the end
/// instead of exiting half-way.
fn clean_up(quiet: bool) -> bool {
    let mut guard = topo_lock();
    let Some(topo) = guard.take() else {
        return false;
    };
    if !quiet {
        println!("\n==> cleaning up: processes, network namespaces, bpffs mount");
    }
    drop(topo);
    let namespaces = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    let left: Vec<&str> = namespaces
        .lines()
        .chain(mounts.lines())
        .filter(|l| l.contains(&format!("{PREFIX}-")))
        .collect();
    if !left.is_empty() {
        eprintln!("    left behind: {left:?}");
    } else if !quiet {
        println!("    done: no {PREFIX}-* namespace, process or mount is left");
    }
    true
}

/// Blocks the termination signals in this thread (and so in every thread started after) and
/// starts a thread that waits for them and tears the demo down. Children get an empty mask.
fn handle_signals() {
    // SAFETY: plain libc calls on a local, initialised signal set.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    thread::spawn(move || {
        let mut sig = 0;
        // SAFETY: `set` is initialised; sigwait only writes `sig`.
        unsafe { libc::sigwait(&set, &mut sig) };
        INTERRUPTED.store(true, Ordering::SeqCst);
        let name = match sig {
            libc::SIGINT => "SIGINT",
            libc::SIGTERM => "SIGTERM",
            _ => "SIGHUP",
        };
        println!("\n==> interrupted ({name}): cleaning up");
        // Waits for a step holding the topology, or for the demo's own clean-up to finish.
        if clean_up(true) {
            let _ = fs::remove_file(log_path());
            println!("    done: namespaces, processes and the bpffs mount are gone");
        }
        std::process::exit(130);
    });
}

fn main() -> ExitCode {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "lb-demo needs root (BPF programs, network namespaces, a bpffs mount): run it as root"
        );
        return ExitCode::FAILURE;
    }
    handle_signals();
    // Once interrupted, the failures that follow (processes gone) are expected: stay quiet.
    let default_hook = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        if !INTERRUPTED.load(Ordering::SeqCst) {
            default_hook(info);
        }
    }));
    let outcome = panic::catch_unwind(demo);
    if INTERRUPTED.load(Ordering::SeqCst) {
        // The signal thread is tearing down and will exit.
        loop {
            thread::park();
        }
    }
    let ok = matches!(outcome, Ok(Ok(())));
    if let Ok(Err(e)) = &outcome {
        eprintln!("\ndemo failed: {e:#}");
    }
    clean_up(false);
    if ok {
        let _ = fs::remove_file(log_path());
        println!("\nThe demo ran to the end.");
        ExitCode::SUCCESS
    } else {
        eprintln!("lb's log is in {}", log_path());
        ExitCode::FAILURE
    }
}

/// The nginx app of Calico's "Connecting to Tasks" guide as Marathon 1.5+ serves it, with one
/// running, healthy task per `(address, agent)`.
fn nginx_app(tasks: &[(Ipv4Addr, Ipv4Addr)]) -> Value {
    let version = "2018-03-14T09:00:00.000Z";
    let tasks: Vec<Value> = tasks
        .iter()
        .enumerate()
        .map(|(i, (addr, host))| {
            let id = format!("nginx.6d2b4f2e-2f2a-11e7-93ae-92361f0026{i:02x}");
            json!({
                "appId": "/nginx",
                "id": id,
                "host": host.to_string(),
                "ipAddresses": [{"ipAddress": addr.to_string(), "protocol": "IPv4"}],
                "ports": [],
                "servicePorts": [SERVICE_PORT],
                "slaveId": format!("0f4c7b3e-6a51-4d4c-b3f4-1f2f0f6a9d11-S{i}"),
                "state": "TASK_RUNNING",
                "stagedAt": "2018-03-14T10:11:13.002Z",
                "startedAt": "2018-03-14T10:11:20.101Z",
                "version": version,
                "healthCheckResults": [{
                    "alive": true,
                    "consecutiveFailures": 0,
                    "firstSuccess": "2018-03-14T10:11:40.220Z",
                    "lastSuccess": "2018-03-14T10:15:40.221Z",
                    "instanceId": id.replace("nginx.", "nginx.marathon-"),
                }],
                "localVolumes": [],
            })
        })
        .collect();
    let n = tasks.len();
    json!({"apps": [{
        "id": "/nginx",
        "container": {
            "type": "DOCKER",
            "docker": {"image": "nginx:1.13", "forcePullImage": false, "privileged": false, "parameters": []},
            "volumes": [],
            "portMappings": [{
                "containerPort": TASK_PORT,
                "servicePort": SERVICE_PORT,
                "protocol": "tcp",
                "name": "http",
                "labels": {},
            }],
        },
        "cpus": 0.1,
        "mem": 64,
        "instances": n,
        "labels": {"HAPROXY_GROUP": "external", "HAPROXY_0_VHOST": VHOST},
        "networks": [{"name": "calico", "mode": "container"}],
        "healthChecks": [{
            "protocol": "MESOS_HTTP",
            "path": "/",
            "portIndex": 0,
            "gracePeriodSeconds": 60,
            "intervalSeconds": 10,
            "timeoutSeconds": 5,
            "maxConsecutiveFailures": 3,
        }],
        "requirePorts": false,
        "version": version,
        "tasksStaged": 0,
        "tasksRunning": n,
        "tasksHealthy": n,
        "tasksUnhealthy": 0,
        "deployments": [],
        "tasks": tasks,
    }]})
}

/// The guide's `HAPROXY_0_VHOST`.
const VHOST: &str = "mytask.acme.org";

fn vip() -> SocketAddrV4 {
    SocketAddrV4::new(AGENT, SERVICE_PORT)
}

fn task_ip(name: &str) -> String {
    TASKS
        .iter()
        .map(|(t, a, _, _)| (*t, *a))
        .chain([(T4.0, T4.1)])
        .find(|(t, _)| *t == name)
        .map_or_else(|| "?".to_owned(), |(_, a)| a.to_string())
}

/// `n` requests from the client to the service, printed as a numbered list.
fn ask_and_show(client_ns: &str, n: usize) -> Result<Vec<Answer>> {
    let answers: Vec<Result<Answer, String>> = lb_tests::netns::in_netns(client_ns, move || {
        (0..n).map(|_| tcp_ask(vip(), ASK)).collect()
    });
    let mut out = Vec::new();
    for (i, a) in answers.into_iter().enumerate() {
        stop_if_interrupted();
        let a = a.map_err(anyhow::Error::msg)?;
        println!(
            "    {:>2}. client → {} → answered by {} ({}), which saw the connection come from {}",
            i + 1,
            vip(),
            a.task,
            task_ip(&a.task),
            a.peer
        );
        out.push(a);
    }
    Ok(out)
}

fn spread(answers: &[Answer]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for a in answers {
        *m.entry(a.task.clone()).or_default() += 1;
    }
    m
}

fn demo() -> Result<()> {
    let lb_path = lb_bin();
    let server = server_bin();
    ensure!(
        lb_path.exists() && server.exists(),
        "{} and {} must be built (cargo xtask demo builds them)",
        lb_path.display(),
        server.display()
    );
    let started = Instant::now();

    step(&format!(
        "creating the agent topology in network namespaces ({PREFIX}-*)"
    ));
    // A fourth task namespace left by a run that was killed outright is not known to `new`.
    let _ = Command::new("ip")
        .args(["netns", "del", &format!("{PREFIX}-{}", T4.0)])
        .output();
    *topo_lock() = Some(Topology::new(PREFIX));
    println!(
        "    client 10.0.0.2 ── eth0 ── agent 10.0.0.1 (the public agent: lb runs here)
                                  ├── cali-t1 ── t1 192.168.1.11 (Calico task, /32, proxy ARP)
                                  ├── cali-t2 ── t2 192.168.1.12
                                  └── eth1 10.0.1.1 ── agent2 10.0.1.2 ── cali-t3 ── t3 192.168.2.13"
    );

    step("starting the tasks: lbt-server on port 80 in t1, t2 and t3 (it answers with its name)");
    with_topo(Topology::start_tasks);

    step("starting the Marathon stand-in in the agent namespace");
    let agent_ns = with_topo(|t| t.ns("agent"));
    let client_ns = with_topo(|t| t.ns("client"));
    let marathon = NsStandin::start(&agent_ns);
    let three: Vec<(Ipv4Addr, Ipv4Addr)> = TASKS
        .iter()
        .map(|(_, a, host, _)| (*a, if *host == "agent" { AGENT } else { AGENT2 }))
        .collect();
    marathon.standin.set_apps(nginx_app(&three));
    println!(
        "    {}/v2/apps serves /nginx: 3 instances on network \"calico\", label HAPROXY_GROUP=external,
    servicePort {SERVICE_PORT} → containerPort {TASK_PORT}, tasks TASK_RUNNING at 192.168.1.11, 192.168.1.12, 192.168.2.13",
        marathon.standin.url()
    );

    let pin = with_topo(|t| t.pin_path());
    let pin_s = pin.display().to_string();
    let url = marathon.standin.url();
    let args = [
        "--iface",
        "eth*",
        "--iface",
        "cali*",
        "--marathon",
        &url,
        "--group",
        "external",
        "--dns-listen",
        "0.0.0.0:53",
    ];
    step(&format!(
        "lb run --pin-path {pin_s} --iface 'eth*' --iface 'cali*' --marathon {url} --group external --dns-listen 0.0.0.0:53   (in the agent namespace)"
    ));
    let t = Instant::now();
    with_topo(|topo| lb::start(topo, "lb", &args, 1));
    let mut want = vec![
        "192.168.1.11:80".to_owned(),
        "192.168.1.12:80".to_owned(),
        "192.168.2.13:80".to_owned(),
    ];
    lb::wait_for(
        "lb serving the three tasks",
        Duration::from_secs(20),
        || with_topo(|topo| lb::active_backends(topo, SERVICE_PORT)) == want,
    );
    println!(
        "    up in {} ms: programs attached, /nginx followed on port {SERVICE_PORT} with 3 backends (log: {})",
        t.elapsed().as_millis(),
        log_path()
    );

    step(&format!(
        "6 requests from the client (10.0.0.2) to the agent's address, {}",
        vip()
    ));
    let answers = ask_and_show(&client_ns, 6)?;
    let s = spread(&answers);
    ensure!(
        s.keys().eq(["t1", "t2", "t3"].iter()) && s.values().all(|n| *n == 2),
        "expected each of t1, t2 and t3 to answer twice, got {s:?}"
    );
    println!(
        "    each task answered in turn (full NAT: tasks see an agent address, not the client)"
    );

    step(&format!(
        "the guide's own command, 3 times from the client: curl -H \"Host: {VHOST}\" {AGENT}"
    ));
    let mut vhost_answers = Vec::new();
    for i in 0..3 {
        stop_if_interrupted();
        let out = Command::new("ip")
            .args(["netns", "exec", &client_ns, "curl", "-sS", "-m", "5"])
            .args(["-H", &format!("Host: {VHOST}"), &format!("http://{AGENT}/")])
            .output()?;
        let body = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        ensure!(
            out.status.success() && body.starts_with('t'),
            "curl -H \"Host: {VHOST}\" {AGENT} failed: {body}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        println!("    {}. {body}", i + 1);
        vhost_answers.push(body.split_whitespace().next().unwrap_or("").to_owned());
    }
    vhost_answers.sort();
    ensure!(
        vhost_answers == ["t1", "t2", "t3"],
        "expected t1, t2 and t3 in turn, got {vhost_answers:?}"
    );
    println!(
        "    HAPROXY_0_VHOST={VHOST} on :80, as marathon-lb serves it: the three tasks in turn, \
         each told the client's address in X-Forwarded-For (xff=)"
    );
    show_dns(3)?;

    let (t4, t4_addr, t4_host, t4_cali) = T4;
    step(&format!(
        "scale-up: Marathon starts a 4th instance; Calico wires {t4} ({t4_addr}) behind {t4_cali}"
    ));
    let t = Instant::now();
    with_topo(|topo| {
        topo.add_task(t4, t4_addr, t4_host, t4_cali);
        topo.start_task(t4, t4_addr);
    });
    lb::wait_for(
        "lb attaching to the new cali interface",
        Duration::from_secs(10),
        || {
            with_topo(|topo| lb::status(topo)).is_some_and(|st| {
                st["daemon"]["interfaces"]
                    .as_object()
                    .is_some_and(|i| i.contains_key(t4_cali))
            })
        },
    );
    println!(
        "    {t4} is up and lb attached to {t4_cali} as it appeared ({} ms after creating it)",
        t.elapsed().as_millis()
    );

    step(
        "the stand-in announces /nginx with 4 instances (api_post_event on /v2/events); timing until t4 serves",
    );
    let mut four = three.clone();
    four.push((t4_addr, AGENT));
    let event = Instant::now();
    marathon.standin.set_apps(nginx_app(&four));
    let (elapsed, before) = lb_tests::netns::in_netns(&client_ns, move || {
        let mut before = 0;
        loop {
            if let Ok(a) = tcp_ask(vip(), ASK) {
                if a.task == "t4" {
                    return Ok((event.elapsed(), before));
                }
                before += 1;
            }
            if event.elapsed() > Duration::from_secs(15) {
                bail!("t4 did not serve within 15 s of the event");
            }
            thread::sleep(Duration::from_millis(1));
        }
    })?;
    println!(
        "    event → first request served by t4 through {}: {:.1} ms ({before} requests answered by t1-t3 meanwhile)",
        vip(),
        elapsed.as_secs_f64() * 1000.0
    );
    want.push(format!("{t4_addr}:80"));
    want.sort();
    ensure!(
        with_topo(|topo| lb::active_backends(topo, SERVICE_PORT)) == want,
        "lb status does not show the four backends"
    );

    step(&format!("8 requests to {} after the scale-up", vip()));
    let answers = ask_and_show(&client_ns, 8)?;
    let s = spread(&answers);
    ensure!(
        s.keys().eq(["t1", "t2", "t3", "t4"].iter()) && s.values().all(|n| *n == 2),
        "expected each of t1..t4 to answer twice, got {s:?}"
    );
    println!("    all four tasks answer in turn");

    show_dns(4)?;

    step(&format!("lb status --pin-path {pin_s}"));
    let table = with_topo(|topo| lb::lb(topo, &["status", "--pin-path", &pin_s]));
    stop_if_interrupted();
    print!("{}", indent(&table));

    let map = pin.join("LB_SERVICES");
    step(&format!("bpftool map dump pinned {}", map.display()));
    let out = Command::new("bpftool")
        .args(["map", "dump", "pinned"])
        .arg(&map)
        .output()
        .context("running bpftool (apt-get install bpftool)")?;
    if !out.status.success() {
        bail!(
            "bpftool map dump failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    stop_if_interrupted();
    print!("{}", indent(&String::from_utf8_lossy(&out.stdout)));
    println!(
        "    (key: addr 0 = every local address, port {} = {SERVICE_PORT} in network byte order, proto 6 = TCP;
     value: count = backends in the current generation, which the scale-up swapped in one write)",
        SERVICE_PORT.to_be()
    );

    println!(
        "\n    {:.1} s from the first namespace to here",
        started.elapsed().as_secs_f64()
    );
    let _ = std::io::stdout().flush();
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}
