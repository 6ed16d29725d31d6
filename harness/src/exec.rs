//! Runs one scenario: a sandbox, its processes, its steps, the invariants, the cleanup.
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
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::check::{self, CheckOptions};
use crate::history::{DbState, Event, History, PowerCut, ProcKind, ProcRecord};
use crate::procs;
use crate::scenario::*;

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
        std::env::var("HOMER_TEST_TIME_SCALE").ok().and_then(|s| s.parse::<f64>().ok()).unwrap_or(1.0).max(0.1)
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
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.step {
            Some((i, line)) => writeln!(f, "step {i} (line {line}): {}", self.what)?,
            None => writeln!(f, "{}", self.what)?,
        }
        writeln!(f, "  expected: {}", self.expected)?;
        writeln!(f, "  actual:   {}", self.actual)?;
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

/// A finished CLI process: exit code, stdout, stderr.
type CliOutput = (Option<i32>, Vec<u8>, Vec<u8>);

/// What `op = "remember"` saw: the file's bytes and mtime, and its `-wal` sibling's bytes
/// if it has one (a database's committed content is the file plus its WAL).
struct Remembered {
    bytes: Vec<u8>,
    mtime: Option<SystemTime>,
    wal: Option<Vec<u8>>,
}

impl Remembered {
    fn read(path: &Path) -> std::io::Result<Remembered> {
        let bytes = std::fs::read(path)?;
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let wal = match std::fs::read(format!("{}-wal", path.display())) {
            Ok(w) => Some(w),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        Ok(Remembered { bytes, mtime, wal })
    }
}

/// A step's failure before logs are attached.
#[derive(Debug)]
struct StepError {
    expected: String,
    actual: String,
}

fn fail<T>(expected: impl Into<String>, actual: impl Into<String>) -> Result<T, StepError> {
    Err(StepError { expected: expected.into(), actual: actual.into() })
}

// ---------------------------------------------------------------------------------------
// Processes and what they print

struct ProcState {
    name: String,
    pid: u32,
    kind: ProcKind,
    started: Instant,
    exited: Option<Instant>,
    code: Option<i32>,
    signal: Option<i32>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    stdout_closed: bool,
    stderr_closed: bool,
    /// A background `homerd enqueue` (a `start` whose command is `enqueue`): every id it
    /// prints is acknowledged.
    prints_ids: bool,
}

impl ProcState {
    /// The job ids a background enqueue printed so far (whole lines only: an id is
    /// printed with its newline in one write, after its commit).
    fn printed_ids(&self) -> Vec<i64> {
        if !self.prints_ids {
            return Vec::new();
        }
        let text = String::from_utf8_lossy(&self.stdout);
        let whole = text.rfind('\n').map_or("", |end| &text[..end]);
        whole.lines().filter_map(|l| l.trim().parse().ok()).collect()
    }
}

/// A `hold_write` in progress: its thread holds the transaction until the hold ends or
/// it is told to stop (a power loss ends it at once, as it ends every process).
struct Hold {
    stop: std::sync::mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

/// A read-write connection of the harness's own that never checkpoints when it closes:
/// closing the last connection to a WAL database would otherwise copy the WAL into the
/// database and delete it — writes no recording process made, which a later power loss
/// could not account for (and which would hide a stray `-wal`).
fn harness_rw(db: &Path) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
    Ok(conn)
}

#[derive(Default)]
struct State {
    procs: Vec<ProcState>,
    events: Vec<Event>,
    seq: u64,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    start: Instant,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait until `ready` returns Some or the deadline passes.
    fn wait_for<T>(&self, deadline: Instant, mut ready: impl FnMut(&State) -> Option<T>) -> Option<T> {
        let mut st = self.lock();
        loop {
            if let Some(v) = ready(&st) {
                return Some(v);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            // Bounded so conditions on files and the database (which do not notify) are re-polled.
            let slice = (deadline - now).min(Duration::from_millis(25));
            st = self.changed.wait_timeout(st, slice).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

fn matches_target(target: &str, name: &str) -> bool {
    if target == "*" {
        return true;
    }
    if let Some(prefix) = target.strip_suffix(".*") {
        return name.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('.')) || name == prefix;
    }
    if let Some(prefix) = target.strip_suffix('*') {
        return name.starts_with(prefix);
    }
    target == name
}

fn scalar_matches(want: &Scalar, got: &serde_json::Value) -> bool {
    match want {
        Scalar::Null => got.is_null(),
        Scalar::Int(i) => got.as_i64() == Some(*i),
        Scalar::Float(f) => got.as_f64() == Some(*f),
        Scalar::Bool(b) => got.as_bool() == Some(*b),
        Scalar::Text(t) => {
            got.as_str() == Some(t.as_str()) || (!got.is_string() && got.to_string().as_str() == t.as_str())
        }
    }
}

fn event_matches(e: &Event, target: &str, name: &str, fields: &[(String, Scalar)]) -> bool {
    matches_target(target, &e.proc_name)
        && e.name() == name
        && fields.iter().all(|(k, v)| scalar_matches(v, e.json.get(k).unwrap_or(&serde_json::Value::Null)))
}

fn describe_fields(fields: &[(String, Scalar)]) -> String {
    if fields.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!(" with {}", parts.join(", "))
}

// ---------------------------------------------------------------------------------------
// The run

struct Ctx<'a> {
    sc: &'a Scenario,
    opts: &'a Options,
    sandbox: PathBuf,
    marker: String,
    shared: Arc<Shared>,
    acked: Vec<i64>,
    /// For each acknowledged id, when (CLOCK_MONOTONIC, ns, the probe's clock) the enqueue
    /// process that acknowledged it was spawned: the earliest the job could be scheduled.
    acked_at: Vec<u64>,
    holds: Vec<Hold>,
    remembered: HashMap<String, Remembered>,
    /// One line per step run, with what it reported (e.g. how much `fill` wrote):
    /// `harness-logs/steps.log`.
    step_log: Vec<String>,
    daemon_bin: PathBuf,
    cli_count: usize,
    threads: Vec<JoinHandle<()>>,
    /// The power-loss log processes record into now (`powerloss/log-N`), with the header.
    power_log: u32,
    /// The `power_loss` steps run so far.
    power_cuts: Vec<PowerCut>,
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
    let dir = match tempfile::Builder::new().prefix(&format!("homer-harness-{}-", sc.name)).tempdir_in(&base) {
        Ok(d) => d,
        Err(e) => {
            return result(Outcome::Failed(setup_failure(format!("create a sandbox in {}: {e}", base.display()))), None)
        }
    };
    let sandbox = dir.path().to_path_buf();
    let marker =
        format!("{}-{}", std::process::id(), sandbox.file_name().map(|n| n.to_string_lossy()).unwrap_or_default());
    procs::open_marker(&marker);
    let mut ctx = Ctx {
        sc,
        opts,
        sandbox: sandbox.clone(),
        marker: marker.clone(),
        shared: Arc::new(Shared { state: Mutex::new(State::default()), changed: Condvar::new(), start: started }),
        acked: Vec::new(),
        acked_at: Vec::new(),
        holds: Vec::new(),
        remembered: HashMap::new(),
        step_log: Vec::new(),
        daemon_bin: opts.daemon.clone(),
        cli_count: 0,
        threads: Vec::new(),
        power_log: 1,
        power_cuts: Vec::new(),
    };
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ctx.run_steps()));
    let mut outcome = match run {
        Ok(Ok(())) => Outcome::Passed,
        Ok(Err(f)) => Outcome::Failed(f),
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
            })
        }
    };
    // Teardown: every marked process dies, whatever the outcome; then the tmpfs home (if
    // any) is unmounted, which nothing alive can keep busy any more.
    ctx.register_job_groups();
    let survivors = procs::kill_marked(&marker, Duration::from_secs(10));
    let keep = opts.keep || (opts.keep_failed && matches!(outcome, Outcome::Failed(_)));
    let unmount_errors = ctx.unmount_home(keep);
    ctx.end_holds();
    for h in ctx.threads.drain(..) {
        let _ = h.join();
    }
    procs::close_marker(&marker);
    if !survivors.is_empty() && matches!(outcome, Outcome::Passed) {
        outcome = Outcome::Failed(Failure {
            step: None,
            what: String::from("cleanup"),
            expected: String::from("no process started by the scenario alive after SIGKILL"),
            actual: format!("still alive: {survivors:?}"),
            logs: Vec::new(),
        });
    }
    if !unmount_errors.is_empty() && !matches!(outcome, Outcome::Failed(_)) {
        outcome = Outcome::Failed(Failure {
            step: None,
            what: String::from("cleanup"),
            expected: String::from("the tmpfs home unmounted"),
            actual: unmount_errors.join("; "),
            logs: Vec::new(),
        });
    }
    if let Outcome::Failed(f) = &mut outcome {
        if f.logs.is_empty() {
            f.logs = ctx.log_tails();
        }
    }
    ctx.write_logs();
    let kept = if keep {
        let path = dir.keep();
        Some(path)
    } else {
        None
    };
    result(outcome, kept)
}

