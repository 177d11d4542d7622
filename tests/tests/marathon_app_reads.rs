//! The controller's single-app reads against the stand-in: an event naming an app reads that
//! app only; 404 means gone; any doubt (garbage, a failing read) falls back to a full read.

use std::time::Duration;

use lb_tests::marathon_standin::{Mode, Standin};
use lb_user::marathon::api::parse_app;
use lb_user::marathon::client::ClientConfig;
use lb_user::marathon::controller::{self, AppRead, ControllerConfig, Read, Snapshot, SyncState};
use lb_user::marathon::events::EventStreamConfig;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

fn app(id: &str, host: &str) -> Value {
    json!({"id": id, "labels": {"HAPROXY_GROUP": "external"},
           "tasks": [{"id": format!("{}.1", id.trim_start_matches('/')), "host": host, "ports": [31000]}]})
}

fn start(
    m: &Standin,
) -> (
    mpsc::Receiver<Snapshot>,
    watch::Receiver<SyncState>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let cfg = ControllerConfig {
        client: ClientConfig {
            urls: vec![m.url().parse().expect("URL")],
            connect_timeout: Duration::from_millis(300),
            request_timeout: Duration::from_millis(600),
            ..ClientConfig::default()
        },
        events: EventStreamConfig {
            idle_timeout: Duration::from_millis(800),
            ..EventStreamConfig::default()
        },
        coalesce: Duration::from_millis(20),
        ..ControllerConfig::default()
    };
    let (tx, rx) = mpsc::channel(16);
    let (state_tx, state) = watch::channel(SyncState::default());
    (rx, state, tokio::spawn(controller::run(cfg, tx, state_tx)))
}

async fn next(rx: &mut mpsc::Receiver<Snapshot>, what: &str) -> Read {
    match tokio::time::timeout(Duration::from_secs(2), rx.recv()).await {
        Ok(Some(s)) => s.read,
        other => panic!("{what}: no snapshot ({other:?})"),
    }
}

/// Startup read taken and the stream open: later reads answer later events.
async fn settle(rx: &mut mpsc::Receiver<Snapshot>, state: &mut watch::Receiver<SyncState>) {
    assert!(matches!(next(rx, "startup").await, Read::Full(_)));
    tokio::time::timeout(Duration::from_secs(2), state.wait_for(|s| s.connected))
        .await
        .expect("stream connects")
        .expect("controller runs");
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(150), rx.recv()).await {}
}

#[tokio::test]
async fn an_event_naming_an_app_reads_only_that_app() {
    let m = Standin::start("127.0.0.1:0".parse().expect("addr")).await;
    m.set_apps(json!({"apps": [app("/a", "10.0.0.1"), app("/b", "10.0.0.2")]}));
    let (mut rx, mut state, task) = start(&m);
    settle(&mut rx, &mut state).await;
    let full_reads = m.requests();

    m.set_app("/a", Some(app("/a", "10.0.0.9")));
    let want = parse_app(app("/a", "10.0.0.9").to_string().as_bytes()).expect("parses");
    assert_eq!(
        next(&mut rx, "changed app").await,
        Read::Apps(vec![AppRead {
            id: "/a".into(),
            app: Some(want)
        }])
    );
    m.set_app("/b", None);
    assert_eq!(
        next(&mut rx, "deleted app").await,
        Read::Apps(vec![AppRead {
            id: "/b".into(),
            app: None
        }])
    );
    assert_eq!(m.requests(), full_reads, "no full read for named apps");
    assert_eq!(m.app_requests(), 2);
    assert_eq!(
        String::from_utf8_lossy(&m.apps()),
        json!({"apps": [app("/a", "10.0.0.9")]}).to_string()
    );
    task.abort();
}

#[tokio::test]
async fn doubt_about_one_app_reads_everything() {
    let m = Standin::start("127.0.0.1:0".parse().expect("addr")).await;
    m.set_apps(json!({"apps": [app("/a", "10.0.0.1")]}));
    let (mut rx, mut state, task) = start(&m);
    settle(&mut rx, &mut state).await;

    // A garbage answer: the single read is given up, and the full read retried until good.
    m.set_mode(Mode::Garbage);
    m.set_app("/a", Some(app("/a", "10.0.0.7")));
    tokio::time::sleep(Duration::from_millis(200)).await;
    m.set_mode(Mode::Normal);
    match next(&mut rx, "after garbage").await {
        Read::Full(body) => assert_eq!(body.parsed().apps[0].tasks[0].host, "10.0.0.7"),
        other => panic!("a full read was expected: {other:?}"),
    }
    let s = state.borrow().clone();
    assert!(
        s.app_read_fallbacks_total >= 1 && s.bad_bodies_total >= 1,
        "{s:?}"
    );

    // An app whose answer does not parse on its own: a full read reports it as unreadable.
    m.set_app("/a", Some(json!({"id": "/a", "labels": "not a map"})));
    match next(&mut rx, "unparseable app").await {
        Read::Full(body) => assert_eq!(body.parsed().errors.len(), 1, "{body:?}"),
        other => panic!("a full read was expected: {other:?}"),
    }
    task.abort();
}
