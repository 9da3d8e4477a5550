//! Scope contract: borrowing, the limit, results and panics, cancellation.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::Duration;

use quiesce::{Context, ContextError, JobError, leak, scope};

const LONG: Duration = Duration::from_secs(60);

#[test]
fn jobs_borrow_from_the_callers_stack_and_return_values() {
    let leaks = leak::track();
    let reports: Vec<String> = (0..20).map(|i| format!("report-{i:02}")).collect();
    let mut lengths = scope(4, &Context::background(), |s| {
        let handles: Vec<_> = reports.iter().map(|r| s.spawn(move |_| r.len())).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    lengths.sort();
    assert_eq!(lengths, vec![9; 20]);
    // Mutable borrows of disjoint parts work too.
    let mut counts = vec![0u32; 8];
    scope(3, &Context::background(), |s| {
        for (i, c) in counts.iter_mut().enumerate() {
            s.spawn(move |_| *c = i as u32 * 10);
        }
    });
    assert_eq!(counts, vec![0, 10, 20, 30, 40, 50, 60, 70]);
    leaks.assert_none();
}

#[test]
fn the_limit_is_never_exceeded_and_is_reached() {
    let leaks = leak::track();
    for limit in [1, 2, 5] {
        let now = AtomicUsize::new(0);
        let max_seen = AtomicUsize::new(0);
        // `limit` jobs must be in at once for the barrier to open: the
        // limit is reached; the counter shows it is never passed.
        let barrier = Barrier::new(limit);
        scope(limit, &Context::background(), |s| {
            for i in 0..(limit * 6) {
                let (now, max_seen, barrier) = (&now, &max_seen, &barrier);
                s.spawn(move |_| {
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    max_seen.fetch_max(n, Ordering::SeqCst);
                    if i < limit {
                        barrier.wait();
                    }
                    thread::yield_now();
                    now.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        assert_eq!(max_seen.load(Ordering::SeqCst), limit);
    }
    leaks.assert_none();
}

#[test]
fn scope_returns_only_when_every_job_is_done() {
    let leaks = leak::track();
    let done = AtomicUsize::new(0);
    scope(2, &Context::background(), |s| {
        for _ in 0..10 {
            s.spawn(|_| {
                thread::sleep(Duration::from_millis(2));
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    assert_eq!(done.load(Ordering::SeqCst), 10);
    leaks.assert_none();
}

#[test]
fn a_panicking_job_is_returned_as_a_value_and_the_others_run() {
    let leaks = leak::track();
    let ran = AtomicUsize::new(0);
    let outcomes = scope(2, &Context::background(), |s| {
        let handles: Vec<_> = (0..6)
            .map(|i| {
                let ran = &ran;
                s.spawn(move |_| {
                    if i == 2 {
                        panic!("malformed row in file {i}");
                    }
                    ran.fetch_add(1, Ordering::SeqCst);
                    i
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join()).collect::<Vec<_>>()
    });
    assert_eq!(ran.load(Ordering::SeqCst), 5);
    match &outcomes[2] {
        Err(JobError::Panicked(p)) => assert_eq!(p.message(), "malformed row in file 2"),
        other => panic!("{other:?}"),
    }
    assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 5);
    leaks.assert_none();
}

#[test]
fn cancelling_the_context_skips_unstarted_jobs_and_reaches_running_ones() {
    let leaks = leak::track();
    let ctx = Context::background().with_cancel();
    let started = Barrier::new(3);
    let outcomes = scope(2, &ctx, |s| {
        let mut handles = Vec::new();
        for _ in 0..2 {
            let started = &started;
            handles.push(s.spawn(move |ctx| {
                started.wait();
                ctx.sleep(LONG)
            }));
        }
        for _ in 0..5 {
            handles.push(s.spawn(|_| Ok(())));
        }
        started.wait();
        // Both workers are busy; the five queued jobs have not started.
        ctx.cancel();
        handles.into_iter().map(|h| h.join()).collect::<Vec<_>>()
    });
    for running in &outcomes[..2] {
        assert_eq!(running, &Ok(Err(ContextError::Canceled)));
    }
    for queued in &outcomes[2..] {
        assert_eq!(queued, &Err(JobError::NotRun));
    }
    leaks.assert_none();
}

#[test]
fn a_deadline_on_the_scope_context_stops_the_work() {
    let leaks = leak::track();
    let ctx = Context::background().with_timeout(Duration::from_millis(20));
    let finished = AtomicUsize::new(0);
    let outcomes = scope(2, &ctx, |s| {
        let handles: Vec<_> = (0..10)
            .map(|_| {
                let finished = &finished;
                s.spawn(move |ctx| {
                    ctx.sleep(LONG)?;
                    finished.fetch_add(1, Ordering::SeqCst);
                    Ok::<(), ContextError>(())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join()).collect::<Vec<_>>()
    });
    assert_eq!(finished.load(Ordering::SeqCst), 0);
    for o in outcomes {
        assert!(
            o == Ok(Err(ContextError::DeadlineExceeded)) || o == Err(JobError::NotRun),
            "{o:?}"
        );
    }
    leaks.assert_none();
}

#[test]
fn a_panic_in_the_scope_closure_waits_for_jobs_then_resumes() {
    let leaks = leak::track();
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        scope(1, &Context::background(), |s| {
            let r = r.clone();
            s.spawn(move |_| {
                r.fetch_add(1, Ordering::SeqCst);
            });
            panic!("spawner failed");
        })
    }));
    let payload = caught.unwrap_err();
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"spawner failed"));
    // Every worker was joined before the panic reached us.
    leaks.assert_none();
    assert!(ran.load(Ordering::SeqCst) <= 1);
}

#[test]
fn workers_are_named_and_at_most_limit_are_started() {
    let leaks = leak::track();
    let names = Mutex::new(std::collections::BTreeSet::new());
    scope(3, &Context::background(), |s| {
        for _ in 0..30 {
            let names = &names;
            s.spawn(move |_| {
                let name = thread::current().name().unwrap().to_string();
                names.lock().unwrap().insert(name);
            });
        }
    });
    let names = names.into_inner().unwrap();
    assert!(!names.is_empty() && names.len() <= 3, "{names:?}");
    assert!(
        names.iter().all(|n| n.starts_with("quiesce-scope-")),
        "{names:?}"
    );
    leaks.assert_none();
}

#[test]
fn a_limit_of_zero_counts_as_one() {
    let leaks = leak::track();
    let total = scope(0, &Context::background(), |s| {
        let h: Vec<_> = (1..=4).map(|i| s.spawn(move |_| i)).collect();
        h.into_iter().map(|h| h.join().unwrap()).sum::<i32>()
    });
    assert_eq!(total, 10);
    leaks.assert_none();
}

#[test]
fn stress_many_small_scopes() {
    let leaks = leak::track();
    let data: Vec<u64> = (0..1000).collect();
    for limit in 1..=4 {
        for _ in 0..20 {
            let sum = scope(limit, &Context::background(), |s| {
                let handles: Vec<_> = data
                    .chunks(37)
                    .map(|c| s.spawn(move |_| c.iter().sum::<u64>()))
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).sum::<u64>()
            });
            assert_eq!(sum, 499_500);
        }
    }
    leaks.assert_none();
}
