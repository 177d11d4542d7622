//! `lb run`: load (or adopt) the data plane, attach it, then keep the maps in step with the
//! desired services and the agent's interfaces until SIGTERM/SIGINT, leaving it all running.
//!
//! Tasks: the Marathon feed (reads and translates Marathon, sends `Update`s), the netlink
//! watchers (links and addresses; routes and neighbours), the servers (`listeners`: metrics,
//! DNS, the HTTP front end), the observer (state file and metrics, from what this task sends
//! it), and this one, which owns the data plane and reacts to each of them in
//! `Daemon::serve`: applies updates, re-attaches, invalidates cached routes, and every
//! `SWEEP_EVERY` sweeps the flow table and hands the state to the observer.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::Ebpf;
use lb_common::{CFG_F_PRESERVE_CLIENT_IP, Config};
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    sync::{mpsc, watch},
    time::{Interval, MissedTickBehavior, interval, sleep, sleep_until},
};
use tracing::{debug, error, info, warn};

use crate::{
    cli::{RunArgs, default_state_file},
    config,
    dataplane::{
        Dataplane,
        attach::Attacher,
        fast_dns::{self, FastRecords},
        flows::{self, Sweeper},
        ifaces,
        loader::{Capacities, FastDns},
        monotonic_ns,
        pins::PinLayout,
    },
    dns::zone::Zone,
    http::routes::Routes,
    marathon::{
        controller::SyncState,
        feed::{self, FeedConfig, Update},
    },
    observe::{
        http::Health,
        metrics::Metrics,
        observer::{Observation, Observer},
        state::{DaemonState, SyncView, unix, unix_now},
    },
    services::{Cidr, Desired},
};

mod listeners;

use listeners::Listeners;

const SWEEP_EVERY: Duration = Duration::from_secs(2);
/// A large state file is written at most this often while Marathon changes keep coming.
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// States of up to this many services are written at every change, by the daemon itself
/// (1,000 services: 0.6 MB, about 3 ms).
const SMALL_STATE: usize = 1_000;

pub struct Daemon {
    dp: Dataplane,
    attacher: Attacher,
    cfg: Config,
    desired: Desired,
    state: DaemonState,
    state_file: PathBuf,
    sweeper: Sweeper,
    marathon: Option<SyncState>,
    metrics: Arc<Metrics>,
    health: watch::Sender<Health>,
    /// How old the last successful sync may be for /healthz to stay 200.
    sync_max_age: Duration,
    last_saved: Option<Instant>,
    /// Flow table entries at the last sweep.
    flow_entries: Option<u64>,
    /// The DNS fast path's records, when it is on.
    fast_records: Option<FastRecords>,
    /// Writes the state file and refreshes /metrics off the daemon's task.
    observer: Option<Observer>,
    /// A state file write put off by `save_state_soon`, and when it is due.
    save_due: Option<tokio::time::Instant>,
    /// The HTTP routes of the last update, for the HTTP front end (when it runs).
    routes: watch::Sender<Arc<Routes>>,
    /// The DNS server's zone (None until the first Marathon state), and where it listens.
    dns_zone: watch::Sender<Option<Arc<Zone>>>,
    dns: Option<(Vec<SocketAddr>, String)>,
    /// `--allow`: the ranges of static services that set none (SIGHUP reloads use it).
    allow: Vec<Cidr>,
}

/// Where the services come from; checked before anything touches the kernel.
enum Source {
    /// A static file, applied at start and on SIGHUP.
    File(Desired),
    Marathon(Box<FeedConfig>),
}

impl Source {
    fn from_args(args: &RunArgs) -> Result<Self> {
        match (&args.config, args.marathon.urls.is_empty()) {
            (None, true) => {
                bail!("nothing to serve: give --config FILE (static services) or --marathon URL")
            }
            (Some(_), false) => {
                bail!("--config and --marathon are exclusive: services come from one source")
            }
            (Some(path), true) => Ok(Self::File(load_config_file(path, &args.allow)?)),
            (None, false) => {
                let mut feed = args.marathon.feed_config()?;
                feed.translate.allow = Cidr::normalize(args.allow.clone());
                feed.translate.vhosts = !args.http.no_vhost;
                Ok(Self::Marathon(Box::new(feed)))
            }
        }
    }
}

