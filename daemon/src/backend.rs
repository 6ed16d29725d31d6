//! The two backends behind one face for the daemon's engine (`runner.rs`) and `run`:
//! [`AnyStore`] is the coordinator's `JobStore` (SQLite's through the single writer, or
//! PostgreSQL's), [`EngineIo`] the engine's other reads and writes (wake-ups, cancel
//! requests, the next due time, housekeeping — retention and the counters' event —,
//! clock steps, and what runs between transactions).
//!
//! Only this module and `cmd/run*` know which backend runs; the coordinator and the
//! runner do not.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;

use crate::clock::Clock;
use crate::engine::coordinator::Coordinator;
use crate::engine::jobstore::{JobStore, RecordItem, Recorded, StoreResult};
use crate::events;
use crate::job::{ChildIdentity, ClaimLimits, ClaimRef, Claimed, Epoch, JobId, OrphanPolicy, Recovered, WallMs};
use crate::postgres::daemon::Listener;
use crate::postgres::jobs::PgResult;
use crate::postgres::jobstore::PgStore;
use crate::postgres::Target;
use crate::sqlite::jobstore::SqliteStore;
use crate::sqlite::writer::{SyncMode, Writer};

/// The daemon's store.
pub enum AnyStore {
    Sqlite(SqliteStore),
    Postgres(Box<PgStore>),
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnyStore::Sqlite($s) => $e,
            AnyStore::Postgres($s) => $e,
        }
    };
}

impl JobStore for AnyStore {
    fn claim(&mut self, epoch: Epoch, worker: &str, limits: &ClaimLimits, now: WallMs) -> StoreResult<Vec<Claimed>> {
        each!(self, s => s.claim(epoch, worker, limits, now))
    }
    fn renew(&mut self, epoch: Epoch, held: &[(JobId, String)], now: WallMs) -> StoreResult<Vec<JobId>> {
        each!(self, s => s.renew(epoch, held, now))
    }
    fn record_child(&mut self, claim: &ClaimRef, child: &ChildIdentity) -> StoreResult<bool> {
        each!(self, s => s.record_child(claim, child))
    }
    fn record_children(&mut self, items: &[(ClaimRef, ChildIdentity)]) -> Vec<StoreResult<bool>> {
        each!(self, s => s.record_children(items))
    }
    fn record_many(&mut self, items: &[RecordItem], now: WallMs) -> Vec<StoreResult<Recorded>> {
        each!(self, s => s.record_many(items, now))
    }
    fn orphan_children(&mut self, epoch: Epoch) -> StoreResult<Vec<(JobId, ChildIdentity)>> {
        each!(self, s => s.orphan_children(epoch))
    }
    fn recover(&mut self, epoch: Epoch, policy: OrphanPolicy, now: WallMs) -> StoreResult<Recovered> {
        each!(self, s => s.recover(epoch, policy, now))
    }
}

/// The engine's I/O besides the store.
pub enum EngineIo {
    Sqlite {
        /// Housekeeping writes (retention, clock steps), epoch-checked like every write.
        writer: Writer,
        /// `PRAGMA data_version`, cancel requests, the next due time, counters.
        reader: Connection,
        /// The wake-up socket commands poke after a commit (`wake.rs`), until
        /// [`EngineIo::start_wakeups`] starts listening on it; `None` if it could not be bound.
        wake: Option<crate::wake::WakeSocket>,
    },
    Postgres(Box<PgIo>),
}

/// The engine's PostgreSQL side: its reads and retention on the store's connection
/// (`PgStore::unguarded`, between the coordinator's store calls), and the [`Listener`]
/// thread with the daemon's second connection, which only `LISTEN`s.
pub struct PgIo {
    coord: Arc<Coordinator<AnyStore>>,
    target: Target,
    /// The listening connection the start opened, until [`EngineIo::start_wakeups`]
    /// hands it to the listener thread.
    listening: Option<postgres::Client>,
    listener: Option<Listener>,
}

/// Terminal jobs pruned per housekeeping pass at most (keeps each transaction short).
const PRUNE_BATCH: u32 = 1000;

/// PostgreSQL: claims are attempted at least this often even when nothing notified
/// (another host's run that ended frees a lane's capacity; a notification lost while the
/// listener reconnected).
const PG_CLAIM_POLL: Duration = Duration::from_secs(1);

