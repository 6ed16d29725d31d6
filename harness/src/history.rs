//! The history of one scenario run: the data the invariant checkers (`check/`) judge.
//!
//! Three independent sources, deliberately kept apart so one cannot vouch for another:
//! - what `homerd` *said*: every JSON event line its processes printed ([`Event`]), with the
//!   harness's own receive order (`seq`) and receive time (`at`), plus each process's life
//!   and end ([`ProcRecord`]);
//! - what the jobs *did*: the effects log the probe (`probe.rs`) appends to, which does not
//!   trust the daemon at all ([`Effect`], [`parse_effects`]);
//! - what the database *holds* at the end: a consistent snapshot of `job_queue`,
//!   `job_runs`, the leader epoch and `PRAGMA integrity_check` ([`DbState::read`]), or on
//!   the PostgreSQL backend the same tables and the worker rows ([`DbState::read_postgres`]).
//!
//! The readers are the judge's own: their queries are written here, against the schema
//! (`migrations/`, `migrations/postgres/`), never borrowed from the daemon's code, so a
//! daemon bug in a query cannot hide itself from the checkers.
//!
//! Invariants: `Event::seq` is a single order across all processes of a scenario (the
//! order in which the harness received the lines), and `Event::at` / `ProcRecord::started`
//! / `ProcRecord::exited` are all measured on the same clock since the scenario started,
//! so events and exits of different processes can be compared. A [`DbState`] is read in
//! one read transaction, so its tables agree with each other. Nothing here writes to the
//! database: it is opened read-only.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One JSON line a `homerd` process printed.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// The scenario's name for the process (e.g. `a`, `b`, `cli.3`).
    pub proc_name: String,
    pub pid: u32,
    /// Global receive order across all processes of the scenario.
    pub seq: u64,
    /// Receive time since the scenario started.
    pub at: Duration,
    /// The parsed line.
    pub json: Value,
}

impl Event {
    /// The event's stable name (`json["event"]`), or `""` for a line without one.
    pub fn name(&self) -> &str {
        self.json.get("event").and_then(Value::as_str).unwrap_or("")
    }

    /// An integer field; `None` if absent or not an integer that fits an `i64`.
    pub fn field_i64(&self, key: &str) -> Option<i64> {
        self.json.get(key).and_then(Value::as_i64)
    }

    /// An unsigned integer field (device and inode numbers are `u64`).
    pub fn field_u64(&self, key: &str) -> Option<u64> {
        self.json.get(key).and_then(Value::as_u64)
    }

    /// A string field; `None` if absent or not a string.
    pub fn field_str(&self, key: &str) -> Option<&str> {
        self.json.get(key).and_then(Value::as_str)
    }
}

// Not `Copy`: callers already `.clone()` it, which clippy's `clone_on_copy` would reject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProcKind {
    /// A long-running `homerd run`.
    Daemon,
    /// A short CLI call (`enqueue`, `status`, `migrate`, ...).
    Cli,
}

/// One process the scenario started, and how it ended.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcRecord {
    pub name: String,
    pub pid: u32,
    pub kind: ProcKind,
    pub started: Duration,
    /// When the harness saw it exit; `None` if it was still running when the history was
    /// taken.
    pub exited: Option<Duration>,
    /// When the harness first sent it SIGKILL, if it did: the kernel may release what the
    /// process held (its flock) at any moment after, before its exit is observed.
    pub killed: Option<Duration>,
    pub exit_code: Option<i32>,
    /// The signal that ended it, if any.
    pub signal: Option<i32>,
}

/// What a record of the effects log says happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EffectKind {
    /// A run of the job began its work (it holds the job's flock).
    Start,
    /// A run of the job finished its work (still holding the flock).
    End,
    /// A run found the job's flock held: another run of the same job was alive.
    Overlap,
    GrandchildStart,
    GrandchildEnd,
}

/// One record of the effects log (`probe.rs` writes them; one JSON object per line, in
/// exactly this field order).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Effect {
    pub kind: EffectKind,
    /// `HOMER_JOB_ID`.
    pub job_id: i64,
    /// `HOMER_RUN`.
    pub run: i64,
    /// `HOMER_ATTEMPT`.
    pub attempt: i64,
    /// `HOMER_CLAIM_TOKEN`.
    pub token: String,
    /// The writing process (the probe, or its grandchild).
    pub pid: u32,
    /// `CLOCK_MONOTONIC` in nanoseconds: system-wide, so records of different processes
    /// compare.
    pub mono_ns: u64,
}

