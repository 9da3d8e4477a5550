//! The HTTP client: HTTP/1.1 on a `std::net::TcpStream`, saying precisely
//! how a request ended.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::IO_TIMEOUT;

/// A response: status, headers, body.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (failing with the body when it is not).
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {:?}",
                self.status,
                self.text()
            )
        })
    }

    /// Whether the server said it closes the connection.
    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// How a request ended without a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailKind {
    /// The connection was refused: nobody listens.
    Refused,
    /// Connection reset before any byte of a response.
    Reset,
    /// End of stream before any byte of a response.
    Eof,
    /// Part of a response, then the end or a reset, or a malformed answer.
    Broken,
    /// No (complete) answer within [`IO_TIMEOUT`].
    Timeout,
    /// Anything else (connect failures other than refused, …).
    Other,
}

/// A request that got no response.
#[derive(Debug)]
pub struct Failure {
    pub kind: FailKind,
    pub detail: String,
}

impl Failure {
    fn new(kind: FailKind, detail: impl Into<String>) -> Failure {
        Failure {
            kind,
            detail: detail.into(),
        }
    }

    /// The connection closed (by end of stream or reset) before any byte
    /// of an answer.
    pub fn closed_before_answer(&self) -> bool {
        matches!(self.kind, FailKind::Reset | FailKind::Eof)
    }
}

fn is_reset(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

fn is_timeout(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// What a [`Conn`] talks over: a TCP stream, or TLS over one (`tls.rs`).
pub trait Socket: Read + Write {
    /// The TCP stream underneath.
    fn tcp(&self) -> &TcpStream;
}

impl Socket for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

/// A client connection (keep-alive capable), over TCP or TLS.
pub struct Conn<S: Socket = TcpStream> {
    stream: S,
    buf: Vec<u8>,
    /// Responses read on this connection so far.
    pub answered: u32,
    /// The server said `Connection: close`, or the connection broke.
    pub closed: bool,
}

impl Conn {
    /// Connects (within 5 s).
    pub fn open(addr: SocketAddr) -> Result<Conn, Failure> {
        Ok(Conn::over(connect(addr)?))
    }
}

/// Connects to `addr` (within 5 s), with the client's timeouts.
pub fn connect(addr: SocketAddr) -> Result<TcpStream, Failure> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| {
        if e.kind() == io::ErrorKind::ConnectionRefused {
            Failure::new(FailKind::Refused, e.to_string())
        } else {
            Failure::new(FailKind::Other, format!("connect: {e}"))
        }
    })?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
        .and_then(|()| stream.set_nodelay(true))
        .map_err(|e| Failure::new(FailKind::Other, format!("socket options: {e}")))?;
    Ok(stream)
}

impl<S: Socket> Conn<S> {
    /// A connection over `stream`, already connected.
    pub fn over(stream: S) -> Conn<S> {
        Conn {
            stream,
            buf: Vec::new(),
            answered: 0,
            closed: false,
        }
    }

    /// The socket as it is (a TLS session, say).
    pub fn socket(&self) -> &S {
        &self.stream
    }

    /// Whether a request was already answered on this connection.
    pub fn reused(&self) -> bool {
        self.answered > 0
    }

    pub fn stream(&self) -> &TcpStream {
        self.stream.tcp()
    }

    /// Writes raw bytes.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Writes `request` and reads its response. A write that fails (the
    /// server may answer early, e.g. 413, and close) still reads whatever
    /// answer came.
    pub fn send(&mut self, request: &[u8]) -> Result<Response, Failure> {
        let written = self.write(request);
        match self.read_response() {
            Err(failure) if failure.kind != FailKind::Broken => match written {
                Err(e) if is_reset(&e) => Err(Failure::new(
                    FailKind::Reset,
                    format!("write: {e}; then read: {}", failure.detail),
                )),
                Err(e) if is_timeout(&e) => {
                    Err(Failure::new(FailKind::Timeout, format!("write: {e}")))
                }
                _ => Err(failure),
            },
            other => other,
        }
    }

    /// Reads one response (skipping `1xx` interim ones).
    pub fn read_response(&mut self) -> Result<Response, Failure> {
        loop {
            let response = self.read_one()?;
            if (100..200).contains(&response.status) {
                continue;
            }
            self.answered += 1;
            if response.closes() {
                self.closed = true;
            }
            return Ok(response);
        }
    }

