//! A throwaway PostgreSQL server for tests, the harness and CI: [`PgServer::start`] makes a
//! fresh cluster in a new directory (`initdb`), starts `postgres` on a free 127.0.0.1 port
//! and a unix socket, waits until it answers, and creates the database `homer` (role
//! `homer`, a superuser, trust authentication, no password). [`PgOptions::listen`] adds
//! addresses on the same port (the root side of [`crate::netns`] hosts' pairs) and
//! [`PgOptions::trust`] the networks trusted there; the free port is probed on 127.0.0.1,
//! and a port taken on another address is retried like one taken there.
//!
//! Invariants:
//! - the postmaster is our own child ([`Proc`]), leading its own process group, so its
//!   exit is an event we wait on and its pid stays ours until we reap it. `pg_ctl` is not
//!   used: it daemonizes the postmaster (re-parented to PID 1 or a subreaper, its pid no
//!   longer ours) and polls `postmaster.pid` for its stop. The stop modes are the signals
//!   `pg_ctl stop -m` sends: SIGINT fast, SIGQUIT immediate (a crash for the data: the next
//!   start runs recovery);
//! - a dropped server never keeps running and the drop never hangs: an immediate stop
//!   with a bounded wait, then SIGKILL to the postmaster's group and a bounded reap;
//! - readiness is waited for, never assumed after a sleep: `pg_isready` over our own
//!   socket (no other server can answer there, so a port taken by someone else between
//!   our probe and the bind cannot look ready), polled while waiting on the postmaster's
//!   exit, bounded by a deadline scaled with `HOMER_TEST_TIME_SCALE`;
//! - nothing of the caller's `PG*` environment reaches a command (a `PGDATA`, `PGHOST` or
//!   `PGPASSWORD` of the developer's would redirect or change it);
//! - a start that fails removes what it created and names the binary, the directory or
//!   the server log's last lines.
//!
//! Root: PostgreSQL refuses to run as root. When we are root, `initdb` and `postgres` run
//! as the unprivileged uid/gid [`UNPRIVILEGED_UID`] (std's `CommandExt::uid` drops the
//! supplementary groups first), and own the server directory. That uid must be able to
//! reach the directory: temp dirs and `/root` are 0700, so when some ancestor of `parent`
//! is not searchable by it the server is made under a fresh `/tmp/homer-pg-*` instead,
//! and that directory is removed on drop (the log is copied to `parent` first, so a kept
//! sandbox still has it). The check reads mode bits, not ACLs.
//!
//! The cluster is made with `initdb --no-sync`: its final flush of ~40 MB guards the new
//! cluster against an operating-system crash, which no test makes, and took 2.6 of 3.2 s
//! here. The server itself runs with `fsync = on`, so a commit is as durable as in
//! production (tests stop it with `immediate` and SIGKILL, the crash they can make).
//!
//! TLS ([`PgOptions::tls`], [`PgTls`]): `ssl = on` with a certificate and key the test
//! made (PEM; the key file 0600 and owned by the server's uid, as the server demands),
//! and optionally `hostssl` instead of `host` in every `pg_hba.conf` line, so a TCP client
//! gets in only over TLS (the unix socket, where `psql`/`pg_isready` talk, is unchanged).
//!
//! The harness starts every child through its own registry (its reaper must not take a
//! child's exit); [`Spawner`] is that hook, [`PgOptions::spawner`] where it is passed.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::proc::{run_spawned, Finished, Pipes, Proc};
use crate::time::deadline;

/// Names the directory holding the server binaries, instead of searching for them.
pub const BIN_DIR_VAR: &str = "HOMER_PG_BINDIR";

/// The binaries a server needs, all from one directory.
pub const BINARIES: [&str; 4] = ["initdb", "postgres", "psql", "pg_isready"];

/// The uid (and gid) the server runs as when we are root: `nobody`, 65534 on Linux; -2
/// on macOS, whose `initdb` must find it in the user database as well.
#[cfg(not(target_os = "macos"))]
pub const UNPRIVILEGED_UID: u32 = 65534;
#[cfg(target_os = "macos")]
pub const UNPRIVILEGED_UID: u32 = u32::MAX - 1;

/// The role and the database every server has.
pub const USER: &str = "homer";
pub const DATABASE: &str = "homer";

