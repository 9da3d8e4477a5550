//! `Semaphore`: at most N at once. The public docs, with the Go pattern it
//! replaces, are on [`Semaphore`].
//!
//! # Invariants
//!
//! 1. `available` and `waiters` change only under `state`'s lock.
//! 2. Permits are handed over directly: whoever returns permits (or removes
//!    the head waiter) grants them to waiters from the head of the queue, in
//!    order, while they fit; a granted waiter is removed from the queue,
//!    marked `granted` and notified, all under the lock. A waiter therefore
//!    never has to compete for permits after waking.
//! 3. `available > 0` with a non-empty queue only while the head waiter
//!    needs more than `available`.
//! 4. A waiter that gives up (deadline, context) does so under the lock: if
//!    it was granted meanwhile it keeps the permits and succeeds; otherwise
//!    it leaves the queue and, if it was the head, grants to the new head.
//! 5. A context-bound waiter's cancel callback takes the lock before
//!    notifying, so its wake-up cannot be lost between check and wait.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use crate::context::{Context, ContextError};
use crate::deadline::Until;
use crate::sync::{Arc, AtomicBool, Condvar, Mutex, Ordering};

/// Counting semaphore: at most N at once. Go's buffered-channel semaphore
/// (`sem := make(chan struct{}, 10)`) and `x/sync/semaphore.Weighted`, with
/// a permit that comes back when dropped, even from a panicking thread.
/// Cloning gives another handle to the same permits.
///
/// Waiters are served first come, first served: a request for many permits
/// at the head of the queue is not overtaken by later small ones, so it
/// cannot starve. Asking for more permits than the semaphore has is an
/// error at once, never a wait that cannot end.
///
/// # Examples
///
/// ```
/// use quiesce::Semaphore;
///
/// let sem = Semaphore::new(10);
/// let handles: Vec<_> = (0..100)
///     .map(|order| {
///         let sem = sem.clone();
///         std::thread::spawn(move || {
///             let _permit = sem.acquire().unwrap(); // at most 10 invoices at once
///             format!("invoice for order {order}")
///         })
///     })
///     .collect();
/// for h in handles { h.join().unwrap(); }
/// assert_eq!(sem.available(), 10);
/// ```
#[derive(Clone)]
pub struct Semaphore {
    inner: Arc<Inner>,
}

struct Inner {
    capacity: usize,
    state: Mutex<State>,
}

struct State {
    available: usize,
    waiters: VecDeque<Arc<Waiter>>,
}

struct Waiter {
    need: usize,
    /// Written under the state lock (invariant 2).
    granted: AtomicBool,
    wake: Condvar,
}

/// Permits held; they go back to the semaphore when this is dropped.
///
/// # Examples
///
/// ```
/// let sem = quiesce::Semaphore::new(2);
/// let export = {
///     let sem = sem.clone();
///     std::thread::spawn(move || {
///         let _permit = sem.acquire().unwrap();
///         panic!("export crashed");
///     })
/// };
/// assert!(export.join().is_err());
/// assert_eq!(sem.available(), 2); // released while unwinding
/// ```
#[must_use = "dropping the permit releases it at once"]
pub struct Permit {
    inner: Arc<Inner>,
    count: usize,
}

/// Why an acquire returned no permit.
///
/// # Examples
///
/// ```
/// use quiesce::{AcquireError, Semaphore};
///
/// let sem = Semaphore::new(3);
/// let err = sem.acquire_many(4).unwrap_err(); // an error at once, not a wait
/// assert_eq!(err, AcquireError::TooMany { requested: 4, capacity: 3 });
/// let _all = sem.acquire_many(3).unwrap();
/// assert_eq!(sem.try_acquire().unwrap_err(), AcquireError::WouldBlock);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcquireError {
    /// More permits were asked for than the semaphore has in all.
    TooMany {
        /// How many were asked for.
        requested: usize,
        /// How many the semaphore has in all.
        capacity: usize,
    },
    /// `try_acquire`: not enough permits free right now (or others queued
    /// first).
    WouldBlock,
    /// The timeout or deadline passed first.
    Timeout,
    /// The context was done first (or already).
    Done(ContextError),
}

