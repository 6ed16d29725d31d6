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
use crate::{events, failpoint, mutant};

include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

/// The migration that creates the leader row.
pub const LEADER_MIGRATION: &str = "009_leader.sql";

/// SHA-256 of a migration's text, hex.
pub fn checksum(sql: &str) -> String {
    Sha256::digest(sql.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Checksums of earlier texts of a migration that differ from today's only in a comment:
/// databases those texts were applied to stay valid (their `_migrations` rows are left as
/// they are). Each entry's test rebuilds the earlier text from today's and its checksum.
const EARLIER_TEXTS: &[(&str, &str)] = &[
    // The first comment line named the tracker entry it came from.
    ("012_job_environment.sql", "630671190346de8e468126e87054b33e445b698e85139fed184f3315805d2fc0"),
    ("013_lean_indexes.sql", "880fc1308b0169e7ed801083d95f00d99cc82bc922f074fb240b7e1226cb9fdd"),
];

/// Whether `sum`, read from `_migrations`, is migration `name`'s (today's text or an
/// earlier one of [`EARLIER_TEXTS`]).
fn applied_from(name: &str, sql: &str, sum: &str) -> bool {
    sum == checksum(sql) || EARLIER_TEXTS.iter().any(|(n, s)| *n == name && *s == sum)
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
    inspect_holding(path, busy_timeout).map(|(state, _)| state)
}

/// [`inspect`], keeping the read-only connection it validated with (`None` for a missing
/// database), for [`check_data_on`] and to be held open while the writer opens: after a
/// crash, the first connection to open a WAL-mode database rebuilds its WAL index by
/// reading the whole `-wal` (up to ~4 MiB between checkpoints here, milliseconds), and so
/// does every later one that opens while no other connection is open — three times per
/// start (validation, data check, writer) when each closed before the next opened.
pub fn inspect_holding(path: &Path, busy_timeout: Duration) -> Result<(DbState, Option<Connection>)> {
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
            // Side files without their database hold another file's last commits: a new
            // database created here would have them replayed into it (failure mode 23).
            if !mutant::active(mutant::ADOPT_STRAY_WAL) {
                refuse_stray_side_files(path)?;
            }
            return Ok((DbState::Missing, None));
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
    if !mutant::active(mutant::ADOPT_STRAY_WAL) {
        check_wal_header(path, &header_page_size(path)?)?;
    }
    let conn = open_for_validation(path).map_err(|e| Error::sqlite(path, e))?;
    conn.busy_timeout(busy_timeout).map_err(|e| Error::sqlite(path, e))?;
    let state = validate(&conn, path)?;
    Ok((state, Some(conn)))
}

/// A non-zero random 31-bit identity for a new database (its header's `user_version`).
fn random_database_id() -> i64 {
    let mut b = [0u8; 4];
    if let Err(e) = crate::platform::random_bytes(&mut b) {
        panic!("{e}");
    }
    i64::from(u32::from_ne_bytes(b) & 0x7fff_ffff).max(1)
}

/// The identity [`create`] stamped into a database's header (`user_version`, offset 60),
/// read from the main file alone (so never from a `-wal`); `None` for a file too short
/// or made before homerd stamped identities (0). Only before this process opens the
/// database with SQLite (see `cmd::lead::diagnostics` on POSIX locks); afterwards use
/// [`database_id_of`].
pub fn database_id(path: &Path) -> Option<u32> {
    let mut header = [0u8; 64];
    let n = std::fs::File::open(path).and_then(|mut f| f.read(&mut header)).ok()?;
    (n == 64).then(|| u32::from_be_bytes([header[60], header[61], header[62], header[63]])).filter(|id| *id != 0)
}

/// [`database_id`] read through an open connection (`PRAGMA user_version`).
pub fn database_id_of(conn: &Connection) -> Option<u32> {
    conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
        .ok()
        .and_then(|v| u32::try_from(v).ok())
        .filter(|v| *v != 0)
}

/// Whether `<db>-wal` holds frames SQLite would replay: a valid header and a first frame
/// carrying the header's salts.
fn wal_has_frames(path: &Path) -> bool {
    let [wal, ..] = side_files(path);
    let mut buf = [0u8; 56];
    let Ok(n) = std::fs::File::open(&wal).and_then(|mut f| f.read(&mut buf)) else { return false };
    let magic = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    n == 56 && (magic & !1) == 0x377f_0682 && buf[16..24] == buf[32 + 8..32 + 16]
}

/// The start-time check behind "never replay a WAL into a database it was not written
/// for": the previous lock holder recorded the identity of the database it ran on
/// (`database_id` in the lock file). If a `-wal` with frames is here but the file at the
/// database path carries another identity, the database was replaced after that holder
/// stopped (a crash leaves its `-wal`), and replaying the log would graft the old file's
/// pages onto the new one. `recorded` is the previous holder's diagnostics.
pub fn check_wal_owner(path: &Path, recorded: &crate::lock::Diagnostics) -> Result<()> {
    if mutant::active(mutant::ADOPT_STRAY_WAL) || !wal_has_frames(path) {
        return Ok(());
    }
    let same_path = recorded.get("database").is_some_and(|d| Path::new(d) == path);
    let Some(theirs) = recorded.get("database_id").and_then(|s| s.parse::<u32>().ok()) else { return Ok(()) };
    match database_id(path) {
        Some(ours) if same_path && ours != theirs => {
            let [wal, ..] = side_files(path);
            Err(Error::data(
                &wal,
                format!(
                    "was written for another database: the last homerd here ran on database id {theirs}, but {} is database id {ours} (replaced after a crash?). SQLite would replay this log into the wrong file. Put the original database back; or, to keep the file that is there now, move {} and its -shm aside",
                    path.display(),
                    wal.display()
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// `<db>-wal`, `<db>-shm`, `<db>-journal`: the files SQLite keeps beside a database.
pub fn side_files(path: &Path) -> [PathBuf; 3] {
    ["-wal", "-shm", "-journal"].map(|suffix| {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p)
    })
}

/// Refuses to go on when a database is missing but its side files are not: they belong
/// to a database that was moved, deleted or renamed, and SQLite would replay the `-wal`
/// into whatever new file took its name — and then delete it, with the commits it held.
pub fn refuse_stray_side_files(path: &Path) -> Result<()> {
    for side in side_files(path) {
        if std::fs::symlink_metadata(&side).is_ok() {
            // Looked at again after its side file was seen: a concurrent first start links
            // the new database into place before it opens it (and so before any side file
            // exists), so a database there now owns the side file. (Without this, a start
            // racing the first one — it saw no database, then the new `-wal` — was refused.)
            if std::fs::symlink_metadata(path).is_ok() {
                return Ok(());
            }
            return Err(Error::data(
                &side,
                format!(
                    "is left without its database {} (moved, renamed or deleted?); it may hold that database's last commits, and a new database created beside it would have them replayed into it. Move the database back beside it; or, to start afresh, move {} and the other {}-* files aside. homerd created nothing",
                    path.display(),
                    side.display(),
                    file_name(path)
                ),
            ));
        }
    }
    Ok(())
}

/// The page size in a database file's header (offset 16, big-endian; 1 means 65536).
fn header_page_size(path: &Path) -> Result<Option<u32>> {
    let mut header = [0u8; 18];
    let n = std::fs::File::open(path).and_then(|mut f| f.read(&mut header)).map_err(|e| Error::io("read", path, e))?;
    if n < 18 {
        return Ok(None);
    }
    Ok(Some(match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65_536,
        n => u32::from(n),
    }))
}

/// A `-wal` beside an existing database must have been written for it. SQLite cannot
/// tell, and replays any WAL with a valid header. What can be checked without replaying
/// it: a WAL whose page size differs from the database's comes from another database.
/// (The data check that follows reads the database through its WAL: foreign frames
/// whose page size happens to match show up there as damaged pages.)
fn check_wal_header(path: &Path, db_page_size: &Option<u32>) -> Result<()> {
    let [wal, ..] = side_files(path);
    let mut header = [0u8; 32];
    let n = match std::fs::File::open(&wal).and_then(|mut f| f.read(&mut header)) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("read", &wal, e)),
    };
    let magic = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    // A short or invalid header holds no commits: SQLite resets such a log.
    if n < 32 || (magic & !1) != 0x377f_0682 {
        return Ok(());
    }
    let wal_page_size = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
    match db_page_size {
        Some(db) if *db != wal_page_size => Err(Error::data(
            &wal,
            format!(
                "belongs to another database: its pages are {wal_page_size} bytes, {}'s are {db}; SQLite would replay it into the wrong file. Move {} and the -shm beside it aside (or put back the database it came from)",
                path.display(),
                wal.display()
            ),
        )),
        _ => Ok(()),
    }
}

/// Reads every page of the database, through its `-wal` if it has one, without writing
/// a byte (`PRAGMA quick_check`: b-tree structure, cell bounds, free-list, page usage;
/// not index contents). The schema check in [`inspect`] reads a handful of pages, so a
/// file damaged elsewhere would otherwise be accepted and fail later, while jobs run.
/// Cost: the whole file is read once (README: about 0.6 s for a million jobs here).
pub fn check_data(path: &Path, busy_timeout: Duration) -> Result<()> {
    let conn = open_for_validation(path).map_err(|e| corrupt(path, e))?;
    conn.busy_timeout(busy_timeout).map_err(|e| Error::sqlite(path, e))?;
    check_data_on(&conn, path)
}

/// [`check_data`] on a read-only connection already open on `path` (see [`inspect_holding`]).
pub fn check_data_on(conn: &Connection, path: &Path) -> Result<()> {
    let problems: Vec<String> = conn
        .prepare("PRAGMA quick_check(5)")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(|e| damaged(path, e.to_string()))?;
    if problems.len() == 1 && problems[0] == "ok" {
        return Ok(());
    }
    let first = problems.iter().flat_map(|p| p.lines()).find(|l| !l.starts_with("***")).unwrap_or("unknown");
    Err(damaged(path, first.to_owned()))
}

fn damaged(path: &Path, detail: String) -> Error {
    let [wal, ..] = side_files(path);
    let wal_hint = if wal.exists() {
        format!(
            " (read together with {}: if that -wal came from another copy of the database, put the database it belongs to back)",
            wal.display()
        )
    } else {
        String::new()
    };
    Error::data(
        path,
        format!(
            "is corrupt: SQLite's integrity check fails ({detail}){wal_hint}. homerd changed nothing; restore a backup (homerd backup writes them) or move the file aside to start afresh"
        ),
    )
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
        if !applied_from(name, sql, sum) {
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
        crate::paths::create_private_file(&tmp)?;
        let mut conn = Connection::open(&tmp).map_err(|e| Error::sqlite(&tmp, e))?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(|e| Error::sqlite(&tmp, e))?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(|e| Error::sqlite(&tmp, e))?;
        apply_pending(&mut conn, &tmp, 0, None, clock)?;
        // A random identity in the header (never changed afterwards): a lock holder
        // records it, so a later start can tell a `-wal` written for this database from
        // one written for a file that has since been replaced (see `check_wal_owner`).
        conn.pragma_update(None, "user_version", random_database_id()).map_err(|e| Error::sqlite(&tmp, e))?;
        crate::powerloss::phase("create");
        // Closing the last connection checkpoints the WAL into the main file.
        conn.close().map_err(|(_, e)| Error::sqlite(&tmp, e))?;
        std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| Error::io("fsync", &tmp, e))?;
        // Side files that appeared meanwhile (without a database: with one, the link
        // below reports the race) would be replayed into the new database.
        if !mutant::active(mutant::ADOPT_STRAY_WAL) && std::fs::symlink_metadata(path).is_err() {
            refuse_stray_side_files(path)?;
        }
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

/// Index of the migration that creates the leader row.
pub fn leader_migration_index() -> usize {
    MIGRATIONS.iter().position(|(n, _)| *n == LEADER_MIGRATION).expect("leader migration is embedded")
}

/// Applies every migration after the first `applied`, one `BEGIN IMMEDIATE` transaction
/// each. With `epoch`, each transaction first checks the leader row still names it.
/// Returns the names applied by this call.
pub fn apply_pending(
    conn: &mut Connection,
    path: &Path,
    applied: usize,
    epoch: Option<i64>,
    clock: &Clock,
) -> Result<Vec<&'static str>> {
    apply_upto(conn, path, applied, MIGRATIONS.len(), epoch, clock)
}

/// Applies migrations `from..to` (`to` past the last: up to the last) as
/// [`apply_pending`] does.
pub fn apply_upto(
    conn: &mut Connection,
    path: &Path,
    from: usize,
    to: usize,
    epoch: Option<i64>,
    clock: &Clock,
) -> Result<Vec<&'static str>> {
    let mut done = Vec::new();
    for (name, sql) in &MIGRATIONS[from..to.min(MIGRATIONS.len())] {
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
            if !applied_from(name, sql, &sum) {
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
    apply_upto(&mut conn, path, 0, upto, None, clock).map(drop)
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

    /// Today's text of each migration in [`EARLIER_TEXTS`] with its first line put back as
    /// it was: the earlier text differs in that comment alone.
    #[test]
    fn earlier_texts_differ_from_todays_in_a_comment_only() {
        let first_lines = [
            ("012_job_environment.sql", "-- Where an `exec` job runs and what it adds to its environment (issue 15)."),
            (
                "013_lean_indexes.sql",
                "-- Fewer index writes per job (issue 17). A job's life (pending -> running -> completed)",
            ),
        ];
        assert_eq!(first_lines.len(), EARLIER_TEXTS.len());
        for ((name, sum), (line_of, first)) in EARLIER_TEXTS.iter().zip(first_lines) {
            assert_eq!(*name, line_of);
            let (_, sql) = MIGRATIONS.iter().find(|(n, _)| n == name).expect("a known migration");
            let (_, rest) = sql.split_once('\n').unwrap();
            assert!(first.starts_with("--"));
            assert_eq!(checksum(&format!("{first}\n{rest}")), *sum, "{name}");
            assert_ne!(checksum(sql), *sum, "{name}: today's text is the earlier one");
        }
    }

    /// A database those earlier texts were applied to opens, migrates and is left as it
    /// was; a checksum no text of the migration had is still refused.
    #[test]
    fn a_database_migrated_from_an_earlier_text_is_valid() {
        let t = tempfile::tempdir().unwrap();
        let db = t.path().join("homer.db");
        create_partial(&db, MIGRATIONS.len() - 1, &Clock::default()).unwrap();
        let (name, sum) = EARLIER_TEXTS[0];
        let (last, _) = MIGRATIONS[MIGRATIONS.len() - 1];
        assert!(MIGRATIONS.iter().position(|(n, _)| *n == name).unwrap() < MIGRATIONS.len() - 1);
        let set = |sum: &str| {
            let c = Connection::open(&db).unwrap();
            c.execute("UPDATE _migrations SET checksum = ?1 WHERE name = ?2", [sum, name]).unwrap();
        };
        set(sum);
        assert_eq!(inspect(&db, Duration::from_secs(1)).unwrap(), DbState::Valid { applied: MIGRATIONS.len() - 1 });
        let mut c = Connection::open(&db).unwrap();
        assert_eq!(apply_pending(&mut c, &db, MIGRATIONS.len() - 1, None, &Clock::default()).unwrap(), vec![last]);
        let kept: String =
            c.query_row("SELECT checksum FROM _migrations WHERE name = ?1", [name], |r| r.get(0)).unwrap();
        assert_eq!(kept, sum);
        drop(c);
        assert_eq!(inspect(&db, Duration::from_secs(1)).unwrap(), DbState::Valid { applied: MIGRATIONS.len() });
        // Another migration's earlier checksum is not this one's.
        set(EARLIER_TEXTS[1].1);
        let err = inspect(&db, Duration::from_secs(1)).unwrap_err().to_string();
        assert!(err.contains(&format!("migration {name} was applied from a different text")), "{err}");
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

    fn bytes(p: &Path) -> Vec<u8> {
        std::fs::read(p).unwrap()
    }

    /// A database with enough rows to span many pages.
    fn populated(dir: &Path) -> PathBuf {
        let db = dir.join("homer.db");
        assert!(create(&db, &Clock::default()).unwrap());
        let c = Connection::open(&db).unwrap();
        c.execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
             INSERT INTO job_queue (kind, payload, created_at) SELECT 'noop', printf('[\"%0100d\"]', i), i FROM n",
        )
        .unwrap();
        drop(c);
        db
    }

    #[test]
    fn a_damaged_page_is_found_and_the_file_left_unchanged() {
        let t = tempfile::tempdir().unwrap();
        let db = populated(t.path());
        check_data(&db, Duration::from_secs(1)).unwrap();
        let mut raw = bytes(&db);
        let mid = raw.len() / 2;
        raw[mid..mid + 600].iter_mut().enumerate().for_each(|(i, b)| *b = (i * 7 + 3) as u8);
        std::fs::write(&db, &raw).unwrap();
        // The schema still reads: only the data check sees the damage.
        assert_eq!(inspect(&db, Duration::from_secs(1)).unwrap(), DbState::Valid { applied: MIGRATIONS.len() });
        let err = check_data(&db, Duration::from_secs(1)).unwrap_err();
        assert_eq!(err.exit_code(), crate::error::exit::DATA);
        assert!(err.to_string().contains("is corrupt") && err.to_string().contains("homer.db"), "{err}");
        assert_eq!(bytes(&db), raw, "refused byte-for-byte unchanged");
    }

    #[test]
    fn side_files_without_their_database_are_refused_before_anything_is_created() {
        for side in ["-wal", "-shm", "-journal"] {
            let t = tempfile::tempdir().unwrap();
            let db = t.path().join("homer.db");
            let stray = t.path().join(format!("homer.db{side}"));
            std::fs::write(&stray, b"frames of a moved database").unwrap();
            let err = inspect(&db, Duration::from_secs(1)).unwrap_err();
            assert_eq!(err.exit_code(), crate::error::exit::DATA);
            assert!(err.to_string().starts_with(&stray.display().to_string()), "names the file: {err}");
            let names: Vec<_> = std::fs::read_dir(t.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert_eq!(names.len(), 1, "nothing created: {names:?}");
        }
    }

    /// A minimal WAL header: magic, version, page size, then zeros.
    fn wal_header(page_size: u32) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&0x377f_0682u32.to_be_bytes());
        h.extend_from_slice(&3_007_000u32.to_be_bytes());
        h.extend_from_slice(&page_size.to_be_bytes());
        h.resize(32, 0);
        h
    }

    #[test]
    fn a_wal_with_another_page_size_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let db = t.path().join("homer.db");
        assert!(create(&db, &Clock::default()).unwrap());
        let wal = t.path().join("homer.db-wal");
        std::fs::write(&wal, wal_header(1024)).unwrap();
        let err = inspect(&db, Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().contains("belongs to another database"), "{err}");
        // Its own page size is fine (the header alone holds no frames).
        std::fs::write(&wal, wal_header(4096)).unwrap();
        inspect(&db, Duration::from_secs(1)).unwrap();
    }

    #[test]
    fn a_wal_left_by_a_holder_of_another_database_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let db = t.path().join("homer.db");
        assert!(create(&db, &Clock::default()).unwrap());
        let ours = database_id(&db).expect("create stamps an identity");
        let c = Connection::open(&db).unwrap();
        assert_eq!(database_id_of(&c), Some(ours));
        // A crash: a connection left frames in the -wal (kept open while we look).
        c.execute("INSERT INTO job_queue (kind, created_at) VALUES ('noop', 0)", []).unwrap();
        assert!(wal_has_frames(&db));
        let recorded = |id: u32, path: &Path| {
            crate::lock::Diagnostics::parse(&format!("database={}\ndatabase_id={id}\n", path.display()))
        };
        check_wal_owner(&db, &recorded(ours, &db)).unwrap();
        let err = check_wal_owner(&db, &recorded(ours ^ 1, &db)).unwrap_err();
        assert_eq!(err.exit_code(), crate::error::exit::DATA);
        assert!(err.to_string().contains("was written for another database"), "{err}");
        // A holder that ran on another path, or recorded nothing, says nothing about it.
        check_wal_owner(&db, &recorded(ours ^ 1, &t.path().join("other.db"))).unwrap();
        check_wal_owner(&db, &crate::lock::Diagnostics::default()).unwrap();
        drop(c);
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
