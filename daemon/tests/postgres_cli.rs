//! The operator commands on the PostgreSQL backend, against a real server: `migrate`,
//! `enqueue` (with `--key` and `--from`), `list`, `show`, `status` (with workers),
//! `cancel` (pending, and running with its owner acting on the `NOTIFY`), `retry`,
//! `wait`, `logs` for a run another host ran, `doctor`, `backup` refused, an unmigrated
//! database (65) and an unreachable server (75, the password never shown).
//!
//! Each test gets its own throwaway server (`homer_testkit::postgres::PgServer`, stopped
//! on drop). Where a test needs a daemon's part — a worker row, a claimed job, the owner
//! recording a cancellation — it plays it through the library's own statements
//! (`homerd::postgres::{workers, jobs}`), so the rows are exactly what a daemon writes.
#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect the database directly

mod common;

use common::{deadline, Output, Sandbox};
use homer_testkit::postgres::PgServer;
use std::collections::BTreeSet;

use homerd::job::{ClaimLimits, ClaimRef, Epoch, JobId};
use homerd::postgres::{jobs, ops, workers};
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};
use serde_json::Value;

/// A sandbox with its own server, and the URL of its (empty) database `homer`.
struct Pg {
    sb: Sandbox,
    server: PgServer,
}

impl Pg {
    fn new() -> Pg {
        let sb = Sandbox::new();
        let server = PgServer::start(sb.dir.path()).unwrap_or_else(|e| panic!("PostgreSQL for the test: {e}"));
        Pg { sb, server }
    }

    /// A real `homerd run` on this queue, active.
    fn daemon(&self) -> common::Daemon {
        let mut c = self.sb.cmd();
        c.args(["--database", &self.url(), "run"]);
        let mut d = common::Daemon::spawn(c);
        d.wait_event("daemon.active");
        d
    }

    fn url(&self) -> String {
        self.server.url()
    }

    /// `homerd --database URL ARGS`.
    fn run(&self, args: &[&str]) -> Output {
        let url = self.url();
        let mut all = vec!["--database", url.as_str()];
        all.extend_from_slice(args);
        self.sb.run(&all)
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(out.code, Some(0), "homerd {args:?}: {}{}", out.stdout, out.stderr);
        out.stdout
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("homerd {args:?}: {e}: {out}"))
    }

    fn migrated() -> Pg {
        let pg = Pg::new();
        pg.ok(&["migrate"]);
        pg
    }

    fn enqueue(&self, args: &[&str]) -> i64 {
        let mut all = vec!["enqueue"];
        all.extend_from_slice(args);
        self.ok(&all).trim().parse().unwrap()
    }

    fn client(&self) -> Client {
        Client::connect(&self.url(), NoTls).unwrap()
    }

    fn status_of(&self, id: i64) -> String {
        self.json(&["show", &id.to_string(), "--json"])["job"]["status"].as_str().unwrap().to_owned()
    }
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap_or_else(|| panic!("not an object: {v}")).keys().cloned().collect()
}

/// A worker registered as a daemon registers itself; `stale_ms` its threshold.
fn register(c: &mut Client, name: &str, stale_ms: i64) -> Epoch {
    let me = workers::Registration { name: name.to_owned(), identity: homerd::identity::current().unwrap(), stale_ms };
    workers::register(c, &me).unwrap()
}

/// Claims every ready job for `epoch` as a daemon does (guarded transaction, server clock).
fn claim(c: &mut Client, epoch: Epoch, worker: &str) -> Vec<homerd::job::Claimed> {
    let mut tx = c.transaction().unwrap();
    assert!(workers::guard(&mut tx, epoch).unwrap(), "worker {epoch:?} is live");
    let now = jobs::server_now(&mut tx).unwrap();
    let limits = ClaimLimits { global: 10, lanes: Default::default(), default_lane: 10, batch: 10 };
    let tokens: Vec<String> = (0..limits.batch).map(|_| jobs::random_token()).collect();
    let claimed = jobs::claim(&mut tx, epoch, worker, &limits, now, &tokens).unwrap();
    tx.commit().unwrap();
    claimed
}

