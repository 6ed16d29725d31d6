//! Supervisor units: `homerd service launchd|systemd` prints a unit that runs this
//! binary with the resolved paths, and [`installed_unit_warnings`] (for `doctor`) reads
//! an installed one and names every key that contradicts what homerd needs of its
//! supervisor:
//!
//! - **Restart on failure only.** "Another instance is running" exits 0, so a supervisor
//!   that restarts on success loops. Codes a restart cannot fix ([`RESTART_PREVENT`])
//!   are not restarted by systemd; launchd has no such setting and retries them every
//!   [`RESTART_DELAY`].
//! - **A stop timeout above the drain.** SIGTERM starts a drain bounded by
//!   [`drain_bound`]; a supervisor that SIGKILLs the daemon sooner cuts it short.
//! - **SIGTERM to the daemon alone.** The daemon stops its jobs' process groups itself;
//!   systemd's default `KillMode=control-group` would signal every job with it.
//!
//! This file holds what both supervisors share (the invocation, the timeouts, where
//! units are installed); `launchd.rs` writes and reads plists through the `plist` crate
//! (an installed plist may be XML, binary or OpenStep), `systemd.rs` writes and reads
//! unit files by hand.

mod launchd;
mod systemd;

pub use launchd::check as check_launchd;
pub use systemd::{check as check_systemd, parse_unit};

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{Config, Sources};
use crate::duration::format_duration;
use crate::error::{exit, Error, Result};
use crate::paths::Paths;

/// The launchd job label (reverse-DNS, as launchd expects); the agent's file is
/// `~/Library/LaunchAgents/dev.homer.homerd.plist`.
pub const LAUNCHD_LABEL: &str = "dev.homer.homerd";

/// The systemd user unit's name: `~/.config/systemd/user/homerd.service`.
pub const SYSTEMD_UNIT: &str = "homerd.service";

/// Exit codes after which systemd must not restart homerd: each says the command line,
/// the configuration, the database or the filesystem needs an operator, so a restart
/// fails the same way (and floods the journal). Every other failure is restarted:
/// - `IN_USE` (75): another live daemon holds the database through another lock path,
///   or SQLite was busy at the start. It clears when that daemon stops, so retrying
///   every [`RESTART_DELAY`] is what brings the supervised daemon back on its own; the
///   refusal bumps no epoch, so the retries never disturb the holder.
/// - `FENCED` (76): another daemon took the epoch; the restart either refuses with 75
///   (the other is alive) or takes over cleanly (it is gone).
/// - `IO` (74) and `INTERNAL` (70): possibly transient (a full disk, a bug hit once);
///   homerd is crash-only, so a restart is safe.
///
/// `NOT_FOUND` (66) is prevented: `run` gives it for what stays missing until an
/// operator acts — a PostgreSQL database that does not exist, a TLS root certificate
/// file that is not there.
pub const RESTART_PREVENT: &[i32] = &[
    exit::USAGE,
    exit::DATA,
    exit::NOT_FOUND,
    exit::LOCK_UNSUPPORTED,
    exit::UNSAFE_PATH,
    exit::PERMISSION,
    exit::CONFIG,
];

/// Delay between a failure and the restart (systemd `RestartSec`; launchd's
/// `ThrottleInterval`, which also counts as a minimum run time: a daemon that ran for
/// 3 s is respawned 7 s after it died).
pub const RESTART_DELAY: Duration = Duration::from_secs(10);

/// Time for what follows the drain (clearing the leader row, closing the database,
/// releasing the lock) before the supervisor's SIGKILL.
const STOP_MARGIN: Duration = Duration::from_secs(10);

/// The supervisor a unit is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Manager {
    /// A launchd agent plist (macOS)
    Launchd,
    /// A systemd user unit (Linux)
    Systemd,
}

/// The longest a SIGTERM'd daemon takes by its own clock: the drain, the group kills,
/// then its slack. It stops regardless after that.
pub fn drain_bound(cfg: &Config) -> Duration {
    cfg.drain_bound(cfg.shutdown_grace)
}

/// The supervisor's stop timeout (launchd `ExitTimeOut`, systemd `TimeoutStopSec`):
/// the drain bound plus a margin, in whole seconds.
pub fn stop_timeout(cfg: &Config) -> Duration {
    let t = drain_bound(cfg) + STOP_MARGIN;
    Duration::from_secs(t.as_secs() + u64::from(t.subsec_nanos() > 0))
}

/// The command line options `homerd service` passes on to the daemon it installs, as
/// given to this invocation (flags or `HOMER_*` variables; the supervisor's environment
/// has neither).
#[derive(Clone, Debug, Default)]
pub struct Passed {
    /// `--lock-file` was given (the resolved path is in [`Paths`]).
    pub lock_file: bool,
    /// `--config`, as given.
    pub config: Option<PathBuf>,
    /// Every `--set KEY=VALUE`.
    pub sets: Vec<String>,
    /// `--database URL`, as given.
    pub database: Option<String>,
}

