//! `enqueue`: `homerd enqueue`, its acknowledged ids remembered for the invariants and
//! `{job:N}`; `probe` jobs run the effects probe.

use std::time::Duration;

use super::Verb;
use crate::exec::ctx::{armed_env, fail, tail, Ctx, StepError};
use crate::history::ProcKind;
use crate::scenario::kit::{one_of, Cx, Field, Res, Tbl};

/// `homerd enqueue` (acknowledged ids are remembered for the invariants and `{job:N}`).
#[derive(Clone, Debug)]
pub struct Enqueue {
    /// `noop`, `sleep`, `fail`, `exec`, `crash` or `probe` (an `exec` of the effects probe).
    pub kind: String,
    pub args: Vec<String>,
    pub probe: ProbeSpec,
    pub lane: Option<String>,
    pub max_attempts: Option<u32>,
    pub key: Option<String>,
    pub timeout: Option<String>,
    /// How many jobs; with `parallel = true` each from its own concurrent process.
    pub count: u32,
    pub parallel: bool,
    /// Expected exit code of each enqueue (default 0; non-zero ones are not acknowledged).
    pub code: i32,
    /// `--run-after`, passed as-is (not scaled).
    pub run_after: Option<String>,
    /// All `count` jobs through one `homerd enqueue --from FILE` (a JSON-lines file the
    /// harness writes into the sandbox): one process, one transaction.
    pub from_file: bool,
    /// The enqueue process cuts power before its N-th recorded op; it must die there,
    /// acknowledging nothing (needs the `power_loss` header; one process: no `parallel`,
    /// `count = 1` unless `from_file`, no `code`).
    pub arm: Option<u64>,
}

/// Options of the effects probe (see `probe.rs`).
#[derive(Clone, Debug, Default)]
pub struct ProbeSpec {
    /// How long the probe works before it records `end` (default 0).
    pub sleep: Duration,
    /// Fork a grandchild in the same group that outlives the probe by this long.
    pub grandchild: Option<Duration>,
    /// The grandchild calls setsid() to escape the group (failure mode 4).
    pub grandchild_setsid: bool,
    pub exit_code: i32,
    pub ignore_term: bool,
}

const ENQUEUE_KINDS: &[&str] = &["noop", "sleep", "fail", "exec", "crash", "probe"];
const PROBE_OPTS: &[&str] = &["sleep", "grandchild", "grandchild_setsid", "exit_code", "ignore_term"];

