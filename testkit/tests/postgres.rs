//! The throwaway PostgreSQL server against real binaries: start, SQL over TCP and the unix
//! socket, the two stop modes (read back from the cluster's control file), a restart that
//! keeps what was committed, drop, the harness's spawn hook, and the failures that must
//! leave nothing behind.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use homer_testkit::{
    alive, deadline, group_alive, pg_available, run, DirectSpawner, PgOptions, PgServer, Pipes, Proc, Spawner, StopMode,
};

/// A directory of the test's own, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("homer-pgtest-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn bin_dir() -> PathBuf {
    pg_available().unwrap_or_else(|e| panic!("{e}"))
}

/// `psql` as a client would run it, on a connection URL.
fn psql_url(url: &str, sql: &str) -> Result<String, String> {
    let mut cmd = Command::new(bin_dir().join("psql"));
    cmd.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql]);
    let done = run(&mut cmd, deadline(60.0))?;
    if done.exit.success() {
        Ok(String::from_utf8_lossy(&done.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&done.stderr).into_owned())
    }
}

/// "Database cluster state" from `pg_controldata`: how the cluster was last left.
fn cluster_state(data: &Path) -> String {
    let done = run(Command::new(bin_dir().join("pg_controldata")).arg(data), deadline(60.0)).unwrap();
    assert!(done.exit.success(), "{}", String::from_utf8_lossy(&done.stderr));
    let text = String::from_utf8_lossy(&done.stdout).into_owned();
    let line = text.lines().find(|l| l.starts_with("Database cluster state:")).unwrap_or_else(|| panic!("{text}"));
    line.split(':').nth(1).unwrap().trim().to_owned()
}

#[test]
fn a_server_answers_over_tcp_and_the_socket_as_homer_and_a_fast_stop_shuts_it_down() {
    let parent = Scratch::new("answers");
    let mut pg = PgServer::start(&parent.0).unwrap();
    let under = parent.0.canonicalize().unwrap();
    assert!(pg.data_dir().starts_with(&under), "{} under {}", pg.data_dir().display(), under.display());
    assert_eq!(pg.psql("select 1").unwrap(), "1\n");
    assert_eq!(pg.url(), format!("postgres://homer@127.0.0.1:{}/homer", pg.port()));
    for url in [pg.url(), pg.socket_url()] {
        let got = psql_url(&url, "select current_user, current_database(), current_setting('fsync')");
        assert_eq!(got.unwrap(), "homer|homer|on\n", "{url}");
    }
    let by_socket = psql_url(&pg.socket_url(), "select inet_server_addr() is null").unwrap();
    assert_eq!(by_socket, "t\n", "the socket URL must not go over TCP");

    let pid = pg.pid().unwrap();
    #[cfg(target_os = "linux")]
    if rustix::process::geteuid().is_root() {
        // PostgreSQL refuses root: the postmaster runs as nobody, without root's groups.
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |name: &str| status.lines().find(|l| l.starts_with(name)).unwrap().to_owned();
        assert_eq!(field("Uid:").split_whitespace().nth(1), Some("65534"), "{status}");
        assert_eq!(field("Gid:").split_whitespace().nth(1), Some("65534"), "{status}");
        assert_eq!(field("Groups:").trim(), "Groups:", "{status}");
    }

    pg.stop_fast().unwrap();
    assert!(!alive(pid) && !group_alive(pid), "the postmaster {pid} and its group are gone");
    assert_eq!(cluster_state(pg.data_dir()), "shut down");
    let err = pg.psql("select 1").unwrap_err();
    assert!(err.contains(&pg.port().to_string()), "{err}");
    pg.stop_fast().unwrap();
}

#[test]
fn an_immediate_stop_is_a_crash_and_the_restart_keeps_what_was_committed() {
    let parent = Scratch::new("immediate");
    let mut pg = PgServer::start(&parent.0).unwrap();
    let port = pg.port();
    pg.psql("create table t (n int); insert into t select generate_series(1, 1000)").unwrap();
    let before = pg.pid().unwrap();
    pg.stop_immediate().unwrap();
    assert!(!alive(before) && !group_alive(before));
    // No shutdown checkpoint: the control file still says the server was running.
    assert_eq!(cluster_state(pg.data_dir()), "in production");
    pg.restart(StopMode::Immediate).unwrap();
    assert_eq!(pg.port(), port, "a restart keeps the port the URLs name");
    assert_ne!(pg.pid(), Some(before));
    assert_eq!(pg.psql("select count(*), sum(n) from t").unwrap(), "1000|500500\n");
    assert_eq!(psql_url(&pg.url(), "select count(*) from t").unwrap(), "1000\n");

    // A running server restarted in immediate mode crashes and recovers too.
    pg.psql("insert into t values (1001)").unwrap();
    pg.restart(StopMode::Immediate).unwrap();
    assert_eq!(pg.psql("select max(n) from t").unwrap(), "1001\n");
    pg.restart(StopMode::Fast).unwrap();
    assert_eq!(pg.psql("select count(*) from t").unwrap(), "1001\n");
}

