//! `homerd run`: the daemon's lifecycle.
//!
//! Order matters and is the protocol (README.md "Guarantees"; ARCHITECTURE.md):
//! flock → database validated read-only →
//! leader row accepts us (epoch bumped) → migrations → diagnostics written through the
//! locked fd → log file opened → `daemon.active`. Then, until SIGTERM/SIGINT: refresh the
//! leader row every `heartbeat_interval` (epoch-guarded: that is how an idle daemon
//! learns it was fenced) and re-check the lock path every `lock_check_interval`,
//! re-acquiring in place if an admin removed or replaced the file. Shutdown clears the
//! leader row, closes the database and releases the lock last.

use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::clock::{format_rfc3339, Clock};
use crate::config::Config;
use crate::engine::coordinator::Coordinator;
use crate::error::{exit, Error, Result};
use crate::identity::{self, Liveness, ProcessIdentity};
use crate::job::Epoch;
use crate::lock::{self, Acquire, Diagnostics, HeldLock, Holder, PathState};
use crate::paths::Paths;
use crate::sqlite::jobstore::SqliteStore;
use crate::sqlite::leader::{self, Candidate, Outcome};
use crate::sqlite::schema::{self, DbState, MIGRATIONS};
use crate::sqlite::writer::{SyncMode, WriteError, Writer};
use crate::{events, failpoint, mutant, runner, sqlite};
use std::sync::Arc;

/// Everything a command needs: where things are, the validated configuration, the clock.
#[derive(Clone, Debug)]
pub struct Context {
    pub paths: Paths,
    pub config: Config,
    pub clock: Clock,
}

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
                    crate::config::format_duration(ctx.config.migrate_wait)
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
    // SAFETY: getppid has no preconditions.
    put("ppid", unsafe { libc::getppid() }.to_string());
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
}

fn file_ids(path: &std::path::Path) -> std::io::Result<(u64, u64)> {
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
    let mut state = schema::inspect(db, cfg.busy_timeout)?;
    if state != DbState::Missing && !mutant::active(mutant::NO_DATA_CHECK) {
        // The schema is fine; now every page, before anything is written.
        let started = Instant::now();
        schema::check_data(db, cfg.busy_timeout)?;
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
        let epoch = lead(&mut conn, &candidate, ctx)?;
        on_accepted(lock, epoch, database_id)?;
        applied.extend(schema::apply_pending(&mut conn, db, upto, Some(epoch), &ctx.clock)?);
        epoch
    };
    let db_ids = file_ids(db).map_err(|e| Error::io("stat", db, e))?;
    Ok(Leadership { conn, epoch, applied, db_ids, database_id })
}

fn lead(conn: &mut Connection, candidate: &Candidate, ctx: &Context) -> Result<i64> {
    match leader::become_leader(conn, candidate, ctx.config.stale_threshold, &ctx.clock)? {
        Outcome::Accepted { epoch } => Ok(epoch),
        Outcome::Refused { pid, lock_path, .. } => Err(Error::InUse { pid, lock_path }),
    }
}

