#![allow(clippy::disallowed_methods)] // tests inspect the database directly
//! Operator commands with real processes: `list`, `show`, `cancel`, `retry`, keyed and
//! bulk `enqueue`, `status --json`, retention and the WAL bound. Every test checks the
//! command's output, its exit code and the database afterwards. Readiness comes from the
//! daemon's JSON events, never from sleeps; the one deliberate timed kill (the SIGKILL
//! during a bulk import) is fault injection, not synchronisation.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use assert_cmd::assert::Assert;
use common::*;
use homerd::rows::RunRow;
use predicates::prelude::*;
use rusqlite::types::Value as Sql;
use rusqlite::OptionalExtension;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------
// Helpers

/// `homerd ARGS` through assert_cmd (bounded).
fn homer(sb: &Sandbox, args: &[&str]) -> Assert {
    homer_cmd(sb.cmd(), args)
}

fn homer_cmd(c: std::process::Command, args: &[&str]) -> Assert {
    let mut c = assert_cmd::Command::from_std(c);
    c.args(args).timeout(deadline(30.0));
    c.assert()
}

fn out(a: &Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stdout).into_owned()
}

/// The one JSON value a `--json` command printed: one compact line (README "The JSON
/// contract").
fn json_out(a: &Assert) -> Value {
    let mut lines = json_lines(a);
    assert_eq!(lines.len(), 1, "one JSON line: {}", out(a));
    lines.remove(0)
}

/// The JSON lines a `--json` command printed (`list`: one job per line).
fn json_lines(a: &Assert) -> Vec<Value> {
    out(a)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            assert_eq!(v.to_string(), l, "not compact");
            v
        })
        .collect()
}

fn migrate(sb: &Sandbox) {
    homer(sb, &["migrate"]).code(0);
}

fn count(sb: &Sandbox, query: &str) -> i64 {
    sql(&sb.db()).query_row(query, [], |r| r.get(0)).unwrap()
}

/// Every column of one job_queue row (to show a refused command changed nothing).
fn job_row(sb: &Sandbox, id: i64) -> Option<Vec<Sql>> {
    let c = sql(&sb.db());
    let mut st = c.prepare("SELECT * FROM job_queue WHERE id = ?1").unwrap();
    let n = st.column_count();
    st.query_row([id], |r| (0..n).map(|i| r.get::<_, Sql>(i)).collect()).optional().unwrap()
}

/// `homerd VERB ID` on a job in a state it does not apply to: exits 3 with nothing on
/// stdout and `message` on stderr, and leaves the job's row as it was.
fn refused_unchanged(sb: &Sandbox, verb: &str, id: i64, message: &str) {
    let row = job_row(sb, id);
    homer(sb, &[verb, &id.to_string()])
        .code(3)
        .stdout(predicate::str::is_empty())
        .stderr(predicate::str::contains(message));
    assert_eq!(job_row(sb, id), row, "{verb} changed job {id}");
}

/// Every column of every row of a table, in rowid order.
fn table(sb: &Sandbox, name: &str) -> Vec<Vec<Sql>> {
    let c = sql(&sb.db());
    query_rows(&c, &format!("SELECT * FROM {name} ORDER BY rowid"), [], |r| {
        (0..r.as_ref().column_count()).map(|i| r.get::<_, Sql>(i)).collect()
    })
}

#[derive(Debug, Clone, PartialEq)]
struct JobDb {
    status: String,
    attempts: i64,
    interruptions: i64,
    runs: i64,
    run_after: i64,
    completed_at: Option<i64>,
    error: Option<String>,
    errors: Value,
    cancel_requested_at: Option<i64>,
    locked_by: Option<String>,
    claim_token: Option<String>,
}

fn job(sb: &Sandbox, id: i64) -> JobDb {
    sql(&sb.db())
        .query_row(
            "SELECT status, attempts, interruptions, runs, run_after, completed_at, error, errors,
                    cancel_requested_at, locked_by, claim_token FROM job_queue WHERE id = ?1",
            [id],
            |r| {
                Ok(JobDb {
                    status: r.get(0)?,
                    attempts: r.get(1)?,
                    interruptions: r.get(2)?,
                    runs: r.get(3)?,
                    run_after: r.get(4)?,
                    completed_at: r.get(5)?,
                    error: r.get(6)?,
                    errors: serde_json::from_str(&r.get::<_, String>(7)?).unwrap(),
                    cancel_requested_at: r.get(8)?,
                    locked_by: r.get(9)?,
                    claim_token: r.get(10)?,
                })
            },
        )
        .unwrap_or_else(|e| panic!("job {id}: {e}"))
}

/// A job's runs, read with the statement `show` reads them with
/// (`homerd::sqlite::ops::runs`): what the daemon recorded, which the tests hold the
/// commands' output and the daemon's events against.
fn runs(sb: &Sandbox, id: i64) -> Vec<RunRow> {
    homerd::sqlite::ops::runs(&sql(&sb.db()), id).unwrap_or_else(|e| panic!("runs of job {id}: {e}"))
}

fn time(ms: Option<i64>) -> String {
    ms.map(homerd::clock::format_rfc3339).unwrap_or_else(|| String::from("-"))
}

/// Every live (non-zombie) process whose process group is `pgid`.
fn group_members(pgid: i64) -> Vec<i64> {
    homer_testkit::all_stats()
        .into_iter()
        .filter(|(_, s)| i64::from(s.pgrp) == pgid && !s.zombie)
        .map(|(pid, _)| i64::from(pid))
        .collect()
}

