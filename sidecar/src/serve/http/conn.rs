//! One connection on a handler thread: reading requests under their
//! deadlines, handing them to the [`Handler`], writing the answers.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::deferred::{Incoming, Later, Owed};
use super::poll::{Conn, park};
use super::readiness::Woken;
use super::server::{ServerState, still_open};
use super::wire::{encode, encode_head, write_response};
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

/// Answers a connection a handler will not serve, without reading its
/// request (a TLS one is closed: no answer can be written before its
/// handshake).
fn refuse(conn: &Conn, message: &str) {
    if conn.outbox.is_tls() {
        linger_close(&conn.stream, Duration::from_millis(50));
        return;
    }
    let _ = conn.stream.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = write_response(&conn.stream, &Response::unavailable(message), true);
    linger_close(&conn.stream, Duration::from_millis(50));
}

/// Closes after an answer sent before the request was read in full: stop
/// writing, then read and discard what the client is still sending for a
/// moment. Closing a socket with unread data makes the kernel send a reset,
/// which can reach the client before it has read our answer (Go's server
/// does the same "lingering close").
fn linger_close(mut stream: &TcpStream, linger: Duration) {
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
            // The client closed: nothing more will come.
            Ok(0) => return,
            // The time is up (or the connection broke).
            Err(_) => break,
            Ok(n) => discarded += n,
        }
    }
    // What came since the last read (this thread may have waited for a
    // core past the end) is read too, without waiting.
    if stream.set_nonblocking(true).is_ok() {
        still_open(stream);
    }
}

/// What a handler thread holds between one wait and the next.
struct Turn<'a> {
    shared: &'a ServerState,
    /// The connections one wait brought, taken out of the parking at once
    /// and served in turn; handed over to other handler threads when
    /// serving one of them may block ([`Turn::may_block`]).
    spare: RefCell<VecDeque<Conn>>,
    /// It holds a seat among the threads that wait for events
    /// (`readiness.rs`).
    seated: Cell<bool>,
}

impl Turn<'_> {
    /// Before this thread may block: the connections it took with the one
    /// it serves go to other handler threads (they must not wait behind a
    /// slow client, invariant 8), and its seat to a thread standing by
    /// (the intake must not wait for this thread either).
    fn may_block(&self) {
        for conn in self.spare.borrow_mut().drain(..) {
            self.shared.readiness.send(conn);
        }
        if self.seated.replace(false) {
            self.shared.readiness.give_seat();
        }
    }
}

/// A handler thread: waits for a parked connection to become readable
/// (or for one `http-poll` hands over), serves the requests whose bytes
/// are there, and parks it again when it has to wait (invariant 8).
pub(super) fn handler_loop<S, H: Handler<S>>(
    shared: &ServerState,
    handler: &H,
    make_state: &dyn Fn() -> io::Result<S>,
) {
    let mut state = None;
    let mut keys = Vec::new();
    let turn = Turn {
        shared,
        spare: RefCell::new(VecDeque::new()),
        seated: Cell::new(false),
    };
    // Ends once the hand-over queue is closed, after serving what the same
    // wait brought.
    let mut closed = false;
    // Each connection is this thread's until it closes or is parked again
    // (invariant 1).
    while !closed {
        // Standing by until a seat is free (kept from one wait to the
        // next, unless given up to block).
        if !turn.seated.get() {
            turn.seated
                .set(shared.readiness.take_seat(&*shared.standing));
        }
        shared.readiness.wait(&mut keys);
        for &key in &keys {
            match shared.readiness.woken(key) {
                // Not parked: an event of an earlier wait (`on_unsent`
                // while a handler thread had it), or `http-poll` took it
                // out first.
                Woken::Ready(id) => turn.spare.borrow_mut().extend(shared.parking.take(id)),
                Woken::Handed(conn) => turn.spare.borrow_mut().push_back(conn),
                Woken::Closed => closed = true,
                Woken::Nothing => {}
            }
        }
        loop {
            let Some(conn) = turn.spare.borrow_mut().pop_front() else {
                break;
            };
            if state.is_none() {
                match make_state() {
                    Ok(s) => state = Some(s),
                    Err(err) => {
                        log::error!("http handler cannot set up: {err}");
                        handler.refused(503, "handler unavailable", None);
                        // Refusing lingers: the others go to other threads.
                        turn.may_block();
                        refuse(&conn, "temporarily unavailable");
                        continue;
                    }
                }
            }
            let Some(state) = state.as_mut() else {
                continue;
            };
            let served = ServedConn {
                conn,
                shared,
                turn: &turn,
                read_timeout: None,
                head: None,
                served: false,
            };
            if let Some(conn) = served.serve(state, handler) {
                park(shared, conn);
            }
        }
    }
}

