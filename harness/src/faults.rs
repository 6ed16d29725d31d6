//! Faults below the process: damaged bytes, a full filesystem, a size-limited home.
//!
//! - [`corrupt`] overwrites a byte range in place (same inode, so a daemon that holds the
//!   file open reads the damage) with bytes from a fixed-seed generator: a scenario damages
//!   the same bytes the same way on every run.
//! - [`fill`] writes zeros until the filesystem says ENOSPC. It refuses anything but a
//!   tmpfs: filling a real disk would hurt the machine, not just the scenario.
//! - [`mount_tmpfs`] / [`unmount`] give a scenario a home of a fixed size (Linux, root or
//!   `CAP_SYS_ADMIN`). The executor mounts before any process starts and unmounts after
//!   every process is dead, on every path (`procs` keeps the list for its signal handler).
//!
//! Linux-only facilities are behind `cfg(target_os = "linux")`; elsewhere they return an
//! error that says so (scenarios that need them are skipped before they run).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::steps::file::Offset;

/// The seed of every `corrupt` step: fixed, so a damaged file is the same on every run.
pub const CORRUPT_SEED: u64 = 0x686f_6d65_725f_3232;

/// SplitMix64: small, fast, and well-mixed enough that damaged bytes look like noise.
#[derive(Clone, Debug)]
pub struct Prng(u64);

impl Prng {
    pub fn new(seed: u64) -> Prng {
        Prng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// The bytes `corrupt` writes: the first `len` of the fixed-seed stream.
pub fn corrupt_bytes(len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    Prng::new(CORRUPT_SEED).fill(&mut buf);
    buf
}

/// The byte offset an [`Offset`] names in a file of `size` bytes (a percentage rounds down).
pub fn resolve_offset(offset: Offset, size: u64) -> u64 {
    match offset {
        Offset::Bytes(n) => n,
        Offset::Percent(p) => ((size as f64) * p / 100.0).floor() as u64,
    }
}

/// Overwrite `len` bytes at `offset` of the file at `path`, in place. Fails, changing
/// nothing, if the range runs past the end of the file. Returns the resolved offset.
pub fn corrupt(path: &Path, offset: Offset, len: u64) -> Result<u64, String> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| format!("open {}: {e}", path.display()))?;
    let size = file.metadata().map_err(|e| format!("stat {}: {e}", path.display()))?.len();
    let at = resolve_offset(offset, size);
    if at.checked_add(len).is_none_or(|end| end > size) {
        return Err(format!("{} is {size} bytes: {len} bytes at offset {at} run past its end", path.display()));
    }
    let len = usize::try_from(len).map_err(|_| format!("{len} bytes do not fit in memory"))?;
    file.write_all_at(&corrupt_bytes(len), at).map_err(|e| format!("write {}: {e}", path.display()))?;
    Ok(at)
}

/// Create `path` (it must not exist) and write zeros into it until the filesystem is full;
/// the file is kept. Returns how many bytes it holds. Only on a tmpfs (see module docs).
pub fn fill(path: &Path) -> Result<u64, String> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    if !is_tmpfs(dir) {
        return Err(format!(
            "{} is not on a tmpfs: `fill` only fills a size-limited tmpfs home (home_size)",
            path.display()
        ));
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| format!("create {}: {e}", path.display()))?;
    let mut written: u64 = 0;
    // Large writes fill quickly; the smaller ones then take what a short write left.
    for chunk in [1 << 20, 4096, 1] {
        let zeros = vec![0u8; chunk];
        loop {
            match file.write(&zeros) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if is_full(&e) => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("write {} after {written} bytes: {e}", path.display())),
            }
        }
    }
    Ok(written)
}

fn is_full(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// Whether `path` is on a tmpfs.
#[cfg(target_os = "linux")]
pub fn is_tmpfs(path: &Path) -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    let Ok(st) = rustix::fs::statfs(path) else { return false };
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
    let kind = st.f_type as i64;
    kind == TMPFS_MAGIC
}

/// Whether `path` is on a tmpfs (never, where the harness mounts none).
#[cfg(not(target_os = "linux"))]
pub fn is_tmpfs(_path: &Path) -> bool {
    false
}

