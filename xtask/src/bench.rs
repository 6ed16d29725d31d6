//! `cargo xtask bench [homer-bench options]`: builds `homerd` and `homer-bench` with
//! `--release` into their own target dir (`target/bench`; the `cargo xtask` alias builds
//! a dev profile, and SQLite at -O0 would flatter every ratio), then runs the bench
//! against that `homerd`, working under `target/bench/work` (the repository's disk, not a
//! tmpfs). The bench prints the table; `--json FILE` also writes it. Every other option
//! (`--jobs`, `--runs`, `--only`, ...) passes through: `homer-bench --help` lists them.

use std::process::Command;
use std::time::Instant;

use crate::{cargo, root, run};

pub fn bench(args: &[String]) -> Result<(), String> {
    let started = Instant::now();
    let target = root().join("target/bench");
    run(cargo().args(["build", "--release", "-p", "homerd", "-p", "homer-bench"]).env("CARGO_TARGET_DIR", &target))?;
    let built = started.elapsed();
    let bin = target.join("release");
    // The bench keeps the caller's working directory, so a relative `--json` lands there.
    run(Command::new(bin.join("homer-bench"))
        .arg("--homerd")
        .arg(bin.join("homerd"))
        .arg("--work")
        .arg(target.join("work"))
        .args(args))?;
    eprintln!(
        "cargo xtask bench: {:.0} s in all ({:.0} s building)",
        started.elapsed().as_secs_f64(),
        built.as_secs_f64()
    );
    Ok(())
}
