//! The Marathon controller against the stand-in: failover, leader redirects with credentials,
//! transient errors, garbage bodies, event latency, coalescing, stall detection and resync.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lb_tests::marathon_standin::{Mode, RequireAuth, Standin};
use lb_user::marathon::api::{ParsedApps, parse_apps};
use lb_user::marathon::client::{Auth, ClientConfig};
use lb_user::marathon::controller::{self, ControllerConfig, Read, Snapshot, SyncState, Trigger};
use lb_user::marathon::{backoff::Backoff, events::EventStreamConfig};
use serde_json::json;
use tokio::sync::{mpsc, watch};

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().expect("address parses")
}

/// A URL nothing listens on: bind a port, then free it.
fn refused_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let addr = listener.local_addr().expect("bound address");
    drop(listener);
    format!("http://{addr}")
}

fn apps_doc(tag: &str) -> serde_json::Value {
    json!({"apps": [{
        "id": format!("/{tag}"),
        "labels": {"HAPROXY_GROUP": "external"},
        "tasks": [{"id": format!("{tag}.1"), "host": "10.0.0.1", "ports": [31000]}]
    }]})
}

/// Short timeouts everywhere so every test runs in about a second.
fn config(urls: &[String]) -> ControllerConfig {
    ControllerConfig {
        client: ClientConfig {
            urls: urls
                .iter()
                .map(|u| u.parse().unwrap_or_else(|e| panic!("test URL {u}: {e}")))
                .collect(),
            connect_timeout: Duration::from_millis(300),
            request_timeout: Duration::from_millis(600),
            ..ClientConfig::default()
        },
        events: EventStreamConfig {
            idle_timeout: Duration::from_millis(800),
            backoff: Backoff {
                initial: Duration::from_millis(30),
                max: Duration::from_millis(150),
            },
            ..EventStreamConfig::default()
        },
        resync_interval: Duration::from_secs(60),
        coalesce: Duration::from_millis(50),
        retry: Backoff {
            initial: Duration::from_millis(30),
            max: Duration::from_millis(150),
        },
    }
}

struct Running {
    snapshots: mpsc::Receiver<Snapshot>,
    state: watch::Receiver<SyncState>,
    task: tokio::task::JoinHandle<Result<(), anyhow::Error>>,
}

impl Running {
    fn start(cfg: ControllerConfig) -> Self {
        let (tx, snapshots) = mpsc::channel(16);
        let (state_tx, state) = watch::channel(SyncState::default());
        let task = tokio::spawn(controller::run(cfg, tx, state_tx));
        Self {
            snapshots,
            state,
            task,
        }
    }

    async fn snapshot(&mut self, within: Duration, what: &str) -> Snapshot {
        match tokio::time::timeout(within, self.snapshots.recv()).await {
            Ok(Some(s)) => s,
            Ok(None) => panic!("{what}: the controller stopped: {:?}", self.state.borrow()),
            Err(_) => panic!(
                "{what}: no snapshot within {within:?}; state: {:?}",
                self.state.borrow()
            ),
        }
    }

    async fn no_snapshot(&mut self, during: Duration, what: &str) {
        if let Ok(s) = tokio::time::timeout(during, self.snapshots.recv()).await {
            panic!("{what}: unexpected snapshot {s:?}");
        }
    }

    /// Takes every snapshot already queued or arriving within `quiet`.
    async fn drain(&mut self, quiet: Duration) -> Vec<Snapshot> {
        let mut got = Vec::new();
        while let Ok(Some(s)) = tokio::time::timeout(quiet, self.snapshots.recv()).await {
            got.push(s);
        }
        got
    }

    async fn state_until(
        &mut self,
        within: Duration,
        what: &str,
        pred: impl Fn(&SyncState) -> bool,
    ) -> SyncState {
        let reached = match tokio::time::timeout(within, self.state.wait_for(|s| pred(s))).await {
            Ok(Ok(s)) => Some(s.clone()),
            Ok(Err(_)) => panic!("{what}: the controller stopped"),
            Err(_) => None,
        };
        reached.unwrap_or_else(|| {
            panic!(
                "{what}: not reached within {within:?}; state: {:?}",
                self.state.borrow()
            )
        })
    }

