//! Operator-facing behaviour of `homerd run` and the global flags, with real processes:
//! event levels (INFO by default; `-v`, `-q`, `--log-level`, the `log_level` setting) and
//! what a signal says: how many jobs the drain waits for, how long, what a second does.
#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect the database directly

mod common;

use common::*;
use serde_json::Value;

const EX_USAGE: i32 = 64;
const EX_CONFIG: i32 = 78;

/// A daemon at the default level: the sandbox command asks for DEBUG (the other tests wait
/// on DEBUG events), so this one removes that request.
fn start_at_default_level(sb: &Sandbox, extra: &[&str]) -> Daemon {
    let mut c = sb.cmd();
    c.env_remove("HOMER_LOG_LEVEL").arg("run").args(engine_args(extra));
    Daemon::spawn(c)
}

/// Runs a daemon through a one-second job (ten 100 ms heartbeats), stops it and returns
/// every event it printed and its `homer.log`.
fn one_job_then_stop(sb: &Sandbox, mut d: Daemon) -> (Vec<Value>, String) {
    d.wait_event("daemon.active");
    let id = enqueue(sb, &["sleep", "1s"]);
    wait_job_event(&mut d, "job.completed", id);
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit().success(), "{}", d.dump());
    (d.seen.clone(), String::from_utf8(bytes(&sb.log())).unwrap())
}

fn levels(events: &[Value]) -> Vec<&str> {
    events.iter().filter_map(|e| e["level"].as_str()).collect()
}

#[test]
fn debug_events_only_on_request() {
    // Default: INFO and above, on stderr and in homer.log, although heartbeats ran.
    let sb = Sandbox::new();
    let (events, log) = one_job_then_stop(&sb, start_at_default_level(&sb, &[]));
    assert!(!levels(&events).contains(&"debug"), "a DEBUG event by default:\n{events:#?}");
    assert!(levels(&events).contains(&"info"), "{events:#?}");
    assert!(!log.contains("\"level\":\"debug\"") && log.contains("\"event\":\"lock.released\""), "{log}");

    // The same run with -v, with --log-level debug and with the setting: heartbeats shown
    // and logged.
    for ask in [&["-v"][..], &["--log-level", "debug"], &["--set", "log_level=debug"]] {
        let sb = Sandbox::new();
        let (events, log) = one_job_then_stop(&sb, start_at_default_level(&sb, ask));
        let named = |n: &str| events.iter().any(|e| e["event"] == n && e["level"] == "debug");
        assert!(named("daemon.heartbeat") && named("job.heartbeat"), "{ask:?}: no heartbeat events:\n{events:#?}");
        assert!(log.contains("\"event\":\"daemon.heartbeat\""), "{ask:?}: {log}");
    }
}

#[test]
fn quiet_flags_drop_info_then_warn() {
    let sb = Sandbox::new();
    let mut holder = start_at_default_level(&sb, &[]);
    holder.wait_event("daemon.active");
    // A losing start's message is a WARN line: -q keeps it, -qq drops it, and the exit
    // code does not change.
    let losing = |flags: &[&str]| {
        let mut c = sb.cmd();
        c.env_remove("HOMER_LOG_LEVEL").args(flags).arg("run");
        let out = run_bounded(c, deadline(30.0));
        assert_eq!(out.code, Some(0), "{flags:?}: {}", out.stderr);
        out
    };
    let out = losing(&["-q"]);
    let busy = out.event("lock.busy").unwrap_or_else(|| panic!("-q dropped the WARN line: {}", out.stderr));
    assert_eq!(busy["level"], "warn");
    assert!(out.events().iter().all(|e| e["level"] != "info"), "-q kept INFO: {}", out.stderr);
    let out = losing(&["-qq"]);
    assert_eq!(out.stderr, "", "-qq printed more than errors");
    let out = losing(&["--log-level", "error"]);
    assert_eq!(out.stderr, "", "--log-level error printed more than errors");
    // HOMER_LOG_LEVEL is the setting's environment variable; -q moves from it.
    let mut c = sb.cmd();
    c.env("HOMER_LOG_LEVEL", "warn").args(["-q", "run"]);
    let out = run_bounded(c, deadline(30.0));
    assert_eq!((out.code, out.stderr.as_str()), (Some(0), ""), "warn moved by -q is error");
}

