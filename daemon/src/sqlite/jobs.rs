//! The job queue's statements: enqueue, fenced claims, lease renewal, guarded outcomes,
//! graceful release and startup orphan recovery.
//!
//! Every function that changes a claimed job takes the epoch and the claim token and
//! matches on both (plus `status = 'running'`): a worker whose claim was recovered and
//! re-claimed — a zombie — changes nothing, and the caller learns it from the `false` /
//! empty result (failure mode 13). The writer's transaction additionally checks the leader
//! epoch before any of these run, and claims happen inside that one `BEGIN IMMEDIATE`
//! transaction (failure mode 14). Times are passed in from the daemon's clock: no SQL reads
//! the time.

use std::collections::BTreeMap;

use rusqlite::{params, OptionalExtension, Transaction};

use crate::job::stored::{args_json, env_json, parse_args, parse_env};
use crate::job::{
    ChildIdentity, ClaimLimits, ClaimRef, Claimed, Epoch, ExecSettings, FailOutcome, JobId, JobStatus, NewJob,
    Recovered, WallMs, UNRELEASED_ORPHAN,
};

/// Inserts a pending job whose `run_after` was set now; returns its id.
pub fn enqueue(tx: &Transaction<'_>, job: &NewJob, now: WallMs) -> rusqlite::Result<JobId> {
    enqueue_set_at(tx, job, now, now)
}

/// Inserts a pending job with its `run_after_set_at` (see [`shift_scheduled`]): `now` for
/// a delay; the time itself for an absolute `--run-after` time, which forward steps of
/// the wall clock must not move. Returns its id.
pub fn enqueue_set_at(
    tx: &Transaction<'_>,
    job: &NewJob,
    now: WallMs,
    run_after_set_at: WallMs,
) -> rusqlite::Result<JobId> {
    tx.query_row(
        "INSERT INTO job_queue (lane, kind, payload, status, created_at, max_attempts, run_after, timeout_ms,
                                run_after_set_at, cwd, env)
         VALUES (?1, ?2, ?3, 'pending', ?4, ?5, ?6, ?7, ?8, ?9, ?10) RETURNING id",
        params![
            job.lane,
            job.kind,
            args_json(&job.args),
            now,
            job.max_attempts,
            job.run_after,
            job.timeout_ms,
            run_after_set_at,
            job.exec.cwd,
            env_json(&job.exec.env)
        ],
        |r| r.get(0),
    )
}

/// Claims ready jobs: pending, `run_after <= now`, lane under its cap, the global cap and
/// the batch size respected. FIFO by (run_after, id) within a lane; lanes take turns, the
/// lane whose head has waited longest first. Each claim gets a fresh random token, bumps
/// `attempts` and `runs`, and inserts its `job_runs` row.
pub fn claim(
    tx: &Transaction<'_>,
    epoch: Epoch,
    worker: &str,
    limits: &ClaimLimits,
    now: WallMs,
) -> rusqlite::Result<Vec<Claimed>> {
    crate::powerloss::phase("claim");
    let mut running: BTreeMap<String, u32> = BTreeMap::new();
    {
        let mut stmt =
            tx.prepare_cached("SELECT lane, COUNT(*) FROM job_queue WHERE status = 'running' GROUP BY lane")?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?)))? {
            let (lane, n) = row?;
            running.insert(lane, n);
        }
    }
    let total: u32 = running.values().sum();
    let room = limits.global.saturating_sub(total).min(limits.batch);
    if room == 0 {
        return Ok(Vec::new());
    }
    // Each ready lane's head, oldest first.
    let mut heads: Vec<(String, i64, i64)> =
        lane_heads(tx)?.into_iter().filter(|(_, run_after, _)| WallMs(*run_after) <= now).collect();
    heads.sort_by_key(|(_, run_after, id)| (*run_after, *id));
    let mut queues: Vec<std::collections::VecDeque<JobId>> = Vec::new();
    {
        let mut stmt = tx.prepare_cached(
            "SELECT id FROM job_queue WHERE status = 'pending' AND lane = ?1 AND run_after <= ?2
               AND cancel_requested_at IS NULL
             ORDER BY run_after, id LIMIT ?3",
        )?;
        for (lane, _, _) in &heads {
            let free = limits.lane_cap(lane).saturating_sub(running.get(lane).copied().unwrap_or(0)).min(room);
            let ids = stmt.query_map(params![lane, now, free], |r| r.get(0))?.collect::<Result<_, _>>()?;
            queues.push(ids);
        }
    }
    let chosen = crate::job::take_turns(queues, room as usize);
    let mut tokens = random_tokens(chosen.len());
    let mut claimed = Vec::with_capacity(chosen.len());
    let mut mark = tx.prepare_cached(
        "UPDATE job_queue SET status = 'running', locked_by = ?2, locked_at = ?3, heartbeat_at = ?3,
                started_at = ?3, attempts = attempts + 1, runs = runs + 1,
                claim_token = ?4, claim_epoch = ?5
         WHERE id = ?1 AND status = 'pending' AND cancel_requested_at IS NULL
         RETURNING lane, kind, payload, attempts, runs, timeout_ms, max_attempts, cwd, env",
    )?;
    let mut run_row = tx.prepare_cached(
        "INSERT INTO job_runs (job_id, run, attempt, epoch, claim_token, worker, started_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for id in chosen {
        let token = tokens.pop().expect("one token per claim");
        let row = mark
            .query_row(params![id, worker, now, token, epoch], |r| {
                Ok(Claimed {
                    id,
                    lane: r.get(0)?,
                    kind: r.get(1)?,
                    args: parse_args(&r.get::<_, String>(2)?),
                    attempt: r.get(3)?,
                    run: r.get(4)?,
                    token: token.clone(),
                    timeout_ms: r.get(5)?,
                    max_attempts: r.get(6)?,
                    exec: ExecSettings { cwd: r.get(7)?, env: parse_env(r.get(8)?) },
                })
            })
            .optional()?;
        if let Some(c) = row {
            run_row.execute(params![c.id, c.run, c.attempt, epoch, c.token, worker, now])?;
            claimed.push(c);
        }
    }
    Ok(claimed)
}

