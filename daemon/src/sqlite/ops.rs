//! Statements behind the operator commands (`list`, `show`, `cancel`, `retry`, keyed and
//! bulk `enqueue`), retention and metrics. Commands that change a job do so in one
//! `BEGIN IMMEDIATE` transaction matched on the status they expect; a running job is
//! never written by the CLI — `cancel` files a request the daemon acts on.

use super::jobs;
use crate::job::{ClaimRef, JobId, JobStatus, NewJob, WallMs};
pub use crate::rows::{Cancel, JobRow, Retry, RunRow};
use rusqlite::{params, Connection, OptionalExtension, Transaction};

const JOB_COLUMNS: &str = "id, status, lane, kind, payload, attempts, max_attempts, interruptions, runs, created_at,
     run_after, started_at, completed_at, heartbeat_at, locked_by, error, idempotency_key, cancel_requested_at,
     cwd, env";

fn job_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRow> {
    Ok(JobRow {
        id: r.get(0)?,
        status: r.get(1)?,
        lane: r.get(2)?,
        kind: r.get(3)?,
        args: serde_json::from_str(&r.get::<_, String>(4)?).unwrap_or_default(),
        attempts: r.get(5)?,
        max_attempts: r.get(6)?,
        interruptions: r.get(7)?,
        runs: r.get(8)?,
        created_at: r.get(9)?,
        run_after: r.get(10)?,
        started_at: r.get(11)?,
        completed_at: r.get(12)?,
        heartbeat_at: r.get(13)?,
        locked_by: r.get(14)?,
        error: r.get(15)?,
        key: r.get(16)?,
        cancel_requested_at: r.get(17)?,
        cwd: r.get(18)?,
        env: crate::job::stored::parse_env(r.get(19)?),
    })
}

/// Jobs, newest first, filtered by status and lane.
pub fn list(conn: &Connection, status: Option<&str>, lane: Option<&str>, limit: u32) -> rusqlite::Result<Vec<JobRow>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {JOB_COLUMNS} FROM job_queue
         WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR lane = ?2)
         ORDER BY id DESC LIMIT ?3"
    ))?;
    let rows = stmt.query_map(params![status, lane, limit], job_row)?.collect();
    rows
}

pub fn job(conn: &Connection, id: i64) -> rusqlite::Result<Option<JobRow>> {
    conn.query_row(&format!("SELECT {JOB_COLUMNS} FROM job_queue WHERE id = ?1"), [id], job_row).optional()
}

pub fn runs(conn: &Connection, id: i64) -> rusqlite::Result<Vec<RunRow>> {
    let mut stmt = conn.prepare(
        "SELECT run, attempt, epoch, worker, child_pid, started_at, ended_at, outcome, error
         FROM job_runs WHERE job_id = ?1 ORDER BY run",
    )?;
    let rows = stmt
        .query_map([id], |r| {
            Ok(RunRow {
                run: r.get(0)?,
                attempt: r.get(1)?,
                epoch: r.get(2)?,
                worker: r.get(3)?,
                child_pid: r.get(4)?,
                started_at: r.get(5)?,
                ended_at: r.get(6)?,
                outcome: r.get(7)?,
                error: r.get(8)?,
            })
        })?
        .collect();
    rows
}

/// The job's error history (a JSON array of {at, attempt, run, error}).
pub fn errors(conn: &Connection, id: i64) -> rusqlite::Result<serde_json::Value> {
    let text: String = conn.query_row("SELECT errors FROM job_queue WHERE id = ?1", [id], |r| r.get(0))?;
    Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::Array(Vec::new())))
}

/// Enqueues with an idempotency key: the same key returns the existing job's id and
/// creates nothing (`false`). Inside the caller's `BEGIN IMMEDIATE`, concurrent enqueuers
/// of one key cannot both insert.
pub fn enqueue_keyed(
    tx: &Transaction<'_>,
    job: &NewJob,
    key: Option<&str>,
    now: WallMs,
    run_after_set_at: WallMs,
) -> rusqlite::Result<(JobId, bool)> {
    let Some(key) = key else { return Ok((jobs::enqueue_set_at(tx, job, now, run_after_set_at)?, true)) };
    if let Some(id) =
        tx.query_row("SELECT id FROM job_queue WHERE idempotency_key = ?1", [key], |r| r.get(0)).optional()?
    {
        return Ok((id, false));
    }
    let id = jobs::enqueue_set_at(tx, job, now, run_after_set_at)?;
    tx.execute("UPDATE job_queue SET idempotency_key = ?2 WHERE id = ?1", params![id, key])?;
    Ok((id, true))
}

/// Job `id`'s status, `None` when there is no such job.
fn status_of(tx: &Transaction<'_>, id: i64) -> rusqlite::Result<Option<JobStatus>> {
    tx.query_row("SELECT status FROM job_queue WHERE id = ?1", [id], |r| r.get::<_, JobStatus>(0)).optional()
}

