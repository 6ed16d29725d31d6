//! Read-only queries for `status`, `doctor` and `backup`. They run on reader
//! connections (WAL readers never block the writer, nor wait for it) and tolerate older
//! schemas where `doctor` needs to report rather than refuse.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{Connection, OptionalExtension};

use super::leader::{self, LeaderRow};
use crate::job::JobStatus;
pub use crate::rows::{JobProgress, RunningJob};

/// Job counts per status (every status present, zero if none).
pub fn job_counts(conn: &Connection) -> rusqlite::Result<BTreeMap<String, i64>> {
    let mut counts: BTreeMap<String, i64> = JobStatus::ALL.iter().map(|s| (s.as_str().to_owned(), 0)).collect();
    let mut stmt = conn.prepare("SELECT status, COUNT(*) FROM job_queue GROUP BY status")?;
    for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
        let (status, n) = row?;
        counts.insert(status, n);
    }
    Ok(counts)
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

/// Jobs in `running`, with what is known of their owner. Needs migration 006.
pub fn running_jobs(conn: &Connection) -> rusqlite::Result<Vec<RunningJob>> {
    let mut stmt = conn.prepare(
        "SELECT id, lane, kind, locked_by, heartbeat_at, claim_epoch
         FROM job_queue WHERE status = 'running' ORDER BY id",
    )?;
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

/// Online backup: one consistent snapshot of `src` copied to `dest` (which must not
/// exist yet; the caller renames a temp file into place).
pub fn backup_to(src: &Connection, dest: &Path) -> rusqlite::Result<()> {
    let mut out = Connection::open(dest)?;
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