#[test]
fn a_dropped_server_is_gone_with_every_process_of_its_group() {
    let parent = Scratch::new("drop");
    let pg = PgServer::start(&parent.0).unwrap();
    // A session holds a backend: the drop must take it down too.
    pg.psql("select 1").unwrap();
    let pid = pg.pid().unwrap();
    let port = pg.port();
    assert!(group_alive(pid));
    drop(pg);
    assert!(!alive(pid) && !group_alive(pid), "postmaster {pid} or its group outlived the drop");
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("the port is free again");
}

/// Records what the server starts and reaps, as the harness's registry does.
#[derive(Default)]
struct Recording {
    spawned: Mutex<Vec<i32>>,
    reaped: Mutex<Vec<i32>>,
}

impl Spawner for Recording {
    fn spawn(&self, cmd: &mut Command) -> std::io::Result<(Proc, Pipes)> {
        let (proc, pipes) = DirectSpawner.spawn(cmd)?;
        self.spawned.lock().unwrap().push(proc.pid());
        Ok((proc, pipes))
    }
    fn reaped(&self, pid: i32) {
        self.reaped.lock().unwrap().push(pid);
    }
}

#[test]
fn every_child_goes_through_the_spawner_and_is_reported_reaped() {
    let parent = Scratch::new("spawner");
    let rec = Arc::new(Recording::default());
    let opts = PgOptions { spawner: rec.clone(), ..PgOptions::default() };
    let mut pg = PgServer::start_with(&parent.0, &opts).unwrap();
    let postmaster = pg.pid().unwrap();
    pg.psql("select 1").unwrap();
    pg.stop_fast().unwrap();
    drop(pg);
    let mut spawned = rec.spawned.lock().unwrap().clone();
    let mut reaped = rec.reaped.lock().unwrap().clone();
    // (pg_config,) initdb, postgres, at least one pg_isready, psql (create database, select 1).
    assert!(spawned.len() >= 5 && spawned.contains(&postmaster), "{spawned:?}");
    spawned.sort_unstable();
    reaped.sort_unstable();
    assert_eq!(spawned, reaped, "every child started is reported reaped, once");
}

#[test]
fn missing_binaries_are_named_with_what_to_install_and_nothing_is_created() {
    let parent = Scratch::new("nobin");
    let empty = Scratch::new("nobin-bindir");
    let opts = PgOptions { bin_dir: Some(empty.0.clone()), ..PgOptions::default() };
    let err = PgServer::start_with(&parent.0, &opts).err().expect("no binaries, no server");
    assert!(err.starts_with("PostgreSQL server binaries not found"), "{err}");
    assert!(err.contains(&empty.0.display().to_string()) && err.contains("no initdb"), "{err}");
    assert!(err.contains("apt-get install postgresql"), "{err}");
    assert!(parent.entries().is_empty(), "{:?}", parent.entries());
}

