//! What every command prints on stdout: a reader that closes the pipe early (`homerd
//! list | head -1`) ends the command quietly with its documented status, and the JSON
//! contract (README "The JSON contract"): `--json` on every command, one compact value
//! per line, errors as one JSON object on stderr with the same exit code, times as epoch
//! milliseconds with their RFC 3339 form beside them. Real processes and real pipes;
//! readiness from the daemon's JSON events, never from sleeps.
#![allow(clippy::disallowed_methods)] // tests inspect the database directly

mod common;

use std::io::{BufRead, BufReader, Read};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use common::*;
use homer_testkit::{Events, Parse, Proc};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------
// Helpers

/// How the test reads the command's stdout, a real pipe either way.
#[derive(Clone, Copy, Debug)]
enum Reader {
    /// Reads the first line, then closes the read end. With more output than the pipe
    /// holds (64 KiB on Linux, less on macOS) the command is still writing when it closes.
    FirstLine,
    /// The read end is closed before the command starts: its first write fails with
    /// `EPIPE`, whatever the size of its output.
    ClosedAtStart,
}

/// The write end of a pipe whose read end is already closed.
fn closed_pipe() -> OwnedFd {
    let (read, write) = rustix::pipe::pipe().expect("pipe");
    drop(read);
    write
}

struct Piped {
    code: Option<i32>,
    /// The first line read ([`Reader::FirstLine`]), without its newline.
    first: String,
    stderr: String,
}

/// Runs `c` with its stdout a pipe the reader closes early, stderr captured (bounded).
fn run_piped(c: Command, reader: Reader) -> Piped {
    match reader {
        Reader::FirstLine => run_with_stdout(c, Stdio::piped()),
        Reader::ClosedAtStart => run_with_stdout(c, Stdio::from(closed_pipe())),
    }
}

/// Runs `c` with `stdout` (a pipe: its first line read, then closed), stderr captured.
fn run_with_stdout(mut c: Command, stdout: Stdio) -> Piped {
    c.stdin(Stdio::null()).stdout(stdout).stderr(Stdio::piped());
    let (mut proc, pipes) = Proc::spawn(&mut c).unwrap_or_else(|e| panic!("spawn {c:?}: {e}"));
    drop(c); // the parent's copy of a write end
    let mut err = pipes.stderr.expect("stderr piped");
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut first = String::new();
    if let Some(out) = pipes.stdout {
        let mut out = BufReader::new(out);
        out.read_line(&mut first).expect("read the first line");
        // Dropping `out` closes the only read end.
    }
    let exit = proc.wait_exit(deadline(60.0)).expect("the command exits once its reader is gone");
    Piped { code: exit.code(), first: first.trim_end().to_owned(), stderr: stderr.join().unwrap() }
}

/// The signs of a command that did not take a closed stdout quietly: Rust's panic on a
/// failed `println!`, or the error itself reported.
fn assert_quiet(what: &str, p: &Piped) {
    for bad in ["panicked", "failed printing", "Broken pipe", "RUST_BACKTRACE"] {
        assert!(!p.stderr.contains(bad), "{what}: {bad:?} on stderr:\n{}", p.stderr);
    }
    // Anything left on stderr is an event (the sandbox asks for JSON events), not an error.
    for line in p.stderr.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("{what}: not an event: {line}"));
        assert!(v.get("event").is_some(), "{what}: not an event: {line}");
    }
}

