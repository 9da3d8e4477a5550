//! Elastic sizing: starting workers, growing while jobs wait, retiring
//! idle ones, and `Pool::resize`.

use crate::sync::{Arc, AtomicU64, Ordering, fence};
use std::io;

use super::worker;
use super::{Pool, Shared};

impl Pool {
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
        // One step for both: a concurrent resize sees the pair before or
        // after, never half of it (invariant 8).
        shared.limits.resize(n);
        let workers = shared.workers.load(Ordering::SeqCst);
        for _ in n..workers {
            let _ = shared.wake_tx.send(());
        }
        while shared.workers.load(Ordering::SeqCst) < shared.limits.load(Ordering::SeqCst).min {
            if !Shared::spawn_worker(shared)? {
                break;
            }
        }
        Ok(())
    }
}

impl Shared {
    /// `min < max` now. `Relaxed`: a hint for the worker (wait with a
    /// timeout or not, look for more work to grow for); the decisions that
    /// count read the limits again with `SeqCst`.
    pub(super) fn elastic(&self) -> bool {
        self.limits.load(Ordering::Relaxed).elastic()
    }

    /// Starts one more worker if below `max`; `Ok(false)` when at `max` or
    /// closed.
    pub(super) fn spawn_worker(this: &Arc<Self>) -> io::Result<bool> {
        let mut guard = this.threads.lock();
        let Some(threads) = guard
            .as_mut()
            // No new worker once intake is closed, nor while a stop has the
            // workers out (invariant 5).
            .filter(|_| !this.closed.load(Ordering::SeqCst))
        else {
            return Ok(false);
        };
        let max = this.limits.load(Ordering::SeqCst).max;
        if this
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
        let index = this.next_worker.fetch_add(1, Ordering::Relaxed);
        if let Err(err) = worker::start(threads, this, index) {
            this.workers.fetch_sub(1, Ordering::SeqCst);
            return Err(err);
        }
        Ok(true)
    }

    /// Elastic growth: one more worker when none is idle (and below
    /// `max`).
    ///
    /// Called by a submitter *after* it queued a job, and by a worker
    /// *after* it took a job (and so left the idle count) and finds jobs
    /// still queued: the submitter's half of invariant 6.
    pub(super) fn grow_if_needed(this: &Arc<Self>) {
        let limits = this.limits.load(Ordering::SeqCst);
        if !limits.elastic() {
            return;
        }
        // Invariant 6: the job is queued; the fence orders that before the looks
        // at `idle` and `workers` below, whatever orderings the channel
        // uses inside. It pairs with the one in `leave_when_idle`.
        fence(Ordering::SeqCst);
        if this.idle.load(Ordering::SeqCst) > 0 || this.workers.load(Ordering::SeqCst) >= limits.max
        {
            return;
        }
        if let Err(err) = Shared::spawn_worker(this) {
            log::warn!("pool {}: cannot start another worker: {err}", this.name);
        }
    }

    /// A worker took a job: if more are waiting and nobody is idle, the
    /// pool grows (each new worker does the same as it takes its first
    /// job, so a burst of submits grows the pool as far as it needs).
    pub(super) fn took_job(this: &Arc<Self>) {
        if this.elastic() && !this.queue_rx.is_empty() {
            Shared::grow_if_needed(this);
        }
    }

    /// Leaves the worker count if it is above the current `max` (resize) or
    /// above `min` and idle (`idle_exit`); `true` when this worker must go.
    pub(super) fn retire(&self, idle_exit: bool) -> bool {
        let limits = self.limits.load(Ordering::SeqCst);
        let limit = if idle_exit { limits.min } else { limits.max };
        self.workers
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                (w > limit).then(|| w - 1)
            })
            .is_ok()
    }

    /// Undoes a `retire` when work showed up meanwhile; `false` if the
    /// pool is at `max` again (others took the place).
    pub(super) fn rejoin(&self) -> bool {
        let max = self.limits.load(Ordering::SeqCst).max;
        self.workers
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                (w < max).then_some(w + 1)
            })
            .is_ok()
    }

    /// An idle worker above `min` whose wait timed out: leaves the count,
    /// then looks at the queue, and stays (`rejoin`) if a job is waiting
    /// and there is room. `true` when it must go. The worker's half of
    /// invariant 6: a job queued after its look is seen by its submitter,
    /// who finds the place free and starts a worker.
    pub(super) fn leave_when_idle(&self) -> bool {
        if !self.retire(true) {
            return false;
        }
        // Invariant 6: pairs with the fence in `grow_if_needed`.
        fence(Ordering::SeqCst);
        self.queue_rx.is_empty() || !self.rejoin()
    }
}

/// `min` and `max` in one atomic word, `min` in the high half: both change
/// in one step, and every read gets a pair that was written whole (invariant 8).
/// Each is at most `u32::MAX` (a bound no pool reaches).
pub(super) struct Limits(AtomicU64);

/// A pair read from [`Limits`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Sizes {
    pub(super) min: usize,
    pub(super) max: usize,
}

impl Sizes {
    pub(super) fn elastic(self) -> bool {
        self.min < self.max
    }

    fn encode(self) -> u64 {
        let half =
            |n: usize| u64::try_from(n).map_or(u64::from(u32::MAX), |n| n.min(u64::from(u32::MAX)));
        (half(self.min) << 32) | half(self.max)
    }

    fn decode(word: u64) -> Sizes {
        let half = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        Sizes {
            min: half(word >> 32),
            max: half(word & u64::from(u32::MAX)),
        }
    }
}

impl Limits {
    /// `min <= max`, as the builder makes them.
    pub(super) fn new(min: usize, max: usize) -> Limits {
        debug_assert!(min <= max);
        Limits(AtomicU64::new(Sizes { min, max }.encode()))
    }

    pub(super) fn load(&self, order: Ordering) -> Sizes {
        Sizes::decode(self.0.load(order))
    }

    /// `resize(n)`: a fixed pool gets `min = max = n`; an elastic one gets
    /// `max = n`, and `min` lowered to `n` if above. One read-modify-write
    /// of the word, so concurrent calls are applied one after the other.
    pub(super) fn resize(&self, n: usize) {
        let _ = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |word| {
                let old = Sizes::decode(word);
                let min = if old.elastic() { old.min.min(n) } else { n };
                Some(Sizes { min, max: n }.encode())
            });
    }
}

#[cfg(test)]
mod tests {
    use super::{Limits, Sizes};
    use crate::sync::Ordering;

    fn sizes(limits: &Limits) -> (usize, usize) {
        let Sizes { min, max } = limits.load(Ordering::SeqCst);
        (min, max)
    }

    #[test]
    fn resize_sets_a_fixed_pool_and_caps_an_elastic_one() {
        let fixed = Limits::new(2, 2);
        fixed.resize(5);
        assert_eq!(sizes(&fixed), (5, 5));
        fixed.resize(1);
        assert_eq!(sizes(&fixed), (1, 1));

        let elastic = Limits::new(2, 8);
        elastic.resize(4);
        assert_eq!(sizes(&elastic), (2, 4)); // `min` kept
        elastic.resize(1);
        assert_eq!(sizes(&elastic), (1, 1)); // `min` lowered to `max`
    }

    #[test]
    fn limits_past_u32_are_held_at_u32_max() {
        let huge = Limits::new(0, usize::MAX);
        let cap = usize::try_from(u32::MAX).unwrap();
        assert_eq!(sizes(&huge), (0, cap));
        assert!(huge.load(Ordering::SeqCst).elastic());
        huge.resize(usize::MAX);
        assert_eq!(sizes(&huge), (0, cap));
    }
}
