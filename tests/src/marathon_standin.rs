//! A Marathon stand-in for tests and the demo: serves `/v2/apps`, `/v2/apps/{id}` and a live
//! `/v2/events` SSE stream, and can be told to fail, stall, redirect, answer garbage or demand
//! credentials.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::{broadcast, mpsc, watch};

/// How the stand-in misbehaves.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Normal,
    /// `/v2/apps`, `/v2/apps/{id}` and new `/v2/events` requests answer this status (500, 502, 503...).
    Fail(u16),
    /// `/v2/apps` and `/v2/apps/{id}` accept the request and never answer.
    StallApps,
    /// Event streams (open and new) send nothing at all: no events, no heartbeats.
    StallEvents,
    /// Every request is answered `302` to the same path and query under this base URL.
    Redirect(String),
    /// `/v2/apps` and `/v2/apps/{id}` answer `200` with a body that is not JSON.
    Garbage,
}

/// Credentials the stand-in demands (`401` otherwise).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RequireAuth {
    #[default]
    None,
    Basic {
        user: String,
        password: String,
    },
    /// DC/OS style `Authorization: token=<TOKEN>`.
    Token(String),
}

impl RequireAuth {
    fn accepts(&self, header: Option<&HeaderValue>) -> bool {
        let got = header.and_then(|h| h.to_str().ok());
        match self {
            RequireAuth::None => true,
            RequireAuth::Basic { user, password } => {
                got == Some(&format!(
                    "Basic {}",
                    base64(format!("{user}:{password}").as_bytes())
                ))
            }
            RequireAuth::Token(token) => got == Some(&format!("token={token}")),
        }
    }
}

fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

#[derive(Default)]
struct Counters {
    apps_requests: AtomicU64,
    app_requests: AtomicU64,
    apps_served: AtomicU64,
    event_connections: AtomicU64,
    events_emitted: AtomicU64,
    events_sent: AtomicU64,
    unauthorized: AtomicU64,
}

/// The apps Marathon has: the document `/v2/apps` serves, and each app by id for `/v2/apps/{id}`.
#[derive(Default)]
struct Apps {
    /// The document as served; rebuilt from `by_id` after `set_app`.
    doc: Bytes,
    order: Vec<String>,
    by_id: HashMap<String, Bytes>,
    stale: bool,
}

impl Apps {
    fn set_doc(&mut self, json: &serde_json::Value) {
        self.doc = Bytes::from(json.to_string());
        self.order.clear();
        self.by_id.clear();
        self.stale = false;
        for app in json["apps"].as_array().into_iter().flatten() {
            if let Some(id) = app["id"].as_str() {
                self.order.push(id.to_owned());
                self.by_id
                    .insert(id.to_owned(), Bytes::from(app.to_string()));
            }
        }
    }

    fn set_app(&mut self, id: &str, app: Option<&serde_json::Value>) {
        match app {
            Some(app) => {
                if self
                    .by_id
                    .insert(id.to_owned(), Bytes::from(app.to_string()))
                    .is_none()
                {
                    self.order.push(id.to_owned());
                }
            }
            None => {
                self.by_id.remove(id);
                self.order.retain(|o| o != id);
            }
        }
        self.stale = true;
    }

    fn doc(&mut self) -> Bytes {
        if self.stale {
            let mut doc = Vec::with_capacity(self.doc.len() + 1024);
            doc.extend_from_slice(b"{\"apps\":[");
            for (i, id) in self.order.iter().enumerate() {
                if i > 0 {
                    doc.push(b',');
                }
                doc.extend_from_slice(&self.by_id[id]);
            }
            doc.extend_from_slice(b"]}");
            self.doc = Bytes::from(doc);
            self.stale = false;
        }
        self.doc.clone()
    }
}

struct Inner {
    apps: Mutex<Apps>,
    mode: watch::Sender<Mode>,
    auth: watch::Sender<RequireAuth>,
    events: broadcast::Sender<Bytes>,
    heartbeat: Duration,
    shutdown: watch::Sender<bool>,
    /// Bumped to end every open event stream (as a Marathon leader change does).
    streams_epoch: watch::Sender<u64>,
    counters: Counters,
}

