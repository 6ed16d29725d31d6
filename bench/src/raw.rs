//! The baselines: what SQLite itself does on this machine with the daemon's statements
//! and none of the daemon around them, plus the file builders and the query plans.
//!
//! The statements are the daemon's own texts (`daemon/src/sqlite/jobs.rs`), copied here so
//! the baselines and `EXPLAIN QUERY PLAN` run exactly what the daemon runs; a test keeps
//! the copies equal to the originals.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OpenFlags, TransactionBehavior};

/// `jobs.rs` `CLEAR_LOCK`: every transition out of `running` clears these.
pub const CLEAR_LOCK: &str =
    "locked_by = NULL, locked_at = NULL, heartbeat_at = NULL, claim_token = NULL, claim_epoch = NULL";

/// One statement of the daemon's: where it is used, and its text (`{CLEAR_LOCK}` as in the
/// daemon's `format!` templates).
pub struct Stmt {
    pub name: &'static str,
    pub template: &'static str,
}

impl Stmt {
    pub fn sql(&self) -> String {
        self.template.replace("{CLEAR_LOCK}", CLEAR_LOCK)
    }
}

pub const ENQUEUE: Stmt = Stmt {
    name: "enqueue",
    template: "INSERT INTO job_queue (lane, kind, payload, status, created_at, max_attempts, run_after, timeout_ms,
                                run_after_set_at, cwd, env)
         VALUES (?1, ?2, ?3, 'pending', ?4, ?5, ?6, ?7, ?8, ?9, ?10) RETURNING id",
};
pub const CLAIM_RUNNING: Stmt = Stmt {
    name: "claim: running per lane",
    template: "SELECT lane, COUNT(*) FROM job_queue WHERE status = 'running' GROUP BY lane",
};
pub const CLAIM_NEXT_LANE: Stmt = Stmt {
    name: "claim: next lane (skip-scan)",
    template: "SELECT lane FROM job_queue INDEXED BY idx_queue_ready WHERE status = 'pending' AND lane > ?1 ORDER BY lane LIMIT 1",
};
pub const CLAIM_LANE_HEAD: Stmt = Stmt {
    name: "claim: lane head",
    template:
        "SELECT run_after, id FROM job_queue WHERE status = 'pending' AND lane = ?1 ORDER BY run_after, id LIMIT 1",
};
pub const CLAIM_READY: Stmt = Stmt {
    name: "claim: ready jobs of a lane",
    template: "SELECT id FROM job_queue WHERE status = 'pending' AND lane = ?1 AND run_after <= ?2
               AND cancel_requested_at IS NULL
             ORDER BY run_after, id LIMIT ?3",
};
pub const CLAIM_MARK: Stmt = Stmt {
    name: "claim: mark running",
    template: "UPDATE job_queue SET status = 'running', locked_by = ?2, locked_at = ?3, heartbeat_at = ?3,
                started_at = ?3, attempts = attempts + 1, runs = runs + 1,
                claim_token = ?4, claim_epoch = ?5
         WHERE id = ?1 AND status = 'pending' AND cancel_requested_at IS NULL
         RETURNING lane, kind, payload, attempts, runs, timeout_ms, max_attempts, cwd, env",
};
pub const CLAIM_RUN_ROW: Stmt = Stmt {
    name: "claim: job_runs row",
    template: "INSERT INTO job_runs (job_id, run, attempt, epoch, claim_token, worker, started_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
};
pub const RENEW: Stmt = Stmt {
    name: "renewal",
    template: "UPDATE job_queue SET heartbeat_at = ?4
         WHERE id = ?1 AND status = 'running' AND claim_token = ?2 AND claim_epoch = ?3",
};
pub const COMPLETE: Stmt = Stmt {
    name: "outcome: completed",
    template: "UPDATE job_queue SET status = 'completed', result = ?4, completed_at = ?5, {CLEAR_LOCK}
             WHERE id = ?1 AND status = 'running' AND claim_token = ?2 AND claim_epoch = ?3",
};
pub const END_RUN: Stmt = Stmt {
    name: "outcome: end the run",
    template: "UPDATE job_runs SET ended_at = ?3, outcome = ?4, error = ?5
         WHERE job_id = ?1 AND claim_token = ?2 AND ended_at IS NULL",
};
pub const ORPHAN_CHILDREN: Stmt = Stmt {
    name: "recovery: orphaned children",
    template: "SELECT r.job_id, r.child_pid, r.child_pgid, r.child_boot_id, r.child_start_time
         FROM job_runs r JOIN job_queue q ON q.id = r.job_id
         WHERE q.status = 'running' AND r.ended_at IS NULL AND r.child_pgid IS NOT NULL",
};
pub const RECOVER_RUNS: Stmt = Stmt {
    name: "recovery: end open runs",
    template: "UPDATE job_runs SET ended_at = ?1, outcome = 'orphaned', error = ?2
         WHERE ended_at IS NULL AND job_id IN (SELECT id FROM job_queue WHERE status = 'running')",
};
pub const RECOVER_CANCELLED: Stmt = Stmt {
    name: "recovery: cancel requested",
    template: "UPDATE job_queue SET status = 'cancelled', completed_at = ?1,
                    error = 'cancelled by an operator while running', {CLEAR_LOCK}
             WHERE status = 'running' AND cancel_requested_at IS NOT NULL RETURNING id",
};
pub const RECOVER_FAILED: Stmt = Stmt {
    name: "recovery: no attempts left",
    template: "UPDATE job_queue SET status = 'failed', completed_at = ?1,
                    error = ?2 || '; no attempts left',
                    errors = json_insert(errors, '$[#]', json_object('at', ?1, 'attempt', attempts, 'run', runs, 'error', ?2)),
                    {CLEAR_LOCK}
             WHERE status = 'running' AND attempts >= max_attempts RETURNING id",
};
pub const RECOVER_REQUEUE: Stmt = Stmt {
    name: "recovery: requeue",
    template: "UPDATE job_queue SET status = 'pending', run_after = ?1, run_after_set_at = ?2,
                    errors = json_insert(errors, '$[#]', json_object('at', ?2, 'attempt', attempts, 'run', runs, 'error', ?3)),
                    {CLEAR_LOCK}
             WHERE status = 'running' RETURNING id",
};
/// The error recovery records (`jobs.rs` `recover_orphans`).
pub const ORPHAN_ERROR: &str = "orphaned: the daemon running it stopped without recording an outcome";

