//! The `JobStore` trait: the queue operations the coordinator needs, synchronous, with
//! two implementations of the same semantics — [`SqliteStore`] (the daemon's, over the
//! single writer) and [`MemoryStore`] (for the coordinator's unit and loom tests). One
//! test suite runs against both (`tests` below).

use std::collections::BTreeMap;

use crate::store::jobs::{self, ClaimLimits, Claimed, FailOutcome, NewJob, OrphanChild, Recovered};
use crate::store::writer::{Sync, WriteError, Writer};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The epoch is no longer ours: nothing was written, and nothing ever will be.
    #[error("fenced")]
    Fenced,
    /// The write could not be made now (busy, I/O); it may succeed later.
    #[error("{0}")]
    Unavailable(String),
}

impl From<WriteError> for StoreError {
    fn from(e: WriteError) -> StoreError {
        match e {
            WriteError::Fenced => StoreError::Fenced,
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A held child's identity, recorded on its run before it is released.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildRecord {
    pub pid: u32,
    pub pgid: u32,
    pub boot_id: String,
    pub start_time: u64,
}

/// What a run's end records (one member of [`JobStore::record_many`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    /// [`JobStore::complete`].
    Complete,
    /// [`JobStore::fail`].
    Fail { error: String, retryable: bool, retry_at: i64 },
    /// [`JobStore::release`].
    Release { max_interruptions: u32 },
    /// [`JobStore::abandon`].
    Abandon { reason: String },
    /// [`JobStore::cancel`].
    Cancel,
    /// [`JobStore::requeue_unstarted`].
    Requeue { reason: String, retry_at: i64 },
}

/// What a [`Record`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// The claim (token, epoch) was not the job's current one: nothing changed.
    NotOwner,
    Completed,
    /// `fail`, `release`, `abandon` or `cancel` ended the run this way.
    Ended(FailOutcome),
}

/// One record for [`JobStore::record_many`]: job id, claim token, what to record.
pub type RecordItem = (i64, String, Record);

pub trait JobStore: Send {
    fn enqueue(&mut self, job: &NewJob, now: i64) -> StoreResult<i64>;
    fn claim(&mut self, epoch: i64, worker: &str, limits: &ClaimLimits, now: i64) -> StoreResult<Vec<Claimed>>;
    /// Renews `held` (id, token); returns the ids still ours.
    fn renew(&mut self, epoch: i64, held: &[(i64, String)], now: i64) -> StoreResult<Vec<i64>>;
    fn record_child(&mut self, epoch: i64, id: i64, token: &str, child: &ChildRecord) -> StoreResult<bool>;
    fn complete(&mut self, epoch: i64, id: i64, token: &str, now: i64) -> StoreResult<bool>;
    #[allow(clippy::too_many_arguments)]
    fn fail(
        &mut self,
        epoch: i64,
        id: i64,
        token: &str,
        error: &str,
        retryable: bool,
        retry_at: i64,
        now: i64,
    ) -> StoreResult<Option<FailOutcome>>;
    fn release(
        &mut self,
        epoch: i64,
        id: i64,
        token: &str,
        max_interruptions: u32,
        now: i64,
    ) -> StoreResult<Option<FailOutcome>>;
    /// A lost lease: requeue with no outcome recorded (the attempt stays counted; with
    /// none left, `failed`).
    fn abandon(&mut self, epoch: i64, id: i64, token: &str, reason: &str, now: i64)
        -> StoreResult<Option<FailOutcome>>;
    /// The owner records an operator's cancellation (its run already stopped).
    fn cancel(&mut self, epoch: i64, id: i64, token: &str, now: i64) -> StoreResult<bool>;
    /// The daemon could not start the run for its own reasons: back to pending at
    /// `retry_at`, the attempt given back, no interruption counted.
    #[allow(clippy::too_many_arguments)]
    fn requeue_unstarted(
        &mut self,
        epoch: i64,
        id: i64,
        token: &str,
        reason: &str,
        retry_at: i64,
        now: i64,
    ) -> StoreResult<Option<FailOutcome>>;
    /// Process groups recorded by runs still marked running (to kill before recovery).
    fn orphan_children(&mut self, epoch: i64) -> StoreResult<Vec<OrphanChild>>;
    fn recover(&mut self, epoch: i64, retry_at: i64, now: i64) -> StoreResult<Recovered>;

    /// Records the end of several runs, in order, each guarded on its own exactly as its
    /// single call; one result per item. The SQLite store commits them in one transaction
    /// (one fsync for every job that ended together); this default calls them one by one.
    fn record_many(&mut self, epoch: i64, items: &[RecordItem], now: i64) -> Vec<StoreResult<Recorded>> {
        items.iter().map(|(id, token, what)| record_one(self, epoch, *id, token, what, now)).collect()
    }
}

