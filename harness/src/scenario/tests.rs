//! The parser's tests: every verb's vocabulary, and each rejection's position, key and
//! message. The helpers are the steps' too (a verb module's own parsing tests).

use std::path::Path;
use std::time::Duration;

use super::kit::{parse_pattern, parse_signed_ms};
use super::*;
use crate::steps::file::{decode_hex, parse_percent, FileOp, Offset};
use crate::steps::signal::{parse_sig, Sig};
use crate::steps::snapshot::SnapshotPart;
use crate::steps::wait::{Wait, WaitFor};

pub(crate) const HEADER: &str = "description = \"d\"\ncovers = [\"test\"]\nmutant = \"m\"\n";

pub(crate) fn parse(text: &str) -> Result<Scenario, ParseError> {
    parse_str(Path::new("scenarios/t.toml"), text)
}

fn err(text: &str) -> ParseError {
    match parse(text) {
        Ok(s) => panic!("expected an error, parsed {s:#?}"),
        Err(e) => e,
    }
}

/// Assert the error's position, key and a fragment of its message.
#[track_caller]
fn assert_err(e: &ParseError, line: usize, col: usize, key: &str, fragment: &str) {
    assert_eq!((e.line, e.col, e.key.as_str()), (line, col, key), "{e}");
    assert!(e.message.contains(fragment), "message lacks {fragment:?}: {e}");
    assert_eq!(e.file, Path::new("scenarios/t.toml"));
}

/// Each case `(body, line, col, key, fragment)`: `prefix` then `body` is refused as
/// [`assert_err`] checks.
#[track_caller]
pub(crate) fn assert_rejections(prefix: &str, cases: &[(&str, usize, usize, &str, &str)]) {
    for (body, line, col, key, fragment) in cases {
        assert_err(&err(&format!("{prefix}{body}")), *line, *col, key, fragment);
    }
}

#[test]
fn unknown_step_verb() {
    let e = err(&format!("{HEADER}[[step]]\nstart = \"a\"\n\n[[step]]\nlaunch = \"b\"\n"));
    assert_err(&e, 8, 1, "step[2].launch", "unknown step verb `launch`");
    let e = err(&format!("{HEADER}[[step]]\nwiat = \"event\"\nevent = \"x\"\n"));
    assert_err(&e, 5, 1, "step[1].wiat", "did you mean `wait`?");
}

#[test]
fn wrong_type() {
    let e = err(&format!("{HEADER}[[step]]\nstart = \"a\"\ncount = \"two\"\n"));
    assert_err(&e, 6, 9, "step[1].count", "expected an integer of at least 1, found \"two\"");
    let e = err(&format!("{HEADER}[[step]]\ncli = [\"status\"]\nno_settings = \"yes\"\n"));
    assert_err(&e, 6, 15, "step[1].no_settings", "expected a boolean");
    let e = err("description = \"d\"\ncovers = \"x\"\nmutant = \"m\"\n[[step]]\nstart = \"a\"\n");
    assert_err(&e, 2, 10, "covers", "expected an array of strings, found \"x\"");
}

#[test]
fn missing_field() {
    let e = err(&format!("{HEADER}[[step]]\nwait = \"event\"\ntarget = \"a\"\n"));
    assert_err(&e, 5, 1, "step[1].event", "`wait = \"event\"` needs `event`");
    let e = err(&format!("{HEADER}[[step]]\nsignal = \"a\"\n"));
    assert_err(&e, 5, 1, "step[1].sig", "needs `sig`");
    let e = err("covers = [\"x\"]\nmutant = \"m\"\n[[step]]\nstart = \"a\"\n");
    assert_err(&e, 1, 1, "description", "missing required key `description`");
    let e = err("description = \"d\"\ncovers = [\"x\"]\n[[step]]\nstart = \"a\"\n");
    assert_err(&e, 1, 1, "mutant", "`mutant_none`");
}

#[test]
fn bad_duration() {
    // The message is homerd's own (`homerd::duration`): the value, examples, the cause.
    let e = err(&format!("{HEADER}[[step]]\nwait = \"exit\"\ntarget = \"a\"\ntimeout = \"5 sekunden\"\n"));
    assert_err(
        &e,
        7,
        11,
        "step[1].timeout",
        "expected a duration like 250ms, 90s, 1h30m, 2d 3h or 0, got `5 sekunden`",
    );
    assert!(e.message.contains("unknown time unit \"sekunden\""), "{e}");
    let e = err(&format!("{HEADER}[[step]]\nwait = \"exit\"\ntarget = \"a\"\ntimeout = \"36501d\"\n"));
    assert_err(&e, 7, 11, "step[1].timeout", "`36501d` is too long: at most 36500d (100 years)");
    let e = err(&format!("{HEADER}[[step]]\nwait = \"exit\"\ntarget = \"a\"\ntimeout = \"1.0001s\"\n"));
    assert_err(&e, 7, 11, "step[1].timeout", "whole milliseconds");
    let e = err(&format!("{HEADER}[[step]]\nwait = \"exit\"\ntarget = \"a\"\ntimeout = 5\n"));
    assert_err(
        &e,
        7,
        11,
        "step[1].timeout",
        "expected a duration like \"250ms\", \"5s\" or \"1h30m\", found the integer 5",
    );
    let e = err(&format!("timeout = 5\n{HEADER}[[step]]\nstart = \"a\"\n"));
    assert_err(&e, 1, 11, "timeout", "found the integer 5");
    let e = err(&format!("{HEADER}[[step]]\nclock = \"+-2h\"\n"));
    assert_err(&e, 5, 9, "step[1].clock", "expected a signed duration");
}