/// Polls a condition (bounded); not a synchronisation sleep: it returns as soon as the
/// condition holds.
fn poll_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < end, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A redaction that keeps `null` (so "not set" stays visible) and hides any value.
fn set(label: &'static str) -> insta::internals::Redaction {
    insta::dynamic_redaction(move |v, _| if v.is_nil() { v } else { insta::internals::Content::from(label) })
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

fn ids_of(stdout: &str) -> Vec<i64> {
    stdout.lines().map(|l| l.trim().parse().unwrap_or_else(|_| panic!("not an id: {l:?}"))).collect()
}

// ---------------------------------------------------------------------------------------
// list

/// `list` (human and JSON) newest first, filtered by `--status`, `--lane`, `--limit`; an
/// unknown status is a usage error; nothing in the database changes.
#[test]
fn list_filters_by_status_lane_and_limit() {
    let sb = Sandbox::new();
    migrate(&sb);
    let a1 = enqueue(&sb, &["--lane", "alpha", "noop"]);
    let b1 = enqueue(&sb, &["--lane", "beta", "--max-attempts", "5", "sleep", "1s"]);
    let a2 = enqueue(&sb, &["--lane", "alpha", "--run-after", "1h", "exec", "--", "echo", "hello world"]);
    let b2 = enqueue(&sb, &["--lane", "beta", "fail", "some message"]);
    homer(&sb, &["cancel", &b2.to_string()]).code(0);
    let before = table(&sb, "job_queue");

    // Human: a header, then one line per job, newest first.
    let a = homer(&sb, &["list"]).code(0).stdout(predicate::str::starts_with("    ID  STATUS"));
    let text = out(&a);
    let lines: Vec<&str> = text.lines().skip(1).collect();
    let shown: Vec<i64> = lines.iter().map(|l| l.split_whitespace().next().unwrap().parse().unwrap()).collect();
    assert_eq!(shown, vec![b2, a2, b1, a1], "{text}");
    assert!(lines[0].contains("cancelled") && lines[0].contains("beta") && lines[0].contains("some message"), "{text}");
    assert!(lines[1].contains("pending") && lines[1].contains("alpha") && lines[1].contains("echo hello world"));
    assert!(lines[2].contains("sleep") && lines[2].contains("0/5"), "{text}");

    // JSON: one line per job with its fields, as in the database, each time beside its
    // RFC 3339 form.
    let all = Value::Array(json_lines(&homer(&sb, &["list", "--json"]).code(0)));
    let rows = all.as_array().unwrap();
    assert_eq!(rows.iter().map(|r| r["id"].as_i64().unwrap()).collect::<Vec<_>>(), vec![b2, a2, b1, a1]);
    for r in rows {
        let id = r["id"].as_i64().unwrap();
        let db = job(&sb, id);
        assert_eq!(r["status"], db.status.as_str());
        assert_eq!(r["attempts"], db.attempts);
        assert_eq!(r["run_after"], db.run_after);
        assert_eq!(r["completed_at"], json!(db.completed_at));
        assert_eq!(r["error"], json!(db.error));
        assert_eq!(r["run_after_rfc3339"], time(Some(db.run_after)));
        assert_eq!(r["completed_at_rfc3339"], json!(db.completed_at.map(|t| time(Some(t)))));
    }
    assert_eq!(rows[1]["args"], json!(["echo", "hello world"]));
    assert_eq!(rows[2]["max_attempts"], 5);
    // An `exec` job records the enqueuer's directory (this test's, which varies).
    assert_eq!(rows[1]["cwd"], json!(std::env::current_dir().unwrap()));
    insta::assert_json_snapshot!("list_json", all, {
        "[].cwd" => set("[cwd]"),
        "[].created_at" => set("[ms]"),
        "[].created_at_rfc3339" => set("[time]"),
        "[].run_after" => set("[ms]"),
        "[].run_after_rfc3339" => set("[time]"),
        "[].completed_at" => set("[ms]"),
        "[].completed_at_rfc3339" => set("[time]"),
    });

    let ids = |args: &[&str]| -> Vec<i64> {
        let mut all = vec!["list", "--json"];
        all.extend_from_slice(args);
        json_lines(&homer(&sb, &all).code(0)).iter().map(|r| r["id"].as_i64().unwrap()).collect()
    };
    assert_eq!(ids(&["--status", "cancelled"]), vec![b2]);
    assert_eq!(ids(&["--status", "pending"]), vec![a2, b1, a1]);
    assert_eq!(ids(&["--status", "completed"]), Vec::<i64>::new());
    assert_eq!(ids(&["--lane", "alpha"]), vec![a2, a1]);
    assert_eq!(ids(&["--lane", "beta"]), vec![b2, b1]);
    assert_eq!(ids(&["--limit", "2"]), vec![b2, a2]);
    assert_eq!(ids(&["--status", "pending", "--lane", "beta", "--limit", "1"]), vec![b1]);
    assert_eq!(ids(&["--lane", "nowhere"]), Vec::<i64>::new());

    // Human filters.
    let a = homer(&sb, &["list", "--status", "pending", "--lane", "alpha", "--limit", "1"]).code(0);
    let text = out(&a);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.lines().nth(1).unwrap().trim_start().starts_with(&format!("{a2} ")), "{text}");
    homer(&sb, &["list", "--lane", "nowhere"]).code(0).stdout(predicate::str::contains("(no jobs)"));

    // Unknown status: usage error, nothing printed on stdout.
    homer(&sb, &["list", "--status", "bogus"])
        .code(64)
        .stdout(predicate::str::is_empty())
        .stderr(predicate::str::contains("unknown status `bogus`"));
    homer(&sb, &["list", "--status", "bogus", "--json"]).code(64).stdout(predicate::str::is_empty());

    assert_eq!(table(&sb, "job_queue"), before, "list changed the database");
}

// ---------------------------------------------------------------------------------------
// show

