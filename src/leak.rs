//! The registry of live library threads, and a leak check for tests: Go's
//! `goleak`, for the threads quiesce starts.
//!
//! Every thread quiesce starts (timer, pool workers, [`Threads`](crate::Threads),
//! supervised services…) goes through one spawn function that names it,
//! records it here while its code runs, and removes it when the code returns
//! or unwinds. [`live_threads`] lists them; a [`Tracker`] checks that the
//! threads started *by one test* are all gone.
//!
//! Rust runs tests in parallel threads of one process, so a process-wide
//! "no threads alive" check (what goleak does) would see other tests'
//! threads. A tracker instead follows only the threads started from the
//! thread that created it, and, transitively, the threads those threads
//! start. Call [`track`] at the top of a test and [`Tracker::assert_none`]
//! at the end:
//!
//! ```
//! use std::time::Duration;
//!
//! let leaks = quiesce::leak::track();
//! let mut threads = quiesce::Threads::<()>::new(&quiesce::Context::background());
//! threads.spawn("uploader", |ctx| { let _ = ctx.sleep(Duration::from_millis(10)); }).unwrap();
//! // Forgetting to join would be caught here:
//! assert!(threads.join_timeout(Duration::from_secs(5)).running.is_empty());
//! leaks.assert_none();
//! ```
//!
//! The one thread shared by the whole process, `quiesce-timer` (it fires
//! context deadlines), belongs to no tracker; it exits on its own after a
//! second with no pending deadline. [`check_all`] also counts it.
//!
//! Lock order: the registry lock is a leaf; nothing else is locked while it
//! is held, and no user code runs under it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// How long [`Tracker::assert_none`] waits for threads that are on their way
/// out before it calls them leaked.
///
/// See [`Tracker::assert_none`]'s example.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

struct Entry {
    name: String,
    started: Instant,
    /// The trackers that were active where this thread was spawned.
    trackers: Vec<u64>,
}

struct Registry {
    threads: Mutex<HashMap<u64, Entry>>,
    changed: Condvar,
}

static REGISTRY: std::sync::LazyLock<Registry> = std::sync::LazyLock::new(|| Registry {
    threads: Mutex::new(HashMap::new()),
    changed: Condvar::new(),
});

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The trackers active on this thread, innermost last.
    static ACTIVE: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// A live library thread, as the registry sees it.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use quiesce::{leak, Context, Threads};
///
/// let mut threads = Threads::<()>::new(&Context::background());
/// threads.spawn("cache-sync", |ctx| { let _ = ctx.done().recv(); }).unwrap();
/// let live = leak::live_threads();
/// let info = live.iter().find(|t| t.name == "cache-sync").unwrap();
/// assert!(info.to_string().starts_with("cache-sync (running for "));
/// assert!(threads.shutdown_timeout(Duration::from_secs(10)).running.is_empty());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadInfo {
    /// The thread's name, e.g. `quiesce-worker-3`.
    pub name: String,
    /// How long it has been running.
    pub age: Duration,
}

impl fmt::Display for ThreadInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (running for {:.1?})", self.name, self.age)
    }
}

/// Threads still alive when a leak check gave up waiting.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use quiesce::{leak, Context, Threads};
///
/// let leaks = leak::track();
/// let mut threads = Threads::<()>::new(&Context::background());
/// threads.spawn("forgotten-upload", |ctx| { let _ = ctx.done().recv(); }).unwrap();
/// let leaked = leaks.check(Duration::from_millis(2)).unwrap_err();
/// assert_eq!(leaked.threads[0].name, "forgotten-upload");
/// assert!(leaked.to_string().starts_with("1 quiesce thread(s) still running: forgotten-upload"));
/// assert!(threads.shutdown_timeout(Duration::from_secs(10)).running.is_empty());
/// leaks.assert_none();
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeakError {
    /// The threads, oldest first.
    pub threads: Vec<ThreadInfo>,
}

impl fmt::Display for LeakError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} quiesce thread(s) still running: ",
            self.threads.len()
        )?;
        for (i, t) in self.threads.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{t}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LeakError {}

/// Every live thread quiesce started, in this whole process, oldest first.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use quiesce::{leak, Context, Threads};
///
/// let mut threads = Threads::<()>::new(&Context::background());
/// threads.spawn("log-export", |ctx| { let _ = ctx.done().recv(); }).unwrap();
/// assert!(leak::live_threads().iter().any(|t| t.name == "log-export"));
/// assert!(threads.shutdown_timeout(Duration::from_secs(10)).running.is_empty());
/// assert!(!leak::live_threads().iter().any(|t| t.name == "log-export"));
/// ```
pub fn live_threads() -> Vec<ThreadInfo> {
    collect(|_| true)
}

