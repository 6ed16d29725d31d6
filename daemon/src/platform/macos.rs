//! macOS: no `/proc`; libSystem's `proc_pidinfo`, `proc_listpids` and `sysctlbyname`
//! (all in libSystem, so nothing links against Apple frameworks), and
//! `clock_gettime(CLOCK_MONOTONIC_RAW)`. `rustix` does not wrap these (it has no
//! `CLOCK_MONOTONIC_RAW` on Apple targets), so they are raw `libc` calls, each with its
//! `SAFETY` reasoning.

use std::collections::HashSet;
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use super::Stat;

/// `<sys/proc_info.h>`; not exported by the libc crate.
const PROC_ALL_PIDS: u32 = 1;
const PROC_PGRP_ONLY: u32 = 2;

/// `kern.bootsessionuuid`: a fresh identifier per boot.
pub fn boot_id() -> String {
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

/// macOS has no pid namespaces.
pub fn pid_namespace() -> Option<u64> {
    None
}

/// No `/proc/self/exe`: the path the executable was started from (a replaced or removed
/// binary needs a daemon restart before new `exec` jobs can start).
pub fn shim_program() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("homerd"))
}

/// The job shim's program: `homerd-shim` beside this executable when it is there and
/// carries this build's [`crate::shim::MARK`] (no `/proc/self/fd` to hold it open by, so,
/// as for [`shim_program`], a replaced file is what runs), else [`shim_program`], whose
/// `job-shim` subcommand does the same.
pub fn job_shim_program() -> PathBuf {
    match job_shim() {
        (shim, Ok(true)) => shim,
        _ => shim_program(),
    }
}

/// Why a `homerd-shim` beside this executable is not used, if one is there and is not.
pub fn job_shim_unusable() -> Option<String> {
    match job_shim() {
        (_, Ok(_)) => None,
        (shim, Err(why)) => Some(format!("{}: {why}", shim.display())),
    }
}

/// The shim's path and `Ok(true)` to use it, `Ok(false)` for none there, `Err` for one not
/// usable. Looked up at each call (each job start); the file is read for its mark only
/// when it is new or changed (its inode, size or modification time), which a `stat` tells.
fn job_shim() -> (PathBuf, Result<bool, String>) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    type Seen = ((u64, u64, u64, i64, i64), Result<bool, String>);
    static SEEN: std::sync::Mutex<Option<Seen>> = std::sync::Mutex::new(None);
    let shim = shim_program().with_file_name(super::JOB_SHIM_FILE);
    let meta = match std::fs::metadata(&shim) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return (shim, Ok(false)),
        Err(e) => return (shim, Err(e.to_string())),
    };
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return (shim, Err(String::from("not an executable file")));
    }
    let key = (meta.dev(), meta.ino(), meta.size(), meta.mtime(), meta.mtime_nsec());
    let mut seen = SEEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, verdict)) = seen.as_ref().filter(|(k, _)| *k == key) {
        return (shim, verdict.clone());
    }
    let verdict = match std::fs::File::open(&shim).and_then(|mut f| crate::shim::carries_mark(&mut f)) {
        Ok(true) => Ok(true),
        Ok(false) => {
            Err(String::from("from another build of homerd (install the homerd-shim that came with this homerd)"))
        }
        Err(e) => Err(e.to_string()),
    };
    *seen = Some((key, verdict.clone()));
    (shim, verdict)
}

