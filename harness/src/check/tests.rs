//! Each checker against hand-made histories: what it catches and what it lets pass.

use super::*;
use crate::history::{PowerCut, ProcKind, ProcRecord};
use serde_json::{json, Value};

/// Builds histories tick by tick: every event or exit advances the clock by 10 ms and
/// events get consecutive `seq`s.
#[derive(Default)]
struct Hb {
    h: History,
    tick: u64,
}

impl Hb {
    fn now(&mut self) -> Duration {
        self.tick += 1;
        Duration::from_millis(self.tick * 10)
    }

    fn daemon(mut self, name: &str, pid: u32) -> Hb {
        let started = self.now();
        self.h.procs.push(ProcRecord {
            name: name.into(),
            pid,
            kind: ProcKind::Daemon,
            started,
            exited: None,
            killed: None,
            exit_code: None,
            signal: None,
        });
        self
    }

    fn ev(mut self, name: &str, event: &str, fields: Value) -> Hb {
        let pid = self.h.procs.iter().find(|p| p.name == name).map_or(999, |p| p.pid);
        let mut json = json!({"event": event, "pid": pid});
        if let (Some(obj), Value::Object(extra)) = (json.as_object_mut(), fields) {
            obj.extend(extra);
        }
        let at = self.now();
        let seq = self.h.events.len() as u64;
        self.h.events.push(Event { proc_name: name.into(), pid, seq, at, json });
        self
    }

    fn active(self, name: &str, epoch: i64) -> Hb {
        self.ev(name, "daemon.active", json!({ "epoch": epoch }))
    }

    fn acquired(self, name: &str, ino: u64) -> Hb {
        self.ev(name, "lock.acquired", json!({"dev": 66, "ino": ino, "path": "/h/homer.lock", "epoch": 1}))
    }

    fn exit(mut self, name: &str, signal: Option<i32>) -> Hb {
        let at = self.now();
        if let Some(p) = self.h.procs.iter_mut().find(|p| p.name == name) {
            p.exited = Some(at);
            p.exit_code = if signal.is_none() { Some(0) } else { None };
            p.signal = signal;
        }
        self
    }

    /// The harness sends `name` SIGKILL now (its exit is observed later, or never).
    fn kill(mut self, name: &str) -> Hb {
        let at = self.now();
        if let Some(p) = self.h.procs.iter_mut().find(|p| p.name == name) {
            p.killed = Some(at);
        }
        self
    }

    fn effect(mut self, kind: EffectKind, job_id: i64, run: i64, mono_ns: u64) -> Hb {
        let pid = 10_000 + u32::try_from(job_id * 100 + run).unwrap();
        let token = format!("tok{job_id}.{run}");
        self.h.effects.push(Effect { kind, job_id, run, attempt: run, token, pid, mono_ns });
        self
    }

    /// A run of `job_id` that worked from `start` to `end` (ms).
    fn span(self, job_id: i64, run: i64, start: u64, end: Option<u64>) -> Hb {
        let hb = self.effect(EffectKind::Start, job_id, run, start * 1_000_000);
        match end {
            Some(end) => hb.effect(EffectKind::End, job_id, run, end * 1_000_000),
            None => hb,
        }
    }

    fn db(mut self, db: DbState) -> Hb {
        self.h.db = Some(db);
        self
    }

    fn acked(mut self, ids: &[i64]) -> Hb {
        self.h.acked.extend_from_slice(ids);
        self
    }

    fn build(self) -> History {
        self.h
    }
}

fn db(jobs: Vec<JobRow>, runs: Vec<RunRow>, leader_epoch: i64) -> DbState {
    DbState { jobs, runs, leader_epoch, integrity: String::from("ok"), workers: Vec::new() }
}

fn job(id: i64, status: &str) -> JobRow {
    JobRow::unclaimed(id, status)
}

fn running(id: i64, token: &str, epoch: i64) -> JobRow {
    job(id, "running").held("host:1", token, epoch)
}

/// Run row ids are assigned in the order rows are listed (commit order).
fn runs(rows: &[(i64, i64, i64, &str, Option<&str>)]) -> Vec<RunRow> {
    rows.iter()
        .enumerate()
        .map(|(i, &(job_id, run, epoch, token, outcome))| RunRow {
            id: i as i64 + 1,
            job_id,
            run,
            attempt: run,
            epoch,
            claim_token: token.into(),
            outcome: outcome.map(String::from),
            ended: outcome.is_some(),
            error: None,
        })
        .collect()
}

#[track_caller]
fn assert_passes(found: Vec<Violation>) {
    assert!(found.is_empty(), "unexpected violations: {found:#?}");
}

