//! The subcommands, side by side: one file each, all run against a [`context::Context`].
//! `cli.rs` parses the command line and dispatches here.
//!
//! - `run.rs` — `homerd run`: the daemon's lifecycle (start, supervise, shut down).
//! - `lead.rs` — what `run` and `migrate` share: the lock, the leader row, migrations.
//! - `status.rs`, `doctor.rs` — read-only looks at the deployment (`status --watch` too); neither touches the lock.
//! - `maintain.rs` — `migrate` and `backup`.
//! - `enqueue.rs` — `enqueue` and `enqueue --from`, the job kinds and their validation.
//! - `operate.rs` — `list`, `show`, `cancel`, `retry`.
//! - `logs.rs` — `logs`: a run's output, and following a job to its end.
//! - `wait.rs` — `wait`: blocking until jobs end; the outcome → exit code mapping `logs -f` shares.
//! - `service/` — `homerd service launchd|systemd` and doctor's checks of installed units.
//! - `context.rs` — the [`context::Context`] and the openers every other command uses.
//! - `queue.rs` — [`queue::Queue`]: the operator commands' reads and writes on either
//!   backend, chosen once when a command opens it.

pub mod context;
pub mod doctor;
pub mod enqueue;
pub mod lead;
pub mod logs;
pub mod maintain;
pub mod operate;
pub mod queue;
pub mod run;
pub mod run_postgres;
pub mod service;
pub mod status;
pub mod wait;