    /// Startup snapshot taken and the event stream open: the steady state tests start from.
    async fn settled(&mut self, what: &str) -> Snapshot {
        let first = self.snapshot(Duration::from_secs(3), what).await;
        self.state_until(Duration::from_secs(3), what, |s| s.connected)
            .await;
        // A Reconnect read may follow if the stream opened after the startup read.
        self.drain(Duration::from_millis(150)).await;
        first
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The apps of a full read, parsed; panics for a single-app read.
fn full_read(s: &Snapshot) -> ParsedApps {
    match &s.read {
        Read::Full(body) => body.parsed(),
        Read::Apps(apps) => panic!("a full read was expected, not {apps:?}"),
    }
}

fn parsed(doc: serde_json::Value) -> ParsedApps {
    parse_apps(doc.to_string().as_bytes()).expect("test document parses")
}

#[tokio::test]
async fn startup_reads_full_state_then_follows_events() {
    let m = Standin::start(any_port()).await;
    m.set_apps(apps_doc("web"));
    let mut c = Running::start(config(&[m.url()]));
    let first = c.settled("startup").await;
    assert_eq!(first.trigger, Trigger::Startup);
    assert_eq!(full_read(&first), parsed(apps_doc("web")));
    let s = c.state.borrow().clone();
    assert!(
        s.last_full_sync.is_some() && s.snapshots_total >= 1 && s.requests_total >= 1,
        "state after startup: {s:?}"
    );
    assert_eq!(s.stream_url.as_deref(), Some(format!("{}/v2/events?event_type=status_update_event&event_type=health_status_changed_event&event_type=api_post_event&event_type=app_terminated_event&event_type=deployment_success&event_type=deployment_failed", m.url()).as_str()));
}

#[tokio::test]
async fn fails_over_when_the_first_url_refuses_connections() {
    let m = Standin::start(any_port()).await;
    m.set_apps(apps_doc("api"));
    let mut c = Running::start(config(&[refused_url(), m.url()]));
    let first = c.settled("failover").await;
    assert_eq!(full_read(&first), parsed(apps_doc("api")));
    assert!(
        c.state
            .borrow()
            .stream_url
            .as_deref()
            .is_some_and(|u| u.starts_with(&m.url())),
        "stream on the live URL: {:?}",
        c.state.borrow()
    );
}

#[tokio::test]
async fn fails_over_on_502_and_on_a_stalled_first_url() {
    let fail = Standin::start(any_port()).await;
    fail.set_mode(Mode::Fail(502));
    let stall = Standin::start(any_port()).await;
    stall.set_mode(Mode::StallApps);
    let good = Standin::start(any_port()).await;
    good.set_apps(apps_doc("ok"));
    let started = Instant::now();
    let mut c = Running::start(config(&[fail.url(), stall.url(), good.url()]));
    let first = c
        .snapshot(Duration::from_secs(3), "failover past 502 and stall")
        .await;
    assert_eq!(full_read(&first), parsed(apps_doc("ok")));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the stalled URL cost one request timeout, not more: {:?}",
        started.elapsed()
    );
    // The stream tried the 502 URL first; the read then starts from the URL that last answered.
    assert!(
        fail.requests() + fail.event_connections() >= 1,
        "the 502 URL was tried"
    );
    assert!(
        stall.requests() >= 1,
        "the stalled URL was tried before the good one"
    );
}

#[tokio::test]
async fn redirect_to_the_leader_keeps_token_auth() {
    let leader = Standin::start(any_port()).await;
    leader.require_auth(RequireAuth::Token("tok-s3cret".into()));
    leader.set_apps(apps_doc("led"));
    let follower = Standin::start(any_port()).await;
    follower.set_mode(Mode::Redirect(leader.url()));
    let mut cfg = config(&[follower.url()]);
    cfg.client.auth = Auth::token("tok-s3cret");
    let mut c = Running::start(cfg);
    let first = c.settled("redirected read").await;
    assert_eq!(full_read(&first), parsed(apps_doc("led")));
    assert_eq!(
        leader.unauthorized(),
        0,
        "the token reached the leader on every request"
    );
    assert!(
        follower.requests() >= 1 && leader.apps_served() >= 1 && leader.event_connections() >= 1,
        "both reads and the stream went through the redirect"
    );
    let state = c.state.borrow().clone();
    assert!(
        state
            .stream_url
            .as_deref()
            .is_some_and(|u| u.starts_with(&leader.url())),
        "stream follows the redirect: {state:?}"
    );
    // The stream, too, reached the leader with credentials: events from it arrive.
    leader.set_apps(apps_doc("led2"));
    let s = c
        .snapshot(Duration::from_secs(1), "event via redirected stream")
        .await;
    assert_eq!(full_read(&s), parsed(apps_doc("led2")));
}

#[tokio::test]
async fn redirect_keeps_basic_auth_given_in_the_url() {
    let leader = Standin::start(any_port()).await;
    leader.require_auth(RequireAuth::Basic {
        user: "alice".into(),
        password: "pa:ss".into(),
    });
    leader.set_apps(apps_doc("basic"));
    let follower = Standin::start(any_port()).await;
    follower.set_mode(Mode::Redirect(leader.url()));
    let url = follower.url().replace("http://", "http://alice:pa%3Ass@");
    let mut c = Running::start(config(&[url]));
    let first = c.settled("basic auth through redirect").await;
    assert_eq!(full_read(&first), parsed(apps_doc("basic")));
    assert_eq!(leader.unauthorized(), 0);
    let state = format!("{:?}", c.state.borrow());
    assert!(
        !state.contains("pa:ss") && !state.contains("pa%3Ass") && !state.contains("alice"),
        "state leaks credentials: {state}"
    );
}

#[tokio::test]
async fn wrong_credentials_give_no_snapshot_and_a_redacted_error() {
    let m = Standin::start(any_port()).await;
    m.require_auth(RequireAuth::Basic {
        user: "alice".into(),
        password: "right".into(),
    });
    let mut cfg = config(&[m.url()]);
    cfg.client.auth = Auth::basic("alice:wrong-secret").expect("parses");
    let mut c = Running::start(cfg);
    c.no_snapshot(Duration::from_millis(500), "unauthorized")
        .await;
    let s = c
        .state_until(Duration::from_secs(1), "error recorded", |s| {
            s.last_error.is_some()
        })
        .await;
    let err = s.last_error.clone().unwrap_or_default();
    assert!(err.contains("401"), "error names the status: {err}");
    assert!(err.contains(&m.url()), "error names the URL tried: {err}");
    assert!(
        !format!("{s:?}").contains("wrong-secret"),
        "state leaks the password: {s:?}"
    );
}

#[tokio::test]
async fn bad_gateway_is_transient() {
    let m = Standin::start(any_port()).await;
    m.set_apps(apps_doc("later"));
    m.set_mode(Mode::Fail(502));
    let mut c = Running::start(config(&[m.url()]));
    c.no_snapshot(Duration::from_millis(400), "no leader").await;
    let s = c
        .state_until(Duration::from_secs(1), "502 recorded", |s| {
            s.request_errors_total >= 2
        })
        .await;
    assert!(
        s.last_error.as_deref().is_some_and(|e| e.contains("502")),
        "last error: {:?}",
        s.last_error
    );
    m.set_mode(Mode::Normal);
    let snap = c
        .snapshot(Duration::from_secs(2), "after the leader is back")
        .await;
    assert_eq!(full_read(&snap), parsed(apps_doc("later")));
    assert_eq!(
        snap.trigger,
        Trigger::Startup,
        "the retried read keeps its trigger"
    );
}

#[tokio::test]
async fn garbage_body_never_becomes_a_snapshot() {
    let m = Standin::start(any_port()).await;
    m.set_apps(apps_doc("good"));
    let mut c = Running::start(config(&[m.url()]));
    c.settled("startup").await;
    m.set_mode(Mode::Garbage);
    m.emit("status_update_event", json!({"taskStatus": "TASK_RUNNING"}));
    c.no_snapshot(Duration::from_millis(400), "garbage body")
        .await;
    let s = c.state.borrow().clone();
    assert!(s.bad_bodies_total >= 1, "garbage counted: {s:?}");
    assert!(
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("not valid JSON")),
        "last error: {:?}",
        s.last_error
    );
    m.set_mode(Mode::Normal);
    let snap = c.snapshot(Duration::from_secs(2), "after garbage").await;
    assert_eq!(full_read(&snap), parsed(apps_doc("good")));
    assert!(
        matches!(snap.trigger, Trigger::Event { .. }),
        "the retried read keeps the event trigger: {:?}",
        snap.trigger
    );
}

