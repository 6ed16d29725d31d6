//! The effects probe: the job that scenarios run, and the ground truth that does not
//! trust the daemon.
//!
//! `homer-harness __probe --effects DIR [--sleep-ms N] [--grandchild-ms N]
//! [--grandchild-setsid] [--exit N] [--ignore-term]` is what an `exec` job of a scenario
//! runs. It reads `HOMER_JOB_ID`, `HOMER_RUN`, `HOMER_ATTEMPT` and `HOMER_CLAIM_TOKEN`,
//! and appends what it does to `DIR/effects.log`, one JSON object per line in the field
//! order of [`Effect`]:
//!
//! ```text
//! {"kind":"start","job_id":3,"run":1,"attempt":1,"token":"9f..","pid":4242,"mono_ns":81234567890}
//! ```
//!
//! `kind` is `start` / `end` (the run's work began / finished), `overlap` (this run found
//! another run of the same job alive), `grandchild_start` / `grandchild_end`. `mono_ns` is
//! `CLOCK_MONOTONIC`, system-wide, so records of different processes compare.
//!
//! How overlap is detected exactly: every run of job N takes `flock(LOCK_EX)` on
//! `DIR/locks/job-N.lock` before `start` and keeps it until it exits. The kernel drops a
//! flock only when the last descriptor of its open file description closes — when the
//! probe *and every process that inherited the description* are gone, even by SIGKILL. So
//! if the non-blocking attempt fails, some earlier run (or its same-group grandchild) is
//! still alive: the probe records `overlap`, then waits for the lock and runs anyway, so
//! the scenario keeps going and the checker reports the overlap.
//!
//! Invariants: each record is one `write(2)` on an `O_APPEND` descriptor, so concurrent
//! writers never interleave within a line (only a writer killed mid-write can leave a torn
//! last line, which `history::parse_effects` ignores). `start` is written only while the
//! job lock is held, and `end` before it is released. The grandchild is forked while the
//! process is still single-threaded, and after `fork` it only makes async-signal-safe calls
//! (no allocation: its records are prepared before the fork).
//!
//! A `--grandchild-setsid` grandchild leaves the job's process group *and* closes its copy
//! of the job lock: README.md ("Guarantees, and their limits") puts a descendant that escapes its group with `setsid`
//! outside what any daemon can promise, so it must not count as the job still running.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::history::{parse_effects, Effect, EffectKind};

/// The first argument that makes the harness binary act as the probe.
pub const PROBE_ARG: &str = "__probe";

/// Exit code for a bad command line or a missing `HOMER_*` variable.
pub const EXIT_USAGE: i32 = 2;
/// Exit code when the effects log or the job lock cannot be used.
pub const EXIT_IO: i32 = 3;

/// The probe's command line, without the program and [`PROBE_ARG`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProbeArgs {
    /// The sandbox's effects directory (`--effects`, required).
    pub effects: PathBuf,
    /// How long the run works between `start` and `end` (`--sleep-ms`).
    pub sleep_ms: u64,
    /// Fork a grandchild that outlives the probe by this long (`--grandchild-ms`).
    pub grandchild_ms: Option<u64>,
    /// The grandchild calls `setsid()` (`--grandchild-setsid`).
    pub grandchild_setsid: bool,
    /// The probe's exit code (`--exit`).
    pub exit_code: i32,
    /// Ignore SIGTERM, so stopping the run needs SIGKILL (`--ignore-term`).
    pub ignore_term: bool,
}

