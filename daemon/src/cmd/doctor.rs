//! `homerd doctor [--json]`: the original daemon's "Verify Deployment" steps as checks
//! (lock file, daemon running, migrations, integrity, lock columns, job statuses,
//! heartbeats, stuck jobs), then a warning for each key of an installed launchd/systemd unit that
//! contradicts what `homerd service` writes (`service/`). Like `status`, it never touches
//! the lock and opens the database read-only.

use serde_json::json;

use crate::cmd::context::{self, Backend, Context};
use crate::cmd::service::UnitWarning;
use crate::cmd::status::describe_holder;
use crate::duration::format_duration;
use crate::error::{exit, Error, Result};
use crate::lock;
use crate::sqlite::leader::HolderState;
use crate::sqlite::schema::{self, DbState, MIGRATIONS};
use crate::sqlite::{self, read};
use crate::{outln, output};

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
    let checks = match ctx.backend() {
        Backend::Postgres(url) => postgres_checks(ctx, url),
        Backend::Sqlite => doctor_checks(ctx),
    };
    let warnings = crate::cmd::service::installed_unit_warnings(&ctx.config);
    let failed = checks.iter().filter(|c| !c.ok).count();
    let code = if failed == 0 { exit::OK } else { exit::CHECK_FAILED };
    // The verdict is reached before a line is printed, so a reader that stops reading
    // (`homerd doctor | head -1`) still gets it as the exit status.
    match report(&checks, &warnings, failed, as_json) {
        Ok(()) | Err(Error::StdoutClosed) => Ok(code),
        Err(e) => Err(e),
    }
}

fn report(checks: &[Check], warnings: &[UnitWarning], failed: usize, as_json: bool) -> Result<()> {
    if as_json {
        let list: Vec<_> = checks.iter().map(|c| json!({"check": c.name, "ok": c.ok, "detail": c.detail})).collect();
        let warns: Vec<_> = warnings
            .iter()
            .map(|w| json!({"check": "service unit", "path": output::path_json(&w.path), "detail": w.detail}))
            .collect();
        let out = json!({"ok": failed == 0, "checks": list, "warnings": warns});
        output::json(&out)?;
    } else {
        for c in checks {
            outln!("{} {:<18} {}", if c.ok { "PASS" } else { "FAIL" }, c.name, c.detail)?;
        }
        for w in warnings {
            outln!("WARN {:<18} {}: {}", "service unit", w.path.display(), w.detail)?;
        }
        let warned = match warnings.len() {
            0 => String::new(),
            1 => String::from(", 1 warning"),
            n => format!(", {n} warnings"),
        };
        if failed == 0 {
            outln!("all {} checks passed{warned}", checks.len())?;
        } else {
            outln!("{failed} of {} checks failed{warned}", checks.len())?;
        }
    }
    Ok(())
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
    if let Err(e) = context::refuse_foreign_wal(ctx) {
        check("migrations", false, e.to_string());
        return checks;
    }
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

    // 4b. Every job in a status homerd knows (only a hand edit makes another: such a job
    // is in no status index, so nothing would ever claim, count or recover it).
    match read::unknown_statuses(&conn, 10) {
        Ok((_, 0)) => check("job statuses", true, String::from("every job's status is one homerd knows")),
        Ok((found, total)) => {
            let shown: Vec<String> = found.iter().map(|(id, s)| format!("{id} ({s:?})")).collect();
            let more = if total > found.len() as i64 {
                format!(" and {} more", total - found.len() as i64)
            } else {
                String::new()
            };
            check(
                "job statuses",
                false,
                format!(
                    "{total} job(s) in a status homerd does not know, which nothing claims, counts or recovers: {}{more} \
                     (a hand edit? give each a status homerd knows, e.g. \
                     sqlite3 '{}' \"UPDATE job_queue SET status = 'failed', completed_at = strftime('%s') * 1000, \
                     locked_by = NULL, claim_token = NULL, claim_epoch = NULL WHERE id = N\", then homerd retry N to run it again)",
                    shown.join(", "),
                    db.display()
                ),
            )
        }
        Err(e) => check("job statuses", false, format!("cannot read job_queue: {e}")),
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

/// `doctor` on PostgreSQL: the server reachable with these credentials, the schema ours
/// and current, a live worker, and no worker overdue past its stale threshold (its
/// running jobs wait until a live worker fences it). There is no lock file, integrity
/// check or leader row to look at: the server owns its storage, and workers replace the
/// leader.
fn postgres_checks(ctx: &Context, url: &str) -> Vec<Check> {
    use crate::postgres::{ops, schema, workers};
    let mut checks = Vec::new();
    let mut check = |name, ok, detail: String| checks.push(Check { name, ok, detail });
    let mut pg = match context::connect_postgres(ctx, url) {
        Ok(pg) => pg,
        Err(e) => {
            check("database", false, e.to_string());
            return checks;
        }
    };
    let shown = pg.shown();
    let version = ops::server_version(&mut pg.client).unwrap_or_else(|_| String::from("?"));
    check("database", true, format!("connected to {shown} (PostgreSQL {version})"));
    let known = schema::MIGRATIONS.len();
    match schema::applied(&mut pg.client, &shown) {
        Ok(n) if n == known => check("migrations", true, format!("{n} of {known} applied, checksums match")),
        Ok(n) => {
            let missing: Vec<&str> = schema::MIGRATIONS[n..].iter().map(|(name, _)| *name).collect();
            check(
                "migrations",
                false,
                format!(
                    "{n} of {known} applied; missing {} (run homerd migrate with this --database)",
                    missing.join(", ")
                ),
            );
            return checks;
        }
        Err(e) => {
            check("migrations", false, e.to_string());
            return checks;
        }
    }
    let pge = |e| Error::postgres(&shown, e).to_string();
    match workers::live(&mut pg.client).map_err(pge) {
        Ok(live) => {
            let fresh = live.iter().filter(|w| w.seen_ms_ago <= w.stale_ms).count();
            if fresh > 0 {
                check("daemon running", true, format!("{fresh} live worker(s) seen within their stale threshold"));
            } else {
                check(
                    "daemon running",
                    false,
                    String::from("no live worker (start one: homerd run with this --database)"),
                );
            }
        }
        Err(e) => check("daemon running", false, e),
    }
    match ops::stale_workers(&mut pg.client).map_err(pge) {
        Ok(stale) if stale.is_empty() => check("stale workers", true, String::from("none")),
        Ok(stale) => {
            let list: Vec<String> = stale
                .iter()
                .map(|(inc, name, ago)| {
                    format!(
                        "{inc} {name} (seen {} ago)",
                        format_duration(std::time::Duration::from_millis((*ago).max(0) as u64))
                    )
                })
                .collect();
            check(
                "stale workers",
                false,
                format!(
                    "not fenced yet: {} (a live worker fences them and recovers their jobs; start one if none runs)",
                    list.join(", ")
                ),
            );
        }
        Err(e) => check("stale workers", false, e),
    }
    checks
}
