//! The job queue's statements on PostgreSQL: the same transitions as `crate::sqlite::jobs`,
//! for many workers at once.
//!
//! Differences from SQLite, each for the same reason (many daemons, many hosts):
//! - Every function runs inside a transaction that [`super::workers::guard`] opened: it
//!   holds a share lock on the worker's row and found it unfenced, so a fencer's update
//!   waits for this transaction, and once fenced nothing this incarnation sends commits.
//! - Times are the store's clock (`now`, from [`server_now`] in a daemon — see
//!   `super::jobstore::StoreClock`); a delay the coordinator computed on its own clock
//!   (`retry_at - now`) is applied to it.
//! - Claims lock the rows they take with `FOR UPDATE SKIP LOCKED`, so two workers never
//!   wait on (or take) the same row, and take a per-lane advisory lock so a lane's cap
//!   holds across the cluster (see [`claim`]).

use postgres::Transaction;

use crate::job::stored::{args_json, env_json, parse_args, parse_env};
use crate::job::{
    ChildIdentity, ClaimLimits, ClaimRef, Claimed, Epoch, ExecSettings, FailOutcome, JobId, NewJob, Recovered, WallMs,
    UNRELEASED_ORPHAN,
};

pub type PgResult<T> = Result<T, postgres::Error>;

/// The server's clock, in milliseconds since the Unix epoch.
pub fn server_now(tx: &mut Transaction<'_>) -> PgResult<i64> {
    Ok(tx.query_one("SELECT homer_now_ms()", &[])?.get(0))
}

/// Inserts a pending job, due `job.run_after - caller_now` after `now` (a delay the
/// caller computed on its own clock, applied to the store's); returns its id.
pub fn enqueue(
    tx: &mut Transaction<'_>,
    job: &NewJob,
    caller_now: WallMs,
    now: i64,
    key: Option<&str>,
) -> PgResult<JobId> {
    let delay = (job.run_after - caller_now).max(0);
    let row = tx.query_one(
        "INSERT INTO job_queue (lane, kind, payload, status, created_at, max_attempts, run_after, timeout_ms,
                                run_after_set_at, cwd, env, idempotency_key)
         VALUES ($1, $2, $3, 'pending', $10, $4, $10::bigint + $5::bigint, $6, $10, $7, $8, $9) RETURNING id",
        &[
            &job.lane,
            &job.kind,
            &args_json(&job.args),
            &(job.max_attempts as i32),
            &delay,
            &job.timeout_ms.map(|t| t as i64),
            &job.exec.cwd,
            &env_json(&job.exec.env),
            &key,
            &now,
        ],
    )?;
    Ok(JobId(row.get(0)))
}

/// A stable 64-bit advisory-lock key for a lane's claims.
const LANE_LOCK: &str = "SELECT pg_try_advisory_xact_lock(hashtextextended('homer.lane:' || $1, 0))";

