//! A child the caller reaps itself: started as the leader of its own process group,
//! watched by a thread that learns of its exit without reaping it, reaped (with its peak
//! RSS) by [`Proc::wait_exit`], its group killed and the child reaped on drop.

use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::lines::{Events, Parse, Stream};

/// Makes `cmd`'s process start with SIGINT and SIGQUIT at their default actions, whatever
/// this process inherited: a shell without job control starts a background command
/// (`cargo test ... &` in a script) with both ignored, an exec keeps them ignored, and a
/// test that ends a `status --watch` or a `logs -f` with Ctrl-C's SIGINT would wait for
/// nothing. (std then spawns by fork and exec instead of `posix_spawn`.)
pub fn default_interrupts(cmd: &mut Command) -> &mut Command {
    // SAFETY: runs in the forked child before its exec and calls only `signal`, which is
    // async-signal-safe, with constant arguments; it touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            for sig in [libc::SIGINT, libc::SIGQUIT] {
                if libc::signal(sig, libc::SIG_DFL) == libc::SIG_ERR {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        })
    }
}

/// How long a drop waits for a SIGKILLed child to be reaped.
const KILL_BOUND: Duration = Duration::from_secs(60);

/// How a child ended, its peak resident set and the CPU it used.
#[derive(Clone, Copy, Debug)]
pub struct Exit {
    /// The raw wait status.
    pub status: i32,
    pub max_rss_bytes: u64,
    /// User + system CPU time of the child and of every descendant it reaped (wait4's
    /// rusage): a daemon's whole process tree, when it reaps its jobs.
    pub cpu: Duration,
}

impl Exit {
    /// The exit code, when the child exited (not killed by a signal).
    pub fn code(&self) -> Option<i32> {
        libc::WIFEXITED(self.status).then(|| libc::WEXITSTATUS(self.status))
    }

    /// The signal that killed the child, if one did.
    pub fn signal(&self) -> Option<i32> {
        libc::WIFSIGNALED(self.status).then(|| libc::WTERMSIG(self.status))
    }

    pub fn success(&self) -> bool {
        self.code() == Some(0)
    }

    /// As std reports it (for callers that match on `ExitStatus`).
    pub fn status(&self) -> ExitStatus {
        ExitStatus::from_raw(self.status)
    }

    pub fn describe(&self) -> String {
        match (self.code(), self.signal()) {
            (Some(c), _) => format!("exit {c}"),
            (None, Some(s)) => format!("signal {s}"),
            (None, None) => format!("wait status {}", self.status),
        }
    }
}

/// The pipes a spawned child was given (those the command asked for).
pub struct Pipes {
    pub stdout: Option<ChildStdout>,
    pub stderr: Option<ChildStderr>,
}

/// A running (or exited, not yet reaped) child, leader of its own process group.
pub struct Proc {
    pid: i32,
    exited: Receiver<()>,
    exit: Option<Exit>,
    /// The child could not be reaped (someone else did): its pid may name another
    /// process now, so it is never signalled again.
    lost: bool,
    /// `waitpid(WUNTRACED)` reports a stop once; remembered until SIGCONT is sent.
    stopped: std::cell::Cell<bool>,
}

