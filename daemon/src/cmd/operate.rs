//! Operator commands on single jobs: `list`, `show`, `cancel`, `retry` (adding jobs is
//! `enqueue.rs`). Each works while the daemon runs (readers never block it; writers wait
//! out its short transactions with `busy_timeout`), changes a job only through
//! statements matched on the status it expects, and asks the daemon to stop a running
//! job rather than writing under its feet.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::clock::format_rfc3339;
use crate::cmd::context::{Backend, Context};
use crate::cmd::queue::Queue;
use crate::error::{exit, Error, Result};
use crate::job::JobStatus;
use crate::rows::{Cancel, JobRow, Retry, RunRow};
use crate::{outln, output};

fn time(ms: Option<i64>) -> String {
    ms.map(format_rfc3339).unwrap_or_else(|| String::from("-"))
}

/// One JSON line, every time in it with its RFC 3339 companion.
fn print_json(v: serde_json::Value) -> Result<()> {
    output::json(&output::with_times(v))
}

/// `homerd list`: a table, or with `--json` one job object per line (no line for no
/// jobs). Before the daemon's first start there is no database, and so no jobs: an
/// empty list, not an error.
pub fn list(ctx: &Context, status: Option<String>, lane: Option<String>, limit: u32, as_json: bool) -> Result<i32> {
    if let Some(s) = &status {
        if JobStatus::parse(s).is_none() {
            let all = JobStatus::ALL.map(JobStatus::as_str).join(", ");
            return Err(Error::Usage(format!("--status: unknown status `{s}`; one of {all}")));
        }
    }
    let rows = match Queue::read_only(ctx)? {
        Some(mut queue) => queue.list(status.as_deref(), lane.as_deref(), limit)?,
        None => Vec::new(),
    };
    if as_json {
        for r in &rows {
            print_json(serde_json::to_value(r).map_err(|e| Error::Internal(format!("JSON output: {e}")))?)?;
        }
        return Ok(exit::OK);
    }
    outln!("{:>6}  {:<9}  {:<10}  {:<6}  {:>8}  {:<24}  ARGS", "ID", "STATUS", "LANE", "KIND", "ATTEMPTS", "CREATED")?;
    for r in &rows {
        let args = r.args.join(" ");
        let args =
            if args.chars().count() > 60 { format!("{}...", args.chars().take(57).collect::<String>()) } else { args };
        outln!(
            "{:>6}  {:<9}  {:<10}  {:<6}  {:>8}  {:<24}  {}",
            r.id,
            r.status,
            r.lane,
            r.kind,
            format!("{}/{}", r.attempts, r.max_attempts),
            time(Some(r.created_at)),
            args
        )?;
    }
    if rows.is_empty() {
        outln!("(no jobs)")?;
    }
    Ok(exit::OK)
}

fn not_found(id: i64) -> Error {
    Error::NotFound(format!("no job {id}"))
}