/// Asserts `found` is non-empty, all from `checker`, and one mentions `needle`.
#[track_caller]
fn assert_rejects(found: Vec<Violation>, checker: &str, needle: &str) {
    assert!(!found.is_empty(), "{checker} accepted a bad history");
    assert!(found.iter().all(|v| v.checker == checker), "{found:#?}");
    assert!(found.iter().any(|v| v.message.contains(needle)), "no violation mentions {needle:?}: {found:#?}");
}

#[test]
fn single_active_accepts_a_takeover_with_a_higher_epoch() {
    let h = Hb::default()
        .daemon("a", 100)
        .active("a", 1)
        .exit("a", Some(9))
        .daemon("b", 200)
        .active("b", 2)
        .db(db(vec![], runs(&[(1, 1, 1, "t1", Some("orphaned")), (2, 1, 1, "t2", None), (1, 2, 2, "t3", None)]), 2))
        .build();
    assert_passes(single_active(&h));
}

#[test]
fn single_active_keeps_epochs_per_database() {
    let h = Hb::default()
        .daemon("a", 100)
        .daemon("b", 200)
        .ev("a", "daemon.active", json!({"epoch": 2, "database": "/one/homer.db"}))
        .ev("b", "daemon.active", json!({"epoch": 1, "database": "/two/homer.db"}))
        .build();
    assert_passes(single_active(&h));
    let h = Hb::default()
        .daemon("a", 100)
        .daemon("b", 200)
        .ev("a", "daemon.active", json!({"epoch": 1, "database": "/one/homer.db"}))
        .ev("b", "daemon.active", json!({"epoch": 1, "database": "/one/homer.db"}))
        .build();
    assert_rejects(single_active(&h), SINGLE_ACTIVE, "epoch 1 made active twice");
}

#[test]
fn single_active_rejects_one_epoch_made_active_twice() {
    let h = Hb::default().daemon("a", 100).daemon("b", 200).active("a", 3).active("b", 3).build();
    assert_rejects(single_active(&h), SINGLE_ACTIVE, "epoch 3 made active twice");
}

#[test]
fn single_active_rejects_an_epoch_going_backwards_or_missing() {
    let h = Hb::default().daemon("a", 100).daemon("b", 200).active("a", 5).active("b", 4).build();
    assert_rejects(single_active(&h), SINGLE_ACTIVE, "with epoch 4 after");
    let h = Hb::default().daemon("a", 100).ev("a", "daemon.active", json!({})).build();
    assert_rejects(single_active(&h), SINGLE_ACTIVE, "no integer epoch");
}

#[test]
fn single_active_rejects_a_superseded_epoch_committing() {
    let h = Hb::default().db(db(vec![], runs(&[(1, 1, 2, "t1", None), (2, 1, 1, "t2", None)]), 2)).build();
    assert_rejects(single_active(&h), SINGLE_ACTIVE, "a superseded epoch committed");
    let h = Hb::default().db(db(vec![], runs(&[(1, 1, 3, "t1", None)]), 2)).build();
    assert_rejects(single_active(&h), SINGLE_ACTIVE, "above the leader row's epoch 2");
}

/// PostgreSQL: one line of succession per worker name (a home on a host).
fn workers(rows: &[(i64, &str)]) -> Vec<crate::history::WorkerRow> {
    rows.iter()
        .map(|&(incarnation, name)| crate::history::WorkerRow {
            incarnation,
            name: name.into(),
            fenced: false,
            stopped: false,
        })
        .collect()
}