/// `homerd run`.
pub fn run(ctx: Context) -> Result<i32> {
    failpoint::announce();
    crate::powerloss::announce();
    let Some(mut lock) = acquire_lock(&ctx, Role::Daemon)? else { return Ok(exit::OK) };
    // From here on a SIGTERM/SIGINT must be graceful, even during startup: register the
    // handlers now; the supervise loop sees a signal that arrived meanwhile at once.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("tokio runtime: {e}")))?;
    let signals = runtime.block_on(async { Signals::register() })?;
    if mutant::active(mutant::DIAGNOSTICS_BEFORE_LEADER) {
        lock.write_diagnostics(&diagnostics(&ctx, Role::Daemon, 0, None))?;
    }
    let Leadership { conn, epoch, applied, db_ids, database_id } =
        open_and_lead(&ctx, &mut lock, Role::Daemon, &mut |lock, epoch, id| {
            lock.write_diagnostics(&diagnostics(&ctx, Role::Daemon, epoch, id))
        })?;
    events::open_log_file(&ctx.paths.log_file).map_err(|e| Error::io("open log file", &ctx.paths.log_file, e))?;
    let (dev, ino) = lock.dev_ino();
    events::info("lock.acquired", "Daemon lock acquired")
        .field("path", lock.path().display().to_string())
        .field("epoch", epoch)
        .field("dev", dev)
        .field("ino", ino)
        .emit();
    if !applied.is_empty() {
        events::info("migrations.applied", "Migrations applied")
            .field("count", applied.len())
            .field("migrations", applied.join(","))
            .emit();
    }
    // Room for `concurrency` jobs' descriptors (rlimit.rs); jobs get the old limit back.
    match crate::rlimit::raise() {
        Ok(r) if r.after > r.before => events::info("daemon.nofile", "Raised the open-file limit")
            .field("before", r.before)
            .field("soft", r.after)
            .field("hard", r.hard)
            .emit(),
        Ok(r) => events::debug("daemon.nofile", "Open-file limit").field("soft", r.after).field("hard", r.hard).emit(),
        Err(e) => {
            events::warn("daemon.nofile", "Could not raise the open-file limit").field("error", e.to_string()).emit()
        }
    }
    let (writer, thread) = Writer::start(conn, epoch);
    let engine_cfg = runner::engine_config(&ctx.config, runner::worker_name());
    let coord = Arc::new(Coordinator::new(engine_cfg, Epoch(epoch), SqliteStore::new(writer.clone())));
    // A forward step of the wall clock while no daemon ran: move the waiting jobs first.
    runner::absorb_clock_steps(&ctx.clock, &writer, Epoch(epoch));
    // Recovery runs before anything is claimed: every orphan requeued (or failed) and its
    // recorded process group gone. Then the engine's reader; only then is the daemon active.
    let kill_limit = ctx.config.kill_grace + Duration::from_secs(10);
    let ready = runner::recover(&coord, &ctx.clock, kill_limit)
        .map_err(|e| {
            if sqlite::corruption().is_some() {
                corrupt_error(&ctx.paths.database)
            } else if e.contains("fenced") {
                Error::Fenced(e)
            } else {
                Error::Busy(e)
            }
        })
        .and_then(|()| sqlite::open_reader(&ctx.paths.database, ctx.config.busy_timeout));
    let reader = match ready {
        Ok(reader) => reader,
        Err(e) => {
            if let Error::Fenced(reason) = &e {
                events::error("daemon.fenced", "Fenced: another homerd holds this database's epoch; stopping")
                    .field("epoch", epoch)
                    .field("reason", reason.clone())
                    .emit();
            }
            drop(coord);
            drop(runtime.block_on(writer.stop()));
            thread.join();
            release_lock(lock);
            return Err(e);
        }
    };
    events::info("daemon.active", "Daemon active")
        .field("epoch", epoch)
        .field("database", ctx.paths.database.display().to_string())
        .field("version", env!("CARGO_PKG_VERSION"))
        .emit();
    coord.note_leader_refresh(crate::clock::mono());
    let engine =
        runner::start(coord.clone(), writer.clone(), ctx.config.clone(), ctx.clock.clone(), ctx.paths.clone(), reader);
    let result = runtime.block_on(supervise(&ctx, lock, writer, epoch, db_ids, database_id, signals, engine, coord));
    thread.join();
    result
}

enum Stop {
    /// Drained (or the drain ran out of time) after a signal.
    Drained,
    Fenced(String),
    /// The database is corrupt: the engine stopped every run and recorded nothing.
    Corrupt,
}

/// SIGTERM and SIGINT, registered once the lock is held.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn register() -> Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        let sig = |kind| signal(kind).map_err(|e| Error::Internal(format!("signal handler: {e}")));
        Ok(Signals { term: sig(SignalKind::terminate())?, int: sig(SignalKind::interrupt())? })
    }
}

