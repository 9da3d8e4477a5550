//! `Group`: Go's `errgroup`. The public docs are on [`Group`].
//!
//! # Invariants
//!
//! 1. The first failure is recorded under `first`'s lock, and the context
//!    is cancelled right after, by that same task; later failures are
//!    dropped (each is logged).
//! 2. Every spawned task's thread is owned by `threads` until `wait`
//!    joins it; a task's permit (with a limit) is released when its
//!    closure ends, also by unwinding, so a dying task cannot block its
//!    siblings.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::context::{CancelGuard, Context, ContextError};
use crate::panic::Panic;
use crate::semaphore::{AcquireError, Semaphore};
use crate::threads::{Running, Threads};

/// An error group: Go's `errgroup`. Tasks run on named threads under a shared
/// context; the first one to fail — by returning an error or by panicking —
/// cancels the context, so its siblings stop, and [`Group::wait`] returns
/// that first failure, naming the task.
///
/// Differences from Go's `errgroup`, on purpose:
///
/// - Once the group is cancelled, tasks not yet started are not started
///   ([`spawn`](Group::spawn) returns [`SpawnError::Canceled`]); Go still
///   starts them (golang/go#61611).
/// - A panicking task does not take the process down, and is not lost: it
///   is caught, named, cancels the siblings, and comes back from `wait` as
///   [`GroupError::Panicked`] (Go's x/sync went back and forth on this).
/// - [`set_limit`](Group::set_limit) on a group with running tasks is an
///   error, not a panic.
///
/// # Drop
///
/// Dropping a group without waiting cancels its context and joins its
/// tasks, blocking until they return.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use quiesce::{Context, Group, GroupError};
///
/// let (group, _ctx) = Group::<u32, String>::with_context(&Context::background());
/// for task in 1..=5u32 {
///     group
///         .spawn(format!("task-{task}"), move |ctx| {
///             if task == 3 {
///                 return Err("backend 3 unreachable".to_string());
///             }
///             // the others wait, cooperatively, and are cancelled
///             ctx.sleep(Duration::from_secs(60)).map_err(|e| e.to_string())?;
///             Ok(task)
///         })
///         .ok(); // a task refused because the group is already cancelled
/// }
/// match group.wait() {
///     Err(GroupError::Failed { task, error }) => {
///         assert_eq!(task, "task-3");
///         assert_eq!(error, "backend 3 unreachable");
///     }
///     other => panic!("{other:?}"),
/// }
/// ```
pub struct Group<T, E> {
    ctx: Context,
    /// Shared with the tasks: the first failure cancels through it.
    guard: Arc<CancelGuard>,
    shared: Arc<Shared<T, E>>,
    threads: Mutex<Threads<()>>,
    limit: Option<Semaphore>,
}

struct Shared<T, E> {
    /// One slot per spawned task, in spawn order.
    results: Mutex<Vec<Option<T>>>,
    first: Mutex<Option<GroupError<E>>>,
}

/// What [`Group::wait_deadline`] found.
#[derive(Debug)]
#[must_use = "a running group must be waited for or cancelled"]
pub enum Waited<T, E> {
    /// Every task returned: the values in spawn order, or the first failure.
    Done(Result<Vec<T>, GroupError<E>>),
    /// Some tasks still run: the group, handed back.
    Running(Group<T, E>),
}

impl<T, E> Waited<T, E> {
    /// The outcome if every task returned, `None` if some still run (the
    /// group is then dropped: it cancels and joins them).
    ///
    /// # Examples
    ///
    /// ```
    /// let group = quiesce::Group::<u8, String>::new();
    /// group.spawn("count-3", |_ctx| Ok(3)).unwrap();
    /// let waited = group.wait_timeout(std::time::Duration::from_secs(10));
    /// assert_eq!(waited.done(), Some(Ok(vec![3])));
    /// ```
    pub fn done(self) -> Option<Result<Vec<T>, GroupError<E>>> {
        match self {
            Waited::Done(outcome) => Some(outcome),
            Waited::Running(_) => None,
        }
    }
}

/// The first failure of a [`Group`].
///
/// # Examples
///
/// ```
/// use quiesce::{Group, GroupError};
///
/// let group = Group::<(), String>::new();
/// group.spawn("export-9", |_ctx| panic!("corrupt input file")).unwrap();
/// match group.wait() {
///     Err(GroupError::Panicked { task, panic }) => {
///         assert_eq!(task, "export-9");
///         assert_eq!(panic.message(), "corrupt input file");
///     }
///     other => panic!("{other:?}"),
/// }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupError<E> {
    /// A task returned an error.
    Failed {
        /// The name the task was spawned with.
        task: String,
        /// Its error.
        error: E,
    },
    /// A task panicked.
    Panicked {
        /// The name the task was spawned with.
        task: String,
        /// Its panic.
        panic: Panic,
    },
}

