//! Prometheus metrics (`/metrics`) and the health check (`/healthz`) of the daemon.
//! The daemon publishes absolute snapshots of its BPF counters; a scrape encodes the latest one.

use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tokio::sync::watch;

/// What `/metrics` answers with: OpenMetrics text, as prometheus-client writes it.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of `lb_event_to_map_seconds`, dense around the 100 ms target so that a
/// quantile near it is read from neighbouring buckets, and up to 5 s to see outliers.
pub const EVENT_TO_MAP_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The cause whose count also feeds `lb_nat_port_allocation_failures_total`.
pub const NAT_PORTS_EXHAUSTED: &str = "drop_nat_ports_exhausted";

/// One backend of a service, with the BPF counters summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BackendSample {
    /// `ip:port`, e.g. `192.168.1.11:80`.
    pub address: String,
    /// `active` or `draining`.
    pub state: &'static str,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

/// One service (a listening port) with its backends.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceSample {
    /// e.g. `nginx_10000`.
    pub service: String,
    /// Marathon app id (`/nginx`), or empty for services not from Marathon.
    pub app: String,
    /// e.g. `*:10000/tcp`.
    pub listen: String,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub backends: Vec<BackendSample>,
}

/// The Marathon client's own counters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MarathonSample {
    pub requests_total: u64,
    pub request_errors_total: u64,
    pub stream_reconnects_total: u64,
    pub events_total: u64,
    /// When the last event arrived (Unix seconds); `None` if none yet.
    pub last_event_unix: Option<f64>,
    /// When the last full sync succeeded (Unix seconds); `None` if none yet.
    pub last_sync_unix: Option<f64>,
    pub connected: bool,
}

/// Everything the daemon knows at one moment; counters are absolute (monotonic) values.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub services: Vec<ServiceSample>,
    /// Data-plane drops and errors by cause, e.g. (`drop_nat_ports_exhausted`, 3).
    pub dataplane: Vec<(String, u64)>,
    pub flow_entries: u64,
    /// In flows, not bytes.
    pub flow_capacity: u64,
    pub flow_evictions: u64,
    pub interfaces_attached: u64,
    /// `None` when the daemon runs without Marathon.
    pub marathon: Option<MarathonSample>,
}

/// The latest snapshot and when it was published; shared by [`Metrics`] and its collector.
/// A lock rather than a channel: a scrape only ever wants the newest value, and holds the
/// lock just long enough to clone an `Arc`.
#[derive(Debug, Default)]
struct Latest(Mutex<Option<(Arc<Snapshot>, SystemTime)>>);

impl Latest {
    fn get(&self) -> Option<(Arc<Snapshot>, SystemTime)> {
        // A panic elsewhere while holding the lock leaves a whole value behind: keep serving.
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, snap: Snapshot, at: SystemTime) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some((Arc::new(snap), at));
    }
}

/// The daemon's metrics. `Send + Sync`; share it through an `Arc`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    latest: Arc<Latest>,
    event_to_map: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let latest = Arc::new(Latest::default());
        let event_to_map = Histogram::new(EVENT_TO_MAP_BUCKETS);
        let mut registry = Registry::default();
        registry.register_collector(Box::new(SnapshotCollector(latest.clone())));
        registry.register_with_unit(
            "lb_event_to_map",
            "Time from a Marathon event arriving to the BPF maps reflecting it.",
            Unit::Seconds,
            event_to_map.clone(),
        );
        Self {
            registry,
            latest,
            event_to_map,
        }
    }

    /// Replaces the current snapshot; series of services absent from `snap` disappear.
    pub fn publish(&self, snap: Snapshot) {
        self.latest.set(snap, SystemTime::now());
    }

    /// Records one event-to-map latency.
    pub fn observe_event_to_map(&self, d: Duration) {
        self.event_to_map.observe(d.as_secs_f64());
    }

    /// The OpenMetrics text exposition, ages computed now.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Our encoders only fail when the writer does, and a String never does.
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding metrics into a String cannot fail");
        out
    }
}

/// Encodes the latest snapshot at scrape time, so counters carry the BPF maps' absolute
/// values (prometheus-client's `Counter` can only add) and gone services leave no series.
#[derive(Debug)]
struct SnapshotCollector(Arc<Latest>);

/// A label value escaped for the text format: prometheus-client 0.24 writes label values
/// verbatim, and a `"` or newline in an app id would break the whole scrape.
struct Escaped<'a>(&'a str);

impl EncodeLabelValue for Escaped<'_> {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

type Labels<'a> = Vec<(&'static str, Escaped<'a>)>;

/// Writes one counter family, one sample per `(labels, value)`.
fn counter_family<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl Iterator<Item = (Labels<'a>, u64)>,
) -> fmt::Result {
    let mut family =
        encoder.encode_descriptor(name, help, None, ConstCounter::<u64>::new(0).metric_type())?;
    for (labels, value) in samples {
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Writes one gauge family, one sample per `(labels, value)`.
fn gauge_family<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: impl Iterator<Item = (Labels<'a>, f64)>,
) -> fmt::Result {
    let mut family =
        encoder.encode_descriptor(name, help, unit, ConstGauge::<f64>::new(0.0).metric_type())?;
    for (labels, value) in samples {
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn service_labels(s: &ServiceSample) -> Labels<'_> {
    vec![("service", Escaped(&s.service)), ("app", Escaped(&s.app))]
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: f64,
) -> fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, unit, metric.metric_type())?)
}