#[test]
fn unknown_top_level_key() {
    let e = err(&format!("{HEADER}timout = \"5s\"\n[[step]]\nstart = \"a\"\n"));
    assert_err(&e, 4, 1, "timout", "unknown top-level key `timout`");
    assert!(e.message.contains("did you mean `timeout`?"), "{e}");
    let e = err(&format!("{HEADER}start = \"a\"\n"));
    assert_err(&e, 4, 1, "start", "under a [[step]] header");
}

#[test]
fn toml_syntax_error() {
    let e = err(&format!("{HEADER}[[step]]\nstart = \"a\"\ncount = 2 3\n"));
    assert_err(&e, 6, 11, "step[1].count", "invalid TOML");
    let e = err(&format!("{HEADER}[[step]]\nstart = \"a\nwait = \"exit\"\n"));
    assert_err(&e, 5, 11, "step[1].start", "invalid TOML");
    let e = err(&format!("{HEADER}[[step]]\nstart = \"a\"\nstart = \"b\"\n"));
    assert_err(&e, 6, 1, "step[1].start", "duplicate key");
}

#[test]
fn step_with_two_verbs() {
    let e = err(&format!("{HEADER}[[step]]\nstart = \"a\"\nwait = \"exit\"\ntarget = \"a\"\n"));
    assert_err(&e, 6, 1, "step[1].wait", "exactly one verb, found `start` and `wait`");
    let e = err(&format!("{HEADER}[[step]]\ncount = 2\n"));
    assert_err(&e, 4, 1, "step[1]", "expected a step verb");
}

#[test]
fn other_rejections() {
    let cases: &[(&str, usize, usize, &str, &str)] = &[
        ("[[step]]\nstart = \"a\"\ncuont = 2\n", 6, 1, "step[1].cuont", "unknown option `cuont` for `start`"),
        ("[[step]]\nwait = \"exit\"\ntarget = \"a\"\nevent = \"x\"\n", 7, 1, "step[1].event", "`wait = \"exit\"`"),
        ("[[step]]\nwait = \"forever\"\n", 5, 8, "step[1].wait", "one of \"event\", \"exit\""),
        ("[[step]]\nsignal = \"a\"\nsig = \"SIGFOO\"\n", 6, 7, "step[1].sig", "found \"SIGFOO\""),
        ("[[step]]\nenqueue = \"noop\"\nsleep = \"1s\"\n", 6, 1, "step[1].sleep", "only to `enqueue = \"probe\"`"),
        ("[[step]]\nenqueue = \"teleport\"\n", 5, 11, "step[1].enqueue", "a job kind"),
        ("[[step]]\nfile = \"{lock}\"\nop = \"chmod\"\nmode = 500\n", 7, 8, "step[1].mode", "0o500"),
        ("[[step]]\nfile = \"{lock}\"\nop = \"symlink\"\n", 6, 1, "step[1].target", "needs `target`"),
        ("[[step]]\nfile = \"{lock}\"\nop = \"remove\"\nto = \"x\"\n", 7, 1, "step[1].to", "unknown option `to`"),
        ("[[step]]\nfile = \"{lock}\"\nop = \"write\"\nhex = \"0g\"\n", 7, 7, "step[1].hex", "not a hex digit"),
        ("[[step]]\nfile = \"{lock}\"\nop = \"unchanged\"\nlabel = \"x\"\n", 7, 9, "step[1].label", "remember"),
        ("[[step]]\nexit = \"a\"\nstderr = [\"!re:(x\"]\n", 6, 11, "step[1].stderr[1]", "regular expression"),
        ("[[step]]\ncli = [\"status\"]\nunprivileged = true\n", 6, 1, "step[1].unprivileged", "requires"),
        ("[[step]]\ncheck = \"everything\"\n", 5, 9, "step[1].check", "expected \"invariants\""),
        ("[[step]]\ncheck = \"invariants\"\nallow = [\"done\"]\n", 6, 10, "step[1].allow[1]", "\"pending\""),
        ("[[step]]\nexpect_events = \"x\"\nmin = 2\nmax = 1\n", 7, 7, "step[1].max", "at least `min`"),
        ("[[step]]\nsql = \"SELECT 1\"\nrows = [[{ null = false }]]\n", 6, 10, "step[1].rows[1][1]", "null"),
        (
            "[[step]]\nsnapshot = \"s\"\nparts = [{ query = \"q\", command = [\"x\"] }]\n",
            6,
            25,
            "step[1].parts[1].command",
            "one kind",
        ),
        ("[[step]]\nsnapshot = \"s\"\nparts = [{ lock_file = false }]\n", 6, 24, "step[1].parts[1].lock_file", "true"),
        ("[settings]\nstale = 1.5\n[[step]]\nstart = \"a\"\n", 5, 9, "settings.stale", "string, integer or boolean"),
        ("mutant_none = \"why\"\n[[step]]\nstart = \"a\"\n", 4, 1, "mutant_none", "not both"),
        ("requires = [\"windows\"]\n[[step]]\nstart = \"a\"\n", 4, 13, "requires[1]", "\"linux\""),
        ("step = []\n", 4, 8, "step", "at least one [[step]]"),
    ];
    assert_rejections(HEADER, cases);
}

#[test]
fn column_counts_characters() {
    let e = err(&format!("{HEADER}[[step]]\nstart = \"a\"\nenv = {{ \"é\" = 1 }}\n"));
    assert_err(&e, 6, 15, "step[1].env.é", "expected a string");
}

