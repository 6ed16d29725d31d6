//! The engine's I/O layer around the [`Coordinator`]:
//!
//! - the **engine thread** claims, renews leases and records outcomes (it may block on
//!   the database for up to `busy_timeout` per call);
//! - the **watchdog thread** carries out every stop decision the coordinator queues
//!   (deadlines, lost leases, fencing, shutdown) — it never touches the database, so a
//!   slow writer cannot delay a kill; it parks while no job is held;
//! - one **job thread** per running job does its work (in-process for `noop`, `sleep`,
//!   `fail`, `crash`; a held child process for `exec`); job threads are reused
//!   ([`crate::pool`]).
//!
//! The engine thread wakes every [`POLL`] (or at once when a job ends, the supervisor
//! sends a [`Control`], or the backend's wake-up source says the queue changed; an idle
//! engine whose backend wakes it on every change sleeps until its next deadline, at most
//! `IDLE_MAX`) and claims when the backend says
//! another process changed the queue (`EngineIo::changed`: a CLI enqueue, another
//! daemon's outcome), when a job ended (capacity freed), or when the next `run_after` is
//! reached — so an idle daemon notices an enqueue within tens of milliseconds without
//! writing anything while idle. Which backend runs is `backend.rs`'s business: this module
//! names none.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;

use crate::backend::{AnyStore, EngineIo};
use crate::children::{self, SpawnRequest};
use crate::clock::{mono, Clock};
use crate::config::Config;
use crate::engine::coordinator::{ChildRecorded, Coordinator, EngineConfig, Finished, JobResult, Renewal, StopReason};
use crate::job::{ChildIdentity, ClaimLimits, Claimed, JobId, WallMs};
use crate::paths::Paths;
use crate::{events, failpoint, identity};

/// Engine loop period while nothing wakes it.
pub const POLL: Duration = Duration::from_millis(10);

/// Full claim batches taken back to back before the jobs they claimed start (a restart's
/// wave of recovered jobs, a burst of enqueues); past this many, the jobs start and the
/// next pass claims again at once.
const WAVE_BATCHES: usize = 4;

/// The longest an idle engine sleeps when its backend wakes it on every change
/// (`EngineIo::wakes_on_change`): it still reports clock steps within this.
const IDLE_MAX: Duration = Duration::from_secs(1);

/// Variables no job child inherits: every homerd test hook. (`HOMER_*` settings pass, so
/// a job can run `homerd enqueue` against the same home.)
pub const ENV_DENY_PREFIXES: &[&str] = &["HOMERD_"];

pub type EngineCoordinator = Coordinator<AnyStore>;

/// What the supervisor tells the engine thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Stop claiming; drain for `grace_ms`, then stop and release what remains. A second
    /// one can only shorten the grace.
    Shutdown { grace_ms: i64 },
    /// Another daemon holds the epoch: stop everything now.
    Fence,
}

/// Why the engine thread ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineExit {
    Drained,
    Fenced,
    /// The database is corrupt (`backend::corruption`): every run stopped, nothing recorded.
    Corrupt,
}

pub fn engine_config(cfg: &Config, worker: String) -> EngineConfig {
    let ms = |d: Duration| d.as_millis() as i64;
    EngineConfig {
        worker,
        heartbeat_ms: ms(cfg.heartbeat_interval),
        stale_ms: ms(cfg.stale_threshold),
        kill_grace_ms: ms(cfg.kill_grace),
        shutdown_grace_ms: ms(cfg.shutdown_grace),
        orphan_retry_delay_ms: ms(cfg.orphan_retry_delay),
        backoff_base_ms: ms(cfg.backoff_base),
        backoff_cap_ms: ms(cfg.backoff_cap),
        max_interruptions: cfg.max_interruptions,
        limits: ClaimLimits {
            global: cfg.concurrency,
            lanes: cfg.lanes.iter().map(|(k, v)| (k.clone(), v.concurrency)).collect(),
            default_lane: 1,
            batch: cfg.claim_batch,
        },
    }
}

