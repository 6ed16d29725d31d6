//! One suite, every store: what the coordinator may rely on from a [`JobStore`], run
//! against the in-memory store (here), SQLite (`crate::sqlite::jobstore`) and PostgreSQL
//! (`crate::postgres::jobstore`). A store that means something else than the others
//! fails here, not in a scenario.
#![allow(clippy::disallowed_methods)] // test set-up writes rows directly

use std::collections::BTreeMap;

use crate::engine::jobstore::{JobStore, Record, Recorded, StoreError, StoreResult};
use crate::engine::memory::MemoryStore;
use crate::job::{
    ChildIdentity, ClaimLimits, ClaimRef, Claimed, Epoch, FailOutcome, JobId, NewJob, OrphanPolicy, WallMs,
};

pub const E1: Epoch = Epoch(1);

pub fn job(lane: &str, max_attempts: u32) -> NewJob {
    NewJob {
        kind: "noop".into(),
        args: vec!["a".into()],
        lane: lane.into(),
        max_attempts,
        timeout_ms: Some(5),
        run_after: WallMs(0),
        exec: Default::default(),
    }
}

/// Recovery's requeue: at `retry_at`, unreleased orphans given back up to `max_interruptions`.
fn requeue_at(retry_at: i64, max_interruptions: u32) -> OrphanPolicy {
    OrphanPolicy { retry_at: WallMs(retry_at), max_interruptions }
}

fn limits() -> ClaimLimits {
    ClaimLimits { global: 3, lanes: [("b".to_string(), 2)].into(), default_lane: 1, batch: 32 }
}

/// One record through `record_many`.
fn record<S: JobStore>(s: &mut S, claim: ClaimRef, what: Record, now: i64) -> StoreResult<Recorded> {
    s.record_many(&[(claim, what)], WallMs(now)).remove(0)
}

fn fail(retry_at: i64) -> Record {
    Record::Fail { error: "boom".into(), retryable: true, retry_at: WallMs(retry_at) }
}

fn abandon() -> Record {
    Record::Abandon { reason: "lease lost".into() }
}

fn retry_at(at: i64) -> StoreResult<Recorded> {
    Ok(Recorded::Ended(FailOutcome::Retry { run_after: WallMs(at) }))
}

/// The claim `c` with a token no claim ever had.
fn wrong(c: &Claimed) -> ClaimRef {
    ClaimRef { token: "wrong".into(), ..c.claim_ref(E1) }
}

/// A store at epoch 1 and a way to bump its epoch to 2 (another daemon took over).
pub trait Harness {
    type S: JobStore;
    fn make(&self) -> Self::S;
    fn enqueue(&self, s: &mut Self::S, job: &NewJob) -> JobId;
    fn bump(&self, s: &mut Self::S);
    /// What `homerd cancel` does to a running job: file a request.
    fn request_cancel(&self, s: &mut Self::S, id: JobId);
}

pub struct Mem;
impl Harness for Mem {
    type S = MemoryStore;
    fn make(&self) -> MemoryStore {
        MemoryStore::new(E1)
    }
    fn enqueue(&self, s: &mut MemoryStore, job: &NewJob) -> JobId {
        s.enqueue(job)
    }
    fn bump(&self, s: &mut MemoryStore) {
        s.epoch = Epoch(2);
    }
    fn request_cancel(&self, s: &mut MemoryStore, id: JobId) {
        s.request_cancel(id);
    }
}

