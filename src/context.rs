//! `Context`: cancellation, deadlines and causes, propagated down a tree.
//!
//! Go's `context.Context` for threads. A context is *done* once it is
//! cancelled or its deadline passes; then it stays done. Work that takes a
//! context checks it ([`Context::check`]), waits on it next to other
//! channels ([`Context::done`] in `select!`), or uses the helpers that do
//! both ([`Context::sleep`], [`Context::recv`], [`Context::send`]).
//!
//! | Go | quiesce |
//! |----|---------|
//! | `context.Background()` | [`Context::background()`] |
//! | `ctx, cancel := context.WithCancel(parent)` + `defer cancel()` | `let ctx = parent.with_cancel();` (cancels at the end of the scope) |
//! | `cancel()` | [`ctx.cancel()`](CancelGuard::cancel) |
//! | `context.WithTimeout(parent, d)` | [`parent.with_timeout(d)`](Context::with_timeout) |
//! | `context.WithDeadline(parent, t)` | [`parent.with_deadline(t)`](Context::with_deadline) |
//! | `context.WithCancelCause(parent)`, `cancel(err)` | [`with_cancel_cause`](Context::with_cancel_cause), [`ctx.cancel_with_cause(err)`](CancelGuard::cancel_with_cause) |
//! | `go work(ctx)` | `let worker_ctx = ctx.context(); thread::spawn(move \|\| work(&worker_ctx))` |
//! | `<-ctx.Done()` | `recv(ctx.done()) -> _` in `crossbeam_channel::select!` |
//! | `ctx.Err()`, `context.Cause(ctx)` | [`ctx.err()`](Context::err), [`ctx.cause()`](Context::cause) |
//! | `context.AfterFunc(ctx, f)` | [`ctx.on_cancel(f)`](Context::on_cancel) |
//!
//! The one difference that matters: in Go, forgetting `cancel()` leaks the
//! child until the parent ends (`go vet` warns about it). Here `with_cancel`,
//! `with_timeout` and `with_deadline` return one value, a [`CancelGuard`],
//! that is both the child context (it derefs to [`Context`], as a
//! `MutexGuard` derefs to the data) and its cancellation: it cancels when
//! dropped, so a child cannot outlive the scope that made it. There is no
//! separate `cancel` to throw away: Go's `ctx, _ := context.WithTimeout(…)`
//! has no Rust spelling (`let (ctx, _) = …` does not compile), and
//! `let _ = parent.with_timeout(d);` leaves nothing to use. Threads and
//! functions that only watch the context get a plain [`Context`]
//! ([`CancelGuard::context`], or `&ctx`, which derefs), which never cancels
//! anything. A cancelled child is detached from its parent at once: a
//! long-lived parent with millions of short-lived children does not grow.
//!
//! ```
//! use std::time::Duration;
//! use quiesce::{Context, ContextError};
//!
//! let root = Context::background();
//! let ctx = root.with_timeout(Duration::from_secs(60));
//! let child = ctx.with_cancel();
//!
//! assert_eq!(child.err(), None);
//! drop(ctx); // cancels ctx, and through it, child
//! assert_eq!(child.err(), Some(ContextError::Canceled));
//! assert!(child.sleep(Duration::from_secs(60)).is_err()); // returns at once
//! ```
//!
//! Go's habit of discarding the cancel function does not compile:
//!
//! ```compile_fail,E0308
//! use std::time::Duration;
//! let (ctx, _) = quiesce::Context::background().with_timeout(Duration::from_secs(5));
//! ```
//!
//! Deadlines are fired by one shared thread, `quiesce-timer`, which exists
//! only while some deadline is pending (and for a second after the last
//! one), whatever the number of contexts.

use std::convert::Infallible;
use std::error::Error;
use std::fmt;
use std::ops::Deref;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender};

use crate::sync::Arc;
use crate::tree::{self, Node};
pub use crate::tree::{Cause, ContextError};

