//! `Pool`: a fixed or elastic set of worker threads fed by a bounded queue.
//! The public docs, with the Go pattern it replaces, are on [`Pool`].

use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender, TrySendError};
use parking_lot::{Mutex, RwLock};

use crate::context::{CancelGuard, Context, ContextError};
use crate::deadline::Until;
use crate::done::{Done, Shutdown, shutdown};
use crate::handle::{self, JobHandle};
use crate::panic::Panic;
use crate::threads::{Running, Threads};

mod stats;

use stats::{Ended, Padded, Stats, WorkerStats};

type Hook = Arc<dyn Fn(usize) + Send + Sync>;
type PanicHandler = Arc<dyn Fn(&Panic) + Send + Sync>;

/// A job of a [`Pool`]: a closure given the pool's [`Context`], boxed.
/// Refused and never-started jobs come back as `Job`s, so nothing is lost:
/// run one elsewhere with [`Job::run`], or drop it knowingly.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use quiesce::{Context, Pool, Refused};
///
/// let pool = Pool::builder().workers(1).build().unwrap();
/// let _ = pool.shutdown_timeout(Duration::from_secs(10));
/// let err = pool.submit(|_ctx| println!("late diary upload")).unwrap_err();
/// assert_eq!(err.reason, Refused::Closed);
/// let job = err.job; // not lost: run it here
/// assert!(job.run(&Context::background()).is_ok());
/// ```
pub struct Job {
    f: JobFn,
}

/// A job as the workers run it: the panic, if any, comes back as a value.
type JobFn = Box<dyn FnOnce(&Context) -> Option<Panic> + Send + 'static>;

impl Job {
    /// Wraps a closure as a job (panics in it are caught when it runs).
    ///
    /// # Examples
    ///
    /// ```
    /// use quiesce::{Context, Job};
    ///
    /// let job = Job::new(|_ctx| panic!("diary 17 is corrupt"));
    /// let panic = job.run(&Context::background()).unwrap_err(); // caught, not unwound
    /// assert_eq!(panic.message(), "diary 17 is corrupt");
    /// ```
    pub fn new<F>(f: F) -> Job
    where
        F: FnOnce(&Context) + Send + 'static,
    {
        Job {
            f: Box::new(move |ctx: &Context| crate::panic::catch(|| f(ctx)).err()),
        }
    }

    /// Runs the job here, on this thread, with `ctx`.
    ///
    /// # Errors
    ///
    /// The job's panic, caught.
    ///
    /// # Examples
    ///
    /// ```
    /// use quiesce::{Context, Job};
    ///
    /// let (ctx, guard) = Context::background().with_cancel();
    /// drop(guard);
    /// let job = Job::new(|ctx| assert!(ctx.is_done(), "it gets the context given to run"));
    /// assert_eq!(job.run(&ctx), Ok(()));
    /// ```
    pub fn run(self, ctx: &Context) -> Result<(), Panic> {
        match (self.f)(ctx) {
            None => Ok(()),
            Some(panic) => Err(panic),
        }
    }
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Job")
    }
}

/// Why a submit did not take the job.
///
/// # Examples
///
/// ```
/// use quiesce::{Pool, Refused};
///
/// let pool = Pool::builder().workers(1).queue(1).build().unwrap();
/// let (release, hold) = crossbeam_channel::bounded::<()>(0);
/// pool.submit(move |_ctx| { let _ = hold.recv(); }).unwrap(); // the worker is busy
/// pool.submit(|_ctx| {}).unwrap(); // the queue is full
/// match pool.try_submit(|_ctx| {}).unwrap_err().reason {
///     Refused::Full => {} // shed load, retry later, or run it here
///     other => panic!("{other:?}"),
/// }
/// drop(release);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// `try_submit`: the queue is full.
    Full,
    /// `submit_timeout` / `submit_deadline`: still full at the deadline.
    Timeout,
    /// `submit_ctx`: the context was done first.
    Done(ContextError),
    /// The pool is shutting down or shut down.
    Closed,
}

/// A refused submit: why, and the job, handed back.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use quiesce::{Pool, Refused};
///
/// let pool = Pool::builder().workers(1).queue(1).build().unwrap();
/// let (release, hold) = crossbeam_channel::bounded::<()>(0);
/// pool.submit(move |_ctx| { let _ = hold.recv(); }).unwrap(); // the worker is busy
/// pool.submit(|_ctx| {}).unwrap(); // the queue is full
/// let err = pool.submit_timeout(|_ctx| {}, Duration::from_millis(2)).unwrap_err();
/// assert_eq!(err.reason, Refused::Timeout);
/// assert_eq!(err.to_string(), "job refused: the pool's queue stayed full until the deadline");
/// drop(release);
/// pool.submit_job_blocking(err.job).unwrap(); // try again, waiting this time
/// ```
pub struct SubmitError {
    /// Why the job was refused.
    pub reason: Refused,
    /// The job, not run.
    pub job: Job,
}

impl SubmitError {
    /// The job that was refused.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use quiesce::Pool;
    ///
    /// let old = Pool::builder().workers(1).build().unwrap();
    /// let _ = old.shutdown_timeout(Duration::from_secs(10));
    /// let err = old.submit(|_ctx| println!("SITE-B upload")).unwrap_err();
    /// let backup = Pool::builder().workers(1).name("backup").build().unwrap();
    /// backup.submit_job_blocking(err.into_job()).unwrap();
    /// assert_eq!(backup.shutdown_timeout(Duration::from_secs(10)).completed, 1);
    /// ```
    pub fn into_job(self) -> Job {
        self.job
    }
}

