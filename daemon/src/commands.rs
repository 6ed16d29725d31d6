//! The commands beside `run`: `status`, `doctor`, `migrate`, `backup` (`service` lives
//! in `service.rs`).
//!
//! `status` and `doctor` answer "is a daemon running" from the leader row plus a
//! process-identity check; they never take or probe the lock, so a status loop can
//! never make a daemon's start fail. They open the database read-only.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;
use serde_json::json;

use crate::config::format_duration;
use crate::daemon::{self, Context, Leadership, Role};
use crate::error::{exit, Error, Result};
use crate::job::{NewJob, WallMs};
use crate::lock;
use crate::sqlite::leader::{HolderState, LeaderRow};
use crate::sqlite::schema::{self, DbState, MIGRATIONS};
use crate::sqlite::{self, leader, read};

/// Opens the database for reading after validating it; `None` if it does not exist.
fn open_current(ctx: &Context) -> Result<Option<Connection>> {
    let db = &ctx.paths.database;
    match schema::inspect(db, ctx.config.busy_timeout)? {
        DbState::Missing => Ok(None),
        state if !state.is_current() => Err(Error::data(
            db,
            format!(
                "has {} of {} migrations applied; run `homerd migrate` (or start the daemon, which migrates)",
                state.applied(),
                MIGRATIONS.len()
            ),
        )),
        _ => {
            let conn = sqlite::open_reader(db, ctx.config.busy_timeout)?;
            read::anchor_clock(&conn, &ctx.clock);
            Ok(Some(conn))
        }
    }
}

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

fn describe_holder(state: &HolderState) -> String {
    match state {
        HolderState::None => String::from("not running"),
        HolderState::Active { pid, age } => format!("active (PID {pid}, seen {} ago)", format_age(*age)),
        HolderState::Stale { pid, age } => {
            format!("stalled: PID {pid} is alive but was last seen {} ago", format_age(*age))
        }
        HolderState::Dead { pid } => format!("not running (last holder PID {pid} is gone)"),
    }
}

fn format_age(d: Duration) -> String {
    if d < Duration::from_secs(10) {
        format!("{}ms", d.as_millis())
    } else {
        format_duration(Duration::from_secs(d.as_secs()))
    }
}

/// `homerd status [--json]`.
pub fn status(ctx: &Context, as_json: bool) -> Result<i32> {
    let db = &ctx.paths.database;
    let sql = |e| Error::sqlite(db, e);
    let Some(conn) = open_current(ctx)? else {
        if as_json {
            println!("{}", json!({"database": db, "exists": false, "daemon": {"state": "none", "active": false}}));
        } else {
            println!("database: {} (not created yet: start the daemon with `homerd run`)", db.display());
            println!("daemon:   not running");
        }
        return Ok(exit::OK);
    };
    let row = leader::read(&conn).map_err(sql)?;
    let state = row.holder_state(&ctx.clock, ctx.config.stale_threshold);
    let counts = read::job_counts(&conn).map_err(sql)?;
    let lanes = sqlite::ops::lane_counts(&conn).map_err(sql)?;
    let metrics = sqlite::ops::metrics(&conn).map_err(sql)?;
    let now = ctx.clock.now_ms();
    let oldest_pending_age_ms = sqlite::ops::oldest_pending(&conn, now).map_err(sql)?.map(|t| (now - t).max(0));
    let running = read::running_jobs(&conn).map_err(sql)?;
    if as_json {
        let running: Vec<_> = running
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
        let out = json!({
            "database": db,
            "exists": true,
            "schema": {"applied": MIGRATIONS.len(), "known": MIGRATIONS.len()},
            "daemon": holder_json(&row, &state),
            "jobs": counts,
            "lanes": lanes,
            "oldest_pending_age_ms": oldest_pending_age_ms,
            "running": running,
            "metrics": metrics,
        });
        println!("{}", serde_json::to_string_pretty(&out).expect("json"));
    } else {
        println!("database: {}", db.display());
        println!("daemon:   {}", describe_holder(&state));
        if matches!(state, HolderState::Active { .. } | HolderState::Stale { .. }) {
            println!("epoch:    {}", row.epoch);
            println!("lock:     {}", row.lock_path.as_deref().unwrap_or("-"));
        }
        let line: Vec<String> = counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("jobs:     {}", line.join(", "));
        for (lane, by_status) in &lanes {
            let line: Vec<String> = by_status.iter().map(|(k, v)| format!("{k} {v}")).collect();
            println!("  lane {lane}: {}", line.join(", "));
        }
        if let Some(age) = oldest_pending_age_ms {
            println!("oldest pending: {} ago", format_age(Duration::from_millis(age as u64)));
        }
        for j in &running {
            let hb = j.heartbeat_at.map(|h| format_age(Duration::from_millis((now - h).max(0) as u64)));
            println!(
                "running:  job {} ({} in lane {}), heartbeat {} ago, owner {}",
                j.id,
                j.kind,
                j.lane,
                hb.as_deref().unwrap_or("never"),
                j.locked_by.as_deref().unwrap_or("-")
            );
        }
        let line: Vec<String> = metrics.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("metrics:  {}", line.join(", "));
    }
    Ok(exit::OK)
}

struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
}

/// `homerd doctor [--json]`: the original daemon's "Verify Deployment" steps as checks, then a
/// `WARN` line for each key of an installed launchd/systemd unit that contradicts what
/// `homerd service` writes. A check that fails means the deployment is broken now and
/// exits 1; a warning is a latent problem (it bites at the next stop or restart) and
/// never changes the exit code.
pub fn doctor(ctx: &Context, as_json: bool) -> Result<i32> {
    let checks = doctor_checks(ctx);
    let warnings = crate::service::installed_unit_warnings(&ctx.config);
    let failed = checks.iter().filter(|c| !c.ok).count();
    if as_json {
        let list: Vec<_> = checks.iter().map(|c| json!({"check": c.name, "ok": c.ok, "detail": c.detail})).collect();
        let warns: Vec<_> =
            warnings.iter().map(|w| json!({"check": "service unit", "path": w.path, "detail": w.detail})).collect();
        let out = json!({"ok": failed == 0, "checks": list, "warnings": warns});
        println!("{}", serde_json::to_string_pretty(&out).expect("json"));
    } else {
        for c in &checks {
            println!("{} {:<18} {}", if c.ok { "PASS" } else { "FAIL" }, c.name, c.detail);
        }
        for w in &warnings {
            println!("WARN {:<18} {}: {}", "service unit", w.path.display(), w.detail);
        }
        let warned = match warnings.len() {
            0 => String::new(),
            1 => String::from(", 1 warning"),
            n => format!(", {n} warnings"),
        };
        if failed == 0 {
            println!("all {} checks passed{warned}", checks.len());
        } else {
            println!("{failed} of {} checks failed{warned}", checks.len());
        }
    }
    Ok(if failed == 0 { exit::OK } else { exit::CHECK_FAILED })
}

