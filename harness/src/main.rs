//! `homer-harness`: run scenario files against a daemon binary, or fuzz it.
//!
//! Exit codes: 0 every run passed (skips allowed), 1 a run failed, 2 usage or a malformed
//! scenario file (nothing ran), or a `fuzz` whose every seed was skipped (nothing tested). `powerloss`: 0 no invariant broken (with `--mutant`: the
//! mutant lost acknowledged jobs, i.e. it was caught), 1 otherwise, 2 usage or setup.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use homer_harness::{exec, fuzz, powersweep, probe, procs, report, scenario};

#[derive(Parser)]
#[command(name = "homer-harness", version, about = "Replay scenario files against real homerd processes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct Target {
    /// The daemon under test (default: `homerd` beside this binary)
    #[arg(long, value_name = "PATH", env = "HOMER_HARNESS_DAEMON")]
    daemon: Option<PathBuf>,
    /// Run every daemon with HOMERD_MUTANT=NAME (needs a build with the `mutants` feature)
    #[arg(long, value_name = "NAME", value_parser = parse_mutant)]
    mutant: Option<String>,
    /// Keep every sandbox and print its path
    #[arg(long)]
    keep: bool,
    /// Keep only the sandboxes of failed runs
    #[arg(long)]
    keep_failed: bool,
    /// Scenarios run at once (default: 2 x CPUs)
    #[arg(long, short = 'j')]
    jobs: Option<usize>,
}

