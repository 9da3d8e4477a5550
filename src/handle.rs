//! `JobHandle`: the result of one job run by a [`Pool`](crate::Pool), a
//! [`scope`](crate::scope), a [`Consumer`](crate::Consumer) or your own
//! thread ([`JobHandle::pair`]), filled in by the job, or marked "never
//! ran" if the job is dropped unrun.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::panic::Panic;

/// A fresh handle and the completer its job carries.
pub(crate) fn pair<T>() -> (Completer<T>, JobHandle<T>) {
    let slot = Arc::new(Slot {
        state: Mutex::new(SlotState::Pending),
        ready: Condvar::new(),
    });
    (Completer { slot: slot.clone() }, JobHandle { slot })
}

/// The result of a job queued with [`Pool::execute`](crate::Pool::execute)
/// or [`Scope::spawn`](crate::Scope::spawn), filled in by the job, or
/// marked "never ran" if the job is dropped unrun.
///
/// # Examples
///
/// ```
/// use quiesce::{scope, Context, JobError};
///
/// let (count, crash) = scope(2, &Context::background(), |s| {
///     (s.spawn(|_ctx| "eu-west: 14 uploads"), s.spawn(|_ctx| -> u32 { panic!("bad row") }))
/// });
/// assert_eq!(count.join(), Ok("eu-west: 14 uploads"));
/// assert!(matches!(crash.join(), Err(JobError::Panicked(p)) if p.message() == "bad row"));
/// ```
pub struct JobHandle<T> {
    slot: Arc<Slot<T>>,
}

struct Slot<T> {
    state: Mutex<SlotState<T>>,
    ready: Condvar,
}

enum SlotState<T> {
    Pending,
    Done(Result<T, Panic>),
    NotRun,
    Taken,
}

/// The writing end of a [`JobHandle`]: whoever does the work fills it in
/// with [`complete`](Completer::complete); dropped unfilled (the work was
/// abandoned, its thread unwound), it marks the handle
/// [`JobError::NotRun`], so a waiter is never left waiting for a value
/// that cannot come.
///
/// Go's answer is a buffered channel of one (`done := make(chan T, 1)`),
/// where a forgotten send leaves the receiver blocked for ever.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use quiesce::{JobError, JobHandle};
///
/// let (completer, handle) = JobHandle::pair();
/// std::thread::spawn(move || completer.complete("batch stored"));
/// assert_eq!(handle.join_timeout(Duration::from_secs(10)), Ok("batch stored"));
///
/// let (abandoned, handle) = JobHandle::<u32>::pair();
/// drop(abandoned); // the work was given up
/// assert_eq!(handle.join(), Err(JobError::NotRun));
/// ```
#[must_use = "dropping a Completer marks its handle NotRun"]
pub struct Completer<T> {
    slot: Arc<Slot<T>>,
}

impl<T> Completer<T> {
    /// Hands `value` to the [`JobHandle`] and wakes whoever waits on it.
    ///
    /// # Examples
    ///
    /// ```
    /// let (completer, handle) = quiesce::JobHandle::pair();
    /// completer.complete(3);
    /// assert!(handle.is_finished());
    /// assert_eq!(handle.join(), Ok(3));
    /// ```
    pub fn complete(self, value: T) {
        self.finish(Ok(value));
    }

    /// Records the job's outcome and wakes whoever joins it.
    pub(crate) fn finish(self, result: Result<T, Panic>) {
        self.settle(SlotState::Done(result));
    }

    fn settle(&self, outcome: SlotState<T>) {
        let mut state = self.slot.state.lock();
        if matches!(*state, SlotState::Pending) {
            *state = outcome;
            self.slot.ready.notify_all();
        }
    }
}

impl<T> fmt::Debug for Completer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completer").finish_non_exhaustive()
    }
}

impl<T> Drop for Completer<T> {
    fn drop(&mut self) {
        self.settle(SlotState::NotRun);
    }
}

/// Why a [`JobHandle`] has no value.
///
/// # Examples
///
/// ```
/// use quiesce::{scope, Context, JobError};
///
/// let ctx = Context::background().with_cancel();
/// ctx.cancel();
/// let skipped = scope(1, &ctx, |s| s.spawn(|_ctx| "unreachable")); // ctx is done
/// assert_eq!(skipped.join(), Err(JobError::NotRun));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobError {
    /// The job panicked.
    Panicked(Panic),
    /// The job never ran: it was dropped unrun (a pool's handed-back job
    /// that was dropped, a scope job skipped because the scope's context
    /// was done).
    NotRun,
    /// The wait timed out; the job may still finish (join again).
    Timeout,
    /// The result was already taken by an earlier join.
    AlreadyJoined,
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobError::Panicked(p) => write!(f, "the job {p}"),
            JobError::NotRun => f.write_str("the job never ran"),
            JobError::Timeout => f.write_str("timed out waiting for the job"),
            JobError::AlreadyJoined => f.write_str("the job's result was already taken"),
        }
    }
}

