//! `homer-harness powerloss`: power cuts swept over small workloads of real `homerd`
//! processes, each judged after the writes no fsync covered were dropped.
//!
//! A *workload* is a short sequence of homerd processes that all record under one
//! power-loss log (`HOMERD_POWERLOSS_LOG`, see `daemon/src/powerloss.rs`). One of them is
//! *armed* with `HOMERD_POWERLOSS_CUT=N`: it SIGKILLs itself just before its N-th recorded
//! write, truncate or sync. A *cut point* is (workload, armed process, N), and each runs in
//! its own sandbox:
//!
//! 1. the workload runs until the armed process dies — or finishes, when N was past its
//!    last op; nothing after the armed process starts (the power is off);
//! 2. every process of the sandbox is killed, and the log is applied
//!    ([`crate::powerloss::apply_power_loss`]): every write no fsync covered is undone;
//! 3. a clean `homerd run` (no recording) starts, runs until every acknowledged job is
//!    terminal, and is stopped with SIGTERM;
//! 4. the database is judged ([`judge`]): every id an enqueue printed exists and ended
//!    `completed`; every completion a workload daemon announced (`job.completed`, emitted
//!    after its FULL commit) is still there, by a run of the daemon's epoch, not re-run by
//!    the restart; no job has two completed runs, and a completed job's last run is the
//!    completed one; `PRAGMA integrity_check` is ok; every job's runs are numbered 1..n.
//!
//! Each workload first runs uncut, to count its processes' ops (M) — that run is judged
//! too, as a cut after the last op; then every N in 1..=M of every armable process is
//! swept (`--cuts` samples them evenly). A cut that never fires means the armed process
//! finished first, so the rest of its sweep is skipped. Cuts are classified by the phase
//! label of their CUT record (what the process said it was writing).
//!
//! Workloads:
//! - `enqueue`: a database made by `homerd migrate`, no daemon; `enqueue` processes in
//!   sequence (singles and a 20-job `--from` batch), any of them armed;
//! - `enqueue-running`: the same enqueues while a daemon (recording, unarmed) runs them;
//! - `daemon`: 20 acknowledged jobs (no-ops and short sleeps, two long enough for lease
//!   renewals), then `homerd run` with 8 workers, armed: claims, renewals, heartbeats,
//!   outcome batches, recovery, shutdown;
//! - `migration`: `scenarios/fixtures/pre004.db` (stopped before migration 004, running
//!   jobs in it), then `homerd run`, armed: the journal-mode switch, every migration,
//!   leadership, recovery; three enqueues once it is active.
//!
//! The only fixed waits are polling periods (the database is polled every
//! [`POLL`]); everything is bounded by deadlines scaled with `HOMER_TEST_TIME_SCALE`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::powerloss::{self, Cut};

mod judge;
mod sandbox;
#[cfg(test)]
mod tests;

pub use judge::{judge, Acknowledged, Judgement};
use sandbox::{Recording, Sandbox};

/// How often the database is polled for a condition (a polling period, not a wait).
pub const POLL: Duration = Duration::from_millis(20);

/// Settings for every daemon of a workload: eight workers, renewals every 25 ms (so the
/// long jobs renew several times), quick retries (the fixture's exec job fails).
pub(super) const DAEMON_SETTINGS: &[&str] = &[
    "concurrency=8",
    "lanes.default.concurrency=8",
    "heartbeat_interval=25ms",
    "backoff_base=10ms",
    "backoff_cap=20ms",
];

/// How to sweep.
#[derive(Clone, Debug)]
pub struct Options {
    /// The daemon under test.
    pub daemon: PathBuf,
    /// `HOMERD_MUTANT` for every recording process (a `mutants` build).
    pub mutant: Option<String>,
    /// Multiplies every deadline.
    pub time_scale: f64,
    /// Keep every sandbox (by default only those of cut points that broke an invariant,
    /// and none under a mutant, where breaking them is the point).
    pub keep: bool,
    /// Where sandboxes go (default: the system temp dir).
    pub sandbox_base: Option<PathBuf>,
    /// The pre-004 database for the `migration` workload.
    pub fixture: PathBuf,
}