impl ProbeArgs {
    /// Parses the arguments after [`PROBE_ARG`]. `--flag value` and `--flag=value` are both
    /// accepted.
    pub fn parse(args: &[String]) -> Result<ProbeArgs, String> {
        let mut parsed = ProbeArgs::default();
        let mut effects = None;
        let mut rest = args.iter();
        while let Some(arg) = rest.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_owned())),
                _ => (arg.as_str(), None),
            };
            let mut value = |flag: &str| {
                inline.clone().or_else(|| rest.next().cloned()).ok_or_else(|| format!("{flag} needs a value"))
            };
            match flag {
                "--effects" => effects = Some(PathBuf::from(value(flag)?)),
                "--sleep-ms" => parsed.sleep_ms = number(flag, &value(flag)?)?,
                "--grandchild-ms" => parsed.grandchild_ms = Some(number(flag, &value(flag)?)?),
                "--exit" => parsed.exit_code = number(flag, &value(flag)?)?,
                "--grandchild-setsid" => parsed.grandchild_setsid = true,
                "--ignore-term" => parsed.ignore_term = true,
                other => return Err(format!("unknown argument {other:?}")),
            }
            if inline.is_some() && matches!(flag, "--grandchild-setsid" | "--ignore-term") {
                return Err(format!("{flag} takes no value"));
            }
        }
        parsed.effects = effects.ok_or("--effects DIR is required")?;
        if parsed.grandchild_setsid && parsed.grandchild_ms.is_none() {
            return Err(String::from("--grandchild-setsid needs --grandchild-ms"));
        }
        Ok(parsed)
    }

    /// The arguments that [`ProbeArgs::parse`] reads back (to put after [`PROBE_ARG`]).
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![String::from("--effects"), self.effects.display().to_string()];
        if self.sleep_ms != 0 {
            args.extend([String::from("--sleep-ms"), self.sleep_ms.to_string()]);
        }
        if let Some(ms) = self.grandchild_ms {
            args.extend([String::from("--grandchild-ms"), ms.to_string()]);
        }
        if self.grandchild_setsid {
            args.push(String::from("--grandchild-setsid"));
        }
        if self.exit_code != 0 {
            args.extend([String::from("--exit"), self.exit_code.to_string()]);
        }
        if self.ignore_term {
            args.push(String::from("--ignore-term"));
        }
        args
    }
}

fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value.parse().map_err(|_| format!("{flag}: not a valid number: {value:?}"))
}

/// `DIR/effects.log`.
pub fn effects_log(effects_dir: &Path) -> PathBuf {
    effects_dir.join("effects.log")
}

/// `DIR/locks/job-<id>.lock`: the flock every run of the job holds while alive.
pub fn job_lock_path(effects_dir: &Path, job_id: i64) -> PathBuf {
    effects_dir.join("locks").join(format!("job-{job_id}.lock"))
}

/// Reads and parses `DIR/effects.log`; no log yet (no job ran) is an empty history.
pub fn read_effects(effects_dir: &Path) -> Result<Vec<Effect>, String> {
    let path = effects_log(effects_dir);
    match fs::read_to_string(&path) {
        Ok(text) => parse_effects(&text).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// The run's identity, as the daemon passed it in the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RunIds {
    job_id: i64,
    run: i64,
    attempt: i64,
    token: String,
}

impl RunIds {
    fn from_env() -> Result<RunIds, String> {
        let var = |name: &str| std::env::var(name).map_err(|e| format!("{name}: {e}"));
        let int =
            |name: &str| var(name).and_then(|v| v.parse::<i64>().map_err(|_| format!("{name}: not an integer: {v:?}")));
        Ok(RunIds {
            job_id: int("HOMER_JOB_ID")?,
            run: int("HOMER_RUN")?,
            attempt: int("HOMER_ATTEMPT")?,
            token: var("HOMER_CLAIM_TOKEN")?,
        })
    }

    fn effect(&self, kind: EffectKind) -> Effect {
        Effect {
            kind,
            job_id: self.job_id,
            run: self.run,
            attempt: self.attempt,
            token: self.token.clone(),
            pid: std::process::id(),
            mono_ns: mono_ns(),
        }
    }
}

/// The probe's entry point. `args` may be the whole command line: everything up to and
/// including [`PROBE_ARG`] is skipped. Call it before the process starts any thread (the
/// grandchild is forked). Returns the exit code.
pub fn probe_main(args: Vec<String>) -> i32 {
    let args = match args.iter().position(|a| a == PROBE_ARG) {
        Some(at) => &args[at + 1..],
        None => &args[..],
    };
    let parsed = match ProbeArgs::parse(args) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("homer-harness {PROBE_ARG}: {e}");
            return EXIT_USAGE;
        }
    };
    let ids = match RunIds::from_env() {
        Ok(ids) => ids,
        Err(e) => {
            eprintln!("homer-harness {PROBE_ARG}: {e} (the probe runs as a homerd job)");
            return EXIT_USAGE;
        }
    };
    match run_probe(&parsed, &ids) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("homer-harness {PROBE_ARG}: {e}");
            EXIT_IO
        }
    }
}

