//! Command-line parsing (clap) and dispatch to the subcommands in `cmd/`; maps errors to
//! the documented exit codes.

use std::path::PathBuf;

use clap::{ArgAction, Parser, Subcommand};

use crate::cmd::context::Context;
use crate::cmd::{doctor, enqueue, maintain, operate, run, service, status};
use crate::error::{exit, Error};
use crate::events::{self, Format, Level};

#[derive(Debug, Parser)]
#[command(
    name = "homerd",
    version,
    about = "A local job daemon that never runs twice and never loses or double-runs a job",
    long_about = None,
    after_help = "Exit codes: 0 ok (also: another instance is running), 1 a doctor check failed, 64 usage, \
3 job in the wrong state, 65 bad database, 66 no such job, 69 lock unsupported, 70 internal, \
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
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Check a deployment: lock file, daemon, migrations, lock columns, heartbeats, stuck jobs
    Doctor {
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Apply pending migrations (refuses while a daemon is running)
    Migrate,
    /// Copy the database to PATH as one consistent snapshot (safe while the daemon runs)
    Backup {
        /// Destination file; must not exist
        path: PathBuf,
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
        #[arg(long, value_name = "FILE", conflicts_with_all = ["kind", "key", "max_attempts", "timeout", "run_after"])]
        from: Option<PathBuf>,
        /// Lane (jobs in one lane run FIFO, under the lane's concurrency cap)
        #[arg(long, default_value = "default")]
        lane: String,
        /// Attempts before the job is failed (default: the max_attempts setting)
        #[arg(long, value_name = "N")]
        max_attempts: Option<u32>,
        /// Kill the run after this long (e.g. 90s); counts as a failed attempt
        #[arg(long, value_name = "DURATION")]
        timeout: Option<String>,
        /// Do not start before this much time from now (e.g. 5m)
        #[arg(long, value_name = "DURATION")]
        run_after: Option<String>,
        /// Job kind: noop, sleep, fail, exec or crash
        #[arg(required_unless_present = "from")]
        kind: Option<String>,
        /// The kind's arguments (for exec: `-- PROGRAM [ARGS...]`)
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
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
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job: a pending one at once; a running one is stopped by the daemon
    Cancel {
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// Put a failed or cancelled job back to pending with a fresh attempt budget
    Retry {
        id: i64,
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
    /// (internal) The held-start shim that job children run through
    #[command(hide = true, name = "job-shim")]
    JobShim {
        #[arg(long)]
        parent: u32,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        argv: Vec<String>,
    },
}

/// The shells `homerd completions` writes for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

/// `homerd completions SHELL`: the script on stdout.
fn completions(shell: CompletionShell) -> i32 {
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
    write_stdout(&script, "the completion script")
}

/// Writes `bytes` to stdout; a write error (a closed pipe, a full disk) is reported and
/// exits 74.
fn write_stdout(bytes: &[u8], what: &str) -> i32 {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("homerd: error: cannot write {what} to stdout: {e}");
            exit::IO
        }
    }
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
            let _ = e.print();
            return code;
        }
    };
    if let Command::JobShim { parent, argv } = &cli.command {
        // The shim must not read configuration or touch anything: it only waits to be
        // released, then execs the job.
        let argv: Vec<String> = argv.iter().skip_while(|a| *a == "--").cloned().collect();
        return crate::shim::shim_main(*parent, &argv);
    }
    // Neither reads configuration nor touches anything: they describe the CLI.
    match &cli.command {
        Command::Completions { shell } => return completions(*shell),
        Command::ManPages { dir } => return man_pages(dir),
        _ => {}
    }
    events::init(cli.log_format);
    // Until the configuration is read (it may name another level), the flags over INFO.
    events::set_level(
        cli.log_level.unwrap_or_else(|| Level::Info.shifted(i32::from(cli.verbose) - i32::from(cli.quiet))),
    );
    let is_run = matches!(cli.command, Command::Run);
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            let code = e.exit_code();
            if is_run {
                events::error("daemon.error", e.to_string()).field("exit_code", code).emit();
            } else {
                eprintln!("homerd: error: {e}");
            }
            code
        }
    }
}

fn dispatch(cli: Cli) -> Result<i32, Error> {
    // What `service` passes on to the daemon it installs (before the paths consume it).
    let passed =
        service::Passed { lock_file: cli.lock_file.is_some(), config: cli.config.clone(), sets: cli.set.clone() };
    let (flag, shift) = (cli.log_level, i32::from(cli.verbose) - i32::from(cli.quiet));
    let ctx = Context::load(cli.home, cli.lock_file, cli.config, cli.set)?;
    events::set_level(flag.unwrap_or_else(|| ctx.config.log_level.shifted(shift)));
    match cli.command {
        Command::Run => run::run(ctx),
        Command::Status { json } => status::status(&ctx, json),
        Command::Doctor { json } => doctor::doctor(&ctx, json),
        Command::Migrate => maintain::migrate(&ctx),
        Command::Backup { path } => maintain::backup(&ctx, &path),
        Command::Enqueue { key, from, lane, max_attempts, timeout, run_after, kind, args } => match from {
            Some(file) => enqueue::enqueue_from(&ctx, &file),
            None => {
                let kind = kind.expect("clap requires a kind without --from");
                let spec = enqueue::EnqueueSpec { lane, max_attempts, timeout, run_after, kind, args, key };
                enqueue::enqueue(&ctx, spec)
            }
        },
        Command::List { status, lane, limit, json } => operate::list(&ctx, status, lane, limit, json),
        Command::Show { id, json } => operate::show(&ctx, id, json),
        Command::Cancel { id, json } => operate::cancel(&ctx, id, json),
        Command::Retry { id, json } => operate::retry(&ctx, id, json),
        Command::Service { manager } => service::print(&ctx.paths, &ctx.config, manager, &passed),
        Command::JobShim { .. } | Command::Completions { .. } | Command::ManPages { .. } => {
            unreachable!("handled before configuration is loaded")
        }
    }
}
