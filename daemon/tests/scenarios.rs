//! Every `scenarios/*.toml` file as one test, run by the harness against this package's
//! `homerd` binary. The binary is its own test harness (libtest-mimic) because it is also the
//! effects probe the scenarios' jobs exec (`<this binary> __probe ...`), and because the
//! harness must install its signal handling and become a child subreaper before any thread
//! exists: SIGINT or SIGTERM to this binary kills every process the scenarios started.
//!
//! `HOMER_TEST_TIME_SCALE` scales every deadline; `HOMERD_MUTANT` (with a `mutants` build)
//! points the scenarios at a broken daemon, as `cargo xtask mutants` does.

use std::ffi::OsString;
use std::path::PathBuf;

use homer_harness::{exec, probe, procs, scenario};
use libtest_mimic::{Arguments, Failed, Trial};

fn main() {
    let mut args = std::env::args();
    let _ = args.next();
    if args.next().as_deref() == Some("__probe") {
        std::process::exit(probe::probe_main(args.collect()));
    }
    procs::init();
    let (keep, keep_failed, sandbox_base) = exec::Options::sandbox_from_env();
    // HOMER_HARNESS_JUNIT=FILE: also write a JUnit report of the scenario runs.
    let junit = std::env::var_os("HOMER_HARNESS_JUNIT").map(PathBuf::from);
    let started = std::time::Instant::now();
    let me = std::env::current_exe().expect("the test binary's path");
    let opts = exec::Options {
        daemon: PathBuf::from(env!("CARGO_BIN_EXE_homerd")),
        probe: vec![OsString::from(&me), OsString::from("__probe")],
        time_scale: exec::Options::time_scale_from_env(),
        keep,
        keep_failed,
        sandbox_base,
        mutant: std::env::var("HOMERD_MUTANT").ok(),
        snapshot_dir: homer_harness::repo_scenarios_dir().join("snapshots"),
    };
    // HOMER_SCENARIOS_DIR points the binary at other files (its own interrupt test uses it).
    let dir =
        std::env::var_os("HOMER_SCENARIOS_DIR").map(PathBuf::from).unwrap_or_else(homer_harness::repo_scenarios_dir);
    let files = homer_harness::collect_scenarios(&[dir]).expect("list the scenario files");
    // One trial per (scenario, backend) pair: `NAME` on SQLite, `NAME [postgres]` on
    // PostgreSQL. A file that does not parse is one trial, which fails with the error.
    let runs: Vec<(PathBuf, Option<scenario::Scenario>)> = files
        .into_iter()
        .flat_map(|path| match scenario::parse_file(&path) {
            Ok(sc) => sc.runs(None).into_iter().map(|run| (path.clone(), Some(run))).collect(),
            Err(_) => vec![(path, None)],
        })
        .collect();
    let trials: Vec<Trial> = runs
        .into_iter()
        .map(|(path, run)| {
            let name = match &run {
                Some(sc) => sc.name.clone(),
                None => path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
            };
            let opts = opts.clone();
            let linux_only = run.as_ref().and_then(skip_here);
            if let Some(why) = &linux_only {
                // Not run here: still a testcase in the JUnit report, marked skipped.
                results().lock().unwrap_or_else(|e| e.into_inner()).push(exec::ScenarioResult {
                    name: name.clone(),
                    path: path.clone(),
                    outcome: exec::Outcome::Skipped(why.clone()),
                    duration: std::time::Duration::ZERO,
                    kept: None,
                });
            }
            Trial::test(name, move || {
                let sc = match run {
                    Some(sc) => sc,
                    None => {
                        return Err(Failed::from(
                            scenario::parse_file(&path).err().map(|e| e.to_string()).unwrap_or_default(),
                        ))
                    }
                };
                let r = exec::run_scenario(&sc, &opts);
                results().lock().unwrap_or_else(|e| e.into_inner()).push(r.clone());
                if let Some(k) = &r.kept {
                    eprintln!("sandbox kept: {}", k.display());
                }
                match r.outcome {
                    exec::Outcome::Passed => Ok(()),
                    // Reported as ignored with the reason by the marking below; never a pass.
                    exec::Outcome::Skipped(why) => Err(Failed::from(format!("skipped unexpectedly: {why}"))),
                    exec::Outcome::Failed(f) => Err(Failed::from(format!("{} failed:\n{f}", sc.name))),
                }
            })
            .with_ignored_flag(linux_only.is_some())
            .with_kind(linux_only.unwrap_or_default())
        })
        .collect();
    let mut trials: Vec<Trial> = trials;
    // Only in the real run, not in the copies of this binary the trial below starts.
    if std::env::var_os("HOMER_SCENARIOS_DIR").is_none() {
        trials.push(
            Trial::test("harness::interrupted_test_binary_leaves_nothing_running", interrupted_binary_leaves_nothing)
                .with_ignored_flag(!cfg!(target_os = "linux"))
                .with_kind(if cfg!(target_os = "linux") { "" } else { "skipped: reads /proc" }),
        );
    }
    let conclusion = libtest_mimic::run(&Arguments::from_args(), trials);
    if let Some(path) = junit {
        let results = results().lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Err(e) = std::fs::write(&path, homer_harness::report::junit(&results, started.elapsed())) {
            eprintln!("cannot write {}: {e}", path.display());
        }
    }
    conclusion.exit();
}

