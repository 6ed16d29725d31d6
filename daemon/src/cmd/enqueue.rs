//! `homerd enqueue` (one job) and `homerd enqueue --from FILE|-` (a batch, one JSON
//! object per line): the job kinds and their validation, and the acknowledgement rule —
//! an id is printed only after the `BEGIN IMMEDIATE` transaction that inserted it
//! committed with `synchronous=FULL`, so a printed id survives a power cut.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use rusqlite::TransactionBehavior;

use crate::cmd::context::{self, Backend, Context};
use crate::duration::{parse_duration, parse_run_after, RunAfter};
use crate::error::{exit, Error, Result};
use crate::job::{ExecSettings, NewJob, WallMs};
use crate::sqlite::{self, ops};
use crate::{outln, output};

/// What `homerd enqueue` was asked for.
pub struct EnqueueSpec {
    pub key: Option<String>,
    pub lane: String,
    pub max_attempts: Option<u32>,
    pub timeout: Option<String>,
    pub run_after: Option<String>,
    pub kind: String,
    pub args: Vec<String>,
    /// `--cwd DIR` (exec only; default: the caller's working directory).
    pub cwd: Option<PathBuf>,
    /// `--env KEY=VALUE`, repeatable (exec only).
    pub env: Vec<String>,
}

/// Variables the daemon sets for every `exec` run; `--env` may not name them (nor any
/// `HOMERD_*` test hook, which the daemon strips from jobs).
const RESERVED_ENV: [&str; 7] =
    ["HOMER_JOB_ID", "HOMER_ATTEMPT", "HOMER_RUN", "HOMER_CLAIM_TOKEN", "HOMER_EPOCH", "HOMER_HOME", "HOMER_LOCK_FILE"];

/// Why an `exec` job's directory or environment was refused.
#[derive(Debug)]
pub enum ExecRefusal {
    /// A malformed value, or a setting on a kind that runs no program (64 on the command line).
    Usage(String),
    /// The directory does not exist or is not a directory (66 on the command line).
    Missing(String),
}

impl ExecRefusal {
    fn message(self) -> String {
        match self {
            ExecRefusal::Usage(m) | ExecRefusal::Missing(m) => m,
        }
    }
}

/// Resolves an `exec` job's working directory and `--env` variables. The directory is
/// the caller's own unless `cwd` names one; a relative `cwd` resolves against the
/// caller's directory; either must exist now (it may still vanish before the run: the
/// run then fails, saying so on its stderr). Nothing of the caller's environment is taken.
pub fn resolve_exec(
    kind: &str,
    cwd: Option<&Path>,
    env: &[(String, String)],
) -> std::result::Result<ExecSettings, ExecRefusal> {
    if kind != "exec" {
        if cwd.is_some() || !env.is_empty() {
            return Err(ExecRefusal::Usage(format!(
                "a working directory and --env apply only to `exec` jobs, not `{kind}`"
            )));
        }
        return Ok(ExecSettings::default());
    }
    let here = std::env::current_dir();
    let dir = match (cwd, here) {
        (Some(c), _) if c.is_absolute() => c.to_path_buf(),
        (Some(c), Ok(here)) => here.join(c),
        (None, Ok(here)) => here,
        (_, Err(e)) => {
            return Err(ExecRefusal::Missing(format!(
                "cannot read the current directory ({e}); it may have been removed: run from an existing directory or give --cwd with an absolute path"
            )))
        }
    };
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(ExecRefusal::Missing(format!(
                "working directory {}: not a directory; give --cwd an existing directory",
                dir.display()
            )))
        }
        Err(e) => {
            return Err(ExecRefusal::Missing(format!(
                "working directory {}: {e}; give --cwd an existing directory",
                dir.display()
            )))
        }
    }
    let Some(cwd) = dir.to_str().map(String::from) else {
        return Err(ExecRefusal::Usage(format!("working directory {}: not valid UTF-8", dir.display())));
    };
    let mut vars = BTreeMap::new();
    for (key, value) in env {
        let bad = |why: &str| ExecRefusal::Usage(format!("--env {key}: {why}"));
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(bad("the name must be non-empty, without `=` or NUL (KEY=VALUE)"));
        }
        if value.contains('\0') {
            return Err(bad("the value must not contain NUL"));
        }
        if RESERVED_ENV.contains(&key.as_str()) || key.starts_with("HOMERD_") {
            return Err(bad("set by the daemon for every run; choose another name"));
        }
        vars.insert(key.clone(), value.clone());
    }
    Ok(ExecSettings { cwd: Some(cwd), env: vars })
}

/// `KEY=VALUE` from the command line.
pub fn split_env(pairs: &[String]) -> std::result::Result<Vec<(String, String)>, ExecRefusal> {
    pairs
        .iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) => Ok((k.to_string(), v.to_string())),
            None => Err(ExecRefusal::Usage(format!("--env {p}: expected KEY=VALUE"))),
        })
        .collect()
}

