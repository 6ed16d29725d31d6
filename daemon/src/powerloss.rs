//! Power-loss recording: a wrapping SQLite VFS that logs, before every write, what a power
//! cut could take back, so a harness can drop exactly the writes no fsync covered once the
//! processes are dead (`homer-harness`'s `powerloss` module does the dropping). SQLite's
//! own crash tests work this way — a VFS that remembers un-synced writes — but keep them
//! in memory; this one appends them to a log file, so several processes and a SIGKILL
//! are covered.
//!
//! Compiled into every build and inert unless `HOMERD_POWERLOSS_LOG` names a log file.
//! Then [`install_from_env`], called first thing in `main` (before any connection opens),
//! registers the VFS `homerd-powerloss` as SQLite's default, wrapping the previous default
//! (`unix`): every connection of the process goes through it. The wrapper passes every
//! call on to the real VFS and file, and
//!
//! - before each `xWrite`/`xTruncate` of a main database, rollback journal or WAL, appends
//!   an UNDO record: pid, the file's (dev, ino) and path, the op, offset, length, the
//!   file's size before the op and the bytes the op overwrites or cuts off (read through
//!   the real file first);
//! - after each `xSync` of such a file completes, appends a SYNC record carrying the log's
//!   length when the sync *began*: exactly the records appended before that point are
//!   covered by it (a write whose record came later may have missed the fsync);
//! - after a successful `xDelete`, appends an UNLINK record (when it removed the last
//!   link), so a later file that reuses the inode is not mistaken for the dead one;
//! - at each open of such a file read-write, appends an OPEN record (its path), so the
//!   harness finds a file that was hard-linked into place under another name.
//!
//! `HOMERD_POWERLOSS_CUT=N` makes the process append a CUT record (with the phase label)
//! and SIGKILL itself just before its N-th recorded op (write, truncate or sync): a power
//! cut at that instant. [`phase`] labels what the daemon is writing, for the records.
//!
//! Each record is one `write()` on an `O_APPEND` descriptor (several processes append to
//! one log) and is self-delimiting: magic, length, body, checksum. A record torn by a
//! SIGKILL mid-append is skipped by the reader; that is safe because the real write only
//! happens after its record was appended whole. If a record cannot be appended, the op
//! fails with an I/O error rather than happening unrecorded.
//!
//! Record layout (integers little-endian; `harness/src/powerloss.rs` reads it, and
//! `daemon/tests/powerloss.rs` checks the two agree):
//!
//! ```text
//! magic "HPL1" | body_len u32 | body | FNV-1a-64(body) u64
//! body: kind u8 (1 open, 2 write, 3 truncate, 4 sync, 5 unlink, 6 cut) | pid u32 | op u64
//!       | dev u64 | ino u64 | offset u64 | length u64 | size_before u64
//!       | phase_len u8 | phase | path_len u16 | path | pre_len u32 | pre-image
//! offset: write: where; truncate: the new size; sync: the log length when it began
//! ```
//!
//! Limits, by design:
//! - creating, unlinking and renaming files count as durable at once (a real filesystem
//!   needs a directory fsync for that; homerd's own creation path fsyncs the directory);
//! - the `-shm` file is passed through unrecorded: it is memory SQLite never syncs, and the
//!   first process to open the database after a crash rebuilds the wal-index from the WAL;
//! - temp files, statement journals and read-only handles are not recorded (never
//!   durable, or never written);
//! - `SQLITE_FCNTL_SIZE_HINT` on a recorded file is ignored (a hint may be; the unix VFS
//!   would otherwise extend the file behind `xWrite`'s back when a chunk size is set);
//! - the record order is the op order within a file because SQLite's locks serialise the
//!   writers of a file. A write by one process that races another process's fsync of the
//!   same file counts as covered when its record was appended before the fsync began.
#![allow(clippy::disallowed_methods)] // no SQL here: the rusqlite::ffi VFS interface only

use std::ffi::{c_char, c_int, c_void, CStr, OsStr};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use rusqlite::ffi;

use crate::events;

/// The log file; recording is on when this is set (non-empty).
pub const LOG_ENV: &str = "HOMERD_POWERLOSS_LOG";
/// Cut power (SIGKILL self) just before this process's N-th recorded op.
pub const CUT_ENV: &str = "HOMERD_POWERLOSS_CUT";
/// The name the wrapping VFS is registered under.
pub const VFS_NAME: &str = "homerd-powerloss";
const VFS_NAME_C: &CStr = c"homerd-powerloss";

