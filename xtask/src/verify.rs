//! `cargo xtask verify`: every check the project has, as stages that each print what they
//! run, are timed, and end in one table. A failed stage does not stop the others (the
//! table shows all of them); the exit status is non-zero and names the failed stages.
//!
//! Nothing is assumed installed: rustfmt and clippy come from rustup, snapshots are checked
//! through insta's own environment switches (no cargo-insta to build), Python tools go into
//! a virtualenv at `target/venv` (system pip is externally managed on Debian and on GitHub's
//! runners).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{cargo, root, run, show};

/// check-jsonschema, pinned: its built-in GitHub workflow schema validates ci.yml.
const CHECK_JSONSCHEMA: &str = "check-jsonschema==0.33.2";
const MACOS_TARGET: &str = "aarch64-apple-darwin";
/// `LOOM_MAX_PREEMPTIONS` for the loom stage: 2 by default (about 35,000 interleavings of
/// the four models, seconds once built), 3 with `--full` and in CI's own loom job (about
/// 2.7 million, about five minutes here) — the bound ARCHITECTURE.md's loom row claims.
const LOOM_PREEMPTIONS: &str = "2";
const LOOM_PREEMPTIONS_FULL: &str = "3";
/// A stage still running prints a line this often, so no stage is silent for longer.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

struct Stage {
    name: &'static str,
    what: &'static str,
    run: fn(&Options) -> Result<(), String>,
}

const FULL: &[Stage] = &[
    Stage { name: "fmt", what: "cargo fmt --check", run: fmt },
    Stage { name: "clippy", what: "clippy on every target, warnings denied", run: clippy },
    Stage { name: "test", what: "workspace tests + scenarios, insta read-only", run: test },
    Stage { name: "loom", what: "the coordinator under loom (--full: the full preemption bound)", run: loom },
    Stage { name: "workflow", what: "every .github/workflows file against the workflow schema", run: workflow },
];

const QUICK: &[Stage] = &[
    Stage { name: "fmt", what: "cargo fmt --check", run: fmt },
    Stage { name: "clippy", what: "clippy on every target, warnings denied", run: clippy },
    Stage { name: "unit", what: "unit tests (libs and bins)", run: unit },
];

const MACOS: Stage = Stage { name: "macos", what: "cross-build every target for Apple silicon", run: macos };

/// `cargo xtask verify` options.
pub struct Options {
    quick: bool,
    full: bool,
    macos: bool,
    stage: Option<&'static Stage>,
}

impl Options {
    /// Reads the arguments; an unknown one, or an unknown stage, is an error naming it.
    pub fn parse(args: &[impl AsRef<str>]) -> Result<Options, String> {
        let mut o = Options { quick: false, full: false, macos: false, stage: None };
        let mut it = args.iter().map(AsRef::as_ref);
        while let Some(a) = it.next() {
            match a {
                "--quick" => o.quick = true,
                "--full" => o.full = true,
                "--macos" => o.macos = true,
                "--stage" => {
                    let name = it.next().ok_or("--stage needs a name")?;
                    let all = || FULL.iter().chain(QUICK.iter()).chain(std::iter::once(&MACOS));
                    let Some(stage) = all().find(|s| s.name == name) else {
                        let names: Vec<&str> = all().map(|s| s.name).collect();
                        return Err(format!("no stage `{name}`; stages: {}", names.join(", ")));
                    };
                    o.stage = Some(stage);
                }
                other => return Err(format!("unknown argument `{other}` for verify")),
            }
        }
        if o.quick && o.full {
            return Err(String::from("--quick and --full contradict each other"));
        }
        Ok(o)
    }
}

pub fn verify(o: &Options) -> Result<(), String> {
    let mut stages: Vec<&Stage> = if o.quick { QUICK.iter().collect() } else { FULL.iter().collect() };
    if o.macos {
        stages.push(&MACOS);
    }
    if let Some(stage) = o.stage {
        stages = vec![stage];
    }
    let started = Instant::now();
    let mut results: Vec<(&str, Result<(), String>, Duration)> = Vec::new();
    for stage in stages {
        eprintln!("\n==> {} ({})", stage.name, stage.what);
        let t = Instant::now();
        let r = with_progress(stage.name, || (stage.run)(o));
        if let Err(e) = &r {
            eprintln!("==> {} FAILED: {e}", stage.name);
        }
        results.push((stage.name, r, t.elapsed()));
    }
    println!("\n{:<10} {:<7} {:>9}", "stage", "result", "time");
    for (name, r, t) in &results {
        println!("{:<10} {:<7} {:>8.1}s", name, if r.is_ok() { "ok" } else { "FAILED" }, t.as_secs_f64());
    }
    println!("{:<10} {:<7} {:>8.1}s", "total", "", started.elapsed().as_secs_f64());
    let failed: Vec<&str> = results.iter().filter(|(_, r, _)| r.is_err()).map(|(n, _, _)| *n).collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("failed stage(s): {}", failed.join(", ")))
    }
}

