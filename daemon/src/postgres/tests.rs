//! What the shared store suite cannot say, because it speaks to one store at a time:
//! many workers on one queue. Every test runs against a real PostgreSQL server
//! ([`TestServer`]), each in a database of its own.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postgres::Client;

use super::jobstore::{PgStore, StoreClock};
use super::{jobs, schema, workers, Target};
use crate::engine::jobstore::{JobStore, Record, Recorded, StoreError};
use crate::job::{ChildIdentity, ClaimLimits, Epoch, JobId, NewJob, OrphanPolicy, WallMs};

/// A throwaway server for this test binary's PostgreSQL tests; databases made on demand.
pub(crate) struct TestServer {
    _server: homer_testkit::postgres::PgServer,
    _dir: tempfile::TempDir,
    base: String,
    made: std::sync::atomic::AtomicU32,
}

impl TestServer {
    pub(crate) fn start() -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let server = homer_testkit::postgres::PgServer::start(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let url = server.url();
        let base = url.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap();
        TestServer { _server: server, _dir: dir, base, made: Default::default() }
    }

    /// A new empty database's URL.
    pub(crate) fn fresh(&self) -> String {
        let n = self.made.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let db = format!("t{}_{n}", std::process::id());
        let mut admin = postgres::Client::connect(&format!("{}/postgres", self.base), postgres::NoTls).unwrap();
        admin.batch_execute(&format!("CREATE DATABASE {db}")).unwrap();
        format!("{}/{db}", self.base)
    }
}

fn target(url: &str) -> Target {
    Target::parse(url, Duration::from_secs(20)).unwrap()
}

fn connect(url: &str) -> Client {
    target(url).connect().unwrap()
}

/// A migrated database's URL.
fn migrated(server: &TestServer) -> String {
    let url = server.fresh();
    schema::migrate(&mut connect(&url), "test").unwrap();
    url
}

fn registration(name: &str, stale_ms: i64) -> workers::Registration {
    workers::Registration { name: name.into(), identity: crate::identity::current().unwrap(), stale_ms }
}

/// A registered worker's store on `url`, on the server's clock.
fn worker(url: &str, name: &str, stale_ms: i64) -> (Epoch, PgStore) {
    let mut c = connect(url);
    let epoch = workers::register(&mut c, &registration(name, stale_ms)).unwrap();
    (epoch, PgStore::new(c, target(url), name.into(), StoreClock::Server))
}

fn job(lane: &str) -> NewJob {
    NewJob {
        kind: "noop".into(),
        args: vec![],
        lane: lane.into(),
        max_attempts: 3,
        timeout_ms: None,
        run_after: WallMs(0),
        exec: Default::default(),
    }
}

fn enqueue(url: &str, jobs_: &[NewJob]) -> Vec<JobId> {
    let mut c = connect(url);
    let mut tx = c.transaction().unwrap();
    let now = jobs::server_now(&mut tx).unwrap();
    let ids = jobs_.iter().map(|j| jobs::enqueue(&mut tx, j, WallMs(0), now, None).unwrap()).collect();
    tx.commit().unwrap();
    ids
}

fn scalar(url: &str, sql: &str) -> i64 {
    connect(url).query_one(sql, &[]).unwrap().get(0)
}

#[test]
fn postgres_workers_share_one_queue() {
    let server = TestServer::start();
    many_workers_never_share_a_job_and_keep_lane_caps_across_the_cluster(&server);
    a_fence_waits_for_a_write_in_flight_and_refuses_every_later_one(&server);
    stale_workers_are_judged_by_the_server_clock_fenced_and_their_jobs_requeued(&server);
    a_stopped_worker_that_left_a_job_running_is_swept_once_stale(&server);
    a_new_start_on_the_same_home_recovers_its_predecessors_at_once(&server);
    migrations_apply_once_and_refuse_what_is_not_theirs(&server);
    a_claim_passes_over_a_row_another_transaction_holds(&server);
    a_claim_whose_commit_reply_was_lost_is_resolved_by_its_tokens(&server);
    failed_heartbeats_are_counted_once(&server);
}

