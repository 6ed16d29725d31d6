//! Peers (`--peers DIR`): the exec workload of `exec.rs` run against other job runners
//! installed as their users would install them — `cargo xtask bench --peers` puts pueue
//! (`cargo install --locked`) and huey (pip, into a virtualenv) under `DIR` — in the same
//! run as homerd's, each figure a ratio; and no-op jobs against huey.
//!
//! - **huey** (`SqliteHuey`, a SQLite file like homerd's): `huey_consumer -w K -k process`
//!   over a task that runs its argv with `subprocess.run` (or, for the no-op comparison,
//!   one that returns at once); N tasks enqueued by one Python process, which then waits
//!   for every result (reading it, not popping it: a pop is a write of its own). huey
//!   polls for a result that is not there yet (every 50 ms and slower), so the end is
//!   seen up to that late: small beside runs of seconds. Time: from that process's start
//!   to its exit. CPU: the consumer's whole life from wait4 (its workers and their children
//!   reaped at its graceful stop), less nothing: start-up is included, as it is not for
//!   homerd, which only makes huey look worse by a few milliseconds in all.
//! - **pueue** (`pueued` + `pueue`): `pueue parallel K`, N × `pueue add -- true`
//!   (one client process each, its only way to add), then `pueue wait`. CPU: `pueued`'s
//!   whole life from wait4, clients not counted.
//!
//! Versions are printed with the figures. Runs alternate with homerd's and the floor's.
//!
//! What each keeps when it crashes is measured too ([`crash`]): K jobs that note their
//! start in a file and sleep, the runner's whole process group killed with SIGKILL once
//! all K have started, the runner started again on the same state, and then a window of
//! a few seconds in which any re-run would note its start. homerd's own figure for the
//! same event is the restart section's.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::exec::Run;
use crate::procs::{self, Proc};
use crate::sections::START_LIMIT;

/// Where `cargo xtask bench --peers` installed the peers.
#[derive(Clone, Debug)]
pub struct Peers {
    pub dir: PathBuf,
}

impl Peers {
    fn huey_python(&self) -> PathBuf {
        self.dir.join("venv/bin/python")
    }
    fn huey_consumer(&self) -> PathBuf {
        self.dir.join("venv/bin/huey_consumer")
    }
    fn pueue_bin(&self, name: &str) -> PathBuf {
        self.dir.join("pueue/bin").join(name)
    }

    /// The installed version of peer `name`, or `?`.
    pub fn version(&self, name: &str) -> String {
        self.installed(name).unwrap_or_else(|| String::from("?"))
    }

    /// `(name, version)` of each installed peer.
    pub fn versions(&self) -> Vec<(String, String)> {
        ["huey", "pueue"].iter().filter_map(|name| Some((name.to_string(), self.installed(name)?))).collect()
    }

    /// The version of peer `name` as its own program reports it (one process), if it is
    /// installed.
    fn installed(&self, name: &str) -> Option<String> {
        match name {
            "huey" => {
                procs::output(Command::new(self.huey_python()).args(["-c", "import huey; print(huey.__version__)"]))
                    .ok()
                    .map(|v| v.trim().to_owned())
            }
            "pueue" => procs::output(Command::new(self.pueue_bin("pueued")).arg("--version"))
                .ok()
                .map(|v| v.trim().trim_start_matches("pueued ").to_owned()),
            _ => None,
        }
    }
}

/// The huey side: the task module and the enqueuing script, written into the run's
/// directory.
const HUEY_TASKS: &str = r#"import os, subprocess
from huey import SqliteHuey

huey = SqliteHuey(filename=os.environ["BENCH_HUEY_DB"])


@huey.task()
def run(argv):
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)
    return 0


@huey.task()
def noop():
    return 0
"#;

const HUEY_ENQUEUE: &str = r#"import sys
from bench_tasks import noop, run

n = int(sys.argv[1])
argv = sys.argv[2:] or ["true"]
if argv == ["--noop"]:
    results = [noop() for _ in range(n)]
else:
    results = [run(argv) for _ in range(n)]
if argv in (["true"], ["--noop"]):
    # preserve: read each result without deleting it (a get that pops is a write
    # transaction of its own, which homerd's side of the race does not pay).
    for r in results:
        r.get(blocking=True, timeout=600, preserve=True)
"#;

/// A job for the crash check: notes its start in `started`, then sleeps.
const NOTE_AND_SLEEP: &str = "echo started >> started; exec sleep 60";

