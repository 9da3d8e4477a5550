//! Counters and Shutdown/Done contracts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, tick};
use quiesce::Counters;

const LONG: Duration = Duration::from_secs(60);

#[test]
fn counts_per_key_and_in_total() {
    let c = Counters::new();
    assert!(c.is_empty());
    c.add("SITE-01".to_string(), 2);
    c.add("SITE-02".to_string(), 1);
    c.add("SITE-01".to_string(), 1);
    assert_eq!(c.get("SITE-01"), 3);
    assert_eq!(c.get("SITE-99"), 0);
    assert_eq!(c.total(), 4);
    assert_eq!(c.len(), 2);
    let snap = c.snapshot();
    assert_eq!(snap.total, 4);
    assert_eq!(
        snap.sorted(),
        vec![(&"SITE-01".to_string(), 3), (&"SITE-02".to_string(), 1)]
    );
}

#[test]
fn counts_saturate_instead_of_overflowing() {
    let c: Counters<&str> = [("a", u64::MAX)].into_iter().collect();
    c.add("a", 5);
    c.add("b", 1);
    assert_eq!(c.get("a"), u64::MAX);
    assert_eq!(c.total(), u64::MAX);
}

#[test]
fn snapshots_are_consistent_under_concurrent_writers() {
    let counters = Arc::new(Counters::new());
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let counters = counters.clone();
            thread::spawn(move || {
                for i in 0..20_000u64 {
                    // A batch moves the total by 3 across two keys at once.
                    counters.add_all([
                        (format!("site-{}", (w + i) % 7), 1),
                        (format!("site-{}", i % 5), 2),
                    ]);
                }
            })
        })
        .collect();
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (counters, stop) = (counters.clone(), stop.clone());
            thread::spawn(move || {
                let mut seen = 0;
                while !stop.load(Ordering::SeqCst) {
                    let snap = counters.snapshot();
                    assert_eq!(snap.counts.values().sum::<u64>(), snap.total);
                    assert_eq!(snap.total % 3, 0, "a batch is seen whole or not at all");
                    seen += 1;
                }
                seen
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    assert_eq!(counters.total(), 4 * 20_000 * 3);
}

#[test]
fn hundred_sites_times_ten_enrollments_is_exactly_a_thousand() {
    let counters = Arc::new(Counters::new());
    let handles: Vec<_> = (0..100)
        .map(|site| {
            let counters = counters.clone();
            thread::spawn(move || {
                for _ in 0..10 {
                    counters.add(format!("SITE-{site:03}"), 1);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(counters.total(), 1000);
    assert!(counters.snapshot().counts.values().all(|&n| n == 10));
}

#[test]
fn fire_wakes_every_waiter_in_select() {
    let (trigger, done) = quiesce::shutdown();
    let waiters: Vec<_> = (0..8)
        .map(|_| {
            let done = done.clone();
            thread::spawn(move || {
                let ticker = tick(Duration::from_millis(1));
                let mut ticks = 0u64;
                loop {
                    select! {
                        recv(ticker) -> _ => ticks += 1,
                        recv(done.channel()) -> _ => return ticks,
                        default(LONG) => panic!("never woken"),
                    }
                }
            })
        })
        .collect();
    assert!(!done.is_fired());
    trigger.fire();
    trigger.fire(); // idempotent
    assert!(trigger.is_fired());
    for w in waiters {
        w.join().unwrap();
    }
    // A waiter that starts late sees it too.
    assert!(done.wait_timeout(Duration::ZERO));
    done.wait();
    assert!(trigger.done().wait_deadline(Instant::now()));
}

#[test]
fn dropping_every_trigger_fires() {
    let (trigger, done) = quiesce::shutdown();
    let second = trigger.clone();
    drop(trigger);
    assert!(!done.wait_timeout(Duration::from_millis(1)));
    drop(second);
    assert!(done.wait_timeout(LONG));
    assert!(done.is_fired());
}

#[test]
fn wait_with_a_huge_timeout_does_not_panic() {
    let (trigger, done) = quiesce::shutdown();
    let t = thread::spawn(move || trigger.fire());
    assert!(done.wait_timeout(Duration::MAX));
    t.join().unwrap();
}