/// `show` lists every run from job_runs (run, attempt, epoch, worker, child pid,
/// start/end, outcome, error) and the error history: a job that failed twice and then
/// completed, and one that ended failed. A missing id exits 66.
#[test]
fn show_reports_every_run_and_the_error_history() {
    let (sb, mut d) = engine_sandbox();
    let script = "if [ \"$HOMER_RUN\" -lt 3 ]; then echo \"bad run $HOMER_RUN\" >&2; exit 4; fi";
    let flaky = enqueue_until(&sb, &mut d, "job.completed", &["--max-attempts", "3", "exec", "--", "sh", "-c", script]);
    let failing = enqueue_until(&sb, &mut d, "job.failed", &["--max-attempts", "2", "fail", "it broke"]);
    let before = table(&sb, "job_queue");
    let before_runs = table(&sb, "job_runs");

    // The child pids recorded are the ones the daemon reported starting.
    let started: Vec<i64> = d
        .seen
        .iter()
        .filter(|v| v["event"] == "job.started" && v["job_id"] == flaky)
        .map(|v| v["pid"].as_i64().unwrap())
        .collect();

    for (id, status, kind, max, outcomes) in [
        (flaky, "completed", "exec", 3, vec!["failed", "failed", "completed"]),
        (failing, "failed", "fail", 2, vec!["failed", "failed"]),
    ] {
        let db = job(&sb, id);
        let db_runs = runs(&sb, id);
        assert_eq!(db.status, status);
        assert_eq!(db_runs.iter().map(|r| r.outcome.as_deref().unwrap()).collect::<Vec<_>>(), outcomes);
        let errors = db.errors.as_array().unwrap().clone();
        assert_eq!(errors.len(), 2, "{errors:?}");

        // Human.
        let a = homer(&sb, &["show", &id.to_string()]).code(0);
        let text = out(&a);
        assert!(text.starts_with(&format!("job {id}: {status} ({kind} in lane default)\n")), "{text}");
        let line = format!("  attempts:      {}/{max} (0 interruptions, {} runs)\n", db.attempts, db_runs.len());
        assert!(text.contains(&line), "missing {line:?} in:\n{text}");
        for r in &db_runs {
            // Every recorded run, with the database's values in `show`'s words for a run.
            let line = format!("  {}\n", homerd::cmd::operate::run_line(r));
            assert!(text.contains(&line), "missing {line:?} in:\n{text}");
        }
        for e in &errors {
            let line = format!(
                "  {} attempt {} run {}: {}",
                time(e["at"].as_i64()),
                e["attempt"],
                e["run"],
                e["error"].as_str().unwrap()
            );
            assert!(text.contains(&line), "missing {line:?} in:\n{text}");
        }

        // JSON: the same, field for field.
        let v = json_out(&homer(&sb, &["show", &id.to_string(), "--json"]).code(0));
        assert_eq!(v["job"]["id"], id);
        assert_eq!(v["job"]["status"], status);
        assert_eq!(v["job"]["attempts"], db.attempts);
        assert_eq!(v["job"]["runs"], db.runs);
        let mut errors = db.errors.clone();
        for e in errors.as_array_mut().unwrap() {
            e["at_rfc3339"] = json!(time(e["at"].as_i64()));
        }
        assert_eq!(v["errors"], errors);
        let shown = v["runs"].as_array().unwrap();
        assert_eq!(shown.len(), db_runs.len());
        for (s, r) in shown.iter().zip(&db_runs) {
            let mut expected = json!({
                "run": r.run, "attempt": r.attempt, "epoch": r.epoch, "worker": r.worker,
                "child_pid": r.child_pid, "started_at": r.started_at, "ended_at": r.ended_at,
                "outcome": r.outcome, "error": r.error,
                "started_at_rfc3339": time(Some(r.started_at)),
                "ended_at_rfc3339": r.ended_at.map(|t| time(Some(t))),
            });
            if kind == "exec" {
                // An `exec` run names its log files (tests/logs.rs checks the last line).
                let base = sb.home().join(format!("logs/runs/{id}-{}", r.run));
                expected["stdout"] = json!(base.with_extension("out"));
                expected["stderr"] = json!(base.with_extension("err"));
                expected["stderr_last_line"] = s["stderr_last_line"].clone();
            }
            assert_eq!(s, &expected);
        }
    }
    let flaky_runs = runs(&sb, flaky);
    assert_eq!(flaky_runs.iter().map(|r| r.child_pid.unwrap()).collect::<Vec<_>>(), started);
    assert_eq!(flaky_runs.iter().map(|r| r.attempt).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(job(&sb, flaky).errors[1]["error"], "exited with status 4");
    assert!(runs(&sb, failing).iter().all(|r| r.child_pid.is_none() && r.error.as_deref() == Some("it broke")));

    let v = json_out(&homer(&sb, &["show", &failing.to_string(), "--json"]).code(0));
    insta::assert_json_snapshot!("show_json_failed_job", v, {
        ".job.created_at" => set("[ms]"),
        ".job.created_at_rfc3339" => set("[time]"),
        ".job.run_after" => set("[ms]"),
        ".job.run_after_rfc3339" => set("[time]"),
        ".job.started_at" => set("[ms]"),
        ".job.started_at_rfc3339" => set("[time]"),
        ".job.completed_at" => set("[ms]"),
        ".job.completed_at_rfc3339" => set("[time]"),
        ".job.heartbeat_at" => set("[ms]"),
        ".job.heartbeat_at_rfc3339" => set("[time]"),
        ".runs[].started_at" => set("[ms]"),
        ".runs[].started_at_rfc3339" => set("[time]"),
        ".runs[].ended_at" => set("[ms]"),
        ".runs[].ended_at_rfc3339" => set("[time]"),
        ".runs[].worker" => set("[host/pid]"),
        ".runs[].child_pid" => set("[pid]"),
        ".errors[].at" => set("[ms]"),
        ".errors[].at_rfc3339" => set("[time]"),
    });

    homer(&sb, &["show", "999999"])
        .code(66)
        .stdout(predicate::str::is_empty())
        .stderr(predicate::str::contains("no job 999999"));
    homer(&sb, &["show", "999999", "--json"]).code(66).stdout(predicate::str::is_empty());

    assert_eq!(table(&sb, "job_queue"), before, "show changed job_queue");
    assert_eq!(table(&sb, "job_runs"), before_runs, "show changed job_runs");
}

// ---------------------------------------------------------------------------------------
// cancel

/// `cancel` of a pending job cancels it at once; of a terminal job exits 3 and changes
/// nothing; of a missing id exits 66.
#[test]
fn cancel_pending_terminal_and_missing_jobs() {
    let (sb, mut d) = engine_sandbox();
    let pending = enqueue(&sb, &["--run-after", "1h", "noop"]);
    let pending2 = enqueue(&sb, &["--run-after", "1h", "noop"]);
    let done = enqueue_until(&sb, &mut d, "job.completed", &["noop"]);
    let failed = enqueue_until(&sb, &mut d, "job.failed", &["--max-attempts", "1", "fail", "x"]);

    homer(&sb, &["cancel", &pending.to_string()]).code(0).stdout(format!("job {pending} cancelled\n"));
    let j = job(&sb, pending);
    assert_eq!(j.status, "cancelled");
    assert!(j.completed_at.is_some());
    assert_eq!(j.error.as_deref(), Some("cancelled by an operator"));
    assert_eq!(j.attempts, 0);
    assert!(runs(&sb, pending).is_empty());

    let v = json_out(&homer(&sb, &["cancel", &pending2.to_string(), "--json"]).code(0));
    assert_eq!(v, json!({"id": pending2, "result": "cancelled"}));
    assert_eq!(job(&sb, pending2).status, "cancelled");

    for (id, status) in [(done, "completed"), (failed, "failed"), (pending, "cancelled")] {
        let run_rows = runs(&sb, id);
        refused_unchanged(&sb, "cancel", id, &format!("job {id} is already {status}"));
        assert_eq!(runs(&sb, id), run_rows);
        assert_eq!(job(&sb, id).status, status);
    }

    let jobs_before = table(&sb, "job_queue");
    homer(&sb, &["cancel", "424242"])
        .code(66)
        .stdout(predicate::str::is_empty())
        .stderr(predicate::str::contains("no job 424242"));
    assert_eq!(table(&sb, "job_queue"), jobs_before);
    // The daemon never ran the cancelled jobs.
    assert!(!d.seen.iter().any(|v| v["event"] == "job.claimed" && (v["job_id"] == pending || v["job_id"] == pending2)));
}

/// `cancel` of a running exec job whose tree has a grandchild (both ignoring SIGTERM):
/// exit 0, the whole process group gone within kill_grace + 1 s, status `cancelled` and
/// the run's outcome `cancelled`, with no other outcome recorded.
#[test]
fn cancel_of_a_running_exec_job_kills_its_whole_group() {
    let sb = Sandbox::new();
    let kill_grace = Duration::from_millis(300);
    let mut d = active_engine(&sb, &["--set", "kill_grace=300ms"]);
    let gc_file = sb.dir.path().join("grandchild");
    let script = format!("trap '' TERM; sleep 60 & echo $! > {}; wait; wait", gc_file.display());
    let id = enqueue(&sb, &["exec", "--", "sh", "-c", &script]);
    let started = wait_job_event(&mut d, "job.started", id);
    let (pid, pgid) = (started["pid"].as_i64().unwrap(), started["pgid"].as_i64().unwrap());
    poll_until("grandchild pid written", deadline(10.0), || {
        std::fs::read_to_string(&gc_file).is_ok_and(|s| s.ends_with('\n'))
    });
    let grandchild: i64 = std::fs::read_to_string(&gc_file).unwrap().trim().parse().unwrap();
    let mut members: BTreeSet<i64> = group_members(pgid).into_iter().collect();
    members.extend([pid, grandchild]);
    assert!(members.iter().all(|p| running(*p)), "members {members:?}");
    assert_eq!(
        homer_testkit::stat(grandchild as i32).map(|s| i64::from(s.pgrp)),
        Some(pgid),
        "the grandchild is in the job's group"
    );
    assert_eq!(job(&sb, id).status, "running");

    let t = Instant::now();
    homer(&sb, &["cancel", &id.to_string()]).code(0).stdout(format!("job {id} cancelled (its run was stopped)\n"));
    let cancel_returned = t.elapsed();
    poll_until("job group gone", kill_grace + Duration::from_secs(1), || {
        members.iter().all(|p| !running(*p)) && group_members(pgid).is_empty()
    });
    let gone = t.elapsed();
    eprintln!(
        "cancel of a running exec job: CLI returned after {cancel_returned:?}, group {pgid} ({members:?}) gone {gone:?} after the cancel started (kill_grace {kill_grace:?})"
    );
    assert!(gone < kill_grace + Duration::from_secs(1), "{gone:?}");

    wait_job_event(&mut d, "job.cancelling", id);
    wait_job_event(&mut d, "job.cancelled", id);
    // A later job runs to completion, so the daemon has moved on past the cancelled one.
    enqueue_until(&sb, &mut d, "job.completed", &["noop"]);

    let j = job(&sb, id);
    assert_eq!(j.status, "cancelled");
    assert_eq!(j.error.as_deref(), Some("cancelled by an operator while running"));
    assert!(j.cancel_requested_at.is_some() && j.completed_at.is_some());
    assert_eq!((j.locked_by, j.claim_token), (None, None), "lock columns not cleared");
    let r = runs(&sb, id);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].outcome.as_deref(), Some("cancelled"), "{r:?}");
    assert!(r[0].ended_at.is_some());
    assert_eq!(r[0].child_pid, Some(pid));
    for name in ["job.completed", "job.failed", "job.retry", "job.abandoned", "job.released"] {
        assert!(!d.seen.iter().any(|v| v["event"] == name && v["job_id"] == id), "{name} for the cancelled job");
    }
    assert_eq!(d.seen.iter().filter(|v| v["event"] == "job.claimed" && v["job_id"] == id).count(), 1);
}

