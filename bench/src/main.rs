//! `homer-bench`: measures a release `homerd` beside the floor of what it does — the same
//! statements run bare with rusqlite on the same disk, a bare process taking the same
//! flock — and prints each figure with its baseline and the ratio (`cargo xtask bench`
//! builds both in release and runs this).
//!
//! Sections (README "Performance"): throughput against the SQLite limit, kill -9 to
//! re-run, enqueue-to-start, recovery at scale, footprint. Nothing here waits on a sleep:
//! every wait is on an event, a pipe or a process exit, under a generous deadline.
//!
//! Internal subcommands run the baselines in processes of their own, so their peak RSS
//! is theirs alone: `__loop DB BATCH SYNC MAX_JOBS TIME_BOX_MS [SCHEMA]`, `__hold-lock PATH [N]`.

mod exec;
mod peers;
mod procs;
mod raw;
mod report;
mod sections;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: homer-bench --homerd PATH [--work DIR] [--json FILE] [--only SECTIONS]
         [--jobs N] [--runs N] [--time-box SECS] [--rounds N] [--restart-jobs N]
         [--latency-jobs N] [--rows N] [--orphans N] [--exec-jobs N] [--exec-concurrency K]
         [--peers DIR] [--keep]
  sections (comma-separated): throughput, exec, restart, latency, recovery (default: all)";

/// What to measure and how much.
#[derive(Clone, Debug)]
pub struct Options {
    pub homerd: PathBuf,
    pub work: PathBuf,
    pub json: Option<PathBuf>,
    pub sections: Vec<String>,
    /// No-op jobs enqueued for each throughput run.
    pub jobs: u64,
    /// Repetitions of each throughput and recovery measurement.
    pub runs: usize,
    /// Longest time one throughput measurement may take.
    pub time_box: Duration,
    /// kill -9 rounds, and the jobs running in each.
    pub rounds: usize,
    pub restart_jobs: usize,
    pub latency_jobs: usize,
    /// Rows in the recovery database, and how many of them are orphans.
    pub rows: u64,
    pub orphans: u64,
    /// `exec -- true` jobs per exec run, and how many run at once.
    pub exec_jobs: usize,
    pub exec_concurrency: usize,
    /// Where pueue and huey are installed (`cargo xtask bench --peers`); the exec section
    /// then runs them too.
    pub peers: Option<peers::Peers>,
    pub keep: bool,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, String> {
        let mut o = Options {
            homerd: PathBuf::new(),
            work: std::env::temp_dir().join("homer-bench"),
            json: None,
            sections: sections::ALL.iter().map(|s| s.to_string()).collect(),
            jobs: 100_000,
            runs: 3,
            time_box: Duration::from_secs(5),
            rounds: 20,
            restart_jobs: 50,
            latency_jobs: 200,
            rows: 1_000_000,
            orphans: 100_000,
            exec_jobs: 1_000,
            exec_concurrency: 8,
            peers: None,
            keep: false,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = || it.next().cloned().ok_or_else(|| format!("{a} needs a value\n{USAGE}"));
            let number = |v: String| v.replace('_', "").parse::<u64>().map_err(|_| format!("{a}: not a number: {v}"));
            match a.as_str() {
                "--homerd" => o.homerd = PathBuf::from(value()?),
                "--work" => o.work = PathBuf::from(value()?),
                "--json" => o.json = Some(PathBuf::from(value()?)),
                "--only" => o.sections = value()?.split(',').map(|s| s.trim().to_owned()).collect(),
                "--jobs" => o.jobs = number(value()?)?.max(1),
                "--runs" => o.runs = number(value()?)?.max(1) as usize,
                "--time-box" => o.time_box = Duration::from_secs(number(value()?)?.max(1)),
                "--rounds" => o.rounds = number(value()?)?.max(1) as usize,
                "--restart-jobs" => o.restart_jobs = number(value()?)?.max(1) as usize,
                "--latency-jobs" => o.latency_jobs = number(value()?)?.max(1) as usize,
                "--rows" => o.rows = number(value()?)?.max(1),
                "--orphans" => o.orphans = number(value()?)?.max(1),
                "--exec-jobs" => o.exec_jobs = number(value()?)?.max(1) as usize,
                "--exec-concurrency" => o.exec_concurrency = number(value()?)?.max(1) as usize,
                "--peers" => o.peers = Some(peers::Peers { dir: PathBuf::from(value()?) }),
                "--keep" => o.keep = true,
                other => return Err(format!("unknown argument {other}\n{USAGE}")),
            }
        }
        if o.homerd.as_os_str().is_empty() {
            return Err(format!("--homerd is required\n{USAGE}"));
        }
        if let Some(bad) = o.sections.iter().find(|s| !sections::ALL.contains(&s.as_str())) {
            return Err(format!("unknown section {bad}\n{USAGE}"));
        }
        if o.orphans > o.rows {
            return Err(String::from("--orphans cannot exceed --rows"));
        }
        o.homerd = std::fs::canonicalize(&o.homerd).map_err(|e| format!("{}: {e}", o.homerd.display()))?;
        // Absolute: the peers run with their own working directory.
        if o.work.is_relative() {
            o.work = std::env::current_dir().map_err(|e| format!("the current directory: {e}"))?.join(&o.work);
        }
        if let Some(p) = &mut o.peers {
            p.dir = std::fs::canonicalize(&p.dir).map_err(|e| format!("--peers {}: {e}", p.dir.display()))?;
        }
        Ok(o)
    }