/// Startup recovery. Kill first, commit after: every process group recorded by a run
/// still marked running is killed and gone before any orphan is requeued (or failed). If
/// a group cannot be killed, or we die here, the rows stay `running` with their recorded
/// groups and the next start tries again — a job is never requeued beside a survivor.
pub fn recover(coord: &EngineCoordinator, clock: &Clock, kill_limit: Duration) -> Result<(), String> {
    // The job shim found (and on Linux held open) before the daemon is active: on Linux,
    // what an upgrade renames into place later is not what this daemon runs (macOS looks
    // the path up at each start).
    let _ = crate::platform::job_shim_program();
    if let Some(why) = crate::platform::job_shim_unusable() {
        events::warn(
            "shim.unusable",
            "homerd-shim is not used: jobs start through homerd's own job-shim, which costs more per job",
        )
        .field("reason", why)
        .emit();
    }
    let orphans = coord.orphan_children().map_err(|e| format!("startup recovery: {e}"))?;
    if !orphans.is_empty() {
        failpoint::hit("recovery.before_kill").map_err(|e| format!("recovery: {e}"))?;
    }
    // One listing of every process for all the orphans, not one per orphan: with many
    // orphans (50 groups: tens of milliseconds) that was most of a restart's recovery. And
    // none at all when the kernel knows none of their groups — a restart on Linux where
    // the parent-death signal took every job with the daemon and whoever inherited them
    // (init, the service manager) has reaped them before the successor looks; a listing
    // costs a few milliseconds, and zombies not yet reaped still need it. The snapshot
    // is then empty, and means what a listing would have: none of these groups had a live
    // member after the daemon was gone (here not even a zombie), so none can have become
    // ours again — only a leader still alive with its recorded start time is acted on.
    let any_known = orphans.iter().any(|(_, child)| children::group_known(child.pgid));
    let live = if any_known {
        children::live_groups(&orphans.iter().map(|(_, child)| child.pgid).collect())
    } else {
        Some(std::collections::HashSet::new())
    };
    for (job_id, child) in orphans.iter().filter(|_| !crate::mutant::active(crate::mutant::NO_GROUP_KILL)) {
        match children::kill_recorded_group_in(child, kill_limit, live.as_ref()) {
            Ok(killed) => events::info("job.orphan_group", "Orphaned child group checked")
                .field("job_id", *job_id)
                .field("pgid", child.pgid)
                .field("killed", killed)
                .emit(),
            Err(e) => return Err(format!("could not kill orphaned group {} of job {job_id}: {e}", child.pgid)),
        }
    }
    let rec = coord.recover(clock.now()).map_err(|e| format!("startup recovery: {e}"))?;
    let count = rec.requeued.len() + rec.failed.len() + rec.cancelled.len();
    events::info("jobs.recovered", "Recovered stale jobs")
        .field("count", count)
        .field("requeued", rec.requeued.clone())
        .field("failed", rec.failed.clone())
        .field("cancelled", rec.cancelled.clone())
        .field("given_back", rec.given_back.clone())
        .emit();
    Ok(())
}

/// How to stop a running job: shared by the engine thread and the watchdog.
struct JobControl {
    kind: String,
    stop_tx: Sender<StopReason>,
    pgid: Arc<AtomicU32>,
}

type Controls = Arc<std::sync::Mutex<BTreeMap<JobId, JobControl>>>;

fn controls(c: &Controls) -> std::sync::MutexGuard<'_, BTreeMap<JobId, JobControl>> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

/// Stops one job: in-process work is told to stop; an `exec` child's process group gets
/// SIGTERM, then SIGKILL after `kill_grace` (at once when fenced), from a killer thread —
/// the job thread sees its child exit, makes sure the group is gone, and reports.
fn stop_job(c: &Controls, id: JobId, reason: StopReason, kill_grace: Duration) {
    let table = controls(c);
    let Some(h) = table.get(&id) else { return };
    let _ = h.stop_tx.send(reason);
    let pgid = h.pgid.load(Ordering::SeqCst);
    if h.kind == "exec" && pgid > 1 {
        let grace = if reason == StopReason::Fenced { Duration::ZERO } else { kill_grace };
        let limit = grace + kill_grace + Duration::from_secs(5);
        let killer = failpoint::hit("watchdog.killer_thread").and_then(|()| {
            std::thread::Builder::new().name(String::from("homerd-killer")).spawn(move || {
                if let Err(e) = children::kill_group_and_wait(pgid, grace, limit) {
                    events::error("job.kill_failed", "Could not kill a job's process group")
                        .field("pgid", pgid)
                        .field("error", e.to_string())
                        .emit();
                }
            })
        });
        // No thread to wait out the grace on (the process or thread limit is reached, often
        // by the very job being stopped): the group is killed at once, from here. The job
        // thread still makes sure it is gone before the run is recorded.
        if let Err(e) = killer {
            events::warn("job.kill_now", "No thread to stop the job gracefully: killing its process group at once")
                .field("job_id", id)
                .field("pgid", pgid)
                .field("error", e.to_string())
                .emit();
            if let Err(e) = children::signal_group(pgid, crate::platform::Signal::KILL) {
                events::error("job.kill_failed", "Could not kill a job's process group")
                    .field("pgid", pgid)
                    .field("error", e.to_string())
                    .emit();
            }
        }
    }
}

