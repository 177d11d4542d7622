//! The Marathon feed: runs the controller (which reads Marathon) and turns each of its reads
//! into the desired services, handed to the daemon as `Update`s. Skipped apps and L7-only
//! labels are reported once (not at every sync) so logs stay readable on a busy cluster.
use std::{
    collections::{BTreeSet, HashMap},
    net::{Ipv4Addr, ToSocketAddrs},
    time::{Instant, SystemTime},
};

use anyhow::{Context as _, Result};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use super::{
    api,
    controller::{self, ControllerConfig, Snapshot, SyncState, Trigger},
    translate::{TranslateOptions, translate},
};
use crate::services::Desired;

/// Everything the feed needs: how to read Marathon, and marathon-lb's rules to apply.
#[derive(Debug, Clone)]
pub struct FeedConfig {
    pub controller: ControllerConfig,
    pub translate: TranslateOptions,
}

/// One state of Marathon, translated.
#[derive(Debug)]
pub struct Update {
    pub desired: Desired,
    /// Why apps, ports or tasks were left out (for `lb status`).
    pub skipped: Vec<String>,
    /// When Marathon was read.
    pub fetched_at: SystemTime,
    /// The oldest event this state answers: the daemon measures event-to-map from it.
    pub event_received: Option<Instant>,
}

/// Follows Marathon until `updates` is dropped: the controller reads, this task translates
/// the newest read (reads that queued up behind a slow translation are folded into it) and
/// sends the result. A read Marathon answered with garbage is reported in `sync` and skipped:
/// the daemon keeps serving the last good state.
pub async fn run(cfg: FeedConfig, updates: mpsc::Sender<Update>, sync: watch::Sender<SyncState>) {
    let (snap_tx, mut snapshots) = mpsc::channel::<Snapshot>(4);
    let errors = sync.clone();
    tokio::spawn(async move {
        if let Err(e) = controller::run(cfg.controller, snap_tx, errors).await {
            error!("Marathon controller stopped: {e:#}");
        }
    });
    let mut translator = Translator::new(cfg.translate);
    while let Some(first) = snapshots.recv().await {
        let mut snap = first;
        let mut trigger = snap.trigger;
        while let Ok(newer) = snapshots.try_recv() {
            trigger = trigger.merge(newer.trigger);
            snap = newer;
        }
        let update = match translator.desired(&snap.apps_json) {
            Ok(desired) => Update {
                desired,
                skipped: translator.skipped.clone(),
                fetched_at: snap.fetched_at,
                event_received: match trigger {
                    Trigger::Event { received } => Some(received),
                    _ => None,
                },
            },
            Err(e) => {
                let e = format!("{:#}", e.context("keeping the services in force"));
                error!("{e}");
                sync.send_modify(|s| {
                    s.last_error = Some(e);
                    s.last_error_at = Some(SystemTime::now());
                });
                continue;
            }
        };
        if updates.send(update).await.is_err() {
            return;
        }
    }
}

/// Turns Marathon reads into desired services; remembers what it already reported.
pub struct Translator {
    pub opts: TranslateOptions,
    dns: HashMap<String, Option<Ipv4Addr>>,
    reported: BTreeSet<String>,
    /// Reasons for skipped apps, ports or tasks in the last translation (for `lb status`).
    pub skipped: Vec<String>,
}

impl Translator {
    pub fn new(opts: TranslateOptions) -> Self {
        Self {
            opts,
            dns: HashMap::new(),
            reported: BTreeSet::new(),
            skipped: Vec::new(),
        }
    }

    /// Translates one `/v2/apps` body. Errors only when the body as a whole is unusable;
    /// a bad app is skipped with a reason and the rest apply.
    pub fn desired(&mut self, body: &[u8]) -> Result<Desired> {
        let parsed = api::parse_apps(body).context("Marathon's /v2/apps answer")?;
        let mut now_skipped = Vec::new();
        for e in &parsed.errors {
            now_skipped.push(format!(
                "app {} (#{}): unreadable: {}",
                e.app_id.as_deref().unwrap_or("?"),
                e.index,
                e.error
            ));
        }
        let dns = &mut self.dns;
        let mut resolve = |host: &str| -> Option<Ipv4Addr> {
            // Agent host names rarely change; a miss is retried at the next snapshot.
            if let Some(Some(ip)) = dns.get(host) {
                return Some(*ip);
            }
            let ip = (host, 0).to_socket_addrs().ok()?.find_map(|a| match a {
                std::net::SocketAddr::V4(v4) => Some(*v4.ip()),
                std::net::SocketAddr::V6(_) => None,
            });
            dns.insert(host.to_owned(), ip);
            ip
        };
        let t = translate(&parsed.apps, &self.opts, &mut resolve);
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
        Ok(t.desired)
    }
}
