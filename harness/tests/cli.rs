//! The `homer-harness` command itself: malformed files, reports, --keep, --repeat, and that
//! no process it started survives a passed, failed or interrupted run.
//!
//! The daemon under test is the workspace's `homerd` beside this binary: `cargo test
//! --workspace` builds it before any test runs.
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
#[cfg(target_os = "linux")]
use std::process::Stdio;
use std::process::{Command, Output};

#[cfg(target_os = "linux")]
use homer_harness::selftest::{linger, long_scenario, never, started_by, wait_for_processes};
use homer_harness::selftest::{self_test, write, FAST_SETTINGS};

fn harness() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_homer-harness"))
}

fn daemon() -> PathBuf {
    let d = harness().with_file_name("homerd");
    assert!(d.is_file(), "{} is missing: run `cargo test --workspace` (or `cargo build -p homerd` first)", d.display());
    d
}

fn run(args: &[&str]) -> Output {
    Command::new(harness()).args(args).arg("--daemon").arg(daemon()).output().unwrap()
}

/// `homer-harness run ARGS... --daemon <the workspace's homerd>`, its sandboxes (and failed
/// runs' timelines) under `sandboxes`, none kept whatever the environment says.
fn run_in(sandboxes: &Path, args: &[&std::ffi::OsStr]) -> Command {
    let mut c = Command::new(harness());
    c.arg("run").args(args).arg("--daemon").arg(daemon());
    c.env("HOMER_HARNESS_SANDBOX_DIR", sandboxes).env_remove("HOMER_HARNESS_KEEP");
    c
}

/// One daemon, one job that completes, the invariants checked.
fn passing() -> String {
    self_test(
        "one daemon, one job",
        &format!("\n{FAST_SETTINGS}"),
        r#"[[step]]
enqueue = "noop"

[[step]]
wait = "event"
target = "a"
event = "job.completed"

[[step]]
check = "invariants"
"#,
    )
}

#[test]
fn a_malformed_file_is_rejected_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "good.toml", &passing());
    let bad = write(
        dir.path(),
        "bad.toml",
        &passing()
            .replace("wait = \"event\"\ntarget = \"a\"", "wait = \"event\"\ntimeout = \"5 sekunden\"\ntarget = \"a\""),
    );
    let out = Command::new(harness()).arg("run").arg(&good).arg(&bad).arg("--daemon").arg(daemon()).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:16:11: `step[2].timeout`", bad.display())), "{err}");
    assert!(err.contains("expected a duration"), "{err}");
    // Nothing ran: not even the good file.
    assert!(!String::from_utf8_lossy(&out.stdout).contains("PASS"), "{out:?}");
}

/// A mutant name the daemon does not know is a usage error before anything runs: the
/// daemon would ignore it and run unmutated, and its results would be credited to a
/// mutant that never ran.
#[test]
fn an_unknown_mutant_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "good.toml", &passing());
    for mutant in ["no_epoch_gaurd", "no_epoch_guard+no_ownr_token_guard"] {
        let out = Command::new(harness())
            .arg("run")
            .arg(&good)
            .args(["--mutant", mutant, "--daemon"])
            .arg(daemon())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{mutant}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("unknown mutant") && err.contains("no_owner_token_guard"), "{err}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("PASS"), "{out:?}");
    }
}

#[test]
fn junit_has_one_testcase_per_run_and_repeat_runs_each_scenario_again() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "first.toml", &passing());
    let b = write(dir.path(), "second.toml", &passing().replace("enqueue = \"noop\"", "enqueue = \"fail\""));
    let junit = dir.path().join("report.xml");
    // The failed runs' timelines are saved beside their sandboxes: here, not in /tmp.
    let out = run_in(
        dir.path(),
        &[a.as_ref(), b.as_ref(), "--repeat".as_ref(), "3".as_ref(), "--junit".as_ref(), junit.as_ref()],
    )
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // `second` waits for job.completed of a failing job: it fails, three times.
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert_eq!(stdout.matches("PASS first").count(), 3, "{stdout}");
    assert_eq!(stdout.matches("FAIL second").count(), 3, "{stdout}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    let doc = roxmltree::Document::parse(&xml).expect("JUnit XML parses");
    let cases: Vec<_> = doc.descendants().filter(|n| n.has_tag_name("testcase")).collect();
    assert_eq!(cases.len(), 6, "{xml}");
    let failures = cases.iter().filter(|c| c.children().any(|n| n.has_tag_name("failure"))).count();
    assert_eq!(failures, 3, "{xml}");
    let suite = doc.descendants().find(|n| n.has_tag_name("testsuite")).unwrap();
    assert_eq!(suite.attribute("tests"), Some("6"));
    assert_eq!(suite.attribute("failures"), Some("3"));
}

