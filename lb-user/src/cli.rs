//! The command line: `lb run | status | flows | detach`, every flag documented in `--help`.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    dataplane::attach::Hook,
    http::FrontConfig,
    marathon::{
        client::{Auth, ClientConfig},
        controller::ControllerConfig,
        events::EventStreamConfig,
        feed::FeedConfig,
        translate::{IpSource, PortRange, TranslateOptions},
    },
    services::Cidr,
};

pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/lb";

#[derive(Debug, Parser)]
#[command(
    name = "lb",
    version,
    about = "L4 load balancer for Mesos public agents: Marathon services in XDP/TC"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load and attach the data plane and keep its maps in step with the services.
    Run(Box<RunArgs>),
    /// Show services, backends, counters and the daemon's sync state (daemon running or not).
    Status(ViewArgs),
    /// List the tracked flows.
    Flows(ViewArgs),
    /// Remove the programs, links and pinned maps (tracked flows are lost).
    Detach(PinArgs),
    /// Ask the daemon's DNS server for NAME and print its answer (like dig against it).
    Dns(crate::dns::query::DnsQueryArgs),
}

#[derive(Debug, Args)]
pub struct PinArgs {
    /// bpffs directory holding the pinned maps and links (mounted there if missing).
    #[arg(long, default_value = DEFAULT_PIN_PATH, env = "LB_PIN_PATH")]
    pub pin_path: PathBuf,
}

#[derive(Debug, Args)]
pub struct ViewArgs {
    #[command(flatten)]
    pub pin: PinArgs,
    /// Machine-readable JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `--hook`, as the command line spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum HookArg {
    /// XDP for the fast path, with the TC program beside it for what XDP cannot redirect.
    Xdp,
    /// TC (clsact ingress) only: works on every interface.
    Tc,
    /// XDP (with TC) on physical NICs where the driver takes it; TC alone on virtual
    /// interfaces, whose XDP sees partial checksums and gains nothing.
    Auto,
}

