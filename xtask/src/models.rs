//! `cargo xtask mutants --layer models`: the model layers' teeth. Builds homerd's two
//! model tests with the `mutants` feature — the proptest state machine
//! (`daemon/tests/model.rs`, in `target/mutants-models`) and the loom suite
//! (`daemon/tests/loom.rs`, the `loom` profile, `--cfg homer_loom`, in
//! `target/mutants-models/loom`)
//! — runs both unmutated (they must pass), then once per mutant, each run its own
//! process with `HOMERD_MUTANT` set (homerd reads it once per process), and prints which
//! tests of which layer each mutant fails.
//!
//! It fails unless the baseline passes and every mutant in [`REQUIRED`] is caught by its
//! layer. A mutant that only a combination makes visible counts, as in the scenario
//! layer's table, when the combination fails a test that the rest of the combination
//! alone passes: then this mechanism is what held that test up.
//!
//! Options: `--only NAME` (one mutant, or an `a+b` set), `--loom-preemptions N` (the
//! loom runs' `LOOM_MAX_PREEMPTIONS`, default 2: every required mutant is caught within
//! two preemptions, and the suite then takes seconds, not minutes).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::mutants::MUTANTS;
use crate::{cargo, root, show};

/// The combination that shows the owner/token guard behind the epoch guard, run after
/// every single mutant homerd defines (`crate::mutants::MUTANTS`).
const COMBOS: &[&str] = &["no_epoch_guard+no_owner_token_guard"];

fn sets() -> impl Iterator<Item = &'static str> {
    MUTANTS.iter().chain(COMBOS).copied()
}

fn sets_list() -> String {
    sets().collect::<Vec<_>>().join(", ")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Layer {
    Proptest,
    Loom,
}

impl Layer {
    fn name(self) -> &'static str {
        match self {
            Layer::Proptest => "proptest",
            Layer::Loom => "loom",
        }
    }
}

/// What each layer must catch (the "Teeth").
const REQUIRED: &[(Layer, &str)] = &[
    (Layer::Proptest, "no_owner_token_guard"),
    (Layer::Proptest, "no_epoch_guard"),
    (Layer::Proptest, "no_immediate_recovery"),
    (Layer::Proptest, "unreleased_orphan_charged"),
    (Layer::Loom, "no_owner_token_guard"),
    (Layer::Loom, "no_lease_self_kill"),
    (Layer::Loom, "no_drain_give_back"),
];

/// Builds one test target and returns its executable (from cargo's JSON messages).
/// `profile`: `None` for dev, or a profile name (`loom`: see Cargo.toml).
fn build_test(
    target_dir: &Path,
    test: &str,
    profile: Option<&str>,
    rustflags: Option<&str>,
) -> Result<PathBuf, String> {
    let mut cmd = cargo();
    cmd.args(["test", "-p", "homerd", "--features", "mutants", "--test", test, "--no-run", "--message-format=json"])
        .env("CARGO_TARGET_DIR", target_dir);
    if let Some(profile) = profile {
        cmd.args(["--profile", profile]);
    }
    if let Some(flags) = rustflags {
        cmd.env("RUSTFLAGS", flags);
    }
    eprintln!("$ {}", show(&cmd));
    let out = cmd.output().map_err(|e| format!("{}: {e}", show(&cmd)))?;
    if !out.status.success() {
        return Err(format!("`{}` failed:\n{}", show(&cmd), String::from_utf8_lossy(&out.stderr)));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == test)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| format!("cargo built no executable for test `{test}`"))
}

/// The names of the tests that failed in one run of a libtest binary, or an error if the
/// run did not get as far as a result line (a crash of the harness itself).
fn failed_tests(stdout: &str) -> Result<BTreeSet<String>, String> {
    if !stdout.lines().any(|l| l.starts_with("test result:")) {
        return Err(String::from("no `test result:` line"));
    }
    Ok(stdout.lines().filter_map(|l| l.strip_prefix("test ")?.strip_suffix(" ... FAILED").map(String::from)).collect())
}

