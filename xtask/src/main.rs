//! `cargo xtask`: project automation in plain Rust with few dependencies; every command
//! it runs is printed before it runs (style rule 1 in ARCHITECTURE.md).
//!
//! - `cargo xtask verify [--quick] [--stage NAME] [--macos]`: every check, as timed stages
//!   ending in a table (verify.rs).
//! - `cargo xtask mutants [--layer scenarios|models|all] [--only NAME] [--jobs N]`: every
//!   named mutant must be caught (mutants.rs; the models layer in models.rs).
//! - `cargo xtask bench [options]`: release-built benchmarks against same-run baselines
//!   (bench.rs; the measuring program is the `homer-bench` package).

mod bench;
mod models;
mod mutants;
mod verify;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const USAGE: &str = "usage: cargo xtask verify [--quick] [--stage NAME] [--macos]
       cargo xtask mutants [--layer scenarios|models|all] [--only NAME] [--jobs N]
       cargo xtask bench [--jobs N] [--json FILE] [homer-bench options]";

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
    let result = match args.first().map(String::as_str) {
        Some("verify") => verify::verify(&args[1..]),
        Some("mutants") => mutants_command(&args[1..]),
        Some("bench") => bench::bench(&args[1..]),
        _ => Err(String::from(USAGE)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn mutants_command(args: &[String]) -> Result<(), String> {
    let mut layer = String::from("scenarios");
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--layer" {
            layer = it.next().cloned().ok_or("--layer needs a value")?;
        } else {
            rest.push(a.clone());
        }
    }
    match layer.as_str() {
        "scenarios" => mutants::scenarios(&rest),
        "models" => models::mutants_models(&rest),
        "all" => mutants::scenarios(&rest).and_then(|()| models::mutants_models(&rest)),
        other => Err(format!("unknown layer {other}; expected scenarios, models or all")),
    }
}
