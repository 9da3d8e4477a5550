//! Pool contract (DESIGN.md, "Pool"; issue "Bounded concurrency").
//!
//! Every test ends with a leak check. Nothing asserts how fast anything
//! runs; where a test waits for a state it polls with a long bound.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, bounded};
use quiesce::{Context, ContextError, JobError, Pool, leak, pool::Refused};

const LONG: Duration = Duration::from_secs(60);

/// Polls `cond` until it holds, failing after a minute.
fn eventually(what: &str, cond: impl Fn() -> bool) {
    let give_up = Instant::now()
        + Duration::from_secs(std::env::var("EVENTUALLY_SECS").map_or(60, |s| s.parse().unwrap()));
    while !cond() {
        assert!(Instant::now() < give_up, "never happened: {what}");
        thread::sleep(Duration::from_millis(1));
    }
}

/// A job body that blocks until `gate` is closed or a message arrives,
/// ignoring its context.
fn blocker(gate: Receiver<()>) -> impl FnOnce(&Context) + Send + 'static {
    move |_ctx| {
        let _ = gate.recv_timeout(LONG);
    }
}

/// Submits `n` jobs that each count once in the returned counter.
fn submit_counted(pool: &Pool, n: usize) -> Arc<AtomicUsize> {
    let count = Arc::new(AtomicUsize::new(0));
    for _ in 0..n {
        let count = count.clone();
        pool.submit(move |_| {
            count.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    }
    count
}

#[test]
fn the_queue_bound_holds_and_refused_jobs_come_back() {
    let leaks = leak::track();
    let pool = Pool::builder().workers(1).queue(2).build().unwrap();
    let (gate_tx, gate) = bounded::<()>(0);
    pool.submit(blocker(gate.clone())).unwrap();
    eventually("the worker is busy", || pool.running() == 1);
    let ran = submit_counted(&pool, 2);
    assert_eq!(pool.queued(), 2);

    let r = ran.clone();
    let err = pool
        .try_submit(move |_| {
            r.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap_err();
    assert_eq!(err.reason, Refused::Full);
    // The refused job is intact and can still be run by the caller.
    err.into_job().run(&Context::background()).unwrap();
    assert_eq!(ran.load(Ordering::SeqCst), 1);

    let err = pool
        .submit_timeout(|_| {}, Duration::from_millis(5))
        .unwrap_err();
    assert_eq!(err.reason, Refused::Timeout);

    // A blocking submit really blocks while the queue is full: only the
    // context ends it.
    let ctx = Context::background().with_timeout(Duration::from_millis(20));
    let err = pool.submit_ctx(|_| {}, &ctx).unwrap_err();
    assert_eq!(err.reason, Refused::Done(ContextError::DeadlineExceeded));
    assert_eq!(pool.queued(), 2);

    drop(gate_tx);
    let report = pool.shutdown_deadline(Instant::now() + LONG);
    assert_eq!(report.completed, 3);
    assert_eq!(ran.load(Ordering::SeqCst), 3);
    drop(pool);
    leaks.assert_none();
}

#[test]
fn a_blocked_submit_gets_its_job_back_when_shutdown_begins() {
    let leaks = leak::track();
    let pool = Arc::new(Pool::builder().workers(1).queue(1).build().unwrap());
    let (gate_tx, gate) = bounded::<()>(0);
    pool.submit(blocker(gate)).unwrap();
    eventually("the worker is busy", || pool.running() == 1);
    pool.submit(|_| {}).unwrap();
    let (result_tx, result_rx) = bounded(1);
    let submitter = {
        let pool = pool.clone();
        thread::spawn(move || {
            let _ = result_tx.send(pool.submit(|_| {}).map_err(|e| e.reason));
        })
    };
    // The queue is full and its worker held until the end: the submit can
    // only end by being refused. The pause makes "blocked, then woken by
    // the shutdown" the usual path; refused on entry ends the same way.
    thread::sleep(Duration::from_millis(20));
    let stopper = {
        let pool = pool.clone();
        thread::spawn(move || pool.shutdown_deadline(Instant::now() + LONG))
    };
    let result = result_rx
        .recv_timeout(LONG)
        .expect("the shutdown never woke the blocked submit");
    assert_eq!(result, Err(Refused::Closed));
    submitter.join().unwrap();
    drop(gate_tx);
    let report = stopper.join().unwrap();
    assert_eq!(report.completed, 2);
    assert!(report.never_started.is_empty());
    drop(pool);
    leaks.assert_none();
}

#[test]
fn a_closed_pool_hands_every_job_back() {
    let leaks = leak::track();
    let pool = Pool::builder().workers(2).build().unwrap();
    let report = pool.shutdown_deadline(Instant::now() + LONG);
    assert_eq!(report.completed, 0);
    assert!(pool.is_closed());
    let ran = Arc::new(AtomicUsize::new(0));
    type Submit = Box<dyn Fn(&Pool) -> Result<(), quiesce::SubmitError>>;
    let submits: Vec<Submit> = vec![
        Box::new(|p: &Pool| p.submit(|_| {})),
        Box::new(|p: &Pool| p.try_submit(|_| {})),
        Box::new(|p: &Pool| p.submit_timeout(|_| {}, LONG)),
        Box::new(|p: &Pool| p.submit_ctx(|_| {}, &Context::background())),
        Box::new(|p: &Pool| p.execute(|_| 1).map(|_| ())),
    ];
    for submit in submits {
        let err = submit(&pool).unwrap_err();
        assert_eq!(err.reason, Refused::Closed);
    }
    let r = ran.clone();
    let err = pool
        .submit(move |_| {
            r.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap_err();
    assert!(err.to_string().contains("shutting down"));
    err.into_job().run(&Context::background()).unwrap();
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    drop(pool);
    leaks.assert_none();
}

#[test]
fn panics_are_caught_counted_handled_and_do_not_shrink_the_pool() {
    let leaks = leak::track();
    let handled = Arc::new(Mutex::new(Vec::new()));
    let h = handled.clone();
    let pool = Pool::builder()
        .workers(2)
        .queue(200)
        .panic_handler(move |p| h.lock().unwrap().push(p.message().to_string()))
        .build()
        .unwrap();
    for i in 0..100 {
        pool.submit(move |_| panic!("bad report {i}")).unwrap();
    }
    let done = submit_counted(&pool, 100);
    let report = pool.shutdown_deadline(Instant::now() + LONG);
    assert_eq!(report.panicked, 100);
    assert_eq!(report.completed, 100);
    assert_eq!(done.load(Ordering::SeqCst), 100);
    assert_eq!(handled.lock().unwrap().len(), 100);
    assert!(
        handled
            .lock()
            .unwrap()
            .contains(&"bad report 42".to_string())
    );
    drop(pool);
    leaks.assert_none();
}

#[test]
fn panics_leave_the_worker_count_unchanged() {
    let leaks = leak::track();
    let pool = Pool::builder().workers(3).build().unwrap();
    for _ in 0..30 {
        pool.submit(|_| panic!("boom")).unwrap();
    }
    eventually("all panics counted", || pool.panicked() == 30);
    assert_eq!(pool.workers(), 3);
    // And all three still take work at once.
    let (gate_tx, gate) = bounded::<()>(0);
    for _ in 0..3 {
        pool.submit(blocker(gate.clone())).unwrap();
    }
    eventually("three jobs run at once", || pool.running() == 3);
    drop(gate_tx);
    drop(pool);
    leaks.assert_none();
}

#[test]
fn shutdown_drains_every_queued_job() {
    let leaks = leak::track();
    let pool = Pool::builder().workers(1).queue(1000).build().unwrap();
    let done = submit_counted(&pool, 1000);
    let report = pool.shutdown_deadline(Instant::now() + LONG);
    assert_eq!(report.completed, 1000);
    assert_eq!(done.load(Ordering::SeqCst), 1000);
    assert!(report.never_started.is_empty());
    assert!(report.stuck.is_empty());
    assert_eq!(pool.workers(), 0);
    drop(pool);
    leaks.assert_none();
}

#[test]
fn a_cooperative_job_stops_at_the_deadline() {
    let leaks = leak::track();
    let pool = Pool::builder().workers(1).build().unwrap();
    let seen = Arc::new(Mutex::new(None));
    let s = seen.clone();
    pool.submit(move |ctx| {
        *s.lock().unwrap() = Some(ctx.sleep(LONG));
    })
    .unwrap();
    eventually("the job runs", || pool.running() == 1);
    let report = pool.shutdown_deadline(Instant::now() + Duration::from_millis(20));
    assert_eq!(report.cancelled, 1);
    assert_eq!(report.completed, 0);
    assert!(report.stuck.is_empty());
    assert_eq!(*seen.lock().unwrap(), Some(Err(ContextError::Canceled)));
    drop(pool);
    leaks.assert_none();
}

#[test]
fn a_job_that_ignores_its_context_is_named_and_shutdown_still_returns() {
    let leaks = leak::track();
    let pool = Pool::builder()
        .workers(2)
        .name("analysis")
        .stop_grace(Duration::from_millis(10))
        .build()
        .unwrap();
    let (gate_tx, gate) = bounded::<()>(0);
    pool.submit(blocker(gate)).unwrap();
    eventually("the job runs", || pool.running() == 1);
    let report = pool.shutdown_deadline(Instant::now() + Duration::from_millis(20));
    assert_eq!(report.stuck.len(), 1, "{report:?}");
    assert!(report.stuck[0].name.starts_with("analysis-"), "{report:?}");
    // Let it go; dropping the pool joins it.
    drop(gate_tx);
    drop(pool);
    leaks.assert_none();
}

#[test]
fn abort_cancels_running_jobs_and_hands_back_the_queue() {
    let leaks = leak::track();
    let pool = Pool::builder().workers(1).queue(20).build().unwrap();
    pool.submit(|ctx| {
        let _ = ctx.sleep(LONG);
    })
    .unwrap();
    eventually("the job runs", || pool.running() == 1);
    let ran = submit_counted(&pool, 10);
    let report = pool.abort();
    assert_eq!(report.cancelled, 1);
    assert_eq!(report.never_started.len(), 10);
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    // Handed back, not lost: they still run elsewhere.
    for job in report.never_started {
        job.run(&Context::background()).unwrap();
    }
    assert_eq!(ran.load(Ordering::SeqCst), 10);
    drop(pool);
    leaks.assert_none();
}

#[test]
fn deadline_passing_with_a_queue_hands_back_the_rest() {
    let leaks = leak::track();
    let pool = Pool::builder().workers(1).queue(10).build().unwrap();
    pool.submit(|ctx| {
        let _ = ctx.sleep(LONG);
    })
    .unwrap();
    eventually("the job runs", || pool.running() == 1);
    for _ in 0..5 {
        pool.submit(|_| {}).unwrap();
    }
    let report = pool.shutdown_deadline(Instant::now() + Duration::from_millis(10));
    assert_eq!(report.cancelled, 1);
    assert_eq!(report.never_started.len(), 5);
    assert_eq!(report.completed, 0);
    drop(pool);
    leaks.assert_none();
}

#[test]
fn execute_returns_the_value_or_the_panic() {
    let leaks = leak::track();
    let pool = Pool::builder().workers(2).build().unwrap();
    let ok = pool.execute(|_| "scored").unwrap();
    let bad = pool
        .execute(|_| -> u32 { panic!("invalid answers") })
        .unwrap();
    assert_eq!(ok.join(), Ok("scored"));
    match bad.join() {
        Err(JobError::Panicked(p)) => assert_eq!(p.message(), "invalid answers"),
        other => panic!("{other:?}"),
    }
    let (gate_tx, gate) = bounded::<()>(0);
    let slow = pool
        .execute(move |_| {
            let _ = gate.recv_timeout(LONG);
            5
        })
        .unwrap();
    assert_eq!(
        slow.join_timeout(Duration::from_millis(5)),
        Err(JobError::Timeout)
    );
    assert!(!slow.is_finished());
    drop(gate_tx);
    assert_eq!(slow.join_timeout(LONG), Ok(5));
    assert!(slow.is_finished());
    assert_eq!(slow.join_timeout(LONG), Err(JobError::AlreadyJoined));
    drop(pool);
    leaks.assert_none();
}

#[test]
fn a_handed_back_execute_job_that_is_dropped_reports_not_run() {
    let leaks = leak::track();
    let pool = Pool::builder().workers(1).queue(4).build().unwrap();
    let (gate_tx, gate) = bounded::<()>(0);
    pool.submit(blocker(gate)).unwrap();
    eventually("the worker is busy", || pool.running() == 1);
    let handle = pool.execute(|_| 1).unwrap();
    // The running blocker ignores its context: abort names its worker
    // after the grace period and hands back the queued job.
    let report = pool.abort();
    assert_eq!(report.stuck.len(), 1);
    drop(gate_tx);
    assert_eq!(report.never_started.len(), 1);
    drop(report);
    assert_eq!(handle.join(), Err(JobError::NotRun));
    drop(pool);
    leaks.assert_none();
}

#[test]
fn elastic_workers_grow_to_max_under_load_and_shrink_back_to_min() {
    let leaks = leak::track();
    let pool = Pool::builder()
        .elastic(1, 4)
        .queue(16)
        .idle_timeout(Duration::from_millis(20))
        .build()
        .unwrap();
    assert_eq!(pool.workers(), 1);
    let (gate_tx, gate) = bounded::<()>(0);
    for _ in 0..4 {
        pool.submit(blocker(gate.clone())).unwrap();
    }
    eventually("four jobs run at once", || pool.running() == 4);
    assert_eq!(pool.workers(), 4);
    drop(gate_tx);
    eventually("idle workers above min exit", || pool.workers() == 1);
    let report = pool.shutdown_deadline(Instant::now() + LONG);
    assert_eq!(report.completed, 4);
    drop(pool);
    leaks.assert_none();
}

#[test]
fn resize_adds_and_retires_workers() {
    let leaks = leak::track();
    let pool = Pool::builder().workers(2).build().unwrap();
    pool.resize(4).unwrap();
    assert_eq!(pool.workers(), 4);
    let (gate_tx, gate) = bounded::<()>(0);
    for _ in 0..4 {
        pool.submit(blocker(gate.clone())).unwrap();
    }
    eventually("four at once after growing", || pool.running() == 4);
    drop(gate_tx);
    pool.resize(1).unwrap();
    eventually("shrunk to one", || pool.workers() == 1);
    let max_seen = Arc::new(AtomicUsize::new(0));
    let now = Arc::new(AtomicUsize::new(0));
    for _ in 0..50 {
        let (max_seen, now) = (max_seen.clone(), now.clone());
        pool.submit(move |_| {
            let n = now.fetch_add(1, Ordering::SeqCst) + 1;
            max_seen.fetch_max(n, Ordering::SeqCst);
            thread::yield_now();
            now.fetch_sub(1, Ordering::SeqCst);
        })
        .unwrap();
    }
    let _ = pool.shutdown_deadline(Instant::now() + LONG);
    assert_eq!(max_seen.load(Ordering::SeqCst), 1);
    drop(pool);
    leaks.assert_none();
}

#[test]
fn workers_are_named_and_hooks_run_on_them() {
    let leaks = leak::track();
    let started = Arc::new(Mutex::new(Vec::new()));
    let exited = Arc::new(AtomicUsize::new(0));
    let (s, e) = (started.clone(), exited.clone());
    let pool = Pool::builder()
        .workers(2)
        .name("epro")
        .on_start(move |i| {
            s.lock()
                .unwrap()
                .push((i, thread::current().name().map(String::from)))
        })
        .on_exit(move |_| {
            e.fetch_add(1, Ordering::SeqCst);
        })
        .build()
        .unwrap();
    let name = pool
        .execute(|_| thread::current().name().map(String::from))
        .unwrap()
        .join()
        .unwrap()
        .unwrap();
    assert!(name == "epro-0" || name == "epro-1", "{name}");
    let _ = pool.shutdown_deadline(Instant::now() + LONG);
    let mut started = started.lock().unwrap().clone();
    started.sort();
    assert_eq!(
        started,
        vec![
            (0, Some("epro-0".to_string())),
            (1, Some("epro-1".to_string()))
        ]
    );
    assert_eq!(exited.load(Ordering::SeqCst), 2);
    drop(pool);
    leaks.assert_none();
}

#[test]
fn dropping_the_pool_runs_every_queued_job() {
    let leaks = leak::track();
    let done = {
        let pool = Pool::builder().workers(2).queue(500).build().unwrap();
        submit_counted(&pool, 500)
    };
    assert_eq!(done.load(Ordering::SeqCst), 500);
    leaks.assert_none();
}

#[test]
fn cancelling_the_parent_cancels_jobs_and_refuses_submits() {
    let leaks = leak::track();
    let parent = Context::background().with_cancel();
    let pool = Pool::builder().workers(1).context(&parent).build().unwrap();
    let handle = pool.execute(|ctx| ctx.sleep(LONG)).unwrap();
    eventually("the job runs", || pool.running() == 1);
    parent.cancel();
    assert_eq!(handle.join(), Ok(Err(ContextError::Canceled)));
    assert_eq!(
        pool.submit(|_| {}).unwrap_err().reason,
        Refused::ParentDone(ContextError::Canceled)
    );
    let report = pool.shutdown_deadline(Instant::now() + LONG);
    assert_eq!(report.cancelled, 1);
    drop(pool);
    leaks.assert_none();
}

#[test]
fn a_queue_of_zero_hands_jobs_straight_to_workers() {
    let leaks = leak::track();
    let pool = Pool::builder().workers(2).queue(0).build().unwrap();
    let done = submit_counted(&pool, 100);
    let report = pool.shutdown_deadline(Instant::now() + LONG);
    assert_eq!(report.completed, 100);
    assert_eq!(done.load(Ordering::SeqCst), 100);
    drop(pool);
    leaks.assert_none();
}

#[test]
fn stress_no_job_is_lost_when_shutdown_races_many_submitters() {
    let leaks = leak::track();
    for round in 0..20 {
        let pool = Arc::new(
            Pool::builder()
                .elastic(1, 3)
                .queue(8)
                .idle_timeout(Duration::from_millis(1))
                .build()
                .unwrap(),
        );
        let ran = Arc::new(AtomicUsize::new(0));
        let submitters: Vec<_> = (0..4)
            .map(|t| {
                let (pool, ran) = (pool.clone(), ran.clone());
                thread::spawn(move || {
                    let mut refused = Vec::new();
                    for i in 0..200 {
                        let ran = ran.clone();
                        let job = move |ctx: &Context| {
                            if (i + t) % 7 == 0 {
                                let _ = ctx.sleep(Duration::from_micros(200));
                            }
                            ran.fetch_add(1, Ordering::SeqCst);
                        };
                        let result = match i % 3 {
                            0 => pool.submit(job),
                            1 => pool.try_submit(job),
                            _ => pool.submit_timeout(job, Duration::from_micros(100)),
                        };
                        if let Err(e) = result {
                            refused.push(e.into_job());
                        }
                    }
                    refused
                })
            })
            .collect();
        thread::sleep(Duration::from_micros(300 * (round % 5)));
        let report = pool.shutdown_deadline(Instant::now() + Duration::from_millis(1 + round % 3));
        let mut handed_back = report.never_started.len();
        for s in submitters {
            let refused = s.join().unwrap();
            handed_back += refused.len();
        }
        assert!(report.stuck.is_empty());
        let accounted = report.completed + report.cancelled + handed_back as u64;
        assert_eq!(accounted, 800, "round {round}: {report:?}");
        assert_eq!(
            ran.load(Ordering::SeqCst) as u64,
            report.completed + report.cancelled
        );
        drop(pool);
    }
    leaks.assert_none();
}

#[test]
fn abort_during_a_draining_shutdown_cancels_the_running_jobs() {
    let leaks = leak::track();
    let pool = Arc::new(Pool::builder().workers(1).queue(10).build().unwrap());
    for _ in 0..4 {
        pool.submit(|ctx| {
            let _ = ctx.sleep(LONG);
        })
        .unwrap();
    }
    eventually("the first job runs", || pool.running() == 1);
    let drainer = {
        let pool = pool.clone();
        thread::spawn(move || pool.shutdown_deadline(Instant::now() + LONG))
    };
    eventually("intake closed", || pool.is_closed());
    // The second Ctrl-C: abort must not wait for the first call's deadline.
    let aborted = pool.abort();
    let drained = drainer.join().unwrap();
    // Counts are totals over the pool's life; the drainer reports last.
    assert_eq!(drained.cancelled, 1);
    assert_eq!(drained.completed, 0);
    // Every queued job is handed back by one of the two calls, or ran
    // (with the cancelled context, it is returned unstarted instead).
    assert_eq!(drained.never_started.len() + aborted.never_started.len(), 3);
    assert!(drained.stuck.is_empty());
    drop(pool);
    leaks.assert_none();
}

#[test]
fn a_submit_waiting_for_room_is_refused_when_the_parent_is_cancelled() {
    let leaks = leak::track();
    let parent = Context::background().with_cancel();
    let pool = Arc::new(
        Pool::builder()
            .workers(1)
            .queue(1)
            .context(&parent)
            .build()
            .unwrap(),
    );
    let (gate_tx, gate) = bounded::<()>(0);
    pool.submit(blocker(gate)).unwrap();
    eventually("the worker is busy", || pool.running() == 1);
    pool.submit(|_| {}).unwrap(); // fills the queue
    let waiting = {
        let pool = pool.clone();
        thread::spawn(move || pool.submit(|_| {}).map_err(|e| e.reason))
    };
    parent.cancel();
    assert_eq!(
        waiting.join().unwrap(),
        Err(Refused::ParentDone(ContextError::Canceled))
    );
    drop(gate_tx);
    let report = pool.shutdown_deadline(Instant::now() + LONG);
    assert_eq!(
        report.never_started.len(),
        1,
        "the queued job is handed back"
    );
    drop(pool);
    leaks.assert_none();
}

/// Issue 17: a pool built under a parent that is done already used to
/// refuse its jobs with "the pool is shutting down" (`Closed`); it says why
/// now, and a shutdown still says `Closed`.
#[test]
fn a_pool_under_a_done_parent_refuses_jobs_saying_so() {
    let leaks = leak::track();
    let cancelled = Context::background().with_cancel();
    cancelled.cancel();
    let pool = Pool::builder()
        .workers(1)
        .context(&cancelled)
        .build()
        .unwrap();
    let err = pool.try_submit(|_| {}).unwrap_err();
    assert_eq!(err.reason, Refused::ParentDone(ContextError::Canceled));
    assert_eq!(
        err.reason.to_string(),
        "the pool's parent context is done: context canceled"
    );
    let report = pool.shutdown_deadline(Instant::now() + LONG);
    assert!(report.never_started.is_empty());
    assert_eq!(pool.submit(|_| {}).unwrap_err().reason, Refused::Closed);
    drop(pool);

    let expired = Context::background().with_timeout(Duration::ZERO);
    let pool = Pool::builder()
        .workers(1)
        .context(&expired)
        .build()
        .unwrap();
    assert_eq!(
        pool.submit(|_| {}).unwrap_err().reason,
        Refused::ParentDone(ContextError::DeadlineExceeded)
    );
    drop(pool);
    leaks.assert_none();
}

/// Issue 17: waiting until the pool is idle (nothing queued, nothing
/// running) without shutting it down.
#[test]
fn wait_idle_waits_for_queued_and_running_jobs_and_keeps_the_pool_open() {
    let leaks = leak::track();
    let pool = Pool::builder().workers(1).queue(8).build().unwrap();
    assert!(
        pool.wait_idle_deadline(Instant::now()),
        "idle from the start"
    );
    let (gate_tx, gate) = bounded::<()>(0);
    pool.submit(blocker(gate)).unwrap();
    let count = submit_counted(&pool, 3);
    assert!(
        !pool.wait_idle_timeout(Duration::from_millis(5)),
        "a job runs"
    );
    assert!(!pool.wait_idle_deadline(Instant::now()));
    drop(gate_tx);
    assert!(pool.wait_idle_timeout(LONG));
    // Idle means every accepted job is over, not only taken from the queue.
    assert_eq!(count.load(Ordering::SeqCst), 3);
    assert_eq!((pool.completed(), pool.queued(), pool.running()), (4, 0, 0));
    assert!(!pool.is_closed());
    let again = submit_counted(&pool, 5);
    assert!(pool.wait_idle_timeout(LONG));
    assert_eq!(again.load(Ordering::SeqCst), 5);
    let report = pool.shutdown_deadline(Instant::now() + LONG);
    assert_eq!(report.completed, 9);
    leaks.assert_none();
}

/// Jobs a stop hands back, and a refused submit, do not keep the pool busy.
#[test]
fn jobs_handed_back_or_refused_do_not_keep_the_pool_busy() {
    let leaks = leak::track();
    let pool = Pool::builder()
        .workers(1)
        .queue(2)
        .stop_grace(LONG)
        .build()
        .unwrap();
    pool.submit(|ctx| {
        let _ = ctx.done().recv_timeout(LONG); // until the abort cancels it
    })
    .unwrap();
    eventually("the worker is busy", || pool.running() == 1);
    submit_counted(&pool, 2); // fills the queue
    assert_eq!(pool.try_submit(|_| {}).unwrap_err().reason, Refused::Full);
    assert!(!pool.wait_idle_deadline(Instant::now()));
    let report = pool.abort();
    // Cancelled, it returned; the queued ones never started.
    assert_eq!((report.cancelled, report.never_started.len()), (1, 2));
    assert!(pool.wait_idle_timeout(LONG), "busy after the stop");
    drop(pool);
    leaks.assert_none();
}
