//! Platform code: one portable interface here, one file per OS behind it (`linux.rs`,
//! `macos.rs`). Everything the daemon asks the kernel about processes goes through this
//! module: a process's state ([`stat`]: parent, group, start time, zombie or not), this
//! boot's identifier and pid namespace, host name, process-group signals and listings,
//! and the few descriptor and signal calls spawning needs.
//!
//! Rules:
//!
//! - **System calls through `rustix`** (and randomness through `getrandom`), which wrap
//!   them safely. Raw `libc` stays only where `rustix` does not cover the call (macOS
//!   `proc_pidinfo`, `proc_listpids`, `sysctlbyname`); each such call sits in one small
//!   function with its `SAFETY` comment.
//! - **One reader of the process table.** Linux reads `/proc/<pid>/stat` in exactly one
//!   place ([`linux`]'s `parse_stat`); macOS asks `proc_pidinfo`. `homer-testkit` (and
//!   through it the harness and the bench) uses this same reader rather than a parser of
//!   its own.
//! - **Zombies are dead.** A process that exited and waits for its parent still answers
//!   `kill(pid, 0)`; [`Stat::zombie`] says so, and every liveness answer here skips it.
//! - **Policy stays with the callers**: which group may be signalled and how long to wait
//!   (`children.rs`), what identity means (`identity.rs`).

use std::collections::HashSet;
use std::io;

pub use rustix::process::Signal;

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
use linux as os;

#[cfg(target_os = "macos")]
mod macos;
#[cfg(target_os = "macos")]
use macos as os;

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
compile_error!("homerd supports Linux and macOS only");

pub use os::{boot_id, job_shim_program, job_shim_unusable, name_job_shim, pid_namespace, shim_program};

/// The job shim as a program of its own (`src/shim_main.rs`), installed beside `homerd`:
/// a small image, so the `exec` every job pays for before its own costs a fraction of
/// exec'ing the daemon's. The same command line as `homerd job-shim` (`shim.rs`).
pub const JOB_SHIM_FILE: &str = "homerd-shim";

/// What the kernel reports about one process now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    pub ppid: u32,
    pub pgrp: u32,
    /// Platform-specific start stamp: Linux clock ticks since boot, macOS microseconds
    /// since the epoch. Only ever compared for equality within one boot.
    pub start_time: u64,
    /// Exited and not yet reaped (Linux state `Z` or `X`, macOS `SZOMB`).
    pub zombie: bool,
}

/// The state of `pid`. `Ok(None)`: no such process; `Err`: the kernel would not say (no
/// `/proc`, `hidepid`, another user's process on macOS, an unreadable line).
pub fn stat(pid: u32) -> io::Result<Option<Stat>> {
    os::stat(pid)
}

/// Every process the kernel lists, with its state (processes gone between the listing
/// and the read are skipped).
pub fn all_stats() -> io::Result<Vec<(u32, Stat)>> {
    os::all_stats()
}

/// Whether process group `pgid` has a member that is not a zombie. `Err` if the members
/// could not be listed.
pub fn group_has_live_member(pgid: u32) -> io::Result<bool> {
    os::group_has_live_member(pgid)
}

/// The groups among `among` that have a live (not zombie) member, from one listing of
/// every process. `None` where that listing is not cheap (macOS lists by group) or failed.
pub fn live_groups(among: &HashSet<u32>) -> Option<HashSet<u32>> {
    os::live_groups(among)
}

/// The host name, as `uname(2)`'s node name (`gethostname`).
pub fn hostname() -> String {
    rustix::system::uname().nodename().to_string_lossy().into_owned()
}

/// This process's own process group.
pub fn own_process_group() -> u32 {
    rustix::process::getpgrp().as_raw_nonzero().get().unsigned_abs()
}

/// A pid (or group id) as the kernel's type; `None` for 0 and anything beyond `pid_t`.
pub(super) fn pid(id: u32) -> Option<rustix::process::Pid> {
    rustix::process::Pid::from_raw(i32::try_from(id).ok()?)
}

