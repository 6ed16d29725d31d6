//! Power loss with real processes: homerd's recording VFS
//! (`HOMERD_POWERLOSS_LOG`, `src/powerloss.rs`) logs every write's pre-image, the harness's
//! `powerloss::apply_power_loss` drops the writes no fsync covered, and the database is
//! judged afterwards. These runs also check that the recorder and the harness's reader
//! agree on the log format.
//!
//! - an acknowledged `homerd enqueue` (committed FULL) survives;
//! - the teeth: the same insert committed with `synchronous=OFF` is lost (so the revert
//!   really drops un-synced writes), and a FULL one beside it is not;
//! - power cuts at a handful of op numbers in a running daemon leave a database that a clean
//!   restart accepts, with every acknowledged job completed exactly once and every
//!   completion the daemon announced still there.
//!
//! `homer-harness powerloss` sweeps every op of several workloads; this is its fast subset.
#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect the database directly

mod common;

use std::path::{Path, PathBuf};

use common::Sandbox;
use homer_harness::powerloss::{apply_power_loss, read_log};
use homer_harness::powersweep::{self, Point, Workload};

fn row_count(db: &Path, sql: &str) -> i64 {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

fn integrity(db: &Path) -> String {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap()
}

#[test]
fn an_acknowledged_enqueue_survives_power_loss() {
    let sb = Sandbox::new();
    let out = sb.run(&["migrate"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let log = sb.dir.path().join("powerloss.log");
    let mut c = sb.cmd();
    c.env("HOMERD_POWERLOSS_LOG", &log).args(["enqueue", "noop"]);
    let out = common::run_bounded(c, common::deadline(30.0));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let id: i64 = out.stdout.trim().parse().expect("enqueue prints the id");

    let recorded = read_log(&log).unwrap();
    assert_eq!(recorded.torn, 0);
    assert_eq!(recorded.ops_by_pid().len(), 1, "one process recorded: {:?}", recorded.ops_by_pid());
    assert!(recorded.records.iter().any(|r| r.phase == "enqueue" && r.path.ends_with("homer.db-wal")));
    assert!(recorded.cuts().is_empty());

    let report = apply_power_loss(&log).unwrap();
    assert!(!log.exists() && report.applied_log.exists(), "the log is consumed");
    assert_eq!(
        report.ops_reverted(),
        0,
        "a FULL commit and its checkpoint leave nothing un-synced:\n{}",
        report.describe()
    );
    assert_eq!(row_count(&sb.db(), &format!("SELECT COUNT(*) FROM job_queue WHERE id = {id}")), 1);
    assert_eq!(integrity(&sb.db()), "ok");
}

/// Copies a migrated database (no -wal: `migrate` closed it) to `name` beside it.
fn copy_db(from: &Path, name: &str) -> PathBuf {
    let to = from.with_file_name(name);
    std::fs::copy(from, &to).unwrap();
    to
}

#[test]
fn an_unsynced_commit_is_lost_and_a_full_one_kept() {
    let sb = Sandbox::new();
    let out = sb.run(&["migrate"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let full = copy_db(&sb.db(), "full.db");
    let off = copy_db(&sb.db(), "off.db");
    let log = sb.dir.path().join("powerloss.log");
    // In this process, under its own VFS name: the other tests' connections stay unrecorded.
    homerd::powerloss::install(&log, None, false).unwrap();
    for (db, sync) in [(&full, "FULL"), (&off, "OFF")] {
        let conn = rusqlite::Connection::open_with_flags_and_vfs(
            db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE,
            homerd::powerloss::VFS_NAME,
        )
        .unwrap();
        conn.pragma_update(None, "synchronous", sync).unwrap();
        conn.execute("INSERT INTO job_queue (kind, status, created_at) VALUES ('noop', 'pending', 0)", []).unwrap();
        // Closing the last connection checkpoints into the main file and deletes the WAL.
        conn.close().unwrap();
        assert_eq!(row_count(db, "SELECT COUNT(*) FROM job_queue"), 1, "{sync}: committed before the power cut");
    }
    let report = apply_power_loss(&log).unwrap();
    let reverted = |db: &Path| report.files.iter().filter(|f| f.path == db).map(|f| f.ops_reverted).sum::<usize>();
    assert_eq!(reverted(&full), 0, "{}", report.describe());
    assert!(reverted(&off) > 0, "{}", report.describe());
    assert_eq!(row_count(&full, "SELECT COUNT(*) FROM job_queue"), 1, "the FULL commit survives");
    assert_eq!(row_count(&off, "SELECT COUNT(*) FROM job_queue"), 0, "the OFF commit is lost:\n{}", report.describe());
    assert_eq!(integrity(&full), "ok");
    assert_eq!(integrity(&off), "ok");
}

#[test]
fn power_cuts_in_a_running_daemon_leave_a_sound_database() {
    let opts = powersweep::Options {
        daemon: PathBuf::from(env!("CARGO_BIN_EXE_homerd")),
        mutant: std::env::var("HOMERD_MUTANT").ok().filter(|m| !m.is_empty()),
        time_scale: homer_harness::exec::Options::time_scale_from_env(),
        keep: false,
        sandbox_base: None,
        fixture: Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pre004.db"),
    };
    let template = powersweep::template(&opts, Workload::Daemon).unwrap();
    let mut reverted = 0;
    for n in [1, 4, 12, 30, 60, 100] {
        let r = powersweep::run_point(&opts, &template, Point { workload: Workload::Daemon, armed: 0, cut: Some(n) });
        assert!(r.error.is_none(), "cut {n}: {}\n{}", r.error.unwrap(), r.details);
        let fired = r.fired.as_ref().unwrap_or_else(|| panic!("cut {n} did not fire:\n{}", r.details));
        assert_eq!(fired.op, n);
        let j = r.judgement.as_ref().unwrap();
        assert_eq!(j.acked.len(), 20);
        assert_eq!(j.violations(), 0, "cut {n} (phase {}): {j:?}\n{}", fired.phase, r.details);
        reverted += r.reverted_ops;
    }
    assert!(reverted > 0, "no cut dropped a write: the runs proved nothing about power loss");
}