/// Parses the effects log. A last line without its newline is a record whose writer died
/// mid-write (each record is one `write(2)` ending in `\n`), so it is ignored; any other
/// malformed line is an error naming its line number.
pub fn parse_effects(text: &str) -> Result<Vec<Effect>, String> {
    // Everything after the last newline is torn (or empty).
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    let mut effects = Vec::new();
    for (index, line) in complete.split('\n').enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let effect = serde_json::from_str::<Effect>(line)
            .map_err(|e| format!("effects log line {}: {e}: {line:?}", index + 1))?;
        effects.push(effect);
    }
    Ok(effects)
}

/// A `job_queue` row, reduced to what the checkers judge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRow {
    pub id: i64,
    pub status: String,
    pub attempts: i64,
    pub max_attempts: i64,
    pub interruptions: i64,
    pub locked_by: Option<String>,
    pub claim_token: Option<String>,
    pub claim_epoch: Option<i64>,
    pub runs: i64,
}

impl JobRow {
    /// `completed`, `failed` and `cancelled` are terminal (README.md "Jobs").
    pub fn is_terminal(&self) -> bool {
        matches!(self.status.as_str(), "completed" | "failed" | "cancelled")
    }
}

/// Rows for the tests of the readers and the checkers.
#[cfg(test)]
impl JobRow {
    /// Claimed once of three allowed attempts, holding no claim now.
    pub(crate) fn unclaimed(id: i64, status: &str) -> JobRow {
        JobRow {
            id,
            status: status.into(),
            attempts: 1,
            max_attempts: 3,
            interruptions: 0,
            locked_by: None,
            claim_token: None,
            claim_epoch: None,
            runs: 1,
        }
    }

    /// This row, holding the claim `token` of `worker` under `epoch`.
    pub(crate) fn held(self, worker: &str, token: &str, epoch: i64) -> JobRow {
        JobRow { locked_by: Some(worker.into()), claim_token: Some(token.into()), claim_epoch: Some(epoch), ..self }
    }
}

/// A `job_runs` row, reduced to what the checkers judge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunRow {
    pub id: i64,
    pub job_id: i64,
    pub run: i64,
    pub attempt: i64,
    pub epoch: i64,
    pub claim_token: String,
    pub outcome: Option<String>,
    /// `ended_at IS NOT NULL`.
    pub ended: bool,
    /// Why the run ended as it did (`NULL` for a completed run).
    pub error: Option<String>,
}

/// A `homer_workers` row (PostgreSQL only), reduced to what the checkers judge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerRow {
    /// The worker's epoch: `job_runs.epoch` and `job_queue.claim_epoch` carry it.
    pub incarnation: i64,
    /// `<host>/<boot id>:<home>`: the incarnations of one name succeed each other (the
    /// home's flock lets only one live at a time).
    pub name: String,
    pub fenced: bool,
    pub stopped: bool,
}

/// A [`JobRow`] from a row whose columns are, in order, `id, status, attempts,
/// max_attempts, interruptions, locked_by, claim_token, claim_epoch, runs`; `$get` is the
/// row's fallible getter (`get` for SQLite, `try_get` for PostgreSQL). Both readers select
/// these columns, so the mapping is written once.
macro_rules! job_row {
    ($r:ident, $get:ident) => {
        JobRow {
            id: $r.$get(0)?,
            status: $r.$get(1)?,
            attempts: $r.$get(2)?,
            max_attempts: $r.$get(3)?,
            interruptions: $r.$get(4)?,
            locked_by: $r.$get(5)?,
            claim_token: $r.$get(6)?,
            claim_epoch: $r.$get(7)?,
            runs: $r.$get(8)?,
        }
    };
}

