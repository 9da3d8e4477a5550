//! Semaphore contract (DESIGN.md, "Semaphore").

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use quiesce::{AcquireError, Context, ContextError, Semaphore, leak};

const LONG: Duration = Duration::from_secs(60);

#[test]
fn permits_are_counted_and_come_back_on_drop() {
    let sem = Semaphore::new(3);
    assert_eq!(sem.capacity(), 3);
    let a = sem.acquire().unwrap();
    let b = sem.acquire_many(2).unwrap();
    assert_eq!(b.count(), 2);
    assert_eq!(sem.available(), 0);
    assert_eq!(sem.try_acquire().unwrap_err(), AcquireError::WouldBlock);
    drop(a);
    assert_eq!(sem.available(), 1);
    drop(b);
    assert_eq!(sem.available(), 3);
}

#[test]
fn asking_for_more_than_exists_is_an_immediate_error() {
    let sem = Semaphore::new(2);
    let too_many = AcquireError::TooMany {
        requested: 3,
        capacity: 2,
    };
    assert_eq!(sem.acquire_many(3).unwrap_err(), too_many);
    assert_eq!(sem.try_acquire_many(3).unwrap_err(), too_many);
    assert_eq!(
        sem.acquire_many_ctx(3, &Context::background()).unwrap_err(),
        too_many
    );
    let empty = Semaphore::new(0);
    assert!(matches!(empty.acquire(), Err(AcquireError::TooMany { .. })));
    assert!(matches!(
        empty.acquire_timeout(LONG),
        Err(AcquireError::TooMany { .. })
    ));
    assert!(too_many.to_string().contains("asked for 3 permits"));
}

#[test]
fn zero_permits_are_granted_at_once() {
    let sem = Semaphore::new(1);
    let _all = sem.acquire().unwrap();
    assert_eq!(sem.try_acquire_many(0).unwrap().count(), 0);
}

#[test]
fn acquire_timeout_and_deadline_give_up() {
    let sem = Semaphore::new(1);
    let _held = sem.acquire().unwrap();
    assert_eq!(
        sem.acquire_timeout(Duration::from_millis(5)).unwrap_err(),
        AcquireError::Timeout
    );
    assert_eq!(
        sem.acquire_timeout(Duration::ZERO).unwrap_err(),
        AcquireError::Timeout
    );
    assert_eq!(
        sem.acquire_deadline(Instant::now() - Duration::from_secs(1))
            .unwrap_err(),
        AcquireError::Timeout
    );
    assert_eq!(sem.available(), 0);
}

#[test]
fn a_huge_timeout_waits_for_the_permit() {
    let sem = Semaphore::new(1);
    let held = sem.acquire().unwrap();
    let t = thread::spawn(move || drop(held));
    assert!(sem.acquire_timeout(Duration::MAX).is_ok());
    t.join().unwrap();
}

#[test]
fn a_done_context_fails_the_acquire_even_with_permits_free() {
    let sem = Semaphore::new(5);
    let ctx = Context::background().with_cancel();
    ctx.cancel();
    assert_eq!(
        sem.acquire_ctx(&ctx).unwrap_err(),
        AcquireError::Done(ContextError::Canceled)
    );
    assert_eq!(sem.available(), 5);
}

#[test]
fn acquire_ctx_gives_up_when_the_context_is_done() {
    let leaks = leak::track();
    let sem = Semaphore::new(1);
    let _held = sem.acquire().unwrap();
    let ctx = Context::background().with_timeout(Duration::from_millis(10));
    assert_eq!(
        sem.acquire_ctx(&ctx).unwrap_err(),
        AcquireError::Done(ContextError::DeadlineExceeded)
    );
    let ctx = Context::background().with_cancel();
    let waiter = {
        let (sem, ctx) = (sem.clone(), ctx.context());
        thread::spawn(move || sem.acquire_ctx(&ctx).map(|_| ()))
    };
    while sem.waiting() == 0 {
        thread::yield_now();
    }
    ctx.cancel();
    assert_eq!(
        waiter.join().unwrap(),
        Err(AcquireError::Done(ContextError::Canceled))
    );
    assert_eq!(sem.waiting(), 0, "a waiter that gives up leaves the queue");
    leaks.assert_none();
}

#[test]
fn permits_come_back_when_the_holder_panics() {
    let sem = Semaphore::new(2);
    let s = sem.clone();
    let t = thread::spawn(move || {
        let _permit = s.acquire_many(2).unwrap();
        panic!("scoring failed");
    });
    assert!(t.join().is_err());
    assert_eq!(sem.available(), 2);
    assert!(sem.try_acquire_many(2).is_ok());
}

