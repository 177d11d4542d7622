//! The agent topology of the end-to-end tests, built the way Calico wires tasks: a client,
//! an agent running `lb`, two tasks behind `cali*` veths on it (a /32 on eth0, default route
//! via 169.254.1.1 onlink, proxy ARP on the host side, which has no address) and a third task
//! behind a second agent. Dropping the `Topology` removes it all, also when a test panics.
use std::{
    fs,
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub const AGENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const AGENT_BACKNET: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
pub const AGENT2: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
/// (namespace role, address, host namespace role, host-side veth)
pub const TASKS: [(&str, Ipv4Addr, &str, &str); 3] = [
    ("t1", Ipv4Addr::new(192, 168, 1, 11), "agent", "cali-t1"),
    ("t2", Ipv4Addr::new(192, 168, 1, 12), "agent", "cali-t2"),
    ("t3", Ipv4Addr::new(192, 168, 2, 13), "agent2", "cali-t3"),
];
pub const TASK_PORT: u16 = 80;

fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ip(args: &str) {
    run(Command::new("ip").args(args.split_whitespace()));
}

/// Path of a binary the tests drive: `$LB_BIN` for `lb`, else next to the test executable.
pub fn bin(name: &str, env: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return p.into();
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not built: run the tests through `cargo xtask test` (or set {env})",
        p.display()
    );
    p
}

pub fn lb_bin() -> PathBuf {
    bin("lb", "LB_BIN")
}

pub fn server_bin() -> PathBuf {
    bin("lbt-server", "LBT_SERVER")
}

pub struct Topology {
    pub prefix: String,
    /// A bpffs mounted outside /sys: `ip netns exec` gives every command its own /sys.
    pub bpffs: PathBuf,
    procs: Vec<(String, Child)>,
    /// Task namespaces added after `new` (`add_task`), removed with the rest.
    extra: Vec<String>,
}

