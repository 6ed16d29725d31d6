//! The group guardian (`homerd group-guardian`, daemon/src/guardian.rs) as a process:
//! groups it was told to watch are stopped when its stdin reaches EOF (the daemon died);
//! groups it was told are gone are left alone. Real processes and process groups.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use homerd::platform::group_has_live_member;

/// A process group of a shell and a grandchild, as a job would leave behind.
fn job_group() -> Child {
    Command::new("sh").args(["-c", "sleep 300 & sleep 300; wait"]).process_group(0).spawn().unwrap()
}

fn guardian() -> Child {
    Command::new(assert_cmd::cargo::cargo_bin("homerd"))
        .args(["group-guardian", "--parent", "1", "--grace-ms", "500"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits (bounded) until `pgid` has no live member.
fn gone_within(pgid: u32, limit: Duration) -> bool {
    let until = Instant::now() + limit;
    loop {
        if !group_has_live_member(pgid).unwrap() {
            return true;
        }
        if Instant::now() > until {
            return false;
        }
        std::thread::yield_now();
    }
}

#[test]
fn watched_groups_die_with_the_daemon_and_unwatched_ones_live_on() {
    let mut watched = job_group();
    let mut released = job_group();
    let (w, r) = (watched.id(), released.id());
    let mut g = guardian();
    let mut stdin = g.stdin.take().unwrap();
    write!(stdin, "+{w}\n+{r}\n-{r}\n").unwrap();
    assert!(group_has_live_member(w).unwrap() && group_has_live_member(r).unwrap());
    // The daemon's end of the pipe closes (as when it is killed).
    drop(stdin);
    let out = g.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("[{w}]")), "{out:?}");
    // The guardian waits for the groups it stops before it exits; the shell leader is
    // our child, so reap it too.
    let _ = watched.wait();
    assert!(gone_within(w, homer_testkit::scaled(Duration::from_secs(10))), "the watched group survived");
    assert!(group_has_live_member(r).unwrap(), "a group the daemon said was gone was killed");
    homerd::platform::signal_group(r, rustix::process::Signal::KILL).unwrap();
    let _ = released.wait();
}

#[test]
fn a_group_that_ignores_term_is_killed_after_the_grace() {
    let mut stubborn =
        Command::new("sh").args(["-c", "trap '' TERM; sleep 300 & sleep 300; wait"]).process_group(0).spawn().unwrap();
    let pgid = stubborn.id();
    let mut g = guardian();
    let mut stdin = g.stdin.take().unwrap();
    writeln!(stdin, "+{pgid}").unwrap();
    drop(stdin);
    assert!(g.wait().unwrap().success());
    let _ = stubborn.wait();
    assert!(gone_within(pgid, homer_testkit::scaled(Duration::from_secs(10))));
}

/// The guardian's stderr is the daemon's, which may be gone with it (a dropped ssh
/// session, a pipeline killed): its note failing to write must not stop it stopping
/// the groups (`eprintln!` would panic, before any signal).
#[test]
fn a_closed_stderr_does_not_stop_the_guardian() {
    let mut watched = job_group();
    let pgid = watched.id();
    let mut g = guardian();
    drop(g.stderr.take()); // nobody reads it any more: a write meets EPIPE
    let mut stdin = g.stdin.take().unwrap();
    writeln!(stdin, "+{pgid}").unwrap();
    drop(stdin);
    let status = g.wait().unwrap();
    assert!(status.success(), "the guardian failed: {status:?}");
    let _ = watched.wait();
    assert!(gone_within(pgid, homer_testkit::scaled(Duration::from_secs(10))), "the watched group survived");
}