impl Options {
    fn deadline(&self, secs: u64) -> Instant {
        Instant::now() + Duration::from_secs(secs).mul_f64(self.time_scale)
    }
}

/// A workload (module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Workload {
    Enqueue,
    EnqueueRunning,
    Daemon,
    Migration,
}

impl Workload {
    pub const ALL: [Workload; 4] = [Workload::Enqueue, Workload::EnqueueRunning, Workload::Daemon, Workload::Migration];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Enqueue => "enqueue",
            Workload::EnqueueRunning => "enqueue-running",
            Workload::Daemon => "daemon",
            Workload::Migration => "migration",
        }
    }

    pub fn parse(s: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == s)
    }

    /// The processes that can be armed (indexes in the workload's process order).
    pub fn armable(self) -> Vec<usize> {
        match self {
            Workload::Enqueue => (0..ENQUEUES.len()).collect(),
            Workload::EnqueueRunning => (1..=ENQUEUES.len()).collect(),
            Workload::Daemon | Workload::Migration => vec![0],
        }
    }
}

/// The workloads that exercise a `--phase`: `enqueue`, `claim` and `outcome` (one
/// workload: a daemon's claims and outcome batches interleave), `migration`, `all`.
pub fn workloads_for_phase(phase: &str) -> Result<Vec<Workload>, String> {
    Ok(match phase {
        "enqueue" => vec![Workload::Enqueue, Workload::EnqueueRunning],
        "claim" | "outcome" => vec![Workload::Daemon],
        "migration" => vec![Workload::Migration],
        "all" => Workload::ALL.to_vec(),
        other => {
            if let Some(w) = Workload::parse(other) {
                vec![w]
            } else {
                return Err(format!(
                    "unknown phase `{other}`; one of enqueue, claim, outcome, migration, all (or a workload: {})",
                    Workload::ALL.map(|w| w.name()).join(", ")
                ));
            }
        }
    })
}

/// The `enqueue` processes of the enqueue workloads, in order (`{batch}`: a 20-job file).
const ENQUEUES: &[&[&str]] = &[
    &["enqueue", "noop"],
    &["enqueue", "sleep", "10ms"],
    &["enqueue", "--from", "{batch}"],
    &["enqueue", "noop"],
    &["enqueue", "--key", "k1", "noop"],
];

/// One cut point; `cut: None` runs the workload uncut (and counts its ops).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Point {
    pub workload: Workload,
    pub armed: usize,
    pub cut: Option<u64>,
}

impl std::fmt::Display for Point {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.cut {
            Some(n) => write!(f, "{}:{}:{}", self.workload.name(), self.armed, n),
            None => write!(f, "{}:uncut", self.workload.name()),
        }
    }
}

impl Point {
    /// Parses `WORKLOAD:PROCESS:N` (what a failure report prints for `--at`).
    pub fn parse(s: &str) -> Result<Point, String> {
        let bad = || format!("`{s}`: expected WORKLOAD:PROCESS:N, e.g. daemon:0:17");
        let mut it = s.split(':');
        let workload = it.next().and_then(Workload::parse).ok_or_else(bad)?;
        let armed: usize = it.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let cut: u64 = it.next().and_then(|p| p.parse().ok()).filter(|&n| n >= 1).ok_or_else(bad)?;
        if it.next().is_some() || !workload.armable().contains(&armed) {
            return Err(format!("{}; armable processes of {}: {:?}", bad(), workload.name(), workload.armable()));
        }
        Ok(Point { workload, armed, cut: Some(cut) })
    }
}

pub struct PointResult {
    pub point: Point,
    /// The CUT record, when the armed process reached its cut.
    pub fired: Option<Cut>,
    /// Ops each process of the run recorded (by workload process index).
    pub ops: BTreeMap<usize, u64>,
    /// `None` when the harness could not run the point (see `error`).
    pub judgement: Option<Judgement>,
    pub error: Option<String>,
    pub reverted_ops: usize,
    pub duration: Duration,
    pub kept: Option<PathBuf>,
    /// The power-loss report and the processes' last lines, for failure reports.
    pub details: String,
}

impl PointResult {
    pub fn violations(&self) -> usize {
        self.judgement.as_ref().map_or(0, Judgement::violations)
    }

