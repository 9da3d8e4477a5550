//! `Threads`: named threads that share a context, joined against a
//! deadline. The public docs, with the Go pattern they replace, are on
//! [`Threads`].

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::context::{CancelGuard, Context};
use crate::panic::Panic;

/// Named threads under one context, joined against a deadline.
///
/// Go starts a goroutine with `go f()` and forgets it; finding out later
/// which one did not stop takes goleak or a stack dump. Here every thread
/// has a name, its `JoinHandle` is kept, and
/// [`join_deadline`](Threads::join_deadline) says which threads finished
/// (with their result, or their panic as a value) and which are still
/// running, by name and age. A thread still running stays owned by the
/// `Threads`: nothing is detached silently.
///
/// # Drop
///
/// Dropping `Threads` cancels their context and joins every thread,
/// blocking until they have all returned; every five seconds it logs (at
/// `warn`) the ones it is still waiting for. Call
/// [`shutdown_timeout`](Threads::shutdown_timeout) first to bound the wait.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use quiesce::{Context, Threads};
///
/// let mut threads = Threads::new(&Context::background());
/// threads.spawn("ticker", |ctx| {
///     let mut ticks = 0;
///     while ctx.sleep(Duration::from_millis(1)).is_ok() {
///         ticks += 1;
///     }
///     ticks
/// }).unwrap();
/// threads.spawn("one-shot", |_ctx| 0).unwrap();
///
/// let report = threads.shutdown_timeout(Duration::from_secs(5)); // cancel, then join
/// assert!(report.running.is_empty());
/// assert_eq!(report.finished.len(), 2);
/// ```
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
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use quiesce::{Context, Threads};
///
/// let mut threads = Threads::new(&Context::background());
/// threads.spawn("watch-inbox", |ctx| { let _ = ctx.done().recv(); "stopped" }).unwrap();
/// let report = threads.join_timeout(Duration::from_millis(2));
/// assert!(report.finished.is_empty());
/// assert_eq!(report.running[0].name, "watch-inbox"); // still owned: join again later
/// let report = threads.shutdown_timeout(Duration::from_secs(10));
/// assert_eq!(report.finished[0].result, Ok("stopped"));
/// ```
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
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use quiesce::{Context, Threads};
///
/// let mut threads = Threads::new(&Context::background());
/// threads.spawn("export-a", |_ctx| 12).unwrap();
/// threads.spawn("export-b", |_ctx| -> u32 { panic!("disk full") }).unwrap();
/// let report = threads.join_timeout(Duration::from_secs(10));
/// assert_eq!(report.finished[0].name, "export-a"); // in spawn order
/// assert_eq!(report.finished[0].result, Ok(12));
/// assert_eq!(report.finished[1].result.as_ref().unwrap_err().message(), "disk full");
/// ```
#[derive(Debug)]
pub struct Finished<T> {
    /// The name it was spawned with.
    pub name: String,
    /// What it returned, or its panic.
    pub result: Result<T, Panic>,
}

