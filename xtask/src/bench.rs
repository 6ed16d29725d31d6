//! `cargo xtask bench [homer-bench options]`: builds `homerd` and `homer-bench` with
//! `--release` into their own target dir (`target/bench`; the `cargo xtask` alias builds
//! a dev profile, and SQLite at -O0 would flatter every ratio), then runs the bench
//! against that `homerd`, working under `target/bench/work` (the repository's disk, not a
//! tmpfs). The bench prints the table; `--json FILE` also writes it. Every other option
//! (`--jobs`, `--runs`, `--only`, ...) passes through: `homer-bench --help` lists them.
//!
//! `--peers` first installs the peers the exec section is compared with, as their users
//! would, under `target/peers`: pueue with `cargo install --locked` and huey with pip in a
//! virtualenv (`python3 -m venv`), each at a pinned version and only when not already
//! there; then passes `--peers target/peers` to the bench.

use std::process::Command;
use std::time::Instant;

use crate::{cargo, root, run};

/// The peers' pinned versions.
const PUEUE: &str = "4.0.4";
const HUEY: &str = "3.5.4";

pub fn bench(args: &[String]) -> Result<(), String> {
    let started = Instant::now();
    let target = root().join("target/bench");
    let mut args: Vec<String> = args.to_vec();
    if let Some(i) = args.iter().position(|a| a == "--peers") {
        if args.get(i + 1).is_some_and(|v| !v.starts_with("--")) {
            return Err(String::from(
                "cargo xtask bench --peers takes no value: it installs the peers under target/peers",
            ));
        }
        let dir = install_peers()?;
        args.insert(i + 1, dir.display().to_string());
    }
    run(cargo().args(["build", "--release", "-p", "homerd", "-p", "homer-bench"]).env("CARGO_TARGET_DIR", &target))?;
    let built = started.elapsed();
    let bin = target.join("release");
    // The bench keeps the caller's working directory, so a relative `--json` lands there.
    run(Command::new(bin.join("homer-bench"))
        .arg("--homerd")
        .arg(bin.join("homerd"))
        .arg("--work")
        .arg(target.join("work"))
        .args(&args))?;
    eprintln!(
        "cargo xtask bench: {:.0} s in all ({:.0} s building)",
        started.elapsed().as_secs_f64(),
        built.as_secs_f64()
    );
    Ok(())
}

/// pueue and huey under `target/peers` (each only if its pinned version is not there yet).
fn install_peers() -> Result<std::path::PathBuf, String> {
    let dir = root().join("target/peers");
    let pueued = dir.join("pueue/bin/pueued");
    let has_pueue = Command::new(&pueued)
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(PUEUE));
    if !has_pueue {
        run(cargo()
            .args(["install", "--locked", "--quiet", "pueue", "--version", PUEUE, "--root"])
            .arg(dir.join("pueue")))?;
    }
    let python = dir.join("venv/bin/python");
    let has_huey = Command::new(&python)
        .args(["-c", "import huey; print(huey.__version__)"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == HUEY);
    if !has_huey {
        if !python.exists() {
            run(Command::new("python3").args(["-m", "venv"]).arg(dir.join("venv")))
                .map_err(|e| format!("{e} (the huey peer needs python3 with its venv module)"))?;
        }
        run(Command::new(dir.join("venv/bin/pip")).args(["install", "--quiet", &format!("huey=={HUEY}")]))?;
    }
    Ok(dir)
}
