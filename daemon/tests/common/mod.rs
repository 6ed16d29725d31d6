//! Test support for homerd's process-level tests: one sandbox per test, real `homerd`
//! processes, readiness from JSON events (never sleeps), every process killed and
//! reaped on drop.
//!
//! Deadlines scale with `HOMER_TEST_TIME_SCALE` (default 1): a loaded machine gets
//! more time without editing tests. Deadlines only bound genuine failures.
#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect the database directly
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_homerd"))
}

/// A deadline of `secs` seconds times `HOMER_TEST_TIME_SCALE`.
pub fn deadline(secs: f64) -> Duration {
    let scale: f64 = std::env::var("HOMER_TEST_TIME_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0);
    Duration::from_secs_f64(secs * scale.max(0.1))
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
        let mut c = Command::new(program);
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            // HOMERD_MUTANT passes through: the mutation runs point the suite at a broken
            // daemon (README "Teeth").
            if (k.starts_with("HOMER_") || k.starts_with("HOMERD_"))
                && k != "HOMER_TEST_TIME_SCALE"
                && k != "HOMERD_MUTANT"
            {
                c.env_remove(k);
            }
        }
        c.env("HOMER_HOME", self.home())
            .env("HOME", self.dir.path())
            .env("XDG_CONFIG_HOME", self.dir.path().join(".config"))
            .env("XDG_DATA_HOME", self.dir.path().join(".local/share"))
            .env("HOMER_LOG_FORMAT", "json")
            .env("NO_COLOR", "1")
            .env("HOMERD_ALLOW_CRASH_JOBS", "1")
            .stdin(Stdio::null());
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
    pub fn events(&self) -> Vec<Value> {
        self.stderr.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }
    pub fn event(&self, name: &str) -> Option<Value> {
        self.events().into_iter().find(|e| e["event"] == name)
    }
}

/// Runs a command with stdout/stderr captured; kills it past `limit`.
pub fn run_bounded(mut c: Command, limit: Duration) -> Output {
    let started = Instant::now();
    let child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => {
            let out = out.expect("wait");
            Output {
                code: out.status.code(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                elapsed: started.elapsed(),
            }
        }
        Err(_) => {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("command did not finish within {limit:?}: {c:?}");
        }
    }
}

/// A running `homerd run`, its events read from stderr as they come.
pub struct Daemon {
    pub child: Child,
    rx: Receiver<Value>,
    pub seen: Vec<Value>,
    exited: Option<ExitStatus>,
    /// `waitpid(WUNTRACED)` reports a stop once; remember it until we send SIGCONT.
    stopped: std::cell::Cell<bool>,
}

impl Daemon {
    pub fn spawn(c: Command) -> Daemon {
        Daemon::try_spawn(c).expect("spawn homerd")
    }

