//! `Pool`: a fixed or elastic set of worker threads fed by a bounded queue.
//! The public docs, with the Go pattern it replaces, are on [`Pool`]; this
//! module holds the handle and the state it shares with its workers
//! (`Shared`), and the rest lives in one file per idea: `job` (the
//! values handed back), `builder`, `submit`, `elastic` (sizing), `idle`
//! (waiting until no job is queued or running), `stop` (the stop
//! protocol), `worker` (the worker loop) and `stats` (per-worker counts). Under `--cfg quiesce_loom`, `model.rs`
//! adds the hooks `tests/loom.rs` uses: there no worker thread starts (see
//! `worker::start`), and the models play the worker's part.
//!
//! # What the pool owns
//!
//! - the queue, a bounded crossbeam channel of [`Job`]s: submitters send,
//!   workers receive, a stop empties what is left into its report;
//! - the worker threads, in a [`Threads`] behind `threads` (`None` while a
//!   stop has them out to join them);
//! - the intake state: the `intake` lock, `closed` and the bell that
//!   announces it; the drain state: `draining`;
//! - the sizing state: `limits` (`min` and `max` in one word), and the
//!   counts `workers` and `idle`;
//! - `busy`, the jobs accepted and not yet over, with `idle_lock` and
//!   `idle_bell` for those waiting for it to reach zero (`idle`);
//! - `returned`: jobs a worker took but did not start, the context being
//!   cancelled; and the pool's [`Context`] with the guard that cancels it.
//!
//! # Who touches what
//!
//! - Submitters (any thread, through `&Pool`): the `intake` lock (shared),
//!   `closed`, the queue's sending end, and `grow_if_needed` (reads
//!   `limits`, `idle`, `workers`; may start a worker under `threads`).
//! - Workers (the threads in `threads`): the queue's receiving end, the
//!   `wake` channel, the context; `idle` and `workers` (their own comings
//!   and goings); `returned` (push); their own stats slot.
//! - Stoppers (`shutdown`, `abort`, `Drop`, any thread): `closed` and its
//!   bell, the `intake` lock (exclusive), `threads` (take and put back),
//!   `draining` and the `wake` channel, the cancel guard, `returned`
//!   (take) and the queue (empty).
//! - Resizers (`resize`, any thread): `limits`, the `wake` channel, and
//!   `spawn_worker`.
//!
//! # Invariants
//!
//! 1. Intake closes once, and `closed` is the only record of it: it goes
//!    from `false` to `true` once, by a `swap`; the caller that set it
//!    rings `closed_bell`. Every stop then takes the `intake` lock
//!    exclusively and releases it before going on.
//! 2. A submit holds the `intake` lock (shared) from its look at `closed`
//!    until its job is in the queue or handed back. So once a stop has
//!    taken and released the lock exclusively (1), no job enters the queue
//!    again: a submit that looked before is finished, one that looks after
//!    sees `closed` set. The lock's release and acquire order the store
//!    of `closed` before that look, so the look may be `Relaxed`.
//! 3. A submit waiting for room in a full queue holds the `intake` lock
//!    while it waits, and it waits on `closed_bell` too. The bell is rung
//!    by the caller that set `closed`, which takes no pool lock before
//!    (only the bell's own), so a stop waiting for the `intake` lock never
//!    waits on a submit that waits on a stop. The bell is a wake-up, not a
//!    second record: nothing reads it as state (a crossbeam `Select`
//!    cannot wait on an atomic).
//! 4. `draining` is the only record of the drain. It is set only after
//!    intake is sealed (2), by the stop that holds the workers, so a worker
//!    that sees it and an empty queue may exit: the queue stays empty. Then
//!    the stop sends one message on `wake` per counted worker (5): every
//!    worker that may be waiting without having seen `draining` is counted,
//!    and one message sent after the store makes it see the store, so none
//!    sleeps through the drain. (Messages left over from a `resize` only
//!    wake a worker early; it looks and waits again.)
//! 5. `workers` counts the workers holding a place: `spawn_worker` adds
//!    one (under `threads`, only below `max`, only while `closed` is unset
//!    and `threads` is there) before the thread starts; `rejoin` adds one
//!    back; `retire` (a worker leaving on purpose) and `WorkerExit` (any
//!    other end) take one away, once per worker. A worker out of the count
//!    is on its way out, or about to `rejoin` and then look at `draining`.
//! 6. An elastic pool never leaves a queued job without a worker: a
//!    submitter queues its job, then looks at `idle` and `workers`; an idle
//!    worker above `min` leaves the count, then looks at the queue. Each
//!    side has a `SeqCst` fence between its write and its look
//!    (`grow_if_needed`, `leave_when_idle`), so at least one of them sees
//!    the other (a worker stays, or a new one starts), whatever orderings
//!    the channel uses inside.
//! 7. A job taken from the queue is run, or handed back into `returned`
//!    when the pool's context is already cancelled. A stop joins the
//!    workers (until the grace runs out) before it collects `returned` and
//!    the queue, so each accepted job is counted once in its report: run,
//!    or handed back in `never_started`. A second, concurrent stop finds
//!    `threads` taken and reports without joining; the first one's report
//!    has whatever came back later.
//! 8. `min <= max`, always: `limits` holds both in one atomic word, written
//!    whole by one read-modify-write, so concurrent `resize` calls apply
//!    one after the other and no reader sees half of one. "Elastic" is
//!    `min < max` of the same read, not stored apart.
//! 10. `busy` counts each accepted job once, from before it enters the
//!     queue until it is over: a submit adds one before its send (and takes
//!     it back if the send fails), so no worker can count the job over
//!     first; a worker takes one away when the job has run or is handed
//!     back into `returned`; a stop, for each job it collects from the
//!     queue (7). A waiter in `wait_idle_*` looks at `busy` with
//!     `idle_lock` held before each wait, and whoever brings it to zero
//!     takes `idle_lock` before notifying `idle_bell`, so no wake-up is
//!     lost (the `WaitGroup`'s rule).
//! 9. A refused submit says why: [`Refused::Closed`] when `closed` is set;
//!    otherwise a done pool context means the parent is done
//!    ([`Refused::ParentDone`]), because a stop cancels the context only
//!    after it has closed intake and taken the `intake` lock (1, 2).
//!
//! # Locks
//!
//! Lock order: `intake` (shared, in a submit) → `threads` (in
//! `spawn_worker`). The bell's lock, `returned`, `idle_lock` and the stats
//! lock are leaves: nothing is taken under them. No user code (jobs, hooks, the
//! panic handler) runs under a pool lock.

