//! Statements behind the operator commands on PostgreSQL (`enqueue`, `list`, `show`,
//! `cancel`, `retry`, `status`, `wait`, `logs`): what `crate::sqlite::ops` and
//! `crate::sqlite::read` are for SQLite, returning the same rows (`crate::rows`) so a
//! command prints one shape on either backend.
//!
//! - Times are the server's clock (`homer_now_ms()`), as everywhere on PostgreSQL: a
//!   `cancel` or `retry` stamps the row with it, and `enqueue` applies a delay the
//!   caller computed on its own clock to it ([`super::jobs::enqueue`]).
//! - The CLI never writes a running job (its owner may be on another host): `cancel`
//!   files a request its owner acts on, as on SQLite. Rows a command changes are taken
//!   `FOR UPDATE` first, so a claim (`FOR UPDATE SKIP LOCKED`) passes them over instead
//!   of racing the change.
//! - A write that gives the daemons work (`enqueue`, `cancel`, `retry`) sends
//!   `NOTIFY` on [`CHANNEL`] inside its transaction: PostgreSQL delivers it when, and
//!   only if, the transaction commits, so a listening daemon wakes for committed work.

use std::collections::BTreeMap;

use postgres::{GenericClient, Transaction};

use super::jobs::{self, server_now, PgResult};
use crate::job::stored::{parse_args, parse_env};
use crate::job::{JobId, JobStatus, NewJob, WallMs};
use crate::rows::{Cancel, JobCounts, JobProgress, JobRow, Retry, RunRow, RunningJob};

/// The channel a daemon LISTENs on, and the one `NOTIFY` every writer sends on it.
pub use super::daemon::{notify, CHANNEL};

const JOB_COLUMNS: &str = "id, status, lane, kind, payload, attempts, max_attempts, interruptions, runs, created_at,
     run_after, started_at, completed_at, heartbeat_at, locked_by, error, idempotency_key, cancel_requested_at,
     cwd, env";

/// An `integer` (int4) column as the rows' `i64` (SQLite's integers are 64-bit; these
/// columns are `integer` in the PostgreSQL schema).
fn int4(r: &postgres::Row, column: usize) -> i64 {
    i64::from(r.get::<_, i32>(column))
}

fn job_row(r: &postgres::Row) -> JobRow {
    JobRow {
        id: r.get(0),
        status: r.get(1),
        lane: r.get(2),
        kind: r.get(3),
        args: parse_args(r.get::<_, &str>(4)),
        attempts: int4(r, 5),
        max_attempts: int4(r, 6),
        interruptions: int4(r, 7),
        runs: int4(r, 8),
        created_at: r.get(9),
        run_after: r.get(10),
        started_at: r.get(11),
        completed_at: r.get(12),
        heartbeat_at: r.get(13),
        locked_by: r.get(14),
        error: r.get(15),
        key: r.get(16),
        cancel_requested_at: r.get(17),
        cwd: r.get(18),
        env: parse_env(r.get(19)),
    }
}

/// Enqueues with an idempotency key (the semantics of `crate::sqlite::ops::enqueue_keyed`):
/// the same key returns the existing job's id and creates nothing (`false`). Enqueuers of
/// one key serialise on a transaction-scoped advisory lock on it, so they cannot both
/// insert (nor does the loser fail on the unique index). The job is due
/// `job.run_after - caller_now` after the server's now.
pub fn enqueue_keyed(
    tx: &mut Transaction<'_>,
    job: &NewJob,
    key: Option<&str>,
    caller_now: WallMs,
) -> PgResult<(JobId, bool)> {
    let now = server_now(tx)?;
    let Some(key) = key else { return Ok((jobs::enqueue(tx, job, caller_now, now, None)?, true)) };
    tx.execute("SELECT pg_advisory_xact_lock(hashtextextended('homer.key:' || $1, 0))", &[&key])?;
    // Read after the lock: a statement's snapshot is taken when it starts (READ COMMITTED),
    // so a row committed by the enqueuer that held the lock before us is seen.
    if let Some(row) = tx.query_opt("SELECT id FROM job_queue WHERE idempotency_key = $1", &[&key])? {
        return Ok((JobId(row.get(0)), false));
    }
    Ok((jobs::enqueue(tx, job, caller_now, now, Some(key))?, true))
}

/// Jobs, newest first, filtered by status and lane.
pub fn list(
    client: &mut impl GenericClient,
    status: Option<&str>,
    lane: Option<&str>,
    limit: u32,
) -> PgResult<Vec<JobRow>> {
    let rows = client.query(
        &format!(
            "SELECT {JOB_COLUMNS} FROM job_queue
             WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR lane = $2)
             ORDER BY id DESC LIMIT $3"
        ),
        &[&status, &lane, &i64::from(limit)],
    )?;
    Ok(rows.iter().map(job_row).collect())
}