    /// The phase label of the cut, or `(past end)` when it never fired.
    pub fn phase(&self) -> String {
        match &self.fired {
            Some(c) => c.phase.clone(),
            None if self.point.cut.is_none() => String::from("(uncut)"),
            None => String::from("(past end)"),
        }
    }
}

/// A database (and the ids acknowledged while making it) copied into every sandbox.
pub struct Template {
    _dir: Option<tempfile::TempDir>,
    db: PathBuf,
    acked: Vec<i64>,
}

/// Makes the workload's starting database once (nothing records here).
pub fn template(opts: &Options, w: Workload) -> Result<Template, String> {
    if w == Workload::Migration {
        if !opts.fixture.is_file() {
            return Err(format!("{}: the pre-004 fixture is missing (pass --fixture PATH)", opts.fixture.display()));
        }
        return Ok(Template { _dir: None, db: opts.fixture.clone(), acked: Vec::new() });
    }
    let mut sb = Sandbox::new(opts, &format!("{}-template", w.name()))?;
    let result = (|| {
        sb.run_ok("migrate", &["migrate"], Recording::Off, 0)?;
        let mut acked = Vec::new();
        if w == Workload::Daemon {
            // Two sleeps long enough for several lease renewals at the 25 ms heartbeat.
            let mut lines = String::new();
            for i in 0..20 {
                lines.push_str(match i {
                    5 | 12 => "{\"kind\":\"sleep\",\"args\":[\"300ms\"]}\n",
                    i if i % 3 == 0 => "{\"kind\":\"sleep\",\"args\":[\"10ms\"]}\n",
                    _ => "{\"kind\":\"noop\"}\n",
                });
            }
            let file = sb.dir.path().join("jobs.jsonl");
            std::fs::write(&file, lines).map_err(|e| format!("{}: {e}", file.display()))?;
            let out = sb.run_ok("enqueue", &["enqueue", "--from", &file.to_string_lossy()], Recording::Off, 0)?;
            acked = Sandbox::ids(&out);
            if acked.len() != 20 {
                return Err(format!("the setup enqueue printed {} ids, not 20: {out}", acked.len()));
            }
            // A daemon crashes (SIGKILL) once it claimed the first long job: every cut point
            // starts with orphans, so its startup recovery has something to write.
            let long = acked[5];
            let d = sb.spawn("crashing daemon", &["run"], Recording::Off, 0)?;
            let deadline = opts.deadline(30);
            sb.shared
                .wait_for(deadline, |st| {
                    let claimed = st[d].events.iter().any(|(e, id, _)| e == "job.claimed" && *id == Some(long));
                    (st[d].status.is_some() || claimed).then_some(())
                })
                .ok_or("the setup daemon claimed nothing within 30s (scaled)")?;
            if sb.shared.lock()[d].status.is_some() {
                return Err(format!("the setup daemon exited: {}", sb.tail(d)));
            }
            sb.signal(d, libc::SIGKILL);
            sb.finish(d, 30)?;
        }
        Ok(acked)
    })();
    let db = sb.db();
    let out = result.and_then(|acked| {
        let dir = tempfile::Builder::new()
            .prefix(&format!("homer-powerloss-{}-db-", w.name()))
            .tempdir_in(opts.sandbox_base.clone().unwrap_or_else(std::env::temp_dir))
            .map_err(|e| e.to_string())?;
        // The database and its WAL (a crashed daemon's commits are there); never the -shm,
        // which the next opener rebuilds.
        let copy = dir.path().join("homer.db");
        for suffix in ["", "-wal"] {
            let (from, to) = (with_suffix(&db, suffix), with_suffix(&copy, suffix));
            if from.exists() {
                std::fs::copy(&from, &to).map_err(|e| format!("{}: {e}", from.display()))?;
            }
        }
        Ok(Template { _dir: Some(dir), db: copy, acked })
    });
    let out = out.map_err(|e| format!("{} template: {e}\n{}", w.name(), sb.tails()));
    sb.close(false);
    out
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

// ---------------------------------------------------------------------------------------
// One cut point

/// Runs one cut point in its own sandbox, judges it and cleans up.
pub fn run_point(opts: &Options, t: &Template, point: Point) -> PointResult {
    let started = Instant::now();
    let mut result = PointResult {
        point,
        fired: None,
        ops: BTreeMap::new(),
        judgement: None,
        error: None,
        reverted_ops: 0,
        duration: Duration::ZERO,
        kept: None,
        details: String::new(),
    };
    let mut sb = match Sandbox::new(opts, point.workload.name()) {
        Ok(sb) => sb,
        Err(e) => {
            result.error = Some(e);
            return result;
        }
    };
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| point_in(&mut sb, t, point, &mut result)));
    match run {
        Ok(Ok(())) => {}
        Ok(Err(e)) => result.error = Some(e),
        Err(panic) => {
            let msg =
                panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
            result.error = Some(format!("the harness panicked: {}", msg.unwrap_or_default()));
        }
    }
    if result.error.is_some() || result.violations() > 0 {
        result.details.push_str(&sb.tails());
    }
    let failed = result.error.is_some() || result.violations() > 0;
    let keep = opts.keep || (failed && opts.mutant.is_none());
    result.kept = sb.close(keep);
    result.duration = started.elapsed();
    result
}

