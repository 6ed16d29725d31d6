//! Linux: `/proc`, and system calls through `rustix` — except one raw `getpgid` in the
//! group listing, where rustix cannot return the group 0 of kernel threads.

use std::collections::HashSet;
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use super::Stat;

/// The kernel's boot id (`/proc/sys/kernel/random/boot_id`).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| String::from("unknown-boot"))
}

/// The inode of this process's pid namespace.
pub fn pid_namespace() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/pid").ok().map(|m| m.ino())
}

/// `/proc/self/exe`: resolved by the kernel at `exec` time, it names the image this
/// process runs even after the file at its path was replaced or removed.
pub fn shim_program() -> PathBuf {
    PathBuf::from("/proc/self/exe")
}

/// The job shim's program: `homerd-shim` beside this executable, opened once (the first
/// time a job starts) and exec'd through `/proc/self/fd/N` — resolved in the spawned child,
/// which has a copy of the descriptor until its `exec` succeeds — so, like
/// `/proc/self/exe`, it names the file that was there then even after an upgrade replaced
/// or removed it. Without that file (a copied `homerd` alone): [`shim_program`], whose
/// `job-shim` subcommand does the same, at the cost of exec'ing the whole daemon image.
pub fn job_shim_program() -> PathBuf {
    match held_job_shim() {
        JobShim::Held(fd) => PathBuf::from(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(fd))),
        JobShim::Absent | JobShim::Unusable(_) => shim_program(),
    }
}

/// Why a `homerd-shim` beside this executable is not used, if one is there and is not
/// (not an executable ELF file, or from another build: [`crate::shim::MARK`]).
pub fn job_shim_unusable() -> Option<String> {
    match held_job_shim() {
        JobShim::Unusable(why) => Some(why.clone()),
        JobShim::Held(_) | JobShim::Absent => None,
    }
}

fn held_job_shim() -> &'static JobShim {
    static SHIM: std::sync::OnceLock<JobShim> = std::sync::OnceLock::new();
    SHIM.get_or_init(|| match std::fs::read_link("/proc/self/exe") {
        Ok(exe) => open_job_shim(&exe),
        Err(_) => JobShim::Absent,
    })
}

enum JobShim {
    Held(OwnedFd),
    Absent,
    Unusable(String),
}

/// `homerd-shim` beside `exe`, open (close-on-exec) if it is an executable ELF file that
/// carries this build's [`crate::shim::MARK`]. A `#!` wrapper would be handed
/// `/proc/self/fd/N` as its script after that descriptor closed at the `exec`, and a shim
/// from another build may not speak this daemon's protocol: neither is used (the daemon's
/// own image is).
fn open_job_shim(exe: &std::path::Path) -> JobShim {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let path = exe.with_file_name(super::JOB_SHIM_FILE);
    let unusable = |why: &str| JobShim::Unusable(format!("{}: {why}", path.display()));
    let mut file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return JobShim::Absent,
        Err(e) => return unusable(&e.to_string()),
    };
    let executable = file.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    let mut magic = [0u8; 4];
    if !executable || file.read_exact(&mut magic).is_err() || magic != *b"\x7fELF" {
        return unusable("not an executable ELF file");
    }
    match crate::shim::carries_mark(&mut file) {
        Ok(true) => JobShim::Held(file.into()),
        Ok(false) => unusable("from another build of homerd (install the homerd-shim that came with this homerd)"),
        Err(e) => unusable(&e.to_string()),
    }
}

/// The one reader of `/proc/<pid>/stat`.
pub fn stat(pid: u32) -> io::Result<Option<Stat>> {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(line) => {
            parse_stat(&line).map(Some).ok_or_else(|| io::Error::other(format!("unparseable /proc/{pid}/stat")))
        }
        // Gone (or exited since the directory was listed).
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Parses a `/proc/<pid>/stat` line: state (field 3), ppid (4), pgrp (5), num_threads
/// (20), starttime (22). The command name (field 2) is in parentheses and may itself
/// contain spaces and parentheses, so fields are counted from the *last* `)`. A short
/// line is unreadable, never zeros.
///
/// A process whose main thread has exited while its other threads run shows state `Z`
/// too (`ps` says `Zl`): it still runs code, so it is a zombie only once it is down to
/// that one thread. (macOS has no such state: there a process is a zombie only when all
/// its threads are gone.)
pub(crate) fn parse_stat(line: &str) -> Option<Stat> {
    let mut fields = line[line.rfind(')')? + 1..].split_ascii_whitespace();
    let state = fields.next()?; // field 3
    let ppid = fields.next()?.parse().ok()?; // field 4
    let pgrp = fields.next()?.parse().ok()?; // field 5
    let threads: u32 = fields.nth(14)?.parse().ok()?; // field 20
    let start_time = fields.nth(1)?.parse().ok()?; // field 22
    let exited = state == "X" || (state == "Z" && threads <= 1);
    Some(Stat { ppid, pgrp, start_time, zombie: exited })
}

pub fn all_stats() -> io::Result<Vec<(u32, Stat)>> {
    let mut out = Vec::new();
    for_each_process(|pid, stat| {
        out.push((pid, stat));
        false
    })?;
    Ok(out)
}

/// Calls `f` with every process in `/proc` until it returns `true`.
fn for_each_process(mut f: impl FnMut(u32, Stat) -> bool) -> io::Result<()> {
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if let Some(stat) = stat(pid)? {
            if f(pid, stat) {
                break;
            }
        }
    }
    Ok(())
}

