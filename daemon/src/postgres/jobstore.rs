//! The engine's [`JobStore`] on PostgreSQL: every call is one transaction that starts
//! with [`workers::guard`] (this incarnation unfenced, its row share-locked) and whose
//! statements ([`jobs`]) match incarnation + token. The suite in `crate::engine::suite`
//! holds it to the same semantics as the SQLite and in-memory stores.
//!
//! A broken connection is reconnected at the next call; the incarnation survives it
//! unless another worker fenced it meanwhile, in which case every call answers `Fenced`.

use postgres::{Client, Transaction};

use super::jobs::{self, server_now, PgResult};
use super::{workers, Target};
use crate::engine::jobstore::{JobStore, Record, RecordItem, Recorded, StoreError, StoreResult};
use crate::job::{
    ChildIdentity, ClaimLimits, ClaimRef, Claimed, Epoch, FailOutcome, JobId, NewJob, OrphanPolicy, Recovered, WallMs,
};

/// How a guarded transaction failed.
enum TxError<R> {
    /// Before the commit: nothing was written.
    Before(StoreError),
    /// The commit's reply was lost: what the transaction did, which the server may or may
    /// not have committed.
    Commit(R, StoreError),
}

/// Which clock the store's times come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreClock {
    /// The server's (`homer_now_ms()`): what a daemon uses, so no host's clock decides when
    /// a job is due. Delays the coordinator computes are applied to it.
    Server,
    /// The `now` each call is given: the shared store suite's fixed times.
    Caller,
}

const RECOVERED_WHY: &str = "orphaned: the daemon running it stopped without recording an outcome";
const STALE_WHY: &str = "orphaned: its worker was not seen for its stale threshold and was fenced";

pub struct PgStore {
    client: Client,
    /// A claim whose commit was sent but whose reply never came (the connection dropped):
    /// the server may have committed it or not. Resolved by its tokens before the next
    /// claim ([`PgStore::resolve_unacknowledged`]); until then nothing new is claimed.
    unacknowledged: Option<(Epoch, Vec<Claimed>)>,
    /// Tests: the next commit succeeds on the server but its reply is treated as lost.
    #[cfg(test)]
    pub(crate) lose_next_commit_reply: bool,
    target: Target,
    /// This start's name (`workers::Registration::name`): its predecessors share it.
    name: String,
    clock: StoreClock,
}

fn unavailable(e: postgres::Error) -> StoreError {
    StoreError::Unavailable(crate::error::postgres_message(&e))
}

impl PgStore {
    pub fn new(client: Client, target: Target, name: String, clock: StoreClock) -> PgStore {
        PgStore {
            client,
            target,
            name,
            clock,
            unacknowledged: None,
            #[cfg(test)]
            lose_next_commit_reply: false,
        }
    }

    /// Runs `f` on the store's connection outside any guarded transaction: the engine's
    /// reads and retention (`backend::EngineIo`), so a daemon needs no third connection.
    /// A broken connection is replaced first; `None` when the server cannot be reached.
    pub fn unguarded<R>(&mut self, f: impl FnOnce(&mut Client) -> PgResult<R>) -> Option<PgResult<R>> {
        if self.client.is_closed() {
            self.client = self.target.connect().ok()?;
        }
        Some(f(&mut self.client))
    }

