//! The CLI contract: help, usage and config errors, every bad input of failure modes 8, 9 and
//! 20 (exit code, message, file unchanged), status, doctor, migrate and backup.
#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect the database directly

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;
use predicates::prelude::*;
use predicates::str::contains;

const EX_USAGE: i32 = 64;
const EX_DATA: i32 = 65;
const EX_LOCK: i32 = 69;
const EX_UNSAFE: i32 = 73;
const EX_IO: i32 = 74;
const EX_IN_USE: i32 = 75;
const EX_PERM: i32 = 77;
const EX_CONFIG: i32 = 78;

fn error_msg(out: &Output) -> String {
    out.event("daemon.error").map(|e| e["msg"].as_str().unwrap().to_owned()).unwrap_or_else(|| out.stderr.clone())
}

/// An assert_cmd `Command` for this sandbox (its home, JSON events, no inherited
/// HOMER_* settings), bounded so a hang fails the test instead of stalling it.
fn homerd(sb: &Sandbox) -> assert_cmd::Command {
    let mut c = assert_cmd::Command::from_std(sb.cmd());
    c.timeout(deadline(30.0));
    c
}

#[test]
fn every_subcommand_has_help() {
    let sb = Sandbox::new();
    for sub in ["run", "status", "doctor", "migrate", "backup"] {
        homerd(&sb).args([sub, "--help"]).assert().success().stdout(contains("Usage: homerd"));
    }
    homerd(&sb).arg("--help").assert().success().stdout(contains("Exit codes:"));
    assert!(!sb.home().exists(), "--help created the home directory");
}

#[test]
fn usage_errors_exit_64() {
    let sb = Sandbox::new();
    homerd(&sb).arg("frobnicate").assert().code(EX_USAGE);
    homerd(&sb).args(["status", "--jsn"]).assert().code(EX_USAGE);
    homerd(&sb).arg("backup").assert().code(EX_USAGE);
}

/// An invalid value names the key and where it came from, exits 78, touches nothing.
/// The error is the `msg` of the JSON `daemon.error` event on stderr.
#[test]
fn invalid_config_names_key_and_source_and_touches_nothing() {
    let sb = Sandbox::new();
    homerd(&sb)
        .args(["run", "--set", "heartbeat_interval=fast"])
        .assert()
        .code(EX_CONFIG)
        .stderr(contains("`heartbeat_interval`").and(contains("--set")));

    let cfg = sb.dir.path().join("homerd.toml");
    std::fs::write(&cfg, "stale_threshold = \"ten minutes\"\n").unwrap();
    homerd(&sb)
        .args(["run", "--config", cfg.to_str().unwrap()])
        .assert()
        .code(EX_CONFIG)
        .stderr(contains(cfg.to_str().unwrap()).and(contains("`stale_threshold`")));

    std::fs::write(&cfg, "heartbeat_intervl = \"1s\"\n").unwrap();
    homerd(&sb)
        .args(["run", "--config", cfg.to_str().unwrap()])
        .assert()
        .code(EX_CONFIG)
        .stderr(contains("unknown key").and(contains("heartbeat_interval")));

    homerd(&sb)
        .env("HOMER_MAX_ATTEMPTS", "0")
        .arg("run")
        .assert()
        .code(EX_CONFIG)
        .stderr(contains("HOMER_MAX_ATTEMPTS"));

    homerd(&sb)
        .args(["run", "--set", "stale_threshold=5s"])
        .assert()
        .code(EX_CONFIG)
        .stderr(contains("heartbeat_interval"));

    let missing = sb.dir.path().join("nope.toml");
    homerd(&sb).args(["run", "--config", missing.to_str().unwrap()]).assert().code(EX_CONFIG);
    assert!(!sb.home().exists(), "a config error created the home directory");
}

/// A file of `bytes` at the database path; returns them for comparison.
fn plant_db(sb: &Sandbox, bytes: &[u8]) -> Vec<u8> {
    std::fs::create_dir_all(sb.home()).unwrap();
    std::fs::write(sb.db(), bytes).unwrap();
    bytes.to_vec()
}

