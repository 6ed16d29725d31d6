//! The SQLite daemon's wake-up socket: how a command that changed the queue (`enqueue`,
//! `cancel`, `retry`) tells the running daemon at once, instead of leaving it to notice
//! on its next look at `data_version` (every `runner::POLL`, 10 ms).
//!
//! `<home>/homer.wake` is a Unix datagram socket the lock holder binds once it leads
//! ([`WakeSocket::bind`]). A command pokes it after its commit ([`poke`]): one byte,
//! non-blocking, every error ignored. The poke carries nothing the daemon trusts: it only
//! makes the engine look at `data_version` now, which is what decides whether anything
//! changed — so a poke from anyone, a lost poke or a flood of them changes no outcome,
//! only when the engine looks. The poll stays as the fallback for every change that
//! pokes nobody (another writer, a daemon without the socket, a path too long to bind).
//!
//! Invariants: only the lock holder binds, and it removes only a *socket* at the path
//! (a stale one from a daemon that died), never another kind of file; the socket is left
//! in place when the daemon stops (a poke then meets "connection refused", which is
//! ignored), as the lock file is, and the next start replaces it. The socket is made
//! 0600, though a poke from anyone could only make the engine look sooner.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use crate::paths::Paths;

/// The socket's name in the home.
pub const FILE_NAME: &str = "homer.wake";

/// Where the daemon of `paths` listens.
pub fn path(paths: &Paths) -> PathBuf {
    paths.home.join(FILE_NAME)
}

/// [`poke`]s the daemon of `paths`' home: what a command calls after its commit.
pub fn poke_home(paths: &Paths) {
    poke(&path(paths));
}

/// Best effort: tells a daemon listening at `path` that the queue changed. Never blocks
/// and never fails — no socket, nobody listening, a full queue or a path too long for a
/// socket address all leave the daemon to its poll.
pub fn poke(path: &Path) {
    let Ok(sock) = UnixDatagram::unbound() else { return };
    if sock.set_nonblocking(true).is_ok() {
        let _ = sock.send_to(b"!", path);
    }
}

/// The daemon's end, bound and not yet listening.
#[derive(Debug)]
pub struct WakeSocket {
    sock: UnixDatagram,
}

impl WakeSocket {
    /// Binds `path`, replacing a stale socket left there by an earlier daemon. Fails,
    /// changing nothing, when something other than a socket is at the path. Only the
    /// lock holder may call this.
    pub fn bind(path: &Path) -> io::Result<WakeSocket> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket; left alone", path.display()),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let sock = UnixDatagram::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(WakeSocket { sock })
    }

    /// Calls `wake` for every poke, from a thread that lives as long as the process (it
    /// blocks in `recv`; the daemon's exit ends it).
    pub fn listen(self, wake: Box<dyn Fn() + Send>) -> io::Result<()> {
        std::thread::Builder::new().name(String::from("homerd-wake")).spawn(move || {
            let mut buf = [0u8; 16];
            loop {
                match self.sock.recv(&mut buf) {
                    Ok(_) => wake(),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // A socket that cannot be read any more: the poll carries on alone.
                    Err(_) => return,
                }
            }
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// Binds `path` and listens: each poke sends on the returned channel.
    fn listen(path: &Path) -> mpsc::Receiver<()> {
        let (tx, rx) = mpsc::channel();
        WakeSocket::bind(path)
            .unwrap()
            .listen(Box::new(move || {
                let _ = tx.send(());
            }))
            .unwrap();
        rx
    }

    #[test]
    fn a_poke_wakes_the_listener() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let rx = listen(&path);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        poke(&path);
        rx.recv_timeout(Duration::from_secs(30)).expect("the poke woke nobody");
    }

    #[test]
    fn a_stale_socket_is_replaced_and_other_files_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        // A daemon that died left its socket: the next one binds in its place.
        drop(WakeSocket::bind(&path).unwrap());
        let rx = listen(&path);
        poke(&path);
        rx.recv_timeout(Duration::from_secs(30)).expect("the poke woke nobody");

        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, "mine").unwrap();
        let err = WakeSocket::bind(&file).unwrap_err();
        assert!(err.to_string().contains("is not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "mine");
    }

    #[test]
    fn a_poke_never_blocks_on_a_daemon_that_does_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        // Bound, never read: its queue fills after a few hundred datagrams, where a
        // blocking send would wait for ever. Nothing at the path at all is the other case.
        let unread = WakeSocket::bind(&path).unwrap();
        let missing = dir.path().join("nobody.wake");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for _ in 0..10_000 {
                poke(&path);
                poke(&missing);
            }
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(60)).expect("a poke blocked");
        drop(unread);
    }
}
