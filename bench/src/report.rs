//! Figures beside their baselines: summaries of repeated samples, the printed table and
//! the JSON written with `--json`.

use serde_json::{json, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    JobsPerSec,
    Ms,
    Bytes,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Unit::JobsPerSec => "jobs/s",
            Unit::Ms => "ms",
            Unit::Bytes => "bytes",
        }
    }

    /// As printed beside a figure's name (values in bytes print as MiB).
    fn shown(self) -> &'static str {
        match self {
            Unit::Bytes => "MiB",
            other => other.as_str(),
        }
    }

    pub fn format(self, v: f64) -> String {
        match self {
            Unit::JobsPerSec => thousands(v.round() as u64),
            Unit::Ms if v < 10.0 => format!("{v:.2}"),
            Unit::Ms => format!("{v:.1}"),
            Unit::Bytes => format!("{:.1}", v / (1024.0 * 1024.0)),
        }
    }
}

/// `1M`, `100k`, else `12,345`.
pub fn short(n: u64) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => thousands(n),
    }
}

pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One statistic of a set of samples, with the samples' range.
#[derive(Clone, Debug)]
pub struct Summary {
    /// `median`, `p50`, `p95`, `p99` or `value`.
    pub stat: &'static str,
    pub value: f64,
    pub min: f64,
    pub max: f64,
    pub samples: Vec<f64>,
}

impl Summary {
    pub fn median(samples: &[f64]) -> Summary {
        Summary::percentile(samples, 50.0, "median")
    }

    /// The nearest-rank percentile `p` of `samples` (which must not be empty).
    pub fn percentile(samples: &[f64], p: f64, stat: &'static str) -> Summary {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let value = if sorted.is_empty() {
            f64::NAN
        } else if stat == "median" && sorted.len() % 2 == 0 {
            (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
        } else {
            let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
            sorted[rank.min(sorted.len()) - 1]
        };
        Summary {
            stat,
            value,
            min: sorted.first().copied().unwrap_or(f64::NAN),
            max: sorted.last().copied().unwrap_or(f64::NAN),
            samples: samples.to_vec(),
        }
    }

    fn show(&self, unit: Unit) -> String {
        if self.samples.len() <= 1 {
            return unit.format(self.value);
        }
        format!("{} ({}–{})", unit.format(self.value), unit.format(self.min), unit.format(self.max))
    }

    fn to_json(&self) -> Value {
        json!({"stat": self.stat, "value": self.value, "min": self.min, "max": self.max,
               "n": self.samples.len(), "samples": self.samples})
    }
}

/// One figure of homerd's beside one baseline. Rows of one figure share its name.
#[derive(Clone, Debug)]
pub struct Row {
    pub figure: String,
    pub unit: Unit,
    pub homerd: Summary,
    pub baseline: String,
    pub base: Summary,
}

impl Row {
    /// homerd / baseline.
    pub fn ratio(&self) -> f64 {
        self.homerd.value / self.base.value
    }
}

#[derive(Clone, Debug)]
pub struct Goal {
    pub text: String,
    pub met: bool,
    pub detail: String,
}

#[derive(Default)]
pub struct Report {
    pub rows: Vec<Row>,
    pub goals: Vec<Goal>,
    /// Secondary figures and how each was measured.
    pub notes: Vec<String>,
    pub plans: Vec<(String, Vec<String>, bool)>,
    pub machine: Vec<(String, String)>,
    pub settings: Vec<(String, String)>,
}

impl Report {
    pub fn row(&mut self, figure: &str, unit: Unit, homerd: Summary, baseline: &str, base: Summary) {
        self.rows.push(Row { figure: figure.to_owned(), unit, homerd, baseline: baseline.to_owned(), base });
    }

    pub fn goal(&mut self, text: &str, met: bool, detail: String) {
        self.goals.push(Goal { text: text.to_owned(), met, detail });
    }

    pub fn note(&mut self, s: impl Into<String>) {
        let s = s.into();
        eprintln!("  {s}");
        self.notes.push(s);
    }

    pub fn table(&self) -> String {
        const W: [usize; 5] = [48, 6, 24, 38, 24];
        let mut out = String::new();
        let line = |cols: [&str; 6]| {
            format!(
                "{:<w0$} {:<w1$} {:<w2$} {:<w3$} {:<w4$} {}\n",
                cols[0],
                cols[1],
                cols[2],
                cols[3],
                cols[4],
                cols[5],
                w0 = W[0],
                w1 = W[1],
                w2 = W[2],
                w3 = W[3],
                w4 = W[4]
            )
        };
        out.push_str(&line(["figure", "stat", "homerd (min–max)", "baseline", "baseline (min–max)", "ratio"]));
        out.push_str(&format!("{}\n", "-".repeat(W.iter().sum::<usize>() + 5 + 6)));
        // A figure's name shows once; its value once per statistic.
        let (mut last_figure, mut last_stat) = ("", "");
        for r in &self.rows {
            let figure =
                if r.figure == last_figure { String::new() } else { format!("{} ({})", r.figure, r.unit.shown()) };
            let (stat, value) = if figure.is_empty() && r.homerd.stat == last_stat {
                (String::new(), String::new())
            } else {
                (r.homerd.stat.to_owned(), r.homerd.show(r.unit))
            };
            let ratio = format!("{:.2}", r.ratio());
            out.push_str(&line([&figure, &stat, &value, &r.baseline, &r.base.show(r.unit), &ratio]));
            (last_figure, last_stat) = (&r.figure, r.homerd.stat);
        }
        out
    }