#[test]
fn helpers() {
    assert_eq!(parse_signed_ms("+90s"), Some(90_000));
    assert_eq!(parse_signed_ms("-2h"), Some(-7_200_000));
    assert_eq!(parse_signed_ms("30m"), Some(1_800_000));
    assert_eq!(parse_signed_ms("--1s"), None);
    // The one grammar: compound and fractional forms, whole milliseconds, the cap.
    assert_eq!(parse_signed_ms("-1h30m"), Some(-5_400_000));
    assert_eq!(parse_signed_ms("+2d 3h"), Some(51 * 3_600_000));
    assert_eq!(parse_signed_ms("1.5s"), Some(1500));
    assert_eq!(parse_signed_ms("-36501d"), None);
    assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
    assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    assert!(parse_duration("1.5").is_err());
    assert_eq!(parse_sig("sigkill"), Some(Sig::Kill));
    assert_eq!(parse_sig("Hup"), Some(Sig::Hup));
    assert_eq!(parse_sig("USR1"), None);
    assert_eq!(decode_hex("00 ff\n1a"), Ok(vec![0, 255, 26]));
    assert!(decode_hex("abc").is_err());
    let p = parse_pattern("!re:error|panic");
    assert!(p.negated && p.regex && p.text == "error|panic");
    let p = parse_pattern("re-run");
    assert!(!p.negated && !p.regex && p.text == "re-run");
}

const FULL: &str = r#"
description = "every step kind"
covers = ["failure mode 1", "checklist: heartbeat"]
mutant = ["skip_flock", "no_epoch"]
requires = ["linux", "unprivileged"]
timeout = "90s"

[settings]
heartbeat_interval = "250ms"
concurrency = 2
lanes.io.concurrency = 1
durability = "full"

[[step]]
start = "a"
count = 2
command = ["run", "--foreground"]
args = ["--lock-file", "{lock}"]
env = { RUST_LOG = "debug", HOMER_X = "1" }
failpoints = "lock.after_open=stop"
lock_file = "{sandbox}/other.lock"
unprivileged = true
no_settings = true

[[step]]
wait = "event"
target = "a.*"
event = "lock.acquired"
fields = { epoch = 1, ok = true, who = "a", ratio = 0.5, gone = { null = true } }
count = 2
timeout = "5s"

[[step]]
wait = "exit"
target = "a.2"

[[step]]
wait = "sql"
query = "SELECT status, count(*) FROM job_queue GROUP BY status"
rows = [["done", 3], [{ null = true }, 0]]

[[step]]
wait = "effects"
job = 2
starts = 2
ends = 1

[[step]]
wait = "duration"
duration = "1.5s"

[[step]]
exit = "a.*"
count = 2
code = 75
stdout = ["Another Homer instance", "!re:error|panic"]
stderr = ["re:^$"]
timeout = "3s"

[[step]]
signal = "a.1"
sig = "SIGSTOP"

[[step]]
file = "{lock}"
op = "remember"
label = "before"

[[step]]
file = "{lock}"
op = "unchanged"
label = "before"

[[step]]
file = "{lock}"
op = "remove"

[[step]]
file = "{lock}"
op = "replace"
contents = "x"

[[step]]
file = "{lock}"
op = "symlink"
target = "{sandbox}/elsewhere"

[[step]]
file = "{home}"
op = "chmod"
mode = "0500"

[[step]]
file = "{home}"
op = "chmod"
mode = 0o755

[[step]]
file = "{db}"
op = "write"
hex = "53514c69"

[[step]]
file = "notes.txt"
op = "write"
contents = "hi"

[[step]]
file = "{sandbox}/dir"
op = "mkdir"

[[step]]
file = "{db}"
op = "copy"
to = "{sandbox}/db.bak"

[[step]]
file = "{lock}"
op = "exists"

[[step]]
file = "{sandbox}/stray"
op = "absent"

[[step]]
enqueue = "probe"
lane = "io"
max_attempts = 3
key = "k1"
timeout = "2s"
count = 4
parallel = true
code = 0
sleep = "500ms"
grandchild = "1s"
grandchild_setsid = true
exit_code = 3
ignore_term = true

[[step]]
enqueue = "exec"
args = ["--", "{probe}", "{job:1}"]

[[step]]
cli = ["status", "--json"]
code = 1
stdout = ["\"running\""]
stderr = ["!panic"]
unprivileged = true
env = { HOMER_HOME = "{home}" }
no_settings = true
timeout = "20s"

[[step]]
sql = "SELECT id FROM job_queue WHERE id = 1"
rows = [[1]]

[[step]]
hold_write = "2s"

[[step]]
clock = "-2h"

[[step]]
check = "invariants"
allow = ["pending", "running"]

[[step]]
expect_events = "job.finished"
target = "a.1"
fields = { outcome = "done" }
min = 0
max = 4

[[step]]
snapshot = "lock-and-schema"
parts = [
  { lock_file = true },
  { migrations = true },
  { table_info = "job_queue" },
  { messages = "a.1", events = ["lock.acquired", "lock.released"] },
  { command = ["status"] },
  { query = "SELECT name FROM _migrations" },
]
"#;

