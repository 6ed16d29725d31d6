//! A cut point's (or template's) sandbox: the processes it starts, what they print, the
//! waits on them, and the teardown that kills them all.

use std::fmt::Write as _;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use homer_testkit::{read_lines, Line, LineSink, Parse, Stream};

use crate::procs;

use super::{Options, DAEMON_SETTINGS, POLL};

// Processes

#[derive(Default)]
pub(super) struct ProcState {
    pub(super) name: String,
    pub(super) pid: u32,
    pub(super) stdout: Vec<u8>,
    pub(super) stderr: Vec<u8>,
    /// Every JSON event on stderr: (name, its `job_id`, its `epoch`).
    pub(super) events: Vec<(String, Option<i64>, Option<i64>)>,
    pub(super) status: Option<ExitStatus>,
    pub(super) open_pipes: u8,
}

impl ProcState {
    pub(super) fn done(&self) -> bool {
        self.status.is_some() && self.open_pipes == 0
    }
}

#[derive(Default)]
pub(super) struct Shared {
    pub(super) procs: Mutex<Vec<ProcState>>,
    pub(super) changed: Condvar,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, Vec<ProcState>> {
        self.procs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `ready` answers or the deadline passes; re-asks every [`POLL`] (for
    /// conditions on the database, which does not notify).
    pub(super) fn wait_for<T>(&self, deadline: Instant, mut ready: impl FnMut(&[ProcState]) -> Option<T>) -> Option<T> {
        crate::watch::wait_until(self.lock(), &self.changed, deadline, POLL, |procs: &Vec<ProcState>| ready(procs))
    }
}

/// Records what one process prints: stdout and stderr as bytes, and each JSON event on
/// stderr as (name, its `job_id`, its `epoch`).
#[derive(Clone)]
struct Recorder {
    shared: Arc<Shared>,
    slot: usize,
}

impl LineSink for Recorder {
    fn line(&mut self, line: Line) -> bool {
        let mut st = self.shared.lock();
        let p = &mut st[self.slot];
        match line.stream {
            Stream::Stdout => p.stdout.extend_from_slice(&line.bytes),
            Stream::Stderr => {
                p.stderr.extend_from_slice(&line.bytes);
                if let Some(v) = line.json.as_ref().filter(|v| v.get("event").is_some_and(|e| e.is_string())) {
                    let field = |k: &str| v.get(k).and_then(|j| j.as_i64());
                    p.events.push((line.name.clone(), field("job_id"), field("epoch")));
                }
            }
        }
        drop(st);
        self.shared.changed.notify_all();
        true
    }

    fn closed(&mut self, _: Stream) {
        self.shared.lock()[self.slot].open_pipes -= 1;
        self.shared.changed.notify_all();
    }
}

/// Whether a process records, and whether it is armed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Recording {
    Off,
    On,
    Armed(u64),
}

/// One cut point's (or template's) sandbox and processes.
pub(super) struct Sandbox<'a> {
    pub(super) opts: &'a Options,
    pub(super) dir: tempfile::TempDir,
    pub(super) marker: String,
    pub(super) shared: Arc<Shared>,
    pub(super) threads: Vec<JoinHandle<()>>,
    /// (pid, workload process index) of every recording process.
    pub(super) indexes: Vec<(u32, usize)>,
}

impl<'a> Sandbox<'a> {
    pub(super) fn new(opts: &'a Options, label: &str) -> Result<Sandbox<'a>, String> {
        let base = opts.sandbox_base.clone().unwrap_or_else(std::env::temp_dir);
        let dir = tempfile::Builder::new()
            .prefix(&format!("homer-powerloss-{label}-"))
            .tempdir_in(&base)
            .map_err(|e| format!("cannot create a sandbox in {}: {e}", base.display()))?;
        let marker = format!(
            "{}-{}",
            std::process::id(),
            dir.path().file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
        );
        procs::open_marker(&marker);
        std::fs::create_dir_all(dir.path().join("home")).map_err(|e| e.to_string())?;
        Ok(Sandbox { opts, dir, marker, shared: Arc::default(), threads: Vec::new(), indexes: Vec::new() })
    }

    pub(super) fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }
    pub(super) fn db(&self) -> PathBuf {
        self.home().join("homer.db")
    }
    pub(super) fn log(&self) -> PathBuf {
        self.dir.path().join("powerloss.log")
    }

