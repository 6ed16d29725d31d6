//! Randomized fault runs: a seed composes a scenario from the same steps the hand-written
//! ones use — starts, kill -9, pauses with takeovers, lock-file replacement, enqueues of
//! probe jobs (some scheduled a few seconds out), busy-database holds, wall-clock steps
//! forward and back — and storage faults, each followed by its recovery: power losses
//! (the power fails while jobs run, right after an enqueue, with background enqueues in
//! flight, with no daemon, or at a daemon's N-th write), a daemon started with too few file
//! descriptors for the jobs it may start, a full disk (a tmpfs home filled, then freed) and
//! a stray `-wal` (the database moved away after a crash: a start must refuse, then it is
//! moved back). Then a final phase (resume and kill everything, start one daemon, wait
//! until every acknowledged job is terminal) and the invariant check. The run is judged by
//! the invariants, by that final wait, and by the few steps whose outcome is certain (a
//! daemon started after every other was killed becomes active; a start beside a stray
//! `-wal` exits 65), so a step with a racy outcome asserts nothing.
//!
//! A failing seed is printed with the command that reruns it and written out as a scenario
//! file, which `homer-harness run` replays as it is.
//!
//! The waits between fault steps (`wait = "duration"`) are part of the random schedule, not
//! synchronisation. A full disk needs a tmpfs home (Linux, root or `CAP_SYS_ADMIN`): where
//! none can be mounted, that fault is not drawn ([`Allowed::here`] says why), so a seed's
//! schedule depends on that, and the written-out file is what replays it. A damaged page is
//! never drawn: the daemon stops for good on one (correctly), and the drain must complete.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use crate::exec::{Options, Outcome};
use crate::{report, scenario};

/// splitmix64: small, fast, and enough to spread a seed over a schedule.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
}

/// What this machine lets the generator draw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allowed {
    /// A tmpfs home can be mounted (for the full-disk fault).
    pub tmpfs: bool,
}

impl Allowed {
    /// Everything.
    pub const ALL: Allowed = Allowed { tmpfs: true };

    /// What this process can do, and why a fault is left out.
    pub fn here() -> (Allowed, Option<String>) {
        match crate::faults::cannot_mount() {
            None => (Allowed { tmpfs: true }, None),
            Some(why) => (Allowed { tmpfs: false }, Some(format!("full-disk faults are not drawn: {why}"))),
        }
    }
}

/// The size of the tmpfs home of a seed that fills its disk.
const HOME_SIZE: &str = "16m";

/// One seed's schedule as it is being written.
struct Gen {
    rng: Rng,
    steps: String,
    /// Daemons started so far (`f1`..`fN`).
    daemons: u32,
    /// Other numbered things (filler files, batch files, background enqueuers).
    serial: u32,
    /// A power-loss step or an armed daemon was drawn: the header must record.
    power_loss: bool,
    /// The disk was filled: the home must be a tmpfs.
    fills: bool,
}

impl Gen {
    fn step(&mut self, body: &str) {
        let _ = write!(self.steps, "\n[[step]]\n{body}\n");
    }

    /// The last steps of every seed: nothing left pending or running within `timeout`,
    /// then the invariants.
    fn drain_and_check(&mut self, timeout: &str) {
        self.step(&format!(
            "wait = \"sql\"\nquery = \"SELECT count(*) FROM job_queue WHERE status IN ('pending', 'running')\"\nrows = [[0]]\ntimeout = \"{timeout}\""
        ));
        self.step("check = \"invariants\"");
    }

    fn pause(&mut self, lo: u64, hi: u64) {
        let ms = self.rng.range(lo, hi);
        self.step(&format!("wait = \"duration\"\nduration = \"{ms}ms\""));
    }

    /// Mostly the newest daemon (the one likely active), sometimes any earlier one.
    fn some_daemon(&mut self) -> u32 {
        let d = self.daemons.max(1);
        if self.rng.below(10) < 7 {
            d
        } else {
            self.rng.range(1, u64::from(d)) as u32
        }
    }

    /// A start step; one in three goes through another lock file, where only the
    /// database's leader row stands between two daemons (failure modes 6, 7).
    fn start(&mut self) -> u32 {
        self.daemons += 1;
        let n = self.daemons;
        if self.rng.below(3) == 0 {
            self.step(&format!("start = \"f{n}\"\nlock_file = \"{{sandbox}}/alt.lock\""));
        } else {
            self.step(&format!("start = \"f{n}\""));
        }
        n
    }

