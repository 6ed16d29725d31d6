//! `check`: run the invariant checkers now.

use super::Verb;
use crate::check::CheckOptions;
use crate::exec::ctx::{Ctx, StepError};
use crate::scenario::kit::{one_of, Cx, Field, Res, Tbl};

/// Run the invariant checkers now.
#[derive(Clone, Debug, Default)]
pub struct Check {
    /// Non-terminal statuses an acknowledged job may still be in (default none).
    pub allow: Vec<String>,
    /// Require no `running` row (a recovery ran after the last daemon stopped). Default true
    /// unless `allow` contains `running`.
    pub none_running: bool,
}

const CHECK_ALLOW: &[&str] = &["pending", "running"];

impl Verb for Check {
    const KEY: &'static str = "check";
    const OPTIONS: &'static [&'static str] = &["allow", "none_running"];

    fn parse(cx: &mut Cx<'_>, t: &Tbl<'_>, v: &Field<'_>) -> Res<Check> {
        if v.str() != Some("invariants") {
            return Err(cx.wrong(v, "\"invariants\""));
        }
        Self::only_its_options(cx, t)?;
        let mut allow = Vec::new();
        if let Some(f) = t.get("allow") {
            for (i, node) in cx.array(&f, "an array of statuses like [\"pending\"]")?.iter().enumerate() {
                let item = f.item(i, node);
                match item.str() {
                    Some(s) if CHECK_ALLOW.contains(&s) => allow.push(s.to_owned()),
                    _ => return Err(cx.wrong(&item, &format!("one of {}", one_of(CHECK_ALLOW)))),
                }
            }
        }
        let allows_running = allow.iter().any(|s| s == "running");
        let none_running = match t.get("none_running") {
            Some(f) => {
                let on = cx.boolean(&f)?;
                if on && allows_running {
                    return Err(cx.err(
                        &f.key_span,
                        f.path.clone(),
                        "`none_running = true` contradicts `allow` containing \"running\"",
                    ));
                }
                on
            }
            None => !allows_running,
        };
        Ok(Check { allow, none_running })
    }

    fn summary(&self) -> String {
        String::from("check invariants")
    }

    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        let opts = CheckOptions { allow_statuses: self.allow.clone(), none_running: self.none_running };
        ctx.check(&opts, true)
    }
}
