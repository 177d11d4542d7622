//! The Marathon feed: runs the controller (which reads Marathon) and folds each of its reads
//! into the catalog, whose services are handed to the daemon as `Update`s. Skipped apps and L7-only
//! labels are reported once (not at every sync) so logs stay readable on a busy cluster.
use std::{
    collections::{BTreeSet, HashMap},
    net::{Ipv4Addr, ToSocketAddrs},
    sync::Arc,
    time::{Instant, SystemTime},
};

use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use super::{
    catalog::Catalog,
    controller::{self, AppRead, ControllerConfig, Read, Snapshot, SyncState, Trigger},
    translate::TranslateOptions,
};
use crate::{
    dns::zone::{Zone, ZoneOptions, live::LiveZone},
    http::routes::{self, Routes},
    services::Desired,
    task::AbortOnDrop,
};

/// Everything the feed needs: how to read Marathon, and marathon-lb's rules to apply.
#[derive(Debug, Clone)]
pub struct FeedConfig {
    pub controller: ControllerConfig,
    pub translate: TranslateOptions,
    /// Names to derive for the DNS server; `None` when it is off.
    pub dns: Option<ZoneOptions>,
}

/// One state of Marathon, translated.
#[derive(Debug)]
pub struct Update {
    pub desired: Desired,
    /// The HTTP virtual hosts of the same state (for the HTTP front end).
    pub routes: Arc<Routes>,
    /// Why apps, ports or tasks were left out (for `lb status`).
    pub skipped: Vec<String>,
    /// When Marathon was read.
    pub fetched_at: SystemTime,
    /// The oldest event this state answers: the daemon measures event-to-map from it.
    pub event_received: Option<Instant>,
    /// The DNS zone of the same apps, when DNS is on.
    pub zone: Option<Arc<Zone>>,
}

/// Follows Marathon until `updates` is dropped: the controller reads, this task folds each read
/// into the catalog (a full read replaces it, a single-app read changes that app's unit only)
/// and sends the services. Reads that queued up behind a slow translation are folded in, in
/// order, before one `Update` answers them all. A read Marathon answered with garbage never gets
/// here (the controller records it): the daemon keeps serving the last good state.
///
/// The translation runs on a thread of its own: a full read of a large cluster parses and
/// translates for a few hundred milliseconds, which would hold one of the runtime's two workers,
/// and the catalog's allocations then stay in one malloc arena instead of spreading over those
/// of whichever threads ran it.
pub async fn run(cfg: FeedConfig, updates: mpsc::Sender<Update>, sync: watch::Sender<SyncState>) {
    let (snap_tx, snapshots) = mpsc::channel::<Snapshot>(4);
    // Should this future be dropped, the controller stops, which closes `snapshots` and so ends
    // the translation thread too.
    let _controller = AbortOnDrop(tokio::spawn(async move {
        if let Err(e) = controller::run(cfg.controller, snap_tx, sync).await {
            error!("Marathon controller stopped: {e:#}");
        }
    }));
    let translator = Translator::new(cfg.translate, cfg.dns.as_ref());
    let _ = tokio::task::spawn_blocking(move || translate(translator, snapshots, &updates)).await;
}

/// The feed's loop, on its own thread: until either channel closes.
fn translate(
    mut translator: Translator,
    mut snapshots: mpsc::Receiver<Snapshot>,
    updates: &mpsc::Sender<Update>,
) {
    while let Some(first) = snapshots.blocking_recv() {
        let mut trigger = first.trigger;
        let mut fetched_at = first.fetched_at;
        translator.apply(first.read);
        while let Ok(newer) = snapshots.try_recv() {
            trigger = trigger.merge(newer.trigger);
            fetched_at = newer.fetched_at;
            translator.apply(newer.read);
        }
        let update = Update {
            desired: translator.desired(),
            routes: translator.routes.clone(),
            skipped: translator.skipped.clone(),
            fetched_at,
            event_received: match trigger {
                Trigger::Event { received } => Some(received),
                _ => None,
            },
            zone: translator.zone(),
        };
        if updates.blocking_send(update).is_err() {
            return;
        }
    }
}