/// Why the scenario cannot run on this system, if it cannot.
pub fn run_skip_reason(sc: &Scenario) -> Option<String> {
    skip_reason(sc)
}

fn skip_reason(sc: &Scenario) -> Option<String> {
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
    Failure {
        step: None,
        what: String::from("setup"),
        expected: String::from("a sandbox"),
        actual: msg,
        logs: Vec::new(),
    }
}

impl Ctx<'_> {
    fn home(&self) -> PathBuf {
        self.sandbox.join("home")
    }
    fn lock_path(&self) -> PathBuf {
        self.home().join("homer.lock")
    }
    fn db(&self) -> PathBuf {
        self.home().join("homer.db")
    }
    fn effects_dir(&self) -> PathBuf {
        self.sandbox.join("effects")
    }
    fn clock_file(&self) -> PathBuf {
        self.sandbox.join("clock-offset-ms")
    }
    /// The power-loss log every `homerd` records into until the next `power_loss` step
    /// (outside the home: a full tmpfs home must not stop the recording).
    fn power_log_path(&self) -> PathBuf {
        self.sandbox.join("powerloss").join(format!("log-{}", self.power_log))
    }

    /// Ends every `hold_write` in progress and waits for its thread (its connection closed).
    fn end_holds(&mut self) {
        for h in &self.holds {
            let _ = h.stop.send(());
        }
        for h in self.holds.drain(..) {
            let _ = h.thread.join();
        }
    }

    fn scaled(&self, d: Duration) -> Duration {
        d.mul_f64(self.opts.time_scale)
    }

    fn deadline(&self, d: Duration) -> Instant {
        Instant::now() + self.scaled(d)
    }

    fn run_steps(&mut self) -> Result<(), Failure> {
        self.setup().map_err(setup_failure)?;
        let scenario_deadline = self.deadline(self.sc.timeout);
        let steps = self.sc.steps.clone();
        for (i, at) in steps.iter().enumerate() {
            if Instant::now() >= scenario_deadline {
                return Err(Failure {
                    step: Some((i + 1, at.line)),
                    what: String::from("scenario timeout"),
                    expected: format!("the scenario within {:?} (scaled)", self.scaled(self.sc.timeout)),
                    actual: String::from("still running"),
                    logs: self.log_tails(),
                });
            }
            self.step_log.push(format!("step {} (line {}): {}", i + 1, at.line, step_summary(&at.step)));
            if let Err(e) = self.step(&at.step) {
                self.note(format!("failed: expected {}; actual {}", e.expected, e.actual));
                return Err(Failure {
                    step: Some((i + 1, at.line)),
                    what: step_summary(&at.step),
                    expected: e.expected,
                    actual: e.actual,
                    logs: self.log_tails(),
                });
            }
        }
        // A final look at the safety invariants, whatever the scenario checked itself.
        let opts = CheckOptions {
            allow_statuses: vec![String::from("pending"), String::from("running")],
            none_running: false,
        };
        if let Err(e) = self.check(&opts, false) {
            return Err(Failure {
                step: None,
                what: String::from("final invariant check"),
                expected: e.expected,
                actual: e.actual,
                logs: self.log_tails(),
            });
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

    /// Substitute placeholders in one string.
    fn subst(&self, s: &str) -> Result<String, StepError> {
        let mut out = s
            .replace("{sandbox}", &self.sandbox.to_string_lossy())
            .replace("{home}", &self.home().to_string_lossy())
            .replace("{lock}", &self.lock_path().to_string_lossy())
            .replace("{db}", &self.db().to_string_lossy())
            .replace("{scenarios}", &scenario_dir(&self.sc.path).to_string_lossy())
            .replace("{probe}", &self.probe_argv(&ProbeSpec::default()).join(" "));
        while let Some(start) = out.find("{job:") {
            let end = out[start..]
                .find('}')
                .map(|e| start + e)
                .ok_or_else(|| StepError { expected: String::from("{job:N}"), actual: out.clone() })?;
            let n: usize = out[start + 5..end].parse().map_err(|_| StepError {
                expected: String::from("{job:N} with N a number"),
                actual: out[start..=end].to_string(),
            })?;
            let Some(id) = n.checked_sub(1).and_then(|i| self.acked.get(i)) else {
                return fail(
                    format!("at least {n} acknowledged enqueues for {{job:{n}}}"),
                    format!("{}", self.acked.len()),
                );
            };
            out.replace_range(start..=end, &id.to_string());
        }
        Ok(out)
    }

    fn path(&self, s: &str) -> Result<PathBuf, StepError> {
        let p = PathBuf::from(self.subst(s)?);
        Ok(if p.is_absolute() { p } else { self.sandbox.join(p) })
    }

    fn probe_argv(&self, spec: &ProbeSpec) -> Vec<String> {
        let mut v: Vec<String> = self.opts.probe.iter().map(|s| s.to_string_lossy().into_owned()).collect();
        v.push(String::from("--effects"));
        v.push(self.effects_dir().to_string_lossy().into_owned());
        v.push(String::from("--sleep-ms"));
        v.push(self.scaled(spec.sleep).as_millis().to_string());
        if let Some(g) = spec.grandchild {
            v.push(String::from("--grandchild-ms"));
            v.push(self.scaled(g).as_millis().to_string());
        }
        if spec.grandchild_setsid {
            v.push(String::from("--grandchild-setsid"));
        }
        if spec.exit_code != 0 {
            v.push(String::from("--exit"));
            v.push(spec.exit_code.to_string());
        }
        if spec.ignore_term {
            v.push(String::from("--ignore-term"));
        }
        v
    }

    /// A `homerd` command: sandbox environment, settings after the subcommand.
    fn homerd(&self, args: &[String], with_settings: bool, env: &[(String, String)], unprivileged: bool) -> Command {
        let mut cmd = Command::new(&self.daemon_bin);
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("HOMER_") || k.starts_with("HOMERD_") {
                cmd.env_remove(k.as_ref());
            }
        }
        // HOME and the XDG directories point into the sandbox, so nothing of the user's
        // (an installed service unit, a config) leaks into a scenario.
        cmd.env("HOMER_HOME", self.home())
            .env("HOME", &self.sandbox)
            .env("XDG_CONFIG_HOME", self.sandbox.join(".config"))
            .env("XDG_DATA_HOME", self.sandbox.join(".local/share"))
            .env("HOMER_LOG_FORMAT", "json")
            .env("NO_COLOR", "1")
            .env("HOMERD_CLOCK_OFFSET_FILE", self.clock_file());
        if let Some(m) = &self.opts.mutant {
            cmd.env("HOMERD_MUTANT", m);
        }
        if self.sc.power_loss {
            cmd.env(POWERLOSS_LOG_ENV, self.power_log_path());
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut argv: Vec<String> = Vec::new();
        if let Some((first, rest)) = args.split_first() {
            argv.push(first.clone());
            if with_settings {
                for (k, v) in &self.sc.settings {
                    argv.push(String::from("--set"));
                    argv.push(format!("{k}={}", self.scale_setting(v)));
                }
            }
            argv.extend(rest.iter().cloned());
        }
        cmd.args(argv).current_dir(&self.sandbox).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        procs::prepare(&mut cmd, &self.marker);
        if unprivileged {
            let _ = procs::drop_privileges(&mut cmd);
        }
        cmd
    }

    fn scale_setting(&self, v: &str) -> String {
        match parse_duration(v) {
            Some(d) if self.opts.time_scale != 1.0 => format!("{}ms", self.scaled(d).as_millis().max(1)),
            _ => v.to_string(),
        }
    }

    /// Spawn and attach readers and a waiter; returns the pid.
    fn spawn(&mut self, name: String, kind: ProcKind, mut cmd: Command) -> Result<u32, StepError> {
        let mut child = match procs::spawn(&mut cmd, &self.marker) {
            Ok(c) => c,
            Err(e) => return fail(format!("{name} to start"), format!("spawn failed: {e}")),
        };
        let pid = child.id();
        let index = {
            let mut st = self.shared.lock();
            st.procs.push(ProcState {
                name: name.clone(),
                pid,
                kind,
                started: Instant::now(),
                exited: None,
                code: None,
                signal: None,
                stdout: Vec::new(),
                stderr: Vec::new(),
                stdout_closed: false,
                stderr_closed: false,
                prints_ids: false,
            });
            st.procs.len() - 1
        };
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let shared = self.shared.clone();
        if let Some(mut out) = stdout {
            let shared = shared.clone();
            self.threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    match out.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => shared.lock().procs[index].stdout.extend_from_slice(&buf[..n]),
                    }
                }
                shared.lock().procs[index].stdout_closed = true;
                shared.changed.notify_all();
            }));
        }
        if let Some(err) = stderr {
            let shared = shared.clone();
            let name = name.clone();
            self.threads.push(std::thread::spawn(move || {
                let mut reader = BufReader::new(err);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match reader.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    let json =
                        serde_json::from_slice::<serde_json::Value>(&line).ok().filter(|v| v.get("event").is_some());
                    let mut st = shared.lock();
                    st.procs[index].stderr.extend_from_slice(&line);
                    if let Some(json) = json {
                        st.seq += 1;
                        let seq = st.seq;
                        st.events.push(Event { proc_name: name.clone(), pid, seq, at: shared.start.elapsed(), json });
                    }
                    drop(st);
                    shared.changed.notify_all();
                }
                shared.lock().procs[index].stderr_closed = true;
                shared.changed.notify_all();
            }));
        }
        self.threads.push(std::thread::spawn(move || {
            let status = child.wait();
            procs::disown(pid);
            let mut st = shared.lock();
            let p = &mut st.procs[index];
            p.exited = Some(Instant::now());
            if let Ok(s) = status {
                use std::os::unix::process::ExitStatusExt;
                p.code = s.code();
                p.signal = s.signal();
            }
            drop(st);
            shared.changed.notify_all();
        }));
        Ok(pid)
    }

    fn step(&mut self, step: &Step) -> Result<(), StepError> {
        match step {
            Step::Start(s) => self.start(s),
            Step::Wait(w) => self.wait(w),
            Step::Exit(x) => self.expect_exit(x),
            Step::Signal { target, signal, outside_write: true } => self.pause_outside_write(target, *signal),
            Step::Signal { target, signal, .. } => self.signal(target, *signal),
            Step::File(f) => self.file(f),
            Step::Enqueue(e) => self.enqueue(e),
            Step::Cli(c) => self.cli(c).map(|_| ()),
            Step::Sql(q) => {
                let db = match &q.database {
                    Some(d) => self.path(d)?,
                    None => self.db(),
                };
                let query = self.subst(&q.query)?;
                let rows = if q.write { self.write_sql(&db, &query)? } else { self.query_at(&db, &query)? };
                if rows != q.rows {
                    return fail(format!("rows {:?}", q.rows), format!("{rows:?}"));
                }
                Ok(())
            }
            Step::HoldWrite { duration } => self.hold_write(*duration),
            Step::Clock { step_ms } => self.clock(*step_ms),
            Step::Check(c) => {
                let opts = CheckOptions { allow_statuses: c.allow.clone(), none_running: c.none_running };
                self.check(&opts, true)
            }
            Step::ExpectEvents(e) => self.expect_events(e),
            Step::Snapshot(s) => self.snapshot(s),
            Step::PowerLoss(p) => self.power_loss(p),
        }
    }

    fn start(&mut self, s: &Start) -> Result<(), StepError> {
        let names: Vec<String> = if s.count <= 1 {
            vec![s.name.clone()]
        } else {
            (1..=s.count).map(|i| format!("{}.{i}", s.name)).collect()
        };
        let mut args: Vec<String> = s.command.clone();
        if let Some(lock) = &s.lock_file {
            args.push(String::from("--lock-file"));
            args.push(self.path(lock)?.to_string_lossy().into_owned());
        }
        for a in &s.args {
            args.push(self.subst(a)?);
        }
        let mut env = Vec::new();
        for (k, v) in &s.env {
            env.push((k.clone(), self.subst(v)?));
        }
        if let Some(fp) = &s.failpoints {
            env.push((String::from("HOMERD_FAILPOINTS"), fp.clone()));
        }
        if let Some(n) = s.arm {
            env.push((String::from(POWERLOSS_CUT_ENV), n.to_string()));
        }
        // Build every command first so simultaneous starts leave as close together as possible.
        let mut cmds: Vec<Command> =
            names.iter().map(|_| self.homerd(&args, !s.no_settings, &env, s.unprivileged)).collect();
        if let Some((soft, hard)) = s.nofile {
            for cmd in &mut cmds {
                procs::limit_open_files(cmd, soft, hard);
            }
        }
        // A background `homerd enqueue`: what it prints is acknowledged (see `history`).
        let prints_ids = s.command.first().map(String::as_str) == Some("enqueue");
        for (name, cmd) in names.into_iter().zip(cmds) {
            let pid = self.spawn(name, ProcKind::Daemon, cmd)?;
            if prints_ids {
                if let Some(p) = self.shared.lock().procs.iter_mut().rev().find(|p| p.pid == pid) {
                    p.prints_ids = true;
                }
            }
        }
        Ok(())
    }

    /// An armed process (`arm = N`) must have died at its cut: SIGKILLed by itself just
    /// before its N-th recorded op. One that exited by itself had fewer ops than that.
    fn expect_cut(&mut self, name: &str, arm: u64) -> Result<(), StepError> {
        let (code, signal) = {
            let st = self.shared.lock();
            match st.procs.iter().rev().find(|p| p.name == name) {
                Some(p) => (p.code, p.signal),
                None => return fail(format!("a process named {name}"), "none was started"),
            }
        };
        if signal != Some(libc::SIGKILL) {
            return fail(
                format!("{name} to cut power (SIGKILL itself) before its recorded op {arm}"),
                format!("it exited {}: it made fewer ops than that", exit_text(code, signal)),
            );
        }
        self.note(format!("{name} cut power before its op {arm}"));
        Ok(())
    }

    fn wait(&mut self, w: &Wait) -> Result<(), StepError> {
        let deadline = self.deadline(w.timeout);
        match &w.until {
            WaitFor::Event { target, event, fields, count } => {
                let got = self.shared.wait_for(deadline, |st| {
                    let n = st.events.iter().filter(|e| event_matches(e, target, event, fields)).count();
                    (n >= *count as usize).then_some(())
                });
                if got.is_none() {
                    let n =
                        self.shared.lock().events.iter().filter(|e| event_matches(e, target, event, fields)).count();
                    let exited = self.exited_summary(target);
                    return fail(
                        format!("{count} `{event}` event(s){} from {target}", describe_fields(fields)),
                        format!("{n} within {:?}{exited}", self.scaled(w.timeout)),
                    );
                }
                Ok(())
            }
            WaitFor::Exited { target } => {
                let got = self.shared.wait_for(deadline, |st| {
                    let mut any = false;
                    for p in st.procs.iter().filter(|p| matches_target(target, &p.name)) {
                        any = true;
                        p.exited?;
                    }
                    any.then_some(())
                });
                if got.is_none() {
                    return fail(
                        format!("{target} to exit"),
                        format!("still running after {:?}", self.scaled(w.timeout)),
                    );
                }
                Ok(())
            }
            WaitFor::Sql { query, rows } => {
                let query = &self.subst(query)?;
                let mut last = Vec::new();
                loop {
                    match self.query(query) {
                        Ok(r) if &r == rows => return Ok(()),
                        Ok(r) => last = r,
                        Err(_) if !self.db().exists() => {}
                        Err(e) => return Err(e),
                    }
                    if Instant::now() >= deadline {
                        return fail(
                            format!("{query} -> {rows:?}"),
                            format!("{last:?} after {:?}", self.scaled(w.timeout)),
                        );
                    }
                    self.shared.wait_for(Instant::now() + Duration::from_millis(20), |_| None::<()>);
                }
            }
            WaitFor::Effects { job, starts, ends, not_before } => {
                let job_id = match job {
                    Some(n) => Some(self.job_id(*n)?),
                    None => None,
                };
                // The earliest start allowed, on the probe's clock (not scaled: it mirrors a
                // `run_after` string, which is passed to homerd as written).
                let earliest = match (job, not_before) {
                    (Some(n), Some(d)) => Some((self.acked_at[*n as usize - 1], *d)),
                    _ => None,
                };
                let counts;
                loop {
                    let effects = self
                        .effects()
                        .map_err(|e| StepError { expected: String::from("an effects log"), actual: e })?;
                    let of_job = |e: &&crate::history::Effect| job_id.is_none_or(|id| e.job_id == id);
                    let s = effects
                        .iter()
                        .filter(of_job)
                        .filter(|e| matches!(e.kind, crate::history::EffectKind::Start))
                        .count();
                    let n = effects
                        .iter()
                        .filter(of_job)
                        .filter(|e| matches!(e.kind, crate::history::EffectKind::End))
                        .count();
                    if let Some((enqueued_ns, d)) = earliest {
                        let limit = enqueued_ns.saturating_add(d.as_nanos() as u64);
                        let early = effects
                            .iter()
                            .filter(of_job)
                            .find(|e| matches!(e.kind, crate::history::EffectKind::Start) && e.mono_ns < limit);
                        if let Some(e) = early {
                            let after = Duration::from_nanos(e.mono_ns.saturating_sub(enqueued_ns));
                            return fail(
                                format!("no start of job {} earlier than {d:?} after its enqueue", job_id.unwrap_or(0)),
                                format!("run {} started {after:?} after its enqueue was spawned", e.run),
                            );
                        }
                    }
                    if s >= *starts as usize && n >= *ends as usize {
                        return Ok(());
                    }
                    if Instant::now() >= deadline {
                        counts = (s, n);
                        break;
                    }
                    self.shared.wait_for(Instant::now() + Duration::from_millis(20), |_| None::<()>);
                }
                fail(
                    format!("{starts} start and {ends} end record(s) in the effects log"),
                    format!("{} start, {} end after {:?}", counts.0, counts.1, self.scaled(w.timeout)),
                )
            }
            WaitFor::Elapsed { duration } => {
                // Letting a threshold elapse is the point of this step (see scenarios/README.md).
                std::thread::sleep(self.scaled(*duration));
                Ok(())
            }
        }
    }

    fn job_id(&self, n: u32) -> Result<i64, StepError> {
        match (n as usize).checked_sub(1).and_then(|i| self.acked.get(i)) {
            Some(id) => Ok(*id),
            None => fail(format!("an acknowledged enqueue number {n}"), format!("{} acknowledged", self.acked.len())),
        }
    }

    fn exited_summary(&self, target: &str) -> String {
        let st = self.shared.lock();
        let ex: Vec<String> = st
            .procs
            .iter()
            .filter(|p| matches_target(target, &p.name) && p.exited.is_some())
            .map(|p| format!("{} exited {}", p.name, exit_text(p.code, p.signal)))
            .collect();
        if ex.is_empty() {
            String::new()
        } else {
            format!(" ({})", ex.join(", "))
        }
    }

    fn expect_exit(&mut self, x: &ExpectExit) -> Result<(), StepError> {
        let deadline = self.deadline(x.timeout);
        let total = self.shared.lock().procs.iter().filter(|p| matches_target(&x.target, &p.name)).count();
        if total == 0 {
            return fail(format!("a process named {}", x.target), String::from("none was started"));
        }
        let want = x.count.map(|c| c as usize).unwrap_or(total);
        let done = self.shared.wait_for(deadline, |st| {
            let n = st.procs.iter().filter(|p| matches_target(&x.target, &p.name) && p.exited.is_some()).count();
            (n >= want).then_some(())
        });
        if done.is_none() {
            return fail(
                format!("{want} of {} to exit with {}", x.target, x.code),
                format!("still running after {:?}{}", self.scaled(x.timeout), self.exited_summary(&x.target)),
            );
        }
        // Output is complete at EOF; a descendant holding the pipe bounds this by a short wait.
        let eof_deadline = Instant::now() + self.scaled(Duration::from_secs(2));
        self.shared.wait_for(eof_deadline, |st| {
            st.procs
                .iter()
                .filter(|p| matches_target(&x.target, &p.name) && p.exited.is_some())
                .all(|p| p.stdout_closed && p.stderr_closed)
                .then_some(())
        });
        let st = self.shared.lock();
        for p in st.procs.iter().filter(|p| matches_target(&x.target, &p.name) && p.exited.is_some()) {
            if p.code != Some(x.code) {
                return fail(
                    format!("{} to exit with code {}", p.name, x.code),
                    format!("{}; stderr: {}", exit_text(p.code, p.signal), tail(&p.stderr, 5)),
                );
            }
            check_patterns(&p.name, "stdout", &p.stdout, &x.stdout)?;
            check_patterns(&p.name, "stderr", &p.stderr, &x.stderr)?;
        }
        Ok(())
    }

    fn signal(&mut self, target: &str, sig: Sig) -> Result<(), StepError> {
        let signo = match sig {
            Sig::Kill => libc::SIGKILL,
            Sig::Term => libc::SIGTERM,
            Sig::Int => libc::SIGINT,
            Sig::Stop => libc::SIGSTOP,
            Sig::Cont => libc::SIGCONT,
            Sig::Hup => libc::SIGHUP,
        };
        let st = self.shared.lock();
        let targets: Vec<&ProcState> = st.procs.iter().filter(|p| matches_target(target, &p.name)).collect();
        if targets.is_empty() {
            return fail(format!("a process named {target}"), String::from("none was started"));
        }
        // A group selector signals the members still alive (the fuzzer aims at "whoever is
        // left"); a named process must still be running.
        let group = target.contains('*');
        for p in targets {
            if p.exited.is_some() && group {
                continue;
            }
            if p.exited.is_some() {
                return fail(
                    format!("{} running to receive {sig:?}", p.name),
                    format!("it exited {}", exit_text(p.code, p.signal)),
                );
            }
            // SAFETY: the waiter thread has not reaped this pid (exited is None under the lock,
            // and it records the exit under the same lock), so it still names our child.
            unsafe { libc::kill(p.pid as libc::pid_t, signo) };
        }
        Ok(())
    }

    /// SIGSTOP `target` at a moment it holds no write transaction on the database: a process
    /// stopped inside one blocks every other writer until it resumes (SQLite's write lock
    /// is a file lock the stopped process keeps), which is a different scenario from a
    /// paused daemon being taken over. After each STOP the harness tries `BEGIN IMMEDIATE`
    /// without waiting; if the lock is taken, it resumes the process, waits for its next
    /// event, and tries again.
    fn pause_outside_write(&mut self, target: &str, sig: Sig) -> Result<(), StepError> {
        let deadline = self.deadline(Duration::from_secs(10));
        let mut tries = 0;
        loop {
            self.signal(target, sig)?;
            tries += 1;
            if !self.db().exists() || self.write_lock_free()? {
                return Ok(());
            }
            self.signal(target, Sig::Cont)?;
            if Instant::now() >= deadline {
                return fail(
                    format!("{target} paused outside a write transaction"),
                    format!("it held one at each of {tries} tries"),
                );
            }
            let seen = self.shared.lock().events.iter().filter(|e| matches_target(target, &e.proc_name)).count();
            self.shared.wait_for(Instant::now() + self.scaled(Duration::from_secs(1)), |st| {
                (st.events.iter().filter(|e| matches_target(target, &e.proc_name)).count() > seen).then_some(())
            });
        }
    }

    /// Whether a write transaction can begin at once (nobody holds SQLite's write lock).
    fn write_lock_free(&self) -> Result<bool, StepError> {
        let err = |e: rusqlite::Error| StepError {
            expected: String::from("to probe the database write lock"),
            actual: e.to_string(),
        };
        let conn = harness_rw(&self.db()).map_err(err)?;
        conn.busy_timeout(Duration::ZERO).map_err(err)?;
        match conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK") {
            Ok(()) => Ok(true),
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::DatabaseBusy => Ok(false),
            Err(e) => Err(err(e)),
        }
    }

    fn file(&mut self, f: &FileStep) -> Result<(), StepError> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.path(&f.path)?;
        let io = |what: &str, e: std::io::Error| StepError {
            expected: format!("{what} {}", path.display()),
            actual: e.to_string(),
        };
        match &f.op {
            FileOp::Remove => {
                if path.is_dir() && !path.is_symlink() {
                    std::fs::remove_dir_all(&path).map_err(|e| io("remove", e))
                } else {
                    std::fs::remove_file(&path).map_err(|e| io("remove", e))
                }
            }
            FileOp::Replace { contents } => {
                let tmp = path.with_extension("harness-replace");
                std::fs::write(&tmp, contents).map_err(|e| io("write a replacement for", e))?;
                std::fs::rename(&tmp, &path).map_err(|e| io("rename over", e))
            }
            FileOp::Symlink { target } => {
                let target = self.path(target)?;
                std::os::unix::fs::symlink(&target, &path).map_err(|e| io("symlink", e))
            }
            FileOp::Chmod { mode } => {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).map_err(|e| io("chmod", e))
            }
            FileOp::Write { contents } => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| io("create the folder of", e))?;
                }
                std::fs::write(&path, contents).map_err(|e| io("write", e))
            }
            FileOp::Mkdir => std::fs::create_dir_all(&path).map_err(|e| io("mkdir", e)),
            FileOp::Copy { to } => {
                let to = self.path(to)?;
                if let Some(parent) = to.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| io("create the folder of", e))?;
                }
                std::fs::copy(&path, &to).map(|_| ()).map_err(|e| io("copy", e))
            }
            FileOp::Remember { label } => {
                let remembered = Remembered::read(&path).map_err(|e| io("read", e))?;
                self.remembered.insert(label.clone(), remembered);
                Ok(())
            }
            FileOp::Unchanged { label } => {
                let Some(before) = self.remembered.get(label) else {
                    return fail(format!("a `remember` step labelled {label}"), String::from("none ran before"));
                };
                let now = Remembered::read(&path).map_err(|e| io("read", e))?;
                if now.bytes != before.bytes {
                    return fail(
                        format!("{} byte-for-byte as remembered ({} bytes)", path.display(), before.bytes.len()),
                        format!("{} bytes, different content", now.bytes.len()),
                    );
                }
                if now.mtime != before.mtime {
                    return fail(
                        format!("{} mtime unchanged", path.display()),
                        format!("{:?} -> {:?}", before.mtime, now.mtime),
                    );
                }
                // A database's content is the file and its WAL: a WAL that appeared,
                // vanished (checkpointed into something else) or changed is a change.
                let wal = format!("{}-wal", path.display());
                match (&before.wal, &now.wal) {
                    (None, None) => Ok(()),
                    (Some(a), Some(b)) if a == b => Ok(()),
                    (None, Some(b)) => {
                        fail(format!("no {wal}, as remembered"), format!("it appeared ({} bytes)", b.len()))
                    }
                    (Some(a), None) => fail(format!("{wal} as remembered ({} bytes)", a.len()), "it is gone"),
                    (Some(a), Some(b)) => fail(
                        format!("{wal} byte-for-byte as remembered ({} bytes)", a.len()),
                        format!("{} bytes, different content", b.len()),
                    ),
                }
            }
            FileOp::Corrupt { offset, len } => {
                let at = crate::faults::corrupt(&path, *offset, *len)
                    .map_err(|e| StepError { expected: format!("to corrupt {}", path.display()), actual: e })?;
                self.note(format!("overwrote {len} bytes at offset {at} of {}", path.display()));
                Ok(())
            }
            FileOp::Rename { to } => {
                let to = self.path(to)?;
                if let Some(parent) = to.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| io("create the folder of", e))?;
                }
                std::fs::rename(&path, &to).map_err(|e| io(&format!("rename to {}:", to.display()), e))
            }
            FileOp::Fill => {
                let n = crate::faults::fill(&path).map_err(|e| StepError {
                    expected: format!("to fill the filesystem of {}", path.display()),
                    actual: e,
                })?;
                self.note(format!("wrote {n} bytes into {} before ENOSPC", path.display()));
                Ok(())
            }
            FileOp::Mode { mode } => {
                let meta = path.symlink_metadata().map_err(|e| io("stat", e))?;
                let actual = meta.permissions().mode() & 0o7777;
                if actual != *mode {
                    return fail(format!("{} with mode {mode:04o}", path.display()), format!("mode {actual:04o}"));
                }
                Ok(())
            }
            FileOp::Exists { min_size } => match (path.symlink_metadata(), min_size) {
                (Err(_), _) => fail(format!("{} to exist", path.display()), "absent"),
                (Ok(_), None) => Ok(()),
                (Ok(m), Some(min)) if m.is_file() && m.len() >= *min => Ok(()),
                (Ok(m), Some(min)) => fail(
                    format!("{} to be a file of at least {min} bytes", path.display()),
                    if m.is_file() { format!("{} bytes", m.len()) } else { String::from("not a regular file") },
                ),
            },
            FileOp::Absent => {
                if path.symlink_metadata().is_err() {
                    Ok(())
                } else {
                    fail(format!("{} to be absent", path.display()), "it exists")
                }
            }
        }
    }

    fn enqueue(&mut self, e: &Enqueue) -> Result<(), StepError> {
        let mut args =
            vec![String::from("enqueue"), if e.kind == "probe" { String::from("exec") } else { e.kind.clone() }];
        if let Some(l) = &e.lane {
            args.extend([String::from("--lane"), l.clone()]);
        }
        if let Some(m) = e.max_attempts {
            args.extend([String::from("--max-attempts"), m.to_string()]);
        }
        if let Some(k) = &e.key {
            args.extend([String::from("--key"), self.subst(k)?]);
        }
        if let Some(t) = &e.timeout {
            args.extend([String::from("--timeout"), t.clone()]);
        }
        if let Some(r) = &e.run_after {
            args.extend([String::from("--run-after"), r.clone()]);
        }
        let job_args: Vec<String> = if e.kind == "probe" {
            self.probe_argv(&e.probe)
        } else {
            e.args.iter().map(|a| self.subst(a)).collect::<Result<_, _>>()?
        };
        if e.from_file {
            return self.enqueue_from_file(e, &job_args);
        }
        if matches!(e.kind.as_str(), "probe" | "exec") {
            args.push(String::from("--"));
        }
        args.extend(job_args);
        let batch = if e.parallel { e.count.max(1) as usize } else { 1 };
        let mut remaining = e.count.max(1) as usize;
        while remaining > 0 {
            let n = batch.min(remaining);
            let mut pids = Vec::new();
            for _ in 0..n {
                self.cli_count += 1;
                let name = format!("enqueue#{}", self.cli_count);
                let cmd = self.homerd(&args, true, &armed_env(e.arm), false);
                let spawned_at = crate::probe::mono_ns();
                pids.push((name.clone(), self.spawn(name, ProcKind::Cli, cmd)?, spawned_at));
            }
            for (name, _, spawned_at) in pids {
                let (code, out, err) = self.wait_cli(&name, Duration::from_secs(30))?;
                if let Some(arm) = e.arm {
                    // Cut before its commit was acknowledged: nothing to remember.
                    self.expect_cut(&name, arm)?;
                    continue;
                }
                if code != Some(e.code) {
                    return fail(
                        format!("{name} ({}) to exit {}", args.join(" "), e.code),
                        format!("{code:?}: {}", String::from_utf8_lossy(&err).trim()),
                    );
                }
                if code == Some(0) {
                    match String::from_utf8_lossy(&out).trim().parse::<i64>() {
                        Ok(id) => {
                            self.acked.push(id);
                            self.acked_at.push(spawned_at);
                        }
                        Err(_) => {
                            return fail("an enqueue to print the job id", String::from_utf8_lossy(&out).into_owned())
                        }
                    }
                }
            }
            remaining -= n;
        }
        Ok(())
    }

    /// `from_file = true`: every job of the step as one line of a JSON-lines file, through
    /// one `homerd enqueue --from FILE` (one process, one transaction).
    fn enqueue_from_file(&mut self, e: &Enqueue, job_args: &[String]) -> Result<(), StepError> {
        let kind = if e.kind == "probe" { "exec" } else { e.kind.as_str() };
        let mut line = serde_json::json!({ "kind": kind, "args": job_args });
        let fields = [
            ("lane", e.lane.clone().map(serde_json::Value::from)),
            ("max_attempts", e.max_attempts.map(serde_json::Value::from)),
            ("key", e.key.as_deref().map(|k| self.subst(k)).transpose()?.map(serde_json::Value::from)),
            ("timeout", e.timeout.clone().map(serde_json::Value::from)),
            ("run_after", e.run_after.clone().map(serde_json::Value::from)),
        ];
        for (k, v) in fields {
            if let Some(v) = v {
                line[k] = v;
            }
        }
        let count = e.count.max(1) as usize;
        let mut text = format!("{line}\n").repeat(count);
        text.shrink_to_fit();
        self.cli_count += 1;
        let name = format!("enqueue#{}", self.cli_count);
        let file = self.sandbox.join(format!("{name}.jsonl").replace('#', "-"));
        std::fs::write(&file, text)
            .map_err(|err| StepError { expected: format!("to write {}", file.display()), actual: err.to_string() })?;
        let args = vec![String::from("enqueue"), String::from("--from"), file.to_string_lossy().into_owned()];
        let cmd = self.homerd(&args, true, &armed_env(e.arm), false);
        let spawned_at = crate::probe::mono_ns();
        self.spawn(name.clone(), ProcKind::Cli, cmd)?;
        let (code, out, err) = self.wait_cli(&name, Duration::from_secs(60))?;
        if let Some(arm) = e.arm {
            return self.expect_cut(&name, arm);
        }
        if code != Some(e.code) {
            return fail(
                format!("{name} (enqueue --from with {count} jobs) to exit {}", e.code),
                format!("{code:?}: {}", tail(&err, 5)),
            );
        }
        if code != Some(0) {
            return Ok(());
        }
        let ids: Vec<i64> = String::from_utf8_lossy(&out).lines().filter_map(|l| l.trim().parse().ok()).collect();
        if ids.len() != count {
            return fail(format!("{count} job ids from {name}"), format!("{}: {}", ids.len(), tail(&out, 3)));
        }
        self.acked_at.extend(std::iter::repeat_n(spawned_at, ids.len()));
        self.acked.extend(ids);
        Ok(())
    }

    /// Wait for a CLI process; returns (code, stdout, stderr).
    fn wait_cli(&self, name: &str, timeout: Duration) -> Result<CliOutput, StepError> {
        let deadline = self.deadline(timeout);
        let got = self.shared.wait_for(deadline, |st| {
            let p = st.procs.iter().rev().find(|p| p.name == name)?;
            (p.exited.is_some() && p.stdout_closed && p.stderr_closed)
                .then(|| (p.code, p.stdout.clone(), p.stderr.clone()))
        });
        match got {
            Some(v) => Ok(v),
            None => fail(format!("{name} to finish within {:?}", self.scaled(timeout)), "still running"),
        }
    }

    fn cli(&mut self, c: &Cli) -> Result<(Vec<u8>, Vec<u8>), StepError> {
        let mut args = Vec::new();
        for a in &c.args {
            args.push(self.subst(a)?);
        }
        let mut env = Vec::new();
        for (k, v) in &c.env {
            env.push((k.clone(), self.subst(v)?));
        }
        env.extend(armed_env(c.arm));
        self.cli_count += 1;
        let name = format!("cli#{}", self.cli_count);
        let cmd = self.homerd(&args, !c.no_settings, &env, c.unprivileged);
        self.spawn(name.clone(), ProcKind::Cli, cmd)?;
        let (code, out, err) = self.wait_cli(&name, c.timeout)?;
        if let Some(arm) = c.arm {
            self.expect_cut(&name, arm)?;
        } else if code != Some(c.code) {
            return fail(
                format!("`homerd {}` to exit {}", args.join(" "), c.code),
                format!("{code:?}; stdout: {} stderr: {}", tail(&out, 5), tail(&err, 5)),
            );
        }
        check_patterns(&name, "stdout", &out, &c.stdout)?;
        check_patterns(&name, "stderr", &err, &c.stderr)?;
        Ok((out, err))
    }

    fn query(&self, sql: &str) -> Result<Vec<Vec<Scalar>>, StepError> {
        self.query_at(&self.db(), sql)
    }

    /// Run a statement on a read-write connection (fixture preparation); returns no rows.
    fn write_sql(&self, db: &Path, sql: &str) -> Result<Vec<Vec<Scalar>>, StepError> {
        let err =
            |e: rusqlite::Error| StepError { expected: format!("the statement `{sql}` to run"), actual: e.to_string() };
        let conn = if db.exists() { harness_rw(db) } else { rusqlite::Connection::open(db) }.map_err(err)?;
        conn.busy_timeout(self.scaled(Duration::from_secs(10))).map_err(err)?;
        conn.execute_batch(sql).map_err(err)?;
        Ok(Vec::new())
    }

    fn query_at(&self, db: &Path, sql: &str) -> Result<Vec<Vec<Scalar>>, StepError> {
        let err =
            |e: rusqlite::Error| StepError { expected: format!("the query `{sql}` to run"), actual: e.to_string() };
        let conn = rusqlite::Connection::open_with_flags(
            db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err)?;
        conn.busy_timeout(self.scaled(Duration::from_secs(10))).map_err(err)?;
        let mut stmt = conn.prepare(sql).map_err(err)?;
        let n = stmt.column_count();
        let rows = stmt
            .query_map([], |row| {
                (0..n)
                    .map(|i| {
                        Ok(match row.get_ref(i)? {
                            rusqlite::types::ValueRef::Null => Scalar::Null,
                            rusqlite::types::ValueRef::Integer(v) => Scalar::Int(v),
                            rusqlite::types::ValueRef::Real(v) => Scalar::Float(v),
                            rusqlite::types::ValueRef::Text(t) => Scalar::Text(String::from_utf8_lossy(t).into_owned()),
                            rusqlite::types::ValueRef::Blob(b) => Scalar::Text(format!("<{} bytes>", b.len())),
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        Ok(rows)
    }

    fn hold_write(&mut self, duration: Duration) -> Result<(), StepError> {
        let db = self.db();
        let hold = self.scaled(duration);
        let (tx, rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let handle = std::thread::spawn(move || {
            let conn = match harness_rw(&db) {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = conn.busy_timeout(Duration::from_secs(30));
            if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
            let _ = tx.send(Ok(()));
            // Holding the write lock for this long is the fault the scenario injects (a
            // power loss or the end of the run cuts it short).
            let _ = stopped.recv_timeout(hold);
            let _ = conn.execute_batch("ROLLBACK");
        });
        self.holds.push(Hold { stop, thread: handle });
        match rx.recv_timeout(self.scaled(Duration::from_secs(30))) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => fail("a write transaction on the database", e),
            Err(_) => fail("a write transaction on the database", "not acquired within 30 s"),
        }
    }

    /// `power_loss = "cut"`: every process of the scenario dies at once (the harness's write
    /// holds end first: they are processes too, in spirit), every exit is observed, then
    /// the current log is applied — every write no fsync covered is undone — and later
    /// processes record into a fresh log.
    fn power_loss(&mut self, p: &PowerLoss) -> Result<(), StepError> {
        self.end_holds();
        self.register_job_groups();
        let survivors = procs::kill_marked(&self.marker, self.scaled(p.timeout));
        if !survivors.is_empty() {
            return fail(
                format!("every process of the scenario dead within {:?} of SIGKILL", self.scaled(p.timeout)),
                format!("still alive: {survivors:?}"),
            );
        }
        // The checkers end a process's lock hold at its observed exit: observe them all
        // before anything new starts.
        let deadline = self.deadline(p.timeout);
        let observed = self.shared.wait_for(deadline, |st| st.procs.iter().all(|p| p.exited.is_some()).then_some(()));
        if observed.is_none() {
            let left: Vec<String> =
                self.shared.lock().procs.iter().filter(|p| p.exited.is_none()).map(|p| p.name.clone()).collect();
            return fail("every killed process's exit observed", format!("not yet: {}", left.join(", ")));
        }
        let log = self.power_log_path();
        let label = log.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let note = if log.exists() {
            let report = crate::powerloss::apply_power_loss(&log).map_err(|e| StepError {
                expected: format!("to apply the power loss of {}", log.display()),
                actual: e,
            })?;
            describe_power_loss(&label, &report)
        } else {
            format!("{label}: nothing was recorded, nothing to revert")
        };
        let last_seq = self.shared.lock().seq;
        self.power_cuts.push(PowerCut { at: self.shared.start.elapsed(), mono_ns: crate::probe::mono_ns(), last_seq });
        self.power_log += 1;
        self.note(note);
        // What the power left must hold every invariant — now, before a later enqueue can
        // take the id of an acknowledged job the power loss dropped (SQLite hands out
        // the highest rowid + 1 again) and hide the loss from `nothing_lost`.
        let opts = CheckOptions {
            allow_statuses: vec![String::from("pending"), String::from("running")],
            none_running: false,
        };
        self.check(&opts, false).map_err(|e| StepError {
            expected: format!("every invariant to hold on what the power loss left: {}", e.expected),
            actual: e.actual,
        })
    }

    fn clock(&mut self, step_ms: i64) -> Result<(), StepError> {
        let path = self.clock_file();
        let now: i64 = std::fs::read_to_string(&path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        let tmp = path.with_extension("tmp");
        let io = |e: std::io::Error| StepError {
            expected: String::from("to write the clock offset file"),
            actual: e.to_string(),
        };
        std::fs::write(&tmp, (now + step_ms).to_string()).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }

    fn effects(&self) -> Result<Vec<crate::history::Effect>, String> {
        match std::fs::read_to_string(self.effects_dir().join("effects.log")) {
            Ok(text) => crate::history::parse_effects(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn history(&self, with_db: bool) -> Result<History, StepError> {
        let effects =
            self.effects().map_err(|e| StepError { expected: String::from("a readable effects log"), actual: e })?;
        let db = if with_db && self.db().exists() { DbState::read(&self.db()).ok() } else { None };
        let st = self.shared.lock();
        let start = self.shared.start;
        let procs = st
            .procs
            .iter()
            .map(|p| ProcRecord {
                name: p.name.clone(),
                pid: p.pid,
                kind: p.kind.clone(),
                started: p.started.saturating_duration_since(start),
                exited: p.exited.map(|t| t.saturating_duration_since(start)),
                exit_code: p.code,
                signal: p.signal,
            })
            .collect();
        // Ids printed by background enqueues are acknowledged too, after the steps' ones.
        let mut acked = self.acked.clone();
        acked.extend(st.procs.iter().flat_map(ProcState::printed_ids));
        Ok(History { procs, events: st.events.clone(), effects, db, acked, power_cuts: self.power_cuts.clone() })
    }

    fn check(&mut self, opts: &CheckOptions, explicit: bool) -> Result<(), StepError> {
        let h = self.history(true)?;
        if explicit && h.db.is_none() {
            return fail(
                "a readable homerd database to check",
                format!("{} unreadable or absent", self.db().display()),
            );
        }
        let violations = check::check_all(&h, opts);
        if violations.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = violations.iter().map(|v| v.to_string()).collect();
        fail("every invariant to hold", list.join("; "))
    }

    fn expect_events(&mut self, e: &ExpectEvents) -> Result<(), StepError> {
        let n = self.shared.lock().events.iter().filter(|ev| event_matches(ev, &e.target, &e.event, &e.fields)).count();
        let max_ok = e.max.is_none_or(|m| n <= m as usize);
        if n < e.min as usize || !max_ok {
            let range = match e.max {
                Some(m) if m == e.min => format!("exactly {m}"),
                Some(m) => format!("{}..={m}", e.min),
                None => format!("at least {}", e.min),
            };
            return fail(
                format!("{range} `{}` event(s){} from {}", e.event, describe_fields(&e.fields), e.target),
                format!("{n}"),
            );
        }
        Ok(())
    }

    fn snapshot(&mut self, s: &Snapshot) -> Result<(), StepError> {
        let mut text = String::new();
        for part in &s.parts {
            match part {
                SnapshotPart::LockFile => {
                    let raw = std::fs::read_to_string(self.lock_path()).map_err(|e| StepError {
                        expected: String::from("a readable lock file"),
                        actual: e.to_string(),
                    })?;
                    text.push_str("## lock file\n");
                    for line in raw.lines() {
                        match line.split_once('=') {
                            Some((k, v)) if matches!(k, "role" | "version" | "format") => {
                                text.push_str(&format!("{k}={v}\n"));
                            }
                            Some((k, _)) => text.push_str(&format!("{k}=[redacted]\n")),
                            None => text.push_str(&format!("{line}\n")),
                        }
                    }
                }
                SnapshotPart::Migrations => {
                    text.push_str("## _migrations (name, checksum)\n");
                    for row in self.query("SELECT name, checksum FROM _migrations ORDER BY name")? {
                        text.push_str(&format!("{}\n", render_row(&row)));
                    }
                }
                SnapshotPart::TableInfo(t) => {
                    text.push_str(&format!("## PRAGMA table_info({t})\n"));
                    for row in self.query(&format!("PRAGMA table_info({t})"))? {
                        text.push_str(&format!("{}\n", render_row(&row)));
                    }
                }
                SnapshotPart::Messages { target, events } => {
                    text.push_str(&format!("## {target}: messages\n"));
                    let st = self.shared.lock();
                    for e in st.events.iter().filter(|e| matches_target(target, &e.proc_name)) {
                        if events.is_empty() || events.iter().any(|n| n == e.name()) {
                            let msg = e.json.get("msg").and_then(|m| m.as_str()).unwrap_or("");
                            text.push_str(&format!("{}: {msg}\n", e.name()));
                        }
                    }
                }
                SnapshotPart::Command(args) => {
                    let cli = Cli {
                        args: args.clone(),
                        code: 0,
                        stdout: Vec::new(),
                        stderr: Vec::new(),
                        unprivileged: false,
                        env: vec![(String::from("HOMER_LOG_FORMAT"), String::from("human"))],
                        no_settings: false,
                        timeout: Duration::from_secs(30),
                        arm: None,
                    };
                    let (out, err) = self.cli(&cli)?;
                    text.push_str(&format!("## homerd {}\n", args.join(" ")));
                    text.push_str(&String::from_utf8_lossy(&out));
                    if !err.is_empty() {
                        text.push_str("## (stderr)\n");
                        text.push_str(&String::from_utf8_lossy(&err));
                    }
                }
                SnapshotPart::Query(q) => {
                    text.push_str(&format!("## {q}\n"));
                    for row in self.query(q)? {
                        text.push_str(&format!("{}\n", render_row(&row)));
                    }
                }
            }
        }
        let text = self.redact(&text);
        crate::snapshot::assert(&self.opts.snapshot_dir, &s.name, &text)
            .map_err(|diff| StepError { expected: format!("snapshot {} unchanged", s.name), actual: diff })
    }

    /// Replace volatile values (paths, pids, times) with stable tokens.
    fn redact(&self, text: &str) -> String {
        let mut out = text.replace(&*self.sandbox.to_string_lossy(), "[SANDBOX]");
        out = out.replace(&*self.daemon_bin.to_string_lossy(), "[HOMERD]");
        let pids: Vec<u32> = self.shared.lock().procs.iter().map(|p| p.pid).collect();
        let re_time = regex::Regex::new(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d+)?Z?").expect("valid regex");
        out = re_time.replace_all(&out, "[TIME]").into_owned();
        let re_dur = regex::Regex::new(r"\b\d+(\.\d+)?\s?(ms|s|µs)\b").expect("valid regex");
        out = re_dur.replace_all(&out, "[DURATION]").into_owned();
        for pid in pids {
            let re = regex::Regex::new(&format!(r"\b{pid}\b")).expect("valid regex");
            out = re.replace_all(&out, "[PID]").into_owned();
        }
        out
    }

    /// On macOS cleanup kills groups: register the job groups homerd recorded.
    fn register_job_groups(&self) {
        if let Ok(rows) = self.query("SELECT DISTINCT child_pgid FROM job_runs WHERE child_pgid IS NOT NULL") {
            for row in rows {
                if let Some(Scalar::Int(g)) = row.first() {
                    procs::register_group(&self.marker, *g as i32);
                }
            }
        }
    }

    fn log_tails(&self) -> Vec<(String, String)> {
        let st = self.shared.lock();
        let mut tails: Vec<(String, String)> = st
            .procs
            .iter()
            .filter(|p| !p.stderr.is_empty() || p.kind == ProcKind::Daemon)
            .map(|p| (format!("{} (pid {}, {})", p.name, p.pid, exit_text(p.code, p.signal)), tail(&p.stderr, 12)))
            .collect();
        // What fault steps reported (e.g. how much `fill` wrote) belongs beside the failure.
        let notes: Vec<&str> = self
            .step_log
            .iter()
            .filter(|l| l.contains(" -> ") && !l.contains(" -> failed:"))
            .map(String::as_str)
            .collect();
        if !notes.is_empty() {
            tails.push((String::from("harness step notes"), notes.join("\n")));
        }
        tails
    }

    /// Add what the current step reported to its line in the step log.
    fn note(&mut self, note: String) {
        if let Some(last) = self.step_log.last_mut() {
            last.push_str(" -> ");
            last.push_str(&note);
        }
    }

    /// Unmount the tmpfs home, if the scenario has one (every process is dead by now).
    /// When the sandbox is kept, the home's files are copied out first so the kept
    /// sandbox looks like any other (`home/homer.db`, ...). Returns what failed.
    fn unmount_home(&mut self, keep: bool) -> Vec<String> {
        if procs::mounts_of(&self.marker).is_empty() {
            return Vec::new();
        }
        let home = self.home();
        let copy = self.sandbox.join(".home-at-teardown");
        let copied = keep && crate::faults::copy_tree(&home, &copy).is_ok();
        let errors = procs::unmount_marked(&self.marker);
        if copied && errors.is_empty() && std::fs::remove_dir(&home).is_ok() {
            let _ = std::fs::rename(&copy, &home);
        }
        errors
    }

    /// Every process's output into `<sandbox>/harness-logs/`, and the step log
    /// (`steps.log`; useful with `--keep`).
    fn write_logs(&self) {
        let dir = self.sandbox.join("harness-logs");
        if std::fs::create_dir_all(&dir).is_err() {
            return;
        }
        let mut steps = self.step_log.join("\n");
        steps.push('\n');
        let _ = std::fs::write(dir.join("steps.log"), steps);
        let st = self.shared.lock();
        for p in &st.procs {
            let _ = std::fs::write(dir.join(format!("{}.stderr", p.name)), &p.stderr);
            let _ = std::fs::write(dir.join(format!("{}.stdout", p.name)), &p.stdout);
        }
    }
}

/// The absolute directory of a scenario file (fixtures are named relative to it).
fn scenario_dir(path: &Path) -> PathBuf {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
}

fn exit_text(code: Option<i32>, signal: Option<i32>) -> String {
    match (code, signal) {
        (Some(c), _) => format!("code {c}"),
        (None, Some(s)) => format!("signal {s}"),
        (None, None) => String::from("running"),
    }
}

fn tail(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

fn render_row(row: &[Scalar]) -> String {
    row.iter()
        .map(|v| match v {
            Scalar::Null => String::from("NULL"),
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Text(t) => t.clone(),
            Scalar::Bool(b) => b.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

fn check_patterns(name: &str, stream: &str, bytes: &[u8], patterns: &[Pattern]) -> Result<(), StepError> {
    let text = String::from_utf8_lossy(bytes);
    for p in patterns {
        let found = if p.regex {
            match regex::Regex::new(&p.text) {
                Ok(re) => re.is_match(&text),
                Err(e) => return fail(format!("a valid regex `{}`", p.text), e.to_string()),
            }
        } else {
            text.contains(&p.text)
        };
        if found == p.negated {
            let want = if p.negated { "not to contain" } else { "to contain" };
            return fail(format!("{name} {stream} {want} {:?}", p.text), tail(bytes, 8));
        }
    }
    Ok(())
}

fn step_summary(step: &Step) -> String {
    match step {
        Step::Start(s) => format!("start {}", s.name),
        Step::Wait(w) => match &w.until {
            WaitFor::Event { target, event, .. } => format!("wait for {event} from {target}"),
            WaitFor::Exited { target } => format!("wait for {target} to exit"),
            WaitFor::Sql { query, .. } => format!("wait for `{query}`"),
            WaitFor::Effects { .. } => String::from("wait for effects"),
            WaitFor::Elapsed { duration } => format!("let {duration:?} pass"),
        },
        Step::Exit(x) => format!("exit of {}", x.target),
        Step::Signal { target, signal, .. } => format!("signal {signal:?} to {target}"),
        Step::File(f) => match &f.op {
            // Modes read as octal, as they were written.
            FileOp::Chmod { mode } => format!("file chmod {mode:04o} on {}", f.path),
            FileOp::Mode { mode } => format!("file mode {mode:04o} on {}", f.path),
            op => format!("file {op:?} on {}", f.path).chars().take(120).collect(),
        },
        Step::Enqueue(e) => format!("enqueue {}", e.kind),
        Step::Cli(c) => format!("homerd {}", c.args.join(" ")),
        Step::Sql(q) => format!("sql `{}`", q.query),
        Step::HoldWrite { duration } => format!("hold a write transaction for {duration:?}"),
        Step::Clock { step_ms } => format!("step the clock by {step_ms} ms"),
        Step::Check(_) => String::from("check invariants"),
        Step::ExpectEvents(e) => format!("expect {} events", e.event),
        Step::Snapshot(s) => format!("snapshot {}", s.name),
        Step::PowerLoss(_) => String::from("power loss"),
    }
}

/// What a power loss reverted, on one line (the step log has one line per step).
fn describe_power_loss(label: &str, r: &crate::powerloss::PowerLossReport) -> String {
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let bytes: u64 = r.files.iter().map(|f| f.bytes_reverted).sum();
    let kept: usize = r.files.iter().map(|f| f.ops_kept).sum();
    let mut parts = vec![format!(
        "{label}: reverted {} op(s), {bytes} byte(s) in {} file(s) ({kept} synced op(s) kept)",
        r.ops_reverted(),
        r.files.len()
    )];
    for f in &r.files {
        parts.push(format!(
            "{}: {} op(s), {} byte(s), size {} -> {}",
            name(&f.path),
            f.ops_reverted,
            f.bytes_reverted,
            f.size_was,
            f.size_now
        ));
    }
    for (path, n) in &r.skipped {
        parts.push(format!("{}: gone, {n} un-synced op(s) skipped", name(path)));
    }
    for c in &r.cuts {
        parts.push(format!("pid {} cut power before its op {} (phase {})", c.pid, c.op, c.phase));
    }
    parts.push(format!("{} record(s), {} torn", r.records, r.torn));
    parts.join("; ")
}

/// `HOMERD_POWERLOSS_LOG` and `HOMERD_POWERLOSS_CUT` (`daemon/src/powerloss.rs`).
const POWERLOSS_LOG_ENV: &str = "HOMERD_POWERLOSS_LOG";
const POWERLOSS_CUT_ENV: &str = "HOMERD_POWERLOSS_CUT";

/// The environment that arms a process to cut power before its N-th recorded op.
fn armed_env(arm: Option<u64>) -> Vec<(String, String)> {
    arm.map(|n| (String::from(POWERLOSS_CUT_ENV), n.to_string())).into_iter().collect()
}
