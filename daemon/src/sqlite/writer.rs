//! The single writer: one connection on one thread, batching every queued operation into
//! one `BEGIN IMMEDIATE` transaction (group commit) whose first statement checks that the
//! leader epoch is still ours. If it is not, no operation in the batch runs and every
//! caller gets [`WriteError::Fenced`].
//!
//! Each operation runs inside its own savepoint, so one failing operation is rolled back
//! alone and the rest of the batch still commits. Operations marked
//! [`SyncMode::Full`] (acknowledgements) make the whole batch commit with
//! `synchronous=FULL`; so does every batch when the connection was opened FULL
//! (`durability = "full"`): its own setting is the floor.

use std::sync::mpsc;
use std::thread::JoinHandle;

use rusqlite::{Connection, Transaction, TransactionBehavior};
use tokio::sync::oneshot;

use super::leader;

/// Operations taken into one transaction at most.
const MAX_BATCH: usize = 256;

/// The durability an operation needs: a batch commits with the strongest of its members'.
/// (Not `Sync`, which would shadow the marker trait; `config::Durability` is the setting a
/// connection opens with.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SyncMode {
    /// `synchronous=NORMAL` (durable across process crashes; heartbeats, claims).
    Normal,
    /// `synchronous=FULL` (durable across power loss; acknowledgements).
    Full,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("fenced: the database's epoch is no longer ours")]
    Fenced,
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the writer has stopped")]
    Closed,
}

trait Op: Send {
    fn sync(&self) -> SyncMode;
    fn apply(&mut self, tx: &Transaction<'_>) -> rusqlite::Result<()>;
    fn finish(self: Box<Self>, outcome: Result<(), WriteError>);
}

struct TypedOp<R, F> {
    sync: SyncMode,
    f: Option<F>,
    value: Option<R>,
    reply: oneshot::Sender<Result<R, WriteError>>,
}

impl<R, F> Op for TypedOp<R, F>
where
    R: Send,
    F: FnOnce(&Transaction<'_>) -> rusqlite::Result<R> + Send,
{
    fn sync(&self) -> SyncMode {
        self.sync
    }

    fn apply(&mut self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        let f = self.f.take().expect("op applied once");
        self.value = Some(f(tx)?);
        Ok(())
    }

    fn finish(self: Box<Self>, outcome: Result<(), WriteError>) {
        // Every error of every operation passes here: the one place to notice corruption.
        if let Err(WriteError::Sqlite(e)) = &outcome {
            super::note_corruption(e);
        }
        let TypedOp { value, reply, .. } = *self;
        let _ = reply.send(outcome.map(|()| value.expect("applied op has a value")));
    }
}

enum Msg {
    Op(Box<dyn Op>),
    /// Operations that must share one transaction (see [`Writer::call_together_blocking`]).
    Group(Vec<Box<dyn Op>>),
    Stop(oneshot::Sender<Connection>),
    /// A closure run on the writer thread with no transaction open (see
    /// [`Writer::between_transactions_blocking`]).
    Between(Box<dyn FnOnce() + Send>),
}

/// Handle to the writer thread. Cloneable; [`Writer::stop`] returns the connection.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Msg>,
}

pub struct WriterThread {
    handle: JoinHandle<()>,
}

impl Writer {
    /// Starts the writer thread on `conn`, guarding every transaction with `epoch`.
    pub fn start(conn: Connection, epoch: i64) -> (Writer, WriterThread) {
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name(String::from("homerd-writer"))
            .spawn(move || run(conn, epoch, rx))
            .expect("spawn writer thread");
        (Writer { tx }, WriterThread { handle })
    }

    fn submit<R, F>(&self, sync: SyncMode, f: F) -> oneshot::Receiver<Result<R, WriteError>>
    where
        R: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> rusqlite::Result<R> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let op = Box::new(TypedOp { sync, f: Some(f), value: None, reply });
        if let Err(mpsc::SendError(Msg::Op(op))) = self.tx.send(Msg::Op(op)) {
            op.finish(Err(WriteError::Closed));
        }
        rx
    }

    /// Queues `f` and waits for its batch to commit.
    pub async fn call<R, F>(&self, sync: SyncMode, f: F) -> Result<R, WriteError>
    where
        R: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> rusqlite::Result<R> + Send + 'static,
    {
        self.submit(sync, f).await.unwrap_or(Err(WriteError::Closed))
    }

