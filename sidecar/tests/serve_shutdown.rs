//! Black-box tests of `quiesce serve`'s graceful stop: real SIGTERM sent
//! with `kill` to the real binary, real HTTP on 127.0.0.1, the real SQLite
//! file read afterwards. Readiness and the drain, 503 once intake stops,
//! SIGTERM under load with nothing lost or stored twice, and a stop that
//! meets its deadline even with an analyzer that never answers.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

/// Generous: a loaded machine running a debug build.
const MARGIN: Duration = Duration::from_secs(20);

#[test]
fn every_graceful_stop_exits_zero() {
    let dir = TempDir::new("exit-zero");
    // The race is between the store noticing its producers are gone and the
    // supervisor cancelling it: busy threads make it show more often, as a
    // loaded machine does.
    let spin = Arc::new(AtomicBool::new(true));
    let spinners: Vec<_> = (0..2)
        .map(|_| {
            let spin = spin.clone();
            thread::spawn(move || {
                let mut x = 0u64;
                while spin.load(Ordering::Relaxed) {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                }
                x
            })
        })
        .collect();
    let mut codes = Vec::new();
    for round in 0..30 {
        let mut serve = Serve::start(dir.path(), &[]);
        let id = format!("ez-{round}");
        assert_eq!(
            post_json(serve.addr, &report(&id, "P-1", "s", &[("q1", 1)])).status,
            202
        );
        assert_eq!(
            wait_settled(serve.addr, &id, Duration::from_secs(20))["status"],
            "processed"
        );
        let exit = serve.terminate(Duration::from_secs(25) + MARGIN);
        codes.push((
            exit.code(),
            exit.log
                .lines()
                .find(|l| l.contains("stop requested"))
                .map(str::to_owned),
        ));
    }
    spin.store(false, Ordering::Relaxed);
    for spinner in spinners {
        let _ = spinner.join();
    }
    let bad: Vec<_> = codes.iter().filter(|(code, _)| *code != Some(0)).collect();
    assert!(
        bad.is_empty(),
        "{} of {} graceful stops did not exit 0: {bad:#?}",
        bad.len(),
        codes.len()
    );
}

#[test]
fn readiness_turns_503_during_the_drain_then_intake_answers_503_with_retry_after() {
    // B's POST is read in full only once A is closed by the stop, at which
    // point intake is stopping and must answer it 503: B sends all of it
    // but its body's last byte before the stop, the rest after. (An idle
    // connection holds no handler thread, so B cannot be made to wait
    // behind A for one; its body being read holds one of the two.)
    let dir = TempDir::new("drain");
    let mut serve = Serve::start(
        dir.path(),
        &[
            "--http-threads",
            "2",
            "--max-connections",
            "4",
            "--drain-delay",
            "2s",
            "--shutdown-timeout",
            "20s",
        ],
    );
    let addr = serve.addr;
    let mut a = Conn::open(addr).expect("connect A");
    let ready = a
        .send(&request("GET", "/readyz", &[], None, true))
        .expect("/readyz");
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.json(), json!({"status": "ready"}));

    let mut b = Conn::open(addr).expect("connect B");
    let late = report("late-1", "P-1", "site-a", &[("q1", 1)]).to_string();
    let late = post_request(late.as_bytes(), true);
    let (late_start, late_end) = late.split_at(late.len() - 1);
    b.write(late_start).expect("B's request but its last byte");

    serve.signal("TERM");
    // Readiness turns 503 at once, while everything is still served.
    let give_up = Instant::now() + Duration::from_secs(10);
    let not_ready = loop {
        let response = a
            .send(&request("GET", "/readyz", &[], None, true))
            .expect("/readyz during the drain");
        if response.status == 503 {
            break response;
        }
        assert_eq!(response.status, 200);
        assert!(Instant::now() < give_up, "/readyz never turned 503");
        thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(not_ready.json(), json!({"status": "not ready"}));
    assert!(
        !not_ready.closes(),
        "during the drain the connection stays open: {:?}",
        not_ready.headers
    );
    let live = a
        .send(&request("GET", "/livez", &[], None, true))
        .expect("/livez during the drain");
    assert_eq!(live.status, 200, "live while draining");
    // During the drain, reports are still taken in (by design: the load
    // balancer may still send some).
    let during = report("drain-1", "P-1", "site-a", &[("q1", 2)]).to_string();
    let accepted = a
        .send(&post_request(during.as_bytes(), true))
        .expect("POST during the drain");
    assert_eq!(accepted.status, 202, "{}", accepted.text());

    // The drain ends; intake stops: A, idle, is closed after the grace...
    let bytes = a
        .wait_closed(Duration::from_secs(10))
        .expect("the idle keep-alive connection is closed at the stop");
    assert!(bytes.is_empty(), "nothing unasked for: {bytes:?}");
    b.write(late_end).expect("B's last byte");
    // ...and B, read only now, gets 503, Retry-After, Connection: close.
    let response = b.read_response().unwrap_or_else(|f| {
        panic!("B got no answer: {f:?}\n{}", serve.log());
    });
    assert_error(
        &response,
        503,
        None,
        "a POST read after intake began to stop",
    );
    assert!(
        response
            .header("retry-after")
            .is_some_and(|s| s.parse::<u64>().is_ok_and(|s| s > 0)),
        "{:?}",
        response.headers
    );
    assert!(response.closes(), "{:?}", response.headers);

    let exit = serve.wait_exit(Duration::from_secs(20) + MARGIN);
    assert_graceful(&exit);
    assert!(
        exit.elapsed >= Duration::from_secs(2),
        "the drain delay is honoured: {exit:?}"
    );
    // The listener is gone with the process.
    assert!(
        matches!(Conn::open(addr), Err(f) if f.kind == FailKind::Refused),
        "nobody listens any more"
    );
    let (rows, _) = rows(dir.path());
    assert!(rows.contains_key("drain-1"), "{rows:?}");
    assert!(
        !rows.contains_key("late-1"),
        "a 503 report was stored: {rows:?}"
    );
}

