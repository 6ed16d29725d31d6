//! The one duration grammar. Every duration homerd or the harness reads — the
//! configuration file, `HOMER_<KEY>` variables, `--set`, `enqueue --timeout`/`--run-after`,
//! `sleep` job arguments, `enqueue --from` lines, scenario files — goes through
//! [`parse_duration`], and every duration either prints goes through [`format_duration`],
//! so what one prints the others read.
//!
//! The grammar is humantime's: one or more `<number><unit>` items, run together or
//! separated by spaces (`250ms`, `90s`, `1h30m`, `1h 30m`, `2d 3h`), a fraction on any
//! item (`1.5s`), and a bare `0`. Units: `ms`, `s`, `m`, `h`, `d`, `w`, their long forms
//! (`sec`, `min`, `hours`, `days`, ...), and humantime's `M` (month, 30.44 days) and `y`
//! (year, 365.25 days); `ns` and `us` too, as long as the total stays whole. homerd adds
//! two rules: a duration is a whole number of milliseconds (every time it stores is one),
//! and at most [`MAX_DURATION`].
//!
//! `enqueue --run-after` (and `run_after` in `--from` files) also takes an absolute RFC
//! 3339 time with a `Z` or numeric offset ([`parse_run_after`]); see [`RunAfter::resolve`]
//! for what a time in the past or too far ahead means.

use std::time::Duration;

use crate::job::WallMs;

/// The longest duration any input may give: 36500 days (100 years). Every time homerd
/// computes is a wall or monotonic millisecond count (about 1.8e12 today) plus at most a
/// few such durations, far inside `i64` — so no sum of times can wrap, whichever input
/// path (CLI, `--from`, configuration file, environment, `--set`, scenario file) the
/// value came from. An absolute `--run-after` time is held to the same bound from now.
pub const MAX_DURATION: Duration = Duration::from_secs(36_500 * 86_400);

const EXAMPLES: &str = "250ms, 90s, 1h30m, 2d 3h or 0";

/// Parses a duration in the one grammar (see the module docs): whole milliseconds, at
/// most [`MAX_DURATION`]. The error names the value and gives examples; callers prefix
/// the key, flag or file it came from.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err(format!("expected a duration like {EXAMPLES}, got an empty value"));
    }
    let too_long = || format!("duration `{s}` is too long: at most 36500d (100 years)");
    let d = match humantime::parse_duration(s) {
        Ok(d) => d,
        // humantime reports a fraction finer than a nanosecond as an overflow too.
        Err(humantime::DurationError::NumberOverflow) if s.contains('.') => {
            return Err(format!(
                "duration `{s}` cannot be represented: durations are whole milliseconds, at most 36500d (100 years)"
            ))
        }
        Err(humantime::DurationError::NumberOverflow) => return Err(too_long()),
        Err(e) => return Err(format!("expected a duration like {EXAMPLES}, got `{s}` ({e})")),
    };
    if d > MAX_DURATION {
        return Err(too_long());
    }
    if d.subsec_nanos() % 1_000_000 != 0 {
        return Err(format!(
            "duration `{s}` is finer than a millisecond; durations are whole milliseconds (e.g. 1500ms or 1.5s)"
        ));
    }
    Ok(d)
}

/// Formats a duration the way [`parse_duration`] reads it, largest unit first, with no
/// spaces so it stays one word on a command line: `0`, `250ms`, `90s` → `1m30s`,
/// `1h30m`, `2d3h`, `1s500ms`. Days are the largest unit (months and years are not
/// whole days). Anything under a millisecond is dropped.
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return String::from("0");
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

/// When an enqueued job becomes due: a delay from the moment it is enqueued, or an
/// absolute time (Unix milliseconds, from an RFC 3339 timestamp).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunAfter {
    Delay(Duration),
    At(i64),
}

impl Default for RunAfter {
    fn default() -> RunAfter {
        RunAfter::Delay(Duration::ZERO)
    }
}

