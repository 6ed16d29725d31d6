#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect the database directly
//! Job output and job environment with real processes: `logs` (runs, streams, `--tail`,
//! `-f` with its latency, ordering and exit status), `wait` (outcomes, `--timeout`),
//! `show` naming run logs and a failed run's cause, `status --watch` off a terminal, and
//! `exec` jobs' working directory and `--env`. Readiness comes from the daemon's JSON
//! events and the commands' own exits, never from sleeps.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use homer_testkit::{Events, Parse, Proc, Stream};
use serde_json::Value;

/// `homerd ARGS` run from `dir`.
fn run_in(sb: &Sandbox, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = sb.cmd();
    c.current_dir(dir).args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    run_bounded(c, deadline(30.0))
}

fn enqueue_in(sb: &Sandbox, dir: &Path, args: &[&str]) -> i64 {
    let mut all = vec!["enqueue"];
    all.extend_from_slice(args);
    let out = run_in(sb, dir, &all, &[]);
    assert_eq!(out.code, Some(0), "enqueue {args:?}: {}", out.stderr);
    out.stdout.trim().parse().unwrap()
}

fn jobs_count(sb: &Sandbox) -> i64 {
    sql(&sb.db()).query_row("SELECT COUNT(*) FROM job_queue", [], |r| r.get(0)).unwrap()
}

fn script(dir: &Path, name: &str, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Spawns `c` as a group leader with its stdout and stderr read as lines, each stamped
/// when it was read.
fn spawn_reading(c: &mut std::process::Command) -> (Proc, Events) {
    let (proc, pipes) = Proc::spawn(c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped())).unwrap();
    (proc, Events::read(pipes, Parse::None).unwrap())
}

/// Spawns `c` with its stdout a pipe, reads one line from it and closes the read end, as
/// `grep -m1` or `head -1` does: the process (still running) and the line.
fn first_line_then_close(mut c: std::process::Command) -> (Proc, String) {
    let (proc, mut pipes) = Proc::spawn(c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null())).unwrap();
    let stdout = pipes.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
        let _ = tx.send(line); // and the read end closes as the reader drops
    });
    let line = rx.recv_timeout(deadline(30.0)).expect("a first line on stdout");
    (proc, line)
}

fn now_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// `logs -f` shows each line of a running job as it is written — a job printing its
/// wall-clock time every 100 ms; each line's delay from its print to `logs -f` printing
/// it must stay under 300 ms — in order, and exits 0 when the job completed.
#[test]
fn logs_follow_shows_each_line_within_300ms_in_order_and_exits_with_the_outcome() {
    let (sb, mut d) = engine_sandbox();
    const LINES: usize = 30;
    let printer = format!(
        "$| = 1; use Time::HiRes qw(time sleep); for my $i (1..{LINES}) {{ printf \"%d %.6f\\n\", $i, time; sleep 0.1 }}"
    );
    let id = enqueue(&sb, &["exec", "--", "perl", "-e", &printer]);
    let mut c = sb.cmd();
    c.args(["logs", "-f", &id.to_string()]);
    let (mut proc, mut lines) = spawn_reading(&mut c);
    let mut delays = Vec::new();
    let mut numbers = Vec::new();
    while numbers.len() < LINES {
        let line = lines
            .wait_for("a job line on logs -f's stdout", Instant::now() + deadline(30.0), |l| l.stream == Stream::Stdout)
            .unwrap_or_else(|e| panic!("{e:?}\n{}", d.dump()));
        // The wall-clock time the reader read the line at.
        let read_at = now_secs() - line.at.elapsed().as_secs_f64();
        let text = line.text();
        let (n, printed) = text.split_once(' ').unwrap_or_else(|| panic!("unexpected line {text:?}"));
        numbers.push(n.parse::<usize>().unwrap());
        delays.push(read_at - printed.parse::<f64>().unwrap());
    }
    assert_eq!(numbers, (1..=LINES).collect::<Vec<_>>(), "every line once, in order");
    let exit = proc.wait_exit(deadline(30.0)).expect("logs -f exits once the job ended");
    assert_eq!(exit.code(), Some(0), "a completed job: {}", exit.describe());
    wait_job_event(&mut d, "job.completed", id);
    let mut sorted = delays.clone();
    sorted.sort_by(f64::total_cmp);
    let (p50, max) = (sorted[LINES / 2] * 1000.0, sorted[LINES - 1] * 1000.0);
    eprintln!("logs -f delay over {LINES} lines: p50 {p50:.1} ms, max {max:.1} ms");
    let bound = deadline(0.3).as_secs_f64() * 1000.0;
    assert!(max < bound, "a line took {max:.1} ms to show (bound {bound:.0} ms): {delays:?}");
}

