//! The deployment files in `deploy/` must stay runnable: their command lines parse with the
//! real CLI, and the Marathon app is shaped as marathon-lb's own app was (host networking,
//! privileged, one per public agent) without being balanced by itself.
use clap::Parser as _;
use lb_user::{
    cli::{Cli, Command},
    marathon::{
        api::parse_apps,
        translate::{TranslateOptions, translate},
    },
};
use serde_json::Value;

fn deploy(file: &str) -> String {
    std::fs::read_to_string(format!("{}/../deploy/{file}", env!("CARGO_MANIFEST_DIR"))).expect(file)
}

#[test]
fn marathon_app_runs_lb_like_marathon_lb_ran() {
    let app: Value = serde_json::from_str(&deploy("lb.marathon.json")).expect("valid JSON");
    assert_eq!(app["networks"][0]["mode"], "host");
    assert_eq!(app["container"]["docker"]["privileged"], true);
    assert_eq!(app["acceptedResourceRoles"][0], "slave_public");
    assert_eq!(
        app["constraints"][0],
        serde_json::json!(["hostname", "UNIQUE"])
    );
    assert_eq!(app["healthChecks"][0]["path"], "/healthz");
    let mut argv = vec!["lb".to_owned()];
    argv.extend(
        app["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned()),
    );
    let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    let Command::Run(run) = cli.command else {
        panic!("the app runs `lb run`")
    };
    assert_eq!(
        run.metrics.port(),
        9090,
        "the health check port is the metrics port"
    );
    // Marathon lists the app itself: it must not become a balanced service.
    let body = serde_json::json!({"apps": [app]}).to_string();
    let parsed = parse_apps(body.as_bytes()).expect("the app parses as Marathon returns it");
    let t = translate(&parsed.apps, &TranslateOptions::default(), &mut |_| None);
    assert!(t.desired.services.is_empty(), "{:?}", t.desired.services);
}

#[test]
fn systemd_unit_command_line_parses() {
    let unit = deploy("lb.service");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let argv: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(argv[0], "/usr/local/bin/lb");
    Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    assert!(
        unit.contains("KillSignal=SIGTERM"),
        "a stop must only end the daemon"
    );
}