/// A valid homerd database with an edit applied by `tamper`.
fn tampered_db(sb: &Sandbox, tamper: &str) -> Vec<u8> {
    std::fs::create_dir_all(sb.home()).unwrap();
    let out = sb.run(&["migrate"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let c = sql(&sb.db());
    c.execute_batch(tamper).unwrap();
    c.pragma_update(None, "journal_mode", "DELETE").unwrap();
    drop(c);
    bytes(&sb.db())
}

fn original_daemon_db(sb: &Sandbox, wal: bool) -> Vec<u8> {
    std::fs::create_dir_all(sb.home()).unwrap();
    let c = rusqlite::Connection::open(sb.db()).unwrap();
    if wal {
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
    }
    c.execute_batch(include_str!("fixtures/original_db.sql")).unwrap();
    drop(c);
    bytes(&sb.db())
}

/// Runs every database-reading command against a bad database and checks each refuses
/// with the data code, names the file, and leaves it (and its directory) unchanged.
fn assert_refused(sb: &Sandbox, before: &[u8], needle: &str) {
    let dir_before: Vec<String> = listing(&sb.home()).into_iter().filter(|n| n != "homer.lock").collect();
    for args in [&["run"][..], &["status"], &["migrate"], &["backup", "/nonexistent-dir/x.db"]] {
        let out = sb.run(args);
        assert_eq!(out.code, Some(EX_DATA), "{args:?}: {}", out.stderr);
        let msg = error_msg(&out);
        assert!(msg.contains(sb.db().to_str().unwrap()), "{args:?} does not name the file: {msg}");
        assert!(msg.contains(needle), "{args:?}: expected {needle:?} in {msg}");
        if sb.db().is_file() {
            assert_eq!(bytes(&sb.db()), before, "{args:?} changed the database");
        }
        let dir_after: Vec<String> = listing(&sb.home()).into_iter().filter(|n| n != "homer.lock").collect();
        assert_eq!(dir_after, dir_before, "{args:?} created or removed files beside the database");
    }
    assert!(!sb.log().exists(), "a refused start opened the log file");
    doctor_fails(sb, "migrations");
}

#[test]
fn corrupt_database_is_refused_unchanged() {
    let sb = Sandbox::new();
    let mut junk = b"SQLite format 3\0".to_vec();
    junk.extend(std::iter::repeat_n(0xA5u8, 8192));
    let before = plant_db(&sb, &junk);
    assert_refused(&sb, &before, "corrupt");
    let sb = Sandbox::new();
    let before = plant_db(&sb, b"this is a text file, not a database\n");
    assert_refused(&sb, &before, "not an SQLite database");
}

#[test]
fn zero_byte_database_is_refused_unchanged() {
    let sb = Sandbox::new();
    let before = plant_db(&sb, b"");
    assert_refused(&sb, &before, "zero bytes");
}

#[test]
fn directory_at_the_database_path_is_refused() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.db()).unwrap();
    assert_refused(&sb, &[], "is a directory");
    assert!(sb.db().is_dir());
}

#[test]
fn newer_database_is_refused_unchanged() {
    let sb = Sandbox::new();
    let before = tampered_db(&sb, "INSERT INTO _migrations VALUES ('999_from_the_future.sql', 'abc', 0);");
    assert_refused(&sb, &before, "newer homerd (unknown migration 999_from_the_future.sql)");
}

#[test]
fn changed_migration_checksum_is_refused_unchanged() {
    let sb = Sandbox::new();
    let before = tampered_db(&sb, "UPDATE _migrations SET checksum = 'deadbeef' WHERE name = '004_job_locking.sql';");
    assert_refused(&sb, &before, "migration 004_job_locking.sql was applied from a different text");
}

#[test]
fn original_typescript_daemon_database_is_refused_unchanged() {
    for wal in [false, true] {
        let sb = Sandbox::new();
        let before = original_daemon_db(&sb, wal);
        assert_refused(&sb, &before, "original TypeScript Homer daemon");
    }
}

