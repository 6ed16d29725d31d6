//! `homerd logs ID [--run N] [--stderr|--both] [-f] [--tail N]`: a run's output, read
//! from the files the daemon writes it to (`<home>/logs/runs/<job>-<run>.out`/`.err`,
//! `runner.rs`), never through the daemon. A file is created at its stream's first byte
//! (`children.rs`): a stream the program never wrote to has none, and prints nothing.
//!
//! Following (`-f`) reads what the files gained and looks at the job every
//! [`wait::POLL`] (the database only after another connection committed or, on
//! PostgreSQL, notified, see
//! [`wait::Changes`]). A run is over once the job left `running` or has a newer run: the
//! daemon finishes a run's files before it records anything, so what is read after that
//! is all of it. A retried job is followed into its next run (a note on stderr says so);
//! the command exits when the job is completed (0), failed (4) or cancelled (5).
//!
//! What it prints on stdout is the job's own bytes, through `output.rs` (a reader that
//! closes stdout ends it quietly, exit 0). `--json` is refused (64): the output is the
//! program's, not homerd's, and need not be text, so there is no JSON shape to give it
//! that would not re-encode it; `show ID --json` names each run's log files, for a
//! program that wants them.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::cmd::context::Context;
use crate::cmd::wait::{self, Source};
use crate::error::{exit, Error, Result};
use crate::job::JobStatus;
use crate::output;

/// Which of a run's files to print.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Streams {
    Stdout,
    Stderr,
    /// The run's stdout to stdout, its stderr to stderr (their relative order is not
    /// kept: they are two files).
    Both,
}

/// What `homerd logs` was asked for.
pub struct LogsSpec {
    pub id: i64,
    pub run: Option<u32>,
    pub streams: Streams,
    pub follow: bool,
    pub tail: Option<usize>,
    /// `--json`, refused (see the module docs).
    pub json: bool,
}

/// One file being printed: where it is, where it goes, how far it was read.
struct Tailer {
    path: PathBuf,
    to_stderr: bool,
    offset: u64,
}

impl Tailer {
    /// Prints what the file gained since the last call (nothing if it does not exist
    /// yet); `tail` first skips to its last N lines.
    fn pump(&mut self, tail: Option<usize>) -> Result<()> {
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io("open", &self.path, e)),
        };
        if self.offset == 0 {
            if let Some(n) = tail {
                self.offset = tail_offset(&mut file, n).map_err(|e| Error::io("read", &self.path, e))?;
            }
        }
        file.seek(SeekFrom::Start(self.offset)).map_err(|e| Error::io("read", &self.path, e))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf).map_err(|e| Error::io("read", &self.path, e))?;
        if buf.is_empty() {
            return Ok(());
        }
        self.offset += buf.len() as u64;
        if self.to_stderr {
            let mut err = std::io::stderr().lock();
            // `--both`: stderr carries the job's stderr as data, so its reader going away
            // (`2>&1 | head`) ends the command as a closed stdout does.
            err.write_all(&buf).and_then(|_| err.flush()).map_err(|e| match e.kind() {
                std::io::ErrorKind::BrokenPipe => Error::StdoutClosed,
                _ => Error::io("write", "<stderr>", e),
            })
        } else {
            output::bytes(&buf)
        }
    }
}

/// The offset where the last `n` lines of `file` begin (a final line without its newline
/// counts as a line).
fn tail_offset(file: &mut File, n: usize) -> std::io::Result<u64> {
    let mut text = Vec::new();
    file.read_to_end(&mut text)?;
    Ok(tail_start(&text, n) as u64)
}

/// Where the last `n` lines of `text` begin.
fn tail_start(text: &[u8], n: usize) -> usize {
    if n == 0 {
        return text.len();
    }
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return i + 1;
            }
        }
    }
    0
}

fn tailers(ctx: &Context, id: i64, run: i64, streams: Streams) -> Vec<Tailer> {
    let (out, err) = ctx.paths.run_logs(id, run);
    let t = |path: PathBuf, to_stderr| Tailer { path, to_stderr, offset: 0 };
    match streams {
        Streams::Stdout => vec![t(out, false)],
        Streams::Stderr => vec![t(err, false)],
        Streams::Both => vec![t(out, false), t(err, true)],
    }
}

fn pump_all(ts: &mut [Tailer], tail: Option<usize>) -> Result<()> {
    ts.iter_mut().try_for_each(|t| t.pump(tail))
}

