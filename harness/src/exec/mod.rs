//! Runs one scenario: a sandbox, its processes, its steps, the invariants, the cleanup.
//! The execution context the steps share is `ctx::Ctx`; each verb runs in its module
//! under [`crate::steps`].
//!
//! Invariants of a run:
//! - every process is started through [`procs`] under the scenario's marker, and the run
//!   ends (passed, failed or panicked) with [`procs::kill_marked`] and a survivors check —
//!   a survivor fails the scenario;
//! - progress is observed through homerd's JSON events, exit statuses, the database and the
//!   effects log, each waited on with a deadline scaled by the time scale; the only fixed
//!   waits are the ones a scenario asks for to let a stale threshold pass;
//! - the invariant checkers run at every `check` step and once more after the last step;
//! - with the `power_loss` header every `homerd` records its writes into the sandbox's
//!   current power-loss log (`powerloss/log-N`), and a `power_loss` step kills everything,
//!   drops the writes no fsync covered and moves on to the next log; the harness's own
//!   read-write connections never checkpoint on close (`harness_rw`), so the only writes
//!   to the database are the ones the recording processes make (and `sql` with `write`).

pub(crate) mod ctx;
#[cfg(test)]
mod tests;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::check::CheckOptions;
use crate::procs;
use crate::scenario::{Backend, Requirement, Scenario};
use crate::timeline::{self, StepRecord};
use ctx::Ctx;

/// How to run scenarios.
#[derive(Clone, Debug)]
pub struct Options {
    /// The daemon under test.
    pub daemon: PathBuf,
    /// The effects probe: program and leading arguments (e.g. `[harness, "__probe"]`).
    pub probe: Vec<OsString>,
    /// Multiplies every deadline, hold and duration-valued setting.
    pub time_scale: f64,
    /// Keep every sandbox (its path is printed).
    pub keep: bool,
    /// Keep the sandboxes of failed runs only.
    pub keep_failed: bool,
    /// Where sandboxes are created (default: the system temp dir).
    pub sandbox_base: Option<PathBuf>,
    /// `HOMERD_MUTANT` for every daemon and CLI process (a `mutants` build), if any.
    pub mutant: Option<String>,
    /// Where `snapshot` steps keep their `.snap` files.
    pub snapshot_dir: PathBuf,
}

impl Options {
    /// Options for unit tests that build a context without running a daemon.
    #[cfg(test)]
    pub(crate) fn for_tests() -> Options {
        Options {
            daemon: PathBuf::from("homerd"),
            probe: vec!["probe".into(), "__probe".into()],
            time_scale: 1.0,
            keep: false,
            keep_failed: false,
            sandbox_base: None,
            mutant: None,
            snapshot_dir: PathBuf::from("snapshots"),
        }
    }

    /// `HOMER_TEST_TIME_SCALE`, default 1, at least 0.1.
    /// `HOMER_HARNESS_KEEP` (`failed`: keep failed runs' sandboxes; any other value: all)
    /// and `HOMER_HARNESS_SANDBOX_DIR` (where sandboxes go), as (keep, keep_failed, base).
    pub fn sandbox_from_env() -> (bool, bool, Option<PathBuf>) {
        let keep = std::env::var("HOMER_HARNESS_KEEP").ok().filter(|v| !v.is_empty());
        let base = std::env::var_os("HOMER_HARNESS_SANDBOX_DIR").filter(|v| !v.is_empty()).map(PathBuf::from);
        match keep.as_deref() {
            None => (false, false, base),
            Some("failed") => (false, true, base),
            Some(_) => (true, false, base),
        }
    }

    pub fn time_scale_from_env() -> f64 {
        homer_testkit::time_scale()
    }
}

#[derive(Clone, Debug)]
pub enum Outcome {
    Passed,
    Failed(Failure),
    Skipped(String),
}