/// The minimal queue the schema baseline runs on: one jobs table with what a fenced claim
/// and an outcome write (owner, token, epoch, times, result), the one index a claim needs
/// (the ready jobs of a lane in order), no trigger, no runs table. What SQLite does for a
/// queue with nothing else to keep; homerd's schema pays for its run history, its
/// operator reads and retention on top of it.
pub const MINIMAL_SCHEMA: &str = "
    CREATE TABLE jobs (
        id          INTEGER PRIMARY KEY,
        lane        TEXT    NOT NULL DEFAULT 'default',
        kind        TEXT    NOT NULL,
        payload     TEXT    NOT NULL DEFAULT '[]',
        status      TEXT    NOT NULL DEFAULT 'pending',
        run_after   INTEGER NOT NULL,
        attempts    INTEGER NOT NULL DEFAULT 0,
        locked_by   TEXT,
        started_at  INTEGER,
        claim_token TEXT,
        claim_epoch INTEGER,
        completed_at INTEGER,
        result      TEXT
    );
    CREATE INDEX jobs_ready ON jobs(lane, run_after, id) WHERE status = 'pending';";
pub const MINIMAL_READY: &str = "SELECT id FROM jobs WHERE status = 'pending' AND lane = ?1 AND run_after <= ?2
             ORDER BY run_after, id LIMIT ?3";
pub const MINIMAL_MARK: &str = "UPDATE jobs SET status = 'running', locked_by = ?2, started_at = ?3,
                attempts = attempts + 1, claim_token = ?4, claim_epoch = ?5
         WHERE id = ?1 AND status = 'pending' RETURNING lane, kind, payload, attempts";
pub const MINIMAL_COMPLETE: &str = "UPDATE jobs SET status = 'completed', result = ?4, completed_at = ?5,
                locked_by = NULL, claim_token = NULL, claim_epoch = NULL
         WHERE id = ?1 AND status = 'running' AND claim_token = ?2 AND claim_epoch = ?3";

/// Which schema a throughput loop runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schema {
    /// homerd's own (a `homerd migrate` database): the daemon's statements, a `job_runs`
    /// row per claim.
    Homerd,
    /// [`MINIMAL_SCHEMA`], made by [`build_minimal_db`].
    Minimal,
}

