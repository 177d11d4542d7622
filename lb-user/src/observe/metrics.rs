//! The daemon's metrics: the latest observation of the data plane (`Snapshot`, published at
//! every sweep) and the event-to-map histogram, in a prometheus-client registry. The
//! exposition is in `exposition`, the HTTP endpoints in `http`.
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime},
};

use prometheus_client::{
    metrics::histogram::Histogram,
    registry::{Registry, Unit},
};

use super::{
    exposition::SnapshotCollector,
    view::{FlowTableView, ServiceView, StatusView},
};
use crate::marathon::controller::SyncState;

/// What `/metrics` answers with: OpenMetrics text, as prometheus-client writes it.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of `lb_event_to_map_seconds`, dense around the 100 ms target so that a
/// quantile near it is read from neighbouring buckets, and up to 5 s to see outliers.
pub const EVENT_TO_MAP_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Everything the daemon knows at one moment; counters are absolute (monotonic) values.
/// Services are the observation's own (`view::ServiceView`), Marathon's counters the
/// controller's own (`SyncState`): nothing is copied into a shape of its own.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub services: Vec<ServiceView>,
    /// Data-plane drops, errors and passes by cause, e.g. (`drop_nat_ports_exhausted`, 3).
    pub dataplane: BTreeMap<String, u64>,
    pub flow_table: FlowTableView,
    pub interfaces_attached: u64,
    /// `None` when the daemon runs without Marathon.
    pub marathon: Option<SyncState>,
}

impl Snapshot {
    /// The metrics' part of an observation.
    pub fn of(view: StatusView, marathon: Option<SyncState>, interfaces_attached: usize) -> Self {
        Self {
            services: view.services,
            dataplane: view.dataplane,
            flow_table: view.flow_table,
            interfaces_attached: interfaces_attached as u64,
            marathon,
        }
    }
}

/// The latest snapshot and when it was published; shared by [`Metrics`] and its collector.
/// A lock rather than a channel: a scrape only ever wants the newest value, and holds the
/// lock just long enough to clone an `Arc`.
#[derive(Debug, Default)]
pub(super) struct Latest(Mutex<Option<(Arc<Snapshot>, SystemTime)>>);

impl Latest {
    pub(super) fn get(&self) -> Option<(Arc<Snapshot>, SystemTime)> {
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
    /// DNS queries and zone size, written by the DNS server.
    pub dns: Arc<crate::dns::stats::DnsStats>,
    /// Responses and task connections of the HTTP front end.
    pub http: Arc<crate::http::stats::FrontStats>,
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
        let dns = Arc::new(crate::dns::stats::DnsStats::default());
        registry.register_collector(Box::new(crate::dns::stats::DnsCollector(dns.clone())));
        let http = Arc::new(crate::http::stats::FrontStats::default());
        http.register(&mut registry);
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
            dns,
            http,
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::observe::{exposition::NAT_PORTS_EXHAUSTED, view::BackendView};

    fn backend(address: &str, state: &'static str, n: u64) -> BackendView {
        BackendView {
            address: address.parse().unwrap(),
            state,
            id: 0,
            packets: n,
            bytes: n * 100,
            new_flows: n / 10,
            live_flows: n / 35,
        }
    }

    fn service(name: &str, app: &str, port: u16, backends: Vec<BackendView>) -> ServiceView {
        ServiceView {
            name: name.to_owned(),
            app_id: (!app.is_empty()).then(|| app.to_owned()),
            address: "*".into(),
            port,
            protocol: "tcp".into(),
            packets: backends.iter().map(|b| b.packets).sum(),
            bytes: backends.iter().map(|b| b.bytes).sum(),
            new_flows: backends.iter().map(|b| b.new_flows).sum(),
            // A port without backends refused some connections earlier.
            refused: if port == 10000 { 4 } else { 0 },
            backends,
            ..ServiceView::default()
        }
    }

    /// Two services (one from Marathon, one draining backend), drops, and Marathon's counters.
    pub(crate) fn snapshot() -> Snapshot {
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
            dataplane: [
                (NAT_PORTS_EXHAUSTED.to_owned(), 3),
                ("refused_no_backend".to_owned(), 9),
            ]
            .into(),
            flow_table: FlowTableView {
                entries: 12,
                flows: 6,
                capacity_flows: 65536,
                evictions: 4,
            },
            interfaces_attached: 2,
            marathon: Some(SyncState {
                requests_total: 17,
                request_errors_total: 2,
                stream_reconnects_total: 1,
                events_total: 40,
                last_event: Some(SystemTime::now() - Duration::from_secs(30)),
                last_full_sync: None,
                connected: true,
                ..SyncState::default()
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
            (format!("lb_service_refused_total{{{nginx}}}"), "4"),
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
            (format!("lb_backend_live_flows{{{b11}}}"), "2"),
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
                r#"lb_dataplane_events_total{cause="refused_no_backend"}"#.to_owned(),
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
        next.services.retain(|s| s.name != "dns_53");
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
}