/// Claims ready jobs for worker `epoch` (its incarnation): pending, due on the server's
/// clock, FIFO by (run_after, id) within a lane, lanes taking turns oldest head first.
///
/// Caps: `limits.global` is this daemon's own (its slots: it runs what it claims);
/// `limits.lane_cap(lane)` is the lane's cap across every worker. To count a lane's
/// running jobs and claim into it without two workers both seeing room, a claim takes
/// the lane's transaction-scoped advisory lock first — with `pg_try_…`, so a lane another
/// worker is claiming from right now is skipped this pass instead of waited on. The rows
/// themselves are taken `FOR UPDATE SKIP LOCKED`: a row an operator's `cancel` (or another
/// worker's recovery) has locked is passed over, never waited on, never taken twice.
pub fn claim(
    tx: &mut Transaction<'_>,
    epoch: Epoch,
    worker: &str,
    limits: &ClaimLimits,
    now: i64,
    tokens: &[String],
) -> PgResult<Vec<Claimed>> {
    let mine: i64 = tx
        .query_one("SELECT COUNT(*) FROM job_queue WHERE status = 'running' AND claim_epoch = $1", &[&epoch.0])?
        .get(0);
    let room = (limits.global as i64 - mine).clamp(0, limits.batch as i64);
    if room == 0 {
        return Ok(Vec::new());
    }
    // Every lane with a ready head, by a loose index scan over idx_queue_ready.
    let heads = tx.query(
        "WITH RECURSIVE lanes(lane) AS (
             (SELECT lane FROM job_queue WHERE status = 'pending' ORDER BY lane LIMIT 1)
             UNION ALL
             SELECT (SELECT q.lane FROM job_queue q WHERE q.status = 'pending' AND q.lane > l.lane
                     ORDER BY q.lane LIMIT 1)
             FROM lanes l WHERE l.lane IS NOT NULL
         )
         SELECT l.lane, h.run_after, h.id FROM lanes l
         CROSS JOIN LATERAL (SELECT run_after, id FROM job_queue q
                             WHERE q.status = 'pending' AND q.lane = l.lane
                             ORDER BY run_after, id LIMIT 1) h
         WHERE l.lane IS NOT NULL AND h.run_after <= $1
         ORDER BY h.run_after, h.id",
        &[&now],
    )?;
    let unlocked = crate::mutant::active(crate::mutant::PG_NO_SKIP_LOCKED);
    let pick = if unlocked {
        // Mutant: the rows are read without locking, and taken by the UPDATE below.
        "SELECT id FROM job_queue WHERE status = 'pending' AND lane = $1 AND run_after <= $2
           AND cancel_requested_at IS NULL ORDER BY run_after, id LIMIT $3 FOR UPDATE"
    } else {
        "SELECT id FROM job_queue WHERE status = 'pending' AND lane = $1 AND run_after <= $2
           AND cancel_requested_at IS NULL ORDER BY run_after, id LIMIT $3 FOR UPDATE SKIP LOCKED"
    };
    let mut queues: Vec<std::collections::VecDeque<i64>> = Vec::new();
    for head in &heads {
        let lane: String = head.get(0);
        if !unlocked && !tx.query_one(LANE_LOCK, &[&lane])?.get::<_, bool>(0) {
            continue;
        }
        let running: i64 =
            tx.query_one("SELECT COUNT(*) FROM job_queue WHERE status = 'running' AND lane = $1", &[&lane])?.get(0);
        let free = (limits.lane_cap(&lane) as i64 - running).clamp(0, room);
        if free == 0 {
            continue;
        }
        let ids = tx.query(pick, &[&lane, &now, &free])?.iter().map(|r| r.get::<_, i64>(0)).collect();
        queues.push(ids);
    }
    let chosen = crate::job::take_turns(queues, room as usize);
    let mut claimed = Vec::with_capacity(chosen.len());
    let mark = tx.prepare(
        "UPDATE job_queue SET status = 'running', locked_by = $2, locked_at = $3, heartbeat_at = $3,
                started_at = $3, attempts = attempts + 1, runs = runs + 1,
                claim_token = $4, claim_epoch = $5
         WHERE id = $1 AND status = 'pending' AND cancel_requested_at IS NULL
         RETURNING lane, kind, payload, attempts, runs, timeout_ms, max_attempts, cwd, env",
    )?;
    let run_row = tx.prepare(
        "INSERT INTO job_runs (job_id, run, attempt, epoch, claim_token, worker, started_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )?;
    for id in chosen {
        // One of the tokens the caller chose (at least `limits.batch`): a claim whose
        // commit went unacknowledged is found again by them (`PgStore::claim`).
        let Some(token) = tokens.get(claimed.len()).cloned() else { break };
        let Some(r) = tx.query_opt(&mark, &[&id, &worker, &now, &token, &epoch.0])? else { continue };
        let c = Claimed {
            id: JobId(id),
            lane: r.get(0),
            kind: r.get(1),
            args: parse_args(&r.get::<_, String>(2)),
            attempt: r.get::<_, i32>(3) as u32,
            run: r.get::<_, i32>(4) as u32,
            token,
            timeout_ms: r.get::<_, Option<i64>>(5).map(|t| t as u64),
            max_attempts: r.get::<_, i32>(6) as u32,
            exec: ExecSettings { cwd: r.get(7), env: parse_env(r.get(8)) },
        };
        tx.execute(&run_row, &[&id, &(c.run as i32), &(c.attempt as i32), &epoch.0, &c.token, &worker, &now])?;
        claimed.push(c);
    }
    Ok(claimed)
}