#[test]
fn a_request_in_progress_at_the_stop_is_answered() {
    let dir = TempDir::new("in-progress");
    let mut serve = Serve::start(dir.path(), &[]);
    let addr = serve.addr;
    let body = report("slow-1", "P-1", "site-a", &[("q1", 1)]).to_string();
    let raw = post_request(body.as_bytes(), true);
    let split = raw.len() - 10;
    let mut conn = Conn::open(addr).expect("connect");
    conn.write(&raw[..split]).expect("the first part");
    thread::sleep(Duration::from_millis(100));
    serve.signal("TERM");
    // Wait until intake has stopped accepting: a new connection is refused
    // (or answered 503 from the listen queue).
    let give_up = Instant::now() + Duration::from_secs(10);
    loop {
        match Conn::open(addr).and_then(|mut c| c.send(&request("GET", "/livez", &[], None, false)))
        {
            Err(f) if f.kind == FailKind::Refused => break,
            Ok(r) if r.status == 503 => break,
            _ => {}
        }
        assert!(Instant::now() < give_up, "intake never stopped accepting");
        thread::sleep(Duration::from_millis(5));
    }
    // A client a little slow, but well within the body timeout (30 s) and
    // the stop's budget: its request was in progress when the stop began.
    thread::sleep(Duration::from_millis(500));
    let _ = conn.write(&raw[split..]);
    let outcome = conn.read_response();
    let exit = serve.wait_exit(Duration::from_secs(25) + MARGIN);
    assert_graceful(&exit);
    match outcome {
        Ok(response) => assert!(
            response.status == 202 || response.status == 503,
            "{} {}",
            response.status,
            response.text()
        ),
        Err(f) => panic!(
            "a request in progress at the stop got no answer: {f:?}\n{}",
            exit.log
        ),
    }
}

