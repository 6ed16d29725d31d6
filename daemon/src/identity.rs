//! Process identity: pid + host + boot id + process start time.
//!
//! A pid alone is not an identity: pids are reused, and after a reboot every old pid is
//! meaningless. The leader row, `status`, `doctor` and (later) the child-group checks all
//! ask "is *that* process still alive?" through [`liveness`]. Zombies count as dead: a
//! killed process whose parent has not reaped it yet still answers `kill(pid, 0)`.
//!
//! Linux reads `/proc/sys/kernel/random/boot_id` and field 22 (`starttime`, clock ticks
//! since boot) of `/proc/<pid>/stat`. macOS reads `kern.bootsessionuuid` with
//! `sysctlbyname` and `proc_pidinfo(PROC_PIDTBSDINFO)` for the start time and the
//! zombie state; both are in libSystem, so nothing links against Apple frameworks.

use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

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

#[cfg(target_os = "linux")]
fn pid_namespace() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/pid").ok().map(|m| m.ino())
}

/// macOS has no pid namespaces.
#[cfg(not(target_os = "linux"))]
fn pid_namespace() -> Option<u64> {
    None
}

/// The host name, as `gethostname(2)` reports it.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for `buf.len()` bytes; gethostname NUL-terminates
    // within it or truncates, and we stop at the first NUL either way.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::from("unknown-host");
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(target_os = "linux")]
fn read_boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| String::from("unknown-boot"))
}

/// Reads `/proc/<pid>/stat`: state (field 3) and starttime (field 22). `Ok(None)`: no
/// such process; `Err`: the kernel would not say (no /proc, hidepid, unparseable).
#[cfg(target_os = "linux")]
pub fn proc_state(pid: u32) -> std::io::Result<Option<ProcState>> {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => parse_linux_stat(&stat)
            .map(Some)
            .ok_or_else(|| std::io::Error::other(format!("unparseable /proc/{pid}/stat"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The command name (field 2) is in parentheses and may itself contain spaces and
/// parentheses, so fields are counted from the last `)`.
#[cfg(any(target_os = "linux", test))]
fn parse_linux_stat(stat: &str) -> Option<ProcState> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_ascii_whitespace();
    let state = fields.next()?; // field 3
    let start_time = fields.nth(18)?.parse().ok()?; // field 22
    Some(ProcState { start_time, zombie: state == "Z" || state == "X" })
}

#[cfg(target_os = "macos")]
fn read_boot_id() -> String {
    let name = c"kern.bootsessionuuid";
    let mut buf = [0u8; 64];
    let mut len = buf.len();
    // SAFETY: `name` is NUL-terminated; `buf`/`len` describe a writable buffer; no new
    // value is set (null, 0).
    let rc = unsafe { libc::sysctlbyname(name.as_ptr(), buf.as_mut_ptr().cast(), &mut len, std::ptr::null_mut(), 0) };
    if rc != 0 {
        return String::from("unknown-boot");
    }
    let end = buf[..len].iter().position(|&b| b == 0).unwrap_or(len);
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// `proc_pidinfo(PROC_PIDTBSDINFO)`. `Ok(None)` only for ESRCH; anything else (EPERM
/// for another user's process, say) is `Err`, which callers treat as Unknown.
#[cfg(target_os = "macos")]
pub fn proc_state(pid: u32) -> std::io::Result<Option<ProcState>> {
    // SAFETY: proc_bsdinfo is plain old data; all-zero is a valid value.
    let mut info: libc::proc_bsdinfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::proc_bsdinfo>() as libc::c_int;
    // SAFETY: `info` is a writable proc_bsdinfo of exactly `size` bytes.
    let n = unsafe {
        libc::proc_pidinfo(
            pid as libc::c_int,
            libc::PROC_PIDTBSDINFO,
            0,
            (&mut info as *mut libc::proc_bsdinfo).cast(),
            size,
        )
    };
    if n != size {
        let err = std::io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ESRCH) => Ok(None),
            _ => Err(err),
        };
    }
    Ok(Some(ProcState {
        start_time: info.pbi_start_tvsec * 1_000_000 + info.pbi_start_tvusec,
        zombie: info.pbi_status == libc::SZOMB,
    }))
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
compile_error!("homerd supports Linux and macOS only");

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

    #[test]
    fn stat_parsing_survives_odd_command_names() {
        let line = "4242 (a (weird) name) Z 1 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 0 0";
        let st = parse_linux_stat(line).unwrap();
        assert_eq!(st, ProcState { start_time: 987654, zombie: true });
        assert!(parse_linux_stat("garbage").is_none());
    }
}