/// A cancellation signal with an optional deadline, passed down a tree of
/// work. Cheap to clone (one reference count); `Send + Sync`.
///
/// A context is made done by its [`CancelGuard`], by its deadline, or by an
/// ancestor becoming done; never by code that only holds the `Context`.
/// The constructors [`with_cancel`](Context::with_cancel),
/// [`with_timeout`](Context::with_timeout) and
/// [`with_deadline`](Context::with_deadline) return that guard, which
/// derefs to the new context: use it as the context, and hand plain
/// `Context`s ([`CancelGuard::context`]) to the threads that only watch it.
///
/// # Examples
///
/// Stop a loop when the context is done, with a channel next to it:
///
/// ```
/// use std::time::Duration;
/// use crossbeam_channel::{select, unbounded};
/// use quiesce::Context;
///
/// let ctx = Context::background().with_cancel();
/// let (reports, inbox) = unbounded::<u32>();
/// let (seen_tx, seen) = unbounded();
/// let worker_ctx = ctx.context(); // watches, never cancels
/// let worker = std::thread::spawn(move || {
///     let mut total = 0;
///     loop {
///         select! {
///             recv(inbox) -> n => { total += n.unwrap(); seen_tx.send(total).unwrap(); }
///             recv(worker_ctx.done()) -> _ => return total,
///         }
///     }
/// });
/// reports.send(2).unwrap();
/// assert_eq!(seen.recv_timeout(Duration::from_secs(10)), Ok(2));
/// ctx.cancel(); // the worker's `select!` sees `done()` disconnected
/// assert_eq!(worker.join().unwrap(), 2);
/// ```
#[derive(Clone, Default)]
pub struct Context {
    /// `None` is the background context: never done, no deadline.
    node: Option<Arc<Node>>,
}

/// A child context that owns its cancellation: what
/// [`with_cancel`](Context::with_cancel), [`with_timeout`](Context::with_timeout)
/// and [`with_deadline`](Context::with_deadline) return. It derefs to
/// [`Context`], so `ctx.done()`, `ctx.check()`, `ctx.sleep(d)`, `&ctx` as a
/// `&Context` argument and `ctx.with_cancel()` all work on it directly; it
/// cancels the context when dropped (or when [`cancel`](CancelGuard::cancel)
/// is called): Go's `defer cancel()`, which cannot be forgotten.
///
/// [`context`](CancelGuard::context) (or `clone()`, which derefs too) gives
/// a plain [`Context`] to move into threads and store: it watches the same
/// context and never cancels it. A plain context taken from a guard that is
/// then dropped is done: `parent.with_cancel().context()` is done at once.
///
/// Bind the guard to a name for as long as the context should live
/// (`let ctx = …`, or `let _ctx = …` when only its lifetime matters).
/// `let _ = parent.with_timeout(d);` drops it at once, cancelling a context
/// that nothing can use any more.
///
/// Cancelling is idempotent and never blocks on other threads; it returns
/// once every descendant context is done (if another thread is cancelling
/// part of the same tree at that moment, that part may be done a moment
/// later, as in Go). The guard is `Send + Sync`: it may be dropped, or
/// cancel, on any thread. It is not `Clone`: one owner cancels.
///
/// # Examples
///
/// ```
/// use quiesce::{Context, ContextError};
///
/// let request = {
///     let ctx = Context::background().with_cancel(); // Go's `defer cancel()`
///     assert!(!ctx.is_done());
///     ctx.context() // a plain context, to look at it after the scope
/// }; // the end of the scope cancels
/// assert_eq!(request.err(), Some(ContextError::Canceled));
///
/// let upload = Context::background().with_cancel();
/// let watcher = upload.context();
/// std::thread::spawn(move || drop(upload)).join().unwrap(); // any thread may cancel
/// assert!(watcher.is_done());
/// ```
///
/// The guard is one value, so Go's `ctx, _ :=` habit does not compile:
///
/// ```compile_fail,E0308
/// let (ctx, _) = quiesce::Context::background().with_cancel();
/// ```
#[must_use = "dropping the guard cancels the context at once"]
pub struct CancelGuard {
    /// Never the background context: its node is always `Some`.
    ctx: Context,
}

/// A callback registered with [`Context::on_cancel`]; dropping this handle
/// unregisters the callback if it has not run yet.
///
/// # Examples
///
/// ```
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use std::sync::Arc;
///
/// let ctx = quiesce::Context::background().with_cancel();
/// let fired = Arc::new(AtomicBool::new(false));
/// let flag = fired.clone();
/// let hook = ctx.on_cancel(move || flag.store(true, Ordering::SeqCst));
/// drop(hook); // unregistered before the cancel
/// ctx.cancel();
/// assert!(!fired.load(Ordering::SeqCst));
/// ```
#[must_use = "dropping the handle unregisters the callback"]
pub struct OnCancel {
    registered: Option<(Arc<Node>, u64)>,
}