#[test]
fn sigterm_under_load_answers_every_request_and_loses_nothing() {
    let _heavy = heavy();
    let dir = TempDir::new("sigterm-load");
    let mut serve = Serve::start(dir.path(), &["--shutdown-timeout", "20s"]);
    let addr = serve.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let clients = run_load(
        addr,
        "t",
        4,
        &stop,
        100_000,
        Instant::now() + Duration::from_secs(40),
        true,
    );
    // Let the load run, and stop in the middle of it.
    thread::sleep(Duration::from_millis(1500));
    serve.signal("TERM");
    let exit = serve.wait_exit(Duration::from_secs(20) + MARGIN);
    assert_graceful(&exit);
    assert!(
        exit.elapsed < Duration::from_secs(20) + MARGIN,
        "{:?}",
        exit.elapsed
    );
    let loads: Vec<Load> = clients
        .into_iter()
        .map(|c| c.join().expect("a load client"))
        .collect();

    let mut accepted = HashSet::new();
    let mut answered_other = HashSet::new();
    let mut unavailable = HashSet::new();
    let (mut sent, mut retried, mut reset_at_close) = (0, 0, 0);
    let mut violations = Vec::new();
    for load in &loads {
        sent += load.sent;
        retried += load.retried;
        reset_at_close += load.reset_at_close;
        violations.extend(load.violations.iter().cloned());
        assert!(
            load.other.is_empty(),
            "unexpected answers: {:?}",
            load.other
        );
        assert_eq!(load.missing_retry_after, 0, "503 without Retry-After");
        assert!(
            load.refused,
            "every client ends on a refused connection (the server gone); one ended after {} \
             request(s), violations {:?}",
            load.sent, load.violations
        );
        accepted.extend(load.accepted.iter().cloned());
        answered_other.extend(load.duplicates.iter().cloned());
        unavailable.extend(load.unavailable.iter().cloned());
    }
    println!(
        "SIGTERM under load: {sent} request(s) sent, {} accepted, {} duplicate, {} answered 503, \
         {retried} resent after a reused connection closed, {reset_at_close} fresh connection(s) \
         reset as the listener closed, stopped in {:?}",
        accepted.len(),
        answered_other.len(),
        unavailable.len(),
        exit.elapsed
    );
    assert!(
        violations.is_empty(),
        "requests that got no answer (a reset or a close after the request was sent on a \
         fresh connection, a partial answer, a timeout): {violations:#?}\n{}",
        exit.log
    );
    assert!(!accepted.is_empty(), "the load got nothing accepted");

    // The file after the stop: whole, checkpointed, each report once.
    assert_eq!(integrity(dir.path()), "ok");
    let wal = dir.path().join("quiesce.db-wal");
    let wal_len = std::fs::metadata(&wal).map_or(0, |m| m.len());
    assert_eq!(wal_len, 0, "the WAL is checkpointed at the stop");
    let (before, count) = rows(dir.path());
    assert_eq!(count, before.len());
    for id in &accepted {
        assert!(before.contains_key(id), "{id} got 202 and is not stored");
    }
    for id in before.keys() {
        assert!(
            accepted.contains(id) || answered_other.contains(id),
            "{id} is stored but was never answered 202 or 200"
        );
        assert!(!unavailable.contains(id), "{id} answered 503 yet stored");
    }

    // After a restart and a short wait, every accepted report is
    // processed, exactly once.
    let mut serve = Serve::start(dir.path(), &[]);
    let after = wait_none_queued(dir.path(), Duration::from_secs(30));
    for id in &accepted {
        let row = &after[id];
        assert_eq!(row.status, "processed", "{id}: {row:?}");
        assert!(row.has_result, "{id}: {row:?}");
        assert!(row.attempts >= 1, "{id}: {row:?}");
    }
    assert!(copies(dir.path()).values().all(|&n| n == 1));
    let sample = accepted.iter().next().expect("one accepted");
    let got = get(serve.addr, &format!("/v1/reports/{sample}")).json();
    assert_eq!(got["status"], "processed", "{got}");
    serve.stop_ok(Duration::from_secs(25) + MARGIN);
    assert_eq!(integrity(dir.path()), "ok");
}

