//! The flow table seen from userspace: sweeping expired pairs (so their NAT ports free up),
//! telling which backends still carry flows (drain), estimating LRU evictions, and listing.
use std::{
    borrow::Borrow,
    collections::{BTreeMap, BTreeSet},
    net::SocketAddrV4,
};

use aya::maps::{HashMap, IterableMap as _, MapData, PerCpuArray};
use lb_common::{
    Config, Counters, FLOW_F_CLOSED, FLOW_F_CLOSING, FLOW_F_REPLY, Flow, FlowKey, STAT_COUNT, Stat,
};
use serde::Serialize;
use tracing::warn;

use super::convert::sock;
use crate::services::Protocol;

/// One tracked flow, both directions joined, as `lb flows` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FlowView {
    pub protocol: String,
    pub client: SocketAddrV4,
    pub vip: SocketAddrV4,
    pub backend: SocketAddrV4,
    /// Source the backend sees: the agent's NAT address and port, or the client (DNAT).
    pub nat: SocketAddrV4,
    pub age_s: f64,
    pub idle_s: f64,
    pub state: &'static str,
    pub service_id: u32,
    pub backend_id: u32,
}

fn expired(cfg: &Config, key: &FlowKey, f: &Flow, now: u64) -> bool {
    now.saturating_sub(f.last_seen_ns) > cfg.timeout_ns(key.proto, f.flags)
}

/// Forward entries (client side) joined into views; replies are implied by them.
pub fn list<T: Borrow<MapData>>(
    flows: &HashMap<T, FlowKey, Flow>,
    cfg: &Config,
    now: u64,
) -> Vec<FlowView> {
    let mut out: Vec<FlowView> = flows
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, f)| f.flags & FLOW_F_REPLY == 0)
        .map(|(k, f)| FlowView {
            protocol: Protocol::from_ip_proto(k.proto).map_or("?".into(), |p| p.to_string()),
            client: sock(k.src, k.sport),
            vip: sock(k.dst, k.dport),
            backend: sock(f.new_dst, f.new_dport),
            nat: sock(f.new_src, f.new_sport),
            age_s: now.saturating_sub(f.created_ns) as f64 / 1e9,
            idle_s: now.saturating_sub(f.last_seen_ns) as f64 / 1e9,
            state: if expired(cfg, &k, &f, now) {
                "expired"
            } else if f.flags & FLOW_F_CLOSED == FLOW_F_CLOSED {
                "closed"
            } else if f.flags & FLOW_F_CLOSING != 0 {
                "closing"
            } else {
                "active"
            },
            service_id: f.service_id,
            backend_id: f.backend_id,
        })
        .collect();
    out.sort_by_key(|f| (f.vip, f.client));
    out
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    /// Entries (two per flow) left in the table.
    pub entries: u64,
    pub expired_removed: u64,
    /// Live flows (neither expired nor closed both ways) by backend id.
    pub live: BTreeMap<u32, u64>,
}

/// A flow, by its client-side entry, that still carries a connection: not expired, and not
/// closed in both directions (a half-closed connection still counts).
fn live(cfg: &Config, key: &FlowKey, f: &Flow, now: u64) -> bool {
    f.flags & FLOW_F_REPLY == 0
        && f.flags & FLOW_F_CLOSED != FLOW_F_CLOSED
        && !expired(cfg, key, f, now)
}

/// Keeps the running estimate of LRU evictions between sweeps.
#[derive(Debug, Default)]
pub struct Sweeper {
    last_entries: Option<u64>,
    last_created: u64,
    last_replaced: u64,
    pub evictions: u64,
    pub expired_total: u64,
}

impl Sweeper {
    /// Deletes expired entries and returns the backend and service ids live flows still use.
    pub fn sweep(
        &mut self,
        flows: &mut HashMap<MapData, FlowKey, Flow>,
        stats: &[u64],
        cfg: &Config,
        now: u64,
    ) -> (SweepReport, BTreeSet<u32>, BTreeSet<u32>) {
        let mut dead = Vec::new();
        let mut backends = BTreeSet::new();
        let mut services = BTreeSet::new();
        let mut entries = 0u64;
        let mut live_flows: BTreeMap<u32, u64> = BTreeMap::new();
        // One read of the whole table in a few calls; key by key it cost two calls an entry.
        let all = super::batch::lookup_all::<FlowKey, Flow>(flows.map())
            .map_err(|e| warn!("reading the flow table in batches: {e}"))
            .unwrap_or_else(|()| flows.iter().filter_map(Result::ok).collect());
        for (k, f) in all {
            entries += 1;
            if expired(cfg, &k, &f, now) {
                dead.push((k, f.created_ns));
            } else {
                backends.insert(f.backend_id);
                services.insert(f.service_id);
                if live(cfg, &k, &f, now) {
                    *live_flows.entry(f.backend_id).or_default() += 1;
                }
            }
        }
        let mut removed = 0;
        for (k, created_ns) in &dead {
            // The scan took a while: the data plane may since have put a new flow under this
            // key (a client reusing its port) or seen the old one again. Only what is still
            // the same expired entry goes; deleting a live entry would reset its connection.
            let still_dead = flows
                .get(k, 0)
                .is_ok_and(|f| f.created_ns == *created_ns && expired(cfg, k, &f, now));
            if still_dead && flows.remove(k).is_ok() {
                removed += 1;
            }
        }
        let created = stats.get(Stat::FlowCreated as usize).copied().unwrap_or(0);
        let replaced = stats.get(Stat::FlowReplaced as usize).copied().unwrap_or(0);
        let now_entries = entries - removed;
        // Entries change by creations (+2), replacements (-2), our removals, and evictions,
        // which nobody reports: whatever the first three do not explain was evicted.
        if let Some(prev) = self.last_entries {
            let grown = 2 * created.saturating_sub(self.last_created);
            let shrunk = 2 * replaced.saturating_sub(self.last_replaced) + removed;
            let expected = (prev + grown).saturating_sub(shrunk);
            self.evictions += expected.saturating_sub(now_entries);
        }
        self.last_entries = Some(now_entries);
        self.last_created = created;
        self.last_replaced = replaced;
        self.expired_total += removed;
        (
            SweepReport {
                entries: now_entries,
                expired_removed: removed,
                live: live_flows,
            },
            backends,
            services,
        )
    }
}

/// Sums a per-CPU counters array at `index`.
pub fn sum_counters<T: Borrow<MapData>>(m: &PerCpuArray<T, Counters>, index: u32) -> Counters {
    let mut total = Counters::default();
    if let Ok(values) = m.get(&index, 0) {
        for c in values.iter() {
            total.packets += c.packets;
            total.bytes += c.bytes;
            total.new_flows += c.new_flows;
        }
    }
    total
}

/// A per-CPU `u64` counter at `index`, summed over CPUs (0 when it cannot be read).
pub fn sum_u64<T: Borrow<MapData>>(m: &PerCpuArray<T, u64>, index: u32) -> u64 {
    m.get(&index, 0).map(|v| v.iter().sum()).unwrap_or(0)
}

/// The per-cause data-plane counters, summed over CPUs, indexed by `Stat`.
pub fn sum_stats<T: Borrow<MapData>>(m: &PerCpuArray<T, u64>) -> Vec<u64> {
    (0..STAT_COUNT).map(|i| sum_u64(m, i)).collect()
}
