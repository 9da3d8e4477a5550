//! Black-box crash tests of `quiesce serve`: SIGKILL at random moments
//! under load, several rounds on the same data directory, and a second
//! SIGTERM that ends a slow stop at once. After each restart, the SQLite
//! file itself must show every report that was answered 202 processed
//! exactly once, and pass `PRAGMA integrity_check`.

mod support;

use std::collections::HashSet;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use support::*;

const MARGIN: Duration = Duration::from_secs(20);

/// After a (re)start: waits until nothing is queued, then checks the file.
/// Every report answered 202 is processed, once, on its first counted
/// attempt; every row is a report that was sent; the file is sound.
fn check_after_restart(
    dir: &Path,
    accepted: &HashSet<String>,
    sent_unanswered: &HashSet<String>,
    round: usize,
) {
    let rows = wait_none_queued(dir, Duration::from_secs(30));
    assert_eq!(integrity(dir), "ok", "round {round}");
    for id in accepted {
        let row = rows
            .get(id)
            .unwrap_or_else(|| panic!("round {round}: {id} got 202 and was lost"));
        assert_eq!(row.status, "processed", "round {round}: {id}: {row:?}");
        assert!(row.has_result, "round {round}: {id}: {row:?}");
        assert_eq!(
            row.attempts, 1,
            "round {round}: {id} processed once: {row:?}"
        );
    }
    for (id, row) in &rows {
        assert!(
            accepted.contains(id) || sent_unanswered.contains(id),
            "round {round}: {id} is stored but was never sent or was refused"
        );
        assert_eq!(row.status, "processed", "round {round}: {id}: {row:?}");
    }
    let copies = copies(dir);
    assert!(
        copies.values().all(|&n| n == 1),
        "round {round}: stored twice: {:?}",
        copies.iter().filter(|&(_, &n)| n != 1).collect::<Vec<_>>()
    );
}

#[test]
fn sigkill_at_random_moments_under_load_loses_and_duplicates_nothing() {
    let _heavy = heavy();
    let started = Instant::now();
    let dir = TempDir::new("sigkill");
    let mut rng = Rng::new("sigkill");
    let mut accepted: HashSet<String> = HashSet::new();
    // Sent without an answer (the kill came first): stored or not, both
    // are right; if stored, they must be processed like the others.
    let mut unanswered: HashSet<String> = HashSet::new();
    let rounds = 8;
    for round in 0..rounds {
        let mut serve = Serve::start(dir.path(), &[]);
        if round > 0 {
            check_after_restart(dir.path(), &accepted, &unanswered, round);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let clients = run_load(
            serve.addr,
            &format!("k{round}"),
            3,
            &stop,
            100_000,
            Instant::now() + Duration::from_secs(30),
            false,
        );
        let after = Duration::from_millis(rng.range(20, 900));
        thread::sleep(after);
        let exit = serve.kill9();
        assert_eq!(exit.status.signal(), Some(9), "round {round}: {exit:?}");
        stop.store(true, Ordering::SeqCst);
        let mut round_accepted = 0;
        for client in clients {
            let load = client.join().expect("a load client");
            assert!(load.other.is_empty(), "round {round}: {:?}", load.other);
            round_accepted += load.accepted.len();
            accepted.extend(load.accepted);
            accepted.extend(load.duplicates);
            unanswered.extend(load.unknown);
            unanswered.extend(load.unavailable);
        }
        println!(
            "round {round}: killed after {after:?} of load; {round_accepted} accepted this round, \
             {} in all",
            accepted.len()
        );
    }
    let mut serve = Serve::start(dir.path(), &[]);
    check_after_restart(dir.path(), &accepted, &unanswered, rounds);
    serve.stop_ok(Duration::from_secs(25) + MARGIN);
    assert_eq!(integrity(dir.path()), "ok", "after the last, graceful stop");
    assert!(!accepted.is_empty());
    println!("{rounds} SIGKILL rounds in {:?}", started.elapsed());
}

#[test]
fn a_second_sigterm_exits_at_once_and_loses_nothing() {
    // Jobs stuck in an analyzer that never answers make the stop slow (the
    // pipeline waits for them up to its share of a 30 s deadline); a second
    // SIGTERM ends the process at once, with 128 + 15.
    let analyzer = SilentAnalyzer::start();
    let url = analyzer.url();
    let dir = TempDir::new("second-signal");
    let mut serve = Serve::start(
        dir.path(),
        &[
            "--analyzer-url",
            &url,
            "--job-timeout",
            "60s",
            "--workers",
            "2",
            "--shutdown-timeout",
            "30s",
        ],
    );
    let ids: Vec<String> = (0..4).map(|i| format!("ss-{i}")).collect();
    for id in &ids {
        assert_eq!(
            post_json(serve.addr, &report(id, "P-1", "s", &[("q1", 1)])).status,
            202
        );
    }
    let give_up = Instant::now() + Duration::from_secs(20);
    while analyzer.connections.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < give_up, "the analyzer was never called");
        thread::sleep(Duration::from_millis(10));
    }
    serve.signal("TERM");
    // Wait until the stop is under way (intake gone), then signal again.
    let give_up = Instant::now() + Duration::from_secs(20);
    while !matches!(Conn::open(serve.addr), Err(f) if f.kind == FailKind::Refused) {
        assert!(Instant::now() < give_up, "intake never stopped");
        thread::sleep(Duration::from_millis(10));
    }
    assert!(
        serve.running(),
        "the pipeline is still waiting for its stuck jobs"
    );
    let exit = serve.terminate(MARGIN);
    assert_eq!(exit.code(), Some(143), "{}\n{}", exit.status, exit.log);
    println!("exited {:?} after the second SIGTERM", exit.elapsed);

    // Nothing lost: the next start, with an analyzer that answers,
    // processes every report once.
    let working = ScriptedAnalyzer::start(vec![(200, r#"{"ok":true}"#.into())]);
    let url = working.url();
    let mut serve = Serve::start(dir.path(), &["--analyzer-url", &url]);
    let accepted: HashSet<String> = ids.iter().cloned().collect();
    check_after_restart(dir.path(), &accepted, &HashSet::new(), 1);
    serve.stop_ok(Duration::from_secs(25) + MARGIN);
    assert_eq!(integrity(dir.path()), "ok");
}