/// Runs `work`, printing `==> NAME: still running (Ns)` every [`PROGRESS_EVERY`] until it
/// returns: a stage whose commands are quiet for minutes (a cold build, a long test) still
/// shows it is alive.
fn with_progress<T>(name: &str, work: impl FnOnce() -> T) -> T {
    let (done, waiting) = std::sync::mpsc::channel::<()>();
    let started = Instant::now();
    let ticker = std::thread::spawn({
        let name = name.to_owned();
        move || {
            // A disconnect (the sender dropped) or a message ends it; a timeout is a tick.
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = waiting.recv_timeout(PROGRESS_EVERY) {
                eprintln!("==> {name}: still running ({:.0}s)", started.elapsed().as_secs_f64());
            }
        }
    });
    let out = work();
    drop(done);
    let _ = ticker.join();
    out
}

/// rustup components come with the toolchain; add them when a minimal profile lacks them.
fn ensure_component(probe: &[&str], component: &str) -> Result<(), String> {
    let ok = cargo().args(probe).output().map(|o| o.status.success()).unwrap_or(false);
    if ok {
        return Ok(());
    }
    run(Command::new("rustup").args(["component", "add", component]))
        .map_err(|e| format!("{e}; install it with `rustup component add {component}`"))
}

fn fmt(_: &Options) -> Result<(), String> {
    ensure_component(&["fmt", "--version"], "rustfmt")?;
    run(cargo().args(["fmt", "--all", "--", "--check"]))
}

fn clippy(_: &Options) -> Result<(), String> {
    ensure_component(&["clippy", "--version"], "clippy")?;
    run(cargo().args(["clippy", "--workspace", "--all-targets", "--locked", "--", "-D", "warnings"]))
}

fn unit(_: &Options) -> Result<(), String> {
    run(cargo().args(["test", "--workspace", "--locked", "--lib", "--bins"]))
}

fn tools_dir() -> PathBuf {
    root().join("target/tools")
}

/// PATH with our tool directories first.
fn tool_path() -> OsString {
    let mut dirs = vec![tools_dir().join("bin"), root().join("target/venv/bin")];
    if let Some(p) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

/// Every `.snap` file in the repository (outside `target/`), as absolute paths.
fn snapshot_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name();
            if name == "target" || name.to_string_lossy().starts_with('.') {
                continue;
            }
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|x| x == "snap") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root(), &mut out);
    out.sort();
    out
}

/// The `.snap` files no snapshot assertion of the run named (insta appends each
/// assertion's file to `INSTA_SNAPSHOT_REFERENCES_FILE`): a stale snapshot is an error.
fn unreferenced(references: &Path, files: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let text = std::fs::read_to_string(references).map_err(|e| format!("{}: {e}", references.display()))?;
    let named: std::collections::BTreeSet<PathBuf> =
        text.lines().map(|l| std::fs::canonicalize(l).unwrap_or_else(|_| PathBuf::from(l))).collect();
    Ok(files
        .iter()
        .filter(|f| !named.contains(&std::fs::canonicalize(f).unwrap_or_else(|_| (*f).clone())))
        .cloned()
        .collect())
}

fn test(_: &Options) -> Result<(), String> {
    let root = root();
    let junit = root.join("target/junit");
    let sandboxes = root.join("target/sandboxes");
    for d in [&junit, &sandboxes] {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let references = root.join("target/insta-references.txt");
    let _ = std::fs::remove_file(&references);
    // Snapshots are checked, never written (insta's own switches: no update, no
    // forced pass, CI behaviour), and every assertion names its file so that a .snap no
    // test references is an error below — what `cargo insta test --check
    // --unreferenced=reject` does, without building cargo-insta.
    run(cargo()
        .env("PATH", tool_path())
        .env("HOMER_HARNESS_JUNIT", junit.join("scenarios.xml"))
        .env("HOMER_HARNESS_SANDBOX_DIR", &sandboxes)
        .env("HOMER_HARNESS_KEEP", "failed")
        .env("INSTA_UPDATE", "no")
        .env("INSTA_FORCE_PASS", "0")
        .env("CI", "true")
        .env("INSTA_SNAPSHOT_REFERENCES_FILE", &references)
        // Every test binary runs even after one fails: a failure shows all the others'
        // results too, instead of hiding the binaries after it.
        .args(["test", "--workspace", "--locked", "--no-fail-fast"]))?;
    let files = snapshot_files();
    let stale = unreferenced(&references, &files)?;
    if !stale.is_empty() {
        let list: Vec<String> = stale.iter().map(|p| p.display().to_string()).collect();
        return Err(format!(
            "{} of {} snapshot files are referenced by no test (delete them or restore their test): {}",
            stale.len(),
            files.len(),
            list.join(", ")
        ));
    }
    eprintln!("snapshots: all {} files referenced, none written", files.len());
    Ok(())
}

fn loom(o: &Options) -> Result<(), String> {
    let bound = if o.full { LOOM_PREEMPTIONS_FULL } else { LOOM_PREEMPTIONS };
    if !o.full {
        eprintln!(
            "(preemption bound {bound}; `cargo xtask verify --full` and CI's loom job run {LOOM_PREEMPTIONS_FULL})"
        );
    }
    // The `loom` profile (Cargo.toml): homerd and loom optimised, the rest at -O0 — a
    // cold build of everything in release took most of this stage. --nocapture: each
    // model prints its interleavings and time as it finishes.
    run(cargo()
        .env("RUSTFLAGS", "--cfg homer_loom")
        .env("CARGO_TARGET_DIR", root().join("target/loom"))
        .env("LOOM_MAX_PREEMPTIONS", bound)
        .args(["test", "-p", "homerd", "--profile", "loom", "--locked", "--test", "loom", "--", "--nocapture"]))
}

/// A virtualenv under target/ with `packages` installed.
fn ensure_venv(packages: &[&str]) -> Result<PathBuf, String> {
    let venv = root().join("target/venv");
    let python = venv.join("bin/python3");
    if !python.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))
            .map_err(|e| format!("{e}; a Python 3 with the venv module is needed"))?;
    }
    run(Command::new(&python).args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"]).args(packages))?;
    Ok(venv)
}