/// Why a request could not be read.
pub(super) enum ReadError {
    /// The peer closed, or the connection broke, or a head not complete
    /// at the stop: close without an answer.
    Closed,
    /// Answer this status, then close.
    Reject(u16, &'static str),
    /// No bytes to read now: the connection waits in the poller.
    Park,
}

/// A connection as its handler thread serves it: the socket (read by this
/// thread only, invariant 1), the bytes read ahead, and its outbox.
struct ServedConn<'a> {
    conn: Conn,
    shared: &'a ServerState,
    /// The other connections this thread took at the same wait, waiting
    /// their turn, and its seat: both given up before this thread may
    /// block on this one.
    turn: &'a Turn<'a>,
    /// The read timeout set on the socket.
    read_timeout: Option<Duration>,
    /// The method and path of the request being read, once its head is
    /// (for a refusal's metrics).
    head: Option<(String, String)>,
    /// A request has been read since the poller handed the connection
    /// over.
    served: bool,
}

impl ServedConn<'_> {
    /// Serves the requests there are bytes for; the connection when it
    /// goes back to the poller.
    fn serve<S, H: Handler<S>>(mut self, state: &mut S, handler: &H) -> Option<Conn> {
        let park = self.serve_requests(state, handler);
        // A connection whose only debt is an answer another thread will
        // write waits for its next bytes in the poller at once: this thread
        // is not woken for the answer (invariant 8). Before the stop only:
        // after it, the poller holds only connections that owe nothing.
        if park
            && !self.shared.stopping.load(Ordering::SeqCst)
            && self.conn.outbox.owes() != Owed::Bytes
        {
            return Some(self.conn);
        }
        // Otherwise the answer owed is given before the connection closes
        // or waits in the poller (bounded by the answer's deadline;
        // invariants 2, 7).
        let settled = self.settle(handler);
        (park && settled.is_ok()).then_some(self.conn)
    }

    /// `true` when the connection is to wait in the poller.
    fn serve_requests<S, H: Handler<S>>(&mut self, state: &mut S, handler: &H) -> bool {
        loop {
            let (request, asks_close, keep_alive_10) = match self.read_request(handler) {
                Ok(read) => read,
                Err(ReadError::Park) => return true,
                Err(ReadError::Closed) => return false,
                Err(ReadError::Reject(status, why)) => {
                    let head = self.head.as_ref().map(|(m, p)| (m.as_str(), p.as_str()));
                    handler.refused(status, why, head);
                    // Answering and lingering may block.
                    self.turn.may_block();
                    if self.settle(handler).is_err() {
                        return false;
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
                    // Not during a TLS handshake: no HTTP can be said yet.
                    if !self.conn.outbox.handshaking() {
                        let _ = self.conn.outbox.write_own(encode(&response, true), &|| {});
                    }
                    self.conn.outbox.close_notify();
                    linger_close(&self.conn.stream, linger);
                    return false;
                }
            };
            // One answer outstanding at most: answers go in request order
            // (invariant 2).
            if self.settle(handler).is_err() {
                return false;
            }
            let stopping = self.shared.stopping.load(Ordering::SeqCst);
            // Invariant 6: after the stop begins, the last answer, closing.
            let close = stopping || asks_close;
            let head_only = request.method == "HEAD";
            let may_block = || self.turn.may_block();
            let later = Later {
                outbox: &self.conn.outbox,
                close,
                may_block: &may_block,
            };
            let written = match handler.handle(state, &request, stopping, &later) {
                Some(mut response) => {
                    if keep_alive_10 && !close {
                        response.headers.push(("Connection", "keep-alive".into()));
                    }
                    // A HEAD answer: GET's head, Content-Length included,
                    // without its body (RFC 9110 §9.3.2).
                    let wire = if head_only {
                        encode_head(&response, close)
                    } else {
                        encode(&response, close)
                    };
                    // Sent at once when the socket takes it (nearly
                    // always); otherwise this thread is about to wait for
                    // its client: the others it took, and its seat, go.
                    self.settle(handler)
                        .and_then(|()| self.conn.outbox.write_own(wire, &|| self.turn.may_block()))
                }
                // Answered by another thread; when it is the last one, wait for it.
                None if close => self.settle(handler),
                None => Ok(()),
            };
            if written.is_err() || close {
                if written.is_ok() {
                    self.conn.outbox.close_notify();
                    let _ = self.settle(handler);
                }
                let _ = self.conn.stream.shutdown(Shutdown::Write);
                return false;
            }
        }
    }

    /// Lets the outstanding answer (if any) be written first.
    fn settle<S>(&mut self, handler: &impl Handler<S>) -> io::Result<()> {
        self.settle_until(Instant::now() + SETTLE_WAIT, handler)
    }

    /// [`Outbox::settle`](super::deferred::Outbox::settle), telling the handler of an answer given up.
    fn settle_until<S>(&mut self, deadline: Instant, handler: &impl Handler<S>) -> io::Result<()> {
        if self.conn.outbox.owes() != Owed::Nothing {
            // It waits for the answer, or for the socket to take it.
            self.turn.may_block();
        }
        self.conn.outbox.settle(deadline, &|| {
            handler.refused(503, "no answer in time", None);
        })
    }

    /// Reads the next request: its head from the bytes there are (when
    /// they run out before its end, [`ReadError::Park`]: the connection
    /// waits in the poller, under the header deadline counted from the
    /// head's first byte), then its body under its deadline.
    /// Also whether the client wants this to be the connection's last
    /// request, and whether it is HTTP/1.0 asking for keep-alive.
    fn read_request<S>(
        &mut self,
        handler: &impl Handler<S>,
    ) -> Result<(Request, bool, bool), ReadError> {
        self.head = None;
        let limits = &self.shared.limits;
        // After a request, with nothing buffered, the connection goes back
        // to the poller without trying to read: a client that waits for
        // its answer has sent nothing more, and one that has (pipelining)
        // finds its registration firing at once, as it is armed. One
        // system call (a read that would block) saved per request. Not
        // when the TLS peer has closed its session: that is read now.
        if self.served
            && self.conn.buf.is_empty()
            && self.conn.head_started.is_none()
            && !self.conn.peer_closed
            && !self.conn.outbox.handshaking()
        {
            return Err(ReadError::Park);
        }
        // A head starts with its first byte, or with the first byte of a
        // TLS handshake (which is read under the same deadline). Records
        // after the handshake that carry no data (a TLS key update) leave
        // the connection idle.
        while self.conn.buf.is_empty() && !self.conn.outbox.handshaking() {
            if !self.read_now()? {
                return Err(ReadError::Park);
            }
        }
        if self.conn.buf.is_empty() && self.conn.head_started.is_none() && !self.read_now()? {
            return Err(ReadError::Park);
        }
        let started = *self.conn.head_started.get_or_insert_with(Instant::now);
        let head_deadline = started + limits.header_timeout;
        let head = loop {
            if let Some(parsed) = parse_head(&self.conn.buf, limits.max_head)? {
                break parsed;
            }
            if self.conn.buf.len() >= limits.max_head {
                return Err(ReadError::Reject(431, "request head too large"));
            }
            // A head not yet complete is closed at the stop (invariant 7).
            if self.shared.stop_deadline.get().is_some() {
                return Err(ReadError::Closed);
            }
            if Instant::now() >= head_deadline {
                return Err(ReadError::Reject(408, "request head not received in time"));
            }
            if !self.read_now()? {
                return Err(ReadError::Park);
            }
        };
        self.conn.head_started = None;
        self.conn.buf.drain(..head.len);
        let Head {
            mut request,
            framing,
            close,
            keep_alive_10,
            ..
        } = head;
        request.peer = self.conn.peer;
        if self.conn.outbox.is_tls() && self.conn.client.is_none() {
            self.conn.client = Some(self.conn.outbox.client_subject().map(Arc::from));
        }
        request.client = self.conn.client.clone().flatten();
        self.head = Some((request.method.clone(), request.path.clone()));
        request.body = match framing {
            Framing::None => Vec::new(),
            Framing::Length(n) if n > limits.max_body => {
                return Err(ReadError::Reject(413, "request body too large"));
            }
            Framing::Length(n) => {
                self.continue_if_expected(&request, handler)?;
                self.read_exact_body(n, Instant::now() + limits.body_timeout)?
            }
            Framing::Chunked => {
                self.continue_if_expected(&request, handler)?;
                self.read_chunked_body(Instant::now() + limits.body_timeout)?
            }
        };
        self.served = true;
        Ok((request, close, keep_alive_10))
    }

    /// Reads what is there without waiting: `false` when nothing is.
    /// (`true` may add nothing to the buffer: TLS records of the handshake.)
    fn read_now(&mut self) -> Result<bool, ReadError> {
        if self.conn.peer_closed {
            return Err(ReadError::Closed);
        }
        let socket = socket2::SockRef::from(&self.conn.stream);
        let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); 8192];
        loop {
            match socket.recv_with_flags(&mut chunk, libc::MSG_DONTWAIT) {
                Ok(0) => return Err(ReadError::Closed),
                Ok(n) => {
                    // SAFETY: recv(2) initialised the first `n` bytes.
                    let read =
                        unsafe { std::slice::from_raw_parts(chunk.as_ptr().cast::<u8>(), n) };
                    self.take_in(read)?;
                    return Ok(true);
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(_) => return Err(ReadError::Closed),
            }
        }
    }

    /// Reads more of a body into the buffer before `deadline`. Wakes up
    /// now and then to notice a stop: the body gets until
    /// [`body_stop_end`] and is answered `503` (invariant 7).
    fn read_more(
        &mut self,
        deadline: Instant,
        status: u16,
        why: &'static str,
    ) -> Result<(), ReadError> {
        loop {
            let now = Instant::now();
            let mut slice = deadline.min(now + Duration::from_millis(50));
            if let Some(&stop) = self.shared.stop_deadline.get() {
                let end = body_stop_end(stop);
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
        // A blocking read: the bytes may be slow to come.
        self.turn.may_block();
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
            self.conn.stream.set_read_timeout(Some(left))?;
            self.read_timeout = Some(left);
        }
        if self.conn.peer_closed {
            return Ok(0);
        }
        let mut chunk = [0u8; 8192];
        let n = loop {
            match (&*self.conn.stream).read(&mut chunk) {
                // A stop signal interrupts a read with a timeout even under
                // SA_RESTART (signal(7)): not the client's doing.
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                other => break other?,
            }
        };
        if self.take_in(&chunk[..n]).is_err() {
            return Err(io::ErrorKind::InvalidData.into());
        }
        Ok(n)
    }

    /// Adds bytes read to the buffer: as they are, or decrypted (`tls.rs`).
    /// A TLS peer that broke the protocol closes the connection; one that
    /// closed its session is served what it sent before.
    fn take_in(&mut self, read: &[u8]) -> Result<(), ReadError> {
        match self.conn.outbox.take_in(read, &mut self.conn.buf) {
            Ok(Incoming::Open) => Ok(()),
            Ok(Incoming::Closed) => {
                self.conn.peer_closed = true;
                Ok(())
            }
            Err(()) => Err(ReadError::Closed),
        }
    }

    /// Says `100 Continue` to a client waiting for it before it sends the
    /// body: after the answer before it (invariant 2: it is this
    /// request's interim answer).
    fn continue_if_expected<S>(
        &mut self,
        request: &Request,
        handler: &impl Handler<S>,
    ) -> Result<(), ReadError> {
        if request
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
            && self.conn.buf.is_empty()
        {
            self.settle(handler)
                .and_then(|()| {
                    self.conn
                        .outbox
                        .write_own(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec(), &|| {
                            self.turn.may_block()
                        })
                })
                .map_err(|_| ReadError::Closed)?;
        }
        Ok(())
    }

    fn read_exact_body(&mut self, len: usize, deadline: Instant) -> Result<Vec<u8>, ReadError> {
        while self.conn.buf.len() < len {
            self.read_more(deadline, 408, BODY_LATE)?;
        }
        Ok(self.conn.buf.drain(..len).collect())
    }

    fn read_chunked_body(&mut self, deadline: Instant) -> Result<Vec<u8>, ReadError> {
        let max = self.shared.limits.max_body;
        let mut body = Vec::new();
        loop {
            let (start, size) = loop {
                match httparse::parse_chunk_size(&self.conn.buf) {
                    Ok(httparse::Status::Complete((start, size))) => break (start, size),
                    Ok(httparse::Status::Partial) if self.conn.buf.len() < 1024 => {
                        self.read_more(deadline, 408, BODY_LATE)?;
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
            while self.conn.buf.len() < need {
                self.read_more(deadline, 408, BODY_LATE)?;
            }
            if &self.conn.buf[start + size..need] != b"\r\n" {
                return Err(ReadError::Reject(400, "malformed chunked body"));
            }
            body.extend_from_slice(&self.conn.buf[start..start + size]);
            self.conn.buf.drain(..need);
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
        client: None,
        id: std::sync::OnceLock::new(),
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