/// What the daemon reacts to, each from its own task or the kernel.
struct Inputs {
    updates: mpsc::Receiver<Update>,
    sync: watch::Receiver<SyncState>,
    links: mpsc::Receiver<()>,
    routes: mpsc::Receiver<()>,
    ticker: Interval,
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Inputs {
    /// Starts the Marathon feed (if that is the source) and the watchers.
    fn start(source: &Source) -> Result<Self> {
        let (update_tx, updates) = mpsc::channel(4);
        let (sync_tx, sync) = watch::channel(SyncState::default());
        if let Source::Marathon(cfg) = source {
            tokio::spawn(feed::run((**cfg).clone(), update_tx, sync_tx));
        }
        let mut ticker = interval(SWEEP_EVERY);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let net = ifaces::watch().context("subscribing to netlink notifications")?;
        Ok(Self {
            updates,
            sync,
            links: net.links,
            routes: net.routes,
            ticker,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

pub fn data_plane_config(args: &RunArgs) -> Config {
    Config {
        flags: if args.preserve_client_ip {
            CFG_F_PRESERVE_CLIENT_IP
        } else {
            0
        },
        nat_port_min: args.nat_port_range.0,
        nat_port_max: args.nat_port_range.1,
        tcp_timeout_ns: args.tcp_timeout.saturating_mul(1_000_000_000),
        tcp_closing_timeout_ns: args.tcp_closing_timeout.saturating_mul(1_000_000_000),
        tcp_closed_timeout_ns: args.tcp_closed_timeout.saturating_mul(1_000_000_000),
        tcp_time_wait_timeout_ns: args.tcp_time_wait_timeout.saturating_mul(1_000_000_000),
        udp_timeout_ns: args.udp_timeout.saturating_mul(1_000_000_000),
        ..Config::default()
    }
}

fn capacities(args: &RunArgs) -> Capacities {
    Capacities {
        services: args.max_services,
        backend_slots: args
            .max_services
            .saturating_mul(16)
            .max(lb_common::MAX_BACKEND_SLOTS),
        backend_ids: args.max_backends,
        flow_entries: args.max_flows.saturating_mul(2),
        dns_names: args.max_dns_names,
    }
}

fn initial_state(args: &RunArgs, source: &Source) -> DaemonState {
    DaemonState {
        pid: std::process::id(),
        running: true,
        started_at: unix_now(),
        hook: format!("{:?}", args.hook).to_lowercase(),
        mode: if args.preserve_client_ip {
            "dnat"
        } else {
            "full-nat"
        }
        .into(),
        flow_capacity: args.max_flows as u64,
        sync: SyncView {
            source: match source {
                Source::File(_) => "config",
                Source::Marathon(_) => "marathon",
            }
            .into(),
            ..Default::default()
        },
        ..Default::default()
    }
}

impl Daemon {
    /// Loads or adopts the data plane and attaches it; nothing of the services yet.
    fn start(args: &RunArgs, source: &Source, fast_dns: Option<FastDns>) -> Result<Self> {
        let layout = PinLayout::new(&args.pin.pin_path);
        layout.ensure()?;
        let adopting = layout.exists();
        let mut dp = Dataplane::load_with_dns(capacities(args), Some(&layout), fast_dns)?;
        // Names an earlier daemon left for the fast path stay until the first zone replaces
        // them; with the fast path off they go now.
        let mut fast_records = FastRecords::adopt(&dp.maps);
        if fast_dns.is_none() {
            fast_records.sync(&mut dp.maps, &Zone::default())?;
        }
        if let Some(f) = fast_dns {
            info!(addr = ?f.addr, port = f.port, "DNS fast path: A queries answered by the XDP program");
        }
        forward_bpf_logs(&mut dp.ebpf);
        let cfg = data_plane_config(args);
        dp.maps.write_config(&cfg)?;
        dp.maps.write_local_addrs(&ifaces::ipv4_addresses())?;
        if adopting {
            info!(services = dp.planner.services.len(), pin_path = %layout.root.display(), "adopted pinned data plane");
        }
        let mut attacher = Attacher {
            layout,
            hook: args.hook.into(),
            patterns: args.ifaces.clone(),
            redirect_patterns: args.xdp_redirect.clone(),
            redirect_peer: args.redirect_peer,
            redirect_peer_patterns: args.redirect_peer_ifaces.clone(),
            attached: Default::default(),
        };
        attacher.reconcile(&mut dp)?;
        if attacher.attached.is_empty() {
            warn!(patterns = ?args.ifaces, "no interface matches yet; attaching as they appear");
        }
        let sync_max_age = match source {
            // Marathon is re-read at least every resync interval: two missed means trouble.
            Source::Marathon(_) => {
                Duration::from_secs(args.marathon.resync_interval.max(1) * 2 + 30)
            }
            Source::File(_) => Duration::MAX,
        };
        let state_file = args
            .state_file
            .clone()
            .unwrap_or_else(|| default_state_file(&args.pin.pin_path));
        let metrics = Arc::new(Metrics::new());
        let observer = Observer::spawn(
            attacher.layout.clone(),
            state_file.clone(),
            Arc::clone(&metrics),
        )?;
        Ok(Self {
            dp,
            attacher,
            cfg,
            desired: Desired::default(),
            state: initial_state(args, source),
            state_file,
            sweeper: Sweeper::default(),
            marathon: None,
            metrics,
            health: watch::channel(Health {
                attached: false,
                last_sync_ok_unix: None,
                last_error: None,
                sync_max_age,
            })
            .0,
            sync_max_age,
            last_saved: None,
            flow_entries: None,
            observer: Some(observer),
            fast_records: fast_dns.map(|_| fast_records),
            save_due: None,
            routes: watch::channel(Arc::default()).0,
            dns_zone: watch::channel(None).0,
            dns: None,
            allow: args.allow.clone(),
        })
    }

    /// Applies `desired`; true when any service changed.
    fn apply(&mut self, desired: Desired) -> Result<bool> {
        let report = self.dp.apply(&desired)?;
        let changed = report.added + report.changed + report.removed > 0;
        if changed {
            info!(
                added = report.added,
                changed = report.changed,
                removed = report.removed,
                unchanged = report.unchanged,
                "services applied"
            );
        }
        self.desired = desired;
        Ok(changed)
    }

    /// A whole state from the static file: applied, recorded, saved.
    fn apply_file(&mut self, desired: Desired) -> Result<()> {
        self.apply(desired)?;
        self.state.sync.last_full_sync = Some(unix_now());
        self.save_state();
        Ok(())
    }

    /// Until the first update arrives, adopted maps keep serving.
    async fn serve(mut self, mut inputs: Inputs, config_file: Option<PathBuf>) {
        self.save_state();
        info!("running; SIGTERM or SIGINT stops the daemon and leaves the data plane forwarding");
        loop {
            tokio::select! {
                Some(()) = inputs.links.recv() => {
                    // Calico adds several links and addresses at once: let the burst settle.
                    sleep(Duration::from_millis(50)).await;
                    while inputs.links.try_recv().is_ok() {}
                    self.or_record(|d| d.links_changed());
                }
                Some(()) = inputs.routes.recv() => {
                    // At once, and before anything else: until then flows may use a stale route.
                    while inputs.routes.try_recv().is_ok() {}
                    self.or_record(|d| d.dp.maps.bump_route_gen());
                }
                _ = inputs.ticker.tick() => self.or_record(Self::sweep),
                () = sleep_until(self.save_due.unwrap_or_else(tokio::time::Instant::now)), if self.save_due.is_some() => {
                    self.save_state();
                }
                _ = inputs.hup.recv() => self.reload(config_file.as_deref()),
                Some(update) = inputs.updates.recv() => self.on_update(update),
                Ok(()) = inputs.sync.changed() => {
                    let s = inputs.sync.borrow_and_update().clone();
                    self.on_sync(s);
                }
                _ = inputs.term.recv() => break,
                _ = inputs.int.recv() => break,
            }
        }
        self.state.running = false;
        // The observer's last write first, so that this one is the last.
        if let Some(observer) = self.observer.take() {
            observer.finish().await;
        }
        self.save_state();
        info!("stopped; the data plane keeps forwarding (lb detach removes it)");
    }

    fn or_record(&mut self, f: impl FnOnce(&mut Self) -> Result<()>) {
        if let Err(e) = f(self) {
            self.record_error(&e);
        }
    }

    /// SIGHUP: the static file again. A file that does not load changes nothing.
    fn reload(&mut self, path: Option<&Path>) {
        let Some(path) = path else { return };
        match load_config_file(path, &self.allow) {
            Ok(desired) => {
                info!(file = %path.display(), "reloading services");
                self.or_record(|d| d.apply_file(desired));
            }
            Err(e) => {
                self.record_error(&e.context("reload refused; keeping the services in force"))
            }
        }
    }

    fn on_update(&mut self, mut u: Update) {
        // Names first: DNS does not wait for the maps.
        if let Some(zone) = u.zone.take() {
            if let Some(fast) = &mut self.fast_records {
                let before = fast.left_out();
                match fast.sync(&mut self.dp.maps, &zone) {
                    Ok((written, removed)) => {
                        if written + removed > 0 {
                            debug!(written, removed, "DNS fast path records");
                        }
                        let left_out = fast.left_out();
                        if left_out != before && left_out > 0 {
                            warn!(
                                left_out,
                                "LB_DNS_A is full: these names are answered by the userspace \
                                 server only (raise --max-dns-names)"
                            );
                        } else if left_out != before {
                            info!("LB_DNS_A holds every name of the zone again");
                        }
                    }
                    Err(e) => self.record_error(&e),
                }
            }
            self.dns_zone.send_replace(Some(zone));
        }
        // Independent of the maps: the front end routes by name, whatever the kernel says.
        self.routes.send_if_modified(|r| {
            let changed = !Arc::ptr_eq(r, &u.routes);
            *r = u.routes;
            changed
        });
        match self.apply(u.desired) {
            Ok(_) => {
                self.state.sync.last_full_sync = Some(unix(u.fetched_at));
                self.state.sync.skipped = u.skipped;
                if let Some(received) = u.event_received {
                    let took = received.elapsed();
                    self.metrics.observe_event_to_map(took);
                    debug!(ms = took.as_secs_f64() * 1e3, "event reached the maps");
                }
                self.save_state_soon();
            }
            Err(e) => self.record_error(&e),
        }
    }

    fn on_sync(&mut self, s: SyncState) {
        self.state.sync.last_event = s.last_event.map(unix);
        if s.last_error_at.map(unix) > self.state.sync.last_error_at {
            self.state.sync.last_error = s.last_error.clone();
            self.state.sync.last_error_at = s.last_error_at.map(unix);
        }
        self.marathon = Some(s);
    }

    /// Interfaces or addresses changed: re-read them, attach new interfaces, refresh NAT sources.
    fn links_changed(&mut self) -> Result<()> {
        self.dp.maps.write_local_addrs(&ifaces::ipv4_addresses())?;
        self.attacher.reconcile(&mut self.dp)?;
        self.dp.routes_changed();
        let desired = self.desired.clone();
        self.apply(desired)?;
        self.save_state();
        Ok(())
    }

    fn sweep(&mut self) -> Result<()> {
        let stats = flows::sum_stats(&self.dp.maps.stats);
        let (report, backends_in_use, services_in_use) =
            self.sweeper
                .sweep(&mut self.dp.maps.flows, &stats, &self.cfg, monotonic_ns());
        self.dp.tick(&backends_in_use, &services_in_use)?;
        self.dp.count_live(&report.live)?;
        self.state.flow_entries = report.entries;
        self.state.flow_evictions = self.sweeper.evictions;
        self.state.live_flows = report.live;
        self.flow_entries = Some(report.entries);
        self.save_state();
        Ok(())
    }

    /// The state file (names, draining backends for `lb status`) at once while it is small;
    /// a large one when it was last written more than `SAVE_EVERY` ago, else when that much
    /// has passed: with 10,000 services it is 6 MB, and 100 Marathon changes a second must not
    /// rewrite it 100 times.
    fn save_state_soon(&mut self) {
        match self.last_saved {
            Some(t) if t.elapsed() < SAVE_EVERY && !self.state_is_small() => {
                let due = tokio::time::Instant::from_std(t + SAVE_EVERY);
                self.save_due = Some(self.save_due.map_or(due, |d| d.min(due)));
            }
            _ => self.save_state(),
        }
    }

    fn state_is_small(&self) -> bool {
        self.dp.planner.services.len() <= SMALL_STATE
    }

    /// The state as it is now to the observer (which writes the state file and refreshes
    /// /metrics), or written here once the observer is gone; /healthz at once.
    fn save_state(&mut self) {
        self.save_due = None;
        self.last_saved = Some(Instant::now());
        self.state.updated_at = unix_now();
        self.state.interfaces = self.attacher.attached.clone();
        self.state.services = self.dp.planner.services.values().cloned().collect();
        self.state.draining = self.dp.planner.draining.values().cloned().collect();
        if let Some(fast) = &self.fast_records {
            let dns = &self.metrics.dns;
            dns.fast_answers(fast_dns::answered(&self.dp.maps));
            dns.fast_left_out(fast.left_out());
        }
        self.state.dns = self
            .dns
            .as_ref()
            .map(|(listen, domain)| self.metrics.dns.view(listen, domain));
        self.health.send_replace(Health {
            attached: !self.attacher.attached.is_empty(),
            last_sync_ok_unix: self.state.sync.last_full_sync,
            last_error: self.state.sync.last_error.clone(),
            sync_max_age: self.sync_max_age,
        });
        // A small state is written here, so that `lb status` shows the names of services as
        // soon as the maps have them; a large one by the observer.
        let write_here = self.state_is_small() || self.observer.is_none();
        if write_here && let Err(e) = self.state.write(&self.state_file) {
            warn!(file = %self.state_file.display(), "cannot write state file: {e}");
        }
        if let Some(observer) = &self.observer {
            // The lists are the larger part and are made afresh each time: moved, not copied.
            let services = std::mem::take(&mut self.state.services);
            let draining = std::mem::take(&mut self.state.draining);
            observer.send(Observation {
                state: DaemonState {
                    services,
                    draining,
                    ..self.state.clone()
                },
                write_state_file: !write_here,
                flow_entries: self.flow_entries,
                marathon: self.marathon.clone(),
                interfaces_attached: self.attacher.attached.len(),
            });
        }
    }

    fn record_error(&mut self, e: &anyhow::Error) {
        error!("{e:#}");
        self.state.sync.last_error = Some(format!("{e:#}"));
        self.state.sync.last_error_at = Some(unix_now());
    }
}

/// The data plane's own messages (aya-log, rare failure paths only) go into our log.
fn forward_bpf_logs(ebpf: &mut Ebpf) {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(l) => l,
        Err(e) => return warn!("data-plane log messages unavailable: {e}"),
    };
    // SAFETY: the AsyncFd owns the logger, so the ring buffer's fd lives as long as the registration.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => return warn!("data-plane log messages unavailable: {e}"),
    };
    tokio::spawn(async move {
        while let Ok(mut guard) = fd.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}

/// The static file's services, with `--allow` for those that allow no ranges of their own.
fn load_config_file(path: &Path, allow: &[Cidr]) -> Result<Desired> {
    Ok(config::load(path)?.allow_by_default(allow))
}

pub async fn run(args: RunArgs) -> Result<()> {
    // Everything the operator typed is checked, and every port bound, before the kernel is
    // touched: bad input or a port in use applies nothing.
    let mut source = Source::from_args(&args)?;
    let listeners = Listeners::bind(&args, &mut source).await?;
    let mut d = Daemon::start(&args, &source, listeners.fast_dns(&args))?;
    listeners.serve(&mut d, &args)?;
    let inputs = Inputs::start(&source)?;
    if let Source::File(desired) = source {
        d.apply_file(desired)?;
    }
    d.serve(inputs, args.config).await;
    Ok(())
}
