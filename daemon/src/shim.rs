//! The job shim: `homerd job-shim --parent PID -- ARGV...` (a hidden subcommand).
//!
//! [`crate::children`] starts every job through this shim so the job is *held*: the shim
//! is already running in the job's own process group — its pid, pgid and start time can
//! be recorded in `job_runs` — but the job's argv has not run yet. The shim blocks
//! reading one byte from fd 3, the read end of a pipe whose only write end is held by
//! the daemon:
//!
//! - a byte arrives ([`crate::children::HeldChild::release`]): close fd 3 (the job never
//!   sees the pipe) and `exec` the argv in this same process, so the job keeps the pid,
//!   the process group and the start time that were recorded;
//! - EOF (the daemon died, or dropped the child without releasing it, e.g. because its
//!   record was fenced): exit [`EXIT_NOT_RELEASED`] without running anything.
//!
//! On Linux the shim first asks for `SIGKILL` when its parent dies (`PR_SET_PDEATHSIG`,
//! which survives the `exec`, so the job leader inherits it), then checks that its parent
//! is still the daemon that spawned it: a daemon that died before the `prctl` would
//! otherwise never trigger it. macOS has no parent-death signal: there the daemon relies
//! on startup recovery ([`crate::children::kill_recorded_group`]) killing every recorded
//! group before any re-run.
//!
//! The shim must be dispatched before the CLI reads configuration, opens files or
//! starts a runtime: it runs with the job's environment (every `HOMERD_*` variable
//! removed) and must do nothing but the steps above.

use std::ffi::OsString;
use std::os::fd::FromRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// The hidden subcommand name.
pub const SUBCOMMAND: &str = "job-shim";

/// The descriptor the shim reads its release byte from (fixed, so no `HOMERD_*`
/// variable has to carry it to the job's environment).
pub const RELEASE_FD: i32 = 3;

/// The shim exited without running the job: never released (EOF on fd 3), its parent
/// is not the daemon that spawned it, or fd 3 / the arguments are unusable.
pub const EXIT_NOT_RELEASED: i32 = 125;

/// The shim was released but could not enter the job's directory or `exec` its argv.
pub const EXIT_CANNOT_EXEC: i32 = 127;

/// The arguments that precede the job's argv on the shim's command line:
/// `job-shim --parent PID [--cwd DIR] --`.
pub fn args_before_argv(parent: u32, cwd: Option<&Path>) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![SUBCOMMAND.into(), "--parent".into(), parent.to_string().into()];
    if let Some(dir) = cwd {
        args.push("--cwd".into());
        args.push(dir.as_os_str().to_owned());
    }
    args.push("--".into());
    args
}

/// Runs the shim; returns the exit code when it does not `exec` the job.
pub fn shim_main(parent: u32, cwd: Option<&Path>, argv: &[String]) -> i32 {
    // Linux: SIGKILL when the daemon's spawner thread ends; macOS has no such signal.
    if let Err(e) = crate::platform::kill_me_when_parent_dies() {
        eprintln!("homerd job-shim: cannot set the parent-death signal: {e}");
        return EXIT_NOT_RELEASED;
    }
    if std::os::unix::process::parent_id() != parent {
        // The daemon that spawned us is gone (we were reparented), or we were started
        // by something else: never run the job.
        return EXIT_NOT_RELEASED;
    }
    let Some(program) = argv.first() else {
        eprintln!("homerd job-shim: no command given");
        return EXIT_NOT_RELEASED;
    };
    // Something must be open on fd 3 before anything may own it (a shim started by hand
    // may not have it).
    if !crate::platform::descriptor_open(RELEASE_FD) {
        eprintln!("homerd job-shim: no release pipe on fd {RELEASE_FD}");
        return EXIT_NOT_RELEASED;
    }
    // SAFETY: fd 3 is open (checked above) and is the release pipe the daemon put there
    // for us (children.rs); nothing else in this process owns or uses it, so the File
    // may own it, and closes it when dropped: the job must not inherit it.
    let release = unsafe { std::fs::File::from_raw_fd(RELEASE_FD) };
    match read_release_byte(release) {
        Ok(true) => {}
        Ok(false) => return EXIT_NOT_RELEASED,
        Err(e) => {
            eprintln!("homerd job-shim: cannot read the release pipe (fd {RELEASE_FD}): {e}");
            return EXIT_NOT_RELEASED;
        }
    }
    // The job's directory is entered only now, after the release (the File owning fd 3
    // closed it above): one that vanished since the enqueue fails this run, its cause the
    // run's last stderr line (what `homerd show` prints), and a relative program path
    // resolves against it.
    if let Some(dir) = cwd {
        if let Err(e) = std::env::set_current_dir(dir) {
            eprintln!("homerd job-shim: cannot enter the job's working directory {}: {e}", dir.display());
            return EXIT_CANNOT_EXEC;
        }
    }
    // Same process: same pid, process group and start time as recorded. PATH lookup and
    // environment are the ones the daemon gave us; std restores SIGPIPE and the signal
    // mask before exec.
    let err = Command::new(program).args(&argv[1..]).exec();
    eprintln!("homerd job-shim: cannot exec {program}: {err}");
    EXIT_CANNOT_EXEC
}

/// Blocks until one byte (`Ok(true)`) or EOF (`Ok(false)`) arrives on the release
/// pipe; closes it either way.
fn read_release_byte(mut pipe: std::fs::File) -> std::io::Result<bool> {
    use std::io::Read;
    let mut byte = [0u8; 1];
    loop {
        match pipe.read(&mut byte) {
            Ok(n) => return Ok(n == 1),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