#[test]
fn single_active_on_postgres_judges_each_home_s_line_of_succession() {
    // Two homes active at once, their incarnations interleaving in the events and in
    // job_runs: allowed. Home a's incarnation 3 succeeds its 1.
    let registered = |hb: Hb, name: &str, worker: &str| hb.ev(name, "worker.registered", json!({ "name": worker }));
    let pg = |epoch: i64| json!({"epoch": epoch, "database": "postgres://homer@127.0.0.1:5/homer"});
    let lines = workers(&[(1, "h/b:/a"), (2, "h/b:/b"), (3, "h/b:/a")]);
    let two_homes = |runs_: Vec<RunRow>| {
        let hb = Hb::default().daemon("b", 200);
        let hb = registered(hb, "b", "h/b:/b").ev("b", "daemon.active", pg(2)).daemon("a", 100);
        let hb = registered(hb, "a", "h/b:/a").ev("a", "daemon.active", pg(1)).daemon("a2", 300);
        let hb = registered(hb, "a2", "h/b:/a").ev("a2", "daemon.active", pg(3));
        hb.db(DbState { workers: lines.clone(), ..db(vec![], runs_, 3) }).build()
    };
    let h =
        two_homes(runs(&[(1, 1, 2, "t1", None), (2, 1, 1, "t2", None), (3, 1, 2, "t3", None), (2, 2, 3, "t4", None)]));
    assert_passes(single_active(&h));
    // Home a's predecessor (1) commits after its successor (3): a superseded incarnation.
    let h = two_homes(runs(&[(1, 1, 3, "t1", None), (2, 1, 2, "t2", None), (3, 1, 1, "t3", None)]));
    assert_rejects(single_active(&h), SINGLE_ACTIVE, "a superseded epoch committed");
    // A run under an incarnation no worker row has.
    let h = two_homes(runs(&[(1, 1, 7, "t1", None)]));
    assert_rejects(single_active(&h), SINGLE_ACTIVE, "epoch 7, which no worker row has");
    // One home's line going backwards in the events is still caught.
    let hb = Hb::default().daemon("a", 100);
    let hb = registered(hb, "a", "h/b:/a").ev("a", "daemon.active", pg(3)).daemon("a2", 300);
    let h = registered(hb, "a2", "h/b:/a").ev("a2", "daemon.active", pg(1)).build();
    assert_rejects(single_active(&h), SINGLE_ACTIVE, "with epoch 1 after");
}

#[test]
fn lock_holders_accepts_release_death_and_a_fresh_inode() {
    // b locks after a released; c after b died by SIGKILL (the kernel released it).
    let h = Hb::default()
        .daemon("a", 100)
        .acquired("a", 7)
        .ev("a", "lock.released", json!({}))
        .daemon("b", 200)
        .acquired("b", 7)
        .exit("b", Some(9))
        .daemon("c", 300)
        .acquired("c", 7)
        .build();
    assert_passes(lock_holders(&h));
    // failure mode 7: a (paused) still holds the deleted inode 7 while d locks a new file.
    let h = Hb::default()
        .daemon("a", 100)
        .acquired("a", 7)
        .daemon("d", 400)
        .acquired("d", 8)
        .ev("a", "lock.lost", json!({}))
        .ev("a", "daemon.fenced", json!({}))
        .exit("a", None)
        .build();
    assert_passes(lock_holders(&h));
}

/// a locks inode 7, then b starts and locks inode 7 too.
fn both_lock_7() -> Hb {
    Hb::default().daemon("a", 100).acquired("a", 7).daemon("b", 200).acquired("b", 7)
}

#[test]
fn lock_holders_rejects_a_second_holder_of_a_live_holders_inode() {
    let h = both_lock_7().build();
    assert_rejects(lock_holders(&h), LOCK_HOLDERS, "two holders of lock inode dev 66 ino 7");
    // The first holder exits only after the second acquired: still two holders.
    let h = both_lock_7().exit("a", None).build();
    assert_rejects(lock_holders(&h), LOCK_HOLDERS, "exit at");
}

#[test]
fn lock_holders_rejects_a_clash_on_a_reacquired_inode() {
    let h = Hb::default()
        .daemon("a", 100)
        .acquired("a", 7)
        .ev("a", "lock.lost", json!({}))
        .ev("a", "lock.reacquired", json!({"dev": 66, "ino": 9, "path": "/h/homer.lock"}))
        .daemon("b", 200)
        .acquired("b", 9)
        .ev("b", "lock.released", json!({}))
        .ev("a", "lock.released", json!({}))
        .build();
    assert_rejects(lock_holders(&h), LOCK_HOLDERS, "ino 9");
}

#[test]
fn lock_holders_ends_a_killed_holders_hold_when_the_kill_was_sent() {
    // a is SIGKILLed; the kernel drops its flock as it dies, and b's lock.acquired arrives
    // before the harness sees a's exit. The hold ended at the kill: one holder at a time.
    let h = Hb::default()
        .daemon("a", 100)
        .acquired("a", 7)
        .kill("a")
        .daemon("b", 200)
        .acquired("b", 7)
        .exit("a", Some(9))
        .build();
    assert_passes(lock_holders(&h));
    // The same order without a kill from the harness (a exits by itself later) is two
    // holders: nothing else ends a hold early.
    let h = both_lock_7().exit("a", Some(9)).build();
    assert_rejects(lock_holders(&h), LOCK_HOLDERS, "two holders of lock inode dev 66 ino 7");
    // A lock reported before the kill was sent is still a second holder.
    let h = both_lock_7().kill("a").exit("a", Some(9)).build();
    assert_rejects(lock_holders(&h), LOCK_HOLDERS, "two holders of lock inode dev 66 ino 7");
}

