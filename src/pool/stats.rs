//! Per-worker job counts. Each worker writes only its own slot, which sits
//! on a cache line of its own, so counting a job costs no shared atomic
//! read-modify-write (two workers bumping one shared counter made its line
//! bounce between cores on every job). Readers add the slots up.

use crate::sync::{Arc, AtomicU64, Mutex, Ordering};

/// Keeps a value on a cache line (pair) of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(super) struct Padded<T>(pub(super) T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// One worker's counts. Single writer (its worker): updated with a load
/// and a store, not a read-modify-write.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(super) struct WorkerStats {
    running: AtomicU64,
    completed: AtomicU64,
    panicked: AtomicU64,
    cancelled: AtomicU64,
}

/// How a job ended, for the counts.
#[derive(Clone, Copy, Debug)]
pub(super) enum Ended {
    Completed,
    Panicked,
    Cancelled,
}

fn bump(counter: &AtomicU64) {
    counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

impl WorkerStats {
    pub(super) fn started(&self) {
        self.running.store(1, Ordering::Relaxed);
    }

    pub(super) fn ended(&self, how: Ended) {
        self.running.store(0, Ordering::Relaxed);
        bump(match how {
            Ended::Completed => &self.completed,
            Ended::Panicked => &self.panicked,
            Ended::Cancelled => &self.cancelled,
        });
    }

    fn totals(&self) -> Totals {
        Totals {
            running: self.running.load(Ordering::Relaxed),
            completed: self.completed.load(Ordering::Relaxed),
            panicked: self.panicked.load(Ordering::Relaxed),
            cancelled: self.cancelled.load(Ordering::Relaxed),
        }
    }
}

/// Counts summed over workers.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Totals {
    pub(super) running: u64,
    pub(super) completed: u64,
    pub(super) panicked: u64,
    pub(super) cancelled: u64,
}

impl std::ops::AddAssign for Totals {
    fn add_assign(&mut self, other: Totals) {
        self.running += other.running;
        self.completed += other.completed;
        self.panicked += other.panicked;
        self.cancelled += other.cancelled;
    }
}

/// The slots of the live workers, and the counts of those that exited.
#[derive(Debug, Default)]
pub(super) struct Stats {
    inner: Mutex<Registry>,
}

#[derive(Debug, Default)]
struct Registry {
    live: Vec<Arc<WorkerStats>>,
    retired: Totals,
}

impl Stats {
    /// A slot for a new worker.
    pub(super) fn register(&self) -> Arc<WorkerStats> {
        let slot = Arc::new(WorkerStats::default());
        self.inner.lock().live.push(slot.clone());
        slot
    }

    /// Folds an exiting worker's counts into the totals.
    pub(super) fn retire(&self, slot: &Arc<WorkerStats>) {
        let mut inner = self.inner.lock();
        if let Some(i) = inner.live.iter().position(|s| Arc::ptr_eq(s, slot)) {
            let gone = inner.live.swap_remove(i);
            let mut counts = gone.totals();
            counts.running = 0;
            inner.retired += counts;
        }
    }

    /// The counts now, over every worker that ever ran.
    pub(super) fn totals(&self) -> Totals {
        let inner = self.inner.lock();
        let mut totals = inner.retired;
        for slot in &inner.live {
            totals += slot.totals();
        }
        totals
    }
}
