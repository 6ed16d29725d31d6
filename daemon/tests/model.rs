//! The SQLite job store against a reference model: random sequences of queue operations
//! (enqueue; claims with lanes and caps; renewals; outcomes, failures with backoff,
//! releases, abandons, the owner's cancel; the operator's cancel and retry; child
//! records; clock steps, forward and back; a new daemon bumping the epoch while the old
//! one lives on; a daemon crashing mid-batch, then a restart with startup recovery),
//! applied to the real store (`SqliteStore` over the group-commit writer, one per daemon,
//! all on one database file) and to `model/reference.rs`. After every step the two must
//! agree — the step's result and the whole database — and the invariants must hold: one
//! owner per running job, no write by a stale claim token or epoch succeeds, nothing
//! enqueued is lost, `attempts <= max_attempts`, every terminal transition clears the
//! lock columns.
//!
//! ```sh
//! cargo test -p homerd --test model                          # CI: HOMER_MODEL_CASES, default 128
//! HOMER_MODEL_CASES=2000 cargo test -p homerd --release --test model   # a long run
//! HOMER_MODEL_SEED=<64 hex digits> cargo test -p homerd --test model   # rerun a printed seed
//! ```
//!
//! A failure shrinks to a minimal sequence of steps, is printed with the run's seed and
//! the command that reruns it, and its case seed is saved to
//! `daemon/proptest-regressions/model.txt` (`HOMER_MODEL_REGRESSIONS` names another file):
//! committed, it is replayed first on every run. The `regression_*` tests below replay
//! minimal sequences found while this test was written, step by step, independent of the
//! generator.
#![allow(clippy::disallowed_methods)] // reads the database directly, to compare it with the model

#[path = "model/reference.rs"]
mod reference;

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use homerd::clock::Clock;
use homerd::config::Durability;
use homerd::engine::jobstore::{JobStore, Record, Recorded, StoreError};
use homerd::job::{
    self, ChildIdentity, ClaimLimits, Claimed, Epoch, FailOutcome, JobId, JobStatus, NewJob, OrphanPolicy, Recovered,
    WallMs,
};
use homerd::sqlite::jobs;
use homerd::sqlite::jobstore::SqliteStore;
use homerd::sqlite::leader::{self, Candidate, Outcome};
use homerd::sqlite::ops::{self, Cancel, Retry};
use homerd::sqlite::writer::{Writer, WriterThread};
use homerd::sqlite::{open_writer, schema};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, RngAlgorithm, TestError, TestRng, TestRunner};
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest};
use reference::Queue;
use rusqlite::{Connection, TransactionBehavior};

/// Cases per run in CI (`cargo test`): about four seconds here (half a minute on a loaded machine).
const CI_CASES: u32 = 128;
/// Steps per case at most.
const MAX_STEPS: usize = 60;
/// Daemons per case at most (each takeover or crash starts one).
const MAX_DAEMONS: usize = 5;
const LANES: [&str; 3] = ["a", "b", "c"];
/// The daemons' `max_interruptions` at startup recovery: one, so that a job whose daemon
/// dies twice before its child is recorded reaches the bound and fails.
const MAX_INTERRUPTIONS: u32 = 1;

/// Startup recovery's requeue: at `retry_at`, with the daemons' [`MAX_INTERRUPTIONS`].
fn orphan_policy(retry_at: i64) -> OrphanPolicy {
    OrphanPolicy { retry_at: WallMs(retry_at), max_interruptions: MAX_INTERRUPTIONS }
}
/// The wall clock's start (any value works; a realistic one reads better).
const T0: i64 = 1_700_000_000_000;

fn worker(daemon: usize) -> String {
    format!("daemon-{daemon}")
}

// ---------------------------------------------------------------------------------------
// Steps

/// Which token a step presents for a claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    /// The daemon that made the claim, with its token (the current daemon if that one
    /// crashed).
    Owner,
    /// The current daemon, with the claim's token (a zombie's token under a new epoch).
    Current,
    /// The claim's daemon with a token no claim ever had.
    Forged,
}

/// An operation a crashing daemon had in its last, never committed, batch.
#[derive(Clone, Debug)]
enum InFlight {
    Claim(ClaimLimits),
    Complete(usize),
    Fail(usize),
}

#[derive(Clone, Debug)]
enum Step {
    Enqueue {
        lane: usize,
        max_attempts: u32,
        delay: i64,
        timeout_ms: Option<u64>,
        args: Vec<String>,
    },
    Claim {
        daemon: usize,
        limits: ClaimLimits,
    },
    Renew {
        daemon: usize,
        claims: Vec<usize>,
    },
    RecordChild {
        claim: usize,
        via: Via,
        pgid: u32,
    },
    Complete {
        claim: usize,
        via: Via,
    },
    Fail {
        claim: usize,
        via: Via,
        retryable: bool,
        backoff: i64,
    },
    Release {
        claim: usize,
        via: Via,
        max_interruptions: u32,
    },
    Abandon {
        claim: usize,
        via: Via,
    },
    /// The daemon could not start the run (out of descriptors...): requeued, uncharged.
    Requeue {
        claim: usize,
        via: Via,
        delay: i64,
    },
    OwnerCancel {
        claim: usize,
        via: Via,
    },
    OperatorCancel {
        job: i64,
    },
    OperatorRetry {
        job: i64,
    },
    /// The wall clock moves (backwards too: NTP, a laptop's sleep).
    Advance {
        ms: i64,
    },
    /// A new daemon takes the leader row while the current one lives on (fenced), then
    /// runs startup recovery.
    Takeover {
        orphan_delay: i64,
    },
    /// The current daemon dies with a batch open and uncommitted; a new one starts and
    /// runs startup recovery.
    Crash {
        in_flight: Vec<InFlight>,
        orphan_delay: i64,
    },
}

// ---------------------------------------------------------------------------------------
// The reference side: the model plus what the test knows (daemons, claims, the clock)

#[derive(Clone, Debug)]
struct DaemonRef {
    epoch: i64,
    alive: bool,
}

/// A claim the model made, by the daemon that made it.
#[derive(Clone, Debug)]
struct ClaimMade {
    job: i64,
    token: String,
    daemon: usize,
}

/// A step's daemon, epoch and token, resolved once (the store side uses the same).
#[derive(Clone, Debug, Default)]
struct Resolved {
    daemon: usize,
    epoch: i64,
    job: i64,
    /// `None`: a forged token.
    claim: Option<usize>,
}

impl Resolved {
    /// The claim as presented with `token`.
    fn claim_ref(&self, token: String) -> job::ClaimRef {
        job::ClaimRef { epoch: Epoch(self.epoch), id: JobId(self.job), token }
    }
}