struct Binaries {
    model: PathBuf,
    loom: PathBuf,
    out_dir: PathBuf,
    loom_preemptions: String,
}

impl Binaries {
    /// Runs `layer`'s tests with mutant set `mutant` (`None`: the baseline); returns the
    /// tests that failed.
    fn run(&self, layer: Layer, mutant: Option<&str>) -> Result<BTreeSet<String>, String> {
        let label = mutant.unwrap_or("baseline");
        let mut cmd = match layer {
            Layer::Proptest => {
                // Each run saves its failures to its own file, seeded with the committed
                // regressions so those replay first; the committed file stays untouched.
                let regressions = self.out_dir.join(format!("regressions-{label}.txt"));
                let committed = root().join("daemon/proptest-regressions/model.txt");
                if committed.exists() {
                    std::fs::copy(&committed, &regressions).map_err(|e| format!("{}: {e}", committed.display()))?;
                }
                let mut cmd = Command::new(&self.model);
                cmd.env("HOMER_MODEL_REGRESSIONS", &regressions);
                cmd
            }
            Layer::Loom => {
                let mut cmd = Command::new(&self.loom);
                cmd.env("LOOM_MAX_PREEMPTIONS", &self.loom_preemptions);
                cmd
            }
        };
        // The model tests find their fixtures relative to the package, as under cargo.
        cmd.current_dir(root().join("daemon")).env("RUST_BACKTRACE", "0");
        match mutant {
            Some(m) => cmd.env("HOMERD_MUTANT", m),
            None => cmd.env_remove("HOMERD_MUTANT"),
        };
        eprintln!("$ {}", show(&cmd));
        let started = Instant::now();
        let out = cmd.output().map_err(|e| format!("{}: {e}", show(&cmd)))?;
        let log = self.out_dir.join(format!("{}-{label}.log", layer.name()));
        let mut text = out.stdout.clone();
        text.extend_from_slice(&out.stderr);
        std::fs::write(&log, &text).map_err(|e| format!("{}: {e}", log.display()))?;
        let failed = failed_tests(&String::from_utf8_lossy(&out.stdout))
            .map_err(|e| format!("{} under {label}: {e} (see {})", layer.name(), log.display()))?;
        eprintln!("  {} {label}: {} failed ({:.0}s)", layer.name(), failed.len(), started.elapsed().as_secs_f64());
        Ok(failed)
    }
}

