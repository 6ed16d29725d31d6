//! The processes the bench starts: `homerd` daemons, whose JSON events are read on a
//! thread and stamped with the monotonic clock as they arrive; one-shot `homerd` commands;
//! and the bench's own baseline children.
//!
//! Every long-lived child is watched by a thread that waits for its exit without reaping
//! it (`waitid(WNOWAIT)`), so its pid stays ours until we reap it with `wait4`, which also
//! gives the child's peak RSS: a signal never reaches a recycled pid.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Event lines kept for error messages.
const TAIL: usize = 40;

/// One line a daemon wrote on stderr, stamped when the bench read it. `name` is the
/// `event` field (empty for a line that is not an event).
#[derive(Clone, Debug)]
pub struct Ev {
    pub at: Instant,
    pub name: String,
    pub line: String,
}

impl Ev {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.line).unwrap_or(Value::Null)
    }

    pub fn field_i64(&self, key: &str) -> Option<i64> {
        self.json().get(key).and_then(Value::as_i64)
    }
}

/// The event name of a JSON line, found without parsing the whole line (the throughput
/// run reads a few hundred thousand of them while the daemon shares the CPU).
fn event_name(line: &str) -> Option<&str> {
    const KEY: &str = "\"event\":\"";
    let start = line.find(KEY)? + KEY.len();
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

/// How a child ended, and its peak resident set.
#[derive(Clone, Copy, Debug)]
pub struct Exit {
    /// The raw wait status.
    pub status: i32,
    pub max_rss_bytes: u64,
}

impl Exit {
    pub fn describe(&self) -> String {
        let s = self.status;
        if libc::WIFEXITED(s) {
            format!("exit {}", libc::WEXITSTATUS(s))
        } else if libc::WIFSIGNALED(s) {
            format!("signal {}", libc::WTERMSIG(s))
        } else {
            format!("wait status {s}")
        }
    }

    pub fn success(&self) -> bool {
        libc::WIFEXITED(self.status) && libc::WEXITSTATUS(self.status) == 0
    }
}

/// A child process we reap ourselves.
pub struct Proc {
    pub pid: i32,
    exited: Receiver<()>,
    exit: Option<Exit>,
}

impl Proc {
    /// Spawns `cmd` and starts watching for its exit. The caller takes the pipes it asked
    /// for from the returned std child before it is dropped (dropping it neither kills nor
    /// waits).
    fn spawn(cmd: &mut Command, what: &str) -> Result<(Proc, std::process::Child), String> {
        let child = cmd.spawn().map_err(|e| format!("cannot start {what}: {e}"))?;
        let pid = child.id() as i32;
        let (tx, exited) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("wait-{pid}"))
            .spawn(move || {
                // SAFETY: an all-zero siginfo_t is a valid value for waitid to fill in.
                let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
                loop {
                    // SAFETY: `info` is a valid, writable siginfo_t; WNOWAIT leaves the
                    // child waitable, so its pid stays reserved until `reap`.
                    let rc = unsafe {
                        libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOWAIT)
                    };
                    if rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                        break;
                    }
                }
                let _ = tx.send(());
            })
            .map_err(|e| format!("cannot start a waiter thread: {e}"))?;
        Ok((Proc { pid, exited, exit: None }, child))
    }

    /// Sends `sig` unless the child has been reaped (a zombie still owns its pid).
    pub fn signal(&self, sig: i32) {
        if self.exit.is_none() {
            // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
            unsafe { libc::kill(self.pid, sig) };
        }
    }

    /// Sends `sig` to the child's process group (for a child started as its own group's
    /// leader) unless the child has been reaped.
    pub fn signal_group(&self, sig: i32) {
        if self.exit.is_none() && self.pid > 1 {
            // SAFETY: as in `signal`; while the leader is unreaped its pid names its group.
            unsafe { libc::kill(-self.pid, sig) };
        }
    }

    /// Waits up to `limit` for the child to exit; reaps it.
    pub fn wait(&mut self, limit: Duration) -> Option<Exit> {
        if let Some(e) = self.exit {
            return Some(e);
        }
        match self.exited.recv_timeout(limit) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => self.reap_now(),
            Err(RecvTimeoutError::Timeout) => None,
        }
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) -> Exit {
        self.signal(libc::SIGKILL);
        self.wait(Duration::from_secs(60)).unwrap_or(Exit { status: -1, max_rss_bytes: 0 })
    }

    fn reap_now(&mut self) -> Option<Exit> {
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        loop {
            // SAFETY: `status` and `usage` are valid and writable; the pid is our child.
            let rc = unsafe { libc::wait4(self.pid, &mut status, 0, &mut usage) };
            if rc == self.pid {
                break;
            }
            if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                return None;
            }
        }
        // ru_maxrss: KiB on Linux, bytes on macOS.
        let unit = if cfg!(target_os = "macos") { 1 } else { 1024 };
        let exit = Exit { status, max_rss_bytes: usage.ru_maxrss as u64 * unit };
        self.exit = Some(exit);
        Some(exit)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exit.is_none() {
            self.kill();
        }
    }
}