#[test]
fn a_bad_level_is_refused_naming_the_value_and_touches_nothing() {
    let sb = Sandbox::new();
    let out = sb.run(&["--log-level", "loud", "run"]);
    assert_eq!(out.code, Some(EX_USAGE), "{}", out.stderr);
    assert!(out.stderr.contains("loud") && out.stderr.contains("debug"), "{}", out.stderr);
    let out = sb.run(&["-v", "--log-level", "info", "run"]);
    assert_eq!(out.code, Some(EX_USAGE), "-v with --log-level: {}", out.stderr);
    let out = sb.run(&["-v", "-q", "run"]);
    assert_eq!(out.code, Some(EX_USAGE), "-v with -q: {}", out.stderr);
    for (how, value) in [("--set", "log_level=loud"), ("env", "loud")] {
        let mut c = sb.cmd();
        match how {
            "--set" => c.args(["--set", value, "run"]),
            _ => c.env("HOMER_LOG_LEVEL", value).arg("run"),
        };
        let out = run_bounded(c, deadline(30.0));
        assert_eq!(out.code, Some(EX_CONFIG), "{how}: {}", out.stderr);
        assert!(out.stderr.contains("`log_level`") && out.stderr.contains("`loud`"), "{how}: {}", out.stderr);
    }
    assert!(!sb.home().exists(), "a refused level created the home directory");
}

