//! Loom model checking of the coordinator the daemon runs (`engine::coordinator`, not a
//! toy), over the in-memory store, with the runner's actors around it: workers (the job
//! threads and the engine's claim/finish calls), lease supervision (the engine's renewals
//! and the watchdog's `due` + `take_stops`), a shutdown signal, a clock, and a second
//! daemon that takes the database over. Every interleaving (bounded by
//! `LOOM_MAX_PREEMPTIONS`, default 3) of:
//!
//! - `shutdown_releases_what_it_claimed`: two workers, the watchdog, a shutdown signal
//!   and the clock: no job executed by two owners at once; a job claimed during shutdown
//!   is released with its attempt given back, not lost; shutdown always terminates.
//! - `an_unrenewable_lease_is_given_up_before_it_can_be_taken_over`: a worker whose
//!   daemon can no longer refresh its leader row, the watchdog, the clock and a takeover:
//!   the run is stopped before its lease could be taken over; no overlap with the new
//!   daemon's run; the worker that lost its lease records no outcome.
//! - `a_zombie_never_records_an_outcome`: a run ends, its daemon pauses before recording
//!   the result, another daemon recovers and re-runs the job: the old result never lands.
//! - `a_fenced_daemon_stops_everything`: a takeover seen by a renewal or a claim stops
//!   every run, and the fenced daemon records nothing.
//!
//! ```sh
//! RUSTFLAGS="--cfg homer_loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test -p homerd --release --test loom -- --nocapture
//! ```
//!
//! Time is a value the clock actor sets; the physical assumptions the protocol rests on
//! are encoded as waits, and nothing else is: the watchdog evaluates deadlines soon after
//! the clock passes them, a kill takes effect within `kill_grace`, and startup recovery
//! kills an orphan's recorded group and waits until it is gone (`runner::recover`).
//! The coordinator's own locks are loom's here (`homerd::sync` under `--cfg homer_loom`),
//! so loom switches threads around each of its critical sections too; every part of
//! these models runs under loom, none needed shuttle's randomized schedules.
#![cfg(homer_loom)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};

use homerd::engine::coordinator::{Coordinator, EngineConfig, Finished, JobResult};
use homerd::engine::jobstore::{JobStore, Record, RecordItem, Recorded, StoreResult};
use homerd::engine::memory::MemoryStore;
use homerd::job::{
    ChildIdentity, ClaimLimits, ClaimRef, Claimed, Epoch, JobId, JobStatus, MonoMs, NewJob, OrphanPolicy, Recovered,
    WallMs,
};
use loom::sync::{Arc, Condvar, Mutex, MutexGuard};
use loom::thread;

/// Runs `f` under every interleaving loom explores; prints how many there were.
fn model(name: &str, f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(DEFAULT_PREEMPTIONS);
    }
    let bound = b.preemption_bound;
    let runs = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let started = std::time::Instant::now();
    b.check(move || {
        counted.fetch_add(1, Ordering::Relaxed);
        f();
    });
    println!(
        "loom: {name}: {} interleavings, preemption bound {bound:?}, {:.1}s",
        runs.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
}

/// `LOOM_MAX_PREEMPTIONS` when unset. 3 explores the suite's 2.7 million interleavings in
/// about four and a half minutes here; 2 (35,000, seconds) misses the double release in
/// `shutdown_releases_what_it_claimed` (a claim racing the signal takes a job the drain
/// has just released).
const DEFAULT_PREEMPTIONS: usize = 3;

fn cfg() -> EngineConfig {
    // 100 ms heartbeats, a 1 s stale threshold, 200 ms kill grace: a lease must be given
    // up by renewal + 750 ms; a takeover may come at 1000 ms.
    let mut cfg = EngineConfig {
        shutdown_grace_ms: 100,
        backoff_base_ms: 10,
        backoff_cap_ms: 100,
        max_interruptions: 5,
        ..EngineConfig::for_tests()
    };
    cfg.limits = ClaimLimits { global: 4, lanes: BTreeMap::new(), default_lane: 4, batch: 1 };
    cfg
}