    /// Probe jobs; half leave a grandchild in their group that outlives them (the part of
    /// an old attempt only a group kill reaches, failure mode 16); one in four is scheduled a
    /// few seconds out (failure mode 27: a wall-clock step must neither hold it back nor
    /// release it early).
    fn enqueue(&mut self) {
        let count = self.rng.range(1, 3);
        let sleep = self.rng.range(50, 1500);
        let mut body = format!("enqueue = \"probe\"\ncount = {count}\nsleep = \"{sleep}ms\"");
        if self.rng.below(2) == 0 {
            let _ = write!(body, "\ngrandchild = \"{}ms\"", self.rng.range(300, 1500));
        }
        if self.rng.below(4) == 0 {
            let _ = write!(body, "\nrun_after = \"{}s\"", self.rng.range(1, 4));
        }
        self.step(&body);
    }

    /// Every process of the scenario killed, and gone (a kill -9 of everything, no power
    /// loss): the next start is certain to become active.
    fn kill_everything(&mut self) {
        self.step("signal = \"*\"\nsig = \"KILL\"");
        self.step("wait = \"exit\"\ntarget = \"*\"");
    }

    /// A start that must become active: nothing else is alive.
    fn start_alone(&mut self, extra: &str) -> u32 {
        self.daemons += 1;
        let n = self.daemons;
        self.step(&format!("start = \"f{n}\"{extra}"));
        self.step(&format!("wait = \"event\"\ntarget = \"f{n}\"\nevent = \"daemon.active\"\ntimeout = \"20s\""));
        n
    }

    /// The power fails, in one of several situations, and a daemon starts afterwards.
    fn power_loss(&mut self) {
        self.power_loss = true;
        match self.rng.below(5) {
            // While whatever runs, runs.
            0 => {}
            // Right after an enqueue was acknowledged (failure mode 24: it must survive).
            1 => {
                let (count, sleep) = (self.rng.range(1, 3), self.rng.range(50, 500));
                self.step(&format!("enqueue = \"probe\"\ncount = {count}\nsleep = \"{sleep}ms\""));
            }
            // With no daemon: acknowledged enqueues are the only writes.
            2 => {
                self.kill_everything();
                let (count, sleep) = (self.rng.range(1, 3), self.rng.range(50, 500));
                self.step(&format!("enqueue = \"probe\"\ncount = {count}\nsleep = \"{sleep}ms\""));
            }
            // Background enqueues in flight: the ids they printed before the cut count.
            3 => {
                self.serial += 1;
                let k = self.serial;
                let lines = self.rng.range(5, 40);
                let mut contents = String::new();
                for i in 0..lines {
                    contents.push_str(if i % 2 == 0 {
                        "{\"kind\": \"noop\"}\n"
                    } else {
                        "{\"kind\": \"sleep\", \"args\": [\"30ms\"]}\n"
                    });
                }
                self.step(&format!(
                    "file = \"{{sandbox}}/batch-{k}.jsonl\"\nop = \"write\"\ncontents = \"\"\"\n{contents}\"\"\""
                ));
                let count = self.rng.range(1, 3);
                self.step(&format!(
                    "start = \"q{k}\"\ncount = {count}\ncommand = [\"enqueue\"]\nargs = [\"--from\", \"{{sandbox}}/batch-{k}.jsonl\"]"
                ));
                self.pause(0, 150);
            }
            // At the N-th write of the only daemon: in its startup, its claims, its
            // renewals or its outcomes, wherever N falls (if it gets that far).
            _ => {
                self.kill_everything();
                self.daemons += 1;
                let n = self.daemons;
                let arm = self.rng.range(5, 120);
                self.step(&format!("start = \"f{n}\"\narm = {arm}"));
                let (count, sleep) = (self.rng.range(1, 4), self.rng.range(20, 200));
                self.step(&format!("enqueue = \"probe\"\ncount = {count}\nsleep = \"{sleep}ms\""));
                self.pause(100, 1200);
            }
        }
        self.step("power_loss = \"cut\"");
        self.start();
    }

    /// A daemon with a low descriptor limit (soft = hard, so it cannot raise it) allowed
    /// many jobs at once, and a burst of work: job starts fail for want of descriptors,
    /// which is the daemon's trouble, never the job's (failure mode 25).
    fn few_descriptors(&mut self) {
        self.kill_everything();
        let nofile = self.rng.range(48, 96);
        let extra = format!(
            "\nnofile = {nofile}\nargs = [\"--set\", \"concurrency=32\", \"--set\", \"lanes.default.concurrency=32\"]"
        );
        self.start_alone(&extra);
        let count = self.rng.range(12, 30);
        let sleep = self.rng.range(50, 300);
        self.step(&format!("enqueue = \"probe\"\ncount = {count}\nsleep = \"{sleep}ms\"\nfrom_file = true"));
        self.pause(300, 1500);
    }

