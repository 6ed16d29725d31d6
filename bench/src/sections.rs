//! The measurements, one function per section of the report. Each runs the real
//! `homerd` (release) in a fresh home under the work directory and its baseline on the
//! same disk, interleaved run by run so drift hits both alike.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::procs::{self, Daemon, Ev};
use crate::raw::{self, Sync};
use crate::report::{short, thousands, Report, Summary, Unit};
use crate::Options;
use homer_testkit::{Parse, Stream};

pub const ALL: &[&str] = &["throughput", "exec", "restart", "latency", "recovery"];

/// A deadline for things that take well under a second when all is well.
pub(crate) const START_LIMIT: Duration = Duration::from_secs(60);

pub struct Ctx<'a> {
    pub o: &'a Options,
    pub report: &'a mut Report,
    /// The bare single-job loop's peak RSS (the footprint baseline), once measured.
    pub raw_peak_rss: Option<Summary>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(crate) fn progress(msg: impl AsRef<str>) {
    eprintln!("homer-bench: {}", msg.as_ref());
}

/// `homerd migrate` in `home`: a database with the real schema, nothing else.
pub(crate) fn migrate(o: &Options, home: &Path) -> Result<PathBuf, String> {
    procs::output(procs::homerd(&o.homerd, home, &[]).arg("migrate"))?;
    Ok(home.join("homer.db"))
}

/// Enqueues `lines` (JSON job lines) with `homerd enqueue --from`, in files of at most
/// 100,000 jobs (its limit per transaction).
pub(crate) fn enqueue_lines(o: &Options, home: &Path, lines: impl Iterator<Item = String>) -> Result<usize, String> {
    let file = home.join("jobs.jsonl");
    let mut total = 0;
    let mut lines = lines.peekable();
    while lines.peek().is_some() {
        let chunk: Vec<String> = lines.by_ref().take(100_000).collect();
        let mut text = chunk.join("\n");
        text.push('\n');
        std::fs::write(&file, text).map_err(|e| format!("{}: {e}", file.display()))?;
        let out = procs::output(procs::homerd(&o.homerd, home, &[]).arg("enqueue").arg("--from").arg(&file))?;
        total += out.lines().count();
    }
    let _ = std::fs::remove_file(&file);
    Ok(total)
}

fn open_read(db: &Path) -> Result<rusqlite::Connection, String> {
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    rusqlite::Connection::open_with_flags(db, flags).map_err(|e| format!("{}: {e}", db.display()))
}

// ---------------------------------------------------------------------------------------
// 1. Throughput (and 5. peak RSS)

/// The raw loops: (label, jobs per transaction, synchronous). The first is also the
/// footprint baseline; "homerd's sync" is the daemon's own durability (claims NORMAL,
/// outcomes FULL), the like-for-like the goals are judged against.
const LOOPS: &[(&str, u32, Sync)] = &[
    ("raw 1 job/tx, NORMAL", 1, Sync::Normal),
    ("raw 1 job/tx, FULL", 1, Sync::Full),
    ("raw 1 job/tx, homerd's sync", 1, Sync::Daemon),
    ("raw 32 jobs/tx, NORMAL", 32, Sync::Normal),
    ("raw 32 jobs/tx, FULL", 32, Sync::Full),
    ("raw 32 jobs/tx, homerd's sync", 32, Sync::Daemon),
];

/// The schema baseline: the batched loop at homerd's sync on the minimal queue
/// (`raw::MINIMAL_SCHEMA`), shown beside the same loop on homerd's schema (`LOOPS[5]`).
const MINIMAL_LOOP: (&str, u32, Sync) = ("minimal schema, 32 jobs/tx, homerd's sync", 32, Sync::Daemon);

/// How many jobs the wide daemon runs at once: the default `claim_batch`, so its claims
/// can be as large as the batched loop's transactions.
const WIDE: u32 = 32;

/// The two daemon configurations: (figure, `--set` overrides, the loops it is shown
/// beside — the ones with as many jobs per transaction as it can claim at once).
fn daemon_configs() -> [(String, Vec<String>, std::ops::Range<usize>); 2] {
    [
        (String::from("throughput, defaults (1 at a time)"), Vec::new(), 0..3),
        (
            format!("throughput, {WIDE} at a time"),
            vec![format!("concurrency={WIDE}"), format!("lanes.default.concurrency={WIDE}")],
            3..6,
        ),
    ]
}

