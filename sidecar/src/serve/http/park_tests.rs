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

/// The limits of these tests' servers: `handlers` handler threads, and
/// deadlines long past any client's read timeout (20 s).
fn limits(handlers: usize) -> Limits {
    Limits {
        handlers,
        active: handlers,
        max_connections: 16,
        header_timeout: Duration::from_secs(60),
        body_timeout: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(60),
        max_body: 1024,
        max_head: 8192,
        close_grace: Duration::from_millis(50),
    }
}

/// The same with `handlers` handler threads.
fn start_with(handlers: usize, delay: Duration, size: usize) -> (Server, Receiver<Event>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let limits = limits(handlers);
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
    read_responses(stream, 1).pop()
}

/// Reads `n` responses in a row (as [`read_response`]); fewer when the
/// connection ends first.
fn read_responses(stream: &mut TcpStream, n: usize) -> Vec<(u16, usize)> {
    let mut got = Vec::new();
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    while out.len() < n {
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
                out.push((response.code.unwrap_or(0), length));
                got.drain(..head + length);
                continue;
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
    out
}

/// Reads until the server's `100 Continue` has come.
fn read_continue(stream: &mut TcpStream) {
    let mut got = Vec::new();
    let mut chunk = [0u8; 256];
    while !got.windows(12).any(|w| w == b"100 Continue") {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => panic!("no 100 Continue: {:?}", String::from_utf8_lossy(&got)),
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

/// Answers at once, except `/hold`, which holds its handler thread until
/// the test lets one go. Says when it holds one (`held`) and how many
/// connections are open after each change (`open`).
struct Gated {
    held: crossbeam_channel::Sender<()>,
    release: crossbeam_channel::Receiver<()>,
    open: crossbeam_channel::Sender<usize>,
}

impl Handler<()> for Gated {
    fn handle(
        &self,
        _state: &mut (),
        request: &Request,
        _stopping: bool,
        _later: &Later<'_>,
    ) -> Option<Response> {
        if request.path == "/hold" {
            let _ = self.held.send(());
            // Bounded: a test that fails first must not leave it held.
            let _ = self.release.recv_timeout(Duration::from_secs(30));
        }
        Some(Response {
            status: 200,
            content_type: "text/plain",
            headers: Vec::new(),
            body: b"ok".to_vec(),
        })
    }

    fn refused(&self, _status: u16, _why: &str, _head: Option<(&str, &str)>) {}

    fn connections(&self, open: usize) {
        let _ = self.open.send(open);
    }
}

/// A handler thread that takes several ready connections at one wait and
/// then has to wait for one of them (a body still on its way) hands the
/// others to another handler thread: they are not kept waiting behind a
/// slow client until its body's deadline.
#[test]
fn connections_taken_together_do_not_wait_behind_a_slow_body() {
    const HOLD: &[u8] = b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n";
    let wait = Duration::from_secs(10);
    let (held_tx, held) = crossbeam_channel::unbounded();
    let (release, release_rx) = crossbeam_channel::unbounded();
    let (open_tx, open) = crossbeam_channel::unbounded();
    let handler = Gated {
        held: held_tx,
        release: release_rx,
        open: open_tx,
    };
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let server =
        Server::start("spare-test", listener, None, limits(2), || Ok(()), handler).expect("start");
    let open_reaches = |n: usize| {
        while open
            .recv_timeout(wait)
            .expect("a count of open connections")
            != n
        {}
    };
    // Both handler threads held.
    let mut first = connect(&server, HOLD);
    held.recv_timeout(wait).expect("the first held");
    let mut second = connect(&server, HOLD);
    held.recv_timeout(wait).expect("the second held");
    // A request whose body waits for `100 Continue`, then a whole one,
    // each parked (open) in turn with its bytes there: the thread let go
    // next finds both ready, in that order, and takes them at one wait.
    let mut slow = connect(
        &server,
        b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    );
    open_reaches(3);
    let mut quick = connect(&server, b"GET /quick HTTP/1.1\r\nHost: x\r\n\r\n");
    open_reaches(4);
    release.send(()).expect("let one go");
    // Its `100 Continue`: the thread that took both now waits for the
    // slow body, having handed the other over.
    read_continue(&mut slow);
    release.send(()).expect("let the other go");
    // Served by the other thread, while the slow body still has not come
    // (the client's read gives up after 20 s, the body's deadline is 60).
    let quick_answer = read_response(&mut quick);
    slow.write_all(b"hello").expect("the body");
    let slow_answer = read_response(&mut slow);
    let held_answers = (read_response(&mut first), read_response(&mut second));
    let stuck = server.stop(Instant::now() + Duration::from_secs(5));
    assert_eq!(quick_answer, Some((200, 2)));
    assert_eq!(slow_answer, Some((200, 2)));
    assert_eq!(held_answers, (Some((200, 2)), Some((200, 2))));
    assert!(stuck.is_empty(), "threads left: {stuck:?}");
}

/// Holds `/hold` and `/wait` until the test lets them go (`/wait` first
/// says it may block), answers `/big` with 1 MiB; says on `events` what
/// it handled, in order.
struct Seated {
    events: Mutex<Sender<String>>,
    release: crossbeam_channel::Receiver<()>,
    /// How many threads stand by, at each change.
    standing: Mutex<Sender<usize>>,
}

impl Handler<()> for Seated {
    fn handle(
        &self,
        _state: &mut (),
        request: &Request,
        _stopping: bool,
        later: &Later<'_>,
    ) -> Option<Response> {
        let say = |what: String| {
            let _ = self.events.lock().expect("lock").send(what);
        };
        if request.path == "/wait" {
            later.may_block();
        }
        say(format!("{} {}", request.method, request.path));
        if request.path == "/wait" || request.path == "/hold" {
            // Bounded: a test that fails first must not leave it held.
            let _ = self.release.recv_timeout(Duration::from_secs(30));
            say(format!("{} let go", request.path));
        }
        let body = if request.path == "/big" {
            vec![b'a'; BIG]
        } else {
            b"ok".to_vec()
        };
        Some(Response {
            status: 200,
            content_type: "text/plain",
            headers: Vec::new(),
            body,
        })
    }

    fn refused(&self, _status: u16, _why: &str, _head: Option<(&str, &str)>) {}

    fn standing_by(&self, threads: usize) {
        let _ = self.standing.lock().expect("lock").send(threads);
    }
}

/// The body of `/big`.
const BIG: usize = 1 << 20;

/// A server stopped when dropped: a test that fails ends, instead of
/// waiting for the server's threads for ever.
struct Running(Option<Server>);

impl Running {
    /// Stops it, every thread ended by the deadline.
    fn stop(mut self) {
        let stuck = self
            .0
            .take()
            .map(|server| server.stop(Instant::now() + Duration::from_secs(5)))
            .unwrap_or_default();
        assert!(stuck.is_empty(), "threads left: {stuck:?}");
    }
}

/// `GET path` on a connection of its own, handled (as `said` tells) and
/// answered at once.
fn served_now(server: &Server, said: &Receiver<String>, path: &str) {
    let mut client = connect(
        server,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    );
    assert_eq!(next(said), format!("GET {path}"));
    assert_eq!(read_response(&mut client), Some((200, 2)));
}

impl std::ops::Deref for Running {
    type Target = Server;
    fn deref(&self) -> &Server {
        self.0.as_ref().expect("running")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(server) = self.0.take() {
            let _ = server.stop(Instant::now() + Duration::from_secs(5));
        }
    }
}

/// A server of two handler threads of which one waits for requests.
struct SeatTest {
    server: Running,
    /// What its handler says it did.
    said: Receiver<String>,
    /// Lets a held request go.
    release: crossbeam_channel::Sender<()>,
    /// How many threads stand by, at each change.
    standing: Receiver<usize>,
}

fn start_seated() -> SeatTest {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let (events, said) = channel();
    let (release, release_rx) = crossbeam_channel::unbounded();
    let (standing_tx, standing) = channel();
    let handler = Seated {
        events: Mutex::new(events),
        release: release_rx,
        standing: Mutex::new(standing_tx),
    };
    let limits = Limits {
        active: 1,
        ..limits(2)
    };
    let server =
        Server::start("seat-test", listener, None, limits, || Ok(()), handler).expect("start");
    SeatTest {
        server: Running(Some(server)),
        said,
        release,
        standing,
    }
}

fn next(said: &Receiver<String>) -> String {
    said.recv_timeout(Duration::from_secs(10))
        .expect("the handler to say what it did")
}

/// Only the active handler threads wait for requests: one held in its
/// handler (without saying it may block) keeps the request after it
/// waiting, although another thread stands by.
#[test]
fn a_thread_held_in_its_handler_keeps_its_seat() {
    let SeatTest {
        server,
        said,
        release,
        standing,
    } = start_seated();
    // One thread took the seat, the other stands by (had both been
    // waiting for requests, none would).
    assert_eq!(standing.recv_timeout(Duration::from_secs(10)), Ok(1));
    let mut held = connect(&server, b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(next(&said), "GET /hold");
    let mut quick = connect(&server, b"GET /quick HTTP/1.1\r\nHost: x\r\n\r\n");
    release.send(()).expect("let it go");
    // /quick waited for the seated thread.
    assert_eq!(next(&said), "/hold let go");
    assert_eq!(next(&said), "GET /quick");
    assert_eq!(read_response(&mut held), Some((200, 2)));
    assert_eq!(read_response(&mut quick), Some((200, 2)));
    // The other thread stood by throughout: the seat was never given up.
    assert_eq!(
        standing.try_recv(),
        Err(std::sync::mpsc::TryRecvError::Empty)
    );
    server.stop();
}

/// A handler that says it may block gives its seat to the thread standing
/// by, which serves the next request meanwhile.
#[test]
fn a_handler_that_may_block_lets_another_thread_serve_meanwhile() {
    let SeatTest {
        server,
        said,
        release,
        ..
    } = start_seated();
    let mut waiting = connect(&server, b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(next(&said), "GET /wait");
    served_now(&server, &said, "/quick");
    release.send(()).expect("let it go");
    assert_eq!(next(&said), "/wait let go");
    assert_eq!(read_response(&mut waiting), Some((200, 2)));
    // Back from blocking, the first thread stands by (one seat, taken):
    // requests are still served, one at a time, and both threads end.
    served_now(&server, &said, "/again");
    server.stop();
}

/// A thread waiting for a body still on its way gives its seat up too.
#[test]
fn a_slow_body_lets_another_thread_serve_meanwhile() {
    let SeatTest { server, said, .. } = start_seated();
    let mut slow = connect(
        &server,
        b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    );
    // Its `100 Continue`: the thread now waits for the body.
    read_continue(&mut slow);
    served_now(&server, &said, "/quick");
    slow.write_all(b"hello").expect("the body");
    assert_eq!(next(&said), "POST /slow");
    assert_eq!(read_response(&mut slow), Some((200, 2)));
    server.stop();
}

/// A client that sends requests and does not read their answers holds the
/// thread writing to it, not its seat: once its socket takes no more, the
/// thread standing by serves the next client meanwhile, and the answers
/// all arrive once the client reads.
#[test]
fn a_client_that_does_not_read_holds_a_thread_not_the_intake() {
    const ANSWERS: usize = 16;
    let SeatTest { server, said, .. } = start_seated();
    // 16 MiB of answers: more than the two sockets' buffers hold.
    let mut greedy = connect(
        &server,
        &b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n".repeat(ANSWERS),
    );
    assert_eq!(next(&said), "GET /big");
    let mut quick = connect(&server, b"GET /quick HTTP/1.1\r\nHost: x\r\n\r\n");
    // The bigs answered until the socket is full, then /quick.
    let mut bigs = 1;
    loop {
        match next(&said).as_str() {
            "GET /big" => bigs += 1,
            "GET /quick" => break,
            other => panic!("unexpected: {other}"),
        }
    }
    assert!(bigs < ANSWERS, "every answer fit in the buffers");
    assert_eq!(read_response(&mut quick), Some((200, 2)));
    assert_eq!(read_responses(&mut greedy, ANSWERS), [(200, BIG); ANSWERS]);
    server.stop();
}

/// Answers with the scheduling policy of the thread that handles the
/// request.
struct Policy;

impl Handler<()> for Policy {
    fn handle(
        &self,
        _state: &mut (),
        _request: &Request,
        _stopping: bool,
        _later: &Later<'_>,
    ) -> Option<Response> {
        // SAFETY: no arguments; pid 0 is the calling thread.
        let policy = unsafe { libc::sched_getscheduler(0) };
        Some(Response {
            status: 200,
            content_type: "text/plain",
            headers: Vec::new(),
            body: policy.to_string().into_bytes(),
        })
    }

    fn refused(&self, _status: u16, _why: &str, _head: Option<(&str, &str)>) {}
}

#[test]
fn handler_threads_wake_without_preempting() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let server = Running(Some(
        Server::start("policy-test", listener, None, limits(2), || Ok(()), Policy).expect("start"),
    ));
    let mut client = connect(
        &server,
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    let mut answer = String::new();
    client.read_to_string(&mut answer).expect("read");
    let body = answer.split("\r\n\r\n").nth(1);
    assert_eq!(
        body,
        Some(libc::SCHED_BATCH.to_string().as_str()),
        "{answer}"
    );
    server.stop();
}
