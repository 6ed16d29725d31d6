//! Taking a database for writing, shared by `run` and `migrate`: the single-instance lock
//! ([`acquire_lock`], which waits out a starting holder and a `homerd migrate`), then
//! [`open_and_lead`]: the database validated read-only, the leader row won (the epoch
//! bumped), pending migrations applied under that epoch.
//!
//! Order matters and is the protocol (README.md "Guarantees"; ARCHITECTURE.md): flock →
//! database validated read-only → leader row accepts us → migrations. The caller writes
//! its lock diagnostics ([`diagnostics`]) as soon as the leader row has accepted it.

use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::clock::format_rfc3339;
use crate::cmd::context::Context;
use crate::error::{Error, Result};
use crate::identity::{self, Liveness, ProcessIdentity};
use crate::lock::{self, Acquire, Diagnostics, HeldLock, Holder};
use crate::sqlite::leader::{self, Candidate, Outcome};
use crate::sqlite::schema::{self, DbState, MIGRATIONS};
use crate::{events, mutant, sqlite};

/// The roles a lock holder can have (written into the diagnostics and the leader row).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Daemon,
    Migrate,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Daemon => "daemon",
            Role::Migrate => "migrate",
        }
    }
}

/// How long a losing start waits silently for a holder that has not written its
/// diagnostics yet before announcing `lock.waiting`.
const DIAGNOSTICS_WAIT: Duration = Duration::from_secs(2);
/// Poll period while waiting for a lock holder (a `homerd migrate`, or diagnostics).
const LOCK_POLL: Duration = Duration::from_millis(25);

/// Takes the lock for `role`. `Ok(None)`: another daemon holds it (already reported).
pub fn acquire_lock(ctx: &Context, role: Role) -> Result<Option<HeldLock>> {
    let path = &ctx.paths.lock_file;
    // A -wal without its database is refused before anything is created, the lock file
    // and the home included (checked again, under the lock, by `schema::inspect`).
    if !mutant::active(mutant::ADOPT_STRAY_WAL) && std::fs::symlink_metadata(&ctx.paths.database).is_err() {
        schema::refuse_stray_side_files(&ctx.paths.database)?;
    }
    if path.parent().is_some_and(|dir| !dir.exists()) {
        // About to create the lock's folder: if a live daemon already holds the database
        // through another lock path, this start will be refused anyway — refuse now,
        // before creating anything. (The authoritative check is still the leader row.)
        if let Some((pid, lock_path)) = peek_active_holder(ctx) {
            return Err(Error::InUse { pid, lock_path });
        }
    }
    let started = Instant::now();
    let mut announced_wait = false;
    loop {
        let holder = match lock::acquire(path)? {
            Acquire::Held(held) => return Ok(Some(held)),
            Acquire::Busy(holder) => holder,
        };
        let pid = holder.pid.map(|p| p.to_string()).unwrap_or_else(|| String::from("unknown"));
        let pid_field = holder.pid.map(serde_json::Value::from).unwrap_or(serde_json::Value::Null);
        if !diagnostics_describe_holder(&holder) {
            // The holder is between its flock and its leader check (a daemon or a
            // `homerd migrate` starting): its role is unknown, and guessing "daemon" would
            // exit 0 and lose a supervised daemon behind a long migration. Wait, bounded;
            // a holder that never describes itself is reported, not assumed.
            if started.elapsed() > ctx.config.migrate_wait {
                return Err(Error::Busy(format!(
                    "PID {pid} has held {} for {} without writing its diagnostics; is it stuck?",
                    path.display(),
                    crate::duration::format_duration(ctx.config.migrate_wait)
                )));
            }
            if !announced_wait && started.elapsed() >= DIAGNOSTICS_WAIT {
                events::info("lock.waiting", "Waiting for the lock holder to finish starting")
                    .field("holder_pid", pid_field)
                    .field("path", path.display().to_string())
                    .emit();
                announced_wait = true;
            }
            std::thread::sleep(LOCK_POLL);
            continue;
        }
        let holder_role = holder.diagnostics.role();
        if holder_role == Some(Role::Migrate.as_str()) {
            // A supervisor must not lose the daemon to a migration: wait for it, bounded.
            if !announced_wait {
                events::info("lock.waiting", "Waiting for homerd migrate to finish")
                    .field("holder_pid", pid_field.clone())
                    .field("path", path.display().to_string())
                    .emit();
                announced_wait = true;
            }
            if started.elapsed() > ctx.config.migrate_wait {
                return Err(Error::Busy(format!(
                    "homerd migrate (PID {pid}) still holds {} after migrate_wait; try again when it is done",
                    path.display()
                )));
            }
            std::thread::sleep(LOCK_POLL);
            continue;
        }
        if role == Role::Migrate {
            return Err(Error::Busy(format!(
                "a homerd daemon (PID {pid}) holds {}; stop it first (the daemon applies migrations itself when it starts)",
                path.display()
            )));
        }
        events::warn("lock.busy", "Another Homer instance is running. Exiting cleanly.")
            .field("holder_pid", pid_field)
            .field("path", path.display().to_string())
            .emit();
        return Ok(None);
    }
}