/// What the step must return.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Expect {
    Nothing,
    Enqueued(JobId),
    Claimed(Result<Vec<Claimed>, StoreError>),
    Ids(Result<Vec<JobId>, StoreError>),
    Done(Result<bool, StoreError>),
    Outcome(Result<Option<FailOutcome>, StoreError>),
    Cancel(Cancel),
    Retry(Retry),
    Started {
        epoch: i64,
        orphans: Result<Vec<(JobId, ChildIdentity)>, StoreError>,
        recovered: Result<Recovered, StoreError>,
    },
}

#[derive(Clone, Debug)]
struct World {
    q: Queue,
    now: i64,
    daemons: Vec<DaemonRef>,
    claims: Vec<ClaimMade>,
    enqueued: i64,
    resolved: Resolved,
    expect: Expect,
}

impl World {
    /// The first daemon has started on a new database (and recovered nothing).
    fn initial() -> World {
        let mut w = World {
            q: Queue::new(),
            now: T0,
            daemons: Vec::new(),
            claims: Vec::new(),
            enqueued: 0,
            resolved: Resolved::default(),
            expect: Expect::Nothing,
        };
        w.start_daemon(0);
        w
    }

    fn current(&self) -> usize {
        self.daemons.len() - 1
    }

    fn start_daemon(&mut self, orphan_delay: i64) {
        let epoch = self.q.bump_epoch();
        self.daemons.push(DaemonRef { epoch, alive: true });
        let orphans = self.q.orphan_children(Epoch(epoch)).map(sorted_orphans);
        let recovered = self
            .q
            .recover(Epoch(epoch), orphan_policy(self.now + orphan_delay), WallMs(self.now))
            .map(sorted_recovered);
        self.expect = Expect::Started { epoch, orphans, recovered };
    }

    /// Who presents which token for claim `claim`.
    fn resolve(&self, claim: usize, via: Via) -> Resolved {
        let c = &self.claims[claim];
        let owner = if self.daemons[c.daemon].alive { c.daemon } else { self.current() };
        let daemon = match via {
            Via::Owner | Via::Forged => owner,
            Via::Current => self.current(),
        };
        Resolved { daemon, epoch: self.daemons[daemon].epoch, job: c.job, claim: (via != Via::Forged).then_some(claim) }
    }

    fn token(&self, r: &Resolved) -> String {
        r.claim.map_or_else(|| String::from("forged-token"), |c| self.claims[c].token.clone())
    }
}

fn sorted_orphans(mut v: Vec<(JobId, ChildIdentity)>) -> Vec<(JobId, ChildIdentity)> {
    v.sort_by_key(|(id, c)| (*id, c.pgid));
    v
}

fn sorted_recovered(mut r: Recovered) -> Recovered {
    r.children = sorted_orphans(r.children);
    r.requeued.sort_unstable();
    r.failed.sort_unstable();
    r.cancelled.sort_unstable();
    r.given_back.sort_unstable();
    r
}

fn child(pgid: u32) -> ChildIdentity {
    ChildIdentity { pid: pgid, pgid, boot_id: String::from("boot-model"), start_time: u64::from(pgid) * 7 }
}

struct QueueModel;

fn limits_strategy() -> impl Strategy<Value = ClaimLimits> {
    (1u32..=4, proptest::collection::vec(prop::option::of(1u32..=3), 3), 1u32..=2, 1u32..=4).prop_map(
        |(global, caps, default_lane, batch)| ClaimLimits {
            global,
            lanes: LANES.iter().zip(caps).filter_map(|(l, c)| c.map(|c| (l.to_string(), c))).collect(),
            default_lane,
            batch,
        },
    )
}

fn via_strategy() -> impl Strategy<Value = Via> + Clone {
    prop_oneof![7 => Just(Via::Owner), 2 => Just(Via::Current), 1 => Just(Via::Forged)]
}

impl ReferenceStateMachine for QueueModel {
    type State = World;
    type Transition = Step;

    fn init_state() -> BoxedStrategy<World> {
        Just(World::initial()).boxed()
    }

    fn transitions(w: &World) -> BoxedStrategy<Step> {
        let current = w.current();
        let daemons = w.daemons.len();
        let daemon = prop_oneof![4 => Just(current), 1 => 0..daemons];
        let mut steps: Vec<(u32, BoxedStrategy<Step>)> = vec![
            (
                4,
                (
                    0..LANES.len(),
                    1u32..=3,
                    prop_oneof![3 => Just(0i64), 1 => 1i64..3000],
                    prop::option::of(Just(5000u64)),
                    proptest::collection::vec("[a-z]{1,3}", 0..=2),
                )
                    .prop_map(|(lane, max_attempts, delay, timeout_ms, args)| Step::Enqueue {
                        lane,
                        max_attempts,
                        delay,
                        timeout_ms,
                        args,
                    })
                    .boxed(),
            ),
            (
                4,
                (daemon.clone(), limits_strategy()).prop_map(|(daemon, limits)| Step::Claim { daemon, limits }).boxed(),
            ),
            (2, prop_oneof![3 => 1i64..4000, 1 => -1500i64..0].prop_map(|ms| Step::Advance { ms }).boxed()),
        ];
        if daemons < MAX_DAEMONS {
            let delay = prop_oneof![Just(0i64), 1i64..2000];
            steps.push((1, delay.clone().prop_map(|orphan_delay| Step::Takeover { orphan_delay }).boxed()));
            let claims = w.claims.len();
            let in_flight = proptest::collection::vec(
                if claims == 0 {
                    limits_strategy().prop_map(InFlight::Claim).boxed()
                } else {
                    prop_oneof![
                        limits_strategy().prop_map(InFlight::Claim),
                        (0..claims).prop_map(InFlight::Complete),
                        (0..claims).prop_map(InFlight::Fail),
                    ]
                    .boxed()
                },
                1..=3,
            );
            steps.push((
                1,
                (in_flight, delay)
                    .prop_map(|(in_flight, orphan_delay)| Step::Crash { in_flight, orphan_delay })
                    .boxed(),
            ));
        }
        if w.enqueued > 0 {
            let job = 1..=w.enqueued;
            let running: Vec<i64> =
                w.q.jobs.iter().filter(|(_, j)| j.status == JobStatus::Running).map(|(id, _)| *id).collect();
            let cancel = if running.is_empty() {
                job.clone().boxed()
            } else {
                prop_oneof![prop::sample::select(running), job.clone()].boxed()
            };
            steps.push((1, cancel.prop_map(|job| Step::OperatorCancel { job }).boxed()));
            steps.push((1, job.prop_map(|job| Step::OperatorRetry { job }).boxed()));
        }
        if !w.claims.is_empty() {
            // Claims that still own their job are the interesting ones; older ones make
            // stale tokens.
            let n = w.claims.len();
            let live: Vec<usize> = (0..n)
                .filter(|c| w.q.owns(w.daemons[w.claims[*c].daemon].epoch, w.claims[*c].job, &w.claims[*c].token))
                .collect();
            let claim = if live.is_empty() {
                prop_oneof![3 => n.saturating_sub(3)..n, 1 => 0..n].boxed()
            } else {
                prop_oneof![4 => prop::sample::select(live), 1 => n.saturating_sub(3)..n, 1 => 0..n].boxed()
            };
            let v = via_strategy();
            steps.extend([
                (
                    1,
                    (daemon, proptest::collection::vec(claim.clone(), 1..=3))
                        .prop_map(|(daemon, claims)| Step::Renew { daemon, claims })
                        .boxed(),
                ),
                (
                    1,
                    (claim.clone(), v.clone(), 2u32..100)
                        .prop_map(|(claim, via, pgid)| Step::RecordChild { claim, via, pgid })
                        .boxed(),
                ),
                (3, (claim.clone(), v.clone()).prop_map(|(claim, via)| Step::Complete { claim, via }).boxed()),
                (
                    2,
                    (claim.clone(), v.clone(), any::<bool>(), 0i64..3000)
                        .prop_map(|(claim, via, retryable, backoff)| Step::Fail { claim, via, retryable, backoff })
                        .boxed(),
                ),
                (
                    2,
                    (claim.clone(), v.clone(), 0u32..=2)
                        .prop_map(|(claim, via, max_interruptions)| Step::Release { claim, via, max_interruptions })
                        .boxed(),
                ),
                (2, (claim.clone(), v.clone()).prop_map(|(claim, via)| Step::Abandon { claim, via }).boxed()),
                (
                    1,
                    (claim.clone(), v.clone(), 0i64..2000)
                        .prop_map(|(claim, via, delay)| Step::Requeue { claim, via, delay })
                        .boxed(),
                ),
                (1, (claim, v).prop_map(|(claim, via)| Step::OwnerCancel { claim, via }).boxed()),
            ]);
        }
        prop::strategy::Union::new_weighted(steps).boxed()
    }