/// The first bytes of every record.
pub const MAGIC: [u8; 4] = *b"HPL1";

/// Record kinds (the `kind` byte).
pub mod kind {
    pub const OPEN: u8 = 1;
    pub const WRITE: u8 = 2;
    pub const TRUNCATE: u8 = 3;
    pub const SYNC: u8 = 4;
    pub const UNLINK: u8 = 5;
    pub const CUT: u8 = 6;
}

/// The label before the first [`phase`] call.
const FIRST_PHASE: &str = "start";

struct Recorder {
    log: File,
    path: PathBuf,
    cut: Option<u64>,
    ops: AtomicU64,
}

static RECORDER: OnceLock<Recorder> = OnceLock::new();
static ACTIVE: AtomicBool = AtomicBool::new(false);
static PHASE: Mutex<&'static str> = Mutex::new(FIRST_PHASE);

/// Labels what the process writes from now on ("claim", "outcome", ...), for the records.
/// One relaxed atomic load when recording is off.
pub fn phase(label: &'static str) {
    if ACTIVE.load(Ordering::Relaxed) {
        *PHASE.lock().unwrap_or_else(|e| e.into_inner()) = label;
    }
}

fn current_phase() -> &'static str {
    *PHASE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether this process records (for tests and the startup announcement).
pub fn active() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}

/// Installs the recorder when `HOMERD_POWERLOSS_LOG` is set; call before any SQLite
/// connection opens. A bad setting is a broken test setup: it exits 64 naming the variable
/// rather than run unrecorded.
pub fn install_from_env() {
    let Some(log) = std::env::var_os(LOG_ENV).filter(|v| !v.is_empty()) else { return };
    let cut = match std::env::var(CUT_ENV) {
        Err(std::env::VarError::NotPresent) => None,
        Ok(s) if s.trim().is_empty() => None,
        Ok(s) => match s.trim().parse::<u64>() {
            Ok(n) if n >= 1 => Some(n),
            _ => {
                eprintln!("homerd: {CUT_ENV}={s}: expected an op number of at least 1 (or unset it)");
                std::process::exit(crate::error::exit::USAGE);
            }
        },
        Err(e) => {
            eprintln!("homerd: {CUT_ENV}: {e}; unset it or give an op number");
            std::process::exit(crate::error::exit::USAGE);
        }
    };
    if let Err(e) = install(Path::new(&log), cut, true) {
        eprintln!("homerd: {LOG_ENV}={}: {e}; unset it or point it at a writable file", Path::new(&log).display());
        std::process::exit(crate::error::exit::USAGE);
    }
}

/// Opens `log` for appending and registers the wrapping VFS (as SQLite's default with
/// `as_default`; otherwise connections must name [`VFS_NAME`]). Once per process; with
/// `cut`, the process SIGKILLs itself before its `cut`-th recorded op.
pub fn install(log: &Path, cut: Option<u64>, as_default: bool) -> Result<(), String> {
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(log)
        .map_err(|e| format!("cannot open the power-loss log: {e}"))?;
    RECORDER
        .set(Recorder { log: file, path: log.to_owned(), cut, ops: AtomicU64::new(0) })
        .map_err(|_| String::from("power-loss recording is already installed in this process"))?;
    register(as_default)?;
    ACTIVE.store(true, Ordering::SeqCst);
    Ok(())
}

/// Announces recording at daemon start (`powerloss.armed`), so a hook left in an
/// environment by accident is visible in the log.
pub fn announce() {
    if let Some(r) = RECORDER.get() {
        events::warn("powerloss.armed", "Power-loss recording on (test hook)")
            .field("log", r.path.display().to_string())
            .field("cut", r.cut)
            .emit();
    }
}

// ---------------------------------------------------------------------------------------
// Records

/// One record's fields (see the module docs for the layout).
struct Rec<'a> {
    kind: u8,
    op: u64,
    dev: u64,
    ino: u64,
    offset: u64,
    length: u64,
    size_before: u64,
    path: &'a [u8],
    pre: &'a [u8],
}

