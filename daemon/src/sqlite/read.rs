//! Read-only queries for `status`, `doctor` and `backup`. They run on reader
//! connections (WAL readers never block the writer, nor wait for it) and tolerate older
//! schemas where `doctor` needs to report rather than refuse.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension};

use super::leader::{self, LeaderRow};
use crate::job::JobStatus;
pub use crate::rows::{JobCounts, JobProgress, RunningJob};

/// Jobs per lane and status, one part per status group so that each reads only its own
/// partial index (migration 013: `idx_queue_ready` for pending, `idx_queue_running`,
/// `idx_queue_done` for the terminal three, named as in its definition since 014: the
/// planner uses a partial index only for a condition it can match to the index's)
/// rather than the whole table. No index holds
/// every row's status any more: that index was rewritten at every status change. Any
/// status outside the five is not counted (the INSERT trigger refuses them since 003).
pub(crate) const COUNTS_BY_LANE: &str =
    "SELECT lane, 'pending', COUNT(*) FROM job_queue WHERE status = 'pending' GROUP BY lane
     UNION ALL
     SELECT lane, 'running', COUNT(*) FROM job_queue WHERE status = 'running' GROUP BY lane
     UNION ALL
     SELECT lane, status, COUNT(*) FROM job_queue
     WHERE status = 'completed' OR status = 'failed' OR status = 'cancelled'
     GROUP BY lane, status";

/// Jobs per status and per lane, from one run of [`COUNTS_BY_LANE`] (its terminal part
/// sorts every finished job's index entry: about 0.5 s per million here, so it runs once).
pub fn job_counts(conn: &Connection) -> rusqlite::Result<JobCounts> {
    let mut stmt = conn.prepare(COUNTS_BY_LANE)?;
    let groups =
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(JobCounts::from_groups(groups))
}

pub fn table_exists(conn: &Connection, table: &str) -> rusqlite::Result<bool> {
    conn.query_row("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1", [table], |_| Ok(()))
        .optional()
        .map(|o| o.is_some())
}

pub fn columns(conn: &Connection, table: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare("SELECT name FROM pragma_table_info(?1)")?;
    let cols = stmt.query_map([table], |r| r.get(0))?.collect();
    cols
}

/// The leader row, if the schema has one.
pub fn leader_row(conn: &Connection) -> rusqlite::Result<Option<LeaderRow>> {
    if !table_exists(conn, "leader")? {
        return Ok(None);
    }
    leader::read(conn).map(Some)
}

/// Where homerd's effective clock stood, as the database remembers it (see
/// `clock.rs`): the daemon's last leader-row reading, with its monotonic stamp when that
/// was taken on this boot. `None` before any daemon ran.
pub fn clock_anchor(conn: &Connection) -> rusqlite::Result<Option<(i64, Option<i64>)>> {
    let Some(row) = leader_row(conn)? else { return Ok(None) };
    let same_boot = row.boot_id.as_deref().is_some_and(crate::identity::same_boot);
    Ok(row.seen_at.map(|at| (at, row.seen_mono.filter(|_| same_boot))))
}

/// Raises `clock`'s floor from what the database remembers: [`clock_anchor`], and the
/// newest job's `created_at` (a CLI may have enqueued since the daemon last wrote the
/// leader row). So a process started after a backward step of the wall clock neither
/// goes back in time nor sorts a new job before older ones. Every command that writes or
/// judges times calls this once it has opened the database.
pub fn anchor_clock(conn: &Connection, clock: &crate::clock::Clock) {
    if let Ok(Some((at, mono))) = clock_anchor(conn) {
        clock.anchor(at, mono);
    }
    let newest = conn
        .query_row("SELECT created_at FROM job_queue ORDER BY id DESC LIMIT 1", [], |r| r.get::<_, i64>(0))
        .optional();
    if let Ok(Some(newest)) = newest {
        clock.anchor(newest, None);
    }
}

/// Names of applied migrations, in order.
pub fn applied_migrations(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    if !table_exists(conn, "_migrations")? {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare("SELECT name FROM _migrations ORDER BY name")?;
    let names = stmt.query_map([], |r| r.get(0))?.collect();
    names
}

const RUNNING_JOBS: &str = "SELECT id, lane, kind, locked_by, heartbeat_at, claim_epoch
         FROM job_queue WHERE status = 'running' ORDER BY id";

/// Jobs in `running`, with what is known of their owner. Needs migration 006.
pub fn running_jobs(conn: &Connection) -> rusqlite::Result<Vec<RunningJob>> {
    let mut stmt = conn.prepare(RUNNING_JOBS)?;
    let rows = stmt
        .query_map([], |r| {
            Ok(RunningJob {
                id: r.get(0)?,
                lane: r.get(1)?,
                kind: r.get(2)?,
                locked_by: r.get(3)?,
                heartbeat_at: r.get(4)?,
                claim_epoch: r.get(5)?,
            })
        })?
        .collect();
    rows
}

/// Jobs whose status is none of the five homerd knows, `(id, status)`, lowest ids first, at
/// most `limit`, with how many there are in all. Only a hand edit makes one: the INSERT
/// trigger refuses them, and since migration 013 no trigger checks an UPDATE (each status
/// change would pay for it). Such a job is in no status index, so nothing claims, counts
/// or recovers it: `doctor` reports them. Reads the whole table (as `doctor`'s integrity
/// check already does).
pub fn unknown_statuses(conn: &Connection, limit: usize) -> rusqlite::Result<(Vec<(i64, String)>, i64)> {
    let known: Vec<String> = JobStatus::ALL.iter().map(|s| format!("'{}'", s.as_str())).collect();
    let mut stmt = conn.prepare(&format!(
        "SELECT id, status, COUNT(*) OVER () FROM job_queue WHERE status IS NULL OR status NOT IN ({}) ORDER BY id",
        known.join(", ")
    ))?;
    let (mut found, mut total) = (Vec::new(), 0);
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        total = r.get(2)?;
        if found.len() == limit {
            break;
        }
        found.push((r.get(0)?, r.get::<_, Option<String>>(1)?.unwrap_or_else(|| String::from("NULL"))));
    }
    Ok((found, total))
}

