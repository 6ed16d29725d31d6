//! The PostgreSQL layer of `cargo xtask mutants`: the backend's own mechanisms switched
//! off one at a time must fail its many-worker tests (`daemon/src/postgres/tests.rs` and
//! the store suite on PostgreSQL) or its many-hosts tests (`daemon/tests/postgres_hosts.rs`:
//! network namespaces, so Linux and root), each against real throwaway servers. The
//! unmutated build must pass them first.

use std::time::Instant;

use crate::{cargo, root, show, verdict};

/// daemon/src/mutant.rs `POSTGRES`; a test keeps the lists equal.
pub const PG_MUTANTS: &[&str] =
    &["pg_no_skip_locked", "pg_lease_on_host_clock", "pg_no_incarnation_guard", "pg_no_guardian"];

/// Runs the layer; `only` narrows it to one of [`PG_MUTANTS`] (any other name: nothing
/// of this layer runs).
pub fn mutants_postgres(only: Option<&str>) -> Result<(), String> {
    let chosen: Vec<&str> = PG_MUTANTS.iter().copied().filter(|m| only.is_none_or(|o| o == *m)).collect();
    if chosen.is_empty() {
        eprintln!("postgres layer: --only names no PostgreSQL mutant; nothing to run");
        return Ok(());
    }
    let root = root();
    let out_dir = root.join("target/xtask-mutants");
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    // Both test targets, each in its own cargo run: `--lib postgres::` (the store suite
    // and the many-worker tests) and `--test postgres_hosts`.
    let targets: [&[&str]; 2] = [&["--lib", "postgres::"], &["--test", "postgres_hosts"]];
    let passes = |mutant: Option<&str>| -> Result<bool, String> {
        let label = mutant.unwrap_or("baseline");
        let mut all = true;
        for (i, target) in targets.iter().enumerate() {
            let mut cmd = cargo();
            cmd.args(["test", "--quiet", "-p", "homerd", "--features", "mutants"])
                .args(*target)
                .env("CARGO_TARGET_DIR", root.join("target/mutants"))
                .env_remove("HOMERD_MUTANT");
            if let Some(m) = mutant {
                cmd.env("HOMERD_MUTANT", m);
            }
            eprintln!("$ {}", show(&cmd));
            let started = Instant::now();
            let out = cmd.output().map_err(|e| format!("{}: {e}", show(&cmd)))?;
            let log = out_dir.join(format!("postgres-{label}-{i}.log"));
            std::fs::write(&log, [out.stdout.as_slice(), out.stderr.as_slice()].concat()).ok();
            eprintln!(
                "  {label} {}: {} ({:.0}s, {})",
                target.join(" "),
                if out.status.success() { "passed" } else { "failed" },
                started.elapsed().as_secs_f64(),
                log.display()
            );
            all &= out.status.success();
        }
        Ok(all)
    };
    if !passes(None)? {
        return Err(String::from(
            "the PostgreSQL tests fail without a mutant (see target/xtask-mutants/postgres-baseline-*.log)",
        ));
    }
    let mut missed = Vec::new();
    println!("\n{:<44} postgres::tests, tests/postgres_hosts.rs", "PostgreSQL mutant");
    for m in chosen {
        let caught = !passes(Some(m))?;
        println!("{m:<44} {}", if caught { "caught" } else { "-- NOT CAUGHT --" });
        if !caught {
            missed.push(format!("PostgreSQL mutant {m} is caught by no test"));
        }
    }
    verdict(missed)
}

#[cfg(test)]
mod tests {
    #[test]
    fn pg_mutant_list_matches_the_daemon() {
        let src = std::fs::read_to_string(crate::root().join("daemon/src/mutant.rs")).unwrap();
        let list = src.split("pub const POSTGRES: &[&str] = &[").nth(1).and_then(|r| r.split(']').next()).unwrap();
        assert_eq!(list.split(',').map(str::trim).filter(|s| !s.is_empty()).count(), super::PG_MUTANTS.len());
        for m in super::PG_MUTANTS {
            assert!(src.contains(&format!("\"{m}\"")), "{m} is not defined in daemon/src/mutant.rs");
        }
    }
}