/// Turns Marathon reads into desired services; remembers what it already reported.
pub struct Translator {
    catalog: Catalog,
    /// The DNS zone of the catalog's apps, when DNS is on.
    zone: Option<LiveZone>,
    dns: HashMap<String, Option<Ipv4Addr>>,
    reported: BTreeSet<String>,
    /// Reasons for skipped apps, ports or tasks in the last translation (for `lb status`).
    pub skipped: Vec<String>,
    /// The HTTP routes of the last translation.
    pub routes: Arc<Routes>,
}

impl Translator {
    pub fn new(opts: TranslateOptions, dns: Option<&ZoneOptions>) -> Self {
        Self {
            catalog: Catalog::new(opts),
            zone: dns.map(LiveZone::new),
            dns: HashMap::new(),
            reported: BTreeSet::new(),
            skipped: Vec::new(),
            routes: Arc::default(),
        }
    }

    /// Folds one read into the catalog (and the zone).
    pub fn apply(&mut self, read: Read) {
        let dns = &mut self.dns;
        let mut resolve = |host: &str| resolve_cached(dns, host);
        match read {
            Read::Full(body) => {
                let mut changed = self.catalog.replace(body.apps(), &mut resolve);
                if let Some(zone) = &mut self.zone {
                    // The zone is kept app by app: only the apps this read changes are built
                    // again, and those whose agents' names did not resolve last time.
                    changed.extend(zone.unresolved().map(str::to_owned));
                    for id in changed {
                        let app = self.catalog.apps().get(&id);
                        zone.set_app(&id, app, self.catalog.options(), &mut resolve);
                    }
                }
            }
            Read::Apps(apps) => {
                for AppRead { id, app } in apps {
                    self.catalog.set_app(&id, app, &mut resolve);
                    if let Some(zone) = &mut self.zone {
                        let app = self.catalog.apps().get(&id);
                        zone.set_app(&id, app, self.catalog.options(), &mut resolve);
                    }
                }
            }
        }
    }

    /// The DNS zone of the catalog's apps (every app, whatever its group), when DNS is on.
    pub fn zone(&mut self) -> Option<Arc<Zone>> {
        self.zone.as_mut().map(LiveZone::zone)
    }

    /// The services the catalog translates to (and, in `routes`, the HTTP routes); reports what is new among the skipped apps,
    /// ports and tasks and the L7-only labels.
    pub fn desired(&mut self) -> Desired {
        let t = self.catalog.translation();
        let mut now_skipped: Vec<String> = self
            .catalog
            .unreadable()
            .iter()
            .map(|e| {
                format!(
                    "app {} (#{}): unreadable: {}",
                    e.app_id.as_deref().unwrap_or("?"),
                    e.index,
                    e.error
                )
            })
            .collect();
        now_skipped.extend(t.skipped.iter().map(ToString::to_string));
        for reason in &now_skipped {
            if self.reported.insert(format!("skip:{reason}")) {
                warn!("skipped: {reason}");
            }
        }
        for u in &t.unsupported {
            let key = format!("l7:{}:{}:{}", u.app_id, u.port_index, u.labels.join(","));
            if self.reported.insert(key) {
                info!(
                    app = %u.app_id,
                    port_index = u.port_index,
                    labels = %u.labels.join(","),
                    "L7-only labels cannot be honoured by an L4 balancer; the port is balanced at L4"
                );
            }
        }
        self.skipped = now_skipped;
        let routes = routes::routes(self.catalog.apps(), &t.desired.services);
        if *self.routes != routes {
            self.routes = Arc::new(routes);
        }
        t.desired
    }
}

/// An agent's address by name, remembered: agent host names rarely change; a miss is retried
/// when its app is next translated.
fn resolve_cached(dns: &mut HashMap<String, Option<Ipv4Addr>>, host: &str) -> Option<Ipv4Addr> {
    if let Some(Some(ip)) = dns.get(host) {
        return Some(*ip);
    }
    let ip = (host, 0).to_socket_addrs().ok()?.find_map(|a| match a {
        std::net::SocketAddr::V4(v4) => Some(*v4.ip()),
        std::net::SocketAddr::V6(_) => None,
    });
    dns.insert(host.to_owned(), ip);
    ip
}