fn announce_stop(id: JobId, reason: StopReason) {
    let (name, msg) = match reason {
        StopReason::LeaseLost => ("job.lease_lost", "Lease lost: stopping the job before its lease can expire"),
        StopReason::StandDown => (
            "job.lease_lost",
            "Lease lost while standing down (the database cannot be written): stopping the job before its lease can expire; it is released, its attempt given back",
        ),
        StopReason::Timeout => ("job.timeout", "Job timed out: stopping it"),
        StopReason::Shutdown => ("job.stopping", "Shutdown grace over: stopping the job to release it"),
        StopReason::Fenced => ("job.fenced", "Fenced: stopping the job"),
        StopReason::Cancelled => ("job.cancelling", "Cancel requested: stopping the job"),
        StopReason::Halted => {
            ("job.halted", "Database unusable: stopping the job (its row stays running for the next start's recovery)")
        }
    };
    events::warn(name, msg).field("job_id", id).emit();
}

/// The watchdog: evaluates deadlines and carries out every queued stop decision.
fn watchdog(coord: Arc<EngineCoordinator>, c: Controls, kill_grace: Duration, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        coord.due(mono());
        for (id, reason) in coord.take_stops() {
            announce_stop(id, reason);
            stop_job(&c, id, reason, kill_grace);
        }
        match coord.next_deadline() {
            Some(d) => std::thread::sleep(Duration::from_millis((d - mono()).clamp(1, POLL.as_millis() as i64) as u64)),
            // Nothing held, so nothing to stop until the engine claims — and the engine
            // unparks this thread when it does (and when it ends).
            None if coord.held().is_empty() => std::thread::park_timeout(IDLE_MAX),
            None => std::thread::sleep(POLL),
        }
    }
}

pub struct EngineThread {
    pub control: ControlSender,
    pub done: tokio::sync::oneshot::Receiver<EngineExit>,
}

/// Starts the engine thread (which starts the watchdog).
pub fn start(coord: Arc<EngineCoordinator>, io: EngineIo, cfg: Config, clock: Clock, paths: Paths) -> EngineThread {
    let engine = Engine::new(coord, io, cfg, clock, paths);
    let control = ControlSender(engine.wake_tx.clone());
    let (done_tx, done) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(String::from("homerd-engine"))
        .spawn(move || {
            let exit = engine.run();
            let _ = done_tx.send(exit);
        })
        .expect("spawn engine thread");
    EngineThread { control, done }
}

/// How the supervisor sends the engine a [`Control`]: on the engine's wake-up channel,
/// so it reaches an engine that is waiting at once.
#[derive(Clone)]
pub struct ControlSender(Sender<Wake>);

impl ControlSender {
    pub fn send(&self, c: Control) -> Result<(), mpsc::SendError<Control>> {
        self.0.send(Wake::Control(c)).map_err(|_| mpsc::SendError(c))
    }
}

struct Engine {
    coord: Arc<EngineCoordinator>,
    /// Wake-ups, cancel requests, the next due time, housekeeping; job state goes
    /// through the coordinator.
    io: EngineIo,
    cfg: Config,
    clock: Clock,
    paths: Paths,
    controls: Controls,
    /// Job threads, reused.
    pool: crate::pool::Pool,
    /// Jobs whose thread has not reported its result yet.
    running: BTreeSet<JobId>,
    /// Results the store could not take yet (retried every loop).
    unrecorded: usize,
    /// The engine's wake-up channel: job threads report their results on it, and the
    /// backend's wake-up source (`EngineIo::start_wakeups`) says the queue changed.
    wake_tx: Sender<Wake>,
    wake_rx: Receiver<Wake>,
    /// How the backend's wake-up source says the queue changed.
    changes: ChangeSignal,
    /// The watchdog thread, which parks while nothing is held.
    watchdog: Option<std::thread::Thread>,
}

/// What wakes the engine thread before its wait is up.
enum Wake {
    /// The supervisor's word ([`ControlSender`]).
    Control(Control),
    /// A job thread's result.
    Ended(JobId, JobResult),
    /// The queue changed (the backend's wake-up source; `EngineIo::changed` says so too).
    Changed,
}

/// The queue changed: what the backend's wake-up source raises (each command's poke on
/// SQLite, each notification on PostgreSQL). At most one [`Wake::Changed`] waits in the
/// engine's channel, so a flood of wake-ups while the engine is busy queues one look, not
/// one message each.
#[derive(Clone)]
struct ChangeSignal {
    queued: Arc<AtomicBool>,
    tx: Sender<Wake>,
}

impl ChangeSignal {
    fn raise(&self) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            let _ = self.tx.send(Wake::Changed);
        }
    }

    /// The engine took the `Changed`, before it looks at the queue again: a change from
    /// now on queues a new look.
    fn taken(&self) {
        self.queued.store(false, Ordering::Release);
    }
}

impl Engine {
    fn new(coord: Arc<EngineCoordinator>, mut io: EngineIo, cfg: Config, clock: Clock, paths: Paths) -> Engine {
        let (wake_tx, wake_rx) = mpsc::channel();
        let changes = ChangeSignal { queued: Arc::new(AtomicBool::new(false)), tx: wake_tx.clone() };
        let raise = changes.clone();
        io.start_wakeups(Box::new(move || raise.raise()));
        Engine {
            coord,
            io,
            cfg,
            clock,
            paths,
            controls: Controls::default(),
            pool: crate::pool::Pool::new("homerd-job"),
            running: BTreeSet::new(),
            unrecorded: 0,
            wake_tx,
            wake_rx,
            changes,
            watchdog: None,
        }
    }

