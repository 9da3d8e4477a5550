//! The Context tree: nodes, linking, cancellation. [`Context`](crate::Context)
//! and [`CancelGuard`](crate::CancelGuard) are thin handles over `Arc<Node>`;
//! all the logic is here, as free functions over nodes.
//!
//! # Invariants
//!
//! 1. A node's error goes from live to `Canceled` or `DeadlineExceeded` once,
//!    under the node's lock, and never changes again. The `err` atomic
//!    mirrors it for lock-free reads (stored with `Release` under the lock,
//!    read with `Acquire`).
//! 2. A child is in its parent's `children` only while both are live. Its
//!    `slot` is its index there, or `UNLINKED`. `slot` is read and written
//!    only with the *parent's* lock held (so `Relaxed` is enough).
//! 3. A child is linked under the parent's lock and only if the parent is
//!    live at that moment; otherwise it is born cancelled with the parent's
//!    error and cause. With (4), no child is ever missed by a cancellation.
//! 4. Cancelling a node empties its `children` under its lock (setting each
//!    child's `slot` to `UNLINKED`) and then cancels each child. Every child
//!    is therefore reached once, by the thread that took it out.
//! 5. No two node locks are ever held at once: linking holds only the
//!    parent's, cancelling only the node's, detaching only the parent's.
//!    There is no lock order to get wrong. The timer's lock is never taken
//!    while a node lock is held, and no user code (cancel callbacks, the
//!    wake-up of `done()` receivers) runs under a node lock.
//! 6. The sender of the `done()` channel exists only while the node is live:
//!    it is created (lazily, under the lock) only if the node is live, and
//!    taken and dropped by the cancellation, which disconnects every
//!    receiver.
//! 7. A node with a deadline earlier than its parent's has its own timer
//!    entry, which holds a strong reference; the cancellation removes it.
//!    A node whose deadline is its parent's has no entry: the parent's
//!    cancellation reaches it.
//!
//! 8. A cancellation marks the node and its whole subtree first, detaches
//!    the node, and only then disconnects the `done()` channels and runs
//!    the callbacks: whoever is woken by it sees the descendants done and
//!    the node detached.
//!
//! When two threads cancel overlapping parts of the tree at once, a
//! descendant already being cancelled by one of them is skipped by the
//! other, which may return a moment before that descendant's own subtree is
//! done (Go's `context` behaves the same way). With a single canceller,
//! every descendant is cancelled before `cancel` returns.

use std::convert::Infallible;
use std::error::Error;
use std::fmt;
use std::mem;
use std::sync::OnceLock;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use crate::sync::{Arc, AtomicUsize, Mutex, Ordering};

/// The error of a context that is done.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use quiesce::{Context, ContextError};
///
/// let ctx = Context::background().with_cancel();
/// ctx.cancel();
/// assert_eq!(ctx.err(), Some(ContextError::Canceled));
/// assert_eq!(ContextError::Canceled.to_string(), "context canceled");
///
/// let late = Context::background().with_timeout(Duration::ZERO);
/// assert_eq!(late.check(), Err(ContextError::DeadlineExceeded));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ContextError {
    /// Cancelled: its guard was dropped or cancelled, or an ancestor's was.
    Canceled,
    /// Its deadline (or an ancestor's) passed.
    DeadlineExceeded,
}

impl fmt::Display for ContextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ContextError::Canceled => "context canceled",
            ContextError::DeadlineExceeded => "context deadline exceeded",
        })
    }
}

impl Error for ContextError {}

/// Why a context was cancelled: the error given to
/// [`CancelGuard::cancel_with_cause`](crate::CancelGuard::cancel_with_cause),
/// or the [`ContextError`] itself when none was given.
///
/// # Examples
///
/// ```
/// use quiesce::{Cause, Context, ContextError};
///
/// let ctx = Context::background().with_cancel();
/// ctx.cancel_with_cause("tenant 7 suspended");
/// let cause: Cause = ctx.cause().unwrap();
/// assert_eq!(cause.to_string(), "tenant 7 suspended");
///
/// let ctx = Context::background().with_cancel();
/// ctx.cancel(); // no cause given
/// let cause = ctx.cause().unwrap();
/// assert_eq!(cause.downcast_ref::<ContextError>(), Some(&ContextError::Canceled));
/// ```
pub type Cause = std::sync::Arc<dyn Error + Send + Sync + 'static>;

const LIVE: usize = 0;
const CANCELED: usize = 1;
const DEADLINE_EXCEEDED: usize = 2;
const UNLINKED: usize = usize::MAX;

fn encode(err: ContextError) -> usize {
    match err {
        ContextError::Canceled => CANCELED,
        ContextError::DeadlineExceeded => DEADLINE_EXCEEDED,
    }
}

type Callback = Box<dyn FnOnce() + Send + 'static>;

