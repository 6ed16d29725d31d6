//! Configuration: embedded defaults, then a TOML file, then `HOMER_<KEY>` environment
//! variables, then `--set key=value` flags — each layer validated as it is applied, so an
//! invalid value is reported with the key and where it came from, and homerd exits with
//! the config code before touching anything.
//!
//! Durations are in the one grammar of `duration.rs` (`250ms`, `90s`, `1h30m`, `2d 3h`, at
//! most 100 years); sizes `512`, `64KiB`, `10MiB`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::duration::{format_duration, parse_duration};
use crate::error::{Error, Result};
use crate::events::Level;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=NORMAL` for heartbeats and claims, FULL for acknowledgements.
    Normal,
    /// `synchronous=FULL` for every transaction.
    Full,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaneConfig {
    pub concurrency: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub heartbeat_interval: Duration,
    pub stale_threshold: Duration,
    pub lock_check_interval: Duration,
    pub max_attempts: u32,
    pub max_interruptions: u32,
    pub shutdown_grace: Duration,
    pub kill_grace: Duration,
    pub orphan_retry_delay: Duration,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub concurrency: u32,
    pub claim_batch: u32,
    pub lanes: BTreeMap<String, LaneConfig>,
    pub run_log_cap: u64,
    pub retention: Duration,
    pub busy_timeout: Duration,
    pub migrate_wait: Duration,
    pub durability: Durability,
    /// The least severe event level emitted (`-v`, `-q` and `--log-level` override it).
    pub log_level: Level,
    /// `None`: the SQLite database in the home (`<home>/homer.db`). `Some(url)`: a
    /// PostgreSQL queue many daemons share (`postgres://…`). A secret: shown only through
    /// `crate::postgres::redact`.
    pub database: Option<String>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            heartbeat_interval: Duration::from_secs(10),
            stale_threshold: Duration::from_secs(60),
            lock_check_interval: Duration::from_secs(1),
            max_attempts: 3,
            max_interruptions: 10,
            shutdown_grace: Duration::from_secs(30),
            kill_grace: Duration::from_secs(5),
            orphan_retry_delay: Duration::ZERO,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(300),
            concurrency: 4,
            claim_batch: 32,
            lanes: BTreeMap::new(),
            run_log_cap: 10 * 1024 * 1024,
            retention: Duration::from_secs(7 * 86_400),
            busy_timeout: Duration::from_secs(5),
            migrate_wait: Duration::from_secs(300),
            durability: Durability::Normal,
            log_level: Level::Info,
            database: None,
        }
    }
}

/// Every scalar key, for `--set`, the environment and "did you mean" messages.
pub const KEYS: &[&str] = &[
    "heartbeat_interval",
    "stale_threshold",
    "lock_check_interval",
    "max_attempts",
    "max_interruptions",
    "shutdown_grace",
    "kill_grace",
    "orphan_retry_delay",
    "backoff_base",
    "backoff_cap",
    "concurrency",
    "claim_batch",
    "run_log_cap",
    "retention",
    "busy_timeout",
    "migrate_wait",
    "durability",
    "log_level",
    "database",
];

/// The environment variable that sets `key`: `HOMER_<KEY>`.
pub fn env_var(key: &str) -> String {
    format!("HOMER_{}", key.to_uppercase())
}

/// Where the configuration comes from (for the CLI).
#[derive(Clone, Debug, Default)]
pub struct Sources {
    /// Explicit `--config` / `HOMER_CONFIG`: must exist.
    pub explicit_file: Option<PathBuf>,
    /// `<home>/homerd.toml`: read if present.
    pub default_file: Option<PathBuf>,
    /// `--set key=value`, in order.
    pub overrides: Vec<String>,
    /// Leave the `HOMER_<KEY>` variables out: the configuration a service unit's daemon
    /// will see, whose supervisor does not have this shell's environment.
    pub skip_environment: bool,
}

/// What a stop adds to its bound beyond the graces (see [`Config::drain_bound`]).
pub const DRAIN_SLACK: Duration = Duration::from_secs(10);

impl Config {
    /// The longest a stop with `grace` takes by the daemon's own clock: the grace, the
    /// group kills (`kill_grace` twice), then [`DRAIN_SLACK`]. The daemon's SIGTERM
    /// deadline, `homerd cancel`'s wait (no grace) and the service units' stop timeouts
    /// all come from here.
    pub fn drain_bound(&self, grace: Duration) -> Duration {
        grace + self.kill_grace * 2 + DRAIN_SLACK
    }

