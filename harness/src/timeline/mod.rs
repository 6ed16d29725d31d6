//! A run's timeline: `timeline.html` in a kept sandbox, one self-contained page (inline
//! SVG and CSS; no script, no network) that draws what happened on one time axis in
//! seconds since the scenario started.
//!
//! - one row per daemon process: alive, holding the lock (with its epoch), draining,
//!   standing down, paused, fenced or halted, and how it ended (exit code, SIGKILL);
//! - one row for the short CLI calls;
//! - one row per job: a bar per run the probe recorded in the effects log (job id, run,
//!   attempt), coloured by the run's outcome in `job_runs` (or, without a database, the
//!   daemon's outcome event), overlaps and grandchildren marked;
//! - the fault steps (kill -9, pause/resume, clock steps, power loss, file surgery, a held
//!   write) as labelled vertical lines across every row, the other steps as ticks;
//! - the failure, and each invariant violation with the jobs and processes its message
//!   names, highlighted in the rows.
//!
//! Invariants: rendering reads only the [`History`] and what the run recorded of its steps
//! (never the sandbox), so the same inputs give the same page; every piece of text that
//! came from a process, a file or a scenario passes through [`esc`] before it reaches the
//! page. The effects log is stamped with `CLOCK_MONOTONIC` and everything else with the
//! harness's receive time; [`History::mono_origin_ns`] (`CLOCK_MONOTONIC` at the
//! scenario's start) puts both on the same axis.

#[cfg(test)]
mod tests;
mod text;

pub use text::{esc, escape_markup, named_in, Markup, Named};

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::check::Violation;
use crate::exec::ctx::matches_target;
use crate::history::{EffectKind, Event, History, ProcKind, ProcRecord};
use crate::steps::{Mark, MarkKind};

/// The file name of a run's timeline inside its sandbox.
pub const FILE_NAME: &str = "timeline.html";

/// One step as the run executed it.
#[derive(Clone, Debug, PartialEq)]
pub struct StepRecord {
    /// 1-based, as failure reports count.
    pub index: usize,
    /// The step's line in the scenario file.
    pub line: usize,
    pub summary: String,
    /// `Some` for a fault step (see [`crate::steps::Mark`]).
    pub mark: Option<Mark>,
    /// When the step began, since the scenario started.
    pub started: Duration,
    /// When it returned (`None`: it never did, e.g. the harness panicked in it).
    pub ended: Option<Duration>,
    pub failed: bool,
}

/// Why a run failed, as its report says it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FailureText {
    pub what: String,
    pub expected: String,
    pub actual: String,
}

/// Everything a timeline shows.
#[derive(Clone, Debug)]
pub struct Run<'a> {
    /// The scenario's name (or `fuzz-seed-N`).
    pub name: &'a str,
    pub history: &'a History,
    pub steps: &'a [StepRecord],
    /// The invariant violations a check found (empty when the run failed otherwise).
    pub violations: &'a [Violation],
    /// `None`: the run passed.
    pub failure: Option<FailureText>,
}

/// Writes `dir/timeline.html` and returns its path.
pub fn write(dir: &Path, run: &Run<'_>) -> std::io::Result<PathBuf> {
    let path = dir.join(FILE_NAME);
    std::fs::write(&path, render(run))?;
    Ok(path)
}

// ---------------------------------------------------------------------------------------
// What the page draws, computed from the history

/// A stretch of a daemon row in one state.
#[derive(Clone, Debug, PartialEq)]
struct Span {
    from: f64,
    to: f64,
    state: State,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Lock,
    Draining,
    StandingDown,
    Paused,
    Fenced,
    Halted,
}

impl State {
    fn class(self) -> &'static str {
        match self {
            State::Lock => "lock",
            State::Draining => "drain",
            State::StandingDown => "standdown",
            State::Paused => "paused",
            State::Fenced => "fenced",
            State::Halted => "halted",
        }
    }
}

/// One daemon row.
struct DaemonRow<'h> {
    proc: &'h ProcRecord,
    end: f64,
    spans: Vec<Span>,
    /// `(at, text)`: epochs and refusals written on the row.
    notes: Vec<(f64, String)>,
    ending: String,
    highlighted: bool,
    /// It printed a `lock.*` or `daemon.*` event (a `homerd run`, not a background CLI).
    daemon_events: bool,
}

/// One run of a job, from its effects.
#[derive(Clone, Debug, PartialEq)]
struct RunBar {
    job_id: i64,
    run: i64,
    attempt: i64,
    token: String,
    start: Option<f64>,
    end: Option<f64>,
    /// Where the bar is drawn to when the probe recorded no end (it was killed): the
    /// daemon's next word on the job, a power cut, or its daemon's death.
    drawn_to: f64,
    overlaps: Vec<f64>,
    grandchildren: Vec<(f64, Option<f64>)>,
    outcome: Outcome,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Completed,
    Failed,
    Cancelled,
    /// Ended without an outcome recorded (stopped, released, abandoned, lost to a cut).
    None,
}

