//! `lb-bench [--quick] [--only packet|traffic|sustained|control|dns|http]`: the benchmarks `cargo xtask bench` runs
//! as root. Prints a markdown report and stores it as JSON under `target/bench/`.
use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    path::PathBuf,
    time::Instant,
};

use lb_bench::{Effort, control, dns, http, packet, report, sustained, traffic};

/// A part of the benchmark: it adds its tables and targets to the report.
type Section = fn(&Effort, &mut report::Report);

const USAGE: &str = "usage: lb-bench [--quick] [--only packet|traffic|sustained|control|dns|http]... \
     [--out DIR] [--seconds N] [--sustained-seconds N (at least 15)]";

fn main() {
    let mut quick = false;
    let mut only: Vec<String> = Vec::new();
    let mut out = PathBuf::from("target/bench");
    let mut seconds = None;
    let mut sustained_seconds = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--only" => only.push(args.next().expect(USAGE)),
            "--out" => out = args.next().expect(USAGE).into(),
            "--seconds" => seconds = Some(args.next().and_then(|s| s.parse().ok()).expect(USAGE)),
            "--sustained-seconds" => {
                let s = args.next().and_then(|s| s.parse().ok()).expect(USAGE);
                if s < sustained::MIN_SECONDS {
                    eprintln!("{USAGE}");
                    std::process::exit(2);
                }
                sustained_seconds = Some(s);
            }
            // Internal: one translate-and-apply measurement in a process of its own.
            "--control-apply" => {
                let n = args.next().and_then(|n| n.parse().ok()).expect(USAGE);
                control::apply_child(n);
                return;
            }
            _ => {
                eprintln!("{USAGE}");
                std::process::exit(2);
            }
        }
    }
    let mut effort = Effort::new(quick);
    if let Some(s) = seconds {
        effort.seconds = s;
    }
    if let Some(s) = sustained_seconds {
        effort.sustained_seconds = s;
    }
    let machine = report::machine();
    let mut rep = report::Report::default();
    let sections: [(&str, Section); 6] = [
        ("packet", packet::run),
        ("traffic", traffic::run),
        ("sustained", sustained::run),
        ("control", control::run),
        ("dns", dns::run),
        ("http", http::run),
    ];
    for (name, section) in sections {
        if !only.is_empty() && !only.iter().any(|o| o == name) {
            continue;
        }
        eprintln!("==> bench: {name}");
        let start = Instant::now();
        // A section that breaks is reported as not measured; the others still run.
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| section(&effort, &mut rep))) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "panicked".into());
            rep.failures.push(format!("{name}: {msg}"));
        }
        eprintln!("    {name} took {:.0} s", start.elapsed().as_secs_f64());
    }
    print!("{}", rep.markdown(&machine, quick));
    match rep.save(&out, &machine, quick) {
        Ok(paths) => {
            for p in paths {
                eprintln!("wrote {}", p.display());
            }
        }
        Err(e) => eprintln!(
            "could not write the JSON report under {}: {e}",
            out.display()
        ),
    }
}