#[test]
fn full_valid_scenario() {
    let s = parse_str(Path::new("scenarios/full-example.toml"), FULL).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.name, "full-example");
    assert_eq!(s.description, "every step kind");
    assert_eq!(s.covers, ["failure mode 1", "checklist: heartbeat"]);
    assert_eq!(s.mutant, MutantExpectation::Catches(vec!["skip_flock".into(), "no_epoch".into()]));
    assert_eq!(s.requires, [Requirement::Linux, Requirement::Unprivileged]);
    assert_eq!(s.timeout, Duration::from_secs(90));
    let settings: Vec<(&str, &str)> = s.settings.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(
        settings,
        [("heartbeat_interval", "250ms"), ("concurrency", "2"), ("lanes.io.concurrency", "1"), ("durability", "full")]
    );
    assert_eq!(s.steps.len(), 30);
    let line_of = |needle: &str| FULL.lines().position(|l| l == needle).map(|i| i + 1);
    assert_eq!(Some(s.steps[0].line), line_of("start = \"a\"").map(|l| l - 1));
    let mut steps = s.steps.iter().map(|at| &at.step);

    let Some(Step::Start(start)) = steps.next() else { panic!("start") };
    assert_eq!((start.name.as_str(), start.count), ("a", 2));
    assert_eq!(start.command, ["run", "--foreground"]);
    assert_eq!(start.args, ["--lock-file", "{lock}"]);
    assert_eq!(start.env, [("RUST_LOG".into(), "debug".into()), ("HOMER_X".into(), "1".into())]);
    assert_eq!(start.failpoints.as_deref(), Some("lock.after_open=stop"));
    assert_eq!(start.lock_file.as_deref(), Some("{sandbox}/other.lock"));
    assert!(start.unprivileged && start.no_settings);

    let Some(Step::Wait(Wait { until: WaitFor::Event { target, event, fields, count }, timeout })) = steps.next()
    else {
        panic!("wait event")
    };
    assert_eq!(
        (target.as_str(), event.as_str(), *count, *timeout),
        ("a.*", "lock.acquired", 2, Duration::from_secs(5))
    );
    assert_eq!(
        fields,
        &[
            ("epoch".into(), Scalar::Int(1)),
            ("ok".into(), Scalar::Bool(true)),
            ("who".into(), Scalar::Text("a".into())),
            ("ratio".into(), Scalar::Float(0.5)),
            ("gone".into(), Scalar::Null),
        ]
    );
    let Some(Step::Wait(Wait { until: WaitFor::Exited { target }, timeout })) = steps.next() else {
        panic!("wait exit")
    };
    assert_eq!((target.as_str(), *timeout), ("a.2", Duration::from_secs(10)));
    let Some(Step::Wait(Wait { until: WaitFor::Sql { query, rows }, .. })) = steps.next() else { panic!("wait sql") };
    assert!(query.starts_with("SELECT status"));
    assert_eq!(rows, &[vec![Scalar::Text("done".into()), Scalar::Int(3)], vec![Scalar::Null, Scalar::Int(0)]]);
    let Some(Step::Wait(Wait { until: WaitFor::Effects { job, starts, ends, not_before }, .. })) = steps.next() else {
        panic!("wait effects")
    };
    assert_eq!((*job, *starts, *ends, *not_before), (Some(2), 2, 1, None));
    let Some(Step::Wait(Wait { until: WaitFor::Elapsed { duration }, .. })) = steps.next() else {
        panic!("wait duration")
    };
    assert_eq!(*duration, Duration::from_millis(1500));

    let Some(Step::Exit(exit)) = steps.next() else { panic!("exit") };
    assert_eq!((exit.target.as_str(), exit.count, exit.code), ("a.*", Some(2), 75));
    assert_eq!(exit.timeout, Duration::from_secs(3));
    assert_eq!(exit.stdout.len(), 2);
    assert!(!exit.stdout[0].negated && !exit.stdout[0].regex && exit.stdout[0].text == "Another Homer instance");
    assert!(exit.stdout[1].negated && exit.stdout[1].regex && exit.stdout[1].text == "error|panic");
    assert!(exit.stderr[0].regex && exit.stderr[0].text == "^$");

    let Some(Step::Signal(signal)) = steps.next() else { panic!("signal") };
    assert_eq!((signal.target.as_str(), signal.signal), ("a.1", Sig::Stop));

    let mut file = |want: &str| match steps.next() {
        Some(Step::File(f)) => {
            assert_eq!(f.path, want);
            f.op.clone()
        }
        other => panic!("expected a file step, found {other:?}"),
    };
    assert!(matches!(file("{lock}"), FileOp::Remember { label } if label == "before"));
    assert!(matches!(file("{lock}"), FileOp::Unchanged { label } if label == "before"));
    assert!(matches!(file("{lock}"), FileOp::Remove));
    assert!(matches!(file("{lock}"), FileOp::Replace { contents } if contents == b"x"));
    assert!(matches!(file("{lock}"), FileOp::Symlink { target } if target == "{sandbox}/elsewhere"));
    assert!(matches!(file("{home}"), FileOp::Chmod { mode: 0o500 }));
    assert!(matches!(file("{home}"), FileOp::Chmod { mode: 0o755 }));
    assert!(matches!(file("{db}"), FileOp::Write { contents } if contents == b"SQLi"));
    assert!(matches!(file("notes.txt"), FileOp::Write { contents } if contents == b"hi"));
    assert!(matches!(file("{sandbox}/dir"), FileOp::Mkdir));
    assert!(matches!(file("{db}"), FileOp::Copy { to } if to == "{sandbox}/db.bak"));
    assert!(matches!(file("{lock}"), FileOp::Exists { min_size: None }));
    assert!(matches!(file("{sandbox}/stray"), FileOp::Absent));

    let Some(Step::Enqueue(q)) = steps.next() else { panic!("enqueue probe") };
    assert_eq!(q.kind, "probe");
    assert_eq!((q.lane.as_deref(), q.max_attempts, q.key.as_deref()), (Some("io"), Some(3), Some("k1")));
    assert_eq!((q.timeout.as_deref(), q.count, q.parallel, q.code), (Some("2s"), 4, true, 0));
    assert_eq!(q.probe.sleep, Duration::from_millis(500));
    assert_eq!(q.probe.grandchild, Some(Duration::from_secs(1)));
    assert!(q.probe.grandchild_setsid && q.probe.ignore_term);
    assert_eq!(q.probe.exit_code, 3);
    let Some(Step::Enqueue(q)) = steps.next() else { panic!("enqueue exec") };
    assert_eq!((q.kind.as_str(), q.count, q.parallel, q.code), ("exec", 1, false, 0));
    assert_eq!(q.args, ["--", "{probe}", "{job:1}"]);
    assert_eq!(q.probe.sleep, Duration::ZERO);
    assert!(q.lane.is_none() && q.timeout.is_none());

    let Some(Step::Cli(cli)) = steps.next() else { panic!("cli") };
    assert_eq!(cli.args, ["status", "--json"]);
    assert_eq!((cli.code, cli.unprivileged, cli.no_settings), (1, true, true));
    assert_eq!(cli.stdout[0].text, "\"running\"");
    assert!(cli.stderr[0].negated && cli.stderr[0].text == "panic");
    assert_eq!(cli.env, [("HOMER_HOME".into(), "{home}".into())]);
    assert_eq!(cli.timeout, Duration::from_secs(20));

    let Some(Step::Sql(sql)) = steps.next() else { panic!("sql") };
    assert_eq!(sql.rows, [vec![Scalar::Int(1)]]);
    let Some(Step::HoldWrite(hold)) = steps.next() else { panic!("hold_write") };
    assert_eq!(hold.duration, Duration::from_secs(2));
    let Some(Step::Clock(clock)) = steps.next() else { panic!("clock") };
    assert_eq!(clock.step_ms, -7_200_000);
    let Some(Step::Check(check)) = steps.next() else { panic!("check") };
    assert_eq!(check.allow, ["pending", "running"]);
    assert!(!check.none_running);
    let Some(Step::ExpectEvents(ev)) = steps.next() else { panic!("expect_events") };
    assert_eq!((ev.target.as_str(), ev.event.as_str(), ev.min, ev.max), ("a.1", "job.finished", 0, Some(4)));
    assert_eq!(ev.fields, [("outcome".into(), Scalar::Text("done".into()))]);

    let Some(Step::Snapshot(snap)) = steps.next() else { panic!("snapshot") };
    assert_eq!(snap.name, "lock-and-schema");
    assert!(matches!(
        snap.parts.as_slice(),
        [
            SnapshotPart::LockFile,
            SnapshotPart::Migrations,
            SnapshotPart::TableInfo(table),
            SnapshotPart::Messages { target, events },
            SnapshotPart::Command(command),
            SnapshotPart::Query(query),
        ] if table == "job_queue" && target == "a.1" && events == &["lock.acquired", "lock.released"]
            && command == &["status"] && query.starts_with("SELECT name")
    ));
    assert!(steps.next().is_none());
}