impl Schema {
    pub fn parse(s: &str) -> Option<Schema> {
        match s {
            "homerd" => Some(Schema::Homerd),
            "minimal" => Some(Schema::Minimal),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Schema::Homerd => "homerd",
            Schema::Minimal => "minimal",
        }
    }
}

/// Creates `db` (which must not exist) with [`MINIMAL_SCHEMA`] in WAL mode and `jobs`
/// no-op jobs due now, as `homerd enqueue --from` leaves them. One transaction, no
/// journal syncs: a fixture, not a measurement.
pub fn build_minimal_db(db: &Path, jobs: u64) -> Result<(), String> {
    if db.exists() {
        return Err(format!("{}: already exists", db.display()));
    }
    let mut conn = Connection::open(db).map_err(|e| err(&db.display().to_string(), e))?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(|e| err("journal_mode", e))?;
    conn.pragma_update(None, "synchronous", "OFF").map_err(|e| err("synchronous", e))?;
    conn.execute_batch(MINIMAL_SCHEMA).map_err(|e| err("minimal schema", e))?;
    let now = now_ms();
    let tx = conn.transaction().map_err(|e| err("begin", e))?;
    {
        let mut insert =
            tx.prepare("INSERT INTO jobs (kind, run_after) VALUES ('noop', ?1)").map_err(|e| err("prepare", e))?;
        for _ in 0..jobs {
            insert.execute([now]).map_err(|e| err("insert", e))?;
        }
    }
    tx.commit().map_err(|e| err("commit", e))?;
    conn.close().map_err(|(_, e)| err("close", e))
}

/// The statements whose plans the bench prints: claim, renewal, outcome, recovery.
pub const EXPLAINED: &[&Stmt] = &[
    &CLAIM_RUNNING,
    &CLAIM_NEXT_LANE,
    &CLAIM_LANE_HEAD,
    &CLAIM_READY,
    &CLAIM_MARK,
    &RENEW,
    &COMPLETE,
    &END_RUN,
    &ORPHAN_CHILDREN,
    &RECOVER_RUNS,
    &RECOVER_CANCELLED,
    &RECOVER_FAILED,
    &RECOVER_REQUEUE,
];

/// The `synchronous` level of a raw loop's transactions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sync {
    Normal,
    Full,
    /// The daemon's default (`durability = "normal"`): claims NORMAL, outcomes FULL,
    /// switched per transaction as its writer does.
    Daemon,
}

impl Sync {
    pub fn parse(s: &str) -> Option<Sync> {
        match s {
            "normal" => Some(Sync::Normal),
            "full" => Some(Sync::Full),
            "daemon" => Some(Sync::Daemon),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Sync::Normal => "normal",
            Sync::Full => "full",
            Sync::Daemon => "daemon",
        }
    }

    fn claims(self) -> &'static str {
        if self == Sync::Full {
            "FULL"
        } else {
            "NORMAL"
        }
    }

    fn outcomes(self) -> &'static str {
        if self == Sync::Normal {
            "NORMAL"
        } else {
            "FULL"
        }
    }
}

