//! The database's upkeep: `homerd migrate` (pending migrations, under the lock and the
//! leader row, refused while a daemon runs) and `homerd backup PATH` (one consistent
//! online snapshot, safe while the daemon runs).

use std::path::Path;

use crate::cmd::context::{self, Backend, Context};
use crate::cmd::lead::{acquire_lock, diagnostics, open_and_lead, Leadership, Role};
use crate::error::{exit, Error, Result};
use crate::sqlite::schema::MIGRATIONS;
use crate::sqlite::{leader, read};
use crate::{outln, output};

/// `homerd migrate [--json]`: apply pending migrations under the lock and the leader row.
pub fn migrate(ctx: &Context, as_json: bool) -> Result<i32> {
    if let Backend::Postgres(url) = ctx.backend() {
        return migrate_postgres(ctx, url, as_json);
    }
    let Some(mut lock) = acquire_lock(ctx, Role::Migrate)? else { return Ok(exit::OK) };
    let existed = std::fs::symlink_metadata(&ctx.paths.database).is_ok();
    let Leadership { mut conn, epoch, applied, .. } =
        open_and_lead(ctx, &mut lock, Role::Migrate, &mut |lock, epoch, id| {
            lock.write_diagnostics(&diagnostics(ctx, Role::Migrate, epoch, id))
        })?;
    let clock = ctx.clock.clone();
    let tx = conn.transaction().map_err(|e| Error::sqlite(&ctx.paths.database, e))?;
    leader::release(&tx, epoch, &clock).map_err(|e| Error::sqlite(&ctx.paths.database, e))?;
    tx.commit().map_err(|e| Error::sqlite(&ctx.paths.database, e))?;
    drop(conn);
    // Reported once the lock is released: a reader that stops reading cannot hold it.
    drop(lock);
    let db = ctx.paths.database.display().to_string();
    let created = (!existed).then(|| format!("created {db} with {} migrations", MIGRATIONS.len()));
    report_migrated(as_json, &ctx.paths.database, &db, created, &applied, MIGRATIONS.len())
}

/// What `migrate` prints on either backend (one JSON shape): `applied` of `total`
/// migrations to `database` (`shown` in text); `created`, the line saying this run created
/// the database (on PostgreSQL homerd's schema), if it did.
fn report_migrated(
    as_json: bool,
    database: &impl serde::Serialize,
    shown: &str,
    created: Option<String>,
    applied: &[&str],
    total: usize,
) -> Result<i32> {
    if as_json {
        output::json(&serde_json::json!({
            "database": database,
            "created": created.is_some(),
            "applied": applied,
            "migrations": total,
        }))?;
        return Ok(exit::OK);
    }
    match (created, applied.len()) {
        (Some(line), _) => outln!("{line}")?,
        (None, 0) => outln!("{shown} is up to date ({total} migrations)")?,
        (None, n) => outln!("applied {n} migration(s) to {shown}: {}", applied.join(", "))?,
    }
    Ok(exit::OK)
}

/// `homerd backup PATH [--json]`: one consistent online snapshot, written to a temp file
/// beside PATH and linked into place (an existing PATH is never overwritten).
pub fn backup(ctx: &Context, dest: &Path, as_json: bool) -> Result<i32> {
    if let Backend::Postgres(url) = ctx.backend() {
        return Err(Error::Usage(format!(
            "backup copies the home's SQLite database; this homerd's queue is on PostgreSQL ({}): back that up \
             with PostgreSQL's own tools, e.g. `pg_dump --format=custom --file={} DBNAME`",
            crate::postgres::redact(url),
            dest.display()
        )));
    }
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
    let Some(conn) = context::open_read_only(ctx)? else {
        return Err(Error::data(db, "no database to back up (start the daemon first)"));
    };
    let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(Error::io(
            "backup to",
            dest,
            std::io::Error::new(std::io::ErrorKind::NotFound, "its directory does not exist (create it first)"),
        ));
    }
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        dest.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    crate::paths::create_private_file(&tmp)?;
    let result = read::backup_to(&conn, &tmp)
        .map_err(|e| Error::sqlite(&tmp, e))
        .and_then(|()| std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| Error::io("fsync", &tmp, e)))
        .and_then(|()| std::fs::hard_link(&tmp, dest).map_err(|e| Error::io("link", dest, e)))
        .and_then(|()| std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io("fsync", dir, e)));
    let _ = std::fs::remove_file(&tmp);
    // A rollback journal the copy's connection may have left (`<tmp>-journal`).
    let _ = std::fs::remove_file(crate::sqlite::schema::side_files(&tmp)[2].as_path());
    result?;
    if as_json {
        output::json(&serde_json::json!({"path": output::path_json(dest), "database": output::path_json(db)}))?;
    } else {
        outln!("{}", dest.display())?;
    }
    Ok(exit::OK)
}

/// `homerd migrate` on PostgreSQL: applies the pending PostgreSQL migrations under the
/// schema's advisory lock (`postgres::schema::migrate`), safe while daemons run (each
/// migration is one transaction; they judge the schema the same way). JSON shape as on
/// SQLite; `created` is true when this run created the schema.
fn migrate_postgres(ctx: &Context, url: &str, as_json: bool) -> Result<i32> {
    use crate::postgres::schema::{self, MIGRATIONS};
    let mut pg = context::connect_postgres(ctx, url)?;
    let shown = pg.shown();
    let applied = schema::migrate(&mut pg.client, &shown)?;
    drop(pg);
    let created = (!applied.is_empty() && applied.len() == MIGRATIONS.len())
        .then(|| format!("created homerd's schema in {shown} with {} migrations", MIGRATIONS.len()));
    report_migrated(as_json, &shown, &shown, created, &applied, MIGRATIONS.len())
}
