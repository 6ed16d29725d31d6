//! `cargo xtask mutants`: build homerd once with the `mutants` feature (its own target
//! dir), run the scenario suite against it unmutated (must pass), then once per mutant with
//! `HOMERD_MUTANT` set; print mutant -> scenarios that caught it, and fail unless every
//! mutant is caught and every scenario fails on each mutant it names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::{cargo, root, run, show};

/// Every mutant homerd defines (daemon/src/mutant.rs `ALL`); a test keeps the lists equal.
pub const MUTANTS: &[&str] = &[
    "lock_no_cloexec",
    "lock_no_inode_recheck",
    "lock_truncate_before_lock",
    "diagnostics_before_leader",
    "no_leader_refusal",
    "no_epoch_guard",
    "writes_before_validation",
    "no_busy_timeout",
    "no_owner_token_guard",
    "no_immediate_recovery",
    "no_group_kill",
    "no_lease_self_kill",
    "no_drain_give_back",
    "deferred_claim",
    "ack_before_sync",
    "no_data_check",
    "adopt_stray_wal",
    "fd_errors_charged",
    "wall_clock_scheduling",
    "stand_down_charged",
    "late_stop_overrides",
    "unreleased_orphan_charged",
];

struct Scenario {
    name: String,
    mutants: Vec<String>,
    none_reason: Option<String>,
}

/// `cargo xtask mutants` options, for both layers.
pub struct Options {
    /// `scenarios`, `models` or `all`.
    pub layer: String,
    /// One mutant (run with every combination that contains it) or one `a+b` set.
    pub only: Option<String>,
    /// Scenarios run in parallel.
    pub jobs: String,
    /// The models layer's `LOOM_MAX_PREEMPTIONS`.
    pub loom_preemptions: String,
}

impl Options {
    /// Reads the arguments; an unknown one, a missing value or a value that is not a
    /// number is an error naming it.
    pub fn parse(args: &[impl AsRef<str>]) -> Result<Options, String> {
        let mut o = Options {
            layer: String::from("scenarios"),
            only: None,
            jobs: String::from("4"),
            loom_preemptions: String::from("2"),
        };
        let mut it = args.iter().map(AsRef::as_ref);
        while let Some(a) = it.next() {
            let mut value = |what: &str| it.next().map(String::from).ok_or_else(|| format!("{a} needs {what}"));
            match a {
                "--layer" => o.layer = value("a layer: scenarios, models, postgres or all")?,
                "--only" => o.only = Some(value("a mutant name")?),
                "--jobs" | "-j" => o.jobs = number(a, value("a number")?)?,
                "--loom-preemptions" => o.loom_preemptions = number(a, value("a number")?)?,
                other => return Err(format!("unknown argument `{other}` for mutants")),
            }
        }
        if !["scenarios", "models", "postgres", "all"].contains(&o.layer.as_str()) {
            return Err(format!("unknown layer `{}`; expected scenarios, models, postgres or all", o.layer));
        }
        if let Some(only) = &o.only {
            let pg = crate::pgmutants::PG_MUTANTS;
            for part in only.split('+') {
                if !MUTANTS.contains(&part) && !pg.contains(&part) {
                    return Err(format!(
                        "--only: no mutant `{part}`; mutants: {}, {}",
                        MUTANTS.join(", "),
                        pg.join(", ")
                    ));
                }
            }
        }
        Ok(o)
    }
}

fn number(flag: &str, text: String) -> Result<String, String> {
    match text.parse::<u32>() {
        Ok(n) if n > 0 => Ok(text),
        _ => Err(format!("{flag} needs a whole number above 0, got `{text}`")),
    }
}

