//! The Context contract, sentence by sentence (see DESIGN.md, "Context").
//!
//! No test here asserts how fast anything happens. Waits that should end
//! early are given long bounds (a minute): if the contract is broken the
//! test fails after that bound instead of hanging.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, unbounded};
use quiesce::context::{RecvError, SendError};
use quiesce::{Context, ContextError, leak};

const LONG: Duration = Duration::from_secs(60);

#[test]
fn background_is_never_done_and_has_no_deadline() {
    let ctx = Context::background();
    assert_eq!(ctx.err(), None);
    assert!(ctx.cause().is_none());
    assert_eq!(ctx.deadline(), None);
    assert!(ctx.done().try_recv().unwrap_err().is_empty());
    assert_eq!(ctx.check(), Ok(()));
    assert_eq!(ctx.sleep(Duration::ZERO), Ok(()));
}

#[test]
fn dropping_the_guard_cancels() {
    let guard = Context::background().with_cancel();
    let ctx = guard.context();
    assert_eq!(ctx.err(), None);
    drop(guard);
    assert_eq!(ctx.err(), Some(ContextError::Canceled));
    assert!(ctx.done().try_recv().unwrap_err().is_disconnected());
    assert_eq!(ctx.check(), Err(ContextError::Canceled));
}

#[test]
fn double_cancel_is_harmless_and_keeps_the_first_error() {
    let ctx = Context::background().with_timeout(LONG);
    ctx.cancel();
    ctx.cancel();
    ctx.cancel_with_cause("too late");
    ctx.cancel();
    assert_eq!(ctx.err(), Some(ContextError::Canceled));
    // The first cancel had no cause: the cause is the error itself.
    assert_eq!(ctx.cause().unwrap().to_string(), "context canceled");
}

#[test]
fn parent_cancel_reaches_every_descendant_before_it_returns() {
    let root = Context::background().with_cancel();
    let mut all = Vec::new();
    for _ in 0..3 {
        let child = root.with_cancel();
        for _ in 0..3 {
            let grandchild = child.with_timeout(LONG);
            all.push(grandchild.with_cancel());
            all.push(grandchild);
        }
        all.push(child);
    }
    root.cancel();
    for ctx in &all {
        assert_eq!(ctx.err(), Some(ContextError::Canceled));
        assert!(ctx.done().try_recv().unwrap_err().is_disconnected());
    }
    assert_eq!(root.children(), 0);
}

#[test]
fn cancelling_a_child_leaves_parent_and_siblings_alone() {
    let parent = Context::background().with_cancel();
    let a = parent.with_cancel();
    let b = parent.with_cancel();
    a.cancel();
    assert!(a.is_done());
    assert!(!parent.is_done());
    assert!(!b.is_done());
    assert_eq!(parent.children(), 1);
}

#[test]
fn a_child_of_a_done_parent_is_born_done_with_its_error_and_cause() {
    let parent = Context::background().with_cancel_cause();
    parent.cancel_with_cause("site closed");
    let child = parent.with_timeout(LONG);
    assert_eq!(child.err(), Some(ContextError::Canceled));
    assert_eq!(child.cause().unwrap().to_string(), "site closed");
    assert_eq!(parent.children(), 0);
}

#[test]
fn a_child_deadline_is_the_earlier_of_its_own_and_its_parents() {
    let parent = Context::background().with_timeout(Duration::from_secs(100));
    let later = parent.with_timeout(Duration::from_secs(1000));
    let earlier = parent.with_timeout(Duration::from_secs(10));
    let plain = parent.with_cancel();
    assert_eq!(later.deadline(), parent.deadline());
    assert_eq!(plain.deadline(), parent.deadline());
    assert!(earlier.deadline().unwrap() < parent.deadline().unwrap());
    assert!(earlier.remaining().unwrap() <= Duration::from_secs(10));
}

