//! Job threads, kept for reuse.
//!
//! Every running job has a thread of its own (its in-process work, or the wait on its
//! child), as before; what changes is that a thread whose job ended waits for the next
//! one instead of exiting. Creating and tearing down an OS thread per job cost the engine
//! more than a no-op job's whole database work (a dozen system calls, and the engine
//! thread blocked in `clone` and `join`).
//!
//! Every task gets a thread at once — never a queue behind a running job: [`Pool::run`]
//! hands a task to a thread it knows is idle, or starts a new one. The `idle` count is
//! what makes that exact: a thread adds itself after its task returns, and `run` takes
//! one off for every task it queues, so there are never more queued tasks than idle
//! threads waiting for them. A thread idle for [`IDLE_EXIT`] retires (taking itself off
//! the count first, so `run` cannot count on it), and every thread exits when the pool is
//! dropped.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long an idle thread waits for another task before it exits.
pub const IDLE_EXIT: Duration = Duration::from_secs(30);

type Task = Box<dyn FnOnce() + Send>;

pub struct Pool {
    name: &'static str,
    tasks: Sender<Task>,
    shared: Arc<Shared>,
    idle_exit: Duration,
}

struct Shared {
    queue: Mutex<Receiver<Task>>,
    idle: AtomicUsize,
    /// Threads alive, busy or idle.
    threads: AtomicUsize,
}

impl Pool {
    /// An empty pool; threads are named `<name>` and started on demand.
    pub fn new(name: &'static str) -> Pool {
        Pool::with_idle_exit(name, IDLE_EXIT)
    }

    pub fn with_idle_exit(name: &'static str, idle_exit: Duration) -> Pool {
        let (tasks, queue) = mpsc::channel();
        let shared =
            Arc::new(Shared { queue: Mutex::new(queue), idle: AtomicUsize::new(0), threads: AtomicUsize::new(0) });
        Pool { name, tasks, shared, idle_exit }
    }

    /// Runs `task` on a thread of its own now: an idle one, or a new one.
    pub fn run(&self, task: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
        let task: Task = Box::new(task);
        let claimed_idle =
            self.shared.idle.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        if claimed_idle {
            // An idle thread counted itself and waits on the queue (or is about to).
            self.tasks.send(task).expect("the pool holds its own receiver");
            return Ok(());
        }
        let shared = self.shared.clone();
        let idle_exit = self.idle_exit;
        shared.threads.fetch_add(1, Ordering::SeqCst);
        let spawned = std::thread::Builder::new().name(self.name.to_owned()).spawn({
            let shared = shared.clone();
            move || worker(task, &shared, idle_exit)
        });
        if spawned.is_err() {
            shared.threads.fetch_sub(1, Ordering::SeqCst);
        }
        spawned.map(drop)
    }

    /// Threads alive now, busy or idle.
    pub fn threads(&self) -> usize {
        self.shared.threads.load(Ordering::SeqCst)
    }
}

/// A task that panics takes only itself down, not the thread (the job's result is then
/// never reported, as when it ran on a thread of its own).
fn call(task: Task) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(task));
}

fn worker(first: Task, shared: &Shared, idle_exit: Duration) {
    call(first);
    loop {
        shared.idle.fetch_add(1, Ordering::SeqCst);
        let next = {
            let queue = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.recv_timeout(idle_exit)
        };
        match next {
            Ok(task) => call(task),
            Err(RecvTimeoutError::Timeout) => {
                // Retire only if no task was promised to us meanwhile: take ourselves off
                // the idle count; if it is already zero, `run` counted on us and its
                // task is on the way.
                let retired =
                    shared.idle.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
                if retired {
                    break;
                }
                let queue = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
                match queue.recv() {
                    Ok(task) => {
                        drop(queue);
                        call(task);
                    }
                    Err(_) => break,
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    shared.threads.fetch_sub(1, Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;
    use std::time::Instant;

    const DEADLINE: Duration = Duration::from_secs(20);

    #[test]
    fn a_finished_thread_takes_the_next_task() {
        let pool = Pool::new("test-pool");
        let (tx, rx) = channel();
        for i in 0..50 {
            let tx = tx.clone();
            pool.run(move || tx.send((i, std::thread::current().id())).unwrap()).unwrap();
            // Each task ends before the next is queued, so one thread serves them all.
            assert_eq!(rx.recv_timeout(DEADLINE).unwrap().0, i);
            let until = Instant::now() + DEADLINE;
            while pool.shared.idle.load(Ordering::SeqCst) == 0 {
                assert!(Instant::now() < until, "the thread never came back idle");
                std::thread::yield_now();
            }
        }
        assert_eq!(pool.threads(), 1);
    }

    #[test]
    fn a_task_never_waits_behind_a_running_one() {
        let pool = Pool::new("test-pool");
        let (release_tx, release_rx) = channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        let (started_tx, started_rx) = channel();
        // Ten tasks that all block until released: each must start, so each has a thread.
        for i in 0..10 {
            let (release_rx, started_tx) = (release_rx.clone(), started_tx.clone());
            pool.run(move || {
                started_tx.send(i).unwrap();
                let _ = release_rx.lock().unwrap().recv();
            })
            .unwrap();
        }
        let mut started: Vec<i32> = (0..10).map(|_| started_rx.recv_timeout(DEADLINE).unwrap()).collect();
        started.sort();
        assert_eq!(started, (0..10).collect::<Vec<_>>());
        assert_eq!(pool.threads(), 10);
        drop(release_tx);
    }

    #[test]
    fn idle_threads_retire_and_dropping_the_pool_ends_them_all() {
        let pool = Pool::with_idle_exit("test-pool", Duration::from_millis(50));
        let (tx, rx) = channel();
        for _ in 0..4 {
            let tx = tx.clone();
            pool.run(move || tx.send(()).unwrap()).unwrap();
        }
        for _ in 0..4 {
            rx.recv_timeout(DEADLINE).unwrap();
        }
        let shared = pool.shared.clone();
        let until = Instant::now() + DEADLINE;
        while shared.threads.load(Ordering::SeqCst) > 0 {
            assert!(Instant::now() < until, "idle threads did not retire");
            std::thread::yield_now();
        }
        // A task after they retired still runs.
        let tx2 = tx.clone();
        pool.run(move || tx2.send(()).unwrap()).unwrap();
        rx.recv_timeout(DEADLINE).unwrap();
        drop(pool);
        let until = Instant::now() + DEADLINE;
        while shared.threads.load(Ordering::SeqCst) > 0 {
            assert!(Instant::now() < until, "dropping the pool left threads behind");
            std::thread::yield_now();
        }
    }
}
