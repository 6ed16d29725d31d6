//! Hosts for tests of many daemons on one PostgreSQL server: a [`Host`] is a Linux network
//! namespace (`ip netns add homer-<pid>-<n>`) joined to the root namespace by a veth pair
//! with a /30 of its own (`10.213.K.0/30`: the root side `.1`, the host side `.2`), its
//! loopback up. A daemon started with [`Host::command`] reaches the server only at
//! [`Host::server_addr`], over that pair, so the pair is the network between this host and
//! the server: [`Host::partition`] cuts it, [`Host::heal`] joins it again, [`Host::delay`]
//! slows it, and [`Host::kill_all`] crashes the host (SIGKILL to every process in it).
//!
//! A partition is the host side's link set down, inside the namespace. What the host's
//! processes see is what a real partition gives them: the packets of an established TCP
//! connection go nowhere and nothing answers (no reset; a read waits until the client's
//! own timeouts give up), and a new connection fails. The server side keeps its route
//! (the root side stays up, without carrier), so the server's packets to the host are
//! dropped by the pair, silently as well, instead of leaving through the root namespace's
//! default route as they would with the root side down. netem's `loss 100%` would model
//! the same silence, but it needs `sch_netem`, which not every kernel has (this project's
//! machines lack it); a link is always there.
//!
//! Invariants:
//! - every resource is named after the creating process (`homer-<pid>-<n>`; the veth pair
//!   `homer<K>r`/`homer<K>h` holds the namespace name as the root side's alias), so a
//!   [`Host::create`] first removes what a dead process of ours left (a test killed
//!   before its drops ran), and nothing of a live process is ever touched;
//! - a /30 is claimed by creating its veth pair (`ip link add` fails if the name exists:
//!   the claim is atomic among users of this module) and kept only when no interface of
//!   the root namespace has an address in it (another tool's hosts);
//! - the drop deletes the namespace and the pair; every `ip`/`tc` call is bounded, so a
//!   drop never hangs. Processes still inside a deleted namespace keep it alive until they
//!   exit (the kernel's rule), but its name and its pair are gone.
//!
//! - every `ip`/`tc` process is started through the host's [`Spawner`]
//!   ([`Host::create_with`]): a caller that reaps children it does not own (the harness's
//!   subreaper) registers them, so it cannot take their exit status first.
//!
//! Root only (creating namespaces needs `CAP_SYS_ADMIN` and `CAP_NET_ADMIN`): otherwise
//! [`Host::create`] fails with an error saying so. Linux only: elsewhere every
//! constructor fails with "network namespaces are Linux-only".

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::Arc;

use crate::postgres::{DirectSpawner, Spawner};

/// What a caller gets on a system without network namespaces.
pub const LINUX_ONLY: &str = "network namespaces are Linux-only: the partition tests run on Linux";

#[cfg(target_os = "linux")]
pub use linux::Host;
#[cfg(not(target_os = "linux"))]
pub use other::Host;

#[cfg(target_os = "linux")]
mod linux {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use crate::proc::run_spawned;
    use crate::time::deadline;

    /// The /16 the hosts' /30s are cut from: `10.213.K.0/30`, K in 0..=255.
    const PREFIX: [u8; 2] = [10, 213];
    /// Namespace names start with this; then the creating pid and a counter.
    const NS_PREFIX: &str = "homer-";

    /// A network namespace joined to the root namespace by its own veth pair. Dropped, both
    /// are deleted.
    pub struct Host {
        label: String,
        ns: String,
        index: u8,
        /// The veth ends: in the root namespace, and inside the host's.
        root_if: String,
        host_if: String,
        /// Starts every `ip`/`tc` process.
        spawner: Arc<dyn Spawner>,
    }

    impl Host {
        /// A new host. `label` only names it in messages (and the test's output). Fails
        /// when not root, or when `ip` cannot make the namespace, the pair or the
        /// addresses; nothing made is left behind.
        pub fn create(label: &str) -> Result<Host, String> {
            Host::create_with(label, Arc::new(DirectSpawner))
        }

