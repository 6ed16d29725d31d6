//! The coordinator: what to claim, when a lease is lost, what to kill, what to record,
//! what to release on shutdown, what to do when fenced — a state machine with no I/O.
//!
//! It is fed the time (monotonic milliseconds for deadlines, wall milliseconds for the
//! database) and results, and answers with decisions; the runner does the I/O around it
//! (spawning and killing children, waiting). Shared state lives behind the `sync` shim so
//! loom can drive this very code with several worker threads, lease supervision and a
//! shutdown signal.
//!
//! Architecture invariants:
//! - a job whose lease is not ours (lost, fenced, stood down) never records an outcome:
//!   [`Coordinator::finish`] records nothing for it, and the store's guards would refuse
//!   it anyway — unless its program had exited on its own first: then its result is
//!   recorded, guarded as every write (a fence or halt still records nothing);
//! - a run whose program exited on its own is not stopped for a deadline or a cancel
//!   after that ([`Coordinator::mark_exited`]): a stop decides the outcome only when it
//!   may be what ended the program;
//! - a lease's child must be dead by `anchor + stale_threshold - margin`, where the anchor
//!   is the earlier of the job's last renewal and the leader row's last refresh (a takeover
//!   counts from the latter): killing starts `kill_grace` earlier;
//! - every decision to stop a run goes into one queue ([`Coordinator::take_stops`]),
//!   executed by the runner's watchdog, which never waits on the database;
//! - a job claimed during shutdown is released (attempt given back), never dropped.

use std::collections::BTreeMap;

use super::jobstore::{JobStore, Record, RecordItem, Recorded, StoreError, StoreResult};
use crate::job::{
    ChildIdentity, ClaimLimits, ClaimRef, Claimed, Epoch, FailOutcome, JobId, MonoMs, OrphanPolicy, Recovered, WallMs,
};
use crate::sync::{self, Mutex};

/// Timing and limits, in milliseconds.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub worker: String,
    pub heartbeat_ms: i64,
    pub stale_ms: i64,
    pub kill_grace_ms: i64,
    pub shutdown_grace_ms: i64,
    pub orphan_retry_delay_ms: i64,
    pub backoff_base_ms: i64,
    pub backoff_cap_ms: i64,
    pub max_interruptions: u32,
    pub limits: ClaimLimits,
}

impl EngineConfig {
    /// A small, fast configuration for unit and model-checking tests (the coordinator's
    /// own tests, `tests/loom.rs`): worker `w`, 100 ms heartbeats, a 1 s stale threshold,
    /// 200 ms kill grace, 500 ms shutdown grace, 1 s..8 s backoff, 2 interruptions, four
    /// jobs at once (any lane), claims of up to 32. Tests change single fields as needed.
    /// Not `cfg(test)`: integration tests (loom) are built without it.
    pub fn for_tests() -> EngineConfig {
        EngineConfig {
            worker: String::from("w"),
            heartbeat_ms: 100,
            stale_ms: 1000,
            kill_grace_ms: 200,
            shutdown_grace_ms: 500,
            orphan_retry_delay_ms: 0,
            backoff_base_ms: 1000,
            backoff_cap_ms: 8000,
            max_interruptions: 2,
            limits: ClaimLimits { global: 4, lanes: BTreeMap::new(), default_lane: 4, batch: 32 },
        }
    }

    /// Safety margin before the stale threshold: half a heartbeat interval.
    pub fn margin_ms(&self) -> i64 {
        self.heartbeat_ms / 2
    }

    /// Failure backoff before attempt `attempt + 1`: exponential from `backoff_base`,
    /// capped, with the upper half jittered by `jitter` (0.0..=1.0).
    pub fn backoff_ms(&self, attempt: u32, jitter: f64) -> i64 {
        let exp = self.backoff_base_ms.saturating_mul(1i64 << attempt.saturating_sub(1).min(40));
        let delay = exp.min(self.backoff_cap_ms).max(0);
        delay / 2 + ((delay - delay / 2) as f64 * jitter.clamp(0.0, 1.0)) as i64
    }
}

/// Why the runner must stop a job's process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// Not renewed in time, or the store says it is no longer ours.
    LeaseLost,
    /// Not renewed in time because the database could not be written — the renewals
    /// failed, or the leader row could not be refreshed either: the daemon is standing
    /// down (held by another writer past the busy timeout, a full disk). Its own trouble, not the job's: released with the attempt given
    /// back (an interruption, bounded by `max_interruptions`) once it can write again.
    StandDown,
    /// The job's own timeout.
    Timeout,
    /// Shutdown grace ran out: release it, giving the attempt back.
    Shutdown,
    /// Another daemon holds the epoch.
    Fenced,
    /// An operator asked to cancel it (`homerd cancel`).
    Cancelled,
    /// The database is unusable (corrupt): stop it and record nothing; its row stays
    /// `running` for the next start's recovery.
    Halted,
}

