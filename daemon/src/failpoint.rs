//! Failpoints: named places where a test can stop, kill or fail the daemon.
//!
//! Compiled into every build and inert unless `HOMERD_FAILPOINTS` names some, e.g.
//! `HOMERD_FAILPOINTS='lock.after_open=stop;migrate.mid_file=abort'`. Actions:
//!
//! - `stop`: emit `failpoint.hit`, then SIGSTOP ourselves (the harness sends SIGCONT);
//! - `abort`: emit `failpoint.hit`, then SIGKILL ourselves (a crash at exactly that point);
//! - `error` or `error(ENOLCK)` / `error(95)`: the operation fails with that errno (EIO
//!   by default);
//! - `sleep(ms)`: pause this thread.
//!
//! Armed failpoints are announced at startup (`failpoint.armed`), so a failpoint left in
//! an environment by accident is visible in the log.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use crate::events;

pub const ENV: &str = "HOMERD_FAILPOINTS";

/// Every failpoint homerd defines (documented in README "Failpoints").
pub const KNOWN: &[&str] = &[
    "lock.after_open",
    "lock.after_flock",
    "lock.flock_error",
    "migrate.mid_file",
    "epoch.before_bump",
    "shutdown.before_release",
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Stop,
    Abort,
    Error(i32),
    Sleep(u64),
}

/// An armed failpoint: its action and, with `action@N`, how many more hits may act.
struct Armed {
    action: Action,
    remaining: Option<AtomicU32>,
}

fn armed() -> &'static BTreeMap<String, Armed> {
    static ARMED: OnceLock<BTreeMap<String, Armed>> = OnceLock::new();
    ARMED.get_or_init(|| match std::env::var(ENV) {
        Ok(spec) => parse_limited(&spec).unwrap_or_else(|e| {
            // Unparseable failpoints are a broken test setup: refuse loudly rather than
            // run a test that silently does not inject its fault.
            eprintln!("homerd: {ENV}: {e}");
            std::process::exit(crate::error::exit::USAGE);
        }),
        Err(_) => BTreeMap::new(),
    })
}

/// Parses `name=action;name=action` (a `@N` suffix is accepted and dropped here).
pub fn parse(spec: &str) -> Result<BTreeMap<String, Action>, String> {
    Ok(parse_limited(spec)?.into_iter().map(|(k, a)| (k, a.action)).collect())
}

/// Parses `name=action[@N];...`: with `@N` only the first N hits act (later hits are
/// inert), so a scenario can stop a retry loop exactly once.
fn parse_limited(spec: &str) -> Result<BTreeMap<String, Armed>, String> {
    let mut out = BTreeMap::new();
    for item in spec.split([';', ',']).map(str::trim).filter(|s| !s.is_empty()) {
        let (name, action) = item.split_once('=').ok_or_else(|| format!("`{item}`: expected name=action"))?;
        let name = name.trim();
        if !KNOWN.contains(&name) && !name.starts_with("test.") && !extra_known(name) {
            return Err(format!("unknown failpoint `{name}`; known: {}", all_known().join(", ")));
        }
        let (action, limit) = match action.trim().rsplit_once('@') {
            Some((a, n)) => {
                let n: u32 = n.trim().parse().map_err(|_| format!("`{item}`: expected action@N with N a count"))?;
                (a, Some(AtomicU32::new(n)))
            }
            None => (action.trim(), None),
        };
        out.insert(name.to_owned(), Armed { action: parse_action(action.trim())?, remaining: limit });
    }
    Ok(out)
}

fn extra_known(name: &str) -> bool {
    EXTRA.contains(&name)
}

/// Failpoints added by later parts of the daemon (the job engine).
const EXTRA: &[&str] = &[
    "claim.after_commit",
    "job.after_spawn_before_record",
    "job.before_complete",
    "heartbeat.before_commit",
    "recovery.before_kill",
    "watchdog.killer_thread",
    "engine.job_thread",
];

fn all_known() -> Vec<&'static str> {
    KNOWN.iter().chain(EXTRA.iter()).copied().collect()
}

