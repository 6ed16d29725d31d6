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

/// Jobs per status and per lane and status, from one read (`status`, `daemon.metrics`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobCounts {
    /// Every status present, zero if none.
    pub by_status: std::collections::BTreeMap<String, i64>,
    /// Per lane, the statuses it has jobs in.
    pub by_lane: std::collections::BTreeMap<String, std::collections::BTreeMap<String, i64>>,
}

impl JobCounts {
    /// From `(lane, status, count)` rows, one per lane and status present.
    pub fn from_groups(groups: impl IntoIterator<Item = (String, String, i64)>) -> JobCounts {
        let mut counts = JobCounts {
            by_status: JobStatus::ALL.iter().map(|s| (s.as_str().to_owned(), 0)).collect(),
            by_lane: Default::default(),
        };
        for (lane, status, n) in groups {
            *counts.by_status.entry(status.clone()).or_insert(0) += n;
            counts.by_lane.entry(lane).or_default().insert(status, n);
        }
        counts
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_status_add_up_the_lanes_and_name_every_status() {
        let group = |lane: &str, status: &str, n| (lane.to_owned(), status.to_owned(), n);
        let c = JobCounts::from_groups([group("a", "pending", 2), group("b", "pending", 3), group("b", "failed", 1)]);
        let by_status: Vec<(&str, i64)> = c.by_status.iter().map(|(s, n)| (s.as_str(), *n)).collect();
        assert_eq!(by_status, [("cancelled", 0), ("completed", 0), ("failed", 1), ("pending", 5), ("running", 0)]);
        assert_eq!(c.by_lane["a"].len(), 1);
        assert_eq!((c.by_lane["b"]["pending"], c.by_lane["b"]["failed"]), (3, 1));
    }
}
