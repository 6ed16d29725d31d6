//! The rows the operator commands read and what their writes did, shared by both
//! backends (`crate::sqlite::ops`/`read` and `crate::postgres::ops` return these), so
//! every command prints one shape whichever database it ran on. Plain data: no SQL
//! types, no I/O.

use serde::Serialize;

use crate::job::JobStatus;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JobRow {
    pub id: i64,
    pub status: String,
    pub lane: String,
    pub kind: String,
    pub args: Vec<String>,
    pub attempts: i64,
    pub max_attempts: i64,
    pub interruptions: i64,
    pub runs: i64,
    pub created_at: i64,
    pub run_after: i64,
    pub started_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub heartbeat_at: Option<i64>,
    pub locked_by: Option<String>,
    pub error: Option<String>,
    pub key: Option<String>,
    pub cancel_requested_at: Option<i64>,
    /// An `exec` job's working directory (absent for other kinds and older rows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// An `exec` job's `--env` variables (absent when none).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub env: std::collections::BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RunRow {
    pub run: i64,
    pub attempt: i64,
    pub epoch: i64,
    pub worker: String,
    pub child_pid: Option<i64>,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub outcome: Option<String>,
    pub error: Option<String>,
}

/// What `cancel` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cancel {
    NotFound,
    /// Was pending: now cancelled.
    Cancelled,
    /// Is running: a request was filed (or already was) for the daemon to act on.
    Requested,
    /// Already terminal: left alone.
    Terminal(JobStatus),
}

/// What `retry` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Retry {
    NotFound,
    Requeued,
    /// Not failed or cancelled: left alone.
    NotRetryable(JobStatus),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningJob {
    pub id: i64,
    pub lane: String,
    pub kind: String,
    pub locked_by: Option<String>,
    pub heartbeat_at: Option<i64>,
    pub claim_epoch: Option<i64>,
}

/// Where a job stands, for `wait` and `logs -f` (`job_progress` in either backend).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobProgress {
    pub status: JobStatus,
    pub kind: String,
    pub runs: i64,
    /// When it ended (`completed_at`, set for every terminal status); `None` before.
    pub completed_at: Option<i64>,
}
