//! The context's step-independent helpers: targets, placeholders, output patterns.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::ctx::{check_patterns, matches_target, tail, Ctx};
use super::Options;
use crate::scenario::{parse_str, Pattern};

/// These tests run real servers: without the binaries they fail, saying what installs them.
fn needs_postgres() {
    if let Err(why) = homer_testkit::postgres::available() {
        panic!("this test needs the PostgreSQL server binaries (.ci/postgres-binaries installs them): {why}");
    }
}

/// The top of the scenario files these tests run.
const HEADER: &str = "description = \"d\"\ncovers = [\"t\"]\nmutant_none = \"a test of the harness\"\n[settings]\n";

/// Scenario `text`, parsed.
fn parsed(text: &str) -> crate::scenario::Scenario {
    parse_str(Path::new("scenarios/t.toml"), text).unwrap_or_else(|e| panic!("{e}"))
}

/// Options with `/bin/sh` standing in for homerd, sandboxes kept under `base`.
fn sh_options(base: &Path) -> Options {
    Options { daemon: PathBuf::from("/bin/sh"), keep: true, sandbox_base: Some(base.into()), ..options() }
}

/// Runs scenario `text` on its PostgreSQL backend ([`sh_options`]); the run, which must
/// have passed.
fn passes_on_postgres(text: &str, base: &Path) -> super::ScenarioResult {
    let run = parsed(text).for_backend(crate::scenario::Backend::Postgres).unwrap();
    // No `procs::init` here: its reaper would take the exit statuses of other tests'
    // children in this process. The run's processes carry its marker all the same.
    let r = super::run_scenario(&run, &sh_options(base));
    assert!(matches!(r.outcome, super::Outcome::Passed), "{:?}", r.outcome);
    r
}

fn options() -> Options {
    Options::for_tests()
}

#[test]
fn targets() {
    assert!(matches_target("*", "cli#3"));
    assert!(matches_target("a", "a") && !matches_target("a", "a.1"));
    assert!(matches_target("a.*", "a.2") && matches_target("a.*", "a") && !matches_target("a.*", "ab.1"));
    assert!(matches_target("enqueue*", "enqueue#4") && !matches_target("enqueue*", "cli#1"));
}

#[test]
fn placeholders() {
    let sc = parse_str(
        Path::new("scenarios/t.toml"),
        "description = \"d\"\ncovers = [\"t\"]\nmutant = \"m\"\n[[step]]\nstart = \"a\"\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let opts = options();
    let sandbox = PathBuf::from("/sb");
    let mut ctx = Ctx::new(&sc, &opts, sandbox, String::from("test"), Instant::now());
    assert_eq!(ctx.subst("{home}/x {lock} {db}").unwrap(), "/sb/home/x /sb/home/homer.lock /sb/home/homer.db");
    assert_eq!(ctx.path("rel/f").unwrap(), Path::new("/sb/rel/f"));
    assert!(ctx.subst("{probe}").unwrap().starts_with("probe __probe --effects /sb/effects"));
    let e = ctx.subst("{job:1}").expect_err("no job acknowledged yet");
    assert_eq!((e.expected.as_str(), e.actual.as_str()), ("at least 1 acknowledged enqueues for {job:1}", "0"));
    ctx.acked.push(42);
    assert_eq!(ctx.subst("k-{job:1}").unwrap(), "k-42");
    assert!(ctx.subst("{job:x}").is_err());
}

#[test]
fn output_patterns() {
    let pat = |negated, regex, text: &str| Pattern { negated, regex, text: text.into() };
    let out = b"starting\nexited 0\n";
    assert!(check_patterns("a", "stderr", out, &[pat(false, false, "exited"), pat(true, true, "panic|error")]).is_ok());
    let e = check_patterns("a", "stderr", out, &[pat(true, true, "exit(ed)? 0")]).expect_err("negated match");
    assert_eq!(e.expected, "a stderr not to contain \"exit(ed)? 0\"");
    assert_eq!(tail(out, 1), "exited 0");
}

/// A run on PostgreSQL: the server starts before the first step, every homerd the run
/// starts gets its URL (here a shell stands in for homerd and prints its environment),
/// `sql` runs there, and at the end the server is gone while the kept sandbox holds its log.
#[test]
fn a_postgres_run_starts_its_server_gives_every_homerd_the_url_and_stops_it() {
    needs_postgres();
    let base = tempfile::tempdir().unwrap();
    let text = &format!(
        r#"{HEADER}backends = ["sqlite", "postgres"]
[[step]]
cli = ["-c", "printenv HOMER_DATABASE; printenv HOMER_HOME"]
no_settings = true
stdout = ["re:^postgres://homer@127\\.0\\.0\\.1:\\d+/homer\n", "/home\n"]
[[step]]
sql = "SELECT current_database(), 2 > 1, count(*) FROM pg_stat_activity WHERE false"
rows = [["homer", 1, 0]]
"#
    );
    let r = passes_on_postgres(text, base.path());
    assert_eq!(r.name, "t [postgres]");
    let kept = r.kept.expect("kept");
    assert!(kept.file_name().unwrap().to_string_lossy().starts_with("homer-harness-t-pg-"), "{}", kept.display());
    let steps = std::fs::read_to_string(kept.join("harness-logs/steps.log")).unwrap();
    let log = steps.lines().next().and_then(|l| l.split("(log ").nth(1)).map(|l| l.trim_end_matches(')')).unwrap();
    // The log is in the sandbox: beside the data directory, or copied in when the server
    // had to live outside it.
    let in_sandbox = Path::new(log).starts_with(&kept)
        || std::fs::read_dir(&kept).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().ends_with(".log"));
    assert!(in_sandbox, "{steps}");
    // Nothing of the server is left running.
    let postmasters = std::process::Command::new("pgrep").args(["-f", &kept.to_string_lossy()]).output().unwrap();
    assert!(postmasters.stdout.is_empty(), "{}", String::from_utf8_lossy(&postmasters.stdout));
    // The same file on SQLite has no server and no URL: its cli step fails on the pattern.
    let r = super::run_scenario(&parsed(text), &Options { keep: false, ..sh_options(base.path()) });
    let super::Outcome::Failed(f) = r.outcome else { panic!("{:?}", r.outcome) };
    assert!(f.expected.contains("postgres://"), "{f}");
}

/// `server = "restart"`: the run's server stops (immediate: a crash; fast) and starts
/// again on the same port; the run's queries reach it again after each.
#[test]
fn a_server_step_restarts_the_run_s_server_and_queries_reach_it_again() {
    needs_postgres();
    let base = tempfile::tempdir().unwrap();
    let text = &format!(
        r#"{HEADER}backends = ["postgres"]
[[step]]
sql = "SELECT count(*) FROM pg_stat_activity WHERE false"
rows = [[0]]
[[step]]
server = "restart"
mode = "immediate"
[[step]]
sql = "SELECT count(*) FROM pg_stat_activity WHERE false"
rows = [[0]]
[[step]]
server = "restart"
[[step]]
wait = "sql"
query = "SELECT 1"
rows = [[1]]
"#
    );
    let r = passes_on_postgres(text, base.path());
    let steps = std::fs::read_to_string(r.kept.unwrap().join("harness-logs/steps.log")).unwrap();
    assert_eq!(steps.matches("the server accepts connections again after").count(), 2, "{steps}");
    assert!(steps.contains("restart the PostgreSQL server (immediate)") && steps.contains("(fast)"), "{steps}");
}
