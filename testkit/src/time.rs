//! The deadline multiplier: `HOMER_TEST_TIME_SCALE` (default 1, at least 0.1). A loaded
//! machine gets more time without editing a test; deadlines only bound failures.

use std::time::Duration;

/// The environment variable that scales every deadline.
pub const TIME_SCALE_VAR: &str = "HOMER_TEST_TIME_SCALE";

/// `HOMER_TEST_TIME_SCALE`, default 1, at least 0.1 (an unparsable value counts as unset).
pub fn time_scale() -> f64 {
    std::env::var(TIME_SCALE_VAR).ok().and_then(|s| s.parse::<f64>().ok()).unwrap_or(1.0).max(0.1)
}

/// `d` times the time scale.
pub fn scaled(d: Duration) -> Duration {
    d.mul_f64(time_scale())
}

/// A deadline of `secs` seconds, scaled.
pub fn deadline(secs: f64) -> Duration {
    scaled(Duration::from_secs_f64(secs))
}
