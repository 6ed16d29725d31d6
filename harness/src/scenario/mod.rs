//! Scenario files: the data model of a file and its validating parser.
//!
//! A scenario is one TOML file in `scenarios/`: a header (what it covers, the mutant it
//! must fail on, what it requires), the `[settings]` every daemon and CLI call gets, and
//! ordered `[[step]]` tables. Each step table has exactly one *verb* key whose value names
//! the step's subject, plus that verb's options; every verb lives in its own module under
//! [`crate::steps`], which also holds the registry of verbs. `scenarios/README.md`
//! documents every step with an example.
//!
//! Invariant: a file that parses is fully validated — every key known, every value of the
//! right type, every duration well-formed — so a malformed file is rejected before any
//! process starts, with `file:line:col`, the key and what was expected ([`ParseError`]).
//!
//! Strings in steps may use placeholders, substituted when the step runs: `{sandbox}`,
//! `{home}`, `{lock}` (the default lock file), `{db}`, `{probe}` (the effects probe
//! command, for `exec` jobs) and `{job:N}` (the id printed by the N-th acknowledged
//! enqueue, 1-based).
//!
//! - `tree`: TOML text to a tree of values with byte spans (`toml_edit`), spans to
//!   `line:col`;
//! - `kit`: the validation kit the step parsers share (`Cx`), and the value
//!   types [`Scalar`] and [`Pattern`];
//! - this module: the header, `[settings]`, and picking each step's verb.

pub(crate) mod kit;
#[cfg(test)]
pub(crate) mod tests;
pub(crate) mod tree;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::steps;
pub use crate::steps::Step;
use kit::{describe, did_you_mean, Cx, Field, Res, Tbl};
pub use kit::{Pattern, Scalar};
use tree::{Entry, Node, Source, Val};

/// One parsed scenario file.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub path: PathBuf,
    /// File stem, e.g. `pitfall-01-dual-start`.
    pub name: String,
    pub description: String,
    /// What the scenario demonstrates, e.g. `["failure mode 1"]` or `["checklist: heartbeat"]`.
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
    /// `[settings] backends = ["sqlite", "postgres"]`: the queues the scenario is run on,
    /// once each (default `["sqlite"]`). Never passed to homerd as a setting.
    pub backends: Vec<Backend>,
    /// The backend this run uses ([`Scenario::for_backend`]); the first of `backends` as parsed.
    pub backend: Backend,
    /// `[settings] hosts = true` (PostgreSQL only): the homes its `start` steps name, in
    /// order of first use; each runs as a host — a network namespace of its own that
    /// reaches the run's server over its own link, which `partition`/`heal`/`delay` act
    /// on. Empty without it. Never passed to homerd as a setting.
    pub hosts: Vec<String>,
    pub steps: Vec<StepAt>,
}

