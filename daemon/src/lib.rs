//! homerd: a local job daemon that never runs twice and never loses or double-runs a job.
//!
//! See ARCHITECTURE.md for the map. Module ownership of dangerous primitives:
//! `lock` owns `flock`, `sqlite` owns SQL, `identity` owns process identity, `platform` every system call about processes (one file per OS); `job` is the vocabulary.
//! `cli` parses the command line and dispatches to the subcommands in `cmd`, one file each;
//! everything they print on stdout goes through `output` (a closed pipe ends a command
//! quietly), which is why `println!` is a lint error here.
#![warn(clippy::print_stdout)]

pub mod backend;
pub mod children;
pub mod cli;
pub mod clock;
pub mod cmd;
pub mod config;
pub mod duration;
pub mod engine;
pub mod error;
pub mod events;
pub mod failpoint;
pub mod fstype;
pub mod guardian;
pub mod identity;
pub mod job;
pub mod lock;
pub mod mutant;
pub mod output;
pub mod paths;
pub mod platform;
pub mod pool;
pub mod postgres;
pub mod powerloss;
pub mod rlimit;
pub mod rows;
pub mod runner;
pub mod shim;
pub mod sqlite;
pub mod sync;
pub mod wake;
