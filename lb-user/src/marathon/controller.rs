//! The task that follows Marathon: reads the full state at start, on every (coalesced) event, on
//! stream reconnects and periodically, and hands each good `/v2/apps` body to the consumer.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::time::sleep_until;

use super::backoff::{Backoff, BackoffState};
use super::client::{ClientConfig, MarathonClient};
use super::events::{self, EventStreamConfig, StreamSignal};

#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// URLs, credentials, CA and HTTP timeouts.
    pub client: ClientConfig,
    /// Event types, the silence after which the stream counts as dead, reconnect backoff.
    pub events: EventStreamConfig,
    /// Full re-read even without events, to repair anything a lost event left stale.
    pub resync_interval: Duration,
    /// Events within this window of the first one cause a single re-read: a deployment emits
    /// bursts of status updates and each full read costs Marathon real work.
    pub coalesce: Duration,
    /// Delay between attempts while reads fail.
    pub retry: Backoff,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            client: ClientConfig::default(),
            events: EventStreamConfig::default(),
            resync_interval: Duration::from_secs(300),
            coalesce: Duration::from_millis(50),
            retry: Backoff {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(30),
            },
        }
    }
}

/// Why a snapshot was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Startup,
    /// An event (the first of a coalesced burst) whose bytes arrived at `received`.
    Event {
        received: Instant,
    },
    Resync,
    /// The event stream was (re)opened; events may have been lost while it was down.
    Reconnect,
}

impl Trigger {
    /// Two reasons to read folded into one read: an event wins (its `received` is what the consumer
    /// measures latency from), and of two events the older one, so latency is never understated.
    pub fn merge(self, other: Trigger) -> Trigger {
        match (self, other) {
            (Trigger::Event { received: a }, Trigger::Event { received: b }) => {
                Trigger::Event { received: a.min(b) }
            }
            (e @ Trigger::Event { .. }, _) | (_, e @ Trigger::Event { .. }) => e,
            (Trigger::Startup, _) | (_, Trigger::Startup) => Trigger::Startup,
            (Trigger::Reconnect, _) | (_, Trigger::Reconnect) => Trigger::Reconnect,
            (Trigger::Resync, Trigger::Resync) => Trigger::Resync,
        }
    }
}

/// One good read of Marathon's state.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The body of `/v2/apps?embed=apps.tasks`, checked to be JSON with an `apps` array.
    pub apps_json: Bytes,
    pub fetched_at: SystemTime,
    pub trigger: Trigger,
}

/// How following Marathon goes, for `lb status` and metrics. Counters only grow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncState {
    /// When the last snapshot was handed over.
    pub last_full_sync: Option<SystemTime>,
    /// When the last relevant event arrived.
    pub last_event: Option<SystemTime>,
    /// The latest failure (read or stream), kept after recovery; compare `last_error_at` with
    /// `last_full_sync` to tell whether it is current.
    pub last_error: Option<String>,
    pub last_error_at: Option<SystemTime>,
    /// Full reads of `/v2/apps` attempted (each may try several URLs).
    pub requests_total: u64,
    /// Reads that gave no snapshot: every URL failed, or the body was not a valid apps document.
    pub request_errors_total: u64,
    /// Of those, reads answered 2xx with a body that is not a valid apps document.
    pub bad_bodies_total: u64,
    pub snapshots_total: u64,
    /// Times the event stream failed to open or died (each followed by a reconnect attempt).
    pub stream_reconnects_total: u64,
    /// Relevant events received (before coalescing).
    pub events_total: u64,
    /// Whether the event stream is open now.
    pub connected: bool,
    /// The (redacted) URL the event stream is open to.
    pub stream_url: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the /v2/apps body is not valid JSON (line {line}, column {column})")]
    NotJson { line: usize, column: usize },
    #[error(
        "the /v2/apps body is JSON but not an object with an `apps` array (line {line}, column {column})"
    )]
    NoAppsArray { line: usize, column: usize },
    #[error("the /v2/apps body is truncated JSON")]
    Truncated,
}

