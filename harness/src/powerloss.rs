//! Power loss, after the fact: reads the log homerd's recording VFS wrote
//! (`HOMERD_POWERLOSS_LOG`, `daemon/src/powerloss.rs` documents the record layout) and puts
//! every recorded file back the way its last fsync left it — the writes no fsync covered
//! are gone, as they would be on a real disk that lost power.
//!
//! Rules, per file (identified by (dev, ino), so a hard link or a rename keeps its records):
//!
//! - a write or truncate is *covered* when a later SYNC record of the same file says its
//!   fsync began after the record was appended; every op after the last covered one is
//!   reverted, newest first, from its pre-image and its size before the op;
//! - an UNLINK record ends the file's history: a later file that reuses the inode is a
//!   different file (its records start afresh), and a file that is gone is skipped;
//! - a torn record (a SIGKILL mid-append) is skipped: its real write never happened, since
//!   the recorder writes only after the record is appended whole.
//!
//! Call [`apply_power_loss`] only once every process that wrote under the log is dead (it
//! refuses while one lives). It renames the log to `<log>.applied`, so it cannot be applied
//! twice.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::OpenOptions;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use homerd::powerloss::kind;

/// The first bytes of every record.
pub use homerd::powerloss::MAGIC;

/// What a record says happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A recorded file was opened read-write (its path, for files linked into place).
    Open,
    /// A write is about to happen (`offset`, `length`; `pre` holds what it overwrites).
    Write,
    /// A truncate is about to happen (`offset` is the new size; `pre` what it cuts off).
    Truncate,
    /// An fsync completed; it began when the log was `offset` bytes long.
    Sync,
    /// The file's last link was removed.
    Unlink,
    /// The process cut power here (SIGKILL) just before its op number `op`.
    Cut,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Open => kind::OPEN,
            Kind::Write => kind::WRITE,
            Kind::Truncate => kind::TRUNCATE,
            Kind::Sync => kind::SYNC,
            Kind::Unlink => kind::UNLINK,
            Kind::Cut => kind::CUT,
        }
    }

    fn from_code(c: u8) -> Option<Kind> {
        Some(match c {
            kind::OPEN => Kind::Open,
            kind::WRITE => Kind::Write,
            kind::TRUNCATE => Kind::Truncate,
            kind::SYNC => Kind::Sync,
            kind::UNLINK => Kind::Unlink,
            kind::CUT => Kind::Cut,
            _ => return None,
        })
    }

    /// Whether the recorder counts it as an op (the numbers `HOMERD_POWERLOSS_CUT` names).
    pub fn is_op(self) -> bool {
        matches!(self, Kind::Write | Kind::Truncate | Kind::Sync)
    }
}

/// One record of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Where the record starts in the log (what a SYNC's `offset` is compared with).
    pub at: u64,
    pub kind: Kind,
    pub pid: u32,
    /// The process's op number (writes, truncates, syncs and the cut); 0 otherwise.
    pub op: u64,
    pub dev: u64,
    pub ino: u64,
    pub offset: u64,
    pub length: u64,
    pub size_before: u64,
    /// What the process said it was writing (`homerd::powerloss::phase`).
    pub phase: String,
    pub path: PathBuf,
    pub pre: Vec<u8>,
}

/// A parsed log.
#[derive(Clone, Debug, Default)]
pub struct Log {
    pub records: Vec<Record>,
    /// Stretches of bytes that were not a whole record (torn appends).
    pub torn: usize,
}

impl Log {
    /// Ops recorded per process (the highest op number each reached).
    pub fn ops_by_pid(&self) -> BTreeMap<u32, u64> {
        let mut out = BTreeMap::new();
        for r in self.records.iter().filter(|r| r.kind.is_op()) {
            let e = out.entry(r.pid).or_insert(0);
            *e = (*e).max(r.op);
        }
        out
    }

    /// The CUT records (at most one per armed process).
    pub fn cuts(&self) -> Vec<Cut> {
        self.records
            .iter()
            .filter(|r| r.kind == Kind::Cut)
            .map(|r| Cut { pid: r.pid, phase: r.phase.clone(), op: r.op })
            .collect()
    }
}

