//! The timeline of a small hand-made history: its rows, bars, markers and the highlighted
//! violation, and that text from processes and scenarios is escaped.

use std::time::Duration;

use super::*;
use crate::check::{Violation, NO_OVERLAP, SINGLE_ACTIVE};
use crate::history::{DbState, Effect, Event, PowerCut, ProcKind, ProcRecord, RunRow};

/// The probe's clock at the scenario's start: effects are stamped from here.
const ORIGIN: u64 = 5_000_000_000_000;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn daemon(name: &str, pid: u32, started: u64, exited: Option<u64>) -> ProcRecord {
    ProcRecord {
        name: name.into(),
        pid,
        kind: ProcKind::Daemon,
        started: ms(started),
        exited: exited.map(ms),
        killed: None,
        exit_code: exited.map(|_| 0),
        signal: None,
    }
}

fn event(seq: u64, proc: &ProcRecord, at: u64, json: serde_json::Value) -> Event {
    Event { proc_name: proc.name.clone(), pid: proc.pid, seq, at: ms(at), json }
}

fn effect(kind: EffectKind, job_id: i64, run: i64, at_ms: u64) -> Effect {
    Effect {
        kind,
        job_id,
        run,
        attempt: run,
        token: format!("t{job_id}.{run}"),
        pid: 20_000 + job_id as u32,
        mono_ns: ORIGIN + at_ms * 1_000_000,
    }
}

fn run_row(id: i64, job_id: i64, run: i64, outcome: Option<&str>) -> RunRow {
    RunRow {
        id,
        job_id,
        run,
        attempt: run,
        epoch: 1,
        claim_token: format!("t{job_id}.{run}"),
        outcome: outcome.map(String::from),
        ended: outcome.is_some(),
        error: None,
    }
}

fn step(index: usize, at: u64, summary: &str, mark: Option<(MarkKind, &str, Option<&str>)>) -> StepRecord {
    StepRecord {
        index,
        line: index * 4,
        summary: summary.into(),
        mark: mark.map(|(kind, label, target)| Mark { kind, label: label.into(), target: target.map(String::from) }),
        started: ms(at),
        ended: Some(ms(at + 10)),
        failed: false,
    }
}

/// Daemon `a` (pid 101) takes the lock with epoch 1, is paused, resumed and killed -9;
/// `b` (pid 102) takes over with epoch 2, stands down for a while and stops cleanly; `c`
/// is refused. Job 1's first run dies with `a`, its second completes under `b`; job 2's
/// run starts while another run of it is alive (an overlap) and fails.
fn history() -> History {
    let mut a = daemon("a", 101, 0, Some(2_050));
    a.killed = Some(ms(2_000));
    a.exit_code = None;
    a.signal = Some(9);
    let b = daemon("b", 102, 2_100, Some(5_000));
    let c = daemon("c", 103, 3_000, Some(3_100));
    let cli = ProcRecord { kind: ProcKind::Cli, ..daemon("cli.1", 104, 400, Some(450)) };
    // A background `start` of `enqueue`: the kind of a daemon, none of its events.
    let q = daemon("q", 105, 300, Some(350));
    let events = vec![
        event(1, &a, 100, serde_json::json!({"event": "lock.acquired", "epoch": 1})),
        event(2, &a, 110, serde_json::json!({"event": "daemon.active", "epoch": 1})),
        event(3, &a, 480, serde_json::json!({"event": "job.claimed", "job_id": 1, "run": 1})),
        event(4, &b, 2_200, serde_json::json!({"event": "lock.acquired", "epoch": 2})),
        event(5, &b, 2_210, serde_json::json!({"event": "daemon.active", "epoch": 2})),
        event(6, &c, 3_050, serde_json::json!({"event": "lock.busy", "holder_pid": 102})),
        event(7, &b, 3_200, serde_json::json!({"event": "daemon.standing_down"})),
        event(8, &b, 3_600, serde_json::json!({"event": "daemon.resumed"})),
        event(9, &b, 4_800, serde_json::json!({"event": "shutdown.begin"})),
        event(10, &b, 4_900, serde_json::json!({"event": "lock.released"})),
    ];
    let effects = vec![
        effect(EffectKind::Start, 1, 1, 500),
        effect(EffectKind::Start, 2, 1, 1_000),
        effect(EffectKind::Overlap, 2, 1, 1_200),
        effect(EffectKind::End, 2, 1, 1_500),
        effect(EffectKind::Start, 1, 2, 2_500),
        effect(EffectKind::GrandchildStart, 1, 2, 2_600),
        effect(EffectKind::GrandchildEnd, 1, 2, 2_900),
        effect(EffectKind::End, 1, 2, 3_000),
    ];
    let db = DbState {
        jobs: Vec::new(),
        runs: vec![run_row(1, 1, 1, None), run_row(2, 2, 1, Some("failed")), run_row(3, 1, 2, Some("completed"))],
        leader_epoch: 2,
        workers: Vec::new(),
        integrity: String::from("ok"),
    };
    History {
        procs: vec![a, cli, q, b, c],
        events,
        effects,
        db: Some(db),
        acked: vec![1, 2],
        power_cuts: Vec::new(),
        mono_origin_ns: ORIGIN,
    }
}

