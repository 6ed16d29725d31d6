//! The validation kit every step parser uses: a value with its key path ([`Field`]), a
//! table ([`Tbl`]), and [`Cx`], which turns a value of the wrong shape into a
//! [`ParseError`] that names the file, line, column and key and says what was expected.
//! Also the shared value types ([`Scalar`], [`Pattern`]) and their parsers.
//!
//! Invariant: every check here fails with "expected X, found Y" at the offending value
//! (or at its key, or at the verb, for a missing one), never with a bare "invalid".

use std::time::Duration;

use super::tree::{Entry, Node, Source, Span, Val};
use super::{parse_duration, ParseError, Requirement};

pub(crate) type Res<T> = Result<T, ParseError>;

/// An output expectation: `contains` (default) or `!contains` (must not appear), matched as
/// a regular expression when written `re:...`.
#[derive(Clone, Debug)]
pub struct Pattern {
    pub negated: bool,
    pub regex: bool,
    pub text: String,
}

/// A value in `fields` and `rows`: SQL NULL (or a missing event field) is `{ null = true }`.
#[derive(Clone, Debug, PartialEq)]
pub enum Scalar {
    Null,
    Int(i64),
    Float(f64),
    Text(String),
    Bool(bool),
}

/// A value with the key path that reached it (`step[3].timeout`, 1-based indices).
pub(crate) struct Field<'a> {
    pub(crate) path: String,
    pub(crate) key_span: Span,
    pub(crate) node: &'a Node,
}

impl<'a> Field<'a> {
    /// Where to point at the value: its own span, else its key's.
    pub(crate) fn span(&self) -> Span {
        self.node.span.clone().or_else(|| self.key_span.clone())
    }

    pub(crate) fn item(&self, index: usize, node: &'a Node) -> Field<'a> {
        Field {
            path: format!("{}[{}]", self.path, index + 1),
            key_span: node.span.clone().or_else(|| self.span()),
            node,
        }
    }

    pub(crate) fn str(&self) -> Option<&'a str> {
        match &self.node.val {
            Val::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// A table with its key path.
pub(crate) struct Tbl<'a> {
    pub(crate) path: String,
    pub(crate) entries: &'a [Entry],
}

impl<'a> Tbl<'a> {
    pub(crate) fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub(crate) fn field(&self, e: &'a Entry) -> Field<'a> {
        Field { path: self.key_path(&e.key), key_span: e.span.clone(), node: &e.node }
    }

    pub(crate) fn get(&self, key: &str) -> Option<Field<'a>> {
        self.entries.iter().find(|e| e.key == key).map(|e| self.field(e))
    }

    /// Entries in file order.
    pub(crate) fn sorted(&self) -> Vec<&'a Entry> {
        let mut entries: Vec<&Entry> = self.entries.iter().collect();
        entries.sort_by_key(|e| e.span.as_ref().or(e.node.span.as_ref()).map_or(usize::MAX, |s| s.start));
        entries
    }
}

/// "did you mean" for a key close to one of `candidates` (Levenshtein distance at most 2,
/// and shorter than the key itself), else nothing.
pub(crate) fn did_you_mean(key: &str, candidates: &[&str]) -> String {
    candidates
        .iter()
        .map(|c| (strsim::levenshtein(key, c), c))
        .filter(|(d, _)| *d <= 2 && *d < key.chars().count())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| format!(" (did you mean `{c}`?)"))
        .unwrap_or_default()
}

pub(crate) fn one_of(candidates: &[&str]) -> String {
    candidates.iter().map(|c| format!("{c:?}")).collect::<Vec<_>>().join(", ")
}

