//! `wait`: block until a condition holds (an event, an exit, rows, effects records), or
//! let a stale threshold elapse.

use std::time::{Duration, Instant};

use super::Verb;
use crate::exec::ctx::{describe_fields, event_matches, fail, matches_target, Ctx, StepError};
use crate::history::{Effect, EffectKind};
use crate::scenario::kit::{one_of, Cx, Field, Res, Scalar, Tbl};

/// Block until a condition holds, or fail at the deadline.
#[derive(Clone, Debug)]
pub struct Wait {
    pub until: WaitFor,
    /// Default 10 s, scaled.
    pub timeout: Duration,
}

#[derive(Clone, Debug)]
pub enum WaitFor {
    /// `wait = "event"`: `count` events named `event` (matching `fields`) from `target`
    /// (a process name, `name.*` for a group, or `*` for any).
    Event { target: String, event: String, fields: Vec<(String, Scalar)>, count: u32 },
    /// `wait = "exit"`: the process has exited (no code check; use `exit` for that).
    Exited { target: String },
    /// `wait = "sql"`: the query returns exactly `rows`.
    Sql { query: String, rows: Vec<Vec<Scalar>> },
    /// `wait = "effects"`: the effects log holds at least `starts` start records (and
    /// `ends` end records) for `job` (a `{job:N}` index, 1-based) or for any job. With
    /// `not_before` (needs `job`), no start record of the job may come earlier than that
    /// long after its enqueue was spawned (measured on the probe's monotonic clock, so a
    /// wall-clock step cannot hide an early start).
    Effects { job: Option<u32>, starts: u32, ends: u32, not_before: Option<Duration> },
    /// `wait = "duration"`: let time pass (only for letting a *stale threshold* elapse, never
    /// as synchronisation; the README says so).
    Elapsed { duration: Duration },
}

const WAIT_KINDS: &[&str] = &["event", "exit", "sql", "effects", "duration"];

