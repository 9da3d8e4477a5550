//! [`PoolBuilder`]: the pool's settings, and `build`, which starts the
//! `min` workers.

use std::io;
use std::time::Duration;

use crate::context::Context;
use crate::panic::Panic;
use crate::sync::{Arc, AtomicBool, AtomicUsize, Condvar, Mutex, Ordering, RwLock};
use crate::threads::Threads;

use super::elastic::Limits;
use super::stats::{Padded, Stats};
use super::stop::Bell;
use super::{Pool, Shared};

pub(super) type Hook = std::sync::Arc<dyn Fn(usize) + Send + Sync>;
pub(super) type PanicHandler = std::sync::Arc<dyn Fn(&Panic) + Send + Sync>;

/// Configures a [`Pool`]; `Pool::builder()` starts one.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use quiesce::PoolBuilder;
///
/// let pool = PoolBuilder::new()
///     .elastic(1, 4)
///     .queue(32)
///     .name("ingest")
///     .idle_timeout(Duration::from_secs(30))
///     .stop_grace(Duration::from_secs(1))
///     .build()
///     .unwrap();
/// assert_eq!(pool.workers(), 1); // `min` to start with
/// assert!(pool.shutdown_timeout(Duration::from_secs(10)).stuck.is_empty());
/// ```
#[must_use = "a builder does nothing until build()"]
pub struct PoolBuilder {
    min: usize,
    max: usize,
    queue: Option<usize>,
    name: String,
    idle_timeout: Duration,
    stop_grace: Duration,
    parent: Context,
    panic_handler: Option<PanicHandler>,
    on_start: Option<Hook>,
    on_exit: Option<Hook>,
}

impl Default for PoolBuilder {
    fn default() -> Self {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        PoolBuilder {
            min: n,
            max: n,
            queue: None,
            name: "quiesce-worker".to_string(),
            idle_timeout: Duration::from_secs(10),
            stop_grace: Duration::from_millis(250),
            parent: Context::background(),
            panic_handler: None,
            on_start: None,
            on_exit: None,
        }
    }
}

impl PoolBuilder {
    /// A builder with the defaults below.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = quiesce::PoolBuilder::new().build().unwrap();
    /// let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    /// assert_eq!(pool.workers(), cpus); // the default: one worker per CPU
    /// ```
    pub fn new() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// A fixed number of workers (at least one). Default: the number of
    /// CPUs (`std::thread::available_parallelism`).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = quiesce::Pool::builder().workers(3).build().unwrap();
    /// assert_eq!(pool.workers(), 3);
    /// let tiny = quiesce::Pool::builder().workers(0).build().unwrap();
    /// assert_eq!(tiny.workers(), 1); // at least one
    /// ```
    pub fn workers(mut self, n: usize) -> Self {
        self.min = n.max(1);
        self.max = self.min;
        self
    }

    /// Elastic workers: `min` always, up to `max` while jobs wait; a worker
    /// above `min` exits after [`idle_timeout`](PoolBuilder::idle_timeout)
    /// without work. `max` is at least one and at least `min`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let pool = quiesce::Pool::builder()
    ///     .elastic(0, 2)
    ///     .idle_timeout(Duration::from_secs(3600))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(pool.workers(), 0); // none until there is work
    /// let score = pool.execute(|_ctx| 6 * 7).unwrap();
    /// assert_eq!(score.join(), Ok(42));
    /// assert_eq!(pool.workers(), 1); // grown for it, and idle now
    /// ```
    pub fn elastic(mut self, min: usize, max: usize) -> Self {
        self.max = max.max(min).max(1);
        self.min = min;
        self
    }

    /// Queue capacity: how many accepted jobs may wait for a worker. Zero
    /// means none wait: a submit succeeds only when a worker takes the job
    /// at once. Default: 64 per worker (of `max`).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = quiesce::Pool::builder().workers(1).queue(1).build().unwrap();
    /// let (release, hold) = crossbeam_channel::bounded::<()>(0);
    /// pool.submit(move |_ctx| { let _ = hold.recv(); }).unwrap(); // the worker is busy
    /// pool.submit(|_ctx| {}).unwrap(); // waits in the queue
    /// assert_eq!(pool.queued(), 1);
    /// assert!(pool.try_submit(|_ctx| {}).is_err()); // no more room
    /// drop(release);
    /// ```
    pub fn queue(mut self, capacity: usize) -> Self {
        self.queue = Some(capacity);
        self
    }