/// A fresh directory holding the huey task module and the enqueuing script.
fn huey_dir(work: &Path, name: &str) -> Result<PathBuf, String> {
    let dir = procs::fresh_dir(work, name)?;
    for (file, text) in [("bench_tasks.py", HUEY_TASKS), ("bench_enqueue.py", HUEY_ENQUEUE)] {
        std::fs::write(dir.join(file), text).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    Ok(dir)
}

/// `program` run in huey directory `dir`, on its queue.
fn huey_command(program: PathBuf, dir: &Path) -> Command {
    let mut c = Command::new(program);
    c.current_dir(dir).env("PYTHONPATH", dir).env("BENCH_HUEY_DB", dir.join("huey.db")).stdin(Stdio::null());
    c
}

/// `huey_consumer` over `dir`'s queue with `k` process workers.
fn huey_consumer(peers: &Peers, dir: &Path, k: usize) -> Result<Proc, String> {
    let mut c = huey_command(peers.huey_consumer(), dir);
    c.args(["bench_tasks.huey", "-w", &k.to_string(), "-k", "process", "-q"]).stdout(Stdio::null());
    Proc::spawn(&mut c).map(|(p, _)| p).map_err(|e| format!("cannot start huey_consumer: {e}"))
}

/// Enqueues `n` tasks of `argv` (`true`, and then waits for every result, when empty;
/// `["--noop"]`: `n` tasks that run nothing, every result waited for too).
fn huey_enqueue(peers: &Peers, dir: &Path, n: usize, argv: &[&str]) -> Result<String, String> {
    let mut c = huey_command(peers.huey_python(), dir);
    c.args(["bench_enqueue.py", &n.to_string()]).args(argv);
    procs::output(&mut c).map_err(|e| format!("huey: {e}"))
}

/// One huey run of `n` × `true`, `k` process workers.
pub fn huey_exec(peers: &Peers, work: &Path, n: usize, k: usize) -> Result<Run, String> {
    huey_run(peers, work, n, k, &[])
}

/// One huey run of `n` tasks that run nothing, `k` process workers.
pub fn huey_noop(peers: &Peers, work: &Path, n: usize, k: usize) -> Result<Run, String> {
    huey_run(peers, work, n, k, &["--noop"])
}

fn huey_run(peers: &Peers, work: &Path, n: usize, k: usize, argv: &[&str]) -> Result<Run, String> {
    let dir = huey_dir(work, "huey")?;
    let mut proc = huey_consumer(peers, &dir, k)?;
    let t0 = Instant::now();
    let done = huey_enqueue(peers, &dir, n, argv);
    let elapsed = t0.elapsed();
    let exit = stop(&mut proc, libc::SIGINT, "huey_consumer")?;
    done?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Run { per_sec: n as f64 / elapsed.as_secs_f64(), cpu_ms_per_job: exit.cpu.as_secs_f64() * 1000.0 / n as f64 })
}

/// pueue's configuration: everything under `dir` (how many tasks run at once is state,
/// set by [`start_pueued`]).
fn pueue_config(dir: &Path) -> Result<PathBuf, String> {
    let file = dir.join("pueue.yml");
    let d = dir.display();
    let text = format!(
        "shared:\n  pueue_directory: {d}/state\n  runtime_directory: {d}/run\n  use_unix_socket: true\n  \
         unix_socket_path: {d}/run/pueue.socket\ndaemon:\n  pause_group_on_failure: false\n  pause_all_on_failure: false\nclient:\n  read_local_logs: true\n"
    );
    std::fs::create_dir_all(dir.join("run")).map_err(|e| format!("{d}: {e}"))?;
    std::fs::write(&file, text).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(file)
}

fn pueue(peers: &Peers, config: &Path, args: &[&str]) -> Result<String, String> {
    procs::output(Command::new(peers.pueue_bin("pueue")).arg("-c").arg(config).args(args))
}

/// `pueued` on `config`, ready, running `k` tasks at once in its default group.
fn start_pueued(peers: &Peers, config: &Path, k: usize) -> Result<Proc, String> {
    let mut cmd = Command::new(peers.pueue_bin("pueued"));
    cmd.arg("-c").arg(config).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let (proc, _) = Proc::spawn(&mut cmd).map_err(|e| format!("cannot start pueued: {e}"))?;
    // Ready once a client gets an answer (pueued has no readiness signal of its own).
    let deadline = Instant::now() + START_LIMIT;
    while pueue(peers, config, &["status", "--json"]).is_err() {
        if Instant::now() > deadline {
            return Err(String::from("pueued did not answer `pueue status` within the start limit"));
        }
        std::thread::yield_now();
    }
    pueue(peers, config, &["parallel", &k.to_string()])?;
    Ok(proc)
}

