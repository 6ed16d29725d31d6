//! `homerd run` on PostgreSQL: one daemon per home (the flock stays), many daemons per
//! queue.
//!
//! flock on the home's lock file → connect → migrations (advisory lock) → register a
//! worker row (a fresh incarnation) → recovery of this home's predecessors (their
//! recorded children killed first, then their jobs requeued) → `daemon.active`. Then,
//! until SIGTERM/SIGINT: every `heartbeat_interval`, refresh the worker row on the
//! server's clock and fence any other worker not seen for its stale threshold, requeueing
//! its jobs; every `lock_check_interval`, re-check the lock path. A fenced incarnation
//! (another worker judged it stale) stops every run and exits 76; one that cannot reach
//! the server stands down (runs stopped by their lease deadlines, nothing claimed) and
//! resumes when a heartbeat gets through again, unless it was fenced meanwhile.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::{AnyStore, EngineIo};
use crate::cmd::context::Context;
use crate::cmd::lead::{acquire_lock, diagnostics, Role};
use crate::cmd::run::{
    announce_lead, every, heartbeat_timer, raise_open_files, release_lock, Lifecycle, LockWatch, Refresh, Signals, Stop,
};
use crate::engine::coordinator::Coordinator;
use crate::engine::jobstore::StoreError;
use crate::error::{exit, Error, Result};
use crate::job::Epoch;
use crate::postgres::jobstore::{PgStore, StoreClock};
use crate::postgres::{daemon, schema, workers, Target};
use crate::{events, failpoint, identity, runner};

pub fn run(ctx: Context, url: &str) -> Result<i32> {
    failpoint::announce();
    let Some(mut lock) = acquire_lock(&ctx, Role::Daemon)? else { return Ok(exit::OK) };
    // Describe ourselves at once: another start waiting on the lock reads this.
    lock.write_diagnostics(&diagnostics(&ctx, Role::Daemon, 0, None))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("tokio runtime: {e}")))?;
    let signals = runtime.block_on(async { Signals::register() })?;
    let mut target = Target::parse(url, ctx.config.busy_timeout)?;
    target.limit_idle_transactions((ctx.config.busy_timeout * 4).min(ctx.config.stale_threshold / 2));
    let mut client = target.connect()?;
    let applied = schema::migrate(&mut client, &target.shown)?;
    let me = identity::current().map_err(|e| Error::Internal(format!("own process identity: {e}")))?;
    let registration = workers::Registration {
        name: format!("{}/{}:{}", me.host, me.boot_id, ctx.paths.home.display()),
        identity: me,
        stale_ms: ctx.config.stale_threshold.as_millis() as i64,
    };
    // The server sets the new worker row's `seen_at` during this call: the leases count
    // from before it (see below).
    let registered_at = crate::clock::mono();
    let epoch = workers::register(&mut client, &registration).map_err(|e| Error::postgres(&target.shown, e))?;
    lock.write_diagnostics(&diagnostics(&ctx, Role::Daemon, epoch.0, None))?;
    announce_lead(&ctx, &lock, epoch.0, &applied)?;
    events::info("worker.registered", "Registered as a worker of the shared queue")
        .field("incarnation", epoch)
        .field("name", registration.name.clone())
        .emit();
    raise_open_files();
    // Runs and claims name the worker by its registered name, as `show` and `status`
    // print it: which host and which home ran a run (and so keeps its output).
    let engine_cfg = runner::engine_config(&ctx.config, registration.name.clone());
    let store = PgStore::new(client, target.clone(), registration.name.clone(), StoreClock::Server);
    let coord = Arc::new(Coordinator::new(engine_cfg, epoch, AnyStore::Postgres(Box::new(store))));
    let kill_limit = ctx.config.kill_grace + Duration::from_secs(10);
    let ready = runner::recover(&coord, &ctx.clock, kill_limit)
        .map_err(|e| if e.contains("fenced") { Error::Fenced(e) } else { Error::Busy(e) })
        .and_then(|()| {
            let mut listener = target.connect()?;
            daemon::listen(&mut listener).map_err(|e| Error::postgres(&target.shown, e))?;
            Ok(listener)
        });
    let listener = match ready {
        Ok(l) => l,
        Err(e) => {
            release_lock(lock);
            return Err(e);
        }
    };
    // Another host cannot kill this host's processes: if this daemon dies, the guardian
    // stops the groups of the jobs it ran before another worker can take them over.
    if let Err(e) = crate::guardian::start(ctx.config.kill_grace) {
        release_lock(lock);
        return Err(Error::io("start the group guardian", "homerd", e));
    }
    events::info("daemon.active", "Daemon active")
        .field("epoch", epoch)
        .field("database", target.shown.clone())
        .field("version", env!("CARGO_PKG_VERSION"))
        .emit();
    // Counted from the registration, not from now: another worker judges this one stale
    // from the `seen_at` it wrote, however long recovery (killing the predecessors'
    // groups), the listener's connection and the guardian took since. The first heartbeat
    // moves both on.
    coord.note_leader_refresh(registered_at);
    let io = EngineIo::postgres(target, listener, coord.clone());
    let engine = runner::start(coord.clone(), io, ctx.config.clone(), ctx.clock.clone(), ctx.paths.clone());
    let result = runtime.block_on(supervise(&ctx, lock, epoch, signals, engine, coord.clone()));
    // The store's synchronous client shuts down its own runtime when dropped: outside ours.
    drop(runtime);
    drop(coord);
    result
}