fn parse_action(s: &str) -> Result<Action, String> {
    let arg = |prefix: &str| s.strip_prefix(prefix).and_then(|r| r.strip_suffix(')'));
    match s {
        "stop" => Ok(Action::Stop),
        "abort" => Ok(Action::Abort),
        "error" => Ok(Action::Error(libc::EIO)),
        _ => {
            if let Some(ms) = arg("sleep(") {
                return ms.trim().parse().map(Action::Sleep).map_err(|_| format!("`{s}`: bad milliseconds"));
            }
            if let Some(code) = arg("error(") {
                return errno_by_name(code.trim())
                    .or_else(|| code.trim().parse().ok())
                    .map(Action::Error)
                    .ok_or_else(|| format!("`{s}`: unknown errno"));
            }
            Err(format!("`{s}`: expected stop, abort, error, error(ERRNO) or sleep(MS)"))
        }
    }
}

fn errno_by_name(name: &str) -> Option<i32> {
    Some(match name {
        "EIO" => libc::EIO,
        "ENOLCK" => libc::ENOLCK,
        "ENOTSUP" | "EOPNOTSUPP" => libc::ENOTSUP,
        "EINVAL" => libc::EINVAL,
        "EACCES" => libc::EACCES,
        "ENOSPC" => libc::ENOSPC,
        "EBADF" => libc::EBADF,
        _ => return None,
    })
}

/// Announces armed failpoints (called once the event sink is configured).
pub fn announce() {
    let armed = armed();
    if !armed.is_empty() {
        let list: Vec<String> = armed
            .iter()
            .map(|(k, v)| match &v.remaining {
                Some(n) => format!("{k}={:?}@{}", v.action, n.load(Ordering::Relaxed)),
                None => format!("{k}={:?}", v.action),
            })
            .collect();
        events::warn("failpoint.armed", "Failpoints armed (test build hooks)")
            .field("failpoints", list.join(";"))
            .emit();
    }
}

/// Whether `name` is armed (its hits may be used up): for a hook that must be routed
/// somewhere before it is hit.
pub fn is_armed(name: &'static str) -> bool {
    armed().contains_key(name)
}

/// Runs the failpoint `name` if armed. `Ok(())` when inert.
pub fn hit(name: &'static str) -> io::Result<()> {
    debug_assert!(all_known().contains(&name) || name.starts_with("test."), "undeclared failpoint {name}");
    let Some(armed) = armed().get(name) else { return Ok(()) };
    if let Some(remaining) = &armed.remaining {
        if remaining.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_err() {
            return Ok(()); // its hits are used up
        }
    }
    let action = &armed.action;
    events::warn("failpoint.hit", "Failpoint hit").field("failpoint", name).emit();
    match action {
        Action::Stop => {
            // `failpoint.hit` out first: a stopped process writes nothing.
            events::flush_stderr(events::STDERR_FLUSH);
            crate::platform::signal_self(crate::platform::Signal::STOP);
            Ok(())
        }
        Action::Abort => {
            events::flush_stderr(events::STDERR_FLUSH);
            // SIGKILL does not return.
            crate::platform::signal_self(crate::platform::Signal::KILL);
            unreachable!("SIGKILL to self returned")
        }
        Action::Error(errno) => Err(io::Error::from_raw_os_error(*errno)),
        Action::Sleep(ms) => {
            std::thread::sleep(Duration::from_millis(*ms));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_action() {
        let m = parse("lock.after_open=stop; lock.flock_error=error(ENOLCK),migrate.mid_file=abort;epoch.before_bump=sleep(25);shutdown.before_release=error").unwrap();
        assert_eq!(m["lock.after_open"], Action::Stop);
        assert_eq!(m["lock.flock_error"], Action::Error(libc::ENOLCK));
        assert_eq!(m["migrate.mid_file"], Action::Abort);
        assert_eq!(m["epoch.before_bump"], Action::Sleep(25));
        assert_eq!(m["shutdown.before_release"], Action::Error(libc::EIO));
    }

    #[test]
    fn a_count_limits_the_hits_that_act() {
        let m = parse_limited("lock.after_open=error(EIO)@2").unwrap();
        let armed = &m["lock.after_open"];
        assert_eq!(armed.action, Action::Error(libc::EIO));
        let take =
            || armed.remaining.as_ref().unwrap().fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        assert!(take().is_ok() && take().is_ok());
        assert!(take().is_err(), "a third hit must be inert");
        assert!(parse("lock.after_open=stop@x").is_err());
    }

    #[test]
    fn rejects_unknown_names_and_actions() {
        assert!(parse("lock.no_such_point=stop").unwrap_err().contains("unknown failpoint"));
        assert!(parse("lock.after_open=explode").is_err());
        assert!(parse("lock.after_open").is_err());
        assert!(parse("lock.after_open=sleep(x)").is_err());
        assert!(parse("lock.after_open=error(EWHAT)").is_err());
    }
}
