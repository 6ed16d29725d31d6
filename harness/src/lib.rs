//! homer-harness: replays scenario files against real `homerd` processes in temp sandboxes
//! and checks invariants over the database, the daemons' events and an independent effects
//! history (see `scenarios/README.md` and ARCHITECTURE.md).
//!
//! - [`scenario`]: the file format and its validating parser (header, settings, spans).
//! - [`steps`]: one module per step verb (its struct, parser, summary and run) and the
//!   registry of verbs.
//! - [`exec`]: runs one scenario (sandbox, steps, teardown); `exec::ctx` is the context
//!   every step runs against (processes, waits, queries, history).
//! - [`procs`]: owns every process the harness starts (subreaper, markers, cleanup, signals).
//! - [`faults`]: faults below the process (damaged bytes, a full filesystem, a tmpfs home).
//! - [`probe`]: the effects probe jobs `exec`; [`history`] and [`check`]: the invariants.
//! - [`report`]: live lines, the summary table, JUnit XML; [`timeline`]: `timeline.html`,
//!   a kept run drawn on one time axis.
//! - [`fuzz`]: randomized fault runs composed from the same steps.
//! - [`powerloss`]: drops the writes no fsync covered (homerd's recording VFS log);
//!   [`powersweep`]: `homer-harness powerloss`, power cuts swept over small workloads.

pub mod check;
pub mod exec;
pub mod faults;
pub mod fuzz;
pub mod history;
pub mod powerloss;
pub mod powersweep;
pub mod probe;
pub mod procs;
pub mod report;
pub mod scenario;
pub mod selftest;
pub mod snapshot;
pub mod steps;
pub mod timeline;
mod watch;

use std::path::{Path, PathBuf};

/// Every `*.toml` under the given files and directories, sorted.
pub fn collect_scenarios(paths: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            for entry in std::fs::read_dir(p)? {
                let path = entry?.path();
                if path.extension().is_some_and(|e| e == "toml") {
                    out.push(path);
                }
            }
        } else {
            out.push(p.clone());
        }
    }
    out.sort();
    Ok(out)
}

/// The repository's `scenarios/` directory (for the test binaries and defaults).
pub fn repo_scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("scenarios")
}

/// Run parsed scenarios on `jobs` threads, `repeat` times each (or until the first failure
/// with `until_fail`), calling `on_result` as each finishes. Results come back in finish order.
pub fn run_all(
    scenarios: &[scenario::Scenario],
    opts: &exec::Options,
    jobs: usize,
    repeat: usize,
    until_fail: bool,
    on_result: &(dyn Fn(&exec::ScenarioResult) + Sync),
) -> Vec<exec::ScenarioResult> {
    let total = if until_fail { usize::MAX } else { scenarios.len() * repeat.max(1) };
    run_runs(scenarios, opts, jobs, total, until_fail, on_result)
}

/// Run `total` runs (scenario `i % len` for run `i`) on `jobs` threads; with `stop_on_fail`
/// no new run starts after one failed.
pub fn run_runs(
    scenarios: &[scenario::Scenario],
    opts: &exec::Options,
    jobs: usize,
    total: usize,
    stop_on_fail: bool,
    on_result: &(dyn Fn(&exec::ScenarioResult) + Sync),
) -> Vec<exec::ScenarioResult> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Mutex;
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| loop {
                if stop_on_fail && failed.load(Ordering::SeqCst) {
                    return;
                }
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= total || scenarios.is_empty() {
                    return;
                }
                let r = exec::run_scenario(&scenarios[i % scenarios.len()], opts);
                if matches!(r.outcome, exec::Outcome::Failed(_)) {
                    failed.store(true, Ordering::SeqCst);
                }
                on_result(&r);
                results.lock().unwrap_or_else(|e| e.into_inner()).push(r);
            });
        }
    });
    results.into_inner().unwrap_or_else(|e| e.into_inner())
}
