//! The execution context of one scenario run ([`Ctx`]): the sandbox and its paths, the
//! processes the run started and what they printed, the acknowledged job ids, and the
//! machinery every step shares — placeholders, `homerd` commands, spawning with reader
//! and waiter threads, waiting on a condition with a deadline, queries, the history the
//! checkers judge, the step log. What a single verb does lives in its module under
//! [`crate::steps`].
//!
//! Invariants: every process is spawned through [`procs`] under the run's marker; every
//! wait has a deadline scaled by the time scale and is woken by what the readers and
//! waiters record (or re-polls files and the database every 25 ms); the harness's own
//! read-write connections never checkpoint on close ([`harness_rw`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use homer_testkit::{read_lines, Line, LineSink, Parse, Stream};

use super::Options;
use crate::check::{self, CheckOptions, Violation};
use crate::history::{DbState, Event, History, PowerCut, ProcKind, ProcRecord};
use crate::procs;
use crate::scenario::{parse_duration, Pattern, Scalar, Scenario};
use crate::steps::enqueue::ProbeSpec;
use crate::steps::file::Remembered;
use crate::timeline::StepRecord;

/// A finished CLI process: exit code, stdout, stderr.
pub(crate) type CliOutput = (Option<i32>, Vec<u8>, Vec<u8>);
/// A step's failure before logs are attached.
#[derive(Debug)]
pub(crate) struct StepError {
    pub(crate) expected: String,
    pub(crate) actual: String,
}

pub(crate) fn fail<T>(expected: impl Into<String>, actual: impl Into<String>) -> Result<T, StepError> {
    Err(StepError { expected: expected.into(), actual: actual.into() })
}

// ---------------------------------------------------------------------------------------
// Processes and what they print

pub(crate) struct ProcState {
    pub(crate) name: String,
    pub(crate) pid: u32,
    pub(crate) kind: ProcKind,
    pub(crate) started: Instant,
    pub(crate) exited: Option<Instant>,
    /// When the harness first sent it SIGKILL: from then on the kernel may release its
    /// locks at any moment, before the exit is observed.
    pub(crate) killed: Option<Instant>,
    pub(crate) code: Option<i32>,
    pub(crate) signal: Option<i32>,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: Vec<u8>,
    pub(crate) stdout_closed: bool,
    pub(crate) stderr_closed: bool,
    /// A background `homerd enqueue` (a `start` whose command is `enqueue`): every id it
    /// prints is acknowledged.
    pub(crate) prints_ids: bool,
}

impl ProcState {
    /// The job ids a background enqueue printed so far (whole lines only: an id is
    /// printed with its newline in one write, after its commit).
    pub(crate) fn printed_ids(&self) -> Vec<i64> {
        if !self.prints_ids {
            return Vec::new();
        }
        let text = String::from_utf8_lossy(&self.stdout);
        let whole = text.rfind('\n').map_or("", |end| &text[..end]);
        whole.lines().filter_map(|l| l.trim().parse().ok()).collect()
    }
}

/// A `hold_write` in progress: its thread holds the transaction until the hold ends or
/// it is told to stop (a power loss ends it at once, as it ends every process).
pub(crate) struct Hold {
    pub(crate) stop: std::sync::mpsc::Sender<()>,
    pub(crate) thread: JoinHandle<()>,
}

/// A read-write connection of the harness's own that never checkpoints when it closes:
/// closing the last connection to a WAL database would otherwise copy the WAL into the
/// database and delete it — writes no recording process made, which a later power loss
/// could not account for (and which would hide a stray `-wal`).
pub(crate) fn harness_rw(db: &Path) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
    Ok(conn)
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) procs: Vec<ProcState>,
    pub(crate) events: Vec<Event>,
    pub(crate) seq: u64,
}

pub(crate) struct Shared {
    pub(crate) state: Mutex<State>,
    pub(crate) changed: Condvar,
    pub(crate) start: Instant,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait until `ready` returns Some or the deadline passes.
    /// Re-polled every 25 ms for conditions on files and the database (which do not notify).
    pub(crate) fn wait_for<T>(&self, deadline: Instant, ready: impl FnMut(&State) -> Option<T>) -> Option<T> {
        crate::watch::wait_until(self.lock(), &self.changed, deadline, Duration::from_millis(25), ready)
    }
}

/// Records what one process prints into the shared state: stdout and stderr as bytes,
/// each JSON event on stderr into the history, stamped and numbered in receive order.
#[derive(Clone)]
struct Recorder {
    shared: Arc<Shared>,
    index: usize,
    name: String,
    pid: u32,
}

impl LineSink for Recorder {
    fn line(&mut self, line: Line) -> bool {
        let mut st = self.shared.lock();
        match line.stream {
            Stream::Stdout => st.procs[self.index].stdout.extend_from_slice(&line.bytes),
            Stream::Stderr => {
                st.procs[self.index].stderr.extend_from_slice(&line.bytes);
                if let Some(json) = line.json.filter(|v| v.get("event").is_some()) {
                    st.seq += 1;
                    let (seq, at) = (st.seq, self.shared.start.elapsed());
                    st.events.push(Event { proc_name: self.name.clone(), pid: self.pid, seq, at, json });
                }
            }
        }
        drop(st);
        self.shared.changed.notify_all();
        true
    }