#[test]
fn another_programs_database_is_refused_unchanged() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.home()).unwrap();
    let c = rusqlite::Connection::open(sb.db()).unwrap();
    c.execute_batch(
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT); INSERT INTO notes (body) VALUES ('mine');",
    )
    .unwrap();
    drop(c);
    let before = bytes(&sb.db());
    assert_refused(&sb, &before, "not a homerd database");
}

/// failure mode 21 with the checked-in fixture: running rows at 004 are failed with the
/// original migration's reason; others untouched.
#[test]
fn pre_004_running_rows_are_failed_by_migration_004() {
    let sb = Sandbox::new();
    sb.db_from_pre004_fixture();
    std::fs::set_permissions(sb.db(), std::fs::Permissions::from_mode(0o600)).unwrap();
    let status = sb.run(&["status"]);
    assert_eq!(status.code, Some(EX_DATA), "status must refuse, not migrate: {}", status.stderr);
    assert!(status.stderr.contains("run `homerd migrate`"), "{}", status.stderr);
    sb.migrate_applies(homerd::sqlite::schema::MIGRATIONS.len() - 3);
    let c = sql(&sb.db());
    let rows: Vec<(i64, String, Option<String>, Option<i64>)> =
        query_rows(&c, "SELECT id, status, error, completed_at FROM job_queue ORDER BY id", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        });
    let reason = "Daemon restarted during job execution (migration cleanup)";
    assert_eq!(rows[0].1, "failed");
    assert_eq!(rows[0].2.as_deref(), Some(reason));
    assert!(rows[0].3.is_some(), "completed_at set");
    assert_eq!((rows[1].1.as_str(), rows[1].2.as_deref()), ("pending", None));
    assert_eq!(rows[2].1, "failed");
    assert_eq!(rows[2].2.as_deref(), Some(reason));
    assert_eq!((rows[3].1.as_str(), rows[3].2.as_deref()), ("completed", None));
    // 004 created idx_queue_stale and idx_queue_locked_by; 013 replaced them with
    // idx_queue_running. The chain ran through both.
    let idx: Vec<String> = query_rows(
        &c,
        "SELECT name FROM sqlite_master WHERE type = 'index' AND name IN ('idx_queue_stale', 'idx_queue_locked_by', 'idx_queue_running')",
        [],
        |r| r.get(0),
    );
    assert_eq!(idx, ["idx_queue_running"]);
}

#[test]
fn symlinked_lock_path_is_refused_and_its_target_untouched() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.home()).unwrap();
    let target = sb.dir.path().join("victim");
    std::fs::write(&target, "important\n").unwrap();
    std::os::unix::fs::symlink(&target, sb.lock()).unwrap();
    let out = sb.run(&["run"]);
    assert_eq!(out.code, Some(EX_UNSAFE), "{}", out.stderr);
    let msg = error_msg(&out);
    assert!(msg.contains("symbolic link") && msg.contains(sb.lock().to_str().unwrap()), "{msg}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "important\n");
    assert!(!sb.db().exists() && !sb.log().exists());
    // A dangling link: its target must not be created through it.
    let nowhere = sb.dir.path().join("nowhere");
    std::fs::remove_file(sb.lock()).unwrap();
    std::os::unix::fs::symlink(&nowhere, sb.lock()).unwrap();
    assert_eq!(sb.run(&["run"]).code, Some(EX_UNSAFE));
    assert!(!nowhere.exists());
}

#[test]
fn directory_at_the_lock_path_is_refused() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.lock()).unwrap();
    let out = sb.run(&["run"]);
    assert_eq!(out.code, Some(EX_UNSAFE), "{}", out.stderr);
    assert!(error_msg(&out).contains("is a directory"));
    assert!(!sb.db().exists());
}

/// failure mode 8: flock failing in any unexpected way fails closed with its own code.
#[test]
fn unexpected_flock_errors_fail_closed() {
    for errno in ["ENOLCK", "ENOTSUP", "EINVAL"] {
        let sb = Sandbox::new();
        let mut c = sb.cmd();
        c.env("HOMERD_FAILPOINTS", format!("lock.flock_error=error({errno})")).arg("run");
        let out = run_bounded(c, deadline(10.0));
        assert_eq!(out.code, Some(EX_LOCK), "{errno}: {}", out.stderr);
        assert!(error_msg(&out).contains("flock failed"), "{}", out.stderr);
        assert!(!sb.db().exists(), "{errno}: a failed lock went on to create the database");
        assert!(out.event("daemon.active").is_none());
    }
}