    /// Thread name prefix; workers are `{name}-{n}`. Default
    /// `quiesce-worker`.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = quiesce::Pool::builder().workers(1).name("file-ingest").build().unwrap();
    /// let name = pool.execute(|_ctx| std::thread::current().name().map(String::from)).unwrap();
    /// assert_eq!(name.join().unwrap().as_deref(), Some("file-ingest-0"));
    /// ```
    pub fn name(mut self, prefix: impl Into<String>) -> Self {
        self.name = prefix.into();
        self
    }

    /// How long a worker above `min` waits for work before exiting.
    /// Default: 10 s.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    ///
    /// let pool = quiesce::Pool::builder()
    ///     .elastic(0, 4)
    ///     .idle_timeout(Duration::from_millis(1))
    ///     .build()
    ///     .unwrap();
    /// pool.execute(|_ctx| ()).unwrap().join().unwrap();
    /// let give_up = Instant::now() + Duration::from_secs(10);
    /// while pool.workers() > 0 && Instant::now() < give_up {
    ///     std::thread::sleep(Duration::from_millis(1));
    /// }
    /// assert_eq!(pool.workers(), 0); // the idle worker above `min` left
    /// ```
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// How long a shutdown waits, after cancelling the running jobs at its
    /// deadline, for them to return before calling their workers stuck.
    /// Default: 250 ms.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let pool = quiesce::Pool::builder()
    ///     .workers(1)
    ///     .stop_grace(Duration::from_millis(1))
    ///     .build()
    ///     .unwrap();
    /// let (started_tx, started) = crossbeam_channel::bounded(1);
    /// let (release, hold) = crossbeam_channel::bounded::<()>(0);
    /// pool.submit(move |_ctx| {
    ///     started_tx.send(()).unwrap();
    ///     let _ = hold.recv(); // ignores its context
    /// })
    /// .unwrap();
    /// started.recv_timeout(Duration::from_secs(10)).unwrap();
    /// let report = pool.abort(); // waits 1 ms for it, then reports it
    /// assert_eq!(report.stuck[0].name, "quiesce-worker-0");
    /// drop(release); // dropping the pool waits for that worker
    /// ```
    pub fn stop_grace(mut self, grace: Duration) -> Self {
        self.stop_grace = grace;
        self
    }

    /// The parent of the pool's context. Cancelling it acts like
    /// [`Pool::abort`] without the report: running jobs see the
    /// cancellation, workers stop, submits — also those already waiting
    /// for room in a full queue — are refused as
    /// [`Refused::ParentDone`](super::Refused::ParentDone) (with how the
    /// parent ended; [`Refused::Closed`](super::Refused::Closed) once a
    /// shutdown has begun), and jobs still queued wait to be handed back by
    /// [`Pool::shutdown`]. A pool built under a parent that is done already
    /// refuses its first job the same way. Default: the background context.
    ///
    /// # Examples
    ///
    /// ```
    /// use quiesce::{Context, ContextError, Pool, pool::Refused};
    ///
    /// let app = Context::background().with_cancel();
    /// let pool = Pool::builder().workers(1).context(&app).build().unwrap();
    /// app.cancel(); // Ctrl-C, say
    /// let err = pool.submit(|_ctx| {}).unwrap_err();
    /// assert_eq!(err.reason, Refused::ParentDone(ContextError::Canceled));
    /// assert_eq!(err.reason.to_string(), "the pool's parent context is done: context canceled");
    /// ```
    pub fn context(mut self, parent: &Context) -> Self {
        self.parent = parent.clone();
        self
    }