/// Where a process cut power.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cut {
    pub pid: u32,
    pub phase: String,
    pub op: u64,
}

/// Encodes a record with homerd's own encoder (`at` is ignored): for tests and tools that
/// build logs, so the reader here is checked against the writer's bytes.
pub fn encode(r: &Record) -> Vec<u8> {
    let numbers = [r.op, r.dev, r.ino, r.offset, r.length, r.size_before];
    let path = r.path.as_os_str().as_bytes();
    homerd::powerloss::encode_record(r.kind.code(), r.pid, numbers, r.phase.as_bytes(), path, &r.pre)
}

/// FNV-1a, 64 bits (the recorder's checksum).
pub use homerd::powerloss::checksum;

/// Reads a whole log (see [`parse_log`]).
pub fn read_log(path: &Path) -> Result<Log, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: cannot read the power-loss log: {e}", path.display()))?;
    Ok(parse_log(&bytes))
}

/// Parses a log: whole records in order; anything else (a torn append, followed by other
/// processes' records) is skipped up to the next place a whole record starts.
pub fn parse_log(bytes: &[u8]) -> Log {
    let mut log = Log::default();
    let mut pos = 0usize;
    let mut in_torn = false;
    while pos < bytes.len() {
        match parse_at(bytes, pos) {
            Some((rec, next)) => {
                log.records.push(rec);
                pos = next;
                in_torn = false;
            }
            None => {
                if !in_torn {
                    log.torn += 1;
                    in_torn = true;
                }
                pos = match find_magic(bytes, pos + 1) {
                    Some(p) => p,
                    None => break,
                };
            }
        }
    }
    log
}

fn find_magic(bytes: &[u8], from: usize) -> Option<usize> {
    bytes.get(from..)?.windows(4).position(|w| w == MAGIC).map(|p| from + p)
}

/// The record starting at `pos`, if a whole one does, and where the next one starts.
fn parse_at(bytes: &[u8], pos: usize) -> Option<(Record, usize)> {
    let head = bytes.get(pos..pos + 8)?;
    if head[..4] != MAGIC {
        return None;
    }
    let len = u32::from_le_bytes(head[4..8].try_into().ok()?) as usize;
    let body = bytes.get(pos + 8..pos + 8 + len)?;
    let sum = u64::from_le_bytes(bytes.get(pos + 8 + len..pos + 16 + len)?.try_into().ok()?);
    if checksum(body) != sum {
        return None;
    }
    let mut c = Cursor { b: body, at: 0 };
    let kind = Kind::from_code(c.u8()?)?;
    let pid = u32::from_le_bytes(c.take(4)?.try_into().ok()?);
    let (op, dev, ino, offset, length, size_before) = (c.u64()?, c.u64()?, c.u64()?, c.u64()?, c.u64()?, c.u64()?);
    let phase_len = c.u8()? as usize;
    let phase = String::from_utf8_lossy(c.take(phase_len)?).into_owned();
    let path_len = u16::from_le_bytes(c.take(2)?.try_into().ok()?) as usize;
    let path = PathBuf::from(std::ffi::OsStr::from_bytes(c.take(path_len)?));
    let pre_len = u32::from_le_bytes(c.take(4)?.try_into().ok()?) as usize;
    let pre = c.take(pre_len)?.to_vec();
    if c.at != body.len() {
        return None;
    }
    let rec = Record { at: pos as u64, kind, pid, op, dev, ino, offset, length, size_before, phase, path, pre };
    Some((rec, pos + 16 + len))
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// What one file lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileReport {
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
    /// Writes and truncates reverted.
    pub ops_reverted: usize,
    /// Bytes those ops wrote, cut off or added.
    pub bytes_reverted: u64,
    /// Recorded ops an fsync covered (kept).
    pub ops_kept: usize,
    /// The file's size before and after the revert.
    pub size_was: u64,
    pub size_now: u64,
}