    fn run(mut self) -> EngineExit {
        // Before the first claim, so the first `exec` jobs do not wait for the threads.
        if let Err(e) = children::start_spawners() {
            events::warn("spawner.error", "Could not start the spawner threads yet; the first exec job retries")
                .field("error", e.to_string())
                .emit();
        }
        let stop_watchdog = Arc::new(AtomicBool::new(false));
        let watchdog_thread = {
            let (coord, c, grace, stop) =
                (self.coord.clone(), self.controls.clone(), self.cfg.kill_grace, stop_watchdog.clone());
            std::thread::Builder::new()
                .name(String::from("homerd-watchdog"))
                .spawn(move || watchdog(coord, c, grace, stop))
                .expect("spawn watchdog thread")
        };
        self.watchdog = Some(watchdog_thread.thread().clone());
        let exit = self.run_loop();
        stop_watchdog.store(true, Ordering::SeqCst);
        watchdog_thread.thread().unpark();
        let _ = watchdog_thread.join();
        exit
    }

    fn run_loop(&mut self) -> EngineExit {
        let heartbeat_ms = self.cfg.heartbeat_interval.as_millis() as i64;
        let mut next_renew = mono() + heartbeat_ms;
        // Housekeeping (retention, the metrics event) every 6 heartbeats, and in the first
        // pass (after its claim).
        let mut next_housekeeping = mono();
        let mut last_version = 0;
        self.io.changed(&mut last_version);
        // Many daemons on one queue: another daemon's claim or outcome frees a lane's
        // capacity without a change this daemon is told about; a poll catches those.
        let poll_claims = self.io.claim_poll();
        let mut last_claim = std::time::Instant::now();
        let mut claim_now = true;
        let mut next_ready: Option<WallMs> = None;
        let mut ended: Vec<(JobId, JobResult)> = Vec::new();
        let mut halted_at: Option<std::time::Instant> = None;
        loop {
            for w in self.wake_rx.try_iter() {
                self.take(w, &mut ended);
            }
            // One reading of the effective clock for the whole pass, taken *before* the
            // wall-clock steps are absorbed: whatever this pass schedules or claims by
            // then sees the jobs already moved by any step this reading (or another
            // thread's) noticed — never a stepped time with the jobs not yet moved.
            let wall = self.clock.now();
            self.io.absorb_clock_steps(&self.clock, self.coord.epoch);
            if !ended.is_empty() {
                // Every run that ended since the last pass is recorded in one commit.
                self.finish(std::mem::take(&mut ended), wall);
                claim_now = true;
            }
            if self.unrecorded > 0 {
                let retried = self.coord.retry_unrecorded(wall, jitter);
                self.unrecorded = retried.iter().filter(|(_, f)| *f == Finished::Deferred).count();
                for (id, f) in retried.iter().filter(|(_, f)| *f != Finished::Deferred) {
                    announce_finish(*id, f);
                    claim_now = true; // its slot is free now
                }
            }
            if !self.coord.halted() {
                if let Some(why) = crate::backend::corruption() {
                    events::error("daemon.corrupt", "The database is corrupt: stopping every job, claiming nothing")
                        .field("error", why)
                        .emit();
                    self.coord.halt();
                    halted_at = Some(std::time::Instant::now());
                }
            }
            if self.coord.halted() {
                // Nothing is written any more; wait (bounded, as every stop) for the
                // stopped runs to end. A group that outlives the bound is left to the next
                // start, whose recovery kills recorded groups before anything runs again.
                let waited = halted_at.map_or(Duration::ZERO, |t| t.elapsed());
                if self.running.is_empty() || waited > self.cfg.drain_bound(Duration::ZERO) {
                    return EngineExit::Corrupt;
                }
                self.wait(POLL, &mut ended);
                continue;
            }
            let now = mono();
            if now >= next_renew {
                next_renew = now + heartbeat_ms;
                let held = self.coord.held().len();
                // Lost leases are queued as stops for the watchdog.
                let (lost, renewal) = self.coord.renew_told(now, wall);
                match renewal {
                    Renewal::Written => events::debug("job.heartbeat", "Leases renewed")
                        .field("held", held)
                        .field("lost", lost.len())
                        .emit(),
                    // Each lease runs out at its own deadline unless a later renewal gets
                    // through (the daemon then stops its job: `job.lease_lost`).
                    Renewal::Refused(why) => {
                        events::warn("job.renew_failed", "Could not renew the leases; retrying at the next heartbeat")
                            .field("held", held)
                            .field("error", why)
                            .emit()
                    }
                    // Fenced has its own events; nothing held, nothing to say.
                    Renewal::Fenced | Renewal::Nothing => {}
                }
            }
            if self.io.changed(&mut last_version) {
                claim_now = true;
                // Someone committed: maybe a `homerd cancel` request for a job we run.
                for id in self.io.cancel_requests(self.coord.epoch) {
                    self.coord.request_cancel(id);
                }
            }
            if poll_claims.is_some_and(|p| last_claim.elapsed() >= p) {
                claim_now = true;
            }
            if next_ready.is_some_and(|t| wall >= t) {
                claim_now = true;
            }
            // Claims that stopped at the wave's bound with more maybe ready go on at once,
            // not after a POLL.
            let mut claim_again = false;
            if claim_now && !self.coord.shutting_down() && !self.coord.fenced() {
                claim_now = false;
                last_claim = std::time::Instant::now();
                let mut claimed = self.coord.claim(mono(), wall);
                // A full batch: more may be ready (a restart's whole wave of orphans). They
                // are claimed before any of these starts, a few batches at most: once the
                // job threads record their children, a claim queues behind those records.
                let batch = (self.cfg.claim_batch as usize).max(1);
                let mut last = claimed.len();
                while last >= batch && claimed.len() < WAVE_BATCHES * batch && !self.coord.fenced() {
                    let more = self.coord.claim(mono(), wall);
                    last = more.len();
                    claimed.extend(more);
                }
                let took_some = !claimed.is_empty();
                if took_some {
                    claim_now = true; // more may be ready than one batch took
                    if let Err(e) = failpoint::hit("claim.after_commit") {
                        events::warn("failpoint.error", "claim.after_commit").field("error", e.to_string()).emit();
                    }
                }
                for job in claimed {
                    self.start_job(job);
                }
                claim_again = last >= batch;
                if took_some {
                    // The watchdog may be parked: it has deadlines to watch now.
                    if let Some(w) = &self.watchdog {
                        w.unpark();
                    }
                }
                // When the next pending job is due matters only to a daemon that found
                // nothing to take and has room: after a claim that took some, the next pass
                // claims again anyway, and a full daemon claims again when a run ends. (On
                // PostgreSQL the read is a round trip to the server.)
                let full = self.coord.held().len() >= self.cfg.concurrency as usize;
                next_ready = if took_some || full { None } else { self.io.next_ready(&self.clock) };
            }
            // After the claim: a start's first pass (a restart's wave of recovered jobs)
            // claims before it prunes and counts.
            let now = mono();
            if now >= next_housekeeping {
                next_housekeeping = now + 6 * heartbeat_ms;
                self.housekeeping();
            }
            if self.coord.fenced() && self.running.is_empty() {
                return EngineExit::Fenced;
            }
            // Drained only when no job thread runs and no result waits to be recorded.
            if self.coord.shutting_down() && self.running.is_empty() && self.coord.held().is_empty() {
                return EngineExit::Drained;
            }
            if claim_again {
                continue;
            }
            // A backend that wakes the engine when the queue changes lets an idle engine
            // sleep until its next deadline; one that must be looked at (SQLite's
            // `data_version`) is looked at every POLL.
            let idle = self.io.wakes_on_change()
                && !claim_now
                && self.running.is_empty()
                && self.unrecorded == 0
                && !self.coord.shutting_down()
                && !self.coord.fenced();
            let limit = if idle {
                let ms = |d: i64| Duration::from_millis(d.max(0) as u64);
                let now = mono();
                let mut limit = IDLE_MAX.min(ms(next_renew - now)).min(ms(next_housekeeping - now));
                if let Some(t) = next_ready {
                    limit = limit.min(ms(t.0 - self.clock.now().0));
                }
                if let Some(p) = poll_claims {
                    limit = limit.min(p.saturating_sub(last_claim.elapsed()));
                }
                limit.max(POLL)
            } else {
                POLL
            };
            self.wait(limit, &mut ended);
        }
    }

