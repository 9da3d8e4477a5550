//! A small HTTP/1.1 server on threads, made for hostile networks.
//!
//! Why not `tiny_http`: it has no per-request read deadlines (a client that
//! sends its headers one byte a second holds a connection for ever), and it
//! starts threads we could neither name nor join. Parsing is `httparse`'s
//! (hyper's parser); what is ours is the connection handling around it:
//!
//! - a deadline for the request head (from its first byte) and another for
//!   the body, enforced with per-read socket timeouts computed from them;
//! - a body limit checked on the bytes actually read (chunked bodies
//!   included), and answered before reading on `Content-Length` /
//!   `Expect: 100-continue`;
//! - a cap on open connections: past it, new connections get `503` at once;
//! - keep-alive, with an idle timeout;
//! - answers that wait on another thread ([`Later`], [`Deferred`]): the
//!   handler thread goes back to its connection and the answer is written,
//!   in request order, by the thread that has it (the store's, once the
//!   report is on disk), with a deadline after which the client gets `503`;
//! - a graceful stop like Go's `http.Server.Shutdown`: stop accepting
//!   (connections already queued in the kernel are answered `503`), let
//!   requests in progress finish, answer `Connection: close` from then on,
//!   and close idle connections after a short grace in which a request that
//!   arrives still gets an answer rather than a reset.
//!
//! Threads: `http-accept` and `http-0`..`http-N`, all owned by one
//! [`quiesce::Threads`] and joined by [`Server::stop`].

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use quiesce::{Context, Threads};

/// How long a handler thread waits for an outstanding answer before going
/// on (the answer's own deadline usually ends the wait first).
const SETTLE_WAIT: Duration = Duration::from_secs(15);

/// Limits and timeouts of a [`Server`].
#[derive(Clone, Debug)]
pub struct Limits {
    /// Handler threads: connections served at once.
    pub handlers: usize,
    /// Open connections at most (served or waiting for a handler).
    pub max_connections: usize,
    /// From a request's first byte to the end of its head.
    pub header_timeout: Duration,
    /// For reading a request's body.
    pub body_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// The largest body accepted.
    pub max_body: usize,
    /// The largest request head accepted.
    pub max_head: usize,
    /// During a stop, how long an idle connection stays open so that a
    /// request already on its way gets an answer.
    pub close_grace: Duration,
}

/// A request, head and body read.
#[derive(Debug)]
pub struct Request {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path, without the query string.
    pub path: String,
    /// Header names (lower-cased) and values.
    pub headers: Vec<(String, String)>,
    /// The body (decoded when chunked).
    pub body: Vec<u8>,
}

impl Request {
    /// The first header called `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A response to write.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A JSON response.
    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        Response {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body: value.to_string().into_bytes(),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }
}

/// Answers requests on a handler thread, with per-thread state `S` (such
/// as a database connection).
pub trait Handler<S>: Send + Sync + 'static {
    /// Answers one request: now, with `Some(response)`, or later, with
    /// `None` after taking a [`Deferred`] from `later` (the handler thread
    /// then goes back to reading the connection; see [`Later`]).
    fn handle(
        &self,
        state: &mut S,
        request: &Request,
        stopping: bool,
        later: &Later<'_>,
    ) -> Option<Response>;

    /// Answers a request the server refused before any handler saw it
    /// (limits, timeouts, bad framing): for metrics and logs.
    fn refused(&self, status: u16, why: &str);
}

/// What the accept thread and the handlers share.
struct Shared {
    limits: Limits,
    /// Set when the stop begins: answer `Connection: close` from now on.
    stopping: AtomicBool,
    /// Open connections by id, to close idle ones at the stop.
    open: Mutex<HashMap<u64, Conn>>,
    next_id: AtomicU64,
}

struct Conn {
    stream: TcpStream,
    idle: bool,
    outbox: Arc<Outbox>,
}

/// The write side of a connection, shared by its handler thread and by
/// whoever answers a [`Deferred`] request (the store's reply thread).
///
/// Why: a handler thread that waited for the store's commit would sleep and
/// be woken once more per request than the client does; on a small machine
/// those wake-ups were the sidecar's main cost. So an answer that must wait
/// for the store is written by the thread that has it, straight to the
/// socket, without blocking (a client that does not read cannot hold that
/// thread: what the socket does not take at once is left here for the
/// handler thread to write, with its write deadline). One answer is
/// outstanding per connection at most, so answers stay in request order.
struct Outbox {
    stream: TcpStream,
    state: Mutex<OutState>,
    changed: std::sync::Condvar,
}