impl Outcome {
    fn class(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
            Outcome::None => "nooutcome",
        }
    }

    fn text(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Failed => "failed attempt",
            Outcome::Cancelled => "cancelled",
            Outcome::None => "no outcome recorded",
        }
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The probe's monotonic stamp on the page's axis (seconds since the scenario started).
fn mono_secs(h: &History, mono_ns: u64) -> f64 {
    mono_ns.saturating_sub(h.mono_origin_ns) as f64 / 1e9
}

fn proc_end(p: &ProcRecord, horizon: f64) -> f64 {
    match (p.exited, p.killed) {
        (Some(e), _) => secs(e),
        (None, Some(k)) => secs(k),
        (None, None) => horizon,
    }
}

/// The last moment anything happened: the right end of the axis.
fn horizon(run: &Run<'_>) -> f64 {
    let h = run.history;
    let mut t: f64 = 0.0;
    for p in &h.procs {
        t = t.max(secs(p.started));
        t = t.max(p.exited.map_or(0.0, secs)).max(p.killed.map_or(0.0, secs));
    }
    for e in &h.events {
        t = t.max(secs(e.at));
    }
    for e in &h.effects {
        t = t.max(mono_secs(h, e.mono_ns));
    }
    for s in run.steps {
        t = t.max(secs(s.started)).max(s.ended.map_or(0.0, secs));
    }
    for c in &h.power_cuts {
        t = t.max(secs(c.at));
    }
    t.max(0.001)
}

fn events_of<'h>(h: &'h History, p: &ProcRecord) -> Vec<&'h Event> {
    h.events_in_order().into_iter().filter(|e| e.proc_name == p.name && e.pid == p.pid).collect()
}

fn daemon_row<'h>(run: &Run<'h>, p: &'h ProcRecord, horizon: f64, named: &Named) -> DaemonRow<'h> {
    let end = proc_end(p, horizon);
    let mut spans = Vec::new();
    let mut notes = Vec::new();
    let mut open: BTreeMap<u8, (State, f64)> = BTreeMap::new();
    let close = |open: &mut BTreeMap<u8, (State, f64)>, key: u8, at: f64, spans: &mut Vec<Span>| {
        if let Some((state, from)) = open.remove(&key) {
            spans.push(Span { from, to: at.max(from), state });
        }
    };
    let mut refused = false;
    let mut daemon_events = false;
    for e in events_of(run.history, p) {
        let at = secs(e.at);
        daemon_events |= e.name().starts_with("lock.") || e.name().starts_with("daemon.");
        match e.name() {
            "lock.acquired" | "lock.reacquired" => {
                open.entry(0).or_insert((State::Lock, at));
            }
            "lock.lost" | "lock.released" => close(&mut open, 0, at, &mut spans),
            "daemon.active" => {
                let epoch = e.field_i64("epoch").map_or_else(|| String::from("?"), |n| n.to_string());
                notes.push((at, format!("epoch {epoch}")));
            }
            "lock.busy" => {
                refused = true;
                let holder = e.field_i64("holder_pid").map(|p| format!(": held by pid {p}")).unwrap_or_default();
                notes.push((at, format!("refused{holder}")));
            }
            "shutdown.begin" => {
                open.entry(1).or_insert((State::Draining, at));
            }
            "daemon.standing_down" => {
                open.entry(2).or_insert((State::StandingDown, at));
            }
            "daemon.resumed" => close(&mut open, 2, at, &mut spans),
            "daemon.fenced" => {
                open.entry(3).or_insert((State::Fenced, at));
            }
            "daemon.corrupt" => {
                open.entry(4).or_insert((State::Halted, at));
            }
            _ => {}
        }
    }
    for key in open.keys().copied().collect::<Vec<_>>() {
        close(&mut open, key, end, &mut spans);
    }
    // Pauses: a STOP step aimed at this process while it was alive, until the next CONT.
    let mut paused_at: Option<f64> = None;
    for s in run.steps {
        let Some(mark) = &s.mark else { continue };
        let aimed = mark.target.as_deref().is_some_and(|t| matches_target(t, &p.name));
        let at = secs(s.started);
        if !aimed || at < secs(p.started) || at > end {
            continue;
        }
        match mark.kind {
            MarkKind::Pause => paused_at = paused_at.or(Some(at)),
            MarkKind::Resume => {
                if let Some(from) = paused_at.take() {
                    spans.push(Span { from, to: at, state: State::Paused });
                }
            }
            _ => {}
        }
    }
    if let Some(from) = paused_at {
        spans.push(Span { from, to: end, state: State::Paused });
    }
    spans.sort_by(|a, b| a.from.total_cmp(&b.from));
    // The harness kills whatever still runs after the last step (teardown): not a fault.
    let last_step = run.steps.iter().filter_map(|s| s.ended).max().map_or(f64::MAX, secs);
    let torn_down = p.killed.is_none() && p.exited.is_some_and(|e| secs(e) >= last_step);
    // A `power_loss` step kills every process while it runs.
    let cut = p.exited.is_some_and(|e| {
        run.steps.iter().any(|s| {
            s.mark.as_ref().is_some_and(|m| m.kind == MarkKind::PowerLoss)
                && s.started <= e
                && s.ended.is_none_or(|end| e <= end)
        })
    });
    let ending = match (p.exit_code, p.signal, p.killed) {
        (Some(0), _, _) if refused => String::from("exit 0 (refused)"),
        (Some(76), _, _) => String::from("exit 76 (fenced)"),
        (Some(c), _, _) => format!("exit {c}"),
        (None, Some(9), None) if cut => String::from("killed by the power loss"),
        (None, Some(9), None) if torn_down => String::from("killed at teardown"),
        (None, Some(9), _) | (None, None, Some(_)) => String::from("killed (SIGKILL)"),
        (None, Some(s), _) => format!("signal {s}"),
        (None, None, None) => String::from("still running"),
    };
    DaemonRow { proc: p, end, spans, notes, ending, highlighted: named.pids.contains(&p.pid), daemon_events }
}