/// Why [`Context::recv`] returned no message.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use quiesce::context::RecvError;
/// use quiesce::{Context, ContextError};
///
/// let (_tx, answers) = crossbeam_channel::bounded::<u32>(1); // nobody answers
/// let ctx = Context::background().with_timeout(Duration::from_millis(2));
/// let err = ctx.recv(&answers).unwrap_err();
/// assert_eq!(err, RecvError::Done(ContextError::DeadlineExceeded));
/// assert_eq!(err.to_string(), "receive gave up: context deadline exceeded");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecvError {
    /// The context is done (with this error) before a message arrived.
    Done(ContextError),
    /// The channel is empty and all its senders are gone.
    Disconnected,
}

/// Why [`Context::send`] could not send; hands the message back.
///
/// # Examples
///
/// ```
/// use quiesce::context::SendError;
///
/// let (tx, rx) = crossbeam_channel::bounded::<&str>(1);
/// drop(rx); // the store has gone away
/// let err = quiesce::Context::background().send(&tx, "order 17").unwrap_err();
/// assert!(matches!(err, SendError::Disconnected("order 17")));
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum SendError<T> {
    /// The context is done (with this error) before the message was taken.
    Done(ContextError, T),
    /// All receivers are gone.
    Disconnected(T),
}

static NEVER: LazyLock<Receiver<Infallible>> = LazyLock::new(crossbeam_channel::never);

impl Context {
    /// The root context: never done, no deadline. Its children are not
    /// linked anywhere (there is nothing to propagate), so making them costs
    /// one allocation.
    ///
    /// # Examples
    ///
    /// ```
    /// let ctx = quiesce::Context::background();
    /// assert!(ctx.err().is_none() && ctx.deadline().is_none());
    /// ```
    pub fn background() -> Context {
        Context { node: None }
    }

    /// A child context that is done when the returned guard is dropped or
    /// cancelled, or when `self` is done. The guard derefs to the child
    /// (see [`CancelGuard`]).
    ///
    /// # Examples
    ///
    /// ```
    /// let ctx = quiesce::Context::background().with_cancel();
    /// assert_eq!(ctx.err(), None);
    /// ctx.cancel();
    /// assert_eq!(ctx.err(), Some(quiesce::ContextError::Canceled));
    /// ```
    pub fn with_cancel(&self) -> CancelGuard {
        self.child(None)
    }

    /// Like [`with_cancel`](Context::with_cancel); named after Go's
    /// `WithCancelCause`. Every guard can cancel with a cause through
    /// [`CancelGuard::cancel_with_cause`]; [`Context::cause`] reports it.
    ///
    /// # Examples
    ///
    /// ```
    /// let ctx = quiesce::Context::background().with_cancel_cause();
    /// ctx.cancel_with_cause("tenant 12 deleted");
    /// assert_eq!(ctx.cause().unwrap().to_string(), "tenant 12 deleted");
    /// ```
    pub fn with_cancel_cause(&self) -> CancelGuard {
        self.child(None)
    }

    /// A child context that is also done `timeout` from now (and when the
    /// returned guard is dropped or cancelled). A timeout too
    /// large to represent means no deadline of its own; zero means the
    /// child is born done (unless `self`'s deadline is earlier: then the
    /// child is done when `self` is, never before it).
    ///
    /// # Panics
    ///
    /// Only if the OS refuses to start the shared `quiesce-timer` thread.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let ctx = quiesce::Context::background().with_timeout(Duration::from_millis(5));
    /// assert_eq!(ctx.sleep(Duration::from_secs(60)), Err(quiesce::ContextError::DeadlineExceeded));
    /// ```
    ///
    /// The guard is the context; there is no cancel function to discard:
    ///
    /// ```compile_fail,E0308
    /// use std::time::Duration;
    /// let (ctx, _) = quiesce::Context::background().with_timeout(Duration::from_secs(5));
    /// ```
    pub fn with_timeout(&self, timeout: Duration) -> CancelGuard {
        self.child(crate::deadline::after(timeout))
    }