    /// Queues every `(sync, f)` as one unit: they go into the same transaction, so they
    /// share one commit (one fsync), while each still runs in its own savepoint and gets
    /// its own result, as if queued one by one. Waits for that commit.
    ///
    /// Queuing them one by one would not do: the writer may wake on the first and commit
    /// it alone before the rest arrive.
    pub fn call_together_blocking<R, F>(&self, ops: Vec<(SyncMode, F)>) -> Vec<Result<R, WriteError>>
    where
        R: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> rusqlite::Result<R> + Send + 'static,
    {
        let mut group: Vec<Box<dyn Op>> = Vec::with_capacity(ops.len());
        let mut rxs = Vec::with_capacity(ops.len());
        for (sync, f) in ops {
            let (reply, rx) = oneshot::channel();
            group.push(Box::new(TypedOp { sync, f: Some(f), value: None, reply }));
            rxs.push(rx);
        }
        if let Err(mpsc::SendError(Msg::Group(group))) = self.tx.send(Msg::Group(group)) {
            group.into_iter().for_each(|op| op.finish(Err(WriteError::Closed)));
        }
        rxs.into_iter().map(|rx| rx.blocking_recv().unwrap_or(Err(WriteError::Closed))).collect()
    }

    /// Blocking form of [`Writer::call`] for code outside the async runtime.
    pub fn call_blocking<R, F>(&self, sync: SyncMode, f: F) -> Result<R, WriteError>
    where
        R: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> rusqlite::Result<R> + Send + 'static,
    {
        self.submit(sync, f).blocking_recv().unwrap_or(Err(WriteError::Closed))
    }

    /// Runs `f` on the writer thread after the operations already queued have committed
    /// and before any later one begins: with no write transaction of this process open.
    /// For test hooks that freeze the whole process (a `stop` failpoint): frozen inside a
    /// transaction it would hold SQLite's write lock, which no real pause of the job's
    /// worker implies. Returns when `f` has run (or at once if the writer has stopped).
    pub fn between_transactions_blocking(&self, f: impl FnOnce() + Send + 'static) {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let run = move || {
            f();
            let _ = tx.send(());
        };
        if self.tx.send(Msg::Between(Box::new(run))).is_ok() {
            let _ = rx.recv();
        }
    }

    /// Stops the thread after the operations already queued; returns the connection.
    pub async fn stop(&self) -> Option<Connection> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Msg::Stop(tx)).ok()?;
        rx.await.ok()
    }
}

impl WriterThread {
    pub fn join(self) {
        let _ = self.handle.join();
    }
}

fn run(mut conn: Connection, epoch: i64, rx: mpsc::Receiver<Msg>) {
    // The connection opens with the configured durability (`open_writer`): a FULL one
    // commits everything FULL, and a batch of NORMAL operations must not lower it.
    let floor = match conn.pragma_query_value(None, "synchronous", |r| r.get::<_, i64>(0)) {
        Ok(level) if level >= 2 => SyncMode::Full,
        _ => SyncMode::Normal,
    };
    let mut current_sync = None;
    while let Ok(first) = rx.recv() {
        let mut batch: Vec<Box<dyn Op>> = Vec::new();
        let mut stop = None;
        let mut between = None;
        match first {
            Msg::Op(op) => batch.push(op),
            // A group stays whole, even past MAX_BATCH.
            Msg::Group(ops) => batch.extend(ops),
            Msg::Stop(reply) => stop = Some(reply),
            Msg::Between(f) => between = Some(f),
        }
        while stop.is_none() && between.is_none() && batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(Msg::Op(op)) => batch.push(op),
                Ok(Msg::Group(ops)) => batch.extend(ops),
                Ok(Msg::Stop(reply)) => stop = Some(reply),
                Ok(Msg::Between(f)) => between = Some(f),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            commit_batch(&mut conn, epoch, floor, batch, &mut current_sync);
        }
        // Everything queued before it has committed; nothing after it has begun.
        if let Some(f) = between {
            f();
        }
        if let Some(reply) = stop {
            let _ = reply.send(conn);
            return;
        }
    }
}

