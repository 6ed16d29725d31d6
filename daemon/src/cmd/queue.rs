//! [`Queue`]: the operator commands' reads and writes on whichever backend the context
//! names (`Context::backend`), so `list`, `show`, `cancel`, `retry`, `status`, `wait` and
//! `logs -f` are each written once and the backend is chosen in one place — when a
//! command opens its queue. Each method is one backend's statements (`sqlite::ops` and
//! `sqlite::read`, or `postgres::ops`) with that backend's errors turned into the
//! command's: `Error::sqlite` naming the file, `Error::postgres` naming the redacted URL.
//! Both return the same rows (`crate::rows`).
//!
//! Where the backends differ, the method says so:
//! - Times: SQLite stamps and measures with the effective clock (`ctx.clock`), PostgreSQL
//!   with the server's (`homer_now_ms()`).
//! - Snapshots: `show` and `status` read PostgreSQL in one REPEATABLE READ, read-only
//!   transaction; SQLite's `show` in one read transaction, its `status` statement by
//!   statement, as it always has.
//! - Who acts on a cancel request: on SQLite the one active daemon (the leader row), on
//!   PostgreSQL the running job's own worker, if it is live.

use std::collections::BTreeMap;
use std::path::PathBuf;

use rusqlite::{Connection, TransactionBehavior};

use crate::cmd::context::{self, Backend, Context, Pg};
use crate::error::{Error, Result};
use crate::postgres::jobs::PgResult;
use crate::postgres::ops as pg_ops;
use crate::postgres::workers::{self, WorkerRow};
use crate::rows::{Cancel, JobCounts, JobProgress, JobRow, Retry, RunRow, RunningJob};
use crate::sqlite::leader::{self, HolderState, LeaderRow};
use crate::sqlite::{ops, read};

/// A command's connection to the job queue, on either backend.
pub enum Queue {
    /// The home's SQLite file, and its path (errors name it).
    Sqlite { conn: Connection, db: PathBuf },
    /// A shared PostgreSQL queue.
    Postgres(Box<Pg>),
}

/// Who is running the queue, as `status` reports it.
pub enum Daemon {
    /// SQLite: the leader row, and whether its holder is alive and recently seen.
    Leader { row: Box<LeaderRow>, state: HolderState },
    /// PostgreSQL: the live workers (registered, neither fenced nor stopped).
    Workers(Vec<WorkerRow>),
}

/// What `status` reports, from either backend.
pub struct Overview {
    pub daemon: Daemon,
    /// The time every age is measured from (the effective clock on SQLite, the server's
    /// on PostgreSQL: the rows' times are on that clock).
    pub now: i64,
    pub counts: BTreeMap<String, i64>,
    pub lanes: BTreeMap<String, BTreeMap<String, i64>>,
    pub metrics: BTreeMap<String, i64>,
    /// Since when the longest-waiting ready job has been claimable (`None`: none waits).
    pub oldest_pending: Option<i64>,
    pub running: Vec<RunningJob>,
}

/// What `show` reads: the job, its runs and its error history.
pub type JobView = (JobRow, Vec<RunRow>, serde_json::Value);

impl Queue {
    /// For reading. SQLite: opened read-only after validation, `None` when there is no
    /// database yet (before the daemon's first start); PostgreSQL: connected, its schema
    /// current.
    pub fn read_only(ctx: &Context) -> Result<Option<Queue>> {
        Ok(match ctx.backend() {
            Backend::Postgres(url) => Some(Queue::Postgres(Box::new(context::open_postgres(ctx, url)?))),
            Backend::Sqlite => {
                context::open_read_only(ctx)?.map(|conn| Queue::Sqlite { conn, db: ctx.paths.database.clone() })
            }
        })
    }

    /// For a command about job `id`: [`Queue::read_only`], where no database yet means no
    /// such job (66, [`context::no_database_yet`]).
    pub fn for_job(ctx: &Context, id: i64) -> Result<Queue> {
        Queue::read_only(ctx)?.ok_or_else(|| context::no_database_yet(ctx, id))
    }

    /// For changing job `id` (`cancel`, `retry`). SQLite: opened for a durable CLI write
    /// (`context::open_for_job_write`: 66 before the daemon's first start).
    pub fn for_job_write(ctx: &Context, id: i64) -> Result<Queue> {
        Ok(match ctx.backend() {
            Backend::Postgres(url) => Queue::Postgres(Box::new(context::open_postgres(ctx, url)?)),
            Backend::Sqlite => {
                Queue::Sqlite { conn: context::open_for_job_write(ctx, id)?, db: ctx.paths.database.clone() }
            }
        })
    }

