//! The `JobStore` trait: the queue operations the coordinator calls, synchronous, in the
//! job vocabulary (`crate::job`) and nothing else. Two implementations mean the same:
//! `crate::sqlite::jobstore::SqliteStore` (the daemon's, over the single writer) and
//! [`MemoryStore`](super::memory::MemoryStore) (for the coordinator's unit and loom
//! tests); one suite runs against both (in `sqlite::jobstore`).
//!
//! Every write about a claimed job names it by its [`ClaimRef`] and is guarded on all of
//! it (epoch, id, token): one that is not the job's current claim changes nothing.

use crate::job::{
    ChildIdentity, ClaimLimits, ClaimRef, Claimed, Epoch, FailOutcome, JobId, OrphanPolicy, Recovered, WallMs,
};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The epoch is no longer ours: nothing was written, and nothing ever will be.
    #[error("fenced")]
    Fenced,
    /// The write could not be made now (busy, I/O); it may succeed later.
    #[error("{0}")]
    Unavailable(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// What a run's end records.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    /// The run succeeded: `completed`.
    Complete,
    /// The run failed: `pending` at `retry_at` while attempts remain (and `retryable`),
    /// else `failed`. The error joins the job's history.
    Fail { error: String, retryable: bool, retry_at: WallMs },
    /// Given back at shutdown (or while standing down): `pending`, the attempt given back
    /// and counted as an interruption; past `max_interruptions`, `failed`.
    Release { max_interruptions: u32 },
    /// A lost lease: requeued with no outcome recorded (the attempt stays counted; with
    /// none left, `failed`).
    Abandon { reason: String },
    /// The owner records an operator's cancellation (its run already stopped).
    Cancel,
    /// The daemon could not start the run for its own reasons: back to pending at
    /// `retry_at`, the attempt given back, no interruption counted.
    Requeue { reason: String, retry_at: WallMs },
}

/// What a [`Record`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// The claim was not the job's current one: nothing changed.
    NotOwner,
    Completed,
    /// `Fail`, `Release`, `Abandon`, `Cancel` or `Requeue` ended the run this way.
    Ended(FailOutcome),
}

/// One member of [`JobStore::record_many`]: which claim, and what to record for it.
pub type RecordItem = (ClaimRef, Record);

pub trait JobStore: Send {
    /// Claims what is ready under `limits` at `now`, under `epoch`.
    fn claim(&mut self, epoch: Epoch, worker: &str, limits: &ClaimLimits, now: WallMs) -> StoreResult<Vec<Claimed>>;
    /// Renews `held` (id, token) under `epoch`; returns the ids still ours.
    fn renew(&mut self, epoch: Epoch, held: &[(JobId, String)], now: WallMs) -> StoreResult<Vec<JobId>>;
    /// Records a held child's identity on its run, before it is released. `false`: not
    /// the claim's job any more.
    fn record_child(&mut self, claim: &ClaimRef, child: &ChildIdentity) -> StoreResult<bool>;
    /// [`JobStore::record_child`] for several held children, each guarded on its own
    /// claim; one answer per item, in order. The SQLite store commits them in one
    /// transaction.
    fn record_children(&mut self, items: &[(ClaimRef, ChildIdentity)]) -> Vec<StoreResult<bool>> {
        items.iter().map(|(claim, child)| self.record_child(claim, child)).collect()
    }
    /// Records the end of several runs, in order, each guarded on its own claim; one
    /// result per item. The SQLite store commits them in one transaction (one fsync for
    /// every run that ended together).
    fn record_many(&mut self, items: &[RecordItem], now: WallMs) -> Vec<StoreResult<Recorded>>;
    /// The children recorded by runs still marked running (to kill before recovery).
    fn orphan_children(&mut self, epoch: Epoch) -> StoreResult<Vec<(JobId, ChildIdentity)>>;
    /// Startup recovery: with `epoch` ours, every running job is an orphan, pending again
    /// at `policy.retry_at` (or `failed` with no attempts left). One whose program was never
    /// released gets its attempt back as an interruption, up to `policy.max_interruptions`.
    fn recover(&mut self, epoch: Epoch, policy: OrphanPolicy, now: WallMs) -> StoreResult<Recovered>;
}
