//! `Consumer`: a named thread that drains a channel until it is closed,
//! and `JobHandle::pair`, the one-shot slot it reports through.

use std::time::{Duration, Instant};

use crossbeam_channel::{SendTimeoutError, bounded};
use quiesce::{Consumer, JobError, JobHandle, leak};

const LONG: Duration = Duration::from_secs(30);

#[test]
fn every_item_sent_before_finish_is_consumed_in_order() {
    let leaks = leak::track();
    let sink = Consumer::bounded("ordered-sink", 3, |rx| rx.iter().collect::<Vec<u32>>()).unwrap();
    for i in 0..1000 {
        sink.send(i).unwrap();
    }
    assert_eq!(sink.finish(), Ok((0..1000).collect::<Vec<_>>()));
    leaks.assert_none();
}

#[test]
fn the_thread_is_named_and_visible_to_the_leak_checker_while_it_runs() {
    let leaks = leak::track();
    let (release, hold) = bounded::<()>(0);
    let mut sink = Consumer::<u8, Option<String>>::unbounded("named-sink", move |_rx| {
        let _ = hold.recv_timeout(LONG);
        std::thread::current().name().map(String::from)
    })
    .unwrap();
    let live = leaks.check(Duration::from_millis(10)).unwrap_err();
    assert_eq!(live.threads.len(), 1, "{live}");
    assert_eq!(live.threads[0].name, "named-sink");
    drop(release);
    assert_eq!(
        sink.finish_timeout(LONG),
        Ok(Some("named-sink".to_string()))
    );
    leaks.assert_none();
}

#[test]
fn a_panic_is_returned_and_later_sends_hand_the_item_back() {
    let leaks = leak::track();
    let sink = Consumer::<String, ()>::unbounded("panicky-sink", |rx| {
        let first = rx.recv().unwrap();
        panic!("cannot store {}", first.len());
    })
    .unwrap();
    sink.send("abc".to_string()).unwrap();
    let deadline = Instant::now() + LONG;
    while !sink.is_finished() {
        assert!(Instant::now() < deadline, "the consumer never ended");
        std::thread::sleep(Duration::from_millis(1));
    }
    // The receiver is gone with the thread: the item comes back.
    let refused = sink.send("kept".to_string()).unwrap_err();
    assert_eq!(refused.into_inner(), "kept");
    match sink.finish() {
        Err(JobError::Panicked(p)) => assert_eq!(p.message(), "cannot store 3"),
        other => panic!("expected the panic, got {other:?}"),
    }
    leaks.assert_none();
}

#[test]
fn finish_deadline_times_out_while_busy_and_can_be_called_again() {
    let leaks = leak::track();
    let (release, hold) = bounded::<()>(0);
    let mut sink = Consumer::bounded("busy-sink", 1, move |rx| {
        let _ = hold.recv_timeout(LONG);
        rx.iter().count()
    })
    .unwrap();
    sink.send(1).unwrap();
    let soon = Instant::now() + Duration::from_millis(5);
    assert_eq!(sink.finish_deadline(soon), Err(JobError::Timeout));
    // Closed by the first call: nothing more goes in.
    assert!(matches!(
        sink.send_timeout(2, Duration::from_millis(1)),
        Err(SendTimeoutError::Disconnected(2))
    ));
    drop(release);
    assert_eq!(sink.finish_deadline(Instant::now() + LONG), Ok(1));
    assert_eq!(
        sink.finish_deadline(Instant::now() + LONG),
        Err(JobError::AlreadyJoined)
    );
    drop(sink);
    leaks.assert_none();
}

#[test]
fn a_full_channel_makes_send_wait_and_send_timeout_give_the_item_back() {
    let (release, hold) = bounded::<()>(0);
    let sink = Consumer::bounded("full-sink", 1, move |rx| {
        let _ = hold.recv_timeout(LONG);
        rx.iter().sum::<u32>()
    })
    .unwrap();
    sink.send(1).unwrap();
    assert!(matches!(
        sink.send_timeout(2, Duration::from_millis(5)),
        Err(SendTimeoutError::Timeout(2))
    ));
    drop(release);
    sink.send(2).unwrap();
    assert_eq!(sink.finish(), Ok(3));
}

#[test]
fn dropping_an_unfinished_consumer_drains_and_joins_it() {
    let leaks = leak::track();
    let (seen_tx, seen_rx) = crossbeam_channel::unbounded();
    let sink = Consumer::bounded("dropped-sink", 2, move |rx| {
        for item in rx.iter() {
            seen_tx.send(item).unwrap();
        }
    })
    .unwrap();
    for i in 0..10 {
        sink.send(i).unwrap();
    }
    drop(sink);
    // Drop returned only after every item was consumed and the thread joined.
    assert_eq!(
        seen_rx.try_iter().collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>()
    );
    leaks.assert_none();
}

#[test]
fn a_completer_dropped_unfilled_marks_its_handle_not_run() {
    let (completer, handle) = JobHandle::<u32>::pair();
    let worker = std::thread::spawn(move || {
        let _owned = completer;
        panic!("gave up"); // unwinding drops the completer
    });
    assert!(worker.join().is_err());
    assert_eq!(handle.join_timeout(LONG), Err(JobError::NotRun));
}

#[test]
fn a_completed_handle_is_read_once() {
    let (completer, handle) = JobHandle::pair();
    assert_eq!(
        handle.join_timeout(Duration::from_millis(1)),
        Err(JobError::Timeout)
    );
    completer.complete("stored");
    assert_eq!(handle.join_timeout(LONG), Ok("stored"));
    assert_eq!(handle.join_timeout(LONG), Err(JobError::AlreadyJoined));
}