/// Removes every variable that could point a `homerd` at a user's real home or config, or
/// arm a test hook.
fn scrub_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("HOMER_") || k.starts_with("HOMERD_") {
            cmd.env_remove(k);
        }
    }
}

/// A `homerd` command line for `home`, with JSON events and `--set` overrides.
pub fn homerd(homerd: &Path, home: &Path, sets: &[String]) -> Command {
    let mut cmd = Command::new(homerd);
    scrub_env(&mut cmd);
    cmd.arg("--home").arg(home).args(["--log-format", "json"]);
    for s in sets {
        cmd.arg("--set").arg(s);
    }
    cmd
}

/// Runs a one-shot command to completion; its stdout, or an error naming it with stderr.
pub fn output(cmd: &mut Command) -> Result<String, String> {
    let what = format!("{:?}", cmd);
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| format!("{what}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A running `homerd run` and its events.
pub struct Daemon {
    pub proc: Proc,
    pub spawned_at: Instant,
    events: Receiver<Ev>,
    inject: Sender<Ev>,
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl Daemon {
    pub fn start(homerd_bin: &Path, home: &Path, sets: &[String]) -> Result<Daemon, String> {
        let mut cmd = homerd(homerd_bin, home, sets);
        cmd.arg("run").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let spawned_at = Instant::now();
        let (proc, mut child) = Proc::spawn(&mut cmd, "homerd run")?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, events) = mpsc::channel();
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL)));
        let (reader_tx, reader_tail) = (tx.clone(), tail.clone());
        std::thread::Builder::new()
            .name(format!("events-{}", proc.pid))
            .spawn(move || read_events(stderr, reader_tx, reader_tail))
            .map_err(|e| format!("cannot start an event reader: {e}"))?;
        Ok(Daemon { proc, spawned_at, events, inject: tx, tail })
    }

    /// A sender into this daemon's event stream (for the bench's own markers).
    pub fn sender(&self) -> Sender<Ev> {
        self.inject.clone()
    }

    /// The next event matching `pred`, or an error once `deadline` passes or the daemon's
    /// stderr closes.
    pub fn wait_for(&self, deadline: Instant, what: &str, mut pred: impl FnMut(&Ev) -> bool) -> Result<Ev, String> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(ev) if pred(&ev) => return Ok(ev),
                Ok(ev) if ev.name == "daemon.error" => {
                    return Err(format!("homerd (pid {}) failed while waiting for {what}: {}", self.proc.pid, ev.line))
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "timed out waiting for {what} from homerd (pid {}){}",
                        self.proc.pid,
                        self.tail()
                    ))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!(
                        "homerd (pid {}) exited while waiting for {what}{}",
                        self.proc.pid,
                        self.tail()
                    ))
                }
            }
        }
    }

    /// Waits for `n` events named `name` (from now on); the last one.
    pub fn wait_count(&self, deadline: Instant, name: &str, n: usize) -> Result<Ev, String> {
        let mut seen = 0;
        let what = format!("{n} × {name}");
        self.wait_for(deadline, &what, |ev| {
            if ev.name == name {
                seen += 1;
            }
            seen == n
        })
    }

    fn tail(&self) -> String {
        let t = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        if t.is_empty() {
            return String::new();
        }
        let lines: Vec<&str> = t.iter().map(String::as_str).collect();
        format!("; its last lines:\n  {}", lines.join("\n  "))
    }

    /// A graceful stop: SIGTERM (twice after `grace`, which cuts the drain short); reaped.
    pub fn stop(&mut self, grace: Duration) -> Result<Exit, String> {
        self.proc.signal(libc::SIGTERM);
        if let Some(e) = self.proc.wait(grace) {
            return Ok(e);
        }
        self.proc.signal(libc::SIGTERM);
        self.proc.wait(Duration::from_secs(60)).ok_or_else(|| format!("homerd (pid {}) did not stop", self.proc.pid))
    }
}