impl fmt::Display for AcquireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcquireError::TooMany {
                requested,
                capacity,
            } => {
                write!(
                    f,
                    "asked for {requested} permits of a semaphore that has {capacity}"
                )
            }
            AcquireError::WouldBlock => f.write_str("no permit free right now"),
            AcquireError::Timeout => f.write_str("timed out waiting for a permit"),
            AcquireError::Done(err) => write!(f, "gave up waiting for a permit: {err}"),
        }
    }
}

impl std::error::Error for AcquireError {}

impl Semaphore {
    /// A semaphore with `permits` permits. Zero is allowed (every acquire
    /// of one or more is then [`AcquireError::TooMany`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use quiesce::{AcquireError, Semaphore};
    ///
    /// let sem = Semaphore::new(5);
    /// assert_eq!(sem.available(), 5);
    /// let closed = Semaphore::new(0);
    /// assert!(matches!(closed.acquire(), Err(AcquireError::TooMany { .. })));
    /// ```
    pub fn new(permits: usize) -> Semaphore {
        Semaphore {
            inner: Arc::new(Inner {
                capacity: permits,
                state: Mutex::new(State {
                    available: permits,
                    waiters: VecDeque::new(),
                }),
            }),
        }
    }

    /// How many permits it has in all.
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = quiesce::Semaphore::new(8);
    /// let _permit = sem.acquire_many(3).unwrap();
    /// assert_eq!(sem.capacity(), 8); // in all, taken or not
    /// assert_eq!(sem.available(), 5);
    /// ```
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// How many acquires are queued, waiting for permits, now.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    ///
    /// let sem = quiesce::Semaphore::new(1);
    /// let held = sem.acquire().unwrap();
    /// let next = sem.clone();
    /// let waiter = std::thread::spawn(move || next.acquire().map(|p| p.count()));
    /// let give_up = Instant::now() + Duration::from_secs(10);
    /// while sem.waiting() == 0 && Instant::now() < give_up {
    ///     std::thread::sleep(Duration::from_millis(1));
    /// }
    /// assert_eq!(sem.waiting(), 1);
    /// drop(held);
    /// assert_eq!(waiter.join().unwrap(), Ok(1));
    /// assert_eq!(sem.waiting(), 0);
    /// ```
    pub fn waiting(&self) -> usize {
        self.inner.state.lock().waiters.len()
    }

    /// How many permits are free now.
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = quiesce::Semaphore::new(3);
    /// let permit = sem.acquire().unwrap();
    /// assert_eq!(sem.available(), 2);
    /// drop(permit);
    /// assert_eq!(sem.available(), 3);
    /// ```
    pub fn available(&self) -> usize {
        self.inner.state.lock().available
    }

    /// Takes one permit, waiting as long as it takes. See the bounded forms.
    ///
    /// # Errors
    ///
    /// [`AcquireError::TooMany`] on a semaphore of zero permits.
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = quiesce::Semaphore::new(1);
    /// let permit = sem.acquire().unwrap();
    /// let next = sem.clone();
    /// let report = std::thread::spawn(move || next.acquire().is_ok()); // waits its turn
    /// drop(permit);
    /// assert!(report.join().unwrap());
    /// ```
    pub fn acquire(&self) -> Result<Permit, AcquireError> {
        self.acquire_many(1)
    }

    /// Takes `n` permits at once, waiting as long as it takes.
    ///
    /// # Errors
    ///
    /// [`AcquireError::TooMany`] when `n` exceeds the capacity.
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = quiesce::Semaphore::new(4);
    /// let big = sem.acquire_many(3).unwrap();
    /// assert_eq!(sem.available(), 1);
    /// assert!(sem.acquire_many(5).is_err()); // can never be satisfied
    /// drop(big);
    /// assert_eq!(sem.available(), 4);
    /// ```
    pub fn acquire_many(&self, n: usize) -> Result<Permit, AcquireError> {
        self.acquire_until(n, Until::Deadline(None))
    }

