//! The observer: a task of its own, with map handles of its own, that refreshes what `/metrics`
//! shows from the latest state the daemon sends, and writes the daemon's state file when it is
//! large. Reading the
//! counters of 10,000 services takes about 200 ms and the state file is then 6 MB: done on the
//! daemon's task, every two seconds, it held up Marathon changes behind it (p99 event to map
//! 477 ms at 10,000 apps).
use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Result;
use tokio::{sync::watch, task::JoinHandle};
use tracing::warn;

use super::{
    metrics::{Metrics, Snapshot},
    state::DaemonState,
    view,
};
use crate::{
    dataplane::{maps::Maps, pins::PinLayout},
    marathon::controller::SyncState,
};

/// The observer works at most this often: under a stream of Marathon changes the daemon sends
/// a state per change, and a scrape every few seconds needs no more.
const EVERY: Duration = Duration::from_secs(1);

/// What the daemon knows that the maps do not, as of one moment.
pub struct Observation {
    pub state: DaemonState,
    /// Whether the observer writes the state file (the daemon writes small ones itself).
    pub write_state_file: bool,
    /// Flow table entries, as the last sweep counted them.
    pub flow_entries: Option<u64>,
    pub marathon: Option<SyncState>,
    pub interfaces_attached: usize,
}

pub struct Observer {
    latest: watch::Sender<Option<Arc<Observation>>>,
    task: JoinHandle<()>,
}

impl Observer {
    /// Opens its own handles on the maps pinned under `layout` and waits for observations.
    pub fn spawn(layout: PinLayout, state_file: PathBuf, metrics: Arc<Metrics>) -> Result<Self> {
        let maps = Maps::open_pinned(&layout)?;
        let (latest, mut rx) = watch::channel(None::<Arc<Observation>>);
        let task = tokio::spawn(async move {
            let mut maps = maps;
            let mut last: Option<tokio::time::Instant> = None;
            // Observations that arrive while one is being written, or within `EVERY` of the
            // last, fold into the newest.
            while rx.changed().await.is_ok() {
                if let Some(t) = last {
                    tokio::time::sleep_until(t + EVERY).await;
                }
                last = Some(tokio::time::Instant::now());
                let Some(obs) = rx.borrow_and_update().clone() else {
                    continue;
                };
                let (layout, state_file, metrics) =
                    (layout.clone(), state_file.clone(), Arc::clone(&metrics));
                maps = tokio::task::spawn_blocking(move || {
                    if obs.write_state_file
                        && let Err(e) = obs.state.write(&state_file)
                    {
                        warn!(file = %state_file.display(), "cannot write state file: {e}");
                    }
                    let status =
                        view::status_of(&maps, &layout, Some(&obs.state), obs.flow_entries);
                    metrics.publish(Snapshot::of(
                        status,
                        obs.marathon.clone(),
                        obs.interfaces_attached,
                    ));
                    maps
                })
                .await
                .expect("observing does not panic");
            }
        });
        Ok(Self { latest, task })
    }

    /// Hands over the newest observation; an older one not yet written is skipped.
    pub fn send(&self, obs: Observation) {
        self.latest.send_replace(Some(Arc::new(obs)));
    }

    /// Writes what was sent last, then stops.
    pub async fn finish(self) {
        drop(self.latest);
        if let Err(e) = self.task.await {
            warn!("the observer stopped: {e}");
        }
    }
}