impl From<HookArg> for Hook {
    fn from(h: HookArg) -> Self {
        match h {
            HookArg::Xdp => Hook::Xdp,
            HookArg::Tc => Hook::Tc,
            HookArg::Auto => Hook::Auto,
        }
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub pin: PinArgs,

    /// Interfaces to attach to, by name or shell glob (repeatable), e.g. `--iface eth0 --iface 'cali*'`.
    /// Interfaces that appear later and match are attached as they come.
    #[arg(long = "iface", required = true, value_name = "NAME|GLOB")]
    pub ifaces: Vec<String>,

    /// Static services file (JSON), used when not following Marathon. SIGHUP reloads it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Keep the client's address (DNAT only). Replies from backends must route back through
    /// this agent. Default: full NAT, backends see an agent address.
    #[arg(long)]
    pub preserve_client_ip: bool,

    /// Hook: `xdp` (XDP fast path with TC beside it, on every interface), `tc` (TC only), or
    /// `auto` (XDP and TC on physical NICs, TC alone on virtual interfaces such as cali* veths).
    #[arg(long, value_enum, default_value = "auto")]
    pub hook: HookArg,

    /// Interfaces between which XDP forwards on its own (repeatable glob); elsewhere XDP hands
    /// packets to the TC program. Default: the physical NICs among those attached. A veth
    /// qualifies only if its peer sends complete checksums (tx checksum offload off) and
    /// accepts XDP frames (runs XDP; GRO alone takes redirected frames but not XDP_TX ones).
    #[arg(long = "xdp-redirect", value_name = "GLOB")]
    pub xdp_redirect: Vec<String>,

    /// Hand packets bound for a task's veth straight to the task's side
    /// (`bpf_redirect_peer`): no veth queue and no second softirq pass per packet, but the
    /// veth's egress hooks do not see them. Use it where nothing enforces policy on the
    /// `cali*` links' egress (Calico's eBPF data plane does; a veth that carries a tcx egress
    /// program when the daemon looks at its links is left out by itself, a legacy clsact
    /// filter is not seen). Off by default: packets leave through the veth.
    #[arg(long)]
    pub redirect_peer: bool,

    /// With `--redirect-peer`, only veths whose names match (repeatable glob, e.g. `cali*`):
    /// a veth to a namespace that stands for another host (a test rig's uplink) keeps its
    /// queue, as a NIC would. Default: every veth whose peer is in another namespace.
    #[arg(
        long = "redirect-peer-iface",
        value_name = "GLOB",
        requires = "redirect_peer"
    )]
    pub redirect_peer_ifaces: Vec<String>,

    /// Client addresses or ranges (`10.0.0.0/8`, repeatable) allowed to open connections to
    /// every service that sets none of its own (marathon-lb's
    /// HAPROXY_{n}_BACKEND_NETWORK_ALLOWED_ACL, a static file's `allow`). Others' packets are
    /// dropped and counted per service. Default: every client.
    #[arg(long = "allow", value_name = "CIDR", value_parser = parse_cidr)]
    pub allow: Vec<Cidr>,

    /// Source ports for full NAT, `MIN-MAX`, kept apart from the kernel's ephemeral range
    /// (32768-60999) so the agent's own connections to tasks never share a tuple with a flow.
    #[arg(long, default_value = "1024-32767", value_parser = parse_port_range)]
    pub nat_port_range: (u16, u16),

    /// Idle timeout of an established TCP flow, seconds.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub tcp_timeout: u64,

    /// How long a TCP flow lives after FIN or RST, seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub tcp_closing_timeout: u64,

    /// How long a TCP flow lives after FINs both ways (client first) or an RST, seconds: then
    /// its NAT port is free for a new flow.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub tcp_closed_timeout: u64,

    /// How long a NAT port stays reserved after the backend closed first, seconds: the
    /// backend's TIME_WAIT (Linux: 60 s) would refuse a new connection on the same ports.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub tcp_time_wait_timeout: u64,

    /// Idle timeout of a UDP flow, seconds.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub udp_timeout: u64,

    /// Flow-table capacity in flows (two entries each); fixed when the maps are first created.
    #[arg(long, default_value_t = lb_common::MAX_FLOW_ENTRIES / 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_flows: u32,

    /// Service-table capacity; fixed when the maps are first created.
    #[arg(long, default_value_t = lb_common::MAX_SERVICES, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_services: u32,

    /// Distinct backends (with counters) across all services; fixed when the maps are first created.
    #[arg(long, default_value_t = lb_common::MAX_BACKEND_IDS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_backends: u32,

    /// Names the DNS fast path holds (`LB_DNS_A`); names beyond it are answered by the userspace
    /// server. Another size on restart makes the table anew, with the old one's names.
    #[arg(long, default_value_t = lb_common::MAX_DNS_NAMES, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_dns_names: u32,

    /// Where the daemon records its state for `lb status` (default: under /run/lb, named after the pin path).
    #[arg(long, value_name = "FILE")]
    pub state_file: Option<PathBuf>,

    /// Log level (error, warn, info, debug, trace) or a tracing filter.
    #[arg(long, default_value = "info", env = "LB_LOG")]
    pub log_level: String,

    #[command(flatten)]
    pub http: HttpArgs,

    #[command(flatten)]
    pub marathon: MarathonArgs,

    #[command(flatten)]
    pub dns: crate::dns::DnsArgs,

    /// Prometheus metrics and /healthz listen address (loopback unless you say otherwise).
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub metrics: SocketAddr,
}

/// Following Marathon, with marathon-lb's flags where marathon-lb has them.
#[derive(Debug, Args)]
pub struct MarathonArgs {
    /// Marathon URL (repeatable: tried in order, failing over on errors), e.g. http://master.mesos:8080.
    #[arg(long = "marathon", value_name = "URL")]
    pub urls: Vec<String>,

    /// Basic auth `user:password` for Marathon. Prefer --marathon-auth-file: arguments are visible in ps.
    #[arg(long, value_name = "USER:PASS", conflicts_with = "marathon_auth_file")]
    pub marathon_auth: Option<String>,

    /// File whose first line is `user:password`.
    #[arg(long, value_name = "FILE")]
    pub marathon_auth_file: Option<PathBuf>,

    /// DC/OS token, sent as `Authorization: token=...`.
    #[arg(long, value_name = "TOKEN", conflicts_with_all = ["marathon_token_file", "marathon_auth", "marathon_auth_file"])]
    pub marathon_token: Option<String>,

    /// File holding the DC/OS token.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["marathon_auth", "marathon_auth_file"])]
    pub marathon_token_file: Option<PathBuf>,

    /// PEM file of CA certificates to trust for Marathon's TLS (verification is always on).
    #[arg(long, value_name = "FILE")]
    pub marathon_ca_cert: Option<PathBuf>,