// ---------------------------------------------------------------------------------------
// retry

/// `retry` puts a failed job back to pending with attempts 0 and its history kept (a
/// daemon then completes it), and a cancelled one too; a completed or pending job exits 3
/// unchanged; a missing one 66.
#[test]
fn retry_requeues_failed_and_cancelled_jobs_only() {
    let (sb, mut a) = engine_sandbox();
    // Fails runs 1 and 2 (its whole budget), completes from run 3 on.
    let script = "if [ \"$HOMER_RUN\" -lt 3 ]; then exit 4; fi";
    let failed = enqueue_until(&sb, &mut a, "job.failed", &["--max-attempts", "2", "exec", "--", "sh", "-c", script]);
    let cancelled = enqueue(&sb, &["--run-after", "1h", "noop"]);
    homer(&sb, &["cancel", &cancelled.to_string()]).code(0);
    let completed = enqueue_until(&sb, &mut a, "job.completed", &["noop"]);
    a.stop_cleanly();

    let old = job(&sb, failed);
    let old_runs = runs(&sb, failed);
    assert_eq!((old.status.as_str(), old.attempts, old_runs.len()), ("failed", 2, 2));
    assert_eq!(old.errors.as_array().unwrap().len(), 2);

    homer(&sb, &["retry", &failed.to_string()])
        .code(0)
        .stdout(format!("job {failed} requeued with a fresh attempt budget\n"));
    let j = job(&sb, failed);
    assert_eq!((j.status.as_str(), j.attempts, j.interruptions), ("pending", 0, 0));
    assert_eq!((j.completed_at, j.error.as_deref()), (None, None));
    assert_eq!(j.errors, old.errors, "error history lost");
    assert_eq!(runs(&sb, failed), old_runs, "runs lost");

    let v = json_out(&homer(&sb, &["retry", &cancelled.to_string(), "--json"]).code(0));
    assert_eq!(v, json!({"id": cancelled, "result": "requeued"}));
    let c = job(&sb, cancelled);
    assert_eq!((c.status.as_str(), c.attempts, c.completed_at, c.error), ("pending", 0, None, None));
    assert_eq!(c.cancel_requested_at, None);

    for (id, status) in [(completed, "completed"), (failed, "pending")] {
        refused_unchanged(&sb, "retry", id, &format!("job {id} is {status}; only failed or cancelled"));
    }
    let before = table(&sb, "job_queue");
    homer(&sb, &["retry", "31337"]).code(66).stderr(predicate::str::contains("no job 31337"));
    assert_eq!(table(&sb, "job_queue"), before);

    // A daemon runs both again: the failed job completes on run 3 (attempt 1 of its new
    // budget); the cancelled one is no longer deferred and completes.
    let mut b = active_engine(&sb, &[]);
    wait_job_event(&mut b, "job.completed", failed);
    wait_job_event(&mut b, "job.completed", cancelled);
    let j = job(&sb, failed);
    assert_eq!((j.status.as_str(), j.attempts, j.runs), ("completed", 1, 3));
    assert_eq!(j.errors, old.errors, "error history changed");
    let r = runs(&sb, failed);
    assert_eq!(&r[..2], &old_runs[..]);
    assert_eq!((r[2].run, r[2].attempt, r[2].outcome.as_deref()), (3, 1, Some("completed")));
    assert_eq!(job(&sb, cancelled).status, "completed");
    assert_eq!(job(&sb, completed).status, "completed");
}

// ---------------------------------------------------------------------------------------
// enqueue --key

