//! The leader row: one row naming the process that holds the database's current epoch.
//!
//! A start that won the flock still has to win here, in one `BEGIN IMMEDIATE`
//! transaction committed with `synchronous=FULL`: if the row names another live process
//! (identity-checked: pid + boot id + start time) seen within `stale_threshold`, the
//! start is refused without bumping the epoch — two supervised daemons on different lock
//! paths would otherwise fence each other in a loop. Otherwise the epoch is bumped and
//! our identity written. Every later daemon write checks the epoch is still ours
//! ([`check_epoch`]); zero rows means we were fenced.
//!
//! Staleness uses the boot-relative monotonic stamp when the boot ids match (immune to
//! wall-clock steps), the wall clock otherwise.

use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::identity::{self, Liveness, ProcessIdentity};
use crate::{failpoint, mutant};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderRow {
    pub epoch: i64,
    pub role: Option<String>,
    pub holder: Option<ProcessIdentity>,
    pub lock_path: Option<String>,
    pub lock_dev: Option<i64>,
    pub lock_ino: Option<i64>,
    pub acquired_at: Option<i64>,
    pub seen_at: Option<i64>,
    pub seen_mono: Option<i64>,
    /// The boot (and pid namespace) of the last holder, kept after a release.
    pub boot_id: Option<String>,
    /// The stale threshold the holder runs with.
    pub stale_ms: Option<i64>,
}

/// How the row's holder looks from here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HolderState {
    /// Nobody holds the epoch (never started, or released at a clean shutdown).
    None,
    /// The holder process is alive and was seen within the stale threshold.
    Active { pid: u32, age: Duration },
    /// The holder process is alive but has not been seen for `age` (stalled, paused).
    Stale { pid: u32, age: Duration },
    /// The holder process is gone.
    Dead { pid: u32 },
}

impl LeaderRow {
    /// The holder's own stale threshold, or `fallback` if the row has none.
    pub fn stale_threshold(&self, fallback: Duration) -> Duration {
        self.stale_ms.map(|ms| Duration::from_millis(ms.max(0) as u64)).unwrap_or(fallback)
    }

    /// Judges the holder by its own stale threshold (`fallback` if it recorded none).
    pub fn holder_state(&self, clock: &Clock, fallback: Duration) -> HolderState {
        self.judge(clock, self.stale_threshold(fallback))
    }

    /// Judges the holder against an explicit threshold.
    pub fn judge(&self, clock: &Clock, stale: Duration) -> HolderState {
        let Some(holder) = &self.holder else { return HolderState::None };
        let pid = holder.pid;
        match identity::liveness(holder) {
            Liveness::Dead => HolderState::Dead { pid },
            Liveness::Alive | Liveness::Unknown => {
                let age = self.age(clock);
                if age < stale {
                    HolderState::Active { pid, age }
                } else {
                    HolderState::Stale { pid, age }
                }
            }
        }
    }

    /// Time since the holder was last seen: monotonic on the same boot, wall otherwise.
    /// A stamp from the future (a wall clock stepped back) counts as just seen.
    pub fn age(&self, clock: &Clock) -> Duration {
        let same_boot = self.holder.as_ref().is_some_and(|h| identity::same_boot(&h.boot_id));
        let ms = match (same_boot, self.seen_mono, self.seen_at) {
            (true, Some(mono), _) => clock.mono_ms() - mono,
            (_, _, Some(wall)) => clock.now_ms() - wall,
            _ => i64::MAX,
        };
        Duration::from_millis(ms.max(0) as u64)
    }
}

