//! The reference model of the job queue: what README.md's "Jobs" and "Guarantees"
//! say the queue does, as plain data and plain code. It shares nothing with the stores it
//! checks but the `JobStore` trait and that trait's value types (no SQL, no `MemoryStore`):
//! a bug copied into both would otherwise go unseen.
//!
//! Besides the trait's operations it knows what happens around the daemon's store: the
//! operator's `cancel` and `retry` (the CLI's own transactions) and a new daemon taking
//! the leader row (the epoch bump).

use std::collections::BTreeMap;

use homerd::engine::jobstore::{JobStore, Record, RecordItem, Recorded, StoreError, StoreResult};
use homerd::job::{
    ChildIdentity, ClaimLimits, ClaimRef, Claimed, Epoch, FailOutcome, JobId, JobStatus, NewJob, OrphanPolicy,
    Recovered, WallMs,
};
use homerd::sqlite::ops::{Cancel, Retry};

/// Who holds a running job: the claim's token, the epoch it was claimed under, the
/// worker, and when the lease was last written (the claim or a renewal).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub token: String,
    pub epoch: i64,
    pub worker: String,
    pub claimed_at: i64,
    pub heartbeat_at: i64,
}

/// One run of a job: one per claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    pub run: u32,
    pub attempt: u32,
    pub epoch: i64,
    pub token: String,
    pub worker: String,
    pub started_at: i64,
    pub child: Option<ChildIdentity>,
    /// `(ended_at, outcome)` once the run is over.
    pub ended: Option<(i64, &'static str)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub spec: NewJob,
    pub status: JobStatus,
    /// Claims that count toward `max_attempts` (a graceful release gives its one back).
    pub attempts: u32,
    /// Every claim (every `job_runs` row).
    pub runs: u32,
    pub interruptions: u32,
    pub run_after: i64,
    pub owner: Option<Owner>,
    /// The last claim's time (kept after the run ends).
    pub started_at: Option<i64>,
    /// Set by every transition into a terminal status, cleared by `retry`.
    pub completed_at: Option<i64>,
    pub cancel_requested_at: Option<i64>,
    /// Entries in the error history.
    pub errors: u32,
    pub history: Vec<Run>,
}

impl Job {
    fn open_run(&mut self) -> &mut Run {
        let token = self.owner.as_ref().map(|o| o.token.clone());
        self.history
            .iter_mut()
            .rev()
            .find(|r| r.ended.is_none() && Some(&r.token) == token.as_ref())
            .expect("a running job has its open run")
    }

    /// The run ends with `outcome` and the job `failed`; the error joins its history.
    fn end_failed(&mut self, outcome: &'static str, now: i64) -> FailOutcome {
        self.errors += 1;
        self.end_run(JobStatus::Failed, outcome, now);
        FailOutcome::Failed
    }

    /// The run ends with `outcome` and the job `cancelled` (an operator's request).
    fn end_cancelled(&mut self, outcome: &'static str, now: i64) -> FailOutcome {
        self.end_run(JobStatus::Cancelled, outcome, now);
        FailOutcome::Cancelled
    }

    /// The run ends with `outcome` and the job is `pending` again; the store reports it
    /// due at `run_after`.
    fn end_pending(&mut self, outcome: &'static str, run_after: i64, now: i64) -> FailOutcome {
        self.end_run(JobStatus::Pending, outcome, now);
        FailOutcome::Retry { run_after: WallMs(run_after) }
    }

    /// Leaves `running`: the run ends with `outcome`, the lock is cleared.
    fn end_run(&mut self, status: JobStatus, outcome: &'static str, now: i64) {
        self.open_run().ended = Some((now, outcome));
        self.owner = None;
        self.status = status;
        if status.terminal() {
            self.completed_at = Some(now);
        }
    }
}

/// The queue and the leader row's epoch.
#[derive(Clone, Debug)]
pub struct Queue {
    pub epoch: i64,
    pub jobs: BTreeMap<i64, Job>,
    /// The `stale_jobs_recovered` counter.
    pub recovered_total: i64,
    next_token: u64,
}

impl Queue {
    pub fn new() -> Queue {
        Queue { epoch: 0, jobs: BTreeMap::new(), recovered_total: 0, next_token: 0 }
    }

    /// A new daemon takes the leader row: the epoch moves on; every older epoch is fenced.
    pub fn bump_epoch(&mut self) -> i64 {
        self.epoch += 1;
        self.epoch
    }

    /// Whether `token` under `epoch` is the current claim of job `id`.
    pub fn owns(&self, epoch: i64, id: i64, token: &str) -> bool {
        self.jobs.get(&id).is_some_and(|j| {
            j.status == JobStatus::Running && j.owner.as_ref().is_some_and(|o| o.token == token && o.epoch == epoch)
        })
    }

