//! The engine's [`JobStore`] on SQLite: every call is one operation on the group-commit
//! writer, so its transaction checks the epoch first, and the statements ([`jobs`]) match
//! epoch + token. The shared suite below holds [`MemoryStore`] to the same semantics.

use crate::engine::jobstore::{JobStore, Record, RecordItem, Recorded, StoreError, StoreResult};
#[cfg(test)]
use crate::engine::memory::MemoryStore;
use crate::job::{ChildIdentity, ClaimLimits, ClaimRef, Claimed, Epoch, FailOutcome, JobId, NewJob, Recovered, WallMs};

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

    fn recover(&mut self, _epoch: Epoch, retry_at: WallMs, now: WallMs) -> StoreResult<Recovered> {
        Ok(self.writer.call_blocking(SyncMode::Full, move |tx| {
            let rec = jobs::recover_orphans(tx, retry_at, now)?;
            let n = (rec.requeued.len() + rec.failed.len() + rec.cancelled.len()) as i64;
            super::ops::bump_metric(tx, "stale_jobs_recovered", n)?;
            Ok(rec)
        })?)
    }
}

#[cfg(test)]
mod tests {
    //! One suite, two stores: the in-memory store must mean what the SQL means.
    use std::collections::BTreeMap;

    use super::*;
    use crate::clock::Clock;
    use crate::sqlite::schema;
    use rusqlite::Connection;

    const E1: Epoch = Epoch(1);

    fn job(lane: &str, max_attempts: u32) -> NewJob {
        NewJob {
            kind: "noop".into(),
            args: vec!["a".into()],
            lane: lane.into(),
            max_attempts,
            timeout_ms: Some(5),
            run_after: WallMs(0),
            exec: Default::default(),
        }
    }

    fn limits() -> ClaimLimits {
        ClaimLimits { global: 3, lanes: [("b".to_string(), 2)].into(), default_lane: 1, batch: 32 }
    }

    /// One record through `record_many`.
    fn record<S: JobStore>(s: &mut S, claim: ClaimRef, what: Record, now: i64) -> StoreResult<Recorded> {
        s.record_many(&[(claim, what)], WallMs(now)).remove(0)
    }

    fn fail(retry_at: i64) -> Record {
        Record::Fail { error: "boom".into(), retryable: true, retry_at: WallMs(retry_at) }
    }

    fn abandon() -> Record {
        Record::Abandon { reason: "lease lost".into() }
    }

    fn retry_at(at: i64) -> StoreResult<Recorded> {
        Ok(Recorded::Ended(FailOutcome::Retry { run_after: WallMs(at) }))
    }

    /// The claim `c` with a token no claim ever had.
    fn wrong(c: &Claimed) -> ClaimRef {
        ClaimRef { token: "wrong".into(), ..c.claim_ref(E1) }
    }

    /// A store at epoch 1 and a way to bump its epoch to 2 (another daemon took over).
    trait Harness {
        type S: JobStore;
        fn make(&self) -> Self::S;
        fn enqueue(&self, s: &mut Self::S, job: &NewJob) -> JobId;
        fn bump(&self, s: &mut Self::S);
        /// What `homerd cancel` does to a running job: file a request.
        fn request_cancel(&self, s: &mut Self::S, id: JobId);
    }

    struct Mem;
    impl Harness for Mem {
        type S = MemoryStore;
        fn make(&self) -> MemoryStore {
            MemoryStore::new(E1)
        }
        fn enqueue(&self, s: &mut MemoryStore, job: &NewJob) -> JobId {
            s.enqueue(job)
        }
        fn bump(&self, s: &mut MemoryStore) {
            s.epoch = Epoch(2);
        }
        fn request_cancel(&self, s: &mut MemoryStore, id: JobId) {
            s.request_cancel(id);
        }
    }

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

