//! Where things live. One home holds the database, the default lock file and the logs,
//! so one database has one default lock path (the original daemon's lock followed
//! `$HOME` while its database did not).
//!
//! Home: `--home` / `HOMER_HOME`; otherwise macOS `~/Library/Application Support/Homer`
//! (the original daemon's lock directory), Linux `$XDG_DATA_HOME/homer` or `~/.local/share/homer`.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub struct Paths {
    pub home: PathBuf,
    pub database: PathBuf,
    pub lock_file: PathBuf,
    pub logs: PathBuf,
    pub log_file: PathBuf,
    pub default_config: PathBuf,
}

impl Paths {
    pub fn new(home: Option<PathBuf>, lock_file: Option<PathBuf>) -> Paths {
        let home = home.unwrap_or_else(default_home);
        let home = absolute(&home);
        let logs = home.join("logs");
        Paths {
            database: home.join("homer.db"),
            lock_file: lock_file.map(|p| absolute(&p)).unwrap_or_else(|| home.join("homer.lock")),
            log_file: logs.join("homer.log"),
            default_config: home.join("homerd.toml"),
            logs,
            home,
        }
    }
}

impl Paths {
    /// Where `exec` runs write their output: `<home>/logs/runs`.
    pub fn runs_dir(&self) -> PathBuf {
        self.logs.join("runs")
    }

    /// A run's stdout and stderr files: `<runs_dir>/<job>-<run>.out` and `.err`.
    pub fn run_logs(&self, job: i64, run: i64) -> (PathBuf, PathBuf) {
        let base = self.runs_dir().join(format!("{job}-{run}"));
        (base.with_extension("out"), base.with_extension("err"))
    }
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        std::env::current_dir().map(|d| d.join(p)).unwrap_or_else(|_| p.to_owned())
    }
}

fn default_home() -> PathBuf {
    let user_home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/"));
    if cfg!(target_os = "macos") {
        return user_home.join("Library/Application Support/Homer");
    }
    match std::env::var_os("XDG_DATA_HOME").map(PathBuf::from) {
        Some(xdg) if xdg.is_absolute() => xdg.join("homer"),
        _ => user_home.join(".local/share/homer"),
    }
}

/// Creates `path`, which must not exist, empty and mode 0600, before SQLite writes into it
/// (an empty file is an empty database): a database or a snapshot holds every job's
/// arguments, and `cp` keeps the mode when one is restored.
pub fn create_private_file(path: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map(drop)
        .map_err(|e| Error::io("create", path, e))
}