/// A running stand-in; stops serving when dropped.
pub struct Standin {
    inner: Arc<Inner>,
    addr: SocketAddr,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Standin {
    /// Serves on `addr` (port 0 picks a free port) with a heartbeat every 250 ms.
    pub async fn start(addr: SocketAddr) -> Self {
        Self::start_with(addr, Duration::from_millis(250)).await
    }

    /// Serves on `addr`, sending a heartbeat (`\r\n`) on every event stream each `heartbeat`.
    pub async fn start_with(addr: SocketAddr, heartbeat: Duration) -> Self {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("stand-in cannot bind {addr}: {e}"));
        let addr = listener
            .local_addr()
            .expect("bound listener has an address");
        let inner = Arc::new(Inner {
            apps: Mutex::new(Apps {
                doc: Bytes::from_static(br#"{"apps":[]}"#),
                ..Apps::default()
            }),
            mode: watch::Sender::new(Mode::Normal),
            auth: watch::Sender::new(RequireAuth::None),
            events: broadcast::channel(1024).0,
            heartbeat,
            shutdown: watch::Sender::new(false),
            streams_epoch: watch::Sender::new(0),
            counters: Counters::default(),
        });
        let app = Router::new()
            .route("/v2/apps", get(apps))
            .route("/v2/apps/{*id}", get(app))
            .route("/v2/events", get(events))
            .with_state(Arc::clone(&inner));
        let mut stop = inner.shutdown.subscribe();
        let server = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                eprintln!("marathon stand-in on {addr}: {e}");
            }
        });
        Self {
            inner,
            addr,
            server: Some(server),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces the `/v2/apps` document and announces it with an `api_post_event`.
    pub fn set_apps(&self, json: serde_json::Value) {
        self.inner.apps.lock().expect("apps lock").set_doc(&json);
        self.emit("api_post_event", serde_json::json!({"eventType": "api_post_event", "timestamp": "2015-09-30T12:44:30.061Z"}));
    }

    /// Replaces (`Some`) or deletes (`None`) one app, and announces it as Marathon does: a
    /// `status_update_event` naming the app (a task of it changed), or `app_terminated_event`.
    pub fn set_app(&self, id: &str, app: Option<serde_json::Value>) {
        self.inner
            .apps
            .lock()
            .expect("apps lock")
            .set_app(id, app.as_ref());
        let ts = "2015-09-30T12:44:45.681Z";
        match app {
            Some(_) => self.emit(
                "status_update_event",
                serde_json::json!({"taskStatus": "TASK_RUNNING", "appId": id, "eventType": "status_update_event", "timestamp": ts}),
            ),
            None => self.emit(
                "app_terminated_event",
                serde_json::json!({"appId": id, "eventType": "app_terminated_event", "timestamp": ts}),
            ),
        }
    }

    /// The document `/v2/apps` serves now.
    pub fn apps(&self) -> Bytes {
        self.inner.apps.lock().expect("apps lock").doc()
    }

    /// Sends `event: <event_type>` with `data` as one JSON line to every open event stream.
    pub fn emit(&self, event_type: &str, data: serde_json::Value) {
        self.emit_raw(format!("event: {event_type}\r\ndata: {data}\r\n\r\n").into_bytes());
    }

    /// Sends bytes as they are to every open event stream (for unusual framing).
    pub fn emit_raw(&self, frame: impl Into<Bytes>) {
        self.inner
            .counters
            .events_emitted
            .fetch_add(1, Ordering::Relaxed);
        // No receiver (no stream open) is fine: the event is lost, as with Marathon.
        let _ = self.inner.events.send(frame.into());
    }

    pub fn set_mode(&self, mode: Mode) {
        self.inner.mode.send_replace(mode);
    }

    /// Ends every open event stream, as Marathon does when its leader changes; new streams
    /// are served as before.
    pub fn end_event_streams(&self) {
        self.inner.streams_epoch.send_modify(|e| *e += 1);
    }

    pub fn require_auth(&self, auth: RequireAuth) {
        self.inner.auth.send_replace(auth);
    }

    /// Event frames written to streams (one per stream per event; not heartbeats nor the greeting).
    pub fn events_sent(&self) -> u64 {
        self.inner.counters.events_sent.load(Ordering::Relaxed)
    }

    /// Calls of `emit`/`emit_raw`/`set_apps`.
    pub fn events_emitted(&self) -> u64 {
        self.inner.counters.events_emitted.load(Ordering::Relaxed)
    }

    /// `/v2/apps` requests received, whatever the answer.
    pub fn requests(&self) -> u64 {
        self.inner.counters.apps_requests.load(Ordering::Relaxed)
    }

    /// `/v2/apps/{id}` requests received, whatever the answer.
    pub fn app_requests(&self) -> u64 {
        self.inner.counters.app_requests.load(Ordering::Relaxed)
    }

    /// `/v2/apps` requests answered 200 with the current document.
    pub fn apps_served(&self) -> u64 {
        self.inner.counters.apps_served.load(Ordering::Relaxed)
    }

    /// `/v2/events` requests received, whatever the answer.
    pub fn event_connections(&self) -> u64 {
        self.inner
            .counters
            .event_connections
            .load(Ordering::Relaxed)
    }

    /// Requests refused for missing or wrong credentials.
    pub fn unauthorized(&self) -> u64 {
        self.inner.counters.unauthorized.load(Ordering::Relaxed)
    }

    /// Stops accepting connections, ends open streams and waits until the server is gone, so
    /// later connections are refused.
    pub async fn stop(mut self) {
        self.inner.shutdown.send_replace(true);
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        }
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        self.inner.shutdown.send_replace(true);
    }
}