impl Topology {
    /// Builds the topology; namespaces are named `<prefix>-<role>`.
    pub fn new(prefix: &str) -> Self {
        let mut t = Self {
            prefix: prefix.to_owned(),
            bpffs: PathBuf::from(format!("/run/{prefix}-bpf")),
            procs: Vec::new(),
            extra: Vec::new(),
        };
        t.teardown();
        let p = prefix;
        for role in ["client", "agent", "agent2", "t1", "t2", "t3"] {
            ip(&format!("netns add {p}-{role}"));
            ip(&format!("-n {p}-{role} link set lo up"));
        }
        ip(&format!(
            "link add eth0 netns {p}-client type veth peer name eth0 netns {p}-agent"
        ));
        ip(&format!("-n {p}-client addr add {CLIENT}/24 dev eth0"));
        ip(&format!("-n {p}-agent addr add {AGENT}/24 dev eth0"));
        ip(&format!(
            "link add eth1 netns {p}-agent type veth peer name eth0 netns {p}-agent2"
        ));
        ip(&format!(
            "-n {p}-agent addr add {AGENT_BACKNET}/24 dev eth1"
        ));
        ip(&format!("-n {p}-agent2 addr add {AGENT2}/24 dev eth0"));
        for (ns, dev) in [
            ("client", "eth0"),
            ("agent", "eth0"),
            ("agent", "eth1"),
            ("agent2", "eth0"),
        ] {
            ip(&format!("-n {p}-{ns} link set {dev} up"));
        }
        // The client reaches task IPs directly through the agent (to show they are undisturbed);
        // the agent's default route points at the client side, as a public agent's would.
        ip(&format!(
            "-n {p}-client route add 192.168.0.0/16 via {AGENT}"
        ));
        ip(&format!("-n {p}-agent route add default via {CLIENT}"));
        ip(&format!(
            "-n {p}-agent route add 192.168.2.0/24 via {AGENT2}"
        ));
        ip(&format!(
            "-n {p}-agent2 route add default via {AGENT_BACKNET}"
        ));
        for ns in ["agent", "agent2"] {
            t.sh(ns, "sysctl -qw net.ipv4.ip_forward=1");
        }
        for (task, addr, host, cali) in TASKS {
            t.wire_task(task, addr, host, cali);
        }
        fs::create_dir_all(&t.bpffs).expect("create bpffs mount point");
        run(Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&t.bpffs));
        t
    }

    /// Wires a task namespace the way Calico does: a /32 on its eth0, default route via
    /// 169.254.1.1 onlink, and on the host side a proxy-ARP veth `cali` with a /32 route.
    fn wire_task(&self, task: &str, addr: Ipv4Addr, host: &str, cali: &str) {
        let p = &self.prefix;
        ip(&format!(
            "link add {cali} netns {p}-{host} type veth peer name eth0 netns {p}-{task}"
        ));
        ip(&format!("-n {p}-{task} addr add {addr}/32 dev eth0"));
        ip(&format!("-n {p}-{task} link set eth0 up"));
        ip(&format!(
            "-n {p}-{task} route add 169.254.1.1 dev eth0 scope link"
        ));
        ip(&format!(
            "-n {p}-{task} route add default via 169.254.1.1 dev eth0 onlink"
        ));
        ip(&format!("-n {p}-{host} link set {cali} up"));
        self.sh(
            host,
            &format!("sysctl -qw net.ipv4.conf.{cali}.proxy_arp=1"),
        );
        ip(&format!("-n {p}-{host} route add {addr}/32 dev {cali}"));
    }

    /// Adds a task namespace `<prefix>-<task>` behind a new `cali` veth on `host` (a scale-up:
    /// Calico wiring a new container). It goes away with the topology.
    pub fn add_task(&mut self, task: &str, addr: Ipv4Addr, host: &str, cali: &str) {
        let ns = self.ns(task);
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        self.extra.push(task.to_owned());
        ip(&format!("netns add {ns}"));
        ip(&format!("-n {ns} link set lo up"));
        self.wire_task(task, addr, host, cali);
    }

    /// Starts `lbt-server` named `task` in its namespace, port 80, and waits until the client
    /// reaches it directly.
    pub fn start_task(&mut self, task: &str, addr: Ipv4Addr) {
        let mut c = self.cmd(task, &server_bin());
        c.arg(task).arg(TASK_PORT.to_string());
        self.spawn(task, c);
        let target = SocketAddrV4::new(addr, TASK_PORT);
        let ok = in_netns(&self.ns("client"), move || {
            wait_tcp(target, Duration::from_secs(10))
        });
        assert!(ok, "task {task} at {target} did not come up");
    }

    pub fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    pub fn pin_path(&self) -> PathBuf {
        self.bpffs.join("lb")
    }

    /// Runs a shell command in a namespace; panics with its output if it fails.
    pub fn sh(&self, role: &str, script: &str) -> String {
        let out =
            run(Command::new("ip").args(["netns", "exec", &self.ns(role), "sh", "-c", script]));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A command that runs inside a namespace.
    pub fn cmd(&self, role: &str, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(role)]).arg(program);
        c
    }

    /// Starts a long-running process that is killed when the topology goes.
    pub fn spawn(&mut self, label: &str, mut cmd: Command) {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {label}: {e}"));
        self.procs.push((label.to_owned(), child));
    }

    /// The process id of a process started with `spawn` (`ip netns exec` execs the program,
    /// so this is the program's own).
    pub fn pid(&self, label: &str) -> Option<u32> {
        self.procs
            .iter()
            .find(|(l, _)| l == label)
            .map(|(_, c)| c.id())
    }

    /// The exit status of a process started with `spawn`, if it has ended.
    pub fn exited(&mut self, label: &str) -> Option<std::process::ExitStatus> {
        let (_, child) = self.procs.iter_mut().find(|(l, _)| l == label)?;
        child.try_wait().ok().flatten()
    }

    /// Stops a process started with `spawn` by SIGTERM (as systemd would), waiting for it.
    pub fn stop(&mut self, label: &str) -> std::process::ExitStatus {
        let i = self
            .procs
            .iter()
            .position(|(l, _)| l == label)
            .unwrap_or_else(|| panic!("no process {label}"));
        let (_, mut child) = self.procs.remove(i);
        // SAFETY: signalling a child we started.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = child.try_wait().expect("wait") {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "{label} did not stop within 10 s of SIGTERM"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts `lbt-server` in every task namespace and waits until each answers.
    pub fn start_tasks(&mut self) {
        for (task, addr, _, _) in TASKS {
            self.start_task(task, addr);
        }
    }

    fn teardown(&mut self) {
        for (_, mut c) in self.procs.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        let extra = std::mem::take(&mut self.extra);
        let fixed = ["client", "agent", "agent2", "t1", "t2", "t3"];
        for role in extra.iter().map(String::as_str).chain(fixed) {
            let _ = Command::new("ip")
                .args(["netns", "del", &format!("{}-{role}", self.prefix)])
                .output();
        }
        let _ = Command::new("umount").arg("-l").arg(&self.bpffs).output();
        let _ = fs::remove_dir(&self.bpffs);
        let _ = fs::remove_file(format!("/run/lb/run_{}-bpf_lb.json", self.prefix));
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Runs `f` on a thread that has entered the named network namespace, so sockets it opens
/// live there. The test process itself stays where it was.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    thread::spawn(move || {
        let file = fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: setns on a valid namespace fd affects only this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

pub fn wait_tcp(target: SocketAddrV4, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&target.into(), Duration::from_millis(200)).is_ok() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Runs a host shell script; panics with its stderr if it fails.
pub fn sh(script: &str) {
    let out = Command::new("sh")
        .args(["-c", script])
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A namespace whose routes and static neighbours fix the FIB's answers for
/// BPF_PROG_TEST_RUN: `up0` (10.0.0.1/24) leads to the client 10.0.0.2 and `cali0` to the task
/// 192.168.1.11, both neighbours known (veth pairs: this kernel has no dummy links). `extra`
/// are further `ip -n <name> ...` commands one user needs. Removed again on drop.
pub struct FibNs {
    pub name: String,
}

impl FibNs {
    pub fn new(name: &str, extra: &[&str]) -> Self {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        let n = format!("ip -n {name}");
        let mut script = format!(
            "ip netns add {name} && {n} link set lo up && \
             {n} link add up0 type veth peer name up0p && {n} link set up0p up && \
             {n} link set up0 address 02:00:00:00:0a:01 up && {n} addr add 10.0.0.1/24 dev up0 && \
             {n} neigh add 10.0.0.2 lladdr 02:00:00:00:0a:02 dev up0 nud permanent && \
             {n} link add cali0 type veth peer name cali0p && {n} link set cali0p up && \
             {n} link set cali0 address 02:00:00:00:01:01 up && \
             {n} route add 192.168.1.11/32 dev cali0 && \
             {n} neigh add 192.168.1.11 lladdr 02:00:00:00:01:0b dev cali0 nud permanent && \
             ip netns exec {name} sysctl -qw net.ipv4.conf.all.forwarding=1 net.ipv4.conf.lo.forwarding=1"
        );
        for cmd in extra {
            script.push_str(&format!(" && {n} {cmd}"));
        }
        let env = Self {
            name: name.to_owned(),
        };
        sh(&script);
        env
    }
}

impl Drop for FibNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Attaches to `dev` in namespace `ns`, in native mode, an XDP program that passes every frame:
/// what sits on the far end of a real uplink (a NIC, a switch) in place of a bare veth. A veth
/// puts the frames its peer sends back with `XDP_TX` on this end's queue, but wakes this end
/// only when an XDP program runs here (the kernel's `veth_xdp_flush` looks for one), so without
/// it such frames wait, unseen, for the next ordinary packet. The program is two instructions
/// (`r0 = XDP_PASS; exit`), loaded with bpf(2) directly: no object file to build.
pub fn attach_xdp_pass(ns: &str, dev: &str) {
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_PROG_TYPE_XDP: u32 = 6;
    // mov64 r0, 2 (XDP_PASS); exit
    let insns: [u64; 2] = [
        u64::from_le_bytes([0xb7, 0, 0, 0, 2, 0, 0, 0]),
        u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
    ];
    let license = c"GPL";
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&BPF_PROG_TYPE_XDP.to_ne_bytes());
    attr[4..8].copy_from_slice(&(insns.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    // SAFETY: bpf(2) with a union bpf_attr laid out for BPF_PROG_LOAD; the pointers it holds
    // outlive the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, attr.as_ptr(), attr.len()) };
    assert!(
        fd >= 0,
        "loading an XDP_PASS program: {}",
        std::io::Error::last_os_error()
    );
    // A bpffs of our own outside /sys: `ip -n` mounts a fresh sysfs for the namespace, without
    // the host's /sys/fs/bpf.
    let dir = "/run/lbt-xdp-pass";
    fs::create_dir_all(dir).unwrap();
    let mounted = fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(dir));
    if !mounted {
        sh(&format!("mount -t bpf bpf {dir}"));
    }
    let pin = format!("{dir}/{ns}-{dev}\0");
    let _ = fs::remove_file(pin.trim_end_matches('\0'));
    let mut attr = [0u8; 128];
    attr[0..8].copy_from_slice(&(pin.as_ptr() as u64).to_ne_bytes());
    attr[8..12].copy_from_slice(&(fd as u32).to_ne_bytes());
    // SAFETY: as above, for BPF_OBJ_PIN.
    let r = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_PIN, attr.as_ptr(), attr.len()) };
    assert!(r == 0, "pinning it: {}", std::io::Error::last_os_error());
    let pin = pin.trim_end_matches('\0');
    ip(&format!("-n {ns} link set dev {dev} xdpdrv pinned {pin}"));
    // The attachment holds the program now.
    let _ = fs::remove_file(pin);
    // SAFETY: our own descriptor, closed once.
    unsafe { libc::close(fd as i32) };
}