    /// A child context that is also done at `deadline` (and when the
    /// returned guard is dropped or cancelled). Its
    /// [`deadline`](Context::deadline) is the earlier of `deadline` and
    /// `self`'s. A deadline of its own already past gives a child that is
    /// born done; when `self`'s deadline is the earlier one, the child is
    /// done when `self` is, never before it.
    ///
    /// # Panics
    ///
    /// Only if the OS refuses to start the shared `quiesce-timer` thread.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// let parent = quiesce::Context::background().with_timeout(Duration::from_secs(1));
    /// let child = parent.with_deadline(Instant::now() + Duration::from_secs(3600));
    /// assert_eq!(child.deadline(), parent.deadline());
    /// ```
    pub fn with_deadline(&self, deadline: Instant) -> CancelGuard {
        self.child(Some(deadline))
    }

    fn child(&self, deadline: Option<Instant>) -> CancelGuard {
        let node = tree::new_node(self.node.as_ref(), deadline);
        CancelGuard {
            ctx: Context { node: Some(node) },
        }
    }

    /// A receiver that is disconnected once the context is done, for
    /// `crossbeam_channel::select!` (`recv(ctx.done()) -> _ => …`). Nothing
    /// is ever sent on it.
    ///
    /// # Examples
    ///
    /// ```
    /// let ctx = quiesce::Context::background().with_cancel();
    /// assert!(ctx.done().try_recv().unwrap_err().is_empty());
    /// ctx.cancel();
    /// assert!(ctx.done().try_recv().unwrap_err().is_disconnected());
    /// ```
    pub fn done(&self) -> &Receiver<Infallible> {
        match &self.node {
            Some(node) => tree::done_receiver(node),
            None => &NEVER,
        }
    }

    /// `None` while the context is live; then why it is done.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use quiesce::{Context, ContextError};
    ///
    /// let ctx = Context::background().with_cancel();
    /// assert_eq!(ctx.err(), None);
    /// ctx.cancel();
    /// assert_eq!(ctx.err(), Some(ContextError::Canceled));
    ///
    /// let late = Context::background().with_timeout(Duration::ZERO);
    /// assert_eq!(late.err(), Some(ContextError::DeadlineExceeded));
    /// ```
    #[inline]
    pub fn err(&self) -> Option<ContextError> {
        self.node.as_ref().and_then(|n| n.err())
    }

    /// `true` once the context is done.
    ///
    /// # Examples
    ///
    /// ```
    /// use quiesce::Context;
    ///
    /// assert!(!Context::background().is_done()); // never done
    /// let ctx = Context::background().with_cancel();
    /// assert!(!ctx.is_done());
    /// ctx.cancel();
    /// assert!(ctx.is_done());
    /// ```
    #[inline]
    pub fn is_done(&self) -> bool {
        self.err().is_some()
    }

    /// `Ok(())` while live, the error once done: `ctx.check()?` between
    /// steps of cooperative work.
    ///
    /// # Errors
    ///
    /// [`ContextError`] once the context is done.
    ///
    /// # Examples
    ///
    /// ```
    /// fn step(ctx: &quiesce::Context) -> Result<u32, quiesce::ContextError> {
    ///     ctx.check()?;
    ///     Ok(42)
    /// }
    /// assert_eq!(step(&quiesce::Context::background()), Ok(42));
    ///
    /// let ctx = quiesce::Context::background().with_cancel();
    /// ctx.cancel();
    /// assert_eq!(step(&ctx), Err(quiesce::ContextError::Canceled));
    /// ```
    #[inline]
    pub fn check(&self) -> Result<(), ContextError> {
        match self.err() {
            None => Ok(()),
            Some(err) => Err(err),
        }
    }

    /// Why the context is done: the cause given to
    /// [`CancelGuard::cancel_with_cause`] (on it or on the ancestor whose
    /// cancellation reached it), else the [`ContextError`] itself. `None`
    /// while live.
    ///
    /// # Examples
    ///
    /// ```
    /// use quiesce::{Context, ContextError};
    ///
    /// let server = Context::background().with_cancel();
    /// let conn = server.with_cancel();
    /// assert!(conn.cause().is_none());
    /// server.cancel_with_cause("server shutting down for maintenance");
    /// let cause = conn.cause().unwrap(); // the ancestor's cause reached the child
    /// assert_eq!(cause.to_string(), "server shutting down for maintenance");
    ///
    /// let ctx = Context::background().with_cancel();
    /// ctx.cancel(); // no cause given: the error itself
    /// assert_eq!(ctx.cause().unwrap().to_string(), ContextError::Canceled.to_string());
    /// ```
    pub fn cause(&self) -> Option<Cause> {
        self.node.as_ref().and_then(|n| n.cause())
    }

