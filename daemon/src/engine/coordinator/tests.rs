//! The coordinator's unit tests, on the in-memory store and a fake clock.

use super::*;
use crate::engine::jobstore::{RecordItem, StoreResult};
use crate::engine::memory::MemoryStore;
use crate::job::{ChildIdentity, ClaimRef, JobStatus, NewJob, OrphanPolicy};

fn cfg() -> EngineConfig {
    EngineConfig::for_tests()
}

fn with_jobs(n: usize, timeout_ms: Option<u64>) -> Coordinator<MemoryStore> {
    let mut store = MemoryStore::new(Epoch(1));
    for _ in 0..n {
        store.enqueue(&NewJob { timeout_ms, ..NewJob::new("noop", "l", 3) });
    }
    Coordinator::new(cfg(), Epoch(1), store)
}

/// One job (with `timeout_ms`), claimed at t = 0.
fn one_claimed(timeout_ms: Option<u64>) -> (Coordinator<MemoryStore>, JobId) {
    let c = with_jobs(1, timeout_ms);
    let id = c.claim(MonoMs(0), WallMs(0))[0].id;
    (c, id)
}

fn status(c: &Coordinator<MemoryStore>, id: JobId) -> JobStatus {
    sync::lock(&c.store).jobs[&id].status
}

#[test]
fn a_healthy_lease_renewed_in_time_is_never_due() {
    let (c, id) = one_claimed(None);
    for t in (100..=10_000).step_by(100) {
        assert!(c.renew(MonoMs(t), WallMs(t)).is_empty());
        assert!(c.due(MonoMs(t)).is_empty(), "due at {t}");
    }
    assert_eq!(c.finish(id, JobResult::Succeeded, WallMs(10_001), 0.5), Finished::Completed);
    assert_eq!(status(&c, id), JobStatus::Completed);
}

#[test]
fn an_unrenewed_lease_is_killed_before_it_could_be_taken_over() {
    let (c, id) = one_claimed(None);
    let kill_by = c.lease(id).unwrap().kill_by(&c.cfg, None);
    // The child must be dead (kill_by + kill_grace) before last renewal + stale - margin.
    assert!(kill_by + c.cfg.kill_grace_ms < MonoMs(c.cfg.stale_ms));
    assert!(c.due(kill_by - 1).is_empty());
    assert_eq!(c.due(kill_by), vec![(id, StopReason::LeaseLost)]);
    assert!(c.due(kill_by + 1).is_empty(), "reported once");
    // The killed run records no outcome: the job is requeued.
    assert_eq!(c.finish(id, JobResult::Succeeded, WallMs(5000), 0.5), Finished::Abandoned);
    assert_eq!(status(&c, id), JobStatus::Pending);
}

#[test]
fn a_lease_the_store_disowns_is_lost_and_records_nothing() {
    let (c, id) = one_claimed(None);
    // Another worker's recovery took it (token changed under us).
    sync::lock(&c.store).jobs.get_mut(&id).unwrap().token = Some("someone-else".into());
    assert_eq!(c.renew(MonoMs(100), WallMs(100)), vec![id]);
    assert_eq!(c.finish(id, JobResult::Succeeded, WallMs(200), 0.5), Finished::Discarded("lease lost"));
    assert_eq!(status(&c, id), JobStatus::Running, "the other owner's row is untouched");
}

#[test]
fn a_full_daemon_does_not_ask_the_store() {
    let c = with_jobs(6, None);
    assert_eq!(c.claim(MonoMs(0), WallMs(0)).len(), 4, "the global cap");
    // A takeover the store would report: a claim that reached it would fence us.
    sync::lock(&c.store).epoch = Epoch(2);
    assert!(c.claim(MonoMs(1), WallMs(1)).is_empty());
    assert!(!c.fenced(), "with four leases of four, the claim never reached the store");
    let id = *c.held().first().unwrap();
    assert_eq!(c.finish(id, JobResult::Succeeded, WallMs(2), 0.5), Finished::Discarded("fenced"));
    assert!(c.claim(MonoMs(3), WallMs(3)).is_empty());
}

#[test]
fn timeouts_fail_the_run_with_backoff() {
    let (c, id) = one_claimed(Some(300));
    assert!(c.due(MonoMs(299)).is_empty());
    assert_eq!(c.due(MonoMs(300)), vec![(id, StopReason::Timeout)]);
    let f = c.finish(id, JobResult::Failed { error: "killed".into(), retryable: true }, WallMs(1000), 1.0);
    assert_eq!(f, Finished::Retry { run_after: WallMs(2000) });
    assert_eq!(sync::lock(&c.store).jobs[&id].errors, vec!["timed out after 300 ms".to_string()]);
}