fn steps() -> Vec<StepRecord> {
    vec![
        step(1, 0, "start a", None),
        step(2, 400, "enqueue probe", None),
        step(3, 1_300, "signal Stop to a", Some((MarkKind::Pause, "pause a", Some("a")))),
        step(4, 1_400, "file Remove on {lock}", Some((MarkKind::File, "lock deleted", None))),
        step(5, 1_800, "signal Cont to a", Some((MarkKind::Resume, "resume a", Some("a")))),
        step(6, 2_000, "signal Kill to a", Some((MarkKind::Kill, "kill -9 a", Some("a")))),
        step(7, 3_300, "step the clock by -5000 ms", Some((MarkKind::Clock, "clock -5.0 s", None))),
    ]
}

fn violations() -> Vec<Violation> {
    // The checker names the probe's pid too: a job's process, which has no row.
    vec![Violation {
        checker: NO_OVERLAP,
        message: String::from("job 2 run 1 (attempt 1, pid 20002) overlapped another run of job 2"),
    }]
}

fn failed_run<'a>(h: &'a History, steps: &'a [StepRecord], violations: &'a [Violation]) -> Run<'a> {
    Run {
        name: "pitfall-xx",
        history: h,
        steps,
        violations,
        failure: Some(FailureText {
            what: String::from("step 8 (line 32): check invariants"),
            expected: String::from("every invariant to hold"),
            actual: violations.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("; "),
        }),
    }
}

/// The `<svg>` element alone, parsed as XML (so a stray `<` or `&` fails the test).
fn svg_of(page: &str) -> String {
    let from = page.find("<svg").expect("an <svg> element");
    let to = page.find("</svg>").expect("its end") + "</svg>".len();
    let svg = page[from..to].to_string();
    roxmltree::Document::parse(&svg).unwrap_or_else(|e| panic!("the SVG is not well-formed XML: {e}\n{svg}"));
    svg
}

fn count(svg: &str, needle: &str) -> usize {
    svg.matches(needle).count()
}