pub fn cancel(tx: &Transaction<'_>, id: i64, now: i64) -> rusqlite::Result<Cancel> {
    let Some(status) = status_of(tx, id)? else { return Ok(Cancel::NotFound) };
    Ok(match status {
        JobStatus::Pending => {
            tx.execute(
                "UPDATE job_queue SET status = 'cancelled', completed_at = ?2, error = 'cancelled by an operator'
                 WHERE id = ?1 AND status = 'pending'",
                params![id, now],
            )?;
            Cancel::Cancelled
        }
        JobStatus::Running => {
            tx.execute(
                "UPDATE job_queue SET cancel_requested_at = COALESCE(cancel_requested_at, ?2) WHERE id = ?1 AND status = 'running'",
                params![id, now],
            )?;
            Cancel::Requested
        }
        terminal => Cancel::Terminal(terminal),
    })
}

/// Running jobs with a pending cancel request (the daemon polls this).
pub fn cancel_requests(conn: &Connection) -> rusqlite::Result<Vec<JobId>> {
    // Runs whenever another connection committed (the engine loop): prepared once.
    let mut stmt =
        conn.prepare_cached("SELECT id FROM job_queue WHERE cancel_requested_at IS NOT NULL AND status = 'running'")?;
    let ids = stmt.query_map([], |r| r.get(0))?.collect();
    ids
}

/// The daemon, as the run's owner, records the cancellation (its group already gone).
pub fn cancel_running(tx: &Transaction<'_>, claim: &ClaimRef, now: WallMs) -> rusqlite::Result<bool> {
    let (epoch, id, token) = (claim.epoch, claim.id, claim.token.as_str());
    let n = tx.execute(
        "UPDATE job_queue SET status = 'cancelled', completed_at = ?4, error = 'cancelled by an operator while running',
                locked_by = NULL, locked_at = NULL, heartbeat_at = NULL, claim_token = NULL, claim_epoch = NULL
         WHERE id = ?1 AND status = 'running' AND claim_token = ?2 AND claim_epoch = ?3",
        params![id, token, epoch, now],
    )?;
    if n == 1 {
        tx.execute(
            "UPDATE job_runs SET ended_at = ?3, outcome = 'cancelled' WHERE job_id = ?1 AND claim_token = ?2 AND ended_at IS NULL",
            params![id, token, now],
        )?;
    }
    Ok(n == 1)
}

/// A failed or cancelled job back to pending with a fresh attempt budget; its runs and
/// error history are kept.
pub fn retry(tx: &Transaction<'_>, id: i64, now: i64) -> rusqlite::Result<Retry> {
    let Some(status) = status_of(tx, id)? else { return Ok(Retry::NotFound) };
    if !matches!(status, JobStatus::Failed | JobStatus::Cancelled) {
        return Ok(Retry::NotRetryable(status));
    }
    tx.execute(
        "UPDATE job_queue SET status = 'pending', attempts = 0, interruptions = 0, run_after = ?2,
                run_after_set_at = ?2, completed_at = NULL, error = NULL, cancel_requested_at = NULL
         WHERE id = ?1 AND status IN ('failed', 'cancelled')",
        params![id, now],
    )?;
    Ok(Retry::Requeued)
}

pub(crate) const PRUNE_CANDIDATES: &str =
    "SELECT id FROM job_queue WHERE (status = 'completed' OR status = 'failed' OR status = 'cancelled')
     AND completed_at < ?1 ORDER BY completed_at LIMIT ?2";

/// Retention: deletes terminal jobs that ended before `before` (and their runs); returns
/// their ids so the caller can remove their run logs.
pub fn prune(tx: &Transaction<'_>, before: i64, limit: u32) -> rusqlite::Result<Vec<i64>> {
    let ids: Vec<i64> =
        tx.prepare(PRUNE_CANDIDATES)?.query_map(params![before, limit], |r| r.get(0))?.collect::<Result<_, _>>()?;
    let mut runs = tx.prepare("DELETE FROM job_runs WHERE job_id = ?1")?;
    let mut job = tx.prepare("DELETE FROM job_queue WHERE id = ?1")?;
    for id in &ids {
        runs.execute([id])?;
        job.execute([id])?;
    }
    Ok(ids)
}

/// Adds to a counter.
pub fn bump_metric(tx: &Transaction<'_>, name: &str, by: i64) -> rusqlite::Result<()> {
    tx.execute("UPDATE metrics SET value = value + ?2 WHERE name = ?1", params![name, by])?;
    Ok(())
}

pub fn metrics(conn: &Connection) -> rusqlite::Result<std::collections::BTreeMap<String, i64>> {
    let mut stmt = conn.prepare("SELECT name, value FROM metrics ORDER BY name")?;
    let m = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect();
    m
}

pub(crate) const OLDEST_PENDING: &str =
    "SELECT MIN(run_after) FROM job_queue WHERE status = 'pending' AND run_after <= ?1";

/// Since when the longest-waiting *ready* job has been claimable (its `run_after`, for
/// pending jobs whose `run_after` has passed): how far behind the queue is. Jobs
/// scheduled for later, or backing off, are not waiting yet.
pub fn oldest_pending(conn: &Connection, now: i64) -> rusqlite::Result<Option<i64>> {
    conn.query_row(OLDEST_PENDING, [now], |r| r.get(0))
}
