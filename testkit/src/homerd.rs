//! A `homerd` command in a sandbox: the one place that decides what of the caller's
//! environment reaches a daemon under test.

use std::path::Path;
use std::process::Command;

/// Removes every `HOMER_*` and `HOMERD_*` variable the caller has from `cmd`'s
/// environment, except those named in `keep`: a user's home, config or test hooks must
/// never leak into a sandboxed run.
pub fn scrub_homer_env(cmd: &mut Command, keep: &[&str]) {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if (k.starts_with("HOMER_") || k.starts_with("HOMERD_")) && !keep.contains(&k.as_str()) {
            cmd.env_remove(k);
        }
    }
}

/// `program` (a homerd binary) with a scrubbed environment ([`scrub_homer_env`]) whose
/// home is `home`, and HOME and the XDG directories inside `sandbox`, so nothing of the
/// user's (an installed service unit, a config) is seen; JSON events on stderr at every
/// level (`HOMER_LOG_LEVEL=debug`: tests and scenarios wait on DEBUG events such as
/// `daemon.heartbeat` and `job.heartbeat`, which a default daemon does not print), no
/// colour, and the `crash` job kind allowed (a test hook).
pub fn homerd_command(program: &Path, sandbox: &Path, home: &Path, keep: &[&str]) -> Command {
    let mut cmd = Command::new(program);
    scrub_homer_env(&mut cmd, keep);
    cmd.env("HOMER_HOME", home)
        .env("HOME", sandbox)
        .env("XDG_CONFIG_HOME", sandbox.join(".config"))
        .env("XDG_DATA_HOME", sandbox.join(".local/share"))
        .env("HOMER_LOG_FORMAT", "json")
        .env("HOMER_LOG_LEVEL", "debug")
        .env("NO_COLOR", "1")
        .env("HOMERD_ALLOW_CRASH_JOBS", "1");
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(cmd: &Command, key: &str) -> Option<Option<String>> {
        cmd.get_envs().find(|(k, _)| *k == key).map(|(_, v)| v.map(|v| v.to_string_lossy().into_owned()))
    }

    #[test]
    fn the_sandbox_environment_is_set_and_the_callers_is_removed_unless_kept() {
        // The test process's own environment decides what there is to scrub; PATH is never
        // touched. HOMER_TEST_TIME_SCALE may or may not be set here: it is kept either way.
        let cmd =
            homerd_command(Path::new("/bin/true"), Path::new("/s"), Path::new("/s/home"), &["HOMER_TEST_TIME_SCALE"]);
        assert_eq!(env_of(&cmd, "HOMER_HOME"), Some(Some(String::from("/s/home"))));
        assert_eq!(env_of(&cmd, "HOME"), Some(Some(String::from("/s"))));
        assert_eq!(env_of(&cmd, "XDG_CONFIG_HOME"), Some(Some(String::from("/s/.config"))));
        assert_eq!(env_of(&cmd, "HOMER_LOG_FORMAT"), Some(Some(String::from("json"))));
        assert_eq!(env_of(&cmd, "HOMER_LOG_LEVEL"), Some(Some(String::from("debug"))));
        assert!(env_of(&cmd, "HOMER_TEST_TIME_SCALE").is_none(), "kept: neither set nor removed");
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            let ours = [
                "HOMER_HOME",
                "HOMER_LOG_FORMAT",
                "HOMER_LOG_LEVEL",
                "HOMERD_ALLOW_CRASH_JOBS",
                "HOMER_TEST_TIME_SCALE",
            ];
            if (k.starts_with("HOMER_") || k.starts_with("HOMERD_")) && !ours.contains(&k.as_str()) {
                assert_eq!(env_of(&cmd, &k), Some(None), "{k} must be removed");
            }
        }
    }
}
