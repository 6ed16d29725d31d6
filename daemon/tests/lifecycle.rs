//! Process-level tests of the single-instance protocol with real `homerd` processes,
//! real signals and real files (failure modes 1-3, 5-7, 19; the lock and the leader row).
#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect the database directly

mod common;

use std::time::{Duration, Instant};

use common::*;

/// failure mode 1: a second start exits 0 at once with the message and the holder's PID,
/// and changes nothing: not a byte of the lock file, not a line of the log.
#[test]
fn dual_start_exits_cleanly_and_touches_nothing() {
    let (sb, mut a) = active_sandbox();
    let lock_before = bytes(&sb.lock());
    let lock_mtime = std::fs::metadata(sb.lock()).unwrap().modified().unwrap();
    let home_before = listing(&sb.home());

    let mut c = sb.cmd();
    c.arg("run").args(FAST);
    let out = run_bounded(c, deadline(10.0));
    eprintln!("second start exited after {:?}", out.elapsed);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let busy = out.event("lock.busy").unwrap_or_else(|| panic!("no lock.busy: {}", out.stderr));
    assert_eq!(busy["msg"], "Another Homer instance is running. Exiting cleanly.");
    assert_eq!(busy["holder_pid"], a.pid());
    assert!(out.elapsed < deadline(1.0), "second start took {:?}", out.elapsed);
    assert!(out.event("lock.acquired").is_none());

    assert_eq!(bytes(&sb.lock()), lock_before, "lock file bytes changed");
    assert_eq!(std::fs::metadata(sb.lock()).unwrap().modified().unwrap(), lock_mtime);
    assert_eq!(listing(&sb.home()), home_before);
    let second_pid = busy["pid"].as_u64().unwrap();
    a.signal(libc::SIGTERM);
    assert!(a.wait_exit().success());
    let log = String::from_utf8(bytes(&sb.log())).unwrap();
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_ne!(v["pid"].as_u64(), Some(second_pid), "log has a line from the losing start: {line}");
    }
    assert!(!log.contains("Another Homer instance"));
}

/// Human output (the default) names the holder's PID too.
#[test]
fn dual_start_human_message_names_the_pid() {
    let sb = Sandbox::new();
    let a = {
        let mut a = active(&sb, &[]);
        a.wait_event("daemon.active");
        a
    };
    let mut c = sb.cmd();
    c.env("HOMER_LOG_FORMAT", "human").arg("run");
    let out = run_bounded(c, deadline(10.0));
    assert_eq!(out.code, Some(0));
    assert!(out.stderr.contains("Another Homer instance is running. Exiting cleanly."), "{}", out.stderr);
    assert!(out.stderr.contains(&format!("holder_pid={}", a.pid())), "{}", out.stderr);
    assert!(!out.stderr.contains('\x1b'), "colour without a terminal");
}

/// failure mode 2: 16 starts at once, exactly one holder; the rest exit 0.
#[test]
fn sixteen_way_start_race_has_one_winner() {
    let sb = Sandbox::new();
    let mut daemons: Vec<Daemon> = (0..16).map(|_| sb.start(FAST)).collect();
    let mut winners = Vec::new();
    for d in daemons.iter_mut() {
        let v = d.wait_for("daemon.active or lock.busy", deadline(30.0), |v| {
            v["event"] == "daemon.active" || v["event"] == "lock.busy"
        });
        if v["event"] == "daemon.active" {
            winners.push(d.pid());
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    for d in daemons.iter_mut().filter(|d| !winners.contains(&d.pid())) {
        let st = d.wait_exit();
        assert_eq!(st.code(), Some(0), "{}", d.dump());
        assert!(!d.has_event("lock.acquired"));
    }
    let st = status_json(&sb);
    assert_eq!(st["daemon"]["pid"], winners[0]);
    assert_eq!(st["daemon"]["epoch"], 1, "losers must not bump the epoch");
}

/// failure mode 3: kill -9 releases the lock; a restart right after succeeds, with a new
/// epoch. A dead PID left in the lock file does not block it either.
#[test]
fn kill_9_then_immediate_restart() {
    let (sb, mut a) = active_sandbox();
    a.signal(libc::SIGKILL);
    let st = a.wait_exit();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(libc::SIGKILL));
    let restarted = Instant::now();
    let mut b = active(&sb, &[]);
    eprintln!("restart to daemon.active: {:?}", restarted.elapsed());
    let ev = b.wait_event("daemon.active");
    assert_eq!(ev["epoch"], 2);
    let diag = String::from_utf8(bytes(&sb.lock())).unwrap();
    assert!(diag.contains(&format!("pid={}", b.pid())), "{diag}");
}

/// A live, unrelated PID written into an unlocked lock file does not block a start.
#[test]
fn stale_pid_in_unlocked_file_does_not_block() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.home()).unwrap();
    std::fs::write(sb.lock(), format!("pid={}\nrole=daemon\n", std::process::id())).unwrap();
    let b = active(&sb, &[]);
    let diag = String::from_utf8(bytes(&sb.lock())).unwrap();
    assert!(diag.contains(&format!("pid={}", b.pid())), "{diag}");
}