    /// The disk fills up for a while, then the space comes back (failure mode 25).
    fn full_disk(&mut self) {
        self.fills = true;
        self.serial += 1;
        let k = self.serial;
        self.step(&format!("file = \"{{home}}/filler-{k}\"\nop = \"fill\""));
        self.pause(300, 2000);
        self.step(&format!("file = \"{{home}}/filler-{k}\"\nop = \"remove\""));
    }

    /// A crash, then the database moved away: a start beside its `-wal` must refuse (65)
    /// and create nothing; moved back, work goes on (failure mode 23).
    fn stray_wal(&mut self) {
        self.kill_everything();
        let n = self.start_alone("");
        self.step(&format!("signal = \"f{n}\"\nsig = \"KILL\""));
        self.step(&format!("wait = \"exit\"\ntarget = \"f{n}\""));
        self.serial += 1;
        let k = self.serial;
        // Inside the home: on a tmpfs home a rename to another filesystem would fail.
        self.step(&format!("file = \"{{db}}\"\nop = \"rename\"\nto = \"{{home}}/aside-{k}/homer.db\""));
        self.daemons += 1;
        let refused = self.daemons;
        self.step(&format!("start = \"f{refused}\""));
        self.step(&format!(
            "exit = \"f{refused}\"\ncode = 65\nstderr = [\"re:homer\\\\.db-(wal|shm)\"]\ntimeout = \"20s\""
        ));
        self.step("file = \"{db}\"\nop = \"absent\"");
        self.step(&format!("file = \"{{home}}/aside-{k}/homer.db\"\nop = \"rename\"\nto = \"{{db}}\""));
        self.start();
    }
}

/// The scenario text for `seed` (what `allowed` lets it draw).
pub fn generate(seed: u64, allowed: Allowed) -> String {
    let mut g = Gen {
        rng: Rng(seed ^ 0x486F_6D65_7244_0001),
        steps: String::new(),
        daemons: 0,
        serial: 0,
        power_loss: false,
        fills: false,
    };
    // Always begin with a daemon and some work, so every seed exercises the queue.
    g.daemons += 1;
    g.step("start = \"f1\"");
    g.step("wait = \"event\"\ntarget = \"f1\"\nevent = \"daemon.active\"");
    let actions = g.rng.range(6, 16);
    for _ in 0..actions {
        match g.rng.below(112) {
            0..=23 => g.enqueue(),
            24..=36 => {
                g.start();
            }
            37..=50 => {
                // Crash and restart at once (failure modes 3, 10, 16).
                let victim = g.some_daemon();
                g.step(&format!("signal = \"f{victim}.*\"\nsig = \"KILL\""));
                g.start();
            }
            51..=59 => {
                // Pause, let the lease go stale, take over, resume (failure mode 7): either the
                // lock file is lost and the newcomer takes the default path, or the newcomer
                // comes through another lock file and only the leader row arbitrates.
                let victim = g.some_daemon();
                g.step(&format!("signal = \"f{victim}.*\"\nsig = \"STOP\""));
                let through_alt = g.rng.below(2) == 0;
                if !through_alt {
                    g.step("file = \"{lock}\"\nop = \"replace\"");
                }
                g.step("wait = \"duration\"\nduration = \"1300ms\"");
                g.daemons += 1;
                let n = g.daemons;
                if through_alt {
                    g.step(&format!("start = \"f{n}\"\nlock_file = \"{{sandbox}}/alt.lock\""));
                } else {
                    g.step(&format!("start = \"f{n}\""));
                }
                g.pause(100, 900);
                g.step(&format!("signal = \"f{victim}.*\"\nsig = \"CONT\""));
                // Work for whoever believes it is active.
                let (count, sleep) = (g.rng.range(1, 3), g.rng.range(50, 500));
                g.step(&format!("enqueue = \"probe\"\ncount = {count}\nsleep = \"{sleep}ms\""));
            }
            60..=64 => g.step("file = \"{lock}\"\nop = \"replace\""),
            65..=69 => {
                let ms = g.rng.range(200, 1600);
                g.step(&format!("hold_write = \"{ms}ms\""));
            }
            70..=72 => {
                let s = g.rng.range(1, 7200);
                g.step(&format!("clock = \"+{s}s\""));
            }
            // Backward, with work queued behind a busy lane: at least five minutes, so a
            // daemon that schedules by the raw wall clock holds those ready jobs back past
            // the final drain (failure mode 27).
            73..=76 => {
                let (count, sleep) = (g.rng.range(2, 4), g.rng.range(200, 800));
                g.step(&format!("enqueue = \"probe\"\ncount = {count}\nsleep = \"{sleep}ms\""));
                let s = g.rng.range(300, 10_800);
                g.step(&format!("clock = \"-{s}s\""));
            }
            77..=79 => {
                let victim = g.some_daemon();
                g.step(&format!("signal = \"f{victim}.*\"\nsig = \"TERM\""));
            }
            80..=88 => g.power_loss(),
            89..=93 => g.few_descriptors(),
            94..=97 if allowed.tmpfs => g.full_disk(),
            98..=101 => g.stray_wal(),
            _ => {}
        }
        g.pause(20, 500);
    }
    // Final phase: resume and kill everything, one daemon drains the queue.
    g.step("signal = \"*\"\nsig = \"CONT\"");
    g.step("signal = \"*\"\nsig = \"KILL\"");
    // The kernel drops a killed daemon's flock when it has exited: wait for that, or the
    // last start can lose the lock to a daemon that is already dead.
    g.step("wait = \"exit\"\ntarget = \"*\"");
    g.step("start = \"final\"");
    g.step("wait = \"event\"\ntarget = \"final\"\nevent = \"daemon.active\"\ntimeout = \"20s\"");
    g.drain_and_check("60s");

    let mut t = header("homer-harness fuzz", seed, &format!("randomized fault run, seed {seed}"), "\"fuzz\"", "180s");
    if g.fills {
        let _ = writeln!(t, "requires = [\"tmpfs\"]\nhome_size = \"{HOME_SIZE}\"");
    }
    if g.power_loss {
        t.push_str("power_loss = true\n");
    }
    t.push_str("\n[settings]\n");
    fast_settings(&mut t, "1s");
    t.push_str(&g.steps);
    t
}