pub fn read(conn: &Connection) -> rusqlite::Result<LeaderRow> {
    conn.query_row(
        "SELECT epoch, role, pid, host, boot_id, start_time, lock_path, lock_dev, lock_ino,
                acquired_at, seen_at, seen_mono, stale_ms
         FROM leader WHERE id = 1",
        [],
        |r| {
            let pid: Option<i64> = r.get(2)?;
            let holder = match pid {
                Some(pid) => Some(ProcessIdentity {
                    pid: pid as u32,
                    host: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
                    boot_id: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
                    start_time: r.get::<_, Option<i64>>(5)?.unwrap_or(0) as u64,
                }),
                None => None,
            };
            Ok(LeaderRow {
                epoch: r.get(0)?,
                role: r.get(1)?,
                holder,
                lock_path: r.get(6)?,
                lock_dev: r.get(7)?,
                lock_ino: r.get(8)?,
                acquired_at: r.get(9)?,
                seen_at: r.get(10)?,
                seen_mono: r.get(11)?,
                boot_id: r.get(4)?,
                stale_ms: r.get(12)?,
            })
        },
    )
}

/// Who is asking to lead, and through which lock.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub role: &'static str,
    pub identity: ProcessIdentity,
    pub lock_path: String,
    pub lock_dev: u64,
    pub lock_ino: u64,
    /// Our stale threshold, recorded for observers.
    pub stale: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Accepted { epoch: i64 },
    Refused { pid: u32, lock_path: String, role: Option<String> },
}

/// The startup transaction: refuse, or bump the epoch and record us.
pub fn become_leader(conn: &mut Connection, me: &Candidate, stale: Duration, clock: &Clock) -> Result<Outcome> {
    crate::powerloss::phase("leadership");
    let path = conn.path().map(std::path::PathBuf::from).unwrap_or_default();
    let sqlerr = |e| Error::sqlite(&path, e);
    // The epoch bump is an acknowledgement: FULL, whatever the configured durability.
    let previous: String =
        conn.pragma_query_value(None, "synchronous", |r| r.get::<_, i64>(0)).map_err(sqlerr)?.to_string();
    conn.pragma_update(None, "synchronous", "FULL").map_err(sqlerr)?;
    let result = (|| {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sqlerr)?;
        let row = read(&tx).map_err(sqlerr)?;
        // Judge the holder by the longer of its threshold and ours: refusing a little too
        // long is a retry; taking over too early is two daemons.
        let stale = stale.max(row.stale_threshold(Duration::ZERO));
        if let HolderState::Active { pid, .. } = row.judge(clock, stale) {
            let is_me = row.holder.as_ref() == Some(&me.identity);
            if !is_me && !mutant::active(mutant::NO_LEADER_REFUSAL) {
                return Ok(Outcome::Refused { pid, lock_path: row.lock_path.unwrap_or_default(), role: row.role });
            }
        }
        let takeover = matches!(row.judge(clock, stale), HolderState::Stale { .. });
        failpoint::hit("epoch.before_bump").map_err(|e| Error::io("epoch bump", &path, e))?;
        if takeover && super::read::table_exists(&tx, "metrics").map_err(sqlerr)? {
            // A live holder that went quiet is being fenced.
            super::ops::bump_metric(&tx, "takeovers", 1).map_err(sqlerr)?;
        }
        let now = clock.now_ms();
        let epoch: i64 = tx
            .query_row(
                "UPDATE leader SET epoch = epoch + 1, role = ?1, pid = ?2, host = ?3, boot_id = ?4,
                        start_time = ?5, lock_path = ?6, lock_dev = ?7, lock_ino = ?8,
                        acquired_at = ?9, seen_at = ?9, seen_mono = ?10, stale_ms = ?11
                 WHERE id = 1 RETURNING epoch",
                params![
                    me.role,
                    me.identity.pid,
                    me.identity.host,
                    me.identity.boot_id,
                    me.identity.start_time as i64,
                    me.lock_path,
                    me.lock_dev as i64,
                    me.lock_ino as i64,
                    now,
                    clock.mono_ms(),
                    me.stale.as_millis() as i64,
                ],
                |r| r.get(0),
            )
            .map_err(sqlerr)?;
        tx.commit().map_err(sqlerr)?;
        Ok(Outcome::Accepted { epoch })
    })();
    // Restore the configured level; a failure here must not hide the real outcome.
    let restored = conn.pragma_update(None, "synchronous", previous).map_err(sqlerr);
    let outcome = result?;
    restored?;
    Ok(outcome)
}

