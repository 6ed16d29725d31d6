//! `hold_write`: hold a write transaction on the database in the background.

use std::time::Duration;

use super::{Mark, MarkKind, Verb};
use crate::exec::ctx::{fail, harness_rw, Ctx, Hold, StepError};
use crate::scenario::kit::{Cx, Field, Res, Tbl};

/// Hold a `BEGIN IMMEDIATE` write transaction for `duration`, in the background.
#[derive(Clone, Debug)]
pub struct HoldWrite {
    pub duration: Duration,
}

impl Verb for HoldWrite {
    const KEY: &'static str = "hold_write";
    const OPTIONS: &'static [&'static str] = &[];

    fn parse(cx: &mut Cx<'_>, t: &Tbl<'_>, v: &Field<'_>) -> Res<HoldWrite> {
        Self::only_its_options(cx, t)?;
        Ok(HoldWrite { duration: cx.duration(v)? })
    }

    fn summary(&self) -> String {
        format!("hold a write transaction for {:?}", self.duration)
    }

    fn mark(&self) -> Option<Mark> {
        Some(Mark { kind: MarkKind::Busy, label: format!("db busy {:?}", self.duration), target: None })
    }

    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        let duration = self.duration;
        let db = ctx.db();
        let hold = ctx.scaled(duration);
        let (tx, rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let handle = std::thread::spawn(move || {
            let conn = match harness_rw(&db) {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = conn.busy_timeout(Duration::from_secs(30));
            if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
            let _ = tx.send(Ok(()));
            // Holding the write lock for this long is the fault the scenario injects (a
            // power loss or the end of the run cuts it short).
            let _ = stopped.recv_timeout(hold);
            let _ = conn.execute_batch("ROLLBACK");
        });
        ctx.holds.push(Hold { stop, thread: handle });
        match rx.recv_timeout(ctx.scaled(Duration::from_secs(30))) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => fail("a write transaction on the database", e),
            Err(_) => fail("a write transaction on the database", "not acquired within 30 s"),
        }
    }
}