/// The switch for the `crash` job kind, a test hook (the poison job of the scenarios): a
/// `crash` job kills the daemon that runs it, so `enqueue` refuses it and the daemon fails
/// it unrun unless this is set to `1` in their environment.
pub const CRASH_JOBS_ENV: &str = "HOMERD_ALLOW_CRASH_JOBS";

/// Whether this process may enqueue or run `crash` jobs ([`CRASH_JOBS_ENV`]).
pub fn crash_jobs_allowed() -> bool {
    std::env::var_os(CRASH_JOBS_ENV).is_some_and(|v| v == "1")
}

/// Checks a job's kind and arguments; returns the arguments to store.
pub fn validate_job(kind: &str, args: &[String]) -> std::result::Result<Vec<String>, String> {
    let args: Vec<String> = match kind {
        "exec" => args.iter().skip_while(|a| *a == "--").cloned().collect(),
        _ => args.to_vec(),
    };
    // Only `--from` lines can carry one (`\u0000`): no program can be given it, and
    // PostgreSQL refuses it in text, where every later write of the job would fail.
    if let Some(i) = args.iter().position(|a| a.contains('\0')) {
        return Err(format!("argument {} contains a NUL character, which no job can take", i + 1));
    }
    if kind == "crash" && !crash_jobs_allowed() {
        return Err(format!(
            "`crash` is a test hook (it kills the daemon that runs it); set {CRASH_JOBS_ENV}=1 to enqueue it"
        ));
    }
    match (kind, args.len()) {
        ("noop" | "crash", 0) => {}
        ("noop" | "crash", _) => return Err(format!("`{kind}` takes no arguments")),
        ("sleep", 1) => {
            parse_duration(&args[0]).map_err(|e| format!("sleep: {e}"))?;
        }
        ("sleep", _) => return Err(String::from("`sleep` takes one duration, e.g. `sleep 30s`")),
        ("fail", 0 | 1) => {}
        ("fail", _) => return Err(String::from("`fail` takes at most one message")),
        ("exec", 0) => return Err(String::from("`exec` needs a program: `exec -- PROGRAM [ARGS...]`")),
        ("exec", _) => {}
        _ => return Err(format!("unknown job kind `{kind}`; kinds: noop, sleep, fail, exec, crash")),
    }
    Ok(args)
}

/// A validated job, not yet placed in time: its `run_after` is fixed only once the
/// database is open and the effective clock anchored from it (`clock.rs`), so a CLI
/// started after a backward step of the wall clock does not schedule into the past.
pub struct JobDraft {
    job: NewJob,
    when: RunAfter,
    /// How the input named `run_after` (`--run-after` or `run_after`), for errors.
    run_after_name: &'static str,
}

impl JobDraft {
    /// The draft with an `exec` job's directory and variables ([`resolve_exec`]).
    pub fn with_exec(mut self, exec: ExecSettings) -> JobDraft {
        self.job.exec = exec;
        self
    }

    /// The job to insert at `now` (effective milliseconds), and the `run_after_set_at` to
    /// store with it ([`RunAfter::resolve`]: a past time is due at once, a future one is
    /// not moved by forward clock steps, one beyond `MAX_DURATION` is refused).
    pub fn at(&self, now: WallMs) -> std::result::Result<(NewJob, WallMs), String> {
        let (run_after, set_at) = self.when.resolve(now).map_err(|e| format!("{}: {e}", self.run_after_name))?;
        Ok((NewJob { run_after, ..self.job.clone() }, set_at))
    }
}

/// How each input names the job's fields in its errors.
#[derive(Clone, Copy)]
pub enum Source {
    /// `homerd enqueue --timeout D --run-after D`.
    Flags,
    /// A line of `homerd enqueue --from`: `"timeout"`, `"run_after"`.
    Line,
}