/// Checks that `body` is a JSON object with an `apps` array and returns the number of apps.
/// Errors give positions only: the body holds app environments, which may hold secrets.
pub fn check_apps_body(body: &[u8]) -> Result<usize, BodyError> {
    // IgnoredAny validates the whole document without building it.
    #[derive(serde::Deserialize)]
    struct Shape {
        apps: Vec<serde::de::IgnoredAny>,
    }
    match serde_json::from_slice::<Shape>(body) {
        Ok(shape) => Ok(shape.apps.len()),
        Err(e) => Err(match e.classify() {
            serde_json::error::Category::Eof => BodyError::Truncated,
            serde_json::error::Category::Data => BodyError::NoAppsArray {
                line: e.line(),
                column: e.column(),
            },
            serde_json::error::Category::Syntax | serde_json::error::Category::Io => {
                BodyError::NotJson {
                    line: e.line(),
                    column: e.column(),
                }
            }
        }),
    }
}

/// Aborts the event stream task when the controller returns, however it returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A read that is due, and when.
struct Pending {
    trigger: Trigger,
    at: tokio::time::Instant,
}

fn want(pending: &mut Option<Pending>, trigger: Trigger, at: tokio::time::Instant) {
    *pending = Some(match pending.take() {
        // Never later than already planned: a steady trickle of events must not postpone reads.
        Some(p) => Pending {
            trigger: p.trigger.merge(trigger),
            at: p.at.min(at),
        },
        None => Pending { trigger, at },
    });
}

/// Follows Marathon until the `snapshots` receiver is dropped. Sends a snapshot after every good
/// read; when Marathon is unreachable or answers garbage, sends nothing (the consumer keeps serving
/// the last good state), records the error in `state` and retries with backoff.
pub async fn run(
    cfg: ControllerConfig,
    snapshots: mpsc::Sender<Snapshot>,
    state: watch::Sender<SyncState>,
) -> anyhow::Result<()> {
    let client =
        Arc::new(MarathonClient::new(&cfg.client).context("setting up the Marathon client")?);
    let (signal_tx, mut signals) = mpsc::channel(1024);
    let _stream_task = AbortOnDrop(tokio::spawn(events::listen(
        Arc::clone(&client),
        cfg.events.clone(),
        signal_tx,
    )));

    let now = tokio::time::Instant::now();
    // The startup read waits for the stream's first word (bounded), so that no event can fall
    // between the read and the subscription unnoticed.
    let mut pending = Some(Pending {
        trigger: Trigger::Startup,
        at: now + cfg.client.connect_timeout.min(Duration::from_secs(2)),
    });
    let mut next_resync = now + cfg.resync_interval;
    let mut retry = BackoffState::new(cfg.retry);
    let mut reads_started = 0u64;

    loop {
        let due = pending.as_ref().map(|p| p.at);
        tokio::select! {
            biased;
            () = snapshots.closed() => return Ok(()),
            signal = signals.recv() => {
                let signal = signal.context("the Marathon event stream task stopped")?;
                handle_signal(signal, &cfg, &mut pending, reads_started, &state);
            }
            () = sleep_until(due.unwrap_or(next_resync)), if due.is_some() => {
                let trigger = pending.take().expect("a due read is pending").trigger;
                reads_started += 1;
                match read(&client, &state).await {
                    Ok(apps_json) => {
                        let snapshot = Snapshot { apps_json, fetched_at: SystemTime::now(), trigger };
                        if snapshots.send(snapshot).await.is_err() {
                            return Ok(());
                        }
                        state.send_modify(|s| {
                            s.last_full_sync = Some(SystemTime::now());
                            s.snapshots_total += 1;
                        });
                        retry.reset();
                        next_resync = tokio::time::Instant::now() + cfg.resync_interval;
                    }
                    Err(()) => {
                        // Keep the original trigger, so an event's latency includes the outage.
                        let delay = retry.next_delay(&mut rand::rng());
                        want(&mut pending, trigger, tokio::time::Instant::now() + delay);
                    }
                }
            }
            () = sleep_until(next_resync), if due.is_none() => {
                want(&mut pending, Trigger::Resync, tokio::time::Instant::now());
            }
        }
    }
}