    /// Runs `f` in one transaction guarded on `epoch`, with the store's `now`.
    fn guarded<R>(
        &mut self,
        epoch: Epoch,
        given: WallMs,
        f: impl FnOnce(&mut Transaction<'_>, i64) -> PgResult<R>,
    ) -> StoreResult<R> {
        self.guarded_tx(epoch, given, f).map_err(|e| match e {
            TxError::Before(e) | TxError::Commit(_, e) => e,
        })
    }

    /// [`PgStore::guarded`], telling a failure before the commit (nothing was written)
    /// from a failed commit (the server may have committed: its reply was lost).
    fn guarded_tx<R>(
        &mut self,
        epoch: Epoch,
        given: WallMs,
        f: impl FnOnce(&mut Transaction<'_>, i64) -> PgResult<R>,
    ) -> Result<R, TxError<R>> {
        let before = |e| TxError::Before(unavailable(e));
        if self.client.is_closed() {
            self.client = self.target.connect().map_err(|e| TxError::Before(StoreError::Unavailable(e.to_string())))?;
        }
        let clock = self.clock;
        let mut tx = self.client.transaction().map_err(before)?;
        let unguarded = crate::mutant::active(crate::mutant::PG_NO_INCARNATION_GUARD);
        if !unguarded && !workers::guard(&mut tx, epoch).map_err(before)? {
            return Err(TxError::Before(StoreError::Fenced));
        }
        let now = match clock {
            StoreClock::Server => server_now(&mut tx).map_err(before)?,
            StoreClock::Caller => given.0,
        };
        let out = f(&mut tx, now).map_err(before)?;
        #[cfg(test)]
        if std::mem::take(&mut self.lose_next_commit_reply) {
            tx.commit().map_err(before)?;
            return Err(TxError::Commit(out, StoreError::Unavailable(String::from("commit reply lost (test)"))));
        }
        match tx.commit() {
            Ok(()) => Ok(out),
            Err(e) => Err(TxError::Commit(out, unavailable(e))),
        }
    }

    /// Resolves a claim whose commit went unacknowledged: of its jobs, those running
    /// under its epoch with its tokens are ours (the commit happened); the rest never
    /// were. `Err` while the server cannot say.
    fn resolve_unacknowledged(&mut self) -> StoreResult<Vec<Claimed>> {
        let Some((epoch, claimed)) = self.unacknowledged.take() else { return Ok(Vec::new()) };
        let tokens: Vec<String> = claimed.iter().map(|c| c.token.clone()).collect();
        match self.guarded(epoch, WallMs(0), |tx, _| jobs::running_with_tokens(tx, epoch, &tokens)) {
            Ok(ours) => {
                let found: Vec<Claimed> = claimed.into_iter().filter(|c| ours.contains(&c.id)).collect();
                crate::events::warn(
                    "claim.resolved",
                    "A claim's commit went unacknowledged (the connection dropped); resolved by its tokens",
                )
                .field("committed", found.iter().map(|c| c.id).collect::<Vec<_>>())
                .emit();
                Ok(found)
            }
            Err(e) => {
                self.unacknowledged = Some((epoch, claimed));
                Err(e)
            }
        }
    }

    /// The store's connection (tests set session options through it).
    #[cfg(test)]
    pub(crate) fn client_mut(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Enqueues `job` (for tests that drive the store; the CLI has its own path).
    pub fn enqueue(&mut self, job: &NewJob, now: WallMs) -> StoreResult<JobId> {
        let clock = self.clock;
        let mut tx = self.client.transaction().map_err(unavailable)?;
        let store_now = match clock {
            StoreClock::Server => server_now(&mut tx).map_err(unavailable)?,
            StoreClock::Caller => now.0,
        };
        let id = jobs::enqueue(&mut tx, job, now, store_now, None).map_err(unavailable)?;
        tx.commit().map_err(unavailable)?;
        Ok(id)
    }

    /// The worker heartbeat: `seen_at` refreshed on the server's clock, and `failed_before`
    /// (this worker's heartbeats that did not get through since its last one that did)
    /// added to the queue's `heartbeat_failures` in the same transaction. `Fenced` once
    /// another worker fenced this incarnation.
    ///
    /// Also returns the failures still to be counted after this call: none once a commit
    /// may have carried them — a commit whose reply was lost counts as carried (and as no
    /// failure), so a failure is never counted twice, though it may go uncounted —, one
    /// more after a heartbeat that surely wrote nothing.
    pub fn heartbeat(&mut self, epoch: Epoch, host_now: WallMs, failed_before: i64) -> (StoreResult<()>, i64) {
        let beat = |tx: &mut Transaction<'_>, _: i64| {
            let ours = workers::heartbeat(tx, epoch, host_now)?;
            if ours {
                jobs::bump_metric(tx, "heartbeat_failures", failed_before)?;
            }
            Ok(ours)
        };
        match self.guarded_tx(epoch, host_now, beat) {
            Ok(true) => (Ok(()), 0),
            // Only reachable without the guard (a mutant): the row says fenced.
            Ok(false) => (Err(StoreError::Fenced), failed_before),
            Err(TxError::Before(e)) => (Err(e), failed_before + 1),
            Err(TxError::Commit(_, e)) => (Err(e), 0),
        }
    }

    /// Fences every other incarnation not seen for its stale threshold and recovers its
    /// running jobs (after `delay_ms`). Nothing is killed: those runs' children are on
    /// another host (or in another boot) and were stopped by their own daemon before its
    /// lease ran out.
    pub fn sweep_stale(
        &mut self,
        epoch: Epoch,
        delay_ms: i64,
        max_interruptions: u32,
        host_now: WallMs,
    ) -> StoreResult<(Vec<i64>, Recovered)> {
        self.guarded(epoch, host_now, |tx, now| {
            let stale = workers::stale(tx, epoch, host_now)?;
            if stale.is_empty() {
                return Ok((stale, Recovered::default()));
            }
            workers::fence(tx, &stale, epoch, "not seen for its stale threshold")?;
            let rec = jobs::recover_orphans(tx, &stale, delay_ms, max_interruptions, STALE_WHY, now)?;
            Ok((stale, rec))
        })
    }

    /// A clean exit, once every run was released: nobody waits out this incarnation.
    /// Returns how many jobs are still `running` under it (see [`workers::stop`]).
    pub fn stop(&mut self, epoch: Epoch, failed_before: i64) -> StoreResult<i64> {
        // The heartbeats that failed since the last one that got through are counted
        // here, as the next heartbeat would have.
        self.guarded(epoch, WallMs(0), |tx, _| {
            let left = workers::stop(tx, epoch)?;
            jobs::bump_metric(tx, "heartbeat_failures", failed_before)?;
            Ok(left)
        })
    }
}

/// The incarnations whose jobs startup recovery owns: the predecessors on this home
/// (same `name`), and then also `epoch` itself (nothing of ours runs yet at startup).
fn own_and_predecessors(tx: &mut Transaction<'_>, epoch: Epoch, name: &str) -> PgResult<(Vec<i64>, Vec<i64>)> {
    let before = workers::predecessors(tx, epoch, name)?;
    let mut all = before.clone();
    all.push(epoch.0);
    Ok((before, all))
}

/// One [`Record`] in the store's transaction.
fn record_sql(
    tx: &mut Transaction<'_>,
    claim: &ClaimRef,
    what: &Record,
    given: WallMs,
    now: i64,
) -> PgResult<Recorded> {
    let ended = |o: Option<FailOutcome>| o.map_or(Recorded::NotOwner, Recorded::Ended);
    Ok(match what {
        Record::Complete => {
            if jobs::complete(tx, claim, now)? {
                Recorded::Completed
            } else {
                Recorded::NotOwner
            }
        }
        Record::Fail { error, retryable, retry_at } => {
            ended(jobs::fail(tx, claim, error, *retryable, *retry_at - given, now)?)
        }
        Record::Release { max_interruptions } => ended(jobs::release(tx, claim, *max_interruptions, now)?),
        Record::Abandon { reason } => ended(jobs::abandon(tx, claim, reason, now)?),
        Record::Cancel => {
            if jobs::cancel_running(tx, claim, now)? {
                Recorded::Ended(FailOutcome::Cancelled)
            } else {
                Recorded::NotOwner
            }
        }
        Record::Requeue { reason, retry_at } => {
            ended(jobs::requeue_unstarted(tx, claim, reason, *retry_at - given, now)?)
        }
    })
}

impl JobStore for PgStore {
    fn claim(&mut self, epoch: Epoch, worker: &str, limits: &ClaimLimits, now: WallMs) -> StoreResult<Vec<Claimed>> {
        // A claim left unacknowledged by a dropped connection first: its committed jobs
        // are ours and must run (or they would sit `running` under a live incarnation
        // that nobody recovers); nothing new is claimed until it is resolved.
        if self.unacknowledged.is_some() {
            return self.resolve_unacknowledged();
        }
        let tokens: Vec<String> = (0..limits.batch.max(1)).map(|_| jobs::random_token()).collect();
        match self.guarded_tx(epoch, now, |tx, now| jobs::claim(tx, epoch, worker, limits, now, &tokens)) {
            Ok(claimed) => Ok(claimed),
            Err(TxError::Before(e)) => Err(e),
            Err(TxError::Commit(claimed, e)) => {
                if !claimed.is_empty() {
                    self.unacknowledged = Some((epoch, claimed));
                }
                Err(e)
            }
        }
    }

    fn renew(&mut self, epoch: Epoch, held: &[(JobId, String)], now: WallMs) -> StoreResult<Vec<JobId>> {
        // A renewal is also the worker's heartbeat: whoever judges this worker stale
        // judges it by the last renewal that reached the server.
        self.guarded(epoch, now, |tx, store_now| {
            workers::heartbeat(tx, epoch, now)?;
            jobs::renew(tx, epoch, held, store_now)
        })
    }

    fn record_child(&mut self, claim: &ClaimRef, child: &ChildIdentity) -> StoreResult<bool> {
        self.guarded(claim.epoch, WallMs(0), |tx, _| jobs::record_child(tx, claim, child))
    }

    fn record_many(&mut self, items: &[RecordItem], now: WallMs) -> Vec<StoreResult<Recorded>> {
        let Some((first, _)) = items.first() else { return Vec::new() };
        // Every run that ended together, in one transaction (one commit); each item is
        // guarded on its own claim. A daemon's items all share its incarnation.
        let epoch = first.epoch;
        if items.iter().any(|(c, _)| c.epoch != epoch) {
            return items.iter().map(|_| Err(StoreError::Unavailable("mixed incarnations".into()))).collect();
        }
        match self.guarded(epoch, now, |tx, store_now| {
            let done = items
                .iter()
                .map(|(claim, what)| record_sql(tx, claim, what, now, store_now))
                .collect::<PgResult<Vec<_>>>()?;
            // A lane's capacity freed, or a retry scheduled: wake every daemon.
            super::daemon::notify(tx, "outcome")?;
            Ok(done)
        }) {
            Ok(done) => done.into_iter().map(Ok).collect(),
            Err(e) => items.iter().map(|_| Err(e.clone())).collect(),
        }
    }

    fn orphan_children(&mut self, epoch: Epoch) -> StoreResult<Vec<(JobId, ChildIdentity)>> {
        let name = self.name.clone();
        self.guarded(epoch, WallMs(0), |tx, _| {
            let (_, all) = own_and_predecessors(tx, epoch, &name)?;
            jobs::orphan_children(tx, &all)
        })
    }

    fn recover(&mut self, epoch: Epoch, policy: OrphanPolicy, now: WallMs) -> StoreResult<Recovered> {
        let name = self.name.clone();
        self.guarded(epoch, now, |tx, store_now| {
            let (before, all) = own_and_predecessors(tx, epoch, &name)?;
            if !before.is_empty() {
                workers::fence(tx, &before, epoch, "replaced by a new start on the same home")?;
            }
            if crate::mutant::active(crate::mutant::NO_IMMEDIATE_RECOVERY) {
                return Ok(Recovered::default());
            }
            jobs::recover_orphans(tx, &all, policy.retry_at - now, policy.max_interruptions, RECOVERED_WHY, store_now)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::suite::{suite, Harness, E1};

    /// Fresh databases on one throwaway server, one per store the suite makes.
    struct Pg {
        server: crate::postgres::tests::TestServer,
        newest: std::cell::RefCell<String>,
    }

    impl Pg {
        fn newest(&self) -> Client {
            Target::parse(&self.newest.borrow(), std::time::Duration::from_secs(10)).unwrap().connect().unwrap()
        }
    }

    impl Harness for Pg {
        type S = PgStore;
        fn make(&self) -> PgStore {
            let url = self.server.fresh();
            *self.newest.borrow_mut() = url.clone();
            let target = Target::parse(&url, std::time::Duration::from_secs(10)).unwrap();
            let mut client = target.connect().unwrap();
            super::super::schema::migrate(&mut client, &target.shown).unwrap();
            let me = workers::Registration {
                name: "suite".into(),
                identity: crate::identity::current().unwrap(),
                stale_ms: 1000,
            };
            assert_eq!(workers::register(&mut client, &me).unwrap(), E1, "a fresh database's first incarnation");
            PgStore::new(client, target, me.name, StoreClock::Caller)
        }
        fn enqueue(&self, s: &mut PgStore, job: &NewJob) -> JobId {
            s.enqueue(job, WallMs(0)).unwrap()
        }
        fn bump(&self, _s: &mut PgStore) {
            // Another worker fences incarnation 1.
            let mut c = self.newest();
            let other = workers::Registration {
                name: "other".into(),
                identity: crate::identity::current().unwrap(),
                stale_ms: 1000,
            };
            let two = workers::register(&mut c, &other).unwrap();
            let mut tx = c.transaction().unwrap();
            assert_eq!(workers::fence(&mut tx, &[E1.0], two, "test").unwrap(), vec![E1.0]);
            tx.commit().unwrap();
        }
        fn request_cancel(&self, _s: &mut PgStore, id: JobId) {
            let n = self
                .newest()
                .execute("UPDATE job_queue SET cancel_requested_at = 5 WHERE id = $1 AND status = 'running'", &[&id.0])
                .unwrap();
            assert_eq!(n, 1);
        }
    }

    #[test]
    fn postgres_store_passes_the_suite() {
        suite(&Pg { server: crate::postgres::tests::TestServer::start(), newest: Default::default() });
    }
}