    /// Shrinking removes steps, so references to claims, jobs and daemons are checked
    /// against the state they meet.
    fn preconditions(w: &World, step: &Step) -> bool {
        let claim_ok = |c: &usize| *c < w.claims.len();
        match step {
            Step::Claim { daemon, .. } => w.daemons.get(*daemon).is_some_and(|d| d.alive),
            Step::Renew { daemon, claims } => {
                w.daemons.get(*daemon).is_some_and(|d| d.alive) && claims.iter().all(claim_ok)
            }
            Step::RecordChild { claim, .. }
            | Step::Complete { claim, .. }
            | Step::Fail { claim, .. }
            | Step::Release { claim, .. }
            | Step::Abandon { claim, .. }
            | Step::Requeue { claim, .. }
            | Step::OwnerCancel { claim, .. } => claim_ok(claim),
            Step::OperatorCancel { job } | Step::OperatorRetry { job } => (1..=w.enqueued).contains(job),
            Step::Takeover { .. } => w.daemons.len() < MAX_DAEMONS,
            Step::Crash { in_flight, .. } => {
                w.daemons.len() < MAX_DAEMONS
                    && in_flight.iter().all(|f| match f {
                        InFlight::Claim(_) => true,
                        InFlight::Complete(c) | InFlight::Fail(c) => claim_ok(c),
                    })
            }
            Step::Enqueue { .. } | Step::Advance { .. } => true,
        }
    }

    fn apply(mut w: World, step: &Step) -> World {
        let now = w.now;
        w.expect = Expect::Nothing;
        w.resolved = Resolved { daemon: w.current(), epoch: w.q.epoch, ..Resolved::default() };
        match step {
            Step::Enqueue { lane, max_attempts, delay, timeout_ms, args } => {
                let id = w.q.enqueue(&new_job(*lane, *max_attempts, now + delay, *timeout_ms, args));
                w.enqueued += 1;
                w.expect = Expect::Enqueued(id);
            }
            Step::Claim { daemon, limits } => {
                let epoch = w.daemons[*daemon].epoch;
                let got = w.q.claim(Epoch(epoch), &worker(*daemon), limits, WallMs(now));
                for c in got.iter().flatten() {
                    w.claims.push(ClaimMade { job: c.id.0, token: c.token.clone(), daemon: *daemon });
                }
                w.resolved = Resolved { daemon: *daemon, epoch, ..Resolved::default() };
                w.expect = Expect::Claimed(got);
            }
            Step::Renew { daemon, claims } => {
                let epoch = w.daemons[*daemon].epoch;
                let held: Vec<(JobId, String)> =
                    claims.iter().map(|c| (JobId(w.claims[*c].job), w.claims[*c].token.clone())).collect();
                w.resolved = Resolved { daemon: *daemon, epoch, ..Resolved::default() };
                w.expect = Expect::Ids(w.q.renew(Epoch(epoch), &held, WallMs(now)));
            }
            Step::RecordChild { claim, via, pgid } => {
                let r = w.resolve(*claim, *via);
                let token = w.token(&r);
                w.expect = Expect::Done(w.q.record_child(&r.claim_ref(token), &child(*pgid)));
                w.resolved = r;
            }
            Step::Complete { claim, via } => {
                let r = w.resolve(*claim, *via);
                let token = w.token(&r);
                let got = model_record(&mut w.q, &r, token, Record::Complete, now);
                w.expect = Expect::Done(got.map(|g| g == Recorded::Completed));
                w.resolved = r;
            }
            Step::Fail { claim, via, retryable, backoff } => {
                let r = w.resolve(*claim, *via);
                let token = w.token(&r);
                let what =
                    Record::Fail { error: "boom".into(), retryable: *retryable, retry_at: WallMs(now + backoff) };
                w.expect = Expect::Outcome(model_record(&mut w.q, &r, token, what, now).map(ended));
                w.resolved = r;
            }
            Step::Release { claim, via, max_interruptions } => {
                let r = w.resolve(*claim, *via);
                let token = w.token(&r);
                let what = Record::Release { max_interruptions: *max_interruptions };
                w.expect = Expect::Outcome(model_record(&mut w.q, &r, token, what, now).map(ended));
                w.resolved = r;
            }
            Step::Abandon { claim, via } => {
                let r = w.resolve(*claim, *via);
                let token = w.token(&r);
                let what = Record::Abandon { reason: "lease lost".into() };
                w.expect = Expect::Outcome(model_record(&mut w.q, &r, token, what, now).map(ended));
                w.resolved = r;
            }
            Step::Requeue { claim, via, delay } => {
                let r = w.resolve(*claim, *via);
                let token = w.token(&r);
                let what = Record::Requeue { reason: "not started: EMFILE".into(), retry_at: WallMs(now + delay) };
                w.expect = Expect::Outcome(model_record(&mut w.q, &r, token, what, now).map(ended));
                w.resolved = r;
            }
            Step::OwnerCancel { claim, via } => {
                let r = w.resolve(*claim, *via);
                let token = w.token(&r);
                let got = model_record(&mut w.q, &r, token, Record::Cancel, now);
                w.expect = Expect::Done(got.map(|g| g == Recorded::Ended(FailOutcome::Cancelled)));
                w.resolved = r;
            }
            Step::OperatorCancel { job } => w.expect = Expect::Cancel(w.q.operator_cancel(*job, now)),
            Step::OperatorRetry { job } => w.expect = Expect::Retry(w.q.operator_retry(*job, now)),
            Step::Advance { ms } => w.now += ms,
            Step::Takeover { orphan_delay } => w.start_daemon(*orphan_delay),
            Step::Crash { orphan_delay, .. } => {
                // The uncommitted batch leaves nothing behind: the model does not see it.
                let dying = w.current();
                w.daemons[dying].alive = false;
                w.start_daemon(*orphan_delay);
            }
        }
        w
    }
}

