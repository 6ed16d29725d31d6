//! Command-line parsing (clap) and dispatch to the subcommands in `cmd/`; maps errors to
//! the documented exit codes.

use std::path::PathBuf;

use clap::{ArgAction, Parser, Subcommand};

use crate::cmd::context::Context;
use crate::cmd::{doctor, enqueue, logs, maintain, operate, run, service, status, wait};
use crate::error::{exit, Error};
use crate::events::{self, Format, Level};

#[derive(Debug, Parser)]
#[command(
    name = "homerd",
    version,
    about = "A local job daemon that never runs twice and never loses or double-runs a job",
    long_about = None,
    after_help = "Exit codes: 0 ok (also: another instance is running; stdout closed by its reader), \
1 a doctor check failed, 64 usage, \
3 job in the wrong state, 4 a waited job failed, 5 cancelled, 6 wait timed out, 65 bad database, 66 no such job, \
69 lock unsupported, 70 internal, \
73 unsafe path, 74 I/O, 75 in use, 76 fenced, 77 permission, 78 config. See README.md."
)]
pub struct Cli {
    /// Directory holding the database, the default lock file and the logs
    #[arg(long, global = true, env = "HOMER_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// Lock file (default: <home>/homer.lock)
    #[arg(long, global = true, env = "HOMER_LOCK_FILE", value_name = "PATH")]
    pub lock_file: Option<PathBuf>,
    /// TOML configuration file (default: <home>/homerd.toml if present)
    #[arg(long, global = true, env = "HOMER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The queue: a postgres:// URL shared by many daemons, or `sqlite` (the default:
    /// <home>/homer.db). Same as the `database` setting and HOMER_DATABASE
    #[arg(long, global = true, value_name = "URL", hide_env_values = true)]
    pub database: Option<String>,
    /// Override one configuration key (repeatable), e.g. --set heartbeat_interval=2s
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Event format on stderr (and in the log file)
    #[arg(long, global = true, value_enum, default_value = "human", env = "HOMER_LOG_FORMAT")]
    pub log_format: Format,
    /// Least severe event shown and logged: debug, info, warn or error (default: the
    /// log_level setting, info)
    #[arg(long, global = true, value_enum, value_name = "LEVEL", conflicts_with_all = ["verbose", "quiet"])]
    pub log_level: Option<Level>,
    /// More events: -v adds DEBUG lines (one level below the log_level setting per -v)
    #[arg(short, long, global = true, action = ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Fewer events: -q keeps WARN and ERROR, -qq only ERROR
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub quiet: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground until SIGTERM or SIGINT
    Run,
    /// Show job counts and whether a daemon is active (never touches the lock)
    Status {
        /// Machine-readable output (with --watch: one object per refresh, one per line)
        #[arg(long)]
        json: bool,
        /// Refresh until Ctrl-C: in place on a terminal, re-printed otherwise
        #[arg(long)]
        watch: bool,
        /// How often --watch refreshes (e.g. 500ms, 1m30s)
        #[arg(long, value_name = "DURATION", default_value = "1s", requires = "watch")]
        interval: String,
    },
    /// Check a deployment: lock file, daemon, migrations, lock columns, job statuses, heartbeats, stuck jobs
    Doctor {
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Apply pending migrations (refuses while a daemon is running)
    Migrate {
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Copy the database to PATH as one consistent snapshot (safe while the daemon runs)
    Backup {
        /// Destination file; must not exist
        path: PathBuf,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Add a job; prints its id once it is durably committed
    #[command(after_help = "Kinds: noop | sleep DURATION | fail [MESSAGE] | exec -- PROGRAM [ARGS...] | crash\n\
Examples:\n  homerd enqueue sleep 30s\n  homerd enqueue --lane io --timeout 10m exec -- rsync -a src/ dst/")]
    Enqueue {
        /// Idempotency key: enqueueing the same key again prints the existing job's id
        #[arg(long, value_name = "KEY")]
        key: Option<String>,
        /// Enqueue every job in FILE (`-` for stdin), one JSON object per line, in one
        /// transaction: {"kind", "args", "lane", "max_attempts", "timeout", "run_after", "key"}
        #[arg(long, value_name = "FILE", conflicts_with_all = ["kind", "key", "max_attempts", "timeout", "run_after", "cwd", "env"])]
        from: Option<PathBuf>,
        /// Lane (jobs in one lane run FIFO, under the lane's concurrency cap)
        #[arg(long, default_value = "default")]
        lane: String,
        /// Attempts before the job is failed (default: the max_attempts setting)
        #[arg(long, value_name = "N")]
        max_attempts: Option<u32>,
        /// Kill the run after this long (e.g. 90s, 1h30m); counts as a failed attempt
        #[arg(long, value_name = "DURATION")]
        timeout: Option<String>,
        /// Do not start before this much time from now (e.g. 5m, 1h30m, "2d 3h"), or before
        /// an RFC 3339 time (e.g. 2026-12-05T10:00:00Z, 2026-12-05T11:00:00+01:00; a past
        /// time is due at once); at most 36500d ahead
        #[arg(long, value_name = "DURATION|TIME")]
        run_after: Option<String>,
        /// exec: the directory the program runs in (default: this command's directory;
        /// relative to it when relative); must exist
        #[arg(long, value_name = "DIR")]
        cwd: Option<PathBuf>,
        /// exec: set a variable for the job (repeatable); the job otherwise gets the
        /// daemon's environment, never this command's
        #[arg(long, value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Job kind: noop, sleep, fail, exec or crash
        #[arg(required_unless_present = "from")]
        kind: Option<String>,
        /// The kind's arguments (for exec: `-- PROGRAM [ARGS...]`)
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
        /// Machine-readable output: {"id": N} (one per line with --from); goes before the kind
        #[arg(long)]
        json: bool,
    },
    /// List jobs, newest first
    List {
        /// Only jobs in this status (pending, running, completed, failed, cancelled)
        #[arg(long)]
        status: Option<String>,
        /// Only jobs in this lane
        #[arg(long)]
        lane: Option<String>,
        /// At most this many
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Show one job: its fields, every run and its error history
    Show {
        id: i64,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Print a run's output (default: the latest run's stdout)
    #[command(after_help = "With -f: exit 0 when the job completed, 4 failed, 5 cancelled (see README, Exit codes).")]
    Logs {
        /// The job's id
        id: i64,
        /// This run (1, 2, ...; `homerd show` lists them) instead of the latest
        #[arg(long, value_name = "N")]
        run: Option<u32>,
        /// The run's stderr instead of its stdout
        #[arg(long, conflicts_with = "both")]
        stderr: bool,
        /// Both: the run's stdout to stdout, its stderr to stderr
        #[arg(long)]
        both: bool,
        /// Follow the job until it ends (across retries), then exit with its outcome
        #[arg(short = 'f', long)]
        follow: bool,
        /// Start with the last N lines (of each file)
        #[arg(long, value_name = "N")]
        tail: Option<usize>,
        /// Refused (64): logs prints the job's own bytes, which are not JSON; `show ID
        /// --json` names the run's log files
        #[arg(long)]
        json: bool,
    },
    /// Wait until the jobs are completed, failed or cancelled
    #[command(after_help = "Exit: 0 all completed, 4 one failed, 5 one cancelled (none failed), \
6 --timeout reached first, 66 no such job (see README, Exit codes).")]
    Wait {
        /// The jobs' ids
        #[arg(required = true, value_name = "ID")]
        ids: Vec<i64>,
        /// Give up after this long (e.g. 10m, 1h30m); default: wait as long as it takes
        #[arg(long, value_name = "DURATION")]
        timeout: Option<String>,
        /// Machine-readable output: one {"id", "status", "ended", "completed_at"} per job
        /// as it ends (and, when --timeout runs out, per job still open)
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job: a pending one at once; a running one is stopped by the daemon
    Cancel {
        id: i64,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Put a failed or cancelled job back to pending with a fresh attempt budget
    Retry {
        id: i64,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Print a launchd plist or systemd user unit that runs this homerd binary with these
    /// paths (install: README.md, "Service install")
    #[command(
        after_help = "The unit runs `homerd [--home DIR] [--lock-file PATH] [--config FILE] [--set K=V]... run` \
with this invocation's resolved home and any of the others given here. launchd: \
~/Library/LaunchAgents/dev.homer.homerd.plist; systemd: ~/.config/systemd/user/homerd.service."
    )]
    Service {
        /// The supervisor
        #[arg(value_enum)]
        manager: service::Manager,
        /// Machine-readable output: {"manager", "unit"}
        #[arg(long)]
        json: bool,
    },
    /// Print a completion script for SHELL to stdout (reads no configuration, touches nothing)
    #[command(after_help = "Install (then start a new shell):\n  \
bash: homerd completions bash > ~/.local/share/bash-completion/completions/homerd\n  \
zsh:  homerd completions zsh > ~/.zfunc/_homerd   (with fpath+=(~/.zfunc) before compinit in ~/.zshrc)\n  \
fish: homerd completions fish > ~/.config/fish/completions/homerd.fish")]
    Completions {
        #[arg(value_enum)]
        shell: CompletionShell,
    },
    /// (internal) Write the man pages (homerd.1, homerd-<command>.1) into DIR: `cargo xtask man`
    #[command(hide = true, name = "man-pages")]
    ManPages { dir: PathBuf },
    /// (internal) The group guardian: kills the daemon's job groups when it dies
    #[command(hide = true, name = "group-guardian")]
    GroupGuardian {
        #[arg(long)]
        parent: u32,
        #[arg(long)]
        grace_ms: u64,
    },
}

impl Command {
    /// Whether the command was asked for JSON (`--json`): its output, and its error, are
    /// then JSON (README "The JSON contract"). `run` speaks in events (`--log-format`).
    pub fn json(&self) -> bool {
        match self {
            Command::Run | Command::GroupGuardian { .. } | Command::Completions { .. } | Command::ManPages { .. } => {
                false
            }
            Command::Status { json, .. }
            | Command::Doctor { json }
            | Command::Migrate { json }
            | Command::Backup { json, .. }
            | Command::Enqueue { json, .. }
            | Command::List { json, .. }
            | Command::Show { json, .. }
            | Command::Logs { json, .. }
            | Command::Wait { json, .. }
            | Command::Cancel { json, .. }
            | Command::Retry { json, .. }
            | Command::Service { json, .. } => *json,
        }
    }
}

/// The shells `homerd completions` writes for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

/// `homerd completions SHELL`: the script on stdout.
fn completions(shell: CompletionShell) -> Result<i32, Error> {
    use clap::CommandFactory;
    let shell = match shell {
        CompletionShell::Bash => clap_complete::Shell::Bash,
        CompletionShell::Zsh => clap_complete::Shell::Zsh,
        CompletionShell::Fish => clap_complete::Shell::Fish,
    };
    // clap_complete offers hidden subcommands too: complete a copy without them (the
    // built command's arguments include help and version, so the copy adds neither).
    let mut full = Cli::command();
    full.build();
    let mut visible = clap::Command::new("homerd")
        .version(env!("CARGO_PKG_VERSION"))
        .disable_help_flag(true)
        .disable_version_flag(true)
        .args(full.get_arguments().cloned())
        // `help` is made afresh from the visible ones (the built one lists them all).
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help").cloned());
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut visible, "homerd", &mut script);
    crate::output::bytes(&script)?;
    Ok(exit::OK)
}

/// Whether `--json` is among the arguments before any `--`: how a command line clap
/// refused still gets its usage error as JSON.
fn json_requested(args: impl IntoIterator<Item = std::ffi::OsString>) -> bool {
    args.into_iter().take_while(|a| a != "--").any(|a| a == "--json")
}

/// Prints an error on stderr: `homerd: error: MESSAGE`, or under `--json` one line
/// `{"error", "code", "kind"}`. A closed stderr is ignored (there is nowhere left to say it).
pub(crate) fn report_error(as_json: bool, e: &Error) {
    use std::io::Write;
    let line = if as_json { e.to_json().to_string() } else { format!("homerd: error: {e}") };
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// `homerd man-pages DIR`: `homerd.1` and one page per visible subcommand, written into
/// DIR (which must exist: `cargo xtask man` creates it under target/).
fn man_pages(dir: &std::path::Path) -> i32 {
    use clap::CommandFactory;
    if !dir.is_dir() {
        eprintln!("homerd: error: {}: not a directory; create it first", dir.display());
        return exit::NOT_FOUND;
    }
    match clap_mangen::generate_to(Cli::command(), dir) {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("homerd: error: cannot write man pages into {}: {e}", dir.display());
            exit::IO
        }
    }
}

/// Entry point for the binary: returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { exit::USAGE } else { exit::OK };
            if code == exit::USAGE && json_requested(std::env::args_os().skip(1)) {
                // clap's first paragraph is the error; the usage and tip after it are for people.
                let text = e.render().to_string();
                let first: Vec<&str> = text.lines().take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
                report_error(true, &Error::Usage(first.join(" ").trim_start_matches("error: ").to_owned()));
            } else {
                // Help and version go to stdout; a closed one is the reader's choice.
                let _ = e.print();
            }
            return code;
        }
    };
    if let Command::GroupGuardian { parent, grace_ms } = &cli.command {
        // Like the shim: no configuration, no files; it only watches its stdin.
        return crate::guardian::guardian_main(*parent, std::time::Duration::from_millis(*grace_ms));
    }
    // Neither reads configuration nor touches anything: they describe the CLI.
    match &cli.command {
        Command::Completions { shell } => {
            return completions(*shell).unwrap_or_else(|e| match e {
                Error::StdoutClosed => e.exit_code(),
                e => {
                    report_error(false, &e);
                    e.exit_code()
                }
            })
        }
        Command::ManPages { dir } => return man_pages(dir),
        _ => {}
    }
    let is_run = matches!(cli.command, Command::Run);
    let as_json = cli.command.json();
    // Under --json every line on stderr is JSON too: the events, and the error.
    events::init(if as_json { Format::Json } else { cli.log_format });
    // Until the configuration is read (it may name another level), the flags over INFO.
    events::set_level(
        cli.log_level.unwrap_or_else(|| Level::Info.shifted(i32::from(cli.verbose) - i32::from(cli.quiet))),
    );
    if is_run {
        // The daemon never waits on its stderr (events.rs).
        events::detach_stderr();
    }
    let code = match dispatch(cli) {
        Ok(code) => code,
        // The reader closed stdout: end quietly (`output.rs`).
        Err(Error::StdoutClosed) => Error::StdoutClosed.exit_code(),
        Err(e) => {
            let code = e.exit_code();
            if is_run {
                events::error("daemon.error", e.to_string()).field("exit_code", code).emit();
            } else {
                report_error(as_json, &e);
            }
            code
        }
    };
    events::flush_stderr(events::STDERR_FLUSH);
    code
}

fn dispatch(cli: Cli) -> Result<i32, Error> {
    // What `service` passes on to the daemon it installs (before the paths consume it).
    let passed = service::Passed {
        lock_file: cli.lock_file.is_some(),
        config: cli.config.clone(),
        sets: cli.set.clone(),
        database: cli.database.clone(),
    };
    let (flag, shift) = (cli.log_level, i32::from(cli.verbose) - i32::from(cli.quiet));
    let mut ctx = Context::load(cli.home, cli.lock_file, cli.config, cli.set)?;
    if let Some(url) = &cli.database {
        ctx.config.set("database", url, "--database")?;
    }
    events::set_level(flag.unwrap_or_else(|| ctx.config.log_level.shifted(shift)));
    match cli.command {
        Command::Run => run::run(ctx),
        Command::Status { json, watch: false, .. } => status::status(&ctx, json),
        Command::Status { json, watch: true, interval } => status::watch(&ctx, &interval, json),
        Command::Doctor { json } => doctor::doctor(&ctx, json),
        Command::Migrate { json } => maintain::migrate(&ctx, json),
        Command::Backup { path, json } => maintain::backup(&ctx, &path, json),
        Command::Enqueue { key, from, lane, max_attempts, timeout, run_after, cwd, env, kind, args, json } => {
            match from {
                Some(file) => enqueue::enqueue_from(&ctx, &file, json),
                None => {
                    let kind = kind.expect("clap requires a kind without --from");
                    let spec =
                        enqueue::EnqueueSpec { lane, max_attempts, timeout, run_after, kind, args, key, cwd, env };
                    enqueue::enqueue(&ctx, spec, json)
                }
            }
        }
        Command::List { status, lane, limit, json } => operate::list(&ctx, status, lane, limit, json),
        Command::Show { id, json } => operate::show(&ctx, id, json),
        Command::Logs { id, run, stderr, both, follow, tail, json } => {
            let streams = match (stderr, both) {
                (_, true) => logs::Streams::Both,
                (true, false) => logs::Streams::Stderr,
                (false, false) => logs::Streams::Stdout,
            };
            logs::logs(&ctx, logs::LogsSpec { id, run, streams, follow, tail, json })
        }
        Command::Wait { ids, timeout, json } => wait::wait(&ctx, &ids, timeout.as_deref(), json),
        Command::Cancel { id, json } => operate::cancel(&ctx, id, json),
        Command::Retry { id, json } => operate::retry(&ctx, id, json),
        Command::Service { manager, json } => service::print(&ctx.paths, manager, &passed, json),
        Command::GroupGuardian { .. } | Command::Completions { .. } | Command::ManPages { .. } => {
            unreachable!("handled before configuration is loaded")
        }
    }
}
