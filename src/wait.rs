//! `WaitGroup`: wait for a set of work to finish. The public docs, with the
//! Go pattern it replaces, are on [`WaitGroup`].
//!
//! # Invariants
//!
//! 1. `count` is the number of live guards. Adding and dropping a guard is
//!    one atomic operation; the lock is taken only by waiters and by the
//!    guard that brings the count to zero (crossbeam-utils does the same).
//! 2. A waiter checks `count == 0` with the lock held before each wait, and
//!    the guard that brings it to zero takes the lock before notifying: if
//!    its decrement came after the waiter's check, its lock waits until the
//!    waiter is inside `wait`, so the notification reaches it. No wake-up is
//!    lost.
//! 3. A context-bound waiter registers a cancel callback that takes the same
//!    lock before notifying, so a cancellation between the waiter's check
//!    and its wait is not lost either.
//! 4. A thread started by [`WaitGroup::spawn`] holds its guard for the whole
//!    of its code and drops it last, after its result or panic is in its
//!    [`JobHandle`]: once a wait on the group returns, every such handle of
//!    the group's has its result.
//! 5. Every thread [`WaitGroup::spawn`] starts is joined: its `JoinHandle`
//!    is kept in `spawned` and joined by a wait that saw the count at zero
//!    (by (4) its code is over, so the join waits only for the thread to
//!    exit), or by a later `spawn` once it has finished. Joins happen
//!    outside every lock, and never on the thread being joined.

use std::fmt;
use std::time::{Duration, Instant};

use crate::context::{Context, ContextError};
use crate::handle::JobHandle;
use crate::sync::{Arc, AtomicUsize, Condvar, Mutex, Ordering};

/// Counts outstanding work; [`wait`](WaitGroup::wait) blocks until it is
/// zero. Go's `sync.WaitGroup`, where `Done()` is the drop of a guard, so it
/// also happens when the work panics and cannot be forgotten. Cloning gives
/// another handle to the same group.
///
/// | Go | quiesce |
/// |----|---------|
/// | `wg.Add(1)` … `defer wg.Done()` | `let guard = wg.add();` (moved into the work, dropped at its end) |
/// | `wg.Go(func() { … })` (Go 1.25) | [`wg.spawn("name", \|\| …)`](WaitGroup::spawn) |
/// | `wg.Wait()` | [`wg.wait()`](WaitGroup::wait), or with a bound: [`wait_timeout`](WaitGroup::wait_timeout), [`wait_deadline`](WaitGroup::wait_deadline), [`wait_ctx`](WaitGroup::wait_ctx) |
///
/// # Examples
///
/// ```
/// use quiesce::WaitGroup;
///
/// let wg = WaitGroup::new();
/// let mut handles = Vec::new();
/// for file in ["part-a.csv", "part-b.csv", "part-c.csv"] {
///     let guard = wg.add();
///     handles.push(std::thread::spawn(move || {
///         let _guard = guard; // counts done when this thread's work ends
///         file.len()
///     }));
/// }
/// assert!(wg.wait_timeout(std::time::Duration::from_secs(10)));
/// # for h in handles { h.join().unwrap(); }
/// ```
#[derive(Clone, Default)]
pub struct WaitGroup {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    count: AtomicUsize,
    lock: Mutex<()>,
    zero: Condvar,
    /// The threads of [`WaitGroup::spawn`] not joined yet (invariant 5).
    spawned: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
}

/// One unit of outstanding work in a [`WaitGroup`]; dropping it (also while
/// unwinding from a panic) marks that work done.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
///
/// let wg = quiesce::WaitGroup::new();
/// let guard = wg.add();
/// let upload = std::thread::spawn(move || {
///     let _guard = guard;
///     panic!("network down");
/// });
/// assert!(wg.wait_timeout(Duration::from_secs(10))); // done, though it panicked
/// assert!(upload.join().is_err());
/// ```
#[must_use = "dropping the guard marks the work done at once"]
pub struct WaitGuard {
    inner: Arc<Inner>,
}

