//! The invariant checkers: pure functions from a [`History`] to the [`Violation`]s found.
//!
//! Each checker owns one guarantee of README.md ("Guarantees, and their limits") and
//! judges it from the sources that can show it, never from the daemon's own claim that it
//! held:
//!
//! | checker | guarantee | judged from |
//! |---|---|---|
//! | [`single_active`] | one active daemon per database (PostgreSQL: per home) | `daemon.active` epochs; `job_runs.epoch` vs the leader row (worker rows) |
//! | [`lock_holders`] | never two holders of one lock inode | `lock.*` events with `dev`/`ino`, process exits |
//! | [`no_overlap`] | two runs of a job never run at once | the probe's effects log |
//! | [`outcome_latest_claim`] | one recorded outcome, by the current claim | `job_queue` vs `job_runs` |
//! | [`nothing_lost`] | an acknowledged enqueue is never lost | acknowledged ids vs `job_queue` |
//! | [`attempts_bounded`] | attempts never exceed the budget | `job_queue`, `job_runs`, `HOMER_ATTEMPT` in the effects log |
//! | [`integrity`] | the file is a healthy database | `PRAGMA integrity_check` |
//! | [`resources_not_charged`] | the daemon's missing resources are not the job's failure | `job_runs` |
//! | [`completed_ran`] | a job recorded `completed` ran to its end | `job_runs` vs the probe's effects log |
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
pub const COMPLETED_RAN: &str = "completed_ran";

