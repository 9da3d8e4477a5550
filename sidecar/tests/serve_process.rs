//! Black-box tests of the `quiesce serve` process itself: the threads it
//! runs (every one the library's, named) and its data directory (one
//! process per directory; no stale address after a stop).

mod support;

use std::time::Duration;

use support::*;

/// The threads a running `serve` always has, one each.
const ALWAYS: &[&str] = &[
    "store",
    "store-sync",
    "pipeline",
    "scheduler",
    "intake",
    "http-accept",
    "http-poll",
    "signals-other",
];

/// The names `serve` gives its threads: the library's own
/// (`quiesce-signals`, `quiesce-timer`), one per supervised service, the
/// store's sync thread, the HTTP server's and the analysis pool's.
fn known(name: &str) -> bool {
    const FIXED: &[&str] = &["quiesce-signals", "quiesce-timer"];
    let numbered = |prefix: &str| {
        name.strip_prefix(prefix)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    FIXED.contains(&name) || ALWAYS.contains(&name) || numbered("http-") || numbered("analysis-")
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
    for expected in ALWAYS {
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
            .filter(|n| n.starts_with("http-") && *n != "http-accept" && *n != "http-poll")
            .count(),
        4
    );
    assert_graceful(&serve.terminate(Duration::from_secs(30)));
}

/// Issue 11, item 6: with SQLite, a second `serve` on the same data
/// directory refuses to start, clearly, and leaves the first one alone;
/// after a stop, no `listen.addr` points at a closed port.
#[test]
fn a_second_serve_on_the_same_data_dir_is_refused() {
    let dir = TempDir::new("lock");
    let data = dir.path().to_str().expect("a UTF-8 path");
    let mut first = Serve::start(dir.path(), &[]);
    let (status, stderr) = run_to_exit(
        &["serve", "--listen", "127.0.0.1:0", "--data-dir", data],
        Duration::from_secs(30),
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("in use by another quiesce serve")
            && stderr.contains(&format!("pid {}", first.pid())),
        "{stderr}"
    );
    // The first one did not notice.
    let answer = get(first.addr, "/healthz");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(dir.path().join("listen.addr").exists());
    assert_graceful(&first.terminate(Duration::from_secs(30)));
    assert!(
        !dir.path().join("listen.addr").exists(),
        "a stale listen.addr was left"
    );
    // Released with the process: the next one starts.
    let mut second = Serve::start(dir.path(), &[]);
    assert_graceful(&second.terminate(Duration::from_secs(30)));
}

/// Issue 12, finding 7: SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 and SIGALRM used to
/// kill `serve` at once, silently, with an exit code outside the README's
/// table. Now each is logged and ignored, and a SIGTERM still stops it
/// gracefully.
#[test]
fn signals_that_would_kill_the_process_are_logged_and_ignored() {
    let dir = TempDir::new("other-signals");
    let mut serve = Serve::start(dir.path(), &[]);
    for sig in ["HUP", "QUIT", "USR1", "USR2", "ALRM"] {
        serve.signal(sig);
        let answer = get(serve.addr, "/healthz");
        assert_eq!(answer.status, 200, "after SIG{sig}: {answer:?}");
        assert!(serve.running(), "SIG{sig} ended serve:\n{}", serve.log());
    }
    let exit = serve.terminate(Duration::from_secs(30));
    assert_graceful(&exit);
    for sig in ["SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM"] {
        assert!(
            exit.log.contains(&format!("received {sig}: ignored")),
            "{sig} not logged:\n{}",
            exit.log
        );
    }
}

/// The mode bits of `path` (permissions only).
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Issue 13: the data directory and every file holding patient data are
/// private to the user `serve` runs as (they were 0755 / 0644: any local
/// user could read every report with sqlite3), and a directory left open
/// by an earlier run is tightened.
#[test]
fn the_data_dir_and_its_files_are_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = TempDir::new("private");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut serve = Serve::start(&data, &["--summary-interval", "1s"]);
    let answer = post_json(serve.addr, &report("private-1", "P-7", "s", &[("q1", 2)]));
    assert_eq!(answer.status, 202, "{answer:?}");
    let summaries = data.join("summaries");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::fs::read_dir(&summaries).map_or(true, |mut d| d.next().is_none()) {
        assert!(
            std::time::Instant::now() < deadline,
            "no summary was written"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(mode(&data), 0o700, "the data directory");
    assert_eq!(mode(&summaries), 0o700, "the summaries directory");
    for name in [
        "quiesce.db",
        "quiesce.db-wal",
        "quiesce.db-shm",
        "listen.addr",
        "quiesce.lock",
    ] {
        assert_eq!(mode(&data.join(name)), 0o600, "{name}");
    }
    for summary in std::fs::read_dir(&summaries).unwrap() {
        let path = summary.unwrap().path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
    assert_graceful(&serve.terminate(Duration::from_secs(30)));
}

/// Issue 16: summary files used to pile up for ever (one a second at
/// `--summary-interval 1s`), and the first summary's period started in
/// 1970. Now only the newest `--summary-keep` files stay, and the first
/// period starts at the first report.
#[test]
fn old_summary_files_are_removed_and_the_first_period_starts_at_the_first_report() {
    let dir = TempDir::new("summaries");
    let mut serve = Serve::start(
        dir.path(),
        &["--summary-interval", "50ms", "--summary-keep", "3"],
    );
    let answer = post_json(serve.addr, &report("sum-1", "P-1", "s", &[("q1", 1)]));
    assert_eq!(answer.status, 202, "{answer:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while serve.log().matches("summary written to").count() < 8 {
        assert!(
            std::time::Instant::now() < deadline,
            "too few summaries:\n{}",
            serve.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_graceful(&serve.terminate(Duration::from_secs(30)));
    let files = std::fs::read_dir(dir.join("summaries")).unwrap().count();
    assert_eq!(files, 3, "the newest three summary files stay");
    let db = open_db(dir.path());
    let (first_start, first_end, total): (i64, i64, i64) = db
        .query_row(
            "SELECT (SELECT period_start FROM summaries ORDER BY id LIMIT 1),
                    (SELECT period_end FROM summaries ORDER BY id LIMIT 1),
                    (SELECT COUNT(*) FROM summaries)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert!(total >= 8, "the database keeps every summary: {total}");
    let year_2000_ms = 946_684_800_000;
    assert!(
        first_start > year_2000_ms,
        "the first period starts in 1970: {first_start}"
    );
    assert!(first_start <= first_end);
}

/// Issue 13, item 4: a database that others could read is not tightened in
/// silence: `serve` refuses to start and prints the `chmod` that fixes it;
/// after the fix it starts.
#[test]
fn a_database_readable_by_others_is_refused_with_the_fix() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = TempDir::new("exposed");
    let data = dir.join("data");
    let mut serve = Serve::start(&data, &[]);
    serve.stop_ok(Duration::from_secs(30));
    let db = data.join("quiesce.db");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let data_arg = data.to_str().unwrap();
    let (status, log) = run_to_exit(
        &["serve", "--listen", "127.0.0.1:0", "--data-dir", data_arg],
        Duration::from_secs(30),
    );
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("readable by group or others"), "{log}");
    assert!(log.contains("(mode 644)"), "{log}");
    assert!(
        log.contains(&format!("chmod 600 {}*", db.display())),
        "{log}"
    );
    assert_eq!(mode(&db), 0o644, "left as it was, for a person to look at");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut serve = Serve::start(&data, &[]);
    serve.stop_ok(Duration::from_secs(30));
}
