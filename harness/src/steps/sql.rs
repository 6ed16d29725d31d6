//! `sql`: run a statement on the database and compare the rows it returns.

use std::path::Path;
use std::time::Duration;

use super::Verb;
use crate::exec::ctx::{fail, harness_rw, Ctx, StepError};
use crate::scenario::kit::{Cx, Field, Res, Scalar, Tbl};

/// Run SQL on the database (read-only connection unless `write`) and compare rows. On a
/// PostgreSQL run a plain query runs on the run's server (`write` and `database` act on
/// SQLite files: the parser refuses them there).
#[derive(Clone, Debug)]
pub struct Sql {
    pub query: String,
    pub rows: Vec<Vec<Scalar>>,
    /// Run on a read-write connection (to prepare a fixture, e.g. a "newer" database).
    pub write: bool,
    /// Another database file than the home's (placeholders allowed).
    pub database: Option<String>,
}

impl Verb for Sql {
    const KEY: &'static str = "sql";
    const OPTIONS: &'static [&'static str] = &["rows", "write", "database"];

    fn parse(cx: &mut Cx<'_>, t: &Tbl<'_>, v: &Field<'_>) -> Res<Sql> {
        Self::only_its_options(cx, t)?;
        let query = cx.text(v)?;
        let rows =
            cx.need(t, "rows", &v.key_span, String::from("`sql` needs `rows` (the expected rows, e.g. [[1]])"))?;
        Ok(Sql {
            query,
            rows: cx.rows(&rows)?,
            write: cx.opt(t, "write", Cx::boolean)?.unwrap_or(false),
            database: cx.opt(t, "database", Cx::text)?,
        })
    }

    fn summary(&self) -> String {
        format!("sql `{}`", self.query)
    }

    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        let query = ctx.subst(&self.query)?;
        let rows = match (&self.database, self.write) {
            // The run's database: the home's SQLite file, or the run's PostgreSQL server.
            (None, false) => ctx.query(&query)?,
            (None, true) => write_sql(ctx, &ctx.db(), &query)?,
            (Some(d), write) => {
                let db = ctx.path(d)?;
                if write {
                    write_sql(ctx, &db, &query)?
                } else {
                    ctx.query_at(&db, &query)?
                }
            }
        };
        if rows != self.rows {
            return fail(format!("rows {:?}", self.rows), format!("{rows:?}"));
        }
        Ok(())
    }
}

/// Run a statement on a read-write connection (fixture preparation); returns no rows.
fn write_sql(ctx: &Ctx, db: &Path, sql: &str) -> Result<Vec<Vec<Scalar>>, StepError> {
    let err =
        |e: rusqlite::Error| StepError { expected: format!("the statement `{sql}` to run"), actual: e.to_string() };
    let conn = if db.exists() { harness_rw(db) } else { rusqlite::Connection::open(db) }.map_err(err)?;
    conn.busy_timeout(ctx.scaled(Duration::from_secs(10))).map_err(err)?;
    conn.execute_batch(sql).map_err(err)?;
    Ok(Vec::new())
}