impl fmt::Debug for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubmitError")
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason {
            Refused::Full => f.write_str("job refused: the pool's queue is full"),
            Refused::Timeout => {
                f.write_str("job refused: the pool's queue stayed full until the deadline")
            }
            Refused::Done(err) => write!(f, "job refused: {err}"),
            Refused::Closed => f.write_str("job refused: the pool is shutting down"),
        }
    }
}

impl std::error::Error for SubmitError {}

/// What [`Pool::shutdown`] and [`Pool::abort`] found. The counts cover the
/// pool's whole life.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use quiesce::Pool;
///
/// let pool = Pool::builder().workers(1).build().unwrap();
/// pool.submit(|_ctx| {}).unwrap();
/// pool.submit(|_ctx| panic!("bad diary")).unwrap();
/// let report = pool.shutdown_timeout(Duration::from_secs(10));
/// assert_eq!((report.completed, report.panicked, report.cancelled), (1, 1, 0));
/// assert!(report.never_started.is_empty() && report.stuck.is_empty());
/// ```
#[must_use = "the report holds the jobs that never started"]
pub struct ShutdownReport {
    /// Jobs that returned normally before the pool's context was cancelled.
    pub completed: u64,
    /// Jobs that panicked.
    pub panicked: u64,
    /// Jobs that returned after the pool's context was cancelled (they were
    /// running at the deadline).
    pub cancelled: u64,
    /// Jobs accepted but never started, handed back in submission order.
    pub never_started: Vec<Job>,
    /// Workers still running after the deadline and the grace period: each
    /// is stuck in a job that ignores its context. They stay owned by the
    /// pool; dropping it waits for them.
    pub stuck: Vec<Running>,
}

impl fmt::Debug for ShutdownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShutdownReport")
            .field("completed", &self.completed)
            .field("panicked", &self.panicked)
            .field("cancelled", &self.cancelled)
            .field("never_started", &self.never_started.len())
            .field("stuck", &self.stuck)
            .finish()
    }
}

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
///     .name("epro-ingest")
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
    /// let pool = quiesce::Pool::builder().workers(1).name("diary-ingest").build().unwrap();
    /// let name = pool.execute(|_ctx| std::thread::current().name().map(String::from)).unwrap();
    /// assert_eq!(name.join().unwrap().as_deref(), Some("diary-ingest-0"));
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
    /// for room in a full queue — are refused as [`Refused::Closed`], and
    /// jobs still queued wait to be handed back by [`Pool::shutdown`].
    /// Default: the background context.
    ///
    /// # Examples
    ///
    /// ```
    /// use quiesce::{Context, Pool, Refused};
    ///
    /// let (app, stop_app) = Context::background().with_cancel();
    /// let pool = Pool::builder().workers(1).context(&app).build().unwrap();
    /// drop(stop_app); // Ctrl-C, say
    /// assert_eq!(pool.submit(|_ctx| {}).unwrap_err().reason, Refused::Closed);
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
    /// pool.submit(|_ctx| panic!("diary 17 is corrupt")).unwrap();
    /// assert_eq!(pool.shutdown_timeout(Duration::from_secs(10)).panicked, 1);
    /// assert_eq!(*seen.lock().unwrap(), ["diary 17 is corrupt"]);
    /// ```
    pub fn panic_handler(mut self, f: impl Fn(&Panic) + Send + Sync + 'static) -> Self {
        self.panic_handler = Some(Arc::new(f));
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
        self.on_start = Some(Arc::new(f));
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
        self.on_exit = Some(Arc::new(f));
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
        let (closed_trigger, closed) = shutdown();
        let (drain_trigger, drain) = shutdown();
        let (pool_ctx, cancel) = self.parent.with_cancel();
        let threads = Threads::new(&pool_ctx);
        let shared = Arc::new(Shared {
            name: self.name,
            ctx: threads.context().clone(),
            cancel,
            queue_tx,
            queue_rx,
            wake_tx,
            wake_rx,
            intake: Padded(RwLock::new(())),
            closing: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            elastic: AtomicBool::new(self.min < self.max),
            closed_trigger,
            closed,
            drain_trigger,
            drain,
            threads: Mutex::new(Some(threads)),
            returned: Mutex::new(Vec::new()),
            min: AtomicUsize::new(self.min),
            max: AtomicUsize::new(self.max),
            workers: Padded(AtomicUsize::new(0)),
            idle: Padded(AtomicUsize::new(0)),
            next_worker: AtomicUsize::new(0),
            stats: Stats::default(),
            idle_timeout: self.idle_timeout,
            stop_grace: self.stop_grace,
            panic_handler: self.panic_handler,
            on_start: self.on_start,
            on_exit: self.on_exit,
            shut: Mutex::new(false),
        });
        let pool = Pool { shared };
        for _ in 0..pool.shared.min.load(Ordering::Relaxed) {
            pool.shared.spawn_worker()?;
        }
        Ok(pool)
    }
}