fn new_job(lane: usize, max_attempts: u32, run_after: i64, timeout_ms: Option<u64>, args: &[String]) -> NewJob {
    NewJob {
        // With a program to run, an `exec` job: one whose daemon died before its child was
        // recorded gets its attempt back at recovery; any other kind's orphan keeps it.
        kind: String::from(if args.is_empty() { "noop" } else { "exec" }),
        args: args.to_vec(),
        lane: LANES[lane].to_string(),
        max_attempts,
        timeout_ms,
        run_after: WallMs(run_after),
        // The store must hand every claim the directory and variables it was enqueued
        // with, as the reference does: derived from the random args so they vary.
        exec: job::ExecSettings {
            cwd: args.first().map(|a| format!("/jobs/{a}")),
            env: args.iter().skip(1).map(|a| (format!("V_{a}"), a.clone())).collect(),
        },
    }
}

// ---------------------------------------------------------------------------------------
// The store side: one database file, one `SqliteStore` (writer thread) per live daemon

struct Daemon {
    store: SqliteStore,
    thread: WriterThread,
}

struct Sut {
    _dir: tempfile::TempDir,
    path: PathBuf,
    daemons: Vec<Option<Daemon>>,
    /// Claim handle -> the store's token (random).
    tokens: Vec<String>,
    /// The store's token -> the model's.
    model_token: HashMap<String, String>,
    reader: Connection,
}

/// A new, migrated database, made once and copied for every case.
fn fresh_database(to: &Path) {
    static TEMPLATE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, template) = TEMPLATE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("template.db");
        schema::create(&path, &Clock::default()).expect("create the database");
        (dir, path)
    });
    std::fs::copy(template, to).expect("copy the template database");
}

/// How often each kind of step had each kind of result, over the whole run: shows what
/// the generator reaches (a test that never meets a stale token proves nothing about it).
fn tally(what: &'static str) {
    static COUNTS: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());
    if what.is_empty() {
        let counts = COUNTS.lock().unwrap();
        let line: Vec<String> = counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
        eprintln!("model: steps seen: {}", line.join(", "));
    } else {
        *COUNTS.lock().unwrap().entry(what).or_default() += 1;
    }
}

impl Sut {
    fn new() -> Sut {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("homer.db");
        fresh_database(&path);
        let reader = Connection::open(&path).expect("open a reader");
        Sut { _dir: dir, path, daemons: Vec::new(), tokens: Vec::new(), model_token: HashMap::new(), reader }
    }

    /// What `homerd run` does first: take the leader row (epoch bump, FULL), start the
    /// writer, then startup recovery — the orphans' process groups, then `recover`.
    fn start_daemon(&mut self, now: i64, orphan_delay: i64) -> Expect {
        let mut conn = open_writer(&self.path, Duration::from_secs(5), Durability::Normal).expect("open the writer");
        let candidate = Candidate {
            role: "daemon",
            identity: homerd::identity::current().expect("own identity"),
            lock_path: String::from("/model/homer.lock"),
            lock_dev: 1,
            lock_ino: self.daemons.len() as u64 + 1,
            stale: Duration::from_secs(60),
        };
        let epoch = match leader::become_leader(&mut conn, &candidate, Duration::from_secs(60), &Clock::default()) {
            Ok(Outcome::Accepted { epoch }) => epoch,
            other => panic!("a new daemon could not take the leader row: {other:?}"),
        };
        let (writer, thread) = Writer::start(conn, epoch);
        let mut store = SqliteStore::new(writer);
        let orphans = store.orphan_children(Epoch(epoch)).map(sorted_orphans);
        let recovered =
            store.recover(Epoch(epoch), orphan_policy(now + orphan_delay), WallMs(now)).map(sorted_recovered);
        self.daemons.push(Some(Daemon { store, thread }));
        Expect::Started { epoch, orphans, recovered }
    }

    fn store(&mut self, daemon: usize) -> &mut SqliteStore {
        &mut self.daemons[daemon].as_mut().expect("steps only use live daemons").store
    }

    fn token(&self, r: &Resolved) -> String {
        r.claim.map_or_else(|| String::from("forged-token"), |c| self.tokens[c].clone())
    }

    /// The current daemon dies: its writer is gone, and the batch it had open — these
    /// operations, run the way the writer runs a batch (epoch check first) — never commits.
    fn crash(&mut self, w: &World, in_flight: &[InFlight]) {
        let dying = self.daemons.len() - 1;
        let Daemon { store, thread } = self.daemons[dying].take().expect("the current daemon lives");
        drop(store);
        thread.join();
        let epoch = w.daemons[dying].epoch;
        let mut conn = open_writer(&self.path, Duration::from_secs(5), Durability::Normal).expect("open");
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).expect("begin");
        assert!(leader::check_epoch(&tx, epoch).unwrap(), "the dying daemon was current");
        for op in in_flight {
            let now = WallMs(w.now);
            let claim = |c: usize| job::ClaimRef {
                epoch: Epoch(epoch),
                id: JobId(w.claims[c].job),
                token: self.tokens[c].clone(),
            };
            let _ = match op {
                InFlight::Claim(limits) => jobs::claim(&tx, Epoch(epoch), &worker(dying), limits, now).map(|_| ()),
                InFlight::Complete(c) => jobs::complete(&tx, &claim(*c), None, now).map(|_| ()),
                InFlight::Fail(c) => jobs::fail(&tx, &claim(*c), "boom", true, now, now).map(|_| ()),
            };
        }
        // The process is gone: no COMMIT ever reaches the database.
        drop(tx);
        drop(conn);
    }
}

