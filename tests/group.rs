//! Group (errgroup) contract: first error cancels, panics as errors, the
//! limit, refusing after cancellation, no deadlock from a dying sibling.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use quiesce::{
    Context, ContextError, Group, GroupError, SpawnError, TrySpawnError, group::Waited, leak,
};

const LONG: Duration = Duration::from_secs(60);

#[test]
fn all_values_come_back_in_spawn_order() {
    let leaks = leak::track();
    let group = Group::<u32, String>::new();
    for i in 0..10u32 {
        group
            .spawn(format!("t{i}"), move |_| {
                thread::sleep(Duration::from_millis((10 - i as u64) % 3));
                Ok(i * i)
            })
            .unwrap();
    }
    assert_eq!(group.wait(), Ok((0..10).map(|i| i * i).collect()));
    leaks.assert_none();
}

#[test]
fn the_first_error_cancels_the_siblings_and_is_returned_with_its_task() {
    let leaks = leak::track();
    let (group, ctx) = Group::<(), String>::with_context(&Context::background());
    let cancelled = Arc::new(AtomicUsize::new(0));
    let ready = Arc::new(Barrier::new(5));
    for i in 1..=5 {
        let (cancelled, ready) = (cancelled.clone(), ready.clone());
        group
            .spawn(format!("task-{i}"), move |ctx| {
                ready.wait();
                if i == 3 {
                    return Err("task 3 failed".to_string());
                }
                match ctx.sleep(LONG) {
                    Err(ContextError::Canceled) => {
                        cancelled.fetch_add(1, Ordering::SeqCst);
                        Err("cancelled".to_string())
                    }
                    other => Err(format!("unexpected {other:?}")),
                }
            })
            .unwrap();
    }
    let err = group.wait().unwrap_err();
    assert_eq!(
        err,
        GroupError::Failed {
            task: "task-3".into(),
            error: "task 3 failed".into()
        }
    );
    assert_eq!(err.to_string(), "task task-3 failed: task 3 failed");
    assert_eq!(cancelled.load(Ordering::SeqCst), 4);
    assert_eq!(ctx.err(), Some(ContextError::Canceled));
    leaks.assert_none();
}

#[test]
fn a_panic_is_caught_named_and_cancels_the_siblings() {
    let leaks = leak::track();
    let (group, _ctx) = Group::<(), String>::with_context(&Context::background());
    let started = Arc::new(Barrier::new(2));
    let s = started.clone();
    group
        .spawn("patient-import", move |ctx| {
            s.wait();
            ctx.sleep(LONG).map_err(|e| e.to_string())
        })
        .unwrap();
    let s = started.clone();
    group
        .spawn("scoring", move |_| {
            s.wait();
            panic!("division by zero in score")
        })
        .unwrap();
    match group.wait() {
        Err(GroupError::Panicked { task, panic }) => {
            assert_eq!(task, "scoring");
            assert_eq!(panic.message(), "division by zero in score");
        }
        other => panic!("{other:?}"),
    }
    leaks.assert_none();
}

