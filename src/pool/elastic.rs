//! Elastic sizing: starting workers, growing while jobs wait, retiring
//! idle ones, and `Pool::resize`.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::worker::worker;
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
        // (I8) is not kept here: see the module docs.
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
}

impl Shared {
    pub(super) fn elastic(&self) -> bool {
        self.elastic.load(Ordering::Relaxed)
    }

    /// Starts one more worker if below `max`; `Ok(false)` when at `max` or
    /// closed.
    pub(super) fn spawn_worker(self: &Arc<Self>) -> io::Result<bool> {
        let mut guard = self.threads.lock();
        let Some(threads) = guard
            .as_mut()
            // No new worker once intake is closed, nor while a stop has the
            // workers out (I5).
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
    pub(super) fn grow_if_needed(self: &Arc<Self>) {
        if !self.elastic()
            // The submitter's half of (I6).
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
    pub(super) fn took_job(self: &Arc<Self>) {
        if self.elastic() && !self.queue_rx.is_empty() {
            self.grow_if_needed();
        }
    }

    /// Leaves the worker count if it is above the current `max` (resize) or
    /// above `min` and idle (`idle_exit`); `true` when this worker must go.
    pub(super) fn retire(&self, idle_exit: bool) -> bool {
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
    pub(super) fn rejoin(&self) -> bool {
        let max = self.max.load(Ordering::SeqCst);
        self.workers
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                (w < max).then_some(w + 1)
            })
            .is_ok()
    }
}
