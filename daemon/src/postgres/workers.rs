//! Worker rows: how many daemons share one PostgreSQL queue without trusting each
//! other's clocks.
//!
//! Each daemon start registers a row and gets a fresh **incarnation** (the row's id),
//! which it uses wherever the SQLite backend uses its leader epoch. Its heartbeat (and
//! every lease renewal) sets `seen_at` from the server's clock. Any live worker may
//! **fence** an incarnation not seen for its own `stale_ms` — in one transaction with
//! requeueing that incarnation's running jobs — and every write of a worker starts with
//! [`guard`], a `FOR SHARE` lock on its own row that finds it unfenced: the fencing
//! `UPDATE` waits for a write in flight, and no write made after the fence commits.
//!
//! A worker cannot kill processes on another host, so nothing here rests on killing
//! them: the owner kills its own run's children by the time its lease runs out (renewal
//! sent + `stale_ms` − margin, on its monotonic clock), and a fencer requeues only after
//! the server's clock says `stale_ms` passed since that renewal arrived.

use postgres::{Client, Transaction};

use super::jobs::{server_now, PgResult};
use crate::identity::ProcessIdentity;
use crate::job::{Epoch, WallMs};

/// Who a worker is, as registered.
#[derive(Clone, Debug)]
pub struct Registration {
    /// One daemon per home per boot of a host: `<host>/<boot id>:<home>`. A new start
    /// with the same name knows its predecessors are dead (the home's flock says so) and
    /// recovers their jobs at once, killing their recorded children first.
    pub name: String,
    pub identity: ProcessIdentity,
    pub stale_ms: i64,
}

/// Registers a new incarnation; returns it.
pub fn register(client: &mut Client, me: &Registration) -> PgResult<Epoch> {
    let row = client.query_one(
        "INSERT INTO homer_workers (name, host, boot_id, pid, start_time, started_at, seen_at, stale_ms)
         SELECT $1, $2, $3, $4, $5, t.now, t.now, $6 FROM (SELECT homer_now_ms() AS now) t
         RETURNING incarnation",
        &[
            &me.name,
            &me.identity.host,
            &me.identity.boot_id,
            &(me.identity.pid as i64),
            &(me.identity.start_time as i64),
            &me.stale_ms,
        ],
    )?;
    Ok(Epoch(row.get(0)))
}

/// Starts a write: `true` when `epoch` is registered, not fenced and not stopped, with
/// its row share-locked until the transaction ends (a fence waits for it).
pub fn guard(tx: &mut Transaction<'_>, epoch: Epoch) -> PgResult<bool> {
    Ok(tx
        .query_opt(
            "SELECT 1 FROM homer_workers WHERE incarnation = $1 AND fenced_at IS NULL AND stopped_at IS NULL FOR SHARE",
            &[&epoch.0],
        )?
        .is_some())
}

/// Refreshes `seen_at` (server clock; `host_now` is the worker's own clock, which only the
/// `pg_lease_on_host_clock` mutant uses). `false`: fenced (or stopped).
pub fn heartbeat(tx: &mut Transaction<'_>, epoch: Epoch, host_now: WallMs) -> PgResult<bool> {
    let host = crate::mutant::active(crate::mutant::PG_LEASE_ON_HOST_CLOCK).then_some(host_now.0);
    Ok(tx.execute(
        "UPDATE homer_workers SET seen_at = COALESCE($2, homer_now_ms())
         WHERE incarnation = $1 AND fenced_at IS NULL AND stopped_at IS NULL",
        &[&epoch.0, &host],
    )? == 1)
}

