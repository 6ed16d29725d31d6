//! All spawning and killing in one module.
//!
//! Every job process is started, released, signalled and waited for here, and nowhere
//! else in the daemon — as `lock` owns `flock` and `identity` owns process identity. The
//! guards that keep a kill from hitting the wrong processes (never pgid ≤ 1 or our own
//! group, zombies count as gone, identity and boot checks before touching a recorded
//! group, every wait bounded) then live in one place and cannot be forgotten by a caller.
//!
//! Why each choice:
//!
//! - **Own process group** (`setpgid(0, 0)` via `process_group(0)`): a job's whole tree
//!   (its children and grandchildren, unless they deliberately leave the group) is killed
//!   with one `kill(-pgid)`, and the group outlives its leader, so "is the earlier attempt
//!   still running?" is "is its group still populated?" ([`group_alive`]).
//! - **Held start through the job shim** ([`crate::shim`]): the pid, pgid, boot id and
//!   start time must be recorded in `job_runs` *before* the job can have any effect, and a
//!   fenced record must be able to kill it unreleased. std's `spawn()` waits for the
//!   `exec`, so a blocking `pre_exec` would block `spawn()` itself; instead the child execs
//!   `homerd job-shim`, which blocks on a pipe and execs the argv only after
//!   [`HeldChild::release`] writes a byte. EOF (the daemon died, or dropped the child)
//!   makes the shim exit without running anything.
//! - **The shim is a small program of its own, held open** ([`platform::job_shim_program`]):
//!   `homerd-shim` beside the daemon's executable — its `exec`, paid once per job, costs
//!   a fraction of exec'ing the daemon's image. On Linux it is opened once and exec'd
//!   through `/proc/self/fd/N`, and without it the daemon's own image runs `job-shim`
//!   through `/proc/self/exe` ([`shim_program`]); either way replacing or removing the
//!   installed files while the daemon runs (an upgrade) neither breaks new `exec` jobs nor
//!   runs a different version's shim. macOS has no equivalent; there the paths are used.
//! - **The release pipe is the shim's stdin**, and nothing runs in the forked child before
//!   `exec`: no `pre_exec` closure, so std starts the shim with `posix_spawn` — a
//!   `vfork`-style clone that shares the daemon's memory until the `exec` instead of
//!   copying its page tables and tearing the copy down again, which was a fifth of all
//!   the CPU an `exec` job cost. The shim reads its release byte from fd 0, then puts
//!   `/dev/null` there, so the job never sees the pipe and its stdin is what it always
//!   was. What a `pre_exec` did before goes to the shim as arguments: the descriptor
//!   limit the daemon was started with (`--nofile`, see `rlimit.rs`). Passing anything in
//!   a `HOMERD_*` variable would leak a daemon variable into the job.
//! - **Close-on-exec pipe ends in the daemon**: no other child (another job, a helper)
//!   may inherit the write end, or the shim would never see EOF when the daemon dies. On
//!   Linux `pipe2(O_CLOEXEC)` sets it atomically; macOS has no `pipe2`, so `pipe` +
//!   `FD_CLOEXEC` is used, and a pipe is made only while no spawner thread's spawn is in
//!   flight (the `FORK_FENCE` below: spawns share it, a non-atomic pipe takes it alone),
//!   so no job's child can inherit an end between the two calls. The PostgreSQL daemon's
//!   group guardian, which std starts with a pipe of its own and may be restarted while
//!   jobs start, is spawned holding the fence alone too ([`fenced_spawn`]).
//! - **Dedicated, never-ending spawner threads**: Linux's `PR_SET_PDEATHSIG` (set by the
//!   shim, inherited across its `exec` by the job leader) fires when the *thread* that
//!   forked the child exits, not the process. A job spawned from a short-lived worker
//!   thread would be SIGKILLed when that thread ends, so every [`spawn_held`] is routed to
//!   a small pool of lazily-started threads that live as long as the daemon
//!   ([`SPAWNERS`] of them, taking requests from one queue). Several, because a restart
//!   starts every recovered job at once, and with one thread each start waited for the
//!   one before it (the log files, the pipes, the `posix_spawn`, the start time read
//!   back): that wave is most of the time from `kill -9` to all jobs running again
//!   (README, Performance, "Restart and enqueue latency").
//! - **macOS has no parent-death signal.** We do not keep the shim as a watching group
//!   leader (kqueue `NOTE_EXIT`); instead macOS relies on the daemon's startup recovery
//!   killing every recorded group ([`kill_recorded_group`]) before any re-run. Until the
//!   next daemon start, a job whose daemon died keeps running on macOS. (On Linux the
//!   parent-death signal kills the job leader at once; its own children in the group are
//!   killed by that same startup recovery.)
//! - **Environment**: the child inherits the daemon's environment minus a denylist of
//!   prefixes (at least every `HOMERD_*` test hook, so failpoints and mutants never reach
//!   a job), plus the `HOMER_*` variables of the run. The shim itself runs with exactly
//!   that environment. The inherited set is snapshotted and passed explicitly
//!   (`env_clear` + `envs`), so a variable set concurrently cannot slip past the filter.
//! - **Zombies count as gone**: a killed member whose parent has not reaped it yet still
//!   answers `kill(-pgid, 0)`, but it cannot run anything. Linux scans `/proc/*/stat`
//!   (pgrp and state); macOS lists the group with `proc_listpids(PROC_PGRP_ONLY)` and
//!   skips zombies through [`identity::proc_state`]. If the listing itself fails, the
//!   fallback `kill(-pgid, 0)` probe counts zombies as alive (conservative: we wait longer,
//!   never re-run early).
//! - **A pgid is only signalled while it is provably ours**: a held child's group while
//!   its leader is unreaped (the pid, hence the group id, cannot be reused), a recorded
//!   group only after the boot id matches and either the leader (same start time, not a
//!   zombie) is alive or the group still has live members — a process group id cannot be
//!   reused while the group has members, so a dead leader with live members is still the
//!   old group.
//! - **Bounded waits**: every wait polls with a short sleep against a deadline and
//!   reports `TimedOut` rather than hanging the worker or the startup.

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crate::job::ChildIdentity;
use crate::platform::{self, Signal};
use crate::{identity, shim};

