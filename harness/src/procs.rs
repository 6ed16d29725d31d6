//! Every process the harness starts, and the guarantee that none outlives its scenario.
//!
//! Each scenario has a *marker*: the value of [`MARKER_VAR`] in the environment of every
//! process it starts. Daemons pass their environment to job children (homerd filters only
//! `HOMERD_*`), and children to grandchildren, so the marker follows the whole tree — also
//! the parts that escape their process group with `setsid`.
//!
//! - **Linux.** The harness is a child subreaper (`PR_SET_CHILD_SUBREAPER`): orphans of a
//!   killed daemon are re-parented to it instead of PID 1, and a reaper thread collects the
//!   zombies it does not own (it never calls `waitpid(-1)`, which would steal the exit
//!   status of a child another thread waits on). Cleanup scans `/proc/*/environ` for the
//!   marker and SIGKILLs until nothing marked is alive; zombies count as gone.
//! - **macOS.** No subreaper and no readable environ: the harness tracks process groups —
//!   every process it spawns leads its own group, and the executor registers the job groups
//!   homerd records in `job_runs` — and kills those groups. A job that escapes its group with
//!   `setsid` is outside what this can reach (documented in scenarios/README.md).
//!
//! Signals: [`init`] blocks SIGINT, SIGTERM and SIGHUP in the calling thread before any other
//! thread exists (so every thread inherits the mask) and waits for them on a dedicated
//! thread, which kills every live scenario's processes, unmounts its tmpfs homes and exits.
//! Spawned processes get the default mask back in `pre_exec`.
//!
//! Mounts: a scenario with `home_size` mounts a tmpfs (see `faults.rs`) and registers it
//! here under its marker, so an interrupt unmounts it too — after the scenario's processes
//! are dead, since a live one could keep it busy. Last, an interrupt removes the sandboxes
//! registered here: every run's but those that keep theirs (`--keep`, `--keep-failed`).

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::{Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use homer_testkit::{Pipes, Proc};

/// The environment variable that tags a scenario's processes.
pub const MARKER_VAR: &str = "HOMER_HARNESS_RUN";

#[derive(Default)]
struct Registry {
    /// Marker -> process groups known to belong to it (used on every platform; the only
    /// mechanism on macOS).
    groups: HashMap<String, HashSet<i32>>,
    /// Pids owned by a [`Proc`]: the reaper must never collect these.
    owned: HashSet<u32>,
    /// Marker -> tmpfs mounts to unmount once its processes are dead.
    mounts: HashMap<String, Vec<std::path::PathBuf>>,
    /// Marker -> the sandbox an interrupt removes (a run that keeps its sandbox has none).
    sandboxes: HashMap<String, std::path::PathBuf>,
}

fn registry() -> &'static Mutex<Registry> {
    static R: OnceLock<Mutex<Registry>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(Registry::default()))
}

/// Held for reading while a process is spawned and registered, for writing while the reaper
/// collects zombies, so the reaper never takes a child between `spawn` and registration.
fn spawn_gate() -> &'static RwLock<()> {
    static G: RwLock<()> = RwLock::new(());
    &G
}

/// What [`init`] set up, for the run's header line.
#[derive(Clone, Debug)]
pub struct InitReport {
    pub subreaper: bool,
}

/// Call first in `main`, before any thread is spawned.
pub fn init() -> InitReport {
    let set = block_termination_signals();
    std::thread::Builder::new()
        .name(String::from("harness-signals"))
        .spawn(move || signal_thread(set))
        .expect("spawn the signal thread");
    let subreaper = become_subreaper();
    if subreaper {
        std::thread::Builder::new().name(String::from("harness-reaper")).spawn(reaper_thread).expect("spawn reaper");
    }
    InitReport { subreaper }
}

