//! The judge over hand-made databases, and the sweep's arithmetic.

use super::*;

/// A database with the columns the judge reads, filled by `sql`.
fn db(sql: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("homer.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "CREATE TABLE job_queue (id INTEGER PRIMARY KEY, status TEXT NOT NULL);
         CREATE TABLE job_runs (id INTEGER PRIMARY KEY, job_id INTEGER, run INTEGER, outcome TEXT, epoch INTEGER DEFAULT 1);
         CREATE INDEX runs_by_job ON job_runs(job_id, run);",
    )
    .unwrap();
    conn.execute_batch(sql).unwrap();
    (dir, path)
}

fn ack(ids: &[i64]) -> Acknowledged {
    Acknowledged { ids: ids.to_vec(), completions: Vec::new(), restart_epoch: 2 }
}

const GOOD: &str = "INSERT INTO job_queue VALUES (1, 'completed'), (2, 'completed'), (3, 'pending');
    INSERT INTO job_runs (job_id, run, outcome) VALUES (1, 1, 'completed'), (2, 1, 'abandoned'), (2, 2, 'completed');";

#[test]
fn a_good_history_passes() {
    let (_d, p) = db(GOOD);
    let j = judge(&p, &ack(&[1, 2]));
    assert_eq!(j.violations(), 0, "{j:?}");
}

#[test]
fn a_lost_or_unfinished_acknowledged_job_is_a_violation() {
    let (_d, p) = db(GOOD);
    let j = judge(&p, &ack(&[1, 2, 3, 9]));
    assert_eq!(j.lost, vec![9]);
    assert_eq!(j.not_completed, vec![(3, String::from("pending"))]);
}

#[test]
fn a_second_or_misplaced_completed_run_is_a_violation() {
    let (_d, p) = db("INSERT INTO job_queue VALUES (1, 'completed'), (2, 'completed'), (3, 'completed');
        INSERT INTO job_runs (job_id, run, outcome) VALUES
            (1, 1, 'completed'), (1, 2, 'completed'),
            (2, 1, 'completed'), (2, 2, 'failed');");
    let j = judge(&p, &ack(&[3]));
    assert_eq!(j.double, vec![1, 2, 3], "two completed runs; completed then failed; acknowledged without a run");
}

#[test]
fn an_announced_completion_must_survive_and_not_be_rerun() {
    let (_d, p) =
        db("INSERT INTO job_queue VALUES (1, 'completed'), (2, 'completed'), (3, 'running'), (4, 'completed');
        INSERT INTO job_runs (job_id, run, outcome, epoch) VALUES
            (1, 1, 'completed', 1),
            (2, 1, 'abandoned', 1), (2, 2, 'completed', 2),
            (3, 1, NULL, 1);");
    let announced = Acknowledged { ids: Vec::new(), completions: vec![1, 2, 3, 4], restart_epoch: 2 };
    let j = judge(&p, &announced);
    assert_eq!(j.outcomes_lost, vec![2, 3, 4], "re-run by the restart; not completed; no completed run");
}

#[test]
fn runs_must_be_numbered_one_to_n() {
    let (_d, p) = db("INSERT INTO job_queue VALUES (1, 'pending'), (2, 'pending');
        INSERT INTO job_runs (job_id, run, outcome) VALUES (1, 1, 'failed'), (1, 3, 'failed'), (2, 2, 'failed'), (7, 1, NULL);");
    let j = judge(&p, &ack(&[]));
    assert_eq!(j.run_gaps, vec![1, 2, 7], "a gap, a missing first run, runs of a missing job");
}

#[test]
fn a_damaged_database_fails_the_integrity_check() {
    let (_d, p) = db(GOOD);
    {
        let conn = rusqlite::Connection::open(&p).unwrap();
        conn.execute_batch(
            "WITH RECURSIVE n(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM n WHERE v < 400)
             INSERT INTO job_runs (job_id, run, outcome) SELECT 5, v, 'x' FROM n",
        )
        .unwrap();
    }
    // Zero the index's root page: the table and its index disagree.
    let root: i64 = rusqlite::Connection::open(&p)
        .unwrap()
        .query_row("SELECT rootpage FROM sqlite_master WHERE name = 'runs_by_job'", [], |r| r.get(0))
        .unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[0u8; 4096], (root as u64 - 1) * 4096).unwrap();
    let j = judge(&p, &ack(&[1]));
    assert!(j.integrity.is_some(), "{j:?}");
}

#[test]
fn ids_are_read_from_whole_lines_only() {
    assert_eq!(Sandbox::ids("12\n13\n1"), vec![12, 13]);
    assert_eq!(Sandbox::ids("7"), Vec::<i64>::new());
}

#[test]
fn cut_indexes_sample_evenly_and_keep_both_ends() {
    assert_eq!(cut_indexes(5, None), vec![1, 2, 3, 4, 5]);
    assert_eq!(cut_indexes(5, Some(10)), vec![1, 2, 3, 4, 5]);
    assert_eq!(cut_indexes(100, Some(4)), vec![1, 34, 67, 100]);
}

#[test]
fn points_parse_and_phases_map_to_workloads() {
    assert_eq!(Point::parse("daemon:0:17").unwrap(), Point { workload: Workload::Daemon, armed: 0, cut: Some(17) });
    assert!(Point::parse("enqueue-running:0:1").is_err(), "the daemon of enqueue-running is not armable");
    assert!(Point::parse("daemon:0:0").is_err());
    assert_eq!(workloads_for_phase("claim").unwrap(), vec![Workload::Daemon]);
    assert_eq!(workloads_for_phase("all").unwrap().len(), 4);
    assert!(workloads_for_phase("lunch").is_err());
}