#[test]
fn backoff_grows_and_is_capped() {
    let c = cfg();
    assert_eq!((c.backoff_ms(1, 1.0), c.backoff_ms(2, 1.0), c.backoff_ms(3, 1.0)), (1000, 2000, 4000));
    assert_eq!(c.backoff_ms(10, 1.0), 8000);
    assert_eq!(c.backoff_ms(2, 0.0), 1000, "jitter stays within the upper half");
    assert_eq!(c.backoff_ms(60, 0.5), 6000);
}

#[test]
fn shutdown_stops_claiming_and_releases_what_outlives_the_grace() {
    let c = with_jobs(3, None);
    let claimed = c.claim(MonoMs(0), WallMs(0));
    assert_eq!(claimed.len(), 3);
    c.begin_shutdown(MonoMs(100), 500);
    assert!(c.claim(MonoMs(150), WallMs(150)).is_empty(), "no claims while shutting down");
    // One finishes within the grace and is recorded normally.
    assert_eq!(c.finish(claimed[0].id, JobResult::Succeeded, WallMs(200), 0.5), Finished::Completed);
    assert!(c.due(MonoMs(599)).is_empty());
    let due = c.due(MonoMs(600));
    assert_eq!(due, vec![(claimed[1].id, StopReason::Shutdown), (claimed[2].id, StopReason::Shutdown)]);
    // Killed for shutdown: released with the attempt given back, whatever the exit.
    let f = c.finish(claimed[1].id, JobResult::Failed { error: "SIGTERM".into(), retryable: true }, WallMs(700), 0.5);
    assert_eq!(f, Finished::Released);
    let j = sync::lock(&c.store).jobs[&claimed[1].id].clone();
    assert_eq!((j.status, j.attempts, j.interruptions), (JobStatus::Pending, 0, 1));
    // A second signal can only shorten the grace.
    c.begin_shutdown(MonoMs(650), 10_000);
    assert!(c.due(MonoMs(650)).is_empty());
}

#[test]
fn fencing_stops_everything_and_records_nothing() {
    let c = with_jobs(2, None);
    let claimed = c.claim(MonoMs(0), WallMs(0));
    sync::lock(&c.store).epoch = Epoch(2);
    let mut lost = c.renew(MonoMs(100), WallMs(100));
    lost.sort_unstable();
    assert_eq!(lost, vec![claimed[0].id, claimed[1].id]);
    assert!(c.fenced());
    assert!(c.claim(MonoMs(200), WallMs(200)).is_empty());
    assert_eq!(c.finish(claimed[0].id, JobResult::Succeeded, WallMs(300), 0.5), Finished::Discarded("fenced"));
    assert_eq!(status(&c, claimed[0].id), JobStatus::Running, "a fenced worker writes nothing");
}

#[test]
fn an_unrefreshed_leader_row_stops_every_run_and_claims_nothing_until_refreshed() {
    let c = with_jobs(3, None);
    c.note_leader_refresh(MonoMs(0));
    let claimed = c.claim(MonoMs(0), WallMs(0));
    // Job leases renewed later than the leader row: the leader row's age decides.
    assert!(c.renew(MonoMs(500), WallMs(500)).is_empty());
    let stand_down_at = 1000 - 200 - 50;
    assert!(!c.standing_down(MonoMs(stand_down_at - 1)));
    assert!(c.due(MonoMs(stand_down_at - 1)).is_empty());
    assert!(c.standing_down(MonoMs(stand_down_at)));
    let mut due: Vec<JobId> = c.due(MonoMs(stand_down_at)).into_iter().map(|(id, _)| id).collect();
    due.sort_unstable();
    assert_eq!(due, claimed.iter().map(|j| j.id).collect::<Vec<_>>());
    assert_eq!(c.take_stops().len(), 3, "every stop is queued for the watchdog");
    assert!(c.claim(MonoMs(stand_down_at), WallMs(stand_down_at)).is_empty(), "standing down: no claims");
    // The daemon's trouble, not the job's: released, the attempt given back.
    assert_eq!(c.finish(claimed[0].id, JobResult::Succeeded, WallMs(900), 0.5), Finished::Released);
    assert_eq!(sync::lock(&c.store).jobs[&claimed[0].id].attempts, 0);
    assert_eq!(sync::lock(&c.store).jobs[&claimed[0].id].interruptions, 1);
    c.note_leader_refresh(MonoMs(2000));
    assert!(!c.standing_down(MonoMs(2000)));
    assert_eq!(c.claim(MonoMs(2000), WallMs(2000)).iter().map(|j| j.id).collect::<Vec<_>>(), vec![claimed[0].id]);
}

