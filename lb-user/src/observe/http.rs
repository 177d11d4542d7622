//! The metrics listener: `GET /metrics` (the exposition) and `GET /healthz` (the daemon's
//! verdict on itself), everything else 404.
use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::sync::watch;

use super::{
    metrics::{CONTENT_TYPE, Metrics},
    state::unix,
};

/// What `/healthz` judges by; the daemon updates it through a `watch` channel.
#[derive(Clone, Debug)]
pub struct Health {
    /// The data plane is loaded and attached.
    pub attached: bool,
    /// When the last sync (Marathon or file) succeeded, Unix seconds.
    pub last_sync_ok_unix: Option<f64>,
    /// The daemon's last error, already redacted; shown as the reason when unhealthy.
    pub last_error: Option<String>,
    /// How old the last successful sync may be before the daemon counts as unhealthy.
    pub sync_max_age: Duration,
}

/// `Ok` when healthy, else a one-line reason.
pub fn check_health(h: &Health, now_unix: f64) -> Result<(), String> {
    let problem = if !h.attached {
        "data plane not attached".to_owned()
    } else {
        match h.last_sync_ok_unix {
            None => "no successful sync yet".to_owned(),
            Some(t) if now_unix - t > h.sync_max_age.as_secs_f64() => format!(
                "last successful sync {:.0}s ago, more than {}s",
                now_unix - t,
                h.sync_max_age.as_secs()
            ),
            Some(_) => return Ok(()),
        }
    };
    let mut reason = match &h.last_error {
        Some(err) => format!("{problem}; last error: {err}"),
        None => problem,
    };
    // One line, whatever the error text holds, so probes and logs show all of it.
    reason.retain(|c| c != '\r');
    Err(reason.replace('\n', " "))
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: watch::Receiver<Health>,
}

/// Serves `GET /metrics`, `GET /healthz` and the routes of `extra` (Mesos-DNS's `/v1` when
/// DNS is on) on `listener` until the task is dropped; everything else is 404.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: watch::Receiver<Health>,
    extra: Router,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(get_metrics))
        .route("/healthz", get(get_healthz))
        .fallback(not_found)
        // A POST to /metrics is just as unknown to us as any other request.
        .method_not_allowed_fallback(not_found)
        .with_state(AppState { metrics, health })
        .merge(extra);
    axum::serve(listener, app).await
}

async fn get_metrics(State(s): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], s.metrics.render()).into_response()
}

async fn get_healthz(State(s): State<AppState>) -> Response {
    let health = s.health.borrow().clone();
    let text = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    match check_health(&health, unix(SystemTime::now())) {
        Ok(()) => (StatusCode::OK, text, "ok\n".to_owned()).into_response(),
        Err(reason) => {
            (StatusCode::SERVICE_UNAVAILABLE, text, format!("{reason}\n")).into_response()
        }
    }
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::observe::metrics::tests::snapshot;

    fn now_unix() -> f64 {
        unix(SystemTime::now())
    }

    fn healthy(now: f64) -> Health {
        Health {
            attached: true,
            last_sync_ok_unix: Some(now - 5.0),
            last_error: None,
            sync_max_age: Duration::from_secs(60),
        }
    }

    #[test]
    fn health_verdicts() {
        let now = 1_000_000.0;
        let h = healthy(now);
        assert_eq!(check_health(&h, now), Ok(()));
        // An old error does not matter once a sync succeeded since.
        let with_error = Health {
            last_error: Some("GET /v2/apps: 502".into()),
            ..h.clone()
        };
        assert_eq!(check_health(&with_error, now), Ok(()));

        let cases = [
            (
                Health {
                    attached: false,
                    ..h.clone()
                },
                "data plane not attached",
            ),
            (
                Health {
                    last_sync_ok_unix: None,
                    ..h.clone()
                },
                "no successful sync yet",
            ),
            (
                Health {
                    last_sync_ok_unix: Some(now - 120.0),
                    ..h.clone()
                },
                "last successful sync 120s ago, more than 60s",
            ),
            (
                Health {
                    last_sync_ok_unix: Some(now - 61.0),
                    last_error: Some("GET http://m:8080/v2/apps:\nrefused".into()),
                    ..h.clone()
                },
                "last successful sync 61s ago, more than 60s; last error: GET http://m:8080/v2/apps: refused",
            ),
        ];
        for (health, want) in cases {
            assert_eq!(
                check_health(&health, now),
                Err(want.to_owned()),
                "{health:?}"
            );
        }
    }

    /// One HTTP/1.0 exchange; returns the status code, the Content-Type and the body.
    async fn request(
        addr: std::net::SocketAddr,
        method: &str,
        path: &str,
    ) -> (u16, String, String) {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream
            .write_all(format!("{method} {path} HTTP/1.0\r\nHost: lb\r\n\r\n").as_bytes())
            .await
            .expect("send request");
        let mut raw = String::new();
        stream
            .read_to_string(&mut raw)
            .await
            .expect("read response");
        let (head, body) = raw
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no header end in {raw:?}"));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {head:?}"));
        let content_type = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-type")
                    .then(|| v.trim().to_owned())
            })
            .unwrap_or_default();
        (status, content_type, body.to_owned())
    }

    #[tokio::test]
    async fn server_answers_metrics_healthz_and_404() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let metrics = Arc::new(Metrics::new());
        metrics.publish(snapshot());
        let (tx, rx) = watch::channel(healthy(now_unix()));
        let server = tokio::spawn(serve(listener, metrics.clone(), rx, Router::new()));

        let (status, content_type, body) = request(addr, "GET", "/metrics").await;
        assert_eq!(status, 200, "/metrics: {body}");
        assert_eq!(content_type, CONTENT_TYPE);
        assert!(
            body.contains("lb_service_packets_total{"),
            "/metrics body:\n{body}"
        );
        assert!(body.ends_with("# EOF\n"), "/metrics body:\n{body}");

        assert_eq!(
            request(addr, "GET", "/healthz").await,
            (200, "text/plain; charset=utf-8".into(), "ok\n".into())
        );

        let unhealthy = [
            (
                Health {
                    attached: false,
                    ..healthy(now_unix())
                },
                "data plane not attached",
            ),
            (
                Health {
                    last_sync_ok_unix: Some(now_unix() - 3600.0),
                    ..healthy(now_unix())
                },
                "last successful sync",
            ),
            (
                Health {
                    last_sync_ok_unix: None,
                    last_error: Some("marathon unreachable".into()),
                    ..healthy(now_unix())
                },
                "no successful sync yet; last error: marathon unreachable",
            ),
        ];
        for (health, reason) in unhealthy {
            tx.send(health.clone()).expect("server holds the receiver");
            let (status, _, body) = request(addr, "GET", "/healthz").await;
            assert_eq!(status, 503, "{health:?} gave {body}");
            assert!(
                body.starts_with(reason),
                "{health:?}: reason {body:?}, want {reason:?}"
            );
            assert_eq!(body.lines().count(), 1, "reason on one line: {body:?}");
        }

        tx.send(healthy(now_unix()))
            .expect("server holds the receiver");
        assert_eq!(
            request(addr, "GET", "/healthz").await.0,
            200,
            "healthy again"
        );

        for (method, path) in [
            ("GET", "/"),
            ("GET", "/metrics/x"),
            ("GET", "/health"),
            ("POST", "/metrics"),
        ] {
            let (status, _, body) = request(addr, method, path).await;
            assert_eq!(status, 404, "{method} {path}: {body}");
        }

        assert!(!server.is_finished(), "server stopped: {server:?}");
        server.abort();
    }
}