    /// Takes one permit if one is free and nobody is queued.
    ///
    /// # Errors
    ///
    /// [`AcquireError::WouldBlock`], or [`AcquireError::TooMany`].
    ///
    /// # Examples
    ///
    /// ```
    /// use quiesce::{AcquireError, Semaphore};
    ///
    /// let sem = Semaphore::new(1);
    /// let first = sem.try_acquire().unwrap();
    /// assert_eq!(sem.try_acquire().unwrap_err(), AcquireError::WouldBlock);
    /// drop(first);
    /// assert!(sem.try_acquire().is_ok());
    /// ```
    pub fn try_acquire(&self) -> Result<Permit, AcquireError> {
        self.try_acquire_many(1)
    }

    /// Takes `n` permits if they are free and nobody is queued.
    ///
    /// # Errors
    ///
    /// [`AcquireError::WouldBlock`], or [`AcquireError::TooMany`].
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = quiesce::Semaphore::new(4);
    /// let batch = sem.try_acquire_many(3).unwrap();
    /// assert_eq!(batch.count(), 3);
    /// assert!(sem.try_acquire_many(2).is_err()); // only one is free
    /// assert!(sem.try_acquire_many(1).is_ok());
    /// ```
    pub fn try_acquire_many(&self, n: usize) -> Result<Permit, AcquireError> {
        self.acquire_until(n, Until::Now)
    }

    /// Takes one permit, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`AcquireError::Timeout`], or [`AcquireError::TooMany`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use quiesce::{AcquireError, Semaphore};
    ///
    /// let sem = Semaphore::new(1);
    /// let _busy = sem.acquire().unwrap();
    /// let err = sem.acquire_timeout(Duration::from_millis(2)).unwrap_err();
    /// assert_eq!(err, AcquireError::Timeout);
    /// assert_eq!(sem.waiting(), 0); // it gave up and left the queue
    /// ```
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<Permit, AcquireError> {
        self.acquire_until(1, Until::Deadline(crate::deadline::after(timeout)))
    }

    /// Takes one permit, waiting until `deadline` at most.
    ///
    /// # Errors
    ///
    /// [`AcquireError::Timeout`], or [`AcquireError::TooMany`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    ///
    /// let sem = quiesce::Semaphore::new(1);
    /// let held = sem.acquire().unwrap();
    /// let next = sem.clone();
    /// let deadline = Instant::now() + Duration::from_secs(10);
    /// let waiter = std::thread::spawn(move || next.acquire_deadline(deadline).map(|p| p.count()));
    /// drop(held);
    /// assert_eq!(waiter.join().unwrap(), Ok(1));
    /// ```
    pub fn acquire_deadline(&self, deadline: Instant) -> Result<Permit, AcquireError> {
        self.acquire_until(1, Until::Deadline(Some(deadline)))
    }

    /// Takes one permit, waiting until `ctx` is done at most. A context
    /// that is done already fails even when permits are free.
    ///
    /// # Errors
    ///
    /// [`AcquireError::Done`], or [`AcquireError::TooMany`].
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = quiesce::Semaphore::new(1);
    /// let ctx = quiesce::Context::background().with_cancel();
    /// ctx.cancel();
    /// assert!(matches!(sem.acquire_ctx(&ctx), Err(quiesce::AcquireError::Done(_))));
    /// ```
    pub fn acquire_ctx(&self, ctx: &Context) -> Result<Permit, AcquireError> {
        self.acquire_many_ctx(1, ctx)
    }

