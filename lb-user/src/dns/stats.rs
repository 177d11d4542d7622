//! What the DNS server did: queries by path (`userspace`; the kernel's fast path adds its own),
//! type and response code, and the zone's size. Written by the server, read by `/metrics` (a
//! prometheus-client collector) and saved in the state file for `lb status`.
use std::{
    collections::BTreeMap,
    fmt,
    sync::{Mutex, PoisonError},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};
use serde::{Deserialize, Serialize};

/// The DNS part of the daemon's state, for `lb status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DnsView {
    pub listen: Vec<String>,
    pub domain: String,
    /// False until the first successful Marathon sync: the server answers SERVFAIL.
    pub ready: bool,
    pub names: u64,
    pub records: u64,
    pub serial: u32,
    /// `path type rcode` (e.g. `userspace A NOERROR`) → queries.
    pub queries: BTreeMap<String, u64>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Set when a server is started: without one, `/metrics` shows no DNS series.
    enabled: bool,
    queries: BTreeMap<(&'static str, String, String), u64>,
    ready: bool,
    names: u64,
    records: u64,
    serial: u32,
}

/// Counters shared by the server's tasks (one short lock per query) and the readers.
#[derive(Debug, Default)]
pub struct DnsStats(Mutex<Inner>);

impl DnsStats {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A server is running.
    pub fn enable(&self) {
        self.inner().enabled = true;
    }

    /// One answered query.
    pub fn query(&self, path: &'static str, qtype: &str, rcode: &str) {
        *self
            .inner()
            .queries
            .entry((path, qtype.to_owned(), rcode.to_owned()))
            .or_default() += 1;
    }

    /// The A queries the XDP fast path has answered in all (it counts in `LB_DNS_STATS`; the
    /// daemon copies the sum here): `path="xdp"` beside the userspace server's.
    pub fn fast_answers(&self, n: u64) {
        if n > 0 {
            self.inner()
                .queries
                .insert(("xdp", "A".to_owned(), "NOERROR".to_owned()), n);
        }
    }

    /// A new zone is being served.
    pub fn zone(&self, names: usize, records: usize, serial: u32) {
        let mut i = self.inner();
        i.ready = true;
        i.names = names as u64;
        i.records = records as u64;
        i.serial = serial;
    }

    pub fn view(&self, listen: &[std::net::SocketAddr], domain: &str) -> DnsView {
        let i = self.inner();
        DnsView {
            listen: listen.iter().map(ToString::to_string).collect(),
            domain: domain.to_owned(),
            ready: i.ready,
            names: i.names,
            records: i.records,
            serial: i.serial,
            queries: i
                .queries
                .iter()
                .map(|((p, t, r), n)| (format!("{p} {t} {r}"), *n))
                .collect(),
        }
    }
}

/// `/metrics`: `lb_dns_queries_total{path,type,rcode}`, `lb_dns_zone_names`,
/// `lb_dns_zone_records`, `lb_dns_ready`.
#[derive(Debug)]
pub struct DnsCollector(pub std::sync::Arc<DnsStats>);

impl Collector for DnsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let (queries, ready, names, records) = {
            let i = self.0.inner();
            if !i.enabled {
                return Ok(());
            }
            (i.queries.clone(), i.ready, i.names, i.records)
        };
        {
            let mut family = encoder.encode_descriptor(
                "lb_dns_queries",
                "DNS queries answered, by path (kernel or userspace), question type and response code",
                None,
                MetricType::Counter,
            )?;
            for ((path, qtype, rcode), n) in &queries {
                // Types and codes are hickory's names (A, SRV, NOERROR): no escaping needed.
                let labels = [
                    ("path", path.to_string()),
                    ("type", qtype.clone()),
                    ("rcode", rcode.clone()),
                ];
                ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
            }
        }
        for (name, help, v) in [
            (
                "lb_dns_ready",
                "1 once the DNS zone holds a Marathon state",
                u64::from(ready),
            ),
            ("lb_dns_zone_names", "Names in the DNS zone", names),
            (
                "lb_dns_zone_records",
                "A and SRV records in the DNS zone",
                records,
            ),
        ] {
            let g = ConstGauge::new(v as i64);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}
