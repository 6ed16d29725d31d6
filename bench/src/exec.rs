//! Section `exec`: running commands, homerd's main job. `--exec-jobs` jobs of
//! `exec -- true`, `--exec-concurrency` at a time, from the start of `homerd enqueue
//! --from` against an idle daemon to its last `job.completed`, and the CPU the daemon's
//! whole process tree spent on them (the daemon, its threads, every job shim and every
//! `true` it reaped).
//!
//! The baseline is the floor of starting those processes on this machine: a loop of this
//! binary (`__spawn N K`, a process of its own) that keeps K `true`s running, each started
//! by `std::process::Command` and reaped, N in all, timed the same way and its CPU read
//! the same way (wait4's rusage of the loop, which reaped every child). Runs alternate,
//! so drift hits both alike.
//!
//! With `--peers` the same workload runs against pueue and huey (`peers.rs`), then
//! [`PEER_NOOP_JOBS`] no-op jobs against huey, timed alike, and a crash check.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::procs::{self, Daemon};
use crate::report::{thousands, Summary, Unit};
use crate::sections::{enqueue_lines, migrate, progress, remove, Ctx, START_LIMIT};

/// One measured run: jobs per second and CPU milliseconds per job.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    pub per_sec: f64,
    pub cpu_ms_per_job: f64,
}

pub fn exec(ctx: &mut Ctx<'_>) -> Result<(), String> {
    let o = ctx.o;
    let (n, k) = (o.exec_jobs, o.exec_concurrency);
    progress(format!("exec: {} × `exec -- true`, {k} at a time, {} runs", thousands(n as u64), o.runs));
    let (mut daemon, mut floor) = (Vec::new(), Vec::new());
    let mut peer_runs: Vec<(String, Vec<Run>)> = Vec::new();
    for run in 1..=o.runs {
        daemon.push(exec_daemon(ctx, n, k)?);
        floor.push(spawn_floor(n, k)?);
        if let Some(peers) = &o.peers {
            for (i, (label, r)) in crate::peers::exec_once(peers, &o.work, n, k)?.into_iter().enumerate() {
                say_run(run, o.runs, &[(&label, &r)]);
                match peer_runs.get_mut(i) {
                    Some((_, runs)) => runs.push(r),
                    None => peer_runs.push((label, vec![r])),
                }
            }
        }
        say_run(run, o.runs, &[("homerd", &daemon[run - 1]), ("bare spawn loop", &floor[run - 1])]);
    }
    let (rate, cpu) = (label_rate(n, k), "CPU per exec job (daemon's process tree)");
    rows(ctx, [&rate, cpu], &daemon, ["bare spawn + reap loop", "bare spawn + reap loop, per process"], &floor);
    for (label, runs) in &peer_runs {
        rows(ctx, [&rate, cpu], &daemon, [label, label], runs);
    }
    if let Some(peers) = &o.peers {
        noop_against_huey(ctx, peers, k)?;
    }
    if let Some(peers) = &o.peers {
        let window = Duration::from_secs(5);
        let found = crate::peers::crash(peers, &o.work, k, window)?;
        let said: Vec<String> = found.iter().map(|(name, n)| format!("{name} re-ran {n} of {k}")).collect();
        ctx.report.note(format!(
            "crash: {k} jobs running, the runner's process group killed with SIGKILL, the runner started again on the \
             same state, any re-run watched for {} s: {} (homerd re-runs all of them: the restart section)",
            window.as_secs(),
            said.join(", ")
        ));
    }
    if !peer_runs.is_empty() {
        ctx.report.note(
            "peers: huey from the start of the Python process that enqueues every task to its return from the last \
             result (tasks run their argv with subprocess.run); pueue from the first `pueue add -- true` (one client \
             process per task, its only way to add) to `pueue wait` returning; their CPU is the runner's whole life \
             from wait4 (huey_consumer with its process workers and their children; pueued without the clients). \
             Neither holds a start until its identity is recorded, fences a stale worker or re-runs what a crash \
             interrupted: huey acknowledges a task when it dequeues it, pueue marks interrupted tasks failed",
        );
    }
    ctx.report.note(format!(
        "exec: from the start of `homerd enqueue --from` ({n} lines, one transaction) against an idle daemon \
         (concurrency {k}, lane cap {k}) to its last job.completed; CPU = user + system time of the daemon and \
         every descendant it reaped, over its whole life (wait4), start-up and drain included; every job runs held through `homerd-shim`, in its own process \
         group, its identity recorded before release, its output captured to run logs"
    ));
    Ok(())
}