impl Verb for Wait {
    const KEY: &'static str = "wait";
    const OPTIONS: &'static [&'static str] = &[
        "timeout",
        "target",
        "event",
        "fields",
        "count",
        "query",
        "rows",
        "job",
        "starts",
        "ends",
        "not_before",
        "duration",
    ];

    fn parse(cx: &mut Cx<'_>, t: &Tbl<'_>, v: &Field<'_>) -> Res<Wait> {
        let kind = match v.str() {
            Some(k) if WAIT_KINDS.contains(&k) => k,
            _ => return Err(cx.wrong(v, &format!("one of {}", one_of(WAIT_KINDS)))),
        };
        let opts: &[&str] = match kind {
            "event" => &["target", "event", "fields", "count"],
            "exit" => &["target"],
            "sql" => &["query", "rows"],
            "effects" => &["job", "starts", "ends", "not_before"],
            _ => &["duration"],
        };
        cx.only(t, &[&["wait", "timeout"], opts].concat(), &format!("`wait = \"{kind}\"`"))?;
        let need =
            |key: &str, what: &str| cx.need(t, key, &v.key_span, format!("`wait = \"{kind}\"` needs `{key}` ({what})"));
        let until = match kind {
            "event" => WaitFor::Event {
                target: cx.opt(t, "target", Cx::text)?.unwrap_or_else(|| String::from("*")),
                event: cx.text(&need("event", "the event name, e.g. \"lock.acquired\"")?)?,
                fields: cx.opt(t, "fields", Cx::scalar_map)?.unwrap_or_default(),
                count: cx.opt(t, "count", |cx, f| cx.count(f, 1))?.unwrap_or(1),
            },
            "exit" => WaitFor::Exited { target: cx.text(&need("target", "the process name")?)? },
            "sql" => WaitFor::Sql {
                query: cx.text(&need("query", "the SELECT to run")?)?,
                rows: cx.rows(&need("rows", "the expected rows, e.g. [[1]]")?)?,
            },
            "effects" => {
                let job = cx.opt(t, "job", |cx, f| cx.count(f, 1))?;
                let not_before = cx.opt(t, "not_before", Cx::duration)?;
                if let (Some(_), None, Some(f)) = (not_before, job, t.get("not_before")) {
                    return Err(cx.err(
                        &f.key_span,
                        f.path.clone(),
                        "`not_before` needs `job` (whose enqueue it counts from)",
                    ));
                }
                WaitFor::Effects {
                    job,
                    starts: cx.opt(t, "starts", |cx, f| cx.count(f, 0))?.unwrap_or(1),
                    ends: cx.opt(t, "ends", |cx, f| cx.count(f, 0))?.unwrap_or(0),
                    not_before,
                }
            }
            _ => WaitFor::Elapsed { duration: cx.duration(&need("duration", "how long, e.g. \"2s\"")?)? },
        };
        let timeout = cx.opt(t, "timeout", Cx::duration)?.unwrap_or(Duration::from_secs(10));
        Ok(Wait { until, timeout })
    }

    fn summary(&self) -> String {
        match &self.until {
            WaitFor::Event { target, event, .. } => format!("wait for {event} from {target}"),
            WaitFor::Exited { target } => format!("wait for {target} to exit"),
            WaitFor::Sql { query, .. } => format!("wait for `{query}`"),
            WaitFor::Effects { .. } => String::from("wait for effects"),
            WaitFor::Elapsed { duration } => format!("let {duration:?} pass"),
        }
    }

    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        let deadline = ctx.deadline(self.timeout);
        match &self.until {
            WaitFor::Event { target, event, fields, count } => {
                let got = ctx.shared.wait_for(deadline, |st| {
                    let n = st.events.iter().filter(|e| event_matches(e, target, event, fields)).count();
                    (n >= *count as usize).then_some(())
                });
                if got.is_none() {
                    let n = ctx.shared.lock().events.iter().filter(|e| event_matches(e, target, event, fields)).count();
                    let exited = ctx.exited_summary(target);
                    return fail(
                        format!("{count} `{event}` event(s){} from {target}", describe_fields(fields)),
                        format!("{n} within {:?}{exited}", ctx.scaled(self.timeout)),
                    );
                }
                Ok(())
            }
            WaitFor::Exited { target } => {
                let got = ctx.shared.wait_for(deadline, |st| {
                    let mut any = false;
                    for p in st.procs.iter().filter(|p| matches_target(target, &p.name)) {
                        any = true;
                        p.exited?;
                    }
                    any.then_some(())
                });
                if got.is_none() {
                    return fail(
                        format!("{target} to exit"),
                        format!("still running after {:?}", ctx.scaled(self.timeout)),
                    );
                }
                Ok(())
            }
            WaitFor::Sql { query, rows } => {
                let query = &ctx.subst(query)?;
                let mut last = Vec::new();
                loop {
                    match ctx.query(query) {
                        Ok(r) if &r == rows => return Ok(()),
                        Ok(r) => last = r,
                        Err(_) if ctx.database_absent() => {}
                        Err(e) => return Err(e),
                    }
                    if Instant::now() >= deadline {
                        return fail(
                            format!("{query} -> {rows:?}"),
                            format!("{last:?} after {:?}", ctx.scaled(self.timeout)),
                        );
                    }
                    ctx.shared.wait_for(Instant::now() + Duration::from_millis(20), |_| None::<()>);
                }
            }
            WaitFor::Effects { job, starts, ends, not_before } => {
                let job_id = match job {
                    Some(n) => Some(ctx.job_id(*n)?),
                    None => None,
                };
                // The earliest start allowed, on the probe's clock (not scaled: it mirrors a
                // `run_after` string, which is passed to homerd as written).
                let earliest = match (job, not_before) {
                    (Some(n), Some(d)) => Some((ctx.acked_at[*n as usize - 1], *d)),
                    _ => None,
                };
                let counts;
                loop {
                    let effects =
                        ctx.effects().map_err(|e| StepError { expected: String::from("an effects log"), actual: e })?;
                    let of_job = |e: &&Effect| job_id.is_none_or(|id| e.job_id == id);
                    let s = effects.iter().filter(of_job).filter(|e| matches!(e.kind, EffectKind::Start)).count();
                    let n = effects.iter().filter(of_job).filter(|e| matches!(e.kind, EffectKind::End)).count();
                    if let Some((enqueued_ns, d)) = earliest {
                        let limit = enqueued_ns.saturating_add(d.as_nanos() as u64);
                        let early = effects
                            .iter()
                            .filter(of_job)
                            .find(|e| matches!(e.kind, EffectKind::Start) && e.mono_ns < limit);
                        if let Some(e) = early {
                            let after = Duration::from_nanos(e.mono_ns.saturating_sub(enqueued_ns));
                            return fail(
                                format!("no start of job {} earlier than {d:?} after its enqueue", job_id.unwrap_or(0)),
                                format!("run {} started {after:?} after its enqueue was spawned", e.run),
                            );
                        }
                    }
                    if s >= *starts as usize && n >= *ends as usize {
                        return Ok(());
                    }
                    if Instant::now() >= deadline {
                        counts = (s, n);
                        break;
                    }
                    ctx.shared.wait_for(Instant::now() + Duration::from_millis(20), |_| None::<()>);
                }
                fail(
                    format!("{starts} start and {ends} end record(s) in the effects log"),
                    format!("{} start, {} end after {:?}", counts.0, counts.1, ctx.scaled(self.timeout)),
                )
            }
            WaitFor::Elapsed { duration } => {
                // Letting a threshold elapse is the point of this step (see scenarios/README.md).
                #[allow(clippy::disallowed_methods)]
                std::thread::sleep(ctx.scaled(*duration));
                Ok(())
            }
        }
    }
}