#[test]
fn a_parent_deadline_reaches_children_as_deadline_exceeded() {
    let leaks = leak::track();
    let parent = Context::background().with_timeout(Duration::from_millis(20));
    let child = parent.with_timeout(LONG);
    let grandchild = child.with_cancel();
    assert_eq!(grandchild.sleep(LONG), Err(ContextError::DeadlineExceeded));
    assert_eq!(child.err(), Some(ContextError::DeadlineExceeded));
    assert_eq!(parent.err(), Some(ContextError::DeadlineExceeded));
    assert_eq!(
        grandchild.cause().unwrap().to_string(),
        "context deadline exceeded"
    );
    leaks.assert_none();
}

#[test]
fn an_own_deadline_fires_without_touching_the_parent() {
    let parent = Context::background().with_cancel();
    let child = parent.with_timeout(Duration::from_millis(10));
    assert_eq!(child.sleep(LONG), Err(ContextError::DeadlineExceeded));
    assert_eq!(parent.err(), None);
    assert_eq!(
        parent.children(),
        0,
        "a child whose deadline fired is detached"
    );
}

#[test]
fn a_deadline_already_past_gives_a_context_born_done() {
    let ctx = Context::background().with_deadline(Instant::now() - Duration::from_secs(1));
    assert_eq!(ctx.err(), Some(ContextError::DeadlineExceeded));
    let ctx = Context::background().with_timeout(Duration::ZERO);
    assert_eq!(ctx.err(), Some(ContextError::DeadlineExceeded));
    let parent = Context::background().with_cancel();
    let child = parent.with_timeout(Duration::ZERO);
    assert_eq!(child.err(), Some(ContextError::DeadlineExceeded));
    assert_eq!(parent.children(), 0, "a child born done is never linked");
    assert!(!parent.is_done());
}

#[test]
fn a_duration_that_overflows_means_no_deadline() {
    let ctx = Context::background().with_timeout(Duration::MAX);
    assert_eq!(ctx.deadline(), None);
    assert_eq!(ctx.err(), None);
    let parent = Context::background().with_timeout(LONG);
    let child = parent.with_timeout(Duration::MAX);
    assert_eq!(child.deadline(), parent.deadline());
    ctx.cancel();
    assert_eq!(ctx.err(), Some(ContextError::Canceled));
}

#[test]
fn a_guard_dropped_on_another_thread_cancels() {
    let guard = Context::background().with_cancel();
    let ctx = guard.context();
    thread::spawn(move || drop(guard)).join().unwrap();
    assert_eq!(ctx.err(), Some(ContextError::Canceled));
}

#[test]
fn a_million_short_lived_children_leave_the_root_with_none() {
    let root = Context::background().with_timeout(LONG);
    for i in 0..1_000_000u32 {
        let child = if i % 2 == 0 {
            root.with_cancel()
        } else {
            root.with_timeout(Duration::from_secs(30))
        };
        assert!(!child.is_done());
        drop(child);
    }
    assert_eq!(root.children(), 0);
}

#[test]
fn a_cancelled_child_is_detached_while_others_stay() {
    let root = Context::background().with_cancel();
    let mut kept = Vec::new();
    for i in 0..1000 {
        let ctx = root.with_cancel();
        if i % 3 == 0 {
            kept.push(ctx);
        }
    }
    assert_eq!(root.children(), kept.len());
    // Removing from the middle keeps the bookkeeping right for the rest.
    kept.retain(|_| rand_bit());
    assert_eq!(root.children(), kept.len());
    drop(kept);
    assert_eq!(root.children(), 0);
}

fn rand_bit() -> bool {
    static STATE: AtomicUsize = AtomicUsize::new(12345);
    let x = STATE.fetch_add(0x9E37_79B9, Ordering::Relaxed);
    (x.wrapping_mul(2_654_435_761) >> 7) & 1 == 1
}

#[test]
fn cause_propagates_to_descendants() {
    let root = Context::background().with_cancel_cause();
    let child = root.with_cancel();
    let grandchild = child.with_timeout(LONG);
    assert!(grandchild.cause().is_none());
    root.cancel_with_cause(std::io::Error::other("analyzer unreachable"));
    for ctx in [&root, &child, &grandchild] {
        assert_eq!(ctx.err(), Some(ContextError::Canceled));
        assert_eq!(ctx.cause().unwrap().to_string(), "analyzer unreachable");
    }
}