/// What [`apply_power_loss`] did.
#[derive(Clone, Debug, Default)]
pub struct PowerLossReport {
    /// Files that had un-synced ops, reverted.
    pub files: Vec<FileReport>,
    /// Files with un-synced ops that no longer exist (or were replaced): left alone.
    pub skipped: Vec<(PathBuf, usize)>,
    /// The cut, if a process cut power.
    pub cuts: Vec<Cut>,
    pub records: usize,
    pub torn: usize,
    /// Where the log was moved.
    pub applied_log: PathBuf,
}

impl PowerLossReport {
    pub fn ops_reverted(&self) -> usize {
        self.files.iter().map(|f| f.ops_reverted).sum()
    }

    /// One line per file, for logs and failure reports.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for c in &self.cuts {
            s.push_str(&format!("cut: pid {} before its op {} (phase {})\n", c.pid, c.op, c.phase));
        }
        for f in &self.files {
            s.push_str(&format!(
                "reverted {} op(s), {} byte(s) of {} ({} kept; size {} -> {})\n",
                f.ops_reverted,
                f.bytes_reverted,
                f.path.display(),
                f.ops_kept,
                f.size_was,
                f.size_now
            ));
        }
        for (p, n) in &self.skipped {
            s.push_str(&format!("skipped {} ({n} un-synced op(s)): the file is gone\n", p.display()));
        }
        s.push_str(&format!("{} record(s), {} torn\n", self.records, self.torn));
        s
    }
}

/// One file's history since its inode was last (re)used.
struct History {
    key: (u64, u64),
    /// Every path it was recorded under, oldest first.
    paths: Vec<PathBuf>,
    /// Indexes of its write and truncate records, in log order.
    ops: Vec<usize>,
    /// The log length when its latest completed fsync began: records before it are covered.
    covered_upto: u64,
    unlinked: bool,
}

/// Drops every write no fsync covered, in every recorded file still present, and moves the
/// log to `<log>.applied`. Every process that wrote under the log must be dead: a live one
/// (other than the caller, whose connections must be closed) is refused.
///
/// The `-shm` files are left as they are. A real power cut leaves a stale one too (it is
/// memory SQLite never syncs), and SQLite's first opener, finding no other process on it
/// (the dead-man-switch lock byte), truncates it and rebuilds the wal-index from the WAL.
/// Deleting it would hide a daemon that trusted a stale wal-index.
pub fn apply_power_loss(log_path: &Path) -> Result<PowerLossReport, String> {
    let log = read_log(log_path)?;
    let me = std::process::id();
    let pids: BTreeSet<u32> = log.records.iter().map(|r| r.pid).filter(|&p| p != me).collect();
    if let Some(pid) = pids.into_iter().find(|&p| records_alive(p, log_path)) {
        return Err(format!(
            "{}: process {pid} wrote under this log and is still alive; kill every process of the sandbox before applying power loss",
            log_path.display()
        ));
    }
    let mut report =
        PowerLossReport { cuts: log.cuts(), records: log.records.len(), torn: log.torn, ..PowerLossReport::default() };
    for h in histories(&log).into_iter().filter(|h| !h.unlinked) {
        let lost: Vec<&Record> = h.ops.iter().map(|&i| &log.records[i]).filter(|r| r.at >= h.covered_upto).collect();
        if lost.is_empty() {
            continue;
        }
        // The newest path first: a file linked into place is found under its final name.
        let found = h.paths.iter().rev().find(|p| {
            std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_file() && (m.dev(), m.ino()) == h.key)
        });
        let Some(path) = found else {
            report.skipped.push((h.paths.last().cloned().unwrap_or_default(), lost.len()));
            continue;
        };
        let mut file = revert(path, &lost)?;
        file.ops_kept = h.ops.len() - lost.len();
        report.files.push(file);
    }
    let applied = applied_path(log_path);
    std::fs::rename(log_path, &applied)
        .map_err(|e| format!("{}: cannot move the applied log to {}: {e}", log_path.display(), applied.display()))?;
    report.applied_log = applied;
    Ok(report)
}