    /// Waits up to `limit` for a wake-up and takes it.
    fn wait(&self, limit: Duration, ended: &mut Vec<(JobId, JobResult)>) {
        match self.wake_rx.recv_timeout(limit) {
            Ok(w) => self.take(w, ended),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => unreachable!("the engine holds a sender"),
        }
    }

    /// A wake-up: a control is applied at once, a job's result joins `ended`.
    fn take(&self, w: Wake, ended: &mut Vec<(JobId, JobResult)>) {
        match w {
            Wake::Control(Control::Shutdown { grace_ms }) => self.coord.begin_shutdown(mono(), grace_ms),
            // Queued for the watchdog, which carries out every stop.
            Wake::Control(Control::Fence) => drop(self.coord.fence()),
            Wake::Ended(id, result) => ended.push((id, result)),
            // Taken before the engine looks at the queue again, so a wake-up from now on
            // queues a new look.
            Wake::Changed => self.changes.taken(),
        }
    }

    /// Retention and the counters' event (`EngineIo::housekeeping`).
    fn housekeeping(&mut self) {
        self.io.housekeeping(&self.clock, self.cfg.retention, &self.paths.logs.join("runs"));
    }

    fn start_job(&mut self, job: Claimed) {
        events::info("job.claimed", "Job claimed atomically")
            .field("job_id", job.id)
            .field("lane", job.lane.clone())
            .field("kind", job.kind.clone())
            .field("attempt", job.attempt)
            .field("run", job.run)
            .field("epoch", self.coord.epoch)
            .emit();
        let (stop_tx, stop_rx) = mpsc::channel();
        let pgid = Arc::new(AtomicU32::new(0));
        // Registered before the thread starts, so a stop decided at once is not lost.
        controls(&self.controls).insert(job.id, JobControl { kind: job.kind.clone(), stop_tx, pgid: pgid.clone() });
        let ctx = JobContext {
            job: job.clone(),
            coord: self.coord.clone(),
            runs_dir: self.paths.logs.join("runs"),
            kill_grace: self.cfg.kill_grace,
            pgid,
            stop_rx,
            paths: self.paths.clone(),
            run_log_cap: self.cfg.run_log_cap,
        };
        let wake = self.wake_tx.clone();
        let id = job.id;
        let started = failpoint::hit("engine.job_thread").and_then(|()| {
            self.pool.run(move || {
                let coord = ctx.coord.clone();
                // Everything the job held is dropped when `run` returns, before it reports.
                let result = ctx.run();
                coord.mark_ended(id);
                let _ = wake.send(Wake::Ended(id, result));
            })
        });
        if let Err(e) = started {
            // No thread for it (the process or thread limit is reached): nothing of the job
            // ran, so it goes back with its attempt given back, as any start the daemon
            // could not make.
            self.coord.mark_ended(id);
            let error = format!("no thread to run it: {e}");
            let _ = self.wake_tx.send(Wake::Ended(id, JobResult::NotStarted { error }));
        }
        self.running.insert(id);
    }