/// Whether the epoch is still `epoch` (inside a write transaction, this holds until it
/// commits: the write lock keeps anyone else from bumping it).
pub fn check_epoch(tx: &Transaction<'_>, epoch: i64) -> rusqlite::Result<bool> {
    if mutant::active(mutant::NO_EPOCH_GUARD) {
        return Ok(true);
    }
    let current: Option<i64> =
        tx.prepare_cached("SELECT epoch FROM leader WHERE id = 1")?.query_row([], |r| r.get(0)).optional()?;
    Ok(current == Some(epoch))
}

/// Refreshes `seen_at`/`seen_mono`. `false` = the epoch moved: we are fenced.
pub fn heartbeat(tx: &Transaction<'_>, epoch: i64, clock: &Clock) -> rusqlite::Result<bool> {
    crate::powerloss::phase("heartbeat");
    // The mutant drops every way the daemon learns its epoch moved, not just the writer's
    // per-batch check: this refresh and the lock re-acquire record are the other two.
    let guard = if mutant::active(mutant::NO_EPOCH_GUARD) { "?3 = ?3" } else { "epoch = ?3" };
    let n = tx.execute(
        &format!("UPDATE leader SET seen_at = ?1, seen_mono = ?2 WHERE id = 1 AND {guard}"),
        params![clock.now_ms(), clock.mono_ms(), epoch],
    )?;
    Ok(n == 1)
}

/// Records that the lock file was re-acquired in place (new dev/ino).
pub fn update_lock_file(tx: &Transaction<'_>, epoch: i64, dev: u64, ino: u64) -> rusqlite::Result<bool> {
    let guard = if mutant::active(mutant::NO_EPOCH_GUARD) { "?3 = ?3" } else { "epoch = ?3" };
    let n = tx.execute(
        &format!("UPDATE leader SET lock_dev = ?1, lock_ino = ?2 WHERE id = 1 AND {guard}"),
        params![dev as i64, ino as i64, epoch],
    )?;
    Ok(n == 1)
}

