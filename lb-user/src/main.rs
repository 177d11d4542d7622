//! `lb`: the daemon (`lb run`) and the operator's tools (`status`, `flows`, `detach`).
use anyhow::Result;
use clap::Parser as _;
use lb_user::{
    cli::{Cli, Command, default_state_file},
    daemon,
    dataplane::{attach, pins::PinLayout},
    observe::status,
};
use tracing_subscriber::EnvFilter;

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(log_filter(&args.log_level)?)
                .with_target(false)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_writer(std::io::stderr)
                .init();
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(daemon::run(*args))
        }
        Command::Status(v) => {
            let layout = PinLayout::new(&v.pin.pin_path);
            let view = status::status(&layout, &default_state_file(&v.pin.pin_path))?;
            if v.json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                print!("{}", status::render_status(&view));
            }
            Ok(())
        }
        Command::Flows(v) => {
            let list = status::flows(&PinLayout::new(&v.pin.pin_path))?;
            if v.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", status::render_flows(&list));
            }
            Ok(())
        }
        Command::Dns(q) => {
            let server = lb_user::dns::query::server_of(&q)?;
            let answered = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(lb_user::dns::query::ask(server, &q.name, q.qtype.into()))?;
            if q.json {
                println!("{}", serde_json::to_string_pretty(&answered)?);
            } else {
                print!("{}", lb_user::dns::query::render(&answered));
            }
            Ok(())
        }
        Command::Detach(p) => {
            let layout = PinLayout::new(&p.pin_path);
            let removed = attach::detach_all(&layout)?;
            let _ = std::fs::remove_file(default_state_file(&p.pin_path));
            if removed.is_empty() {
                println!(
                    "nothing attached under {}; pinned maps removed",
                    p.pin_path.display()
                );
            } else {
                println!("detached: {}", removed.join(", "));
            }
            Ok(())
        }
    }
}

/// `--log-level`, with hickory-server's one line per DNS query kept at `warn` unless the
/// operator names it.
fn log_filter(level: &str) -> Result<EnvFilter> {
    if level.contains("hickory") {
        Ok(EnvFilter::try_new(level)?)
    } else {
        Ok(EnvFilter::try_new(format!("{level},hickory_server=warn"))?)
    }
}