#[test]
fn lock_holders_rejects_lock_events_without_an_inode() {
    let h = Hb::default().daemon("a", 100).ev("a", "lock.acquired", json!({"path": "/h/homer.lock"})).build();
    assert_rejects(lock_holders(&h), LOCK_HOLDERS, "no integer dev/ino");
}

#[test]
fn no_overlap_accepts_serial_runs_and_a_killed_run() {
    let h = Hb::default()
        .span(1, 1, 100, Some(200))
        .span(1, 2, 300, Some(400))
        .span(2, 1, 150, Some(350)) // another job may run beside job 1
        .span(1, 3, 500, None) // killed: no end
        .span(1, 4, 600, Some(700))
        .effect(EffectKind::GrandchildStart, 1, 4, 610_000_000)
        .effect(EffectKind::GrandchildEnd, 1, 4, 650_000_000)
        .build();
    assert_passes(no_overlap(&h));
}

#[test]
fn no_overlap_rejects_an_overlap_record() {
    let h = Hb::default().span(1, 1, 100, None).effect(EffectKind::Overlap, 1, 2, 150_000_000).build();
    assert_rejects(no_overlap(&h), NO_OVERLAP, "job 1 run 2 (attempt 2");
}

#[test]
fn no_overlap_rejects_intersecting_runs() {
    let h = Hb::default().span(1, 1, 100, Some(300)).span(1, 2, 200, Some(400)).build();
    let found = no_overlap(&h);
    assert_eq!(found.len(), 1, "one pair, reported once: {found:#?}");
    assert_rejects(found, NO_OVERLAP, "run 2 (pid 10102) started at +100.000 ms while run 1");
    // A killed run that started inside a finished run's span is an overlap too.
    let h = Hb::default().span(1, 1, 100, Some(300)).span(1, 2, 200, None).build();
    assert_rejects(no_overlap(&h), NO_OVERLAP, "while run 1");
}

#[test]
fn no_overlap_rejects_a_run_started_twice() {
    let h = Hb::default().span(1, 1, 100, Some(200)).effect(EffectKind::Start, 1, 1, 300_000_000).build();
    assert_rejects(no_overlap(&h), NO_OVERLAP, "job 1 run 1 started 2 times");
}

fn power_cut(mut hb: Hb, at_ms: u64) -> Hb {
    let at = hb.now();
    hb.h.power_cuts.push(PowerCut { at, mono_ns: at_ms * 1_000_000, last_seq: hb.h.events.len() as u64 });
    hb
}

/// A run of `job_id` by a later claim that got the same run number (its own token and
/// process), from `start` to `end` (ms).
fn reclaimed(mut hb: Hb, job_id: i64, run: i64, start: u64, end: Option<u64>) -> Hb {
    let pid = 20_000 + u32::try_from(job_id * 100 + run).unwrap();
    let token = format!("tok{job_id}.{run}-again");
    let at =
        |kind, ms: u64| Effect { kind, job_id, run, attempt: run, token: token.clone(), pid, mono_ns: ms * 1_000_000 };
    hb.h.effects.push(at(EffectKind::Start, start));
    if let Some(end) = end {
        hb.h.effects.push(at(EffectKind::End, end));
    }
    hb
}

#[test]
fn no_overlap_lets_a_power_cut_hand_a_run_number_back() {
    // Run 2 was claimed and started, the cut killed it and dropped its (unsynced)
    // claim: the next claim is run 2 again.
    let hb = Hb::default().span(1, 1, 100, Some(200)).span(1, 2, 300, None);
    let h = reclaimed(power_cut(hb, 350), 1, 2, 400, Some(500)).build();
    assert_passes(no_overlap(&h));
    // Within one era it is still a run started twice, cuts or not.
    let hb = Hb::default().span(1, 2, 100, None);
    let h = reclaimed(power_cut(hb, 150).span(1, 2, 200, None), 1, 2, 300, Some(400)).build();
    assert_rejects(no_overlap(&h), NO_OVERLAP, "job 1 run 2 started 2 times in power era 1");
    // And a run that starts while another is alive is an overlap across eras too.
    let hb = Hb::default().span(1, 1, 100, Some(500));
    let h = power_cut(hb, 150).span(1, 2, 200, Some(300)).build();
    assert_rejects(no_overlap(&h), NO_OVERLAP, "while run 1");
}

fn with_errors(mut runs: Vec<RunRow>, errors: &[Option<&str>]) -> Vec<RunRow> {
    for (r, e) in runs.iter_mut().zip(errors) {
        r.error = e.map(String::from);
    }
    runs
}