const FAULTS: &str = r#"description = "d"
covers = ["test"]
mutant = "m"
requires = ["tmpfs"]
home_size = "2m"

[[step]]
start = "a"
nofile = 64

[[step]]
start = "b"
nofile = [32, 128]

[[step]]
file = "{db}"
op = "corrupt"
offset = "50%"

[[step]]
file = "{db}"
op = "corrupt"
offset = 4096
len = 16

[[step]]
file = "{db}"
op = "rename"
to = "{sandbox}/aside.db"

[[step]]
file = "{home}/filler"
op = "fill"

[[step]]
file = "{db}"
op = "mode"
mode = "0600"

[[step]]
file = "{db}-wal"
op = "exists"
min_size = 1

[[step]]
enqueue = "probe"
count = 300
from_file = true
run_after = "2s"

[[step]]
wait = "effects"
job = 1
not_before = "1900ms"
"#;

#[test]
fn fault_vocabulary() {
    let s = parse(FAULTS).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.requires, [Requirement::Tmpfs]);
    assert_eq!(s.home_size, Some(2 << 20));
    let mut steps = s.steps.iter().map(|at| &at.step);
    let Some(Step::Start(a)) = steps.next() else { panic!("start a") };
    assert_eq!(a.nofile, Some((64, 64)));
    let Some(Step::Start(b)) = steps.next() else { panic!("start b") };
    assert_eq!(b.nofile, Some((32, 128)));
    let mut file = || match steps.next() {
        Some(Step::File(f)) => f.op.clone(),
        other => panic!("expected a file step, found {other:?}"),
    };
    assert!(matches!(file(), FileOp::Corrupt { offset: Offset::Percent(p), len: 600 } if p == 50.0));
    assert!(matches!(file(), FileOp::Corrupt { offset: Offset::Bytes(4096), len: 16 }));
    assert!(matches!(file(), FileOp::Rename { to } if to == "{sandbox}/aside.db"));
    assert!(matches!(file(), FileOp::Fill));
    assert!(matches!(file(), FileOp::Mode { mode: 0o600 }));
    assert!(matches!(file(), FileOp::Exists { min_size: Some(1) }));
    let Some(Step::Enqueue(q)) = steps.next() else { panic!("enqueue") };
    assert_eq!((q.count, q.from_file, q.parallel, q.run_after.as_deref()), (300, true, false, Some("2s")));
    let Some(Step::Wait(Wait { until: WaitFor::Effects { job, starts, not_before, .. }, .. })) = steps.next() else {
        panic!("wait effects")
    };
    assert_eq!((*job, *starts, *not_before), (Some(1), 1, Some(Duration::from_millis(1900))));
    // Defaults: no home_size, no limit, one process per job, no run_after.
    let s = parse(&format!("{HEADER}[[step]]\nstart = \"a\"\n\n[[step]]\nenqueue = \"noop\"\n")).unwrap();
    let Step::Start(a) = &s.steps[0].step else { panic!("start") };
    let Step::Enqueue(q) = &s.steps[1].step else { panic!("enqueue") };
    assert_eq!((s.home_size, a.nofile, q.from_file, q.run_after.as_deref()), (None, None, false, None));
}