/// `<log>.applied`.
pub fn applied_path(log: &Path) -> PathBuf {
    let mut p = log.as_os_str().to_owned();
    p.push(".applied");
    PathBuf::from(p)
}

/// Each file's history, in the order the files first appear.
fn histories(log: &Log) -> Vec<History> {
    let mut out: Vec<History> = Vec::new();
    let mut current: HashMap<(u64, u64), usize> = HashMap::new();
    for (i, r) in log.records.iter().enumerate() {
        if r.kind == Kind::Cut {
            continue;
        }
        let key = (r.dev, r.ino);
        if r.kind == Kind::Unlink {
            if let Some(h) = current.remove(&key) {
                out[h].unlinked = true;
            }
            continue;
        }
        let h = *current.entry(key).or_insert_with(|| {
            out.push(History { key, paths: Vec::new(), ops: Vec::new(), covered_upto: 0, unlinked: false });
            out.len() - 1
        });
        let hist = &mut out[h];
        if hist.paths.last() != Some(&r.path) {
            hist.paths.retain(|p| p != &r.path);
            hist.paths.push(r.path.clone());
        }
        match r.kind {
            Kind::Write | Kind::Truncate => hist.ops.push(i),
            Kind::Sync => hist.covered_upto = hist.covered_upto.max(r.offset),
            _ => {}
        }
    }
    out
}

/// Reverts `lost` (in log order) on `path`, newest first.
fn revert(path: &Path, lost: &[&Record]) -> Result<FileReport, String> {
    let err = |what: &str, e: std::io::Error| {
        format!("{}: cannot {what} while reverting un-synced writes: {e}", path.display())
    };
    let file = OpenOptions::new().read(true).write(true).open(path).map_err(|e| err("open", e))?;
    let meta = file.metadata().map_err(|e| err("stat", e))?;
    let mut bytes = 0u64;
    for r in lost.iter().rev() {
        match r.kind {
            Kind::Write => {
                file.write_all_at(&r.pre, r.offset).map_err(|e| err("write", e))?;
                file.set_len(r.size_before).map_err(|e| err("truncate", e))?;
                bytes += r.length;
            }
            Kind::Truncate => {
                file.set_len(r.size_before).map_err(|e| err("truncate", e))?;
                file.write_all_at(&r.pre, r.offset).map_err(|e| err("write", e))?;
                bytes += r.size_before.abs_diff(r.offset);
            }
            _ => unreachable!("only writes and truncates are reverted"),
        }
    }
    // The state we made is the one the next start must find, whatever happens to us.
    file.sync_all().map_err(|e| err("fsync", e))?;
    Ok(FileReport {
        path: path.to_owned(),
        dev: meta.dev(),
        ino: meta.ino(),
        ops_reverted: lost.len(),
        bytes_reverted: bytes,
        ops_kept: 0,
        size_was: meta.len(),
        size_now: file.metadata().map_err(|e| err("stat", e))?.len(),
    })
}

