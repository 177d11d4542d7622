//! What the benchmark prints and stores: tables with the method behind them, targets met or
//! missed, and the machine they ran on; markdown on stdout, JSON under `target/bench/`.
use std::{fmt::Write as _, fs, path::Path, process::Command};

use serde_json::{Value, json};

/// A figure over several runs: the median, and min–max as its spread.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Spread {
    /// Panics on an empty slice: a figure without samples is a bug in the benchmark.
    pub fn of(values: &[f64]) -> Self {
        assert!(!values.is_empty(), "a figure needs at least one sample");
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        Self {
            median: median_sorted(&v),
            min: v[0],
            max: v[v.len() - 1],
            n: v.len(),
        }
    }

    /// `median (min–max)` with `digits` decimals.
    pub fn show(&self, digits: usize) -> String {
        if self.n == 1 {
            return format!("{:.digits$}", self.median);
        }
        format!(
            "{:.digits$} ({:.digits$}–{:.digits$})",
            self.median, self.min, self.max
        )
    }

    pub fn json(&self) -> Value {
        json!({"median": self.median, "min": self.min, "max": self.max, "runs": self.n})
    }
}

pub fn median_sorted(v: &[f64]) -> f64 {
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The value at quantile `q` (0..=1) of sorted samples, nearest rank.
pub fn quantile_sorted(v: &[f64], q: f64) -> f64 {
    let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

pub struct Table {
    pub title: String,
    /// How the figures were obtained, printed under the table.
    pub method: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// The same figures for machines, one object per row.
    pub data: Vec<Value>,
}

impl Table {
    pub fn new(title: &str, columns: &[&str], method: &str) -> Self {
        Self {
            title: title.to_owned(),
            method: method.to_owned(),
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
            rows: Vec::new(),
            data: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>, data: Value) {
        self.rows.push(cells);
        self.data.push(data);
    }
}

/// A target from the brief, and whether this run met it (`None`: not measured).
pub struct Target {
    pub what: String,
    pub got: String,
    pub met: Option<bool>,
}

#[derive(Default)]
pub struct Report {
    pub tables: Vec<Table>,
    pub targets: Vec<Target>,
    /// Sections that could not run, with why.
    pub failures: Vec<String>,
    /// What a reader needs beside the figures (e.g. the data plane's drop counters).
    pub notes: Vec<String>,
    /// Further files (name, contents) saved beside the JSON, e.g. plots.
    pub files: Vec<(String, String)>,
}

fn sh(cmd: &str) -> String {
    Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Date, kernel, CPU model and count: what the figures depend on.
pub fn machine() -> Value {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    json!({
        "date": sh("date -u +%Y-%m-%dT%H:%M:%SZ"),
        "kernel": fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "loadavg_at_start": fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
    })
}

impl Report {
    pub fn markdown(&self, machine: &Value, quick: bool) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# lb benchmarks{}\n\n{} · kernel {} · {} ({} cores) · load at start {}\n",
            if quick { " (quick smoke run)" } else { "" },
            machine["date"].as_str().unwrap_or(""),
            machine["kernel"].as_str().unwrap_or(""),
            machine["cpu"].as_str().unwrap_or(""),
            machine["cores"],
            machine["loadavg_at_start"].as_str().unwrap_or(""),
        );
        if !self.targets.is_empty() {
            let _ = writeln!(
                s,
                "## Targets\n\n| target | this run | met |\n|---|---|---|"
            );
            for t in &self.targets {
                let met = match t.met {
                    Some(true) => "met",
                    Some(false) => "missed",
                    None => "not measured",
                };
                let _ = writeln!(s, "| {} | {} | {met} |", t.what, t.got);
            }
            s.push('\n');
        }
        for t in &self.tables {
            let _ = writeln!(s, "## {}\n", t.title);
            let _ = writeln!(s, "| {} |", t.columns.join(" | "));
            let _ = writeln!(s, "|{}", "---|".repeat(t.columns.len()));
            for r in &t.rows {
                let _ = writeln!(s, "| {} |", r.join(" | "));
            }
            let _ = writeln!(s, "\n{}\n", t.method);
        }
        for n in &self.notes {
            let _ = writeln!(s, "**Note:** {n}\n");
        }
        for f in &self.failures {
            let _ = writeln!(s, "**Not measured:** {f}\n");
        }
        s
    }

    pub fn json(&self, machine: &Value, quick: bool) -> Value {
        json!({
            "machine": machine,
            "quick": quick,
            "targets": self.targets.iter().map(|t| json!({"target": t.what, "got": t.got, "met": t.met})).collect::<Vec<_>>(),
            "tables": self.tables.iter().map(|t| json!({
                "title": t.title, "method": t.method, "columns": t.columns, "rows": t.data,
            })).collect::<Vec<_>>(),
            "not_measured": self.failures,
            "notes": self.notes,
        })
    }

    /// Writes `latest.json`, a dated copy and the report's further files under `dir`.
    pub fn save(
        &self,
        dir: &Path,
        machine: &Value,
        quick: bool,
    ) -> std::io::Result<Vec<std::path::PathBuf>> {
        fs::create_dir_all(dir)?;
        let body =
            serde_json::to_string_pretty(&self.json(machine, quick)).expect("JSON of plain values");
        let stamp = machine["date"]
            .as_str()
            .unwrap_or("undated")
            .replace(':', "");
        let kind = if quick { "quick" } else { "full" };
        let mut paths = vec![
            dir.join("latest.json"),
            dir.join(format!("{stamp}-{kind}.json")),
        ];
        for p in &paths {
            fs::write(p, &body)?;
        }
        for (name, contents) in &self.files {
            let p = dir.join(name);
            fs::write(&p, contents)?;
            paths.push(p);
        }
        Ok(paths)
    }
}
