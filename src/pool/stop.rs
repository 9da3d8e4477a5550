//! The stop protocol: `shutdown`, `abort` and `Drop`, closing intake,
//! draining, cancelling and the report.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::sync::{Mutex, Ordering};
use crate::threads::Running;

use super::job::ShutdownReport;
use super::{Pool, Shared};

/// How a stop treats the queue.
#[derive(Clone, Copy)]
enum Stop {
    /// Run queued jobs until the deadline (`None`: however long it takes).
    Drain(Option<Instant>),
    /// Run nothing more.
    Abort,
}

impl Pool {
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
    /// let report = pool.shutdown_deadline(Instant::now() + Duration::from_millis(5));
    /// assert_eq!(report.cancelled, 1); // running at the deadline: cancelled, then returned
    /// assert!(report.stuck.is_empty());
    /// ```
    pub fn shutdown_deadline(&self, deadline: Instant) -> ShutdownReport {
        self.shared.stop(Stop::Drain(Some(deadline)))
    }

    /// The old name of [`shutdown_deadline`](Pool::shutdown_deadline).
    #[deprecated(
        since = "0.2.0",
        note = "renamed `shutdown_deadline` (an `Instant`), beside `shutdown_timeout` (a `Duration`)"
    )]
    pub fn shutdown(&self, deadline: Instant) -> ShutdownReport {
        self.shutdown_deadline(deadline)
    }

    /// [`shutdown_deadline`](Pool::shutdown_deadline) `timeout` from now.
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
            Some(deadline) => self.shutdown_deadline(deadline),
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
    /// for shard in ["shard-a", "shard-b"] {
    ///     pool.submit(move |_ctx| println!("upload {shard}")).unwrap();
    /// }
    /// let report = pool.abort(); // a second Ctrl-C, say
    /// assert_eq!(report.cancelled, 1);
    /// assert_eq!(report.never_started.len(), 2); // handed back, to persist
    /// ```
    pub fn abort(&self) -> ShutdownReport {
        self.shared.stop(Stop::Abort)
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
    /// Steps 1 and 2 of a shutdown: close intake, then wait out the
    /// submits under way. Idempotent.
    fn close_intake(&self) {
        // Invariant 1: the caller that sets `closed` rings the bell, before it or
        // any other stop waits for the intake lock: a submit waiting for
        // room holds that lock shared and waits for the bell (invariant 3).
        let first = !self.closed.swap(true, Ordering::SeqCst);
        if first {
            self.closed_bell.ring();
        }
        // Every stop waits out the submits under way; later ones see
        // `closed` (invariant 2).
        drop(self.intake.write());
        if first {
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
            // Step 3: intake is sealed, so an empty queue stays empty (invariant 4).
            self.draining.store(true, Ordering::SeqCst);
            // One wake-up per worker that may be waiting without having
            // seen `draining` (invariant 4).
            for _ in 0..self.workers.load(Ordering::SeqCst) {
                let _ = self.wake_tx.send(());
            }
            let _ = match deadline {
                Some(deadline) => threads.join_deadline(deadline),
                None => threads.join_timeout(Duration::MAX),
            };
        }
        // Step 4. The workers are joined (or stuck) before `report`
        // collects `returned` and the queue (invariant 7).
        threads.cancel();
        let stuck = threads.join_timeout(self.stop_grace).running;
        *self.threads.lock() = Some(threads);
        self.report(stuck)
    }

    fn report(&self, stuck: Vec<Running>) -> ShutdownReport {
        // `returned` first, then the queue: a job is in one or the other
        // once its worker is joined (invariant 7).
        let mut never_started = std::mem::take(&mut *self.returned.lock());
        let returned = never_started.len();
        never_started.extend(self.queue_rx.try_iter());
        // Those from the queue are over now; `returned` ones were counted
        // over by their worker (invariant 10).
        self.jobs_over(never_started.len() - returned);
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

/// A wake-up for threads blocked in a crossbeam `Select`, which cannot wait
/// on an atomic: ringing it disconnects its channel, and every waiter,
/// present or future, sees that. It holds no state anyone reads: the state
/// it announces is set before it rings, and whoever it wakes reads that.
pub(super) struct Bell {
    tx: Mutex<Option<Sender<Infallible>>>,
    rx: Receiver<Infallible>,
}

impl Bell {
    pub(super) fn new() -> Bell {
        let (tx, rx) = crossbeam_channel::bounded(0);
        Bell {
            tx: Mutex::new(Some(tx)),
            rx,
        }
    }

    /// Disconnects the channel. Idempotent.
    pub(super) fn ring(&self) {
        let tx = self.tx.lock().take();
        drop(tx);
    }

    /// The channel to put in a `Select`; it disconnects when rung.
    pub(super) fn channel(&self) -> &Receiver<Infallible> {
        &self.rx
    }
}
