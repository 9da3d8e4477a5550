//! Answers written by another thread: [`Later`] hands out a [`Deferred`],
//! and the connection's [`Outbox`] keeps them in request order.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::ServerConnection;

use super::Response;
use super::wire::{encode, send_now};

/// How long writing what is unsent may take, per answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

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
/// outstanding per connection at most, so answers stay in request order
/// (invariant 2).
///
/// On a TLS connection the session lives here too (`tls.rs`): bytes are
/// encrypted under the lock by the thread that writes them, so records
/// are numbered in the order they go out, and bytes read are decrypted
/// under it by the handler thread (reading itself is outside the lock).
pub(super) struct Outbox {
    stream: Arc<TcpStream>,
    /// Whether the connection speaks TLS (fixed when it opens).
    tls: bool,
    /// Called when a deferred answer left bytes the socket did not take:
    /// asks the poller to hand the connection to a handler thread once the
    /// socket can take more (it may be waiting there, invariant 8).
    on_unsent: Option<Box<dyn Fn() + Send + Sync>>,
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
    /// Bytes of an answer the socket did not take at once (on the wire:
    /// TLS records, on a TLS connection).
    unsent: Vec<u8>,
    /// The handler thread is writing bytes it took from `unsent` (outside
    /// the lock): the connection still owes them (invariant 7).
    writing: bool,
    /// Writing an answer failed: the connection is done.
    broken: bool,
    /// The answer written asks the client to close.
    closing: bool,
    /// The TLS session, on a TLS connection.
    session: Option<Box<ServerConnection>>,
}

impl OutState {
    /// What goes on the wire for `plain`: itself, or its TLS records.
    fn seal(&mut self, plain: Vec<u8>) -> Vec<u8> {
        let Some(session) = self.session.as_mut() else {
            return plain;
        };
        // No buffer limit is set (`Outbox::new`), so the session takes it
        // all; what it has to send is drained at once.
        if session.writer().write_all(&plain).is_err() {
            self.broken = true;
        }
        records(session)
    }

    /// Queues `wire` behind what is still unsent, sending at once what the
    /// socket takes when nothing is ahead of it (never blocking:
    /// invariant 4).
    fn push(&mut self, stream: &TcpStream, wire: &[u8]) {
        if wire.is_empty() || self.broken {
            return;
        }
        let sent = if self.unsent.is_empty() && !self.writing {
            send_now(stream, wire)
        } else {
            Ok(0)
        };
        match sent {
            Ok(n) => self.unsent.extend_from_slice(&wire[n..]),
            Err(_) => self.broken = true,
        }
    }
}

/// The TLS records a session has to send.
fn records(session: &mut ServerConnection) -> Vec<u8> {
    let mut out = Vec::new();
    while session.wants_write() {
        match session.write_tls(&mut out) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    out
}

/// What a connection owes its client ([`Outbox::owes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Owed {
    Nothing,
    /// A deferred answer, which the thread that has it writes.
    Answer,
    /// Bytes to write (or a broken connection to close): a handler
    /// thread's work.
    Bytes,
}

/// What bytes read from the socket held, beyond the data.
pub(super) enum Incoming {
    /// More may come.
    Open,
    /// The peer closed the TLS session (`close_notify`): nothing more comes.
    Closed,
}

impl Outbox {
    pub(super) fn new(stream: Arc<TcpStream>, session: Option<ServerConnection>) -> Outbox {
        let session = session.map(|mut session| {
            // Our own `unsent` bounds nothing either: one answer at most
            // is outstanding (invariant 2).
            session.set_buffer_limit(None);
            Box::new(session)
        });
        Outbox {
            stream,
            tls: session.is_some(),
            on_unsent: None,
            state: Mutex::new(OutState {
                session,
                ..OutState::default()
            }),
            changed: std::sync::Condvar::new(),
        }
    }