const KILL_BY: i64 = 750;
const STALE: i64 = 1000;

fn jobs(n: usize) -> MemoryStore {
    let mut store = MemoryStore::new(Epoch(1));
    for _ in 0..n {
        store.enqueue(&NewJob::new("exec", "l", 3));
    }
    store
}

/// The shared database holding `n` jobs, and daemon 1's coordinator on it (epoch 1).
fn first_daemon(n: usize) -> (Db, Arc<Coordinator<Db>>) {
    let db = Db::new(jobs(n));
    let a = Arc::new(Coordinator::new(cfg(), Epoch(1), db.clone()));
    (db, a)
}

// ---------------------------------------------------------------------------------------
// The database every daemon shares

/// The one database: a `MemoryStore` behind a lock, shared by every daemon's coordinator.
/// It records every outcome that landed for a claim that no longer owned the job (a
/// zombie's) or under an epoch that was no longer current.
#[derive(Clone)]
struct Db(Arc<Mutex<DbState>>);

struct DbState {
    store: MemoryStore,
    zombie_outcomes: Vec<String>,
    stale_outcomes: Vec<String>,
    /// Outcome calls made under the current epoch with a token that is not the job's
    /// current claim: the only calls the owner/token guard alone stands between. None
    /// may happen (see [`assert_no_zombie_outcome`]).
    token_only: Vec<String>,
}

impl Db {
    fn new(store: MemoryStore) -> Db {
        Db(Arc::new(Mutex::new(DbState {
            store,
            zombie_outcomes: Vec::new(),
            stale_outcomes: Vec::new(),
            token_only: Vec::new(),
        })))
    }

    fn lock(&self) -> MutexGuard<'_, DbState> {
        self.0.lock().unwrap()
    }

    /// Another daemon takes the leader row.
    fn bump_epoch(&self) -> Epoch {
        let mut db = self.lock();
        db.store.epoch = Epoch(db.store.epoch.0 + 1);
        db.store.epoch
    }

    fn job(&self, id: JobId) -> (JobStatus, u32, u32) {
        let db = self.lock();
        let j = &db.store.jobs[&id];
        (j.status, j.attempts, j.interruptions)
    }

    /// Records one outcome, noting it if it landed for a claim that did not own the job
    /// when it was made, or under an epoch that was no longer current.
    fn outcome(&self, claim: &ClaimRef, what: &Record, now: WallMs) -> StoreResult<Recorded> {
        let what_name = match what {
            Record::Complete => "completion",
            Record::Fail { .. } => "failure",
            Record::Release { .. } => "release",
            Record::Abandon { .. } => "abandon",
            Record::Cancel => "cancellation",
            Record::Requeue { .. } => "unstarted requeue",
        };
        let (epoch, id) = (claim.epoch, claim.id);
        let mut db = self.lock();
        let owner = db.store.jobs.get(&id).and_then(|j| j.token.clone());
        let current = db.store.epoch;
        if epoch == current && owner.as_deref() != Some(claim.token.as_str()) {
            db.token_only.push(format!("{what_name} of job {id} by a claim of this epoch that does not own it"));
        }
        let r = db.store.record_many(&[(claim.clone(), what.clone())], now).remove(0);
        if r.as_ref().is_ok_and(|r| *r != Recorded::NotOwner) {
            if owner.as_deref() != Some(claim.token.as_str()) {
                db.zombie_outcomes.push(format!("{what_name} of job {id} by a claim that no longer owned it"));
            }
            if epoch != current {
                db.stale_outcomes.push(format!("{what_name} of job {id} under stale epoch {epoch}"));
            }
        }
        r
    }

    fn call<R>(&self, f: impl FnOnce(&mut MemoryStore) -> StoreResult<R>) -> StoreResult<R> {
        f(&mut self.lock().store)
    }
}