/// Whether `pid` is a live process (zombies are dead: they write nothing).
/// Whether `pid` is alive and still a process that records under `log`. The log keeps
/// the pids of every process that ever wrote, and a long run (fuzz eras, a sweep's
/// parallel workers) may see one of them reused by an unrelated process. On Linux its
/// environment tells: a recorder carries `HOMERD_POWERLOSS_LOG` naming this log. An
/// environment that cannot be read (macOS has no `/proc`; a process of another uid; one
/// in the middle of an exec) counts as a recorder, which refuses rather than tear a live
/// writer's files.
fn records_alive(pid: u32, log: &Path) -> bool {
    if !homer_testkit::alive(pid as i32) {
        return false;
    }
    if !cfg!(target_os = "linux") {
        return true;
    }
    let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else { return homer_testkit::alive(pid as i32) };
    if env.is_empty() {
        // Inside `execve` (or exiting): its environment cannot be told yet.
        return true;
    }
    let prefix = format!("{}=", homerd::powerloss::LOG_ENV);
    let ours = log.canonicalize().ok();
    env.split(|&b| b == 0).filter_map(|kv| kv.strip_prefix(prefix.as_bytes())).any(|value| {
        let named = Path::new(std::ffi::OsStr::from_bytes(value));
        named == log || (ours.is_some() && named.canonicalize().ok() == ours)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    struct Fixture {
        dir: tempfile::TempDir,
        log: PathBuf,
        bytes: Vec<u8>,
        /// Pretend pid for every record: one that is surely dead (pid_max is far below it).
        pid: u32,
        op: u64,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let log = dir.path().join("powerloss.log");
            Fixture { dir, log, bytes: Vec::new(), pid: 0x7fff_fff0, op: 0 }
        }

        /// A fixture whose directory holds one file, `name` with `content`: the fixture, the
        /// file's path.
        fn with_file(name: &str, content: &[u8]) -> (Fixture, PathBuf) {
            let f = Fixture::new();
            let p = f.file(name, content);
            (f, p)
        }

        fn file(&self, name: &str, content: &[u8]) -> PathBuf {
            let p = self.dir.path().join(name);
            std::fs::write(&p, content).unwrap();
            p
        }

        fn rec(&mut self, kind: Kind, path: &Path, offset: u64, length: u64, pre: &[u8]) -> Record {
            let m = std::fs::metadata(path).unwrap();
            if kind.is_op() {
                self.op += 1;
            }
            Record {
                at: 0,
                kind,
                pid: self.pid,
                op: if kind.is_op() { self.op } else { 0 },
                dev: m.dev(),
                ino: m.ino(),
                offset,
                length,
                size_before: m.len(),
                phase: String::from("test"),
                path: path.to_owned(),
                pre: pre.to_vec(),
            }
        }

        fn push(&mut self, r: &Record) {
            self.bytes.extend_from_slice(&encode(r));
        }

        /// Appends a record of `kind` to the log, as [`Fixture::rec`] makes it.
        fn record(&mut self, kind: Kind, path: &Path, offset: u64, length: u64, pre: &[u8]) {
            let r = self.rec(kind, path, offset, length, pre);
            self.push(&r);
        }

        /// Records a write, then does it (what the recorder does).
        fn write(&mut self, path: &Path, offset: u64, data: &[u8]) {
            let now = std::fs::read(path).unwrap();
            let end = (offset as usize + data.len()).min(now.len());
            let pre = if (offset as usize) < now.len() { now[offset as usize..end].to_vec() } else { Vec::new() };
            self.record(Kind::Write, path, offset, data.len() as u64, &pre);
            let f = OpenOptions::new().write(true).open(path).unwrap();
            f.write_all_at(data, offset).unwrap();
        }

        fn truncate(&mut self, path: &Path, size: u64) {
            let now = std::fs::read(path).unwrap();
            let pre = if (size as usize) < now.len() { now[size as usize..].to_vec() } else { Vec::new() };
            self.record(Kind::Truncate, path, size, 0, &pre);
            OpenOptions::new().write(true).open(path).unwrap().set_len(size).unwrap();
        }

        /// A completed fsync that began now.
        fn sync(&mut self, path: &Path) {
            let began = self.bytes.len() as u64;
            self.record(Kind::Sync, path, began, 0, &[]);
        }

        fn apply(&self) -> Result<PowerLossReport, String> {
            std::fs::write(&self.log, &self.bytes).unwrap();
            apply_power_loss(&self.log)
        }

        /// Applies the log, which must succeed and leave `path` holding `expected` (`why`
        /// says what that means, when it needs saying): the report.
        #[track_caller]
        fn apply_leaving(&self, path: &Path, expected: &[u8], why: &str) -> PowerLossReport {
            let report = self.apply().unwrap();
            assert_eq!(std::fs::read(path).unwrap(), expected, "{why}");
            report
        }
    }

    #[test]
    fn a_synced_write_is_kept_and_an_unsynced_one_reverted() {
        let (mut f, db) = Fixture::with_file("homer.db", b"aaaaaaaa");
        f.write(&db, 0, b"XX");
        f.sync(&db);
        f.write(&db, 4, b"YY");
        assert_eq!(std::fs::read(&db).unwrap(), b"XXaaYYaa");
        let report = f.apply_leaving(&db, b"XXaaaaaa", "the synced write stays, the other goes");
        assert_eq!(report.files.len(), 1);
        assert_eq!((report.files[0].ops_reverted, report.files[0].bytes_reverted, report.files[0].ops_kept), (1, 2, 1));
    }

    #[test]
    fn an_extension_is_reverted_by_truncating_back() {
        let (mut f, wal) = Fixture::with_file("homer.db-wal", b"head");
        f.sync(&wal);
        f.write(&wal, 4, b"frame-1");
        f.write(&wal, 20, b"frame-2"); // past the end: a hole, then data
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), 27);
        let report = f.apply_leaving(&wal, b"head", "");
        assert_eq!((report.files[0].size_was, report.files[0].size_now), (27, 4));
    }

    #[test]
    fn a_truncation_is_reverted_with_the_bytes_it_cut_off() {
        let (mut f, wal) = Fixture::with_file("homer.db-wal", b"0123456789");
        f.truncate(&wal, 3);
        f.write(&wal, 1, b"ab"); // overlapping the cut, then extending nothing
        let report = f.apply_leaving(&wal, b"0123456789", "");
        assert_eq!(report.files[0].ops_reverted, 2);
    }

    #[test]
    fn a_sync_covers_only_what_was_recorded_before_it_began() {
        let (mut f, db) = Fixture::with_file("homer.db", b"........");
        let began = f.bytes.len() as u64;
        // Another process's write lands while the fsync runs: its record comes after the
        // fsync began, so it may have missed it, although the SYNC record comes later.
        f.write(&db, 0, b"late");
        f.record(Kind::Sync, &db, began, 0, &[]);
        f.apply_leaving(&db, b"........", "");
    }

    #[test]
    fn files_are_tracked_by_inode_across_a_link_and_skipped_when_gone() {
        let (mut f, tmp) = Fixture::with_file(".homer.db.tmp-1", b"v1v1");
        f.write(&tmp, 0, b"v2");
        let db = f.dir.path().join("homer.db");
        std::fs::hard_link(&tmp, &db).unwrap();
        std::fs::remove_file(&tmp).unwrap();
        f.record(Kind::Open, &db, 4, 0, &[]);
        let gone = f.file("homer.db-journal", b"jjjj");
        f.write(&gone, 0, b"JJ");
        std::fs::remove_file(&gone).unwrap();
        let report = f.apply_leaving(&db, b"v1v1", "reverted under the name it was linked to");
        assert_eq!(report.skipped.len(), 1, "{report:?}");
        assert!(report.skipped[0].0.ends_with("homer.db-journal"));
    }

    #[test]
    fn an_unlinked_file_never_lends_its_writes_to_a_file_reusing_its_inode() {
        let (mut f, wal) = Fixture::with_file("homer.db-wal", b"new file");
        // Records of an earlier file with this (dev, ino), which SQLite then deleted: the
        // file now at the path, with the same inode, must not be touched.
        f.write(&wal, 0, b"old!");
        f.record(Kind::Unlink, &wal, 0, 0, &[]);
        let report = f.apply_leaving(&wal, b"old!file", "left as it is");
        assert!(report.files.is_empty() && report.skipped.is_empty(), "{report:?}");
    }

    #[test]
    fn a_torn_record_is_ignored_and_the_records_after_it_are_read() {
        let (mut f, db) = Fixture::with_file("homer.db", b"abcdef");
        f.sync(&db);
        // A process killed mid-append leaves half a record; its write never happened.
        let torn = f.rec(Kind::Write, &db, 0, 6, b"abcdef");
        let bytes = encode(&torn);
        f.bytes.extend_from_slice(&bytes[..bytes.len() / 2]);
        // Then another process appends after it.
        f.write(&db, 2, b"ZZ");
        let mut log = parse_log(&f.bytes);
        assert_eq!(log.torn, 1);
        assert_eq!(log.records.len(), 2);
        // A torn final record is ignored too.
        f.bytes.extend_from_slice(&bytes[..10]);
        log = parse_log(&f.bytes);
        assert_eq!((log.records.len(), log.torn), (2, 2));
        f.apply_leaving(&db, b"abcdef", "");
    }

    #[test]
    fn the_cut_is_reported_and_a_log_applies_once() {
        let (mut f, db) = Fixture::with_file("homer.db", b"aa");
        f.write(&db, 0, b"b");
        let mut cut = f.rec(Kind::Cut, &db, 0, 0, &[]);
        cut.op = 2;
        cut.phase = String::from("claim");
        f.push(&cut);
        let report = f.apply().unwrap();
        assert_eq!(report.cuts, vec![Cut { pid: f.pid, phase: String::from("claim"), op: 2 }]);
        assert!(report.applied_log.ends_with("powerloss.log.applied"));
        let again = apply_power_loss(&f.log).unwrap_err();
        assert!(again.contains("cannot read"), "{again}");
    }

    /// A `cat` standing in for a writer: with the recorder's variable naming `log`, or
    /// (`None`) an unrelated process that got a dead writer's pid. Returned once it has
    /// echoed a line, so its exec is over: while a process is still inside `execve` its
    /// environment reads empty (the parent of a vfork-style spawn resumes before that).
    fn stand_in(log: Option<&Path>) -> std::process::Child {
        use std::io::{BufRead, BufReader};
        let mut c = std::process::Command::new("cat");
        c.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
        if let Some(log) = log {
            c.env(homerd::powerloss::LOG_ENV, log);
        }
        let mut child = c.spawn().unwrap();
        writeln!(child.stdin.as_mut().unwrap(), "up").unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line, "up\n");
        child
    }

    #[test]
    fn a_live_writer_is_refused_and_nothing_changes() {
        let mut f = Fixture::new();
        let mut writer = stand_in(Some(&f.log));
        f.pid = writer.id();
        let db = f.file("homer.db", b"aa");
        f.write(&db, 0, b"b");
        let err = f.apply().unwrap_err();
        let _ = (writer.kill(), writer.wait());
        assert!(err.contains(&format!("process {}", f.pid)) && err.contains("still alive"), "{err}");
        assert_eq!(std::fs::read(&db).unwrap(), b"ba");
        assert!(f.log.exists(), "the log is not consumed by a refusal");
    }

    /// A dead writer's pid, reused by a process that records nothing here, is no writer:
    /// the log applies (on Linux, where the environment says so; elsewhere it refuses).
    #[test]
    fn a_reused_pid_is_not_a_live_writer() {
        let mut f = Fixture::new();
        let mut other = stand_in(None);
        let mut elsewhere = stand_in(Some(Path::new("/nonexistent/powerloss.log")));
        let db = f.file("homer.db", b"aa");
        f.pid = other.id();
        f.write(&db, 0, b"b");
        f.pid = elsewhere.id();
        f.write(&db, 1, b"c");
        let applied = f.apply();
        let _ = (other.kill(), other.wait(), elsewhere.kill(), elsewhere.wait());
        if cfg!(target_os = "linux") {
            applied.unwrap();
            assert_eq!(std::fs::read(&db).unwrap(), b"aa", "both unsynced writes dropped");
        } else {
            assert!(applied.unwrap_err().contains("still alive"));
        }
    }

    #[test]
    fn ops_are_counted_per_process() {
        let (mut f, db) = Fixture::with_file("homer.db", b"aa");
        f.write(&db, 0, b"b");
        f.sync(&db);
        let mut file = std::fs::File::create(&f.log).unwrap();
        file.write_all(&f.bytes).unwrap();
        let log = read_log(&f.log).unwrap();
        assert_eq!(log.ops_by_pid(), BTreeMap::from([(f.pid, 2)]));
    }
}
