//! One connection on a handler thread: reading requests under their
//! deadlines, handing them to the [`Handler`], writing the answers.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::deferred::{Later, Outbox};
use super::server::{OpenConn, ServerState};
use super::wire::{write_head_only, write_response};
use super::{Handler, Request, Response};

/// How long a handler thread waits for an outstanding answer before going
/// on (the answer's own deadline usually ends the wait first).
const SETTLE_WAIT: Duration = Duration::from_secs(15);

/// The `408` of a body too slow.
const BODY_LATE: &str = "request body not received in time";

/// How long before the stop's deadline a body still being read is given
/// up and answered `503`: time to write that answer, linger
/// [`STOP_LINGER`] and return before the stop shuts the sockets down.
const BODY_STOP_MARGIN: Duration = Duration::from_millis(300);

/// The lingering close after an answer during a stop.
const STOP_LINGER: Duration = Duration::from_millis(100);

/// Until when a body under way at a stop ending at `stop` is read.
fn body_stop_end(stop: Instant) -> Instant {
    stop.checked_sub(BODY_STOP_MARGIN).unwrap_or(stop)
}

/// What is being read: a request's head or its body.
#[derive(Clone, Copy)]
enum Phase {
    Head,
    Body,
}

/// Answers a connection a handler will not serve, without reading its
/// request.
fn refuse(mut stream: TcpStream, message: &str) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = write_response(&mut stream, &Response::unavailable(message), true);
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
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Ok(0) | Err(_) => break,
            Ok(n) => discarded += n,
        }
    }
}

pub(super) fn handler_loop<S, H: Handler<S>>(
    conns: &Receiver<(u64, TcpStream)>,
    shared: &ServerState,
    handler: &H,
    make_state: &dyn Fn() -> io::Result<S>,
) {
    let mut state = None;
    // Each connection is this thread's until it closes (invariant 1).
    for (id, stream) in conns.iter() {
        if state.is_none() {
            match make_state() {
                Ok(s) => state = Some(s),
                Err(err) => {
                    log::error!("http handler cannot set up: {err}");
                    handler.refused(503, "handler unavailable", None);
                    refuse(stream, "temporarily unavailable");
                    continue;
                }
            }
        }
        let Some(state) = state.as_mut() else {
            continue;
        };
        let (Ok(for_stop), Ok(for_answers)) = (stream.try_clone(), stream.try_clone()) else {
            handler.refused(503, "cannot serve the connection", None);
            refuse(stream, "temporarily unavailable");
            continue;
        };
        let outbox = Arc::new(Outbox::new(for_answers));
        let open = {
            let mut open = shared.open.lock().unwrap_or_else(|e| e.into_inner());
            open.insert(
                id,
                OpenConn {
                    stream: for_stop,
                    idle: true,
                    outbox: outbox.clone(),
                },
            );
            open.len()
        };
        handler.connections(open);
        let mut conn = ServedConn {
            peer: stream.peer_addr().ok(),
            stream,
            buf: Vec::with_capacity(4096),
            id,
            shared,
            outbox,
            read_timeout: None,
            head: None,
        };
        conn.serve(state, handler);
        let open = {
            let mut open = shared.open.lock().unwrap_or_else(|e| e.into_inner());
            open.remove(&id);
            open.len()
        };
        handler.connections(open);
    }
}

/// Why a request could not be read.
pub(super) enum ReadError {
    /// The peer closed, or the connection broke, or the idle wait ended:
    /// close without an answer.
    Closed,
    /// Answer this status, then close.
    Reject(u16, &'static str),
}

/// A connection as its handler thread serves it: the socket (read by this
/// thread only, invariant 1), the bytes read ahead, and its outbox.
struct ServedConn<'a> {
    stream: TcpStream,
    /// Bytes read and not yet consumed (pipelined requests).
    buf: Vec<u8>,
    id: u64,
    shared: &'a ServerState,
    outbox: Arc<Outbox>,
    /// The read timeout set on the socket.
    read_timeout: Option<Duration>,
    /// The peer's address, given to each request.
    peer: Option<std::net::SocketAddr>,
    /// The method and path of the request being read, once its head is
    /// (for a refusal's metrics).
    head: Option<(String, String)>,
}