impl JobStore for Db {
    fn claim(&mut self, epoch: Epoch, worker: &str, limits: &ClaimLimits, now: WallMs) -> StoreResult<Vec<Claimed>> {
        self.call(|s| s.claim(epoch, worker, limits, now))
    }
    fn renew(&mut self, epoch: Epoch, held: &[(JobId, String)], now: WallMs) -> StoreResult<Vec<JobId>> {
        self.call(|s| s.renew(epoch, held, now))
    }
    fn record_child(&mut self, claim: &ClaimRef, child: &ChildIdentity) -> StoreResult<bool> {
        self.call(|s| s.record_child(claim, child))
    }
    /// One by one, each noted (see [`Db::outcome`]).
    fn record_many(&mut self, items: &[RecordItem], now: WallMs) -> Vec<StoreResult<Recorded>> {
        items.iter().map(|(claim, what)| self.outcome(claim, what, now)).collect()
    }
    fn orphan_children(&mut self, epoch: Epoch) -> StoreResult<Vec<(JobId, ChildIdentity)>> {
        self.call(|s| s.orphan_children(epoch))
    }
    fn recover(&mut self, epoch: Epoch, policy: OrphanPolicy, now: WallMs) -> StoreResult<Recovered> {
        self.call(|s| s.recover(epoch, policy, now))
    }
}

// ---------------------------------------------------------------------------------------
// The world around the daemons: the clock, the children, what executes

/// A job's run as the runner sees it: registered when the claim returns, a held child
/// spawned, released (executing) unless stopped first, ended.
#[derive(Default)]
struct Run {
    pgid: Option<u32>,
    /// A stop (the own watchdog's) or a kill (a recovering daemon's) reached it.
    stopped: bool,
    executing: bool,
    /// Its work is over (or never started): the group is gone.
    ended: bool,
}

#[derive(Default)]
struct Board {
    now: i64,
    /// Bumped on every change, so a waiter never misses one.
    version: u64,
    /// (daemon, job) -> its run.
    runs: BTreeMap<(u8, JobId), Run>,
    /// job -> the daemon whose run executes it: the effects probe's flock in the harness.
    executing: BTreeMap<JobId, u8>,
    /// daemon -> the latest time its watchdog evaluated.
    watched: BTreeMap<u8, i64>,
    /// Workers whose claim returned / that are done (the engine hears of it).
    claims_tried: u32,
    workers_done: u32,
}

struct World {
    board: Mutex<Board>,
    changed: Condvar,
}

impl World {
    fn new() -> Arc<World> {
        Arc::new(World { board: Mutex::new(Board::default()), changed: Condvar::new() })
    }

    fn update<R>(&self, f: impl FnOnce(&mut Board) -> R) -> R {
        let mut b = self.board.lock().unwrap();
        let r = f(&mut b);
        b.version += 1;
        drop(b);
        self.changed.notify_all();
        r
    }

    /// Like `update`, but not a change a watchdog must react to (its own bookkeeping):
    /// waiters are woken, the version stays.
    fn note(&self, f: impl FnOnce(&mut Board)) {
        f(&mut self.board.lock().unwrap());
        self.changed.notify_all();
    }

    fn read<R>(&self, f: impl FnOnce(&Board) -> R) -> R {
        f(&self.board.lock().unwrap())
    }

    /// Blocks until `ready` holds.
    fn wait_until(&self, ready: impl Fn(&Board) -> bool) {
        let mut b = self.board.lock().unwrap();
        while !ready(&b) {
            b = self.changed.wait(b).unwrap();
        }
    }

    fn now(&self) -> i64 {
        self.read(|b| b.now)
    }

    fn advance(&self, to: i64) {
        self.update(|b| b.now = to);
    }

