//! The values a submit and a stop hand back: [`Job`], [`Refused`],
//! [`SubmitError`] and [`ShutdownReport`].

use std::fmt;

use crate::context::{Context, ContextError};
use crate::panic::Panic;
use crate::threads::Running;

#[cfg(doc)]
use super::Pool;

/// A job of a [`Pool`]: a closure given the pool's [`Context`], boxed.
/// Refused and never-started jobs come back as `Job`s, so nothing is lost:
/// run one elsewhere with [`Job::run`], or drop it knowingly.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use quiesce::{Context, Pool, pool::Refused};
///
/// let pool = Pool::builder().workers(1).build().unwrap();
/// let _ = pool.shutdown_timeout(Duration::from_secs(10));
/// let err = pool.submit(|_ctx| println!("late file upload")).unwrap_err();
/// assert_eq!(err.reason, Refused::Closed);
/// let job = err.into_job(); // not lost: run it here
/// assert!(job.run(&Context::background()).is_ok());
/// ```
pub struct Job {
    pub(super) f: JobFn,
}

/// A job as the workers run it: the panic, if any, comes back as a value.
pub(super) type JobFn = Box<dyn FnOnce(&Context) -> Option<Panic> + Send + 'static>;

impl Job {
    /// Wraps a closure as a job (panics in it are caught when it runs).
    ///
    /// # Examples
    ///
    /// ```
    /// use quiesce::{Context, pool::Job};
    ///
    /// let job = Job::new(|_ctx| panic!("file 17 is corrupt"));
    /// let panic = job.run(&Context::background()).unwrap_err(); // caught, not unwound
    /// assert_eq!(panic.message(), "file 17 is corrupt");
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
    /// use quiesce::{Context, pool::Job};
    ///
    /// let ctx = Context::background().with_cancel();
    /// ctx.cancel();
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
/// use quiesce::{Pool, pool::Refused};
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
    /// The parent context the pool was built under
    /// ([`PoolBuilder::context`](super::PoolBuilder::context)) is done (how:
    /// cancelled or past its deadline), and no shutdown has begun: the pool
    /// runs no more jobs. Once a shutdown has begun, submits are refused as
    /// [`Closed`](Refused::Closed).
    ParentDone(ContextError),
}

/// A refused submit: why, and the job, handed back.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use quiesce::{Pool, pool::Refused};
///
/// let pool = Pool::builder().workers(1).queue(1).build().unwrap();
/// let (release, hold) = crossbeam_channel::bounded::<()>(0);
/// pool.submit(move |_ctx| { let _ = hold.recv(); }).unwrap(); // the worker is busy
/// pool.submit(|_ctx| {}).unwrap(); // the queue is full
/// let err = pool.submit_timeout(|_ctx| {}, Duration::from_millis(2)).unwrap_err();
/// assert_eq!(err.reason, Refused::Timeout);
/// assert_eq!(err.to_string(), "job refused: the pool's queue stayed full until the deadline");
/// drop(release);
/// pool.submit_job_blocking(err.into_job()).unwrap(); // try again, waiting this time
/// ```
///
/// It is `Send + Sync + 'static`, so `pool.submit(job)?` works in a function
/// returning `anyhow::Result` or `Box<dyn Error + Send + Sync>`; the job
/// (a closure, which need not be `Sync`) is kept behind a lock that only
/// [`into_job`](SubmitError::into_job) opens.
///
/// ```
/// fn enqueue(pool: &quiesce::Pool) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
///     pool.submit(|_ctx| { /* work */ })?;
///     Ok(())
/// }
/// let pool = quiesce::Pool::builder().workers(1).build().unwrap();
/// enqueue(&pool).unwrap();
/// let _ = pool.shutdown_timeout(std::time::Duration::from_secs(10));
/// assert_eq!(enqueue(&pool).unwrap_err().to_string(), "job refused: the pool is shutting down");
/// ```
pub struct SubmitError {
    /// Why the job was refused.
    pub reason: Refused,
    /// The job, not run: behind a lock only so that the error is `Sync`.
    job: std::sync::Mutex<Job>,
}

impl SubmitError {
    pub(super) fn new(reason: Refused, job: Job) -> SubmitError {
        SubmitError {
            reason,
            job: std::sync::Mutex::new(job),
        }
    }

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
    /// let err = old.submit(|_ctx| println!("shard-b upload")).unwrap_err();
    /// let backup = Pool::builder().workers(1).name("backup").build().unwrap();
    /// backup.submit_job_blocking(err.into_job()).unwrap();
    /// assert_eq!(backup.shutdown_timeout(Duration::from_secs(10)).completed, 1);
    /// ```
    pub fn into_job(self) -> Job {
        // Never locked before (only this consumes it), so never poisoned.
        self.job
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
        write!(f, "job refused: {}", self.reason)
    }
}

// No `source()`: the message already says the reason (an error chain
// printed with `{:#}` would say it twice).
impl std::error::Error for SubmitError {}

/// Why, in words: `the pool's queue is full`, `the pool is shutting down`…
///
/// # Examples
///
/// ```
/// use quiesce::pool::Refused;
///
/// assert_eq!(Refused::Closed.to_string(), "the pool is shutting down");
/// assert_eq!(
///     Refused::ParentDone(quiesce::ContextError::Canceled).to_string(),
///     "the pool's parent context is done: context canceled"
/// );
/// let err: Box<dyn std::error::Error + Send + Sync> = Refused::Full.into();
/// assert_eq!(err.to_string(), "the pool's queue is full");
/// ```
impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Full => f.write_str("the pool's queue is full"),
            Refused::Timeout => f.write_str("the pool's queue stayed full until the deadline"),
            Refused::Done(err) => write!(f, "{err}"),
            Refused::Closed => f.write_str("the pool is shutting down"),
            Refused::ParentDone(err) => write!(f, "the pool's parent context is done: {err}"),
        }
    }
}

impl std::error::Error for Refused {}

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
/// pool.submit(|_ctx| panic!("bad file")).unwrap();
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