    fn suite<H: Harness>(h: &H) {
        let at = WallMs;
        // Claims: FIFO per lane, lanes take turns, caps.
        let mut s = h.make();
        let ids: Vec<JobId> = ["a", "a", "b", "b", "b"].iter().map(|l| h.enqueue(&mut s, &job(l, 2))).collect();
        let got = s.claim(E1, "w", &limits(), at(10)).unwrap();
        let pairs: Vec<(JobId, &str, u32, u32)> =
            got.iter().map(|c| (c.id, c.lane.as_str(), c.attempt, c.run)).collect();
        assert_eq!(pairs, vec![(ids[0], "a", 1, 1), (ids[2], "b", 1, 1), (ids[3], "b", 1, 1)]);
        assert_eq!(got[0].args, vec!["a".to_string()]);
        assert_eq!(got[0].timeout_ms, Some(5));
        assert!(s.claim(E1, "w", &limits(), at(10)).unwrap().is_empty(), "global cap 3 reached");

        // Guards: wrong token changes nothing; the owner completes once.
        let (a, b1, b2) = (&got[0], &got[1], &got[2]);
        assert_eq!(record(&mut s, wrong(a), Record::Complete, 11), Ok(Recorded::NotOwner));
        assert_eq!(s.renew(E1, &[(a.id, a.token.clone()), (b1.id, "wrong".into())], at(11)).unwrap(), vec![a.id]);
        assert_eq!(record(&mut s, a.claim_ref(E1), Record::Complete, 11), Ok(Recorded::Completed));
        assert_eq!(record(&mut s, a.claim_ref(E1), Record::Complete, 12), Ok(Recorded::NotOwner));
        let child = ChildIdentity { pid: 10, pgid: 10, boot_id: "b".into(), start_time: 1 };
        assert!(s.record_child(&b1.claim_ref(E1), &child).unwrap());
        assert!(!s.record_child(&wrong(b1), &child).unwrap());

        // Failure with attempts left -> retry at the given time; release gives the attempt back.
        assert_eq!(record(&mut s, b2.claim_ref(E1), fail(500), 12), retry_at(500));
        assert_eq!(record(&mut s, b1.claim_ref(E1), Record::Release { max_interruptions: 5 }, 13), retry_at(13));
        // Lane b (cap 2) in (run_after, id) order: b1, ids[4], then b2 (run_after 500).
        let at600 = s.claim(E1, "w", &limits(), at(600)).unwrap();
        let got: Vec<JobId> = at600.iter().map(|c| c.id).collect();
        assert_eq!(got, vec![ids[1], b1.id, ids[4]]);
        let b1_again = at600.iter().find(|c| c.id == b1.id).unwrap();
        assert_eq!((b1_again.attempt, b1_again.run), (1, 2), "a released run does not count");
        for c in at600.iter().filter(|c| c.id != b1.id) {
            assert_eq!(record(&mut s, c.claim_ref(E1), Record::Complete, 601), Ok(Recorded::Completed));
        }
        let later = s.claim(E1, "w", &limits(), at(700)).unwrap();
        assert_eq!(later.iter().map(|c| c.id).collect::<Vec<_>>(), vec![b2.id]);
        assert_eq!((later[0].attempt, later[0].run), (2, 2));
        assert_eq!(record(&mut s, later[0].claim_ref(E1), fail(900), 701), Ok(Recorded::Ended(FailOutcome::Failed)));
        // Abandon: pending again, attempt kept (1 of 2 used), ready at once.
        assert_eq!(record(&mut s, b1_again.claim_ref(E1), abandon(), 702), retry_at(702));
        assert_eq!(record(&mut s, b1_again.claim_ref(E1), abandon(), 702), Ok(Recorded::NotOwner));

        // Recovery: every running row; exhausted ones fail; recorded children reported.
        let c = s.claim(E1, "w", &limits(), at(750)).unwrap();
        let b1_third = c.iter().find(|x| x.id == b1.id).unwrap();
        assert_eq!((b1_third.attempt, b1_third.run), (2, 3));
        assert!(s.record_child(&b1_third.claim_ref(E1), &child).unwrap());
        let orphans = s.orphan_children(E1).unwrap();
        assert_eq!(orphans.iter().map(|(id, c)| (*id, c.pgid)).collect::<Vec<_>>(), vec![(b1.id, 10)]);
        let rec = s.recover(E1, at(800), at(701)).unwrap();
        assert!(rec.failed.contains(&b1.id), "attempt 2 of 2 orphaned: failed ({rec:?})");
        assert_eq!(rec.children.iter().map(|(id, c)| (*id, c.pgid)).collect::<Vec<_>>(), vec![(b1.id, 10)]);
        assert_eq!(
            record(&mut s, b1_third.claim_ref(E1), Record::Complete, 702),
            Ok(Recorded::NotOwner),
            "a recovered claim cannot complete"
        );
        assert!(s.orphan_children(E1).unwrap().is_empty());

        // A job that keeps losing its lease ends failed after max_attempts.
        let mut l = h.make();
        h.enqueue(&mut l, &job("a", 2));
        for attempt in 1..=2 {
            let c = l.claim(E1, "w", &limits(), at(1)).unwrap().remove(0);
            let got = record(&mut l, c.claim_ref(E1), abandon(), 2);
            let failed = got == Ok(Recorded::Ended(FailOutcome::Failed));
            assert_eq!(failed, attempt == 2, "attempt {attempt}: {got:?}");
        }
        assert!(l.claim(E1, "w", &limits(), at(3)).unwrap().is_empty());

        // Fencing: after another daemon's bump, every guarded call is refused.
        let mut f = h.make();
        let id = h.enqueue(&mut f, &job("a", 3));
        let c = f.claim(E1, "w", &limits(), at(1)).unwrap().remove(0);
        h.bump(&mut f);
        assert_eq!(f.claim(E1, "w", &limits(), at(2)), Err(StoreError::Fenced));
        assert_eq!(f.renew(E1, &[(id, c.token.clone())], at(2)), Err(StoreError::Fenced));
        assert_eq!(f.record_child(&c.claim_ref(E1), &child), Err(StoreError::Fenced));
        for what in [Record::Complete, fail(3), Record::Release { max_interruptions: 5 }, abandon(), Record::Cancel] {
            assert_eq!(record(&mut f, c.claim_ref(E1), what.clone(), 2), Err(StoreError::Fenced), "{what:?}");
        }
        assert_eq!(f.orphan_children(E1), Err(StoreError::Fenced));

        // Several runs recorded together: in order, each guarded on its own, so a wrong
        // token or a second record of one run changes nothing and the rest still land.
        let mut g = h.make();
        for lane in ["a", "b", "c"] {
            h.enqueue(&mut g, &job(lane, 3));
        }
        let run = g.claim(E1, "w", &limits(), at(1)).unwrap();
        assert_eq!(run.len(), 3);
        let got = g.record_many(
            &[
                (run[0].claim_ref(E1), Record::Complete),
                (run[1].claim_ref(E1), fail(50)),
                (wrong(&run[2]), Record::Abandon { reason: "x".into() }),
                (run[0].claim_ref(E1), Record::Complete),
                (run[2].claim_ref(E1), Record::Release { max_interruptions: 5 }),
            ],
            at(2),
        );
        assert_eq!(
            got,
            vec![Ok(Recorded::Completed), retry_at(50), Ok(Recorded::NotOwner), Ok(Recorded::NotOwner), retry_at(2)]
        );
        // Ready again by (run_after, id): the released run (at 2, its attempt given back), then the retry (at 50).
        let again = g.claim(E1, "w", &limits(), at(60)).unwrap();
        assert_eq!(again.iter().map(|c| (c.id, c.attempt)).collect::<Vec<_>>(), vec![(run[2].id, 1), (run[1].id, 2)]);

        // Lanes take turns in the order of their first job by (run_after, id), whatever
        // their lowest id: lane a's head is id 3 (run_after 0), lane b's id 2.
        let mut o = h.make();
        let mut later = job("a", 3);
        later.run_after = at(5);
        h.enqueue(&mut o, &later);
        let b_head = h.enqueue(&mut o, &job("b", 3));
        h.enqueue(&mut o, &job("a", 3));
        let one = ClaimLimits { global: 1, lanes: BTreeMap::new(), default_lane: 3, batch: 1 };
        assert_eq!(o.claim(E1, "w", &one, at(10)).unwrap().iter().map(|c| c.id).collect::<Vec<_>>(), vec![b_head]);

        // Recovery cancels an orphan an operator asked to cancel while it ran.
        let mut r = h.make();
        let id = h.enqueue(&mut r, &job("a", 3));
        r.claim(E1, "w", &limits(), at(1)).unwrap();
        h.request_cancel(&mut r, id);
        let rec = r.recover(E1, at(5), at(2)).unwrap();
        assert_eq!((rec.cancelled, rec.requeued, rec.failed), (vec![id], vec![], vec![]));

        // A cancel request filed while a run is ending wins over any requeue, so the job
        // cannot be claimed again before the daemon sees the request.
        for end in [fail(2), Record::Release { max_interruptions: 5 }, abandon()] {
            let mut c = h.make();
            let id = h.enqueue(&mut c, &job("a", 3));
            let run = c.claim(E1, "w", &limits(), at(1)).unwrap().remove(0);
            h.request_cancel(&mut c, id);
            assert_eq!(record(&mut c, run.claim_ref(E1), end.clone(), 2), Ok(Recorded::Ended(FailOutcome::Cancelled)));
            assert!(
                c.claim(E1, "w", &limits(), at(100)).unwrap().is_empty(),
                "{end:?}: a cancelled job was claimed again"
            );
        }
        assert_eq!(f.recover(E1, at(3), at(2)), Err(StoreError::Fenced));
    }

    #[test]
    fn memory_store_passes_the_suite() {
        suite(&Mem);
    }

    #[test]
    fn sqlite_store_passes_the_suite() {
        suite(&Sql(tempfile::tempdir().unwrap()));
    }
}