#[test]
fn fault_vocabulary_rejections() {
    let cases: &[(&str, usize, usize, &str, &str)] = &[
        ("[[step]]\nfile = \"{db}\"\nop = \"corrupt\"\n", 6, 1, "step[1].offset", "needs `offset`"),
        ("[[step]]\nfile = \"{db}\"\nop = \"corrupt\"\noffset = \"50\"\n", 7, 10, "step[1].offset", "percentage"),
        ("[[step]]\nfile = \"{db}\"\nop = \"corrupt\"\noffset = \"150%\"\n", 7, 10, "step[1].offset", "\"150%\""),
        ("[[step]]\nfile = \"{db}\"\nop = \"corrupt\"\noffset = -1\n", 7, 10, "step[1].offset", "byte offset"),
        ("[[step]]\nfile = \"{db}\"\nop = \"corrupt\"\noffset = 0\nlen = 0\n", 8, 7, "step[1].len", "at least 1"),
        ("[[step]]\nfile = \"{db}\"\nop = \"corrupt\"\noffset = 0\nlen = \"6\"\n", 8, 7, "step[1].len", "length"),
        ("[[step]]\nfile = \"{db}\"\nop = \"corrupt\"\noffset = 0\nto = \"x\"\n", 8, 1, "step[1].to", "unknown option"),
        ("[[step]]\nfile = \"{db}\"\nop = \"rename\"\n", 6, 1, "step[1].to", "needs `to`"),
        ("[[step]]\nfile = \"{db}\"\nop = \"rename\"\nto = \"\"\n", 7, 6, "step[1].to", "non-empty string"),
        ("[[step]]\nfile = \"{home}/f\"\nop = \"fill\"\n", 6, 6, "step[1].op", "home_size"),
        ("[[step]]\nfile = \"{db}\"\nop = \"mode\"\n", 6, 1, "step[1].mode", "needs `mode`"),
        ("[[step]]\nfile = \"{db}\"\nop = \"mode\"\nmode = \"0999\"\n", 7, 8, "step[1].mode", "octal"),
        ("[[step]]\nfile = \"{db}\"\nop = \"mode\"\nmode = 600\n", 7, 8, "step[1].mode", "0o500"),
        ("[[step]]\nfile = \"{db}\"\nop = \"exists\"\nmin_size = -1\n", 7, 12, "step[1].min_size", "bytes"),
        ("[[step]]\nfile = \"{db}\"\nop = \"absent\"\nmin_size = 1\n", 7, 1, "step[1].min_size", "unknown option"),
        ("[[step]]\nstart = \"a\"\nnofile = 2\n", 6, 10, "step[1].nofile", "at least 3"),
        ("[[step]]\nstart = \"a\"\nnofile = \"64\"\n", 6, 10, "step[1].nofile", "descriptor limit"),
        ("[[step]]\nstart = \"a\"\nnofile = [64]\n", 6, 10, "step[1].nofile", "[soft, hard]"),
        ("[[step]]\nstart = \"a\"\nnofile = [64, 32]\n", 6, 10, "step[1].nofile", "soft <= hard"),
        ("[[step]]\nstart = \"a\"\nnofile = [64, \"x\"]\n", 6, 15, "step[1].nofile[2]", "at least 3"),
        ("[[step]]\nwait = \"effects\"\nnot_before = \"2s\"\n", 6, 1, "step[1].not_before", "needs `job`"),
        ("[[step]]\nwait = \"effects\"\njob = 1\nnot_before = \"soon\"\n", 7, 14, "step[1].not_before", "duration"),
        (
            "[[step]]\nwait = \"sql\"\nquery = \"q\"\nrows = []\nnot_before = \"1s\"\n",
            8,
            1,
            "step[1].not_before",
            "unknown option",
        ),
        ("[[step]]\nenqueue = \"noop\"\nparallel = true\nfrom_file = true\n", 7, 1, "step[1].from_file", "not both"),
        ("[[step]]\nenqueue = \"noop\"\nfrom_file = \"yes\"\n", 6, 13, "step[1].from_file", "a boolean"),
        ("[[step]]\nenqueue = \"noop\"\nrun_after = \"\"\n", 6, 13, "step[1].run_after", "non-empty string"),
        ("[[step]]\nenqueue = \"noop\"\nrun_after = 2\n", 6, 13, "step[1].run_after", "found the integer 2"),
        ("home_size = \"2m\"\n[[step]]\nstart = \"a\"\n", 4, 1, "home_size", "requires = [\"tmpfs\"]"),
        ("requires = [\"tmpf\"]\n[[step]]\nstart = \"a\"\n", 4, 13, "requires[1]", "\"tmpfs\""),
    ];
    assert_rejections(HEADER, cases);
    let tmpfs = "requires = [\"tmpfs\"]\n";
    for (size, col) in [("\"2 furlongs\"", 13), ("\"2g\"", 13), ("100", 13), ("\"1.5m\"", 13), ("true", 13)] {
        let e = err(&format!("{HEADER}{tmpfs}home_size = {size}\n[[step]]\nstart = \"a\"\n"));
        assert_err(&e, 5, col, "home_size", "a size from \"4k\" to \"1g\"");
    }
}

const POWER: &str = r#"description = "d"
covers = ["test"]
mutant = "m"
power_loss = true

[[step]]
start = "a"
arm = 40

[[step]]
enqueue = "noop"
arm = 5

[[step]]
enqueue = "noop"
count = 20
from_file = true
arm = 7

[[step]]
cli = ["migrate"]
arm = 3
stderr = ["!panic"]

[[step]]
power_loss = "cut"

[[step]]
power_loss = "cut"
timeout = "20s"
"#;

