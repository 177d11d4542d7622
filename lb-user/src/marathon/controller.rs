//! The task that follows Marathon: reads the full state at start, on stream reconnects,
//! periodically and on events that do not say which app changed; reads only the named apps on
//! the (coalesced) events that do; and hands each good read to the consumer, parsed.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use futures_util::StreamExt as _;
use tokio::sync::{mpsc, watch};
use tokio::time::sleep_until;

use super::api::{self, App, AppsBody};
use super::backoff::{Backoff, BackoffState};
use super::client::{ClientConfig, MarathonClient};
use super::events::{self, EventStreamConfig, StreamSignal};
use crate::task::AbortOnDrop;

/// More named apps than this in one coalesced burst are read in one full read instead.
const MAX_APPS_PER_READ: usize = 64;
/// Single-app reads in flight at once.
const APP_READS_IN_FLIGHT: usize = 8;

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
    pub read: Read,
    pub fetched_at: SystemTime,
    pub trigger: Trigger,
}

/// What was read: everything, or some apps.
#[derive(Debug, Clone, PartialEq)]
pub enum Read {
    /// `/v2/apps?embed=apps.tasks`, cut into its apps (each parses as the catalog takes it); it
    /// replaces all that was known.
    Full(AppsBody),
    /// `/v2/apps/{id}?embed=app.tasks` of each app an event named; the others are as they were.
    Apps(Vec<AppRead>),
}

/// One app as Marathon has it now.
#[derive(Debug, Clone, PartialEq)]
pub struct AppRead {
    pub id: String,
    /// `None`: Marathon answered 404, the app is gone.
    pub app: Option<App>,
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
    /// Single-app reads (`/v2/apps/{id}`) attempted.
    pub app_requests_total: u64,
    /// Bursts of single-app reads given up for a full read: a read failed or answered garbage.
    pub app_read_fallbacks_total: u64,
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

/// A read that is due, and when.
struct Pending {
    trigger: Trigger,
    at: tokio::time::Instant,
    scope: Scope,
}

/// What a due read covers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scope {
    Full,
    Apps(BTreeSet<String>),
}

impl Scope {
    fn merge(self, other: Scope) -> Scope {
        match (self, other) {
            (Scope::Apps(mut a), Scope::Apps(b)) => {
                a.extend(b);
                if a.len() > MAX_APPS_PER_READ {
                    Scope::Full
                } else {
                    Scope::Apps(a)
                }
            }
            _ => Scope::Full,
        }
    }
}

fn want(pending: &mut Option<Pending>, trigger: Trigger, at: tokio::time::Instant, scope: Scope) {
    *pending = Some(match pending.take() {
        // Never later than already planned: a steady trickle of events must not postpone reads.
        Some(p) => Pending {
            trigger: p.trigger.merge(trigger),
            at: p.at.min(at),
            scope: p.scope.merge(scope),
        },
        None => Pending { trigger, at, scope },
    });
}

/// Follows Marathon until the `snapshots` receiver is dropped. Sends a snapshot after every good
/// read; when Marathon is unreachable or answers garbage, sends nothing (the consumer keeps serving
/// the last good state), records the error in `state` and retries with backoff. A single-app
/// read in any doubt (failed, garbage, another app) is replaced by a full read at once.
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
        scope: Scope::Full,
    });
    let mut next_resync = now + cfg.resync_interval;
    let mut retry = BackoffState::new(cfg.retry);
    // Until a full read succeeded, every read is a full one (a single app means nothing yet).
    let mut full_reads_done = 0u64;

    loop {
        let due = pending.as_ref().map(|p| p.at);
        tokio::select! {
            biased;
            () = snapshots.closed() => return Ok(()),
            signal = signals.recv() => {
                let signal = signal.context("the Marathon event stream task stopped")?;
                handle_signal(signal, &cfg, &mut pending, full_reads_done, &state);
            }
            () = sleep_until(due.unwrap_or(next_resync)), if due.is_some() => {
                let Pending { trigger, scope, .. } = pending.take().expect("a due read is pending");
                let read = match scope {
                    Scope::Apps(ids) if full_reads_done > 0 => match read_apps(&client, ids, &state).await {
                        Ok(apps) => Read::Apps(apps),
                        Err(()) => {
                            want(&mut pending, trigger, tokio::time::Instant::now(), Scope::Full);
                            continue;
                        }
                    },
                    _ => match read_full(&client, &state).await {
                        Ok(parsed) => Read::Full(parsed),
                        Err(()) => {
                            // Keep the original trigger, so an event's latency includes the outage.
                            let delay = retry.next_delay(&mut rand::rng());
                            want(&mut pending, trigger, tokio::time::Instant::now() + delay, Scope::Full);
                            continue;
                        }
                    },
                };
                let full = matches!(read, Read::Full(_));
                let snapshot = Snapshot { read, fetched_at: SystemTime::now(), trigger };
                if snapshots.send(snapshot).await.is_err() {
                    return Ok(());
                }
                state.send_modify(|s| {
                    if full {
                        s.last_full_sync = Some(SystemTime::now());
                    }
                    s.snapshots_total += 1;
                });
                if full {
                    full_reads_done += 1;
                    retry.reset();
                    next_resync = tokio::time::Instant::now() + cfg.resync_interval;
                }
            }
            () = sleep_until(next_resync), if due.is_none() => {
                want(&mut pending, Trigger::Resync, tokio::time::Instant::now(), Scope::Full);
            }
        }
    }
}

