//! The engine's [`JobStore`] on SQLite: every call is one operation on the group-commit
//! writer, so its transaction checks the epoch first, and the statements ([`jobs`]) match
//! epoch + token. The shared suite below (`crate::engine::suite`) holds every store to the same semantics.

use crate::engine::jobstore::{JobStore, Record, RecordItem, Recorded, StoreError, StoreResult};
use crate::job::{
    ChildIdentity, ClaimLimits, ClaimRef, Claimed, Epoch, FailOutcome, JobId, NewJob, OrphanPolicy, Recovered, WallMs,
};

use super::jobs;
use super::writer::{SyncMode, WriteError, Writer};

impl From<WriteError> for StoreError {
    fn from(e: WriteError) -> StoreError {
        match e {
            WriteError::Fenced => StoreError::Fenced,
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

/// One [`Record`] as SQL, inside the writer's transaction.
fn record_sql(
    tx: &rusqlite::Transaction<'_>,
    claim: &ClaimRef,
    what: &Record,
    now: WallMs,
) -> rusqlite::Result<Recorded> {
    crate::powerloss::phase("outcome");
    let ended = |o: Option<FailOutcome>| o.map_or(Recorded::NotOwner, Recorded::Ended);
    Ok(match what {
        Record::Complete => {
            if jobs::complete(tx, claim, None, now)? {
                Recorded::Completed
            } else {
                Recorded::NotOwner
            }
        }
        Record::Fail { error, retryable, retry_at } => ended(jobs::fail(tx, claim, error, *retryable, *retry_at, now)?),
        Record::Release { max_interruptions } => ended(jobs::release(tx, claim, *max_interruptions, now)?),
        Record::Abandon { reason } => ended(jobs::abandon(tx, claim, reason, now)?),
        Record::Cancel => {
            if super::ops::cancel_running(tx, claim, now)? {
                Recorded::Ended(FailOutcome::Cancelled)
            } else {
                Recorded::NotOwner
            }
        }
        Record::Requeue { reason, retry_at } => ended(jobs::requeue_unstarted(tx, claim, reason, *retry_at, now)?),
    })
}

/// The durability each record is committed with: an abandoned or unstarted run records
/// no outcome (NORMAL); every outcome is an acknowledgement (FULL).
fn record_sync(what: &Record) -> SyncMode {
    match what {
        // Neither records an outcome: a lost one only re-runs (or re-starts) the job.
        Record::Abandon { .. } | Record::Requeue { .. } => SyncMode::Normal,
        _ => SyncMode::Full,
    }
}

/// The daemon's store: the job queue through the single writer.
pub struct SqliteStore {
    writer: Writer,
}

impl SqliteStore {
    pub fn new(writer: Writer) -> SqliteStore {
        SqliteStore { writer }
    }

    /// Enqueues `job` (FULL: an acknowledgement). The CLI enqueues through
    /// `ops::enqueue_keyed`; this is for tests that drive the store.
    pub fn enqueue(&mut self, job: &NewJob, now: WallMs) -> StoreResult<JobId> {
        let job = job.clone();
        Ok(self.writer.call_blocking(SyncMode::Full, move |tx| jobs::enqueue(tx, &job, now))?)
    }
}

impl JobStore for SqliteStore {
    fn claim(&mut self, epoch: Epoch, worker: &str, limits: &ClaimLimits, now: WallMs) -> StoreResult<Vec<Claimed>> {
        let (worker, limits) = (worker.to_owned(), limits.clone());
        Ok(self.writer.call_blocking(SyncMode::Normal, move |tx| jobs::claim(tx, epoch, &worker, &limits, now))?)
    }

    fn renew(&mut self, epoch: Epoch, held: &[(JobId, String)], now: WallMs) -> StoreResult<Vec<JobId>> {
        let held = held.to_vec();
        Ok(self.writer.call_blocking(SyncMode::Normal, move |tx| {
            let ours = jobs::renew(tx, epoch, &held, now)?;
            crate::failpoint::hit("heartbeat.before_commit").map_err(|e| {
                rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
                    Some(e.to_string()),
                )
            })?;
            Ok(ours)
        })?)
    }

    fn record_child(&mut self, claim: &ClaimRef, child: &ChildIdentity) -> StoreResult<bool> {
        let (claim, child) = (claim.clone(), child.clone());
        Ok(self.writer.call_blocking(SyncMode::Normal, move |tx| jobs::record_child(tx, &claim, &child))?)
    }

    fn record_children(&mut self, items: &[(ClaimRef, ChildIdentity)]) -> Vec<StoreResult<bool>> {
        let ops: Vec<_> = items
            .iter()
            .map(|(claim, child)| {
                let (claim, child) = (claim.clone(), child.clone());
                (SyncMode::Normal, move |tx: &rusqlite::Transaction<'_>| jobs::record_child(tx, &claim, &child))
            })
            .collect();
        self.writer.call_together_blocking(ops).into_iter().map(|r| r.map_err(StoreError::from)).collect()
    }

    fn record_many(&mut self, items: &[RecordItem], now: WallMs) -> Vec<StoreResult<Recorded>> {
        type Op = Box<dyn FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<Recorded> + Send>;
        let ops: Vec<(SyncMode, Op)> = items
            .iter()
            .map(|(claim, what)| {
                let sync = record_sync(what);
                let (claim, what) = (claim.clone(), what.clone());
                let op: Op = Box::new(move |tx| record_sql(tx, &claim, &what, now));
                (sync, op)
            })
            .collect();
        self.writer.call_together_blocking(ops).into_iter().map(|r| r.map_err(StoreError::from)).collect()
    }

    fn orphan_children(&mut self, _epoch: Epoch) -> StoreResult<Vec<(JobId, ChildIdentity)>> {
        Ok(self.writer.call_blocking(SyncMode::Normal, jobs::orphan_children)?)
    }

    fn recover(&mut self, _epoch: Epoch, policy: OrphanPolicy, now: WallMs) -> StoreResult<Recovered> {
        Ok(self.writer.call_blocking(SyncMode::Full, move |tx| {
            let rec = jobs::recover_orphans(tx, policy.retry_at, policy.max_interruptions, now)?;
            let n = (rec.requeued.len() + rec.failed.len() + rec.cancelled.len()) as i64;
            super::ops::bump_metric(tx, "stale_jobs_recovered", n)?;
            Ok(rec)
        })?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::engine::suite::{suite, Harness};
    use crate::sqlite::schema;
    use rusqlite::Connection;

    struct Sql(tempfile::TempDir);
    impl Harness for Sql {
        type S = SqliteStore;
        fn make(&self) -> SqliteStore {
            let path = self.0.path().join(format!("homer-{}.db", crate::clock::mono_ms()));
            let _ = std::fs::remove_file(&path);
            schema::create(&path, &Clock::default()).unwrap();
            let c = Connection::open(&path).unwrap();
            c.execute("UPDATE leader SET epoch = 1", []).unwrap();
            let (w, _thread) = Writer::start(c, 1);
            SqliteStore::new(w)
        }
        fn enqueue(&self, s: &mut SqliteStore, job: &NewJob) -> JobId {
            s.enqueue(job, WallMs(0)).unwrap()
        }
        fn bump(&self, s: &mut SqliteStore) {
            s.writer.call_blocking(SyncMode::Normal, |_| Ok(())).unwrap();
            // Another daemon's bump, through a separate connection.
            Connection::open(self.newest()).unwrap().execute("UPDATE leader SET epoch = 2", []).unwrap();
        }
        fn request_cancel(&self, s: &mut SqliteStore, id: JobId) {
            s.writer.call_blocking(SyncMode::Normal, |_| Ok(())).unwrap();
            let mut c = Connection::open(self.newest()).unwrap();
            let tx = c.transaction().unwrap();
            assert_eq!(crate::sqlite::ops::cancel(&tx, id.0, 5).unwrap(), crate::sqlite::ops::Cancel::Requested);
            tx.commit().unwrap();
        }
    }

    impl Sql {
        /// The database `make` created last.
        fn newest(&self) -> std::path::PathBuf {
            std::fs::read_dir(self.0.path())
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "db"))
                .max()
                .unwrap()
        }
    }

    #[test]
    fn sqlite_store_passes_the_suite() {
        suite(&Sql(tempfile::tempdir().unwrap()));
    }
}
