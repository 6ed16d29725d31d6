//! Structured events: every lifecycle step has a stable name (`lock.acquired`,
//! `daemon.active`, ...) and a human message (the original daemon's log lines, e.g. "Daemon lock
//! acquired"). Events go to stderr — JSON lines with `--log-format json`, human lines
//! otherwise — and, for the lock holder only, to `<home>/logs/homer.log` once
//! [`open_log_file`] is called (after the leader row accepted the start). A losing or
//! refused start therefore never opens, creates or writes the log file.
//!
//! Colour only when stderr is a terminal and `NO_COLOR` is unset.
//!
//! **A daemon never waits on its stderr.** A terminal paused with Ctrl-S, or a pipe whose
//! reader stopped reading (`homerd run 2>&1 | slow`), blocks a write once its buffer is
//! full; a daemon thread blocked there would renew no lease and stop no overdue job — on
//! PostgreSQL another host would re-run a job whose process group lives on. So `run`
//! calls [`detach_stderr`]: from then on a line for stderr is queued (at most
//! [`STDERR_BACKLOG`] lines) for one writer thread, the only one that may block, and a
//! line that finds the queue full is dropped and counted (`events.dropped`, once stderr
//! moves again). The log file is still written in line. [`flush_stderr`] waits (bounded)
//! for the queue before the process exits or stops itself (a failpoint), so the lines a
//! harness waits on are out first.
//!
//! Levels: an event below the threshold ([`set_level`]; INFO unless the operator asks for
//! more or less with `-v`/`-q`, `--log-level` or the `log_level` setting) is dropped from
//! both stderr and the log file. Routine repeats — heartbeats, lease renewals, counters —
//! are DEBUG, so a default `homer.log` holds what an operator acts on.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::clock::{format_rfc3339, Clock};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Human,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    /// Every level, least severe first.
    pub const ALL: [Level; 4] = [Level::Debug, Level::Info, Level::Warn, Level::Error];

    /// Reads `debug`, `info`, `warn` or `error` (any case).
    pub fn parse(text: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|l| l.as_str().eq_ignore_ascii_case(text.trim()))
    }

    /// `steps` levels more verbose (negative: quieter), clamped to DEBUG..=ERROR.
    pub fn shifted(self, steps: i32) -> Level {
        let at = Level::ALL.iter().position(|l| *l == self).unwrap_or(1) as i32;
        Level::ALL[(at - steps).clamp(0, Level::ALL.len() as i32 - 1) as usize]
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

struct Sink {
    format: Format,
    colour: bool,
    clock: Clock,
    file: Mutex<Option<LogFile>>,
}

/// The daemon log: size-based rotation, `homer.log` -> `homer.log.1` -> ... ->
/// `homer.log.{ROTATE_KEEP}` (the oldest dropped).
struct LogFile {
    file: File,
    path: std::path::PathBuf,
    written: u64,
    /// The last write failed: the file may end in part of a line.
    torn: bool,
}

/// Rotate the daemon log past this size.
pub const ROTATE_BYTES: u64 = 10 * 1024 * 1024;
/// Rotated files kept.
pub const ROTATE_KEEP: u32 = 3;

impl LogFile {
    fn write_line(&mut self, text: &str) {
        if self.written + text.len() as u64 > ROTATE_BYTES {
            self.rotate();
        }
        // A write that failed (a full disk) may have left part of its line: the next
        // line starts on a line of its own, so one torn line never swallows a whole one.
        if self.torn && self.file.write_all(b"\n").is_ok() {
            self.torn = false;
            self.written += 1;
        }
        if self.torn {
            return;
        }
        match self.file.write_all(text.as_bytes()) {
            Ok(()) => self.written += text.len() as u64,
            Err(_) => self.torn = true,
        }
    }

    fn rotate(&mut self) {
        let name = |n: u32| {
            let mut p = self.path.as_os_str().to_owned();
            p.push(format!(".{n}"));
            std::path::PathBuf::from(p)
        };
        for n in (1..ROTATE_KEEP).rev() {
            let _ = std::fs::rename(name(n), name(n + 1));
        }
        let _ = std::fs::rename(&self.path, name(1));
        if let Ok(f) = open_append(&self.path) {
            self.file = f;
            self.torn = false;
        }
        // Even if the reopen failed (we keep writing to the renamed file), start counting
        // afresh: never rotate on every line.
        self.written = 0;
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// This process's id, asked of the kernel once (glibc no longer caches it, and every
/// event carries it). The daemon never forks without an `exec`, so it cannot change.
fn pid() -> u32 {
    static PID: OnceLock<u32> = OnceLock::new();
    *PID.get_or_init(std::process::id)
}

/// The least severe level emitted, as its index in [`Level::ALL`]; INFO until
/// [`set_level`] (events emitted before the configuration is read use the flag's level,
/// or INFO).
static THRESHOLD: AtomicU8 = AtomicU8::new(1);

/// Sets the least severe level emitted, on stderr and in the log file alike.
pub fn set_level(level: Level) {
    let at = Level::ALL.iter().position(|l| *l == level).unwrap_or(1);
    THRESHOLD.store(at as u8, Ordering::Relaxed);
}

/// Whether an event at `level` would be emitted.
pub fn enabled(level: Level) -> bool {
    Level::ALL.iter().position(|l| *l == level).unwrap_or(1) >= usize::from(THRESHOLD.load(Ordering::Relaxed))
}

fn sink() -> &'static Sink {
    SINK.get_or_init(|| Sink { format: Format::Human, colour: false, clock: Clock::from_env(), file: Mutex::new(None) })
}

/// Configures the sink; the first call wins (later calls are ignored).
pub fn init(format: Format) {
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let _ = SINK.set(Sink { format, colour, clock: Clock::from_env(), file: Mutex::new(None) });
}

/// Starts copying events to the log file (append, created 0600 with its directory 0700).
/// Only the lock holder calls this.
pub fn open_log_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    let file = open_append(path)?;
    let written = file.metadata().map(|m| m.len()).unwrap_or(0);
    *sink().file.lock().unwrap_or_else(|p| p.into_inner()) =
        Some(LogFile { file, path: path.to_owned(), written, torn: false });
    Ok(())
}

/// Stops writing to the log file (at shutdown, before the lock is released).
pub fn close_log_file() {
    if let Some(f) = sink().file.lock().unwrap_or_else(|p| p.into_inner()).take() {
        let _ = f.file.sync_all();
    }
}

/// How long a process about to exit or stop itself waits for its queued stderr lines.
pub const STDERR_FLUSH: Duration = Duration::from_secs(2);

/// How many lines may wait for a detached stderr before new ones are dropped.
pub const STDERR_BACKLOG: usize = 4096;

/// A detached stderr: the queue to its writer thread and how much of it is unwritten.
struct Detached {
    /// `None` if the writer thread could not be started: lines are written in line.
    tx: Mutex<Option<Sender<String>>>,
    /// Lines queued and not yet written; [`flush_stderr`] waits on `written` for zero.
    pending: Mutex<usize>,
    written: Condvar,
    dropped: AtomicU64,
}

static DETACHED: OnceLock<Detached> = OnceLock::new();

/// Writes `line` (newline included) to stderr: in line, or through the writer thread
/// once [`detach_stderr`] was called. A failed write is ignored (nowhere left to say it).
fn to_stderr(line: String) {
    let in_line = |line: String| {
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    };
    let Some(d) = DETACHED.get() else { return in_line(line) };
    {
        let mut pending = d.pending.lock().unwrap_or_else(|p| p.into_inner());
        if *pending >= STDERR_BACKLOG {
            d.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *pending += 1;
    }
    let tx = d.tx.lock().unwrap_or_else(|p| p.into_inner());
    let unsent = match tx.as_ref() {
        Some(tx) => tx.send(line).err().map(|e| e.0),
        None => Some(line),
    };
    drop(tx);
    if let Some(line) = unsent {
        d.mark_written();
        in_line(line);
    }
}

impl Detached {
    fn mark_written(&self) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        *pending = pending.saturating_sub(1);
        if *pending == 0 {
            self.written.notify_all();
        }
    }
}

/// From now on stderr lines go through one writer thread ([module docs](self)). Once per
/// process (later calls do nothing); if the thread cannot be started, stderr stays in
/// line.
pub fn detach_stderr() {
    if DETACHED.get().is_some() {
        return;
    }
    let (tx, rx) = channel::<String>();
    let detached = Detached {
        tx: Mutex::new(Some(tx)),
        pending: Mutex::new(0),
        written: Condvar::new(),
        dropped: AtomicU64::new(0),
    };
    if DETACHED.set(detached).is_err() {
        return;
    }
    let Some(d) = DETACHED.get() else { return };
    let writer = std::thread::Builder::new().name(String::from("stderr")).spawn(move || {
        for line in rx {
            let dropped = d.dropped.swap(0, Ordering::Relaxed);
            let mut err = std::io::stderr().lock();
            if dropped > 0 {
                let note = warn("events.dropped", "Event lines were dropped: stderr was not being read")
                    .field("count", dropped);
                let ts = format_rfc3339(sink().clock.wall_ms());
                let text = match sink().format {
                    Format::Json => note.to_json(&ts),
                    Format::Human => note.to_human(&ts, sink().colour),
                };
                let _ = err.write_all(format!("{text}\n").as_bytes());
            }
            let _ = err.write_all(line.as_bytes());
            drop(err);
            d.mark_written();
        }
    });
    if writer.is_err() {
        // Lines queued meanwhile are lost with the receiver; from here on, in line.
        *d.tx.lock().unwrap_or_else(|p| p.into_inner()) = None;
        *d.pending.lock().unwrap_or_else(|p| p.into_inner()) = 0;
    }
}

/// Waits until every queued stderr line is written, or `limit` passes (stderr may be
/// the very thing that is stuck): before the process exits or stops itself.
pub fn flush_stderr(limit: Duration) {
    let Some(d) = DETACHED.get() else { return };
    let deadline = Instant::now() + limit;
    let mut pending = d.pending.lock().unwrap_or_else(|p| p.into_inner());
    while *pending > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        pending = d.written.wait_timeout(pending, left).unwrap_or_else(|p| p.into_inner()).0;
    }
}

