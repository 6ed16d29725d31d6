//! `homerd run`: the daemon's lifecycle.
//!
//! Order matters and is the protocol (README.md "Guarantees"; ARCHITECTURE.md):
//! flock → database validated read-only →
//! leader row accepts us (epoch bumped) → migrations (all three in `lead.rs`) →
//! diagnostics written through the locked fd → log file opened → `daemon.active`. Then,
//! until SIGTERM/SIGINT: refresh the leader row every `heartbeat_interval`
//! (epoch-guarded: that is how an idle daemon learns it was fenced) and re-check the lock
//! path every `lock_check_interval`, re-acquiring in place if an admin removed or
//! replaced the file. Shutdown clears the leader row, closes the database and releases
//! the lock last.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::{AnyStore, EngineIo};
use crate::cmd::context::Context;
use crate::cmd::lead::{acquire_lock, diagnostics, file_ids, open_and_lead, Leadership, Role};
use crate::engine::coordinator::Coordinator;
use crate::error::{exit, Error, Result};
use crate::job::Epoch;
use crate::lock::{self, Acquire, HeldLock, PathState};
use crate::sqlite::jobstore::SqliteStore;
use crate::sqlite::leader;
use crate::sqlite::writer::{SyncMode, WriteError, Writer};
use crate::{events, failpoint, mutant, runner, sqlite};

/// `homerd run`.
pub fn run(ctx: Context) -> Result<i32> {
    if let Some(url) = ctx.config.database.clone() {
        return crate::cmd::run_postgres::run(ctx, &url);
    }
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
    let Leadership { conn, epoch, applied, db_ids, database_id, led_at } =
        open_and_lead(&ctx, &mut lock, Role::Daemon, &mut |lock, epoch, id| {
            lock.write_diagnostics(&diagnostics(&ctx, Role::Daemon, epoch, id))
        })?;
    announce_lead(&ctx, &lock, epoch, &applied)?;
    raise_open_files();
    let wake = bind_wake_socket(&ctx);
    let (writer, thread) = Writer::start(conn, epoch);
    let engine_cfg = runner::engine_config(&ctx.config, runner::worker_name());
    let store = AnyStore::Sqlite(SqliteStore::new(writer.clone()));
    let coord = Arc::new(Coordinator::new(engine_cfg, Epoch(epoch), store));
    // A forward step of the wall clock while no daemon ran: move the waiting jobs first.
    crate::backend::absorb_clock_steps(&ctx.clock, Some(&writer), Epoch(epoch));
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
    // Counted from the epoch bump, not from now: recovery may have taken a while (killing
    // orphan groups), and the leader row has not been refreshed since the bump.
    coord.note_leader_refresh(led_at);
    let io = EngineIo::Sqlite { writer: writer.clone(), reader, wake };
    let engine = runner::start(coord.clone(), io, ctx.config.clone(), ctx.clock.clone(), ctx.paths.clone());
    let result = runtime.block_on(supervise(&ctx, lock, writer, epoch, db_ids, database_id, signals, engine, coord));
    thread.join();
    result
}

/// What a start says once it leads, on either backend: the log file opened, then
/// `lock.acquired` (the lock file's path and identity, with the epoch — on PostgreSQL the
/// incarnation) and `migrations.applied` when this start applied any.
pub(super) fn announce_lead(ctx: &Context, lock: &HeldLock, epoch: i64, applied: &[&str]) -> Result<()> {
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
    Ok(())
}

/// The socket commands poke after they change the queue (`wake.rs`), bound while we hold
/// the lock; without it (a path too long for a socket address, a read-only home, another
/// kind of file in its place) the engine notices changes by its poll alone.
fn bind_wake_socket(ctx: &Context) -> Option<crate::wake::WakeSocket> {
    let path = crate::wake::path(&ctx.paths);
    match crate::wake::WakeSocket::bind(&path) {
        Ok(socket) => Some(socket),
        Err(e) => {
            events::warn("wake.unavailable", "Could not bind the wake-up socket; changes are noticed by the poll")
                .field("path", path.display().to_string())
                .field("error", e.to_string())
                .emit();
            None
        }
    }
}

/// Room for `concurrency` jobs' descriptors (rlimit.rs); jobs get the old limit back.
pub(super) fn raise_open_files() {
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
}