/// The daemon's command line in a unit: the running binary, then the options.
struct Invocation {
    exe: String,
    args: Vec<String>,
    home: String,
    logs: String,
}

fn unit_text<'a>(what: &str, p: &'a Path) -> Result<&'a str> {
    p.to_str()
        .ok_or_else(|| Error::Usage(format!("{what} {} is not valid UTF-8; a unit file cannot name it", p.display())))
}

/// A unit file is world-readable on most systems, and its command line shows in `ps`:
/// a database URL with a password does not go there, whichever way it was given.
fn no_password(url: &str, given_as: &str) -> Result<()> {
    if crate::postgres::redact(url) == url {
        return Ok(());
    }
    Err(Error::Usage(format!(
        "{given_as} carries a password, which a unit file and the process list would show; \
         put `database = \"postgres://…\"` in the configuration file (kept 0600) and pass --config, \
         or use a URL without a password"
    )))
}

fn invocation(paths: &Paths, passed: &Passed) -> Result<Invocation> {
    let exe = std::env::current_exe().map_err(|e| Error::io("locate the running binary", "homerd", e))?;
    // Canonical: the unit must not follow a symlink that is later repointed.
    let exe = exe.canonicalize().map_err(|e| Error::io("resolve", &exe, e))?;
    let exe = unit_text("the homerd binary", &exe)?.to_owned();
    let home = unit_text("home", &paths.home)?.to_owned();
    let mut args = vec![String::from("--home"), home.clone()];
    if passed.lock_file {
        args.extend([String::from("--lock-file"), unit_text("lock file", &paths.lock_file)?.to_owned()]);
    }
    if let Some(config) = &passed.config {
        let config = std::path::absolute(config).map_err(|e| Error::io("resolve", config, e))?;
        args.extend([String::from("--config"), unit_text("config file", &config)?.to_owned()]);
    }
    for set in &passed.sets {
        if let Some(("database", url)) = set.split_once('=').map(|(k, v)| (k.trim(), v.trim())) {
            no_password(url, "--set database")?;
        }
        args.extend([String::from("--set"), set.clone()]);
    }
    if let Some(url) = &passed.database {
        no_password(url, "--database")?;
        args.extend([String::from("--database"), url.clone()]);
    }
    args.push(String::from("run"));
    Ok(Invocation { exe, args, home, logs: unit_text("logs directory", &paths.logs)?.to_owned() })
}

/// The configuration the unit's daemon will run with, whose graces size the stop
/// timeout: what the unit carries (the config file, the `--set`s, `--database`), not
/// this shell's `HOMER_<KEY>` variables — a supervisor does not have them. Each one set
/// here is named on stderr, so a grace that would not reach the daemon is not a surprise.
fn unit_config(paths: &Paths, passed: &Passed) -> Result<Config> {
    let mut cfg = Config::load(&Sources {
        explicit_file: passed.config.clone(),
        default_file: Some(paths.default_config.clone()),
        overrides: passed.sets.clone(),
        skip_environment: true,
    })?;
    if let Some(url) = &passed.database {
        cfg.set("database", url, "--database")?;
    }
    for key in crate::config::KEYS {
        let var = crate::config::env_var(key);
        if std::env::var_os(&var).is_some() {
            crate::events::warn(
                "service.not_carried",
                "A HOMER_* setting of this shell is not carried into the unit (its supervisor does not have this \
                 environment): pass it with --set or in the config file",
            )
            .field("variable", var)
            .field("set", format!("--set {key}=VALUE"))
            .emit();
        }
    }
    Ok(cfg)
}

/// `homerd service launchd|systemd`: prints the unit; touches nothing.
pub fn print(paths: &Paths, manager: Manager, passed: &Passed, as_json: bool) -> Result<i32> {
    let inv = invocation(paths, passed)?;
    let cfg = unit_config(paths, passed)?;
    let text = match manager {
        Manager::Launchd => launchd::plist(&inv, &cfg)?,
        Manager::Systemd => systemd::unit(&inv, &cfg),
    };
    if as_json {
        let name = match manager {
            Manager::Launchd => "launchd",
            Manager::Systemd => "systemd",
        };
        crate::output::json(&serde_json::json!({"manager": name, "unit": text}))?;
    } else {
        crate::output::text(&text)?;
    }
    Ok(exit::OK)
}

/// One contradiction in an installed unit (doctor prints it as a `WARN` line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitWarning {
    pub path: PathBuf,
    pub detail: String,
}

