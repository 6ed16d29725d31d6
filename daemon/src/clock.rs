//! The daemon's only sources of time.
//!
//! Wall-clock time (milliseconds since the Unix epoch) is for what operators read and for
//! `run_after`; it may step (NTP, laptop sleep, an admin's `date -s`). The test hook
//! `HOMERD_CLOCK_OFFSET_FILE` names a file holding signed milliseconds that are added to
//! every wall-clock read; the file is re-read each time, so a harness can step a running
//! daemon's clock.
//!
//! **Time never goes backwards for scheduling.** [`Clock::now_ms`] is an *effective*
//! clock: `max(wall, last + monotonic time elapsed since last)`, where `last` is the
//! previous reading — of this process, or persisted in the database by the daemon (the
//! leader row's `seen_at`/`seen_mono`, read through [`Clock::anchor`]). A backward step
//! therefore neither delays a job that is ready nor sorts a new job before older ones: the
//! effective clock keeps counting real time and runs ahead of the wall clock by the step
//! (until the wall clock catches up). A forward step is followed — timestamps stay right
//! after NTP corrects a slow clock — and reported once ([`Clock::take_forward_steps`]):
//! the daemon then moves every job still waiting for its `run_after` forward by the step,
//! so a job due "in 2 minutes" still starts 2 minutes after it was scheduled — once: the
//! same commit records its reading past the step in the leader row, which the next
//! daemon anchors on.
//!
//! Monotonic time is boot-relative and system-wide, so two processes on one boot can
//! compare stamps (the leader row's `seen_mono`): Linux `CLOCK_BOOTTIME` (counts suspend,
//! so a stamp ages across a laptop sleep), macOS `CLOCK_MONOTONIC_RAW`
//! (`mach_continuous_time`: also counts sleep, never steps). Lease deadlines and staleness use it, never the wall clock.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::job::{MonoMs, WallMs};

/// Environment variable naming the wall-clock offset file (a test hook).
pub const OFFSET_FILE_ENV: &str = "HOMERD_CLOCK_OFFSET_FILE";

/// A wall-clock jump larger than this between two readings (beyond the monotonic time
/// that passed) is a step, not drift or slew.
pub const STEP_MS: i64 = 1_000;

/// A forward step of the wall clock: at effective time `from` the wall clock jumped
/// `by` milliseconds ahead of the time that had really passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForwardStep {
    pub from: i64,
    pub by: i64,
}

#[derive(Debug, Default)]
struct Effective {
    /// The last reading: effective time, monotonic time, wall time.
    last: Option<(i64, i64, i64)>,
    /// Forward steps not yet taken by the daemon.
    steps: Vec<ForwardStep>,
    /// Backward steps (their size), not yet taken.
    backward: Vec<i64>,
}

#[derive(Clone, Debug, Default)]
pub struct Clock {
    offset_file: Option<PathBuf>,
    state: Arc<Mutex<Effective>>,
}

impl Clock {
    /// The clock the daemon and the CLI use: honours `HOMERD_CLOCK_OFFSET_FILE`.
    pub fn from_env() -> Clock {
        Clock { offset_file: std::env::var_os(OFFSET_FILE_ENV).map(PathBuf::from), state: Arc::default() }
    }

    /// [`Clock::now_ms`] as the job vocabulary's wall-clock time.
    pub fn now(&self) -> WallMs {
        WallMs(self.now_ms())
    }

    /// The effective time in milliseconds since the Unix epoch (see the module docs):
    /// never earlier than a previous reading plus the monotonic time since. Everything
    /// homerd writes into the database and schedules by comes from here.
    pub fn now_ms(&self) -> i64 {
        let wall = self.wall_ms();
        if crate::mutant::active(crate::mutant::WALL_CLOCK_SCHEDULING) {
            return wall;
        }
        let mono = mono_ms();
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = match st.last {
            None => wall,
            Some((last, at_mono, at_wall)) => {
                let elapsed = (mono - at_mono).max(0);
                let carried = last.saturating_add(elapsed);
                if wall - carried > STEP_MS {
                    st.steps.push(ForwardStep { from: carried, by: wall - carried });
                }
                let fell = at_wall.saturating_add(elapsed) - wall;
                if fell > STEP_MS {
                    st.backward.push(fell);
                }
                wall.max(carried)
            }
        };
        st.last = Some((now, mono, wall));
        now
    }

    /// Raises the floor from a reading persisted by another process (the daemon's leader
    /// row): `at` is its effective time, `mono` its monotonic stamp when it was taken on
    /// this boot (`None`: another boot, or unknown; then only `at` itself is a floor). A
    /// wall clock found more than [`STEP_MS`] ahead of where that reading has carried to
    /// since is a forward step taken while nobody was reading (see [`Clock::take_forward_steps`]).
    pub fn anchor(&self, at: i64, mono: Option<i64>) {
        if crate::mutant::active(crate::mutant::WALL_CLOCK_SCHEDULING) {
            return;
        }
        let now_mono = mono_ms();
        let carried = match mono {
            Some(m) => at.saturating_add((now_mono - m).max(0)),
            None => at,
        };
        let wall = self.wall_ms();
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if mono.is_some() && wall - carried > STEP_MS {
            st.steps.push(ForwardStep { from: carried, by: wall - carried });
        }
        let floor = match st.last {
            Some((last, at_mono, _)) => last.saturating_add((now_mono - at_mono).max(0)).max(carried),
            None => carried,
        };
        st.last = Some((floor.max(wall), now_mono, wall));
    }