        /// [`Host::create`], every `ip`/`tc` process (now and for the host's life) started
        /// through `spawner`.
        pub fn create_with(label: &str, spawner: Arc<dyn Spawner>) -> Result<Host, String> {
            let sp = spawner.as_ref();
            if !rustix::process::geteuid().is_root() {
                return Err(format!(
                    "host {label}: creating a network namespace needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN); \
                     run the tests as root (sudo -E cargo test ...)"
                ));
            }
            sweep_dead(sp);
            static NEXT: AtomicU32 = AtomicU32::new(1);
            let pid = std::process::id();
            let ns = format!("{NS_PREFIX}{pid}-{}", NEXT.fetch_add(1, Ordering::Relaxed));
            ip(sp, &["netns", "add", &ns]).map_err(|e| format!("host {label}: {e}"))?;
            // Start the search at a place derived from our pid, so that concurrent test
            // processes rarely contend for the same /30.
            let start = (pid as usize).wrapping_mul(37) % 256;
            let mut claimed = None;
            for step in 0..256 {
                let k = ((start + step) % 256) as u8;
                let (root_if, host_if) = (format!("homer{k}r"), format!("homer{k}h"));
                if ip(sp, &["link", "add", &root_if, "type", "veth", "peer", "name", &host_if]).is_err() {
                    continue; // taken by another host (ours or another process's)
                }
                let subnet = format!("{}.{}.{k}.0/30", PREFIX[0], PREFIX[1]);
                let used = ip_list(sp, &["-o", "-4", "addr", "show", "to", &subnet]).map(|out| !out.trim().is_empty());
                if used != Ok(false) {
                    let _ = ip(sp, &["link", "del", &root_if]);
                    continue;
                }
                claimed = Some((k, root_if, host_if));
                break;
            }
            let Some((index, root_if, host_if)) = claimed else {
                let _ = ip(sp, &["netns", "del", &ns]);
                return Err(format!(
                    "host {label}: no free /30 in {}.{}.0.0/16 (every homer<K>r veth exists or its subnet is in use)",
                    PREFIX[0], PREFIX[1]
                ));
            };
            let host = Host { label: label.to_owned(), ns, index, root_if, host_if, spawner };
            host.wire().map_err(|e| format!("host {label}: {e}"))?; // on error, the drop removes it all
            Ok(host)
        }

        fn wire(&self) -> Result<(), String> {
            let (root, host) = (format!("{}/30", self.server_addr()), format!("{}/30", self.addr()));
            let sp = self.spawner.as_ref();
            ip(sp, &["link", "set", &self.root_if, "alias", &self.ns])?;
            ip(sp, &["link", "set", &self.host_if, "netns", &self.ns])?;
            ip(sp, &["addr", "add", &root, "dev", &self.root_if])?;
            ip(sp, &["link", "set", &self.root_if, "up"])?;
            self.ip_in(&["link", "set", "lo", "up"])?;
            self.ip_in(&["addr", "add", &host, "dev", &self.host_if])?;
            self.ip_in(&["link", "set", &self.host_if, "up"])?;
            Ok(())
        }

        /// The label given to [`Host::create`].
        pub fn label(&self) -> &str {
            &self.label
        }

        /// The namespace's name (`ip netns exec NAME ...`).
        pub fn netns(&self) -> &str {
            &self.ns
        }

        /// The root side's address: where this host reaches a server listening on it.
        pub fn server_addr(&self) -> Ipv4Addr {
            Ipv4Addr::new(PREFIX[0], PREFIX[1], self.index, 1)
        }

        /// The host's own address (its side of the pair).
        pub fn addr(&self) -> Ipv4Addr {
            Ipv4Addr::new(PREFIX[0], PREFIX[1], self.index, 2)
        }

        /// The host's /30, e.g. `10.213.7.0/30` (for a server's `pg_hba.conf`).
        pub fn subnet(&self) -> String {
            format!("{}.{}.{}.0/30", PREFIX[0], PREFIX[1], self.index)
        }

        /// `program` run inside the namespace: `ip netns exec NAME program`. Add its
        /// arguments, environment and directory as to any command; it is an ordinary
        /// child (the `ip` process execs the program, so the pid is the program's).
        pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", &self.ns]).arg(program);
            cmd
        }

        /// Cuts the host off: its side of the pair goes down (see the module docs for what
        /// that looks like from both ends). Idempotent.
        pub fn partition(&self) -> Result<(), String> {
            self.ip_in(&["link", "set", &self.host_if, "down"]).map(drop).map_err(|e| self.err("partition", e))
        }

        /// Joins the host again: its side up, its route back. Connections that gave up
        /// during the partition stay closed; new ones work at once. Idempotent.
        pub fn heal(&self) -> Result<(), String> {
            self.ip_in(&["link", "set", &self.host_if, "up"]).map(drop).map_err(|e| self.err("heal", e))
        }