#[test]
fn a_failed_initdb_is_reported_and_its_directory_removed() {
    let parent = Scratch::new("badinit");
    let bin = Scratch::new("badinit-bindir");
    for name in ["initdb", "postgres", "psql", "pg_isready"] {
        let path = bin.0.join(name);
        std::fs::write(&path, "#!/bin/sh\necho \"$0: the disk is on fire\" >&2\nexit 1\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let opts = PgOptions { bin_dir: Some(bin.0.clone()), ..PgOptions::default() };
    let err = PgServer::start_with(&parent.0, &opts).err().expect("initdb fails");
    assert!(err.starts_with("initdb for ") && err.contains("initdb: the disk is on fire"), "{err}");
    assert!(err.contains("exit 1"), "{err}");
    assert!(parent.entries().is_empty(), "{:?}", parent.entries());
}

#[test]
fn a_parent_too_deep_for_a_socket_path_gets_its_socket_under_tmp() {
    let parent = Scratch::new("deep");
    let deep = parent.0.join("d".repeat(60)).join("e".repeat(40));
    std::fs::create_dir_all(&deep).unwrap();
    let pg = PgServer::start(&deep).unwrap();
    let socket_dir = pg.socket_dir().to_path_buf();
    assert!(pg.data_dir().starts_with(deep.canonicalize().unwrap()), "{}", pg.data_dir().display());
    assert!(socket_dir.to_string_lossy().starts_with("/tmp/homer-pgs-"), "{}", socket_dir.display());
    assert_eq!(psql_url(&pg.socket_url(), "select current_database()").unwrap(), "homer\n");
    drop(pg);
    assert!(!socket_dir.exists(), "{} outlived the drop", socket_dir.display());
}

#[test]
fn as_root_a_parent_nobody_can_search_gets_the_server_under_tmp_and_its_log_on_drop() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: only root runs the server as another uid");
        return;
    }
    let parent = Scratch::new("closed");
    std::fs::set_permissions(&parent.0, std::fs::Permissions::from_mode(0o700)).unwrap();
    let closed = parent.0.join("inner");
    std::fs::create_dir(&closed).unwrap();
    let pg = PgServer::start(&closed).unwrap();
    let dir = pg.data_dir().parent().unwrap().to_path_buf();
    assert!(dir.starts_with("/tmp") && !dir.starts_with(&parent.0), "{}", dir.display());
    assert_eq!(pg.psql("select 1").unwrap(), "1\n");
    // A warning lands in the log (the log keeps warnings and worse).
    pg.psql("do $$ begin raise warning 'homer-testkit was here'; end $$").unwrap();
    drop(pg);
    assert!(!dir.exists(), "{} outlived the drop", dir.display());
    let logs: Vec<PathBuf> = std::fs::read_dir(&closed).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(logs.len(), 1, "{logs:?}");
    let log = std::fs::read_to_string(&logs[0]).unwrap();
    assert!(log.contains("homer-testkit was here"), "{log}");
}

#[test]
fn a_server_listening_on_a_hosts_address_answers_that_host_and_its_trusted_network_only() {
    let scratch = Scratch::new("listen");
    if !rustix::process::geteuid().is_root() {
        let err = homer_testkit::Host::create("h").err().expect("hosts need root");
        assert!(err.contains("needs root"), "{err}");
        return;
    }
    let (trusted, stranger) = (homer_testkit::Host::create("h1").unwrap(), homer_testkit::Host::create("h2").unwrap());
    let opts = PgOptions {
        listen: vec![[127, 0, 0, 1].into(), trusted.server_addr().into(), stranger.server_addr().into()],
        trust: vec![trusted.subnet()],
        ..PgOptions::default()
    };
    let pg = PgServer::start_with(&scratch.0, &opts).unwrap();
    // psql inside each host, to the server's address on that host's pair.
    let from = |host: &homer_testkit::Host| {
        let mut cmd = host.command(bin_dir().join("psql"));
        cmd.args(["-X", "-A", "-t", "-d", &pg.url_at(host.server_addr().into()), "-c", "select 1"]);
        run(&mut cmd, deadline(60.0)).unwrap()
    };
    let ok = from(&trusted);
    let refused = from(&stranger);
    let local = psql_url(&pg.url(), "select 2");
    assert!(ok.exit.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "1\n");
    // Listening there, but no pg_hba.conf line lets that network in.
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.exit.success() && said.contains("no pg_hba.conf entry"), "{said}");
    assert_eq!(local.unwrap(), "2\n");
}

#[test]
fn a_trusted_network_that_is_not_cidr_or_no_listen_address_is_refused_naming_it() {
    let scratch = Scratch::new("badnet");
    let bad = PgOptions { trust: vec![String::from("10.213.7.0")], ..PgOptions::default() };
    let err = PgServer::start_with(&scratch.0, &bad).err().expect("refused");
    assert!(err.contains("\"10.213.7.0\" is not a network in CIDR form"), "{err}");
    let none = PgOptions { listen: Vec::new(), ..PgOptions::default() };
    let err = PgServer::start_with(&scratch.0, &none).err().expect("refused");
    assert!(err.contains("PgOptions::listen is empty"), "{err}");
    assert!(scratch.entries().is_empty(), "{:?}", scratch.entries());
}