#[test]
fn waiters_are_served_first_come_first_served() {
    let sem = Semaphore::new(4);
    let held = sem.acquire_many(4).unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    // Queued in this order: all four, two small ones, all four again.
    for (i, need) in [(0, 4), (1, 1), (2, 1), (3, 4)] {
        let (s, order) = (sem.clone(), order.clone());
        waiters.push(thread::spawn(move || {
            let permit = s.acquire_many(need).unwrap();
            order.lock().unwrap().push(i);
            // Hold briefly so later grants depend on this release.
            drop(permit);
        }));
        while sem.waiting() != i + 1 {
            thread::yield_now();
        }
    }
    drop(held);
    for w in waiters {
        w.join().unwrap();
    }
    let order = order.lock().unwrap().clone();
    assert_eq!(order.len(), 4);
    assert_eq!(
        order[0], 0,
        "the large head request is served first: {order:?}"
    );
    assert_eq!(
        order[3], 3,
        "the last large request waits for the small ones: {order:?}"
    );
    assert_eq!(sem.available(), 4);
}

#[test]
fn a_large_waiter_is_not_starved_by_a_stream_of_small_ones() {
    let sem = Semaphore::new(2);
    let first = sem.acquire().unwrap();
    let big = {
        let sem = sem.clone();
        thread::spawn(move || sem.acquire_many(2).map(|p| p.count()))
    };
    while sem.waiting() == 0 {
        thread::yield_now();
    }
    // One permit is free, but the head of the queue needs two: small
    // requests must queue behind it rather than take the free permit.
    assert_eq!(sem.available(), 1);
    assert_eq!(sem.try_acquire().unwrap_err(), AcquireError::WouldBlock);
    drop(first);
    assert_eq!(big.join().unwrap(), Ok(2));
}

#[test]
fn a_head_waiter_giving_up_lets_the_next_one_in() {
    let sem = Semaphore::new(2);
    let one = sem.acquire().unwrap();
    let ctx = Context::background().with_cancel();
    let big = {
        let (sem, ctx) = (sem.clone(), ctx.context());
        thread::spawn(move || sem.acquire_many_ctx(2, &ctx).map(|_| ()))
    };
    while sem.waiting() == 0 {
        thread::yield_now();
    }
    let small = {
        let sem = sem.clone();
        thread::spawn(move || sem.acquire_timeout(LONG).map(|p| p.count()))
    };
    while sem.waiting() != 2 {
        thread::yield_now();
    }
    ctx.cancel();
    assert!(big.join().unwrap().is_err());
    assert_eq!(small.join().unwrap(), Ok(1));
    drop(one);
    assert_eq!(sem.available(), 2);
}

#[test]
fn stress_concurrency_never_exceeds_the_limit() {
    let leaks = leak::track();
    let sem = Semaphore::new(3);
    let running = Arc::new(AtomicUsize::new(0));
    let max_seen = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..16)
        .map(|t| {
            let (sem, running, max_seen) = (sem.clone(), running.clone(), max_seen.clone());
            thread::spawn(move || {
                for i in 0..500 {
                    let permit = match (t + i) % 4 {
                        0 => sem.acquire().unwrap(),
                        1 => sem.acquire_timeout(LONG).unwrap(),
                        2 => sem.acquire_ctx(&Context::background()).unwrap(),
                        _ => loop {
                            match sem.try_acquire() {
                                Ok(p) => break p,
                                Err(_) => thread::yield_now(),
                            }
                        },
                    };
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    max_seen.fetch_max(now, Ordering::SeqCst);
                    running.fetch_sub(1, Ordering::SeqCst);
                    drop(permit);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert!(max_seen.load(Ordering::SeqCst) <= 3);
    assert_eq!(sem.available(), 3);
    leaks.assert_none();
}

#[test]
fn stress_mixed_sizes_with_timeouts_and_cancels_keep_the_count_right() {
    let sem = Semaphore::new(5);
    let in_use = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..12)
        .map(|t| {
            let (sem, in_use) = (sem.clone(), in_use.clone());
            thread::spawn(move || {
                for i in 0..300usize {
                    let need = 1 + (t + i) % 5;
                    let result = if i % 3 == 0 {
                        let ctx = Context::background().with_timeout(Duration::from_micros(50));
                        sem.acquire_many_ctx(need, &ctx)
                    } else {
                        sem.acquire_many(need)
                    };
                    if let Ok(permit) = result {
                        let now = in_use.fetch_add(need, Ordering::SeqCst) + need;
                        assert!(now <= 5, "{now} permits in use");
                        in_use.fetch_sub(need, Ordering::SeqCst);
                        drop(permit);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(sem.available(), 5);
    assert_eq!(sem.waiting(), 0);
}