struct StoreTest;

/// One outcome through [`JobStore::record_many`].
fn record(sut: &mut Sut, r: &Resolved, what: Record, now: i64) -> Result<Recorded, StoreError> {
    let claim = r.claim_ref(sut.token(r));
    let mut got = sut.store(r.daemon).record_many(&[(claim, what)], WallMs(now));
    assert_eq!(got.len(), 1, "one result per record");
    got.pop().expect("one result")
}

/// The same outcome in the model.
fn model_record(q: &mut Queue, r: &Resolved, token: String, what: Record, now: i64) -> Result<Recorded, StoreError> {
    q.record_many(&[(r.claim_ref(token), what)], WallMs(now)).pop().expect("one result")
}

/// `fail`/`release`/`abandon`'s answer, from what a record did.
fn ended(r: Recorded) -> Option<FailOutcome> {
    match r {
        Recorded::Ended(o) => Some(o),
        Recorded::NotOwner | Recorded::Completed => None,
    }
}

fn same<T: PartialEq + std::fmt::Debug>(step: &Step, what: &str, store: T, model: T) {
    assert!(store == model, "{step:?}: {what}: the store returned {store:?}, the model {model:?}");
}

/// A claim without its token (tokens are random in the store, counters in the model).
fn untokened(c: &Claimed) -> Claimed {
    Claimed { token: String::new(), ..c.clone() }
}

impl StateMachineTest for StoreTest {
    type SystemUnderTest = Sut;
    type Reference = QueueModel;

    fn init_test(w: &World) -> Sut {
        let mut sut = Sut::new();
        let started = sut.start_daemon(T0, 0);
        assert_eq!(started, w.expect, "the first start");
        sut
    }

    fn apply(mut sut: Sut, w: &World, step: Step) -> Sut {
        let now = w.now;
        let r = w.resolved.clone();
        let got = match &step {
            Step::Enqueue { lane, max_attempts, delay, timeout_ms, args } => {
                let job = new_job(*lane, *max_attempts, now + delay, *timeout_ms, args);
                Expect::Enqueued(sut.store(w.current()).enqueue(&job, WallMs(now)).expect("enqueue"))
            }
            Step::Claim { daemon, limits } => {
                let got = sut.store(*daemon).claim(Epoch(r.epoch), &worker(*daemon), limits, WallMs(now));
                let Expect::Claimed(expected) = &w.expect else { unreachable!() };
                same(
                    &step,
                    "claimed",
                    got.as_ref().map(|v| v.iter().map(untokened).collect::<Vec<_>>()),
                    expected.as_ref().map(|v| v.iter().map(untokened).collect::<Vec<_>>()),
                );
                if let (Ok(got), Ok(expected)) = (&got, expected) {
                    for (g, e) in got.iter().zip(expected) {
                        sut.tokens.push(g.token.clone());
                        sut.model_token.insert(g.token.clone(), e.token.clone());
                    }
                }
                w.expect.clone()
            }
            Step::Renew { daemon, claims } => {
                let held: Vec<(JobId, String)> =
                    claims.iter().map(|c| (JobId(w.claims[*c].job), sut.tokens[*c].clone())).collect();
                Expect::Ids(sut.store(*daemon).renew(Epoch(r.epoch), &held, WallMs(now)))
            }
            Step::RecordChild { pgid, .. } => {
                let claim = r.claim_ref(sut.token(&r));
                Expect::Done(sut.store(r.daemon).record_child(&claim, &child(*pgid)))
            }
            // Outcomes go through `record_many`, as the daemon records them (one call for
            // every run that ended together; the store's own tests cover several at once).
            Step::Complete { .. } => {
                let got = record(&mut sut, &r, Record::Complete, now);
                Expect::Done(got.map(|g| g == Recorded::Completed))
            }
            Step::Fail { retryable, backoff, .. } => {
                let what =
                    Record::Fail { error: "boom".into(), retryable: *retryable, retry_at: WallMs(now + backoff) };
                Expect::Outcome(record(&mut sut, &r, what, now).map(ended))
            }
            Step::Release { max_interruptions, .. } => {
                let what = Record::Release { max_interruptions: *max_interruptions };
                Expect::Outcome(record(&mut sut, &r, what, now).map(ended))
            }
            Step::Abandon { .. } => {
                let what = Record::Abandon { reason: "lease lost".into() };
                Expect::Outcome(record(&mut sut, &r, what, now).map(ended))
            }
            Step::Requeue { delay, .. } => {
                let what = Record::Requeue { reason: "not started: EMFILE".into(), retry_at: WallMs(now + delay) };
                Expect::Outcome(record(&mut sut, &r, what, now).map(ended))
            }
            Step::OwnerCancel { .. } => {
                let got = record(&mut sut, &r, Record::Cancel, now);
                Expect::Done(got.map(|g| g == Recorded::Ended(FailOutcome::Cancelled)))
            }
            Step::OperatorCancel { job } => Expect::Cancel(cli(&sut.path, |tx| ops::cancel(tx, *job, now))),
            Step::OperatorRetry { job } => Expect::Retry(cli(&sut.path, |tx| ops::retry(tx, *job, now))),
            Step::Advance { .. } => Expect::Nothing,
            Step::Takeover { orphan_delay } => {
                // The model's time is after the step (clock steps do not move it).
                sut.start_daemon(now, *orphan_delay)
            }
            Step::Crash { in_flight, orphan_delay } => {
                sut.crash(w, in_flight);
                sut.start_daemon(now, *orphan_delay)
            }
        };
        if !matches!(step, Step::Claim { .. }) {
            same(&step, "result", &got, &w.expect);
        }
        tally(classify(&step, &got, &r, w));
        // No write by a stale epoch or a token that does not own the job succeeds.
        let stale_epoch = r.epoch != w.q.epoch;
        match (&step, &got) {
            (_, Expect::Done(Ok(true)) | Expect::Outcome(Ok(Some(_)))) => {
                assert!(!stale_epoch, "{step:?}: a write under stale epoch {} succeeded", r.epoch);
                assert!(r.claim.is_some(), "{step:?}: a write with a forged token succeeded");
            }
            (Step::Claim { .. } | Step::Renew { .. }, Expect::Claimed(Ok(_)) | Expect::Ids(Ok(_))) => {
                assert!(!stale_epoch, "{step:?}: a write under stale epoch {} succeeded", r.epoch);
            }
            _ => {}
        }
        sut
    }

