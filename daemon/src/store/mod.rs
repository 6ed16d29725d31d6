//! All SQL lives under this module: schema validation and migrations ([`schema`]), the
//! leader row and epoch ([`leader`]), the single writer ([`writer`]) and the read-only
//! queries behind `status` and `doctor` ([`read`]).
//!
//! Architecture invariant: no other module prepares or executes SQL. Daemon writes go
//! through [`writer::Writer`], whose transactions check the epoch first.
#![allow(clippy::disallowed_methods)] // the one owner of SQL (and its submodules)

pub mod jobs;
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
/// mutant (`commands::open_for_enqueue`), which acknowledges what a power cut can take back.
pub fn unsynced_commits(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "synchronous", "OFF")
}

fn configure(conn: &Connection, busy_timeout: Duration) -> rusqlite::Result<()> {
    let timeout = if mutant::active(mutant::NO_BUSY_TIMEOUT) { Duration::ZERO } else { busy_timeout };
    conn.busy_timeout(timeout)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}
