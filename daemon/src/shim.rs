//! The job shim: `homerd-shim job-shim --parent PID [--cwd DIR] [--nofile N] -- ARGV...`
//! (`homerd-shim` is this module as a small program of its own, `src/shim_main.rs`; the
//! same command line also works as a hidden subcommand of `homerd`, the fallback when
//! `homerd-shim` is not installed beside it). Its messages say `homerd job-shim` either way.
//!
//! [`crate::children`] starts every job through this shim so the job is *held*: the shim
//! is already running in the job's own process group — its pid, pgid and start time can
//! be recorded in `job_runs` — but the job's argv has not run yet. The shim blocks
//! reading one byte from its stdin, the read end of a pipe whose only write end is held
//! by the daemon:
//!
//! - a byte arrives ([`crate::children::HeldChild::release`]): put `/dev/null` on fd 0
//!   (the job never sees the pipe; its stdin is `/dev/null`, as every job's is), restore
//!   the descriptor limit the daemon was started with (`--nofile`), enter the job's
//!   directory and `exec` the argv in this same process, so the job keeps the pid, the
//!   process group and the start time that were recorded;
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
//! The shim is dispatched first thing in `main` ([`dispatch`]), before the CLI parser is
//! even built: it runs once per job, so its start-up is on every job's path, and it runs
//! with the job's environment (every `HOMERD_*` variable removed) and must do nothing but
//! the steps above — no configuration, no files. Its command line is this module's own
//! ([`args_before_argv`] writes it, [`dispatch`] reads it), so it is not part of the CLI.

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// The hidden subcommand name.
pub const SUBCOMMAND: &str = "job-shim";

/// What a `homerd-shim` file must carry for a daemon to run jobs through it: this build's
/// version and the shim protocol (its command line and exit codes; bump the number when
/// they change). `homerd-shim` keeps these bytes in its image (`shim_main.rs`), and the
/// daemon looks for them before it uses the file ([`crate::platform::job_shim_program`]),
/// so a `homerd` copied over an older install does not hand its jobs to a shim from another
/// build: it starts them through its own `job-shim` subcommand instead, and says so.
pub const MARK: &[u8] = concat!("\0homerd-shim/", env!("CARGO_PKG_VERSION"), "/protocol-1\0").as_bytes();

/// Whether `file`, read from where it stands to its end, holds [`MARK`]: a scan in 1 MiB
/// pieces (a release shim is about 2 MB), each overlapping the last by the mark's length.
pub fn carries_mark(file: &mut impl std::io::Read) -> std::io::Result<bool> {
    let finder = memchr::memmem::Finder::new(MARK);
    let mut buf = vec![0u8; 1 << 20];
    let mut kept = 0;
    loop {
        let n = match file.read(&mut buf[kept..]) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let end = kept + n;
        if finder.find(&buf[..end]).is_some() {
            return Ok(true);
        }
        if n == 0 {
            return Ok(false);
        }
        // Keep the tail that could be the start of a mark cut at the piece's end.
        kept = (MARK.len() - 1).min(end);
        buf.copy_within(end - kept..end, 0);
    }
}

/// The shim exited without running the job: never released (EOF on stdin), its parent
/// is not the daemon that spawned it, or its stdin / the arguments are unusable.
pub const EXIT_NOT_RELEASED: i32 = 125;

/// The shim was released but could not enter the job's directory or `exec` its argv.
pub const EXIT_CANNOT_EXEC: i32 = 127;

/// The arguments that precede the job's argv on the shim's command line:
/// `job-shim --parent PID [--cwd DIR] [--nofile N] --`.
pub fn args_before_argv(parent: u32, cwd: Option<&Path>, nofile: Option<u64>) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![SUBCOMMAND.into(), "--parent".into(), parent.to_string().into()];
    if let Some(dir) = cwd {
        args.push("--cwd".into());
        args.push(dir.as_os_str().to_owned());
    }
    if let Some(soft) = nofile {
        args.push("--nofile".into());
        args.push(soft.to_string().into());
    }
    args.push("--".into());
    args
}

/// `Some(exit code)` when this process is a job shim (`argv[1]` is [`SUBCOMMAND`]): the
/// shim ran and did not `exec` the job. `None`: any other command, for the CLI.
pub fn dispatch(mut args: impl Iterator<Item = OsString>) -> Option<i32> {
    let _argv0 = args.next();
    if args.next()? != SUBCOMMAND {
        return None;
    }
    let (mut parent, mut cwd, mut nofile) = (None, None, None);
    let refuse = |what: String| {
        eprintln!("homerd job-shim: {what} (the daemon starts this command; it is not for people)");
        Some(EXIT_NOT_RELEASED)
    };
    loop {
        let Some(flag) = args.next() else { return refuse(String::from("no `--` before the command")) };
        let flag = flag.to_string_lossy().into_owned();
        if flag == "--" {
            break;
        }
        let Some(value) = args.next() else { return refuse(format!("{flag} needs a value")) };
        match flag.as_str() {
            "--parent" => parent = value.to_str().and_then(|v| v.parse::<u32>().ok()),
            "--cwd" => cwd = Some(std::path::PathBuf::from(value)),
            "--nofile" => match value.to_str().and_then(|v| v.parse::<u64>().ok()) {
                Some(n) => nofile = Some(n),
                None => return refuse(format!("--nofile {} is not a number", value.to_string_lossy())),
            },
            _ => return refuse(format!("unexpected argument {flag}")),
        }
    }
    let Some(parent) = parent else { return refuse(String::from("--parent PID is required")) };
    let argv: Option<Vec<String>> = args.map(|a| a.into_string().ok()).collect();
    let Some(argv) = argv else { return refuse(String::from("the command is not UTF-8")) };
    Some(shim_main(parent, cwd.as_deref(), nofile, &argv))
}