#[test]
fn power_loss_vocabulary() {
    let s = parse(POWER).unwrap_or_else(|e| panic!("{e}"));
    assert!(s.power_loss);
    let steps: Vec<&Step> = s.steps.iter().map(|at| &at.step).collect();
    assert!(matches!(steps[0], Step::Start(a) if a.arm == Some(40)));
    assert!(matches!(steps[1], Step::Enqueue(q) if q.arm == Some(5) && q.count == 1));
    assert!(matches!(steps[2], Step::Enqueue(q) if q.arm == Some(7) && q.count == 20 && q.from_file));
    assert!(matches!(steps[3], Step::Cli(c) if c.arm == Some(3) && c.stderr.len() == 1));
    assert!(matches!(steps[4], Step::PowerLoss(p) if p.timeout == Duration::from_secs(10)));
    assert!(matches!(steps[5], Step::PowerLoss(p) if p.timeout == Duration::from_secs(20)));
    // Defaults: no recording, nothing armed.
    let s = parse(&format!("{HEADER}[[step]]\nstart = \"a\"\n\n[[step]]\ncli = [\"status\"]\n")).unwrap();
    let (Step::Start(a), Step::Cli(c)) = (&s.steps[0].step, &s.steps[1].step) else { panic!("start, cli") };
    assert_eq!((s.power_loss, a.arm, c.arm), (false, None, None));
    let s = parse(&format!("{HEADER}power_loss = false\n[[step]]\nstart = \"a\"\n")).unwrap();
    assert!(!s.power_loss);
}

#[test]
fn power_loss_rejections() {
    let pl = "power_loss = true\n";
    let cases: &[(&str, usize, usize, &str, &str)] = &[
        ("power_loss = \"cut\"\n[[step]]\nstart = \"a\"\n", 4, 14, "power_loss", "goes under a [[step]] header"),
        ("power_loss = 1\n[[step]]\nstart = \"a\"\n", 4, 14, "power_loss", "found the integer 1"),
        ("[[step]]\npower_loss = \"cut\"\n", 5, 1, "step[1].power_loss", "needs `power_loss = true`"),
        ("[[step]]\nstart = \"a\"\narm = 5\n", 6, 1, "step[1].arm", "needs `power_loss = true`"),
        ("[[step]]\nenqueue = \"noop\"\narm = 5\n", 6, 1, "step[1].arm", "needs `power_loss = true`"),
        ("[[step]]\ncli = [\"migrate\"]\narm = 5\n", 6, 1, "step[1].arm", "needs `power_loss = true`"),
    ];
    assert_rejections(HEADER, cases);
    // With the header (one line more above the steps).
    let cases: &[(&str, usize, usize, &str, &str)] = &[
        ("[[step]]\npower_loss = \"on\"\n", 6, 14, "step[1].power_loss", "expected \"cut\""),
        ("[[step]]\npower_loss = true\n", 6, 14, "step[1].power_loss", "found the boolean true"),
        ("[[step]]\npower_loss = \"cut\"\ntimeout = \"soon\"\n", 7, 11, "step[1].timeout", "a duration"),
        ("[[step]]\npower_loss = \"cut\"\nsig = \"KILL\"\n", 7, 1, "step[1].sig", "unknown option `sig`"),
        ("[[step]]\nstart = \"a\"\narm = 0\n", 7, 7, "step[1].arm", "an op number of at least 1"),
        ("[[step]]\nstart = \"a\"\narm = \"5\"\n", 7, 7, "step[1].arm", "found \"5\""),
        ("[[step]]\nenqueue = \"noop\"\narm = -3\n", 7, 7, "step[1].arm", "at least 1"),
        (
            "[[step]]\nenqueue = \"noop\"\ncount = 2\nparallel = true\narm = 5\n",
            8,
            1,
            "step[1].parallel",
            "an armed enqueue",
        ),
        ("[[step]]\nenqueue = \"noop\"\ncode = 0\narm = 5\n", 7, 1, "step[1].code", "no `code`"),
        ("[[step]]\nenqueue = \"noop\"\ncount = 2\narm = 5\n", 7, 1, "step[1].count", "`count = 1`"),
        ("[[step]]\ncli = [\"migrate\"]\ncode = 0\narm = 5\n", 7, 1, "step[1].code", "an armed `cli`"),
        ("[[step]]\ncheck = \"invariants\"\narm = 5\n", 7, 1, "step[1].arm", "unknown option `arm`"),
    ];
    assert_rejections(&format!("{HEADER}{pl}"), cases);
}

#[test]
fn sizes_and_percentages() {
    assert_eq!(parse_size("4096"), Some(4096));
    assert_eq!(parse_size("512k"), Some(512 << 10));
    assert_eq!(parse_size("2M"), Some(2 << 20));
    assert_eq!(parse_size("2MiB"), Some(2 << 20));
    assert_eq!(parse_size("1g"), Some(1 << 30));
    assert_eq!(parse_size("1.5m"), None);
    assert_eq!(parse_size("m"), None);
    assert_eq!(parse_size("99999999999999999999g"), None);
    assert_eq!(parse_percent("50%"), Some(50.0));
    assert_eq!(parse_percent("12.5%"), Some(12.5));
    assert_eq!(parse_percent("0%"), Some(0.0));
    assert_eq!(parse_percent("100%"), Some(100.0));
    assert_eq!(parse_percent("100.1%"), None);
    assert_eq!(parse_percent("-1%"), None);
    assert_eq!(parse_percent("50"), None);
    assert_eq!(parse_percent("NaN%"), None);
}

#[test]
fn expect_events_max_zero_means_none() {
    let s = parse(&format!("{HEADER}[[step]]\nexpect_events = \"lock.acquired\"\nmax = 0\n"))
        .unwrap_or_else(|e| panic!("{e}"));
    let Step::ExpectEvents(ev) = &s.steps[0].step else { panic!("expect_events") };
    assert_eq!((ev.min, ev.max), (0, Some(0)));
}

