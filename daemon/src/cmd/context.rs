//! What every command runs with, and how a command that does not take the lock opens the
//! database.
//!
//! [`Context`] is resolved once from the global options (home, lock file, configuration
//! file, `--set`): the paths, the validated configuration, the effective clock. The
//! openers validate the database read-only first and never create or migrate it (only
//! `run` and `migrate` do, under the lock: `lead.rs`); each anchors the effective clock
//! from the database (`clock.rs`) before the command reads or writes the time.

use std::path::PathBuf;

use rusqlite::Connection;

use crate::clock::Clock;
use crate::config::{Config, Durability, Sources};
use crate::error::{Error, Result};
use crate::paths::Paths;
use crate::sqlite::schema::{self, DbState, MIGRATIONS};
use crate::sqlite::{self, read};

/// Everything a command needs: where things are, the validated configuration, the clock.
#[derive(Clone, Debug)]
pub struct Context {
    pub paths: Paths,
    pub config: Config,
    pub clock: Clock,
}

impl Context {
    /// Resolves the paths from `--home`/`--lock-file` and loads the configuration from
    /// `--config` (or the home's default file) with every `--set` applied over it.
    pub fn load(
        home: Option<PathBuf>,
        lock_file: Option<PathBuf>,
        config_file: Option<PathBuf>,
        overrides: Vec<String>,
    ) -> Result<Context> {
        let paths = Paths::new(home, lock_file);
        let sources = Sources {
            explicit_file: config_file,
            default_file: Some(paths.default_config.clone()),
            overrides,
            skip_environment: false,
        };
        let config = Config::load(&sources)?;
        Ok(Context { paths, config, clock: Clock::from_env() })
    }
}

/// Opens the database read-only after validating it; `None` if it does not exist
/// (before the daemon's first start: `status` reports that, `list` lists no jobs, `show`
/// finds none, `backup` refuses it).
pub fn open_read_only(ctx: &Context) -> Result<Option<Connection>> {
    let db = &ctx.paths.database;
    refuse_foreign_wal(ctx)?;
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

/// Refuses to open a database beside a `-wal` that a crashed daemon wrote for another
/// database (`schema::check_wal_owner`, from what the last holder recorded in the lock
/// file): a reader would show that log's pages as the database's, and the first commit
/// would checkpoint them into the file that is there now and delete the log. Every
/// command that opens the home's database asks this before anything else, as `run` and
/// `migrate` do once they hold the lock. It reads the lock file this command was given:
/// the error says so, for a daemon started with another one.
pub fn refuse_foreign_wal(ctx: &Context) -> Result<()> {
    let recorded = crate::lock::read_diagnostics(&ctx.paths.lock_file).unwrap_or_default();
    schema::check_wal_owner(&ctx.paths.database, &recorded).map_err(|e| match e {
        Error::Data { path, message } => Error::Data {
            path,
            message: format!(
                "{message} (the last holder as recorded in {}; if the daemon runs with another lock file, give it with --lock-file)",
                ctx.paths.lock_file.display()
            ),
        },
        other => other,
    })
}

/// What a command about job `id` says before the daemon's first start (66, like a job
/// that does not exist: there is none yet).
pub fn no_database_yet(ctx: &Context, id: i64) -> Error {
    Error::NotFound(format!(
        "no job {id}: the daemon has not created its database yet ({}); start it once with `homerd run`",
        ctx.paths.database.display()
    ))
}

/// [`open_for_write`] for a command about job `id` (`cancel`, `retry`): before the
/// daemon's first start there is no such job ([`no_database_yet`], 66), as `show`, `logs`
/// and `wait` say.
pub fn open_for_job_write(ctx: &Context, id: i64) -> Result<Connection> {
    refuse_foreign_wal(ctx)?;
    match schema::inspect(&ctx.paths.database, ctx.config.busy_timeout)? {
        DbState::Missing => Err(no_database_yet(ctx, id)),
        _ => open_for_write(ctx),
    }
}

/// Opens the database for a CLI write: it must exist and be current (the CLI never creates
/// or migrates), with `synchronous=FULL` (an acknowledgement is durable).
pub fn open_for_write(ctx: &Context) -> Result<Connection> {
    let db = &ctx.paths.database;
    refuse_foreign_wal(ctx)?;
    match schema::inspect(db, ctx.config.busy_timeout)? {
        DbState::Missing => {
            return Err(Error::data(db, "does not exist yet; start the daemon once (homerd run) or run homerd migrate"))
        }
        state if !state.is_current() => {
            return Err(Error::data(db, "needs migrating; run `homerd migrate` (or start the daemon, which migrates)"))
        }
        _ => {}
    }
    let conn = sqlite::open_writer(db, ctx.config.busy_timeout, Durability::Full)?;
    read::anchor_clock(&conn, &ctx.clock);
    Ok(conn)
}

/// Which database the commands work on: `ctx.config.database` (`--database`, the
/// `database` key, `HOMER_DATABASE`). The operator commands on jobs match on it once,
/// when they open their `crate::cmd::queue::Queue`; `enqueue`, `doctor`, `migrate`,
/// `backup` and `run` each match on it once themselves.
pub enum Backend<'a> {
    /// The home's SQLite file.
    Sqlite,
    /// A PostgreSQL URL (a secret: shown only as [`Pg::shown`]).
    Postgres(&'a str),
}

impl Context {
    pub fn backend(&self) -> Backend<'_> {
        match self.config.database.as_deref() {
            Some(url) if crate::postgres::is_url(url) => Backend::Postgres(url),
            _ => Backend::Sqlite,
        }
    }
}

/// A command's connection to a PostgreSQL queue.
pub struct Pg {
    pub client: postgres::Client,
    pub target: crate::postgres::Target,
}

impl Pg {
    /// The database as errors and output name it (password replaced).
    pub fn shown(&self) -> String {
        self.target.shown.clone()
    }
}

/// Parses `url` with the command's timeout (`busy_timeout`: connecting, each statement
/// and each lock wait) and connects, without looking at the schema (`migrate`).
pub fn connect_postgres(ctx: &Context, url: &str) -> Result<Pg> {
    let target = crate::postgres::Target::parse(url, ctx.config.busy_timeout)?;
    let client = target.connect()?;
    Ok(Pg { client, target })
}

/// [`connect_postgres`], then the schema judged as a start judges it (ours, unchanged,
/// not newer: else 65) and required current: the CLI never migrates (65 "run `homerd
/// migrate`", as SQLite's "needs migrating").
pub fn open_postgres(ctx: &Context, url: &str) -> Result<Pg> {
    let mut pg = connect_postgres(ctx, url)?;
    let known = crate::postgres::schema::MIGRATIONS.len();
    let applied = crate::postgres::schema::applied(&mut pg.client, &pg.target.shown)?;
    if applied < known {
        return Err(Error::data(
            pg.shown(),
            format!(
                "has {applied} of {known} PostgreSQL migrations applied; run `homerd migrate --database URL` \
                 with this database's URL (or start the daemon, which migrates)"
            ),
        ));
    }
    Ok(pg)
}