    fn check_invariants(sut: &Sut, w: &World) {
        let db = snapshot(&sut.reader);
        check_database_invariants(&db, w);
        let model = model_snapshot(w);
        let db_mapped: Vec<JobSnap> = db
            .jobs
            .iter()
            .map(|j| JobSnap {
                token: j
                    .token
                    .as_ref()
                    .map(|t| sut.model_token.get(t).cloned().unwrap_or_else(|| format!("unknown {t}"))),
                runs_log: j
                    .runs_log
                    .iter()
                    .map(|r| RunSnap {
                        token: sut.model_token.get(&r.token).cloned().unwrap_or_else(|| format!("unknown {}", r.token)),
                        ..r.clone()
                    })
                    .collect(),
                ..j.clone()
            })
            .collect();
        for (d, m) in db_mapped.iter().zip(&model.jobs) {
            assert!(d == m, "job {} differs after the step:\n  store: {d:?}\n  model: {m:?}", m.id);
        }
        assert_eq!(db_mapped.len(), model.jobs.len(), "job count");
        assert_eq!(db.stale_jobs_recovered, model.stale_jobs_recovered, "the stale_jobs_recovered counter");
        assert_eq!(db.epoch, w.q.epoch, "the leader row's epoch");
    }
}

fn classify(step: &Step, got: &Expect, r: &Resolved, w: &World) -> &'static str {
    let stale_epoch = r.epoch != w.q.epoch;
    match (step, got) {
        (_, Expect::Claimed(Err(_)) | Expect::Ids(Err(_)) | Expect::Done(Err(_)) | Expect::Outcome(Err(_))) => {
            "refused: stale epoch"
        }
        (Step::Claim { .. }, Expect::Claimed(Ok(v))) if v.is_empty() => "claim: nothing ready",
        (Step::Claim { .. }, Expect::Claimed(Ok(_))) => "claim: claimed",
        (Step::Renew { .. }, Expect::Ids(Ok(v))) if v.is_empty() => "renew: none ours",
        (Step::Renew { .. }, _) => "renew: renewed",
        (_, Expect::Done(Ok(false)) | Expect::Outcome(Ok(None))) if r.claim.is_none() => "refused: forged token",
        (_, Expect::Done(Ok(false)) | Expect::Outcome(Ok(None))) if stale_epoch => "refused: stale epoch",
        (_, Expect::Done(Ok(false)) | Expect::Outcome(Ok(None))) => "refused: stale token",
        (_, Expect::Done(Ok(true))) => "written: owner",
        (_, Expect::Outcome(Ok(Some(FailOutcome::Retry { .. })))) => "written: requeued",
        (_, Expect::Outcome(Ok(Some(FailOutcome::Failed)))) => "written: failed",
        (_, Expect::Outcome(Ok(Some(FailOutcome::Cancelled)))) => "written: cancelled on request",
        (_, Expect::Cancel(Cancel::Requested)) => "operator: cancel requested",
        (_, Expect::Cancel(_)) => "operator: cancel",
        (_, Expect::Retry(Retry::Requeued)) => "operator: retried",
        (_, Expect::Retry(_)) => "operator: retry refused",
        (Step::Crash { .. } | Step::Takeover { .. }, Expect::Started { recovered: Ok(r), .. })
            if !r.given_back.is_empty() =>
        {
            "restart: an unreleased orphan's attempt given back"
        }
        (Step::Crash { .. }, Expect::Started { recovered: Ok(r), .. }) if r != &Recovered::default() => {
            "crash: orphans recovered"
        }
        (Step::Takeover { .. }, Expect::Started { recovered: Ok(r), .. }) if r != &Recovered::default() => {
            "takeover: orphans recovered"
        }
        (Step::Crash { .. }, _) => "crash: nothing to recover",
        (Step::Takeover { .. }, _) => "takeover: nothing to recover",
        (Step::Enqueue { .. }, _) => "enqueue",
        _ => "clock",
    }
}

/// A CLI command's own transaction (`homerd cancel`, `homerd retry`): no epoch involved.
fn cli<R>(path: &Path, f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<R>) -> R {
    let mut conn = Connection::open(path).expect("open");
    conn.busy_timeout(Duration::from_secs(5)).expect("busy timeout");
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).expect("begin");
    let r = f(&tx).expect("the CLI statement");
    tx.commit().expect("commit");
    r
}

// ---------------------------------------------------------------------------------------
// Snapshots: the database and the model, in one shape