/// Every lane with pending jobs and its head (run_after, id), by an index skip-scan over
/// `idx_queue_ready` (lane, run_after, id): O(lanes x log n), never a scan of all pending
/// rows (a `GROUP BY lane` would read every one of them on every claim).
pub fn lane_heads(conn: &rusqlite::Connection) -> rusqlite::Result<Vec<(String, i64, i64)>> {
    let mut next_lane =
        conn.prepare_cached("SELECT lane FROM job_queue INDEXED BY idx_queue_ready WHERE status = 'pending' AND lane > ?1 ORDER BY lane LIMIT 1")?;
    let mut head = conn.prepare_cached(
        "SELECT run_after, id FROM job_queue WHERE status = 'pending' AND lane = ?1 ORDER BY run_after, id LIMIT 1",
    )?;
    let mut out = Vec::new();
    let mut after = String::new();
    while let Some(lane) = next_lane.query_row([&after], |r| r.get::<_, String>(0)).optional()? {
        if let Some((run_after, id)) = head.query_row([&lane], |r| Ok((r.get(0)?, r.get(1)?))).optional()? {
            out.push((lane.clone(), run_after, id));
        }
        after = lane;
    }
    Ok(out)
}

/// Renews the leases of `held` (id, token) under `epoch`; returns the ids still ours.
pub fn renew(
    tx: &Transaction<'_>,
    epoch: Epoch,
    held: &[(JobId, String)],
    now: WallMs,
) -> rusqlite::Result<Vec<JobId>> {
    crate::powerloss::phase("renew");
    let mut stmt = tx.prepare_cached(
        "UPDATE job_queue SET heartbeat_at = ?4
         WHERE id = ?1 AND status = 'running' AND claim_token = ?2 AND claim_epoch = ?3",
    )?;
    let mut ours = Vec::new();
    for (id, token) in held {
        if stmt.execute(params![id, token, epoch, now])? == 1 {
            ours.push(*id);
        }
    }
    Ok(ours)
}

/// Records the held child's identity on the run, before the child is released.
pub fn record_child(tx: &Transaction<'_>, claim: &ClaimRef, child: &ChildIdentity) -> rusqlite::Result<bool> {
    let (epoch, id, token) = (claim.epoch, claim.id, claim.token.as_str());
    if !owns(tx, epoch, id, token)? {
        return Ok(false);
    }
    let n = tx
        .prepare_cached(
            "UPDATE job_runs SET child_pid = ?3, child_pgid = ?4, child_boot_id = ?5, child_start_time = ?6
             WHERE job_id = ?1 AND claim_token = ?2 AND ended_at IS NULL",
        )?
        .execute(params![id, token, child.pid, child.pgid, child.boot_id, child.start_time as i64])?;
    Ok(n == 1)
}

fn owns(tx: &Transaction<'_>, epoch: Epoch, id: JobId, token: &str) -> rusqlite::Result<bool> {
    tx.prepare_cached(
        "SELECT 1 FROM job_queue WHERE id = ?1 AND status = 'running' AND claim_token = ?2 AND claim_epoch = ?3",
    )?
    .query_row(params![id, token, epoch], |_| Ok(()))
    .optional()
    .map(|o| o.is_some())
}

