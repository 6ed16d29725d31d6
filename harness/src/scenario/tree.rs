//! TOML text -> a tree of values that keep their byte spans, and spans -> `line:col`.
//!
//! The tree comes from `toml_edit`'s parser, which keeps the span of every key and value
//! (an implicit table, made by a dotted key or a nested header, has none: messages point
//! at its key instead). Keys stay in their table's order; [`Tbl::sorted`] restores file
//! order where it matters.
//!
//! [`Tbl::sorted`]: super::kit::Tbl::sorted

use std::ops::Range;
use std::path::Path;

use toml_edit::{ImDocument, Item, Key, Value};

use super::ParseError;

pub(crate) type Span = Option<Range<usize>>;

/// A TOML value and where it is in the text (`None` for implicit tables).
pub(crate) struct Node {
    pub(crate) span: Span,
    pub(crate) val: Val,
}

pub(crate) enum Val {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Datetime(String),
    Array(Vec<Node>),
    Table(Vec<Entry>),
}

pub(crate) struct Entry {
    pub(crate) key: String,
    pub(crate) span: Span,
    pub(crate) node: Node,
}

/// Parse the whole text; a syntax error (or a duplicate key) comes back with its position.
pub(crate) fn parse(src: &Source) -> Result<Node, ParseError> {
    let doc = ImDocument::parse(src.text).map_err(|e| src.toml_error(&e))?;
    Ok(table(doc.as_table()))
}

fn table(t: &toml_edit::Table) -> Node {
    let entries = t.iter().filter_map(|(k, _)| {
        let (key, item) = t.get_key_value(k)?;
        Some(entry(key, item_node(item)))
    });
    Node { span: t.span(), val: Val::Table(entries.collect()) }
}

fn entry(key: &Key, node: Node) -> Entry {
    Entry { key: key.get().to_owned(), span: key.span(), node }
}

fn item_node(item: &Item) -> Node {
    match item {
        Item::Value(v) => value(v),
        Item::Table(t) => table(t),
        Item::ArrayOfTables(a) => Node { span: a.span(), val: Val::Array(a.iter().map(table).collect()) },
        Item::None => Node { span: None, val: Val::Table(Vec::new()) },
    }
}

fn value(v: &Value) -> Node {
    let val = match v {
        Value::String(s) => Val::Str(s.value().clone()),
        Value::Integer(i) => Val::Int(*i.value()),
        Value::Float(x) => Val::Float(*x.value()),
        Value::Boolean(b) => Val::Bool(*b.value()),
        Value::Datetime(d) => Val::Datetime(d.value().to_string()),
        Value::Array(items) => Val::Array(items.iter().map(value).collect()),
        Value::InlineTable(t) => Val::Table(
            t.iter().filter_map(|(k, _)| t.get_key_value(k)).map(|(key, item)| entry(key, item_node(item))).collect(),
        ),
    };
    Node { span: v.span(), val }
}

/// The text being parsed, for turning byte offsets into 1-based line:col.
pub(crate) struct Source<'a> {
    pub(crate) file: &'a Path,
    pub(crate) text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> Source<'a> {
    pub(crate) fn new(file: &'a Path, text: &'a str) -> Self {
        let line_starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        Source { file, text, line_starts }
    }

    pub(crate) fn line_col(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let start = self.line_starts[line - 1];
        (line, self.text[start..offset].chars().count() + 1)
    }

    /// An error at `span` (1:1 when there is none, e.g. a missing top-level key).
    pub(crate) fn error(&self, span: &Span, key: impl Into<String>, message: impl Into<String>) -> ParseError {
        let (line, col) = span.as_ref().map_or((1, 1), |s| self.line_col(s.start));
        ParseError { file: self.file.to_path_buf(), line, col, key: key.into(), message: message.into() }
    }

    fn toml_error(&self, e: &toml_edit::TomlError) -> ParseError {
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