#[test]
fn defaults() {
    let text = "description = \"d\"\ncovers = [\"x\"]\nmutant_none = \"harness self-test\"\n\
                [[step]]\ncheck = \"invariants\"\n\n[[step]]\nexpect_events = \"lock.acquired\"\n";
    let s = parse(text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.mutant, MutantExpectation::None("harness self-test".into()));
    assert!(s.requires.is_empty() && s.settings.is_empty());
    assert_eq!(s.timeout, Duration::from_secs(60));
    assert_eq!((s.steps[0].line, s.steps[1].line), (4, 7));
    let Step::Check(check) = &s.steps[0].step else { panic!("check") };
    assert!(check.allow.is_empty() && check.none_running);
    let Step::ExpectEvents(ev) = &s.steps[1].step else { panic!("expect_events") };
    assert_eq!((ev.target.as_str(), ev.min, ev.max), ("*", 1, None));
}

#[test]
fn backends_default_to_sqlite_and_expand_into_one_run_each() {
    let sc = parse(&format!("{HEADER}[[step]]\nstart = \"a\"\n")).unwrap();
    assert_eq!((sc.backends.as_slice(), sc.backend), ([Backend::Sqlite].as_slice(), Backend::Sqlite));
    assert_eq!(sc.runs(None).iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["t"]);
    assert!(sc.runs(Some(Backend::Postgres)).is_empty());
    let text = format!(
        "{HEADER}[settings]\nbackends = [\"postgres\", \"sqlite\"]\nstale_threshold = \"1s\"\n[[step]]\nstart = \"a\"\n"
    );
    let sc = parse(&text).unwrap();
    assert_eq!(sc.backends, [Backend::Sqlite, Backend::Postgres]);
    // `backends` is the harness's: never passed to homerd with --set.
    assert_eq!(sc.settings, [(String::from("stale_threshold"), String::from("1s"))]);
    let runs = sc.runs(None);
    assert_eq!(
        runs.iter().map(|r| (r.name.as_str(), r.backend)).collect::<Vec<_>>(),
        [("t", Backend::Sqlite), ("t [postgres]", Backend::Postgres)]
    );
    assert_eq!(runs[1].stem(), "t");
    assert_eq!(sc.runs(Some(Backend::Postgres)).len(), 1);
}

#[test]
fn backends_refuse_what_postgres_cannot_run() {
    let set = |b: &str| format!("{HEADER}[settings]\nbackends = {b}\n[[step]]\nstart = \"a\"\n");
    assert_err(&err(&set("[\"mysql\"]")), 5, 13, "settings.backends[1]", "expected \"sqlite\" or \"postgres\"");
    assert_err(&err(&set("[]")), 5, 12, "settings.backends", "a non-empty array");
    assert_err(&err(&set("\"postgres\"")), 5, 12, "settings.backends", "a non-empty array");
    assert_err(&err(&set("[\"sqlite\", \"sqlite\"]")), 5, 23, "settings.backends[2]", "`sqlite` is named twice");
    let pg = format!("{HEADER}[settings]\nbackends = [\"sqlite\", \"postgres\"]\n");
    let e = err(&format!("{pg}[[step]]\nhold_write = \"2s\"\n"));
    assert_err(&e, 7, 1, "step[1].hold_write", "runs on SQLite only");
    let e = err(&format!("{pg}[[step]]\nsql = \"DELETE FROM job_queue\"\nrows = []\nwrite = true\n"));
    assert_err(&e, 7, 1, "step[1].sql", "`sql` with `write` changes the SQLite file");
    let e = err(&format!("power_loss = true\n{pg}[[step]]\nstart = \"a\"\n"));
    assert_err(&e, 1, 1, "power_loss", "acts on the SQLite database in the home");
    // Backend-neutral steps are fine, and the same steps on SQLite alone too.
    parse(&format!("{pg}[[step]]\nsql = \"SELECT count(*) FROM job_queue\"\nrows = [[0]]\n")).unwrap();
    parse(&format!("{HEADER}[[step]]\nhold_write = \"2s\"\n")).unwrap();
}

#[test]
fn start_in_a_home_of_its_own() {
    let sc = parse(&format!("{HEADER}[[step]]\nstart = \"b\"\nhome = \"b-2\"\n")).unwrap();
    let Step::Start(s) = &sc.steps[0].step else { panic!("{sc:#?}") };
    assert_eq!(s.home.as_deref(), Some("b-2"));
    let e = err(&format!("{HEADER}[[step]]\nstart = \"b\"\nhome = \"../b\"\n"));
    assert_err(&e, 6, 8, "step[1].home", "a home name of letters, digits");
}

#[test]
fn server_restarts_only_in_a_postgres_only_scenario() {
    let pg_only = format!("{HEADER}[settings]\nbackends = [\"postgres\"]\n");
    let sc = parse(&format!("{pg_only}[[step]]\nserver = \"restart\"\nmode = \"immediate\"\n")).unwrap();
    let Step::Server(s) = &sc.steps[0].step else { panic!("{sc:#?}") };
    assert!(s.immediate);
    let sc = parse(&format!("{pg_only}[[step]]\nserver = \"restart\"\n")).unwrap();
    assert!(matches!(&sc.steps[0].step, Step::Server(s) if !s.immediate));
    let e = err(&format!("{pg_only}[[step]]\nserver = \"restart\"\nmode = \"smart\"\n"));
    assert_err(&e, 8, 8, "step[1].mode", "expected \"fast\" or \"immediate\"");
    let e = err(&format!("{pg_only}[[step]]\nserver = \"stop\"\n"));
    assert_err(&e, 7, 10, "step[1].server", "expected \"restart\"");
    let both = format!("{HEADER}[settings]\nbackends = [\"sqlite\", \"postgres\"]\n");
    let e = err(&format!("{both}[[step]]\nserver = \"restart\"\n"));
    assert_err(&e, 7, 1, "step[1].server", "needs `[settings] backends = [\"postgres\"]`");
    let e = err(&format!("{HEADER}[[step]]\nserver = \"restart\"\n"));
    assert_err(&e, 5, 1, "step[1].server", "a SQLite run has no server");
}
