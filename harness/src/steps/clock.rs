//! `clock`: step every daemon's wall clock (through `HOMERD_CLOCK_OFFSET_FILE`).

use super::{Mark, MarkKind, Verb};
use crate::exec::ctx::{Ctx, StepError};
use crate::scenario::kit::{Cx, Field, Res, Tbl};

/// Step every daemon's wall clock by signed milliseconds.
#[derive(Clone, Debug)]
pub struct Clock {
    pub step_ms: i64,
}

impl Verb for Clock {
    const KEY: &'static str = "clock";
    const OPTIONS: &'static [&'static str] = &[];

    fn parse(cx: &mut Cx<'_>, t: &Tbl<'_>, v: &Field<'_>) -> Res<Clock> {
        Self::only_its_options(cx, t)?;
        Ok(Clock { step_ms: cx.signed_ms(v)? })
    }

    fn summary(&self) -> String {
        format!("step the clock by {} ms", self.step_ms)
    }

    fn mark(&self) -> Option<Mark> {
        let secs = self.step_ms as f64 / 1000.0;
        let label = match secs.abs() {
            s if s < 120.0 => format!("clock {secs:+.1} s"),
            s if s < 7200.0 => format!("clock {:+.1} min", secs / 60.0),
            _ => format!("clock {:+.1} h", secs / 3600.0),
        };
        Some(Mark { kind: MarkKind::Clock, label, target: None })
    }

    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        let step_ms = self.step_ms;
        let path = ctx.clock_file();
        let now: i64 = std::fs::read_to_string(&path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        let tmp = path.with_extension("tmp");
        let io = |e: std::io::Error| StepError {
            expected: String::from("to write the clock offset file"),
            actual: e.to_string(),
        };
        std::fs::write(&tmp, (now + step_ms).to_string()).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }
}
