//! Black-box tests of the `quiesce serve` process itself: the threads it
//! runs (every one the library's, named).

mod support;

use std::time::Duration;

use support::*;

/// The names `serve` gives its threads: the library's own
/// (`quiesce-signals`, `quiesce-timer`), one per supervised service, the
/// store's sync thread, the HTTP server's and the analysis pool's.
fn known(name: &str) -> bool {
    const FIXED: &[&str] = &[
        "quiesce-signals",
        "quiesce-timer",
        "store",
        "store-sync",
        "pipeline",
        "scheduler",
        "intake",
        "http-accept",
    ];
    let numbered = |prefix: &str| {
        name.strip_prefix(prefix)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    FIXED.contains(&name) || numbered("http-") || numbered("analysis-")
}

/// Issue 18: every thread the binary starts is the library's, so each one
/// has a name of its own.
#[test]
fn every_thread_of_a_running_serve_is_named() {
    let dir = TempDir::new("threads");
    let mut serve = Serve::start(dir.path(), &["--workers", "2", "--http-threads", "4"]);
    let tasks = std::fs::read_dir(format!("/proc/{}/task", serve.pid())).expect("read /proc");
    let mut names: Vec<String> = tasks
        .map(|t| {
            let path = t.expect("a task").path().join("comm");
            std::fs::read_to_string(path)
                .expect("read comm")
                .trim()
                .to_string()
        })
        .collect();
    names.sort();
    // A thread started without a name takes its creator's (Linux copies
    // `comm`): from main it would be a second "quiesce", from any other
    // thread a duplicate. So: all names distinct, and all known.
    let mut distinct = names.clone();
    distinct.dedup();
    assert_eq!(distinct, names, "two threads share a name");
    let main = names.iter().filter(|n| *n == "quiesce").count();
    assert_eq!(
        main, 1,
        "only the main thread goes by the process's name: {names:?}"
    );
    let unknown: Vec<&String> = names
        .iter()
        .filter(|n| *n != "quiesce" && !known(n))
        .collect();
    assert!(
        unknown.is_empty(),
        "threads nobody named: {unknown:?} in {names:?}"
    );
    for expected in [
        "store",
        "store-sync",
        "pipeline",
        "scheduler",
        "intake",
        "http-accept",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "no {expected} in {names:?}"
        );
    }
    assert_eq!(
        names.iter().filter(|n| n.starts_with("analysis-")).count(),
        2
    );
    assert_eq!(
        names
            .iter()
            .filter(|n| n.starts_with("http-") && *n != "http-accept")
            .count(),
        4
    );
    assert_graceful(&serve.terminate(Duration::from_secs(30)));
}