/// One [`Record`] through the single calls of `store`.
pub fn record_one<S: JobStore + ?Sized>(
    store: &mut S,
    epoch: i64,
    id: i64,
    token: &str,
    what: &Record,
    now: i64,
) -> StoreResult<Recorded> {
    let ended = |o: Option<FailOutcome>| o.map_or(Recorded::NotOwner, Recorded::Ended);
    Ok(match what {
        Record::Complete => {
            if store.complete(epoch, id, token, now)? {
                Recorded::Completed
            } else {
                Recorded::NotOwner
            }
        }
        Record::Fail { error, retryable, retry_at } => {
            ended(store.fail(epoch, id, token, error, *retryable, *retry_at, now)?)
        }
        Record::Release { max_interruptions } => ended(store.release(epoch, id, token, *max_interruptions, now)?),
        Record::Abandon { reason } => ended(store.abandon(epoch, id, token, reason, now)?),
        Record::Cancel => {
            if store.cancel(epoch, id, token, now)? {
                Recorded::Ended(FailOutcome::Cancelled)
            } else {
                Recorded::NotOwner
            }
        }
        Record::Requeue { reason, retry_at } => {
            ended(store.requeue_unstarted(epoch, id, token, reason, *retry_at, now)?)
        }
    })
}

/// One [`Record`] as SQL, inside the writer's transaction: the same statements as the
/// single calls of [`SqliteStore`].
fn record_sql(
    tx: &rusqlite::Transaction<'_>,
    epoch: i64,
    id: i64,
    token: &str,
    what: &Record,
    now: i64,
) -> rusqlite::Result<Recorded> {
    crate::powerloss::phase("outcome");
    let ended = |o: Option<FailOutcome>| o.map_or(Recorded::NotOwner, Recorded::Ended);
    Ok(match what {
        Record::Complete => {
            if jobs::complete(tx, epoch, id, token, None, now)? {
                Recorded::Completed
            } else {
                Recorded::NotOwner
            }
        }
        Record::Fail { error, retryable, retry_at } => {
            ended(jobs::fail(tx, epoch, id, token, error, *retryable, *retry_at, now)?)
        }
        Record::Release { max_interruptions } => ended(jobs::release(tx, epoch, id, token, *max_interruptions, now)?),
        Record::Abandon { reason } => ended(jobs::abandon(tx, epoch, id, token, reason, now)?),
        Record::Cancel => {
            if crate::store::ops::cancel_running(tx, epoch, id, token, now)? {
                Recorded::Ended(FailOutcome::Cancelled)
            } else {
                Recorded::NotOwner
            }
        }
        Record::Requeue { reason, retry_at } => {
            ended(jobs::requeue_unstarted(tx, epoch, id, token, reason, *retry_at, now)?)
        }
    })
}

/// The durability each record is committed with, as its single call does: an abandoned
/// run records no outcome (NORMAL); every outcome is an acknowledgement (FULL).
fn record_sync(what: &Record) -> Sync {
    match what {
        // Neither records an outcome: a lost one only re-runs (or re-starts) the job.
        Record::Abandon { .. } | Record::Requeue { .. } => Sync::Normal,
        _ => Sync::Full,
    }
}

/// The daemon's store: every call is one operation on the group-commit writer, so its
/// transaction checks the epoch first (and the statements match epoch + token).
pub struct SqliteStore {
    writer: Writer,
}

impl SqliteStore {
    pub fn new(writer: Writer) -> SqliteStore {
        SqliteStore { writer }
    }

    /// One record as one writer operation.
    fn record(&mut self, epoch: i64, id: i64, token: &str, what: Record, now: i64) -> StoreResult<Recorded> {
        let token = token.to_owned();
        Ok(self.writer.call_blocking(record_sync(&what), move |tx| record_sql(tx, epoch, id, &token, &what, now))?)
    }
}

/// `fail`/`release`/`abandon`'s answer from what a record did.
fn ended_as(r: Recorded) -> Option<FailOutcome> {
    match r {
        Recorded::Ended(o) => Some(o),
        Recorded::NotOwner | Recorded::Completed => None,
    }
}