/// Online backup: one consistent snapshot of `src` copied to `dest` (which must not
/// exist yet; the caller renames a temp file into place).
pub fn backup_to(src: &Connection, dest: &Path) -> rusqlite::Result<()> {
    // The path as it is: the bundled SQLite reads any name beginning `file:` as a URI
    // (built with SQLITE_USE_URI, whatever the open flags say), which would send the copy
    // somewhere else. A relative path is anchored with `./`, so it never begins so.
    let dest = if dest.is_relative() { Path::new(".").join(dest) } else { dest.to_path_buf() };
    let mut out = Connection::open(&dest)?;
    {
        let backup = rusqlite::backup::Backup::new(src, &mut out)?;
        // All pages in one step: one read transaction, so the copy is one snapshot even
        // while the daemon keeps writing. Busy/Locked can only be transient here (a WAL
        // reader is never blocked for long); retry within a bound.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match backup.step(-1)? {
                rusqlite::backup::StepResult::Done => break,
                _ if std::time::Instant::now() > deadline => return Err(failure("backup kept being blocked for 30 s")),
                _ => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
    }
    // The copy is a standalone file: leave it in rollback-journal mode, then verify it.
    out.pragma_update(None, "journal_mode", "DELETE")?;
    let ok: String = out.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    if ok != "ok" {
        return Err(failure(&format!("backup failed its integrity check: {ok}")));
    }
    out.close().map_err(|(_, e)| e)
}

fn failure(msg: &str) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR), Some(msg.to_owned()))
}

/// `PRAGMA data_version`: changes when another connection commits.
pub fn data_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached("PRAGMA data_version")?.query_row([], |r| r.get(0))
}

/// The earliest `run_after` among pending jobs (from the lane heads: no full scan).
pub fn next_run_after(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    Ok(super::jobs::lane_heads(conn)?.into_iter().map(|(_, run_after, _)| run_after).min())
}

/// Where a job stands, for `wait` and `logs -f`: its status, kind, how many runs it has
/// had and when it ended. `None`: no such job (never enqueued, or pruned by retention).
pub fn job_progress(conn: &Connection, id: i64) -> rusqlite::Result<Option<JobProgress>> {
    conn.prepare_cached("SELECT status, kind, runs, completed_at FROM job_queue WHERE id = ?1")?
        .query_row([id], |r| {
            Ok(JobProgress { status: r.get(0)?, kind: r.get(1)?, runs: r.get(2)?, completed_at: r.get(3)? })
        })
        .optional()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `EXPLAIN QUERY PLAN` of `sql`, one line per step.
    fn plan(conn: &Connection, sql: &str) -> Vec<String> {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let nulls = vec![rusqlite::types::Null; stmt.parameter_count()];
        let rows = stmt.query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(3)).unwrap();
        rows.map(Result::unwrap).collect()
    }

    /// The operator's reads that count or list by status (`status`, `doctor`, the
    /// engine's housekeeping) read an index on a table of any size, never the whole table:
    /// migration 013 left no index on every row's status, so each must find its partial
    /// one. (A scan of a partial index reads only the rows of its status.) The one
    /// exception is on purpose: `unknown_statuses`, which looks for rows in no group.
    #[test]
    fn status_reads_use_an_index() {
        let t = tempfile::tempdir().unwrap();
        let db = t.path().join("homer.db");
        super::super::schema::create(&db, &crate::clock::Clock::default()).unwrap();
        let conn = Connection::open(&db).unwrap();
        let reads = [
            ("counts by lane and status", COUNTS_BY_LANE),
            ("running jobs", RUNNING_JOBS),
            ("oldest pending", super::super::ops::OLDEST_PENDING),
            ("retention", super::super::ops::PRUNE_CANDIDATES),
        ];
        for (name, sql) in reads {
            let lines = plan(&conn, sql);
            let whole = lines.iter().find(|l| l.starts_with("SCAN job_queue") && !l.contains(" USING "));
            assert!(whole.is_none(), "{name} reads the whole table: {lines:#?}");
            assert!(lines.iter().any(|l| l.contains("USING")), "{name}: no index in {lines:#?}");
        }
        // Retention reads the finished jobs' index: a condition that does not name its
        // rows as the index does (013's IN list, say) makes it read another one or none.
        let retention = plan(&conn, super::super::ops::PRUNE_CANDIDATES).join("\n");
        assert!(retention.contains("INDEX idx_queue_done"), "retention:\n{retention}");
        // The three parts of the counts, each on its own index alone (every index holds
        // the lane; a partial index stands for its status).
        let counts = plan(&conn, COUNTS_BY_LANE).join("\n");
        for index in ["idx_queue_ready", "idx_queue_running", "idx_queue_done"] {
            assert!(counts.contains(&format!("USING COVERING INDEX {index}")), "{index} not covering:\n{counts}");
        }
    }
}