pub fn job(client: &mut impl GenericClient, id: i64) -> PgResult<Option<JobRow>> {
    Ok(client.query_opt(&format!("SELECT {JOB_COLUMNS} FROM job_queue WHERE id = $1"), &[&id])?.as_ref().map(job_row))
}

pub fn runs(client: &mut impl GenericClient, id: i64) -> PgResult<Vec<RunRow>> {
    let rows = client.query(
        "SELECT run, attempt, epoch, worker, child_pid, started_at, ended_at, outcome, error
         FROM job_runs WHERE job_id = $1 ORDER BY run",
        &[&id],
    )?;
    Ok(rows
        .iter()
        .map(|r| RunRow {
            run: int4(r, 0),
            attempt: int4(r, 1),
            epoch: r.get(2),
            worker: r.get(3),
            child_pid: r.get(4),
            started_at: r.get(5),
            ended_at: r.get(6),
            outcome: r.get(7),
            error: r.get(8),
        })
        .collect())
}

/// The job's error history (a JSON array of {at, attempt, run, error}); empty for no job.
pub fn errors(client: &mut impl GenericClient, id: i64) -> PgResult<serde_json::Value> {
    let text: Option<String> =
        client.query_opt("SELECT errors FROM job_queue WHERE id = $1", &[&id])?.map(|r| r.get(0));
    Ok(text.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or(serde_json::Value::Array(Vec::new())))
}

fn status_of(tx: &mut Transaction<'_>, id: i64) -> PgResult<Option<JobStatus>> {
    // FOR UPDATE: a claim skips the row while we decide; a running job's owner waits.
    Ok(tx
        .query_opt("SELECT status FROM job_queue WHERE id = $1 FOR UPDATE", &[&id])?
        .map(|r| JobStatus::parse(r.get::<_, &str>(0)).unwrap_or(JobStatus::Failed)))
}

/// A pending job becomes `cancelled`; a running one gets a cancel request (once: the
/// first request's time is kept) that its owner acts on; a finished one is left alone.
pub fn cancel(tx: &mut Transaction<'_>, id: i64) -> PgResult<Cancel> {
    let Some(status) = status_of(tx, id)? else { return Ok(Cancel::NotFound) };
    Ok(match status {
        JobStatus::Pending => {
            tx.execute(
                "UPDATE job_queue SET status = 'cancelled', completed_at = homer_now_ms(),
                        error = 'cancelled by an operator'
                 WHERE id = $1 AND status = 'pending'",
                &[&id],
            )?;
            notify(tx, &format!("cancel {id}"))?;
            Cancel::Cancelled
        }
        JobStatus::Running => {
            tx.execute(
                "UPDATE job_queue SET cancel_requested_at = COALESCE(cancel_requested_at, homer_now_ms())
                 WHERE id = $1 AND status = 'running'",
                &[&id],
            )?;
            notify(tx, &format!("cancel {id}"))?;
            Cancel::Requested
        }
        terminal => Cancel::Terminal(terminal),
    })
}

/// Whether a running job's owner is a live worker: registered, neither fenced nor
/// stopped, and heard from within its own stale threshold by the server's clock. When it
/// is not, nobody acts on a cancel request until another worker fences it and recovers
/// the job (recovery cancels a job with a request filed).
pub fn owner_live(client: &mut impl GenericClient, id: i64) -> PgResult<bool> {
    Ok(client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM job_queue q JOIN homer_workers w ON w.incarnation = q.claim_epoch
                            WHERE q.id = $1 AND q.status = 'running' AND w.fenced_at IS NULL
                              AND w.stopped_at IS NULL AND w.seen_at >= homer_now_ms() - w.stale_ms)",
            &[&id],
        )?
        .get(0))
}

/// A failed or cancelled job back to pending with a fresh attempt budget, due now by the
/// server's clock; its runs and error history are kept.
pub fn retry(tx: &mut Transaction<'_>, id: i64) -> PgResult<Retry> {
    let Some(status) = status_of(tx, id)? else { return Ok(Retry::NotFound) };
    if !matches!(status, JobStatus::Failed | JobStatus::Cancelled) {
        return Ok(Retry::NotRetryable(status));
    }
    tx.execute(
        "UPDATE job_queue SET status = 'pending', attempts = 0, interruptions = 0, run_after = t.now,
                run_after_set_at = t.now, completed_at = NULL, error = NULL, cancel_requested_at = NULL
         FROM (SELECT homer_now_ms() AS now) t
         WHERE id = $1 AND status IN ('failed', 'cancelled')",
        &[&id],
    )?;
    notify(tx, &format!("retry {id}"))?;
    Ok(Retry::Requeued)
}