#[derive(Clone, Debug)]
pub struct Lease {
    pub job: Claimed,
    /// Monotonic time of the last successful renewal (or the claim).
    pub renewed_at: MonoMs,
    pub timeout_at: Option<MonoMs>,
    pub stop: Option<StopReason>,
    pub child: Option<ChildIdentity>,
    /// A result the store could not take yet (busy): retried by [`Coordinator::retry_unrecorded`].
    unrecorded: Option<JobResult>,
    /// The job's work (and its whole process group) has ended: nothing left to stop.
    ended: bool,
    /// Its program exited with no stop decided yet: a stop decided later (while the rest
    /// of its group is killed or its output drained) did not end it, so its own result is
    /// what is recorded.
    exited_unstopped: bool,
}

impl Lease {
    /// Whether a deadline (its kill-by time, its timeout, the shutdown grace) or a cancel
    /// may still stop this run: not once its work has ended, nor once its program exited
    /// on its own (the job thread kills what is left of its group; a stop would change
    /// nothing but what is recorded, and its program's result stands).
    fn may_stop(&self) -> bool {
        let exited = self.exited_unstopped && !crate::mutant::active(crate::mutant::LATE_STOP_OVERRIDES);
        self.stop.is_none() && !self.ended && !exited
    }

    /// When killing must start so the child is dead before the lease could be taken over,
    /// given the leader row's last refresh (`None`: not yet known, the claim time counts).
    pub fn kill_by(&self, cfg: &EngineConfig, leader_at: Option<MonoMs>) -> MonoMs {
        let anchor = leader_at.map_or(self.renewed_at, |l| l.min(self.renewed_at));
        anchor + cfg.stale_ms - cfg.kill_grace_ms - cfg.margin_ms()
    }
}

/// What recording a held child's identity did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildRecorded {
    /// On its run: the child may be released.
    Recorded,
    /// The lease is gone (lost, stopped, fenced): the child must not run.
    NotOurs,
    /// The store did not answer: the child must not run, and nothing of the job ran —
    /// the daemon's trouble, not the job's (a `NotStarted` result, its attempt given back).
    Unavailable,
}

/// How a job's process (or in-process work) ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobResult {
    Succeeded,
    Failed {
        error: String,
        retryable: bool,
    },
    /// The daemon could not start it for its own reasons (out of descriptors, processes
    /// or memory; a full or read-only disk): nothing of the job ran, so nothing is
    /// charged to it (failure mode 25).
    NotStarted {
        error: String,
    },
}

/// What [`Coordinator::finish`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finished {
    Completed,
    Retry {
        run_after: WallMs,
    },
    Failed,
    Released,
    /// Requeued after a lost lease or a timeout kill, no outcome recorded.
    Abandoned,
    /// Stopped and recorded `cancelled` at an operator's request.
    Cancelled,
    /// Not started for the daemon's own reasons: back to pending at `run_after`, the
    /// attempt given back.
    Postponed {
        run_after: WallMs,
    },
    /// Nothing recorded: the lease was not ours (lost, fenced) or the store refused.
    Discarded(&'static str),
    /// The store was unavailable; the result is kept and retried.
    Deferred,
}

#[derive(Default)]
struct State {
    leases: BTreeMap<JobId, Lease>,
    shutdown: Option<Shutdown>,
    fenced: bool,
    /// The database is unusable: nothing is claimed or recorded, every run is stopped.
    halted: bool,
    /// Monotonic time of the leader row's last successful refresh.
    leader_at: Option<MonoMs>,
    /// The last renewal could not be written (the store was unavailable: busy past its
    /// timeout, a full disk). A lease that runs out meanwhile ran out for the daemon's
    /// trouble, however recently the leader row was refreshed.
    renew_unwritable: bool,
    /// Stop decisions not yet carried out (see [`Coordinator::take_stops`]).
    stops: Vec<(JobId, StopReason)>,
    /// Set while job starts fail for the daemon's own reasons.
    throttle: Option<Throttle>,
}