    /// A stop decided by daemon `d`'s watchdog, for its run of `job`. A run that already
    /// ended (or is not registered yet) has nothing to stop, as in `runner::stop_job`.
    fn stop(&self, d: u8, job: JobId) {
        self.update(|b| {
            if let Some(r) = b.runs.get_mut(&(d, job)) {
                r.stopped = true;
            }
        });
    }

    /// Startup recovery's `kill_recorded_group`: kill the group, wait until it is gone.
    fn kill_and_wait(&self, pgid: u32) {
        let run = self.update(|b| {
            let (key, r) = b.runs.iter_mut().find(|(_, r)| r.pgid == Some(pgid))?;
            r.stopped = true;
            Some(*key)
        });
        if let Some(key) = run {
            self.wait_until(|b| b.runs.get(&key).is_none_or(|r| !r.executing));
        }
    }
}

/// Daemon `d`'s pgid for its run of `job`: one group per run.
fn pgid(d: u8, job: JobId) -> u32 {
    u32::from(d) * 100 + job.0 as u32
}

/// How a job's work goes once released.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Work {
    /// Ends by itself (unless stopped first).
    Short,
    /// Runs until stopped (longer than anything in the model).
    Long,
}

/// One worker of daemon `d`: the engine's claim, then each job's run. Returns what each
/// finish recorded. Short runs end together, so they are recorded together, as the
/// engine records every run that ended since its last pass (`finish_many`, one store
/// call); a long run is recorded when it ends.
fn work(d: u8, c: &Coordinator<Db>, world: &World, kind: Work) -> Vec<(JobId, Finished)> {
    let now = world.now();
    let claimed = c.claim(MonoMs(now), WallMs(now));
    world.update(|b| {
        b.claims_tried += 1;
        // `Engine::start_job`: registered before the job thread runs; spawned held.
        for job in &claimed {
            b.runs.insert((d, job.id), Run { pgid: Some(pgid(d, job.id)), ..Run::default() });
        }
    });
    let out = match kind {
        Work::Short => {
            let ended: Vec<(JobId, JobResult)> =
                claimed.iter().map(|job| (job.id, run_job(d, c, world, kind, job))).collect();
            c.finish_many(ended, WallMs(world.now()), || 0.5)
        }
        Work::Long => claimed
            .into_iter()
            .map(|job| {
                let result = run_job(d, c, world, kind, &job);
                (job.id, c.finish(job.id, result, WallMs(world.now()), 0.5))
            })
            .collect(),
    };
    world.update(|b| b.workers_done += 1);
    out
}

/// A claimed job's run: the job thread (held child, record, release unless stopped, the
/// work, the group gone). Returns its result, for the engine's finish.
fn run_job(d: u8, c: &Coordinator<Db>, world: &World, kind: Work, job: &Claimed) -> JobResult {
    {
        let id = job.id;
        // Spawned held (registered with its group), recorded under the epoch, released
        // only if still ours.
        let group = pgid(d, id);
        let child = ChildIdentity { pid: group, pgid: group, boot_id: String::from("boot"), start_time: 1 };
        let recorded = c.record_child(id, child);
        let released = world.update(|b| {
            let run = b.runs.get_mut(&(d, id)).expect("registered");
            if !recorded || run.stopped {
                // Killed unreleased: its group is gone.
                run.ended = true;
                return false;
            }
            run.executing = true;
            if let Some(other) = b.executing.insert(id, d) {
                panic!("job {id} executed by daemon {d} while daemon {other}'s run of it still executes");
            }
            true
        });
        let result = if !released {
            JobResult::Failed { error: String::from("not started: the lease was lost first"), retryable: true }
        } else {
            if kind == Work::Long {
                world.wait_until(|b| b.runs[&(d, id)].stopped);
            }
            world.update(|b| {
                b.executing.remove(&id);
                let r = b.runs.get_mut(&(d, id)).expect("registered");
                r.executing = false;
                r.ended = true;
                if r.stopped {
                    JobResult::Failed { error: String::from("stopped"), retryable: true }
                } else {
                    JobResult::Succeeded
                }
            })
        };
        c.mark_ended(id);
        result
    }
}