impl Verb for Enqueue {
    const KEY: &'static str = "enqueue";
    const OPTIONS: &'static [&'static str] = &[
        "args",
        "lane",
        "max_attempts",
        "key",
        "timeout",
        "count",
        "parallel",
        "code",
        "run_after",
        "from_file",
        "sleep",
        "grandchild",
        "grandchild_setsid",
        "exit_code",
        "ignore_term",
        "arm",
    ];

    fn parse(cx: &mut Cx<'_>, t: &Tbl<'_>, v: &Field<'_>) -> Res<Enqueue> {
        let kind = match v.str() {
            Some(k) if ENQUEUE_KINDS.contains(&k) => k.to_owned(),
            _ => return Err(cx.wrong(v, &format!("a job kind, one of {}", one_of(ENQUEUE_KINDS)))),
        };
        Self::only_its_options(cx, t)?;
        if kind != "probe" {
            if let Some(e) = t.sorted().into_iter().find(|e| PROBE_OPTS.contains(&e.key.as_str())) {
                return Err(cx.err(
                    &e.span,
                    t.key_path(&e.key),
                    format!("`{}` applies only to `enqueue = \"probe\"`, found `enqueue = \"{kind}\"`", e.key),
                ));
            }
        }
        let grandchild = cx.opt(t, "grandchild", Cx::duration)?;
        let grandchild_setsid = cx.opt(t, "grandchild_setsid", Cx::boolean)?.unwrap_or(false);
        if grandchild_setsid && grandchild.is_none() {
            let f = t.get("grandchild_setsid");
            return Err(cx.err(
                &f.and_then(|f| f.key_span),
                t.key_path("grandchild_setsid"),
                "`grandchild_setsid = true` needs `grandchild` (how long the grandchild outlives the probe)",
            ));
        }
        let parallel = cx.opt(t, "parallel", Cx::boolean)?.unwrap_or(false);
        let from_file = cx.opt(t, "from_file", Cx::boolean)?.unwrap_or(false);
        if let (true, true, Some(f)) = (parallel, from_file, t.get("from_file")) {
            return Err(cx.err(
                &f.key_span,
                f.path.clone(),
                "give `parallel` (one process per job) or `from_file` (one process for all), not both",
            ));
        }
        let arm = cx.arm(t)?;
        if arm.is_some() {
            // An armed enqueue is one process that dies at its cut: nothing to run in
            // parallel, no exit code to expect.
            let count = cx.opt(t, "count", |cx, f| cx.count(f, 1))?.unwrap_or(1);
            let clash = if parallel {
                t.get("parallel")
            } else if let Some(f) = t.get("code") {
                Some(f)
            } else if count > 1 && !from_file {
                t.get("count")
            } else {
                None
            };
            if let Some(f) = clash {
                return Err(cx.err(
                    &f.key_span,
                    f.path.clone(),
                    "an armed enqueue is one process that must die at its cut: no `parallel`, no `code`, and `count = 1` unless `from_file = true`",
                ));
            }
        }
        let probe = ProbeSpec {
            sleep: cx.opt(t, "sleep", Cx::duration)?.unwrap_or_default(),
            grandchild,
            grandchild_setsid,
            exit_code: cx.opt(t, "exit_code", Cx::code)?.unwrap_or(0),
            ignore_term: cx.opt(t, "ignore_term", Cx::boolean)?.unwrap_or(false),
        };
        Ok(Enqueue {
            kind,
            args: cx.opt(t, "args", Cx::strings)?.unwrap_or_default(),
            probe,
            lane: cx.opt(t, "lane", Cx::text)?,
            max_attempts: cx.opt(t, "max_attempts", |cx, f| cx.count(f, 1))?,
            key: cx.opt(t, "key", Cx::text)?,
            timeout: cx.opt(t, "timeout", Cx::text)?,
            count: cx.opt(t, "count", |cx, f| cx.count(f, 1))?.unwrap_or(1),
            parallel,
            code: cx.opt(t, "code", Cx::code)?.unwrap_or(0),
            run_after: cx.opt(t, "run_after", Cx::text)?,
            from_file,
            arm,
        })
    }

    fn summary(&self) -> String {
        format!("enqueue {}", self.kind)
    }

    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        let mut args =
            vec![String::from("enqueue"), if self.kind == "probe" { String::from("exec") } else { self.kind.clone() }];
        if let Some(l) = &self.lane {
            args.extend([String::from("--lane"), l.clone()]);
        }
        if let Some(m) = self.max_attempts {
            args.extend([String::from("--max-attempts"), m.to_string()]);
        }
        if let Some(k) = &self.key {
            args.extend([String::from("--key"), ctx.subst(k)?]);
        }
        if let Some(t) = &self.timeout {
            args.extend([String::from("--timeout"), t.clone()]);
        }
        if let Some(r) = &self.run_after {
            args.extend([String::from("--run-after"), r.clone()]);
        }
        let job_args: Vec<String> = if self.kind == "probe" {
            ctx.probe_argv(&self.probe)
        } else {
            self.args.iter().map(|a| ctx.subst(a)).collect::<Result<_, _>>()?
        };
        if self.from_file {
            return from_file(ctx, self, &job_args);
        }
        if matches!(self.kind.as_str(), "probe" | "exec") {
            args.push(String::from("--"));
        }
        args.extend(job_args);
        let batch = if self.parallel { self.count.max(1) as usize } else { 1 };
        let mut remaining = self.count.max(1) as usize;
        while remaining > 0 {
            let n = batch.min(remaining);
            let mut pids = Vec::new();
            for _ in 0..n {
                ctx.cli_count += 1;
                let name = format!("enqueue#{}", ctx.cli_count);
                let cmd = ctx.homerd(&args, true, &armed_env(self.arm), false);
                let spawned_at = crate::probe::mono_ns();
                pids.push((name.clone(), ctx.spawn(name, ProcKind::Cli, cmd)?, spawned_at));
            }
            for (name, _, spawned_at) in pids {
                let (code, out, err) = ctx.wait_cli(&name, Duration::from_secs(30))?;
                if let Some(arm) = self.arm {
                    // Cut before its commit was acknowledged: nothing to remember.
                    ctx.expect_cut(&name, arm)?;
                    continue;
                }
                if code != Some(self.code) {
                    return fail(
                        format!("{name} ({}) to exit {}", args.join(" "), self.code),
                        format!("{code:?}: {}", String::from_utf8_lossy(&err).trim()),
                    );
                }
                if code == Some(0) {
                    match String::from_utf8_lossy(&out).trim().parse::<i64>() {
                        Ok(id) => {
                            ctx.acked.push(id);
                            ctx.acked_at.push(spawned_at);
                        }
                        Err(_) => {
                            return fail("an enqueue to print the job id", String::from_utf8_lossy(&out).into_owned())
                        }
                    }
                }
            }
            remaining -= n;
        }
        Ok(())
    }
}