fn point_in(sb: &mut Sandbox<'_>, t: &Template, point: Point, result: &mut PointResult) -> Result<(), String> {
    for suffix in ["", "-wal"] {
        let from = with_suffix(&t.db, suffix);
        if from.exists() {
            std::fs::copy(&from, with_suffix(&sb.db(), suffix)).map_err(|e| format!("{}: {e}", from.display()))?;
        }
    }
    let mut acked = t.acked.clone();
    let arm = |i: usize| match point.cut {
        Some(n) if i == point.armed => Recording::Armed(n),
        _ => Recording::On,
    };
    match point.workload {
        Workload::Enqueue => enqueues(sb, 0, &arm, &mut acked)?,
        Workload::EnqueueRunning => {
            let d = sb.spawn("daemon", &["run"], Recording::On, 0)?;
            sb.active(d, "the daemon")?;
            enqueues(sb, 1, &arm, &mut acked)?;
        }
        Workload::Daemon => {
            let d = sb.spawn("daemon", &["run"], arm(0), 0)?;
            sb.daemon_until(d, 60, Sandbox::all_terminal)?;
        }
        Workload::Migration => {
            let d = sb.spawn("daemon", &["run"], arm(0), 0)?;
            // Active, or cut before it got there (then nothing else runs).
            if let Err(e) = sb.active(d, "the daemon") {
                if sb.shared.lock()[d].status.is_none() {
                    return Err(e);
                }
            }
            for i in 1..=3 {
                if sb.shared.lock()[d].status.is_some() {
                    break; // the daemon cut power: nothing runs after that
                }
                let e = sb.spawn(&format!("enqueue#{i}"), &["enqueue", "noop"], Recording::On, i)?;
                let (status, out) = sb.finish(e, 60)?;
                if status.code() != Some(0) {
                    return Err(format!("enqueue#{i} exited {status}: {}", sb.tail(e)));
                }
                acked.extend(Sandbox::ids(&out));
            }
            sb.daemon_until(d, 60, Sandbox::all_terminal)?;
        }
    }
    sb.cut_power()?;
    let completions: Vec<i64> = {
        let st = sb.shared.lock();
        let daemons = st.iter().filter(|p| p.name == "daemon");
        daemons
            .flat_map(|p| p.events.iter().filter(|(e, _, _)| e == "job.completed").filter_map(|(_, id, _)| *id))
            .collect()
    };
    if let Some(status) = daemon_error(sb, point) {
        return Err(status);
    }
    let log = powerloss::read_log(&sb.log())?;
    let fired = log.cuts();
    result.fired = fired.first().cloned();
    for (pid, ops) in log.ops_by_pid() {
        if let Some((_, i)) = sb.indexes.iter().find(|(p, _)| *p == pid) {
            *result.ops.entry(*i).or_default() += ops;
        }
    }
    let report = powerloss::apply_power_loss(&sb.log())?;
    result.reverted_ops = report.ops_reverted();
    result.details.push_str(&report.describe());
    // The clean restart: no recording, no mutant.
    let d = sb.spawn("restart", &["run"], Recording::Off, usize::MAX)?;
    if let Err(e) = sb.active(d, "the clean restart") {
        if sb.shared.lock()[d].status.is_none() {
            return Err(e); // still starting: a harness deadline, not a verdict
        }
        let mut j = Judgement { acked: acked.clone(), ..Judgement::default() };
        j.integrity = Some(format!("the clean restart refused the database: {e}"));
        result.judgement = Some(j);
        return Ok(());
    }
    let restart_epoch = {
        let st = sb.shared.lock();
        st[d].events.iter().find(|(e, _, _)| e == "daemon.active").and_then(|(_, _, epoch)| *epoch)
    }
    .ok_or("the restart's daemon.active event has no epoch")?;
    sb.daemon_until(d, 60, |sb| sb.settled(&acked))?;
    let ack = Acknowledged { ids: acked, completions, restart_epoch };
    result.judgement = Some(judge(&sb.db(), &ack));
    Ok(())
}