const TERMINATION: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread (threads spawned later inherit the
/// mask) and returns that set, for the one thread that `sigwait`s on it.
fn block_termination_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a local sigset_t; pthread_sigmask
    // changes only this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in TERMINATION {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn signal_thread(set: libc::sigset_t) {
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: the set is initialised and blocked in every thread, so sigwait receives it.
        let rc = unsafe { libc::sigwait(&set, &mut sig) };
        if rc != 0 {
            continue;
        }
        eprintln!("homer-harness: interrupted (signal {sig}); killing every process the harness started");
        type Paths = Vec<(String, std::path::PathBuf)>;
        let (markers, mounts, sandboxes): (Vec<String>, Paths, Paths) = registry()
            .lock()
            .map(|r| {
                (
                    r.groups.keys().cloned().collect(),
                    r.mounts.iter().flat_map(|(m, dirs)| dirs.iter().map(|d| (m.clone(), d.clone()))).collect(),
                    r.sandboxes.iter().map(|(m, d)| (m.clone(), d.clone())).collect(),
                )
            })
            .unwrap_or_default();
        let mut unclean: HashSet<String> = HashSet::new();
        for m in &markers {
            if !kill_marked(m, Duration::from_secs(10)).is_empty() {
                unclean.insert(m.clone());
            }
        }
        for (m, dir) in &mounts {
            if let Err(e) = crate::faults::unmount(dir) {
                eprintln!("homer-harness: {e}");
                unclean.insert(m.clone());
            }
        }
        // A run with nothing of it alive and its home back in place loses its sandbox
        // (`remove_dir_all` follows no link); one with a survivor or a mount left keeps it,
        // for a look at what is still there. (A run past its own cleanup is no longer in
        // `groups`: its survivors were reported by the run itself.)
        for (m, dir) in &sandboxes {
            if unclean.contains(m) {
                eprintln!("homer-harness: sandbox left in place (a process or mount of it remains): {}", dir.display());
                continue;
            }
            match std::fs::remove_dir_all(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => eprintln!("homer-harness: cannot remove the sandbox {}: {e}", dir.display()),
            }
        }
        std::process::exit(128 + sig);
    }
}

#[cfg(target_os = "linux")]
fn become_subreaper() -> bool {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).is_ok()
}

#[cfg(not(target_os = "linux"))]
fn become_subreaper() -> bool {
    // macOS has no subreaper; cleanup tracks process groups instead (module docs).
    false
}

/// Collect zombies re-parented to us that no [`Proc`] owns.
fn reaper_thread() {
    let me = std::process::id();
    loop {
        #[allow(clippy::disallowed_methods)] // a polling period: orphans re-parented to us send no event
        std::thread::sleep(Duration::from_millis(200));
        let zombies: Vec<u32> = children_of(me).into_iter().filter(|&(_, zombie)| zombie).map(|(p, _)| p).collect();
        if zombies.is_empty() {
            continue;
        }
        let _gate = spawn_gate().write();
        let owned = registry().lock().map(|r| r.owned.clone()).unwrap_or_default();
        for pid in zombies {
            if !owned.contains(&pid) {
                // One specific pid that no Proc owns.
                if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                    let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG);
                }
            }
        }
    }
}

/// (pid, zombie) of every process whose parent is `parent`.
fn children_of(parent: u32) -> Vec<(u32, bool)> {
    homer_testkit::all_stats()
        .into_iter()
        .filter(|(_, stat)| stat.ppid == parent)
        .map(|(pid, stat)| (pid as u32, stat.zombie))
        .collect()
}

/// The umask every process starts with: a typical login umask, so what a scenario sees of
/// file modes (a file created 0644 where 0600 was due) does not depend on the umask the
/// harness itself happened to be started with.
pub const UMASK: libc::mode_t = 0o022;

/// Prepare a command for spawning under `marker`: tagged environment, the default signal
/// mask, umask [`UMASK`] ([`spawn`] makes it the leader of its own process group).
pub fn prepare(cmd: &mut Command, marker: &str) {
    cmd.env(MARKER_VAR, marker);
    // SAFETY: the closure only calls pthread_sigmask and umask, which are async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            libc::umask(UMASK);
            Ok(())
        });
    }
}

/// Start the command with `RLIMIT_NOFILE` at (`soft`, `hard`). Lowering works for anyone;
/// raising the hard limit needs root, and a failure fails the spawn.
pub fn limit_open_files(cmd: &mut Command, soft: u64, hard: u64) {
    let limit = rustix::process::Rlimit { current: Some(soft), maximum: Some(hard) };
    // SAFETY: the closure calls only setrlimit, an async-signal-safe syscall, on a copy of
    // a plain struct; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || Ok(rustix::process::setrlimit(rustix::process::Resource::Nofile, limit)?));
    }
}

/// Make the command run as the unprivileged uid/gid 65534 (only when we are root).
pub fn drop_privileges(cmd: &mut Command) -> Result<(), String> {
    if !rustix::process::geteuid().is_root() {
        return Ok(()); // already unprivileged: permission checks mean something as we are
    }
    // std drops the supplementary groups (setgroups(0), as root), then setgid, setuid.
    cmd.gid(65534).uid(65534);
    Ok(())
}