/// failure mode 6: the lock file removed while running is re-acquired in place; a start
/// afterwards still finds the daemon.
#[test]
fn removed_lock_file_is_reacquired_in_place() {
    let (sb, mut a) = active_sandbox();
    std::fs::remove_file(sb.lock()).unwrap();
    a.wait_event("lock.lost");
    a.wait_event("lock.reacquired");
    let diag = String::from_utf8(bytes(&sb.lock())).unwrap();
    assert!(diag.contains(&format!("pid={}", a.pid())), "re-acquired file lacks diagnostics: {diag}");
    let out = sb.run(&["run"]);
    assert_eq!(out.code, Some(0));
    assert_eq!(out.event("lock.busy").expect("busy")["holder_pid"], a.pid());
}

/// failure mode 6, `mv` over the file: also re-acquired.
#[test]
fn replaced_lock_file_is_reacquired_in_place() {
    let (sb, mut a) = active_sandbox();
    let first = file_id(&sb.lock());
    assert_eq!(event_file_id(&a.wait_event("lock.acquired")), first, "lock.acquired names another inode");
    let other = sb.home().join("other");
    std::fs::write(&other, "pid=1\n").unwrap();
    std::fs::rename(&other, sb.lock()).unwrap();
    let lost = a.wait_event("lock.lost");
    assert_eq!(lost["state"], "replaced");
    let reacquired = event_file_id(&a.wait_event("lock.reacquired"));
    let diag = String::from_utf8(bytes(&sb.lock())).unwrap();
    assert!(diag.contains(&format!("pid={}", a.pid())), "{diag}");
    assert_eq!(reacquired, file_id(&sb.lock()), "lock.reacquired does not name the file now at the path");
    assert_ne!(reacquired, first);
    a.stop_cleanly();
    assert_eq!(event_file_id(&a.wait_event("lock.released")), reacquired, "lock.released names another inode");
}

/// (dev, ino) of the file at `path`.
fn file_id(path: &std::path::Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap();
    (m.dev(), m.ino())
}

/// The `dev` and `ino` fields of a lock event.
fn event_file_id(v: &serde_json::Value) -> (u64, u64) {
    let field = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("no numeric {k} in {v}"));
    (field("dev"), field("ino"))
}

/// failure mode 6, the window before the re-check: a start that locks the fresh file is
/// refused by the leader row, writes nothing and bumps nothing.
#[test]
fn start_in_the_deleted_lock_window_is_refused_by_the_leader_row() {
    let sb = Sandbox::new();
    let a = active(&sb, &["--set", "lock_check_interval=1h"]);
    std::fs::remove_file(sb.lock()).unwrap();
    let out = sb.run(&["run"]);
    assert_eq!(out.code, Some(75), "{}", out.stderr);
    let err = out.event("daemon.error").expect("daemon.error");
    let msg = err["msg"].as_str().unwrap();
    assert!(
        msg.contains(&format!("database in use by PID {} via lock file {}", a.pid(), sb.lock().display())),
        "{msg}"
    );
    assert_eq!(bytes(&sb.lock()), b"", "refused start wrote diagnostics");
    assert_eq!(status_json(&sb)["daemon"]["epoch"], 1);
}