/// A failing job: `logs -f --both` follows it across its retry into the next run (a
/// note on stderr), prints both runs' stdout to stdout and stderr to stderr, and exits
/// 4 (failed); a cancelled one exits 5.
#[test]
fn logs_follow_crosses_retries_and_exits_4_failed_5_cancelled() {
    let (sb, _d) = engine_sandbox();
    let id = enqueue(
        &sb,
        &["--max-attempts", "2", "exec", "--", "sh", "-c", "echo out$HOMER_RUN; echo err$HOMER_RUN >&2; exit 3"],
    );
    let out = sb.run(&["logs", "-f", "--both", &id.to_string()]);
    assert_eq!(out.code, Some(4), "failed: {out:?}");
    assert_eq!(out.stdout, "out1\nout2\n", "both runs' stdout, in run order");
    assert!(out.stderr.contains("err1\n") && out.stderr.contains("err2\n"), "{}", out.stderr);
    assert!(out.stderr.contains(&format!("job {id} run 1 ended")), "the retry is announced: {}", out.stderr);

    let long = enqueue(&sb, &["exec", "--", "sh", "-c", "echo started; exec sleep 60"]);
    let mut c = sb.cmd();
    c.args(["logs", "-f", &long.to_string()]);
    let (mut proc, mut lines) = spawn_reading(&mut c);
    lines.wait_for("the job's first line", Instant::now() + deadline(30.0), |l| l.text() == "started").unwrap();
    assert_eq!(sb.run(&["cancel", &long.to_string()]).code, Some(0));
    let exit = proc.wait_exit(deadline(30.0)).expect("logs -f exits once the job is cancelled");
    assert_eq!(exit.code(), Some(5), "cancelled: {}", exit.describe());
}

/// `logs -f ID | grep -m1 ready` ends when grep does, though the job stays quiet: the
/// reader closing the pipe ends `logs -f` with 0 at its next poll, not at a write that
/// never comes.
#[test]
fn logs_follow_ends_when_its_reader_closes_the_pipe_of_a_quiet_job() {
    let (sb, _d) = engine_sandbox();
    let id = enqueue(&sb, &["exec", "--", "sh", "-c", "echo ready; exec sleep 3600"]);
    let mut c = sb.cmd();
    c.args(["logs", "-f", &id.to_string()]);
    let (mut proc, line) = first_line_then_close(c);
    assert_eq!(line, "ready\n");
    let exit = proc.wait_exit(deadline(30.0)).expect("logs -f ends once its reader is gone");
    assert_eq!(exit.code(), Some(0), "{}", exit.describe());
    let status: String =
        sql(&sb.db()).query_row("SELECT status FROM job_queue WHERE id = ?1", [id], |r| r.get(0)).unwrap();
    assert_eq!(status, "running", "the job itself is left alone");
}

/// A run log left by a run the database no longer knows (a job id reused after a
/// restored backup, a run number after a power cut) is not shown as this run's output:
/// the new run's file holds only what it wrote.
#[test]
fn a_stale_log_of_the_same_name_is_replaced_not_appended_to() {
    let sb = Sandbox::new();
    assert_eq!(sb.run(&["migrate"]).code, Some(0));
    let id = enqueue(&sb, &["exec", "--", "sh", "-c", "echo fresh; echo fresh-err >&2"]);
    let runs = sb.home().join("logs/runs");
    std::fs::create_dir_all(&runs).unwrap();
    for ext in ["out", "err"] {
        std::fs::write(runs.join(format!("{id}-1.{ext}")), "another job's secret output\n").unwrap();
    }
    let _d = active_engine(&sb, &[]);
    assert_eq!(sb.run(&["wait", &id.to_string()]).code, Some(0));
    assert_eq!(std::fs::read_to_string(runs.join(format!("{id}-1.out"))).unwrap(), "fresh\n");
    assert_eq!(std::fs::read_to_string(runs.join(format!("{id}-1.err"))).unwrap(), "fresh-err\n");
}

