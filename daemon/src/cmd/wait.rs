//! `homerd wait ID... [--timeout DUR]`: blocks until every named job is completed,
//! failed or cancelled, and exits with their outcome. Also what `logs -f` shares: the
//! outcome → exit code mapping ([`outcome_code`]) and [`Changes`], which re-reads the
//! database only after another connection committed (`PRAGMA data_version`), checked
//! every [`POLL`] — a read-only connection, no write, no lock, no busy loop. On
//! PostgreSQL the command `LISTEN`s on the channel that every write ending a run or
//! putting a job back to pending notifies, and reads the job when a notification came (or
//! [`RECHECK_SERVER`] passed).
//!
//! Exit codes (README, Exit codes): 0 every job completed; 4 one failed; 5 one was
//! cancelled and none failed; 6 `--timeout` ran out first; 66 a job does not exist
//! (never enqueued, or pruned by retention, or no database yet).
//!
//! Output goes through `output.rs`: `job N: STATUS` per job as it ends, or with `--json`
//! one `{"id", "status", "ended", "completed_at", "completed_at_rfc3339"}` per line —
//! `ended` true as each job ends, and when `--timeout` runs out one line per job still
//! open with `ended` false and its current status (the lines then say what the human
//! note on stderr says). The exit status is the point of `wait`, so a reader that closes
//! stdout does not end it: it goes on waiting, silently, and still exits with the
//! outcome (as `doctor` keeps its verdict).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::cmd::context::Context;
use crate::cmd::queue::Queue;
use crate::duration::{format_duration, parse_duration};
use crate::error::{exit, Error, Result};
use crate::job::JobStatus;
use crate::rows::JobProgress;
use crate::sqlite::read;
use crate::{outln, output};

/// How often `wait` and `logs -f` look for a change (and `logs -f` for new output). On
/// SQLite a look is `PRAGMA data_version`, read from the WAL index in shared memory (no
/// file I/O, no lock); on PostgreSQL the time between looks is spent waiting for a
/// notification on the connection. So they look as often as the daemon does
/// (`runner::POLL`), and read the job only when something changed.
pub const POLL: Duration = crate::runner::POLL;

/// On PostgreSQL, the job is read at least this often even when no notification came:
/// every write homerd makes that ends a job's run or puts it back to pending notifies,
/// but a hand edit on the server does not.
pub const RECHECK_SERVER: Duration = Duration::from_secs(10);

/// A claim does not notify (it would wake every daemon on the queue), so on PostgreSQL a
/// reader waiting for a run to begin (`logs -f`) reads the job this often, as it did every
/// read before.
pub const RECHECK_UNTIL_STARTED: Duration = Duration::from_millis(100);

/// The exit code for a job that ended in `status`: 0 completed, 4 failed, 5 cancelled.
pub fn outcome_code(status: JobStatus) -> i32 {
    match status {
        JobStatus::Failed => exit::JOB_FAILED,
        JobStatus::Cancelled => exit::JOB_CANCELLED,
        _ => exit::OK,
    }
}

/// Tells when the database changed since the last look: `PRAGMA data_version` moves when
/// another connection commits, and reading it writes nothing.
pub struct Changes {
    last: Option<i64>,
}

impl Changes {
    pub fn new() -> Changes {
        Changes { last: None }
    }

    /// True the first time, then whenever another connection committed since.
    pub fn changed(&mut self, ctx: &Context, conn: &Connection) -> Result<bool> {
        let v = read::data_version(conn).map_err(|e| Error::sqlite(&ctx.paths.database, e))?;
        let changed = self.last != Some(v);
        self.last = Some(v);
        Ok(changed)
    }
}

impl Default for Changes {
    fn default() -> Self {
        Changes::new()
    }
}

/// Where `wait` and `logs -f` read a job's progress from: the job's [`Queue`]. SQLite:
/// re-read only after another connection committed ([`Changes`]). PostgreSQL: the
/// connection `LISTEN`s on [`crate::postgres::ops::CHANNEL`], which an enqueue, a cancel, a
/// retry, a recorded outcome and a recovery notify (a claim does not); the job is re-read
/// when a notification arrived, and at least every `recheck` the caller asks for.
pub struct Source {
    pub queue: Queue,
    changes: Changes,
    /// PostgreSQL: when the job was last read, and whether a notification came since.
    read_at: Option<Instant>,
    notified: bool,
}

impl Source {
    /// Opens the backend `ctx` names; on SQLite before the daemon's first start there is
    /// no job `id` yet (66, [`crate::cmd::context::no_database_yet`]).
    pub fn open(ctx: &Context, id: i64) -> Result<Source> {
        let mut queue = Queue::for_job(ctx, id)?;
        if let Queue::Postgres(pg) = &mut queue {
            let shown = pg.shown();
            crate::postgres::daemon::listen(&mut pg.client).map_err(|e| Error::postgres(&shown, e))?;
        }
        Ok(Source { queue, changes: Changes::new(), read_at: None, notified: false })
    }