fn commit_batch(
    conn: &mut Connection,
    epoch: i64,
    floor: SyncMode,
    mut batch: Vec<Box<dyn Op>>,
    current: &mut Option<SyncMode>,
) {
    let wanted = batch.iter().map(|op| op.sync()).fold(floor, SyncMode::max);
    if *current != Some(wanted) {
        let pragma = if wanted == SyncMode::Full { "PRAGMA synchronous = FULL" } else { "PRAGMA synchronous = NORMAL" };
        if let Err(e) = conn.prepare_cached(pragma).and_then(|mut s| s.execute([])) {
            return fail_all(batch, e);
        }
        *current = Some(wanted);
    }
    // IMMEDIATE takes the write lock up front, waiting in the busy handler. A deferred
    // transaction would start as a read (the epoch check) and upgrade at the first write,
    // which fails at once with SQLITE_BUSY when another connection committed meanwhile.
    let behavior = if crate::mutant::active(crate::mutant::DEFERRED_CLAIM) {
        TransactionBehavior::Deferred
    } else {
        TransactionBehavior::Immediate
    };
    let tx = match conn.transaction_with_behavior(behavior) {
        Ok(tx) => tx,
        Err(e) => return fail_all(batch, e),
    };
    match leader::check_epoch(&tx, epoch) {
        Ok(true) => {}
        Ok(false) => {
            drop(tx);
            batch.into_iter().for_each(|op| op.finish(Err(WriteError::Fenced)));
            return;
        }
        Err(e) => {
            drop(tx);
            return fail_all(batch, e);
        }
    }
    if batch.len() == 1 {
        // Alone in its transaction, an operation needs no savepoint: a failure rolls the
        // transaction back. (Savepoints are not free: SQLite copies every page an
        // operation changes into a statement journal first.)
        let mut op = batch.pop().expect("one op");
        return match op.apply(&tx) {
            Ok(()) => match tx.commit() {
                Ok(()) => op.finish(Ok(())),
                Err(e) => fail_all(vec![op], e),
            },
            Err(e) => {
                drop(tx);
                op.finish(Err(WriteError::Sqlite(e)));
            }
        };
    }
    let mut outcomes: Vec<Result<(), WriteError>> = Vec::with_capacity(batch.len());
    // Set when the group cannot go on as one transaction (see below): every member then
    // fails with this error.
    let mut ended: Option<rusqlite::Error> = None;
    for op in batch.iter_mut() {
        // Prepared once per connection: these run twice for every operation.
        let savepoint = |sql: &str| tx.prepare_cached(sql).and_then(|mut s| s.execute([])).map(drop);
        if let Err(e) = savepoint("SAVEPOINT op") {
            ended = Some(e);
            break;
        }
        match op.apply(&tx) {
            Ok(()) => match savepoint("RELEASE op") {
                Ok(()) => outcomes.push(Ok(())),
                // Its writes would stay in the transaction, answered as failed.
                Err(e) => {
                    ended = Some(e);
                    break;
                }
            },
            // On some errors (a cache spill that finds the disk full, an I/O error, out of
            // memory) SQLite rolls back the whole transaction, not just the statement: the
            // members before this one are undone with it, and a later member's `SAVEPOINT`
            // would open a transaction of its own, committed by its `RELEASE` without the
            // epoch check.
            Err(e) if tx.is_autocommit() => {
                ended = Some(e);
                break;
            }
            Err(e) => match tx.execute_batch("ROLLBACK TO op; RELEASE op") {
                Ok(()) => outcomes.push(Err(WriteError::from(e))),
                // Its partial writes would stay in the transaction.
                Err(undo) => {
                    ended = Some(undo);
                    break;
                }
            },
        }
    }
    if let Some(e) = ended {
        drop(tx);
        return fail_all(batch, e);
    }
    match tx.commit() {
        Ok(()) => batch.into_iter().zip(outcomes).for_each(|(op, o)| op.finish(o)),
        Err(e) => fail_all(batch, e),
    }
}

