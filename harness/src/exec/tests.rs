//! The context's step-independent helpers: targets, placeholders, output patterns.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::ctx::{check_patterns, matches_target, tail, Ctx};
use super::Options;
use crate::scenario::{parse_str, Pattern};

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