    /// HAPROXY_GROUP to serve (repeatable); `*` serves every app, grouped or not.
    #[arg(long = "group", default_value = "external")]
    pub groups: Vec<String>,

    /// Only tasks passing their Marathon health checks get new flows (apps without checks: all tasks).
    #[arg(long)]
    pub health_check: bool,

    /// Only ports labelled HAPROXY_{n}_ENABLED=true are served.
    #[arg(long)]
    pub strict_mode: bool,

    /// Where a task's address comes from, in order (repeatable): `netinfo` (the task's own IP,
    /// e.g. Calico) and `host` (the agent address and host port), as Mesos-DNS's IPSources.
    #[arg(long = "ip-source", default_values = ["netinfo", "host"])]
    pub ip_sources: Vec<String>,

    /// Lowest service port made up for IP-per-task apps that Marathon gave none (marathon-lb's
    /// flag and rule, so both pick the same ports); 0 turns the assignment off.
    #[arg(long, default_value_t = 10050)]
    pub min_serv_port_ip_per_task: u16,

    /// Highest service port made up for IP-per-task apps; 0 turns the assignment off.
    #[arg(long, default_value_t = 10100)]
    pub max_serv_port_ip_per_task: u16,

    /// Full re-read of Marathon even without events, seconds.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub resync_interval: u64,

    /// An event stream silent this long (seconds) is dead and is reconnected.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub event_timeout: u64,
}

impl MarathonArgs {
    /// The Marathon feed's configuration, every flag checked (credentials never in errors).
    pub fn feed_config(&self) -> Result<FeedConfig> {
        Ok(FeedConfig {
            controller: controller_config(self)?,
            translate: translate_options(self)?,
            dns: None,
        })
    }
}

/// The HTTP front end: marathon-lb's virtual hosts (`HAPROXY_{n}_VHOST`) on :80 and :443.
#[derive(Debug, Args)]
pub struct HttpArgs {
    /// Where HTTP virtual hosts are served, e.g. `*:80` or `10.0.0.5:8080`. Default: `*:80`,
    /// opened once a served app has a HAPROXY_{n}_VHOST.
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_listen)]
    pub http_listen: Option<SocketAddr>,

    /// Where HTTPS virtual hosts are served (TLS terminated here, backends get HTTP). Default:
    /// `*:443`, opened once a served app has a HAPROXY_{n}_VHOST.
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_listen)]
    pub https_listen: Option<SocketAddr>,

    /// PEM files holding a certificate chain and its key (comma-separated or repeated, as
    /// marathon-lb's flag), chosen by SNI, the first by default. Apps add theirs with
    /// HAPROXY_{n}_SSL_CERT. Without any, a self-signed certificate is generated at start.
    #[arg(long, value_name = "FILE[,FILE...]", value_delimiter = ',')]
    pub ssl_certs: Vec<PathBuf>,

    /// Relay upgraded connections (WebSocket and the like) through the daemon's buffers
    /// instead of moving their bytes socket to socket in the kernel with splice(2).
    #[arg(long, conflicts_with = "no_vhost")]
    pub no_splice: bool,

    /// No HTTP front end: VHOST labels are only reported and their ports balanced at L4.
    #[arg(long, conflicts_with_all = ["http_listen", "https_listen", "ssl_certs"])]
    pub no_vhost: bool,
}

impl HttpArgs {
    pub fn front_config(&self) -> FrontConfig {
        FrontConfig {
            http_listen: self.http_listen,
            https_listen: self.https_listen,
            ssl_certs: self.ssl_certs.clone(),
            no_splice: self.no_splice,
        }
    }
}

/// A listen address: `ADDR:PORT`, with `*` (or nothing) for every IPv4 address, as HAProxy's `bind`.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not ADDR:PORT"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{port:?} is not a port"))?;
    let ip = match host {
        "" | "*" => std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        h => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| format!("{h:?} is not an IP address"))?,
    };
    Ok(SocketAddr::new(ip, port))
}

