//! The leak checker: a tracker sees the threads a test started, names the
//! ones still running, and ignores other tests' threads.

use std::thread;
use std::time::Duration;

use crossbeam_channel::bounded;
use quiesce::{Context, Threads, leak};

const LONG: Duration = Duration::from_secs(60);

#[test]
fn a_thread_left_running_is_named_then_cleared_once_it_ends() {
    let leaks = leak::track();
    let (release_tx, release_rx) = bounded::<()>(0);
    let mut threads = Threads::new(&Context::background());
    threads
        .spawn("forgotten-upload", move |_ctx| {
            let _ = release_rx.recv_timeout(LONG);
        })
        .unwrap();
    // Simulate the bug goleak exists for: the owner forgets its threads.
    std::mem::forget(threads);

    let err = leaks.check(Duration::from_millis(20)).unwrap_err();
    assert_eq!(err.threads.len(), 1);
    assert_eq!(err.threads[0].name, "forgotten-upload");
    assert!(err.to_string().contains("forgotten-upload"), "{err}");

    release_tx.send(()).unwrap();
    assert_eq!(leaks.check(LONG), Ok(()));
    leaks.assert_none();
}

#[test]
fn assert_none_panics_with_the_names() {
    let leaks = leak::track();
    let (release_tx, release_rx) = bounded::<()>(0);
    let mut threads = Threads::new(&Context::background());
    threads
        .spawn("stuck-analyzer-call", move |_ctx| {
            let _ = release_rx.recv_timeout(LONG);
        })
        .unwrap();
    let err = leaks.check(Duration::ZERO).unwrap_err();
    assert_eq!(err.threads[0].name, "stuck-analyzer-call");
    release_tx.send(()).unwrap();
    drop(threads);
    leaks.assert_none();
}

#[test]
fn threads_started_by_library_threads_are_tracked_too() {
    let leaks = leak::track();
    let (release_tx, release_rx) = bounded::<()>(0);
    let mut outer = Threads::new(&Context::background());
    outer
        .spawn("outer", move |_ctx| {
            let mut inner = Threads::new(&Context::background());
            inner
                .spawn("inner", move |_ctx| {
                    let _ = release_rx.recv_timeout(LONG);
                })
                .unwrap();
            std::mem::forget(inner);
        })
        .unwrap();
    let report = outer.join_timeout(LONG);
    assert!(report.running.is_empty());
    let live: Vec<String> = leaks.live().into_iter().map(|t| t.name).collect();
    assert_eq!(live, vec!["inner".to_string()]);
    release_tx.send(()).unwrap();
    leaks.assert_none();
}

#[test]
fn another_threads_tracker_does_not_see_this_tests_threads() {
    let (release_tx, release_rx) = bounded::<()>(0);
    let (started_tx, started_rx) = bounded::<()>(0);
    let other = thread::spawn(move || {
        let leaks = leak::track();
        let mut threads = Threads::new(&Context::background());
        threads
            .spawn("other-test-thread", move |_ctx| {
                let _ = release_rx.recv_timeout(LONG);
            })
            .unwrap();
        started_tx.send(()).unwrap();
        let report = threads.join_timeout(LONG);
        assert!(report.running.is_empty());
        leaks.assert_none();
    });
    started_rx.recv().unwrap();
    let mine = leak::track();
    assert!(mine.live().is_empty());
    assert_eq!(mine.check(Duration::ZERO), Ok(()));
    assert!(
        leak::live_threads()
            .iter()
            .any(|t| t.name == "other-test-thread")
    );
    release_tx.send(()).unwrap();
    other.join().unwrap();
    mine.assert_none();
}
