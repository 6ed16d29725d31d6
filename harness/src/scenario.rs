//! Scenario files: the data model and the parser.
//!
//! A scenario is one TOML file in `scenarios/`: a header (what it covers, the mutant it
//! must fail on, what it requires), the `[settings]` every daemon and CLI call gets, and
//! ordered `[[step]]` tables. Each step table has exactly one *verb* key (`start`, `wait`,
//! `exit`, `signal`, `file`, `enqueue`, `cli`, `sql`, `hold_write`, `clock`, `check`,
//! `expect_events`, `snapshot`, `power_loss`) whose value names the step's subject, plus
//! that verb's options. `scenarios/README.md` documents every step with an example.
//!
//! Invariant: a file that parses is fully validated — every key known, every value of the
//! right type, every duration well-formed — so a malformed file is rejected before any
//! process starts, with `file:line:col`, the key and what was expected ([`ParseError`]).
//!
//! Strings in steps may use placeholders, substituted when the step runs: `{sandbox}`,
//! `{home}`, `{lock}` (the default lock file), `{db}`, `{probe}` (the effects probe
//! command, for `exec` jobs) and `{job:N}` (the id printed by the N-th acknowledged
//! enqueue, 1-based).

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// One parsed scenario file.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub path: PathBuf,
    /// File stem, e.g. `pitfall-01-dual-start`.
    pub name: String,
    pub description: String,
    /// What the scenario demonstrates, e.g. `["PITFALLS 1"]` or `["checklist: heartbeat"]`.
    pub covers: Vec<String>,
    pub mutant: MutantExpectation,
    pub requires: Vec<Requirement>,
    /// Upper bound on the whole scenario (scaled by the time scale). Default 60 s.
    pub timeout: Duration,
    /// `home_size`: the home is a fresh tmpfs of this many bytes, mounted before any process
    /// starts and unmounted at teardown (needs `requires = ["tmpfs"]`).
    pub home_size: Option<u64>,
    /// `power_loss = true`: every `homerd` process the scenario starts records its SQLite
    /// writes (`HOMERD_POWERLOSS_LOG`), so a `power_loss` step can drop the un-synced ones.
    pub power_loss: bool,
    /// `[settings]`: `--set key=value` given to every daemon and CLI call, in file order.
    /// Values that parse as durations are scaled by the time scale.
    pub settings: Vec<(String, String)>,
    pub steps: Vec<StepAt>,
}

/// What `cargo xtask mutants` expects of the scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MutantExpectation {
    /// `mutant = "name"` or `mutant = ["a", "b"]`: the scenario must fail on each.
    Catches(Vec<String>),
    /// `mutant_none = "why"`: no mutant applies (the reason is shown in the table).
    None(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requirement {
    /// Only meaningful on Linux (e.g. `/proc`, `PR_SET_CHILD_SUBREAPER`).
    Linux,
    /// Runs a process as an unprivileged uid (needs root + `setuid`, or a non-root harness).
    Unprivileged,
    /// Mounts a size-limited tmpfs (`home_size`): Linux, with root or `CAP_SYS_ADMIN`.
    Tmpfs,
}

/// A step and the line its `[[step]]` header is on (for failure reports).
#[derive(Clone, Debug)]
pub struct StepAt {
    pub line: usize,
    pub step: Step,
}

#[derive(Clone, Debug)]
pub enum Step {
    /// Start one daemon (or `count` at once) in the background.
    Start(Start),
    /// Block until a condition holds, or fail at the deadline.
    Wait(Wait),
    /// Wait for a background process to exit and check its code and output.
    Exit(ExpectExit),
    /// Send a signal to a background process (its pid, not its group).
    /// With `outside_write` (STOP only): pause the process at a moment it holds no SQLite
    /// write transaction (see `exec.rs`), as a scenario about a pause means.
    Signal { target: String, signal: Sig, outside_write: bool },
    /// Operate on a file inside the sandbox.
    File(FileStep),
    /// `homerd enqueue` (acknowledged ids are remembered for the invariants and `{job:N}`).
    Enqueue(Enqueue),
    /// Run a `homerd` subcommand to completion and check it.
    Cli(Cli),
    /// Run SQL on the database (read-only connection) and compare rows.
    Sql(Sql),
    /// Hold a `BEGIN IMMEDIATE` write transaction for `duration`, in the background.
    HoldWrite { duration: Duration },
    /// Step every daemon's wall clock (through `HOMERD_CLOCK_OFFSET_FILE`) by signed ms.
    Clock { step_ms: i64 },
    /// Run the invariant checkers now.
    Check(Check),
    /// Assert on the events recorded so far (no waiting).
    ExpectEvents(ExpectEvents),
    /// Compare text gathered from the sandbox with an insta snapshot.
    Snapshot(Snapshot),
    /// `power_loss = "cut"`: SIGKILL every process of the scenario at once, wait until all
    /// are gone, then drop every write no fsync covered (the scenario's power-loss log).
    PowerLoss(PowerLoss),
}

#[derive(Clone, Debug)]
pub struct PowerLoss {
    /// How long every process may take to die (default 10 s, scaled).
    pub timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct Start {
    /// Process name used by later steps. With `count > 1` the processes are `name.1`..`name.N`.
    pub name: String,
    pub count: u32,
    /// Subcommand and arguments; default `["run"]`.
    pub command: Vec<String>,
    /// Extra arguments after the command (placeholders allowed).
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// `HOMERD_FAILPOINTS` value, e.g. `"lock.after_open=stop"`.
    pub failpoints: Option<String>,
    /// `--lock-file` (placeholders allowed); default: the home's lock file.
    pub lock_file: Option<String>,
    /// Run as an unprivileged uid (scenario must `requires = ["unprivileged"]`).
    pub unprivileged: bool,
    /// Do not pass the scenario's `[settings]`.
    pub no_settings: bool,
    /// `RLIMIT_NOFILE` (soft, hard) the daemon starts with, set in the child before exec.
    pub nofile: Option<(u64, u64)>,
    /// `HOMERD_POWERLOSS_CUT`: the process cuts power (SIGKILLs itself) just before its
    /// N-th recorded write, truncate or sync (needs the `power_loss` header).
    pub arm: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct Wait {
    pub until: WaitFor,
    /// Default 10 s, scaled.
    pub timeout: Duration,
}

#[derive(Clone, Debug)]
pub enum WaitFor {
    /// `wait = "event"`: `count` events named `event` (matching `fields`) from `target`
    /// (a process name, `name.*` for a group, or `*` for any).
    Event { target: String, event: String, fields: Vec<(String, Scalar)>, count: u32 },
    /// `wait = "exit"`: the process has exited (no code check; use `exit` for that).
    Exited { target: String },
    /// `wait = "sql"`: the query returns exactly `rows`.
    Sql { query: String, rows: Vec<Vec<Scalar>> },
    /// `wait = "effects"`: the effects log holds at least `starts` start records (and
    /// `ends` end records) for `job` (a `{job:N}` index, 1-based) or for any job. With
    /// `not_before` (needs `job`), no start record of the job may come earlier than that
    /// long after its enqueue was spawned (measured on the probe's monotonic clock, so a
    /// wall-clock step cannot hide an early start).
    Effects { job: Option<u32>, starts: u32, ends: u32, not_before: Option<Duration> },
    /// `wait = "duration"`: let time pass (only for letting a *stale threshold* elapse, never
    /// as synchronisation; the README says so).
    Elapsed { duration: Duration },
}

#[derive(Clone, Debug)]
pub struct ExpectExit {
    /// Process name or `name.*` (then `count` of the group must exit).
    pub target: String,
    pub count: Option<u32>,
    pub code: i32,
    pub stdout: Vec<Pattern>,
    pub stderr: Vec<Pattern>,
    pub timeout: Duration,
}

/// An output expectation: `contains` (default) or `!contains` (must not appear), matched as
/// a regular expression when written `re:...`.
#[derive(Clone, Debug)]
pub struct Pattern {
    pub negated: bool,
    pub regex: bool,
    pub text: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sig {
    Kill,
    Term,
    Int,
    Stop,
    Cont,
    Hup,
}

#[derive(Clone, Debug)]
pub struct FileStep {
    /// Placeholders allowed; relative paths are relative to the sandbox.
    pub path: String,
    pub op: FileOp,
}

#[derive(Clone, Debug)]
pub enum FileOp {
    Remove,
    /// Rename a fresh file (with `contents`) over the path, as `mv` or an editor would.
    Replace {
        contents: Vec<u8>,
    },
    Symlink {
        target: String,
    },
    Chmod {
        mode: u32,
    },
    Write {
        contents: Vec<u8>,
    },
    Mkdir,
    Copy {
        to: String,
    },
    /// Remember the bytes and mtime under a label.
    Remember {
        label: String,
    },
    /// The bytes and mtime equal what `Remember` saw under the label.
    Unchanged {
        label: String,
    },
    /// The path exists; with `min_size`, as a file of at least that many bytes.
    Exists {
        min_size: Option<u64>,
    },
    Absent,
    /// Overwrite `len` bytes at `offset` in place with deterministic pseudo-random bytes.
    Corrupt {
        offset: Offset,
        len: u64,
    },
    /// Move the file aside, as `mv` would.
    Rename {
        to: String,
    },
    /// Create the file and write zeros until the filesystem is full (a tmpfs home only).
    Fill,
    /// The permission bits are exactly `mode`.
    Mode {
        mode: u32,
    },
}

/// Where `op = "corrupt"` writes: a byte offset, or a percentage of the file's size.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Offset {
    Bytes(u64),
    Percent(f64),
}

#[derive(Clone, Debug)]
pub struct Enqueue {
    /// `noop`, `sleep`, `fail`, `exec`, `crash` or `probe` (an `exec` of the effects probe).
    pub kind: String,
    pub args: Vec<String>,
    pub probe: ProbeSpec,
    pub lane: Option<String>,
    pub max_attempts: Option<u32>,
    pub key: Option<String>,
    pub timeout: Option<String>,
    /// How many jobs; with `parallel = true` each from its own concurrent process.
    pub count: u32,
    pub parallel: bool,
    /// Expected exit code of each enqueue (default 0; non-zero ones are not acknowledged).
    pub code: i32,
    /// `--run-after`, passed as-is (not scaled).
    pub run_after: Option<String>,
    /// All `count` jobs through one `homerd enqueue --from FILE` (a JSON-lines file the
    /// harness writes into the sandbox): one process, one transaction.
    pub from_file: bool,
    /// The enqueue process cuts power before its N-th recorded op; it must die there,
    /// acknowledging nothing (needs the `power_loss` header; one process: no `parallel`,
    /// `count = 1` unless `from_file`, no `code`).
    pub arm: Option<u64>,
}

/// Options of the effects probe (see `probe.rs`).
#[derive(Clone, Debug, Default)]
pub struct ProbeSpec {
    /// How long the probe works before it records `end` (default 0).
    pub sleep: Duration,
    /// Fork a grandchild in the same group that outlives the probe by this long.
    pub grandchild: Option<Duration>,
    /// The grandchild calls setsid() to escape the group (PITFALLS 4).
    pub grandchild_setsid: bool,
    pub exit_code: i32,
    pub ignore_term: bool,
}

#[derive(Clone, Debug)]
pub struct Cli {
    /// Arguments after `homerd` (placeholders allowed).
    pub args: Vec<String>,
    pub code: i32,
    pub stdout: Vec<Pattern>,
    pub stderr: Vec<Pattern>,
    pub unprivileged: bool,
    pub env: Vec<(String, String)>,
    pub no_settings: bool,
    pub timeout: Duration,
    /// The process cuts power before its N-th recorded op and must die there (no `code`).
    pub arm: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct Sql {
    pub query: String,
    pub rows: Vec<Vec<Scalar>>,
    /// Run on a read-write connection (to prepare a fixture, e.g. a "newer" database).
    pub write: bool,
    /// Another database file than the home's (placeholders allowed).
    pub database: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Scalar {
    Null,
    Int(i64),
    Float(f64),
    Text(String),
    Bool(bool),
}

#[derive(Clone, Debug, Default)]
pub struct Check {
    /// Non-terminal statuses an acknowledged job may still be in (default none).
    pub allow: Vec<String>,
    /// Require no `running` row (a recovery ran after the last daemon stopped). Default true
    /// unless `allow` contains `running`.
    pub none_running: bool,
}

#[derive(Clone, Debug)]
pub struct ExpectEvents {
    pub target: String,
    pub event: String,
    pub fields: Vec<(String, Scalar)>,
    pub min: u32,
    pub max: Option<u32>,
}

#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Snapshot name (file `scenarios/snapshots/<name>.snap`).
    pub name: String,
    pub parts: Vec<SnapshotPart>,
}

#[derive(Clone, Debug)]
pub enum SnapshotPart {
    /// The lock file's diagnostics, volatile values redacted.
    LockFile,
    /// `SELECT name, checksum FROM _migrations`.
    Migrations,
    /// `PRAGMA table_info(<table>)`.
    TableInfo(String),
    /// The human messages of a process's events (sorted unless `ordered`), redacted.
    Messages { target: String, events: Vec<String> },
    /// Output of a `homerd` subcommand, redacted.
    Command(Vec<String>),
    /// Rows of a query.
    Query(String),
}

/// A malformed scenario file: where, which key, and what was expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    /// The offending key path, e.g. `step[3].timeout`, `settings.stale_threshold` or
    /// `step[2].rows[1][3]` (indices 1-based); for a TOML syntax error, the key on the
    /// offending line as far as it can be told, else `(syntax)`.
    pub key: String,
    /// What was expected and what was found.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: `{}`: {}", self.file.display(), self.line, self.col, self.key, self.message)
    }
}

impl std::error::Error for ParseError {}

/// Parse and validate one scenario file.
pub fn parse_file(path: &Path) -> Result<Scenario, ParseError> {
    let text = std::fs::read_to_string(path).map_err(|e| ParseError {
        file: path.to_path_buf(),
        line: 0,
        col: 0,
        key: String::new(),
        message: format!("cannot read the file: {e}"),
    })?;
    parse_str(path, &text)
}

/// Parse scenario text; `path` names it in errors and gives the default name.
pub fn parse_str(path: &Path, text: &str) -> Result<Scenario, ParseError> {
    let src = Source::new(path, text);
    let root: Node = toml::from_str(text).map_err(|e| src.toml_error(&e))?;
    let mut cx = Cx { src, requires: Vec::new(), home_size: None, power_loss: false, labels: Vec::new() };
    cx.scenario(&root)
}

/// Parse a duration: `250ms`, `5s`, `2m`, `1h`, `1.5s`. Used for settings scaling too.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    Some(Duration::from_secs_f64(secs))
}

// ---------------------------------------------------------------------------------------
// The parser: TOML text -> a tree of values that keep their byte spans -> validated model.
//
// `toml` hands out spans through `toml::Spanned`, but `Spanned` cannot wrap a table that
// has no span of its own (one made implicit by a dotted key). So the tree below speaks the
// same serde protocol itself, with names learned from `toml::Spanned` at run time, and
// takes whatever the deserializer gives: a spanned value or a bare one.
// ---------------------------------------------------------------------------------------

type Span = Option<Range<usize>>;
type Res<T> = Result<T, ParseError>;

/// A TOML value and where it is in the text (`None` for implicit tables).
struct Node {
    span: Span,
    val: Val,
}

enum Val {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Datetime(String),
    Array(Vec<Node>),
    /// Entries in the order the deserializer gives them (see [`Tbl::sorted`]).
    Table(Vec<Entry>),
}

struct Entry {
    key: String,
    span: Span,
    node: Node,
}

/// The private serde names `toml` uses for spans and date-times.
struct Protocol {
    spanned_name: &'static str,
    spanned_fields: &'static [&'static str],
    start: &'static str,
    end: &'static str,
    value: &'static str,
    datetime_field: &'static str,
}