#[derive(Default)]
struct OutState {
    /// A deferred answer is awaited, until this deadline.
    pending: Option<Instant>,
    /// Counts deferred answers given out; an answer for an older one (taken
    /// over at its deadline) is dropped.
    serial: u64,
    /// Bytes of an answer the socket did not take at once.
    unsent: Vec<u8>,
    /// Writing an answer failed: the connection is done.
    broken: bool,
    /// The answer written asks the client to close.
    closing: bool,
}

impl Outbox {
    fn new(stream: TcpStream) -> Outbox {
        Outbox {
            stream,
            state: Mutex::new(OutState::default()),
            changed: std::sync::Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits (until `deadline`) for the outstanding answer, then writes
    /// what the socket did not take. `Err` when the connection is done.
    /// An answer still missing at its own deadline is given up and
    /// [`unavailable`] sent in its place, after `gave_up` is called (before
    /// the client can see it, so that it can be counted first).
    fn settle(&self, deadline: Instant, gave_up: &dyn Fn()) -> io::Result<()> {
        let mut state = self.lock();
        loop {
            if state.broken {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            let Some(due) = state.pending else { break };
            let now = Instant::now();
            if now >= due {
                // Taken over: a late answer is dropped (its serial is old).
                state.pending = None;
                state.serial += 1;
                let bytes = encode(&unavailable(), state.closing);
                state.unsent.extend_from_slice(&bytes);
                gave_up();
                break;
            }
            if now >= deadline {
                return Err(io::ErrorKind::TimedOut.into());
            }
            state = self
                .changed
                .wait_timeout(state, due.min(deadline) - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        if state.unsent.is_empty() {
            return Ok(());
        }
        let unsent = std::mem::take(&mut state.unsent);
        drop(state);
        let mut stream = &self.stream;
        let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
        let written = stream.write_all(&unsent);
        if written.is_err() {
            self.lock().broken = true;
        }
        written
    }

    fn is_pending(&self) -> bool {
        self.lock().pending.is_some()
    }
}

/// Hands out a [`Deferred`] for the request being handled.
pub struct Later<'a> {
    outbox: &'a Arc<Outbox>,
    close: bool,
}

impl Later<'_> {
    /// Promises an answer by `deadline` (past it, the client gets `503`);
    /// the handler then returns `None`.
    pub fn defer(&self, deadline: Instant) -> Deferred {
        let mut state = self.outbox.lock();
        state.pending = Some(deadline);
        state.closing = self.close;
        state.serial += 1;
        Deferred {
            outbox: Some(self.outbox.clone()),
            serial: state.serial,
        }
    }
}

/// An answer owed to a client: [`Deferred::respond`] writes it from any
/// thread, without blocking. Dropped unanswered, it answers `503`.
pub struct Deferred {
    outbox: Option<Arc<Outbox>>,
    serial: u64,
}

impl Deferred {
    /// Writes `response` (what the socket does not take at once is left
    /// for the connection's handler thread), after calling `before` (so
    /// that it is counted before the client can see it). `false`, and
    /// `before` is not called, when it came too late: the client was
    /// answered `503` at the deadline instead.
    pub fn respond(mut self, response: Response, before: impl FnOnce()) -> bool {
        self.write(&response, before)
    }

    fn write(&mut self, response: &Response, before: impl FnOnce()) -> bool {
        let Some(outbox) = self.outbox.take() else {
            return false;
        };
        let mut state = outbox.lock();
        if state.serial != self.serial || state.pending.is_none() {
            return false;
        }
        before();
        let bytes = encode(response, state.closing);
        state.pending = None;
        let sent = if state.unsent.is_empty() {
            send_now(&outbox.stream, &bytes)
        } else {
            Ok(0)
        };
        match sent {
            Ok(n) => state.unsent.extend_from_slice(&bytes[n..]),
            Err(_) => state.broken = true,
        }
        drop(state);
        outbox.changed.notify_all();
        true
    }
}

impl Drop for Deferred {
    fn drop(&mut self) {
        if self.outbox.is_some() {
            self.write(&unavailable(), || {});
        }
    }
}

/// The answer for a request that got no answer in time.
fn unavailable() -> Response {
    Response::json(
        503,
        &serde_json::json!({ "error": "no answer in time; retry" }),
    )
    .with_header("Retry-After", "1")
}

/// Sends what the socket takes now, without waiting: the count sent.
fn send_now(stream: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    let socket = socket2::SockRef::from(stream);
    let mut sent = 0;
    while sent < bytes.len() {
        match socket.send_with_flags(&bytes[sent..], libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) {
            Ok(0) => break,
            Ok(n) => sent += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
            Err(err) => return Err(err),
        }
    }
    Ok(sent)
}

/// A running server; [`Server::stop`] stops it gracefully.
pub struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Threads<()>,
}

impl Server {
    /// Starts serving `listener` on named threads.
    ///
    /// # Errors
    ///
    /// When a thread cannot be started (those started are stopped).
    pub fn start<S, H, F>(
        listener: TcpListener,
        limits: Limits,
        make_state: F,
        handler: H,
    ) -> io::Result<Server>
    where
        S: 'static,
        H: Handler<S>,
        F: Fn() -> io::Result<S> + Send + Sync + 'static,
    {
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            limits: limits.clone(),
            stopping: AtomicBool::new(false),
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        });
        let queue = limits
            .max_connections
            .saturating_sub(limits.handlers)
            .max(1);
        let (conn_tx, conn_rx) = crossbeam_channel::bounded::<(u64, TcpStream)>(queue);
        let mut threads = Threads::new(&Context::background());
        let handler = Arc::new(handler);
        let make_state = Arc::new(make_state);
        for i in 0..limits.handlers.max(1) {
            let (rx, shared, handler, make_state) = (
                conn_rx.clone(),
                shared.clone(),
                handler.clone(),
                make_state.clone(),
            );
            threads.spawn(format!("http-{i}"), move |_ctx| {
                handler_loop(&rx, &shared, handler.as_ref(), make_state.as_ref());
            })?;
        }
        drop(conn_rx);
        let accept_shared = shared.clone();
        let accept_handler = handler.clone();
        threads.spawn("http-accept", move |_ctx| {
            accept_loop(&listener, &conn_tx, &accept_shared, accept_handler.as_ref());
        })?;
        Ok(Server {
            addr,
            shared,
            threads,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops gracefully within `deadline`: no new connections (those
    /// already waiting in the kernel get `503`), requests in progress
    /// finish, idle keep-alive connections are closed after the grace.
    /// Returns the names of threads still running at the deadline.
    pub fn stop(mut self, deadline: Instant) -> Vec<String> {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the accept thread, blocked in accept(), with a connection of
        // our own; it sees `stopping` and ends.
        let _ = TcpStream::connect_timeout(&wake_addr(self.addr), Duration::from_secs(1));
        let grace_end = Instant::now() + self.shared.limits.close_grace;
        loop {
            let slice_end = (Instant::now() + Duration::from_millis(20)).min(deadline);
            for finished in self.threads.join_deadline(slice_end).finished {
                if let Err(panic) = finished.result {
                    log::error!("http thread {} {panic}", finished.name);
                }
            }
            if self.threads.is_empty() || Instant::now() >= deadline {
                break;
            }
            // Idle connections close themselves after the grace; this is
            // for any that missed it.
            if Instant::now() >= grace_end {
                close_idle(&self.shared);
            }
        }
        let stuck: Vec<String> = self.threads.running().into_iter().map(|r| r.name).collect();
        if !stuck.is_empty() {
            // Requests still running at the deadline: cut their sockets so
            // the threads return, then let the caller report them.
            for conn in self
                .shared
                .open
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
            {
                let _ = conn.stream.shutdown(Shutdown::Both);
            }
        }
        stuck
    }
}

/// The address to connect to for waking our own accept(): the listen
/// address, with an unspecified IP replaced by loopback.
fn wake_addr(addr: SocketAddr) -> SocketAddr {
    let mut wake = addr;
    if addr.ip().is_unspecified() {
        wake.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    wake
}

fn close_idle(shared: &Shared) {
    let open = shared.open.lock().unwrap_or_else(|e| e.into_inner());
    for conn in open.values().filter(|c| c.idle && !c.outbox.is_pending()) {
        let _ = conn.stream.shutdown(Shutdown::Both);
    }
}

fn accept_loop<S>(
    listener: &TcpListener,
    conns: &Sender<(u64, TcpStream)>,
    shared: &Shared,
    handler: &impl Handler<S>,
) {
    let mut refused = Refused::default();
    for stream in listener.incoming() {
        refused.sweep();
        if shared.stopping.load(Ordering::SeqCst) {
            // Answer whatever completed its handshake before the stop (our
            // own wake-up connection among them), then close the listener.
            drop(stream);
            drain_backlog(listener, handler, &mut refused);
            refused.finish();
            return;
        }
        let stream = match stream {
            Ok(stream) => stream,
            Err(err) => {
                log::warn!("accept failed: {err}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        match conns.try_send((id, stream)) {
            Ok(()) => {}
            Err(TrySendError::Full((_, stream))) | Err(TrySendError::Disconnected((_, stream))) => {
                handler.refused(503, "too many connections");
                refused.add(stream, "too many open connections; retry shortly");
            }
        }
    }
}

/// At the stop: answers `503` to the connections already waiting in the
/// kernel, for a bounded time (clients that keep connecting must not hold
/// the stop up), then lets the listener close.
fn drain_backlog<S>(listener: &TcpListener, handler: &impl Handler<S>, refused: &mut Refused) {
    // Shrink the accept queue to its least first: from now on the kernel
    // drops most new handshakes (the client's own retry, a second later,
    // finds the port closed) rather than completing ones that closing the
    // listener would then reset after the client has sent its request. It
    // narrows the window, not closes it: the queue keeps one place, and a
    // handshake under way when the listener closes is still reset (in the
    // load bench, 0 to 3 resets among 32 clients reconnecting at once).
    if let Err(err) = socket2::SockRef::from(listener).listen(0) {
        log::debug!("cannot shrink the accept queue: {err}");
    }
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    let until = Instant::now() + Duration::from_millis(100);
    while Instant::now() < until {
        let Ok((stream, _)) = listener.accept() else {
            break;
        };
        handler.refused(503, "shutting down");
        refused.add(stream, "shutting down; retry on another instance");
        refused.sweep();
    }
}

/// Connections answered `503` before being read, kept open a moment while
/// what the client still sends is read and discarded (see
/// [`linger_close`]), without holding up the accept thread: each is
/// non-blocking and looked at again at the next accept.
#[derive(Default)]
struct Refused {
    conns: Vec<(TcpStream, Instant)>,
}

impl Refused {
    /// Most connections lingering at once; past it the oldest is closed.
    const MAX: usize = 1024;
    const LINGER: Duration = Duration::from_millis(50);

    fn add(&mut self, mut stream: TcpStream, message: &str) {
        let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
        let response = Response::json(503, &serde_json::json!({ "error": message }))
            .with_header("Retry-After", "1");
        let _ = write_response(&mut stream, &response, true);
        let _ = stream.shutdown(Shutdown::Write);
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        if self.conns.len() >= Self::MAX {
            self.conns.remove(0);
        }
        self.conns.push((stream, Instant::now() + Self::LINGER));
    }

    /// Closes those whose client has closed or whose time is up.
    fn sweep(&mut self) {
        let now = Instant::now();
        self.conns
            .retain_mut(|(stream, until)| now < *until && still_open(stream));
    }

    /// Gives the last ones their moment, then closes them all.
    fn finish(mut self) {
        while !self.conns.is_empty() {
            std::thread::sleep(Duration::from_millis(5));
            self.sweep();
        }
    }
}

/// Reads and discards what is there without blocking; `false` once the
/// client has closed (or the connection broke).
fn still_open(stream: &mut TcpStream) -> bool {
    let mut sink = [0u8; 4096];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return false,
            Ok(_) => continue,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return true,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}

/// Answers a connection a handler will not serve, without reading its
/// request.
fn refuse(mut stream: TcpStream, status: u16, message: &str) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let response = Response::json(status, &serde_json::json!({ "error": message }))
        .with_header("Retry-After", "1");
    let _ = write_response(&mut stream, &response, true);
    linger_close(stream, Duration::from_millis(50));
}

/// Closes after an answer sent before the request was read in full: stop
/// writing, then read and discard what the client is still sending for a
/// moment. Closing a socket with unread data makes the kernel send a reset,
/// which can reach the client before it has read our answer (Go's server
/// does the same "lingering close").
fn linger_close(mut stream: TcpStream, linger: Duration) {
    let _ = stream.shutdown(Shutdown::Write);
    let end = Instant::now() + linger;
    let mut sink = [0u8; 8192];
    let mut discarded = 0usize;
    while discarded < (1 << 20) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => discarded += n,
        }
    }
}

fn handler_loop<S, H: Handler<S>>(
    conns: &Receiver<(u64, TcpStream)>,
    shared: &Shared,
    handler: &H,
    make_state: &dyn Fn() -> io::Result<S>,
) {
    let mut state = None;
    for (id, stream) in conns.iter() {
        if state.is_none() {
            match make_state() {
                Ok(s) => state = Some(s),
                Err(err) => {
                    log::error!("http handler cannot set up: {err}");
                    handler.refused(503, "handler unavailable");
                    refuse(stream, 503, "temporarily unavailable");
                    continue;
                }
            }
        }
        let Some(state) = state.as_mut() else {
            continue;
        };
        let (Ok(for_stop), Ok(for_answers)) = (stream.try_clone(), stream.try_clone()) else {
            handler.refused(503, "cannot serve the connection");
            refuse(stream, 503, "temporarily unavailable");
            continue;
        };
        let outbox = Arc::new(Outbox::new(for_answers));
        shared
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                id,
                Conn {
                    stream: for_stop,
                    idle: true,
                    outbox: outbox.clone(),
                },
            );
        let mut conn = Connection {
            stream,
            buf: Vec::with_capacity(4096),
            id,
            shared,
            outbox,
            read_timeout: None,
        };
        conn.serve(state, handler);
        shared
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }
}

/// Why a request could not be read.
enum ReadError {
    /// The peer closed, or the connection broke, or the idle wait ended:
    /// close without an answer.
    Closed,
    /// Answer this status, then close.
    Reject(u16, &'static str),
}

struct Connection<'a> {
    stream: TcpStream,
    /// Bytes read and not yet consumed (pipelined requests).
    buf: Vec<u8>,
    id: u64,
    shared: &'a Shared,
    outbox: Arc<Outbox>,
    /// The read timeout set on the socket.
    read_timeout: Option<Duration>,
}

impl Connection<'_> {
    fn serve<S, H: Handler<S>>(&mut self, state: &mut S, handler: &H) {
        let _ = self.stream.set_nodelay(true);
        self.serve_requests(state, handler);
        // Whatever happened, the answer owed is given before the
        // connection closes (bounded by its own deadline).
        let _ = self.settle(handler);
    }

    fn serve_requests<S, H: Handler<S>>(&mut self, state: &mut S, handler: &H) {
        loop {
            let request = match self.read_request(handler) {
                Ok(request) => request,
                Err(ReadError::Closed) => return,
                Err(ReadError::Reject(status, why)) => {
                    handler.refused(status, why);
                    if self.settle(handler).is_err() {
                        return;
                    }
                    let response = Response::json(status, &serde_json::json!({ "error": why }));
                    let _ = write_response(&mut self.stream, &response, true);
                    if let Ok(stream) = self.stream.try_clone() {
                        linger_close(stream, Duration::from_millis(500));
                    }
                    return;
                }
            };
            // One answer outstanding at most: answers go in request order.
            if self.settle(handler).is_err() {
                return;
            }
            let stopping = self.shared.stopping.load(Ordering::SeqCst);
            let close = stopping || wants_close(&request);
            let later = Later {
                outbox: &self.outbox,
                close,
            };
            let written = match handler.handle(state, &request, stopping, &later) {
                Some(response) => self
                    .settle(handler)
                    .and_then(|()| write_response(&mut self.stream, &response, close)),
                // Answered by another thread; when it is the last one, wait for it.
                None if close => self.settle(handler),
                None => Ok(()),
            };
            if written.is_err() || close {
                let _ = self.stream.shutdown(Shutdown::Write);
                return;
            }
        }
    }

    /// Lets the outstanding answer (if any) be written first.
    fn settle<S>(&self, handler: &impl Handler<S>) -> io::Result<()> {
        self.settle_until(Instant::now() + SETTLE_WAIT, handler)
    }

    /// [`Outbox::settle`], telling the handler of an answer given up.
    fn settle_until<S>(&self, deadline: Instant, handler: &impl Handler<S>) -> io::Result<()> {
        self.outbox.settle(deadline, &|| {
            handler.refused(503, "no answer in time");
        })
    }

    fn set_idle(&self, idle: bool) {
        if let Some(conn) = self
            .shared
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&self.id)
        {
            conn.idle = idle;
        }
    }

    /// Reads the next request: waits (idle) for its first byte, then reads
    /// its head and body under their deadlines.
    fn read_request<S>(&mut self, handler: &impl Handler<S>) -> Result<Request, ReadError> {
        let limits = &self.shared.limits;
        if self.buf.is_empty() {
            // Idle only until a request starts: a stop closes idle
            // connections, never one with a request under way.
            self.set_idle(true);
            let first = self.wait_first_byte(handler);
            self.set_idle(false);
            first?;
        }
        let head_deadline = Instant::now() + limits.header_timeout;
        let (head_len, mut request, framing) = loop {
            if let Some(parsed) = parse_head(&self.buf, limits.max_head)? {
                break parsed;
            }
            if self.buf.len() >= limits.max_head {
                return Err(ReadError::Reject(431, "request head too large"));
            }
            self.read_more(head_deadline, 408, "request head not received in time")?;
        };
        self.buf.drain(..head_len);
        request.body = match framing {
            Framing::None => Vec::new(),
            Framing::Length(n) if n > limits.max_body => {
                return Err(ReadError::Reject(413, "request body too large"));
            }
            Framing::Length(n) => {
                self.continue_if_expected(&request)?;
                self.read_exact_body(n, Instant::now() + limits.body_timeout)?
            }
            Framing::Chunked => {
                self.continue_if_expected(&request)?;
                self.read_chunked_body(Instant::now() + limits.body_timeout)?
            }
        };
        Ok(request)
    }

    /// Waits for the first byte of a request: up to the idle timeout, and,
    /// once the server is stopping, up to the close grace.
    fn wait_first_byte<S>(&mut self, handler: &impl Handler<S>) -> Result<(), ReadError> {
        let limits = &self.shared.limits;
        let idle_deadline = Instant::now() + limits.idle_timeout;
        let mut stop_deadline: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if self.shared.stopping.load(Ordering::SeqCst) {
                let end = *stop_deadline.get_or_insert(now + limits.close_grace);
                if now >= end {
                    return Err(ReadError::Closed);
                }
            }
            if now >= idle_deadline {
                return Err(ReadError::Closed);
            }
            // An answer the socket did not take at once, or one given up
            // at its deadline, is written from here.
            if self
                .settle_until(now, handler)
                .is_err_and(|e| !is_timeout(&e))
            {
                return Err(ReadError::Closed);
            }
            // Wake up now and then to notice a stop.
            let slice = idle_deadline.min(now + Duration::from_millis(50));
            match self.read_some(slice) {
                Ok(0) => return Err(ReadError::Closed),
                Ok(_) => return Ok(()),
                Err(err) if is_timeout(&err) => continue,
                Err(_) => return Err(ReadError::Closed),
            }
        }
    }

