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
//! units are installed) and the launchd plist, written by hand and read back by the
//! small reader at the bottom ([`parse_xml_plist`]); `systemd.rs` writes and reads unit
//! files.

mod systemd;

pub use systemd::{check as check_systemd, parse_unit};

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{format_duration, Config};
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
pub const RESTART_PREVENT: &[i32] =
    &[exit::USAGE, exit::DATA, exit::LOCK_UNSUPPORTED, exit::UNSAFE_PATH, exit::PERMISSION, exit::CONFIG];

/// Delay between a failure and the restart (systemd `RestartSec`; launchd's
/// `ThrottleInterval`, which also counts as a minimum run time: a daemon that ran for
/// 3 s is respawned 7 s after it died).
pub const RESTART_DELAY: Duration = Duration::from_secs(10);

/// Time for what follows the drain (clearing the leader row, closing the database,
/// releasing the lock) before the supervisor's SIGKILL.
const STOP_MARGIN: Duration = Duration::from_secs(10);

/// launchd's `ExitTimeOut` when a plist sets none (documented as system-defined; 20 s
/// on the releases that state it).
const LAUNCHD_DEFAULT_EXIT_TIMEOUT: Duration = Duration::from_secs(20);

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
        args.extend([String::from("--set"), set.clone()]);
    }
    args.push(String::from("run"));
    Ok(Invocation { exe, args, home, logs: unit_text("logs directory", &paths.logs)?.to_owned() })
}

/// `homerd service launchd|systemd`: prints the unit; touches nothing.
pub fn print(paths: &Paths, cfg: &Config, manager: Manager, passed: &Passed) -> Result<i32> {
    let inv = invocation(paths, passed)?;
    let text = match manager {
        Manager::Launchd => launchd_plist(&inv, cfg)?,
        Manager::Systemd => systemd::unit(&inv, cfg),
    };
    print!("{text}");
    Ok(exit::OK)
}