/// This start's predecessors on the same home: incarnations with our name that still
/// own running jobs, or are not yet fenced or stopped.
pub fn predecessors(tx: &mut Transaction<'_>, me: Epoch, name: &str) -> PgResult<Vec<i64>> {
    let rows = tx.query(
        "SELECT w.incarnation FROM homer_workers w
         WHERE w.name = $1 AND w.incarnation <> $2
           AND ((w.fenced_at IS NULL AND w.stopped_at IS NULL)
                OR EXISTS (SELECT 1 FROM job_queue q WHERE q.status = 'running' AND q.claim_epoch = w.incarnation))
         ORDER BY w.incarnation",
        &[&name, &me.0],
    )?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Fences `epochs` (those not fenced yet), naming who and why.
pub fn fence(tx: &mut Transaction<'_>, epochs: &[i64], by: Epoch, reason: &str) -> PgResult<Vec<i64>> {
    let now = server_now(tx)?;
    let rows = tx.query(
        "UPDATE homer_workers SET fenced_at = $2, fenced_by = $3, fence_reason = $4
         WHERE incarnation = ANY($1) AND fenced_at IS NULL RETURNING incarnation",
        &[&epochs, &now, &by.0, &reason],
    )?;
    let fenced: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    super::jobs::bump_metric(tx, "workers_fenced", fenced.len() as i64)?;
    Ok(fenced)
}

/// Incarnations (not `me`) whose jobs another worker may take over now: not seen for
/// their own `stale_ms` by the server's clock, and either still live (neither fenced nor
/// stopped) or — fenced or stopped — with jobs still `running`. A clean stop can leave
/// such a job: a claim whose commit's reply was lost, or a release the drain could not
/// write before its bound; only another worker's sweep (or a restart on the same home)
/// can recover it. Their rows are locked (`FOR UPDATE`) until the transaction ends; one
/// another worker is handling already is skipped.
///
/// `host_now` is the sweeper's own clock: only the `pg_lease_on_host_clock` mutant judges
/// by it.
pub fn stale(tx: &mut Transaction<'_>, me: Epoch, host_now: WallMs) -> PgResult<Vec<i64>> {
    let host = crate::mutant::active(crate::mutant::PG_LEASE_ON_HOST_CLOCK).then_some(host_now.0);
    let rows = tx.query(
        "SELECT w.incarnation FROM homer_workers w
         WHERE w.incarnation <> $1
           AND w.seen_at < COALESCE($2, homer_now_ms()) - w.stale_ms
           AND ((w.fenced_at IS NULL AND w.stopped_at IS NULL)
                OR EXISTS (SELECT 1 FROM job_queue q WHERE q.status = 'running' AND q.claim_epoch = w.incarnation))
         ORDER BY w.incarnation
         FOR UPDATE OF w SKIP LOCKED",
        &[&me.0, &host],
    )?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// A clean exit: nobody needs to wait out this worker's lease for the jobs it released.
/// Returns how many jobs are still `running` under it (a claim whose commit's reply was
/// lost, a release not written): [`stale`] still sweeps it for those once it is stale.
pub fn stop(tx: &mut Transaction<'_>, epoch: Epoch) -> PgResult<i64> {
    tx.execute(
        "UPDATE homer_workers SET stopped_at = homer_now_ms() WHERE incarnation = $1 AND stopped_at IS NULL",
        &[&epoch.0],
    )?;
    let left =
        tx.query_one("SELECT COUNT(*) FROM job_queue WHERE status = 'running' AND claim_epoch = $1", &[&epoch.0])?;
    Ok(left.get(0))
}

/// A worker as `status` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct WorkerRow {
    pub incarnation: i64,
    pub name: String,
    pub host: String,
    pub pid: i64,
    pub started_at: i64,
    pub seen_at: i64,
    /// How long ago the server last heard from it, by the server's clock.
    pub seen_ms_ago: i64,
    pub stale_ms: i64,
    pub running: i64,
}

/// Workers neither fenced nor stopped, newest first.
pub fn live(client: &mut Client) -> PgResult<Vec<WorkerRow>> {
    let rows = client.query(
        "SELECT w.incarnation, w.name, w.host, w.pid, w.started_at, w.seen_at, homer_now_ms() - w.seen_at,
                w.stale_ms,
                (SELECT COUNT(*) FROM job_queue q WHERE q.status = 'running' AND q.claim_epoch = w.incarnation)
         FROM homer_workers w WHERE w.fenced_at IS NULL AND w.stopped_at IS NULL
         ORDER BY w.incarnation DESC",
        &[],
    )?;
    Ok(rows
        .iter()
        .map(|r| WorkerRow {
            incarnation: r.get(0),
            name: r.get(1),
            host: r.get(2),
            pid: r.get(3),
            started_at: r.get(4),
            seen_at: r.get(5),
            seen_ms_ago: r.get(6),
            stale_ms: r.get(7),
            running: r.get(8),
        })
        .collect())
}
