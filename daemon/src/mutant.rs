//! Named mutants: one safety mechanism switched off at runtime, to prove a test catches
//! its absence.
//!
//! Only compiled in with the non-default `mutants` cargo feature; then
//! `HOMERD_MUTANT=<name>` selects one (one build serves every mutant). In a normal build
//! [`active`] is a constant `false` and the checks fold away.

/// Mutant names (the harness and `cargo xtask mutants` refer to these strings).
pub const LOCK_NO_CLOEXEC: &str = "lock_no_cloexec";
pub const LOCK_NO_INODE_RECHECK: &str = "lock_no_inode_recheck";
pub const LOCK_TRUNCATE_BEFORE_LOCK: &str = "lock_truncate_before_lock";
pub const DIAGNOSTICS_BEFORE_LEADER: &str = "diagnostics_before_leader";
pub const NO_LEADER_REFUSAL: &str = "no_leader_refusal";
pub const NO_EPOCH_GUARD: &str = "no_epoch_guard";
pub const WRITES_BEFORE_VALIDATION: &str = "writes_before_validation";
pub const NO_BUSY_TIMEOUT: &str = "no_busy_timeout";
pub const NO_OWNER_TOKEN_GUARD: &str = "no_owner_token_guard";
pub const NO_IMMEDIATE_RECOVERY: &str = "no_immediate_recovery";
pub const NO_GROUP_KILL: &str = "no_group_kill";
pub const NO_LEASE_SELF_KILL: &str = "no_lease_self_kill";
pub const NO_DRAIN_GIVE_BACK: &str = "no_drain_give_back";
pub const DEFERRED_CLAIM: &str = "deferred_claim";
/// `homerd enqueue` acknowledges what a power loss can still take: it commits with
/// `synchronous=OFF`, so the printed id is not covered by an fsync.
pub const ACK_BEFORE_SYNC: &str = "ack_before_sync";
/// Start-up validation reads the schema only, not the data (no `quick_check`).
pub const NO_DATA_CHECK: &str = "no_data_check";
/// A `-wal`/`-shm` left without its database is adopted: a new database is created
/// beside it, and SQLite replays the foreign WAL into it.
pub const ADOPT_STRAY_WAL: &str = "adopt_stray_wal";
/// A job start that fails for the daemon's own reasons (EMFILE, ENFILE, EAGAIN, ENOMEM)
/// is charged to the job as a failed attempt.
pub const FD_ERRORS_CHARGED: &str = "fd_errors_charged";
/// Scheduling reads the raw wall clock: a backward step delays ready jobs.
pub const WALL_CLOCK_SCHEDULING: &str = "wall_clock_scheduling";
/// A run stopped because the daemon stood down (it could not write its database: another
/// writer holds it, the disk is full) is abandoned with its attempt counted, as if the
/// job had lost its lease, instead of released with the attempt given back.
pub const STAND_DOWN_CHARGED: &str = "stand_down_charged";
/// A run whose program had exited on its own is still stopped by a later deadline or
/// cancel (a timeout or a shutdown grace running out while the rest of its group is killed
/// or its output drained), and that stop decides what is recorded instead of the program's
/// own result: a success is retried, released or cancelled, and runs again.
pub const LATE_STOP_OVERRIDES: &str = "late_stop_overrides";
/// Recovery charges an attempt to every orphan, also to an `exec` run whose program was
/// never released (the daemon died between the claim and recording the child): a job
/// allowed one attempt ends `failed` without ever having run.
pub const UNRELEASED_ORPHAN_CHARGED: &str = "unreleased_orphan_charged";

/// PostgreSQL: claims take rows without the lane's advisory lock and without
/// `SKIP LOCKED`, so a lane's cap no longer holds across workers and a claim waits on a
/// row another transaction holds.
pub const PG_NO_SKIP_LOCKED: &str = "pg_no_skip_locked";
/// PostgreSQL: liveness on the host's clock — heartbeats write `seen_at` from the
/// worker's own clock and the stale sweep judges by the sweeper's, so a host whose clock
/// runs ahead fences live workers.
pub const PG_LEASE_ON_HOST_CLOCK: &str = "pg_lease_on_host_clock";
/// PostgreSQL: a write does not first share-lock its worker row and find it unfenced
/// (`workers::guard`): a fenced incarnation's writes go through.
pub const PG_NO_INCARNATION_GUARD: &str = "pg_no_incarnation_guard";

/// PostgreSQL: no group guardian — a daemon killed alone leaves its jobs' other
/// processes running, and another host's re-run overlaps them.
pub const PG_NO_GUARDIAN: &str = "pg_no_guardian";

/// The PostgreSQL backend's mutants. They are judged by the PostgreSQL layer of
/// `cargo xtask mutants` (the many-worker tests, `postgres::tests`, and the many-hosts
/// tests, `tests/postgres_hosts.rs`), not the scenarios.
/// The owner's self-kill on this backend is the backend-agnostic `no_lease_self_kill`.
pub const POSTGRES: &[&str] = &[PG_NO_SKIP_LOCKED, PG_LEASE_ON_HOST_CLOCK, PG_NO_INCARNATION_GUARD, PG_NO_GUARDIAN];

pub const ALL: &[&str] = &[
    LOCK_NO_CLOEXEC,
    LOCK_NO_INODE_RECHECK,
    LOCK_TRUNCATE_BEFORE_LOCK,
    DIAGNOSTICS_BEFORE_LEADER,
    NO_LEADER_REFUSAL,
    NO_EPOCH_GUARD,
    WRITES_BEFORE_VALIDATION,
    NO_BUSY_TIMEOUT,
    NO_OWNER_TOKEN_GUARD,
    NO_IMMEDIATE_RECOVERY,
    NO_GROUP_KILL,
    NO_LEASE_SELF_KILL,
    NO_DRAIN_GIVE_BACK,
    DEFERRED_CLAIM,
    ACK_BEFORE_SYNC,
    NO_DATA_CHECK,
    ADOPT_STRAY_WAL,
    FD_ERRORS_CHARGED,
    WALL_CLOCK_SCHEDULING,
    STAND_DOWN_CHARGED,
    LATE_STOP_OVERRIDES,
    UNRELEASED_ORPHAN_CHARGED,
];

/// Whether mutant `name` is selected in this process.
#[cfg(feature = "mutants")]
pub fn active(name: &str) -> bool {
    use std::sync::OnceLock;
    static SELECTED: OnceLock<Option<String>> = OnceLock::new();
    // `a+b` selects several: some mechanisms are layered (a stale worker's write is stopped by
    // both the epoch check and the owner/token guard), and only their sum is observable.
    SELECTED
        .get_or_init(|| std::env::var("HOMERD_MUTANT").ok())
        .as_deref()
        .is_some_and(|s| s.split('+').any(|m| m == name))
}

/// Whether mutant `name` is selected in this process (never, in this build).
#[cfg(not(feature = "mutants"))]
#[inline(always)]
pub fn active(_name: &str) -> bool {
    false
}