pub(crate) struct Node {
    parent: Option<Arc<Node>>,
    /// Index in the parent's `children`, or `UNLINKED`. Guarded by the
    /// parent's lock (invariant 2).
    slot: AtomicUsize,
    /// The effective deadline: the earlier of the node's own and its
    /// parent's.
    deadline: Option<Instant>,
    /// The node's own timer entry (invariant 7), if it has one.
    timer_id: Option<u64>,
    /// Mirror of `Inner::err` for lock-free reads (invariant 1).
    err: AtomicUsize,
    /// Set once, under the lock (invariant 6).
    done_rx: OnceLock<Receiver<Infallible>>,
    inner: Mutex<Inner>,
}

struct Inner {
    err: Option<ContextError>,
    cause: Option<Cause>,
    children: Vec<Arc<Node>>,
    done_tx: Option<Sender<Infallible>>,
    callbacks: Vec<(u64, Callback)>,
    next_callback: u64,
}

impl Inner {
    fn new(err: Option<ContextError>, cause: Option<Cause>) -> Inner {
        Inner {
            err,
            cause,
            children: Vec::new(),
            done_tx: None,
            callbacks: Vec::new(),
            next_callback: 0,
        }
    }
}

impl Node {
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    pub(crate) fn err(&self) -> Option<ContextError> {
        match self.err.load(Ordering::Acquire) {
            LIVE => None,
            CANCELED => Some(ContextError::Canceled),
            _ => Some(ContextError::DeadlineExceeded),
        }
    }

    pub(crate) fn cause(&self) -> Option<Cause> {
        let inner = self.inner.lock();
        let err = inner.err?;
        Some(
            inner
                .cause
                .clone()
                .unwrap_or_else(|| std::sync::Arc::new(err)),
        )
    }

    pub(crate) fn children_len(&self) -> usize {
        self.inner.lock().children.len()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Drop a long chain of ancestors iteratively rather than recursively,
        // so a deep tree cannot overflow the stack.
        let mut parent = self.parent.take();
        while let Some(p) = parent {
            // Usually the parent lives on: skip the failing `try_unwrap`.
            if Arc::strong_count(&p) > 1 {
                break;
            }
            match Arc::try_unwrap(p) {
                Ok(mut node) => parent = node.parent.take(),
                Err(_) => break,
            }
        }
    }
}

/// Creates a node under `parent` (`None`: under the background context)
/// with its own deadline `own_deadline`, linking it, or creating it already
/// cancelled, as the invariants require.
pub(crate) fn new_node(parent: Option<&Arc<Node>>, own_deadline: Option<Instant>) -> Arc<Node> {
    let parent_deadline = parent.and_then(|p| p.deadline);
    let deadline = crate::deadline::min(own_deadline, parent_deadline);
    let has_own_timer = own_deadline.is_some() && deadline != parent_deadline;
    // Born done only for a deadline of its own that has passed. An
    // inherited deadline that has passed is the parent's to fire (its timer
    // entry is due): a child must never be done while its parent is not.
    let past_deadline = has_own_timer && deadline.is_some_and(|d| d <= Instant::now());
    let timer_id = (has_own_timer && !past_deadline).then(crate::timer::next_id);

    let make = |err: Option<ContextError>, cause: Option<Cause>, slot: usize| Node {
        parent: parent.cloned(),
        slot: AtomicUsize::new(slot),
        deadline,
        timer_id: if err.is_some() { None } else { timer_id },
        err: AtomicUsize::new(err.map_or(LIVE, encode)),
        done_rx: OnceLock::new(),
        inner: Mutex::new(Inner::new(err, cause)),
    };

    let node = match parent {
        Some(p) => {
            let mut pi = p.inner.lock();
            if let Some(err) = pi.err {
                // Invariant 3: born cancelled, like its parent.
                Arc::new(make(Some(err), pi.cause.clone(), UNLINKED))
            } else if past_deadline {
                Arc::new(make(Some(ContextError::DeadlineExceeded), None, UNLINKED))
            } else {
                let node = Arc::new(make(None, None, pi.children.len()));
                pi.children.push(node.clone());
                node
            }
        }
        None if past_deadline => {
            Arc::new(make(Some(ContextError::DeadlineExceeded), None, UNLINKED))
        }
        None => Arc::new(make(None, None, UNLINKED)),
    };

    if let (Some(id), Some(at)) = (node.timer_id, deadline) {
        crate::timer::insert(at, id, node.clone());
        // A cancellation that ran between the link and the insert found no
        // entry to remove: remove it here instead (invariant 7).
        if node.err().is_some() {
            crate::timer::remove(at, id);
        }
    }
    node
}

/// The receiver behind `Context::done()`; created on first use.
pub(crate) fn done_receiver(node: &Node) -> &Receiver<Infallible> {
    if let Some(rx) = node.done_rx.get() {
        return rx;
    }
    let mut inner = node.inner.lock();
    if node.done_rx.get().is_none() {
        let (tx, rx) = crossbeam_channel::bounded(0);
        if inner.err.is_none() {
            inner.done_tx = Some(tx);
        }
        // Only ever set under the lock, so this cannot race with another set.
        let _ = node.done_rx.set(rx);
    }
    drop(inner);
    node.done_rx.get().expect("set just above")
}