#[derive(Clone, Debug)]
pub struct Failure {
    /// 1-based step index and its line, when a step failed.
    pub step: Option<(usize, usize)>,
    pub what: String,
    pub expected: String,
    pub actual: String,
    /// The tail of each process's stderr.
    pub logs: Vec<(String, String)>,
    /// The run's `timeline.html`, when its sandbox was kept.
    pub timeline: Option<PathBuf>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.step {
            Some((i, line)) => writeln!(f, "step {i} (line {line}): {}", self.what)?,
            None => writeln!(f, "{}", self.what)?,
        }
        writeln!(f, "  expected: {}", self.expected)?;
        writeln!(f, "  actual:   {}", self.actual)?;
        if let Some(t) = &self.timeline {
            writeln!(f, "  timeline: {}", t.display())?;
        }
        for (name, tail) in &self.logs {
            writeln!(f, "  --- {name} (last lines) ---")?;
            for l in tail.lines() {
                writeln!(f, "  | {l}")?;
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug)]
pub struct ScenarioResult {
    pub name: String,
    pub path: PathBuf,
    pub outcome: Outcome,
    pub duration: Duration,
    /// The sandbox, when kept.
    pub kept: Option<PathBuf>,
}

/// Run one scenario to the end and clean up after it, whatever happens.
pub fn run_scenario(sc: &Scenario, opts: &Options) -> ScenarioResult {
    let started = Instant::now();
    let result = |outcome, kept| ScenarioResult {
        name: sc.name.clone(),
        path: sc.path.clone(),
        outcome,
        duration: started.elapsed(),
        kept,
    };
    if let Some(reason) = skip_reason(sc) {
        return result(Outcome::Skipped(reason), None);
    }
    let base = opts.sandbox_base.clone().unwrap_or_else(std::env::temp_dir);
    let prefix = match sc.backend {
        Backend::Sqlite => format!("homer-harness-{}-", sc.stem()),
        Backend::Postgres => format!("homer-harness-{}-pg-", sc.stem()),
    };
    let dir = match tempfile::Builder::new().prefix(&prefix).tempdir_in(&base) {
        Ok(d) => d,
        Err(e) => {
            return result(Outcome::Failed(setup_failure(format!("create a sandbox in {}: {e}", base.display()))), None)
        }
    };
    let sandbox = dir.path().to_path_buf();
    let marker =
        format!("{}-{}", std::process::id(), sandbox.file_name().map(|n| n.to_string_lossy()).unwrap_or_default());
    procs::open_marker(&marker);
    // An interrupt removes it too, unless sandboxes are kept: with `--keep-failed` an
    // interrupted run, which may be one that hung, keeps its sandbox as a failed one does.
    if !opts.keep && !opts.keep_failed {
        procs::register_sandbox(&marker, &sandbox);
    }
    let mut ctx = Ctx::new(sc, opts, sandbox, marker.clone(), started);
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ctx.run_steps()));
    let mut outcome = match run {
        Ok(Ok(())) => Outcome::Passed,
        Ok(Err(f)) => Outcome::Failed(*f),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Outcome::Failed(Failure {
                step: None,
                what: String::from("the harness panicked"),
                expected: String::from("no panic"),
                actual: msg,
                logs: ctx.log_tails(),
                timeline: None,
            })
        }
    };
    // Teardown: every marked process dies, whatever the outcome; then the tmpfs home (if
    // any) is unmounted, which nothing alive can keep busy any more. A run's PostgreSQL
    // server is stopped first (its groups read, its last state kept): a fast stop ends
    // the daemons' sessions and writes a checkpoint, where SIGKILL would leave its
    // shared memory behind.
    ctx.register_job_groups();
    let pg_errors = ctx.stop_postgres();
    let survivors = procs::kill_marked(&marker, Duration::from_secs(10));
    // The hosts' namespaces and links go once nothing of the run lives in them.
    ctx.hosts.clear();
    let keep = opts.keep || (opts.keep_failed && matches!(outcome, Outcome::Failed(_)));
    let unmount_errors = ctx.unmount_home(keep);
    ctx.end_holds();
    for h in ctx.threads.drain(..) {
        let _ = h.join();
    }
    procs::close_marker(&marker);
    if !survivors.is_empty() && matches!(outcome, Outcome::Passed) {
        let alive = format!("still alive: {survivors:?}");
        outcome =
            Outcome::Failed(stage_failure("cleanup", "no process started by the scenario alive after SIGKILL", alive));
    }
    if !unmount_errors.is_empty() && !matches!(outcome, Outcome::Failed(_)) {
        outcome = Outcome::Failed(stage_failure("cleanup", "the tmpfs home unmounted", unmount_errors.join("; ")));
    }
    if !pg_errors.is_empty() && !matches!(outcome, Outcome::Failed(_)) {
        outcome =
            Outcome::Failed(stage_failure("cleanup", "the run's PostgreSQL server stopped", pg_errors.join("; ")));
    }
    if let Outcome::Failed(f) = &mut outcome {
        if f.logs.is_empty() {
            f.logs = ctx.log_tails();
        }
    }
    let failed = matches!(outcome, Outcome::Failed(_));
    if keep || failed {
        // Every process is dead and the home is back in place: the history is final. A
        // failed run always gets its timeline: when its sandbox is not kept, the page is
        // moved beside the sandboxes (`<base>/<sandbox name>.timeline.html`) before the
        // sandbox is removed, so the failure report can still point at it.
        if let Some(path) = ctx.write_timeline(&outcome) {
            let path = if keep { Some(path) } else { ctx.save_timeline_outside(&path, &base) };
            if let (Some(path), Outcome::Failed(f)) = (path, &mut outcome) {
                f.timeline = Some(path);
            }
        }
    }
    ctx.write_logs();
    let kept = if keep {
        let path = dir.keep();
        Some(path)
    } else {
        drop(dir);
        None
    };
    // Removed (or kept) by now: from here an interrupt has nothing of this run to remove.
    procs::forget_sandbox(&marker);
    result(outcome, kept)
}