use std::fmt;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::context::{CancelGuard, Context};
use crate::sync::{Arc, AtomicBool, AtomicUsize, Condvar, Mutex, Ordering, RwLock};
use crate::threads::Threads;

mod builder;
mod elastic;
mod idle;
mod job;
#[cfg(quiesce_loom)]
mod model;
mod stats;
mod stop;
mod submit;
mod worker;

pub use builder::PoolBuilder;
pub use job::{Job, Refused, ShutdownReport, SubmitError};

use builder::{Hook, PanicHandler};
use elastic::Limits;
use stats::{Padded, Stats};
use stop::Bell;

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
/// its [`JobHandle`](crate::JobHandle) if it has one. The worker lives on, so a panic never
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
/// let report = pool.shutdown_deadline(Instant::now() + Duration::from_secs(10));
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
    /// Wakes idle workers to look at the state again: after a `resize`
    /// (invariant 8), and once per worker when the drain starts (invariant 4).
    wake_tx: Sender<()>,
    wake_rx: Receiver<()>,
    /// Submits hold it shared; every stop takes it exclusively, once, to
    /// wait for submits under way after `closed` was set (invariant 2). Padded:
    /// every submit writes its lock word.
    intake: Padded<RwLock<()>>,
    /// "Intake is closed": the one record of it (invariant 1). An atomic because
    /// every submit reads it.
    closed: AtomicBool,
    /// Rung once `closed` is set, to wake the submits waiting for room
    /// (invariant 3). A wake-up only: nothing reads it as state.
    closed_bell: Bell,
    /// "The drain has begun": the one record of it (invariant 4).
    draining: AtomicBool,
    /// `None` while a stop waits for the workers.
    threads: Mutex<Option<Threads<()>>>,
    /// Jobs a worker took from the queue but did not start because the
    /// pool's context was already cancelled.
    returned: Mutex<Vec<Job>>,
    /// Jobs accepted and not yet over: queued, or taken by a worker and
    /// not yet run or handed back (invariant 10). Padded: every submit and
    /// every job writes it.
    busy: Padded<AtomicUsize>,
    /// Taken by `wait_idle_*` and by the one that brings `busy` to zero,
    /// before it rings `idle_bell` (invariant 10).
    idle_lock: Mutex<()>,
    idle_bell: Condvar,
    /// `min` and `max`, in one atomic word (invariant 8).
    limits: Limits,
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
        self.shared.closed.load(Ordering::SeqCst)
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