/// `kill(-pgid, sig)`. A group that no longer exists (ESRCH) is `Ok`. The caller decides
/// which groups may be signalled; this refuses only 0 and 1 (the caller's own group and
/// "every process"), whatever the caller says.
pub fn signal_group(pgid: u32, sig: Signal) -> io::Result<()> {
    let pg = group_pid(pgid)?;
    match rustix::process::kill_process_group(pg, sig) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// `kill(-pgid, 0)`: whether the kernel knows the group at all — zombies included, and a
/// group of another user's processes (EPERM) counts as existing.
pub fn group_exists(pgid: u32) -> bool {
    let Ok(pg) = group_pid(pgid) else { return false };
    matches!(rustix::process::test_kill_process_group(pg), Ok(()) | Err(rustix::io::Errno::PERM))
}

fn group_pid(pgid: u32) -> io::Result<rustix::process::Pid> {
    match pid(pgid) {
        Some(pg) if pgid > 1 => Ok(pg),
        _ => Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{pgid} is not a process group to signal"))),
    }
}

/// `kill(pid, 0)`: whether the kernel knows the pid at all — zombies included, and
/// another user's process (EPERM) counts as existing.
pub fn process_exists(target: u32) -> bool {
    let Some(p) = pid(target) else { return false };
    matches!(rustix::process::test_kill_process(p), Ok(()) | Err(rustix::io::Errno::PERM))
}

/// `kill(pid, sig)`. ESRCH is an error here (the caller asked about one process).
pub fn signal_process(target: u32, sig: Signal) -> io::Result<()> {
    let p = pid(target).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("pid {target}")))?;
    Ok(rustix::process::kill_process(p, sig)?)
}

/// Sends `sig` to this process (a failpoint's stop, a crash job's kill), so that it has
/// taken effect on the calling thread by the time this returns.
///
/// A process-directed signal is handled by whichever thread the kernel picks, and the
/// caller may run on for a while before that thread starts the group stop: under load,
/// long enough for a `stop` failpoint's thread to carry on and write what the stop was
/// meant to hold back. On Linux, `kill` given the caller's thread id still signals the
/// whole process but makes the caller the thread that takes the signal, on its way out of
/// the system call. macOS offers that only through `pthread_kill`, raw FFI, so there
/// the signal is process-directed and a stop may lag by a scheduling delay.
pub fn signal_self(sig: Signal) {
    // Our own pid (and thread id) is always valid and signalling ourselves is permitted.
    let _ = rustix::process::kill_process(os::own_signal_target(), sig);
}

/// A pipe with both ends close-on-exec: atomically on Linux (`pipe2`); on macOS, which
/// has no `pipe2`, `pipe` then `FD_CLOEXEC` on each end — callers fork only from the one
/// thread that makes these pipes (see `children.rs`).
pub fn cloexec_pipe() -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    os::cloexec_pipe()
}

/// Asks the kernel to SIGKILL this process when the thread that forked it exits (Linux
/// `PR_SET_PDEATHSIG`). `Ok(false)` where there is no such mechanism (macOS).
pub fn kill_me_when_parent_dies() -> io::Result<bool> {
    os::kill_me_when_parent_dies()
}

/// Milliseconds on a clock that counts time asleep and never steps, comparable across
/// processes of one boot: Linux `CLOCK_BOOTTIME`; macOS `CLOCK_MONOTONIC_RAW`
/// (`mach_continuous_time`: Darwin's `CLOCK_MONOTONIC` is derived from the wall clock).
pub fn boot_clock_ms() -> i64 {
    os::boot_clock_ms()
}

/// Fills `buf` from the operating system's random source.
pub fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    getrandom::fill(buf).map_err(|e| io::Error::other(format!("no randomness from the operating system: {e}")))
}