impl<E> GroupError<E> {
    /// The name of the task that failed.
    ///
    /// # Examples
    ///
    /// ```
    /// let group = quiesce::Group::<(), &str>::new();
    /// group.spawn("sync-shard-3", |_ctx| Err("timeout")).unwrap();
    /// let err = group.wait().unwrap_err();
    /// assert_eq!(err.task(), "sync-shard-3");
    /// assert_eq!(err.to_string(), "task sync-shard-3 failed: timeout");
    /// ```
    pub fn task(&self) -> &str {
        match self {
            GroupError::Failed { task, .. } | GroupError::Panicked { task, .. } => task,
        }
    }
}

impl<E: fmt::Display> fmt::Display for GroupError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GroupError::Failed { task, error } => write!(f, "task {task} failed: {error}"),
            GroupError::Panicked { task, panic } => write!(f, "task {task} {panic}"),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for GroupError<E> {}

/// Why [`Group::spawn`] did not start a task.
///
/// # Examples
///
/// ```
/// use quiesce::{ContextError, Group, SpawnError};
///
/// let group = Group::<(), String>::new();
/// group.cancel();
/// let refused = group.spawn("late-upload", |_ctx| Ok(()));
/// assert!(matches!(refused, Err(SpawnError::Canceled(ContextError::Canceled))));
/// ```
#[derive(Debug)]
pub enum SpawnError {
    /// The group's context is done (a sibling failed, or the parent was
    /// cancelled): the task was not started.
    Canceled(ContextError),
    /// The OS could not start the thread.
    Io(io::Error),
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpawnError::Canceled(err) => write!(f, "task not started: {err}"),
            SpawnError::Io(err) => write!(f, "task not started: cannot start its thread: {err}"),
        }
    }
}

impl std::error::Error for SpawnError {}

/// Why [`Group::try_spawn`] did not start a task; hands the closure back
/// when it was not consumed.
///
/// # Examples
///
/// ```
/// use quiesce::{Context, Group, TrySpawnError};
///
/// let mut group = Group::<u32, String>::new();
/// group.set_limit(1).unwrap();
/// let (release, hold) = crossbeam_channel::bounded::<()>(0);
/// group.try_spawn("job-1", move |_ctx| { let _ = hold.recv(); Ok(1) }).unwrap();
/// let Err(TrySpawnError::AtLimit(task)) = group.try_spawn("job-2", |_ctx| Ok(2)) else {
///     panic!("the only place is taken");
/// };
/// assert_eq!(task(&Context::background()), Ok(2)); // handed back: run it here
/// drop(release);
/// assert_eq!(group.wait(), Ok(vec![1]));
/// ```
pub enum TrySpawnError<F> {
    /// The limit is reached: nothing was started.
    AtLimit(F),
    /// The group's context is done: nothing was started.
    Canceled(ContextError, F),
    /// The OS could not start the thread (the closure is gone with it).
    Io(io::Error),
}

impl<F> fmt::Debug for TrySpawnError<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySpawnError::AtLimit(_) => f.write_str("AtLimit(..)"),
            TrySpawnError::Canceled(err, _) => write!(f, "Canceled({err:?}, ..)"),
            TrySpawnError::Io(err) => write!(f, "Io({err:?})"),
        }
    }
}

impl<F> fmt::Display for TrySpawnError<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySpawnError::AtLimit(_) => f.write_str("task not started: the group is at its limit"),
            TrySpawnError::Canceled(err, _) => write!(f, "task not started: {err}"),
            TrySpawnError::Io(err) => write!(f, "task not started: cannot start its thread: {err}"),
        }
    }
}

impl<F> std::error::Error for TrySpawnError<F> {}

/// [`Group::set_limit`] on a group whose tasks are still running.
///
/// # Examples
///
/// ```
/// let mut group = quiesce::Group::<(), String>::new();
/// let (release, hold) = crossbeam_channel::bounded::<()>(0);
/// group.spawn("long-export", move |_ctx| { let _ = hold.recv(); Ok(()) }).unwrap();
/// let err = group.set_limit(4).unwrap_err();
/// assert_eq!(err.running, 1);
/// drop(release);
/// assert!(group.wait().is_ok());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitError {
    /// How many tasks were running.
    pub running: usize,
}

