//! `signal`: send a signal to a process (its pid, not its group), or pause it outside a
//! write transaction.

use std::time::{Duration, Instant};

use super::{Mark, MarkKind, Verb};
use crate::exec::ctx::{exit_text, fail, harness_rw, matches_target, Ctx, ProcState, StepError};
use crate::scenario::kit::{Cx, Field, Res, Tbl};

/// Send a signal to a background process (its pid, not its group).
/// With `outside_write` (STOP only): pause the process at a moment it holds no SQLite
/// write transaction (on PostgreSQL: no lock on its worker row), as a scenario about a
/// pause means.
#[derive(Clone, Debug)]
pub struct Signal {
    pub target: String,
    pub signal: Sig,
    pub outside_write: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sig {
    Kill,
    Term,
    Int,
    Stop,
    Cont,
    Hup,
}

const SIGNALS: &[(&str, Sig)] = &[
    ("KILL", Sig::Kill),
    ("TERM", Sig::Term),
    ("INT", Sig::Int),
    ("STOP", Sig::Stop),
    ("CONT", Sig::Cont),
    ("HUP", Sig::Hup),
];

impl Verb for Signal {
    const KEY: &'static str = "signal";
    const OPTIONS: &'static [&'static str] = &["sig", "outside_write"];

    fn parse(cx: &mut Cx<'_>, t: &Tbl<'_>, v: &Field<'_>) -> Res<Signal> {
        Self::only_its_options(cx, t)?;
        let target = cx.text(v)?;
        let sig = cx.need(t, "sig", &v.key_span, String::from("`signal` needs `sig` (e.g. \"KILL\" or \"TERM\")"))?;
        let signal = sig.str().and_then(parse_sig).ok_or_else(|| {
            cx.wrong(&sig, "a signal name (KILL, TERM, INT, STOP, CONT or HUP, optionally with a SIG prefix)")
        })?;
        let outside_write = cx.opt(t, "outside_write", Cx::boolean)?.unwrap_or(false);
        if outside_write && signal != Sig::Stop {
            let f = t.get("outside_write").expect("present");
            return Err(cx.wrong(&f, "`outside_write = true` only with sig = \"STOP\""));
        }
        Ok(Signal { target, signal, outside_write })
    }

    fn summary(&self) -> String {
        format!("signal {:?} to {}", self.signal, self.target)
    }

    fn mark(&self) -> Option<Mark> {
        let (kind, what) = match self.signal {
            Sig::Kill => (MarkKind::Kill, "kill -9"),
            Sig::Stop => (MarkKind::Pause, "pause"),
            Sig::Cont => (MarkKind::Resume, "resume"),
            Sig::Term => (MarkKind::Signal, "TERM"),
            Sig::Int => (MarkKind::Signal, "INT"),
            Sig::Hup => (MarkKind::Signal, "HUP"),
        };
        Some(Mark { kind, label: format!("{what} {}", self.target), target: Some(self.target.clone()) })
    }

    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        if self.outside_write {
            pause_outside_write(ctx, &self.target, self.signal)
        } else {
            signal(ctx, &self.target, self.signal)
        }
    }
}

/// Parse a signal name: `KILL`, `sigterm`, `SIGINT`, ...
pub(crate) fn parse_sig(s: &str) -> Option<Sig> {
    let upper = s.trim().to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    SIGNALS.iter().find(|(n, _)| *n == name).map(|(_, sig)| *sig)
}

/// Send `sig` to the process `target` names (or to the living members of a group).
fn signal(ctx: &mut Ctx, target: &str, sig: Sig) -> Result<(), StepError> {
    let signo = match sig {
        Sig::Kill => libc::SIGKILL,
        Sig::Term => libc::SIGTERM,
        Sig::Int => libc::SIGINT,
        Sig::Stop => libc::SIGSTOP,
        Sig::Cont => libc::SIGCONT,
        Sig::Hup => libc::SIGHUP,
    };
    let mut st = ctx.shared.lock();
    let mut targets: Vec<&mut ProcState> = st.procs.iter_mut().filter(|p| matches_target(target, &p.name)).collect();
    if targets.is_empty() {
        return fail(format!("a process named {target}"), String::from("none was started"));
    }
    // A group selector signals the members still alive (the fuzzer aims at "whoever is
    // left"); a named process must still be running.
    let group = target.contains('*');
    for p in targets.iter_mut() {
        if p.exited.is_some() && group {
            continue;
        }
        if p.exited.is_some() {
            return fail(
                format!("{} running to receive {sig:?}", p.name),
                format!("it exited {}", exit_text(p.code, p.signal)),
            );
        }
        if signo == libc::SIGKILL && p.killed.is_none() {
            // Stamped before the signal goes: no release can precede it.
            p.killed = Some(std::time::Instant::now());
        }
        // The waiter thread has not reaped this pid (exited is None under the lock, and it
        // records the exit under the same lock), so it still names our child.
        crate::procs::signal_pid(p.pid, signo);
    }
    Ok(())
}