    /// The database as the output names it: the file's path, or the URL without its
    /// password.
    pub fn shown(&self) -> String {
        match self {
            Queue::Sqlite { db, .. } => db.display().to_string(),
            Queue::Postgres(pg) => pg.shown(),
        }
    }

    /// The database as `--json` names it.
    pub fn shown_json(&self) -> serde_json::Value {
        match self {
            Queue::Sqlite { db, .. } => crate::output::path_json(db),
            Queue::Postgres(pg) => serde_json::json!(pg.shown()),
        }
    }

    /// How many migrations this homerd knows for the backend (the openers refused a
    /// database that has not applied them all).
    pub fn known_migrations(&self) -> usize {
        match self {
            Queue::Sqlite { .. } => crate::sqlite::schema::MIGRATIONS.len(),
            Queue::Postgres(_) => crate::postgres::schema::MIGRATIONS.len(),
        }
    }

    /// Jobs, newest first, filtered by status and lane.
    pub fn list(&mut self, status: Option<&str>, lane: Option<&str>, limit: u32) -> Result<Vec<JobRow>> {
        match self {
            Queue::Sqlite { conn, db } => ops::list(conn, status, lane, limit).map_err(|e| Error::sqlite(&*db, e)),
            Queue::Postgres(pg) => {
                let shown = pg.shown();
                pg_ops::list(&mut pg.client, status, lane, limit).map_err(|e| Error::postgres(&shown, e))
            }
        }
    }

    /// Job `id`, its runs and its errors from one snapshot (retention could otherwise
    /// prune it between the reads); `None`: no such job.
    pub fn show(&mut self, id: i64) -> Result<Option<JobView>> {
        match self {
            Queue::Sqlite { conn, db } => {
                let sql = |e| Error::sqlite(&*db, e);
                let tx = conn.transaction().map_err(sql)?;
                let Some(job) = ops::job(&tx, id).map_err(sql)? else { return Ok(None) };
                let runs = ops::runs(&tx, id).map_err(sql)?;
                let errors = ops::errors(&tx, id).map_err(sql)?;
                Ok(Some((job, runs, errors)))
            }
            Queue::Postgres(pg) => {
                let shown = pg.shown();
                let pge = |e| Error::postgres(&shown, e);
                let mut tx = snapshot(pg)?;
                let Some(job) = pg_ops::job(&mut tx, id).map_err(pge)? else { return Ok(None) };
                let runs = pg_ops::runs(&mut tx, id).map_err(pge)?;
                let errors = pg_ops::errors(&mut tx, id).map_err(pge)?;
                tx.commit().map_err(pge)?;
                Ok(Some((job, runs, errors)))
            }
        }
    }

    /// Where job `id` stands (`wait`, `logs -f`, `cancel` waiting for its owner); `None`:
    /// no such job.
    pub fn progress(&mut self, id: i64) -> Result<Option<JobProgress>> {
        match self {
            Queue::Sqlite { conn, db } => read::job_progress(conn, id).map_err(|e| Error::sqlite(&*db, e)),
            Queue::Postgres(pg) => {
                let shown = pg.shown();
                pg_ops::job_progress(&mut pg.client, id).map_err(|e| Error::postgres(&shown, e))
            }
        }
    }

    /// On a shared queue (PostgreSQL), the worker job `id`'s run `run` was claimed by and
    /// that incarnation's registration, when its row is still there; `None` on SQLite,
    /// where every run was this home's daemon's.
    pub fn run_worker(&mut self, id: i64, run: i64) -> Result<Option<pg_ops::RunWorker>> {
        match self {
            Queue::Sqlite { .. } => Ok(None),
            Queue::Postgres(pg) => {
                let shown = pg.shown();
                pg_ops::run_worker(&mut pg.client, id, run).map_err(|e| Error::postgres(&shown, e))
            }
        }
    }

    /// Cancels job `id` in one transaction: a pending job at once, a running one by a
    /// request its owner acts on.
    pub fn cancel(&mut self, ctx: &Context, id: i64) -> Result<Cancel> {
        self.write(ctx, |tx, now| ops::cancel(tx, id, now), |tx| pg_ops::cancel(tx, id))
    }

    /// Whether someone will act on running job `id`'s cancel request now. SQLite: a daemon
    /// is active (the leader row's holder alive and recently seen; an unreadable row
    /// counts as none). PostgreSQL: the job's own worker is live.
    pub fn owner_active(&mut self, ctx: &Context, id: i64) -> Result<bool> {
        match self {
            Queue::Sqlite { conn, .. } => Ok(read::leader_row(conn).ok().flatten().is_some_and(|r| {
                matches!(r.holder_state(&ctx.clock, ctx.config.stale_threshold), HolderState::Active { .. })
            })),
            Queue::Postgres(pg) => {
                let shown = pg.shown();
                pg_ops::owner_live(&mut pg.client, id).map_err(|e| Error::postgres(&shown, e))
            }
        }
    }