/// One round of daemon `d`'s lease supervision: the engine's renewal, the watchdog's
/// deadlines and stops.
fn supervise(d: u8, c: &Coordinator<Db>, world: &World) {
    let now = world.now();
    c.renew(MonoMs(now), WallMs(now));
    c.due(MonoMs(now));
    for (id, _reason) in c.take_stops() {
        world.stop(d, id);
    }
    world.note(|b| {
        let seen = b.watched.entry(d).or_default();
        *seen = (*seen).max(now);
    });
}

/// A new daemon at epoch 2: takes the leader row, kills the orphans' recorded groups and
/// waits until they are gone, recovers, then claims and runs what it can.
fn take_over(db: &Db, world: &World) -> (Arc<Coordinator<Db>>, Vec<(JobId, Finished)>) {
    let epoch = db.bump_epoch();
    let b = Arc::new(Coordinator::new(cfg(), epoch, db.clone()));
    for (_, child) in b.orphan_children().expect("the epoch is ours") {
        world.kill_and_wait(child.pgid);
    }
    b.recover(WallMs(world.now())).expect("the epoch is ours");
    let finished = work(2, &b, world, Work::Short);
    (b, finished)
}

/// No outcome landed for a claim that had lost the job; and the coordinator never even
/// tried one with a stale token under its own epoch. A daemon's runs only change hands
/// through a new epoch, and a lease leaves the coordinator's table before its one record
/// is made, so every stale outcome call carries a superseded epoch and the epoch guard
/// refuses it first. That second assertion is why the `no_owner_token_guard` mutant
/// survives these models (and the process scenarios) alone: there, it is an equivalent
/// mutant. The guard is the second line, caught with `no_epoch_guard` also switched off
/// (`cargo xtask mutants --layer models`), and alone by the store's own tests.
fn assert_no_zombie_outcome(db: &Db) {
    let d = db.lock();
    assert!(d.zombie_outcomes.is_empty(), "a worker that lost its claim recorded an outcome: {:?}", d.zombie_outcomes);
    assert!(d.token_only.is_empty(), "outcome calls only the owner/token guard could refuse: {:?}", d.token_only);
}

// ---------------------------------------------------------------------------------------
// The models

/// Two workers claim and run jobs (one short, one that runs until stopped) while a
/// shutdown signal arrives at any point and the clock passes the grace: no job is
/// executed by two owners at once, what was claimed — also during shutdown — is released
/// with its attempt given back (pending, `attempts` 0, one interruption) or completed,
/// never lost, and the drain ends: nothing is left held.
#[test]
fn shutdown_releases_what_it_claimed() {
    model("shutdown_releases_what_it_claimed", || {
        let (db, a) = first_daemon(2);
        let world = World::new();
        let workers: Vec<_> = [Work::Short, Work::Long]
            .into_iter()
            .map(|kind| {
                let (a, world) = (a.clone(), world.clone());
                thread::spawn(move || work(1, &a, &world, kind))
            })
            .collect();
        // The watchdog runs until the drain is over: every lease stopped or finished and
        // both workers gone (`Engine::run_loop`'s exit condition).
        let watchdog = {
            let (a, world) = (a.clone(), world.clone());
            thread::spawn(move || loop {
                let seen = world.read(|b| b.version);
                supervise(1, &a, &world);
                if a.shutting_down() && world.read(|b| b.workers_done == 2) && a.held().is_empty() {
                    return;
                }
                world.wait_until(|b| b.version != seen);
            })
        };
        // SIGTERM (the engine thread takes the control message and wakes), then the
        // clock passes the grace.
        a.begin_shutdown(MonoMs(0), cfg().shutdown_grace_ms);
        world.update(|_| ());
        world.advance(cfg().shutdown_grace_ms);
        let finished: Vec<(JobId, Finished)> = workers.into_iter().flat_map(|w| w.join().unwrap()).collect();
        watchdog.join().unwrap();

        assert!(a.held().is_empty(), "the drain ended with leases held");
        for id in [JobId(1), JobId(2)] {
            // A claim that raced the signal may take a job the drain just released: it is
            // released again. Every release is an interruption, never an attempt.
            let results: Vec<&Finished> = finished.iter().filter(|(j, _)| *j == id).map(|(_, f)| f).collect();
            let releases = results.iter().filter(|f| ***f == Finished::Released).count() as u32;
            assert!(
                results.iter().all(|f| matches!(f, Finished::Released | Finished::Completed)),
                "job {id} at shutdown: {results:?}"
            );
            let (status, attempts, interruptions) = db.job(id);
            if results.contains(&&Finished::Completed) {
                assert_eq!(status, JobStatus::Completed, "job {id}");
            } else {
                assert_eq!(
                    (status, attempts, interruptions),
                    (JobStatus::Pending, 0, releases),
                    "job {id} released {releases} time(s) at shutdown: lost, or its attempt not given back"
                );
            }
        }
        assert_no_zombie_outcome(&db);
    });
}

