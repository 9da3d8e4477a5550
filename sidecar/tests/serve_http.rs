//! Black-box tests of `quiesce serve`'s HTTP/1.1 strictness (RFC 9112):
//! the real binary on 127.0.0.1, requests written as raw bytes on a
//! `TcpStream` (the support client is too polite to send them), answers
//! read to the end of the connection.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use support::*;

/// A server with a fresh data directory, removed at the end.
fn server(tag: &str) -> (TempDir, Serve) {
    let dir = TempDir::new(tag);
    let serve = Serve::start(dir.path(), &[]);
    (dir, serve)
}

/// What came back for raw bytes written on a fresh connection.
struct Raw {
    /// The status of the first answer (0 when there was none).
    status: u16,
    /// The first answer's head, up to its blank line.
    head: String,
    /// Every byte after the first answer's head.
    rest: Vec<u8>,
    /// The server closed the connection (rather than leaving it open for
    /// the whole read timeout).
    closed: bool,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Writes `raw`, then reads until the server closes or `wait` passes with
/// nothing more.
fn send_raw(addr: SocketAddr, raw: &[u8], wait: Duration) -> Raw {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(wait)).expect("read timeout");
    stream.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
    stream.write_all(raw).expect("write the request");
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let closed = loop {
        match stream.read(&mut chunk) {
            Ok(0) => break true,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            // A reset after the answer is a close too.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    let end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(got.len(), |p| p + 4);
    let head = String::from_utf8_lossy(&got[..end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Raw {
        status,
        head,
        rest: got[end..].to_vec(),
        closed,
    }
}

/// Long enough for any answer here; a connection the server should have
/// closed and did not shows up as `closed == false` after it.
const WAIT: Duration = Duration::from_secs(5);

#[test]
fn ambiguous_framing_is_400_and_closes() {
    let (_dir, mut serve) = server("http-framing");
    let addr = serve.addr;
    // Each is a request that a lenient reading would answer 200 (or
    // another status): GET /livez with a body framed doubtfully.
    let cases: [(&str, &[u8]); 10] = [
        (
            "two Transfer-Encoding headers",
            b"GET /livez HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
        ),
        (
            "Transfer-Encoding: chunked twice",
            b"GET /livez HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "a coding list: chunked, identity",
            b"GET /livez HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        ),
        (
            "Content-Length: +2",
            b"GET /livez HTTP/1.1\r\nHost: x\r\nContent-Length: +2\r\n\r\n{}",
        ),
        (
            "Content-Length: -1",
            b"GET /livez HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        ),
        (
            "Content-Length: 1 1",
            b"GET /livez HTTP/1.1\r\nHost: x\r\nContent-Length: 1 1\r\n\r\n{}",
        ),
        (
            "Content-Length: 2, 2",
            b"GET /livez HTTP/1.1\r\nHost: x\r\nContent-Length: 2, 2\r\n\r\n{}",
        ),
        (
            "two equal Content-Length headers",
            b"GET /livez HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
        ),
        (
            "Content-Length and Transfer-Encoding",
            b"GET /livez HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "Transfer-Encoding on HTTP/1.0",
            b"GET /livez HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
    ];
    for (what, raw) in cases {
        let answer = send_raw(addr, raw, WAIT);
        assert_eq!(answer.status, 400, "{what}: {}", answer.head);
        assert_eq!(
            answer.header("connection"),
            Some("close"),
            "{what}: {}",
            answer.head
        );
        assert!(answer.closed, "{what}: the connection stayed open");
    }
    // The strict reading refuses nothing well formed.
    let fine: [(&str, &[u8]); 3] = [
        (
            "Content-Length: 2",
            b"GET /livez HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
        ),
        (
            "Content-Length: 002",
            b"GET /livez HTTP/1.1\r\nHost: x\r\nContent-Length: 002\r\nConnection: close\r\n\r\n{}",
        ),
        (
            "Transfer-Encoding: Chunked",
            b"GET /livez HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\nConnection: close\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        ),
    ];
    for (what, raw) in fine {
        let answer = send_raw(addr, raw, WAIT);
        assert_eq!(answer.status, 200, "{what}: {}", answer.head);
    }
    serve.stop_ok(Duration::from_secs(40));
}

#[test]
fn host_is_required_once_on_http_1_1_and_absolute_targets_are_their_path() {
    let (_dir, mut serve) = server("http-host");
    let addr = serve.addr;
    for (what, raw) in [
        (
            "no Host",
            &b"GET /livez HTTP/1.1\r\nConnection: close\r\n\r\n"[..],
        ),
        (
            "two Hosts",
            b"GET /livez HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
        ),
    ] {
        let answer = send_raw(addr, raw, WAIT);
        assert_eq!(answer.status, 400, "{what}: {}", answer.head);
        assert!(answer.closed, "{what}: the connection stayed open");
    }
    // HTTP/1.0 needs no Host.
    let answer = send_raw(addr, b"GET /livez HTTP/1.0\r\n\r\n", WAIT);
    assert_eq!(answer.status, 200, "{}", answer.head);
    for target in [
        "http://127.0.0.1/livez",
        "HTTP://localhost:8080/livez?probe=1",
        "https://sidecar.example/livez",
    ] {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let answer = send_raw(addr, raw.as_bytes(), WAIT);
        assert_eq!(answer.status, 200, "{target}: {}", answer.head);
    }
    let answer = send_raw(
        addr,
        b"GET http://x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        WAIT,
    );
    assert_eq!(answer.status, 404, "the root path: {}", answer.head);
    serve.stop_ok(Duration::from_secs(40));
}

#[test]
fn head_answers_carry_no_body_but_get_s_length() {
    let (_dir, mut serve) = server("http-head");
    let addr = serve.addr;
    let get = send_raw(
        addr,
        b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        WAIT,
    );
    assert_eq!(get.status, 200, "{}", get.head);
    assert!(!get.rest.is_empty(), "GET has a body");
    for path in ["/livez", "/readyz", "/v1/reports"] {
        let raw = format!("HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let head = send_raw(addr, raw.as_bytes(), WAIT);
        assert_ne!(head.status, 0, "{path}: no answer");
        assert!(
            head.rest.is_empty(),
            "HEAD {path}: {} byte(s) of body after {}",
            head.rest.len(),
            head.head
        );
        assert!(head.closed, "HEAD {path}: the connection stayed open");
    }
    let head = send_raw(
        addr,
        b"HEAD /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        WAIT,
    );
    assert_eq!(
        head.header("content-length"),
        Some(get.rest.len().to_string().as_str()),
        "{}",
        head.head
    );
    // On a kept-alive connection the next answer follows the HEAD's head
    // directly: nothing of a body in between.
    let two = send_raw(
        addr,
        b"HEAD /livez HTTP/1.1\r\nHost: x\r\n\r\nGET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        WAIT,
    );
    assert_eq!(two.status, 200, "{}", two.head);
    assert!(
        two.rest.starts_with(b"HTTP/1.1 200 "),
        "after the HEAD answer: {:?}",
        String::from_utf8_lossy(&two.rest)
    );
    serve.stop_ok(Duration::from_secs(40));
}

#[test]
fn http_1_0_closes_unless_it_asked_for_keep_alive() {
    let (_dir, mut serve) = server("http-10");
    let addr = serve.addr;
    let answer = send_raw(addr, b"GET /livez HTTP/1.0\r\n\r\n", WAIT);
    assert_eq!(answer.status, 200, "{}", answer.head);
    assert_eq!(
        answer.header("connection"),
        Some("close"),
        "{}",
        answer.head
    );
    assert!(answer.closed, "an HTTP/1.0 connection stayed open");

    // Asked for: kept alive, and said so; two answers on one connection.
    let answer = send_raw(
        addr,
        b"GET /livez HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /livez HTTP/1.0\r\n\r\n",
        WAIT,
    );
    assert_eq!(answer.status, 200, "{}", answer.head);
    assert_eq!(
        answer.header("connection"),
        Some("keep-alive"),
        "{}",
        answer.head
    );
    let rest = String::from_utf8_lossy(&answer.rest);
    assert!(rest.contains("HTTP/1.1 200 "), "no second answer: {rest:?}");
    assert!(rest.contains("Connection: close\r\n"), "{rest:?}");
    assert!(answer.closed, "the second HTTP/1.0 request did not close");
    serve.stop_ok(Duration::from_secs(40));
}

/// Reads what comes until the server closes (or `wait` passes): the bytes
/// and whether it closed.
fn read_to_close(stream: &mut TcpStream, wait: Duration) -> (Vec<u8>, bool) {
    stream.set_read_timeout(Some(wait)).expect("read timeout");
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (got, true),
            Err(_) => return (got, false),
        }
    }
}

#[test]
fn slow_clients_at_the_stop_are_closed_or_answered_503_and_the_stop_exits_0() {
    let (_dir, mut serve) = server("http-slow-stop");
    let addr = serve.addr;
    // Half a head, never finished.
    let mut half_head = TcpStream::connect(addr).expect("connect");
    half_head
        .write_all(b"POST /v1/reports HTTP/1.1\r\nHost: x\r\nContent-Ty")
        .expect("write half a head");
    // A whole head and part of its body: the 100 Continue shows that the
    // server has read the head and waits for the body.
    let mut half_body = TcpStream::connect(addr).expect("connect");
    half_body
        .write_all(
            b"POST /v1/reports HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Expect: 100-continue\r\nContent-Length: 100\r\n\r\n",
        )
        .expect("write a head");
    half_body
        .set_read_timeout(Some(IO_TIMEOUT))
        .expect("read timeout");
    let mut interim = [0u8; 25];
    half_body
        .read_exact(&mut interim)
        .expect("read the interim answer");
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    half_body
        .write_all(b"{\"report_id\":")
        .expect("write part of a body");
    // Both wait in the server's handler threads now (the head one at
    // least in its queue); the stop must not wait for them.
    let exit = serve.stop_ok(Duration::from_secs(40));
    assert!(
        !exit.log.contains("still busy"),
        "threads outlived the stop:\n{}",
        exit.log
    );
    let (got, closed) = read_to_close(&mut half_head, WAIT);
    assert!(closed, "the half-head connection stayed open");
    assert!(
        got.is_empty(),
        "a half head got an answer: {:?}",
        String::from_utf8_lossy(&got)
    );
    let (got, closed) = read_to_close(&mut half_body, WAIT);
    let text = String::from_utf8_lossy(&got);
    assert!(closed, "the half-body connection stayed open");
    assert!(
        text.starts_with("HTTP/1.1 503 "),
        "a body in progress at the stop: {text:?}"
    );
    assert!(text.contains("\r\nConnection: close\r\n"), "{text:?}");
}
