//! The invariant checkers: pure functions from a [`History`] to the [`Violation`]s found.
//!
//! Each checker owns one guarantee of DESIGN.md and judges it from the sources that can
//! show it, never from the daemon's own claim that it held:
//!
//! | checker | guarantee | judged from |
//! |---|---|---|
//! | [`single_active`] | one active daemon per database | `daemon.active` epochs; `job_runs.epoch` vs the leader row |
//! | [`lock_holders`] | never two holders of one lock inode | `lock.*` events with `dev`/`ino`, process exits |
//! | [`no_overlap`] | two runs of a job never run at once | the probe's effects log |
//! | [`outcome_latest_claim`] | one recorded outcome, by the current claim | `job_queue` vs `job_runs` |
//! | [`nothing_lost`] | an acknowledged enqueue is never lost | acknowledged ids vs `job_queue` |
//! | [`attempts_bounded`] | attempts never exceed the budget | `job_queue` |
//! | [`integrity`] | the file is a healthy database | `PRAGMA integrity_check` |
//! | [`resources_not_charged`] | the daemon's missing resources are not the job's failure | `job_runs` |
//!
//! Invariants: checkers never mutate or re-read anything (the same history always gives
//! the same verdict), and each reports under its own [`Violation::checker`] name. Checkers
//! that need the database report nothing when [`History::db`] is `None` — except
//! [`nothing_lost`], for which acknowledged jobs without a database are lost jobs.
//!
//! Power loss (a `power_loss` step): what happened before a cut still happened — its
//! events stay in the history, its effects in the effects log — but the database kept only
//! what an fsync covered. The checkers that read the database judge the state after every
//! cut, which must still be consistent; acknowledged ids must still be there. The event-
//! and effects-based ones hold across a cut as they are, with one exception: a run number
//! (`HOMER_RUN`) is assigned by a claim, which is not synced (only acknowledgements are),
//! so a claim lost to the cut hands its run number to the next claim — [`no_overlap`]
//! judges "one run started twice" within a power era. An epoch is never reused: the bump
//! is committed with `synchronous=FULL` before `daemon.active` is printed.
//!
//! Ordering across processes: events are ordered by `seq` (the harness's receive order);
//! an event and a process exit are compared by their receive/observe times (`at`). The
//! harness must observe each exit promptly (a waiter per process), because a lock holder's
//! interval ends at its observed exit.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;

use crate::history::{DbState, Effect, EffectKind, Event, History, JobRow, RunRow};

pub const SINGLE_ACTIVE: &str = "single_active";
pub const LOCK_HOLDERS: &str = "lock_holders";
pub const NO_OVERLAP: &str = "no_overlap";
pub const OUTCOME_LATEST_CLAIM: &str = "outcome_latest_claim";
pub const NOTHING_LOST: &str = "nothing_lost";
pub const ATTEMPTS_BOUNDED: &str = "attempts_bounded";
pub const INTEGRITY: &str = "integrity";
pub const RESOURCES_NOT_CHARGED: &str = "resources_not_charged";

/// Every checker's name, in the order [`check_all`] runs them.
pub const CHECKERS: [&str; 8] = [
    SINGLE_ACTIVE,
    LOCK_HOLDERS,
    NO_OVERLAP,
    OUTCOME_LATEST_CLAIM,
    NOTHING_LOST,
    ATTEMPTS_BOUNDED,
    INTEGRITY,
    RESOURCES_NOT_CHARGED,
];

/// One broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The checker that found it (one of [`CHECKERS`]).
    pub checker: &'static str,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.checker, self.message)
    }
}

fn violation(checker: &'static str, message: String) -> Violation {
    Violation { checker, message }
}

/// What a scenario's `check` step allows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckOptions {
    /// Non-terminal statuses an acknowledged job may still be in (e.g. `pending` when the
    /// scenario ends before the queue drains).
    pub allow_statuses: Vec<String>,
    /// No job at all may be `running` (a recovery ran after the last daemon stopped).
    pub none_running: bool,
}

/// Runs every checker.
pub fn check_all(h: &History, o: &CheckOptions) -> Vec<Violation> {
    let mut found = single_active(h);
    found.extend(lock_holders(h));
    found.extend(no_overlap(h));
    found.extend(outcome_latest_claim(h));
    found.extend(nothing_lost(h, o));
    found.extend(attempts_bounded(h));
    found.extend(integrity(h));
    found.extend(resources_not_charged(h));
    found
}

fn who(e: &Event) -> String {
    format!("{} (pid {}, seq {})", e.proc_name, e.pid, e.seq)
}

/// One active daemon per database.
///
/// A daemon is active from its `daemon.active` event (field `epoch`) until the next epoch
/// bump commits (a later `daemon.active` with a higher epoch) or it exits; since an epoch
/// bump is one serialised transaction, a correct history has each epoch made active once,
/// in increasing order. So: two `daemon.active` with the same epoch, or an epoch lower
/// than one already seen (in `seq` order), is a violation — per database, as named by the
/// event's `database` field. From the database: every commit is epoch-guarded, so
/// `job_runs` rows in id (commit) order never carry a decreasing epoch — a decrease is a
/// superseded epoch committing — and none carries an epoch above the leader row's.
pub fn single_active(h: &History) -> Vec<Violation> {
    let mut found = Vec::new();
    // Epochs are per database (the event names it): a scenario may run daemons on two.
    let mut made_active: BTreeMap<(&str, i64), &Event> = BTreeMap::new();
    let mut highest: HashMap<&str, (i64, &Event)> = HashMap::new();
    for e in h.events_named("daemon.active") {
        let Some(epoch) = e.field_i64("epoch") else {
            found.push(violation(SINGLE_ACTIVE, format!("daemon.active from {} carries no integer epoch", who(e))));
            continue;
        };
        let database = e.field_str("database").unwrap_or("");
        if let Some(first) = made_active.get(&(database, epoch)) {
            found.push(violation(
                SINGLE_ACTIVE,
                format!("epoch {epoch} made active twice: by {} and by {}", who(first), who(e)),
            ));
        } else if let Some(&(top, by)) = highest.get(database).filter(|(top, _)| epoch < *top) {
            found.push(violation(
                SINGLE_ACTIVE,
                format!("{} became active with epoch {epoch} after {} had epoch {top}", who(e), who(by)),
            ));
        }
        made_active.entry((database, epoch)).or_insert(e);
        if highest.get(database).is_none_or(|(top, _)| epoch > *top) {
            highest.insert(database, (epoch, e));
        }
    }

    if let Some(db) = &h.db {
        let mut runs: Vec<&RunRow> = db.runs.iter().collect();
        runs.sort_by_key(|r| r.id);
        for pair in runs.windows(2) {
            let (earlier, later) = (pair[0], pair[1]);
            if later.epoch < earlier.epoch {
                found.push(violation(
                    SINGLE_ACTIVE,
                    format!(
                        "job_runs id {} (job {} run {}) committed with epoch {} after id {} had epoch {}: \
                         a superseded epoch committed",
                        later.id, later.job_id, later.run, later.epoch, earlier.id, earlier.epoch
                    ),
                ));
            }
        }
        for r in runs.iter().filter(|r| r.epoch > db.leader_epoch) {
            found.push(violation(
                SINGLE_ACTIVE,
                format!(
                    "job_runs id {} (job {} run {}) carries epoch {}, above the leader row's epoch {}",
                    r.id, r.job_id, r.run, r.epoch, db.leader_epoch
                ),
            ));
        }
    }
    found
}