fn write_jobs(path: &Path, n: usize) {
    // An hour out: the daemon running beside them stays idle.
    let line = json!({"kind": "noop", "run_after": "1h"}).to_string();
    let mut text = String::with_capacity((line.len() + 1) * n);
    for _ in 0..n {
        text.push_str(&line);
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

/// `homerd ARGS` to completion with stdout and stderr captured.
fn run(sb: &Sandbox, args: &[&str]) -> Output {
    sb.run(args)
}

/// The stdout of a `--json` command as its JSON lines: every line one compact value.
fn json_lines(what: &str, out: &Output) -> Vec<Value> {
    assert_eq!(out.code, Some(0), "{what}: {}", out.stderr);
    assert!(out.stdout.is_empty() || out.stdout.ends_with('\n'), "{what}: unterminated: {:?}", out.stdout);
    compact_json_lines(&out.stdout, what)
}

/// The single JSON value a `--json` command printed.
fn json_one(what: &str, out: &Output) -> Value {
    let mut lines = json_lines(what, out);
    assert_eq!(lines.len(), 1, "{what}: {}", out.stdout);
    lines.remove(0)
}

/// Replaces every path and pid that differs between runs, so a value can be snapshotted.
fn normalise(sb: &Sandbox, v: Value) -> Value {
    let text = v.to_string().replace(&sb.dir.path().display().to_string(), "[sandbox]");
    let text = text.replace(&bin().canonicalize().unwrap().display().to_string(), "[homerd]");
    serde_json::from_str(&text).unwrap()
}

/// A redaction that keeps `null` (so "not set" stays visible) and hides any value.
fn set(label: &'static str) -> insta::internals::Redaction {
    insta::dynamic_redaction(move |v, _| if v.is_nil() { v } else { insta::internals::Content::from(label) })
}

// ---------------------------------------------------------------------------------------
// A closed stdout

/// Every command, human and `--json`, with its stdout closed by its reader after the first
/// line and before the first write: it finishes what it was doing (an enqueue committed,
/// a cancel recorded, a backup written), exits with its documented status (0 here) and
/// says nothing on stderr but events. `list` and `enqueue --from` print far more than a
/// pipe holds, so the reader closes while they are still writing.
#[test]
fn every_command_ends_quietly_when_its_reader_closes_stdout() {
    let sb = Sandbox::new();
    assert_eq!(run(&sb, &["migrate"]).code, Some(0));
    let batch = sb.dir.path().join("batch.jsonl");
    // 15,000 ids are 90 KiB of plain output; 15,000 jobs in `list` are far more.
    write_jobs(&batch, 15_000);
    let batch = batch.to_str().unwrap().to_owned();
    let count = |sql_text: &str| -> i64 { sql(&sb.db()).query_row(sql_text, [], |r| r.get(0)).unwrap() };
    let readers = [Reader::FirstLine, Reader::ClosedAtStart];
    let check = |args: &[&str], reader: Reader, code: i32, first: &dyn Fn(&str) -> bool| {
        let mut c = sb.cmd();
        c.args(args);
        let what = format!("{args:?} ({reader:?})");
        let p = run_piped(c, reader);
        assert_eq!(p.code, Some(code), "{what}: stderr:\n{}", p.stderr);
        assert_quiet(&what, &p);
        if matches!(reader, Reader::FirstLine) {
            assert!(first(&p.first), "{what}: unexpected first line {:?}", p.first);
        }
    };
    let json_line =
        |l: &str| serde_json::from_str::<Value>(l).is_ok_and(|v| serde_json::to_string(&v).ok().as_deref() == Some(l));
    let any = |_: &str| true;

    // migrate refuses while a daemon runs: first, with none.
    for reader in readers {
        check(&["migrate"], reader, 0, &|l| l.contains("is up to date"));
        check(&["migrate", "--json"], reader, 0, &json_line);
    }

    // enqueue --from: one batch per run, each committed although nobody read its ids.
    let mut jobs = 0;
    for reader in readers {
        for json in [false, true] {
            let mut args = vec!["enqueue", "--from", &batch];
            if json {
                args.insert(1, "--json");
            }
            check(&args, reader, 0, &|l| if json { json_line(l) } else { l.parse::<i64>().is_ok() });
            jobs += 15_000;
            assert_eq!(count("SELECT COUNT(*) FROM job_queue"), jobs, "{args:?} ({reader:?})");
        }
    }
    for reader in readers {
        check(&["enqueue", "--run-after", "1h", "noop"], reader, 0, &|l| l.parse::<i64>().is_ok());
        check(&["enqueue", "--json", "--run-after", "1h", "noop"], reader, 0, &json_line);
        jobs += 2;
        assert_eq!(count("SELECT COUNT(*) FROM job_queue"), jobs);
    }

    let mut d = active(&sb, &[]);
    let limit = jobs.to_string();
    for reader in readers {
        check(&["list", "--limit", &limit], reader, 0, &|l| l.starts_with("    ID  STATUS"));
        check(&["list", "--limit", &limit, "--json"], reader, 0, &json_line);
        check(&["status"], reader, 0, &|l| l.starts_with("database: "));
        check(&["status", "--json"], reader, 0, &json_line);
        check(&["doctor"], reader, 0, &|l| l.starts_with("PASS lock file"));
        check(&["doctor", "--json"], reader, 0, &json_line);
        check(&["show", "1"], reader, 0, &|l| l.starts_with("job 1: pending (noop in lane default)"));
        check(&["show", "1", "--json"], reader, 0, &json_line);
        check(&["service", "systemd"], reader, 0, &|l| l.starts_with('#'));
        check(&["service", "launchd", "--json"], reader, 0, &json_line);
        check(&["--help"], reader, 0, &any);
        // A losing start prints nothing on stdout and exits 0 as always.
        check(&["run"], reader, 0, &any);
        // An error is still reported, on stderr, with its own code.
        let mut c = sb.cmd();
        c.args(["show", "999999"]);
        let p = run_piped(c, reader);
        assert_eq!(p.code, Some(66), "show 999999 ({reader:?}): {}", p.stderr);
        assert!(p.stderr.contains("no job 999999") && !p.stderr.contains("panicked"), "{}", p.stderr);
    }

    // logs (a run's output, far more than a pipe holds), logs -f, wait and status --watch:
    // each ends quietly, though `logs -f` and `status --watch` would otherwise go on.
    let out = run(&sb, &["enqueue", "exec", "--", "seq", "1", "200000"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let exec = out.stdout.trim().to_owned();
    let out = run(&sb, &["wait", &exec]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let failed = run(&sb, &["enqueue", "--max-attempts", "1", "exec", "--", "false"]);
    assert_eq!(failed.code, Some(0), "{}", failed.stderr);
    let failed = failed.stdout.trim().to_owned();
    assert_eq!(run(&sb, &["wait", &failed]).code, Some(4));
    let follow = run(&sb, &["enqueue", "exec", "--", "sh", "-c", "seq 1 200000; exec sleep 600"]);
    let follow = follow.stdout.trim().to_owned();
    for reader in readers {
        check(&["logs", &exec], reader, 0, &|l| l == "1");
        check(&["logs", "-f", &exec], reader, 0, &|l| l == "1");
        check(&["logs", "-f", &follow], reader, 0, &|l| l == "1");
        check(&["wait", &exec], reader, 0, &|l| l == format!("job {exec}: completed"));
        check(&["wait", &exec, "--json"], reader, 0, &json_line);
        // wait keeps its verdict: the failed job's 4, whoever stopped reading.
        check(&["wait", &exec, &failed], reader, 4, &|l| l == format!("job {exec}: completed"));
        check(&["wait", &exec, &failed, "--json"], reader, 4, &json_line);
        check(&["status", "--watch", "--interval", "50ms"], reader, 0, &|l| l.starts_with("database: "));
        check(&["status", "--watch", "--json", "--interval", "50ms"], reader, 0, &json_line);
    }
    assert_eq!(job_status(&sb, follow.parse().unwrap()), "running", "logs -f ended before its job");
    assert_eq!(run(&sb, &["cancel", &follow]).code, Some(0));

    // cancel, retry, backup: each done, although nobody read the report.
    let mut id = 10;
    for reader in readers {
        for json in [false, true] {
            let sid = id.to_string();
            let with =
                |cmd: &'static str| if json { vec![cmd, sid.as_str(), "--json"] } else { vec![cmd, sid.as_str()] };
            check(&with("cancel"), reader, 0, &|l| if json { json_line(l) } else { l.contains("cancelled") });
            assert_eq!(job_status(&sb, id), "cancelled");
            check(&with("retry"), reader, 0, &|l| if json { json_line(l) } else { l.contains("requeued") });
            // Requeued, and then the daemon's to run at once.
            assert!(["pending", "running", "completed"].contains(&job_status(&sb, id).as_str()), "retry {id}");
            let dest = sb.dir.path().join(format!("backup-{id}.db"));
            let dest = dest.to_str().unwrap();
            let args = if json { vec!["backup", dest, "--json"] } else { vec!["backup", dest] };
            check(&args, reader, 0, &|l| if json { json_line(l) } else { l == dest });
            assert!(Path::new(dest).is_file(), "{args:?} ({reader:?}): no backup");
            id += 1;
        }
    }
    assert!(d.proc.try_wait().is_none(), "the daemon exited:\n{}", d.dump());
}

/// Any other failure to write stdout is an I/O error that names it (74), not a quiet exit:
/// `/dev/full` fails every write with ENOSPC.
#[cfg(target_os = "linux")]
#[test]
fn a_full_disk_behind_stdout_is_an_io_error_naming_stdout() {
    let sb = Sandbox::new();
    for args in [&["status"][..], &["status", "--json"]] {
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
        let mut c = sb.cmd();
        c.args(args);
        let p = run_with_stdout(c, Stdio::from(full));
        assert_eq!(p.code, Some(74), "{args:?}: {}", p.stderr);
        assert!(p.stderr.contains("<stdout>") && !p.stderr.contains("panicked"), "{args:?}: {}", p.stderr);
    }
}

fn job_status(sb: &Sandbox, id: i64) -> String {
    sql(&sb.db()).query_row("SELECT status FROM job_queue WHERE id = ?1", [id], |r| r.get(0)).unwrap()
}

/// `doctor`'s verdict is reached before it prints: with its reader gone after the first
/// line, a failing check still exits 1.
#[test]
fn doctor_keeps_its_verdict_when_its_reader_closes_stdout() {
    let sb = Sandbox::new();
    assert_eq!(run(&sb, &["migrate"]).code, Some(0));
    for reader in [Reader::FirstLine, Reader::ClosedAtStart] {
        for args in [&["doctor"][..], &["doctor", "--json"]] {
            let mut c = sb.cmd();
            c.args(args);
            let p = run_piped(c, reader);
            assert_eq!(p.code, Some(1), "{args:?} ({reader:?}): no daemon runs, a check fails: {}", p.stderr);
            assert_quiet(&format!("{args:?} ({reader:?})"), &p);
        }
    }
}

/// `homerd run` writes nothing on stdout: with it closed from the start, the daemon runs
/// jobs and stops cleanly on SIGTERM.
#[test]
fn the_daemon_runs_and_stops_cleanly_with_stdout_closed() {
    let sb = Sandbox::new();
    let mut c = sb.cmd();
    c.arg("run").args(FAST).stdin(Stdio::null()).stdout(Stdio::from(closed_pipe())).stderr(Stdio::piped());
    let (mut proc, pipes) = Proc::spawn(&mut c).unwrap();
    drop(c);
    let mut events = Events::read(pipes, Parse::Json).unwrap();
    let event = |name: &'static str| move |l: &homer_testkit::Line| l.json.as_ref().is_some_and(|v| v["event"] == name);
    let limit = || Instant::now() + deadline(30.0);
    events.wait_for("daemon.active", limit(), event("daemon.active")).unwrap_or_else(|e| panic!("{e}"));
    let id = enqueue(&sb, &["noop"]);
    events
        .wait_for("job.completed", limit(), move |l| {
            l.json.as_ref().is_some_and(|v| v["event"] == "job.completed" && v["job_id"] == id)
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(proc.signal(libc::SIGTERM));
    events.wait_for("lock.released", limit(), event("lock.released")).unwrap_or_else(|e| panic!("{e}"));
    let rest = events.drain(limit()).unwrap_or_else(|e| panic!("{e}"));
    assert!(rest.iter().all(|l| l.json.is_some()), "a line that is not an event: {:?}", rest.last().map(|l| l.text()));
    let exit = proc.wait_exit(deadline(30.0)).expect("exits after lock.released");
    assert_eq!(exit.code(), Some(0), "{}", exit.describe());
}

// ---------------------------------------------------------------------------------------
// Before the first start

/// With no database yet, `list` is an empty list (exit 0) and `show` a missing job (66)
/// that says why; neither creates anything.
#[test]
fn list_and_show_before_the_daemon_created_its_database() {
    let sb = Sandbox::new();
    let out = run(&sb, &["list"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.ends_with("(no jobs)\n"), "{}", out.stdout);
    assert!(json_lines("list --json", &run(&sb, &["list", "--json"])).is_empty());

    let out = run(&sb, &["show", "1"]);
    assert_eq!(out.code, Some(66), "{}", out.stderr);
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    assert!(out.stderr.contains("no job 1: the daemon has not created its database yet"), "{}", out.stderr);
    assert!(out.stderr.contains(&sb.db().display().to_string()), "names the database: {}", out.stderr);
    let out = run(&sb, &["show", "1", "--json"]);
    assert_eq!(out.code, Some(66));
    let err: Value = serde_json::from_str(out.stderr.trim()).unwrap_or_else(|e| panic!("{e}: {}", out.stderr));
    assert_eq!((err["code"].as_i64(), err["kind"].as_str()), (Some(66), Some("not_found")), "{err}");
    // cancel and retry say the same: no job yet, 66 (not 65, a bad database).
    for cmd in ["cancel", "retry"] {
        let out = run(&sb, &[cmd, "1"]);
        assert_eq!(out.code, Some(66), "{cmd}: {}", out.stderr);
        assert!(out.stderr.contains("no job 1: the daemon has not created its database yet"), "{cmd}: {}", out.stderr);
    }
    assert!(!sb.home().exists(), "list, show, cancel or retry created the home directory");
}

// ---------------------------------------------------------------------------------------
// The JSON contract

/// The JSON output of every command: one compact value per line on stdout, only JSON on
/// stderr, each time beside its RFC 3339 form; the shapes pinned as snapshots.
#[test]
fn every_command_prints_one_compact_json_value_per_line() {
    let sb = Sandbox::new();
    let times = |v: &Value| {
        // Every `*_at`/`at`/`run_after` in epoch ms has its `_rfc3339` twin, the same instant.
        fn walk(v: &Value, found: &mut usize) {
            match v {
                Value::Object(m) => {
                    for (k, x) in m {
                        if let Some(ms) = x.as_i64().filter(|_| k.ends_with("_at") || k == "at" || k == "run_after") {
                            let twin = &m[&format!("{k}_rfc3339")];
                            assert_eq!(twin, &homerd::clock::format_rfc3339(ms), "{k} in {v}");
                            *found += 1;
                        }
                        walk(x, found);
                    }
                }
                Value::Array(a) => a.iter().for_each(|x| walk(x, found)),
                _ => {}
            }
        }
        let mut found = 0;
        walk(v, &mut found);
        found
    };
    let only_json_on_stderr = |what: &str, out: &Output| {
        for l in out.stderr.lines() {
            assert!(serde_json::from_str::<Value>(l).is_ok(), "{what}: stderr line not JSON: {l}");
        }
    };
    let json = |args: &[&str]| -> Output {
        let out = run(&sb, args);
        only_json_on_stderr(&format!("{args:?}"), &out);
        out
    };

    let status_none = json_one("status", &json(&["status", "--json"]));
    let migrate = json_one("migrate", &json(&["migrate", "--json"]));
    assert_eq!(migrate["created"], true);
    let migrate_again = json_one("migrate", &json(&["migrate", "--json"]));
    assert_eq!((&migrate_again["created"], &migrate_again["applied"]), (&json!(false), &json!([])));

    let enq =
        json_one("enqueue", &json(&["enqueue", "--json", "--key", "k1", "--max-attempts", "2", "fail", "it broke"]));
    let enq_again = json_one("enqueue", &json(&["enqueue", "--json", "--key", "k1", "noop"]));
    assert_eq!(enq_again, json!({"id": enq["id"], "created": false}));
    let batch = sb.dir.path().join("batch.jsonl");
    std::fs::write(
        &batch,
        "{\"kind\": \"sleep\", \"args\": [\"1h\"], \"lane\": \"slow\"}\n{\"kind\": \"noop\", \"key\": \"k1\"}\n{\"kind\": \"noop\", \"run_after\": \"1h\"}\n",
    )
    .unwrap();
    let from = json_lines("enqueue --from", &json(&["enqueue", "--json", "--from", batch.to_str().unwrap()]));
    assert_eq!(from.len(), 3);
    assert_eq!(from[1], json!({"id": enq["id"], "created": false}), "the known key: its job");

    // Default heartbeats (nothing in the snapshot may depend on timing: a daemon unseen
    // for the fast settings' one second would read as stalled); fast retries and stops.
    let mut d = sb.start(&["--set", "backoff_base=50ms", "--set", "backoff_cap=1s", "--set", "kill_grace=100ms"]);
    d.wait_event("daemon.active");
    let failed = enq["id"].as_i64().unwrap();
    let sleeping = from[0]["id"].as_i64().unwrap();
    wait_job_event(&mut d, "job.failed", failed);
    wait_job_event(&mut d, "job.claimed", sleeping);

    let list = json_lines("list", &json(&["list", "--json"]));
    assert_eq!(list.iter().map(|j| j["id"].as_i64().unwrap()).collect::<Vec<_>>(), [3, 2, 1]);
    let show = json_one("show", &json(&["show", &failed.to_string(), "--json"]));
    assert!(times(&show) >= 5, "{show}");
    assert!(list.iter().map(times).sum::<usize>() >= 6);
    let status = json_one("status", &json(&["status", "--json"]));
    // wait: one object per job with its outcome, exit 4 for the failed one; and, when its
    // --timeout runs out, one per job still open (exit 6).
    let exits_with = |code: i32, args: &[&str]| -> Vec<Value> {
        let out = json(args);
        assert_eq!(out.code, Some(code), "{args:?}: {}", out.stderr);
        json_lines(&format!("{args:?}"), &Output { code: Some(0), ..out })
    };
    let wait = exits_with(4, &["wait", &failed.to_string(), "--json"]);
    assert!(wait.iter().map(times).sum::<usize>() == 1, "{wait:?}");
    let wait_open = exits_with(6, &["wait", "3", "--timeout", "100ms", "--json"]);
    let doctor = json_one("doctor", &json(&["doctor", "--json"]));
    assert_eq!(doctor["ok"], true, "{doctor}");
    let retry = json_one("retry", &json(&["retry", &failed.to_string(), "--json"]));
    let cancel_pending = json_one("cancel", &json(&["cancel", "3", "--json"]));
    let cancel_running = json_one("cancel", &json(&["cancel", &sleeping.to_string(), "--json"]));
    let dest = sb.dir.path().join("snap.db");
    let backup = json_one("backup", &json(&["backup", dest.to_str().unwrap(), "--json"]));
    let service = json_one("service", &json(&["service", "systemd", "--json"]));
    assert!(service["unit"].as_str().unwrap().contains("[Service]"), "{service}");

    let all = normalise(
        &sb,
        json!({
            "status (no database)": status_none,
            "migrate (created)": migrate,
            "migrate (up to date)": migrate_again,
            "enqueue": enq,
            "enqueue (known key)": enq_again,
            "enqueue --from": from,
            "list": list,
            "show": show,
            "status": status,
            "wait": wait,
            "wait (timed out)": wait_open,
            "doctor": doctor,
            "retry": retry,
            "cancel (pending)": cancel_pending,
            "cancel (running)": cancel_running,
            "backup": backup,
            "service": {"manager": service["manager"], "unit": "[unit text]"},
        }),
    );
    // Every time field in milliseconds and its RFC 3339 form, then the other values that
    // change from run to run.
    let mut settings = insta::Settings::clone_current();
    let times: [(&str, &[&str]); 5] = [
        (".list[]", &["created_at", "run_after", "started_at", "completed_at", "heartbeat_at"]),
        (".show.job", &["created_at", "run_after", "started_at", "completed_at"]),
        (".show.runs[]", &["started_at", "ended_at"]),
        (".show.errors[]", &["at"]),
        (".wait[]", &["completed_at"]),
    ];
    for (prefix, fields) in times {
        for field in fields {
            settings.add_redaction(&format!("{prefix}.{field}"), set("[ms]"));
            settings.add_redaction(&format!("{prefix}.{field}_rfc3339"), set("[time]"));
        }
    }
    for (selector, label) in [
        (".list[].locked_by", "[host/pid]"),
        (".show.runs[].worker", "[host/pid]"),
        (".status.daemon.pid", "[pid]"),
        (".status.daemon.seen_age_ms", "[ms]"),
        (".status.oldest_pending_age_ms", "[ms]"),
        (".status.running[].heartbeat_age_ms", "[ms]"),
        (".status.running[].owner", "[host/pid]"),
        (".doctor.checks[].detail", "[detail]"),
    ] {
        settings.add_redaction(selector, set(label));
    }
    settings.bind(|| insta::assert_json_snapshot!("json_success", all));
}

/// Every kind of error under `--json`: nothing on stdout, one JSON object on stderr —
/// `error` (the message), `code` (the exit status) and `kind` (its stable name) — and the
/// same exit code as without `--json`; the shapes pinned as a snapshot.
#[test]
fn every_error_under_json_is_one_object_on_stderr_with_its_exit_code() {
    let sb = Sandbox::new();
    let bad = sb.dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"kind\": \"noop\"}\n{\"kind\": \"teleport\"}\n").unwrap();
    let bad = bad.to_str().unwrap().to_owned();
    let existing = sb.dir.path().join("existing.db");
    std::fs::write(&existing, b"keep me").unwrap();
    let existing = existing.to_str().unwrap().to_owned();

    let error = |args: &[&str]| -> Value {
        let out = run(&sb, args);
        assert!(out.stdout.is_empty(), "{args:?}: stdout {:?}", out.stdout);
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line on stderr:\n{}", out.stderr);
        let v: Value = serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("{args:?}: {e}: {}", lines[0]));
        assert_eq!(v.to_string(), lines[0], "{args:?}: compact");
        assert_eq!(v["code"].as_i64().map(|c| c as i32), out.code, "{args:?}: code is the exit status");
        assert_eq!(v.as_object().unwrap().len(), 3, "{args:?}: error, code, kind: {v}");
        assert!(v["error"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        // The same error without --json: the same code, the message in words.
        let plain: Vec<&str> = args.iter().copied().filter(|a| *a != "--json").collect();
        let out = run(&sb, &plain);
        assert_eq!(out.code, v["code"].as_i64().map(|c| c as i32), "{plain:?}: {}", out.stderr);
        assert!(out.stderr.contains(v["error"].as_str().unwrap()), "{plain:?}: {}", out.stderr);
        json!({"command": args.join(" "), "stderr": v})
    };

    let mut all = vec![
        error(&["show", "1", "--json"]),
        error(&["--set", "concurrency=lots", "status", "--json"]),
        error(&["list", "--json", "--status", "bogus"]),
        error(&["enqueue", "--json", "teleport"]),
    ];
    assert_eq!(run(&sb, &["migrate"]).code, Some(0));
    let done = enqueue(&sb, &["noop"]).to_string();
    assert_eq!(run(&sb, &["cancel", &done]).code, Some(0));
    let pending = enqueue(&sb, &["noop"]).to_string();
    let jobs = || -> String {
        sql(&sb.db())
            .query_row(
                "SELECT group_concat(id || ' ' || status || ' ' || attempts || ' ' || run_after, ', ') FROM job_queue",
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    let before = jobs();
    all.extend([
        error(&["show", "999", "--json"]),
        error(&["cancel", "999", "--json"]),
        error(&["cancel", &done, "--json"]),
        error(&["retry", &pending, "--json"]),
        error(&["enqueue", "--json", "--from", &bad]),
        error(&["backup", &existing, "--json"]),
    ]);
    assert_eq!(jobs(), before, "a refused command changed the jobs");
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep me");
    let d = active(&sb, &[]);
    all.push(error(&["migrate", "--json"]));
    all.extend([error(&["wait", "999", "--json"]), error(&["wait", &pending, "--timeout", "soon", "--json"])]);
    // logs has no JSON shape (it prints the job's own bytes): --json is a usage error.
    let out = run(&sb, &["logs", &pending, "--json"]);
    assert_eq!((out.code, out.stdout.as_str()), (Some(64), ""), "{}", out.stderr);
    let v: Value = serde_json::from_str(out.stderr.trim()).unwrap_or_else(|e| panic!("{e}: {}", out.stderr));
    assert_eq!(v["code"], 64, "{v}");
    all.push(json!({"command": format!("logs {pending} --json"), "stderr": v}));
    // clap's own usage errors: JSON too when --json is among the arguments.
    let out = run(&sb, &["list", "--json", "--no-such-flag"]);
    assert_eq!(out.code, Some(64));
    let v: Value = serde_json::from_str(out.stderr.trim()).unwrap_or_else(|e| panic!("{e}: {}", out.stderr));
    all.push(json!({"command": "list --json --no-such-flag", "stderr": v}));
    let out = run(&sb, &["show", "--json"]);
    assert_eq!(out.code, Some(64));
    let v: Value = serde_json::from_str(out.stderr.trim()).unwrap_or_else(|e| panic!("{e}: {}", out.stderr));
    all.push(json!({"command": "show --json", "stderr": v}));

    let pid = d.pid().to_string();
    let all = normalise(&sb, Value::Array(all));
    let all: Value = serde_json::from_str(&all.to_string().replace(&pid, "[pid]")).unwrap();
    insta::assert_json_snapshot!("json_errors", all);
}

/// A daemon whose stderr nobody reads (a terminal paused with Ctrl-S, `homerd run 2>&1 |
/// stuck`) goes on working: once the pipe is full its event lines are dropped, not
/// waited on, so jobs still run, a job past its timeout is still stopped and recorded,
/// and the count of dropped lines is said when stderr moves again.
#[test]
fn a_daemon_whose_stderr_is_not_read_keeps_running_jobs_and_enforcing_timeouts() {
    let sb = Sandbox::new();
    assert_eq!(sb.run(&["migrate"]).code, Some(0));
    // Two event lines each (claimed, completed), far more than a pipe holds.
    let jobs = sb.dir.path().join("jobs.jsonl");
    let line = json!({"kind": "noop"}).to_string() + "\n";
    std::fs::write(&jobs, line.repeat(3000)).unwrap();
    assert_eq!(sb.run(&["enqueue", "--from", jobs.to_str().unwrap()]).code, Some(0));
    let timed = enqueue(&sb, &["--timeout", "1s", "--max-attempts", "1", "exec", "--", "sleep", "600"]);
    let mut c = sb.cmd();
    c.arg("run").args(engine_args(&["--set", "concurrency=8", "--set", "lanes.default.concurrency=8"]));
    let (mut daemon, mut pipes) =
        Proc::spawn(c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped())).unwrap();
    let stderr = pipes.stderr.take().unwrap(); // held open, not read
                                               // Every job ends, the `sleep` one stopped at its timeout (`wait` exits 4: one failed).
    let mut wait = sb.cmd();
    wait.args(["wait", "--timeout", &format!("{}ms", deadline(60.0).as_millis())]);
    wait.args((1..=timed).map(|id| id.to_string()));
    let out = run_bounded(wait, deadline(90.0));
    assert_eq!(out.code, Some(4), "every job ended, the timed one failed: {}", out.stderr);
    let db = sb.db();
    let error: String = sql(&db).query_row("SELECT error FROM job_queue WHERE id = ?1", [timed], |r| r.get(0)).unwrap();
    assert!(error.contains("timed out") || error.contains("timeout"), "{error}");
    // Now read: the writer says how many lines it dropped, and the daemon stops cleanly.
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut text);
        text
    });
    daemon.signal(libc::SIGTERM);
    let exit = daemon.wait_exit(deadline(30.0)).expect("the daemon stops on SIGTERM");
    assert_eq!(exit.code(), Some(0), "{}", exit.describe());
    let text = reader.join().unwrap();
    let dropped = text.lines().find(|l| l.contains(r#""event":"events.dropped""#));
    assert!(dropped.is_some_and(|l| l.contains(r#""count":"#)), "no events.dropped line");
    assert!(text.lines().last().is_some_and(|l| l.contains("lock.released")), "the last line of a clean stop");
}

/// A home whose path is not UTF-8 is shown with a replacement character, not a panic:
/// `status --json` still prints its one object and exits 0.
#[test]
fn status_json_of_a_home_that_is_not_utf8() {
    use std::os::unix::ffi::OsStrExt;
    let sb = Sandbox::new();
    let home = sb.dir.path().join(std::ffi::OsStr::from_bytes(b"h\xff"));
    let mut c = sb.cmd();
    c.arg("--home").arg(&home).args(["status", "--json"]);
    let out = run_bounded(c, deadline(30.0));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let v = json_one("status --json", &out);
    assert_eq!(v["exists"], false, "{v}");
    assert!(v["database"].as_str().is_some_and(|d| d.contains("h\u{fffd}")), "{v}");
}
