//! `start`: start daemons (or a background `homerd` subcommand) and keep them running.

use std::process::Command;

use super::Verb;
use crate::exec::ctx::{Ctx, StepError, POWERLOSS_CUT_ENV};
use crate::history::ProcKind;
use crate::procs;
use crate::scenario::kit::{Cx, Field, Res, Tbl};
use crate::scenario::tree::Val;

/// Start one daemon (or `count` at once) in the background.
#[derive(Clone, Debug)]
pub struct Start {
    /// Process name used by later steps. With `count > 1` the processes are `name.1`..`name.N`.
    pub name: String,
    pub count: u32,
    /// Subcommand and arguments; default `["run"]`.
    pub command: Vec<String>,
    /// Extra arguments after the command (placeholders allowed).
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// `HOMERD_FAILPOINTS` value, e.g. `"lock.after_open=stop"`.
    pub failpoints: Option<String>,
    /// `--lock-file` (placeholders allowed); default: the home's lock file.
    pub lock_file: Option<String>,
    /// Run as an unprivileged uid (scenario must `requires = ["unprivileged"]`).
    pub unprivileged: bool,
    /// Do not pass the scenario's `[settings]`.
    pub no_settings: bool,
    /// `RLIMIT_NOFILE` (soft, hard) the daemon starts with, set in the child before exec.
    pub nofile: Option<(u64, u64)>,
    /// `HOMERD_POWERLOSS_CUT`: the process cuts power (SIGKILLs itself) just before its
    /// N-th recorded write, truncate or sync (needs the `power_loss` header).
    pub arm: Option<u64>,
    /// `home = "b"`: run in a home of its own, `<sandbox>/homes/b` (its own lock file and,
    /// on SQLite, its own database): another "host" of a PostgreSQL queue.
    pub home: Option<String>,
}

impl Verb for Start {
    const KEY: &'static str = "start";
    const OPTIONS: &'static [&'static str] = &[
        "count",
        "command",
        "args",
        "env",
        "failpoints",
        "lock_file",
        "unprivileged",
        "no_settings",
        "nofile",
        "arm",
        "home",
    ];

    fn parse(cx: &mut Cx<'_>, t: &Tbl<'_>, v: &Field<'_>) -> Res<Start> {
        Self::only_its_options(cx, t)?;
        let start = Start {
            name: cx.name(v)?,
            count: cx.opt(t, "count", |cx, f| cx.count(f, 1))?.unwrap_or(1),
            command: cx.opt(t, "command", Cx::nonempty_strings)?.unwrap_or_else(|| vec![String::from("run")]),
            args: cx.opt(t, "args", Cx::strings)?.unwrap_or_default(),
            env: cx.opt(t, "env", Cx::str_map)?.unwrap_or_default(),
            failpoints: cx.opt(t, "failpoints", Cx::string)?,
            lock_file: cx.opt(t, "lock_file", Cx::text)?,
            unprivileged: cx.unprivileged(t)?,
            no_settings: cx.opt(t, "no_settings", Cx::boolean)?.unwrap_or(false),
            nofile: cx.opt(t, "nofile", nofile)?,
            arm: cx.arm(t)?,
            home: cx.opt(t, "home", home_name)?,
        };
        if cx.hosts {
            // Each home is a host (`[settings] hosts = true`): the process runs in its network namespace.
            let Some(home) = &start.home else {
                return Err(cx.err(
                    &v.key_span,
                    v.path.clone(),
                    "with `[settings] hosts = true` every `start` runs on a host: name its home (`home = \"a\"`), \
                     which is also the host's name for `partition`, `heal` and `delay`",
                ));
            };
            if start.unprivileged {
                return Err(cx.err(
                    &v.key_span,
                    v.path.clone(),
                    "`unprivileged` cannot enter a host's network namespace (`ip netns exec` needs root)",
                ));
            }
            if !cx.homes.contains(home) {
                cx.homes.push(home.clone());
            }
        }
        Ok(start)
    }

    fn summary(&self) -> String {
        format!("start {}", self.name)
    }

    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        let names: Vec<String> = if self.count <= 1 {
            vec![self.name.clone()]
        } else {
            (1..=self.count).map(|i| format!("{}.{i}", self.name)).collect()
        };
        let mut args: Vec<String> = self.command.clone();
        if let Some(lock) = &self.lock_file {
            args.push(String::from("--lock-file"));
            args.push(ctx.path(lock)?.to_string_lossy().into_owned());
        }
        for a in &self.args {
            args.push(ctx.subst(a)?);
        }
        let mut env = Vec::new();
        for (k, v) in &self.env {
            env.push((k.clone(), ctx.subst(v)?));
        }
        if let Some(fp) = &self.failpoints {
            env.push((String::from("HOMERD_FAILPOINTS"), fp.clone()));
        }
        if let Some(n) = self.arm {
            env.push((String::from(POWERLOSS_CUT_ENV), n.to_string()));
        }
        // Build every command first so simultaneous starts leave as close together as possible.
        let home = match &self.home {
            Some(h) => ctx.named_home(h),
            None => ctx.home(),
        };
        let mut cmds: Vec<Command> =
            names.iter().map(|_| ctx.homerd_in(&home, &args, !self.no_settings, &env, self.unprivileged)).collect();
        if let Some((soft, hard)) = self.nofile {
            for cmd in &mut cmds {
                procs::limit_open_files(cmd, soft, hard);
            }
        }
        // A background `homerd enqueue`: what it prints is acknowledged (see `history`).
        let prints_ids = self.command.first().map(String::as_str) == Some("enqueue");
        for (name, cmd) in names.into_iter().zip(cmds) {
            let pid = ctx.spawn(name, ProcKind::Daemon, cmd)?;
            if prints_ids {
                if let Some(p) = ctx.shared.lock().procs.iter_mut().rev().find(|p| p.pid == pid) {
                    p.prints_ids = true;
                }
            }
        }
        Ok(())
    }
}

/// `nofile = 64` (soft = hard) or `nofile = [soft, hard]`, each at least 3 (stdin,
/// stdout and stderr are descriptors too), soft at most hard.
fn nofile(cx: &Cx, f: &Field) -> Res<(u64, u64)> {
    const EXPECTED: &str = "a descriptor limit of at least 3, or [soft, hard] with soft <= hard";
    let limit = |f: &Field| match f.node.val {
        Val::Int(i) if i >= 3 => Ok(i as u64),
        _ => Err(cx.wrong(f, EXPECTED)),
    };
    match &f.node.val {
        Val::Int(_) => limit(f).map(|n| (n, n)),
        Val::Array(items) if items.len() == 2 => {
            let soft = limit(&f.item(0, &items[0]))?;
            let hard = limit(&f.item(1, &items[1]))?;
            if soft > hard {
                return Err(cx.wrong(f, "[soft, hard] with soft <= hard"));
            }
            Ok((soft, hard))
        }
        _ => Err(cx.wrong(f, EXPECTED)),
    }
}

/// `home = "b"`: a name of letters, digits, `_` and `-` (a directory under `<sandbox>/homes`).
fn home_name(cx: &Cx, f: &Field) -> Res<String> {
    match f.str() {
        Some(s)
            if !s.is_empty()
                && s.len() <= 32
                && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-')) =>
        {
            Ok(s.to_owned())
        }
        _ => Err(cx.wrong(f, "a home name of letters, digits, `_` and `-` (at most 32), like \"b\"")),
    }
}