    /// Reads more bytes into the buffer before `deadline`.
    fn read_more(
        &mut self,
        deadline: Instant,
        status: u16,
        why: &'static str,
    ) -> Result<(), ReadError> {
        match self.read_some(deadline) {
            Ok(0) => Err(ReadError::Closed),
            Ok(_) => Ok(()),
            Err(err) if is_timeout(&err) => Err(ReadError::Reject(status, why)),
            Err(_) => Err(ReadError::Closed),
        }
    }

    fn read_some(&mut self, deadline: Instant) -> io::Result<usize> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        // One system call saved per request: the timeout set last is kept
        // when it ends at most 1 ms past the deadline and not much before
        // it (the callers loop until their deadline anyway).
        let keep = self.read_timeout.is_some_and(|set| {
            set <= left + Duration::from_millis(1) && left < set + Duration::from_millis(10)
        });
        if !keep {
            self.stream.set_read_timeout(Some(left))?;
            self.read_timeout = Some(left);
        }
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    fn continue_if_expected(&mut self, request: &Request) -> Result<(), ReadError> {
        if request
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
            && self.buf.is_empty()
        {
            self.stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .map_err(|_| ReadError::Closed)?;
        }
        Ok(())
    }

    fn read_exact_body(&mut self, len: usize, deadline: Instant) -> Result<Vec<u8>, ReadError> {
        while self.buf.len() < len {
            self.read_more(deadline, 408, "request body not received in time")?;
        }
        Ok(self.buf.drain(..len).collect())
    }