fn fail_all(batch: Vec<Box<dyn Op>>, e: rusqlite::Error) {
    let msg = e.to_string();
    let raw = match &e {
        rusqlite::Error::SqliteFailure(err, _) => Some(err.extended_code),
        _ => None,
    };
    for op in batch {
        // rusqlite::Error is not Clone; every op gets an equivalent error.
        let err = match raw {
            Some(code) => rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), Some(msg.clone())),
            None => rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
                Some(msg.clone()),
            ),
        };
        op.finish(Err(WriteError::Sqlite(err)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::sqlite::schema;

    fn setup() -> (tempfile::TempDir, std::path::PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("homer.db");
        schema::create(&path, &Clock::default()).unwrap();
        let c = Connection::open(&path).unwrap();
        c.execute("UPDATE leader SET epoch = 5", []).unwrap();
        (t, path)
    }

    /// Runs `test` with a writer under `epoch` on a database whose leader row is at epoch
    /// 5, then stops the writer (dropping it) and joins its thread.
    fn with_writer(epoch: i64, test: impl FnOnce(&Writer, &std::path::Path)) {
        let (_t, path) = setup();
        let (w, th) = Writer::start(Connection::open(&path).unwrap(), epoch);
        test(&w, &path);
        drop(w);
        th.join();
    }

    /// `PRAGMA synchronous` as a batch of `sync` operations commits with it (1 NORMAL, 2 FULL).
    fn synchronous_in(w: &Writer, sync: SyncMode) -> i64 {
        w.call_blocking(sync, |tx| tx.query_row("PRAGMA synchronous", [], |r| r.get(0))).unwrap()
    }

    #[test]
    fn a_full_connection_commits_every_batch_full() {
        // As `open_writer` opens it for each `durability`.
        for (opened, normal_commits) in [("NORMAL", 1), ("FULL", 2)] {
            let (_t, path) = setup();
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "synchronous", opened).unwrap();
            let (w, th) = Writer::start(conn, 5);
            // NORMAL operations commit as the connection was opened; acknowledgements FULL.
            assert_eq!(synchronous_in(&w, SyncMode::Normal), normal_commits, "{opened}");
            assert_eq!(synchronous_in(&w, SyncMode::Full), 2, "{opened}");
            assert_eq!(synchronous_in(&w, SyncMode::Normal), normal_commits, "{opened}: after a FULL batch");
            drop(w);
            th.join();
        }
    }

    fn count(path: &std::path::Path) -> i64 {
        Connection::open(path).unwrap().query_row("SELECT COUNT(*) FROM job_queue", [], |r| r.get(0)).unwrap()
    }

    const INSERT: &str = "INSERT INTO job_queue (kind, created_at) VALUES ('noop', 0)";

    /// An op that inserts a row, then fails.
    fn insert_then_fail(tx: &Transaction<'_>) -> rusqlite::Result<usize> {
        tx.execute(INSERT, [])?;
        tx.execute("INSERT INTO no_such_table VALUES (1)", [])
    }

    #[test]
    fn between_transactions_runs_after_what_was_queued_and_with_no_write_lock_held() {
        with_writer(5, |w, path| {
            // Queued without waiting, so they are still in the writer's queue (or its batch)
            // when the barrier is sent.
            let pending: Vec<_> = (0..50).map(|_| w.submit(SyncMode::Normal, |tx| tx.execute(INSERT, []))).collect();
            let (seen_tx, seen_rx) = std::sync::mpsc::channel();
            let probe = path.to_path_buf();
            w.between_transactions_blocking(move || {
                let other = Connection::open(&probe).unwrap();
                // A write transaction open in the writer would make this fail with SQLITE_BUSY.
                let took_the_write_lock = other.execute_batch("BEGIN IMMEDIATE; ROLLBACK;").is_ok();
                let n: i64 = other.query_row("SELECT COUNT(*) FROM job_queue", [], |r| r.get(0)).unwrap();
                seen_tx.send((took_the_write_lock, n)).unwrap();
            });
            assert_eq!(seen_rx.recv().unwrap(), (true, 50), "every op queued before it had committed");
            for rx in pending {
                assert_eq!(rx.blocking_recv().unwrap().unwrap(), 1);
            }
        });
    }

    #[test]
    fn ops_commit_under_our_epoch() {
        with_writer(5, |w, path| {
            let n = w.call_blocking(SyncMode::Full, |tx| tx.execute(INSERT, [])).unwrap();
            assert_eq!(n, 1);
            assert_eq!(count(path), 1);
        });
    }

    #[test]
    fn a_fenced_batch_writes_nothing() {
        with_writer(4, |w, path| {
            for _ in 0..3 {
                assert!(matches!(
                    w.call_blocking(SyncMode::Normal, |tx| tx.execute(INSERT, [])),
                    Err(WriteError::Fenced)
                ));
            }
            assert_eq!(count(path), 0);
        });
    }

    #[test]
    fn a_failing_op_alone_in_its_batch_leaves_nothing_behind() {
        with_writer(5, |w, path| {
            let bad = w.call_blocking(SyncMode::Full, insert_then_fail);
            assert!(matches!(bad, Err(WriteError::Sqlite(_))), "{bad:?}");
            assert_eq!(count(path), 0, "the failing op's first insert must be rolled back");
            assert_eq!(w.call_blocking(SyncMode::Normal, |tx| tx.execute(INSERT, [])).unwrap(), 1);
            assert_eq!(count(path), 1, "the writer goes on after a failed batch");
        });
    }

    #[test]
    fn a_failing_op_is_rolled_back_alone() {
        with_writer(5, |w, path| {
            let bad = w.submit(SyncMode::Normal, insert_then_fail);
            let good = w.submit(SyncMode::Normal, |tx| tx.execute(INSERT, []));
            assert!(bad.blocking_recv().unwrap().is_err());
            assert_eq!(good.blocking_recv().unwrap().unwrap(), 1);
            assert_eq!(count(path), 1, "the failing op's first insert must be rolled back");
        });
    }

    #[test]
    fn a_group_keeps_its_order_and_a_failing_member_is_rolled_back_alone() {
        with_writer(5, |w, path| {
            type F = Box<dyn FnOnce(&Transaction<'_>) -> rusqlite::Result<i64> + Send>;
            let insert = |sync| -> (SyncMode, F) {
                (
                    sync,
                    Box::new(|tx: &Transaction<'_>| {
                        tx.execute(INSERT, [])?;
                        tx.query_row("SELECT COUNT(*) FROM job_queue", [], |r| r.get(0))
                    }),
                )
            };
            let bad: (SyncMode, F) =
                (SyncMode::Normal, Box::new(|tx: &Transaction<'_>| insert_then_fail(tx).map(|_| 0)));
            // What the group commits with, seen from inside it: one FULL member makes it FULL.
            let sync: (SyncMode, F) = (
                SyncMode::Normal,
                Box::new(|tx: &Transaction<'_>| tx.query_row("PRAGMA synchronous", [], |r| r.get(0))),
            );
            let got = w.call_together_blocking(vec![
                insert(SyncMode::Normal),
                bad,
                insert(SyncMode::Full),
                insert(SyncMode::Normal),
                sync,
            ]);
            let got: Vec<Option<i64>> = got.iter().map(|r| r.as_ref().ok().copied()).collect();
            assert_eq!(
                got,
                vec![Some(1), None, Some(2), Some(3), Some(2)],
                "counts in order, then synchronous=FULL (2)"
            );
            assert_eq!(count(path), 3);
        });
    }

    /// On some errors SQLite ends the whole transaction itself, not just the statement: a
    /// cache spill that finds the disk full, an I/O error, running out of memory. Then
    /// there is no savepoint to roll back to and no transaction to commit, and a later
    /// member's `SAVEPOINT` would open (and its `RELEASE` commit) a transaction of its
    /// own, outside the epoch check. A member that rolls the transaction back stands in
    /// for those errors here (they cannot be made on demand in a unit test): the group
    /// writes nothing, and every member is told the error that ended it.
    #[test]
    fn a_member_that_ends_the_transaction_fails_the_whole_group() {
        with_writer(5, |w, path| {
            type F = Box<dyn FnOnce(&Transaction<'_>) -> rusqlite::Result<usize> + Send>;
            let insert =
                || -> (SyncMode, F) { (SyncMode::Normal, Box::new(|tx: &Transaction<'_>| tx.execute(INSERT, []))) };
            let ends_it: (SyncMode, F) = (
                SyncMode::Normal,
                Box::new(|tx: &Transaction<'_>| {
                    tx.execute(INSERT, [])?;
                    tx.execute_batch("ROLLBACK")?;
                    Err(rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                        Some(String::from("database or disk is full")),
                    ))
                }),
            );
            let got = w.call_together_blocking(vec![insert(), ends_it, insert(), insert()]);
            let told: Vec<bool> = got.iter().map(|r| format!("{r:?}").contains("disk is full")).collect();
            assert_eq!(told, vec![true; 4], "each member is told what ended the transaction: {got:?}");
            assert_eq!(count(path), 0, "nothing of the group was written");
            assert_eq!(w.call_blocking(SyncMode::Normal, |tx| tx.execute(INSERT, [])).unwrap(), 1);
            assert_eq!(count(path), 1, "the writer goes on");
        });
    }

    #[test]
    fn a_stopped_writer_answers_every_member_of_a_group() {
        let (_t, path) = setup();
        let (w, th) = Writer::start(Connection::open(&path).unwrap(), 5);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        assert!(rt.block_on(w.stop()).is_some());
        th.join();
        let got = w.call_together_blocking(vec![(SyncMode::Normal, |tx: &Transaction<'_>| tx.execute(INSERT, [])); 2]);
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|r| matches!(r, Err(WriteError::Closed))), "{got:?}");
    }

    #[test]
    fn many_callers_share_batches() {
        with_writer(5, |w, path| {
            let rxs: Vec<_> = (0..500).map(|_| w.submit(SyncMode::Normal, |tx| tx.execute(INSERT, []))).collect();
            for rx in rxs {
                rx.blocking_recv().unwrap().unwrap();
            }
            assert_eq!(count(path), 500);
        });
    }
}
