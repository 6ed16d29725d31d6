//! Process identity: pid + host + boot id + process start time.
//!
//! A pid alone is not an identity: pids are reused, and after a reboot every old pid is
//! meaningless. The leader row, `status`, `doctor` and (later) the child-group checks all
//! ask "is *that* process still alive?" through [`liveness`]. Zombies count as dead: a
//! killed process whose parent has not reaped it yet still answers `kill(pid, 0)`.
//!
//! The facts come from [`crate::platform`]: Linux reads `/proc/sys/kernel/random/boot_id`
//! and field 22 (`starttime`, clock ticks since boot) of `/proc/<pid>/stat`; macOS reads
//! `kern.bootsessionuuid` and `proc_pidinfo(PROC_PIDTBSDINFO)`. This module decides what
//! they mean.

use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

use crate::platform;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessIdentity {
    pub pid: u32,
    pub host: String,
    /// The pid space the pid is valid in: the kernel boot id, plus on Linux the pid
    /// namespace (`<boot id>/pidns:<inode>`), so two containers on one kernel — where
    /// both daemons may be PID 1 — never judge each other by the wrong process.
    pub boot_id: String,
    /// Platform-specific start stamp: Linux clock ticks since boot, macOS microseconds
    /// since the epoch. Only ever compared for equality within one pid space.
    pub start_time: u64,
}

/// What can be said about a recorded process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// The same process (pid and start time match) is running in this pid space.
    Alive,
    /// Gone: no such pid, a zombie, another process reusing the pid, or an earlier boot.
    Dead,
    /// Cannot be checked from here (another host or pid namespace, or the kernel would
    /// not say): callers judge it by how recently it was seen, never as dead.
    Unknown,
}

/// State of a pid as the kernel reports it now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcState {
    pub start_time: u64,
    pub zombie: bool,
}

/// The current process's identity. Fails if the kernel will not tell our own start
/// time (no `/proc`, `hidepid`): without it no later start could check us, so the
/// daemon refuses to run rather than be judged dead while alive.
pub fn current() -> std::io::Result<ProcessIdentity> {
    let pid = std::process::id();
    let start_time = match proc_state(pid)? {
        Some(state) => state.start_time,
        None => return Err(std::io::Error::other("the kernel does not report this process's start time")),
    };
    Ok(ProcessIdentity { pid, host: hostname(), boot_id: pid_space().to_owned(), start_time })
}

/// Whether the recorded process is still the one running under its pid.
pub fn liveness(id: &ProcessIdentity) -> Liveness {
    if id.boot_id != pid_space() {
        let recorded_boot = id.boot_id.split('/').next().unwrap_or_default();
        return if recorded_boot == boot_id() {
            // This kernel boot, another pid namespace: its pids mean nothing here.
            Liveness::Unknown
        } else if id.host == hostname() {
            // Same machine (by name), earlier boot: every process of that boot is gone.
            Liveness::Dead
        } else {
            Liveness::Unknown
        };
    }
    match proc_state(id.pid) {
        Ok(Some(state)) if !state.zombie && state.start_time == id.start_time => Liveness::Alive,
        Ok(_) => Liveness::Dead,
        Err(_) => Liveness::Unknown,
    }
}

/// Whether a recorded pid space belongs to this kernel boot (its monotonic stamps are
/// then comparable with ours).
pub fn same_boot(recorded_pid_space: &str) -> bool {
    recorded_pid_space.split('/').next() == Some(boot_id())
}

/// This boot's identifier (cached: it cannot change while we run).
pub fn boot_id() -> &'static str {
    static BOOT_ID: OnceLock<String> = OnceLock::new();
    BOOT_ID.get_or_init(read_boot_id)
}

/// This process's pid space (see [`ProcessIdentity::boot_id`]).
pub fn pid_space() -> &'static str {
    static SPACE: OnceLock<String> = OnceLock::new();
    SPACE.get_or_init(|| match pid_namespace() {
        Some(ns) => format!("{}/pidns:{ns}", boot_id()),
        None => boot_id().to_owned(),
    })
}

/// The host name, as `gethostname(2)` reports it.
pub fn hostname() -> String {
    platform::hostname()
}

fn pid_namespace() -> Option<u64> {
    platform::pid_namespace()
}

fn read_boot_id() -> String {
    platform::boot_id()
}

/// The state of `pid` (start time, zombie or not) from the platform's one process-table
/// reader. `Ok(None)`: no such process; `Err`: the kernel would not say (no /proc,
/// hidepid, unparseable).
pub fn proc_state(pid: u32) -> std::io::Result<Option<ProcState>> {
    Ok(platform::stat(pid)?.map(|st| ProcState { start_time: st.start_time, zombie: st.zombie }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn current_process_is_alive() {
        let me = current().unwrap();
        assert_eq!(me.pid, std::process::id());
        assert_ne!(me.start_time, 0);
        assert_eq!(liveness(&me), Liveness::Alive);
    }

    #[test]
    fn reused_pid_with_another_start_time_is_dead() {
        let mut me = current().unwrap();
        me.start_time += 1;
        assert_eq!(liveness(&me), Liveness::Dead);
    }

    #[test]
    fn another_boot_is_dead_and_another_host_or_namespace_unknown() {
        let mut me = current().unwrap();
        me.boot_id = String::from("some-earlier-boot");
        assert_eq!(liveness(&me), Liveness::Dead);
        me.host = String::from("elsewhere.invalid");
        assert_eq!(liveness(&me), Liveness::Unknown);
        // Same boot id but another host name (a macOS rename): still this machine.
        let mut renamed = current().unwrap();
        renamed.host = String::from("renamed.invalid");
        assert_eq!(liveness(&renamed), Liveness::Alive);
        // This kernel boot, another pid namespace: cannot be checked, never "dead".
        let mut other_ns = current().unwrap();
        other_ns.boot_id = format!("{}/pidns:1", boot_id());
        assert_eq!(liveness(&other_ns), Liveness::Unknown);
        assert!(same_boot(&other_ns.boot_id));
    }

    #[test]
    fn zombie_and_reaped_children_are_dead() {
        let mut child = Command::new("sleep").arg("30").stdin(Stdio::null()).spawn().unwrap();
        let pid = child.id();
        let state = proc_state(pid).unwrap().expect("child visible");
        let id =
            ProcessIdentity { pid, host: hostname(), boot_id: pid_space().to_owned(), start_time: state.start_time };
        assert_eq!(liveness(&id), Liveness::Alive);
        child.kill().unwrap();
        // Not reaped yet: a zombie. Wait until the kernel reports it as one (the kill is
        // asynchronous), bounded by a generous deadline.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while liveness(&id) != Liveness::Dead {
            assert!(std::time::Instant::now() < deadline, "killed child never became a zombie");
            std::thread::yield_now();
        }
        child.wait().unwrap();
        assert_eq!(liveness(&id), Liveness::Dead);
    }
}
