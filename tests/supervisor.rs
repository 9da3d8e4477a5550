//! Supervisor contract, in process (no signals: a stop context stands in
//! for SIGTERM; the signal paths are in tests/supervisor_process.rs).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, bounded};
use quiesce::{
    Context, Readiness, RestartPolicy, StopCause, Supervisor, SupervisorReport, exit, leak,
    supervisor::Outcome,
};

const LONG: Duration = Duration::from_secs(60);

type Log = Arc<Mutex<Vec<String>>>;

fn log_line(log: &Log, line: impl Into<String>) {
    log.lock().unwrap().push(line.into());
}

/// A service that logs its start, becomes ready, waits to be stopped and
/// logs its stop.
fn polite(sup: &mut Supervisor, name: &str, log: &Log) {
    let (name, log) = (name.to_string(), log.clone());
    let n = name.clone();
    sup.add_fn(n, move |ctx| {
        log_line(&log, format!("start {name}"));
        ctx.ready();
        let _ = ctx.done().recv();
        log_line(&log, format!("stop {name}"));
        Ok(())
    });
}

/// Adds a service that comes up and then ignores its context: it ends only
/// when `release` sends or is dropped (or after [`LONG`]). Returns its spec
/// for `stop_timeout`.
fn stubborn<'a>(
    sup: &'a mut Supervisor,
    name: &str,
    release: &Receiver<()>,
) -> &'a mut quiesce::ServiceSpec {
    let release = release.clone();
    sup.add_fn(name.to_string(), move |ctx| {
        ctx.ready();
        let _ = release.recv_timeout(LONG);
        Ok(())
    })
}

/// Runs `sup` on a thread; returns the stop guard, the readiness and the
/// thread.
fn start(
    sup: Supervisor,
) -> (
    quiesce::CancelGuard,
    Readiness,
    thread::JoinHandle<SupervisorReport>,
) {
    let readiness = sup.readiness();
    let guard = Context::background().with_cancel();
    let stop = guard.context();
    let runner = thread::spawn(move || sup.run(&stop));
    (guard, readiness, runner)
}