/// One pueue run of `n` × `true`, `k` at a time.
pub fn pueue_exec(peers: &Peers, work: &Path, n: usize, k: usize) -> Result<Run, String> {
    let dir = procs::fresh_dir(work, "pueue")?;
    let config = pueue_config(&dir)?;
    let mut daemon = start_pueued(peers, &config, k)?;
    let t0 = Instant::now();
    for _ in 0..n {
        pueue(peers, &config, &["add", "--", "true"])?;
    }
    pueue(peers, &config, &["wait"])?;
    let elapsed = t0.elapsed();
    let status = pueue(peers, &config, &["status", "--json"])?;
    let exit = stop(&mut daemon, libc::SIGTERM, "pueued")?;
    let v: serde_json::Value = serde_json::from_str(&status).map_err(|e| format!("pueue status --json: {e}"))?;
    let ok =
        v["tasks"].as_object().map_or(0, |t| t.values().filter(|t| t["status"]["Done"]["result"] == "Success").count());
    if ok != n {
        return Err(format!("pueue ran {ok} of {n} tasks successfully"));
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Run { per_sec: n as f64 / elapsed.as_secs_f64(), cpu_ms_per_job: exit.cpu.as_secs_f64() * 1000.0 / n as f64 })
}

fn stop(proc: &mut Proc, sig: i32, what: &str) -> Result<procs::Exit, String> {
    proc.signal(sig);
    match proc.wait_exit(Duration::from_secs(60)) {
        Some(e) => Ok(e),
        None => {
            proc.kill();
            Err(format!("{what} did not stop within 60 s of signal {sig}"))
        }
    }
}

/// One run of each peer for the exec section: `(label, run)` in a fixed order.
pub fn exec_once(peers: &Peers, work: &Path, n: usize, k: usize) -> Result<Vec<(String, Run)>, String> {
    Ok(vec![
        (format!("huey {} (SqliteHuey, {k} process workers)", peers.version("huey")), huey_exec(peers, work, n, k)?),
        (format!("pueue {} ({k} parallel tasks)", peers.version("pueue")), pueue_exec(peers, work, n, k)?),
    ])
}

/// How many of `k` started jobs ran again within `window` after a SIGKILL of each peer's
/// process group and a restart: `(label, re-runs)`.
pub fn crash(peers: &Peers, work: &Path, k: usize, window: Duration) -> Result<Vec<(String, usize)>, String> {
    let started = |dir: &Path| std::fs::read_to_string(dir.join("started")).map_or(0, |t| t.lines().count());
    let wait_started = |dir: &Path, n: usize, what: &str| -> Result<(), String> {
        let deadline = Instant::now() + START_LIMIT;
        while started(dir) < n {
            if Instant::now() > deadline {
                return Err(format!("{what}: {} of {n} jobs started within the start limit", started(dir)));
            }
            std::thread::yield_now();
        }
        Ok(())
    };
    // Counts starts beyond `before` for `window` (a window, not a wait for an event: what
    // is measured is that nothing happens).
    let reruns = |dir: &Path, before: usize| -> usize {
        std::thread::sleep(window);
        started(dir) - before
    };
    let mut out = Vec::new();

    // huey.
    let dir = huey_dir(work, "huey-crash")?;
    let mut first = huey_consumer(peers, &dir, k)?;
    huey_enqueue(peers, &dir, k, &["sh", "-c", NOTE_AND_SLEEP])?;
    wait_started(&dir, k, "huey")?;
    first.kill();
    let mut second = huey_consumer(peers, &dir, k)?;
    let n = reruns(&dir, k);
    second.kill();
    let _ = std::fs::remove_dir_all(&dir);
    out.push((String::from("huey"), n));

    // pueue.
    let dir = procs::fresh_dir(work, "pueue-crash")?;
    let config = pueue_config(&dir)?;
    let mut first = start_pueued(peers, &config, k)?;
    let job = format!("cd {} && {NOTE_AND_SLEEP}", dir.display());
    for _ in 0..k {
        pueue(peers, &config, &["add", "--", &job])?;
    }
    wait_started(&dir, k, "pueue")?;
    first.kill();
    let mut second = start_pueued(peers, &config, k)?;
    let n = reruns(&dir, k);
    let _ = pueue(peers, &config, &["kill", "--all"]);
    second.kill();
    let _ = std::fs::remove_dir_all(&dir);
    out.push((String::from("pueue"), n));
    Ok(out)
}
