//! Operator-facing behaviour of `homerd run` and the global flags, with real processes:
//! event levels (INFO by default; `-v`, `-q`, `--log-level`, the `log_level` setting).
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
