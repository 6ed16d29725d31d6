//! Test support for homerd's process-level tests: one sandbox per test, real `homerd`
//! processes, readiness from JSON events (never sleeps), every process group killed and
//! reaped on drop — the process layer itself is `homer-testkit`'s.
//!
//! Deadlines scale with `HOMER_TEST_TIME_SCALE` (default 1, through
//! `homer_testkit::deadline`): a loaded machine gets more time without editing tests.
//! Deadlines only bound genuine failures.
#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect the database directly
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub use homer_testkit::deadline;
use homer_testkit::{Events, Line, Parse, Proc, WaitError};
use serde_json::Value;

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_homerd"))
}

/// Fast intervals so tests see many heartbeats and staleness within a second or two.
pub const FAST: &[&str] = &[
    "--set",
    "heartbeat_interval=100ms",
    "--set",
    "stale_threshold=1s",
    "--set",
    "kill_grace=100ms",
    "--set",
    "lock_check_interval=100ms",
];

pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox { dir: tempfile::Builder::new().prefix("homerd-test-").tempdir().unwrap() }
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }
    pub fn lock(&self) -> PathBuf {
        self.home().join("homer.lock")
    }
    pub fn db(&self) -> PathBuf {
        self.home().join("homer.db")
    }
    pub fn log(&self) -> PathBuf {
        self.home().join("logs/homer.log")
    }

    /// A `homerd` command with this sandbox's home and JSON events, and none of the
    /// caller's HOMER_* / HOMERD_* settings.
    pub fn cmd(&self) -> Command {
        self.cmd_with(&bin())
    }

    /// [`Sandbox::cmd`] running `program` (a copy of the homerd binary) instead.
    pub fn cmd_with(&self, program: &Path) -> Command {
        // HOMERD_MUTANT passes through: the mutation runs point the suite at a broken
        // daemon (README "Teeth").
        let mut c = homer_testkit::homerd_command(
            program,
            self.dir.path(),
            &self.home(),
            &["HOMER_TEST_TIME_SCALE", "HOMERD_MUTANT"],
        );
        c.stdin(Stdio::null());
        c
    }

    /// Runs `homerd ARGS` to completion (bounded).
    pub fn run(&self, args: &[&str]) -> Output {
        let mut c = self.cmd();
        c.args(args);
        run_bounded(c, deadline(30.0))
    }

    pub fn start(&self, args: &[&str]) -> Daemon {
        let mut c = self.cmd();
        c.arg("run").args(args);
        Daemon::spawn(c)
    }

    /// [`Sandbox::cmd`] run as uid/gid 65534 through `setpriv`, for the permission cases
    /// when the tests run as root. `None` (reported on stderr, not silently passed) when
    /// setpriv is not installed.
    pub fn cmd_as_65534(&self) -> Option<Command> {
        let Some(setpriv) = ["/usr/bin/setpriv", "/bin/setpriv"].into_iter().find(|p| Path::new(p).exists()) else {
            eprintln!(
                "NOT RUN: running as root and setpriv is unavailable, so the permission case cannot be exercised"
            );
            return None;
        };
        let inner = self.cmd();
        let mut c = Command::new(setpriv);
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]).arg(inner.get_program());
        for (k, v) in inner.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c.stdin(Stdio::null());
        Some(c)
    }

    /// For a test of what uid 65534 cannot do once root set things up: a sandbox that uid
    /// 65534 may search (0755) and a [`Sandbox::cmd_as_65534`] command. `None` (said on
    /// stderr, with `why` the test needs root) when not root or setpriv is missing.
    pub fn for_65534(why: &str) -> Option<(Sandbox, Command)> {
        use std::os::unix::fs::PermissionsExt;
        if !rustix::process::geteuid().is_root() {
            eprintln!("NOT RUN: needs root {why}");
            return None;
        }
        let sb = Sandbox::new();
        let c = sb.cmd_as_65534()?;
        std::fs::set_permissions(sb.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        Some((sb, c))
    }

    /// Creates the home with a database stopped after its first `n` migrations.
    pub fn db_migrated_to(&self, n: usize) {
        std::fs::create_dir_all(self.home()).unwrap();
        homerd::sqlite::schema::create_partial(&self.db(), n, &homerd::clock::Clock::default()).unwrap();
    }

    /// Creates the home with a copy of the checked-in pre-004 database
    /// (`tests/fixtures/pre004.db`, written by the original daemon).
    pub fn db_from_pre004_fixture(&self) {
        std::fs::create_dir_all(self.home()).unwrap();
        std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pre004.db"), self.db()).unwrap();
    }

    /// Runs `homerd migrate` and checks it applied `n` migrations.
    pub fn migrate_applies(&self, n: usize) {
        let out = self.run(&["migrate"]);
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        assert!(out.stdout.contains(&format!("applied {n} migration(s)")), "{}", out.stdout);
    }

    pub fn start_with(&self, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut c = self.cmd();
        c.arg("run").args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        Daemon::spawn(c)
    }
}

