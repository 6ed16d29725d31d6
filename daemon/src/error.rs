//! Typed errors at the library's edges and the documented exit codes they map to.
//!
//! Every variant carries the path (and operation) it is about, so `main` can print one
//! lowercase line that names the file and what to do, and exit with a code from
//! [`exit`]. The codes follow sysexits(3) where one fits.

use std::io;
use std::path::PathBuf;

/// Documented process exit codes (README "Exit codes"). Stable: supervisors and scripts
/// key on them (systemd's `RestartPreventExitStatus=`, for one).
pub mod exit {
    /// Clean stop, or "another Homer instance is running" (a supervisor must not loop).
    pub const OK: i32 = 0;
    /// `homerd doctor` found a failing check.
    pub const CHECK_FAILED: i32 = 1;
    /// The job is not in a state the command applies to (`cancel` of a finished job,
    /// `retry` of one that did not fail); nothing was changed.
    pub const WRONG_STATE: i32 = 3;
    /// No such job (EX_NOINPUT).
    pub const NOT_FOUND: i32 = 66;
    /// `wait`, `logs -f`: a job ended `failed`.
    pub const JOB_FAILED: i32 = 4;
    /// `wait`, `logs -f`: a job ended `cancelled` (and none failed).
    pub const JOB_CANCELLED: i32 = 5;
    /// `wait --timeout`: the time ran out before every job ended.
    pub const WAIT_TIMEOUT: i32 = 6;
    /// Bad command line (EX_USAGE).
    pub const USAGE: i32 = 64;
    /// Corrupt, zero-byte, foreign or newer database, changed migration (EX_DATAERR).
    pub const DATA: i32 = 65;
    /// The lock cannot be trusted here: network filesystem, flock unsupported or failing
    /// in an unexpected way (EX_UNAVAILABLE). homerd fails closed.
    pub const LOCK_UNSUPPORTED: i32 = 69;
    /// A bug in homerd (EX_SOFTWARE).
    pub const INTERNAL: i32 = 70;
    /// Lock or database path refused: a symlink, a directory, not a regular file
    /// (EX_CANTCREAT).
    pub const UNSAFE_PATH: i32 = 73;
    /// Any other I/O error (EX_IOERR).
    pub const IO: i32 = 74;
    /// The database is in use by a live daemon through another lock path, or a daemon is
    /// active and the command needs it stopped (EX_TEMPFAIL: try again later).
    pub const IN_USE: i32 = 75;
    /// This daemon lost its epoch to another one and stopped everything (EX_PROTOCOL).
    pub const FENCED: i32 = 76;
    /// Permission denied on the lock file, the database or their directory (EX_NOPERM).
    pub const PERMISSION: i32 = 77;
    /// Invalid configuration (EX_CONFIG).
    pub const CONFIG: i32 = 78;

    /// The stable name of an exit code: the `kind` of a `--json` error, which scripts
    /// can match instead of the number.
    pub fn kind(code: i32) -> &'static str {
        match code {
            OK => "ok",
            CHECK_FAILED => "check_failed",
            WRONG_STATE => "wrong_state",
            NOT_FOUND => "not_found",
            USAGE => "usage",
            DATA => "data",
            LOCK_UNSUPPORTED => "lock_unsupported",
            INTERNAL => "internal",
            UNSAFE_PATH => "unsafe_path",
            IO => "io",
            IN_USE => "in_use",
            FENCED => "fenced",
            PERMISSION => "permission",
            CONFIG => "config",
            _ => "other",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),

    #[error("invalid configuration in {source_name}: `{key}`: {message}")]
    Config { source_name: String, key: String, message: String },

    #[error("{path}: {message}")]
    Data { path: PathBuf, message: String },

    #[error("{path}: {message}")]
    UnsafePath { path: PathBuf, message: String },

    #[error("{path}: {message}")]
    LockUnsupported { path: PathBuf, message: String },

    #[error("database in use by PID {pid} via lock file {lock_path}; stop that daemon or use the same lock file")]
    InUse { pid: u32, lock_path: String },

    #[error("{0}")]
    Busy(String),

    #[error("{0}")]
    NotFound(String),

    #[error("{0}")]
    WrongState(String),

    #[error("fenced: {0}")]
    Fenced(String),

    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: io::Error },

    #[error("{path}: {source}")]
    Sqlite { path: PathBuf, source: rusqlite::Error },

    #[error("internal error: {0}")]
    Internal(String),

    /// A PostgreSQL database: `target` is its connection string with any password
    /// replaced (`crate::postgres::redact`); `code` the exit code the failure maps to.
    #[error("{target}: {message}")]
    Postgres { target: String, message: String, code: i32 },

    /// The reader closed stdout (`homerd list | head -1`): not a failure. `cli::main`
    /// ends the command quietly with [`exit::OK`] (README "Exit codes"); see `output.rs`.
    #[error("stdout closed by its reader")]
    StdoutClosed,
}