pub fn scenarios(o: &Options) -> Result<(), String> {
    let (only, jobs) = (o.only.clone(), o.jobs.clone());
    let root = root();
    let mutant_target = root.join("target/mutants");
    run(cargo()
        .args(["build", "--quiet", "-p", "homerd", "--features", "mutants"])
        .env("CARGO_TARGET_DIR", &mutant_target))?;
    run(cargo().args(["build", "--quiet", "-p", "homer-harness"]))?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let harness = target_dir.join("debug/homer-harness");
    let daemon = mutant_target.join("debug/homerd");
    let out_dir = root.join("target/xtask-mutants");
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;

    let scenarios = list_scenarios(&harness)?;
    // Mutant sets to run: every single mutant, plus the combinations scenarios name.
    let mut sets: BTreeSet<String> = MUTANTS.iter().map(|m| m.to_string()).collect();
    for s in &scenarios {
        for m in &s.mutants {
            for part in m.split('+') {
                if !MUTANTS.contains(&part) {
                    return Err(format!("scenario {} names an unknown mutant `{part}`", s.name));
                }
            }
            sets.insert(m.clone());
        }
    }
    let all_sets = sets.len();
    if let Some(o) = &only {
        // One mutant: with every combination containing it and those combinations' other
        // parts alone, so a mechanism that only shows behind another layer is judged as
        // in a full run. An `a+b` set: itself and its parts alone.
        if o.contains('+') && !sets.contains(o) {
            return Err(format!("--only {o}: no scenario names this combination"));
        }
        let combos: Vec<String> =
            sets.iter().filter(|m| m.contains('+') && m.split('+').any(|p| p == o) || *m == o).cloned().collect();
        let parts: BTreeSet<&str> = combos.iter().flat_map(|c| c.split('+')).collect();
        sets.retain(|m| combos.contains(m) || parts.contains(m.as_str()));
        eprintln!(
            "--only {o}: running {} of {all_sets} mutant sets ({})",
            sets.len(),
            sets.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }

    let suite = |mutant: Option<&str>| -> Result<BTreeMap<String, (String, String)>, String> {
        let label = mutant.unwrap_or("baseline");
        let json = out_dir.join(format!("{label}.json"));
        let mut cmd = Command::new(&harness);
        cmd.current_dir(&root).arg("run").arg("scenarios").arg("--daemon").arg(&daemon).args(["-j", &jobs]);
        cmd.arg("--json").arg(&json);
        if let Some(m) = mutant {
            cmd.args(["--mutant", m]);
        }
        // Each failed scenario's timeline (how the mutant was caught) lands here, under
        // target/, not in the system temp dir.
        let sandboxes = out_dir.join("sandboxes").join(label);
        let _ = std::fs::remove_dir_all(&sandboxes); // an earlier run's timelines
        std::fs::create_dir_all(&sandboxes).map_err(|e| format!("{}: {e}", sandboxes.display()))?;
        cmd.env("HOMER_HARNESS_SANDBOX_DIR", &sandboxes).env_remove("HOMER_HARNESS_KEEP");
        // An earlier run's results must not stand in for this one's.
        let _ = std::fs::remove_file(&json);
        eprintln!("$ {}", show(&cmd));
        let started = Instant::now();
        let output = cmd.output().map_err(|e| format!("{}: {e}", harness.display()))?;
        std::fs::write(out_dir.join(format!("{label}.log")), &output.stdout).ok();
        // 0: every run passed, 1: some failed. Anything else (usage, a panic, a signal)
        // means the results are not the suite's verdict.
        if !matches!(output.status.code(), Some(0 | 1)) {
            return Err(format!(
                "{label}: homer-harness ended {} (see target/xtask-mutants/{label}.log): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).lines().last().unwrap_or_default()
            ));
        }
        let text = std::fs::read_to_string(&json).map_err(|e| format!("{}: {e}", json.display()))?;
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", json.display()))?;
        let mut out = BTreeMap::new();
        for r in value.as_array().into_iter().flatten() {
            let name = r["name"].as_str().unwrap_or_default().to_string();
            out.insert(
                name,
                (
                    r["outcome"].as_str().unwrap_or_default().to_string(),
                    r["detail"].as_str().unwrap_or_default().to_string(),
                ),
            );
        }
        let failed = out.values().filter(|(o, _)| o == "failed").count();
        eprintln!("  {label}: {failed} of {} scenarios failed ({:.0}s)", out.len(), started.elapsed().as_secs_f64());
        Ok(out)
    };

    // The unmutated build must pass, or a failure under a mutant proves nothing.
    let baseline = suite(None)?;
    let broken: Vec<&String> = baseline.iter().filter(|(_, (o, _))| o == "failed").map(|(n, _)| n).collect();
    if !broken.is_empty() {
        return Err(format!(
            "the mutants build fails without a mutant: {broken:?} (see target/xtask-mutants/baseline.log)"
        ));
    }

    let mut caught: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in &sets {
        let results = suite(Some(m))?;
        let by: Vec<String> = results.iter().filter(|(_, (o, _))| o == "failed").map(|(n, _)| n.clone()).collect();
        caught.insert(m.clone(), by);
    }

    println!("\n{:<44} caught by", "mutant");
    let mut problems = Vec::new();
    for (m, by) in &caught {
        if !by.is_empty() {
            println!("{:<44} {}", m, by.join(", "));
            continue;
        }
        // A layered defence: a mutant no scenario sees alone still counts as caught when a
        // combination with it fails a scenario that the rest of the combination passes —
        // then this mechanism is what stops the failure once the other layer is gone.
        let mut layered = Vec::new();
        for (combo, combo_by) in caught.iter().filter(|(c, _)| c.split('+').any(|p| p == m) && c.contains('+')) {
            let others: Vec<&str> = combo.split('+').filter(|p| p != m).collect();
            for scenario in combo_by {
                let others_alone_pass = others.iter().all(|o| caught.get(*o).is_some_and(|b| !b.contains(scenario)));
                if others_alone_pass {
                    layered.push(format!("{scenario} (with {}, which alone it survives)", others.join("+")));
                }
            }
        }
        if layered.is_empty() {
            println!("{:<44} -- NOT CAUGHT --", m);
            problems.push(format!("mutant {m} is caught by no scenario"));
        } else {
            println!("{:<44} as a second layer: {}", m, layered.join(", "));
        }
    }
    println!("\n{:<44} must fail on", "scenario");
    for s in &scenarios {
        // Under --only, the scenarios that name none of the sets run are not judged.
        if only.is_some() && !s.mutants.iter().any(|m| caught.contains_key(m)) {
            continue;
        }
        if let Some(why) = &s.none_reason {
            println!("{:<44} (none: {why})", s.name);
            continue;
        }
        let mut marks = Vec::new();
        for m in &s.mutants {
            let Some(by) = caught.get(m) else { continue };
            let ok = failed_on(by, &s.name);
            marks.push(format!("{m} {}", if ok { "ok" } else { "MISSED" }));
            if !ok {
                problems.push(format!("scenario {} names {m} but passes with it", s.name));
            }
        }
        println!("{:<44} {}", s.name, marks.join(", "));
    }
    if problems.is_empty() {
        match &only {
            None => println!("\nevery mutant caught; every scenario fails on the mutants it names"),
            Some(o) => println!(
                "\n--only {o}: ran {} of {all_sets} mutant sets ({}); each caught, and every scenario naming \
                 one fails on it. The other {} sets were not run: a full `cargo xtask mutants` judges them.",
                caught.len(),
                caught.keys().cloned().collect::<Vec<_>>().join(", "),
                all_sets - caught.len()
            ),
        }
    }
    crate::verdict(problems)
}

/// Whether the scenario file `name` failed among the runs `by`: its SQLite run carries
/// the file's name, its PostgreSQL run `NAME [postgres]` (a file that runs only on
/// PostgreSQL has only that one). A file fails on a mutant when any of its runs does.
fn failed_on(by: &[String], name: &str) -> bool {
    by.iter().any(|run| run == name || run.strip_suffix(" [postgres]") == Some(name))
}

fn list_scenarios(harness: &Path) -> Result<Vec<Scenario>, String> {
    let out = Command::new(harness)
        .current_dir(root())
        .args(["list", "scenarios"])
        .output()
        .map_err(|e| format!("{}: {e}", harness.display()))?;
    if !out.status.success() {
        return Err(format!("homer-harness list: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("homer-harness list: {e}"))?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .map(|s| Scenario {
            name: s["name"].as_str().unwrap_or_default().to_string(),
            mutants: s["mutants"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m.as_str().map(String::from))
                .collect(),
            none_reason: s["mutant_none"].as_str().map(String::from),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::Options;

    #[test]
    fn a_scenario_fails_on_a_mutant_when_any_of_its_backend_runs_does() {
        let by = vec![String::from("pitfall-14"), String::from("postgres-two-homes [postgres]")];
        assert!(super::failed_on(&by, "pitfall-14"));
        assert!(super::failed_on(&by, "postgres-two-homes"));
        assert!(!super::failed_on(&by, "pitfall-1"));
    }

    #[test]
    fn options_name_what_is_wrong() {
        let o = Options::parse(&["--only", "no_group_kill", "--jobs", "2"]).unwrap();
        assert_eq!((o.only.as_deref(), o.jobs.as_str(), o.layer.as_str()), (Some("no_group_kill"), "2", "scenarios"));
        Options::parse(&["--only", "no_epoch_guard+no_owner_token_guard", "--layer", "all"]).unwrap();
        let e = Options::parse(&["--only", "no_such"]).err().unwrap();
        assert!(e.contains("`no_such`") && e.contains("no_group_kill"), "{e}");
        assert!(Options::parse(&["--only"]).err().unwrap().contains("--only needs"));
        assert!(Options::parse(&["--jobs", "many"]).err().unwrap().contains("`many`"));
        assert!(Options::parse(&["--layer", "unit"]).err().unwrap().contains("`unit`"));
        assert!(Options::parse(&["--frobnicate"]).err().unwrap().contains("`--frobnicate`"));
    }

    /// The list here and homerd's must not drift apart.
    #[test]
    fn mutant_list_matches_the_daemon() {
        let src = std::fs::read_to_string(crate::root().join("daemon/src/mutant.rs")).unwrap();
        for m in super::MUTANTS {
            assert!(src.contains(&format!("\"{m}\"")), "{m} is not defined in daemon/src/mutant.rs");
        }
        let defined = src.matches("pub const ").count() - 2; // minus the lists `ALL` and `POSTGRES`
        assert_eq!(
            defined,
            super::MUTANTS.len() + crate::pgmutants::PG_MUTANTS.len(),
            "daemon/src/mutant.rs defines mutants xtask does not list"
        );
    }
}
