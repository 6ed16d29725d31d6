//! Whether a process (or a process group) still runs, from homerd's own process-table
//! reader (`homerd::platform`: `/proc/<pid>/stat` on Linux, `proc_pidinfo` on macOS), so
//! the tests, the harness and the bench judge processes exactly as the daemon does.
//!
//! A zombie is dead here: it runs nothing and holds no lock, and PID 1 on a busy machine
//! may take its time to reap an orphan.

use homerd::platform;
pub use homerd::platform::Stat;

/// The state of `pid`; `None` if there is no such process or the kernel would not say.
pub fn stat(pid: i32) -> Option<Stat> {
    platform::stat(u32::try_from(pid).ok()?).ok().flatten()
}

/// Every process the kernel lists, with its state (empty if it cannot be listed).
pub fn all_stats() -> Vec<(i32, Stat)> {
    platform::all_stats()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(pid, st)| Some((i32::try_from(pid).ok()?, st)))
        .collect()
}

/// The process exists and is not a zombie. A process whose state the kernel will not
/// tell us (another user's, on macOS) is alive if it exists.
pub fn alive(pid: i32) -> bool {
    let Ok(pid) = u32::try_from(pid) else { return false };
    match platform::stat(pid) {
        Ok(Some(st)) => !st.zombie,
        Ok(None) => false,
        Err(_) => platform::process_exists(pid),
    }
}

/// Some member of process group `pgid` exists and is not a zombie. If the members cannot
/// be listed, the kernel's own answer (which counts zombies) decides.
pub fn group_alive(pgid: i32) -> bool {
    let Ok(pgid) = u32::try_from(pgid) else { return false };
    pgid > 1 && platform::group_has_live_member(pgid).unwrap_or_else(|_| platform::group_exists(pgid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_in_its_group() {
        let me = std::process::id() as i32;
        assert!(alive(me));
        let pgrp = platform::own_process_group();
        assert_eq!(stat(me).unwrap().pgrp, pgrp);
        assert!(group_alive(pgrp as i32));
        assert!(all_stats().iter().any(|(pid, _)| *pid == me));
        assert!(!alive(-1) && !group_alive(1), "nonsense ids are never alive");
    }
}
