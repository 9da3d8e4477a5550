//! The one thread, `quiesce-timer`, that fires every context deadline.
//!
//! Entries live in a map ordered by (deadline, id); the thread sleeps on a
//! condition variable until the earliest one. A context cancelled before its
//! deadline removes its entry, so the map holds only pending deadlines (a
//! million short-lived `with_timeout` contexts leave nothing behind).
//!
//! The thread starts with the first deadline and exits after [`LINGER`] with
//! none pending; the next insert joins the old handle and starts a new one.
//! [`stop_if_idle`] stops and joins it at once (used by
//! [`leak::check_all`](crate::leak::check_all)).
//!
//! Lock order: the timer lock is taken after no other lock, and nothing is
//! locked under it. Deadlines are fired (contexts cancelled, user callbacks
//! run) with the lock released.

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::sync::Arc;
use crate::tree::{self, ContextError, Node};

/// How long the thread stays up with no pending deadline.
const LINGER: Duration = Duration::from_secs(1);

/// The thread's name, as seen in `top -H`, a debugger or a leak report.
pub(crate) const THREAD_NAME: &str = "quiesce-timer";

struct State {
    entries: BTreeMap<(Instant, u64), Arc<Node>>,
    /// When the sleeping thread will wake by itself; `None` while it is
    /// awake (it looks at `entries` again before it sleeps).
    wake_at: Option<Instant>,
    running: bool,
    stop: bool,
    handle: Option<JoinHandle<()>>,
}

struct Timer {
    state: Mutex<State>,
    wake: Condvar,
}

static TIMER: LazyLock<Timer> = LazyLock::new(|| Timer {
    state: Mutex::new(State {
        entries: BTreeMap::new(),
        wake_at: None,
        running: false,
        stop: false,
        handle: None,
    }),
    wake: Condvar::new(),
});

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// Fires `cancel(node, DeadlineExceeded)` at `at`.
pub(crate) fn insert(at: Instant, id: u64, node: Arc<Node>) {
    let timer = &*TIMER;
    let mut state = timer.state.lock();
    state.entries.insert((at, id), node);
    state.stop = false;
    if state.running {
        // Wake the thread only if it would sleep past this deadline: most
        // deadlines (timeouts that end in a cancel) never cost a wake-up.
        if state.wake_at.is_some_and(|wake_at| at < wake_at) {
            state.wake_at = None;
            timer.wake.notify_one();
        }
        return;
    }
    state.running = true;
    let old = state.handle.take();
    match crate::leak::spawn_untracked(THREAD_NAME.to_string(), run) {
        Ok(handle) => state.handle = Some(handle),
        Err(err) => {
            // Without a timer thread no deadline can fire: do not pretend.
            state.running = false;
            drop(state);
            panic!("quiesce: cannot start the {THREAD_NAME} thread: {err}");
        }
    }
    drop(state);
    if let Some(old) = old {
        // It set `running = false` under the lock and only had to return.
        let _ = old.join();
    }
}

/// Forgets the entry for (`at`, `id`), if it is still there.
pub(crate) fn remove(at: Instant, id: u64) {
    let removed = TIMER.state.lock().entries.remove(&(at, id));
    drop(removed);
}

/// Asks the timer thread to exit now if it has nothing pending (it leaves
/// the thread registry as it goes; see [`reap`]).
pub(crate) fn stop_if_idle() {
    let timer = &*TIMER;
    let mut state = timer.state.lock();
    if state.entries.is_empty() {
        state.stop = true;
        state.wake_at = None;
        timer.wake.notify_one();
    }
}

/// Joins the timer thread if it has exited (otherwise the next start joins
/// it).
pub(crate) fn reap() {
    let handle = {
        let mut state = TIMER.state.lock();
        if state.running {
            return;
        }
        state.handle.take()
    };
    if let Some(handle) = handle {
        let _ = handle.join();
    }
}

/// How many deadlines are pending (for tests and diagnostics).
#[cfg(test)]
pub(crate) fn pending() -> usize {
    TIMER.state.lock().entries.len()
}

fn run() {
    let timer = &*TIMER;
    let mut state = timer.state.lock();
    loop {
        let now = Instant::now();
        let mut due = Vec::new();
        while let Some(entry) = state.entries.first_entry() {
            if entry.key().0 > now {
                break;
            }
            due.push(entry.remove());
        }
        if !due.is_empty() {
            drop(state);
            for node in due {
                tree::cancel(&node, ContextError::DeadlineExceeded, None);
            }
            state = timer.state.lock();
            continue;
        }
        if state.stop && state.entries.is_empty() {
            break;
        }
        match state.entries.keys().next() {
            Some(&(at, _)) => {
                state.wake_at = Some(at);
                timer.wake.wait_until(&mut state, at);
            }
            None => {
                let linger_end = now + LINGER;
                state.wake_at = Some(linger_end);
                let timed_out = timer.wake.wait_until(&mut state, linger_end).timed_out();
                if timed_out && state.entries.is_empty() {
                    break;
                }
            }
        }
        state.wake_at = None;
    }
    state.running = false;
    state.stop = false;
    state.wake_at = None;
    log::trace!("{THREAD_NAME} exits: no pending deadline");
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::Context;

    // The only unit test that makes deadlines, so the count is this test's.
    #[test]
    fn cancelled_contexts_leave_no_timer_entry_behind() {
        let root = Context::background().with_timeout(Duration::from_secs(600));
        for _ in 0..100_000 {
            let ctx = root.with_timeout(Duration::from_secs(300));
            drop(ctx);
        }
        assert_eq!(
            super::pending(),
            1,
            "only the root's own deadline is pending"
        );
        drop(root);
        assert_eq!(super::pending(), 0);
    }
}