/// Cancels `node` and every descendant with `err` (and `cause`), detaches
/// `node` from its parent, and only then wakes whoever waits on these
/// contexts (their `done()` receivers, their cancel callbacks): a thread
/// woken by a context's cancellation finds its descendants done and it
/// detached. Harmless on a node that is already done.
pub(crate) fn cancel(node: &Arc<Node>, err: ContextError, cause: Option<Cause>) {
    let mut pending = Vec::new();
    let Some(first) = mark(node, err, &cause, &mut pending) else {
        return;
    };
    // Only the nodes with something to wake (a `done()` channel, a timer
    // entry, callbacks) are kept: most of a large subtree has none.
    let mut woken: Vec<Wake> = first.into_iter().collect();
    // Iterative, not recursive: a deep tree cannot overflow the stack.
    while let Some(child) = pending.pop() {
        woken.extend(mark(&child, err, &cause, &mut pending).flatten());
    }
    detach(node);
    for wake in woken {
        wake.run();
    }
}

/// What a cancellation still has to do for one node once the whole
/// subtree is marked: disconnect its `done()` channel, forget its timer
/// entry, run its callbacks.
struct Wake {
    done_tx: Option<Sender<Infallible>>,
    timer: Option<(Instant, u64)>,
    callbacks: Vec<(u64, Callback)>,
}

impl Wake {
    fn run(self) {
        drop(self.done_tx);
        if let Some((at, id)) = self.timer {
            crate::timer::remove(at, id);
        }
        for (_, callback) in self.callbacks {
            if let Err(panic) = crate::panic::catch(callback) {
                log::error!("a context cancel callback {panic}");
            }
        }
    }
}

/// Marks one node done (invariants 1, 4, 6, 7), moving its children to
/// `pending`: `None` when it already was done, `Some(None)` when it has
/// nothing to wake.
fn mark(
    node: &Node,
    err: ContextError,
    cause: &Option<Cause>,
    pending: &mut Vec<Arc<Node>>,
) -> Option<Option<Wake>> {
    let mut inner = node.inner.lock();
    if inner.err.is_some() {
        return None;
    }
    inner.err = Some(err);
    inner.cause = cause.clone();
    node.err.store(encode(err), Ordering::Release);
    for child in &inner.children {
        // We hold the parent's lock: invariant 2.
        child.slot.store(UNLINKED, Ordering::Relaxed);
    }
    pending.append(&mut inner.children);
    let wake = Wake {
        done_tx: inner.done_tx.take(),
        timer: node.timer_id.zip(node.deadline).map(|(id, at)| (at, id)),
        callbacks: mem::take(&mut inner.callbacks),
    };
    let idle = wake.done_tx.is_none() && wake.timer.is_none() && wake.callbacks.is_empty();
    Some((!idle).then_some(wake))
}

/// Removes a cancelled node from its parent's `children` (invariant 2).
fn detach(node: &Arc<Node>) {
    let Some(parent) = &node.parent else { return };
    let removed = {
        let mut pi = parent.inner.lock();
        let slot = node.slot.load(Ordering::Relaxed);
        if slot == UNLINKED {
            return;
        }
        node.slot.store(UNLINKED, Ordering::Relaxed);
        let removed = pi.children.swap_remove(slot);
        debug_assert!(Arc::ptr_eq(&removed, node));
        if let Some(moved) = pi.children.get(slot) {
            moved.slot.store(slot, Ordering::Relaxed);
        }
        // A parent that once had many children should not keep the memory.
        let cap = pi.children.capacity();
        if cap > 64 && pi.children.len() < cap / 4 {
            let len = pi.children.len();
            pi.children.shrink_to(len * 2);
        }
        removed
    };
    drop(removed);
}

/// Registers `callback` to run when `node` is cancelled. Returns its id, or
/// gives the callback back when the node is already done.
pub(crate) fn add_callback(node: &Node, callback: Callback) -> Result<u64, Callback> {
    let mut inner = node.inner.lock();
    if inner.err.is_some() {
        return Err(callback);
    }
    let id = inner.next_callback;
    inner.next_callback += 1;
    inner.callbacks.push((id, callback));
    Ok(id)
}

/// Unregisters a callback; `true` if it was still registered (and so will
/// never run).
pub(crate) fn remove_callback(node: &Node, id: u64) -> bool {
    let removed = {
        let mut inner = node.inner.lock();
        let Some(i) = inner.callbacks.iter().position(|(cid, _)| *cid == id) else {
            return false;
        };
        inner.callbacks.swap_remove(i)
    };
    // The callback (and whatever it captured) is dropped outside the lock.
    drop(removed);
    true
}