#[test]
fn sleep_returns_early_when_cancelled_from_another_thread() {
    let guard = Context::background().with_cancel();
    let ctx = guard.context();
    let started = Arc::new(Barrier::new(2));
    let s = started.clone();
    let canceller = thread::spawn(move || {
        s.wait();
        drop(guard);
    });
    started.wait();
    assert_eq!(ctx.sleep(LONG), Err(ContextError::Canceled));
    canceller.join().unwrap();
}

#[test]
fn sleep_on_a_done_context_returns_at_once_and_a_live_one_sleeps() {
    let ctx = Context::background().with_cancel();
    assert_eq!(ctx.sleep(Duration::from_millis(1)), Ok(()));
    ctx.cancel();
    assert_eq!(ctx.sleep(LONG), Err(ContextError::Canceled));
    assert_eq!(ctx.sleep(Duration::ZERO), Err(ContextError::Canceled));
    assert_eq!(
        ctx.sleep_until(Instant::now() + LONG),
        Err(ContextError::Canceled)
    );
}

#[test]
fn a_thread_blocked_in_select_on_done_wakes_on_cancel() {
    let ctx = Context::background().with_cancel();
    let (never_tx, never_rx) = unbounded::<()>();
    let watcher = ctx.context();
    let waiter = thread::spawn(move || {
        select! {
            recv(never_rx) -> _ => "message",
            recv(watcher.done()) -> _ => "done",
            default(LONG) => "timeout",
        }
    });
    ctx.cancel();
    assert_eq!(waiter.join().unwrap(), "done");
    drop(never_tx);
}

#[test]
fn done_taken_after_cancel_is_already_disconnected() {
    let ctx = Context::background().with_cancel();
    ctx.cancel();
    assert!(ctx.done().try_recv().unwrap_err().is_disconnected());
    let clone = ctx.clone();
    assert!(clone.done().recv_timeout(LONG).is_err());
}

#[test]
fn recv_gets_messages_disconnection_and_done() {
    let (tx, rx) = bounded(2);
    let ctx = Context::background().with_cancel();
    tx.send(1).unwrap();
    assert_eq!(ctx.recv(&rx), Ok(1));
    let sender = thread::spawn(move || {
        tx.send(2).unwrap();
    });
    assert_eq!(ctx.recv(&rx), Ok(2));
    sender.join().unwrap();
    assert_eq!(ctx.recv(&rx), Err(RecvError::Disconnected));

    let (tx, rx) = bounded(1);
    tx.send(3).unwrap();
    ctx.cancel();
    // Already done: fails even though a message is waiting.
    assert_eq!(ctx.recv(&rx), Err(RecvError::Done(ContextError::Canceled)));
    let (_tx, empty) = bounded::<u8>(1);
    let ctx = Context::background().with_timeout(Duration::from_millis(10));
    assert_eq!(
        ctx.recv(&empty),
        Err(RecvError::Done(ContextError::DeadlineExceeded))
    );
}

#[test]
fn send_delivers_or_hands_the_message_back() {
    let (tx, rx) = bounded(1);
    let ctx = Context::background();
    assert_eq!(ctx.send(&tx, "a"), Ok(()));
    assert_eq!(rx.recv().unwrap(), "a");

    let ctx = Context::background().with_timeout(Duration::from_millis(10));
    tx.send("fills the channel").unwrap();
    match ctx.send(&tx, "b") {
        Err(SendError::Done(ContextError::DeadlineExceeded, msg)) => assert_eq!(msg, "b"),
        other => panic!("expected Done, got {other:?}"),
    }
    drop(rx);
    let ctx = Context::background();
    assert_eq!(ctx.send(&tx, "c").unwrap_err().into_inner(), "c");

    let (tx, _rx) = bounded(1);
    let ctx = Context::background().with_cancel();
    ctx.cancel();
    assert!(matches!(
        ctx.send(&tx, 5),
        Err(SendError::Done(ContextError::Canceled, 5))
    ));
}