        /// Every packet the host sends waits `ms` ± `jitter_ms` (tc netem on the host's
        /// side); `delay(0, 0)` removes the delay. Needs the kernel's `sch_netem`: without
        /// it, an error saying so and nothing changed.
        pub fn delay(&self, ms: u32, jitter_ms: u32) -> Result<(), String> {
            let out = if ms == 0 && jitter_ms == 0 {
                match self.tc_in(&["qdisc", "del", "dev", &self.host_if, "root"]) {
                    // No qdisc of ours there: nothing to remove.
                    Err(e) if e.contains("handle of zero") || e.contains("No such file") => Ok(String::new()),
                    other => other,
                }
            } else {
                let (delay, jitter) = (format!("{ms}ms"), format!("{jitter_ms}ms"));
                self.tc_in(&["qdisc", "replace", "dev", &self.host_if, "root", "netem", "delay", &delay, &jitter])
            };
            out.map(drop).map_err(|e| {
                if e.contains("qdisc kind is unknown") {
                    self.err(
                        "delay",
                        format!(
                            "tc netem is not available in this kernel (CONFIG_NET_SCH_NETEM is not set, \
                             or the sch_netem module is not loaded: modprobe sch_netem): {e}"
                        ),
                    )
                } else {
                    self.err("delay", e)
                }
            })
        }

        /// A host crash: SIGKILL to every process in the namespace (`ip netns pids`), again
        /// until none is left alive (a process may fork meanwhile), bounded. Returns how
        /// many were killed. The processes are not all our children: a pid is signalled
        /// right after `ip` listed it in this namespace, a window in which only a pid that
        /// exited and was reused could be hit.
        pub fn kill_all(&self) -> Result<usize, String> {
            let limit = deadline(30.0);
            let end = std::time::Instant::now() + limit;
            let mut killed = 0;
            loop {
                let listed =
                    ip(self.spawner.as_ref(), &["netns", "pids", &self.ns]).map_err(|e| self.err("kill_all", e))?;
                let live: Vec<i32> = listed
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .filter(|&p| crate::stat::alive(p))
                    .collect();
                if live.is_empty() {
                    return Ok(killed);
                }
                if std::time::Instant::now() >= end {
                    return Err(self.err("kill_all", format!("processes {live:?} still alive after {limit:?}")));
                }
                for pid in live {
                    if rustix::process::Pid::from_raw(pid)
                        .is_some_and(|p| rustix::process::kill_process(p, rustix::process::Signal::KILL).is_ok())
                    {
                        killed += 1;
                    }
                }
                // A polling period while SIGKILL takes effect: the loop's condition decides.
                #[allow(clippy::disallowed_methods)]
                std::thread::sleep(Duration::from_millis(10));
            }
        }

        fn err(&self, what: &str, e: String) -> String {
            format!("host {} ({}): {what}: {e}", self.label, self.ns)
        }

        fn ip_in(&self, args: &[&str]) -> Result<String, String> {
            let mut all = vec!["-n", self.ns.as_str()];
            all.extend_from_slice(args);
            ip(self.spawner.as_ref(), &all)
        }