#[allow(clippy::too_many_arguments)]
async fn supervise(
    ctx: &Context,
    lock: HeldLock,
    writer: Writer,
    epoch: i64,
    db_ids: (u64, u64),
    database_id: Option<u32>,
    signals: Signals,
    engine: runner::EngineThread,
    coord: Arc<runner::EngineCoordinator>,
) -> Result<i32> {
    let Signals { term: mut sigterm, int: mut sigint } = signals;
    let runner::EngineThread { control, done: mut engine_done } = engine;
    // The leader row was just written and the lock just verified: the first refresh and
    // the first re-check are one period away, not immediate (tokio's `interval` default).
    let every = |period: Duration| {
        let mut i = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    };
    let mut heartbeat = every(ctx.config.heartbeat_interval);
    let mut lock_check = every(ctx.config.lock_check_interval);
    let mut watch = LockWatch { held: lock, lost_since: None, failures: 0, database_id };
    let mut last_refresh = Instant::now();
    let mut pending_heartbeat_failures: i64 = 0;
    let mut standing_down = false;
    let mut signals_seen = 0;
    // A completed oneshot must not be awaited again.
    let mut engine_finished = false;
    // Every wait is bounded: once draining, the engine gets its grace plus kill_grace
    // plus slack, then the daemon stops regardless (the next start recovers the rest).
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    let cfg = &ctx.config;
    let stop = loop {
        let deadline = drain_deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = sigterm.recv() => on_signal(ctx, &control, "SIGTERM", &mut signals_seen, &mut drain_deadline),
            _ = sigint.recv() => on_signal(ctx, &control, "SIGINT", &mut signals_seen, &mut drain_deadline),
            exit = &mut engine_done => {
                engine_finished = true;
                match exit {
                    Ok(runner::EngineExit::Drained) => break Stop::Drained,
                    Ok(runner::EngineExit::Corrupt) => break Stop::Corrupt,
                    Ok(runner::EngineExit::Fenced) | Err(_) => break Stop::Fenced(String::from("the engine stopped: fenced")),
                }
            }
            _ = tokio::time::sleep_until(deadline), if drain_deadline.is_some() => {
                events::error("shutdown.timeout", "Jobs did not stop within the drain bound; stopping anyway")
                    .field("held", 0)
                    .emit();
                break Stop::Drained;
            }
            _ = heartbeat.tick() => {
                let clock = ctx.clock.clone();
                // Stamped before the call: a refresh counts from when it was asked for.
                let asked_at = crate::clock::mono();
                // Counters since the last successful write ride along (epoch-guarded).
                let (hb_failures, lock_failures) = (pending_heartbeat_failures, watch.failures);
                let refresh = move |tx: &rusqlite::Transaction<'_>| {
                    let ours = leader::heartbeat(tx, epoch, &clock)?;
                    if ours {
                        sqlite::ops::bump_metric(tx, "heartbeat_failures", hb_failures)?;
                        sqlite::ops::bump_metric(tx, "lock_reacquire_failures", lock_failures)?;
                    }
                    Ok(ours)
                };
                match writer.call(SyncMode::Normal, refresh).await {
                    Ok(true) => {
                        pending_heartbeat_failures = 0;
                        watch.failures -= lock_failures;
                        last_refresh = Instant::now();
                        coord.note_leader_refresh(asked_at);
                        events::debug("daemon.heartbeat", "Leader row refreshed").field("epoch", epoch).emit();
                        if standing_down {
                            standing_down = false;
                            events::info("daemon.resumed", "Leader row refreshed again: resuming").emit();
                        }
                    }
                    Ok(false) | Err(WriteError::Fenced) => break Stop::Fenced(String::from("the leader row names a newer epoch")),
                    Err(WriteError::Closed) => break Stop::Fenced(String::from("the database writer stopped")),
                    Err(e) => {
                        pending_heartbeat_failures += 1;
                        events::warn("daemon.heartbeat_failed", "Could not refresh the leader row")
                            .field("error", e.to_string())
                            .emit();
                        // The coordinator's deadlines are anchored to the last refresh, so
                        // every run is already being stopped (by the watchdog, on its own
                        // timer) and nothing is claimed: report it. Once the row can be
                        // refreshed again, the epoch tells whether we still lead.
                        if !standing_down && coord.standing_down(crate::clock::mono()) {
                            standing_down = true;
                            events::error("daemon.standing_down", "Cannot refresh the leader row: stopping all jobs, claiming nothing")
                                .field("unrefreshed_ms", last_refresh.elapsed().as_millis() as u64)
                                .emit();
                        }
                    }
                }
            }
            _ = lock_check.tick() => {
                if let Err(reason) = watch.check(ctx, &writer, epoch).await {
                    break Stop::Fenced(reason);
                }
                // An admin's `mv`/restore over the database, or `rm -rf` of the home: our
                // connection now serves an inode nobody else will ever read.
                if file_ids(&ctx.paths.database).ok() != Some(db_ids) {
                    break Stop::Fenced(format!(
                        "the database {} was removed or replaced while running",
                        ctx.paths.database.display()
                    ));
                }
            }
        }
    };
    let LockWatch { held: lock, .. } = watch;
    match stop {
        Stop::Drained => {
            failpoint::hit("shutdown.before_release").map_err(|e| Error::io("shutdown", &ctx.paths.database, e))?;
            let clock = ctx.clock.clone();
            match writer.call(SyncMode::Full, move |tx| leader::release(tx, epoch, &clock)).await {
                Ok(_) | Err(WriteError::Fenced) => {}
                Err(e) => events::warn("daemon.release_failed", "Could not clear the leader row")
                    .field("error", e.to_string())
                    .emit(),
            }
            drop(writer.stop().await);
            release_lock(lock);
            Ok(exit::OK)
        }
        Stop::Corrupt => {
            // Nothing more is written (not even the leader row: the next start takes over
            // a dead holder at once). The runs were stopped; their rows stay `running`, so
            // the next start on a repaired or restored database recovers them.
            drop(writer.stop().await);
            release_lock(lock);
            Err(corrupt_error(&ctx.paths.database))
        }
        Stop::Fenced(reason) => {
            events::error("daemon.fenced", "Fenced: another homerd holds this database's epoch; stopping")
                .field("epoch", epoch)
                .field("reason", reason.clone())
                .emit();
            // Stop every job now and wait (bounded) for the engine to see them gone.
            let _ = control.send(runner::Control::Fence);
            let bound = cfg.kill_grace + Duration::from_secs(10);
            if !engine_finished && tokio::time::timeout(bound, &mut engine_done).await.is_err() {
                events::error("shutdown.timeout", "Jobs did not stop after fencing; exiting anyway").emit();
            }
            drop(writer.stop().await);
            release_lock(lock);
            Err(Error::Fenced(reason))
        }
    }
}