#[test]
fn once_cancelled_no_new_task_is_started() {
    let leaks = leak::track();
    let (group, ctx) = Group::<(), String>::with_context(&Context::background());
    group.spawn("fails", |_| Err("no".to_string())).unwrap();
    assert!(ctx.done().recv_timeout(LONG).unwrap_err().is_disconnected());
    let started = Arc::new(AtomicUsize::new(0));
    let s = started.clone();
    let err = group
        .spawn("late", move |_| {
            s.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .unwrap_err();
    assert!(matches!(err, SpawnError::Canceled(ContextError::Canceled)));
    let s = started.clone();
    match group.try_spawn("late-too", move |_| {
        s.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }) {
        Err(TrySpawnError::Canceled(_, f)) => drop(f),
        other => panic!("{other:?}"),
    }
    assert!(group.wait().is_err());
    assert_eq!(started.load(Ordering::SeqCst), 0);
    leaks.assert_none();
}

#[test]
fn the_limit_is_never_exceeded_and_spawn_waits_for_a_place() {
    let leaks = leak::track();
    let mut group = Group::<(), String>::new();
    group.set_limit(3).unwrap();
    let now = Arc::new(AtomicUsize::new(0));
    let max_seen = Arc::new(AtomicUsize::new(0));
    // The first three meet at a barrier: the limit is reached.
    let barrier = Arc::new(Barrier::new(3));
    for i in 0..30 {
        let (now, max_seen, barrier) = (now.clone(), max_seen.clone(), barrier.clone());
        group
            .spawn(format!("t{i}"), move |_| {
                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                max_seen.fetch_max(n, Ordering::SeqCst);
                if i < 3 {
                    barrier.wait();
                }
                thread::yield_now();
                now.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            })
            .unwrap();
    }
    assert!(group.wait().is_ok());
    assert_eq!(max_seen.load(Ordering::SeqCst), 3);
    leaks.assert_none();
}

#[test]
fn try_spawn_refuses_at_the_limit_and_hands_the_task_back() {
    let leaks = leak::track();
    let mut group = Group::<u8, String>::new();
    group.set_limit(1).unwrap();
    let (release_tx, release_rx) = crossbeam_channel::bounded::<()>(0);
    group
        .spawn("holder", move |_| {
            let _ = release_rx.recv_timeout(LONG);
            Ok(1)
        })
        .unwrap();
    let task = |_: &Context| Ok(2);
    let handed_back = match group.try_spawn("second", task) {
        Err(TrySpawnError::AtLimit(f)) => f,
        other => panic!("{other:?}"),
    };
    assert_eq!(handed_back(&Context::background()), Ok(2));
    assert!(
        group.set_limit(5).is_err(),
        "the limit cannot change while tasks run"
    );
    drop(release_tx);
    assert_eq!(group.wait(), Ok(vec![1]));
    leaks.assert_none();
}

#[test]
fn a_spawn_waiting_for_a_place_gives_up_when_the_group_is_cancelled() {
    let leaks = leak::track();
    let (mut group, _ctx) = Group::<(), String>::with_context(&Context::background());
    group.set_limit(1).unwrap();
    let (go_tx, go_rx) = crossbeam_channel::bounded::<()>(0);
    group
        .spawn("fails-later", move |_| {
            let _ = go_rx.recv_timeout(LONG);
            Err("boom".to_string())
        })
        .unwrap();
    let group = Arc::new(group);
    let waiter = {
        let group = group.clone();
        thread::spawn(move || group.spawn("waits-for-a-place", |_| Ok(())))
    };
    thread::sleep(Duration::from_millis(10));
    go_tx.send(()).unwrap();
    let result = waiter.join().unwrap();
    assert!(matches!(result, Err(SpawnError::Canceled(_))), "{result:?}");
    let group = Arc::try_unwrap(group).unwrap();
    assert_eq!(group.wait().unwrap_err().task(), "fails-later");
    leaks.assert_none();
}

#[test]
fn wait_deadline_keeps_running_tasks_and_names_them() {
    let leaks = leak::track();
    let group = Group::<(), String>::new();
    let (release_tx, release_rx) = crossbeam_channel::bounded::<()>(0);
    group
        .spawn("ignores-its-context", move |_| {
            let _ = release_rx.recv_timeout(LONG);
            Ok(())
        })
        .unwrap();
    let group = match group.wait_deadline(Instant::now() + Duration::from_millis(10)) {
        Waited::Running(group) => group,
        Waited::Done(outcome) => panic!("returned early: {outcome:?}"),
    };
    let running = group.running();
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].name, "ignores-its-context");
    group.cancel();
    drop(release_tx);
    assert_eq!(group.wait_timeout(LONG).done(), Some(Ok(vec![()])));
    leaks.assert_none();
}

#[test]
fn a_parent_cancel_reaches_the_tasks() {
    let leaks = leak::track();
    let parent = Context::background().with_cancel();
    let (group, _ctx) = Group::<(), ContextError>::with_context(&parent);
    group.spawn("sleeper", |ctx| ctx.sleep(LONG)).unwrap();
    parent.cancel();
    assert_eq!(
        group.wait(),
        Err(GroupError::Failed {
            task: "sleeper".into(),
            error: ContextError::Canceled
        })
    );
    leaks.assert_none();
}

#[test]
fn dropping_a_group_cancels_and_joins() {
    let leaks = leak::track();
    let exited = Arc::new(AtomicUsize::new(0));
    {
        let group = Group::<(), ContextError>::new();
        for i in 0..3 {
            let exited = exited.clone();
            group
                .spawn(format!("t{i}"), move |ctx| {
                    let r = ctx.sleep(LONG);
                    exited.fetch_add(1, Ordering::SeqCst);
                    r
                })
                .unwrap();
        }
    }
    assert_eq!(exited.load(Ordering::SeqCst), 3);
    leaks.assert_none();
}

#[test]
fn stress_many_groups_with_failures_never_deadlock() {
    let leaks = leak::track();
    for round in 0..50usize {
        let (mut group, _ctx) = Group::<usize, usize>::with_context(&Context::background());
        group.set_limit(1 + round % 4).unwrap();
        let fail_at = round % 7;
        let mut refused = 0;
        for i in 0..12usize {
            let r = group.spawn(format!("r{round}-t{i}"), move |ctx| {
                if i == fail_at {
                    if i % 2 == 0 {
                        return Err(i);
                    }
                    panic!("task {i} panicked");
                }
                ctx.sleep(Duration::from_micros(200)).map_err(|_| i)?;
                Ok(i)
            });
            if r.is_err() {
                refused += 1;
            }
        }
        let err = group.wait().unwrap_err();
        assert_eq!(err.task(), format!("r{round}-t{fail_at}"), "{err:?}");
        assert!(refused <= 12);
    }
    leaks.assert_none();
}