fn protocol() -> &'static Protocol {
    static PROTOCOL: OnceLock<Protocol> = OnceLock::new();
    PROTOCOL.get_or_init(|| {
        let (spanned_name, spanned_fields) = Recorder::record(|r| toml::Spanned::<String>::deserialize(r).map(drop));
        let (_, datetime_fields) = Recorder::record(|r| toml::value::Datetime::deserialize(r).map(drop));
        let field = |fields: &'static [&'static str], i: usize| fields.get(i).copied().unwrap_or("");
        Protocol {
            spanned_name,
            spanned_fields,
            start: field(spanned_fields, 0),
            end: field(spanned_fields, 1),
            value: field(spanned_fields, 2),
            datetime_field: field(datetime_fields, 0),
        }
    })
}

/// A deserializer that only records the struct name and fields a type asks for.
struct Recorder;

#[derive(Debug)]
struct Recorded(Option<(&'static str, &'static [&'static str])>);

impl fmt::Display for Recorded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("recorded")
    }
}

impl std::error::Error for Recorded {}

impl de::Error for Recorded {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Recorded(None)
    }
}

impl Recorder {
    fn record(f: impl FnOnce(Recorder) -> Result<(), Recorded>) -> (&'static str, &'static [&'static str]) {
        match f(Recorder) {
            Err(Recorded(Some(found))) => found,
            _ => ("", &[]),
        }
    }
}

impl<'de> Deserializer<'de> for Recorder {
    type Error = Recorded;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Recorded> {
        Err(Recorded(None))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Recorded> {
        Err(Recorded(Some((name, fields))))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        let p = protocol();
        d.deserialize_struct(p.spanned_name, p.spanned_fields, NodeVisitor)
    }
}

/// Deserializes the value inside a span wrapper (asking for a span again would loop).
struct BareNode;

impl<'de> DeserializeSeed<'de> for BareNode {
    type Value = Node;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

fn bare(val: Val) -> Node {
    Node { span: None, val }
}

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(bare(Val::Bool(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(bare(Val::Int(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        i64::try_from(v).map(|v| bare(Val::Int(v))).map_err(|_| E::custom("integer out of range"))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Ok(bare(Val::Float(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(bare(Val::Str(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(bare(Val::Str(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(bare(Val::Array(items)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let p = protocol();
        let Some(first) = map.next_key_seed(KeySeed)? else {
            return Ok(bare(Val::Table(Vec::new())));
        };
        if !p.start.is_empty() && first.name == p.start {
            // A span wrapper: start, end, then the value itself.
            let start: usize = map.next_value()?;
            let mut end = start;
            let mut inner = None;
            while let Some(key) = map.next_key::<String>()? {
                if key == p.end {
                    end = map.next_value()?;
                } else if key == p.value {
                    inner = Some(map.next_value_seed(BareNode)?);
                } else {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
            let mut node = inner.ok_or_else(|| de::Error::custom("a span without a value"))?;
            node.span = Some(start..end);
            return Ok(node);
        }
        if !p.datetime_field.is_empty() && first.name == p.datetime_field {
            let text: String = map.next_value()?;
            return Ok(bare(Val::Datetime(text)));
        }
        let mut entries = vec![Entry { key: first.name, span: first.span, node: map.next_value()? }];
        while let Some(key) = map.next_key_seed(KeySeed)? {
            entries.push(Entry { key: key.name, span: key.span, node: map.next_value()? });
        }
        Ok(bare(Val::Table(entries)))
    }
}

struct Key {
    name: String,
    span: Span,
}

/// A table key, with its span when the deserializer has one.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        let p = protocol();
        d.deserialize_struct(p.spanned_name, p.spanned_fields, KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a table key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
        Ok(Key { name: v.to_owned(), span: None })
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Key, A::Error> {
        let p = protocol();
        let (mut start, mut end, mut name) = (None, None, None);
        while let Some(key) = map.next_key::<String>()? {
            if key == p.start {
                start = Some(map.next_value::<usize>()?);
            } else if key == p.end {
                end = Some(map.next_value::<usize>()?);
            } else if key == p.value {
                name = Some(map.next_value::<String>()?);
            } else {
                map.next_value::<de::IgnoredAny>()?;
            }
        }
        let name = name.ok_or_else(|| de::Error::custom("a span without a key"))?;
        let span = match (start, end) {
            (Some(s), Some(e)) => Some(s..e),
            _ => None,
        };
        Ok(Key { name, span })
    }
}

/// The text being parsed, for turning byte offsets into 1-based line:col.
struct Source<'a> {
    file: &'a Path,
    text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> Source<'a> {
    fn new(file: &'a Path, text: &'a str) -> Self {
        let line_starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        Source { file, text, line_starts }
    }

    fn line_col(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let start = self.line_starts[line - 1];
        (line, self.text[start..offset].chars().count() + 1)
    }

    /// An error at `span` (1:1 when there is none, e.g. a missing top-level key).
    fn error(&self, span: &Span, key: impl Into<String>, message: impl Into<String>) -> ParseError {
        let (line, col) = span.as_ref().map_or((1, 1), |s| self.line_col(s.start));
        ParseError { file: self.file.to_path_buf(), line, col, key: key.into(), message: message.into() }
    }

    fn toml_error(&self, e: &toml::de::Error) -> ParseError {
        let span = e.span();
        let offset = span.as_ref().map_or(0, |s| s.start);
        let message = e.message().trim().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>();
        self.error(&span, self.key_near(offset), format!("invalid TOML: {}", message.join("; ")))
    }

    /// Best-effort key path for a syntax error: the table header above `offset` and the
    /// key on its line. `(syntax)` when neither is known.
    fn key_near(&self, offset: usize) -> String {
        let (mut table, mut steps) = (String::new(), 0usize);
        for (i, &start) in self.line_starts.iter().enumerate() {
            let end = self.line_starts.get(i + 1).copied().unwrap_or(self.text.len());
            let line = self.text[start..end].trim();
            let header = line.starts_with('[');
            if header {
                let name = line.trim_start_matches('[');
                let name = name.split(']').next().unwrap_or("").trim().to_owned();
                if line.starts_with("[[") && name == "step" {
                    steps += 1;
                    table = format!("step[{steps}]");
                } else {
                    table = name;
                }
            }
            if offset < end || i + 1 == self.line_starts.len() {
                let key = if header { None } else { line.split_once('=').map(|(k, _)| k.trim()) };
                let bare = |k: &&str| {
                    !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
                };
                return match (key.filter(bare), table.is_empty()) {
                    (Some(k), true) => k.to_owned(),
                    (Some(k), false) => format!("{table}.{k}"),
                    (None, false) => table,
                    (None, true) => String::from("(syntax)"),
                };
            }
        }
        String::from("(syntax)")
    }
}

/// A value with the key path that reached it (`step[3].timeout`, 1-based indices).
struct Field<'a> {
    path: String,
    key_span: Span,
    node: &'a Node,
}

impl<'a> Field<'a> {
    /// Where to point at the value: its own span, else its key's.
    fn span(&self) -> Span {
        self.node.span.clone().or_else(|| self.key_span.clone())
    }

    fn item(&self, index: usize, node: &'a Node) -> Field<'a> {
        Field {
            path: format!("{}[{}]", self.path, index + 1),
            key_span: node.span.clone().or_else(|| self.span()),
            node,
        }
    }

    fn str(&self) -> Option<&'a str> {
        match &self.node.val {
            Val::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// A table with its key path.
struct Tbl<'a> {
    path: String,
    entries: &'a [Entry],
}

impl<'a> Tbl<'a> {
    fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn field(&self, e: &'a Entry) -> Field<'a> {
        Field { path: self.key_path(&e.key), key_span: e.span.clone(), node: &e.node }
    }

    fn get(&self, key: &str) -> Option<Field<'a>> {
        self.entries.iter().find(|e| e.key == key).map(|e| self.field(e))
    }

    /// Entries in file order.
    fn sorted(&self) -> Vec<&'a Entry> {
        let mut entries: Vec<&Entry> = self.entries.iter().collect();
        entries.sort_by_key(|e| e.span.as_ref().or(e.node.span.as_ref()).map_or(usize::MAX, |s| s.start));
        entries
    }
}

const TOP_KEYS: &[&str] = &[
    "description",
    "covers",
    "mutant",
    "mutant_none",
    "requires",
    "timeout",
    "home_size",
    "power_loss",
    "settings",
    "step",
];
const VERBS: &[&str] = &[
    "start",
    "wait",
    "exit",
    "signal",
    "file",
    "enqueue",
    "cli",
    "sql",
    "hold_write",
    "clock",
    "check",
    "expect_events",
    "snapshot",
    "power_loss",
];
const START_OPTS: &[&str] =
    &["count", "command", "args", "env", "failpoints", "lock_file", "unprivileged", "no_settings", "nofile", "arm"];
const WAIT_KINDS: &[&str] = &["event", "exit", "sql", "effects", "duration"];
const WAIT_OPTS: &[&str] = &[
    "timeout",
    "target",
    "event",
    "fields",
    "count",
    "query",
    "rows",
    "job",
    "starts",
    "ends",
    "not_before",
    "duration",
];
const EXIT_OPTS: &[&str] = &["count", "code", "stdout", "stderr", "timeout"];
const SIGNAL_OPTS: &[&str] = &["sig", "outside_write"];
const SIGNALS: &[(&str, Sig)] = &[
    ("KILL", Sig::Kill),
    ("TERM", Sig::Term),
    ("INT", Sig::Int),
    ("STOP", Sig::Stop),
    ("CONT", Sig::Cont),
    ("HUP", Sig::Hup),
];
const FILE_OPS: &[&str] = &[
    "remove",
    "replace",
    "symlink",
    "chmod",
    "write",
    "mkdir",
    "copy",
    "remember",
    "unchanged",
    "exists",
    "absent",
    "corrupt",
    "rename",
    "fill",
    "mode",
];
const FILE_OPTS: &[&str] = &["op", "contents", "target", "mode", "hex", "to", "label", "offset", "len", "min_size"];
const ENQUEUE_KINDS: &[&str] = &["noop", "sleep", "fail", "exec", "crash", "probe"];
const ENQUEUE_OPTS: &[&str] = &[
    "args",
    "lane",
    "max_attempts",
    "key",
    "timeout",
    "count",
    "parallel",
    "code",
    "run_after",
    "from_file",
    "sleep",
    "grandchild",
    "grandchild_setsid",
    "exit_code",
    "ignore_term",
    "arm",
];
const PROBE_OPTS: &[&str] = &["sleep", "grandchild", "grandchild_setsid", "exit_code", "ignore_term"];
const CLI_OPTS: &[&str] = &["code", "stdout", "stderr", "unprivileged", "env", "no_settings", "timeout", "arm"];
const SQL_OPTS: &[&str] = &["rows", "write", "database"];
const CHECK_OPTS: &[&str] = &["allow", "none_running"];
const CHECK_ALLOW: &[&str] = &["pending", "running"];
const EXPECT_OPTS: &[&str] = &["target", "fields", "min", "max"];
const SNAPSHOT_OPTS: &[&str] = &["parts"];
const PART_KINDS: &[&str] = &["lock_file", "migrations", "table_info", "messages", "command", "query"];
const POWER_LOSS_OPTS: &[&str] = &["timeout"];

/// Every option of every verb: a step key outside this and [`VERBS`] is an unknown verb.
fn is_any_option(key: &str) -> bool {
    [START_OPTS, WAIT_OPTS, EXIT_OPTS, SIGNAL_OPTS, FILE_OPTS, ENQUEUE_OPTS, CLI_OPTS, SQL_OPTS, CHECK_OPTS]
        .iter()
        .chain([EXPECT_OPTS, SNAPSHOT_OPTS, POWER_LOSS_OPTS].iter())
        .any(|opts| opts.contains(&key))
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let here = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(here + 1);
            prev = here;
        }
    }
    row[b.len()]
}

fn did_you_mean(key: &str, candidates: &[&str]) -> String {
    candidates
        .iter()
        .map(|c| (edit_distance(key, c), c))
        .filter(|(d, _)| *d <= 2 && *d < key.chars().count())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| format!(" (did you mean `{c}`?)"))
        .unwrap_or_default()
}

fn one_of(candidates: &[&str]) -> String {
    candidates.iter().map(|c| format!("{c:?}")).collect::<Vec<_>>().join(", ")
}

/// What a value is, for "expected X, found Y".
fn describe(node: &Node) -> String {
    match &node.val {
        Val::Str(s) if s.chars().count() > 60 => format!("{:?}…", s.chars().take(60).collect::<String>()),
        Val::Str(s) => format!("{s:?}"),
        Val::Int(i) => format!("the integer {i}"),
        Val::Float(x) => format!("the float {x}"),
        Val::Bool(b) => format!("the boolean {b}"),
        Val::Datetime(d) => format!("the date-time {d}"),
        Val::Array(items) if items.is_empty() => String::from("an empty array"),
        Val::Array(_) => String::from("an array"),
        Val::Table(_) => String::from("a table"),
    }
}

/// Parse a signed duration (`+90s`, `-2h`, `30m`) into milliseconds.
fn parse_signed_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    let (negative, rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest.starts_with(['+', '-']) || rest.trim() != rest {
        return None;
    }
    let ms = i64::try_from(parse_duration(rest)?.as_millis()).ok()?;
    Some(if negative { -ms } else { ms })
}

/// Parse a signal name: `KILL`, `sigterm`, `SIGINT`, ...
fn parse_sig(s: &str) -> Option<Sig> {
    let upper = s.trim().to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    SIGNALS.iter().find(|(n, _)| *n == name).map(|(_, sig)| *sig)
}

/// Decode hex bytes (`"00ff 1a"`; ASCII whitespace is ignored).
fn decode_hex(s: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<char> = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if let Some(bad) = digits.iter().find(|c| !c.is_ascii_hexdigit()) {
        return Err(format!("`{bad}` is not a hex digit"));
    }
    let pairs = digits.chunks_exact(2);
    if !pairs.remainder().is_empty() {
        return Err(format!("an odd number of hex digits ({})", digits.len()));
    }
    Ok(pairs
        .map(|pair| {
            let hi = pair[0].to_digit(16).unwrap_or(0);
            let lo = pair[1].to_digit(16).unwrap_or(0);
            u8::try_from(hi * 16 + lo).unwrap_or(0)
        })
        .collect())
}

/// Parse a size: `4096`, `512k`, `2m`, `1g` (case-insensitive; `KiB`, `MiB`, `GiB` too).
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim_start() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Parse a percentage `"50%"` or `"12.5%"`, 0 to 100.
fn parse_percent(s: &str) -> Option<f64> {
    let p: f64 = s.trim().strip_suffix('%')?.trim_end().parse().ok()?;
    (p.is_finite() && (0.0..=100.0).contains(&p)).then_some(p)
}

/// Parse an output pattern: optional `!` (negated), then optional `re:` (regex).
fn parse_pattern(s: &str) -> Pattern {
    let (negated, rest) = match s.strip_prefix('!') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (regex, text) = match rest.strip_prefix("re:") {
        Some(text) => (true, text),
        None => (false, rest),
    };
    Pattern { negated, regex, text: text.to_owned() }
}

/// Validation state: the source (for positions) and what earlier parts declared.
struct Cx<'a> {
    src: Source<'a>,
    requires: Vec<Requirement>,
    /// The header's `home_size` (`op = "fill"` is allowed only on a tmpfs home).
    home_size: Option<u64>,
    /// The header's `power_loss` (the `power_loss` step and `arm` need it).
    power_loss: bool,
    /// Labels of `op = "remember"` steps so far.
    labels: Vec<String>,
}

impl Cx<'_> {
    fn err(&self, span: &Span, key: impl Into<String>, message: impl Into<String>) -> ParseError {
        self.src.error(span, key, message)
    }

    fn wrong(&self, f: &Field, expected: &str) -> ParseError {
        self.err(&f.span(), f.path.clone(), format!("expected {expected}, found {}", describe(f.node)))
    }

    /// Reject keys of `t` outside `allowed`.
    fn only(&self, t: &Tbl, allowed: &[&str], context: &str) -> Res<()> {
        for e in t.sorted() {
            if !allowed.contains(&e.key.as_str()) {
                return Err(self.err(
                    &e.span,
                    t.key_path(&e.key),
                    format!(
                        "unknown option `{}` for {context}; expected one of: {}{}",
                        e.key,
                        allowed.join(", "),
                        did_you_mean(&e.key, allowed)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// A required key of a step: missing means an error at the verb (`anchor`).
    fn need<'n>(&self, t: &Tbl<'n>, key: &str, anchor: &Span, message: String) -> Res<Field<'n>> {
        t.get(key).ok_or_else(|| self.err(anchor, t.key_path(key), message))
    }

    fn table<'n>(&self, f: &Field<'n>, expected: &str) -> Res<Tbl<'n>> {
        match &f.node.val {
            Val::Table(entries) => Ok(Tbl { path: f.path.clone(), entries }),
            _ => Err(self.wrong(f, expected)),
        }
    }

    fn array<'n>(&self, f: &Field<'n>, expected: &str) -> Res<&'n [Node]> {
        match &f.node.val {
            Val::Array(items) => Ok(items),
            _ => Err(self.wrong(f, expected)),
        }
    }

    fn string(&self, f: &Field) -> Res<String> {
        f.str().map(str::to_owned).ok_or_else(|| self.wrong(f, "a string"))
    }

    fn text(&self, f: &Field) -> Res<String> {
        match f.str() {
            Some(s) if !s.trim().is_empty() => Ok(s.to_owned()),
            _ => Err(self.wrong(f, "a non-empty string")),
        }
    }

    /// A process name for `start`: non-empty, without the `*` that targets use as a wildcard.
    fn name(&self, f: &Field) -> Res<String> {
        match f.str() {
            Some(s) if !s.is_empty() && !s.contains(['*', ' ']) => Ok(s.to_owned()),
            _ => Err(self.wrong(f, "a process name (non-empty, no spaces or `*`)")),
        }
    }

    fn int(&self, f: &Field, min: i64, max: i64, expected: &str) -> Res<i64> {
        match &f.node.val {
            Val::Int(i) if (min..=max).contains(i) => Ok(*i),
            _ => Err(self.wrong(f, expected)),
        }
    }

    fn count(&self, f: &Field, min: u32) -> Res<u32> {
        let n = self.int(f, min.into(), u32::MAX.into(), &format!("an integer of at least {min}"))?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    fn code(&self, f: &Field) -> Res<i32> {
        let n = self.int(f, i32::MIN.into(), i32::MAX.into(), "an integer exit code")?;
        Ok(i32::try_from(n).unwrap_or_default())
    }

    fn boolean(&self, f: &Field) -> Res<bool> {
        match f.node.val {
            Val::Bool(b) => Ok(b),
            _ => Err(self.wrong(f, "a boolean (true or false)")),
        }
    }

    fn strings(&self, f: &Field) -> Res<Vec<String>> {
        let items = self.array(f, "an array of strings")?;
        items.iter().enumerate().map(|(i, node)| self.string(&f.item(i, node))).collect()
    }

    fn nonempty_strings(&self, f: &Field) -> Res<Vec<String>> {
        let items = self.strings(f)?;
        if items.is_empty() {
            return Err(self.wrong(f, "a non-empty array of strings"));
        }
        Ok(items)
    }

    fn duration(&self, f: &Field) -> Res<Duration> {
        f.str().and_then(parse_duration).ok_or_else(|| self.wrong(f, "a duration like \"250ms\" or \"5s\""))
    }

    fn signed_ms(&self, f: &Field) -> Res<i64> {
        f.str().and_then(parse_signed_ms).ok_or_else(|| self.wrong(f, "a signed duration like \"+90s\" or \"-2h\""))
    }

    /// An inline table of strings (`env`), in file order.
    fn str_map(&self, f: &Field) -> Res<Vec<(String, String)>> {
        let t = self.table(f, "a table of strings like { NAME = \"value\" }")?;
        t.sorted().into_iter().map(|e| Ok((e.key.clone(), self.string(&t.field(e))?))).collect()
    }

    /// A string, integer, float, boolean, or `{ null = true }` for SQL NULL.
    fn scalar(&self, f: &Field) -> Res<Scalar> {
        const EXPECTED: &str = "a string, integer, float, boolean or { null = true }";
        Ok(match &f.node.val {
            Val::Str(s) => Scalar::Text(s.clone()),
            Val::Int(i) => Scalar::Int(*i),
            Val::Float(x) => Scalar::Float(*x),
            Val::Bool(b) => Scalar::Bool(*b),
            Val::Table(entries) => match entries.as_slice() {
                [Entry { key, node: Node { val: Val::Bool(true), .. }, .. }] if key == "null" => Scalar::Null,
                _ => return Err(self.wrong(f, EXPECTED)),
            },
            Val::Array(_) | Val::Datetime(_) => return Err(self.wrong(f, EXPECTED)),
        })
    }

    /// `fields = { name = scalar, ... }`, in file order.
    fn scalar_map(&self, f: &Field) -> Res<Vec<(String, Scalar)>> {
        let t = self.table(f, "a table of field values like { name = \"a\" }")?;
        t.sorted().into_iter().map(|e| Ok((e.key.clone(), self.scalar(&t.field(e))?))).collect()
    }

    /// `rows = [[1, "a"], [2, { null = true }]]`.
    fn rows(&self, f: &Field) -> Res<Vec<Vec<Scalar>>> {
        let rows = self.array(f, "an array of rows like [[1, \"a\"]]")?;
        rows.iter()
            .enumerate()
            .map(|(i, row)| {
                let row = f.item(i, row);
                let cells = self.array(&row, "a row (an array of values)")?;
                cells.iter().enumerate().map(|(j, cell)| self.scalar(&row.item(j, cell))).collect()
            })
            .collect()
    }

    /// `stdout = ["text", "!text", "re:regex", "!re:regex"]`.
    fn patterns(&self, f: &Field) -> Res<Vec<Pattern>> {
        let items = self.array(f, "an array of patterns like [\"text\", \"!re:error|panic\"]")?;
        let mut patterns = Vec::with_capacity(items.len());
        for (i, node) in items.iter().enumerate() {
            let item = f.item(i, node);
            let s = self.string(&item)?;
            let pattern = parse_pattern(&s);
            if pattern.text.is_empty() {
                return Err(self.wrong(&item, "a pattern with text after `!` / `re:`"));
            }
            if pattern.regex {
                if let Err(e) = regex::Regex::new(&pattern.text) {
                    let detail =
                        e.to_string().lines().last().unwrap_or("").trim().trim_start_matches("error: ").to_owned();
                    return Err(self.err(
                        &item.span(),
                        item.path.clone(),
                        format!("expected a valid regular expression after `re:`, found {s:?} ({detail})"),
                    ));
                }
            }
            patterns.push(pattern);
        }
        Ok(patterns)
    }

    fn opt<'n, T>(&self, t: &Tbl<'n>, key: &str, parse: impl FnOnce(&Self, &Field<'n>) -> Res<T>) -> Res<Option<T>> {
        t.get(key).map(|f| parse(self, &f)).transpose()
    }

    fn unprivileged(&self, t: &Tbl) -> Res<bool> {
        let Some(f) = t.get("unprivileged") else { return Ok(false) };
        let on = self.boolean(&f)?;
        if on && !self.requires.contains(&Requirement::Unprivileged) {
            return Err(self.err(
                &f.key_span,
                f.path.clone(),
                "`unprivileged = true` needs `requires = [\"unprivileged\"]` in the scenario header",
            ));
        }
        Ok(on)
    }

    fn scenario(&mut self, root: &Node) -> Res<Scenario> {
        let Val::Table(entries) = &root.val else {
            return Err(self.err(&root.span, "", "expected a TOML document"));
        };
        let top = Tbl { path: String::new(), entries };
        for e in top.sorted() {
            if e.key == "power_loss" && !matches!(e.node.val, Val::Bool(_)) {
                return Err(self.err(
                    &e.node.span.clone().or_else(|| e.span.clone()),
                    e.key.clone(),
                    format!(
                        "expected a boolean (`power_loss = true` in the header records every homerd's writes; \
                         the step `power_loss = \"cut\"` goes under a [[step]] header), found {}",
                        describe(&e.node)
                    ),
                ));
            }
            if !TOP_KEYS.contains(&e.key.as_str()) {
                let hint = if VERBS.contains(&e.key.as_str()) || is_any_option(&e.key) {
                    String::from(" (step keys go under a [[step]] header)")
                } else {
                    did_you_mean(&e.key, TOP_KEYS)
                };
                return Err(self.err(
                    &e.span,
                    e.key.clone(),
                    format!("unknown top-level key `{}`; expected one of: {}{hint}", e.key, TOP_KEYS.join(", ")),
                ));
            }
        }
        let missing =
            |key: &str, what: &str| self.src.error(&None, key, format!("missing required key `{key}` ({what})"));

        let description = top.get("description").ok_or_else(|| missing("description", "what the scenario shows"))?;
        let description = self.text(&description)?;

        let covers = top.get("covers").ok_or_else(|| missing("covers", "e.g. [\"PITFALLS 1\"]"))?;
        let covers = self.nonempty_strings(&covers)?;

        let mutant = match (top.get("mutant"), top.get("mutant_none")) {
            (Some(a), Some(b)) => {
                let later =
                    if a.key_span.as_ref().map(|s| s.start) > b.key_span.as_ref().map(|s| s.start) { a } else { b };
                return Err(self.err(
                    &later.key_span,
                    later.path.clone(),
                    "give exactly one of `mutant` and `mutant_none`, not both",
                ));
            }
            (Some(f), None) => MutantExpectation::Catches(match f.str() {
                Some(_) => vec![self.text(&f)?],
                None => {
                    let items = self.array(&f, "a mutant name or an array of mutant names")?;
                    if items.is_empty() {
                        return Err(self.wrong(&f, "a mutant name or a non-empty array of mutant names"));
                    }
                    items.iter().enumerate().map(|(i, node)| self.text(&f.item(i, node))).collect::<Res<_>>()?
                }
            }),
            (None, Some(f)) => MutantExpectation::None(self.text(&f)?),
            (None, None) => {
                return Err(self.err(
                    &None,
                    "mutant",
                    "missing `mutant` (the mutant this scenario must fail on) or `mutant_none` (why none applies)",
                ))
            }
        };

        let mut requires = Vec::new();
        if let Some(f) = top.get("requires") {
            for (i, node) in self.array(&f, "an array like [\"linux\"]")?.iter().enumerate() {
                let item = f.item(i, node);
                let req = match item.str() {
                    Some("linux") => Requirement::Linux,
                    Some("unprivileged") => Requirement::Unprivileged,
                    Some("tmpfs") => Requirement::Tmpfs,
                    _ => return Err(self.wrong(&item, "\"linux\", \"unprivileged\" or \"tmpfs\"")),
                };
                if !requires.contains(&req) {
                    requires.push(req);
                }
            }
        }
        self.requires.clone_from(&requires);

        let timeout = self.opt(&top, "timeout", Self::duration)?.unwrap_or(Duration::from_secs(60));

        let home_size = match top.get("home_size") {
            Some(f) => {
                let size = self.home_size(&f)?;
                if !requires.contains(&Requirement::Tmpfs) {
                    return Err(self.err(
                        &f.key_span,
                        f.path.clone(),
                        "`home_size` mounts a tmpfs: it needs `requires = [\"tmpfs\"]` in the header",
                    ));
                }
                Some(size)
            }
            None => None,
        };
        self.home_size = home_size;

        let power_loss = self.opt(&top, "power_loss", Self::boolean)?.unwrap_or(false);
        self.power_loss = power_loss;

        let mut settings = Vec::new();
        if let Some(f) = top.get("settings") {
            self.settings(&f, "", &mut settings)?;
        }
        settings.sort_by_key(|(at, _, _)| *at);
        let settings = settings.into_iter().map(|(_, k, v)| (k, v)).collect();

        let steps_field = top.get("step").ok_or_else(|| missing("step", "at least one [[step]] table"))?;
        let items = self.array(&steps_field, "[[step]] tables")?;
        if items.is_empty() {
            return Err(self.wrong(&steps_field, "at least one [[step]] table"));
        }
        let mut steps = Vec::with_capacity(items.len());
        for (i, node) in items.iter().enumerate() {
            steps.push(self.step(i + 1, node, &steps_field)?);
        }

        Ok(Scenario {
            path: self.src.file.to_path_buf(),
            name: self.src.file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
            description,
            covers,
            mutant,
            requires,
            timeout,
            home_size,
            power_loss,
            settings,
            steps,
        })
    }

    /// `[settings]`, flattened: `[settings.lanes.io] concurrency = 2` is `lanes.io.concurrency`.
    fn settings(&self, f: &Field, prefix: &str, out: &mut Vec<(usize, String, String)>) -> Res<()> {
        let t = self.table(f, "a [settings] table")?;
        for e in t.entries {
            let field = t.field(e);
            if e.key.is_empty() || e.key.contains(['=', ' ', '\t']) {
                return Err(self.err(&e.span, field.path, "expected a setting name without spaces or `=`"));
            }
            let key = if prefix.is_empty() { e.key.clone() } else { format!("{prefix}.{}", e.key) };
            let value = match &e.node.val {
                Val::Str(s) => s.clone(),
                Val::Int(i) => i.to_string(),
                Val::Bool(b) => b.to_string(),
                Val::Table(_) => {
                    self.settings(&field, &key, out)?;
                    continue;
                }
                _ => return Err(self.wrong(&field, "a string, integer or boolean")),
            };
            out.push((e.span.as_ref().map_or(usize::MAX, |s| s.start), key, value));
        }
        Ok(())
    }

    fn step(&mut self, index: usize, node: &Node, parent: &Field) -> Res<StepAt> {
        let f = parent.item(index - 1, node);
        let t = self.table(&f, "a [[step]] table")?;
        let sorted = t.sorted();
        let first = sorted.first().and_then(|e| e.span.clone());
        let line = node.span.clone().or(first).map_or(1, |s| self.src.line_col(s.start).0);
        let at = node.span.clone().or_else(|| f.span());

        let verbs: Vec<&Entry> = sorted.iter().copied().filter(|e| VERBS.contains(&e.key.as_str())).collect();
        let verb = match verbs.as_slice() {
            [verb] => *verb,
            [] => {
                if let Some(e) = sorted.iter().find(|e| !is_any_option(&e.key)) {
                    return Err(self.err(
                        &e.span,
                        t.key_path(&e.key),
                        format!(
                            "unknown step verb `{}`; expected one of: {}{}",
                            e.key,
                            VERBS.join(", "),
                            did_you_mean(&e.key, VERBS)
                        ),
                    ));
                }
                let found = if sorted.is_empty() {
                    String::from("an empty step")
                } else {
                    format!("only options ({})", sorted.iter().map(|e| e.key.as_str()).collect::<Vec<_>>().join(", "))
                };
                return Err(self.err(
                    &at,
                    f.path.clone(),
                    format!("expected a step verb (one of: {}), found {found}", VERBS.join(", ")),
                ));
            }
            [a, b, ..] => {
                return Err(self.err(
                    &b.span,
                    t.key_path(&b.key),
                    format!(
                        "a step has exactly one verb, found `{}` and `{}` (split them into two [[step]] tables)",
                        a.key, b.key
                    ),
                ));
            }
        };
        let v = t.field(verb);
        let step = match verb.key.as_str() {
            "start" => self.start(&t, &v)?,
            "wait" => self.wait(&t, &v)?,
            "exit" => self.exit(&t, &v)?,
            "signal" => self.signal(&t, &v)?,
            "file" => self.file(&t, &v)?,
            "enqueue" => self.enqueue(&t, &v)?,
            "cli" => self.cli(&t, &v)?,
            "sql" => self.sql(&t, &v)?,
            "hold_write" => {
                self.only(&t, &["hold_write"], "`hold_write`")?;
                Step::HoldWrite { duration: self.duration(&v)? }
            }
            "clock" => {
                self.only(&t, &["clock"], "`clock`")?;
                Step::Clock { step_ms: self.signed_ms(&v)? }
            }
            "check" => self.check(&t, &v)?,
            "expect_events" => self.expect_events(&t, &v)?,
            "power_loss" => self.power_loss(&t, &v)?,
            _ => self.snapshot(&t, &v)?,
        };
        Ok(StepAt { line, step })
    }

    fn start(&self, t: &Tbl, v: &Field) -> Res<Step> {
        self.only(t, &[&["start"], START_OPTS].concat(), "`start`")?;
        Ok(Step::Start(Start {
            name: self.name(v)?,
            count: self.opt(t, "count", |cx, f| cx.count(f, 1))?.unwrap_or(1),
            command: self.opt(t, "command", Self::nonempty_strings)?.unwrap_or_else(|| vec![String::from("run")]),
            args: self.opt(t, "args", Self::strings)?.unwrap_or_default(),
            env: self.opt(t, "env", Self::str_map)?.unwrap_or_default(),
            failpoints: self.opt(t, "failpoints", Self::string)?,
            lock_file: self.opt(t, "lock_file", Self::text)?,
            unprivileged: self.unprivileged(t)?,
            no_settings: self.opt(t, "no_settings", Self::boolean)?.unwrap_or(false),
            nofile: self.opt(t, "nofile", Self::nofile)?,
            arm: self.arm(t)?,
        }))
    }

    /// `arm = N`: cut power before the process's N-th recorded op (N >= 1); only in a
    /// scenario whose header records (`power_loss = true`).
    fn arm(&self, t: &Tbl) -> Res<Option<u64>> {
        let Some(f) = t.get("arm") else { return Ok(None) };
        let n = self.int(&f, 1, i64::MAX, "an op number of at least 1 (the N-th write, truncate or sync)")?;
        if !self.power_loss {
            return Err(self.err(
                &f.key_span,
                f.path.clone(),
                "`arm` cuts power at a recorded op: it needs `power_loss = true` in the scenario header",
            ));
        }
        Ok(Some(n as u64))
    }

    /// `power_loss = "cut"`: the only value; needs the header that makes processes record.
    fn power_loss(&self, t: &Tbl, v: &Field) -> Res<Step> {
        if v.str() != Some("cut") {
            return Err(self.wrong(v, "\"cut\" (the header takes `power_loss = true`)"));
        }
        self.only(t, &[&["power_loss"], POWER_LOSS_OPTS].concat(), "`power_loss`")?;
        if !self.power_loss {
            return Err(self.err(
                &v.key_span,
                v.path.clone(),
                "a `power_loss` step needs `power_loss = true` in the scenario header (so every homerd process records its writes)",
            ));
        }
        Ok(Step::PowerLoss(PowerLoss {
            timeout: self.opt(t, "timeout", Self::duration)?.unwrap_or(Duration::from_secs(10)),
        }))
    }

    fn wait(&self, t: &Tbl, v: &Field) -> Res<Step> {
        let kind = match v.str() {
            Some(k) if WAIT_KINDS.contains(&k) => k,
            _ => return Err(self.wrong(v, &format!("one of {}", one_of(WAIT_KINDS)))),
        };
        let opts: &[&str] = match kind {
            "event" => &["target", "event", "fields", "count"],
            "exit" => &["target"],
            "sql" => &["query", "rows"],
            "effects" => &["job", "starts", "ends", "not_before"],
            _ => &["duration"],
        };
        self.only(t, &[&["wait", "timeout"], opts].concat(), &format!("`wait = \"{kind}\"`"))?;
        let need = |key: &str, what: &str| {
            self.need(t, key, &v.key_span, format!("`wait = \"{kind}\"` needs `{key}` ({what})"))
        };
        let until = match kind {
            "event" => WaitFor::Event {
                target: self.opt(t, "target", Self::text)?.unwrap_or_else(|| String::from("*")),
                event: self.text(&need("event", "the event name, e.g. \"lock.acquired\"")?)?,
                fields: self.opt(t, "fields", Self::scalar_map)?.unwrap_or_default(),
                count: self.opt(t, "count", |cx, f| cx.count(f, 1))?.unwrap_or(1),
            },
            "exit" => WaitFor::Exited { target: self.text(&need("target", "the process name")?)? },
            "sql" => WaitFor::Sql {
                query: self.text(&need("query", "the SELECT to run")?)?,
                rows: self.rows(&need("rows", "the expected rows, e.g. [[1]]")?)?,
            },
            "effects" => {
                let job = self.opt(t, "job", |cx, f| cx.count(f, 1))?;
                let not_before = self.opt(t, "not_before", Self::duration)?;
                if let (Some(_), None, Some(f)) = (not_before, job, t.get("not_before")) {
                    return Err(self.err(
                        &f.key_span,
                        f.path.clone(),
                        "`not_before` needs `job` (whose enqueue it counts from)",
                    ));
                }
                WaitFor::Effects {
                    job,
                    starts: self.opt(t, "starts", |cx, f| cx.count(f, 0))?.unwrap_or(1),
                    ends: self.opt(t, "ends", |cx, f| cx.count(f, 0))?.unwrap_or(0),
                    not_before,
                }
            }
            _ => WaitFor::Elapsed { duration: self.duration(&need("duration", "how long, e.g. \"2s\"")?)? },
        };
        let timeout = self.opt(t, "timeout", Self::duration)?.unwrap_or(Duration::from_secs(10));
        Ok(Step::Wait(Wait { until, timeout }))
    }

    fn exit(&self, t: &Tbl, v: &Field) -> Res<Step> {
        self.only(t, &[&["exit"], EXIT_OPTS].concat(), "`exit`")?;
        Ok(Step::Exit(ExpectExit {
            target: self.text(v)?,
            count: self.opt(t, "count", |cx, f| cx.count(f, 1))?,
            code: self.opt(t, "code", Self::code)?.unwrap_or(0),
            stdout: self.opt(t, "stdout", Self::patterns)?.unwrap_or_default(),
            stderr: self.opt(t, "stderr", Self::patterns)?.unwrap_or_default(),
            timeout: self.opt(t, "timeout", Self::duration)?.unwrap_or(Duration::from_secs(10)),
        }))
    }

    fn signal(&self, t: &Tbl, v: &Field) -> Res<Step> {
        self.only(t, &[&["signal"], SIGNAL_OPTS].concat(), "`signal`")?;
        let target = self.text(v)?;
        let sig = self.need(t, "sig", &v.key_span, String::from("`signal` needs `sig` (e.g. \"KILL\" or \"TERM\")"))?;
        let signal = sig.str().and_then(parse_sig).ok_or_else(|| {
            self.wrong(&sig, "a signal name (KILL, TERM, INT, STOP, CONT or HUP, optionally with a SIG prefix)")
        })?;
        let outside_write = self.opt(t, "outside_write", Self::boolean)?.unwrap_or(false);
        if outside_write && signal != Sig::Stop {
            let f = t.get("outside_write").expect("present");
            return Err(self.wrong(&f, "`outside_write = true` only with sig = \"STOP\""));
        }
        Ok(Step::Signal { target, signal, outside_write })
    }

    fn file(&mut self, t: &Tbl, v: &Field) -> Res<Step> {
        let path = self.text(v)?;
        let op_field = self.need(t, "op", &v.key_span, format!("`file` needs `op` (one of {})", one_of(FILE_OPS)))?;
        let op = match op_field.str() {
            Some(op) if FILE_OPS.contains(&op) => op,
            _ => return Err(self.wrong(&op_field, &format!("one of {}", one_of(FILE_OPS)))),
        };
        let opts: &[&str] = match op {
            "replace" => &["contents"],
            "symlink" => &["target"],
            "chmod" => &["mode"],
            "write" => &["contents", "hex"],
            "copy" => &["to"],
            "remember" | "unchanged" => &["label"],
            "corrupt" => &["offset", "len"],
            "rename" => &["to"],
            "mode" => &["mode"],
            "exists" => &["min_size"],
            _ => &[],
        };
        self.only(t, &[&["file", "op"], opts].concat(), &format!("`file` with `op = \"{op}\"`"))?;
        let need = |key: &str, what: &str| {
            self.need(t, key, &op_field.key_span, format!("`op = \"{op}\"` needs `{key}` ({what})"))
        };
        let op = match op {
            "remove" => FileOp::Remove,
            "replace" => {
                FileOp::Replace { contents: self.opt(t, "contents", Self::string)?.unwrap_or_default().into_bytes() }
            }
            "symlink" => FileOp::Symlink { target: self.text(&need("target", "where the link points")?)? },
            "chmod" => FileOp::Chmod { mode: self.mode(&need("mode", "e.g. \"0500\"")?)? },
            "write" => {
                let contents = match (t.get("contents"), t.get("hex")) {
                    (Some(_), Some(hex)) => {
                        return Err(self.err(&hex.key_span, hex.path.clone(), "give `contents` or `hex`, not both"))
                    }
                    (Some(c), None) => self.string(&c)?.into_bytes(),
                    (None, Some(hex)) => {
                        let s = self.string(&hex)?;
                        decode_hex(&s).map_err(|why| {
                            self.err(
                                &hex.span(),
                                hex.path.clone(),
                                format!("expected hex bytes like \"00ff1a\", found {s:?}: {why}"),
                            )
                        })?
                    }
                    (None, None) => Vec::new(),
                };
                FileOp::Write { contents }
            }
            "mkdir" => FileOp::Mkdir,
            "copy" => FileOp::Copy { to: self.text(&need("to", "the destination path")?)? },
            "remember" => {
                let label = self.text(&need("label", "a name for what is remembered")?)?;
                self.labels.push(label.clone());
                FileOp::Remember { label }
            }
            "unchanged" => {
                let f = need("label", "the label of an earlier `op = \"remember\"`")?;
                let label = self.text(&f)?;
                if !self.labels.contains(&label) {
                    return Err(self.wrong(&f, "the label of an earlier `op = \"remember\"` step"));
                }
                FileOp::Unchanged { label }
            }
            "exists" => FileOp::Exists {
                min_size: self
                    .opt(t, "min_size", |cx, f| cx.int(f, 0, i64::MAX, "a size in bytes (an integer >= 0)"))?
                    .map(|n| n as u64),
            },
            "absent" => FileOp::Absent,
            "corrupt" => FileOp::Corrupt {
                offset: self.offset(&need("offset", "a byte offset like 4096 or a percentage like \"50%\"")?)?,
                len: self
                    .opt(t, "len", |cx, f| cx.int(f, 1, i64::MAX, "a length in bytes of at least 1"))?
                    .map_or(600, |n| n as u64),
            },
            "rename" => FileOp::Rename { to: self.text(&need("to", "the new path")?)? },
            "fill" => {
                if self.home_size.is_none() {
                    return Err(self.err(
                        &op_field.span(),
                        op_field.path.clone(),
                        "`op = \"fill\"` fills a filesystem: only a tmpfs home may be filled (set `home_size` in the header)",
                    ));
                }
                FileOp::Fill
            }
            _ => FileOp::Mode { mode: self.mode(&need("mode", "the expected permission bits, e.g. \"0600\"")?)? },
        };
        Ok(Step::File(FileStep { path, op }))
    }

    /// `mode = "0500"` or `mode = 0o500` (a decimal integer is refused: `500` is ambiguous).
    fn mode(&self, f: &Field) -> Res<u32> {
        const EXPECTED: &str = "a mode as octal digits like \"0500\" or an octal integer like 0o500";
        let mode = match &f.node.val {
            Val::Str(s) if !s.is_empty() && s.len() <= 5 && s.chars().all(|c| c.is_digit(8)) => {
                u32::from_str_radix(s, 8).ok()
            }
            Val::Int(i) => {
                let raw = f.node.span.as_ref().and_then(|s| self.src.text.get(s.clone())).unwrap_or("");
                if raw.trim_start_matches('+').starts_with("0o") {
                    u32::try_from(*i).ok()
                } else {
                    None
                }
            }
            _ => None,
        };
        mode.filter(|m| *m <= 0o7777).ok_or_else(|| self.wrong(f, EXPECTED))
    }

    /// `home_size = "2m"` (k, m, g: powers of 1024; a bare integer is bytes), from one page
    /// to 1 GiB: a tmpfs holds its pages in memory.
    fn home_size(&self, f: &Field) -> Res<u64> {
        const EXPECTED: &str = "a size from \"4k\" to \"1g\" like \"2m\" (k, m, g) or an integer of bytes";
        let bytes = match &f.node.val {
            Val::Str(s) => parse_size(s),
            Val::Int(i) => u64::try_from(*i).ok(),
            _ => None,
        };
        bytes.filter(|b| (4096..=1 << 30).contains(b)).ok_or_else(|| self.wrong(f, EXPECTED))
    }

    /// `nofile = 64` (soft = hard) or `nofile = [soft, hard]`, each at least 3 (stdin,
    /// stdout and stderr are descriptors too), soft at most hard.
    fn nofile(&self, f: &Field) -> Res<(u64, u64)> {
        const EXPECTED: &str = "a descriptor limit of at least 3, or [soft, hard] with soft <= hard";
        let limit = |f: &Field| match f.node.val {
            Val::Int(i) if i >= 3 => Ok(i as u64),
            _ => Err(self.wrong(f, EXPECTED)),
        };
        match &f.node.val {
            Val::Int(_) => limit(f).map(|n| (n, n)),
            Val::Array(items) if items.len() == 2 => {
                let soft = limit(&f.item(0, &items[0]))?;
                let hard = limit(&f.item(1, &items[1]))?;
                if soft > hard {
                    return Err(self.wrong(f, "[soft, hard] with soft <= hard"));
                }
                Ok((soft, hard))
            }
            _ => Err(self.wrong(f, EXPECTED)),
        }
    }

    /// `offset = 4096` (bytes) or `offset = "50%"` (of the file's size when the step runs).
    fn offset(&self, f: &Field) -> Res<Offset> {
        const EXPECTED: &str = "a byte offset (an integer >= 0) or a percentage of the file's size like \"50%\"";
        match &f.node.val {
            Val::Int(i) if *i >= 0 => Ok(Offset::Bytes(*i as u64)),
            Val::Str(s) => parse_percent(s).map(Offset::Percent).ok_or_else(|| self.wrong(f, EXPECTED)),
            _ => Err(self.wrong(f, EXPECTED)),
        }
    }

    fn enqueue(&self, t: &Tbl, v: &Field) -> Res<Step> {
        let kind = match v.str() {
            Some(k) if ENQUEUE_KINDS.contains(&k) => k.to_owned(),
            _ => return Err(self.wrong(v, &format!("a job kind, one of {}", one_of(ENQUEUE_KINDS)))),
        };
        self.only(t, &[&["enqueue"], ENQUEUE_OPTS].concat(), "`enqueue`")?;
        if kind != "probe" {
            if let Some(e) = t.sorted().into_iter().find(|e| PROBE_OPTS.contains(&e.key.as_str())) {
                return Err(self.err(
                    &e.span,
                    t.key_path(&e.key),
                    format!("`{}` applies only to `enqueue = \"probe\"`, found `enqueue = \"{kind}\"`", e.key),
                ));
            }
        }
        let grandchild = self.opt(t, "grandchild", Self::duration)?;
        let grandchild_setsid = self.opt(t, "grandchild_setsid", Self::boolean)?.unwrap_or(false);
        if grandchild_setsid && grandchild.is_none() {
            let f = t.get("grandchild_setsid");
            return Err(self.err(
                &f.and_then(|f| f.key_span),
                t.key_path("grandchild_setsid"),
                "`grandchild_setsid = true` needs `grandchild` (how long the grandchild outlives the probe)",
            ));
        }
        let parallel = self.opt(t, "parallel", Self::boolean)?.unwrap_or(false);
        let from_file = self.opt(t, "from_file", Self::boolean)?.unwrap_or(false);
        if let (true, true, Some(f)) = (parallel, from_file, t.get("from_file")) {
            return Err(self.err(
                &f.key_span,
                f.path.clone(),
                "give `parallel` (one process per job) or `from_file` (one process for all), not both",
            ));
        }
        let arm = self.arm(t)?;
        if arm.is_some() {
            // An armed enqueue is one process that dies at its cut: nothing to run in
            // parallel, no exit code to expect.
            let count = self.opt(t, "count", |cx, f| cx.count(f, 1))?.unwrap_or(1);
            let clash = if parallel {
                t.get("parallel")
            } else if let Some(f) = t.get("code") {
                Some(f)
            } else if count > 1 && !from_file {
                t.get("count")
            } else {
                None
            };
            if let Some(f) = clash {
                return Err(self.err(
                    &f.key_span,
                    f.path.clone(),
                    "an armed enqueue is one process that must die at its cut: no `parallel`, no `code`, and `count = 1` unless `from_file = true`",
                ));
            }
        }
        let probe = ProbeSpec {
            sleep: self.opt(t, "sleep", Self::duration)?.unwrap_or_default(),
            grandchild,
            grandchild_setsid,
            exit_code: self.opt(t, "exit_code", Self::code)?.unwrap_or(0),
            ignore_term: self.opt(t, "ignore_term", Self::boolean)?.unwrap_or(false),
        };
        Ok(Step::Enqueue(Enqueue {
            kind,
            args: self.opt(t, "args", Self::strings)?.unwrap_or_default(),
            probe,
            lane: self.opt(t, "lane", Self::text)?,
            max_attempts: self.opt(t, "max_attempts", |cx, f| cx.count(f, 1))?,
            key: self.opt(t, "key", Self::text)?,
            timeout: self.opt(t, "timeout", Self::text)?,
            count: self.opt(t, "count", |cx, f| cx.count(f, 1))?.unwrap_or(1),
            parallel,
            code: self.opt(t, "code", Self::code)?.unwrap_or(0),
            run_after: self.opt(t, "run_after", Self::text)?,
            from_file,
            arm,
        }))
    }

    fn cli(&self, t: &Tbl, v: &Field) -> Res<Step> {
        self.only(t, &[&["cli"], CLI_OPTS].concat(), "`cli`")?;
        let arm = self.arm(t)?;
        if let (Some(_), Some(f)) = (arm, t.get("code")) {
            return Err(self.err(
                &f.key_span,
                f.path.clone(),
                "an armed `cli` must die at its cut: it has no exit code to expect (drop `code`)",
            ));
        }
        Ok(Step::Cli(Cli {
            args: self.nonempty_strings(v)?,
            code: self.opt(t, "code", Self::code)?.unwrap_or(0),
            stdout: self.opt(t, "stdout", Self::patterns)?.unwrap_or_default(),
            stderr: self.opt(t, "stderr", Self::patterns)?.unwrap_or_default(),
            unprivileged: self.unprivileged(t)?,
            env: self.opt(t, "env", Self::str_map)?.unwrap_or_default(),
            no_settings: self.opt(t, "no_settings", Self::boolean)?.unwrap_or(false),
            timeout: self.opt(t, "timeout", Self::duration)?.unwrap_or(Duration::from_secs(30)),
            arm,
        }))
    }

    fn sql(&self, t: &Tbl, v: &Field) -> Res<Step> {
        self.only(t, &[&["sql"], SQL_OPTS].concat(), "`sql`")?;
        let query = self.text(v)?;
        let rows =
            self.need(t, "rows", &v.key_span, String::from("`sql` needs `rows` (the expected rows, e.g. [[1]])"))?;
        Ok(Step::Sql(Sql {
            query,
            rows: self.rows(&rows)?,
            write: self.opt(t, "write", Self::boolean)?.unwrap_or(false),
            database: self.opt(t, "database", Self::text)?,
        }))
    }

    fn check(&self, t: &Tbl, v: &Field) -> Res<Step> {
        if v.str() != Some("invariants") {
            return Err(self.wrong(v, "\"invariants\""));
        }
        self.only(t, &[&["check"], CHECK_OPTS].concat(), "`check`")?;
        let mut allow = Vec::new();
        if let Some(f) = t.get("allow") {
            for (i, node) in self.array(&f, "an array of statuses like [\"pending\"]")?.iter().enumerate() {
                let item = f.item(i, node);
                match item.str() {
                    Some(s) if CHECK_ALLOW.contains(&s) => allow.push(s.to_owned()),
                    _ => return Err(self.wrong(&item, &format!("one of {}", one_of(CHECK_ALLOW)))),
                }
            }
        }
        let allows_running = allow.iter().any(|s| s == "running");
        let none_running = match t.get("none_running") {
            Some(f) => {
                let on = self.boolean(&f)?;
                if on && allows_running {
                    return Err(self.err(
                        &f.key_span,
                        f.path.clone(),
                        "`none_running = true` contradicts `allow` containing \"running\"",
                    ));
                }
                on
            }
            None => !allows_running,
        };
        Ok(Step::Check(Check { allow, none_running }))
    }

    fn expect_events(&self, t: &Tbl, v: &Field) -> Res<Step> {
        self.only(t, &[&["expect_events"], EXPECT_OPTS].concat(), "`expect_events`")?;
        let max = self.opt(t, "max", |cx, f| cx.count(f, 0))?;
        // `max = 0` alone asserts "none": the default `min` of 1 gives way.
        let min = self.opt(t, "min", |cx, f| cx.count(f, 0))?.unwrap_or(max.map_or(1, |max| max.min(1)));
        if let (Some(max), Some(f)) = (max, t.get("max")) {
            if max < min {
                return Err(self.wrong(&f, &format!("an integer of at least `min` ({min})")));
            }
        }
        Ok(Step::ExpectEvents(ExpectEvents {
            target: self.opt(t, "target", Self::text)?.unwrap_or_else(|| String::from("*")),
            event: self.text(v)?,
            fields: self.opt(t, "fields", Self::scalar_map)?.unwrap_or_default(),
            min,
            max,
        }))
    }

    fn snapshot(&self, t: &Tbl, v: &Field) -> Res<Step> {
        self.only(t, &[&["snapshot"], SNAPSHOT_OPTS].concat(), "`snapshot`")?;
        let name = match v.str() {
            Some(s)
                if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) =>
            {
                s.to_owned()
            }
            _ => return Err(self.wrong(v, "a snapshot name (letters, digits, `_`, `-`, `.`)")),
        };
        let f = self.need(t, "parts", &v.key_span, String::from("`snapshot` needs `parts` (what to gather)"))?;
        let items = self.array(&f, "an array of parts like [{ lock_file = true }]")?;
        if items.is_empty() {
            return Err(self.wrong(&f, "a non-empty array of parts"));
        }
        let parts = items.iter().enumerate().map(|(i, node)| self.part(&f.item(i, node))).collect::<Res<_>>()?;
        Ok(Step::Snapshot(Snapshot { name, parts }))
    }

    fn part(&self, f: &Field) -> Res<SnapshotPart> {
        let t = self.table(f, "a part like { lock_file = true }")?;
        let kinds: Vec<&Entry> = t.sorted().into_iter().filter(|e| PART_KINDS.contains(&e.key.as_str())).collect();
        let kind = match kinds.as_slice() {
            [kind] => *kind,
            [] => return Err(self.wrong(f, &format!("a part with one of: {}", PART_KINDS.join(", ")))),
            [a, b, ..] => {
                return Err(self.err(
                    &b.span,
                    t.key_path(&b.key),
                    format!("a part has exactly one kind, found `{}` and `{}`", a.key, b.key),
                ))
            }
        };
        let extra: &[&str] = if kind.key == "messages" { &["events"] } else { &[] };
        self.only(&t, &[&[kind.key.as_str()], extra].concat(), &format!("a `{}` part", kind.key))?;
        let v = t.field(kind);
        let flag = |v: &Field| match v.node.val {
            Val::Bool(true) => Ok(()),
            _ => Err(self.wrong(v, "true")),
        };
        Ok(match kind.key.as_str() {
            "lock_file" => flag(&v).map(|()| SnapshotPart::LockFile)?,
            "migrations" => flag(&v).map(|()| SnapshotPart::Migrations)?,
            "table_info" => SnapshotPart::TableInfo(self.text(&v)?),
            "messages" => SnapshotPart::Messages {
                target: self.text(&v)?,
                events: self.opt(&t, "events", Self::strings)?.unwrap_or_default(),
            },
            "command" => SnapshotPart::Command(self.nonempty_strings(&v)?),
            _ => SnapshotPart::Query(self.text(&v)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "description = \"d\"\ncovers = [\"test\"]\nmutant = \"m\"\n";

    fn parse(text: &str) -> Result<Scenario, ParseError> {
        parse_str(Path::new("scenarios/t.toml"), text)
    }

    fn err(text: &str) -> ParseError {
        match parse(text) {
            Ok(s) => panic!("expected an error, parsed {s:#?}"),
            Err(e) => e,
        }
    }

    /// Assert the error's position, key and a fragment of its message.
    #[track_caller]
    fn assert_err(e: &ParseError, line: usize, col: usize, key: &str, fragment: &str) {
        assert_eq!((e.line, e.col, e.key.as_str()), (line, col, key), "{e}");
        assert!(e.message.contains(fragment), "message lacks {fragment:?}: {e}");
        assert_eq!(e.file, Path::new("scenarios/t.toml"));
    }

    #[test]
    fn span_protocol_is_discovered() {
        let p = protocol();
        assert!(!p.spanned_name.is_empty() && p.spanned_fields.len() == 3, "toml::Spanned protocol changed");
        assert!(!p.datetime_field.is_empty(), "toml::value::Datetime protocol changed");
    }

    #[test]
    fn unknown_step_verb() {
        let e = err(&format!("{HEADER}[[step]]\nstart = \"a\"\n\n[[step]]\nlaunch = \"b\"\n"));
        assert_err(&e, 8, 1, "step[2].launch", "unknown step verb `launch`");
        let e = err(&format!("{HEADER}[[step]]\nwiat = \"event\"\nevent = \"x\"\n"));
        assert_err(&e, 5, 1, "step[1].wiat", "did you mean `wait`?");
    }

    #[test]
    fn wrong_type() {
        let e = err(&format!("{HEADER}[[step]]\nstart = \"a\"\ncount = \"two\"\n"));
        assert_err(&e, 6, 9, "step[1].count", "expected an integer of at least 1, found \"two\"");
        let e = err(&format!("{HEADER}[[step]]\ncli = [\"status\"]\nno_settings = \"yes\"\n"));
        assert_err(&e, 6, 15, "step[1].no_settings", "expected a boolean");
        let e = err("description = \"d\"\ncovers = \"x\"\nmutant = \"m\"\n[[step]]\nstart = \"a\"\n");
        assert_err(&e, 2, 10, "covers", "expected an array of strings, found \"x\"");
    }

    #[test]
    fn missing_field() {
        let e = err(&format!("{HEADER}[[step]]\nwait = \"event\"\ntarget = \"a\"\n"));
        assert_err(&e, 5, 1, "step[1].event", "`wait = \"event\"` needs `event`");
        let e = err(&format!("{HEADER}[[step]]\nsignal = \"a\"\n"));
        assert_err(&e, 5, 1, "step[1].sig", "needs `sig`");
        let e = err("covers = [\"x\"]\nmutant = \"m\"\n[[step]]\nstart = \"a\"\n");
        assert_err(&e, 1, 1, "description", "missing required key `description`");
        let e = err("description = \"d\"\ncovers = [\"x\"]\n[[step]]\nstart = \"a\"\n");
        assert_err(&e, 1, 1, "mutant", "`mutant_none`");
    }

    #[test]
    fn bad_duration() {
        let e = err(&format!("{HEADER}[[step]]\nwait = \"exit\"\ntarget = \"a\"\ntimeout = \"5 seconds\"\n"));
        assert_err(&e, 7, 11, "step[1].timeout", "expected a duration like \"250ms\" or \"5s\", found \"5 seconds\"");
        let e = err(&format!("timeout = 5\n{HEADER}[[step]]\nstart = \"a\"\n"));
        assert_err(&e, 1, 11, "timeout", "found the integer 5");
        let e = err(&format!("{HEADER}[[step]]\nclock = \"+-2h\"\n"));
        assert_err(&e, 5, 9, "step[1].clock", "expected a signed duration");
    }

    #[test]
    fn unknown_top_level_key() {
        let e = err(&format!("{HEADER}timout = \"5s\"\n[[step]]\nstart = \"a\"\n"));
        assert_err(&e, 4, 1, "timout", "unknown top-level key `timout`");
        assert!(e.message.contains("did you mean `timeout`?"), "{e}");
        let e = err(&format!("{HEADER}start = \"a\"\n"));
        assert_err(&e, 4, 1, "start", "under a [[step]] header");
    }

    #[test]
    fn toml_syntax_error() {
        let e = err(&format!("{HEADER}[[step]]\nstart = \"a\"\ncount = 2 3\n"));
        assert_err(&e, 6, 11, "step[1].count", "invalid TOML");
        let e = err(&format!("{HEADER}[[step]]\nstart = \"a\nwait = \"exit\"\n"));
        assert_err(&e, 5, 11, "step[1].start", "invalid TOML");
        let e = err(&format!("{HEADER}[[step]]\nstart = \"a\"\nstart = \"b\"\n"));
        assert_err(&e, 6, 1, "step[1].start", "duplicate key");
    }

    #[test]
    fn step_with_two_verbs() {
        let e = err(&format!("{HEADER}[[step]]\nstart = \"a\"\nwait = \"exit\"\ntarget = \"a\"\n"));
        assert_err(&e, 6, 1, "step[1].wait", "exactly one verb, found `start` and `wait`");
        let e = err(&format!("{HEADER}[[step]]\ncount = 2\n"));
        assert_err(&e, 4, 1, "step[1]", "expected a step verb");
    }

    #[test]
    fn other_rejections() {
        let cases: &[(&str, usize, usize, &str, &str)] = &[
            ("[[step]]\nstart = \"a\"\ncuont = 2\n", 6, 1, "step[1].cuont", "unknown option `cuont` for `start`"),
            ("[[step]]\nwait = \"exit\"\ntarget = \"a\"\nevent = \"x\"\n", 7, 1, "step[1].event", "`wait = \"exit\"`"),
            ("[[step]]\nwait = \"forever\"\n", 5, 8, "step[1].wait", "one of \"event\", \"exit\""),
            ("[[step]]\nsignal = \"a\"\nsig = \"SIGFOO\"\n", 6, 7, "step[1].sig", "found \"SIGFOO\""),
            ("[[step]]\nenqueue = \"noop\"\nsleep = \"1s\"\n", 6, 1, "step[1].sleep", "only to `enqueue = \"probe\"`"),
            ("[[step]]\nenqueue = \"teleport\"\n", 5, 11, "step[1].enqueue", "a job kind"),
            ("[[step]]\nfile = \"{lock}\"\nop = \"chmod\"\nmode = 500\n", 7, 8, "step[1].mode", "0o500"),
            ("[[step]]\nfile = \"{lock}\"\nop = \"symlink\"\n", 6, 1, "step[1].target", "needs `target`"),
            ("[[step]]\nfile = \"{lock}\"\nop = \"remove\"\nto = \"x\"\n", 7, 1, "step[1].to", "unknown option `to`"),
            ("[[step]]\nfile = \"{lock}\"\nop = \"write\"\nhex = \"0g\"\n", 7, 7, "step[1].hex", "not a hex digit"),
            ("[[step]]\nfile = \"{lock}\"\nop = \"unchanged\"\nlabel = \"x\"\n", 7, 9, "step[1].label", "remember"),
            ("[[step]]\nexit = \"a\"\nstderr = [\"!re:(x\"]\n", 6, 11, "step[1].stderr[1]", "regular expression"),
            ("[[step]]\ncli = [\"status\"]\nunprivileged = true\n", 6, 1, "step[1].unprivileged", "requires"),
            ("[[step]]\ncheck = \"everything\"\n", 5, 9, "step[1].check", "expected \"invariants\""),
            ("[[step]]\ncheck = \"invariants\"\nallow = [\"done\"]\n", 6, 10, "step[1].allow[1]", "\"pending\""),
            ("[[step]]\nexpect_events = \"x\"\nmin = 2\nmax = 1\n", 7, 7, "step[1].max", "at least `min`"),
            ("[[step]]\nsql = \"SELECT 1\"\nrows = [[{ null = false }]]\n", 6, 10, "step[1].rows[1][1]", "null"),
            (
                "[[step]]\nsnapshot = \"s\"\nparts = [{ query = \"q\", command = [\"x\"] }]\n",
                6,
                25,
                "step[1].parts[1].command",
                "one kind",
            ),
            (
                "[[step]]\nsnapshot = \"s\"\nparts = [{ lock_file = false }]\n",
                6,
                24,
                "step[1].parts[1].lock_file",
                "true",
            ),
            (
                "[settings]\nstale = 1.5\n[[step]]\nstart = \"a\"\n",
                5,
                9,
                "settings.stale",
                "string, integer or boolean",
            ),
            ("mutant_none = \"why\"\n[[step]]\nstart = \"a\"\n", 4, 1, "mutant_none", "not both"),
            ("requires = [\"windows\"]\n[[step]]\nstart = \"a\"\n", 4, 13, "requires[1]", "\"linux\""),
            ("step = []\n", 4, 8, "step", "at least one [[step]]"),
        ];
        for (body, line, col, key, fragment) in cases {
            assert_err(&err(&format!("{HEADER}{body}")), *line, *col, key, fragment);
        }
    }

    #[test]
    fn column_counts_characters() {
        let e = err(&format!("{HEADER}[[step]]\nstart = \"a\"\nenv = {{ \"é\" = 1 }}\n"));
        assert_err(&e, 6, 15, "step[1].env.é", "expected a string");
    }

    #[test]
    fn helpers() {
        assert_eq!(parse_signed_ms("+90s"), Some(90_000));
        assert_eq!(parse_signed_ms("-2h"), Some(-7_200_000));
        assert_eq!(parse_signed_ms("30m"), Some(1_800_000));
        assert_eq!(parse_signed_ms("--1s"), None);
        assert_eq!(parse_sig("sigkill"), Some(Sig::Kill));
        assert_eq!(parse_sig("Hup"), Some(Sig::Hup));
        assert_eq!(parse_sig("USR1"), None);
        assert_eq!(decode_hex("00 ff\n1a"), Ok(vec![0, 255, 26]));
        assert!(decode_hex("abc").is_err());
        let p = parse_pattern("!re:error|panic");
        assert!(p.negated && p.regex && p.text == "error|panic");
        let p = parse_pattern("re-run");
        assert!(!p.negated && !p.regex && p.text == "re-run");
    }

    const FULL: &str = r#"
description = "every step kind"
covers = ["PITFALLS 1", "checklist: heartbeat"]
mutant = ["skip_flock", "no_epoch"]
requires = ["linux", "unprivileged"]
timeout = "90s"

[settings]
heartbeat_interval = "250ms"
concurrency = 2
lanes.io.concurrency = 1
durability = "full"

[[step]]
start = "a"
count = 2
command = ["run", "--foreground"]
args = ["--lock-file", "{lock}"]
env = { RUST_LOG = "debug", HOMER_X = "1" }
failpoints = "lock.after_open=stop"
lock_file = "{sandbox}/other.lock"
unprivileged = true
no_settings = true

[[step]]
wait = "event"
target = "a.*"
event = "lock.acquired"
fields = { epoch = 1, ok = true, who = "a", ratio = 0.5, gone = { null = true } }
count = 2
timeout = "5s"

[[step]]
wait = "exit"
target = "a.2"

[[step]]
wait = "sql"
query = "SELECT status, count(*) FROM job_queue GROUP BY status"
rows = [["done", 3], [{ null = true }, 0]]

[[step]]
wait = "effects"
job = 2
starts = 2
ends = 1

[[step]]
wait = "duration"
duration = "1.5s"

[[step]]
exit = "a.*"
count = 2
code = 75
stdout = ["Another Homer instance", "!re:error|panic"]
stderr = ["re:^$"]
timeout = "3s"

[[step]]
signal = "a.1"
sig = "SIGSTOP"

[[step]]
file = "{lock}"
op = "remember"
label = "before"

[[step]]
file = "{lock}"
op = "unchanged"
label = "before"

[[step]]
file = "{lock}"
op = "remove"

[[step]]
file = "{lock}"
op = "replace"
contents = "x"

[[step]]
file = "{lock}"
op = "symlink"
target = "{sandbox}/elsewhere"

[[step]]
file = "{home}"
op = "chmod"
mode = "0500"

[[step]]
file = "{home}"
op = "chmod"
mode = 0o755

[[step]]
file = "{db}"
op = "write"
hex = "53514c69"

[[step]]
file = "notes.txt"
op = "write"
contents = "hi"

[[step]]
file = "{sandbox}/dir"
op = "mkdir"

[[step]]
file = "{db}"
op = "copy"
to = "{sandbox}/db.bak"

[[step]]
file = "{lock}"
op = "exists"

[[step]]
file = "{sandbox}/stray"
op = "absent"

[[step]]
enqueue = "probe"
lane = "io"
max_attempts = 3
key = "k1"
timeout = "2s"
count = 4
parallel = true
code = 0
sleep = "500ms"
grandchild = "1s"
grandchild_setsid = true
exit_code = 3
ignore_term = true

[[step]]
enqueue = "exec"
args = ["--", "{probe}", "{job:1}"]

[[step]]
cli = ["status", "--json"]
code = 1
stdout = ["\"running\""]
stderr = ["!panic"]
unprivileged = true
env = { HOMER_HOME = "{home}" }
no_settings = true
timeout = "20s"

[[step]]
sql = "SELECT id FROM job_queue WHERE id = 1"
rows = [[1]]

[[step]]
hold_write = "2s"

[[step]]
clock = "-2h"

[[step]]
check = "invariants"
allow = ["pending", "running"]

[[step]]
expect_events = "job.finished"
target = "a.1"
fields = { outcome = "done" }
min = 0
max = 4

[[step]]
snapshot = "lock-and-schema"
parts = [
  { lock_file = true },
  { migrations = true },
  { table_info = "job_queue" },
  { messages = "a.1", events = ["lock.acquired", "lock.released"] },
  { command = ["status"] },
  { query = "SELECT name FROM _migrations" },
]
"#;

    #[test]
    fn full_valid_scenario() {
        let s = parse_str(Path::new("scenarios/full-example.toml"), FULL).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.name, "full-example");
        assert_eq!(s.description, "every step kind");
        assert_eq!(s.covers, ["PITFALLS 1", "checklist: heartbeat"]);
        assert_eq!(s.mutant, MutantExpectation::Catches(vec!["skip_flock".into(), "no_epoch".into()]));
        assert_eq!(s.requires, [Requirement::Linux, Requirement::Unprivileged]);
        assert_eq!(s.timeout, Duration::from_secs(90));
        let settings: Vec<(&str, &str)> = s.settings.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            settings,
            [
                ("heartbeat_interval", "250ms"),
                ("concurrency", "2"),
                ("lanes.io.concurrency", "1"),
                ("durability", "full")
            ]
        );
        assert_eq!(s.steps.len(), 30);
        let line_of = |needle: &str| FULL.lines().position(|l| l == needle).map(|i| i + 1);
        assert_eq!(Some(s.steps[0].line), line_of("start = \"a\"").map(|l| l - 1));
        let mut steps = s.steps.iter().map(|at| &at.step);

        let Some(Step::Start(start)) = steps.next() else { panic!("start") };
        assert_eq!((start.name.as_str(), start.count), ("a", 2));
        assert_eq!(start.command, ["run", "--foreground"]);
        assert_eq!(start.args, ["--lock-file", "{lock}"]);
        assert_eq!(start.env, [("RUST_LOG".into(), "debug".into()), ("HOMER_X".into(), "1".into())]);
        assert_eq!(start.failpoints.as_deref(), Some("lock.after_open=stop"));
        assert_eq!(start.lock_file.as_deref(), Some("{sandbox}/other.lock"));
        assert!(start.unprivileged && start.no_settings);

        let Some(Step::Wait(Wait { until: WaitFor::Event { target, event, fields, count }, timeout })) = steps.next()
        else {
            panic!("wait event")
        };
        assert_eq!(
            (target.as_str(), event.as_str(), *count, *timeout),
            ("a.*", "lock.acquired", 2, Duration::from_secs(5))
        );
        assert_eq!(
            fields,
            &[
                ("epoch".into(), Scalar::Int(1)),
                ("ok".into(), Scalar::Bool(true)),
                ("who".into(), Scalar::Text("a".into())),
                ("ratio".into(), Scalar::Float(0.5)),
                ("gone".into(), Scalar::Null),
            ]
        );
        let Some(Step::Wait(Wait { until: WaitFor::Exited { target }, timeout })) = steps.next() else {
            panic!("wait exit")
        };
        assert_eq!((target.as_str(), *timeout), ("a.2", Duration::from_secs(10)));
        let Some(Step::Wait(Wait { until: WaitFor::Sql { query, rows }, .. })) = steps.next() else {
            panic!("wait sql")
        };
        assert!(query.starts_with("SELECT status"));
        assert_eq!(rows, &[vec![Scalar::Text("done".into()), Scalar::Int(3)], vec![Scalar::Null, Scalar::Int(0)]]);
        let Some(Step::Wait(Wait { until: WaitFor::Effects { job, starts, ends, not_before }, .. })) = steps.next()
        else {
            panic!("wait effects")
        };
        assert_eq!((*job, *starts, *ends, *not_before), (Some(2), 2, 1, None));
        let Some(Step::Wait(Wait { until: WaitFor::Elapsed { duration }, .. })) = steps.next() else {
            panic!("wait duration")
        };
        assert_eq!(*duration, Duration::from_millis(1500));

        let Some(Step::Exit(exit)) = steps.next() else { panic!("exit") };
        assert_eq!((exit.target.as_str(), exit.count, exit.code), ("a.*", Some(2), 75));
        assert_eq!(exit.timeout, Duration::from_secs(3));
        assert_eq!(exit.stdout.len(), 2);
        assert!(!exit.stdout[0].negated && !exit.stdout[0].regex && exit.stdout[0].text == "Another Homer instance");
        assert!(exit.stdout[1].negated && exit.stdout[1].regex && exit.stdout[1].text == "error|panic");
        assert!(exit.stderr[0].regex && exit.stderr[0].text == "^$");

        let Some(Step::Signal { target, signal, .. }) = steps.next() else { panic!("signal") };
        assert_eq!((target.as_str(), *signal), ("a.1", Sig::Stop));

        let mut file = |want: &str| match steps.next() {
            Some(Step::File(f)) => {
                assert_eq!(f.path, want);
                f.op.clone()
            }
            other => panic!("expected a file step, found {other:?}"),
        };
        assert!(matches!(file("{lock}"), FileOp::Remember { label } if label == "before"));
        assert!(matches!(file("{lock}"), FileOp::Unchanged { label } if label == "before"));
        assert!(matches!(file("{lock}"), FileOp::Remove));
        assert!(matches!(file("{lock}"), FileOp::Replace { contents } if contents == b"x"));
        assert!(matches!(file("{lock}"), FileOp::Symlink { target } if target == "{sandbox}/elsewhere"));
        assert!(matches!(file("{home}"), FileOp::Chmod { mode: 0o500 }));
        assert!(matches!(file("{home}"), FileOp::Chmod { mode: 0o755 }));
        assert!(matches!(file("{db}"), FileOp::Write { contents } if contents == b"SQLi"));
        assert!(matches!(file("notes.txt"), FileOp::Write { contents } if contents == b"hi"));
        assert!(matches!(file("{sandbox}/dir"), FileOp::Mkdir));
        assert!(matches!(file("{db}"), FileOp::Copy { to } if to == "{sandbox}/db.bak"));
        assert!(matches!(file("{lock}"), FileOp::Exists { min_size: None }));
        assert!(matches!(file("{sandbox}/stray"), FileOp::Absent));

        let Some(Step::Enqueue(q)) = steps.next() else { panic!("enqueue probe") };
        assert_eq!(q.kind, "probe");
        assert_eq!((q.lane.as_deref(), q.max_attempts, q.key.as_deref()), (Some("io"), Some(3), Some("k1")));
        assert_eq!((q.timeout.as_deref(), q.count, q.parallel, q.code), (Some("2s"), 4, true, 0));
        assert_eq!(q.probe.sleep, Duration::from_millis(500));
        assert_eq!(q.probe.grandchild, Some(Duration::from_secs(1)));
        assert!(q.probe.grandchild_setsid && q.probe.ignore_term);
        assert_eq!(q.probe.exit_code, 3);
        let Some(Step::Enqueue(q)) = steps.next() else { panic!("enqueue exec") };
        assert_eq!((q.kind.as_str(), q.count, q.parallel, q.code), ("exec", 1, false, 0));
        assert_eq!(q.args, ["--", "{probe}", "{job:1}"]);
        assert_eq!(q.probe.sleep, Duration::ZERO);
        assert!(q.lane.is_none() && q.timeout.is_none());

        let Some(Step::Cli(cli)) = steps.next() else { panic!("cli") };
        assert_eq!(cli.args, ["status", "--json"]);
        assert_eq!((cli.code, cli.unprivileged, cli.no_settings), (1, true, true));
        assert_eq!(cli.stdout[0].text, "\"running\"");
        assert!(cli.stderr[0].negated && cli.stderr[0].text == "panic");
        assert_eq!(cli.env, [("HOMER_HOME".into(), "{home}".into())]);
        assert_eq!(cli.timeout, Duration::from_secs(20));

        let Some(Step::Sql(sql)) = steps.next() else { panic!("sql") };
        assert_eq!(sql.rows, [vec![Scalar::Int(1)]]);
        let Some(Step::HoldWrite { duration }) = steps.next() else { panic!("hold_write") };
        assert_eq!(*duration, Duration::from_secs(2));
        let Some(Step::Clock { step_ms }) = steps.next() else { panic!("clock") };
        assert_eq!(*step_ms, -7_200_000);
        let Some(Step::Check(check)) = steps.next() else { panic!("check") };
        assert_eq!(check.allow, ["pending", "running"]);
        assert!(!check.none_running);
        let Some(Step::ExpectEvents(ev)) = steps.next() else { panic!("expect_events") };
        assert_eq!((ev.target.as_str(), ev.event.as_str(), ev.min, ev.max), ("a.1", "job.finished", 0, Some(4)));
        assert_eq!(ev.fields, [("outcome".into(), Scalar::Text("done".into()))]);

        let Some(Step::Snapshot(snap)) = steps.next() else { panic!("snapshot") };
        assert_eq!(snap.name, "lock-and-schema");
        assert!(matches!(
            snap.parts.as_slice(),
            [
                SnapshotPart::LockFile,
                SnapshotPart::Migrations,
                SnapshotPart::TableInfo(table),
                SnapshotPart::Messages { target, events },
                SnapshotPart::Command(command),
                SnapshotPart::Query(query),
            ] if table == "job_queue" && target == "a.1" && events == &["lock.acquired", "lock.released"]
                && command == &["status"] && query.starts_with("SELECT name")
        ));
        assert!(steps.next().is_none());
    }

    const FAULTS: &str = r#"description = "d"
covers = ["test"]
mutant = "m"
requires = ["tmpfs"]
home_size = "2m"

[[step]]
start = "a"
nofile = 64

[[step]]
start = "b"
nofile = [32, 128]

[[step]]
file = "{db}"
op = "corrupt"
offset = "50%"

[[step]]
file = "{db}"
op = "corrupt"
offset = 4096
len = 16

[[step]]
file = "{db}"
op = "rename"
to = "{sandbox}/aside.db"

[[step]]
file = "{home}/filler"
op = "fill"

[[step]]
file = "{db}"
op = "mode"
mode = "0600"

[[step]]
file = "{db}-wal"
op = "exists"
min_size = 1

[[step]]
enqueue = "probe"
count = 300
from_file = true
run_after = "2s"

[[step]]
wait = "effects"
job = 1
not_before = "1900ms"
"#;

    #[test]
    fn fault_vocabulary() {
        let s = parse(FAULTS).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.requires, [Requirement::Tmpfs]);
        assert_eq!(s.home_size, Some(2 << 20));
        let mut steps = s.steps.iter().map(|at| &at.step);
        let Some(Step::Start(a)) = steps.next() else { panic!("start a") };
        assert_eq!(a.nofile, Some((64, 64)));
        let Some(Step::Start(b)) = steps.next() else { panic!("start b") };
        assert_eq!(b.nofile, Some((32, 128)));
        let mut file = || match steps.next() {
            Some(Step::File(f)) => f.op.clone(),
            other => panic!("expected a file step, found {other:?}"),
        };
        assert!(matches!(file(), FileOp::Corrupt { offset: Offset::Percent(p), len: 600 } if p == 50.0));
        assert!(matches!(file(), FileOp::Corrupt { offset: Offset::Bytes(4096), len: 16 }));
        assert!(matches!(file(), FileOp::Rename { to } if to == "{sandbox}/aside.db"));
        assert!(matches!(file(), FileOp::Fill));
        assert!(matches!(file(), FileOp::Mode { mode: 0o600 }));
        assert!(matches!(file(), FileOp::Exists { min_size: Some(1) }));
        let Some(Step::Enqueue(q)) = steps.next() else { panic!("enqueue") };
        assert_eq!((q.count, q.from_file, q.parallel, q.run_after.as_deref()), (300, true, false, Some("2s")));
        let Some(Step::Wait(Wait { until: WaitFor::Effects { job, starts, not_before, .. }, .. })) = steps.next()
        else {
            panic!("wait effects")
        };
        assert_eq!((*job, *starts, *not_before), (Some(1), 1, Some(Duration::from_millis(1900))));
        // Defaults: no home_size, no limit, one process per job, no run_after.
        let s = parse(&format!("{HEADER}[[step]]\nstart = \"a\"\n\n[[step]]\nenqueue = \"noop\"\n")).unwrap();
        let Step::Start(a) = &s.steps[0].step else { panic!("start") };
        let Step::Enqueue(q) = &s.steps[1].step else { panic!("enqueue") };
        assert_eq!((s.home_size, a.nofile, q.from_file, q.run_after.as_deref()), (None, None, false, None));
    }

    #[test]
    fn fault_vocabulary_rejections() {
        let cases: &[(&str, usize, usize, &str, &str)] = &[
            ("[[step]]\nfile = \"{db}\"\nop = \"corrupt\"\n", 6, 1, "step[1].offset", "needs `offset`"),
            ("[[step]]\nfile = \"{db}\"\nop = \"corrupt\"\noffset = \"50\"\n", 7, 10, "step[1].offset", "percentage"),
            ("[[step]]\nfile = \"{db}\"\nop = \"corrupt\"\noffset = \"150%\"\n", 7, 10, "step[1].offset", "\"150%\""),
            ("[[step]]\nfile = \"{db}\"\nop = \"corrupt\"\noffset = -1\n", 7, 10, "step[1].offset", "byte offset"),
            ("[[step]]\nfile = \"{db}\"\nop = \"corrupt\"\noffset = 0\nlen = 0\n", 8, 7, "step[1].len", "at least 1"),
            ("[[step]]\nfile = \"{db}\"\nop = \"corrupt\"\noffset = 0\nlen = \"6\"\n", 8, 7, "step[1].len", "length"),
            (
                "[[step]]\nfile = \"{db}\"\nop = \"corrupt\"\noffset = 0\nto = \"x\"\n",
                8,
                1,
                "step[1].to",
                "unknown option",
            ),
            ("[[step]]\nfile = \"{db}\"\nop = \"rename\"\n", 6, 1, "step[1].to", "needs `to`"),
            ("[[step]]\nfile = \"{db}\"\nop = \"rename\"\nto = \"\"\n", 7, 6, "step[1].to", "non-empty string"),
            ("[[step]]\nfile = \"{home}/f\"\nop = \"fill\"\n", 6, 6, "step[1].op", "home_size"),
            ("[[step]]\nfile = \"{db}\"\nop = \"mode\"\n", 6, 1, "step[1].mode", "needs `mode`"),
            ("[[step]]\nfile = \"{db}\"\nop = \"mode\"\nmode = \"0999\"\n", 7, 8, "step[1].mode", "octal"),
            ("[[step]]\nfile = \"{db}\"\nop = \"mode\"\nmode = 600\n", 7, 8, "step[1].mode", "0o500"),
            ("[[step]]\nfile = \"{db}\"\nop = \"exists\"\nmin_size = -1\n", 7, 12, "step[1].min_size", "bytes"),
            ("[[step]]\nfile = \"{db}\"\nop = \"absent\"\nmin_size = 1\n", 7, 1, "step[1].min_size", "unknown option"),
            ("[[step]]\nstart = \"a\"\nnofile = 2\n", 6, 10, "step[1].nofile", "at least 3"),
            ("[[step]]\nstart = \"a\"\nnofile = \"64\"\n", 6, 10, "step[1].nofile", "descriptor limit"),
            ("[[step]]\nstart = \"a\"\nnofile = [64]\n", 6, 10, "step[1].nofile", "[soft, hard]"),
            ("[[step]]\nstart = \"a\"\nnofile = [64, 32]\n", 6, 10, "step[1].nofile", "soft <= hard"),
            ("[[step]]\nstart = \"a\"\nnofile = [64, \"x\"]\n", 6, 15, "step[1].nofile[2]", "at least 3"),
            ("[[step]]\nwait = \"effects\"\nnot_before = \"2s\"\n", 6, 1, "step[1].not_before", "needs `job`"),
            ("[[step]]\nwait = \"effects\"\njob = 1\nnot_before = \"2 s\"\n", 7, 14, "step[1].not_before", "duration"),
            (
                "[[step]]\nwait = \"sql\"\nquery = \"q\"\nrows = []\nnot_before = \"1s\"\n",
                8,
                1,
                "step[1].not_before",
                "unknown option",
            ),
            (
                "[[step]]\nenqueue = \"noop\"\nparallel = true\nfrom_file = true\n",
                7,
                1,
                "step[1].from_file",
                "not both",
            ),
            ("[[step]]\nenqueue = \"noop\"\nfrom_file = \"yes\"\n", 6, 13, "step[1].from_file", "a boolean"),
            ("[[step]]\nenqueue = \"noop\"\nrun_after = \"\"\n", 6, 13, "step[1].run_after", "non-empty string"),
            ("[[step]]\nenqueue = \"noop\"\nrun_after = 2\n", 6, 13, "step[1].run_after", "found the integer 2"),
            ("home_size = \"2m\"\n[[step]]\nstart = \"a\"\n", 4, 1, "home_size", "requires = [\"tmpfs\"]"),
            ("requires = [\"tmpf\"]\n[[step]]\nstart = \"a\"\n", 4, 13, "requires[1]", "\"tmpfs\""),
        ];
        for (body, line, col, key, fragment) in cases {
            assert_err(&err(&format!("{HEADER}{body}")), *line, *col, key, fragment);
        }
        let tmpfs = "requires = [\"tmpfs\"]\n";
        for (size, col) in [("\"2 furlongs\"", 13), ("\"2g\"", 13), ("100", 13), ("\"1.5m\"", 13), ("true", 13)] {
            let e = err(&format!("{HEADER}{tmpfs}home_size = {size}\n[[step]]\nstart = \"a\"\n"));
            assert_err(&e, 5, col, "home_size", "a size from \"4k\" to \"1g\"");
        }
    }

    const POWER: &str = r#"description = "d"
covers = ["test"]
mutant = "m"
power_loss = true

[[step]]
start = "a"
arm = 40

[[step]]
enqueue = "noop"
arm = 5

[[step]]
enqueue = "noop"
count = 20
from_file = true
arm = 7

[[step]]
cli = ["migrate"]
arm = 3
stderr = ["!panic"]

[[step]]
power_loss = "cut"

[[step]]
power_loss = "cut"
timeout = "20s"
"#;

    #[test]
    fn power_loss_vocabulary() {
        let s = parse(POWER).unwrap_or_else(|e| panic!("{e}"));
        assert!(s.power_loss);
        let steps: Vec<&Step> = s.steps.iter().map(|at| &at.step).collect();
        assert!(matches!(steps[0], Step::Start(a) if a.arm == Some(40)));
        assert!(matches!(steps[1], Step::Enqueue(q) if q.arm == Some(5) && q.count == 1));
        assert!(matches!(steps[2], Step::Enqueue(q) if q.arm == Some(7) && q.count == 20 && q.from_file));
        assert!(matches!(steps[3], Step::Cli(c) if c.arm == Some(3) && c.stderr.len() == 1));
        assert!(matches!(steps[4], Step::PowerLoss(p) if p.timeout == Duration::from_secs(10)));
        assert!(matches!(steps[5], Step::PowerLoss(p) if p.timeout == Duration::from_secs(20)));
        // Defaults: no recording, nothing armed.
        let s = parse(&format!("{HEADER}[[step]]\nstart = \"a\"\n\n[[step]]\ncli = [\"status\"]\n")).unwrap();
        let (Step::Start(a), Step::Cli(c)) = (&s.steps[0].step, &s.steps[1].step) else { panic!("start, cli") };
        assert_eq!((s.power_loss, a.arm, c.arm), (false, None, None));
        let s = parse(&format!("{HEADER}power_loss = false\n[[step]]\nstart = \"a\"\n")).unwrap();
        assert!(!s.power_loss);
    }

    #[test]
    fn power_loss_rejections() {
        let pl = "power_loss = true\n";
        let cases: &[(&str, usize, usize, &str, &str)] = &[
            ("power_loss = \"cut\"\n[[step]]\nstart = \"a\"\n", 4, 14, "power_loss", "goes under a [[step]] header"),
            ("power_loss = 1\n[[step]]\nstart = \"a\"\n", 4, 14, "power_loss", "found the integer 1"),
            ("[[step]]\npower_loss = \"cut\"\n", 5, 1, "step[1].power_loss", "needs `power_loss = true`"),
            ("[[step]]\nstart = \"a\"\narm = 5\n", 6, 1, "step[1].arm", "needs `power_loss = true`"),
            ("[[step]]\nenqueue = \"noop\"\narm = 5\n", 6, 1, "step[1].arm", "needs `power_loss = true`"),
            ("[[step]]\ncli = [\"migrate\"]\narm = 5\n", 6, 1, "step[1].arm", "needs `power_loss = true`"),
        ];
        for (body, line, col, key, fragment) in cases {
            assert_err(&err(&format!("{HEADER}{body}")), *line, *col, key, fragment);
        }
        // With the header (one line more above the steps).
        let cases: &[(&str, usize, usize, &str, &str)] = &[
            ("[[step]]\npower_loss = \"on\"\n", 6, 14, "step[1].power_loss", "expected \"cut\""),
            ("[[step]]\npower_loss = true\n", 6, 14, "step[1].power_loss", "found the boolean true"),
            ("[[step]]\npower_loss = \"cut\"\ntimeout = \"soon\"\n", 7, 11, "step[1].timeout", "a duration"),
            ("[[step]]\npower_loss = \"cut\"\nsig = \"KILL\"\n", 7, 1, "step[1].sig", "unknown option `sig`"),
            ("[[step]]\nstart = \"a\"\narm = 0\n", 7, 7, "step[1].arm", "an op number of at least 1"),
            ("[[step]]\nstart = \"a\"\narm = \"5\"\n", 7, 7, "step[1].arm", "found \"5\""),
            ("[[step]]\nenqueue = \"noop\"\narm = -3\n", 7, 7, "step[1].arm", "at least 1"),
            (
                "[[step]]\nenqueue = \"noop\"\ncount = 2\nparallel = true\narm = 5\n",
                8,
                1,
                "step[1].parallel",
                "an armed enqueue",
            ),
            ("[[step]]\nenqueue = \"noop\"\ncode = 0\narm = 5\n", 7, 1, "step[1].code", "no `code`"),
            ("[[step]]\nenqueue = \"noop\"\ncount = 2\narm = 5\n", 7, 1, "step[1].count", "`count = 1`"),
            ("[[step]]\ncli = [\"migrate\"]\ncode = 0\narm = 5\n", 7, 1, "step[1].code", "an armed `cli`"),
            ("[[step]]\ncheck = \"invariants\"\narm = 5\n", 7, 1, "step[1].arm", "unknown option `arm`"),
        ];
        for (body, line, col, key, fragment) in cases {
            assert_err(&err(&format!("{HEADER}{pl}{body}")), *line, *col, key, fragment);
        }
    }

    #[test]
    fn sizes_and_percentages() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("512k"), Some(512 << 10));
        assert_eq!(parse_size("2M"), Some(2 << 20));
        assert_eq!(parse_size("2MiB"), Some(2 << 20));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("1.5m"), None);
        assert_eq!(parse_size("m"), None);
        assert_eq!(parse_size("99999999999999999999g"), None);
        assert_eq!(parse_percent("50%"), Some(50.0));
        assert_eq!(parse_percent("12.5%"), Some(12.5));
        assert_eq!(parse_percent("0%"), Some(0.0));
        assert_eq!(parse_percent("100%"), Some(100.0));
        assert_eq!(parse_percent("100.1%"), None);
        assert_eq!(parse_percent("-1%"), None);
        assert_eq!(parse_percent("50"), None);
        assert_eq!(parse_percent("NaN%"), None);
    }

    #[test]
    fn expect_events_max_zero_means_none() {
        let s = parse(&format!("{HEADER}[[step]]\nexpect_events = \"lock.acquired\"\nmax = 0\n"))
            .unwrap_or_else(|e| panic!("{e}"));
        let Step::ExpectEvents(ev) = &s.steps[0].step else { panic!("expect_events") };
        assert_eq!((ev.min, ev.max), (0, Some(0)));
    }

    #[test]
    fn defaults() {
        let text = "description = \"d\"\ncovers = [\"x\"]\nmutant_none = \"harness self-test\"\n\
                    [[step]]\ncheck = \"invariants\"\n\n[[step]]\nexpect_events = \"lock.acquired\"\n";
        let s = parse(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.mutant, MutantExpectation::None("harness self-test".into()));
        assert!(s.requires.is_empty() && s.settings.is_empty());
        assert_eq!(s.timeout, Duration::from_secs(60));
        assert_eq!((s.steps[0].line, s.steps[1].line), (4, 7));
        let Step::Check(check) = &s.steps[0].step else { panic!("check") };
        assert!(check.allow.is_empty() && check.none_running);
        let Step::ExpectEvents(ev) = &s.steps[1].step else { panic!("expect_events") };
        assert_eq!((ev.target.as_str(), ev.min, ev.max), ("*", 1, None));
    }
}