/// Daemon 1 claims a long job at t = 0; its leader row is never refreshed after that
/// (its supervisor's heartbeats fail), whatever its job renewals do. The clock passes
/// the lease's kill-by time and the watchdog looks; only once its stops have taken effect
/// (a kill takes at most `kill_grace`) does the clock reach the stale threshold, where
/// daemon 2 may take over: kill recorded orphans, recover, run the job again. Daemon 1's
/// run must be stopped before its lease could be taken over (`stale - margin`), never
/// overlap with daemon 2's, and record no outcome of its own.
#[test]
fn an_unrenewable_lease_is_given_up_before_it_can_be_taken_over() {
    model("an_unrenewable_lease_is_given_up_before_it_can_be_taken_over", || {
        let (db, a) = first_daemon(1);
        a.note_leader_refresh(MonoMs(0));
        let world = World::new();
        let worker = {
            let (a, world) = (a.clone(), world.clone());
            thread::spawn(move || work(1, &a, &world, Work::Long))
        };
        // The claim happens at t = 0; then the clock moves and the watchdog (here, the
        // clock's own thread: it runs right after each tick) evaluates the deadlines while
        // the job thread records, releases and runs its child.
        world.wait_until(|b| b.claims_tried == 1);
        world.advance(KILL_BY);
        supervise(1, &a, &world);
        world.wait_until(|b| b.runs.values().all(|r| !(r.stopped && r.executing)));
        let cfg = cfg();
        world.advance(STALE - cfg.margin_ms());
        let still_running = world.read(|b| b.runs.get(&(1, JobId(1))).is_some_and(|r| r.executing));
        assert!(!still_running, "daemon 1's run outlived its lease: it could be taken over while it runs");
        world.advance(STALE);
        // Daemon 2 takes over while daemon 1's worker records (or tries to) its end.
        let (_b, second) = take_over(&db, &world);
        let first = worker.join().unwrap();
        for (id, f) in &first {
            assert!(
                // Its leader row went unrefreshed, so it stood down: a run stopped that way
                // is released (its attempt given back) if the epoch is still its own —
                // still no outcome of its own.
                matches!(f, Finished::Abandoned | Finished::Released | Finished::Discarded(_)),
                "daemon 1 recorded {f:?} for job {id} after losing its lease"
            );
        }
        assert_eq!(second, vec![(JobId(1), Finished::Completed)], "daemon 2 runs the job once");
        assert_eq!(db.job(JobId(1)).0, JobStatus::Completed);
        assert_no_zombie_outcome(&db);
    });
}