pub fn suite<H: Harness>(h: &H) {
    let at = WallMs;
    // Claims: FIFO per lane, lanes take turns, caps.
    let mut s = h.make();
    let ids: Vec<JobId> = ["a", "a", "b", "b", "b"].iter().map(|l| h.enqueue(&mut s, &job(l, 2))).collect();
    let got = s.claim(E1, "w", &limits(), at(10)).unwrap();
    let pairs: Vec<(JobId, &str, u32, u32)> = got.iter().map(|c| (c.id, c.lane.as_str(), c.attempt, c.run)).collect();
    assert_eq!(pairs, vec![(ids[0], "a", 1, 1), (ids[2], "b", 1, 1), (ids[3], "b", 1, 1)]);
    assert_eq!(got[0].args, vec!["a".to_string()]);
    assert_eq!(got[0].timeout_ms, Some(5));
    assert!(s.claim(E1, "w", &limits(), at(10)).unwrap().is_empty(), "global cap 3 reached");

    // Guards: wrong token changes nothing; the owner completes once.
    let (a, b1, b2) = (&got[0], &got[1], &got[2]);
    assert_eq!(record(&mut s, wrong(a), Record::Complete, 11), Ok(Recorded::NotOwner));
    assert_eq!(s.renew(E1, &[(a.id, a.token.clone()), (b1.id, "wrong".into())], at(11)).unwrap(), vec![a.id]);
    assert_eq!(record(&mut s, a.claim_ref(E1), Record::Complete, 11), Ok(Recorded::Completed));
    assert_eq!(record(&mut s, a.claim_ref(E1), Record::Complete, 12), Ok(Recorded::NotOwner));
    let child = ChildIdentity { pid: 10, pgid: 10, boot_id: "b".into(), start_time: 1 };
    assert!(s.record_child(&b1.claim_ref(E1), &child).unwrap());
    assert!(!s.record_child(&wrong(b1), &child).unwrap());
    // Several at once: each guarded and answered on its own.
    let both = [(b1.claim_ref(E1), child.clone()), (wrong(b1), child.clone())];
    assert_eq!(s.record_children(&both), vec![Ok(true), Ok(false)]);

    // Failure with attempts left -> retry at the given time; release gives the attempt back.
    assert_eq!(record(&mut s, b2.claim_ref(E1), fail(500), 12), retry_at(500));
    assert_eq!(record(&mut s, b1.claim_ref(E1), Record::Release { max_interruptions: 5 }, 13), retry_at(13));
    // Lane b (cap 2) in (run_after, id) order: b1, ids[4], then b2 (run_after 500).
    let at600 = s.claim(E1, "w", &limits(), at(600)).unwrap();
    let got: Vec<JobId> = at600.iter().map(|c| c.id).collect();
    assert_eq!(got, vec![ids[1], b1.id, ids[4]]);
    let b1_again = at600.iter().find(|c| c.id == b1.id).unwrap();
    assert_eq!((b1_again.attempt, b1_again.run), (1, 2), "a released run does not count");
    for c in at600.iter().filter(|c| c.id != b1.id) {
        assert_eq!(record(&mut s, c.claim_ref(E1), Record::Complete, 601), Ok(Recorded::Completed));
    }
    let later = s.claim(E1, "w", &limits(), at(700)).unwrap();
    assert_eq!(later.iter().map(|c| c.id).collect::<Vec<_>>(), vec![b2.id]);
    assert_eq!((later[0].attempt, later[0].run), (2, 2));
    assert_eq!(record(&mut s, later[0].claim_ref(E1), fail(900), 701), Ok(Recorded::Ended(FailOutcome::Failed)));
    // Abandon: pending again, attempt kept (1 of 2 used), ready at once.
    assert_eq!(record(&mut s, b1_again.claim_ref(E1), abandon(), 702), retry_at(702));
    assert_eq!(record(&mut s, b1_again.claim_ref(E1), abandon(), 702), Ok(Recorded::NotOwner));

    // Recovery: every running row; exhausted ones fail; recorded children reported.
    let c = s.claim(E1, "w", &limits(), at(750)).unwrap();
    let b1_third = c.iter().find(|x| x.id == b1.id).unwrap();
    assert_eq!((b1_third.attempt, b1_third.run), (2, 3));
    assert!(s.record_child(&b1_third.claim_ref(E1), &child).unwrap());
    let orphans = s.orphan_children(E1).unwrap();
    assert_eq!(orphans.iter().map(|(id, c)| (*id, c.pgid)).collect::<Vec<_>>(), vec![(b1.id, 10)]);
    let rec = s.recover(E1, requeue_at(800, 2), at(701)).unwrap();
    assert!(rec.failed.contains(&b1.id), "attempt 2 of 2 orphaned: failed ({rec:?})");
    assert_eq!(rec.children.iter().map(|(id, c)| (*id, c.pgid)).collect::<Vec<_>>(), vec![(b1.id, 10)]);
    assert_eq!(
        record(&mut s, b1_third.claim_ref(E1), Record::Complete, 702),
        Ok(Recorded::NotOwner),
        "a recovered claim cannot complete"
    );
    assert!(s.orphan_children(E1).unwrap().is_empty());

    // A job that keeps losing its lease ends failed after max_attempts.
    let mut l = h.make();
    h.enqueue(&mut l, &job("a", 2));
    for attempt in 1..=2 {
        let c = l.claim(E1, "w", &limits(), at(1)).unwrap().remove(0);
        let got = record(&mut l, c.claim_ref(E1), abandon(), 2);
        let failed = got == Ok(Recorded::Ended(FailOutcome::Failed));
        assert_eq!(failed, attempt == 2, "attempt {attempt}: {got:?}");
    }
    assert!(l.claim(E1, "w", &limits(), at(3)).unwrap().is_empty());

    // Fencing: after another daemon's bump, every guarded call is refused.
    let mut f = h.make();
    let id = h.enqueue(&mut f, &job("a", 3));
    let c = f.claim(E1, "w", &limits(), at(1)).unwrap().remove(0);
    h.bump(&mut f);
    assert_eq!(f.claim(E1, "w", &limits(), at(2)), Err(StoreError::Fenced));
    assert_eq!(f.renew(E1, &[(id, c.token.clone())], at(2)), Err(StoreError::Fenced));
    assert_eq!(f.record_child(&c.claim_ref(E1), &child), Err(StoreError::Fenced));
    assert_eq!(f.record_children(&[(c.claim_ref(E1), child.clone())]), vec![Err(StoreError::Fenced)]);
    for what in [Record::Complete, fail(3), Record::Release { max_interruptions: 5 }, abandon(), Record::Cancel] {
        assert_eq!(record(&mut f, c.claim_ref(E1), what.clone(), 2), Err(StoreError::Fenced), "{what:?}");
    }
    assert_eq!(f.orphan_children(E1), Err(StoreError::Fenced));

    // Several runs recorded together: in order, each guarded on its own, so a wrong
    // token or a second record of one run changes nothing and the rest still land.
    let mut g = h.make();
    for lane in ["a", "b", "c"] {
        h.enqueue(&mut g, &job(lane, 3));
    }
    let run = g.claim(E1, "w", &limits(), at(1)).unwrap();
    assert_eq!(run.len(), 3);
    let got = g.record_many(
        &[
            (run[0].claim_ref(E1), Record::Complete),
            (run[1].claim_ref(E1), fail(50)),
            (wrong(&run[2]), Record::Abandon { reason: "x".into() }),
            (run[0].claim_ref(E1), Record::Complete),
            (run[2].claim_ref(E1), Record::Release { max_interruptions: 5 }),
        ],
        at(2),
    );
    assert_eq!(
        got,
        vec![Ok(Recorded::Completed), retry_at(50), Ok(Recorded::NotOwner), Ok(Recorded::NotOwner), retry_at(2)]
    );
    // Ready again by (run_after, id): the released run (at 2, its attempt given back), then the retry (at 50).
    let again = g.claim(E1, "w", &limits(), at(60)).unwrap();
    assert_eq!(again.iter().map(|c| (c.id, c.attempt)).collect::<Vec<_>>(), vec![(run[2].id, 1), (run[1].id, 2)]);

    // Lanes take turns in the order of their first job by (run_after, id), whatever
    // their lowest id: lane a's head is id 3 (run_after 0), lane b's id 2.
    let mut o = h.make();
    let mut later = job("a", 3);
    later.run_after = at(5);
    h.enqueue(&mut o, &later);
    let b_head = h.enqueue(&mut o, &job("b", 3));
    h.enqueue(&mut o, &job("a", 3));
    let one = ClaimLimits { global: 1, lanes: BTreeMap::new(), default_lane: 3, batch: 1 };
    assert_eq!(o.claim(E1, "w", &one, at(10)).unwrap().iter().map(|c| c.id).collect::<Vec<_>>(), vec![b_head]);

    // Recovery cancels an orphan an operator asked to cancel while it ran.
    let mut r = h.make();
    let id = h.enqueue(&mut r, &job("a", 3));
    r.claim(E1, "w", &limits(), at(1)).unwrap();
    h.request_cancel(&mut r, id);
    let rec = r.recover(E1, requeue_at(5, 2), at(2)).unwrap();
    assert_eq!((rec.cancelled, rec.requeued, rec.failed), (vec![id], vec![], vec![]));

    // Recovery gives the attempt back to an `exec` orphan that recorded no child: its
    // program, started held, was never released. As an interruption, bounded by
    // `max_interruptions`. An exec run with a child recorded, and any other kind's run,
    // keeps its attempt counted. Lanes a, b, c each hold one of the three.
    let exec = |lane: &str, max_attempts: u32| NewJob { kind: "exec".into(), ..job(lane, max_attempts) };
    let mut u = h.make();
    let unreleased = h.enqueue(&mut u, &exec("a", 1));
    let released = h.enqueue(&mut u, &exec("b", 1));
    let in_process = h.enqueue(&mut u, &job("c", 1));
    let three = ClaimLimits { global: 3, lanes: BTreeMap::new(), default_lane: 1, batch: 32 };
    let run = u.claim(E1, "w", &three, at(1)).unwrap();
    assert_eq!(run.iter().map(|c| c.id).collect::<Vec<_>>(), vec![unreleased, released, in_process]);
    assert!(u.record_child(&run[1].claim_ref(E1), &child).unwrap());
    let rec = u.recover(E1, requeue_at(5, 1), at(2)).unwrap();
    assert_eq!(
        (rec.given_back.clone(), rec.requeued.clone(), rec.failed.clone()),
        (vec![unreleased], vec![unreleased], vec![released, in_process]),
        "{rec:?}"
    );
    let again = u.claim(E1, "w", &three, at(5)).unwrap();
    assert_eq!(again.iter().map(|c| (c.id, c.attempt, c.run)).collect::<Vec<_>>(), vec![(unreleased, 1, 2)]);
    // Orphaned unreleased once more: `max_interruptions` 1 is used up, so it is an orphan
    // like any other — its one attempt counted, it fails.
    let rec = u.recover(E1, requeue_at(9, 1), at(6)).unwrap();
    assert_eq!((rec.given_back.clone(), rec.requeued.clone(), rec.failed.clone()), (vec![], vec![], vec![unreleased]));
    assert!(u.claim(E1, "w", &three, at(10)).unwrap().is_empty());
    // With attempts to spare, a used-up bound only means the attempt is counted.
    let mut v = h.make();
    let spare = h.enqueue(&mut v, &exec("a", 3));
    v.claim(E1, "w", &three, at(1)).unwrap();
    let rec = v.recover(E1, requeue_at(5, 0), at(2)).unwrap();
    assert_eq!((rec.given_back.clone(), rec.requeued.clone(), rec.failed.clone()), (vec![], vec![spare], vec![]));
    assert_eq!(v.claim(E1, "w", &three, at(5)).unwrap().iter().map(|c| c.attempt).collect::<Vec<_>>(), vec![2]);

    // A cancel request filed while a run is ending wins over any requeue, so the job
    // cannot be claimed again before the daemon sees the request.
    for end in [fail(2), Record::Release { max_interruptions: 5 }, abandon()] {
        let mut c = h.make();
        let id = h.enqueue(&mut c, &job("a", 3));
        let run = c.claim(E1, "w", &limits(), at(1)).unwrap().remove(0);
        h.request_cancel(&mut c, id);
        assert_eq!(record(&mut c, run.claim_ref(E1), end.clone(), 2), Ok(Recorded::Ended(FailOutcome::Cancelled)));
        assert!(c.claim(E1, "w", &limits(), at(100)).unwrap().is_empty(), "{end:?}: a cancelled job was claimed again");
    }
    assert_eq!(f.recover(E1, requeue_at(3, 2), at(2)), Err(StoreError::Fenced));
}

#[test]
fn memory_store_passes_the_suite() {
    suite(&Mem);
}