/// The longest unix socket path both platforms accept (`sun_path` is 104 bytes on macOS,
/// 108 on Linux, with the terminating NUL).
const MAX_SOCKET_PATH: usize = 103;
/// The socket's file name, for the longest port, and its lock file.
const SOCKET_NAME_LEN: usize = "/.s.PGSQL.65535.lock".len();

/// How often readiness is probed while the postmaster runs (between probes we wait on
/// its exit, so a failed start is seen at once).
const READY_POLL: Duration = Duration::from_millis(20);

/// Starts at most this many times on a fresh port when another process took the port.
const PORT_ATTEMPTS: usize = 5;

/// Starts the children of a server. The default ([`DirectSpawner`]) is [`Proc::spawn`]; a
/// caller that must register every child it starts (the harness's reaper) passes its own.
pub trait Spawner: Send + Sync {
    /// Starts `cmd` as [`Proc::spawn`] does (the leader of a new process group).
    fn spawn(&self, cmd: &mut Command) -> io::Result<(Proc, Pipes)>;
    /// `pid`, started by [`Spawner::spawn`], has been reaped.
    fn reaped(&self, _pid: i32) {}
}

/// [`Proc::spawn`], nothing registered.
pub struct DirectSpawner;

impl Spawner for DirectSpawner {
    fn spawn(&self, cmd: &mut Command) -> io::Result<(Proc, Pipes)> {
        Proc::spawn(cmd)
    }
}

/// How a server is started. `Default`: binaries from [`available`], `fsync = on`, children
/// through [`DirectSpawner`].
#[derive(Clone)]
pub struct PgOptions {
    /// The directory holding [`BINARIES`]; `None`: [`available`] finds it.
    pub bin_dir: Option<PathBuf>,
    /// The server's `fsync` setting. On by default: tests of durability need it.
    pub fsync: bool,
    pub spawner: Arc<dyn Spawner>,
    /// The addresses the server listens on (`listen_addresses`); 127.0.0.1 by default.
    /// The port is the same on each. Other hosts' tests (`crate::netns`) add the root side
    /// of each host's pair.
    pub listen: Vec<IpAddr>,
    /// Networks (CIDR, e.g. `10.213.7.0/30`) whose clients are trusted as on loopback:
    /// `host all all NET trust` lines in `pg_hba.conf`. Empty by default (loopback and the
    /// socket only).
    pub trust: Vec<String>,
    /// TLS on the server; `None` (the default): `ssl = off`.
    pub tls: Option<PgTls>,
}

/// A server's TLS: its certificate (chain) and key, PEM, made by the caller (the tests use
/// rcgen), and whether TCP clients must use it.
#[derive(Clone)]
pub struct PgTls {
    /// The server's certificate, then any intermediates (`ssl_cert_file`).
    pub cert_pem: String,
    /// Its private key (`ssl_key_file`), unencrypted.
    pub key_pem: String,
    /// `hostssl` instead of `host` in `pg_hba.conf`: a TCP client without TLS is refused
    /// ("no pg_hba.conf entry ... no encryption").
    pub tls_only: bool,
}

impl Default for PgOptions {
    fn default() -> PgOptions {
        PgOptions {
            bin_dir: None,
            fsync: true,
            spawner: Arc::new(DirectSpawner),
            listen: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            trust: Vec::new(),
            tls: None,
        }
    }
}

/// How a server is stopped (the modes of `pg_ctl stop -m`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// SIGINT: sessions are ended, a shutdown checkpoint is written.
    Fast,
    /// SIGQUIT: every process quits at once, no checkpoint; the next start recovers from
    /// the WAL, as after a crash.
    Immediate,
}

impl StopMode {
    fn signal(self) -> i32 {
        match self {
            StopMode::Fast => libc::SIGINT,
            StopMode::Immediate => libc::SIGQUIT,
        }
    }
}

/// A running (or stopped) throwaway server. Dropped, it is stopped (see the module docs).
pub struct PgServer {
    bin: PathBuf,
    /// The server directory: `data/`, `postgres.log`, and usually the socket.
    dir: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
    port: u16,
    postmaster: Option<Proc>,
    /// The uid/gid the server runs as (when we are root).
    run_as: Option<u32>,
    /// Directories made outside `parent` (removed on drop), and where the log is copied
    /// when `dir` is one of them.
    outside: Vec<PathBuf>,
    log_copy: Option<PathBuf>,
    spawner: Arc<dyn Spawner>,
}