/// The leader row: a second daemon through another lock path is refused (own exit
/// code, no epoch bump) right away and after the first has idled past stale_threshold.
#[test]
fn other_lock_path_is_refused_now_and_after_idling_past_stale_threshold() {
    let (sb, mut a) = active_sandbox();
    let a_pid = a.pid();
    let other_lock = sb.dir.path().join("elsewhere/other.lock");
    let refuse = |sb: &Sandbox| {
        let out = sb.run(&["run", "--lock-file", other_lock.to_str().unwrap()]);
        assert_eq!(out.code, Some(75), "{}", out.stderr);
        let msg = out.event("daemon.error").expect("daemon.error")["msg"].as_str().unwrap().to_owned();
        assert!(msg.contains(&format!("database in use by PID {a_pid}")), "{msg}");
        assert!(msg.contains(sb.lock().to_str().unwrap()), "{msg}");
    };
    refuse(&sb);
    // Idle past stale_threshold (1 s): 15 more heartbeats at 100 ms. Only the leader
    // row's refresh keeps the refusal valid.
    let so_far = a.seen.iter().filter(|v| v["event"] == "daemon.heartbeat").count();
    a.wait_count("daemon.heartbeat", so_far + 15);
    refuse(&sb);
    assert_eq!(status_json(&sb)["daemon"]["epoch"], 1, "a refused start must not bump the epoch");
    assert!(!other_lock.parent().unwrap().exists(), "a refused start created its lock folder");
    // With the folder present, the start takes the flock on its own file and is refused
    // by the leader row itself: still no diagnostics, no epoch bump.
    std::fs::create_dir_all(other_lock.parent().unwrap()).unwrap();
    refuse(&sb);
    assert_eq!(bytes(&other_lock), b"", "refused start wrote diagnostics");
    assert_eq!(status_json(&sb)["daemon"]["epoch"], 1);
}

/// failure mode 7 (the fencing half): a paused holder is taken over once stale; when it
/// resumes, its next guarded write fails and it exits with the fenced code.
#[test]
fn paused_holder_is_taken_over_and_fenced_on_resume() {
    let (sb, mut a) = active_sandbox();
    pause_outside_a_transaction(&sb, &a);
    let end = Instant::now() + deadline(30.0);
    while status_json(&sb)["daemon"]["state"] != "stale" {
        assert!(Instant::now() < end, "paused daemon never became stale");
    }
    let other_lock = sb.dir.path().join("b.lock");
    let mut b = active(&sb, &["--lock-file", other_lock.to_str().unwrap()]);
    assert_eq!(b.wait_event("daemon.active")["epoch"], 2);
    a.signal(libc::SIGCONT);
    let fenced = a.wait_event("daemon.fenced");
    assert_eq!(fenced["epoch"], 1);
    assert_eq!(a.wait_exit().code(), Some(76), "{}", a.dump());
    let st = status_json(&sb);
    assert_eq!(st["daemon"]["pid"], b.pid());
    assert_eq!(st["daemon"]["epoch"], 2);
}

/// Stops `d` at a moment it holds no SQLite write lock. (Stopped inside one of its
/// millisecond transactions, it would block every writer until resumed — SQLite's
/// locking, not homerd's — and a start would rightly refuse with 75: try again later.)
fn pause_outside_a_transaction(sb: &Sandbox, d: &Daemon) {
    let probe = sql(&sb.db());
    probe.busy_timeout(Duration::ZERO).unwrap();
    for _ in 0..100 {
        d.signal(libc::SIGSTOP);
        d.wait_stopped();
        if probe.execute_batch("BEGIN IMMEDIATE; ROLLBACK").is_ok() {
            return;
        }
        d.signal(libc::SIGCONT);
    }
    panic!("could not pause the daemon outside a write transaction in 100 tries");
}

