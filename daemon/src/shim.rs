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
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_PDEATHSIG takes the signal number as its only argument; the
        // unused variadic arguments are passed as zero, as prctl(2) recommends.
        let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) };
        if rc != 0 {
            eprintln!("homerd job-shim: cannot set the parent-death signal: {}", std::io::Error::last_os_error());
            return EXIT_NOT_RELEASED;
        }
    }
    // SAFETY: getppid has no preconditions and cannot fail.
    let ppid = unsafe { libc::getppid() };
    if u32::try_from(ppid).ok() != Some(parent) {
        // The daemon that spawned us is gone (we were reparented), or we were started
        // by something else: never run the job.
        return EXIT_NOT_RELEASED;
    }
    let Some(program) = argv.first() else {
        eprintln!("homerd job-shim: no command given");
        return EXIT_NOT_RELEASED;
    };
    match read_release_byte() {
        Ok(true) => {}
        Ok(false) => return EXIT_NOT_RELEASED,
        Err(e) => {
            eprintln!("homerd job-shim: cannot read the release pipe (fd {RELEASE_FD}): {e}");
            return EXIT_NOT_RELEASED;
        }
    }
    // SAFETY: fd 3 is the release pipe handed to us by the daemon; nothing else in this
    // process uses it, and the job must not inherit it.
    unsafe { libc::close(RELEASE_FD) };
    // The job's directory is entered only now, after the release: one that vanished
    // since the enqueue fails this run, its cause the run's last stderr line (what
    // `homerd show` prints), and a relative program path resolves against it.
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

/// Blocks until one byte (`Ok(true)`) or EOF (`Ok(false)`) arrives on fd 3.
fn read_release_byte() -> std::io::Result<bool> {
    let mut byte = 0u8;
    loop {
        // SAFETY: reading at most one byte into a valid one-byte buffer.
        let n = unsafe { libc::read(RELEASE_FD, (&mut byte as *mut u8).cast(), 1) };
        match n {
            1 => return Ok(true),
            0 => return Ok(false),
            _ => {
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
}
