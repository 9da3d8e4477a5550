//! Waiting for the pool to be idle without stopping it: `Pool::wait_idle_*`
//! over `busy`, the count of jobs accepted and not yet over (invariant 10).

use std::time::{Duration, Instant};

use crate::sync::Ordering;

use super::{Pool, Shared};

impl Shared {
    /// Counts a job about to enter the queue; called before the send, so
    /// that no worker can take it and count it over first (invariant 10).
    pub(super) fn job_accepted(&self) {
        self.busy.fetch_add(1, Ordering::SeqCst);
    }

    /// Counts `n` jobs over: run, handed back by a worker, collected by a
    /// stop, or never sent after all. The one that brings the count to zero
    /// takes the lock before notifying, so a waiter between its look and
    /// its wait is not missed (invariant 10).
    pub(super) fn jobs_over(&self, n: usize) {
        if n > 0 && self.busy.fetch_sub(n, Ordering::SeqCst) == n {
            let _lock = self.idle_lock.lock();
            self.idle_bell.notify_all();
        }
    }
}

impl Pool {
    /// Waits until the pool is idle, no job queued and none running, or
    /// until `deadline`; `true` if it is idle. The pool stays open: jobs
    /// may be submitted meanwhile (then it waits for those too) and after.
    /// Go's `wg.Wait()` on the jobs, without closing the channel.
    ///
    /// A job counts from the moment its submit accepts it until it returns
    /// (or is handed back, unstarted, when the pool's context is done, or
    /// collected by a stop). Jobs still queued after the parent context is
    /// done keep the pool busy until a [`shutdown`](Pool::shutdown) hands
    /// them back.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    /// use std::time::{Duration, Instant};
    /// use quiesce::Pool;
    ///
    /// let pool = Pool::builder().workers(2).build().unwrap();
    /// let uploaded = Arc::new(AtomicUsize::new(0));
    /// for batch in 0..2 {
    ///     for _ in 0..5 {
    ///         let uploaded = uploaded.clone();
    ///         pool.submit(move |_ctx| { uploaded.fetch_add(1, Ordering::SeqCst); }).unwrap();
    ///     }
    ///     // every job of this batch has run; the pool is still open
    ///     assert!(pool.wait_idle_deadline(Instant::now() + Duration::from_secs(10)));
    ///     assert_eq!(uploaded.load(Ordering::SeqCst), 5 * (batch + 1));
    /// }
    /// assert!(!pool.is_closed());
    /// ```
    pub fn wait_idle_deadline(&self, deadline: Instant) -> bool {
        let shared = &self.shared;
        let mut lock = shared.idle_lock.lock();
        // Invariant 10: looked at with the lock held, before each wait.
        while shared.busy.load(Ordering::SeqCst) > 0 {
            if shared.idle_bell.wait_until(&mut lock, deadline) {
                return shared.busy.load(Ordering::SeqCst) == 0;
            }
        }
        true
    }

    /// [`wait_idle_deadline`](Pool::wait_idle_deadline) `timeout` from now;
    /// a timeout too large to represent waits as long as it takes.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let pool = quiesce::Pool::builder().workers(1).build().unwrap();
    /// let (release, hold) = crossbeam_channel::bounded::<()>(0);
    /// pool.submit(move |_ctx| { let _ = hold.recv(); }).unwrap();
    /// assert!(!pool.wait_idle_timeout(Duration::from_millis(5))); // a job still runs
    /// drop(release);
    /// assert!(pool.wait_idle_timeout(Duration::from_secs(10)));
    /// assert_eq!(pool.completed(), 1);
    /// ```
    pub fn wait_idle_timeout(&self, timeout: Duration) -> bool {
        let deadline = crate::deadline::after(timeout).unwrap_or_else(far_future);
        self.wait_idle_deadline(deadline)
    }
}

/// "No deadline" for a wait that needs an `Instant`: about 30 years.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(60 * 60 * 24 * 365 * 30)
}