/// A pool of worker threads: a fixed or elastic set of them, fed by a
/// bounded queue. Go's `ants` pool (and the worker-pool pattern of
/// `jobs := make(chan Job, 100)` plus N goroutines), with what Rust's sync
/// pools usually lack: backpressure, a job handed back whenever it is
/// refused, panics caught and counted, and a shutdown that drains, cancels
/// at a deadline, joins the workers and says what happened.
///
/// Share it between threads with an `Arc`. All methods take `&self`.
///
/// # Lifecycle
///
/// Open: submits are accepted while the queue has room; `submit` blocks
/// while it is full, `try_submit`/`submit_timeout`/`submit_ctx` give the job
/// back inside the error instead. [`Pool::shutdown`] then:
///
/// 1. closes intake: every submit from now on (and every one blocked on a
///    full queue) gets its job back with [`Refused::Closed`];
/// 2. waits for submits already under way to finish, so no job can slip in
///    after this point;
/// 3. lets the workers run every queued job and exit, until the deadline;
/// 4. at the deadline, cancels the [`Context`] of the running jobs, and
///    waits [`stop_grace`](PoolBuilder::stop_grace) more for them to return;
/// 5. reports: jobs completed, panicked and cancelled, the jobs that never
///    started (handed back, to run elsewhere or persist), and the workers
///    still running, by name.
///
/// [`Pool::abort`] skips step 3.
///
/// # Drop
///
/// Dropping a pool that was not shut down drains it like `shutdown` with no
/// deadline: it runs every queued job, then joins the workers, and blocks
/// until then. Call [`Pool::shutdown`] first to bound the wait.
///
/// # Panics
///
/// A job that panics is caught: counted in [`Pool::panicked`], passed to the
/// [`panic_handler`](PoolBuilder::panic_handler) if any, reported through
/// its [`JobHandle`] if it has one. The worker lives on, so a panic never
/// shrinks the pool.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
/// use quiesce::Pool;
///
/// let pool = Pool::builder().workers(2).queue(16).name("upload").build().unwrap();
/// for device in 0..10 {
///     pool.submit(move |ctx| {
///         // process the upload from `device`, checking `ctx` between steps
///         let _ = (device, ctx.check());
///     })
///     .unwrap();
/// }
/// let report = pool.shutdown(Instant::now() + Duration::from_secs(10));
/// assert_eq!(report.completed, 10);
/// assert!(report.never_started.is_empty() && report.stuck.is_empty());
/// ```
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    name: String,
    /// The context jobs run with; cancelled at the shutdown deadline.
    ctx: Context,
    /// Cancels `ctx` (it is a child of this guard's context) even while a
    /// stop has the `Threads` out of the lock.
    cancel: CancelGuard,
    queue_tx: Sender<Job>,
    queue_rx: Receiver<Job>,
    /// Wakes idle workers to re-check `max` after a `resize`.
    wake_tx: Sender<()>,
    wake_rx: Receiver<()>,
    /// Submits hold it shared; shutdown takes it exclusively, once, to wait
    /// for submits under way after `closed` fired. Padded: every submit
    /// writes its lock word.
    intake: Padded<RwLock<()>>,
    /// Set just before `closed` fires; what the hot paths read (a
    /// `try_recv` on the `closed` channel takes a lock).
    closing: AtomicBool,
    /// Set just before `drain` fires.
    draining: AtomicBool,
    /// `min < max`, kept with them (read on every submit and job).
    elastic: AtomicBool,
    closed_trigger: Shutdown,
    closed: Done,
    drain_trigger: Shutdown,
    drain: Done,
    /// `None` while a stop waits for the workers.
    threads: Mutex<Option<Threads<()>>>,
    /// Jobs a worker took from the queue but did not start because the
    /// pool's context was already cancelled.
    returned: Mutex<Vec<Job>>,
    min: AtomicUsize,
    max: AtomicUsize,
    /// Written when workers come and go and go idle: kept off the lines the
    /// hot paths only read.
    workers: Padded<AtomicUsize>,
    idle: Padded<AtomicUsize>,
    next_worker: AtomicUsize,
    stats: Stats,
    idle_timeout: Duration,
    stop_grace: Duration,
    panic_handler: Option<PanicHandler>,
    on_start: Option<Hook>,
    on_exit: Option<Hook>,
    shut: Mutex<bool>,
}

/// How a stop treats the queue.
#[derive(Clone, Copy)]
enum Stop {
    /// Run queued jobs until the deadline (`None`: however long it takes).
    Drain(Option<Instant>),
    /// Run nothing more.
    Abort,
}

impl Pool {
    /// A builder with the defaults.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = quiesce::Pool::builder().workers(2).queue(8).build().unwrap();
    /// assert_eq!((pool.workers(), pool.queued()), (2, 0));
    /// ```
    pub fn builder() -> PoolBuilder {
        PoolBuilder::new()
    }

    /// Queues `f`, waiting while the queue is full (backpressure).
    ///
    /// # Errors
    ///
    /// [`Refused::Closed`] once shutdown has begun, with the job.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use quiesce::{Pool, Refused};
    ///
    /// let pool = Pool::builder().workers(2).queue(1).build().unwrap(); // a small queue
    /// for patient in 0..20 {
    ///     pool.submit(move |_ctx| { let _ = patient; }).unwrap(); // waits for room
    /// }
    /// assert_eq!(pool.shutdown_timeout(Duration::from_secs(10)).completed, 20);
    /// assert_eq!(pool.submit(|_ctx| {}).unwrap_err().reason, Refused::Closed);
    /// ```
    pub fn submit<F>(&self, f: F) -> Result<(), SubmitError>
    where
        F: FnOnce(&Context) + Send + 'static,
    {
        self.submit_job(Job::new(f), Until::Deadline(None))
    }

    /// Queues `f` if there is room now.
    ///
    /// # Errors
    ///
    /// [`Refused::Full`] or [`Refused::Closed`], with the job.
    ///
    /// # Examples
    ///
    /// ```
    /// use quiesce::{Context, Pool, Refused};
    ///
    /// let pool = Pool::builder().workers(1).queue(1).build().unwrap();
    /// let (release, hold) = crossbeam_channel::bounded::<()>(0);
    /// pool.submit(move |_ctx| { let _ = hold.recv(); }).unwrap(); // the worker is busy
    /// pool.submit(|_ctx| {}).unwrap(); // the queue is full
    /// let err = pool.try_submit(|_ctx| println!("SITE-C upload")).unwrap_err();
    /// assert_eq!(err.reason, Refused::Full);
    /// err.into_job().run(&Context::background()).unwrap(); // do it here instead
    /// drop(release);
    /// ```
    pub fn try_submit<F>(&self, f: F) -> Result<(), SubmitError>
    where
        F: FnOnce(&Context) + Send + 'static,
    {
        self.submit_job(Job::new(f), Until::Now)
    }