/// Escapes XML character data; refuses characters XML 1.0 cannot carry.
fn xml_text(s: &str) -> Result<String> {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if c.is_control() => {
                return Err(Error::Usage(format!("{s:?} has a control character a plist cannot carry")));
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// launchd keys, and why:
/// - `KeepAlive = { SuccessfulExit = false }`: restart only after a non-zero exit or a
///   crash; exit 0 (a clean stop, or "another instance is running") stays stopped.
/// - `ThrottleInterval`: [`RESTART_DELAY`] between spawns.
/// - `ExitTimeOut`: launchd sends SIGTERM on stop and SIGKILL this long after;
///   [`stop_timeout`] keeps it above the drain.
/// - `AbandonProcessGroup = false` (launchd's default, spelled out): when the job dies,
///   launchd kills whatever is left in its process group. Job children run in their own
///   groups, which the daemon stops before it exits; after a `kill -9` they are killed
///   by the next start's recovery before anything re-runs (macOS has no parent-death
///   signal).
/// - `ProcessType = Standard`: `Background` would apply CPU and I/O throttling that the
///   job children inherit and that can delay heartbeats.
/// - `StandardOutPath`/`StandardErrorPath`: what homerd prints before its log file is
///   open (a configuration error, "another instance is running") lands under `logs/`.
fn launchd_plist(inv: &Invocation, cfg: &Config) -> Result<String> {
    let mut out = String::new();
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str(
        "<!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n",
    );
    out.push_str("<!-- Generated by homerd service launchd. Install: README.md, Service install. -->\n");
    out.push_str("<plist version=\"1.0\">\n<dict>\n");
    let key = |out: &mut String, k: &str| {
        let _ = writeln!(out, "\t<key>{k}</key>");
    };
    let string = |out: &mut String, k: &str, v: &str| -> Result<()> {
        key(out, k);
        let _ = writeln!(out, "\t<string>{}</string>", xml_text(v)?);
        Ok(())
    };
    string(&mut out, "Label", LAUNCHD_LABEL)?;
    key(&mut out, "ProgramArguments");
    out.push_str("\t<array>\n");
    for arg in std::iter::once(&inv.exe).chain(&inv.args) {
        let _ = writeln!(out, "\t\t<string>{}</string>", xml_text(arg)?);
    }
    out.push_str("\t</array>\n");
    key(&mut out, "EnvironmentVariables");
    let _ =
        writeln!(out, "\t<dict>\n\t\t<key>HOMER_HOME</key>\n\t\t<string>{}</string>\n\t</dict>", xml_text(&inv.home)?);
    key(&mut out, "RunAtLoad");
    out.push_str("\t<true/>\n");
    key(&mut out, "KeepAlive");
    out.push_str("\t<dict>\n\t\t<key>SuccessfulExit</key>\n\t\t<false/>\n\t</dict>\n");
    key(&mut out, "ThrottleInterval");
    let _ = writeln!(out, "\t<integer>{}</integer>", RESTART_DELAY.as_secs());
    key(&mut out, "ExitTimeOut");
    let _ = writeln!(out, "\t<integer>{}</integer>", stop_timeout(cfg).as_secs());
    key(&mut out, "AbandonProcessGroup");
    out.push_str("\t<false/>\n");
    string(&mut out, "ProcessType", "Standard")?;
    string(&mut out, "StandardOutPath", &format!("{}/launchd.out.log", inv.logs))?;
    string(&mut out, "StandardErrorPath", &format!("{}/launchd.err.log", inv.logs))?;
    out.push_str("</dict>\n</plist>\n");
    Ok(out)
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
            Manager::Launchd => check_launchd(&text, cfg),
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

/// The contradictions in a launchd plist.
pub fn check_launchd(bytes: &[u8], cfg: &Config) -> Vec<String> {
    if bytes.starts_with(b"bplist") {
        return vec![String::from(
            "a binary plist; doctor reads XML plists only (convert it: plutil -convert xml1 FILE)",
        )];
    }
    let root = match std::str::from_utf8(bytes).map_err(|e| e.to_string()).and_then(parse_xml_plist) {
        Ok(dict @ PlistValue::Dict(_)) => dict,
        Ok(_) => return vec![String::from("cannot parse: the plist is not a dictionary")],
        Err(e) => return vec![format!("cannot parse: {e}")],
    };
    let mut out = Vec::new();
    let restart = "use KeepAlive = { SuccessfulExit = false }";
    match root.get("KeepAlive") {
        Some(PlistValue::Bool(true)) => out.push(format!(
            "KeepAlive is true: launchd restarts homerd after it exits 0 (\"another instance is running\"), a loop; {restart}"
        )),
        None | Some(PlistValue::Bool(false)) => {
            out.push(format!("KeepAlive is not set: launchd does not restart homerd after a failure; {restart}"))
        }
        Some(keep) => match keep.get("SuccessfulExit") {
            Some(PlistValue::Bool(false)) => {}
            Some(PlistValue::Bool(true)) => out.push(format!(
                "KeepAlive.SuccessfulExit is true: launchd restarts homerd after it exits 0 (\"another instance is running\"), a loop, and not after a failure; {restart}"
            )),
            _ => out.push(format!(
                "KeepAlive has no SuccessfulExit = false: launchd does not restart homerd after a failed exit; {restart}"
            )),
        },
    }
    match root.get("ExitTimeOut") {
        // Zero means "never SIGKILL": the daemon's own bound ends the drain.
        Some(PlistValue::Integer(0)) => {}
        Some(PlistValue::Integer(n)) if *n > 0 => {
            out.extend(timeout_problem("ExitTimeOut", Duration::from_secs(*n as u64), cfg, "launchd"))
        }
        None => out.extend(
            timeout_problem("ExitTimeOut", LAUNCHD_DEFAULT_EXIT_TIMEOUT, cfg, "launchd")
                .map(|p| format!("{p} (ExitTimeOut is not set; launchd's default is about 20s)")),
        ),
        Some(other) => out.push(format!("ExitTimeOut is {other:?}, not a whole number of seconds")),
    }
    if root.get("AbandonProcessGroup") == Some(&PlistValue::Bool(true)) {
        out.push(String::from(
            "AbandonProcessGroup is true: launchd leaves the daemon's process group running after the daemon dies; remove it (the default is false)",
        ));
    }
    out
}

/// A value of an XML property list.
#[derive(Clone, Debug, PartialEq)]
pub enum PlistValue {
    Bool(bool),
    Integer(i64),
    Real(f64),
    String(String),
    Array(Vec<PlistValue>),
    Dict(Vec<(String, PlistValue)>),
    /// `<data>` or `<date>`, kept as text.
    Other(String),
}

impl PlistValue {
    /// A dictionary's value for `key` (the last one, if repeated).
    pub fn get(&self, key: &str) -> Option<&PlistValue> {
        match self {
            PlistValue::Dict(entries) => entries.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

/// Reads an XML property list (`<plist>` with one value): the format
/// `homerd service launchd` writes and `plutil -convert xml1` produces. Comments,
/// the prolog, the DOCTYPE, entities and CDATA are understood; binary plists are not.
pub fn parse_xml_plist(text: &str) -> std::result::Result<PlistValue, String> {
    let mut r = XmlReader { s: text, pos: 0 };
    r.skip_misc()?;
    let (name, empty) = r.open_tag()?;
    if name != "plist" || empty {
        return Err(format!("expected <plist>, found <{name}>"));
    }
    let value = r.value()?;
    r.skip_misc()?;
    r.close_tag("plist")?;
    r.skip_misc()?;
    if r.pos != r.s.len() {
        return Err(format!("unexpected content after </plist> at byte {}", r.pos));
    }
    Ok(value)
}

struct XmlReader<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> XmlReader<'a> {
    fn rest(&self) -> &'a str {
        &self.s[self.pos..]
    }

    fn skip_past(&mut self, end: &str) -> std::result::Result<(), String> {
        match self.rest().find(end) {
            Some(i) => {
                self.pos += i + end.len();
                Ok(())
            }
            None => Err(format!("unterminated markup at byte {} (no {end})", self.pos)),
        }
    }

    /// Whitespace, comments, processing instructions and the DOCTYPE.
    fn skip_misc(&mut self) -> std::result::Result<(), String> {
        loop {
            let trimmed = self.rest().trim_start();
            self.pos = self.s.len() - trimmed.len();
            if trimmed.starts_with("<!--") {
                self.skip_past("-->")?;
            } else if trimmed.starts_with("<?") {
                self.skip_past("?>")?;
            } else if trimmed.starts_with("<!DOCTYPE") {
                let subset = trimmed.find('[').filter(|i| trimmed.find('>').is_some_and(|g| *i < g));
                self.skip_past(if subset.is_some() { "]>" } else { ">" })?;
            } else {
                return Ok(());
            }
        }
    }

    /// `<name attr="...">` or `<name/>`: the name, and whether it is empty.
    fn open_tag(&mut self) -> std::result::Result<(String, bool), String> {
        let rest = self.rest();
        if !rest.starts_with('<') || rest.starts_with("</") {
            return Err(format!("expected an element at byte {}", self.pos));
        }
        let end = rest.find('>').ok_or_else(|| format!("unterminated tag at byte {}", self.pos))?;
        let inner = &rest[1..end];
        let empty = inner.ends_with('/');
        let name = inner.trim_end_matches('/').split_whitespace().next().unwrap_or_default().to_owned();
        self.pos += end + 1;
        Ok((name, empty))
    }

    fn close_tag(&mut self, name: &str) -> std::result::Result<(), String> {
        let tag = format!("</{name}>");
        let rest = self.rest();
        let found = rest.strip_prefix("</").and_then(|r| r.split_once('>')).map(|(n, _)| n.trim() == name);
        if found != Some(true) {
            return Err(format!("expected {tag} at byte {}", self.pos));
        }
        self.skip_past(">")
    }

    /// Character data up to `</name>`, entities decoded, CDATA kept, comments dropped.
    fn text(&mut self, name: &str) -> std::result::Result<String, String> {
        let mut out = String::new();
        loop {
            let rest = self.rest();
            let lt = rest.find('<').ok_or_else(|| format!("unterminated <{name}> at byte {}", self.pos))?;
            out.push_str(&decode_entities(&rest[..lt])?);
            self.pos += lt;
            let rest = self.rest();
            if let Some(cdata) = rest.strip_prefix("<![CDATA[") {
                let end = cdata.find("]]>").ok_or_else(|| String::from("unterminated CDATA"))?;
                out.push_str(&cdata[..end]);
                self.pos += "<![CDATA[".len() + end + "]]>".len();
            } else if rest.starts_with("<!--") {
                self.skip_past("-->")?;
            } else {
                self.close_tag(name)?;
                return Ok(out);
            }
        }
    }

    /// Whether a `<dict>`/`<array>` ends here: it was `<name/>`, or its `</name>` is next
    /// (then consumed).
    fn container_ends(&mut self, name: &str, empty: bool) -> std::result::Result<bool, String> {
        if empty {
            return Ok(true);
        }
        self.skip_misc()?;
        if self.rest().starts_with("</") {
            self.close_tag(name)?;
            return Ok(true);
        }
        Ok(false)
    }

    fn value(&mut self) -> std::result::Result<PlistValue, String> {
        self.skip_misc()?;
        let at = self.pos;
        let (name, empty) = self.open_tag()?;
        let text = |r: &mut Self| if empty { Ok(String::new()) } else { r.text(&name) };
        Ok(match name.as_str() {
            "dict" => {
                let mut entries = Vec::new();
                while !self.container_ends("dict", empty)? {
                    let (k, k_empty) = self.open_tag()?;
                    if k != "key" {
                        return Err(format!("expected <key> in <dict>, found <{k}>"));
                    }
                    let key = if k_empty { String::new() } else { self.text("key")? };
                    entries.push((key, self.value()?));
                }
                PlistValue::Dict(entries)
            }
            "array" => {
                let mut items = Vec::new();
                while !self.container_ends("array", empty)? {
                    items.push(self.value()?);
                }
                PlistValue::Array(items)
            }
            "string" => PlistValue::String(text(self)?),
            "integer" => {
                let t = text(self)?;
                let t = t.trim();
                let n = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
                    Some(hex) => i64::from_str_radix(hex, 16).ok(),
                    None => t.parse().ok(),
                };
                PlistValue::Integer(n.ok_or_else(|| format!("bad <integer> {t:?} at byte {at}"))?)
            }
            "real" => {
                let t = text(self)?;
                PlistValue::Real(t.trim().parse().map_err(|_| format!("bad <real> {t:?} at byte {at}"))?)
            }
            "true" | "false" => {
                if !empty {
                    self.skip_misc()?;
                    self.close_tag(&name)?;
                }
                PlistValue::Bool(name == "true")
            }
            "data" | "date" => PlistValue::Other(text(self)?),
            other => return Err(format!("unknown plist element <{other}> at byte {at}")),
        })
    }
}

fn decode_entities(s: &str) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let semi = rest[amp..].find(';').ok_or_else(|| format!("unterminated entity in {s:?}"))? + amp;
        let entity = &rest[amp + 1..semi];
        let c = match entity {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = match entity.strip_prefix("#x").or_else(|| entity.strip_prefix("#X")) {
                    Some(hex) => u32::from_str_radix(hex, 16).ok(),
                    None => entity.strip_prefix('#').and_then(|d| d.parse().ok()),
                };
                code.and_then(char::from_u32).ok_or_else(|| format!("unknown entity &{entity};"))?
            }
        };
        out.push(c);
        rest = &rest[semi + 1..];
    }
    out.push_str(rest);
    Ok(out)
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
        let plist = launchd_plist(&Invocation::for_test("/Users/me/Homer & <co>"), &cfg).unwrap();
        assert_eq!(check_launchd(plist.as_bytes(), &cfg), Vec::<String>::new());
        let root = parse_xml_plist(&plist).unwrap();
        assert_eq!(
            root.get("EnvironmentVariables").and_then(|e| e.get("HOMER_HOME")),
            Some(&PlistValue::String(String::from("/Users/me/Homer & <co>")))
        );
        let unit = systemd::unit(&Invocation::for_test("/home/me/homer"), &cfg);
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(check_systemd(&dir.path().join("none.service"), unit.as_bytes(), &cfg), Vec::<String>::new());
    }

    #[test]
    fn plist_checks_name_each_contradiction() {
        let cfg = Config::default();
        let doc = |body: &str| format!("<?xml version=\"1.0\"?>\n<plist version=\"1.0\"><dict>{body}</dict></plist>");
        let w = check_launchd(doc("<key>KeepAlive</key><true/><key>ExitTimeOut</key><integer>30</integer><key>AbandonProcessGroup</key><true/>").as_bytes(), &cfg);
        assert_eq!(w.len(), 3, "{w:#?}");
        assert!(
            w[0].contains("KeepAlive is true")
                && w[1].contains("ExitTimeOut 30s")
                && w[2].contains("AbandonProcessGroup"),
            "{w:#?}"
        );
        let w = check_launchd(
            doc("<key>KeepAlive</key><dict><key>Crashed</key><true/></dict><key>ExitTimeOut</key><integer>0</integer>")
                .as_bytes(),
            &cfg,
        );
        assert_eq!(w.len(), 1, "{w:#?}");
        assert!(w[0].contains("no SuccessfulExit = false"), "{w:#?}");
        let w =
            check_launchd(doc("<key>KeepAlive</key><dict><key>SuccessfulExit</key><false/></dict>").as_bytes(), &cfg);
        assert!(w.len() == 1 && w[0].contains("not set; launchd's default"), "{w:#?}");
        assert!(check_launchd(b"bplist00...", &cfg)[0].contains("binary plist"));
        assert!(check_launchd(b"<plist><dict><key>A</key></dict></plist>", &cfg)[0].starts_with("cannot parse"));
    }

    #[test]
    fn plist_reader_handles_markup_entities_and_errors() {
        let v = parse_xml_plist(
            "<?xml version=\"1.0\"?><!DOCTYPE plist PUBLIC \"x\" \"y\"><!-- c --><plist version=\"1.0\">\n<dict>\
             <key>S</key><string>a &amp; b &#x41;&#66; <![CDATA[<raw>]]></string>\
             <key>E</key><string/><key>N</key><integer>-7</integer><key>R</key><real>1.5</real>\
             <key>A</key><array><true/><false></false></array><key>D</key><data>AA==</data></dict></plist>\n",
        )
        .unwrap();
        assert_eq!(v.get("S"), Some(&PlistValue::String(String::from("a & b AB <raw>"))));
        assert_eq!(v.get("E"), Some(&PlistValue::String(String::new())));
        assert_eq!(v.get("N"), Some(&PlistValue::Integer(-7)));
        assert_eq!(v.get("R"), Some(&PlistValue::Real(1.5)));
        assert_eq!(v.get("A"), Some(&PlistValue::Array(vec![PlistValue::Bool(true), PlistValue::Bool(false)])));
        assert_eq!(v.get("D"), Some(&PlistValue::Other(String::from("AA=="))));
        assert!(parse_xml_plist("<plist><dict><key>A</key><string>x</dict></plist>").is_err());
        assert!(parse_xml_plist("<plist><foo/></plist>").is_err());
        assert!(parse_xml_plist("<plist><string>&bogus;</string></plist>").is_err());
        assert!(parse_xml_plist("<plist><true/></plist> trailing").is_err());
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

    #[test]
    fn plist_text_refuses_control_characters() {
        assert!(xml_text("a\u{1}b").is_err());
        assert_eq!(xml_text("a&<>b").unwrap(), "a&amp;&lt;&gt;b");
    }
}