    pub fn print(&self, total_secs: f64) {
        println!("\nhomer-bench: homerd beside what SQLite and the kernel allow on this machine");
        for (k, v) in &self.machine {
            println!("  {k:<8} {v}");
        }
        if !self.settings.is_empty() {
            println!("settings:");
            for (k, v) in &self.settings {
                println!("  {k:<12} {v}");
            }
        }
        println!("\n{}", self.table());
        println!("ratio = homerd / baseline: above 1 is faster for jobs/s, slower (or larger) for ms and MiB.");
        if !self.notes.is_empty() {
            println!("\nnotes:");
            for n in &self.notes {
                println!("  - {n}");
            }
        }
        if !self.plans.is_empty() {
            println!("\nquery plans (EXPLAIN QUERY PLAN on the recovery-scale database):");
            for (name, lines, indexed) in &self.plans {
                println!("  {name}{}", if *indexed { "" } else { "   <-- FULL TABLE SCAN" });
                for l in lines {
                    println!("      {l}");
                }
            }
        }
        if !self.goals.is_empty() {
            println!("\ngoals (reported, not enforced):");
            for g in &self.goals {
                println!("  [{}] {}: {}", if g.met { "met" } else { "MISSED" }, g.text, g.detail);
            }
        }
        println!("\ntotal bench time {total_secs:.0} s");
    }

    pub fn to_json(&self, total_secs: f64) -> Value {
        let pairs = |v: &[(String, String)]| -> Value {
            Value::Object(v.iter().map(|(k, v)| (k.clone(), Value::from(v.clone()))).collect())
        };
        json!({
            "machine": pairs(&self.machine),
            "settings": pairs(&self.settings),
            "figures": self.rows.iter().map(|r| json!({
                "figure": r.figure, "unit": r.unit.as_str(), "homerd": r.homerd.to_json(),
                "baseline": r.baseline, "baseline_value": r.base.to_json(), "ratio": r.ratio(),
            })).collect::<Vec<_>>(),
            "goals": self.goals.iter().map(|g| json!({"goal": g.text, "met": g.met, "detail": g.detail}))
                .collect::<Vec<_>>(),
            "notes": self.notes,
            "query_plans": self.plans.iter().map(|(n, l, i)| json!({"statement": n, "plan": l, "indexed": i}))
                .collect::<Vec<_>>(),
            "total_seconds": total_secs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank_and_the_median_averages_the_middle() {
        let s: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(Summary::percentile(&s, 95.0, "p95").value, 19.0);
        assert_eq!(Summary::percentile(&s, 50.0, "p50").value, 10.0);
        assert_eq!(Summary::median(&s).value, 10.5);
        assert_eq!(Summary::median(&[3.0, 1.0, 2.0]).value, 2.0);
        let one = Summary::percentile(&[7.0], 99.0, "p99");
        assert_eq!((one.value, one.min, one.max), (7.0, 7.0, 7.0));
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
        assert_eq!(Unit::Ms.format(4.5678), "4.57");
        assert_eq!(Unit::Ms.format(45.678), "45.7");
        assert_eq!(Unit::Bytes.format(8.0 * 1024.0 * 1024.0), "8.0");
        assert_eq!((short(1_000_000), short(100_000), short(1_500)), ("1M".into(), "100k".into(), "1,500".into()));
    }

    #[test]
    fn rows_of_one_figure_share_its_columns() {
        let mut r = Report::default();
        let s = |v: f64| Summary::median(&[v]);
        r.row("throughput", Unit::JobsPerSec, s(100.0), "raw A", s(200.0));
        r.row("throughput", Unit::JobsPerSec, s(100.0), "raw B", s(50.0));
        let t = r.table();
        assert_eq!(t.matches("throughput").count(), 1, "{t}");
        assert!(t.contains("0.50") && t.contains("2.00"), "{t}");
        // Another statistic of the same figure shows its own value.
        let p = |v: f64| Summary::percentile(&[v], 95.0, "p95");
        r.row("throughput", Unit::JobsPerSec, p(300.0), "raw C", p(100.0));
        let t = r.table();
        assert!(t.contains("p95") && t.contains("300"), "{t}");
    }
}