/// A [`RunRow`] from a row whose columns are, in order, `id, job_id, run, attempt, epoch,
/// claim_token, outcome, ended_at IS NOT NULL, error` (`$get` as for `job_row!`).
macro_rules! run_row {
    ($r:ident, $get:ident) => {
        RunRow {
            id: $r.$get(0)?,
            job_id: $r.$get(1)?,
            run: $r.$get(2)?,
            attempt: $r.$get(3)?,
            epoch: $r.$get(4)?,
            claim_token: $r.$get(5)?,
            outcome: $r.$get(6)?,
            ended: $r.$get(7)?,
            error: $r.$get(8)?,
        }
    };
}

/// The database at the end of a scenario (or at a `check` step).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbState {
    /// Ordered by id.
    pub jobs: Vec<JobRow>,
    /// Ordered by id, i.e. in commit order.
    pub runs: Vec<RunRow>,
    /// The highest epoch the database has handed out: SQLite's leader row; on PostgreSQL
    /// the highest worker incarnation (0 before any worker registered).
    pub leader_epoch: i64,
    /// `PRAGMA integrity_check`'s rows joined with `"; "`: exactly `"ok"` when healthy.
    /// PostgreSQL keeps its own storage and has no read-only counterpart (amcheck is an
    /// extension, installed by a write), so its reader says `"ok"`: the `integrity`
    /// checker judges SQLite files.
    pub integrity: String,
    /// PostgreSQL's worker rows, by incarnation; empty on SQLite, where one leader row
    /// makes every epoch one line of succession.
    pub workers: Vec<WorkerRow>,
}

impl DbState {
    /// A database that is there but could not be read as homerd's (a missing table, a
    /// malformed file, a server that does not answer): nothing in it can be judged, and
    /// that itself is what the [`crate::check::integrity`] checker reports.
    pub fn unreadable(error: &str) -> DbState {
        DbState {
            jobs: Vec::new(),
            runs: Vec::new(),
            leader_epoch: 0,
            integrity: format!("unreadable: {error}"),
            workers: Vec::new(),
        }
    }
}

impl DbState {
    /// Reads a snapshot of `db` through a read-only connection (no write, no PRAGMA that
    /// changes anything), waiting up to 10 s for a writer. All reads share one read
    /// transaction so the tables agree.
    pub fn read(db: &Path) -> Result<DbState, String> {
        let context = |what: &str, e: rusqlite::Error| format!("{}: {what}: {e}", db.display());
        let mut conn =
            Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                .map_err(|e| context("open read-only", e))?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(|e| context("busy_timeout", e))?;
        let tx = conn.transaction().map_err(|e| context("begin", e))?;

        let jobs = all_rows(
            &tx,
            "SELECT id, status, attempts, max_attempts, interruptions, locked_by, claim_token, claim_epoch, runs
             FROM job_queue ORDER BY id",
            |r| Ok(job_row!(r, get)),
        )
        .map_err(|e| context("read job_queue", e))?;

        let runs = all_rows(
            &tx,
            "SELECT id, job_id, run, attempt, epoch, claim_token, outcome, ended_at IS NOT NULL, error
             FROM job_runs ORDER BY id",
            |r| Ok(run_row!(r, get)),
        )
        .map_err(|e| context("read job_runs", e))?;

        // Migration 009 inserts the one row; a missing row is itself worth reporting.
        let leader_epoch = tx
            .query_row("SELECT epoch FROM leader WHERE id = 1", [], |r| r.get::<_, i64>(0))
            .optional()
            .map_err(|e| context("read leader", e))?
            .ok_or_else(|| format!("{}: the leader table has no row", db.display()))?;

        let integrity = all_rows(&tx, "PRAGMA integrity_check", |r| r.get::<_, String>(0))
            .map_err(|e| context("integrity_check", e))?
            .join("; ");

        // Read-only: nothing to commit, and dropping would roll back anyway.
        tx.rollback().map_err(|e| context("end read transaction", e))?;
        Ok(DbState { jobs, runs, leader_epoch, integrity, workers: Vec::new() })
    }

