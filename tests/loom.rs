//! loom models of the state machines quiesce builds on its own locks and
//! atomics: the Context tree, WaitGroup and Semaphore.
//!
//! Run with (as `.ci/run` does):
//!
//! ```text
//! RUSTFLAGS="--cfg quiesce_loom" LOOM_MAX_PREEMPTIONS=2 \
//!     cargo test --release --test loom
//! ```
//!
//! Under that cfg the crate's `sync` shim is loom's, so loom explores every
//! interleaving of these small programs. Deadlines are left out: loom does
//! not model time, and the timer thread is a real thread.
#![cfg(quiesce_loom)]

use loom::sync::Arc;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;
use quiesce::{AcquireError, Context, ContextError, Semaphore, WaitGroup};

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(2);
    }
    builder.check(f);
}

#[test]
fn a_child_made_while_the_parent_is_cancelled_is_never_missed() {
    model(|| {
        let (parent, guard) = Context::background().with_cancel();
        let p = parent.clone();
        let maker = thread::spawn(move || p.with_cancel());
        guard.cancel();
        let (child, _child_guard) = maker.join().unwrap();
        assert_eq!(child.err(), Some(ContextError::Canceled));
        assert_eq!(parent.children(), 0);
    });
}

#[test]
fn parent_and_child_cancelled_at_once_end_done_and_detached() {
    model(|| {
        let (root, _root_guard) = Context::background().with_cancel();
        let (parent, parent_guard) = root.with_cancel();
        let (child, child_guard) = parent.with_cancel();
        let (grandchild, _gg) = child.with_cancel();
        let t = thread::spawn(move || drop(child_guard));
        drop(parent_guard);
        t.join().unwrap();
        assert!(parent.is_done());
        assert!(child.is_done());
        assert!(grandchild.is_done());
        assert_eq!(parent.children(), 0);
        assert_eq!(child.children(), 0);
        assert_eq!(root.children(), 0);
    });
}

#[test]
fn siblings_detaching_at_once_keep_the_slots_right() {
    model(|| {
        let (root, root_guard) = Context::background().with_cancel();
        let (_a, ga) = root.with_cancel();
        let (_b, gb) = root.with_cancel();
        let (c, gc) = root.with_cancel();
        let (d, _gd) = root.with_cancel();
        let t = thread::spawn(move || drop(ga));
        drop(gb);
        t.join().unwrap();
        assert_eq!(root.children(), 2);
        // The survivors were moved in the parent's list: one detaches by
        // its slot, the other is still reached by the parent's cancel.
        drop(gc);
        assert!(c.is_done());
        assert_eq!(root.children(), 1);
        drop(root_guard);
        assert!(d.is_done());
        assert_eq!(root.children(), 0);
    });
}

#[test]
fn an_on_cancel_callback_runs_exactly_once_or_never_if_stopped() {
    model(|| {
        let (ctx, guard) = Context::background().with_cancel();
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let c = ctx.clone();
        let registrar = thread::spawn(move || {
            let hook = c.on_cancel(move || {
                r.fetch_add(1, Ordering::SeqCst);
            });
            hook.stop()
        });
        drop(guard);
        let stopped_before_running = registrar.join().unwrap();
        let n = runs.load(Ordering::SeqCst);
        if stopped_before_running {
            assert_eq!(n, 0);
        } else {
            assert_eq!(n, 1);
        }
    });
}

#[test]
fn wait_group_wait_returns_after_the_last_guard() {
    model(|| {
        let wg = WaitGroup::new();
        let done = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let guard = wg.add();
                let done = done.clone();
                thread::spawn(move || {
                    done.fetch_add(1, Ordering::SeqCst);
                    drop(guard);
                })
            })
            .collect();
        wg.wait();
        assert_eq!(done.load(Ordering::SeqCst), 2);
        for w in workers {
            w.join().unwrap();
        }
    });
}

#[test]
fn wait_group_wait_ctx_ends_on_cancel_or_on_zero() {
    model(|| {
        let wg = WaitGroup::new();
        let guard = wg.add();
        let (ctx, cancel) = Context::background().with_cancel();
        let worker = thread::spawn(move || drop(guard));
        let canceller = thread::spawn(move || drop(cancel));
        let result = wg.wait_ctx(&ctx);
        assert!(result.is_ok() || result == Err(ContextError::Canceled));
        worker.join().unwrap();
        canceller.join().unwrap();
        assert_eq!(wg.count(), 0);
    });
}

#[test]
fn wait_group_wait_ctx_is_woken_by_a_cancel_alone() {
    model(|| {
        let wg = WaitGroup::new();
        let _busy = wg.add();
        let (ctx, cancel) = Context::background().with_cancel();
        let canceller = thread::spawn(move || drop(cancel));
        assert_eq!(wg.wait_ctx(&ctx), Err(ContextError::Canceled));
        canceller.join().unwrap();
    });
}

#[test]
fn semaphore_never_grants_more_than_its_permits() {
    model(|| {
        let sem = Semaphore::new(1);
        let inside = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (sem, inside) = (sem.clone(), inside.clone());
                thread::spawn(move || {
                    let permit = sem.acquire().unwrap();
                    assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                    inside.fetch_sub(1, Ordering::SeqCst);
                    drop(permit);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(sem.available(), 1);
    });
}

#[test]
fn a_semaphore_waiter_cancelled_while_permits_come_back_loses_nothing() {
    model(|| {
        let sem = Semaphore::new(1);
        let held = sem.acquire().unwrap();
        let (ctx, cancel) = Context::background().with_cancel();
        let s = sem.clone();
        let waiter = thread::spawn(move || s.acquire_ctx(&ctx).map(|p| p.count()));
        let releaser = thread::spawn(move || drop(held));
        drop(cancel);
        let result = waiter.join().unwrap();
        releaser.join().unwrap();
        assert!(result == Ok(1) || result == Err(AcquireError::Done(ContextError::Canceled)));
        assert_eq!(sem.available(), 1);
        assert_eq!(sem.waiting(), 0);
    });
}

#[test]
fn a_large_head_waiter_giving_up_hands_permits_to_the_next() {
    model(|| {
        let sem = Semaphore::new(2);
        let held = sem.acquire().unwrap();
        let (ctx, cancel) = Context::background().with_cancel();
        let s1 = sem.clone();
        let big = thread::spawn(move || s1.acquire_many_ctx(2, &ctx).map(|p| p.count()));
        let s2 = sem.clone();
        let small = thread::spawn(move || s2.acquire().map(|p| p.count()));
        drop(cancel);
        // While `held` is held the big waiter can only give up, and when it
        // does, the small one behind it must get the free permit: nothing
        // else would ever wake it (loom reports the deadlock).
        assert_eq!(
            big.join().unwrap(),
            Err(AcquireError::Done(ContextError::Canceled))
        );
        assert_eq!(small.join().unwrap(), Ok(1));
        drop(held);
        assert_eq!(sem.available(), 2);
    });
}