    fn closed(&mut self, stream: Stream) {
        let mut st = self.shared.lock();
        match stream {
            Stream::Stdout => st.procs[self.index].stdout_closed = true,
            Stream::Stderr => st.procs[self.index].stderr_closed = true,
        }
        drop(st);
        self.shared.changed.notify_all();
    }
}

pub(crate) fn matches_target(target: &str, name: &str) -> bool {
    if target == "*" {
        return true;
    }
    if let Some(prefix) = target.strip_suffix(".*") {
        return name.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('.')) || name == prefix;
    }
    if let Some(prefix) = target.strip_suffix('*') {
        return name.starts_with(prefix);
    }
    target == name
}

pub(crate) fn scalar_matches(want: &Scalar, got: &serde_json::Value) -> bool {
    match want {
        Scalar::Null => got.is_null(),
        Scalar::Int(i) => got.as_i64() == Some(*i),
        Scalar::Float(f) => got.as_f64() == Some(*f),
        Scalar::Bool(b) => got.as_bool() == Some(*b),
        Scalar::Text(t) => {
            got.as_str() == Some(t.as_str()) || (!got.is_string() && got.to_string().as_str() == t.as_str())
        }
    }
}

pub(crate) fn event_matches(e: &Event, target: &str, name: &str, fields: &[(String, Scalar)]) -> bool {
    matches_target(target, &e.proc_name)
        && e.name() == name
        && fields.iter().all(|(k, v)| scalar_matches(v, e.json.get(k).unwrap_or(&serde_json::Value::Null)))
}

pub(crate) fn describe_fields(fields: &[(String, Scalar)]) -> String {
    if fields.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!(" with {}", parts.join(", "))
}

// ---------------------------------------------------------------------------------------
// The context every step runs against

pub(crate) struct Ctx<'a> {
    pub(crate) sc: &'a Scenario,
    pub(crate) opts: &'a Options,
    pub(crate) sandbox: PathBuf,
    pub(crate) marker: String,
    pub(crate) shared: Arc<Shared>,
    pub(crate) acked: Vec<i64>,
    /// For each acknowledged id, when (CLOCK_MONOTONIC, ns, the probe's clock) the enqueue
    /// process that acknowledged it was spawned: the earliest the job could be scheduled.
    pub(crate) acked_at: Vec<u64>,
    pub(crate) holds: Vec<Hold>,
    pub(crate) remembered: HashMap<String, Remembered>,
    /// One line per step run, with what it reported (e.g. how much `fill` wrote):
    /// `harness-logs/steps.log`.
    pub(crate) step_log: Vec<String>,
    pub(crate) daemon_bin: PathBuf,
    pub(crate) cli_count: usize,
    pub(crate) threads: Vec<JoinHandle<()>>,
    /// The power-loss log processes record into now (`powerloss/log-N`), with the header.
    pub(crate) power_log: u32,
    /// The `power_loss` steps run so far.
    pub(crate) power_cuts: Vec<PowerCut>,
    /// `CLOCK_MONOTONIC` (the probe's clock) at `shared.start`.
    pub(crate) mono_origin_ns: u64,
    /// Every step run so far, with its times, for the timeline.
    pub(crate) step_records: Vec<StepRecord>,
    /// What the last failing invariant check found (the timeline highlights it).
    pub(crate) violations: Vec<Violation>,
    /// The throwaway PostgreSQL server of a run on that backend (started by `setup`,
    /// stopped at teardown on every path out).
    pub(crate) pg: Option<homer_testkit::PgServer>,
    /// The harness's own connection for `query` (read-only transactions), while it works.
    pub(crate) pg_client: std::cell::RefCell<Option<postgres::Client>>,
    /// Its URL, given to every homerd as `HOMER_DATABASE`; kept after the server stops.
    pub(crate) pg_url: Option<String>,
    /// The PostgreSQL database as read just before the server stopped: what a history
    /// taken after teardown (the timeline) reads.
    pub(crate) pg_final: Option<DbState>,
    /// With `[settings] hosts = true`: each host by its home's name (made in `setup`
    /// before the server, which listens on their links; dropped after teardown's kill).
    pub(crate) hosts: Vec<(String, homer_testkit::Host)>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(sc: &'a Scenario, opts: &'a Options, sandbox: PathBuf, marker: String, start: Instant) -> Self {
        Ctx {
            sc,
            opts,
            sandbox,
            marker,
            shared: Arc::new(Shared { state: Mutex::new(State::default()), changed: Condvar::new(), start }),
            acked: Vec::new(),
            acked_at: Vec::new(),
            holds: Vec::new(),
            remembered: HashMap::new(),
            step_log: Vec::new(),
            daemon_bin: opts.daemon.clone(),
            cli_count: 0,
            threads: Vec::new(),
            power_log: 1,
            power_cuts: Vec::new(),
            // `start` was taken a moment ago: step the probe's clock back by as much.
            mono_origin_ns: crate::probe::mono_ns().saturating_sub(start.elapsed().as_nanos() as u64),
            step_records: Vec::new(),
            violations: Vec::new(),
            pg: None,
            pg_client: std::cell::RefCell::new(None),
            pg_url: None,
            pg_final: None,
            hosts: Vec::new(),
        }
    }
}