/// A thread still running at a join deadline.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use quiesce::{Context, Threads};
///
/// let mut threads = Threads::<()>::new(&Context::background());
/// threads.spawn("session-reaper", |ctx| { let _ = ctx.done().recv(); }).unwrap();
/// let running = threads.running();
/// assert_eq!(running[0].name, "session-reaper");
/// assert!(running[0].to_string().starts_with("session-reaper (running for "));
/// assert!(threads.shutdown_timeout(Duration::from_secs(10)).running.is_empty());
/// ```
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
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use quiesce::{Context, Threads};
    ///
    /// let app = Context::background().with_cancel();
    /// let mut threads = Threads::new(&app);
    /// threads.spawn("sync", |ctx| { let _ = ctx.done().recv(); "stopped with the app" }).unwrap();
    /// app.cancel(); // the parent's cancel reaches the threads
    /// let report = threads.join_timeout(Duration::from_secs(10));
    /// assert_eq!(report.finished[0].result, Ok("stopped with the app"));
    /// ```
    pub fn new(parent: &Context) -> Threads<T> {
        let guard = parent.with_cancel();
        let (exited_tx, exited_rx) = crossbeam_channel::unbounded();
        Threads {
            ctx: guard.context(),
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
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use quiesce::{Context, Threads};
    ///
    /// let mut threads = Threads::new(&Context::background());
    /// threads.spawn("nightly-summary", |_ctx| std::thread::current().name().map(String::from))?;
    /// let report = threads.join_timeout(Duration::from_secs(10));
    /// let name = report.finished[0].result.as_ref().unwrap();
    /// assert_eq!(name.as_deref(), Some("nightly-summary")); // named, for `top -H`
    /// # Ok::<(), std::io::Error>(())
    /// ```
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
    ///
    /// # Examples
    ///
    /// ```
    /// let threads = quiesce::Threads::<()>::new(&quiesce::Context::background());
    /// let ctx = threads.context().clone(); // the one every thread gets
    /// threads.cancel();
    /// assert!(ctx.is_done());
    /// ```
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// Cancels the threads' context (they are expected to return soon).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use quiesce::{Context, Threads};
    ///
    /// let mut threads = Threads::new(&Context::background());
    /// threads.spawn("poll-queue", |ctx| {
    ///     let mut polls = 0u32;
    ///     while ctx.sleep(Duration::from_millis(1)).is_ok() {
    ///         polls += 1;
    ///     }
    ///     polls
    /// }).unwrap();
    /// threads.cancel();
    /// assert!(threads.join_timeout(Duration::from_secs(10)).running.is_empty());
    /// ```
    pub fn cancel(&self) {
        self.guard.cancel();
    }

    /// How many threads are owned (running, or finished and not yet
    /// joined).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use quiesce::{Context, Threads};
    ///
    /// let mut threads = Threads::new(&Context::background());
    /// threads.spawn("export-a", |_ctx| ()).unwrap();
    /// threads.spawn("export-b", |_ctx| ()).unwrap();
    /// assert_eq!(threads.len(), 2); // owned until joined, finished or not
    /// assert!(threads.join_timeout(Duration::from_secs(10)).running.is_empty());
    /// assert_eq!(threads.len(), 0);
    /// ```
    pub fn len(&self) -> usize {
        self.running.len() + self.exited.len()
    }

    /// `true` when no thread is owned.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use quiesce::{Context, Threads};
    ///
    /// let mut threads = Threads::new(&Context::background());
    /// assert!(threads.is_empty());
    /// threads.spawn("export", |_ctx| ()).unwrap();
    /// assert!(!threads.is_empty());
    /// assert!(threads.join_timeout(Duration::from_secs(10)).running.is_empty());
    /// assert!(threads.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The threads that are still running now, by name and age, oldest
    /// first.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use quiesce::{Context, Threads};
    ///
    /// let mut threads = Threads::<()>::new(&Context::background());
    /// threads.spawn("intake", |ctx| { let _ = ctx.done().recv(); }).unwrap();
    /// threads.spawn("store", |ctx| { let _ = ctx.done().recv(); }).unwrap();
    /// let names: Vec<String> = threads.running().into_iter().map(|r| r.name).collect();
    /// assert_eq!(names, ["intake", "store"]); // oldest first
    /// assert!(threads.shutdown_timeout(Duration::from_secs(10)).running.is_empty());
    /// assert!(threads.running().is_empty());
    /// ```
    pub fn running(&mut self) -> Vec<Running> {
        self.collect_exits(None);
        self.list_running()
    }

    /// Joins the threads that have finished, without waiting for the
    /// others; in spawn order.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use quiesce::{Context, Threads};
    ///
    /// let mut threads = Threads::new(&Context::background());
    /// threads.spawn("quick", |_ctx| 1).unwrap();
    /// threads.spawn("long", |ctx| { let _ = ctx.done().recv(); 2 }).unwrap();
    /// let give_up = Instant::now() + Duration::from_secs(10);
    /// while threads.running().len() > 1 && Instant::now() < give_up {
    ///     std::thread::sleep(Duration::from_millis(1));
    /// }
    /// let reaped = threads.reap(); // does not wait for "long"
    /// assert_eq!((reaped[0].name.as_str(), reaped.len()), ("quick", 1));
    /// assert_eq!(threads.len(), 1);
    /// assert!(threads.shutdown_timeout(Duration::from_secs(10)).running.is_empty());
    /// ```
    pub fn reap(&mut self) -> Vec<Finished<T>> {
        self.collect_exits(None);
        self.join_exited()
    }

    /// Joins every thread that returns before `deadline`, without
    /// cancelling anything; the report says which finished and which are
    /// still running.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use quiesce::{Context, Threads};
    ///
    /// let mut threads = Threads::<()>::new(&Context::background());
    /// threads.spawn("upload", |ctx| { let _ = ctx.done().recv(); }).unwrap();
    /// let report = threads.join_deadline(Instant::now() + Duration::from_millis(2));
    /// assert_eq!(report.running[0].name, "upload"); // nothing was cancelled
    /// threads.cancel();
    /// let report = threads.join_deadline(Instant::now() + Duration::from_secs(10));
    /// assert_eq!(report.finished.len(), 1);
    /// ```
    pub fn join_deadline(&mut self, deadline: Instant) -> JoinReport<T> {
        self.collect_exits(Some(deadline));
        JoinReport {
            finished: self.join_exited(),
            running: self.list_running(),
        }
    }

    /// [`join_deadline`](Threads::join_deadline) `timeout` from now (a
    /// timeout too large to represent waits for all of them).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use quiesce::{Context, Threads};
    ///
    /// let mut threads = Threads::new(&Context::background());
    /// threads.spawn("checksum-4", |_ctx| 0xC0FFEEu32).unwrap();
    /// let report = threads.join_timeout(Duration::from_secs(10));
    /// assert_eq!(report.finished[0].result, Ok(0xC0FFEE));
    /// assert!(report.running.is_empty());
    /// ```
    pub fn join_timeout(&mut self, timeout: Duration) -> JoinReport<T> {
        match crate::deadline::after(timeout) {
            Some(deadline) => self.join_deadline(deadline),
            None => self.join_all(),
        }
    }

    /// Cancels the context, then joins for up to `timeout`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use quiesce::{Context, Threads};
    ///
    /// let mut threads = Threads::new(&Context::background());
    /// threads.spawn("heartbeat", |ctx| {
    ///     while ctx.sleep(Duration::from_millis(1)).is_ok() {}
    ///     "stopped"
    /// }).unwrap();
    /// let report = threads.shutdown_timeout(Duration::from_secs(10));
    /// assert_eq!(report.finished[0].result, Ok("stopped"));
    /// ```
    pub fn shutdown_timeout(&mut self, timeout: Duration) -> JoinReport<T> {
        self.cancel();
        self.join_timeout(timeout)
    }

    /// Cancels the threads' context and joins them until `deadline` at most
    /// ([`shutdown_timeout`](Threads::shutdown_timeout) with an `Instant`).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use quiesce::{Context, Threads};
    ///
    /// let mut threads = Threads::new(&Context::background());
    /// threads.spawn("poller", |ctx| while ctx.sleep(Duration::from_millis(1)).is_ok() {}).unwrap();
    /// let report = threads.shutdown_deadline(Instant::now() + Duration::from_secs(10));
    /// assert!(report.running.is_empty());
    /// ```
    pub fn shutdown_deadline(&mut self, deadline: Instant) -> JoinReport<T> {
        self.cancel();
        self.join_deadline(deadline)
    }

    /// The old name of [`shutdown_timeout`](Threads::shutdown_timeout).
    #[deprecated(
        since = "0.2.0",
        note = "renamed `shutdown_timeout` (a `Duration`), beside `shutdown_deadline` (an `Instant`)"
    )]
    pub fn shutdown(&mut self, timeout: Duration) -> JoinReport<T> {
        self.shutdown_timeout(timeout)
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