#[tokio::test]
async fn event_to_snapshot_within_200ms() {
    let m = Standin::start(any_port()).await;
    m.set_apps(apps_doc("v1"));
    let mut c = Running::start(config(&[m.url()]));
    c.settled("startup").await;
    for round in 0..3 {
        let tag = format!("v{}", round + 2);
        let sent = Instant::now();
        m.set_apps(apps_doc(&tag));
        let snap = c.snapshot(Duration::from_secs(1), "after set_apps").await;
        let latency = sent.elapsed();
        assert_eq!(full_read(&snap), parsed(apps_doc(&tag)));
        let Trigger::Event { received } = snap.trigger else {
            panic!("trigger should be an event: {:?}", snap.trigger)
        };
        assert!(received >= sent, "received is taken when the bytes arrive");
        assert!(
            latency < Duration::from_millis(200),
            "round {round}: event to snapshot took {latency:?}"
        );
    }
    assert!(c.state.borrow().events_total >= 3);
}

#[tokio::test]
async fn a_burst_of_events_causes_one_or_two_reads() {
    let m = Standin::start(any_port()).await;
    let mut c = Running::start(config(&[m.url()]));
    c.settled("startup").await;
    let before = m.requests();
    let events_before = c.state.borrow().events_total;
    for i in 0..10 {
        m.emit(
            "status_update_event",
            json!({"taskId": format!("t{i}"), "taskStatus": "TASK_RUNNING"}),
        );
    }
    let got = c.drain(Duration::from_millis(400)).await;
    let reads = m.requests() - before;
    assert!(
        (1..=2).contains(&got.len()),
        "10 events gave {} snapshots",
        got.len()
    );
    assert!((1..=2).contains(&reads), "10 events gave {reads} reads");
    assert_eq!(
        c.state.borrow().events_total - events_before,
        10,
        "every event is counted"
    );
}