#[derive(Clone, Debug, PartialEq, Eq)]
struct RunSnap {
    run: u32,
    attempt: u32,
    epoch: i64,
    token: String,
    worker: String,
    child: Option<(u32, u32, String, u64)>,
    started_at: i64,
    ended_at: Option<i64>,
    outcome: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct JobSnap {
    id: i64,
    lane: String,
    args: Vec<String>,
    status: String,
    attempts: u32,
    max_attempts: u32,
    runs: u32,
    interruptions: u32,
    run_after: i64,
    timeout_ms: Option<u64>,
    token: Option<String>,
    claim_epoch: Option<i64>,
    locked_by: Option<String>,
    locked_at: Option<i64>,
    heartbeat_at: Option<i64>,
    started_at: Option<i64>,
    completed_at: Option<i64>,
    cancel_requested_at: Option<i64>,
    errors: u32,
    runs_log: Vec<RunSnap>,
}

struct Snapshot {
    epoch: i64,
    jobs: Vec<JobSnap>,
    stale_jobs_recovered: i64,
}

fn snapshot(c: &Connection) -> Snapshot {
    let mut runs: BTreeMap<i64, Vec<RunSnap>> = BTreeMap::new();
    let mut stmt = c
        .prepare(
            "SELECT job_id, run, attempt, epoch, claim_token, worker, child_pid, child_pgid, child_boot_id,
                    child_start_time, started_at, ended_at, outcome
             FROM job_runs ORDER BY job_id, run",
        )
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            let pid: Option<u32> = r.get(6)?;
            let child = match pid {
                Some(pid) => Some((pid, r.get(7)?, r.get(8)?, r.get::<_, i64>(9)? as u64)),
                None => None,
            };
            Ok((
                r.get::<_, i64>(0)?,
                RunSnap {
                    run: r.get(1)?,
                    attempt: r.get(2)?,
                    epoch: r.get(3)?,
                    token: r.get(4)?,
                    worker: r.get(5)?,
                    child,
                    started_at: r.get(10)?,
                    ended_at: r.get(11)?,
                    outcome: r.get(12)?,
                },
            ))
        })
        .unwrap();
    for row in rows {
        let (job, run) = row.unwrap();
        runs.entry(job).or_default().push(run);
    }
    let mut stmt = c
        .prepare(
            "SELECT id, lane, payload, status, attempts, max_attempts, runs, interruptions, run_after, timeout_ms,
                    claim_token, claim_epoch, locked_by, locked_at, heartbeat_at, started_at, completed_at,
                    cancel_requested_at, json_array_length(errors)
             FROM job_queue ORDER BY id",
        )
        .unwrap();
    let jobs = stmt
        .query_map([], |r| {
            let id: i64 = r.get(0)?;
            Ok(JobSnap {
                id,
                lane: r.get(1)?,
                args: serde_json::from_str(&r.get::<_, String>(2)?).expect("payload is a JSON array"),
                status: r.get(3)?,
                attempts: r.get(4)?,
                max_attempts: r.get(5)?,
                runs: r.get(6)?,
                interruptions: r.get(7)?,
                run_after: r.get(8)?,
                timeout_ms: r.get(9)?,
                token: r.get(10)?,
                claim_epoch: r.get(11)?,
                locked_by: r.get(12)?,
                locked_at: r.get(13)?,
                heartbeat_at: r.get(14)?,
                started_at: r.get(15)?,
                completed_at: r.get(16)?,
                cancel_requested_at: r.get(17)?,
                errors: r.get(18)?,
                runs_log: runs.remove(&id).unwrap_or_default(),
            })
        })
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let epoch = c.query_row("SELECT epoch FROM leader WHERE id = 1", [], |r| r.get(0)).unwrap();
    let stale_jobs_recovered =
        c.query_row("SELECT value FROM metrics WHERE name = 'stale_jobs_recovered'", [], |r| r.get(0)).unwrap();
    assert!(runs.is_empty(), "job_runs rows without a job: {runs:?}");
    Snapshot { epoch, jobs, stale_jobs_recovered }
}

fn model_snapshot(w: &World) -> Snapshot {
    let jobs =
        w.q.jobs
            .iter()
            .map(|(id, j)| JobSnap {
                id: *id,
                lane: j.spec.lane.clone(),
                args: j.spec.args.clone(),
                status: j.status.as_str().to_owned(),
                attempts: j.attempts,
                max_attempts: j.spec.max_attempts,
                runs: j.runs,
                interruptions: j.interruptions,
                run_after: j.run_after,
                timeout_ms: j.spec.timeout_ms,
                token: j.owner.as_ref().map(|o| o.token.clone()),
                claim_epoch: j.owner.as_ref().map(|o| o.epoch),
                locked_by: j.owner.as_ref().map(|o| o.worker.clone()),
                locked_at: j.owner.as_ref().map(|o| o.claimed_at),
                heartbeat_at: j.owner.as_ref().map(|o| o.heartbeat_at),
                started_at: j.started_at,
                completed_at: j.completed_at,
                cancel_requested_at: j.cancel_requested_at,
                errors: j.errors,
                runs_log: j
                    .history
                    .iter()
                    .map(|r| RunSnap {
                        run: r.run,
                        attempt: r.attempt,
                        epoch: r.epoch,
                        token: r.token.clone(),
                        worker: r.worker.clone(),
                        child: r.child.as_ref().map(|c| (c.pid, c.pgid, c.boot_id.clone(), c.start_time)),
                        started_at: r.started_at,
                        ended_at: r.ended.map(|(at, _)| at),
                        outcome: r.ended.map(|(_, o)| o.to_owned()),
                    })
                    .collect(),
            })
            .collect();
    Snapshot { epoch: w.q.epoch, jobs, stale_jobs_recovered: w.q.recovered_total }
}

/// What must hold of the database whatever the model says.
fn check_database_invariants(db: &Snapshot, w: &World) {
    // Nothing lost: every enqueued job is there.
    let ids: Vec<i64> = db.jobs.iter().map(|j| j.id).collect();
    assert_eq!(ids, (1..=w.enqueued).collect::<Vec<_>>(), "enqueued jobs missing or extra");
    for j in &db.jobs {
        let id = j.id;
        assert!(j.attempts <= j.max_attempts, "job {id}: attempts {} > max_attempts {}", j.attempts, j.max_attempts);
        assert_eq!(j.runs as usize, j.runs_log.len(), "job {id}: runs counter vs job_runs rows");
        for (n, r) in j.runs_log.iter().enumerate() {
            assert_eq!(r.run as usize, n + 1, "job {id}: run numbers");
        }
        let open: Vec<&RunSnap> = j.runs_log.iter().filter(|r| r.ended_at.is_none()).collect();
        let terminal = ["completed", "failed", "cancelled"].contains(&j.status.as_str());
        if j.status == "running" {
            // One owner: exactly one open run, and it is the claim the row names.
            assert_eq!(open.len(), 1, "job {id}: a running job has exactly one open run ({:?})", j.runs_log);
            assert_eq!(Some(&open[0].token), j.token.as_ref(), "job {id}: the open run is not the row's claim");
            assert_eq!(Some(open[0].epoch), j.claim_epoch, "job {id}: the open run's epoch");
            assert!(j.locked_by.is_some() && j.heartbeat_at.is_some(), "job {id}: running without a lock");
        } else {
            assert!(open.is_empty(), "job {id} is {} but has an open run: {open:?}", j.status);
            assert!(
                j.token.is_none()
                    && j.claim_epoch.is_none()
                    && j.locked_by.is_none()
                    && j.locked_at.is_none()
                    && j.heartbeat_at.is_none(),
                "job {id} is {} but keeps lock columns: {j:?}",
                j.status
            );
        }
        assert_eq!(terminal, j.completed_at.is_some(), "job {id} ({}): completed_at {:?}", j.status, j.completed_at);
    }
}

// ---------------------------------------------------------------------------------------
// The runner: a fixed case count, a printed seed, shrinking, regressions

fn env_u32(name: &str) -> Option<u32> {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v}: not a number")))
}