#[test]
fn malformed_failpoint_spec_is_a_usage_error() {
    let sb = Sandbox::new();
    let mut c = sb.cmd();
    c.env("HOMERD_FAILPOINTS", "lock.after_opn=stop").arg("run");
    let out = run_bounded(c, deadline(10.0));
    assert_eq!(out.code, Some(EX_USAGE), "{}", out.stderr);
    assert!(out.stderr.contains("unknown failpoint"), "{}", out.stderr);
}

/// failure mode 9, permissions: meaningless as root, so run as an unprivileged uid.
#[test]
fn unwritable_lock_directory_is_a_permission_error() {
    let sb = Sandbox::new();
    let locked_dir = sb.dir.path().join("ro");
    std::fs::create_dir_all(&locked_dir).unwrap();
    std::fs::create_dir_all(sb.home()).unwrap();
    for p in [sb.dir.path(), &sb.home(), &locked_dir] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let lock = locked_dir.join("homer.lock");
    let mut c = match unprivileged(&sb) {
        Some(c) => c,
        None => return,
    };
    c.args(["run", "--lock-file", lock.to_str().unwrap()]);
    let out = run_bounded(c, deadline(10.0));
    assert_eq!(out.code, Some(EX_PERM), "{}", out.stderr);
    let msg = error_msg(&out);
    assert!(msg.contains(lock.to_str().unwrap()) && msg.contains("ermission denied"), "{msg}");
    assert!(!lock.exists());
}

/// A command that runs homerd as uid/gid 65534 when we are root; as ourselves when we
/// are not root (then permission checks are real already). `None` (reported on stderr,
/// not silently passed) when root cannot drop privileges here.
fn unprivileged(sb: &Sandbox) -> Option<std::process::Command> {
    if !rustix::process::geteuid().is_root() {
        return Some(sb.cmd());
    }
    sb.cmd_as_65534()
}

#[test]
fn status_without_a_database_creates_nothing() {
    let sb = Sandbox::new();
    homerd(&sb).arg("status").assert().success().stdout(contains("not created yet"));
    let assert = homerd(&sb).args(["status", "--json"]).assert().success();
    let v: serde_json::Value = serde_json::from_slice(&assert.get_output().stdout).unwrap();
    assert_eq!(v["exists"], false);
    assert_eq!(v["daemon"]["active"], false);
    assert!(!sb.home().exists(), "status created the home directory");
}

#[test]
fn status_reports_the_active_daemon_and_counts() {
    let (sb, d) = active_sandbox();
    let v = status_json(&sb);
    assert_eq!(v["daemon"]["state"], "active");
    assert_eq!(v["daemon"]["pid"], d.pid());
    assert_eq!(v["daemon"]["epoch"], 1);
    assert_eq!(v["daemon"]["lock_file"], sb.lock().to_str().unwrap());
    for s in ["pending", "running", "completed", "failed", "cancelled"] {
        assert_eq!(v["jobs"][s], 0, "{s}");
    }
    let human = sb.run(&["status"]);
    assert!(human.stdout.contains(&format!("active (PID {}", d.pid())), "{}", human.stdout);
    // status never takes the lock: lock bytes and holder unchanged.
    assert!(String::from_utf8(bytes(&sb.lock())).unwrap().contains(&format!("pid={}", d.pid())));
}

#[test]
fn doctor_passes_on_a_running_install() {
    let (sb, _d) = active_sandbox();
    let out = sb.run(&["doctor"]);
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    assert_eq!(out.stdout.matches("PASS").count(), 8, "{}", out.stdout);
    assert!(out.stdout.contains("all 8 checks passed"));
    assert!(out.stdout.contains("PASS integrity"), "{}", out.stdout);
}

