//! The processes the bench starts: `homerd` daemons, whose JSON events are read on a
//! thread and stamped with the monotonic clock as they arrive; one-shot `homerd` commands;
//! and the bench's own baseline children. Spawning, reading, waiting and reaping (with
//! the child's peak RSS, so a signal never reaches a recycled pid) are `homer-testkit`'s;
//! what is the bench's is which lines matter and how long it waits.

use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use homer_testkit::{Events, Parse};
pub use homer_testkit::{Exit, Injector, Line as Ev, Proc};

/// Routine events of a throughput run, left out of the lines an error message shows.
fn worth_showing(line: &Ev) -> bool {
    !matches!(line.name.as_str(), "job.claimed" | "job.completed" | "job.started")
}

/// Removes every variable that could point a `homerd` at a user's real home or config, or
/// arm a test hook.
/// A `homerd` command line for `home`, with JSON events and `--set` overrides.
pub fn homerd(homerd: &Path, home: &Path, sets: &[String]) -> Command {
    let mut cmd = Command::new(homerd);
    homer_testkit::scrub_homer_env(&mut cmd, &[]);
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
    events: Events,
}

impl Daemon {
    pub fn start(homerd_bin: &Path, home: &Path, sets: &[String]) -> Result<Daemon, String> {
        let mut cmd = homerd(homerd_bin, home, sets);
        cmd.arg("run");
        let spawned_at = Instant::now();
        let (proc, events) =
            Proc::spawn_with_events(&mut cmd, Parse::Name).map_err(|e| format!("cannot start homerd run: {e}"))?;
        Ok(Daemon { proc, spawned_at, events: events.tail_filter(worth_showing) })
    }

    /// A sender into this daemon's event stream (for the bench's own markers).
    pub fn sender(&self) -> Injector {
        self.events.injector()
    }

    /// The next event matching `pred`, or an error once `deadline` passes or the daemon's
    /// stderr closes.
    pub fn wait_for(&mut self, deadline: Instant, what: &str, mut pred: impl FnMut(&Ev) -> bool) -> Result<Ev, String> {
        let pid = self.proc.pid();
        let ev = self
            .events
            .wait_for(what, deadline, |ev| pred(ev) || ev.name == "daemon.error")
            .map_err(|e| format!("homerd (pid {pid}): {e}"))?;
        if ev.name == "daemon.error" && !pred(&ev) {
            return Err(format!("homerd (pid {pid}) failed while waiting for {what}: {}", ev.text()));
        }
        Ok(ev)
    }

    /// Waits for `n` events named `name` (from now on); the last one.
    pub fn wait_count(&mut self, deadline: Instant, name: &str, n: usize) -> Result<Ev, String> {
        let mut seen = 0;
        let what = format!("{n} × {name}");
        self.wait_for(deadline, &what, |ev| {
            if ev.name == name {
                seen += 1;
            }
            seen == n
        })
    }

    /// A graceful stop: SIGTERM (twice after `grace`, which cuts the drain short); reaped.
    pub fn stop(&mut self, grace: Duration) -> Result<Exit, String> {
        self.proc.signal(libc::SIGTERM);
        if let Some(e) = self.proc.wait_exit(grace) {
            return Ok(e);
        }
        self.proc.signal(libc::SIGTERM);
        self.proc
            .wait_exit(Duration::from_secs(60))
            .ok_or_else(|| format!("homerd (pid {}) did not stop", self.proc.pid()))
    }
}

/// Starts a child whose stdout the caller reads (a baseline process of this binary).
pub fn spawn_piped(cmd: &mut Command, what: &str) -> Result<(Proc, std::process::ChildStdout), String> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    let (proc, pipes) = Proc::spawn(cmd).map_err(|e| format!("cannot start {what}: {e}"))?;
    Ok((proc, pipes.stdout.expect("stdout is piped")))
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
    let exit = proc.wait_exit(limit).ok_or_else(|| format!("{what} did not finish in {limit:?}"))?;
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
    fn proc_status_values_are_read_in_kib() {
        let status = "Name:\thomerd\nVmHWM:\t   10240 kB\nVmRSS:\t    8192 kB\n";
        assert_eq!(proc_status_kib(status, "VmRSS:"), Some(8192));
        assert_eq!(proc_status_kib(status, "VmHWM:"), Some(10240));
        assert_eq!(proc_status_kib(status, "VmSwap:"), None);
    }
}