/// A point on the scenario's timeline: an event (ordered by `seq` against other events),
/// an observed exit (ordered by `at`), or "still going when the history was taken".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mark {
    Event { seq: u64, at: Duration },
    Exit(Duration),
    Open,
}

impl Mark {
    fn of(e: &Event) -> Mark {
        Mark::Event { seq: e.seq, at: e.at }
    }

    /// `self` is certainly before `other`.
    fn before(self, other: Mark) -> bool {
        match (self, other) {
            (Mark::Open, _) => false,
            (_, Mark::Open) => true,
            (Mark::Event { seq: a, .. }, Mark::Event { seq: b, .. }) => a < b,
            (Mark::Event { at: a, .. } | Mark::Exit(a), Mark::Event { at: b, .. } | Mark::Exit(b)) => a < b,
        }
    }
}

impl fmt::Display for Mark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mark::Event { seq, at } => write!(f, "seq {seq} at {at:?}"),
            Mark::Exit(at) => write!(f, "exit at {at:?}"),
            Mark::Open => f.write_str("the end of the history"),
        }
    }
}

/// One process holding one lock inode from `start` until `end`.
#[derive(Debug)]
struct Hold {
    inode: (u64, u64),
    path: String,
    holder: (String, u32),
    start: Mark,
    end: Mark,
}

/// Never two holders of one lock inode.
///
/// A hold of `(dev, ino)` starts at `lock.acquired` / `lock.reacquired` (fields `dev`,
/// `ino`, `path`) and ends at the holder's next `lock.released`, `lock.lost` or
/// `lock.(re)acquired`, else at its exit (still open if it had not exited; at its last
/// event if the harness has no record of it). Two processes whose holds of the same inode
/// overlap is a violation: flock makes that impossible, so it means a daemon announced a
/// lock it did not really hold. Holds of *different* inodes of one path may overlap — an
/// admin removed the file and a new start locked a fresh one — and are the leader row's
/// business, judged by [`single_active`] (which is also where "no start admitted while
/// another daemon is active" is checked: a second `daemon.active` can only come from a
/// new epoch). A lock event without integer `dev` and `ino` is itself a violation: the
/// check cannot be made without them.
pub fn lock_holders(h: &History) -> Vec<Violation> {
    let mut found = Vec::new();
    let mut holds: Vec<Hold> = Vec::new();
    let mut current: HashMap<(String, u32), Hold> = HashMap::new();
    let mut last_event: HashMap<(String, u32), Mark> = HashMap::new();
    for e in h.events_in_order() {
        let holder = (e.proc_name.clone(), e.pid);
        last_event.insert(holder.clone(), Mark::of(e));
        let name = e.name();
        if !matches!(name, "lock.acquired" | "lock.reacquired" | "lock.released" | "lock.lost") {
            continue;
        }
        if let Some(mut hold) = current.remove(&holder) {
            hold.end = Mark::of(e);
            holds.push(hold);
        }
        if name == "lock.acquired" || name == "lock.reacquired" {
            match (e.field_u64("dev"), e.field_u64("ino")) {
                (Some(dev), Some(ino)) => {
                    let path = e.field_str("path").unwrap_or("?").to_owned();
                    let hold =
                        Hold { inode: (dev, ino), path, holder: holder.clone(), start: Mark::of(e), end: Mark::Open };
                    current.insert(holder, hold);
                }
                _ => found.push(violation(
                    LOCK_HOLDERS,
                    format!("{name} from {} has no integer dev/ino: lock holders cannot be checked", who(e)),
                )),
            }
        }
    }
    for (holder, mut hold) in current {
        let record = h.procs.iter().find(|p| p.name == holder.0 && p.pid == holder.1);
        hold.end = match record {
            Some(p) => p.exited.map_or(Mark::Open, Mark::Exit),
            None => last_event.get(&holder).copied().unwrap_or(hold.start),
        };
        holds.push(hold);
    }

    holds.sort_by_key(|hold| match hold.start {
        Mark::Event { seq, .. } => seq,
        Mark::Exit(_) | Mark::Open => u64::MAX,
    });
    for (i, a) in holds.iter().enumerate() {
        for b in &holds[i + 1..] {
            if a.inode != b.inode || a.holder == b.holder {
                continue;
            }
            if b.start.before(a.end) && a.start.before(b.end) {
                found.push(violation(
                    LOCK_HOLDERS,
                    format!(
                        "two holders of lock inode dev {} ino {} ({}): {} (pid {}) from {} until {}, \
                         and {} (pid {}) from {} until {}",
                        a.inode.0,
                        a.inode.1,
                        b.path,
                        a.holder.0,
                        a.holder.1,
                        a.start,
                        a.end,
                        b.holder.0,
                        b.holder.1,
                        b.start,
                        b.end
                    ),
                ));
            }
        }
    }
    found
}