        fn tc_in(&self, args: &[&str]) -> Result<String, String> {
            let mut all = vec!["-n", self.ns.as_str()];
            all.extend_from_slice(args);
            tool(self.spawner.as_ref(), "tc", &all)?.stdout()
        }
    }

    impl Drop for Host {
        fn drop(&mut self) {
            // Deleting the root side deletes its peer; deleting the namespace deletes the
            // peer too when it is inside it. Both, so a half-made host goes as well.
            let sp = self.spawner.as_ref();
            let _ = ip(sp, &["link", "del", &self.root_if]);
            let _ = ip(sp, &["netns", "del", &self.ns]);
        }
    }

    /// Removes namespaces (and with them their pairs) and root-side veths that a process
    /// of ours, now dead, left behind.
    fn sweep_dead(sp: &dyn Spawner) {
        let dead = |name: &str| -> bool {
            let Some(rest) = name.strip_prefix(NS_PREFIX) else { return false };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else { return false };
            pid > 0 && !crate::stat::alive(pid) && pid != std::process::id() as i32
        };
        if let Ok(list) = ip(sp, &["netns", "list"]) {
            for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
                if dead(name) {
                    let _ = ip(sp, &["netns", "del", name]);
                }
            }
        }
        // A pair whose namespace was never entered or already gone: its alias names the owner.
        if let Ok(links) = ip_list(sp, &["-o", "link", "show", "type", "veth"]) {
            for line in links.lines() {
                let Some(dev) = line.split(':').nth(1).map(|d| d.trim().split('@').next().unwrap_or("")) else {
                    continue;
                };
                let alias = line.split("alias ").nth(1).map(|a| a.split_whitespace().next().unwrap_or(""));
                if dev.starts_with("homer") && dev.ends_with('r') && alias.is_some_and(dead) {
                    let _ = ip(sp, &["link", "del", dev]);
                }
            }
        }
    }

    fn ip(sp: &dyn Spawner, args: &[&str]) -> Result<String, String> {
        tool(sp, "ip", args)?.stdout()
    }

    /// `ip args` for a listing (`ip link show`, `ip addr show`): a netlink dump, and a dump
    /// that another process's change to the links interrupts may leave entries out.
    /// iproute2 6.1 then says "Dump was interrupted and may be inconsistent." on stderr
    /// and still exits 0 (another version may exit non-zero). Such a listing is taken
    /// again, so a sweep cannot miss a dead process's pair and a subnet check cannot miss
    /// an address because tests ran side by side. Only listings come here: a command that
    /// changes something is never run twice.
    pub(super) fn ip_list(sp: &dyn Spawner, args: &[&str]) -> Result<String, String> {
        const ATTEMPTS: u32 = 50;
        for _ in 0..ATTEMPTS {
            let done = tool(sp, "ip", args)?;
            if !done.stderr.contains("Dump was interrupted") {
                return done.stdout();
            }
        }
        Err(format!("ip {}: every one of {ATTEMPTS} listings was interrupted by changes to the links", args.join(" ")))
    }

    /// What a bounded `program args` printed and how it ended.
    struct Done {
        shown: String,
        ok: Result<(), String>,
        stdout: String,
        stderr: String,
    }

    impl Done {
        /// Its stdout, or an error with the command and stderr.
        fn stdout(self) -> Result<String, String> {
            match self.ok {
                Ok(()) => Ok(self.stdout),
                Err(how) => Err(format!("{}: {how}: {}", self.shown, self.stderr.trim())),
            }
        }
    }

    /// Runs `program args` through `sp`, bounded.
    fn tool(sp: &dyn Spawner, program: &str, args: &[&str]) -> Result<Done, String> {
        let mut cmd = Command::new(program);
        cmd.args(args);
        let shown = format!("{program} {}", args.join(" "));
        let done = run_spawned(&mut cmd, deadline(30.0).max(Duration::from_secs(5)), |c| sp.spawn(c))
            .map_err(|e| format!("{shown}: {e} (is iproute2 installed?)"))?;
        sp.reaped(done.pid);
        let ok = if done.exit.success() { Ok(()) } else { Err(done.exit.describe()) };
        Ok(Done {
            shown,
            ok,
            stdout: String::from_utf8_lossy(&done.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&done.stderr).into_owned(),
        })
    }
}

#[cfg(not(target_os = "linux"))]
mod other {
    use super::*;

    /// Network namespaces do not exist here: [`Host::create`] always fails.
    pub struct Host {
        never: std::convert::Infallible,
    }

