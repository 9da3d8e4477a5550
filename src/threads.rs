//! `Threads`: named threads that share a context, joined against a deadline.
//!
//! Go starts a goroutine with `go f()` and forgets it; finding out later
//! which one did not stop takes goleak or a stack dump. Here every thread
//! has a name, its `JoinHandle` is kept, and
//! [`join_deadline`](Threads::join_deadline) says which threads finished
//! (with their result, or their panic as a value) and which are still
//! running, by name and age. A thread still running stays owned by the
//! `Threads`: nothing is detached silently.
//!
//! ```
//! use std::time::Duration;
//! use quiesce::{Context, Threads};
//!
//! let mut threads = Threads::new(&Context::background());
//! threads.spawn("ticker", |ctx| {
//!     let mut ticks = 0;
//!     while ctx.sleep(Duration::from_millis(1)).is_ok() {
//!         ticks += 1;
//!     }
//!     ticks
//! }).unwrap();
//! threads.spawn("stubborn", |_ctx| 0).unwrap();
//!
//! let report = threads.shutdown(Duration::from_secs(5)); // cancel, then join
//! assert!(report.running.is_empty());
//! assert_eq!(report.finished.len(), 2);
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::context::{CancelGuard, Context};
use crate::panic::Panic;

/// Named threads under one context; see the [module docs](self).
///
/// # Drop
///
/// Dropping `Threads` cancels their context and joins every thread,
/// blocking until they have all returned; every five seconds it logs (at
/// `warn`) the ones it is still waiting for. Call
/// [`shutdown`](Threads::shutdown) first to bound the wait.
pub struct Threads<T = ()> {
    ctx: Context,
    guard: CancelGuard,
    /// Threads whose code has not finished, by spawn order.
    running: BTreeMap<u64, Entry<T>>,
    /// Threads whose code has finished, not yet joined.
    exited: Vec<Entry<T>>,
    exited_tx: Sender<u64>,
    exited_rx: Receiver<u64>,
    next_id: u64,
}

struct Entry<T> {
    id: u64,
    name: String,
    started: Instant,
    handle: JoinHandle<T>,
}

/// What [`Threads::join_deadline`] found.
#[derive(Debug)]
#[must_use = "the report says which threads are still running"]
pub struct JoinReport<T> {
    /// Threads that returned (or panicked), in the order they were spawned.
    pub finished: Vec<Finished<T>>,
    /// Threads still running at the deadline, oldest first. They are still
    /// owned by the `Threads` and can be joined again.
    pub running: Vec<Running>,
}

/// A thread that has returned.
#[derive(Debug)]
pub struct Finished<T> {
    /// The name it was spawned with.
    pub name: String,
    /// What it returned, or its panic.
    pub result: Result<T, Panic>,
}

/// A thread still running at a join deadline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Running {
    /// The name it was spawned with.
    pub name: String,
    /// How long it has been running.
    pub age: Duration,
}

impl fmt::Display for Running {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (running for {:.1?})", self.name, self.age)
    }
}

/// Sends the thread's id when its code is over (returned or unwinding).
struct ExitNotice {
    id: u64,
    tx: Sender<u64>,
}

impl Drop for ExitNotice {
    fn drop(&mut self) {
        let _ = self.tx.send(self.id);
    }
}

impl<T> Threads<T> {
    /// An empty set whose threads get a child of `parent` as their context.
    pub fn new(parent: &Context) -> Threads<T> {
        let (ctx, guard) = parent.with_cancel();
        let (exited_tx, exited_rx) = crossbeam_channel::unbounded();
        Threads {
            ctx,
            guard,
            running: BTreeMap::new(),
            exited: Vec::new(),
            exited_tx,
            exited_rx,
            next_id: 0,
        }
    }
}

impl<T: Send + 'static> Threads<T> {
    /// Starts a thread named `name` running `f` with the shared context.
    ///
    /// # Errors
    ///
    /// The OS error when the thread cannot be started (`f` is dropped).
    pub fn spawn<F>(&mut self, name: impl Into<String>, f: F) -> io::Result<()>
    where
        F: FnOnce(&Context) -> T + Send + 'static,
    {
        let name = name.into();
        let id = self.next_id;
        self.next_id += 1;
        let ctx = self.ctx.clone();
        let notice = ExitNotice {
            id,
            tx: self.exited_tx.clone(),
        };
        let handle = crate::leak::spawn(name.clone(), move || {
            let _notice = notice;
            f(&ctx)
        })?;
        let entry = Entry {
            id,
            name,
            started: Instant::now(),
            handle,
        };
        self.running.insert(id, entry);
        Ok(())
    }
}

