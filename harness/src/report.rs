//! What a run prints: one live line per finished scenario, a summary table, failure details,
//! and JUnit XML (`--junit FILE`) with one testcase per scenario run.

use std::fmt::Write as _;
use std::time::Duration;

use crate::exec::{Outcome, ScenarioResult};

fn status(o: &Outcome) -> &'static str {
    match o {
        Outcome::Passed => "PASS",
        Outcome::Failed(_) => "FAIL",
        Outcome::Skipped(_) => "SKIP",
    }
}

/// The live line for a finished scenario (and its failure or skip reason).
pub fn line(r: &ScenarioResult) -> String {
    let mut s = format!("{} {:<48} {:>7.2}s", status(&r.outcome), r.name, r.duration.as_secs_f64());
    if let Outcome::Skipped(why) = &r.outcome {
        let _ = write!(s, "  (skipped: {why})");
    }
    if let Some(k) = &r.kept {
        let _ = write!(s, "  sandbox kept: {}", k.display());
    }
    s
}

/// Failure details for every failed result.
pub fn failures(results: &[ScenarioResult]) -> String {
    let mut s = String::new();
    for r in results {
        if let Outcome::Failed(f) = &r.outcome {
            let _ = writeln!(s, "\n=== FAILED {} ({})", r.name, r.path.display());
            let _ = write!(s, "{f}");
        }
    }
    s
}

/// The summary table: one row per scenario (runs aggregated), then totals.
pub fn table(results: &[ScenarioResult], wall: Duration) -> String {
    let mut names: Vec<&str> = results.iter().map(|r| r.name.as_str()).collect();
    names.dedup();
    let mut seen = std::collections::BTreeSet::new();
    names.retain(|n| seen.insert(*n));
    let mut s = String::new();
    let _ = writeln!(s, "\n{:<48} {:>5} {:>5} {:>5} {:>9}", "scenario", "pass", "fail", "skip", "max time");
    for n in &names {
        let rs: Vec<&ScenarioResult> = results.iter().filter(|r| r.name == *n).collect();
        let count = |f: fn(&Outcome) -> bool| rs.iter().filter(|r| f(&r.outcome)).count();
        let max = rs.iter().map(|r| r.duration).max().unwrap_or_default();
        let _ = writeln!(
            s,
            "{:<48} {:>5} {:>5} {:>5} {:>8.2}s",
            n,
            count(|o| matches!(o, Outcome::Passed)),
            count(|o| matches!(o, Outcome::Failed(_))),
            count(|o| matches!(o, Outcome::Skipped(_))),
            max.as_secs_f64()
        );
    }
    let total = |f: fn(&Outcome) -> bool| results.iter().filter(|r| f(&r.outcome)).count();
    let _ = writeln!(
        s,
        "{} runs: {} passed, {} failed, {} skipped in {:.1}s",
        results.len(),
        total(|o| matches!(o, Outcome::Passed)),
        total(|o| matches!(o, Outcome::Failed(_))),
        total(|o| matches!(o, Outcome::Skipped(_))),
        wall.as_secs_f64()
    );
    s
}

fn xml_escape(s: &str) -> String {
    crate::timeline::escape_markup(s, crate::timeline::Markup::Xml)
}

/// JUnit XML: one `<testsuite>`, one `<testcase>` per scenario run (repeats get `#N`).
pub fn junit(results: &[ScenarioResult], wall: Duration) -> String {
    let failures = results.iter().filter(|r| matches!(r.outcome, Outcome::Failed(_))).count();
    let skipped = results.iter().filter(|r| matches!(r.outcome, Outcome::Skipped(_))).count();
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        s,
        "<testsuites><testsuite name=\"homer-harness\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" time=\"{:.3}\">",
        results.len(),
        wall.as_secs_f64()
    );
    let mut counts = std::collections::HashMap::<&str, usize>::new();
    for r in results {
        let n = counts.entry(&r.name).or_default();
        *n += 1;
        let name = if *n > 1 { format!("{}#{}", r.name, n) } else { r.name.clone() };
        let _ = write!(
            s,
            "  <testcase classname=\"scenarios\" name=\"{}\" file=\"{}\" time=\"{:.3}\"",
            xml_escape(&name),
            xml_escape(&r.path.display().to_string()),
            r.duration.as_secs_f64()
        );
        match &r.outcome {
            Outcome::Passed => s.push_str("/>\n"),
            Outcome::Skipped(why) => {
                let _ = writeln!(s, "><skipped message=\"{}\"/></testcase>", xml_escape(why));
            }
            Outcome::Failed(f) => {
                let _ = writeln!(
                    s,
                    "><failure message=\"{}\">{}</failure></testcase>",
                    xml_escape(&format!("expected {}; got {}", f.expected, f.actual)),
                    xml_escape(&f.to_string())
                );
            }
        }
    }
    s.push_str("</testsuite></testsuites>\n");
    s
}

/// Machine-readable results: `[{"name", "outcome": "passed"|"failed"|"skipped", "detail"}]`.
pub fn json(results: &[ScenarioResult]) -> serde_json::Value {
    results
        .iter()
        .map(|r| {
            let (outcome, detail) = match &r.outcome {
                Outcome::Passed => ("passed", String::new()),
                Outcome::Failed(f) => ("failed", format!("{}: expected {}; got {}", f.what, f.expected, f.actual)),
                Outcome::Skipped(why) => ("skipped", why.clone()),
            };
            serde_json::json!({ "name": r.name, "outcome": outcome, "detail": detail,
                                "seconds": r.duration.as_secs_f64() })
        })
        .collect()
}