    /// Reads a snapshot of the PostgreSQL queue at `url` in one `REPEATABLE READ READ
    /// ONLY` transaction (one snapshot: the tables agree), with its own queries: the same
    /// [`DbState`] as [`DbState::read`], plus the worker rows. Integer columns are read as
    /// `bigint` whatever their width. A missing schema is an error naming the table.
    pub fn read_postgres(url: &str, timeout: Duration) -> Result<DbState, String> {
        let shown = redact(url);
        let context = |what: &str, e: postgres::Error| format!("{shown}: {what}: {e}");
        let mut config: postgres::Config = url.parse().map_err(|e| context("parse the URL", e))?;
        config.connect_timeout(timeout);
        let mut client = config.connect(postgres::NoTls).map_err(|e| context("connect", e))?;
        let mut tx = client
            .build_transaction()
            .isolation_level(postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(|e| context("begin", e))?;
        tx.batch_execute(&format!("SET LOCAL statement_timeout = {}", timeout.as_millis().max(1)))
            .map_err(|e| context("statement_timeout", e))?;
        let jobs = pg_rows(
            &mut tx,
            "SELECT id, status, attempts::bigint, max_attempts::bigint, interruptions::bigint, locked_by,
                    claim_token, claim_epoch, runs::bigint
             FROM job_queue ORDER BY id",
            |r| Ok(job_row!(r, try_get)),
        )
        .map_err(|e| context("read job_queue", e))?;
        let runs = pg_rows(
            &mut tx,
            "SELECT id, job_id, run::bigint, attempt::bigint, epoch, claim_token, outcome,
                    ended_at IS NOT NULL, error
             FROM job_runs ORDER BY id",
            |r| Ok(run_row!(r, try_get)),
        )
        .map_err(|e| context("read job_runs", e))?;
        let workers = pg_rows(
            &mut tx,
            "SELECT incarnation, name, fenced_at IS NOT NULL, stopped_at IS NOT NULL
             FROM homer_workers ORDER BY incarnation",
            |r| {
                Ok(WorkerRow {
                    incarnation: r.try_get(0)?,
                    name: r.try_get(1)?,
                    fenced: r.try_get(2)?,
                    stopped: r.try_get(3)?,
                })
            },
        )
        .map_err(|e| context("read homer_workers", e))?;
        tx.rollback().map_err(|e| context("end read transaction", e))?;
        let leader_epoch = workers.iter().map(|w| w.incarnation).max().unwrap_or(0);
        Ok(DbState { jobs, runs, leader_epoch, integrity: String::from("ok"), workers })
    }

    /// The line of succession an epoch belongs to: on PostgreSQL its worker's name (a
    /// home on a host), `None` for an epoch no worker row has; on SQLite every epoch is
    /// the database's one line (`Some("")`).
    pub fn lineage(&self, epoch: i64) -> Option<&str> {
        if self.workers.is_empty() {
            return Some("");
        }
        self.workers.iter().find(|w| w.incarnation == epoch).map(|w| w.name.as_str())
    }

    pub fn job(&self, id: i64) -> Option<&JobRow> {
        self.jobs.iter().find(|j| j.id == id)
    }

    /// The runs of one job, in id order.
    pub fn runs_of(&self, job_id: i64) -> impl Iterator<Item = &RunRow> + '_ {
        self.runs.iter().filter(move |r| r.job_id == job_id)
    }
}

/// `url` with its password (if any) replaced by `***`: what messages may show.
pub fn redact(url: &str) -> String {
    let mut url = url.to_string();
    if let Some(at) = url.find("password=") {
        let start = at + "password=".len();
        let end = url[start..].find('&').map_or(url.len(), |e| start + e);
        url.replace_range(start..end, "***");
    }
    let Some((scheme, rest)) = url.split_once("://") else { return url };
    let (auth, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match auth.rsplit_once('@') {
        Some((creds, host)) => match creds.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.clone(),
        },
        None => url.clone(),
    }
}

/// Every row `sql` returns, mapped by `row`.
/// Every row of a PostgreSQL query with no parameters, mapped by `row`.
fn pg_rows<T>(
    tx: &mut postgres::Transaction<'_>,
    sql: &str,
    row: impl FnMut(&postgres::Row) -> Result<T, postgres::Error>,
) -> Result<Vec<T>, postgres::Error> {
    tx.query(sql, &[])?.iter().map(row).collect()
}

fn all_rows<T>(
    tx: &rusqlite::Transaction<'_>,
    sql: &str,
    row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    let mut stmt = tx.prepare(sql)?;
    let rows = stmt.query_map([], row)?.collect();
    rows
}