fn err(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

/// Opens `db` the way the daemon's writer does (WAL, busy timeout, foreign keys, the same
/// checkpoint policy), with `synchronous` as asked.
pub fn open(db: &Path, sync: Sync) -> Result<Connection, String> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(db, flags).map_err(|e| err(&db.display().to_string(), e))?;
    let setup = || -> rusqlite::Result<()> {
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", sync.claims())?;
        conn.pragma_update(None, "wal_autocheckpoint", 1000)?;
        conn.pragma_update(None, "journal_size_limit", 8 * 1024 * 1024)?;
        Ok(())
    };
    setup().map_err(|e| err("pragmas", e))?;
    Ok(conn)
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A claim token the size of the daemon's (128 bits, hex), without the entropy syscall.
fn token(n: u64) -> String {
    let mixed = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5851_f42d_4c95_7f2d;
    format!("{mixed:016x}{n:016x}")
}

/// What one throughput loop did.
#[derive(Clone, Copy, Debug)]
pub struct LoopResult {
    pub jobs: u64,
    pub seconds: f64,
}

/// The tightest job cycle with the daemon's writes per job: one transaction claims up to
/// `batch` ready jobs (mark running + `job_runs` row), a second records their outcomes
/// (job completed + run ended), each at `sync`'s level. Runs until `max_jobs` are done or
/// `time_box` has passed; timed from the first claim to the last commit. On
/// [`Schema::Minimal`] the same loop with the minimal queue's statements: no run rows.
pub fn throughput_loop(
    db: &Path,
    schema: Schema,
    batch: u32,
    sync: Sync,
    max_jobs: u64,
    time_box: Duration,
) -> Result<LoopResult, String> {
    let mut conn = open(db, sync)?;
    let (epoch, ready, mark, run_row, complete, end_run) = match schema {
        Schema::Homerd => (
            conn.query_row("SELECT epoch FROM leader", [], |r| r.get(0)).map_err(|e| err("leader", e))?,
            CLAIM_READY.sql(),
            CLAIM_MARK.sql(),
            Some(CLAIM_RUN_ROW.sql()),
            COMPLETE.sql(),
            Some(END_RUN.sql()),
        ),
        Schema::Minimal => {
            (1i64, MINIMAL_READY.to_owned(), MINIMAL_MARK.to_owned(), None, MINIMAL_COMPLETE.to_owned(), None)
        }
    };
    // Where the claim's RETURNING puts the attempt (and the run, homerd's schema only).
    let (attempt_col, run_col) = match schema {
        Schema::Homerd => (3, 4),
        Schema::Minimal => (3, 3),
    };
    let worker = format!("bench/{}", std::process::id());
    let mut done = 0u64;
    let mut serial = 0u64;
    let switch = sync.claims() != sync.outcomes();
    let level = |conn: &Connection, value: &str| {
        conn.pragma_update(None, "synchronous", value).map_err(|e| err("synchronous", e))
    };
    let started = Instant::now();
    let mut last_commit = started;
    while done < max_jobs && started.elapsed() < time_box {
        let want = batch.min((max_jobs - done) as u32);
        let now = now_ms();
        if switch {
            level(&conn, sync.claims())?;
        }
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| err("begin", e))?;
        let mut claimed: Vec<(i64, String)> = Vec::with_capacity(want as usize);
        {
            let mut ready = tx.prepare_cached(&ready).map_err(|e| err("prepare", e))?;
            let mut mark = tx.prepare_cached(&mark).map_err(|e| err("prepare", e))?;
            let mut run_row = match &run_row {
                Some(sql) => Some(tx.prepare_cached(sql).map_err(|e| err("prepare", e))?),
                None => None,
            };
            let ids: Vec<i64> = ready
                .query_map(params!["default", now, want], |r| r.get(0))
                .and_then(|rows| rows.collect())
                .map_err(|e| err("ready", e))?;
            for id in ids {
                serial += 1;
                let tok = token(serial);
                let (attempt, run): (i64, i64) = mark
                    .query_row(params![id, worker, now, tok, epoch], |r| Ok((r.get(attempt_col)?, r.get(run_col)?)))
                    .map_err(|e| err("mark", e))?;
                if let Some(run_row) = &mut run_row {
                    run_row
                        .execute(params![id, run, attempt, epoch, tok, worker, now])
                        .map_err(|e| err("run row", e))?;
                }
                claimed.push((id, tok));
            }
        }
        tx.commit().map_err(|e| err("commit claim", e))?;
        if claimed.is_empty() {
            break;
        }
        let now = now_ms();
        if switch {
            level(&conn, sync.outcomes())?;
        }
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| err("begin", e))?;
        {
            let mut complete = tx.prepare_cached(&complete).map_err(|e| err("prepare", e))?;
            let mut end_run = match &end_run {
                Some(sql) => Some(tx.prepare_cached(sql).map_err(|e| err("prepare", e))?),
                None => None,
            };
            for (id, tok) in &claimed {
                let n =
                    complete.execute(params![id, tok, epoch, None::<String>, now]).map_err(|e| err("complete", e))?;
                if n != 1 {
                    return Err(format!("job {id} was not ours to complete"));
                }
                if let Some(end_run) = &mut end_run {
                    end_run
                        .execute(params![id, tok, now, "completed", None::<String>])
                        .map_err(|e| err("end run", e))?;
                }
            }
        }
        tx.commit().map_err(|e| err("commit outcome", e))?;
        last_commit = Instant::now();
        done += claimed.len() as u64;
    }
    Ok(LoopResult { jobs: done, seconds: last_commit.duration_since(started).as_secs_f64() })
}

