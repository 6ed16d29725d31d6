//! `power_loss = "cut"`: the power fails — every process dies at once and every write no
//! fsync covered is dropped.

use std::path::Path;
use std::time::Duration;

use super::{Mark, MarkKind, Verb};
use crate::check::CheckOptions;
use crate::exec::ctx::{fail, Ctx, StepError};
use crate::history::PowerCut;
use crate::procs;
use crate::scenario::kit::{Cx, Field, Res, Tbl};

/// `power_loss = "cut"`: SIGKILL every process of the scenario at once, wait until all
/// are gone, then drop every write no fsync covered (the scenario's power-loss log).
#[derive(Clone, Debug)]
pub struct PowerLoss {
    /// How long every process may take to die (default 10 s, scaled).
    pub timeout: Duration,
}

impl Verb for PowerLoss {
    const KEY: &'static str = "power_loss";
    const OPTIONS: &'static [&'static str] = &["timeout"];

    /// `power_loss = "cut"`: the only value; needs the header that makes processes record.
    fn parse(cx: &mut Cx<'_>, t: &Tbl<'_>, v: &Field<'_>) -> Res<PowerLoss> {
        if v.str() != Some("cut") {
            return Err(cx.wrong(v, "\"cut\" (the header takes `power_loss = true`)"));
        }
        Self::only_its_options(cx, t)?;
        if !cx.power_loss {
            return Err(cx.err(
                &v.key_span,
                v.path.clone(),
                "a `power_loss` step needs `power_loss = true` in the scenario header (so every homerd process records its writes)",
            ));
        }
        Ok(PowerLoss { timeout: cx.opt(t, "timeout", Cx::duration)?.unwrap_or(Duration::from_secs(10)) })
    }

    fn summary(&self) -> String {
        String::from("power loss")
    }

    fn mark(&self) -> Option<Mark> {
        Some(Mark { kind: MarkKind::PowerLoss, label: String::from("power loss"), target: None })
    }

    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        ctx.end_holds();
        ctx.register_job_groups();
        let survivors = procs::kill_marked(&ctx.marker, ctx.scaled(self.timeout));
        if !survivors.is_empty() {
            return fail(
                format!("every process of the scenario dead within {:?} of SIGKILL", ctx.scaled(self.timeout)),
                format!("still alive: {survivors:?}"),
            );
        }
        // The checkers end a process's lock hold at its observed exit: observe them all
        // before anything new starts.
        let deadline = ctx.deadline(self.timeout);
        let observed = ctx.shared.wait_for(deadline, |st| st.procs.iter().all(|p| p.exited.is_some()).then_some(()));
        if observed.is_none() {
            let left: Vec<String> =
                ctx.shared.lock().procs.iter().filter(|p| p.exited.is_none()).map(|p| p.name.clone()).collect();
            return fail("every killed process's exit observed", format!("not yet: {}", left.join(", ")));
        }
        let log = ctx.power_log_path();
        let label = log.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let note = if log.exists() {
            let report = crate::powerloss::apply_power_loss(&log).map_err(|e| StepError {
                expected: format!("to apply the power loss of {}", log.display()),
                actual: e,
            })?;
            describe_power_loss(&label, &report)
        } else {
            format!("{label}: nothing was recorded, nothing to revert")
        };
        let last_seq = ctx.shared.lock().seq;
        ctx.power_cuts.push(PowerCut { at: ctx.shared.start.elapsed(), mono_ns: crate::probe::mono_ns(), last_seq });
        ctx.power_log += 1;
        ctx.note(note);
        // What the power left must hold every invariant — now, before a later enqueue can
        // take the id of an acknowledged job the power loss dropped (SQLite hands out
        // the highest rowid + 1 again) and hide the loss from `nothing_lost`.
        let opts = CheckOptions {
            allow_statuses: vec![String::from("pending"), String::from("running")],
            none_running: false,
        };
        ctx.check(&opts, false).map_err(|e| StepError {
            expected: format!("every invariant to hold on what the power loss left: {}", e.expected),
            actual: e.actual,
        })
    }
}

/// What a power loss reverted, on one line (the step log has one line per step).
fn describe_power_loss(label: &str, r: &crate::powerloss::PowerLossReport) -> String {
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let bytes: u64 = r.files.iter().map(|f| f.bytes_reverted).sum();
    let kept: usize = r.files.iter().map(|f| f.ops_kept).sum();
    let mut parts = vec![format!(
        "{label}: reverted {} op(s), {bytes} byte(s) in {} file(s) ({kept} synced op(s) kept)",
        r.ops_reverted(),
        r.files.len()
    )];
    for f in &r.files {
        parts.push(format!(
            "{}: {} op(s), {} byte(s), size {} -> {}",
            name(&f.path),
            f.ops_reverted,
            f.bytes_reverted,
            f.size_was,
            f.size_now
        ));
    }
    for (path, n) in &r.skipped {
        parts.push(format!("{}: gone, {n} un-synced op(s) skipped", name(path)));
    }
    for c in &r.cuts {
        parts.push(format!("pid {} cut power before its op {} (phase {})", c.pid, c.op, c.phase));
    }
    parts.push(format!("{} record(s), {} torn", r.records, r.torn));
    parts.join("; ")
}