impl Proc {
    /// Spawns `cmd` as the leader of a new process group and starts watching for its exit.
    /// The stdio the command set is kept; its pipes are returned for the caller's readers.
    /// The child starts with the interrupt and quit signals at their defaults
    /// ([`default_interrupts`]).
    pub fn spawn(cmd: &mut Command) -> io::Result<(Proc, Pipes)> {
        let mut child = default_interrupts(cmd).process_group(0).spawn()?;
        let pid = child.id() as i32;
        let pipes = Pipes { stdout: child.stdout.take(), stderr: child.stderr.take() };
        // Dropping the std handle neither kills nor waits: the child is ours to reap.
        drop(child);
        let (tx, exited) = mpsc::channel();
        let watcher = std::thread::Builder::new().name(format!("exit-{pid}")).spawn(move || {
            use rustix::process::{waitid, WaitId, WaitIdOptions};
            // WNOWAIT leaves the child waitable, so its pid stays reserved until `reap`.
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                while let Err(rustix::io::Errno::INTR) =
                    waitid(WaitId::Pid(pid), WaitIdOptions::EXITED | WaitIdOptions::NOWAIT)
                {}
            }
            let _ = tx.send(());
        });
        let proc = Proc { pid, exited, exit: None, lost: false, stopped: std::cell::Cell::new(false) };
        // Without a watcher `proc` drops here: its group is killed and the child reaped.
        watcher?;
        Ok((proc, pipes))
    }

    /// Spawns `cmd` with stdin closed, stdout discarded and stderr read as events.
    pub fn spawn_with_events(cmd: &mut Command, parse: Parse) -> io::Result<(Proc, Events)> {
        let (proc, pipes) = Proc::spawn(cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()))?;
        let events = Events::read(pipes, parse)?;
        Ok((proc, events))
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The exit, once reaped.
    pub fn exit(&self) -> Option<Exit> {
        self.exit
    }

    /// Sends `sig` unless the child has been reaped (a zombie still owns its pid). False
    /// when it was not sent.
    pub fn signal(&self, sig: i32) -> bool {
        // The pid is our unreaped child.
        self.send(sig, rustix::process::kill_process)
    }

    /// Sends `sig` to the child's whole process group unless the child has been reaped
    /// (while the leader is unreaped its pid names its group).
    pub fn signal_group(&self, sig: i32) -> bool {
        // As in `signal`, for the group the child leads.
        self.pid > 1 && self.send(sig, rustix::process::kill_process_group)
    }

    /// `kill(pid, sig)` unless the child has been reaped or lost; a SIGCONT first marks it
    /// no longer stopped.
    fn send(
        &self,
        sig: i32,
        kill: fn(rustix::process::Pid, rustix::process::Signal) -> rustix::io::Result<()>,
    ) -> bool {
        if self.exit.is_some() || self.lost {
            return false;
        }
        if sig == libc::SIGCONT {
            self.stopped.set(false);
        }
        match (rustix::process::Pid::from_raw(self.pid), rustix::process::Signal::from_named_raw(sig)) {
            (Some(pid), Some(sig)) => kill(pid, sig).is_ok(),
            _ => false,
        }
    }

    /// Waits up to `limit` for the child to exit; reaps it. `None`: still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<Exit> {
        if self.exit.is_some() || self.lost {
            return self.exit;
        }
        match self.exited.recv_timeout(limit) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => self.reap(),
            Err(RecvTimeoutError::Timeout) => None,
        }
    }

    /// The exit if the child has exited (reaped now), else `None`; never blocks.
    pub fn try_wait(&mut self) -> Option<Exit> {
        self.wait_exit(Duration::ZERO)
    }

    /// SIGKILL to the whole group, then reap the child (bounded).
    pub fn kill(&mut self) -> Option<Exit> {
        self.signal_group(libc::SIGKILL);
        self.wait_exit(KILL_BOUND)
    }

    fn reap(&mut self) -> Option<Exit> {
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        loop {
            // SAFETY: `status` and `usage` are valid and writable; the pid is our child.
            let rc = unsafe { libc::wait4(self.pid, &mut status, 0, &mut usage) };
            if rc == self.pid {
                break;
            }
            if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                self.lost = true;
                return None;
            }
        }
        // ru_maxrss: KiB on Linux, bytes on macOS.
        let unit = if cfg!(target_os = "macos") { 1 } else { 1024 };
        let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
        let exit =
            Exit { status, max_rss_bytes: usage.ru_maxrss as u64 * unit, cpu: tv(usage.ru_utime) + tv(usage.ru_stime) };
        self.exit = Some(exit);
        Some(exit)
    }

    /// Waits until the child is stopped (SIGSTOP, or a failpoint that stops itself after
    /// announcing it: a SIGCONT sent on the announcement alone could come first and be
    /// lost). An error if it exits or does not stop within `limit`.
    pub fn wait_stopped(&self, limit: Duration) -> Result<(), String> {
        if self.stopped.get() {
            return Ok(());
        }
        let end = Instant::now() + limit;
        loop {
            use rustix::process::{waitpid, Pid, WaitOptions};
            let Some(pid) = Pid::from_raw(self.pid) else { return Err(format!("pid {} is not a pid", self.pid)) };
            // Our own child; WNOHANG|WUNTRACED only reports, never blocks, and a stop report
            // does not reap it.
            match waitpid(Some(pid), WaitOptions::NOHANG | WaitOptions::UNTRACED) {
                Ok(Some((_, status))) if status.stopped() => {
                    self.stopped.set(true);
                    return Ok(());
                }
                Ok(None) => {}
                other => {
                    return Err(format!("pid {} exited or vanished before it stopped ({other:?})", self.pid));
                }
            }
            if Instant::now() >= end {
                return Err(format!("pid {} did not stop within {limit:?}", self.pid));
            }
            #[allow(clippy::disallowed_methods)]
            // a polling period: the kernel tells no waiter of a stop we can block on
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exit.is_none() && !self.lost {
            self.kill();
        }
    }
}