/// A read-only look at the leader row: the live, fresh holder if any (with its lock path).
fn peek_active_holder(ctx: &Context) -> Option<(u32, String)> {
    let db = &ctx.paths.database;
    // Not beside a foreign -wal (the start refuses it once it holds the lock).
    crate::cmd::context::refuse_foreign_wal(ctx).ok()?;
    if !schema::inspect(db, ctx.config.busy_timeout).ok()?.has_leader() {
        return None;
    }
    let conn = sqlite::open_reader(db, ctx.config.busy_timeout).ok()?;
    let row = sqlite::read::leader_row(&conn).ok()??;
    match row.holder_state(&ctx.clock, ctx.config.stale_threshold) {
        leader::HolderState::Active { pid, .. } => Some((pid, row.lock_path.unwrap_or_default())),
        _ => None,
    }
}

/// Whether the file's diagnostics were written by the process holding the lock now
/// (and not left over from an earlier holder).
fn diagnostics_describe_holder(holder: &Holder) -> bool {
    let d = &holder.diagnostics;
    let Some(dpid) = d.pid() else { return false };
    if let Some(kernel_pid) = holder.pid.filter(|_| cfg!(target_os = "linux")) {
        return kernel_pid == dpid;
    }
    let id = ProcessIdentity {
        pid: dpid,
        host: d.get("host").unwrap_or_default().to_owned(),
        boot_id: d.get("boot_id").unwrap_or_default().to_owned(),
        start_time: d.get("start_time").and_then(|s| s.parse().ok()).unwrap_or(0),
    };
    identity::liveness(&id) == Liveness::Alive
}

/// The diagnostics a holder writes into its lock file.
/// `database_id` is the database's identity ([`schema::database_id_of`]), read through
/// SQLite: never open the database file directly while SQLite has it open — closing any
/// descriptor of a file drops every POSIX lock the process holds on it, and another
/// process's connection could then believe it is the last one and delete the `-wal`.
pub fn diagnostics(ctx: &Context, role: Role, epoch: i64, database_id: Option<u32>) -> Diagnostics {
    let me = identity::current().unwrap_or_else(|_| ProcessIdentity {
        pid: std::process::id(),
        host: identity::hostname(),
        boot_id: identity::pid_space().to_owned(),
        start_time: 0,
    });
    let mut d = Diagnostics::default();
    let mut put = |k: &str, v: String| {
        d.0.insert(k.to_owned(), v);
    };
    put("pid", me.pid.to_string());
    put("ppid", std::os::unix::process::parent_id().to_string());
    put("host", me.host);
    put("boot_id", me.boot_id);
    put("start_time", me.start_time.to_string());
    put("started_at", format_rfc3339(ctx.clock.wall_ms()));
    put("exe", std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_default());
    put("args", serde_json::to_string(&std::env::args().collect::<Vec<_>>()).unwrap_or_default());
    put("version", env!("CARGO_PKG_VERSION").to_owned());
    put("role", role.as_str().to_owned());
    put("epoch", epoch.to_string());
    put("database", ctx.paths.database.display().to_string());
    if let Some(id) = database_id {
        put("database_id", id.to_string());
    }
    d
}

/// An open, validated, migrated database whose epoch we hold.
pub struct Leadership {
    pub conn: Connection,
    pub epoch: i64,
    pub applied: Vec<&'static str>,
    /// (dev, ino) of the database file we opened: checked while running.
    pub db_ids: (u64, u64),
    /// The identity stamped in the database's header (see [`schema::database_id`]).
    pub database_id: Option<u32>,
    /// The monotonic time taken just before the epoch bump wrote the leader row's
    /// `seen_at`: what the leases' deadlines count from until the first refresh (another
    /// start judges the row stale from that `seen_at`, however long recovery took since).
    pub led_at: crate::job::MonoMs,
}

/// A file's (dev, ino): `run` checks the database it opened still is the file at its path.
pub(crate) fn file_ids(path: &std::path::Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map(|m| (m.dev(), m.ino()))
}