/// Calls `f` with every process in a group `wanted` accepts, until it returns `true`.
/// Each process's group is asked of the kernel first (`getpgid`, one system call); only
/// members of a wanted group have their `/proc/<pid>/stat` read, which the kernel formats
/// field by field — a listing among hundreds of unrelated processes (or zombies init has
/// not reaped yet) then costs little more than reading the directory.
fn for_each_member(wanted: impl Fn(u32) -> bool, mut f: impl FnMut(u32, Stat) -> bool) -> io::Result<()> {
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(raw) = libc::pid_t::try_from(pid) else { continue };
        // Not rustix's `getpgid`: its `Pid` cannot hold the group 0 of kernel threads.
        // SAFETY: getpgid(2) takes a plain integer and touches no memory of ours.
        let pgid = unsafe { libc::getpgid(raw) };
        if pgid >= 0 && !wanted(pgid.unsigned_abs()) {
            continue;
        }
        // Otherwise a member, or not answered (gone since the directory was read, which
        // its stat read then says too): its stat line decides.
        if let Some(stat) = stat(pid)? {
            if wanted(stat.pgrp) && f(pid, stat) {
                break;
            }
        }
    }
    Ok(())
}

pub fn group_has_live_member(pgid: u32) -> io::Result<bool> {
    let mut alive = false;
    for_each_member(
        |g| g == pgid,
        |_, stat| {
            alive = !stat.zombie;
            alive
        },
    )?;
    Ok(alive)
}

pub fn live_groups(among: &HashSet<u32>) -> Option<HashSet<u32>> {
    let mut live = HashSet::new();
    for_each_member(
        |g| among.contains(&g),
        |_, stat| {
            if !stat.zombie {
                live.insert(stat.pgrp);
            }
            false
        },
    )
    .ok()?;
    Some(live)
}

pub fn cloexec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
}

pub fn boot_clock_ms() -> i64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000
}

pub fn kill_me_when_parent_dies() -> io::Result<bool> {
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
    Ok(true)
}

/// The job shim's process name (`comm`, what `top` and `ps -o comm` show): exec'd
/// through `/proc/self/fd/N` ([`job_shim_program`]), the kernel named it `N`.
pub fn name_job_shim() {
    let _ = rustix::thread::set_name(c"homerd-shim");
}

/// The id `signal_self` sends to: this thread's (see there).
pub fn own_signal_target() -> rustix::process::Pid {
    rustix::thread::gettid()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only an executable ELF `homerd-shim` beside the executable is held open: a `#!`
    /// wrapper, a non-executable file or none at all leaves the daemon's own image.
    #[test]
    fn the_job_shim_is_an_executable_elf_file_of_this_build_or_nothing() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("homerd");
        let shim = dir.path().join(super::super::JOB_SHIM_FILE);
        let held = |exe: &std::path::Path| matches!(open_job_shim(exe), JobShim::Held(_));
        let unusable = |exe: &std::path::Path, why: &str| match open_job_shim(exe) {
            JobShim::Unusable(said) => assert!(said.contains(why), "{said}"),
            _ => panic!("{why}: used or absent"),
        };
        assert!(matches!(open_job_shim(&exe), JobShim::Absent), "no file");
        std::fs::write(&shim, "#!/bin/sh\nexec homerd \"$@\"\n").unwrap();
        std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
        unusable(&exe, "not an executable ELF file");
        // This test's own image carries the mark (the library's check names it).
        std::fs::copy("/proc/self/exe", &shim).unwrap();
        std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o644)).unwrap();
        unusable(&exe, "not an executable ELF file");
        std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(held(&exe), "an executable ELF file of this build");
        // An executable ELF file without the mark: another build's shim, or anything else.
        std::fs::copy("/bin/true", &shim).unwrap();
        unusable(&exe, "from another build");
    }

    #[test]
    fn stat_parsing_survives_odd_command_names() {
        let line = "4242 (a (weird) name) Z 1 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 0 0";
        let st = parse_stat(line).unwrap();
        assert_eq!(st, Stat { ppid: 1, pgrp: 4242, start_time: 987654, zombie: true });
        let running = "42 (a) b (c)) S 7 40 40 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 55 0 0";
        assert_eq!(parse_stat(running).unwrap(), Stat { ppid: 7, pgrp: 40, start_time: 55, zombie: false });
        assert!(parse_stat("garbage").is_none());
        assert!(parse_stat("1 (x) Z 1 1").is_none(), "a short line is unreadable, not zeros");
        // A main thread that exited (pthread_exit) while another thread runs: state Z,
        // two threads (the exited leader is counted until the last thread is gone).
        let leader_gone = "77 (job) Z 7 77 77 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 2 0 99 0 0";
        assert_eq!(parse_stat(leader_gone).unwrap(), Stat { ppid: 7, pgrp: 77, start_time: 99, zombie: false });
    }

    #[test]
    fn this_process_is_listed_alive_in_its_group() {
        let me = std::process::id();
        let st = stat(me).unwrap().expect("our own stat");
        assert!(!st.zombie);
        assert_eq!(st.pgrp, super::super::own_process_group());
        assert!(group_has_live_member(st.pgrp).unwrap());
        assert!(live_groups(&HashSet::from([st.pgrp, u32::MAX])).unwrap() == HashSet::from([st.pgrp]));
        assert!(live_groups(&HashSet::new()).unwrap().is_empty());
        assert!(all_stats().unwrap().iter().any(|(pid, _)| *pid == me));
    }
}
