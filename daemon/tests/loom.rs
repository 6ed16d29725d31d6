//! Loom model checking of the coordinator the daemon runs (not a toy), over the
//! in-memory store. Run with:
//!
//! ```sh
//! RUSTFLAGS="--cfg homer_loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test -p homerd --release --test loom
//! ```
//!
//! `LOOM_MAX_PREEMPTIONS` bounds the search (default here: 2).
#![cfg(homer_loom)]

use std::collections::BTreeSet;

use homerd::engine::coordinator::{Coordinator, EngineConfig, JobResult, StopReason};
use homerd::engine::store::{JobStore, MemoryStore};
use homerd::store::jobs::NewJob;
use loom::sync::{Arc, Mutex};
use loom::thread;

fn cfg() -> EngineConfig {
    let mut cfg = EngineConfig {
        shutdown_grace_ms: 0,
        backoff_base_ms: 10,
        backoff_cap_ms: 100,
        max_interruptions: 5,
        ..EngineConfig::for_tests()
    };
    cfg.limits.batch = 1;
    cfg
}

/// Two workers claim and run jobs while a shutdown signal arrives at any point: no job
/// is executed by two owners at once, a job claimed during shutdown is released (not
/// lost), and everything ends completed or pending — nothing stuck running.
/// A bounded search: `LOOM_MAX_PREEMPTIONS` (default 2) preemptions per execution.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(2);
    }
    b.check(f);
}

#[test]
fn two_workers_and_a_shutdown() {
    model(|| {
        let mut store = MemoryStore::new(1);
        for _ in 0..2 {
            let job = NewJob {
                kind: "noop".into(),
                args: vec![],
                lane: "l".into(),
                max_attempts: 3,
                timeout_ms: None,
                run_after: 0,
            };
            store.enqueue(&job, 0).unwrap();
        }
        let c = Arc::new(Coordinator::new(cfg(), 1, store));
        let executing = Arc::new(Mutex::new(BTreeSet::new()));
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let (c, executing) = (c.clone(), executing.clone());
                thread::spawn(move || {
                    for job in c.claim(0, 0) {
                        assert!(executing.lock().unwrap().insert(job.id), "job {} run by two owners", job.id);
                        executing.lock().unwrap().remove(&job.id);
                        c.finish(job.id, JobResult::Succeeded, 1, 0.5);
                    }
                })
            })
            .collect();
        let stopper = {
            let c = c.clone();
            thread::spawn(move || c.begin_shutdown(0, 0))
        };
        for w in workers {
            w.join().unwrap();
        }
        stopper.join().unwrap();
        // The runner's drain: whatever is still held past the (zero) grace is released.
        for (id, reason) in c.due(0) {
            assert_eq!(reason, StopReason::Shutdown);
            c.finish(id, JobResult::Failed { error: "stopped".into(), retryable: true }, 2, 0.5);
        }
        assert!(c.held().is_empty(), "shutdown left leases behind");
        c.with_store(|s| {
            for (id, j) in &s.jobs {
                assert!(j.status == "completed" || (j.status == "pending" && j.attempts == 0), "job {id} ended {j:?}");
            }
        });
    });
}