#[test]
fn a_fence_seen_by_a_claim_stops_every_running_job() {
    let c = with_jobs(2, None);
    let first = c.claim(MonoMs(0), WallMs(0));
    assert_eq!(first.len(), 2);
    sync::lock(&c.store).epoch = Epoch(2);
    assert!(c.claim(MonoMs(10), WallMs(10)).is_empty());
    assert!(c.fenced());
    let mut stops = c.take_stops();
    stops.sort_unstable_by_key(|(id, _)| *id);
    assert_eq!(stops, vec![(first[0].id, StopReason::Fenced), (first[1].id, StopReason::Fenced)]);
}

#[test]
fn a_job_that_keeps_losing_its_lease_ends_failed() {
    let c = with_jobs(1, None);
    for attempt in 1..=3 {
        let job = c.claim(MonoMs(0), WallMs(0)).remove(0);
        c.due(job_kill_by(&c, job.id));
        let f = c.finish(job.id, JobResult::Succeeded, WallMs(1), 0.5);
        assert_eq!(f, if attempt < 3 { Finished::Abandoned } else { Finished::Failed }, "attempt {attempt}");
    }
    assert!(c.claim(MonoMs(0), WallMs(0)).is_empty());
}

fn job_kill_by(c: &Coordinator<MemoryStore>, id: JobId) -> MonoMs {
    c.lease(id).unwrap().kill_by(&c.cfg, None)
}

#[test]
fn a_child_is_recorded_only_while_the_lease_is_ours() {
    let c = with_jobs(2, None);
    let claimed = c.claim(MonoMs(0), WallMs(0));
    let child = ChildIdentity { pid: 1, pgid: 1, boot_id: "b".into(), start_time: 1 };
    assert!(c.record_child(claimed[0].id, child.clone()));
    c.due(c.lease(claimed[1].id).unwrap().kill_by(&c.cfg, None));
    assert!(!c.record_child(claimed[1].id, child), "a lost lease must not release its child");
}

/// The in-memory store with the faults these tests need: with `full` set, renewals and
/// run records return `Unavailable` as on a full disk; with a `gate`, the first
/// `record_children` call says it has begun (on `entered`), then waits for the word to go
/// on, as a busy writer would. It notes how many records each `record_children` carried.
struct Faulty {
    inner: MemoryStore,
    full: bool,
    gate: Option<(std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>)>,
    calls: Vec<usize>,
}

impl Faulty {
    fn new(inner: MemoryStore) -> Faulty {
        Faulty { inner, full: false, gate: None, calls: Vec::new() }
    }
}

impl JobStore for Faulty {
    fn claim(&mut self, epoch: Epoch, worker: &str, limits: &ClaimLimits, now: WallMs) -> StoreResult<Vec<Claimed>> {
        self.inner.claim(epoch, worker, limits, now)
    }
    fn renew(&mut self, epoch: Epoch, held: &[(JobId, String)], now: WallMs) -> StoreResult<Vec<JobId>> {
        if self.full {
            return Err(StoreError::Unavailable(String::from("database or disk is full")));
        }
        self.inner.renew(epoch, held, now)
    }
    fn record_child(&mut self, claim: &ClaimRef, child: &ChildIdentity) -> StoreResult<bool> {
        self.inner.record_child(claim, child)
    }
    fn record_children(&mut self, items: &[(ClaimRef, ChildIdentity)]) -> Vec<StoreResult<bool>> {
        self.calls.push(items.len());
        if let Some((entered, go)) = self.gate.take() {
            entered.send(()).unwrap();
            go.recv().unwrap();
        }
        self.inner.record_children(items)
    }
    fn record_many(&mut self, items: &[RecordItem], now: WallMs) -> Vec<StoreResult<Recorded>> {
        if self.full {
            return items.iter().map(|_| Err(StoreError::Unavailable(String::from("disk full")))).collect();
        }
        self.inner.record_many(items, now)
    }
    fn orphan_children(&mut self, epoch: Epoch) -> StoreResult<Vec<(JobId, ChildIdentity)>> {
        self.inner.orphan_children(epoch)
    }
    fn recover(&mut self, epoch: Epoch, policy: OrphanPolicy, now: WallMs) -> StoreResult<Recovered> {
        self.inner.recover(epoch, policy, now)
    }
}