    /// Loads and validates the layered configuration.
    pub fn load(sources: &Sources) -> Result<Config> {
        let mut cfg = Config::default();
        let file = match (&sources.explicit_file, &sources.default_file) {
            (Some(p), _) => Some((p.clone(), true)),
            (None, Some(p)) => Some((p.clone(), false)),
            (None, None) => None,
        };
        if let Some((path, required)) = file {
            match std::fs::read_to_string(&path) {
                Ok(text) => cfg.apply_toml(&text, &path)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {}
                Err(e) => {
                    return Err(Error::Config {
                        source_name: format!("file {}", path.display()),
                        key: String::from("(file)"),
                        message: format!("cannot read: {e}"),
                    })
                }
            }
        }
        if !sources.skip_environment {
            for key in KEYS {
                let var = env_var(key);
                if let Ok(value) = std::env::var(&var) {
                    cfg.set(key, &value, &format!("environment variable {var}"))?;
                }
            }
        }
        for item in &sources.overrides {
            let (key, value) = item.split_once('=').ok_or_else(|| Error::Config {
                source_name: String::from("--set"),
                key: item.clone(),
                message: String::from("expected key=value"),
            })?;
            let key = key.trim();
            if let Some(rest) = key.strip_prefix("lanes.") {
                cfg.set_lane_key(rest, &toml::Value::String(value.trim().to_owned()), "--set")?;
            } else {
                cfg.set(key, value.trim(), "--set")?;
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn apply_toml(&mut self, text: &str, path: &Path) -> Result<()> {
        let source = format!("file {}", path.display());
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| Error::Config {
            source_name: source.clone(),
            key: String::from("(syntax)"),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        for (key, value) in &table {
            if key == "lanes" {
                let lanes = value.as_table().ok_or_else(|| cfg_err(&source, "lanes", "expected a table of lanes"))?;
                for (lane, spec) in lanes {
                    let spec = spec
                        .as_table()
                        .ok_or_else(|| cfg_err(&source, &format!("lanes.{lane}"), "expected a table"))?;
                    for (k, v) in spec {
                        self.set_lane_key(&format!("{lane}.{k}"), v, &source)?;
                    }
                }
                continue;
            }
            let text = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                other => {
                    return Err(cfg_err(
                        &source,
                        key,
                        &format!("expected a string or an integer, found {}", other.type_str()),
                    ))
                }
            };
            self.set(key, &text, &source)?;
        }
        Ok(())
    }

    fn set_lane_key(&mut self, lane_key: &str, value: &toml::Value, source: &str) -> Result<()> {
        let full = format!("lanes.{lane_key}");
        let (lane, key) =
            lane_key.split_once('.').ok_or_else(|| cfg_err(source, &full, "expected lanes.<name>.concurrency"))?;
        if key != "concurrency" {
            return Err(cfg_err(source, &full, "unknown lane key; the only lane key is `concurrency`"));
        }
        if lane.is_empty() {
            return Err(cfg_err(source, &full, "empty lane name"));
        }
        let n = match value {
            toml::Value::Integer(i) => u32::try_from(*i).ok(),
            toml::Value::String(s) => s.parse().ok(),
            _ => None,
        }
        .filter(|n| *n >= 1)
        .ok_or_else(|| cfg_err(source, &full, "expected a whole number of at least 1"))?;
        self.lanes.insert(lane.to_owned(), LaneConfig { concurrency: n });
        Ok(())
    }

    /// Sets one scalar key from its text form.
    pub fn set(&mut self, key: &str, value: &str, source: &str) -> Result<()> {
        let dur = |v: &str| parse_duration(v).map_err(|m| cfg_err(source, key, &m));
        let count = |v: &str, min: u32| {
            v.parse::<u32>()
                .ok()
                .filter(|n| *n >= min)
                .ok_or_else(|| cfg_err(source, key, &format!("expected a whole number of at least {min}, got `{v}`")))
        };
        match key {
            "heartbeat_interval" => self.heartbeat_interval = dur(value)?,
            "stale_threshold" => self.stale_threshold = dur(value)?,
            "lock_check_interval" => self.lock_check_interval = dur(value)?,
            "max_attempts" => self.max_attempts = count(value, 1)?,
            "max_interruptions" => self.max_interruptions = count(value, 0)?,
            "shutdown_grace" => self.shutdown_grace = dur(value)?,
            "kill_grace" => self.kill_grace = dur(value)?,
            "orphan_retry_delay" => self.orphan_retry_delay = dur(value)?,
            "backoff_base" => self.backoff_base = dur(value)?,
            "backoff_cap" => self.backoff_cap = dur(value)?,
            "concurrency" => self.concurrency = count(value, 1)?,
            "claim_batch" => self.claim_batch = count(value, 1)?,
            "run_log_cap" => self.run_log_cap = parse_size(value).map_err(|m| cfg_err(source, key, &m))?,
            "retention" => self.retention = dur(value)?,
            "busy_timeout" => self.busy_timeout = dur(value)?,
            "migrate_wait" => self.migrate_wait = dur(value)?,
            "durability" => {
                self.durability = match value {
                    "normal" => Durability::Normal,
                    "full" => Durability::Full,
                    _ => return Err(cfg_err(source, key, &format!("expected `normal` or `full`, got `{value}`"))),
                }
            }
            "log_level" => {
                self.log_level = Level::parse(value).ok_or_else(|| {
                    cfg_err(source, key, &format!("expected `debug`, `info`, `warn` or `error`, got `{value}`"))
                })?
            }
            "database" => {
                // Never echo the value: a connection URL may carry a password.
                self.database =
                    match value {
                        "" | "sqlite" => None,
                        url if crate::postgres::is_url(url) => Some(url.to_owned()),
                        _ => return Err(cfg_err(
                            source,
                            key,
                            "expected a postgres:// (or postgresql://) URL, or `sqlite` for the database in the home",
                        )),
                    }
            }
            _ => {
                let hint = KEYS
                    .iter()
                    .find(|k| k.contains(key) || key.contains(*k))
                    .map(|k| format!("; did you mean `{k}`?"))
                    .unwrap_or_default();
                return Err(cfg_err(source, key, &format!("unknown key{hint} (known keys: {})", KEYS.join(", "))));
            }
        }
        Ok(())
    }

    /// Cross-key rules: a worker must be able to kill its child (kill grace) before its
    /// lease can be taken over, and a renewal may come late. The daemon starts killing at
    /// renewal + stale - kill_grace - half an interval (`EngineConfig::margin_ms`), so at
    /// the least stale threshold allowed a renewal may come half an interval late.
    fn validate(&self) -> Result<()> {
        let src = "configuration";
        let nonzero = [
            ("heartbeat_interval", self.heartbeat_interval),
            ("stale_threshold", self.stale_threshold),
            ("lock_check_interval", self.lock_check_interval),
            ("busy_timeout", self.busy_timeout),
        ];
        for (key, d) in nonzero {
            if d.is_zero() {
                return Err(cfg_err(src, key, "must be greater than zero"));
            }
        }
        if self.stale_threshold < self.heartbeat_interval * 2 + self.kill_grace {
            return Err(cfg_err(
                src,
                "stale_threshold",
                &format!(
                    "must be at least 2 x heartbeat_interval + kill_grace ({} here), so a child can be killed before its lease expires even when a renewal comes half an interval late",
                    format_duration(self.heartbeat_interval * 2 + self.kill_grace)
                ),
            ));
        }
        if self.backoff_cap < self.backoff_base {
            return Err(cfg_err(src, "backoff_cap", "must not be below backoff_base"));
        }
        // SQLite's busy timeout and PostgreSQL's statement and lock timeouts are 32-bit
        // counts of milliseconds.
        if self.busy_timeout > MAX_BUSY_TIMEOUT {
            return Err(cfg_err(
                src,
                "busy_timeout",
                &format!(
                    "must be at most {} (the databases count it in 32-bit milliseconds)",
                    format_duration(MAX_BUSY_TIMEOUT)
                ),
            ));
        }
        Ok(())
    }
}

/// The longest `busy_timeout`: about 24.8 days, as 24 days for a round figure.
const MAX_BUSY_TIMEOUT: Duration = Duration::from_secs(24 * 86_400);

fn cfg_err(source: &str, key: &str, message: &str) -> Error {
    Error::Config { source_name: source.to_owned(), key: key.to_owned(), message: message.to_owned() }
}

/// Parses `1048576`, `64KiB`, `10MiB`, `1GiB`.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("expected a size like 512, 64KiB or 10MiB, got `{s}`"))?;
    let mult = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(format!("expected a size like 512, 64KiB or 10MiB, got `{s}`")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("size `{s}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10MiB").unwrap(), 10 << 20);
        assert_eq!(parse_size("512").unwrap(), 512);
        assert!(parse_size("10MB").is_err());
    }

    #[test]
    fn toml_layer_names_file_and_key() {
        let mut c = Config::default();
        let p = Path::new("/etc/homer/homerd.toml");
        c.apply_toml("heartbeat_interval = \"250ms\"\n[lanes.io]\nconcurrency = 2\n", p).unwrap();
        assert_eq!(c.heartbeat_interval, Duration::from_millis(250));
        assert_eq!(c.lanes["io"].concurrency, 2);
        let err = Config::default().apply_toml("stale_threshold = \"soon\"\n", p).unwrap_err().to_string();
        assert!(err.contains("/etc/homer/homerd.toml") && err.contains("`stale_threshold`"), "{err}");
        let err = Config::default().apply_toml("heartbeat = \"1s\"\n", p).unwrap_err().to_string();
        assert!(err.contains("unknown key") && err.contains("heartbeat_interval"), "{err}");
        let err = Config::default().apply_toml("max_attempts = [1]\n", p).unwrap_err().to_string();
        assert!(err.contains("max_attempts") && err.contains("array"), "{err}");
        let err = Config::default().apply_toml("x = \n", p).unwrap_err().to_string();
        assert!(err.contains("(syntax)") && err.contains("line 1"), "{err}");
    }

    #[test]
    fn durations_in_the_one_grammar_from_every_layer() {
        let mut c = Config::default();
        let p = Path::new("/etc/homer/homerd.toml");
        c.apply_toml(
            "retention = \"2d 3h\"\nbackoff_cap = \"1h30m\"\nbackoff_base = \"1.5s\"\norphan_retry_delay = 0\n",
            p,
        )
        .unwrap();
        assert_eq!(c.retention, Duration::from_secs(51 * 3600));
        assert_eq!(c.backoff_cap, Duration::from_secs(5400));
        assert_eq!(c.backoff_base, Duration::from_millis(1500));
        assert_eq!(c.orphan_retry_delay, Duration::ZERO);
        // --set, as the CLI passes it (the environment goes through the same `set`).
        let sources = Sources { overrides: vec![String::from("migrate_wait = 1m 30s")], ..Sources::default() };
        assert_eq!(Config::load(&sources).unwrap().migrate_wait, Duration::from_secs(90));
        // Refusals name the source, the key and the value, and give the bound or examples.
        let err = Config::default().apply_toml("retention = \"36501d\"\n", p).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("/etc/homer/homerd.toml") && text.contains("`retention`"), "{text}");
        assert!(text.contains("`36501d` is too long: at most 36500d"), "{text}");
        assert_eq!(err.exit_code(), crate::error::exit::CONFIG);
        for (value, says) in [("106751980000d", "at most 36500d"), ("90", "1h30m"), ("1.0001s", "whole milliseconds")] {
            let sources = Sources { overrides: vec![format!("backoff_cap={value}")], ..Sources::default() };
            let text = Config::load(&sources).unwrap_err().to_string();
            assert!(text.contains("--set") && text.contains("backoff_cap") && text.contains(says), "{value}: {text}");
        }
    }