/// The standard places of an installed unit, given `$HOME` and `$XDG_CONFIG_HOME`.
/// Both are looked at on every OS: a file at the other platform's path costs one
/// `stat`, and reading both everywhere lets one test suite cover both checks.
pub fn unit_locations(home: Option<&Path>, xdg_config_home: Option<&Path>) -> Vec<(Manager, PathBuf)> {
    let mut out = Vec::new();
    if let Some(home) = home {
        out.push((Manager::Launchd, home.join("Library/LaunchAgents").join(format!("{LAUNCHD_LABEL}.plist"))));
    }
    let config = match (xdg_config_home, home) {
        (Some(x), _) if x.is_absolute() => Some(x.to_owned()),
        (_, Some(h)) => Some(h.join(".config")),
        _ => None,
    };
    if let Some(config) = config {
        out.push((Manager::Systemd, config.join("systemd/user").join(SYSTEMD_UNIT)));
    }
    out
}

/// Every contradiction in the units installed at the standard places for this user
/// (`$HOME`, `$XDG_CONFIG_HOME`), judged against `cfg`'s graces. No unit, no warning:
/// running homerd unsupervised is a choice.
pub fn installed_unit_warnings(cfg: &Config) -> Vec<UnitWarning> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let xdg = std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from);
    let mut out = Vec::new();
    for (manager, path) in unit_locations(home.as_deref(), xdg.as_deref()) {
        let text = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                out.push(UnitWarning { path, detail: format!("cannot read: {e}") });
                continue;
            }
        };
        let details = match manager {
            Manager::Launchd => launchd::check(&text, cfg),
            Manager::Systemd => systemd::check(&path, &text, cfg),
        };
        out.extend(details.into_iter().map(|detail| UnitWarning { path: path.clone(), detail }));
    }
    out
}

/// A supervisor's stop timeout that does not leave the daemon its drain, in words.
fn timeout_problem(key: &str, timeout: Duration, cfg: &Config, manager: &str) -> Option<String> {
    let bound = drain_bound(cfg);
    (timeout <= bound).then(|| {
        format!(
            "{key} {} is not above homerd's drain bound {} (shutdown_grace {} + 2 x kill_grace {} + {}): \
             {manager} may SIGKILL the daemon mid-drain; homerd service {} writes {}s",
            format_duration(timeout),
            format_duration(bound),
            format_duration(cfg.shutdown_grace),
            format_duration(cfg.kill_grace),
            format_duration(crate::config::DRAIN_SLACK),
            manager,
            stop_timeout(cfg).as_secs(),
        )
    })
}

#[cfg(test)]
impl Invocation {
    /// `/opt/homer bin/homerd --home HOME run`.
    fn for_test(home: &str) -> Invocation {
        Invocation {
            exe: String::from("/opt/homer bin/homerd"),
            args: vec![String::from("--home"), home.to_owned(), String::from("run")],
            home: home.to_owned(),
            logs: format!("{home}/logs"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_timeout_is_above_the_drain_bound_in_whole_seconds() {
        let mut cfg = Config::default();
        assert_eq!(drain_bound(&cfg), Duration::from_secs(50));
        assert_eq!(stop_timeout(&cfg), Duration::from_secs(60));
        cfg.shutdown_grace = Duration::from_millis(300);
        cfg.kill_grace = Duration::from_millis(100);
        assert_eq!(stop_timeout(&cfg), Duration::from_secs(21), "rounded up");
        assert!(stop_timeout(&cfg) > drain_bound(&cfg));
    }

    #[test]
    fn prevent_set_has_no_code_that_can_clear_by_itself() {
        for code in [exit::OK, exit::IN_USE, exit::FENCED, exit::IO, exit::INTERNAL] {
            assert!(!RESTART_PREVENT.contains(&code), "{code}");
        }
    }

    #[test]
    fn generated_units_pass_their_own_checks() {
        let cfg = Config::default();
        let plist = launchd::plist(&Invocation::for_test("/Users/me/Homer & <co>"), &cfg).unwrap();
        assert_eq!(launchd::check(plist.as_bytes(), &cfg), Vec::<String>::new());
        let unit = systemd::unit(&Invocation::for_test("/home/me/homer"), &cfg);
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(systemd::check(&dir.path().join("none.service"), unit.as_bytes(), &cfg), Vec::<String>::new());
    }

    #[test]
    fn locations_follow_home_and_xdg_config_home() {
        let l = unit_locations(Some(Path::new("/u")), None);
        assert_eq!(
            l,
            vec![
                (Manager::Launchd, PathBuf::from("/u/Library/LaunchAgents/dev.homer.homerd.plist")),
                (Manager::Systemd, PathBuf::from("/u/.config/systemd/user/homerd.service")),
            ]
        );
        let l = unit_locations(Some(Path::new("/u")), Some(Path::new("/x")));
        assert_eq!(l[1].1, PathBuf::from("/x/systemd/user/homerd.service"));
        let l = unit_locations(Some(Path::new("/u")), Some(Path::new("rel")));
        assert_eq!(l[1].1, PathBuf::from("/u/.config/systemd/user/homerd.service"), "a relative XDG path is ignored");
        assert!(unit_locations(None, None).is_empty());
    }
}