#[derive(Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Output {
    /// Asserts a `doctor` report: exit `code`, and each of `lines` in it (e.g.
    /// `FAIL migrations`).
    #[track_caller]
    pub fn assert_doctor(&self, code: i32, lines: &[&str]) {
        assert_eq!(self.code, Some(code), "doctor should exit {code}: {}", self.stdout);
        for line in lines {
            assert!(self.stdout.contains(line), "expected {line:?}: {}", self.stdout);
        }
    }

    pub fn events(&self) -> Vec<Value> {
        self.stderr.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }
    pub fn event(&self, name: &str) -> Option<Value> {
        self.events().into_iter().find(|e| e["event"] == name)
    }
}

/// Runs a command with stdout/stderr captured; kills its group past `limit`.
pub fn run_bounded(mut c: Command, limit: Duration) -> Output {
    let done = homer_testkit::run(&mut c, limit).unwrap_or_else(|e| panic!("{e}"));
    Output {
        code: done.exit.code(),
        stdout: String::from_utf8_lossy(&done.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&done.stderr).into_owned(),
        elapsed: done.elapsed,
    }
}

/// A running `homerd run`, its events read from stderr as they come (a line that is not
/// JSON is kept as `{"event": "raw", "line": ...}`). Dropping it kills its process group.
pub struct Daemon {
    pub proc: Proc,
    events: Events,
    pub seen: Vec<Value>,
}

fn event_value(line: &Line) -> Value {
    line.json.clone().unwrap_or_else(|| serde_json::json!({"event": "raw", "line": line.text()}))
}

impl Daemon {
    pub fn spawn(c: Command) -> Daemon {
        Daemon::try_spawn(c).expect("spawn homerd")
    }

    /// [`Daemon::spawn`], returning a failed `spawn` (e.g. `ETXTBSY` for a just-written
    /// binary) instead of panicking.
    pub fn try_spawn(mut c: Command) -> std::io::Result<Daemon> {
        let (proc, events) = Proc::spawn_with_events(&mut c, Parse::Json)?;
        Ok(Daemon { proc, events, seen: Vec::new() })
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid() as u32
    }

    /// Waits for the first *new* event matching `pred`, recording every event on the way.
    fn wait_new(&mut self, what: &str, limit: Duration, mut pred: impl FnMut(&Value) -> bool) -> Value {
        let seen = &mut self.seen;
        let mut hit = None;
        let got = self.events.wait_for(what, Instant::now() + limit, |line| {
            let v = event_value(line);
            let found = pred(&v);
            if found {
                hit = Some(v.clone());
            }
            seen.push(v);
            found
        });
        match got {
            Ok(_) => hit.expect("recorded"),
            Err(e) => self.fail(&e),
        }
    }

    /// Every event seen, not only the tail the error carries.
    fn fail(&self, e: &WaitError) -> ! {
        let why = if e.closed { "exited before" } else { "sent no" };
        panic!("homerd (pid {}) {why} {} within {:?}; events so far:\n{}", self.pid(), e.what, e.waited, self.dump())
    }