#[test]
fn a_known_history_draws_its_daemons_runs_faults_and_the_violation() {
    let h = history();
    let (steps, violations) = (steps(), violations());
    let page = render(&failed_run(&h, &steps, &violations));
    let svg = svg_of(&page);

    // Self-contained: no script, nothing fetched.
    assert!(!page.contains("<script") && !page.contains("https://") && !page.contains("src="), "{page}");
    assert_eq!(count(&page, "http://"), 1, "only the SVG namespace");
    assert!(page.contains(r#"<svg xmlns="http://www.w3.org/2000/svg""#));

    // One row per daemon (and one for the CLI calls), in start order, with their states.
    for label in ["daemon, pid 101", "daemon, pid 102", "daemon, pid 103", ">pid 105<", "CLI calls"] {
        assert_eq!(count(&svg, label), 1, "{label}");
    }
    let rows: Vec<usize> = [">a<", ">q<", ">b<", ">c<", ">CLI calls<", ">job 1<"]
        .iter()
        .map(|l| svg.find(l).unwrap_or_else(|| panic!("{l}: {svg}")))
        .collect();
    assert!(rows.windows(2).all(|w| w[0] < w[1]), "rows in start order, then the CLI calls, then jobs");
    assert_eq!(count(&svg, r#"<rect class="lock""#), 2, "a and b each hold the lock once");
    assert_eq!(count(&svg, r#"<rect class="standdown""#), 1);
    assert_eq!(count(&svg, r#"<rect class="drain""#), 1);
    assert_eq!(count(&svg, r#"<rect class="paused""#), 1, "a is paused between the STOP and the CONT");
    assert!(svg.contains("paused (SIGSTOP): 1.300 s to 1.800 s"), "{svg}");
    assert!(svg.contains(">epoch 1<") && svg.contains(">epoch 2<"), "{svg}");
    assert!(svg.contains(">refused: held by pid 102<"), "{svg}");
    assert!(svg.contains(">killed (SIGKILL)<") && svg.contains(r#"class="killx""#), "{svg}");
    assert!(svg.contains(">exit 0 (refused)<") && svg.contains(">exit 0<"), "{svg}");

    // One row per job; one bar per run, at its effects' times, coloured by its outcome.
    assert!(svg.contains(">job 1<") && svg.contains(">\u{26a0} job 2<"), "{svg}");
    assert_eq!(count(&svg, r#"<rect class="completed""#), 1);
    assert_eq!(count(&svg, r#"<rect class="failed""#), 1);
    assert_eq!(count(&svg, r#"<rect class="nooutcome""#), 1);
    assert!(svg.contains("job 2 run 1 attempt 1 (token t2.1): 1.000 s to 1.500 s, failed attempt"), "{svg}");
    assert!(svg.contains("job 1 run 2 attempt 2 (token t1.2): 2.500 s to 3.000 s, completed"), "{svg}");
    // Job 1's first run never recorded its end: drawn open until its daemon was killed.
    assert!(svg.contains("job 1 run 1 attempt 1 (token t1.1): 0.500 s to 2.000 s (no end recorded"), "{svg}");
    assert_eq!(count(&svg, r#"<line class="open""#), 1);
    assert_eq!(count(&svg, r#"<line class="grandchild""#), 1);
    assert_eq!(count(&svg, r#"<path class="overlap""#), 1);

    // Every step is a tick; the faults are labelled lines across the rows.
    assert_eq!(count(&svg, r#"<line class="step""#), 7);
    for (class, label) in [
        ("mark-pause", "pause a"),
        ("mark-file", "lock deleted"),
        ("mark-resume", "resume a"),
        ("mark-kill", "kill -9 a"),
        ("mark-clock", "clock -5.0 s"),
    ] {
        assert!(svg.contains(&format!(r#"<line class="markline {class}""#)), "{class}");
        assert!(svg.contains(&format!(">{label}</text>")), "{label}");
    }

    // The axis is in seconds: 5 s of history, ticks every half second, at both edges.
    assert!(svg.contains("seconds since start"));
    assert_eq!(count(&svg, ">0.0 s<"), 2);
    assert_eq!(count(&svg, ">5.0 s<"), 2);
    assert_eq!(count(&svg, ">2.5 s<"), 2);

    // The failure and the violation, with what it names highlighted.
    assert!(page.contains(r#"<span class="failedrun">FAILED</span>"#));
    assert!(
        page.contains("invariant no_overlap</b>: job 2 run 1 (attempt 1, pid 20002) overlapped another run of job 2"),
        "{page}"
    );
    assert!(page.contains("highlighted: job 2<"), "{page}");
    assert_eq!(count(&svg, r#"<rect class="hl""#), 1, "only job 2's row");
    assert!(page.contains("<td>signal Kill to a</td>"), "the step table: {page}");
}

#[test]
fn the_processes_a_violation_names_are_highlighted() {
    let h = history();
    let steps = steps();
    let violations = vec![Violation {
        checker: SINGLE_ACTIVE,
        message: String::from("epoch 2 made active twice: by a (pid 101, seq 2) and by c (pid 103, seq 6)"),
    }];
    let page = render(&failed_run(&h, &steps, &violations));
    let svg = svg_of(&page);
    assert_eq!(count(&svg, r#"<rect class="hl""#), 2, "{svg}");
    assert!(svg.contains(">\u{26a0} a<") && svg.contains(">\u{26a0} c<") && svg.contains(">b<"), "{svg}");
    assert!(page.contains("highlighted: a (pid 101), c (pid 103)"), "{page}");
}

#[test]
fn a_passed_run_has_no_failure_and_a_failed_step_is_marked() {
    let mut h = history();
    // b still ran after the last step: the harness's teardown killed it, no step did.
    let b = h.procs.iter_mut().find(|p| p.name == "b").unwrap();
    (b.exit_code, b.signal) = (None, Some(9));
    let mut steps = steps();
    let page = render(&Run { name: "ok", history: &h, steps: &steps, violations: &[], failure: None });
    assert!(page.contains(r#"<span class="passed">passed</span>"#));
    assert!(!page.contains(r#"class="failure""#) && !svg_of(&page).contains(r#"class="hl""#));
    assert!(page.contains(">killed at teardown<") && page.contains(">killed (SIGKILL)<"), "{page}");
    assert_eq!(count(&page, r#"<line class="killx""#), 2, "one cross (two strokes), for a's kill -9 step only");

    steps[1].failed = true;
    let failure = FailureText {
        what: String::from("step 2 (line 8): wait for job.completed"),
        expected: String::from("job.completed from a within 5s"),
        actual: String::from("not seen"),
    };
    let page = render(&Run { name: "f", history: &h, steps: &steps, violations: &[], failure: Some(failure) });
    assert!(page.contains("<b>expected:</b> job.completed from a within 5s"), "{page}");
    assert!(page.contains("<b>actual:</b> not seen"), "{page}");
    let svg = svg_of(&page);
    assert_eq!(count(&svg, r#"<line class="stepfailed""#), 1);
    assert!(svg.contains(">step 2 failed<"), "{svg}");
    assert!(page.contains(r#"<tr class="failedstep"><td>2</td>"#), "{page}");
}

#[test]
fn a_power_cut_ends_the_runs_it_killed_and_without_a_database_events_give_outcomes() {
    let mut h = history();
    h.db = None;
    h.power_cuts = vec![PowerCut { at: ms(800), mono_ns: ORIGIN + 800_000_000, last_seq: 3 }];
    let steps = vec![step(1, 790, "power loss", Some((MarkKind::PowerLoss, "power loss", None)))];
    // The cut killed a (its exit observed within the step), which ends its run there.
    let a = h.procs.iter_mut().find(|p| p.name == "a").unwrap();
    (a.killed, a.exited) = (None, Some(ms(795)));
    let b = h.procs.iter().find(|p| p.name == "b").unwrap().clone();
    h.events.push(event(11, &b, 3_010, serde_json::json!({"event": "job.completed", "job_id": 1, "run": 2})));
    let page = render(&Run { name: "cut", history: &h, steps: &steps, violations: &[], failure: None });
    let svg = svg_of(&page);
    assert!(svg.contains("job 1 run 1 attempt 1 (token t1.1): 0.500 s to 0.795 s (no end recorded"), "{svg}");
    assert!(svg.contains("job 1 run 2 attempt 2 (token t1.2): 2.500 s to 3.000 s, completed"), "{svg}");
    assert!(svg.contains("job 2 run 1 attempt 1 (token t2.1): 1.000 s to 1.500 s, no outcome recorded"), "{svg}");
    assert!(svg.contains(r#"<line class="markline mark-power""#) && svg.contains(">power loss</text>"), "{svg}");
    assert!(svg.contains(">killed by the power loss<"), "{svg}");
}

/// The page's HTML and the JUnit report's XML escape alike but for the apostrophe and
/// what replaces a character the markup cannot hold.
#[test]
fn html_and_xml_differ_only_in_the_apostrophe_and_control_characters() {
    let text = "a&<>\"'\u{1}\r\u{7f}\n\tz";
    assert_eq!(escape_markup(text, Markup::Html), "a&amp;&lt;&gt;&quot;&#39;\u{FFFD}\u{FFFD}\u{FFFD}\n\tz");
    assert_eq!(escape_markup(text, Markup::Xml), "a&amp;&lt;&gt;&quot;&apos;?\r\u{7f}\n\tz");
}

#[test]
fn text_from_processes_and_scenarios_is_escaped() {
    assert_eq!(esc(r#"<a href="x">&'</a>"#), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;");
    assert_eq!(esc("bell\u{7}"), "bell\u{FFFD}");

    let mut h = history();
    h.procs[0].name = String::from("<img src=x>");
    for e in h.events.iter_mut().filter(|e| e.pid == 101) {
        e.proc_name = String::from("<img src=x>");
    }
    h.effects[0].token = String::from("\"></rect><script>");
    let steps = vec![step(1, 100, "file Write on </svg>&amp;", Some((MarkKind::File, "</svg> & <b>", None)))];
    let violations =
        vec![Violation { checker: NO_OVERLAP, message: String::from("job 2 <script>alert('x')</script> & more") }];
    let mut run = failed_run(&h, &steps, &violations);
    run.name = "<script>alert(1)</script>";
    let page = render(&run);
    assert!(!page.contains("<script") && !page.contains("<img"), "{page}");
    assert!(page.contains("<title>timeline: &lt;script&gt;alert(1)&lt;/script&gt;</title>"), "{page}");
    assert!(page.contains("job 2 &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; more"), "{page}");
    assert!(page.contains("&lt;/svg&gt; &amp; &lt;b&gt;"), "{page}");
    assert!(page.contains("file Write on &lt;/svg&gt;&amp;amp;"), "{page}");
    let svg = svg_of(&page);
    assert!(svg.contains(">&lt;img src=x&gt;<"), "{svg}");
}

#[test]
fn violations_name_jobs_and_processes_in_the_checkers_words() {
    let n = named_in("epoch 2 made active twice: by a (pid 10, seq 1) and by b (pid 11, seq 4)");
    assert_eq!((n.jobs.len(), n.pids.iter().copied().collect::<Vec<_>>()), (0, vec![10, 11]));
    let n = named_in("acknowledged job 12 is not in job_queue; job 3 run 1 started 2 times");
    assert_eq!(n.jobs.iter().copied().collect::<Vec<_>>(), vec![3, 12]);
    assert_eq!(named_in("jobs 4 and pid, job x").jobs.len(), 0);
}

#[test]
fn an_empty_history_still_draws_an_axis() {
    let h = History::default();
    let page = render(&Run { name: "empty", history: &h, steps: &[], violations: &[], failure: None });
    let svg = svg_of(&page);
    assert_eq!(count(&svg, ">0.00 s<"), 2, "{svg}");
    assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
}

#[test]
fn write_puts_the_page_in_the_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let h = history();
    let path = write(dir.path(), &Run { name: "w", history: &h, steps: &[], violations: &[], failure: None }).unwrap();
    assert_eq!(path, dir.path().join("timeline.html"));
    assert!(std::fs::read_to_string(&path).unwrap().starts_with("<!DOCTYPE html>"));
}

#[test]
fn fault_steps_carry_their_marks_and_ordinary_steps_none() {
    let text = r#"description = "d"
covers = ["t"]
mutant_none = "marks only"
power_loss = true

[[step]]
start = "a"

[[step]]
signal = "a"
sig = "KILL"

[[step]]
signal = "b.*"
sig = "STOP"

[[step]]
file = "{lock}"
op = "remove"

[[step]]
file = "{lock}"
op = "exists"

[[step]]
clock = "-5s"

[[step]]
clock = "+2h"

[[step]]
hold_write = "2s"

[[step]]
power_loss = "cut"
"#;
    let sc = crate::scenario::parse_str(std::path::Path::new("marks.toml"), text).unwrap_or_else(|e| panic!("{e}"));
    let marks: Vec<Option<(MarkKind, String, Option<String>)>> =
        sc.steps.iter().map(|s| s.step.mark().map(|m| (m.kind, m.label, m.target))).collect();
    let mark = |kind, label: &str, target: Option<&str>| Some((kind, label.to_string(), target.map(String::from)));
    assert_eq!(
        marks,
        [
            None,
            mark(MarkKind::Kill, "kill -9 a", Some("a")),
            mark(MarkKind::Pause, "pause b.*", Some("b.*")),
            mark(MarkKind::File, "lock deleted", None),
            None,
            mark(MarkKind::Clock, "clock -5.0 s", None),
            mark(MarkKind::Clock, "clock +2.0 h", None),
            mark(MarkKind::Busy, "db busy 2s", None),
            mark(MarkKind::PowerLoss, "power loss", None),
        ]
    );
    assert_eq!(sc.steps[1].step.key(), "signal");
}

#[test]
fn a_partition_and_its_heal_are_drawn_as_network_faults() {
    let h = history();
    let mut steps = steps();
    steps.push(step(8, 3_500, "partition host a from the server", Some((MarkKind::Network, "partition a", None))));
    steps.push(step(9, 4_200, "heal host a's link to the server", Some((MarkKind::Network, "heal a", None))));
    let svg = svg_of(&render(&failed_run(&h, &steps, &violations())));
    assert_eq!(count(&svg, r#"<line class="markline mark-net""#), 2, "{svg}");
    assert!(svg.contains(">partition a</text>") && svg.contains(">heal a</text>"), "{svg}");
}