/// Every checker's name, in the order [`check_all`] runs them.
pub const CHECKERS: [&str; 9] = [
    SINGLE_ACTIVE,
    LOCK_HOLDERS,
    NO_OVERLAP,
    OUTCOME_LATEST_CLAIM,
    NOTHING_LOST,
    ATTEMPTS_BOUNDED,
    INTEGRITY,
    RESOURCES_NOT_CHARGED,
    COMPLETED_RAN,
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
    found.extend(completed_ran(h));
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
///
/// On PostgreSQL many daemons are active at once, one per home (the home's flock), each
/// with its own incarnation as its epoch: the rules above hold per *line of succession*,
/// the incarnations of one worker name (`worker.registered`'s `name`, the worker rows'
/// `name`: a home on a host). Different homes' runs interleave freely; an epoch that no
/// worker row has is itself a violation. On SQLite there is one line per database.
pub fn single_active(h: &History) -> Vec<Violation> {
    let mut found = Vec::new();
    // The line of succession each daemon process belongs to: its registered worker name on
    // PostgreSQL, none (the database's one line) on SQLite.
    let lineage_of = |e: &Event| -> &str {
        h.events
            .iter()
            .find(|r| r.name() == "worker.registered" && r.pid == e.pid && r.proc_name == e.proc_name)
            .and_then(|r| r.field_str("name"))
            .unwrap_or("")
    };
    // Epochs are per database (the event names it) and line: a scenario may run daemons on two.
    let mut made_active: BTreeMap<(&str, &str, i64), &Event> = BTreeMap::new();
    let mut highest: HashMap<(&str, &str), (i64, &Event)> = HashMap::new();
    for e in h.events_named("daemon.active") {
        let Some(epoch) = e.field_i64("epoch") else {
            found.push(violation(SINGLE_ACTIVE, format!("daemon.active from {} carries no integer epoch", who(e))));
            continue;
        };
        let database = (e.field_str("database").unwrap_or(""), lineage_of(e));
        if let Some(first) = made_active.get(&(database.0, database.1, epoch)) {
            found.push(violation(
                SINGLE_ACTIVE,
                format!("epoch {epoch} made active twice: by {} and by {}", who(first), who(e)),
            ));
        } else if let Some(&(top, by)) = highest.get(&database).filter(|(top, _)| epoch < *top) {
            found.push(violation(
                SINGLE_ACTIVE,
                format!("{} became active with epoch {epoch} after {} had epoch {top}", who(e), who(by)),
            ));
        }
        made_active.entry((database.0, database.1, epoch)).or_insert(e);
        if highest.get(&database).is_none_or(|(top, _)| epoch > *top) {
            highest.insert(database, (epoch, e));
        }
    }

    if let Some(db) = &h.db {
        let mut runs: Vec<&RunRow> = db.runs.iter().collect();
        runs.sort_by_key(|r| r.id);
        let mut lines: BTreeMap<&str, Vec<&RunRow>> = BTreeMap::new();
        for r in &runs {
            match db.lineage(r.epoch) {
                Some(line) => lines.entry(line).or_default().push(r),
                None => found.push(violation(
                    SINGLE_ACTIVE,
                    format!(
                        "job_runs id {} (job {} run {}) carries epoch {}, which no worker row has",
                        r.id, r.job_id, r.run, r.epoch
                    ),
                )),
            }
        }
        for pair in lines.values().flat_map(|line| line.windows(2)) {
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
/// event if the harness has no record of it) — or, for a process the harness SIGKILLed,
/// when the signal was sent, since the kernel releases the lock as the process dies and
/// another start can report the lock before the harness sees that exit. Two processes whose holds of the same inode
/// overlap is a violation: flock makes that impossible, so it means a daemon announced a
/// lock it did not really hold. Holds of *different* inodes of one path may overlap — an
/// admin removed the file and a new start locked a fresh one — and are the leader row's
/// business, judged by [`single_active`] (which is also where "no start admitted while
/// another daemon is active" is checked: a second `daemon.active` can only come from a
/// new epoch). A lock event without integer `dev` and `ino` is itself a violation: the
/// check cannot be made without them. So is a `daemon.active` from a process that holds no
/// lock at that moment (never acquired, or released or lost since): the lock is what a
/// start must win before it may lead.
pub fn lock_holders(h: &History) -> Vec<Violation> {
    let mut found = Vec::new();
    let mut holds: Vec<Hold> = Vec::new();
    let mut current: HashMap<(String, u32), Hold> = HashMap::new();
    let mut last_event: HashMap<(String, u32), Mark> = HashMap::new();
    for e in h.events_in_order() {
        let holder = (e.proc_name.clone(), e.pid);
        last_event.insert(holder.clone(), Mark::of(e));
        let name = e.name();
        if name == "daemon.active" && !current.contains_key(&holder) {
            found.push(violation(
                LOCK_HOLDERS,
                format!("{} became active without holding its lock (none acquired, or released or lost since)", who(e)),
            ));
        }
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
            // SIGKILLed by the harness: the kernel drops the flock as the process dies,
            // which can be observed (another start's `lock.acquired`) before its exit is.
            Some(p) => match (p.killed, p.exited) {
                (Some(k), Some(x)) => Mark::Exit(k.min(x)),
                (Some(k), None) => Mark::Exit(k),
                (None, x) => x.map_or(Mark::Open, Mark::Exit),
            },
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
///
/// The runs themselves: only a `running` job has a run that has not ended, and only its
/// latest (every way out of `running` ends the run in the same transaction); no two runs
/// ever had the same claim token (a token is what fences a stale run's effects); and a
/// job's status is one of the five.
pub fn outcome_latest_claim(h: &History) -> Vec<Violation> {
    let Some(db) = &h.db else { return Vec::new() };
    let mut found = Vec::new();
    for job in &db.jobs {
        found.extend(job_outcome(db, job).into_iter().map(|message| violation(OUTCOME_LATEST_CLAIM, message)));
    }
    let mut tokens: HashMap<&str, &RunRow> = HashMap::new();
    for r in &db.runs {
        if let Some(first) = tokens.insert(r.claim_token.as_str(), r) {
            found.push(violation(
                OUTCOME_LATEST_CLAIM,
                format!(
                    "claim token {:?} was handed out twice: job {} run {} and job {} run {}",
                    r.claim_token, first.job_id, first.run, r.job_id, r.run
                ),
            ));
        }
    }
    found
}

/// The statuses a job can have (README.md "Jobs").
const STATUSES: [&str; 5] = ["pending", "running", "completed", "failed", "cancelled"];

fn job_outcome(db: &DbState, job: &JobRow) -> Vec<String> {
    let mut found = Vec::new();
    let id = job.id;
    if !STATUSES.contains(&job.status.as_str()) {
        found.push(format!("job {id} has status {:?}, not one of {}", job.status, STATUSES.join(", ")));
    }
    let latest = db.runs_of(id).max_by_key(|r| r.run);
    for open in db.runs_of(id).filter(|r| !r.ended) {
        let latest_of_running = job.status == "running" && latest.is_some_and(|l| l.run == open.run);
        if !latest_of_running {
            found.push(format!(
                "job {id} is {} but its run {} (epoch {}) never ended{}",
                job.status,
                open.run,
                open.epoch,
                if job.status == "running" { ", though a later run began" } else { "" }
            ));
        }
    }
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
/// Not only the counters the daemon keeps: every run's attempt (`job_runs.attempt`) and
/// every run the probe saw start (`HOMER_ATTEMPT`) is within `1..=max_attempts`, and a
/// job's run counter is its latest run's number (a claim writes both), so a re-run cannot
/// hide from the count.
pub fn attempts_bounded(h: &History) -> Vec<Violation> {
    let Some(db) = &h.db else { return Vec::new() };
    let mut found = Vec::new();
    for job in &db.jobs {
        let budget = 1..=job.max_attempts;
        for r in db.runs_of(job.id).filter(|r| !budget.contains(&r.attempt)) {
            found.push(violation(
                ATTEMPTS_BOUNDED,
                format!("job {} run {} was attempt {}, outside 1..={}", job.id, r.run, r.attempt, job.max_attempts),
            ));
        }
        for e in h.effects.iter().filter(|e| e.job_id == job.id && e.kind == EffectKind::Start) {
            if !budget.contains(&e.attempt) {
                found.push(violation(
                    ATTEMPTS_BOUNDED,
                    format!(
                        "job {} run {} started as attempt {} (HOMER_ATTEMPT), outside 1..={}",
                        job.id, e.run, e.attempt, job.max_attempts
                    ),
                ));
            }
        }
        if let Some(latest) = db.runs_of(job.id).map(|r| r.run).max() {
            if latest != job.runs {
                found.push(violation(
                    ATTEMPTS_BOUNDED,
                    format!("job {} counts {} runs, but its latest run is run {latest}", job.id, job.runs),
                ));
            }
        }
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

/// The daemon's trouble is not the job's (failure mode 25): a run the daemon could not start
/// or keep for want of a resource of its own is never charged to the job. Judged from
/// `job_runs`: no run that consumed an attempt (`failed`, `abandoned`) ended with an error
/// naming one of [`resource_errors`]; such a run ends `not_started` (its attempt given
/// back). A job's own failure (a non-zero exit, a timeout) never carries an OS error.
/// Nor is a run charged that never started: an error beginning `not started` (the daemon
/// lost the lease before it could release the held child — a busy or unreachable
/// database) says the job's program never ran, so it cannot be the job's failure.
pub fn resources_not_charged(h: &History) -> Vec<Violation> {
    let Some(db) = &h.db else { return Vec::new() };
    let errors = resource_errors();
    let mut found = Vec::new();
    for r in &db.runs {
        if !matches!(r.outcome.as_deref(), Some("failed" | "abandoned")) {
            continue;
        }
        let Some(error) = &r.error else { continue };
        if error.starts_with("not started") {
            found.push(violation(
                RESOURCES_NOT_CHARGED,
                format!(
                    "job {} run {} (attempt {}) was charged as `{}` though its program never started: {error}",
                    r.job_id,
                    r.run,
                    r.attempt,
                    r.outcome.as_deref().unwrap_or("")
                ),
            ));
        } else if let Some(os) = errors.iter().find(|e| error.contains(e.as_str())) {
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

/// A job recorded `completed` ran to its end: when the probe ran the job (the effects log
/// has records of it), the run that recorded `completed` has the probe's `end` record
/// under that run's claim token. The probe writes `end` just before it exits (with the
/// code its scenario gave it), so a completion without it was recorded for a program that
/// was killed, or never ran, or for another run — whatever the database's own rows say.
/// (A non-zero exit recorded as `completed` is not caught here: its `end` is written too.)
/// Jobs the probe did not run (no records) cannot be judged here.
pub fn completed_ran(h: &History) -> Vec<Violation> {
    let Some(db) = &h.db else { return Vec::new() };
    let mut found = Vec::new();
    for job in db.jobs.iter().filter(|j| j.status == "completed") {
        if !h.effects.iter().any(|e| e.job_id == job.id) {
            continue;
        }
        for r in db.runs_of(job.id).filter(|r| r.outcome.as_deref() == Some("completed")) {
            let ended =
                h.effects.iter().any(|e| e.job_id == job.id && e.kind == EffectKind::End && e.token == r.claim_token);
            if !ended {
                found.push(violation(
                    COMPLETED_RAN,
                    format!(
                        "job {} was completed by run {} (epoch {}), but the probe recorded no end of that run \
                         (claim token {:?})",
                        job.id, r.run, r.epoch, r.claim_token
                    ),
                ));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests;