/// Backing off while the daemon lacks a resource to start jobs with (descriptors,
/// processes, memory, disk): claims pause, and then come back under a cap that starts at
/// what did run and grows by one with every start that succeeds, so the daemon settles
/// at what the machine allows instead of claiming, failing and requeueing in a loop.
#[derive(Clone, Copy, Debug)]
struct Throttle {
    /// At most this many leases at once.
    cap: u32,
    /// Failure episodes in a row (each a pause twice as long as the last, capped). An
    /// episode is a pause; failures of runs claimed before it began belong to it.
    episodes: u32,
    /// A pause is due: it starts at the next claim (which knows the monotonic time).
    pause_due: bool,
    /// No claims before this monotonic time.
    paused_until: MonoMs,
    /// Claims went to the store since the pause: a failure now is a new episode.
    resumed: bool,
}

/// The first pause after a job could not be started for want of a resource.
pub const RESOURCE_BACKOFF_MS: i64 = 50;
/// The longest such pause.
pub const RESOURCE_BACKOFF_CAP_MS: i64 = 5_000;

fn resource_backoff_ms(episodes: u32) -> i64 {
    RESOURCE_BACKOFF_MS.saturating_mul(1 << episodes.min(16)).min(RESOURCE_BACKOFF_CAP_MS)
}

