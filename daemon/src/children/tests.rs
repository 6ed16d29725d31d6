//! The children module's unit tests: held starts through the real shim, group kills, output capture.

use super::*;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;

/// Generous: CI machines stall.
const DEADLINE: Duration = Duration::from_secs(30);

/// Stands in for `homerd job-shim` (the unit-test binary is not homerd): read the
/// release line from stdin or exit 125 on EOF, put /dev/null on stdin, exec the argv.
const STAND_IN: &str = r#"read -r _ || exit 125; exec </dev/null; exec "$@""#;

fn stand_in(argv: &[&str], req: SpawnRequest) -> io::Result<HeldChild> {
    let mut args: Vec<OsString> = vec!["-c".into(), STAND_IN.into(), "sh".into()];
    args.extend(argv.iter().map(OsString::from));
    spawn_held_with(Path::new("/bin/sh"), &args, req)
}

fn request(dir: &Path) -> SpawnRequest {
    SpawnRequest {
        argv: Vec::new(),
        env_set: Vec::new(),
        env_deny_prefixes: vec![String::from("HOMERD_")],
        stdout: dir.join("stdout.log"),
        stderr: dir.join("stderr.log"),
        output_cap: None,
        cwd: None,
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(POLL);
    }
}

/// What the daemon records of a held child.
fn identity(held: &HeldChild) -> ChildIdentity {
    ChildIdentity { pid: held.pid, pgid: held.pgid, boot_id: held.boot_id.clone(), start_time: held.start_time }
}

/// A released child that exited leaving a member of its group running (`sleep 60` in the
/// background): the record of its dead leader, and the directory of its output files.
fn orphaned_group() -> (tempfile::TempDir, ChildIdentity) {
    let dir = tempfile::tempdir().unwrap();
    let mut held = stand_in(&["sh", "-c", "sleep 60 & echo started"], request(dir.path())).unwrap();
    held.release().unwrap();
    assert!(wait_exit(&mut held).success());
    (dir, identity(&held))
}

fn wait_exit(held: &mut HeldChild) -> ExitStatus {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = held.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "child {} did not exit", held.pid);
        std::thread::sleep(POLL);
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Linux: whether some thread of `pid` is blocked in read(2), from
/// `/proc/<pid>/task/*/syscall`. `None` where that cannot be told.
#[cfg(target_os = "linux")]
fn blocked_in_read(pid: u32) -> Option<bool> {
    let read_nr = if cfg!(target_arch = "x86_64") {
        "0"
    } else if cfg!(target_arch = "aarch64") {
        "63"
    } else {
        return None;
    };
    let mut any = false;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let syscall = std::fs::read_to_string(task.ok()?.path().join("syscall")).ok()?;
        any |= syscall.split_ascii_whitespace().next() == Some(read_nr);
    }
    Some(any)
}

/// Waits until the held shim is blocked on its pipe (Linux; elsewhere a no-op), so
/// that "the argv has not run" is observed after the shim had every chance to run it.
fn wait_blocked(pid: u32) {
    #[cfg(target_os = "linux")]
    if blocked_in_read(pid).is_some() {
        wait_until("the shim to block on its release pipe", || blocked_in_read(pid) == Some(true));
    }
    #[cfg(not(target_os = "linux"))]
    let _ = pid;
}

fn gone(pid: u32, start_time: u64) -> bool {
    !matches!(identity::proc_state(pid).unwrap(), Some(s) if s.start_time == start_time && !s.zombie)
}

