//! The job vocabulary: the values the coordinator, every `JobStore` and the CLI talk in —
//! what is enqueued ([`NewJob`], with an `exec` job's [`ExecSettings`]), what a claim hands out ([`Claimed`]) and how it is
//! named afterwards ([`ClaimRef`]), what an outcome did ([`FailOutcome`]), what recovery
//! found ([`Recovered`]), a child's identity ([`ChildIdentity`]) and a job's status
//! ([`JobStatus`]).
//!
//! Ids, epochs and the two clocks are newtypes, so a monotonic reading cannot be passed
//! where the wall clock is meant (`Coordinator::claim(MonoMs, WallMs)`), nor an epoch
//! where a job id is. Durations stay plain milliseconds (`i64`): a time plus a duration
//! is a time, a time minus a time is a duration.
//!
//! No I/O here and no SQL: the SQLite module converts these at its edge
//! (`rusqlite::ToSql`/`FromSql` in `crate::sqlite::convert`).

use std::collections::BTreeMap;
use std::fmt;
use std::ops::{Add, Sub};

/// A job's id (`job_queue.id`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(pub i64);

/// A leader epoch: the leader row's generation a daemon holds (`leader.epoch`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(pub i64);

/// Boot-relative monotonic milliseconds (`clock::mono_ms`): deadlines and staleness,
/// never stored as a time of day.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MonoMs(pub i64);

/// Effective wall-clock milliseconds since the Unix epoch (`Clock::now_ms`): everything
/// stored and scheduled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WallMs(pub i64);

macro_rules! time_arithmetic {
    ($t:ident) => {
        /// A time plus a duration in milliseconds.
        impl Add<i64> for $t {
            type Output = $t;
            fn add(self, ms: i64) -> $t {
                $t(self.0 + ms)
            }
        }
        /// A time minus a duration in milliseconds.
        impl Sub<i64> for $t {
            type Output = $t;
            fn sub(self, ms: i64) -> $t {
                $t(self.0 - ms)
            }
        }
        /// The milliseconds between two times of the same clock.
        impl Sub for $t {
            type Output = i64;
            fn sub(self, earlier: $t) -> i64 {
                self.0 - earlier.0
            }
        }
    };
}
time_arithmetic!(MonoMs);
time_arithmetic!(WallMs);

macro_rules! plain_display_and_json {
    ($($t:ident),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
        /// Events carry the number, as before the newtype.
        impl From<$t> for serde_json::Value {
            fn from(v: $t) -> serde_json::Value {
                v.0.into()
            }
        }
    )*};
}
plain_display_and_json!(JobId, Epoch, MonoMs, WallMs);

/// A job's status (`job_queue.status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum JobStatus {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl JobStatus {
    /// Every status, in the order `status` lists them.
    pub const ALL: [JobStatus; 5] =
        [JobStatus::Pending, JobStatus::Running, JobStatus::Completed, JobStatus::Failed, JobStatus::Cancelled];

    /// The name stored in the database and shown to operators.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// The status named `s`, if it is one.
    pub fn parse(s: &str) -> Option<JobStatus> {
        JobStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Completed, failed or cancelled: nothing runs it again unless an operator retries it.
    pub fn terminal(self) -> bool {
        matches!(self, JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled)
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job as the CLI enqueues it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewJob {
    pub kind: String,
    /// Stored as a JSON array of strings.
    pub args: Vec<String>,
    pub lane: String,
    pub max_attempts: u32,
    pub timeout_ms: Option<u64>,
    pub run_after: WallMs,
    /// Where an `exec` job runs and what it adds to its environment.
    pub exec: ExecSettings,
}

impl NewJob {
    /// A job of `kind` on `lane` with no arguments, no timeout, due at once and the default
    /// exec settings (what tests and the models start from; change fields with `..`).
    pub fn new(kind: &str, lane: &str, max_attempts: u32) -> NewJob {
        NewJob {
            kind: kind.into(),
            args: vec![],
            lane: lane.into(),
            max_attempts,
            timeout_ms: None,
            run_after: WallMs(0),
            exec: ExecSettings::default(),
        }
    }
}

/// An `exec` job's working directory and explicit environment (`job_queue.cwd`, `.env`).
/// The enqueuing caller's own environment is never part of it: a job gets the daemon's
/// environment plus `env`, so a job row holds no variable nobody named.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecSettings {
    /// Absolute directory the program starts in; `None`: the daemon's own directory.
    pub cwd: Option<String>,
    /// Set on top of the daemon's environment (`--env KEY=VALUE`).
    pub env: BTreeMap<String, String>,
}

/// The stored form of a job's arguments and environment, the same text in every
/// backend: `payload` is a JSON array of strings; `env` is NULL for none, else a JSON
/// object. Unreadable stored values read back as empty (the daemon never writes one).
pub mod stored {
    use std::collections::BTreeMap;

    pub fn args_json(args: &[String]) -> String {
        serde_json::to_string(args).expect("strings serialise")
    }

    pub fn parse_args(json: &str) -> Vec<String> {
        serde_json::from_str(json).unwrap_or_default()
    }

    pub fn env_json(env: &BTreeMap<String, String>) -> Option<String> {
        (!env.is_empty()).then(|| serde_json::to_string(env).expect("strings serialise"))
    }

    pub fn parse_env(json: Option<String>) -> BTreeMap<String, String> {
        json.and_then(|j| serde_json::from_str(&j).ok()).unwrap_or_default()
    }
}

/// What a claim hands the worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimed {
    pub id: JobId,
    pub lane: String,
    pub kind: String,
    pub args: Vec<String>,
    /// `attempts` after the claim's increment (`HOMER_ATTEMPT`).
    pub attempt: u32,
    /// This run's number (`HOMER_RUN`), the `job_runs.run` of its row.
    pub run: u32,
    pub token: String,
    pub timeout_ms: Option<u64>,
    pub max_attempts: u32,
    pub exec: ExecSettings,
}

