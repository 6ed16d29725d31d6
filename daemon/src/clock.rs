//! The daemon's only sources of time.
//!
//! Wall-clock time (milliseconds since the Unix epoch) is for what operators read and for
//! `run_after`; it may step (NTP, laptop sleep). The test hook `HOMERD_CLOCK_OFFSET_FILE`
//! names a file holding signed milliseconds that are added to every wall-clock read; the
//! file is re-read each time, so a harness can step a running daemon's clock.
//!
//! Monotonic time is boot-relative and system-wide, so two processes on one boot can
//! compare stamps (the leader row's `seen_mono`): Linux `CLOCK_BOOTTIME` (counts suspend,
//! so a stamp ages across a laptop sleep), macOS `CLOCK_MONOTONIC_RAW`
//! (`mach_continuous_time`: also counts sleep, never steps). Lease deadlines and staleness use it, never the wall clock.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

/// Environment variable naming the wall-clock offset file (a test hook).
pub const OFFSET_FILE_ENV: &str = "HOMERD_CLOCK_OFFSET_FILE";

#[derive(Clone, Debug, Default)]
pub struct Clock {
    offset_file: Option<PathBuf>,
}

impl Clock {
    /// The clock the daemon and the CLI use: honours `HOMERD_CLOCK_OFFSET_FILE`.
    pub fn from_env() -> Clock {
        Clock { offset_file: std::env::var_os(OFFSET_FILE_ENV).map(PathBuf::from) }
    }

    /// Wall-clock milliseconds since the Unix epoch, plus the test offset if any.
    pub fn now_ms(&self) -> i64 {
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

/// Boot-relative monotonic milliseconds (see the module docs for the clock chosen).
pub fn mono_ms() -> i64 {
    #[cfg(target_os = "linux")]
    const CLOCK: libc::clockid_t = libc::CLOCK_BOOTTIME;
    // Darwin: CLOCK_MONOTONIC_RAW is mach_continuous_time — counts sleep, never steps
    // (Darwin's CLOCK_MONOTONIC is derived from the wall clock and boot time).
    #[cfg(not(target_os = "linux"))]
    const CLOCK: libc::clockid_t = libc::CLOCK_MONOTONIC_RAW;
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is supported on the target.
    let rc = unsafe { libc::clock_gettime(CLOCK, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime failed on a clock the platform guarantees");
    #[allow(clippy::unnecessary_cast)] // time_t / c_long are not i64 on every target
    let ms = ts.tv_sec as i64 * 1000 + ts.tv_nsec as i64 / 1_000_000;
    ms
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
        let clock = Clock { offset_file: Some(file.clone()) };
        let before = clock.now_ms();
        std::fs::write(&file, "3600000").unwrap();
        let stepped = clock.now_ms();
        assert!(stepped - before >= 3_600_000, "forward step not seen: {before} -> {stepped}");
        std::fs::write(&file, "-3600000").unwrap();
        let back = clock.now_ms();
        assert!(stepped - back >= 7_000_000, "backward step not seen: {stepped} -> {back}");
        std::fs::write(&file, "not a number").unwrap();
        assert!((clock.now_ms() - before).abs() < 60_000, "garbage must mean no offset");
    }

    #[test]
    fn monotonic_never_goes_back() {
        let a = mono_ms();
        let b = mono_ms();
        assert!(b >= a);
        assert!(a > 0);
    }
}