/// The SQLite database is corrupt (`sqlite::note_corruption`): the engine halts.
pub fn corruption() -> Option<&'static str> {
    crate::sqlite::corruption()
}

/// What the `daemon.metrics` event reports (README, Events and logs).
#[derive(Default)]
struct Counters {
    /// The `metrics` table: this database's counters (on PostgreSQL, the whole queue's).
    metrics: BTreeMap<String, i64>,
    /// Jobs per status.
    jobs: BTreeMap<String, i64>,
    oldest_pending_age_ms: Option<i64>,
    lanes: BTreeMap<String, BTreeMap<String, i64>>,
}

impl EngineIo {
    /// The PostgreSQL engine I/O of a start whose `listening` connection already
    /// `LISTEN`s on the wake-up channel; `coord` owns the store whose connection the
    /// engine's reads share.
    pub fn postgres(target: Target, listening: postgres::Client, coord: Arc<Coordinator<AnyStore>>) -> EngineIo {
        EngineIo::Postgres(Box::new(PgIo { coord, target, listening: Some(listening), listener: None }))
    }

    /// Starts whatever wakes the engine when the queue changes: on PostgreSQL the
    /// listener thread, which calls `wake` (the engine's wake-up channel) when a
    /// notification arrives. SQLite has nothing to start: the engine looks at `PRAGMA
    /// data_version` on every pass ([`EngineIo::changed`]).
    pub fn start_wakeups(&mut self, wake: Box<dyn Fn() + Send>) {
        match self {
            EngineIo::Sqlite { wake: socket, .. } => {
                if let Some(socket) = socket.take() {
                    if let Err(e) = socket.listen(wake) {
                        events::warn(
                            "wake.unavailable",
                            "Could not listen for wake-ups; changes are noticed by the poll",
                        )
                        .field("error", e.to_string())
                        .emit();
                    }
                }
            }
            EngineIo::Postgres(pg) => {
                if let Some(client) = pg.listening.take() {
                    let listener = Listener::start(client, pg.target.clone(), wake).expect("spawn the listener thread");
                    pg.listener = Some(listener);
                }
            }
        }
    }

    /// How often the engine claims even when nothing said the queue changed (`None`:
    /// only on a change, a freed slot or a due time).
    pub fn claim_poll(&self) -> Option<Duration> {
        match self {
            EngineIo::Sqlite { .. } => None,
            EngineIo::Postgres(_) => Some(PG_CLAIM_POLL),
        }
    }

    /// Whether a change of the queue wakes the engine (`start_wakeups`), so an idle
    /// engine may sleep until its next deadline; SQLite's `data_version` must be looked at.
    pub fn wakes_on_change(&self) -> bool {
        matches!(self, EngineIo::Postgres(_))
    }

    /// Whether another process changed the queue since the last call (an enqueue, a
    /// cancel, another daemon's outcome). Never waits: SQLite reads `data_version` (into
    /// `last`), PostgreSQL takes the listener's flag.
    pub fn changed(&mut self, last: &mut i64) -> bool {
        match self {
            EngineIo::Sqlite { reader, .. } => {
                let version = noted(crate::sqlite::read::data_version(reader)).unwrap_or(*last);
                let changed = version != *last;
                *last = version;
                changed
            }
            EngineIo::Postgres(pg) => pg.listener.as_ref().is_some_and(Listener::take_changed),
        }
    }

    /// Running jobs of ours an operator asked to cancel.
    pub fn cancel_requests(&mut self, epoch: Epoch) -> Vec<JobId> {
        match self {
            EngineIo::Sqlite { reader, .. } => crate::sqlite::ops::cancel_requests(reader).unwrap_or_default(),
            EngineIo::Postgres(pg) => pg
                .read(|c| crate::postgres::daemon::cancel_requests(c, epoch.0))
                .and_then(Result::ok)
                .unwrap_or_default(),
        }
    }