    /// Waits for the first event (seen or new) matching `pred`.
    pub fn wait_for(&mut self, what: &str, limit: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return v.clone();
        }
        self.wait_new(what, limit, pred)
    }

    /// Waits for the next *new* event matching `pred` (ignores those already seen).
    pub fn next(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_new(what, deadline(20.0), pred)
    }

    pub fn wait_event(&mut self, name: &str) -> Value {
        self.wait_for(name, deadline(20.0), |v| v["event"] == name)
    }

    /// Waits for the `n`-th occurrence of event `name` (counting those already seen).
    pub fn wait_count(&mut self, name: &str, n: usize) {
        let mut count = self.seen.iter().filter(|v| v["event"] == name).count();
        if count < n {
            self.wait_new(&format!("{n} {name} events"), deadline(30.0), |v| {
                count += usize::from(v["event"] == name);
                count >= n
            });
        }
    }

    /// Drains stderr until EOF and reaps the process (bounded).
    pub fn wait_exit(&mut self) -> ExitStatus {
        if let Some(exit) = self.proc.exit() {
            return exit.status();
        }
        let seen = &mut self.seen;
        let end = self.events.wait_for("the end of its output", Instant::now() + deadline(30.0), |line| {
            seen.push(event_value(line));
            false
        });
        match end {
            Err(e) if e.closed => {}
            Err(e) => self.fail(&e),
            Ok(_) => unreachable!("nothing matches"),
        }
        // stderr closed: the process has exited (it has no children that keep it open).
        match self.proc.wait_exit(deadline(30.0)) {
            Some(exit) => exit.status(),
            None => panic!("homerd (pid {}) closed stderr but did not exit:\n{}", self.pid(), self.dump()),
        }
    }

    /// Waits until the process is stopped (SIGSTOP, or a `stop` failpoint): a failpoint
    /// emits `failpoint.hit` *before* stopping itself, so a SIGCONT sent on the event
    /// alone could arrive first and be lost.
    pub fn wait_stopped(&self) {
        if let Err(e) = self.proc.wait_stopped(deadline(20.0)) {
            panic!("homerd: {e}:\n{}", self.dump());
        }
    }

    /// Continues a process stopped at a failpoint (after making sure it is stopped).
    pub fn resume(&self) {
        self.wait_stopped();
        self.signal(libc::SIGCONT);
    }

    pub fn signal(&self, sig: i32) {
        assert!(self.proc.signal(sig), "kill({sig}) of homerd (pid {})", self.pid());
    }

    /// SIGTERM, then the exit, which must be 0 (a clean shutdown).
    pub fn stop_cleanly(&mut self) {
        self.signal(libc::SIGTERM);
        assert_eq!(self.wait_exit().code(), Some(0), "{}", self.dump());
    }

    pub fn has_event(&self, name: &str) -> bool {
        self.seen.iter().any(|v| v["event"] == name)
    }

    pub fn dump(&self) -> String {
        self.seen.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("\n")
    }
}

/// A daemon started with [`FAST`] timings and `extra`, once it is active.
pub fn active(sb: &Sandbox, extra: &[&str]) -> Daemon {
    let mut args: Vec<&str> = FAST.to_vec();
    args.extend_from_slice(extra);
    let mut d = sb.start(&args);
    d.wait_event("daemon.active");
    d
}

/// A fresh sandbox and a daemon active in it ([`active`] with no extra arguments).
pub fn active_sandbox() -> (Sandbox, Daemon) {
    let sb = Sandbox::new();
    let d = active(&sb, &[]);
    (sb, d)
}

/// A fresh sandbox and a daemon active in it on the engine timings ([`active_engine`]
/// with no extra arguments).
pub fn engine_sandbox() -> (Sandbox, Daemon) {
    let sb = Sandbox::new();
    let d = active_engine(&sb, &[]);
    (sb, d)
}

/// Engine timings for tests: everything fast (`FAST`, short backoff and shutdown
/// grace), then `extra`.
pub fn engine_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v: Vec<&str> = FAST.to_vec();
    v.extend_from_slice(&["--set", "backoff_base=50ms", "--set", "backoff_cap=1s", "--set", "shutdown_grace=300ms"]);
    v.extend_from_slice(extra);
    v
}

