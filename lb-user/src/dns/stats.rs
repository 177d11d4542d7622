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
    /// Names the XDP fast path would answer but its table has no room for
    /// (`--max-dns-names`): the userspace server answers them.
    #[serde(default)]
    pub fast_left_out: u64,
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
    fast_left_out: u64,
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

    /// Names the fast path's table had no room for at the last sync.
    pub fn fast_left_out(&self, n: usize) {
        self.inner().fast_left_out = n as u64;
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
            fast_left_out: i.fast_left_out,
            queries: i
                .queries
                .iter()
                .map(|((p, t, r), n)| (format!("{p} {t} {r}"), *n))
                .collect(),
        }
    }
}

/// `/metrics`: `lb_dns_queries_total{path,type,rcode}`, `lb_dns_zone_names`,
/// `lb_dns_zone_records`, `lb_dns_ready`, `lb_dns_fast_path_left_out`.
#[derive(Debug)]
pub struct DnsCollector(pub std::sync::Arc<DnsStats>);

impl Collector for DnsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let (queries, ready, names, records, left_out) = {
            let i = self.0.inner();
            if !i.enabled {
                return Ok(());
            }
            (
                i.queries.clone(),
                i.ready,
                i.names,
                i.records,
                i.fast_left_out,
            )
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
            (
                "lb_dns_fast_path_left_out",
                "Names the XDP fast path's table has no room for (--max-dns-names); the userspace server answers them",
                left_out,
            ),
        ] {
            let g = ConstGauge::new(v as i64);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use prometheus_client::{encoding::text::encode, registry::Registry};

    use super::*;

    fn metrics(stats: &Arc<DnsStats>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(DnsCollector(stats.clone())));
        let mut out = String::new();
        encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn metrics_and_status_show_the_zone_queries_and_names_left_out_of_the_fast_path() {
        let stats = Arc::new(DnsStats::default());
        assert_eq!(
            metrics(&stats)
                .lines()
                .filter(|l| l.contains("lb_dns"))
                .count(),
            0,
            "no series without a server"
        );
        stats.enable();
        stats.zone(3, 5, 7);
        stats.query("userspace", "A", "NOERROR");
        stats.fast_answers(4);
        stats.fast_left_out(2);
        let m = metrics(&stats);
        for line in [
            "lb_dns_ready 1",
            "lb_dns_zone_names 3",
            "lb_dns_zone_records 5",
            "lb_dns_fast_path_left_out 2",
            r#"lb_dns_queries_total{path="userspace",type="A",rcode="NOERROR"} 1"#,
            r#"lb_dns_queries_total{path="xdp",type="A",rcode="NOERROR"} 4"#,
        ] {
            assert!(m.lines().any(|l| l == line), "{line} in:\n{m}");
        }
        let view = stats.view(&["10.0.0.1:53".parse().unwrap()], "mesos");
        assert_eq!((view.names, view.fast_left_out), (3, 2));
        // A state file written before the field existed still reads.
        let mut old = serde_json::to_value(&view).unwrap();
        old.as_object_mut().unwrap().remove("fast_left_out");
        let back: DnsView = serde_json::from_value(old).unwrap();
        assert_eq!(back.fast_left_out, 0);
    }
}