/// A PostgreSQL failure in words, for every place that shows one ([`Error::postgres_in`],
/// the PostgreSQL store's `StoreError::Unavailable`): what the server said, or for a
/// connection that failed or broke, the driver's words and their cause.
pub fn postgres_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        // The driver's Display for a server error is "db error: ..."; say what the server said.
        Some(db) => db.message().to_owned(),
        // "error connecting to server" alone hides why: add the cause (refused, timed out).
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

impl Error {
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io { op, path: path.into(), source }
    }

    pub fn sqlite(path: impl Into<PathBuf>, source: rusqlite::Error) -> Error {
        if source.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
            // SQLite's "database or disk is full" names neither the cause nor the cure.
            return Error::io(
                "write",
                path,
                io::Error::new(
                    io::ErrorKind::StorageFull,
                    "the disk is full (SQLite: database or disk is full); nothing was written: free space on its filesystem and try again",
                ),
            );
        }
        Error::Sqlite { path: path.into(), source }
    }

    /// A PostgreSQL failure on `target` (already redacted): the server unreachable or
    /// gone is "try again later" (75), refused credentials 77, anything else 74.
    pub fn postgres(target: &str, e: postgres::Error) -> Error {
        Error::postgres_in(target, "", e)
    }

    /// [`Error::postgres`], saying what was being done (`what`, may be empty).
    pub fn postgres_in(target: &str, what: &str, e: postgres::Error) -> Error {
        use postgres::error::SqlState;
        let code = match e.code() {
            Some(c) if *c == SqlState::INVALID_PASSWORD || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
                exit::PERMISSION
            }
            Some(c) if *c == SqlState::INSUFFICIENT_PRIVILEGE => exit::PERMISSION,
            Some(c) if *c == SqlState::INVALID_CATALOG_NAME => exit::NOT_FOUND,
            Some(c) if *c == SqlState::ADMIN_SHUTDOWN || *c == SqlState::CANNOT_CONNECT_NOW => exit::IN_USE,
            Some(_) => exit::IO,
            // No SQLSTATE: the connection failed or broke (refused, timed out, reset).
            None => exit::IN_USE,
        };
        let said = postgres_message(&e);
        let message = if what.is_empty() { said } else { format!("{what}: {said}") };
        Error::Postgres { target: target.to_owned(), message, code }
    }

    pub fn data(path: impl Into<PathBuf>, message: impl Into<String>) -> Error {
        Error::Data { path: path.into(), message: message.into() }
    }

    /// The exit code `main` uses for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => exit::USAGE,
            Error::Config { .. } => exit::CONFIG,
            Error::Data { .. } => exit::DATA,
            Error::UnsafePath { .. } => exit::UNSAFE_PATH,
            Error::LockUnsupported { .. } => exit::LOCK_UNSUPPORTED,
            Error::InUse { .. } | Error::Busy(_) => exit::IN_USE,
            Error::NotFound(_) => exit::NOT_FOUND,
            Error::WrongState(_) => exit::WRONG_STATE,
            Error::Fenced(_) => exit::FENCED,
            Error::Io { source, .. } => io_exit_code(source),
            Error::Sqlite { source, .. } => sqlite_exit_code(source),
            Error::Internal(_) => exit::INTERNAL,
            Error::Postgres { code, .. } => *code,
            Error::StdoutClosed => exit::OK,
        }
    }

    /// The error as `--json` reports it on stderr: one compact line
    /// `{"error": message, "code": exit code, "kind": name}` (README "The JSON contract").
    pub fn to_json(&self) -> serde_json::Value {
        let code = self.exit_code();
        serde_json::json!({"error": self.to_string(), "code": code, "kind": exit::kind(code)})
    }
}

fn io_exit_code(e: &io::Error) -> i32 {
    match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => exit::PERMISSION,
        _ => exit::IO,
    }
}

fn sqlite_exit_code(e: &rusqlite::Error) -> i32 {
    use rusqlite::ErrorCode as C;
    match e.sqlite_error_code() {
        Some(C::NotADatabase) | Some(C::DatabaseCorrupt) => exit::DATA,
        Some(C::PermissionDenied) | Some(C::ReadOnly) | Some(C::CannotOpen) => exit::PERMISSION,
        Some(C::DatabaseBusy) | Some(C::DatabaseLocked) => exit::IN_USE,
        _ => exit::IO,
    }
}
