//! A small HTTP/1.1 server on threads, made for hostile networks.
//!
//! Why not `tiny_http`: it has no per-request read deadlines (a client that
//! sends its headers one byte a second holds a connection for ever), and it
//! starts threads we could neither name nor join. Parsing is `httparse`'s
//! (hyper's parser); what is ours is the connection handling around it:
//!
//! - idle connections cost no thread: a connection is parked (its socket
//!   in an epoll set, `rustix`) to wait for its first byte, its next
//!   request, or the rest of a head not yet complete, and a handler thread
//!   is taken only while there are bytes to read (thousands of idle
//!   connections cost a file descriptor each: the socket, shared, never
//!   duplicated). The idle handler threads wait in the epoll set
//!   themselves: the kernel wakes one of them for a readable connection,
//!   and it takes up to four ready at once. Only `Limits::active` of them
//!   wait at once (one per core, in the sidecar); a thread about to block
//!   hands its place to one standing by, so blocking costs a thread,
//!   never the intake;
//! - a deadline for the request head (from its first byte, kept while the
//!   connection is parked) and another for the body, enforced
//!   with per-read socket timeouts computed from it (a body being read
//!   holds its handler thread, for `body_timeout` at most);
//! - a body limit checked on the bytes actually read (chunked bodies
//!   included), and answered before reading on `Content-Length` /
//!   `Expect: 100-continue`;
//! - a cap on open connections: past it, new connections get `503` at once;
//! - strict framing (RFC 9112): one `Transfer-Encoding` at most, exactly
//!   `chunked`; one `Content-Length` at most, `1*DIGIT`; never both; one
//!   `Host` on HTTP/1.1; anything else `400` and closed, so that a proxy in
//!   front cannot read a request's end elsewhere than we do;
//! - TLS in the process, optional (`tls.rs`: rustls, no runtime), mutual
//!   TLS too; the handshake is read like a request head, under the same
//!   deadline, parked between its bytes;
//! - keep-alive, with an idle timeout (HTTP/1.0 only when it asks for it);
//!   `HEAD` answered with GET's head (its `Content-Length` too), no body;
//! - answers that wait on another thread ([`Later`], [`Deferred`]): the
//!   handler thread goes back to its connection and the answer is written,
//!   in request order, by the thread that has it (the store's, once the
//!   report is on disk), with a deadline after which the client gets `503`;
//! - a graceful stop like Go's `http.Server.Shutdown`: stop accepting
//!   (connections already queued in the kernel are answered `503`), close
//!   heads not yet complete, give bodies being read until just before the
//!   deadline (then `503`), let requests read finish, answer
//!   `Connection: close` from then on, and close idle connections after a
//!   short grace in which a request that arrives still gets an answer
//!   rather than a reset.
//!
//! # What it owns
//!
//! A [`Server`] owns the listener, its threads (`NAME-accept`, `NAME-poll`
//! and `NAME-0`..`NAME-N`, `NAME` given at the start: `http` for the API,
//! `admin` for the admin listener; all in one [`quiesce::Threads`], joined
//! by [`Server::stop`]), where connections wait (the parked connections
//! with their deadlines, `poll::Parking`, a map under a mutex; the epoll
//! set the handler threads wait in, with the hand-over queue through which
//! `http-poll` gives them a connection, `readiness::Readiness`), and
//! `ServerState`: the limits, the `stopping` flag, those two and the
//! registry of open connections (`open`), and the TLS configuration if
//! any. Each open
//! connection (`poll::Conn`) has an outbox (its write side for deferred
//! answers, and its TLS session, `deferred.rs`).
//!
//! | File | The idea |
//! |------|----------|
//! | `server.rs` | start, the accept loop, refusing past the cap, the stop (draining the backlog) |
//! | `poll.rs` | where connections wait for bytes: parking them, their idle and head deadlines, closing idle ones at the stop |
//! | `readiness.rs` | the epoll set the handler threads wait in, its seats, and the hand-over from `http-poll` |
//! | `conn.rs` | one connection on a handler thread while it has bytes: reading requests under their deadlines, calling the [`Handler`], writing its answers |
//! | `deferred.rs` | answers written by another thread: [`Later`], [`Deferred`], the outbox |
//! | `wire.rs` | a response's bytes, status reasons, writing them |
//! | `tls.rs` | certificates and keys loaded, reloaded, and a session per connection |
//!
//! # Which thread touches what
//!
//! - `http-accept` owns the listener and the connections it refuses (they
//!   linger a moment, non-blocking). It adds each accepted connection to
//!   `open` (or refuses it past the cap), parks it and reads `stopping`.
//! - A parked connection (in `Parking`, under its lock) is owned by
//!   nobody until it is taken out. Whoever parks a connection puts it
//!   there, then arms its one-shot registration (added, disarmed, before
//!   its first wait; deleted when it is dropped). The idle handler threads
//!   that hold a seat wait in the epoll set (the others wait for a seat,
//!   on `Readiness`'s condition variable); the kernel wakes one per event,
//!   and that one takes the connection out under the lock, or ignores the
//!   event when the connection is not there.
//! - `http-poll` keeps the deadlines of the parked connections: it
//!   sleeps (on `Parking`'s condition variable) until the first one, or
//!   until woken for an earlier one or the stop. It takes out and closes a
//!   connection whose idle time is up, answers `408` (without blocking) to
//!   one whose head is late, hands a handler thread (through the hand-over
//!   queue) one whose answer is late, and at the stop closes heads not yet
//!   complete at once and idle connections after the grace; then it ends,
//!   and closes the hand-over queue.
//! - `http-0`..`http-N` each take one connection at a time (woken by its
//!   bytes, or handed over) and serve the requests whose bytes are there;
//!   each owns its per-thread state `S` (the intake's database connection)
//!   and, while it serves one, the connection's socket and read buffer.
//!   When no bytes are left to read it settles the outbox and parks the
//!   connection again. Before it may block (a body's bytes, an answer to
//!   settle, a large write, the handler's `Later::may_block`) it hands
//!   the other connections of its wait over and gives its seat up; it
//!   waits for a seat again before its next wait in the set. It ends when
//!   the hand-over queue is closed and empty (after which every thread
//!   may wait in the set, seated or not). They run under `SCHED_BATCH`:
//!   woken by a request, a handler thread waits for a core to come free
//!   instead of preempting the thread running there (`store` in a commit,
//!   `store-sync` sending answers). Whoever drops a connection removes it
//!   from `open`.
//! - Whoever holds a [`Deferred`] (the store's thread, which answers a
//!   report once it is committed) locks that connection's outbox and sends
//!   without blocking.
//! - The thread calling [`Server::stop`] (the intake service's) sets
//!   `stopping`, wakes `http-poll` (`Parking::wake`) and `http-accept` (with a
//!   connection of its own), joins the threads, and at its deadline shuts
//!   down the sockets still in `open`.
//!
//! # Invariants
//!
//! 1. A connection is owned by exactly one thread at a time: `http-accept`
//!    until it is parked (or refused), then one handler thread while it
//!    is read, parked again in between, until it is closed. A parked
//!    connection is nobody's: whoever takes it out of `Parking` (under its
//!    lock: the handler thread its event woke, or `http-poll` at a
//!    deadline or the stop) owns it. Only the owner reads it; `http-poll`
//!    never reads (it writes only the `408` of a late head).
//!    Shares of the socket (one descriptor, behind an `Arc`) serve two
//!    things only: the outbox's, through which deferred answers are
//!    written (2 to 4), and the one in `open`, for the stop to shut it
//!    down at its deadline (7). A TLS session is
//!    the outbox's, under its lock: the owner decrypts what it read there,
//!    and whoever writes encrypts there, so records go out in the order
//!    they are numbered.
//! 2. Answers on one connection go out in request order: at most one answer
//!    is outstanding per connection. The handler thread settles the outbox
//!    (waits for the deferred answer, writes what the socket did not take)
//!    before it hands the next request to the [`Handler`] and before it
//!    writes an answer of its own; a deferred answer is sent straight to the
//!    socket only when nothing of an earlier one is still unsent.
//! 3. Each request read gets exactly one answer (unless the connection
//!    breaks). A deferred answer is written only while it is pending and its
//!    serial is current; at its deadline the handler thread gives it up (a
//!    new serial, `503` in its place), and a [`Deferred`] dropped unanswered
//!    writes `503`. A late answer is dropped, never written after the `503`.
//!    Who writes to the socket follows: while an answer is pending, only its
//!    [`Deferred`]; otherwise only the handler thread.
//! 4. A thread answering a [`Deferred`] never blocks on a client: it sends
//!    with `MSG_DONTWAIT` and leaves what the socket does not take in the
//!    outbox, for the handler thread to write under its write deadline.
//! 5. The accept thread never blocks on a client: it parks connections
//!    (an unbounded map: `open`, at most `max_connections`, bounds it)
//!    and, past the cap (`open` full), answers `503` itself: one small
//!    answer on a fresh socket (its send buffer takes it at once; a 100 ms
//!    write timeout bounds the rest), then a non-blocking linger looked at
//!    again at each accept, a bounded number at once. At the stop, draining
//!    the backlog takes 100 ms at most.
//! 6. After the stop begins, every request read is answered with
//!    `Connection: close` and is its connection's last. `stopping` is set
//!    once, before the accept thread is woken; the handler thread reads it
//!    after reading each request, and the same `close` goes into a deferred
//!    answer and into the `503` that may replace it. Connections refused
//!    before a handler sees them are always answered `Connection: close`.
//! 7. Before its deadline, the stop closes only idle connections that owe
//!    their client nothing: idle means it is parked with nothing
//!    buffered. A parked connection that still awaits an answer (8)
//!    is handed to a handler thread at the stop, which waits for the
//!    answer, writes it and closes. `http-poll` closes the others after
//!    the close grace (a request that arrives in it is still served, its
//!    answer closing), then ends: a connection parked later is
//!    closed at once (after the stop a handler thread settles a
//!    connection's answer before parking it). A request whose head has
//!    been read, or its answer, is never cut; but a head not yet complete
//!    is closed as soon as the stop is seen (by `http-poll` at once, by a
//!    handler thread before it reads more), and a body still being read
//!    gets until a moment before the
//!    deadline (`BODY_STOP_MARGIN`, set with `stopping`) and is then
//!    answered `503`, closing, with a short linger: slow clients cannot
//!    hold a thread past the deadline. At the deadline every socket in
//!    `open` is shut down, so that the threads return.
//! 8. A connection is parked, not held by a handler thread, whenever
//!    it has no bytes to read: a handler thread reads without blocking
//!    until a head is complete, and when the bytes run out first (no
//!    request, or part of a head) it parks the connection, at once
//!    even while a deferred answer is awaited (the thread that has the
//!    answer writes it; the handler thread is not woken for it). Bytes the
//!    handler thread must write (an answer the socket did not take in
//!    full) are written first: no connection is parked with bytes
//!    unsent, except those a deferred answer left, for which its
//!    registration also waits (`on_unsent`, and a check when it is
//!    parked) for the socket to take more, which wakes a handler
//!    thread. Pipelined bytes already read are served before that, never
//!    parked. Parked, a new or keep-alive connection waits up to
//!    `idle_timeout`, part of a head up to `header_timeout` from its first
//!    byte, and one awaiting an answer no longer than the answer's
//!    deadline, when a handler thread answers `503` if it has not come.
//!    A handler thread that took several connections at one wait serves
//!    them in turn, and hands those still waiting to other handler
//!    threads before it may block on one (a body to read, an answer to
//!    wait for or to write that may not fit the socket): none waits
//!    behind a slow client.
//!
//! Lock rule: there are four kinds of lock, `open`, `Parking`'s, the
//! hand-over queue's and each outbox's state. `Parking`'s may be held
//! while an outbox's is taken (`http-poll` asks what a parked connection
//! owes), never the other way, and `open` and the hand-over queue's are
//! never held with another (no connection is dropped under `Parking`'s
//! lock or the queue's: whoever takes one out closes it after).
//! Nothing blocks under any: under `Parking`'s only maps are changed;
//! under the hand-over queue's, its eventfd is only written or read
//! without blocking;
//! under `open` sockets are only shut down; under an outbox's lock they
//! are only sent to with `MSG_DONTWAIT`, or shut down (the handler thread
//! drops it before writing what is unsent), and TLS records are only
//! encrypted or decrypted in memory (reading the socket happens before
//! the lock). The callbacks that count an answer before the client can
//! see it (`before` of [`Deferred::respond`], the `gave_up` of a settle)
//! run under the outbox's lock: they must be quick and must not call back
//! into the server.