    fn fenced(&self, epoch: i64) -> StoreResult<()> {
        if epoch == self.epoch {
            Ok(())
        } else {
            Err(StoreError::Fenced)
        }
    }

    /// `f` on the job `claim` owns, once its epoch is checked (a fenced one is an error);
    /// `None`: not the owner, nothing changed.
    fn with_owned<T>(&mut self, claim: &ClaimRef, f: impl FnOnce(&mut Job) -> T) -> StoreResult<Option<T>> {
        self.fenced(claim.epoch.0)?;
        Ok(self.owned_mut(claim.epoch.0, claim.id.0, &claim.token).map(f))
    }

    fn owned_mut(&mut self, epoch: i64, id: i64, token: &str) -> Option<&mut Job> {
        if self.owns(epoch, id, token) {
            self.jobs.get_mut(&id)
        } else {
            None
        }
    }

    /// Adds a pending job; returns its id.
    pub fn enqueue(&mut self, job: &NewJob) -> JobId {
        let id = self.jobs.keys().next_back().map_or(1, |last| last + 1);
        self.jobs.insert(
            id,
            Job {
                spec: job.clone(),
                status: JobStatus::Pending,
                attempts: 0,
                runs: 0,
                interruptions: 0,
                run_after: job.run_after.0,
                owner: None,
                started_at: None,
                completed_at: None,
                cancel_requested_at: None,
                errors: 0,
                history: Vec::new(),
            },
        );
        JobId(id)
    }

    /// `homerd cancel ID` (the CLI's transaction; no epoch involved): a pending job is
    /// cancelled at once, a running one gets a request its owner acts on.
    pub fn operator_cancel(&mut self, id: i64, now: i64) -> Cancel {
        let Some(j) = self.jobs.get_mut(&id) else { return Cancel::NotFound };
        match j.status {
            JobStatus::Pending => {
                j.status = JobStatus::Cancelled;
                j.completed_at = Some(now);
                Cancel::Cancelled
            }
            JobStatus::Running => {
                j.cancel_requested_at.get_or_insert(now);
                Cancel::Requested
            }
            other => Cancel::Terminal(other),
        }
    }

    /// `homerd retry ID`: a failed or cancelled job is pending again with a fresh budget.
    pub fn operator_retry(&mut self, id: i64, now: i64) -> Retry {
        let Some(j) = self.jobs.get_mut(&id) else { return Retry::NotFound };
        if !matches!(j.status, JobStatus::Failed | JobStatus::Cancelled) {
            return Retry::NotRetryable(j.status);
        }
        j.status = JobStatus::Pending;
        j.attempts = 0;
        j.interruptions = 0;
        j.run_after = now;
        j.completed_at = None;
        j.cancel_requested_at = None;
        Retry::Requeued
    }

    /// Lanes are served in turns, the lane whose first pending job (by `run_after`, then
    /// id) is oldest first; within a lane, that same order. Caps: the global one, the
    /// lane's, the batch.
    fn choose(&self, limits: &ClaimLimits, now: i64) -> Vec<i64> {
        let running = |lane: Option<&str>| {
            self.jobs
                .values()
                .filter(|j| j.status == JobStatus::Running && lane.is_none_or(|l| j.spec.lane == l))
                .count() as u32
        };
        let room = limits.global.saturating_sub(running(None)).min(limits.batch) as usize;
        let mut by_lane: BTreeMap<&str, Vec<(i64, i64, bool)>> = BTreeMap::new();
        for (id, j) in self.jobs.iter().filter(|(_, j)| j.status == JobStatus::Pending) {
            by_lane.entry(j.spec.lane.as_str()).or_default().push((j.run_after, *id, j.cancel_requested_at.is_some()));
        }
        let mut lanes: Vec<((i64, i64), Vec<i64>)> = Vec::new();
        for (lane, mut rows) in by_lane {
            rows.sort_unstable();
            let head = (rows[0].0, rows[0].1);
            if head.0 > now {
                continue;
            }
            let cap = limits.lanes.get(lane).copied().unwrap_or(limits.default_lane);
            let free = cap.saturating_sub(running(Some(lane))) as usize;
            let ready: Vec<i64> = rows
                .iter()
                .filter(|(at, _, requested)| *at <= now && !requested)
                .map(|(_, id, _)| *id)
                .take(free)
                .collect();
            lanes.push((head, ready));
        }
        lanes.sort_by_key(|(head, _)| *head);
        let mut chosen = Vec::new();
        for turn in 0.. {
            let mut any = false;
            for (_, ready) in &lanes {
                if let Some(id) = ready.get(turn) {
                    any = true;
                    if chosen.len() < room {
                        chosen.push(*id);
                    }
                }
            }
            if !any || chosen.len() >= room {
                break;
            }
        }
        chosen
    }
}

