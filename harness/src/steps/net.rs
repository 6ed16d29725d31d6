//! `partition`, `heal`, `delay`: the network between a host and the run's PostgreSQL
//! server (a scenario with `[settings] hosts = true`, where each home is a host: a
//! network namespace joined to the server's by a link of its own, `homer_testkit::Host`).
//!
//! A partition sets the host's end of its link down: an established connection hears
//! nothing (no reset: only the daemon's own timeouts end a wait) and a new one fails;
//! the host's processes keep running and the harness still reads what they print. A heal
//! sets it up again. A delay slows every packet the host sends (tc netem), where the
//! kernel has `sch_netem`; elsewhere the step fails saying so and changes nothing.

use std::time::Duration;

use super::{Mark, MarkKind, Verb};
use crate::exec::ctx::{fail, Ctx, StepError};
use crate::scenario::kit::{Cx, Field, Res, Tbl};

/// `partition = "a"`: cut host `a` off from the server.
#[derive(Clone, Debug)]
pub struct Partition {
    pub host: String,
}

/// `heal = "a"`: join host `a` to the server again.
#[derive(Clone, Debug)]
pub struct Heal {
    pub host: String,
}

/// `delay = "a"` with `by` (and `jitter`): every packet host `a` sends waits `by` ±
/// `jitter` (both scaled by the time scale); `by = "0"` removes the delay.
#[derive(Clone, Debug)]
pub struct Delay {
    pub host: String,
    pub by: Duration,
    pub jitter: Duration,
}

/// The host a network step names: a home that an earlier `start` of a `hosts = true`
/// scenario runs on.
fn host_name(cx: &Cx, v: &Field, verb: &str) -> Res<String> {
    let Some(name) = v.str().filter(|s| !s.is_empty()) else {
        return Err(cx.wrong(v, "a host's name: the `home` of an earlier `start`, like \"a\""));
    };
    if !cx.hosts {
        return Err(cx.err(
            &v.key_span,
            v.path.clone(),
            format!(
                "`{verb}` acts on a host's link to the server: it needs `[settings] hosts = true` (and \
                 `backends = [\"postgres\"]`), where each home runs as a host"
            ),
        ));
    }
    if !cx.homes.iter().any(|h| h == name) {
        let known = if cx.homes.is_empty() { String::from("none yet") } else { cx.homes.join(", ") };
        return Err(cx.err(
            &v.span(),
            v.path.clone(),
            format!(
                "`{verb}` names host `{name}`, but no earlier `start` runs on home `{name}` (hosts so far: {known})"
            ),
        ));
    }
    Ok(name.to_owned())
}

/// `partition` and `heal` differ only in their words and the `Host` call they make: one
/// implementation, written once.
macro_rules! link_verb {
    ($ty:ident, $key:literal, $summary:literal, $label:literal, $call:ident, $done:literal) => {
        impl Verb for $ty {
            const KEY: &'static str = $key;
            const OPTIONS: &'static [&'static str] = &[];

            fn parse(cx: &mut Cx<'_>, t: &Tbl<'_>, v: &Field<'_>) -> Res<$ty> {
                Self::only_its_options(cx, t)?;
                Ok($ty { host: host_name(cx, v, Self::KEY)? })
            }

            fn summary(&self) -> String {
                format!($summary, self.host)
            }

            fn mark(&self) -> Option<Mark> {
                Some(Mark { kind: MarkKind::Network, label: format!($label, self.host), target: None })
            }

            fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
                let host = ctx.host(&self.host)?;
                if let Err(e) = host.$call() {
                    return fail(format!($done, self.host), e);
                }
                Ok(())
            }
        }
    };
}

link_verb!(
    Partition,
    "partition",
    "partition host {} from the server",
    "partition {}",
    partition,
    "host {} partitioned"
);
link_verb!(Heal, "heal", "heal host {}'s link to the server", "heal {}", heal, "host {} healed");

