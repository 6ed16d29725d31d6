//! The group guardian: `homerd group-guardian` (a hidden subcommand), a small process
//! the daemon starts beside itself that kills its jobs' process groups when the daemon
//! dies.
//!
//! Why: on PostgreSQL another host takes over a dead daemon's jobs once the server has
//! not heard from it for its stale threshold, and cannot kill processes here. The job's
//! leader dies with the daemon (the shim's parent-death signal on Linux), but a job's
//! other processes — a shell's children, a build's compilers — would live on and overlap
//! the re-run. The guardian closes that gap without trusting the daemon to be alive:
//!
//! - the daemon writes `+PGID` on the guardian's stdin before a job's group is released
//!   and `-PGID` once the group is gone ([`watch`], and the [`Watched`] guard's drop);
//! - the guardian keeps the set, and at EOF on stdin — the daemon exited, cleanly or
//!   not, `kill -9` included: the kernel closes the pipe's write end — sends SIGTERM to
//!   every group still in it, SIGKILL after the grace, waits (bounded) until they are
//!   gone, and exits.
//!
//! It runs in its own session and process group, so a Ctrl-C at the daemon's terminal or
//! a signal to the daemon's group does not take it first. A host that
//! dies takes everything with it, the guardian included, which is the same outcome. A
//! daemon that is *paused* keeps the pipe open: its children can outlive their lease
//! (README, Guarantees).
//!
//! If the guardian itself dies, the next write fails (EPIPE: Rust ignores SIGPIPE) and the
//! daemon starts a new one and tells it every group it watches.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::platform;

/// The hidden subcommand name.
pub const SUBCOMMAND: &str = "group-guardian";

struct Running {
    child: Child,
    stdin: std::process::ChildStdin,
}

struct State {
    /// Kill grace the guardian is started with.
    grace: Duration,
    running: Option<Running>,
    /// Watched groups, each with how many [`Watched`] guards hold it: a run's guard drops
    /// only after its group is reaped and its output drained, and by then the pgid may
    /// already be another job's group, watched by that job's own guard. The guardian hears
    /// `+` at the first holder and `-` after the last.
    watched: BTreeMap<u32, usize>,
}

/// `None` until [`start`]: then every [`watch`] goes to the guardian.
static GUARDIAN: Mutex<Option<State>> = Mutex::new(None);

fn lock() -> std::sync::MutexGuard<'static, Option<State>> {
    GUARDIAN.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts the guardian (once per daemon). Until this is called, [`watch`] does nothing.
pub fn start(grace: Duration) -> std::io::Result<()> {
    if crate::mutant::active(crate::mutant::PG_NO_GUARDIAN) {
        return Ok(());
    }
    let mut slot = lock();
    let mut state = State { grace, running: None, watched: BTreeMap::new() };
    state.running = Some(spawn(grace)?);
    *slot = Some(state);
    Ok(())
}