    /// Records the runs that ended (their work is done), all in one store call, and
    /// announces each.
    fn finish(&mut self, ended: Vec<(JobId, JobResult)>, wall: WallMs) {
        let mut table = controls(&self.controls);
        for (id, _) in &ended {
            table.remove(id);
            self.running.remove(id);
        }
        drop(table);
        if ended.iter().any(|(_, r)| *r == JobResult::Succeeded) && failpoint::is_armed("job.before_complete") {
            // Hit between transactions: a `stop` here freezes the daemon after the job
            // ended and before its outcome is written, as a paused worker would — not
            // inside a write transaction, holding the database's write lock (README,
            // Limits), which would block a successor for reasons this hook is not about.
            self.io.between_transactions(|| {
                if let Err(e) = failpoint::hit("job.before_complete") {
                    events::warn("failpoint.error", "job.before_complete").field("error", e.to_string()).emit();
                }
            });
        }
        // `finish_many` answers in the order given: each answer meets its own result.
        let errors: Vec<Option<String>> = ended
            .iter()
            .map(|(_, r)| match r {
                JobResult::Failed { error, .. } | JobResult::NotStarted { error } => Some(error.clone()),
                JobResult::Succeeded => None,
            })
            .collect();
        let finished = self.coord.finish_many(ended, wall, jitter);
        for ((id, f), error) in finished.into_iter().zip(errors) {
            if f == Finished::Deferred {
                self.unrecorded += 1;
            }
            announce_finish(id, &f);
            if let (Finished::Failed | Finished::Postponed { .. }, Some(error)) = (&f, error) {
                events::debug("job.error", "Last error").field("job_id", id).field("error", error).emit();
            }
        }
    }
}

fn announce_finish(id: JobId, f: &Finished) {
    let e = match f {
        Finished::Completed => events::info("job.completed", "Job completed"),
        Finished::Retry { run_after } => {
            events::warn("job.retry", "Job failed; retrying later").field("run_after", *run_after)
        }
        Finished::Failed => events::error("job.failed", "Job failed for good"),
        Finished::Released => events::info("job.released", "Job released to pending (attempt given back)"),
        Finished::Postponed { run_after } => events::warn(
            "job.postponed",
            "Job not started: the daemon lacks a resource (descriptors, processes, memory, disk); requeued, attempt given back",
        )
        .field("run_after", *run_after),
        Finished::Abandoned => events::warn("job.abandoned", "Job requeued after its run was stopped"),
        Finished::Cancelled => events::info("job.cancelled", "Job cancelled by an operator"),
        Finished::Discarded(why) => {
            events::warn("job.discarded", "Outcome not recorded: the lease was not ours").field("why", *why)
        }
        Finished::Deferred => {
            events::warn("job.deferred", "Outcome not recorded yet: the database cannot be written now; retrying")
        }
    };
    e.field("job_id", id).emit();
}

