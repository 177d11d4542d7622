//! The differential fuzzer in CI: a bounded run (1,000,000 packets per hook unless
//! `LB_FUZZ_PACKETS` says otherwise) of `lb_tests::fuzz` against the reference model, and the
//! known deviations of the data plane from the model, each shown by its minimal packet, so a
//! fix in lb-ebpf makes its test fail until the deviation switch is turned off.
use lb_tests::{
    fuzz::{self, Options},
    netns::in_netns,
};

/// CI's count: at least a million runs through each hook.
const CI_PACKETS_PER_HOOK: u64 = 1_000_000;

#[test]
fn the_data_plane_agrees_with_the_model() {
    let _ns = fuzz::namespace();
    let opts = Options::from_env(CI_PACKETS_PER_HOOK);
    eprintln!(
        "fuzzing with LB_FUZZ_SEED={:#x}, {} packets per hook",
        opts.seed, opts.packets_per_hook
    );
    let o = opts.clone();
    let report = in_netns(fuzz::NS, move || fuzz::run(&o));
    let rate = (report.xdp_runs + report.tc_runs) as f64 / report.seconds;
    eprintln!(
        "{} XDP and {} TC runs in {} batches, {:.1} s ({rate:.0} runs/s); {} inputs refused by the harness",
        report.xdp_runs, report.tc_runs, report.batches, report.seconds, report.refused
    );
    let mut kinds: Vec<_> = report.by_kind.iter().collect();
    kinds.sort();
    eprintln!("inputs: {kinds:?}");
    let mut causes: Vec<_> = report.by_cause.iter().collect();
    causes.sort();
    eprintln!("outcomes: {causes:?}");
    assert!(
        report.failures.is_empty(),
        "{} failing batch(es) (seed {:#x}):\n{}",
        report.failures.len(),
        opts.seed,
        report.failures.join("\n\n")
    );
    assert!(report.xdp_runs >= opts.packets_per_hook && report.tc_runs >= opts.packets_per_hook);
}