/// Runs `f` on the coordinator's PostgreSQL store, on tokio's blocking pool: the
/// synchronous client drives its own runtime, which must not run inside ours, and a call
/// that waits on an unreachable server must not hold up signal handling.
async fn with_pg<R: Send + 'static>(
    coord: &Arc<runner::EngineCoordinator>,
    f: impl FnOnce(&mut PgStore) -> R + Send + 'static,
) -> R {
    let coord = coord.clone();
    tokio::task::spawn_blocking(move || {
        coord.with_store(|s| match s {
            AnyStore::Postgres(p) => f(p),
            AnyStore::Sqlite(_) => unreachable!("run_postgres runs the PostgreSQL store"),
        })
    })
    .await
    .expect("a store call panicked")
}

async fn supervise(
    ctx: &Context,
    lock: crate::lock::HeldLock,
    epoch: Epoch,
    signals: Signals,
    engine: runner::EngineThread,
    coord: Arc<runner::EngineCoordinator>,
) -> Result<i32> {
    let mut life = Lifecycle::new(ctx, signals, engine, coord.clone());
    let cfg = &ctx.config;
    let mut heartbeat = heartbeat_timer(cfg.heartbeat_interval);
    let mut lock_check = every(cfg.lock_check_interval);
    let mut watch = LockWatch { held: lock, lost_since: None, failures: 0, database_id: None };
    let mut refresh = Refresh::new("worker row");
    // Heartbeats that failed since the last one that got through: counted with the next.
    let mut failed_heartbeats: i64 = 0;
    // When this worker may next judge others stale. After it could not reach the server
    // itself for a while, the outage was likely the server's or the network's, and every
    // other worker missed its heartbeats too: it waits a stale threshold before fencing
    // anyone, so they can get through again first. (Waiting only delays a recovery.)
    let mut sweep_after = Instant::now();
    let retry_delay = cfg.orphan_retry_delay.as_millis() as i64;
    let max_interruptions = cfg.max_interruptions;
    let stop = loop {
        tokio::select! {
            stop = life.next() => if let Some(stop) = stop { break stop },
            _ = heartbeat.tick() => {
                let asked_at = crate::clock::mono();
                let host_now = ctx.clock.now();
                let failed_before = failed_heartbeats;
                let (beat, still_to_count) = with_pg(&coord, move |p| p.heartbeat(epoch, host_now, failed_before)).await;
                failed_heartbeats = still_to_count;
                match beat {
                    Ok(()) => {
                        if refresh.since_last() > cfg.heartbeat_interval * 2 {
                            sweep_after = Instant::now() + cfg.stale_threshold;
                        }
                        refresh.succeeded(&coord, asked_at, epoch.0);
                        if Instant::now() < sweep_after {
                            continue;
                        }
                        match with_pg(&coord, move |p| p.sweep_stale(epoch, retry_delay, max_interruptions, host_now)).await {
                            Ok((fenced, rec)) if !fenced.is_empty() => {
                                events::warn("workers.fenced", "Fenced workers not seen for their stale threshold; their jobs were recovered")
                                    .field("incarnations", fenced)
                                    .field("requeued", rec.requeued)
                                    .field("failed", rec.failed)
                                    .field("cancelled", rec.cancelled)
                                    .field("given_back", rec.given_back)
                                    .emit();
                            }
                            Ok(_) => {}
                            Err(StoreError::Fenced) => break Stop::Fenced(String::from("another worker fenced this incarnation")),
                            Err(e) => events::warn("workers.sweep_failed", "Could not check for stale workers")
                                .field("error", e.to_string())
                                .emit(),
                        }
                    }
                    Err(StoreError::Fenced) => break Stop::Fenced(String::from("another worker fenced this incarnation")),
                    Err(e) => refresh.failed(&coord, e.to_string()),
                }
            }
            _ = lock_check.tick() => {
                if let Err(reason) = watch.check(ctx, None, epoch.0).await {
                    break Stop::Fenced(reason);
                }
            }
        }
    };
    let LockWatch { held: lock, .. } = watch;
    match stop {
        Stop::Drained | Stop::Corrupt => {
            failpoint::hit("shutdown.before_release").map_err(|e| Error::io("shutdown", &ctx.paths.home, e))?;
            // Every run was released: nobody needs to wait out this incarnation's lease.
            let failed = failed_heartbeats;
            match with_pg(&coord, move |p| p.stop(epoch, failed)).await {
                Ok(0) => {}
                Ok(left) => events::warn(
                    "daemon.left_running",
                    "Stopped with jobs still running under this worker; another worker requeues them once it is stale",
                )
                .field("jobs", left)
                .emit(),
                Err(e) => events::warn("daemon.release_failed", "Could not mark the worker row stopped")
                    .field("error", e.to_string())
                    .emit(),
            }
            crate::guardian::stop();
            release_lock(lock);
            Ok(exit::OK)
        }
        Stop::Fenced(reason) => {
            life.stop_fenced(epoch.0, &reason, "Fenced: another worker fenced this incarnation; stopping").await;
            crate::guardian::stop();
            release_lock(lock);
            Err(Error::Fenced(reason))
        }
    }
}
