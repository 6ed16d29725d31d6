//! The in-memory [`JobStore`]: the same semantics as the SQLite statements
//! (`crate::sqlite::jobs`), for the coordinator's unit and loom tests. The shared suite in
//! `crate::sqlite::jobstore` holds the two to one meaning.

use std::collections::BTreeMap;

use super::jobstore::{JobStore, Record, RecordItem, Recorded, StoreError, StoreResult};
use crate::job::{
    ChildIdentity, ClaimLimits, ClaimRef, Claimed, Epoch, FailOutcome, JobId, JobStatus, NewJob, OrphanPolicy,
    Recovered, WallMs,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemJob {
    pub job: NewJob,
    pub status: JobStatus,
    pub attempts: u32,
    pub runs: u32,
    pub interruptions: u32,
    pub run_after: WallMs,
    pub token: Option<String>,
    pub claim_epoch: Option<Epoch>,
    pub errors: Vec<String>,
    pub child: Option<ChildIdentity>,
    /// `homerd cancel` filed a request while it ran.
    pub cancel_requested: bool,
}

/// The in-memory store.
///
/// The same goes for the mutants (`crate::mutant`): a mutant that switches a guard off
/// in the SQL switches the same guard off here (`no_epoch_guard`, `no_owner_token_guard`,
/// `no_drain_give_back`, `no_immediate_recovery`), so the coordinator's loom tests see
/// the store the daemon would have with that mechanism missing.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    pub epoch: Epoch,
    pub jobs: BTreeMap<JobId, MemJob>,
    next_id: i64,
    next_token: u64,
}

impl MemoryStore {
    pub fn new(epoch: Epoch) -> MemoryStore {
        MemoryStore { epoch, ..MemoryStore::default() }
    }

