//! The single-instance lock: the only module that calls `flock`.
//!
//! Protocol (README.md "Guarantees", one active daemon):
//! 1. The directory is created 0700 only if missing; the file is opened without
//!    truncation, created 0600, with `O_NOFOLLOW` (a symlink is refused, its target
//!    untouched), `O_NONBLOCK` (a FIFO planted at the path cannot hang us) and
//!    close-on-exec (a job child must never inherit the lock: failure mode 4). Anything but
//!    a regular file is refused. Network filesystems are refused before opening.
//! 2. `flock(LOCK_EX | LOCK_NB)`. `EWOULDBLOCK` means another holder; *any other* error
//!    fails closed — homerd never treats an unexpected lock error as "I am alone".
//! 3. After winning, `fstat(fd)` must match `lstat(path)` (dev + ino): if the file was
//!    unlinked or replaced between our open and our flock, we locked an orphaned inode,
//!    so we close it and start over (failure mode 5).
//! 4. Nothing is written until the caller says the leader row accepted the start; then
//!    diagnostics are written through the locked fd ([`HeldLock::write_diagnostics`]).
//!    A losing start never writes a byte to the file.
//! 5. The file is never unlinked. While running, [`HeldLock::check_path`] compares path
//!    and fd so the daemon can re-acquire in place when an admin removed or replaced it.
//!
//! Architecture invariant: `flock` is called here and nowhere else (clippy
//! `disallowed-methods` forbids std's `File::lock` family in the daemon).
#![allow(clippy::disallowed_methods)] // this module is the one owner of flock and lock fds

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::fstype::{self, FsClass};
use crate::{events, failpoint, mutant};

/// How many times to start over when the path keeps changing under us.
const MAX_INODE_RETRIES: u32 = 64;

/// A held lock. Dropping it closes the fd, which releases the flock.
#[derive(Debug)]
pub struct HeldLock {
    file: File,
    path: PathBuf,
    dev: u64,
    ino: u64,
}

/// What a losing start learned about the holder, read without writing anything.
#[derive(Clone, Debug, Default)]
pub struct Holder {
    /// The pid holding the flock, from the kernel where it tells (Linux `/proc/locks`),
    /// else from the file's diagnostics.
    pub pid: Option<u32>,
    /// The diagnostics currently in the file; may be a previous holder's if the current
    /// holder has not written yet.
    pub diagnostics: Diagnostics,
}

#[derive(Debug)]
pub enum Acquire {
    Held(HeldLock),
    Busy(Holder),
}

/// Where the path stands relative to the inode we hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathState {
    Same,
    Missing,
    Replaced,
}

/// Lock-file diagnostics: `key=value` lines, readable with `cat`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diagnostics(pub BTreeMap<String, String>);

impl Diagnostics {
    pub fn parse(text: &str) -> Diagnostics {
        Diagnostics(
            text.lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .collect(),
        )
    }