pub fn throughput(ctx: &mut Ctx<'_>) -> Result<(), String> {
    let o = ctx.o;
    progress(format!("throughput: enqueueing {} no-op jobs", thousands(o.jobs)));
    let template_home = procs::fresh_dir(&o.work, "queue-template")?;
    let template = migrate(o, &template_home)?;
    let n = enqueue_lines(o, &template_home, (0..o.jobs).map(|_| String::from(r#"{"kind":"noop"}"#)))?;
    if n as u64 != o.jobs {
        return Err(format!("enqueued {n} jobs, not {}", o.jobs));
    }
    let configs = daemon_configs();
    let mut daemon_rates: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    let mut daemon_jobs: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    let mut daemon_peaks = Vec::new();
    let mut loop_rates: Vec<Vec<f64>> = vec![Vec::new(); LOOPS.len()];
    let mut loop_peaks: Vec<Vec<f64>> = vec![Vec::new(); LOOPS.len()];
    let mut minimal_rates = Vec::new();
    for run in 1..=o.runs {
        for (i, (figure, sets, _)) in configs.iter().enumerate() {
            let (rate, jobs, peak) = throughput_daemon(o, &template, sets)?;
            progress(format!(
                "throughput run {run}/{}: homerd, {figure}: {} jobs/s ({} jobs), peak RSS {} MiB",
                o.runs,
                thousands(rate as u64),
                thousands(jobs),
                Unit::Bytes.format(peak)
            ));
            daemon_rates[i].push(rate);
            daemon_jobs[i].push(jobs as f64);
            daemon_peaks.push(peak);
        }
        for (i, (label, batch, sync)) in LOOPS.iter().enumerate() {
            let (rate, jobs, peak) = throughput_raw(o, &template, *batch, *sync)?;
            progress(format!(
                "throughput run {run}/{}: {label}: {} jobs/s ({} jobs)",
                o.runs,
                thousands(rate as u64),
                thousands(jobs)
            ));
            loop_rates[i].push(rate);
            loop_peaks[i].push(peak);
        }
        let (rate, jobs) = throughput_minimal(o)?;
        progress(format!(
            "throughput run {run}/{}: {}: {} jobs/s ({} jobs)",
            o.runs,
            MINIMAL_LOOP.0,
            thousands(rate as u64),
            thousands(jobs)
        ));
        minimal_rates.push(rate);
    }
    for (i, (figure, _, loops)) in configs.iter().enumerate() {
        for l in loops.clone() {
            let ours = Summary::median(&daemon_rates[i]);
            ctx.report.row(figure, Unit::JobsPerSec, ours, LOOPS[l].0, Summary::median(&loop_rates[l]));
        }
    }
    ctx.report.row(
        &format!("schema: {}", LOOPS[5].0),
        Unit::JobsPerSec,
        Summary::median(&loop_rates[5]),
        MINIMAL_LOOP.0,
        Summary::median(&minimal_rates),
    );
    let raw_peak = Summary::median(&loop_peaks[0]);
    ctx.report.row(
        "peak RSS during throughput",
        Unit::Bytes,
        Summary::median(&daemon_peaks),
        &format!("{} peak", LOOPS[0].0),
        raw_peak.clone(),
    );
    ctx.raw_peak_rss = Some(raw_peak);
    ctx.report.note(format!(
        "throughput: {} no-op jobs bulk-enqueued (homerd enqueue --from) in one lane, then `homerd run`: with the \
         defaults (lane concurrency 1: one job at a time), and with --set concurrency={WIDE} --set \
         lanes.default.concurrency={WIDE}; claims are committed with synchronous=NORMAL, outcomes with FULL (the \
         default durability); jobs/s from the first claim to the last completion recorded in job_runs; every \
         measurement stops at {} jobs or {} s, whichever comes first (homerd did a median of {} and {} jobs); {} \
         runs, each on a fresh copy of the same database; peak RSS over both configurations",
        thousands(o.jobs),
        thousands(o.jobs),
        o.time_box.as_secs(),
        thousands(Summary::median(&daemon_jobs[0]).value as u64),
        thousands(Summary::median(&daemon_jobs[1]).value as u64),
        o.runs
    ));
    ctx.report.note(
        "raw loops: one process running rusqlite with the daemon's statements and writes per job (a claim \
         transaction: mark running + job_runs row; an outcome transaction: job completed + run ended), statements \
         prepared once, no epoch check, no events, no threads; 1 or 32 jobs per transaction; NORMAL/FULL: every \
         transaction at that level; homerd's sync: claims NORMAL, outcomes FULL, switched per transaction as \
         homerd's writer does",
    );
    ctx.report.note(
        "schema: the batched loop at homerd's sync on homerd's schema (job_queue and job_runs with their indexes) \
         beside the same loop on a minimal queue made for it (one jobs table with the columns a fenced claim and \
         an outcome write, the one partial index a claim reads, no trigger, no run rows), filled with as many \
         no-op jobs: what homerd's schema costs over the least a queue can keep",
    );
    let rate = |i: usize| Summary::median(&loop_rates[i]).value;
    let minimal = Summary::median(&minimal_rates).value;
    ctx.report.goal(
        "raw loop on homerd's schema >= 50% of the minimal-schema loop",
        rate(5) >= 0.5 * minimal,
        format!(
            "{:.0}% ({} against {} jobs/s)",
            100.0 * rate(5) / minimal,
            thousands(rate(5) as u64),
            thousands(minimal as u64)
        ),
    );
    let (serial, wide) = (Summary::median(&daemon_rates[0]).value, Summary::median(&daemon_rates[1]).value);
    // Judged on the wide run against the loops that promise what homerd promises (outcomes
    // durable across power loss); the others are shown for scale.
    ctx.report.goal(
        "throughput >= 80% of the raw batched loop",
        wide >= 0.8 * rate(5),
        format!(
            "{WIDE} at a time: {:.0}% of {} ({:.0}% of its FULL, {:.0}% of its NORMAL variant)",
            100.0 * wide / rate(5),
            LOOPS[5].0,
            100.0 * wide / rate(4),
            100.0 * wide / rate(3)
        ),
    );
    ctx.report.goal(
        "throughput above the raw single-job loop",
        wide > rate(2),
        format!(
            "{WIDE} at a time: {:.2}x {}; defaults (1 at a time): {:.2}x",
            wide / rate(2),
            LOOPS[2].0,
            serial / rate(2)
        ),
    );
    remove(&template_home, o);
    Ok(())
}

/// One `homerd run` over a fresh copy of the queue: (jobs/s, jobs done, peak RSS bytes).
fn throughput_daemon(o: &Options, template: &Path, sets: &[String]) -> Result<(f64, u64, f64), String> {
    let home = procs::fresh_dir(&o.work, "throughput-homerd")?;
    let db = home.join("homer.db");
    procs::copy_db(template, &db)?;
    let mut d = Daemon::start(&o.homerd, &home, sets)?;
    d.wait_for(Instant::now() + START_LIMIT, "daemon.active", |e| e.name == "daemon.active")?;
    let deadline = Instant::now() + o.time_box;
    let mut done = 0u64;
    // Time-boxed: a timeout here ends the measurement, it is not an error.
    let _ = d.wait_for(deadline, "the last job.completed", |e| {
        done += u64::from(e.name == "job.completed");
        done == o.jobs
    });
    let exit = d.stop(Duration::from_secs(30))?;
    let conn = open_read(&db)?;
    let (count, first, last): (i64, Option<i64>, Option<i64>) = conn
        .query_row(
            "SELECT COUNT(*), MIN(started_at), MAX(ended_at) FROM job_runs WHERE outcome = 'completed'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .map_err(|e| format!("job_runs: {e}"))?;
    let other: i64 = conn
        .query_row("SELECT COUNT(*) FROM job_runs WHERE outcome IS NOT NULL AND outcome != 'completed'", [], |r| {
            r.get(0)
        })
        .map_err(|e| format!("job_runs: {e}"))?;
    if other > 0 {
        return Err(format!("{other} no-op runs did not complete in the throughput run"));
    }
    drop(conn);
    let (Some(first), Some(last)) = (first, last) else {
        return Err(String::from("homerd completed no job in the throughput run"));
    };
    let secs = ((last - first).max(1)) as f64 / 1000.0;
    remove(&home, o);
    Ok((count as f64 / secs, count as u64, exit.max_rss_bytes as f64))
}

/// One raw loop (a process of its own) over a fresh copy: (jobs/s, jobs, peak RSS).
fn throughput_raw(o: &Options, template: &Path, batch: u32, sync: Sync) -> Result<(f64, u64, f64), String> {
    let dir = procs::fresh_dir(&o.work, "throughput-raw")?;
    let db = dir.join("homer.db");
    procs::copy_db(template, &db)?;
    let (b, m, t) = (batch.to_string(), o.jobs.to_string(), o.time_box.as_millis().to_string());
    let args: [&OsStr; 6] =
        ["__loop".as_ref(), db.as_os_str(), b.as_ref(), sync.as_str().as_ref(), m.as_ref(), t.as_ref()];
    let (out, exit) = procs::run_self(&args, o.time_box + START_LIMIT)?;
    let v: serde_json::Value = serde_json::from_str(out.trim()).map_err(|e| format!("__loop output {out:?}: {e}"))?;
    let jobs = v["jobs"].as_u64().unwrap_or(0);
    let secs = v["seconds"].as_f64().unwrap_or(0.0).max(1e-6);
    remove(&dir, o);
    Ok((jobs as f64 / secs, jobs, exit.max_rss_bytes as f64))
}

/// The minimal-schema loop (a process of its own) over a minimal queue of `o.jobs` no-op
/// jobs built for it: (jobs/s, jobs).
fn throughput_minimal(o: &Options) -> Result<(f64, u64), String> {
    let dir = procs::fresh_dir(&o.work, "throughput-minimal")?;
    let db = dir.join("minimal.db");
    raw::build_minimal_db(&db, o.jobs)?;
    let (_, batch, sync) = MINIMAL_LOOP;
    let (b, m, t) = (batch.to_string(), o.jobs.to_string(), o.time_box.as_millis().to_string());
    let args: [&OsStr; 7] = [
        "__loop".as_ref(),
        db.as_os_str(),
        b.as_ref(),
        sync.as_str().as_ref(),
        m.as_ref(),
        t.as_ref(),
        raw::Schema::Minimal.as_str().as_ref(),
    ];
    let (out, _) = procs::run_self(&args, o.time_box + START_LIMIT)?;
    let v: serde_json::Value = serde_json::from_str(out.trim()).map_err(|e| format!("__loop output {out:?}: {e}"))?;
    let jobs = v["jobs"].as_u64().unwrap_or(0);
    let secs = v["seconds"].as_f64().unwrap_or(0.0).max(1e-6);
    remove(&dir, o);
    Ok((jobs as f64 / secs, jobs))
}

// ---------------------------------------------------------------------------------------
// 2. kill -9 to re-run

pub fn restart(ctx: &mut Ctx<'_>) -> Result<(), String> {
    let o = ctx.o;
    let k = o.restart_jobs;
    progress(format!("restart: {} rounds of kill -9 with {k} running `exec -- sleep 60` jobs", o.rounds));
    let home = procs::fresh_dir(&o.work, "restart")?;
    migrate(o, &home)?;
    // Enough attempts for every round: each kill -9 costs the orphans one.
    let line = format!(r#"{{"kind":"exec","args":["sleep","60"],"max_attempts":{}}}"#, o.rounds + 10);
    enqueue_lines(o, &home, std::iter::repeat_n(line, k))?;
    // K jobs at once: the defaults run 4 (and 1 per lane).
    let sets = vec![format!("concurrency={k}"), format!("lanes.default.concurrency={k}")];
    let mut d = Daemon::start(&o.homerd, &home, &sets)?;
    d.wait_count(Instant::now() + START_LIMIT, "job.started", k)?;
    let (mut total, mut reaped, mut locked, mut recovered, mut active) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 1..=o.rounds {
        let t0 = Instant::now();
        d.proc.signal(libc::SIGKILL);
        d.proc.wait_exit(START_LIMIT).ok_or("the killed homerd was not reaped")?;
        // A supervisor restarts once it has seen the exit: the new start follows the reap.
        reaped.push(ms(t0.elapsed()));
        let mut next = Daemon::start(&o.homerd, &home, &sets)?;
        let deadline = Instant::now() + START_LIMIT;
        let lock = next.wait_for(deadline, "lock.acquired", |e| e.name == "lock.acquired" || e.name == "lock.busy")?;
        if lock.name == "lock.busy" {
            return Err(format!(
                "round {round}: the new homerd found the lock still held after the reap: {}",
                lock.text()
            ));
        }
        locked.push(ms(lock.at - t0));
        let rec = next.wait_for(deadline, "jobs.recovered", |e| e.name == "jobs.recovered")?;
        let count = rec.field_i64("count").unwrap_or(-1);
        if count != k as i64 {
            return Err(format!("round {round}: {count} jobs recovered, not {k}: {}", rec.text()));
        }
        recovered.push(ms(rec.at - t0));
        let act = next.wait_for(deadline, "daemon.active", |e| e.name == "daemon.active")?;
        active.push(ms(act.at - t0));
        let last = next.wait_count(deadline, "job.started", k)?;
        total.push(ms(last.at - t0));
        progress(format!("restart round {round}/{}: {:.1} ms", o.rounds, ms(last.at - t0)));
        d = next;
    }
    // The last daemon stops gracefully; a second SIGTERM cuts the drain grace short, so
    // its `sleep` groups are stopped instead of waited for.
    d.stop(Duration::from_millis(500))?;
    drop(d);

    // The floors: a bare process holding the same lock file, killed the same way, and a
    // new one taking the flock over; and the same with the new one also starting k
    // processes (what starting the jobs costs on this machine, with no shim, no records).
    let lock_path = home.join("homer.lock");
    let floor = flock_floor(o, &lock_path, 0)?;
    let spawn_floor = flock_floor(o, &lock_path, k)?;

    let figure = format!("kill -9 → all {k} jobs running again");
    for (p, stat) in [(50.0, "p50"), (95.0, "p95")] {
        let ours = Summary::percentile(&total, p, stat);
        ctx.report.row(
            &figure,
            Unit::Ms,
            ours.clone(),
            &format!("bare process re-taking the flock, {stat}"),
            Summary::percentile(&floor, p, stat),
        );
        ctx.report.row(
            &figure,
            Unit::Ms,
            ours,
            &format!("same + spawning {k} × sleep, {stat}"),
            Summary::percentile(&spawn_floor, p, stat),
        );
    }
    let med = |v: &[f64]| Unit::Ms.format(Summary::median(v).value);
    ctx.report.note(format!(
        "kill -9: {} rounds; homerd runs {k} `exec -- sleep 60` jobs (--set concurrency={k} \
         --set lanes.default.concurrency={k}; everything else default); from the instant before kill(SIGKILL) \
         to the {k}th job.started of the next daemon, which is started as soon as the killed one is reaped; \
         medians from the kill: reaped {} ms, lock.acquired {} ms, jobs.recovered {} ms, daemon.active {} ms, \
         all running {} ms; max {} ms (floors' max {} and {} ms); floors: a bare process holding the lock file \
         (and, second, {k} `sleep 60` children in its process group) killed with SIGKILL to its group, reaped, \
         and a new one started that takes the flock (blocking) and starts its children before saying so",
        o.rounds,
        med(&reaped),
        med(&locked),
        med(&recovered),
        med(&active),
        med(&total),
        Unit::Ms.format(Summary::median(&total).max),
        Unit::Ms.format(Summary::median(&floor).max),
        Unit::Ms.format(Summary::median(&spawn_floor).max),
    ));
    let p95 = Summary::percentile(&total, 95.0, "p95").value;
    ctx.report.goal("kill -9 to re-run p95 < 250 ms", p95 < 250.0, format!("p95 {} ms", Unit::Ms.format(p95)));
    remove(&home, o);
    Ok(())
}

/// Rounds of: SIGKILL a bare lock holder's process group, reap it, start a new holder
/// (with `children` sleeping children) and read its "locked". Milliseconds per round.
fn flock_floor(o: &Options, lock_path: &Path, children: usize) -> Result<Vec<f64>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the bench binary: {e}"))?;
    let hold = || -> Result<(procs::Proc, BufReader<std::process::ChildStdout>), String> {
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg("__hold-lock").arg(lock_path).arg(children.to_string());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let (p, out) = procs::spawn_piped(&mut cmd, "homer-bench __hold-lock")?;
        let mut out = BufReader::new(out);
        let mut line = String::new();
        out.read_line(&mut line).map_err(|e| format!("__hold-lock: {e}"))?;
        if line.trim() != "locked" {
            return Err(format!("__hold-lock said {line:?}"));
        }
        Ok((p, out))
    };
    let mut holder = hold()?;
    let mut rounds = Vec::with_capacity(o.rounds);
    for _ in 0..o.rounds {
        let t0 = Instant::now();
        holder.0.signal_group(libc::SIGKILL);
        holder.0.wait_exit(START_LIMIT).ok_or("the killed lock holder was not reaped")?;
        holder = hold()?;
        rounds.push(ms(t0.elapsed()));
    }
    holder.0.signal_group(libc::SIGKILL);
    holder.0.kill();
    Ok(rounds)
}

// ---------------------------------------------------------------------------------------
// 3. Enqueue-to-start (and 5. idle RSS)

pub fn latency(ctx: &mut Ctx<'_>) -> Result<(), String> {
    let o = ctx.o;
    let n = o.latency_jobs;
    progress(format!("latency: {n} × `homerd enqueue noop` against an idle daemon"));
    let home = procs::fresh_dir(&o.work, "latency")?;
    migrate(o, &home)?;
    let raw_home = procs::fresh_dir(&o.work, "latency-raw")?;
    let raw_db = migrate(o, &raw_home)?;
    let mut d = Daemon::start(&o.homerd, &home, &[])?;
    d.wait_for(Instant::now() + START_LIMIT, "daemon.active", |e| e.name == "daemon.active")?;
    let fresh_rss = procs::rss_bytes(d.proc.pid());
    let (mut to_claim, mut cli) = (Vec::new(), Vec::new());
    for i in 0..n {
        let mut cmd = procs::homerd(&o.homerd, &home, &[]);
        cmd.args(["enqueue", "noop"]);
        let sender = d.sender();
        let t0 = Instant::now();
        std::thread::spawn(move || {
            let line = match procs::output(&mut cmd) {
                Ok(out) => out.trim().to_owned(),
                Err(e) => format!("error: {e}"),
            };
            sender.send(Ev {
                name: String::from("bench.enqueued"),
                ..Ev::new(Stream::Stdout, line.into_bytes(), Parse::None)
            });
        });
        let deadline = Instant::now() + START_LIMIT;
        let (mut claimed, mut enqueued, mut completed): (Option<Ev>, Option<Ev>, Option<i64>) = (None, None, None);
        while claimed.is_none() || enqueued.is_none() || completed.is_none() {
            let ev = d.wait_for(deadline, "job.claimed, job.completed and the enqueue's exit", |e| {
                matches!(e.name.as_str(), "job.claimed" | "job.completed" | "bench.enqueued")
            })?;
            match ev.name.as_str() {
                "job.claimed" => claimed = Some(ev),
                "job.completed" => completed = ev.field_i64("job_id"),
                _ => enqueued = Some(ev),
            }
        }
        let (claimed, enqueued) = (claimed.expect("seen"), enqueued.expect("seen"));
        let id: i64 = enqueued.text().parse().map_err(|_| format!("homerd enqueue: {}", enqueued.text()))?;
        if claimed.field_i64("job_id") != Some(id) || completed != Some(id) {
            return Err(format!("job {id} was enqueued but the daemon claimed: {}", claimed.text()));
        }
        to_claim.push(ms(claimed.at - t0));
        cli.push(ms(enqueued.at - t0));
        if (i + 1) % 50 == 0 {
            progress(format!("latency: {}/{n}", i + 1));
        }
    }
    let idle_rss = procs::rss_bytes(d.proc.pid());
    d.stop(Duration::from_secs(30))?;
    drop(d);
    let floor = raw::notice_latency(&raw_db, n)?;

    let figure = "enqueue → job.claimed, idle daemon";
    for (p, stat) in [(50.0, "p50"), (99.0, "p99")] {
        ctx.report.row(
            figure,
            Unit::Ms,
            Summary::percentile(&to_claim, p, stat),
            &format!("raw FULL insert → data_version, {stat}"),
            Summary::percentile(&floor, p, stat),
        );
    }
    ctx.report.note(format!(
        "enqueue-to-start: {n} jobs one after another, each from spawning `homerd enqueue noop` (a new process: \
         exec, validation, a FULL commit) to reading the daemon's job.claimed; the CLI itself took a median of {} ms \
         to exit; the CLI pokes the daemon's wake-up socket after its commit (the daemon's 10 ms data_version poll is the fallback); baseline: the same insert committed FULL by one \
         rusqlite connection, seen by a second one polling data_version in a tight loop (no process start)",
        Unit::Ms.format(Summary::median(&cli).value)
    ));
    let p99 = Summary::percentile(&to_claim, 99.0, "p99").value;
    ctx.report.goal("enqueue-to-start p99 < 50 ms", p99 < 50.0, format!("p99 {} ms", Unit::Ms.format(p99)));

    let raw_peak = ctx.raw_peak_rss.clone();
    match (idle_rss, raw_peak) {
        (Some(idle), Some(base)) => {
            ctx.report.row("idle RSS", Unit::Bytes, Summary::median(&[idle as f64]), &base_label(), base);
        }
        (Some(_), None) => ctx.report.note("idle RSS: no baseline (the throughput section did not run)"),
        (None, _) => ctx.report.note("idle RSS: not available on this platform"),
    }
    if let Some(idle) = idle_rss {
        let fresh = fresh_rss.map_or(String::from("n/a"), |b| format!("{} MiB", Unit::Bytes.format(b as f64)));
        ctx.report.note(format!(
            "idle RSS: the daemon after the {n} enqueue-to-start jobs, idle ({} right after daemon.active); \
             /proc/PID/status VmRSS on Linux, ps on macOS; peak RSS is the child's ru_maxrss from wait4",
            fresh
        ));
        ctx.report.goal(
            "idle RSS < 16 MiB",
            idle < 16 * 1024 * 1024,
            format!("{} MiB idle", Unit::Bytes.format(idle as f64)),
        );
    }
    remove(&home, o);
    remove(&raw_home, o);
    Ok(())
}

fn base_label() -> String {
    format!("{} peak", LOOPS[0].0)
}

// ---------------------------------------------------------------------------------------
// 4. Recovery at scale

pub fn recovery(ctx: &mut Ctx<'_>) -> Result<(), String> {
    let o = ctx.o;
    progress(format!("recovery: building {} rows, {} of them orphaned", thousands(o.rows), thousands(o.orphans)));
    let template_home = procs::fresh_dir(&o.work, "recovery-template")?;
    let template = migrate(o, &template_home)?;
    let built = Instant::now();
    raw::build_recovery_db(&template, o.rows, o.orphans)?;
    let size = std::fs::metadata(&template).map(|m| m.len()).unwrap_or(0);
    progress(format!(
        "recovery: built in {:.1} s ({} MiB)",
        built.elapsed().as_secs_f64(),
        Unit::Bytes.format(size as f64)
    ));
    for p in raw::explain(&template)? {
        ctx.report.plans.push((p.name.to_owned(), p.lines, p.indexed));
    }
    let (mut spawn_to, mut lock_to, mut bare) = (Vec::new(), Vec::new(), Vec::new());
    let (mut checked, mut bare_check) = (Vec::new(), Vec::new());
    for run in 1..=o.runs {
        let home = procs::fresh_dir(&o.work, "recovery-homerd")?;
        procs::copy_db(&template, &home.join("homer.db"))?;
        // database.checked is a DEBUG event.
        let mut d = Daemon::start(&o.homerd, &home, &[String::from("log_level=debug")])?;
        let deadline = Instant::now() + START_LIMIT;
        let check = d.wait_for(deadline, "database.checked", |e| e.name == "database.checked")?;
        checked.push(check.field_i64("ms").ok_or("database.checked without ms")? as f64);
        let lock = d.wait_for(deadline, "lock.acquired", |e| e.name == "lock.acquired")?;
        let rec = d.wait_for(deadline, "jobs.recovered", |e| e.name == "jobs.recovered")?;
        // Measured: what follows (the orphans' no-op re-runs) is not.
        d.proc.kill();
        let count = rec.field_i64("count").unwrap_or(-1);
        if count != o.orphans as i64 {
            return Err(format!("homerd recovered {count} jobs, not {}", o.orphans));
        }
        spawn_to.push(ms(rec.at - d.spawned_at));
        lock_to.push(ms(rec.at - lock.at));
        drop(d);
        remove(&home, o);

        let dir = procs::fresh_dir(&o.work, "recovery-raw")?;
        let db = dir.join("homer.db");
        procs::copy_db(&template, &db)?;
        bare_check.push(raw::quick_check(&db)?);
        let (t, n) = raw::recovery(&db)?;
        if n as u64 != o.orphans {
            return Err(format!("the bare recovery recovered {n} jobs, not {}", o.orphans));
        }
        bare.push(t);
        remove(&dir, o);
        progress(format!(
            "recovery run {run}/{}: homerd spawn→jobs.recovered {:.0} ms, bare transaction {:.0} ms",
            o.runs,
            spawn_to.last().copied().unwrap_or_default(),
            t
        ));
    }
    let figure = format!("{} orphans of {} rows", short(o.orphans), short(o.rows));
    let base = Summary::median(&bare);
    let label = "bare recovery transaction (FULL)";
    ctx.report.row(&format!("{figure}: spawn → recovered"), Unit::Ms, Summary::median(&spawn_to), label, base.clone());
    ctx.report.row(&format!("{figure}: lock → recovered"), Unit::Ms, Summary::median(&lock_to), label, base);
    ctx.report.note(format!(
        "recovery: {} job_queue rows (and one job_runs row each), the newest {} `running` under an older epoch with \
         an open run and no child recorded (a FIFO queue's running jobs are its latest claims), the rest completed \
         ({} MiB file, built with rusqlite on a `homerd migrate` database); homerd from spawn (and from its \
         lock.acquired) to its jobs.recovered event, then killed; baseline: the daemon's recovery statements in one \
         BEGIN IMMEDIATE ... COMMIT (FULL) on a copy of the same file; {} runs each",
        thousands(o.rows),
        thousands(o.orphans),
        Unit::Bytes.format(size as f64),
        o.runs
    ));
    ctx.report.row(
        &format!("start-up data check, {} jobs", short(o.rows)),
        Unit::Ms,
        Summary::median(&checked),
        "bare PRAGMA quick_check",
        Summary::median(&bare_check),
    );
    ctx.report.note(format!(
        "start-up data check: homerd reads every page of an existing database before it writes (PRAGMA \
         quick_check; its database.checked event's ms, part of spawn → recovered above); baseline: the pragma alone \
         on an immutable read-only connection to a copy of the same {} MiB file, page cache warm in both",
        Unit::Bytes.format(size as f64)
    ));
    let spawn_med = Summary::median(&spawn_to).value;
    ctx.report.goal(
        &format!("{} orphans recovered < 1 s", thousands(o.orphans)),
        spawn_med < 1000.0,
        format!("{} ms from spawn (median)", Unit::Ms.format(spawn_med)),
    );
    let scans: Vec<&str> = ctx.report.plans.iter().filter(|(_, _, i)| !i).map(|(n, _, _)| n.as_str()).collect();
    ctx.report.note(if scans.is_empty() {
        String::from("query plans: every claim, renewal, outcome and recovery statement searches an index")
    } else {
        format!("query plans: full table scans in {}", scans.join(", "))
    });
    remove(&template_home, o);
    Ok(())
}

pub(crate) fn remove(dir: &Path, o: &Options) {
    if !o.keep {
        let _ = std::fs::remove_dir_all(dir);
    }
}

// ---------------------------------------------------------------------------------------
// The machine

/// What the numbers were measured on.
pub fn machine(o: &Options) -> Vec<(String, String)> {
    let mut m = Vec::new();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .or_else(|| sysctl("machdep.cpu.brand_string"))
        .unwrap_or_else(|| String::from("unknown"));
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    m.push((String::from("cpu"), format!("{cpu}, {cores} cores available")));
    if let Some(mem) = memory_bytes() {
        m.push((String::from("memory"), format!("{:.1} GiB", mem as f64 / (1u64 << 30) as f64)));
    }
    m.push((String::from("os"), uname()));
    m.push((String::from("disk"), format!("{} ({})", o.work.display(), fs_type(&o.work))));
    m.push((String::from("sqlite"), rusqlite::version().to_owned()));
    let version = procs::output(std::process::Command::new(&o.homerd).arg("--version")).unwrap_or_default();
    m.push((String::from("homerd"), format!("{} ({})", version.trim(), o.homerd.display())));
    m
}

fn sysctl(name: &str) -> Option<String> {
    let out = std::process::Command::new("sysctl").args(["-n", name]).output().ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (!s.is_empty()).then_some(s)
}

fn memory_bytes() -> Option<u64> {
    if let Ok(info) = std::fs::read_to_string("/proc/meminfo") {
        let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
        return line["MemTotal:".len()..].trim().trim_end_matches("kB").trim().parse::<u64>().ok().map(|k| k * 1024);
    }
    sysctl("hw.memsize")?.parse().ok()
}

fn uname() -> String {
    let u = rustix::system::uname();
    let field = |f: &std::ffi::CStr| f.to_string_lossy().into_owned();
    format!("{} {} {}", field(u.sysname()), field(u.release()), field(u.machine()))
}

/// The filesystem under `dir` (fsync cost is most of what a queue pays).
#[cfg(target_os = "linux")]
fn fs_type(dir: &Path) -> String {
    let Ok(st) = rustix::fs::statfs(dir) else { return String::from("unknown") };
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
    let magic = st.f_type as i64;
    match magic {
        0xEF53 => String::from("ext4"),
        0x5846_5342 => String::from("xfs"),
        0x9123_683E => String::from("btrfs"),
        0x0102_1994 => String::from("tmpfs: no fsync cost, flatters every figure"),
        0x794C_7630 => String::from("overlayfs"),
        0x2FC1_2FC1 => String::from("zfs"),
        0x6969 => String::from("nfs"),
        other => format!("filesystem magic {other:#x}"),
    }
}

/// The filesystem under `dir` (fsync cost is most of what a queue pays).
#[cfg(not(target_os = "linux"))]
fn fs_type(dir: &Path) -> String {
    let Ok(st) = rustix::fs::statfs(dir) else { return String::from("unknown") };
    let bytes: Vec<u8> = st.f_fstypename.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}
