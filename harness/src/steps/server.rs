//! `server`: restart the run's PostgreSQL server (a scenario that runs on PostgreSQL only).

use super::{Mark, MarkKind, Verb};
use crate::exec::ctx::{fail, Ctx, StepError};
use crate::scenario::kit::{Cx, Field, Res, Tbl};

/// Restart the run's PostgreSQL server on the same port and data: `fast` (SIGINT: sessions
/// ended, a shutdown checkpoint) or `immediate` (SIGQUIT: every server process quits at
/// once, no checkpoint; the start recovers from the WAL, as after a crash). The step ends
/// once the server accepts connections again.
#[derive(Clone, Debug)]
pub struct Server {
    pub immediate: bool,
}

impl Verb for Server {
    const KEY: &'static str = "server";
    const OPTIONS: &'static [&'static str] = &["mode"];

    fn parse(cx: &mut Cx<'_>, t: &Tbl<'_>, v: &Field<'_>) -> Res<Server> {
        Self::only_its_options(cx, t)?;
        if v.str() != Some("restart") {
            return Err(cx.wrong(v, "\"restart\""));
        }
        if !cx.postgres_only {
            return Err(cx.err(
                &v.key_span,
                v.path.clone(),
                "`server` restarts the run's PostgreSQL server: it needs `[settings] backends = [\"postgres\"]` \
                 (a SQLite run has no server)",
            ));
        }
        let immediate = match t.get("mode") {
            None => false,
            Some(f) => match f.str() {
                Some("fast") => false,
                Some("immediate") => true,
                _ => return Err(cx.wrong(&f, "\"fast\" or \"immediate\"")),
            },
        };
        Ok(Server { immediate })
    }

    fn summary(&self) -> String {
        format!("restart the PostgreSQL server ({})", if self.immediate { "immediate" } else { "fast" })
    }

    fn mark(&self) -> Option<Mark> {
        // An immediate stop is a crash of the server: drawn as a kill.
        let (kind, mode) = if self.immediate { (MarkKind::Kill, "immediate") } else { (MarkKind::Signal, "fast") };
        Some(Mark { kind, label: format!("postgres restart ({mode})"), target: None })
    }

    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        let mode = if self.immediate { homer_testkit::StopMode::Immediate } else { homer_testkit::StopMode::Fast };
        let Some(pg) = ctx.pg.as_mut() else {
            return fail("the run's PostgreSQL server", "none: this run is not on PostgreSQL");
        };
        let started = std::time::Instant::now();
        if let Err(e) = pg.restart(mode) {
            return fail("the PostgreSQL server restarted", e);
        }
        let took = started.elapsed();
        ctx.note(format!("the server accepts connections again after {took:?}"));
        Ok(())
    }
}
