//! Every byte a command prints on stdout goes through here (`println!` is a lint error in
//! the daemon crate: `clippy::print_stdout`, switched on in `lib.rs`).
//!
//! Two things are decided once, here, rather than at every call site:
//!
//! - **A closed stdout is the reader's choice, not a failure.** `homerd list | head -1`
//!   closes the pipe after one line; the next write fails with `EPIPE` (Rust ignores
//!   SIGPIPE, so the process is not killed: `println!` would panic instead). Every
//!   writer here turns `BrokenPipe` into [`Error::StdoutClosed`], which `cli::main`
//!   ends with status 0 and nothing on stderr, as ripgrep does (a command that reached
//!   a verdict before printing keeps it: `doctor`'s 1). Commands act first and report
//!   after, so what the command did (an enqueue committed, a cancel recorded) stays
//!   done and only the rest of its report is dropped. Any other write error (a full
//!   disk behind `>`) is an I/O error naming `<stdout>` (exit 74).
//! - **The JSON contract** (README "The JSON contract"): one compact JSON value per line,
//!   never pretty-printed; every point in time as epoch milliseconds with its RFC 3339
//!   form beside it ([`with_times`]).

use std::fmt;
use std::io::{self, Write};

use serde::Serialize;
use serde_json::Value;

use crate::clock::format_rfc3339;
use crate::error::{Error, Result};

/// What a failed write to stdout means for the command.
fn write_error(e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::BrokenPipe {
        Error::StdoutClosed
    } else {
        Error::io("write", "<stdout>", e)
    }
}

/// Writes formatted text to stdout (the target of [`outln!`](crate::outln)).
pub fn write_fmt(args: fmt::Arguments<'_>) -> Result<()> {
    io::stdout().lock().write_fmt(args).map_err(write_error)
}

/// Writes `text` to stdout as it is (a unit file, many lines at once).
pub fn text(text: &str) -> Result<()> {
    io::stdout().lock().write_all(text.as_bytes()).map_err(write_error)
}

/// Writes raw bytes to stdout and flushes them (a job's output, which need not be UTF-8
/// nor end in a newline: `logs -f` shows a partial line as soon as it is written).
pub fn bytes(buf: &[u8]) -> Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(buf).and_then(|_| out.flush()).map_err(write_error)
}

/// Whether stdout is a pipe or socket whose reader has gone, asked without writing. A
/// command that writes only now and then (`logs -f` on a quiet job) would otherwise meet
/// the closed pipe only at its next write, which may never come. A terminal, a file or
/// an open pipe is not gone; neither is anything `poll` cannot answer for.
///
/// Linux flags a pipe's write end `POLLERR` once no reader is left, and a socket's
/// `POLLHUP` once the peer shut it down, whatever events were asked for. macOS (like
/// illumos) reports nothing for a descriptor polled with no events, so the request
/// names `POLLRDBAND`, which a write end never raises itself; with it the closed pipe
/// shows as `POLLERR`/`POLLHUP` there too (GNU `tail -f` relies on the same).
pub fn reader_gone() -> bool {
    use rustix::event::{poll, PollFd, PollFlags};
    let stdout = rustix::stdio::stdout();
    let mut fds = [PollFd::new(&stdout, PollFlags::RDBAND)];
    let zero = rustix::time::Timespec { tv_sec: 0, tv_nsec: 0 };
    match poll(&mut fds, Some(&zero)) {
        Ok(n) if n > 0 => fds[0].revents().intersects(PollFlags::ERR | PollFlags::HUP),
        _ => false,
    }
}

/// A path as a JSON string. `json!` on a `Path` panics when the path is not UTF-8
/// (serde refuses it); a path shown to an operator is better with a replacement
/// character than a crash.
pub fn path_json(p: &std::path::Path) -> Value {
    Value::String(p.to_string_lossy().into_owned())
}

/// Writes one JSON value as one compact line.
pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<()> {
    let mut line = serde_json::to_string(value).map_err(|e| Error::Internal(format!("JSON output: {e}")))?;
    line.push('\n');
    text(&line)
}

/// `println!` for command output: `outln!("job {id} cancelled")?`. Returns the
/// [`Result`] of the write, so a closed stdout ends the command (see the module docs).
#[macro_export]
macro_rules! outln {
    () => {
        $crate::output::text("\n")
    };
    ($($arg:tt)*) => {
        $crate::output::write_fmt(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// The names under which homerd's JSON carries a point in time (epoch milliseconds):
/// each gets a sibling `<name>_rfc3339` with the same instant as an RFC 3339 UTC string
/// (`null` beside a `null`). Durations and ages are not times: they end in `_ms`.
const TIME_KEYS: &[&str] =
    &["created_at", "run_after", "started_at", "completed_at", "heartbeat_at", "cancel_requested_at", "ended_at", "at"];

/// Adds the `_rfc3339` companion of every time field ([`TIME_KEYS`]) in `value`, at any
/// depth.
pub fn with_times(mut value: Value) -> Value {
    add_times(&mut value);
    value
}

fn add_times(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let mut extra = Vec::new();
            for (k, v) in map.iter_mut() {
                if TIME_KEYS.contains(&k.as_str()) {
                    let text = match v {
                        Value::Number(n) => n.as_i64().map(|ms| Value::String(format_rfc3339(ms))),
                        Value::Null => Some(Value::Null),
                        _ => None,
                    };
                    if let Some(text) = text {
                        extra.push((format!("{k}_rfc3339"), text));
                    }
                } else {
                    add_times(v);
                }
            }
            map.extend(extra);
        }
        Value::Array(items) => items.iter_mut().for_each(add_times),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_time_gets_its_rfc3339_companion_at_any_depth() {
        let v = with_times(json!({
            "job": {"id": 7, "created_at": 0, "completed_at": null, "runs": 2},
            "errors": [{"at": 1_700_000_000_123_i64, "error": "x"}],
            "seen_age_ms": 5,
        }));
        assert_eq!(v["job"]["created_at_rfc3339"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["job"]["completed_at_rfc3339"], Value::Null);
        assert!(v["job"].get("completed_at_rfc3339").is_some(), "a null time keeps a null companion");
        assert_eq!(v["errors"][0]["at_rfc3339"], "2023-11-14T22:13:20.123Z");
        assert!(v.get("seen_age_ms_rfc3339").is_none(), "ages are not times");
        assert!(v["job"].get("runs_rfc3339").is_none());
    }

    #[test]
    fn a_broken_pipe_is_the_readers_choice_and_other_errors_are_io() {
        assert!(matches!(write_error(io::Error::from(io::ErrorKind::BrokenPipe)), Error::StdoutClosed));
        let full = write_error(io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(full.exit_code(), crate::error::exit::IO);
        assert!(full.to_string().contains("<stdout>"), "{full}");
    }
}