#[must_use = "call .emit()"]
pub struct Event {
    level: Level,
    name: &'static str,
    message: String,
    fields: Map<String, Value>,
}

pub fn debug(name: &'static str, message: impl Into<String>) -> Event {
    Event::new(Level::Debug, name, message)
}
pub fn info(name: &'static str, message: impl Into<String>) -> Event {
    Event::new(Level::Info, name, message)
}
pub fn warn(name: &'static str, message: impl Into<String>) -> Event {
    Event::new(Level::Warn, name, message)
}
pub fn error(name: &'static str, message: impl Into<String>) -> Event {
    Event::new(Level::Error, name, message)
}

impl Event {
    fn new(level: Level, name: &'static str, message: impl Into<String>) -> Event {
        Event { level, name, message: message.into(), fields: Map::new() }
    }

    pub fn field(mut self, key: &str, value: impl Into<Value>) -> Event {
        self.fields.insert(key.to_owned(), value.into());
        self
    }

    pub fn emit(self) {
        if !enabled(self.level) {
            return;
        }
        let sink = sink();
        let ts = format_rfc3339(sink.clock.wall_ms());
        // The file gets the plain line; stderr the same, or its coloured form. Each is
        // formatted once, and written with one call so concurrent writers never
        // interleave within a line.
        let mut plain = match sink.format {
            Format::Json => self.to_json(&ts),
            Format::Human => self.to_human(&ts, false),
        };
        plain.push('\n');
        let coloured = (sink.format == Format::Human && sink.colour).then(|| self.to_human(&ts, true) + "\n");
        to_stderr(match coloured {
            Some(c) => c,
            None => plain.clone(),
        });
        let mut file = sink.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = file.as_mut() {
            f.write_line(&plain);
        }
    }