    /// Starts `homerd ARGS` (`{batch}` replaced by a 20-job file); returns its slot.
    pub(super) fn spawn(&mut self, name: &str, args: &[&str], rec: Recording, index: usize) -> Result<usize, String> {
        let batch = self.dir.path().join("batch.jsonl");
        if !batch.exists() {
            let lines: String = (0..20)
                .map(
                    |i| if i % 2 == 0 { "{\"kind\":\"noop\"}\n" } else { "{\"kind\":\"sleep\",\"args\":[\"10ms\"]}\n" },
                )
                .collect();
            std::fs::write(&batch, lines).map_err(|e| format!("{}: {e}", batch.display()))?;
        }
        let mut cmd = homer_testkit::homerd_command(&self.opts.daemon, self.dir.path(), &self.home(), &[]);
        if rec != Recording::Off {
            cmd.env(homerd_env::LOG, self.log());
            if let Some(m) = &self.opts.mutant {
                cmd.env("HOMERD_MUTANT", m);
            }
        }
        if let Recording::Armed(n) = rec {
            cmd.env(homerd_env::CUT, n.to_string());
        }
        let batch = batch.to_string_lossy().into_owned();
        let mut argv: Vec<String> = args.iter().map(|a| a.replace("{batch}", &batch)).collect();
        if argv.first().map(String::as_str) == Some("run") {
            for s in DAEMON_SETTINGS {
                argv.push(String::from("--set"));
                argv.push((*s).to_owned());
            }
        }
        cmd.args(&argv).current_dir(self.dir.path()).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        procs::prepare(&mut cmd, &self.marker);
        let (mut proc, pipes) =
            procs::spawn(&mut cmd, &self.marker).map_err(|e| format!("{}: {e}", self.opts.daemon.display()))?;
        let pid = proc.pid() as u32;
        if rec != Recording::Off {
            self.indexes.push((pid, index));
        }
        let slot = {
            let mut st = self.shared.lock();
            st.push(ProcState { name: name.to_owned(), pid, open_pipes: 2, ..ProcState::default() });
            st.len() - 1
        };
        let (out, err) = (pipes.stdout.expect("piped"), pipes.stderr.expect("piped"));
        let recorder = Recorder { shared: self.shared.clone(), slot };
        self.threads.extend(read_lines(out, Stream::Stdout, Parse::None, recorder.clone()));
        self.threads.extend(read_lines(err, Stream::Stderr, Parse::Json, recorder));
        let shared = self.shared.clone();
        self.threads.push(std::thread::spawn(move || {
            let exit = proc.wait_exit(Duration::MAX);
            procs::disown(pid);
            shared.lock()[slot].status = Some(exit.map_or_else(
                || ExitStatus::from_raw(255 << 8), // waitpid failed: report exit 255
                |e| e.status(),
            ));
            shared.changed.notify_all();
        }));
        Ok(slot)
    }

    /// Waits for a process to end; returns its status and stdout.
    pub(super) fn finish(&self, slot: usize, secs: u64) -> Result<(ExitStatus, String), String> {
        let deadline = self.opts.deadline(secs);
        self.shared
            .wait_for(deadline, |st| {
                st[slot]
                    .done()
                    .then(|| (st[slot].status.expect("done"), String::from_utf8_lossy(&st[slot].stdout).into_owned()))
            })
            .ok_or_else(|| format!("{} did not finish within {secs}s (scaled)", self.shared.lock()[slot].name))
    }

    /// Runs `homerd ARGS` to completion; it must exit 0.
    pub(super) fn run_ok(&mut self, name: &str, args: &[&str], rec: Recording, index: usize) -> Result<String, String> {
        let slot = self.spawn(name, args, rec, index)?;
        let (status, out) = self.finish(slot, 60)?;
        if status.code() != Some(0) {
            return Err(format!("`homerd {}` exited {status}: {}", args.join(" "), self.tail(slot)));
        }
        Ok(out)
    }

    pub(super) fn signal(&self, slot: usize, sig: i32) {
        let st = self.shared.lock();
        if st[slot].status.is_none() {
            // The process is our child and not yet reaped (its waiter holds its pid).
            crate::procs::signal_pid(st[slot].pid, sig);
        }
    }

    pub(super) fn has_event(&self, slot: usize, name: &str) -> bool {
        self.shared.lock()[slot].events.iter().any(|(e, _, _)| e == name)
    }

    /// Waits until the daemon in `slot` is active (or exits first: an error).
    pub(super) fn active(&self, slot: usize, what: &str) -> Result<(), String> {
        let deadline = self.opts.deadline(30);
        self.shared
            .wait_for(deadline, |st| {
                (st[slot].status.is_some() || st[slot].events.iter().any(|(e, _, _)| e == "daemon.active"))
                    .then_some(())
            })
            .ok_or_else(|| format!("{what} did not become active within 30s (scaled)"))?;
        if self.has_event(slot, "daemon.active") {
            Ok(())
        } else {
            Err(format!("{what} exited before it was active: {}", self.tail(slot)))
        }
    }