impl fmt::Display for LimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot change the limit while {} task(s) run",
            self.running
        )
    }
}

impl std::error::Error for LimitError {}

impl<T: Send + 'static, E: Send + 'static> Default for Group<T, E> {
    fn default() -> Self {
        Group::new()
    }
}

impl<T: Send + 'static, E: Send + 'static> Group<T, E> {
    /// A group under the background context.
    ///
    /// # Examples
    ///
    /// ```
    /// let group = quiesce::Group::<u32, String>::new();
    /// group.spawn("count-a", |_ctx| Ok(12)).unwrap();
    /// group.spawn("count-b", |_ctx| Ok(30)).unwrap();
    /// assert_eq!(group.wait(), Ok(vec![12, 30])); // in spawn order
    /// ```
    pub fn new() -> Group<T, E> {
        Group::with_context(&Context::background()).0
    }

    /// A group under `parent`, and its context: done when `parent` is, at
    /// the first failure, or when [`wait`](Group::wait) returns.
    ///
    /// # Examples
    ///
    /// ```
    /// use quiesce::{Context, Group};
    ///
    /// let parent = Context::background().with_cancel();
    /// let (group, ctx) = Group::<(), String>::with_context(&parent);
    /// assert!(!ctx.is_done());
    /// parent.cancel(); // the parent is done: so is the group
    /// assert!(ctx.is_done());
    /// assert!(group.spawn("late-upload", |_ctx| Ok(())).is_err());
    /// ```
    pub fn with_context(parent: &Context) -> (Group<T, E>, Context) {
        let guard = parent.with_cancel();
        let ctx = guard.context();
        let group = Group {
            ctx: ctx.clone(),
            guard: Arc::new(guard),
            shared: Arc::new(Shared {
                results: Mutex::new(Vec::new()),
                first: Mutex::new(None),
            }),
            threads: Mutex::new(Threads::new(&ctx)),
            limit: None,
        };
        (group, ctx)
    }

    /// At most `n` tasks (at least one) run at once; [`spawn`](Group::spawn)
    /// waits for a free place, [`try_spawn`](Group::try_spawn) refuses.
    ///
    /// # Errors
    ///
    /// [`LimitError`] while tasks are running (the old limit still holds).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    ///
    /// let mut group = quiesce::Group::<(), String>::new();
    /// group.set_limit(2).unwrap();
    /// let (now, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    /// for job in 0..6 {
    ///     let (now, peak) = (now.clone(), peak.clone());
    ///     group.spawn(format!("job-{job}"), move |_ctx| {
    ///         peak.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
    ///         std::thread::sleep(std::time::Duration::from_millis(1));
    ///         now.fetch_sub(1, Ordering::SeqCst);
    ///         Ok(())
    ///     }).unwrap();
    /// }
    /// group.wait().unwrap();
    /// assert!(peak.load(Ordering::SeqCst) <= 2);
    /// ```
    pub fn set_limit(&mut self, n: usize) -> Result<(), LimitError> {
        let running = self.threads.get_mut().running().len();
        if running > 0 {
            return Err(LimitError { running });
        }
        self.limit = Some(Semaphore::new(n.max(1)));
        Ok(())
    }

    /// The group's context.
    ///
    /// # Examples
    ///
    /// ```
    /// let group = quiesce::Group::<(), String>::new();
    /// let ctx = group.context().clone(); // the one every task gets
    /// assert!(!ctx.is_done());
    /// group.wait().unwrap();
    /// assert!(ctx.is_done());
    /// ```
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// Starts `f` on a thread named `name`, waiting for a free place if the
    /// group has a limit.
    ///
    /// # Errors
    ///
    /// [`SpawnError::Canceled`] when the group's context is done first (or
    /// already): the task is not started. [`SpawnError::Io`] when the
    /// thread cannot be started.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let group = quiesce::Group::<(), String>::new();
    /// group
    ///     .spawn("upload-1", |ctx| {
    ///         ctx.sleep(Duration::from_secs(60)).map_err(|e| e.to_string()) // cut short
    ///     })
    ///     .unwrap();
    /// group.spawn("upload-2", |_ctx| Err("batch rejected".to_string())).unwrap();
    /// let err = group.wait().unwrap_err(); // the first failure, not the cancelled sibling
    /// assert_eq!(err.task(), "upload-2");
    /// ```
    pub fn spawn<F>(&self, name: impl Into<String>, f: F) -> Result<(), SpawnError>
    where
        F: FnOnce(&Context) -> Result<T, E> + Send + 'static,
    {
        self.ctx.check().map_err(SpawnError::Canceled)?;
        let permit = match &self.limit {
            None => None,
            Some(sem) => match sem.acquire_ctx(&self.ctx) {
                Ok(permit) => Some(permit),
                Err(AcquireError::Done(err)) => return Err(SpawnError::Canceled(err)),
                Err(other) => unreachable!("one permit of at least one: {other}"),
            },
        };
        // A permit handed over just as the group was cancelled: still do
        // not start.
        self.ctx.check().map_err(SpawnError::Canceled)?;
        self.start(name.into(), permit, f).map_err(SpawnError::Io)
    }

