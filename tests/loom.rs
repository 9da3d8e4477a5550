//! loom models of the state machines quiesce builds on its own locks and
//! atomics: the Context tree, WaitGroup, Semaphore and the Pool.
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
//!
//! # What the pool models reach, and what they do not
//!
//! The pool's own state goes through the shim: the intake lock, `closed`,
//! `draining`, the limits word, the worker and idle counts, the stats.
//! Its queue is a crossbeam channel, which loom does not model: its
//! non-blocking operations (`try_send`, `try_recv`, `is_empty`, `try_iter`)
//! run for real and count as one step each; a *blocking* one (a `Select`
//! that parks the thread) would park it where loom cannot see it, and the
//! model would hang. So:
//!
//! - Under loom no worker thread is started (`pool/worker.rs`, `start`):
//!   the worker loop waits in a `Select`. A worker's place in the count is
//!   still taken, and a model plays the worker's part through hidden
//!   `Pool::loom_*` hooks that run the worker's own code (the idle exit).
//! - A submit is modelled only while the queue has room (it never reaches
//!   the `Select` that waits for room or for the closed bell), and a stop
//!   only with no worker thread to join (its joins return at once).
//! - A job accepted by these models is never run (no worker takes it), so
//!   "run or handed back" is checked as "refused, or handed back in the
//!   stop's report": exactly one of the two. The count of jobs not yet
//!   over (`busy`, invariant 10) is zero after each such stop, as
//!   `wait_idle_deadline` sees it (a lost decrement would have the model
//!   wait for a notification that never comes: a deadlock loom reports).
//! - The elastic handshake (invariant 6 in `pool/mod.rs`) goes partly through the
//!   queue. loom sees the counts, not the channel's atomics, which in its
//!   one-thread-at-a-time runs behave as sequentially consistent. So the
//!   model checks the order of the steps on each side (leave the count,
//!   then look at the queue; queue the job, then look at the counts), not
//!   the memory orderings that make each side's write visible to the
//!   other: those rest on the pool's `SeqCst` fences, and the model passes
//!   with or without them.
#![cfg(quiesce_loom)]

use loom::sync::Arc;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;
use quiesce::{AcquireError, Context, ContextError, Pool, Semaphore, WaitGroup, pool::Refused};

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
        let guard = Context::background().with_cancel();
        let parent = guard.context();
        let p = parent.clone();
        let maker = thread::spawn(move || p.with_cancel());
        guard.cancel();
        let child_guard = maker.join().unwrap();
        let child = child_guard.context();
        assert_eq!(child.err(), Some(ContextError::Canceled));
        assert_eq!(parent.children(), 0);
    });
}