    /// Queues `f`, waiting at most `timeout` for room.
    ///
    /// # Errors
    ///
    /// [`Refused::Timeout`] or [`Refused::Closed`], with the job.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use quiesce::{Pool, Refused};
    ///
    /// let pool = Pool::builder().workers(1).queue(1).build().unwrap();
    /// let (release, hold) = crossbeam_channel::bounded::<()>(0);
    /// pool.submit(move |_ctx| { let _ = hold.recv(); }).unwrap(); // the worker is busy
    /// pool.submit(|_ctx| {}).unwrap(); // the queue is full
    /// let err = pool.submit_timeout(|_ctx| {}, Duration::from_millis(2)).unwrap_err();
    /// assert_eq!(err.reason, Refused::Timeout);
    /// drop(release);
    /// assert!(pool.submit_timeout(|_ctx| {}, Duration::from_secs(10)).is_ok()); // room again
    /// ```
    pub fn submit_timeout<F>(&self, f: F, timeout: Duration) -> Result<(), SubmitError>
    where
        F: FnOnce(&Context) + Send + 'static,
    {
        self.submit_job(
            Job::new(f),
            Until::Deadline(crate::deadline::after(timeout)),
        )
    }

    /// Queues `f`, waiting until `deadline` at most for room.
    ///
    /// # Errors
    ///
    /// [`Refused::Timeout`] or [`Refused::Closed`], with the job.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Instant;
    /// use quiesce::{Pool, Refused};
    ///
    /// let pool = Pool::builder().workers(1).queue(1).build().unwrap();
    /// let (release, hold) = crossbeam_channel::bounded::<()>(0);
    /// pool.submit(move |_ctx| { let _ = hold.recv(); }).unwrap(); // the worker is busy
    /// pool.submit(|_ctx| {}).unwrap(); // the queue is full
    /// let err = pool.submit_deadline(|_ctx| {}, Instant::now()).unwrap_err(); // a past deadline
    /// assert_eq!(err.reason, Refused::Timeout);
    /// drop(release);
    /// ```
    pub fn submit_deadline<F>(&self, f: F, deadline: Instant) -> Result<(), SubmitError>
    where
        F: FnOnce(&Context) + Send + 'static,
    {
        self.submit_job(Job::new(f), Until::Deadline(Some(deadline)))
    }

    /// Queues `f`, waiting for room until `ctx` is done at most.
    ///
    /// # Errors
    ///
    /// [`Refused::Done`] or [`Refused::Closed`], with the job.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use quiesce::{Context, ContextError, Pool, Refused};
    ///
    /// let pool = Pool::builder().workers(1).queue(1).build().unwrap();
    /// let (release, hold) = crossbeam_channel::bounded::<()>(0);
    /// pool.submit(move |_ctx| { let _ = hold.recv(); }).unwrap(); // the worker is busy
    /// pool.submit(|_ctx| {}).unwrap(); // the queue is full
    /// let (request, _guard) = Context::background().with_timeout(Duration::from_millis(2));
    /// let err = pool.submit_ctx(|_ctx| {}, &request).unwrap_err();
    /// assert_eq!(err.reason, Refused::Done(ContextError::DeadlineExceeded));
    /// drop(release);
    /// ```
    pub fn submit_ctx<F>(&self, f: F, ctx: &Context) -> Result<(), SubmitError>
    where
        F: FnOnce(&Context) + Send + 'static,
    {
        self.submit_job(Job::new(f), Until::Context(ctx))
    }

    /// Queues `f` (waiting while the queue is full) and returns a handle to
    /// its result or panic.
    ///
    /// # Errors
    ///
    /// [`Refused::Closed`] once shutdown has begun, with the job.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = quiesce::Pool::builder().workers(1).build().unwrap();
    /// let score = pool.execute(|_ctx| 3 + 4).unwrap();
    /// assert_eq!(score.join().unwrap(), 7);
    /// ```
    pub fn execute<F, T>(&self, f: F) -> Result<JobHandle<T>, SubmitError>
    where
        F: FnOnce(&Context) -> T + Send + 'static,
        T: Send + 'static,
    {
        let (completer, handle) = handle::pair();
        let job = Job {
            f: Box::new(move |ctx: &Context| {
                let result = crate::panic::catch(|| f(ctx));
                let panic = result.as_ref().err().cloned();
                completer.finish(result);
                panic
            }),
        };
        self.submit_job(job, Until::Deadline(None))?;
        Ok(handle)
    }

    /// Requeues a job that was handed back (by a refused submit or a
    /// shutdown report), waiting while the queue is full.
    ///
    /// # Errors
    ///
    /// [`Refused::Closed`] once shutdown has begun, with the job.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use quiesce::{Job, Pool};
    ///
    /// let pool = Pool::builder().workers(1).build().unwrap();
    /// let job = Job::new(|_ctx| println!("SITE-A upload"));
    /// pool.submit_job_blocking(job).unwrap();
    /// assert_eq!(pool.shutdown_timeout(Duration::from_secs(10)).completed, 1);
    /// ```
    pub fn submit_job_blocking(&self, job: Job) -> Result<(), SubmitError> {
        self.submit_job(job, Until::Deadline(None))
    }