fn doctor_checks(ctx: &Context) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut check = |name, ok, detail: String| checks.push(Check { name, ok, detail });
    let paths = &ctx.paths;
    let stale = ctx.config.stale_threshold;

    // 1. Lock file present, with diagnostics.
    match lock::read_diagnostics(&paths.lock_file) {
        Ok(d) if d.pid().is_some() => check(
            "lock file",
            true,
            format!(
                "{} written by PID {} ({}, {})",
                paths.lock_file.display(),
                d.pid().unwrap_or(0),
                d.role().unwrap_or("?"),
                d.get("started_at").unwrap_or("?")
            ),
        ),
        Ok(_) => check(
            "lock file",
            false,
            format!("{} has no diagnostics (no daemon has run with it)", paths.lock_file.display()),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => check(
            "lock file",
            false,
            format!(
                "{} is missing (a running daemon recreates it within lock_check_interval; otherwise start one)",
                paths.lock_file.display()
            ),
        ),
        Err(e) => check("lock file", false, format!("{}: {e}", paths.lock_file.display())),
    }

    // Everything else reads the database, validated read-only.
    let db = &paths.database;
    let state = match schema::inspect(db, ctx.config.busy_timeout) {
        Ok(DbState::Missing) => {
            check("daemon running", false, format!("no database at {} (start the daemon: homerd run)", db.display()));
            check("migrations", false, String::from("no database"));
            return checks;
        }
        Ok(s) => s,
        Err(e) => {
            check("migrations", false, e.to_string());
            return checks;
        }
    };
    let conn = match sqlite::open_reader(db, ctx.config.busy_timeout) {
        Ok(c) => c,
        Err(e) => {
            check("migrations", false, e.to_string());
            return checks;
        }
    };

    // 2. A daemon is active (leader row + identity).
    let row = read::leader_row(&conn).ok().flatten();
    let holder = row.as_ref().map(|r| (r, r.holder_state(&ctx.clock, stale)));
    match &holder {
        Some((r, s @ HolderState::Active { .. })) if r.role.as_deref() == Some("daemon") => {
            check("daemon running", true, format!("{}, epoch {}", describe_holder(s), r.epoch))
        }
        Some((_, s)) => check("daemon running", false, format!("{} (start it: homerd run)", describe_holder(s))),
        None => check("daemon running", false, String::from("database predates the leader row (run homerd migrate)")),
    }

    // 3. Migrations applied.
    let applied = read::applied_migrations(&conn).unwrap_or_default();
    if state.is_current() {
        check("migrations", true, format!("{} of {} applied, checksums match", applied.len(), MIGRATIONS.len()));
    } else {
        let missing: Vec<&str> = MIGRATIONS[state.applied()..].iter().map(|(n, _)| *n).collect();
        check(
            "migrations",
            false,
            format!(
                "{} of {} applied; missing {} (run homerd migrate)",
                state.applied(),
                MIGRATIONS.len(),
                missing.join(", ")
            ),
        );
    }

    // 3b. Every page readable and consistent (what a start checks before it writes).
    match schema::check_data(db, ctx.config.busy_timeout) {
        Ok(()) => check("integrity", true, String::from("every page reads back consistent (quick_check ok)")),
        Err(e) => check("integrity", false, e.to_string()),
    }

    // 4. Lock columns on job_queue (the original deployment notes' PRAGMA table_info check).
    let cols = read::columns(&conn, "job_queue").unwrap_or_default();
    let missing: Vec<&str> =
        ["locked_by", "locked_at", "heartbeat_at"].into_iter().filter(|c| !cols.iter().any(|x| x == c)).collect();
    if missing.is_empty() {
        check("lock columns", true, String::from("job_queue has locked_by, locked_at, heartbeat_at"));
    } else {
        check("lock columns", false, format!("job_queue lacks {} (run homerd migrate)", missing.join(", ")));
    }

    if !state.is_current() {
        return checks;
    }

    // 5. Heartbeats fresh: the leader row, and every running job.
    let now = ctx.clock.now_ms();
    let running = read::running_jobs(&conn).unwrap_or_default();
    let stale_jobs: Vec<i64> = running
        .iter()
        .filter(|j| j.heartbeat_at.is_none_or(|h| now - h > stale.as_millis() as i64))
        .map(|j| j.id)
        .collect();
    let leader_stale = matches!(holder, Some((_, HolderState::Stale { .. })));
    if leader_stale || !stale_jobs.is_empty() {
        let mut why = Vec::new();
        if leader_stale {
            why.push(String::from("the daemon's leader row is older than stale_threshold"));
        }
        if !stale_jobs.is_empty() {
            why.push(format!("running jobs with heartbeats older than {}: {:?}", format_duration(stale), stale_jobs));
        }
        check("heartbeats", false, why.join("; "));
    } else {
        check("heartbeats", true, format!("{} running job(s), all within {}", running.len(), format_duration(stale)));
    }

    // 6. No stuck jobs: running rows no live daemon owns.
    let active_epoch = match &holder {
        Some((r, HolderState::Active { .. })) => Some(r.epoch),
        _ => None,
    };
    let stuck: Vec<i64> =
        running.iter().filter(|j| active_epoch.is_none() || j.claim_epoch != active_epoch).map(|j| j.id).collect();
    if stuck.is_empty() {
        check("stuck jobs", true, String::from("none"));
    } else {
        check(
            "stuck jobs",
            false,
            format!("running with no live owner: {stuck:?} (starting the daemon recovers them at once)"),
        );
    }
    checks
}

/// `homerd migrate`: apply pending migrations under the lock and the leader row.
pub fn migrate(ctx: &Context) -> Result<i32> {
    let Some(mut lock) = daemon::acquire_lock(ctx, Role::Migrate)? else { return Ok(exit::OK) };
    let existed = std::fs::symlink_metadata(&ctx.paths.database).is_ok();
    let Leadership { mut conn, epoch, applied, .. } =
        daemon::open_and_lead(ctx, &mut lock, Role::Migrate, &mut |lock, epoch, id| {
            lock.write_diagnostics(&daemon::diagnostics(ctx, Role::Migrate, epoch, id))
        })?;
    let clock = ctx.clock.clone();
    let tx = conn.transaction().map_err(|e| Error::sqlite(&ctx.paths.database, e))?;
    leader::release(&tx, epoch, &clock).map_err(|e| Error::sqlite(&ctx.paths.database, e))?;
    tx.commit().map_err(|e| Error::sqlite(&ctx.paths.database, e))?;
    drop(conn);
    let db = ctx.paths.database.display();
    match (existed, applied.len()) {
        (false, _) => println!("created {db} with {} migrations", MIGRATIONS.len()),
        (true, 0) => println!("{db} is up to date ({} migrations)", MIGRATIONS.len()),
        (true, n) => println!("applied {n} migration(s) to {db}: {}", applied.join(", ")),
    }
    drop(lock);
    Ok(exit::OK)
}