/// Renews the leases of `held` (id, token) under `epoch`; returns the ids still ours.
pub fn renew(tx: &mut Transaction<'_>, epoch: Epoch, held: &[(JobId, String)], now: i64) -> PgResult<Vec<JobId>> {
    let ids: Vec<i64> = held.iter().map(|(id, _)| id.0).collect();
    let tokens: Vec<&str> = held.iter().map(|(_, t)| t.as_str()).collect();
    let rows = tx.query(
        "UPDATE job_queue q SET heartbeat_at = $4
         FROM unnest($1::bigint[], $2::text[]) AS h(id, token)
         WHERE q.id = h.id AND q.status = 'running' AND q.claim_token = h.token AND q.claim_epoch = $3
         RETURNING q.id",
        &[&ids, &tokens, &epoch.0, &now],
    )?;
    let mut ours: Vec<JobId> = rows.iter().map(|r| JobId(r.get(0))).collect();
    ours.sort_unstable();
    Ok(ours)
}

fn owns(tx: &mut Transaction<'_>, claim: &ClaimRef) -> PgResult<bool> {
    Ok(tx
        .query_opt(
            "SELECT 1 FROM job_queue WHERE id = $1 AND status = 'running' AND claim_token = $2 AND claim_epoch = $3
             FOR UPDATE",
            &[&claim.id.0, &claim.token, &claim.epoch.0],
        )?
        .is_some())
}

/// Records the held child's identity on the run, before the child is released.
pub fn record_child(tx: &mut Transaction<'_>, claim: &ClaimRef, child: &ChildIdentity) -> PgResult<bool> {
    if !owns(tx, claim)? {
        return Ok(false);
    }
    let n = tx.execute(
        "UPDATE job_runs SET child_pid = $3, child_pgid = $4, child_boot_id = $5, child_start_time = $6
         WHERE job_id = $1 AND claim_token = $2 AND ended_at IS NULL",
        &[
            &claim.id.0,
            &claim.token,
            &(child.pid as i64),
            &(child.pgid as i64),
            &child.boot_id,
            &(child.start_time as i64),
        ],
    )?;
    Ok(n == 1)
}

/// Clears the lock columns: every transition out of `running` does this.
const CLEAR_LOCK: &str =
    "locked_by = NULL, locked_at = NULL, heartbeat_at = NULL, claim_token = NULL, claim_epoch = NULL";

/// Appends `{at, attempt, run, error}` to the job's error history (`$at`, `$error` are
/// the placeholders named).
fn push_error(at: &str, error: &str) -> String {
    format!(
        "errors = (errors::jsonb || jsonb_build_array(jsonb_build_object(
             'at', {at}::bigint, 'attempt', attempts, 'run', runs, 'error', {error}::text)))::text"
    )
}

fn end_run(tx: &mut Transaction<'_>, claim: &ClaimRef, outcome: &str, error: Option<&str>, now: i64) -> PgResult<()> {
    tx.execute(
        "UPDATE job_runs SET ended_at = $3, outcome = $4, error = $5
         WHERE job_id = $1 AND claim_token = $2 AND ended_at IS NULL",
        &[&claim.id.0, &claim.token, &now, &outcome, &error],
    )?;
    Ok(())
}