/// Why this process cannot mount a tmpfs, if it cannot: not Linux, or no `CAP_SYS_ADMIN`.
pub fn cannot_mount() -> Option<String> {
    if !cfg!(target_os = "linux") {
        return Some(String::from("needs Linux (a tmpfs mount)"));
    }
    const CAP_SYS_ADMIN: u32 = 21;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    if effective & (1 << CAP_SYS_ADMIN) == 0 {
        return Some(String::from("needs root or CAP_SYS_ADMIN to mount a tmpfs"));
    }
    None
}

/// Mount a fresh tmpfs of `size` bytes at the existing directory `dir`, mode 0700.
#[cfg(target_os = "linux")]
pub fn mount_tmpfs(dir: &Path, size: u64) -> Result<(), String> {
    use rustix::mount::{mount, MountFlags};
    let data = std::ffi::CString::new(format!("size={size},mode=0700")).expect("no NUL in the options");
    mount("tmpfs", dir, "tmpfs", MountFlags::NOSUID | MountFlags::NODEV, data.as_c_str())
        .map_err(|e| format!("mount a {size}-byte tmpfs at {}: {}", dir.display(), std::io::Error::from(e)))
}

#[cfg(not(target_os = "linux"))]
pub fn mount_tmpfs(dir: &Path, _size: u64) -> Result<(), String> {
    Err(format!("cannot mount a tmpfs at {}: tmpfs homes need Linux", dir.display()))
}

/// Unmount whatever is mounted at `dir`; nothing mounted there is success. A mount still
/// busy after a short while is detached (lazily unmounted) rather than leaked.
#[cfg(target_os = "linux")]
pub fn unmount(dir: &Path) -> Result<(), String> {
    use rustix::mount::{unmount as umount2, UnmountFlags};
    use std::time::{Duration, Instant};
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let Err(errno) = umount2(dir, UnmountFlags::empty()) else { return Ok(()) };
        let e = std::io::Error::from(errno);
        match e.raw_os_error() {
            // Not a mount point (any more): nothing to do.
            Some(libc::EINVAL) | Some(libc::ENOENT) if !mount_points().iter().any(|m| m == dir) => return Ok(()),
            Some(libc::EBUSY) if Instant::now() < deadline => {
                // A process killed a moment ago may still be closing its files (no event says
                // when): poll until the deadline.
                #[allow(clippy::disallowed_methods)]
                std::thread::sleep(Duration::from_millis(20));
            }
            Some(libc::EBUSY) => {
                return umount2(dir, UnmountFlags::DETACH)
                    .map_err(|e| format!("unmount {}: {}", dir.display(), std::io::Error::from(e)));
            }
            _ => return Err(format!("unmount {}: {e}", dir.display())),
        }
    }
}

#[cfg(not(target_os = "linux"))]
pub fn unmount(_dir: &Path) -> Result<(), String> {
    Ok(())
}