/// Why the scenario cannot run on this system, if it cannot.
pub fn run_skip_reason(sc: &Scenario) -> Option<String> {
    skip_reason(sc)
}

fn skip_reason(sc: &Scenario) -> Option<String> {
    if sc.backend == Backend::Postgres {
        if let Err(why) = homer_testkit::postgres::available() {
            return Some(why);
        }
    }
    if !sc.hosts.is_empty() {
        if !cfg!(target_os = "linux") {
            return Some(String::from("runs homes as hosts (`hosts = true`): network namespaces are Linux-only"));
        }
        // Not root: the run fails saying why (setup), unless this machine says it cannot
        // give root (GitHub's runners), where it is skipped.
        let root = rustix::process::geteuid().is_root();
        if !root && std::env::var_os("HOMER_SKIP_ROOT_TESTS").is_some_and(|v| v == "1") {
            return Some(String::from(
                "runs homes as hosts (`hosts = true`): network namespaces need root; HOMER_SKIP_ROOT_TESTS=1",
            ));
        }
    }
    for r in &sc.requires {
        match r {
            Requirement::Linux if !cfg!(target_os = "linux") => {
                return Some(String::from("needs Linux (/proc, PR_SET_CHILD_SUBREAPER)"));
            }
            Requirement::Unprivileged => {
                if let Err(why) = procs::can_drop_privileges() {
                    return Some(format!("needs an unprivileged uid: {why}"));
                }
            }
            Requirement::Tmpfs => {
                if let Some(why) = crate::faults::cannot_mount() {
                    return Some(why);
                }
            }
            _ => {}
        }
    }
    None
}

fn setup_failure(msg: String) -> Failure {
    stage_failure("setup", "the run set up: its sandbox, and on PostgreSQL its hosts and server", msg)
}

/// A failure outside every step (`what`: `setup` or `cleanup`).
fn stage_failure(what: &str, expected: &str, actual: String) -> Failure {
    Failure {
        step: None,
        what: what.to_owned(),
        expected: expected.to_owned(),
        actual,
        logs: Vec::new(),
        timeline: None,
    }
}