    pub fn wants(&self, section: &str) -> bool {
        self.sections.iter().any(|s| s == section)
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let result = match args.first().map(String::as_str) {
        Some("__loop") => internal_loop(&args[1..]),
        Some("__spawn") => exec::internal_spawn(&args[1..]),
        Some("__hold-lock") => match (args.get(1), args.get(2).map(|n| n.parse::<usize>())) {
            (Some(path), None) => raw::hold_lock(std::path::Path::new(path), 0),
            (Some(path), Some(Ok(n))) => raw::hold_lock(std::path::Path::new(path), n),
            _ => Err(String::from("__hold-lock PATH [CHILDREN]")),
        },
        _ => Options::parse(&args).and_then(|o| bench(&o)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("homer-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `__loop DB BATCH SYNC MAX_JOBS TIME_BOX_MS [SCHEMA]`: one raw throughput loop, on
/// homerd's schema or (`minimal`) the minimal queue's; prints `{"jobs": N, "seconds": S}`.
fn internal_loop(args: &[String]) -> Result<(), String> {
    let usage = "__loop DB BATCH SYNC MAX_JOBS TIME_BOX_MS [homerd|minimal]";
    let (db, batch, sync, max_jobs, time_box_ms, schema) = match args {
        [db, batch, sync, max_jobs, time_box_ms] => (db, batch, sync, max_jobs, time_box_ms, "homerd"),
        [db, batch, sync, max_jobs, time_box_ms, schema] => (db, batch, sync, max_jobs, time_box_ms, schema.as_str()),
        _ => return Err(String::from(usage)),
    };
    let num = |s: &str| s.parse::<u64>().map_err(|_| format!("not a number: {s}"));
    let sync = raw::Sync::parse(sync).ok_or_else(|| format!("sync must be normal, full or daemon, not {sync}"))?;
    let schema = raw::Schema::parse(schema).ok_or_else(|| format!("schema must be homerd or minimal, not {schema}"))?;
    let r = raw::throughput_loop(
        std::path::Path::new(db),
        schema,
        num(batch)? as u32,
        sync,
        num(max_jobs)?,
        Duration::from_millis(num(time_box_ms)?),
    )?;
    println!("{}", serde_json::json!({"jobs": r.jobs, "seconds": r.seconds}));
    Ok(())
}

fn bench(o: &Options) -> Result<(), String> {
    let started = Instant::now();
    // Everything goes into a directory of this run's own: only that is removed at the end.
    let work = o.work.join(format!("run-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let o = &Options { work: work.clone(), ..o.clone() };
    let mut report = report::Report { machine: sections::machine(o), ..report::Report::default() };
    if let Some(peers) = &o.peers {
        let found = peers.versions();
        if found.len() < 2 {
            return Err(format!(
                "--peers {}: pueue and huey are not both installed there (found {found:?}); `cargo xtask bench --peers` installs them",
                peers.dir.display()
            ));
        }
        report.machine.extend(found);
    }
    for (k, v) in &report.machine {
        eprintln!("{k}: {v}");
    }
    let mut ctx = sections::Ctx { o, report: &mut report, raw_peak_rss: None };
    if o.wants("throughput") {
        sections::throughput(&mut ctx)?;
    }
    if o.wants("exec") {
        exec::exec(&mut ctx)?;
    }
    if o.wants("restart") {
        sections::restart(&mut ctx)?;
    }
    if o.wants("latency") {
        sections::latency(&mut ctx)?;
    }
    if o.wants("recovery") {
        sections::recovery(&mut ctx)?;
    }
    let total = started.elapsed().as_secs_f64();
    report.print(total);
    if let Some(path) = &o.json {
        let text = serde_json::to_string_pretty(&report.to_json(total)).expect("a Value serialises");
        std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if o.keep {
        println!("kept {}", work.display());
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }
    Ok(())
}