impl ServedConn<'_> {
    fn serve<S, H: Handler<S>>(&mut self, state: &mut S, handler: &H) {
        let _ = self.stream.set_nodelay(true);
        self.serve_requests(state, handler);
        // Whatever happened, the answer owed is given before the
        // connection closes (bounded by its own deadline).
        let _ = self.settle(handler);
    }

    fn serve_requests<S, H: Handler<S>>(&mut self, state: &mut S, handler: &H) {
        loop {
            let (request, asks_close, keep_alive_10) = match self.read_request(handler) {
                Ok(read) => read,
                Err(ReadError::Closed) => return,
                Err(ReadError::Reject(status, why)) => {
                    let head = self.head.as_ref().map(|(m, p)| (m.as_str(), p.as_str()));
                    handler.refused(status, why, head);
                    if self.settle(handler).is_err() {
                        return;
                    }
                    let response = if status == 503 {
                        Response::unavailable(why)
                    } else {
                        Response::json(status, &serde_json::json!({ "error": why }))
                    };
                    // During a stop the linger is short: the thread must
                    // return before the stop's deadline (invariant 7).
                    let linger = if self.shared.stopping.load(Ordering::SeqCst) {
                        STOP_LINGER
                    } else {
                        Duration::from_millis(500)
                    };
                    let _ = write_response(&mut self.stream, &response, true);
                    if let Ok(stream) = self.stream.try_clone() {
                        linger_close(stream, linger);
                    }
                    return;
                }
            };
            // One answer outstanding at most: answers go in request order
            // (invariant 2).
            if self.settle(handler).is_err() {
                return;
            }
            let stopping = self.shared.stopping.load(Ordering::SeqCst);
            // Invariant 6: after the stop begins, the last answer, closing.
            let close = stopping || asks_close;
            let head_only = request.method == "HEAD";
            let later = Later {
                outbox: &self.outbox,
                close,
            };
            let written = match handler.handle(state, &request, stopping, &later) {
                Some(mut response) => {
                    if keep_alive_10 && !close {
                        response.headers.push(("Connection", "keep-alive".into()));
                    }
                    // A HEAD answer: GET's head, Content-Length included,
                    // without its body (RFC 9110 §9.3.2).
                    let write = if head_only {
                        write_head_only
                    } else {
                        write_response
                    };
                    self.settle(handler)
                        .and_then(|()| write(&mut self.stream, &response, close))
                }
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
            handler.refused(503, "no answer in time", None);
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
    /// Also whether the client wants this to be the connection's last
    /// request, and whether it is HTTP/1.0 asking for keep-alive.
    fn read_request<S>(
        &mut self,
        handler: &impl Handler<S>,
    ) -> Result<(Request, bool, bool), ReadError> {
        self.head = None;
        let limits = &self.shared.limits;
        if self.buf.is_empty() {
            // Idle only until a request starts: a stop closes idle
            // connections, never one with a request under way (invariant 7).
            self.set_idle(true);
            let first = self.wait_first_byte(handler);
            self.set_idle(false);
            first?;
        }
        let head_deadline = Instant::now() + limits.header_timeout;
        let head = loop {
            if let Some(parsed) = parse_head(&self.buf, limits.max_head)? {
                break parsed;
            }
            if self.buf.len() >= limits.max_head {
                return Err(ReadError::Reject(431, "request head too large"));
            }
            self.read_more(
                head_deadline,
                Phase::Head,
                408,
                "request head not received in time",
            )?;
        };
        self.buf.drain(..head.len);
        let Head {
            mut request,
            framing,
            close,
            keep_alive_10,
            ..
        } = head;
        request.peer = self.peer;
        self.head = Some((request.method.clone(), request.path.clone()));
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
        Ok((request, close, keep_alive_10))
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
            // at its deadline, is written from here (invariants 2, 3).
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

    /// Reads more bytes into the buffer before `deadline`. Wakes up now and
    /// then to notice a stop: a head not yet complete is then closed at
    /// once, a body gets until [`body_stop_end`] and is answered `503`
    /// (invariant 7).
    fn read_more(
        &mut self,
        deadline: Instant,
        phase: Phase,
        status: u16,
        why: &'static str,
    ) -> Result<(), ReadError> {
        loop {
            let now = Instant::now();
            let mut slice = deadline.min(now + Duration::from_millis(50));
            if let Some(&stop) = self.shared.stop_deadline.get() {
                let end = match phase {
                    Phase::Head => return Err(ReadError::Closed),
                    Phase::Body => body_stop_end(stop),
                };
                if now >= end {
                    return Err(ReadError::Reject(503, "shutting down"));
                }
                slice = slice.min(end);
            }
            if now >= deadline {
                return Err(ReadError::Reject(status, why));
            }
            match self.read_some(slice) {
                Ok(0) => return Err(ReadError::Closed),
                Ok(_) => return Ok(()),
                Err(err) if is_timeout(&err) => continue,
                Err(_) => return Err(ReadError::Closed),
            }
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
        let n = loop {
            match self.stream.read(&mut chunk) {
                // A stop signal interrupts a read with a timeout even under
                // SA_RESTART (signal(7)): not the client's doing.
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                other => break other?,
            }
        };
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
            self.read_more(deadline, Phase::Body, 408, BODY_LATE)?;
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
                        self.read_more(deadline, Phase::Body, 408, BODY_LATE)?;
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
                self.read_more(deadline, Phase::Body, 408, BODY_LATE)?;
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

pub(super) enum Framing {
    None,
    Length(usize),
    Chunked,
}

/// A request head as read: the request (without its body), how its body
/// is framed, and whether this is the connection's last request by the
/// client's wish (`Connection: close` on HTTP/1.1; on HTTP/1.0, anything
/// but `Connection: keep-alive`).
pub(super) struct Head {
    pub(super) len: usize,
    pub(super) request: Request,
    pub(super) framing: Framing,
    pub(super) close: bool,
    /// HTTP/1.0 asking for keep-alive: its answers say `keep-alive`.
    pub(super) keep_alive_10: bool,
}

/// Parses a complete head at the start of `buf`; `None` when more bytes
/// are needed. Strict about what decides where a request ends (RFC 9112
/// §6): one `Transfer-Encoding` at most and it says exactly `chunked`, one
/// `Content-Length` at most and it is `1*DIGIT`, never both; on HTTP/1.1
/// exactly one `Host`. Anything else is `400` (and the connection closes),
/// so that no proxy in front of us can read the request's end elsewhere.
pub(super) fn parse_head(buf: &[u8], max_head: usize) -> Result<Option<Head>, ReadError> {
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
    let http10 = req.version == Some(0);
    let method = req.method.unwrap_or_default().to_string();
    let target = req.path.unwrap_or("/");
    let path = origin_path(target)?;
    let query = target
        .split_once('?')
        .map(|(_, q)| q.split('#').next().unwrap_or(""))
        .unwrap_or("")
        .to_string();
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
        query,
        headers: list,
        body: Vec::new(),
        received: Instant::now(),
        peer: None,
    };
    let framing = framing(&request, http10)?;
    if !http10 && request.headers.iter().filter(|(n, _)| n == "host").count() != 1 {
        return Err(ReadError::Reject(
            400,
            "exactly one Host header is required",
        ));
    }
    let tokens = |token: &str| {
        request
            .headers
            .iter()
            .filter(|(n, _)| n == "connection")
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    let (close, keep_alive_10) = if http10 {
        let keep = tokens("keep-alive") && !tokens("close");
        (!keep, keep)
    } else {
        (tokens("close"), false)
    };
    Ok(Some(Head {
        len: head_len,
        request,
        framing,
        close,
        keep_alive_10,
    }))
}

/// The path of a request target, without its query: the origin form
/// (`/path?query`) as it is, the absolute form (`http://host/path`) as its
/// path (RFC 9112 §3.2.2; the authority is not checked: this server
/// answers for whatever name it was reached by). Anything else is kept as
/// it is and matches no route.
fn origin_path(target: &str) -> Result<String, ReadError> {
    let lower = target.get(..8).unwrap_or(target).to_ascii_lowercase();
    let rest = if lower.starts_with("http://") {
        &target[7..]
    } else if lower.starts_with("https://") {
        &target[8..]
    } else {
        return Ok(target.split('?').next().unwrap_or("/").to_string());
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    if end == 0 {
        return Err(ReadError::Reject(400, "absolute target without a host"));
    }
    let path = rest[end..].split(['?', '#']).next().unwrap_or("");
    Ok(if path.is_empty() { "/" } else { path }.to_string())
}

/// Where the request's body ends (RFC 9112 §6.1 to §6.3).
fn framing(request: &Request, http10: bool) -> Result<Framing, ReadError> {
    let values = |name: &str| -> Vec<&str> {
        request
            .headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let codings = values("transfer-encoding");
    let lengths = values("content-length");
    match (codings.as_slice(), lengths.as_slice()) {
        ([], []) => Ok(Framing::None),
        ([_, ..], [_, ..]) => Err(ReadError::Reject(
            400,
            "both Content-Length and Transfer-Encoding",
        )),
        ([_, _, ..], []) => Err(ReadError::Reject(400, "repeated Transfer-Encoding")),
        ([_], []) if http10 => Err(ReadError::Reject(
            400,
            "Transfer-Encoding in an HTTP/1.0 request",
        )),
        ([coding], []) if coding.eq_ignore_ascii_case("chunked") => Ok(Framing::Chunked),
        // A list: chunked not alone (or not last), or codings we do not
        // decode; either way the body's end is not ours to guess.
        ([coding], []) if coding.contains(',') => {
            Err(ReadError::Reject(400, "unsupported transfer coding list"))
        }
        ([_], []) => Err(ReadError::Reject(501, "unsupported transfer encoding")),
        // Repeated Content-Length, even with equal values, is refused
        // (RFC 9110 §8.6 allows either; refusing leaves no two readings).
        ([], [_, _, ..]) => Err(ReadError::Reject(400, "repeated Content-Length")),
        ([], [length]) => {
            if length.is_empty() || !length.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ReadError::Reject(400, "invalid Content-Length"));
            }
            length
                .parse::<usize>()
                .map(Framing::Length)
                .map_err(|_| ReadError::Reject(400, "invalid Content-Length"))
        }
    }
}

fn is_timeout(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}