    /// With `on_unsent` (see the field).
    pub(super) fn with_on_unsent(mut self, on_unsent: Box<dyn Fn() + Send + Sync>) -> Outbox {
        self.on_unsent = Some(on_unsent);
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The deadline of the answer awaited, if one is.
    pub(super) fn answer_due(&self) -> Option<Instant> {
        self.lock().pending
    }

    /// What the connection still owes its client: nothing, only an answer
    /// another thread will write (in full if the socket takes it), or
    /// bytes this connection's handler thread must write.
    pub(super) fn owes(&self) -> Owed {
        let state = self.lock();
        if state.broken || state.writing || !state.unsent.is_empty() {
            Owed::Bytes
        } else if state.pending.is_some() {
            Owed::Answer
        } else {
            Owed::Nothing
        }
    }

    /// Whether the connection speaks TLS.
    pub(super) fn is_tls(&self) -> bool {
        self.tls
    }

    /// Whether the TLS handshake is still under way (never, without TLS):
    /// no HTTP answer can be written yet.
    pub(super) fn handshaking(&self) -> bool {
        self.tls
            && self
                .lock()
                .session
                .as_ref()
                .is_some_and(|s| s.is_handshaking())
    }

    /// Takes bytes the handler thread read from the socket: their data is
    /// added to `data` (decrypted, on a TLS connection), and what the
    /// session has to say back (its side of the handshake, session
    /// tickets, an alert) is queued like an answer's bytes. `Err` when the
    /// peer broke the protocol: the connection is to be closed (the alert
    /// saying why is sent if the socket takes it).
    pub(super) fn take_in(&self, raw: &[u8], data: &mut Vec<u8>) -> Result<Incoming, ()> {
        if !self.tls {
            data.extend_from_slice(raw);
            return Ok(Incoming::Open);
        }
        let mut state = self.lock();
        let state = &mut *state;
        let Some(session) = state.session.as_mut() else {
            return Err(());
        };
        let mut rest = raw;
        let mut incoming = Incoming::Open;
        let mut failed = false;
        while !rest.is_empty() && !failed {
            // Ok(0) with bytes left would mean no progress: never loop on it.
            if !matches!(session.read_tls(&mut rest), Ok(n) if n > 0) {
                failed = true;
                break;
            }
            if session.process_new_packets().is_err() {
                failed = true;
                break;
            }
            let mut chunk = [0u8; 8192];
            loop {
                match session.reader().read(&mut chunk) {
                    Ok(0) => {
                        incoming = Incoming::Closed;
                        break;
                    }
                    Ok(n) => data.extend_from_slice(&chunk[..n]),
                    // No more data for now.
                    Err(_) => break,
                }
            }
        }
        let wire = records(session);
        state.push(&self.stream, &wire);
        if failed { Err(()) } else { Ok(incoming) }
    }

    /// The subject of the certificate the client presented (mutual TLS),
    /// verified at the handshake: RFC 4514 text, `CN=…`.
    pub(super) fn client_subject(&self) -> Option<String> {
        use x509_cert::der::Decode as _;
        let state = self.lock();
        let der = state
            .session
            .as_ref()?
            .peer_certificates()?
            .first()?
            .clone();
        drop(state);
        match x509_cert::Certificate::from_der(&der) {
            Ok(cert) => Some(cert.tbs_certificate.subject.to_string()),
            Err(err) => {
                log::warn!("a client certificate's subject cannot be read: {err}");
                None
            }
        }
    }

    /// Sends `plain` without blocking, as the connection's last bytes (the
    /// poller's `408`); nothing while a TLS handshake is under way.
    pub(super) fn send_final(&self, plain: Vec<u8>) {
        let mut state = self.lock();
        if state.session.as_ref().is_some_and(|s| s.is_handshaking()) {
            return;
        }
        let wire = state.seal(plain);
        state.push(&self.stream, &wire);
    }

    /// Tells a TLS peer the connection closes (`close_notify`), without
    /// blocking; nothing without TLS.
    pub(super) fn close_notify(&self) {
        if !self.tls {
            return;
        }
        let mut state = self.lock();
        let state = &mut *state;
        if let Some(session) = state.session.as_mut() {
            session.send_close_notify();
            let wire = records(session);
            state.push(&self.stream, &wire);
        }
    }

    /// Writes an answer of the handler thread's own (nothing is pending:
    /// invariant 3): what the socket takes at once, then (after calling
    /// `may_block`: the thread is about to wait for its client) the rest
    /// under the write deadline.
    pub(super) fn write_own(&self, plain: Vec<u8>, may_block: &dyn Fn()) -> io::Result<()> {
        if !self.tls {
            let sent = send_now(&self.stream, &plain)?;
            if sent == plain.len() {
                return Ok(());
            }
            may_block();
            let mut stream = &*self.stream;
            let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
            return stream.write_all(&plain[sent..]);
        }
        let mut state = self.lock();
        let wire = state.seal(plain);
        state.push(&self.stream, &wire);
        if !state.unsent.is_empty() {
            may_block();
        }
        self.write_unsent(state)
    }

    /// Waits (until `deadline`) for the outstanding answer, then writes
    /// what the socket did not take. `Err` when the connection is done.
    /// An answer still missing at its own deadline is given up and
    /// `503` sent in its place, after `gave_up` is called (before
    /// the client can see it, so that it can be counted first).
    pub(super) fn settle(&self, deadline: Instant, gave_up: &dyn Fn()) -> io::Result<()> {
        let mut state = self.lock();
        loop {
            if state.broken {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            let Some(due) = state.pending else { break };
            let now = Instant::now();
            if now >= due {
                // Taken over: a late answer is dropped (its serial is old;
                // invariant 3). Counted before the client can see it.
                state.pending = None;
                state.serial += 1;
                let closing = state.closing;
                let wire = state.seal(encode(&no_answer_in_time(), closing));
                state.unsent.extend_from_slice(&wire);
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
        self.write_unsent(state)
    }

    /// Writes what is unsent, with nothing pending: only this thread
    /// writes now (invariant 3), and not under the lock (the lock rule).
    fn write_unsent(&self, mut state: std::sync::MutexGuard<'_, OutState>) -> io::Result<()> {
        if state.broken {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        if state.unsent.is_empty() {
            return Ok(());
        }
        let unsent = std::mem::take(&mut state.unsent);
        state.writing = true;
        drop(state);
        let mut stream = &*self.stream;
        let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
        let written = stream.write_all(&unsent);
        let mut state = self.lock();
        state.writing = false;
        if written.is_err() {
            state.broken = true;
        }
        written
    }

    #[cfg(test)]
    fn is_pending(&self) -> bool {
        self.lock().pending.is_some()
    }
}

/// Hands out a [`Deferred`] for the request being handled.
pub struct Later<'a> {
    pub(super) outbox: &'a Arc<Outbox>,
    pub(super) close: bool,
    /// Lets the connections taken with this one, and the handler thread's
    /// seat, go (`conn.rs`).
    pub(super) may_block: &'a dyn Fn(),
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

    /// Says the handler is about to wait (a commit, a database read, a
    /// full queue): another handler thread takes this one's place in
    /// waiting for requests, and the connections this one took with the
    /// request's go to others, so that nobody waits behind it. Cheap to
    /// call more than once; costs a hand-over, so not for work that never
    /// waits.
    pub fn may_block(&self) {
        (self.may_block)();
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
        // Invariant 3: only the current, pending answer is written.
        if state.serial != self.serial || state.pending.is_none() {
            return false;
        }
        before();
        let closing = state.closing;
        let wire = state.seal(encode(response, closing));
        state.pending = None;
        // Behind what is still unsent (invariant 2), and never blocking
        // (invariant 4).
        state.push(&outbox.stream, &wire);
        let left = !state.unsent.is_empty();
        drop(state);
        outbox.changed.notify_all();
        if left && let Some(on_unsent) = &outbox.on_unsent {
            on_unsent();
        }
        true
    }
}

/// The answer for a request that got no answer in time. The work behind
/// it goes on (a commit may still land), so the answer does not say it
/// failed: its outcome is unknown, and the client retries an idempotent
/// request (a report is, by its id).
fn no_answer_in_time() -> Response {
    Response::unavailable("no answer in time: the outcome is unknown; retrying is safe")
}

impl Drop for Deferred {
    fn drop(&mut self) {
        // Every request gets its answer (invariant 3).
        if self.outbox.is_some() {
            self.write(&no_answer_in_time(), || {});
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
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
        Arc::new(Outbox::new(
            Arc::new(server.try_clone().expect("clone")),
            None,
        ))
    }

    fn later(outbox: &Arc<Outbox>) -> Later<'_> {
        Later {
            outbox,
            close: false,
            may_block: &|| {},
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
