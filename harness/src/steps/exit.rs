//! `exit`: wait for a process (or `count` of a group) to exit and check its code and output.

use std::time::{Duration, Instant};

use super::Verb;
use crate::exec::ctx::{check_patterns, exit_text, fail, matches_target, tail, Ctx, StepError};
use crate::scenario::kit::{Cx, Field, Pattern, Res, Tbl};

/// Wait for a background process to exit and check its code and output.
#[derive(Clone, Debug)]
pub struct ExpectExit {
    /// Process name or `name.*` (then `count` of the group must exit).
    pub target: String,
    pub count: Option<u32>,
    pub code: i32,
    pub stdout: Vec<Pattern>,
    pub stderr: Vec<Pattern>,
    pub timeout: Duration,
}

impl Verb for ExpectExit {
    const KEY: &'static str = "exit";
    const OPTIONS: &'static [&'static str] = &["count", "code", "stdout", "stderr", "timeout"];

    fn parse(cx: &mut Cx<'_>, t: &Tbl<'_>, v: &Field<'_>) -> Res<ExpectExit> {
        Self::only_its_options(cx, t)?;
        Ok(ExpectExit {
            target: cx.text(v)?,
            count: cx.opt(t, "count", |cx, f| cx.count(f, 1))?,
            code: cx.opt(t, "code", Cx::code)?.unwrap_or(0),
            stdout: cx.opt(t, "stdout", Cx::patterns)?.unwrap_or_default(),
            stderr: cx.opt(t, "stderr", Cx::patterns)?.unwrap_or_default(),
            timeout: cx.opt(t, "timeout", Cx::duration)?.unwrap_or(Duration::from_secs(10)),
        })
    }

    fn summary(&self) -> String {
        format!("exit of {}", self.target)
    }

    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        let deadline = ctx.deadline(self.timeout);
        let total = ctx.shared.lock().procs.iter().filter(|p| matches_target(&self.target, &p.name)).count();
        if total == 0 {
            return fail(format!("a process named {}", self.target), String::from("none was started"));
        }
        let want = self.count.map(|c| c as usize).unwrap_or(total);
        let done = ctx.shared.wait_for(deadline, |st| {
            let n = st.procs.iter().filter(|p| matches_target(&self.target, &p.name) && p.exited.is_some()).count();
            (n >= want).then_some(())
        });
        if done.is_none() {
            return fail(
                format!("{want} of {} to exit with {}", self.target, self.code),
                format!("still running after {:?}{}", ctx.scaled(self.timeout), ctx.exited_summary(&self.target)),
            );
        }
        // Output is complete at EOF; a descendant holding the pipe bounds this by a short wait.
        let eof_deadline = Instant::now() + ctx.scaled(Duration::from_secs(2));
        ctx.shared.wait_for(eof_deadline, |st| {
            st.procs
                .iter()
                .filter(|p| matches_target(&self.target, &p.name) && p.exited.is_some())
                .all(|p| p.stdout_closed && p.stderr_closed)
                .then_some(())
        });
        let st = ctx.shared.lock();
        for p in st.procs.iter().filter(|p| matches_target(&self.target, &p.name) && p.exited.is_some()) {
            if p.code != Some(self.code) {
                return fail(
                    format!("{} to exit with code {}", p.name, self.code),
                    format!("{}; stderr: {}", exit_text(p.code, p.signal), tail(&p.stderr, 5)),
                );
            }
            check_patterns(&p.name, "stdout", &p.stdout, &self.stdout)?;
            check_patterns(&p.name, "stderr", &p.stderr, &self.stderr)?;
        }
        Ok(())
    }
}