    impl Host {
        pub fn create(label: &str) -> Result<Host, String> {
            Host::create_with(label, Arc::new(DirectSpawner))
        }
        pub fn create_with(label: &str, _spawner: Arc<dyn Spawner>) -> Result<Host, String> {
            Err(format!("host {label}: {LINUX_ONLY}"))
        }
        pub fn label(&self) -> &str {
            match self.never {}
        }
        pub fn netns(&self) -> &str {
            match self.never {}
        }
        pub fn server_addr(&self) -> Ipv4Addr {
            match self.never {}
        }
        pub fn addr(&self) -> Ipv4Addr {
            match self.never {}
        }
        pub fn subnet(&self) -> String {
            match self.never {}
        }
        pub fn command(&self, _program: impl AsRef<std::ffi::OsStr>) -> Command {
            match self.never {}
        }
        pub fn partition(&self) -> Result<(), String> {
            match self.never {}
        }
        pub fn heal(&self) -> Result<(), String> {
            match self.never {}
        }
        pub fn delay(&self, _ms: u32, _jitter_ms: u32) -> Result<(), String> {
            match self.never {}
        }
        pub fn kill_all(&self) -> Result<usize, String> {
            match self.never {}
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    use crate::proc::run;
    use crate::time::deadline;

    fn root() -> bool {
        rustix::process::geteuid().is_root()
    }

    fn exists(what: &[&str], name: &str) -> bool {
        listing(what).split_whitespace().any(|w| w.split('@').next() == Some(name))
    }

    /// `ip what`'s output, bounded, taken again while another test's changes interrupt the
    /// dump (an interrupted listing may leave entries out).
    fn listing(what: &[&str]) -> String {
        super::linux::ip_list(&crate::postgres::DirectSpawner, what).unwrap()
    }

    /// One round trip from inside `host` to a listener on its server address: connect,
    /// send a byte, read it back, with `limit` on each step. `Err` says which step failed.
    fn round_trip(host: &Host, port: u16, limit: Duration) -> Result<(), String> {
        // A shell in the namespace: bash's /dev/tcp does the connect (bounded by `timeout`).
        let script = format!("exec 3<>/dev/tcp/{}/{port} && printf x >&3 && head -c1 <&3", host.server_addr());
        let mut cmd = host.command("timeout");
        cmd.arg(format!("{}", limit.as_secs_f64())).args(["bash", "-c", &script]);
        let done = run(&mut cmd, limit + deadline(10.0))?;
        if done.exit.success() && done.stdout == b"x" {
            Ok(())
        } else {
            Err(format!("{}: {}", done.exit.describe(), String::from_utf8_lossy(&done.stderr).trim()))
        }
    }

    /// Echoes one byte per connection, on a thread, until the listener is dropped.
    fn echo(addr: Ipv4Addr) -> (u16, std::thread::JoinHandle<()>) {
        let listener = TcpListener::bind((addr, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let t = std::thread::spawn(move || {
            for mut s in listener.incoming().flatten() {
                let mut b = [0u8; 1];
                if s.read_exact(&mut b).is_ok() {
                    let _ = s.write_all(&b);
                }
                if b == *b"q" {
                    break;
                }
            }
        });
        (port, t)
    }

    fn stop_echo(addr: Ipv4Addr, port: u16, t: std::thread::JoinHandle<()>) {
        let mut s = TcpStream::connect((addr, port)).unwrap();
        s.write_all(b"q").unwrap();
        t.join().unwrap();
    }

    #[test]
    fn a_host_reaches_the_server_address_until_partitioned_and_again_when_healed_and_leaves_nothing() {
        if !root() {
            let err = Host::create("a").err().expect("not root: refused");
            assert!(err.contains("needs root"), "{err}");
            return;
        }
        let host = Host::create("a").unwrap();
        let (ns, server) = (host.netns().to_owned(), host.server_addr());
        assert!(exists(&["netns", "list"], &ns), "{ns}");
        let (port, t) = echo(server);
        round_trip(&host, port, deadline(10.0)).expect("connected host");
        host.partition().unwrap();
        let started = Instant::now();
        let cut = round_trip(&host, port, Duration::from_secs(2));
        assert!(cut.is_err(), "a partitioned host reached the server");
        host.heal().unwrap();
        round_trip(&host, port, deadline(10.0)).expect("healed host");
        stop_echo(server, port, t);
        drop(host);
        assert!(!exists(&["netns", "list"], &ns), "{ns} left behind");
        // Its pair, known by its alias (another test may have claimed the same /30 since).
        let links = listing(&["-o", "link", "show"]);
        assert!(!links.contains(&format!("alias {ns}\n")) && !links.contains(&format!("alias {ns} ")), "{links}");
        eprintln!("partitioned round trip failed after {:?}: {}", started.elapsed(), cut.unwrap_err());
    }

    #[test]
    fn an_established_connection_hears_nothing_across_a_partition_and_no_reset_arrives() {
        if !root() {
            return;
        }
        let host = Host::create("b").unwrap();
        let listener = TcpListener::bind((host.server_addr(), 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        // The host's side: connect, read one byte, then wait for a second (up to 3 s).
        let script = format!(
            "exec 3<>/dev/tcp/{}/{port} && head -c1 <&3 && timeout 3 head -c1 <&3; echo \" status=$?\"",
            host.server_addr()
        );
        let mut cmd = host.command("bash");
        cmd.args(["-c", &script]).stdout(std::process::Stdio::piped());
        let (mut child, pipes) = crate::proc::Proc::spawn(&mut cmd).unwrap();
        let (mut server_side, _) = listener.accept().unwrap();
        server_side.write_all(b"1").unwrap();
        host.partition().unwrap();
        // Sent into the partition: never delivered while it lasts.
        server_side.write_all(b"2").unwrap();
        let exit = child.wait_exit(deadline(30.0)).expect("the host's reader gave up");
        let mut out = String::new();
        pipes.stdout.unwrap().read_to_string(&mut out).unwrap();
        host.heal().unwrap();
        assert!(exit.success(), "{}", exit.describe());
        // `timeout` ends the wait with 124: silence, not a reset or end of file.
        assert_eq!(out, "1 status=124\n");
    }

    #[test]
    fn delay_slows_the_host_or_says_the_kernel_has_no_netem() {
        if !root() {
            return;
        }
        let host = Host::create("c").unwrap();
        let (port, t) = echo(host.server_addr());
        match host.delay(300, 0) {
            Ok(()) => {
                let started = Instant::now();
                round_trip(&host, port, deadline(10.0)).unwrap();
                // Connect, send and read: at least three packets from the host each wait.
                assert!(started.elapsed() >= Duration::from_millis(600), "{:?}", started.elapsed());
                host.delay(0, 0).unwrap();
            }
            Err(e) => {
                assert!(e.contains("tc netem is not available") && e.contains("host c"), "{e}");
                let qdisc = Command::new("ip").args(["netns", "exec", host.netns(), "tc", "qdisc"]).output().unwrap();
                assert!(!String::from_utf8_lossy(&qdisc.stdout).contains("netem"), "nothing changed");
            }
        }
        round_trip(&host, port, deadline(10.0)).unwrap();
        stop_echo(host.server_addr(), port, t);
    }

    #[test]
    fn a_crashed_host_has_no_process_left_not_even_one_that_left_its_group() {
        if !root() {
            return;
        }
        let host = Host::create("k").unwrap();
        // A process that puts a grandchild in a session of its own, then waits.
        let mut cmd = host.command("sh");
        cmd.args(["-c", "setsid sleep 600 & echo $!; sleep 600"]).stdout(std::process::Stdio::piped());
        let (mut child, pipes) = crate::proc::Proc::spawn(&mut cmd).unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(pipes.stdout.unwrap()), &mut line).unwrap();
        let grandchild: i32 = line.trim().parse().unwrap();
        assert!(crate::stat::alive(grandchild));
        let killed = host.kill_all().unwrap();
        let exit = child.wait_exit(deadline(10.0)).expect("the leader died");
        assert_eq!(exit.signal(), Some(libc::SIGKILL));
        assert!(killed >= 2, "{killed}");
        // kill_all returns only once nothing in the namespace is alive.
        assert!(!crate::stat::alive(grandchild), "the grandchild in its own session survived");
    }

    #[test]
    fn hosts_get_distinct_subnets_and_a_dead_processs_namespace_is_swept() {
        if !root() {
            return;
        }
        let (a, b) = (Host::create("d1").unwrap(), Host::create("d2").unwrap());
        assert_ne!(a.subnet(), b.subnet());
        assert_ne!(a.netns(), b.netns());
        // What a killed test run leaves: a namespace named after a pid that no longer runs.
        let mut gone = Command::new("true");
        let finished = run(&mut gone, deadline(10.0)).unwrap();
        let stale = format!("homer-{}-1", finished.pid);
        assert!(Command::new("ip").args(["netns", "add", &stale]).status().unwrap().success());
        // And a pair it made but never moved into its namespace (named by its alias).
        let free = (0..=255u8).rev().map(|k| format!("homer{k}")).find(|name| {
            let pair = ["link", "add", &format!("{name}r"), "type", "veth", "peer", "name", &format!("{name}h")];
            Command::new("ip").args(pair).stderr(std::process::Stdio::null()).status().unwrap().success()
        });
        let root_if = format!("{}r", free.expect("a free veth name"));
        assert!(Command::new("ip").args(["link", "set", &root_if, "alias", &stale]).status().unwrap().success());
        let c = Host::create("d3").unwrap();
        let (left, pair_left) = (exists(&["netns", "list"], &stale), exists(&["-br", "link"], &root_if));
        if left {
            let _ = Command::new("ip").args(["netns", "del", &stale]).status();
        }
        if pair_left {
            let _ = Command::new("ip").args(["link", "del", &root_if]).status();
        }
        assert!(!left && !pair_left, "not swept: namespace {left}, pair {pair_left}");
        drop((a, b, c));
    }
}