    fn submit_job(&self, job: Job, until: Until<'_>) -> Result<(), SubmitError> {
        let shared = &self.shared;
        let refuse = |reason, job| Err(SubmitError { reason, job });
        let _intake = shared.intake.read();
        if shared.closing.load(Ordering::Relaxed) || shared.ctx.is_done() {
            return refuse(Refused::Closed, job);
        }
        if let Until::Context(ctx) = until {
            if let Err(err) = ctx.check() {
                return refuse(Refused::Done(err), job);
            }
        }
        let job = match shared.queue_tx.try_send(job) {
            Ok(()) => {
                shared.grow_if_needed();
                return Ok(());
            }
            Err(TrySendError::Full(job)) | Err(TrySendError::Disconnected(job)) => job,
        };
        shared.grow_if_needed();
        let deadline = match until {
            Until::Now => return refuse(Refused::Full, job),
            Until::Deadline(deadline) => deadline,
            Until::Context(_) => None,
        };
        let mut sel = Select::new();
        let send = sel.send(&shared.queue_tx);
        let closed = sel.recv(shared.closed.channel());
        // A cancelled parent stops the workers: stop waiting for room too.
        let pool_done = sel.recv(shared.ctx.done());
        let done = match until {
            Until::Context(ctx) => Some(sel.recv(ctx.done())),
            _ => None,
        };
        let oper = match deadline {
            Some(deadline) => match sel.select_deadline(deadline) {
                Ok(oper) => oper,
                Err(_) => return refuse(Refused::Timeout, job),
            },
            None => sel.select(),
        };
        let index = oper.index();
        if index == send {
            return match oper.send(&shared.queue_tx, job) {
                Ok(()) => {
                    shared.grow_if_needed();
                    Ok(())
                }
                Err(err) => refuse(Refused::Closed, err.into_inner()),
            };
        }
        if Some(index) == done {
            if let Until::Context(ctx) = until {
                let _ = oper.recv(ctx.done());
                return refuse(
                    Refused::Done(ctx.err().unwrap_or(ContextError::Canceled)),
                    job,
                );
            }
        }
        if index == pool_done {
            let _ = oper.recv(shared.ctx.done());
        } else {
            debug_assert_eq!(index, closed);
            let _ = oper.recv(shared.closed.channel());
        }
        refuse(Refused::Closed, job)
    }

    /// Changes the number of workers: a fixed pool gets exactly `n`; an
    /// elastic one gets `max = n` (and `min` lowered to `n` if above).
    /// Extra workers exit the next time they wait for work (a busy one
    /// first finishes its job, and any it takes straight from the queue);
    /// missing ones start now.
    ///
    /// # Errors
    ///
    /// The OS error if a new worker cannot be started.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    ///
    /// let pool = quiesce::Pool::builder().workers(2).build().unwrap();
    /// pool.resize(4).unwrap();
    /// assert_eq!(pool.workers(), 4); // started now
    /// pool.resize(1).unwrap();
    /// let give_up = Instant::now() + Duration::from_secs(10);
    /// while pool.workers() > 1 && Instant::now() < give_up {
    ///     std::thread::sleep(Duration::from_millis(1));
    /// }
    /// assert_eq!(pool.workers(), 1); // the idle extras left
    /// ```
    pub fn resize(&self, n: usize) -> io::Result<()> {
        let shared = &self.shared;
        let n = n.max(1);
        let fixed = shared.min.load(Ordering::Relaxed) == shared.max.load(Ordering::Relaxed);
        shared.max.store(n, Ordering::SeqCst);
        if fixed || shared.min.load(Ordering::Relaxed) > n {
            shared.min.store(n, Ordering::SeqCst);
        }
        let min = shared.min.load(Ordering::SeqCst);
        shared.elastic.store(min < n, Ordering::SeqCst);
        let workers = shared.workers.load(Ordering::SeqCst);
        for _ in n..workers {
            let _ = shared.wake_tx.send(());
        }
        while shared.workers.load(Ordering::SeqCst) < shared.min.load(Ordering::SeqCst) {
            if !shared.spawn_worker()? {
                break;
            }
        }
        Ok(())
    }

    /// Stops the pool: closes intake, runs the queued jobs until `deadline`,
    /// then cancels the running ones; see [the lifecycle](Pool#lifecycle). Returns
    /// soon after `deadline` (plus the stop grace) even if a job ignores its
    /// context; that job's worker is named in the report.
    ///
    /// While one stop is under way, another — [`abort`](Pool::abort) on a
    /// second Ctrl-C, or a shutdown with an earlier deadline — cancels the
    /// running jobs on its own terms, and its report hands back the jobs
    /// still queued then; the first call's report names any stuck worker.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    ///
    /// let pool = quiesce::Pool::builder()
    ///     .workers(1)
    ///     .stop_grace(Duration::from_secs(10))
    ///     .build()
    ///     .unwrap();
    /// let (started_tx, started) = crossbeam_channel::bounded(1);
    /// pool.submit(move |ctx| {
    ///     started_tx.send(()).unwrap();
    ///     let _ = ctx.done().recv(); // streams an export until cancelled
    /// })
    /// .unwrap();
    /// started.recv_timeout(Duration::from_secs(10)).unwrap();
    /// let report = pool.shutdown(Instant::now() + Duration::from_millis(5));
    /// assert_eq!(report.cancelled, 1); // running at the deadline: cancelled, then returned
    /// assert!(report.stuck.is_empty());
    /// ```
    pub fn shutdown(&self, deadline: Instant) -> ShutdownReport {
        self.shared.stop(Stop::Drain(Some(deadline)))
    }

