//! Database lifecycle: read-only validation, creation by rename, migrations.
//!
//! A database is validated read-only before anything writes to it — header, our
//! `_migrations` table, every applied name known and in order, every checksum equal —
//! so a corrupt, zero-byte, foreign (the original TypeScript daemon's) or newer database
//! is refused byte-for-byte unchanged. A new database is built in a temp file beside the
//! final path, fsynced and hard-linked into place, so a crash during the first start can
//! never leave a zero-byte or half-migrated `homer.db`. Each migration runs in its own
//! `BEGIN IMMEDIATE` transaction that re-checks `_migrations` inside it, so two
//! concurrent migrators cannot both apply a file.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use sha2::{Digest, Sha256};

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::{events, failpoint};

include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

/// The migration that creates the leader row.
pub const LEADER_MIGRATION: &str = "009_leader.sql";

/// SHA-256 of a migration's text, hex.
pub fn checksum(sql: &str) -> String {
    Sha256::digest(sql.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// What read-only inspection found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DbState {
    /// No file at the path.
    Missing,
    /// A valid homerd database with the first `applied` migrations applied (0 for an
    /// SQLite file with no tables at all).
    Valid { applied: usize },
}

impl DbState {
    pub fn applied(&self) -> usize {
        match self {
            DbState::Missing => 0,
            DbState::Valid { applied } => *applied,
        }
    }

    pub fn is_current(&self) -> bool {
        self.applied() == MIGRATIONS.len()
    }

    pub fn has_leader(&self) -> bool {
        self.applied() > leader_migration_index()
    }
}

/// Validates the database at `path` without writing a byte.
pub fn inspect(path: &Path, busy_timeout: Duration) -> Result<DbState> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A dangling symlink is not "missing": creating through it would write elsewhere.
            if std::fs::symlink_metadata(path).is_ok() {
                return Err(Error::UnsafePath {
                    path: path.to_owned(),
                    message: String::from("database path is a dangling symbolic link; remove it or fix its target"),
                });
            }
            return Ok(DbState::Missing);
        }
        Err(e) => return Err(Error::io("stat", path, e)),
    };
    if meta.is_dir() {
        return Err(Error::data(path, "is a directory, not a database; move it aside or choose another --home"));
    }
    if !meta.is_file() {
        return Err(Error::data(path, "is not a regular file; move it aside or choose another --home"));
    }
    if meta.len() == 0 {
        return Err(Error::data(
            path,
            "is empty (zero bytes), not a homerd database; homerd never leaves one (it creates databases by rename), so something else truncated it: restore a backup or move it aside to start afresh",
        ));
    }
    let mut header = [0u8; 16];
    let n = std::fs::File::open(path).and_then(|mut f| f.read(&mut header)).map_err(|e| Error::io("read", path, e))?;
    if n < 16 || &header != b"SQLite format 3\0" {
        return Err(Error::data(
            path,
            "is not an SQLite database (bad header): corrupt or another kind of file; restore a backup or move it aside",
        ));
    }
    let conn = open_for_validation(path).map_err(|e| Error::sqlite(path, e))?;
    conn.busy_timeout(busy_timeout).map_err(|e| Error::sqlite(path, e))?;
    validate(&conn, path)
}

/// A read-only connection that creates nothing beside the file. A plain read-only open
/// of a WAL-mode database creates `-shm` and `-wal` files; when no `-wal` exists, every
/// committed page is in the main file, so `immutable=1` (no locking, no side files) reads
/// it exactly. When a `-wal` exists, its frames are needed and a normal read-only open
/// is used (a writer was there before us; the side files are already present).
fn open_for_validation(path: &Path) -> rusqlite::Result<Connection> {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
    if std::fs::symlink_metadata(PathBuf::from(wal)).is_ok() {
        return Connection::open_with_flags(path, flags & !OpenFlags::SQLITE_OPEN_URI);
    }
    Connection::open_with_flags(format!("file:{}?immutable=1", uri_path(path)), flags)
}

/// Percent-encodes a path for an SQLite `file:` URI.
fn uri_path(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for &b in path.as_os_str().as_bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn corrupt(path: &Path, e: rusqlite::Error) -> Error {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) | Some(rusqlite::ErrorCode::DatabaseCorrupt) => {
            Error::data(path, format!("is corrupt ({e}); restore a backup (homerd backup) or move it aside"))
        }
        _ => Error::sqlite(path, e),
    }
}