impl PgServer {
    /// Starts a fresh server in a new directory under `parent` (`initdb`, start, wait
    /// until it accepts connections, create the database `homer`). `parent` must exist.
    pub fn start(parent: &Path) -> Result<PgServer, String> {
        PgServer::start_with(parent, &PgOptions::default())
    }

    /// [`PgServer::start`] with options.
    pub fn start_with(parent: &Path, opts: &PgOptions) -> Result<PgServer, String> {
        check_network_options(opts)?;
        let bin = match &opts.bin_dir {
            Some(dir) => check_bin_dir(dir, "the bin_dir option")?,
            None => available_with(&*opts.spawner)?,
        };
        let parent = fs::canonicalize(parent).map_err(|e| {
            format!("cannot start PostgreSQL under {}: {e}; pass an existing directory", parent.display())
        })?;
        let run_as = rustix::process::geteuid().is_root().then_some(UNPRIVILEGED_UID);
        let mut outside = Vec::new();
        let dir = match run_as {
            Some(uid) if !searchable_by(&parent, uid, uid) => {
                let dir = new_dir(Path::new("/tmp"), "homer-pg-")?;
                outside.push(dir.clone());
                dir
            }
            _ => new_dir(&parent, "pg-")?,
        };
        let log_copy = (!outside.is_empty()).then(|| parent.join(format!("{}.log", file_name(&dir))));
        let mut server = PgServer {
            bin,
            data: dir.join("data"),
            log: dir.join("postgres.log"),
            socket_dir: dir.clone(),
            dir,
            port: 0,
            postmaster: None,
            run_as,
            outside,
            log_copy,
            spawner: opts.spawner.clone(),
        };
        match server.init_and_start(opts) {
            Ok(()) => Ok(server),
            Err(e) => {
                // Nothing of a failed start is left behind: the caller gets the log's tail.
                server.stop_on_drop();
                server.log_copy = None;
                if !server.outside.contains(&server.dir) {
                    server.outside.push(server.dir.clone());
                }
                Err(e)
            }
        }
    }

    fn init_and_start(&mut self, opts: &PgOptions) -> Result<(), String> {
        self.own(&self.dir)?;
        if self.dir.as_os_str().len() + SOCKET_NAME_LEN > MAX_SOCKET_PATH {
            self.socket_dir = new_dir(Path::new("/tmp"), "homer-pgs-")?;
            self.outside.push(self.socket_dir.clone());
            self.own(&self.socket_dir)?;
        }
        let mut initdb = self.command("initdb");
        initdb
            .arg("--pgdata")
            .arg(&self.data)
            .args(["--username", USER, "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"])
            .arg("--no-instructions");
        let done = self.run(&mut initdb, deadline(120.0))?;
        if !done.exit.success() {
            return Err(format!(
                "initdb for {} failed ({}): {}",
                self.data.display(),
                done.exit.describe(),
                String::from_utf8_lossy(&done.stderr).trim()
            ));
        }
        let listen: Vec<String> = opts.listen.iter().map(IpAddr::to_string).collect();
        let hba = self.data.join("pg_hba.conf");
        let lines: String = opts.trust.iter().map(|net| format!("host all all {net} trust\n")).collect();
        fs::OpenOptions::new()
            .append(true)
            .open(&hba)
            .and_then(|mut f| {
                io::Write::write_all(&mut f, format!("\n# homer-testkit: trusted networks\n{lines}").as_bytes())
            })
            .map_err(|e| format!("cannot write {}: {e}", hba.display()))?;
        let ssl = match &opts.tls {
            Some(tls) => self.write_tls(tls, &hba)?,
            None => String::new(),
        };
        let conf = self.data.join("postgresql.conf");
        let settings = format!(
            "\n# homer-testkit: a throwaway server for tests\n\
             listen_addresses = '{}'\n\
             max_connections = 100\n\
             shared_buffers = 16MB\n\
             fsync = {}\n\
             log_min_messages = warning\n\
             logging_collector = off\n\
             unix_socket_directories = '{}'\n\
             unix_socket_permissions = 0777\n{ssl}",
            listen.join(","),
            if opts.fsync { "on" } else { "off" },
            self.socket_dir.display().to_string().replace('\'', "''"),
        );
        fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .and_then(|mut f| io::Write::write_all(&mut f, settings.as_bytes()))
            .map_err(|e| format!("cannot write {}: {e}", conf.display()))?;
        self.start_on_a_free_port(free_port)?;
        self.psql_in("postgres", &format!("CREATE DATABASE {DATABASE}"))?;
        Ok(())
    }