/// Enqueue-to-notice floor: the daemon's insert committed with `synchronous=FULL` by one
/// connection, noticed by a second one polling `PRAGMA data_version` in a tight loop on
/// its own thread. Milliseconds from the start of each insert to its notice.
pub fn notice_latency(db: &Path, n: usize) -> Result<Vec<f64>, String> {
    let mut writer = open(db, Sync::Full)?;
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<Result<Instant, String>>();
    let poller = {
        let (db, stop) = (db.to_owned(), stop.clone());
        std::thread::spawn(move || {
            if let Err(e) = poll_data_version(&db, &stop, &tx) {
                let _ = tx.send(Err(e));
            }
        })
    };
    let recv = |rx: &mpsc::Receiver<Result<Instant, String>>| -> Result<Instant, String> {
        rx.recv_timeout(Duration::from_secs(30)).map_err(|_| String::from("the data_version poller stopped"))?
    };
    let result = (|| {
        recv(&rx)?;
        let sql = ENQUEUE.sql();
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let started = Instant::now();
            let tx = writer.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| err("begin", e))?;
            let now = now_ms();
            // A job due now: created, due and its `run_after` set at the same moment; no
            // directory or variables (not an exec job).
            tx.query_row(
                &sql,
                params!["default", "noop", "[]", now, 3, now, None::<i64>, now, None::<String>, None::<String>],
                |r| r.get::<_, i64>(0),
            )
            .map_err(|e| err("insert", e))?;
            tx.commit().map_err(|e| err("commit", e))?;
            let seen = recv(&rx)?;
            out.push(seen.duration_since(started).as_secs_f64() * 1000.0);
        }
        Ok(out)
    })();
    stop.store(true, Ordering::Relaxed);
    let _ = poller.join();
    result
}