/// Checks `_migrations` against the embedded list (read-only).
pub fn validate(conn: &Connection, path: &Path) -> Result<DbState> {
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(|e| corrupt(path, e))?;
    if tables.is_empty() {
        return Ok(DbState::Valid { applied: 0 });
    }
    if !tables.iter().any(|t| t == "_migrations") {
        return Err(Error::data(
            path,
            "is not a homerd database (no _migrations table); it belongs to another program: choose another --home",
        ));
    }
    let columns: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('_migrations')")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(|e| corrupt(path, e))?;
    if !columns.iter().any(|c| c == "checksum") {
        let original = tables.iter().any(|t| t == "job_queue");
        let what = if original {
            "is a database of the original TypeScript Homer daemon (its _migrations has no checksums); homerd does not adopt it in place: keep it for the old daemon and point --home at a new directory"
        } else {
            "has a _migrations table that is not homerd's (no checksum column); choose another --home"
        };
        return Err(Error::data(path, what));
    }
    let applied: Vec<(String, String)> = conn
        .prepare("SELECT name, checksum FROM _migrations ORDER BY name")
        .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .map_err(|e| corrupt(path, e))?;
    for (i, (name, sum)) in applied.iter().enumerate() {
        let Some((known, sql)) = MIGRATIONS.get(i) else {
            return Err(Error::data(
                path,
                format!(
                    "was migrated by a newer homerd (unknown migration {name}); upgrade homerd or restore a backup"
                ),
            ));
        };
        if name != known {
            let why = if MIGRATIONS.iter().any(|(n, _)| n == name) {
                format!("has migration {name} applied without {known}")
            } else {
                format!("was migrated by a newer or different homerd (unknown migration {name})")
            };
            return Err(Error::data(path, format!("{why}; restore a backup or use the homerd that wrote it")));
        }
        if *sum != checksum(sql) {
            return Err(Error::data(
                path,
                format!("migration {name} was applied from a different text (checksum differs from this homerd's); use the homerd that wrote it or restore a backup"),
            ));
        }
    }
    Ok(DbState::Valid { applied: applied.len() })
}

/// Creates a fully migrated database at `path` via a temp file + fsync + link. Returns
/// `false` if another process created `path` first (the caller re-inspects it).
pub fn create(path: &Path, clock: &Clock) -> Result<bool> {
    let dir = path.parent().expect("database path has a parent");
    let tmp: PathBuf = dir.join(format!(".{}.tmp-{}", file_name(path), std::process::id()));
    remove_temp(&tmp);
    let result = (|| {
        crate::powerloss::phase("create");
        // Created 0600 before SQLite opens it: the queue holds job arguments.
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| Error::io("create", &tmp, e))?;
        }
        let mut conn = Connection::open(&tmp).map_err(|e| Error::sqlite(&tmp, e))?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(|e| Error::sqlite(&tmp, e))?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(|e| Error::sqlite(&tmp, e))?;
        apply_pending(&mut conn, &tmp, 0, None, clock)?;
        crate::powerloss::phase("create");
        // Closing the last connection checkpoints the WAL into the main file.
        conn.close().map_err(|(_, e)| Error::sqlite(&tmp, e))?;
        std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| Error::io("fsync", &tmp, e))?;
        match std::fs::hard_link(&tmp, path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(Error::io("link", path, e)),
        }
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io("fsync", dir, e))?;
        Ok(true)
    })();
    remove_temp(&tmp);
    result
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn remove_temp(tmp: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = tmp.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

/// Applies every migration after the first `applied`, one `BEGIN IMMEDIATE` transaction
/// each. With `epoch`, each transaction first checks the leader row still names it.
/// Returns the names applied by this call.
/// Index of the migration that creates the leader row.
pub fn leader_migration_index() -> usize {
    MIGRATIONS.iter().position(|(n, _)| *n == LEADER_MIGRATION).expect("leader migration is embedded")
}

/// Applies migrations `from..to` (see [`apply_pending`]).
pub fn apply_upto(
    conn: &mut Connection,
    path: &Path,
    from: usize,
    to: usize,
    epoch: Option<i64>,
    clock: &Clock,
) -> Result<Vec<&'static str>> {
    apply_range(conn, path, from, to.min(MIGRATIONS.len()), epoch, clock)
}

pub fn apply_pending(
    conn: &mut Connection,
    path: &Path,
    applied: usize,
    epoch: Option<i64>,
    clock: &Clock,
) -> Result<Vec<&'static str>> {
    apply_range(conn, path, applied, MIGRATIONS.len(), epoch, clock)
}