/// SIGTERM: clean shutdown, lock released last, leader row cleared, exit 0.
#[test]
fn sigterm_shuts_down_cleanly_and_clears_the_leader_row() {
    let (sb, mut a) = active_sandbox();
    a.stop_cleanly();
    let names: Vec<String> = a.seen.iter().map(|v| v["event"].as_str().unwrap_or("").to_owned()).collect();
    let pos = |n: &str| names.iter().position(|x| x == n).unwrap_or_else(|| panic!("no {n}: {names:?}"));
    assert!(pos("shutdown.begin") < pos("lock.released"));
    assert_eq!(names.last().map(String::as_str), Some("lock.released"));
    assert_eq!(status_json(&sb)["daemon"]["state"], "none");
    let log = String::from_utf8(bytes(&sb.log())).unwrap();
    assert!(log.contains("Daemon lock acquired") && log.contains("Daemon lock released"), "{log}");
    // A start through another lock path need not wait for staleness after a clean stop.
    let other = sb.dir.path().join("x.lock");
    let _b = active(&sb, &["--lock-file", other.to_str().unwrap()]);
}

/// failure mode 5: B paused after open(), the file removed, B resumed: B's inode re-check
/// sends it back to retry, and it ends with the "another instance" message.
#[test]
fn unlink_race_after_open_is_caught_by_the_inode_recheck() {
    let (sb, mut a) = active_sandbox();
    let mut b = sb.start_with(FAST, &[("HOMERD_FAILPOINTS", "lock.after_open=stop")]);
    b.wait_event("failpoint.hit");
    // B is stopped holding an fd to the current file. Remove it; A re-acquires a new one.
    std::fs::remove_file(sb.lock()).unwrap();
    a.wait_event("lock.reacquired");
    b.resume();
    // Its first attempt locks the old inode (A let it go when it re-acquired), and the
    // inode re-check must send it back; the failpoint stops it again on every retry.
    loop {
        let v = b.next("an outcome", |v| {
            v["event"] == "lock.busy" || v["event"] == "daemon.active" || v["event"] == "failpoint.hit"
        });
        match v["event"].as_str() {
            Some("failpoint.hit") => b.resume(),
            Some("lock.busy") => break,
            _ => panic!("two holders: {}", b.dump()),
        }
    }
    assert!(b.has_event("lock.retry"), "the inode re-check never fired: {}", b.dump());
    assert!(!b.has_event("daemon.active"), "two holders: {}", b.dump());
    assert_eq!(b.wait_exit().code(), Some(0));
    assert_eq!(status_json(&sb)["daemon"]["pid"], a.pid());
}

/// A start that loses to `homerd migrate` waits for it instead of exiting 0; then runs.
#[test]
fn start_waits_for_a_migrate_holder() {
    let sb = Sandbox::new();
    let c = migrate_at_004_mid_file(&sb, "stop");
    let mut m = Daemon::spawn(c);
    m.wait_event("failpoint.hit");
    let mut d = sb.start(FAST);
    d.wait_event("lock.waiting");
    // The failpoint stops migrate once per pending file (004 onwards).
    let pending = homerd::sqlite::schema::MIGRATIONS.len() - 3;
    for hits in 2..=pending {
        m.resume();
        m.wait_count("failpoint.hit", hits);
    }
    m.resume();
    assert_eq!(m.wait_exit().code(), Some(0), "{}", m.dump());
    d.wait_event("daemon.active");
    assert!(!d.has_event("lock.busy"));
}

/// failure mode 19: two `homerd migrate` at once: one applies, the other waits and finds
/// nothing to do; no duplicate-column errors.
#[test]
fn concurrent_migrates_apply_each_file_once() {
    let sb = Sandbox::new();
    sb.db_migrated_to(3);
    let outs: Vec<Output> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2).map(|_| s.spawn(|| sb.run(&["migrate"]))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for o in &outs {
        assert_eq!(o.code, Some(0), "{}", o.stderr);
    }
    let applied: Vec<&str> = outs.iter().map(|o| o.stdout.as_str()).collect();
    assert!(
        applied
            .iter()
            .any(|o| o.contains(&format!("applied {} migration(s)", homerd::sqlite::schema::MIGRATIONS.len() - 3))),
        "{applied:?}"
    );
    assert!(applied.iter().any(|o| o.contains("is up to date")), "{applied:?}");
    let n: i64 = sql(&sb.db()).query_row("SELECT COUNT(*) FROM _migrations", [], |r| r.get(0)).unwrap();
    assert_eq!(n as usize, homerd::sqlite::schema::MIGRATIONS.len());
}

