//! `cli`: run a `homerd` subcommand to completion and check its code and output.

use std::time::Duration;

use super::Verb;
use crate::exec::ctx::{armed_env, check_patterns, fail, tail, Ctx, StepError};
use crate::history::ProcKind;
use crate::scenario::kit::{Cx, Field, Pattern, Res, Tbl};

/// Run a `homerd` subcommand to completion and check it.
#[derive(Clone, Debug)]
pub struct Cli {
    /// Arguments after `homerd` (placeholders allowed).
    pub args: Vec<String>,
    pub code: i32,
    pub stdout: Vec<Pattern>,
    pub stderr: Vec<Pattern>,
    pub unprivileged: bool,
    pub env: Vec<(String, String)>,
    pub no_settings: bool,
    pub timeout: Duration,
    /// The process cuts power before its N-th recorded op and must die there (no `code`).
    pub arm: Option<u64>,
}

impl Verb for Cli {
    const KEY: &'static str = "cli";
    const OPTIONS: &'static [&'static str] =
        &["code", "stdout", "stderr", "unprivileged", "env", "no_settings", "timeout", "arm"];

    fn parse(cx: &mut Cx<'_>, t: &Tbl<'_>, v: &Field<'_>) -> Res<Cli> {
        Self::only_its_options(cx, t)?;
        let arm = cx.arm(t)?;
        if let (Some(_), Some(f)) = (arm, t.get("code")) {
            return Err(cx.err(
                &f.key_span,
                f.path.clone(),
                "an armed `cli` must die at its cut: it has no exit code to expect (drop `code`)",
            ));
        }
        Ok(Cli {
            args: cx.nonempty_strings(v)?,
            code: cx.opt(t, "code", Cx::code)?.unwrap_or(0),
            stdout: cx.opt(t, "stdout", Cx::patterns)?.unwrap_or_default(),
            stderr: cx.opt(t, "stderr", Cx::patterns)?.unwrap_or_default(),
            unprivileged: cx.unprivileged(t)?,
            env: cx.opt(t, "env", Cx::str_map)?.unwrap_or_default(),
            no_settings: cx.opt(t, "no_settings", Cx::boolean)?.unwrap_or(false),
            timeout: cx.opt(t, "timeout", Cx::duration)?.unwrap_or(Duration::from_secs(30)),
            arm,
        })
    }

    fn summary(&self) -> String {
        format!("homerd {}", self.args.join(" "))
    }

    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        run(ctx, self).map(|_| ())
    }
}

/// Run `c` and check it; returns its stdout and stderr (for `snapshot`).
pub(crate) fn run(ctx: &mut Ctx, c: &Cli) -> Result<(Vec<u8>, Vec<u8>), StepError> {
    let mut args = Vec::new();
    for a in &c.args {
        args.push(ctx.subst(a)?);
    }
    let mut env = Vec::new();
    for (k, v) in &c.env {
        env.push((k.clone(), ctx.subst(v)?));
    }
    env.extend(armed_env(c.arm));
    ctx.cli_count += 1;
    let name = format!("cli#{}", ctx.cli_count);
    let cmd = ctx.homerd(&args, !c.no_settings, &env, c.unprivileged);
    ctx.spawn(name.clone(), ProcKind::Cli, cmd)?;
    let (code, out, err) = ctx.wait_cli(&name, c.timeout)?;
    if let Some(arm) = c.arm {
        ctx.expect_cut(&name, arm)?;
    } else if code != Some(c.code) {
        return fail(
            format!("`homerd {}` to exit {}", args.join(" "), c.code),
            format!("{code:?}; stdout: {} stderr: {}", tail(&out, 5), tail(&err, 5)),
        );
    }
    check_patterns(&name, "stdout", &out, &c.stdout)?;
    check_patterns(&name, "stderr", &err, &c.stderr)?;
    Ok((out, err))
}