fn apply_range(
    conn: &mut Connection,
    path: &Path,
    from: usize,
    to: usize,
    epoch: Option<i64>,
    clock: &Clock,
) -> Result<Vec<&'static str>> {
    let mut done = Vec::new();
    for (name, sql) in &MIGRATIONS[from..to] {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| Error::sqlite(path, e))?;
        let sqlerr = |e| Error::sqlite(path, e);
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS _migrations (
                 name       TEXT PRIMARY KEY,
                 checksum   TEXT NOT NULL,
                 applied_at INTEGER NOT NULL
             );
             CREATE TEMP TABLE IF NOT EXISTS _migration_clock (now_ms INTEGER NOT NULL);
             DELETE FROM temp._migration_clock;",
        )
        .map_err(sqlerr)?;
        if let Some(epoch) = epoch {
            // Refreshing the leader row also checks the epoch; a long migration keeps the
            // holder fresh so a start through another lock path does not take over.
            super::leader::heartbeat(&tx, epoch, clock).map_err(sqlerr)?.then_some(()).ok_or_else(|| {
                Error::Fenced(String::from("another homerd took the database's epoch during migration"))
            })?;
        }
        crate::powerloss::phase("migration");
        // Re-check inside the write transaction: someone may have applied it meanwhile.
        let existing: Option<String> = tx
            .query_row("SELECT checksum FROM _migrations WHERE name = ?1", [name], |r| r.get(0))
            .optional()
            .map_err(sqlerr)?;
        if let Some(sum) = existing {
            if sum != checksum(sql) {
                return Err(Error::data(path, format!("migration {name} was applied from a different text")));
            }
            continue;
        }
        let now = clock.now_ms();
        tx.execute("INSERT INTO temp._migration_clock (now_ms) VALUES (?1)", [now]).map_err(sqlerr)?;
        tx.execute_batch(sql).map_err(|e| match e.sqlite_error_code() {
            // A statement the schema rejects (duplicate column, ...): the database is not
            // what its _migrations says. Anything else (disk full, I/O, busy) is transient.
            Some(rusqlite::ErrorCode::Unknown) | Some(rusqlite::ErrorCode::ConstraintViolation) => {
                Error::data(path, format!("migration {name} failed: {e}"))
            }
            _ => Error::sqlite(path, e),
        })?;
        // A crash here must leave no trace of this file (the transaction is not committed).
        failpoint::hit("migrate.mid_file").map_err(|e| Error::io("migrate", path, e))?;
        tx.execute(
            "INSERT INTO _migrations (name, checksum, applied_at) VALUES (?1, ?2, ?3)",
            rusqlite::params![name, checksum(sql), now],
        )
        .map_err(sqlerr)?;
        tx.commit().map_err(sqlerr)?;
        events::debug("migration.applied", "Migration applied").field("migration", *name).emit();
        done.push(*name);
    }
    Ok(done)
}

/// Test support: builds a database at `path` stopped after the first `upto` migrations
/// (the pre-004 fixture, a database "stopped at migration 003").
#[doc(hidden)]
pub fn create_partial(path: &Path, upto: usize, clock: &Clock) -> Result<()> {
    let mut conn = Connection::open(path).map_err(|e| Error::sqlite(path, e))?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(|e| Error::sqlite(path, e))?;
    apply_range(&mut conn, path, 0, upto, None, clock).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_paths_are_percent_encoded() {
        assert_eq!(
            uri_path(Path::new("/Users/a b/Library/Application Support/Homer/homer.db")),
            "/Users/a%20b/Library/Application%20Support/Homer/homer.db"
        );
        assert_eq!(uri_path(Path::new("/x/100%?#.db")), "/x/100%25%3F%23.db");
    }

    #[test]
    fn validation_of_a_wal_database_creates_no_side_files() {
        let t = tempfile::tempdir().unwrap();
        let db = t.path().join("odd dir?#");
        std::fs::create_dir(&db).unwrap();
        let db = db.join("homer.db");
        assert!(create(&db, &Clock::default()).unwrap());
        let before: Vec<_> = std::fs::read_dir(db.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(inspect(&db, Duration::from_secs(1)).unwrap(), DbState::Valid { applied: MIGRATIONS.len() });
        let after: Vec<_> = std::fs::read_dir(db.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(before, after);
    }

    #[test]
    fn every_migration_applies_to_an_empty_database_with_its_checksum() {
        let t = tempfile::tempdir().unwrap();
        let db = t.path().join("homer.db");
        assert!(create(&db, &Clock::default()).unwrap());
        let conn = Connection::open(&db).unwrap();
        let rows: Vec<(String, String)> = conn
            .prepare("SELECT name, checksum FROM _migrations ORDER BY name")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let expected: Vec<(String, String)> = MIGRATIONS.iter().map(|(n, s)| (n.to_string(), checksum(s))).collect();
        assert_eq!(rows, expected);
        // Creating again over an existing file reports the race instead of replacing it.
        assert!(!create(&db, &Clock::default()).unwrap());
    }

    #[test]
    fn concurrent_appliers_apply_each_file_once() {
        let t = tempfile::tempdir().unwrap();
        let db = t.path().join("homer.db");
        create_partial(&db, 3, &Clock::default()).unwrap();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let mut c = Connection::open(&db).unwrap();
                    c.busy_timeout(Duration::from_secs(30)).unwrap();
                    apply_pending(&mut c, &db, 3, None, &Clock::default()).unwrap();
                });
            }
        });
        assert_eq!(inspect(&db, Duration::from_secs(1)).unwrap(), DbState::Valid { applied: MIGRATIONS.len() });
    }

    #[test]
    fn status_trigger_rejects_unknown_statuses() {
        let t = tempfile::tempdir().unwrap();
        let db = t.path().join("homer.db");
        create(&db, &Clock::default()).unwrap();
        let c = Connection::open(&db).unwrap();
        let err = c.execute("INSERT INTO job_queue (kind, status, created_at) VALUES ('noop', 'sleeping', 0)", []);
        assert!(err.is_err());
        c.execute("INSERT INTO job_queue (kind, status, created_at) VALUES ('noop', 'cancelled', 0)", []).unwrap();
    }
}