    pub fn render(&self) -> String {
        self.0.iter().map(|(k, v)| format!("{k}={}\n", v.replace('\n', " "))).collect()
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn pid(&self) -> Option<u32> {
        self.get("pid")?.parse().ok()
    }

    pub fn role(&self) -> Option<&str> {
        self.get("role")
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Tries once (with inode re-checks) to take the lock at `path`.
pub fn acquire(path: &Path) -> Result<Acquire> {
    let dir = path.parent().ok_or_else(|| Error::UnsafePath {
        path: path.to_owned(),
        message: String::from("lock path has no parent directory"),
    })?;
    // Classify before creating anything: never make folders on a network share.
    check_filesystem(nearest_existing(dir), path)?;
    ensure_dir(dir)?;
    check_filesystem(dir, path)?;
    for _ in 0..MAX_INODE_RETRIES {
        let file = open_lock_file(path)?;
        failpoint::hit("lock.after_open").map_err(|e| Error::io("open", path, e))?;
        if !try_flock(&file, path)? {
            return Ok(Acquire::Busy(read_holder(&file)));
        }
        failpoint::hit("lock.after_flock").map_err(|e| Error::io("flock", path, e))?;
        let held = fstat_ids(&file, path)?;
        if !mutant::active(mutant::LOCK_NO_INODE_RECHECK) {
            match path_ids(path)? {
                Some(ids) if ids == held => {}
                _ => {
                    // We locked an inode that is no longer at the path: worthless.
                    events::debug("lock.retry", "Lock file changed while locking; retrying")
                        .field("path", path.display().to_string())
                        .emit();
                    continue;
                }
            }
        }
        return Ok(Acquire::Held(HeldLock { file, path: path.to_owned(), dev: held.0, ino: held.1 }));
    }
    Err(Error::io(
        "lock",
        path,
        io::Error::other("the lock file kept being replaced while locking; is something deleting it in a loop?"),
    ))
}

impl HeldLock {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn dev_ino(&self) -> (u64, u64) {
        (self.dev, self.ino)
    }

    /// Truncates the file and writes `diag` through the locked fd, then fsyncs. Also
    /// tightens the mode to 0600 if someone widened it.
    pub fn write_diagnostics(&mut self, diag: &Diagnostics) -> Result<()> {
        let path = self.path.clone();
        let io_err = |op, e| Error::io(op, &path, e);
        let meta = self.file.metadata().map_err(|e| io_err("stat", e))?;
        if meta.permissions().mode() & 0o077 != 0 {
            self.file.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(|e| io_err("chmod", e))?;
        }
        self.file.set_len(0).map_err(|e| io_err("truncate", e))?;
        self.file.seek(SeekFrom::Start(0)).map_err(|e| io_err("seek", e))?;
        self.file.write_all(diag.render().as_bytes()).map_err(|e| io_err("write", e))?;
        self.file.sync_all().map_err(|e| io_err("fsync", e))
    }

    /// Compares the path with the inode we hold (the periodic re-check).
    pub fn check_path(&self) -> Result<PathState> {
        Ok(match path_ids(&self.path)? {
            None => PathState::Missing,
            Some(ids) if ids == (self.dev, self.ino) => PathState::Same,
            Some(_) => PathState::Replaced,
        })
    }
}

/// Reads the diagnostics at `path` without locking or writing (for `status`/`doctor`).
pub fn read_diagnostics(path: &Path) -> io::Result<Diagnostics> {
    let mut file = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path)?;
    if !file.metadata()?.file_type().is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok(Diagnostics::parse(&text))
}

fn nearest_existing(dir: &Path) -> &Path {
    dir.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"))
}

fn ensure_dir(dir: &Path) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => {
            Err(Error::UnsafePath { path: dir.to_owned(), message: String::from("lock directory is not a directory") })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io("create directory", dir, e)),
        Err(e) => Err(Error::io("stat", dir, e)),
    }
}

/// Refuses network filesystems for `dir` (the lock's or the database's directory).
pub fn check_filesystem(dir: &Path, subject: &Path) -> Result<()> {
    match fstype::classify(dir).map_err(|e| Error::io("statfs", dir, e))? {
        FsClass::Local => Ok(()),
        FsClass::Refused(name) => Err(Error::LockUnsupported {
            path: subject.to_owned(),
            message: format!(
                "is on a {name} filesystem, where flock and SQLite locking cannot be trusted; put HOMER_HOME (and the lock file) on a local disk"
            ),
        }),
    }
}

fn open_lock_file(path: &Path) -> Result<File> {
    let mut opts = OpenOptions::new();
    opts.read(true).write(true).create(true).mode(0o600);
    // std opens with O_CLOEXEC already; O_NOFOLLOW refuses a symlink at the last
    // component, O_NONBLOCK keeps a FIFO from blocking the open.
    opts.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    if mutant::active(mutant::LOCK_TRUNCATE_BEFORE_LOCK) {
        opts.truncate(true);
    }
    let file = opts.open(path).map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) => Error::UnsafePath {
            path: path.to_owned(),
            message: String::from(
                "lock path is a symbolic link; homerd refuses to follow it (remove the link: homerd creates the lock file itself)",
            ),
        },
        Some(libc::EISDIR) => Error::UnsafePath {
            path: path.to_owned(),
            message: String::from("lock path is a directory; remove it or choose another --lock-file"),
        },
        _ => Error::io("open lock file", path, e),
    })?;
    let meta = file.metadata().map_err(|e| Error::io("stat", path, e))?;
    if !meta.file_type().is_file() {
        return Err(Error::UnsafePath {
            path: path.to_owned(),
            message: String::from("lock path is not a regular file; remove it or choose another --lock-file"),
        });
    }
    if mutant::active(mutant::LOCK_NO_CLOEXEC) {
        let _ = rustix::io::fcntl_setfd(&file, rustix::io::FdFlags::empty());
    }
    Ok(file)
}

