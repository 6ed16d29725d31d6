//! `homerd status [--json]`: job counts, lanes, running jobs, metrics, and whether a
//! daemon is active.
//!
//! "Is a daemon running" is answered from the leader row plus a process-identity check,
//! never by taking or probing the lock, so a status loop can never make a daemon's start
//! fail. The database is opened read-only.

use std::time::Duration;

use serde_json::json;

use crate::cmd::context::Context;
use crate::cmd::queue::{Daemon, Queue};
use crate::duration::format_duration;
use crate::error::{exit, Error, Result};
use crate::postgres::workers::WorkerRow;
use crate::sqlite::leader::{HolderState, LeaderRow};
use crate::{outln, output};

fn holder_json(row: &LeaderRow, state: &HolderState) -> serde_json::Value {
    let (name, pid, age) = match state {
        HolderState::None => ("none", None, None),
        HolderState::Active { pid, age } => ("active", Some(*pid), Some(age.as_millis() as u64)),
        HolderState::Stale { pid, age } => ("stale", Some(*pid), Some(age.as_millis() as u64)),
        HolderState::Dead { pid } => ("dead", Some(*pid), None),
    };
    json!({
        "state": name,
        "active": matches!(state, HolderState::Active { .. }),
        "pid": pid,
        "epoch": row.epoch,
        "role": row.role,
        "lock_file": row.lock_path,
        "seen_age_ms": age,
    })
}

/// The leader row's holder in words (`status`, and `doctor`'s "daemon running" check).
pub(crate) fn describe_holder(state: &HolderState) -> String {
    match state {
        HolderState::None => String::from("not running"),
        HolderState::Active { pid, age } => format!("active (PID {pid}, seen {} ago)", format_age(*age)),
        HolderState::Stale { pid, age } => {
            format!("stalled: PID {pid} is alive but was last seen {} ago", format_age(*age))
        }
        HolderState::Dead { pid } => format!("not running (last holder PID {pid} is gone)"),
    }
}

/// An age as status prints it: milliseconds under 10 s, whole seconds above.
fn format_age(d: Duration) -> String {
    if d < Duration::from_secs(10) {
        format!("{}ms", d.as_millis())
    } else {
        format_duration(Duration::from_secs(d.as_secs()))
    }
}

/// `homerd status [--json]`. On PostgreSQL every age is by the server's clock, and the
/// live workers (registered, neither fenced nor stopped) stand in for the leader row:
/// `daemon.state` is `active` when one was heard from within its stale threshold, `stale`
/// when every live one is overdue, `none` without any; `--json` has the SQLite keys plus
/// `"workers"`.
pub fn status(ctx: &Context, as_json: bool) -> Result<i32> {
    let Some(mut queue) = Queue::read_only(ctx)? else {
        let db = &ctx.paths.database;
        if as_json {
            output::json(
                &json!({"database": output::path_json(db), "exists": false, "daemon": {"state": "none", "active": false}}),
            )?;
        } else {
            outln!("database: {} (not created yet: start the daemon with `homerd run`)", db.display())?;
            outln!("daemon:   not running")?;
        }
        return Ok(exit::OK);
    };
    let o = queue.overview(ctx)?;
    let now = o.now;
    let oldest_pending_age_ms = o.oldest_pending.map(|t| (now - t).max(0));
    if as_json {
        let running: Vec<_> = o
            .running
            .iter()
            .map(|j| {
                json!({
                    "id": j.id,
                    "lane": j.lane,
                    "kind": j.kind,
                    "owner": j.locked_by,
                    "heartbeat_age_ms": j.heartbeat_at.map(|h| (now - h).max(0)),
                })
            })
            .collect();
        let known = queue.known_migrations();
        let mut out = json!({
            "database": queue.shown_json(),
            "exists": true,
            "schema": {"applied": known, "known": known},
            "daemon": daemon_json(&o.daemon),
            "jobs": o.counts,
            "lanes": o.lanes,
            "oldest_pending_age_ms": oldest_pending_age_ms,
            "running": running,
            "metrics": o.metrics,
        });
        if let Daemon::Workers(live) = &o.daemon {
            let workers: Vec<_> = live
                .iter()
                .map(|w| {
                    let mut v = serde_json::to_value(w).map_err(|e| Error::Internal(format!("JSON output: {e}")))?;
                    v["stale"] = json!(w.seen_ms_ago > w.stale_ms);
                    Ok(v)
                })
                .collect::<Result<_>>()?;
            out["workers"] = serde_json::Value::Array(workers);
        }
        output::json(&out)?;
        return Ok(exit::OK);
    }
    outln!("database: {}", queue.shown())?;
    match &o.daemon {
        Daemon::Leader { row, state } => {
            outln!("daemon:   {}", describe_holder(state))?;
            if matches!(state, HolderState::Active { .. } | HolderState::Stale { .. }) {
                outln!("epoch:    {}", row.epoch)?;
                outln!("lock:     {}", row.lock_path.as_deref().unwrap_or("-"))?;
            }
        }
        Daemon::Workers(live) => match workers_state(live) {
            ("none", _) => outln!("daemon:   not running (no live worker)")?,
            ("stale", _) => {
                outln!("daemon:   stalled: {} worker(s), none seen within its stale threshold", live.len())?
            }
            (_, fresh) => {
                outln!("daemon:   active ({fresh} of {} live worker(s) seen within their stale threshold)", live.len())?
            }
        },
    }
    let line: Vec<String> = o.counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
    outln!("jobs:     {}", line.join(", "))?;
    for (lane, by_status) in &o.lanes {
        let line: Vec<String> = by_status.iter().map(|(k, v)| format!("{k} {v}")).collect();
        outln!("  lane {lane}: {}", line.join(", "))?;
    }
    if let Some(age) = oldest_pending_age_ms {
        outln!("oldest pending: {} ago", format_age(Duration::from_millis(age as u64)))?;
    }
    for j in &o.running {
        let hb = j.heartbeat_at.map(|h| format_age(Duration::from_millis((now - h).max(0) as u64)));
        outln!(
            "running:  job {} ({} in lane {}), heartbeat {} ago, owner {}",
            j.id,
            j.kind,
            j.lane,
            hb.as_deref().unwrap_or("never"),
            j.locked_by.as_deref().unwrap_or("-")
        )?;
    }
    if let Daemon::Workers(live) = &o.daemon {
        for w in live {
            outln!(
                "worker:   {} {} (host {}, PID {}), seen {} ago{}, running {}",
                w.incarnation,
                w.name,
                w.host,
                w.pid,
                format_age(Duration::from_millis(w.seen_ms_ago.max(0) as u64)),
                if w.seen_ms_ago > w.stale_ms { " (stale)" } else { "" },
                w.running
            )?;
        }
    }
    let line: Vec<String> = o.metrics.iter().map(|(k, v)| format!("{k} {v}")).collect();
    outln!("metrics:  {}", line.join(", "))?;
    Ok(exit::OK)
}