/// SIGSTOP `target` at a moment it holds no write transaction on the database: a process
/// stopped inside one blocks every other writer until it resumes (SQLite's write lock
/// is a file lock the stopped process keeps), which is a different scenario from a
/// paused daemon being taken over. After each STOP the harness tries `BEGIN IMMEDIATE`
/// without waiting; if the lock is taken, it resumes the process, waits for its next
/// event, and tries again.
fn pause_outside_write(ctx: &mut Ctx, target: &str, sig: Sig) -> Result<(), StepError> {
    let deadline = ctx.deadline(Duration::from_secs(10));
    let mut tries = 0;
    loop {
        signal(ctx, target, sig)?;
        tries += 1;
        let free = match ctx.pg_url.clone() {
            Some(url) => worker_row_free(ctx, &url, target)?,
            None => !ctx.db().exists() || write_lock_free(ctx)?,
        };
        if free {
            return Ok(());
        }
        signal(ctx, target, Sig::Cont)?;
        if Instant::now() >= deadline {
            return fail(
                format!("{target} paused outside a write transaction"),
                format!("it held one at each of {tries} tries"),
            );
        }
        let seen = ctx.shared.lock().events.iter().filter(|e| matches_target(target, &e.proc_name)).count();
        ctx.shared.wait_for(Instant::now() + ctx.scaled(Duration::from_secs(1)), |st| {
            (st.events.iter().filter(|e| matches_target(target, &e.proc_name)).count() > seen).then_some(())
        });
    }
}

/// PostgreSQL: whether the stopped `target`'s worker row is free of its own lock. Every
/// write transaction of a daemon begins by taking `FOR SHARE` on its worker row, and the
/// stale sweep passes over locked rows (`SKIP LOCKED`), so a daemon stopped inside one
/// would never be judged stale while it stays stopped — a different scenario from a paused
/// host being fenced. Probed with `FOR NO KEY UPDATE NOWAIT` (the weakest lock that
/// conflicts with `FOR SHARE`) in a transaction that is rolled back at once. A target
/// that has registered no worker row (not yet, or on SQLite) holds none.
fn worker_row_free(ctx: &Ctx, url: &str, target: &str) -> Result<bool, StepError> {
    let incarnation = {
        let st = ctx.shared.lock();
        st.events
            .iter()
            .rev()
            .find(|e| matches_target(target, &e.proc_name) && e.name() == "worker.registered")
            .and_then(|e| e.field_i64("incarnation"))
    };
    let Some(incarnation) = incarnation else { return Ok(true) };
    let err = |e: postgres::Error| StepError {
        expected: String::from("to probe the worker row's lock"),
        actual: e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string()),
    };
    let mut config: postgres::Config = url.parse().map_err(err)?;
    config.connect_timeout(ctx.scaled(Duration::from_secs(10)));
    let mut client = config.connect(postgres::NoTls).map_err(err)?;
    let mut tx = client.transaction().map_err(err)?;
    let probe =
        tx.query("SELECT 1 FROM homer_workers WHERE incarnation = $1 FOR NO KEY UPDATE NOWAIT", &[&incarnation]);
    let free = match probe {
        Ok(_) => true,
        Err(e) if e.code() == Some(&postgres::error::SqlState::LOCK_NOT_AVAILABLE) => false,
        Err(e) => return Err(err(e)),
    };
    tx.rollback().map_err(err)?;
    Ok(free)
}

/// Whether a write transaction can begin at once (nobody holds SQLite's write lock).
fn write_lock_free(ctx: &Ctx) -> Result<bool, StepError> {
    let err = |e: rusqlite::Error| StepError {
        expected: String::from("to probe the database write lock"),
        actual: e.to_string(),
    };
    let conn = harness_rw(&ctx.db()).map_err(err)?;
    conn.busy_timeout(Duration::ZERO).map_err(err)?;
    match conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK") {
        Ok(()) => Ok(true),
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::DatabaseBusy => Ok(false),
        Err(e) => Err(err(e)),
    }
}
