//! The OpenMetrics exposition of a `Snapshot`, written at scrape time by a prometheus-client
//! collector: counters carry the BPF maps' absolute values (prometheus-client's `Counter` can
//! only add) and services that are gone leave no series.
use std::{
    borrow::Cow,
    fmt::{self, Write as _},
    sync::Arc,
    time::SystemTime,
};

use prometheus_client::{
    collector::Collector,
    encoding::{
        DescriptorEncoder, EncodeGaugeValue, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
    },
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Unit,
};

use super::{
    metrics::Latest,
    view::{BackendView, ServiceView},
};

/// The cause whose count also feeds `lb_nat_port_allocation_failures_total`.
pub const NAT_PORTS_EXHAUSTED: &str = "drop_nat_ports_exhausted";

/// Encodes the latest snapshot at scrape time, so counters carry the BPF maps' absolute
/// values (prometheus-client's `Counter` can only add) and gone services leave no series.
#[derive(Debug)]
pub(super) struct SnapshotCollector(pub(super) Arc<Latest>);

/// A label value escaped for the text format: prometheus-client 0.24 writes label values
/// verbatim, and a `"` or newline in an app id would break the whole scrape.
struct Escaped<'a>(Cow<'a, str>);

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

fn service_labels(s: &ServiceView) -> Labels<'_> {
    vec![
        ("service", Escaped(Cow::Borrowed(&s.name))),
        (
            "app",
            Escaped(Cow::Borrowed(s.app_id.as_deref().unwrap_or_default())),
        ),
    ]
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

/// Seconds from `then` to `now`; never negative, so a clock stepping back does not produce
/// an age an alert would misread.
fn age(now: SystemTime, then: SystemTime) -> f64 {
    now.duration_since(then).map_or(0.0, |d| d.as_secs_f64())
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
                let listen = format!("{}:{}/{}", s.address, s.port, s.protocol);
                labels.push(("listen", Escaped(Cow::Owned(listen))));
                (labels, 1)
            }),
        )?;
        type Field = fn(&ServiceView) -> u64;
        let service_counters: [(&str, &str, Field); 5] = [
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
            (
                "lb_service_refused",
                "New connections refused (TCP reset, ICMP port unreachable) because the service had no backends.",
                |s| s.refused,
            ),
            (
                "lb_service_denied",
                "Packets dropped because their client was outside the service's allowed ranges.",
                |s| s.denied,
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
                    labels.push(("backend", Escaped(Cow::Owned(b.address.to_string()))));
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
                labels.push(("state", Escaped(Cow::Borrowed(b.state))));
                (labels, 1)
            }),
        )?;
        gauge_family(
            e,
            "lb_backend_live_flows",
            "Connections the backend carries now (flows neither closed nor expired, counted every 2 s).",
            backends().map(|(labels, b)| (labels, b.live_flows)),
        )?;
        type BackendField = fn(&BackendView) -> u64;
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
            "Data-plane events by cause: drops, errors, refusals and passes.",
            snap.dataplane
                .iter()
                .map(|(cause, n)| (vec![("cause", Escaped(Cow::Borrowed(cause)))], *n)),
        )?;
        counter(
            e,
            "lb_nat_port_allocation_failures",
            "New flows dropped because no NAT source port was free.",
            snap.dataplane
                .iter()
                .filter(|(cause, _)| *cause == NAT_PORTS_EXHAUSTED)
                .map(|(_, n)| n)
                .sum(),
        )?;
        gauge(
            e,
            "lb_flow_table_entries",
            "Flows in the flow table.",
            None,
            snap.flow_table.entries,
        )?;
        gauge(
            e,
            "lb_flow_table_capacity",
            "Flows the flow table can hold.",
            None,
            snap.flow_table.capacity_flows,
        )?;
        counter(
            e,
            "lb_flow_table_evictions",
            "Flows evicted from the flow table to make room.",
            snap.flow_table.evictions,
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
        if let Some(t) = m.last_event {
            gauge(
                e,
                "lb_marathon_last_event_age",
                "Time since the last event from Marathon.",
                Some(&Unit::Seconds),
                age(now, t),
            )?;
        }
        if let Some(t) = m.last_full_sync {
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