impl WaitGroup {
    /// An empty group.
    ///
    /// # Examples
    ///
    /// ```
    /// let wg = quiesce::WaitGroup::new();
    /// assert_eq!(wg.count(), 0);
    /// wg.wait(); // nothing outstanding: returns at once
    /// ```
    pub fn new() -> WaitGroup {
        WaitGroup::default()
    }

    /// Adds one unit of work; it is done when the returned guard drops.
    ///
    /// # Examples
    ///
    /// ```
    /// let wg = quiesce::WaitGroup::new();
    /// let other_handle = wg.clone();
    /// let export = other_handle.add(); // the same group
    /// assert_eq!(wg.count(), 1);
    /// drop(export); // `wg.Done()`
    /// assert_eq!(wg.count(), 0);
    /// ```
    pub fn add(&self) -> WaitGuard {
        self.inner.count.fetch_add(1, Ordering::SeqCst);
        WaitGuard {
            inner: self.inner.clone(),
        }
    }

    /// Starts `f` on a new thread named `name`, counted by the group for as
    /// long as `f` runs: Go 1.25's `wg.Go`. The thread is registered with
    /// the [leak checker](crate::leak) like the library's own.
    ///
    /// The returned [`JobHandle`] has `f`'s value, or its panic as
    /// [`JobError::Panicked`](crate::JobError::Panicked): a panic is caught
    /// on the thread (it still counts the work done) and never re-raised.
    /// The group is how to wait for the thread: its guard is dropped only
    /// after the result is in the handle, so once [`wait`](WaitGroup::wait)
    /// returns, every handle from this group's `spawn` joins at once, and
    /// the wait has joined the threads themselves (nothing is detached).
    /// Dropping the handle discards the result; the thread runs on and is
    /// still counted.
    ///
    /// # Errors
    ///
    /// When the thread cannot be started (then nothing is counted).
    ///
    /// # Examples
    ///
    /// ```
    /// use quiesce::{JobError, WaitGroup};
    ///
    /// let wg = WaitGroup::new();
    /// let sizes: Vec<_> = ["part-a.csv", "part-b.csv"]
    ///     .into_iter()
    ///     .map(|file| wg.spawn(format!("export-{file}"), move || file.len()).unwrap())
    ///     .collect();
    /// let broken = wg.spawn("export-broken", || -> usize { panic!("bad row") }).unwrap();
    /// wg.wait(); // every thread's code has returned (or panicked)
    /// assert_eq!(wg.count(), 0);
    /// let sizes: Vec<usize> = sizes.into_iter().map(|h| h.join().unwrap()).collect();
    /// assert_eq!(sizes, [10, 10]);
    /// assert!(matches!(broken.join(), Err(JobError::Panicked(p)) if p.message() == "bad row"));
    /// ```
    pub fn spawn<F, T>(&self, name: impl Into<String>, f: F) -> std::io::Result<JobHandle<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let guard = self.add();
        let (completer, handle) = crate::handle::pair();
        // Not started: the closure is dropped, and its guard with it.
        self.join_spawned(false);
        // The list stays locked until the handle is in it: a wait that sees
        // the count drop to zero for this thread finds it there (5).
        let mut spawned = self.spawned();
        let thread = crate::leak::spawn(name.into(), move || {
            let result = crate::panic::catch(f);
            completer.finish(result);
            drop(guard); // last (4)
        })?;
        spawned.push(thread);
        Ok(handle)
    }

    fn spawned(&self) -> std::sync::MutexGuard<'_, Vec<std::thread::JoinHandle<()>>> {
        self.inner
            .spawned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Joins the spawned threads that have finished, or (`all`, after a
    /// wait saw zero) every one (invariant 5).
    fn join_spawned(&self, all: bool) {
        let finished: Vec<_> = {
            let mut spawned = self.spawned();
            let (finished, running) = spawned
                .drain(..)
                .partition(|thread| all || thread.is_finished());
            *spawned = running;
            finished
        };
        for thread in finished {
            // Its code catches panics: the join cannot fail but for a bug of
            // ours, which must not be silent.
            if thread.join().is_err() {
                log::error!("a WaitGroup::spawn thread ended abnormally");
            }
        }
    }

    /// How much work is outstanding now.
    ///
    /// # Examples
    ///
    /// ```
    /// let wg = quiesce::WaitGroup::new();
    /// let uploads: Vec<_> = (0..3).map(|_| wg.add()).collect();
    /// assert_eq!(wg.count(), 3);
    /// drop(uploads);
    /// assert_eq!(wg.count(), 0);
    /// ```
    pub fn count(&self) -> usize {
        self.inner.count.load(Ordering::SeqCst)
    }

    /// Blocks until no work is outstanding. See the bounded forms.
    ///
    /// # Examples
    ///
    /// ```
    /// let wg = quiesce::WaitGroup::new();
    /// let handles: Vec<_> = (1..=3u32)
    ///     .map(|batch| {
    ///         let guard = wg.add();
    ///         std::thread::spawn(move || {
    ///             let _guard = guard;
    ///             batch * 10 // rows exported
    ///         })
    ///     })
    ///     .collect();
    /// wg.wait();
    /// assert_eq!(wg.count(), 0);
    /// assert_eq!(handles.into_iter().map(|h| h.join().unwrap()).sum::<u32>(), 60);
    /// ```
    pub fn wait(&self) {
        let mut lock = self.inner.lock.lock();
        while self.count() > 0 {
            self.inner.zero.wait(&mut lock);
        }
        drop(lock);
        self.join_spawned(true);
    }

    /// Blocks until no work is outstanding or `timeout` passes; `true` if
    /// the work is all done. A timeout too large to represent waits forever.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let wg = quiesce::WaitGroup::new();
    /// let busy = wg.add();
    /// assert!(!wg.wait_timeout(Duration::from_millis(2))); // still outstanding
    /// drop(busy);
    /// assert!(wg.wait_timeout(Duration::from_secs(1)));
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        match crate::deadline::after(timeout) {
            Some(deadline) => self.wait_deadline(deadline),
            None => {
                self.wait();
                true
            }
        }
    }

    /// Blocks until no work is outstanding or `deadline`; `true` if the work
    /// is all done.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    ///
    /// let wg = quiesce::WaitGroup::new();
    /// let guard = wg.add();
    /// let upload = std::thread::spawn(move || drop(guard));
    /// assert!(wg.wait_deadline(Instant::now() + Duration::from_secs(10)));
    /// upload.join().unwrap();
    /// ```
    pub fn wait_deadline(&self, deadline: Instant) -> bool {
        let mut lock = self.inner.lock.lock();
        let mut zero = true;
        while self.count() > 0 {
            if self.inner.zero.wait_until(&mut lock, deadline) {
                zero = self.count() == 0;
                break;
            }
        }
        drop(lock);
        if zero {
            self.join_spawned(true);
        }
        zero
    }

    /// Blocks until no work is outstanding or `ctx` is done.
    ///
    /// # Errors
    ///
    /// The context's error when it is done first (or already).
    ///
    /// # Examples
    ///
    /// ```
    /// let wg = quiesce::WaitGroup::new();
    /// let _busy = wg.add();
    /// let ctx = quiesce::Context::background().with_cancel();
    /// ctx.cancel();
    /// assert!(wg.wait_ctx(&ctx).is_err());
    /// ```
    pub fn wait_ctx(&self, ctx: &Context) -> Result<(), ContextError> {
        ctx.check()?;
        let inner = self.inner.clone();
        // Invariant 3.
        let _hook = ctx.on_cancel(move || {
            let _lock = inner.lock.lock();
            inner.zero.notify_all();
        });
        let mut lock = self.inner.lock.lock();
        loop {
            if self.count() == 0 {
                drop(lock);
                self.join_spawned(true);
                return Ok(());
            }
            ctx.check()?;
            self.inner.zero.wait(&mut lock);
        }
    }
}

impl fmt::Debug for WaitGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitGroup")
            .field("count", &self.count())
            .finish()
    }
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        if self.inner.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            // Invariant 2: take the lock before notifying.
            let _lock = self.inner.lock.lock();
            self.inner.zero.notify_all();
        }
    }
}

impl fmt::Debug for WaitGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WaitGuard")
    }
}
