//! The daemon's open-file limit (`RLIMIT_NOFILE`).
//!
//! Every running `exec` job costs the daemon descriptors (its two run logs, the two
//! pipes it drains, the release pipe while it starts), on top of the database, the lock
//! file and the log. Supervisors start services with a low *soft* limit (systemd 1024,
//! launchd 256) and a much higher hard one; a daemon that stays at the soft limit runs
//! out under a high `concurrency` and fails job starts that have nothing to do with the
//! jobs. So the daemon raises its soft limit to the hard limit at start ([`raise`]) —
//! and hands its children the soft limit it was started with ([`child_soft_limit`]):
//! programs that still use `select(2)` misbehave with descriptors above 1023, which is
//! why the low soft default exists. What remains, a hard limit too low for the load, is
//! met by `children::is_resource_error` and the coordinator's back-off: such starts are
//! requeued, never charged to the job.
//!
//! macOS: the hard limit is often `RLIM_INFINITY`, but the kernel refuses a soft limit
//! above `OPEN_MAX` (10240) there, so that is the target.

use std::sync::atomic::{AtomicU64, Ordering};

/// The soft limit the daemon was started with, once [`raise`] changed it (0: unchanged).
static ORIGINAL_SOFT: AtomicU64 = AtomicU64::new(0);

/// What [`raise`] found and did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Raised {
    pub before: u64,
    pub after: u64,
    pub hard: u64,
}

/// `RLIMIT_NOFILE` as (soft, hard); `None` (unlimited) as `u64::MAX`.
fn get() -> (u64, u64) {
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    (lim.current.unwrap_or(u64::MAX), lim.maximum.unwrap_or(u64::MAX))
}

fn set(soft: u64, hard: u64) -> std::io::Result<()> {
    let unlimited = |v: u64| (v != u64::MAX).then_some(v);
    let lim = rustix::process::Rlimit { current: unlimited(soft), maximum: unlimited(hard) };
    Ok(rustix::process::setrlimit(rustix::process::Resource::Nofile, lim)?)
}

/// Raises the soft `RLIMIT_NOFILE` as far as the hard limit allows.
pub fn raise() -> std::io::Result<Raised> {
    let (before, hard) = get();
    #[cfg(target_os = "macos")]
    let target = hard.min(10_240);
    #[cfg(not(target_os = "macos"))]
    let target = hard;
    if before >= target {
        return Ok(Raised { before, after: before, hard });
    }
    set(target, hard)?;
    ORIGINAL_SOFT.store(before, Ordering::SeqCst);
    Ok(Raised { before, after: target, hard })
}

/// The soft limit a job child should get back (`None`: the daemon did not change it).
pub fn child_soft_limit() -> Option<u64> {
    match ORIGINAL_SOFT.load(Ordering::SeqCst) {
        0 => None,
        soft => Some(soft),
    }
}

/// In a job's shim before it execs the job: puts the soft limit back to `soft` (never
/// above the hard limit).
pub fn restore_in_child(soft: u64) -> std::io::Result<()> {
    let (_, hard) = get();
    set(soft.min(hard), hard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_rises_to_the_hard_one_and_children_get_the_old_one_back() {
        let (start, _) = get();
        let raised = raise().unwrap();
        assert_eq!(raised.before, start);
        let (now, _) = get();
        assert_eq!(now, raised.after);
        assert!(raised.after >= raised.before && raised.after <= raised.hard);
        if raised.after > raised.before {
            assert_eq!(child_soft_limit(), Some(raised.before));
        }
        // Raising again changes nothing.
        let again = raise().unwrap();
        assert_eq!(again.before, again.after);
    }
}