/// How many homes (hosts) a PostgreSQL seed runs by default.
pub const PG_HOMES: u32 = 3;

/// The stale threshold of a PostgreSQL seed's daemons, in ms (its `[settings]`): a
/// partition is drawn shorter or longer than it.
const PG_STALE_MS: u64 = 1500;

/// Whether this process can run a PostgreSQL seed's homes as hosts (network namespaces:
/// Linux, root), so partitions can be drawn; if not, why they are left out.
pub fn hosts_here() -> (bool, Option<String>) {
    if !cfg!(target_os = "linux") {
        return (false, Some(String::from("partitions are not drawn: network namespaces are Linux-only")));
    }
    if !rustix::process::geteuid().is_root() {
        return (false, Some(String::from("partitions are not drawn: network namespaces need root")));
    }
    (true, None)
}

/// One PostgreSQL seed's schedule: which daemon runs on each home now.
struct PgGen {
    g: Gen,
    homes: u32,
    /// Per home (index 0 = `h1`): the number of its current daemon, `None` when none runs.
    current: Vec<Option<u32>>,
    /// Per home: its daemon was partitioned since it started, so it may have been fenced
    /// (and exited 76) once healed — surely not when no other worker was there to fence
    /// it, likely when the partition outlasted its stale threshold, possibly when it came
    /// close. The final phase makes sure such a home runs a daemon.
    maybe_fenced: Vec<bool>,
}

impl PgGen {
    fn name(k: u32, n: u32) -> String {
        format!("h{k}_{n}")
    }

    /// Starts a daemon on home `k` (1-based); returns its name.
    fn start(&mut self, k: u32) -> String {
        self.g.daemons += 1;
        let n = self.g.daemons;
        let name = Self::name(k, n);
        self.g.step(&format!("start = \"{name}\"\nhome = \"h{k}\""));
        self.current[(k - 1) as usize] = Some(n);
        self.maybe_fenced[(k - 1) as usize] = false;
        name
    }

    fn some_home(&mut self) -> u32 {
        self.g.rng.range(1, u64::from(self.homes)) as u32
    }

    /// A home with a daemon running, if any.
    fn live_home(&mut self) -> Option<u32> {
        let live: Vec<u32> = (1..=self.homes).filter(|k| self.current[(*k - 1) as usize].is_some()).collect();
        if live.is_empty() {
            return None;
        }
        Some(live[self.g.rng.below(live.len() as u64) as usize])
    }
}