/// Every scenario result of this run, for the JUnit report.
fn results() -> &'static std::sync::Mutex<Vec<exec::ScenarioResult>> {
    static RESULTS: std::sync::OnceLock<std::sync::Mutex<Vec<exec::ScenarioResult>>> = std::sync::OnceLock::new();
    RESULTS.get_or_init(Default::default)
}

/// SIGINT or SIGTERM to this very test binary, mid-scenario, kills every process the
/// scenario started (the daemon, its job and the job's escaped grandchild).
fn interrupted_binary_leaves_nothing() -> Result<(), Failed> {
    use homer_harness::selftest::*;
    let dir = tempfile::tempdir().map_err(|e| Failed::from(e.to_string()))?;
    write(dir.path(), "long.toml", &long_scenario(&never("600s")));
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let mut cmd = std::process::Command::new(std::env::current_exe().map_err(|e| Failed::from(e.to_string()))?);
        cmd.args(["--exact", "long", "--test-threads", "1"])
            .env("HOMER_SCENARIOS_DIR", dir.path())
            .env("HOMER_HARNESS_SANDBOX_DIR", dir.path())
            .env_remove("HOMER_HARNESS_KEEP")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        // This process is a subreaper with a zombie reaper: a child it waits on itself must
        // be registered as owned, or the reaper may collect its exit status first.
        let (mut child, _) = procs::spawn_owned(&mut cmd).map_err(|e| Failed::from(e.to_string()))?;
        let pid = child.pid() as u32;
        let seen = wait_for_processes(pid, 3);
        // The copy of this binary we just started, unreaped until wait_exit: still ours.
        child.signal(signal);
        let exit = child.wait_exit(deadline(60.0)).ok_or_else(|| Failed::from("the test binary did not exit"))?;
        procs::disown(pid);
        if exit.code() != Some(128 + signal) {
            return Err(Failed::from(format!("signal {signal}: the test binary exited {}", exit.describe())));
        }
        let alive = started_by(pid);
        if !alive.is_empty() {
            return Err(Failed::from(format!("signal {signal}: {alive:?} still alive (saw {seen:?})")));
        }
        // Nor its sandbox: only the scenario file is left in the directory.
        let left: Vec<String> = std::fs::read_dir(dir.path())
            .map_err(|e| Failed::from(e.to_string()))?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .filter(|n| n != "long.toml")
            .collect();
        if !left.is_empty() {
            return Err(Failed::from(format!("signal {signal}: left behind {left:?}")));
        }
    }
    Ok(())
}

/// Scenarios whose requirements this system cannot meet are reported as ignored, with the
/// reason as the test's kind (shown as `[reason]` in the test list), never passed.
fn skip_here(sc: &scenario::Scenario) -> Option<String> {
    exec::run_skip_reason(sc).map(|why| format!("skipped: {why}"))
}