    /// When a cancel request nobody acts on now takes effect (after "is marked running
    /// but").
    pub fn unowned_cancel(&self) -> &'static str {
        match self {
            Queue::Sqlite { .. } => "no daemon is active: it will be cancelled when the daemon next starts",
            Queue::Postgres(_) => "its worker is not active: it will be cancelled when a live worker recovers it",
        }
    }

    /// A failed or cancelled job back to pending, in one transaction.
    pub fn retry(&mut self, ctx: &Context, id: i64) -> Result<Retry> {
        self.write(ctx, |tx, now| ops::retry(tx, id, now), |tx| pg_ops::retry(tx, id))
    }

    /// One write transaction, committed: on SQLite `BEGIN IMMEDIATE`, `sqlite` given the
    /// effective clock's now to stamp with; on PostgreSQL `pg`, whose statements stamp the
    /// server's clock.
    fn write<R>(
        &mut self,
        ctx: &Context,
        sqlite: impl FnOnce(&rusqlite::Transaction<'_>, i64) -> rusqlite::Result<R>,
        pg: impl FnOnce(&mut postgres::Transaction<'_>) -> PgResult<R>,
    ) -> Result<R> {
        match self {
            Queue::Sqlite { conn, db } => {
                let sql = |e| Error::sqlite(&*db, e);
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql)?;
                let outcome = sqlite(&tx, ctx.clock.now_ms()).map_err(sql)?;
                tx.commit().map_err(sql)?;
                // The daemon acts on a cancel request or a retried job now, not at its poll.
                crate::wake::poke_home(&ctx.paths);
                Ok(outcome)
            }
            Queue::Postgres(p) => {
                let shown = p.shown();
                let pge = |e| Error::postgres(&shown, e);
                let mut tx = p.client.transaction().map_err(pge)?;
                let outcome = pg(&mut tx).map_err(pge)?;
                tx.commit().map_err(pge)?;
                Ok(outcome)
            }
        }
    }

    /// What `status` reports. SQLite: the leader row, then the numbers, statement by
    /// statement, ages against the effective clock. PostgreSQL: every number from one
    /// snapshot with the server's clock, then the live workers.
    pub fn overview(&mut self, ctx: &Context) -> Result<Overview> {
        match self {
            Queue::Sqlite { conn, db } => {
                let sql = |e| Error::sqlite(&*db, e);
                let row = leader::read(conn).map_err(sql)?;
                let state = row.holder_state(&ctx.clock, ctx.config.stale_threshold);
                let JobCounts { by_status: counts, by_lane: lanes } = read::job_counts(conn).map_err(sql)?;
                let metrics = ops::metrics(conn).map_err(sql)?;
                let now = ctx.clock.now_ms();
                let oldest_pending = ops::oldest_pending(conn, now).map_err(sql)?;
                let running = read::running_jobs(conn).map_err(sql)?;
                Ok(Overview {
                    daemon: Daemon::Leader { row: Box::new(row), state },
                    now,
                    counts,
                    lanes,
                    metrics,
                    oldest_pending,
                    running,
                })
            }
            Queue::Postgres(pg) => {
                let shown = pg.shown();
                let pge = |e| Error::postgres(&shown, e);
                let mut tx = snapshot(pg)?;
                let now = pg_ops::now(&mut tx).map_err(pge)?;
                let JobCounts { by_status: counts, by_lane: lanes } = pg_ops::job_counts(&mut tx).map_err(pge)?;
                let metrics = pg_ops::metrics(&mut tx).map_err(pge)?;
                let oldest_pending = pg_ops::oldest_pending(&mut tx).map_err(pge)?;
                let running = pg_ops::running_jobs(&mut tx).map_err(pge)?;
                tx.commit().map_err(pge)?;
                let live = workers::live(&mut pg.client).map_err(pge)?;
                Ok(Overview { daemon: Daemon::Workers(live), now, counts, lanes, metrics, oldest_pending, running })
            }
        }
    }
}

/// One snapshot for several reads on PostgreSQL: REPEATABLE READ, read only.
fn snapshot(pg: &mut Pg) -> Result<postgres::Transaction<'_>> {
    let shown = pg.shown();
    pg.client
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(|e| Error::postgres(&shown, e))
}
