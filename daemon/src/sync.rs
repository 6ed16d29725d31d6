//! The synchronisation primitives the coordinator uses: `loom`'s under the project's
//! model-checking cfg (`--cfg homer_loom`), `std`'s otherwise. Not plain `--cfg loom`:
//! tokio reacts to that and its loom paths need a crate it only has as a dev-dependency.

#[cfg(homer_loom)]
pub use loom::sync::{Arc, Mutex, MutexGuard};
#[cfg(homer_loom)]
pub use loom::thread;

#[cfg(not(homer_loom))]
pub use std::sync::{Arc, Mutex, MutexGuard};
#[cfg(not(homer_loom))]
pub use std::thread;

/// Locks a mutex, ignoring poisoning: every critical section leaves the state valid.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