    /// Called (on the worker) with each caught job panic.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use std::time::Duration;
    ///
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let log = seen.clone();
    /// let pool = quiesce::Pool::builder()
    ///     .workers(1)
    ///     .panic_handler(move |p| log.lock().unwrap().push(p.message().to_string()))
    ///     .build()
    ///     .unwrap();
    /// pool.submit(|_ctx| panic!("file 17 is corrupt")).unwrap();
    /// assert_eq!(pool.shutdown_timeout(Duration::from_secs(10)).panicked, 1);
    /// assert_eq!(*seen.lock().unwrap(), ["file 17 is corrupt"]);
    /// ```
    pub fn panic_handler(mut self, f: impl Fn(&Panic) + Send + Sync + 'static) -> Self {
        self.panic_handler = Some(std::sync::Arc::new(f));
        self
    }

    /// Called on each worker thread as it starts, with its number.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    /// use std::time::Duration;
    ///
    /// let started = Arc::new(AtomicUsize::new(0));
    /// let counter = started.clone();
    /// let pool = quiesce::Pool::builder()
    ///     .workers(3)
    ///     .on_start(move |_n| { counter.fetch_add(1, Ordering::SeqCst); })
    ///     .build()
    ///     .unwrap();
    /// assert!(pool.shutdown_timeout(Duration::from_secs(10)).stuck.is_empty());
    /// assert_eq!(started.load(Ordering::SeqCst), 3);
    /// ```
    pub fn on_start(mut self, f: impl Fn(usize) + Send + Sync + 'static) -> Self {
        self.on_start = Some(std::sync::Arc::new(f));
        self
    }

    /// Called on each worker thread as it exits, with its number.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use std::time::Duration;
    ///
    /// let exited = Arc::new(Mutex::new(Vec::new()));
    /// let log = exited.clone();
    /// let pool = quiesce::Pool::builder()
    ///     .workers(2)
    ///     .on_exit(move |n| log.lock().unwrap().push(n))
    ///     .build()
    ///     .unwrap();
    /// assert!(pool.shutdown_timeout(Duration::from_secs(10)).stuck.is_empty());
    /// let mut exited = exited.lock().unwrap().clone();
    /// exited.sort();
    /// assert_eq!(exited, [0, 1]);
    /// ```
    pub fn on_exit(mut self, f: impl Fn(usize) + Send + Sync + 'static) -> Self {
        self.on_exit = Some(std::sync::Arc::new(f));
        self
    }

    /// Starts the pool's `min` workers.
    ///
    /// # Errors
    ///
    /// The OS error if a worker thread cannot be started (those already
    /// started are stopped and joined).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = quiesce::Pool::builder().workers(2).build()?;
    /// assert_eq!(pool.workers(), 2);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn build(self) -> io::Result<Pool> {
        let capacity = self.queue.unwrap_or(64 * self.max);
        let (queue_tx, queue_rx) = crossbeam_channel::bounded(capacity);
        let (wake_tx, wake_rx) = crossbeam_channel::unbounded();
        let pool_ctx = self.parent.with_cancel();
        let threads = Threads::new(&pool_ctx);
        let shared = Arc::new(Shared {
            name: self.name,
            ctx: threads.context().clone(),
            cancel: pool_ctx,
            queue_tx,
            queue_rx,
            wake_tx,
            wake_rx,
            intake: Padded(RwLock::new(())),
            closed: AtomicBool::new(false),
            closed_bell: Bell::new(),
            draining: AtomicBool::new(false),
            threads: Mutex::new(Some(threads)),
            returned: Mutex::new(Vec::new()),
            busy: Padded(AtomicUsize::new(0)),
            idle_lock: Mutex::new(()),
            idle_bell: Condvar::new(),
            limits: Limits::new(self.min, self.max),
            workers: Padded(AtomicUsize::new(0)),
            idle: Padded(AtomicUsize::new(0)),
            next_worker: AtomicUsize::new(0),
            stats: Stats::default(),
            idle_timeout: self.idle_timeout,
            stop_grace: self.stop_grace,
            panic_handler: self.panic_handler,
            on_start: self.on_start,
            on_exit: self.on_exit,
        });
        let pool = Pool { shared };
        for _ in 0..pool.shared.limits.load(Ordering::Relaxed).min {
            Shared::spawn_worker(&pool.shared)?;
        }
        Ok(pool)
    }
}