/// `cargo xtask mutants --layer models [--only NAME] [--loom-preemptions N]`.
pub fn mutants_models(o: &crate::mutants::Options) -> Result<(), String> {
    let (only, loom_preemptions) = (o.only.clone(), o.loom_preemptions.clone());
    let all_sets = sets().count();
    // --only NAME: that set, the combinations containing it and their parts alone — what
    // the second-layer judgement needs.
    let combos: Vec<&str> = sets()
        .filter(|s| only.as_deref().is_none_or(|o| *s == o || s.contains('+') && s.split('+').any(|p| p == o)))
        .collect();
    let parts: BTreeSet<&str> = combos.iter().flat_map(|c| c.split('+')).collect();
    let sets: Vec<&str> = sets().filter(|s| combos.contains(s) || parts.contains(s)).collect();
    if let Some(o) = &only {
        if !sets.contains(&o.as_str()) {
            return Err(format!("--only {o}: no such mutant set for the model layers; sets: {}", sets_list()));
        }
        eprintln!("--only {o}: running {} of {all_sets} mutant sets ({})", sets.len(), sets.join(", "));
    }
    let target = root().join("target/mutants-models");
    let out_dir = target.join("runs");
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let bins = Binaries {
        model: build_test(&target, "model", None, None)?,
        loom: build_test(&target.join("loom"), "loom", Some("loom"), Some("--cfg homer_loom"))?,
        out_dir,
        loom_preemptions,
    };

    let layers = [Layer::Proptest, Layer::Loom];
    for layer in layers {
        let broken = bins.run(layer, None)?;
        if !broken.is_empty() {
            return Err(format!("{} fails without a mutant: {broken:?}", layer.name()));
        }
    }
    let mut caught: BTreeMap<(Layer, String), BTreeSet<String>> = BTreeMap::new();
    for set in &sets {
        for layer in layers {
            caught.insert((layer, set.to_string()), bins.run(layer, Some(set))?);
        }
    }

    // The table: each mutant set, and per layer the tests it fails (or how it is caught
    // as a second layer, or `-`).
    let cell = |layer: Layer, set: &str| -> (bool, String) {
        let Some(by) = caught.get(&(layer, set.to_string())) else { return (false, String::from("(not run)")) };
        if !by.is_empty() {
            return (true, by.iter().cloned().collect::<Vec<_>>().join(", "));
        }
        let mut layered = Vec::new();
        for ((l, combo), combo_by) in &caught {
            if *l != layer || !combo.contains('+') || !combo.split('+').any(|p| p == set) {
                continue;
            }
            let others: Vec<&str> = combo.split('+').filter(|p| *p != set).collect();
            for test in combo_by {
                let others_pass =
                    others.iter().all(|o| caught.get(&(layer, o.to_string())).is_some_and(|b| !b.contains(test)));
                if others_pass {
                    layered.push(format!("{test} (with {}, which alone passes it)", others.join("+")));
                }
            }
        }
        if layered.is_empty() {
            (false, String::from("-"))
        } else {
            (true, format!("behind another layer: {}", layered.join(", ")))
        }
    };
    let mut table = format!("{:<38} | {:<60} | {}\n", "mutant", "proptest (tests/model.rs)", "loom (tests/loom.rs)");
    table.push_str(&format!("{:-<38}-|-{:-<60}-|-{:-<40}\n", "", "", ""));
    for set in &sets {
        table.push_str(&format!("{:<38} | {:<60} | {}\n", set, cell(Layer::Proptest, set).1, cell(Layer::Loom, set).1));
    }
    println!("\n{table}");
    let table_file = target.join("table.txt");
    std::fs::write(&table_file, &table).map_err(|e| format!("{}: {e}", table_file.display()))?;

    let missed: Vec<String> = REQUIRED
        .iter()
        .filter(|(layer, m)| sets.contains(m) && !cell(*layer, m).0)
        .map(|(layer, m)| format!("{} does not catch {m}", layer.name()))
        .collect();
    if missed.is_empty() {
        if only.is_some() {
            let required: Vec<String> =
                REQUIRED.iter().filter(|(_, m)| sets.contains(m)).map(|(l, m)| [l.name(), *m].join(": ")).collect();
            println!(
                "--only: ran {} of {all_sets} mutant sets; required of these and caught: {} (table also in {}). \
                 The rest were not run.",
                sets.len(),
                if required.is_empty() { String::from("none") } else { required.join(", ") },
                table_file.display()
            );
        } else {
            println!("every required mutant is caught by its layer (table also in {})", table_file.display());
        }
    }
    crate::verdict(missed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_tests_are_read_from_libtest_output() {
        let out = "running 2 tests\ntest a ... ok\ntest b_c ... FAILED\n\ntest result: FAILED. 1 passed; 1 failed\n";
        assert_eq!(failed_tests(out).unwrap(), BTreeSet::from([String::from("b_c")]));
        assert!(failed_tests("thread 'main' panicked").is_err(), "a crashed run is not a pass");
    }

    #[test]
    fn the_combinations_are_of_homerds_mutants() {
        for combo in COMBOS {
            for m in combo.split('+') {
                assert!(MUTANTS.contains(&m), "{m} (in {combo}) is not one of homerd's mutants");
            }
        }
    }
}