#[test]
fn resources_not_charged_accepts_postponed_starts_and_the_jobs_own_failures() {
    let emfile = format!("cannot start [\"x\"]: {}", std::io::Error::from_raw_os_error(libc::EMFILE));
    let rows = runs(&[
        (1, 1, 1, "a", Some("not_started")),
        (1, 2, 1, "b", Some("failed")),
        (1, 3, 1, "c", Some("abandoned")),
        (1, 4, 1, "d", Some("completed")),
    ]);
    let rows =
        with_errors(rows, &[Some(&emfile), Some("exited with code 3"), Some("lease lost: the run was stopped"), None]);
    assert_passes(resources_not_charged(&Hb::default().db(db(vec![job(1, "completed")], rows, 1)).build()));
}

#[test]
fn resources_not_charged_rejects_a_charged_resource_failure() {
    for (code, outcome) in [(libc::EMFILE, "failed"), (libc::ENOSPC, "abandoned"), (libc::EAGAIN, "failed")] {
        let error = format!("cannot start [\"x\"]: {}", std::io::Error::from_raw_os_error(code));
        let rows = with_errors(runs(&[(1, 1, 1, "a", Some(outcome))]), &[Some(&error)]);
        let h = Hb::default().db(db(vec![job(1, "pending")], rows, 1)).build();
        assert_rejects(resources_not_charged(&h), RESOURCES_NOT_CHARGED, &format!("charged as `{outcome}`"));
    }
}

#[test]
fn resources_not_charged_rejects_a_charged_run_that_never_started() {
    let error = "not started: the lease was lost first";
    for outcome in ["failed", "abandoned"] {
        let rows = with_errors(runs(&[(1, 1, 1, "a", Some(outcome))]), &[Some(error)]);
        let h = Hb::default().db(db(vec![job(1, "pending")], rows, 1)).build();
        assert_rejects(resources_not_charged(&h), RESOURCES_NOT_CHARGED, "its program never started");
    }
    // Given back, it is no charge.
    let rows = with_errors(runs(&[(1, 1, 1, "a", Some("not_started"))]), &[Some(error)]);
    assert_passes(resources_not_charged(&Hb::default().db(db(vec![job(1, "pending")], rows, 1)).build()));
}

#[test]
fn outcome_latest_claim_accepts_consistent_rows() {
    let h = Hb::default()
        .db(db(
            vec![job(1, "completed"), running(2, "t2.2", 2), job(3, "failed"), job(4, "pending")],
            runs(&[
                (1, 1, 1, "t1.1", Some("orphaned")),
                (2, 1, 1, "t2.1", Some("orphaned")),
                (3, 1, 1, "t3.1", Some("failed")),
                (1, 2, 2, "t1.2", Some("completed")),
                (2, 2, 2, "t2.2", None),
                (4, 1, 2, "t4.1", Some("released")),
            ]),
            2,
        ))
        .build();
    assert_passes(outcome_latest_claim(&h));
}

#[test]
fn outcome_latest_claim_rejects_two_outcomes_and_a_stale_completion() {
    let two = runs(&[(1, 1, 1, "a", Some("completed")), (1, 2, 2, "b", Some("completed"))]);
    let h = Hb::default().db(db(vec![job(1, "completed")], two, 2)).build();
    assert_rejects(outcome_latest_claim(&h), OUTCOME_LATEST_CLAIM, "an outcome recorded twice");
    let stale = runs(&[(1, 1, 1, "a", Some("completed")), (1, 2, 2, "b", Some("orphaned"))]);
    let h = Hb::default().db(db(vec![job(1, "completed")], stale, 2)).build();
    assert_rejects(outcome_latest_claim(&h), OUTCOME_LATEST_CLAIM, "a superseded claim recorded the outcome");
    let none = runs(&[(1, 1, 1, "a", Some("orphaned"))]);
    let h = Hb::default().db(db(vec![job(1, "completed")], none, 1)).build();
    assert_rejects(outcome_latest_claim(&h), OUTCOME_LATEST_CLAIM, "no run recorded `completed`");
    // Completed before job_runs existed (upgraded database): no history, no verdict.
    let h = Hb::default().db(db(vec![job(1, "completed")], Vec::new(), 1)).build();
    assert!(outcome_latest_claim(&h).is_empty());
    let not_done = runs(&[(1, 1, 1, "a", Some("completed"))]);
    let h = Hb::default().db(db(vec![job(1, "pending")], not_done, 1)).build();
    assert_rejects(outcome_latest_claim(&h), OUTCOME_LATEST_CLAIM, "job 1 is pending but run 1");
}