    /// The instant the context will be done by itself, if any.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use quiesce::Context;
    ///
    /// assert_eq!(Context::background().deadline(), None);
    /// let request_ends = Instant::now() + Duration::from_secs(60);
    /// let request = Context::background().with_deadline(request_ends);
    /// assert_eq!(request.deadline(), Some(request_ends));
    /// let step = request.with_cancel(); // inherits it
    /// assert_eq!(step.deadline(), Some(request_ends));
    /// ```
    pub fn deadline(&self) -> Option<Instant> {
        self.node.as_ref().and_then(|n| n.deadline())
    }

    /// Time left until [`deadline`](Context::deadline) (zero once passed);
    /// `None` without a deadline.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use quiesce::Context;
    ///
    /// assert_eq!(Context::background().remaining(), None);
    /// let ctx = Context::background().with_timeout(Duration::from_secs(60));
    /// let left = ctx.remaining().unwrap();
    /// assert!(left > Duration::ZERO && left <= Duration::from_secs(60));
    /// let late = Context::background().with_timeout(Duration::ZERO);
    /// assert_eq!(late.remaining(), Some(Duration::ZERO)); // passed: zero
    /// ```
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline()
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Sleeps for `duration`, or less if the context is done first.
    ///
    /// # Errors
    ///
    /// [`ContextError`] when the context was done before `duration`
    /// passed, including when it was done already.
    ///
    /// # Examples
    ///
    /// ```
    /// let ctx = quiesce::Context::background().with_cancel();
    /// ctx.cancel();
    /// assert!(ctx.sleep(std::time::Duration::from_secs(3600)).is_err());
    /// ```
    pub fn sleep(&self, duration: Duration) -> Result<(), ContextError> {
        self.check()?;
        match self.done().recv_timeout(duration) {
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Ok(()),
            _ => Err(self.err().unwrap_or(ContextError::Canceled)),
        }
    }

    /// Sleeps until `deadline`, or less if the context is done first.
    ///
    /// # Errors
    ///
    /// As [`sleep`](Context::sleep).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use quiesce::{Context, ContextError};
    ///
    /// let soon = Instant::now() + Duration::from_millis(2);
    /// assert_eq!(Context::background().sleep_until(soon), Ok(()));
    ///
    /// let ctx = Context::background().with_cancel();
    /// ctx.cancel();
    /// let next_week = Instant::now() + Duration::from_secs(7 * 24 * 3600);
    /// assert_eq!(ctx.sleep_until(next_week), Err(ContextError::Canceled)); // at once
    /// ```
    pub fn sleep_until(&self, deadline: Instant) -> Result<(), ContextError> {
        self.sleep(deadline.saturating_duration_since(Instant::now()))
    }

    /// Receives from `rx`, or gives up when the context is done, whichever
    /// comes first. A context that is already done fails at once, even if a
    /// message is waiting.
    ///
    /// # Errors
    ///
    /// [`RecvError::Done`] when the context is done first,
    /// [`RecvError::Disconnected`] when the channel is empty and closed.
    ///
    /// # Examples
    ///
    /// ```
    /// let (tx, rx) = crossbeam_channel::bounded(1);
    /// tx.send("report").unwrap();
    /// let ctx = quiesce::Context::background();
    /// assert_eq!(ctx.recv(&rx), Ok("report"));
    /// drop(tx);
    /// assert_eq!(ctx.recv(&rx), Err(quiesce::context::RecvError::Disconnected));
    /// ```
    pub fn recv<T>(&self, rx: &Receiver<T>) -> Result<T, RecvError> {
        self.check().map_err(RecvError::Done)?;
        crossbeam_channel::select! {
            recv(rx) -> msg => msg.map_err(|_| RecvError::Disconnected),
            recv(self.done()) -> _ => Err(RecvError::Done(self.err().unwrap_or(ContextError::Canceled))),
        }
    }

