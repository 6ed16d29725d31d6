//! The job engine with real processes (issue: fenced claims, leases, held children,
//! immediate recovery, retries, drain). One test per acceptance point; latencies are
//! printed (and only bounded by generous deadlines).
#![allow(clippy::disallowed_methods)] // tests inspect the database directly

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;

fn job_status(sb: &Sandbox, id: i64) -> (String, i64, i64, String) {
    sql(&sb.db())
        .query_row("SELECT status, attempts, interruptions, errors FROM job_queue WHERE id = ?1", [id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .unwrap()
}

/// A `marks` directory in the sandbox and a job script for it: run 1 does `first` (which
/// writes a pid to `$M/{pid_file}`, `$M` the directory); any later run writes
/// `$M/OVERLAP` if that process is still alive (and not a zombie) when it starts.
fn overlap_probe(sb: &Sandbox, first: &str, pid_file: &str) -> (std::path::PathBuf, String) {
    let marks = sb.dir.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let script = format!(
        "M={m}; if [ \"$HOMER_RUN\" = 1 ]; then {first}; else \
         s=$(awk '{{print $3}}' /proc/$(cat $M/{pid_file})/stat 2>/dev/null); \
         if [ -n \"$s\" ] && [ \"$s\" != Z ]; then echo overlap > $M/OVERLAP; fi; fi",
        m = marks.display()
    );
    (marks, script)
}

/// Enqueues an [`overlap_probe`] job on the active daemon `d` and waits for its first run
/// to start: the marks directory, the job's id, its `job.started` event.
fn started_overlap_probe(
    sb: &Sandbox,
    d: &mut Daemon,
    first: &str,
    pid_file: &str,
) -> (std::path::PathBuf, i64, serde_json::Value) {
    let (marks, script) = overlap_probe(sb, first, pid_file);
    let id = enqueue(sb, &["exec", "--", "sh", "-c", &script]);
    let started = wait_job_event(d, "job.started", id);
    (marks, id, started)
}

fn runs(sb: &Sandbox, id: i64) -> Vec<(i64, i64, Option<String>)> {
    query_rows(&sql(&sb.db()), "SELECT run, attempt, outcome FROM job_runs WHERE job_id = ?1 ORDER BY run", [id], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
}

/// Acceptance 2: an idle daemon notices `homerd enqueue noop` within tens of ms.
#[test]
fn idle_daemon_claims_an_enqueued_job_quickly() {
    let (sb, mut d) = engine_sandbox();
    let mut lat = Vec::new();
    for _ in 0..30 {
        let out = sb.run(&["enqueue", "noop"]);
        let acked = Instant::now();
        let id: i64 = out.stdout.trim().parse().unwrap();
        wait_job_event(&mut d, "job.claimed", id);
        lat.push(acked.elapsed());
        wait_job_event(&mut d, "job.completed", id);
    }
    lat.sort();
    eprintln!("enqueue-acknowledged to job.claimed over 30 jobs: median {:?}, max {:?}", lat[15], lat[29]);
    assert!(lat[15] < deadline(1.0), "median {:?}", lat[15]);
}

/// The wake-up socket: the active daemon listens at `<home>/homer.wake` (a socket, 0600)
/// and a poke there wakes it (the unit tests in `wake.rs` time nothing either); a file of
/// another kind in its place is left alone, said once, and the poll still finds the job.
#[test]
fn the_wake_socket_is_bound_and_a_file_in_its_place_is_left_alone() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let sb = Sandbox::new();
    let mut d = active_engine(&sb, &[]);
    let meta = std::fs::symlink_metadata(sb.home().join("homer.wake")).unwrap();
    assert!(meta.file_type().is_socket(), "{meta:?}");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(!d.has_event("wake.unavailable"), "{}", d.dump());
    let id = enqueue(&sb, &["noop"]);
    wait_job_event(&mut d, "job.completed", id);
    d.stop_cleanly();
    // Left behind, as the lock file is; a poke there now finds nobody and is ignored.
    assert!(std::fs::symlink_metadata(sb.home().join("homer.wake")).unwrap().file_type().is_socket());
    let id = enqueue(&sb, &["noop"]);

    let sb2 = Sandbox::new();
    std::fs::create_dir_all(sb2.home()).unwrap();
    std::fs::write(sb2.home().join("homer.wake"), "not a socket").unwrap();
    let mut d = active_engine(&sb2, &[]);
    let warned = d.wait_event("wake.unavailable");
    assert!(warned["error"].as_str().unwrap().contains("is not a socket"), "{warned}");
    let id2 = enqueue(&sb2, &["noop"]);
    wait_job_event(&mut d, "job.completed", id2);
    assert_eq!(std::fs::read_to_string(sb2.home().join("homer.wake")).unwrap(), "not a socket");
    d.stop_cleanly();

    // The job enqueued while no daemon ran is claimed by the next start.
    let mut d = active_engine(&sb, &[]);
    wait_job_event(&mut d, "job.completed", id);
    d.stop_cleanly();
}

/// Acceptance 3: every kind ends in its documented status; exec sees HOMER_* and no
/// HOMERD_* hooks, and its output lands in its run files.
#[test]
fn each_job_kind_runs_and_ends_in_its_documented_status() {
    let sb = Sandbox::new();
    let mut d = sb.start_with(&engine_args(&["--set", "lanes.default.concurrency=4"]), &[("HOMERD_TEST_SECRET", "x")]);
    d.wait_event("daemon.active");
    let noop = enqueue(&sb, &["noop"]);
    let sleep = enqueue(&sb, &["sleep", "200ms"]);
    let fail = enqueue(&sb, &["--max-attempts", "1", "fail", "it broke"]);
    let script = "echo job=$HOMER_JOB_ID attempt=$HOMER_ATTEMPT run=$HOMER_RUN token=${#HOMER_CLAIM_TOKEN}; env | grep -c '^HOMERD_' ; echo to-stderr >&2";
    let exec = enqueue(&sb, &["exec", "--", "sh", "-c", script]);
    let bad_exit = enqueue(&sb, &["--max-attempts", "1", "exec", "--", "sh", "-c", "exit 3"]);
    for id in [noop, sleep, exec] {
        wait_job_event(&mut d, "job.completed", id);
        assert_eq!(job_status(&sb, id).0, "completed");
    }
    for id in [fail, bad_exit] {
        wait_job_event(&mut d, "job.failed", id);
        assert_eq!(job_status(&sb, id).0, "failed");
    }
    assert!(job_status(&sb, fail).3.contains("it broke"));
    assert!(job_status(&sb, bad_exit).3.contains("exited with status 3"));
    let runs_dir = sb.home().join("logs/runs");
    let out = std::fs::read_to_string(runs_dir.join(format!("{exec}-1.out"))).unwrap();
    assert_eq!(out, format!("job={exec} attempt=1 run=1 token=32\n0\n"), "HOMERD_* leaked or HOMER_* missing");
    assert_eq!(std::fs::read_to_string(runs_dir.join(format!("{exec}-1.err"))).unwrap(), "to-stderr\n");
    // Lock columns cleared on every terminal transition.
    let held: i64 = sql(&sb.db())
        .query_row("SELECT COUNT(*) FROM job_queue WHERE locked_by IS NOT NULL OR claim_token IS NOT NULL", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(held, 0);
}

/// Bad enqueues are usage errors; a missing database is not created by enqueue.
#[test]
fn enqueue_validates_kinds_and_never_creates_the_database() {
    let sb = Sandbox::new();
    for args in [&["nope"][..], &["sleep"], &["sleep", "soon"], &["exec"], &["exec", "--"], &["noop", "x"]] {
        let mut all = vec!["enqueue"];
        all.extend_from_slice(args);
        assert_eq!(sb.run(&all).code, Some(64), "{args:?}");
    }
    let out = sb.run(&["enqueue", "noop"]);
    assert_eq!(out.code, Some(65), "{}", out.stderr);
    assert!(!sb.db().exists());
}

/// Acceptance 4: lanes with caps 1 and 2, 20 jobs each: never more running per lane than
/// its cap, both progress, FIFO within a lane (from job_runs).
#[test]
fn lanes_respect_caps_progress_together_and_stay_fifo() {
    let sb = Sandbox::new();
    assert_eq!(sb.run(&["migrate"]).code, Some(0));
    let mut ids: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for i in 0..40 {
        let lane = if i % 2 == 0 { "one" } else { "two" };
        ids.entry(lane).or_default().push(enqueue(&sb, &["--lane", lane, "sleep", "30ms"]));
    }
    let mut d = active_engine(&sb, &["--set", "lanes.one.concurrency=1", "--set", "lanes.two.concurrency=2"]);
    for id in ids.values().flatten() {
        wait_job_event(&mut d, "job.completed", *id);
    }
    let conn = sql(&sb.db());
    for (lane, cap) in [("one", 1), ("two", 2)] {
        let rows: Vec<(i64, i64, i64)> = query_rows(
            &conn,
            "SELECT r.job_id, r.started_at, r.ended_at FROM job_runs r JOIN job_queue q ON q.id = r.job_id
             WHERE q.lane = ?1 ORDER BY r.id",
            [lane],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        );
        let order: Vec<i64> = rows.iter().map(|r| r.0).collect();
        assert_eq!(order, ids[lane], "lane {lane} not FIFO");
        // Max overlap of [started, ended) intervals.
        let mut edges: Vec<(i64, i32)> = rows.iter().flat_map(|r| [(r.1, 1), (r.2, -1)]).collect();
        edges.sort_by_key(|e| (e.0, e.1));
        let (mut cur, mut max) = (0, 0);
        for (_, step) in edges {
            cur += step;
            max = max.max(cur);
        }
        assert!(max <= cap, "lane {lane}: {max} running at once, cap {cap}");
    }
    // Both lanes progressed together: lane two's first job started before lane one's last.
    let first_two: i64 = conn
        .query_row(
            "SELECT MIN(r.started_at) FROM job_runs r JOIN job_queue q ON q.id = r.job_id WHERE q.lane = 'two'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let last_one: i64 = conn
        .query_row(
            "SELECT MAX(r.started_at) FROM job_runs r JOIN job_queue q ON q.id = r.job_id WHERE q.lane = 'one'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(first_two < last_one, "lane two starved behind lane one");
}

/// Acceptance 5: the database write-locked past stale_threshold while an exec job runs:
/// the child is dead before the lease could be taken over, the row is requeued with no
/// outcome from the old run, and the job later completes once.
#[test]
fn write_locked_database_kills_the_child_before_the_lease_expires() {
    let sb = Sandbox::new();
    let mut d = active_engine(&sb, &["--set", "busy_timeout=50ms"]);
    let script = "if [ \"$HOMER_RUN\" = 1 ]; then sleep 60; fi";
    let id = enqueue(&sb, &["exec", "--", "sh", "-c", script]);
    let pid = wait_job_event(&mut d, "job.started", id)["pid"].as_i64().unwrap();
    let blocker = sql(&sb.db());
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let locked_at = Instant::now();
    let lost = d.wait_for("the job stopped", deadline(20.0), |v| {
        (v["event"] == "job.lease_lost" || v["event"] == "daemon.standing_down")
            && (v["job_id"] == id || v["job_id"].is_null())
    });
    let end = Instant::now() + deadline(10.0);
    while running(pid) {
        assert!(Instant::now() < end, "child {pid} still alive after {lost}");
    }
    let dead_after = locked_at.elapsed();
    eprintln!("child dead {dead_after:?} after the database was locked (stale_threshold 1s)");
    assert!(dead_after < Duration::from_millis(1000), "child outlived the lease: {dead_after:?}");
    blocker.execute_batch("ROLLBACK").unwrap();
    wait_job_event(&mut d, "job.completed", id);
    let r = runs(&sb, id);
    assert_eq!(r.len(), 2, "{r:?}");
    // The daemon stood down (it could not write): the run is released, not charged.
    assert_eq!(r[0].2.as_deref(), Some("released"), "the old run recorded an outcome: {r:?}");
    assert_eq!(r[1].2.as_deref(), Some("completed"));
    assert_eq!(job_status(&sb, id).0, "completed");
}

/// Acceptance 5, clock half: wall-clock steps of +-1 h expire nothing.
#[test]
fn wall_clock_steps_expire_nothing() {
    let sb = Sandbox::new();
    let offset = sb.dir.path().join("clock-offset");
    std::fs::write(&offset, "0").unwrap();
    let mut d = sb.start_with(&engine_args(&[]), &[("HOMERD_CLOCK_OFFSET_FILE", offset.to_str().unwrap())]);
    d.wait_event("daemon.active");
    let id = enqueue_until(&sb, &mut d, "job.started", &["exec", "--", "sleep", "2"]);
    std::fs::write(&offset, "3600000").unwrap();
    let n = d.seen.iter().filter(|v| v["event"] == "daemon.heartbeat").count();
    d.wait_count("daemon.heartbeat", n + 3);
    std::fs::write(&offset, "-3600000").unwrap();
    d.wait_count("daemon.heartbeat", n + 6);
    wait_job_event(&mut d, "job.completed", id);
    assert!(!d.has_event("job.lease_lost") && !d.has_event("daemon.standing_down"), "{}", d.dump());
    assert_eq!(runs(&sb, id).len(), 1);
}

/// Acceptance 6: kill -9 with a job whose tree includes a grandchild; a new daemon at
/// once runs the job again (attempt 2) only after the old group, grandchild included, is
/// gone; no row stays running.
#[test]
fn kill_9_reruns_the_job_only_after_the_old_group_is_gone() {
    let (sb, mut a) = engine_sandbox();
    let (mark, id, _) = started_overlap_probe(&sb, &mut a, "sleep 60 & echo $! > $M/grandchild; wait", "grandchild");
    let gc_file = mark.join("grandchild");
    let end = Instant::now() + deadline(10.0);
    while std::fs::read_to_string(&gc_file).map(|s| s.trim().is_empty()).unwrap_or(true) {
        assert!(Instant::now() < end, "grandchild never recorded");
    }
    let grandchild: i64 = std::fs::read_to_string(&gc_file).unwrap().trim().parse().unwrap();
    assert!(running(grandchild));
    a.signal(libc::SIGKILL);
    a.wait_exit();
    let restarted = Instant::now();
    let mut b = active_engine(&sb, &[]);
    let rec = b.wait_event("jobs.recovered");
    assert_eq!(rec["count"], 1);
    let claimed = wait_job_event(&mut b, "job.claimed", id);
    eprintln!("kill -9 to re-run: {:?}", restarted.elapsed());
    assert_eq!(claimed["attempt"], 2);
    assert!(restarted.elapsed() < deadline(1.0) + Duration::from_secs(1), "{:?}", restarted.elapsed());
    wait_job_event(&mut b, "job.completed", id);
    assert!(!mark.join("OVERLAP").exists(), "run 2 started while run 1's grandchild was alive");
    assert!(!running(grandchild));
    let stuck: i64 =
        sql(&sb.db()).query_row("SELECT COUNT(*) FROM job_queue WHERE status = 'running'", [], |r| r.get(0)).unwrap();
    assert_eq!(stuck, 0);
}

/// Acceptance 7: running rows owned by a dead process are all recovered at startup, with
/// the count in the log line and the event.
#[test]
fn orphans_of_a_dead_daemon_are_recovered_at_startup() {
    let sb = Sandbox::new();
    let mut a = active_engine(&sb, &["--set", "lanes.default.concurrency=3"]);
    let ids: Vec<i64> = (0..3).map(|_| enqueue(&sb, &["sleep", "60s"])).collect();
    for id in &ids {
        wait_job_event(&mut a, "job.claimed", *id);
    }
    a.signal(libc::SIGKILL);
    a.wait_exit();
    let mut b = active_engine(&sb, &["--set", "lanes.default.concurrency=3"]);
    let rec = b.wait_event("jobs.recovered");
    assert_eq!(rec["count"], 3);
    assert_eq!(rec["msg"], "Recovered stale jobs");
    let log = std::fs::read_to_string(sb.log()).unwrap();
    assert!(log.lines().any(|l| l.contains("Recovered stale jobs") && l.contains("\"count\":3")), "{log}");
    for id in &ids {
        assert_eq!(wait_job_event(&mut b, "job.claimed", *id)["attempt"], 2);
    }
}

/// Acceptance 8: a failing job retries with growing delays and ends failed with its
/// three errors.
#[test]
fn failing_job_retries_with_growing_delays_then_fails() {
    let sb = Sandbox::new();
    let mut d = active_engine(&sb, &["--set", "backoff_base=200ms"]);
    let id = enqueue_until(&sb, &mut d, "job.failed", &["--max-attempts", "3", "fail", "nope"]);
    let (status, attempts, _, errors) = job_status(&sb, id);
    assert_eq!((status.as_str(), attempts), ("failed", 3));
    let errors: Vec<serde_json::Value> = serde_json::from_str(&errors).unwrap();
    assert_eq!(errors.len(), 3, "{errors:?}");
    let starts: Vec<i64> =
        query_rows(&sql(&sb.db()), "SELECT started_at FROM job_runs WHERE job_id = ?1 ORDER BY run", [id], |r| {
            r.get(0)
        });
    let (g1, g2) = (starts[1] - starts[0], starts[2] - starts[1]);
    eprintln!("retry gaps: {g1} ms, {g2} ms (base 200ms, jitter in the upper half)");
    assert!(g1 >= 100 && g2 >= 200 && g2 >= g1, "gaps {g1}, {g2}");
}

/// Acceptance 9: SIGTERM with a child that ignores SIGTERM: exit 0 within grace + kill
/// grace + 1 s, no child left, the job pending with its attempt given back and one
/// interruption counted.
#[test]
fn sigterm_drains_kills_a_stubborn_child_and_releases_its_job() {
    let sb = Sandbox::new();
    let mut d = active_engine(&sb, &["--set", "kill_grace=300ms", "--set", "stale_threshold=2s"]);
    let id = enqueue(&sb, &["exec", "--", "sh", "-c", "trap '' TERM; sleep 60"]);
    let pid = wait_job_event(&mut d, "job.started", id)["pid"].as_i64().unwrap();
    let t = Instant::now();
    d.stop_cleanly();
    let took = t.elapsed();
    eprintln!("SIGTERM to exit with a stubborn child: {took:?} (grace 300ms + kill_grace 300ms)");
    assert!(took < Duration::from_millis(600) + deadline(1.0), "{took:?}");
    assert!(!running(pid));
    let (status, attempts, interruptions, _) = job_status(&sb, id);
    assert_eq!((status.as_str(), attempts, interruptions), ("pending", 0, 1));
    assert!(d.has_event("job.released"));
}

/// Acceptance 10a: a crash job under a restart loop ends failed after max_attempts, with
/// at most max_attempts + 1 daemon starts.
#[test]
fn poison_job_ends_failed_under_a_restart_loop() {
    let sb = Sandbox::new();
    assert_eq!(sb.run(&["migrate"]).code, Some(0));
    let id = enqueue(&sb, &["--max-attempts", "3", "crash"]);
    let mut starts = 0;
    loop {
        starts += 1;
        assert!(starts <= 4, "more than max_attempts + 1 starts");
        let mut d = sb.start(&engine_args(&[]));
        let v = d.wait_for("crash or settled", deadline(20.0), |v| {
            v["event"] == "job.crash"
                || (v["event"] == "jobs.recovered" && v["failed"].as_array().is_some_and(|f| !f.is_empty()))
        });
        if v["event"] == "jobs.recovered" {
            break;
        }
        let st = d.wait_exit();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(libc::SIGKILL));
    }
    assert_eq!(starts, 4);
    let (status, attempts, ..) = job_status(&sb, id);
    assert_eq!((status.as_str(), attempts), ("failed", 3));
}

/// `crash` is a test hook behind `HOMERD_ALLOW_CRASH_JOBS=1`: without it `enqueue` refuses
/// the kind (64, saying how to allow it) and a daemon fails a `crash` job unrun, once, and
/// keeps running.
#[test]
fn crash_jobs_need_their_switch() {
    let sb = Sandbox::new();
    assert_eq!(sb.run(&["migrate"]).code, Some(0));
    let mut c = sb.cmd();
    c.env_remove("HOMERD_ALLOW_CRASH_JOBS").args(["enqueue", "crash"]);
    let out = run_bounded(c, deadline(30.0));
    assert_eq!(out.code, Some(64), "{out:?}");
    assert!(out.stderr.contains("HOMERD_ALLOW_CRASH_JOBS=1"), "{}", out.stderr);

    // Enqueued by a process that may; run by a daemon that may not.
    let id = enqueue(&sb, &["--max-attempts", "3", "crash"]);
    let mut c = sb.cmd();
    c.env_remove("HOMERD_ALLOW_CRASH_JOBS").arg("run").args(engine_args(&[]));
    let mut d = Daemon::spawn(c);
    let failed = wait_job_event(&mut d, "job.failed", id);
    assert!(!d.has_event("job.crash"), "{}", d.dump());
    let (status, attempts, ..) = job_status(&sb, id);
    assert_eq!((status.as_str(), attempts), ("failed", 1), "{failed}");
    d.stop_cleanly();
}

/// Acceptance 10b: 8 concurrent CLI enqueuers x 125 jobs while the daemon runs: every
/// enqueue succeeds, exactly 1000 completions, none twice.
#[test]
fn concurrent_enqueuers_lose_nothing_and_run_nothing_twice() {
    let sb = Sandbox::new();
    // A realistic lease here: eight enqueuers committing with synchronous=FULL can starve
    // the daemon's writer for most of a second on a loaded 2-core machine (SQLite's busy
    // handler is sleep-and-retry, not fair), and with FAST's 1 s stale_threshold the
    // coordinator then correctly stops and requeues a run whose lease it could not renew.
    // That is at-least-once working as designed; this test checks the queue under load.
    let mut d = active_engine(
        &sb,
        &["--set", "lanes.default.concurrency=4", "--set", "heartbeat_interval=500ms", "--set", "stale_threshold=10s"],
    );
    let ids: Vec<i64> = std::thread::scope(|s| {
        let hs: Vec<_> =
            (0..8).map(|_| s.spawn(|| (0..125).map(|_| enqueue(&sb, &["noop"])).collect::<Vec<_>>())).collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(ids.len(), 1000);
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 1000, "duplicate ids acknowledged");
    let end = Instant::now() + deadline(120.0);
    let completed = |sb: &Sandbox| -> i64 {
        sql(&sb.db()).query_row("SELECT COUNT(*) FROM job_queue WHERE status = 'completed'", [], |r| r.get(0)).unwrap()
    };
    d.wait_count("job.completed", 1000);
    assert!(Instant::now() < end);
    assert_eq!(completed(&sb), 1000);
    let runs: i64 = sql(&sb.db()).query_row("SELECT COUNT(*) FROM job_runs", [], |r| r.get(0)).unwrap();
    let twice: Vec<(i64, i64, String, String)> = query_rows(
        &sql(&sb.db()),
        "SELECT job_id, run, COALESCE(outcome, '-'), COALESCE(error, '-') FROM job_runs WHERE job_id IN (SELECT job_id FROM job_runs GROUP BY job_id HAVING COUNT(*) > 1) ORDER BY job_id, run",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    );
    let notable: Vec<String> = d
        .seen
        .iter()
        .filter(|v| {
            !matches!(
                v["event"].as_str(),
                Some("job.claimed" | "job.completed" | "daemon.heartbeat" | "job.heartbeat" | "migration.applied")
            )
        })
        .map(|v| v.to_string())
        .collect();
    assert_eq!(runs, 1000, "some job ran twice: {twice:?}\nevents: {notable:#?}");
    let completed_runs: i64 = sql(&sb.db())
        .query_row("SELECT COUNT(DISTINCT job_id) FROM job_runs WHERE outcome = 'completed'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(completed_runs, 1000);
    let mut done: Vec<i64> =
        d.seen.iter().filter(|v| v["event"] == "job.completed").map(|v| v["job_id"].as_i64().unwrap()).collect();
    done.sort_unstable();
    done.dedup();
    assert_eq!(done.len(), 1000);
}

/// run_log_cap: an exec job's output is kept up to the cap per file, the rest dropped
/// with a note; a grandchild writing after its parent exits cannot hold the run open.
#[test]
fn run_output_is_capped_per_file() {
    let sb = Sandbox::new();
    let mut d = active_engine(&sb, &["--set", "run_log_cap=1KiB"]);
    let id = enqueue_until(
        &sb,
        &mut d,
        "job.completed",
        &["exec", "--", "sh", "-c", "head -c 100000 /dev/zero | tr '\\0' y; echo small >&2"],
    );
    let runs_dir = sb.home().join("logs/runs");
    let out = std::fs::read_to_string(runs_dir.join(format!("{id}-1.out"))).unwrap();
    assert_eq!(&out[..1024], "y".repeat(1024), "kept the first run_log_cap bytes");
    assert_eq!(&out[1024..], "\n[homerd: 98976 more bytes dropped: run_log_cap is 1024 bytes]\n");
    assert_eq!(std::fs::read_to_string(runs_dir.join(format!("{id}-1.err"))).unwrap(), "small\n");
}

/// A second signal cuts the drain short: the job is stopped and released at once instead
/// of after shutdown_grace.
#[test]
fn a_second_signal_cuts_the_drain_short() {
    let sb = Sandbox::new();
    let mut d = active_engine(&sb, &["--set", "shutdown_grace=1h"]);
    let id = enqueue_until(&sb, &mut d, "job.claimed", &["sleep", "1h"]);
    d.signal(libc::SIGTERM);
    d.wait_event("shutdown.begin");
    let t = Instant::now();
    d.signal(libc::SIGINT);
    d.wait_event("shutdown.hurry");
    assert_eq!(d.wait_exit().code(), Some(0), "{}", d.dump());
    eprintln!("second signal to exit: {:?}", t.elapsed());
    assert!(t.elapsed() < deadline(5.0));
    let (status, attempts, interruptions, _) = job_status(&sb, id);
    assert_eq!((status.as_str(), attempts, interruptions), ("pending", 0, 1));
}

/// failure mode 7 with a job: A runs an exec job; A is paused (only A: its child keeps
/// running); once A is stale, B (another lock path) takes over, kills A's recorded group
/// before re-running the job, and completes it. Resumed, A is fenced: it stops, records
/// nothing, exits 76. The run history shows one completion, by B.
#[test]
fn paused_daemon_is_taken_over_and_its_job_rerun_only_after_its_group_is_killed() {
    let (sb, mut a) = engine_sandbox();
    let (marks, id, started) = started_overlap_probe(&sb, &mut a, "echo $$ > $M/run1; sleep 60", "run1");
    let pid1 = started["pid"].as_i64().unwrap();
    // Pause A between transactions (a stopped SQLite writer would block B's start).
    let probe = sql(&sb.db());
    probe.busy_timeout(Duration::ZERO).unwrap();
    loop {
        a.signal(libc::SIGSTOP);
        a.wait_stopped();
        if probe.execute_batch("BEGIN IMMEDIATE; ROLLBACK").is_ok() {
            break;
        }
        a.signal(libc::SIGCONT);
    }
    assert!(running(pid1), "A's child keeps running while A is paused");
    let end = Instant::now() + deadline(30.0);
    while status_json(&sb)["daemon"]["state"] != "stale" {
        assert!(Instant::now() < end, "paused daemon never became stale");
    }
    let other = sb.dir.path().join("b.lock");
    let mut b = active_engine(&sb, &["--lock-file", other.to_str().unwrap()]);
    let orphan = b.wait_event("job.orphan_group");
    assert_eq!(orphan["killed"], true, "B must kill A's still-running group: {orphan}");
    assert!(!running(pid1), "A's child outlived B's recovery");
    wait_job_event(&mut b, "job.completed", id);
    assert!(!marks.join("OVERLAP").exists(), "run 2 started while run 1 was alive");
    a.signal(libc::SIGCONT);
    a.wait_event("daemon.fenced");
    assert_eq!(a.wait_exit().code(), Some(76), "{}", a.dump());
    assert!(!a.has_event("job.completed"), "the fenced daemon recorded an outcome");
    let r = runs(&sb, id);
    let completed: Vec<_> = r.iter().filter(|x| x.2.as_deref() == Some("completed")).collect();
    assert_eq!(completed.len(), 1, "{r:?}");
    assert_eq!(r[0].2.as_deref(), Some("orphaned"), "{r:?}");
}

/// failure mode 4: a job child must never inherit the lock. The job forks a grandchild that
/// outlives it; the daemon is killed; a new start must win the lock. The lock file is
/// re-acquired first so the lock lives on a descriptor other than 3 (the shim's release
/// pipe is dup2'ed onto fd 3, which would otherwise hide a missing close-on-exec).
#[test]
fn a_job_never_inherits_the_lock() {
    let (sb, mut a) = engine_sandbox();
    std::fs::remove_file(sb.lock()).unwrap();
    a.wait_event("lock.reacquired");
    // A descendant that leaves the job's process group (setsid) outlives the job and is
    // outside any group kill: only close-on-exec keeps the lock out of its hands.
    let gc = sb.dir.path().join("escaped");
    // `setsid -f` forks, and until the forked child calls setsid() it is still in the
    // job's group, where the job thread's group kill (correctly) reaches it. So the job
    // waits (bounded) until its descendant has escaped — it writes its pid only after
    // setsid — before exiting.
    let script = format!(
        "setsid -f sh -c 'echo $$ > {f}.tmp; mv {f}.tmp {f}; exec sleep 60' < /dev/null > /dev/null 2>&1; \
         i=0; while [ ! -s {f} ] && [ $i -lt 2000 ]; do i=$((i+1)); sleep 0.01; done; exit 0",
        f = gc.display()
    );
    enqueue_until(&sb, &mut a, "job.completed", &["exec", "--", "sh", "-c", &script]);
    let end = Instant::now() + deadline(10.0);
    let escaped: i64 = loop {
        if let Some(pid) = std::fs::read_to_string(&gc).ok().and_then(|s| s.trim().parse().ok()) {
            break pid;
        }
        assert!(Instant::now() < end, "the escaped process never wrote its pid");
    };
    assert!(running(escaped), "the setsid'ed process should outlive its job (outside any group kill)");
    a.signal(libc::SIGKILL);
    a.wait_exit();
    let mut b = sb.start(&engine_args(&[]));
    let v = b.wait_for("the new start's outcome", deadline(20.0), |v| {
        v["event"] == "daemon.active" || v["event"] == "lock.busy"
    });
    // Cleaning up the escaped process we deliberately created.
    let _ = homerd::platform::signal_process(escaped as u32, homerd::platform::Signal::KILL);
    assert_eq!(v["event"], "daemon.active", "a job's escaped descendant kept the lock: {}", b.dump());
}

/// A stop whose killer thread cannot be started (a process or thread limit, made by a
/// failpoint) kills the job's group at once from the watchdog, and the watchdog lives on
/// to stop the next job too. The kill grace is long and the child ignores SIGTERM: only
/// the immediate SIGKILL ends these runs within the deadline.
#[test]
fn a_stop_without_a_killer_thread_kills_the_group_at_once() {
    let sb = Sandbox::new();
    let args = engine_args(&["--set", "kill_grace=60s", "--set", "stale_threshold=120s"]);
    let mut d = sb.start_with(&args, &[("HOMERD_FAILPOINTS", "watchdog.killer_thread=error")]);
    d.wait_event("daemon.active");
    for _ in 0..2 {
        let stubborn =
            ["--timeout", "300ms", "--max-attempts", "1", "exec", "--", "sh", "-c", "trap '' TERM; sleep 600"];
        let id = enqueue(&sb, &stubborn);
        let pid = wait_job_event(&mut d, "job.started", id)["pid"].as_i64().unwrap();
        let now = wait_job_event(&mut d, "job.kill_now", id);
        assert_eq!(now["pgid"].as_i64(), Some(pid), "{now}");
        wait_job_event(&mut d, "job.failed", id);
        assert!(!running(pid));
        let (status, attempts, _, errors) = job_status(&sb, id);
        assert_eq!((status.as_str(), attempts), ("failed", 1));
        assert!(errors.contains("timed out after 300 ms"), "{errors}");
    }
    d.stop_cleanly();
}

/// A claimed job that gets no thread to run on (made by a failpoint, for the first try
/// only) is put back unstarted, its attempt given back, and runs on the next try: with
/// one attempt allowed, a charged attempt would end it `failed`.
#[test]
fn a_job_without_a_thread_is_put_back_with_its_attempt_given_back() {
    let sb = Sandbox::new();
    let mut d = sb.start_with(&engine_args(&[]), &[("HOMERD_FAILPOINTS", "engine.job_thread=error@1")]);
    d.wait_event("daemon.active");
    let id = enqueue(&sb, &["--max-attempts", "1", "noop"]);
    let postponed = wait_job_event(&mut d, "job.postponed", id);
    wait_job_event(&mut d, "job.completed", id);
    let (status, attempts, interruptions, _) = job_status(&sb, id);
    assert_eq!((status.as_str(), attempts, interruptions), ("completed", 1, 0), "{postponed}");
    d.stop_cleanly();
}