/// The current owner ends the job for good: `set` (its terminal status, and an error if
/// any) with `completed_at` = `now` and the lock cleared, and its run ended with
/// `outcome`. `false`: not the owner (nothing changed).
fn finish_owned(tx: &mut Transaction<'_>, claim: &ClaimRef, set: &str, outcome: &str, now: i64) -> PgResult<bool> {
    let n = tx.execute(
        &format!(
            "UPDATE job_queue SET {set}, completed_at = $4, {CLEAR_LOCK}
             WHERE id = $1 AND status = 'running' AND claim_token = $2 AND claim_epoch = $3"
        ),
        &[&claim.id.0, &claim.token, &claim.epoch.0, &now],
    )?;
    if n == 1 {
        end_run(tx, claim, outcome, None, now)?;
    }
    Ok(n == 1)
}

/// The current owner records success. `false`: not the owner (nothing changed).
pub fn complete(tx: &mut Transaction<'_>, claim: &ClaimRef, now: i64) -> PgResult<bool> {
    finish_owned(tx, claim, "status = 'completed'", "completed", now)
}

/// If an operator asked to cancel the job while this run was ending: `cancelled`.
fn cancel_if_requested(tx: &mut Transaction<'_>, claim: &ClaimRef, outcome: &str, now: i64) -> PgResult<bool> {
    let n = tx.execute(
        &format!(
            "UPDATE job_queue SET status = 'cancelled', completed_at = $3,
                    error = 'cancelled by an operator while running', {CLEAR_LOCK}
             WHERE id = $1 AND claim_token = $2 AND status = 'running' AND cancel_requested_at IS NOT NULL"
        ),
        &[&claim.id.0, &claim.token, &now],
    )?;
    if n == 1 {
        end_run(tx, claim, outcome, Some("cancelled by an operator"), now)?;
    }
    Ok(n == 1)
}

/// The current owner records a failure; `delay_ms` until a retry (the coordinator's
/// backoff). `None`: not the owner.
pub fn fail(
    tx: &mut Transaction<'_>,
    claim: &ClaimRef,
    error: &str,
    retryable: bool,
    delay_ms: i64,
    now: i64,
) -> PgResult<Option<FailOutcome>> {
    let Some(row) = tx.query_opt(
        "SELECT attempts, max_attempts FROM job_queue
         WHERE id = $1 AND status = 'running' AND claim_token = $2 AND claim_epoch = $3 FOR UPDATE",
        &[&claim.id.0, &claim.token, &claim.epoch.0],
    )?
    else {
        return Ok(None);
    };
    let (attempts, max): (i32, i32) = (row.get(0), row.get(1));
    let run_after = now + delay_ms.max(0);
    if retryable && attempts < max {
        if cancel_if_requested(tx, claim, "failed", now)? {
            return Ok(Some(FailOutcome::Cancelled));
        }
        tx.execute(
            &format!(
                "UPDATE job_queue SET status = 'pending', error = $3, run_after = $4, run_after_set_at = $5,
                        {}, {CLEAR_LOCK}
                 WHERE id = $1 AND claim_token = $2",
                push_error("$5", "$3")
            ),
            &[&claim.id.0, &claim.token, &error, &run_after, &now],
        )?;
        end_run(tx, claim, "failed", Some(error), now)?;
        return Ok(Some(FailOutcome::Retry { run_after: WallMs(run_after) }));
    }
    tx.execute(
        &format!(
            "UPDATE job_queue SET status = 'failed', error = $3, completed_at = $4, {}, {CLEAR_LOCK}
             WHERE id = $1 AND claim_token = $2",
            push_error("$4", "$3")
        ),
        &[&claim.id.0, &claim.token, &error, &now],
    )?;
    end_run(tx, claim, "failed", Some(error), now)?;
    Ok(Some(FailOutcome::Failed))
}

