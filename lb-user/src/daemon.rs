//! `lb run`: load (or adopt) the data plane, attach it, then keep the maps in step with the
//! desired services and the agent's interfaces until SIGTERM/SIGINT, leaving it all running.
use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context as _, Result, bail};
use aya::Ebpf;
use lb_common::{CFG_F_PRESERVE_CLIENT_IP, Config};
use tokio::sync::{mpsc, watch};
use tokio::{
    signal::unix::{SignalKind, signal},
    time::{MissedTickBehavior, interval, sleep},
};
use tracing::{debug, error, info, warn};

use crate::{
    cli::{RunArgs, default_state_file},
    config,
    dataplane::{
        Dataplane,
        attach::Attacher,
        flows::{self, Sweeper},
        ifaces,
        loader::Capacities,
        monotonic_ns,
        pins::PinLayout,
    },
    marathon::{
        controller::{self, Snapshot, SyncState, Trigger},
        follow::{self, Follower},
    },
    observe::{
        metrics::{self, Health, MarathonSample, Metrics},
        state::{DaemonState, SyncView, unix, unix_now},
        status,
    },
    services::Desired,
};

const SWEEP_EVERY: Duration = Duration::from_secs(2);

pub struct Daemon {
    pub dp: Dataplane,
    pub attacher: Attacher,
    pub cfg: Config,
    pub desired: Desired,
    pub state: DaemonState,
    pub state_file: PathBuf,
    pub sweeper: Sweeper,
    pub marathon: Option<SyncState>,
    pub metrics: Arc<Metrics>,
    pub health: watch::Sender<Health>,
    /// How old the last successful sync may be for /healthz to stay 200.
    pub sync_max_age: Duration,
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

impl Daemon {
    /// Loads or adopts the data plane and attaches it; nothing of the services yet.
    pub fn start(args: &RunArgs) -> Result<Self> {
        let layout = PinLayout::new(&args.pin.pin_path);
        layout.ensure()?;
        let adopting = layout.exists();
        let caps = Capacities {
            services: args.max_services,
            backend_slots: args
                .max_services
                .saturating_mul(16)
                .max(lb_common::MAX_BACKEND_SLOTS),
            backend_ids: args.max_backends,
            flow_entries: args.max_flows.saturating_mul(2),
        };
        let mut dp = Dataplane::load(caps, Some(&layout))?;
        forward_bpf_logs(&mut dp.ebpf);
        let cfg = data_plane_config(args);
        dp.maps.write_config(&cfg)?;
        dp.maps.write_local_addrs(&ifaces::ipv4_addresses())?;
        if adopting {
            info!(services = dp.planner.services.len(), pin_path = %layout.root.display(), "adopted pinned data plane");
        }
        let mut attacher = Attacher {
            layout,
            hook: args.hook,
            patterns: args.ifaces.clone(),
            redirect_patterns: args.xdp_redirect.clone(),
            attached: Default::default(),
        };
        attacher.reconcile(&mut dp)?;
        if attacher.attached.is_empty() {
            warn!(patterns = ?args.ifaces, "no interface matches yet; attaching as they appear");
        }
        let state_file = args
            .state_file
            .clone()
            .unwrap_or_else(|| default_state_file(&args.pin.pin_path));
        let state = DaemonState {
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
            ..Default::default()
        };
        Ok(Self {
            dp,
            attacher,
            cfg,
            desired: Desired::default(),
            state,
            state_file,
            sweeper: Sweeper::default(),
            marathon: None,
            metrics: Arc::new(Metrics::new()),
            health: watch::channel(Health {
                attached: false,
                last_sync_ok_unix: None,
                last_error: None,
                sync_max_age: Duration::MAX,
            })
            .0,
            sync_max_age: Duration::MAX,
        })
    }