    fn read_chunked_body(&mut self, deadline: Instant) -> Result<Vec<u8>, ReadError> {
        let max = self.shared.limits.max_body;
        let mut body = Vec::new();
        loop {
            let (start, size) = loop {
                match httparse::parse_chunk_size(&self.buf) {
                    Ok(httparse::Status::Complete((start, size))) => break (start, size),
                    Ok(httparse::Status::Partial) if self.buf.len() < 1024 => {
                        self.read_more(deadline, 408, "request body not received in time")?;
                    }
                    _ => return Err(ReadError::Reject(400, "malformed chunked body")),
                }
            };
            let size = usize::try_from(size).unwrap_or(usize::MAX);
            if size > max.saturating_sub(body.len()) {
                return Err(ReadError::Reject(413, "request body too large"));
            }
            // The chunk, then its CRLF (or, after the last one, the final CRLF;
            // trailers are not supported).
            let need = start + size + 2;
            while self.buf.len() < need {
                self.read_more(deadline, 408, "request body not received in time")?;
            }
            if &self.buf[start + size..need] != b"\r\n" {
                return Err(ReadError::Reject(400, "malformed chunked body"));
            }
            body.extend_from_slice(&self.buf[start..start + size]);
            self.buf.drain(..need);
            if size == 0 {
                return Ok(body);
            }
        }
    }
}