/// `logs` without `-f`: the latest run's stdout by default, `--stderr`, `--run N`,
/// `--tail N`; a run that does not exist and a missing job are 66; a job that has no
/// output (a `noop`, or a program that wrote nothing) says so and exits 0.
#[test]
fn logs_picks_the_run_the_stream_and_the_tail() {
    let (sb, _d) = engine_sandbox();
    let id = enqueue(
        &sb,
        &[
            "--max-attempts",
            "2",
            "exec",
            "--",
            "sh",
            "-c",
            "for i in 1 2 3 4 5; do echo run$HOMER_RUN-line$i; done; echo err$HOMER_RUN >&2; exit 1",
        ],
    );
    let ids = id.to_string();
    assert_eq!(sb.run(&["wait", &ids]).code, Some(4));
    let latest = sb.run(&["logs", &ids]);
    assert_eq!(latest.code, Some(0), "{latest:?}");
    assert_eq!(latest.stdout, (1..=5).map(|i| format!("run2-line{i}\n")).collect::<String>());
    assert_eq!(sb.run(&["logs", &ids, "--stderr"]).stdout, "err2\n");
    assert_eq!(sb.run(&["logs", &ids, "--run", "1", "--stderr"]).stdout, "err1\n");
    assert_eq!(sb.run(&["logs", &ids, "--run", "1", "--tail", "2"]).stdout, "run1-line4\nrun1-line5\n");
    let both = sb.run(&["logs", &ids, "--both", "--tail", "1"]);
    assert_eq!((both.stdout.as_str(), both.stderr.as_str()), ("run2-line5\n", "err2\n"));

    let none = sb.run(&["logs", &ids, "--run", "3"]);
    assert_eq!(none.code, Some(66), "{none:?}");
    assert!(none.stderr.contains("has no run 3"), "{}", none.stderr);
    let missing = sb.run(&["logs", "999"]);
    assert_eq!(missing.code, Some(66));
    assert!(missing.stderr.contains("no job 999"), "{}", missing.stderr);
    let noop = enqueue(&sb, &["noop"]);
    let out = sb.run(&["logs", &noop.to_string()]);
    assert_eq!(out.code, Some(0));
    assert!(out.stdout.is_empty() && out.stderr.contains("only `exec` jobs have output"), "{out:?}");

    // A program that writes nothing leaves no log file (one is created at its stream's
    // first byte); `logs` says so and exits 0, `show` too.
    let silent = enqueue(&sb, &["exec", "--", "true"]).to_string();
    assert_eq!(sb.run(&["wait", &silent]).code, Some(0));
    let runs = sb.home().join("logs/runs");
    for ext in ["out", "err"] {
        assert!(!runs.join(format!("{silent}-1.{ext}")).exists(), "{silent}-1.{ext} was created");
    }
    let out = sb.run(&["logs", &silent, "--both"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.is_empty() && out.stderr.contains("its program wrote nothing"), "{out:?}");
    let show = sb.run(&["show", &silent]).stdout;
    assert!(show.contains("(none: the program wrote nothing there"), "{show}");
}

/// `wait`: 0 when every job completed, 4 when one failed, 5 when one was cancelled;
/// `--timeout` exits 6 after about that long, naming what is unfinished; a missing job
/// is 66 and a bad duration 64.
#[test]
fn wait_exits_with_the_outcomes_and_times_out_with_6() {
    let (sb, _d) = engine_sandbox();
    let ok = enqueue(&sb, &["noop"]).to_string();
    let bad = enqueue(&sb, &["--max-attempts", "1", "fail", "no"]).to_string();
    let out = sb.run(&["wait", &ok]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, format!("job {ok}: completed\n"));
    assert_eq!(sb.run(&["wait", &ok, &bad]).code, Some(4));

    let long = enqueue(&sb, &["exec", "--", "sleep", "60"]).to_string();
    let out = sb.run(&["wait", &ok, &long, "--timeout", "300ms"]);
    assert_eq!(out.code, Some(6), "{out:?}");
    assert!(out.elapsed >= Duration::from_millis(300), "gave up early: {:?}", out.elapsed);
    assert!(out.stderr.contains(&format!("job {long} (")), "names the unfinished job: {}", out.stderr);
    assert_eq!(sb.run(&["cancel", &long]).code, Some(0));
    assert_eq!(sb.run(&["wait", &long, &ok]).code, Some(5));
    assert_eq!(sb.run(&["wait", &long, &bad]).code, Some(4), "failed outranks cancelled");

    let missing = sb.run(&["wait", &ok, "4242"]);
    assert_eq!(missing.code, Some(66), "{missing:?}");
    assert!(missing.stderr.contains("no job 4242"));
    assert_eq!(sb.run(&["wait", &ok, "--timeout", "soon"]).code, Some(64));
    // The one duration grammar: compound durations are read as everywhere else.
    let out = sb.run(&["wait", &ok, &long, "--timeout", "0.2s 100ms"]);
    assert_eq!(out.code, Some(5), "{out:?}");
}

/// `wait --json`: one compact object per job as it ends (`ended` true, `completed_at`
/// with its RFC 3339 form), and when `--timeout` runs out one per job still open
/// (`ended` false, its current status) — with the same exit codes, and nothing on stderr
/// that is not JSON. Its errors are the JSON error object.
#[test]
fn wait_json_prints_one_object_per_job_with_its_outcome() {
    let (sb, _d) = engine_sandbox();
    let ok = enqueue(&sb, &["noop"]).to_string();
    let bad = enqueue(&sb, &["--max-attempts", "1", "fail", "no"]).to_string();
    let lines = |out: &Output| -> Vec<Value> {
        for l in out.stderr.lines() {
            assert!(serde_json::from_str::<Value>(l).is_ok(), "stderr line not JSON: {l}");
        }
        compact_json_lines(&out.stdout, "wait --json")
    };
    let out = sb.run(&["wait", &ok, &bad, "--json"]);
    assert_eq!(out.code, Some(4), "{out:?}");
    let mut got = lines(&out);
    got.sort_by_key(|v| v["id"].as_i64());
    assert_eq!(got.len(), 2, "{got:?}");
    for (v, (id, status)) in got.iter().zip([(&ok, "completed"), (&bad, "failed")]) {
        assert_eq!(v["id"].as_i64(), Some(id.parse().unwrap()), "{v}");
        assert_eq!((v["status"].as_str(), v["ended"].as_bool()), (Some(status), Some(true)), "{v}");
        let at = v["completed_at"].as_i64().unwrap_or_else(|| panic!("completed_at: {v}"));
        assert_eq!(v["completed_at_rfc3339"], homerd::clock::format_rfc3339(at), "{v}");
        assert_eq!(v.as_object().unwrap().len(), 5, "id, status, ended, completed_at(_rfc3339): {v}");
    }

    let long = enqueue(&sb, &["--run-after", "1h", "noop"]).to_string();
    let out = sb.run(&["wait", &ok, &long, "--timeout", "200ms", "--json"]);
    assert_eq!(out.code, Some(6), "{out:?}");
    let got = lines(&out);
    assert_eq!(got.len(), 2, "{got:?}");
    let open = got.iter().find(|v| v["id"].as_i64() == Some(long.parse().unwrap())).expect("the open job's line");
    assert_eq!(
        open,
        &serde_json::json!({"id": long.parse::<i64>().unwrap(), "status": "pending", "ended": false,
            "completed_at": null, "completed_at_rfc3339": null})
    );

    let out = sb.run(&["wait", "4242", "--json"]);
    assert_eq!(out.code, Some(66), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let err: Value = serde_json::from_str(out.stderr.trim()).unwrap_or_else(|e| panic!("{e}: {}", out.stderr));
    assert_eq!((err["code"].as_i64(), err["kind"].as_str()), (Some(66), Some("not_found")), "{err}");
    assert!(err["error"].as_str().unwrap().contains("no job 4242"), "{err}");
}

/// `logs --json` is refused with 64 and says where to look instead, as a JSON error;
/// `logs` and `wait` before the daemon's first start are a missing job (66) that says
/// why, and create nothing.
#[test]
fn logs_refuses_json_and_logs_and_wait_before_the_first_start_find_no_job() {
    let sb = Sandbox::new();
    for args in [&["logs", "1"][..], &["wait", "1"], &["logs", "-f", "1"]] {
        let out = sb.run(args);
        assert_eq!(out.code, Some(66), "{args:?}: {out:?}");
        assert!(out.stderr.contains("no job 1: the daemon has not created its database yet"), "{out:?}");
    }
    assert!(!sb.home().exists(), "logs or wait created the home directory");
    let out = sb.run(&["logs", "1", "--json"]);
    assert_eq!(out.code, Some(64), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let err: Value = serde_json::from_str(out.stderr.trim()).unwrap_or_else(|e| panic!("{e}: {}", out.stderr));
    assert_eq!(err["kind"], "usage", "{err}");
    assert!(err["error"].as_str().unwrap().contains("homerd show 1 --json"), "{err}");
}

/// `show` names an `exec` run's log files and, for a run that failed because its
/// program could not start, the cause from its stderr (not only "status 127").
#[test]
fn show_names_the_logs_and_a_failed_runs_last_stderr_line() {
    let (sb, _d) = engine_sandbox();
    let id = enqueue(&sb, &["--max-attempts", "1", "exec", "--", "no-such-program-xyz"]).to_string();
    assert_eq!(sb.run(&["wait", &id]).code, Some(4));
    let out = sb.run(&["show", &id]);
    assert_eq!(out.code, Some(0));
    let runs = sb.home().join("logs/runs");
    assert!(out.stdout.contains(&format!("stdout: {}", runs.join(format!("{id}-1.out")).display())), "{}", out.stdout);
    assert!(out.stdout.contains(&format!("stderr: {}", runs.join(format!("{id}-1.err")).display())), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("last stderr line: homerd job-shim: cannot exec no-such-program-xyz: No such file or directory"),
        "{}",
        out.stdout
    );
    let v: Value = serde_json::from_str(&sb.run(&["show", &id, "--json"]).stdout).unwrap();
    let line = v["runs"][0]["stderr_last_line"].as_str().unwrap();
    assert!(line.contains("cannot exec no-such-program-xyz"), "{v}");
}

/// An `exec` job runs in the enqueuing caller's directory (a relative program path works
/// there), `--cwd` relative to it chooses another, `--env` sets variables, and the
/// caller's own environment is not carried: the job row stores only what was named.
#[test]
fn exec_runs_in_the_callers_directory_with_explicit_env_only() {
    let (sb, _d) = engine_sandbox();
    let work = sb.dir.path().join("work");
    std::fs::create_dir_all(work.join("sub")).unwrap();
    let body = "echo \"dir=$(pwd -P) FOO=$FOO SECRET=$SECRET\"";
    script(&work, "where.sh", body);
    script(&work.join("sub"), "where.sh", body);

    let mut c = sb.cmd();
    c.current_dir(&work).env("SECRET", "hunter2").args(["enqueue", "--env", "FOO=bar baz", "exec", "--", "./where.sh"]);
    let out = run_bounded(c, deadline(30.0));
    assert_eq!(out.code, Some(0), "{out:?}");
    let here = out.stdout.trim().to_string();
    let there = enqueue_in(&sb, &work, &["--cwd", "sub", "exec", "--", "./where.sh"]).to_string();
    assert_eq!(sb.run(&["wait", &here, &there]).code, Some(0));

    let real = work.canonicalize().unwrap();
    assert_eq!(sb.run(&["logs", &here]).stdout, format!("dir={} FOO=bar baz SECRET=\n", real.display()));
    assert_eq!(sb.run(&["logs", &there]).stdout, format!("dir={} FOO= SECRET=\n", real.join("sub").display()));

    let db = sql(&sb.db());
    let row = |id: &str| -> (Option<String>, Option<String>) {
        db.query_row("SELECT cwd, env FROM job_queue WHERE id = ?1", [id], |r| Ok((r.get(0)?, r.get(1)?))).unwrap()
    };
    assert_eq!(row(&here), (Some(work.display().to_string()), Some(String::from(r#"{"FOO":"bar baz"}"#))));
    assert_eq!(row(&there), (Some(work.join("sub").display().to_string()), None));
    let everything: String = db
        .query_row("SELECT group_concat(quote(cwd) || quote(env) || payload) FROM job_queue", [], |r| r.get(0))
        .unwrap();
    assert!(!everything.contains("hunter2"), "the caller's environment was stored: {everything}");
    let shown = sb.run(&["show", &here]).stdout;
    assert!(
        shown.contains(&format!("directory:     {}", work.display())) && shown.contains("env:           FOO=bar baz")
    );
}

/// Bad directories and variables are refused at enqueue with the documented code and a
/// message naming the value, and nothing is enqueued; `--from` lines take `cwd` and `env`
/// too (a bad one: 65 naming the line).
#[test]
fn bad_cwd_and_env_are_refused_and_change_nothing() {
    let sb = Sandbox::new();
    assert_eq!(sb.run(&["migrate"]).code, Some(0));
    let work = sb.dir.path().to_path_buf();
    let cases: &[(&[&str], i32, &str)] = &[
        (&["--cwd", "/no/such/dir", "exec", "--", "true"], 66, "working directory /no/such/dir: No such file"),
        (&["--cwd", "missing", "exec", "--", "true"], 66, "missing: No such file"),
        (&["--env", "NOVALUE", "exec", "--", "true"], 64, "--env NOVALUE: expected KEY=VALUE"),
        (&["--env", "=x", "exec", "--", "true"], 64, "the name must be non-empty"),
        (&["--env", "HOMER_RUN=1", "exec", "--", "true"], 64, "set by the daemon"),
        (&["--cwd", ".", "noop"], 64, "only to `exec` jobs"),
        (&["--env", "A=1", "sleep", "1s"], 64, "only to `exec` jobs"),
    ];
    for (args, code, message) in cases {
        let mut all = vec!["enqueue"];
        all.extend_from_slice(args);
        let out = run_in(&sb, &work, &all, &[]);
        assert_eq!(out.code, Some(*code), "{args:?}: {out:?}");
        assert!(out.stderr.contains(message), "{args:?}: {}", out.stderr);
        assert!(out.stdout.is_empty());
    }
    std::fs::create_dir(work.join("there")).unwrap();
    let file = work.join("jobs.jsonl");
    std::fs::write(
        &file,
        "{\"kind\":\"exec\",\"args\":[\"true\"],\"cwd\":\"there\",\"env\":{\"A\":\"1\"}}\n{\"kind\":\"exec\",\"args\":[\"true\"],\"cwd\":\"gone\"}\n",
    )
    .unwrap();
    let out = run_in(&sb, &work, &["enqueue", "--from", "jobs.jsonl"], &[]);
    assert_eq!(out.code, Some(65), "{out:?}");
    assert!(out.stderr.contains("line 2: working directory") && out.stderr.contains("gone"), "{}", out.stderr);
    assert_eq!(jobs_count(&sb), 0, "a refused enqueue wrote nothing");

    std::fs::write(&file, "{\"kind\":\"exec\",\"args\":[\"true\"],\"cwd\":\"there\",\"env\":{\"A\":\"1\"}}\n").unwrap();
    let out = run_in(&sb, &work, &["enqueue", "--from", "jobs.jsonl"], &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let (cwd, env): (String, String) =
        sql(&sb.db()).query_row("SELECT cwd, env FROM job_queue", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    assert_eq!((cwd, env), (work.join("there").display().to_string(), String::from(r#"{"A":"1"}"#)));
}

/// A directory that vanished between the enqueue and the run fails the run, with the
/// cause on its stderr (and so in `show`).
#[test]
fn a_vanished_directory_fails_the_run_with_its_cause() {
    let sb = Sandbox::new();
    assert_eq!(sb.run(&["migrate"]).code, Some(0));
    let dir = sb.dir.path().join("soon-gone");
    std::fs::create_dir(&dir).unwrap();
    let id = enqueue_in(&sb, &dir, &["--max-attempts", "1", "exec", "--", "true"]).to_string();
    std::fs::remove_dir(&dir).unwrap();
    let mut d = active_engine(&sb, &[]);
    wait_job_event(&mut d, "job.failed", id.parse().unwrap());
    assert_eq!(sb.run(&["wait", &id]).code, Some(4));
    let out = sb.run(&["logs", &id, "--stderr"]);
    assert!(
        out.stdout.contains(&format!("cannot enter the job's working directory {}: No such file", dir.display())),
        "{out:?}"
    );
    assert!(sb.run(&["show", &id]).stdout.contains("last stderr line: homerd job-shim: cannot enter"));
}

/// A job starts with `/dev/null` on stdin (the shim's release pipe never reaches it) and
/// with the open-file soft limit its daemon was started with, not the one the daemon
/// raised itself to.
#[test]
fn a_job_gets_dev_null_on_stdin_and_the_daemons_original_descriptor_limit() {
    let sb = Sandbox::new();
    let hard: u64 = {
        let out = std::process::Command::new("sh").args(["-c", "ulimit -Hn"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if text == "unlimited" {
            u64::MAX
        } else {
            text.parse().unwrap()
        }
    };
    // A soft limit below the hard one, so the daemon has something to raise.
    let soft = 200u64;
    assert!(hard > soft, "this test needs a hard RLIMIT_NOFILE above {soft}, not {hard}");
    let probe = r#"ulimit -Sn; if [ -p /dev/stdin ]; then echo stdin-pipe; elif [ -c /dev/stdin ]; then echo stdin-char-device; fi"#;
    assert_eq!(sb.run(&["migrate"]).code, Some(0));
    let id = enqueue(&sb, &["exec", "--", "sh", "-c", probe]);
    // The sandbox's environment around a shell that lowers only its soft limit, then
    // becomes the daemon.
    let mut c = sb.cmd_with(Path::new("/bin/sh"));
    c.arg("-c").arg(format!("ulimit -Sn {soft} && exec \"$0\" \"$@\"")).arg(bin()).arg("run").args(engine_args(&[]));
    let mut d = Daemon::spawn(c);
    let raised = d.wait_event("daemon.active");
    wait_job_event(&mut d, "job.completed", id);
    let out = sb.run(&["logs", &id.to_string()]);
    assert_eq!(out.stdout, format!("{soft}\nstdin-char-device\n"), "{out:?}\n{raised}");
    d.stop_cleanly();
}

/// `status --watch` off a terminal prints one plain report after another (no control
/// characters) until interrupted.
#[test]
fn status_watch_reprints_plainly_off_a_terminal() {
    let (sb, _d) = engine_sandbox();
    let mut c = sb.cmd();
    c.args(["status", "--watch", "--interval", "100ms"]);
    let (mut proc, mut lines) = spawn_reading(&mut c);
    let mut reports = Vec::new();
    let mut stray = Vec::new();
    while reports.len() < 3 {
        let line = lines
            .wait_for("a report's first line", Instant::now() + deadline(30.0), |l| {
                if l.bytes.contains(&0x1b) {
                    stray.push(l.text());
                }
                l.text().starts_with("database:")
            })
            .unwrap();
        reports.push(line.at);
    }
    proc.signal(libc::SIGINT);
    let exit = proc.wait_exit(deadline(30.0)).expect("Ctrl-C ends it");
    assert_eq!(exit.signal(), Some(libc::SIGINT), "{}", exit.describe());
    assert!(stray.is_empty(), "control characters off a terminal: {stray:?}");
    assert!(reports[2] > reports[1] && reports[1] > reports[0]);
}

/// `status --watch --interval 1h | head -1` ends when head does (the watch asks between
/// refreshes whether its reader is still there), and a refresh that meets a database in
/// the middle of a restore reports the error and goes on watching.
#[test]
fn status_watch_ends_with_its_reader_and_outlives_a_refresh_that_fails() {
    let sb = Sandbox::new();
    assert_eq!(sb.run(&["migrate"]).code, Some(0));
    let mut c = sb.cmd();
    // `--json`: each report is one line written at once, so once it is read nothing more
    // is written until the next refresh, an hour away.
    c.args(["status", "--watch", "--json", "--interval", "1h"]);
    let (mut proc, line) = first_line_then_close(c);
    assert!(line.starts_with(r#"{"daemon":"#) && line.ends_with("}\n"), "{line:?}");
    let exit = proc.wait_exit(deadline(30.0)).expect("the watch ends once its reader is gone, not in an hour");
    assert_eq!(exit.code(), Some(0), "{}", exit.describe());

    // A restore in progress: the database is empty for a while, then whole again.
    let mut c = sb.cmd();
    c.args(["status", "--watch", "--interval", "50ms"]);
    let (mut proc, mut lines) = spawn_reading(&mut c);
    let report = |l: &homer_testkit::Line| l.stream == Stream::Stdout && l.text().starts_with("database:");
    lines.wait_for("a report", Instant::now() + deadline(30.0), report).unwrap();
    let whole = bytes(&sb.db());
    std::fs::write(sb.db(), b"").unwrap();
    let error =
        lines.wait_for("the refresh's error", Instant::now() + deadline(30.0), |l| l.stream == Stream::Stderr).unwrap();
    assert!(error.text().contains("homerd: error:") && error.text().contains("empty"), "{}", error.text());
    std::fs::write(sb.db(), whole).unwrap();
    lines.wait_for("a report after the restore", Instant::now() + deadline(30.0), report).unwrap();
    assert!(proc.signal(libc::SIGINT));
    let exit = proc.wait_exit(deadline(30.0)).expect("Ctrl-C ends it");
    assert_eq!(exit.signal(), Some(libc::SIGINT), "{}", exit.describe());
}

/// `status --watch --json` prints one compact status object per refresh, one per line,
/// with no control characters, until interrupted.
#[test]
fn status_watch_json_prints_one_object_per_refresh() {
    let (sb, _d) = engine_sandbox();
    let mut c = sb.cmd();
    c.args(["status", "--watch", "--json", "--interval", "100ms"]);
    let (mut proc, mut lines) = spawn_reading(&mut c);
    let mut reports = Vec::new();
    while reports.len() < 3 {
        let line = lines.wait_for("a report", Instant::now() + deadline(30.0), |l| l.stream == Stream::Stdout).unwrap();
        let text = line.text();
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"));
        assert_eq!(v.to_string(), text, "one compact object per line");
        assert_eq!((v["exists"].as_bool(), v["daemon"]["active"].as_bool()), (Some(true), Some(true)), "{v}");
        reports.push(line.at);
    }
    proc.signal(libc::SIGINT);
    let exit = proc.wait_exit(deadline(30.0)).expect("Ctrl-C ends it");
    assert_eq!(exit.signal(), Some(libc::SIGINT), "{}", exit.describe());
    assert!(reports[2] > reports[1] && reports[1] > reports[0]);
}

/// A directory the enqueuer may enter but the daemon's user may not (the daemon as uid
/// 65534, the directory root's and 0700): the run fails with the cause on its stderr.
#[test]
fn a_directory_the_daemon_cannot_enter_fails_the_run_with_permission_denied() {
    use std::os::unix::fs::PermissionsExt;
    let Some((sb, mut c)) = Sandbox::for_65534("to start the daemon as another user (uid 65534)") else { return };
    std::fs::create_dir(sb.home()).unwrap();
    std::os::unix::fs::chown(sb.home(), Some(65534), Some(65534)).expect("chown the home to 65534");
    let private = sb.dir.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();

    c.arg("run").args(engine_args(&[]));
    let mut d = Daemon::spawn(c);
    d.wait_event("daemon.active");

    let id = enqueue_in(&sb, &private, &["--max-attempts", "1", "exec", "--", "true"]);
    wait_job_event(&mut d, "job.failed", id);
    let ids = id.to_string();
    assert_eq!(sb.run(&["wait", &ids]).code, Some(4));
    let err = sb.run(&["logs", &ids, "--stderr"]).stdout;
    assert!(
        err.contains(&format!("cannot enter the job's working directory {}: Permission denied", private.display())),
        "{err}"
    );
}
