//! `Pool`: a fixed or elastic set of worker threads fed by a bounded queue.
//! The public docs, with the Go pattern it replaces, are on [`Pool`]; this
//! module holds the handle and the state it shares with its workers
//! ([`Shared`]), and the rest lives in one file per idea: [`job`] (the
//! values handed back), [`builder`], [`submit`], [`elastic`] (sizing),
//! [`stop`] (the stop protocol), [`worker`] (the worker loop) and
//! [`stats`] (per-worker counts).
//!
//! # What the pool owns
//!
//! - the queue, a bounded crossbeam channel of [`Job`]s: submitters send,
//!   workers receive, a stop empties what is left into its report;
//! - the worker threads, in a [`Threads`] behind `threads` (`None` while a
//!   stop has them out to join them);
//! - the intake state: the `intake` lock, `closing`, the `closed` trigger
//!   pair and `shut`; the drain state: `draining` and the `drain` pair;
//! - the sizing state: `min`, `max`, `elastic`, and the counts `workers`
//!   and `idle`;
//! - `returned`: jobs a worker took but did not start, the context being
//!   cancelled; and the pool's [`Context`] with the guard that cancels it.
//!
//! # Who touches what
//!
//! - Submitters (any thread, through `&Pool`): the `intake` lock (shared),
//!   `closing`, the queue's sending end, and `grow_if_needed` (reads
//!   `idle`, `workers`, `max`; may start a worker under `threads`).
//! - Workers (the threads in `threads`): the queue's receiving end, the
//!   `wake` channel, `drain`, the context; `idle` and `workers` (their own
//!   comings and goings); `returned` (push); their own stats slot.
//! - Stoppers (`shutdown`, `abort`, `Drop`, any thread): `shut`,
//!   `closing`, `closed`, the `intake` lock (exclusive), `threads` (take
//!   and put back), `draining`, `drain`, the cancel guard, `returned`
//!   (take) and the queue (empty).
//! - Resizers (`resize`, any thread): `min`, `max`, `elastic`, the `wake`
//!   channel, and `spawn_worker`.
//!
//! # Invariants
//!
//! 1. Intake closes once: under `shut`, `closing` is set, then `closed`
//!    fires, then the `intake` lock is taken exclusively and released.
//!    `closing` and `closed` never go back.
//! 2. A submit holds the `intake` lock (shared) from its look at `closing`
//!    until its job is in the queue or handed back. So once a stop has
//!    taken and released the lock exclusively (1), no job enters the queue
//!    again: a submit that looked before is finished, one that looks after
//!    sees `closing` set. The lock's release and acquire order the store
//!    of `closing` before that look, so the look may be `Relaxed`.
//! 3. A submit waiting for room in a full queue holds the `intake` lock
//!    while it waits; it also waits on `closed`, which fires before the
//!    stop takes the lock exclusively (1). Firing before locking is what
//!    keeps the stop from waiting on a submit that waits on the stop.
//! 4. `draining` is set (then `drain` fires) only after intake is sealed
//!    (2), by the stop that holds the workers: a worker that sees
//!    `draining` and an empty queue may exit, as the queue stays empty.
//! 5. `workers` counts the workers holding a place: `spawn_worker` adds
//!    one (under `threads`, only below `max`, only while `closing` is
//!    unset and `threads` is there) before the thread starts; `rejoin`
//!    adds one back; `retire` (a worker leaving on purpose) and
//!    `WorkerExit` (any other end) take one away, once per worker.
//! 6. An elastic pool never leaves a queued job without a worker: a
//!    submitter queues its job, then looks at `idle` and `workers`; an idle
//!    worker above `min` leaves the count, then looks at the queue. All
//!    `SeqCst`: at least one of them sees the other (a worker stays, or a
//!    new one starts).
//! 7. A job taken from the queue is run, or handed back into `returned`
//!    when the pool's context is already cancelled. A stop joins the
//!    workers (until the grace runs out) before it collects `returned` and
//!    the queue, so each accepted job is counted once in its report: run,
//!    or handed back in `never_started`. A second, concurrent stop finds
//!    `threads` taken and reports without joining; the first one's report
//!    has whatever came back later.
//! 8. `min <= max`, `elastic == (min < max)`. Only `resize` writes them
//!    after `build`. (It does so with separate loads and stores; two
//!    concurrent calls can break this. To be fixed.)
//!
//! # Locks
//!
//! Lock order: `shut` → `intake`; `intake` (shared, in a submit) →
//! `threads` (in `spawn_worker`). `returned` and the stats lock are
//! leaves: nothing is taken under them. No user code (jobs, hooks, the
//! panic handler) runs under a pool lock.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Mutex, RwLock};

use crate::context::{CancelGuard, Context};
use crate::done::{Done, Shutdown};
use crate::threads::Threads;

mod builder;
mod elastic;
mod job;
mod stats;
mod stop;
mod submit;
mod worker;

pub use builder::PoolBuilder;
pub use job::{Job, Refused, ShutdownReport, SubmitError};

use builder::{Hook, PanicHandler};
use stats::{Padded, Stats};

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