    /// Starts `f` if the group is below its limit and not cancelled;
    /// otherwise hands `f` back.
    ///
    /// # Errors
    ///
    /// [`TrySpawnError::AtLimit`], [`TrySpawnError::Canceled`] (both with
    /// `f`), or [`TrySpawnError::Io`].
    ///
    /// # Examples
    ///
    /// ```
    /// use quiesce::{Group, TrySpawnError};
    ///
    /// let group = Group::<u32, String>::new();
    /// assert!(group.try_spawn("resize-image-1", |_ctx| Ok(7)).is_ok()); // no limit: room
    /// group.cancel();
    /// let refused = group.try_spawn("resize-image-2", |_ctx| Ok(8));
    /// assert!(matches!(refused, Err(TrySpawnError::Canceled(..))));
    /// assert_eq!(group.wait(), Ok(vec![7]));
    /// ```
    pub fn try_spawn<F>(&self, name: impl Into<String>, f: F) -> Result<(), TrySpawnError<F>>
    where
        F: FnOnce(&Context) -> Result<T, E> + Send + 'static,
    {
        if let Err(err) = self.ctx.check() {
            return Err(TrySpawnError::Canceled(err, f));
        }
        let permit = match &self.limit {
            None => None,
            Some(sem) => match sem.try_acquire() {
                Ok(permit) => Some(permit),
                Err(_) => return Err(TrySpawnError::AtLimit(f)),
            },
        };
        self.start(name.into(), permit, f)
            .map_err(TrySpawnError::Io)
    }

    fn start<F>(&self, name: String, permit: Option<crate::Permit>, f: F) -> io::Result<()>
    where
        F: FnOnce(&Context) -> Result<T, E> + Send + 'static,
    {
        let mut threads = self.threads.lock();
        // Join finished tasks as we go, so a long-lived group holds only
        // its running threads.
        threads.reap();
        let index = {
            let mut results = self.shared.results.lock();
            results.push(None);
            results.len() - 1
        };
        let shared = self.shared.clone();
        let guard = self.guard.clone();
        let task = name.clone();
        let started = threads.spawn(name, move |ctx| {
            let _permit = permit; // released when the task ends, however
            let failure = match crate::panic::catch(|| f(ctx)) {
                Ok(Ok(value)) => {
                    shared.results.lock()[index] = Some(value);
                    return;
                }
                Ok(Err(error)) => GroupError::Failed { task, error },
                Err(panic) => GroupError::Panicked { task, panic },
            };
            record_failure(&shared, &guard, failure);
        });
        if started.is_err() {
            self.shared.results.lock().pop();
        }
        started
    }

    /// Waits for every task; returns their values in spawn order, or the
    /// first failure. Cancels the group's context (as Go's `Wait` does).
    ///
    /// # Errors
    ///
    /// The first [`GroupError`].
    ///
    /// # Examples
    ///
    /// ```
    /// let group = quiesce::Group::<usize, String>::new();
    /// for file in ["a.csv", "bb.csv"] {
    ///     group.spawn(file, move |_ctx| Ok(file.len())).unwrap();
    /// }
    /// let ctx = group.context().clone();
    /// assert_eq!(group.wait(), Ok(vec![5, 6]));
    /// assert!(ctx.is_done()); // as after Go's `Wait`
    /// ```
    pub fn wait(self) -> Result<Vec<T>, GroupError<E>> {
        let _ = self.threads.lock().join_timeout(Duration::MAX);
        self.finish()
    }