/// One run of a job as the effects log shows it.
#[derive(Debug)]
struct Span<'a> {
    start: &'a Effect,
    end: Option<&'a Effect>,
}

impl Span<'_> {
    /// `other` started while this run was certainly alive (between its start and end).
    fn contains_start_of(&self, other: &Span<'_>) -> bool {
        let Some(end) = self.end else { return false };
        self.start.mono_ns <= other.start.mono_ns && other.start.mono_ns < end.mono_ns
    }
}

/// Two runs of a job never run at the same time — judged from the probe's effects log,
/// which does not trust the daemon.
///
/// Violations: any `overlap` record (a run found its job's flock held by a live earlier
/// run or its same-group descendant — exact, since the kernel releases a flock only when
/// every holder is dead); a run that started between another run's `start` and `end`
/// (by `mono_ns`, system-wide); and two `start` records with the same `run` number (one
/// run started twice) in one power era — across a power cut a run number comes back when
/// the claim that took it was lost (see the module docs). A run without `end` (killed) is
/// open-ended only until the next
/// run's start and is not flagged on its own: whether it was really dead by then is what
/// the next run's flock, and so its `overlap` record, tells.
pub fn no_overlap(h: &History) -> Vec<Violation> {
    let mut found = Vec::new();
    for e in h.effects.iter().filter(|e| e.kind == EffectKind::Overlap) {
        found.push(violation(
            NO_OVERLAP,
            format!(
                "job {} run {} (attempt {}, pid {}) started while another run of the job was still alive",
                e.job_id, e.run, e.attempt, e.pid
            ),
        ));
    }

    let mut by_job: BTreeMap<i64, Vec<Span<'_>>> = BTreeMap::new();
    for start in h.effects.iter().filter(|e| e.kind == EffectKind::Start) {
        let end = h.effects.iter().find(|e| {
            e.kind == EffectKind::End
                && e.job_id == start.job_id
                && e.run == start.run
                && e.token == start.token
                && e.pid == start.pid
        });
        by_job.entry(start.job_id).or_default().push(Span { start, end });
    }

    for (job_id, spans) in &by_job {
        let mut runs: BTreeMap<(usize, i64), u32> = BTreeMap::new();
        for span in spans {
            *runs.entry((h.power_era(span.start.mono_ns), span.start.run)).or_default() += 1;
        }
        for ((era, run), count) in runs.iter().filter(|(_, count)| **count > 1) {
            let when = if h.power_cuts.is_empty() { String::new() } else { format!(" in power era {era}") };
            found.push(violation(NO_OVERLAP, format!("job {job_id} run {run} started {count} times{when}")));
        }

        let origin = spans.iter().map(|s| s.start.mono_ns).min().unwrap_or(0);
        let ms = |ns: u64| ns.saturating_sub(origin) as f64 / 1e6;
        let mut reported = BTreeSet::new();
        for (i, a) in spans.iter().enumerate() {
            for (j, b) in spans.iter().enumerate() {
                if i == j || !a.contains_start_of(b) || !reported.insert((i.min(j), i.max(j))) {
                    continue;
                }
                let a_end = a.end.map_or(0, |e| e.mono_ns);
                found.push(violation(
                    NO_OVERLAP,
                    format!(
                        "job {job_id}: run {} (pid {}) started at +{:.3} ms while run {} (pid {}) ran \
                         from +{:.3} ms to +{:.3} ms",
                        b.start.run,
                        b.start.pid,
                        ms(b.start.mono_ns),
                        a.start.run,
                        a.start.pid,
                        ms(a.start.mono_ns),
                        ms(a_end)
                    ),
                ));
            }
        }
    }
    found
}

/// One recorded outcome, recorded by the current claim.
///
/// Per job: at most one run with outcome `completed`, and a run is `completed` only if the
/// job is; a `completed` job has its completed run, and that run is the job's latest (a
/// superseded claim must not record the outcome — the claim columns are cleared on
/// completion, so the latest run stands for the last claim). Every terminal job has
/// `locked_by`, `claim_token` and `claim_epoch` NULL ("every terminal transition clears
/// the lock columns"). A `running` job's `claim_token` and `claim_epoch` are its latest
/// run's token and epoch, and that run has not ended.
pub fn outcome_latest_claim(h: &History) -> Vec<Violation> {
    let Some(db) = &h.db else { return Vec::new() };
    let mut found = Vec::new();
    for job in &db.jobs {
        found.extend(job_outcome(db, job).into_iter().map(|message| violation(OUTCOME_LATEST_CLAIM, message)));
    }
    found
}

fn job_outcome(db: &DbState, job: &JobRow) -> Vec<String> {
    let mut found = Vec::new();
    let id = job.id;
    let latest = db.runs_of(id).max_by_key(|r| r.run);
    let completed: Vec<&RunRow> = db.runs_of(id).filter(|r| r.outcome.as_deref() == Some("completed")).collect();
    let run_list = |runs: &[&RunRow]| runs.iter().map(|r| r.run.to_string()).collect::<Vec<_>>().join(", ");

    if completed.len() > 1 {
        found.push(format!(
            "job {id}: runs {} all recorded `completed`: an outcome recorded twice",
            run_list(&completed)
        ));
    }
    if !completed.is_empty() && job.status != "completed" {
        found.push(format!("job {id} is {} but run {} recorded `completed`", job.status, run_list(&completed)));
    }
    if job.status == "completed" {
        match (completed.first(), latest) {
            // A job with no run history at all finished before `job_runs` existed (a database
            // upgraded from before migration 008): nothing to compare it with.
            (None, None) => {}
            (None, Some(_)) => found.push(format!("job {id} is completed but no run recorded `completed`")),
            (Some(done), Some(latest)) if done.run != latest.run => found.push(format!(
                "job {id} was completed by run {} (epoch {}), not by its latest run {} (epoch {}): \
                 a superseded claim recorded the outcome",
                done.run, done.epoch, latest.run, latest.epoch
            )),
            _ => {}
        }
    }
    if job.is_terminal() && (job.locked_by.is_some() || job.claim_token.is_some() || job.claim_epoch.is_some()) {
        found.push(format!(
            "job {id} is {} but keeps its lock columns: locked_by {:?}, claim_token {:?}, claim_epoch {:?}",
            job.status, job.locked_by, job.claim_token, job.claim_epoch
        ));
    }
    if job.status == "running" {
        match latest {
            None => found.push(format!("job {id} is running but has no run")),
            Some(run) => {
                if job.claim_token.as_deref() != Some(run.claim_token.as_str()) || job.claim_epoch != Some(run.epoch) {
                    found.push(format!(
                        "running job {id} holds claim token {:?} epoch {:?}, but its latest run {} has token {:?} \
                         epoch {}",
                        job.claim_token, job.claim_epoch, run.run, run.claim_token, run.epoch
                    ));
                }
                if run.ended {
                    found.push(format!(
                        "job {id} is running but its latest run {} already ended ({})",
                        run.run,
                        run.outcome.as_deref().unwrap_or("no outcome")
                    ));
                }
            }
        }
    }
    found
}

