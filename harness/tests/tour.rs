//! `scripts/tour.sh` — an operator's tour of homerd (logs, wait, job directories and
//! environment, durations, the JSON contract, closed pipes, completions, shutdown, a
//! failed scenario's timeline) — replayed against this build. The script prints one line
//! per check; this test passes only if every check did.

use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn the_operator_tour_passes_every_check() {
    let harness = PathBuf::from(env!("CARGO_BIN_EXE_homer-harness"));
    let daemon = harness.with_file_name("homerd");
    assert!(daemon.is_file(), "{} is missing: run `cargo test --workspace`", daemon.display());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = Command::new("bash")
        .arg(root.join("scripts/tour.sh"))
        .arg(&daemon)
        .arg(&harness)
        .current_dir(root)
        .env_remove("HOMER_HOME")
        .output()
        .expect("bash runs scripts/tour.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the tour failed ({:?}):\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains("tour: every check passed"), "{stdout}");
    let checks = stdout.lines().filter(|l| l.starts_with("ok ")).count();
    assert!(checks >= 40, "only {checks} checks ran:\n{stdout}");
}