/// Graceful release: back to `pending` with the attempt given back and counted as an
/// interruption; past `max_interruptions`, `failed`. `None`: not the owner.
pub fn release(
    tx: &mut Transaction<'_>,
    claim: &ClaimRef,
    max_interruptions: u32,
    now: i64,
) -> PgResult<Option<FailOutcome>> {
    let Some(row) = tx.query_opt(
        "SELECT interruptions FROM job_queue
         WHERE id = $1 AND status = 'running' AND claim_token = $2 AND claim_epoch = $3 FOR UPDATE",
        &[&claim.id.0, &claim.token, &claim.epoch.0],
    )?
    else {
        return Ok(None);
    };
    let interruptions: i32 = row.get(0);
    if cancel_if_requested(tx, claim, "released", now)? {
        return Ok(Some(FailOutcome::Cancelled));
    }
    if (interruptions as i64) < max_interruptions as i64 {
        tx.execute(
            &format!(
                "UPDATE job_queue SET status = 'pending', attempts = attempts - 1, interruptions = interruptions + 1,
                        {CLEAR_LOCK}
                 WHERE id = $1 AND claim_token = $2"
            ),
            &[&claim.id.0, &claim.token],
        )?;
        end_run(tx, claim, "released", None, now)?;
        return Ok(Some(FailOutcome::Retry { run_after: WallMs(now) }));
    }
    let error = format!("interrupted by shutdown {} times (max_interruptions)", interruptions + 1);
    tx.execute(
        &format!(
            "UPDATE job_queue SET status = 'failed', interruptions = interruptions + 1, error = $3, completed_at = $4,
                    {}, {CLEAR_LOCK}
             WHERE id = $1 AND claim_token = $2",
            push_error("$4", "$3")
        ),
        &[&claim.id.0, &claim.token, &error, &now],
    )?;
    end_run(tx, claim, "released", Some(&error), now)?;
    Ok(Some(FailOutcome::Failed))
}

/// A lost lease: back to `pending` with no outcome recorded (the attempt stays counted);
/// with none left, `failed`. `None`: not the owner.
pub fn abandon(tx: &mut Transaction<'_>, claim: &ClaimRef, reason: &str, now: i64) -> PgResult<Option<FailOutcome>> {
    let Some(row) = tx.query_opt(
        "SELECT attempts >= max_attempts FROM job_queue
         WHERE id = $1 AND status = 'running' AND claim_token = $2 AND claim_epoch = $3 FOR UPDATE",
        &[&claim.id.0, &claim.token, &claim.epoch.0],
    )?
    else {
        return Ok(None);
    };
    let exhausted: bool = row.get(0);
    if !exhausted && cancel_if_requested(tx, claim, "abandoned", now)? {
        return Ok(Some(FailOutcome::Cancelled));
    }
    let set = if exhausted {
        "status = 'failed', completed_at = $3, error = $4 || '; no attempts left'"
    } else {
        "status = 'pending'"
    };
    tx.execute(
        &format!(
            "UPDATE job_queue SET {set}, {}, {CLEAR_LOCK} WHERE id = $1 AND claim_token = $2",
            push_error("$3", "$4")
        ),
        &[&claim.id.0, &claim.token, &now, &reason],
    )?;
    end_run(tx, claim, "abandoned", Some(reason), now)?;
    Ok(Some(if exhausted { FailOutcome::Failed } else { FailOutcome::Retry { run_after: WallMs(now) } }))
}