/// `columns` of the job `claim` owns (running, under its token and epoch), read by `row`;
/// `None`: not the owner.
fn owned_row<T>(
    tx: &Transaction<'_>,
    claim: &ClaimRef,
    columns: &str,
    row: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Option<T>> {
    tx.query_row(
        &format!(
            "SELECT {columns} FROM job_queue
             WHERE id = ?1 AND status = 'running' AND claim_token = ?2 AND claim_epoch = ?3"
        ),
        params![claim.id, claim.token, claim.epoch],
        row,
    )
    .optional()
}

/// Clears the lock columns: every transition out of `running` does this.
const CLEAR_LOCK: &str =
    "locked_by = NULL, locked_at = NULL, heartbeat_at = NULL, claim_token = NULL, claim_epoch = NULL";

fn end_run(
    tx: &Transaction<'_>,
    id: JobId,
    token: &str,
    outcome: &str,
    error: Option<&str>,
    now: WallMs,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE job_runs SET ended_at = ?3, outcome = ?4, error = ?5
         WHERE job_id = ?1 AND claim_token = ?2 AND ended_at IS NULL",
    )?
    .execute(params![id, token, now, outcome, error])?;
    Ok(())
}

/// The current owner records success. `false`: not the owner (nothing changed).
pub fn complete(tx: &Transaction<'_>, claim: &ClaimRef, result: Option<&str>, now: WallMs) -> rusqlite::Result<bool> {
    let (epoch, id, token) = (claim.epoch, claim.id, claim.token.as_str());
    if crate::mutant::active(crate::mutant::NO_OWNER_TOKEN_GUARD) {
        // Mutant: whoever finishes last writes the outcome, token or not.
        let n = tx.execute(
            &format!(
                "UPDATE job_queue SET status = 'completed', result = ?2, completed_at = ?3, {CLEAR_LOCK} WHERE id = ?1"
            ),
            params![id, result, now],
        )?;
        if n == 1 {
            end_run(tx, id, token, "completed", None, now)?;
        }
        return Ok(n == 1);
    }
    let n = tx
        .prepare_cached(&format!(
            "UPDATE job_queue SET status = 'completed', result = ?4, completed_at = ?5, {CLEAR_LOCK}
             WHERE id = ?1 AND status = 'running' AND claim_token = ?2 AND claim_epoch = ?3"
        ))?
        .execute(params![id, token, epoch, result, now])?;
    if n == 1 {
        end_run(tx, id, token, "completed", None, now)?;
    }
    Ok(n == 1)
}

/// If an operator asked to cancel the job while this run was ending, it becomes
/// `cancelled` instead of going back to `pending` (where it could be claimed again before
/// the daemon saw the request). `true` if so; the run ends with outcome `outcome`.
fn cancel_if_requested(
    tx: &Transaction<'_>,
    id: JobId,
    token: &str,
    outcome: &str,
    now: WallMs,
) -> rusqlite::Result<bool> {
    let n = tx.execute(
        &format!(
            "UPDATE job_queue SET status = 'cancelled', completed_at = ?3,
                    error = 'cancelled by an operator while running', {CLEAR_LOCK}
             WHERE id = ?1 AND claim_token = ?2 AND status = 'running' AND cancel_requested_at IS NOT NULL"
        ),
        params![id, token, now],
    )?;
    if n == 1 {
        end_run(tx, id, token, outcome, Some("cancelled by an operator"), now)?;
    }
    Ok(n == 1)
}

/// The current owner records a failure: `pending` at `retry_at` while attempts remain
/// (and `retryable`), else `failed`. The error joins the job's history. `None`: not the
/// owner (nothing changed).
pub fn fail(
    tx: &Transaction<'_>,
    claim: &ClaimRef,
    error: &str,
    retryable: bool,
    retry_at: WallMs,
    now: WallMs,
) -> rusqlite::Result<Option<FailOutcome>> {
    let (epoch, id, token) = (claim.epoch, claim.id, claim.token.as_str());
    let Some((attempts, max)) =
        owned_row(tx, claim, "attempts, max_attempts", |r| Ok((r.get::<_, u32>(0)?, r.get::<_, u32>(1)?)))?
    else {
        return Ok(None);
    };
    let outcome =
        if retryable && attempts < max { FailOutcome::Retry { run_after: retry_at } } else { FailOutcome::Failed };
    let (status, run_after, completed_at) = match outcome {
        FailOutcome::Retry { .. } if cancel_if_requested(tx, id, token, "failed", now)? => {
            return Ok(Some(FailOutcome::Cancelled));
        }
        FailOutcome::Retry { run_after } => (JobStatus::Pending, Some(run_after), None),
        _ => (JobStatus::Failed, None, Some(now)),
    };
    tx.execute(
        &format!(
            "UPDATE job_queue SET status = ?4, error = ?5, run_after = COALESCE(?6, run_after), completed_at = ?7,
                    run_after_set_at = CASE WHEN ?6 IS NULL THEN run_after_set_at ELSE ?8 END,
                    errors = json_insert(errors, '$[#]', json_object('at', ?8, 'attempt', attempts, 'run', runs, 'error', ?5)),
                    {CLEAR_LOCK}
             WHERE id = ?1 AND status = 'running' AND claim_token = ?2 AND claim_epoch = ?3"
        ),
        params![id, token, epoch, status, error, run_after, completed_at, now],
    )?;
    end_run(tx, id, token, "failed", Some(error), now)?;
    Ok(Some(outcome))
}