#[test]
fn a_silent_analyzer_does_not_hold_up_the_stop() {
    // Jobs stuck in an analyzer call that would last a minute: the stop
    // cancels them within its deadline, and their reports stay queued
    // (not failed, no attempt counted) for the next start.
    let analyzer = SilentAnalyzer::start();
    let url = analyzer.url();
    let dir = TempDir::new("stuck-analyzer");
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
            "10s",
        ],
    );
    for i in 0..6 {
        let response = post_json(
            serve.addr,
            &report(&format!("st-{i}"), "P-1", "s", &[("q1", 1)]),
        );
        assert_eq!(response.status, 202);
    }
    // Wait until both workers are inside an analyzer call.
    let give_up = Instant::now() + Duration::from_secs(20);
    while analyzer.connections.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < give_up, "the analyzer was never called");
        thread::sleep(Duration::from_millis(10));
    }
    let exit = serve.terminate(Duration::from_secs(10) + MARGIN);
    assert_graceful(&exit);
    assert!(
        exit.elapsed < Duration::from_secs(10) + MARGIN,
        "{:?}",
        exit.elapsed
    );
    println!(
        "stopped in {:?} with two analyzer calls stuck",
        exit.elapsed
    );
    let (rows, _) = rows(dir.path());
    assert_eq!(rows.len(), 6);
    for (id, row) in &rows {
        assert_eq!(row.status, "queued", "{id}: {row:?}");
        assert_eq!(row.attempts, 0, "{id}: a cancelled attempt is not counted");
    }
    // The next start, with an analyzer that answers, processes them.
    let working = ScriptedAnalyzer::start(vec![(200, r#"{"risk":"low"}"#.into())]);
    let url = working.url();
    let mut serve = Serve::start(dir.path(), &["--analyzer-url", &url]);
    let rows = wait_none_queued(dir.path(), Duration::from_secs(30));
    for (id, row) in &rows {
        assert_eq!(row.status, "processed", "{id}: {row:?}");
        assert_eq!(row.attempts, 1, "{id}: {row:?}");
    }
    let got = get(serve.addr, "/v1/reports/st-0").json();
    assert_eq!(got["result"]["analysis"], json!({"risk": "low"}), "{got}");
    serve.stop_ok(Duration::from_secs(25) + MARGIN);
}

#[test]
fn clients_connecting_during_the_stop_do_not_hold_it_up() {
    let _heavy = heavy();
    let dir = TempDir::new("hammer");
    let mut serve = Serve::start(
        dir.path(),
        &[
            "--shutdown-timeout",
            "10s",
            "--http-threads",
            "2",
            "--max-connections",
            "4",
        ],
    );
    let addr = serve.addr;
    // The server at its connection limit: two keep-alive connections hold
    // the two handlers, two more wait for one.
    let mut held = hold_handlers(addr, 2);
    held.extend((0..2).map(|_| Conn::open(addr).expect("connect")));
    let give_up = Instant::now() + Duration::from_secs(30);
    // Eight clients, each opening a connection every ~25 ms, sending a
    // request and closing 300 ms later whether answered or not: a steady
    // arrival of ordinary clients, independent of how fast the server
    // answers. Each is answered 503 by the accept thread, which lingers
    // (up to 50 ms) for the client to close: 20 a second at most, fewer
    // than arrive. After SIGTERM the same goes on in drain_backlog, whose
    // "answer what is queued, then close the listener" never ends.
    let hammers: Vec<_> = (0..8)
        .map(|_| {
            thread::spawn(move || {
                let mut open: std::collections::VecDeque<(Instant, Conn)> =
                    std::collections::VecDeque::new();
                let mut opened = 0usize;
                while Instant::now() < give_up {
                    match Conn::open(addr) {
                        Ok(mut conn) => {
                            let _ = conn.write(&request("GET", "/livez", &[], None, false));
                            open.push_back((Instant::now(), conn));
                            opened += 1;
                        }
                        Err(f) if f.kind == FailKind::Refused => return (opened, true),
                        Err(_) => {}
                    }
                    while open
                        .front()
                        .is_some_and(|(at, _)| at.elapsed() > Duration::from_millis(300))
                    {
                        open.pop_front();
                    }
                    thread::sleep(Duration::from_millis(25));
                }
                (opened, false)
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(500));
    let exit = serve.terminate(Duration::from_secs(10) + MARGIN);
    let ended: Vec<(usize, bool)> = hammers
        .into_iter()
        .map(|h| h.join().expect("a client"))
        .collect();
    drop(held);
    // With the bug: exit 3, "service intake is still running at its stop
    // deadline", the accept thread still in drain_backlog.
    assert_graceful(&exit);
    assert!(ended.iter().all(|&(_, refused)| refused), "{ended:?}");
}

#[test]
fn sigint_stops_gracefully_too() {
    let dir = TempDir::new("sigint");
    let mut serve = Serve::start(dir.path(), &[]);
    assert_eq!(
        post_json(serve.addr, &report("si-1", "P-1", "s", &[("q1", 1)])).status,
        202
    );
    serve.signal("INT");
    let exit = serve.wait_exit(Duration::from_secs(25) + MARGIN);
    assert_graceful(&exit);
    assert!(exit.log.contains("SIGINT"), "{}", exit.log);
    let (rows, _) = rows(dir.path());
    assert!(rows.contains_key("si-1"));
}

#[test]
fn a_port_already_taken_or_a_bad_option_exits_1() {
    let dir = TempDir::new("taken");
    let mut serve = Serve::start(dir.path(), &[]);
    let other = TempDir::new("taken-2");
    let listen = serve.addr.to_string();
    let data_dir = other.path().to_string_lossy().into_owned();
    let (status, stderr) = run_to_exit(
        &["serve", "--listen", &listen, "--data-dir", &data_dir],
        Duration::from_secs(30),
    );
    assert_eq!(status.code(), Some(1), "{status}\n{stderr}");
    assert!(
        stderr.contains(&listen),
        "the log names the address:\n{stderr}"
    );
    // The first one is unaffected.
    assert_eq!(get(serve.addr, "/readyz").status, 200);
    serve.stop_ok(Duration::from_secs(25) + MARGIN);

    for bad in [
        &["--workers", "0"][..],
        &["--max-attempts", "0"],
        &["--drain-delay", "30s", "--shutdown-timeout", "10s"],
        &["--max-body", "3 parsecs"],
        &["--analyzer-url", "ftp://example.invalid/"],
        &["--analyzer-ca", "/nonexistent/ca.pem"],
    ] {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--data-dir", &data_dir];
        args.extend_from_slice(bad);
        let (status, stderr) = run_to_exit(&args, Duration::from_secs(30));
        assert_eq!(status.code(), Some(2), "{bad:?}: a usage error\n{stderr}");
        assert!(!stderr.trim().is_empty(), "{bad:?}: says why");
    }
}