    /// Whether the jobs may have moved since the last call (always true the first time);
    /// on PostgreSQL also once `recheck` passed since the last read.
    pub fn changed(&mut self, ctx: &Context, recheck: Duration) -> Result<bool> {
        match &mut self.queue {
            Queue::Sqlite { conn, .. } => self.changes.changed(ctx, conn),
            Queue::Postgres(_) => {
                let notified = std::mem::take(&mut self.notified);
                let due = self.read_at.is_none_or(|t| t.elapsed() >= recheck);
                if notified || due {
                    self.read_at = Some(Instant::now());
                }
                Ok(notified || due)
            }
        }
    }

    /// Waits `limit` before the next look: on SQLite a sleep; on PostgreSQL a wait for a
    /// notification, which ends it early.
    pub fn pause(&mut self, limit: Duration) -> Result<()> {
        match &mut self.queue {
            Queue::Sqlite { .. } => std::thread::sleep(limit),
            Queue::Postgres(pg) => {
                let shown = pg.shown();
                if crate::postgres::daemon::wait_for_notification(&mut pg.client, limit)
                    .map_err(|e| Error::postgres(&shown, e))?
                {
                    self.notified = true;
                }
            }
        }
        Ok(())
    }

    /// Job `id`'s progress, or 66 when it does not exist.
    pub fn progress(&mut self, id: i64) -> Result<JobProgress> {
        self.queue
            .progress(id)?
            .ok_or_else(|| Error::NotFound(format!("no job {id} (never enqueued, or pruned by retention)")))
    }
}

/// One job's line under `--json`.
fn job_json(id: i64, p: &JobProgress) -> serde_json::Value {
    output::with_times(serde_json::json!({
        "id": id,
        "status": p.status.as_str(),
        "ended": p.status.terminal(),
        "completed_at": p.completed_at,
    }))
}

/// Prints the lines of a wait until its reader goes; after that, nothing (the wait and its
/// exit status go on).
struct Report {
    closed: bool,
}

impl Report {
    fn line(&mut self, write: impl FnOnce() -> Result<()>) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        match write() {
            Err(Error::StdoutClosed) => {
                self.closed = true;
                Ok(())
            }
            other => other,
        }
    }
}

/// `homerd wait`.
pub fn wait(ctx: &Context, ids: &[i64], timeout: Option<&str>, as_json: bool) -> Result<i32> {
    let timeout =
        timeout.map(|t| parse_duration(t).map_err(|e| Error::Usage(format!("--timeout: {e}")))).transpose()?;
    let started = Instant::now();
    let mut source = Source::open(ctx, ids[0])?;
    let mut open: BTreeMap<i64, JobProgress> = BTreeMap::new();
    for &id in ids {
        open.insert(id, source.progress(id)?);
    }
    let mut ended: BTreeMap<i64, JobStatus> = BTreeMap::new();
    let mut report = Report { closed: false };
    loop {
        if source.changed(ctx, RECHECK_SERVER)? {
            let mut still = BTreeMap::new();
            for &id in open.keys() {
                let p = source.progress(id)?;
                if p.status.terminal() {
                    report.line(|| {
                        if as_json {
                            output::json(&job_json(id, &p))
                        } else {
                            outln!("job {id}: {}", p.status)
                        }
                    })?;
                    ended.insert(id, p.status);
                } else {
                    still.insert(id, p);
                }
            }
            open = still;
        }
        if open.is_empty() {
            let worst = ended.values().map(|s| outcome_code(*s)).max_by_key(|c| match *c {
                exit::JOB_FAILED => 2,
                exit::JOB_CANCELLED => 1,
                _ => 0,
            });
            return Ok(worst.unwrap_or(exit::OK));
        }
        if let Some(limit) = timeout {
            if started.elapsed() >= limit {
                if as_json {
                    for (id, p) in &open {
                        report.line(|| output::json(&job_json(*id, p)))?;
                    }
                } else {
                    let left: Vec<String> = open.iter().map(|(id, p)| format!("job {id} ({})", p.status)).collect();
                    eprintln!(
                        "homerd: wait: --timeout {} ran out; not finished: {}",
                        format_duration(limit),
                        left.join(", ")
                    );
                }
                return Ok(exit::WAIT_TIMEOUT);
            }
        }
        source.pause(timeout.map_or(POLL, |limit| limit.saturating_sub(started.elapsed()).min(POLL)))?;
    }
}