/// Parses a `--run-after` value: a duration in the one grammar (`90s`, `1h30m`), or an
/// RFC 3339 time with `Z` or an offset (`2026-12-05T10:00:00Z`,
/// `2026-12-05T11:00:00+01:00`; fractions of a second below a millisecond are dropped).
pub fn parse_run_after(s: &str) -> Result<RunAfter, String> {
    let s = s.trim();
    let looks_like_time = s.len() > 10 && s.as_bytes()[..4].iter().all(u8::is_ascii_digit) && s.as_bytes()[4] == b'-';
    if !looks_like_time {
        return parse_duration(s).map(RunAfter::Delay).map_err(|e| {
            format!("{e}; or give an RFC 3339 time like 2026-12-05T10:00:00Z or 2026-12-05T11:00:00+01:00")
        });
    }
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).map_err(|e| {
        format!(
            "expected an RFC 3339 time like 2026-12-05T10:00:00Z or 2026-12-05T11:00:00+01:00 (a `Z` or an offset is required), got `{s}` ({e})"
        )
    })?;
    let ms = t.unix_timestamp_nanos().div_euclid(1_000_000);
    // Years 1..9999 (RFC 3339's range) are always within i64 milliseconds.
    Ok(RunAfter::At(i64::try_from(ms).map_err(|_| format!("the time `{s}` is out of range"))?))
}

/// An absolute time (Unix milliseconds) in RFC 3339, UTC, for messages.
pub fn format_time(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000);
    t.ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("{ms} ms after the epoch"))
}