/// Runs the workload's enqueue processes in order (indexes from `first`); the armed one is
/// the last to run.
fn enqueues(
    sb: &mut Sandbox<'_>,
    first: usize,
    arm: &dyn Fn(usize) -> Recording,
    acked: &mut Vec<i64>,
) -> Result<(), String> {
    for (k, args) in ENQUEUES.iter().enumerate() {
        let i = first + k;
        let rec = arm(i);
        let slot = sb.spawn(&format!("enqueue#{i}"), args, rec, i)?;
        let (status, out) = sb.finish(slot, 60)?;
        acked.extend(Sandbox::ids(&out));
        let armed = matches!(rec, Recording::Armed(_));
        let killed = {
            use std::os::unix::process::ExitStatusExt;
            status.signal() == Some(libc::SIGKILL)
        };
        if !(status.code() == Some(0) || armed && killed) {
            return Err(format!("enqueue#{i} ({}) exited {status}: {}", args.join(" "), sb.tail(slot)));
        }
        if armed {
            break; // the power is off after the armed process, fired or not
        }
    }
    Ok(())
}

/// A recording process that should have run on but died otherwise than by the cut.
fn daemon_error(sb: &Sandbox<'_>, point: Point) -> Option<String> {
    let st = sb.shared.lock();
    for p in st.iter().filter(|p| p.name == "daemon") {
        let code = p.status.and_then(|s| s.code());
        if let Some(c) = code.filter(|&c| c != 0) {
            let stderr = String::from_utf8_lossy(&p.stderr);
            let last: Vec<&str> = stderr.lines().rev().take(4).collect();
            return Some(format!("{point}: the daemon exited {c}: {}", last.join(" / ")));
        }
    }
    None
}

// ---------------------------------------------------------------------------------------
// The sweep

/// Cut points to try for one armable process with `m` ops, at most `limit` of them,
/// evenly spread (always including 1 and `m`).
pub fn cut_indexes(m: u64, limit: Option<usize>) -> Vec<u64> {
    match limit {
        Some(l) if (l as u64) < m && l > 0 => {
            let l = l as u64;
            let mut v: Vec<u64> = (0..l).map(|k| 1 + k * (m - 1) / (l - 1).max(1)).collect();
            v.dedup();
            v
        }
        _ => (1..=m).collect(),
    }
}

/// Everything a sweep found.
pub struct Sweep {
    pub results: Vec<PointResult>,
    pub wall: Duration,
}