    /// [`shutdown`](Pool::shutdown) `timeout` from now.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let pool = quiesce::Pool::builder().workers(2).build().unwrap();
    /// for site in 0..8 {
    ///     pool.submit(move |_ctx| { let _ = site; }).unwrap();
    /// }
    /// let report = pool.shutdown_timeout(Duration::from_secs(10));
    /// assert_eq!(report.completed, 8); // drained: every queued job ran
    /// assert!(pool.is_closed());
    /// ```
    pub fn shutdown_timeout(&self, timeout: Duration) -> ShutdownReport {
        match crate::deadline::after(timeout) {
            Some(deadline) => self.shutdown(deadline),
            None => self.shared.stop(Stop::Drain(None)),
        }
    }

    /// Stops the pool now: closes intake, cancels running jobs, hands back
    /// every queued job, and waits the stop grace for the workers.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let pool = quiesce::Pool::builder()
    ///     .workers(1)
    ///     .stop_grace(Duration::from_secs(10))
    ///     .build()
    ///     .unwrap();
    /// let (started_tx, started) = crossbeam_channel::bounded(1);
    /// pool.submit(move |ctx| {
    ///     started_tx.send(()).unwrap();
    ///     let _ = ctx.done().recv();
    /// })
    /// .unwrap();
    /// started.recv_timeout(Duration::from_secs(10)).unwrap();
    /// for site in ["SITE-A", "SITE-B"] {
    ///     pool.submit(move |_ctx| println!("upload {site}")).unwrap();
    /// }
    /// let report = pool.abort(); // a second Ctrl-C, say
    /// assert_eq!(report.cancelled, 1);
    /// assert_eq!(report.never_started.len(), 2); // handed back, to persist
    /// ```
    pub fn abort(&self) -> ShutdownReport {
        self.shared.stop(Stop::Abort)
    }

    /// Jobs running now.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let pool = quiesce::Pool::builder().workers(1).build().unwrap();
    /// let (started_tx, started) = crossbeam_channel::bounded(1);
    /// let (release, hold) = crossbeam_channel::bounded::<()>(0);
    /// pool.submit(move |_ctx| {
    ///     started_tx.send(()).unwrap();
    ///     let _ = hold.recv();
    /// })
    /// .unwrap();
    /// started.recv_timeout(Duration::from_secs(10)).unwrap();
    /// assert_eq!(pool.running(), 1);
    /// drop(release);
    /// let _ = pool.shutdown_timeout(Duration::from_secs(10));
    /// assert_eq!(pool.running(), 0);
    /// ```
    pub fn running(&self) -> usize {
        usize::try_from(self.shared.stats.totals().running).unwrap_or(usize::MAX)
    }

    /// Jobs waiting in the queue now.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let pool = quiesce::Pool::builder().workers(1).queue(1).build().unwrap();
    /// let (release, hold) = crossbeam_channel::bounded::<()>(0);
    /// pool.submit(move |_ctx| { let _ = hold.recv(); }).unwrap(); // the worker is busy
    /// pool.submit(|_ctx| {}).unwrap(); // returns once it is queued
    /// assert_eq!(pool.queued(), 1);
    /// drop(release);
    /// assert_eq!(pool.shutdown_timeout(Duration::from_secs(10)).completed, 2);
    /// assert_eq!(pool.queued(), 0);
    /// ```
    pub fn queued(&self) -> usize {
        self.shared.queue_rx.len()
    }

    /// Jobs that returned normally so far.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let pool = quiesce::Pool::builder().workers(2).build().unwrap();
    /// for _ in 0..3 {
    ///     pool.submit(|_ctx| {}).unwrap();
    /// }
    /// pool.submit(|_ctx| panic!("bad row")).unwrap();
    /// let _ = pool.shutdown_timeout(Duration::from_secs(10));
    /// assert_eq!(pool.completed(), 3); // the panic is counted apart
    /// ```
    pub fn completed(&self) -> u64 {
        self.shared.stats.totals().completed
    }

    /// Jobs that panicked so far.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let pool = quiesce::Pool::builder().workers(1).build().unwrap();
    /// pool.submit(|_ctx| panic!("bad row")).unwrap();
    /// let after = pool.execute(|_ctx| "still here").unwrap();
    /// assert_eq!(after.join(), Ok("still here")); // the one worker lived on
    /// let _ = pool.shutdown_timeout(Duration::from_secs(10));
    /// assert_eq!(pool.panicked(), 1);
    /// ```
    pub fn panicked(&self) -> u64 {
        self.shared.stats.totals().panicked
    }

    /// Live worker threads now.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let pool = quiesce::Pool::builder().workers(3).build().unwrap();
    /// assert_eq!(pool.workers(), 3);
    /// let _ = pool.shutdown_timeout(Duration::from_secs(10));
    /// assert_eq!(pool.workers(), 0); // all exited and joined
    /// ```
    pub fn workers(&self) -> usize {
        self.shared.workers.load(Ordering::Relaxed)
    }

    /// `true` once shutdown has begun.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = quiesce::Pool::builder().workers(1).build().unwrap();
    /// assert!(!pool.is_closed());
    /// let _ = pool.abort();
    /// assert!(pool.is_closed());
    /// ```
    pub fn is_closed(&self) -> bool {
        self.shared.closing.load(Ordering::SeqCst)
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.shared.name)
            .field("workers", &self.workers())
            .field("running", &self.running())
            .field("queued", &self.queued())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let report = self.shared.stop(Stop::Drain(None));
        if !report.never_started.is_empty() {
            // Only possible if a job was handed back by a worker that saw
            // the parent context cancelled.
            log::warn!(
                "pool {}: {} job(s) never started and are dropped with the pool",
                self.shared.name,
                report.never_started.len()
            );
        }
    }
}