impl Claimed {
    /// How this claim, made under `epoch`, is named to the store afterwards.
    pub fn claim_ref(&self, epoch: Epoch) -> ClaimRef {
        ClaimRef { epoch, id: self.id, token: self.token.clone() }
    }
}

/// One claim of one job: every write about a claimed job matches all three, so a claim
/// that was recovered and re-claimed (a zombie's), or made under an older epoch, changes
/// nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimRef {
    pub epoch: Epoch,
    pub id: JobId,
    pub token: String,
}

/// Concurrency limits for one claim.
#[derive(Clone, Debug)]
pub struct ClaimLimits {
    /// Global cap on running jobs (this daemon runs them all: one daemon per database).
    pub global: u32,
    /// Per-lane caps; lanes not named get `default_lane`.
    pub lanes: BTreeMap<String, u32>,
    pub default_lane: u32,
    /// Jobs claimed in one transaction at most.
    pub batch: u32,
}

impl ClaimLimits {
    pub fn lane_cap(&self, lane: &str) -> u32 {
        self.lanes.get(lane).copied().unwrap_or(self.default_lane)
    }
}

/// Lanes take turns: one from each queue in order, round after round, until `room` are
/// taken or every queue is empty. Each queue is one lane's ready jobs, FIFO; the queues
/// come oldest head first.
pub fn take_turns<T>(mut queues: Vec<std::collections::VecDeque<T>>, room: usize) -> Vec<T> {
    let mut chosen = Vec::new();
    while chosen.len() < room && queues.iter().any(|q| !q.is_empty()) {
        for q in queues.iter_mut() {
            if chosen.len() == room {
                break;
            }
            if let Some(id) = q.pop_front() {
                chosen.push(id);
            }
        }
    }
    chosen
}

/// What an outcome other than success did to the job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailOutcome {
    /// Back to pending, to run again at `run_after`.
    Retry { run_after: WallMs },
    /// Attempts exhausted (or not retryable): terminal.
    Failed,
    /// An operator asked to cancel it while it ran: `cancelled` instead of requeued.
    Cancelled,
}

/// A job's child process, as recorded on its run before it is released: enough to find
/// its process group again after a crash, and to tell it from a process that reused its
/// pid (`start_time`) or lives in another boot (`boot_id`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildIdentity {
    pub pid: u32,
    pub pgid: u32,
    pub boot_id: String,
    pub start_time: u64,
}

/// What startup recovery did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// An operator asked to cancel them while they ran: `cancelled`.
    pub cancelled: Vec<JobId>,
    /// Requeued to run after `orphan_retry_delay`.
    pub requeued: Vec<JobId>,
    /// No attempts left: `failed` (a job that kills the daemon cannot crash-loop).
    pub failed: Vec<JobId>,
    /// Children recorded by the orphaned runs (to kill and wait for before re-running).
    pub children: Vec<(JobId, ChildIdentity)>,
    /// Orphans whose program was never released (an `exec` run with no child recorded)
    /// and that had had fewer than `max_interruptions`: their attempt was given back,
    /// counted as an interruption. Each is also in `requeued`.
    pub given_back: Vec<JobId>,
}

/// How startup recovery requeues an orphan: when it may run again, and how many
/// interruptions a job may have had for an orphan whose program was never released to
/// get its attempt back (`max_interruptions`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrphanPolicy {
    pub retry_at: WallMs,
    pub max_interruptions: u32,
}

/// The error of an orphaned run whose program was never released (see
/// [`Recovered::given_back`]).
pub const UNRELEASED_ORPHAN: &str =
    "orphaned before its program was released (no child recorded): the attempt is given back";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_parses_back() {
        for s in JobStatus::ALL {
            assert_eq!(JobStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(JobStatus::parse("done"), None);
    }

    #[test]
    fn times_add_durations_and_subtract_to_durations() {
        assert_eq!(MonoMs(100) + 50, MonoMs(150));
        assert_eq!(WallMs(100) - WallMs(40), 60);
    }
}
