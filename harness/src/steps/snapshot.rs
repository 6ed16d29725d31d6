//! `snapshot`: gather text from the sandbox (lock file, schema, messages, command output,
//! rows), redact what changes from run to run, and compare it with an insta snapshot.

use std::time::Duration;

use super::cli::{self, Cli};
use super::Verb;
use crate::exec::ctx::{matches_target, Ctx, StepError};
use crate::scenario::kit::{Cx, Field, Res, Scalar, Tbl};
use crate::scenario::tree::{Entry, Val};

/// Compare text gathered from the sandbox with an insta snapshot.
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

const PART_KINDS: &[&str] = &["lock_file", "migrations", "table_info", "messages", "command", "query"];

impl Verb for Snapshot {
    const KEY: &'static str = "snapshot";
    const OPTIONS: &'static [&'static str] = &["parts"];

    fn parse(cx: &mut Cx<'_>, t: &Tbl<'_>, v: &Field<'_>) -> Res<Snapshot> {
        Self::only_its_options(cx, t)?;
        let name = match v.str() {
            Some(s)
                if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) =>
            {
                s.to_owned()
            }
            _ => return Err(cx.wrong(v, "a snapshot name (letters, digits, `_`, `-`, `.`)")),
        };
        let f = cx.need(t, "parts", &v.key_span, String::from("`snapshot` needs `parts` (what to gather)"))?;
        let items = cx.array(&f, "an array of parts like [{ lock_file = true }]")?;
        if items.is_empty() {
            return Err(cx.wrong(&f, "a non-empty array of parts"));
        }
        let parts = items.iter().enumerate().map(|(i, node)| part(cx, &f.item(i, node))).collect::<Res<_>>()?;
        Ok(Snapshot { name, parts })
    }

    fn summary(&self) -> String {
        format!("snapshot {}", self.name)
    }

    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        let mut text = String::new();
        for part in &self.parts {
            match part {
                SnapshotPart::LockFile => {
                    let raw = std::fs::read_to_string(ctx.lock_path()).map_err(|e| StepError {
                        expected: String::from("a readable lock file"),
                        actual: e.to_string(),
                    })?;
                    text.push_str("## lock file\n");
                    for line in raw.lines() {
                        match line.split_once('=') {
                            Some((k, v)) if matches!(k, "role" | "version" | "format") => {
                                text.push_str(&format!("{k}={v}\n"));
                            }
                            Some((k, _)) => text.push_str(&format!("{k}=[redacted]\n")),
                            None => text.push_str(&format!("{line}\n")),
                        }
                    }
                }
                SnapshotPart::Migrations => {
                    text.push_str("## _migrations (name, checksum)\n");
                    for row in ctx.query("SELECT name, checksum FROM _migrations ORDER BY name")? {
                        text.push_str(&format!("{}\n", render_row(&row)));
                    }
                }
                SnapshotPart::TableInfo(t) => {
                    text.push_str(&format!("## PRAGMA table_info({t})\n"));
                    for row in ctx.query(&format!("PRAGMA table_info({t})"))? {
                        text.push_str(&format!("{}\n", render_row(&row)));
                    }
                }
                SnapshotPart::Messages { target, events } => {
                    text.push_str(&format!("## {target}: messages\n"));
                    let st = ctx.shared.lock();
                    for e in st.events.iter().filter(|e| matches_target(target, &e.proc_name)) {
                        if events.is_empty() || events.iter().any(|n| n == e.name()) {
                            let msg = e.json.get("msg").and_then(|m| m.as_str()).unwrap_or("");
                            text.push_str(&format!("{}: {msg}\n", e.name()));
                        }
                    }
                }
                SnapshotPart::Command(args) => {
                    let cli = Cli {
                        args: args.clone(),
                        code: 0,
                        stdout: Vec::new(),
                        stderr: Vec::new(),
                        unprivileged: false,
                        env: vec![(String::from("HOMER_LOG_FORMAT"), String::from("human"))],
                        no_settings: false,
                        timeout: Duration::from_secs(30),
                        arm: None,
                    };
                    let (out, err) = cli::run(ctx, &cli)?;
                    text.push_str(&format!("## homerd {}\n", args.join(" ")));
                    text.push_str(&String::from_utf8_lossy(&out));
                    if !err.is_empty() {
                        text.push_str("## (stderr)\n");
                        text.push_str(&String::from_utf8_lossy(&err));
                    }
                }
                SnapshotPart::Query(q) => {
                    text.push_str(&format!("## {q}\n"));
                    for row in ctx.query(q)? {
                        text.push_str(&format!("{}\n", render_row(&row)));
                    }
                }
            }
        }
        let text = redact(ctx, &text);
        crate::snapshot::assert(&ctx.opts.snapshot_dir, &self.name, &text)
            .map_err(|diff| StepError { expected: format!("snapshot {} unchanged", self.name), actual: diff })
    }
}