fn controller_config(args: &MarathonArgs) -> Result<ControllerConfig> {
    let mut urls = Vec::new();
    for u in &args.urls {
        let url = reqwest::Url::parse(u)
            .map_err(|e| anyhow::anyhow!("--marathon {}: {e}", redact_str(u)))?;
        if !matches!(url.scheme(), "http" | "https") {
            bail!(
                "--marathon {}: only http and https URLs",
                crate::marathon::client::redact_url(&url)
            );
        }
        urls.push(url);
    }
    let auth = if let Some(a) = &args.marathon_auth {
        Auth::basic(a).context("--marathon-auth")?
    } else if let Some(f) = &args.marathon_auth_file {
        Auth::basic_from_file(f).context("--marathon-auth-file")?
    } else if let Some(t) = &args.marathon_token {
        Auth::token(t.clone())
    } else if let Some(f) = &args.marathon_token_file {
        Auth::token_from_file(f).context("--marathon-token-file")?
    } else {
        Auth::None
    };
    Ok(ControllerConfig {
        client: ClientConfig {
            urls,
            auth,
            ca_cert: args.marathon_ca_cert.clone(),
            ..ClientConfig::default()
        },
        events: EventStreamConfig {
            idle_timeout: Duration::from_secs(args.event_timeout.max(1)),
            ..EventStreamConfig::default()
        },
        resync_interval: Duration::from_secs(args.resync_interval.max(1)),
        ..ControllerConfig::default()
    })
}

/// Hides `user:pass@` in a URL that did not even parse.
fn redact_str(s: &str) -> String {
    match (s.find("://"), s.rfind('@')) {
        (Some(i), Some(j)) if j > i => format!("{}://<redacted>@{}", &s[..i], &s[j + 1..]),
        _ => s.to_owned(),
    }
}