/// The live workers' state as `status` names it (`none`, `stale`, `active`), with how
/// many were seen within their stale threshold.
fn workers_state(live: &[WorkerRow]) -> (&'static str, usize) {
    let fresh = live.iter().filter(|w| w.seen_ms_ago <= w.stale_ms).count();
    let state = match (fresh, live.len()) {
        (0, 0) => "none",
        (0, _) => "stale",
        _ => "active",
    };
    (state, fresh)
}

/// `--json`'s `"daemon"`.
fn daemon_json(daemon: &Daemon) -> serde_json::Value {
    match daemon {
        Daemon::Leader { row, state } => holder_json(row, state),
        Daemon::Workers(live) => {
            let (state, fresh) = workers_state(live);
            json!({"state": state, "active": fresh > 0, "workers": live.len()})
        }
    }
}

/// `homerd status --watch [--interval D] [--json]`: `status` again every `interval` until
/// Ctrl-C. On a terminal each refresh clears the screen first, so the report stays in
/// place; otherwise (a pipe, a file) each report follows the last after a blank line,
/// with no control characters. With `--json`, one status object per refresh, one per line
/// (JSON Lines, never a control character). The database is reopened every time, so a
/// daemon's first start, a migration or a restore shows up. Everything goes through
/// `output.rs`: a reader that closes stdout ends the watch quietly (exit 0).
pub fn watch(ctx: &Context, interval: &str, as_json: bool) -> Result<i32> {
    use std::io::IsTerminal;
    let interval = crate::duration::parse_duration(interval).map_err(|e| Error::Usage(format!("--interval: {e}")))?;
    if interval.is_zero() {
        return Err(Error::Usage(String::from("--interval: must be more than 0, e.g. 1s")));
    }
    let tty = !as_json && std::io::stdout().is_terminal();
    let mut first = true;
    loop {
        if tty {
            // Home, clear the screen: the next report replaces this one.
            output::text("\x1b[H\x1b[2J")?;
        } else if !first && !as_json {
            outln!()?;
        }
        first = false;
        match status(ctx, as_json) {
            Ok(_) => {}
            Err(Error::StdoutClosed) => return Err(Error::StdoutClosed),
            // A refresh that meets the database mid-restore or mid-migration, or a
            // PostgreSQL server restarting, is reported and tried again at the next
            // interval: a watch outlives them.
            Err(e) => crate::cli::report_error(as_json, &e),
        }
        pause(interval)?;
    }
}

/// The poll interval the operator asked for (not a wait for some condition), in slices
/// that ask whether stdout's reader is still there: `status --watch --interval 1h | head
/// -3` ends when head does, not at the next write an hour later.
fn pause(interval: Duration) -> Result<()> {
    const SLICE: Duration = Duration::from_millis(200);
    let until = std::time::Instant::now() + interval;
    loop {
        if output::reader_gone() {
            return Err(Error::StdoutClosed);
        }
        let left = until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(SLICE));
    }
}