/// Sweeps the given workloads (or only `at`): measure, then every cut point, on `jobs`
/// threads; `on_result` sees each result as it comes.
pub fn sweep(
    opts: &Options,
    workloads: &[Workload],
    limit: Option<usize>,
    at: Option<Point>,
    jobs: usize,
    on_result: &(dyn Fn(&PointResult) + Sync),
) -> Result<Sweep, String> {
    let started = Instant::now();
    let mut templates = BTreeMap::new();
    for &w in workloads.iter().chain(at.iter().map(|p| &p.workload)) {
        if let std::collections::btree_map::Entry::Vacant(e) = templates.entry(w) {
            e.insert(template(opts, w)?);
        }
    }
    let mut results = Vec::new();
    let mut points = Vec::new();
    if let Some(p) = at {
        points.push(p);
    } else {
        // Measure every workload (uncut runs, in parallel), then plan its cut points.
        let uncut: Vec<Point> = workloads.iter().map(|&w| Point { workload: w, armed: 0, cut: None }).collect();
        let measured = run_parallel(opts, &templates, &uncut, jobs, &|_| true, on_result);
        for r in &measured {
            if r.error.is_some() {
                return Err(format!(
                    "{}: the uncut run failed: {}\n{}",
                    r.point,
                    r.error.as_deref().unwrap_or(""),
                    r.details
                ));
            }
            for i in r.point.workload.armable() {
                let m = r.ops.get(&i).copied().unwrap_or(0);
                if m == 0 {
                    return Err(format!(
                        "{}: process {i} recorded no ops; is {} a homerd with the power-loss recorder?",
                        r.point,
                        opts.daemon.display()
                    ));
                }
                for n in cut_indexes(m, limit) {
                    points.push(Point { workload: r.point.workload, armed: i, cut: Some(n) });
                }
            }
        }
        results.extend(measured);
    }
    // A cut that did not fire ends its process's sweep (the process finished first).
    let past_end: Mutex<HashMap<(Workload, usize), u64>> = Mutex::default();
    let still_before_end = |p: &Point| {
        let ends = past_end.lock().unwrap_or_else(|e| e.into_inner());
        ends.get(&(p.workload, p.armed)).is_none_or(|&end| p.cut.unwrap_or(0) < end)
    };
    let record = |r: &PointResult| {
        if r.fired.is_none() && r.error.is_none() {
            if let Some(n) = r.point.cut {
                let mut ends = past_end.lock().unwrap_or_else(|e| e.into_inner());
                let e = ends.entry((r.point.workload, r.point.armed)).or_insert(n);
                *e = (*e).min(n);
            }
        }
        on_result(r);
    };
    results.extend(run_parallel(opts, &templates, &points, jobs, &still_before_end, &record));
    Ok(Sweep { results, wall: started.elapsed() })
}

fn run_parallel(
    opts: &Options,
    templates: &BTreeMap<Workload, Template>,
    points: &[Point],
    jobs: usize,
    wanted: &(dyn Fn(&Point) -> bool + Sync),
    on_result: &(dyn Fn(&PointResult) + Sync),
) -> Vec<PointResult> {
    let next = AtomicUsize::new(0);
    let out = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(p) = points.get(i) else { return };
                if !wanted(p) {
                    continue;
                }
                let r = run_point(opts, &templates[&p.workload], *p);
                on_result(&r);
                out.lock().unwrap_or_else(|e| e.into_inner()).push(r);
            });
        }
    });
    let mut v = out.into_inner().unwrap_or_else(|e| e.into_inner());
    v.sort_by_key(|r| (r.point.workload, r.point.armed, r.point.cut));
    v
}

/// Totals for one row of a table.
#[derive(Default)]
struct Row {
    points: usize,
    fired: usize,
    acked: usize,
    lost: usize,
    outcomes: usize,
    double: usize,
    gaps: usize,
    integrity: usize,
    errors: usize,
    wall: Duration,
}

impl Row {
    fn add(&mut self, r: &PointResult) {
        self.points += 1;
        self.fired += usize::from(r.fired.is_some());
        self.errors += usize::from(r.error.is_some());
        self.wall += r.duration;
        if let Some(j) = &r.judgement {
            self.acked += j.acked.len();
            self.lost += j.lost.len() + j.not_completed.len();
            self.outcomes += j.outcomes_lost.len();
            self.double += j.double.len();
            self.gaps += j.run_gaps.len();
            self.integrity += usize::from(j.integrity.is_some());
        }
    }
}