impl Ctx<'_> {
    pub(crate) fn home(&self) -> PathBuf {
        self.sandbox.join("home")
    }
    pub(crate) fn lock_path(&self) -> PathBuf {
        self.home().join("homer.lock")
    }
    pub(crate) fn db(&self) -> PathBuf {
        self.home().join("homer.db")
    }
    pub(crate) fn effects_dir(&self) -> PathBuf {
        self.sandbox.join("effects")
    }
    pub(crate) fn clock_file(&self) -> PathBuf {
        self.sandbox.join("clock-offset-ms")
    }
    /// The power-loss log every `homerd` records into until the next `power_loss` step
    /// (outside the home: a full tmpfs home must not stop the recording).
    pub(crate) fn power_log_path(&self) -> PathBuf {
        self.sandbox.join("powerloss").join(format!("log-{}", self.power_log))
    }

    /// Ends every `hold_write` in progress and waits for its thread (its connection closed).
    pub(crate) fn end_holds(&mut self) {
        for h in &self.holds {
            let _ = h.stop.send(());
        }
        for h in self.holds.drain(..) {
            let _ = h.thread.join();
        }
    }

    pub(crate) fn scaled(&self, d: Duration) -> Duration {
        d.mul_f64(self.opts.time_scale)
    }

    pub(crate) fn deadline(&self, d: Duration) -> Instant {
        Instant::now() + self.scaled(d)
    }

    /// Substitute placeholders in one string.
    pub(crate) fn subst(&self, s: &str) -> Result<String, StepError> {
        let mut out = s
            .replace("{sandbox}", &self.sandbox.to_string_lossy())
            .replace("{home}", &self.home().to_string_lossy())
            .replace("{lock}", &self.lock_path().to_string_lossy())
            .replace("{db}", &self.db().to_string_lossy())
            .replace("{scenarios}", &scenario_dir(&self.sc.path).to_string_lossy())
            .replace("{probe}", &self.probe_argv(&ProbeSpec::default()).join(" "));
        while let Some(start) = out.find("{job:") {
            let end = out[start..]
                .find('}')
                .map(|e| start + e)
                .ok_or_else(|| StepError { expected: String::from("{job:N}"), actual: out.clone() })?;
            let n: usize = out[start + 5..end].parse().map_err(|_| StepError {
                expected: String::from("{job:N} with N a number"),
                actual: out[start..=end].to_string(),
            })?;
            let Some(id) = n.checked_sub(1).and_then(|i| self.acked.get(i)) else {
                return fail(
                    format!("at least {n} acknowledged enqueues for {{job:{n}}}"),
                    format!("{}", self.acked.len()),
                );
            };
            out.replace_range(start..=end, &id.to_string());
        }
        Ok(out)
    }

    pub(crate) fn path(&self, s: &str) -> Result<PathBuf, StepError> {
        let p = PathBuf::from(self.subst(s)?);
        Ok(if p.is_absolute() { p } else { self.sandbox.join(p) })
    }

    pub(crate) fn probe_argv(&self, spec: &ProbeSpec) -> Vec<String> {
        let mut v: Vec<String> = self.opts.probe.iter().map(|s| s.to_string_lossy().into_owned()).collect();
        v.push(String::from("--effects"));
        v.push(self.effects_dir().to_string_lossy().into_owned());
        v.push(String::from("--sleep-ms"));
        v.push(self.scaled(spec.sleep).as_millis().to_string());
        if let Some(g) = spec.grandchild {
            v.push(String::from("--grandchild-ms"));
            v.push(self.scaled(g).as_millis().to_string());
        }
        if spec.grandchild_setsid {
            v.push(String::from("--grandchild-setsid"));
        }
        if spec.exit_code != 0 {
            v.push(String::from("--exit"));
            v.push(spec.exit_code.to_string());
        }
        if spec.ignore_term {
            v.push(String::from("--ignore-term"));
        }
        v
    }

    /// A `homerd` command: sandbox environment, settings after the subcommand.
    pub(crate) fn homerd(
        &self,
        args: &[String],
        with_settings: bool,
        env: &[(String, String)],
        unprivileged: bool,
    ) -> Command {
        self.homerd_in(&self.home(), args, with_settings, env, unprivileged)
    }

    /// A named home of its own (`start`'s `home = "b"`): `<sandbox>/homes/b`, another
    /// "host" sharing the run's database on PostgreSQL (on SQLite: its own database).
    pub(crate) fn named_home(&self, name: &str) -> PathBuf {
        self.sandbox.join("homes").join(name)
    }

    /// [`Ctx::homerd`] with `home` as `HOMER_HOME`.
    pub(crate) fn homerd_in(
        &self,
        home: &Path,
        args: &[String],
        with_settings: bool,
        env: &[(String, String)],
        unprivileged: bool,
    ) -> Command {
        // HOME and the XDG directories point into the sandbox, so nothing of the user's
        // (an installed service unit, a config) leaks into a scenario.
        let host = self.hosts.iter().find(|(name, _)| self.named_home(name) == home).map(|(_, h)| h);
        let mut cmd = match host {
            // A host's home: the process runs in its network namespace (`ip netns exec`
            // execs homerd, so the pid is homerd's) and reaches the server over its link.
            Some(h) => {
                let mut cmd = homer_testkit::homerd_command(std::path::Path::new("ip"), &self.sandbox, home, &[]);
                cmd.args(["netns", "exec", h.netns()]).arg(&self.daemon_bin);
                cmd
            }
            None => homer_testkit::homerd_command(&self.daemon_bin, &self.sandbox, home, &[]),
        };
        cmd.env("HOMERD_CLOCK_OFFSET_FILE", self.clock_file());
        if let Some(url) = &self.pg_url {
            // The `database` setting, from the environment: every daemon and CLI call of
            // a run on PostgreSQL shares the run's server; a host reaches it at its link's
            // root-side address.
            let at_host = host.zip(self.pg.as_ref()).map(|(h, pg)| pg.url_at(h.server_addr().into()));
            cmd.env("HOMER_DATABASE", at_host.as_deref().unwrap_or(url));
        }
        if let Some(m) = &self.opts.mutant {
            cmd.env("HOMERD_MUTANT", m);
        }
        if self.sc.power_loss {
            cmd.env(POWERLOSS_LOG_ENV, self.power_log_path());
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut argv: Vec<String> = Vec::new();
        if let Some((first, rest)) = args.split_first() {
            argv.push(first.clone());
            if with_settings {
                for (k, v) in &self.sc.settings {
                    argv.push(String::from("--set"));
                    argv.push(format!("{k}={}", self.scale_setting(v)));
                }
            }
            argv.extend(rest.iter().cloned());
        }
        cmd.args(argv).current_dir(&self.sandbox).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        procs::prepare(&mut cmd, &self.marker);
        if unprivileged {
            let _ = procs::drop_privileges(&mut cmd);
        }
        cmd
    }

    pub(crate) fn scale_setting(&self, v: &str) -> String {
        // A zero stays as written: "0" is also a count (`max_interruptions = "0"`).
        match parse_duration(v) {
            Ok(d) if self.opts.time_scale != 1.0 && !d.is_zero() => {
                homerd::duration::format_duration(self.scaled(d).max(Duration::from_millis(1)))
            }
            _ => v.to_string(),
        }
    }

    /// Spawn and attach readers and a waiter; returns the pid.
    pub(crate) fn spawn(&mut self, name: String, kind: ProcKind, mut cmd: Command) -> Result<u32, StepError> {
        let (mut proc, pipes) = match procs::spawn(&mut cmd, &self.marker) {
            Ok(spawned) => spawned,
            Err(e) => return fail(format!("{name} to start"), format!("spawn failed: {e}")),
        };
        let pid = proc.pid() as u32;
        let index = {
            let mut st = self.shared.lock();
            st.procs.push(ProcState {
                name: name.clone(),
                pid,
                kind,
                started: Instant::now(),
                exited: None,
                killed: None,
                code: None,
                signal: None,
                stdout: Vec::new(),
                stderr: Vec::new(),
                stdout_closed: pipes.stdout.is_none(),
                stderr_closed: pipes.stderr.is_none(),
                prints_ids: false,
            });
            st.procs.len() - 1
        };
        let recorder = Recorder { shared: self.shared.clone(), index, name, pid };
        if let Some(out) = pipes.stdout {
            self.threads.extend(read_lines(out, Stream::Stdout, Parse::None, recorder.clone()));
        }
        if let Some(err) = pipes.stderr {
            self.threads.extend(read_lines(err, Stream::Stderr, Parse::Json, recorder.clone()));
        }
        let shared = self.shared.clone();
        self.threads.push(std::thread::spawn(move || {
            let exit = proc.wait_exit(Duration::MAX);
            procs::disown(pid);
            let mut st = shared.lock();
            let p = &mut st.procs[index];
            p.exited = Some(Instant::now());
            if let Some(exit) = exit {
                p.code = exit.code();
                p.signal = exit.signal();
            }
            drop(st);
            shared.changed.notify_all();
        }));
        Ok(pid)
    }

    /// An armed process (`arm = N`) must have died at its cut: SIGKILLed by itself just
    /// before its N-th recorded op. One that exited by itself had fewer ops than that.
    pub(crate) fn expect_cut(&mut self, name: &str, arm: u64) -> Result<(), StepError> {
        let (code, signal) = {
            let st = self.shared.lock();
            match st.procs.iter().rev().find(|p| p.name == name) {
                Some(p) => (p.code, p.signal),
                None => return fail(format!("a process named {name}"), "none was started"),
            }
        };
        if signal != Some(libc::SIGKILL) {
            return fail(
                format!("{name} to cut power (SIGKILL itself) before its recorded op {arm}"),
                format!("it exited {}: it made fewer ops than that", exit_text(code, signal)),
            );
        }
        self.note(format!("{name} cut power before its op {arm}"));
        Ok(())
    }

    pub(crate) fn job_id(&self, n: u32) -> Result<i64, StepError> {
        match (n as usize).checked_sub(1).and_then(|i| self.acked.get(i)) {
            Some(id) => Ok(*id),
            None => fail(format!("an acknowledged enqueue number {n}"), format!("{} acknowledged", self.acked.len())),
        }
    }

    pub(crate) fn exited_summary(&self, target: &str) -> String {
        let st = self.shared.lock();
        let ex: Vec<String> = st
            .procs
            .iter()
            .filter(|p| matches_target(target, &p.name) && p.exited.is_some())
            .map(|p| format!("{} exited {}", p.name, exit_text(p.code, p.signal)))
            .collect();
        if ex.is_empty() {
            String::new()
        } else {
            format!(" ({})", ex.join(", "))
        }
    }

    /// Wait for a CLI process; returns (code, stdout, stderr).
    pub(crate) fn wait_cli(&self, name: &str, timeout: Duration) -> Result<CliOutput, StepError> {
        let deadline = self.deadline(timeout);
        let got = self.shared.wait_for(deadline, |st| {
            let p = st.procs.iter().rev().find(|p| p.name == name)?;
            (p.exited.is_some() && p.stdout_closed && p.stderr_closed)
                .then(|| (p.code, p.stdout.clone(), p.stderr.clone()))
        });
        match got {
            Some(v) => Ok(v),
            None => fail(format!("{name} to finish within {:?}", self.scaled(timeout)), "still running"),
        }
    }

    /// Runs a query on the run's database: the home's SQLite file, or on PostgreSQL the
    /// run's server (read-only transaction).
    pub(crate) fn query(&self, sql: &str) -> Result<Vec<Vec<Scalar>>, StepError> {
        match &self.pg_url {
            Some(url) => self.query_postgres(url, sql),
            None => self.query_at(&self.db(), sql),
        }
    }

    /// Whether the run's database does not exist yet (no file; on PostgreSQL no
    /// `job_queue` table, before the first daemon's migrations): a `wait = "sql"` keeps
    /// waiting then rather than failing.
    pub(crate) fn database_absent(&self) -> bool {
        match &self.pg_url {
            Some(url) => {
                !matches!(self.query_postgres(url, "SELECT to_regclass('job_queue') IS NOT NULL").as_deref(), Ok([row]) if row == &[Scalar::Int(1)])
            }
            None => !self.db().exists(),
        }
    }

    /// A query on PostgreSQL, values as a SQLite query would give them: integers of any
    /// width and integral `numeric`s (`sum` of a `bigint`) as `Int`, booleans as 0/1 (SQLite
    /// has no boolean), other numbers as `Float`, everything else as its text.
    fn query_postgres(&self, url: &str, sql: &str) -> Result<Vec<Vec<Scalar>>, StepError> {
        let err = |e: postgres::Error| StepError {
            expected: format!("the query `{sql}` to run on {}", crate::history::redact(url)),
            actual: e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string()),
        };
        let timeout = self.scaled(Duration::from_secs(10));
        // One connection for the run's queries (a `wait = "sql"` polls every 20 ms), kept
        // while it works: one that failed (a server restart) is dropped and made anew.
        let connect = || -> Result<postgres::Client, postgres::Error> {
            let mut config: postgres::Config = url.parse()?;
            config.connect_timeout(timeout);
            config.connect(postgres::NoTls)
        };
        let mut slot = self.pg_client.borrow_mut();
        let (mut client, kept) = match slot.take().filter(|c| !c.is_closed()) {
            Some(c) => (c, true),
            None => (connect().map_err(err)?, false),
        };
        let rows = match Self::query_on(&mut client, sql, timeout) {
            Ok(rows) => rows,
            // A kept connection the server ended meanwhile (a restart): once more, anew.
            Err(_) if kept => {
                client = connect().map_err(err)?;
                Self::query_on(&mut client, sql, timeout).map_err(err)?
            }
            Err(e) => return Err(err(e)),
        };
        *slot = Some(client);
        Ok(rows)
    }

    /// [`Ctx::query_postgres`] on a connection: a read-only transaction, rolled back.
    fn query_on(
        client: &mut postgres::Client,
        sql: &str,
        timeout: Duration,
    ) -> Result<Vec<Vec<Scalar>>, postgres::Error> {
        use postgres::types::Type;
        let mut tx = client.build_transaction().read_only(true).start()?;
        tx.batch_execute(&format!("SET LOCAL statement_timeout = {}", timeout.as_millis().max(1)))?;
        let types: Vec<Type> = tx.prepare(sql)?.columns().iter().map(|c| c.type_().clone()).collect();
        let mut rows = Vec::new();
        for msg in tx.simple_query(sql)? {
            let postgres::SimpleQueryMessage::Row(row) = msg else { continue };
            let mut out = Vec::with_capacity(row.len());
            for i in 0..row.len() {
                let ty = types.get(i).cloned().unwrap_or(Type::TEXT);
                out.push(match row.get(i) {
                    None => Scalar::Null,
                    Some(v) if [Type::INT2, Type::INT4, Type::INT8, Type::OID].contains(&ty) => {
                        v.parse().map(Scalar::Int).unwrap_or_else(|_| Scalar::Text(v.to_string()))
                    }
                    Some(v) if ty == Type::BOOL => Scalar::Int(i64::from(v == "t")),
                    Some(v) if ty == Type::NUMERIC && !v.contains(['.', 'e', 'E']) => {
                        v.parse().map(Scalar::Int).unwrap_or_else(|_| Scalar::Text(v.to_string()))
                    }
                    Some(v) if [Type::FLOAT4, Type::FLOAT8, Type::NUMERIC].contains(&ty) => {
                        v.parse().map(Scalar::Float).unwrap_or_else(|_| Scalar::Text(v.to_string()))
                    }
                    Some(v) => Scalar::Text(v.to_string()),
                });
            }
            rows.push(out);
        }
        tx.rollback()?;
        Ok(rows)
    }

    pub(crate) fn query_at(&self, db: &Path, sql: &str) -> Result<Vec<Vec<Scalar>>, StepError> {
        let err =
            |e: rusqlite::Error| StepError { expected: format!("the query `{sql}` to run"), actual: e.to_string() };
        let conn = rusqlite::Connection::open_with_flags(
            db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err)?;
        conn.busy_timeout(self.scaled(Duration::from_secs(10))).map_err(err)?;
        let mut stmt = conn.prepare(sql).map_err(err)?;
        let n = stmt.column_count();
        let rows = stmt
            .query_map([], |row| {
                (0..n)
                    .map(|i| {
                        Ok(match row.get_ref(i)? {
                            rusqlite::types::ValueRef::Null => Scalar::Null,
                            rusqlite::types::ValueRef::Integer(v) => Scalar::Int(v),
                            rusqlite::types::ValueRef::Real(v) => Scalar::Float(v),
                            rusqlite::types::ValueRef::Text(t) => Scalar::Text(String::from_utf8_lossy(t).into_owned()),
                            rusqlite::types::ValueRef::Blob(b) => Scalar::Text(format!("<{} bytes>", b.len())),
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        Ok(rows)
    }

    pub(crate) fn effects(&self) -> Result<Vec<crate::history::Effect>, String> {
        match std::fs::read_to_string(self.effects_dir().join("effects.log")) {
            Ok(text) => crate::history::parse_effects(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e.to_string()),
        }
    }

    pub(crate) fn history(&self, with_db: bool) -> Result<History, StepError> {
        let effects =
            self.effects().map_err(|e| StepError { expected: String::from("a readable effects log"), actual: e })?;
        let read = match (&self.pg_url, &self.pg) {
            _ if !with_db => Ok(None),
            (None, _) if !self.db().exists() => Ok(None),
            (None, _) => DbState::read(&self.db()).map(Some),
            (Some(url), Some(_)) => DbState::read_postgres(url, self.scaled(Duration::from_secs(10))).map(Some),
            // The server is gone (teardown): the snapshot taken just before it stopped.
            (Some(_), None) => Ok(self.pg_final.clone()),
        };
        let st = self.shared.lock();
        // A database that cannot be read is judged unreadable — never skipped — once a
        // daemon has led on it: then it must be homerd's and readable. Before that (every
        // start refused: a foreign or newer file, the original daemon's), it is the
        // user's file as it was, which the scenario's own steps judge.
        let led = st.events.iter().any(|e| e.name() == "daemon.active");
        let db = match read {
            Ok(db) => db,
            Err(e) if led => Some(DbState::unreadable(&e.to_string())),
            Err(_) => None,
        };
        let start = self.shared.start;
        let procs = st
            .procs
            .iter()
            .map(|p| ProcRecord {
                name: p.name.clone(),
                pid: p.pid,
                kind: p.kind.clone(),
                started: p.started.saturating_duration_since(start),
                exited: p.exited.map(|t| t.saturating_duration_since(start)),
                killed: p.killed.map(|t| t.saturating_duration_since(start)),
                exit_code: p.code,
                signal: p.signal,
            })
            .collect();
        // Ids printed by background enqueues are acknowledged too, after the steps' ones.
        let mut acked = self.acked.clone();
        acked.extend(st.procs.iter().flat_map(ProcState::printed_ids));
        Ok(History {
            procs,
            events: st.events.clone(),
            effects,
            db,
            acked,
            power_cuts: self.power_cuts.clone(),
            mono_origin_ns: self.mono_origin_ns,
        })
    }

    pub(crate) fn check(&mut self, opts: &CheckOptions, explicit: bool) -> Result<(), StepError> {
        let h = self.history(true)?;
        if explicit && h.db.is_none() {
            let which = match &self.pg_url {
                Some(url) => format!("the queue at {}", crate::history::redact(url)),
                None => self.db().display().to_string(),
            };
            return fail("a readable homerd database to check", format!("{which} unreadable or absent"));
        }
        let violations = check::check_all(&h, opts);
        if violations.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = violations.iter().map(|v| v.to_string()).collect();
        self.violations = violations;
        fail("every invariant to hold", list.join("; "))
    }

    /// On macOS cleanup kills groups: register the job groups homerd recorded.
    pub(crate) fn register_job_groups(&self) {
        if let Ok(rows) = self.query("SELECT DISTINCT child_pgid FROM job_runs WHERE child_pgid IS NOT NULL") {
            for row in rows {
                if let Some(Scalar::Int(g)) = row.first() {
                    procs::register_group(&self.marker, *g as i32);
                }
            }
        }
    }

    pub(crate) fn log_tails(&self) -> Vec<(String, String)> {
        let st = self.shared.lock();
        let mut tails: Vec<(String, String)> = st
            .procs
            .iter()
            .filter(|p| !p.stderr.is_empty() || p.kind == ProcKind::Daemon)
            .map(|p| (format!("{} (pid {}, {})", p.name, p.pid, exit_text(p.code, p.signal)), tail(&p.stderr, 12)))
            .collect();
        // What fault steps reported (e.g. how much `fill` wrote) belongs beside the failure.
        let notes: Vec<&str> = self
            .step_log
            .iter()
            .filter(|l| l.contains(" -> ") && !l.contains(" -> failed:"))
            .map(String::as_str)
            .collect();
        if !notes.is_empty() {
            tails.push((String::from("harness step notes"), notes.join("\n")));
        }
        // A PostgreSQL run's server speaks for itself (warnings and worse: refused
        // connections, a crash) beside the daemons.
        if let Some(log) = self.pg.as_ref().and_then(|pg| std::fs::read(pg.log_path()).ok()) {
            let log = tail(&log, 12);
            if !log.is_empty() {
                tails.push((String::from("postgres (server log)"), log));
            }
        }
        tails
    }

    /// Add what the current step reported to its line in the step log.
    pub(crate) fn note(&mut self, note: String) {
        if let Some(last) = self.step_log.last_mut() {
            last.push_str(" -> ");
            last.push_str(&note);
        }
    }

    /// Starts the run's PostgreSQL server in the sandbox, its processes under the run's
    /// marker (`procs::PgSpawner`: the survivors check covers them).
    pub(crate) fn start_postgres(&mut self) -> Result<(), String> {
        let mut opts = homer_testkit::PgOptions {
            spawner: std::sync::Arc::new(procs::PgSpawner { marker: self.marker.clone() }),
            ..Default::default()
        };
        if !self.hosts.is_empty() {
            // Loopback for the harness and CLI calls, and each host's link; each host's /30 trusted.
            opts.listen = std::iter::once(std::net::IpAddr::from([127, 0, 0, 1]))
                .chain(self.hosts.iter().map(|(_, h)| std::net::IpAddr::from(h.server_addr())))
                .collect();
            opts.trust = self.hosts.iter().map(|(_, h)| h.subnet()).collect();
        }
        let pg = homer_testkit::PgServer::start_with(&self.sandbox, &opts)
            .map_err(|e| format!("start the run's PostgreSQL server: {e}"))?;
        self.step_log.push(format!("postgres: {} (log {})", pg.url(), pg.log_path().display()));
        self.pg_url = Some(pg.url());
        self.pg = Some(pg);
        Ok(())
    }

    /// Makes a host (network namespace and link) for each of the scenario's hosts
    /// (`[settings] hosts = true`), before the server that listens on their links. Root
    /// only: otherwise an error that says so and how to skip.
    pub(crate) fn make_hosts(&mut self) -> Result<(), String> {
        if self.sc.hosts.is_empty() {
            return Ok(());
        }
        if !rustix::process::geteuid().is_root() {
            return Err(format!(
                "this scenario runs its homes ({}) as hosts (`[settings] hosts = true`): network namespaces \
                 need root (CAP_SYS_ADMIN, CAP_NET_ADMIN); run the harness as root, or set \
                 HOMER_SKIP_ROOT_TESTS=1 to skip such scenarios",
                self.sc.hosts.join(", ")
            ));
        }
        // Every `ip`/`tc` the host runs is registered as the run's (`procs::PgSpawner`), so
        // the harness's reaper of orphaned zombies cannot take its exit status first.
        let spawner: std::sync::Arc<dyn homer_testkit::Spawner> =
            std::sync::Arc::new(procs::PgSpawner { marker: self.marker.clone() });
        for name in &self.sc.hosts {
            let host = homer_testkit::Host::create_with(name, spawner.clone())?;
            self.step_log.push(format!(
                "host {name}: network namespace {}, reaches the server at {} (its address {})",
                host.netns(),
                host.server_addr(),
                host.addr()
            ));
            self.hosts.push((name.clone(), host));
        }
        Ok(())
    }

    /// The host named `name` (a home of a `hosts = true` scenario).
    pub(crate) fn host(&self, name: &str) -> Result<&homer_testkit::Host, StepError> {
        match self.hosts.iter().find(|(n, _)| n == name) {
            Some((_, h)) => Ok(h),
            None => fail(
                format!("a host named {name}"),
                format!(
                    "hosts of this run: [{}]",
                    self.hosts.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
                ),
            ),
        }
    }

    /// Stops the run's PostgreSQL server, if it runs, after a last read of the queue for
    /// what comes after teardown (the timeline). The drop copies the server's log into the
    /// sandbox when the server lived outside it. Returns what failed.
    pub(crate) fn stop_postgres(&mut self) -> Vec<String> {
        let Some(url) = self.pg_url.clone() else { return Vec::new() };
        if self.pg.is_none() {
            return Vec::new();
        }
        self.pg_client.borrow_mut().take();
        self.pg_final = DbState::read_postgres(&url, self.scaled(Duration::from_secs(10))).ok();
        let mut pg = self.pg.take().expect("checked above");
        let result = pg.stop(homer_testkit::StopMode::Fast);
        drop(pg);
        result.err().into_iter().collect()
    }

    /// Unmount the tmpfs home, if the scenario has one (every process is dead by now).
    /// When the sandbox is kept, the home's files are copied out first so the kept
    /// sandbox looks like any other (`home/homer.db`, ...). Returns what failed.
    pub(crate) fn unmount_home(&mut self, keep: bool) -> Vec<String> {
        if procs::mounts_of(&self.marker).is_empty() {
            return Vec::new();
        }
        let home = self.home();
        let copy = self.sandbox.join(".home-at-teardown");
        let copied = keep && crate::faults::copy_tree(&home, &copy).is_ok();
        let errors = procs::unmount_marked(&self.marker);
        if copied && errors.is_empty() && std::fs::remove_dir(&home).is_ok() {
            let _ = std::fs::rename(&copy, &home);
        }
        errors
    }

    /// Every process's output into `<sandbox>/harness-logs/`, and the step log
    /// (`steps.log`; useful with `--keep`).
    pub(crate) fn write_logs(&self) {
        let dir = self.sandbox.join("harness-logs");
        if std::fs::create_dir_all(&dir).is_err() {
            return;
        }
        let mut steps = self.step_log.join("\n");
        steps.push('\n');
        let _ = std::fs::write(dir.join("steps.log"), steps);
        let st = self.shared.lock();
        for p in &st.procs {
            let _ = std::fs::write(dir.join(format!("{}.stderr", p.name)), &p.stderr);
            let _ = std::fs::write(dir.join(format!("{}.stdout", p.name)), &p.stdout);
        }
    }
}

/// The absolute directory of a scenario file (fixtures are named relative to it).
pub(crate) fn scenario_dir(path: &Path) -> PathBuf {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
}

pub(crate) fn exit_text(code: Option<i32>, signal: Option<i32>) -> String {
    match (code, signal) {
        (Some(c), _) => format!("code {c}"),
        (None, Some(s)) => format!("signal {s}"),
        (None, None) => String::from("running"),
    }
}

pub(crate) fn tail(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

pub(crate) fn check_patterns(name: &str, stream: &str, bytes: &[u8], patterns: &[Pattern]) -> Result<(), StepError> {
    let text = String::from_utf8_lossy(bytes);
    for p in patterns {
        let found = if p.regex {
            match regex::Regex::new(&p.text) {
                Ok(re) => re.is_match(&text),
                Err(e) => return fail(format!("a valid regex `{}`", p.text), e.to_string()),
            }
        } else {
            text.contains(&p.text)
        };
        if found == p.negated {
            let want = if p.negated { "not to contain" } else { "to contain" };
            return fail(format!("{name} {stream} {want} {:?}", p.text), tail(bytes, 8));
        }
    }
    Ok(())
}

/// `HOMERD_POWERLOSS_LOG` and `HOMERD_POWERLOSS_CUT` (`daemon/src/powerloss.rs`).
pub(crate) const POWERLOSS_LOG_ENV: &str = "HOMERD_POWERLOSS_LOG";
pub(crate) const POWERLOSS_CUT_ENV: &str = "HOMERD_POWERLOSS_CUT";

/// The environment that arms a process to cut power before its N-th recorded op.
pub(crate) fn armed_env(arm: Option<u64>) -> Vec<(String, String)> {
    arm.map(|n| (String::from(POWERLOSS_CUT_ENV), n.to_string())).into_iter().collect()
}