    /// When the next pending job is due on the engine's clock (`None`: none pending).
    pub fn next_ready(&mut self, clock: &Clock) -> Option<WallMs> {
        match self {
            EngineIo::Sqlite { reader, .. } => noted(crate::sqlite::read::next_run_after(reader)).flatten().map(WallMs),
            EngineIo::Postgres(pg) => {
                // The server's delay, applied to our clock: due "in N ms" means the same
                // on every host.
                let in_ms = pg.read(crate::postgres::daemon::next_due_in)?.ok().flatten()?;
                Some(clock.now() + in_ms.max(0))
            }
        }
    }

    /// Runs `f` where no transaction of this daemon is open: on SQLite on the writer
    /// thread between two transactions (a `stop` failpoint there freezes the daemon
    /// without holding SQLite's write lock, which would block a successor for reasons
    /// the hook is not about); on PostgreSQL on the calling thread, which holds none.
    pub fn between_transactions(&self, f: impl FnOnce() + Send + 'static) {
        match self {
            EngineIo::Sqlite { writer, .. } => writer.between_transactions_blocking(f),
            EngineIo::Postgres(_) => f(),
        }
    }

    /// Acts on the wall-clock steps the effective clock saw ([`absorb_clock_steps`]).
    pub fn absorb_clock_steps(&self, clock: &Clock, epoch: Epoch) {
        match self {
            EngineIo::Sqlite { writer, .. } => absorb_clock_steps(clock, Some(writer), epoch),
            EngineIo::Postgres(_) => absorb_clock_steps(clock, None, epoch),
        }
    }

    /// Retention, then the counters: prunes terminal jobs that ended more than
    /// `retention` ago, with their runs (a bounded batch per pass) and their run logs in
    /// `runs_dir` (`jobs.pruned`); then reports the counters as a `daemon.metrics`
    /// event (debug).
    pub fn housekeeping(&mut self, clock: &Clock, retention: Duration, runs_dir: &Path) {
        let pruned = match self {
            EngineIo::Sqlite { writer, .. } => {
                let before = clock.now_ms() - retention.as_millis() as i64;
                writer
                    .call_blocking(SyncMode::Normal, move |tx| {
                        let ids = crate::sqlite::ops::prune(tx, before, PRUNE_BATCH)?;
                        crate::sqlite::ops::bump_metric(tx, "jobs_pruned", ids.len() as i64)?;
                        Ok(ids)
                    })
                    .map_err(|e| e.to_string())
            }
            EngineIo::Postgres(pg) => {
                let retention_ms = retention.as_millis() as i64;
                match pg.read(|c| crate::postgres::daemon::prune(c, retention_ms, i64::from(PRUNE_BATCH))) {
                    Some(r) => r.map_err(|e| e.to_string()),
                    None => Err(String::from("cannot connect to the database")),
                }
            }
        };
        match pruned {
            Ok(ids) if !ids.is_empty() => {
                remove_run_logs(runs_dir, &ids);
                events::info("jobs.pruned", "Pruned jobs past retention").field("count", ids.len()).emit();
            }
            Ok(_) => {}
            Err(e) => events::warn("jobs.prune_failed", "Could not prune old jobs").field("error", e).emit(),
        }
        let Some(counters) = self.counters(clock) else { return };
        let mut ev = events::debug("daemon.metrics", "Counters");
        for (k, v) in counters.metrics {
            ev = ev.field(&k, v);
        }
        for (k, v) in counters.jobs {
            ev = ev.field(&format!("jobs_{k}"), v);
        }
        ev.field("oldest_pending_age_ms", serde_json::json!(counters.oldest_pending_age_ms))
            .field("lanes", serde_json::json!(counters.lanes))
            .emit();
    }