#[test]
fn outcome_latest_claim_rejects_lock_columns_left_on_a_terminal_job() {
    let h = Hb::default()
        .db(db(
            vec![JobRow { locked_by: Some(String::from("w")), ..job(1, "failed") }],
            runs(&[(1, 1, 1, "a", Some("failed"))]),
            1,
        ))
        .build();
    assert_rejects(outcome_latest_claim(&h), OUTCOME_LATEST_CLAIM, "keeps its lock columns");
}

#[test]
fn outcome_latest_claim_rejects_a_running_job_not_held_by_its_latest_run() {
    let rows = runs(&[(1, 1, 1, "old", Some("orphaned")), (1, 2, 2, "new", None)]);
    let h = Hb::default().db(db(vec![running(1, "old", 1)], rows.clone(), 2)).build();
    assert_rejects(outcome_latest_claim(&h), OUTCOME_LATEST_CLAIM, "holds claim token Some(\"old\")");
    let h = Hb::default().db(db(vec![running(1, "new", 1)], rows, 2)).build();
    assert_rejects(outcome_latest_claim(&h), OUTCOME_LATEST_CLAIM, "epoch Some(1)");
    let ended = runs(&[(1, 1, 1, "a", Some("released"))]);
    let h = Hb::default().db(db(vec![running(1, "a", 1)], ended, 1)).build();
    assert_rejects(outcome_latest_claim(&h), OUTCOME_LATEST_CLAIM, "already ended (released)");
    let h = Hb::default().db(db(vec![running(1, "a", 1)], vec![], 1)).build();
    assert_rejects(outcome_latest_claim(&h), OUTCOME_LATEST_CLAIM, "has no run");
}

fn queue(statuses: &[&str]) -> DbState {
    let jobs = statuses.iter().enumerate().map(|(i, s)| job(i as i64 + 1, s)).collect();
    db(jobs, vec![], 1)
}

#[test]
fn nothing_lost_accepts_terminal_and_allowed_jobs() {
    let h = Hb::default().db(queue(&["completed", "failed", "cancelled", "pending"])).acked(&[1, 2, 3, 4, 4]).build();
    let allow_pending = CheckOptions { allow_statuses: vec![String::from("pending")], none_running: true };
    assert_passes(nothing_lost(&h, &allow_pending));
    assert_passes(nothing_lost(&Hb::default().build(), &CheckOptions { none_running: true, ..Default::default() }));
}

#[test]
fn nothing_lost_rejects_missing_unfinished_and_running_jobs() {
    let options = CheckOptions { none_running: true, ..Default::default() };
    let h = Hb::default().db(queue(&["completed"])).acked(&[1, 2]).build();
    assert_rejects(nothing_lost(&h, &options), NOTHING_LOST, "acknowledged job 2 is not in job_queue");
    let h = Hb::default().db(queue(&["completed", "pending"])).acked(&[1, 2]).build();
    assert_rejects(nothing_lost(&h, &options), NOTHING_LOST, "acknowledged job 2 is pending");
    // Not acknowledged, but running with no daemon left: a stuck lane.
    let h = Hb::default().db(db(vec![running(1, "t", 1)], vec![], 1)).build();
    assert_rejects(nothing_lost(&h, &options), NOTHING_LOST, "job 1 is still running (locked by host:1)");
    assert_passes(nothing_lost(&h, &CheckOptions::default()));
    let h = Hb::default().acked(&[1]).build();
    assert_rejects(nothing_lost(&h, &options), NOTHING_LOST, "no database");
}

#[test]
fn attempts_bounded_accepts_a_spent_budget_and_rejects_more() {
    let spent = JobRow { attempts: 3, ..job(1, "failed") };
    assert_passes(attempts_bounded(&Hb::default().db(db(vec![spent], vec![], 1)).build()));
    let over = JobRow { attempts: 4, ..job(1, "failed") };
    let h = Hb::default().db(db(vec![over], vec![], 1)).build();
    assert_rejects(attempts_bounded(&h), ATTEMPTS_BOUNDED, "attempts 4 outside 0..=3");
    let negative = JobRow { attempts: -1, interruptions: -1, ..job(1, "pending") };
    let h = Hb::default().db(db(vec![negative], vec![], 1)).build();
    assert_rejects(attempts_bounded(&h), ATTEMPTS_BOUNDED, "negative interruptions");
}