/// Graceful release at shutdown: back to `pending`, the attempt given back and counted
/// as an interruption instead; past `max_interruptions`, `failed`. `None`: not the owner.
pub fn release(
    tx: &Transaction<'_>,
    claim: &ClaimRef,
    max_interruptions: u32,
    now: WallMs,
) -> rusqlite::Result<Option<FailOutcome>> {
    let (id, token) = (claim.id, claim.token.as_str());
    let Some(interruptions) = owned_row(tx, claim, "interruptions", |r| r.get::<_, u32>(0))? else {
        return Ok(None);
    };
    if cancel_if_requested(tx, id, token, "released", now)? {
        return Ok(Some(FailOutcome::Cancelled));
    }
    if interruptions < max_interruptions {
        tx.execute(
            &format!(
                "UPDATE job_queue SET status = 'pending', attempts = attempts - ?3, interruptions = interruptions + ?3,
                        {CLEAR_LOCK}
                 WHERE id = ?1 AND claim_token = ?2"
            ),
            params![id, token, if crate::mutant::active(crate::mutant::NO_DRAIN_GIVE_BACK) { 0 } else { 1 }],
        )?;
        end_run(tx, id, token, "released", None, now)?;
        return Ok(Some(FailOutcome::Retry { run_after: now }));
    }
    let error = format!("interrupted by shutdown {} times (max_interruptions)", interruptions + 1);
    tx.execute(
        &format!(
            "UPDATE job_queue SET status = 'failed', interruptions = interruptions + 1, error = ?3, completed_at = ?4,
                    errors = json_insert(errors, '$[#]', json_object('at', ?4, 'attempt', attempts, 'run', runs, 'error', ?3)),
                    {CLEAR_LOCK}
             WHERE id = ?1 AND claim_token = ?2"
        ),
        params![id, token, error, now],
    )?;
    end_run(tx, id, token, "released", Some(&error), now)?;
    Ok(Some(FailOutcome::Failed))
}

/// A run whose lease was lost (its child already killed): back to `pending` for another
/// run, with no outcome recorded — the attempt stays counted, so a job that keeps losing
/// its lease ends `failed` after `max_attempts` like any other. `None`: not the owner.
pub fn abandon(
    tx: &Transaction<'_>,
    claim: &ClaimRef,
    reason: &str,
    now: WallMs,
) -> rusqlite::Result<Option<FailOutcome>> {
    let (id, token) = (claim.id, claim.token.as_str());
    let Some(exhausted) = owned_row(tx, claim, "attempts >= max_attempts", |r| r.get::<_, bool>(0))? else {
        return Ok(None);
    };
    if !exhausted && cancel_if_requested(tx, id, token, "abandoned", now)? {
        return Ok(Some(FailOutcome::Cancelled));
    }
    if exhausted {
        tx.execute(
            &format!(
                "UPDATE job_queue SET status = 'failed', completed_at = ?3, error = ?4 || '; no attempts left',
                        errors = json_insert(errors, '$[#]', json_object('at', ?3, 'attempt', attempts, 'run', runs, 'error', ?4)),
                        {CLEAR_LOCK}
                 WHERE id = ?1 AND claim_token = ?2"
            ),
            params![id, token, now, reason],
        )?;
    } else {
        tx.execute(
            &format!(
                "UPDATE job_queue SET status = 'pending',
                        errors = json_insert(errors, '$[#]', json_object('at', ?3, 'attempt', attempts, 'run', runs, 'error', ?4)),
                        {CLEAR_LOCK}
                 WHERE id = ?1 AND claim_token = ?2"
            ),
            params![id, token, now, reason],
        )?;
    }
    end_run(tx, id, token, "abandoned", Some(reason), now)?;
    Ok(Some(if exhausted { FailOutcome::Failed } else { FailOutcome::Retry { run_after: now } }))
}

/// A run the daemon could not start for its own reasons (out of file descriptors,
/// processes or memory; a full or read-only disk): back to `pending` at `retry_at` with
/// the attempt given back, and not counted as an interruption either — the job did
/// nothing wrong and never ran. The run ends `not_started` with the reason, which also
/// joins the job's error history. `None`: not the owner.
pub fn requeue_unstarted(
    tx: &Transaction<'_>,
    claim: &ClaimRef,
    reason: &str,
    retry_at: WallMs,
    now: WallMs,
) -> rusqlite::Result<Option<FailOutcome>> {
    let (epoch, id, token) = (claim.epoch, claim.id, claim.token.as_str());
    if !owns(tx, epoch, id, token)? {
        return Ok(None);
    }
    if cancel_if_requested(tx, id, token, "not_started", now)? {
        return Ok(Some(FailOutcome::Cancelled));
    }
    tx.prepare_cached(&format!(
        "UPDATE job_queue SET status = 'pending', attempts = attempts - 1, run_after = ?3, run_after_set_at = ?4,
                errors = json_insert(errors, '$[#]', json_object('at', ?4, 'attempt', attempts, 'run', runs, 'error', ?5)),
                {CLEAR_LOCK}
         WHERE id = ?1 AND claim_token = ?2"
    ))?
    .execute(params![id, token, retry_at, now, reason])?;
    end_run(tx, id, token, "not_started", Some(reason), now)?;
    super::ops::bump_metric(tx, "start_resource_failures", 1)?;
    Ok(Some(FailOutcome::Retry { run_after: retry_at }))
}