    pub(super) fn tail(&self, slot: usize) -> String {
        let st = self.shared.lock();
        let text = String::from_utf8_lossy(&st[slot].stderr).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(6)..].join("\n")
    }

    pub(super) fn tails(&self) -> String {
        let n = self.shared.lock().len();
        let mut s = String::new();
        for slot in 0..n {
            let (name, pid, status) = {
                let st = self.shared.lock();
                (st[slot].name.clone(), st[slot].pid, st[slot].status)
            };
            let _ = writeln!(
                s,
                "--- {name} (pid {pid}, {}) ---",
                status.map_or(String::from("running"), |x| x.to_string())
            );
            for l in self.tail(slot).lines() {
                let _ = writeln!(s, "| {l}");
            }
        }
        s
    }

    /// The power goes off: every process of the sandbox dies now.
    pub(super) fn cut_power(&self) -> Result<(), String> {
        let left = procs::kill_marked(&self.marker, Duration::from_secs(10));
        if !left.is_empty() {
            return Err(format!("processes survived SIGKILL: {left:?}"));
        }
        // Their waiters record the statuses; the pipes close with the processes.
        let deadline = self.opts.deadline(10);
        self.shared.wait_for(deadline, |st| st.iter().all(ProcState::done).then_some(()));
        Ok(())
    }

    /// Ids printed on stdout (whole lines only: a line cut short by the kill was never
    /// read by anyone as an id).
    pub(super) fn ids(out: &str) -> Vec<i64> {
        let whole = match out.rfind('\n') {
            Some(i) => &out[..=i],
            None => "",
        };
        whole.lines().filter_map(|l| l.trim().parse().ok()).collect()
    }

    /// The database opened read-only (waiting up to 5 s on a busy one); `None` when it
    /// cannot be opened.
    fn read_only(&self) -> Option<rusqlite::Connection> {
        let conn = rusqlite::Connection::open_with_flags(
            self.db(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .ok()?;
        let _ = conn.busy_timeout(Duration::from_secs(5));
        Some(conn)
    }

    /// Whether no job is pending or running (read-only; false when it cannot tell).
    pub(super) fn all_terminal(&self) -> bool {
        let Some(conn) = self.read_only() else { return false };
        conn.query_row("SELECT COUNT(*) FROM job_queue WHERE status IN ('pending', 'running')", [], |r| {
            r.get::<_, i64>(0)
        })
        .is_ok_and(|n| n == 0)
    }

    /// Whether every id in `ids` is terminal or absent (an absent one can never appear).
    pub(super) fn settled(&self, ids: &[i64]) -> bool {
        let Some(conn) = self.read_only() else { return false };
        let Ok(mut stmt) = conn.prepare("SELECT status FROM job_queue WHERE id = ?1") else { return false };
        ids.iter().all(|id| {
            let status: rusqlite::Result<String> = stmt.query_row([id], |r| r.get(0));
            match status {
                Ok(s) => !matches!(s.as_str(), "pending" | "running"),
                Err(rusqlite::Error::QueryReturnedNoRows) => true,
                Err(_) => false,
            }
        })
    }

    /// A daemon runs until `done` holds or it exits; then it gets SIGTERM and must stop.
    pub(super) fn daemon_until(
        &self,
        slot: usize,
        secs: u64,
        mut done: impl FnMut(&Self) -> bool,
    ) -> Result<(), String> {
        let deadline = self.opts.deadline(secs);
        let ended = self.shared.wait_for(deadline, |st| {
            if st[slot].status.is_some() {
                Some(true)
            } else {
                done(self).then_some(false)
            }
        });
        match ended {
            Some(true) => return Ok(()),
            Some(false) => {}
            None => return Err(format!("the daemon did not get its work done within {secs}s (scaled)")),
        }
        self.signal(slot, libc::SIGTERM);
        self.finish(slot, 60).map(drop)
    }

    pub(super) fn close(mut self, keep: bool) -> Option<PathBuf> {
        let _ = procs::kill_marked(&self.marker, Duration::from_secs(10));
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        procs::close_marker(&self.marker);
        keep.then(|| self.dir.keep())
    }
}

/// The environment variables of homerd's recorder (`homerd::powerloss`).
mod homerd_env {
    pub const LOG: &str = "HOMERD_POWERLOSS_LOG";
    pub const CUT: &str = "HOMERD_POWERLOSS_CUT";
}

// ---------------------------------------------------------------------------------------
