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
    /// Answers one request.
    fn handle(&self, state: &mut S, request: &Request, stopping: bool) -> Response;

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
    for conn in open.values().filter(|c| c.idle) {
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
        if let Ok(clone) = stream.try_clone() {
            shared
                .open
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(
                    id,
                    Conn {
                        stream: clone,
                        idle: true,
                    },
                );
        }
        let mut conn = Connection {
            stream,
            buf: Vec::with_capacity(4096),
            id,
            shared,
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
}

impl Connection<'_> {
    fn serve<S, H: Handler<S>>(&mut self, state: &mut S, handler: &H) {
        let _ = self.stream.set_nodelay(true);
        loop {
            let request = match self.read_request() {
                Ok(request) => request,
                Err(ReadError::Closed) => return,
                Err(ReadError::Reject(status, why)) => {
                    handler.refused(status, why);
                    let response = Response::json(status, &serde_json::json!({ "error": why }));
                    let _ = write_response(&mut self.stream, &response, true);
                    if let Ok(stream) = self.stream.try_clone() {
                        linger_close(stream, Duration::from_millis(500));
                    }
                    return;
                }
            };
            let stopping = self.shared.stopping.load(Ordering::SeqCst);
            let response = handler.handle(state, &request, stopping);
            let close = stopping || wants_close(&request);
            if write_response(&mut self.stream, &response, close).is_err() || close {
                let _ = self.stream.shutdown(Shutdown::Write);
                return;
            }
        }
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
    fn read_request(&mut self) -> Result<Request, ReadError> {
        let limits = &self.shared.limits;
        if self.buf.is_empty() {
            // Idle only until a request starts: a stop closes idle
            // connections, never one with a request under way.
            self.set_idle(true);
            let first = self.wait_first_byte();
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
    fn wait_first_byte(&mut self) -> Result<(), ReadError> {
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
        self.stream.set_read_timeout(Some(left))?;
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
    let mut out = Vec::with_capacity(160 + response.body.len());
    write!(
        out,
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    )?;
    for (name, value) in &response.headers {
        write!(out, "{name}: {value}\r\n")?;
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&response.body);
    stream.write_all(&out)?;
    stream.flush()
}