/// A connection of worker `worker` (threshold `stale_ms`), registered, that has claimed
/// every ready job as a daemon on another host would: the connection, its epoch, its claims.
fn claimed_by(pg: &Pg, worker: &str, stale_ms: i64) -> (Client, Epoch, Vec<homerd::job::Claimed>) {
    let mut c = pg.client();
    let epoch = register(&mut c, worker, stale_ms);
    let claimed = claim(&mut c, epoch, worker);
    (c, epoch, claimed)
}

/// Ends job `id`'s claim `token` as its owner does, with `end` (`jobs::complete`,
/// `jobs::cancel_running`...) in a guarded transaction on the server clock; it must apply.
fn end_as_owner(
    c: &mut Client,
    epoch: Epoch,
    id: i64,
    token: String,
    end: fn(&mut postgres::Transaction<'_>, &ClaimRef, i64) -> Result<bool, postgres::Error>,
) {
    let mut tx = c.transaction().unwrap();
    assert!(workers::guard(&mut tx, epoch).unwrap());
    let now = jobs::server_now(&mut tx).unwrap();
    let claim = ClaimRef { epoch, id: JobId(id), token };
    assert!(end(&mut tx, &claim, now).unwrap());
    tx.commit().unwrap();
}

/// The same command's stdout keys on SQLite (a fresh home), for shape comparisons.
fn sqlite_json(args: &[&str]) -> (Sandbox, Vec<Value>) {
    let sb = Sandbox::new();
    let out = sb.run(&["migrate"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let out = sb.run(&["enqueue", "--key", "k", "sleep", "1s"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let out = sb.run(args);
    assert_eq!(out.code, Some(0), "sqlite {args:?}: {}", out.stderr);
    let values = out.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    (sb, values)
}

#[test]
fn migrate_applies_once_and_then_reports_up_to_date() {
    let pg = Pg::new();
    let first = pg.json(&["migrate", "--json"]);
    let known = homerd::postgres::schema::MIGRATIONS.len();
    assert_eq!(first["created"], true, "{first}");
    assert_eq!(first["applied"].as_array().unwrap().len(), known, "{first}");
    assert_eq!(first["migrations"], known);
    assert!(first["database"].as_str().unwrap().starts_with("postgres://homer@127.0.0.1:"), "{first}");
    let second = pg.json(&["migrate", "--json"]);
    assert_eq!(second["created"], false, "{second}");
    assert_eq!(second["applied"], serde_json::json!([]), "{second}");
    let text = pg.ok(&["migrate"]);
    assert!(text.contains("is up to date"), "{text}");
    let rows = pg.server.psql("SELECT count(*) FROM homer_migrations").unwrap();
    assert_eq!(rows.trim(), known.to_string());
}

#[test]
fn an_unmigrated_database_is_refused_with_65_and_left_alone() {
    let pg = Pg::new();
    for args in [
        &["list"][..],
        &["status", "--json"],
        &["show", "1"],
        &["enqueue", "noop"],
        &["cancel", "1"],
        &["retry", "1"],
        &["wait", "1"],
        &["logs", "1"],
    ] {
        let out = pg.run(args);
        assert_eq!(out.code, Some(65), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains("homerd migrate"), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains("0 of"), "{args:?}: {}", out.stderr);
    }
    let tables = pg.server.psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").unwrap();
    assert_eq!(tables.trim(), "0", "a refused command created nothing");
}

#[test]
fn enqueue_list_show_and_status_have_the_sqlite_shapes() {
    let pg = Pg::migrated();
    let a = pg.enqueue(&["noop"]);
    let b = pg.enqueue(&["--lane", "slow", "--key", "k", "sleep", "1s"]);
    assert_eq!((a, b), (1, 2));

    let list: Vec<Value> = pg.ok(&["list", "--json"]).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(list.iter().map(|j| j["id"].as_i64().unwrap()).collect::<Vec<_>>(), vec![2, 1], "newest first");
    assert_eq!(list[0]["lane"], "slow");
    assert_eq!(list[0]["key"], "k");
    assert_eq!(list[0]["args"], serde_json::json!(["1s"]));
    let (_sb, sqlite_list) = sqlite_json(&["list", "--json"]);
    assert_eq!(keys(&list[0]), keys(&sqlite_list[0]), "list --json: the same keys as on SQLite");
    let text = pg.ok(&["list", "--lane", "slow"]);
    assert!(text.starts_with("    ID  STATUS"), "{text}");
    assert!(text.contains("sleep") && !text.contains("noop"), "{text}");

    let show = pg.json(&["show", "2", "--json"]);
    let (_sb, sqlite_show) = sqlite_json(&["show", "1", "--json"]);
    assert_eq!(keys(&show), keys(&sqlite_show[0]));
    assert_eq!(keys(&show["job"]), keys(&sqlite_show[0]["job"]));
    assert_eq!(show["runs"], serde_json::json!([]));
    let out = pg.run(&["show", "99"]);
    assert_eq!(out.code, Some(66), "{}", out.stderr);

    // A worker, registered as a daemon registers itself, shows in status.
    let mut c = pg.client();
    let epoch = register(&mut c, "testhost/boot:/home/x", 60_000);
    let status = pg.json(&["status", "--json"]);
    let (_sb, sqlite_status) = sqlite_json(&["status", "--json"]);
    let mut expected = keys(&sqlite_status[0]);
    expected.insert(String::from("workers"));
    assert_eq!(keys(&status), expected, "status --json: SQLite's keys plus workers");
    assert_eq!(status["jobs"]["pending"], 2, "{status}");
    assert_eq!(status["lanes"]["slow"]["pending"], 1, "{status}");
    assert_eq!(status["daemon"]["state"], "active", "{status}");
    let w = &status["workers"][0];
    assert_eq!(w["incarnation"], epoch.0, "{status}");
    assert_eq!(w["name"], "testhost/boot:/home/x");
    assert_eq!(w["stale"], false);
    assert_eq!(w["running"], 0);
    assert!(w["seen_ms_ago"].as_i64().unwrap() >= 0);
    let text = pg.ok(&["status"]);
    assert!(text.contains(&format!("worker:   {} testhost/boot:/home/x", epoch.0)), "{text}");
    assert!(text.contains("pending 2"), "{text}");

    // A stopped worker is no longer listed.
    let mut tx = c.transaction().unwrap();
    assert_eq!(workers::stop(&mut tx, epoch).unwrap(), 0, "no job left running");
    tx.commit().unwrap();
    let status = pg.json(&["status", "--json"]);
    assert_eq!(status["workers"], serde_json::json!([]), "{status}");
    assert_eq!(status["daemon"]["state"], "none", "{status}");
}

#[test]
fn enqueue_key_creates_at_most_once_also_from_a_file() {
    let pg = Pg::migrated();
    let first = pg.json(&["enqueue", "--json", "--key", "nightly", "noop"]);
    assert_eq!(first, serde_json::json!({"id": 1, "created": true}));
    let again = pg.json(&["enqueue", "--json", "--key", "nightly", "sleep", "5s"]);
    assert_eq!(again, serde_json::json!({"id": 1, "created": false}));
    let file = pg.sb.dir.path().join("jobs.jsonl");
    std::fs::write(
        &file,
        "{\"kind\": \"noop\", \"key\": \"nightly\"}\n{\"kind\": \"noop\", \"key\": \"b\"}\n{\"kind\": \"fail\"}\n",
    )
    .unwrap();
    let out = pg.ok(&["enqueue", "--json", "--from", file.to_str().unwrap()]);
    let acks: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(
        acks,
        vec![
            serde_json::json!({"id": 1, "created": false}),
            serde_json::json!({"id": 2, "created": true}),
            serde_json::json!({"id": 3, "created": true}),
        ]
    );
    assert_eq!(pg.server.psql("SELECT count(*) FROM job_queue").unwrap().trim(), "3");
    // A bad line: nothing enqueued, 65 naming the file and line.
    std::fs::write(&file, "{\"kind\": \"noop\"}\n{\"kind\": \"nope\"}\n").unwrap();
    let out = pg.run(&["enqueue", "--from", file.to_str().unwrap()]);
    assert_eq!(out.code, Some(65), "{}", out.stderr);
    assert!(out.stderr.contains("line 2") && out.stderr.contains("jobs.jsonl"), "{}", out.stderr);
    assert_eq!(pg.server.psql("SELECT count(*) FROM job_queue").unwrap().trim(), "3");
}

#[test]
fn a_delay_is_applied_to_the_servers_clock() {
    let pg = Pg::migrated();
    let id = pg.enqueue(&["--run-after", "1h", "noop"]);
    let delay = pg
        .server
        .psql(&format!("SELECT run_after - created_at, run_after_set_at = created_at FROM job_queue WHERE id = {id}"))
        .unwrap();
    let (ms, same) = delay.trim().split_once('|').unwrap_or_else(|| panic!("{delay}"));
    assert_eq!(ms.parse::<i64>().unwrap(), 3_600_000, "{delay}");
    assert_eq!(same, "t");
}

#[test]
fn cancel_a_pending_job_then_a_finished_one() {
    let pg = Pg::migrated();
    let id = pg.enqueue(&["noop"]);
    let out = pg.json(&["cancel", &id.to_string(), "--json"]);
    assert_eq!(out, serde_json::json!({"id": id, "result": "cancelled"}));
    assert_eq!(pg.status_of(id), "cancelled");
    let again = pg.run(&["cancel", &id.to_string()]);
    assert_eq!(again.code, Some(3), "{}", again.stderr);
    assert!(again.stderr.contains("already cancelled"), "{}", again.stderr);
    let none = pg.run(&["cancel", "42"]);
    assert_eq!(none.code, Some(66), "{}", none.stderr);
    // wait on a cancelled job: 5.
    let out = pg.run(&["wait", &id.to_string()]);
    assert_eq!(out.code, Some(5), "{}", out.stderr);
}

#[test]
fn cancel_a_running_job_files_a_request_its_owner_acts_on() {
    let pg = Pg::migrated();
    let id = pg.enqueue(&["sleep", "1h"]);
    let (mut owner, epoch, claimed) = claimed_by(&pg, "testhost/boot:/home/owner", 60_000);
    assert_eq!(claimed.len(), 1);
    let token = claimed[0].token.clone();
    owner.batch_execute(&format!("LISTEN {}", ops::CHANNEL)).unwrap();

    // The command files the request and waits for the owner; the owner wakes on the
    // NOTIFY (committed with the request) and records the cancellation.
    let mut cmd = pg.sb.cmd();
    cmd.args(["--database", &pg.url(), "cancel", &id.to_string(), "--json"]);
    let running = std::thread::spawn(move || common::run_bounded(cmd, deadline(60.0)));
    let note = owner
        .notifications()
        .timeout_iter(deadline(30.0))
        .next()
        .unwrap()
        .unwrap_or_else(|| panic!("no NOTIFY on {} within the deadline", ops::CHANNEL));
    assert_eq!(note.channel(), ops::CHANNEL);
    assert_eq!(note.payload(), format!("cancel {id}"));
    let requested = pg.server.psql(&format!("SELECT cancel_requested_at IS NOT NULL FROM job_queue WHERE id = {id}"));
    assert_eq!(requested.unwrap().trim(), "t");
    end_as_owner(&mut owner, epoch, id, token, jobs::cancel_running);
    let out = running.join().unwrap();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let v: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(v, serde_json::json!({"id": id, "result": "cancelled"}));
    assert_eq!(pg.status_of(id), "cancelled");
}

#[test]
fn cancel_a_running_job_whose_worker_is_gone_leaves_the_request_for_recovery() {
    let pg = Pg::migrated();
    let id = pg.enqueue(&["sleep", "1h"]);
    let worker = "testhost/boot:/home/gone";
    let (mut c, epoch, claimed) = claimed_by(&pg, worker, 1_000);
    assert_eq!(claimed.len(), 1);
    // Last heard from a minute ago: overdue past its 1 s threshold.
    pg.server
        .psql(&format!("UPDATE homer_workers SET seen_at = seen_at - 60000 WHERE incarnation = {}", epoch.0))
        .unwrap();
    let out = pg.run(&["cancel", &id.to_string()]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("its worker is not active"), "{}", out.stdout);
    let row = pg.server.psql(&format!("SELECT status, cancel_requested_at IS NOT NULL FROM job_queue WHERE id = {id}"));
    assert_eq!(row.unwrap().trim(), "running|t");
    // doctor fails on the overdue, unfenced worker, and on no live worker.
    let stale = format!("FAIL stale workers      not fenced yet: {} {worker}", epoch.0);
    pg.run(&["doctor"]).assert_doctor(1, &["PASS database", "PASS migrations", "FAIL daemon running", &stale]);
    // A worker's recovery (fence + recover_orphans) cancels it, as the request asked.
    let other = register(&mut c, "testhost/boot:/home/other", 60_000);
    let mut tx = c.transaction().unwrap();
    assert!(workers::guard(&mut tx, other).unwrap());
    assert_eq!(workers::fence(&mut tx, &[epoch.0], other, "test").unwrap(), vec![epoch.0]);
    let now = jobs::server_now(&mut tx).unwrap();
    let rec = jobs::recover_orphans(&mut tx, &[epoch.0], 0, 2, "test", now).unwrap();
    tx.commit().unwrap();
    assert_eq!(rec.cancelled, vec![JobId(id)]);
    assert_eq!(pg.status_of(id), "cancelled");
    let out = pg.run(&["doctor", "--json"]);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(out.code, Some(0), "{v}");
    assert_eq!(v["ok"], true, "{v}");
}

#[test]
fn retry_a_failed_job() {
    let pg = Pg::migrated();
    let id = pg.enqueue(&["fail"]);
    let out = pg.run(&["retry", &id.to_string()]);
    assert_eq!(out.code, Some(3), "a pending job is not retried: {}", out.stderr);
    pg.server
        .psql(&format!(
            "UPDATE job_queue SET status = 'failed', attempts = 3, completed_at = homer_now_ms(), error = 'boom' WHERE id = {id}"
        ))
        .unwrap();
    let v = pg.json(&["retry", &id.to_string(), "--json"]);
    assert_eq!(v, serde_json::json!({"id": id, "result": "requeued"}));
    let show = pg.json(&["show", &id.to_string(), "--json"]);
    assert_eq!(show["job"]["status"], "pending", "{show}");
    assert_eq!(show["job"]["attempts"], 0, "{show}");
    assert_eq!(show["job"]["error"], Value::Null, "{show}");
    let out = pg.run(&["retry", "77"]);
    assert_eq!(out.code, Some(66), "{}", out.stderr);
}

#[test]
fn logs_of_a_run_on_another_host_name_that_host() {
    let pg = Pg::migrated();
    let id = pg.enqueue(&["exec", "--", "true"]);
    // Registered as host, boot id and home; the run names the claiming process, as
    // rows written before runs carried the registered name do.
    let (name, worker) = ("otherhost/0f0f:/srv/homer", "otherhost/4242");
    let mut c = pg.client();
    let epoch = register(&mut c, name, 60_000);
    assert_eq!(claim(&mut c, epoch, worker).len(), 1);
    let out = pg.run(&["logs", &id.to_string()]);
    assert_eq!(out.code, Some(66), "{}", out.stderr);
    assert!(out.stderr.contains(name) && out.stderr.contains(worker), "{}", out.stderr);
    let show = pg.ok(&["show", &id.to_string()]);
    assert!(show.contains(&format!("worker {worker}")), "{show}");
    assert!(show.contains("not in this home"), "{show}");
    let out = pg.run(&["logs", &id.to_string(), "--run", "2"]);
    assert_eq!(out.code, Some(66), "no run 2: {}", out.stderr);
}

/// A run this home's daemon ran is read here even when it wrote nothing: `logs` says so
/// and exits 0, `logs -f` follows it to its end — not 66 "ran elsewhere" (the run's
/// `worker` is the daemon's process, not its registered name).
#[test]
fn logs_of_a_silent_run_in_this_home_are_not_elsewhere() {
    let pg = Pg::new();
    let _d = pg.daemon();
    let silent = pg.enqueue(&["exec", "--", "true"]);
    let out = pg.run(&["wait", &silent.to_string()]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let out = pg.run(&["logs", &silent.to_string()]);
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), ""), "{}", out.stderr);
    assert!(out.stderr.contains("has no output here"), "{}", out.stderr);
    // `show` names the run's worker as registered: its host, boot and this home.
    let show = pg.ok(&["show", &silent.to_string()]);
    let me = format!("worker {}/", homerd::platform::hostname());
    assert!(show.contains(&me) && show.contains(&format!(":{},", pg.sb.home().display())), "{show}");
    for args in [vec!["noop"], vec!["exec", "--", "sh", "-c", "sleep 0.2"]] {
        let id = pg.enqueue(&args);
        let out = pg.run(&["logs", "-f", &id.to_string()]);
        assert_eq!((out.code, out.stdout.as_str()), (Some(0), ""), "{args:?}: {}", out.stderr);
    }
}

#[test]
fn backup_is_refused_with_64_pointing_to_pg_dump() {
    let pg = Pg::migrated();
    let dest = pg.sb.dir.path().join("copy.db");
    let out = pg.run(&["backup", dest.to_str().unwrap()]);
    assert_eq!(out.code, Some(64), "{}", out.stderr);
    assert!(out.stderr.contains("pg_dump"), "{}", out.stderr);
    assert!(!dest.exists());
}

#[test]
fn an_unreachable_server_is_75_and_never_shows_the_password() {
    let sb = Sandbox::new();
    let url = "postgres://homer:sekret@127.0.0.1:1/homer";
    for args in [
        &["list"][..],
        &["status"],
        &["status", "--json"],
        &["enqueue", "noop"],
        &["enqueue", "--json", "noop"],
        &["migrate"],
        &["cancel", "1"],
        &["show", "1", "--json"],
    ] {
        let mut all = vec!["--database", url];
        all.extend_from_slice(args);
        let out = sb.run(&all);
        assert_eq!(out.code, Some(75), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains("127.0.0.1:1"), "{args:?} names the server: {}", out.stderr);
        assert!(!out.stderr.contains("sekret") && !out.stdout.contains("sekret"), "{args:?}: {}", out.stderr);
    }
    // Through the environment too; doctor reports it as a failed check.
    let mut c = sb.cmd();
    c.env("HOMER_DATABASE", url).args(["doctor", "--json"]);
    let out = common::run_bounded(c, deadline(30.0));
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stdout.contains("\"ok\":false") && out.stdout.contains("connect"), "{}", out.stdout);
    assert!(!out.stdout.contains("sekret") && !out.stderr.contains("sekret"));
    assert!(!sb.home().join("homer.db").exists(), "no SQLite database was made beside it");
}

#[test]
fn wait_sees_a_job_end_through_the_server() {
    let pg = Pg::migrated();
    let id = pg.enqueue(&["noop"]);
    let out = pg.run(&["wait", &id.to_string(), "--timeout", "200ms", "--json"]);
    assert_eq!(out.code, Some(6), "{}", out.stderr);
    let (mut c, epoch, claimed) = claimed_by(&pg, "testhost/boot:/home/w", 60_000);
    end_as_owner(&mut c, epoch, id, claimed[0].token.clone(), jobs::complete);
    let out = pg.run(&["wait", &id.to_string(), "--json"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let v: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(v["status"], "completed");
    assert_eq!(v["ended"], true);
}

/// `wait` on PostgreSQL hears a job end from the daemon's notification: it exits before
/// its first unprompted re-read of the job (`RECHECK_SERVER` after it started) could have
/// told it.
#[test]
fn wait_is_woken_by_the_daemons_notification() {
    let pg = Pg::new();
    let (url, mut d) = (pg.url(), pg.daemon());
    // Long enough that `wait` has surely read the job running, and listens, before it ends.
    let id = pg.enqueue(&["exec", "--", "sleep", "3"]);
    common::wait_job_event(&mut d, "job.started", id);
    let spawned = std::time::Instant::now();
    let mut w = pg.sb.cmd();
    w.args(["--database", &url, "wait", &id.to_string()]);
    let (mut proc, _lines) = homer_testkit::Proc::spawn_with_events(
        w.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()),
        homer_testkit::Parse::None,
    )
    .unwrap();
    common::wait_job_event(&mut d, "job.completed", id);
    let completed = std::time::Instant::now();
    let exit = proc.wait_exit(deadline(30.0)).expect("wait exits once the job completed");
    assert_eq!(exit.code(), Some(0), "{}", exit.describe());
    let took = spawned.elapsed();
    eprintln!("wait exited {:?} after job.completed was read", completed.elapsed());
    assert!(
        took < homerd::cmd::wait::RECHECK_SERVER,
        "wait took {took:?}: only its periodic re-read told it, not the notification"
    );
}

#[test]
fn with_a_real_daemon_the_commands_see_its_work() {
    let pg = Pg::new();
    let mut d = pg.daemon();

    let id = pg.enqueue(&["exec", "--", "sh", "-c", "echo out of $HOMER_JOB_ID"]);
    let out = pg.run(&["wait", &id.to_string()]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(pg.ok(&["logs", &id.to_string()]), format!("out of {id}\n"), "read from this home");

    let long = pg.enqueue(&["sleep", "1h"]);
    common::wait_job_event(&mut d, "job.claimed", long);
    let status = pg.json(&["status", "--json"]);
    assert_eq!(status["daemon"]["state"], "active", "{status}");
    assert_eq!(status["workers"].as_array().unwrap().len(), 1, "{status}");
    assert_eq!(status["workers"][0]["running"], 1, "{status}");
    assert_eq!(status["running"][0]["id"], long, "{status}");
    let out = pg.ok(&["cancel", &long.to_string()]);
    assert_eq!(out, format!("job {long} cancelled (its run was stopped)\n"));
    common::wait_job_event(&mut d, "job.cancelled", long);
    pg.run(&["doctor"]).assert_doctor(0, &["PASS daemon running"]);
}

#[test]
fn refused_credentials_are_77_and_never_show_the_password() {
    let pg = Pg::migrated();
    pg.server.psql("CREATE ROLE shut NOLOGIN").unwrap();
    let url = pg.url().replacen("postgres://homer@", "postgres://shut:sekret@", 1);
    assert!(url.contains("shut:sekret@"), "{url}");
    for args in [&["list"][..], &["status", "--json"], &["enqueue", "--json", "noop"]] {
        let mut all = vec!["--database", url.as_str()];
        all.extend_from_slice(args);
        let out = pg.sb.run(&all);
        assert_eq!(out.code, Some(77), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains("shut:***@"), "{args:?}: {}", out.stderr);
        assert!(!out.stderr.contains("sekret") && !out.stdout.contains("sekret"), "{args:?}: {}", out.stderr);
    }
}

#[test]
fn concurrent_enqueuers_of_one_key_make_one_job() {
    let pg = Pg::migrated();
    let url = pg.url();
    let procs: Vec<_> = (0..8)
        .map(|i| {
            let mut c = pg.sb.cmd();
            c.args(["--database", &url, "enqueue", "--json", "--key", "once", "fail", &format!("from {i}")]);
            std::thread::spawn(move || common::run_bounded(c, deadline(60.0)))
        })
        .collect();
    let acks: Vec<Value> = procs
        .into_iter()
        .map(|p| {
            let out = p.join().unwrap();
            assert_eq!(out.code, Some(0), "{}", out.stderr);
            serde_json::from_str(out.stdout.trim()).unwrap()
        })
        .collect();
    assert_eq!(acks.iter().filter(|a| a["created"] == true).count(), 1, "{acks:?}");
    assert!(acks.iter().all(|a| a["id"] == acks[0]["id"]), "{acks:?}");
    assert_eq!(pg.server.psql("SELECT count(*) FROM job_queue").unwrap().trim(), "1");
}

/// `homerd --database URL run ARGS`, as a daemon whose JSON events the test reads.
fn daemon(pg: &Pg, args: &[&str]) -> common::Daemon {
    let url = pg.url();
    let mut c = pg.sb.cmd();
    c.args(["--database", &url, "run"]).args(args);
    let mut d = common::Daemon::spawn(c);
    d.wait_event("daemon.active");
    d
}

#[test]
fn a_daemon_reports_its_counters_on_postgres_too() {
    let pg = Pg::migrated();
    pg.enqueue(&["--run-after", "1h", "--lane", "later", "noop"]);
    // Housekeeping (retention, then the counters) at the engine's start and every six
    // heartbeats.
    let mut d = daemon(&pg, &["--set", "heartbeat_interval=200ms"]);
    let m = d.wait_for("a daemon.metrics event", deadline(20.0), |v| v["event"] == "daemon.metrics");
    assert_eq!(m["level"], "debug", "{m}");
    assert_eq!(m["jobs_pending"], 1, "{m}");
    assert_eq!(m["jobs_completed"], 0, "{m}");
    assert_eq!(m["lanes"]["later"]["pending"], 1, "{m}");
    assert_eq!(m["oldest_pending_age_ms"], Value::Null, "nothing pending is due yet: {m}");
    // The queue's counters (the `metrics` table), as `status --json` shows them.
    let status = pg.json(&["status", "--json"]);
    let counters = status["metrics"].as_object().unwrap();
    assert!(!counters.is_empty(), "{status}");
    for (name, _) in counters {
        assert!(m[name].is_i64(), "counter {name} missing from the event: {m}");
    }

    // The counts are read at each pass, not once.
    let id = pg.enqueue(&["noop"]);
    common::wait_job_event(&mut d, "job.completed", id);
    let m = d.next("a daemon.metrics event after the job completed", |v| v["event"] == "daemon.metrics");
    assert_eq!(m["jobs_completed"], 1, "{m}");
    assert_eq!(m["jobs_pending"], 1, "{m}");
}

#[test]
fn the_listener_reconnects_when_its_connection_is_cut() {
    let pg = Pg::migrated();
    let mut d = daemon(&pg, &[]);
    let listening = |c: &mut Client| -> Vec<i32> {
        let rows = c.query("SELECT pid FROM pg_stat_activity WHERE query = 'LISTEN homer_jobs'", &[]).unwrap();
        rows.iter().map(|r| r.get(0)).collect()
    };
    let mut c = pg.client();
    let before = listening(&mut c);
    assert_eq!(before.len(), 1, "one connection listens: {before:?}");
    let cut: bool = c.query_one("SELECT pg_terminate_backend($1)", &[&before[0]]).unwrap().get(0);
    assert!(cut);
    d.wait_event("listener.lost");
    d.wait_event("listener.resumed");
    let after = listening(&mut c);
    assert_eq!(after.len(), 1, "{after:?}");
    assert_ne!(after, before, "a new connection listens");
    // And the daemon still takes work.
    let id = pg.enqueue(&["noop"]);
    common::wait_job_event(&mut d, "job.completed", id);
}