/// `homerd backup PATH`: one consistent online snapshot, written to a temp file beside
/// PATH and linked into place (an existing PATH is never overwritten).
pub fn backup(ctx: &Context, dest: &Path) -> Result<i32> {
    let db = &ctx.paths.database;
    if std::fs::symlink_metadata(dest).is_ok() {
        return Err(Error::io(
            "backup to",
            dest,
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "file exists; refusing to overwrite it (choose a new path)",
            ),
        ));
    }
    let Some(conn) = open_current(ctx)? else {
        return Err(Error::data(db, "no database to back up (start the daemon first)"));
    };
    let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        dest.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    // Created 0600 before SQLite writes into it (an empty file is an empty database): a
    // snapshot holds every job's arguments, and `cp` keeps its mode when it is restored.
    {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| Error::io("create", &tmp, e))?;
    }
    let result = read::backup_to(&conn, &tmp)
        .map_err(|e| Error::sqlite(&tmp, e))
        .and_then(|()| std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| Error::io("fsync", &tmp, e)))
        .and_then(|()| std::fs::hard_link(&tmp, dest).map_err(|e| Error::io("link", dest, e)));
    let _ = std::fs::remove_file(&tmp);
    let _ = std::fs::remove_file(tmp.with_extension("tmp-journal"));
    result?;
    println!("{}", dest.display());
    Ok(exit::OK)
}

/// What `homerd enqueue` was asked for.
pub struct EnqueueSpec {
    pub key: Option<String>,
    pub lane: String,
    pub max_attempts: Option<u32>,
    pub timeout: Option<String>,
    pub run_after: Option<String>,
    pub kind: String,
    pub args: Vec<String>,
}

/// The switch for the `crash` job kind, a test hook (the poison job of the scenarios): a
/// `crash` job kills the daemon that runs it, so `enqueue` refuses it and the daemon fails
/// it unrun unless this is set to `1` in their environment.
pub const CRASH_JOBS_ENV: &str = "HOMERD_ALLOW_CRASH_JOBS";

/// Whether this process may enqueue or run `crash` jobs ([`CRASH_JOBS_ENV`]).
pub fn crash_jobs_allowed() -> bool {
    std::env::var_os(CRASH_JOBS_ENV).is_some_and(|v| v == "1")
}

/// Checks a job's kind and arguments; returns the arguments to store.
pub fn validate_job(kind: &str, args: &[String]) -> std::result::Result<Vec<String>, String> {
    let args: Vec<String> = match kind {
        "exec" => args.iter().skip_while(|a| *a == "--").cloned().collect(),
        _ => args.to_vec(),
    };
    if kind == "crash" && !crash_jobs_allowed() {
        return Err(format!(
            "`crash` is a test hook (it kills the daemon that runs it); set {CRASH_JOBS_ENV}=1 to enqueue it"
        ));
    }
    match (kind, args.len()) {
        ("noop" | "crash", 0) => {}
        ("noop" | "crash", _) => return Err(format!("`{kind}` takes no arguments")),
        ("sleep", 1) => {
            crate::config::parse_duration(&args[0]).map_err(|e| format!("sleep: {e}"))?;
        }
        ("sleep", _) => return Err(String::from("`sleep` takes one duration, e.g. `sleep 30s`")),
        ("fail", 0 | 1) => {}
        ("fail", _) => return Err(String::from("`fail` takes at most one message")),
        ("exec", 0) => return Err(String::from("`exec` needs a program: `exec -- PROGRAM [ARGS...]`")),
        ("exec", _) => {}
        _ => return Err(format!("unknown job kind `{kind}`; kinds: noop, sleep, fail, exec, crash")),
    }
    Ok(args)
}

/// A validated job, not yet placed in time: its delay becomes a `run_after` only once
/// the database is open and the effective clock anchored from it (`clock.rs`), so a CLI
/// started after a backward step of the wall clock does not schedule into the past.
pub struct JobDraft {
    job: NewJob,
    delay: Duration,
}