/// A daemon started with [`engine_args`]`(extra)`, once it is active.
pub fn active_engine(sb: &Sandbox, extra: &[&str]) -> Daemon {
    let mut d = sb.start(&engine_args(extra));
    d.wait_event("daemon.active");
    d
}

/// `homerd enqueue ARGS`: the new (or, for a known `--key`, existing) job's id.
pub fn enqueue(sb: &Sandbox, args: &[&str]) -> i64 {
    let mut all = vec!["enqueue"];
    all.extend_from_slice(args);
    let out = sb.run(&all);
    assert_eq!(out.code, Some(0), "enqueue {args:?}: {}", out.stderr);
    out.stdout.trim().parse().unwrap_or_else(|_| panic!("enqueue printed {:?}", out.stdout))
}

/// [`enqueue`]s a job, then waits for `d` to report its `event` (e.g. `job.completed`):
/// the job's id.
pub fn enqueue_until(sb: &Sandbox, d: &mut Daemon, event: &str, args: &[&str]) -> i64 {
    let id = enqueue(sb, args);
    wait_job_event(d, event, id);
    id
}

/// Waits for the event `name` of job `id` (seen or new).
pub fn wait_job_event(d: &mut Daemon, name: &str, id: i64) -> Value {
    d.wait_for(&format!("{name} for job {id}"), deadline(30.0), |v| v["event"] == name && v["job_id"] == id)
}

/// Present and not a zombie: the process really runs.
pub fn running(pid: i64) -> bool {
    homer_testkit::alive(pid as i32)
}

/// Bytes of a file (panics with the path if unreadable).
pub fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// Names in a directory, sorted (to show nothing was created beside a refused file).
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Opens the sandbox database with rusqlite (test-side inspection and fixtures).
pub fn sql(db: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(db).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c
}

/// `cmd` on a pseudo-terminal (rexpect); each expectation is bounded by a scaled deadline.
pub fn spawn_on_pty(mut cmd: Command) -> rexpect::session::PtySession {
    // rexpect forks and runs the command's `exec`, pre-exec hooks included: Ctrl-C must
    // reach the program even when this test run inherited SIGINT ignored.
    homer_testkit::default_interrupts(&mut cmd);
    let timeout_ms = deadline(20.0).as_millis() as u64;
    rexpect::session::spawn_command(cmd, Some(timeout_ms)).expect("spawn on a pty")
}

/// Reads a pty session to its end and checks the process exited 0.
pub fn expect_exit_0(mut session: rexpect::session::PtySession) {
    session.exp_eof().expect("exited");
    let status = session.process.wait().expect("wait");
    assert_eq!(format!("{status:?}").split(", ").last(), Some("0)"), "exit status: {status:?}");
}

/// Every row `query` (with `params`) returns, mapped by `row` (panics on an error).
pub fn query_rows<T>(
    c: &rusqlite::Connection,
    query: &str,
    params: impl rusqlite::Params,
    row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Vec<T> {
    let mut stmt = c.prepare(query).unwrap_or_else(|e| panic!("prepare {query}: {e}"));
    let rows = stmt.query_map(params, row).unwrap_or_else(|e| panic!("{query}: {e}"));
    rows.map(|r| r.unwrap_or_else(|e| panic!("{query}: {e}"))).collect()
}

/// A command's stdout as JSON lines: each one value, printed compact (`what` names the
/// command in a failure).
pub fn compact_json_lines(stdout: &str, what: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {l}"));
            assert_eq!(v.to_string(), l, "{what}: not one compact value per line");
            v
        })
        .collect()
}

/// `homerd status --json` parsed.
pub fn status_json(sb: &Sandbox) -> Value {
    let out = sb.run(&["status", "--json"]);
    assert_eq!(out.code, Some(0), "status failed: {}", out.stderr);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("status --json: {e}: {}", out.stdout))
}