impl JobStore for SqliteStore {
    fn enqueue(&mut self, job: &NewJob, now: i64) -> StoreResult<i64> {
        let job = job.clone();
        Ok(self.writer.call_blocking(Sync::Full, move |tx| jobs::enqueue(tx, &job, now))?)
    }
    fn claim(&mut self, epoch: i64, worker: &str, limits: &ClaimLimits, now: i64) -> StoreResult<Vec<Claimed>> {
        let (worker, limits) = (worker.to_owned(), limits.clone());
        Ok(self.writer.call_blocking(Sync::Normal, move |tx| jobs::claim(tx, epoch, &worker, &limits, now))?)
    }
    fn renew(&mut self, epoch: i64, held: &[(i64, String)], now: i64) -> StoreResult<Vec<i64>> {
        let held = held.to_vec();
        Ok(self.writer.call_blocking(Sync::Normal, move |tx| {
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
    fn record_child(&mut self, epoch: i64, id: i64, token: &str, c: &ChildRecord) -> StoreResult<bool> {
        let (token, c) = (token.to_owned(), c.clone());
        Ok(self.writer.call_blocking(Sync::Normal, move |tx| {
            jobs::record_child(tx, epoch, id, &token, c.pid, c.pgid, &c.boot_id, c.start_time)
        })?)
    }
    // The single outcome calls are one-record forms of `record_many`'s operations, so the
    // statements and the durability of each record are chosen in one place (`record_sql`,
    // `record_sync`).
    fn complete(&mut self, epoch: i64, id: i64, token: &str, now: i64) -> StoreResult<bool> {
        Ok(self.record(epoch, id, token, Record::Complete, now)? == Recorded::Completed)
    }
    fn fail(
        &mut self,
        epoch: i64,
        id: i64,
        token: &str,
        error: &str,
        retryable: bool,
        retry_at: i64,
        now: i64,
    ) -> StoreResult<Option<FailOutcome>> {
        let what = Record::Fail { error: error.to_owned(), retryable, retry_at };
        Ok(ended_as(self.record(epoch, id, token, what, now)?))
    }
    fn release(&mut self, epoch: i64, id: i64, token: &str, max: u32, now: i64) -> StoreResult<Option<FailOutcome>> {
        Ok(ended_as(self.record(epoch, id, token, Record::Release { max_interruptions: max }, now)?))
    }
    fn abandon(
        &mut self,
        epoch: i64,
        id: i64,
        token: &str,
        reason: &str,
        now: i64,
    ) -> StoreResult<Option<FailOutcome>> {
        Ok(ended_as(self.record(epoch, id, token, Record::Abandon { reason: reason.to_owned() }, now)?))
    }
    fn cancel(&mut self, epoch: i64, id: i64, token: &str, now: i64) -> StoreResult<bool> {
        Ok(self.record(epoch, id, token, Record::Cancel, now)? == Recorded::Ended(FailOutcome::Cancelled))
    }
    fn requeue_unstarted(
        &mut self,
        epoch: i64,
        id: i64,
        token: &str,
        reason: &str,
        retry_at: i64,
        now: i64,
    ) -> StoreResult<Option<FailOutcome>> {
        let what = Record::Requeue { reason: reason.to_owned(), retry_at };
        Ok(ended_as(self.record(epoch, id, token, what, now)?))
    }
    fn orphan_children(&mut self, _epoch: i64) -> StoreResult<Vec<OrphanChild>> {
        Ok(self.writer.call_blocking(Sync::Normal, jobs::orphan_children)?)
    }
    fn record_many(&mut self, epoch: i64, items: &[RecordItem], now: i64) -> Vec<StoreResult<Recorded>> {
        type Op = Box<dyn FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<Recorded> + Send>;
        let ops: Vec<(Sync, Op)> = items
            .iter()
            .map(|(id, token, what)| {
                let sync = record_sync(what);
                let (id, token, what) = (*id, token.clone(), what.clone());
                let op: Op = Box::new(move |tx| record_sql(tx, epoch, id, &token, &what, now));
                (sync, op)
            })
            .collect();
        self.writer.call_together_blocking(ops).into_iter().map(|r| r.map_err(StoreError::from)).collect()
    }
    fn recover(&mut self, _epoch: i64, retry_at: i64, now: i64) -> StoreResult<Recovered> {
        Ok(self.writer.call_blocking(Sync::Full, move |tx| {
            let rec = jobs::recover_orphans(tx, retry_at, now)?;
            let n = (rec.requeued.len() + rec.failed.len() + rec.cancelled.len()) as i64;
            crate::store::ops::bump_metric(tx, "stale_jobs_recovered", n)?;
            Ok(rec)
        })?)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemJob {
    pub job: NewJob,
    pub status: &'static str,
    pub attempts: u32,
    pub runs: u32,
    pub interruptions: u32,
    pub run_after: i64,
    pub token: Option<String>,
    pub claim_epoch: Option<i64>,
    pub errors: Vec<String>,
    pub child: Option<ChildRecord>,
    /// `homerd cancel` filed a request while it ran.
    pub cancel_requested: bool,
}

/// The in-memory store: the same semantics as the SQLite statements, for tests.
///
/// The same goes for the mutants (`crate::mutant`): a mutant that switches a guard off
/// in the SQL switches the same guard off here (`no_epoch_guard`, `no_owner_token_guard`,
/// `no_drain_give_back`, `no_immediate_recovery`), so the coordinator's loom tests see
/// the store the daemon would have with that mechanism missing.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    pub epoch: i64,
    pub jobs: BTreeMap<i64, MemJob>,
    next_id: i64,
    next_token: u64,
}

impl MemoryStore {
    pub fn new(epoch: i64) -> MemoryStore {
        MemoryStore { epoch, ..MemoryStore::default() }
    }

    /// What `homerd cancel` does to a running job: files a request.
    pub fn request_cancel(&mut self, id: i64) {
        if let Some(j) = self.jobs.get_mut(&id).filter(|j| j.status == "running") {
            j.cancel_requested = true;
        }
    }

    /// A requeue that meets a cancel request cancels instead.
    fn requeue_or_cancel(j: &mut MemJob) -> Option<FailOutcome> {
        if j.cancel_requested {
            j.status = "cancelled";
            Some(FailOutcome::Cancelled)
        } else {
            None
        }
    }

    /// The writer's per-batch epoch check (`leader::check_epoch`).
    fn guard(&self, epoch: i64) -> StoreResult<()> {
        if epoch == self.epoch || crate::mutant::active(crate::mutant::NO_EPOCH_GUARD) {
            Ok(())
        } else {
            Err(StoreError::Fenced)
        }
    }

    fn owned(&mut self, epoch: i64, id: i64, token: &str) -> Option<&mut MemJob> {
        self.jobs
            .get_mut(&id)
            .filter(|j| j.status == "running" && j.token.as_deref() == Some(token) && j.claim_epoch == Some(epoch))
    }

    fn clear(j: &mut MemJob) {
        j.token = None;
        j.claim_epoch = None;
    }
}

impl JobStore for MemoryStore {
    fn enqueue(&mut self, job: &NewJob, _now: i64) -> StoreResult<i64> {
        self.next_id += 1;
        self.jobs.insert(
            self.next_id,
            MemJob {
                job: job.clone(),
                status: "pending",
                attempts: 0,
                runs: 0,
                interruptions: 0,
                run_after: job.run_after,
                token: None,
                claim_epoch: None,
                errors: Vec::new(),
                child: None,
                cancel_requested: false,
            },
        );
        Ok(self.next_id)
    }

    fn claim(&mut self, epoch: i64, _worker: &str, limits: &ClaimLimits, now: i64) -> StoreResult<Vec<Claimed>> {
        self.guard(epoch)?;
        let mut running: BTreeMap<String, u32> = BTreeMap::new();
        for j in self.jobs.values().filter(|j| j.status == "running") {
            *running.entry(j.job.lane.clone()).or_default() += 1;
        }
        let total: u32 = running.values().sum();
        let room = limits.global.saturating_sub(total).min(limits.batch) as usize;
        // Per lane, ready ids in (run_after, id) order.
        let mut lanes: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
        for (id, j) in
            self.jobs.iter().filter(|(_, j)| j.status == "pending" && j.run_after <= now && !j.cancel_requested)
        {
            lanes.entry(j.job.lane.clone()).or_default().push((j.run_after, *id));
        }
        let mut queues: Vec<(i64, i64, std::collections::VecDeque<i64>)> = lanes
            .into_iter()
            .map(|(lane, mut v)| {
                v.sort();
                let cap = limits.lanes.get(&lane).copied().unwrap_or(limits.default_lane);
                let free = cap.saturating_sub(running.get(&lane).copied().unwrap_or(0)) as usize;
                // Lanes are served in the order of their head row, (run_after, id).
                let (head_run_after, head_id) = v[0];
                (head_run_after, head_id, v.into_iter().take(free).map(|(_, id)| id).collect())
            })
            .collect();
        queues.sort_by_key(|(run_after, id, _)| (*run_after, *id));
        let mut chosen = Vec::new();
        while chosen.len() < room && queues.iter().any(|q| !q.2.is_empty()) {
            for q in queues.iter_mut() {
                if chosen.len() == room {
                    break;
                }
                if let Some(id) = q.2.pop_front() {
                    chosen.push(id);
                }
            }
        }
        let mut out = Vec::new();
        for id in chosen {
            self.next_token += 1;
            let token = format!("mem-{epoch}-{}", self.next_token);
            let j = self.jobs.get_mut(&id).expect("chosen job exists");
            j.status = "running";
            j.attempts += 1;
            j.runs += 1;
            j.token = Some(token.clone());
            j.claim_epoch = Some(epoch);
            j.child = None;
            out.push(Claimed {
                id,
                lane: j.job.lane.clone(),
                kind: j.job.kind.clone(),
                args: j.job.args.clone(),
                attempt: j.attempts,
                run: j.runs,
                token,
                timeout_ms: j.job.timeout_ms,
                max_attempts: j.job.max_attempts,
            });
        }
        Ok(out)
    }

    fn renew(&mut self, epoch: i64, held: &[(i64, String)], _now: i64) -> StoreResult<Vec<i64>> {
        self.guard(epoch)?;
        Ok(held.iter().filter(|(id, t)| self.owned(epoch, *id, t).is_some()).map(|(id, _)| *id).collect())
    }

    fn record_child(&mut self, epoch: i64, id: i64, token: &str, child: &ChildRecord) -> StoreResult<bool> {
        self.guard(epoch)?;
        Ok(self.owned(epoch, id, token).map(|j| j.child = Some(child.clone())).is_some())
    }

    fn complete(&mut self, epoch: i64, id: i64, token: &str, _now: i64) -> StoreResult<bool> {
        self.guard(epoch)?;
        if crate::mutant::active(crate::mutant::NO_OWNER_TOKEN_GUARD) {
            // Mutant (as in `jobs::complete`): whoever finishes last writes the outcome.
            return Ok(self
                .jobs
                .get_mut(&id)
                .map(|j| {
                    j.status = "completed";
                    MemoryStore::clear(j);
                })
                .is_some());
        }
        Ok(self
            .owned(epoch, id, token)
            .map(|j| {
                j.status = "completed";
                MemoryStore::clear(j);
            })
            .is_some())
    }

    fn fail(
        &mut self,
        epoch: i64,
        id: i64,
        token: &str,
        error: &str,
        retryable: bool,
        retry_at: i64,
        _now: i64,
    ) -> StoreResult<Option<FailOutcome>> {
        self.guard(epoch)?;
        Ok(self.owned(epoch, id, token).map(|j| {
            j.errors.push(error.to_owned());
            MemoryStore::clear(j);
            if retryable && j.attempts < j.job.max_attempts {
                if let Some(c) = MemoryStore::requeue_or_cancel(j) {
                    return c;
                }
                j.status = "pending";
                j.run_after = retry_at;
                FailOutcome::Retry { run_after: retry_at }
            } else {
                j.status = "failed";
                FailOutcome::Failed
            }
        }))
    }

    fn release(&mut self, epoch: i64, id: i64, token: &str, max: u32, now: i64) -> StoreResult<Option<FailOutcome>> {
        self.guard(epoch)?;
        Ok(self.owned(epoch, id, token).map(|j| {
            MemoryStore::clear(j);
            if let Some(c) = MemoryStore::requeue_or_cancel(j) {
                return c;
            }
            if j.interruptions < max {
                // Mutant (as in `jobs::release`): the attempt is kept, no interruption counted.
                if !crate::mutant::active(crate::mutant::NO_DRAIN_GIVE_BACK) {
                    j.interruptions += 1;
                    j.attempts -= 1;
                }
                j.status = "pending";
                FailOutcome::Retry { run_after: now }
            } else {
                j.interruptions += 1;
                j.status = "failed";
                j.errors.push(format!("interrupted by shutdown {} times (max_interruptions)", j.interruptions));
                FailOutcome::Failed
            }
        }))
    }

    fn abandon(
        &mut self,
        epoch: i64,
        id: i64,
        token: &str,
        reason: &str,
        now: i64,
    ) -> StoreResult<Option<FailOutcome>> {
        self.guard(epoch)?;
        Ok(self.owned(epoch, id, token).map(|j| {
            j.errors.push(reason.to_owned());
            MemoryStore::clear(j);
            if j.attempts >= j.job.max_attempts {
                j.status = "failed";
                FailOutcome::Failed
            } else if let Some(c) = MemoryStore::requeue_or_cancel(j) {
                c
            } else {
                // `run_after` is left as it was (already due): ready at once.
                j.status = "pending";
                FailOutcome::Retry { run_after: now }
            }
        }))
    }

    fn cancel(&mut self, epoch: i64, id: i64, token: &str, _now: i64) -> StoreResult<bool> {
        self.guard(epoch)?;
        Ok(self
            .owned(epoch, id, token)
            .map(|j| {
                j.status = "cancelled";
                MemoryStore::clear(j);
            })
            .is_some())
    }

    fn requeue_unstarted(
        &mut self,
        epoch: i64,
        id: i64,
        token: &str,
        reason: &str,
        retry_at: i64,
        _now: i64,
    ) -> StoreResult<Option<FailOutcome>> {
        self.guard(epoch)?;
        Ok(self.owned(epoch, id, token).map(|j| {
            j.errors.push(reason.to_owned());
            MemoryStore::clear(j);
            if let Some(c) = MemoryStore::requeue_or_cancel(j) {
                return c;
            }
            j.attempts -= 1;
            j.status = "pending";
            j.run_after = retry_at;
            FailOutcome::Retry { run_after: retry_at }
        }))
    }

    fn orphan_children(&mut self, epoch: i64) -> StoreResult<Vec<OrphanChild>> {
        self.guard(epoch)?;
        Ok(self
            .jobs
            .iter()
            .filter(|(_, j)| j.status == "running")
            .filter_map(|(id, j)| {
                j.child.as_ref().map(|c| OrphanChild {
                    job_id: *id,
                    pid: c.pid,
                    pgid: c.pgid,
                    boot_id: c.boot_id.clone(),
                    start_time: c.start_time,
                })
            })
            .collect())
    }

    fn recover(&mut self, epoch: i64, retry_at: i64, _now: i64) -> StoreResult<Recovered> {
        self.guard(epoch)?;
        let mut out = Recovered::default();
        if crate::mutant::active(crate::mutant::NO_IMMEDIATE_RECOVERY) {
            // Mutant (as in `jobs::recover_orphans`): orphans are left running.
            return Ok(out);
        }
        for (id, j) in self.jobs.iter_mut().filter(|(_, j)| j.status == "running") {
            if let Some(c) = j.child.take() {
                out.children.push(OrphanChild {
                    job_id: *id,
                    pid: c.pid,
                    pgid: c.pgid,
                    boot_id: c.boot_id,
                    start_time: c.start_time,
                });
            }
            MemoryStore::clear(j);
            if j.cancel_requested {
                // An operator asked to cancel it while it ran: cancelled, as in the SQL.
                j.status = "cancelled";
                out.cancelled.push(*id);
                continue;
            }
            j.errors.push(String::from("orphaned"));
            if j.attempts >= j.job.max_attempts {
                j.status = "failed";
                out.failed.push(*id);
            } else {
                j.status = "pending";
                j.run_after = retry_at;
                out.requeued.push(*id);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // the suite plays "another daemon" with direct SQL
mod tests {
    //! One suite, two stores: the in-memory store must mean what the SQL means.
    use super::*;
    use crate::clock::Clock;
    use crate::store::schema;
    use rusqlite::Connection;

    fn job(lane: &str, max_attempts: u32) -> NewJob {
        NewJob {
            kind: "noop".into(),
            args: vec!["a".into()],
            lane: lane.into(),
            max_attempts,
            timeout_ms: Some(5),
            run_after: 0,
        }
    }

    fn limits() -> ClaimLimits {
        ClaimLimits { global: 3, lanes: [("b".to_string(), 2)].into(), default_lane: 1, batch: 32 }
    }

    /// A store at epoch 1 and a way to bump its epoch to 2 (another daemon took over).
    trait Harness {
        type S: JobStore;
        fn make(&self) -> Self::S;
        fn bump(&self, s: &mut Self::S);
        /// What `homerd cancel` does to a running job: file a request.
        fn request_cancel(&self, s: &mut Self::S, id: i64);
    }

    struct Mem;
    impl Harness for Mem {
        type S = MemoryStore;
        fn make(&self) -> MemoryStore {
            MemoryStore::new(1)
        }
        fn bump(&self, s: &mut MemoryStore) {
            s.epoch = 2;
        }
        fn request_cancel(&self, s: &mut MemoryStore, id: i64) {
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
        fn bump(&self, s: &mut SqliteStore) {
            s.writer.call_blocking(Sync::Normal, |_| Ok(())).unwrap();
            // Another daemon's bump, through a separate connection.
            let path = self.0.path().to_owned();
            let newest = std::fs::read_dir(&path)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "db"))
                .max()
                .unwrap();
            Connection::open(newest).unwrap().execute("UPDATE leader SET epoch = 2", []).unwrap();
        }
        fn request_cancel(&self, s: &mut SqliteStore, id: i64) {
            s.writer.call_blocking(Sync::Normal, |_| Ok(())).unwrap();
            let newest = std::fs::read_dir(self.0.path())
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "db"))
                .max()
                .unwrap();
            let mut c = Connection::open(newest).unwrap();
            let tx = c.transaction().unwrap();
            assert_eq!(crate::store::ops::cancel(&tx, id, 5).unwrap(), crate::store::ops::Cancel::Requested);
            tx.commit().unwrap();
        }
    }

    fn suite<H: Harness>(h: &H) {
        // Claims: FIFO per lane, lanes take turns, caps.
        let mut s = h.make();
        let ids: Vec<i64> = ["a", "a", "b", "b", "b"].iter().map(|l| s.enqueue(&job(l, 2), 0).unwrap()).collect();
        let got = s.claim(1, "w", &limits(), 10).unwrap();
        let pairs: Vec<(i64, &str, u32, u32)> = got.iter().map(|c| (c.id, c.lane.as_str(), c.attempt, c.run)).collect();
        assert_eq!(pairs, vec![(ids[0], "a", 1, 1), (ids[2], "b", 1, 1), (ids[3], "b", 1, 1)]);
        assert_eq!(got[0].args, vec!["a".to_string()]);
        assert_eq!(got[0].timeout_ms, Some(5));
        assert!(s.claim(1, "w", &limits(), 10).unwrap().is_empty(), "global cap 3 reached");

        // Guards: wrong token changes nothing; the owner completes once.
        let (a, b1, b2) = (&got[0], &got[1], &got[2]);
        assert!(!s.complete(1, a.id, "wrong", 11).unwrap());
        assert_eq!(s.renew(1, &[(a.id, a.token.clone()), (b1.id, "wrong".into())], 11).unwrap(), vec![a.id]);
        assert!(s.complete(1, a.id, &a.token, 11).unwrap());
        assert!(!s.complete(1, a.id, &a.token, 12).unwrap());
        let child = ChildRecord { pid: 10, pgid: 10, boot_id: "b".into(), start_time: 1 };
        assert!(s.record_child(1, b1.id, &b1.token, &child).unwrap());
        assert!(!s.record_child(1, b1.id, "wrong", &child).unwrap());

        // Failure with attempts left -> retry at the given time; release gives the attempt back.
        assert_eq!(
            s.fail(1, b2.id, &b2.token, "boom", true, 500, 12).unwrap(),
            Some(FailOutcome::Retry { run_after: 500 })
        );
        assert_eq!(s.release(1, b1.id, &b1.token, 5, 13).unwrap(), Some(FailOutcome::Retry { run_after: 13 }));
        // Lane b (cap 2) in (run_after, id) order: b1, ids[4], then b2 (run_after 500).
        let at600 = s.claim(1, "w", &limits(), 600).unwrap();
        let got: Vec<i64> = at600.iter().map(|c| c.id).collect();
        assert_eq!(got, vec![ids[1], b1.id, ids[4]]);
        let b1_again = at600.iter().find(|c| c.id == b1.id).unwrap();
        assert_eq!((b1_again.attempt, b1_again.run), (1, 2), "a released run does not count");
        for c in at600.iter().filter(|c| c.id != b1.id) {
            assert!(s.complete(1, c.id, &c.token, 601).unwrap());
        }
        let later = s.claim(1, "w", &limits(), 700).unwrap();
        assert_eq!(later.iter().map(|c| c.id).collect::<Vec<_>>(), vec![b2.id]);
        assert_eq!((later[0].attempt, later[0].run), (2, 2));
        assert_eq!(s.fail(1, b2.id, &later[0].token, "boom", true, 900, 701).unwrap(), Some(FailOutcome::Failed));
        // Abandon: pending again, attempt kept (1 of 2 used), ready at once.
        assert_eq!(
            s.abandon(1, b1.id, &b1_again.token, "lease lost", 702).unwrap(),
            Some(FailOutcome::Retry { run_after: 702 })
        );
        assert_eq!(s.abandon(1, b1.id, &b1_again.token, "lease lost", 702).unwrap(), None);

        // Recovery: every running row; exhausted ones fail; recorded children reported.
        let c = s.claim(1, "w", &limits(), 750).unwrap();
        let b1_third = c.iter().find(|x| x.id == b1.id).unwrap();
        assert_eq!((b1_third.attempt, b1_third.run), (2, 3));
        assert!(s.record_child(1, b1.id, &b1_third.token, &child).unwrap());
        let orphans = s.orphan_children(1).unwrap();
        assert_eq!(orphans.iter().map(|c| (c.job_id, c.pgid)).collect::<Vec<_>>(), vec![(b1.id, 10)]);
        let rec = s.recover(1, 800, 701).unwrap();
        assert!(rec.failed.contains(&b1.id), "attempt 2 of 2 orphaned: failed ({rec:?})");
        assert_eq!(rec.children.iter().map(|c| (c.job_id, c.pgid)).collect::<Vec<_>>(), vec![(b1.id, 10)]);
        assert!(!s.complete(1, b1.id, &b1_third.token, 702).unwrap(), "a recovered claim cannot complete");
        assert!(s.orphan_children(1).unwrap().is_empty());

        // A job that keeps losing its lease ends failed after max_attempts.
        let mut l = h.make();
        let id = l.enqueue(&job("a", 2), 0).unwrap();
        for attempt in 1..=2 {
            let c = l.claim(1, "w", &limits(), 1).unwrap().remove(0);
            let expect = if attempt < 2 { "retry" } else { "failed" };
            let got = l.abandon(1, id, &c.token, "lease lost", 2).unwrap();
            assert_eq!(matches!(got, Some(FailOutcome::Failed)), expect == "failed", "attempt {attempt}: {got:?}");
        }
        assert!(l.claim(1, "w", &limits(), 3).unwrap().is_empty());

        // Fencing: after another daemon's bump, every guarded call is refused.
        let mut f = h.make();
        let id = f.enqueue(&job("a", 3), 0).unwrap();
        let c = f.claim(1, "w", &limits(), 1).unwrap().remove(0);
        h.bump(&mut f);
        assert_eq!(f.claim(1, "w", &limits(), 2), Err(StoreError::Fenced));
        assert_eq!(f.renew(1, &[(id, c.token.clone())], 2), Err(StoreError::Fenced));
        assert_eq!(f.complete(1, id, &c.token, 2), Err(StoreError::Fenced));
        assert_eq!(f.fail(1, id, &c.token, "x", true, 3, 2), Err(StoreError::Fenced));
        assert_eq!(f.release(1, id, &c.token, 5, 2), Err(StoreError::Fenced));
        assert_eq!(f.abandon(1, id, &c.token, "x", 2), Err(StoreError::Fenced));
        assert_eq!(f.orphan_children(1), Err(StoreError::Fenced));
        assert_eq!(f.record_many(1, &[(id, c.token.clone(), Record::Complete)], 2), vec![Err(StoreError::Fenced)]);

        // Several runs recorded together: in order, each guarded on its own, so a wrong
        // token or a second record of one run changes nothing and the rest still land.
        let mut g = h.make();
        for lane in ["a", "b", "c"] {
            g.enqueue(&job(lane, 3), 0).unwrap();
        }
        let run = g.claim(1, "w", &limits(), 1).unwrap();
        assert_eq!(run.len(), 3);
        let fail = Record::Fail { error: "boom".into(), retryable: true, retry_at: 50 };
        let got = g.record_many(
            1,
            &[
                (run[0].id, run[0].token.clone(), Record::Complete),
                (run[1].id, run[1].token.clone(), fail),
                (run[2].id, "wrong".into(), Record::Abandon { reason: "x".into() }),
                (run[0].id, run[0].token.clone(), Record::Complete),
                (run[2].id, run[2].token.clone(), Record::Release { max_interruptions: 5 }),
            ],
            2,
        );
        assert_eq!(
            got,
            vec![
                Ok(Recorded::Completed),
                Ok(Recorded::Ended(FailOutcome::Retry { run_after: 50 })),
                Ok(Recorded::NotOwner),
                Ok(Recorded::NotOwner),
                Ok(Recorded::Ended(FailOutcome::Retry { run_after: 2 })),
            ]
        );
        // Ready again by (run_after, id): the released run (at 2, its attempt given back), then the retry (at 50).
        let again = g.claim(1, "w", &limits(), 60).unwrap();
        assert_eq!(again.iter().map(|c| (c.id, c.attempt)).collect::<Vec<_>>(), vec![(run[2].id, 1), (run[1].id, 2)]);

        // Lanes take turns in the order of their first job by (run_after, id), whatever
        // their lowest id: lane a's head is id 3 (run_after 0), lane b's id 2.
        let mut o = h.make();
        let mut later = job("a", 3);
        later.run_after = 5;
        o.enqueue(&later, 0).unwrap();
        let b_head = o.enqueue(&job("b", 3), 0).unwrap();
        o.enqueue(&job("a", 3), 0).unwrap();
        let one = ClaimLimits { global: 1, lanes: BTreeMap::new(), default_lane: 3, batch: 1 };
        assert_eq!(o.claim(1, "w", &one, 10).unwrap().iter().map(|c| c.id).collect::<Vec<_>>(), vec![b_head]);

        // Recovery cancels an orphan an operator asked to cancel while it ran.
        let mut r = h.make();
        let id = r.enqueue(&job("a", 3), 0).unwrap();
        r.claim(1, "w", &limits(), 1).unwrap();
        h.request_cancel(&mut r, id);
        let rec = r.recover(1, 5, 2).unwrap();
        assert_eq!((rec.cancelled, rec.requeued, rec.failed), (vec![id], vec![], vec![]));

        // A cancel request filed while a run is ending wins over any requeue, so the job
        // cannot be claimed again before the daemon sees the request.
        for end in ["fail", "release", "abandon"] {
            let mut c = h.make();
            let id = c.enqueue(&job("a", 3), 0).unwrap();
            let run = c.claim(1, "w", &limits(), 1).unwrap().remove(0);
            h.request_cancel(&mut c, id);
            let out = match end {
                "fail" => c.fail(1, id, &run.token, "boom", true, 2, 2).unwrap(),
                "release" => c.release(1, id, &run.token, 5, 2).unwrap(),
                _ => c.abandon(1, id, &run.token, "lease lost", 2).unwrap(),
            };
            assert_eq!(out, Some(FailOutcome::Cancelled), "{end}");
            assert!(c.claim(1, "w", &limits(), 100).unwrap().is_empty(), "{end}: a cancelled job was claimed again");
        }
        assert_eq!(f.recover(1, 3, 2), Err(StoreError::Fenced));
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