    /// Writes the certificate and key into the data directory (the key 0600, the server's)
    /// and, for [`PgTls::tls_only`], turns every `host` line of `hba` into `hostssl`.
    /// Returns the `postgresql.conf` lines.
    fn write_tls(&self, tls: &PgTls, hba: &Path) -> Result<String, String> {
        use std::os::unix::fs::PermissionsExt;
        for (name, pem, mode) in [("server.crt", &tls.cert_pem, 0o644), ("server.key", &tls.key_pem, 0o600)] {
            let path = self.data.join(name);
            fs::write(&path, pem)
                .and_then(|()| fs::set_permissions(&path, fs::Permissions::from_mode(mode)))
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            self.own(&path)?;
        }
        if tls.tls_only {
            let text = fs::read_to_string(hba).map_err(|e| format!("cannot read {}: {e}", hba.display()))?;
            let lines: Vec<String> = text
                .lines()
                .map(|l| match l.strip_prefix("host ") {
                    Some(rest) => format!("hostssl {rest}"),
                    None => l.to_owned(),
                })
                .collect();
            fs::write(hba, lines.join("\n") + "\n").map_err(|e| format!("cannot write {}: {e}", hba.display()))?;
        }
        Ok(String::from("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n"))
    }

    /// Starts the postmaster on a port from `pick`, again on the next one (up to
    /// [`PORT_ATTEMPTS`] in all) when another process took it first.
    fn start_on_a_free_port(&mut self, mut pick: impl FnMut() -> Result<u16, String>) -> Result<(), String> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.port = pick()?;
            match self.spawn_and_wait() {
                Ok(()) => return Ok(()),
                Err(StartError::PortTaken(_)) if attempt < PORT_ATTEMPTS => continue,
                Err(StartError::PortTaken(e) | StartError::Other(e)) => return Err(e),
            }
        }
    }

    /// `postgres://homer@127.0.0.1:PORT/homer` (trust authentication: no password).
    pub fn url(&self) -> String {
        self.url_at(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// `postgres://homer@ADDR:PORT/homer`: the server at one of its [`PgOptions::listen`]
    /// addresses (an IPv6 address in brackets).
    pub fn url_at(&self, addr: IpAddr) -> String {
        match addr {
            IpAddr::V4(a) => format!("postgres://{USER}@{a}:{}/{DATABASE}", self.port),
            IpAddr::V6(a) => format!("postgres://{USER}@[{a}]:{}/{DATABASE}", self.port),
        }
    }

    /// The same database over the unix socket: `postgres://homer@/homer?host=DIR&port=PORT`.
    pub fn socket_url(&self) -> String {
        format!("postgres://{USER}@/{DATABASE}?host={}&port={}", url_encode(&self.socket_dir), self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's data directory (`PGDATA`).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The directory holding the unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The server's log (its stdout and stderr, warnings and worse).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The postmaster's pid (also its process group), while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.postmaster.as_ref().map(Proc::pid)
    }

    /// `pg_ctl stop -m fast`: ends the sessions, writes a shutdown checkpoint.
    pub fn stop_fast(&mut self) -> Result<(), String> {
        self.stop(StopMode::Fast)
    }

    /// `pg_ctl stop -m immediate`: a crash for the data; the next start recovers.
    pub fn stop_immediate(&mut self) -> Result<(), String> {
        self.stop(StopMode::Immediate)
    }

    /// Stops the server in `mode` and waits (bounded) for the postmaster, which waits for
    /// every other server process, to exit. A stopped server's stop does nothing.
    pub fn stop(&mut self, mode: StopMode) -> Result<(), String> {
        let Some(mut postmaster) = self.postmaster.take() else { return Ok(()) };
        postmaster.signal(mode.signal());
        let limit = deadline(60.0);
        let exit = postmaster.wait_exit(limit);
        let pid = postmaster.pid();
        let result = match exit {
            Some(exit) if exit.success() || mode == StopMode::Immediate => Ok(()),
            Some(exit) => {
                Err(format!("the PostgreSQL server (pid {pid}) stopped with {}{}", exit.describe(), self.log_tail()))
            }
            None => {
                postmaster.kill();
                Err(format!(
                    "the PostgreSQL server (pid {pid}) did not stop ({mode:?}) within {limit:?}; killed it{}",
                    self.log_tail()
                ))
            }
        };
        self.spawner.reaped(pid);
        result
    }

    /// Stops the server in `mode` and starts it again on the same port and data directory,
    /// waiting until it accepts connections (after an immediate stop: after recovery).
    pub fn restart(&mut self, mode: StopMode) -> Result<(), String> {
        self.stop(mode)?;
        self.spawn_and_wait().map_err(|(StartError::PortTaken(e) | StartError::Other(e))| e)
    }

    /// Runs `sql` in the database `homer` with `psql -X -A -t -v ON_ERROR_STOP=1` (over
    /// the socket) and returns what it printed: unaligned, tuples only, one row a line.
    pub fn psql(&self, sql: &str) -> Result<String, String> {
        self.psql_in(DATABASE, sql)
    }

    fn psql_in(&self, database: &str, sql: &str) -> Result<String, String> {
        let mut cmd = scrubbed(&self.bin.join("psql"));
        cmd.current_dir(&self.dir)
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.socket_dir)
            .args(["-p", &self.port.to_string(), "-U", USER, "-d", database, "-c", sql]);
        let done = self.run(&mut cmd, deadline(60.0))?;
        if !done.exit.success() {
            return Err(format!(
                "psql on port {} ({}): {sql:?}: {}",
                self.port,
                done.exit.describe(),
                String::from_utf8_lossy(&done.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&done.stdout).into_owned())
    }

    /// `name` from the bin dir, as the server's uid, in the server directory.
    fn command(&self, name: &str) -> Command {
        let mut cmd = scrubbed(&self.bin.join(name));
        cmd.current_dir(&self.dir);
        if let Some(id) = self.run_as {
            // std drops the supplementary groups (setgroups(0), as root), then setgid, setuid.
            cmd.gid(id).uid(id);
        }
        cmd
    }

    fn run(&self, cmd: &mut Command, limit: Duration) -> Result<Finished, String> {
        let done = run_spawned(cmd, limit, |c| self.spawner.spawn(c))?;
        self.spawner.reaped(done.pid);
        Ok(done)
    }

    fn own(&self, path: &Path) -> Result<(), String> {
        match self.run_as {
            Some(id) => std::os::unix::fs::chown(path, Some(id), Some(id))
                .map_err(|e| format!("cannot give {} to uid {id}: {e}", path.display())),
            None => Ok(()),
        }
    }

    /// Starts the postmaster on `self.port` and waits until it accepts connections.
    fn spawn_and_wait(&mut self) -> Result<(), StartError> {
        let other = StartError::Other;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| other(format!("cannot open {}: {e}", self.log.display())))?;
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let log_err = log.try_clone().map_err(|e| other(format!("cannot open {}: {e}", self.log.display())))?;
        let mut cmd = self.command("postgres");
        cmd.arg("-D").arg(&self.data).args(["-p", &self.port.to_string()]);
        cmd.stdin(Stdio::null()).stdout(log).stderr(log_err);
        let (postmaster, _) = self
            .spawner
            .spawn(&mut cmd)
            .map_err(|e| other(format!("cannot start {}: {e}", self.bin.join("postgres").display())))?;
        self.postmaster = Some(postmaster);
        let limit = deadline(60.0);
        let end = Instant::now() + limit;
        loop {
            let mut probe = scrubbed(&self.bin.join("pg_isready"));
            probe.current_dir(&self.dir).arg("-h").arg(&self.socket_dir).args([
                "-p",
                &self.port.to_string(),
                "-U",
                USER,
                "-d",
                "postgres",
                "-t",
                "5",
                "-q",
            ]);
            if self.run(&mut probe, deadline(30.0)).map_err(other)?.exit.success() {
                return Ok(());
            }
            let postmaster = self.postmaster.as_mut().expect("spawned above");
            if let Some(exit) = postmaster.wait_exit(READY_POLL) {
                let pid = postmaster.pid();
                self.postmaster = None;
                self.spawner.reaped(pid);
                let said = read_from(&self.log, log_start);
                let msg = format!(
                    "the PostgreSQL server on port {} exited during startup ({}); {}:\n{}",
                    self.port,
                    exit.describe(),
                    self.log.display(),
                    said.trim_end()
                );
                return Err(if said.contains("Address already in use") {
                    StartError::PortTaken(msg)
                } else {
                    StartError::Other(msg)
                });
            }
            if Instant::now() >= end {
                self.stop_on_drop();
                return Err(other(format!(
                    "the PostgreSQL server on port {} did not accept connections within {limit:?}{}",
                    self.port,
                    self.log_tail()
                )));
            }
        }
    }

    /// The last lines of the server log, for an error message.
    fn log_tail(&self) -> String {
        let text = read_from(&self.log, 0);
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n  ");
        format!("; {}:\n  {tail}", self.log.display())
    }

    /// Immediate stop, bounded; then SIGKILL to the group and a bounded reap. Never hangs.
    fn stop_on_drop(&mut self) {
        let Some(mut postmaster) = self.postmaster.take() else { return };
        let pid = postmaster.pid();
        postmaster.signal(libc::SIGQUIT);
        if postmaster.wait_exit(deadline(10.0)).is_none() {
            // A SIGKILLed postmaster leaves its shared memory segment behind; only here.
            postmaster.kill();
        }
        self.spawner.reaped(pid);
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop_on_drop();
        if let Some(copy) = &self.log_copy {
            let _ = fs::copy(&self.log, copy);
        }
        for dir in &self.outside {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// [`PgOptions::listen`] and [`PgOptions::trust`] as the server's files will take them,
/// checked before anything is made.
fn check_network_options(opts: &PgOptions) -> Result<(), String> {
    if opts.listen.is_empty() {
        return Err(String::from("PgOptions::listen is empty: give the server at least one address (127.0.0.1)"));
    }
    for net in &opts.trust {
        // A value pg_hba.conf would take apart or reject: refused here, by name.
        let ok = net
            .split_once('/')
            .is_some_and(|(addr, bits)| addr.parse::<IpAddr>().is_ok() && bits.parse::<u8>().is_ok_and(|b| b <= 128));
        if !ok {
            return Err(format!("PgOptions::trust: {net:?} is not a network in CIDR form (e.g. 10.213.7.0/30)"));
        }
    }
    Ok(())
}

enum StartError {
    /// Another process took the port between our probe and the server's bind.
    PortTaken(String),
    Other(String),
}

/// The directory holding the server binaries: `HOMER_PG_BINDIR` if set (it must hold them
/// all), else `pg_config --bindir`, else the highest `/usr/lib/postgresql/*/bin` (Debian),
/// else Homebrew's `postgresql@*`. An error says what to install.
pub fn available() -> Result<PathBuf, String> {
    available_with(&DirectSpawner)
}

fn available_with(spawner: &dyn Spawner) -> Result<PathBuf, String> {
    find_bin_dir(std::env::var_os(BIN_DIR_VAR), spawner)
}

/// [`available`], with `HOMER_PG_BINDIR`'s value passed in (empty counts as unset).
fn find_bin_dir(named: Option<std::ffi::OsString>, spawner: &dyn Spawner) -> Result<PathBuf, String> {
    if let Some(dir) = named.filter(|v| !v.is_empty()) {
        return check_bin_dir(Path::new(&dir), BIN_DIR_VAR);
    }
    let mut candidates = Vec::new();
    let mut pg_config = scrubbed(Path::new("pg_config"));
    pg_config.arg("--bindir");
    if let Ok(done) = run_spawned(&mut pg_config, deadline(30.0), |c| spawner.spawn(c)) {
        spawner.reaped(done.pid);
        if done.exit.success() {
            candidates.push(PathBuf::from(String::from_utf8_lossy(&done.stdout).trim()));
        }
    }
    candidates.extend(versioned_dirs(Path::new("/usr/lib/postgresql"), "", "bin"));
    for brew in ["/opt/homebrew/opt", "/usr/local/opt"] {
        candidates.extend(versioned_dirs(Path::new(brew), "postgresql@", "bin"));
    }
    candidates.into_iter().find(|dir| missing_binary(dir).is_none()).ok_or_else(|| {
        format!(
            "PostgreSQL server binaries not found: install Debian's postgresql package \
             (apt-get install postgresql; on macOS brew install postgresql@15), or set {BIN_DIR_VAR} \
             to the directory holding {}",
            BINARIES.join(", ")
        )
    })
}

/// `dir` if it holds every binary; else an error naming `source`, the dir and the binary.
fn check_bin_dir(dir: &Path, source: &str) -> Result<PathBuf, String> {
    match missing_binary(dir) {
        None => Ok(dir.to_path_buf()),
        Some(name) => Err(format!(
            "PostgreSQL server binaries not found: {source} names {}, which has no {name}; point it at the \
             directory holding {} (pg_config --bindir) or install Debian's postgresql package \
             (apt-get install postgresql)",
            dir.display(),
            BINARIES.join(", ")
        )),
    }
}

/// The first of [`BINARIES`] that `dir` lacks (as an executable file).
fn missing_binary(dir: &Path) -> Option<&'static str> {
    BINARIES
        .into_iter()
        .find(|name| !fs::metadata(dir.join(name)).map(|m| m.is_file() && m.mode() & 0o111 != 0).unwrap_or(false))
}

/// `root/<prefix><version>/<sub>` for every version directory, highest version first.
fn versioned_dirs(root: &Path, prefix: &str, sub: &str) -> Vec<PathBuf> {
    let mut found: Vec<(Vec<u64>, PathBuf)> = fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let version = name.strip_prefix(prefix)?;
            let key: Vec<u64> = version.split('.').map(str::parse).collect::<Result<_, _>>().ok()?;
            Some((key, entry.path().join(sub)))
        })
        .collect();
    found.sort_by(|a, b| b.0.cmp(&a.0));
    found.into_iter().map(|(_, dir)| dir).collect()
}

/// `program` with no `PG*` variable of the caller's.
fn scrubbed(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Whether `uid`/`gid` (with no supplementary groups) may search `dir` and every ancestor.
fn searchable_by(dir: &Path, uid: u32, gid: u32) -> bool {
    dir.ancestors().all(|d| match fs::metadata(d) {
        Ok(m) => {
            let mode = m.mode();
            if m.uid() == uid {
                mode & 0o100 != 0
            } else if m.gid() == gid {
                mode & 0o010 != 0
            } else {
                mode & 0o001 != 0
            }
        }
        Err(_) => false,
    })
}

/// A new directory `<parent>/<prefix><pid>-<n>`, mode 0755. `create` fails on anything
/// already there, a symlink included, so the directory is always ours.
fn new_dir(parent: &Path, prefix: &str) -> Result<PathBuf, String> {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    loop {
        let dir = parent.join(format!("{prefix}{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
        match fs::DirBuilder::new().mode(0o755).create(&dir) {
            Ok(()) => {
                // The umask may have cleared bits the server's uid needs.
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
                    .map_err(|e| format!("cannot set the mode of {}: {e}", dir.display()))?;
                return Ok(dir);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("cannot create a directory for PostgreSQL in {}: {e}", parent.display())),
        }
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map(OsStr::to_string_lossy).unwrap_or_default().into_owned()
}

/// A free 127.0.0.1 port: bound with port 0, read, released (a race with another process
/// taking it is handled by retrying the start).
fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free port on 127.0.0.1: {e}"))
}

/// `path` from byte `offset` on, as text (empty if unreadable).
fn read_from(path: &Path, offset: u64) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(bytes.get(offset as usize..).unwrap_or_default()).into_owned()
}

/// A path as a URL query value: unreserved characters and `/` as they are, every other
/// byte percent-encoded.
fn url_encode(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_someone_else_took_is_left_for_the_next_free_one() {
        let parent = std::env::temp_dir().join(format!("homer-pg-port-{}", std::process::id()));
        fs::create_dir_all(&parent).unwrap();
        let mut pg = PgServer::start(&parent).unwrap();
        pg.stop_fast().unwrap();
        // Held by another process in effect: a listener of ours on the server's port.
        let holder = std::net::TcpListener::bind(("127.0.0.1", pg.port())).unwrap();
        let taken = pg.port();
        let mut picks = vec![taken, taken];
        let result = pg.start_on_a_free_port(|| picks.pop().map_or_else(free_port, Ok));
        let (port, answer) = (pg.port(), pg.psql("select 1"));
        // And with every attempt on the taken port, the error says why.
        pg.stop_fast().unwrap();
        let err = pg.start_on_a_free_port(|| Ok(taken)).unwrap_err();
        drop(holder);
        drop(pg);
        let _ = fs::remove_dir_all(&parent);
        result.unwrap();
        assert_ne!(port, taken);
        assert_eq!(answer.unwrap(), "1\n");
        assert!(err.contains("exited during startup") && err.contains("Address already in use"), "{err}");
    }

    #[test]
    fn a_path_is_percent_encoded_in_a_url_except_unreserved_and_slashes() {
        assert_eq!(url_encode(Path::new("/tmp/pg-1_2.x~")), "/tmp/pg-1_2.x~");
        assert_eq!(url_encode(Path::new("/a b/c&d=é")), "/a%20b/c%26d%3D%C3%A9");
    }

    #[test]
    fn versions_sort_numerically_highest_first() {
        let root = std::env::temp_dir().join(format!("homer-pg-versions-{}", std::process::id()));
        for v in ["9.6", "15", "16", "notaversion"] {
            fs::create_dir_all(root.join(v)).unwrap();
        }
        let got = versioned_dirs(&root, "", "bin");
        let _ = fs::remove_dir_all(&root);
        assert_eq!(got, [root.join("16/bin"), root.join("15/bin"), root.join("9.6/bin")]);
    }

    #[test]
    fn searchability_follows_the_mode_bits_of_every_ancestor() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = std::env::temp_dir();
        let root = tmp.join(format!("homer-pg-search-{}", std::process::id()));
        let inner = root.join("inner");
        fs::create_dir_all(&inner).unwrap();
        fs::set_permissions(&inner, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        let me = rustix::process::geteuid().as_raw();
        let stranger = 54321;
        // Whatever the temp dir's own ancestors allow, our directories add nothing when open...
        let open = searchable_by(&inner, stranger, stranger) == searchable_by(&tmp, stranger, stranger);
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).unwrap();
        // ...and one 0700 ancestor stops a stranger, not its owner.
        let closed = !searchable_by(&inner, stranger, stranger);
        let owner = searchable_by(&inner, me, stranger) == searchable_by(&tmp, me, stranger);
        let _ = fs::remove_dir_all(&root);
        assert!(open && closed && owner, "open {open}, closed {closed}, owner {owner}");
    }

    #[test]
    fn a_bin_dir_variable_naming_a_dir_without_the_binaries_is_an_error_saying_what_to_do() {
        let empty = std::env::temp_dir().join(format!("homer-pg-empty-{}", std::process::id()));
        fs::create_dir_all(&empty).unwrap();
        let err = find_bin_dir(Some(empty.clone().into_os_string()), &DirectSpawner).unwrap_err();
        let _ = fs::remove_dir_all(&empty);
        assert!(err.starts_with("PostgreSQL server binaries not found"), "{err}");
        assert!(err.contains(&format!("{BIN_DIR_VAR} names {}", empty.display())), "{err}");
        assert!(err.contains("no initdb") && err.contains("apt-get install postgresql"), "{err}");
    }

    #[test]
    fn an_empty_bin_dir_variable_is_unset_and_the_search_finds_what_the_variable_would_name() {
        // This machine (and CI, through .ci/postgres-binaries) has the binaries.
        let found = find_bin_dir(Some(std::ffi::OsString::new()), &DirectSpawner).unwrap();
        assert!(missing_binary(&found).is_none(), "{}", found.display());
        let named = find_bin_dir(Some(found.clone().into_os_string()), &DirectSpawner).unwrap();
        assert_eq!(named, found);
    }
}
