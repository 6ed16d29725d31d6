//! What the daemon's engine reads and writes on PostgreSQL besides its `JobStore`: the
//! wake-up channel (`NOTIFY`/`LISTEN` on [`CHANNEL`], the [`Listener`] thread), operator
//! cancel requests, the next due time, retention and the counters' event.
//!
//! Two connections besides the store's: the listener's, which does nothing but wait for
//! notifications, and the engine's reads (cancel requests, the next due time, retention,
//! counters). Waiting for a notification never happens on the engine thread: the
//! listener blocks on its own connection and wakes the engine through the engine's
//! wake-up channel, so an idle engine asks the server nothing between its claim polls.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, Transaction};

use super::jobs::PgResult;
use super::Target;
use crate::job::JobId;

/// The channel `enqueue`, `cancel`, `retry`, every recorded outcome and every recovery of
/// orphans notify (`wait` and `logs -f` listen too, for the job they follow): a daemon
/// listening on it claims at once instead of at its next poll.
pub const CHANNEL: &str = "homer_jobs";

/// How long the listener blocks on its connection before it looks whether it should
/// stop. A wait ends early at every notification; this bounds only how long a stopped
/// listener's thread outlives its [`Listener`].
const LISTEN_WAIT: Duration = Duration::from_millis(500);

/// After a failed connect, the listener tries again after this long, doubled per failure
/// up to [`RECONNECT_MAX`]. (The engine's claim poll covers the time without wake-ups.)
const RECONNECT_FIRST: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(1);

/// Starts listening on [`CHANNEL`].
pub fn listen(client: &mut Client) -> PgResult<()> {
    client.batch_execute(&format!("LISTEN {CHANNEL}"))
}

/// Wakes the daemons listening on [`CHANNEL`] once `tx` commits (not before, not if it
/// rolls back). `what` is the payload (`enqueue`, `cancel 7`, `outcome`, ...), for a
/// reader watching the channel by hand; daemons wake on any.
pub fn notify(tx: &mut Transaction<'_>, what: &str) -> PgResult<()> {
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &what])?;
    Ok(())
}

/// A thread that owns a `LISTEN`ing connection and blocks on it: each notification (or
/// a reconnect, which may have missed some) sets the "changed" flag and calls `wake`
/// once per false→true change of the flag, so a burst of notifications costs the engine
/// one pass. A broken connection is replaced (and `LISTEN`ed again) with a backoff; the
/// engine never waits for any of it.
///
/// Dropping it asks the thread to stop; the thread ends within [`LISTEN_WAIT`] (or one
/// bounded connect attempt) and closes its connection. It is not joined: a daemon that
/// is exiting need not wait for it.
pub struct Listener {
    changed: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Listener {
    /// Starts the thread on `client`, which already `LISTEN`s (a start that cannot
    /// listen fails before it becomes active); `target` reconnects it.
    pub fn start(client: Client, target: Target, wake: Box<dyn Fn() + Send>) -> std::io::Result<Listener> {
        let changed = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (changed.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name(String::from("homerd-listen"))
            .spawn(move || listen_loop(client, &target, &c, &s, &*wake))?;
        Ok(Listener { changed, stop, thread })
    }

    /// Whether a notification arrived (or the connection was replaced) since the last
    /// call.
    pub fn take_changed(&self) -> bool {
        self.changed.swap(false, Ordering::SeqCst)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Ends a reconnect backoff at once; a wait on the connection ends by its timeout.
        self.thread.thread().unpark();
    }
}

fn listen_loop(first: Client, target: &Target, changed: &AtomicBool, stop: &AtomicBool, wake: &dyn Fn()) {
    let note = || {
        if !changed.swap(true, Ordering::SeqCst) {
            wake();
        }
    };
    let mut client = Some(first);
    let mut backoff = RECONNECT_FIRST;
    while !stop.load(Ordering::SeqCst) {
        let Some(c) = client.as_mut() else {
            match target.connect().map_err(|e| e.to_string()).and_then(|mut c| {
                listen(&mut c).map_err(|e| e.to_string())?;
                Ok(c)
            }) {
                Ok(c) => {
                    client = Some(c);
                    backoff = RECONNECT_FIRST;
                    crate::events::info("listener.resumed", "Listening for wake-ups again").emit();
                    // Whatever was notified while no connection listened is lost: look.
                    note();
                }
                Err(_) => {
                    std::thread::park_timeout(backoff);
                    backoff = (backoff * 2).min(RECONNECT_MAX);
                }
            }
            continue;
        };
        match wait_for_notification(c, LISTEN_WAIT) {
            Ok(true) => note(),
            Ok(false) => {}
            // Broken (the server restarted, or keepalives gave up): reconnect.
            Err(e) => {
                client = None;
                if !stop.load(Ordering::SeqCst) {
                    crate::events::warn(
                        "listener.lost",
                        "Lost the connection that listens for wake-ups; claiming every second until it is back",
                    )
                    .field("error", e.to_string())
                    .emit();
                }
            }
        }
    }
}

/// Whether a notification arrived within `wait` (and takes every one queued). `Err`: the
/// connection broke.
pub fn wait_for_notification(client: &mut Client, wait: Duration) -> PgResult<bool> {
    let mut notes = client.notifications();
    let mut any = notes.timeout_iter(wait).next()?.is_some();
    while notes.iter().next()?.is_some() {
        any = true;
    }
    Ok(any)
}

/// Running jobs of incarnation `epoch` with a pending cancel request.
pub fn cancel_requests(client: &mut Client, epoch: i64) -> PgResult<Vec<JobId>> {
    let rows = client.query(
        "SELECT id FROM job_queue WHERE cancel_requested_at IS NOT NULL AND status = 'running' AND claim_epoch = $1",
        &[&epoch],
    )?;
    Ok(rows.iter().map(|r| JobId(r.get(0))).collect())
}

/// The server's now and the earliest `run_after` of a pending job: when the next one is
/// due, as a delay from now in milliseconds (`None`: nothing pending).
pub fn next_due_in(client: &mut Client) -> PgResult<Option<i64>> {
    let row = client
        .query_one("SELECT (SELECT MIN(run_after) FROM job_queue WHERE status = 'pending') - homer_now_ms()", &[])?;
    Ok(row.get::<_, Option<i64>>(0))
}

/// Deletes up to `limit` terminal jobs that ended more than `retention_ms` ago (server
/// clock), with their runs; returns their ids.
pub fn prune(client: &mut Client, retention_ms: i64, limit: i64) -> PgResult<Vec<i64>> {
    let mut tx = client.transaction()?;
    let rows = tx.query(
        "DELETE FROM job_queue WHERE id IN (
             SELECT id FROM job_queue
             WHERE status IN ('completed', 'failed', 'cancelled') AND completed_at < homer_now_ms() - $1
             ORDER BY completed_at LIMIT $2 FOR UPDATE SKIP LOCKED)
         RETURNING id",
        &[&retention_ms, &limit],
    )?;
    let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    super::jobs::bump_metric(&mut tx, "jobs_pruned", ids.len() as i64)?;
    tx.commit()?;
    Ok(ids)
}