pub(super) enum Stop {
    /// Drained (or the drain ran out of time) after a signal.
    Drained,
    Fenced(String),
    /// The database is corrupt: the engine stopped every run and recorded nothing.
    Corrupt,
}

/// SIGTERM and SIGINT, registered once the lock is held.
pub(super) struct Signals {
    pub(super) term: tokio::signal::unix::Signal,
    pub(super) int: tokio::signal::unix::Signal,
}

impl Signals {
    pub(super) fn register() -> Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        let sig = |kind| signal(kind).map_err(|e| Error::Internal(format!("signal handler: {e}")));
        Ok(Signals { term: sig(SignalKind::terminate())?, int: sig(SignalKind::interrupt())? })
    }
}

/// What both backends' supervise loops share: the signals, the engine thread's end, the
/// drain's bound, and the stop after fencing.
pub(super) struct Lifecycle<'a> {
    ctx: &'a Context,
    signals: Signals,
    control: runner::ControlSender,
    engine_done: tokio::sync::oneshot::Receiver<runner::EngineExit>,
    /// A completed oneshot must not be awaited again.
    engine_finished: bool,
    coord: Arc<runner::EngineCoordinator>,
    signals_seen: u32,
    /// Every wait is bounded: once draining, the engine gets its grace plus kill_grace
    /// plus slack, then the daemon stops regardless (the next start recovers the rest).
    drain_deadline: Option<tokio::time::Instant>,
}

impl<'a> Lifecycle<'a> {
    pub(super) fn new(
        ctx: &'a Context,
        signals: Signals,
        engine: runner::EngineThread,
        coord: Arc<runner::EngineCoordinator>,
    ) -> Lifecycle<'a> {
        let runner::EngineThread { control, done } = engine;
        Lifecycle {
            ctx,
            signals,
            control,
            engine_done: done,
            engine_finished: false,
            coord,
            signals_seen: 0,
            drain_deadline: None,
        }
    }

    /// Waits for a signal (handled here: the drain begins or hurries), the engine's end
    /// or the drain's bound; `Some` when the daemon must stop. Cancel-safe: a supervise
    /// loop drops it whenever one of its own timers fires first.
    pub(super) async fn next(&mut self) -> Option<Stop> {
        let deadline = self.drain_deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        // The running count is read when a signal arrives, not when the wait began.
        tokio::select! {
            _ = self.signals.term.recv() => {
                let running = self.coord.held().len();
                on_signal(self.ctx, &self.control, "SIGTERM", running, &mut self.signals_seen, &mut self.drain_deadline);
                None
            }
            _ = self.signals.int.recv() => {
                let running = self.coord.held().len();
                on_signal(self.ctx, &self.control, "SIGINT", running, &mut self.signals_seen, &mut self.drain_deadline);
                None
            }
            exit = &mut self.engine_done, if !self.engine_finished => {
                self.engine_finished = true;
                Some(match exit {
                    Ok(runner::EngineExit::Drained) => Stop::Drained,
                    Ok(runner::EngineExit::Corrupt) => Stop::Corrupt,
                    Ok(runner::EngineExit::Fenced) | Err(_) => Stop::Fenced(String::from("the engine stopped: fenced")),
                })
            }
            _ = tokio::time::sleep_until(deadline), if self.drain_deadline.is_some() => {
                events::error("shutdown.timeout", "Jobs did not stop within the drain bound; stopping anyway")
                    .field("held", 0)
                    .emit();
                Some(Stop::Drained)
            }
        }
    }

    /// Fenced: every job stopped now, and a bounded wait for the engine to see them gone.
    pub(super) async fn stop_fenced(&mut self, epoch: i64, reason: &str, message: &str) {
        events::error("daemon.fenced", message).field("epoch", epoch).field("reason", reason.to_owned()).emit();
        let _ = self.control.send(runner::Control::Fence);
        let bound = self.ctx.config.kill_grace + Duration::from_secs(10);
        if !self.engine_finished && tokio::time::timeout(bound, &mut self.engine_done).await.is_err() {
            events::error("shutdown.timeout", "Jobs did not stop after fencing; exiting anyway").emit();
        }
    }
}

/// The heartbeat's standing: when it last got through, and whether the daemon stands
/// down because it has not for too long. `row` names what is refreshed in messages
/// ("leader row", "worker row").
pub(super) struct Refresh {
    row: &'static str,
    last: Instant,
    standing_down: bool,
}

