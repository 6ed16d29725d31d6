//! The SQLite backend, and all SQL: schema validation and migrations ([`schema`]), the
//! leader row and epoch ([`leader`]), the single writer ([`writer`]), the job queue's
//! statements ([`jobs`]) and the engine's `JobStore` over them ([`jobstore`]), operator
//! statements ([`ops`]) and the read-only queries behind `status` and `doctor` ([`read`]).
//!
//! Architecture invariant: no other module prepares or executes SQL. Daemon writes go
//! through [`writer::Writer`], whose transactions check the epoch first.
#![allow(clippy::disallowed_methods)] // the one owner of SQL (and its submodules)

mod convert;
pub mod jobs;
pub mod jobstore;
pub mod leader;
pub mod ops;
pub mod read;
pub mod schema;
pub mod writer;

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::config::Durability;
use crate::error::{Error, Result};
use crate::mutant;

/// Opens an existing database read-write (never creates it) with the daemon's pragmas.
pub fn open_writer(path: &Path, busy_timeout: Duration, durability: Durability) -> Result<Connection> {
    // The queue holds every job's arguments: owner-only, like the lock file. SQLite
    // creates `-wal` and `-shm` with the database's mode, so tightening a restored 0644
    // copy first also keeps the side files it is about to create private.
    tighten_modes(path)?;
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| Error::sqlite(path, e))?;
    configure(&conn, busy_timeout).map_err(|e| Error::sqlite(path, e))?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(|e| Error::sqlite(path, e))?;
    let sync = match durability {
        Durability::Normal => "NORMAL",
        Durability::Full => "FULL",
    };
    conn.pragma_update(None, "synchronous", sync).map_err(|e| Error::sqlite(path, e))?;
    // WAL policy: SQLite checkpoints every 1000 pages (~4 MiB) by itself; after a
    // checkpoint resets the log, truncate the -wal file back to at most WAL_SIZE_LIMIT so
    // a burst (or a reader that held a snapshot for a while) does not leave it large.
    conn.pragma_update(None, "wal_autocheckpoint", 1000).map_err(|e| Error::sqlite(path, e))?;
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT).map_err(|e| Error::sqlite(path, e))?;
    // The writer re-runs the same few dozen statements for every job: parsing and planning
    // them anew each time (an UPDATE of job_queue compiles its trigger and eight indexes)
    // was most of the daemon's CPU per job. rusqlite caches 16 by default; room for all.
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// Drops group and other permission bits from the database and its side files (only
/// files that have any: a file homerd created is already 0600). Called only once a
/// database has passed validation, just before it is opened for writing.
pub fn tighten_modes(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let [wal, shm, journal] = schema::side_files(path);
    for file in [path.to_path_buf(), wal, shm, journal] {
        let meta = match std::fs::symlink_metadata(&file) {
            Ok(m) if m.is_file() => m,
            _ => continue,
        };
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode & 0o700))
                .map_err(|e| Error::io("tighten the mode of", &file, e))?;
        }
    }
    Ok(())
}

/// The first "database disk image is malformed" / "file is not a database" error any
/// connection of this process met. Corruption is not a transient failure to retry: the
/// daemon stops claiming, stops its runs and exits with the data code (65) instead.
static CORRUPTION: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Whether `e` says the database file is damaged (SQLITE_CORRUPT, SQLITE_NOTADB).
pub fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt) | Some(rusqlite::ErrorCode::NotADatabase)
    )
}

/// Notes `e` if it is corruption (see [`corruption`]); returns whether it was.
pub fn note_corruption(e: &rusqlite::Error) -> bool {
    let corrupt = is_corruption(e);
    if corrupt {
        let _ = CORRUPTION.set(e.to_string());
    }
    corrupt
}

/// The first corruption error met, if any.
pub fn corruption() -> Option<&'static str> {
    CORRUPTION.get().map(String::as_str)
}

/// Prepared statements kept per writer connection (see [`open_writer`]).
const STATEMENT_CACHE: usize = 64;

/// Bytes the -wal file is truncated to after a checkpoint (README: the -wal bound).
pub const WAL_SIZE_LIMIT: i64 = 8 * 1024 * 1024;

/// Opens an existing database read-only: never creates, never migrates, never writes.
pub fn open_reader(path: &Path, busy_timeout: Duration) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| Error::sqlite(path, e))?;
    configure(&conn, busy_timeout).map_err(|e| Error::sqlite(path, e))?;
    Ok(conn)
}

/// Drops an open connection's commits to `synchronous=OFF`: only for the `ack_before_sync`
/// mutant (`cmd::enqueue::open_for_enqueue`), which acknowledges what a power cut can take back.
pub fn unsynced_commits(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "synchronous", "OFF")
}

fn configure(conn: &Connection, busy_timeout: Duration) -> rusqlite::Result<()> {
    let timeout = if mutant::active(mutant::NO_BUSY_TIMEOUT) { Duration::ZERO } else { busy_timeout };
    conn.busy_timeout(timeout)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

/// A migrated database in a temporary directory, for the SQL modules' unit tests.
#[cfg(test)]
pub(crate) fn test_db() -> (tempfile::TempDir, rusqlite::Connection) {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("homer.db");
    schema::create(&path, &crate::clock::Clock::default()).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    (t, conn)
}