fn run_probe(args: &ProbeArgs, ids: &RunIds) -> Result<i32, String> {
    if args.ignore_term {
        ignore_sigterm().map_err(|e| format!("ignore SIGTERM: {e}"))?;
    }
    let lock_path = job_lock_path(&args.effects, ids.job_id);
    let log_path = effects_log(&args.effects);
    let ctx = |what: &str, path: &Path, e: io::Error| format!("{what} {}: {e}", path.display());
    if let Some(locks) = lock_path.parent() {
        fs::create_dir_all(locks).map_err(|e| ctx("create", locks, e))?;
    }
    let log = OpenOptions::new().append(true).create(true).open(&log_path).map_err(|e| ctx("open", &log_path, e))?;
    let record = |kind| {
        serde_json::to_string(&ids.effect(kind)).map(|line| line + "\n").map_err(|e| format!("format record: {e}"))
    };
    let write = |kind| append(&log, record(kind)?.as_bytes()).map_err(|e| ctx("append to", &log_path, e));

    let (lock, overlap) = take_job_lock(&lock_path).map_err(|e| ctx("lock", &lock_path, e))?;
    if overlap {
        write(EffectKind::Overlap)?;
        wait_job_lock(&lock).map_err(|e| ctx("lock", &lock_path, e))?;
    }
    // The grandchild is running (and out of the group, with --grandchild-setsid) before
    // `start` is written, so a scenario that waits for `start` and then kills the daemon
    // knows the whole process tree exists.
    if let Some(extra_ms) = args.grandchild_ms {
        let lives = Duration::from_millis(args.sleep_ms.saturating_add(extra_ms));
        spawn_grandchild(ids, &log, &lock, lives, args.grandchild_setsid).map_err(|e| format!("fork: {e}"))?;
    }
    write(EffectKind::Start)?;
    #[allow(clippy::disallowed_methods)] // the job's body: it runs for as long as it was told
    std::thread::sleep(Duration::from_millis(args.sleep_ms));
    write(EffectKind::End)?;
    // The job lock is released when `lock` (and any same-group grandchild's copy) closes.
    drop(lock);
    Ok(args.exit_code)
}

/// Opens (creating it and never truncating) the job's lock file and tries
/// `flock(LOCK_EX | LOCK_NB)`. `Ok((file, false))`: locked. `Ok((file, true))`: another
/// open file description holds it — another run is alive — and the lock is *not* held;
/// call [`wait_job_lock`] to wait for it. Two opens in one process conflict too.
fn take_job_lock(path: &Path) -> io::Result<(File, bool)> {
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o644).open(path)?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok((file, false)),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok((file, true)),
        Err(e) => Err(e.into()),
    }
}

/// Blocks until `file` (from [`take_job_lock`]) holds its flock.
fn wait_job_lock(file: &File) -> io::Result<()> {
    loop {
        match rustix::fs::flock(file, rustix::fs::FlockOperation::LockExclusive) {
            Err(rustix::io::Errno::INTR) => continue,
            done => return Ok(done?),
        }
    }
}

