//! The PostgreSQL schema: its own numbered, checksummed migrations
//! (`migrations/postgres/NNN_name.sql`, embedded at build time), applied in one
//! transaction under a transaction-scoped advisory lock, so any number of daemons and
//! `homerd migrate` runs may start at once and exactly one applies each file.
//!
//! Like the SQLite backend, a database is judged before anything is written: an applied
//! migration this binary does not know (a newer homerd migrated it), one whose text
//! changed, or queue tables without our migrations table (not homerd's) are refused
//! with the data code (65) and nothing changes.

use postgres::{Client, GenericClient};

use crate::error::{Error, Result};
use crate::sqlite::schema::checksum;

include!(concat!(env!("OUT_DIR"), "/pg_migrations.rs"));

/// The advisory lock every migrator takes (`pg_advisory_xact_lock`): "homer-mg".
pub const MIGRATION_LOCK: i64 = 0x686f_6d65_722d_6d67;

const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS homer_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT    NOT NULL,
    checksum   TEXT    NOT NULL,
    applied_at BIGINT  NOT NULL
)";

/// How many of [`MIGRATIONS`] the database has applied, after checking every applied one
/// is ours, in order and unchanged. `target` names the database in errors.
pub fn applied(client: &mut impl GenericClient, target: &str) -> Result<usize> {
    let pg = |e| Error::postgres(target, e);
    let has_table: bool =
        client.query_one("SELECT to_regclass('homer_migrations') IS NOT NULL", &[]).map_err(pg)?.get(0);
    if !has_table {
        let foreign: bool = client.query_one("SELECT to_regclass('job_queue') IS NOT NULL", &[]).map_err(pg)?.get(0);
        if foreign {
            return Err(Error::data(
                target,
                "this database has a job_queue table but no homer_migrations table: it is not a homerd database; \
                 use an empty database (CREATE DATABASE) for homerd",
            ));
        }
        return Ok(0);
    }
    let rows =
        client.query("SELECT version, name, checksum FROM homer_migrations ORDER BY version", &[]).map_err(pg)?;
    for (i, row) in rows.iter().enumerate() {
        let (version, name, sum): (i32, String, String) = (row.get(0), row.get(1), row.get(2));
        let Some((known, sql)) = MIGRATIONS.get(i) else {
            return Err(Error::data(
                target,
                format!(
                    "the database has migration {name} which this homerd does not know: a newer homerd migrated it; \
                     upgrade homerd (this one knows {} PostgreSQL migrations)",
                    MIGRATIONS.len()
                ),
            ));
        };
        if version as usize != i + 1 || name != *known {
            return Err(Error::data(
                target,
                format!("applied migration {version} is {name}, expected {known}: not a homerd database history"),
            ));
        }
        if sum != checksum(sql) {
            return Err(Error::data(
                target,
                format!("applied migration {name} differs from the one this homerd carries (checksum changed)"),
            ));
        }
    }
    Ok(rows.len())
}

/// Applies every pending migration, under [`MIGRATION_LOCK`], in one transaction;
/// returns the names applied now (none when another migrator got there first).
pub fn migrate(client: &mut Client, target: &str) -> Result<Vec<&'static str>> {
    let pg = |e| Error::postgres(target, e);
    let mut tx = client.transaction().map_err(pg)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).map_err(pg)?;
    // Judged under the lock: a concurrent migrator has either committed all or nothing.
    let done = applied(&mut tx, target)?;
    if done == MIGRATIONS.len() {
        return Ok(Vec::new());
    }
    tx.batch_execute(MIGRATIONS_TABLE).map_err(pg)?;
    let mut now = Vec::new();
    for (i, (name, sql)) in MIGRATIONS.iter().enumerate().skip(done) {
        tx.batch_execute(sql).map_err(|e| Error::postgres_in(target, &format!("migration {name}"), e))?;
        tx.execute(
            "INSERT INTO homer_migrations (version, name, checksum, applied_at)
             VALUES ($1, $2, $3, (extract(epoch FROM clock_timestamp()) * 1000)::bigint)",
            &[&((i + 1) as i32), name, &checksum(sql)],
        )
        .map_err(pg)?;
        now.push(*name);
    }
    tx.commit().map_err(pg)?;
    Ok(now)
}
