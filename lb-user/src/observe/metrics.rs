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
    DescriptorEncoder, EncodeGaugeValue, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::MetricType;
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
            // The registry adds the final full stop.
            "Time from a Marathon event arriving to the BPF maps reflecting it",
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
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
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
    samples: impl Iterator<Item = (Labels<'a>, u64)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
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

fn gauge<N: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: N,
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
            snap.services.iter().map(|s| {
                let mut labels = service_labels(s);
                labels.push(("listen", Escaped(&s.listen)));
                (labels, 1)
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
            backends().map(|(mut labels, b)| {
                labels.push(("state", Escaped(b.state)));
                (labels, 1)
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
            snap.flow_entries,
        )?;
        gauge(
            e,
            "lb_flow_table_capacity",
            "Flows the flow table can hold.",
            None,
            snap.flow_capacity,
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
            snap.interfaces_attached,
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
            u64::from(m.connected),
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn now_unix() -> f64 {
        unix(SystemTime::now())
    }

    fn backend(address: &str, state: &'static str, n: u64) -> BackendSample {
        BackendSample {
            address: address.to_owned(),
            state,
            packets: n,
            bytes: n * 100,
            new_flows: n / 10,
        }
    }

    fn service(name: &str, app: &str, port: u16, backends: Vec<BackendSample>) -> ServiceSample {
        ServiceSample {
            service: name.to_owned(),
            app: app.to_owned(),
            listen: format!("*:{port}/tcp"),
            packets: backends.iter().map(|b| b.packets).sum(),
            bytes: backends.iter().map(|b| b.bytes).sum(),
            new_flows: backends.iter().map(|b| b.new_flows).sum(),
            backends,
        }
    }

    fn snapshot() -> Snapshot {
        Snapshot {
            services: vec![
                service(
                    "nginx_10000",
                    "/nginx",
                    10000,
                    vec![
                        backend("192.168.1.11:80", "active", 70),
                        backend("192.168.1.12:80", "draining", 30),
                    ],
                ),
                service(
                    "dns_53",
                    "",
                    53,
                    vec![backend("192.168.1.13:53", "active", 5)],
                ),
            ],
            dataplane: vec![
                (NAT_PORTS_EXHAUSTED.to_owned(), 3),
                ("drop_no_backend".to_owned(), 9),
            ],
            flow_entries: 12,
            flow_capacity: 65536,
            flow_evictions: 4,
            interfaces_attached: 2,
            marathon: Some(MarathonSample {
                requests_total: 17,
                request_errors_total: 2,
                stream_reconnects_total: 1,
                events_total: 40,
                last_event_unix: Some(now_unix() - 30.0),
                last_sync_unix: None,
                connected: true,
            }),
        }
    }

    /// The value of the one sample line that starts with `series` (name and labels).
    fn sample(text: &str, series: &str) -> Option<String> {
        let mut hits = text
            .lines()
            .filter_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(str::to_owned);
        let hit = hits.next();
        assert!(hits.next().is_none(), "{series} appears twice in:\n{text}");
        hit
    }

    fn assert_sample(text: &str, series: &str, want: &str) {
        assert_eq!(
            sample(text, series).as_deref(),
            Some(want),
            "{series} in:\n{text}"
        );
    }

    #[test]
    fn render_exposes_published_snapshot_with_labels() {
        let m = Metrics::new();
        m.publish(snapshot());
        let t = m.render();
        let nginx = r#"service="nginx_10000",app="/nginx""#;
        let b11 = format!(r#"{nginx},backend="192.168.1.11:80""#);
        let b12 = format!(r#"{nginx},backend="192.168.1.12:80""#);
        for (series, want) in [
            (format!("lb_service_packets_total{{{nginx}}}"), "100"),
            (format!("lb_service_bytes_total{{{nginx}}}"), "10000"),
            (format!("lb_service_new_flows_total{{{nginx}}}"), "10"),
            (
                r#"lb_service_packets_total{service="dns_53",app=""}"#.to_owned(),
                "5",
            ),
            (
                format!(r#"lb_service_info{{{nginx},listen="*:10000/tcp"}}"#),
                "1",
            ),
            (format!("lb_backend_packets_total{{{b11}}}"), "70"),
            (format!("lb_backend_bytes_total{{{b12}}}"), "3000"),
            (format!("lb_backend_new_flows_total{{{b11}}}"), "7"),
            (format!(r#"lb_backend_state{{{b11},state="active"}}"#), "1"),
            (
                format!(r#"lb_backend_state{{{b12},state="draining"}}"#),
                "1",
            ),
            (
                r#"lb_dataplane_events_total{cause="drop_nat_ports_exhausted"}"#.to_owned(),
                "3",
            ),
            (
                r#"lb_dataplane_events_total{cause="drop_no_backend"}"#.to_owned(),
                "9",
            ),
            ("lb_nat_port_allocation_failures_total".to_owned(), "3"),
            ("lb_flow_table_entries".to_owned(), "12"),
            ("lb_flow_table_capacity".to_owned(), "65536"),
            ("lb_flow_table_evictions_total".to_owned(), "4"),
            ("lb_interfaces_attached".to_owned(), "2"),
            ("lb_marathon_requests_total".to_owned(), "17"),
            ("lb_marathon_request_errors_total".to_owned(), "2"),
            ("lb_marathon_stream_reconnects_total".to_owned(), "1"),
            ("lb_marathon_events_total".to_owned(), "40"),
            ("lb_marathon_connected".to_owned(), "1"),
        ] {
            assert_sample(&t, &series, want);
        }
        assert!(
            t.contains("# TYPE lb_service_packets counter\n"),
            "counter type in:\n{t}"
        );
        assert!(
            t.contains("# TYPE lb_flow_table_entries gauge\n"),
            "gauge type in:\n{t}"
        );

        let age: f64 = sample(&t, "lb_marathon_last_event_age_seconds")
            .unwrap_or_else(|| panic!("no event age in:\n{t}"))
            .parse()
            .expect("event age is a number");
        assert!(
            (29.0..60.0).contains(&age),
            "event age {age} should be about 30 s"
        );
        // Never synced: the age is absent, not 0 or infinite.
        assert!(
            !t.contains("lb_marathon_last_sync_age"),
            "sync age without a sync:\n{t}"
        );
        let snap_age: f64 = sample(&t, "lb_snapshot_age_seconds")
            .unwrap_or_else(|| panic!("no snapshot age in:\n{t}"))
            .parse()
            .expect("snapshot age is a number");
        assert!(
            (0.0..10.0).contains(&snap_age),
            "snapshot age {snap_age} just published"
        );
        assert!(
            t.ends_with("# EOF\n"),
            "OpenMetrics needs the EOF marker:\n{t}"
        );
    }

    #[test]
    fn nothing_from_snapshots_before_the_first_publish() {
        let t = Metrics::new().render();
        assert!(
            !t.contains("lb_service"),
            "service series before any sweep:\n{t}"
        );
        assert!(
            !t.contains("lb_flow_table"),
            "flow series before any sweep:\n{t}"
        );
        assert_sample(&t, "lb_event_to_map_seconds_count", "0");
    }

    #[test]
    fn gone_services_and_backends_disappear() {
        let m = Metrics::new();
        m.publish(snapshot());
        assert!(m.render().contains("dns_53"), "dns_53 first published");

        let mut next = snapshot();
        next.services.retain(|s| s.service != "dns_53");
        next.services[0].backends.retain(|b| b.state == "active");
        next.marathon = None;
        m.publish(next);
        let t = m.render();
        assert!(
            !t.contains("dns_53"),
            "dns_53 is gone but still exported:\n{t}"
        );
        assert!(
            !t.contains("192.168.1.12:80"),
            "drained backend still exported:\n{t}"
        );
        assert!(
            !t.contains("lb_marathon_"),
            "Marathon series without Marathon:\n{t}"
        );
        assert_sample(
            &t,
            r#"lb_backend_packets_total{service="nginx_10000",app="/nginx",backend="192.168.1.11:80"}"#,
            "70",
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new();
        m.publish(Snapshot {
            services: vec![service("odd", "/a\"b\\c\nd", 1, vec![])],
            ..Snapshot::default()
        });
        let t = m.render();
        assert_sample(
            &t,
            r#"lb_service_packets_total{service="odd",app="/a\"b\\c\nd"}"#,
            "0",
        );
    }

    #[test]
    fn histogram_buckets_count_observations() {
        let m = Metrics::new();
        for ms in [0.5, 80.0, 100.0, 200.0, 10_000.0] {
            m.observe_event_to_map(Duration::from_secs_f64(ms / 1000.0));
        }
        let t = m.render();
        assert!(
            t.contains("# TYPE lb_event_to_map_seconds histogram\n"),
            "type in:\n{t}"
        );
        assert!(
            t.contains("# UNIT lb_event_to_map_seconds seconds\n"),
            "unit in:\n{t}"
        );
        for (le, want) in [
            ("0.001", "1"),
            ("0.075", "1"),
            ("0.1", "3"),
            ("0.25", "4"),
            ("5.0", "4"),
            ("+Inf", "5"),
        ] {
            assert_sample(
                &t,
                &format!(r#"lb_event_to_map_seconds_bucket{{le="{le}"}}"#),
                want,
            );
        }
        assert_sample(&t, "lb_event_to_map_seconds_count", "5");
        let sum: f64 = sample(&t, "lb_event_to_map_seconds_sum")
            .expect("histogram has a sum")
            .parse()
            .expect("sum is a number");
        assert!((sum - 10.3805).abs() < 1e-6, "sum {sum}");
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
        let server = tokio::spawn(serve(listener, metrics.clone(), rx));

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