/// Nothing acknowledged is lost: every acknowledged id is in `job_queue`, in a terminal
/// status or one the scenario allows; with `none_running`, no job at all is `running`.
pub fn nothing_lost(h: &History, o: &CheckOptions) -> Vec<Violation> {
    let Some(db) = &h.db else {
        if h.acked.is_empty() {
            return Vec::new();
        }
        return vec![violation(
            NOTHING_LOST,
            format!("{} acknowledged job(s) but no database to find them in", h.acked.len()),
        )];
    };
    let mut found = Vec::new();
    let mut seen = BTreeSet::new();
    // An idempotent enqueue acknowledges the same id again: judge each id once.
    for &id in h.acked.iter().filter(|id| seen.insert(**id)) {
        match db.job(id) {
            None => found.push(violation(NOTHING_LOST, format!("acknowledged job {id} is not in job_queue"))),
            Some(job) if job.is_terminal() || o.allow_statuses.contains(&job.status) => {}
            Some(job) => found.push(violation(
                NOTHING_LOST,
                format!(
                    "acknowledged job {id} is {}, not terminal (allowed here: {})",
                    job.status,
                    if o.allow_statuses.is_empty() { String::from("none") } else { o.allow_statuses.join(", ") }
                ),
            )),
        }
    }
    if o.none_running {
        for job in db.jobs.iter().filter(|j| j.status == "running") {
            found.push(violation(
                NOTHING_LOST,
                format!(
                    "job {} is still running (locked by {}) though no daemon should own it",
                    job.id,
                    job.locked_by.as_deref().unwrap_or("nobody")
                ),
            ));
        }
    }
    found
}

/// Attempts stay within the budget: `0 <= attempts <= max_attempts`, and interruptions are
/// never negative (a graceful release gives an attempt back; it must not give back more).
pub fn attempts_bounded(h: &History) -> Vec<Violation> {
    let Some(db) = &h.db else { return Vec::new() };
    let mut found = Vec::new();
    for job in &db.jobs {
        if job.attempts < 0 || job.attempts > job.max_attempts {
            found.push(violation(
                ATTEMPTS_BOUNDED,
                format!("job {} has attempts {} outside 0..={}", job.id, job.attempts, job.max_attempts),
            ));
        }
        if job.interruptions < 0 {
            found.push(violation(
                ATTEMPTS_BOUNDED,
                format!("job {} has negative interruptions {}", job.id, job.interruptions),
            ));
        }
    }
    found
}

/// The database file is healthy: `PRAGMA integrity_check` says exactly `ok`.
pub fn integrity(h: &History) -> Vec<Violation> {
    match &h.db {
        Some(db) if db.integrity != "ok" => {
            vec![violation(INTEGRITY, format!("PRAGMA integrity_check: {}", db.integrity))]
        }
        _ => Vec::new(),
    }
}

/// The errors a run can end with when the *daemon* lacked something — descriptors, processes,
/// memory, disk, a writable home — as the OS words them (`strerror`, as Rust prints an
/// `io::Error`): EMFILE, ENFILE, EAGAIN, ENOMEM, ENOSPC, EDQUOT, EROFS, EACCES.
fn resource_errors() -> Vec<String> {
    [libc::EMFILE, libc::ENFILE, libc::EAGAIN, libc::ENOMEM, libc::ENOSPC, libc::EDQUOT, libc::EROFS, libc::EACCES]
        .into_iter()
        .map(|code| std::io::Error::from_raw_os_error(code).to_string())
        .collect()
}