/// A damaged page is a failing doctor check (exit 1) that names the file, and a start
/// on it is refused with the data code, the file byte-for-byte unchanged.
#[test]
fn doctor_and_a_start_report_a_damaged_page() {
    let sb = Sandbox::new();
    // No daemon: one that claimed a 1 h sleep would hold its stop for the shutdown grace.
    assert_eq!(sb.run(&["migrate"]).code, Some(0));
    let rows: Vec<String> = (0..2000).map(|_| String::from("{\"kind\":\"sleep\",\"args\":[\"1h\"]}")).collect();
    let file = sb.dir.path().join("jobs.jsonl");
    std::fs::write(&file, rows.join("\n")).unwrap();
    assert_eq!(sb.run(&["enqueue", "--from", file.to_str().unwrap()]).code, Some(0));
    assert!(!sb.home().join("homer.db-wal").exists(), "the last connection checkpointed into homer.db");
    let mut raw = bytes(&sb.db());
    let mid = raw.len() / 2;
    raw[mid..mid + 600].iter_mut().enumerate().for_each(|(i, b)| *b = (i * 31 + 7) as u8);
    std::fs::write(sb.db(), &raw).unwrap();
    sb.run(&["doctor"]).assert_doctor(1, &["FAIL integrity", "is corrupt"]);
    let start = sb.run(&["run"]);
    assert_eq!(start.code, Some(65), "{}", start.stderr);
    assert!(start.stderr.contains("homer.db") && start.stderr.contains("is corrupt"), "{}", start.stderr);
    assert_eq!(bytes(&sb.db()), raw, "refused byte-for-byte unchanged");
}

fn doctor_fails(sb: &Sandbox, check: &str) -> String {
    let out = sb.run(&["doctor"]);
    out.assert_doctor(1, &[&format!("FAIL {check}")]);
    out.stdout
}

#[test]
fn doctor_fails_when_no_daemon_is_running() {
    let (sb, mut d) = active_sandbox();
    d.stop_cleanly();
    let out = doctor_fails(&sb, "daemon running");
    assert!(out.contains("not running"), "{out}");
    assert!(out.contains("PASS lock file"), "{out}");
}

#[test]
fn doctor_fails_when_the_lock_file_is_missing() {
    let sb = Sandbox::new();
    let mut d = sb.start(&[FAST, &["--set", "lock_check_interval=1h"]].concat());
    d.wait_event("daemon.active");
    std::fs::remove_file(sb.lock()).unwrap();
    let out = doctor_fails(&sb, "lock file");
    assert!(out.contains("is missing"), "{out}");
}

#[test]
fn doctor_fails_on_a_database_stopped_at_migration_003() {
    let sb = Sandbox::new();
    sb.db_from_pre004_fixture();
    let before = bytes(&sb.db());
    let out = doctor_fails(&sb, "migrations");
    assert!(
        out.contains(&format!("3 of {} applied", homerd::sqlite::schema::MIGRATIONS.len()))
            && out.contains("004_job_locking.sql"),
        "{out}"
    );
    assert!(out.contains("FAIL lock columns"), "{out}");
    assert_eq!(bytes(&sb.db()), before, "doctor wrote to the database");
}