/// Pitfall 13: daemon 1's run ends, and its worker pauses before recording the result;
/// daemon 2 takes over, recovers the job and runs it again. Whenever daemon 1 resumes,
/// its result must not land on a job it no longer owns, and the job has one outcome.
#[test]
fn a_zombie_never_records_an_outcome() {
    model("a_zombie_never_records_an_outcome", || {
        let (db, a) = first_daemon(1);
        let world = World::new();
        let now = 0;
        let job = a.claim(MonoMs(now), WallMs(now)).remove(0);
        let group = pgid(1, job.id);
        world.update(|b| {
            b.runs.insert((1, job.id), Run { pgid: Some(group), ended: true, ..Run::default() });
        });
        let child = ChildIdentity { pid: group, pgid: group, boot_id: String::from("boot"), start_time: 1 };
        assert!(a.record_child(job.id, child));
        // The run happened and ended; only recording its result is left.
        a.mark_ended(job.id);
        let zombie = {
            let a = a.clone();
            thread::spawn(move || a.finish(job.id, JobResult::Succeeded, WallMs(1), 0.5))
        };
        let successor = {
            let (db, world) = (db.clone(), world.clone());
            thread::spawn(move || take_over(&db, &world).1)
        };
        let first = zombie.join().unwrap();
        let second = successor.join().unwrap();
        let completions =
            [&first].into_iter().chain(second.iter().map(|(_, f)| f)).filter(|f| **f == Finished::Completed).count();
        assert_eq!(completions, 1, "one recorded outcome: daemon 1 {first:?}, daemon 2 {second:?}");
        assert_no_zombie_outcome(&db);
        assert_eq!(db.job(job.id).0, JobStatus::Completed);
    });
}

/// Daemon 1 runs two jobs until stopped; another daemon bumps the epoch at any point. The
/// next renewal, or a claim, learns it: every run is stopped, the fenced daemon claims
/// nothing more and records nothing (its writes under the old epoch all fail).
#[test]
fn a_fenced_daemon_stops_everything() {
    model("a_fenced_daemon_stops_everything", || {
        let (db, a) = first_daemon(3);
        let world = World::new();
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let (a, world) = (a.clone(), world.clone());
                thread::spawn(move || work(1, &a, &world, Work::Long))
            })
            .collect();
        // Another daemon bumps the epoch, at any point; then the engine's next heartbeat
        // (after both claims returned: a renewal with nothing held writes nothing, so it
        // learns nothing).
        let supervisor = {
            let (a, db, world) = (a.clone(), db.clone(), world.clone());
            thread::spawn(move || {
                db.bump_epoch();
                world.wait_until(|b| b.claims_tried == 2);
                supervise(1, &a, &world);
                assert!(a.fenced(), "a renewal after the takeover did not fence the daemon");
                let running: Vec<JobId> = world.read(|b| {
                    b.runs.iter().filter(|(_, r)| r.executing && !r.stopped).map(|((_, id), _)| *id).collect()
                });
                assert!(running.is_empty(), "fenced, but runs {running:?} were not stopped");
            })
        };
        supervisor.join().unwrap();
        let finished: Vec<(JobId, Finished)> = workers.into_iter().flat_map(|w| w.join().unwrap()).collect();
        for (id, f) in &finished {
            assert_eq!(*f, Finished::Discarded("fenced"), "job {id}: a fenced daemon recorded {f:?}");
        }
        assert!(a.claim(MonoMs(0), WallMs(0)).is_empty(), "a fenced daemon claimed");
        assert_no_zombie_outcome(&db);
        let d = db.lock();
        assert!(d.stale_outcomes.is_empty(), "outcomes recorded under a stale epoch: {:?}", d.stale_outcomes);
        let running = d.store.jobs.values().filter(|j| j.status == JobStatus::Running).count();
        assert_eq!(running, finished.len(), "the fenced daemon's rows are left for the new daemon's recovery");
        let claimed: BTreeSet<JobId> = finished.iter().map(|(id, _)| *id).collect();
        assert!(claimed.len() <= 2);
    });
}