#[derive(Subcommand)]
enum Command {
    /// Run scenario files (default: ./scenarios)
    Run {
        paths: Vec<PathBuf>,
        #[command(flatten)]
        target: Target,
        /// Write a JUnit XML report
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        /// Run each scenario N times
        #[arg(long, default_value_t = 1)]
        repeat: usize,
        /// Repeat the set until a run fails
        #[arg(long)]
        until_fail: bool,
        /// Write the results as JSON (name, outcome, detail) — for `cargo xtask mutants`
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Run only on this backend: `sqlite` or `postgres` (default: every backend each
        /// scenario names in `[settings] backends`)
        #[arg(long, value_name = "NAME", value_parser = parse_backend)]
        backend: Option<scenario::Backend>,
    },
    /// Print every scenario's name, what it covers and the mutants it must fail on, as JSON
    List { paths: Vec<PathBuf> },
    /// Parse scenario files and report the first error in each (runs nothing)
    Lint { paths: Vec<PathBuf> },
    /// Randomized fault runs against the invariants
    Fuzz {
        /// First seed
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// How many consecutive seeds
        #[arg(long, default_value_t = 1)]
        seeds: u64,
        #[command(flatten)]
        target: Target,
        /// Where failing runs are written as scenario files
        #[arg(long, value_name = "DIR", default_value = "target/fuzz-failures")]
        out: PathBuf,
        /// Print the generated scenario and exit
        #[arg(long)]
        print: bool,
        /// Start no new seed once one failed
        #[arg(long)]
        until_caught: bool,
        /// `sqlite` (default) or `postgres`: many daemons on homes of their own share a
        /// throwaway PostgreSQL server's queue
        #[arg(long, value_name = "NAME", value_parser = parse_backend)]
        backend: Option<scenario::Backend>,
        /// With `--backend postgres`: how many homes (hosts)
        #[arg(long, value_name = "N", default_value_t = fuzz::PG_HOMES)]
        homes: u32,
    },
    /// Sweep power cuts over small workloads: drop the writes no fsync covered, restart
    /// cleanly, check that nothing acknowledged was lost (see harness/src/powersweep/)
    Powerloss {
        /// The daemon under test (default: `homerd` beside this binary)
        #[arg(long, value_name = "PATH", env = "HOMER_HARNESS_DAEMON")]
        daemon: Option<PathBuf>,
        /// At most N cut points per armed process, evenly spread (default: every op)
        #[arg(long, value_name = "N")]
        cuts: Option<usize>,
        /// enqueue, claim, outcome, migration or all (or a workload name)
        #[arg(long, default_value = "all")]
        phase: String,
        /// Run the recording processes with HOMERD_MUTANT=NAME (a `--features mutants`
        /// build); then exit 0 only if acknowledged jobs were lost (the mutant was caught)
        #[arg(long, value_name = "NAME", value_parser = parse_mutant)]
        mutant: Option<String>,
        /// Cut points run at once (default: CPUs)
        #[arg(long, short = 'j')]
        jobs: Option<usize>,
        /// Keep every sandbox (failing ones are kept anyway, except under --mutant)
        #[arg(long)]
        keep: bool,
        /// Run one cut point only, as a failure report prints it
        #[arg(long, value_name = "WORKLOAD:PROCESS:N")]
        at: Option<String>,
        /// The pre-004 database of the migration workload
        #[arg(long, value_name = "PATH")]
        fixture: Option<PathBuf>,
    },
    /// The effects probe (jobs exec this; see probe.rs)
    #[command(name = "__probe", hide = true)]
    Probe {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn options(t: &Target) -> Result<exec::Options, String> {
    let me = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let daemon = match &t.daemon {
        Some(d) => d.clone(),
        None => me.with_file_name("homerd"),
    };
    if !daemon.is_file() {
        return Err(format!(
            "{}: no daemon binary there; build it (cargo build -p homerd) or pass --daemon PATH",
            daemon.display()
        ));
    }
    let daemon = std::fs::canonicalize(&daemon).map_err(|e| format!("{}: {e}", daemon.display()))?;
    Ok(exec::Options {
        daemon,
        probe: vec![OsString::from(&me), OsString::from("__probe")],
        time_scale: exec::Options::time_scale_from_env(),
        keep: t.keep,
        keep_failed: t.keep_failed,
        sandbox_base: std::env::var_os("HOMER_HARNESS_SANDBOX_DIR").filter(|v| !v.is_empty()).map(PathBuf::from),
        mutant: t.mutant.clone(),
        snapshot_dir: homer_harness::repo_scenarios_dir().join("snapshots"),
    })
}

fn parse_backend(s: &str) -> Result<scenario::Backend, String> {
    scenario::Backend::parse(s).ok_or_else(|| format!("unknown backend `{s}`; expected sqlite or postgres"))
}

/// A mutant name the daemon knows, or several joined by `+`. The daemon ignores a name it
/// does not know, so a typo would run the unmutated daemon and its failures (there should
/// be none) or passes would be credited to a mutant that never ran.
fn parse_mutant(s: &str) -> Result<String, String> {
    let known = |m: &str| homerd::mutant::ALL.contains(&m) || homerd::mutant::POSTGRES.contains(&m);
    match s.split('+').find(|m| !known(m)) {
        None => Ok(s.to_owned()),
        Some(bad) => Err(format!(
            "unknown mutant `{bad}`; the daemon knows {} and {}",
            homerd::mutant::ALL.join(", "),
            homerd::mutant::POSTGRES.join(", ")
        )),
    }
}

fn jobs(t: &Target) -> usize {
    t.jobs.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get() * 2).unwrap_or(2))
}

fn parse_all(paths: &[PathBuf]) -> Result<Vec<scenario::Scenario>, String> {
    let paths = if paths.is_empty() { vec![PathBuf::from("scenarios")] } else { paths.to_vec() };
    let files = homer_harness::collect_scenarios(&paths).map_err(|e| format!("cannot list scenarios: {e}"))?;
    if files.is_empty() {
        return Err(String::from("no scenario files (*.toml) found"));
    }
    let mut errors = Vec::new();
    let mut out = Vec::new();
    for f in files {
        match scenario::parse_file(&f) {
            Ok(s) => out.push(s),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors.join("\n"))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Probe { args } = cli.command {
        return ExitCode::from(probe::probe_main(args).clamp(0, 255) as u8);
    }
    let init = procs::init();
    match cli.command {
        Command::Probe { .. } => unreachable!("handled above"),
        Command::Lint { paths } => match parse_all(&paths) {
            Ok(s) => {
                println!("{} scenario files are valid", s.len());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::List { paths } => match parse_all(&paths) {
            Ok(list) => {
                let rows: Vec<serde_json::Value> = list
                    .iter()
                    .map(|s| {
                        let (mutants, reason) = match &s.mutant {
                            scenario::MutantExpectation::Catches(m) => (m.clone(), None),
                            scenario::MutantExpectation::None(why) => (Vec::new(), Some(why.clone())),
                        };
                        let backends: Vec<&str> = s.backends.iter().map(|b| b.name()).collect();
                        serde_json::json!({
                            "name": s.name, "path": s.path, "covers": s.covers,
                            "mutants": mutants, "mutant_none": reason, "backends": backends,
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(rows));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Run { paths, target, junit, repeat, until_fail, json, backend } => {
            let scenarios = match parse_all(&paths) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            // One run per (scenario, backend) pair.
            let scenarios: Vec<scenario::Scenario> = scenarios.iter().flat_map(|s| s.runs(backend)).collect();
            if scenarios.is_empty() {
                let b = backend.map(|b| b.name()).unwrap_or_default();
                eprintln!(
                    "homer-harness: no scenario given runs on {b}: a scenario opts in with `[settings] backends = \
                     [\"sqlite\", \"{b}\"]` (scenarios/README.md)"
                );
                return ExitCode::from(2);
            }
            let opts = match options(&target) {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("homer-harness: {e}");
                    return ExitCode::from(2);
                }
            };
            if !init.subreaper && cfg!(target_os = "linux") {
                eprintln!("homer-harness: warning: could not become a child subreaper; orphans go to PID 1");
            }
            let start = Instant::now();
            let results = homer_harness::run_all(&scenarios, &opts, jobs(&target), repeat, until_fail, &|r| {
                println!("{}", report::line(r));
            });
            print!("{}", report::failures(&results));
            print!("{}", report::table(&results, start.elapsed()));
            if let Some(path) = junit {
                if let Err(e) = std::fs::write(&path, report::junit(&results, start.elapsed())) {
                    eprintln!("homer-harness: cannot write {}: {e}", path.display());
                    return ExitCode::from(2);
                }
            }
            if let Some(path) = json {
                if let Err(e) = std::fs::write(&path, report::json(&results).to_string()) {
                    eprintln!("homer-harness: cannot write {}: {e}", path.display());
                    return ExitCode::from(2);
                }
            }
            if results.iter().any(|r| matches!(r.outcome, exec::Outcome::Failed(_))) {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::Powerloss { daemon, cuts, phase, mutant, jobs, keep, at, fixture } => {
            powerloss(daemon, cuts, &phase, mutant, jobs, keep, at, fixture)
        }
        Command::Fuzz { seed, seeds, target, out, print, until_caught, backend, homes } => {
            let flavour = match backend {
                Some(scenario::Backend::Postgres) => {
                    let (hosts, left_out) = fuzz::hosts_here();
                    if let Some(why) = left_out {
                        eprintln!("fuzz: {why}");
                    }
                    fuzz::Flavour::Postgres { homes, hosts }
                }
                _ => {
                    let (allowed, left_out) = fuzz::Allowed::here();
                    if let Some(why) = left_out {
                        eprintln!("fuzz: {why}");
                    }
                    fuzz::Flavour::Sqlite(allowed)
                }
            };
            if print {
                println!("{}", flavour.generate(seed));
                return ExitCode::SUCCESS;
            }
            let opts = match options(&target) {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("homer-harness: {e}");
                    return ExitCode::from(2);
                }
            };
            fuzz::run(seed, seeds, flavour, &opts, jobs(&target), &out, until_caught)
        }
    }
}

#[allow(clippy::too_many_arguments)] // the subcommand's flags, passed on as they are
fn powerloss(
    daemon: Option<PathBuf>,
    cuts: Option<usize>,
    phase: &str,
    mutant: Option<String>,
    jobs: Option<usize>,
    keep: bool,
    at: Option<String>,
    fixture: Option<PathBuf>,
) -> ExitCode {
    let usage = |e: String| {
        eprintln!("homer-harness: {e}");
        ExitCode::from(2)
    };
    let target = Target { daemon, mutant: mutant.clone(), keep, keep_failed: false, jobs };
    let exec_opts = match options(&target) {
        Ok(o) => o,
        Err(e) => return usage(e),
    };
    let workloads = match powersweep::workloads_for_phase(phase) {
        Ok(w) => w,
        Err(e) => return usage(e),
    };
    let at = match at.as_deref().map(powersweep::Point::parse).transpose() {
        Ok(p) => p,
        Err(e) => return usage(e),
    };
    let opts = powersweep::Options {
        daemon: exec_opts.daemon.clone(),
        mutant,
        time_scale: exec_opts.time_scale,
        keep,
        sandbox_base: exec_opts.sandbox_base.clone(),
        fixture: fixture.unwrap_or_else(|| homer_harness::repo_scenarios_dir().join("fixtures/pre004.db")),
    };
    let jobs = jobs.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2));
    let names: Vec<&str> = workloads.iter().map(|w| w.name()).collect();
    match &at {
        Some(p) => println!("power loss: cut point {p} against {}", opts.daemon.display()),
        None => println!(
            "power loss: workloads {} against {} ({jobs} at once{})",
            names.join(", "),
            opts.daemon.display(),
            opts.mutant.as_deref().map(|m| format!(", mutant {m}")).unwrap_or_default()
        ),
    }
    let done = std::sync::atomic::AtomicUsize::new(0);
    let on_result = |r: &powersweep::PointResult| {
        let n = done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        if r.error.is_some() || (r.violations() > 0 && opts.mutant.is_none()) {
            println!(
                "FAIL {} (phase {}): {}",
                r.point,
                r.phase(),
                r.error.clone().unwrap_or_else(|| format!("{} violation(s)", r.violations()))
            );
        } else if n % 50 == 0 {
            println!("  {n} cut points done");
        }
    };
    match powersweep::sweep(&opts, &workloads, cuts, at, jobs, &on_result) {
        Ok(sweep) => {
            let (text, ok) = powersweep::summary(&sweep, &opts, &exec_opts.daemon);
            print!("{text}");
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => usage(e),
    }
}