/// How often waiting loops re-check.
const POLL: Duration = Duration::from_millis(2);

/// How often a SIGKILL is repeated while a group is still populated (covers a member
/// forked while the previous signal was being delivered).
const KILL_REPEAT: Duration = Duration::from_millis(50);

/// How long [`spawn_held`] waits for the new process to show up in the kernel's process
/// table before giving up.
const VISIBLE_WITHIN: Duration = Duration::from_secs(2);

/// What to run and where its output goes.
#[derive(Clone, Debug)]
pub struct SpawnRequest {
    /// Program and arguments, no shell; `argv[0]` is looked up in `PATH`.
    pub argv: Vec<String>,
    /// Added to the environment (e.g. `HOMER_JOB_ID`); wins over an inherited variable.
    pub env_set: Vec<(String, String)>,
    /// Every inherited variable whose name starts with one of these is removed
    /// (e.g. `HOMERD_`). Variables in `env_set` are not filtered.
    pub env_deny_prefixes: Vec<String>,
    /// Per-run log files, opened append + create (mode 0600 when created); with
    /// `output_cap`, only once the program writes to them.
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    /// Bytes kept per output file (`run_log_cap`). `Some`: the child writes into pipes
    /// that copier threads drain into the files up to the cap, dropping the rest (a line
    /// at the end says how much), each creating its file at the first byte; `None`: the
    /// files are created before the child starts, and it writes them directly.
    pub output_cap: Option<u64>,
    /// The job's working directory, entered by the shim after the release (so a
    /// directory that vanished fails the run with its cause on the run's stderr, and the
    /// program path resolves against it); `None`: the daemon's own directory.
    pub cwd: Option<PathBuf>,
}

/// A started job that has not necessarily been released yet.
///
/// Dropping a child that was never released closes the pipe (the shim exits without
/// running the job), kills its group and reaps it. Dropping a released child neither
/// kills nor waits for it (it only reaps it if it has already exited): the worker owns a
/// running job's lifecycle ([`kill_group_and_wait`], [`HeldChild::wait`]).
#[derive(Debug)]
pub struct HeldChild {
    pub pid: u32,
    /// Equal to `pid`: the child leads its own process group.
    pub pgid: u32,
    /// As [`identity::ProcState::start_time`].
    pub start_time: u64,
    /// [`identity::pid_space`] at spawn time.
    pub boot_id: String,
    /// The write end of the release pipe; `None` once released (or a release failed).
    release_pipe: Option<File>,
    released: bool,
    child: Child,
    /// Copier threads of capped output; each reports on the channel when it reached EOF.
    copiers: Option<(usize, mpsc::Receiver<()>)>,
}