/// Every workflow file: `ci.yml` must be there, and each `.yml`/`.yaml` in
/// `.github/workflows` (ci.yml, release.yml, ...) must match the GitHub workflow schema.
fn workflow(_: &Options) -> Result<(), String> {
    let venv = ensure_venv(&[CHECK_JSONSCHEMA])?;
    let dir = root().join(".github/workflows");
    if !dir.join("ci.yml").is_file() {
        return Err(format!("{} is missing", dir.join("ci.yml").display()));
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
        .collect();
    files.sort();
    run(Command::new(venv.join("bin/check-jsonschema"))
        .args(["--builtin-schema", "vendor.github-workflows"])
        .args(&files))
}

fn macos(_: &Options) -> Result<(), String> {
    let installed = Command::new("rustup").args(["target", "list", "--installed"]).output();
    let has_target =
        installed.map(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l == MACOS_TARGET)).unwrap_or(false);
    if !has_target {
        run(Command::new("rustup").args(["target", "add", MACOS_TARGET]))?;
    }
    // zig is the cross linker (from PyPI, into the venv); cargo-zigbuild drives it.
    ensure_venv(&["ziglang"])?;
    if !tools_dir().join("bin/cargo-zigbuild").exists() {
        run(cargo().args(["install", "cargo-zigbuild", "--locked", "--quiet", "--root"]).arg(tools_dir()))?;
    }
    let mut cmd = cargo();
    cmd.env("PATH", tool_path()).env("CARGO_TARGET_DIR", root().join("target/macos")).args([
        "zigbuild",
        "--workspace",
        "--all-targets",
        "--locked",
        "--target",
        MACOS_TARGET,
    ]);
    eprintln!("(links every target for macOS; nothing runs there)");
    run(&mut cmd).map_err(|e| format!("{e} — {}", show(&cmd)))
}

#[cfg(test)]
mod tests {
    use super::{unreferenced, Options};

    #[test]
    fn options_are_read_before_anything_runs() {
        let o = Options::parse(&["--full", "--stage", "loom"]).unwrap();
        assert!(o.full && !o.quick && o.stage.map(|s| s.name) == Some("loom"));
        assert!(Options::parse(&["--quick", "--full"]).err().unwrap().contains("contradict"));
        let e = Options::parse(&["--stage", "lint"]).err().unwrap();
        assert!(e.contains("`lint`") && e.contains("clippy"), "{e}");
        assert!(Options::parse(&["--stage"]).err().unwrap().contains("needs a name"));
        assert!(Options::parse(&["--fast"]).err().unwrap().contains("`--fast`"));
    }

    #[test]
    fn a_snapshot_no_assertion_named_is_reported() {
        let dir = std::env::temp_dir().join(format!("xtask-snapshots-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (used, stale) = (dir.join("used.snap"), dir.join("stale.snap"));
        for f in [&used, &stale] {
            std::fs::write(f, "---\n").unwrap();
        }
        let refs = dir.join("references.txt");
        // insta appends one line per assertion, the same file more than once.
        std::fs::write(&refs, format!("{0}\n{0}\n", used.display())).unwrap();
        let files = vec![stale.clone(), used.clone()];
        assert_eq!(unreferenced(&refs, &files).unwrap(), vec![stale.clone()]);
        std::fs::write(&refs, format!("{}\n{}\n", used.display(), stale.display())).unwrap();
        assert!(unreferenced(&refs, &files).unwrap().is_empty());
        // No references file at all (no test ran) is an error, not "nothing is stale".
        assert!(unreferenced(&dir.join("missing.txt"), &files).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