/// A forward step of the wall clock (see `clock.rs`): every job still waiting for a
/// `run_after` that was set before the step (at or before `from`, on the effective
/// clock) moves forward by `by`, so its delay keeps its length. Times set after the step
/// are on the new clock already and stay. An absolute `--run-after` time is stored as set
/// at itself, so it is never before a step taken while it waits, and never moves.
/// Returns how many jobs moved.
pub fn shift_scheduled(tx: &Transaction<'_>, from: i64, by: i64) -> rusqlite::Result<usize> {
    let n = tx.execute(
        "UPDATE job_queue SET run_after = run_after + ?2
         WHERE status = 'pending' AND run_after > ?1 AND COALESCE(run_after_set_at, created_at) <= ?1",
        params![from, by],
    )?;
    super::ops::bump_metric(tx, "clock_steps", 1)?;
    Ok(n)
}

/// The process groups recorded by runs of jobs still `running` (read-only): startup
/// kills them, and waits until they are gone, before [`recover_orphans`] requeues anything.
pub fn orphan_children(tx: &Transaction<'_>) -> rusqlite::Result<Vec<(JobId, ChildIdentity)>> {
    let mut stmt = tx.prepare(
        "SELECT r.job_id, r.child_pid, r.child_pgid, r.child_boot_id, r.child_start_time
         FROM job_runs r JOIN job_queue q ON q.id = r.job_id
         WHERE q.status = 'running' AND r.ended_at IS NULL AND r.child_pgid IS NOT NULL",
    )?;
    let rows = stmt
        .query_map([], |r| {
            let child = ChildIdentity {
                pid: r.get(1)?,
                pgid: r.get(2)?,
                boot_id: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
                start_time: r.get::<_, Option<i64>>(4)?.unwrap_or(0) as u64,
            };
            Ok((r.get(0)?, child))
        })?
        .collect();
    rows
}