/// Children recorded while the store is busy with another's record are recorded together
/// once it is free, in one store call, and each thread gets its own answer (here one of
/// them a refusal).
#[test]
fn records_queued_behind_a_busy_store_share_one_call() {
    let mut inner = MemoryStore::new(Epoch(1));
    for _ in 0..3 {
        inner.enqueue(&NewJob::new("exec", "l", 3));
    }
    let (entered_tx, entered) = std::sync::mpsc::channel();
    let (go, gate) = std::sync::mpsc::channel();
    let store = Faulty { gate: Some((entered_tx, gate)), ..Faulty::new(inner) };
    let c = std::sync::Arc::new(Coordinator::new(cfg(), Epoch(1), store));
    let claimed = c.claim(MonoMs(0), WallMs(0));
    assert_eq!(claimed.len(), 3);
    // The second job's row is no longer this claim's (as after a takeover): the store
    // refuses that one record of the combined call, and only its thread hears so.
    sync::lock(&c.store).inner.jobs.get_mut(&claimed[1].id).unwrap().token = Some(String::from("another claim"));
    let child = |n: u32| ChildIdentity { pid: n, pgid: n, boot_id: "b".into(), start_time: 1 };
    let record = |i: usize| {
        let (c, id) = (c.clone(), claimed[i].id);
        std::thread::spawn(move || c.record_child_outcome(id, child(10 + i as u32)))
    };
    let first = record(0);
    entered.recv_timeout(std::time::Duration::from_secs(20)).unwrap();
    let others = [record(1), record(2)];
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while sync::lock(&c.children).queued.len() < 2 {
        assert!(std::time::Instant::now() < until, "the other records never queued");
        std::thread::yield_now();
    }
    go.send(()).unwrap();
    assert_eq!(first.join().unwrap(), ChildRecorded::Recorded);
    let [second, third] = others;
    assert_eq!(second.join().unwrap(), ChildRecorded::NotOurs);
    assert_eq!(third.join().unwrap(), ChildRecorded::Recorded);
    assert_eq!(sync::lock(&c.store).calls, vec![1, 2], "one call for the first, one for the two queued behind it");
    let pids: Vec<Option<u32>> = claimed.iter().map(|j| c.lease(j.id).unwrap().child.map(|ch| ch.pid)).collect();
    assert_eq!(pids, vec![Some(10), None, Some(12)]);
    assert!(sync::lock(&c.children).answered.is_empty(), "every answer was taken");
}

/// A start the daemon could not make (EMFILE...) is not the job's: postponed, its
/// attempt given back; claims pause, then resume under a cap of what did start that
/// grows with each start that succeeds. Failures of one wave, reported one by one,
/// are one episode: the pause does not grow with each of them.
#[test]
fn starts_that_fail_for_the_daemons_reasons_are_postponed_and_throttle_claims() {
    let c = with_jobs(8, None);
    let child = |n: u32| ChildIdentity { pid: n, pgid: n, boot_id: "b".into(), start_time: 1 };
    let wave = c.claim(MonoMs(0), WallMs(0));
    assert_eq!(wave.len(), 4, "the global cap");
    assert!(c.record_child(wave[0].id, child(10)), "one started");
    let emfile = || JobResult::NotStarted { error: String::from("Too many open files (os error 24)") };
    for job in &wave[1..] {
        let f = c.finish(job.id, emfile(), WallMs(100), 0.5);
        assert!(matches!(f, Finished::Postponed { run_after } if run_after > WallMs(100)), "{f:?}");
        let j = &sync::lock(&c.store).jobs[&job.id];
        assert_eq!((j.status, j.attempts, j.interruptions), (JobStatus::Pending, 0, 0), "nothing charged");
    }
    // Paused: the first pause is RESOURCE_BACKOFF_MS, however many failures it took.
    assert!(c.claim(MonoMs(10), WallMs(1_000)).is_empty());
    assert!(c.claim(MonoMs(10 + RESOURCE_BACKOFF_MS - 1), WallMs(1_000)).is_empty());
    // Then at most what runs (one) until a start succeeds.
    assert!(c.claim(MonoMs(10 + RESOURCE_BACKOFF_MS), WallMs(1_000)).is_empty(), "one lease held, cap one");
    assert_eq!(c.finish(wave[0].id, JobResult::Succeeded, WallMs(1_000), 0.5), Finished::Completed);
    let next = c.claim(MonoMs(10 + RESOURCE_BACKOFF_MS), WallMs(1_000));
    assert_eq!(next.len(), 1, "cap one");
    assert!(c.record_child(next[0].id, child(11)));
    assert_eq!(c.claim(MonoMs(10 + RESOURCE_BACKOFF_MS), WallMs(1_000)).len(), 1, "the cap grows with a start");
    // A new failure after claims resumed is a new episode: twice the pause.
    let more = c.held().into_iter().find(|id| *id != next[0].id).unwrap();
    assert!(matches!(c.finish(more, emfile(), WallMs(1_000), 0.5), Finished::Postponed { .. }));
    assert!(c.claim(MonoMs(100), WallMs(1_000)).is_empty());
    assert!(c.claim(MonoMs(100 + 2 * RESOURCE_BACKOFF_MS - 1), WallMs(1_000)).is_empty());
    assert_eq!(c.claim(MonoMs(100 + 2 * RESOURCE_BACKOFF_MS), WallMs(1_000)).len(), 0, "one held, cap one");
    // And the job's own failure is still charged.
    let f = c.finish(next[0].id, JobResult::Failed { error: "exit 1".into(), retryable: true }, WallMs(1_000), 0.5);
    assert!(matches!(f, Finished::Retry { .. }), "{f:?}");
    assert_eq!(sync::lock(&c.store).jobs[&next[0].id].attempts, 1);
}

