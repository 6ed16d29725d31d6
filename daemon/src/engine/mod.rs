//! The job engine: the coordinator (decisions, no I/O) over a [`jobstore::JobStore`],
//! and the in-memory store its tests run it on. The runner (`crate::runner`) is the I/O
//! layer around it; the daemon's store is `crate::sqlite::jobstore::SqliteStore`.

pub mod coordinator;
pub mod jobstore;
pub mod memory;
