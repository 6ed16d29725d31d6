//! The two backends behind one face for the daemon's engine (`runner.rs`) and `run`:
//! [`AnyStore`] is the coordinator's `JobStore` (SQLite's through the single writer, or
//! PostgreSQL's), [`EngineIo`] the engine's other reads and writes (wake-ups, cancel
//! requests, the next due time, retention, clock steps).
//!
//! Only this module and `cmd/run*` know which backend runs; the coordinator does not.

use std::time::Duration;

use rusqlite::Connection;

use crate::clock::Clock;
use crate::engine::jobstore::{JobStore, RecordItem, Recorded, StoreResult};
use crate::job::{ChildIdentity, ClaimLimits, ClaimRef, Claimed, Epoch, JobId, Recovered, WallMs};
use crate::postgres::jobstore::PgStore;
use crate::sqlite::jobstore::SqliteStore;
use crate::sqlite::writer::Writer;

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
    fn record_many(&mut self, items: &[RecordItem], now: WallMs) -> Vec<StoreResult<Recorded>> {
        each!(self, s => s.record_many(items, now))
    }
    fn orphan_children(&mut self, epoch: Epoch) -> StoreResult<Vec<(JobId, ChildIdentity)>> {
        each!(self, s => s.orphan_children(epoch))
    }
    fn recover(&mut self, epoch: Epoch, retry_at: WallMs, now: WallMs) -> StoreResult<Recovered> {
        each!(self, s => s.recover(epoch, retry_at, now))
    }
}

/// The engine's I/O besides the store.
pub enum EngineIo {
    Sqlite {
        /// Housekeeping writes (retention, clock steps), epoch-checked like every write.
        writer: Writer,
        /// `PRAGMA data_version`, cancel requests, the next due time, counters.
        reader: Connection,
    },
    Postgres {
        /// A second connection: `LISTEN`s for wake-ups, reads cancel requests and the next
        /// due time, prunes. Reconnected (and re-`LISTEN`ed) when it breaks.
        client: Option<postgres::Client>,
        target: Box<crate::postgres::Target>,
    },
}

/// The SQLite database is corrupt (`sqlite::note_corruption`): the engine halts.
pub fn corruption() -> Option<&'static str> {
    crate::sqlite::corruption()
}

impl EngineIo {
    /// Whether another process changed the queue since the last call (an enqueue, a
    /// cancel, another daemon's outcome); on PostgreSQL waits up to `wait` for it.
    pub fn changed(&mut self, last: &mut i64, wait: Duration) -> bool {
        match self {
            EngineIo::Sqlite { reader, .. } => {
                let version = noted(crate::sqlite::read::data_version(reader)).unwrap_or(*last);
                let changed = version != *last;
                *last = version;
                changed
            }
            EngineIo::Postgres { client, target } => {
                let Some(c) = pg_client(client, target) else { return false };
                match crate::postgres::daemon::notified(c, wait) {
                    Ok(any) => any,
                    Err(_) => {
                        *client = None;
                        // Reconnected on the next call; meanwhile assume a change.
                        true
                    }
                }
            }
        }
    }

    /// Running jobs of ours an operator asked to cancel.
    pub fn cancel_requests(&mut self, epoch: Epoch) -> Vec<JobId> {
        match self {
            EngineIo::Sqlite { reader, .. } => crate::sqlite::ops::cancel_requests(reader).unwrap_or_default(),
            EngineIo::Postgres { client, target } => pg_client(client, target)
                .and_then(|c| crate::postgres::daemon::cancel_requests(c, epoch.0).ok())
                .unwrap_or_default(),
        }
    }

    /// When the next pending job is due on the engine's clock (`None`: none pending).
    pub fn next_ready(&mut self, clock: &Clock) -> Option<WallMs> {
        match self {
            EngineIo::Sqlite { reader, .. } => noted(crate::sqlite::read::next_run_after(reader)).flatten().map(WallMs),
            EngineIo::Postgres { client, target } => {
                let c = pg_client(client, target)?;
                // The server's delay, applied to our clock: due "in N ms" means the same
                // on every host.
                let in_ms = crate::postgres::daemon::next_due_in(c).ok().flatten()?;
                Some(clock.now() + in_ms.max(0))
            }
        }
    }

    /// SQLite: a `-wal` writer is required for housekeeping writes.
    pub fn sqlite_writer(&self) -> Option<&Writer> {
        match self {
            EngineIo::Sqlite { writer, .. } => Some(writer),
            EngineIo::Postgres { .. } => None,
        }
    }

    pub fn sqlite_reader(&self) -> Option<&Connection> {
        match self {
            EngineIo::Sqlite { reader, .. } => Some(reader),
            EngineIo::Postgres { .. } => None,
        }
    }

    /// PostgreSQL retention: prunes a batch of old terminal jobs; their ids.
    pub fn pg_prune(&mut self, retention: Duration, limit: u32) -> Result<Vec<i64>, String> {
        match self {
            EngineIo::Sqlite { .. } => Ok(Vec::new()),
            EngineIo::Postgres { client, target } => {
                let c = pg_client(client, target).ok_or_else(|| String::from("not connected"))?;
                crate::postgres::daemon::prune(c, retention.as_millis() as i64, limit as i64).map_err(|e| e.to_string())
            }
        }
    }
}

/// The engine's PostgreSQL connection, reconnected (and listening) when it broke.
fn pg_client<'a>(
    client: &'a mut Option<postgres::Client>,
    target: &crate::postgres::Target,
) -> Option<&'a mut postgres::Client> {
    if client.as_ref().is_some_and(|c| c.is_closed()) {
        *client = None;
    }
    if client.is_none() {
        let mut c = target.connect().ok()?;
        crate::postgres::daemon::listen(&mut c).ok()?;
        *client = Some(c);
    }
    client.as_mut()
}

/// A reader's result, with corruption noted (`sqlite::note_corruption`): the engine's
/// reads are best-effort, but a damaged page they meet must stop the daemon.
pub fn noted<T>(r: rusqlite::Result<T>) -> Option<T> {
    r.map_err(|e| crate::sqlite::note_corruption(&e)).ok()
}