/// Runs the shim; returns the exit code when it does not `exec` the job.
pub fn shim_main(parent: u32, cwd: Option<&Path>, nofile: Option<u64>, argv: &[String]) -> i32 {
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
    // The release pipe is stdin; anything else there (a shim started by hand from a
    // terminal or with /dev/null) is not waited on.
    let stdin = std::io::stdin();
    let is_pipe = rustix::fs::fstat(stdin.as_fd())
        .map(|st| rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Fifo);
    if !matches!(is_pipe, Ok(true)) {
        eprintln!("homerd job-shim: no release pipe on stdin");
        return EXIT_NOT_RELEASED;
    }
    match read_release_byte(stdin.as_fd()) {
        Ok(true) => {}
        Ok(false) => return EXIT_NOT_RELEASED,
        Err(e) => {
            eprintln!("homerd job-shim: cannot read the release pipe (stdin): {e}");
            return EXIT_NOT_RELEASED;
        }
    }
    // The job's stdin is /dev/null; the dup closes the pipe's last descriptor here.
    if let Err(e) = std::fs::File::open("/dev/null").and_then(|null| Ok(rustix::stdio::dup2_stdin(&null)?)) {
        eprintln!("homerd job-shim: cannot put /dev/null on stdin: {e}");
        return EXIT_CANNOT_EXEC;
    }
    // The descriptor limit the daemon was started with (it raised its own; rlimit.rs).
    if let Some(soft) = nofile {
        if let Err(e) = crate::rlimit::restore_in_child(soft) {
            eprintln!("homerd job-shim: cannot restore the open-file limit {soft}: {e}");
            return EXIT_CANNOT_EXEC;
        }
    }
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

/// Blocks until one byte (`Ok(true)`) or EOF (`Ok(false)`) arrives on the release pipe.
/// Unbuffered: std's `Stdin` would read ahead into a buffer of its own.
fn read_release_byte(pipe: std::os::fd::BorrowedFd<'_>) -> std::io::Result<bool> {
    let mut byte = [0u8; 1];
    loop {
        match rustix::io::read(pipe, &mut byte) {
            Ok(n) => return Ok(n == 1),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> impl Iterator<Item = OsString> {
        std::iter::once(OsString::from("homerd"))
            .chain(words.iter().map(OsString::from))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn only_the_shim_subcommand_is_dispatched() {
        assert_eq!(dispatch(args(&[])), None);
        assert_eq!(dispatch(args(&["run"])), None);
        assert_eq!(dispatch(args(&["status", "job-shim"])), None);
    }

    /// Every malformed shim command line exits 125 before anything is waited on or run
    /// (a well-formed one would wait on this test's stdin, so it is left to children.rs's
    /// tests, which start the real shim).
    #[test]
    fn a_malformed_shim_command_line_runs_nothing() {
        for bad in [
            &["job-shim"][..],
            &["job-shim", "--parent", "1"],
            &["job-shim", "--parent"],
            &["job-shim", "--", "true"],
            &["job-shim", "--parent", "x", "--", "true"],
            &["job-shim", "--parent", "1", "--nofile", "many", "--", "true"],
            &["job-shim", "--parent", "1", "--verbose", "yes", "--", "true"],
        ] {
            assert_eq!(dispatch(args(bad)), Some(EXIT_NOT_RELEASED), "{bad:?}");
        }
    }

    /// The mark is found wherever it stands, also cut across two of the scan's pieces, and
    /// not in a file without it.
    #[test]
    fn the_build_mark_is_found_across_pieces() {
        for at in [0, 100, (1 << 20) - 5, (1 << 20) - MARK.len(), 3 << 20] {
            let mut data = vec![7u8; (4 << 20) + 10];
            data[at..at + MARK.len()].copy_from_slice(MARK);
            assert!(carries_mark(&mut std::io::Cursor::new(&data)).unwrap(), "at {at}");
        }
        let mut other = vec![7u8; 3 << 20];
        other[5..5 + MARK.len() - 1].copy_from_slice(&MARK[..MARK.len() - 1]);
        assert!(!carries_mark(&mut std::io::Cursor::new(&other)).unwrap());
        assert!(!carries_mark(&mut std::io::empty()).unwrap());
    }

    #[test]
    fn the_arguments_written_are_the_arguments_read() {
        let written = args_before_argv(42, Some(Path::new("/some dir")), Some(256));
        let words: Vec<String> = written.iter().map(|w| w.to_string_lossy().into_owned()).collect();
        assert_eq!(words, ["job-shim", "--parent", "42", "--cwd", "/some dir", "--nofile", "256", "--"]);
        assert_eq!(args_before_argv(7, None, None), ["job-shim", "--parent", "7", "--"]);
    }
}