/// Everything the checkers judge about one scenario run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    pub procs: Vec<ProcRecord>,
    pub events: Vec<Event>,
    pub effects: Vec<Effect>,
    /// `None` when there was no database to read (e.g. every start was refused).
    pub db: Option<DbState>,
    /// Job ids whose enqueue printed an id (acknowledged: must never be lost).
    pub acked: Vec<i64>,
    /// The power losses the scenario cut (`power_loss` steps), in order.
    pub power_cuts: Vec<PowerCut>,
    /// `CLOCK_MONOTONIC` in nanoseconds when the scenario started (the origin of every
    /// `at`, `started` and `exited` above): puts the effects log on the same axis
    /// (`timeline/`). 0 when unknown.
    pub mono_origin_ns: u64,
}

/// One `power_loss` step: every process of the scenario was SIGKILLed and gone, then every
/// write no fsync covered was dropped. What happened before it still happened (the events
/// printed, the effects recorded), but the database kept only what was durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PowerCut {
    /// When the writes were dropped, since the scenario started (every exit observed).
    pub at: Duration,
    /// `CLOCK_MONOTONIC` in nanoseconds at that moment (the probe's clock, see [`Effect`]):
    /// an effect before it was written by a process the cut killed.
    pub mono_ns: u64,
    /// The `seq` of the last event received before the cut (0: none).
    pub last_seq: u64,
}

impl History {
    /// The record of the process that printed `event`.
    pub fn proc_of(&self, event: &Event) -> Option<&ProcRecord> {
        self.procs.iter().find(|p| p.name == event.proc_name && p.pid == event.pid)
    }

    /// All events in receive order (`seq`), whatever order `events` was filled in.
    pub fn events_in_order(&self) -> Vec<&Event> {
        let mut events: Vec<&Event> = self.events.iter().collect();
        events.sort_by_key(|e| e.seq);
        events
    }

    /// Events named `name`, in receive order.
    pub fn events_named(&self, name: &str) -> Vec<&Event> {
        self.events_in_order().into_iter().filter(|e| e.name() == name).collect()
    }