// 1.
#[test]
fn held_child_runs_argv_only_after_release() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let m = marker.to_str().unwrap();
    let mut held = stand_in(&["sh", "-c", r#"echo ran > "$1""#, "sh", m], request(dir.path())).unwrap();
    assert_eq!(held.pgid, held.pid);
    assert_eq!(held.boot_id, identity::pid_space());
    assert_eq!(identity::proc_state(held.pid).unwrap().unwrap().start_time, held.start_time);
    wait_blocked(held.pid);
    assert!(!marker.exists(), "argv ran before release");
    assert!(held.try_wait().unwrap().is_none(), "the held shim exited on its own");
    assert!(group_alive(held.pgid));

    held.release().unwrap();
    assert!(held.release().is_err(), "a second release must be refused");
    let status = wait_exit(&mut held);
    assert!(status.success(), "{status:?}");
    assert_eq!(read(&marker), "ran\n");
}

// 2.
#[test]
fn dropping_an_unreleased_child_never_runs_it_and_reaps_it() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let m = marker.to_str().unwrap();
    let held = stand_in(&["sh", "-c", r#"echo ran > "$1""#, "sh", m], request(dir.path())).unwrap();
    let (pid, pgid, start_time) = (held.pid, held.pgid, held.start_time);
    wait_blocked(pid);
    drop(held);
    assert!(!group_alive(pgid), "group survived the drop");
    // Reaped, not merely dead: no zombie left under that pid.
    assert!(
        !matches!(identity::proc_state(pid).unwrap(), Some(s) if s.start_time == start_time),
        "child {pid} was not reaped"
    );
    assert!(!marker.exists(), "an unreleased child ran its argv");
}

#[test]
fn a_later_child_does_not_inherit_an_earlier_release_pipe() {
    // If the second child held a copy of the first one's write end, closing ours
    // would not give the first shim its EOF: it would block instead of exiting 125.
    let dir = tempfile::tempdir().unwrap();
    let mut first = stand_in(&["true"], request(dir.path())).unwrap();
    let mut second = stand_in(&["sleep", "60"], request(dir.path())).unwrap();
    second.release().unwrap();
    drop(first.release_pipe.take());
    assert_eq!(wait_exit(&mut first).code(), Some(125));
    kill_group_and_wait(second.pgid, Duration::from_secs(5), Duration::from_secs(10)).unwrap();
    second.wait().unwrap();
}

// 3.
#[test]
fn kill_group_and_wait_kills_a_tree_that_ignores_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let req = request(dir.path());
    let out = req.stdout.clone();
    let mut held = stand_in(&["sh", "-c", r#"trap "" TERM; sleep 60 & echo started; wait"#], req).unwrap();
    held.release().unwrap();
    wait_until("the grandchild to start", || read(&out).contains("started"));

    let grace = Duration::from_millis(300);
    let slack = Duration::from_secs(10);
    let t0 = Instant::now();
    kill_group_and_wait(held.pgid, grace, slack).unwrap();
    let elapsed = t0.elapsed();
    assert!(elapsed >= grace, "the group ended on SIGTERM ({elapsed:?}) although it ignores it");
    assert!(elapsed < grace + slack, "{elapsed:?}");
    assert!(!group_alive(held.pgid));
    let status = held.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
}

#[test]
fn kill_group_and_wait_returns_early_when_sigterm_suffices() {
    let dir = tempfile::tempdir().unwrap();
    let mut held = stand_in(&["sleep", "60"], request(dir.path())).unwrap();
    held.release().unwrap();
    let t0 = Instant::now();
    kill_group_and_wait(held.pgid, Duration::from_secs(20), Duration::from_secs(5)).unwrap();
    assert!(t0.elapsed() < Duration::from_secs(20), "waited the whole grace");
    assert_eq!(held.wait().unwrap().signal(), Some(libc::SIGTERM));
}

// 4.
#[test]
fn signal_group_refuses_dangerous_groups() {
    let own = crate::platform::own_process_group();
    for pgid in [0, 1, own, u32::MAX, i32::MAX as u32 + 1] {
        let err = signal_group(pgid, Signal::TERM).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "pgid {pgid}: {err}");
        assert!(kill_group_and_wait(pgid, Duration::ZERO, Duration::ZERO).is_err());
    }
    // A group that does not exist (beyond any pid_max) is fine: ESRCH is Ok.
    signal_group(0x3fff_fff0, Signal::KILL).unwrap();
    assert!(!group_alive(0x3fff_fff0));
    assert!(!group_alive(0));
}

// 5.
#[test]
fn group_alive_treats_zombies_as_gone() {
    let mut child = Command::new("sleep").arg("60").stdin(Stdio::null()).process_group(0).spawn().unwrap();
    let pgid = child.id();
    assert!(group_alive(pgid));
    child.kill().unwrap();
    wait_until("the killed child to become a zombie", || !group_alive(pgid));
    // Still an unreaped member as far as kill(2) is concerned: a probe would call the
    // group alive, group_alive must not.
    assert!(crate::platform::group_exists(pgid), "the zombie was reaped early: the test proves nothing");
    #[cfg(target_os = "linux")]
    assert!(identity::proc_state(pgid).unwrap().unwrap().zombie);
    child.wait().unwrap();
}

/// A process whose main thread exited while another thread still runs shows state `Z` on
/// Linux, but it still runs code: its group is alive until that last thread ends.
#[cfg(target_os = "linux")]
#[test]
fn a_process_whose_main_thread_exited_is_alive_until_its_last_thread_ends() {
    // Python's main thread ends itself (pthread_exit); a second thread reads stdin until
    // it closes, then the process is done.
    let code = "import threading, sys, ctypes\n\
                threading.Thread(target=sys.stdin.read).start()\n\
                ctypes.CDLL(None).pthread_exit(None)";
    let mut child = Command::new("python3").args(["-c", code]).stdin(Stdio::piped()).process_group(0).spawn().unwrap();
    let pgid = child.id();
    // The state field, right after the command name's closing parenthesis.
    let state_z = || {
        std::fs::read_to_string(format!("/proc/{pgid}/stat"))
            .is_ok_and(|l| l.rsplit(") ").next().is_some_and(|f| f.starts_with('Z')))
    };
    wait_until("the main thread to exit (state Z, another thread running)", state_z);
    assert!(!identity::proc_state(pgid).unwrap().unwrap().zombie, "a Z with a live thread is not a zombie");
    assert!(group_alive(pgid), "its group still runs code");
    drop(child.stdin.take());
    wait_until("the last thread to end", || !group_alive(pgid));
    assert!(identity::proc_state(pgid).unwrap().unwrap().zombie, "reaped early: the test proves nothing");
    assert!(child.wait().unwrap().success());
}

// 6.
#[test]
fn kill_recorded_group_kills_only_a_live_group_of_this_boot() {
    let dir = tempfile::tempdir().unwrap();
    let mut held = stand_in(&["sleep", "60"], request(dir.path())).unwrap();
    held.release().unwrap();
    let mut rec = identity(&held);

    let earlier = ChildIdentity { boot_id: String::from("some-earlier-boot"), ..rec.clone() };
    assert!(!kill_recorded_group(&earlier, Duration::from_secs(5)).unwrap());
    assert!(group_alive(held.pgid), "an earlier boot's record was signalled");
    assert!(held.try_wait().unwrap().is_none());

    assert!(kill_recorded_group(&rec, Duration::from_secs(10)).unwrap());
    assert!(!group_alive(held.pgid));
    assert_eq!(held.wait().unwrap().signal(), Some(libc::SIGKILL));

    // Leader reaped, group empty: nothing to do.
    assert!(!kill_recorded_group(&rec, Duration::from_secs(5)).unwrap());
    rec.start_time += 1;
    assert!(!kill_recorded_group(&rec, Duration::from_secs(5)).unwrap());
}

#[test]
fn kill_recorded_group_kills_members_of_a_dead_leader() {
    let (_dir, rec) = orphaned_group();
    assert!(gone(rec.pid, rec.start_time));
    assert!(group_alive(rec.pgid), "the orphaned member should still run");
    assert!(kill_recorded_group(&rec, Duration::from_secs(10)).unwrap());
    assert!(!group_alive(rec.pgid));
}

#[test]
fn recorded_groups_are_judged_by_a_live_groups_snapshot() {
    let (_dir, rec) = orphaned_group();
    let asked = std::collections::HashSet::from([rec.pgid]);
    let snapshot = live_groups(&asked);
    if cfg!(target_os = "linux") {
        assert!(snapshot.as_ref().unwrap().contains(&rec.pgid), "the orphaned member's group is live");
    }
    // The leader is dead: the snapshot alone decides. Without the group in it, nothing
    // is signalled...
    let without = std::collections::HashSet::new();
    assert!(!kill_recorded_group_in(&rec, Duration::from_secs(5), Some(&without)).unwrap());
    assert!(group_alive(rec.pgid), "a group absent from the snapshot was signalled");
    // ...with it, the group is killed and waited for, as by a scan of its own.
    assert!(kill_recorded_group_in(&rec, Duration::from_secs(10), snapshot.as_ref()).unwrap());
    assert!(!group_alive(rec.pgid));
    if let Some(after) = live_groups(&asked) {
        assert!(!after.contains(&rec.pgid));
    }
}

// 7.
#[test]
fn child_environment_drops_denied_prefixes_and_adds_env_set() {
    const DENIED: &str = "HOMERD_TEST_CHILDREN_DENY";
    std::env::set_var(DENIED, "must-not-leak");
    assert!(std::env::vars().any(|(k, _)| k == DENIED), "the test would prove nothing");
    let dir = tempfile::tempdir().unwrap();
    let mut req = request(dir.path());
    req.env_set = vec![
        (String::from("HOMER_JOB_ID"), String::from("42")),
        (String::from("HOMER_TEST_CHILDREN_SET"), String::from("a b=c")),
    ];
    let out = req.stdout.clone();
    let mut held = stand_in(&["env"], req).unwrap();
    held.release().unwrap();
    assert!(wait_exit(&mut held).success());
    let env = read(&out);
    assert!(env.lines().any(|l| l == "HOMER_JOB_ID=42"), "{env}");
    assert!(env.lines().any(|l| l == "HOMER_TEST_CHILDREN_SET=a b=c"), "{env}");
    assert!(env.lines().any(|l| l.starts_with("PATH=")), "inherited variables must stay: {env}");
    assert!(!env.lines().any(|l| l.starts_with("HOMERD_")), "a denied variable leaked: {env}");
}

// 8.
#[test]
fn output_lands_in_the_log_files() {
    let dir = tempfile::tempdir().unwrap();
    let req = request(dir.path());
    let (out, err) = (req.stdout.clone(), req.stderr.clone());
    std::fs::write(&out, "a forgotten run's output\n").unwrap();
    let mut held = stand_in(&["sh", "-c", "echo to-stdout; echo to-stderr >&2"], req).unwrap();
    held.release().unwrap();
    assert!(wait_exit(&mut held).success());
    assert_eq!(read(&out), "to-stdout\n", "a stale file of the same name is another run's: replaced");
    assert_eq!(read(&err), "to-stderr\n");
    let mode = std::fs::metadata(&err).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

// The real shim (shim.rs): the unit-test binary re-runs itself as the shim through
// the ignored entry point below, which calls shim::shim_main.

const SHIM_ENV: &str = "HOMER_TEST_CHILDREN_SHIM";
const SEP: char = '\u{1f}';

#[test]
#[ignore = "not a test: the entry point of the real-shim tests' child processes"]
fn real_shim_entry() {
    let Ok(spec) = std::env::var(SHIM_ENV) else { return };
    let mut parts = spec.split(SEP);
    let parent: u32 = parts.next().unwrap().parse().unwrap();
    let argv: Vec<String> = parts.map(String::from).collect();
    std::process::exit(shim::shim_main(parent, None, None, &argv));
}

/// The program and arguments that run this test binary as the shim.
fn real_shim_command(parent: u32, argv: &[&str], req: &mut SpawnRequest) -> (PathBuf, Vec<OsString>) {
    let spec: Vec<String> = std::iter::once(parent.to_string()).chain(argv.iter().map(|s| s.to_string())).collect();
    req.env_set.push((String::from(SHIM_ENV), spec.join(&SEP.to_string())));
    let exe = std::env::current_exe().unwrap();
    let args = ["--exact", "children::tests::real_shim_entry", "--ignored", "--nocapture", "--test-threads=1", "-q"];
    (exe, args.iter().map(OsString::from).collect())
}

fn real_shim(parent: u32, argv: &[&str], mut req: SpawnRequest) -> io::Result<HeldChild> {
    let (exe, args) = real_shim_command(parent, argv, &mut req);
    spawn_held_with(&exe, &args, req)
}

#[test]
fn real_shim_execs_argv_after_release_with_dev_null_on_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let req = request(dir.path());
    let out = req.stdout.clone();
    let script = r#"if [ -p /dev/stdin ]; then echo stdin-pipe; elif [ -c /dev/stdin ]; then echo stdin-char-device; fi; echo job-ran"#;
    let mut held = real_shim(std::process::id(), &["sh", "-c", script], req).unwrap();
    wait_blocked(held.pid);
    assert!(!read(&out).contains("job-ran"));
    held.release().unwrap();
    let status = wait_exit(&mut held);
    assert!(status.success(), "{status:?}: {}", read(&out));
    let out = read(&out);
    assert!(out.contains("job-ran"), "{out}");
    assert!(
        out.contains("stdin-char-device") && !out.contains("stdin-pipe"),
        "the job inherited the release pipe: {out}"
    );
}

#[test]
fn real_shim_exits_125_on_eof_without_running_argv() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let m = marker.to_str().unwrap();
    let mut held =
        real_shim(std::process::id(), &["sh", "-c", r#"echo ran > "$1""#, "sh", m], request(dir.path())).unwrap();
    wait_blocked(held.pid);
    drop(held.release_pipe.take());
    assert_eq!(wait_exit(&mut held).code(), Some(shim::EXIT_NOT_RELEASED));
    assert!(!marker.exists());
}

#[test]
fn real_shim_without_a_release_pipe_runs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let spec = [std::process::id().to_string(), "sh".into(), "-c".into(), r#"echo ran > "$1""#.into(), "sh".into()]
        .into_iter()
        .chain([marker.to_str().unwrap().to_owned()])
        .collect::<Vec<String>>()
        .join(&SEP.to_string());
    let (exe, args) = real_shim_command(std::process::id(), &[], &mut request(dir.path()));
    // The shell becomes the shim with /dev/null on stdin: its parent is this process, as
    // the shim requires, and it has no release pipe.
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"exec "$0" "$@""#)
        .arg(&exe)
        .args(&args)
        .env(SHIM_ENV, spec)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(shim::EXIT_NOT_RELEASED), "{stderr}");
    assert!(stderr.contains("no release pipe on stdin"), "{stderr}");
    assert!(!marker.exists());
}

#[test]
fn real_shim_refuses_a_parent_that_is_not_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let m = marker.to_str().unwrap();
    let mut held = real_shim(1, &["sh", "-c", r#"echo ran > "$1""#, "sh", m], request(dir.path())).unwrap();
    // It may already have exited; a failed write is fine.
    let _ = held.release();
    assert_eq!(wait_exit(&mut held).code(), Some(shim::EXIT_NOT_RELEASED));
    assert!(!marker.exists());
}

#[test]
fn real_shim_reports_an_exec_failure() {
    let dir = tempfile::tempdir().unwrap();
    let req = request(dir.path());
    let err = req.stderr.clone();
    let mut held = real_shim(std::process::id(), &["/nonexistent/homerd-no-such-program"], req).unwrap();
    held.release().unwrap();
    assert_eq!(wait_exit(&mut held).code(), Some(shim::EXIT_CANNOT_EXEC));
    let err = read(&err);
    assert!(err.contains("homerd job-shim: cannot exec /nonexistent/homerd-no-such-program: "), "{err}");
}

/// Spawns the real shim from a thread that ends once the shim is blocked (so past its
/// prctl), and waits until that thread is fully gone (so a parent-death signal, if
/// any, has been sent). `direct`: spawn on that thread instead of the spawner thread.
#[cfg(target_os = "linux")]
fn real_shim_from_ended_thread(direct: bool, dir: &Path) -> HeldChild {
    let mut req = request(dir);
    let (exe, args) = real_shim_command(std::process::id(), &["true"], &mut req);
    let (held, tid) = std::thread::spawn(move || {
        let held = if direct { spawn_direct(&exe, &args, req) } else { spawn_held_with(&exe, &args, req) };
        let held = held.unwrap();
        assert!(blocked_in_read(held.pid).is_some(), "cannot observe the shim blocking here");
        wait_until("the shim to block", || blocked_in_read(held.pid) == Some(true));
        (held, rustix::thread::gettid().as_raw_nonzero().get())
    })
    .join()
    .unwrap();
    wait_until("the thread to be gone", || !Path::new(&format!("/proc/self/task/{tid}")).exists());
    held
}

#[cfg(target_os = "linux")]
#[test]
fn real_shim_dies_with_the_thread_that_spawned_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut held = real_shim_from_ended_thread(true, dir.path());
    let status = wait_exit(&mut held);
    assert_eq!(status.signal(), Some(libc::SIGKILL), "no parent-death signal: {status:?}");
}

#[cfg(target_os = "linux")]
#[test]
fn spawn_held_outlives_the_calling_thread() {
    let dir = tempfile::tempdir().unwrap();
    let mut held = real_shim_from_ended_thread(false, dir.path());
    held.release().unwrap();
    let status = wait_exit(&mut held);
    assert!(status.success(), "killed with the calling thread: {status:?}");
}

#[test]
fn spawn_held_runs_the_shim_with_the_protocol_arguments() {
    // A script standing in for the homerd executable prints its command line, then
    // behaves like the shim (blocks on stdin, exits 0 once released).
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("fake-homerd");
    std::fs::write(&script, "#!/bin/sh\nprintf '%s\\n' \"$@\"\nread -r _ || exit 125\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut req = request(dir.path());
    req.argv = vec![String::from("prog"), String::from("a b")];
    let out = req.stdout.clone();
    assert!(spawn_held(SpawnRequest { argv: Vec::new(), ..req.clone() }).is_err(), "empty argv must be refused");
    let mut attempts = 0;
    let mut held = loop {
        // ETXTBSY: another test's fork may briefly hold the script's write descriptor.
        match spawn_held_via(&script, req.clone()) {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempts < 1000 => {
                attempts += 1;
                std::thread::sleep(POLL);
            }
            other => break other.unwrap(),
        }
    };
    held.release().unwrap();
    assert!(wait_exit(&mut held).success());
    // `--nofile` only once this process raised its limit (another test may have).
    let nofile = crate::rlimit::child_soft_limit().map_or(String::new(), |n| format!("--nofile\n{n}\n"));
    let expected = format!("job-shim\n--parent\n{}\n{nofile}--\nprog\na b\n", std::process::id());
    assert_eq!(read(&out), expected);
}

#[test]
fn group_known_counts_any_member_and_refuses_what_is_never_a_jobs_group() {
    let dir = tempfile::tempdir().unwrap();
    let held = stand_in(&["true"], request(dir.path())).unwrap();
    let pgid = held.pgid;
    assert!(group_known(pgid), "a held child's group");
    // Dropped unreleased: killed and reaped, so the group has no member left at all.
    drop(held);
    assert!(!group_known(pgid), "a reaped group");
    for refused in [0, 1, platform::own_process_group(), u32::MAX] {
        assert!(!group_known(refused), "{refused}");
    }
}

/// What startup recovery passes when the kernel knew none of the recorded groups: an
/// empty snapshot skips every group, but not a leader still alive with its recorded
/// start time (as with a full snapshot that missed it).
#[test]
fn an_empty_snapshot_still_kills_a_live_recorded_leader() {
    let dir = tempfile::tempdir().unwrap();
    let mut held = stand_in(&["sleep", "60"], request(dir.path())).unwrap();
    held.release().unwrap();
    let id = identity(&held);
    let empty = std::collections::HashSet::new();
    assert!(kill_recorded_group_in(&id, DEADLINE, Some(&empty)).unwrap(), "the live leader was not killed");
    assert_eq!(wait_exit(&mut held).signal(), Some(libc::SIGKILL));
    // Gone now: the same snapshot, and the record, skip it without a signal.
    assert!(!kill_recorded_group_in(&id, DEADLINE, Some(&empty)).unwrap());
}

/// Every request is served when many arrive at once, by the pool of spawner threads.
#[test]
fn concurrent_spawns_are_all_served_by_the_spawner_pool() {
    let dir = tempfile::tempdir().unwrap();
    let starts: Vec<_> = (0..3 * SPAWNERS)
        .map(|i| {
            let mut req = request(dir.path());
            req.stdout = dir.path().join(format!("{i}.out"));
            std::thread::spawn(move || {
                let mut held = stand_in(&["sh", "-c", "echo ran"], req).unwrap();
                held.release().unwrap();
                wait_exit(&mut held)
            })
        })
        .collect();
    for (i, start) in starts.into_iter().enumerate() {
        assert!(start.join().unwrap().success());
        assert_eq!(std::fs::read_to_string(dir.path().join(format!("{i}.out"))).unwrap(), "ran\n");
    }
    #[cfg(target_os = "linux")]
    {
        let spawners = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
            .filter(|comm| comm.trim() == "homerd-spawner")
            .count();
        assert_eq!(spawners, SPAWNERS, "spawner threads alive in this process");
    }
}

mod cap_tests {
    use super::*;

    #[test]
    fn capped_output_keeps_the_first_bytes_and_says_how_much_was_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let req = SpawnRequest {
            argv: vec![],
            env_set: vec![],
            env_deny_prefixes: vec![],
            stdout: dir.path().join("out"),
            stderr: dir.path().join("err"),
            output_cap: Some(1000),
            cwd: None,
        };
        let stand_in = STAND_IN;
        let args: Vec<OsString> = ["-c", stand_in, "sh", "sh", "-c", "head -c 5000 /dev/zero | tr '\\0' x; echo e >&2"]
            .iter()
            .map(OsString::from)
            .collect();
        let mut held = spawn_held_with(Path::new("/bin/sh"), &args, req).unwrap();
        held.release().unwrap();
        assert!(held.wait().unwrap().success());
        assert!(held.finish_output(Duration::from_secs(30)));
        let out = std::fs::read_to_string(dir.path().join("out")).unwrap();
        assert!(out.starts_with(&"x".repeat(1000)), "{}", &out[..out.len().min(50)]);
        assert!(out.contains("[homerd: 4000 more bytes dropped: run_log_cap is 1000 bytes]"), "{out}");
        assert_eq!(out.matches('x').count(), 1000);
        assert_eq!(std::fs::read_to_string(dir.path().join("err")).unwrap(), "e\n");
    }

    /// A run log is created at the stream's first byte: a silent stream leaves no file; a
    /// stream whose file cannot be created (its directory is gone) is still read to EOF,
    /// so the job never blocks on it, and nothing is created.
    #[test]
    fn a_run_log_is_created_only_when_its_stream_writes() {
        let dir = tempfile::tempdir().unwrap();
        let copy = |bytes: &[u8], path: &Path| {
            let (read, write) = cloexec_pipe().unwrap();
            let bytes = bytes.to_vec();
            // More than a pipe holds: written while the copier reads.
            let writer = std::thread::spawn(move || File::from(write).write_all(&bytes).unwrap());
            copy_capped(File::from(read), path, 1000);
            writer.join().unwrap();
        };
        let silent = dir.path().join("silent.out");
        copy(b"", &silent);
        assert!(!silent.exists(), "a stream that wrote nothing got a file");
        let spoken = dir.path().join("spoken.out");
        copy(b"hello\n", &spoken);
        assert_eq!(std::fs::read_to_string(&spoken).unwrap(), "hello\n");
        let homeless = dir.path().join("gone/x.out");
        copy(&[b'y'; 200_000], &homeless);
        assert!(!homeless.exists() && !dir.path().join("gone").exists());
    }
}