/// Starts `req.argv` held: through `homerd-shim job-shim --parent OUR_PID -- argv...` (see
/// [`platform::job_shim_program`]), in its own process group, blocked until
/// [`HeldChild::release`].
///
/// Returns once the shim has been exec'd (it is then blocked on the release pipe or about
/// to be). Runs on one of the spawner threads (see the module docs).
pub fn spawn_held(req: SpawnRequest) -> io::Result<HeldChild> {
    spawn_held_via(&platform::job_shim_program(), req)
}

/// The program that runs `job-shim`: the running daemon's own executable image.
///
/// Linux: `/proc/self/exe`. Resolved by the kernel at `exec` time in the forked child (a
/// copy of the daemon), it names the image the daemon runs even after the homerd file at
/// its path was replaced (an upgrade, a rebuild) or removed — where the path from
/// `current_exe()` would run a different binary, or fail with "No such file or directory".
///
/// macOS has no `/proc`: the path from `current_exe()` is used, so there a replaced or
/// removed binary needs a daemon restart before new `exec` jobs can start (README, Jobs).
pub fn shim_program() -> PathBuf {
    platform::shim_program()
}

/// [`spawn_held`] through `program` in place of [`platform::job_shim_program`] (given the same
/// `job-shim --parent OUR_PID -- argv...` arguments). Tests use a stand-in script here.
pub(crate) fn spawn_held_via(program: &Path, req: SpawnRequest) -> io::Result<HeldChild> {
    if req.argv.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty argv"));
    }
    let nofile = crate::rlimit::child_soft_limit();
    let mut args: Vec<OsString> = shim::args_before_argv(std::process::id(), req.cwd.as_deref(), nofile);
    args.extend(req.argv.iter().map(OsString::from));
    spawn_held_with(program, &args, req)
}

/// [`spawn_held`] with an explicit program and its complete argument list (`req.argv` is
/// not used: `args` must already carry the argv). The program must behave like the shim:
/// read one byte from stdin and exec, or exit on EOF. Tests use a `/bin/sh` stand-in here.
pub(crate) fn spawn_held_with(program: &Path, args: &[OsString], req: SpawnRequest) -> io::Result<HeldChild> {
    let (reply, answer) = mpsc::sync_channel(1);
    send_to_spawner(SpawnJob { program: program.to_owned(), args: args.to_vec(), req, reply })?;
    answer.recv().map_err(|_| io::Error::other("the spawner thread ended without answering"))?
}

struct SpawnJob {
    program: PathBuf,
    args: Vec<OsString>,
    req: SpawnRequest,
    reply: mpsc::SyncSender<io::Result<HeldChild>>,
}

/// How many spawner threads start held children side by side. Most of a start is the
/// kernel's (its pipes, `posix_spawn`, reading the new process's start time),
/// so a few threads keep every core busy while a wave of jobs starts; more would only
/// queue on the same cores. Idle spawners block on the queue and cost nothing.
pub(crate) const SPAWNERS: usize = 4;

/// The spawner threads' queue, started on first use. The sender stays in this static for
/// the life of the process, so the threads (and with them every child's parent-death
/// signal) never end while the daemon runs.
static SPAWNER: Mutex<Option<mpsc::Sender<SpawnJob>>> = Mutex::new(None);

/// Starts the spawner threads now rather than at the first spawn, so a wave of jobs
/// claimed right after a start does not wait for them (the engine calls this when it
/// starts). Idempotent.
pub fn start_spawners() -> io::Result<()> {
    spawner_queue(&mut SPAWNER.lock().unwrap_or_else(PoisonError::into_inner)).map(drop)
}