    /// Applies `desired`; true when any service changed.
    pub fn apply(&mut self, desired: Desired) -> Result<bool> {
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

    /// Interfaces or addresses changed: re-read them, attach new interfaces, refresh NAT sources.
    pub fn links_changed(&mut self) -> Result<()> {
        self.dp.maps.write_local_addrs(&ifaces::ipv4_addresses())?;
        self.attacher.reconcile(&mut self.dp)?;
        self.dp.routes_changed();
        let desired = self.desired.clone();
        self.apply(desired)?;
        self.save_state();
        Ok(())
    }

    pub fn sweep(&mut self) -> Result<()> {
        let stats = flows::sum_stats(&self.dp.maps.stats);
        let (report, backends_in_use, services_in_use) =
            self.sweeper
                .sweep(&mut self.dp.maps.flows, &stats, &self.cfg, monotonic_ns());
        self.dp.tick(&backends_in_use, &services_in_use)?;
        self.state.flow_entries = report.entries;
        self.state.flow_evictions = self.sweeper.evictions;
        self.save_state();
        self.publish(Some(report.entries))
    }

    /// Refreshes what Prometheus and /healthz see.
    pub fn publish(&mut self, flow_entries: Option<u64>) -> Result<()> {
        let view = status::status_of(
            &self.dp.maps,
            &self.attacher.layout,
            Some(self.state.clone()),
            flow_entries,
        );
        let marathon = self.marathon.as_ref().map(|m| MarathonSample {
            requests_total: m.requests_total,
            request_errors_total: m.request_errors_total,
            stream_reconnects_total: m.stream_reconnects_total,
            events_total: m.events_total,
            last_event_unix: m.last_event.map(unix),
            last_sync_unix: m.last_full_sync.map(unix),
            connected: m.connected,
        });
        self.metrics.publish(status::metrics_snapshot(
            &view,
            marathon,
            self.attacher.attached.len(),
        ));
        self.health.send_replace(Health {
            attached: !self.attacher.attached.is_empty(),
            last_sync_ok_unix: self.state.sync.last_full_sync,
            last_error: self.state.sync.last_error.clone(),
            sync_max_age: self.sync_max_age,
        });
        Ok(())
    }

    pub fn save_state(&mut self) {
        self.state.updated_at = unix_now();
        self.state.interfaces = self.attacher.attached.clone();
        self.state.services = self.dp.planner.services.values().cloned().collect();
        self.state.draining = self.dp.planner.draining.values().cloned().collect();
        if let Err(e) = self.state.write(&self.state_file) {
            warn!(file = %self.state_file.display(), "cannot write state file: {e}");
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

fn load_config_file(path: &std::path::Path) -> Result<Desired> {
    Ok(config::load(path)?)
}

pub async fn run(args: RunArgs) -> Result<()> {
    let following = !args.marathon.urls.is_empty();
    match (&args.config, following) {
        (None, false) => {
            bail!("nothing to serve: give --config FILE (static services) or --marathon URL")
        }
        (Some(_), true) => {
            bail!("--config and --marathon are exclusive: services come from one source")
        }
        _ => {}
    }
    // Validate everything the operator typed before touching the kernel: bad input applies nothing.
    let initial = match &args.config {
        Some(path) => Some(load_config_file(path)?),
        None => None,
    };
    let marathon = if following {
        Some((
            follow::controller_config(&args.marathon)?,
            follow::translate_options(&args.marathon)?,
        ))
    } else {
        None
    };
    let listener = tokio::net::TcpListener::bind(args.metrics)
        .await
        .with_context(|| format!("binding --metrics {}", args.metrics))?;
    let mut d = Daemon::start(&args)?;
    if following {
        // Marathon is re-read at least every resync interval: two missed means trouble.
        d.sync_max_age = Duration::from_secs(args.marathon.resync_interval.max(1) * 2 + 30);
    }
    info!(addr = %listener.local_addr()?, "metrics and /healthz");
    tokio::spawn(metrics::serve(
        listener,
        d.metrics.clone(),
        d.health.subscribe(),
    ));
    d.state.sync = SyncView {
        source: if following { "marathon" } else { "config" }.into(),
        ..Default::default()
    };
    if let Some(desired) = initial {
        d.apply(desired)?;
        d.state.sync.last_full_sync = Some(unix_now());
        d.save_state();
    }
    // Marathon: the controller task reads and follows it and sends whole snapshots; this loop
    // translates and applies them. Until the first one arrives, adopted maps keep serving.
    let (snap_tx, mut snapshots) = mpsc::channel::<Snapshot>(4);
    let (sync_tx, mut sync_rx) = watch::channel(SyncState::default());
    let mut follower = None;
    if let Some((ccfg, topts)) = marathon {
        follower = Some(Follower::new(topts));
        tokio::spawn(async move {
            if let Err(e) = controller::run(ccfg, snap_tx, sync_tx).await {
                error!("Marathon controller stopped: {e:#}");
            }
        });
    } else {
        drop(snap_tx);
        drop(sync_tx);
    }
    let mut links = ifaces::watch().context("watching netlink for interface changes")?;
    let mut routes = ifaces::watch_routes().context("watching netlink for route changes")?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut ticker = interval(SWEEP_EVERY);
    let mut last_saved: Option<std::time::Instant> = None;
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    d.publish(None)?;
    info!("running; SIGTERM or SIGINT stops the daemon and leaves the data plane forwarding");
    loop {
        tokio::select! {
            Some(()) = links.recv() => {
                // Calico adds several links and addresses at once: let the burst settle.
                sleep(Duration::from_millis(50)).await;
                while links.try_recv().is_ok() {}
                if let Err(e) = d.links_changed() {
                    d.record_error(&e);
                }
            }
            Some(()) = routes.recv() => {
                // At once, and before anything else: until then flows may use a stale route.
                while routes.try_recv().is_ok() {}
                if let Err(e) = d.dp.maps.bump_route_gen() {
                    d.record_error(&e);
                }
            }
            _ = ticker.tick() => {
                if let Err(e) = d.sweep() {
                    d.record_error(&e);
                }
            }
            _ = hup.recv() => {
                if let Some(path) = &args.config {
                    match load_config_file(path) {
                        Ok(desired) => {
                            info!(file = %path.display(), "reloading services");
                            if let Err(e) = d.apply(desired) {
                                d.record_error(&e);
                            } else {
                                d.state.sync.last_full_sync = Some(unix_now());
                                d.save_state();
                            }
                        }
                        Err(e) => d.record_error(&e.context("reload refused; keeping the services in force")),
                    }
                }
            }
            Some(first) = snapshots.recv() => {
                let Some(f) = follower.as_mut() else { continue };
                // Only the newest state matters: skip snapshots that queued up behind a slow
                // apply, but measure latency from the oldest event they carry.
                let mut snap = first;
                let mut event = match snap.trigger { Trigger::Event { received } => Some(received), _ => None };
                while let Ok(newer) = snapshots.try_recv() {
                    if let Trigger::Event { received } = newer.trigger {
                        event = Some(event.map_or(received, |e| e.min(received)));
                    }
                    snap = newer;
                }
                match f.desired(&snap.apps_json) {
                    Ok(desired) => match d.apply(desired) {
                        Ok(changed) => {
                            d.state.sync.last_full_sync = Some(unix(snap.fetched_at));
                            d.state.sync.skipped = f.skipped.clone();
                            if let Some(received) = event {
                                let took = received.elapsed();
                                d.metrics.observe_event_to_map(took);
                                debug!(ms = took.as_secs_f64() * 1e3, "event reached the maps");
                            }
                            // The state file (names, draining backends for `lb status`) on every
                            // change, otherwise at most once a second; metrics at the next sweep.
                            if changed || last_saved.is_none_or(|t: std::time::Instant| t.elapsed() > Duration::from_secs(1)) {
                                d.save_state();
                                last_saved = Some(std::time::Instant::now());
                            }
                        }
                        Err(e) => d.record_error(&e),
                    },
                    // Garbage from Marathon: keep serving the last good state.
                    Err(e) => d.record_error(&e.context("keeping the services in force")),
                }
            }
            Ok(()) = sync_rx.changed() => {
                let s = sync_rx.borrow_and_update().clone();
                d.state.sync.last_event = s.last_event.map(unix);
                if s.last_error_at.map(unix) > d.state.sync.last_error_at {
                    d.state.sync.last_error = s.last_error.clone();
                    d.state.sync.last_error_at = s.last_error_at.map(unix);
                }
                d.marathon = Some(s);
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    d.state.running = false;
    d.save_state();
    info!("stopped; the data plane keeps forwarding (lb detach removes it)");
    Ok(())
}