/// Seconds from `then` (Unix seconds) to `now`; never negative, so a clock stepping back
/// does not produce an age an alert would misread.
fn age(now: SystemTime, then_unix: f64) -> f64 {
    (unix(now) - then_unix).max(0.0)
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        // Before the first sweep there is nothing true to say: zeros would look like a
        // balancer that passes no traffic.
        let Some((snap, published)) = self.0.get() else {
            return Ok(());
        };
        let now = SystemTime::now();
        let e = &mut encoder;

        gauge(
            e,
            "lb_snapshot_age",
            "Time since the daemon last published its counters (a stuck sweep shows here).",
            Some(&Unit::Seconds),
            now.duration_since(published)
                .map_or(0.0, |d| d.as_secs_f64()),
        )?;

        gauge_family(
            e,
            "lb_service_info",
            "Services being balanced, with what they listen on; always 1.",
            None,
            snap.services.iter().map(|s| {
                let mut labels = service_labels(s);
                labels.push(("listen", Escaped(&s.listen)));
                (labels, 1.0)
            }),
        )?;
        type Field = fn(&ServiceSample) -> u64;
        let service_counters: [(&str, &str, Field); 3] = [
            (
                "lb_service_packets",
                "Packets balanced for the service.",
                |s| s.packets,
            ),
            ("lb_service_bytes", "Bytes balanced for the service.", |s| {
                s.bytes
            }),
            (
                "lb_service_new_flows",
                "Flows the service has seen start.",
                |s| s.new_flows,
            ),
        ];
        for (name, help, field) in service_counters {
            counter_family(
                e,
                name,
                help,
                snap.services.iter().map(|s| (service_labels(s), field(s))),
            )?;
        }

        let backends = || {
            snap.services.iter().flat_map(move |s| {
                s.backends.iter().map(move |b| {
                    let mut labels = service_labels(s);
                    labels.push(("backend", Escaped(&b.address)));
                    (labels, b)
                })
            })
        };
        // The state is its own series rather than a label on the counters: a backend that
        // starts draining keeps one continuous counter series, so rate() does not break.
        gauge_family(
            e,
            "lb_backend_state",
            "Backends of each service; 1 for the state the backend is in (active, draining).",
            None,
            backends().map(|(mut labels, b)| {
                labels.push(("state", Escaped(b.state)));
                (labels, 1.0)
            }),
        )?;
        type BackendField = fn(&BackendSample) -> u64;
        let backend_counters: [(&str, &str, BackendField); 3] = [
            ("lb_backend_packets", "Packets sent to the backend.", |b| {
                b.packets
            }),
            ("lb_backend_bytes", "Bytes sent to the backend.", |b| {
                b.bytes
            }),
            (
                "lb_backend_new_flows",
                "Flows assigned to the backend.",
                |b| b.new_flows,
            ),
        ];
        for (name, help, field) in backend_counters {
            counter_family(
                e,
                name,
                help,
                backends().map(|(labels, b)| (labels, field(b))),
            )?;
        }

        counter_family(
            e,
            "lb_dataplane_events",
            "Data-plane drops and errors by cause.",
            snap.dataplane
                .iter()
                .map(|(cause, n)| (vec![("cause", Escaped(cause))], *n)),
        )?;
        counter(
            e,
            "lb_nat_port_allocation_failures",
            "New flows dropped because no NAT source port was free.",
            snap.dataplane
                .iter()
                .filter(|(cause, _)| cause == NAT_PORTS_EXHAUSTED)
                .map(|(_, n)| n)
                .sum(),
        )?;
        gauge(
            e,
            "lb_flow_table_entries",
            "Flows in the flow table.",
            None,
            snap.flow_entries as f64,
        )?;
        gauge(
            e,
            "lb_flow_table_capacity",
            "Flows the flow table can hold.",
            None,
            snap.flow_capacity as f64,
        )?;
        counter(
            e,
            "lb_flow_table_evictions",
            "Flows evicted from the flow table to make room.",
            snap.flow_evictions,
        )?;
        gauge(
            e,
            "lb_interfaces_attached",
            "Interfaces the XDP program is attached to.",
            None,
            snap.interfaces_attached as f64,
        )?;

        let Some(m) = &snap.marathon else {
            return Ok(());
        };
        counter(
            e,
            "lb_marathon_requests",
            "Requests made to Marathon's REST API.",
            m.requests_total,
        )?;
        counter(
            e,
            "lb_marathon_request_errors",
            "Requests to Marathon that failed (transport error or bad status).",
            m.request_errors_total,
        )?;
        counter(
            e,
            "lb_marathon_stream_reconnects",
            "Times the Marathon event stream was reopened.",
            m.stream_reconnects_total,
        )?;
        counter(
            e,
            "lb_marathon_events",
            "Events received from Marathon's event stream.",
            m.events_total,
        )?;
        gauge(
            e,
            "lb_marathon_connected",
            "1 while the Marathon event stream is open.",
            None,
            if m.connected { 1.0 } else { 0.0 },
        )?;
        // Absent rather than 0 or +Inf until the first one: "never" is not a duration.
        if let Some(t) = m.last_event_unix {
            gauge(
                e,
                "lb_marathon_last_event_age",
                "Time since the last event from Marathon.",
                Some(&Unit::Seconds),
                age(now, t),
            )?;
        }
        if let Some(t) = m.last_sync_unix {
            gauge(
                e,
                "lb_marathon_last_sync_age",
                "Time since the last successful full sync with Marathon.",
                Some(&Unit::Seconds),
                age(now, t),
            )?;
        }
        Ok(())
    }
}

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

/// Serves `GET /metrics` and `GET /healthz` on `listener` until the task is dropped;
/// everything else is 404.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: watch::Receiver<Health>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(get_metrics))
        .route("/healthz", get(get_healthz))
        .fallback(not_found)
        // A POST to /metrics is just as unknown to us as any other request.
        .method_not_allowed_fallback(not_found)
        .with_state(AppState { metrics, health });
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