impl std::error::Error for JobError {}

impl<T> JobHandle<T> {
    /// A handle and the [`Completer`] that fills it, for work your own code
    /// runs: a reply slot for a request handed to another thread, say.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use quiesce::JobHandle;
    ///
    /// let (completer, handle) = JobHandle::pair();
    /// let writer = std::thread::spawn(move || completer.complete(Ok::<u64, String>(1)));
    /// assert_eq!(handle.join_timeout(Duration::from_secs(10)), Ok(Ok(1)));
    /// writer.join().unwrap();
    /// ```
    pub fn pair() -> (Completer<T>, JobHandle<T>) {
        pair()
    }

    /// Waits for the job's result.
    ///
    /// # Errors
    ///
    /// [`JobError::Panicked`] or [`JobError::NotRun`];
    /// [`JobError::AlreadyJoined`] when an earlier join took the result.
    /// (It borrows, like [`join_timeout`](JobHandle::join_timeout) and
    /// [`join_deadline`](JobHandle::join_deadline).)
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = quiesce::Pool::builder().workers(1).build().unwrap();
    /// let summary = pool.execute(|_ctx| format!("{} files", 12)).unwrap();
    /// assert_eq!(summary.join().unwrap(), "12 files");
    /// let crash = pool.execute(|_ctx| -> u32 { panic!("malformed file") }).unwrap();
    /// assert!(matches!(crash.join(), Err(quiesce::JobError::Panicked(_))));
    /// ```
    pub fn join(&self) -> Result<T, JobError> {
        self.join_until(None)
    }

    /// Waits at most `timeout` for the job's result; after
    /// [`JobError::Timeout`] it can be joined again.
    ///
    /// # Errors
    ///
    /// [`JobError::Timeout`], [`JobError::Panicked`], [`JobError::NotRun`],
    /// [`JobError::AlreadyJoined`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use quiesce::JobError;
    ///
    /// let pool = quiesce::Pool::builder().workers(1).build().unwrap();
    /// let (release, hold) = crossbeam_channel::bounded::<()>(0);
    /// let export = pool.execute(move |_ctx| { let _ = hold.recv(); "exported" }).unwrap();
    /// assert_eq!(export.join_timeout(Duration::from_millis(2)), Err(JobError::Timeout));
    /// drop(release);
    /// assert_eq!(export.join_timeout(Duration::from_secs(10)), Ok("exported"));
    /// assert_eq!(export.join_timeout(Duration::from_secs(10)), Err(JobError::AlreadyJoined));
    /// ```
    pub fn join_timeout(&self, timeout: Duration) -> Result<T, JobError> {
        self.join_until(crate::deadline::after(timeout))
    }

    /// Waits until `deadline` at most for the job's result.
    ///
    /// # Errors
    ///
    /// As [`join_timeout`](JobHandle::join_timeout).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    ///
    /// let pool = quiesce::Pool::builder().workers(1).build().unwrap();
    /// let answer = pool.execute(|_ctx| 42).unwrap();
    /// let deadline = Instant::now() + Duration::from_secs(10);
    /// assert_eq!(answer.join_deadline(deadline), Ok(42));
    /// ```
    pub fn join_deadline(&self, deadline: Instant) -> Result<T, JobError> {
        self.join_until(Some(deadline))
    }

    /// `true` once the job has finished (or was dropped unrun).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let pool = quiesce::Pool::builder().workers(1).build().unwrap();
    /// let (release, hold) = crossbeam_channel::bounded::<()>(0);
    /// let job = pool.execute(move |_ctx| { let _ = hold.recv(); }).unwrap();
    /// assert!(!job.is_finished());
    /// drop(release);
    /// job.join_timeout(Duration::from_secs(10)).unwrap();
    /// assert!(job.is_finished());
    /// ```
    pub fn is_finished(&self) -> bool {
        !matches!(*self.slot.state.lock(), SlotState::Pending)
    }

    pub(crate) fn join_until(&self, deadline: Option<Instant>) -> Result<T, JobError> {
        let mut state = self.slot.state.lock();
        while matches!(*state, SlotState::Pending) {
            match deadline {
                Some(deadline) => {
                    if self.slot.ready.wait_until(&mut state, deadline).timed_out()
                        && matches!(*state, SlotState::Pending)
                    {
                        return Err(JobError::Timeout);
                    }
                }
                None => self.slot.ready.wait(&mut state),
            }
        }
        match std::mem::replace(&mut *state, SlotState::Taken) {
            SlotState::Done(result) => result.map_err(JobError::Panicked),
            SlotState::NotRun => Err(JobError::NotRun),
            SlotState::Taken => Err(JobError::AlreadyJoined),
            SlotState::Pending => unreachable!("waited above"),
        }
    }
}

impl<T> fmt::Debug for JobHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}