#[test]
fn integrity_accepts_ok_and_rejects_anything_else() {
    assert_passes(integrity(&Hb::default().db(queue(&[])).build()));
    let corrupt = DbState { integrity: String::from("*** in database main ***; Page 3: never used"), ..queue(&[]) };
    assert_rejects(integrity(&Hb::default().db(corrupt).build()), INTEGRITY, "Page 3: never used");
}

#[test]
fn check_all_runs_every_checker() {
    let good = Hb::default()
        .daemon("a", 100)
        .acquired("a", 7)
        .active("a", 1)
        .span(1, 1, 100, Some(200))
        .ev("a", "lock.released", json!({}))
        .exit("a", None)
        .db(db(vec![job(1, "completed")], runs(&[(1, 1, 1, "tok1.1", Some("completed"))]), 1))
        .acked(&[1])
        .build();
    let options = CheckOptions { none_running: true, ..Default::default() };
    assert_passes(check_all(&good, &options));

    let bad = Hb::default()
        .daemon("a", 100)
        .daemon("b", 200)
        .acquired("a", 7)
        .acquired("b", 7)
        .active("a", 1)
        .active("b", 1)
        .span(1, 1, 100, Some(300))
        .span(1, 2, 200, Some(400))
        .db(DbState {
            integrity: String::from("malformed"),
            ..db(
                vec![JobRow { attempts: 5, ..job(1, "completed") }],
                with_errors(
                    runs(&[
                        (1, 1, 1, "a", Some("completed")),
                        (1, 2, 1, "b", Some("completed")),
                        (1, 3, 1, "c", Some("failed")),
                    ]),
                    &[None, None, Some(&format!("cannot start: {}", std::io::Error::from_raw_os_error(libc::EMFILE)))],
                ),
                1,
            )
        })
        .acked(&[1, 2])
        .build();
    let found = check_all(&bad, &options);
    let checkers: BTreeSet<&str> = found.iter().map(|v| v.checker).collect();
    assert_eq!(checkers, CHECKERS.into_iter().collect(), "{found:#?}");
    assert!(found[0].to_string().starts_with("single_active: epoch 1 made active twice"), "{}", found[0]);
}

#[test]
fn lock_holders_rejects_a_daemon_active_without_its_lock() {
    let h = Hb::default().daemon("a", 100).acquired("a", 7).active("a", 1).build();
    assert_passes(lock_holders(&h));
    // Never acquired.
    let h = Hb::default().daemon("a", 100).active("a", 1).build();
    assert_rejects(lock_holders(&h), LOCK_HOLDERS, "became active without holding its lock");
    // Released (or lost) before it became active.
    let h = Hb::default().daemon("a", 100).acquired("a", 7).ev("a", "lock.released", json!({})).active("a", 1).build();
    assert_rejects(lock_holders(&h), LOCK_HOLDERS, "became active without holding its lock");
    // Another process's lock does not count.
    let h = Hb::default().daemon("a", 100).daemon("b", 200).acquired("b", 7).active("a", 1).build();
    assert_rejects(lock_holders(&h), LOCK_HOLDERS, "a (pid 100");
}

#[test]
fn lock_holders_ends_a_hold_at_the_kill_when_no_exit_was_seen_and_at_the_last_event_without_a_record() {
    // Killed, its exit never observed: the hold ends when the kill was sent.
    let h = Hb::default().daemon("a", 100).acquired("a", 7).kill("a").daemon("b", 200).acquired("b", 7).build();
    assert_passes(lock_holders(&h));
    let h = both_lock_7().kill("a").build();
    assert_rejects(lock_holders(&h), LOCK_HOLDERS, "two holders of lock inode dev 66 ino 7");
    // A holder the harness has no process record of holds until its last event: b's lock
    // after that event is a clean hand-over, before it a second holder.
    let ghost = |last_event_first: bool| {
        let hb = Hb::default().acquired("ghost", 7);
        let hb = if last_event_first { hb.ev("ghost", "daemon.heartbeat", json!({})) } else { hb };
        let hb = hb.daemon("b", 200).acquired("b", 7);
        if last_event_first { hb } else { hb.ev("ghost", "daemon.heartbeat", json!({})) }.build()
    };
    assert_passes(lock_holders(&ghost(true)));
    let h = ghost(false);
    assert_rejects(lock_holders(&h), LOCK_HOLDERS, "two holders of lock inode dev 66 ino 7");
}