    /// Sends `msg` on `tx`, or gives up when the context is done, whichever
    /// comes first; blocks while a bounded channel is full. A context that
    /// is already done fails at once.
    ///
    /// # Errors
    ///
    /// Hands `msg` back: [`SendError::Done`] when the context is done first,
    /// [`SendError::Disconnected`] when every receiver is gone.
    ///
    /// # Examples
    ///
    /// ```
    /// use quiesce::context::SendError;
    /// let (tx, _rx) = crossbeam_channel::bounded(0); // nobody receives
    /// let ctx = quiesce::Context::background().with_timeout(std::time::Duration::from_millis(5));
    /// assert!(matches!(ctx.send(&tx, 7), Err(SendError::Done(_, 7))));
    /// ```
    pub fn send<T>(&self, tx: &Sender<T>, msg: T) -> Result<(), SendError<T>> {
        if let Err(err) = self.check() {
            return Err(SendError::Done(err, msg));
        }
        let mut sel = Select::new();
        let send = sel.send(tx);
        let done = sel.recv(self.done());
        let oper = sel.select();
        if oper.index() == send {
            oper.send(tx, msg)
                .map_err(|e| SendError::Disconnected(e.into_inner()))
        } else {
            debug_assert_eq!(oper.index(), done);
            let _ = oper.recv(self.done());
            Err(SendError::Done(
                self.err().unwrap_or(ContextError::Canceled),
                msg,
            ))
        }
    }

    /// Runs `callback` once, on the thread that cancels the context, right
    /// after it is marked done; at once, on this thread, if it is done
    /// already. Go's `context.AfterFunc`, for code that must be woken by
    /// other means than a channel: shut a socket down so a blocked read
    /// returns, notify a condition variable.
    ///
    /// The callback must be quick and must not block: it runs inside
    /// `cancel()`. A panic in it is caught and logged. Dropping the returned
    /// handle unregisters it if it has not run yet. On the background
    /// context it never runs.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::sync::Arc;
    ///
    /// let ctx = quiesce::Context::background().with_cancel();
    /// let fired = Arc::new(AtomicBool::new(false));
    /// let flag = fired.clone();
    /// let _hook = ctx.on_cancel(move || flag.store(true, Ordering::SeqCst));
    /// ctx.cancel();
    /// assert!(fired.load(Ordering::SeqCst));
    /// ```
    pub fn on_cancel<F>(&self, callback: F) -> OnCancel
    where
        F: FnOnce() + Send + 'static,
    {
        let Some(node) = &self.node else {
            return OnCancel { registered: None };
        };
        match tree::add_callback(node, Box::new(callback)) {
            Ok(id) => OnCancel {
                registered: Some((node.clone(), id)),
            },
            Err(callback) => {
                if let Err(panic) = crate::panic::catch(callback) {
                    log::error!("a context cancel callback {panic}");
                }
                OnCancel { registered: None }
            }
        }
    }

    /// How many live children are linked to this context (diagnostics; a
    /// long-lived context should show few).
    ///
    /// # Examples
    ///
    /// ```
    /// let root = quiesce::Context::background().with_cancel();
    /// let child = root.with_cancel();
    /// assert_eq!(root.children(), 1);
    /// drop(child); // cancelled, and detached at once
    /// assert_eq!(root.children(), 0);
    /// ```
    pub fn children(&self) -> usize {
        self.node.as_ref().map_or(0, |n| n.children_len())
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("err", &self.err())
            .field("deadline", &self.deadline())
            .finish()
    }
}

impl CancelGuard {
    /// Cancels the context (and every descendant) now. Idempotent.
    ///
    /// # Examples
    ///
    /// ```
    /// let server = quiesce::Context::background().with_cancel();
    /// let conn = server.with_cancel();
    /// server.cancel();
    /// server.cancel(); // harmless
    /// assert!(server.is_done() && conn.is_done());
    /// ```
    pub fn cancel(&self) {
        if let Some(node) = &self.ctx.node {
            tree::cancel(node, ContextError::Canceled, None);
        }
    }