impl Shared {
    fn elastic(&self) -> bool {
        self.elastic.load(Ordering::Relaxed)
    }

    /// Starts one more worker if below `max`; `Ok(false)` when at `max` or
    /// closed.
    fn spawn_worker(self: &Arc<Self>) -> io::Result<bool> {
        let mut guard = self.threads.lock();
        let Some(threads) = guard
            .as_mut()
            .filter(|_| !self.closing.load(Ordering::SeqCst))
        else {
            return Ok(false);
        };
        let max = self.max.load(Ordering::SeqCst);
        if self
            .workers
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                (w < max).then_some(w + 1)
            })
            .is_err()
        {
            return Ok(false);
        }
        // Join workers that have exited (elastic shrink, resize) as we go.
        threads.reap();
        let index = self.next_worker.fetch_add(1, Ordering::Relaxed);
        let shared = self.clone();
        let started = threads.spawn(format!("{}-{index}", self.name), move |ctx| {
            worker(&shared, ctx, index);
        });
        if let Err(err) = started {
            self.workers.fetch_sub(1, Ordering::SeqCst);
            return Err(err);
        }
        Ok(true)
    }

    /// Elastic growth: one more worker when none is idle (and below
    /// `max`).
    ///
    /// Called by a submitter *after* it queued a job, and by a worker
    /// *after* it took a job (and so left the idle count) and finds jobs
    /// still queued. All
    /// `SeqCst`: if the worker's look at the queue misses the new job, the
    /// submitter's look at `idle` sees the worker gone, so a queued job is
    /// never left without either an idle worker or a new one.
    fn grow_if_needed(self: &Arc<Self>) {
        if !self.elastic()
            || self.idle.load(Ordering::SeqCst) > 0
            || self.workers.load(Ordering::SeqCst) >= self.max.load(Ordering::SeqCst)
        {
            return;
        }
        if let Err(err) = self.spawn_worker() {
            log::warn!("pool {}: cannot start another worker: {err}", self.name);
        }
    }

    /// A worker took a job: if more are waiting and nobody is idle, the
    /// pool grows (each new worker does the same as it takes its first
    /// job, so a burst of submits grows the pool as far as it needs).
    fn took_job(self: &Arc<Self>) {
        if self.elastic() && !self.queue_rx.is_empty() {
            self.grow_if_needed();
        }
    }

    /// Leaves the worker count if it is above the current `max` (resize) or
    /// above `min` and idle (`idle_exit`); `true` when this worker must go.
    fn retire(&self, idle_exit: bool) -> bool {
        let limit = if idle_exit {
            self.min.load(Ordering::SeqCst)
        } else {
            self.max.load(Ordering::SeqCst)
        };
        self.workers
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                (w > limit).then(|| w - 1)
            })
            .is_ok()
    }

    /// Undoes a `retire` when work showed up meanwhile; `false` if the
    /// pool is at `max` again (others took the place).
    fn rejoin(&self) -> bool {
        let max = self.max.load(Ordering::SeqCst);
        self.workers
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                (w < max).then_some(w + 1)
            })
            .is_ok()
    }

    fn run_job(&self, job: Job, ctx: &Context, stats: &WorkerStats) {
        if ctx.is_done() {
            // Cancelled (abort, deadline, parent): hand it back, unstarted.
            self.returned.lock().push(job);
            return;
        }
        stats.started();
        let panic = (job.f)(ctx);
        match panic {
            Some(panic) => {
                stats.ended(Ended::Panicked);
                log::warn!("pool {}: a job {panic}", self.name);
                if let Some(handler) = &self.panic_handler {
                    if let Err(p) = crate::panic::catch(|| handler(&panic)) {
                        log::error!("pool {}: the panic handler {p}", self.name);
                    }
                }
            }
            None if ctx.is_done() => stats.ended(Ended::Cancelled),
            None => stats.ended(Ended::Completed),
        }
    }

    /// Steps 1 and 2 of a shutdown: close intake, then wait out the
    /// submits under way. Idempotent.
    fn close_intake(&self) {
        let mut shut = self.shut.lock();
        if !*shut {
            *shut = true;
            self.closing.store(true, Ordering::SeqCst);
            self.closed_trigger.fire();
            drop(self.intake.write());
            log::debug!("pool {}: intake closed", self.name);
        }
    }

    fn stop(&self, how: Stop) -> ShutdownReport {
        self.close_intake();
        // Take the workers out of the lock while waiting for them, so a
        // worker trying to grow the pool is not blocked behind us (it finds
        // `closed` fired, or no `Threads`, and gives up). A concurrent stop
        // that finds them taken reports without waiting.
        let Some(mut threads) = self.threads.lock().take() else {
            // Another stop is waiting for the workers. Still honour this
            // one's stricter terms: an abort, or an earlier deadline,
            // cancels the running jobs when it says so.
            match how {
                Stop::Abort => self.cancel.cancel(),
                Stop::Drain(Some(deadline)) => {
                    let _ = self.ctx.done().recv_deadline(deadline);
                    self.cancel.cancel();
                }
                Stop::Drain(None) => {}
            }
            return self.report(Vec::new());
        };
        if let Stop::Drain(deadline) = how {
            // Step 3: intake is sealed, so an empty queue stays empty.
            self.draining.store(true, Ordering::SeqCst);
            self.drain_trigger.fire();
            let _ = match deadline {
                Some(deadline) => threads.join_deadline(deadline),
                None => threads.join_timeout(Duration::MAX),
            };
        }
        // Step 4.
        threads.cancel();
        let stuck = threads.join_timeout(self.stop_grace).running;
        *self.threads.lock() = Some(threads);
        self.report(stuck)
    }

    fn report(&self, stuck: Vec<Running>) -> ShutdownReport {
        let mut never_started = std::mem::take(&mut *self.returned.lock());
        never_started.extend(self.queue_rx.try_iter());
        if !stuck.is_empty() {
            let names: Vec<&str> = stuck.iter().map(|r| r.name.as_str()).collect();
            log::warn!(
                "pool {}: worker(s) still running after the deadline: {}",
                self.name,
                names.join(", ")
            );
        }
        let totals = self.stats.totals();
        ShutdownReport {
            completed: totals.completed,
            panicked: totals.panicked,
            cancelled: totals.cancelled,
            never_started,
            stuck,
        }
    }
}