    /// Takes `n` permits, waiting until `ctx` is done at most.
    ///
    /// # Errors
    ///
    /// [`AcquireError::Done`], or [`AcquireError::TooMany`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use quiesce::{AcquireError, Context, ContextError, Semaphore};
    ///
    /// let sem = Semaphore::new(4);
    /// let _small = sem.acquire().unwrap();
    /// let request = Context::background().with_timeout(Duration::from_millis(2));
    /// let err = sem.acquire_many_ctx(4, &request).unwrap_err(); // needs all four
    /// assert_eq!(err, AcquireError::Done(ContextError::DeadlineExceeded));
    /// ```
    pub fn acquire_many_ctx(&self, n: usize, ctx: &Context) -> Result<Permit, AcquireError> {
        self.acquire_until(n, Until::Context(ctx))
    }

    fn acquire_until(&self, n: usize, until: Until<'_>) -> Result<Permit, AcquireError> {
        let inner = &self.inner;
        if n > inner.capacity {
            return Err(AcquireError::TooMany {
                requested: n,
                capacity: inner.capacity,
            });
        }
        if let Until::Context(ctx) = until {
            ctx.check().map_err(AcquireError::Done)?;
        }
        let permit = || Permit {
            inner: inner.clone(),
            count: n,
        };
        let waiter = {
            let mut state = inner.state.lock();
            if state.waiters.is_empty() && state.available >= n {
                state.available -= n;
                return Ok(permit());
            }
            let past = match until {
                Until::Now => true,
                Until::Deadline(Some(d)) => d <= Instant::now(),
                _ => false,
            };
            if past {
                return Err(match until {
                    Until::Now => AcquireError::WouldBlock,
                    _ => AcquireError::Timeout,
                });
            }
            let waiter = Arc::new(Waiter {
                need: n,
                granted: AtomicBool::new(false),
                wake: Condvar::new(),
            });
            state.waiters.push_back(waiter.clone());
            waiter
        };
        // Invariant 5. Registered with no lock held: on a context that is
        // done already the callback runs right here.
        let _hook = match until {
            Until::Context(ctx) => {
                let (inner, waiter) = (inner.clone(), waiter.clone());
                Some(ctx.on_cancel(move || {
                    let _state = inner.state.lock();
                    waiter.wake.notify_one();
                }))
            }
            _ => None,
        };
        let mut state = inner.state.lock();
        loop {
            if waiter.granted.load(Ordering::Relaxed) {
                return Ok(permit());
            }
            let gave_up = match until {
                Until::Context(ctx) => ctx.err().map(AcquireError::Done),
                Until::Deadline(Some(deadline)) if Instant::now() >= deadline => {
                    Some(AcquireError::Timeout)
                }
                _ => None,
            };
            if let Some(err) = gave_up {
                // Invariant 4.
                let at = state.waiters.iter().position(|w| Arc::ptr_eq(w, &waiter));
                if let Some(at) = at {
                    state.waiters.remove(at);
                    if at == 0 {
                        grant(&mut state);
                    }
                }
                return Err(err);
            }
            match until {
                Until::Deadline(Some(deadline)) => {
                    waiter.wake.wait_until(&mut state, deadline);
                }
                _ => waiter.wake.wait(&mut state),
            }
        }
    }
}

/// Hands free permits to the queue's head waiters, in order, while they fit
/// (invariant 2).
fn grant(state: &mut State) {
    while let Some(head) = state.waiters.front() {
        if head.need > state.available {
            break;
        }
        state.available -= head.need;
        head.granted.store(true, Ordering::Relaxed);
        head.wake.notify_one();
        state.waiters.pop_front();
    }
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.state.lock();
        f.debug_struct("Semaphore")
            .field("capacity", &self.inner.capacity)
            .field("available", &state.available)
            .field("waiting", &state.waiters.len())
            .finish()
    }
}

impl Permit {
    /// How many permits this holds.
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = quiesce::Semaphore::new(10);
    /// let permit = sem.acquire_many(4).unwrap();
    /// assert_eq!(permit.count(), 4);
    /// ```
    pub fn count(&self) -> usize {
        self.count
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.count == 0 {
            return;
        }
        let mut state = self.inner.state.lock();
        state.available += self.count;
        grant(&mut state);
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("count", &self.count)
            .finish()
    }
}