fn spawner_queue(slot: &mut Option<mpsc::Sender<SpawnJob>>) -> io::Result<mpsc::Sender<SpawnJob>> {
    Ok(match slot.as_ref() {
        Some(sender) => sender.clone(),
        None => {
            let (sender, queue) = mpsc::channel::<SpawnJob>();
            let queue = std::sync::Arc::new(Mutex::new(queue));
            for i in 0..SPAWNERS {
                let queue = queue.clone();
                let started = std::thread::Builder::new()
                    .name(String::from("homerd-spawner"))
                    .spawn(move || spawner_loop(&queue));
                match started {
                    Ok(_) => {}
                    // The threads already started serve the queue; with none, report it.
                    Err(e) if i == 0 => return Err(e),
                    Err(_) => break,
                }
            }
            *slot = Some(sender.clone());
            sender
        }
    })
}

fn send_to_spawner(job: SpawnJob) -> io::Result<()> {
    let mut slot = SPAWNER.lock().unwrap_or_else(PoisonError::into_inner);
    let sender = spawner_queue(&mut slot)?;
    sender.send(job).map_err(|_| {
        // Only possible if every thread died (a panic is caught in the loop, so this
        // should not happen); the next spawn starts fresh threads.
        *slot = None;
        io::Error::other("the spawner threads are gone")
    })
}

/// One spawner thread: takes the next request from the shared queue (whoever holds the
/// queue's mutex waits in `recv`, the others wait for the mutex) and starts it.
fn spawner_loop(queue: &Mutex<mpsc::Receiver<SpawnJob>>) {
    loop {
        let next = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(SpawnJob { program, args, req, reply }) = next else { return };
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| spawn_direct(&program, &args, req)))
            .unwrap_or_else(|_| Err(io::Error::other("spawning panicked")));
        // If the caller is gone, the child is dropped here: an unreleased child is killed.
        let _ = reply.send(result);
    }
}

/// The threads that copy capped output into the run logs, two per running job, kept for
/// reuse (`pool.rs`): creating and tearing down two threads per job was a tenth of what
/// the daemon itself spent on an `exec true` job.
static OUTPUT: std::sync::LazyLock<crate::pool::Pool> =
    std::sync::LazyLock::new(|| crate::pool::Pool::new("homerd-output"));

/// Where `pipe2(O_CLOEXEC)` exists, a pipe is close-on-exec from its first instant. Elsewhere
/// (macOS) `pipe` + `FD_CLOEXEC` leaves a window in which a child spawned by another
/// spawner thread would inherit both ends: the pipe is made holding `FORK_FENCE` alone,
/// each spawn holds it shared (spawns still run side by side).
const PIPE_IS_ATOMIC: bool = cfg!(target_os = "linux");

static FORK_FENCE: RwLock<()> = RwLock::new(());

/// Spawns `cmd` outside the spawner threads (the PostgreSQL group guardian) holding
/// [`FORK_FENCE`] alone where pipes are not atomic: std makes the child's stdin pipe with
/// `pipe` + `FD_CLOEXEC` there, and a job spawned meanwhile must not inherit it.
pub fn fenced_spawn(cmd: &mut Command) -> io::Result<Child> {
    let _fence = (!PIPE_IS_ATOMIC).then(|| FORK_FENCE.write().unwrap_or_else(PoisonError::into_inner));
    cmd.spawn()
}

/// Spawns on the calling thread. Only the spawner threads (and tests) may call this.
fn spawn_direct(program: &Path, args: &[OsString], req: SpawnRequest) -> io::Result<HeldChild> {
    let (child_out, child_err, copiers) = match req.output_cap {
        None => (Stdio::from(open_log(&req.stdout)?), Stdio::from(open_log(&req.stderr)?), None),
        Some(cap) => {
            // The files are the copiers' to create, at the first byte (see `copy_capped`);
            // the caller has made sure their directory can be written to.
            let (done_tx, done_rx) = mpsc::channel();
            let mut ends = Vec::new();
            for path in [req.stdout, req.stderr] {
                let (read, write) = cloexec_pipe()?;
                let done = done_tx.clone();
                OUTPUT.run(move || {
                    copy_capped(File::from(read), &path, cap);
                    let _ = done.send(());
                })?;
                ends.push(Stdio::from(write));
            }
            let err = ends.pop().expect("two pipes");
            let out = ends.pop().expect("two pipes");
            (out, err, Some((2, done_rx)))
        }
    };
    let (read_end, write_end) = release_pipe()?;

    let inherited: Vec<(OsString, OsString)> =
        std::env::vars_os().filter(|(key, _)| !denied(key, &req.env_deny_prefixes)).collect();
    let mut cmd = Command::new(program);
    if program.starts_with("/proc/self/fd") {
        // The held-open shim (platform::job_shim_program): `ps` shows its name, not the
        // descriptor's path.
        cmd.arg0(platform::JOB_SHIM_FILE);
    }
    // No `pre_exec`: std then spawns with posix_spawn (see the module docs). The read end
    // becomes the child's fd 0 (a dup, so without close-on-exec); this process's copy
    // closes when `cmd` is dropped below.
    cmd.args(args)
        .env_clear()
        .envs(inherited)
        .envs(req.env_set.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::from(read_end))
        .stdout(child_out)
        .stderr(child_err)
        .process_group(0);
    let child = {
        let _fence = (!PIPE_IS_ATOMIC).then(|| FORK_FENCE.read().unwrap_or_else(PoisonError::into_inner));
        cmd.spawn()?
    };
    drop(cmd);

    let pid = child.id();
    let mut held = HeldChild {
        pid,
        pgid: pid,
        start_time: 0,
        boot_id: identity::pid_space().to_owned(),
        release_pipe: Some(write_end),
        released: false,
        child,
        copiers,
    };
    // On error `held` is dropped unreleased: the shim is killed and reaped.
    held.start_time = start_time_of(pid)?;
    Ok(held)
}

