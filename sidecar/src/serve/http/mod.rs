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

use std::time::Duration;

mod conn;
mod deferred;
mod server;
mod wire;

pub use deferred::{Deferred, Later};
pub use server::Server;

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