/// Everything a job thread needs.
struct JobContext {
    job: Claimed,
    coord: Arc<EngineCoordinator>,
    runs_dir: PathBuf,
    kill_grace: Duration,
    pgid: Arc<AtomicU32>,
    stop_rx: Receiver<StopReason>,
    paths: Paths,
    run_log_cap: u64,
}

impl JobContext {
    fn run(self) -> JobResult {
        let job = &self.job;
        match job.kind.as_str() {
            "noop" => JobResult::Succeeded,
            "sleep" => {
                let d = job.args.first().and_then(|a| crate::duration::parse_duration(a).ok()).unwrap_or_default();
                match self.stop_rx.recv_timeout(d) {
                    Err(RecvTimeoutError::Timeout) => JobResult::Succeeded,
                    _ => JobResult::Failed { error: String::from("stopped"), retryable: true },
                }
            }
            "fail" => JobResult::Failed {
                error: job.args.first().cloned().unwrap_or_else(|| String::from("failed (fail job)")),
                retryable: true,
            },
            "crash" if !crate::cmd::enqueue::crash_jobs_allowed() => JobResult::Failed {
                error: format!(
                    "`crash` is a test hook; this daemon runs it only with {}=1",
                    crate::cmd::enqueue::CRASH_JOBS_ENV
                ),
                retryable: false,
            },
            "crash" => {
                // The poison job: kills the daemon that runs it (after its claim committed).
                events::error("job.crash", "Crash job: killing the daemon").field("job_id", job.id).emit();
                events::flush_stderr(events::STDERR_FLUSH);
                crate::platform::signal_self(crate::platform::Signal::KILL);
                JobResult::Failed { error: String::from("crash"), retryable: true }
            }
            "exec" => self.run_exec(),
            other => JobResult::Failed { error: format!("unknown job kind `{other}`"), retryable: false },
        }
    }