/// A run the daemon could not start for its own reasons: back to `pending` after
/// `delay_ms`, the attempt given back, not an interruption. `None`: not the owner.
pub fn requeue_unstarted(
    tx: &mut Transaction<'_>,
    claim: &ClaimRef,
    reason: &str,
    delay_ms: i64,
    now: i64,
) -> PgResult<Option<FailOutcome>> {
    if !owns(tx, claim)? {
        return Ok(None);
    }
    if cancel_if_requested(tx, claim, "not_started", now)? {
        return Ok(Some(FailOutcome::Cancelled));
    }
    let run_after = now + delay_ms.max(0);
    tx.execute(
        &format!(
            "UPDATE job_queue SET status = 'pending', attempts = attempts - 1, run_after = $3, run_after_set_at = $4,
                    {}, {CLEAR_LOCK}
             WHERE id = $1 AND claim_token = $2",
            push_error("$4", "$5")
        ),
        &[&claim.id.0, &claim.token, &run_after, &now, &reason],
    )?;
    end_run(tx, claim, "not_started", Some(reason), now)?;
    bump_metric(tx, "start_resource_failures", 1)?;
    Ok(Some(FailOutcome::Retry { run_after: WallMs(run_after) }))
}

/// The daemon, as the run's owner, records an operator's cancellation.
pub fn cancel_running(tx: &mut Transaction<'_>, claim: &ClaimRef, now: i64) -> PgResult<bool> {
    finish_owned(tx, claim, "status = 'cancelled', error = 'cancelled by an operator while running'", "cancelled", now)
}

/// The children recorded by open runs of jobs still `running` under any of `epochs`.
pub fn orphan_children(tx: &mut Transaction<'_>, epochs: &[i64]) -> PgResult<Vec<(JobId, ChildIdentity)>> {
    let rows = tx.query(
        "SELECT r.job_id, r.child_pid, r.child_pgid, r.child_boot_id, r.child_start_time
         FROM job_runs r JOIN job_queue q ON q.id = r.job_id
         WHERE q.status = 'running' AND q.claim_epoch = ANY($1) AND r.ended_at IS NULL
           AND r.child_pgid IS NOT NULL AND r.claim_token = q.claim_token
         ORDER BY r.job_id",
        &[&epochs],
    )?;
    Ok(rows
        .iter()
        .map(|r| {
            let child = ChildIdentity {
                pid: r.get::<_, i64>(1) as u32,
                pgid: r.get::<_, i64>(2) as u32,
                boot_id: r.get::<_, Option<String>>(3).unwrap_or_default(),
                start_time: r.get::<_, Option<i64>>(4).unwrap_or(0) as u64,
            };
            (JobId(r.get(0)), child)
        })
        .collect())
}