impl State {
    fn stop(&mut self, id: JobId, reason: StopReason) {
        if let Some(l) = self.leases.get_mut(&id) {
            l.stop = Some(reason);
            self.stops.push((id, reason));
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Shutdown {
    grace_ends: MonoMs,
}

pub struct Coordinator<S> {
    pub cfg: EngineConfig,
    pub epoch: Epoch,
    state: Mutex<State>,
    store: Mutex<S>,
    /// Child records waiting for the store, and answers for those another thread took.
    children: Mutex<ChildRecords>,
}

/// Child identities to record, combined: whichever job thread holds the store records
/// every identity queued meanwhile in one store call ([`JobStore::record_children`]: one
/// transaction on SQLite), and leaves the others' answers here. A restart starts its
/// whole wave of held children at once; one transaction each, queued on the store one
/// after another, kept every child after the first few waiting for its release.
#[derive(Default)]
struct ChildRecords {
    queued: Vec<(ClaimRef, ChildIdentity)>,
    /// Keyed by the whole claim, not the job id: an answer meant for one claim of a job
    /// is never taken by a thread recording for another claim of the same job.
    answered: Vec<(ClaimRef, StoreResult<bool>)>,
}

/// What one [`Coordinator::renew_told`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// Nothing to renew (no lease worth keeping, or fenced or halted): no store call.
    Nothing,
    /// Written (any lease the store did not renew was lost).
    Written,
    /// The store could not take it (busy past its timeout, a full disk): why.
    Refused(String),
    /// The store said this daemon is fenced.
    Fenced,
}

impl<S: JobStore> Coordinator<S> {
    pub fn new(cfg: EngineConfig, epoch: Epoch, store: S) -> Coordinator<S> {
        Coordinator {
            cfg,
            epoch,
            state: Mutex::new(State::default()),
            store: Mutex::new(store),
            children: Mutex::new(ChildRecords::default()),
        }
    }

    /// The process groups recorded by runs still marked running: startup kills these
    /// (and waits until they are gone) before [`Coordinator::recover`] commits anything.
    pub fn orphan_children(&self) -> Result<Vec<(JobId, ChildIdentity)>, StoreError> {
        sync::lock(&self.store).orphan_children(self.epoch)
    }

    /// Startup recovery: every running row is an orphan (the epoch is ours).
    pub fn recover(&self, now_wall: WallMs) -> Result<Recovered, StoreError> {
        let policy = OrphanPolicy {
            retry_at: now_wall + self.cfg.orphan_retry_delay_ms,
            max_interruptions: self.cfg.max_interruptions,
        };
        let r = sync::lock(&self.store).recover(self.epoch, policy, now_wall);
        if r == Err(StoreError::Fenced) {
            self.fence();
        }
        r
    }

    /// Claims what fits, unless shutting down, fenced or standing down.
    ///
    /// The store is called without the state lock held (it may block on the database for
    /// `busy_timeout`), so lease deadlines keep being enforced meanwhile. A shutdown that
    /// begins during the call does not lose what was claimed: the leases are registered
    /// and the drain releases them.
    ///
    /// With as many leases as the global cap, the store is not asked (no write
    /// transaction is opened): every lease is a `running` row of ours (registered after
    /// its claim commits, removed before its outcome is recorded), so there is no room.
    pub fn claim(&self, now_mono: MonoMs, now_wall: WallMs) -> Vec<Claimed> {
        {
            let st = sync::lock(&self.state);
            if st.fenced || st.halted || st.shutdown.is_some() || self.leader_stale(&st, now_mono) {
                return Vec::new();
            }
            if st.leases.len() >= self.cfg.limits.global as usize {
                return Vec::new();
            }
        }
        let mut limits = std::borrow::Cow::Borrowed(&self.cfg.limits);
        {
            let mut st = sync::lock(&self.state);
            let held = st.leases.len();
            if let Some(t) = st.throttle.as_mut() {
                if t.pause_due {
                    t.pause_due = false;
                    t.paused_until = now_mono + resource_backoff_ms(t.episodes);
                }
                if now_mono < t.paused_until || held >= t.cap as usize {
                    return Vec::new();
                }
                t.resumed = true;
                limits.to_mut().global = t.cap;
            }
        }
        let result = sync::lock(&self.store).claim(self.epoch, &self.cfg.worker, &limits, now_wall);
        let mut st = sync::lock(&self.state);
        match result {
            Ok(claimed) => {
                for c in &claimed {
                    let timeout_at = c.timeout_ms.map(|t| now_mono + t as i64);
                    let lease = Lease {
                        job: c.clone(),
                        renewed_at: now_mono,
                        timeout_at,
                        stop: None,
                        child: None,
                        unrecorded: None,
                        ended: false,
                        exited_unstopped: false,
                    };
                    st.leases.insert(c.id, lease);
                    // Fenced during the call: the run must be stopped before it starts.
                    if st.fenced {
                        st.stop(c.id, StopReason::Fenced);
                    }
                }
                claimed
            }
            Err(StoreError::Fenced) => {
                fence_locked(&mut st);
                Vec::new()
            }
            Err(StoreError::Unavailable(_)) => Vec::new(),
        }
    }

    /// [`Coordinator::record_child_outcome`], as "recorded, and the child may run".
    pub fn record_child(&self, id: JobId, child: ChildIdentity) -> bool {
        self.record_child_outcome(id, child) == ChildRecorded::Recorded
    }

    /// Records a held child's identity before it is released. `false`: do not release it
    /// (the lease is not ours any more); the runner kills it unreleased.
    pub fn record_child_outcome(&self, id: JobId, child: ChildIdentity) -> ChildRecorded {
        let claim = {
            let st = sync::lock(&self.state);
            match st.leases.get(&id).filter(|l| l.stop.is_none()) {
                Some(l) => l.job.claim_ref(self.epoch),
                None => return ChildRecorded::NotOurs,
            }
        };
        let result = self.record_child_combined(claim.clone(), child.clone());
        let mut st = sync::lock(&self.state);
        match result {
            // Recorded, and still ours now: the same claim, not stopped while the store
            // was busy.
            Ok(true) => {
                match st.leases.get_mut(&id).filter(|l| l.stop.is_none() && l.job.claim_ref(self.epoch) == claim) {
                    Some(l) => {
                        l.child = Some(child);
                        // A start succeeded: the resource is back, at least this far.
                        let global = self.cfg.limits.global;
                        if let Some(t) = st.throttle.as_mut() {
                            t.episodes = 0;
                            t.cap += 1;
                            if t.cap >= global {
                                st.throttle = None;
                            }
                        }
                        ChildRecorded::Recorded
                    }
                    None => ChildRecorded::NotOurs,
                }
            }
            Ok(false) => ChildRecorded::NotOurs,
            Err(StoreError::Unavailable(_)) => ChildRecorded::Unavailable,
            Err(StoreError::Fenced) => {
                fence_locked(&mut st);
                ChildRecorded::NotOurs
            }
        }
    }

    /// Records `child` on `claim`'s run, together with every other record queued by the
    /// time this thread holds the store. Each record is still guarded on its own claim
    /// and answered on its own, and each answer is back before its child may be released:
    /// a thread's record is either taken by the thread that held the store before it,
    /// which answers it before letting go of the store, or still queued when this thread
    /// holds the store, and taken now.
    fn record_child_combined(&self, claim: ClaimRef, child: ChildIdentity) -> StoreResult<bool> {
        sync::lock(&self.children).queued.push((claim.clone(), child));
        let mut store = sync::lock(&self.store);
        let batch = {
            let mut records = sync::lock(&self.children);
            if let Some(i) = records.answered.iter().position(|(c, _)| *c == claim) {
                return records.answered.swap_remove(i).1;
            }
            std::mem::take(&mut records.queued)
        };
        let answers = store.record_children(&batch);
        let mut records = sync::lock(&self.children);
        let mut ours = Err(StoreError::Unavailable(String::from("the record was not answered")));
        let mut answers = answers.into_iter();
        for (c, _) in batch {
            let answer = answers
                .next()
                .unwrap_or_else(|| Err(StoreError::Unavailable(String::from("the record was not answered"))));
            if c == claim {
                ours = answer;
            } else {
                records.answered.push((c, answer));
            }
        }
        ours
    }

    /// Renews every lease still worth keeping (running, or being stopped for shutdown or a
    /// timeout: the row must stay ours until released). Returns the ids whose lease turned
    /// out lost, now marked to be killed. The store is called without the state lock.
    pub fn renew(&self, now_mono: MonoMs, now_wall: WallMs) -> Vec<JobId> {
        self.renew_told(now_mono, now_wall).0
    }

    /// [`Coordinator::renew`], also telling what this call did (for the engine's event).
    pub fn renew_told(&self, now_mono: MonoMs, now_wall: WallMs) -> (Vec<JobId>, Renewal) {
        let held: Vec<(JobId, String)> = {
            let st = sync::lock(&self.state);
            if st.fenced || st.halted {
                return (Vec::new(), Renewal::Nothing);
            }
            st.leases
                .values()
                .filter(|l| !matches!(l.stop, Some(StopReason::LeaseLost | StopReason::Fenced)))
                .map(|l| (l.job.id, l.job.token.clone()))
                .collect()
        };
        if held.is_empty() {
            return (Vec::new(), Renewal::Nothing);
        }
        let result = sync::lock(&self.store).renew(self.epoch, &held, now_wall);
        let mut st = sync::lock(&self.state);
        match result {
            Ok(ours) => {
                st.renew_unwritable = false;
                let mut lost = Vec::new();
                for (id, token) in held {
                    // Finished (or re-claimed under a new token) while the store was busy:
                    // nothing to update.
                    let Some(lease) = st.leases.get_mut(&id).filter(|l| l.job.token == token) else { continue };
                    if ours.contains(&id) {
                        // A renewal counts from before the call: conservative.
                        lease.renewed_at = lease.renewed_at.max(now_mono);
                    } else if !matches!(lease.stop, Some(StopReason::LeaseLost | StopReason::Fenced)) {
                        lost.push(id);
                    }
                }
                for id in &lost {
                    st.stop(*id, StopReason::LeaseLost);
                }
                (lost, Renewal::Written)
            }
            Err(StoreError::Fenced) => (fence_locked(&mut st), Renewal::Fenced),
            // Not renewed: the deadlines in `due` decide when to give up.
            Err(StoreError::Unavailable(why)) => {
                st.renew_unwritable = true;
                (Vec::new(), Renewal::Refused(why))
            }
        }
    }

    /// Leases whose process must be stopped now, each marked with its reason (and queued
    /// for the watchdog): past the lease's kill-by time (which also covers a leader row
    /// that could not be refreshed: the daemon stands down), past the job's timeout, or
    /// past the shutdown grace.
    pub fn due(&self, now_mono: MonoMs) -> Vec<(JobId, StopReason)> {
        let mut st = sync::lock(&self.state);
        let grace_over = st.shutdown.is_some_and(|s| now_mono >= s.grace_ends);
        let leader_at = st.leader_at;
        // The daemon's trouble, not the job's: the leader row has gone unrefreshed, or the
        // renewals themselves cannot be written. (The leader row alone is not enough: a
        // lease claimed after its last refresh runs out first.)
        let standing_down = self.leader_stale(&st, now_mono) || st.renew_unwritable;
        let mut out = Vec::new();
        for lease in st.leases.values().filter(|l| l.may_stop() && l.unrecorded.is_none()) {
            let lease_expired = now_mono >= lease.kill_by(&self.cfg, leader_at)
                && !crate::mutant::active(crate::mutant::NO_LEASE_SELF_KILL);
            let reason = if lease_expired && standing_down {
                Some(StopReason::StandDown)
            } else if lease_expired {
                Some(StopReason::LeaseLost)
            } else if lease.timeout_at.is_some_and(|t| now_mono >= t) {
                Some(StopReason::Timeout)
            } else if grace_over {
                Some(StopReason::Shutdown)
            } else {
                None
            };
            if let Some(r) = reason {
                out.push((lease.job.id, r));
            }
        }
        for (id, r) in &out {
            st.stop(*id, *r);
        }
        out
    }

    /// Takes the stop decisions made since the last call (by `due`, renewals, fencing, a
    /// claim that raced a fence). The watchdog carries them out.
    pub fn take_stops(&self) -> Vec<(JobId, StopReason)> {
        std::mem::take(&mut sync::lock(&self.state).stops)
    }

    /// The earliest monotonic time at which [`Coordinator::due`] could return something.
    pub fn next_deadline(&self) -> Option<MonoMs> {
        let st = sync::lock(&self.state);
        // The grace's end matters only while some run may still be stopped by it (once
        // past, it would wake the watchdog at once, again and again).
        let grace = st.shutdown.map(|s| s.grace_ends).filter(|_| st.leases.values().any(Lease::may_stop));
        st.leases
            .values()
            .filter(|l| l.may_stop())
            .flat_map(|l| [Some(l.kill_by(&self.cfg, st.leader_at)), l.timeout_at])
            .chain([grace])
            .flatten()
            .min()
    }

    /// An operator asked to cancel job `id`: stop its run (queued for the watchdog) unless
    /// it is already ending. Returns whether this daemon holds it.
    pub fn request_cancel(&self, id: JobId) -> bool {
        let mut st = sync::lock(&self.state);
        match st.leases.get(&id) {
            Some(l) if l.may_stop() && l.unrecorded.is_none() => {
                st.stop(id, StopReason::Cancelled);
                true
            }
            Some(_) => true,
            None => false,
        }
    }

    /// The leader row was refreshed at `now_mono` (the supervisor calls this).
    pub fn note_leader_refresh(&self, now_mono: MonoMs) {
        let mut st = sync::lock(&self.state);
        st.leader_at = Some(st.leader_at.map_or(now_mono, |t| t.max(now_mono)));
    }

    /// Whether the leader row has gone unrefreshed long enough that every run must stop
    /// and nothing may be claimed (standing down) until it is refreshed again.
    pub fn standing_down(&self, now_mono: MonoMs) -> bool {
        self.leader_stale(&sync::lock(&self.state), now_mono)
    }

    fn leader_stale(&self, st: &State, now_mono: MonoMs) -> bool {
        st.leader_at.is_some_and(|t| now_mono >= t + self.cfg.stale_ms - self.cfg.kill_grace_ms - self.cfg.margin_ms())
    }

    /// Stop claiming; let running jobs finish until `grace_ms` from now (a second call
    /// can only shorten it).
    pub fn begin_shutdown(&self, now_mono: MonoMs, grace_ms: i64) {
        let mut st = sync::lock(&self.state);
        let ends = now_mono + grace_ms;
        let grace_ends = st.shutdown.map_or(ends, |s| s.grace_ends.min(ends));
        st.shutdown = Some(Shutdown { grace_ends });
    }

    pub fn shutting_down(&self) -> bool {
        sync::lock(&self.state).shutdown.is_some()
    }

    /// Another daemon holds the epoch: every run that has not ended must stop (queued for
    /// the watchdog). Returns their ids.
    pub fn fence(&self) -> Vec<JobId> {
        fence_locked(&mut sync::lock(&self.state))
    }

    pub fn fenced(&self) -> bool {
        sync::lock(&self.state).fenced
    }

    /// The database is unusable (corrupt): claim nothing more, record nothing, stop every
    /// run that has not ended (queued for the watchdog). Their rows stay `running` for the
    /// next start's recovery, which kills their recorded groups first. Returns their ids.
    pub fn halt(&self) -> Vec<JobId> {
        let mut st = sync::lock(&self.state);
        st.halted = true;
        let ids: Vec<JobId> = st.leases.values().filter(|l| !l.ended && l.stop.is_none()).map(|l| l.job.id).collect();
        for id in &ids {
            st.stop(*id, StopReason::Halted);
        }
        ids
    }

    pub fn halted(&self) -> bool {
        sync::lock(&self.state).halted
    }

    /// Ids of the jobs this coordinator holds.
    pub fn held(&self) -> Vec<JobId> {
        sync::lock(&self.state).leases.keys().copied().collect()
    }

    /// Runs `f` on the store (tests and model checks inspect it this way).
    pub fn with_store<R>(&self, f: impl FnOnce(&mut S) -> R) -> R {
        f(&mut sync::lock(&self.store))
    }

    pub fn lease(&self, id: JobId) -> Option<Lease> {
        sync::lock(&self.state).leases.get(&id).cloned()
    }

    /// The job's work has ended (for `exec`: its whole process group is gone). Called by
    /// the job's own thread at once, so a deadline passing before the engine records the
    /// result does not turn a finished run into a stopped one.
    pub fn mark_ended(&self, id: JobId) {
        if let Some(l) = sync::lock(&self.state).leases.get_mut(&id) {
            l.ended = true;
        }
    }

    /// The job's program (an `exec` job's group leader) has exited, its group maybe not
    /// yet gone. If no stop was decided before, no deadline or cancel stops it from now
    /// on, and a stop that still comes (a lost lease told by a renewal) does not change
    /// what is recorded: the program ended on its own, and its result stands (a timeout or
    /// a shutdown grace running out while its leftover group is killed or its output
    /// drained must not turn a success into a retry).
    pub fn mark_exited(&self, id: JobId) {
        if let Some(l) = sync::lock(&self.state).leases.get_mut(&id) {
            l.exited_unstopped = l.stop.is_none();
        }
    }

    /// A job's process (or work) ended with `result`: record what its lease allows. The
    /// lease leaves the table first, so the store is called without the state lock.
    pub fn finish(&self, id: JobId, result: JobResult, now_wall: WallMs, jitter: f64) -> Finished {
        let mut out = self.finish_many(vec![(id, result)], now_wall, || jitter);
        out.pop().map_or(Finished::Discarded("no lease"), |(_, f)| f)
    }

    /// [`Coordinator::finish`] for every run that ended together, recorded with one store
    /// call ([`JobStore::record_many`]: one transaction, one fsync). Returns (id, what
    /// happened) in the order given; `jitter` is drawn once per recorded failure.
    pub fn finish_many(
        &self,
        ended: Vec<(JobId, JobResult)>,
        now_wall: WallMs,
        mut jitter: impl FnMut() -> f64,
    ) -> Vec<(JobId, Finished)> {
        let mut out: Vec<(JobId, Option<Finished>)> = Vec::with_capacity(ended.len());
        let mut taken: Vec<(usize, Lease, JobResult, Record)> = Vec::new();
        {
            let mut st = sync::lock(&self.state);
            for (id, result) in ended {
                let Some(lease) = st.leases.remove(&id) else {
                    out.push((id, Some(Finished::Discarded("no lease"))));
                    continue;
                };
                if st.fenced {
                    out.push((id, Some(Finished::Discarded("fenced"))));
                    continue;
                }
                if st.halted {
                    out.push((id, Some(Finished::Discarded("halted"))));
                    continue;
                }
                let episodes = st.throttle.map_or(0, |t| t.episodes);
                match self.plan(&lease, &result, now_wall, episodes, &mut jitter) {
                    None => out.push((id, Some(Finished::Discarded("fenced")))),
                    Some(what) => {
                        taken.push((out.len(), lease, result, what));
                        out.push((id, None));
                    }
                }
            }
        }
        if taken.is_empty() {
            return out.into_iter().map(|(id, f)| (id, f.expect("decided"))).collect();
        }
        let items: Vec<RecordItem> =
            taken.iter().map(|(_, l, _, what)| (l.job.claim_ref(self.epoch), what.clone())).collect();
        let recorded = sync::lock(&self.store).record_many(&items, now_wall);
        debug_assert_eq!(recorded.len(), items.len());
        let mut st = sync::lock(&self.state);
        if taken.iter().any(|(_, _, _, what)| matches!(what, Record::Requeue { .. })) {
            // Back off: pause claims (from the next claim on), then claim no more than
            // what runs now, growing again with each start that succeeds. Failures of
            // runs claimed before the pause began are the same episode, not new ones.
            let running = (st.leases.len() as u32).max(1);
            st.throttle = Some(match st.throttle {
                None => {
                    Throttle { cap: running, episodes: 0, pause_due: true, paused_until: MonoMs(0), resumed: false }
                }
                Some(t) if t.resumed => Throttle {
                    cap: t.cap.min(running),
                    episodes: t.episodes + 1,
                    pause_due: true,
                    paused_until: t.paused_until,
                    resumed: false,
                },
                Some(t) => Throttle { cap: t.cap.min(running), ..t },
            });
        }
        for ((slot, mut lease, result, what), r) in taken.into_iter().zip(recorded) {
            out[slot].1 = Some(match r {
                Err(StoreError::Fenced) => {
                    fence_locked(&mut st);
                    Finished::Discarded("fenced")
                }
                Err(StoreError::Unavailable(_)) => {
                    lease.unrecorded = Some(result);
                    st.leases.insert(lease.job.id, lease);
                    Finished::Deferred
                }
                Ok(r) => finished(&what, r),
            });
        }
        out.into_iter().map(|(id, f)| (id, f.expect("decided"))).collect()
    }

    /// Retries results the store could not take. Returns (id, what happened) for each.
    pub fn retry_unrecorded(&self, now_wall: WallMs, jitter: impl FnMut() -> f64) -> Vec<(JobId, Finished)> {
        let pending: Vec<(JobId, JobResult)> = sync::lock(&self.state)
            .leases
            .values()
            .filter_map(|l| l.unrecorded.clone().map(|r| (l.job.id, r)))
            .collect();
        self.finish_many(pending, now_wall, jitter)
    }

    /// What `lease` may record for `result`; `None`: nothing (a fenced run).
    /// `episodes`: resource-failure episodes in a row so far (the throttle's).
    fn plan(
        &self,
        lease: &Lease,
        result: &JobResult,
        now: WallMs,
        episodes: u32,
        jitter: &mut impl FnMut() -> f64,
    ) -> Option<Record> {
        let stop = match lease.stop {
            // Whenever decided: a fenced or halted daemon writes nothing.
            Some(StopReason::Fenced | StopReason::Halted) => return None,
            // Decided after the program had exited on its own: it did not end the run.
            Some(_) if lease.exited_unstopped && !crate::mutant::active(crate::mutant::LATE_STOP_OVERRIDES) => None,
            stop => stop,
        };
        Some(match stop {
            Some(StopReason::LeaseLost) => {
                Record::Abandon { reason: String::from("lease lost: the run was stopped before its lease expired") }
            }
            Some(StopReason::Fenced | StopReason::Halted) => return None,
            Some(StopReason::Cancelled) => Record::Cancel,
            Some(StopReason::StandDown) if crate::mutant::active(crate::mutant::STAND_DOWN_CHARGED) => {
                Record::Abandon { reason: String::from("lease lost: the run was stopped before its lease expired") }
            }
            Some(StopReason::Shutdown | StopReason::StandDown) => {
                Record::Release { max_interruptions: self.cfg.max_interruptions }
            }
            Some(StopReason::Timeout) => Record::Fail {
                error: format!("timed out after {} ms", lease.job.timeout_ms.unwrap_or(0)),
                retryable: true,
                retry_at: now + self.cfg.backoff_ms(lease.job.attempt, jitter()),
            },
            None => match result {
                // The mutant charges the daemon's trouble to the job, as a failed attempt.
                JobResult::NotStarted { error } if crate::mutant::active(crate::mutant::FD_ERRORS_CHARGED) => {
                    Record::Fail {
                        error: error.clone(),
                        retryable: true,
                        retry_at: now + self.cfg.backoff_ms(lease.job.attempt, jitter()),
                    }
                }
                JobResult::NotStarted { error } => Record::Requeue {
                    reason: format!("not started: {error}"),
                    retry_at: now + resource_backoff_ms(episodes),
                },
                JobResult::Succeeded => Record::Complete,
                JobResult::Failed { error, retryable } => Record::Fail {
                    error: error.clone(),
                    retryable: *retryable,
                    retry_at: now + self.cfg.backoff_ms(lease.job.attempt, jitter()),
                },
            },
        })
    }
}

/// What recording `what` came to, for the caller.
fn finished(what: &Record, r: Recorded) -> Finished {
    match (what, r) {
        (Record::Abandon { .. }, Recorded::NotOwner) => Finished::Discarded("lease lost"),
        (_, Recorded::NotOwner) => Finished::Discarded("not the owner"),
        (_, Recorded::Completed) => Finished::Completed,
        (Record::Abandon { .. }, Recorded::Ended(FailOutcome::Retry { .. })) => Finished::Abandoned,
        (Record::Release { .. }, Recorded::Ended(FailOutcome::Retry { .. })) => Finished::Released,
        (Record::Requeue { .. }, Recorded::Ended(FailOutcome::Retry { run_after })) => {
            Finished::Postponed { run_after }
        }
        (_, Recorded::Ended(FailOutcome::Retry { run_after })) => Finished::Retry { run_after },
        (_, Recorded::Ended(FailOutcome::Failed)) => Finished::Failed,
        (_, Recorded::Ended(FailOutcome::Cancelled)) => Finished::Cancelled,
    }
}

fn fence_locked(st: &mut State) -> Vec<JobId> {
    st.fenced = true;
    let ids: Vec<JobId> = st.leases.values().filter(|l| !l.ended && l.unrecorded.is_none()).map(|l| l.job.id).collect();
    for id in &ids {
        st.stop(*id, StopReason::Fenced);
    }
    ids
}

#[cfg(test)]
mod tests;