fn run_bars(run: &Run<'_>, horizon: f64) -> BTreeMap<i64, Vec<RunBar>> {
    let h = run.history;
    let mut bars: Vec<RunBar> = Vec::new();
    for e in &h.effects {
        let at = mono_secs(h, e.mono_ns);
        let index = match bars.iter().position(|b| b.job_id == e.job_id && b.run == e.run && b.token == e.token) {
            Some(i) => i,
            None => {
                bars.push(RunBar {
                    job_id: e.job_id,
                    run: e.run,
                    attempt: e.attempt,
                    token: e.token.clone(),
                    start: None,
                    end: None,
                    drawn_to: horizon,
                    overlaps: Vec::new(),
                    grandchildren: Vec::new(),
                    outcome: Outcome::None,
                });
                bars.len() - 1
            }
        };
        let bar = &mut bars[index];
        match e.kind {
            EffectKind::Start => bar.start = Some(at),
            EffectKind::End => bar.end = Some(at),
            EffectKind::Overlap => bar.overlaps.push(at),
            EffectKind::GrandchildStart => bar.grandchildren.push((at, None)),
            EffectKind::GrandchildEnd => {
                if let Some(g) = bar.grandchildren.iter_mut().rev().find(|g| g.1.is_none()) {
                    g.1 = Some(at);
                }
            }
        }
    }
    for bar in &mut bars {
        bar.outcome = outcome_of(h, bar);
        let from = bar.start.or(bar.overlaps.first().copied()).unwrap_or(0.0);
        bar.drawn_to = match bar.end {
            Some(end) => end,
            None => killed_at(h, bar, from).unwrap_or(horizon),
        };
    }
    let mut by_job: BTreeMap<i64, Vec<RunBar>> = BTreeMap::new();
    for bar in bars {
        by_job.entry(bar.job_id).or_default().push(bar);
    }
    for runs in by_job.values_mut() {
        runs.sort_by(|a, b| a.start.unwrap_or(f64::MAX).total_cmp(&b.start.unwrap_or(f64::MAX)));
    }
    by_job
}

/// The recorded outcome of a run: its `job_runs` row (by claim token), or without a
/// database row the daemon's outcome event for the job and run.
fn outcome_of(h: &History, bar: &RunBar) -> Outcome {
    if let Some(row) = h.db.as_ref().and_then(|db| db.runs.iter().find(|r| r.claim_token == bar.token)) {
        return match row.outcome.as_deref() {
            Some("completed") => Outcome::Completed,
            Some("failed") => Outcome::Failed,
            Some("cancelled") => Outcome::Cancelled,
            _ => Outcome::None,
        };
    }
    let about =
        |e: &&Event| e.field_i64("job_id") == Some(bar.job_id) && e.field_i64("run").is_none_or(|r| r == bar.run);
    for e in h.events_in_order().into_iter().filter(about) {
        match e.name() {
            "job.completed" => return Outcome::Completed,
            "job.retry" | "job.failed" => return Outcome::Failed,
            "job.cancelled" => return Outcome::Cancelled,
            _ => {}
        }
    }
    Outcome::None
}

/// When a run the probe never saw end was stopped: the daemon's first word about the job
/// after the run began, a power cut, or the death of the daemon that claimed it.
fn killed_at(h: &History, bar: &RunBar, from: f64) -> Option<f64> {
    let about = |e: &&Event| e.field_i64("job_id") == Some(bar.job_id) && secs(e.at) >= from;
    let word = h
        .events_in_order()
        .into_iter()
        .filter(about)
        .find(|e| e.name() != "job.claimed" && e.name() != "job.started" && e.name() != "job.heartbeat")
        .map(|e| secs(e.at));
    let cut = h.power_cuts.iter().map(|c| secs(c.at)).find(|&at| at >= from);
    let claimer = h
        .events_in_order()
        .into_iter()
        .filter(|e| e.name() == "job.claimed" && e.field_i64("job_id") == Some(bar.job_id))
        .filter(|e| e.field_i64("run").is_none_or(|r| r == bar.run))
        .filter_map(|e| h.proc_of(e))
        .map(|p| p.killed.or(p.exited).map(secs))
        .next()
        .flatten()
        .filter(|&at| at >= from);
    [word, cut, claimer].into_iter().flatten().reduce(f64::min)
}