    /// Waits until `deadline` at most. [`Waited::Done`] with the outcome,
    /// as [`wait`](Group::wait) gives it, when every task has returned;
    /// [`Waited::Running`] with the group itself while some still run, to
    /// look at ([`running`](Group::running)), [`cancel`](Group::cancel) or
    /// wait for again. Taking the group by value means an outcome can be
    /// taken only once.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use quiesce::{Group, group::Waited};
    ///
    /// let group = Group::<(), String>::new();
    /// let (release, hold) = crossbeam_channel::bounded::<()>(0);
    /// group.spawn("slow-export", move |_ctx| { let _ = hold.recv(); Ok(()) }).unwrap();
    /// let group = match group.wait_deadline(Instant::now() + Duration::from_millis(2)) {
    ///     Waited::Running(group) => group,
    ///     Waited::Done(outcome) => panic!("finished early: {outcome:?}"),
    /// };
    /// assert_eq!(group.running()[0].name, "slow-export");
    /// drop(release);
    /// let outcome = group.wait_deadline(Instant::now() + Duration::from_secs(10)).done();
    /// assert_eq!(outcome, Some(Ok(vec![()])));
    /// ```
    pub fn wait_deadline(mut self, deadline: Instant) -> Waited<T, E> {
        if !self
            .threads
            .get_mut()
            .join_deadline(deadline)
            .running
            .is_empty()
        {
            return Waited::Running(self);
        }
        Waited::Done(self.finish())
    }

    /// [`wait_deadline`](Group::wait_deadline) `timeout` from now (a
    /// timeout too large to represent waits for all of them).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use quiesce::group::Waited;
    ///
    /// let group = quiesce::Group::<(), String>::new();
    /// group.spawn("watch-config", |ctx| { let _ = ctx.done().recv(); Ok(()) }).unwrap();
    /// let Waited::Running(group) = group.wait_timeout(Duration::from_millis(2)) else {
    ///     panic!("the watcher only stops when cancelled");
    /// };
    /// group.cancel();
    /// assert_eq!(group.wait_timeout(Duration::from_secs(10)).done(), Some(Ok(vec![()])));
    /// ```
    pub fn wait_timeout(self, timeout: Duration) -> Waited<T, E> {
        match crate::deadline::after(timeout) {
            Some(deadline) => self.wait_deadline(deadline),
            None => Waited::Done(self.wait()),
        }
    }

    /// The tasks still running, by name and age.
    ///
    /// # Examples
    ///
    /// ```
    /// let group = quiesce::Group::<(), String>::new();
    /// group.spawn("watch-config", |ctx| { let _ = ctx.done().recv(); Ok(()) }).unwrap();
    /// let running = group.running();
    /// assert_eq!(running.len(), 1);
    /// assert_eq!(running[0].name, "watch-config");
    /// group.cancel();
    /// group.wait().unwrap();
    /// ```
    pub fn running(&self) -> Vec<Running> {
        self.threads.lock().running()
    }

    /// Cancels the group's context (tasks see it; no new task starts).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let group = quiesce::Group::<(), String>::new();
    /// group.spawn("poll-queue", |ctx| {
    ///     while ctx.sleep(Duration::from_millis(1)).is_ok() {}
    ///     Ok(())
    /// }).unwrap();
    /// group.cancel();
    /// assert!(group.spawn("late-poll", |_ctx| Ok(())).is_err());
    /// assert_eq!(group.wait(), Ok(vec![()])); // a cancel is not a failure
    /// ```
    pub fn cancel(&self) {
        self.guard.cancel();
    }

    /// The outcome, once every task has returned; the group is consumed, so
    /// this happens once.
    fn finish(self) -> Result<Vec<T>, GroupError<E>> {
        self.guard.cancel();
        if let Some(err) = self.shared.first.lock().take() {
            return Err(err);
        }
        let results = std::mem::take(&mut *self.shared.results.lock());
        Ok(results
            .into_iter()
            .map(|r| r.expect("every joined task without a failure stored its value"))
            .collect())
    }
}

/// Invariant 1: the first failure wins and cancels the group.
fn record_failure<T, E>(shared: &Shared<T, E>, guard: &CancelGuard, failure: GroupError<E>) {
    let task = failure.task().to_string();
    {
        let mut first = shared.first.lock();
        if first.is_some() {
            log::debug!("group task {task} also failed (after the first failure)");
            return;
        }
        *first = Some(failure);
    }
    log::debug!("group task {task} failed; cancelling its siblings");
    guard.cancel();
}

impl<T, E> Drop for Group<T, E> {
    fn drop(&mut self) {
        // Then `threads` drops, joining every task.
        self.guard.cancel();
    }
}

impl<T, E> fmt::Debug for Group<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Group")
            .field("ctx", &self.ctx)
            .field("limit", &self.limit.as_ref().map(Semaphore::capacity))
            .finish_non_exhaustive()
    }
}