fn translate_options(args: &MarathonArgs) -> Result<TranslateOptions> {
    let ip_sources = args
        .ip_sources
        .iter()
        .map(|s| {
            s.parse::<IpSource>()
                .map_err(|e| anyhow::anyhow!("--ip-source {s:?}: {e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let (min, max) = (
        args.min_serv_port_ip_per_task,
        args.max_serv_port_ip_per_task,
    );
    let ip_per_task_ports = match (min, max) {
        (0, _) | (_, 0) => None,
        (min, max) if min <= max => Some(PortRange { min, max }),
        _ => bail!("--min-serv-port-ip-per-task {min} is above --max-serv-port-ip-per-task {max}"),
    };
    Ok(TranslateOptions {
        groups: args.groups.clone(),
        health_check: args.health_check,
        strict_mode: args.strict_mode,
        ip_sources,
        ip_per_task_ports,
        allow: Vec::new(),
        vhosts: true,
    })
}

fn parse_cidr(s: &str) -> Result<Cidr, String> {
    s.parse()
}

pub fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?} is not MIN-MAX"))?;
    let a: u16 = a
        .trim()
        .parse()
        .map_err(|_| format!("{a:?} is not a port"))?;
    let b: u16 = b
        .trim()
        .parse()
        .map_err(|_| format!("{b:?} is not a port"))?;
    if a == 0 || a > b {
        return Err(format!("{s:?}: need 1 <= MIN <= MAX <= 65535"));
    }
    Ok((a, b))
}

/// `/run/lb/<pin path with / as _>.json`: one state file per pin path, found by `lb status`.
pub fn default_state_file(pin_path: &std::path::Path) -> PathBuf {
    let name = pin_path
        .to_string_lossy()
        .trim_matches('/')
        .replace('/', "_");
    PathBuf::from("/run/lb").join(format!("{name}.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges() {
        assert_eq!(parse_port_range("1024-32767"), Ok((1024, 32767)));
        assert!(parse_port_range("0-10").is_err());
        assert!(parse_port_range("10-9").is_err());
        assert!(parse_port_range("10").is_err());
        assert!(parse_port_range("1-70000").is_err());
    }

    #[test]
    fn listen_addresses_take_haproxys_star() {
        assert_eq!(parse_listen("*:80"), Ok("0.0.0.0:80".parse().unwrap()));
        assert_eq!(parse_listen(":8080"), Ok("0.0.0.0:8080".parse().unwrap()));
        assert_eq!(
            parse_listen("10.0.0.5:443"),
            Ok("10.0.0.5:443".parse().unwrap())
        );
        assert_eq!(parse_listen("[::1]:80"), Ok("[::1]:80".parse().unwrap()));
        assert!(parse_listen("80").is_err());
        assert!(parse_listen("*:http").is_err());
        assert!(parse_listen("host:80").is_err());
    }

    #[test]
    fn ssl_certs_take_marathon_lbs_comma_list() {
        use clap::Parser as _;
        let cli = Cli::try_parse_from([
            "lb",
            "run",
            "--iface",
            "eth0",
            "--marathon",
            "http://m:8080",
            "--ssl-certs",
            "/a.pem,/b.pem",
            "--ssl-certs",
            "/c.pem",
        ])
        .expect("parses");
        let Command::Run(args) = cli.command else {
            panic!("run")
        };
        assert_eq!(
            args.http.ssl_certs,
            [PathBuf::from("/a.pem"), "/b.pem".into(), "/c.pem".into()]
        );
        assert!(
            Cli::try_parse_from([
                "lb",
                "run",
                "--iface",
                "e",
                "--no-vhost",
                "--http-listen",
                "*:80"
            ])
            .is_err()
        );
    }

    #[test]
    fn redirect_peer_ifaces_need_redirect_peer() {
        use clap::Parser as _;
        let base = ["lb", "run", "--iface", "eth0", "--config", "f"];
        let with = |extra: &[&str]| Cli::try_parse_from(base.iter().chain(extra));
        let e = with(&["--redirect-peer-iface", "cali*"])
            .expect_err("refused without --redirect-peer")
            .to_string();
        assert!(e.contains("--redirect-peer"), "{e}");
        let cli = with(&[
            "--redirect-peer",
            "--redirect-peer-iface",
            "cali*",
            "--redirect-peer-iface",
            "tap*",
        ])
        .expect("parses");
        let Command::Run(args) = cli.command else {
            panic!("run")
        };
        assert!(args.redirect_peer);
        assert_eq!(args.redirect_peer_ifaces, ["cali*", "tap*"]);
    }

    #[test]
    fn state_file_follows_pin_path() {
        assert_eq!(
            default_state_file("/sys/fs/bpf/lb".as_ref()),
            PathBuf::from("/run/lb/sys_fs_bpf_lb.json")
        );
    }

    #[test]
    fn nonsense_numbers_are_refused_with_the_flag_named() {
        use clap::Parser as _;
        for (flag, value) in [
            ("--tcp-timeout", "0"),
            ("--udp-timeout", "-1"),
            ("--max-flows", "0"),
            ("--max-dns-names", "0"),
            ("--nat-port-range", "9-1"),
        ] {
            let arg = format!("{flag}={value}");
            let e = Cli::try_parse_from(["lb", "run", "--iface", "eth0", "--config", "f", &arg])
                .expect_err("refused")
                .to_string();
            assert!(e.contains(flag), "{flag} {value}: {e}");
        }
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn unparseable_urls_lose_their_credentials_in_errors() {
        assert_eq!(
            redact_str("http://u:secret@host:8080/x"),
            "http://<redacted>@host:8080/x"
        );
        assert_eq!(redact_str("http://host:8080"), "http://host:8080");
        let args = MarathonArgs {
            urls: vec!["http://u:secret@bad host".into()],
            marathon_auth: None,
            marathon_auth_file: None,
            marathon_token: None,
            marathon_token_file: None,
            marathon_ca_cert: None,
            groups: vec!["external".into()],
            health_check: false,
            strict_mode: false,
            ip_sources: vec!["netinfo".into()],
            min_serv_port_ip_per_task: 10050,
            max_serv_port_ip_per_task: 10100,
            resync_interval: 300,
            event_timeout: 60,
        };
        let e = controller_config(&args).unwrap_err().to_string();
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn bad_ip_source_is_named() {
        let args = MarathonArgs {
            urls: vec![],
            marathon_auth: None,
            marathon_auth_file: None,
            marathon_token: None,
            marathon_token_file: None,
            marathon_ca_cert: None,
            groups: vec![],
            health_check: false,
            strict_mode: false,
            ip_sources: vec!["dns".into()],
            min_serv_port_ip_per_task: 10050,
            max_serv_port_ip_per_task: 10100,
            resync_interval: 300,
            event_timeout: 60,
        };
        let e = translate_options(&args).unwrap_err().to_string();
        assert!(e.contains("dns"), "{e}");
        let args = MarathonArgs {
            ip_sources: vec!["netinfo".into()],
            min_serv_port_ip_per_task: 10100,
            max_serv_port_ip_per_task: 10050,
            ..args
        };
        let e = translate_options(&args).unwrap_err().to_string();
        assert!(e.contains("10100") && e.contains("max-serv-port"), "{e}");
    }
}