use std::time::Duration;

#[cfg(test)]
mod chunk_tests;
mod conn;
mod deferred;
#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod park_tests;
mod poll;
mod readiness;
mod server;
mod tls;
mod wire;

pub use deferred::{Deferred, Later};
pub use server::Server;
pub use tls::{Tls, TlsFiles};
pub use wire::status_text;

/// The `Retry-After` of every `503` and `429`, in seconds: the server's own
/// (a deferred answer given up, a connection past the cap or during the
/// stop, a handler that cannot start) and the intake's (shutting down,
/// backlog full, store failed). All of them mean "overloaded or going
/// away": a client asked to come back at once would add to the load that
/// caused them.
pub const RETRY_AFTER: &str = "5";

/// Limits and timeouts of a [`Server`].
#[derive(Clone, Debug)]
pub struct Limits {
    /// Handler threads: requests read and answered at once (connections
    /// waiting for bytes hold none).
    pub handlers: usize,
    /// Of those, how many wait for bytes (and serve them) at once; the
    /// others stand by, each taking the place of one that blocks (a body
    /// still on its way, a handler that called [`Later::may_block`]).
    /// Clamped to `1..=handlers`.
    pub active: usize,
    /// Open connections at most (served, or waiting for bytes or a handler).
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
    /// The query string, without its `?` (empty when there is none).
    pub query: String,
    /// Header names (lower-cased) and values.
    pub headers: Vec<(String, String)>,
    /// The body (decoded when chunked).
    pub body: Vec<u8>,
    /// The connection's peer (`None` when the socket could not tell).
    pub peer: Option<std::net::SocketAddr>,
    /// Under mutual TLS, the subject of the client's certificate
    /// (`CN=…,O=…`, RFC 4514), verified at the handshake.
    pub client: Option<std::sync::Arc<str>>,
    /// When its head was read (for the request's duration).
    pub received: std::time::Instant,
    /// Its id, once the handler has given it one (the handler's to fill:
    /// the same id wherever the request is named).
    pub id: std::sync::OnceLock<String>,
}