/// `enqueue --key` twice prints one id and makes one row; eight concurrent enqueuers of
/// one key all print the same id and exactly one row exists.
#[test]
fn enqueue_key_is_idempotent_even_concurrently() {
    let sb = Sandbox::new();
    migrate(&sb);
    let first = enqueue(&sb, &["--key", "K", "noop"]);
    let again = enqueue(&sb, &["--key", "K", "noop"]);
    let other_kind = enqueue(&sb, &["--key", "K", "sleep", "1s"]);
    assert_eq!((again, other_kind), (first, first));
    assert_eq!(count(&sb, "SELECT COUNT(*) FROM job_queue"), 1);
    assert_eq!(count(&sb, "SELECT COUNT(*) FROM job_queue WHERE idempotency_key = 'K' AND kind = 'noop'"), 1);
    let v = json_out(&homer(&sb, &["show", &first.to_string(), "--json"]).code(0));
    assert_eq!(v["job"]["key"], "K");

    let barrier = Arc::new(Barrier::new(8));
    let printed: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|_| {
                let (barrier, sb) = (barrier.clone(), &sb);
                s.spawn(move || {
                    let mut c = assert_cmd::Command::from_std(sb.cmd());
                    c.args(["enqueue", "--key", "same", "noop"]).timeout(deadline(30.0));
                    barrier.wait();
                    let a = c.assert().code(0);
                    out(&a)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ids: BTreeSet<&str> = printed.iter().map(|s| s.as_str()).collect();
    assert_eq!(ids.len(), 1, "different ids printed: {printed:?}");
    let id: i64 = printed[0].trim().parse().unwrap();
    assert_ne!(id, first);
    assert_eq!(count(&sb, "SELECT COUNT(*) FROM job_queue WHERE idempotency_key = 'same'"), 1);
    assert_eq!(count(&sb, &format!("SELECT COUNT(*) FROM job_queue WHERE idempotency_key = 'same' AND id = {id}")), 1);
    assert_eq!(count(&sb, "SELECT COUNT(*) FROM job_queue"), 2);
}

// ---------------------------------------------------------------------------------------
// enqueue --from

fn bulk_line(i: usize) -> String {
    match i % 4 {
        0 => json!({"kind": "noop"}),
        1 => json!({"kind": "noop", "lane": "bulk"}),
        2 => json!({"kind": "sleep", "args": ["10ms"], "max_attempts": 2}),
        _ => json!({"kind": "exec", "args": ["--", "echo", format!("line {}", i + 1)], "timeout": "1m"}),
    }
    .to_string()
}

/// 10,000 lines commit in one transaction (consecutive ids, printed in order, one
/// commit time; no concurrent enqueue lands between them); a malformed line 5001
/// rejects the whole batch (65, naming the line); `--from -` reads stdin.
#[test]
fn enqueue_from_file_is_one_transaction() {
    let sb = Sandbox::new();
    migrate(&sb);
    let file = sb.dir.path().join("jobs.jsonl");
    let lines: Vec<String> = (0..10_000).map(bulk_line).collect();
    write_lines(&file, &lines);

    // Single enqueues race the import: none may land inside its id range.
    let done = std::sync::atomic::AtomicBool::new(false);
    let (printed, racers) = std::thread::scope(|s| {
        let racer = s.spawn(|| {
            let mut ids = Vec::new();
            while !done.load(std::sync::atomic::Ordering::SeqCst) || ids.is_empty() {
                ids.push(enqueue(&sb, &["noop"]));
            }
            ids
        });
        let a = homer(&sb, &["enqueue", "--from", file.to_str().unwrap()]).code(0);
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        (out(&a), racer.join().unwrap())
    });
    let ids = ids_of(&printed);
    assert_eq!(ids.len(), 10_000);
    let first = ids[0];
    assert!(ids.iter().enumerate().all(|(i, id)| *id == first + i as i64), "ids not consecutive and in order");
    let last = first + 9_999;
    assert!(racers.iter().all(|r| *r < first || *r > last), "a concurrent enqueue landed inside the batch");
    let in_range =
        |what: &str| count(&sb, &format!("SELECT {what} FROM job_queue WHERE id BETWEEN {first} AND {last}"));
    assert_eq!(in_range("COUNT(*)"), 10_000);
    assert_eq!(in_range("COUNT(DISTINCT created_at)"), 1, "not one commit");
    assert_eq!(in_range("SUM(status = 'pending')"), 10_000);
    // Each row is its line.
    let conn = sql(&sb.db());
    for i in [0usize, 1, 2, 3, 4_999, 5_000, 9_998, 9_999] {
        let (kind, lane, payload, max_attempts, timeout): (String, String, String, i64, Option<i64>) = conn
            .query_row(
                "SELECT kind, lane, payload, max_attempts, timeout_ms FROM job_queue WHERE id = ?1",
                [first + i as i64],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .unwrap();
        let want: Value = serde_json::from_str(&lines[i]).unwrap();
        assert_eq!(kind, want["kind"].as_str().unwrap(), "line {}", i + 1);
        assert_eq!(lane, want["lane"].as_str().unwrap_or("default"));
        let args: Vec<String> = serde_json::from_str(&payload).unwrap();
        let want_args: Vec<String> = want["args"]
            .as_array()
            .map(|a| a.iter().map(|x| x.as_str().unwrap().to_owned()).filter(|x| x != "--").collect())
            .unwrap_or_default();
        assert_eq!(args, want_args, "line {}", i + 1);
        assert_eq!(max_attempts, want["max_attempts"].as_i64().unwrap_or(3));
        assert_eq!(timeout, want["timeout"].as_str().map(|_| 60_000));
    }

    // A malformed line 5001 (bad JSON; then a valid object of an unknown kind; then an
    // unknown field): the whole batch is refused and nothing is added.
    let rows = count(&sb, "SELECT COUNT(*) FROM job_queue");
    let seq = count(&sb, "SELECT COALESCE(MAX(id), 0) FROM job_queue");
    // Then NUL characters, which no program takes and PostgreSQL cannot store, and a zero
    // timeout (every run would time out at once).
    for bad in [
        r#"{"kind": "noop","#,
        r#"{"kind": "nope"}"#,
        r#"{"kind": "noop", "colour": "red"}"#,
        r#"{"kind": "fail", "args": ["a\u0000b"]}"#,
        r#"{"kind": "exec", "args": ["--", "/bin/echo", "x\u0000"]}"#,
        r#"{"kind": "noop", "lane": "l\u0000"}"#,
        r#"{"kind": "noop", "key": "k\u0000"}"#,
        r#"{"kind": "noop", "timeout": "0s"}"#,
    ] {
        let mut broken = lines.clone();
        broken[5000] = bad.to_owned();
        let path = sb.dir.path().join("broken.jsonl");
        write_lines(&path, &broken);
        homer(&sb, &["enqueue", "--from", path.to_str().unwrap()])
            .code(65)
            .stdout(predicate::str::is_empty())
            .stderr(predicate::str::contains("line 5001").and(predicate::str::contains("nothing was enqueued")));
        assert_eq!(count(&sb, "SELECT COUNT(*) FROM job_queue"), rows, "rows added by a refused batch ({bad})");
    }
    assert_eq!(count(&sb, "SELECT COALESCE(MAX(id), 0) FROM job_queue"), seq);
    // A file that is not UTF-8 (here Latin-1) is bad input too, named by its line.
    let latin1 = sb.dir.path().join("latin1.jsonl");
    std::fs::write(&latin1, b"{\"kind\":\"noop\"}\n{\"kind\":\"fail\",\"args\":[\"caf\xe9\"]}\n").unwrap();
    homer(&sb, &["enqueue", "--from", latin1.to_str().unwrap()]).code(65).stdout(predicate::str::is_empty()).stderr(
        predicate::str::contains("line 2: not valid UTF-8").and(predicate::str::contains("nothing was enqueued")),
    );
    homer(&sb, &["enqueue", "--timeout", "0", "noop"])
        .code(64)
        .stdout(predicate::str::is_empty())
        .stderr(predicate::str::contains("--timeout: must be greater than zero"));
    assert_eq!(count(&sb, "SELECT COALESCE(MAX(id), 0) FROM job_queue"), seq);

    // stdin, with a blank line and a keyed job.
    let stdin = "{\"kind\":\"noop\",\"key\":\"from-stdin\"}\n\n{\"kind\":\"sleep\",\"args\":[\"1s\"],\"lane\":\"s\"}\n{\"kind\":\"fail\",\"run_after\":\"1h\"}\n";
    let mut c = assert_cmd::Command::from_std(sb.cmd());
    c.args(["enqueue", "--from", "-"]).timeout(deadline(30.0)).write_stdin(stdin);
    let a = c.assert().code(0);
    let ids = ids_of(&out(&a));
    assert_eq!(ids, vec![seq + 1, seq + 2, seq + 3]);
    assert_eq!(count(&sb, "SELECT id FROM job_queue WHERE idempotency_key = 'from-stdin'"), ids[0]);
    assert_eq!(count(&sb, &format!("SELECT COUNT(*) FROM job_queue WHERE id = {} AND lane = 's'", ids[1])), 1);
    assert_eq!(count(&sb, &format!("SELECT COUNT(*) FROM job_queue WHERE id = {} AND kind = 'fail'", ids[2])), 1);
    // The same key again through stdin: the existing id, no new row.
    let mut c = assert_cmd::Command::from_std(sb.cmd());
    c.args(["enqueue", "--from", "-"])
        .timeout(deadline(30.0))
        .write_stdin("{\"kind\":\"noop\",\"key\":\"from-stdin\"}\n");
    c.assert().code(0).stdout(format!("{}\n", ids[0]));
    // A bad stdin line names <stdin> and its line.
    let total = count(&sb, "SELECT COUNT(*) FROM job_queue");
    let mut c = assert_cmd::Command::from_std(sb.cmd());
    c.args(["enqueue", "--from", "-"]).timeout(deadline(30.0)).write_stdin("{\"kind\":\"noop\"}\nnot json\n");
    c.assert().code(65).stdout(predicate::str::is_empty()).stderr(predicate::str::contains("<stdin>: line 2"));
    assert_eq!(count(&sb, "SELECT COUNT(*) FROM job_queue"), total);
}

/// `--run-after` and `run_after` in `--from` lines take one grammar: compound delays
/// (`1h30m`, `2d 3h`) and RFC 3339 times with `Z` or an offset, read back through
/// `show --json`. A past time is due at once (stored as the enqueue's own time, so it
/// does not jump the queue); a future one is stored as set at itself (forward clock
/// steps leave it). Refusals — a value in neither form, a time without an offset, a time
/// or delay beyond 100 years — exit 64 from the flag and 65 from a line, name the value
/// and create nothing.
#[test]
fn run_after_takes_compound_delays_and_rfc3339_times() {
    let sb = Sandbox::new();
    migrate(&sb);
    let show = |id: i64| json_out(&homer(&sb, &["show", &id.to_string(), "--json"]).code(0))["job"].clone();
    let ms = |v: &Value, key: &str| v[key].as_i64().unwrap_or_else(|| panic!("no {key} in {v}"));
    let set_at = |id: i64| count(&sb, &format!("SELECT run_after_set_at FROM job_queue WHERE id = {id}"));

    let delayed = show(enqueue(&sb, &["--run-after", "1h30m", "noop"]));
    assert_eq!(ms(&delayed, "run_after") - ms(&delayed, "created_at"), 5_400_000, "{delayed}");
    let spaced = enqueue(&sb, &["--run-after", "2d 3h", "--timeout", "1m 30s", "noop"]);
    let v = show(spaced);
    assert_eq!(ms(&v, "run_after") - ms(&v, "created_at"), 51 * 3_600_000, "{v}");
    assert_eq!(count(&sb, &format!("SELECT timeout_ms FROM job_queue WHERE id = {spaced}")), 90_000);
    assert_eq!(set_at(spaced), ms(&v, "created_at"), "a delay is set at its enqueue");

    // 2030-01-01T10:00:00Z, written with an offset.
    let at = enqueue(&sb, &["--run-after", "2030-01-01T11:00:00+01:00", "noop"]);
    let v = show(at);
    assert_eq!(ms(&v, "run_after"), 1_893_492_000_000, "{v}");
    assert_eq!(set_at(at), 1_893_492_000_000, "an absolute time is set at itself");

    let past = enqueue(&sb, &["--run-after", "2001-09-09T01:46:40Z", "noop"]);
    let v = show(past);
    assert_eq!(ms(&v, "run_after"), ms(&v, "created_at"), "a past time is due at once: {v}");

    // --from: the same grammar, each line placed alike.
    let file = sb.dir.path().join("times.jsonl");
    write_lines(
        &file,
        &[
            String::from(r#"{"kind": "noop", "run_after": "1h 30m"}"#),
            String::from(r#"{"kind": "noop", "run_after": "2030-01-01T10:00:00Z"}"#),
        ],
    );
    let ids = ids_of(&out(&homer(&sb, &["enqueue", "--from", file.to_str().unwrap()]).code(0)));
    let v = show(ids[0]);
    assert_eq!(ms(&v, "run_after") - ms(&v, "created_at"), 5_400_000, "{v}");
    assert_eq!(ms(&show(ids[1]), "run_after"), 1_893_492_000_000);

    // Refusals: nothing created, the value named.
    let rows = count(&sb, "SELECT COUNT(*) FROM job_queue");
    for (value, says) in [
        ("soon", "got `soon`"),
        ("1h30", "got `1h30`"),
        ("2030-01-01T10:00:00", "a `Z` or an offset is required"),
        ("36500d 1ms", "at most 36500d"),
        ("9999-12-31T23:59:59Z", "9999-12-31T23:59:59Z is more than 36500d (100 years) from now"),
    ] {
        homer(&sb, &["enqueue", "--run-after", value, "noop"])
            .code(64)
            .stdout(predicate::str::is_empty())
            .stderr(predicate::str::contains("--run-after").and(predicate::str::contains(says)));
        write_lines(
            &file,
            &[String::from(r#"{"kind": "noop"}"#), format!(r#"{{"kind": "noop", "run_after": "{value}"}}"#)],
        );
        homer(&sb, &["enqueue", "--from", file.to_str().unwrap()])
            .code(65)
            .stdout(predicate::str::is_empty())
            .stderr(predicate::str::contains("line 2: run_after").and(predicate::str::contains(says)));
    }
    assert_eq!(count(&sb, "SELECT COUNT(*) FROM job_queue"), rows, "a refused enqueue created a row");
}

/// `enqueue --from` killed with SIGKILL during a 10,000-line import leaves zero or all of
/// its rows. There is no failpoint inside the transaction to synchronise on, so this is
/// fault injection: each attempt kills the import after a short, bounded delay that varies
/// across the import's measured duration, and the invariant is checked every time.
#[test]
fn enqueue_from_killed_mid_import_adds_zero_or_all_rows() {
    let sb = Sandbox::new();
    migrate(&sb);
    let file = sb.dir.path().join("big.jsonl");
    write_lines(&file, &(0..10_000).map(|_| json!({"kind": "noop"}).to_string()).collect::<Vec<_>>());

    // Calibrate: one uninterrupted import.
    let t = Instant::now();
    let a = homer(&sb, &["enqueue", "--from", file.to_str().unwrap()]).code(0);
    let full = t.elapsed();
    assert_eq!(ids_of(&out(&a)).len(), 10_000);
    assert_eq!(count(&sb, "SELECT COUNT(*) FROM job_queue"), 10_000);

    // Fault injection (not synchronisation): each attempt kills the import after a
    // bounded delay. The delays bisect towards the point where the import finishes (a
    // run that finished before the kill moves the next kill earlier, a killed one later),
    // so the kills cluster around the transaction, the import's last part.
    let attempts = 8;
    let (mut lo, mut hi) = (Duration::ZERO, full.mul_f64(1.5));
    let (mut none, mut all, mut in_db_kills) = (0, 0, 0);
    for k in 0..attempts {
        let before = count(&sb, "SELECT COUNT(*) FROM job_queue");
        let max_before = count(&sb, "SELECT COALESCE(MAX(id), 0) FROM job_queue");
        let delay = (lo + hi) / 2;
        let mut c = sb.cmd();
        c.args(["enqueue", "--from", file.to_str().unwrap()]).stdout(Stdio::null()).stderr(Stdio::null());
        let mut child = c.spawn().unwrap();
        std::thread::sleep(delay);
        // Diagnostics only: whether the import had the database open when it was killed
        // (it opens it after parsing every line, just before its transaction).
        let in_db = std::fs::read_dir(format!("/proc/{}/fd", child.id())).is_ok_and(|fds| {
            fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|p| p.ends_with("homer.db")))
        });
        let _ = child.kill(); // SIGKILL
        let status = child.wait().unwrap();
        let after = count(&sb, "SELECT COUNT(*) FROM job_queue");
        let added = after - before;
        eprintln!("attempt {k}: killed after {delay:?} (import took {full:?} once): {status}, {added} rows added, database open at the kill: {in_db}");
        assert!(added == 0 || added == 10_000, "attempt {k}: a killed import left {added} rows");
        if added == 10_000 {
            all += 1;
            hi = delay;
            let (lo, hi) = sql(&sb.db())
                .query_row("SELECT MIN(id), MAX(id) FROM job_queue WHERE id > ?1", [max_before], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
                })
                .unwrap();
            assert_eq!(hi - lo + 1, 10_000);
        } else {
            assert!(!status.success(), "attempt {k}: the import exited 0 but added nothing");
            none += 1;
            in_db_kills += usize::from(in_db);
            lo = delay;
        }
        let check: String = sql(&sb.db()).query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(check, "ok");
    }
    eprintln!(
        "killed imports: {none} added nothing ({in_db_kills} killed with the database open), {all} added everything"
    );
    // The database is still fully usable by the CLI.
    homer(&sb, &["list", "--limit", "1"]).code(0);
}

// ---------------------------------------------------------------------------------------
// status --json

/// `status --json` reports lanes, the oldest pending age, running jobs with their
/// heartbeat age, and the counters; snapshotted with every volatile value redacted.
#[test]
fn status_json_reports_lanes_running_jobs_and_metrics() {
    let sb = Sandbox::new();
    migrate(&sb);
    // Default (slow) heartbeats: nothing in the snapshot depends on timing.
    let mut d = sb.start(&["--set", "lanes.work.concurrency=1"]);
    d.wait_event("daemon.active");
    let busy = enqueue_until(&sb, &mut d, "job.claimed", &["--lane", "work", "sleep", "60s"]);
    enqueue_until(&sb, &mut d, "job.completed", &["noop"]);
    let later1 = enqueue(&sb, &["--lane", "later", "--run-after", "1h", "noop"]);
    let later2 = enqueue(&sb, &["--lane", "later", "--run-after", "2h", "noop"]);
    let queued = enqueue(&sb, &["--lane", "work", "noop"]);

    let v = json_out(&homer(&sb, &["status", "--json"]).code(0));
    assert_eq!(v["daemon"]["active"], true);
    assert_eq!(v["daemon"]["pid"], d.pid());
    assert_eq!(
        v["lanes"],
        json!({"default": {"completed": 1}, "later": {"pending": 2}, "work": {"pending": 1, "running": 1}})
    );
    let running = v["running"].as_array().unwrap();
    assert_eq!(running.len(), 1);
    assert_eq!(running[0]["id"], busy);
    let hb = running[0]["heartbeat_age_ms"].as_i64().unwrap();
    assert!((0..60_000).contains(&hb), "heartbeat_age_ms {hb}");
    assert_eq!(running[0]["owner"], job(&sb, busy).locked_by.unwrap().as_str());
    let oldest = v["oldest_pending_age_ms"].as_i64().unwrap();
    let created: i64 =
        count(&sb, &format!("SELECT MIN(created_at) FROM job_queue WHERE id IN ({later1}, {later2}, {queued})"));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    assert!(oldest >= 0 && oldest <= now - created + 1_000, "oldest_pending_age_ms {oldest}");
    let metrics = v["metrics"].as_object().unwrap();
    let want: BTreeSet<&str> = [
        "clock_steps",
        "heartbeat_failures",
        "jobs_pruned",
        "lock_reacquire_failures",
        "stale_jobs_recovered",
        "start_resource_failures",
        "takeovers",
    ]
    .into();
    assert_eq!(metrics.keys().map(|k| k.as_str()).collect::<BTreeSet<_>>(), want);
    // The database agrees.
    let db_metrics: i64 = count(&sb, "SELECT COUNT(*) FROM metrics");
    assert_eq!(db_metrics, 7);
    assert_eq!(count(&sb, "SELECT COUNT(*) FROM job_queue WHERE status = 'running'"), 1);
    assert_eq!(v["jobs"]["pending"], 3);

    insta::assert_json_snapshot!("status_json", v, {
        ".database" => "[db]",
        ".daemon.pid" => "[pid]",
        ".daemon.lock_file" => "[lock]",
        ".daemon.seen_age_ms" => "[ms]",
        ".oldest_pending_age_ms" => "[ms]",
        ".running[].owner" => "[host/pid]",
        ".running[].heartbeat_age_ms" => "[ms]",
    });

    // Human form carries the same facts.
    let a = homer(&sb, &["status"]).code(0);
    let text = out(&a);
    assert!(text.contains("  lane later: pending 2") && text.contains("oldest pending: "), "{text}");
    assert!(text.contains(&format!("running:  job {busy} (sleep in lane work)")), "{text}");
    assert!(text.contains("metrics:  clock_steps 0, heartbeat_failures 0"), "{text}");
}

// ---------------------------------------------------------------------------------------
// Retention

fn runs_dir(sb: &Sandbox) -> PathBuf {
    sb.home().join("logs/runs")
}

fn run_logs(sb: &Sandbox, id: i64) -> Vec<String> {
    listing(&runs_dir(sb)).into_iter().filter(|n| n.split('-').next() == Some(id.to_string().as_str())).collect()
}

/// With `retention=1h`, terminal jobs past the age leave job_queue, job_runs and their
/// run logs; a pending job and a recently completed one stay. The wall clock is stepped
/// two hours forward with HOMERD_CLOCK_OFFSET_FILE (daemon and CLI) instead of waiting.
#[test]
fn retention_prunes_old_terminal_jobs_runs_and_logs() {
    let sb = Sandbox::new();
    let offset = sb.dir.path().join("clock-offset");
    let set_offset = |ms: i64| std::fs::write(&offset, ms.to_string()).unwrap();
    let at = |args: &[&str]| {
        let mut c = sb.cmd();
        c.env("HOMERD_CLOCK_OFFSET_FILE", &offset);
        homer_cmd(c, args)
    };
    let enqueue_at = |args: &[&str]| -> i64 {
        let mut all = vec!["enqueue"];
        all.extend_from_slice(args);
        out(&at(&all).code(0)).trim().parse().unwrap()
    };
    // Old jobs end "10 minutes from now", so nothing is pruned before we look.
    set_offset(600_000);
    let mut d = sb.start_with(
        &engine_args(&["--set", "retention=1h", "--set", "lanes.default.concurrency=2"]),
        &[("HOMERD_CLOCK_OFFSET_FILE", offset.to_str().unwrap())],
    );
    d.wait_event("daemon.active");
    let pending = enqueue_at(&["--run-after", "7d", "noop"]);
    let ok = enqueue_at(&["exec", "--", "sh", "-c", "echo out; echo err >&2"]);
    let bad = enqueue_at(&["--max-attempts", "1", "exec", "--", "sh", "-c", "echo bad; echo why >&2; exit 2"]);
    let cancelled = enqueue_at(&["--run-after", "1h", "noop"]);
    at(&["cancel", &cancelled.to_string()]).code(0);
    wait_job_event(&mut d, "job.completed", ok);
    wait_job_event(&mut d, "job.failed", bad);
    for id in [ok, bad] {
        assert_eq!(run_logs(&sb, id), vec![format!("{id}-1.err"), format!("{id}-1.out")]);
        assert_eq!(runs(&sb, id).len(), 1);
    }
    let old = [ok, bad, cancelled];

    // Two hours on, the old jobs are past retention; a job that ends then is not.
    // (homerd's clock never goes back, so a backward step could not make it young again.)
    set_offset(7_200_000);
    let recent = enqueue_at(&["exec", "--", "sh", "-c", "echo recent"]);
    wait_job_event(&mut d, "job.completed", recent);
    d.wait_event("jobs.pruned");
    // Two more housekeeping passes after the last step (each emits daemon.metrics).
    for _ in 0..2 {
        d.next("a housekeeping pass", |v| v["event"] == "daemon.metrics");
    }

    let pruned: i64 = d.seen.iter().filter(|v| v["event"] == "jobs.pruned").map(|v| v["count"].as_i64().unwrap()).sum();
    assert_eq!(pruned, 3, "{}", d.dump());
    for id in old {
        assert!(job_row(&sb, id).is_none(), "job {id} not pruned");
        assert!(runs(&sb, id).is_empty(), "runs of job {id} not pruned");
        assert!(run_logs(&sb, id).is_empty(), "run logs of job {id} not removed: {:?}", run_logs(&sb, id));
    }
    assert_eq!(job(&sb, pending).status, "pending");
    assert_eq!(job(&sb, recent).status, "completed");
    assert_eq!(runs(&sb, recent).len(), 1);
    // It wrote nothing to stderr, so it has no `.err` (a log file is created at its first byte).
    assert_eq!(run_logs(&sb, recent), vec![format!("{recent}-1.out")]);
    assert_eq!(count(&sb, "SELECT value FROM metrics WHERE name = 'jobs_pruned'"), 3);
    assert_eq!(count(&sb, "SELECT COUNT(*) FROM job_queue"), 2);
    // The operator commands agree.
    at(&["show", &ok.to_string()]).code(66);
    let listed = json_lines(&at(&["list", "--json"]).code(0));
    assert_eq!(listed.iter().map(|r| r["id"].as_i64().unwrap()).collect::<Vec<_>>(), vec![recent, pending]);
}

// ---------------------------------------------------------------------------------------
// WAL bound

/// 5,000 noop jobs through a daemon (concurrency 4): the -wal file, sampled at every
/// `job.completed`, stays under 16 MiB.
#[test]
fn wal_stays_bounded_through_5000_jobs() {
    const N: usize = 5_000;
    let sb = Sandbox::new();
    let wal = sb.home().join("homer.db-wal");
    let size = || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    let mut d = sb.start(&[
        "--set",
        "heartbeat_interval=500ms",
        "--set",
        "stale_threshold=10s",
        "--set",
        "kill_grace=100ms",
        "--set",
        "lanes.default.concurrency=4",
        "--set",
        "concurrency=4",
    ]);
    d.wait_event("daemon.active");
    let file = sb.dir.path().join("noops.jsonl");
    write_lines(&file, &(0..N).map(|_| json!({"kind": "noop"}).to_string()).collect::<Vec<_>>());
    let ids = ids_of(&out(&homer(&sb, &["enqueue", "--from", file.to_str().unwrap()]).code(0)));
    assert_eq!(ids.len(), N);
    let (first, last) = (ids[0], ids[N - 1]);
    let mut max = size();
    let mut done = BTreeSet::new();
    for v in d.seen.iter().filter(|v| v["event"] == "job.completed") {
        done.insert(v["job_id"].as_i64().unwrap());
    }
    let t = Instant::now();
    while done.len() < N {
        let v = d.next("job.completed", |v| v["event"] == "job.completed");
        done.insert(v["job_id"].as_i64().unwrap());
        max = max.max(size());
        assert!(t.elapsed() < deadline(300.0), "only {} of {N} completed", done.len());
    }
    eprintln!("{N} jobs in {:?}: max -wal size {max} bytes ({:.2} MiB)", t.elapsed(), max as f64 / 1048576.0);
    assert!(max < 16 * 1024 * 1024, "-wal reached {max} bytes");
    assert!(done.iter().all(|id| (first..=last).contains(id)));
    assert_eq!(
        count(
            &sb,
            &format!("SELECT COUNT(*) FROM job_queue WHERE status = 'completed' AND id BETWEEN {first} AND {last}")
        ),
        N as i64
    );
    assert_eq!(count(&sb, "SELECT COUNT(*) FROM job_runs"), N as i64, "a job ran twice");
}