/// `Ok(true)` = we hold it, `Ok(false)` = someone else does, `Err` = fail closed.
fn try_flock(file: &File, path: &Path) -> Result<bool> {
    loop {
        let rc = match failpoint::hit("lock.flock_error") {
            Err(e) => Err(e),
            Ok(()) => {
                rustix::fs::flock(file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(io::Error::from)
            }
        };
        return match rc {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Err(Error::LockUnsupported {
                path: path.to_owned(),
                message: format!(
                    "flock failed: {e}; homerd will not run without a working lock (is this a network filesystem?)"
                ),
            }),
        };
    }
}

fn fstat_ids(file: &File, path: &Path) -> Result<(u64, u64)> {
    let m = file.metadata().map_err(|e| Error::io("fstat", path, e))?;
    Ok((m.dev(), m.ino()))
}

/// `lstat(path)` ids, or `None` if nothing is there.
fn path_ids(path: &Path) -> Result<Option<(u64, u64)>> {
    match std::fs::symlink_metadata(path) {
        Ok(m) => Ok(Some((m.dev(), m.ino()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("stat", path, e)),
    }
}

fn read_holder(file: &File) -> Holder {
    let mut text = String::new();
    // Read through our own descriptor (no second open, no write): pread-like via a
    // duplicate handle so our offset games cannot matter.
    let diagnostics = file
        .try_clone()
        .and_then(|mut f| {
            f.seek(SeekFrom::Start(0))?;
            f.read_to_string(&mut text)
        })
        .map(|_| Diagnostics::parse(&text))
        .unwrap_or_default();
    let kernel_pid = file.metadata().ok().and_then(|m| flock_holder_pid(m.dev(), m.ino()));
    Holder { pid: kernel_pid.or_else(|| diagnostics.pid()), diagnostics }
}

/// Linux: the pid holding a FLOCK on (dev, ino), from `/proc/locks`.
#[cfg(target_os = "linux")]
fn flock_holder_pid(dev: u64, ino: u64) -> Option<u32> {
    let want = format!("{:02x}:{:02x}:{ino}", libc::major(dev), libc::minor(dev));
    let find = |text: &str| {
        text.lines().find_map(|line| {
            let f: Vec<&str> = line.split_ascii_whitespace().collect();
            // "1: FLOCK  ADVISORY  WRITE 12345 08:01:1234567 0 EOF" (blocked waiters have "->")
            if f.len() >= 6 && f[1] == "FLOCK" && f[3] == "WRITE" && f[5] == want {
                f[4].parse().ok()
            } else {
                None
            }
        })
    };
    // A line skipped by a walk that other locks' release disturbed (see below) is found by
    // the next walk; a lock that is not held is looked for this many times, all cheap.
    (0..PROC_LOCKS_WALKS).find_map(|_| find(&read_proc_locks()?))
}

/// How many times `/proc/locks` is read before a lock counts as not listed.
#[cfg(target_os = "linux")]
const PROC_LOCKS_WALKS: usize = 3;

/// `/proc/locks`, read to its end. It is a seq_file: one `read()` returns at most about a
/// page (some 80 locks), and each read resumes the walk of the lock list at a position, so
/// a lock released meanwhile can make the walk skip a line after it; the caller reads it
/// again when the line it wants is missing.
#[cfg(target_os = "linux")]
fn read_proc_locks() -> Option<String> {
    std::fs::read_to_string("/proc/locks").ok()
}

/// macOS has no `/proc/locks`; the diagnostics' pid is used instead.
#[cfg(not(target_os = "linux"))]
fn flock_holder_pid(_dev: u64, _ino: u64) -> Option<u32> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn held(a: Acquire) -> HeldLock {
        match a {
            Acquire::Held(h) => h,
            Acquire::Busy(h) => panic!("expected to hold the lock, busy: {h:?}"),
        }
    }

    #[test]
    fn creates_dir_0700_and_file_0600_with_cloexec() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("new/home/homer.lock");
        let lock = held(acquire(&path).unwrap());
        let dir_mode = std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777;
        let file_mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
        assert_eq!(file_mode, 0o600);
        let flags = rustix::io::fcntl_getfd(&lock.file).unwrap();
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC), "lock fd must be close-on-exec");
    }

    #[test]
    fn second_acquire_is_busy_and_writes_nothing() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("homer.lock");
        let mut lock = held(acquire(&path).unwrap());
        let mut diag = Diagnostics::default();
        diag.0.insert("pid".into(), std::process::id().to_string());
        diag.0.insert("role".into(), "daemon".into());
        lock.write_diagnostics(&diag).unwrap();
        let before = std::fs::read(&path).unwrap();
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        match acquire(&path).unwrap() {
            Acquire::Busy(h) => {
                assert_eq!(h.pid, Some(std::process::id()));
                assert_eq!(h.diagnostics.role(), Some("daemon"));
            }
            Acquire::Held(_) => panic!("two holders of one lock"),
        }
        assert_eq!(std::fs::read(&path).unwrap(), before);
        assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), mtime);
        drop(lock);
        held(acquire(&path).unwrap());
    }

    #[test]
    fn open_does_not_truncate_an_existing_file() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("homer.lock");
        std::fs::write(&path, "pid=1\n").unwrap();
        let _lock = held(acquire(&path).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "pid=1\n");
    }

    #[test]
    fn symlink_is_refused_and_target_untouched() {
        let t = tempfile::tempdir().unwrap();
        let target = t.path().join("precious");
        std::fs::write(&target, "keep me").unwrap();
        let path = t.path().join("homer.lock");
        symlink(&target, &path).unwrap();
        let err = acquire(&path).unwrap_err();
        assert_eq!(err.exit_code(), crate::error::exit::UNSAFE_PATH, "{err}");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
        // A dangling symlink must not be created through either.
        let dangling = t.path().join("dangling.lock");
        symlink(t.path().join("nowhere"), &dangling).unwrap();
        assert!(acquire(&dangling).is_err());
        assert!(!t.path().join("nowhere").exists());
    }

    #[test]
    fn directory_and_fifo_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("homer.lock");
        std::fs::create_dir(&dir).unwrap();
        let err = acquire(&dir).unwrap_err();
        assert_eq!(err.exit_code(), crate::error::exit::UNSAFE_PATH, "{err}");
        let fifo = t.path().join("fifo.lock");
        let made = std::process::Command::new("mkfifo").arg("-m").arg("600").arg(&fifo).status().unwrap();
        assert!(made.success(), "mkfifo {}", fifo.display());
        let err = acquire(&fifo).unwrap_err();
        assert_eq!(err.exit_code(), crate::error::exit::UNSAFE_PATH, "{err}");
    }

    #[test]
    fn check_path_sees_removal_and_replacement() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("homer.lock");
        let lock = held(acquire(&path).unwrap());
        assert_eq!(lock.check_path().unwrap(), PathState::Same);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(lock.check_path().unwrap(), PathState::Missing);
        // A new start can now lock a fresh file: the database's leader row is what
        // catches that (tested at the process level).
        let other = held(acquire(&path).unwrap());
        assert_eq!(lock.check_path().unwrap(), PathState::Replaced);
        drop(other);
        let side = t.path().join("side");
        std::fs::write(&side, "").unwrap();
        std::fs::rename(&side, &path).unwrap();
        assert_eq!(lock.check_path().unwrap(), PathState::Replaced);
    }

    #[test]
    fn diagnostics_round_trip() {
        let mut d = Diagnostics::default();
        d.0.insert("pid".into(), "42".into());
        d.0.insert("args".into(), "[\"homerd\",\"run\"]".into());
        let back = Diagnostics::parse(&d.render());
        assert_eq!(back, d);
        assert_eq!(back.pid(), Some(42));
    }

    /// With 401 locks held here, most are listed past the first page of `/proc/locks`
    /// (about 80 lines), which one `read()` alone returns: each one's holder is found.
    #[cfg(target_os = "linux")]
    #[test]
    fn kernel_names_the_holder_of_every_lock_past_the_first_page_of_proc_locks() {
        let t = tempfile::tempdir().unwrap();
        let lock = held(acquire(&t.path().join("homer.lock")).unwrap());
        let others: Vec<File> = (0..400)
            .map(|i| {
                let f = File::create(t.path().join(format!("other-{i}"))).unwrap();
                rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
                f
            })
            .collect();
        let mut ids = vec![lock.dev_ino()];
        ids.extend(others.iter().map(|f| {
            let m = f.metadata().unwrap();
            (m.dev(), m.ino())
        }));
        let missed: Vec<u64> = ids
            .iter()
            .filter(|(dev, ino)| flock_holder_pid(*dev, *ino) != Some(std::process::id()))
            .map(|(_, i)| *i)
            .collect();
        assert!(missed.is_empty(), "{} of {} locks not found: inodes {missed:?}", missed.len(), ids.len());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn kernel_names_the_holder() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("homer.lock");
        let lock = held(acquire(&path).unwrap());
        let (dev, ino) = lock.dev_ino();
        assert_eq!(
            flock_holder_pid(dev, ino),
            Some(std::process::id()),
            "dev {dev:#x} ino {ino}; /proc/locks:\n{}",
            std::fs::read_to_string("/proc/locks").unwrap_or_default()
        );
    }
}