/// FNV-1a, 64 bits: enough to tell a whole record from a torn or misaligned one.
pub fn checksum(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn encode(r: &Rec<'_>, pid: u32, phase: &[u8]) -> Vec<u8> {
    let numbers = [r.op, r.dev, r.ino, r.offset, r.length, r.size_before];
    encode_record(r.kind, pid, numbers, phase, r.path, r.pre)
}

/// A record of `kind` as process `pid` appends it while in `phase`, `numbers` being its op,
/// dev, ino, offset, length and size before: the one encoder of the layout (the harness
/// builds its test logs with it, so its reader is tested on these bytes). A phase or path
/// too long for its length field is cut short.
pub fn encode_record(kind: u8, pid: u32, numbers: [u64; 6], phase: &[u8], path: &[u8], pre: &[u8]) -> Vec<u8> {
    let phase = &phase[..phase.len().min(u8::MAX as usize)];
    let path = &path[..path.len().min(u16::MAX as usize)];
    let body_len = 1 + 4 + 8 * 6 + 1 + phase.len() + 2 + path.len() + 4 + pre.len();
    let mut out = Vec::with_capacity(4 + 4 + body_len + 8);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&pid.to_le_bytes());
    for v in numbers {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.push(phase.len() as u8);
    out.extend_from_slice(phase);
    out.extend_from_slice(&(path.len() as u16).to_le_bytes());
    out.extend_from_slice(path);
    out.extend_from_slice(&(pre.len() as u32).to_le_bytes());
    out.extend_from_slice(pre);
    debug_assert_eq!(out.len(), 8 + body_len);
    let sum = checksum(&out[8..]);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

/// Appends one record with one `write()`: concurrent appenders (threads, processes) never
/// interleave inside a record, and a short write is an error, never retried in pieces.
fn append(r: &Rec<'_>) -> io::Result<()> {
    let rec = RECORDER.get().ok_or_else(|| io::Error::other("power-loss recorder not installed"))?;
    let bytes = encode(r, std::process::id(), current_phase().as_bytes());
    loop {
        match (&rec.log).write(&bytes) {
            Ok(n) if n == bytes.len() => return Ok(()),
            Ok(n) => {
                return Err(io::Error::other(format!("short append to the power-loss log ({n} of {})", bytes.len())))
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Counts one recorded op; at the armed op, appends the CUT record and dies.
fn begin_op() -> u64 {
    let Some(rec) = RECORDER.get() else { return 0 };
    let n = rec.ops.fetch_add(1, Ordering::SeqCst) + 1;
    if let Some(cut) = rec.cut {
        if n >= cut {
            // Another thread past the cut while the SIGKILL lands dies the same way,
            // without doing its op: nothing may reach a file after the cut.
            if n == cut {
                let _ = append(&Rec {
                    kind: kind::CUT,
                    op: n,
                    dev: 0,
                    ino: 0,
                    offset: 0,
                    length: 0,
                    size_before: 0,
                    path: b"",
                    pre: b"",
                });
            }
            crate::platform::signal_self(crate::platform::Signal::KILL);
            loop {
                // SIGKILL is on its way and cannot be caught: wait for it here.
                std::thread::park();
            }
        }
    }
    n
}

fn log_len() -> io::Result<u64> {
    let rec = RECORDER.get().ok_or_else(|| io::Error::other("power-loss recorder not installed"))?;
    Ok(rec.log.metadata()?.len())
}

// ---------------------------------------------------------------------------------------
// The VFS

/// What a recorded file is.
struct Tracked {
    dev: u64,
    ino: u64,
    path: Vec<u8>,
}

/// Our `sqlite3_file`: SQLite allocates `szOsFile` bytes and we lay out this header
/// first (`base` must be the first field) and the real VFS's file at [`REAL_OFFSET`].
#[repr(C)]
struct WrapFile {
    base: ffi::sqlite3_file,
    real: *mut ffi::sqlite3_file,
    /// Null when the file is passed through unrecorded; else a leaked `Box<Tracked>`,
    /// freed in `xClose`.
    tracked: *mut Tracked,
}

/// Where the real file starts inside ours (8-byte aligned, as SQLite's allocations are).
const REAL_OFFSET: usize = (std::mem::size_of::<WrapFile>() + 7) & !7;

/// The files whose writes can matter after a power cut.
const RECORDED: c_int =
    ffi::SQLITE_OPEN_MAIN_DB | ffi::SQLITE_OPEN_MAIN_JOURNAL | ffi::SQLITE_OPEN_WAL | ffi::SQLITE_OPEN_SUPER_JOURNAL;

/// Registers the recording VFS in front of SQLite's default one. Call it before SQLite
/// opens connections through the default VFS (`install` runs first thing in `main`, or in
/// a test before its connections): a connection opened earlier is not recorded. That is
/// a matter of what gets recorded, not of memory safety — both SQLite calls below are
/// thread-safe — so this is a safe function.
fn register(as_default: bool) -> Result<(), String> {
    // SAFETY: sqlite3_vfs_find(NULL) initialises SQLite if needed and returns the default
    // VFS (or null), a static registration that lives as long as the process.
    let Some(r) = (unsafe { ffi::sqlite3_vfs_find(ptr::null()).as_ref() }) else {
        return Err(String::from("SQLite has no default VFS to wrap"));
    };
    let real: *const ffi::sqlite3_vfs = r;
    let vfs = Box::new(ffi::sqlite3_vfs {
        iVersion: r.iVersion.min(3),
        szOsFile: (REAL_OFFSET + r.szOsFile as usize) as c_int,
        mxPathname: r.mxPathname,
        pNext: ptr::null_mut(),
        zName: VFS_NAME_C.as_ptr(),
        pAppData: real.cast_mut().cast(),
        xOpen: Some(vfs_open),
        xDelete: Some(vfs_delete),
        xAccess: Some(vfs_access),
        xFullPathname: Some(vfs_full_pathname),
        xDlOpen: Some(vfs_dl_open),
        xDlError: Some(vfs_dl_error),
        xDlSym: Some(vfs_dl_sym),
        xDlClose: Some(vfs_dl_close),
        xRandomness: Some(vfs_randomness),
        xSleep: Some(vfs_sleep),
        xCurrentTime: Some(vfs_current_time),
        xGetLastError: Some(vfs_get_last_error),
        xCurrentTimeInt64: Some(vfs_current_time_int64),
        xSetSystemCall: Some(vfs_set_system_call),
        xGetSystemCall: Some(vfs_get_system_call),
        xNextSystemCall: Some(vfs_next_system_call),
    });
    // SAFETY: the VFS is leaked, so it outlives every connection; its methods forward to
    // `real`, which SQLite keeps registered.
    let rc = unsafe { ffi::sqlite3_vfs_register(Box::into_raw(vfs), c_int::from(as_default)) };
    if rc != ffi::SQLITE_OK {
        return Err(format!("sqlite3_vfs_register failed ({rc})"));
    }
    Ok(())
}

/// Forwards a VFS method to the real VFS (or returns `$missing` if it lacks it).
macro_rules! forward_vfs {
    ($vfs:expr, $method:ident ( $($arg:expr),* ), $missing:expr) => {{
        // SAFETY: SQLite calls our VFS methods with our VFS, whose pAppData is the real
        // VFS (set in `register`), registered for the life of the process; the real VFS's
        // method takes the same arguments with the real VFS in front.
        unsafe {
            let real = &mut *(*$vfs).pAppData.cast::<ffi::sqlite3_vfs>();
            match real.$method {
                Some(f) => f(real, $($arg),*),
                None => $missing,
            }
        }
    }};
}

/// Forwards an io method to the real file (or returns `$missing` if it lacks it).
macro_rules! forward_file {
    ($file:expr, $method:ident ( $($arg:expr),* ), $missing:expr) => {{
        // SAFETY: SQLite calls io methods only on a file our xOpen set up, between that
        // open and xClose; its real file was opened by the real VFS, whose methods take it.
        unsafe {
            let real = (*$file.cast::<WrapFile>()).real;
            match (*(*real).pMethods).$method {
                Some(f) => f(real, $($arg),*),
                None => $missing,
            }
        }
    }};
}

unsafe extern "C" fn vfs_open(
    vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let wrap = file.cast::<WrapFile>();
    // SAFETY: SQLite gives us `szOsFile` bytes at `file` (REAL_OFFSET + the real size, so
    // the real file fits after our header); we initialise the header before anything can
    // fail (a null pMethods tells SQLite there is nothing to close). The header is ours
    // alone until xClose, and the real file lies wholly after it, so `header` aliases
    // nothing the real VFS writes.
    let (header, real_file) = unsafe {
        let real_file = file.cast::<u8>().add(REAL_OFFSET).cast::<ffi::sqlite3_file>();
        wrap.write(WrapFile {
            base: ffi::sqlite3_file { pMethods: ptr::null() },
            real: real_file,
            tracked: ptr::null_mut(),
        });
        (&mut *wrap, real_file)
    };
    let rc = forward_vfs!(vfs, xOpen(name, real_file, flags, out_flags), ffi::SQLITE_CANTOPEN);
    // SAFETY: the real xOpen initialised (at least) the real file's pMethods: null, or the
    // real VFS's methods, which live as long as the process.
    let Some(real_methods) = (unsafe { (*real_file).pMethods.as_ref() }) else {
        return rc;
    };
    // SQLite closes a file whose pMethods is set even when the open failed, so ours is set
    // to forward that close.
    header.base.pMethods = methods_for(real_methods.iVersion);
    let read_only = flags & ffi::SQLITE_OPEN_READONLY != 0;
    if rc != ffi::SQLITE_OK || name.is_null() || flags & RECORDED == 0 || read_only {
        return rc;
    }
    // SAFETY: a non-null file name from SQLite is a NUL-terminated path.
    let path = unsafe { CStr::from_ptr(name) }.to_bytes().to_vec();
    let tracked = std::fs::metadata(OsStr::from_bytes(&path)).map_err(|_| ()).and_then(|m| {
        let t = Tracked { dev: m.dev(), ino: m.ino(), path };
        let open = Rec {
            kind: kind::OPEN,
            op: 0,
            dev: t.dev,
            ino: t.ino,
            offset: m.len(),
            length: 0,
            size_before: m.len(),
            path: &t.path,
            pre: b"",
        };
        append(&open).map(|()| t).map_err(|_| ())
    });
    match tracked {
        // Freed in xClose.
        Ok(t) => header.tracked = Box::into_raw(Box::new(t)),
        Err(()) => {
            // Unrecorded writes would make the test lie: refuse the open instead. The real
            // file is closed here, so SQLite must not close it again (and `header` is not
            // used after the close reads the file through `file`).
            header.base.pMethods = ptr::null();
            forward_file!(file, xClose(), ffi::SQLITE_OK);
            return ffi::SQLITE_CANTOPEN;
        }
    }
    rc
}

unsafe extern "C" fn vfs_delete(vfs: *mut ffi::sqlite3_vfs, name: *const c_char, sync_dir: c_int) -> c_int {
    let before = if name.is_null() {
        None
    } else {
        // SAFETY: a non-null file name from SQLite is a NUL-terminated path.
        let path = unsafe { CStr::from_ptr(name) }.to_bytes().to_vec();
        std::fs::metadata(OsStr::from_bytes(&path)).ok().map(|m| (m, path))
    };
    let rc = forward_vfs!(vfs, xDelete(name, sync_dir), ffi::SQLITE_IOERR_DELETE);
    if rc == ffi::SQLITE_OK {
        if let Some((m, path)) = before.filter(|(m, _)| m.nlink() == 1) {
            let rec = Rec {
                kind: kind::UNLINK,
                op: 0,
                dev: m.dev(),
                ino: m.ino(),
                offset: 0,
                length: 0,
                size_before: m.len(),
                path: &path,
                pre: b"",
            };
            if append(&rec).is_err() {
                return ffi::SQLITE_IOERR_DELETE;
            }
        }
    }
    rc
}

/// The VFS methods that only forward to the real VFS: `name(args) -> ret` forwards to the
/// real VFS's `xMethod`, or returns `missing` if it has none. One template, so each
/// forwarder carries the same contract (see [`forward_vfs`]).
macro_rules! vfs_forwarders {
    ($($name:ident => $method:ident($($arg:ident: $ty:ty),*) -> $ret:ty, $missing:expr;)*) => {$(
        unsafe extern "C" fn $name(vfs: *mut ffi::sqlite3_vfs, $($arg: $ty),*) -> $ret {
            forward_vfs!(vfs, $method($($arg),*), $missing)
        }
    )*};
}

type DlSym = Option<unsafe extern "C" fn(*mut ffi::sqlite3_vfs, *mut c_void, *const c_char)>;

vfs_forwarders! {
    vfs_access => xAccess(name: *const c_char, flags: c_int, out: *mut c_int) -> c_int, ffi::SQLITE_IOERR_ACCESS;
    vfs_full_pathname => xFullPathname(name: *const c_char, n: c_int, out: *mut c_char) -> c_int, ffi::SQLITE_ERROR;
    vfs_dl_open => xDlOpen(name: *const c_char) -> *mut c_void, ptr::null_mut();
    vfs_dl_error => xDlError(n: c_int, out: *mut c_char) -> (), ();
    vfs_dl_sym => xDlSym(handle: *mut c_void, symbol: *const c_char) -> DlSym, None;
    vfs_dl_close => xDlClose(handle: *mut c_void) -> (), ();
    vfs_randomness => xRandomness(n: c_int, out: *mut c_char) -> c_int, 0;
    vfs_sleep => xSleep(micros: c_int) -> c_int, 0;
    vfs_current_time => xCurrentTime(out: *mut f64) -> c_int, ffi::SQLITE_ERROR;
    vfs_get_last_error => xGetLastError(n: c_int, out: *mut c_char) -> c_int, 0;
    vfs_current_time_int64 => xCurrentTimeInt64(out: *mut ffi::sqlite3_int64) -> c_int, ffi::SQLITE_ERROR;
    vfs_set_system_call => xSetSystemCall(name: *const c_char, f: ffi::sqlite3_syscall_ptr) -> c_int, ffi::SQLITE_NOTFOUND;
    vfs_get_system_call => xGetSystemCall(name: *const c_char) -> ffi::sqlite3_syscall_ptr, None;
    vfs_next_system_call => xNextSystemCall(name: *const c_char) -> *const c_char, ptr::null();
}

/// Our io methods, at the version of the real file's (SQLite decides what to call, WAL
/// support included, from `iVersion`).
fn methods_for(version: c_int) -> *const ffi::sqlite3_io_methods {
    match version {
        ..=1 => &METHODS_V1,
        2 => &METHODS_V2,
        _ => &METHODS_V3,
    }
}

static METHODS_V1: ffi::sqlite3_io_methods = io_methods(1);
static METHODS_V2: ffi::sqlite3_io_methods = io_methods(2);
static METHODS_V3: ffi::sqlite3_io_methods = io_methods(3);

const fn io_methods(version: c_int) -> ffi::sqlite3_io_methods {
    ffi::sqlite3_io_methods {
        iVersion: version,
        xClose: Some(file_close),
        xRead: Some(file_read),
        xWrite: Some(file_write),
        xTruncate: Some(file_truncate),
        xSync: Some(file_sync),
        xFileSize: Some(file_size),
        xLock: Some(file_lock),
        xUnlock: Some(file_unlock),
        xCheckReservedLock: Some(file_check_reserved_lock),
        xFileControl: Some(file_control),
        xSectorSize: Some(file_sector_size),
        xDeviceCharacteristics: Some(file_device_characteristics),
        xShmMap: if version >= 2 { Some(file_shm_map) } else { None },
        xShmLock: if version >= 2 { Some(file_shm_lock) } else { None },
        xShmBarrier: if version >= 2 { Some(file_shm_barrier) } else { None },
        xShmUnmap: if version >= 2 { Some(file_shm_unmap) } else { None },
        xFetch: if version >= 3 { Some(file_fetch) } else { None },
        xUnfetch: if version >= 3 { Some(file_unfetch) } else { None },
    }
}

/// The file's record identity, if it is recorded.
///
/// # Safety
/// `file` must be a file our xOpen set up and not yet closed.
unsafe fn tracked<'a>(file: *mut ffi::sqlite3_file) -> Option<&'a Tracked> {
    // SAFETY: per the contract; `tracked` is null or a live Box until xClose.
    unsafe { (*file.cast::<WrapFile>()).tracked.as_ref() }
}

/// The real file's size (fstat through its xFileSize).
fn real_size(file: *mut ffi::sqlite3_file) -> Result<u64, c_int> {
    let mut size: ffi::sqlite3_int64 = 0;
    let rc = forward_file!(file, xFileSize(&mut size), ffi::SQLITE_IOERR_FSTAT);
    if rc == ffi::SQLITE_OK {
        Ok(size.max(0) as u64)
    } else {
        Err(rc)
    }
}

/// The bytes `[from, from + len)` as they are now (through the real file's xRead).
fn pre_image(file: *mut ffi::sqlite3_file, from: u64, len: u64) -> Result<Vec<u8>, c_int> {
    let mut buf = vec![0u8; len as usize];
    if len == 0 {
        return Ok(buf);
    }
    let n = c_int::try_from(len).map_err(|_| ffi::SQLITE_IOERR_READ)?;
    let rc = forward_file!(file, xRead(buf.as_mut_ptr().cast(), n, from as ffi::sqlite3_int64), ffi::SQLITE_IOERR_READ);
    // A short read zero-fills the rest, which is what a reader saw there too.
    if rc == ffi::SQLITE_OK || rc == ffi::SQLITE_IOERR_SHORT_READ {
        Ok(buf)
    } else {
        Err(rc)
    }
}

/// Appends the UNDO record of a write or truncate of `t` (the op is counted first: the cut
/// comes before it).
fn record_undo(file: *mut ffi::sqlite3_file, t: &Tracked, what: u8, offset: u64, length: u64) -> Result<(), c_int> {
    let op = begin_op();
    let size = real_size(file)?;
    let (from, len) = match what {
        kind::WRITE if offset < size => (offset, length.min(size - offset)),
        kind::TRUNCATE if offset < size => (offset, size - offset),
        _ => (0, 0),
    };
    let pre = pre_image(file, from, len)?;
    let rec =
        Rec { kind: what, op, dev: t.dev, ino: t.ino, offset, length, size_before: size, path: &t.path, pre: &pre };
    append(&rec).map_err(|_| if what == kind::WRITE { ffi::SQLITE_IOERR_WRITE } else { ffi::SQLITE_IOERR_TRUNCATE })
}

unsafe extern "C" fn file_close(file: *mut ffi::sqlite3_file) -> c_int {
    let rc = forward_file!(file, xClose(), ffi::SQLITE_OK);
    let wrap = file.cast::<WrapFile>();
    // SAFETY: the file was set up by our xOpen; `tracked` is null or our Box, freed once.
    unsafe {
        let t = std::mem::replace(&mut (*wrap).tracked, ptr::null_mut());
        if !t.is_null() {
            drop(Box::from_raw(t));
        }
    }
    rc
}

unsafe extern "C" fn file_write(
    file: *mut ffi::sqlite3_file,
    buf: *const c_void,
    n: c_int,
    off: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: SQLite calls xWrite on an open file of ours.
    if let Some(t) = unsafe { tracked(file) } {
        if let Err(rc) = record_undo(file, t, kind::WRITE, off.max(0) as u64, n.max(0) as u64) {
            return rc;
        }
    }
    forward_file!(file, xWrite(buf, n, off), ffi::SQLITE_IOERR_WRITE)
}

unsafe extern "C" fn file_truncate(file: *mut ffi::sqlite3_file, size: ffi::sqlite3_int64) -> c_int {
    // SAFETY: SQLite calls xTruncate on an open file of ours.
    if let Some(t) = unsafe { tracked(file) } {
        if let Err(rc) = record_undo(file, t, kind::TRUNCATE, size.max(0) as u64, 0) {
            return rc;
        }
    }
    forward_file!(file, xTruncate(size), ffi::SQLITE_IOERR_TRUNCATE)
}

unsafe extern "C" fn file_sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    // SAFETY: SQLite calls xSync on an open file of ours.
    let Some(t) = (unsafe { tracked(file) }) else {
        return forward_file!(file, xSync(flags), ffi::SQLITE_IOERR_FSYNC);
    };
    let op = begin_op();
    // Records appended before the fsync starts are the ones it is sure to cover.
    let Ok(covers) = log_len() else { return ffi::SQLITE_IOERR_FSYNC };
    let rc = forward_file!(file, xSync(flags), ffi::SQLITE_IOERR_FSYNC);
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    let size = real_size(file).unwrap_or(0);
    let rec = Rec {
        kind: kind::SYNC,
        op,
        dev: t.dev,
        ino: t.ino,
        offset: covers,
        length: 0,
        size_before: size,
        path: &t.path,
        pre: b"",
    };
    // Unrecorded, the sync would look lost and its writes would be dropped: report it failed.
    if append(&rec).is_err() {
        return ffi::SQLITE_IOERR_FSYNC;
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn file_control(file: *mut ffi::sqlite3_file, op: c_int, arg: *mut c_void) -> c_int {
    // SAFETY: SQLite calls xFileControl on an open file of ours.
    if op == ffi::SQLITE_FCNTL_SIZE_HINT && unsafe { tracked(file) }.is_some() {
        // Ignored: with a chunk size the real VFS would grow the file outside xWrite.
        return ffi::SQLITE_OK;
    }
    forward_file!(file, xFileControl(op, arg), ffi::SQLITE_NOTFOUND)
}

/// The io methods that only forward to the real file: `name(args) -> ret` forwards to
/// the real file's `xMethod`, or returns `missing` if it has none (see [`forward_file`]).
macro_rules! file_forwarders {
    ($($name:ident => $method:ident($($arg:ident: $ty:ty),*) -> $ret:ty, $missing:expr;)*) => {$(
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file, $($arg: $ty),*) -> $ret {
            forward_file!(file, $method($($arg),*), $missing)
        }
    )*};
}

file_forwarders! {
    file_read => xRead(buf: *mut c_void, n: c_int, off: ffi::sqlite3_int64) -> c_int, ffi::SQLITE_IOERR_READ;
    file_size => xFileSize(out: *mut ffi::sqlite3_int64) -> c_int, ffi::SQLITE_IOERR_FSTAT;
    file_lock => xLock(level: c_int) -> c_int, ffi::SQLITE_IOERR_LOCK;
    file_unlock => xUnlock(level: c_int) -> c_int, ffi::SQLITE_IOERR_UNLOCK;
    file_check_reserved_lock => xCheckReservedLock(out: *mut c_int) -> c_int, ffi::SQLITE_IOERR_CHECKRESERVEDLOCK;
    file_sector_size => xSectorSize() -> c_int, 4096;
    file_device_characteristics => xDeviceCharacteristics() -> c_int, 0;
    file_shm_map => xShmMap(page: c_int, size: c_int, extend: c_int, out: *mut *mut c_void) -> c_int, ffi::SQLITE_IOERR_SHMMAP;
    file_shm_lock => xShmLock(offset: c_int, n: c_int, flags: c_int) -> c_int, ffi::SQLITE_IOERR_SHMLOCK;
    file_shm_barrier => xShmBarrier() -> (), ();
    file_shm_unmap => xShmUnmap(delete: c_int) -> c_int, ffi::SQLITE_OK;
    // Memory-mapped reads: SQLite never writes through them (no SQLITE_MMAP_READWRITE).
    file_fetch => xFetch(off: ffi::sqlite3_int64, n: c_int, out: *mut *mut c_void) -> c_int, ffi::SQLITE_OK;
    file_unfetch => xUnfetch(off: ffi::sqlite3_int64, p: *mut c_void) -> c_int, ffi::SQLITE_OK;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_magic_length_body_checksum() {
        let rec = Rec {
            kind: kind::WRITE,
            op: 7,
            dev: 1,
            ino: 2,
            offset: 4096,
            length: 3,
            size_before: 4096,
            path: b"/x/homer.db",
            pre: b"",
        };
        let bytes = encode(&rec, std::process::id(), current_phase().as_bytes());
        assert_eq!(&bytes[..4], &MAGIC);
        let body_len = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
        assert_eq!(bytes.len(), 8 + body_len + 8);
        let body = &bytes[8..8 + body_len];
        assert_eq!(body[0], kind::WRITE);
        assert_eq!(u32::from_le_bytes(body[1..5].try_into().unwrap()), std::process::id());
        assert_eq!(u64::from_le_bytes(body[5..13].try_into().unwrap()), 7);
        let sum = u64::from_le_bytes(bytes[8 + body_len..].try_into().unwrap());
        assert_eq!(sum, checksum(body));
        let mut torn = bytes.clone();
        torn[20] ^= 1;
        assert_ne!(checksum(&torn[8..8 + body_len]), sum, "a changed byte must change the checksum");
    }

    #[test]
    fn the_wrapper_fits_in_front_of_the_real_file() {
        assert_eq!(REAL_OFFSET % 8, 0);
        assert!(REAL_OFFSET >= std::mem::size_of::<WrapFile>());
    }
}
