//! Tests of a connection that waits in the poller while its answer is
//! written by another thread (invariants 7 and 8), through a real
//! [`Server`] on loopback and a handler whose answers come from a thread
//! of the test's, after a delay.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use super::{Handler, Later, Limits, Request, Response, Server};

/// Defers every request; a thread of its own answers after `delay` with a
/// body of `size` bytes. It says on `events` when it has deferred a
/// request (`Deferred`) and when an answer has been handed over
/// (`Answered`). Its threads are joined when it drops.
struct Slow {
    delay: Duration,
    size: usize,
    events: Mutex<Sender<Event>>,
    answering: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

#[derive(Debug, PartialEq)]
enum Event {
    Deferred,
    Answered,
}

impl Handler<()> for Slow {
    fn handle(
        &self,
        _state: &mut (),
        _request: &Request,
        _stopping: bool,
        later: &Later<'_>,
    ) -> Option<Response> {
        let deferred = later.defer(Instant::now() + Duration::from_secs(60));
        let (delay, size) = (self.delay, self.size);
        let events = self.events.lock().expect("lock").clone();
        let _ = events.send(Event::Deferred);
        let thread = std::thread::Builder::new()
            .name("park-test-answer".into())
            .spawn(move || {
                std::thread::sleep(delay);
                let response = Response {
                    status: 200,
                    content_type: "application/octet-stream",
                    headers: Vec::new(),
                    body: vec![b'a'; size],
                };
                deferred.respond(response, || {});
                let _ = events.send(Event::Answered);
            })
            .expect("spawn");
        self.answering.lock().expect("lock").push(thread);
        None
    }