/// `proc_pidinfo(PROC_PIDTBSDINFO)`. `Ok(None)` only for ESRCH; anything else (EPERM for
/// another user's process, say) is `Err`.
pub fn stat(pid: u32) -> io::Result<Option<Stat>> {
    let Ok(pid) = libc::c_int::try_from(pid) else { return Ok(None) };
    let mut info = std::mem::MaybeUninit::<libc::proc_bsdinfo>::zeroed();
    let size = std::mem::size_of::<libc::proc_bsdinfo>() as libc::c_int;
    // SAFETY: `info` is writable for exactly `size` bytes. It was zero-initialised, and
    // every bit pattern is a valid proc_bsdinfo (integers and byte arrays only), so it is
    // initialised whatever the call wrote.
    let (n, info) = unsafe {
        let n = libc::proc_pidinfo(pid, libc::PROC_PIDTBSDINFO, 0, info.as_mut_ptr().cast(), size);
        (n, info.assume_init())
    };
    if n != size {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ESRCH) => Ok(None),
            _ => Err(err),
        };
    }
    Ok(Some(Stat {
        ppid: info.pbi_ppid,
        pgrp: info.pbi_pgid,
        start_time: info.pbi_start_tvsec * 1_000_000 + info.pbi_start_tvusec,
        zombie: info.pbi_status == libc::SZOMB,
    }))
}

/// `proc_listpids(kind, arg)`, grown until the answer fits.
fn list_pids(kind: u32, arg: u32) -> io::Result<Vec<u32>> {
    let pid_size = std::mem::size_of::<libc::pid_t>();
    let mut capacity = 1024usize;
    loop {
        let mut pids: Vec<libc::pid_t> = vec![0; capacity];
        let bytes =
            libc::c_int::try_from(capacity * pid_size).map_err(|_| io::Error::other("process list too large"))?;
        // SAFETY: `pids` is writable for `bytes` bytes; proc_listpids fills at most that.
        let n = unsafe { libc::proc_listpids(kind, arg, pids.as_mut_ptr().cast(), bytes) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let count = (n as usize / pid_size).min(capacity);
        if count == capacity {
            // Possibly truncated: list again with more room.
            capacity *= 4;
            continue;
        }
        return Ok(pids[..count].iter().filter_map(|&p| u32::try_from(p).ok()).filter(|&p| p != 0).collect());
    }
}

pub fn all_stats() -> io::Result<Vec<(u32, Stat)>> {
    let mut out = Vec::new();
    for pid in list_pids(PROC_ALL_PIDS, 0)? {
        // Gone since the listing, or not ours to read: skipped.
        if let Ok(Some(stat)) = stat(pid) {
            out.push((pid, stat));
        }
    }
    Ok(out)
}

/// The group's members, minus zombies and pids gone since the listing. A member whose
/// state cannot be read counts as alive (conservative: wait longer, never re-run early).
pub fn group_has_live_member(pgid: u32) -> io::Result<bool> {
    for pid in list_pids(PROC_PGRP_ONLY, pgid)? {
        match stat(pid) {
            Ok(Some(state)) if state.zombie => {}
            Ok(None) => {}
            Ok(Some(_)) | Err(_) => return Ok(true),
        }
    }
    Ok(false)
}

/// Groups are listed one at a time here; callers check each group on its own.
pub fn live_groups(_among: &HashSet<u32>) -> Option<HashSet<u32>> {
    None
}

/// No `pipe2`: `pipe`, then close-on-exec on each end. Not atomic with respect to a fork
/// on another thread; the daemon forks only on the thread that calls this.
pub fn cloexec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = rustix::pipe::pipe()?;
    for fd in [&read, &write] {
        rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::CLOEXEC)?;
    }
    Ok((read, write))
}

/// `CLOCK_MONOTONIC_RAW`: `mach_continuous_time`, counts sleep, never steps.
pub fn boot_clock_ms() -> i64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; the clock exists on every macOS.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_RAW, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime failed on a clock the platform guarantees");
    ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000
}

/// macOS has no parent-death signal (startup recovery kills what a dead daemon left).
pub fn kill_me_when_parent_dies() -> io::Result<bool> {
    Ok(false)
}

/// Nothing to do: the shim is exec'd by its path, whose last part names the process.
pub fn name_job_shim() {}

/// The id `signal_self` sends to: the process's (see there).
pub fn own_signal_target() -> rustix::process::Pid {
    rustix::process::getpid()
}