/// failure mode 19: kill -9 in the middle of a migration file leaves no half-applied file;
/// the next run completes cleanly.
#[test]
fn kill_9_mid_migration_leaves_no_half_applied_file() {
    let sb = Sandbox::new();
    let c = migrate_at_004_mid_file(&sb, "abort");
    let out = run_bounded(c, deadline(30.0));
    assert_eq!(out.code, None, "migrate should have been killed: {}", out.stderr);
    let conn = sql(&sb.db());
    let n: i64 = conn.query_row("SELECT COUNT(*) FROM _migrations", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 3, "the interrupted file must not be recorded");
    let cols: Vec<String> = query_rows(&conn, "SELECT name FROM pragma_table_info('job_queue')", [], |r| r.get(0));
    assert!(!cols.iter().any(|c| c == "locked_by"), "half-applied 004: {cols:?}");
    drop(conn);
    sb.migrate_applies(homerd::sqlite::schema::MIGRATIONS.len() - 3);
}

/// The daemon keeps refreshing the leader row while idle (seen_at moves).
#[test]
fn idle_daemon_refreshes_the_leader_row() {
    let (sb, mut a) = active_sandbox();
    let seen =
        |sb: &Sandbox| -> i64 { sql(&sb.db()).query_row("SELECT seen_at FROM leader", [], |r| r.get(0)).unwrap() };
    let first = seen(&sb);
    let n = a.seen.iter().filter(|v| v["event"] == "daemon.heartbeat").count();
    a.wait_count("daemon.heartbeat", n + 3);
    assert!(seen(&sb) > first);
    let _ = Duration::ZERO;
}

/// A daemon that cannot refresh its leader row (the database write-locked by another
/// process) stands down before stale_threshold would let another start take over — it
/// runs and claims nothing — and resumes once it can write again with its epoch intact.
#[test]
fn unrefreshable_leader_row_stands_down_then_resumes() {
    let sb = Sandbox::new();
    let mut a = active(&sb, &["--set", "busy_timeout=50ms"]);
    let blocker = sql(&sb.db());
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let blocked_at = std::time::Instant::now();
    a.wait_event("daemon.heartbeat_failed");
    a.wait_event("daemon.standing_down");
    let waited = blocked_at.elapsed();
    eprintln!("stood down {waited:?} after the database was write-locked (stale_threshold 1s)");
    assert!(waited < Duration::from_millis(1000) + deadline(0.5), "{waited:?}");
    blocker.execute_batch("ROLLBACK").unwrap();
    a.wait_event("daemon.resumed");
    assert!(!a.has_event("daemon.fenced"));
    assert_eq!(status_json(&sb)["daemon"]["epoch"], 1);
}

/// The database file moved away (or restored over) while running: stop, rather than
/// serve an inode no CLI will ever write to again.
#[test]
fn replaced_database_file_stops_the_daemon() {
    let (sb, mut a) = active_sandbox();
    std::fs::rename(sb.db(), sb.home().join("moved.db")).unwrap();
    let fenced = a.wait_event("daemon.fenced");
    assert!(fenced["reason"].as_str().unwrap().contains("removed or replaced"), "{fenced}");
    assert_eq!(a.wait_exit().code(), Some(76));
}

/// A refused start creates no folder for its lock file.
#[test]
fn refused_start_creates_no_lock_folder() {
    let (sb, a) = active_sandbox();
    let dir = sb.dir.path().join("new/dirs");
    let lock = dir.join("x.lock");
    let out = sb.run(&["run", "--lock-file", lock.to_str().unwrap()]);
    assert_eq!(out.code, Some(75), "{}", out.stderr);
    assert!(out.event("daemon.error").unwrap()["msg"].as_str().unwrap().contains(&format!("PID {}", a.pid())));
    assert!(!sb.dir.path().join("new").exists(), "a refused start created folders");
}

