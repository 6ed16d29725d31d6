//! `expect_events`: assert on the events recorded so far (no waiting).

use super::Verb;
use crate::exec::ctx::{describe_fields, event_matches, fail, Ctx, StepError};
use crate::scenario::kit::{Cx, Field, Res, Scalar, Tbl};

/// Assert on the events recorded so far (no waiting).
#[derive(Clone, Debug)]
pub struct ExpectEvents {
    pub target: String,
    pub event: String,
    pub fields: Vec<(String, Scalar)>,
    pub min: u32,
    pub max: Option<u32>,
}

impl Verb for ExpectEvents {
    const KEY: &'static str = "expect_events";
    const OPTIONS: &'static [&'static str] = &["target", "fields", "min", "max"];

    fn parse(cx: &mut Cx<'_>, t: &Tbl<'_>, v: &Field<'_>) -> Res<ExpectEvents> {
        Self::only_its_options(cx, t)?;
        let max = cx.opt(t, "max", |cx, f| cx.count(f, 0))?;
        // `max = 0` alone asserts "none": the default `min` of 1 gives way.
        let min = cx.opt(t, "min", |cx, f| cx.count(f, 0))?.unwrap_or(max.map_or(1, |max| max.min(1)));
        if let (Some(max), Some(f)) = (max, t.get("max")) {
            if max < min {
                return Err(cx.wrong(&f, &format!("an integer of at least `min` ({min})")));
            }
        }
        Ok(ExpectEvents {
            target: cx.opt(t, "target", Cx::text)?.unwrap_or_else(|| String::from("*")),
            event: cx.text(v)?,
            fields: cx.opt(t, "fields", Cx::scalar_map)?.unwrap_or_default(),
            min,
            max,
        })
    }

    fn summary(&self) -> String {
        format!("expect {} events", self.event)
    }

    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        let n = ctx
            .shared
            .lock()
            .events
            .iter()
            .filter(|ev| event_matches(ev, &self.target, &self.event, &self.fields))
            .count();
        let max_ok = self.max.is_none_or(|m| n <= m as usize);
        if n < self.min as usize || !max_ok {
            let range = match self.max {
                Some(m) if m == self.min => format!("exactly {m}"),
                Some(m) => format!("{}..={m}", self.min),
                None => format!("at least {}", self.min),
            };
            return fail(
                format!("{range} `{}` event(s){} from {}", self.event, describe_fields(&self.fields), self.target),
                format!("{n}"),
            );
        }
        Ok(())
    }
}