impl<T> Threads<T> {
    /// The context the threads share.
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// Cancels the threads' context (they are expected to return soon).
    pub fn cancel(&self) {
        self.guard.cancel();
    }

    /// How many threads are owned (running, or finished and not yet
    /// joined).
    pub fn len(&self) -> usize {
        self.running.len() + self.exited.len()
    }

    /// `true` when no thread is owned.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The threads that are still running now, by name and age, oldest
    /// first.
    pub fn running(&mut self) -> Vec<Running> {
        self.collect_exits(None);
        self.list_running()
    }

    /// Joins the threads that have finished, without waiting for the
    /// others; in spawn order.
    pub fn reap(&mut self) -> Vec<Finished<T>> {
        self.collect_exits(None);
        self.join_exited()
    }

    /// Joins every thread that returns before `deadline`, without
    /// cancelling anything; the report says which finished and which are
    /// still running.
    pub fn join_deadline(&mut self, deadline: Instant) -> JoinReport<T> {
        self.collect_exits(Some(deadline));
        JoinReport {
            finished: self.join_exited(),
            running: self.list_running(),
        }
    }

    /// [`join_deadline`](Threads::join_deadline) `timeout` from now (a
    /// timeout too large to represent waits for all of them).
    pub fn join_timeout(&mut self, timeout: Duration) -> JoinReport<T> {
        match crate::deadline::after(timeout) {
            Some(deadline) => self.join_deadline(deadline),
            None => self.join_all(),
        }
    }

    /// Cancels the context, then joins for up to `timeout`.
    pub fn shutdown(&mut self, timeout: Duration) -> JoinReport<T> {
        self.cancel();
        self.join_timeout(timeout)
    }

    /// Joins them all, however long it takes, logging (at `warn`) the ones
    /// it waits for every five seconds.
    fn join_all(&mut self) -> JoinReport<T> {
        loop {
            self.collect_exits(Some(Instant::now() + Duration::from_secs(5)));
            if self.running.is_empty() {
                return JoinReport {
                    finished: self.join_exited(),
                    running: Vec::new(),
                };
            }
            let waiting: Vec<&str> = self.running.values().map(|t| t.name.as_str()).collect();
            log::warn!(
                "still waiting for thread(s) to return: {}",
                waiting.join(", ")
            );
        }
    }

    fn list_running(&self) -> Vec<Running> {
        let now = Instant::now();
        self.running
            .values()
            .map(|t| Running {
                name: t.name.clone(),
                age: now.saturating_duration_since(t.started),
            })
            .collect()
    }

    fn join_exited(&mut self) -> Vec<Finished<T>> {
        let mut exited = std::mem::take(&mut self.exited);
        exited.sort_by_key(|t| t.id);
        exited
            .into_iter()
            .map(|t| Finished {
                name: t.name,
                // It has sent its exit notice: only the return is left.
                result: t.handle.join().map_err(Panic::from_payload),
            })
            .collect()
    }

    /// Moves threads that sent their exit notice from `running` to
    /// `exited`; with a deadline, waits for notices until none is running
    /// or the deadline passes.
    fn collect_exits(&mut self, deadline: Option<Instant>) {
        loop {
            let id = match self.exited_rx.try_recv() {
                Ok(id) => id,
                Err(_) => match deadline {
                    Some(d) if !self.running.is_empty() => match self.exited_rx.recv_deadline(d) {
                        Ok(id) => id,
                        Err(_) => return,
                    },
                    _ => return,
                },
            };
            if let Some(entry) = self.running.remove(&id) {
                self.exited.push(entry);
            }
        }
    }
}

impl<T> fmt::Debug for Threads<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.running.values().map(|t| t.name.as_str()).collect();
        f.debug_struct("Threads")
            .field("running", &names)
            .field("exited", &self.exited.len())
            .finish()
    }
}

impl<T> Drop for Threads<T> {
    fn drop(&mut self) {
        self.guard.cancel();
        if self.is_empty() {
            return;
        }
        for finished in self.join_all().finished {
            if let Err(panic) = finished.result {
                log::warn!("thread {} {panic}", finished.name);
            }
        }
    }
}