/// What a value is, for "expected X, found Y".
pub(crate) fn describe(node: &Node) -> String {
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
pub(crate) fn parse_signed_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    let (negative, rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest.starts_with(['+', '-']) || rest.trim() != rest {
        return None;
    }
    let ms = i64::try_from(parse_duration(rest).ok()?.as_millis()).ok()?;
    Some(if negative { -ms } else { ms })
}

/// Parse an output pattern: optional `!` (negated), then optional `re:` (regex).
pub(crate) fn parse_pattern(s: &str) -> Pattern {
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
pub(crate) struct Cx<'a> {
    pub(crate) src: Source<'a>,
    pub(crate) requires: Vec<Requirement>,
    /// The header's `home_size` (`op = "fill"` is allowed only on a tmpfs home).
    pub(crate) home_size: Option<u64>,
    /// The header's `power_loss` (the `power_loss` step and `arm` need it).
    pub(crate) power_loss: bool,
    /// Labels of `op = "remember"` steps so far.
    pub(crate) labels: Vec<String>,
    /// `[settings] backends` includes `postgres` (steps that act on the SQLite file are refused).
    pub(crate) postgres: bool,
    /// `[settings] backends = ["postgres"]` alone (`server` steps need the run's server).
    pub(crate) postgres_only: bool,
    /// `[settings] hosts = true`: every `start` runs on its home's host (a network
    /// namespace); `partition`, `heal` and `delay` need it.
    pub(crate) hosts: bool,
    /// The homes `start` steps so far run on (with `hosts`, the hosts a network step may name).
    pub(crate) homes: Vec<String>,
}

impl Cx<'_> {
    pub(crate) fn err(&self, span: &Span, key: impl Into<String>, message: impl Into<String>) -> ParseError {
        self.src.error(span, key, message)
    }

    pub(crate) fn wrong(&self, f: &Field, expected: &str) -> ParseError {
        self.err(&f.span(), f.path.clone(), format!("expected {expected}, found {}", describe(f.node)))
    }

    /// Reject keys of `t` outside `allowed`.
    pub(crate) fn only(&self, t: &Tbl, allowed: &[&str], context: &str) -> Res<()> {
        for e in t.sorted() {
            if !allowed.contains(&e.key.as_str()) {
                return Err(self.unknown(t, e, &format!("option `{}` for {context}", e.key), allowed));
            }
        }
        Ok(())
    }

    /// Key `e` of `t` is none of `expected`: the error says `unknown {what}`, lists them and
    /// suggests the closest.
    pub(crate) fn unknown(&self, t: &Tbl, e: &Entry, what: &str, expected: &[&str]) -> ParseError {
        self.err(
            &e.span,
            t.key_path(&e.key),
            format!("unknown {what}; expected one of: {}{}", expected.join(", "), did_you_mean(&e.key, expected)),
        )
    }

    /// A required key of a step: missing means an error at the verb (`anchor`).
    pub(crate) fn need<'n>(&self, t: &Tbl<'n>, key: &str, anchor: &Span, message: String) -> Res<Field<'n>> {
        t.get(key).ok_or_else(|| self.err(anchor, t.key_path(key), message))
    }

    pub(crate) fn table<'n>(&self, f: &Field<'n>, expected: &str) -> Res<Tbl<'n>> {
        match &f.node.val {
            Val::Table(entries) => Ok(Tbl { path: f.path.clone(), entries }),
            _ => Err(self.wrong(f, expected)),
        }
    }

    pub(crate) fn array<'n>(&self, f: &Field<'n>, expected: &str) -> Res<&'n [Node]> {
        match &f.node.val {
            Val::Array(items) => Ok(items),
            _ => Err(self.wrong(f, expected)),
        }
    }

    pub(crate) fn string(&self, f: &Field) -> Res<String> {
        f.str().map(str::to_owned).ok_or_else(|| self.wrong(f, "a string"))
    }

    pub(crate) fn text(&self, f: &Field) -> Res<String> {
        match f.str() {
            Some(s) if !s.trim().is_empty() => Ok(s.to_owned()),
            _ => Err(self.wrong(f, "a non-empty string")),
        }
    }

    /// A process name for `start`: non-empty, without the `*` that targets use as a wildcard.
    pub(crate) fn name(&self, f: &Field) -> Res<String> {
        match f.str() {
            Some(s) if !s.is_empty() && !s.contains(['*', ' ']) => Ok(s.to_owned()),
            _ => Err(self.wrong(f, "a process name (non-empty, no spaces or `*`)")),
        }
    }

    pub(crate) fn int(&self, f: &Field, min: i64, max: i64, expected: &str) -> Res<i64> {
        match &f.node.val {
            Val::Int(i) if (min..=max).contains(i) => Ok(*i),
            _ => Err(self.wrong(f, expected)),
        }
    }

    pub(crate) fn count(&self, f: &Field, min: u32) -> Res<u32> {
        let n = self.int(f, min.into(), u32::MAX.into(), &format!("an integer of at least {min}"))?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    pub(crate) fn code(&self, f: &Field) -> Res<i32> {
        let n = self.int(f, i32::MIN.into(), i32::MAX.into(), "an integer exit code")?;
        Ok(i32::try_from(n).unwrap_or_default())
    }

    pub(crate) fn boolean(&self, f: &Field) -> Res<bool> {
        match f.node.val {
            Val::Bool(b) => Ok(b),
            _ => Err(self.wrong(f, "a boolean (true or false)")),
        }
    }

    pub(crate) fn strings(&self, f: &Field) -> Res<Vec<String>> {
        let items = self.array(f, "an array of strings")?;
        items.iter().enumerate().map(|(i, node)| self.string(&f.item(i, node))).collect()
    }

    pub(crate) fn nonempty_strings(&self, f: &Field) -> Res<Vec<String>> {
        let items = self.strings(f)?;
        if items.is_empty() {
            return Err(self.wrong(f, "a non-empty array of strings"));
        }
        Ok(items)
    }

    pub(crate) fn duration(&self, f: &Field) -> Res<Duration> {
        let Some(text) = f.str() else { return Err(self.wrong(f, "a duration like \"250ms\", \"5s\" or \"1h30m\"")) };
        parse_duration(text).map_err(|e| self.err(&f.span(), f.path.clone(), e))
    }

    pub(crate) fn signed_ms(&self, f: &Field) -> Res<i64> {
        f.str()
            .and_then(parse_signed_ms)
            .ok_or_else(|| self.wrong(f, "a signed duration like \"+90s\", \"-2h\" or \"-1h30m\""))
    }

    /// An inline table of strings (`env`), in file order.
    pub(crate) fn str_map(&self, f: &Field) -> Res<Vec<(String, String)>> {
        let t = self.table(f, "a table of strings like { NAME = \"value\" }")?;
        t.sorted().into_iter().map(|e| Ok((e.key.clone(), self.string(&t.field(e))?))).collect()
    }

    /// A string, integer, float, boolean, or `{ null = true }` for SQL NULL.
    pub(crate) fn scalar(&self, f: &Field) -> Res<Scalar> {
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
    pub(crate) fn scalar_map(&self, f: &Field) -> Res<Vec<(String, Scalar)>> {
        let t = self.table(f, "a table of field values like { name = \"a\" }")?;
        t.sorted().into_iter().map(|e| Ok((e.key.clone(), self.scalar(&t.field(e))?))).collect()
    }

    /// `rows = [[1, "a"], [2, { null = true }]]`.
    pub(crate) fn rows(&self, f: &Field) -> Res<Vec<Vec<Scalar>>> {
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
    pub(crate) fn patterns(&self, f: &Field) -> Res<Vec<Pattern>> {
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

    pub(crate) fn opt<'n, T>(
        &self,
        t: &Tbl<'n>,
        key: &str,
        parse: impl FnOnce(&Self, &Field<'n>) -> Res<T>,
    ) -> Res<Option<T>> {
        t.get(key).map(|f| parse(self, &f)).transpose()
    }

    pub(crate) fn unprivileged(&self, t: &Tbl) -> Res<bool> {
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
    /// scenario whose header records (`power_loss = true`).
    pub(crate) fn arm(&self, t: &Tbl) -> Res<Option<u64>> {
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
}