/// A seed on the PostgreSQL backend: `homes` daemons, each on a home of its own (a host),
/// share one queue on the run's throwaway server. Signals name a daemon as `NAME.*`, which
/// reaches it only while it lives: a daemon may have ended on its own (fenced after a
/// server outage longer than its lease: exit 76). Faults: `kill -9` of a host's daemon,
/// restarted at once (its start recovers its predecessor's jobs, killing their groups) or
/// later (meanwhile the other hosts fence it once the server has not heard from it for
/// its stale threshold, and re-run its jobs — its guardian has stopped their groups);
/// pauses shorter than the lease; graceful stops; the server restarted fast or crashed
/// (immediate) mid-batch; wall-clock steps of the hosts (the server's clock judges, so
/// they change nothing). Pauses past the lease are left to `postgres-paused-host`: a
/// paused daemon's child can outlive its lease (README, Guarantees), which the overlap
/// checker would rightly report.
///
/// With `hosts` (`[settings] hosts = true`: each home a network namespace), partitions
/// too: a live host's link cut, then healed after a while shorter than its stale threshold
/// (it stops runs whose lease deadline passed, then usually carries on unfenced) or longer
/// (the others fence it and re-run its jobs; healed, it exits 76 having recorded nothing). A
/// partition's own child must be dead before another host re-runs its job: the overlap
/// checker judges that.
pub fn generate_postgres(seed: u64, homes: u32, hosts: bool) -> String {
    let homes = homes.max(1);
    let mut p = PgGen {
        g: Gen {
            rng: Rng(seed ^ 0x5067_486F_6D65_7201),
            steps: String::new(),
            daemons: 0,
            serial: 0,
            power_loss: false,
            fills: false,
        },
        homes,
        current: vec![None; homes as usize],
        maybe_fenced: vec![false; homes as usize],
    };
    for k in 1..=homes {
        let name = p.start(k);
        p.g.step(&format!("wait = \"event\"\ntarget = \"{name}\"\nevent = \"daemon.active\"\ntimeout = \"20s\""));
    }
    // A batch for the cluster to share from the start, then more as faults happen.
    let (count, sleep) = (p.g.rng.range(30, 90), p.g.rng.range(20, 300));
    p.g.step(&format!("enqueue = \"probe\"\ncount = {count}\nsleep = \"{sleep}ms\"\nfrom_file = true"));
    let actions = p.g.rng.range(8, 20);
    for _ in 0..actions {
        match p.g.rng.below(100) {
            0..=19 => p.g.enqueue(),
            20..=29 => {
                let (count, sleep) = (p.g.rng.range(5, 25), p.g.rng.range(20, 400));
                p.g.step(&format!("enqueue = \"probe\"\ncount = {count}\nsleep = \"{sleep}ms\"\nfrom_file = true"));
            }
            30..=44 => {
                // Crash a host's daemon; restart it now, or leave the home dark a while.
                if let Some(k) = p.live_home() {
                    let n = p.current[(k - 1) as usize].take().expect("live");
                    let name = PgGen::name(k, n);
                    p.g.step(&format!("signal = \"{name}.*\"\nsig = \"KILL\""));
                    // Gone before its home starts again, as under a supervisor: until it
                    // has exited the kernel keeps its flock, and a start would lose to it.
                    p.g.step(&format!("wait = \"exit\"\ntarget = \"{name}\"\ntimeout = \"20s\""));
                    if p.g.rng.below(2) == 0 {
                        p.start(k);
                    }
                }
            }
            45..=54 => {
                // A dark home comes back.
                let k = p.some_home();
                if p.current[(k - 1) as usize].is_none() {
                    p.start(k);
                }
            }
            55..=64 => {
                // A pause well inside the lease: nobody may fence it, nothing may overlap.
                if let Some(k) = p.live_home() {
                    let name = PgGen::name(k, p.current[(k - 1) as usize].expect("live"));
                    p.g.step(&format!("signal = \"{name}.*\"\nsig = \"STOP\""));
                    p.g.pause(50, 400);
                    p.g.step(&format!("signal = \"{name}.*\"\nsig = \"CONT\""));
                }
            }
            65..=72 => {
                let mode = if p.g.rng.below(2) == 0 { "fast" } else { "immediate" };
                p.g.step(&format!("server = \"restart\"\nmode = \"{mode}\""));
            }
            73..=80 => {
                // A graceful stop (its runs released), then a start on the same home.
                if let Some(k) = p.live_home() {
                    let name = PgGen::name(k, p.current[(k - 1) as usize].take().expect("live"));
                    p.g.step(&format!("signal = \"{name}.*\"\nsig = \"TERM\""));
                    p.g.step(&format!("wait = \"exit\"\ntarget = \"{name}\"\ntimeout = \"30s\""));
                    p.start(k);
                }
            }
            81..=86 => {
                let s = p.g.rng.range(1, 7200);
                let sign = if p.g.rng.below(2) == 0 { "+" } else { "-" };
                p.g.step(&format!("clock = \"{sign}{s}s\""));
            }
            87..=99 if hosts => {
                // A live host cut off from the server for a while, then healed. Half the
                // partitions outlast the stale threshold.
                if let Some(k) = p.live_home() {
                    p.g.step(&format!("partition = \"h{k}\""));
                    if p.g.rng.below(2) == 0 {
                        p.g.pause(PG_STALE_MS + 500, PG_STALE_MS * 3);
                    } else {
                        p.g.pause(100, PG_STALE_MS - 300);
                    }
                    p.g.step(&format!("heal = \"h{k}\""));
                    // Even a short one may end fenced: the reconnection after the heal
                    // adds to the time the server has not heard from the host.
                    p.maybe_fenced[(k - 1) as usize] = true;
                }
            }
            _ => {}
        }
        p.g.pause(20, 500);
    }
    // Final phase: every daemon resumed and left running; dark homes started; the
    // cluster drains the queue (a crashed daemon's jobs after its stale threshold).
    p.g.step("signal = \"*\"\nsig = \"CONT\"");
    for k in 1..=homes {
        if p.maybe_fenced[(k - 1) as usize] {
            // Fenced and gone, or still running: either way a daemon of its own next.
            if let Some(n) = p.current[(k - 1) as usize].take() {
                let name = PgGen::name(k, n);
                p.g.step(&format!("signal = \"{name}.*\"\nsig = \"KILL\""));
                p.g.step(&format!("wait = \"exit\"\ntarget = \"{name}\"\ntimeout = \"20s\""));
            }
        }
        if p.current[(k - 1) as usize].is_none() {
            p.start(k);
        }
    }
    p.g.drain_and_check("90s");

    let mut t = header(
        "homer-harness fuzz --backend postgres",
        seed,
        &format!("randomized fault run on PostgreSQL, {homes} homes, seed {seed}"),
        "\"fuzz\", \"many hosts\"",
        "240s",
    );
    t.push_str("\n[settings]\nbackends = [\"postgres\"]\n");
    if hosts {
        t.push_str("hosts = true\n");
    }
    fast_settings(&mut t, &format!("{PG_STALE_MS}ms"));
    let _ = writeln!(t, "concurrency = 3\n\"lanes.default.concurrency\" = {}", 3 * homes);
    t.push_str(&p.g.steps);
    t
}