    /// [`Event::emit`], and when stderr is a terminal that would not show it as a human
    /// line (JSON events, or a level below the threshold), its message as a plain line
    /// too: for what a person at the terminal must see, such as what a second Ctrl-C does.
    pub fn emit_and_tell_terminal(self) {
        let shown = enabled(self.level) && sink().format == Format::Human;
        if !shown && std::io::stderr().is_terminal() {
            to_stderr(format!("homerd: {}\n", self.message));
        }
        self.emit();
    }

    /// One JSON object: `ts`, `level`, `event`, `msg`, `pid` and the fields, keys in byte
    /// order, a field replacing a fixed key of the same name. Written straight into the
    /// line (no map of copies first): the engine emits two of these per job.
    fn to_json(&self, ts: &str) -> String {
        enum V<'a> {
            Str(&'a str),
            Pid(u32),
            Json(&'a Value),
        }
        let mut entries: Vec<(&str, V<'_>)> = Vec::with_capacity(5 + self.fields.len());
        entries.extend([
            ("ts", V::Str(ts)),
            ("level", V::Str(self.level.as_str())),
            ("event", V::Str(self.name)),
            ("msg", V::Str(&self.message)),
            ("pid", V::Pid(pid())),
        ]);
        entries.extend(self.fields.iter().map(|(k, v)| (k.as_str(), V::Json(v))));
        // Stable: of equal keys the field (added last) stays last, and is the one kept.
        entries.sort_by(|a, b| a.0.cmp(b.0));
        let mut out = Vec::with_capacity(256);
        out.push(b'{');
        for (i, (key, value)) in entries.iter().enumerate() {
            if entries.get(i + 1).is_some_and(|next| next.0 == *key) {
                continue;
            }
            if out.len() > 1 {
                out.push(b',');
            }
            // Writing into a Vec cannot fail, nor can serialising a str or a Value.
            let _ = serde_json::to_writer(&mut out, key);
            out.push(b':');
            let _ = match value {
                V::Str(s) => serde_json::to_writer(&mut out, s),
                V::Pid(n) => serde_json::to_writer(&mut out, n),
                V::Json(v) => serde_json::to_writer(&mut out, v),
            };
        }
        out.push(b'}');
        String::from_utf8(out).expect("serde_json writes UTF-8")
    }

    fn to_human(&self, ts: &str, colour: bool) -> String {
        let level = self.level.as_str().to_uppercase();
        let level = if colour {
            let code = match self.level {
                Level::Debug => "2",
                Level::Info => "32",
                Level::Warn => "33",
                Level::Error => "31",
            };
            format!("\x1b[{code}m{level:<5}\x1b[0m")
        } else {
            format!("{level:<5}")
        };
        let mut line = format!("{ts} {level} {} [{}]", self.message, self.name);
        for (k, v) in &self.fields {
            match v {
                Value::String(s) => line.push_str(&format!(" {k}={s:?}")),
                other => line.push_str(&format!(" {k}={other}")),
            }
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_line_carries_name_message_and_fields() {
        let e = info("lock.acquired", "Daemon lock acquired").field("path", "/x/homer.lock").field("epoch", 3);
        let v: Value = serde_json::from_str(&e.to_json("T")).unwrap();
        assert_eq!(v["event"], "lock.acquired");
        assert_eq!(v["msg"], "Daemon lock acquired");
        assert_eq!(v["path"], "/x/homer.lock");
        assert_eq!(v["epoch"], 3);
        assert_eq!(v["pid"], std::process::id());
    }

    /// The line written straight is the one a JSON map of the same keys serialises to:
    /// keys in order, fields escaped, a field named like a fixed key replacing it.
    #[test]
    fn json_line_is_what_a_map_of_its_keys_serialises_to() {
        let events = [
            info("job.claimed", "Job claimed atomically").field("job_id", 7).field("lane", "a \"b\"\n").field("run", 1),
            warn("x.y", "ünïcödé \u{1}").field("event", "replaced").field("zz", serde_json::json!({"k": [1, null]})),
            error("e", "").field("aa", true).field("ts", 5).field("pid", "p"),
        ];
        for e in events {
            let mut map = Map::new();
            map.insert("ts".into(), "T".into());
            map.insert("level".into(), e.level.as_str().into());
            map.insert("event".into(), e.name.into());
            map.insert("msg".into(), e.message.clone().into());
            map.insert("pid".into(), std::process::id().into());
            for (k, v) in &e.fields {
                map.insert(k.clone(), v.clone());
            }
            assert_eq!(e.to_json("T"), Value::Object(map).to_string());
        }
    }

    #[test]
    fn human_line_has_no_escape_codes_without_colour() {
        let e = warn("lock.busy", "Another Homer instance is running. Exiting cleanly.").field("holder_pid", 7);
        let line = e.to_human("T", false);
        assert!(!line.contains('\x1b'));
        assert!(line.contains("Another Homer instance is running. Exiting cleanly. [lock.busy] holder_pid=7"));
        assert!(e.to_human("T", true).contains('\x1b'));
    }

    #[test]
    fn levels_parse_and_shift_within_bounds() {
        assert_eq!(Level::parse("DEBUG"), Some(Level::Debug));
        assert_eq!(Level::parse(" warn "), Some(Level::Warn));
        assert_eq!(Level::parse("verbose"), None);
        assert_eq!(Level::Info.shifted(1), Level::Debug);
        assert_eq!(Level::Info.shifted(5), Level::Debug);
        assert_eq!(Level::Info.shifted(-1), Level::Warn);
        assert_eq!(Level::Info.shifted(-9), Level::Error);
        assert_eq!(Level::Warn.shifted(0), Level::Warn);
    }

    /// A failed write (a full disk) may leave part of a line: the next line that gets
    /// through starts on a line of its own instead of running on from the fragment.
    #[test]
    fn a_line_after_a_failed_write_starts_on_its_own_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("homer.log");
        // A file that ends in a torn line already.
        std::fs::write(&path, "{\"event\":\"a\"}\n{\"eve").unwrap();
        // Read-only: every write fails, as on a full disk.
        let file = std::fs::File::open(&path).unwrap();
        let mut log = LogFile { file, path: path.clone(), written: 0, torn: false };
        log.write_line("{\"event\":\"lost\"}\n");
        assert!(log.torn);
        log.file = std::fs::OpenOptions::new().append(true).open(&path).unwrap(); // space again
        log.write_line("{\"event\":\"b\"}\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"event\":\"a\"}\n{\"eve\n{\"event\":\"b\"}\n");
        assert!(!log.torn);
    }
}
