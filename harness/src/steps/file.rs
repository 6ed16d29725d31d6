//! `file`: operate on a file in the sandbox — damage it, replace it, move it, fill the
//! disk with it — or check its existence, bytes and mode.

use std::path::Path;
use std::time::SystemTime;

use super::{Mark, MarkKind, Verb};
use crate::exec::ctx::{fail, Ctx, StepError};
use crate::scenario::kit::{one_of, Cx, Field, Res, Tbl};
use crate::scenario::tree::Val;

/// Operate on a file inside the sandbox.
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

impl Verb for FileStep {
    const KEY: &'static str = "file";
    const OPTIONS: &'static [&'static str] =
        &["op", "contents", "target", "mode", "hex", "to", "label", "offset", "len", "min_size"];

    fn parse(cx: &mut Cx<'_>, t: &Tbl<'_>, v: &Field<'_>) -> Res<FileStep> {
        let path = cx.text(v)?;
        let op_field = cx.need(t, "op", &v.key_span, format!("`file` needs `op` (one of {})", one_of(FILE_OPS)))?;
        let op = match op_field.str() {
            Some(op) if FILE_OPS.contains(&op) => op,
            _ => return Err(cx.wrong(&op_field, &format!("one of {}", one_of(FILE_OPS)))),
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
        cx.only(t, &[&["file", "op"], opts].concat(), &format!("`file` with `op = \"{op}\"`"))?;
        let need = |key: &str, what: &str| {
            cx.need(t, key, &op_field.key_span, format!("`op = \"{op}\"` needs `{key}` ({what})"))
        };
        let op = match op {
            "remove" => FileOp::Remove,
            "replace" => {
                FileOp::Replace { contents: cx.opt(t, "contents", Cx::string)?.unwrap_or_default().into_bytes() }
            }
            "symlink" => FileOp::Symlink { target: cx.text(&need("target", "where the link points")?)? },
            "chmod" => FileOp::Chmod { mode: mode(cx, &need("mode", "e.g. \"0500\"")?)? },
            "write" => {
                let contents = match (t.get("contents"), t.get("hex")) {
                    (Some(_), Some(hex)) => {
                        return Err(cx.err(&hex.key_span, hex.path.clone(), "give `contents` or `hex`, not both"))
                    }
                    (Some(c), None) => cx.string(&c)?.into_bytes(),
                    (None, Some(hex)) => {
                        let s = cx.string(&hex)?;
                        decode_hex(&s).map_err(|why| {
                            cx.err(
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
            "copy" => FileOp::Copy { to: cx.text(&need("to", "the destination path")?)? },
            "remember" => {
                let label = cx.text(&need("label", "a name for what is remembered")?)?;
                cx.labels.push(label.clone());
                FileOp::Remember { label }
            }
            "unchanged" => {
                let f = need("label", "the label of an earlier `op = \"remember\"`")?;
                let label = cx.text(&f)?;
                if !cx.labels.contains(&label) {
                    return Err(cx.wrong(&f, "the label of an earlier `op = \"remember\"` step"));
                }
                FileOp::Unchanged { label }
            }
            "exists" => FileOp::Exists {
                min_size: cx
                    .opt(t, "min_size", |cx, f| cx.int(f, 0, i64::MAX, "a size in bytes (an integer >= 0)"))?
                    .map(|n| n as u64),
            },
            "absent" => FileOp::Absent,
            "corrupt" => FileOp::Corrupt {
                offset: offset(cx, &need("offset", "a byte offset like 4096 or a percentage like \"50%\"")?)?,
                len: cx
                    .opt(t, "len", |cx, f| cx.int(f, 1, i64::MAX, "a length in bytes of at least 1"))?
                    .map_or(600, |n| n as u64),
            },
            "rename" => FileOp::Rename { to: cx.text(&need("to", "the new path")?)? },
            "fill" => {
                if cx.home_size.is_none() {
                    return Err(cx.err(
                        &op_field.span(),
                        op_field.path.clone(),
                        "`op = \"fill\"` fills a filesystem: only a tmpfs home may be filled (set `home_size` in the header)",
                    ));
                }
                FileOp::Fill
            }
            _ => FileOp::Mode { mode: mode(cx, &need("mode", "the expected permission bits, e.g. \"0600\"")?)? },
        };
        Ok(FileStep { path, op })
    }

    fn summary(&self) -> String {
        match &self.op {
            // Modes read as octal, as they were written.
            FileOp::Chmod { mode } => format!("file chmod {mode:04o} on {}", self.path),
            FileOp::Mode { mode } => format!("file mode {mode:04o} on {}", self.path),
            op => format!("file {op:?} on {}", self.path).chars().take(120).collect(),
        }
    }

    /// Only the operations that change something are faults; checks are ordinary steps.
    fn mark(&self) -> Option<Mark> {
        let what = match &self.op {
            FileOp::Remove => "deleted",
            FileOp::Replace { .. } => "replaced",
            FileOp::Symlink { .. } => "made a symlink",
            FileOp::Chmod { .. } => "chmod",
            FileOp::Write { .. } => "written",
            FileOp::Mkdir => "made a directory",
            FileOp::Corrupt { .. } => "damaged",
            FileOp::Rename { .. } => "moved aside",
            FileOp::Fill => "disk filled",
            FileOp::Copy { .. }
            | FileOp::Remember { .. }
            | FileOp::Unchanged { .. }
            | FileOp::Exists { .. }
            | FileOp::Absent
            | FileOp::Mode { .. } => return None,
        };
        // The file's own name says which: `{lock}` -> `lock`, `{home}/homer.db-wal` -> `homer.db-wal`.
        let name = self.path.rsplit('/').next().unwrap_or(&self.path).trim_matches(|c| c == '{' || c == '}');
        Some(Mark { kind: MarkKind::File, label: format!("{name} {what}"), target: None })
    }

    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        use std::os::unix::fs::PermissionsExt;
        let path = ctx.path(&self.path)?;
        let io = |what: &str, e: std::io::Error| StepError {
            expected: format!("{what} {}", path.display()),
            actual: e.to_string(),
        };
        match &self.op {
            FileOp::Remove => {
                if path.is_dir() && !path.is_symlink() {
                    std::fs::remove_dir_all(&path).map_err(|e| io("remove", e))
                } else {
                    std::fs::remove_file(&path).map_err(|e| io("remove", e))
                }
            }
            FileOp::Replace { contents } => {
                let tmp = path.with_extension("harness-replace");
                std::fs::write(&tmp, contents).map_err(|e| io("write a replacement for", e))?;
                std::fs::rename(&tmp, &path).map_err(|e| io("rename over", e))
            }
            FileOp::Symlink { target } => {
                let target = ctx.path(target)?;
                std::os::unix::fs::symlink(&target, &path).map_err(|e| io("symlink", e))
            }
            FileOp::Chmod { mode } => {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).map_err(|e| io("chmod", e))
            }
            FileOp::Write { contents } => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| io("create the folder of", e))?;
                }
                std::fs::write(&path, contents).map_err(|e| io("write", e))
            }
            FileOp::Mkdir => std::fs::create_dir_all(&path).map_err(|e| io("mkdir", e)),
            FileOp::Copy { to } => {
                let to = ctx.path(to)?;
                if let Some(parent) = to.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| io("create the folder of", e))?;
                }
                std::fs::copy(&path, &to).map(|_| ()).map_err(|e| io("copy", e))
            }
            FileOp::Remember { label } => {
                let remembered = Remembered::read(&path).map_err(|e| io("read", e))?;
                ctx.remembered.insert(label.clone(), remembered);
                Ok(())
            }
            FileOp::Unchanged { label } => {
                let Some(before) = ctx.remembered.get(label) else {
                    return fail(format!("a `remember` step labelled {label}"), String::from("none ran before"));
                };
                let now = Remembered::read(&path).map_err(|e| io("read", e))?;
                if now.bytes != before.bytes {
                    return fail(
                        format!("{} byte-for-byte as remembered ({} bytes)", path.display(), before.bytes.len()),
                        format!("{} bytes, different content", now.bytes.len()),
                    );
                }
                if now.mtime != before.mtime {
                    return fail(
                        format!("{} mtime unchanged", path.display()),
                        format!("{:?} -> {:?}", before.mtime, now.mtime),
                    );
                }
                // A database's content is the file and its WAL: a WAL that appeared,
                // vanished (checkpointed into something else) or changed is a change.
                let wal = format!("{}-wal", path.display());
                match (&before.wal, &now.wal) {
                    (None, None) => Ok(()),
                    (Some(a), Some(b)) if a == b => Ok(()),
                    (None, Some(b)) => {
                        fail(format!("no {wal}, as remembered"), format!("it appeared ({} bytes)", b.len()))
                    }
                    (Some(a), None) => fail(format!("{wal} as remembered ({} bytes)", a.len()), "it is gone"),
                    (Some(a), Some(b)) => fail(
                        format!("{wal} byte-for-byte as remembered ({} bytes)", a.len()),
                        format!("{} bytes, different content", b.len()),
                    ),
                }
            }
            FileOp::Corrupt { offset, len } => {
                let at = crate::faults::corrupt(&path, *offset, *len)
                    .map_err(|e| StepError { expected: format!("to corrupt {}", path.display()), actual: e })?;
                ctx.note(format!("overwrote {len} bytes at offset {at} of {}", path.display()));
                Ok(())
            }
            FileOp::Rename { to } => {
                let to = ctx.path(to)?;
                if let Some(parent) = to.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| io("create the folder of", e))?;
                }
                std::fs::rename(&path, &to).map_err(|e| io(&format!("rename to {}:", to.display()), e))
            }
            FileOp::Fill => {
                let n = crate::faults::fill(&path).map_err(|e| StepError {
                    expected: format!("to fill the filesystem of {}", path.display()),
                    actual: e,
                })?;
                ctx.note(format!("wrote {n} bytes into {} before ENOSPC", path.display()));
                Ok(())
            }
            FileOp::Mode { mode } => {
                let meta = path.symlink_metadata().map_err(|e| io("stat", e))?;
                let actual = meta.permissions().mode() & 0o7777;
                if actual != *mode {
                    return fail(format!("{} with mode {mode:04o}", path.display()), format!("mode {actual:04o}"));
                }
                Ok(())
            }
            FileOp::Exists { min_size } => match (path.symlink_metadata(), min_size) {
                (Err(_), _) => fail(format!("{} to exist", path.display()), "absent"),
                (Ok(_), None) => Ok(()),
                (Ok(m), Some(min)) if m.is_file() && m.len() >= *min => Ok(()),
                (Ok(m), Some(min)) => fail(
                    format!("{} to be a file of at least {min} bytes", path.display()),
                    if m.is_file() { format!("{} bytes", m.len()) } else { String::from("not a regular file") },
                ),
            },
            FileOp::Absent => {
                if path.symlink_metadata().is_err() {
                    Ok(())
                } else {
                    fail(format!("{} to be absent", path.display()), "it exists")
                }
            }
        }
    }
}

