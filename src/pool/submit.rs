//! The submit paths: every `Pool::submit*` form, and `execute`, over one
//! `submit_job`.

use std::time::{Duration, Instant};

use crossbeam_channel::{Select, TrySendError};

use crate::context::{Context, ContextError};
use crate::deadline::Until;
use crate::handle::{self, JobHandle};
use crate::sync::Ordering;

use super::job::{Job, Refused, SubmitError};
use super::{Pool, Shared};

impl Pool {
    /// Queues `f`, waiting while the queue is full (backpressure).
    ///
    /// # Errors
    ///
    /// [`Refused::Closed`] once shutdown has begun, [`Refused::ParentDone`]
    /// when the pool's parent context is done; with the job.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use quiesce::{Pool, pool::Refused};
    ///
    /// let pool = Pool::builder().workers(2).queue(1).build().unwrap(); // a small queue
    /// for order in 0..20 {
    ///     pool.submit(move |_ctx| { let _ = order; }).unwrap(); // waits for room
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
    /// use quiesce::{Context, Pool, pool::Refused};
    ///
    /// let pool = Pool::builder().workers(1).queue(1).build().unwrap();
    /// let (release, hold) = crossbeam_channel::bounded::<()>(0);
    /// pool.submit(move |_ctx| { let _ = hold.recv(); }).unwrap(); // the worker is busy
    /// pool.submit(|_ctx| {}).unwrap(); // the queue is full
    /// let err = pool.try_submit(|_ctx| println!("shard-c upload")).unwrap_err();
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
    /// use quiesce::{Pool, pool::Refused};
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
    /// use quiesce::{Pool, pool::Refused};
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
    /// use quiesce::{Context, ContextError, Pool, pool::Refused};
    ///
    /// let pool = Pool::builder().workers(1).queue(1).build().unwrap();
    /// let (release, hold) = crossbeam_channel::bounded::<()>(0);
    /// pool.submit(move |_ctx| { let _ = hold.recv(); }).unwrap(); // the worker is busy
    /// pool.submit(|_ctx| {}).unwrap(); // the queue is full
    /// let request = Context::background().with_timeout(Duration::from_millis(2));
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
    /// use quiesce::{Pool, pool::Job};
    ///
    /// let pool = Pool::builder().workers(1).build().unwrap();
    /// let job = Job::new(|_ctx| println!("shard-a upload"));
    /// pool.submit_job_blocking(job).unwrap();
    /// assert_eq!(pool.shutdown_timeout(Duration::from_secs(10)).completed, 1);
    /// ```
    pub fn submit_job_blocking(&self, job: Job) -> Result<(), SubmitError> {
        self.submit_job(job, Until::Deadline(None))
    }

    fn submit_job(&self, job: Job, until: Until<'_>) -> Result<(), SubmitError> {
        let shared = &self.shared;
        let refuse = |reason, job| Err(SubmitError::new(reason, job));
        // Invariant 2: held until the job is queued or handed back.
        let _intake = shared.intake.read();
        // `Relaxed` is enough only because the intake lock is held (invariant 2).
        if shared.closed.load(Ordering::Relaxed) {
            return refuse(Refused::Closed, job);
        }
        // Not closed, so no stop has cancelled the context (a stop closes
        // intake first, invariant 1): the parent did.
        if let Some(err) = shared.ctx.err() {
            return refuse(Refused::ParentDone(err), job);
        }
        if let Until::Context(ctx) = until {
            if let Err(err) = ctx.check() {
                return refuse(Refused::Done(err), job);
            }
        }
        // Counted before it can be taken (invariant 10).
        shared.job_accepted();
        let job = match shared.queue_tx.try_send(job) {
            Ok(()) => {
                Shared::grow_if_needed(shared);
                return Ok(());
            }
            Err(TrySendError::Full(job)) | Err(TrySendError::Disconnected(job)) => {
                shared.jobs_over(1);
                job
            }
        };
        Shared::grow_if_needed(shared);
        let deadline = match until {
            Until::Now => return refuse(Refused::Full, job),
            Until::Deadline(deadline) => deadline,
            Until::Context(_) => None,
        };
        let mut sel = Select::new();
        let send = sel.send(&shared.queue_tx);
        // Waiting with the intake lock held: the bell rings without any
        // stop waiting for this submit first (invariant 3).
        let closed = sel.recv(shared.closed_bell.channel());
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
            shared.job_accepted(); // invariant 10
            return match oper.send(&shared.queue_tx, job) {
                Ok(()) => {
                    Shared::grow_if_needed(shared);
                    Ok(())
                }
                Err(err) => {
                    shared.jobs_over(1);
                    refuse(Refused::Closed, err.into_inner())
                }
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
            // This submit holds the intake lock, so no stop has got past
            // closing intake and to its cancel (invariants 1, 2): unless
            // intake is closed meanwhile, the parent is done.
            if !shared.closed.load(Ordering::Relaxed) {
                let err = shared.ctx.err().unwrap_or(ContextError::Canceled);
                return refuse(Refused::ParentDone(err), job);
            }
        } else {
            debug_assert_eq!(index, closed);
            let _ = oper.recv(shared.closed_bell.channel());
        }
        refuse(Refused::Closed, job)
    }
}