    /// The counters, each read best-effort; `None` when the database cannot be reached
    /// at all (PostgreSQL).
    fn counters(&mut self, clock: &Clock) -> Option<Counters> {
        match self {
            EngineIo::Sqlite { reader, .. } => {
                let now = clock.now_ms();
                let counts = crate::sqlite::read::job_counts(reader).unwrap_or_default();
                Some(Counters {
                    metrics: crate::sqlite::ops::metrics(reader).unwrap_or_default(),
                    jobs: counts.by_status,
                    oldest_pending_age_ms: crate::sqlite::ops::oldest_pending(reader, now)
                        .ok()
                        .flatten()
                        .map(|t| (now - t).max(0)),
                    lanes: counts.by_lane,
                })
            }
            EngineIo::Postgres(pg) => {
                use crate::postgres::ops;
                pg.read(|c| {
                    // Ages on the server's clock, as the rows' times are.
                    let oldest = match (ops::oldest_pending(c), ops::now(c)) {
                        (Ok(Some(t)), Ok(now)) => Some((now - t).max(0)),
                        _ => None,
                    };
                    let counts = ops::job_counts(c).unwrap_or_default();
                    Ok(Counters {
                        metrics: ops::metrics(c).unwrap_or_default(),
                        jobs: counts.by_status,
                        oldest_pending_age_ms: oldest,
                        lanes: counts.by_lane,
                    })
                })
                .and_then(Result::ok)
            }
        }
    }
}

impl PgIo {
    /// Runs `f` on the store's connection (`PgStore::unguarded`); `None`: the server
    /// cannot be reached now. Every engine read is best-effort and tried again later.
    fn read<R>(&self, f: impl FnOnce(&mut postgres::Client) -> PgResult<R>) -> Option<PgResult<R>> {
        self.coord.with_store(|s| match s {
            AnyStore::Postgres(p) => p.unguarded(f),
            AnyStore::Sqlite(_) => unreachable!("a PostgreSQL engine runs the PostgreSQL store"),
        })
    }
}

/// Takes the wall-clock steps the effective clock saw (clock.rs) and acts on them: a
/// forward step moves every job still waiting for a `run_after` set before it by the
/// step (one epoch-guarded write), so delays keep their length; a backward step changes
/// nothing (the effective clock keeps counting) and is reported.
///
/// The same commit refreshes the leader row's reading (`seen_at`/`seen_mono`) past the
/// step: a start that anchors its clock on the row after this daemon died (`Clock::anchor`)
/// must not see the step again and move the jobs a second time.
///
/// On PostgreSQL (`writer` is `None`) the server's clock schedules every job: a step of
/// this host's clock moves nothing, and is only reported.
pub fn absorb_clock_steps(clock: &Clock, writer: Option<&Writer>, epoch: Epoch) {
    for back in clock.take_backward_steps() {
        events::warn(
            "clock.stepped_back",
            "The wall clock stepped back; homerd's clock keeps counting from where it was",
        )
        .field("by_ms", back)
        .emit();
    }
    let Some(writer) = writer else {
        for step in clock.take_forward_steps() {
            events::warn(
                "clock.stepped",
                "The wall clock jumped forward; the server's clock schedules jobs: nothing moved",
            )
            .field("by_ms", step.by)
            .field("moved", 0)
            .emit();
        }
        return;
    };
    for step in clock.take_forward_steps() {
        let crate::clock::ForwardStep { from, by } = step;
        let reading = clock.clone();
        match writer.call_blocking(SyncMode::Normal, move |tx| {
            let moved = crate::sqlite::jobs::shift_scheduled(tx, from, by)?;
            // The writer checked the epoch in this transaction: the refresh cannot miss.
            crate::sqlite::leader::heartbeat(tx, epoch.0, &reading)?;
            Ok(moved)
        }) {
            Ok(moved) => {
                events::warn("clock.stepped", "The wall clock jumped forward; jobs waiting for a time moved with it")
                    .field("by_ms", by)
                    .field("moved", moved)
                    .emit()
            }
            Err(e) => events::error("clock.step_failed", "Could not move the waiting jobs after a wall-clock step")
                .field("by_ms", by)
                .field("error", e.to_string())
                .emit(),
        }
    }
}

/// Removes `<id>-<run>.out` / `.err` for the pruned jobs.
fn remove_run_logs(dir: &Path, ids: &[i64]) {
    let ids: std::collections::BTreeSet<i64> = ids.iter().copied().collect();
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let job = name.split('-').next().and_then(|s| s.parse::<i64>().ok());
        if job.is_some_and(|j| ids.contains(&j)) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// A reader's result, with corruption noted (`sqlite::note_corruption`): the engine's
/// reads are best-effort, but a damaged page they meet must stop the daemon.
pub fn noted<T>(r: rusqlite::Result<T>) -> Option<T> {
    r.map_err(|e| crate::sqlite::note_corruption(&e)).ok()
}