fn denied(key: &OsStr, prefixes: &[String]) -> bool {
    prefixes.iter().any(|p| key.as_bytes().starts_with(p.as_bytes()))
}

/// A run's log file, opened once per stream per run. An old file of the same name is
/// emptied: it is another run's that the database no longer knows — a run number that
/// repeats after a power cut lost the first one, and a job id that repeats after a
/// restored backup is another job — and its bytes must not show as this run's output.
fn open_log(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| io::Error::new(source.kind(), PathError { path: path.to_owned(), source }))
}

/// An I/O error with the file it is about, keeping the OS error for [`is_resource_error`].
#[derive(Debug)]
struct PathError {
    path: PathBuf,
    source: io::Error,
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.source)
    }
}

impl std::error::Error for PathError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Whether a failure to start a job is the daemon's own trouble rather than the job's:
/// the process is out of descriptors (EMFILE) or the system is (ENFILE), no process or
/// thread can be created or no memory had (EAGAIN, ENOMEM), or the run logs' directory
/// cannot be made or written (a full, over-quota or read-only disk, or a home the daemon
/// may not write).
/// Nothing of the job ran, so it must not be charged an attempt (failure mode 25). A job's
/// own failure — its program missing, a non-zero exit — happens after the release, in
/// the shim or the job, and never reaches here as an error.
pub fn is_resource_error(e: &io::Error) -> bool {
    matches!(
        os_code(e),
        Some(
            libc::EMFILE
                | libc::ENFILE
                | libc::EAGAIN
                | libc::ENOMEM
                | libc::ENOSPC
                | libc::EDQUOT
                | libc::EROFS
                | libc::EACCES
        )
    )
}

/// Copies `from` into the run log at `path` up to `cap` bytes, reading (and dropping) the
/// rest until EOF, then notes how much was dropped. EOF comes when every process holding
/// the write end is gone: the job's group is killed before its run is recorded.
///
/// The file is created when the first byte arrives, not before the job starts: a stream
/// the program never writes to has no file (`homerd logs` and `show` say so), and a job
/// that prints nothing costs no file creation — on some file systems (ext4 without a
/// journal, whose inode allocator skips recently deleted inodes one by one) two creations
/// were a third of everything an `exec true` job cost. A file that cannot be created is
/// retried while the daemon is out of descriptors ([`create_log`]: the job waits on its
/// pipe meanwhile, as on a slow disk); any other failure drops that stream's output, with
/// a `job.output_lost` warning naming the file — as a full disk already dropped what a
/// created file could not take.
fn copy_capped(mut from: File, path: &Path, cap: u64) {
    use std::io::Read;
    // Small until the first byte: most streams stay empty (a `sleep` writes nothing),
    // and a restart starts a pair of copiers for every recovered job at once — zeroing
    // 64 KiB for each was page faults on the way to running them all.
    let mut buf = vec![0u8; 512];
    let mut to: Option<File> = None;
    let mut lost = false;
    let (mut kept, mut dropped) = (0u64, 0u64);
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if to.is_none() && !lost {
            match create_log(path) {
                Ok(file) => to = Some(file),
                Err(e) => {
                    lost = true;
                    crate::events::warn(
                        "job.output_lost",
                        "A run log cannot be created: this stream's output is dropped",
                    )
                    .field("path", path.display().to_string())
                    .field("error", e.to_string())
                    .emit();
                }
            }
        }
        let room = match to.as_mut() {
            Some(file) => {
                let room = cap.saturating_sub(kept).min(n as u64) as usize;
                if room > 0 && file.write_all(&buf[..room]).is_ok() {
                    kept += room as u64;
                }
                room
            }
            None => 0,
        };
        dropped += (n - room) as u64;
        if buf.len() < COPY_BUFFER {
            buf.resize(COPY_BUFFER, 0);
        }
    }
    if let (Some(file), true) = (to.as_mut(), dropped > 0) {
        let _ = writeln!(file, "\n[homerd: {dropped} more bytes dropped: run_log_cap is {cap} bytes]");
    }
}