fn spawn(grace: Duration) -> std::io::Result<Running> {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(platform::shim_program());
    cmd.arg0("homerd")
        .arg(SUBCOMMAND)
        .arg("--parent")
        .arg(std::process::id().to_string())
        .arg("--grace-ms")
        .arg(grace.as_millis().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
    let mut child = crate::children::fenced_spawn(&mut cmd)?;
    let stdin = child.stdin.take().expect("piped stdin");
    Ok(Running { child, stdin })
}

fn send(state: &mut State, line: &str) {
    let ok = state.running.as_mut().is_some_and(|r| r.stdin.write_all(line.as_bytes()).is_ok());
    if ok {
        return;
    }
    // The guardian is gone: reap it, start another and tell it everything watched now.
    if let Some(mut old) = state.running.take() {
        let _ = old.child.kill();
        let _ = old.child.wait();
    }
    match spawn(state.grace) {
        Ok(mut r) => {
            let all: String = state.watched.keys().map(|g| format!("+{g}\n")).collect();
            if r.stdin.write_all(all.as_bytes()).is_ok() {
                crate::events::warn("guardian.restarted", "The group guardian was gone; started a new one")
                    .field("watched", state.watched.len())
                    .emit();
                state.running = Some(r);
            }
        }
        Err(e) => crate::events::error("guardian.failed", "Cannot start the group guardian")
            .field("error", e.to_string())
            .emit(),
    }
}

/// Watches `pgid` until the returned guard drops: call before the group may run. An
/// error means a guardian should run but none does (it died and a new one could not be
/// started): the group must not be released, since nothing would stop it if the daemon
/// died (fail closed; the caller gives the attempt back).
pub fn watch(pgid: u32) -> Result<Watched, String> {
    let mut slot = lock();
    let Some(state) = slot.as_mut() else { return Ok(Watched(pgid)) };
    let holders = state.watched.entry(pgid).or_insert(0);
    *holders += 1;
    if *holders == 1 {
        send(state, &format!("+{pgid}\n"));
    }
    if state.running.is_none() {
        unwatch(state, pgid);
        return Err(String::from("the group guardian is gone and a new one could not be started"));
    }
    Ok(Watched(pgid))
}

/// One holder of `pgid` lets go; after the last, the guardian hears `-PGID`.
fn unwatch(state: &mut State, pgid: u32) {
    let Some(holders) = state.watched.get_mut(&pgid) else { return };
    *holders -= 1;
    if *holders == 0 {
        state.watched.remove(&pgid);
        send(state, &format!("-{pgid}\n"));
    }
}

/// A watched group; dropping it (once the group is gone) tells the guardian.
pub struct Watched(u32);

impl Drop for Watched {
    fn drop(&mut self) {
        if let Some(state) = lock().as_mut() {
            unwatch(state, self.0);
        }
    }
}

/// Stops the guardian at a clean exit (every group is gone by then): closes its stdin
/// and reaps it.
pub fn stop() {
    if let Some(mut state) = lock().take() {
        if let Some(Running { mut child, stdin }) = state.running.take() {
            drop(stdin);
            let _ = child.wait();
        }
    }
}

/// The guardian process: reads `+PGID`/`-PGID` lines until EOF, then kills what is left.
/// `parent` is the daemon's pid (for its message).
pub fn guardian_main(parent: u32, grace: Duration) -> i32 {
    // Its own session and group: a Ctrl-C at the daemon's terminal, or a signal to the
    // daemon's process group, does not reach it.
    let _ = rustix::process::setsid();
    let mut groups: BTreeSet<u32> = BTreeSet::new();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let (op, rest) = line.split_at(line.len().min(1));
        match (op, rest.parse::<u32>()) {
            ("+", Ok(g)) if g > 1 => {
                groups.insert(g);
            }
            ("-", Ok(g)) => {
                groups.remove(&g);
            }
            _ => {}
        }
    }
    // EOF: the daemon is gone. Stop what it left running.
    let live: Vec<u32> = groups.into_iter().filter(|g| platform::group_has_live_member(*g).unwrap_or(true)).collect();
    if live.is_empty() {
        return 0;
    }
    for g in &live {
        let _ = platform::signal_group(*g, rustix::process::Signal::TERM);
    }
    // Said after the signals, and never with `eprintln!`: stderr is the daemon's, which
    // may be a hung-up terminal or a pipe nobody reads any more (the daemon died with
    // its ssh session), and `eprintln!` panics on a failed write.
    let _ = writeln!(
        std::io::stderr(),
        "homerd group-guardian: the daemon (PID {parent}) exited with {} job process group(s) alive; stopping them: {live:?}",
        live.len()
    );
    let deadline = Instant::now() + grace;
    // A group that cannot be listed counts as alive, here as above: it gets the SIGKILL.
    let gone = |g: &u32| !platform::group_has_live_member(*g).unwrap_or(true);
    while Instant::now() < deadline && !live.iter().all(gone) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for g in live.iter().filter(|g| !gone(g)) {
        let _ = platform::signal_group(*g, rustix::process::Signal::KILL);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !live.iter().all(gone) {
        std::thread::sleep(Duration::from_millis(20));
    }
    0
}