#[test]
fn on_cancel_runs_once_after_the_context_is_done() {
    let ctx = Context::background().with_cancel();
    let runs = Arc::new(AtomicUsize::new(0));
    let (r, c) = (runs.clone(), ctx.clone());
    let _hook = ctx.on_cancel(move || {
        assert!(
            c.is_done(),
            "callbacks run after the context is marked done"
        );
        r.fetch_add(1, Ordering::SeqCst);
    });
    ctx.cancel();
    ctx.cancel();
    ctx.cancel();
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[test]
fn on_cancel_on_a_done_context_runs_at_once() {
    let ctx = Context::background().with_cancel();
    ctx.cancel();
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let hook = ctx.on_cancel(move || {
        r.fetch_add(1, Ordering::SeqCst);
    });
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert!(!hook.stop());
}

#[test]
fn a_dropped_or_stopped_on_cancel_never_runs() {
    let ctx = Context::background().with_cancel();
    let runs = Arc::new(AtomicUsize::new(0));
    let (r1, r2) = (runs.clone(), runs.clone());
    drop(ctx.on_cancel(move || {
        r1.fetch_add(1, Ordering::SeqCst);
    }));
    let hook = ctx.on_cancel(move || {
        r2.fetch_add(1, Ordering::SeqCst);
    });
    assert!(hook.stop());
    ctx.cancel();
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    // On the background context a callback never runs.
    let r3 = runs.clone();
    let _hook = Context::background().on_cancel(move || {
        r3.fetch_add(1, Ordering::SeqCst);
    });
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

#[test]
fn a_panicking_cancel_callback_does_not_stop_the_cancellation() {
    let ctx = Context::background().with_cancel();
    let child = ctx.with_cancel();
    let _hook = ctx.on_cancel(|| panic!("callback bug"));
    ctx.cancel();
    assert!(ctx.is_done());
    assert!(child.is_done());
}

#[test]
fn a_deep_chain_cancels_and_drops_without_overflowing_the_stack() {
    let root = Context::background().with_cancel();
    let mut guards = Vec::new();
    let mut tip = root.clone();
    for _ in 0..100_000 {
        let next = tip.with_cancel();
        tip = next.context();
        guards.push(next);
    }
    root.cancel();
    assert!(tip.is_done());
    drop(guards);
    drop(tip);
    drop(root);
}

#[test]
fn cancel_fans_out_to_a_hundred_thousand_descendants() {
    let root = Context::background().with_cancel();
    let mut keep = Vec::with_capacity(100_000);
    for _ in 0..1000 {
        let mid = root.with_cancel();
        for _ in 0..99 {
            keep.push(mid.with_cancel());
        }
        keep.push(mid);
    }
    root.cancel();
    assert!(
        keep.iter()
            .all(|ctx| ctx.err() == Some(ContextError::Canceled))
    );
}

#[test]
fn children_created_while_the_parent_is_cancelled_all_end_up_done() {
    for _ in 0..200 {
        let parent = Context::background().with_cancel();
        let start = Arc::new(Barrier::new(3));
        let makers: Vec<_> = (0..2)
            .map(|_| {
                let (parent, start) = (parent.clone(), start.clone());
                thread::spawn(move || {
                    start.wait();
                    (0..200).map(|_| parent.with_cancel()).collect::<Vec<_>>()
                })
            })
            .collect();
        start.wait();
        parent.cancel();
        for maker in makers {
            for child in maker.join().unwrap() {
                assert_eq!(child.err(), Some(ContextError::Canceled));
            }
        }
        assert_eq!(parent.children(), 0);
    }
}

#[test]
fn concurrent_cancels_of_parent_and_children_leave_everything_done_and_detached() {
    for _ in 0..200 {
        let root = Context::background().with_cancel();
        let mid_guard = root.with_cancel();
        let mid = mid_guard.context();
        let guards: Vec<_> = (0..50).map(|_| mid.with_timeout(LONG)).collect();
        let contexts: Vec<Context> = guards.iter().map(|g| g.context()).collect();
        let start = Arc::new(Barrier::new(3));
        let s1 = start.clone();
        let t1 = thread::spawn(move || {
            s1.wait();
            drop(guards);
        });
        let s2 = start.clone();
        let t2 = thread::spawn(move || {
            s2.wait();
            mid_guard.cancel();
        });
        start.wait();
        t1.join().unwrap();
        t2.join().unwrap();
        assert!(contexts.iter().all(Context::is_done));
        assert!(mid.is_done());
        assert_eq!(mid.children(), 0);
        assert_eq!(root.children(), 0);
        root.cancel();
    }
}

#[test]
fn deadlines_are_fired_by_one_shared_named_timer_thread() {
    let leaks = leak::track();
    let root = Context::background().with_cancel();
    let children: Vec<_> = (0..1000)
        .map(|i| root.with_timeout(Duration::from_millis(5 + i % 20)))
        .collect();
    let timers = leak::live_threads()
        .into_iter()
        .filter(|t| t.name == "quiesce-timer")
        .count();
    assert_eq!(
        timers, 1,
        "one timer thread, whatever the number of deadlines"
    );
    for ctx in &children {
        assert!(!ctx.done().recv_timeout(LONG).unwrap_err().is_timeout());
        assert_eq!(ctx.err(), Some(ContextError::DeadlineExceeded));
    }
    // The timer is process-wide: no tracker counts it as this test's leak.
    leaks.assert_none();
}

#[test]
fn context_and_guard_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Context>();
    assert_send_sync::<quiesce::CancelGuard>();
    assert_send_sync::<quiesce::OnCancel>();
}

#[test]
fn stress_many_threads_creating_and_cancelling_under_one_root() {
    let root = Context::background().with_timeout(LONG);
    let done_count = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..8)
        .map(|t| {
            let (root, done_count) = (root.clone(), done_count.clone());
            thread::spawn(move || {
                for i in 0..20_000 {
                    let ctx = if (i + t) % 3 == 0 {
                        root.with_timeout(Duration::from_secs(30))
                    } else {
                        root.with_cancel()
                    };
                    let grand = ctx.with_cancel();
                    drop(ctx);
                    if grand.is_done() {
                        done_count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(done_count.load(Ordering::Relaxed), 8 * 20_000);
    assert_eq!(root.children(), 0);
    root.cancel();
}

#[test]
fn a_child_is_never_done_before_its_parent() {
    // The parent's deadline has passed but its timer may not have fired
    // yet: a child made now must not be done while the parent is live.
    for _ in 0..2000 {
        let parent = Context::background().with_timeout(Duration::from_micros(50));
        let child = parent.with_timeout(LONG);
        if child.is_done() {
            assert!(parent.is_done(), "a child done before its parent");
        }
    }
}

/// issue 17: `with_cancel`/`with_timeout`/`with_deadline` return one value,
/// the context that owns its cancellation (Go's `ctx, _ :=` habit does not
/// compile any more: see the `compile_fail` doctests on `with_timeout` and
/// `CancelGuard`). What each way of binding it does, as documented: a name
/// (also `_name`) keeps the context live to the end of its scope; `let _ =`
/// and a temporary drop it, and so cancel it, at once.
#[test]
fn a_named_binding_lives_to_the_end_of_its_scope_and_let_underscore_cancels_at_once() {
    let root = Context::background().with_cancel();

    let watcher = {
        let ctx = root.with_timeout(LONG);
        let watcher = ctx.context();
        drop(ctx.context()); // a plain context cancels nothing when dropped
        assert_eq!(watcher.err(), None);
        assert_eq!(root.children(), 1);
        watcher
    }; // `ctx` is dropped here, not before
    assert_eq!(watcher.err(), Some(ContextError::Canceled));
    assert_eq!(root.children(), 0, "the cancelled child is detached");

    let watcher = {
        let _ctx = root.with_deadline(Instant::now() + LONG);
        assert_eq!(root.children(), 1, "`_ctx` is a binding: it lives on");
        let only = root.with_cancel(); // the same for every constructor
        assert_eq!(root.children(), 2);
        only.context()
    };
    assert!(watcher.is_done());
    assert_eq!(root.children(), 0);

    let _ = root.with_timeout(LONG); // dropped at once: cancelled, detached
    assert_eq!(root.children(), 0);
    let _ = root.with_cancel();
    assert_eq!(root.children(), 0);

    let from_a_temporary = root.with_cancel().context(); // the guard is dropped
    assert_eq!(from_a_temporary.err(), Some(ContextError::Canceled));
    assert!(!root.is_done(), "none of this touches the parent");
}