impl Request {
    /// The query's parameters, decoded (`application/x-www-form-urlencoded`).
    pub fn params(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(self.query.as_bytes())
            .into_owned()
            .collect()
    }

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
    pub fn json(status: u16, value: &impl serde::Serialize) -> Response {
        Response {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            // Only a map with keys that are not strings fails (none here).
            body: serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec()),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// `503` with `{"error": message}` and [`RETRY_AFTER`]: the server's
    /// own answer when it cannot serve a request.
    pub fn unavailable(message: &str) -> Response {
        Response::json(503, &serde_json::json!({ "error": message }))
            .with_header("Retry-After", RETRY_AFTER)
    }
}

/// Answers requests on a handler thread, with per-thread state `S` (such
/// as a database connection).
pub trait Handler<S>: Send + Sync + 'static {
    /// Answers one request: now, with `Some(response)`, or later, with
    /// `None` after taking a [`Deferred`] from `later` (the handler thread
    /// then goes back to reading the connection; see [`Later`]). A
    /// handler that may wait (a database, another thread, a lock held
    /// long) calls [`Later::may_block`] first.
    fn handle(
        &self,
        state: &mut S,
        request: &Request,
        stopping: bool,
        later: &Later<'_>,
    ) -> Option<Response>;

    /// Answers a request the server refused before any handler saw it
    /// (limits, timeouts, bad framing): for metrics and logs. `head`: its
    /// method and path, when they were read before the refusal (a body too
    /// large, say).
    fn refused(&self, status: u16, why: &str, head: Option<(&str, &str)>);

    /// How many connections are open now, after each change.
    fn connections(&self, _open: usize) {}

    /// How many handler threads stand by (wait for a seat), after each
    /// change.
    fn standing_by(&self, _threads: usize) {}
}