/// `from_file = true`: every job of the step as one line of a JSON-lines file, through
/// one `homerd enqueue --from FILE` (one process, one transaction).
fn from_file(ctx: &mut Ctx, e: &Enqueue, job_args: &[String]) -> Result<(), StepError> {
    let kind = if e.kind == "probe" { "exec" } else { e.kind.as_str() };
    let mut line = serde_json::json!({ "kind": kind, "args": job_args });
    let fields = [
        ("lane", e.lane.clone().map(serde_json::Value::from)),
        ("max_attempts", e.max_attempts.map(serde_json::Value::from)),
        ("key", e.key.as_deref().map(|k| ctx.subst(k)).transpose()?.map(serde_json::Value::from)),
        ("timeout", e.timeout.clone().map(serde_json::Value::from)),
        ("run_after", e.run_after.clone().map(serde_json::Value::from)),
    ];
    for (k, v) in fields {
        if let Some(v) = v {
            line[k] = v;
        }
    }
    let count = e.count.max(1) as usize;
    let mut text = format!("{line}\n").repeat(count);
    text.shrink_to_fit();
    ctx.cli_count += 1;
    let name = format!("enqueue#{}", ctx.cli_count);
    let file = ctx.sandbox.join(format!("{name}.jsonl").replace('#', "-"));
    std::fs::write(&file, text)
        .map_err(|err| StepError { expected: format!("to write {}", file.display()), actual: err.to_string() })?;
    let args = vec![String::from("enqueue"), String::from("--from"), file.to_string_lossy().into_owned()];
    let cmd = ctx.homerd(&args, true, &armed_env(e.arm), false);
    let spawned_at = crate::probe::mono_ns();
    ctx.spawn(name.clone(), ProcKind::Cli, cmd)?;
    let (code, out, err) = ctx.wait_cli(&name, Duration::from_secs(60))?;
    if let Some(arm) = e.arm {
        return ctx.expect_cut(&name, arm);
    }
    if code != Some(e.code) {
        return fail(
            format!("{name} (enqueue --from with {count} jobs) to exit {}", e.code),
            format!("{code:?}: {}", tail(&err, 5)),
        );
    }
    if code != Some(0) {
        return Ok(());
    }
    let ids: Vec<i64> = String::from_utf8_lossy(&out).lines().filter_map(|l| l.trim().parse().ok()).collect();
    if ids.len() != count {
        return fail(format!("{count} job ids from {name}"), format!("{}: {}", ids.len(), tail(&out, 3)));
    }
    ctx.acked_at.extend(std::iter::repeat_n(spawned_at, ids.len()));
    ctx.acked.extend(ids);
    Ok(())
}