/// Requeues (or fails, or cancels) every job still `running` under one of `epochs` —
/// incarnations already fenced, whose runs nobody will record — with `delay_ms` before
/// the next run. An `exec` run with no child recorded never ran (a fenced incarnation's
/// record of it cannot commit, so it is never released): while the job has had fewer than
/// `max_interruptions`, its attempt is given back as an interruption, as in the SQLite
/// store's recovery.
pub fn recover_orphans(
    tx: &mut Transaction<'_>,
    epochs: &[i64],
    delay_ms: i64,
    max_interruptions: u32,
    why: &str,
    now: i64,
) -> PgResult<Recovered> {
    let mut out = Recovered { children: orphan_children(tx, epochs)?, ..Recovered::default() };
    let unreleased = if crate::mutant::active(crate::mutant::UNRELEASED_ORPHAN_CHARGED) {
        Vec::new()
    } else {
        let spare = i32::try_from(max_interruptions).unwrap_or(i32::MAX);
        tx.query(
            "SELECT q.id FROM job_queue q
             JOIN job_runs r ON r.job_id = q.id AND r.claim_token = q.claim_token
             WHERE q.status = 'running' AND q.claim_epoch = ANY($1) AND q.kind = 'exec'
               AND q.cancel_requested_at IS NULL AND q.interruptions < $2
               AND r.ended_at IS NULL AND r.child_pgid IS NULL
             ORDER BY q.id FOR UPDATE OF q",
            &[&epochs, &spare],
        )?
    };
    for row in unreleased {
        let id: i64 = row.get(0);
        tx.execute(
            "UPDATE job_runs SET ended_at = $2, outcome = 'orphaned', error = $3 WHERE job_id = $1 AND ended_at IS NULL",
            &[&id, &now, &UNRELEASED_ORPHAN],
        )?;
        tx.execute(
            &format!(
                "UPDATE job_queue SET status = 'pending', attempts = attempts - 1, interruptions = interruptions + 1,
                        run_after = $2::bigint + $3::bigint, run_after_set_at = $2, {}, {CLEAR_LOCK}
                 WHERE id = $1",
                push_error("$2", "$4")
            ),
            &[&id, &now, &delay_ms.max(0), &UNRELEASED_ORPHAN],
        )?;
        out.requeued.push(JobId(id));
        out.given_back.push(JobId(id));
    }
    tx.execute(
        "UPDATE job_runs r SET ended_at = $2, outcome = 'orphaned', error = $3
         FROM job_queue q
         WHERE q.id = r.job_id AND q.status = 'running' AND q.claim_epoch = ANY($1) AND r.ended_at IS NULL",
        &[&epochs, &now, &why],
    )?;
    let ids = |rows: Vec<postgres::Row>| -> Vec<JobId> {
        let mut v: Vec<JobId> = rows.iter().map(|r| JobId(r.get(0))).collect();
        v.sort_unstable();
        v
    };
    out.cancelled = ids(tx.query(
        &format!(
            "UPDATE job_queue SET status = 'cancelled', completed_at = $2,
                    error = 'cancelled by an operator while running', {CLEAR_LOCK}
             WHERE status = 'running' AND claim_epoch = ANY($1) AND cancel_requested_at IS NOT NULL RETURNING id"
        ),
        &[&epochs, &now],
    )?);
    out.failed.extend(ids(tx.query(
        &format!(
            "UPDATE job_queue SET status = 'failed', completed_at = $2, error = $3 || '; no attempts left',
                    {}, {CLEAR_LOCK}
             WHERE status = 'running' AND claim_epoch = ANY($1) AND attempts >= max_attempts RETURNING id",
            push_error("$2", "$3")
        ),
        &[&epochs, &now, &why],
    )?));
    out.failed.sort_unstable();
    out.requeued.extend(ids(tx.query(
        &format!(
            "UPDATE job_queue SET status = 'pending', run_after = $2::bigint + $4::bigint, run_after_set_at = $2,
                    {}, {CLEAR_LOCK}
             WHERE status = 'running' AND claim_epoch = ANY($1) RETURNING id",
            push_error("$2", "$3")
        ),
        &[&epochs, &now, &why, &delay_ms.max(0)],
    )?));
    out.requeued.sort_unstable();
    let n = (out.requeued.len() + out.failed.len() + out.cancelled.len()) as i64;
    bump_metric(tx, "stale_jobs_recovered", n)?;
    if n > 0 {
        // Jobs ended (a `wait` is told) or are pending again (a daemon may claim them).
        super::daemon::notify(tx, "recovered")?;
    }
    Ok(out)
}

pub fn bump_metric(tx: &mut Transaction<'_>, name: &str, by: i64) -> PgResult<()> {
    if by != 0 {
        tx.execute("UPDATE metrics SET value = value + $2 WHERE name = $1", &[&name, &by])?;
    }
    Ok(())
}

/// The claims of `epoch` among `tokens` that are running: which of a claim's jobs its
/// commit made ours, when the commit's reply was lost.
pub fn running_with_tokens(tx: &mut Transaction<'_>, epoch: Epoch, tokens: &[String]) -> PgResult<Vec<JobId>> {
    let rows = tx.query(
        "SELECT id FROM job_queue WHERE status = 'running' AND claim_epoch = $1 AND claim_token = ANY($2)",
        &[&epoch.0, &tokens],
    )?;
    Ok(rows.iter().map(|r| JobId(r.get(0))).collect())
}

/// A random 128-bit claim token, hex.
pub fn random_token() -> String {
    let mut buf = [0u8; 16];
    if let Err(e) = crate::platform::random_bytes(&mut buf) {
        panic!("{e}");
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}