fn handle_signal(
    signal: StreamSignal,
    cfg: &ControllerConfig,
    pending: &mut Option<Pending>,
    reads_started: u64,
    state: &watch::Sender<SyncState>,
) {
    let now = tokio::time::Instant::now();
    match signal {
        StreamSignal::Connected { url } => {
            state.send_modify(|s| {
                s.connected = true;
                s.stream_url = Some(url);
            });
            // Before the first read, that read covers it; afterwards events may have been missed.
            let trigger = if reads_started == 0 {
                Trigger::Startup
            } else {
                Trigger::Reconnect
            };
            want(pending, trigger, now);
        }
        StreamSignal::Event { name, received } => {
            tracing::debug!(
                event = name.as_deref().unwrap_or("(unnamed)"),
                "Marathon event"
            );
            state.send_modify(|s| {
                s.events_total += 1;
                s.last_event = Some(SystemTime::now());
            });
            let at = tokio::time::Instant::from_std(received) + cfg.coalesce;
            want(pending, Trigger::Event { received }, at);
        }
        StreamSignal::Disconnected { reason, .. } => {
            state.send_modify(|s| {
                s.connected = false;
                s.stream_url = None;
                s.stream_reconnects_total += 1;
                s.last_error = Some(reason);
                s.last_error_at = Some(SystemTime::now());
            });
            if reads_started == 0 {
                // No stream to wait for: read now rather than at the startup deadline.
                want(pending, Trigger::Startup, now);
            }
        }
    }
}

/// One full read, checked; failures are logged and recorded in `state`.
async fn read(client: &MarathonClient, state: &watch::Sender<SyncState>) -> Result<Bytes, ()> {
    state.send_modify(|s| s.requests_total += 1);
    let result = match client.fetch_apps().await {
        Err(e) => Err((e.to_string(), false)),
        Ok(body) => match check_apps_body(&body) {
            Ok(apps) => {
                tracing::debug!(apps, bytes = body.len(), "read Marathon state");
                Ok(body)
            }
            Err(e) => Err((e.to_string(), true)),
        },
    };
    result.map_err(|(message, bad_body)| {
        tracing::warn!(error = %message, "reading Marathon state failed; keeping the last good state");
        state.send_modify(|s| {
            s.request_errors_total += 1;
            s.bad_bodies_total += u64::from(bad_body);
            s.last_error = Some(message);
            s.last_error_at = Some(SystemTime::now());
        });
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apps_body_check() {
        assert_eq!(
            check_apps_body(br#"{"apps":[{"id":"/a"},{"id":"/b"}]}"#).expect("valid"),
            2
        );
        assert_eq!(
            check_apps_body(br#"{"apps":[]}"#).expect("no apps is a valid state"),
            0
        );
        assert!(matches!(check_apps_body(b""), Err(BodyError::Truncated)));
        assert!(matches!(
            check_apps_body(b"<html>502</html>"),
            Err(BodyError::NotJson { .. })
        ));
        assert!(matches!(
            check_apps_body(br#"{"apps":[1,2"#),
            Err(BodyError::Truncated)
        ));
        assert!(matches!(
            check_apps_body(br#"{"message":"no leader"}"#),
            Err(BodyError::NoAppsArray { .. })
        ));
        let err =
            check_apps_body(br#"{"apps":"SECRET_VALUE"}"#).expect_err("apps must be an array");
        assert!(
            !err.to_string().contains("SECRET_VALUE"),
            "body content stays out of errors: {err}"
        );
    }

    #[test]
    fn trigger_merge_keeps_the_oldest_event() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(5);
        assert_eq!(
            Trigger::Event { received: t1 }.merge(Trigger::Event { received: t0 }),
            Trigger::Event { received: t0 }
        );
        assert_eq!(
            Trigger::Resync.merge(Trigger::Event { received: t0 }),
            Trigger::Event { received: t0 }
        );
        assert_eq!(Trigger::Startup.merge(Trigger::Reconnect), Trigger::Startup);
        assert_eq!(
            Trigger::Resync.merge(Trigger::Reconnect),
            Trigger::Reconnect
        );
    }

    #[test]
    fn want_never_postpones() {
        let now = tokio::time::Instant::now();
        let mut pending = None;
        want(
            &mut pending,
            Trigger::Resync,
            now + Duration::from_millis(10),
        );
        want(
            &mut pending,
            Trigger::Resync,
            now + Duration::from_millis(50),
        );
        assert_eq!(
            pending.as_ref().expect("pending").at,
            now + Duration::from_millis(10)
        );
        want(&mut pending, Trigger::Reconnect, now);
        let p = pending.expect("pending");
        assert_eq!((p.at, p.trigger), (now, Trigger::Reconnect));
    }
}
