//! Whether a process (or a process group) still runs. Linux reads `/proc/<pid>/stat`;
//! macOS, without `/proc`, asks the kernel with signal 0.
//!
//! A zombie is dead here: it runs nothing and holds no lock, and PID 1 on a busy machine
//! may take its time to reap an orphan.

/// The fields of `/proc/<pid>/stat` the callers need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// `R`, `S`, `D`, `T`, `Z` (zombie), `X` (dead), ...
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
}

impl Stat {
    /// Exited (a zombie, or on its way out).
    pub fn is_dead(&self) -> bool {
        self.state == 'Z' || self.state == 'X'
    }
}

/// Parses a `/proc/<pid>/stat` line. The command name is in parentheses and may contain
/// spaces and parentheses itself: the fields after it start after the *last* `)`.
fn parse(text: &str) -> Option<Stat> {
    let mut fields = text[text.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some(Stat { state, ppid, pgrp })
}

/// `/proc/<pid>/stat` (Linux); `None` if there is no such process (or no `/proc`).
pub fn stat(pid: i32) -> Option<Stat> {
    parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Every process in `/proc` with its stat (Linux; empty elsewhere).
pub fn all_stats() -> Vec<(i32, Stat)> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter_map(|pid| Some((pid, stat(pid)?)))
        .collect()
}

/// The process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    if cfg!(target_os = "linux") {
        stat(pid).is_some_and(|s| !s.is_dead())
    } else {
        // SAFETY: signal 0 only checks existence. macOS counts a zombie as present; the
        // callers there reap their own children before asking.
        pid > 0 && (unsafe { libc::kill(pid, 0) } == 0 || exists_but_not_ours())
    }
}

/// Some member of process group `pgid` exists and is not a zombie.
pub fn group_alive(pgid: i32) -> bool {
    if cfg!(target_os = "linux") {
        all_stats().iter().any(|(_, s)| s.pgrp == pgid && !s.is_dead())
    } else {
        // SAFETY: as in `alive`, for the group.
        pgid > 1 && (unsafe { libc::kill(-pgid, 0) } == 0 || exists_but_not_ours())
    }
}

/// The `kill(_, 0)` that just failed did so because the target exists under another uid.
fn exists_but_not_ours() -> bool {
    std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fields_after_the_last_parenthesis_are_read() {
        let s = parse("42 (a) b (c)) S 7 42 42 0 -1 4194560").unwrap();
        assert_eq!(s, Stat { state: 'S', ppid: 7, pgrp: 42 });
        assert!(parse("garbage").is_none());
        assert!(parse("1 (x) Z").is_none(), "a short line is unreadable, not zeros");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_alive_and_in_its_group() {
        let me = std::process::id() as i32;
        assert!(alive(me));
        // SAFETY: getpgrp has no preconditions.
        let pgrp = unsafe { libc::getpgrp() };
        assert_eq!(stat(me).unwrap().pgrp, pgrp);
        assert!(group_alive(pgrp));
        assert!(all_stats().iter().any(|(pid, _)| *pid == me));
    }
}