    /// How many power cuts came before the monotonic instant `mono_ns` (0 before the first):
    /// the "power era" an effect belongs to.
    pub fn power_era(&self, mono_ns: u64) -> usize {
        self.power_cuts.iter().filter(|c| c.mono_ns <= mono_ns).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn effect(kind: EffectKind, run: i64) -> Effect {
        Effect { kind, job_id: 7, run, attempt: 1, token: String::from("t\"ok"), pid: 42, mono_ns: 1_000 + run as u64 }
    }

    #[test]
    fn effects_round_trip_and_ignore_a_torn_last_line() {
        let records = [effect(EffectKind::Start, 1), effect(EffectKind::GrandchildEnd, 1), effect(EffectKind::End, 1)];
        let mut text: String = records.iter().map(|e| serde_json::to_string(e).unwrap() + "\n").collect();
        assert!(text.starts_with(r#"{"kind":"start","job_id":7,"run":1,"attempt":1,"token":"t\"ok","pid":42,"#));
        assert!(text.contains(r#""kind":"grandchild_end""#));
        text.push_str(r#"{"kind":"start","job_id":7,"ru"#);
        assert_eq!(parse_effects(&text).unwrap(), records);
        assert_eq!(parse_effects("").unwrap(), []);
        assert_eq!(parse_effects("{\"kind\"").unwrap(), []);
    }

    #[test]
    fn a_malformed_complete_line_is_an_error_with_its_number() {
        let good = serde_json::to_string(&effect(EffectKind::Start, 1)).unwrap();
        let err = parse_effects(&format!("{good}\n\n{{\"kind\":\"sideways\"}}\n")).unwrap_err();
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn event_fields() {
        let e = Event {
            proc_name: String::from("a"),
            pid: 1,
            seq: 0,
            at: Duration::ZERO,
            json: serde_json::json!({"event": "lock.acquired", "epoch": 3, "dev": u64::MAX, "path": "/x"}),
        };
        assert_eq!(e.name(), "lock.acquired");
        assert_eq!(e.field_i64("epoch"), Some(3));
        assert_eq!(e.field_i64("dev"), None);
        assert_eq!(e.field_u64("dev"), Some(u64::MAX));
        assert_eq!(e.field_str("path"), Some("/x"));
        assert_eq!(e.field_str("epoch"), None);
        let unnamed = Event { json: serde_json::json!({"msg": "x"}), ..e };
        assert_eq!(unnamed.name(), "");
    }

    /// Applies the real migrations (as the daemon would) so the queries are checked against
    /// the schema, not against an assumption about it.
    fn migrated_db(path: &Path) -> Connection {
        const MIGRATIONS: [&str; 10] = [
            include_str!("../../migrations/001_job_queue.sql"),
            include_str!("../../migrations/002_job_queue_indexes.sql"),
            include_str!("../../migrations/003_job_status_guard.sql"),
            include_str!("../../migrations/004_job_locking.sql"),
            include_str!("../../migrations/005_job_retries.sql"),
            include_str!("../../migrations/006_job_claims.sql"),
            include_str!("../../migrations/007_cancelled.sql"),
            include_str!("../../migrations/008_job_runs.sql"),
            include_str!("../../migrations/009_leader.sql"),
            include_str!("../../migrations/010_operator.sql"),
        ];
        let conn = Connection::open(path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TEMP TABLE _migration_clock (now_ms INTEGER); INSERT INTO temp._migration_clock VALUES (0);",
        )
        .unwrap();
        for sql in MIGRATIONS {
            conn.execute_batch(sql).unwrap();
        }
        conn
    }

    #[test]
    fn reads_a_consistent_snapshot_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("homer.db");
        let conn = migrated_db(&path);
        conn.execute_batch(
            "INSERT INTO job_queue (id, kind, status, created_at, attempts, runs, locked_by, claim_token, claim_epoch)
                 VALUES (1, 'noop', 'completed', 0, 1, 1, NULL, NULL, NULL),
                        (2, 'noop', 'running', 0, 2, 2, 'w', 'tok2', 4);
             INSERT INTO job_runs (job_id, run, attempt, epoch, claim_token, worker, started_at, ended_at, outcome)
                 VALUES (1, 1, 1, 3, 'tok1', 'w', 0, 5, 'completed'),
                        (2, 1, 1, 3, 'tokx', 'w', 0, 5, 'orphaned'),
                        (2, 2, 2, 4, 'tok2', 'w', 0, NULL, NULL);
             UPDATE leader SET epoch = 4;",
        )
        .unwrap();
        // The daemon keeps its connection open while the harness reads.
        let state = DbState::read(&path).unwrap();
        assert_eq!(state.leader_epoch, 4);
        assert_eq!(state.integrity, "ok");
        assert_eq!(state.jobs.len(), 2);
        assert_eq!(
            state.jobs[1],
            JobRow { attempts: 2, runs: 2, ..JobRow::unclaimed(2, "running").held("w", "tok2", 4) }
        );
        assert!(state.jobs[0].is_terminal() && !state.jobs[1].is_terminal());
        assert_eq!(
            state.runs.iter().map(|r| (r.job_id, r.run, r.ended)).collect::<Vec<_>>(),
            [(1, 1, true), (2, 1, true), (2, 2, false)]
        );
        assert_eq!(state.runs[0].outcome.as_deref(), Some("completed"));
        assert_eq!(state.runs_of(2).count(), 2);
        assert_eq!(state.job(1).map(|j| j.status.as_str()), Some("completed"));
    }

    /// The PostgreSQL reader on a database written by hand: the daemon's schema
    /// (`migrations/postgres/`, applied as they are), rows inserted with psql, read into the
    /// same `History` parts the SQLite reader gives.
    #[test]
    fn reads_a_postgres_queue_written_by_hand() {
        let dir = tempfile::tempdir().unwrap();
        let pg = homer_testkit::PgServer::start(dir.path()).unwrap();
        pg.psql(include_str!("../../migrations/postgres/001_queue.sql")).unwrap();
        pg.psql(
            "INSERT INTO homer_workers (incarnation, name, host, boot_id, pid, start_time, started_at, seen_at, stale_ms,
                                       fenced_at, stopped_at)
                 VALUES (1, 'h/boot:/a', 'h', 'boot', 10, 1, 0, 0, 1000, 5, NULL),
                        (2, 'h/boot:/a', 'h', 'boot', 11, 2, 0, 0, 1000, NULL, NULL),
                        (3, 'h/boot:/b', 'h', 'boot', 12, 3, 0, 0, 1000, NULL, 9);
             INSERT INTO job_queue (id, kind, status, created_at, run_after, attempts, max_attempts, runs,
                                    interruptions, locked_by, claim_token, claim_epoch)
                 VALUES (1, 'noop', 'completed', 0, 0, 1, 3, 1, 0, NULL, NULL, NULL),
                        (2, 'noop', 'running', 0, 0, 2, 5, 2, 1, 'w', 'tok2', 2);
             INSERT INTO job_runs (id, job_id, run, attempt, epoch, claim_token, worker, started_at, ended_at, outcome,
                                   error)
                 VALUES (1, 1, 1, 1, 3, 'tok1', 'w', 0, 5, 'completed', NULL),
                        (2, 2, 1, 1, 1, 'tokx', 'w', 0, 5, 'orphaned', 'fenced'),
                        (3, 2, 2, 2, 2, 'tok2', 'w', 0, NULL, NULL, NULL);",
        )
        .unwrap();
        let state = DbState::read_postgres(&pg.url(), Duration::from_secs(10)).unwrap();
        let run =
            |id, job_id, run, attempt, epoch, token: &str, outcome: Option<&str>, ended, error: Option<&str>| RunRow {
                id,
                job_id,
                run,
                attempt,
                epoch,
                claim_token: token.to_string(),
                outcome: outcome.map(String::from),
                ended,
                error: error.map(String::from),
            };
        let worker = |incarnation, name: &str, fenced, stopped| WorkerRow {
            incarnation,
            name: name.to_string(),
            fenced,
            stopped,
        };
        assert_eq!(
            state,
            DbState {
                jobs: vec![
                    JobRow::unclaimed(1, "completed"),
                    JobRow {
                        attempts: 2,
                        max_attempts: 5,
                        interruptions: 1,
                        runs: 2,
                        ..JobRow::unclaimed(2, "running").held("w", "tok2", 2)
                    },
                ],
                runs: vec![
                    run(1, 1, 1, 1, 3, "tok1", Some("completed"), true, None),
                    run(2, 2, 1, 1, 1, "tokx", Some("orphaned"), true, Some("fenced")),
                    run(3, 2, 2, 2, 2, "tok2", None, false, None),
                ],
                leader_epoch: 3,
                integrity: String::from("ok"),
                workers: vec![
                    worker(1, "h/boot:/a", true, false),
                    worker(2, "h/boot:/a", false, false),
                    worker(3, "h/boot:/b", false, true),
                ],
            }
        );
        assert_eq!(state.lineage(2), Some("h/boot:/a"));
        assert_eq!(state.lineage(3), Some("h/boot:/b"));
        assert_eq!(state.lineage(4), None, "an epoch no worker row has");
        // The reader only reads: a read-only transaction, nothing changed.
        assert_eq!(pg.psql("SELECT count(*) FROM job_queue WHERE status = 'running'").unwrap(), "1\n");
        // No schema: an error naming the table, not an empty history.
        pg.psql("DROP TABLE job_runs").unwrap();
        let err = DbState::read_postgres(&pg.url(), Duration::from_secs(10)).unwrap_err();
        assert!(err.contains("job_runs") && err.contains("postgres://homer@127.0.0.1:"), "{err}");
    }

    #[test]
    fn a_password_never_reaches_a_message() {
        assert_eq!(redact("postgres://u:secret@h:5432/db?x=1"), "postgres://u:***@h:5432/db?x=1");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("postgres://h/db?password=x@y&port=1"), "postgres://h/db?password=***&port=1");
    }

    #[test]
    fn a_missing_or_foreign_database_is_an_error_not_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("absent.db");
        assert!(DbState::read(&missing).is_err());
        assert!(!missing.exists(), "a read-only open must not create the file");
        let foreign = dir.path().join("foreign.db");
        Connection::open(&foreign).unwrap().execute_batch("CREATE TABLE t (x)").unwrap();
        let err = DbState::read(&foreign).unwrap_err();
        assert!(err.contains("job_queue"), "{err}");
    }
}