/// One part: exactly one kind key (`messages` may add `events`).
fn part(cx: &Cx, f: &Field) -> Res<SnapshotPart> {
    let t = cx.table(f, "a part like { lock_file = true }")?;
    let kinds: Vec<&Entry> = t.sorted().into_iter().filter(|e| PART_KINDS.contains(&e.key.as_str())).collect();
    let kind = match kinds.as_slice() {
        [kind] => *kind,
        [] => return Err(cx.wrong(f, &format!("a part with one of: {}", PART_KINDS.join(", ")))),
        [a, b, ..] => {
            return Err(cx.err(
                &b.span,
                t.key_path(&b.key),
                format!("a part has exactly one kind, found `{}` and `{}`", a.key, b.key),
            ))
        }
    };
    let extra: &[&str] = if kind.key == "messages" { &["events"] } else { &[] };
    cx.only(&t, &[&[kind.key.as_str()], extra].concat(), &format!("a `{}` part", kind.key))?;
    let v = t.field(kind);
    let flag = |v: &Field| match v.node.val {
        Val::Bool(true) => Ok(()),
        _ => Err(cx.wrong(v, "true")),
    };
    Ok(match kind.key.as_str() {
        "lock_file" => flag(&v).map(|()| SnapshotPart::LockFile)?,
        "migrations" => flag(&v).map(|()| SnapshotPart::Migrations)?,
        "table_info" => SnapshotPart::TableInfo(cx.text(&v)?),
        "messages" => SnapshotPart::Messages {
            target: cx.text(&v)?,
            events: cx.opt(&t, "events", Cx::strings)?.unwrap_or_default(),
        },
        "command" => SnapshotPart::Command(cx.nonempty_strings(&v)?),
        _ => SnapshotPart::Query(cx.text(&v)?),
    })
}

/// Replace volatile values (paths, pids, times) with stable tokens.
fn redact(ctx: &Ctx, text: &str) -> String {
    let mut out = text.replace(&*ctx.sandbox.to_string_lossy(), "[SANDBOX]");
    out = out.replace(&*ctx.daemon_bin.to_string_lossy(), "[HOMERD]");
    let pids: Vec<u32> = ctx.shared.lock().procs.iter().map(|p| p.pid).collect();
    let re_time = regex::Regex::new(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d+)?Z?").expect("valid regex");
    out = re_time.replace_all(&out, "[TIME]").into_owned();
    let re_dur = regex::Regex::new(r"\b\d+(\.\d+)?\s?(ms|s|µs)\b").expect("valid regex");
    out = re_dur.replace_all(&out, "[DURATION]").into_owned();
    for pid in pids {
        let re = regex::Regex::new(&format!(r"\b{pid}\b")).expect("valid regex");
        out = re.replace_all(&out, "[PID]").into_owned();
    }
    out
}

/// A row as `a | b | NULL`.
fn render_row(row: &[Scalar]) -> String {
    row.iter()
        .map(|v| match v {
            Scalar::Null => String::from("NULL"),
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Text(t) => t.clone(),
            Scalar::Bool(b) => b.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" | ")
}
