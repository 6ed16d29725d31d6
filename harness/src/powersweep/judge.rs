//! The judge: the invariants over the database after a cut point's clean restart.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

/// The invariants over the database after the clean restart.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Judgement {
    /// Ids an enqueue printed before the cut.
    pub acked: Vec<i64>,
    /// Acknowledged ids not in the database.
    pub lost: Vec<i64>,
    /// Acknowledged jobs that did not end `completed` (id, status).
    pub not_completed: Vec<(i64, String)>,
    /// Jobs whose announced completion is gone: not completed, or completed only by a run
    /// of the restart's epoch (the job ran again).
    pub outcomes_lost: Vec<i64>,
    /// Jobs with more than one completed run, or completed with another run last (or, if
    /// acknowledged, with no completed run at all).
    pub double: Vec<i64>,
    /// Jobs whose runs are not numbered 1..n.
    pub run_gaps: Vec<i64>,
    /// `integrity_check`'s answer when not ok, or why the database could not be judged.
    pub integrity: Option<String>,
}

impl Judgement {
    pub fn violations(&self) -> usize {
        self.lost.len()
            + self.not_completed.len()
            + self.outcomes_lost.len()
            + self.double.len()
            + self.run_gaps.len()
            + usize::from(self.integrity.is_some())
    }

    pub(super) fn describe(&self) -> String {
        let mut s = String::new();
        if !self.lost.is_empty() {
            let _ = writeln!(s, "acknowledged jobs lost: {:?}", self.lost);
        }
        if !self.not_completed.is_empty() {
            let _ = writeln!(s, "acknowledged jobs not completed: {:?}", self.not_completed);
        }
        if !self.outcomes_lost.is_empty() {
            let _ = writeln!(
                s,
                "announced completions lost (the job ran again or is not completed): {:?}",
                self.outcomes_lost
            );
        }
        if !self.double.is_empty() {
            let _ = writeln!(s, "jobs with a double or misplaced completed run: {:?}", self.double);
        }
        if !self.run_gaps.is_empty() {
            let _ = writeln!(s, "jobs whose runs are not numbered 1..n: {:?}", self.run_gaps);
        }
        if let Some(i) = &self.integrity {
            let _ = writeln!(s, "integrity: {i}");
        }
        s
    }
}

/// What was acknowledged before the cut.
#[derive(Clone, Debug, Default)]
pub struct Acknowledged {
    /// Ids an enqueue printed.
    pub ids: Vec<i64>,
    /// Jobs a workload daemon announced completed (`job.completed`).
    pub completions: Vec<i64>,
    /// The clean restart's epoch: a run of this epoch or later ran after the power cut.
    pub restart_epoch: i64,
}

/// Judges the database at `db` (read-only) against what was acknowledged.
pub fn judge(db: &Path, ack: &Acknowledged) -> Judgement {
    let mut j = Judgement { acked: ack.ids.clone(), ..Judgement::default() };
    if let Err(e) = judge_into(db, ack, &mut j) {
        j.integrity = Some(e);
    }
    j
}

fn judge_into(db: &Path, ack: &Acknowledged, j: &mut Judgement) -> Result<(), String> {
    let err = |e: rusqlite::Error| format!("{}: {e}", db.display());
    let conn = rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err)?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(err)?;
    let integrity: Vec<String> = conn
        .prepare("PRAGMA integrity_check")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(err)?;
    if integrity != ["ok"] {
        j.integrity = Some(integrity.join("; "));
    }
    let status: HashMap<i64, String> = conn
        .prepare("SELECT id, status FROM job_queue")
        .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .map_err(err)?;
    let mut runs: BTreeMap<i64, Vec<(i64, Option<String>)>> = BTreeMap::new();
    let mut completed_epoch: HashMap<i64, i64> = HashMap::new();
    let rows: Vec<(i64, i64, Option<String>, i64)> = conn
        .prepare("SELECT job_id, run, outcome, epoch FROM job_runs ORDER BY job_id, run")
        .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?.collect())
        .map_err(err)?;
    for (job, run, outcome, epoch) in rows {
        if outcome.as_deref() == Some("completed") {
            completed_epoch.insert(job, epoch);
        }
        runs.entry(job).or_default().push((run, outcome));
    }
    for &id in &ack.completions {
        let done = status.get(&id).is_some_and(|s| s == "completed");
        if !done || completed_epoch.get(&id).is_none_or(|&e| e >= ack.restart_epoch) {
            j.outcomes_lost.push(id);
        }
    }
    let acked: BTreeSet<i64> = ack.ids.iter().copied().collect();
    for &id in &acked {
        match status.get(&id) {
            None => j.lost.push(id),
            Some(s) if s != "completed" => j.not_completed.push((id, s.clone())),
            Some(_) => {}
        }
    }
    let mut ids: Vec<i64> = status.keys().copied().collect();
    ids.sort_unstable();
    for id in ids {
        let list = runs.get(&id).map(Vec::as_slice).unwrap_or_default();
        let completed = list.iter().filter(|(_, o)| o.as_deref() == Some("completed")).count();
        let last_completed = list.last().is_some_and(|(_, o)| o.as_deref() == Some("completed"));
        let is_completed = status[&id] == "completed";
        let misplaced = is_completed && !list.is_empty() && !last_completed;
        let missing = is_completed && acked.contains(&id) && completed == 0;
        if completed > 1 || misplaced || missing {
            j.double.push(id);
        }
        if list.iter().enumerate().any(|(i, (run, _))| *run != i as i64 + 1) {
            j.run_gaps.push(id);
        }
    }
    for job in runs.keys().filter(|k| !status.contains_key(k)) {
        j.run_gaps.push(*job); // runs of a job that does not exist
    }
    Ok(())
}