    /// The forward steps seen since the last call, oldest first.
    pub fn take_forward_steps(&self) -> Vec<ForwardStep> {
        std::mem::take(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner).steps)
    }

    /// The backward steps (their size in ms) seen since the last call.
    pub fn take_backward_steps(&self) -> Vec<i64> {
        std::mem::take(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner).backward)
    }

    /// The wall clock as it is (plus the test offset): for log lines, which must match
    /// other logs on the machine, never for anything scheduled or stored.
    pub fn wall_ms(&self) -> i64 {
        let base = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
        base.saturating_add(self.offset_ms())
    }

    fn offset_ms(&self) -> i64 {
        let Some(path) = &self.offset_file else { return 0 };
        // A missing or unreadable file means "no offset": the hook is for tests, and a
        // daemon must not stop because a test removed it.
        std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse::<i64>().ok()).unwrap_or(0)
    }

    /// Boot-relative monotonic milliseconds, comparable across processes on one boot.
    pub fn mono_ms(&self) -> i64 {
        mono_ms()
    }
}

/// [`mono_ms`] as the job vocabulary's monotonic time.
pub fn mono() -> MonoMs {
    MonoMs(mono_ms())
}

/// Boot-relative monotonic milliseconds (see the module docs for the clock chosen).
pub fn mono_ms() -> i64 {
    crate::platform::boot_clock_ms()
}

/// Formats wall-clock milliseconds as RFC 3339 UTC (`2026-11-26T14:40:59.123Z`).
pub fn format_rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z", rem / 3600, (rem % 3600) / 60, rem % 60)
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_rfc3339(1_769_860_001_234), "2026-01-31T11:46:41.234Z");
        assert_eq!(format_rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn offset_file_is_reread_on_every_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("offset");
        let clock = Clock { offset_file: Some(file.clone()), ..Clock::default() };
        let before = clock.wall_ms();
        std::fs::write(&file, "3600000").unwrap();
        let stepped = clock.wall_ms();
        assert!(stepped - before >= 3_600_000, "forward step not seen: {before} -> {stepped}");
        std::fs::write(&file, "-3600000").unwrap();
        let back = clock.wall_ms();
        assert!(stepped - back >= 7_000_000, "backward step not seen: {stepped} -> {back}");
        std::fs::write(&file, "not a number").unwrap();
        assert!((clock.wall_ms() - before).abs() < 60_000, "garbage must mean no offset");
    }

    #[test]
    fn the_effective_clock_never_goes_back_and_reports_each_step_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("offset");
        let clock = Clock { offset_file: Some(file.clone()), ..Clock::default() };
        let day = 86_400_000;
        let t0 = clock.now_ms();
        std::fs::write(&file, format!("{}", -day)).unwrap();
        let t1 = clock.now_ms();
        assert!(t1 >= t0 && t1 - t0 < 60_000, "a backward step is not followed: {t0} -> {t1}");
        assert!(clock.wall_ms() < t1 - day + 60_000);
        let back = clock.take_backward_steps();
        assert!(back.len() == 1 && (back[0] - day).abs() < 60_000, "{back:?}");
        let t2 = clock.now_ms();
        assert!(t2 >= t1, "keeps counting from where it was");
        assert!(clock.take_backward_steps().is_empty(), "reported once");
        assert!(clock.take_forward_steps().is_empty());
        // Two days forward from there: the effective clock jumps one day (the wall clock
        // was a day behind it), and that is the step reported.
        std::fs::write(&file, format!("{}", day)).unwrap();
        let t3 = clock.now_ms();
        let steps = clock.take_forward_steps();
        assert_eq!(steps.len(), 1, "{steps:?}");
        assert!((steps[0].by - day).abs() < 60_000 && steps[0].from >= t2 && steps[0].from <= t3, "{steps:?}");
        assert!((t3 - t2 - day).abs() < 60_000, "followed forward: {t2} -> {t3}");
        assert!(clock.take_forward_steps().is_empty(), "reported once");
    }

    #[test]
    fn an_anchor_is_a_floor_and_carries_real_time() {
        let clock = Clock::default();
        let wall = clock.wall_ms();
        let mono = mono_ms();
        // Another process on this boot read 1 h ahead of our wall clock, 10 s ago.
        clock.anchor(wall + 3_600_000, Some(mono - 10_000));
        let now = clock.now_ms();
        assert!((now - (wall + 3_610_000)).abs() < 5_000, "{now} vs {}", wall + 3_610_000);
        assert!(clock.take_forward_steps().is_empty());
        // A reading from another boot is only a floor, and a stale one changes nothing.
        let other = Clock::default();
        other.anchor(wall - 3_600_000, None);
        assert!((other.now_ms() - wall).abs() < 5_000);
        // A wall clock far ahead of a same-boot reading is a forward step taken meanwhile.
        let stepped = Clock::default();
        stepped.anchor(wall - 86_400_000, Some(mono));
        let steps = stepped.take_forward_steps();
        assert_eq!(steps.len(), 1);
        assert!((steps[0].by - 86_400_000).abs() < 5_000, "{steps:?}");
    }

    #[test]
    fn monotonic_never_goes_back() {
        let a = mono_ms();
        let b = mono_ms();
        assert!(b >= a);
        assert!(a > 0);
    }
}