/// Jobs per status and per lane, from one grouped read.
pub fn job_counts(client: &mut impl GenericClient) -> PgResult<JobCounts> {
    let rows = client.query("SELECT lane, status, COUNT(*) FROM job_queue GROUP BY lane, status", &[])?;
    Ok(JobCounts::from_groups(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2)))))
}

pub fn metrics(client: &mut impl GenericClient) -> PgResult<BTreeMap<String, i64>> {
    Ok(client
        .query("SELECT name, value FROM metrics ORDER BY name", &[])?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// The server's clock now (for ages computed against the rows' server-clock times).
pub fn now(client: &mut impl GenericClient) -> PgResult<i64> {
    Ok(client.query_one("SELECT homer_now_ms()", &[])?.get(0))
}

/// Since when the longest-waiting ready job has been claimable, by the server's clock
/// (see `crate::sqlite::ops::oldest_pending`).
pub fn oldest_pending(client: &mut impl GenericClient) -> PgResult<Option<i64>> {
    Ok(client
        .query_one(
            "SELECT MIN(run_after) FROM job_queue WHERE status = 'pending' AND run_after <= homer_now_ms()",
            &[],
        )?
        .get(0))
}

/// Jobs in `running`, with what is known of their owner.
pub fn running_jobs(client: &mut impl GenericClient) -> PgResult<Vec<RunningJob>> {
    let rows = client.query(
        "SELECT id, lane, kind, locked_by, heartbeat_at, claim_epoch
         FROM job_queue WHERE status = 'running' ORDER BY id",
        &[],
    )?;
    Ok(rows
        .iter()
        .map(|r| RunningJob {
            id: r.get(0),
            lane: r.get(1),
            kind: r.get(2),
            locked_by: r.get(3),
            heartbeat_at: r.get(4),
            claim_epoch: r.get(5),
        })
        .collect())
}

/// Workers neither fenced nor stopped whose heartbeat is older than their own stale
/// threshold by the server's clock: what `doctor` fails on (their jobs wait until a live
/// worker fences them).
pub fn stale_workers(client: &mut impl GenericClient) -> PgResult<Vec<(i64, String, i64)>> {
    let rows = client.query(
        "SELECT incarnation, name, homer_now_ms() - seen_at FROM homer_workers
         WHERE fenced_at IS NULL AND stopped_at IS NULL AND seen_at < homer_now_ms() - stale_ms
         ORDER BY incarnation",
        &[],
    )?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
}

/// The server's version, as `doctor` reports it.
pub fn server_version(client: &mut impl GenericClient) -> PgResult<String> {
    Ok(client.query_one("SHOW server_version", &[])?.get(0))
}

/// Where a job stands, for `wait` and `logs -f`. `None`: no such job.
pub fn job_progress(client: &mut impl GenericClient, id: i64) -> PgResult<Option<JobProgress>> {
    Ok(client.query_opt("SELECT status, kind, runs, completed_at FROM job_queue WHERE id = $1", &[&id])?.map(|r| {
        JobProgress {
            status: JobStatus::parse(r.get::<_, &str>(0)).unwrap_or(JobStatus::Failed),
            kind: r.get(1),
            runs: int4(&r, 2),
            completed_at: r.get(3),
        }
    }))
}

/// Who ran a job's run, as `homerd logs` needs it to say where the output is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunWorker {
    /// The run's `job_runs.worker`: the registered name of the worker that claimed it
    /// (`<host>/<pid>` in rows written before homerd named runs so).
    pub worker: String,
    /// The incarnation's registered name (`<host>/<boot id>:<home>`) and host, while its
    /// `homer_workers` row is still there.
    pub registered: Option<(String, String)>,
}

/// The worker a job's run was claimed by, and the registration of the incarnation that
/// claimed it (the run's epoch), when that row is still there.
pub fn run_worker(client: &mut impl GenericClient, id: i64, run: i64) -> PgResult<Option<RunWorker>> {
    let run = i32::try_from(run).unwrap_or(i32::MAX);
    Ok(client
        .query_opt(
            "SELECT r.worker, w.name, w.host FROM job_runs r LEFT JOIN homer_workers w ON w.incarnation = r.epoch
             WHERE r.job_id = $1 AND r.run = $2",
            &[&id, &run],
        )?
        .map(|r| {
            let registered = match (r.get::<_, Option<String>>(1), r.get::<_, Option<String>>(2)) {
                (Some(name), Some(host)) => Some((name, host)),
                _ => None,
            };
            RunWorker { worker: r.get(0), registered }
        }))
}