/// `homerd show ID`: the job, its runs and its error history.
pub fn show(ctx: &Context, id: i64, as_json: bool) -> Result<i32> {
    let (job, runs, errors) = Queue::for_job(ctx, id)?.show(id)?.ok_or_else(|| not_found(id))?;
    // An `exec` job's runs name their output files, and a run that did not complete
    // its stderr's last line: the cause, when the program could not even start.
    let outputs: Vec<Option<RunOutput>> = runs
        .iter()
        .map(|r| (job.kind == "exec").then(|| RunOutput::read(ctx, id, r.run, r.outcome.as_deref())))
        .collect();
    if as_json {
        let runs = runs
            .iter()
            .zip(&outputs)
            .map(|(r, o)| {
                let mut v = serde_json::to_value(r).map_err(|e| Error::Internal(format!("JSON output: {e}")))?;
                if let Some(o) = o {
                    v["stdout"] = json!(o.stdout);
                    v["stderr"] = json!(o.stderr);
                    v["stderr_last_line"] = json!(o.last_stderr_line);
                }
                Ok(v)
            })
            .collect::<Result<Vec<serde_json::Value>>>()?;
        print_json(json!({"job": job, "runs": runs, "errors": errors}))?;
        return Ok(exit::OK);
    }
    print_job(&job)?;
    outln!("runs:")?;
    if runs.is_empty() {
        outln!("  (none)")?;
    }
    for (r, output) in runs.iter().zip(&outputs) {
        outln!("  {}", run_line(r))?;
        if let Some(o) = output {
            outln!("    stdout: {}", o.describe(&o.stdout))?;
            outln!("    stderr: {}", o.describe(&o.stderr))?;
            if let Some(line) = &o.last_stderr_line {
                outln!("    last stderr line: {line}")?;
            }
        }
    }
    outln!("errors:")?;
    match errors.as_array() {
        Some(list) if !list.is_empty() => {
            for e in list {
                outln!(
                    "  {} attempt {} run {}: {}",
                    time(e["at"].as_i64()),
                    e["attempt"],
                    e["run"],
                    e["error"].as_str().unwrap_or("")
                )?;
            }
        }
        _ => outln!("  (none)")?,
    }
    Ok(exit::OK)
}

/// One run as `show` prints it (under `runs:`, indented): its numbers, worker, child,
/// times and outcome (`running` while it has none), with its error after a colon.
pub fn run_line(r: &RunRow) -> String {
    format!(
        "run {} (attempt {}, epoch {}, worker {}, pid {}): {} -> {} {}{}",
        r.run,
        r.attempt,
        r.epoch,
        r.worker,
        r.child_pid.map(|p| p.to_string()).unwrap_or_else(|| String::from("-")),
        time(Some(r.started_at)),
        time(r.ended_at),
        r.outcome.as_deref().unwrap_or("running"),
        r.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
    )
}

/// Where an `exec` run's output is, and the last line of its stderr when it did not
/// complete.
struct RunOutput {
    /// On PostgreSQL the run may have been on another host, whose home has its files.
    shared_queue: bool,
    stdout: String,
    stderr: String,
    last_stderr_line: Option<String>,
}

impl RunOutput {
    fn read(ctx: &Context, id: i64, run: i64, outcome: Option<&str>) -> RunOutput {
        let (out, err) = ctx.paths.run_logs(id, run);
        let last_stderr_line = match outcome {
            Some("completed") => None,
            _ => last_line(&err),
        };
        let shared_queue = matches!(ctx.backend(), Backend::Postgres(_));
        RunOutput {
            shared_queue,
            stdout: out.display().to_string(),
            stderr: err.display().to_string(),
            last_stderr_line,
        }
    }

    /// A file's path and size, or that it is not there (the program wrote nothing to that
    /// stream — a log file is created at its first byte — or never started).
    fn describe(&self, path: &str) -> String {
        match std::fs::metadata(path) {
            Ok(m) => format!("{path} ({} bytes)", m.len()),
            Err(_) if self.shared_queue => format!(
                "{path} (not in this home: the run's worker keeps it in its own home, or the program wrote nothing there)"
            ),
            Err(_) => format!("{path} (none: the program wrote nothing there, or never started)"),
        }
    }
}

/// The last non-empty line of a file, read from its last 4 KiB (a run log can be large).
fn last_line(path: &std::path::Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(4096))).ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    text.lines().rev().map(str::trim_end).find(|l| !l.is_empty()).map(String::from)
}