/// Clean shutdown: clear the holder so a start through another lock path need not wait
/// for staleness. The epoch itself is kept (epochs only grow).
pub fn release(tx: &Transaction<'_>, epoch: i64, clock: &Clock) -> rusqlite::Result<bool> {
    crate::powerloss::phase("shutdown");
    let n = tx.execute(
        "UPDATE leader SET pid = NULL, start_time = NULL, seen_at = ?1, seen_mono = ?3
         WHERE id = 1 AND epoch = ?2",
        params![clock.now_ms(), epoch, clock.mono_ms()],
    )?;
    Ok(n == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, Connection) {
        crate::sqlite::test_db()
    }

    fn candidate(identity: ProcessIdentity) -> Candidate {
        Candidate {
            role: "daemon",
            identity,
            lock_path: String::from("/x/homer.lock"),
            lock_dev: 1,
            lock_ino: 2,
            stale: Duration::from_secs(60),
        }
    }

    fn someone_else_alive() -> (std::process::Child, ProcessIdentity) {
        let child = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let state = identity::proc_state(child.id()).unwrap().unwrap();
        let id = ProcessIdentity {
            pid: child.id(),
            host: identity::hostname(),
            boot_id: identity::pid_space().to_owned(),
            start_time: state.start_time,
        };
        (child, id)
    }

    #[test]
    fn first_start_bumps_the_epoch_and_records_us() {
        let (_t, mut c) = db();
        let clock = Clock::default();
        let me = identity::current().unwrap();
        let out = become_leader(&mut c, &candidate(me.clone()), Duration::from_secs(60), &clock).unwrap();
        assert_eq!(out, Outcome::Accepted { epoch: 1 });
        let row = read(&c).unwrap();
        assert_eq!(row.holder, Some(me));
        assert_eq!(row.stale_ms, Some(60_000));
        assert_eq!(row.lock_path.as_deref(), Some("/x/homer.lock"));
    }

    #[test]
    fn a_live_fresh_holder_refuses_without_bumping() {
        let (_t, mut c) = db();
        let clock = Clock::default();
        let (mut child, other) = someone_else_alive();
        become_leader(&mut c, &candidate(other.clone()), Duration::from_secs(60), &clock).unwrap();
        let out =
            become_leader(&mut c, &candidate(identity::current().unwrap()), Duration::from_secs(60), &clock).unwrap();
        assert_eq!(
            out,
            Outcome::Refused {
                pid: other.pid,
                lock_path: String::from("/x/homer.lock"),
                role: Some(String::from("daemon"))
            }
        );
        assert_eq!(read(&c).unwrap().epoch, 1, "a refusal must not bump the epoch");
        child.kill().unwrap();
        child.wait().unwrap();
        // Dead now: taken over at once, whatever the heartbeat age.
        let out =
            become_leader(&mut c, &candidate(identity::current().unwrap()), Duration::from_secs(60), &clock).unwrap();
        assert_eq!(out, Outcome::Accepted { epoch: 2 });
    }

    #[test]
    fn a_live_but_stale_holder_is_taken_over() {
        let (_t, mut c) = db();
        let clock = Clock::default();
        let (mut child, other) = someone_else_alive();
        let mut cand = candidate(other);
        cand.stale = Duration::from_millis(1);
        become_leader(&mut c, &cand, Duration::from_millis(1), &clock).unwrap();
        // Seen long ago on this boot's monotonic clock.
        c.execute("UPDATE leader SET seen_mono = seen_mono - 120000, seen_at = seen_at - 120000", []).unwrap();
        let out =
            become_leader(&mut c, &candidate(identity::current().unwrap()), Duration::from_secs(60), &clock).unwrap();
        assert_eq!(out, Outcome::Accepted { epoch: 2 });
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn staleness_uses_the_monotonic_stamp_on_one_boot_not_the_wall_clock() {
        let (_t, mut c) = db();
        let clock = Clock::default();
        become_leader(&mut c, &candidate(identity::current().unwrap()), Duration::from_secs(60), &clock).unwrap();
        // A wall clock stepped an hour: the monotonic stamp says just seen.
        c.execute("UPDATE leader SET seen_at = seen_at - 3600000", []).unwrap();
        let row = read(&c).unwrap();
        assert!(row.age(&clock) < Duration::from_secs(5), "{:?}", row.age(&clock));
        // Another boot: only the wall clock can say.
        c.execute("UPDATE leader SET boot_id = 'earlier-boot'", []).unwrap();
        assert!(read(&c).unwrap().age(&clock) >= Duration::from_secs(3600));
    }

    #[test]
    fn guarded_statements_change_nothing_under_a_stale_epoch() {
        let (_t, mut c) = db();
        let clock = Clock::default();
        become_leader(&mut c, &candidate(identity::current().unwrap()), Duration::from_secs(60), &clock).unwrap();
        let before = read(&c).unwrap();
        let tx = c.transaction().unwrap();
        assert!(!check_epoch(&tx, 0).unwrap());
        assert!(!heartbeat(&tx, 0, &clock).unwrap());
        assert!(!update_lock_file(&tx, 0, 9, 9).unwrap());
        assert!(!release(&tx, 0, &clock).unwrap());
        tx.commit().unwrap();
        assert_eq!(read(&c).unwrap(), before);
        let tx = c.transaction().unwrap();
        assert!(check_epoch(&tx, 1).unwrap());
        assert!(release(&tx, 1, &clock).unwrap());
        tx.commit().unwrap();
        assert_eq!(read(&c).unwrap().holder, None);
    }
}