/// A status only a hand edit can make (no trigger checks an UPDATE since migration 013) is
/// a failing check naming the jobs, and the database is left as it was.
#[test]
fn doctor_fails_on_a_job_in_a_status_homerd_does_not_know() {
    let sb = Sandbox::new();
    assert_eq!(sb.run(&["migrate"]).code, Some(0));
    for _ in 0..3 {
        assert_eq!(sb.run(&["enqueue", "noop"]).code, Some(0));
    }
    sql(&sb.db()).execute("UPDATE job_queue SET status = 'paused' WHERE id IN (1, 3)", []).unwrap();
    let before = bytes(&sb.db());
    let out = doctor_fails(&sb, "job statuses");
    assert!(
        out.contains(r#"2 job(s) in a status homerd does not know"#) && out.contains(r#"1 ("paused"), 3 ("paused")"#),
        "{out}"
    );
    assert!(out.contains("homerd retry"), "{out}");
    assert_eq!(bytes(&sb.db()), before, "doctor wrote to the database");
}

#[test]
fn doctor_fails_on_a_stale_running_row_with_no_live_owner() {
    let sb = Sandbox::new();
    assert_eq!(sb.run(&["migrate"]).code, Some(0));
    let c = sql(&sb.db());
    c.execute(
        "INSERT INTO job_queue (kind, status, created_at, attempts, locked_by, locked_at, heartbeat_at, claim_token, claim_epoch)
         VALUES ('noop', 'running', 1000, 1, 'gone-host-1', 1000, 1000, 't', 1)",
        [],
    )
    .unwrap();
    drop(c);
    let out = doctor_fails(&sb, "stuck jobs");
    assert!(out.contains("FAIL heartbeats"), "{out}");
}

#[test]
fn backup_while_running_is_a_consistent_copy_and_never_overwrites() {
    let (sb, mut d) = active_sandbox();
    let dest = sb.dir.path().join("backup.db");
    let out = sb.run(&["backup", dest.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout.trim(), dest.to_str().unwrap());
    let c = rusqlite::Connection::open(&dest).unwrap();
    let n: i64 = c.query_row("SELECT COUNT(*) FROM _migrations", [], |r| r.get(0)).unwrap();
    assert_eq!(n as usize, homerd::sqlite::schema::MIGRATIONS.len());
    let ok: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ok, "ok");
    drop(c);
    let before = bytes(&dest);
    let out = sb.run(&["backup", dest.to_str().unwrap()]);
    assert_eq!(out.code, Some(EX_IO), "{}", out.stderr);
    assert!(out.stderr.contains("refusing to overwrite"), "{}", out.stderr);
    assert_eq!(bytes(&dest), before);
    // A relative path that begins `file:` is a path like any other, not an SQLite URI
    // (which would have sent the copy to bk/.x.db.tmp-PID and left file:bk/x.db empty).
    std::fs::create_dir(sb.dir.path().join("file:bk")).unwrap();
    std::fs::create_dir(sb.dir.path().join("bk")).unwrap();
    let mut c = sb.cmd();
    c.args(["backup", "file:bk/x.db"]).current_dir(sb.dir.path());
    let out = run_bounded(c, deadline(30.0));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let c = rusqlite::Connection::open_with_flags(
        sb.dir.path().join("file:bk/x.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let ok: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ok, "ok");
    assert!(listing(&sb.dir.path().join("bk")).is_empty(), "{:?}", listing(&sb.dir.path().join("bk")));
    assert!(listing(&sb.dir.path().join("file:bk")).iter().all(|n| n == "x.db"));
    // Into a directory that does not exist: said so, naming the destination.
    let out = sb.run(&["backup", sb.dir.path().join("nowhere/b.db").to_str().unwrap()]);
    assert_eq!(out.code, Some(EX_IO), "{}", out.stderr);
    assert!(
        out.stderr.contains("nowhere/b.db") && out.stderr.contains("its directory does not exist"),
        "{}",
        out.stderr
    );
    assert!(d.proc.try_wait().is_none(), "backup disturbed the daemon");
}

#[test]
fn migrate_refuses_while_a_daemon_runs() {
    let (sb, d) = active_sandbox();
    let out = sb.run(&["migrate"]);
    assert_eq!(out.code, Some(EX_IN_USE), "{}", out.stderr);
    assert!(out.stderr.contains(&format!("daemon (PID {})", d.pid())), "{}", out.stderr);
}

#[test]
fn migrate_creates_a_fresh_database_0600_and_is_idempotent() {
    let sb = Sandbox::new();
    let out = sb.run(&["migrate"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("created"), "{}", out.stdout);
    let mode = std::fs::metadata(sb.db()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let home_mode = std::fs::metadata(sb.home()).unwrap().permissions().mode() & 0o777;
    assert_eq!(home_mode, 0o700);
    assert!(listing(&sb.home()).iter().all(|n| !n.contains(".tmp-")), "temp file left behind");
    let out = sb.run(&["migrate"]);
    assert!(out.stdout.contains("up to date"), "{}", out.stdout);
}