#[test]
fn parent_and_child_cancelled_at_once_end_done_and_detached() {
    model(|| {
        let root_guard = Context::background().with_cancel();
        let root = root_guard.context();
        let parent_guard = root.with_cancel();
        let parent = parent_guard.context();
        let child_guard = parent.with_cancel();
        let child = child_guard.context();
        let gg = child.with_cancel();
        let grandchild = gg.context();
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
        let root_guard = Context::background().with_cancel();
        let root = root_guard.context();
        let ga = root.with_cancel();
        let _a = ga.context();
        let gb = root.with_cancel();
        let _b = gb.context();
        let gc = root.with_cancel();
        let c = gc.context();
        let gd = root.with_cancel();
        let d = gd.context();
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
        let guard = Context::background().with_cancel();
        let ctx = guard.context();
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
        let cancel = Context::background().with_cancel();
        let ctx = cancel.context();
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
        let cancel = Context::background().with_cancel();
        let ctx = cancel.context();
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
        let cancel = Context::background().with_cancel();
        let ctx = cancel.context();
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
        let cancel = Context::background().with_cancel();
        let ctx = cancel.context();
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

/// A job that counts its runs in `ran`. No worker runs jobs under loom:
/// a model accounts for its job by the submit's error or by the report.
fn counting_job(ran: &Arc<AtomicUsize>) -> impl FnOnce(&Context) + Send + 'static {
    let ran = ran.clone();
    move |_ctx| {
        ran.fetch_add(1, Ordering::SeqCst);
    }
}

// Checked against a bug: the intake lock taken only after the look at
// `closed` in `submit_job` (the job slips into the queue after the report
// emptied it: lost).
#[test]
fn a_job_submitted_during_a_shutdown_is_refused_or_handed_back_once() {
    model(|| {
        let pool = Arc::new(Pool::builder().workers(1).queue(2).build().unwrap());
        let ran = Arc::new(AtomicUsize::new(0));
        let submitter = {
            let (pool, job) = (pool.clone(), counting_job(&ran));
            thread::spawn(move || pool.try_submit(job).map_err(|e| e.reason))
        };
        let report = pool.shutdown_timeout(std::time::Duration::from_secs(60));
        let submitted = submitter.join().unwrap();
        match submitted {
            Ok(()) => assert_eq!(report.never_started.len(), 1, "accepted, then lost"),
            Err(reason) => {
                assert_eq!(reason, Refused::Closed);
                assert!(report.never_started.is_empty());
            }
        }
        assert_eq!(pool.queued(), 0, "a job entered the queue after the report");
        // Every accepted job is over, the refused one never counted (pool
        // invariant 10).
        assert!(pool.wait_idle_deadline(std::time::Instant::now()));
        assert_eq!(ran.load(Ordering::SeqCst), 0);
    });
}

// Checked against a bug: a stop that does not wait out the submits under
// way (no exclusive take of the intake lock in `close_intake`).
#[test]
fn a_job_submitted_during_an_abort_is_refused_or_handed_back_once() {
    model(|| {
        let pool = Arc::new(Pool::builder().workers(1).queue(2).build().unwrap());
        let ran = Arc::new(AtomicUsize::new(0));
        let submitter = {
            let (pool, job) = (pool.clone(), counting_job(&ran));
            thread::spawn(move || pool.submit(job).map_err(|e| e.reason))
        };
        let report = pool.abort();
        let submitted = submitter.join().unwrap();
        match submitted {
            Ok(()) => assert_eq!(report.never_started.len(), 1, "accepted, then lost"),
            Err(reason) => {
                assert_eq!(reason, Refused::Closed);
                assert!(report.never_started.is_empty());
            }
        }
        assert_eq!(pool.queued(), 0, "a job entered the queue after the report");
        assert!(pool.is_closed());
        assert!(pool.wait_idle_deadline(std::time::Instant::now())); // invariant 10
    });
}

// Checked against a bug: the idle worker looking at the queue before it
// leaves the count (the submitter still counts it and starts nobody; the
// worker then leaves a queued job behind).
#[test]
fn an_idle_worker_leaving_never_strands_a_job_submitted_meanwhile() {
    model(|| {
        let pool = Arc::new(Pool::builder().elastic(0, 1).queue(2).build().unwrap());
        assert!(pool.loom_add_worker()); // one worker, above `min`, idle
        let ran = Arc::new(AtomicUsize::new(0));
        let submitter = {
            let (pool, job) = (pool.clone(), counting_job(&ran));
            thread::spawn(move || pool.try_submit(job).map_err(|e| e.reason))
        };
        let left = pool.loom_idle_timeout(); // its idle wait timed out
        assert_eq!(submitter.join().unwrap(), Ok(()));
        // The job is queued: the worker stayed, or the submitter took the
        // place it left (a new worker).
        assert_eq!(pool.queued(), 1);
        assert_eq!(
            pool.workers(),
            1,
            "a queued job with no worker (left: {left})"
        );
    });
}

// Checked against a bug: resize reading and writing `min` and `max` apart
// (the code before the limits word: `max` stored, then `min` decided from
// a second look).
#[test]
fn concurrent_resizes_keep_min_at_most_max() {
    model(|| {
        let pool = Arc::new(Pool::builder().workers(2).build().unwrap());
        let resizers: Vec<_> = [3, 1]
            .into_iter()
            .map(|n| {
                let pool = pool.clone();
                thread::spawn(move || pool.resize(n).unwrap())
            })
            .collect();
        for r in resizers {
            r.join().unwrap();
        }
        let (min, max) = pool.loom_limits();
        assert!(min <= max, "min {min} > max {max}");
        assert_eq!(min, max, "a fixed pool stays fixed");
        assert!(max == 3 || max == 1);
        assert!(pool.workers() >= min); // the missing ones were started
    });
}