/// No-op jobs (homerd's `noop` kind, a huey task that returns at once), [`PEER_NOOP_JOBS`]
/// of them `k` at a time, timed alike from the enqueue's start to the last job done;
/// runs alternate. pueue is left out: every task it runs is a process.
fn noop_against_huey(ctx: &mut Ctx<'_>, peers: &crate::peers::Peers, k: usize) -> Result<(), String> {
    let o = ctx.o;
    let n = PEER_NOOP_JOBS;
    progress(format!("exec: {} no-op jobs, {k} at a time, homerd and huey, {} runs", thousands(n as u64), o.runs));
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for run in 1..=o.runs {
        ours.push(enqueue_to_done(o, n, k, r#"{"kind":"noop"}"#)?);
        theirs.push(crate::peers::huey_noop(peers, &o.work, n, k)?);
        say_run(run, o.runs, &[("no-op, homerd", &ours[run - 1]), ("no-op, huey", &theirs[run - 1])]);
    }
    let huey = format!("huey {} (SqliteHuey, {k} process workers)", peers.version("huey"));
    let figure = format!("{} × no-op, {k} at a time, enqueue → all done", thousands(n as u64));
    rows(ctx, [&figure, "CPU per no-op job (the runner's process tree)"], &ours, [&huey, &huey], &theirs);
    ctx.report.note(format!(
        "no-op against huey: {} jobs of homerd's `noop` kind and {} huey tasks that return at once, {k} at a time \
         (homerd: concurrency and lane cap {k}; huey: {k} process workers), each timed as the exec row is, from \
         the start of the enqueue to the last job done; pueue is not run (each of its tasks is a process)",
        thousands(n as u64),
        thousands(n as u64)
    ));
    Ok(())
}

/// A progress line for run `run` of `runs`: each labelled run's jobs/s and CPU per job.
fn say_run(run: usize, runs: usize, said: &[(&str, &Run)]) {
    let parts: Vec<String> = said
        .iter()
        .map(|(label, r)| format!("{label} {:.0} jobs/s, {:.3} ms CPU/job", r.per_sec, r.cpu_ms_per_job))
        .collect();
    progress(format!("exec: run {run}/{runs}: {}", parts.join("; ")));
}

/// Two rows of medians: `ours` runs' jobs/s beside `theirs` (figure and baseline named by
/// the first of each pair), then their CPU per job (the second).
fn rows(ctx: &mut Ctx<'_>, figures: [&str; 2], ours: &[Run], baselines: [&str; 2], theirs: &[Run]) {
    let pick = |v: &[Run], f: fn(&Run) -> f64| Summary::median(&v.iter().map(f).collect::<Vec<_>>());
    ctx.report.row(figures[0], Unit::JobsPerSec, pick(ours, |r| r.per_sec), baselines[0], pick(theirs, |r| r.per_sec));
    ctx.report.row(
        figures[1],
        Unit::Ms,
        pick(ours, |r| r.cpu_ms_per_job),
        baselines[1],
        pick(theirs, |r| r.cpu_ms_per_job),
    );
}

/// How many no-op jobs [`noop_against_huey`] runs each time.
const PEER_NOOP_JOBS: usize = 20_000;

fn label_rate(n: usize, k: usize) -> String {
    format!("{} × exec true, {k} at a time", thousands(n as u64))
}

fn exec_daemon(ctx: &mut Ctx<'_>, n: usize, k: usize) -> Result<Run, String> {
    enqueue_to_done(ctx.o, n, k, r#"{"kind":"exec","args":["true"]}"#)
}

/// One homerd run of `n` jobs of `line` (an `enqueue --from` line), `k` at a time, timed
/// from the start of `homerd enqueue --from` against an idle daemon to its last
/// `job.completed`, with the CPU of the daemon's process tree over its whole life.
pub fn enqueue_to_done(o: &crate::Options, n: usize, k: usize, line: &str) -> Result<Run, String> {
    let home = procs::fresh_dir(&o.work, "enqueue-to-done")?;
    migrate(o, &home)?;
    let sets = vec![format!("concurrency={k}"), format!("lanes.default.concurrency={k}")];
    let mut d = Daemon::start(&o.homerd, &home, &sets)?;
    d.wait_for(Instant::now() + START_LIMIT, "daemon.active", |e| e.name == "daemon.active")?;
    let t0 = Instant::now();
    let line = line.to_owned();
    // The enqueue runs on a thread so the daemon's events are read while it commits.
    let (opts, dir) = (o.clone(), home.clone());
    let enqueuer = std::thread::spawn(move || enqueue_lines(&opts, &dir, std::iter::repeat_n(line, n)));
    let last = d.wait_count(t0 + START_LIMIT + Duration::from_millis(100 * n as u64), "job.completed", n)?;
    let elapsed = last.at.saturating_duration_since(t0);
    let queued = enqueuer.join().map_err(|_| String::from("the enqueue thread panicked"))??;
    if queued != n {
        return Err(format!("homerd enqueue --from queued {queued} jobs, not {n}"));
    }
    let cpu = d.stop(Duration::from_secs(30))?.cpu;
    remove(&home, o);
    Ok(Run {
        per_sec: n as f64 / elapsed.as_secs_f64().max(1e-6),
        cpu_ms_per_job: cpu.as_secs_f64() * 1000.0 / n as f64,
    })
}

/// The floor, in a process of its own so its CPU is its alone.
fn spawn_floor(n: usize, k: usize) -> Result<Run, String> {
    let (nn, kk) = (n.to_string(), k.to_string());
    let args: [&OsStr; 3] = ["__spawn".as_ref(), nn.as_ref(), kk.as_ref()];
    let (out, exit) = procs::run_self(&args, START_LIMIT + Duration::from_millis(100 * n as u64))?;
    let v: serde_json::Value = serde_json::from_str(out.trim()).map_err(|e| format!("__spawn output {out:?}: {e}"))?;
    let secs = v["seconds"].as_f64().unwrap_or(0.0).max(1e-6);
    Ok(Run { per_sec: n as f64 / secs, cpu_ms_per_job: exit.cpu.as_secs_f64() * 1000.0 / n as f64 })
}

/// `__spawn N K`: keeps K `true`s running until N have run, each spawned and reaped;
/// prints `{"seconds": S}`.
pub fn internal_spawn(args: &[String]) -> Result<(), String> {
    let [n, k] = args else { return Err(String::from("__spawn N K")) };
    let num = |s: &str| s.parse::<usize>().map_err(|_| format!("not a number: {s}"));
    let (n, k) = (num(n)?, num(k)?.max(1));
    let start = || {
        Command::new("true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start true: {e}"))
    };
    let t0 = Instant::now();
    let mut running: VecDeque<Child> = VecDeque::with_capacity(k);
    let mut started = 0;
    while started < n.min(k) {
        running.push_back(start()?);
        started += 1;
    }
    // Oldest first: each reaped child is replaced at once, so K stay running.
    while let Some(mut child) = running.pop_front() {
        let status = child.wait().map_err(|e| format!("wait: {e}"))?;
        if !status.success() {
            return Err(format!("true exited {status}"));
        }
        if started < n {
            running.push_back(start()?);
            started += 1;
        }
    }
    println!("{}", serde_json::json!({ "seconds": t0.elapsed().as_secs_f64() }));
    Ok(())
}