/// A start killed after it won the lock and the leader check but before its epoch bump
/// committed changes nothing: the epoch stays where the last clean stop left it, and the
/// next start takes the following one.
#[test]
fn crash_before_the_epoch_bump_changes_nothing() {
    let (sb, mut a) = active_sandbox();
    a.stop_cleanly();
    assert_eq!(status_json(&sb)["daemon"]["epoch"], 1);

    let mut crashed = sb.start_with(FAST, &[("HOMERD_FAILPOINTS", "epoch.before_bump=abort")]);
    wait_killed_at_failpoint(&mut crashed);
    assert!(!crashed.has_event("daemon.active"), "{}", crashed.dump());
    let st = status_json(&sb);
    assert_eq!(st["daemon"]["epoch"], 1, "an uncommitted bump changed the epoch: {st}");
    assert_eq!(st["daemon"]["state"], "none", "an uncommitted bump named a holder: {st}");

    let mut b = sb.start(FAST);
    assert_eq!(b.wait_event("daemon.active")["epoch"], 2);
    assert_eq!(status_json(&sb)["daemon"]["pid"], b.pid());
}

/// A daemon killed between `shutdown.begin` and clearing its leader row leaves the row
/// naming a dead process; the next start sees it dead (process identity) and takes over
/// at once, without waiting out the holder's stale_threshold (an hour here).
#[test]
fn crash_during_shutdown_is_recovered_by_the_next_start() {
    let sb = Sandbox::new();
    let args: Vec<&str> = [FAST, &["--set", "stale_threshold=1h"]].concat();
    let mut a = sb.start_with(&args, &[("HOMERD_FAILPOINTS", "shutdown.before_release=abort")]);
    assert_eq!(a.wait_event("daemon.active")["epoch"], 1);
    let a_pid = a.pid();
    a.signal(libc::SIGTERM);
    a.wait_event("shutdown.begin");
    wait_killed_at_failpoint(&mut a);
    assert!(!a.has_event("lock.released"), "{}", a.dump());

    let st = status_json(&sb);
    assert_eq!(st["daemon"]["pid"], a_pid, "{st}");
    assert_eq!(st["daemon"]["state"], "dead", "{st}");
    assert_eq!(st["daemon"]["epoch"], 1, "{st}");

    let restarted = Instant::now();
    let mut b = sb.start(FAST);
    assert_eq!(b.wait_event("daemon.active")["epoch"], 2, "{}", b.dump());
    eprintln!("restart after a crash mid-shutdown to daemon.active: {:?}", restarted.elapsed());
    let st = status_json(&sb);
    assert_eq!(st["daemon"]["pid"], b.pid(), "{st}");
    assert_eq!(st["daemon"]["state"], "active", "{st}");
}

/// A holder stopped between its flock and writing its diagnostics is not assumed to be
/// a daemon: a second start waits (`lock.waiting`) rather than exiting 0, and once the
/// holder runs on and describes itself, the second start reports it busy and exits 0.
#[test]
fn lock_after_flock_stop_holds_others_off() {
    let sb = Sandbox::new();
    let mut a = sb.start_with(FAST, &[("HOMERD_FAILPOINTS", "lock.after_flock=stop")]);
    a.wait_event("failpoint.hit");
    a.wait_stopped();

    let mut b = sb.start(FAST);
    let waiting = b.next("lock.waiting (or an outcome)", |v| {
        v["event"] == "lock.waiting" || v["event"] == "lock.busy" || v["event"] == "daemon.active"
    });
    assert_eq!(waiting["event"], "lock.waiting", "B did not wait for an undescribed holder:\n{}", b.dump());
    assert!(b.proc.try_wait().is_none(), "B exited while A held the lock undescribed:\n{}", b.dump());

    a.resume();
    assert_eq!(a.wait_event("daemon.active")["epoch"], 1, "{}", a.dump());
    assert_eq!(b.wait_exit().code(), Some(0), "{}", b.dump());
    let busy = b.wait_event("lock.busy");
    assert_eq!(busy["holder_pid"], a.pid(), "{}", b.dump());
    assert!(!b.has_event("daemon.active"), "two holders:\n{}", b.dump());
    assert!(!b.has_event("lock.acquired"), "two holders:\n{}", b.dump());
    assert_eq!(status_json(&sb)["daemon"]["pid"], a.pid());
}