/// What a copier reads at a time once its stream has produced output.
const COPY_BUFFER: usize = 64 * 1024;

/// How long a run log's creation is retried while the daemon is out of descriptors:
/// other jobs ending give theirs back. Bounded, because jobs blocked on their pipes
/// might be all that holds them.
/// Shorter than the wait for a run's output before its outcome is recorded (5 s, runner.rs),
/// so a log made late is still made before that.
const DESCRIPTORS_WITHIN: Duration = Duration::from_secs(2);

/// [`open_log`], retried with a growing pause (up to [`DESCRIPTORS_WITHIN`]) while the
/// failure is EMFILE or ENFILE.
fn create_log(path: &Path) -> io::Result<File> {
    let deadline = Instant::now() + DESCRIPTORS_WITHIN;
    let mut pause = POLL;
    loop {
        match open_log(path) {
            Err(e) if matches!(os_code(&e), Some(libc::EMFILE | libc::ENFILE)) && Instant::now() < deadline => {
                // A retry of a failing call, not a wait on another thread's event.
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(250));
            }
            result => return result,
        }
    }
}

/// The OS error behind `e`, also through a [`PathError`].
fn os_code(e: &io::Error) -> Option<i32> {
    e.raw_os_error().or_else(|| {
        e.get_ref().and_then(|inner| inner.downcast_ref::<PathError>()).and_then(|p| p.source.raw_os_error())
    })
}

/// A pipe with both ends close-on-exec (the child gets its end through std's dup2).
fn cloexec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let _fence = (!PIPE_IS_ATOMIC).then(|| FORK_FENCE.write().unwrap_or_else(PoisonError::into_inner));
    platform::cloexec_pipe()
}

/// Both ends close-on-exec: the read end reaches the shim only as the dup std makes onto
/// its fd 0; the write end stays with the daemon (and no other child) until the release.
/// The read end is moved above 2 if needed (a daemon started with its standard
/// descriptors closed gets low numbers): a dup onto the descriptor it already is would
/// leave close-on-exec set on some systems. (`try_clone` is `F_DUPFD_CLOEXEC` with a
/// minimum of 3; `fcntl` itself is reserved to `lock`.)
fn release_pipe() -> io::Result<(OwnedFd, File)> {
    let (mut read_end, write_end) = cloexec_pipe()?;
    if read_end.as_raw_fd() <= 2 {
        read_end = read_end.try_clone()?;
    }
    Ok((read_end, File::from(write_end)))
}

/// The start time of a process we just forked, retried briefly in case the kernel does
/// not show it yet.
fn start_time_of(pid: u32) -> io::Result<u64> {
    let deadline = Instant::now() + VISIBLE_WITHIN;
    loop {
        if let Some(state) = identity::proc_state(pid)? {
            return Ok(state.start_time);
        }
        if Instant::now() >= deadline {
            return Err(io::Error::other(format!("spawned pid {pid} is not visible in the process table")));
        }
        std::thread::sleep(POLL);
    }
}