/// A worker's failed heartbeats ride along with its next one; a commit whose reply was
/// lost counts as having carried them, so they are never added twice.
fn failed_heartbeats_are_counted_once(server: &TestServer) {
    let url = migrated(server);
    let (epoch, mut store) = worker(&url, "w", 60_000);
    let counted = || scalar(&url, "SELECT value FROM metrics WHERE name = 'heartbeat_failures'");
    assert_eq!(store.heartbeat(epoch, WallMs(0), 2), (Ok(()), 0));
    assert_eq!(counted(), 2);
    store.lose_next_commit_reply = true;
    let (beat, still) = store.heartbeat(epoch, WallMs(0), 3);
    assert!(matches!(beat, Err(StoreError::Unavailable(_))), "{beat:?}");
    assert_eq!((still, counted()), (0, 5), "the server committed the 3; nothing is left to add");
    assert_eq!(store.heartbeat(epoch, WallMs(0), still), (Ok(()), 0));
    assert_eq!(counted(), 5, "counted once");
    // Failures left when the worker stops are counted by its stop.
    store.stop(epoch, 4).unwrap();
    assert_eq!(counted(), 9, "counted at the stop");
}

/// The server committed a claim but its reply never arrived (the connection dropped at
/// the commit): the store does not know whether the jobs are its own. The next claim
/// resolves it by the claim's tokens — the committed jobs are handed out as claimed (or
/// they would sit `running` under a live incarnation nobody recovers) — and claims
/// nothing else meanwhile.
fn a_claim_whose_commit_reply_was_lost_is_resolved_by_its_tokens(server: &TestServer) {
    let url = migrated(server);
    let ids = enqueue(&url, &[job("a"), job("a"), job("a")]);
    let (epoch, mut store) = worker(&url, "w", 60_000);
    let limits = ClaimLimits { global: 2, lanes: [("a".into(), 3)].into(), default_lane: 1, batch: 2 };
    store.lose_next_commit_reply = true;
    assert!(matches!(store.claim(epoch, "w", &limits, WallMs(0)), Err(StoreError::Unavailable(_))));
    assert_eq!(scalar(&url, "SELECT COUNT(*) FROM job_queue WHERE status = 'running'"), 2, "the server committed it");
    let resolved = store.claim(epoch, "w", &limits, WallMs(0)).unwrap();
    assert_eq!(resolved.iter().map(|c| c.id).collect::<Vec<_>>(), ids[..2].to_vec());
    for c in &resolved {
        assert_eq!(
            store.record_many(&[(c.claim_ref(epoch), Record::Complete)], WallMs(0)),
            vec![Ok(Recorded::Completed)]
        );
    }
    let next = store.claim(epoch, "w", &limits, WallMs(0)).unwrap();
    assert_eq!(next.iter().map(|c| c.id).collect::<Vec<_>>(), vec![ids[2]]);
}

/// A row another transaction has locked (an operator's `cancel`, another worker's
/// recovery, in flight) is passed over at once, not waited on: the claim takes the next
/// job. (Waiting would end at the lock timeout with an error.)
fn a_claim_passes_over_a_row_another_transaction_holds(server: &TestServer) {
    let url = migrated(server);
    let ids = enqueue(&url, &[job("a"), job("a")]);
    let mut operator = connect(&url);
    let mut held = operator.transaction().unwrap();
    held.query("SELECT id FROM job_queue WHERE id = $1 FOR UPDATE", &[&ids[0].0]).unwrap();
    let mut c = connect(&url);
    let epoch = workers::register(&mut c, &registration("w", 60_000)).unwrap();
    // A lock wait would fail this claim within a second instead of hanging the test.
    let mut store =
        PgStore::new(c, Target::parse(&url, Duration::from_secs(1)).unwrap(), "w".into(), StoreClock::Server);
    store.client_mut().batch_execute("SET lock_timeout = '1s'").unwrap();
    let limits = ClaimLimits { global: 2, lanes: [("a".into(), 2)].into(), default_lane: 1, batch: 2 };
    let got = store.claim(epoch, "w", &limits, WallMs(0)).unwrap();
    assert_eq!(got.iter().map(|c| c.id).collect::<Vec<_>>(), vec![ids[1]], "the held row is skipped, the next taken");
    held.rollback().unwrap();
}

