//! One observation of the data plane: services with their backends and counters, the flow
//! table, the data plane's drop and error causes, read from open map handles (the daemon's
//! own, or the pins for `lb status`) and the daemon's state. `lb status` renders it as a table
//! or JSON; `/metrics` encodes the same values.
use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddrV4,
    path::Path,
};

use aya::maps::IterableMap as _;
use lb_common::{
    Backend, BackendKey, CFG_F_PRESERVE_CLIENT_IP, SVC_F_ALLOW_LIST, Service, ServiceKey, Stat,
};
use serde::Serialize;

use super::state::{DaemonState, SyncView, unix_now};
use crate::{
    dataplane::{
        attach::Attached,
        batch,
        convert::{backend_addr, balance_of, listener_of},
        flows,
        maps::{LbMaps as _, Maps},
        pins::PinLayout,
        plan::{AppliedService, DrainingBackend},
    },
    services::Listener,
};

#[derive(Clone, Debug, Serialize)]
pub struct BackendView {
    pub address: SocketAddrV4,
    pub state: &'static str,
    pub id: u32,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// Connections it carries now (the daemon's last sweep, at most 2 s old).
    pub live_flows: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ServiceView {
    pub name: String,
    pub app_id: Option<String>,
    pub port_index: Option<usize>,
    pub address: String,
    pub port: u16,
    pub protocol: String,
    pub balance: String,
    pub id: u32,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// New connections refused while the service had no backends.
    pub refused: u64,
    /// The client ranges allowed (empty: every client).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Packets dropped because their client was outside `allow`.
    pub denied: u64,
    pub backends: Vec<BackendView>,
}

#[derive(Debug, Serialize)]
pub struct DaemonView {
    pub running: bool,
    pub pid: u32,
    pub hook: String,
    pub mode: String,
    pub state_age_s: f64,
    pub interfaces: BTreeMap<String, Attached>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct FlowTableView {
    pub entries: u64,
    pub flows: u64,
    pub capacity_flows: u64,
    pub evictions: u64,
}

#[derive(Debug, Serialize)]
pub struct StatusView {
    pub pin_path: String,
    pub mode: String,
    pub daemon: Option<DaemonView>,
    pub services: Vec<ServiceView>,
    pub flow_table: FlowTableView,
    pub dataplane: BTreeMap<String, u64>,
    pub sync: Option<SyncView>,
    /// The DNS server's zone and counters, when it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<crate::dns::stats::DnsView>,
}

fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The status from open maps and a known daemon state; `flow_entries` saves a walk of the
/// flow table when the caller just counted it. Linear in the services: the service and backend
/// tables are read in a few batch calls, names and draining backends looked up by id.
pub fn status_of(
    maps: &Maps,
    layout: &PinLayout,
    state: Option<&DaemonState>,
    flow_entries: Option<u64>,
) -> StatusView {
    let cfg = maps.config();
    let totals = flows::sum_stats(&maps.stats);
    let mut listed: Vec<(ServiceKey, Service)> = batch::lookup_all(maps.services.map())
        .unwrap_or_else(|_| maps.services.iter().filter_map(Result::ok).collect());
    listed.sort_by_key(|(k, _)| (u16::from_be(k.port), k.proto, u32::from_be(k.addr)));
    let slots: HashMap<BackendKey, Backend> = batch::lookup_all(maps.backends.map())
        .unwrap_or_else(|_| maps.backends.iter().filter_map(Result::ok).collect())
        .into_iter()
        .collect();
    let known: HashMap<u32, &AppliedService> = state
        .iter()
        .flat_map(|s| &s.services)
        .map(|a| (a.id, a))
        .collect();
    let mut draining: HashMap<Listener, Vec<&DrainingBackend>> = HashMap::new();
    for d in state.iter().flat_map(|s| &s.draining) {
        draining.entry(d.listener).or_default().push(d);
    }
    let live = state.map(|s| &s.live_flows);
    let backend_view = |address, state, id| {
        let c = flows::sum_counters(&maps.backend_stats, id);
        BackendView {
            address,
            state,
            id,
            packets: c.packets,
            bytes: c.bytes,
            new_flows: c.new_flows,
            live_flows: live.and_then(|l| l.get(&id)).copied().unwrap_or(0),
        }
    };
    let mut allowed: HashMap<u32, Vec<String>> = HashMap::new();
    for (id, range) in maps.allowed() {
        allowed.entry(id).or_default().push(range.to_string());
    }
    let mut denied_total = 0;
    let mut services = Vec::with_capacity(listed.len());
    for (key, svc) in listed {
        let Some(listener) = listener_of(&key) else {
            continue;
        };
        let known = known.get(&svc.id);
        let c = flows::sum_counters(&maps.service_stats, svc.id);
        let denied = flows::sum_u64(&maps.service_denied, svc.id);
        denied_total += denied;
        let mut backends: Vec<BackendView> = (0..svc.count)
            .filter_map(|index| {
                slots.get(&BackendKey {
                    service_id: svc.id,
                    generation: svc.generation,
                    index,
                })
            })
            .map(|b| backend_view(backend_addr(b), "active", b.id))
            .collect();
        for d in draining.get(&listener).into_iter().flatten() {
            backends.push(backend_view(d.addr, "draining", d.id));
        }
        services.push(ServiceView {
            name: known.map_or_else(|| listener.to_string(), |a| a.spec.name.clone()),
            app_id: known.and_then(|a| a.spec.app_id.clone()),
            port_index: known.and_then(|a| a.spec.port_index),
            address: listener.bind.map_or_else(|| "*".into(), |a| a.to_string()),
            port: listener.port,
            protocol: listener.protocol.to_string(),
            balance: balance_of(svc.flags).name().into(),
            id: svc.id,
            packets: c.packets,
            bytes: c.bytes,
            new_flows: c.new_flows,
            refused: flows::sum_u64(&maps.service_refused, svc.id),
            allow: if svc.flags & SVC_F_ALLOW_LIST != 0 {
                allowed.remove(&svc.id).unwrap_or_default()
            } else {
                Vec::new()
            },
            denied,
            backends,
        });
    }
    let entries =
        flow_entries.unwrap_or_else(|| maps.flows.keys().filter(Result::is_ok).count() as u64);
    let capacity = maps
        .flows
        .map()
        .info()
        .map_or(0, |i| i.max_entries() as u64);
    StatusView {
        pin_path: layout.root.display().to_string(),
        mode: if cfg.flags & CFG_F_PRESERVE_CLIENT_IP != 0 {
            "dnat (client address kept)"
        } else {
            "full-nat"
        }
        .into(),
        daemon: state.map(|s| DaemonView {
            running: s.running && process_alive(s.pid),
            pid: s.pid,
            hook: s.hook.clone(),
            mode: s.mode.clone(),
            state_age_s: (unix_now() - s.updated_at).max(0.0),
            interfaces: s.interfaces.clone(),
        }),
        services,
        flow_table: FlowTableView {
            entries,
            flows: entries / 2,
            capacity_flows: capacity / 2,
            evictions: state.map_or(0, |s| s.flow_evictions),
        },
        dataplane: Stat::ALL
            .iter()
            .map(|s| (s.name().to_owned(), totals[*s as usize]))
            // Counted per service only (see `Stat::DropDenied`); the total of those listed.
            .chain([(Stat::DropDenied.name().to_owned(), denied_total)])
            .collect(),
        sync: state.map(|s| s.sync.clone()),
        dns: state.and_then(|s| s.dns.clone()),
    }
}