fn table(title: &str, rows: &BTreeMap<String, Row>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{title:<18} {:>6} {:>6} {:>7} {:>6} {:>9} {:>7} {:>5} {:>10} {:>6} {:>9}",
        "cuts", "fired", "acked", "lost", "outcomes", "double", "gaps", "integrity", "errors", "time"
    );
    let mut total = Row::default();
    for (name, r) in rows {
        let _ = writeln!(
            s,
            "{name:<18} {:>6} {:>6} {:>7} {:>6} {:>9} {:>7} {:>5} {:>10} {:>6} {:>8.1}s",
            r.points,
            r.fired,
            r.acked,
            r.lost,
            r.outcomes,
            r.double,
            r.gaps,
            r.integrity,
            r.errors,
            r.wall.as_secs_f64()
        );
        total.points += r.points;
        total.fired += r.fired;
        total.acked += r.acked;
        total.lost += r.lost;
        total.outcomes += r.outcomes;
        total.double += r.double;
        total.gaps += r.gaps;
        total.integrity += r.integrity;
        total.errors += r.errors;
        total.wall += r.wall;
    }
    let _ = writeln!(
        s,
        "{:<18} {:>6} {:>6} {:>7} {:>6} {:>9} {:>7} {:>5} {:>10} {:>6} {:>8.1}s",
        "total",
        total.points,
        total.fired,
        total.acked,
        total.lost,
        total.outcomes,
        total.double,
        total.gaps,
        total.integrity,
        total.errors,
        total.wall.as_secs_f64()
    );
    s
}

/// The tables (per workload, per phase at the cut), the failures, and the verdict line.
pub fn summary(s: &Sweep, opts: &Options, daemon_arg: &Path) -> (String, bool) {
    let mut by_workload: BTreeMap<String, Row> = BTreeMap::new();
    let mut by_phase: BTreeMap<String, Row> = BTreeMap::new();
    for r in &s.results {
        by_workload.entry(r.point.workload.name().to_owned()).or_default().add(r);
        by_phase.entry(r.phase()).or_default().add(r);
    }
    let mut out = String::new();
    let _ = writeln!(out, "\n{}", table("workload", &by_workload));
    let _ = writeln!(out, "{}", table("phase at the cut", &by_phase));
    let failing: Vec<&PointResult> = s.results.iter().filter(|r| r.error.is_some() || r.violations() > 0).collect();
    if opts.mutant.is_none() {
        for r in failing.iter().take(20) {
            let _ = writeln!(
                out,
                "=== {} (phase {}): {}",
                r.point,
                r.phase(),
                r.error.as_deref().unwrap_or("invariants broken")
            );
            if let Some(j) = &r.judgement {
                out.push_str(&j.describe());
            }
            out.push_str(&r.details);
            if let Some(k) = &r.kept {
                let _ = writeln!(out, "sandbox kept: {} (powerloss.log.applied is the log)", k.display());
            }
            let _ = writeln!(
                out,
                "reproduce: homer-harness powerloss --daemon {} --at {} --keep",
                daemon_arg.display(),
                r.point
            );
        }
        if failing.len() > 20 {
            let _ = writeln!(out, "... and {} more failing cut points", failing.len() - 20);
        }
    }
    if opts.keep {
        for r in &s.results {
            if let Some(k) = &r.kept {
                let _ = writeln!(out, "{}: sandbox kept: {}", r.point, k.display());
            }
        }
    }
    let judged = || s.results.iter().filter_map(|r| r.judgement.as_ref());
    let enqueues_lost: usize = judged().map(|j| j.lost.len() + j.not_completed.len()).sum();
    let outcomes_lost: usize = judged().map(|j| j.outcomes_lost.len()).sum();
    let lost = enqueues_lost + outcomes_lost;
    let errors = s.results.iter().filter(|r| r.error.is_some()).count();
    let violations: usize = s.results.iter().map(PointResult::violations).sum();
    let ok = match &opts.mutant {
        Some(m) if lost > 0 => {
            let _ = writeln!(
                out,
                "caught: {lost} acknowledged jobs lost under mutant {m} ({enqueues_lost} enqueues, {outcomes_lost} outcomes; {} cut points, {:.0}s)",
                s.results.len(),
                s.wall.as_secs_f64()
            );
            true
        }
        Some(m) => {
            let _ = writeln!(out, "SURVIVED: mutant {m} lost no acknowledged job in {} cut points", s.results.len());
            false
        }
        None => {
            let _ = writeln!(
                out,
                "{} cut points, {violations} violations, {errors} harness errors, {:.0}s",
                s.results.len(),
                s.wall.as_secs_f64()
            );
            violations == 0 && errors == 0
        }
    };
    (out, ok)
}