enum Framing {
    None,
    Length(usize),
    Chunked,
}

/// Parses a complete head at the start of `buf`; `None` when more bytes
/// are needed.
fn parse_head(buf: &[u8], max_head: usize) -> Result<Option<(usize, Request, Framing)>, ReadError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ReadError::Reject(431, "too many headers"));
        }
        Err(_) => return Err(ReadError::Reject(400, "malformed request")),
    };
    if head_len > max_head {
        return Err(ReadError::Reject(431, "request head too large"));
    }
    let method = req.method.unwrap_or_default().to_string();
    let target = req.path.unwrap_or("/");
    let path = target.split('?').next().unwrap_or("/").to_string();
    let mut list = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let Ok(value) = std::str::from_utf8(h.value) else {
            return Err(ReadError::Reject(400, "header value is not UTF-8"));
        };
        list.push((h.name.to_ascii_lowercase(), value.trim().to_string()));
    }
    let request = Request {
        method,
        path,
        headers: list,
        body: Vec::new(),
    };
    let chunked = request
        .header("transfer-encoding")
        .map(|te| te.to_ascii_lowercase());
    let lengths: Vec<&str> = request
        .headers
        .iter()
        .filter(|(n, _)| n == "content-length")
        .map(|(_, v)| v.as_str())
        .collect();
    let framing = match (chunked.as_deref(), lengths.as_slice()) {
        (Some(_), [_, ..]) => {
            return Err(ReadError::Reject(
                400,
                "both Content-Length and Transfer-Encoding",
            ));
        }
        (Some("chunked"), []) => Framing::Chunked,
        (Some(_), []) => return Err(ReadError::Reject(501, "unsupported transfer encoding")),
        (None, []) => Framing::None,
        (None, [first, rest @ ..]) => {
            if rest.iter().any(|v| v != first) {
                return Err(ReadError::Reject(400, "conflicting Content-Length headers"));
            }
            match first.parse::<usize>() {
                Ok(n) => Framing::Length(n),
                Err(_) => return Err(ReadError::Reject(400, "invalid Content-Length")),
            }
        }
    };
    Ok(Some((head_len, request, framing)))
}

