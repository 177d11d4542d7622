//! Sustained new-connection load through the agent: a minute of it from many client addresses,
//! each contender on a fresh topology, so steady state shows (NAT ports, conntrack, TIME_WAIT).
use std::{collections::BTreeMap, net::Ipv4Addr, thread, time::Duration};

use lb_tests::{lb, netns::Topology};
use serde_json::{Value, json};

use super::{
    Effort, cpu,
    report::{Report, Table, Target},
    svg::{self, Series},
    traffic::{self, Contender},
};

/// Namespace prefix of its own: never collides with the traffic section's or the tests'.
const PREFIX: &str = "lbs";
const CONTENDERS: [Contender; 6] = [
    Contender::Plain,
    Contender::Haproxy,
    Contender::Nftables,
    Contender::LbXdp,
    Contender::LbTc,
    Contender::LbTcPreserve,
];
/// Client addresses 10.0.0.100 and up on the client's eth0: each pair of addresses has its own
/// TCP timestamp offset, as real clients would, and its own share of source ports.
const CLIENTS: u8 = 16;
const FIRST_CLIENT: u8 = 100;
/// Concurrent connections (as in the traffic section's wrk runs), one request each.
const CONNECTIONS: u32 = 32;
const WINDOW_S: u64 = 5;
const TIMEOUT_S: u32 = 2;
/// The shortest run that still has windows after the first to judge.
pub const MIN_SECONDS: u64 = 3 * WINDOW_S;
/// Client-side TCP counters compared before and after each run (`nstat`).
const TCP_COUNTERS: [&str; 5] = [
    "TcpExtTCPSynRetrans",
    "TcpRetransSegs",
    "TcpAttemptFails",
    "TcpEstabResets",
    "TcpOutRsts",
];

fn clients() -> Vec<Ipv4Addr> {
    (0..CLIENTS)
        .map(|i| Ipv4Addr::new(10, 0, 0, FIRST_CLIENT + i))
        .collect()
}

/// The client namespace's TCP counters, absolute (`-a`) and without touching nstat's history
/// file (`-s`), which is shared by every namespace.
fn tcp_counters(topo: &Topology) -> BTreeMap<String, i64> {
    let out = topo.sh("client", &format!("nstat -asz {}", TCP_COUNTERS.join(" ")));
    out.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.to_owned(), f.next()?.parse().ok()?))
        })
        .collect()
}

/// What one contender's run showed.
struct Run {
    /// (end of window s, requests/s) per window.
    windows: Vec<(f64, f64)>,
    load: Value,
    /// Client TCP counters' increase over the run.
    tcp: BTreeMap<String, i64>,
    /// `lb`'s drop and error counters after the run (lb contenders only).
    dataplane: Option<BTreeMap<String, u64>>,
    /// The cores' use after the first window.
    cores: cpu::CoreUse,
}

impl Run {
    fn failed(&self) -> u64 {
        self.load["total"]["failed"].as_u64().unwrap_or(0)
    }
    fn drops(&self) -> Option<u64> {
        self.dataplane.as_ref().map(|d| d.values().sum())
    }
}