/// Every mount point in this process's mount namespace (Linux `/proc/self/mountinfo`;
/// empty elsewhere).
pub fn mount_points() -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines().filter_map(|l| l.split(' ').nth(4)).map(|p| PathBuf::from(unescape_mountinfo(p))).collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\NNN` (octal).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Copy a directory tree (files, directories, symlinks), keeping permission bits.
pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else if kind.is_dir() {
            copy_tree(&src, &dst)?;
        } else if kind.is_file() {
            std::fs::copy(&src, &dst)?;
        }
    }
    let mode = std::fs::metadata(from)?.permissions().mode();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_is_fixed() {
        assert_eq!(corrupt_bytes(600), corrupt_bytes(600));
        assert_eq!(corrupt_bytes(13), corrupt_bytes(600)[..13]);
        // Noise, not a pattern: most of the 256 byte values appear in 600 bytes.
        let distinct: std::collections::BTreeSet<u8> = corrupt_bytes(600).into_iter().collect();
        assert!(distinct.len() > 150, "{}", distinct.len());
    }

    #[test]
    fn percentages_resolve_against_the_size() {
        assert_eq!(resolve_offset(Offset::Percent(50.0), 1000), 500);
        assert_eq!(resolve_offset(Offset::Percent(50.0), 1001), 500);
        assert_eq!(resolve_offset(Offset::Percent(12.5), 4096), 512);
        assert_eq!(resolve_offset(Offset::Percent(0.0), 4096), 0);
        assert_eq!(resolve_offset(Offset::Percent(100.0), 4096), 4096);
        assert_eq!(resolve_offset(Offset::Bytes(7), 4096), 7);
    }

    #[test]
    fn corrupt_writes_exactly_len_bytes_at_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let original = vec![0xAAu8; 10_000];
        std::fs::write(&path, &original).unwrap();
        let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap());
        assert_eq!(corrupt(&path, Offset::Bytes(1234), 600).unwrap(), 1234);
        let now = std::fs::read(&path).unwrap();
        assert_eq!(now.len(), original.len());
        assert_eq!(now[..1234], original[..1234]);
        assert_eq!(now[1234..1834], corrupt_bytes(600)[..]);
        assert_eq!(now[1834..], original[1834..]);
        // In place: a process holding the file open sees the damage.
        assert_eq!(std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap()), ino);

        std::fs::write(&path, &original).unwrap();
        assert_eq!(corrupt(&path, Offset::Percent(50.0), 600).unwrap(), 5000);
        let now = std::fs::read(&path).unwrap();
        assert_eq!(now[5000..5600], corrupt_bytes(600)[..]);
        assert_eq!((now[..5000] == original[..5000], now[5600..] == original[5600..]), (true, true));
    }

    #[test]
    fn a_range_past_the_end_fails_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("short");
        std::fs::write(&path, [1u8; 1000]).unwrap();
        let e = corrupt(&path, Offset::Percent(50.0), 600).unwrap_err();
        assert!(e.contains("1000 bytes") && e.contains("offset 500"), "{e}");
        assert!(corrupt(&path, Offset::Bytes(401), 600).is_err());
        assert!(corrupt(&path, Offset::Bytes(u64::MAX), 600).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), [1u8; 1000]);
        assert_eq!(corrupt(&path, Offset::Bytes(400), 600).unwrap(), 400);
        assert!(corrupt(&dir.path().join("missing"), Offset::Bytes(0), 1).is_err());
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mountinfo(r"/x\134y"), r"/x\y");
        assert_eq!(unescape_mountinfo(r"/end\04"), r"/end\04");
    }

    #[test]
    fn fill_refuses_what_is_not_a_tmpfs() {
        let dir = tempfile::tempdir().unwrap();
        if is_tmpfs(dir.path()) {
            eprintln!("skipped: the temp dir is itself a tmpfs");
            return;
        }
        let e = fill(&dir.path().join("filler")).unwrap_err();
        assert!(e.contains("not on a tmpfs"), "{e}");
        assert!(!dir.path().join("filler").exists());
    }

    /// A real tmpfs of 1 MiB: fill stops at ENOSPC, the space is really gone, remove frees
    /// it, and the mount is gone afterwards.
    #[test]
    fn fill_stops_at_enospc_on_a_tmpfs_and_remove_frees_it() {
        if let Some(why) = cannot_mount() {
            eprintln!("skipped: {why}");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        mount_tmpfs(&mnt, 1 << 20).unwrap();
        let result = std::panic::catch_unwind(|| {
            assert!(is_tmpfs(&mnt));
            let filler = mnt.join("filler");
            let n = fill(&filler).unwrap();
            assert!(n > (1 << 20) - 64 * 1024 && n <= 1 << 20, "{n} bytes");
            assert_eq!(std::fs::metadata(&filler).unwrap().len(), n);
            let e = std::fs::write(mnt.join("more"), [0u8; 8192]).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
            std::fs::remove_file(&filler).unwrap();
            std::fs::write(mnt.join("more"), vec![0u8; 512 * 1024]).unwrap();
            // A second fill is refused rather than clobbering a file.
            assert!(fill(&mnt.join("more")).unwrap_err().contains("exists"));
        });
        unmount(&mnt).unwrap();
        assert!(!mount_points().contains(&mnt), "still mounted");
        unmount(&mnt).unwrap(); // not mounted any more: still fine
        if let Err(p) = result {
            std::panic::resume_unwind(p);
        }
    }
}