#[test]
fn recovery_requeues_orphans_after_the_orphan_delay() {
    let mut store = MemoryStore::new(Epoch(1));
    let id = store.enqueue(&NewJob::new("noop", "l", 3));
    store.claim(Epoch(1), "old", &cfg().limits, WallMs(0)).unwrap();
    store.epoch = Epoch(2);
    let mut config = cfg();
    config.orphan_retry_delay_ms = 50;
    let c = Coordinator::new(config, Epoch(2), store);
    let rec = c.recover(WallMs(1000)).unwrap();
    assert_eq!(rec.requeued, vec![id]);
    assert!(c.claim(MonoMs(0), WallMs(1049)).is_empty());
    assert_eq!(c.claim(MonoMs(0), WallMs(1050))[0].attempt, 2);
}

mod ended_tests {
    use super::*;
    use crate::engine::memory::MemoryStore;
    use crate::job::NewJob;

    #[test]
    fn a_run_that_ended_before_its_deadline_keeps_its_result() {
        let mut store = MemoryStore::new(Epoch(1));
        store.enqueue(&NewJob::new("noop", "l", 3));
        let cfg = EngineConfig {
            shutdown_grace_ms: 0,
            backoff_base_ms: 10,
            backoff_cap_ms: 100,
            max_interruptions: 1,
            ..EngineConfig::for_tests()
        };
        let c = Coordinator::new(cfg, Epoch(1), store);
        let id = c.claim(MonoMs(0), WallMs(0))[0].id;
        c.mark_ended(id);
        // The engine records late, after the kill-by time: nothing is due, the result stands.
        assert!(c.due(MonoMs(10_000)).is_empty());
        assert_eq!(c.next_deadline(), None);
        assert_eq!(c.finish(id, JobResult::Succeeded, WallMs(10_000), 0.5), Finished::Completed);
    }
}