impl Default for Queue {
    fn default() -> Queue {
        Queue::new()
    }
}

impl JobStore for Queue {
    fn claim(&mut self, epoch: Epoch, worker: &str, limits: &ClaimLimits, now: WallMs) -> StoreResult<Vec<Claimed>> {
        let (epoch, now) = (epoch.0, now.0);
        self.fenced(epoch)?;
        let mut out = Vec::new();
        for id in self.choose(limits, now) {
            self.next_token += 1;
            let token = format!("model-token-{}", self.next_token);
            let j = self.jobs.get_mut(&id).expect("chosen from the queue");
            j.status = JobStatus::Running;
            j.attempts += 1;
            j.runs += 1;
            j.started_at = Some(now);
            j.owner = Some(Owner {
                token: token.clone(),
                epoch,
                worker: worker.to_owned(),
                claimed_at: now,
                heartbeat_at: now,
            });
            j.history.push(Run {
                run: j.runs,
                attempt: j.attempts,
                epoch,
                token: token.clone(),
                worker: worker.to_owned(),
                started_at: now,
                child: None,
                ended: None,
            });
            out.push(Claimed {
                id: JobId(id),
                lane: j.spec.lane.clone(),
                kind: j.spec.kind.clone(),
                args: j.spec.args.clone(),
                attempt: j.attempts,
                run: j.runs,
                token,
                timeout_ms: j.spec.timeout_ms,
                max_attempts: j.spec.max_attempts,
                exec: j.spec.exec.clone(),
            });
        }
        Ok(out)
    }

    fn renew(&mut self, epoch: Epoch, held: &[(JobId, String)], now: WallMs) -> StoreResult<Vec<JobId>> {
        let (epoch, now) = (epoch.0, now.0);
        self.fenced(epoch)?;
        let mut ours = Vec::new();
        for (id, token) in held {
            if let Some(j) = self.owned_mut(epoch, id.0, token) {
                j.owner.as_mut().expect("owned").heartbeat_at = now;
                ours.push(*id);
            }
        }
        Ok(ours)
    }

    fn record_child(&mut self, claim: &ClaimRef, child: &ChildIdentity) -> StoreResult<bool> {
        let (epoch, id, token) = (claim.epoch.0, claim.id.0, claim.token.as_str());
        self.fenced(epoch)?;
        Ok(self.owned_mut(epoch, id, token).map(|j| j.open_run().child = Some(child.clone())).is_some())
    }

    fn record_many(&mut self, items: &[RecordItem], now: WallMs) -> Vec<StoreResult<Recorded>> {
        items.iter().map(|(claim, what)| self.record(claim, what, now.0)).collect()
    }

    fn orphan_children(&mut self, epoch: Epoch) -> StoreResult<Vec<(JobId, ChildIdentity)>> {
        self.fenced(epoch.0)?;
        let mut out = Vec::new();
        for (id, j) in self.jobs.iter().filter(|(_, j)| j.status == JobStatus::Running) {
            for run in j.history.iter().filter(|r| r.ended.is_none()) {
                if let Some(c) = &run.child {
                    out.push((JobId(*id), c.clone()));
                }
            }
        }
        Ok(out)
    }

    /// Startup recovery: the epoch is ours, so every running job is an orphan, whatever
    /// its heartbeat's age.
    ///
    /// An `exec` run that recorded no child never released its program, so it never ran:
    /// its attempt is given back as an interruption, while the job has had fewer than
    /// `max_interruptions`; after that it is an orphan like any other.
    fn recover(&mut self, epoch: Epoch, policy: OrphanPolicy, now: WallMs) -> StoreResult<Recovered> {
        let (retry_at, max_interruptions, now) = (policy.retry_at.0, policy.max_interruptions, now.0);
        let children = self.orphan_children(epoch)?;
        let mut out = Recovered { children, ..Recovered::default() };
        for (id, j) in self.jobs.iter_mut().filter(|(_, j)| j.status == JobStatus::Running) {
            let never_ran =
                j.spec.kind == "exec" && j.open_run().child.is_none() && j.interruptions < max_interruptions;
            if j.cancel_requested_at.is_some() {
                j.end_run(JobStatus::Cancelled, "orphaned", now);
                out.cancelled.push(JobId(*id));
            } else if never_ran {
                j.interruptions += 1;
                j.attempts -= 1;
                j.errors += 1;
                j.run_after = retry_at;
                j.end_run(JobStatus::Pending, "orphaned", now);
                out.given_back.push(JobId(*id));
                out.requeued.push(JobId(*id));
            } else if j.attempts >= j.spec.max_attempts {
                j.errors += 1;
                j.end_run(JobStatus::Failed, "orphaned", now);
                out.failed.push(JobId(*id));
            } else {
                j.errors += 1;
                j.run_after = retry_at;
                j.end_run(JobStatus::Pending, "orphaned", now);
                out.requeued.push(JobId(*id));
            }
        }
        self.recovered_total += (out.cancelled.len() + out.failed.len() + out.requeued.len()) as i64;
        Ok(out)
    }
}

