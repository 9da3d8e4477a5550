//! `leak::check_all` looks at the whole process, so it gets a test binary
//! of its own with a single test.

use std::time::Duration;

use quiesce::{Context, Threads, leak};

#[test]
fn check_all_sees_every_thread_and_stops_the_idle_timer() {
    // A deadline starts the shared timer thread.
    let ctx = Context::background().with_timeout(Duration::from_secs(60));
    let mut threads = Threads::new(&ctx);
    threads
        .spawn("worker", |ctx| ctx.sleep(Duration::from_secs(60)))
        .unwrap();
    let err = leak::check_all(Duration::from_millis(10)).unwrap_err();
    let names: Vec<&str> = err.threads.iter().map(|t| t.name.as_str()).collect();
    assert!(names.contains(&"worker"), "{names:?}");
    assert!(
        names.contains(&"quiesce-timer"),
        "a pending deadline keeps the timer: {names:?}"
    );

    let report = threads.shutdown_timeout(Duration::from_secs(60));
    assert!(report.running.is_empty());
    ctx.cancel();
    // No deadline pending: the timer is asked to stop, and is joined.
    assert_eq!(leak::check_all(Duration::from_secs(60)), Ok(()));
    assert!(leak::live_threads().is_empty());
}
