//! The step verbs of a scenario file, one module per verb, and their registry.
//!
//! Each module owns its verb completely: the parsed struct, its parser and validation
//! (through the shared kit, `scenario::kit`), the one-line summary the step log and
//! failure reports show, and what running it does to the run's context
//! (`exec::ctx::Ctx`). A module implements `Verb`; the `registry!` list below
//! turns the list of verbs into the [`Step`] enum, the verb names the parser accepts
//! ([`VERBS`]), and the dispatch of parse, summary and run.
//!
//! Adding a verb: write `steps/<verb>.rs` with a type implementing `Verb`, declare the
//! module and add its line to `registry!` here, and document it in `scenarios/README.md`.
//! Nothing else in the harness names a verb.

use crate::exec::ctx::{Ctx, StepError};
use crate::scenario::kit::{Cx, Field, Res, Tbl};

pub mod check;
pub mod cli;
pub mod clock;
pub mod enqueue;
pub mod exit;
pub mod expect_events;
pub mod file;
pub mod hold_write;
pub mod net;
pub mod power_loss;
pub mod server;
pub mod signal;
pub mod snapshot;
pub mod sql;
pub mod start;
pub mod wait;
pub mod wait_file;

/// One step verb: how it is written, parsed, summarised and run.
pub(crate) trait Verb: Sized {
    /// The key that names the verb in a `[[step]]` table, e.g. `"start"`.
    const KEY: &'static str;
    /// Every option key the verb may take (whichever of its forms), besides [`Verb::KEY`].
    /// A step key that is neither a verb nor any verb's option is reported as an unknown
    /// verb (with a "did you mean"); an option misplaced under another verb as an unknown
    /// option of that verb.
    const OPTIONS: &'static [&'static str];

    /// Validate the step table `t` whose verb key holds `v`. Reject every key outside the
    /// verb's options ([`Verb::only_its_options`], or `cx.only` for a verb whose options
    /// depend on its form), and every value of the wrong shape, with its position.
    fn parse(cx: &mut Cx<'_>, t: &Tbl<'_>, v: &Field<'_>) -> Res<Self>;

    /// Reject every key of `t` but [`Verb::KEY`] and [`Verb::OPTIONS`].
    fn only_its_options(cx: &Cx<'_>, t: &Tbl<'_>) -> Res<()> {
        cx.only(t, &[&[Self::KEY], Self::OPTIONS].concat(), &format!("`{}`", Self::KEY))
    }

    /// One line for `harness-logs/steps.log` and failure reports.
    fn summary(&self) -> String;

    /// Run the step against the scenario's context.
    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError>;

    /// How a run's timeline (`timeline.rs`) marks this step when it is a fault (a signal,
    /// a clock step, a power cut, file surgery, a held write); `None`: an ordinary step.
    fn mark(&self) -> Option<Mark> {
        None
    }
}

/// What kind of fault a step is, as a run's timeline draws it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarkKind {
    /// SIGKILL.
    Kill,
    /// SIGSTOP: the target is paused until a `Resume`.
    Pause,
    /// SIGCONT.
    Resume,
    /// Any other signal (TERM, INT, HUP).
    Signal,
    /// A wall-clock step.
    Clock,
    /// A `power_loss` cut.
    PowerLoss,
    /// File surgery: a lock file deleted or replaced, a page damaged, a disk filled...
    File,
    /// A write transaction held by the harness (a busy database).
    Busy,
    /// A host's link to the server cut, joined again or slowed (`partition`, `heal`, `delay`).
    Network,
}

/// A fault step as the timeline shows it: its kind, a short label, and the processes it
/// targets (a `signal` target pattern such as `a` or `cli.*`), if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mark {
    pub kind: MarkKind,
    pub label: String,
    pub target: Option<String>,
}

/// The registry: `Variant(module::Type)`, one line per verb, in the order error messages
/// list the verbs.
macro_rules! registry {
    ($($variant:ident($module:ident::$ty:ident)),* $(,)?) => {
        /// One parsed step: one variant per verb.
        #[derive(Clone, Debug)]
        pub enum Step {
            $($variant($module::$ty),)*
        }

        /// Every verb key, in registry order.
        pub const VERBS: &[&str] = &[$(<$module::$ty as Verb>::KEY,)*];

        /// Whether `key` is an option of any verb (a step key outside this and [`VERBS`] is
        /// an unknown verb).
        pub fn is_any_option(key: &str) -> bool {
            false $(|| <$module::$ty as Verb>::OPTIONS.contains(&key))*
        }

        impl Step {
            /// Parse the step whose verb key is `verb` (one of [`VERBS`]).
            pub(crate) fn parse(verb: &str, cx: &mut Cx<'_>, t: &Tbl<'_>, v: &Field<'_>) -> Res<Step> {
                $(
                    if verb == <$module::$ty as Verb>::KEY {
                        return <$module::$ty as Verb>::parse(cx, t, v).map(Step::$variant);
                    }
                )*
                unreachable!("`{verb}` is not in the registry")
            }

            /// One line for the step log and failure reports.
            pub fn summary(&self) -> String {
                match self {
                    $(Step::$variant(s) => s.summary(),)*
                }
            }

            /// The verb's key, e.g. `"start"`.
            pub fn key(&self) -> &'static str {
                match self {
                    $(Step::$variant(_) => <$module::$ty as Verb>::KEY,)*
                }
            }

            /// How a timeline marks the step, if it is a fault.
            pub fn mark(&self) -> Option<Mark> {
                match self {
                    $(Step::$variant(s) => s.mark(),)*
                }
            }

            /// Run the step against the scenario's context.
            pub(crate) fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
                match self {
                    $(Step::$variant(s) => s.run(ctx),)*
                }
            }
        }
    };
}

registry! {
    Start(start::Start),
    Wait(wait::Wait),
    Exit(exit::ExpectExit),
    Signal(signal::Signal),
    File(file::FileStep),
    Enqueue(enqueue::Enqueue),
    Cli(cli::Cli),
    Sql(sql::Sql),
    HoldWrite(hold_write::HoldWrite),
    Clock(clock::Clock),
    Check(check::Check),
    ExpectEvents(expect_events::ExpectEvents),
    Snapshot(snapshot::Snapshot),
    PowerLoss(power_loss::PowerLoss),
    WaitFile(wait_file::WaitFile),
    Server(server::Server),
    Partition(net::Partition),
    Heal(net::Heal),
    Delay(net::Delay),
}
