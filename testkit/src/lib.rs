//! The process layer homerd's process tests (`daemon/tests/common`), `homer-harness` and
//! `homer-bench` share: start a child as the leader of its own process group with piped
//! output ([`Proc::spawn`]), read its output a line at a time on threads, JSON events
//! parsed as they arrive ([`Events`], or any [`LineSink`]), wait for an event with a
//! deadline ([`Events::wait_for`], never a sleep), wait for the exit with a bound
//! ([`Proc::wait_exit`]), and kill the group and reap the child on drop. Also a throwaway
//! PostgreSQL server for the PostgreSQL backend's tests ([`PgServer`], in [`postgres`]),
//! and hosts to run its daemons on, each a network namespace that can be cut off from
//! the server ([`Host`], in [`netns`]; Linux only).
//!
//! Invariants:
//! - a pid is signalled only while it is still ours: the child is watched without being
//!   reaped (`waitid(WNOWAIT)`), so until [`Proc`] reaps it its pid (and its group id)
//!   cannot be recycled;
//! - zombies are dead: [`alive`] and [`group_alive`] do not count a process that has
//!   exited and waits for a parent (PID 1 may reap orphans late);
//! - every deadline a user scales goes through [`scaled`], the one reader of
//!   `HOMER_TEST_TIME_SCALE`.
//!
//! What stays with each user: the tests' `Sandbox`, the harness's markers, subreaper and
//! interrupt handling, the bench's timings.

mod homerd;
mod lines;
pub mod netns;
pub mod postgres;
mod proc;
mod stat;
mod time;

pub use homerd::{homerd_command, scrub_homer_env};
pub use lines::{read_lines, Events, Injector, Line, LineSink, Parse, Stream, WaitError};
pub use netns::Host;
pub use postgres::{
    available as pg_available, DirectSpawner, PgOptions, PgServer, PgTls, Spawner, StopMode,
    BIN_DIR_VAR as PG_BIN_DIR_VAR,
};
pub use proc::{default_interrupts, run, run_spawned, Exit, Finished, Pipes, Proc};
pub use stat::{alive, all_stats, group_alive, stat, Stat};
pub use time::{deadline, scaled, time_scale, TIME_SCALE_VAR};