fn measure(c: Contender, seconds: u64) -> Result<Run, String> {
    let topo = traffic::topology(PREFIX, c);
    let from = clients();
    let adds: Vec<String> = from
        .iter()
        .map(|a| format!("ip addr add {a}/24 dev eth0"))
        .collect();
    topo.sh("client", &adds.join(" && "));
    // Per-address-pair timestamp offsets are what make the addresses look like distinct hosts.
    let ts = topo.sh("client", "sysctl -n net.ipv4.tcp_timestamps");
    assert_eq!(
        ts.trim(),
        "1",
        "net.ipv4.tcp_timestamps in the client namespace"
    );
    let before = tcp_counters(&topo);
    let bin = super::helper_bin("lbt-load", "LBT_LOAD");
    let mut args: Vec<String> = vec![
        bin.to_string_lossy().into_owned(),
        "--connections".into(),
        CONNECTIONS.to_string(),
        "--seconds".into(),
        seconds.to_string(),
        "--window".into(),
        WINDOW_S.to_string(),
        "--timeout".into(),
        TIMEOUT_S.to_string(),
    ];
    for a in &from {
        args.extend(["--from".into(), a.to_string()]);
    }
    for t in c.webs() {
        args.extend(["--to".into(), t.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let sampler = cpu::Sampler::start();
    let out = traffic::client_cmd(&topo, &args, seconds as u32 + 30);
    let cores = sampler.finish(WINDOW_S as usize);
    let out = out?;
    let load: Value =
        serde_json::from_str(&out).map_err(|e| format!("lbt-load's JSON: {e}: {out}"))?;
    let after = tcp_counters(&topo);
    let tcp = after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .collect();
    // None also when `lb status` fails: no figure rather than a zero.
    let status = c.is_lb().then(|| lb::status(&topo)).flatten();
    let dataplane = status.map(|st| {
        st["dataplane"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.starts_with("drop") || k.starts_with("error"))
            .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
            .collect()
    });
    let windows = load["windows"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| {
            let end = w["start_s"].as_f64().unwrap_or(0.0) + w["seconds"].as_f64().unwrap_or(0.0);
            (end, w["rps"].as_f64().unwrap_or(0.0))
        })
        .collect();
    drop(topo);
    // Let the namespaces' sockets and conntrack go before the next contender starts.
    thread::sleep(Duration::from_millis(500));
    Ok(Run {
        windows,
        load,
        tcp,
        dataplane,
        cores,
    })
}

/// Windows after the first of `lb` against a per-window bar; (met, what this run got).
fn judge(lb: &[(f64, f64)], bar: &[f64], what: &str) -> (bool, String) {
    let pairs: Vec<(usize, f64, f64)> = lb
        .iter()
        .zip(bar)
        .enumerate()
        .skip(1)
        .map(|(i, ((_, l), b))| (i, *l, *b))
        .collect();
    if pairs.is_empty() {
        return (false, "no windows after the first".into());
    }
    let below = pairs.iter().filter(|(_, l, b)| l < b).count();
    let (i, l, b) = pairs
        .iter()
        .copied()
        .min_by(|x, y| (x.1 / x.2).total_cmp(&(y.1 / y.2)))
        .expect("non-empty");
    (
        below == 0,
        format!(
            "worst window {}: {l:.0} vs {b:.0} {what} ({:.2}×); {below} of {} windows below",
            i + 1,
            l / b,
            pairs.len()
        ),
    )
}

fn rates(r: &Run) -> Vec<f64> {
    r.windows.iter().map(|w| w.1).collect()
}

fn median_after_first(r: &Run) -> Option<f64> {
    let mut v: Vec<f64> = rates(r).into_iter().skip(1).collect();
    v.sort_by(f64::total_cmp);
    (!v.is_empty()).then(|| super::report::median_sorted(&v))
}

fn failures_text(r: &Run) -> String {
    let kinds: Vec<String> = r.load["failures"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
        .map(|(k, n)| format!("{} {n}", k.replace('_', " ")))
        .collect();
    if kinds.is_empty() {
        r.failed().to_string()
    } else {
        format!("{} ({})", r.failed(), kinds.join(", "))
    }
}

fn drops_text(r: &Run) -> String {
    match &r.dataplane {
        None => "—".into(),
        Some(d) => {
            let nonzero: Vec<String> = d
                .iter()
                .filter(|(_, v)| **v > 0)
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            if nonzero.is_empty() {
                "0".into()
            } else {
                nonzero.join(", ")
            }
        }
    }
}

/// Label suffix of the limit's second run.
const AGAIN: &str = ", again after the others";

/// One contender's run, or its failure recorded in `report`.
fn attempt(c: Contender, seconds: u64, suffix: &str, report: &mut Report) -> Option<Run> {
    eprintln!("    sustained {seconds} s: {}{suffix}", c.label());
    let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| measure(c, seconds)));
    let msg = match got {
        Ok(Ok(r)) => return Some(r),
        Ok(Err(e)) => e,
        Err(e) => e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default(),
    };
    report
        .failures
        .push(format!("sustained: {}{suffix}: {msg}", c.label()));
    None
}

pub fn run(effort: &Effort, report: &mut Report) {
    let seconds = effort.sustained_seconds.max(MIN_SECONDS);
    let mut runs: BTreeMap<Contender, Run> = BTreeMap::new();
    for c in CONTENDERS {
        if let Some(r) = attempt(c, seconds, "", report) {
            runs.insert(c, r);
        }
    }
    // The limit once more at the end: the contenders run one after another, and the machine's
    // rate drifts between minutes by more than the gaps measured; the bar is the mean of both.
    let limit_again = attempt(Contender::Plain, seconds, AGAIN, report);
    let haproxy = runs.get(&Contender::Haproxy).map(median_after_first);
    let mut t = Table::new(
        &format!("Sustained new connections: {CLIENTS} client addresses, {seconds} s"),
        &[
            "contender",
            &format!("requests/s per {WINDOW_S} s window"),
            "median after the first",
            "÷ HAProxy",
            "failed connections",
            "SYN retransmits (client)",
            "data-plane drops and errors",
            "busiest core busy %, the other's",
        ],
        &format!(
            "Each contender on a fresh topology (as in the traffic section: nginx in t1, t2, t3), one after \
             the other. `lbt-load` in the client namespace opens a new TCP connection per request (`GET /` \
             with `Connection: close`, read to EOF, 200 required) with {CONNECTIONS} connections in a closed \
             loop on one thread, for {seconds} s, bound in turn to {CLIENTS} client addresses \
             (10.0.0.{FIRST_CLIENT}–10.0.0.{}, on the client's eth0; tcp_timestamps=1, so each address pair \
             has its own timestamp clock) with the kernel choosing the source port at connect time \
             (IP_BIND_ADDRESS_NO_PORT). A connect, or the request after it, taking over {TIMEOUT_S} s counts \
             as failed. The limit has no balancer: the client addresses the three task IPs in turn; it runs \
             first and again after the others, and its targets' bar is the two runs' mean per window. SYN \
             retransmits: the client namespace's TcpExtTCPSynRetrans over the run (`nstat -as`). Drops: \
             `lb status --json`'s data-plane counters whose names start with drop or error, after the run. \
             Core use: /proc/stat each second after the first window; per second the busiest core's \
             busy share and the other's, averaged (on veths the receive path runs on the sending core, \
             so the client's core carries the requests' way in and can saturate while the other idles). \
             Per-window figures are in sustained.svg beside the JSON report.",
            FIRST_CLIENT + CLIENTS - 1
        ),
    );
    let rows = CONTENDERS
        .iter()
        .map(|c| (c.label().to_owned(), runs.get(c)))
        .chain([(
            format!("{}{AGAIN}", Contender::Plain.label()),
            limit_again.as_ref(),
        )]);
    for (label, r) in rows {
        let Some(r) = r else {
            t.row(
                vec![
                    label.clone(),
                    "not measured".into(),
                    "—".into(),
                    "—".into(),
                    "—".into(),
                    "—".into(),
                    "—".into(),
                    "—".into(),
                ],
                json!({"contender": label, "measured": false}),
            );
            continue;
        };
        let series: Vec<String> = rates(r).iter().map(|v| format!("{v:.0}")).collect();
        let median = median_after_first(r);
        let vs_h = match (median, haproxy.flatten()) {
            (Some(m), Some(h)) if h > 0.0 => Some(m / h),
            _ => None,
        };
        let syn = r.tcp.get("TcpExtTCPSynRetrans").copied().unwrap_or(0);
        t.row(
            vec![
                label.clone(),
                series.join(" · "),
                median.map_or("—".into(), |m| format!("{m:.0}")),
                vs_h.map_or("—".into(), |v| format!("{v:.2}")),
                failures_text(r),
                syn.to_string(),
                drops_text(r),
                format!(
                    "{:.0}, {:.0}",
                    100.0 * r.cores.busiest,
                    100.0 * r.cores.others
                ),
            ],
            json!({
                "contender": label,
                "measured": true,
                "windows_rps": rates(r),
                "median_after_first_rps": median,
                "ratio_to_haproxy": vs_h,
                "client_tcp_counters_delta": r.tcp,
                "dataplane_drops": r.dataplane,
                "cores": {
                    "busiest_busy": r.cores.busiest,
                    "others_busy": r.cores.others,
                    "seconds": r.cores.seconds,
                },
                "load": r.load,
            }),
        );
    }
    report.tables.push(t);
    targets(&runs, limit_again.as_ref(), report);
    let series: Vec<Series> = CONTENDERS
        .iter()
        .map(|c| Series {
            name: c.label().into(),
            points: runs.get(c).map(|r| r.windows.clone()).unwrap_or_default(),
        })
        .chain(limit_again.as_ref().map(|r| Series {
            name: format!("{}{AGAIN}", Contender::Plain.label()),
            points: r.windows.clone(),
        }))
        .collect();
    report.files.push((
        "sustained.svg".into(),
        svg::line_plot(
            &format!(
                "Sustained new connections: {CLIENTS} client addresses, {CONNECTIONS} connections"
            ),
            &format!("time, s (end of each {WINDOW_S} s window)"),
            "requests/s",
            &series,
        ),
    ));
}

/// A target judged window by window against `against` (named `label`), or marked not measured
/// when the contender it derives from (`source`) has no figures.
fn window_target(
    what: String,
    windows: &[(f64, f64)],
    against: Option<&[f64]>,
    label: &str,
    source: &str,
) -> Target {
    match against {
        Some(a) => {
            let (met, got) = judge(windows, a, label);
            Target {
                what,
                got,
                met: Some(met),
            }
        }
        None => Target {
            what,
            got: format!("{source} not measured"),
            met: None,
        },
    }
}

/// Per window, the mean of the limit's runs that were measured (before the others and after).
fn limit_rates(first: Option<&Run>, again: Option<&Run>) -> Option<Vec<f64>> {
    match (first.map(rates), again.map(rates)) {
        (Some(a), Some(b)) => Some(a.iter().zip(&b).map(|(x, y)| (x + y) / 2.0).collect()),
        (a, b) => a.or(b),
    }
}

fn targets(runs: &BTreeMap<Contender, Run>, limit_again: Option<&Run>, report: &mut Report) {
    let rates_of = |c| runs.get(&c).map(rates);
    let haproxy = rates_of(Contender::Haproxy);
    let limit = limit_rates(runs.get(&Contender::Plain), limit_again);
    let nft = rates_of(Contender::Nftables);
    for c in [Contender::LbXdp, Contender::LbTc, Contender::LbTcPreserve] {
        let name = c.label();
        let Some(r) = runs.get(&c) else {
            report.targets.push(Target {
                what: format!("sustained: {name}"),
                got: "not measured".into(),
                met: None,
            });
            continue;
        };
        let what = format!(
            "sustained requests/s, {name} ≥ 1.5× HAProxy (or 0.9× the limit where lower; the limit's two runs' mean), every window after the first"
        );
        // Per window: 1.5× HAProxy's rate, or 0.9× the limit's where that is lower.
        let bar = haproxy.as_ref().map(|h| {
            h.iter()
                .enumerate()
                .map(|(i, h)| {
                    let l = limit.as_ref().and_then(|l| l.get(i)).copied();
                    l.map_or(1.5 * h, |l| (1.5 * h).min(0.9 * l))
                })
                .collect::<Vec<f64>>()
        });
        report.targets.push(window_target(
            what,
            &r.windows,
            bar.as_deref(),
            "bar",
            "HAProxy",
        ));
        let what = format!("sustained requests/s, {name} ≥ nftables, every window after the first");
        report.targets.push(window_target(
            what,
            &r.windows,
            nft.as_deref(),
            "nftables",
            "nftables",
        ));
        report.targets.push(Target {
            what: format!("sustained: {name}, no failed connections"),
            got: failures_text(r),
            met: Some(r.failed() == 0),
        });
        report.targets.push(Target {
            what: format!("sustained: {name}, no data-plane drops or errors"),
            got: drops_text(r),
            met: r.drops().map(|d| d == 0),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judging_skips_the_first_window_and_names_the_worst() {
        let lb = [(5.0, 10.0), (10.0, 100.0), (15.0, 80.0)];
        let (met, got) = judge(&lb, &[50.0, 50.0, 100.0], "bar");
        assert!(!met);
        assert!(got.starts_with("worst window 3: 80 vs 100"), "{got}");
        assert!(got.ends_with("1 of 2 windows below"), "{got}");
        assert!(judge(&lb, &[50.0, 50.0, 50.0], "bar").0);
        assert!(!judge(&lb[..1], &[1.0], "bar").0);
    }

    fn run_of(rps: &[f64]) -> Run {
        Run {
            windows: rps
                .iter()
                .enumerate()
                .map(|(i, r)| (5.0 * (i + 1) as f64, *r))
                .collect(),
            load: Value::Null,
            tcp: BTreeMap::new(),
            dataplane: None,
            cores: cpu::CoreUse::default(),
        }
    }

    #[test]
    fn the_limit_is_the_mean_of_its_runs_per_window() {
        let (a, b) = (run_of(&[10.0, 20.0]), run_of(&[30.0, 10.0]));
        assert_eq!(limit_rates(Some(&a), Some(&b)), Some(vec![20.0, 15.0]));
        assert_eq!(limit_rates(None, Some(&b)), Some(vec![30.0, 10.0]));
        assert_eq!(limit_rates(Some(&a), None), Some(vec![10.0, 20.0]));
        assert_eq!(limit_rates(None, None), None);
    }
}