/// A run whose program exited on its own (its leftover group still being killed, its
/// output drained) is not stopped by a later deadline or cancel, and its result is what
/// is recorded; a stop decided before it exited decides, as the stop may be what ended
/// it; a fence after the exit still records nothing.
#[test]
fn a_program_that_exited_on_its_own_keeps_its_result() {
    let c = with_jobs(4, Some(300));
    let claimed = c.claim(MonoMs(0), WallMs(0));
    let (a, b, d, e) = (claimed[0].id, claimed[1].id, claimed[2].id, claimed[3].id);
    c.mark_exited(a);
    c.mark_exited(b);
    c.request_cancel(d);
    // d's cancel was decided before its program exited: it may be what ended it.
    c.mark_exited(d);
    assert!(c.request_cancel(a), "a is still held");
    assert_eq!(c.lease(a).unwrap().stop, None, "a cancel after the exit stops nothing");
    assert_eq!(c.take_stops(), vec![(d, StopReason::Cancelled)]);
    assert_eq!(c.due(MonoMs(300)), vec![(e, StopReason::Timeout)], "only the run still going");
    // Past every kill-by time and a shutdown grace: nothing more is due, and no deadline
    // is left to wake the watchdog for.
    c.begin_shutdown(MonoMs(300), 0);
    assert!(c.due(MonoMs(100_000)).is_empty());
    assert_eq!(c.next_deadline(), None);
    assert_eq!(c.finish(a, JobResult::Succeeded, WallMs(400), 0.5), Finished::Completed);
    let failed = JobResult::Failed { error: "exited with status 3".into(), retryable: true };
    assert_eq!(c.finish(b, failed, WallMs(400), 1.0), Finished::Retry { run_after: WallMs(1400) });
    assert_eq!(sync::lock(&c.store).jobs[&b].errors, vec!["exited with status 3".to_string()]);
    assert_eq!(c.finish(d, JobResult::Succeeded, WallMs(400), 0.5), Finished::Cancelled);
    // A fence after the exit still records nothing.
    let (c, id) = one_claimed(None);
    c.mark_exited(id);
    c.fence();
    assert_eq!(c.finish(id, JobResult::Succeeded, WallMs(10), 0.5), Finished::Discarded("fenced"));
}

/// A job claimed after the leader row's last refresh, whose renewals then fail because
/// the disk is full, runs out of lease before the leader row counts as stale: it is still
/// the daemon's trouble (stand-down, released with its attempt given back), never a lost
/// lease charged to the job. Renewals that are written but find the row gone are a lost
/// lease, as before.
#[test]
fn a_lease_that_runs_out_while_renewals_cannot_be_written_is_a_stand_down() {
    let mut inner = MemoryStore::new(Epoch(1));
    let id = inner.enqueue(&NewJob::new("noop", "l", 1));
    let c = Coordinator::new(cfg(), Epoch(1), Faulty::new(inner));
    assert_eq!(c.claim(MonoMs(50), WallMs(50)).len(), 1);
    // The leader row's last refresh comes after the claim; then the disk fills.
    c.note_leader_refresh(MonoMs(100));
    sync::lock(&c.store).full = true;
    assert!(c.renew(MonoMs(150), WallMs(150)).is_empty());
    let kill_by = c.lease(id).unwrap().kill_by(&c.cfg, Some(MonoMs(100)));
    assert_eq!(kill_by, MonoMs(50) + (c.cfg.stale_ms - c.cfg.kill_grace_ms - c.cfg.margin_ms()));
    assert!(c.due(kill_by - 1).is_empty());
    assert!(!c.standing_down(kill_by), "the leader row alone does not say stand-down yet");
    assert_eq!(c.due(kill_by), vec![(id, StopReason::StandDown)]);
    // Released, the attempt given back, once the disk has room again.
    sync::lock(&c.store).full = false;
    assert_eq!(c.finish(id, JobResult::Succeeded, WallMs(5000), 0.5), Finished::Released);
    let j = &sync::lock(&c.store).inner.jobs[&id];
    assert_eq!((j.status, j.attempts), (JobStatus::Pending, 0));
}

/// What a renewal did, for the engine's event: written, refused with the store's reason
/// (never a reason left over from an earlier call), fenced, or nothing to renew.
#[test]
fn each_renewal_tells_what_it_did() {
    let mut inner = MemoryStore::new(Epoch(1));
    inner.enqueue(&NewJob::new("noop", "l", 1));
    let c = Coordinator::new(cfg(), Epoch(1), Faulty::new(inner));
    assert_eq!(c.renew_told(MonoMs(10), WallMs(10)).1, Renewal::Nothing, "nothing held");
    assert_eq!(c.claim(MonoMs(50), WallMs(50)).len(), 1);
    assert_eq!(c.renew_told(MonoMs(100), WallMs(100)).1, Renewal::Written);
    sync::lock(&c.store).full = true;
    assert_eq!(c.renew_told(MonoMs(150), WallMs(150)).1, Renewal::Refused(String::from("database or disk is full")));
    sync::lock(&c.store).full = false;
    assert_eq!(c.renew_told(MonoMs(200), WallMs(200)).1, Renewal::Written, "the refusal is not remembered");
    sync::lock(&c.store).inner.epoch = Epoch(2);
    assert_eq!(c.renew_told(MonoMs(250), WallMs(250)).1, Renewal::Fenced);
    assert_eq!(c.renew_told(MonoMs(300), WallMs(300)).1, Renewal::Nothing, "fenced: no store call");
}