impl RunAfter {
    /// Places the job in time at `now` (homerd's effective clock, see `clock.rs`): returns
    /// its `run_after` and the `run_after_set_at` to store with it.
    ///
    /// - A delay is due at `now + delay`, set at `now`: a later forward step of the wall
    ///   clock moves it with the step, so a delay keeps its length.
    /// - A time in the past (or now) is due at once: it is stored as `now`, so it queues
    ///   behind jobs that were ready before it instead of jumping ahead of them.
    /// - A future time is due at that time and recorded as set *at* that time, so no
    ///   forward step while it waits moves it (`jobs::shift_scheduled` moves only times
    ///   set before the step): 10:00 UTC stays 10:00 UTC when NTP corrects a slow clock.
    /// - A time more than [`MAX_DURATION`] ahead is refused, like such a delay.
    pub fn resolve(&self, now: WallMs) -> Result<(WallMs, WallMs), String> {
        match *self {
            RunAfter::Delay(d) => {
                // Bounded by MAX_DURATION, so this cannot overflow; checked anyway.
                let at = now.0.checked_add(d.as_millis() as i64).ok_or("the time it names is out of range")?;
                Ok((WallMs(at), now))
            }
            RunAfter::At(t) if t <= now.0 => Ok((now, now)),
            RunAfter::At(t) => {
                if (t - now.0) as u128 > MAX_DURATION.as_millis() {
                    return Err(format!("{} is more than 36500d (100 years) from now", format_time(t)));
                }
                Ok((WallMs(t), WallMs(t)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn single_and_compound_durations() {
        for (text, want) in [
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("250ms", ms(250)),
            ("10s", ms(10_000)),
            ("5m", ms(300_000)),
            ("1h", ms(3_600_000)),
            ("7d", ms(7 * 86_400_000)),
            ("2w", ms(14 * 86_400_000)),
            ("1h30m", ms(5_400_000)),
            ("1h 30m", ms(5_400_000)),
            ("2d 3h", ms(51 * 3_600_000)),
            ("1m30s500ms", ms(90_500)),
            ("1.5s", ms(1500)),
            ("0.25s", ms(250)),
            ("2000us", ms(2)),
            ("  90s ", ms(90_000)),
            ("5 s", ms(5000)),
            ("3 hours 2 minutes", ms(3 * 3_600_000 + 120_000)),
        ] {
            assert_eq!(parse_duration(text), Ok(want), "{text:?}");
        }
    }

    #[test]
    fn bad_durations_name_the_value_and_give_examples() {
        for bad in ["", "   ", "10", "ten s", "3x", "-1s", "+1s", "1h-30m", "1,5s", "s", "1h30"] {
            let e = parse_duration(bad).expect_err(bad);
            assert!(e.contains("like 250ms, 90s, 1h30m"), "{bad:?}: {e}");
            assert!(bad.trim().is_empty() || e.contains(&format!("`{}`", bad.trim())), "{bad:?}: {e}");
        }
        for fine in ["1ns", "1500us", "1.0005s", "0.1ms"] {
            let e = parse_duration(fine).expect_err(fine);
            assert!(e.contains("whole milliseconds") && e.contains(fine), "{fine:?}: {e}");
        }
    }

    #[test]
    fn the_cap_is_100_years_from_every_spelling() {
        assert_eq!(parse_duration("36500d"), Ok(MAX_DURATION));
        assert_eq!(parse_duration("36499d 24h"), Ok(MAX_DURATION));
        // The range that once wrapped an i64 of milliseconds added to the clock, and
        // numbers humantime itself cannot hold, are refused with the bound named.
        for too_long in
            ["36500d 1ms", "36501d", "876001h", "100y", "106751980000d", "9999999999999d", "99999999999999999999d"]
        {
            let e = parse_duration(too_long).expect_err(too_long);
            assert!(e.contains("at most 36500d") && e.contains(too_long), "{too_long}: {e}");
        }
    }

    #[test]
    fn format_reads_back() {
        for (d, text) in [
            (Duration::ZERO, "0"),
            (ms(250), "250ms"),
            (ms(1500), "1s500ms"),
            (ms(90_000), "1m30s"),
            (ms(5_400_000), "1h30m"),
            (ms(51 * 3_600_000), "2d3h"),
            (ms(7 * 86_400_000), "7d"),
            (MAX_DURATION, "36500d"),
            (Duration::from_nanos(1_999_999), "1ms"),
        ] {
            assert_eq!(format_duration(d), text);
            assert_eq!(parse_duration(text), Ok(Duration::from_millis(d.as_millis() as u64)), "{text}");
        }
        for n in [1u64, 999, 1000, 59_999, 60_001, 3_599_999, 86_399_999, 86_400_001, 123_456_789_012] {
            assert_eq!(parse_duration(&format_duration(ms(n))), Ok(ms(n)), "{n}");
        }
    }

    #[test]
    fn run_after_is_a_delay_or_an_rfc3339_time() {
        assert_eq!(parse_run_after("1h30m"), Ok(RunAfter::Delay(ms(5_400_000))));
        // 2026-12-05T10:00:00Z is 1796464800 s after the epoch.
        let at = RunAfter::At(1_796_464_800_000);
        assert_eq!(parse_run_after("2026-12-05T10:00:00Z"), Ok(at));
        assert_eq!(parse_run_after("2026-12-05T11:00:00+01:00"), Ok(at));
        assert_eq!(parse_run_after("2026-12-05T05:30:00-04:30"), Ok(at));
        assert_eq!(parse_run_after("2026-12-05T10:00:00.250999Z"), Ok(RunAfter::At(1_796_464_800_250)));
        for bad in ["2026-12-05T10:00:00", "2026-12-05", "2026-13-05T10:00:00Z", "2026-12-05T25:00:00Z"] {
            let e = parse_run_after(bad).expect_err(bad);
            assert!(e.contains("RFC 3339") && e.contains(bad), "{bad}: {e}");
        }
        let e = parse_run_after("soon").unwrap_err();
        assert!(e.contains("`soon`") && e.contains("1h30m") && e.contains("2026-12-05T10:00:00Z"), "{e}");
        assert!(parse_run_after("106751980000d").unwrap_err().contains("at most 36500d"));
    }

    #[test]
    fn resolving_run_after() {
        let now = WallMs(1_796_464_800_000);
        assert_eq!(RunAfter::Delay(ms(90_000)).resolve(now), Ok((WallMs(now.0 + 90_000), now)));
        assert_eq!(RunAfter::default().resolve(now), Ok((now, now)));
        // A past time is due at once and does not jump the queue; now is the same.
        assert_eq!(RunAfter::At(now.0 - 86_400_000).resolve(now), Ok((now, now)));
        assert_eq!(RunAfter::At(0).resolve(now), Ok((now, now)));
        assert_eq!(RunAfter::At(now.0).resolve(now), Ok((now, now)));
        // A future time is set at itself, so forward clock steps leave it where it is.
        let later = WallMs(now.0 + 3_600_000);
        assert_eq!(RunAfter::At(later.0).resolve(now), Ok((later, later)));
        let edge = now.0 + MAX_DURATION.as_millis() as i64;
        assert_eq!(RunAfter::At(edge).resolve(now), Ok((WallMs(edge), WallMs(edge))));
        let e = RunAfter::At(edge + 1).resolve(now).unwrap_err();
        assert!(e.contains("36500d") && e.contains("2126-11-11T10:00:00.001Z"), "{e}");
        let far = parse_run_after("9999-12-31T23:59:59Z").unwrap();
        let e = far.resolve(now).unwrap_err();
        assert_eq!(e, "9999-12-31T23:59:59Z is more than 36500d (100 years) from now");
    }
}
