//! Black-box test of issue 12, finding 1: idle connections cost no
//! handler thread. Hundreds of connections that send nothing, keep-alive
//! clients that went quiet after one request, and heads left half sent,
//! far more than `--http-threads`, while a probe and a report still get
//! through; each costs one file descriptor.

mod support;

use std::time::{Duration, Instant};

use support::*;

/// The idle timeout of the server under test: the probe must be answered
/// before it, i.e. not by a handler freed when idle connections time out.
const IDLE_TIMEOUT: Duration = Duration::from_secs(20);

#[test]
fn idle_connections_do_not_hold_the_handler_threads() {
    let _heavy = heavy();
    let dir = TempDir::new("idle");
    let mut serve = Serve::start(
        dir.path(),
        &[
            "--http-threads",
            "64",
            "--max-connections",
            "1000",
            "--idle-timeout",
            "20s",
            "--header-timeout",
            "20s",
        ],
    );
    let addr = serve.addr;
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", serve.pid()))
            .expect("the server's fds")
            .count()
    };
    let fds_before = fds();
    let opened = Instant::now();
    // 300 connections that never send a byte...
    let silent: Vec<Conn> = (0..300)
        .map(|i| Conn::open(addr).unwrap_or_else(|f| panic!("silent connection {i}: {f:?}")))
        .collect();
    // ...100 keep-alive clients served once, then quiet...
    let mut quiet = hold_handlers(addr, 100);
    // ...and 50 that sent part of a request head and stopped.
    let mut partial: Vec<Conn> = (0..50)
        .map(|i| {
            let mut conn =
                Conn::open(addr).unwrap_or_else(|f| panic!("partial connection {i}: {f:?}"));
            conn.write(b"GET /livez HTTP/1.1\r\nHo")
                .expect("write half a head");
            conn
        })
        .collect();
    // Before the fix, 64 of these held all 64 handlers until the idle
    // timeout and the probe waited past the client's IO timeout.
    let probe = Conn::open(addr)
        .expect("connect the probe")
        .send(&request("GET", "/livez", &[], None, false))
        .expect("GET /livez answered while 450 connections are open");
    assert_eq!(probe.status, 200);
    assert!(
        opened.elapsed() < IDLE_TIMEOUT,
        "answered only after {:?}: once idle connections timed out",
        opened.elapsed()
    );
    // One descriptor per connection (the socket is shared, not
    // duplicated; three each before): the 450 accepted before the probe,
    // plus the database files the handler threads that served opened for
    // their readers (40 here).
    let grown = fds() - fds_before;
    assert!(
        (450..=600).contains(&grown),
        "{grown} descriptors for 450 connections"
    );
    let stored = post_json(addr, &report("IDLE-1", "P-IDLE", "SITE-1", &[("q1", 1)]));
    assert_eq!(stored.status, 202, "{}", stored.text());
    // The waiting connections were kept, not dropped: a quiet keep-alive
    // client is served again, and a half-sent head completed is answered.
    let again = quiet[0]
        .send(&request("GET", "/livez", &[], None, true))
        .expect("the quiet client served again");
    assert_eq!(again.status, 200);
    partial[0]
        .write(b"st: x\r\nConnection: close\r\n\r\n")
        .expect("finish the head");
    let finished = partial[0]
        .read_response()
        .expect("the completed head answered");
    assert_eq!(finished.status, 200);
    assert!(
        opened.elapsed() < IDLE_TIMEOUT,
        "all of it took {:?}, past the idle timeout",
        opened.elapsed()
    );
    drop((silent, quiet, partial));
    serve.stop_ok(Duration::from_secs(40));
}
