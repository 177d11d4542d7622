//! `lb status` and `lb flows`: read the pinned maps (what the data plane really does) and
//! the daemon's state file (names, interfaces, sync health), from any process.
use std::{collections::BTreeMap, net::SocketAddrV4, path::Path};

use anyhow::Result;
use aya::maps::IterableMap as _;
use lb_common::{BackendKey, CFG_F_PRESERVE_CLIENT_IP, Service, ServiceKey, Stat};
use serde::Serialize;

use super::{
    metrics::{self, BackendSample, MarathonSample, ServiceSample},
    state::{DaemonState, SyncView, unix_now},
    table,
};
use crate::dataplane::{
    attach::Attached,
    convert::{backend_addr, balance_of, listener_of},
    flows::{self, FlowView},
    maps::Maps,
    monotonic_ns,
    pins::PinLayout,
};

#[derive(Debug, Serialize)]
pub struct BackendView {
    pub address: SocketAddrV4,
    pub state: &'static str,
    pub id: u32,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

#[derive(Debug, Serialize)]
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

#[derive(Debug, Serialize)]
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
}

fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// `lb status` from any process: the pinned maps and the daemon's state file.
pub fn status(layout: &PinLayout, state_file: &Path) -> Result<StatusView> {
    let maps = Maps::open_pinned(layout)?;
    Ok(status_of(
        &maps,
        layout,
        DaemonState::read(state_file),
        None,
    ))
}