impl JobDraft {
    /// The job to insert at `now` (effective milliseconds).
    pub fn at(&self, now: WallMs) -> std::result::Result<NewJob, String> {
        // Bounded by MAX_DURATION, so this cannot overflow; checked anyway.
        let run_after = now
            .0
            .checked_add(self.delay.as_millis() as i64)
            .ok_or_else(|| String::from("run_after: the time it names is out of range"))?;
        Ok(NewJob { run_after: WallMs(run_after), ..self.job.clone() })
    }
}

/// Builds a validated job from its parts (shared by `enqueue` and `enqueue --from`).
pub fn build_job(
    ctx: &Context,
    kind: String,
    args: &[String],
    lane: String,
    max_attempts: Option<u32>,
    timeout: Option<&str>,
    run_after: Option<&str>,
) -> std::result::Result<JobDraft, String> {
    let args = validate_job(&kind, args)?;
    let dur = |what: &str, v: Option<&str>| -> std::result::Result<Option<Duration>, String> {
        v.map(|s| crate::config::parse_duration(s).map_err(|e| format!("{what}: {e}"))).transpose()
    };
    let timeout = dur("timeout", timeout)?;
    let delay = dur("run_after", run_after)?.unwrap_or_default();
    let max_attempts = max_attempts.unwrap_or(ctx.config.max_attempts);
    if max_attempts == 0 {
        return Err(String::from("max_attempts must be at least 1"));
    }
    if lane.is_empty() {
        return Err(String::from("lane must not be empty"));
    }
    let job = NewJob {
        kind,
        args,
        lane,
        max_attempts,
        timeout_ms: timeout.map(|t| t.as_millis() as u64),
        run_after: WallMs(0),
    };
    Ok(JobDraft { job, delay })
}

/// Opens the database for a CLI write: it must exist and be current (the CLI never creates
/// or migrates), with `synchronous=FULL` (an acknowledgement is durable).
pub fn open_for_cli_write(ctx: &Context) -> Result<rusqlite::Connection> {
    let db = &ctx.paths.database;
    match schema::inspect(db, ctx.config.busy_timeout)? {
        DbState::Missing => {
            return Err(Error::data(db, "does not exist yet; start the daemon once (homerd run) or run homerd migrate"))
        }
        state if !state.is_current() => {
            return Err(Error::data(db, "needs migrating; run `homerd migrate` (or start the daemon, which migrates)"))
        }
        _ => {}
    }
    let conn = sqlite::open_writer(db, ctx.config.busy_timeout, crate::config::Durability::Full)?;
    read::anchor_clock(&conn, &ctx.clock);
    Ok(conn)
}

/// Opens the database for `enqueue` and `enqueue --from`: [`open_for_cli_write`], so the
/// commit is `synchronous=FULL` and the ids printed after it are covered by an fsync. The
/// `ack_before_sync` mutant commits with `synchronous=OFF` instead.
pub fn open_for_enqueue(ctx: &Context) -> Result<rusqlite::Connection> {
    crate::powerloss::phase("enqueue");
    let conn = open_for_cli_write(ctx)?;
    if crate::mutant::active(crate::mutant::ACK_BEFORE_SYNC) {
        sqlite::unsynced_commits(&conn).map_err(|e| Error::sqlite(&ctx.paths.database, e))?;
    }
    Ok(conn)
}

/// `homerd enqueue`: one `BEGIN IMMEDIATE` insert committed with `synchronous=FULL`; the
/// id is printed only after the commit (acknowledged = durable). With `--key`, the same
/// key prints the existing job's id and creates nothing.
pub fn enqueue(ctx: &Context, spec: EnqueueSpec) -> Result<i32> {
    let job = build_job(
        ctx,
        spec.kind,
        &spec.args,
        spec.lane,
        spec.max_attempts,
        spec.timeout.as_deref(),
        spec.run_after.as_deref(),
    )
    .map_err(Error::Usage)?;
    let mut conn = open_for_enqueue(ctx)?;
    let db = &ctx.paths.database;
    let sql = |e| Error::sqlite(db, e);
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(sql)?;
    let now = ctx.clock.now();
    let job = job.at(now).map_err(Error::Usage)?;
    let (id, _created) = sqlite::ops::enqueue_keyed(&tx, &job, spec.key.as_deref(), now).map_err(sql)?;
    tx.commit().map_err(sql)?;
    println!("{id}");
    Ok(exit::OK)
}