#[tokio::test]
async fn unsubscribed_events_and_heartbeats_do_not_cause_reads() {
    let m = Standin::start_with(any_port(), Duration::from_millis(20)).await;
    let mut c = Running::start(config(&[m.url()]));
    c.settled("startup").await;
    let before = m.requests();
    m.emit("framework_message_event", json!({}));
    m.emit("event_stream_attached", json!({}));
    c.no_snapshot(Duration::from_millis(300), "heartbeats and other events")
        .await;
    assert_eq!(m.requests(), before);
    // Data-only events (old Marathons) and several objects on one data line still trigger.
    m.emit_raw(&b"data: {\"eventType\":\"status_update_event\"}{\"eventType\":\"status_update_event\"}\n\n"[..]);
    let s = c.snapshot(Duration::from_secs(1), "unnamed event").await;
    assert!(matches!(s.trigger, Trigger::Event { .. }));
}

#[tokio::test]
async fn a_silent_stream_is_detected_and_reconnected() {
    let m = Standin::start_with(any_port(), Duration::from_millis(100)).await;
    let mut cfg = config(&[m.url()]);
    cfg.events.idle_timeout = Duration::from_millis(300);
    let mut c = Running::start(cfg);
    c.settled("startup").await;
    let connections = m.event_connections();
    m.set_mode(Mode::StallEvents);
    let s = c
        .state_until(Duration::from_secs(2), "stall detected", |s| {
            s.stream_reconnects_total >= 1
        })
        .await;
    assert!(
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("silent")),
        "last error: {:?}",
        s.last_error
    );
    m.set_mode(Mode::Normal);
    let snap = loop {
        let snap = c
            .snapshot(Duration::from_secs(2), "re-read after reconnect")
            .await;
        if snap.trigger == Trigger::Reconnect {
            break snap;
        }
    };
    assert!(
        m.event_connections() > connections,
        "a new stream was opened"
    );
    assert_eq!(full_read(&snap), parsed(json!({"apps": []})));
    c.state_until(Duration::from_secs(2), "connected again", |s| s.connected)
        .await;
    // The new stream works.
    c.drain(Duration::from_millis(100)).await;
    m.set_apps(apps_doc("after"));
    let snap = c
        .snapshot(Duration::from_secs(1), "event on the new stream")
        .await;
    assert_eq!(full_read(&snap), parsed(apps_doc("after")));
}

#[tokio::test]
async fn periodic_resync_without_events() {
    let m = Standin::start(any_port()).await;
    let mut cfg = config(&[m.url()]);
    cfg.resync_interval = Duration::from_millis(300);
    let mut c = Running::start(cfg);
    c.settled("startup").await;
    for i in 0..2 {
        let snap = c.snapshot(Duration::from_secs(1), "resync").await;
        assert_eq!(snap.trigger, Trigger::Resync, "resync {i}");
    }
}

#[tokio::test]
async fn marathon_coming_up_late_is_picked_up() {
    let url = refused_url();
    let addr: SocketAddr = url
        .trim_start_matches("http://")
        .parse()
        .expect("address parses");
    let mut c = Running::start(config(std::slice::from_ref(&url)));
    c.no_snapshot(Duration::from_millis(400), "nothing listening")
        .await;
    let s = c.state.borrow().clone();
    assert!(
        s.request_errors_total >= 1 && !s.connected && s.stream_reconnects_total >= 1,
        "state while down: {s:?}"
    );
    assert!(
        s.last_error.as_deref().is_some_and(|e| e.contains(&url)),
        "error names the URL: {:?}",
        s.last_error
    );
    let m = Standin::start(addr).await;
    m.set_apps(apps_doc("late"));
    let snap = c
        .snapshot(Duration::from_secs(2), "after Marathon came up")
        .await;
    assert_eq!(snap.trigger, Trigger::Startup);
    c.state_until(Duration::from_secs(2), "stream connected", |s| s.connected)
        .await;
}

#[tokio::test]
async fn controller_stops_when_the_consumer_goes_away() {
    let m = Standin::start(any_port()).await;
    let mut c = Running::start(config(&[m.url()]));
    c.settled("startup").await;
    let Running {
        snapshots, task, ..
    } = &mut c;
    snapshots.close();
    while snapshots.try_recv().is_ok() {}
    let result = tokio::time::timeout(Duration::from_secs(2), task).await;
    assert!(
        matches!(result, Ok(Ok(Ok(())))),
        "run returns Ok when the receiver is dropped: {result:?}"
    );
}