/// `homerd logs`.
pub fn logs(ctx: &Context, spec: LogsSpec) -> Result<i32> {
    let id = spec.id;
    if spec.json {
        return Err(Error::Usage(format!(
            "logs has no --json: it prints the job's own output as the program wrote it; `homerd show {id} --json` names each run's log files (`stdout`, `stderr`)"
        )));
    }
    let mut source = Source::open(ctx, id)?;
    let first = source.progress(id)?;
    if first.kind != "exec" {
        eprintln!("homerd: job {id} is a `{}` job: only `exec` jobs have output", first.kind);
        if !spec.follow {
            return Ok(exit::OK);
        }
    }
    let mut run = match spec.run {
        Some(0) => return Err(Error::Usage(String::from("--run: runs are numbered from 1"))),
        Some(n) if i64::from(n) > first.runs => {
            if !spec.follow {
                return Err(Error::NotFound(format!(
                    "job {id} has no run {n} (it has {} so far; `homerd show {id}` lists them)",
                    first.runs
                )));
            }
            i64::from(n)
        }
        Some(n) => i64::from(n),
        None => first.runs.max(1),
    };
    if !spec.follow {
        if first.runs == 0 {
            eprintln!("homerd: job {id} has not run yet ({})", first.status);
            return Ok(exit::OK);
        }
        let mut ts = tailers(ctx, id, run, spec.streams);
        if ts.iter().all(|t| !t.path.exists()) {
            elsewhere(ctx, &mut source, id, run)?;
            // A log file is created at its stream's first byte (children.rs).
            eprintln!(
                "homerd: job {id} run {run} has no output here: its program wrote nothing (or not yet, or never started; a `job.output_lost` warning would name a log that could not be created), so {} does not exist",
                display(&ts[0].path)
            );
            return Ok(exit::OK);
        }
        pump_all(&mut ts, spec.tail)?;
        return Ok(exit::OK);
    }
    let mut ts = tailers(ctx, id, run, spec.streams);
    let mut now = first;
    let mut first_pump = true;
    let mut checked_host = 0;
    loop {
        // Waiting for the run to begin: a claim does not notify.
        let recheck = if now.runs < run { wait::RECHECK_UNTIL_STARTED } else { wait::RECHECK_SERVER };
        if source.changed(ctx, recheck)? {
            now = source.progress(id)?;
        }
        if now.runs >= run && checked_host < run && ts.iter().all(|t| !t.path.exists()) {
            // The run has begun (its row exists) and its files are not here: on
            // PostgreSQL it may run on another host, whose home has them.
            elsewhere(ctx, &mut source, id, run)?;
            checked_host = run;
        }
        // Read the state before the files: once the run is seen over, one more read gets
        // everything it wrote.
        let over = now.runs > run || (now.runs == run && now.status != JobStatus::Running);
        if now.runs >= run {
            pump_all(&mut ts, if first_pump { spec.tail } else { None })?;
            first_pump = false;
        }
        if over {
            if now.status.terminal() && now.runs <= run {
                return Ok(wait::outcome_code(now.status));
            }
            eprintln!("homerd: job {id} run {run} ended; following run {}", run + 1);
            run += 1;
            ts = tailers(ctx, id, run, spec.streams);
            continue;
        }
        if now.runs < run && now.status.terminal() {
            // Asked for a run that will never come.
            return Ok(wait::outcome_code(now.status));
        }
        // A quiet job writes nothing for long stretches, and only a write would meet the
        // closed pipe: ask (`logs -f 7 | grep -m1 ready` must end when grep does).
        if output::reader_gone() {
            return Err(Error::StdoutClosed);
        }
        source.pause(wait::POLL)?;
    }
}

/// On PostgreSQL, a run whose output is not in this home: 66 naming the worker (and
/// its host) that ran it, when that is not this home's daemon. A run's output files stay
/// on the host that ran it; `homerd logs` there reads them. Which home a run ran in is
/// the registered name of the incarnation that claimed it (the run's epoch; older rows
/// name only `<host>/<pid>` in the run's own `worker`). With that row gone, nothing says
/// the run was elsewhere.
fn elsewhere(ctx: &Context, source: &mut Source, id: i64, run: i64) -> Result<()> {
    let Some(ran) = source.queue.run_worker(id, run)? else { return Ok(()) };
    let Some((name, host)) = ran.registered else { return Ok(()) };
    if is_this_home(&crate::platform::hostname(), &ctx.paths.home, &name) {
        return Ok(());
    }
    let claimed = if ran.worker == name { String::new() } else { format!(", claimed as {}", ran.worker) };
    Err(Error::NotFound(format!(
        "job {id} run {run} ran on worker {name} (host {host}{claimed}); its output is in that daemon's home there, \
         not in {}: run `homerd logs {id} --run {run}` on {host} with that home",
        ctx.paths.home.display()
    )))
}

/// Whether a registered worker name (`<host>/<boot id>:<home>`, as a daemon registers
/// itself) is this host's daemon for this home.
fn is_this_home(host: &str, home: &Path, worker: &str) -> bool {
    // The boot id may itself hold ':' (it carries the pid namespace): match both ends.
    worker.starts_with(&format!("{host}/")) && worker.ends_with(&format!(":{}", home.display()))
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::{is_this_home, tail_start};
    use std::path::Path;

    #[test]
    fn a_worker_name_is_this_home_only_with_both_host_and_home() {
        let me = "vm/9020ca1a/pidns:4026531836:/tmp/h";
        assert!(is_this_home("vm", Path::new("/tmp/h"), me));
        assert!(!is_this_home("other", Path::new("/tmp/h"), me));
        assert!(!is_this_home("vm", Path::new("/tmp/other"), me));
        assert!(!is_this_home("vm", Path::new("/h"), me), "a suffix of the home is not the home");
    }

    #[test]
    fn tail_starts_at_the_last_lines() {
        let text = b"a\nb\nc\n";
        assert_eq!(&text[tail_start(text, 1)..], b"c\n");
        assert_eq!(&text[tail_start(text, 2)..], b"b\nc\n");
        assert_eq!(&text[tail_start(text, 9)..], b"a\nb\nc\n");
        assert_eq!(&text[tail_start(text, 0)..], b"");
        let open = b"a\nb";
        assert_eq!(&open[tail_start(open, 1)..], b"b");
    }
}
