//! `Group`: Go's `errgroup`. Tasks run on named threads under a shared
//! context; the first one to fail — by returning an error or by panicking —
//! cancels the context, so its siblings stop, and [`Group::wait`] returns
//! that first failure, naming the task.
//!
//! ```
//! use std::time::Duration;
//! use quiesce::{Context, Group, GroupError};
//!
//! let (group, _ctx) = Group::<u32, String>::with_context(&Context::background());
//! for task in 1..=5u32 {
//!     group
//!         .spawn(format!("task-{task}"), move |ctx| {
//!             if task == 3 {
//!                 return Err("site 3 unreachable".to_string());
//!             }
//!             // the others wait, cooperatively, and are cancelled
//!             ctx.sleep(Duration::from_secs(60)).map_err(|e| e.to_string())?;
//!             Ok(task)
//!         })
//!         .ok(); // a task refused because the group is already cancelled
//! }
//! match group.wait() {
//!     Err(GroupError::Failed { task, error }) => {
//!         assert_eq!(task, "task-3");
//!         assert_eq!(error, "site 3 unreachable");
//!     }
//!     other => panic!("{other:?}"),
//! }
//! ```
//!
//! Differences from Go's `errgroup`, on purpose:
//!
//! - Once the group is cancelled, tasks not yet started are not started
//!   ([`spawn`](Group::spawn) returns [`SpawnError::Canceled`]); Go still
//!   starts them (golang/go#61611).
//! - A panicking task does not take the process down, and is not lost: it
//!   is caught, named, cancels the siblings, and comes back from `wait` as
//!   [`GroupError::Panicked`] (Go's x/sync went back and forth on this).
//! - [`set_limit`](Group::set_limit) on a group with running tasks is an
//!   error, not a panic.
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

/// An error group; see the [module docs](self).
///
/// # Drop
///
/// Dropping a group without waiting cancels its context and joins its
/// tasks, blocking until they return.
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

/// The first failure of a [`Group`].
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
    pub fn new() -> Group<T, E> {
        Group::with_context(&Context::background()).0
    }

    /// A group under `parent`, and its context: done when `parent` is, at
    /// the first failure, or when [`wait`](Group::wait) returns.
    pub fn with_context(parent: &Context) -> (Group<T, E>, Context) {
        let (ctx, guard) = parent.with_cancel();
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
    pub fn set_limit(&mut self, n: usize) -> Result<(), LimitError> {
        let running = self.threads.get_mut().running().len();
        if running > 0 {
            return Err(LimitError { running });
        }
        self.limit = Some(Semaphore::new(n.max(1)));
        Ok(())
    }

    /// The group's context.
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
    pub fn wait(self) -> Result<Vec<T>, GroupError<E>> {
        let _ = self.threads.lock().join_timeout(Duration::MAX);
        self.finish()
    }

    /// Waits until `deadline` at most. `Some` with the outcome, as
    /// [`wait`](Group::wait), when every task has returned; `None` while
    /// some still run (the group keeps them; see
    /// [`running`](Group::running), [`cancel`](Group::cancel)).
    pub fn wait_deadline(&mut self, deadline: Instant) -> Option<Result<Vec<T>, GroupError<E>>> {
        let threads = self.threads.get_mut();
        let report = threads.join_deadline(deadline);
        if !report.running.is_empty() {
            return None;
        }
        Some(self.take_outcome())
    }

    /// [`wait_deadline`](Group::wait_deadline) `timeout` from now.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<Result<Vec<T>, GroupError<E>>> {
        match crate::deadline::after(timeout) {
            Some(deadline) => self.wait_deadline(deadline),
            None => {
                let _ = self.threads.get_mut().join_timeout(Duration::MAX);
                Some(self.take_outcome())
            }
        }
    }

    /// The tasks still running, by name and age.
    pub fn running(&self) -> Vec<Running> {
        self.threads.lock().running()
    }

    /// Cancels the group's context (tasks see it; no new task starts).
    pub fn cancel(&self) {
        self.guard.cancel();
    }

    fn finish(mut self) -> Result<Vec<T>, GroupError<E>> {
        self.take_outcome()
    }

    fn take_outcome(&mut self) -> Result<Vec<T>, GroupError<E>> {
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