/// Builds a validated job from its parts (shared by `enqueue` and `enqueue --from`).
#[allow(clippy::too_many_arguments)]
pub fn build_job(
    ctx: &Context,
    source: Source,
    kind: String,
    args: &[String],
    lane: String,
    max_attempts: Option<u32>,
    timeout: Option<&str>,
    run_after: Option<&str>,
) -> std::result::Result<JobDraft, String> {
    let args = validate_job(&kind, args)?;
    let (timeout_name, run_after_name) = match source {
        Source::Flags => ("--timeout", "--run-after"),
        Source::Line => ("timeout", "run_after"),
    };
    let timeout = timeout.map(|s| parse_duration(s).map_err(|e| format!("{timeout_name}: {e}"))).transpose()?;
    if timeout.is_some_and(|t| t.is_zero()) {
        return Err(format!("{timeout_name}: must be greater than zero (leave it out for no timeout)"));
    }
    let when = run_after.map(|s| parse_run_after(s).map_err(|e| format!("{run_after_name}: {e}"))).transpose()?;
    let max_attempts = max_attempts.unwrap_or(ctx.config.max_attempts);
    if max_attempts == 0 {
        return Err(String::from("max_attempts must be at least 1"));
    }
    if lane.is_empty() || lane.contains('\0') {
        return Err(String::from("lane must not be empty or contain a NUL character"));
    }
    let job = NewJob {
        kind,
        args,
        lane,
        max_attempts,
        timeout_ms: timeout.map(|t| t.as_millis() as u64),
        run_after: WallMs(0),
        exec: ExecSettings::default(),
    };
    Ok(JobDraft { job, when: when.unwrap_or_default(), run_after_name })
}
/// Opens the database for `enqueue` and `enqueue --from`: [`context::open_for_write`], so the
/// commit is `synchronous=FULL` and the ids printed after it are covered by an fsync. The
/// `ack_before_sync` mutant commits with `synchronous=OFF` instead.
pub fn open_for_enqueue(ctx: &Context) -> Result<rusqlite::Connection> {
    crate::powerloss::phase("enqueue");
    let conn = context::open_for_write(ctx)?;
    if crate::mutant::active(crate::mutant::ACK_BEFORE_SYNC) {
        sqlite::unsynced_commits(&conn).map_err(|e| Error::sqlite(&ctx.paths.database, e))?;
    }
    Ok(conn)
}

/// One acknowledged job as `--json` prints it: `{"id": N, "created": bool}` (`created`
/// is false when `--key` named an existing job).
fn ack_json(id: crate::job::JobId, created: bool) -> serde_json::Value {
    serde_json::json!({"id": id.0, "created": created})
}

/// `homerd enqueue`: one `BEGIN IMMEDIATE` insert committed with `synchronous=FULL`; the
/// id is printed only after the commit (acknowledged = durable). With `--key`, the same
/// key prints the existing job's id and creates nothing.
pub fn enqueue(ctx: &Context, spec: EnqueueSpec, as_json: bool) -> Result<i32> {
    let refused = |r: ExecRefusal| match r {
        ExecRefusal::Usage(m) => Error::Usage(m),
        ExecRefusal::Missing(m) => Error::NotFound(m),
    };
    let env = split_env(&spec.env).map_err(refused)?;
    let exec = resolve_exec(&spec.kind, spec.cwd.as_deref(), &env).map_err(refused)?;
    let job = build_job(
        ctx,
        Source::Flags,
        spec.kind,
        &spec.args,
        spec.lane,
        spec.max_attempts,
        spec.timeout.as_deref(),
        spec.run_after.as_deref(),
    )
    .map_err(Error::Usage)?
    .with_exec(exec);
    let (id, created) = match ctx.backend() {
        Backend::Postgres(url) => {
            let now = ctx.clock.now();
            let (job, _) = job.at(now).map_err(Error::Usage)?;
            enqueue_postgres(ctx, url, &[(job, spec.key)], now)?[0]
        }
        Backend::Sqlite => {
            let mut conn = open_for_enqueue(ctx)?;
            let db = &ctx.paths.database;
            let sql = |e| Error::sqlite(db, e);
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql)?;
            let now = ctx.clock.now();
            let (job, set_at) = job.at(now).map_err(Error::Usage)?;
            let acked = ops::enqueue_keyed(&tx, &job, spec.key.as_deref(), now, set_at).map_err(sql)?;
            tx.commit().map_err(sql)?;
            crate::wake::poke_home(&ctx.paths);
            acked
        }
    };
    if as_json {
        output::json(&ack_json(id, created))?;
    } else {
        outln!("{id}")?;
    }
    Ok(exit::OK)
}

/// Jobs one `enqueue --from` may hold: one transaction holds the write lock while it
/// commits, and the daemon's renewals wait behind it (10,000 jobs commit in well under
/// a second here).
pub const MAX_BATCH: usize = 100_000;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LineJob {
    kind: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    lane: Option<String>,
    #[serde(default)]
    max_attempts: Option<u32>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    run_after: Option<String>,
    #[serde(default)]
    key: Option<String>,
    /// As `--cwd` (relative: against the enqueuing caller's directory).
    #[serde(default)]
    cwd: Option<PathBuf>,
    /// As `--env`, an object of strings.
    #[serde(default)]
    env: BTreeMap<String, String>,
}

