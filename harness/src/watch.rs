//! Waiting on state that changes under a mutex: the process records of a scenario
//! (`exec::ctx`) and of a power-loss sandbox (`powersweep::sandbox`), which the threads
//! reading the processes' output update and announce through a condvar.

use std::sync::{Condvar, MutexGuard};
use std::time::{Duration, Instant};

/// Waits until `ready` answers from the state `st` guards, or `deadline` passes
/// (`None`). Wakes on every `changed` notification and at least every `poll`, so
/// conditions on what does not notify (files, the database) are asked again.
pub(crate) fn wait_until<S, T>(
    mut st: MutexGuard<'_, S>,
    changed: &Condvar,
    deadline: Instant,
    poll: Duration,
    mut ready: impl FnMut(&S) -> Option<T>,
) -> Option<T> {
    loop {
        if let Some(v) = ready(&st) {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        st = changed.wait_timeout(st, (deadline - now).min(poll)).unwrap_or_else(|e| e.into_inner()).0;
    }
}