fn read_events(stderr: impl Read, tx: Sender<Ev>, tail: Arc<Mutex<VecDeque<String>>>) {
    let mut reader = BufReader::with_capacity(1 << 16, stderr);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let at = Instant::now();
        let text = line.trim_end();
        let name = event_name(text).unwrap_or_default().to_owned();
        if name != "job.claimed" && name != "job.completed" && name != "job.started" {
            let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
            if t.len() == TAIL {
                t.pop_front();
            }
            t.push_back(text.to_owned());
        }
        if tx.send(Ev { at, name, line: text.to_owned() }).is_err() {
            return;
        }
    }
}

/// Starts a child whose stdout the caller reads (a baseline process of this binary).
pub fn spawn_piped(cmd: &mut Command, what: &str) -> Result<(Proc, std::process::ChildStdout), String> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    let (proc, mut child) = Proc::spawn(cmd, what)?;
    let stdout = child.stdout.take().expect("stdout is piped");
    Ok((proc, stdout))
}

/// Runs this binary's internal subcommand `args` to completion; its stdout and its exit
/// (with peak RSS).
pub fn run_self(args: &[&OsStr], limit: Duration) -> Result<(String, Exit), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the bench binary: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.args(args);
    let what = format!("homer-bench {}", args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" "));
    let (mut proc, mut stdout) = spawn_piped(&mut cmd, &what)?;
    let mut out = String::new();
    stdout.read_to_string(&mut out).map_err(|e| format!("{what}: {e}"))?;
    let exit = proc.wait(limit).ok_or_else(|| format!("{what} did not finish in {limit:?}"))?;
    if !exit.success() {
        return Err(format!("{what} failed ({})", exit.describe()));
    }
    Ok((out, exit))
}

/// Current resident set of `pid`, in bytes (Linux: /proc; macOS: ps).
pub fn rss_bytes(pid: i32) -> Option<u64> {
    if cfg!(target_os = "linux") {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        return proc_status_kib(&status, "VmRSS:").map(|k| k * 1024);
    }
    let out = Command::new("ps").args(["-o", "rss=", "-p", &pid.to_string()]).output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse::<u64>().ok().map(|k| k * 1024)
}

fn proc_status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].trim().trim_end_matches("kB").trim().parse().ok()
}

/// A fresh directory under `work` (removed first if it exists).
pub fn fresh_dir(work: &Path, name: &str) -> Result<PathBuf, String> {
    let dir = work.join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("cannot remove {}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// Copies a checkpointed database (no `-wal` beside it) to `dest`.
pub fn copy_db(src: &Path, dest: &Path) -> Result<(), String> {
    let mut wal = src.as_os_str().to_owned();
    wal.push("-wal");
    if Path::new(&wal).exists() {
        return Err(format!("{} has a -wal file: it was not closed cleanly", src.display()));
    }
    std::fs::copy(src, dest).map(drop).map_err(|e| format!("copy {} to {}: {e}", src.display(), dest.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names_are_found_without_parsing() {
        let line = r#"{"event":"job.claimed","job_id":7,"level":"info","msg":"Job claimed atomically"}"#;
        assert_eq!(event_name(line), Some("job.claimed"));
        assert_eq!(event_name("thread 'main' panicked"), None);
    }

    #[test]
    fn proc_status_values_are_read_in_kib() {
        let status = "Name:\thomerd\nVmHWM:\t   10240 kB\nVmRSS:\t    8192 kB\n";
        assert_eq!(proc_status_kib(status, "VmRSS:"), Some(8192));
        assert_eq!(proc_status_kib(status, "VmHWM:"), Some(10240));
        assert_eq!(proc_status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn a_child_is_reaped_with_its_status() {
        let (mut p, _) = Proc::spawn(Command::new("sh").args(["-c", "exit 3"]), "sh").unwrap();
        let e = p.wait(Duration::from_secs(30)).unwrap();
        assert_eq!(e.describe(), "exit 3");
        assert_eq!(p.wait(Duration::ZERO).unwrap().describe(), "exit 3", "reaped once, remembered");
    }
}