/// Spawn a prepared command as the leader of its own process group (`homer-testkit`),
/// register it under `marker` and as owned.
pub fn spawn(cmd: &mut Command, marker: &str) -> io::Result<(Proc, Pipes)> {
    let _gate = spawn_gate().read();
    let (proc, pipes) = Proc::spawn(cmd)?;
    let mut r = registry().lock().unwrap_or_else(|e| e.into_inner());
    r.owned.insert(proc.pid() as u32);
    r.groups.entry(marker.to_string()).or_default().insert(proc.pid());
    Ok((proc, pipes))
}

/// Spawn a command the caller will wait on itself, outside any scenario: registered as
/// owned (under the spawn gate, so the reaper cannot take its exit status first) but not
/// tagged or killed by scenario cleanup. Every child of a process that called [`init`]
/// must come from here or [`spawn`].
pub fn spawn_owned(cmd: &mut Command) -> io::Result<(Proc, Pipes)> {
    let _gate = spawn_gate().read();
    let (proc, pipes) = Proc::spawn(cmd)?;
    registry().lock().unwrap_or_else(|e| e.into_inner()).owned.insert(proc.pid() as u32);
    Ok((proc, pipes))
}

/// Starts the processes of a throwaway PostgreSQL server (`homer_testkit::PgServer`, through
/// `PgOptions::spawner`) as a scenario's own: prepared and tagged with the marker, so an
/// interrupt's cleanup kills the server too, and registered as owned, so the reaper leaves
/// their exits to the server, which reports each reap back ([`disown`]). A scenario drops
/// its server before its marker's cleanup, which would otherwise SIGKILL it.
pub struct PgSpawner {
    pub marker: String,
}

impl homer_testkit::Spawner for PgSpawner {
    fn spawn(&self, cmd: &mut Command) -> io::Result<(Proc, Pipes)> {
        prepare(cmd, &self.marker);
        spawn(cmd, &self.marker)
    }

    fn reaped(&self, pid: i32) {
        disown(pid as u32);
    }
}

/// The [`Proc`] for `pid` has been reaped: the reaper may have its pid again.
pub fn disown(pid: u32) {
    if let Ok(mut r) = registry().lock() {
        r.owned.remove(&pid);
    }
}

/// Record a process group that belongs to `marker` (e.g. a job's group from `job_runs`).
pub fn register_group(marker: &str, pgid: i32) {
    if pgid > 1 {
        if let Ok(mut r) = registry().lock() {
            r.groups.entry(marker.to_string()).or_default().insert(pgid);
        }
    }
}

/// Start tracking a marker (so an interrupt kills its processes even before any spawn).
pub fn open_marker(marker: &str) {
    if let Ok(mut r) = registry().lock() {
        r.groups.entry(marker.to_string()).or_default();
    }
}

/// Record the sandbox of `marker`'s run, for an interrupt to remove until
/// [`forget_sandbox`] (the run removes or keeps it itself when it ends).
pub fn register_sandbox(marker: &str, dir: &std::path::Path) {
    if let Ok(mut r) = registry().lock() {
        r.sandboxes.insert(marker.to_string(), dir.to_path_buf());
    }
}

/// The run of `marker` has removed (or kept) its sandbox: an interrupt leaves it alone.
pub fn forget_sandbox(marker: &str) {
    if let Ok(mut r) = registry().lock() {
        r.sandboxes.remove(marker);
    }
}

/// Record a tmpfs mounted for `marker` (unmounted by [`unmount_marked`] or an interrupt).
pub fn register_mount(marker: &str, dir: &std::path::Path) {
    if let Ok(mut r) = registry().lock() {
        r.mounts.entry(marker.to_string()).or_default().push(dir.to_path_buf());
    }
}

/// The mounts registered for `marker`.
pub fn mounts_of(marker: &str) -> Vec<std::path::PathBuf> {
    registry().lock().map(|r| r.mounts.get(marker).cloned().unwrap_or_default()).unwrap_or_default()
}

/// Unmount every tmpfs of `marker` (call once its processes are dead); each is forgotten
/// only once it is gone, so an interrupt meanwhile still finds it. Returns the failures.
pub fn unmount_marked(marker: &str) -> Vec<String> {
    let mut errors = Vec::new();
    for dir in mounts_of(marker) {
        match crate::faults::unmount(&dir) {
            Ok(()) => {
                if let Ok(mut r) = registry().lock() {
                    if let Some(v) = r.mounts.get_mut(marker) {
                        v.retain(|d| d != &dir);
                    }
                }
            }
            Err(e) => errors.push(e),
        }
    }
    errors
}

/// Forget a marker once its processes are gone.
pub fn close_marker(marker: &str) {
    if let Ok(mut r) = registry().lock() {
        r.groups.remove(marker);
        // A mount that could not be unmounted stays listed for the interrupt handler.
        if r.mounts.get(marker).is_some_and(|m| m.is_empty()) {
            r.mounts.remove(marker);
        }
    }
}

