//! A Marathon stand-in for shell demos: serves a JSON file as `/v2/apps` with a live `/v2/events`
//! stream, and re-reads the file (announcing an event) when it changes or on SIGHUP.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use lb_tests::marathon_standin::Standin;
use tokio::signal::unix::{SignalKind, signal};

const USAGE: &str = "usage: marathon-standin --apps FILE [--listen ADDR] [--heartbeat-ms N]

  --apps FILE        JSON document served as /v2/apps (re-read on change or SIGHUP)
  --listen ADDR      address to listen on (default 127.0.0.1:8080)
  --heartbeat-ms N   event stream heartbeat interval (default 1000)";

struct Args {
    listen: SocketAddr,
    apps: PathBuf,
    heartbeat: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut listen: SocketAddr = "127.0.0.1:8080".parse().expect("default address parses");
    let mut apps = None;
    let mut heartbeat = Duration::from_secs(1);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match flag.as_str() {
            "--listen" => {
                let v = value("--listen")?;
                listen = v.parse().map_err(|e| format!("--listen {v}: {e}"))?;
            }
            "--apps" => apps = Some(PathBuf::from(value("--apps")?)),
            "--heartbeat-ms" => {
                let v = value("--heartbeat-ms")?;
                heartbeat = Duration::from_millis(
                    v.parse().map_err(|e| format!("--heartbeat-ms {v}: {e}"))?,
                );
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Args {
        listen,
        apps: apps.ok_or("--apps is required")?,
        heartbeat,
    })
}

fn load(path: &Path) -> Result<serde_json::Value, String> {
    let text = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))
}

/// What identifies a version of the file without reading it.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("marathon-standin: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let initial = match load(&args.apps) {
        Ok(json) => json,
        Err(e) => {
            eprintln!("marathon-standin: {e}");
            return ExitCode::FAILURE;
        }
    };
    let standin = Standin::start_with(args.listen, args.heartbeat).await;
    standin.set_apps(initial);
    println!(
        "marathon-standin serving {} at {}",
        args.apps.display(),
        standin.url()
    );

    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler installs");
    let mut poll = tokio::time::interval(Duration::from_millis(500));
    let mut seen = stamp(&args.apps);
    loop {
        let forced = tokio::select! {
            _ = poll.tick() => false,
            _ = hup.recv() => true,
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
        };
        let now = stamp(&args.apps);
        if !forced && now == seen {
            continue;
        }
        seen = now;
        match load(&args.apps) {
            Ok(json) => {
                standin.set_apps(json);
                println!(
                    "marathon-standin: reloaded {}, event sent",
                    args.apps.display()
                );
            }
            // Keep serving the previous document, as Marathon would keep its state.
            Err(e) => eprintln!("marathon-standin: {e}; keeping the previous document"),
        }
    }
}