impl Refresh {
    pub(super) fn new(row: &'static str) -> Refresh {
        Refresh { row, last: Instant::now(), standing_down: false }
    }

    /// How long ago the last refresh got through (before this one is noted).
    pub(super) fn since_last(&self) -> Duration {
        self.last.elapsed()
    }

    /// A refresh asked for at `asked_at` (monotonic) got through.
    pub(super) fn succeeded(&mut self, coord: &runner::EngineCoordinator, asked_at: crate::job::MonoMs, epoch: i64) {
        self.last = Instant::now();
        coord.note_leader_refresh(asked_at);
        events::debug("daemon.heartbeat", format!("{} refreshed", capitalised(self.row))).field("epoch", epoch).emit();
        if self.standing_down {
            self.standing_down = false;
            events::info("daemon.resumed", format!("{} refreshed again: resuming", capitalised(self.row))).emit();
        }
    }

    /// A refresh failed for a reason that may pass (busy, unreachable).
    pub(super) fn failed(&mut self, coord: &runner::EngineCoordinator, error: String) {
        events::warn("daemon.heartbeat_failed", format!("Could not refresh the {}", self.row))
            .field("error", error)
            .emit();
        // The coordinator's deadlines are anchored to the last refresh, so every run is
        // already being stopped (by the watchdog, on its own timer) and nothing is
        // claimed: report it. Once the row can be refreshed again, the epoch (or the
        // worker row's fence) tells whether we still own anything.
        if !self.standing_down && coord.standing_down(crate::clock::mono()) {
            self.standing_down = true;
            events::error(
                "daemon.standing_down",
                format!("Cannot refresh the {}: stopping all jobs, claiming nothing", self.row),
            )
            .field("unrefreshed_ms", self.last.elapsed().as_millis() as u64)
            .emit();
        }
    }
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

/// A periodic timer whose first tick is one period away, not immediate (tokio's
/// `interval` default): the lock was just verified.
pub(super) fn every(period: Duration) -> tokio::time::Interval {
    let mut i = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    i
}

/// The heartbeat's timer: its first tick is at once. The leases count from the epoch bump
/// (or the worker's registration), and startup — migrations after the bump, recovery
/// killing orphan groups — may have taken a good part of the stale threshold since.
pub(super) fn heartbeat_timer(period: Duration) -> tokio::time::Interval {
    let mut i = tokio::time::interval(period);
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    i
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
    let mut life = Lifecycle::new(ctx, signals, engine, coord.clone());
    let mut heartbeat = heartbeat_timer(ctx.config.heartbeat_interval);
    let mut lock_check = every(ctx.config.lock_check_interval);
    let mut watch = LockWatch { held: lock, lost_since: None, failures: 0, database_id };
    let mut refresh_state = Refresh::new("leader row");
    let mut pending_heartbeat_failures: i64 = 0;
    let stop = loop {
        tokio::select! {
            stop = life.next() => if let Some(stop) = stop { break stop },
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
                        refresh_state.succeeded(&coord, asked_at, epoch);
                    }
                    Ok(false) | Err(WriteError::Fenced) => break Stop::Fenced(String::from("the leader row names a newer epoch")),
                    Err(WriteError::Closed) => break Stop::Fenced(String::from("the database writer stopped")),
                    Err(e) => {
                        pending_heartbeat_failures += 1;
                        refresh_state.failed(&coord, e.to_string());
                    }
                }
            }
            _ = lock_check.tick() => {
                if let Err(reason) = watch.check(ctx, Some(&writer), epoch).await {
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
            life.stop_fenced(epoch, &reason, "Fenced: another homerd holds this database's epoch; stopping").await;
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

/// A signal: the first starts the drain (`shutdown_grace` for the `running` jobs to
/// finish, then each is stopped and released); every later one cuts the grace to zero —
/// the engine stops what still runs at once (TERM to its group, KILL after `kill_grace`)
/// and releases it. The message says which, how many jobs and how long, so an operator
/// at a terminal knows what a second Ctrl-C does before pressing it.
pub(super) fn on_signal(
    ctx: &Context,
    control: &runner::ControlSender,
    name: &'static str,
    running: usize,
    seen: &mut u32,
    drain_deadline: &mut Option<tokio::time::Instant>,
) {
    *seen += 1;
    let cfg = &ctx.config;
    let grace = if *seen == 1 { cfg.shutdown_grace } else { Duration::ZERO };
    let event = if *seen == 1 {
        events::info("shutdown.begin", shutdown_message(running, cfg.shutdown_grace, cfg.kill_grace))
            .field("signal", name)
            .field("grace_ms", grace.as_millis() as u64)
            .field("running", running)
    } else {
        events::warn("shutdown.hurry", hurry_message(running, cfg.kill_grace))
            .field("signal", name)
            .field("running", running)
    };
    event.emit_and_tell_terminal();
    let _ = control.send(runner::Control::Shutdown { grace_ms: grace.as_millis() as i64 });
    let bound = tokio::time::Instant::now() + cfg.drain_bound(grace);
    *drain_deadline = Some(drain_deadline.map_or(bound, |d| d.min(bound)));
}

fn jobs(n: usize) -> String {
    if n == 1 {
        String::from("1 running job")
    } else {
        format!("{n} running jobs")
    }
}

/// `shutdown.begin`'s message.
fn shutdown_message(running: usize, grace: Duration, kill_grace: Duration) -> String {
    use crate::duration::format_duration;
    if running == 0 {
        return String::from("Shutting down: no jobs running");
    }
    format!(
        "Shutting down: waiting up to {} (shutdown_grace) for {} to finish, then stopping and releasing {}; \
         send SIGTERM or SIGINT (Ctrl-C) again to stop {} now (TERM, then KILL after {})",
        format_duration(grace),
        jobs(running),
        if running == 1 { "it" } else { "them" },
        if running == 1 { "it" } else { "them" },
        format_duration(kill_grace),
    )
}

/// `shutdown.hurry`'s message.
fn hurry_message(running: usize, kill_grace: Duration) -> String {
    if running == 0 {
        return String::from("Signal received again: no jobs running; stopping");
    }
    format!(
        "Signal received again: stopping {} now (TERM, then KILL after {}) and releasing {}",
        jobs(running),
        crate::duration::format_duration(kill_grace),
        if running == 1 { "it" } else { "them" },
    )
}

/// The lock is released last: after the database is closed and the final log line.
pub(super) fn release_lock(lock: HeldLock) {
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
pub(super) struct LockWatch {
    pub(super) held: HeldLock,
    pub(super) lost_since: Option<Instant>,
    /// Failed re-acquisition attempts not yet counted in the database.
    pub(super) failures: i64,
    pub(super) database_id: Option<u32>,
}

impl LockWatch {
    /// `Err(reason)`: fenced.
    /// `writer`: SQLite's, to record the new lock file on the leader row; `None` on
    /// PostgreSQL, where the lock only keeps one daemon per home.
    pub(super) async fn check(
        &mut self,
        ctx: &Context,
        writer: Option<&Writer>,
        epoch: i64,
    ) -> std::result::Result<(), String> {
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
                crate::duration::format_duration(lost_for)
            ));
        }
        Ok(())
    }

    /// `Ok(true)`: re-acquired; `Ok(false)`: not yet (someone briefly holds the new file,
    /// or an I/O error); `Err`: the epoch moved.
    async fn reacquire(
        &mut self,
        ctx: &Context,
        writer: Option<&Writer>,
        epoch: i64,
    ) -> std::result::Result<bool, String> {
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
        let recorded = match writer {
            Some(writer) => writer.call(SyncMode::Full, move |tx| leader::update_lock_file(tx, epoch, dev, ino)).await,
            None => Ok(true),
        };
        match recorded {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_messages_name_the_jobs_the_grace_and_the_second_signal() {
        let (grace, kill) = (Duration::from_secs(30), Duration::from_secs(5));
        assert_eq!(shutdown_message(0, grace, kill), "Shutting down: no jobs running");
        assert_eq!(
            shutdown_message(1, grace, kill),
            "Shutting down: waiting up to 30s (shutdown_grace) for 1 running job to finish, then stopping and \
             releasing it; send SIGTERM or SIGINT (Ctrl-C) again to stop it now (TERM, then KILL after 5s)"
        );
        assert!(shutdown_message(3, grace, kill).contains("for 3 running jobs to finish"));
        assert_eq!(
            hurry_message(2, Duration::from_millis(1500)),
            "Signal received again: stopping 2 running jobs now (TERM, then KILL after 1s500ms) and releasing them"
        );
        assert_eq!(hurry_message(0, kill), "Signal received again: no jobs running; stopping");
    }
}