/// The error a daemon stops with after meeting corruption (exit 65).
fn corrupt_error(db: &std::path::Path) -> Error {
    Error::data(
        db,
        format!(
            "is corrupt ({}); homerd stopped every job without recording anything and exits. Check it with `homerd doctor`, then restore a backup or move it aside; the next start recovers the stopped jobs",
            sqlite::corruption().unwrap_or("database disk image is malformed")
        ),
    )
}

fn on_signal(
    ctx: &Context,
    control: &std::sync::mpsc::Sender<runner::Control>,
    name: &'static str,
    seen: &mut u32,
    drain_deadline: &mut Option<tokio::time::Instant>,
) {
    *seen += 1;
    let cfg = &ctx.config;
    // The second signal cuts the grace short: stop and release what runs, now.
    let grace = if *seen == 1 { cfg.shutdown_grace } else { Duration::ZERO };
    if *seen == 1 {
        events::info("shutdown.begin", "Shutting down")
            .field("signal", name)
            .field("grace_ms", grace.as_millis() as u64)
            .emit();
    } else {
        events::warn("shutdown.hurry", "Second signal: stopping running jobs now").field("signal", name).emit();
    }
    let _ = control.send(runner::Control::Shutdown { grace_ms: grace.as_millis() as i64 });
    let bound = tokio::time::Instant::now() + cfg.drain_bound(grace);
    *drain_deadline = Some(drain_deadline.map_or(bound, |d| d.min(bound)));
}