    /// [`Daemon::spawn`], returning a failed `spawn` (e.g. `ETXTBSY` for a just-written
    /// binary) instead of panicking.
    pub fn try_spawn(mut c: Command) -> std::io::Result<Daemon> {
        let mut child = c.stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let v =
                    serde_json::from_str(&line).unwrap_or_else(|_| serde_json::json!({"event": "raw", "line": line}));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Ok(Daemon { child, rx, seen: Vec::new(), exited: None, stopped: std::cell::Cell::new(false) })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the first event (seen or new) matching `pred`.
    pub fn wait_for(&mut self, what: &str, limit: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return v.clone();
        }
        let end = Instant::now() + limit;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!("no {what} within {limit:?}; events so far:\n{}", self.dump()),
                Err(RecvTimeoutError::Disconnected) => panic!("homerd exited before {what}; events:\n{}", self.dump()),
            }
        }
    }

    /// Waits for the next *new* event matching `pred` (ignores those already seen).
    pub fn next(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let limit = deadline(20.0);
        let end = Instant::now() + limit;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Err(_) => panic!("no {what} within {limit:?} (or homerd exited); events:\n{}", self.dump()),
            }
        }
    }

    pub fn wait_event(&mut self, name: &str) -> Value {
        self.wait_for(name, deadline(20.0), |v| v["event"] == name)
    }

    /// Waits for the `n`-th occurrence of event `name` (counting those already seen).
    pub fn wait_count(&mut self, name: &str, n: usize) {
        let limit = deadline(30.0);
        let end = Instant::now() + limit;
        while self.seen.iter().filter(|v| v["event"] == name).count() < n {
            let left = end.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(v) => self.seen.push(v),
                Err(_) => panic!("fewer than {n} {name} events within {limit:?}:\n{}", self.dump()),
            }
        }
    }

    /// Drains stderr until EOF and reaps the process (bounded).
    pub fn wait_exit(&mut self) -> ExitStatus {
        if let Some(s) = self.exited {
            return s;
        }
        let limit = deadline(30.0);
        let end = Instant::now() + limit;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(v) => self.seen.push(v),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!("homerd did not exit within {limit:?}:\n{}", self.dump()),
            }
        }
        // stderr closed: the process has exited (it has no children that keep it open).
        let status = self.child.wait().expect("wait");
        self.exited = Some(status);
        status
    }

    /// Waits until the process is stopped (SIGSTOP, or a `stop` failpoint): a failpoint
    /// emits `failpoint.hit` *before* stopping itself, so a SIGCONT sent on the event
    /// alone could arrive first and be lost.
    pub fn wait_stopped(&self) {
        if self.stopped.get() {
            return;
        }
        let limit = deadline(20.0);
        let end = Instant::now() + limit;
        loop {
            let mut status = 0;
            // SAFETY: our own child; WNOHANG|WUNTRACED only reports, never blocks, and a
            // stop report does not reap it.
            let rc = unsafe { libc::waitpid(self.pid() as i32, &mut status, libc::WNOHANG | libc::WUNTRACED) };
            if rc == self.pid() as i32 && libc::WIFSTOPPED(status) {
                self.stopped.set(true);
                return;
            }
            assert!(rc == 0, "homerd exited or vanished while we waited for it to stop (rc {rc}, status {status:#x})");
            assert!(Instant::now() < end, "homerd did not stop within {limit:?}:\n{}", self.dump());
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Continues a process stopped at a failpoint (after making sure it is stopped).
    pub fn resume(&self) {
        self.wait_stopped();
        self.signal(libc::SIGCONT);
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own, not yet reaped, child.
        assert_eq!(unsafe { libc::kill(self.pid() as i32, sig) }, 0, "kill({sig})");
        if sig == libc::SIGCONT {
            self.stopped.set(false);
        }
    }

    pub fn has_event(&self, name: &str) -> bool {
        self.seen.iter().any(|v| v["event"] == name)
    }

    pub fn dump(&self) -> String {
        self.seen.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
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

/// Waits for the event `name` of job `id` (seen or new).
pub fn wait_job_event(d: &mut Daemon, name: &str, id: i64) -> Value {
    d.wait_for(&format!("{name} for job {id}"), deadline(30.0), |v| v["event"] == name && v["job_id"] == id)
}

/// `/proc/<pid>/stat` fields after the command name: (state, ppid, pgrp).
pub fn proc_stat(pid: i64) -> Option<(String, i64, i64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = s[s.rfind(')')? + 1..].split_whitespace().collect();
    Some((f[0].to_owned(), f[1].parse().ok()?, f[2].parse().ok()?))
}

/// Present and not a zombie: the process really runs.
pub fn running(pid: i64) -> bool {
    proc_stat(pid).is_some_and(|(state, ..)| state != "Z" && state != "X")
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

/// `homerd status --json` parsed.
pub fn status_json(sb: &Sandbox) -> Value {
    let out = sb.run(&["status", "--json"]);
    assert_eq!(out.code, Some(0), "status failed: {}", out.stderr);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("status --json: {e}: {}", out.stdout))
}