/// Which backend the seeds run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    /// One SQLite database, the faults `allowed` lets this machine draw ([`generate`]).
    Sqlite(Allowed),
    /// One PostgreSQL queue shared by `homes` daemons on homes of their own
    /// ([`generate_postgres`]); with `hosts`, each home a host, and partitions drawn.
    Postgres { homes: u32, hosts: bool },
}

impl Flavour {
    pub fn generate(self, seed: u64) -> String {
        match self {
            Flavour::Sqlite(allowed) => generate(seed, allowed),
            Flavour::Postgres { homes, hosts } => generate_postgres(seed, homes, hosts),
        }
    }
}

/// Run `count` seeds from `first`; failing ones are written to `out`.
/// With `until_caught`, no new seed starts after one failed (for measuring how soon a
/// broken daemon is caught).
pub fn run(
    first: u64,
    count: u64,
    flavour: Flavour,
    opts: &Options,
    jobs: usize,
    out: &Path,
    until_caught: bool,
) -> ExitCode {
    let seeds: Vec<u64> = (first..first.saturating_add(count.max(1))).collect();
    let mut scenarios = Vec::new();
    for &seed in &seeds {
        let text = flavour.generate(seed);
        let path = out.join(format!("fuzz-seed-{seed}.toml"));
        match scenario::parse_str(&path, &text) {
            Ok(s) => scenarios.push((seed, text, s)),
            Err(e) => {
                eprintln!("homer-harness: the generator wrote an invalid scenario for seed {seed}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let parsed: Vec<scenario::Scenario> = scenarios.iter().map(|(_, _, s)| s.clone()).collect();
    let start = std::time::Instant::now();
    let results =
        crate::run_runs(&parsed, opts, jobs, parsed.len(), until_caught, &|r| println!("{}", report::line(r)));
    let mut failed = 0;
    for r in &results {
        if let Outcome::Failed(f) = &r.outcome {
            failed += 1;
            // A run on one backend of several is reported as `NAME [backend]`.
            let base = r.name.split(" [").next().unwrap_or(&r.name);
            let Some((seed, text, _)) = scenarios.iter().find(|(_, _, s)| s.name == base) else { continue };
            let _ = std::fs::create_dir_all(out);
            let file = out.join(format!("fuzz-seed-{seed}.toml"));
            let written = std::fs::write(&file, text).is_ok();
            println!("\n=== FAILED seed {seed}\n{f}");
            let mutant = opts.mutant.as_ref().map(|m| format!(" --mutant {m}")).unwrap_or_default();
            let backend = match flavour {
                Flavour::Sqlite(_) => String::new(),
                Flavour::Postgres { homes, .. } => format!(" --backend postgres --homes {homes}"),
            };
            println!("rerun: homer-harness fuzz --seed {seed}{backend} --daemon {}{mutant}", opts.daemon.display());
            if written {
                println!("replay: homer-harness run {} --daemon {}{mutant}", file.display(), opts.daemon.display());
            }
        }
    }
    let skipped: Vec<&str> = results
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Skipped(why) => Some(why.as_str()),
            _ => None,
        })
        .collect();
    println!(
        "\nfuzz: {} of {} seeds run ({}..={}), {} failed, {} skipped, in {:.1}s",
        results.len(),
        seeds.len(),
        seeds[0],
        seeds[seeds.len() - 1],
        failed,
        skipped.len(),
        start.elapsed().as_secs_f64()
    );
    ExitCode::from(fuzz_exit(failed, skipped.len(), results.len(), skipped.first().copied()))
}

/// A failed seed is 1; seeds that were all skipped (say, no PostgreSQL server binaries
/// here) tested nothing, which is not a pass: 2, with the reason.
fn fuzz_exit(failed: usize, skipped: usize, ran: usize, why: Option<&str>) -> u8 {
    if failed > 0 {
        1
    } else if ran > 0 && skipped == ran {
        eprintln!("homer-harness: fuzz: every seed was skipped, so nothing was tested: {}", why.unwrap_or("?"));
        2
    } else {
        0
    }
}

/// The top of every generated scenario: the command that made it, what it is, what it
/// covers (TOML array items) and its whole-run bound; the caller adds the rest.
fn header(command: &str, seed: u64, description: &str, covers: &str, timeout: &str) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "# Generated by `{command} --seed {seed}`.");
    let _ = writeln!(t, "description = \"{description}\"");
    let _ = writeln!(t, "covers = [{covers}]");
    t.push_str("mutant_none = \"randomized run: judged by the invariants and the final drain\"\n");
    let _ = writeln!(t, "timeout = \"{timeout}\"");
    t
}