    fn refused(&self, _status: u16, _why: &str, _head: Option<(&str, &str)>) {}
}

impl Drop for Slow {
    fn drop(&mut self) {
        for thread in self.answering.lock().expect("lock").drain(..) {
            let _ = thread.join();
        }
    }
}

/// The server, and what its handler says it did.
fn start(delay: Duration, size: usize) -> (Server, Receiver<Event>) {
    start_with(2, delay, size)
}

/// The same with `handlers` handler threads.
fn start_with(handlers: usize, delay: Duration, size: usize) -> (Server, Receiver<Event>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let limits = Limits {
        handlers,
        max_connections: 16,
        header_timeout: Duration::from_secs(60),
        body_timeout: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(60),
        max_body: 1024,
        max_head: 8192,
        close_grace: Duration::from_millis(50),
    };
    let (events, said) = channel();
    let handler = Slow {
        delay,
        size,
        events: Mutex::new(events),
        answering: Mutex::new(Vec::new()),
    };
    let server =
        Server::start("park-test", listener, None, limits, || Ok(()), handler).expect("start");
    (server, said)
}

/// A client of `server` (reads time out after 20 s) that has sent `bytes`.
fn connect(server: &Server, bytes: &[u8]) -> TcpStream {
    let mut client = TcpStream::connect(server.local_addr()).expect("connect");
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    client.write_all(bytes).expect("write");
    client
}

/// Waits (10 s at most) for the handler to say `event`.
fn wait_for(said: &Receiver<Event>, event: Event) {
    let got = said.recv_timeout(Duration::from_secs(10));
    assert_eq!(got, Ok(event));
}

/// Reads one response with a `Content-Length`: its status and body
/// length; `None` when the connection ends first.
fn read_response(stream: &mut TcpStream) -> Option<(u16, usize)> {
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut response = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = response.parse(&got) {
            let length: usize = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                .expect("a Content-Length");
            if got.len() >= head + length {
                return Some((response.code.unwrap_or(0), length));
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

/// An answer too large for the socket, written by the answering thread
/// while the connection waits in the poller: the rest is written as soon
/// as the client reads (the poller is asked to wait for writability), not
/// at the answer's deadline (60 s, past the client's 20 s read timeout).
#[test]
fn what_a_deferred_answer_leaves_unsent_is_written_once_the_client_reads() {
    const SIZE: usize = 32 << 20;
    let (server, said) = start(Duration::from_millis(100), SIZE);
    let mut client = connect(&server, b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n");
    // The answer comes and fills the socket while nobody reads; what it
    // leaves is for whoever the poller wakes.
    wait_for(&said, Event::Deferred);
    wait_for(&said, Event::Answered);
    let answer = read_response(&mut client);
    drop(client);
    // Stopped before the verdict: a failure must not leave threads behind.
    server.stop(Instant::now() + Duration::from_secs(5));
    assert_eq!(answer, Some((200, SIZE)));
}

/// A stop while a connection waits in the poller for its answer: the
/// answer is still written, not cut by the close of idle connections.
#[test]
fn a_stop_lets_an_answer_awaited_in_the_poller_arrive() {
    let (server, said) = start(Duration::from_millis(600), 10);
    let mut client = connect(&server, b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n");
    // Deferred: the connection is on its way back to the poller while the
    // answer is 600 ms away.
    wait_for(&said, Event::Deferred);
    let stopping = std::thread::Builder::new()
        .name("park-test-stop".into())
        .spawn(move || server.stop(Instant::now() + Duration::from_secs(10)))
        .expect("spawn");
    assert_eq!(read_response(&mut client), Some((200, 10)));
    let stuck = stopping.join().expect("stop");
    assert!(stuck.is_empty(), "threads left: {stuck:?}");
}

/// A stop while several connections wait for their answers, with more
/// handler threads than connections: `http-poll` hands all of them over
/// at once (one wake-up, passed on from handler thread to handler thread),
/// every answer arrives, and every handler thread ends (the closed
/// hand-over wakes each in turn).
#[test]
fn a_stop_hands_every_awaited_answer_to_a_handler_thread_and_ends_them_all() {
    const CLIENTS: usize = 6;
    let (server, said) = start_with(8, Duration::from_millis(600), 10);
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let client = connect(&server, b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n");
        wait_for(&said, Event::Deferred);
        clients.push(client);
    }
    let stopping = std::thread::Builder::new()
        .name("park-test-stop".into())
        .spawn(move || server.stop(Instant::now() + Duration::from_secs(10)))
        .expect("spawn");
    for client in &mut clients {
        assert_eq!(read_response(client), Some((200, 10)));
        // The stop's answer is its connection's last.
        assert_eq!(read_response(client), None);
    }
    let stuck = stopping.join().expect("stop");
    assert!(stuck.is_empty(), "threads left: {stuck:?}");
}

/// A request asking `Expect: 100-continue`, pipelined behind one whose
/// answer is still to come: its `100 Continue` follows that answer (an
/// interim answer of the second request must not come before the first
/// request's final one, RFC 9110 §15.2).
#[test]
fn a_100_continue_waits_for_the_answer_before_it() {
    let (server, _said) = start(Duration::from_millis(300), 3);
    let mut client = connect(
        &server,
        b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /second HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    );
    // Everything up to the 100 Continue, without sending the body.
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !got.windows(12).any(|w| w == b"100 Continue") {
        match client.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
    client.write_all(b"hello").expect("the body");
    drop(client);
    server.stop(Instant::now() + Duration::from_secs(5));
    let text = String::from_utf8_lossy(&got);
    let first = text.find("HTTP/1.1 200").expect("the first answer");
    let interim = text
        .find("HTTP/1.1 100 Continue")
        .expect("the 100 Continue");
    assert!(
        first < interim,
        "100 Continue before the first answer: {text:?}"
    );
}

/// Answers at once, after sleeping on the handler thread when the path
/// says so (`/sleep/MS`): a handler thread kept busy.
struct Sleepy;

impl Handler<()> for Sleepy {
    fn handle(
        &self,
        _state: &mut (),
        request: &Request,
        _stopping: bool,
        _later: &Later<'_>,
    ) -> Option<Response> {
        if let Some(ms) = request.path.strip_prefix("/sleep/") {
            let ms = ms.parse().expect("a number of milliseconds");
            std::thread::sleep(Duration::from_millis(ms));
        }
        Some(Response {
            status: 200,
            content_type: "text/plain",
            headers: Vec::new(),
            body: b"ok".to_vec(),
        })
    }

    fn refused(&self, _status: u16, _why: &str, _head: Option<(&str, &str)>) {}
}

/// A handler thread that takes several ready connections at one wait and
/// then has to wait for one of them (a body still on its way) hands the
/// others to another handler thread: they are not kept waiting behind a
/// slow client until its body's deadline.
#[test]
fn connections_taken_together_do_not_wait_behind_a_slow_body() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let limits = Limits {
        handlers: 2,
        max_connections: 16,
        header_timeout: Duration::from_secs(60),
        body_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(60),
        max_body: 1024,
        max_head: 8192,
        close_grace: Duration::from_millis(50),
    };
    let server =
        Server::start("spare-test", listener, None, limits, || Ok(()), Sleepy).expect("start");
    // Both handler threads busy, the first for less long.
    let mut first = connect(&server, b"GET /sleep/400 HTTP/1.1\r\nHost: x\r\n\r\n");
    std::thread::sleep(Duration::from_millis(100));
    let mut second = connect(&server, b"GET /sleep/900 HTTP/1.1\r\nHost: x\r\n\r\n");
    std::thread::sleep(Duration::from_millis(100));
    // Meanwhile a request whose body has not all come, then a whole one:
    // the first thread to be free usually finds both ready at once.
    let mut slow = connect(
        &server,
        b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello",
    );
    std::thread::sleep(Duration::from_millis(50));
    let mut quick = connect(&server, b"GET /quick HTTP/1.1\r\nHost: x\r\n\r\n");
    // Answered once the second thread is free, long before the slow
    // body's deadline (30 s; the client's read gives up after 20).
    let quick_answer = read_response(&mut quick);
    slow.write_all(b"world").expect("the rest of the body");
    let slow_answer = read_response(&mut slow);
    let busy = (read_response(&mut first), read_response(&mut second));
    let stuck = server.stop(Instant::now() + Duration::from_secs(5));
    assert_eq!(quick_answer, Some((200, 2)));
    assert_eq!(slow_answer, Some((200, 2)));
    assert_eq!(busy, (Some((200, 2)), Some((200, 2))));
    assert!(stuck.is_empty(), "threads left: {stuck:?}");
}