/// The daemon's trouble is not the job's (PITFALLS 25): a run the daemon could not start
/// or keep for want of a resource of its own is never charged to the job. Judged from
/// `job_runs`: no run that consumed an attempt (`failed`, `abandoned`) ended with an error
/// naming one of [`resource_errors`]; such a run ends `not_started` (its attempt given
/// back). A job's own failure (a non-zero exit, a timeout) never carries an OS error.
pub fn resources_not_charged(h: &History) -> Vec<Violation> {
    let Some(db) = &h.db else { return Vec::new() };
    let errors = resource_errors();
    let mut found = Vec::new();
    for r in &db.runs {
        if !matches!(r.outcome.as_deref(), Some("failed" | "abandoned")) {
            continue;
        }
        let Some(error) = &r.error else { continue };
        if let Some(os) = errors.iter().find(|e| error.contains(e.as_str())) {
            found.push(violation(
                RESOURCES_NOT_CHARGED,
                format!(
                    "job {} run {} (attempt {}) was charged as `{}` for the daemon's own trouble ({os}): {error}",
                    r.job_id,
                    r.run,
                    r.attempt,
                    r.outcome.as_deref().unwrap_or("")
                ),
            ));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{PowerCut, ProcKind, ProcRecord};
    use serde_json::{json, Value};

    /// Builds histories tick by tick: every event or exit advances the clock by 10 ms and
    /// events get consecutive `seq`s.
    #[derive(Default)]
    struct Hb {
        h: History,
        tick: u64,
    }

    impl Hb {
        fn now(&mut self) -> Duration {
            self.tick += 1;
            Duration::from_millis(self.tick * 10)
        }

        fn daemon(mut self, name: &str, pid: u32) -> Hb {
            let started = self.now();
            self.h.procs.push(ProcRecord {
                name: name.into(),
                pid,
                kind: ProcKind::Daemon,
                started,
                exited: None,
                exit_code: None,
                signal: None,
            });
            self
        }

        fn ev(mut self, name: &str, event: &str, fields: Value) -> Hb {
            let pid = self.h.procs.iter().find(|p| p.name == name).map_or(999, |p| p.pid);
            let mut json = json!({"event": event, "pid": pid});
            if let (Some(obj), Value::Object(extra)) = (json.as_object_mut(), fields) {
                obj.extend(extra);
            }
            let at = self.now();
            let seq = self.h.events.len() as u64;
            self.h.events.push(Event { proc_name: name.into(), pid, seq, at, json });
            self
        }

        fn active(self, name: &str, epoch: i64) -> Hb {
            self.ev(name, "daemon.active", json!({ "epoch": epoch }))
        }

        fn acquired(self, name: &str, ino: u64) -> Hb {
            self.ev(name, "lock.acquired", json!({"dev": 66, "ino": ino, "path": "/h/homer.lock", "epoch": 1}))
        }

        fn exit(mut self, name: &str, signal: Option<i32>) -> Hb {
            let at = self.now();
            if let Some(p) = self.h.procs.iter_mut().find(|p| p.name == name) {
                p.exited = Some(at);
                p.exit_code = if signal.is_none() { Some(0) } else { None };
                p.signal = signal;
            }
            self
        }

        fn effect(mut self, kind: EffectKind, job_id: i64, run: i64, mono_ns: u64) -> Hb {
            let pid = 10_000 + u32::try_from(job_id * 100 + run).unwrap();
            let token = format!("tok{job_id}.{run}");
            self.h.effects.push(Effect { kind, job_id, run, attempt: run, token, pid, mono_ns });
            self
        }

        /// A run of `job_id` that worked from `start` to `end` (ms).
        fn span(self, job_id: i64, run: i64, start: u64, end: Option<u64>) -> Hb {
            let hb = self.effect(EffectKind::Start, job_id, run, start * 1_000_000);
            match end {
                Some(end) => hb.effect(EffectKind::End, job_id, run, end * 1_000_000),
                None => hb,
            }
        }

        fn db(mut self, db: DbState) -> Hb {
            self.h.db = Some(db);
            self
        }

        fn acked(mut self, ids: &[i64]) -> Hb {
            self.h.acked.extend_from_slice(ids);
            self
        }

        fn build(self) -> History {
            self.h
        }
    }

    fn db(jobs: Vec<JobRow>, runs: Vec<RunRow>, leader_epoch: i64) -> DbState {
        DbState { jobs, runs, leader_epoch, integrity: String::from("ok") }
    }

    fn job(id: i64, status: &str) -> JobRow {
        JobRow {
            id,
            status: status.into(),
            attempts: 1,
            max_attempts: 3,
            interruptions: 0,
            locked_by: None,
            claim_token: None,
            claim_epoch: None,
            runs: 1,
        }
    }

    fn running(id: i64, token: &str, epoch: i64) -> JobRow {
        JobRow {
            locked_by: Some(String::from("host:1")),
            claim_token: Some(token.into()),
            claim_epoch: Some(epoch),
            ..job(id, "running")
        }
    }

    /// Run row ids are assigned in the order rows are listed (commit order).
    fn runs(rows: &[(i64, i64, i64, &str, Option<&str>)]) -> Vec<RunRow> {
        rows.iter()
            .enumerate()
            .map(|(i, &(job_id, run, epoch, token, outcome))| RunRow {
                id: i as i64 + 1,
                job_id,
                run,
                attempt: run,
                epoch,
                claim_token: token.into(),
                outcome: outcome.map(String::from),
                ended: outcome.is_some(),
                error: None,
            })
            .collect()
    }

    #[track_caller]
    fn assert_passes(found: Vec<Violation>) {
        assert!(found.is_empty(), "unexpected violations: {found:#?}");
    }

    /// Asserts `found` is non-empty, all from `checker`, and one mentions `needle`.
    #[track_caller]
    fn assert_rejects(found: Vec<Violation>, checker: &str, needle: &str) {
        assert!(!found.is_empty(), "{checker} accepted a bad history");
        assert!(found.iter().all(|v| v.checker == checker), "{found:#?}");
        assert!(found.iter().any(|v| v.message.contains(needle)), "no violation mentions {needle:?}: {found:#?}");
    }

    #[test]
    fn single_active_accepts_a_takeover_with_a_higher_epoch() {
        let h = Hb::default()
            .daemon("a", 100)
            .active("a", 1)
            .exit("a", Some(9))
            .daemon("b", 200)
            .active("b", 2)
            .db(db(vec![], runs(&[(1, 1, 1, "t1", Some("orphaned")), (2, 1, 1, "t2", None), (1, 2, 2, "t3", None)]), 2))
            .build();
        assert_passes(single_active(&h));
    }

    #[test]
    fn single_active_keeps_epochs_per_database() {
        let h = Hb::default()
            .daemon("a", 100)
            .daemon("b", 200)
            .ev("a", "daemon.active", json!({"epoch": 2, "database": "/one/homer.db"}))
            .ev("b", "daemon.active", json!({"epoch": 1, "database": "/two/homer.db"}))
            .build();
        assert_passes(single_active(&h));
        let h = Hb::default()
            .daemon("a", 100)
            .daemon("b", 200)
            .ev("a", "daemon.active", json!({"epoch": 1, "database": "/one/homer.db"}))
            .ev("b", "daemon.active", json!({"epoch": 1, "database": "/one/homer.db"}))
            .build();
        assert_rejects(single_active(&h), SINGLE_ACTIVE, "epoch 1 made active twice");
    }

    #[test]
    fn single_active_rejects_one_epoch_made_active_twice() {
        let h = Hb::default().daemon("a", 100).daemon("b", 200).active("a", 3).active("b", 3).build();
        assert_rejects(single_active(&h), SINGLE_ACTIVE, "epoch 3 made active twice");
    }

    #[test]
    fn single_active_rejects_an_epoch_going_backwards_or_missing() {
        let h = Hb::default().daemon("a", 100).daemon("b", 200).active("a", 5).active("b", 4).build();
        assert_rejects(single_active(&h), SINGLE_ACTIVE, "with epoch 4 after");
        let h = Hb::default().daemon("a", 100).ev("a", "daemon.active", json!({})).build();
        assert_rejects(single_active(&h), SINGLE_ACTIVE, "no integer epoch");
    }

    #[test]
    fn single_active_rejects_a_superseded_epoch_committing() {
        let h = Hb::default().db(db(vec![], runs(&[(1, 1, 2, "t1", None), (2, 1, 1, "t2", None)]), 2)).build();
        assert_rejects(single_active(&h), SINGLE_ACTIVE, "a superseded epoch committed");
        let h = Hb::default().db(db(vec![], runs(&[(1, 1, 3, "t1", None)]), 2)).build();
        assert_rejects(single_active(&h), SINGLE_ACTIVE, "above the leader row's epoch 2");
    }

    #[test]
    fn lock_holders_accepts_release_death_and_a_fresh_inode() {
        // b locks after a released; c after b died by SIGKILL (the kernel released it).
        let h = Hb::default()
            .daemon("a", 100)
            .acquired("a", 7)
            .ev("a", "lock.released", json!({}))
            .daemon("b", 200)
            .acquired("b", 7)
            .exit("b", Some(9))
            .daemon("c", 300)
            .acquired("c", 7)
            .build();
        assert_passes(lock_holders(&h));
        // PITFALLS 7: a (paused) still holds the deleted inode 7 while d locks a new file.
        let h = Hb::default()
            .daemon("a", 100)
            .acquired("a", 7)
            .daemon("d", 400)
            .acquired("d", 8)
            .ev("a", "lock.lost", json!({}))
            .ev("a", "daemon.fenced", json!({}))
            .exit("a", None)
            .build();
        assert_passes(lock_holders(&h));
    }

    #[test]
    fn lock_holders_rejects_a_second_holder_of_a_live_holders_inode() {
        let h = Hb::default().daemon("a", 100).acquired("a", 7).daemon("b", 200).acquired("b", 7).build();
        assert_rejects(lock_holders(&h), LOCK_HOLDERS, "two holders of lock inode dev 66 ino 7");
        // The first holder exits only after the second acquired: still two holders.
        let h =
            Hb::default().daemon("a", 100).acquired("a", 7).daemon("b", 200).acquired("b", 7).exit("a", None).build();
        assert_rejects(lock_holders(&h), LOCK_HOLDERS, "exit at");
    }

    #[test]
    fn lock_holders_rejects_a_clash_on_a_reacquired_inode() {
        let h = Hb::default()
            .daemon("a", 100)
            .acquired("a", 7)
            .ev("a", "lock.lost", json!({}))
            .ev("a", "lock.reacquired", json!({"dev": 66, "ino": 9, "path": "/h/homer.lock"}))
            .daemon("b", 200)
            .acquired("b", 9)
            .ev("b", "lock.released", json!({}))
            .ev("a", "lock.released", json!({}))
            .build();
        assert_rejects(lock_holders(&h), LOCK_HOLDERS, "ino 9");
    }

    #[test]
    fn lock_holders_rejects_lock_events_without_an_inode() {
        let h = Hb::default().daemon("a", 100).ev("a", "lock.acquired", json!({"path": "/h/homer.lock"})).build();
        assert_rejects(lock_holders(&h), LOCK_HOLDERS, "no integer dev/ino");
    }

    #[test]
    fn no_overlap_accepts_serial_runs_and_a_killed_run() {
        let h = Hb::default()
            .span(1, 1, 100, Some(200))
            .span(1, 2, 300, Some(400))
            .span(2, 1, 150, Some(350)) // another job may run beside job 1
            .span(1, 3, 500, None) // killed: no end
            .span(1, 4, 600, Some(700))
            .effect(EffectKind::GrandchildStart, 1, 4, 610_000_000)
            .effect(EffectKind::GrandchildEnd, 1, 4, 650_000_000)
            .build();
        assert_passes(no_overlap(&h));
    }

    #[test]
    fn no_overlap_rejects_an_overlap_record() {
        let h = Hb::default().span(1, 1, 100, None).effect(EffectKind::Overlap, 1, 2, 150_000_000).build();
        assert_rejects(no_overlap(&h), NO_OVERLAP, "job 1 run 2 (attempt 2");
    }

    #[test]
    fn no_overlap_rejects_intersecting_runs() {
        let h = Hb::default().span(1, 1, 100, Some(300)).span(1, 2, 200, Some(400)).build();
        let found = no_overlap(&h);
        assert_eq!(found.len(), 1, "one pair, reported once: {found:#?}");
        assert_rejects(found, NO_OVERLAP, "run 2 (pid 10102) started at +100.000 ms while run 1");
        // A killed run that started inside a finished run's span is an overlap too.
        let h = Hb::default().span(1, 1, 100, Some(300)).span(1, 2, 200, None).build();
        assert_rejects(no_overlap(&h), NO_OVERLAP, "while run 1");
    }

    #[test]
    fn no_overlap_rejects_a_run_started_twice() {
        let h = Hb::default().span(1, 1, 100, Some(200)).effect(EffectKind::Start, 1, 1, 300_000_000).build();
        assert_rejects(no_overlap(&h), NO_OVERLAP, "job 1 run 1 started 2 times");
    }

    fn power_cut(mut hb: Hb, at_ms: u64) -> Hb {
        let at = hb.now();
        hb.h.power_cuts.push(PowerCut { at, mono_ns: at_ms * 1_000_000, last_seq: hb.h.events.len() as u64 });
        hb
    }

    /// A run of `job_id` by a later claim that got the same run number (its own token and
    /// process), from `start` to `end` (ms).
    fn reclaimed(mut hb: Hb, job_id: i64, run: i64, start: u64, end: Option<u64>) -> Hb {
        let pid = 20_000 + u32::try_from(job_id * 100 + run).unwrap();
        let token = format!("tok{job_id}.{run}-again");
        let at = |kind, ms: u64| Effect {
            kind,
            job_id,
            run,
            attempt: run,
            token: token.clone(),
            pid,
            mono_ns: ms * 1_000_000,
        };
        hb.h.effects.push(at(EffectKind::Start, start));
        if let Some(end) = end {
            hb.h.effects.push(at(EffectKind::End, end));
        }
        hb
    }

    #[test]
    fn no_overlap_lets_a_power_cut_hand_a_run_number_back() {
        // Run 2 was claimed and started, the cut killed it and dropped its (unsynced)
        // claim: the next claim is run 2 again.
        let hb = Hb::default().span(1, 1, 100, Some(200)).span(1, 2, 300, None);
        let h = reclaimed(power_cut(hb, 350), 1, 2, 400, Some(500)).build();
        assert_passes(no_overlap(&h));
        // Within one era it is still a run started twice, cuts or not.
        let hb = Hb::default().span(1, 2, 100, None);
        let h = reclaimed(power_cut(hb, 150).span(1, 2, 200, None), 1, 2, 300, Some(400)).build();
        assert_rejects(no_overlap(&h), NO_OVERLAP, "job 1 run 2 started 2 times in power era 1");
        // And a run that starts while another is alive is an overlap across eras too.
        let hb = Hb::default().span(1, 1, 100, Some(500));
        let h = power_cut(hb, 150).span(1, 2, 200, Some(300)).build();
        assert_rejects(no_overlap(&h), NO_OVERLAP, "while run 1");
    }

    fn with_errors(mut runs: Vec<RunRow>, errors: &[Option<&str>]) -> Vec<RunRow> {
        for (r, e) in runs.iter_mut().zip(errors) {
            r.error = e.map(String::from);
        }
        runs
    }

    #[test]
    fn resources_not_charged_accepts_postponed_starts_and_the_jobs_own_failures() {
        let emfile = format!("cannot start [\"x\"]: {}", std::io::Error::from_raw_os_error(libc::EMFILE));
        let rows = runs(&[
            (1, 1, 1, "a", Some("not_started")),
            (1, 2, 1, "b", Some("failed")),
            (1, 3, 1, "c", Some("abandoned")),
            (1, 4, 1, "d", Some("completed")),
        ]);
        let rows = with_errors(
            rows,
            &[Some(&emfile), Some("exited with code 3"), Some("lease lost: the run was stopped"), None],
        );
        assert_passes(resources_not_charged(&Hb::default().db(db(vec![job(1, "completed")], rows, 1)).build()));
    }

    #[test]
    fn resources_not_charged_rejects_a_charged_resource_failure() {
        for (code, outcome) in [(libc::EMFILE, "failed"), (libc::ENOSPC, "abandoned"), (libc::EAGAIN, "failed")] {
            let error = format!("cannot start [\"x\"]: {}", std::io::Error::from_raw_os_error(code));
            let rows = with_errors(runs(&[(1, 1, 1, "a", Some(outcome))]), &[Some(&error)]);
            let h = Hb::default().db(db(vec![job(1, "pending")], rows, 1)).build();
            assert_rejects(resources_not_charged(&h), RESOURCES_NOT_CHARGED, &format!("charged as `{outcome}`"));
        }
    }

    #[test]
    fn outcome_latest_claim_accepts_consistent_rows() {
        let h = Hb::default()
            .db(db(
                vec![job(1, "completed"), running(2, "t2.2", 2), job(3, "failed"), job(4, "pending")],
                runs(&[
                    (1, 1, 1, "t1.1", Some("orphaned")),
                    (2, 1, 1, "t2.1", Some("orphaned")),
                    (3, 1, 1, "t3.1", Some("failed")),
                    (1, 2, 2, "t1.2", Some("completed")),
                    (2, 2, 2, "t2.2", None),
                    (4, 1, 2, "t4.1", Some("released")),
                ]),
                2,
            ))
            .build();
        assert_passes(outcome_latest_claim(&h));
    }

    #[test]
    fn outcome_latest_claim_rejects_two_outcomes_and_a_stale_completion() {
        let two = runs(&[(1, 1, 1, "a", Some("completed")), (1, 2, 2, "b", Some("completed"))]);
        let h = Hb::default().db(db(vec![job(1, "completed")], two, 2)).build();
        assert_rejects(outcome_latest_claim(&h), OUTCOME_LATEST_CLAIM, "an outcome recorded twice");
        let stale = runs(&[(1, 1, 1, "a", Some("completed")), (1, 2, 2, "b", Some("orphaned"))]);
        let h = Hb::default().db(db(vec![job(1, "completed")], stale, 2)).build();
        assert_rejects(outcome_latest_claim(&h), OUTCOME_LATEST_CLAIM, "a superseded claim recorded the outcome");
        let none = runs(&[(1, 1, 1, "a", Some("orphaned"))]);
        let h = Hb::default().db(db(vec![job(1, "completed")], none, 1)).build();
        assert_rejects(outcome_latest_claim(&h), OUTCOME_LATEST_CLAIM, "no run recorded `completed`");
        // Completed before job_runs existed (upgraded database): no history, no verdict.
        let h = Hb::default().db(db(vec![job(1, "completed")], Vec::new(), 1)).build();
        assert!(outcome_latest_claim(&h).is_empty());
        let not_done = runs(&[(1, 1, 1, "a", Some("completed"))]);
        let h = Hb::default().db(db(vec![job(1, "pending")], not_done, 1)).build();
        assert_rejects(outcome_latest_claim(&h), OUTCOME_LATEST_CLAIM, "job 1 is pending but run 1");
    }

    #[test]
    fn outcome_latest_claim_rejects_lock_columns_left_on_a_terminal_job() {
        let h = Hb::default()
            .db(db(
                vec![JobRow { locked_by: Some(String::from("w")), ..job(1, "failed") }],
                runs(&[(1, 1, 1, "a", Some("failed"))]),
                1,
            ))
            .build();
        assert_rejects(outcome_latest_claim(&h), OUTCOME_LATEST_CLAIM, "keeps its lock columns");
    }

    #[test]
    fn outcome_latest_claim_rejects_a_running_job_not_held_by_its_latest_run() {
        let rows = runs(&[(1, 1, 1, "old", Some("orphaned")), (1, 2, 2, "new", None)]);
        let h = Hb::default().db(db(vec![running(1, "old", 1)], rows.clone(), 2)).build();
        assert_rejects(outcome_latest_claim(&h), OUTCOME_LATEST_CLAIM, "holds claim token Some(\"old\")");
        let h = Hb::default().db(db(vec![running(1, "new", 1)], rows, 2)).build();
        assert_rejects(outcome_latest_claim(&h), OUTCOME_LATEST_CLAIM, "epoch Some(1)");
        let ended = runs(&[(1, 1, 1, "a", Some("released"))]);
        let h = Hb::default().db(db(vec![running(1, "a", 1)], ended, 1)).build();
        assert_rejects(outcome_latest_claim(&h), OUTCOME_LATEST_CLAIM, "already ended (released)");
        let h = Hb::default().db(db(vec![running(1, "a", 1)], vec![], 1)).build();
        assert_rejects(outcome_latest_claim(&h), OUTCOME_LATEST_CLAIM, "has no run");
    }

    fn queue(statuses: &[&str]) -> DbState {
        let jobs = statuses.iter().enumerate().map(|(i, s)| job(i as i64 + 1, s)).collect();
        db(jobs, vec![], 1)
    }

    #[test]
    fn nothing_lost_accepts_terminal_and_allowed_jobs() {
        let h =
            Hb::default().db(queue(&["completed", "failed", "cancelled", "pending"])).acked(&[1, 2, 3, 4, 4]).build();
        let allow_pending = CheckOptions { allow_statuses: vec![String::from("pending")], none_running: true };
        assert_passes(nothing_lost(&h, &allow_pending));
        assert_passes(nothing_lost(&Hb::default().build(), &CheckOptions { none_running: true, ..Default::default() }));
    }

    #[test]
    fn nothing_lost_rejects_missing_unfinished_and_running_jobs() {
        let options = CheckOptions { none_running: true, ..Default::default() };
        let h = Hb::default().db(queue(&["completed"])).acked(&[1, 2]).build();
        assert_rejects(nothing_lost(&h, &options), NOTHING_LOST, "acknowledged job 2 is not in job_queue");
        let h = Hb::default().db(queue(&["completed", "pending"])).acked(&[1, 2]).build();
        assert_rejects(nothing_lost(&h, &options), NOTHING_LOST, "acknowledged job 2 is pending");
        // Not acknowledged, but running with no daemon left: a stuck lane.
        let h = Hb::default().db(db(vec![running(1, "t", 1)], vec![], 1)).build();
        assert_rejects(nothing_lost(&h, &options), NOTHING_LOST, "job 1 is still running (locked by host:1)");
        assert_passes(nothing_lost(&h, &CheckOptions::default()));
        let h = Hb::default().acked(&[1]).build();
        assert_rejects(nothing_lost(&h, &options), NOTHING_LOST, "no database");
    }

    #[test]
    fn attempts_bounded_accepts_a_spent_budget_and_rejects_more() {
        let spent = JobRow { attempts: 3, ..job(1, "failed") };
        assert_passes(attempts_bounded(&Hb::default().db(db(vec![spent], vec![], 1)).build()));
        let over = JobRow { attempts: 4, ..job(1, "failed") };
        let h = Hb::default().db(db(vec![over], vec![], 1)).build();
        assert_rejects(attempts_bounded(&h), ATTEMPTS_BOUNDED, "attempts 4 outside 0..=3");
        let negative = JobRow { attempts: -1, interruptions: -1, ..job(1, "pending") };
        let h = Hb::default().db(db(vec![negative], vec![], 1)).build();
        assert_rejects(attempts_bounded(&h), ATTEMPTS_BOUNDED, "negative interruptions");
    }

    #[test]
    fn integrity_accepts_ok_and_rejects_anything_else() {
        assert_passes(integrity(&Hb::default().db(queue(&[])).build()));
        let corrupt = DbState { integrity: String::from("*** in database main ***; Page 3: never used"), ..queue(&[]) };
        assert_rejects(integrity(&Hb::default().db(corrupt).build()), INTEGRITY, "Page 3: never used");
    }

    #[test]
    fn check_all_runs_every_checker() {
        let good = Hb::default()
            .daemon("a", 100)
            .acquired("a", 7)
            .active("a", 1)
            .span(1, 1, 100, Some(200))
            .ev("a", "lock.released", json!({}))
            .exit("a", None)
            .db(db(vec![job(1, "completed")], runs(&[(1, 1, 1, "tok1.1", Some("completed"))]), 1))
            .acked(&[1])
            .build();
        let options = CheckOptions { none_running: true, ..Default::default() };
        assert_passes(check_all(&good, &options));

        let bad = Hb::default()
            .daemon("a", 100)
            .daemon("b", 200)
            .acquired("a", 7)
            .acquired("b", 7)
            .active("a", 1)
            .active("b", 1)
            .span(1, 1, 100, Some(300))
            .span(1, 2, 200, Some(400))
            .db(DbState {
                integrity: String::from("malformed"),
                ..db(
                    vec![JobRow { attempts: 5, ..job(1, "completed") }],
                    with_errors(
                        runs(&[
                            (1, 1, 1, "a", Some("completed")),
                            (1, 2, 1, "b", Some("completed")),
                            (1, 3, 1, "c", Some("failed")),
                        ]),
                        &[
                            None,
                            None,
                            Some(&format!("cannot start: {}", std::io::Error::from_raw_os_error(libc::EMFILE))),
                        ],
                    ),
                    1,
                )
            })
            .acked(&[1, 2])
            .build();
        let found = check_all(&bad, &options);
        let checkers: BTreeSet<&str> = found.iter().map(|v| v.checker).collect();
        assert_eq!(checkers, CHECKERS.into_iter().collect(), "{found:#?}");
        assert!(found[0].to_string().starts_with("single_active: epoch 1 made active twice"), "{}", found[0]);
    }
}