fn collect(filter: impl Fn(&Entry) -> bool) -> Vec<ThreadInfo> {
    let now = Instant::now();
    let threads = REGISTRY.threads.lock();
    let mut live: Vec<(Instant, ThreadInfo)> = threads
        .values()
        .filter(|e| filter(e))
        .map(|e| {
            let info = ThreadInfo {
                name: e.name.clone(),
                age: now.saturating_duration_since(e.started),
            };
            (e.started, info)
        })
        .collect();
    live.sort_by_key(|(started, _)| *started);
    live.into_iter().map(|(_, info)| info).collect()
}

/// Waits until `filter` matches no live thread, or `deadline`.
fn wait_gone(filter: impl Fn(&Entry) -> bool, deadline: Instant) -> Result<(), LeakError> {
    let mut threads = REGISTRY.threads.lock();
    loop {
        if !threads.values().any(&filter) {
            return Ok(());
        }
        if REGISTRY
            .changed
            .wait_until(&mut threads, deadline)
            .timed_out()
        {
            break;
        }
    }
    drop(threads);
    let threads = collect(filter);
    if threads.is_empty() {
        Ok(())
    } else {
        Err(LeakError { threads })
    }
}

/// Checks the whole process: waits up to `grace` for every quiesce thread to
/// end, including the shared `quiesce-timer` thread, which is asked to stop
/// if it has no pending deadline.
///
/// Meant for the end of a program (or a test binary with a single test);
/// tests that run in parallel should use a [`Tracker`] instead.
///
/// # Errors
///
/// [`LeakError`], naming the threads still running after `grace`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use quiesce::{leak, Context, Threads};
///
/// let mut threads = Threads::<()>::new(&Context::background());
/// threads.spawn("nightly-export", |_ctx| ()).unwrap();
/// assert!(threads.join_timeout(Duration::from_secs(10)).running.is_empty());
/// assert_eq!(leak::check_all(Duration::from_secs(5)), Ok(())); // at the end of `main`
/// ```
pub fn check_all(grace: Duration) -> Result<(), LeakError> {
    let deadline = crate::deadline::after(grace);
    crate::timer::stop_if_idle();
    wait_gone(|_| true, deadline.unwrap_or_else(far_future))?;
    crate::timer::reap();
    Ok(())
}

fn far_future() -> Instant {
    // About 30 years: "no deadline" for a wait that needs an Instant.
    Instant::now() + Duration::from_secs(60 * 60 * 24 * 365 * 30)
}

/// Starts tracking the threads quiesce spawns from the current thread (and
/// from the threads those start), until the tracker is dropped.
///
/// Trackers nest: an inner tracker's threads also belong to the outer one.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
///
/// let leaks = quiesce::leak::track();
/// let pool = quiesce::Pool::builder().workers(2).name("ingest").build().unwrap();
/// assert_eq!(leaks.live().len(), 2); // the pool's workers are tracked
/// let report = pool.shutdown_timeout(Duration::from_secs(10));
/// assert!(report.stuck.is_empty());
/// leaks.assert_none();
/// ```
pub fn track() -> Tracker {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    ACTIVE.with(|a| a.borrow_mut().push(id));
    Tracker {
        id,
        _not_send: std::marker::PhantomData,
    }
}