/// Startup recovery: with the epoch ours, every `running` row is an orphan, whatever
/// its heartbeat age (failure modes 10, 11).
///
/// An `exec` run with no child recorded never ran: its program is started held and
/// released only once its identity has committed, and the held start exits when its
/// daemon dies. Such an orphan gets its attempt back, counted as an interruption instead,
/// as a graceful release does — while it has had fewer than `max_interruptions`; after
/// that it is an orphan like any other. Every other orphan's attempt stays counted (an
/// in-process job that kills the daemon cannot crash-loop).
pub fn recover_orphans(
    tx: &Transaction<'_>,
    retry_at: WallMs,
    max_interruptions: u32,
    now: WallMs,
) -> rusqlite::Result<Recovered> {
    crate::powerloss::phase("recovery");
    let mut out = Recovered { children: orphan_children(tx)?, ..Recovered::default() };
    if crate::mutant::active(crate::mutant::NO_IMMEDIATE_RECOVERY) {
        // Mutant: a restart right after a crash leaves the orphans `running` (the original
        // daemon recovered only rows whose heartbeat was older than the threshold).
        return Ok(Recovered::default());
    }
    let unreleased: Vec<JobId> = if crate::mutant::active(crate::mutant::UNRELEASED_ORPHAN_CHARGED) {
        Vec::new()
    } else {
        tx.prepare(
            "SELECT q.id FROM job_queue q
             JOIN job_runs r ON r.job_id = q.id AND r.claim_token = q.claim_token
             WHERE q.status = 'running' AND q.kind = 'exec' AND q.cancel_requested_at IS NULL
               AND q.interruptions < ?1 AND r.ended_at IS NULL AND r.child_pgid IS NULL",
        )?
        .query_map([max_interruptions], |r| r.get(0))?
        .collect::<Result<_, _>>()?
    };
    for id in &unreleased {
        give_back_unreleased(tx, *id, retry_at, now)?;
    }
    out.given_back = unreleased.clone();
    out.requeued = unreleased;
    let error = "orphaned: the daemon running it stopped without recording an outcome";
    tx.execute(
        "UPDATE job_runs SET ended_at = ?1, outcome = 'orphaned', error = ?2
         WHERE ended_at IS NULL AND job_id IN (SELECT id FROM job_queue WHERE status = 'running')",
        params![now, error],
    )?;
    out.cancelled = tx
        .prepare(&format!(
            "UPDATE job_queue SET status = 'cancelled', completed_at = ?1,
                    error = 'cancelled by an operator while running', {CLEAR_LOCK}
             WHERE status = 'running' AND cancel_requested_at IS NOT NULL RETURNING id"
        ))?
        .query_map(params![now], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let failed: Vec<JobId> = tx
        .prepare(&format!(
            "UPDATE job_queue SET status = 'failed', completed_at = ?1,
                    error = ?2 || '; no attempts left',
                    errors = json_insert(errors, '$[#]', json_object('at', ?1, 'attempt', attempts, 'run', runs, 'error', ?2)),
                    {CLEAR_LOCK}
             WHERE status = 'running' AND attempts >= max_attempts RETURNING id"
        ))?
        .query_map(params![now, error], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let requeued: Vec<JobId> = tx
        .prepare(&format!(
            "UPDATE job_queue SET status = 'pending', run_after = ?1, run_after_set_at = ?2,
                    errors = json_insert(errors, '$[#]', json_object('at', ?2, 'attempt', attempts, 'run', runs, 'error', ?3)),
                    {CLEAR_LOCK}
             WHERE status = 'running' RETURNING id"
        ))?
        .query_map(params![retry_at, now, error], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    out.failed.extend(failed);
    out.requeued.extend(requeued);
    out.requeued.sort_unstable();
    out.failed.sort_unstable();
    out.cancelled.sort_unstable();
    out.given_back.sort_unstable();
    Ok(out)
}

/// One orphan of [`recover_orphans`] whose program was never released, with interruptions
/// to spare: its run ends `orphaned` saying so, and the job is pending again with its
/// attempt given back and one more interruption.
fn give_back_unreleased(tx: &Transaction<'_>, id: JobId, retry_at: WallMs, now: WallMs) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE job_runs SET ended_at = ?2, outcome = 'orphaned', error = ?3 WHERE job_id = ?1 AND ended_at IS NULL",
        params![id, now, UNRELEASED_ORPHAN],
    )?;
    tx.execute(
        &format!(
            "UPDATE job_queue SET status = 'pending', attempts = attempts - 1, interruptions = interruptions + 1,
                    run_after = ?2, run_after_set_at = ?3,
                    errors = json_insert(errors, '$[#]', json_object('at', ?3, 'attempt', attempts, 'run', runs, 'error', ?4)),
                    {CLEAR_LOCK}
             WHERE id = ?1"
        ),
        params![id, retry_at, now, UNRELEASED_ORPHAN],
    )?;
    Ok(())
}

/// `n` random 128-bit claim tokens, hex.
fn random_tokens(n: usize) -> Vec<String> {
    let mut buf = vec![0u8; 16 * n];
    if let Err(e) = crate::platform::random_bytes(&mut buf) {
        panic!("{e}");
    }
    buf.chunks(16).map(|c| c.iter().map(|b| format!("{b:02x}")).collect()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    fn db() -> (tempfile::TempDir, Connection) {
        crate::sqlite::test_db()
    }

    fn job(lane: &str, kind: &str) -> NewJob {
        NewJob::new(kind, lane, 3)
    }

    fn limits(global: u32, lanes: &[(&str, u32)]) -> ClaimLimits {
        ClaimLimits {
            global,
            lanes: lanes.iter().map(|(l, n)| (l.to_string(), *n)).collect(),
            default_lane: 1,
            batch: 32,
        }
    }

    fn with_tx<R>(c: &mut Connection, f: impl FnOnce(&Transaction<'_>) -> R) -> R {
        let tx = c.transaction().unwrap();
        let r = f(&tx);
        tx.commit().unwrap();
        r
    }

    fn row(c: &Connection, id: JobId) -> (String, u32, u32, Option<String>, Option<String>, String) {
        c.query_row(
            "SELECT status, attempts, interruptions, claim_token, locked_by, errors FROM job_queue WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
        )
        .unwrap()
    }

    #[test]
    fn claim_is_fifo_within_a_lane_and_respects_caps() {
        let (_t, mut c) = db();
        let ids: Vec<JobId> =
            with_tx(&mut c, |tx| (0..5).map(|_| enqueue(tx, &job("a", "noop"), WallMs(100)).unwrap()).collect());
        let got = with_tx(&mut c, |tx| claim(tx, Epoch(1), "w", &limits(4, &[("a", 2)]), WallMs(100)).unwrap());
        assert_eq!(got.iter().map(|c| c.id).collect::<Vec<_>>(), ids[..2]);
        assert!(got.iter().all(|c| c.attempt == 1 && c.run == 1 && c.token.len() == 32));
        assert_ne!(got[0].token, got[1].token);
        // The lane is full: nothing more until one finishes.
        assert!(
            with_tx(&mut c, |tx| claim(tx, Epoch(1), "w", &limits(4, &[("a", 2)]), WallMs(100)).unwrap()).is_empty()
        );
        assert!(with_tx(&mut c, |tx| complete(tx, &got[0].claim_ref(Epoch(1)), None, WallMs(101)).unwrap()));
        let next = with_tx(&mut c, |tx| claim(tx, Epoch(1), "w", &limits(4, &[("a", 2)]), WallMs(102)).unwrap());
        assert_eq!(next.iter().map(|c| c.id).collect::<Vec<_>>(), vec![ids[2]]);
    }

    #[test]
    fn lanes_take_turns_under_the_global_cap() {
        let (_t, mut c) = db();
        with_tx(&mut c, |tx| {
            for _ in 0..4 {
                enqueue(tx, &job("a", "noop"), WallMs(100)).unwrap();
            }
            for _ in 0..4 {
                enqueue(tx, &job("b", "noop"), WallMs(100)).unwrap();
            }
        });
        let got =
            with_tx(&mut c, |tx| claim(tx, Epoch(1), "w", &limits(3, &[("a", 4), ("b", 4)]), WallMs(100)).unwrap());
        let lanes: Vec<&str> = got.iter().map(|c| c.lane.as_str()).collect();
        assert_eq!(lanes, ["a", "b", "a"], "both lanes progress, oldest lane first, global cap 3");
    }

    #[test]
    fn future_jobs_wait_for_run_after() {
        let (_t, mut c) = db();
        let mut j = job("a", "noop");
        j.run_after = WallMs(5_000);
        with_tx(&mut c, |tx| enqueue(tx, &j, WallMs(100)).unwrap());
        assert!(with_tx(&mut c, |tx| claim(tx, Epoch(1), "w", &limits(4, &[]), WallMs(4_999)).unwrap()).is_empty());
        assert_eq!(with_tx(&mut c, |tx| claim(tx, Epoch(1), "w", &limits(4, &[]), WallMs(5_000)).unwrap()).len(), 1);
    }

    #[test]
    fn a_stale_token_or_epoch_changes_nothing() {
        let (_t, mut c) = db();
        let id = with_tx(&mut c, |tx| enqueue(tx, &job("a", "noop"), WallMs(100)).unwrap());
        let cl = with_tx(&mut c, |tx| claim(tx, Epoch(7), "w", &limits(4, &[]), WallMs(100)).unwrap()).remove(0);
        let before = row(&c, id);
        let runs_before: i64 =
            c.query_row("SELECT COUNT(*) FROM job_runs WHERE ended_at IS NULL", [], |r| r.get(0)).unwrap();
        let child = ChildIdentity { pid: 1, pgid: 1, boot_id: "b".into(), start_time: 1 };
        for (epoch, token) in [(7, "not-the-token"), (6, cl.token.as_str()), (8, cl.token.as_str())] {
            let claim = ClaimRef { epoch: Epoch(epoch), id, token: token.to_owned() };
            let now = WallMs(200);
            with_tx(&mut c, |tx| {
                assert!(!complete(tx, &claim, None, now).unwrap());
                assert_eq!(fail(tx, &claim, "x", true, WallMs(300), now).unwrap(), None);
                assert_eq!(release(tx, &claim, 10, now).unwrap(), None);
                assert!(renew(tx, claim.epoch, &[(id, token.to_owned())], now).unwrap().is_empty());
                assert!(!record_child(tx, &claim, &child).unwrap());
            });
            assert_eq!(row(&c, id), before, "epoch {epoch} token {token} changed the job");
        }
        let runs_after: i64 =
            c.query_row("SELECT COUNT(*) FROM job_runs WHERE ended_at IS NULL", [], |r| r.get(0)).unwrap();
        assert_eq!(runs_before, runs_after);
        // The owner can.
        assert_eq!(
            with_tx(&mut c, |tx| renew(tx, Epoch(7), &[(id, cl.token.clone())], WallMs(150)).unwrap()),
            vec![id]
        );
        assert!(with_tx(&mut c, |tx| complete(tx, &cl.claim_ref(Epoch(7)), Some("ok"), WallMs(200)).unwrap()));
        let (status, _, _, token, locked_by, _) = row(&c, id);
        assert_eq!((status.as_str(), token, locked_by), ("completed", None, None), "lock columns cleared");
        // And only once.
        assert!(!with_tx(&mut c, |tx| complete(tx, &cl.claim_ref(Epoch(7)), Some("again"), WallMs(201)).unwrap()));
    }

    #[test]
    fn failures_retry_until_attempts_run_out_keeping_every_error() {
        let (_t, mut c) = db();
        let id = with_tx(&mut c, |tx| enqueue(tx, &job("a", "fail"), WallMs(100)).unwrap());
        let mut now = WallMs(100);
        for attempt in 1..=3u32 {
            let cl = with_tx(&mut c, |tx| claim(tx, Epoch(1), "w", &limits(4, &[]), now).unwrap()).remove(0);
            assert_eq!((cl.attempt, cl.run), (attempt, attempt));
            let out = with_tx(&mut c, |tx| {
                fail(tx, &cl.claim_ref(Epoch(1)), &format!("boom {attempt}"), true, now + 1000, now).unwrap()
            });
            let expect = if attempt < 3 {
                Some(FailOutcome::Retry { run_after: now + 1000 })
            } else {
                Some(FailOutcome::Failed)
            };
            assert_eq!(out, expect);
            now = now + 1000;
        }
        let (status, attempts, _, token, _, errors) = row(&c, id);
        assert_eq!((status.as_str(), attempts, token), ("failed", 3, None));
        let errors: Vec<serde_json::Value> = serde_json::from_str(&errors).unwrap();
        let msgs: Vec<&str> = errors.iter().map(|e| e["error"].as_str().unwrap()).collect();
        assert_eq!(msgs, ["boom 1", "boom 2", "boom 3"]);
        let outcomes: Vec<String> = c
            .prepare("SELECT outcome FROM job_runs WHERE job_id = ?1 ORDER BY run")
            .unwrap()
            .query_map([id], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(outcomes, ["failed", "failed", "failed"]);
    }

    #[test]
    fn graceful_release_gives_the_attempt_back_until_max_interruptions() {
        let (_t, mut c) = db();
        let id = with_tx(&mut c, |tx| enqueue(tx, &job("a", "sleep"), WallMs(100)).unwrap());
        for n in 1..=2u32 {
            let cl = with_tx(&mut c, |tx| claim(tx, Epoch(1), "w", &limits(4, &[]), WallMs(100)).unwrap()).remove(0);
            assert_eq!(cl.attempt, 1, "a released run does not consume an attempt");
            assert_eq!(cl.run, n);
            let out = with_tx(&mut c, |tx| release(tx, &cl.claim_ref(Epoch(1)), 1, WallMs(200)).unwrap());
            let (status, attempts, interruptions, ..) = row(&c, id);
            if n == 1 {
                assert_eq!(out, Some(FailOutcome::Retry { run_after: WallMs(200) }));
                assert_eq!((status.as_str(), attempts, interruptions), ("pending", 0, 1));
            } else {
                assert_eq!(out, Some(FailOutcome::Failed));
                assert_eq!((status.as_str(), interruptions), ("failed", 2));
            }
        }
    }

    #[test]
    fn startup_recovery_requeues_every_orphan_and_fails_the_exhausted() {
        let (_t, mut c) = db();
        let (a, b) = with_tx(&mut c, |tx| {
            let a = enqueue(tx, &job("a", "noop"), WallMs(100)).unwrap();
            let mut one = job("b", "crash");
            one.max_attempts = 1;
            (a, enqueue(tx, &one, WallMs(100)).unwrap())
        });
        let claimed = with_tx(&mut c, |tx| claim(tx, Epoch(1), "w", &limits(4, &[]), WallMs(100)).unwrap());
        assert_eq!(claimed.len(), 2);
        let ca = claimed.iter().find(|c| c.id == a).unwrap();
        let child = ChildIdentity { pid: 4242, pgid: 4242, boot_id: "boot".into(), start_time: 77 };
        with_tx(&mut c, |tx| assert!(record_child(tx, &ca.claim_ref(Epoch(1)), &child).unwrap()));
        // A fresh heartbeat does not matter: the epoch is ours, so every running row is orphaned.
        let rec = with_tx(&mut c, |tx| recover_orphans(tx, WallMs(150), 2, WallMs(101)).unwrap());
        assert_eq!(rec.requeued, vec![a]);
        assert_eq!(rec.failed, vec![b]);
        assert_eq!(rec.children, vec![(a, child)]);
        assert_eq!(row(&c, a).0, "pending");
        assert_eq!(row(&c, b).0, "failed");
        let open: i64 = c.query_row("SELECT COUNT(*) FROM job_runs WHERE ended_at IS NULL", [], |r| r.get(0)).unwrap();
        assert_eq!(open, 0);
        // The old claim cannot complete after recovery, even under the same epoch.
        assert!(!with_tx(&mut c, |tx| complete(tx, &ca.claim_ref(Epoch(1)), None, WallMs(102)).unwrap()));
        // It runs again after orphan_retry_delay, as attempt 2, run 2.
        assert!(with_tx(&mut c, |tx| claim(tx, Epoch(2), "w2", &limits(4, &[]), WallMs(149)).unwrap()).is_empty());
        let again = with_tx(&mut c, |tx| claim(tx, Epoch(2), "w2", &limits(4, &[]), WallMs(150)).unwrap());
        assert_eq!((again[0].id, again[0].attempt, again[0].run), (a, 2, 2));
    }
}