/// Live (non-zombie) processes carrying `marker`. On macOS: members of its groups.
pub fn marked_alive(marker: &str) -> Vec<u32> {
    if cfg!(target_os = "linux") {
        let needle = format!("{MARKER_VAR}={marker}");
        let me = std::process::id();
        let mut out = Vec::new();
        for (pid, stat) in homer_testkit::all_stats() {
            let pid = pid as u32;
            if pid == me || stat.zombie {
                continue;
            }
            let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
            if env.split(|&b| b == 0).any(|kv| kv == needle.as_bytes()) {
                out.push(pid);
            }
        }
        out
    } else {
        let groups: Vec<i32> = registry()
            .lock()
            .map(|r| r.groups.get(marker).map(|g| g.iter().copied().collect()).unwrap_or_default())
            .unwrap_or_default();
        groups
            .into_iter()
            // Signal 0 only checks existence; pgid > 1 was checked at registration.
            .filter(|&g| {
                rustix::process::Pid::from_raw(g).is_some_and(|g| rustix::process::test_kill_process_group(g).is_ok())
            })
            .map(|g| g as u32)
            .collect()
    }
}

/// SIGKILL everything carrying `marker` until nothing is alive or `bound` passes; returns
/// the survivors (empty on success).
pub fn kill_marked(marker: &str, bound: Duration) -> Vec<u32> {
    let deadline = Instant::now() + bound;
    loop {
        let groups: Vec<i32> = registry()
            .lock()
            .map(|r| r.groups.get(marker).map(|g| g.iter().copied().collect()).unwrap_or_default())
            .unwrap_or_default();
        let me = std::process::id() as i32;
        // On Linux the environ scan below is exact; killing remembered groups there could hit
        // a recycled pgid, so groups are the mechanism only where there is no /proc.
        let groups = if cfg!(target_os = "linux") { Vec::new() } else { groups };
        for g in groups {
            if g > 1 && g != me {
                // A process group the harness created or homerd recorded for us.
                if let Some(g) = rustix::process::Pid::from_raw(g) {
                    let _ = rustix::process::kill_process_group(g, rustix::process::Signal::KILL);
                }
            }
        }
        let alive = marked_alive(marker);
        if cfg!(target_os = "linux") {
            for &pid in &alive {
                // The process carries this scenario's marker, so the harness started it.
                if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
        }
        if alive.is_empty() || Instant::now() >= deadline {
            return alive;
        }
        #[allow(clippy::disallowed_methods)] // a polling period: the kernel finishing a SIGKILL sends no event
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `kill(pid, signo)`, for a process the caller knows is still its own child (not yet
/// reaped, so the pid cannot have been reused). Whether the signal was sent: a signal
/// number rustix does not name (real-time signals), a pid beyond `pid_t` or a failed
/// `kill` is `false`.
pub fn signal_pid(pid: u32, signo: i32) -> bool {
    let (Some(pid), Some(sig)) =
        (rustix::process::Pid::from_raw(pid as i32), rustix::process::Signal::from_named_raw(signo))
    else {
        return false;
    };
    rustix::process::kill_process(pid, sig).is_ok()
}

/// Whether processes can be run as an unprivileged uid here.
pub fn can_drop_privileges() -> Result<(), String> {
    if !rustix::process::geteuid().is_root() {
        return Ok(());
    }
    if cfg!(target_os = "linux") {
        Ok(())
    } else {
        Err(String::from("running as root on a system where the harness does not switch uid"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_postgres_server_started_through_the_pg_spawner_is_marked_owned_and_released() {
        let parent = tempfile::tempdir().unwrap();
        let marker = format!("pg-spawner-test-{}", std::process::id());
        let opts =
            homer_testkit::PgOptions { spawner: Arc::new(PgSpawner { marker: marker.clone() }), ..Default::default() };
        let pg = homer_testkit::PgServer::start_with(parent.path(), &opts).unwrap();
        let pid = pg.pid().unwrap();
        assert_eq!(pg.psql("select 1").unwrap(), "1\n");
        assert!(registry().lock().unwrap().owned.contains(&(pid as u32)), "the reaper must leave the postmaster alone");
        assert!(marked_alive(&marker).contains(&(pid as u32)), "an interrupt's cleanup must find the postmaster");
        drop(pg);
        assert!(!registry().lock().unwrap().owned.contains(&(pid as u32)), "disowned once reaped");
        assert!(marked_alive(&marker).is_empty(), "{:?}", marked_alive(&marker));
        close_marker(&marker);
    }
}