/// `homerd enqueue --from FILE|-`: every line validated first (a bad line rejects the
/// whole batch, naming its number), then all jobs in one transaction; ids printed in order.
pub fn enqueue_from(ctx: &Context, file: &Path, as_json: bool) -> Result<i32> {
    let (name, bytes) = if file == Path::new("-") {
        let mut b = Vec::new();
        std::io::stdin().read_to_end(&mut b).map_err(|e| Error::io("read", "<stdin>", e))?;
        (String::from("<stdin>"), b)
    } else {
        (file.display().to_string(), std::fs::read(file).map_err(|e| Error::io("read", file, e))?)
    };
    // Bad input, not an I/O failure: 65 with the line, like any other bad line.
    let text = String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|b| **b == b'\n').count() + 1;
        Error::data(&name, format!("line {line}: not valid UTF-8 (save the file as UTF-8); nothing was enqueued"))
    })?;
    let mut jobs = Vec::new();
    let lines = text.lines().filter(|l| !l.trim().is_empty()).count();
    if lines > MAX_BATCH {
        return Err(Error::data(
            &name,
            format!(
                "{lines} jobs in one batch; at most {MAX_BATCH} (one transaction holds the database's write lock while it commits: split the file)"
            ),
        ));
    }
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let lineno = i + 1;
        let bad = |msg: String| Error::data(&name, format!("line {lineno}: {msg}; nothing was enqueued"));
        let lj: LineJob = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let env: Vec<(String, String)> = lj.env.into_iter().collect();
        let exec = resolve_exec(&lj.kind, lj.cwd.as_deref(), &env).map_err(|r| bad(r.message()))?;
        let job = build_job(
            ctx,
            Source::Line,
            lj.kind,
            &lj.args,
            lj.lane.unwrap_or_else(|| String::from("default")),
            lj.max_attempts,
            lj.timeout.as_deref(),
            lj.run_after.as_deref(),
        )
        .map_err(bad)?
        .with_exec(exec);
        if lj.key.as_deref().is_some_and(|k| k.contains('\0')) {
            return Err(bad(String::from("key must not contain a NUL character")));
        }
        jobs.push((job, lj.key, lineno));
    }
    let ids = match ctx.backend() {
        Backend::Postgres(url) => {
            let now = ctx.clock.now();
            let mut resolved = Vec::with_capacity(jobs.len());
            for (draft, key, lineno) in jobs {
                let (job, _) = draft
                    .at(now)
                    .map_err(|e| Error::data(&name, format!("line {lineno}: {e}; nothing was enqueued")))?;
                resolved.push((job, key));
            }
            enqueue_postgres(ctx, url, &resolved, now)?
        }
        Backend::Sqlite => {
            let mut conn = open_for_enqueue(ctx)?;
            let sql = |e| Error::sqlite(&ctx.paths.database, e);
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql)?;
            let now = ctx.clock.now();
            let mut ids = Vec::with_capacity(jobs.len());
            for (draft, key, lineno) in &jobs {
                let (job, set_at) = draft
                    .at(now)
                    .map_err(|e| Error::data(&name, format!("line {lineno}: {e}; nothing was enqueued")))?;
                ids.push(ops::enqueue_keyed(&tx, &job, key.as_deref(), now, set_at).map_err(sql)?);
            }
            tx.commit().map_err(sql)?;
            crate::wake::poke_home(&ctx.paths);
            ids
        }
    };
    // One write for the lot: a batch of 100,000 ids is not 100,000 system calls.
    let out: String = if as_json {
        ids.iter().map(|&(id, created)| format!("{}\n", ack_json(id, created))).collect()
    } else {
        ids.iter().map(|(id, _)| format!("{id}\n")).collect()
    };
    output::text(&out)?;
    Ok(exit::OK)
}

/// `enqueue` and `enqueue --from` on PostgreSQL: every job in one transaction (all or
/// none), each keyed job created at most once (`postgres::ops::enqueue_keyed`), and one
/// `NOTIFY` that the daemons see when it commits. `caller_now` is the clock the jobs'
/// `run_after` was resolved on: each delay is applied to the server's clock, so a host's
/// clock never decides when a job is due. Acknowledged (the ids printed) only after the
/// commit returned.
fn enqueue_postgres(
    ctx: &Context,
    url: &str,
    jobs: &[(NewJob, Option<String>)],
    caller_now: WallMs,
) -> Result<Vec<(crate::job::JobId, bool)>> {
    use crate::postgres::ops as pg_ops;
    let mut pg = context::open_postgres(ctx, url)?;
    let shown = pg.shown();
    let pge = |e| Error::postgres(&shown, e);
    let mut tx = pg.client.transaction().map_err(pge)?;
    let mut ids = Vec::with_capacity(jobs.len());
    for (job, key) in jobs {
        ids.push(pg_ops::enqueue_keyed(&mut tx, job, key.as_deref(), caller_now).map_err(pge)?);
    }
    if ids.iter().any(|&(_, created)| created) {
        pg_ops::notify(&mut tx, "enqueue").map_err(pge)?;
    }
    tx.commit().map_err(pge)?;
    Ok(ids)
}
