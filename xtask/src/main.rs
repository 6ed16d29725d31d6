//! `cargo xtask`: project automation in plain Rust with few dependencies; every command
//! it runs is printed before it runs (style rule 1 in ARCHITECTURE.md).
//!
//! - `cargo xtask verify [--quick | --full] [--stage NAME] [--macos]`: every check, as
//!   timed stages ending in a table (verify.rs).
//! - `cargo xtask mutants [--layer scenarios|models|postgres|all] [--only NAME] [--jobs N]`: every
//!   named mutant must be caught (mutants.rs, which also reads the options of both
//!   layers; the models layer in models.rs).
//!
//! `--help` prints what each command takes; a bad command or argument exits 64 with the
//! usage before anything runs.
//! - `cargo xtask bench [options]`: release-built benchmarks against same-run baselines
//!   (bench.rs; the measuring program is the `homer-bench` package).
//! - `cargo xtask man`: homerd's man pages into `target/man/man1` (man.rs).

mod bench;
mod man;
mod models;
mod mutants;
mod pgmutants;
mod verify;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const USAGE: &str = "usage: cargo xtask verify [--quick | --full] [--stage NAME] [--macos]
       cargo xtask mutants [--layer scenarios|models|postgres|all] [--only NAME] [--jobs N] [--loom-preemptions N]
       cargo xtask bench [--jobs N] [--json FILE] [homer-bench options]
       cargo xtask man
       cargo xtask --help | COMMAND --help";

const HELP: &str = "cargo xtask: the project's one entry point for checks (every command it runs is printed first)

Commands:
  verify    every check as a timed stage, ending in a table: fmt, clippy, test, loom, workflow
            --quick       fmt, clippy and the unit tests only
            --full        loom at the full preemption bound (what CI's loom job runs)
            --stage NAME  one stage (fmt, clippy, test, loom, workflow, unit, macos)
            --macos       add a cross-build of every target for Apple silicon (zig)
  mutants   every named safety mechanism switched off must be caught
            --layer L     scenarios (default), models (proptest + loom), postgres (the
                          PostgreSQL mutants against the many-worker tests) or all
            --only NAME   one mutant (with the combinations that contain it) or one a+b set
            --jobs N      scenarios run in parallel (scenarios layer; default 4)
            --loom-preemptions N   LOOM_MAX_PREEMPTIONS for the models layer (default 2)
  bench     release-built measurements against same-run baselines; other options go to
            homer-bench (`target/bench/release/homer-bench --help` lists them)
  man       homerd's man pages (homerd.1, homerd-<command>.1) into target/man/man1

Exit status: 0 ok; 1 a check failed; 64 a usage error (unknown command or argument).";

/// Exit status for a usage error, as homerd's (EX_USAGE).
const EX_USAGE: u8 = 64;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

fn run(cmd: &mut Command) -> Result<(), String> {
    eprintln!("$ {}", show(cmd));
    let status = cmd.status().map_err(|e| format!("{}: {e}", show(cmd)))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{}` failed ({status})", show(cmd)))
    }
}

/// A mutant layer's verdict: every line of `missed` is a mutant (or a check) that got
/// through; none means the layer passed.
fn verdict(missed: Vec<String>) -> Result<(), String> {
    if missed.is_empty() {
        Ok(())
    } else {
        Err(missed.join("\n"))
    }
}

fn show(cmd: &Command) -> String {
    let mut s = String::new();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            s.push_str(&format!("{}={} ", k.to_string_lossy(), v.to_string_lossy()));
        }
    }
    s.push_str(&cmd.get_program().to_string_lossy());
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root());
    c
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (command, rest) = match args.split_first() {
        Some((c, rest)) => (c.as_str(), rest),
        None => ("", &[][..]),
    };
    if matches!(command, "-h" | "--help" | "help")
        || rest.iter().any(|a| a == "-h" || a == "--help") && command != "bench"
    {
        // Not println!: `cargo xtask --help | head` must not panic on the closed pipe.
        let _ = writeln!(std::io::stdout(), "{HELP}");
        return ExitCode::SUCCESS;
    }
    let parsed = match command {
        "verify" => verify::Options::parse(rest).map(Job::Verify),
        "mutants" => mutants::Options::parse(rest).map(Job::Mutants),
        "bench" => Ok(Job::Bench(rest.to_vec())),
        "man" => match rest.first() {
            None => Ok(Job::Man),
            Some(a) => Err(format!("unknown argument `{a}` for man")),
        },
        "" => Err(String::from("no command given")),
        other => Err(format!("unknown command `{other}`")),
    };
    let job = match parsed {
        Ok(job) => job,
        Err(e) => {
            eprintln!("xtask: {e}\n{USAGE}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let result = match job {
        Job::Verify(o) => verify::verify(&o),
        Job::Mutants(o) => mutants_command(&o),
        Job::Bench(args) => bench::bench(&args),
        Job::Man => man::man(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A command with its arguments read (a bad argument is a usage error before anything runs).
enum Job {
    Verify(verify::Options),
    Mutants(mutants::Options),
    Bench(Vec<String>),
    Man,
}

fn mutants_command(o: &mutants::Options) -> Result<(), String> {
    match o.layer.as_str() {
        "scenarios" => mutants::scenarios(o),
        "models" => models::mutants_models(o),
        "postgres" => pgmutants::mutants_postgres(o.only.as_deref()),
        _ => mutants::scenarios(o)
            .and_then(|()| models::mutants_models(o))
            .and_then(|()| pgmutants::mutants_postgres(o.only.as_deref())),
    }
}
