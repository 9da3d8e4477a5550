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
    threads: Vec<Entry<T>>,
    exited_tx: Sender<u64>,
    exited_rx: Receiver<u64>,
    next_id: u64,
}

struct Entry<T> {
    id: u64,
    name: String,
    started: Instant,
    handle: JoinHandle<T>,
    exited: bool,
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
            threads: Vec::new(),
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
        self.threads.push(Entry {
            id,
            name,
            started: Instant::now(),
            handle,
            exited: false,
        });
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
        self.threads.len()
    }

    /// `true` when no thread is owned.
    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }

    /// The threads that are still running now, by name and age.
    pub fn running(&mut self) -> Vec<Running> {
        self.collect_exits(None);
        let now = Instant::now();
        self.threads
            .iter()
            .filter(|t| !t.exited)
            .map(|t| Running {
                name: t.name.clone(),
                age: now.saturating_duration_since(t.started),
            })
            .collect()
    }

    /// Joins every thread that returns before `deadline`, without
    /// cancelling anything; the report says which finished and which are
    /// still running.
    pub fn join_deadline(&mut self, deadline: Instant) -> JoinReport<T> {
        self.collect_exits(Some(deadline));
        let now = Instant::now();
        let mut finished = Vec::new();
        let mut running = Vec::new();
        for t in std::mem::take(&mut self.threads) {
            if t.exited {
                finished.push(Finished {
                    name: t.name,
                    result: t.handle.join().map_err(Panic::from_payload),
                });
            } else {
                running.push(Running {
                    name: t.name.clone(),
                    age: now.saturating_duration_since(t.started),
                });
                self.threads.push(t);
            }
        }
        JoinReport { finished, running }
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

    fn join_all(&mut self) -> JoinReport<T> {
        loop {
            let slice = Instant::now() + Duration::from_secs(5);
            self.collect_exits(Some(slice));
            let waiting: Vec<String> = self
                .threads
                .iter()
                .filter(|t| !t.exited)
                .map(|t| t.name.clone())
                .collect();
            if waiting.is_empty() {
                return self.join_deadline(Instant::now());
            }
            log::warn!(
                "still waiting for thread(s) to return: {}",
                waiting.join(", ")
            );
        }
    }

    /// Records exit notices; with a deadline, waits for them until every
    /// thread has exited or the deadline passes.
    fn collect_exits(&mut self, deadline: Option<Instant>) {
        loop {
            let id = match self.exited_rx.try_recv() {
                Ok(id) => id,
                Err(_) => {
                    let pending = self.threads.iter().any(|t| !t.exited);
                    match deadline {
                        Some(d) if pending => match self.exited_rx.recv_deadline(d) {
                            Ok(id) => id,
                            Err(_) => return,
                        },
                        _ => return,
                    }
                }
            };
            if let Some(t) = self.threads.iter_mut().find(|t| t.id == id) {
                t.exited = true;
            }
        }
    }
}

impl<T> fmt::Debug for Threads<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.threads.iter().map(|t| t.name.as_str()).collect();
        f.debug_struct("Threads").field("threads", &names).finish()
    }
}

impl<T> Drop for Threads<T> {
    fn drop(&mut self) {
        self.guard.cancel();
        if self.threads.is_empty() {
            return;
        }
        for finished in self.join_all().finished {
            if let Err(panic) = finished.result {
                log::warn!("thread {} {panic}", finished.name);
            }
        }
    }
}