impl Ctx<'_> {
    fn run_steps(&mut self) -> Result<(), Box<Failure>> {
        self.setup().map_err(|e| Box::new(setup_failure(e)))?;
        let scenario_deadline = self.deadline(self.sc.timeout);
        let steps = self.sc.steps.clone();
        for (i, at) in steps.iter().enumerate() {
            if Instant::now() >= scenario_deadline {
                return Err(Box::new(Failure {
                    step: Some((i + 1, at.line)),
                    what: String::from("scenario timeout"),
                    expected: format!("the scenario within {:?} (scaled)", self.scaled(self.sc.timeout)),
                    actual: String::from("still running"),
                    logs: self.log_tails(),
                    timeline: None,
                }));
            }
            self.step_log.push(format!("step {} (line {}): {}", i + 1, at.line, at.step.summary()));
            self.step_records.push(StepRecord {
                index: i + 1,
                line: at.line,
                summary: at.step.summary(),
                mark: at.step.mark(),
                started: self.shared.start.elapsed(),
                ended: None,
                failed: false,
            });
            let result = at.step.run(self);
            let ended = self.shared.start.elapsed();
            if let Some(record) = self.step_records.last_mut() {
                record.ended = Some(ended);
                record.failed = result.is_err();
            }
            if let Err(e) = result {
                self.note(format!("failed: expected {}; actual {}", e.expected, e.actual));
                return Err(Box::new(Failure {
                    step: Some((i + 1, at.line)),
                    what: at.step.summary(),
                    expected: e.expected,
                    actual: e.actual,
                    logs: self.log_tails(),
                    timeline: None,
                }));
            }
        }
        // A final look at the safety invariants, whatever the scenario checked itself.
        let opts = CheckOptions {
            allow_statuses: vec![String::from("pending"), String::from("running")],
            none_running: false,
        };
        if let Err(e) = self.check(&opts, false) {
            return Err(Box::new(Failure {
                step: None,
                what: String::from("final invariant check"),
                expected: e.expected,
                actual: e.actual,
                logs: self.log_tails(),
                timeline: None,
            }));
        }
        Ok(())
    }

    fn setup(&mut self) -> Result<(), String> {
        std::fs::create_dir_all(self.effects_dir()).map_err(|e| e.to_string())?;
        std::fs::write(self.clock_file(), "0").map_err(|e| e.to_string())?;
        if self.sc.power_loss {
            let dir = self.sandbox.join("powerloss");
            std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        }
        if self.sc.backend == Backend::Postgres {
            // The hosts first: the server listens on their links.
            self.make_hosts()?;
            // Before the first step, so every homerd the run starts gets its URL.
            self.start_postgres()?;
        }
        if let Some(size) = self.sc.home_size {
            // Mounted before any process starts, registered before anything else can fail,
            // so every path out of the run unmounts it.
            let home = self.home();
            std::fs::create_dir_all(&home).map_err(|e| format!("create {}: {e}", home.display()))?;
            crate::faults::mount_tmpfs(&home, size)?;
            procs::register_mount(&self.marker, &home);
        }
        if self.sc.requires.contains(&Requirement::Unprivileged) {
            // The unprivileged uid must reach the sandbox and the binary: open the sandbox
            // (tempdirs are 0700) and run a copy of the daemon from it.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&self.sandbox, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| e.to_string())?;
            let bin_dir = self.sandbox.join("bin");
            std::fs::create_dir_all(&bin_dir).map_err(|e| e.to_string())?;
            let copy = bin_dir.join("homerd");
            std::fs::copy(&self.opts.daemon, &copy).map_err(|e| format!("copy {}: {e}", self.opts.daemon.display()))?;
            std::fs::set_permissions(&bin_dir, std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
            self.daemon_bin = copy;
        }
        Ok(())
    }
}

impl Ctx<'_> {
    /// Moves a failed run's timeline out of a sandbox that is about to be removed, to
    /// `<base>/<sandbox name>.timeline.html`; `None` (the reason in the step log) if it
    /// cannot.
    fn save_timeline_outside(&mut self, page: &Path, base: &Path) -> Option<PathBuf> {
        let name = self.sandbox.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let to = base.join(format!("{name}.timeline.html"));
        // A copy, not a rename: the sandbox may be a tmpfs home's parent on another device.
        match std::fs::copy(page, &to) {
            Ok(_) => Some(to),
            Err(e) => {
                self.step_log.push(format!("timeline not saved to {}: {e}", to.display()));
                None
            }
        }
    }

    /// Draws the run into `<sandbox>/timeline.html` (see `timeline/`); returns its path, or
    /// `None` with the reason in the step log when it could not be written.
    fn write_timeline(&mut self, outcome: &Outcome) -> Option<PathBuf> {
        let history = match self.history(true) {
            Ok(h) => h,
            Err(e) => {
                self.step_log.push(format!("timeline not written: expected {}; actual {}", e.expected, e.actual));
                return None;
            }
        };
        let failure = match outcome {
            Outcome::Failed(f) => Some(timeline::FailureText {
                what: match f.step {
                    Some((i, line)) => format!("step {i} (line {line}): {}", f.what),
                    None => f.what.clone(),
                },
                expected: f.expected.clone(),
                actual: f.actual.clone(),
            }),
            Outcome::Passed | Outcome::Skipped(_) => None,
        };
        let run = timeline::Run {
            name: &self.sc.name,
            history: &history,
            steps: &self.step_records,
            violations: &self.violations,
            failure,
        };
        match timeline::write(&self.sandbox, &run) {
            Ok(path) => Some(path),
            Err(e) => {
                self.step_log.push(format!("timeline not written: {}: {e}", self.sandbox.display()));
                None
            }
        }
    }
}