impl Verb for Delay {
    const KEY: &'static str = "delay";
    const OPTIONS: &'static [&'static str] = &["by", "jitter"];

    fn parse(cx: &mut Cx<'_>, t: &Tbl<'_>, v: &Field<'_>) -> Res<Delay> {
        Self::only_its_options(cx, t)?;
        let host = host_name(cx, v, Self::KEY)?;
        let Some(by) = cx.opt(t, "by", Cx::duration)? else {
            return Err(cx.err(
                &v.key_span,
                v.path.clone(),
                "`delay` needs `by`: how long each packet the host sends waits, like \"200ms\" (\"0\" removes the delay)",
            ));
        };
        let jitter = cx.opt(t, "jitter", Cx::duration)?.unwrap_or(Duration::ZERO);
        // tc takes whole milliseconds in a u32: far beyond any delay a scenario means.
        for (key, d) in [("by", by), ("jitter", jitter)] {
            if d > Duration::from_secs(60) {
                let f = t.get(key).expect("parsed above");
                return Err(cx.wrong(&f, "a delay of at most 60s"));
            }
        }
        Ok(Delay { host, by, jitter })
    }

    fn summary(&self) -> String {
        if self.by.is_zero() && self.jitter.is_zero() {
            format!("remove host {}'s delay", self.host)
        } else {
            format!("delay host {}'s packets by {:?} ± {:?}", self.host, self.by, self.jitter)
        }
    }

    fn mark(&self) -> Option<Mark> {
        let label = if self.by.is_zero() && self.jitter.is_zero() {
            format!("no delay {}", self.host)
        } else {
            format!("delay {} {}ms", self.host, self.by.as_millis())
        };
        Some(Mark { kind: MarkKind::Network, label, target: None })
    }

    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        let ms = |d: Duration| u32::try_from(ctx.scaled(d).as_millis()).unwrap_or(u32::MAX);
        let (by, jitter) = (ms(self.by), ms(self.jitter));
        let host = ctx.host(&self.host)?;
        // Without sch_netem the testkit says so (CONFIG_NET_SCH_NETEM, `modprobe sch_netem`).
        if let Err(e) = host.delay(by, jitter) {
            return fail(format!("host {}'s packets delayed by {by} ms ± {jitter} ms", self.host), e);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::scenario::{parse_str, Step};
    use std::path::Path;

    const HEAD: &str = "description = \"d\"\ncovers = [\"c\"]\nmutant_none = \"n\"\n";

    fn parse(settings: &str, steps: &str) -> Result<Vec<Step>, String> {
        let text = format!("{HEAD}[settings]\n{settings}\n{steps}");
        parse_str(Path::new("net.toml"), &text)
            .map(|s| s.steps.into_iter().map(|a| a.step).collect())
            .map_err(|e| e.to_string())
    }

    const HOSTS: &str = "backends = [\"postgres\"]\nhosts = true";
    const START_A: &str = "[[step]]\nstart = \"a\"\nhome = \"a\"\n";

    #[test]
    fn partition_heal_and_delay_name_a_host_that_a_start_made() {
        let steps = parse(
            HOSTS,
            &format!(
                "{START_A}[[step]]\npartition = \"a\"\n[[step]]\nheal = \"a\"\n[[step]]\ndelay = \"a\"\nby = \"200ms\"\njitter = \"20ms\"\n"
            ),
        )
        .unwrap();
        assert!(matches!(&steps[1], Step::Partition(p) if p.host == "a"));
        assert!(matches!(&steps[2], Step::Heal(h) if h.host == "a"));
        assert!(
            matches!(&steps[3], Step::Delay(d) if d.by.as_millis() == 200 && d.jitter.as_millis() == 20),
            "{:?}",
            steps[3]
        );
        assert_eq!(steps[1].mark().map(|m| m.label), Some(String::from("partition a")));
        let sc = parse_str(Path::new("n.toml"), &format!("{HEAD}[settings]\n{HOSTS}\n{START_A}")).unwrap();
        assert_eq!(sc.hosts, vec![String::from("a")]);
        assert!(sc.settings.iter().all(|(k, _)| k != "hosts"), "hosts is never passed to homerd");
    }

    /// `scenarios/long/` is not run by default (nor parsed by the scenario runner): its
    /// files must still parse, and the repository's scenarios with hosts name their homes.
    #[test]
    fn the_repositorys_host_scenarios_parse_long_ones_included() {
        let dirs = [crate::repo_scenarios_dir(), crate::repo_scenarios_dir().join("long")];
        let files = crate::collect_scenarios(&dirs).unwrap();
        let mut with_hosts = Vec::new();
        for f in files {
            let sc = crate::scenario::parse_file(&f).unwrap_or_else(|e| panic!("{e}"));
            if !sc.hosts.is_empty() {
                with_hosts.push((sc.stem(), sc.hosts.len()));
            }
        }
        with_hosts.sort();
        assert_eq!(
            with_hosts,
            vec![
                (String::from("postgres-hosts-1000"), 3),
                (String::from("postgres-partitioned-crash"), 2),
                (String::from("postgres-partitioned-owner"), 2),
            ]
        );
    }

    #[test]
    fn what_a_network_step_cannot_mean_is_refused_with_its_reason() {
        let cases = [
            // No hosts: nothing to partition.
            (
                "backends = [\"postgres\"]",
                format!("{START_A}[[step]]\npartition = \"a\"\n"),
                "needs `[settings] hosts = true`",
            ),
            // A host no start made (yet).
            (HOSTS, format!("[[step]]\nheal = \"b\"\n{START_A}"), "no earlier `start` runs on home `b`"),
            // Hosts on SQLite.
            ("hosts = true", START_A.to_string(), "needs `backends = [\"postgres\"]`"),
            // A start without a home, or unprivileged, on a hosts scenario.
            (HOSTS, String::from("[[step]]\nstart = \"a\"\n"), "name its home"),
            // A delay without `by`, or beyond a minute.
            (HOSTS, format!("{START_A}[[step]]\ndelay = \"a\"\n"), "`delay` needs `by`"),
            (HOSTS, format!("{START_A}[[step]]\ndelay = \"a\"\nby = \"2m\"\n"), "at most 60s"),
            (HOSTS, format!("{START_A}[[step]]\npartition = \"a\"\nby = \"1s\"\n"), "by"),
        ];
        for (settings, steps, want) in cases {
            let err = parse(settings, &steps).expect_err(&steps);
            assert!(err.contains(want), "{steps}: {err}");
        }
    }
}
