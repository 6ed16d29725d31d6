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