/// Appends one whole record with a single `write(2)` (`log` is `O_APPEND`). A short write
/// is an error rather than a second write, which could interleave with another writer.
/// Allocation-free, so the forked grandchild may call it.
fn append(log: &File, record: &[u8]) -> io::Result<()> {
    let mut log = log;
    loop {
        match log.write(record) {
            Ok(n) if n == record.len() => return Ok(()),
            Ok(_) => return Err(io::ErrorKind::WriteZero.into()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds (the executor stamps enqueues on the same clock).
pub fn mono_ns() -> u64 {
    // A plain system call, async-signal-safe (the grandchild calls this).
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

fn ignore_sigterm() -> io::Result<()> {
    // SAFETY: SIG_IGN installs no handler code; the disposition is inherited by the
    // grandchild, which is intended (the whole run resists SIGTERM).
    let previous = unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    if previous == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A record whose `pid` and `mono_ns` are filled in later without allocating: everything
/// up to `"pid":` is formatted before the fork, with room reserved for the rest.
struct PreparedRecord {
    buf: Vec<u8>,
    prefix_len: usize,
}

impl PreparedRecord {
    /// Room for `u32::MAX`, `,"mono_ns":`, `u64::MAX` and `}\n`.
    const TAIL_CAPACITY: usize = 10 + 11 + 20 + 2;

    fn new(kind: EffectKind, ids: &RunIds) -> Result<PreparedRecord, serde_json::Error> {
        let prefix = format!(
            "{{\"kind\":{},\"job_id\":{},\"run\":{},\"attempt\":{},\"token\":{},\"pid\":",
            serde_json::to_string(&kind)?,
            ids.job_id,
            ids.run,
            ids.attempt,
            serde_json::to_string(&ids.token)?
        );
        let mut buf = Vec::with_capacity(prefix.len() + Self::TAIL_CAPACITY);
        buf.extend_from_slice(prefix.as_bytes());
        Ok(PreparedRecord { prefix_len: buf.len(), buf })
    }

    /// The complete line. Stays within the reserved capacity, so it never allocates.
    fn finish(&mut self, pid: u32, mono_ns: u64) -> &[u8] {
        self.buf.truncate(self.prefix_len);
        push_decimal(&mut self.buf, u64::from(pid));
        self.buf.extend_from_slice(b",\"mono_ns\":");
        push_decimal(&mut self.buf, mono_ns);
        self.buf.extend_from_slice(b"}\n");
        &self.buf
    }
}

fn push_decimal(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        // `n % 10` is a single digit.
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[at..]);
}

/// Forks the grandchild. It inherits `lock`'s open file description — so the job's flock
/// stays held while it lives, exactly like a real job's helper process — records
/// `grandchild_start`, lives `lives`, records `grandchild_end` and `_exit`s. The parent
/// returns at once.
fn spawn_grandchild(ids: &RunIds, log: &File, lock: &File, lives: Duration, setsid: bool) -> io::Result<()> {
    let mut start = PreparedRecord::new(EffectKind::GrandchildStart, ids).map_err(io::Error::other)?;
    let mut end = PreparedRecord::new(EffectKind::GrandchildEnd, ids).map_err(io::Error::other)?;
    let lock_fd = lock.as_raw_fd();
    let (ready_read, ready_write) = rustix::pipe::pipe()?;
    // SAFETY: the child runs only async-signal-safe code until `_exit` — setsid, close,
    // getpid, clock_gettime, write and nanosleep, with its records' memory reserved before
    // the fork — so fork is sound even if the caller had other threads. The child never
    // returns into the caller, so no destructor or buffered output runs twice. (rustix has
    // no public fork: it cannot make it safe.)
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid > 0 {
        // Wait until the grandchild has set itself up and recorded its start (one byte, or
        // EOF if it died first); our copy of the write end must be closed for the EOF.
        drop(ready_write);
        let mut byte = [0u8; 1];
        while let Err(rustix::io::Errno::INTR) = rustix::io::read(&ready_read, &mut byte) {}
        return Ok(());
    }
    // The child closes its copy of the read end (close is async-signal-safe).
    drop(ready_read);
    let code = grandchild(log, lock_fd, &mut start, &mut end, lives, setsid, ready_write);
    // SAFETY: `_exit` ends the forked child immediately, skipping atexit handlers and
    // stdio flushing that belong to the parent.
    unsafe { libc::_exit(code) }
}

/// The grandchild's whole life (runs after `fork`: async-signal-safe calls only).
fn grandchild(
    log: &File,
    lock_fd: libc::c_int,
    start: &mut PreparedRecord,
    end: &mut PreparedRecord,
    lives: Duration,
    setsid: bool,
    ready: std::os::fd::OwnedFd,
) -> i32 {
    if setsid {
        // A fresh child is never a group leader, so this succeeds.
        let _ = rustix::process::setsid();
        // SAFETY: closes only this process's copy of the descriptor (the parent keeps
        // its own); nothing in this process uses `lock_fd` afterwards.
        unsafe { libc::close(lock_fd) };
    }
    let pid = rustix::process::getpid().as_raw_nonzero().get().unsigned_abs();
    if append(log, start.finish(pid, mono_ns())).is_err() {
        return EXIT_IO;
    }
    // One byte to the waiting parent, then close (both async-signal-safe system calls).
    let _ = rustix::io::write(&ready, b"r");
    drop(ready);
    #[allow(clippy::disallowed_methods)] // the grandchild's body: it lives as long as it was told
    std::thread::sleep(lives);
    if append(log, end.finish(pid, mono_ns())).is_err() {
        return EXIT_IO;
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Mutex, MutexGuard};
    use std::time::Instant;

    /// A forked grandchild inherits *every* descriptor of the test process, including job
    /// locks other tests hold at that moment, and would keep them locked after those tests
    /// close theirs. Tests that take job locks therefore run one at a time.
    fn serial() -> MutexGuard<'static, ()> {
        static SERIAL: Mutex<()> = Mutex::new(());
        SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn ids(job_id: i64, run: i64) -> RunIds {
        RunIds { job_id, run, attempt: run, token: format!("tok-{job_id}-{run}") }
    }

    fn args(dir: &Path) -> ProbeArgs {
        ProbeArgs { effects: dir.to_owned(), ..ProbeArgs::default() }
    }

    /// Polls the effects log until `done` holds (generous deadline: CI machines stall).
    fn wait_for(dir: &Path, done: impl Fn(&[Effect]) -> bool) -> Vec<Effect> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let effects = read_effects(dir).unwrap();
            if done(&effects) {
                return effects;
            }
            assert!(Instant::now() < deadline, "effects log never got there: {effects:?}");
            #[allow(clippy::disallowed_methods)] // a polling period: the log's writers send no event
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn kinds(effects: &[Effect]) -> Vec<EffectKind> {
        effects.iter().map(|e| e.kind).collect()
    }

    fn has(kind: EffectKind) -> impl Fn(&[Effect]) -> bool {
        move |effects| effects.iter().any(|e| e.kind == kind)
    }

    fn reap(pid: u32) {
        let pid = rustix::process::Pid::from_raw(pid as i32).expect("a real pid");
        let (reaped, status) = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty())
            .expect("waitpid on our own forked child")
            .expect("a blocking wait returns a status");
        assert_eq!(reaped, pid);
        assert_eq!(status.exit_status(), Some(0), "grandchild status {status:?}");
    }

    #[test]
    fn args_round_trip_and_reject_nonsense() {
        let full = ProbeArgs {
            effects: PathBuf::from("/s/effects"),
            sleep_ms: 250,
            grandchild_ms: Some(1000),
            grandchild_setsid: true,
            exit_code: 7,
            ignore_term: true,
        };
        assert_eq!(ProbeArgs::parse(&full.to_args()).unwrap(), full);
        let minimal = args(Path::new("/e"));
        assert_eq!(minimal.to_args(), ["--effects", "/e"]);
        let strings = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(ProbeArgs::parse(&strings(&["--effects=/e", "--sleep-ms=5"])).unwrap().sleep_ms, 5);
        for bad in [
            &["--sleep-ms", "5"][..],
            &["--effects"],
            &["--effects", "/e", "--sleep-ms", "soon"],
            &["--effects", "/e", "--bogus"],
            &["--effects", "/e", "--grandchild-setsid"],
            &["--effects", "/e", "--ignore-term=yes"],
        ] {
            assert!(ProbeArgs::parse(&strings(bad)).is_err(), "{bad:?}");
        }
        assert_eq!(probe_main(strings(&["harness", PROBE_ARG, "--nope"])), EXIT_USAGE);
    }

    #[test]
    fn prepared_records_match_the_serde_format() {
        let ids = RunIds { job_id: 12, run: 3, attempt: 2, token: String::from("a\"b\\c") };
        for (pid, mono) in [(0, 0), (u32::MAX, u64::MAX), (4242, 81_234_567_890)] {
            let mut prepared = PreparedRecord::new(EffectKind::GrandchildEnd, &ids).unwrap();
            let capacity = prepared.buf.capacity();
            let line = String::from_utf8(prepared.finish(pid, mono).to_vec()).unwrap();
            let expected = Effect { pid, mono_ns: mono, ..ids.effect(EffectKind::GrandchildEnd) };
            assert_eq!(line, serde_json::to_string(&expected).unwrap() + "\n");
            assert_eq!(prepared.buf.capacity(), capacity, "finish must not reallocate");
        }
    }

    #[test]
    fn two_opens_of_a_job_lock_conflict_until_the_holder_closes() {
        let _serial = serial();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job-1.lock");
        let (first, overlap) = take_job_lock(&path).unwrap();
        assert!(!overlap);
        let (second, overlap) = take_job_lock(&path).unwrap();
        assert!(overlap, "a second open file description must see the lock held");
        drop(second);
        drop(first);
        let (_third, overlap) = take_job_lock(&path).unwrap();
        assert!(!overlap, "closing the holder releases the flock");
    }

    #[test]
    fn a_run_records_start_and_end_and_exits_with_the_asked_code() {
        let _serial = serial();
        let dir = tempfile::tempdir().unwrap();
        let code = run_probe(&ProbeArgs { exit_code: 9, ..args(dir.path()) }, &ids(5, 1)).unwrap();
        assert_eq!(code, 9);
        let effects = read_effects(dir.path()).unwrap();
        assert_eq!(kinds(&effects), [EffectKind::Start, EffectKind::End]);
        assert!(effects.iter().all(|e| e.job_id == 5 && e.run == 1 && e.token == "tok-5-1"));
        assert_eq!(effects[0].pid, std::process::id());
        assert!(effects[0].mono_ns <= effects[1].mono_ns);
        assert!(job_lock_path(dir.path(), 5).exists());
    }

    #[test]
    fn a_run_that_finds_its_job_alive_records_overlap_then_waits() {
        let _serial = serial();
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("locks")).unwrap();
        let (alive, overlap) = take_job_lock(&job_lock_path(dir.path(), 2)).unwrap();
        assert!(!overlap);
        let probe_args = args(dir.path());
        let second = std::thread::spawn(move || run_probe(&probe_args, &ids(2, 2)));
        let effects = wait_for(dir.path(), has(EffectKind::Overlap));
        assert_eq!(kinds(&effects), [EffectKind::Overlap], "no start while the other run holds the lock");
        drop(alive);
        assert_eq!(second.join().unwrap().unwrap(), 0);
        let effects = read_effects(dir.path()).unwrap();
        assert_eq!(kinds(&effects), [EffectKind::Overlap, EffectKind::Start, EffectKind::End]);
        assert_eq!(effects[0].run, 2);
    }

    #[test]
    fn a_same_group_grandchild_keeps_the_job_running_after_the_probe() {
        let _serial = serial();
        let dir = tempfile::tempdir().unwrap();
        let probe_args = ProbeArgs { grandchild_ms: Some(1500), ..args(dir.path()) };
        assert_eq!(run_probe(&probe_args, &ids(3, 1)).unwrap(), 0);
        // The probe's own descriptor is closed now; only the grandchild's copy remains.
        let (_, overlap) = take_job_lock(&job_lock_path(dir.path(), 3)).unwrap();
        let effects = read_effects(dir.path()).unwrap();
        assert!(!has(EffectKind::GrandchildEnd)(&effects), "grandchild ended too early to test: {effects:?}");
        assert!(overlap, "the grandchild inherited the locked description");
        let effects = wait_for(dir.path(), has(EffectKind::GrandchildEnd));
        let child = effects.iter().find(|e| e.kind == EffectKind::GrandchildStart).unwrap();
        assert_ne!(child.pid, std::process::id());
        assert_eq!(child.token, "tok-3-1");
        reap(child.pid);
        let (_, overlap) = take_job_lock(&job_lock_path(dir.path(), 3)).unwrap();
        assert!(!overlap, "the lock is free once the grandchild is gone");
    }

    #[test]
    fn a_setsid_grandchild_leaves_the_group_and_the_job_lock() {
        let _serial = serial();
        let dir = tempfile::tempdir().unwrap();
        let probe_args = ProbeArgs { grandchild_ms: Some(1500), grandchild_setsid: true, ..args(dir.path()) };
        assert_eq!(run_probe(&probe_args, &ids(4, 1)).unwrap(), 0);
        let effects = wait_for(dir.path(), has(EffectKind::GrandchildStart));
        let child = effects.iter().find(|e| e.kind == EffectKind::GrandchildStart).unwrap().pid;
        let (_, overlap) = take_job_lock(&job_lock_path(dir.path(), 4)).unwrap();
        assert!(!read_effects(dir.path()).unwrap().iter().any(|e| e.kind == EffectKind::GrandchildEnd));
        assert!(!overlap, "an escaped grandchild must not count as the job running");
        let child_pid = rustix::process::Pid::from_raw(child as i32).expect("a real pid");
        let session = rustix::process::getsid(Some(child_pid)).expect("the grandchild's session");
        assert_eq!(session, child_pid, "the grandchild leads its own session");
        wait_for(dir.path(), has(EffectKind::GrandchildEnd));
        reap(child);
    }
}