/// Called once the leader row accepted a start: (the held lock, the epoch, the database's
/// identity). The caller writes its lock diagnostics there.
pub type OnAccepted<'a> = dyn FnMut(&mut HeldLock, i64, Option<u32>) -> Result<()> + 'a;

/// Opens (creating if missing) and validates the database, wins the leader row, applies
/// pending migrations. Refusal is `Error::InUse`. `on_accepted(epoch)` runs as soon as
/// the leader row has accepted us (before pending migrations): the caller writes its
/// lock diagnostics there.
pub fn open_and_lead(
    ctx: &Context,
    lock: &mut HeldLock,
    role: Role,
    on_accepted: &mut OnAccepted<'_>,
) -> Result<Leadership> {
    let db = &ctx.paths.database;
    let cfg = &ctx.config;
    let home = db.parent().expect("database has a parent");
    if !home.exists() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(home)
            .map_err(|e| Error::io("create directory", home, e))?;
    }
    lock::check_filesystem(home, db)?;
    // What the previous holder recorded (we hold the lock; nothing has rewritten it yet).
    let previous = lock::read_diagnostics(lock.path()).unwrap_or_default();
    schema::check_wal_owner(db, &previous)?;
    if mutant::active(mutant::WRITES_BEFORE_VALIDATION) && db.exists() {
        let _ = sqlite::open_writer(db, cfg.busy_timeout, cfg.durability);
    }
    // The validating connection stays open until the writer is: see `inspect_holding`.
    let (mut state, validated) = schema::inspect_holding(db, cfg.busy_timeout)?;
    if let (Some(conn), false) = (&validated, mutant::active(mutant::NO_DATA_CHECK)) {
        // The schema is fine; now every page, before anything is written.
        let started = Instant::now();
        schema::check_data_on(conn, db)?;
        events::debug("database.checked", "Database pages checked")
            .field("ms", started.elapsed().as_millis() as u64)
            .emit();
    }
    let mut applied = Vec::new();
    if state == DbState::Missing {
        if schema::create(db, &ctx.clock)? {
            applied = MIGRATIONS.iter().map(|(n, _)| *n).collect();
        }
        state = schema::inspect(db, cfg.busy_timeout)?;
    }
    let mut conn = sqlite::open_writer(db, cfg.busy_timeout, cfg.durability)?;
    drop(validated);
    let database_id = schema::database_id_of(&conn);
    // Where the effective clock stood when the last holder stopped (clock.rs): never
    // earlier than that, and a forward step taken meanwhile is noticed.
    sqlite::read::anchor_clock(&conn, &ctx.clock);
    let (dev, ino) = lock.dev_ino();
    let candidate = Candidate {
        role: role.as_str(),
        identity: identity::current().map_err(|e| {
            Error::Internal(format!(
                "cannot read this process's start time ({e}); homerd needs /proc (Linux) to identify itself"
            ))
        })?,
        lock_path: lock.path().display().to_string(),
        lock_dev: dev,
        lock_ino: ino,
        stale: cfg.stale_threshold,
    };
    let mut led_at = crate::clock::mono();
    let epoch = if state.has_leader() {
        let epoch = lead(&mut conn, &candidate, ctx)?;
        on_accepted(lock, epoch, database_id)?;
        applied.extend(schema::apply_pending(&mut conn, db, state.applied(), Some(epoch), &ctx.clock)?);
        epoch
    } else {
        // No leader row yet (a database from before 009): nothing that follows the
        // leader protocol can be using it. Migrate up to the leader row, lead, then apply
        // anything after it under the epoch like any other start.
        let upto = schema::leader_migration_index() + 1;
        applied.extend(schema::apply_upto(&mut conn, db, state.applied(), upto, None, &ctx.clock)?);
        led_at = crate::clock::mono();
        let epoch = lead(&mut conn, &candidate, ctx)?;
        on_accepted(lock, epoch, database_id)?;
        applied.extend(schema::apply_pending(&mut conn, db, upto, Some(epoch), &ctx.clock)?);
        epoch
    };
    let db_ids = file_ids(db).map_err(|e| Error::io("stat", db, e))?;
    Ok(Leadership { conn, epoch, applied, db_ids, database_id, led_at })
}

fn lead(conn: &mut Connection, candidate: &Candidate, ctx: &Context) -> Result<i64> {
    match leader::become_leader(conn, candidate, ctx.config.stale_threshold, &ctx.clock)? {
        Outcome::Accepted { epoch } => Ok(epoch),
        Outcome::Refused { pid, lock_path, .. } => Err(Error::InUse { pid, lock_path }),
    }
}