/// `homerd run` from `copy`, a private copy of the binary. ETXTBSY: a process forked by
/// another test's thread may briefly hold the copy's write descriptor (until its own exec
/// closes it), so the spawn is retried for a while.
fn run_copied(sb: &Sandbox, copy: &std::path::Path) -> Daemon {
    let end = Instant::now() + deadline(10.0);
    loop {
        let mut c = sb.cmd_with(copy);
        c.arg("run").args(FAST);
        match Daemon::try_spawn(c) {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(5))
            }
            other => break other.expect("spawn the copied homerd"),
        }
    }
}

/// Which way the homerd file the daemon was started from goes away.
#[cfg(target_os = "linux")]
enum BinaryChange {
    /// Another file renamed over it (an upgrade, a rebuild).
    Replaced,
    /// Unlinked.
    Removed,
}

/// Starts a daemon from a private copy of homerd (with `homerd-shim` beside it when
/// `with_shim`), changes those files as `change` says, then runs an `exec` job: it must
/// complete (the job shim is the file that was there when the daemon started — held
/// open — or the running image, not whatever is at those paths now).
#[cfg(target_os = "linux")]
fn exec_job_after_binary_change(change: BinaryChange, with_shim: bool) {
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::new();
    let bin_dir = sb.dir.path().join("bin");
    std::fs::create_dir(&bin_dir).unwrap();
    let copy = bin_dir.join("homerd");
    std::fs::copy(bin(), &copy).unwrap();
    let shim = bin_dir.join("homerd-shim");
    let mut changed = vec![copy.clone()];
    if with_shim {
        std::fs::copy(bin().with_file_name("homerd-shim"), &shim).unwrap();
        changed.push(shim.clone());
    }
    let mut d = run_copied(&sb, &copy);
    d.wait_event("daemon.active");

    for file in &changed {
        match change {
            BinaryChange::Replaced => {
                let new = bin_dir.join("replacement.new");
                std::fs::write(&new, "#!/bin/sh\necho \"not the running homerd: $*\" >&2\nexit 97\n").unwrap();
                std::fs::set_permissions(&new, std::fs::Permissions::from_mode(0o755)).unwrap();
                std::fs::rename(&new, file).unwrap();
            }
            BinaryChange::Removed => std::fs::remove_file(file).unwrap(),
        }
    }

    let id = enqueue(&sb, &["--max-attempts", "1", "exec", "--", "sh", "-c", "echo job-ran"]);
    let outcome = d.wait_for(&format!("an outcome of job {id}"), deadline(30.0), |v| {
        (v["event"] == "job.completed" || v["event"] == "job.failed" || v["event"] == "job.retry") && v["job_id"] == id
    });
    let err = std::fs::read_to_string(sb.home().join(format!("logs/runs/{id}-1.err"))).unwrap_or_default();
    let error: Option<String> =
        sql(&sb.db()).query_row("SELECT error FROM job_queue WHERE id = ?1", [id], |r| r.get(0)).unwrap();
    assert_eq!(outcome["event"], "job.completed", "job error: {error:?}\nrun stderr: {err}\nevents:\n{}", d.dump());
    let out = std::fs::read_to_string(sb.home().join(format!("logs/runs/{id}-1.out"))).unwrap();
    assert_eq!(out, "job-ran\n");
    d.stop_cleanly();
}