/// The lock is released last: after the database is closed and the final log line.
fn release_lock(lock: HeldLock) {
    let (dev, ino) = lock.dev_ino();
    events::info("lock.released", "Daemon lock released")
        .field("path", lock.path().display().to_string())
        .field("dev", dev)
        .field("ino", ino)
        .emit();
    events::close_log_file();
    drop(lock);
}

/// The periodic path-vs-fd re-check and in-place re-acquisition.
struct LockWatch {
    held: HeldLock,
    lost_since: Option<Instant>,
    /// Failed re-acquisition attempts not yet counted in the database.
    failures: i64,
    database_id: Option<u32>,
}

impl LockWatch {
    /// `Err(reason)`: fenced.
    async fn check(&mut self, ctx: &Context, writer: &Writer, epoch: i64) -> std::result::Result<(), String> {
        let state = self.held.check_path().unwrap_or(PathState::Missing);
        if state == PathState::Same {
            self.lost_since = None;
            return Ok(());
        }
        if self.lost_since.is_none() {
            self.lost_since = Some(Instant::now());
            events::warn("lock.lost", "Lock file removed or replaced; re-acquiring in place")
                .field("path", self.held.path().display().to_string())
                .field("state", format!("{state:?}").to_lowercase())
                .emit();
        }
        match self.reacquire(ctx, writer, epoch).await {
            Ok(true) => {
                self.lost_since = None;
                return Ok(());
            }
            Ok(false) => self.failures += 1,
            Err(reason) => return Err(reason),
        }
        let lost_for = self.lost_since.map(|t| t.elapsed()).unwrap_or_default();
        if lost_for > ctx.config.stale_threshold {
            return Err(format!(
                "could not re-acquire {} for {} (stale_threshold)",
                self.held.path().display(),
                crate::config::format_duration(lost_for)
            ));
        }
        Ok(())
    }

    /// `Ok(true)`: re-acquired; `Ok(false)`: not yet (someone briefly holds the new file,
    /// or an I/O error); `Err`: the epoch moved.
    async fn reacquire(&mut self, ctx: &Context, writer: &Writer, epoch: i64) -> std::result::Result<bool, String> {
        let path = self.held.path().to_owned();
        let mut new = match lock::acquire(&path) {
            Ok(Acquire::Held(new)) => new,
            Ok(Acquire::Busy(holder)) => {
                events::debug("lock.reacquire_busy", "New lock file briefly held by another start")
                    .field("holder_pid", holder.pid.map(|p| p as i64).unwrap_or(-1))
                    .emit();
                return Ok(false);
            }
            Err(e) => {
                events::warn("lock.reacquire_failed", "Could not re-acquire the lock file")
                    .field("error", e.to_string())
                    .emit();
                return Ok(false);
            }
        };
        let (dev, ino) = new.dev_ino();
        match writer.call(SyncMode::Full, move |tx| leader::update_lock_file(tx, epoch, dev, ino)).await {
            Ok(true) => {}
            Ok(false) | Err(WriteError::Fenced) => {
                return Err(String::from("the epoch moved while the lock file was gone"))
            }
            Err(e) => {
                events::warn("lock.reacquire_failed", "Could not record the new lock file")
                    .field("error", e.to_string())
                    .emit();
                return Ok(false);
            }
        }
        if let Err(e) = new.write_diagnostics(&diagnostics(ctx, Role::Daemon, epoch, self.database_id)) {
            events::warn("lock.reacquire_failed", "Could not write lock diagnostics")
                .field("error", e.to_string())
                .emit();
        }
        self.held = new;
        events::info("lock.reacquired", "Lock file re-acquired in place")
            .field("path", path.display().to_string())
            .field("epoch", epoch)
            .field("dev", dev)
            .field("ino", ino)
            .emit();
        Ok(true)
    }
}