#[test]
fn keep_leaves_the_sandbox_and_prints_its_path() {
    let dir = tempfile::tempdir().unwrap();
    // A probe job, so the effects log has a run for the timeline to draw.
    let a = write(dir.path(), "kept.toml", &passing().replace("enqueue = \"noop\"", "enqueue = \"probe\""));
    let out = run(&["run", a.to_str().unwrap(), "--keep"]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = stdout.lines().find_map(|l| l.split("sandbox kept: ").nth(1)).expect("a kept path").trim().to_string();
    let kept = PathBuf::from(&path);
    assert!(kept.join("home/homer.db").is_file(), "{path}");
    assert!(kept.join("harness-logs/a.stderr").is_file(), "{path}");
    let timeline = std::fs::read_to_string(kept.join("timeline.html")).unwrap();
    assert!(timeline.contains(r#"<span class="passed">passed</span>"#), "{timeline}");
    assert!(timeline.contains(">epoch 1<") && timeline.contains(">job 1<"), "{timeline}");
    assert!(timeline.contains(", completed</title>"), "the probe job's run: {timeline}");
    std::fs::remove_dir_all(kept).unwrap();
}

#[test]
fn a_failed_run_reports_its_timeline_with_the_failing_step() {
    let dir = tempfile::tempdir().unwrap();
    let sandboxes = tempfile::tempdir().unwrap();
    let failing = passing().replace(
        "[[step]]\ncheck = \"invariants\"",
        "[[step]]\nsql = \"SELECT count(*) FROM job_queue\"\nrows = [[7]]",
    );
    assert_ne!(failing, passing());
    let a = write(dir.path(), "fails-at-sql.toml", &failing);
    // Runs it with sandboxes under `base` (and `extra` arguments): it fails, and its report
    // names a timeline. Returns that path and the report.
    let run_failing = |base: &Path, extra: &[&str]| -> (PathBuf, String) {
        let out = run_in(base, &[a.as_ref()]).args(extra).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(out.status.code(), Some(1), "{stdout}");
        let path = stdout.lines().find_map(|l| l.split("  timeline: ").nth(1)).expect("the timeline's path").trim();
        (PathBuf::from(path), stdout)
    };
    let (path, stdout) = run_failing(sandboxes.path(), &["--keep-failed"]);
    let path = path.to_str().unwrap();
    assert!(path.starts_with(sandboxes.path().to_str().unwrap()) && path.ends_with("/timeline.html"), "{stdout}");
    let timeline = std::fs::read_to_string(path).unwrap();
    assert!(timeline.contains(r#"<span class="failedrun">FAILED</span>"#), "{timeline}");
    assert!(timeline.contains(">step 5 failed<"), "{timeline}");
    assert!(timeline.contains("<b>expected:</b> "), "{timeline}");

    // Without --keep-failed the sandbox goes, but the failed run's timeline is saved
    // beside it, and the report names that copy.
    let gone = tempfile::tempdir().unwrap();
    let (path, stdout) = run_failing(gone.path(), &[]);
    let path = path.as_path();
    assert_eq!(path.parent(), Some(gone.path()), "{stdout}");
    assert!(path.file_name().unwrap().to_string_lossy().ends_with(".timeline.html"), "{stdout}");
    let left: Vec<_> = std::fs::read_dir(gone.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(left, vec![path.to_path_buf()], "the sandbox itself is removed");
    let timeline = std::fs::read_to_string(path).unwrap();
    assert!(timeline.contains(">step 5 failed<"), "{timeline}");
}

/// `homer-harness run FILE` against the workspace's daemon, in the background, with its
/// sandboxes under `sandboxes`, none kept whatever the environment says.
#[cfg(target_os = "linux")]
fn spawn_run(file: &Path, stdout: Stdio, sandboxes: &Path) -> std::process::Child {
    run_in(sandboxes, &[file.as_ref()]).stdout(stdout).spawn().unwrap()
}

/// What is left in `dir` of runs of scenario `name`: their sandboxes and saved timelines.
#[cfg(target_os = "linux")]
fn left_by(dir: &Path, name: &str) -> Vec<String> {
    let prefix = format!("homer-harness-{name}-");
    let mut left: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    left.sort();
    left
}

#[cfg(target_os = "linux")]
#[test]
fn nothing_survives_a_passed_or_a_failed_run() {
    let dir = tempfile::tempdir().unwrap();
    // Passes while a daemon, a job and an escaped grandchild still run.
    let passing = write(dir.path(), "leaves-processes.toml", &long_scenario(&linger("3s")));
    // Fails at its last step, with the same processes running.
    let failing = write(dir.path(), "fails.toml", &long_scenario(&never("3s")));
    for (file, code) in [(passing, 0), (failing, 1)] {
        let mut child = spawn_run(&file, Stdio::piped(), dir.path());
        let pid = child.id();
        let seen = wait_for_processes(pid, 3);
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(code), "{}", file.display());
        assert!(
            started_by(pid).is_empty(),
            "{} left {:?} alive (saw {seen:?} during the run)",
            file.display(),
            started_by(pid)
        );
    }
    // The sandboxes are gone; the failed run's timeline stays, saved beside them.
    assert_eq!(left_by(dir.path(), "leaves-processes"), Vec::<String>::new());
    let left = left_by(dir.path(), "fails");
    assert!(left.len() == 1 && left[0].ends_with(".timeline.html"), "{left:?}");
}

#[cfg(target_os = "linux")]
#[test]
fn nothing_survives_an_interrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "long.toml", &long_scenario(&never("600s")));
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let mut child = spawn_run(&file, Stdio::null(), dir.path());
        let pid = child.id();
        // The daemon, the job and its escaped grandchild (a CLI enqueue may also be seen).
        let seen = wait_for_processes(pid, 3);
        assert_eq!(left_by(dir.path(), "long").len(), 1, "signal {signal}: the run's sandbox");
        // The harness child this test started, not yet reaped.
        assert!(homer_harness::procs::signal_pid(pid, signal), "signal {signal} to {pid}");
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(128 + signal), "signal {signal}");
        assert!(started_by(pid).is_empty(), "signal {signal}: {:?} alive (saw {seen:?})", started_by(pid));
        assert_eq!(left_by(dir.path(), "long"), Vec::<String>::new(), "signal {signal}: the sandbox is removed");
    }
}

/// A scenario on a 4 MiB tmpfs home that fills it, then ends with `last_step`.
#[cfg(target_os = "linux")]
fn tmpfs_scenario(last_step: &str) -> String {
    self_test(
        "a daemon on a tmpfs home, the home filled",
        "requires = [\"tmpfs\"]\nhome_size = \"4m\"\n",
        &format!("[[step]]\nfile = \"{{home}}/filler\"\nop = \"fill\"\n\n{last_step}\n"),
    )
}

/// A working directory for a tmpfs test, or `None` where a tmpfs cannot be mounted here
/// (it says why on stderr; the caller then skips).
#[cfg(target_os = "linux")]
fn tmpfs_test_dir() -> Option<tempfile::TempDir> {
    if let Some(why) = homer_harness::faults::cannot_mount() {
        eprintln!("skipped: {why}");
        return None;
    }
    Some(tempfile::tempdir().unwrap())
}

/// Mount points of this namespace under a sandbox of scenario `name`.
#[cfg(target_os = "linux")]
fn sandbox_mounts(name: &str) -> Vec<PathBuf> {
    let prefix = format!("homer-harness-{name}-");
    homer_harness::faults::mount_points()
        .into_iter()
        .filter(|m| m.components().any(|c| c.as_os_str().to_string_lossy().starts_with(&prefix)))
        .collect()
}

#[cfg(target_os = "linux")]
#[test]
fn a_tmpfs_home_is_unmounted_after_a_passed_a_failed_and_an_interrupted_run() {
    let Some(dir) = tmpfs_test_dir() else { return };
    let cases = [
        ("tmpfs-passes", linger("1s"), 0),
        ("tmpfs-fails", never("2s"), 1),
        ("tmpfs-interrupted", never("600s"), 128 + libc::SIGINT),
    ];
    for (name, last, code) in cases {
        let file = write(dir.path(), &format!("{name}.toml"), &tmpfs_scenario(&last));
        let child = run_in(dir.path(), &[file.as_ref()]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let pid = child.id();
        // Every case runs with its home mounted: the daemon starts only after the mount.
        wait_for_processes(pid, 1);
        assert_eq!(sandbox_mounts(name).len(), 1, "{name}: the tmpfs home is not mounted while it runs");
        if code == 128 + libc::SIGINT {
            // The harness child this test started, not yet reaped.
            assert!(homer_harness::procs::signal_pid(pid, libc::SIGINT), "SIGINT to {pid}");
        }
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(code), "{name}: {out:?}");
        assert!(sandbox_mounts(name).is_empty(), "{name} leaked a mount: {:?}", sandbox_mounts(name));
        assert!(started_by(pid).is_empty(), "{name} left {:?}", started_by(pid));
        // Its sandbox is removed, the home's mount point with it (a failed run's timeline
        // stays beside it).
        let left = left_by(dir.path(), name);
        assert!(
            left.iter().all(|n| n.ends_with(".timeline.html")) && left.len() == usize::from(code == 1),
            "{name}: {left:?}"
        );
        if code == 1 {
            // The failure report says what the fill step did.
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(stdout.contains("before ENOSPC"), "{stdout}");
        }
    }
}

#[cfg(target_os = "linux")]
#[test]
fn a_kept_tmpfs_home_is_copied_into_the_sandbox() {
    let Some(dir) = tmpfs_test_dir() else { return };
    let file = write(dir.path(), "tmpfs-kept.toml", &tmpfs_scenario(&linger("10ms")));
    let out = run(&["run", file.to_str().unwrap(), "--keep"]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = stdout.lines().find_map(|l| l.split("sandbox kept: ").nth(1)).expect("a kept path").trim().to_string();
    let kept = PathBuf::from(&path);
    assert!(sandbox_mounts("tmpfs-kept").is_empty());
    assert!(kept.join("home/homer.db").is_file(), "{path}");
    assert!(kept.join("home/filler").is_file(), "{path}");
    let steps = std::fs::read_to_string(kept.join("harness-logs/steps.log")).unwrap();
    assert!(steps.contains("step 3 (line 15)") && steps.contains("before ENOSPC"), "{steps}");
    std::fs::remove_dir_all(kept).unwrap();
}

/// `--backend` picks one backend; naming one no given file opts into exits 2 (usage) and
/// runs nothing; an unknown one is refused by the argument parser.
#[test]
fn backend_picks_the_runs_and_a_backend_no_file_names_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "sqlite-only.toml", &passing());
    let file = file.to_string_lossy().into_owned();
    let out = run(&["run", &file, "--backend", "postgres"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no scenario given runs on postgres") && err.contains("backends"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("PASS"), "{out:?}");
    let out = run(&["run", &file, "--backend", "mysql"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown backend `mysql`"), "{out:?}");
    let out = run(&["run", &file, "--backend", "sqlite"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 runs: 1 passed"), "{out:?}");
}

/// A database a daemon led on that can no longer be read is a failure of the final check
/// (`integrity`: unreadable), never a reason to skip the checkers that read it.
#[test]
fn an_unreadable_database_fails_the_final_check() {
    let dir = tempfile::tempdir().unwrap();
    // The passing scenario, then: stop the daemon and overwrite its database.
    let unreadable = passing().replace(
        "[[step]]\ncheck = \"invariants\"\n",
        "[[step]]\nsignal = \"a\"\nsig = \"TERM\"\n\n[[step]]\nwait = \"exit\"\ntarget = \"a\"\n\n\
         [[step]]\nfile = \"{db}\"\nop = \"replace\"\ncontents = \"not a database any more\"\n",
    );
    assert!(unreadable.contains("op = \"replace\""), "the passing scenario changed its shape");
    let file = write(dir.path(), "unreadable.toml", &unreadable);
    let out = run_in(dir.path(), &[file.as_ref()]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("final invariant check") && stdout.contains("integrity: PRAGMA integrity_check: unreadable:"),
        "{stdout}"
    );
}