/// The daemon settings every generated scenario runs with: short heartbeats, grace and
/// back-off so a seed's faults play out in seconds, and the given stale threshold.
fn fast_settings(t: &mut String, stale_threshold: &str) {
    for (k, v) in [
        ("heartbeat_interval", "100ms"),
        ("stale_threshold", stale_threshold),
        ("kill_grace", "100ms"),
        ("lock_check_interval", "100ms"),
        ("shutdown_grace", "1s"),
        ("max_attempts", "20"),
        ("backoff_base", "10ms"),
        ("backoff_cap", "100ms"),
    ] {
        let _ = writeln!(t, "{k} = \"{v}\"");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Step;
    use crate::steps::file::FileOp;

    #[test]
    fn a_fuzz_run_whose_every_seed_was_skipped_is_not_a_pass() {
        assert_eq!(fuzz_exit(0, 3, 3, Some("no server")), 2);
        assert_eq!(fuzz_exit(0, 2, 3, Some("no server")), 0, "some seeds ran");
        assert_eq!(fuzz_exit(1, 2, 3, None), 1);
        assert_eq!(fuzz_exit(0, 0, 3, None), 0);
    }

    /// How often each storage fault appears in the steps of `seeds`.
    #[derive(Debug, Default)]
    struct Drawn {
        power_losses: usize,
        armed: usize,
        background_enqueues: usize,
        few_descriptors: usize,
        fills: usize,
        stray_refusals: usize,
        back_steps: usize,
        forward_steps: usize,
        delayed_jobs: usize,
        seeds_with_power_loss: usize,
    }

    fn draw(seeds: std::ops::RangeInclusive<u64>, allowed: Allowed) -> Drawn {
        let mut d = Drawn::default();
        for seed in seeds {
            let text = generate(seed, allowed);
            let sc = scenario::parse_str(Path::new("fuzz.toml"), &text)
                .unwrap_or_else(|e| panic!("seed {seed} does not parse: {e}\n{text}"));
            let (mut cuts, mut fills, mut armed) = (0, 0, 0);
            for at in &sc.steps {
                match &at.step {
                    Step::PowerLoss(_) => cuts += 1,
                    Step::Start(s) if s.arm.is_some() => armed += 1,
                    Step::Start(s) if s.command.first().map(String::as_str) == Some("enqueue") => {
                        d.background_enqueues += 1
                    }
                    Step::Start(s) if s.nofile.is_some() => d.few_descriptors += 1,
                    Step::File(f) if matches!(f.op, FileOp::Fill) => fills += 1,
                    Step::Exit(x) if x.code == 65 => d.stray_refusals += 1,
                    Step::Clock(c) if c.step_ms < 0 => d.back_steps += 1,
                    Step::Clock(_) => d.forward_steps += 1,
                    Step::Enqueue(e) if e.run_after.is_some() => d.delayed_jobs += 1,
                    _ => {}
                }
            }
            // The header follows the steps: recording exactly when a power loss is drawn,
            // a tmpfs home exactly when the disk is filled.
            assert_eq!(sc.power_loss, cuts + armed > 0, "seed {seed}");
            assert_eq!(sc.home_size.is_some(), fills > 0, "seed {seed}");
            assert!(armed <= cuts, "seed {seed}: an armed daemon is always followed by a power loss");
            d.power_losses += cuts;
            d.armed += armed;
            d.fills += fills;
            d.seeds_with_power_loss += usize::from(cuts > 0);
        }
        d
    }

    #[test]
    fn every_seed_parses_and_draws_storage_faults() {
        let d = draw(1..=200, Allowed::ALL);
        let counts = [
            d.power_losses,
            d.armed,
            d.background_enqueues,
            d.few_descriptors,
            d.fills,
            d.stray_refusals,
            d.back_steps,
            d.forward_steps,
            d.delayed_jobs,
        ];
        assert!(counts.iter().all(|&n| n >= 10), "every fault drawn at least 10 times in 200 seeds: {d:?}");
        assert!(d.seeds_with_power_loss >= 60, "a power loss in at least 60 of 200 seeds: {d:?}");
    }

    #[test]
    fn without_a_tmpfs_the_disk_is_never_filled() {
        let d = draw(1..=200, Allowed { tmpfs: false });
        assert_eq!(d.fills, 0);
        assert!(d.power_losses > 0 && d.few_descriptors > 0 && d.stray_refusals > 0, "{d:?}");
    }

    /// PostgreSQL seeds: every one parses, runs on PostgreSQL only, starts every daemon on
    /// a home of its own, and 200 of them draw each fault many times; with hosts,
    /// partitions both shorter and longer than the stale threshold, each healed.
    #[test]
    fn every_postgres_seed_parses_and_draws_the_many_host_faults() {
        use crate::steps::signal::Sig;
        let (mut kills, mut pauses, mut stops, mut fast, mut immediate, mut clocks) = (0, 0, 0, 0, 0, 0);
        let (mut short, mut long) = (0, 0);
        for (seed, hosts) in (1..=200).map(|s| (s, s % 2 == 0)) {
            let text = generate_postgres(seed, 3, hosts);
            let sc = scenario::parse_str(Path::new("fuzz.toml"), &text)
                .unwrap_or_else(|e| panic!("seed {seed} does not parse: {e}\n{text}"));
            assert_eq!(sc.backends, vec![scenario::Backend::Postgres], "seed {seed}");
            assert_eq!(sc.hosts.len(), if hosts { 3 } else { 0 }, "seed {seed}");
            let mut homes = std::collections::BTreeSet::new();
            let mut cut: Option<(String, Option<std::time::Duration>)> = None;
            for at in &sc.steps {
                // Every partition is followed by one wait, then the heal of the same host.
                if let Some((host, waited)) = cut.take() {
                    match (&at.step, waited) {
                        (Step::Wait(w), None) => {
                            let crate::steps::wait::WaitFor::Elapsed { duration } = w.until else {
                                panic!("seed {seed}: a partition followed by {w:?}")
                            };
                            cut = Some((host, Some(duration)));
                        }
                        (Step::Heal(h), Some(d)) => {
                            assert_eq!(h.host, host, "seed {seed}");
                            if d.as_millis() > u128::from(PG_STALE_MS) {
                                long += 1;
                            } else {
                                short += 1;
                            }
                        }
                        (other, _) => panic!("seed {seed}: partition of {host} then {other:?}"),
                    }
                    continue;
                }
                match &at.step {
                    Step::Partition(p) => {
                        assert!(hosts, "seed {seed}: a partition without hosts");
                        cut = Some((p.host.clone(), None));
                    }
                    Step::Start(s) => {
                        homes.insert(s.home.clone().unwrap_or_else(|| panic!("seed {seed}: a start without a home")));
                    }
                    Step::Signal(s) if s.signal == Sig::Kill => kills += 1,
                    Step::Signal(s) if s.signal == Sig::Stop => pauses += 1,
                    Step::Signal(s) if s.signal == Sig::Term => stops += 1,
                    Step::Server(s) if s.immediate => immediate += 1,
                    Step::Server(_) => fast += 1,
                    Step::Clock(_) => clocks += 1,
                    _ => {}
                }
            }
            assert_eq!(homes.len(), 3, "seed {seed}: every home runs a daemon");
        }
        for (what, n) in [
            ("kills", kills),
            ("pauses", pauses),
            ("stops", stops),
            ("fast", fast),
            ("immediate", immediate),
            ("clock", clocks),
        ] {
            assert!(n >= 20, "{what} drawn {n} times in 200 seeds");
        }
        assert!(short >= 20 && long >= 20, "partitions in the 100 seeds with hosts: {short} short, {long} long");
        assert_eq!(generate_postgres(7, 3, true), generate_postgres(7, 3, true));
        assert_ne!(generate_postgres(7, 3, true), generate_postgres(8, 3, true));
    }

    #[test]
    fn a_seed_is_its_schedule() {
        assert_eq!(generate(7, Allowed::ALL), generate(7, Allowed::ALL));
        assert_ne!(generate(7, Allowed::ALL), generate(8, Allowed::ALL));
    }
}