/// The state of job `id` in the database: (status, attempts, interruptions).
fn job_state(sb: &Sandbox, id: i64) -> (String, i64, i64) {
    sql(&sb.db())
        .query_row("SELECT status, attempts, interruptions FROM job_queue WHERE id = ?1", [id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap()
}

/// The first signal names the jobs it waits for and the grace; the second says it stops
/// them now, and it does: the daemon exits well inside the hour of grace, the jobs
/// released with their attempts given back.
#[test]
fn shutdown_says_what_it_waits_for_and_what_a_second_signal_does() {
    let sb = Sandbox::new();
    let mut d = sb.start(&engine_args(&["--set", "shutdown_grace=1h"]));
    d.wait_event("daemon.active");
    let ids = [enqueue(&sb, &["--lane", "a", "sleep", "1h"]), enqueue(&sb, &["--lane", "b", "sleep", "1h"])];
    for id in ids {
        wait_job_event(&mut d, "job.claimed", id);
    }
    d.signal(libc::SIGTERM);
    let begin = d.wait_event("shutdown.begin");
    assert_eq!((begin["running"].as_u64(), begin["grace_ms"].as_u64()), (Some(2), Some(3_600_000)), "{begin}");
    let msg = begin["msg"].as_str().unwrap();
    assert!(msg.contains("up to 1h") && msg.contains("for 2 running jobs") && msg.contains("again"), "{msg}");
    let t = std::time::Instant::now();
    d.signal(libc::SIGINT);
    let hurry = d.wait_event("shutdown.hurry");
    assert_eq!(hurry["running"].as_u64(), Some(2), "{hurry}");
    assert!(hurry["msg"].as_str().unwrap().contains("stopping 2 running jobs now"), "{hurry}");
    assert_eq!(d.wait_exit().code(), Some(0), "{}", d.dump());
    assert!(t.elapsed() < deadline(5.0), "a second signal took {:?} to stop", t.elapsed());
    for id in ids {
        assert_eq!(job_state(&sb, id), (String::from("pending"), 0, 1), "job {id}");
    }
    // Not a terminal: the events alone, no extra plain line.
    assert!(!d.has_event("raw"), "a non-JSON line on a non-terminal stderr:\n{}", d.dump());

    // Nothing running: the message says so.
    let sb = Sandbox::new();
    let mut d = sb.start(&engine_args(&[]));
    d.wait_event("daemon.active");
    d.signal(libc::SIGTERM);
    let begin = d.wait_event("shutdown.begin");
    assert_eq!((begin["running"].as_u64(), begin["msg"].as_str()), (Some(0), Some("Shutting down: no jobs running")));
    assert_eq!(d.wait_exit().code(), Some(0), "{}", d.dump());
}

/// On a terminal whose stderr shows JSON events (or filters INFO out), the signal's
/// message is printed as a plain line too: a person pressing Ctrl-C reads it.
#[test]
fn a_terminal_is_told_what_ctrl_c_does_even_with_json_events() {
    let sb = Sandbox::new();
    let mut cmd = sb.cmd();
    cmd.arg("run").args(engine_args(&["--set", "shutdown_grace=1h"]));
    let mut session = spawn_on_pty(cmd);
    session.exp_string("\"event\":\"daemon.active\"").expect("daemon became active");
    enqueue(&sb, &["sleep", "1h"]);
    session.exp_string("\"event\":\"job.claimed\"").expect("job claimed");
    session.send_control('c').expect("send ^C");
    session
        .exp_string("homerd: Shutting down: waiting up to 1h (shutdown_grace) for 1 running job to finish")
        .expect("the plain shutdown line");
    session.send_control('c').expect("send ^C again");
    session.exp_string("homerd: Signal received again: stopping 1 running job now").expect("the plain hurry line");
    session.exp_string("\"event\":\"lock.released\"").expect("lock released");
    expect_exit_0(session);
}

/// `homerd completions SHELL`: a script for the visible commands and flags only, without
/// reading configuration or creating anything; bash parses it.
#[test]
fn completions_for_bash_zsh_and_fish_touch_nothing() {
    let sb = Sandbox::new();
    for (shell, marker) in [("bash", "complete -F _homerd"), ("zsh", "#compdef homerd"), ("fish", "complete -c homerd")]
    {
        // A config that would be refused (78): completions never read it.
        let mut c = sb.cmd();
        c.env("HOMER_MAX_ATTEMPTS", "0").args(["completions", shell]);
        let out = run_bounded(c, deadline(30.0));
        assert_eq!(out.code, Some(0), "{shell}: {}", out.stderr);
        let script = &out.stdout;
        assert!(script.contains(marker), "{shell}: no `{marker}`");
        for word in ["enqueue", "completions", "log-level"] {
            assert!(script.contains(word), "{shell}: `{word}` not offered");
        }
        for hidden in ["job-shim", "man-pages"] {
            assert!(!script.contains(hidden), "{shell}: the hidden `{hidden}` is offered");
        }
        if shell == "bash" {
            let file = sb.dir.path().join("homerd.bash");
            std::fs::write(&file, script).unwrap();
            let mut check = std::process::Command::new("bash");
            check.arg("-n").arg(&file);
            let out = run_bounded(check, deadline(30.0));
            assert_eq!(out.code, Some(0), "bash -n: {}", out.stderr);
        }
    }
    let out = sb.run(&["completions", "tcsh"]);
    assert_eq!(out.code, Some(EX_USAGE), "{}", out.stderr);
    assert!(out.stderr.contains("tcsh") && out.stderr.contains("bash, zsh, fish"), "{}", out.stderr);
    assert!(!sb.home().exists(), "completions created the home directory");
}

/// The man pages `cargo xtask man` asks for: one per visible command, none for the hidden
/// ones; a missing directory is refused (66) and not created.
#[test]
fn man_pages_for_every_visible_command() {
    let sb = Sandbox::new();
    let dir = sb.dir.path().join("man1");
    let out = sb.run(&["man-pages", dir.to_str().unwrap()]);
    assert_eq!(out.code, Some(66), "{}", out.stderr);
    assert!(out.stderr.contains(dir.to_str().unwrap()) && !dir.exists(), "{}", out.stderr);
    std::fs::create_dir(&dir).unwrap();
    let out = sb.run(&["man-pages", dir.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let pages = listing(&dir);
    for page in ["homerd.1", "homerd-run.1", "homerd-enqueue.1", "homerd-completions.1"] {
        assert!(pages.contains(&page.to_string()), "{page} missing: {pages:?}");
    }
    assert!(!pages.iter().any(|p| p.contains("job-shim") || p.contains("man-pages")), "{pages:?}");
    let main = String::from_utf8(bytes(&dir.join("homerd.1"))).unwrap();
    assert!(main.starts_with(".ie") || main.contains(".TH homerd"), "not a man page: {}", &main[..200.min(main.len())]);
    assert!(main.contains("log\\-level"), "homerd.1 lacks --log-level");
    assert!(!sb.home().exists(), "man-pages created the home directory");
}