/// Sends the time of every change of `PRAGMA data_version` seen on a reader of `db` (the
/// first message: polling has started) until `stop`.
fn poll_data_version(db: &Path, stop: &AtomicBool, tx: &mpsc::Sender<Result<Instant, String>>) -> Result<(), String> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(db, flags).map_err(|e| err("open reader", e))?;
    let mut version = conn.prepare("PRAGMA data_version").map_err(|e| err("data_version", e))?;
    let mut read = || version.query_row([], |r| r.get::<_, i64>(0)).map_err(|e| err("data_version", e));
    let mut last = read()?;
    let _ = tx.send(Ok(Instant::now()));
    while !stop.load(Ordering::Relaxed) {
        let v = read()?;
        if v != last {
            last = v;
            if tx.send(Ok(Instant::now())).is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The bare recovery transaction, as the daemon's startup runs it (one `BEGIN IMMEDIATE`
/// committed with `synchronous=FULL`): milliseconds from BEGIN to COMMIT, and how many
/// jobs it recovered.
pub fn recovery(db: &Path) -> Result<(f64, usize), String> {
    let mut conn = open(db, Sync::Full)?;
    let started = Instant::now();
    let now = now_ms();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| err("begin", e))?;
    let _children: Vec<i64> = tx
        .prepare(&ORPHAN_CHILDREN.sql())
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(|e| err("orphan children", e))?;
    tx.execute(&RECOVER_RUNS.sql(), params![now, ORPHAN_ERROR]).map_err(|e| err("end runs", e))?;
    let ids = |sql: String, p: &[&dyn rusqlite::ToSql]| -> Result<Vec<i64>, String> {
        tx.prepare(&sql).and_then(|mut s| s.query_map(p, |r| r.get(0))?.collect()).map_err(|e| err("recover", e))
    };
    let cancelled = ids(RECOVER_CANCELLED.sql(), &[&now])?;
    let failed = ids(RECOVER_FAILED.sql(), &[&now, &ORPHAN_ERROR])?;
    let requeued = ids(RECOVER_REQUEUE.sql(), &[&now, &now, &ORPHAN_ERROR])?;
    tx.commit().map_err(|e| err("commit", e))?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    Ok((ms, cancelled.len() + failed.len() + requeued.len()))
}

/// `PRAGMA quick_check` alone, on a read-only, immutable connection to `db` (what
/// homerd's start-up data check runs, without the process around it): milliseconds.
pub fn quick_check(db: &Path) -> Result<f64, String> {
    let uri = format!("file:{}?immutable=1", db.display());
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(&uri, flags).map_err(|e| err(&uri, e))?;
    let started = Instant::now();
    let result: String =
        conn.query_row("PRAGMA quick_check(5)", [], |r| r.get(0)).map_err(|e| err("quick_check", e))?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if result != "ok" {
        return Err(format!("the fixture fails quick_check: {result}"));
    }
    Ok(ms)
}

/// Fills a database that `homerd migrate` created with `total` jobs, the newest `orphans`
/// of them left `running` by a daemon that died (a FIFO queue's running jobs are its most
/// recent claims): claimed under the current epoch (which the next start bumps), an open
/// `job_runs` row with no child recorded (nothing to kill), kind `noop`. The rest
/// completed, each with its finished run. One transaction, no journal syncs: a fixture,
/// not a measurement.
pub fn build_recovery_db(db: &Path, total: u64, orphans: u64) -> Result<(), String> {
    let mut conn = Connection::open(db).map_err(|e| err(&db.display().to_string(), e))?;
    let epoch: i64 = conn.query_row("SELECT epoch FROM leader", [], |r| r.get(0)).map_err(|e| err("leader", e))?;
    conn.pragma_update(None, "journal_mode", "DELETE").map_err(|e| err("journal_mode", e))?;
    conn.pragma_update(None, "synchronous", "OFF").map_err(|e| err("synchronous", e))?;
    conn.pragma_update(None, "cache_size", -262_144).map_err(|e| err("cache_size", e))?;
    let first_orphan = total - orphans.min(total) + 1;
    let base = now_ms() - total as i64;
    let worker = "bench-crashed/1";
    let tx = conn.transaction().map_err(|e| err("begin", e))?;
    {
        let mut done_job = tx
            .prepare(
                "INSERT INTO job_queue (id, kind, status, created_at, started_at, completed_at, attempts, runs, run_after)
                 VALUES (?1, 'noop', 'completed', ?2, ?2, ?2, 1, 1, ?2)",
            )
            .map_err(|e| err("prepare", e))?;
        let mut orphan_job = tx
            .prepare(
                "INSERT INTO job_queue (id, kind, status, created_at, started_at, attempts, runs, run_after,
                                        locked_by, locked_at, heartbeat_at, claim_token, claim_epoch)
                 VALUES (?1, 'noop', 'running', ?2, ?2, 1, 1, ?2, ?3, ?2, ?2, ?4, ?5)",
            )
            .map_err(|e| err("prepare", e))?;
        let mut run = tx
            .prepare(
                "INSERT INTO job_runs (job_id, run, attempt, epoch, claim_token, worker, started_at, ended_at, outcome)
                 VALUES (?1, 1, 1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .map_err(|e| err("prepare", e))?;
        for id in 1..=total {
            let at = base + id as i64;
            let tok = token(id);
            if id >= first_orphan {
                orphan_job.execute(params![id, at, worker, tok, epoch]).map_err(|e| err("insert", e))?;
                run.execute(params![id, epoch, tok, worker, at, None::<i64>, None::<String>])
                    .map_err(|e| err("insert", e))?;
            } else {
                done_job.execute(params![id, at]).map_err(|e| err("insert", e))?;
                run.execute(params![id, epoch, tok, worker, at, at, "completed"]).map_err(|e| err("insert", e))?;
            }
        }
    }
    tx.commit().map_err(|e| err("commit", e))?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(|e| err("journal_mode", e))?;
    conn.close().map_err(|(_, e)| err("close", e))
}

/// One statement's query plan.
pub struct Plan {
    pub name: &'static str,
    pub lines: Vec<String>,
    /// Every table access is a SEARCH or goes through an index.
    pub indexed: bool,
}

/// `EXPLAIN QUERY PLAN` of every statement in [`EXPLAINED`] against `db`. (Opened
/// read-write although nothing is written: a read-only connection to a WAL database
/// leaves its `-wal` and `-shm` behind.)
pub fn explain(db: &Path) -> Result<Vec<Plan>, String> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(db, flags).map_err(|e| err(&db.display().to_string(), e))?;
    let mut plans = Vec::new();
    for stmt in EXPLAINED {
        let mut s = conn.prepare(&format!("EXPLAIN QUERY PLAN {}", stmt.sql())).map_err(|e| err(stmt.name, e))?;
        let nulls = vec![rusqlite::types::Null; s.parameter_count()];
        let rows: Vec<(i64, i64, String)> = s
            .query_map(rusqlite::params_from_iter(nulls), |r| Ok((r.get(0)?, r.get(1)?, r.get(3)?)))
            .and_then(|rows| rows.collect())
            .map_err(|e| err(stmt.name, e))?;
        let mut depth: Vec<(i64, usize)> = Vec::new();
        let mut lines = Vec::new();
        for (id, parent, detail) in rows {
            let d = depth.iter().find(|(i, _)| *i == parent).map_or(0, |(_, d)| d + 1);
            depth.push((id, d));
            lines.push(format!("{}{detail}", "  ".repeat(d)));
        }
        let indexed = lines.iter().all(|l| !full_scan(l.trim()));
        plans.push(Plan { name: stmt.name, lines, indexed });
    }
    Ok(plans)
}

/// A plan line that reads a whole table: `SCAN t` without an index.
fn full_scan(detail: &str) -> bool {
    detail.starts_with("SCAN ") && !detail.contains(" USING ")
}

/// `homer-bench __hold-lock PATH [N]`: the floor of a restart: take the flock on the
/// daemon's lock file (blocking), start `N` `sleep 60` children (in this process's group:
/// the bench kills the group), say so on stdout, then hold it all until killed.
pub fn hold_lock(path: &Path, children: usize) -> Result<(), String> {
    use std::io::Write;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| err(&path.display().to_string(), e))?;
    loop {
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive) {
            Ok(()) => break,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(err("flock", std::io::Error::from(e))),
        }
    }
    for _ in 0..children {
        let child = std::process::Command::new("sleep")
            .arg("60")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(|e| err("sleep", e))?;
        // Killed with this process's group; never waited for here.
        drop(child);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "locked").and_then(|()| out.flush()).map_err(|e| err("stdout", e))?;
    loop {
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn squash(s: &str) -> String {
        s.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// The copies here must be the daemon's statements, or the baselines measure
    /// something else.
    #[test]
    fn statements_are_the_daemons() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../daemon/src/sqlite/jobs.rs");
        let source = squash(&std::fs::read_to_string(&path).unwrap());
        let all = [&ENQUEUE, &CLAIM_RUN_ROW].into_iter().chain(EXPLAINED.iter().copied());
        for stmt in all {
            let text = squash(stmt.template);
            assert!(source.contains(&text), "{} is not in jobs.rs any more:\n{text}", stmt.name);
        }
        assert!(source.contains(&format!("const CLEAR_LOCK: &str = \"{}\"", squash(CLEAR_LOCK))));
        assert!(source.contains(&format!("let error = \"{ORPHAN_ERROR}\"")));
    }

    /// The minimal loop does the same cycle: every job claimed once and completed once.
    #[test]
    fn the_minimal_loop_completes_every_job_once() {
        let t = tempfile::tempdir().unwrap();
        let db = t.path().join("minimal.db");
        build_minimal_db(&db, 70).unwrap();
        let r = throughput_loop(&db, Schema::Minimal, 32, Sync::Daemon, 1_000, Duration::from_secs(60)).unwrap();
        assert_eq!(r.jobs, 70);
        let conn = Connection::open(&db).unwrap();
        let (done, attempts): (i64, i64) = conn
            .query_row(
                "SELECT COUNT(*), SUM(attempts) FROM jobs WHERE status = 'completed' AND claim_token IS NULL",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((done, attempts), (70, 70));
        let plan: String = conn
            .query_row(&format!("EXPLAIN QUERY PLAN {MINIMAL_READY}"), params!["default", 0, 1], |r| r.get(3))
            .unwrap();
        assert!(plan.contains("jobs_ready"), "{plan}");
    }

    #[test]
    fn full_scans_are_told_from_index_use() {
        assert!(full_scan("SCAN job_queue"));
        assert!(!full_scan("SCAN job_queue USING INDEX idx_queue_ready"));
        assert!(!full_scan("SEARCH job_queue USING INTEGER PRIMARY KEY (rowid=?)"));
    }

    #[test]
    fn tokens_are_distinct_and_daemon_sized() {
        assert_eq!(token(1).len(), 32);
        assert_ne!(token(1), token(2));
    }
}