fn wants_close(request: &Request) -> bool {
    request
        .header("connection")
        .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
}

fn is_timeout(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "",
    }
}

fn write_response(stream: &mut TcpStream, response: &Response, close: bool) -> io::Result<()> {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    stream.write_all(&encode(response, close))?;
    stream.flush()
}

/// A response's bytes on the wire.
fn encode(response: &Response, close: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + response.body.len());
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    );
    for (name, value) in &response.headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&response.body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A connected pair on loopback: (server side, client side).
    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        (server, client)
    }

    fn outbox(server: &TcpStream) -> Arc<Outbox> {
        Arc::new(Outbox::new(server.try_clone().expect("clone")))
    }

    fn later(outbox: &Arc<Outbox>) -> Later<'_> {
        Later {
            outbox,
            close: false,
        }
    }

    /// Reads from `client` until `n` complete responses have arrived; their
    /// status codes and bodies, in order.
    fn read_responses(client: &mut TcpStream, n: usize) -> Vec<(u16, String)> {
        let mut buf = Vec::new();
        let mut out = Vec::new();
        let mut chunk = [0u8; 65536];
        while out.len() < n {
            let got = client.read(&mut chunk).expect("read a response");
            assert!(got > 0, "connection closed after {} response(s)", out.len());
            buf.extend_from_slice(&chunk[..got]);
            loop {
                let mut headers = [httparse::EMPTY_HEADER; 16];
                let mut response = httparse::Response::new(&mut headers);
                let Ok(httparse::Status::Complete(head)) = response.parse(&buf) else {
                    break;
                };
                let status = response.code.expect("a status");
                let len: usize = response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .map(|h| {
                        std::str::from_utf8(h.value)
                            .expect("utf-8")
                            .parse()
                            .expect("a length")
                    })
                    .expect("a Content-Length");
                if buf.len() < head + len {
                    break;
                }
                let body = String::from_utf8(buf[head..head + len].to_vec()).expect("utf-8");
                buf.drain(..head + len);
                out.push((status, body));
            }
        }
        assert!(buf.is_empty(), "bytes after the last response: {buf:?}");
        out
    }

    fn ok(n: u32) -> Response {
        Response::json(202, &serde_json::json!({ "n": n }))
    }

    #[test]
    fn a_deferred_answer_is_written_by_the_thread_that_has_it() {
        let (server, mut client) = pair();
        let outbox = outbox(&server);
        let deferred = later(&outbox).defer(Instant::now() + Duration::from_secs(10));
        assert!(outbox.is_pending());
        let written = std::thread::spawn(move || deferred.respond(ok(1), || {}))
            .join()
            .expect("answering thread");
        assert!(written, "an answer in time is written");
        assert!(!outbox.is_pending());
        assert_eq!(
            read_responses(&mut client, 1),
            vec![(202, r#"{"n":1}"#.to_string())]
        );
    }

    #[test]
    fn what_a_full_socket_does_not_take_is_written_by_the_handler_thread_in_order() {
        let (server, mut client) = pair();
        let socket = socket2::SockRef::from(&server);
        socket
            .set_send_buffer_size(4096)
            .expect("small send buffer");
        let outbox = outbox(&server);
        // Fill the socket with answers the client does not read yet; the
        // rest of the one it did not take stands in the outbox, as a
        // deferred answer's would. Then a deferred answer queues behind it.
        let mut filled = 0u32;
        let filler = encode(&ok(0), false);
        loop {
            let sent = send_now(&outbox.stream, &filler).expect("send");
            filled += 1;
            if sent < filler.len() {
                outbox.lock().unsent.extend_from_slice(&filler[sent..]);
                break;
            }
            assert!(filled < 1_000_000, "the socket never filled");
        }
        let deferred = later(&outbox).defer(Instant::now() + Duration::from_secs(10));
        assert!(deferred.respond(ok(7), || {}), "an answer in time is taken");
        assert!(
            !outbox.lock().unsent.is_empty(),
            "the answer was not held back"
        );
        // The client reads while the handler thread writes the rest.
        let reader = std::thread::spawn(move || read_responses(&mut client, filled as usize + 1));
        let gave_up = std::cell::Cell::new(false);
        outbox
            .settle(Instant::now() + Duration::from_secs(10), &|| {
                gave_up.set(true)
            })
            .expect("settled");
        assert!(!gave_up.get(), "nothing was given up");
        let responses = reader.join().expect("reader");
        assert_eq!(responses.len(), filled as usize + 1);
        assert!(
            responses[..filled as usize]
                .iter()
                .all(|r| r.1 == r#"{"n":0}"#)
        );
        assert_eq!(responses.last(), Some(&(202, r#"{"n":7}"#.to_string())));
    }

    #[test]
    fn an_answer_missing_at_its_deadline_becomes_503_and_the_late_one_is_dropped() {
        let (server, mut client) = pair();
        let outbox = outbox(&server);
        let deferred = later(&outbox).defer(Instant::now() + Duration::from_millis(20));
        let gave_up = std::cell::Cell::new(false);
        outbox
            .settle(Instant::now() + Duration::from_secs(10), &|| {
                gave_up.set(true)
            })
            .expect("settled");
        assert!(gave_up.get(), "the missing answer was given up");
        let counted = std::cell::Cell::new(false);
        assert!(
            !deferred.respond(ok(1), || counted.set(true)),
            "a late answer is dropped"
        );
        assert!(!counted.get(), "a dropped answer is not counted");
        // The next answer on the connection follows the 503 directly.
        assert!(
            later(&outbox)
                .defer(Instant::now() + Duration::from_secs(10))
                .respond(ok(2), || {})
        );
        let responses = read_responses(&mut client, 2);
        assert_eq!(responses[0].0, 503);
        assert!(
            responses[0].1.contains("no answer in time"),
            "{responses:?}"
        );
        assert_eq!(responses[1], (202, r#"{"n":2}"#.to_string()));
    }

    #[test]
    fn a_deferred_answer_dropped_unanswered_says_503() {
        let (server, mut client) = pair();
        let outbox = outbox(&server);
        drop(later(&outbox).defer(Instant::now() + Duration::from_secs(10)));
        assert!(!outbox.is_pending());
        let responses = read_responses(&mut client, 1);
        assert_eq!(responses[0].0, 503);
    }

    #[test]
    fn a_connection_the_peer_closed_is_reported_broken_and_not_waited_for() {
        let (server, client) = pair();
        let outbox = outbox(&server);
        drop(client);
        // The first answers may still be taken (the peer's reset comes back
        // after them); a later one fails.
        let mut broken = false;
        for _ in 0..200 {
            later(&outbox)
                .defer(Instant::now() + Duration::from_secs(10))
                .respond(ok(1), || {});
            if outbox.lock().broken {
                broken = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(broken, "answering a closed peer never failed");
        let settled = outbox.settle(Instant::now() + Duration::from_secs(10), &|| {});
        assert_eq!(
            settled.map_err(|e| e.kind()),
            Err(io::ErrorKind::BrokenPipe)
        );
    }
}