/// The queue a scenario run drives: SQLite in the home (`<home>/homer.db`), or a
/// throwaway PostgreSQL server the run starts in its sandbox (`HOMER_DATABASE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub const ALL: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    /// `sqlite` or `postgres`.
    pub fn parse(s: &str) -> Option<Backend> {
        Backend::ALL.into_iter().find(|b| b.name() == s)
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Scenario {
    /// The scenario as run on `backend`: a run on SQLite keeps the file's name, one on
    /// PostgreSQL is reported as `NAME [postgres]`. `None` when the file does not opt in.
    pub fn for_backend(&self, backend: Backend) -> Option<Scenario> {
        if !self.backends.contains(&backend) {
            return None;
        }
        let mut run = self.clone();
        run.backend = backend;
        run.name = match backend {
            Backend::Sqlite => self.stem(),
            Backend::Postgres => format!("{} [postgres]", self.stem()),
        };
        Some(run)
    }

    /// One scenario per backend it opts into (all of them, or only `only`), in
    /// [`Backend::ALL`] order.
    pub fn runs(&self, only: Option<Backend>) -> Vec<Scenario> {
        Backend::ALL.into_iter().filter(|b| only.is_none_or(|o| o == *b)).filter_map(|b| self.for_backend(b)).collect()
    }

    /// The file stem, e.g. `pitfall-01-dual-start` (whatever the backend).
    pub fn stem(&self) -> String {
        self.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
    }
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
    let root = tree::parse(&src)?;
    let mut cx = Cx {
        src,
        requires: Vec::new(),
        home_size: None,
        power_loss: false,
        labels: Vec::new(),
        postgres: false,
        postgres_only: false,
        hosts: false,
        homes: Vec::new(),
    };
    cx.scenario(&root)
}

/// Parse a duration in homerd's one grammar (`250ms`, `5s`, `1h30m`, `2d 3h`, `1.5s`;
/// whole milliseconds, at most 36500d): `homerd::duration::parse_duration`, so a scenario
/// file reads a duration exactly as the daemon it drives does. Used for settings scaling too.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    homerd::duration::parse_duration(s)
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

impl Cx<'_> {
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
                let hint = if steps::VERBS.contains(&e.key.as_str()) || steps::is_any_option(&e.key) {
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

        let covers = top.get("covers").ok_or_else(|| missing("covers", "e.g. [\"failure mode 1\"]"))?;
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
        let mut backends = vec![Backend::Sqlite];
        let mut hosts = None;
        if let Some(f) = top.get("settings") {
            let t = self.table(&f, "a [settings] table")?;
            if let Some(b) = t.get("backends") {
                backends = self.backends(&b)?;
            }
            if let Some(h) = t.get("hosts") {
                hosts = Some((self.boolean(&h)?, h));
            }
            self.settings(&f, "", &mut settings)?;
        }
        settings.sort_by_key(|(at, _, _)| *at);
        let settings = settings.into_iter().map(|(_, k, v)| (k, v)).collect();
        self.postgres = backends.contains(&Backend::Postgres);
        self.postgres_only = backends == [Backend::Postgres];
        if let Some((on, f)) = hosts {
            if on && !self.postgres_only {
                return Err(self.err(
                    &f.key_span,
                    f.path.clone(),
                    "`hosts = true` runs each home as a host of the run's PostgreSQL server: it needs \
                     `backends = [\"postgres\"]` (a SQLite home has no server to be cut off from)",
                ));
            }
            self.hosts = on;
        }
        if self.postgres {
            // What a run on PostgreSQL could not do: the header's SQLite-file features.
            for key in ["power_loss", "home_size"] {
                if let Some(f) = top.get(key).filter(|f| key != "power_loss" || matches!(f.node.val, Val::Bool(true))) {
                    return Err(self.err(
                        &f.key_span,
                        f.path.clone(),
                        format!(
                            "`{key}` acts on the SQLite database in the home: a scenario with it runs on SQLite \
                             only (drop \"postgres\" from `backends`)"
                        ),
                    ));
                }
            }
        }

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
            backend: backends[0],
            backends,
            hosts: if self.hosts { self.homes.clone() } else { Vec::new() },
            steps,
        })
    }

    /// `backends = ["sqlite", "postgres"]`: a non-empty array of distinct backend names.
    fn backends(&self, f: &Field) -> Res<Vec<Backend>> {
        const EXPECTED: &str = "a non-empty array of \"sqlite\" and \"postgres\", like [\"sqlite\", \"postgres\"]";
        let items = self.array(f, EXPECTED)?;
        if items.is_empty() {
            return Err(self.wrong(f, EXPECTED));
        }
        let mut out = Vec::new();
        for (i, node) in items.iter().enumerate() {
            let item = f.item(i, node);
            let Some(b) = item.str().and_then(Backend::parse) else {
                return Err(self.wrong(&item, "\"sqlite\" or \"postgres\""));
            };
            if out.contains(&b) {
                return Err(self.err(&item.span(), item.path.clone(), format!("`{b}` is named twice")));
            }
            out.push(b);
        }
        out.sort();
        Ok(out)
    }

    /// `[settings]`, flattened: `[settings.lanes.io] concurrency = 2` is `lanes.io.concurrency`.
    fn settings(&self, f: &Field, prefix: &str, out: &mut Vec<(usize, String, String)>) -> Res<()> {
        let t = self.table(f, "a [settings] table")?;
        for e in t.entries {
            let field = t.field(e);
            if e.key.is_empty() || e.key.contains(['=', ' ', '\t']) {
                return Err(self.err(&e.span, field.path, "expected a setting name without spaces or `=`"));
            }
            if prefix.is_empty() && (e.key == "backends" || e.key == "hosts") {
                continue; // the harness's own settings (`Cx::backends`, `hosts`), never homerd's
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

        let verbs: Vec<&Entry> = sorted.iter().copied().filter(|e| steps::VERBS.contains(&e.key.as_str())).collect();
        let verb = match verbs.as_slice() {
            [verb] => *verb,
            [] => {
                if let Some(e) = sorted.iter().find(|e| !steps::is_any_option(&e.key)) {
                    return Err(self.unknown(&t, e, &format!("step verb `{}`", e.key), steps::VERBS));
                }
                let found = if sorted.is_empty() {
                    String::from("an empty step")
                } else {
                    format!("only options ({})", sorted.iter().map(|e| e.key.as_str()).collect::<Vec<_>>().join(", "))
                };
                return Err(self.err(
                    &at,
                    f.path.clone(),
                    format!("expected a step verb (one of: {}), found {found}", steps::VERBS.join(", ")),
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
        let step = Step::parse(&verb.key, self, &t, &v)?;
        if self.postgres {
            if let Some(why) = sqlite_only(&step) {
                return Err(self.err(
                    &v.key_span,
                    v.path.clone(),
                    format!(
                        "{why}: a scenario with this step runs on SQLite only (drop \"postgres\" from \
                         `[settings] backends`, and say why in scenarios/README.md)"
                    ),
                ));
            }
        }
        Ok(StepAt { line, step })
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
}

/// Why a step only means something on the SQLite backend, if it does: it acts on the
/// database file itself, or compares with one snapshot file per step (a second backend's
/// output would need its own).
fn sqlite_only(step: &Step) -> Option<&'static str> {
    match step {
        Step::HoldWrite(_) => Some("`hold_write` holds SQLite's write lock on the home's database"),
        Step::PowerLoss(_) => Some("`power_loss` drops un-synced writes of the SQLite file"),
        Step::Sql(s) if s.write => Some("`sql` with `write` changes the SQLite file directly"),
        Step::Sql(s) if s.database.is_some() => Some("`sql` with `database` reads another SQLite file"),
        Step::Snapshot(_) => Some("`snapshot` compares with one snapshot file (schema and output are SQLite's)"),
        _ => None,
    }
}