/// The homerd binaries replaced under a running daemon (rename over them, as an upgrade
/// does): new `exec` jobs still start through the shim the daemon started with — the
/// held-open `homerd-shim`, or without one the running image's `job-shim`.
#[cfg(target_os = "linux")]
#[test]
fn exec_job_runs_after_the_daemon_binary_is_replaced() {
    exec_job_after_binary_change(BinaryChange::Replaced, true);
    exec_job_after_binary_change(BinaryChange::Replaced, false);
}

/// The homerd binaries removed under a running daemon: new `exec` jobs still start.
#[cfg(target_os = "linux")]
#[test]
fn exec_job_runs_after_the_daemon_binary_is_removed() {
    exec_job_after_binary_change(BinaryChange::Removed, true);
    exec_job_after_binary_change(BinaryChange::Removed, false);
}

/// A `homerd-shim` from another build beside homerd (here `true`, an executable without
/// this build's mark: as if only `homerd` had been copied over an older install) is not
/// used: the daemon says so at its start and runs `exec` jobs through its own `job-shim`.
#[test]
fn a_job_shim_from_another_build_is_not_used() {
    let sb = Sandbox::new();
    let bin_dir = sb.dir.path().join("bin");
    std::fs::create_dir(&bin_dir).unwrap();
    let copy = bin_dir.join("homerd");
    std::fs::copy(bin(), &copy).unwrap();
    std::fs::copy("/bin/true", bin_dir.join("homerd-shim")).unwrap();
    let mut d = run_copied(&sb, &copy);
    let warned = d.wait_event("shim.unusable");
    assert!(warned["reason"].as_str().unwrap().contains("from another build"), "{}", d.dump());
    d.wait_event("daemon.active");
    let id = enqueue(&sb, &["--max-attempts", "1", "exec", "--", "sh", "-c", "echo job-ran"]);
    let outcome = d.wait_for(&format!("an outcome of job {id}"), deadline(30.0), |v| {
        (v["event"] == "job.completed" || v["event"] == "job.failed" || v["event"] == "job.retry") && v["job_id"] == id
    });
    assert_eq!(outcome["event"], "job.completed", "{}", d.dump());
    let out = std::fs::read_to_string(sb.home().join(format!("logs/runs/{id}-1.out"))).unwrap_or_default();
    assert_eq!(out, "job-ran\n", "the job itself ran:\n{}", d.dump());
    d.stop_cleanly();
}

/// While a daemon holds the database, a CLI's connection is never the last one: closing
/// it must not checkpoint and delete the `-wal` under the daemon. (It did, once, when the
/// daemon opened `homer.db` with `std::fs` to read a header field: closing that descriptor
/// dropped the daemon's POSIX locks on the file, so the next CLI close believed itself
/// alone.) The log stays, and every enqueue is seen by the daemon.
#[test]
fn a_cli_close_never_deletes_the_wal_of_a_running_daemon() {
    let (sb, mut d) = active_sandbox();
    let wal = sb.home().join("homer.db-wal");
    for n in 1..=3 {
        let out = sb.run(&["enqueue", "noop"]);
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        assert!(wal.exists(), "enqueue {n} deleted the daemon's -wal");
        let id: i64 = out.stdout.trim().parse().unwrap();
        d.wait_for("the job's completion", deadline(10.0), |v| v["event"] == "job.completed" && v["job_id"] == id);
    }
    assert_eq!(sb.run(&["status"]).code, Some(0));
    assert!(wal.exists(), "status deleted the daemon's -wal");
}

/// Waits for `d`'s exit and checks an `abort` failpoint killed it (SIGKILL).
fn wait_killed_at_failpoint(d: &mut Daemon) {
    let status = d.wait_exit();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "expected death at the failpoint, got {status:?}:\n{}",
        d.dump()
    );
}

/// `homerd migrate` of a database at 003 (created here), with the failpoint
/// `migrate.mid_file` (inside 004's transaction) set to `action`.
fn migrate_at_004_mid_file(sb: &Sandbox, action: &str) -> std::process::Command {
    sb.db_migrated_to(3);
    let mut c = sb.cmd();
    c.env("HOMERD_FAILPOINTS", format!("migrate.mid_file={action}")).arg("migrate");
    c
}