/// Follows the threads started while it is active; see [`track`].
///
/// A tracker is tied to the thread that created it (it is not `Send`).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use quiesce::{leak, Context, Threads};
///
/// let outer = leak::track();
/// let inner = leak::track();
/// let mut threads = Threads::<()>::new(&Context::background());
/// threads.spawn("shard-3-sync", |ctx| { let _ = ctx.done().recv(); }).unwrap();
/// assert_eq!(inner.live().len(), 1);
/// assert_eq!(outer.live().len(), 1); // trackers nest
/// drop(inner);
/// assert!(threads.shutdown_timeout(Duration::from_secs(10)).running.is_empty());
/// outer.assert_none();
/// ```
#[must_use = "a tracker that is dropped at once tracks nothing"]
pub struct Tracker {
    id: u64,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Tracker {
    /// The tracked threads still alive now, oldest first.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use quiesce::{leak, Context, Threads};
    ///
    /// let leaks = leak::track();
    /// assert!(leaks.live().is_empty());
    /// let mut threads = Threads::<()>::new(&Context::background());
    /// threads.spawn("session-reaper", |ctx| { let _ = ctx.done().recv(); }).unwrap();
    /// assert_eq!(leaks.live()[0].name, "session-reaper");
    /// assert!(threads.shutdown_timeout(Duration::from_secs(10)).running.is_empty());
    /// assert!(leaks.live().is_empty());
    /// ```
    pub fn live(&self) -> Vec<ThreadInfo> {
        let id = self.id;
        collect(move |e| e.trackers.contains(&id))
    }

    /// Waits up to `grace` for every tracked thread to end.
    ///
    /// # Errors
    ///
    /// [`LeakError`], naming the threads still running after `grace`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use quiesce::{leak, Context, Threads};
    ///
    /// let leaks = leak::track();
    /// let mut threads = Threads::<()>::new(&Context::background());
    /// threads.spawn("ticker", |ctx| { let _ = ctx.sleep(Duration::from_millis(2)); }).unwrap();
    /// assert_eq!(leaks.check(Duration::from_secs(10)), Ok(())); // waits for it to end
    /// assert_eq!(threads.reap().len(), 1);
    /// ```
    pub fn check(&self, grace: Duration) -> Result<(), LeakError> {
        let id = self.id;
        let deadline = crate::deadline::after(grace).unwrap_or_else(far_future);
        wait_gone(move |e| e.trackers.contains(&id), deadline)
    }

    /// Like [`check`](Tracker::check) with [`DEFAULT_GRACE`], then stops
    /// tracking.
    ///
    /// # Panics
    ///
    /// When a tracked thread is still running, with a message naming each
    /// one. This is the point: it is a test assertion.
    ///
    /// # Examples
    ///
    /// ```
    /// use quiesce::{leak, scope, Context};
    ///
    /// let leaks = leak::track();
    /// let total = scope(4, &Context::background(), |s| s.spawn(|_ctx| 1 + 1).join());
    /// assert_eq!(total, Ok(2));
    /// leaks.assert_none(); // `scope` joined its workers
    /// ```
    #[track_caller]
    pub fn assert_none(self) {
        if let Err(leaked) = self.check(DEFAULT_GRACE) {
            panic!("thread leak: {leaked}");
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        let id = self.id;
        // `try_with`: the thread-local may already be gone when a tracker is
        // dropped during thread teardown.
        let _ = ACTIVE.try_with(|a| a.borrow_mut().retain(|t| *t != id));
    }
}

impl fmt::Debug for Tracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracker")
            .field("live", &self.live())
            .finish()
    }
}

/// Removes a thread from the registry when its code is over, also when it
/// unwinds.
struct Registered(u64);

impl Drop for Registered {
    fn drop(&mut self) {
        REGISTRY.threads.lock().remove(&self.0);
        REGISTRY.changed.notify_all();
    }
}

/// Spawns a named library thread and records it in the registry for as long
/// as `f` runs. Every thread quiesce starts goes through here (or
/// [`spawn_scoped`]).
pub(crate) fn spawn<F, T>(name: String, f: F) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let f = register(&name, true, f);
    std::thread::Builder::new().name(name).spawn(f)
}

/// Like [`spawn`], but the thread belongs to no tracker (process-wide
/// service threads such as the timer).
pub(crate) fn spawn_untracked<F, T>(name: String, f: F) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let f = register(&name, false, f);
    std::thread::Builder::new().name(name).spawn(f)
}

/// Like [`spawn`], for a thread of a `std::thread::scope`.
pub(crate) fn spawn_scoped<'scope, 'env, F, T>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    name: String,
    f: F,
) -> io::Result<std::thread::ScopedJoinHandle<'scope, T>>
where
    F: FnOnce() -> T + Send + 'scope,
    T: Send + 'scope,
{
    let f = register(&name, true, f);
    std::thread::Builder::new()
        .name(name)
        .spawn_scoped(scope, f)
}

/// Records a thread about to start, and wraps its code so that it runs with
/// the spawner's trackers and leaves the registry when it is over. If the
/// thread is never started, dropping the wrapper removes the entry again.
fn register<F, T>(name: &str, tracked: bool, f: F) -> impl FnOnce() -> T + Send + use<F, T>
where
    F: FnOnce() -> T + Send,
{
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let trackers = if tracked {
        ACTIVE.with(|a| a.borrow().clone())
    } else {
        Vec::new()
    };
    REGISTRY.threads.lock().insert(
        id,
        Entry {
            name: name.to_string(),
            started: Instant::now(),
            trackers: trackers.clone(),
        },
    );
    let registered = Registered(id);
    move || {
        let _registered = registered;
        ACTIVE.with(|a| *a.borrow_mut() = trackers);
        f()
    }
}