fn print_job(j: &JobRow) -> Result<()> {
    outln!("job {}: {} ({} in lane {})", j.id, j.status, j.kind, j.lane)?;
    outln!("  args:          {:?}", j.args)?;
    outln!("  attempts:      {}/{} ({} interruptions, {} runs)", j.attempts, j.max_attempts, j.interruptions, j.runs)?;
    outln!("  created:       {}", time(Some(j.created_at)))?;
    outln!("  run after:     {}", time(Some(j.run_after)))?;
    outln!("  started:       {}", time(j.started_at))?;
    outln!("  completed:     {}", time(j.completed_at))?;
    if j.status == "running" {
        outln!("  owner:         {}", j.locked_by.as_deref().unwrap_or("-"))?;
        outln!("  heartbeat:     {}", time(j.heartbeat_at))?;
    }
    if let Some(dir) = &j.cwd {
        outln!("  directory:     {dir}")?;
    }
    for (k, v) in &j.env {
        outln!("  env:           {k}={v}")?;
    }
    if let Some(k) = &j.key {
        outln!("  key:           {k}")?;
    }
    if let Some(e) = &j.error {
        outln!("  last error:    {e}")?;
    }
    Ok(())
}

/// `homerd cancel ID`: a pending job becomes `cancelled` at once; a running one is
/// stopped by the daemon that owns it (this waits, bounded, to report the result); a
/// finished one is left alone (exit 3). On PostgreSQL a running job's owner may be on
/// another host: it learns of the request on its next look, woken by the `NOTIFY`; with
/// no live owner, the worker that fences the owner and recovers the job cancels it then.
pub fn cancel(ctx: &Context, id: i64, as_json: bool) -> Result<i32> {
    let mut queue = Queue::for_job_write(ctx, id)?;
    let report = |result: &str, message: String| {
        if as_json {
            print_json(json!({"id": id, "result": result}))
        } else {
            outln!("{message}")
        }
    };
    let deadline = Instant::now() + ctx.config.drain_bound(Duration::ZERO);
    loop {
        match queue.cancel(ctx, id)? {
            Cancel::NotFound => return Err(not_found(id)),
            Cancel::Cancelled => {
                report("cancelled", format!("job {id} cancelled"))?;
                return Ok(exit::OK);
            }
            Cancel::Terminal(status) => {
                return Err(Error::WrongState(format!("job {id} is already {status}; nothing to cancel")));
            }
            Cancel::Requested => {}
        }
        // Running: the daemon that owns it stops it and records `cancelled`. If nobody
        // acts on the request now, the job is cancelled when its owner's place is taken.
        // An owner quick enough to act between our commit and the question (PostgreSQL
        // asks about the job's own worker, which counts only while the job is running)
        // is told apart by reading where the job stands: only a job still running has
        // an owner that is really away; any other status is handled below.
        if !queue.owner_active(ctx, id)? && queue.progress(id)?.is_some_and(|p| p.status == JobStatus::Running) {
            report("requested", format!("job {id} is marked running but {}", queue.unowned_cancel()))?;
            return Ok(exit::OK);
        }
        loop {
            match queue.progress(id)?.map(|p| p.status) {
                Some(JobStatus::Cancelled) => {
                    report("cancelled", format!("job {id} cancelled (its run was stopped)"))?;
                    return Ok(exit::OK);
                }
                Some(JobStatus::Running) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                Some(JobStatus::Running) => {
                    report("requested", format!("job {id}: cancel requested; the daemon has not stopped it yet"))?;
                    return Ok(exit::OK);
                }
                // Released or requeued before the daemon saw the request: cancel it as
                // a pending job now.
                Some(JobStatus::Pending) => break,
                Some(other) => {
                    return Err(Error::WrongState(format!(
                        "job {id} finished as {other} before it could be cancelled"
                    )));
                }
                None => return Err(not_found(id)),
            }
        }
    }
}

/// `homerd retry ID`.
pub fn retry(ctx: &Context, id: i64, as_json: bool) -> Result<i32> {
    match Queue::for_job_write(ctx, id)?.retry(ctx, id)? {
        Retry::NotFound => Err(not_found(id)),
        Retry::NotRetryable(status) => {
            Err(Error::WrongState(format!("job {id} is {status}; only failed or cancelled jobs can be retried")))
        }
        Retry::Requeued => {
            if as_json {
                print_json(json!({"id": id, "result": "requeued"}))?;
            } else {
                outln!("job {id} requeued with a fresh attempt budget")?;
            }
            Ok(exit::OK)
        }
    }
}