/// The outcomes, one per [`Record`] variant, as the trait's `record_many` runs them.
impl Queue {
    fn record(&mut self, claim: &ClaimRef, what: &Record, now: i64) -> StoreResult<Recorded> {
        let ended = |o: Option<FailOutcome>| o.map_or(Recorded::NotOwner, Recorded::Ended);
        Ok(match what {
            Record::Complete if self.end_owned(claim, JobStatus::Completed, "completed", now)? => Recorded::Completed,
            Record::Complete => Recorded::NotOwner,
            Record::Fail { error, retryable, retry_at } => ended(self.fail(claim, error, *retryable, retry_at.0, now)?),
            Record::Release { max_interruptions } => ended(self.release(claim, *max_interruptions, now)?),
            Record::Abandon { reason } => ended(self.abandon(claim, reason, now)?),
            Record::Cancel if self.end_owned(claim, JobStatus::Cancelled, "cancelled", now)? => {
                Recorded::Ended(FailOutcome::Cancelled)
            }
            Record::Cancel => Recorded::NotOwner,
            Record::Requeue { reason, retry_at } => ended(self.requeue_unstarted(claim, reason, retry_at.0, now)?),
        })
    }

    fn fail(
        &mut self,
        claim: &ClaimRef,
        _error: &str,
        retryable: bool,
        retry_at: i64,
        now: i64,
    ) -> StoreResult<Option<FailOutcome>> {
        self.with_owned(claim, |j| {
            if retryable && j.attempts < j.spec.max_attempts {
                if j.cancel_requested_at.is_some() {
                    // Would go back to pending: the operator's cancel wins instead.
                    return j.end_cancelled("failed", now);
                }
                j.errors += 1;
                j.run_after = retry_at;
                j.end_pending("failed", retry_at, now)
            } else {
                j.end_failed("failed", now)
            }
        })
    }

    fn release(&mut self, claim: &ClaimRef, max_interruptions: u32, now: i64) -> StoreResult<Option<FailOutcome>> {
        self.with_owned(claim, |j| {
            if j.cancel_requested_at.is_some() {
                return j.end_cancelled("released", now);
            }
            j.interruptions += 1;
            if j.interruptions <= max_interruptions {
                // The attempt is given back: an interruption is not a failure.
                j.attempts -= 1;
                j.end_pending("released", now, now)
            } else {
                j.end_failed("released", now)
            }
        })
    }

    fn abandon(&mut self, claim: &ClaimRef, _reason: &str, now: i64) -> StoreResult<Option<FailOutcome>> {
        self.with_owned(claim, |j| {
            // The attempt stays counted: a job that keeps losing its lease ends failed.
            if j.attempts >= j.spec.max_attempts {
                j.end_failed("abandoned", now)
            } else if j.cancel_requested_at.is_some() {
                j.end_cancelled("abandoned", now)
            } else {
                j.errors += 1;
                j.end_pending("abandoned", now, now)
            }
        })
    }

    /// The owner ends its run `status` (`outcome` in its history); false: not the owner.
    fn end_owned(&mut self, claim: &ClaimRef, status: JobStatus, outcome: &'static str, now: i64) -> StoreResult<bool> {
        Ok(self.with_owned(claim, |j| j.end_run(status, outcome, now))?.is_some())
    }

    fn requeue_unstarted(
        &mut self,
        claim: &ClaimRef,
        _reason: &str,
        retry_at: i64,
        now: i64,
    ) -> StoreResult<Option<FailOutcome>> {
        self.with_owned(claim, |j| {
            if j.cancel_requested_at.is_some() {
                return j.end_cancelled("not_started", now);
            }
            // Nothing of the job ran: the attempt is given back, and no interruption is
            // counted either; the reason joins the error history.
            j.attempts -= 1;
            j.errors += 1;
            j.run_after = retry_at;
            j.end_pending("not_started", retry_at, now)
        })
    }
}