/// Authentication and redirects, shared by both endpoints; `Some` is the answer to send instead.
fn gate(inner: &Inner, headers: &HeaderMap, uri: &Uri) -> Option<Response> {
    if let Mode::Redirect(base) = &*inner.mode.borrow() {
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let location = format!("{}{}", base.trim_end_matches('/'), path);
        return Some((StatusCode::FOUND, [(header::LOCATION, location)]).into_response());
    }
    if !inner
        .auth
        .borrow()
        .accepts(headers.get(header::AUTHORIZATION))
    {
        inner.counters.unauthorized.fetch_add(1, Ordering::Relaxed);
        return Some(
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Basic realm=\"Mesosphere\"")],
                "unauthorized",
            )
                .into_response(),
        );
    }
    None
}

async fn apps(State(inner): State<Arc<Inner>>, headers: HeaderMap, uri: Uri) -> Response {
    inner.counters.apps_requests.fetch_add(1, Ordering::Relaxed);
    if let Some(answer) = misbehave(&inner, &headers, &uri).await {
        return answer;
    }
    inner.counters.apps_served.fetch_add(1, Ordering::Relaxed);
    let body = inner.apps.lock().expect("apps lock").doc();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `GET /v2/apps/{id}` as Marathon answers it: `{"app": {...}}` (tasks included, as with
/// `embed=app.tasks`), or 404 with a message when there is no such app.
async fn app(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    inner.counters.app_requests.fetch_add(1, Ordering::Relaxed);
    if let Some(answer) = misbehave(&inner, &headers, &uri).await {
        return answer;
    }
    let id = format!("/{}", id.trim_start_matches('/'));
    let app = inner
        .apps
        .lock()
        .expect("apps lock")
        .by_id
        .get(&id)
        .cloned();
    match app {
        Some(app) => {
            let mut body = Vec::with_capacity(app.len() + 8);
            body.extend_from_slice(b"{\"app\":");
            body.extend_from_slice(&app);
            body.push(b'}');
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!({"message": format!("App '{id}' does not exist")}).to_string(),
        )
            .into_response(),
    }
}

/// What both app reads answer instead of the apps when the stand-in is told to misbehave.
async fn misbehave(inner: &Inner, headers: &HeaderMap, uri: &Uri) -> Option<Response> {
    if let Some(answer) = gate(inner, headers, uri) {
        return Some(answer);
    }
    let mode = inner.mode.borrow().clone();
    match mode {
        Mode::Fail(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Some((status, "{\"message\":\"stand-in told to fail\"}").into_response())
        }
        Mode::StallApps => {
            // Never answers; only shutdown ends it, so the server can still stop.
            let _ = inner
                .shutdown
                .subscribe()
                .wait_for(|stopped| *stopped)
                .await;
            Some(StatusCode::SERVICE_UNAVAILABLE.into_response())
        }
        Mode::Garbage => Some(
            (
                [(header::CONTENT_TYPE, "application/json")],
                "<html>this is not json",
            )
                .into_response(),
        ),
        Mode::Normal | Mode::StallEvents | Mode::Redirect(_) => None,
    }
}

async fn events(State(inner): State<Arc<Inner>>, headers: HeaderMap, uri: Uri) -> Response {
    inner
        .counters
        .event_connections
        .fetch_add(1, Ordering::Relaxed);
    if let Some(answer) = gate(&inner, &headers, &uri) {
        return answer;
    }
    if let Mode::Fail(code) = *inner.mode.borrow() {
        return StatusCode::from_u16(code)
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            .into_response();
    }
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let mut feed = inner.events.subscribe();
    let mut stop = inner.shutdown.subscribe();
    let mut epoch = inner.streams_epoch.subscribe();
    epoch.mark_unchanged();
    let stream_inner = Arc::clone(&inner);
    tokio::spawn(async move {
        let inner = stream_inner;
        let stalled = || *inner.mode.borrow() == Mode::StallEvents;
        if !stalled() {
            let hello = b"event: event_stream_attached\r\ndata: {\"remoteAddress\":\"127.0.0.1\",\"eventType\":\"event_stream_attached\"}\r\n\r\n";
            if tx.send(Bytes::from_static(hello)).await.is_err() {
                return;
            }
        }
        let mut heartbeat = tokio::time::interval(inner.heartbeat);
        heartbeat.tick().await;
        loop {
            let frame = tokio::select! {
                _ = heartbeat.tick() => Bytes::from_static(b"\r\n"),
                event = feed.recv() => match event {
                    Ok(frame) => {
                        if !stalled() {
                            inner.counters.events_sent.fetch_add(1, Ordering::Relaxed);
                        }
                        frame
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = stop.wait_for(|stopped| *stopped) => return,
                _ = epoch.changed() => return,
                () = tx.closed() => return,
            };
            if !stalled() && tx.send(frame).await.is_err() {
                return;
            }
        }
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|frame| (Ok::<_, Infallible>(frame), rx))
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_vectors() {
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(b"fooba"), "Zm9vYmE=");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
    }
}
