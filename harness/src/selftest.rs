//! Support for testing the harness itself (its own tests and homerd's scenario binary use
//! it): a scenario that leaves processes running, and a `/proc` scan for every process a
//! harness run started — its marker carries the harness's pid. Linux only where it reads
//! `/proc`.

use std::path::Path;
use std::time::{Duration, Instant};

/// Fast daemon settings for a self-test: heartbeats every 100 ms, stale after 1 s.
pub const FAST_SETTINGS: &str = r#"[settings]
heartbeat_interval = "100ms"
stale_threshold = "1s"
kill_grace = "100ms"
lock_check_interval = "100ms"
"#;

/// A self-test scenario of the harness: `description`, then `header` (more header keys
/// and tables, each line ending in a newline), then daemon `a` started and waited for
/// until it is active, then `steps`.
pub fn self_test(description: &str, header: &str, steps: &str) -> String {
    format!(
        r#"description = "{description}"
covers = ["harness self-test"]
mutant_none = "a test of the harness itself"
{header}
[[step]]
start = "a"

[[step]]
wait = "event"
target = "a"
event = "daemon.active"

{steps}"#
    )
}

/// A scenario that leaves a daemon, a job and an escaped grandchild running, then waits
/// takes `final_step`.
pub fn long_scenario(final_step: &str) -> String {
    self_test(
        "a daemon, a job and a grandchild that escaped its group, then a long wait",
        &format!("\n{FAST_SETTINGS}"),
        &format!(
            r#"[[step]]
enqueue = "probe"
sleep = "120s"
grandchild = "120s"
grandchild_setsid = true

[[step]]
wait = "effects"
starts = 1

{final_step}
"#
        ),
    )
}

/// A last step that never holds, waited on for `timeout`.
pub fn never(timeout: &str) -> String {
    format!("[[step]]\nwait = \"sql\"\nquery = \"SELECT 1\"\nrows = [[2]]\ntimeout = \"{timeout}\"")
}

/// A last step that lets `duration` pass and succeeds.
pub fn linger(duration: &str) -> String {
    format!("[[step]]\nwait = \"duration\"\nduration = \"{duration}\"")
}

pub use homer_testkit::deadline;

/// Live (non-zombie) processes started by the harness process `harness_pid`.
pub fn started_by(harness_pid: u32) -> Vec<u32> {
    let needle = format!("{}={harness_pid}-", crate::procs::MARKER_VAR);
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if !homer_testkit::alive(pid as i32) {
            continue;
        }
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        if env.split(|&b| b == 0).any(|kv| kv.starts_with(needle.as_bytes())) {
            out.push(pid);
        }
    }
    out
}

/// Wait until at least `n` processes of the run are alive.
pub fn wait_for_processes(harness_pid: u32, n: usize) -> Vec<u32> {
    let end = Instant::now() + deadline(30.0);
    loop {
        let found = started_by(harness_pid);
        if found.len() >= n {
            return found;
        }
        assert!(Instant::now() < end, "only {} processes of the run appeared: {found:?}", found.len());
        // Polling /proc: there is no event to wait on.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Write `text` as `name` into `dir`.
pub fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write a scenario file");
    p
}
