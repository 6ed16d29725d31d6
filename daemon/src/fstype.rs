//! Refusing network filesystems for the lock and the database.
//!
//! `flock` on NFS, SMB/CIFS or AFP is emulated, local to one client, or unsupported; a
//! lock that two hosts can both "hold" is worse than none. SQLite's own locking has the
//! same problem. So the lock file's and the database's directories are classified before
//! use, and anything network-backed is refused (fail closed).
//!
//! Decisions for the in-between cases:
//! - 9p (VM shares, WSL2 drvfs): refused — the host side can open the same files and
//!   the guest's flock is not visible there.
//! - FUSE, which includes virtiofs and sshfs: refused — lock semantics are whatever the
//!   driver does, and the backing store is often remote or shared with a VM host.
//! - overlayfs, tmpfs, ext4, xfs, btrfs, zfs, apfs, hfs: local, accepted.
//!
//! The classification functions are pure and compiled on every platform so both mappings
//! are unit-tested on Linux; only the `statfs` call itself is per-platform.

use std::io;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsClass {
    Local,
    /// Network or shared filesystem: the name says which, for the error message.
    Refused(&'static str),
}

/// Linux `statfs.f_type` magic numbers (linux/magic.h and the filesystems' sources).
pub fn classify_linux_magic(magic: u64) -> FsClass {
    match magic {
        0x6969 => FsClass::Refused("nfs"),
        0x517b => FsClass::Refused("smb"),
        0xfe53_4d42 => FsClass::Refused("smb2"),
        0xff53_4d42 => FsClass::Refused("cifs"),
        0x5346_414f => FsClass::Refused("afs"),
        0x6b41_4653 => FsClass::Refused("kafs"),
        0x7375_7245 => FsClass::Refused("coda"),
        0x564c => FsClass::Refused("ncp"),
        0x00c3_6400 => FsClass::Refused("ceph"),
        0x0bd0_0bd0 => FsClass::Refused("lustre"),
        0x0116_1970 => FsClass::Refused("gfs2"),
        0x7461_636f => FsClass::Refused("ocfs2"),
        0x0102_1997 => FsClass::Refused("9p"),
        0x6573_5546 => FsClass::Refused("fuse"),
        _ => FsClass::Local,
    }
}

/// macOS `statfs.f_fstypename` values.
pub fn classify_macos_name(name: &str) -> FsClass {
    match name {
        "nfs" => FsClass::Refused("nfs"),
        "smbfs" => FsClass::Refused("smbfs"),
        "afpfs" => FsClass::Refused("afpfs"),
        "webdav" => FsClass::Refused("webdav"),
        "cifs" => FsClass::Refused("cifs"),
        "ftp" => FsClass::Refused("ftp"),
        n if n.contains("fuse") => FsClass::Refused("fuse"),
        _ => FsClass::Local,
    }
}

/// Classifies the filesystem holding `path` (which must exist).
pub fn classify(path: &Path) -> io::Result<FsClass> {
    let st = statfs(path)?;
    #[cfg(target_os = "linux")]
    {
        // f_type is a signed word: on 32-bit targets CIFS's 0xff534d42 would sign-extend.
        Ok(classify_linux_magic((st.f_type as u64) & 0xffff_ffff))
    }
    #[cfg(target_os = "macos")]
    {
        let raw: Vec<u8> = st.f_fstypename.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
        Ok(classify_macos_name(&String::from_utf8_lossy(&raw)))
    }
}

fn statfs(path: &Path) -> io::Result<rustix::fs::StatFs> {
    Ok(rustix::fs::statfs(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_network_magics_are_refused() {
        for (magic, name) in [
            (0x6969, "nfs"),
            (0xff53_4d42, "cifs"),
            (0xfe53_4d42, "smb2"),
            (0x517b, "smb"),
            (0x0102_1997, "9p"),
            (0x6573_5546, "fuse"),
            (0x00c3_6400, "ceph"),
        ] {
            assert_eq!(classify_linux_magic(magic), FsClass::Refused(name));
        }
    }

    #[test]
    fn linux_local_magics_are_accepted() {
        // ext4, xfs, btrfs, tmpfs, overlayfs, zfs
        for magic in [0xef53, 0x5846_5342, 0x9123_683e, 0x0102_1994, 0x794c_7630, 0x2fc1_2fc1] {
            assert_eq!(classify_linux_magic(magic), FsClass::Local, "{magic:#x}");
        }
    }

    #[test]
    fn macos_names() {
        assert_eq!(classify_macos_name("apfs"), FsClass::Local);
        assert_eq!(classify_macos_name("hfs"), FsClass::Local);
        assert_eq!(classify_macos_name("nfs"), FsClass::Refused("nfs"));
        assert_eq!(classify_macos_name("smbfs"), FsClass::Refused("smbfs"));
        assert_eq!(classify_macos_name("afpfs"), FsClass::Refused("afpfs"));
        assert_eq!(classify_macos_name("macfuse"), FsClass::Refused("fuse"));
    }

    #[test]
    fn the_test_directory_is_local() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(classify(dir.path()).unwrap(), FsClass::Local);
    }
}