    /// Cancels with a cause, which [`Context::cause`] then returns on this
    /// context and its descendants. Accepts any error, or a `&str`/`String`.
    /// If the context is done already, the first cause stays.
    ///
    /// # Examples
    ///
    /// ```
    /// let ctx = quiesce::Context::background().with_cancel();
    /// ctx.cancel_with_cause(format!("client {} disconnected", 1042));
    /// ctx.cancel_with_cause("ignored: the first cause stays");
    /// assert_eq!(ctx.cause().unwrap().to_string(), "client 1042 disconnected");
    ///
    /// let ctx = quiesce::Context::background().with_cancel();
    /// ctx.cancel_with_cause(std::io::Error::other("disk full")); // any error
    /// assert_eq!(ctx.cause().unwrap().to_string(), "disk full");
    /// ```
    pub fn cancel_with_cause(&self, cause: impl Into<Box<dyn Error + Send + Sync + 'static>>) {
        if let Some(node) = &self.ctx.node {
            let cause: Cause = std::sync::Arc::from(cause.into());
            tree::cancel(node, ContextError::Canceled, Some(cause));
        }
    }

    /// A plain [`Context`] for the same context, to move into a thread or
    /// store: it watches, and never cancels (dropping it does nothing).
    /// The same as `clone()` on the guard, which derefs to `Context`.
    ///
    /// # Examples
    ///
    /// ```
    /// let ctx = quiesce::Context::background().with_cancel();
    /// let watcher = ctx.context();
    /// let worker = std::thread::spawn(move || watcher.done().recv().is_err());
    /// drop(ctx); // cancels: the worker's `recv` returns
    /// assert!(worker.join().unwrap());
    /// ```
    pub fn context(&self) -> Context {
        self.ctx.clone()
    }
}

impl Deref for CancelGuard {
    type Target = Context;

    #[inline]
    fn deref(&self) -> &Context {
        &self.ctx
    }
}

impl AsRef<Context> for CancelGuard {
    #[inline]
    fn as_ref(&self) -> &Context {
        &self.ctx
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        self.cancel();
    }
}

impl fmt::Debug for CancelGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelGuard")
            .field("err", &self.ctx.err())
            .field("deadline", &self.ctx.deadline())
            .finish()
    }
}

impl OnCancel {
    /// Unregisters the callback; `true` if it had not run (and now never
    /// will), `false` if it ran or is running, or was never registered (on
    /// the background context).
    ///
    /// # Examples
    ///
    /// ```
    /// use quiesce::Context;
    ///
    /// let ctx = Context::background().with_cancel();
    /// let hook = ctx.on_cancel(|| {});
    /// assert!(hook.stop()); // had not run, and now never will
    /// ctx.cancel();
    ///
    /// let ctx = Context::background().with_cancel();
    /// let hook = ctx.on_cancel(|| {});
    /// ctx.cancel(); // runs the callback
    /// assert!(!hook.stop());
    /// ```
    pub fn stop(mut self) -> bool {
        self.unregister()
    }

    fn unregister(&mut self) -> bool {
        match self.registered.take() {
            Some((node, id)) => tree::remove_callback(&node, id),
            None => false,
        }
    }
}

impl Drop for OnCancel {
    fn drop(&mut self) {
        self.unregister();
    }
}

impl fmt::Debug for OnCancel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnCancel")
            .field("registered", &self.registered.is_some())
            .finish()
    }
}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvError::Done(err) => write!(f, "receive gave up: {err}"),
            RecvError::Disconnected => {
                f.write_str("receiving on an empty and disconnected channel")
            }
        }
    }
}

impl Error for RecvError {}

impl<T> SendError<T> {
    /// The message that was not sent.
    ///
    /// # Examples
    ///
    /// ```
    /// let (tx, rx) = crossbeam_channel::bounded(1);
    /// drop(rx);
    /// let report = String::from("status: 200");
    /// let err = quiesce::Context::background().send(&tx, report).unwrap_err();
    /// assert_eq!(err.into_inner(), "status: 200"); // nothing is lost
    /// ```
    pub fn into_inner(self) -> T {
        match self {
            SendError::Done(_, msg) | SendError::Disconnected(msg) => msg,
        }
    }
}

impl<T> fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Done(err, _) => write!(f, "Done({err:?}, ..)"),
            SendError::Disconnected(_) => f.write_str("Disconnected(..)"),
        }
    }
}

impl<T> fmt::Display for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Done(err, _) => write!(f, "send gave up: {err}"),
            SendError::Disconnected(_) => f.write_str("sending on a disconnected channel"),
        }
    }
}

impl<T> Error for SendError<T> {}