    /// Adds a pending job; returns its id.
    pub fn enqueue(&mut self, job: &NewJob) -> JobId {
        self.next_id += 1;
        let id = JobId(self.next_id);
        self.jobs.insert(
            id,
            MemJob {
                job: job.clone(),
                status: JobStatus::Pending,
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
        id
    }

    /// What `homerd cancel` does to a running job: files a request.
    pub fn request_cancel(&mut self, id: JobId) {
        if let Some(j) = self.jobs.get_mut(&id).filter(|j| j.status == JobStatus::Running) {
            j.cancel_requested = true;
        }
    }

    /// A requeue that meets a cancel request cancels instead.
    fn requeue_or_cancel(j: &mut MemJob) -> Option<FailOutcome> {
        if j.cancel_requested {
            j.status = JobStatus::Cancelled;
            Some(FailOutcome::Cancelled)
        } else {
            None
        }
    }

    /// The writer's per-batch epoch check (`leader::check_epoch`).
    fn guard(&self, epoch: Epoch) -> StoreResult<()> {
        if epoch == self.epoch || crate::mutant::active(crate::mutant::NO_EPOCH_GUARD) {
            Ok(())
        } else {
            Err(StoreError::Fenced)
        }
    }

    /// The job `claim` names, if that claim is its current one.
    fn owned(&mut self, claim: &ClaimRef) -> Option<&mut MemJob> {
        self.jobs.get_mut(&claim.id).filter(|j| {
            j.status == JobStatus::Running
                && j.token.as_deref() == Some(claim.token.as_str())
                && j.claim_epoch == Some(claim.epoch)
        })
    }

    fn clear(j: &mut MemJob) {
        j.token = None;
        j.claim_epoch = None;
    }

    /// One record, as `sqlite::jobstore` runs it (guarded on the epoch, then the claim).
    fn record(&mut self, claim: &ClaimRef, what: &Record, now: WallMs) -> StoreResult<Recorded> {
        self.guard(claim.epoch)?;
        if *what == Record::Complete && crate::mutant::active(crate::mutant::NO_OWNER_TOKEN_GUARD) {
            // Mutant (as in `jobs::complete`): whoever finishes last writes the outcome.
            return Ok(match self.jobs.get_mut(&claim.id) {
                Some(j) => {
                    j.status = JobStatus::Completed;
                    MemoryStore::clear(j);
                    Recorded::Completed
                }
                None => Recorded::NotOwner,
            });
        }
        let Some(j) = self.owned(claim) else { return Ok(Recorded::NotOwner) };
        let ended = match what {
            Record::Complete => {
                j.status = JobStatus::Completed;
                MemoryStore::clear(j);
                return Ok(Recorded::Completed);
            }
            Record::Fail { error, retryable, retry_at } => {
                j.errors.push(error.clone());
                MemoryStore::clear(j);
                if *retryable && j.attempts < j.job.max_attempts {
                    MemoryStore::requeue_or_cancel(j).unwrap_or_else(|| {
                        j.status = JobStatus::Pending;
                        j.run_after = *retry_at;
                        FailOutcome::Retry { run_after: *retry_at }
                    })
                } else {
                    j.status = JobStatus::Failed;
                    FailOutcome::Failed
                }
            }
            Record::Release { max_interruptions } => {
                MemoryStore::clear(j);
                if let Some(c) = MemoryStore::requeue_or_cancel(j) {
                    c
                } else if j.interruptions < *max_interruptions {
                    // Mutant (as in `jobs::release`): the attempt is kept, no interruption counted.
                    if !crate::mutant::active(crate::mutant::NO_DRAIN_GIVE_BACK) {
                        j.interruptions += 1;
                        j.attempts -= 1;
                    }
                    j.status = JobStatus::Pending;
                    FailOutcome::Retry { run_after: now }
                } else {
                    j.interruptions += 1;
                    j.status = JobStatus::Failed;
                    j.errors.push(format!("interrupted by shutdown {} times (max_interruptions)", j.interruptions));
                    FailOutcome::Failed
                }
            }
            Record::Abandon { reason } => {
                j.errors.push(reason.clone());
                MemoryStore::clear(j);
                if j.attempts >= j.job.max_attempts {
                    j.status = JobStatus::Failed;
                    FailOutcome::Failed
                } else if let Some(c) = MemoryStore::requeue_or_cancel(j) {
                    c
                } else {
                    // `run_after` is left as it was (already due): ready at once.
                    j.status = JobStatus::Pending;
                    FailOutcome::Retry { run_after: now }
                }
            }
            Record::Cancel => {
                j.status = JobStatus::Cancelled;
                MemoryStore::clear(j);
                FailOutcome::Cancelled
            }
            Record::Requeue { reason, retry_at } => {
                j.errors.push(reason.clone());
                MemoryStore::clear(j);
                MemoryStore::requeue_or_cancel(j).unwrap_or_else(|| {
                    j.attempts -= 1;
                    j.status = JobStatus::Pending;
                    j.run_after = *retry_at;
                    FailOutcome::Retry { run_after: *retry_at }
                })
            }
        };
        Ok(Recorded::Ended(ended))
    }
}

impl JobStore for MemoryStore {
    fn claim(&mut self, epoch: Epoch, _worker: &str, limits: &ClaimLimits, now: WallMs) -> StoreResult<Vec<Claimed>> {
        self.guard(epoch)?;
        let mut running: BTreeMap<String, u32> = BTreeMap::new();
        for j in self.jobs.values().filter(|j| j.status == JobStatus::Running) {
            *running.entry(j.job.lane.clone()).or_default() += 1;
        }
        let total: u32 = running.values().sum();
        let room = limits.global.saturating_sub(total).min(limits.batch) as usize;
        // Per lane, ready ids in (run_after, id) order.
        let mut lanes: BTreeMap<String, Vec<(WallMs, JobId)>> = BTreeMap::new();
        for (id, j) in self
            .jobs
            .iter()
            .filter(|(_, j)| j.status == JobStatus::Pending && j.run_after <= now && !j.cancel_requested)
        {
            lanes.entry(j.job.lane.clone()).or_default().push((j.run_after, *id));
        }
        let mut queues: Vec<(WallMs, JobId, std::collections::VecDeque<JobId>)> = lanes
            .into_iter()
            .map(|(lane, mut v)| {
                v.sort();
                let free = limits.lane_cap(&lane).saturating_sub(running.get(&lane).copied().unwrap_or(0)) as usize;
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
            j.status = JobStatus::Running;
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
                exec: j.job.exec.clone(),
            });
        }
        Ok(out)
    }

    fn renew(&mut self, epoch: Epoch, held: &[(JobId, String)], _now: WallMs) -> StoreResult<Vec<JobId>> {
        self.guard(epoch)?;
        Ok(held
            .iter()
            .filter(|(id, token)| self.owned(&ClaimRef { epoch, id: *id, token: token.clone() }).is_some())
            .map(|(id, _)| *id)
            .collect())
    }

    fn record_child(&mut self, claim: &ClaimRef, child: &ChildIdentity) -> StoreResult<bool> {
        self.guard(claim.epoch)?;
        Ok(self.owned(claim).map(|j| j.child = Some(child.clone())).is_some())
    }

    fn record_many(&mut self, items: &[RecordItem], now: WallMs) -> Vec<StoreResult<Recorded>> {
        items.iter().map(|(claim, what)| self.record(claim, what, now)).collect()
    }

    fn orphan_children(&mut self, epoch: Epoch) -> StoreResult<Vec<(JobId, ChildIdentity)>> {
        self.guard(epoch)?;
        Ok(self
            .jobs
            .iter()
            .filter(|(_, j)| j.status == JobStatus::Running)
            .filter_map(|(id, j)| j.child.clone().map(|c| (*id, c)))
            .collect())
    }

    fn recover(&mut self, epoch: Epoch, policy: OrphanPolicy, _now: WallMs) -> StoreResult<Recovered> {
        self.guard(epoch)?;
        let mut out = Recovered::default();
        if crate::mutant::active(crate::mutant::NO_IMMEDIATE_RECOVERY) {
            // Mutant (as in `jobs::recover_orphans`): orphans are left running.
            return Ok(out);
        }
        for (id, j) in self.jobs.iter_mut().filter(|(_, j)| j.status == JobStatus::Running) {
            let child = j.child.take();
            let unreleased = child.is_none()
                && j.job.kind == "exec"
                && j.interruptions < policy.max_interruptions
                && !crate::mutant::active(crate::mutant::UNRELEASED_ORPHAN_CHARGED);
            if let Some(c) = child {
                out.children.push((*id, c));
            }
            MemoryStore::clear(j);
            if j.cancel_requested {
                // An operator asked to cancel it while it ran: cancelled, as in the SQL.
                j.status = JobStatus::Cancelled;
                out.cancelled.push(*id);
                continue;
            }
            if unreleased {
                // Its program never ran: the attempt is given back, as an interruption.
                j.errors.push(String::from(crate::job::UNRELEASED_ORPHAN));
                j.interruptions += 1;
                j.attempts -= 1;
                j.status = JobStatus::Pending;
                j.run_after = policy.retry_at;
                out.given_back.push(*id);
                out.requeued.push(*id);
                continue;
            }
            j.errors.push(String::from("orphaned"));
            if j.attempts >= j.job.max_attempts {
                j.status = JobStatus::Failed;
                out.failed.push(*id);
            } else {
                j.status = JobStatus::Pending;
                j.run_after = policy.retry_at;
                out.requeued.push(*id);
            }
        }
        Ok(out)
    }
}