fn wait_ready(readiness: &Readiness) {
    let give_up = Instant::now() + LONG;
    while !readiness.is_ready() {
        assert!(Instant::now() < give_up, "never ready");
        thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn services_start_in_order_and_stop_in_reverse() {
    let leaks = leak::track();
    let log: Log = Arc::default();
    let mut sup = Supervisor::new();
    for name in ["store", "pipeline", "intake"] {
        polite(&mut sup, name, &log);
    }
    let (stop, readiness, runner) = start(sup);
    wait_ready(&readiness);
    drop(stop);
    let report = runner.join().unwrap();
    assert_eq!(
        *log.lock().unwrap(),
        [
            "start store",
            "start pipeline",
            "start intake",
            "stop intake",
            "stop pipeline",
            "stop store"
        ]
    );
    assert_eq!(report.stop_order, ["intake", "pipeline", "store"]);
    assert!(report.services.iter().all(|s| s.outcome == Outcome::Clean));
    assert!(matches!(report.cause, StopCause::Requested(_)));
    assert_eq!(report.exit_code(), exit::OK);
    assert!(!readiness.is_ready());
    leaks.assert_none();
}

#[test]
fn the_next_service_starts_only_once_the_previous_is_up() {
    let leaks = leak::track();
    let store_up = Arc::new(AtomicUsize::new(0));
    let seen_by_intake = Arc::new(AtomicUsize::new(usize::MAX));
    let mut sup = Supervisor::new();
    let up = store_up.clone();
    sup.add_fn("store", move |ctx| {
        // Opening takes a while; intake must not start meanwhile.
        thread::sleep(Duration::from_millis(30));
        up.store(1, Ordering::SeqCst);
        ctx.ready();
        let _ = ctx.done().recv();
        Ok(())
    });
    let (up, seen) = (store_up.clone(), seen_by_intake.clone());
    sup.add_fn("intake", move |ctx| {
        seen.store(up.load(Ordering::SeqCst), Ordering::SeqCst);
        ctx.ready();
        let _ = ctx.done().recv();
        Ok(())
    });
    let (stop, readiness, runner) = start(sup);
    wait_ready(&readiness);
    drop(stop);
    assert_eq!(runner.join().unwrap().exit_code(), exit::OK);
    assert_eq!(seen_by_intake.load(Ordering::SeqCst), 1);
    leaks.assert_none();
}

#[test]
fn a_service_that_never_comes_up_fails_the_start_and_rolls_back() {
    let leaks = leak::track();
    let log: Log = Arc::default();
    let mut sup = Supervisor::new();
    polite(&mut sup, "store", &log);
    polite(&mut sup, "pipeline", &log);
    let l = log.clone();
    sup.add_fn("intake", move |ctx| {
        log_line(&l, "start intake (never ready)");
        let _ = ctx.done().recv();
        log_line(&l, "stop intake");
        Ok(())
    })
    .start_timeout(Duration::from_millis(30));
    polite(&mut sup, "scheduler", &log);
    let report = sup.run(&Context::background());
    match &report.cause {
        StopCause::StartFailed { service, reason } => {
            assert_eq!(service, "intake");
            assert!(reason.contains("ready"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(report.stop_order, ["intake", "pipeline", "store"]);
    let scheduler = report
        .services
        .iter()
        .find(|s| s.name == "scheduler")
        .unwrap();
    assert_eq!(scheduler.outcome, Outcome::NotStarted);
    assert!(!log.lock().unwrap().iter().any(|l| l.contains("scheduler")));
    assert_eq!(report.exit_code(), exit::SERVICE_FAILED);
    leaks.assert_none();
}

#[test]
fn a_service_that_errors_while_starting_fails_the_start() {
    let leaks = leak::track();
    let log: Log = Arc::default();
    let mut sup = Supervisor::new();
    polite(&mut sup, "store", &log);
    sup.add_fn("intake", |_ctx| Err("address already in use".into()));
    let report = sup.run(&Context::background());
    assert_eq!(
        report.cause,
        StopCause::StartFailed {
            service: "intake".into(),
            reason: "failed: address already in use".into()
        }
    );
    assert_eq!(*log.lock().unwrap(), ["start store", "stop store"]);
    assert_eq!(report.exit_code(), exit::SERVICE_FAILED);
    leaks.assert_none();
}

#[test]
fn a_failing_service_stops_the_group_in_order_and_is_named() {
    let leaks = leak::track();
    let log: Log = Arc::default();
    let mut sup = Supervisor::new();
    polite(&mut sup, "store", &log);
    let (fail_tx, fail_rx) = bounded::<()>(1);
    sup.add_fn("pipeline", move |ctx| {
        ctx.ready();
        let _ = fail_rx.recv_timeout(LONG);
        Err(std::io::Error::other("disk full").into())
    });
    polite(&mut sup, "intake", &log);
    let (_stop, readiness, runner) = start(sup);
    wait_ready(&readiness);
    fail_tx.send(()).unwrap();
    let report = runner.join().unwrap();
    assert_eq!(report.cause, StopCause::ServiceEnded("pipeline".into()));
    let pipeline = report
        .services
        .iter()
        .find(|s| s.name == "pipeline")
        .unwrap();
    assert_eq!(pipeline.outcome, Outcome::Failed("disk full".into()));
    assert_eq!(report.stop_order, ["intake", "store"]);
    assert_eq!(
        *log.lock().unwrap(),
        ["start store", "start intake", "stop intake", "stop store"]
    );
    assert_eq!(report.exit_code(), exit::SERVICE_FAILED);
    leaks.assert_none();
}

#[test]
fn a_panicking_service_is_reported_with_its_message() {
    let leaks = leak::track();
    let log: Log = Arc::default();
    let mut sup = Supervisor::new();
    polite(&mut sup, "store", &log);
    sup.add_fn("scheduler", |ctx| {
        ctx.ready();
        panic!("summary template missing")
    });
    let report = sup.run(&Context::background());
    let scheduler = report
        .services
        .iter()
        .find(|s| s.name == "scheduler")
        .unwrap();
    match &scheduler.outcome {
        Outcome::Panicked(p) => assert_eq!(p.message(), "summary template missing"),
        other => panic!("{other:?}"),
    }
    assert_eq!(report.exit_code(), exit::SERVICE_FAILED);
    assert!(
        report
            .to_string()
            .contains("scheduler=panicked: summary template missing")
    );
    leaks.assert_none();
}

#[test]
fn a_service_returning_on_its_own_ends_the_group() {
    let leaks = leak::track();
    let log: Log = Arc::default();
    let mut sup = Supervisor::new();
    polite(&mut sup, "store", &log);
    sup.add_fn("oneshot", |ctx| {
        ctx.ready();
        Ok(())
    });
    let report = sup.run(&Context::background());
    assert_eq!(report.cause, StopCause::ServiceEnded("oneshot".into()));
    let oneshot = report
        .services
        .iter()
        .find(|s| s.name == "oneshot")
        .unwrap();
    assert_eq!(oneshot.outcome, Outcome::ExitedEarly);
    assert_eq!(report.exit_code(), exit::SERVICE_FAILED);
    leaks.assert_none();
}

#[test]
fn a_stuck_service_is_named_and_the_deadline_holds() {
    let leaks = leak::track();
    let log: Log = Arc::default();
    let (release_tx, release_rx) = bounded::<()>(0);
    let mut sup = Supervisor::builder().shutdown_timeout(LONG).build();
    polite(&mut sup, "store", &log);
    stubborn(&mut sup, "analyzer-call", &release_rx).stop_timeout(Duration::from_millis(30));
    polite(&mut sup, "intake", &log);
    let (stop, readiness, runner) = start(sup);
    wait_ready(&readiness);
    drop(stop);
    let report = runner.join().unwrap();
    assert_eq!(report.stuck.len(), 1);
    assert_eq!(report.stuck[0].name, "analyzer-call");
    let stuck = report
        .services
        .iter()
        .find(|s| s.name == "analyzer-call")
        .unwrap();
    assert!(matches!(stuck.outcome, Outcome::Stuck(_)));
    // The shutdown moved on: the store below it was still stopped.
    assert_eq!(report.stop_order, ["intake", "analyzer-call", "store"]);
    assert_eq!(log.lock().unwrap().last().unwrap(), "stop store");
    assert_eq!(report.exit_code(), exit::DEADLINE_EXCEEDED);
    // Release the abandoned thread so this test leaves nothing behind.
    release_tx.send(()).unwrap();
    leaks.assert_none();
}

#[test]
fn the_overall_shutdown_timeout_bounds_every_stop() {
    let leaks = leak::track();
    let (release_tx, release_rx) = bounded::<()>(0);
    let mut sup = Supervisor::builder()
        .shutdown_timeout(Duration::from_millis(50))
        .stop_timeout(LONG)
        .build();
    for name in ["a", "b", "c"] {
        stubborn(&mut sup, name, &release_rx);
    }
    let (stop, readiness, runner) = start(sup);
    wait_ready(&readiness);
    drop(stop);
    let report = runner.join().unwrap();
    // Each stop's own timeout is a minute, yet the run returned: the overall
    // deadline cut them short, and all three are named.
    let mut stuck: Vec<&str> = report.stuck.iter().map(|r| r.name.as_str()).collect();
    stuck.sort();
    assert_eq!(stuck, ["a", "b", "c"]);
    assert_eq!(report.exit_code(), exit::DEADLINE_EXCEEDED);
    drop(release_tx);
    leaks.assert_none();
}

#[test]
fn restarts_happen_with_backoff_and_stop_at_the_budget() {
    let leaks = leak::track();
    let runs = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let mut sup = Supervisor::new();
    let r = runs.clone();
    sup.add_fn("flaky-sync", move |ctx| {
        r.lock().unwrap().push(Instant::now());
        ctx.ready();
        Err("EHR endpoint returned 502".into())
    })
    .restart(
        RestartPolicy::new(3, LONG).backoff(Duration::from_millis(5), Duration::from_millis(20)),
    );
    let report = sup.run(&Context::background());
    let service = &report.services[0];
    assert_eq!(service.restarts, 3);
    assert_eq!(
        service.outcome,
        Outcome::Failed("EHR endpoint returned 502".into())
    );
    assert_eq!(report.exit_code(), exit::SERVICE_FAILED);
    let runs = runs.lock().unwrap();
    assert_eq!(runs.len(), 4, "the first run and three restarts");
    // Exponential: at least 5, 10, 20 ms between runs.
    for (gap, min) in runs.windows(2).zip([5u64, 10, 20]) {
        assert!(
            gap[1] - gap[0] >= Duration::from_millis(min),
            "{:?} < {min} ms",
            gap[1] - gap[0]
        );
    }
    leaks.assert_none();
}

#[test]
fn a_restarted_service_flips_readiness_until_it_is_up_again() {
    let leaks = leak::track();
    let (fail_tx, fail_rx) = bounded::<()>(0);
    let (proceed_tx, proceed_rx) = bounded::<()>(0);
    let readiness_seen = Arc::new(Mutex::new(Vec::new()));
    let mut sup = Supervisor::new();
    let attempts = Arc::new(AtomicUsize::new(0));
    let a = attempts.clone();
    sup.add_fn("cache", move |ctx| {
        let attempt = a.fetch_add(1, Ordering::SeqCst);
        if attempt == 1 {
            // Restarted: hold before becoming ready so the test can look.
            let _ = proceed_rx.recv_timeout(LONG);
        }
        ctx.ready();
        if attempt == 0 {
            let _ = fail_rx.recv_timeout(LONG);
            return Err("connection reset".into());
        }
        let _ = ctx.done().recv();
        Ok(())
    })
    .restart(
        RestartPolicy::new(5, LONG).backoff(Duration::from_millis(1), Duration::from_millis(1)),
    );
    let (stop, readiness, runner) = start(sup);
    wait_ready(&readiness);
    readiness_seen.lock().unwrap().push(readiness.is_ready());
    fail_tx.send(()).unwrap();
    let give_up = Instant::now() + LONG;
    while readiness.is_ready() {
        assert!(Instant::now() < give_up);
        thread::sleep(Duration::from_millis(1));
    }
    readiness_seen.lock().unwrap().push(readiness.is_ready());
    proceed_tx.send(()).unwrap();
    wait_ready(&readiness);
    drop(stop);
    let report = runner.join().unwrap();
    assert_eq!(*readiness_seen.lock().unwrap(), [true, false]);
    assert_eq!(report.services[0].restarts, 1);
    assert_eq!(report.services[0].outcome, Outcome::Clean);
    assert_eq!(report.exit_code(), exit::OK);
    leaks.assert_none();
}

#[test]
fn readiness_is_false_from_the_first_moment_of_shutdown() {
    let leaks = leak::track();
    let seen_at_stop = Arc::new(Mutex::new(None));
    let mut sup = Supervisor::new();
    let readiness = sup.readiness();
    let seen = seen_at_stop.clone();
    sup.add_fn("intake", move |ctx| {
        ctx.ready();
        let _ = ctx.done().recv();
        *seen.lock().unwrap() = Some(readiness.is_ready());
        Ok(())
    });
    let (stop, readiness, runner) = start(sup);
    wait_ready(&readiness);
    drop(stop);
    let _ = runner.join().unwrap();
    assert_eq!(*seen_at_stop.lock().unwrap(), Some(false));
    leaks.assert_none();
}

#[test]
fn the_drain_delay_keeps_services_running_while_readiness_is_false() {
    let leaks = leak::track();
    let observed = Arc::new(Mutex::new(None));
    let mut sup = Supervisor::builder()
        .drain_delay(Duration::from_millis(30))
        .build();
    let readiness = sup.readiness();
    let obs = observed.clone();
    sup.add_fn("intake", move |ctx| {
        ctx.ready();
        // Wait until readiness drops, then check the service is still
        // running (its context is not done yet): that is the drain.
        while readiness.is_ready() {
            thread::sleep(Duration::from_millis(1));
        }
        *obs.lock().unwrap() = Some(ctx.is_done());
        let _ = ctx.done().recv();
        Ok(())
    });
    let (stop, readiness, runner) = start(sup);
    wait_ready(&readiness);
    drop(stop);
    let report = runner.join().unwrap();
    assert_eq!(*observed.lock().unwrap(), Some(false));
    assert_eq!(report.exit_code(), exit::OK);
    leaks.assert_none();
}

#[test]
fn a_stop_requested_during_start_stops_what_started() {
    let leaks = leak::track();
    let log: Log = Arc::default();
    let mut sup = Supervisor::new();
    polite(&mut sup, "store", &log);
    let guard = Context::background().with_cancel();
    let stop = guard.context();
    let l = log.clone();
    sup.add_fn("slow", move |ctx| {
        log_line(&l, "start slow");
        guard.cancel(); // a signal arrives while "slow" is starting
        let _ = ctx.done().recv();
        log_line(&l, "stop slow");
        Ok(())
    });
    let report = sup.run(&stop);
    assert!(
        matches!(report.cause, StopCause::Requested(_)),
        "{:?}",
        report.cause
    );
    assert_eq!(report.stop_order, ["slow", "store"]);
    assert_eq!(report.exit_code(), exit::OK);
    leaks.assert_none();
}

#[test]
fn readiness_stays_false_while_later_services_are_still_starting() {
    // "first" fails before it is up and is restarted; once it is up again,
    // "second" has not started yet: the group is not serving.
    let leaks = leak::track();
    let quick = Duration::from_millis(1);
    let runs = AtomicUsize::new(0);
    let mut sup = Supervisor::new();
    sup.add_fn("first", move |ctx| {
        if runs.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err("not yet".into());
        }
        ctx.ready();
        let _ = ctx.done().recv();
        Ok(())
    })
    .restart(RestartPolicy::new(1, LONG).backoff(quick, quick));
    let readiness = sup.readiness();
    let seen = Arc::new(Mutex::new(None));
    let s = seen.clone();
    sup.add_fn("second", move |ctx| {
        // Started only after "first" is up again.
        *s.lock().unwrap() = Some(readiness.is_ready());
        ctx.ready();
        let _ = ctx.done().recv();
        Ok(())
    });
    let (stop, readiness, runner) = start(sup);
    wait_ready(&readiness);
    drop(stop);
    let report = runner.join().unwrap();
    assert_eq!(report.exit_code(), exit::OK, "{report}");
    assert_eq!(report.services[0].restarts, 1);
    assert_eq!(
        *seen.lock().unwrap(),
        Some(false),
        "ready before every service started"
    );
    leaks.assert_none();
}

#[test]
fn a_service_up_again_during_the_shutdown_does_not_make_the_group_ready() {
    // "store" fails and is restarted; its second run waits to come up until
    // the shutdown has begun (it is stopping "intake").
    let leaks = leak::track();
    let quick = Duration::from_millis(1);
    let (fail, failed) = bounded::<()>(0);
    let (up, may_come_up) = bounded::<()>(0);
    let (came_up, store_is_up) = bounded::<()>(0);
    let (intake_stopping, intake_is_stopping) = bounded::<()>(0);
    let (release, held) = bounded::<()>(0);
    let runs = AtomicUsize::new(0);
    let mut sup = Supervisor::new();
    let readiness = sup.readiness();
    let ready_while_stopping = Arc::new(Mutex::new(None));
    let seen = ready_while_stopping.clone();
    sup.add_fn("store", move |ctx| {
        if runs.fetch_add(1, Ordering::SeqCst) == 0 {
            ctx.ready();
            let _ = failed.recv();
            return Err("disk full".into());
        }
        let _ = may_come_up.recv();
        ctx.ready();
        came_up.send(()).unwrap();
        let _ = ctx.done().recv();
        // Cancelled after "intake" returned, so after this run's ready().
        *seen.lock().unwrap() = Some(readiness.is_ready());
        Ok(())
    })
    .restart(RestartPolicy::new(1, LONG).backoff(quick, quick));
    sup.add_fn("intake", move |ctx| {
        ctx.ready();
        let _ = ctx.done().recv();
        intake_stopping.send(()).unwrap();
        let _ = held.recv();
        Ok(())
    });
    let (stop, readiness, runner) = start(sup);
    wait_ready(&readiness);
    fail.send(()).unwrap();
    let give_up = Instant::now() + LONG;
    while readiness.is_ready() {
        assert!(
            Instant::now() < give_up,
            "the failure never turned readiness false"
        );
        thread::sleep(Duration::from_millis(1));
    }
    drop(stop);
    intake_is_stopping.recv().unwrap();
    up.send(()).unwrap();
    store_is_up.recv().unwrap();
    drop(release);
    let report = runner.join().unwrap();
    assert_eq!(report.exit_code(), exit::OK, "{report}");
    assert_eq!(report.stop_order, ["intake", "store"]);
    assert_eq!(
        *ready_while_stopping.lock().unwrap(),
        Some(false),
        "ready during the shutdown"
    );
    assert!(!readiness.is_ready());
    leaks.assert_none();
}

#[test]
fn an_error_whose_message_panics_is_a_panicked_service_not_a_dead_thread() {
    #[derive(Debug)]
    struct Unprintable;
    impl std::fmt::Display for Unprintable {
        fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            panic!("cannot describe this error")
        }
    }
    impl std::error::Error for Unprintable {}

    let leaks = leak::track();
    let mut sup = Supervisor::builder().start_timeout(LONG).build();
    sup.add_fn("import", |_ctx| Err(Unprintable.into()));
    let report = sup.run(&Context::background());
    let Outcome::Panicked(panic) = &report.services[0].outcome else {
        panic!("{report}")
    };
    assert!(
        panic.to_string().contains("cannot describe this error"),
        "{panic}"
    );
    assert_eq!(report.exit_code(), exit::SERVICE_FAILED);
    leaks.assert_none();
}

#[test]
fn a_service_whose_drop_blocks_is_stuck_at_its_stop_deadline() {
    // The service's own Drop is part of its stop: it counts against the
    // stop timeout, and the run moves on past it.
    struct SlowToDrop {
        held: crossbeam_channel::Receiver<()>,
    }
    impl quiesce::Service for SlowToDrop {
        fn name(&self) -> &str {
            "slow-to-drop"
        }
        fn run(&mut self, ctx: &quiesce::ServiceContext) -> Result<(), quiesce::BoxError> {
            ctx.ready();
            let _ = ctx.done().recv();
            Ok(())
        }
    }
    impl Drop for SlowToDrop {
        fn drop(&mut self) {
            let _ = self.held.recv_timeout(LONG);
        }
    }

    let leaks = leak::track();
    let log: Log = Arc::default();
    let (release, held) = bounded::<()>(0);
    let mut sup = Supervisor::builder().shutdown_timeout(LONG).build();
    polite(&mut sup, "store", &log);
    sup.add(SlowToDrop { held })
        .stop_timeout(Duration::from_millis(30));
    let (stop, readiness, runner) = start(sup);
    wait_ready(&readiness);
    drop(stop);
    let report = runner.join().unwrap();
    assert!(
        matches!(report.services[1].outcome, Outcome::Stuck(_)),
        "{report}"
    );
    assert_eq!(report.stop_order, ["slow-to-drop", "store"]);
    assert_eq!(report.exit_code(), exit::DEADLINE_EXCEEDED);
    release.send(()).unwrap();
    leaks.assert_none();
}

/// Issue 17: a stuck service with a long stop timeout used to take the
/// whole shutdown budget, and the healthy service below it was cancelled
/// with no wait at all and reported `Stuck`. Each service keeps its share:
/// here min(60 s, 4 s / (2 * 2)) = 1 s, so the stuck one may take 3 s.
#[test]
fn a_stuck_service_cannot_take_the_share_of_the_healthy_one_below_it() {
    let leaks = leak::track();
    let log: Log = Arc::default();
    let (release_tx, release_rx) = bounded::<()>(0);
    let mut sup = Supervisor::builder()
        .shutdown_timeout(Duration::from_secs(4))
        .stop_timeout(LONG)
        .build();
    polite(&mut sup, "store", &log);
    stubborn(&mut sup, "stubborn", &release_rx);
    let (stop, readiness, runner) = start(sup);
    wait_ready(&readiness);
    drop(stop);
    let report = runner.join().unwrap();
    assert_eq!(report.stop_order, ["stubborn", "store"]);
    let (store, stubborn) = (&report.services[0], &report.services[1]);
    assert_eq!(store.outcome, Outcome::Clean, "{report}");
    assert!(store.stop_time.is_some(), "{report}");
    assert_eq!(log.lock().unwrap().last().unwrap(), "stop store");
    assert!(matches!(stubborn.outcome, Outcome::Stuck(_)), "{report}");
    assert!(stubborn.waited.is_some(), "it was waited for: {report}");
    assert_eq!(stubborn.stop_time, None);
    let stuck: Vec<&str> = report.stuck.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(stuck, ["stubborn"]);
    assert_eq!(report.exit_code(), exit::DEADLINE_EXCEEDED);
    let line = report.to_string();
    assert!(line.contains(" store=stopped cleanly"), "{line}");
    assert!(line.contains("; stubborn=still running after "), "{line}");
    assert!(line.contains(" of the shutdown budget)"), "{line}");
    release_tx.send(()).unwrap();
    leaks.assert_none();
}

/// A service whose turn comes when the budget is spent (its share is zero:
/// a zero stop timeout) is cancelled but not waited for, and says so; it
/// is not reported as stuck at a deadline it never had.
#[test]
fn a_service_never_waited_for_is_reported_not_waited_not_stuck() {
    let leaks = leak::track();
    let (release_tx, release_rx) = bounded::<()>(0);
    let mut sup = Supervisor::builder()
        .shutdown_timeout(Duration::from_millis(100))
        .stop_timeout(LONG)
        .build();
    stubborn(&mut sup, "no-share", &release_rx).stop_timeout(Duration::ZERO);
    stubborn(&mut sup, "stubborn", &release_rx);
    let (stop, readiness, runner) = start(sup);
    wait_ready(&readiness);
    drop(stop);
    let report = runner.join().unwrap();
    // stubborn took the whole budget (no-share keeps nothing of it).
    assert!(
        matches!(report.services[1].outcome, Outcome::Stuck(_)),
        "{report}"
    );
    assert!(report.services[1].waited.is_some());
    let no_share = &report.services[0];
    assert_eq!(no_share.outcome, Outcome::NotWaited, "{report}");
    assert_eq!((no_share.waited, no_share.stop_time), (None, None));
    // Cancelled, in that order, and left running like a stuck one.
    assert_eq!(report.stop_order, ["stubborn", "no-share"]);
    let mut stuck: Vec<&str> = report.stuck.iter().map(|r| r.name.as_str()).collect();
    stuck.sort();
    assert_eq!(stuck, ["no-share", "stubborn"]);
    assert_eq!(report.exit_code(), exit::DEADLINE_EXCEEDED);
    assert!(
        report
            .to_string()
            .contains("no-share=not waited for (the shutdown budget was spent)"),
        "{report}"
    );
    drop(release_tx);
    leaks.assert_none();
}

/// The drain delay counts against the shutdown budget but cannot take the
/// services' shares: here min(60 s, 2 s / 2) = 1 s is left for the stop.
#[test]
fn the_drain_delay_cannot_take_the_share_of_the_services() {
    let leaks = leak::track();
    let log: Log = Arc::default();
    let mut sup = Supervisor::builder()
        .shutdown_timeout(Duration::from_secs(2))
        .stop_timeout(LONG)
        .drain_delay(LONG)
        .build();
    polite(&mut sup, "intake", &log);
    let (stop, readiness, runner) = start(sup);
    wait_ready(&readiness);
    drop(stop);
    let report = runner.join().unwrap();
    assert_eq!(report.services[0].outcome, Outcome::Clean, "{report}");
    assert_eq!(report.exit_code(), exit::OK);
    leaks.assert_none();
}

#[test]
#[allow(deprecated)]
fn the_deprecated_setters_still_set_what_the_builder_sets() {
    let leaks = leak::track();
    // start_timeout: a service up after 200 ms fails a 5 ms start.
    let mut sup = Supervisor::new().start_timeout(Duration::from_millis(5));
    sup.add_fn("slow-start", |ctx| {
        if ctx.sleep(Duration::from_millis(200)).is_ok() {
            ctx.ready();
        }
        let _ = ctx.done().recv();
        Ok(())
    });
    let report = sup.run(&Context::background());
    assert!(
        matches!(report.cause, StopCause::StartFailed { .. }),
        "{report}"
    );

    // shutdown_timeout and stop_timeout: a 30 ms budget gives up on a
    // service that would otherwise be waited for until it is released.
    let (release_tx, release_rx) = bounded::<()>(0);
    let mut sup = Supervisor::new()
        .shutdown_timeout(Duration::from_millis(30))
        .stop_timeout(LONG)
        .drain_delay(Duration::ZERO);
    stubborn(&mut sup, "stubborn", &release_rx);
    let (stop, readiness, runner) = start(sup);
    wait_ready(&readiness);
    drop(stop);
    let report = runner.join().unwrap();
    assert!(
        matches!(report.services[0].outcome, Outcome::Stuck(_)),
        "{report}"
    );
    drop(release_tx);
    leaks.assert_none();
}
