//! The job vocabulary (`crate::job`) at the SQL edge: ids, epochs and wall-clock times
//! are stored as the integers inside them, a status as its name.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

use crate::job::{Epoch, JobId, JobStatus, WallMs};

macro_rules! integer_column {
    ($($t:ident),*) => {$(
        impl ToSql for $t {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                self.0.to_sql()
            }
        }
        impl FromSql for $t {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<$t> {
                i64::column_result(value).map($t)
            }
        }
    )*};
}
integer_column!(JobId, Epoch, WallMs);

impl ToSql for JobStatus {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for JobStatus {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<JobStatus> {
        let s = value.as_str()?;
        JobStatus::parse(s).ok_or_else(|| FromSqlError::Other(format!("unknown job status `{s}`").into()))
    }
}