fn seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    match std::env::var("HOMER_MODEL_SEED") {
        Ok(hex) => {
            assert_eq!(hex.len(), 64, "HOMER_MODEL_SEED: 64 hex digits");
            for (i, b) in seed.iter_mut().enumerate() {
                *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("HOMER_MODEL_SEED: hex digits");
            }
        }
        Err(_) => {
            std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut seed)).expect("/dev/urandom");
        }
    }
    seed
}

/// Where failing cases are saved and replayed from (relative to `daemon/`).
fn regressions() -> &'static str {
    match std::env::var("HOMER_MODEL_REGRESSIONS") {
        Ok(path) => Box::leak(path.into_boxed_str()),
        Err(_) => "proptest-regressions/model.txt",
    }
}

/// Shrinking panics hundreds of times, each with a message (and a backtrace under
/// `RUST_BACKTRACE`): only the final report is worth reading. Other threads (the other
/// tests) keep the default hook.
fn quiet_panics_on_this_thread() {
    let this = std::thread::current().id();
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().id() != this {
            default(info);
        }
    }));
}

fn config(cases: u32) -> Config {
    let regressions = regressions();
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(regressions))),
        // Shrinking replays whole sequences against a real database: bound it.
        max_shrink_iters: 2048,
        ..Config::default()
    }
}

#[test]
fn the_sqlite_store_behaves_like_the_reference_model() {
    let cases = env_u32("HOMER_MODEL_CASES").unwrap_or(CI_CASES);
    let seed = seed();
    let hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
    let rerun = format!("HOMER_MODEL_SEED={hex} HOMER_MODEL_CASES={cases} cargo test -p homerd --test model");
    eprintln!("model: {cases} cases of up to {MAX_STEPS} steps, seed {hex}");
    quiet_panics_on_this_thread();
    let mut runner = TestRunner::new_with_rng(config(cases), TestRng::from_seed(RngAlgorithm::ChaCha, &seed));
    let started = std::time::Instant::now();
    let result = runner.run(&QueueModel::sequential_strategy(1..=MAX_STEPS), |(initial, steps, seen)| {
        StoreTest::test_sequential(Config::default(), initial, steps, seen);
        Ok(())
    });
    match result {
        Ok(()) => {
            eprintln!("model: {cases} cases passed in {:.1}s", started.elapsed().as_secs_f64());
            tally("");
        }
        Err(TestError::Fail(why, (_, steps, _))) => {
            let listing: Vec<String> =
                steps.iter().enumerate().map(|(i, s)| format!("  {:>2}. {s:?}", i + 1)).collect();
            eprintln!(
                "the store and the model disagree: {why}\n\nminimal sequence ({} steps):\n{}\n\nseed: {hex}\nrerun: {rerun}\n\
                 (the failing case's seed is saved to {} (relative to daemon/): committed, it replays on every run)",
                steps.len(),
                listing.join("\n"),
                regressions(),
            );
            panic!("the store and the model disagree (report above)");
        }
        Err(e) => {
            eprintln!("model: {e}\nrerun: {rerun}");
            panic!("model: {e}");
        }
    }
}

/// Replays `steps` from a new database, step by step (no generator involved).
fn replay(steps: Vec<Step>) {
    StoreTest::test_sequential(Config::default(), World::initial(), steps, None);
}

fn limits(global: u32, batch: u32) -> ClaimLimits {
    ClaimLimits { global, lanes: BTreeMap::new(), default_lane: 2, batch }
}

/// A zombie: the job's claim was abandoned and claimed again by the same daemon; the old
/// token must not complete it (the owner/token guard, alone: the epoch is the same).
#[test]
fn regression_a_same_epoch_stale_token_cannot_complete() {
    replay(vec![
        Step::Enqueue { lane: 0, max_attempts: 3, delay: 0, timeout_ms: None, args: vec![] },
        Step::Claim { daemon: 0, limits: limits(1, 1) },
        Step::Abandon { claim: 0, via: Via::Owner },
        Step::Claim { daemon: 0, limits: limits(1, 1) },
        Step::Complete { claim: 0, via: Via::Owner },
        Step::Complete { claim: 1, via: Via::Owner },
    ]);
}

/// A takeover: the fenced daemon can neither claim nor write; its running job is an
/// orphan at once for the new daemon, whatever its heartbeat's age.
#[test]
fn regression_a_fenced_daemon_writes_nothing_and_its_job_is_recovered_at_once() {
    replay(vec![
        Step::Enqueue { lane: 0, max_attempts: 3, delay: 0, timeout_ms: None, args: vec![] },
        Step::Enqueue { lane: 1, max_attempts: 3, delay: 0, timeout_ms: None, args: vec![] },
        Step::Claim { daemon: 0, limits: limits(1, 1) },
        Step::RecordChild { claim: 0, via: Via::Owner, pgid: 42 },
        Step::Takeover { orphan_delay: 0 },
        Step::Claim { daemon: 0, limits: limits(4, 4) },
        Step::Renew { daemon: 0, claims: vec![0] },
        Step::Complete { claim: 0, via: Via::Owner },
        Step::Claim { daemon: 1, limits: limits(4, 4) },
    ]);
}

/// A crash mid-batch: nothing of the open batch survives; the restart recovers the
/// orphan (and its recorded child) and the in-flight claim never happened.
#[test]
fn regression_a_crash_mid_batch_leaves_nothing_and_the_restart_recovers() {
    replay(vec![
        Step::Enqueue { lane: 0, max_attempts: 1, delay: 0, timeout_ms: None, args: vec![] },
        Step::Enqueue { lane: 0, max_attempts: 2, delay: 0, timeout_ms: None, args: vec![] },
        Step::Claim { daemon: 0, limits: limits(1, 1) },
        Step::RecordChild { claim: 0, via: Via::Owner, pgid: 7 },
        Step::Crash { in_flight: vec![InFlight::Complete(0), InFlight::Claim(limits(4, 4))], orphan_delay: 500 },
        Step::Claim { daemon: 1, limits: limits(4, 4) },
        Step::Advance { ms: 500 },
        Step::Claim { daemon: 1, limits: limits(4, 4) },
    ]);
}

/// A graceful release gives the attempt back, so an interrupted job with one attempt
/// can still run (the drain give-back).
#[test]
fn regression_a_release_gives_the_attempt_back() {
    replay(vec![
        Step::Enqueue { lane: 2, max_attempts: 1, delay: 0, timeout_ms: None, args: vec![] },
        Step::Claim { daemon: 0, limits: limits(1, 1) },
        Step::Release { claim: 0, via: Via::Owner, max_interruptions: 2 },
        Step::Claim { daemon: 0, limits: limits(1, 1) },
        Step::Complete { claim: 1, via: Via::Owner },
    ]);
}