fn handle_signal(
    signal: StreamSignal,
    cfg: &ControllerConfig,
    pending: &mut Option<Pending>,
    full_reads_done: u64,
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
            let trigger = if full_reads_done == 0 {
                Trigger::Startup
            } else {
                Trigger::Reconnect
            };
            want(pending, trigger, now, Scope::Full);
        }
        StreamSignal::Event {
            name,
            apps,
            received,
        } => {
            tracing::debug!(
                event = name.as_deref().unwrap_or("(unnamed)"),
                ?apps,
                "Marathon event"
            );
            state.send_modify(|s| {
                s.events_total += 1;
                s.last_event = Some(SystemTime::now());
            });
            let at = tokio::time::Instant::from_std(received) + cfg.coalesce;
            let scope = match apps {
                Some(ids) => {
                    Scope::Apps(BTreeSet::new()).merge(Scope::Apps(ids.into_iter().collect()))
                }
                None => Scope::Full,
            };
            want(pending, Trigger::Event { received }, at, scope);
        }
        StreamSignal::Disconnected { reason, .. } => {
            state.send_modify(|s| {
                s.connected = false;
                s.stream_url = None;
                s.stream_reconnects_total += 1;
                s.last_error = Some(reason);
                s.last_error_at = Some(SystemTime::now());
            });
            if full_reads_done == 0 {
                // No stream to wait for: read now rather than at the startup deadline.
                want(pending, Trigger::Startup, now, Scope::Full);
            }
        }
    }
}

/// One full read, checked at the top level and cut into its apps; failures are logged and
/// recorded in `state`.
async fn read_full(
    client: &MarathonClient,
    state: &watch::Sender<SyncState>,
) -> Result<AppsBody, ()> {
    state.send_modify(|s| s.requests_total += 1);
    let result = match client.fetch_apps().await {
        Err(e) => Err((e.to_string(), false)),
        Ok(body) => {
            let bytes = body.len();
            // Megabytes on a large cluster: scanned off the runtime's threads.
            let split = tokio::task::spawn_blocking(move || AppsBody::split(body))
                .await
                .expect("splitting does not panic");
            match split {
                Ok(apps) => {
                    tracing::debug!(apps = apps.len(), bytes, "read Marathon state");
                    Ok(apps)
                }
                Err(e) => Err((format!("Marathon's /v2/apps answer: {e}"), true)),
            }
        }
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

/// Reads each app in `ids`, a few at a time. Any doubt (a failed read, an answer that does not
/// parse or is about another app) fails the whole burst: the caller reads everything instead.
async fn read_apps(
    client: &MarathonClient,
    ids: BTreeSet<String>,
    state: &watch::Sender<SyncState>,
) -> Result<Vec<AppRead>, ()> {
    state.send_modify(|s| s.app_requests_total += ids.len() as u64);
    let answers: Vec<(String, Result<Option<App>, String>)> = futures_util::stream::iter(ids)
        .map(|id| async move {
            let answer = match client.fetch_app(&id).await {
                Err(e) => Err(e.to_string()),
                Ok(None) => Ok(None),
                Ok(Some(body)) => match api::parse_app_answer(&body) {
                    Ok(app) if app.id == id => Ok(Some(app)),
                    Ok(app) => Err(format!("the answer is about app {:?}", app.id)),
                    Err(e) => Err(e.to_string()),
                },
            };
            (id, answer)
        })
        .buffer_unordered(APP_READS_IN_FLIGHT)
        .collect()
        .await;
    let mut reads = Vec::with_capacity(answers.len());
    for (id, answer) in answers {
        match answer {
            Ok(app) => reads.push(AppRead { id, app }),
            Err(e) => {
                tracing::warn!(app = %id, error = %e, "reading one Marathon app failed; reading everything instead");
                state.send_modify(|s| s.app_read_fallbacks_total += 1);
                return Err(());
            }
        }
    }
    reads.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(reads)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            Scope::Full,
        );
        want(
            &mut pending,
            Trigger::Resync,
            now + Duration::from_millis(50),
            Scope::Full,
        );
        assert_eq!(
            pending.as_ref().expect("pending").at,
            now + Duration::from_millis(10)
        );
        want(&mut pending, Trigger::Reconnect, now, Scope::Full);
        let p = pending.expect("pending");
        assert_eq!((p.at, p.trigger), (now, Trigger::Reconnect));
    }

    #[test]
    fn scopes_merge_into_a_full_read_when_in_doubt_or_too_many() {
        let apps = |ids: &[&str]| Scope::Apps(ids.iter().map(|s| s.to_string()).collect());
        assert_eq!(
            apps(&["/a"]).merge(apps(&["/b", "/a"])),
            apps(&["/a", "/b"])
        );
        assert_eq!(apps(&["/a"]).merge(Scope::Full), Scope::Full);
        assert_eq!(Scope::Full.merge(apps(&["/a"])), Scope::Full);
        let many: Vec<String> = (0..=MAX_APPS_PER_READ).map(|i| format!("/a{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(apps(&many[..1]).merge(apps(&many[1..])), Scope::Full);
        // An event naming apps while a full read is pending leaves it full, and keeps its time.
        let now = tokio::time::Instant::now();
        let mut pending = None;
        want(&mut pending, Trigger::Startup, now, Scope::Full);
        want(
            &mut pending,
            Trigger::Resync,
            now + Duration::from_millis(5),
            apps(&["/a"]),
        );
        let p = pending.expect("pending");
        assert_eq!((p.at, p.scope), (now, Scope::Full));
    }
}