/// Four workers claim and complete 300 jobs at once. A job is never held by two workers
/// at the same time, every job completes exactly once, and lane `a` (cap 3) never has
/// more than 3 running across the cluster.
fn many_workers_never_share_a_job_and_keep_lane_caps_across_the_cluster(server: &TestServer) {
    let url = migrated(server);
    let mut all = Vec::new();
    for i in 0..300 {
        all.push(job(if i % 3 == 0 { "a" } else { "b" }));
    }
    let ids = enqueue(&url, &all);
    let limits =
        ClaimLimits { global: 6, lanes: [("a".into(), 3), ("b".into(), 100)].into(), default_lane: 1, batch: 4 };
    // Jobs some worker holds right now, by lane. A job leaves before its completion
    // commits, so this is never more than what the database has running.
    let held: Arc<Mutex<BTreeMap<JobId, String>>> = Arc::default();
    let completed: Arc<Mutex<Vec<JobId>>> = Arc::default();
    let threads: Vec<_> = (0..4)
        .map(|w| {
            let (url, limits, held, completed) = (url.clone(), limits.clone(), held.clone(), completed.clone());
            std::thread::spawn(move || {
                let (epoch, mut store) = worker(&url, &format!("w{w}"), 60_000);
                let mut idle_passes = 0;
                while idle_passes < 50 {
                    let got = store.claim(epoch, "w", &limits, WallMs(0)).unwrap();
                    if got.is_empty() {
                        idle_passes += 1;
                        continue;
                    }
                    idle_passes = 0;
                    {
                        let mut h = held.lock().unwrap();
                        for c in &got {
                            assert!(h.insert(c.id, c.lane.clone()).is_none(), "job {} held by two workers", c.id);
                        }
                        let in_a = h.values().filter(|l| *l == "a").count();
                        assert!(in_a <= 3, "lane a has {in_a} running across the cluster (cap 3)");
                    }
                    for c in got {
                        held.lock().unwrap().remove(&c.id);
                        let r = store.record_many(&[(c.claim_ref(epoch), Record::Complete)], WallMs(0));
                        assert_eq!(r, vec![Ok(Recorded::Completed)]);
                        completed.lock().unwrap().push(c.id);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut done = completed.lock().unwrap().clone();
    done.sort_unstable();
    assert_eq!(done, ids, "every job completed exactly once");
    assert_eq!(scalar(&url, "SELECT COUNT(*) FROM job_runs"), 300, "one run per job");
}

/// A fencing `UPDATE` of a worker row waits for that worker's transaction in flight; once
/// it commits, nothing the fenced incarnation sends is written.
fn a_fence_waits_for_a_write_in_flight_and_refuses_every_later_one(server: &TestServer) {
    let url = migrated(server);
    let id = enqueue(&url, &[job("a")])[0];
    let (epoch, mut store) = worker(&url, "victim", 60_000);
    let limits = ClaimLimits { global: 1, lanes: BTreeMap::new(), default_lane: 1, batch: 1 };
    let claimed = store.claim(epoch, "w", &limits, WallMs(0)).unwrap().remove(0);
    // The victim's write in flight: guard taken, not committed.
    let mut victim = connect(&url);
    let mut tx = victim.transaction().unwrap();
    assert!(workers::guard(&mut tx, epoch).unwrap());
    let fencer = {
        let url = url.clone();
        std::thread::spawn(move || {
            let mut c = connect(&url);
            let by = workers::register(&mut c, &registration("fencer", 60_000)).unwrap();
            let mut tx = c.transaction().unwrap();
            let fenced = workers::fence(&mut tx, &[epoch.0], by, "test").unwrap();
            tx.commit().unwrap();
            fenced
        })
    };
    // Wait (bounded) until the fencer is seen blocked on the victim's row lock.
    let deadline = std::time::Instant::now() + homer_testkit::scaled(Duration::from_secs(30));
    while scalar(&url, "SELECT COUNT(*) FROM pg_locks WHERE NOT granted") == 0 {
        assert!(std::time::Instant::now() < deadline, "the fence never waited on the write in flight");
        assert!(!fencer.is_finished(), "the fence committed while a guarded write was in flight");
    }
    assert!(!fencer.is_finished());
    tx.commit().unwrap();
    assert_eq!(fencer.join().unwrap(), vec![epoch.0]);
    // Every later write of the fenced incarnation is refused, and changes nothing.
    assert_eq!(store.renew(epoch, &[(id, claimed.token.clone())], WallMs(0)), Err(StoreError::Fenced));
    assert_eq!(
        store.record_many(&[(claimed.claim_ref(epoch), Record::Complete)], WallMs(0)),
        vec![Err(StoreError::Fenced)]
    );
    assert_eq!(store.heartbeat(epoch, WallMs(0), 0).0, Err(StoreError::Fenced));
    assert_eq!(scalar(&url, "SELECT COUNT(*) FROM job_queue WHERE status = 'completed'"), 0);
}

/// Staleness is the server's: a worker whose `seen_at` is older than its own `stale_ms`
/// by `homer_now_ms()` is fenced by a sweep and its running jobs requeued; a worker seen
/// recently is left alone, whatever any host's clock says.
fn stale_workers_are_judged_by_the_server_clock_fenced_and_their_jobs_requeued(server: &TestServer) {
    let url = migrated(server);
    let ids = enqueue(&url, &[job("a"), job("b")]);
    let limits = ClaimLimits { global: 1, lanes: BTreeMap::new(), default_lane: 1, batch: 1 };
    let (old, mut old_store) = worker(&url, "old", 5_000);
    let (live, mut live_store) = worker(&url, "live", 5_000);
    let old_claim = old_store.claim(old, "w", &limits, WallMs(0)).unwrap().remove(0);
    let live_claim = live_store.claim(live, "w", &limits, WallMs(0)).unwrap().remove(0);
    // Nothing is stale yet: a sweep fences nobody.
    let (_, sweeper) = worker(&url, "sweeper", 5_000);
    let mut sweeper = sweeper;
    let me = Epoch(scalar(&url, "SELECT MAX(incarnation) FROM homer_workers"));
    let server_now = scalar(&url, "SELECT homer_now_ms()");
    assert_eq!(sweeper.sweep_stale(me, 0, 2, WallMs(server_now)).unwrap().0, Vec::<i64>::new());
    // Nor does a sweeper whose own clock runs an hour ahead, nor a worker whose clock is
    // an hour behind when it heartbeats: only the server's clock judges.
    live_store.heartbeat(live, WallMs(server_now - 3_600_000), 0).0.unwrap();
    assert_eq!(sweeper.sweep_stale(me, 0, 2, WallMs(server_now + 3_600_000)).unwrap().0, Vec::<i64>::new());
    // The server last heard from `old` 6 s ago (its threshold is 5 s).
    connect(&url)
        .execute("UPDATE homer_workers SET seen_at = homer_now_ms() - 6000 WHERE incarnation = $1", &[&old.0])
        .unwrap();
    let (fenced, rec) = sweeper.sweep_stale(me, 0, 2, WallMs(server_now)).unwrap();
    assert_eq!(fenced, vec![old.0]);
    assert_eq!(rec.requeued, vec![old_claim.id]);
    assert!(ids.contains(&old_claim.id));
    assert_eq!(old_store.renew(old, &[(old_claim.id, old_claim.token.clone())], WallMs(0)), Err(StoreError::Fenced));
    // The live worker renews and completes as usual.
    assert_eq!(
        live_store.renew(live, &[(live_claim.id, live_claim.token.clone())], WallMs(0)).unwrap(),
        vec![live_claim.id]
    );
    assert_eq!(
        live_store.record_many(&[(live_claim.claim_ref(live), Record::Complete)], WallMs(0)),
        vec![Ok(Recorded::Completed)]
    );
    // A second sweep finds nothing more.
    assert_eq!(sweeper.sweep_stale(me, 0, 2, WallMs(server_now)).unwrap().0, Vec::<i64>::new());
    // The requeued job runs again, as run 2.
    let again = live_store.claim(live, "w", &limits, WallMs(0)).unwrap();
    assert_eq!(again.iter().map(|c| (c.id, c.run)).collect::<Vec<_>>(), vec![(old_claim.id, 2)]);
}

/// A clean stop that left a job `running` (a claim whose commit's reply was lost, a release
/// the drain could not write) does not strand it: once the stopped worker is stale, a
/// sweep fences it and requeues the job. A stopped worker with nothing running is left
/// alone.
fn a_stopped_worker_that_left_a_job_running_is_swept_once_stale(server: &TestServer) {
    let url = migrated(server);
    let id = enqueue(&url, &[job("a")])[0];
    let limits = ClaimLimits { global: 1, lanes: BTreeMap::new(), default_lane: 1, batch: 1 };
    let (left, mut left_store) = worker(&url, "left", 5_000);
    let (tidy, mut tidy_store) = worker(&url, "tidy", 5_000);
    let claimed = left_store.claim(left, "w", &limits, WallMs(0)).unwrap().remove(0);
    assert_eq!(claimed.id, id);
    left_store.stop(left, 0).unwrap();
    tidy_store.stop(tidy, 0).unwrap();
    let (_, mut sweeper) = worker(&url, "sweeper", 5_000);
    let me = Epoch(scalar(&url, "SELECT MAX(incarnation) FROM homer_workers"));
    let server_now = scalar(&url, "SELECT homer_now_ms()");
    // Not stale yet: nobody is fenced.
    assert_eq!(sweeper.sweep_stale(me, 0, 2, WallMs(server_now)).unwrap().0, Vec::<i64>::new());
    connect(&url)
        .execute(
            "UPDATE homer_workers SET seen_at = homer_now_ms() - 6000 WHERE incarnation = ANY($1)",
            &[&vec![left.0, tidy.0]],
        )
        .unwrap();
    let (fenced, rec) = sweeper.sweep_stale(me, 0, 2, WallMs(server_now)).unwrap();
    assert_eq!(fenced, vec![left.0], "only the stopped worker that left a job running");
    assert_eq!(rec.requeued, vec![id]);
    let again = sweeper.claim(me, "w", &limits, WallMs(0)).unwrap();
    assert_eq!(again.iter().map(|c| (c.id, c.run)).collect::<Vec<_>>(), vec![(id, 2)]);
}

/// A start on the same home (same name) knows its predecessors are gone: their recorded
/// children are reported for killing and their jobs requeued at once, no staleness wait.
fn a_new_start_on_the_same_home_recovers_its_predecessors_at_once(server: &TestServer) {
    let url = migrated(server);
    let id = enqueue(&url, &[job("a")])[0];
    let limits = ClaimLimits { global: 1, lanes: BTreeMap::new(), default_lane: 1, batch: 1 };
    let (first, mut first_store) = worker(&url, "host/boot:/home", 60_000);
    let c = first_store.claim(first, "w", &limits, WallMs(0)).unwrap().remove(0);
    let child = ChildIdentity { pid: 4242, pgid: 4242, boot_id: "boot".into(), start_time: 7 };
    assert!(first_store.record_child(&c.claim_ref(first), &child).unwrap());
    // Another home's worker is not a predecessor.
    let (_other, _) = worker(&url, "host/boot:/elsewhere", 60_000);
    let (second, mut second_store) = worker(&url, "host/boot:/home", 60_000);
    assert_eq!(second_store.orphan_children(second).unwrap(), vec![(id, child)]);
    let rec =
        second_store.recover(second, OrphanPolicy { retry_at: WallMs(0), max_interruptions: 2 }, WallMs(0)).unwrap();
    assert_eq!(rec.requeued, vec![id]);
    assert_eq!(first_store.heartbeat(first, WallMs(0), 0).0, Err(StoreError::Fenced), "the predecessor is fenced");
    assert_eq!(scalar(&url, "SELECT COUNT(*) FROM homer_workers WHERE fenced_at IS NULL"), 2);
}

/// Two migrators at once: one applies, the other finds nothing to do. A changed or
/// unknown migration, or a queue that is not homerd's, is refused with 65.
fn migrations_apply_once_and_refuse_what_is_not_theirs(server: &TestServer) {
    let url = server.fresh();
    let racers: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || schema::migrate(&mut connect(&url), "test").unwrap().len())
        })
        .collect();
    let mut applied: Vec<usize> = racers.into_iter().map(|t| t.join().unwrap()).collect();
    applied.sort_unstable();
    assert_eq!(applied, vec![0, schema::MIGRATIONS.len()]);
    assert_eq!(schema::applied(&mut connect(&url), "test").unwrap(), schema::MIGRATIONS.len());

    connect(&url).execute("UPDATE homer_migrations SET checksum = 'x' WHERE version = 1", &[]).unwrap();
    let e = schema::migrate(&mut connect(&url), "test").unwrap_err();
    assert_eq!(e.exit_code(), crate::error::exit::DATA, "{e}");
    assert!(e.to_string().contains("checksum"), "{e}");

    let newer = migrated(server);
    connect(&newer).execute("INSERT INTO homer_migrations VALUES (999, '999_future.sql', 'x', 0)", &[]).unwrap();
    let e = schema::migrate(&mut connect(&newer), "test").unwrap_err();
    assert_eq!(e.exit_code(), crate::error::exit::DATA);
    assert!(e.to_string().contains("newer homerd"), "{e}");

    let foreign = server.fresh();
    connect(&foreign).batch_execute("CREATE TABLE job_queue (id int)").unwrap();
    let e = schema::migrate(&mut connect(&foreign), "test").unwrap_err();
    assert_eq!(e.exit_code(), crate::error::exit::DATA);
    assert_eq!(
        scalar(&foreign, "SELECT COUNT(*) FROM pg_tables WHERE tablename = 'homer_workers'"),
        0,
        "nothing created"
    );
}