    fn run_exec(self) -> JobResult {
        let job = &self.job;
        let base = self.runs_dir.join(format!("{}-{}", job.id, job.run));
        if let Err(e) = create_private_dir(&self.runs_dir) {
            let error = format!("cannot create or write to {}: {e}", self.runs_dir.display());
            return if children::is_resource_error(&e) {
                JobResult::NotStarted { error }
            } else {
                JobResult::Failed { error, retryable: true }
            };
        }
        // The job's own `--env` variables first: the daemon's `HOMER_*` below win (enqueue
        // refuses those names anyway).
        let mut env_set: Vec<(String, String)> = job.exec.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        env_set.extend([
            (String::from("HOMER_JOB_ID"), job.id.to_string()),
            (String::from("HOMER_ATTEMPT"), job.attempt.to_string()),
            (String::from("HOMER_RUN"), job.run.to_string()),
            (String::from("HOMER_CLAIM_TOKEN"), job.token.clone()),
            // The claim's epoch (on PostgreSQL, the worker's incarnation): with the token,
            // what a job needs to fence its own effects against a stale run of itself.
            (String::from("HOMER_EPOCH"), self.coord.epoch.to_string()),
            // The daemon's resolved paths, so a job's own `homerd enqueue` reaches the
            // same database whether the daemon got them from flags or the environment.
            (String::from("HOMER_HOME"), self.paths.home.display().to_string()),
            (String::from("HOMER_LOCK_FILE"), self.paths.lock_file.display().to_string()),
        ]);
        let req = SpawnRequest {
            argv: job.args.clone(),
            env_set,
            env_deny_prefixes: ENV_DENY_PREFIXES.iter().map(|s| s.to_string()).collect(),
            stdout: base.with_extension("out"),
            stderr: base.with_extension("err"),
            output_cap: Some(self.run_log_cap),
            cwd: job.exec.cwd.as_ref().map(PathBuf::from),
        };
        let mut child = match children::spawn_held(req) {
            Ok(c) => c,
            Err(e) if children::is_resource_error(&e) => {
                return JobResult::NotStarted { error: format!("cannot start {:?}: {e}", job.args) }
            }
            Err(e) => return JobResult::Failed { error: format!("cannot start {:?}: {e}", job.args), retryable: true },
        };
        if let Err(e) = failpoint::hit("job.after_spawn_before_record") {
            return JobResult::Failed { error: format!("failpoint: {e}"), retryable: true };
        }
        // Published first: a stop decided from here on kills the (still held) group.
        self.pgid.store(child.pgid, Ordering::SeqCst);
        // Watched by the group guardian (when one runs) until the group is gone, so it
        // dies with the daemon if the daemon dies first. Dropped as this returns: by then
        // the group is gone (killed and reaped, or dropped unreleased).
        let _watched = match crate::guardian::watch(child.pgid) {
            Ok(w) => w,
            // Released unwatched, it could outlive a dead daemon and overlap another
            // host's re-run: the daemon's trouble, so the attempt is given back.
            Err(e) => {
                drop(child);
                return JobResult::NotStarted { error: format!("not started: {e}") };
            }
        };
        let record = ChildIdentity {
            pid: child.pid,
            pgid: child.pgid,
            boot_id: child.boot_id.clone(),
            start_time: child.start_time,
        };
        // Recorded under the epoch before it may run; a fenced or lost record means it is
        // dropped unreleased (the drop kills and reaps it).
        match self.coord.record_child_outcome(job.id, record) {
            ChildRecorded::Recorded if self.stop_rx.try_recv().is_err() => {}
            ChildRecorded::Recorded | ChildRecorded::NotOurs => {
                drop(child);
                return JobResult::Failed {
                    error: String::from("not started: the lease was lost first"),
                    retryable: true,
                };
            }
            // The database did not answer (busy past its timeout, a PostgreSQL server
            // restarting): the program never ran, so the attempt is given back.
            ChildRecorded::Unavailable => {
                drop(child);
                return JobResult::NotStarted {
                    error: String::from("not started: the child could not be recorded (the database did not answer)"),
                };
            }
        }
        if let Err(e) = child.release() {
            drop(child);
            return JobResult::Failed { error: format!("cannot release the child: {e}"), retryable: true };
        }
        events::info("job.started", "Job process started")
            .field("job_id", job.id)
            .field("pid", child.pid)
            .field("pgid", child.pgid)
            .emit();
        let status = child.wait();
        if status.is_ok() {
            // Its program ended: a stop decided from now on (while the rest of its group
            // is killed, its output drained) does not change what it came to.
            self.coord.mark_exited(job.id);
        }
        // The leader is gone; nothing else of its group may survive it before the job can
        // be re-run (a grandchild left behind would overlap the next attempt). A group that
        // cannot be killed keeps this run — and its row — until it can: never requeue
        // beside it.
        let mut tries = 0u64;
        while !crate::mutant::active(crate::mutant::NO_GROUP_KILL) && children::group_alive(child.pgid) {
            let limit = self.kill_grace + Duration::from_secs(5);
            if let Err(e) = children::kill_group_and_wait(child.pgid, Duration::ZERO, limit) {
                tries += 1;
                events::error(
                    "job.kill_failed",
                    "A job's process group survives; retrying before the job can run again",
                )
                .field("job_id", job.id)
                .field("pgid", child.pgid)
                .field("tries", tries)
                .field("error", e.to_string())
                .emit();
                std::thread::sleep(Duration::from_millis(200 * tries.min(50)));
            }
        }
        // Gone (the loop ends only then): from now on a stop has no group to signal, its id
        // may be reused while the output drains. Not asked again: a reused id would look
        // like the group alive and stay published.
        if !crate::mutant::active(crate::mutant::NO_GROUP_KILL) {
            self.pgid.store(0, Ordering::SeqCst);
        }
        // Its group is gone, so its output pipes reach EOF: the run log is complete.
        child.finish_output(Duration::from_secs(5));
        match status {
            Ok(s) if s.success() => JobResult::Succeeded,
            Ok(s) => JobResult::Failed { error: describe_exit(s), retryable: true },
            Err(e) => JobResult::Failed { error: format!("wait: {e}"), retryable: true },
        }
    }
}

fn describe_exit(s: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => String::from("ended abnormally"),
    }
}

/// Makes `dir` (0700) if needed and checks it can be written to: run logs are created
/// only at their stream's first byte (children.rs), so a directory that is read-only or
/// not the daemon's must be found here, before the job starts, as the daemon's trouble.
fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    Ok(rustix::fs::access(dir, rustix::fs::Access::WRITE_OK)?)
}

/// A jitter factor in [0, 1] for backoff.
fn jitter() -> f64 {
    let mut b = [0u8; 4];
    if crate::platform::random_bytes(&mut b).is_err() {
        return 0.5;
    }
    u32::from_ne_bytes(b) as f64 / u32::MAX as f64
}

/// The identity of this daemon as a worker name (`host/pid`).
pub fn worker_name() -> String {
    format!("{}/{}", identity::hostname(), std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wake_ups_queue_one_look_until_it_is_taken() {
        let (tx, rx) = mpsc::channel();
        let changes = ChangeSignal { queued: Arc::new(AtomicBool::new(false)), tx };
        let queued = |rx: &Receiver<Wake>| rx.try_iter().filter(|w| matches!(w, Wake::Changed)).count();
        for _ in 0..1000 {
            changes.raise();
        }
        assert_eq!(queued(&rx), 1, "a flood queues one look");
        changes.raise();
        assert_eq!(queued(&rx), 0, "not taken yet: still one look pending");
        changes.taken();
        changes.raise();
        changes.raise();
        assert_eq!(queued(&rx), 1, "taken: the next change queues a new look");
    }
}