// ---------------------------------------------------------------------------------------
// The page

const WIDTH: f64 = 1360.0;
const LABEL_W: f64 = 220.0;
const PLOT_X0: f64 = LABEL_W + 10.0;
const PLOT_X1: f64 = WIDTH - 30.0;
const ROW_H: f64 = 26.0;
const BAR_H: f64 = 16.0;

const CSS: &str = r#"
body { font: 13px/1.35 -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif; margin: 14px 20px; color: #111827; background: #fff; }
h1 { font-size: 18px; margin: 0 0 4px; }
.meta { color: #4b5563; margin-bottom: 8px; }
.passed { color: #15803d; font-weight: bold; }
.failedrun { color: #b91c1c; font-weight: bold; }
.failure { border: 2px solid #dc2626; background: #fef2f2; padding: 6px 10px; margin: 6px 0 8px; max-width: 1320px; }
.failure div { margin: 2px 0; white-space: pre-wrap; word-break: break-word; }
.failure b { color: #991b1b; }
.violation { border-left: 4px solid #dc2626; padding-left: 6px; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 14px; margin: 4px 0 6px; color: #374151; font-size: 12px; }
.legend span { display: inline-flex; align-items: center; gap: 4px; }
.sw { display: inline-block; width: 18px; height: 10px; border: 1px solid #6b7280; }
svg text { font-family: inherit; }
.axis text { font-size: 11px; fill: #374151; }
.grid { stroke: #e5e7eb; }
.rowlabel { font-size: 12px; fill: #111827; }
.sub { font-size: 10px; fill: #6b7280; }
.alive { fill: #e5e7eb; }
.lock { fill: #2563eb; }
.drain { fill: #93c5fd; }
.standdown { fill: #f59e0b; }
.paused { fill: url(#hatch); }
.fenced { fill: #7c3aed; }
.halted { fill: #7f1d1d; }
.completed { fill: #16a34a; }
.failed { fill: #ea580c; }
.cancelled { fill: #a78bfa; }
.nooutcome { fill: #9ca3af; }
.open { stroke: #111827; stroke-dasharray: 3 2; stroke-width: 1.2; }
.grandchild { stroke: #0f766e; stroke-width: 2; }
.overlap { fill: #dc2626; }
.cli { fill: #64748b; }
.note { font-size: 10px; fill: #fff; font-weight: bold; stroke: #1f2937; stroke-width: 2.5px; paint-order: stroke; }
.notedark { font-size: 10px; fill: #111827; }
.ending { font-size: 10px; fill: #374151; }
.killx { stroke: #dc2626; stroke-width: 2.2; }
.step { stroke: #9ca3af; stroke-width: 1; }
.stepfailed { stroke: #dc2626; stroke-width: 3; }
.mark-kill { stroke: #dc2626; } .mark-kill-t { fill: #b91c1c; }
.mark-pause, .mark-resume { stroke: #6b7280; } .mark-pause-t, .mark-resume-t { fill: #374151; }
.mark-signal { stroke: #0891b2; } .mark-signal-t { fill: #0e7490; }
.mark-clock { stroke: #c026d3; } .mark-clock-t { fill: #a21caf; }
.mark-power { stroke: #111827; stroke-width: 3 !important; } .mark-power-t { fill: #111827; font-weight: bold; }
.mark-file { stroke: #d97706; } .mark-file-t { fill: #b45309; }
.mark-busy { stroke: #0d9488; } .mark-busy-t { fill: #0f766e; }
.mark-net { stroke: #65a30d; } .mark-net-t { fill: #4d7c0f; }
.markline { stroke-width: 1.5; stroke-dasharray: 5 3; }
.marklabel { font-size: 11px; }
.hl { fill: #fee2e2; stroke: #dc2626; stroke-width: 1.5; }
.hltext { fill: #b91c1c; font-weight: bold; }
table.steps { border-collapse: collapse; font-size: 12px; margin-top: 10px; }
table.steps td, table.steps th { border-bottom: 1px solid #e5e7eb; padding: 1px 8px; text-align: left; }
tr.failedstep td { color: #b91c1c; font-weight: bold; }
"#;

fn mark_class(kind: MarkKind) -> &'static str {
    match kind {
        MarkKind::Kill => "mark-kill",
        MarkKind::Pause => "mark-pause",
        MarkKind::Resume => "mark-resume",
        MarkKind::Signal => "mark-signal",
        MarkKind::Clock => "mark-clock",
        MarkKind::PowerLoss => "mark-power",
        MarkKind::File => "mark-file",
        MarkKind::Busy => "mark-busy",
        MarkKind::Network => "mark-net",
    }
}

/// A tick spacing that gives at most about 14 ticks.
fn tick_step(horizon: f64) -> f64 {
    const STEPS: [f64; 14] = [0.05, 0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0];
    STEPS.into_iter().find(|s| horizon / s <= 14.0).unwrap_or(600.0)
}

fn fmt_secs(t: f64, step: f64) -> String {
    if step < 0.1 {
        format!("{t:.2} s")
    } else if step < 1.0 {
        format!("{t:.1} s")
    } else {
        format!("{t:.0} s")
    }
}

/// Renders the page.
pub fn render(run: &Run<'_>) -> String {
    let h = run.history;
    let horizon = horizon(run);
    let scale = (PLOT_X1 - PLOT_X0) / horizon;
    let x = |t: f64| PLOT_X0 + t.clamp(0.0, horizon) * scale;

    let mut named = Named::default();
    for v in run.violations {
        let n = named_in(&v.message);
        named.jobs.extend(n.jobs);
        named.pids.extend(n.pids);
    }
    let daemons: Vec<DaemonRow<'_>> =
        h.procs.iter().filter(|p| p.kind == ProcKind::Daemon).map(|p| daemon_row(run, p, horizon, &named)).collect();
    let clis: Vec<&ProcRecord> = h.procs.iter().filter(|p| p.kind == ProcKind::Cli).collect();
    let jobs = run_bars(run, horizon);
    let marks: Vec<(&StepRecord, &Mark)> = run.steps.iter().filter_map(|s| s.mark.as_ref().map(|m| (s, m))).collect();

    // Fault labels stagger over up to four lines so that close ones do not collide; one
    // that would run off the right edge is written to the left of its line.
    let mut label_rows: Vec<(usize, f64)> = Vec::new();
    let mut ends: Vec<f64> = Vec::new();
    for (s, m) in &marks {
        let at = x(secs(s.started));
        let width = text_width(&m.label, 11.0);
        let from = if at + width > WIDTH { at - width } else { at };
        let row = ends.iter().position(|&e| e <= from).unwrap_or(ends.len().min(3));
        if row == ends.len() {
            ends.push(0.0);
        }
        ends[row] = from + width;
        label_rows.push((row, at));
    }
    let fault_band = 16.0 * ends.len().max(1) as f64 + 6.0;

    let axis_y = 18.0;
    let faults_y = axis_y + 8.0;
    let steps_y = faults_y + fault_band;
    let first_row_y = steps_y + 22.0;
    let rows = daemons.len() + usize::from(!clis.is_empty()) + jobs.len();
    let bottom = first_row_y + ROW_H * rows as f64 + 6.0;
    let height = bottom + 24.0;

    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0}" viewBox="0 0 {WIDTH} {height:.0}" role="img" aria-label="timeline">"#
    );
    svg.push_str(
        r##"<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="6" height="6" fill="#f3f4f6"/><line x1="0" y1="0" x2="0" y2="6" stroke="#4b5563" stroke-width="2.5"/></pattern></defs>"##,
    );

    // Axis and grid, top and bottom.
    let step = tick_step(horizon);
    let _ = write!(svg, r#"<g class="axis">"#);
    // Counted, not summed: 0.1 added up drifts off its labels.
    for i in 0..=((horizon / step + 1e-6).floor() as usize) {
        let t = i as f64 * step;
        let xt = x(t);
        let label = fmt_secs(t, step);
        let _ = write!(
            svg,
            r#"<line class="grid" x1="{xt:.1}" y1="{axis_y}" x2="{xt:.1}" y2="{bottom:.1}"/><text x="{xt:.1}" y="{ty:.1}" text-anchor="middle">{label}</text><text x="{xt:.1}" y="{by:.1}" text-anchor="middle">{label}</text>"#,
            ty = axis_y - 5.0,
            by = bottom + 14.0,
        );
    }
    let _ = write!(svg, r#"<text x="8" y="{ty}">seconds since start</text></g>"#, ty = axis_y - 5.0);

    // Row labels' column: faults and steps.
    let _ = write!(
        svg,
        r#"<text class="rowlabel" x="8" y="{:.1}">faults</text><text class="rowlabel" x="8" y="{:.1}">steps</text>"#,
        faults_y + 12.0,
        steps_y + 13.0
    );
    for s in run.steps {
        let xs = x(secs(s.started));
        let class = if s.failed { "stepfailed" } else { "step" };
        let _ = write!(
            svg,
            r#"<line class="{class}" x1="{xs:.1}" y1="{:.1}" x2="{xs:.1}" y2="{:.1}"><title>{}</title></line>"#,
            steps_y + 2.0,
            steps_y + 16.0,
            esc(&format!("step {} (line {}) at {:.3} s: {}", s.index, s.line, secs(s.started), s.summary)),
        );
        if s.failed {
            let label = format!("step {} failed", s.index);
            let (lx, anchor) = label_at(xs, &label, 11.0);
            let _ = write!(
                svg,
                r#"<text class="hltext" x="{lx:.1}" y="{:.1}" font-size="11" text-anchor="{anchor}">{label}</text>"#,
                steps_y + 13.0,
            );
        }
    }

    // Rows.
    let mut y = first_row_y;
    for d in &daemons {
        // A background `start` of another command (an `enqueue` loop) shares the kind; only
        // a process that spoke of the lock or its epoch is called a daemon.
        let what = if d.daemon_events { "daemon, pid" } else { "pid" };
        row_label(&mut svg, y, &d.proc.name, &format!("{what} {}", d.proc.pid), d.highlighted);
        let (x0, x1) = (x(secs(d.proc.started)), x(d.end));
        let by = y + (ROW_H - BAR_H) / 2.0;
        let _ = write!(
            svg,
            r#"<rect class="alive" x="{x0:.1}" y="{by:.1}" width="{:.1}" height="{BAR_H}"><title>{}</title></rect>"#,
            (x1 - x0).max(1.0),
            esc(&format!(
                "{} (pid {}): {:.3} s to {:.3} s, {}",
                d.proc.name,
                d.proc.pid,
                secs(d.proc.started),
                d.end,
                d.ending
            )),
        );
        for sp in &d.spans {
            let (sx0, sx1) = (x(sp.from), x(sp.to));
            let _ = write!(
                svg,
                r#"<rect class="{}" x="{sx0:.1}" y="{by:.1}" width="{:.1}" height="{BAR_H}"><title>{}</title></rect>"#,
                sp.state.class(),
                (sx1 - sx0).max(1.5),
                esc(&format!("{}: {:.3} s to {:.3} s", state_text(sp.state), sp.from, sp.to)),
            );
        }
        // Notes and the ending never overlap: each starts after the one before it.
        let mut cursor = f64::MIN;
        for (at, note) in &d.notes {
            let in_lock = d.spans.iter().any(|s| s.state == State::Lock && s.from <= *at + 1e-3 && *at <= s.to);
            let class = if in_lock { "note" } else { "notedark" };
            let nx = (x(*at) + 3.0).max(cursor);
            cursor = nx + text_width(note, 10.0) + 4.0;
            let _ = write!(svg, r#"<text class="{class}" x="{nx:.1}" y="{:.1}">{}</text>"#, by + 12.0, esc(note));
        }
        if let Some(k) = d.proc.killed {
            let kx = x(secs(k));
            let _ = write!(
                svg,
                r#"<line class="killx" x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}"/><line class="killx" x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}"/>"#,
                kx - 5.0,
                by - 1.0,
                kx + 5.0,
                by + BAR_H + 1.0,
                kx - 5.0,
                by + BAR_H + 1.0,
                kx + 5.0,
                by - 1.0,
            );
        }
        let (anchor, ex) =
            if x1.max(cursor) > PLOT_X1 - 110.0 { ("end", x1 - 4.0) } else { ("start", (x1 + 6.0).max(cursor)) };
        let ending_class = if anchor == "end" { "note" } else { "ending" };
        let _ = write!(
            svg,
            r#"<text class="{ending_class}" x="{ex:.1}" y="{:.1}" text-anchor="{anchor}">{}</text>"#,
            by + 12.0,
            esc(&d.ending)
        );
        y += ROW_H;
    }
    if !clis.is_empty() {
        let highlighted = clis.iter().any(|p| named.pids.contains(&p.pid));
        row_label(&mut svg, y, "CLI calls", &format!("{} process(es)", clis.len()), highlighted);
        for p in &clis {
            let (x0, x1) = (x(secs(p.started)), x(proc_end(p, horizon)));
            let end = match (p.exit_code, p.signal) {
                (Some(c), _) => format!("exit {c}"),
                (None, Some(s)) => format!("signal {s}"),
                (None, None) => String::from("still running"),
            };
            let _ = write!(
                svg,
                r#"<rect class="cli" x="{x0:.1}" y="{:.1}" width="{:.1}" height="10"><title>{}</title></rect>"#,
                y + 8.0,
                (x1 - x0).max(2.0),
                esc(&format!("{} (pid {}): {:.3} s, {end}", p.name, p.pid, secs(p.started))),
            );
        }
        y += ROW_H;
    }
    for (job, runs) in &jobs {
        let highlighted = named.jobs.contains(job);
        row_label(&mut svg, y, &format!("job {job}"), &format!("{} run(s)", runs.len()), highlighted);
        let by = y + (ROW_H - BAR_H) / 2.0;
        for r in runs {
            let from = r.start.or(r.overlaps.first().copied()).unwrap_or(0.0);
            let (x0, x1) = (x(from), x(r.drawn_to));
            let w = (x1 - x0).max(2.0);
            let tip = format!(
                "job {} run {} attempt {} (token {}): {:.3} s to {}, {}",
                r.job_id,
                r.run,
                r.attempt,
                r.token,
                from,
                r.end.map_or_else(
                    || format!("{:.3} s (no end recorded: stopped or killed)", r.drawn_to),
                    |e| format!("{e:.3} s")
                ),
                r.outcome.text()
            );
            if r.start.is_some() {
                let _ = write!(
                    svg,
                    r#"<rect class="{}" x="{x0:.1}" y="{by:.1}" width="{w:.1}" height="{BAR_H}" rx="2"><title>{}</title></rect>"#,
                    r.outcome.class(),
                    esc(&tip)
                );
                if r.end.is_none() {
                    let _ = write!(
                        svg,
                        r#"<line class="open" x1="{x1:.1}" y1="{:.1}" x2="{x1:.1}" y2="{:.1}"/>"#,
                        by - 2.0,
                        by + BAR_H + 2.0
                    );
                }
                if w > 46.0 {
                    let _ = write!(
                        svg,
                        r#"<text class="note" x="{:.1}" y="{:.1}">r{} a{}</text>"#,
                        x0 + 3.0,
                        by + 12.0,
                        r.run,
                        r.attempt
                    );
                }
            }
            for (gs, ge) in &r.grandchildren {
                // Without an end record the grandchild was killed, no later than anything
                // else we know of: drawn (dashed) to its run's end.
                let gy = by + BAR_H + 3.0;
                let (to, dash, when) = match ge {
                    Some(e) => (*e, "", format!("{e:.3} s")),
                    None => (r.drawn_to.max(*gs), r#" stroke-dasharray="4 3""#, String::from("no end recorded")),
                };
                let _ = write!(
                    svg,
                    r#"<line class="grandchild"{dash} x1="{:.1}" y1="{gy:.1}" x2="{:.1}" y2="{gy:.1}"><title>{}</title></line>"#,
                    x(*gs),
                    x(to).max(x(*gs) + 2.0),
                    esc(&format!("job {} run {}: its grandchild, {gs:.3} s to {when}", r.job_id, r.run))
                );
            }
            for o in &r.overlaps {
                let ox = x(*o);
                let _ = write!(
                    svg,
                    r#"<path class="overlap" d="M{:.1},{:.1} L{:.1},{:.1} L{:.1},{:.1} Z"><title>{}</title></path>"#,
                    ox,
                    by - 3.0,
                    ox - 6.0,
                    by + 9.0,
                    ox + 6.0,
                    by + 9.0,
                    esc(&format!("job {} run {} found another run alive (overlap) at {o:.3} s", r.job_id, r.run))
                );
            }
        }
        y += ROW_H;
    }

    // Fault markers last, over every row.
    for ((s, m), (row, at)) in marks.iter().zip(&label_rows) {
        let class = mark_class(m.kind);
        let ly = faults_y + 12.0 + 16.0 * *row as f64;
        let (lx, anchor) = label_at(*at, &m.label, 11.0);
        let _ = write!(
            svg,
            r#"<line class="markline {class}" x1="{at:.1}" y1="{ly:.1}" x2="{at:.1}" y2="{bottom:.1}"><title>{}</title></line><text class="marklabel {class}-t" x="{lx:.1}" y="{ly:.1}" text-anchor="{anchor}">{}</text>"#,
            esc(&format!("step {} (line {}) at {:.3} s: {}", s.index, s.line, secs(s.started), s.summary)),
            esc(&m.label),
        );
    }
    svg.push_str("</svg>");

    page(run, horizon, &svg)
}

/// Roughly how wide `text` is drawn at `size` px (labels only need to avoid each other).
fn text_width(text: &str, size: f64) -> f64 {
    0.6 * size * text.chars().count() as f64 + 6.0
}

/// Where a label beside the vertical line at `at` goes: to its right, or to its left when
/// it would run off the page.
fn label_at(at: f64, text: &str, size: f64) -> (f64, &'static str) {
    if at + text_width(text, size) > WIDTH {
        (at - 4.0, "end")
    } else {
        (at + 4.0, "start")
    }
}

fn state_text(s: State) -> &'static str {
    match s {
        State::Lock => "holds the lock",
        State::Draining => "draining (shutdown signal)",
        State::StandingDown => "standing down (database not writable)",
        State::Paused => "paused (SIGSTOP)",
        State::Fenced => "fenced (another daemon took the epoch)",
        State::Halted => "halted (corrupt database)",
    }
}

fn row_label(svg: &mut String, y: f64, name: &str, sub: &str, highlighted: bool) {
    if highlighted {
        let _ = write!(
            svg,
            r#"<rect class="hl" x="2" y="{:.1}" width="{:.1}" height="{:.1}" rx="3"/>"#,
            y + 1.0,
            WIDTH - 4.0,
            ROW_H - 2.0
        );
    }
    let class = if highlighted { "rowlabel hltext" } else { "rowlabel" };
    let flag = if highlighted { "\u{26a0} " } else { "" };
    let _ = write!(
        svg,
        r#"<text class="{class}" x="{:.1}" y="{:.1}">{flag}{}</text><text class="sub" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
        8.0,
        y + 17.0,
        esc(name),
        LABEL_W,
        y + 16.0,
        esc(sub)
    );
}

fn page(run: &Run<'_>, horizon: f64, svg: &str) -> String {
    let h = run.history;
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>timeline: {name}</title><style>{CSS}</style></head>
<body>
<h1>{name}</h1>
<div class="meta">"#,
        name = esc(run.name)
    );
    match &run.failure {
        None => out.push_str(r#"<span class="passed">passed</span>"#),
        Some(_) => out.push_str(r#"<span class="failedrun">FAILED</span>"#),
    }
    let daemons = h.procs.iter().filter(|p| p.kind == ProcKind::Daemon).count();
    let _ = writeln!(
        out,
        " &middot; {horizon:.2} s &middot; {daemons} daemon process(es), {} CLI call(s), {} job run(s) in the effects log, {} step(s), {} power cut(s)</div>",
        h.procs.len() - daemons,
        h.effects.iter().filter(|e| e.kind == EffectKind::Start).count(),
        run.steps.len(),
        h.power_cuts.len(),
    );
    if let Some(f) = &run.failure {
        let _ = write!(out, r#"<div class="failure"><div><b>failed:</b> {}</div>"#, esc(&f.what));
        if run.violations.is_empty() {
            let _ = write!(
                out,
                "<div><b>expected:</b> {}</div><div><b>actual:</b> {}</div>",
                esc(&f.expected),
                esc(&f.actual)
            );
        }
        for v in run.violations {
            let n = named_in(&v.message);
            let mut names: Vec<String> = n.jobs.iter().map(|j| format!("job {j}")).collect();
            // Only the harness's own processes have rows; a job's pid stays in the message.
            for pid in &n.pids {
                if let Some(p) = h.procs.iter().find(|p| p.pid == *pid) {
                    names.push(format!("{} (pid {pid})", p.name));
                }
            }
            let names = if names.is_empty() {
                String::new()
            } else {
                format!(" &mdash; highlighted: {}", esc(&names.join(", ")))
            };
            let _ = write!(
                out,
                r#"<div class="violation"><b>invariant {}</b>: {}{names}</div>"#,
                esc(v.checker),
                esc(&v.message)
            );
        }
        out.push_str("</div>\n");
    }
    out.push_str(LEGEND);
    out.push_str(svg);
    out.push_str("\n<table class=\"steps\"><tr><th>step</th><th>line</th><th>at</th><th>took</th><th>what</th></tr>\n");
    for s in run.steps {
        let took = s.ended.map_or_else(|| String::from("-"), |e| format!("{:.3} s", secs(e.saturating_sub(s.started))));
        let class = if s.failed { r#" class="failedstep""# } else { "" };
        let _ = writeln!(
            out,
            "<tr{class}><td>{}</td><td>{}</td><td>{:.3} s</td><td>{took}</td><td>{}{}</td></tr>",
            s.index,
            s.line,
            secs(s.started),
            esc(&s.summary),
            if s.failed { " (failed)" } else { "" }
        );
    }
    out.push_str("</table>\n</body></html>\n");
    out
}

const LEGEND: &str = r#"<div class="legend">
<span><i class="sw" style="background:#e5e7eb"></i>daemon alive</span>
<span><i class="sw" style="background:#2563eb"></i>holds the lock (epoch written on it)</span>
<span><i class="sw" style="background:#93c5fd"></i>draining</span>
<span><i class="sw" style="background:#f59e0b"></i>standing down</span>
<span><i class="sw" style="background:repeating-linear-gradient(45deg,#4b5563 0 2px,#f3f4f6 2px 5px)"></i>paused</span>
<span><i class="sw" style="background:#7c3aed"></i>fenced</span>
<span><i class="sw" style="background:#7f1d1d"></i>halted (corrupt)</span>
<span><b style="color:#dc2626">&#x2715;</b> SIGKILL sent</span>
<span>job run <i>rN aM</i> (run, attempt):</span>
<span><i class="sw" style="background:#16a34a"></i>completed</span>
<span><i class="sw" style="background:#ea580c"></i>failed attempt</span>
<span><i class="sw" style="background:#a78bfa"></i>cancelled</span>
<span><i class="sw" style="background:#9ca3af"></i>no outcome recorded</span>
<span><b>&#x254E;</b> no end recorded (killed)</span>
<span><b style="color:#0f766e">&#x2014;</b> grandchild</span>
<span><b style="color:#dc2626">&#x25B2;</b> overlap</span>
<span><b style="color:#dc2626">&#x26A0;</b> named by the failure</span>
<span>dashed lines: faults (kill -9, pause/resume, clock step, power loss, file, busy database, network: partition/heal/delay of a host)</span>
</div>
"#;
