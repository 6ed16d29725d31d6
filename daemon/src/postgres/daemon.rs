//! What the daemon's engine reads and writes on PostgreSQL besides its `JobStore`: the
//! wake-up channel (`LISTEN`), operator cancel requests, the next due time, retention.
//! All on the engine's own second connection, never the store's.

use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;

use super::jobs::PgResult;
use crate::job::JobId;

/// The channel `enqueue`, `cancel`, `retry` and every recorded outcome notify: a daemon
/// listening on it claims at once instead of at its next poll.
pub const CHANNEL: &str = "homer_jobs";

/// Starts listening on [`CHANNEL`].
pub fn listen(client: &mut Client) -> PgResult<()> {
    client.batch_execute(&format!("LISTEN {CHANNEL}"))
}

/// Whether a notification arrived since the last call (waits at most `wait`). `Err`: the
/// connection broke.
pub fn notified(client: &mut Client, wait: Duration) -> PgResult<bool> {
    let mut notes = client.notifications();
    let mut any = notes.timeout_iter(wait).next()?.is_some();
    // Whatever else is queued already, without waiting again.
    while notes.iter().next()?.is_some() {
        any = true;
    }
    Ok(any)
}

/// Sends a wake-up to every listening daemon (in the caller's transaction: delivered at
/// its commit).
pub fn notify(tx: &mut postgres::Transaction<'_>) -> PgResult<()> {
    tx.batch_execute(&format!("NOTIFY {CHANNEL}"))
}

/// Running jobs of incarnation `epoch` with a pending cancel request.
pub fn cancel_requests(client: &mut Client, epoch: i64) -> PgResult<Vec<JobId>> {
    let rows = client.query(
        "SELECT id FROM job_queue WHERE cancel_requested_at IS NOT NULL AND status = 'running' AND claim_epoch = $1",
        &[&epoch],
    )?;
    Ok(rows.iter().map(|r| JobId(r.get(0))).collect())
}

/// The server's now and the earliest `run_after` of a pending job: when the next one is
/// due, as a delay from now in milliseconds (`None`: nothing pending).
pub fn next_due_in(client: &mut Client) -> PgResult<Option<i64>> {
    let row = client
        .query_one("SELECT (SELECT MIN(run_after) FROM job_queue WHERE status = 'pending') - homer_now_ms()", &[])?;
    Ok(row.get::<_, Option<i64>>(0))
}

/// Deletes up to `limit` terminal jobs that ended more than `retention_ms` ago (server
/// clock), with their runs; returns their ids.
pub fn prune(client: &mut Client, retention_ms: i64, limit: i64) -> PgResult<Vec<i64>> {
    let mut tx = client.transaction()?;
    let rows = tx.query(
        "DELETE FROM job_queue WHERE id IN (
             SELECT id FROM job_queue
             WHERE status IN ('completed', 'failed', 'cancelled') AND completed_at < homer_now_ms() - $1
             ORDER BY completed_at LIMIT $2 FOR UPDATE SKIP LOCKED)
         RETURNING id",
        &[&retention_ms, &limit],
    )?;
    let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    super::jobs::bump_metric(&mut tx, "jobs_pruned", ids.len() as i64)?;
    tx.commit()?;
    Ok(ids)
}
