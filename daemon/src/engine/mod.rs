//! The job engine: the coordinator (decisions, no I/O) over a [`store::JobStore`].
//! The runner (`crate::runner`) is the I/O layer around it.

pub mod coordinator;
pub mod store;