/// What `op = "remember"` saw: the file's bytes and mtime, and its `-wal` sibling's bytes
/// if it has one (a database's committed content is the file plus its WAL).
pub(crate) struct Remembered {
    bytes: Vec<u8>,
    mtime: Option<SystemTime>,
    wal: Option<Vec<u8>>,
}

impl Remembered {
    fn read(path: &Path) -> std::io::Result<Remembered> {
        let bytes = std::fs::read(path)?;
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let wal = match std::fs::read(format!("{}-wal", path.display())) {
            Ok(w) => Some(w),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        Ok(Remembered { bytes, mtime, wal })
    }
}

/// `mode = "0500"` or `mode = 0o500` (a decimal integer is refused: `500` is ambiguous).
fn mode(cx: &Cx, f: &Field) -> Res<u32> {
    const EXPECTED: &str = "a mode as octal digits like \"0500\" or an octal integer like 0o500";
    let mode = match &f.node.val {
        Val::Str(s) if !s.is_empty() && s.len() <= 5 && s.chars().all(|c| c.is_digit(8)) => {
            u32::from_str_radix(s, 8).ok()
        }
        Val::Int(i) => {
            let raw = f.node.span.as_ref().and_then(|s| cx.src.text.get(s.clone())).unwrap_or("");
            if raw.trim_start_matches('+').starts_with("0o") {
                u32::try_from(*i).ok()
            } else {
                None
            }
        }
        _ => None,
    };
    mode.filter(|m| *m <= 0o7777).ok_or_else(|| cx.wrong(f, EXPECTED))
}
/// `offset = 4096` (bytes) or `offset = "50%"` (of the file's size when the step runs).
fn offset(cx: &Cx, f: &Field) -> Res<Offset> {
    const EXPECTED: &str = "a byte offset (an integer >= 0) or a percentage of the file's size like \"50%\"";
    match &f.node.val {
        Val::Int(i) if *i >= 0 => Ok(Offset::Bytes(*i as u64)),
        Val::Str(s) => parse_percent(s).map(Offset::Percent).ok_or_else(|| cx.wrong(f, EXPECTED)),
        _ => Err(cx.wrong(f, EXPECTED)),
    }
}

/// Decode hex bytes (`"00ff 1a"`; ASCII whitespace is ignored).
pub(crate) fn decode_hex(s: &str) -> Result<Vec<u8>, String> {
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

/// Parse a percentage `"50%"` or `"12.5%"`, 0 to 100.
pub(crate) fn parse_percent(s: &str) -> Option<f64> {
    let p: f64 = s.trim().strip_suffix('%')?.trim_end().parse().ok()?;
    (p.is_finite() && (0.0..=100.0).contains(&p)).then_some(p)
}