#[test]
fn outcome_latest_claim_rejects_open_runs_of_jobs_not_running_them() {
    // Pending (requeued) and completed jobs whose earlier run never ended.
    for status in ["pending", "failed"] {
        let h = Hb::default().db(db(vec![job(1, status)], runs(&[(1, 1, 1, "t1", None)]), 1)).build();
        assert_rejects(outcome_latest_claim(&h), OUTCOME_LATEST_CLAIM, "but its run 1 (epoch 1) never ended");
    }
    // A running job whose earlier run is still open beside its latest.
    let rows = runs(&[(1, 1, 1, "t1", None), (1, 2, 1, "t2", None)]);
    let h = Hb::default().db(db(vec![JobRow { runs: 2, ..running(1, "t2", 1) }], rows, 1)).build();
    assert_rejects(outcome_latest_claim(&h), OUTCOME_LATEST_CLAIM, "never ended, though a later run began");
    // Its latest run open, every earlier one ended: fine.
    let rows = runs(&[(1, 1, 1, "t1", Some("abandoned")), (1, 2, 1, "t2", None)]);
    assert_passes(outcome_latest_claim(&Hb::default().db(db(vec![running(1, "t2", 1)], rows, 1)).build()));
}

#[test]
fn outcome_latest_claim_rejects_a_claim_token_used_twice_and_an_unknown_status() {
    let rows = runs(&[(1, 1, 1, "same", Some("completed")), (2, 1, 1, "same", Some("completed"))]);
    let h = Hb::default().db(db(vec![job(1, "completed"), job(2, "completed")], rows, 1)).build();
    assert_rejects(outcome_latest_claim(&h), OUTCOME_LATEST_CLAIM, "claim token \"same\" was handed out twice");
    let h = Hb::default().db(queue(&["completed", "paused"])).build();
    assert_rejects(outcome_latest_claim(&h), OUTCOME_LATEST_CLAIM, "job 2 has status \"paused\"");
    assert_passes(outcome_latest_claim(
        &Hb::default().db(queue(&["pending", "completed", "failed", "cancelled"])).build(),
    ));
}

#[test]
fn attempts_bounded_judges_each_run_not_only_the_counters() {
    let negative = JobRow { attempts: -1, ..job(1, "pending") };
    let h = Hb::default().db(db(vec![negative], vec![], 1)).build();
    assert_rejects(attempts_bounded(&h), ATTEMPTS_BOUNDED, "attempts -1 outside 0..=3");
    // A run recorded as an attempt beyond the budget (or as attempt 0).
    for attempt in [0, 4] {
        let mut rows = runs(&[(1, 1, 1, "t1", Some("failed"))]);
        rows[0].attempt = attempt;
        let h = Hb::default().db(db(vec![job(1, "failed")], rows, 1)).build();
        assert_rejects(attempts_bounded(&h), ATTEMPTS_BOUNDED, &format!("was attempt {attempt}, outside 1..=3"));
    }
    // A run the probe saw start with HOMER_ATTEMPT beyond the budget.
    let h = Hb::default().span(1, 4, 100, Some(200)).db(db(vec![job(1, "failed")], vec![], 1)).build();
    assert_rejects(attempts_bounded(&h), ATTEMPTS_BOUNDED, "started as attempt 4 (HOMER_ATTEMPT)");
    // A re-run the counter does not show.
    let rows = runs(&[(1, 1, 1, "t1", Some("failed")), (1, 2, 1, "t2", Some("completed"))]);
    let h = Hb::default().db(db(vec![job(1, "completed")], rows.clone(), 1)).build();
    assert_rejects(attempts_bounded(&h), ATTEMPTS_BOUNDED, "job 1 counts 1 runs, but its latest run is run 2");
    let h = Hb::default().db(db(vec![JobRow { runs: 2, ..job(1, "completed") }], rows, 1)).build();
    assert_passes(attempts_bounded(&h));
}

#[test]
fn completed_ran_needs_the_probes_end_of_the_completing_run() {
    let done = || db(vec![job(1, "completed")], runs(&[(1, 1, 1, "tok1.1", Some("completed"))]), 1);
    assert_passes(completed_ran(&Hb::default().span(1, 1, 100, Some(200)).db(done()).build()));
    // A job the probe did not run cannot be judged.
    assert_passes(completed_ran(&Hb::default().db(done()).build()));
    // Started, never ended (killed, or still running when the daemon recorded success).
    let h = Hb::default().span(1, 1, 100, None).db(done()).build();
    assert_rejects(
        completed_ran(&h),
        COMPLETED_RAN,
        "job 1 was completed by run 1 (epoch 1), but the probe recorded no end",
    );
    // Ended, but under another run's token: the completion is not that run's.
    let h = Hb::default().span(1, 2, 100, Some(200)).db(done()).build();
    assert_rejects(completed_ran(&h), COMPLETED_RAN, "claim token \"tok1.1\"");
}