impl HeldChild {
    /// Lets the shim exec the argv: writes one byte (a newline, so a shell stand-in can
    /// `read` it) and closes the pipe. A second call is an error.
    pub fn release(&mut self) -> io::Result<()> {
        let Some(mut pipe) = self.release_pipe.take() else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "child already released (or its release failed)"));
        };
        // EPIPE here means the shim is gone (SIGPIPE is ignored in Rust programs); the
        // pipe is closed either way, so it never runs the job.
        pipe.write_all(b"\n")?;
        self.released = true;
        Ok(())
    }

    /// Blocks until the direct child (the shim, or the job once exec'd) exits; reaps it.
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        self.child.wait()
    }

    /// Reaps the direct child if it has exited.
    /// Waits (bounded) until capped output has been copied to the files: call once the
    /// job's group is gone, so the run's log is complete when its outcome is recorded.
    /// Returns whether every copier finished.
    pub fn finish_output(&mut self, limit: Duration) -> bool {
        let Some((pending, done)) = self.copiers.as_mut() else { return true };
        let end = Instant::now() + limit;
        while *pending > 0 {
            match done.recv_timeout(end.saturating_duration_since(Instant::now())) {
                Ok(()) => *pending -= 1,
                Err(_) => return false,
            }
        }
        true
    }

    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }
}

