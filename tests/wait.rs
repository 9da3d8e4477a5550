//! WaitGroup and Threads contracts (DESIGN.md, "WaitGroup / Threads").

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::bounded;
use quiesce::{Context, ContextError, Threads, WaitGroup, leak};

const LONG: Duration = Duration::from_secs(60);

#[test]
fn wait_returns_once_every_guard_is_dropped() {
    let wg = WaitGroup::new();
    let finished = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let guard = wg.add();
            let finished = finished.clone();
            thread::spawn(move || {
                let _guard = guard;
                thread::sleep(Duration::from_millis(2));
                finished.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    wg.wait();
    assert_eq!(finished.load(Ordering::SeqCst), 8);
    assert_eq!(wg.count(), 0);
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn an_empty_group_does_not_block() {
    let wg = WaitGroup::new();
    wg.wait();
    assert!(wg.wait_timeout(Duration::ZERO));
    assert!(wg.wait_deadline(Instant::now() - Duration::from_secs(1)));
    assert_eq!(wg.wait_ctx(&Context::background()), Ok(()));
}

#[test]
fn wait_timeout_gives_up_while_work_is_outstanding() {
    let wg = WaitGroup::new();
    let guard = wg.add();
    assert!(!wg.wait_timeout(Duration::from_millis(5)));
    assert!(!wg.wait_deadline(Instant::now() - Duration::from_secs(1)));
    assert_eq!(wg.count(), 1);
    drop(guard);
    assert!(wg.wait_timeout(Duration::ZERO));
}

#[test]
fn a_huge_timeout_waits_for_the_work() {
    let wg = WaitGroup::new();
    let guard = wg.add();
    let t = thread::spawn(move || drop(guard));
    assert!(wg.wait_timeout(Duration::MAX));
    t.join().unwrap();
}

#[test]
fn a_guard_held_by_a_panicking_thread_still_counts_done() {
    let wg = WaitGroup::new();
    let guard = wg.add();
    let t = thread::spawn(move || {
        let _guard = guard;
        panic!("report parser crashed");
    });
    assert!(t.join().is_err());
    assert!(wg.wait_timeout(LONG));
    assert_eq!(wg.count(), 0);
}

#[test]
fn wait_ctx_stops_waiting_when_the_context_is_done() {
    let leaks = leak::track();
    let wg = WaitGroup::new();
    let _busy = wg.add();
    let ctx = Context::background().with_timeout(Duration::from_millis(10));
    assert_eq!(wg.wait_ctx(&ctx), Err(ContextError::DeadlineExceeded));

    let cancel = Context::background().with_cancel();
    let ctx = cancel.context();
    let start = Arc::new(Barrier::new(2));
    let s = start.clone();
    let canceller = thread::spawn(move || {
        s.wait();
        drop(cancel);
    });
    start.wait();
    assert_eq!(wg.wait_ctx(&ctx), Err(ContextError::Canceled));
    canceller.join().unwrap();
    leaks.assert_none();
}

#[test]
fn wait_ctx_returns_ok_when_work_finishes_first() {
    let wg = WaitGroup::new();
    let guard = wg.add();
    let ctx = Context::background().with_cancel();
    let t = thread::spawn(move || drop(guard));
    assert_eq!(wg.wait_ctx(&ctx), Ok(()));
    t.join().unwrap();
}

#[test]
fn stress_many_adders_and_waiters() {
    for _ in 0..50 {
        let wg = WaitGroup::new();
        let count = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        for _ in 0..16 {
            let guard = wg.add();
            let count = count.clone();
            let wg2 = wg.clone();
            handles.push(thread::spawn(move || {
                let inner: Vec<_> = (0..10).map(|_| wg2.add()).collect();
                count.fetch_add(1, Ordering::SeqCst);
                drop(inner);
                drop(guard);
            }));
        }
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let wg = wg.clone();
                thread::spawn(move || wg.wait_timeout(LONG))
            })
            .collect();
        assert!(wg.wait_timeout(LONG));
        assert_eq!(count.load(Ordering::SeqCst), 16);
        for w in waiters {
            assert!(w.join().unwrap());
        }
        for h in handles {
            h.join().unwrap();
        }
    }
}

#[test]
fn threads_report_results_and_panics_by_name() {
    let leaks = leak::track();
    let mut threads = Threads::new(&Context::background());
    threads.spawn("ok", |_ctx| 7).unwrap();
    threads
        .spawn("crash", |_ctx| -> i32 { panic!("bad row 12") })
        .unwrap();
    let report = threads.join_timeout(LONG);
    assert!(report.running.is_empty());
    assert_eq!(report.finished.len(), 2);
    let ok = report.finished.iter().find(|f| f.name == "ok").unwrap();
    assert_eq!(ok.result.as_ref().copied().unwrap(), 7);
    let crash = report.finished.iter().find(|f| f.name == "crash").unwrap();
    assert_eq!(crash.result.as_ref().unwrap_err().message(), "bad row 12");
    assert!(threads.is_empty());
    leaks.assert_none();
}

#[test]
fn threads_get_the_names_they_were_given() {
    let leaks = leak::track();
    let mut threads = Threads::new(&Context::background());
    threads
        .spawn("ehr-sync", |_ctx| {
            thread::current().name().map(str::to_string)
        })
        .unwrap();
    let report = threads.join_timeout(LONG);
    assert_eq!(
        report.finished[0].result.as_ref().unwrap().as_deref(),
        Some("ehr-sync")
    );
    leaks.assert_none();
}

#[test]
fn join_deadline_names_the_threads_still_running_and_keeps_them() {
    let leaks = leak::track();
    let (release_tx, release_rx) = bounded::<()>(0);
    let mut threads = Threads::new(&Context::background());
    threads.spawn("quick", |_ctx| ()).unwrap();
    threads
        .spawn("stuck", move |_ctx| {
            // Ignores its context; only the test releases it.
            let _ = release_rx.recv_timeout(LONG);
        })
        .unwrap();

    let report = threads.shutdown_timeout(Duration::from_millis(20));
    assert_eq!(report.finished.len(), 1);
    assert_eq!(report.finished[0].name, "quick");
    assert_eq!(report.running.len(), 1);
    assert_eq!(report.running[0].name, "stuck");
    assert!(report.running[0].age > Duration::ZERO);
    assert_eq!(threads.len(), 1, "a running thread stays owned");
    assert_eq!(threads.running()[0].name, "stuck");
    assert_eq!(leaks.live().len(), 1);

    release_tx.send(()).unwrap();
    let report = threads.join_timeout(LONG);
    assert_eq!(report.finished.len(), 1);
    assert_eq!(report.finished[0].name, "stuck");
    assert!(report.running.is_empty());
    leaks.assert_none();
}

#[test]
fn shutdown_cancels_the_shared_context() {
    let leaks = leak::track();
    let parent = Context::background().with_cancel();
    let mut threads = Threads::new(&parent);
    for i in 0..4 {
        threads
            .spawn(format!("ticker-{i}"), |ctx| {
                let mut ticks = 0u64;
                while ctx.sleep(Duration::from_millis(1)).is_ok() {
                    ticks += 1;
                }
                (ticks, ctx.err())
            })
            .unwrap();
    }
    let report = threads.shutdown_timeout(LONG);
    assert!(report.running.is_empty());
    for f in report.finished {
        assert_eq!(f.result.unwrap().1, Some(ContextError::Canceled));
    }
    assert!(
        !parent.is_done(),
        "the parent is not cancelled by its Threads"
    );
    leaks.assert_none();
}

#[test]
fn a_parent_cancel_reaches_the_threads() {
    let leaks = leak::track();
    let parent = Context::background().with_cancel();
    let mut threads = Threads::new(&parent);
    threads.spawn("waits", |ctx| ctx.sleep(LONG)).unwrap();
    parent.cancel();
    let report = threads.join_timeout(LONG);
    assert_eq!(
        report.finished[0].result.as_ref().unwrap(),
        &Err(ContextError::Canceled)
    );
    leaks.assert_none();
}

#[test]
fn dropping_threads_cancels_and_joins() {
    let leaks = leak::track();
    let exited = Arc::new(AtomicUsize::new(0));
    {
        let mut threads = Threads::<()>::new(&Context::background());
        for i in 0..3 {
            let exited = exited.clone();
            threads
                .spawn(format!("bg-{i}"), move |ctx| {
                    let _ = ctx.sleep(LONG);
                    exited.fetch_add(1, Ordering::SeqCst);
                })
                .unwrap();
        }
    }
    assert_eq!(exited.load(Ordering::SeqCst), 3);
    leaks.assert_none();
}

#[test]
fn stress_many_threads_joined_in_batches() {
    let leaks = leak::track();
    let mut threads = Threads::new(&Context::background());
    for round in 0..10 {
        for i in 0..20 {
            threads
                .spawn(format!("r{round}-t{i}"), move |_ctx| round * 100 + i)
                .unwrap();
        }
        let report = threads.join_timeout(LONG);
        assert!(report.running.is_empty());
        let mut got: Vec<_> = report
            .finished
            .into_iter()
            .map(|f| f.result.unwrap())
            .collect();
        got.sort();
        assert_eq!(got, (0..20).map(|i| round * 100 + i).collect::<Vec<_>>());
    }
    leaks.assert_none();
}

/// Issue 17: `WaitGroup::spawn`, Go 1.25's `wg.Go`: a named thread,
/// counted by the group and seen by the leak checker until its code ends.
#[test]
fn a_spawned_thread_is_named_counted_and_tracked_until_it_ends() {
    let leaks = leak::track();
    let wg = WaitGroup::new();
    let (release, gate) = bounded::<()>(0);
    let handle = wg
        .spawn("export-1", move || {
            let _ = gate.recv_timeout(LONG);
            thread::current().name().map(str::to_string)
        })
        .unwrap();
    assert_eq!(wg.count(), 1);
    assert!(!wg.wait_timeout(Duration::from_millis(5)), "still counted");
    assert!(!handle.is_finished());
    let running = leaks.check(Duration::ZERO).unwrap_err();
    assert!(running.to_string().contains("export-1"), "{running}");
    drop(release);
    wg.wait();
    assert!(
        handle.is_finished(),
        "the result is in before the count drops"
    );
    assert_eq!(handle.join(), Ok(Some("export-1".to_string())));
    leaks.assert_none();
}

#[test]
fn a_spawned_thread_that_panics_counts_done_and_hands_back_the_panic() {
    let leaks = leak::track();
    let wg = WaitGroup::new();
    let handles: Vec<_> = (0..4u32)
        .map(|i| {
            wg.spawn(format!("part-{i}"), move || {
                assert!(i != 2, "part {i} is corrupt");
                i * 10
            })
            .unwrap()
        })
        .collect();
    assert!(wg.wait_timeout(LONG));
    // Every handle has its result once the wait returns.
    assert!(handles.iter().all(quiesce::JobHandle::is_finished));
    let results: Vec<_> = handles.iter().map(quiesce::JobHandle::join).collect();
    assert_eq!(results[0], Ok(0));
    assert_eq!(results[3], Ok(30));
    match &results[2] {
        Err(quiesce::JobError::Panicked(p)) => assert_eq!(p.message(), "part 2 is corrupt"),
        other => panic!("{other:?}"),
    }
    leaks.assert_none();
}

/// Invariant 5: `WaitGroup::spawn` detaches nothing. Once a wait saw the
/// count at zero, the group's threads have been joined: the leak checker
/// sees none of them, with no grace period.
#[test]
fn a_wait_joins_the_threads_the_group_spawned() {
    let leaks = leak::track();
    let wg = WaitGroup::new();
    let handles: Vec<_> = (0..32)
        .map(|i| wg.spawn(format!("joined-{i}"), move || i * 2).unwrap())
        .collect();
    wg.wait();
    assert_eq!(leaks.check(Duration::ZERO), Ok(()));
    let sum: u32 = handles.iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(sum, (0..32).map(|i| i * 2).sum::<u32>());
    // The bounded forms join too.
    let more = wg.spawn("joined-late", || ()).unwrap();
    assert!(wg.wait_timeout(Duration::from_secs(30)));
    assert_eq!(leaks.check(Duration::ZERO), Ok(()));
    assert_eq!(more.join(), Ok(()));
    leaks.assert_none();
}
