//! `lb status` and `lb flows`: the observation of the data plane (`view`) from the pinned
//! maps and the daemon's state file, rendered as tables, from any process.
use std::path::Path;

use anyhow::Result;

use super::{
    state::{DaemonState, unix_now},
    table,
    view::{StatusView, status_of},
};
use crate::dataplane::{
    flows::{self, FlowView},
    maps::Maps,
    monotonic_ns,
    pins::PinLayout,
};

/// `lb status` from any process: the pinned maps and the daemon's state file.
pub fn status(layout: &PinLayout, state_file: &Path) -> Result<StatusView> {
    let maps = Maps::open_pinned(layout)?;
    Ok(status_of(
        &maps,
        layout,
        DaemonState::read(state_file).as_ref(),
        None,
    ))
}

fn ago(t: Option<f64>) -> String {
    match t {
        Some(t) => format!("{:.1}s ago", (unix_now() - t).max(0.0)),
        None => "never".into(),
    }
}

/// `dns: on …, zone N names, M records (serial S); queries: A NOERROR 12, …`
fn render_dns(d: &crate::dns::stats::DnsView) -> String {
    let zone = if d.ready {
        format!(
            "zone {} names, {} records (serial {})",
            d.names, d.records, d.serial
        )
    } else {
        "no Marathon state yet (answering SERVFAIL)".to_owned()
    };
    let zone = if d.fast_left_out > 0 {
        format!(
            "{zone}, {} names beyond the fast path's table (--max-dns-names)",
            d.fast_left_out
        )
    } else {
        zone
    };
    let queries: Vec<String> = d.queries.iter().map(|(k, n)| format!("{k} {n}")).collect();
    format!(
        "dns: on {} for {}, {zone}; queries: {}\n",
        d.listen.join(" "),
        d.domain,
        if queries.is_empty() {
            "none".to_owned()
        } else {
            queries.join(", ")
        }
    )
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
    if let Some(d) = &v.dns {
        out.push_str(&render_dns(d));
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
            s.backends
                .iter()
                .map(|b| b.live_flows)
                .sum::<u64>()
                .to_string(),
            s.refused.to_string(),
            if s.allow.is_empty() {
                "*".into()
            } else {
                s.allow.join(",")
            },
            s.denied.to_string(),
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
                b.live_flows.to_string(),
                "".into(),
                "".into(),
                "".into(),
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
            "LIVE",
            "REFUSED",
            "ALLOW",
            "DENIED",
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

#[cfg(test)]
mod tests {
    use crate::dns::stats::DnsView;

    #[test]
    fn the_dns_line_names_what_the_fast_path_has_no_room_for() {
        let mut d = DnsView {
            listen: vec!["10.0.0.1:53".into()],
            domain: "mesos".into(),
            ready: true,
            names: 3,
            records: 5,
            serial: 7,
            ..DnsView::default()
        };
        let line = super::render_dns(&d);
        assert_eq!(
            line,
            "dns: on 10.0.0.1:53 for mesos, zone 3 names, 5 records (serial 7); queries: none\n"
        );
        d.fast_left_out = 2;
        assert!(
            super::render_dns(&d).contains(
                "zone 3 names, 5 records (serial 7), 2 names beyond the fast path's table (--max-dns-names);"
            ),
            "{}",
            super::render_dns(&d)
        );
    }
}