impl Drop for HeldChild {
    fn drop(&mut self) {
        if self.released {
            // The worker owns a running job; only collect it if it already exited.
            let _ = self.child.try_wait();
            return;
        }
        // EOF on its stdin: the shim exits without exec'ing.
        drop(self.release_pipe.take());
        match self.child.try_wait() {
            // Already exited and reaped: its group id may be reused now, signal nothing.
            // (Never released, so it never exec'd the job and started no other member.)
            Ok(Some(_)) => {}
            _ => {
                // Unreaped, so the pid — and the group id — cannot have been reused.
                let _ = signal_group(self.pgid, Signal::KILL);
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// Sends `sig` to process group `pgid`. Refuses pgid 0 and 1 (our own group, init /
/// "every process"), anything beyond `pid_t`, and our own group, with `InvalidInput`.
/// A group that no longer exists (ESRCH) is `Ok`.
pub fn signal_group(pgid: u32, sig: Signal) -> io::Result<()> {
    platform::signal_group(checked_pgid(pgid)?, sig)
}

fn checked_pgid(pgid: u32) -> io::Result<u32> {
    let refuse =
        |why: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("refusing to signal pgid {pgid}: {why}"));
    if libc::pid_t::try_from(pgid).is_err() {
        return Err(refuse("not a valid process group id"));
    }
    if pgid <= 1 {
        return Err(refuse("0 and 1 are never a job's group"));
    }
    if pgid == platform::own_process_group() {
        return Err(refuse("it is the daemon's own process group"));
    }
    Ok(pgid)
}

/// Whether process group `pgid` has any member that is not a zombie.
pub fn group_alive(pgid: u32) -> bool {
    if pgid == 0 || libc::pid_t::try_from(pgid).is_err() {
        return false;
    }
    // The kernel's answer first: a group it does not know (ESRCH) has no member at all,
    // zombie or not, so nothing needs listing. That is the common case — a finished job
    // whose leader was reaped and which left nothing behind — and it spares every job end
    // a walk over every process's /proc stat. Only a group the kernel still knows is
    // listed, to tell live members from zombies.
    if pgid > 1 && !platform::group_exists(pgid) {
        return false;
    }
    match platform::group_has_live_member(pgid) {
        Ok(alive) => alive,
        // The listing failed: fall back to the kernel's own answer, which counts zombies
        // as members (conservative: we wait longer, never re-run early).
        Err(_) => platform::group_exists(pgid),
    }
}

/// The groups among `among` that have a live (not zombie) member, from one listing of
/// every process — for startup recovery, which checks every recorded group against one
/// snapshot ([`kill_recorded_group_in`]) instead of listing every process once per group
/// (50 orphans cost 50 listings). `None` where groups can only be listed one at a time
/// (macOS), or if the listing failed: callers then check each group on its own.
pub fn live_groups(among: &std::collections::HashSet<u32>) -> Option<std::collections::HashSet<u32>> {
    platform::live_groups(among)
}

/// Whether the kernel still knows process group `pgid` — any member at all, zombies
/// included; `false` for a pgid no group may be signalled by (see [`signal_group`]). One
/// `kill(-pgid, 0)`, no listing: startup recovery lists every process only when some
/// recorded group is still known ([`live_groups`]).
pub fn group_known(pgid: u32) -> bool {
    checked_pgid(pgid).is_ok() && platform::group_exists(pgid)
}

/// SIGTERM to the group; wait up to `kill_grace` for it to empty; then SIGKILL and wait
/// up to `limit` more (so at most `kill_grace + limit` in all), else `TimedOut`. The
/// caller must know the group is still its own (e.g. a [`HeldChild`] not yet reaped).
pub fn kill_group_and_wait(pgid: u32, kill_grace: Duration, limit: Duration) -> io::Result<()> {
    signal_group(pgid, Signal::TERM)?;
    if wait_group_gone(pgid, Instant::now() + kill_grace, None) {
        return Ok(());
    }
    signal_group(pgid, Signal::KILL)?;
    if wait_group_gone(pgid, Instant::now() + limit, Some(Signal::KILL)) {
        return Ok(());
    }
    Err(timed_out(pgid, kill_grace + limit))
}

/// Polls [`group_alive`] until false (`true`) or `deadline` (`false`), repeating `repeat`
/// every [`KILL_REPEAT`] while members remain.
fn wait_group_gone(pgid: u32, deadline: Instant, repeat: Option<Signal>) -> bool {
    let mut last_signal = Instant::now();
    loop {
        if !group_alive(pgid) {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        if let Some(sig) = repeat {
            if now.duration_since(last_signal) >= KILL_REPEAT {
                let _ = signal_group(pgid, sig);
                last_signal = now;
            }
        }
        std::thread::sleep(POLL.min(deadline - now));
    }
}

fn timed_out(pgid: u32, after: Duration) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("process group {pgid} still has live members after {after:?}"))
}

/// For startup recovery and re-runs: kills the recorded child's group if it is still that
/// group, and waits (up to `limit`) until it has no live members.
///
/// - Recorded in another pid space (`boot_id != identity::pid_space()`): `Ok(false)`, nothing
///   signalled — an earlier boot's processes are all gone. (A recording from another pid
///   namespace of this same boot cannot be checked from here either; it is treated the
///   same way.)
/// - The leader (same pid and start time, not a zombie) is alive, or the group still has
///   live members (a dead leader with live members is still the old group: a pgid cannot
///   be reused while it has members): SIGKILL the group, wait until empty → `Ok(true)`, or
///   `TimedOut` after `limit`.
/// - Otherwise `Ok(false)`.
///
/// Errors if the pgid is refused by [`signal_group`] (≤ 1, or our own group) or cannot be
/// signalled. A member that moved itself to another group or session is out of
/// reach of any process-group kill.
pub fn kill_recorded_group(c: &ChildIdentity, limit: Duration) -> io::Result<bool> {
    kill_recorded_group_in(c, limit, None)
}

/// [`kill_recorded_group`] with a [`live_groups`] snapshot, taken after the recorded runs'
/// daemon was gone, that can only say "gone": a group with no live member in it cannot
/// have become ours again since (a group id comes back only as somebody else's group, as
/// a reused leader pid does), so it is skipped without a scan of its own. A group live in
/// the snapshot is scanned afresh before anything is signalled, exactly as without one.
pub fn kill_recorded_group_in(
    c: &ChildIdentity,
    limit: Duration,
    live: Option<&std::collections::HashSet<u32>>,
) -> io::Result<bool> {
    if c.boot_id != identity::pid_space() {
        return Ok(false);
    }
    // A leader whose state cannot be read (Err) is not ours: our own processes are always
    // readable. The group check below still catches its live members.
    let leader = identity::proc_state(c.pid);
    let leader_alive = matches!(leader, Ok(Some(state)) if !state.zombie && state.start_time == c.start_time);
    // Another process now has the leader's pid: the kernel never hands out a pid still in
    // use as a process-group id, so every member of the old group is gone — and a group
    // with that id now is somebody else's. Never signal it.
    let pid_reused = c.pid == c.pgid && matches!(leader, Ok(Some(state)) if state.start_time != c.start_time);
    let group_live = || live.is_none_or(|l| l.contains(&c.pgid)) && group_alive(c.pgid);
    if pid_reused || (!leader_alive && !group_live()) {
        return Ok(false);
    }
    signal_group(c.pgid, Signal::KILL)?;
    if wait_group_gone(c.pgid, Instant::now() + limit, Some(Signal::KILL)) {
        Ok(true)
    } else {
        Err(timed_out(c.pgid, limit))
    }
}

#[cfg(test)]
mod tests;