/// Decrements the live worker count when a worker ends, however it ends,
/// unless the worker already left the count (retire).
struct WorkerExit<'a> {
    shared: &'a Shared,
    counted: bool,
    index: usize,
    stats: Arc<WorkerStats>,
}

impl Drop for WorkerExit<'_> {
    fn drop(&mut self) {
        self.shared.stats.retire(&self.stats);
        if self.counted {
            self.shared.workers.fetch_sub(1, Ordering::SeqCst);
        }
        if let Some(hook) = &self.shared.on_exit {
            let index = self.index;
            if let Err(p) = crate::panic::catch(|| hook(index)) {
                log::error!("pool {}: the on_exit hook {p}", self.shared.name);
            }
        }
    }
}

/// What woke an idle worker.
enum Wake {
    Job(Job),
    Resize,
    Drain,
    Stop,
    IdleTimeout,
}

/// How many times an idle worker yields, looking at the queue in between,
/// before it parks.
///
/// Parking and being woken costs a few microseconds (two system calls and
/// a context switch), which every job pays when the submitter is only a
/// little slower than the workers and the queue keeps running empty. A
/// couple of yields (which give the CPU to the submitter meanwhile) keep the
/// workers awake across such gaps: 1,000,000 no-op jobs through 2 workers
/// went from about 57 to about 24 ns per job (see `benches/pool.rs`). More
/// yields gain nothing there and cost CPU when jobs are sparse: each is a
/// system call, made again after every job by a worker that then parks.
const BACKOFF_YIELDS: usize = 2;

/// Looks at the queue between yields, [`BACKOFF_YIELDS`] times.
fn try_recv_a_while(shared: &Shared) -> Option<Job> {
    for _ in 0..BACKOFF_YIELDS {
        std::thread::yield_now();
        if let Ok(job) = shared.queue_rx.try_recv() {
            return Some(job);
        }
    }
    None
}

fn worker(shared: &Arc<Shared>, ctx: &Context, index: usize) {
    let stats = shared.stats.register();
    let mut exit = WorkerExit {
        shared,
        counted: true,
        index,
        stats: stats.clone(),
    };
    if let Some(hook) = &shared.on_start {
        if let Err(p) = crate::panic::catch(|| hook(index)) {
            log::error!("pool {}: the on_start hook {p}", shared.name);
        }
    }
    loop {
        if ctx.is_done() {
            return;
        }
        // Fast path: take queued work without building a `Select`.
        if let Ok(job) = shared.queue_rx.try_recv() {
            shared.took_job();
            shared.run_job(job, ctx, &stats);
            continue;
        }
        if shared.draining.load(Ordering::SeqCst) {
            // Intake was sealed before `draining` was set, so every job
            // ever sent is in the queue by now: look once more (the look
            // above may predate the last sends), then leave when empty.
            if shared.queue_rx.is_empty() {
                return;
            }
            continue;
        }
        if let Some(job) = try_recv_a_while(shared) {
            shared.took_job();
            shared.run_job(job, ctx, &stats);
            continue;
        }
        match wait_for_work(shared, ctx) {
            Wake::Job(job) => {
                shared.took_job();
                shared.run_job(job, ctx, &stats);
            }
            Wake::Resize => {
                if shared.retire(false) {
                    exit.counted = false;
                    return;
                }
            }
            Wake::IdleTimeout => {
                // Leave the count first, then look at the queue: a job
                // queued after that look is seen by its submitter, who then
                // finds room to grow (see `grow_if_needed`).
                if shared.retire(true) && (shared.queue_rx.is_empty() || !shared.rejoin()) {
                    exit.counted = false;
                    return;
                }
            }
            Wake::Drain => {}
            Wake::Stop => return,
        }
    }
}

fn wait_for_work(shared: &Shared, ctx: &Context) -> Wake {
    let mut sel = Select::new();
    let job = sel.recv(&shared.queue_rx);
    let resize = sel.recv(&shared.wake_rx);
    let drain = sel.recv(shared.drain.channel());
    sel.recv(ctx.done());
    shared.idle.fetch_add(1, Ordering::SeqCst);
    let oper = if shared.elastic() {
        sel.select_timeout(shared.idle_timeout)
    } else {
        Ok(sel.select())
    };
    shared.idle.fetch_sub(1, Ordering::SeqCst);
    let Ok(oper) = oper else {
        return Wake::IdleTimeout;
    };
    match oper.index() {
        i if i == job => match oper.recv(&shared.queue_rx) {
            Ok(job) => Wake::Job(job),
            Err(_) => Wake::Stop,
        },
        i if i == resize => {
            let _ = oper.recv(&shared.wake_rx);
            Wake::Resize
        }
        i if i == drain => {
            let _ = oper.recv(shared.drain.channel());
            Wake::Drain
        }
        _ => {
            let _ = oper.recv(ctx.done());
            Wake::Stop
        }
    }
}