    #[test]
    fn log_level_reads_the_four_levels_and_names_a_bad_one() {
        let mut c = Config::default();
        assert_eq!(c.log_level, Level::Info);
        c.set("log_level", "debug", "t").unwrap();
        assert_eq!(c.log_level, Level::Debug);
        let err = c.set("log_level", "loud", "environment variable HOMER_LOG_LEVEL").unwrap_err().to_string();
        assert!(err.contains("HOMER_LOG_LEVEL") && err.contains("`loud`") && err.contains("`debug`"), "{err}");
        assert_eq!(c.log_level, Level::Debug, "a refused value changes nothing");
    }

    #[test]
    fn busy_timeout_is_bounded_by_what_the_databases_take() {
        let load =
            |v: &str| Config::load(&Sources { overrides: vec![format!("busy_timeout={v}")], ..Sources::default() });
        assert_eq!(load("24d").unwrap().busy_timeout, MAX_BUSY_TIMEOUT);
        // 25 days is more than i32::MAX milliseconds: rusqlite panicked on it.
        let err = load("25d").unwrap_err();
        assert_eq!(err.exit_code(), crate::error::exit::CONFIG);
        assert!(err.to_string().contains("busy_timeout") && err.to_string().contains("at most 24d"), "{err}");
    }

    #[test]
    fn cross_key_rule() {
        let mut c = Config::default();
        c.set("stale_threshold", "15s", "t").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("stale_threshold") && err.contains("25s"), "{err}");
        c.set("heartbeat_interval", "100ms", "t").unwrap();
        c.set("kill_grace", "1s", "t").unwrap();
        c.validate().unwrap();
    }
}