    fn read_one(&mut self) -> Result<Response, Failure> {
        // Whether this response has started arriving: bytes left in the
        // buffer are a response's first bytes too.
        let mut got_any = !self.buf.is_empty();
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut parsed = httparse::Response::new(&mut headers);
            match parsed.parse(&self.buf) {
                Ok(httparse::Status::Complete(head_len)) => {
                    let status = parsed.code.unwrap_or(0);
                    let headers: Vec<(String, String)> = parsed
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_string(),
                                String::from_utf8_lossy(h.value).trim().to_string(),
                            )
                        })
                        .collect();
                    let length = if (100..200).contains(&status) {
                        0
                    } else {
                        match headers
                            .iter()
                            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                        {
                            Some((_, v)) => v.parse::<usize>().map_err(|_| {
                                self.closed = true;
                                Failure::new(FailKind::Broken, format!("bad Content-Length {v:?}"))
                            })?,
                            None => {
                                self.closed = true;
                                return Err(Failure::new(
                                    FailKind::Broken,
                                    "a response without Content-Length",
                                ));
                            }
                        }
                    };
                    while self.buf.len() < head_len + length {
                        self.fill(true)?;
                    }
                    let body = self.buf[head_len..head_len + length].to_vec();
                    self.buf.drain(..head_len + length);
                    return Ok(Response {
                        status,
                        headers,
                        body,
                    });
                }
                Ok(httparse::Status::Partial) => {
                    self.fill(got_any)?;
                    got_any = true;
                }
                Err(e) => {
                    self.closed = true;
                    return Err(Failure::new(
                        FailKind::Broken,
                        format!(
                            "malformed response ({e}): {:?}",
                            String::from_utf8_lossy(&self.buf)
                        ),
                    ));
                }
            }
        }
    }

    /// Reads more bytes; `started` says whether part of the response was
    /// already read (which makes an end or reset `Broken`).
    fn fill(&mut self, started: bool) -> Result<(), Failure> {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => {
                self.closed = true;
                Err(Failure::new(
                    if started {
                        FailKind::Broken
                    } else {
                        FailKind::Eof
                    },
                    format!("end of stream after {} byte(s)", self.buf.len()),
                ))
            }
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) if is_timeout(&e) => {
                self.closed = true;
                Err(Failure::new(FailKind::Timeout, format!("read: {e}")))
            }
            Err(e) => {
                self.closed = true;
                let kind = if started {
                    FailKind::Broken
                } else if is_reset(&e) {
                    FailKind::Reset
                } else {
                    FailKind::Other
                };
                Err(Failure::new(kind, format!("read: {e}")))
            }
        }
    }

    /// Waits for the server to close the connection (end of stream or
    /// reset) within `limit`, reading and returning any bytes it sends.
    pub fn wait_closed(&mut self, limit: Duration) -> Result<Vec<u8>, String> {
        let give_up = Instant::now() + limit;
        let mut got = std::mem::take(&mut self.buf);
        let mut chunk = [0u8; 4096];
        loop {
            let left = give_up.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("still open after {limit:?}"));
            }
            let _ = self.stream.tcp().set_read_timeout(Some(left));
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(got),
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e) if is_timeout(&e) => {}
                Err(_) => return Ok(got),
            }
        }
    }

    pub fn shutdown(&self) {
        let _ = self.stream.tcp().shutdown(Shutdown::Both);
    }
}

/// The bytes of a request. `body: None` sends no body and no
/// Content-Length.
pub fn request(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    keep_alive: bool,
) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    if !keep_alive {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    if let Some(body) = body {
        out.extend_from_slice(body);
    }
    out
}

/// Sends `raw` on a fresh connection and returns the response (failing
/// the test if there is none).
#[track_caller]
pub fn exchange(addr: SocketAddr, raw: &[u8]) -> Response {
    let mut conn = Conn::open(addr).unwrap_or_else(|f| panic!("connect to {addr}: {f:?}"));
    conn.send(raw)
        .unwrap_or_else(|f| panic!("no response from {addr}: {f:?}"))
}

/// `GET path` on a fresh connection.
#[track_caller]
pub fn get(addr: SocketAddr, path: &str) -> Response {
    exchange(addr, &request("GET", path, &[], None, false))
}