/// The status from open maps and a known daemon state; `flow_entries` saves a walk of the
/// flow table when the caller just counted it.
pub fn status_of(
    maps: &Maps,
    layout: &PinLayout,
    state: Option<DaemonState>,
    flow_entries: Option<u64>,
) -> StatusView {
    let cfg = maps.config();
    let totals = flows::sum_stats(&maps.stats);
    let mut services = Vec::new();
    let mut listed: Vec<(ServiceKey, Service)> =
        maps.services.iter().filter_map(Result::ok).collect();
    listed.sort_by_key(|(k, _)| (u16::from_be(k.port), k.proto, u32::from_be(k.addr)));
    for (key, svc) in listed {
        let Some(listener) = listener_of(&key) else {
            continue;
        };
        let known = state
            .as_ref()
            .and_then(|s| s.services.iter().find(|a| a.id == svc.id));
        let c = flows::sum_counters(&maps.service_stats, svc.id);
        let mut backends = Vec::new();
        for index in 0..svc.count {
            let k = BackendKey {
                service_id: svc.id,
                generation: svc.generation,
                index,
            };
            let Ok(b) = maps.backends.get(&k, 0) else {
                continue;
            };
            let bc = flows::sum_counters(&maps.backend_stats, b.id);
            backends.push(BackendView {
                address: backend_addr(&b),
                state: "active",
                id: b.id,
                packets: bc.packets,
                bytes: bc.bytes,
                new_flows: bc.new_flows,
            });
        }
        for d in state
            .iter()
            .flat_map(|s| &s.draining)
            .filter(|d| d.listener == listener)
        {
            let bc = flows::sum_counters(&maps.backend_stats, d.id);
            backends.push(BackendView {
                address: d.addr,
                state: "draining",
                id: d.id,
                packets: bc.packets,
                bytes: bc.bytes,
                new_flows: bc.new_flows,
            });
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
        daemon: state.as_ref().map(|s| DaemonView {
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
            evictions: state.as_ref().map_or(0, |s| s.flow_evictions),
        },
        dataplane: Stat::ALL
            .iter()
            .map(|s| (s.name().to_owned(), totals[*s as usize]))
            .collect(),
        sync: state.map(|s| s.sync),
    }
}

fn ago(t: Option<f64>) -> String {
    match t {
        Some(t) => format!("{:.1}s ago", (unix_now() - t).max(0.0)),
        None => "never".into(),
    }
}

pub fn render_status(v: &StatusView) -> String {
    let mut out = String::new();
    match &v.daemon {
        Some(d) => out.push_str(&format!(
            "daemon: {} (pid {}), hook {}, {}, state written {:.1}s ago\n",
            if d.running { "running" } else { "stopped" },
            d.pid,
            d.hook,
            v.mode,
            d.state_age_s
        )),
        None => out.push_str(&format!(
            "daemon: no state file; data plane mode {}\n",
            v.mode
        )),
    }
    if let Some(d) = &v.daemon {
        let ifs: Vec<String> = d
            .interfaces
            .iter()
            .map(|(n, a)| {
                let hooks = [(a.xdp, "xdp"), (a.tc, "tc")]
                    .iter()
                    .filter(|(on, _)| *on)
                    .map(|(_, h)| *h)
                    .collect::<Vec<_>>()
                    .join("+");
                format!("{n}({hooks})")
            })
            .collect();
        out.push_str(&format!(
            "interfaces: {}\n",
            if ifs.is_empty() {
                "none".into()
            } else {
                ifs.join(" ")
            }
        ));
    }
    if let Some(s) = &v.sync {
        out.push_str(&format!(
            "sync: source {}, last full sync {}, last event {}, last error {}\n",
            s.source,
            ago(s.last_full_sync),
            ago(s.last_event),
            s.last_error
                .as_deref()
                .map_or("none".to_owned(), |e| format!(
                    "{e} ({})",
                    ago(s.last_error_at)
                ))
        ));
    }
    out.push_str(&format!(
        "flows: {} of {} ({} entries), {} evicted\n\n",
        v.flow_table.flows,
        v.flow_table.capacity_flows,
        v.flow_table.entries,
        v.flow_table.evictions
    ));
    let mut rows = Vec::new();
    for s in &v.services {
        let app = match (&s.app_id, s.port_index) {
            (Some(a), Some(i)) => format!("{a}:{i}"),
            (Some(a), None) => a.clone(),
            _ => "-".into(),
        };
        rows.push(vec![
            s.name.clone(),
            format!("{}:{}/{}", s.address, s.port, s.protocol),
            app,
            s.balance.clone(),
            format!("{} backends", s.backends.len()),
            "".into(),
            s.packets.to_string(),
            s.bytes.to_string(),
            s.new_flows.to_string(),
        ]);
        for b in &s.backends {
            rows.push(vec![
                "".into(),
                "".into(),
                "".into(),
                "".into(),
                format!("  {}", b.address),
                b.state.into(),
                b.packets.to_string(),
                b.bytes.to_string(),
                b.new_flows.to_string(),
            ]);
        }
    }
    out.push_str(&table::render(
        &[
            "SERVICE",
            "LISTEN",
            "APP:PORT",
            "BALANCE",
            "BACKEND",
            "STATE",
            "PACKETS",
            "BYTES",
            "NEW FLOWS",
        ],
        &rows,
    ));
    let nonzero: Vec<String> = v
        .dataplane
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k}={n}"))
        .collect();
    out.push_str(&format!(
        "\ndata plane: {}\n",
        if nonzero.is_empty() {
            "no events yet".into()
        } else {
            nonzero.join(" ")
        }
    ));
    out
}

pub fn flows(layout: &PinLayout) -> Result<Vec<FlowView>> {
    let maps = Maps::open_pinned(layout)?;
    Ok(flows::list(&maps.flows, &maps.config(), monotonic_ns()))
}

pub fn render_flows(list: &[FlowView]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|f| {
            vec![
                f.protocol.clone(),
                f.client.to_string(),
                f.vip.to_string(),
                f.backend.to_string(),
                f.nat.to_string(),
                format!("{:.1}s", f.age_s),
                format!("{:.1}s", f.idle_s),
                f.state.into(),
            ]
        })
        .collect();
    let mut out = table::render(
        &[
            "PROTO",
            "CLIENT",
            "SERVICE",
            "BACKEND",
            "NAT SOURCE",
            "AGE",
            "IDLE",
            "STATE",
        ],
        &rows,
    );
    out.push_str(&format!("{} flows\n", list.len()));
    out
}

/// The same view as Prometheus samples.
pub fn metrics_snapshot(
    v: &StatusView,
    marathon: Option<MarathonSample>,
    interfaces: usize,
) -> metrics::Snapshot {
    metrics::Snapshot {
        services: v
            .services
            .iter()
            .map(|s| ServiceSample {
                service: s.name.clone(),
                app: s.app_id.clone().unwrap_or_default(),
                listen: format!("{}:{}/{}", s.address, s.port, s.protocol),
                packets: s.packets,
                bytes: s.bytes,
                new_flows: s.new_flows,
                backends: s
                    .backends
                    .iter()
                    .map(|b| BackendSample {
                        address: b.address.to_string(),
                        state: b.state,
                        packets: b.packets,
                        bytes: b.bytes,
                        new_flows: b.new_flows,
                    })
                    .collect(),
            })
            .collect(),
        dataplane: v.dataplane.iter().map(|(k, n)| (k.clone(), *n)).collect(),
        flow_entries: v.flow_table.entries,
        flow_capacity: v.flow_table.capacity_flows,
        flow_evictions: v.flow_table.evictions,
        interfaces_attached: interfaces as u64,
        marathon,
    }
}