/// A one-shot command's result: its exit and everything it printed.
#[derive(Debug)]
pub struct Finished {
    /// The child's pid (reaped: only for a caller that tracks the pids it started).
    pub pid: i32,
    pub exit: Exit,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub elapsed: Duration,
}

/// Runs `cmd` (stdin closed, stdout and stderr captured) to completion within `limit`;
/// past it the group is killed and the error names the command.
pub fn run(cmd: &mut Command, limit: Duration) -> Result<Finished, String> {
    run_spawned(cmd, limit, Proc::spawn)
}

/// [`run`], with the child started by `spawn` (which must make it a [`Proc`], e.g.
/// through [`Proc::spawn`]): for a caller that registers every child it starts, as the
/// harness does.
pub fn run_spawned(
    cmd: &mut Command,
    limit: Duration,
    spawn: impl FnOnce(&mut Command) -> io::Result<(Proc, Pipes)>,
) -> Result<Finished, String> {
    let started = Instant::now();
    let end = started + limit;
    let (mut proc, pipes) = spawn(cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()))
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let mut events = Events::read(pipes, Parse::None).map_err(|e| format!("cannot read {cmd:?}: {e}"))?;
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let lines = events.drain(end).map_err(|e| format!("{cmd:?} did not finish within {limit:?}: {e}"))?;
    for line in lines {
        match line.stream {
            Stream::Stdout => stdout.extend_from_slice(&line.bytes),
            Stream::Stderr => stderr.extend_from_slice(&line.bytes),
        }
    }
    let exit = proc
        .wait_exit(end.saturating_duration_since(Instant::now()))
        .ok_or_else(|| format!("{cmd:?} did not exit within {limit:?}"))?;
    Ok(Finished { pid: proc.pid(), exit, stdout, stderr, elapsed: started.elapsed() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_is_reaped_with_its_status() {
        let (mut p, _) = Proc::spawn(Command::new("sh").args(["-c", "exit 3"])).unwrap();
        let e = p.wait_exit(Duration::from_secs(30)).unwrap();
        assert_eq!(e.describe(), "exit 3");
        assert_eq!(e.code(), Some(3));
        assert_eq!(p.try_wait().unwrap().describe(), "exit 3", "reaped once, remembered");
        assert!(!p.signal(libc::SIGTERM), "a reaped child is never signalled");
    }

    #[test]
    fn the_child_leads_its_own_group_and_drop_kills_the_group() {
        // A member of the group that outlives the leader's exec: `sleep` in the background.
        let (p, pipes) =
            Proc::spawn(Command::new("sh").args(["-c", "sleep 600 & echo $!; exec sleep 600"]).stdout(Stdio::piped()))
                .unwrap();
        let mut events = Events::read(pipes, Parse::None).unwrap();
        let line = events.wait_for("the background pid", Instant::now() + crate::deadline(30.0), |_| true).unwrap();
        let member: i32 = line.text().parse().unwrap();
        let pgid = p.pid();
        if cfg!(target_os = "linux") {
            assert_eq!(crate::stat(member).unwrap().pgrp as i32, pgid);
        }
        assert!(crate::group_alive(pgid));
        drop(p);
        // The leader is reaped; the member, SIGKILLed with it, may linger as a zombie of
        // PID 1 for a while, and zombies are dead.
        let end = Instant::now() + crate::deadline(30.0);
        while crate::group_alive(pgid) {
            assert!(Instant::now() < end, "group {pgid} outlived the drop");
            #[allow(clippy::disallowed_methods)]
            // a polling period: the death of a process that is not our child sends us nothing
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!crate::alive(member));
    }

    #[test]
    fn a_bounded_run_captures_both_streams_or_names_the_command() {
        let done =
            run(Command::new("sh").args(["-c", "echo out; echo err >&2; printf tail"]), crate::deadline(30.0)).unwrap();
        assert!(done.exit.success());
        assert_eq!(done.stdout, b"out\ntail");
        assert_eq!(done.stderr, b"err\n");
        let err = run(Command::new("sleep").arg("600"), Duration::from_millis(200)).unwrap_err();
        assert!(err.contains("sleep") && err.contains("200ms"), "{err}");
    }

    #[test]
    fn a_stop_is_seen_and_a_continue_clears_it() {
        let (mut p, _) = Proc::spawn(Command::new("sleep").arg("600")).unwrap();
        assert!(p.signal(libc::SIGSTOP));
        p.wait_stopped(crate::deadline(30.0)).unwrap();
        assert!(p.signal(libc::SIGCONT));
        assert!(p.signal(libc::SIGKILL));
        assert_eq!(p.wait_exit(crate::deadline(30.0)).unwrap().signal(), Some(libc::SIGKILL));
    }
}
