//! The call to the external analysis service: one `POST` of the report, as
//! JSON, answered by JSON.
//!
//! It is a small HTTP/1.1 client of our own (`httparse` parses the
//! response) rather than a crate like `ureq` for one reason: the call must
//! end when the job's [`Context`] is done — at the job's deadline, or at a
//! shutdown — not when some socket timeout of the client's runs out. The
//! socket is registered with [`Context::on_cancel`], which shuts it down,
//! so a service that never answers costs at most the job's deadline and
//! never a thread. Only `http://` URLs are supported (a sidecar talks to
//! its analyzer on a private network).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use quiesce::Context;

/// Largest response read.
const MAX_RESPONSE: usize = 1 << 20;
/// The bound on a call when the context has no deadline.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the analysis service is.
#[derive(Clone, Debug)]
pub struct Analyzer {
    host: String,
    port: u16,
    path: String,
}

impl Analyzer {
    /// Parses `http://host[:port][/path]`.
    ///
    /// # Errors
    ///
    /// For any other form, with the reason.
    pub fn parse(url: &str) -> Result<Analyzer, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url:?}: only http:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let parse_port = |p: &str| {
            p.parse::<u16>()
                .map_err(|_| format!("{url:?}: invalid port {p:?}"))
        };
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| format!("{url:?}: unclosed '['"))?;
            match after.strip_prefix(':') {
                Some(port) => (host, parse_port(port)?),
                None if after.is_empty() => (host, 80),
                None => return Err(format!("{url:?}: unexpected {after:?} after the host")),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, parse_port(port)?),
                None => (authority, 80),
            }
        };
        if host.is_empty() {
            return Err(format!("{url:?}: no host"));
        }
        Ok(Analyzer {
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }

    /// Posts `body` and returns the service's JSON answer; gives up when
    /// `ctx` is done.
    ///
    /// # Errors
    ///
    /// A message saying what went wrong: unreachable, timed out, cancelled,
    /// a non-2xx status, a malformed answer.
    pub fn analyze(&self, ctx: &Context, body: &[u8]) -> Result<serde_json::Value, String> {
        let deadline = ctx
            .deadline()
            .unwrap_or_else(|| Instant::now() + DEFAULT_TIMEOUT);
        let result = self.post(ctx, deadline, body);
        // The socket's own timeouts are set to the time left, so one may
        // fire a moment before the timer marks the context: that is the
        // deadline too.
        let at_deadline = Instant::now() + Duration::from_millis(20) >= deadline;
        match (result, ctx.err()) {
            (Ok(value), _) => Ok(value),
            (Err(_), Some(quiesce::ContextError::DeadlineExceeded)) => {
                Err("analyzer did not answer before the job deadline".to_string())
            }
            (Err(_), None) if at_deadline => {
                Err("analyzer did not answer before the job deadline".to_string())
            }
            (Err(_), Some(quiesce::ContextError::Canceled)) => {
                Err("analyzer call cancelled".to_string())
            }
            (Err(err), None) => Err(err),
        }
    }

    fn post(
        &self,
        ctx: &Context,
        deadline: Instant,
        body: &[u8],
    ) -> Result<serde_json::Value, String> {
        let left = || deadline.saturating_duration_since(Instant::now());
        let addr: SocketAddr = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve analyzer host {}: {e}", self.host))?
            .next()
            .ok_or_else(|| format!("analyzer host {} has no address", self.host))?;
        ctx.check().map_err(|e| e.to_string())?;
        let mut stream = TcpStream::connect_timeout(&addr, left().max(Duration::from_millis(1)))
            .map_err(|e| format!("cannot connect to the analyzer at {addr}: {e}"))?;
        // The context ends the call: at its deadline, or at a shutdown.
        let _hook = match stream.try_clone() {
            Ok(clone) => ctx.on_cancel(move || {
                let _ = clone.shutdown(Shutdown::Both);
            }),
            Err(e) => return Err(format!("analyzer socket: {e}")),
        };
        let io = |what: &str, e: std::io::Error| format!("analyzer {what}: {e}");
        let timeout = || Some(left().max(Duration::from_millis(1)));
        stream
            .set_write_timeout(timeout())
            .map_err(|e| io("socket", e))?;
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/json\r\nAccept: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\nUser-Agent: quiesce\r\n\r\n",
            self.path,
            self.host,
            self.port,
            body.len()
        );
        stream
            .write_all(head.as_bytes())
            .map_err(|e| io("write", e))?;
        stream.write_all(body).map_err(|e| io("write", e))?;
        let mut response = Vec::new();
        let mut chunk = [0u8; 8192];
        let (status, body) = loop {
            stream
                .set_read_timeout(timeout())
                .map_err(|e| io("socket", e))?;
            match stream.read(&mut chunk) {
                Ok(0) => match read_answer(&response, true)? {
                    Some(answer) => break answer,
                    None => return Err("analyzer closed the connection mid-answer".to_string()),
                },
                Ok(n) => {
                    response.extend_from_slice(&chunk[..n]);
                    if response.len() > MAX_RESPONSE {
                        return Err("analyzer answer larger than 1 MiB".to_string());
                    }
                    if let Some(answer) = read_answer(&response, false)? {
                        break answer;
                    }
                }
                // A stop signal (SIGSTOP, then SIGCONT) interrupts a read
                // with a timeout even under SA_RESTART: read again.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io("read", e)),
            }
        };
        judge(status, &body)
    }
}

/// The final answer in `buf` — its status and its body, de-chunked — once
/// it is all there: interim `1xx` answers (`100 Continue`, `103 Early
/// Hints`) before it are skipped, and the body is framed by
/// `Transfer-Encoding: chunked`, by `Content-Length`, or by the end of the
/// connection (`eof`: nothing more will come). `None`: not all there yet.
///
/// # Errors
///
/// A malformed answer, or (at `eof`) one cut short.
fn read_answer(buf: &[u8], eof: bool) -> Result<Option<(u16, Vec<u8>)>, String> {
    let cut_short = || {
        if eof {
            Err("analyzer closed the connection mid-answer".to_string())
        } else {
            Ok(None)
        }
    };
    let mut at = 0;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let head = match resp.parse(&buf[at..]) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return cut_short(),
            Err(e) => return Err(format!("analyzer sent a malformed answer: {e}")),
        };
        let status = resp.code.unwrap_or(0);
        if status == 101 {
            // Not an interim answer: the connection would leave HTTP.
            return Err("analyzer answered 101 (switching protocols)".to_string());
        }
        if (100..200).contains(&status) {
            at += head; // an interim answer has no body; the real one follows
            continue;
        }
        let rest = &buf[at + head..];
        if chunked(resp.headers) {
            return match dechunk(rest)? {
                Some(body) => Ok(Some((status, body))),
                None => cut_short(),
            };
        }
        return match content_length(resp.headers)? {
            Some(len) if rest.len() >= len => Ok(Some((status, rest[..len].to_vec()))),
            Some(_) => cut_short(),
            // Neither: the body is what comes until the connection closes
            // (we asked for `Connection: close`).
            None if eof => Ok(Some((status, rest.to_vec()))),
            None => Ok(None),
        };
    }
}

/// Whether the answer's last transfer coding is `chunked`.
fn chunked(headers: &[httparse::Header<'_>]) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .flat_map(|v| v.split(','))
        .last()
        .is_some_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"))
}

/// The body of a chunked answer, once its last chunk and trailers are in
/// `data`; `None` before.
///
/// # Errors
///
/// A malformed chunk size or chunk.
fn dechunk(mut data: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut body = Vec::new();
    loop {
        let (used, size) = match httparse::parse_chunk_size(data) {
            Ok(httparse::Status::Complete(found)) => found,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err("analyzer sent a malformed chunk size".to_string()),
        };
        data = &data[used..];
        if size == 0 {
            // Trailer fields, if any, end with an empty line.
            let ended = data.starts_with(b"\r\n") || data.windows(4).any(|w| w == b"\r\n\r\n");
            return Ok(ended.then_some(body));
        }
        let size = usize::try_from(size)
            .ok()
            .filter(|&n| n <= MAX_RESPONSE)
            .ok_or_else(|| "analyzer answer larger than 1 MiB".to_string())?;
        if data.len() < size + 2 {
            return Ok(None);
        }
        if &data[size..size + 2] != b"\r\n" {
            return Err("analyzer sent a malformed chunk".to_string());
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// The answer's `Content-Length`, if it has one.
///
/// # Errors
///
/// One that is not a plain number.
fn content_length(headers: &[httparse::Header<'_>]) -> Result<Option<usize>, String> {
    let Some(header) = headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
    else {
        return Ok(None);
    };
    std::str::from_utf8(header.value)
        .ok()
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse().ok())
        .map(Some)
        .ok_or_else(|| "analyzer sent a malformed Content-Length".to_string())
}

/// The analysis in a final answer: its JSON body when the status is 2xx.
/// Another status is an error that names the status only: what the peer
/// sent is not repeated (it may echo the report, and errors are shown to
/// API callers).
fn judge(status: u16, body: &[u8]) -> Result<serde_json::Value, String> {
    if !(200..300).contains(&status) {
        return Err(format!("analyzer answered {status}"));
    }
    serde_json::from_slice(body).map_err(|e| format!("analyzer answer is not JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_or_say_why_not() {
        let a = Analyzer::parse("http://127.0.0.1:9000/v1/analyze").unwrap();
        assert_eq!(
            (a.host.as_str(), a.port, a.path.as_str()),
            ("127.0.0.1", 9000, "/v1/analyze")
        );
        let a = Analyzer::parse("http://analyzer").unwrap();
        assert_eq!(
            (a.host.as_str(), a.port, a.path.as_str()),
            ("analyzer", 80, "/")
        );
        let a = Analyzer::parse("http://[::1]:81/x").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("::1", 81));
        assert!(
            Analyzer::parse("https://a")
                .unwrap_err()
                .contains("only http://")
        );
        assert!(
            Analyzer::parse("http://a:port/")
                .unwrap_err()
                .contains("invalid port")
        );
        assert!(Analyzer::parse("http:///x").is_err());
    }

    /// Reads `raw` as it would arrive in pieces of `step` bytes, then the
    /// end of the connection.
    fn read_in_steps(raw: &[u8], step: usize) -> Result<serde_json::Value, String> {
        let mut buf = Vec::new();
        for piece in raw.chunks(step) {
            buf.extend_from_slice(piece);
            if let Some((status, body)) = read_answer(&buf, false)? {
                return judge(status, &body);
            }
        }
        match read_answer(&buf, true)? {
            Some((status, body)) => judge(status, &body),
            None => Err("closed mid-answer".to_string()),
        }
    }

    #[test]
    fn responses_are_checked() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n{\"risk\":0.2}";
        assert_eq!(read_in_steps(ok, 5), Ok(serde_json::json!({"risk": 0.2})));
        let err = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy";
        // The status, never the peer's words.
        assert_eq!(
            read_in_steps(err, 64),
            Err("analyzer answered 503".to_string())
        );
        assert!(read_in_steps(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nnot", 64).is_err());
        // Cut short: not complete until the end, then an error.
        let short = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}";
        assert_eq!(read_answer(short, false), Ok(None));
        assert!(read_answer(short, true).is_err());
        let bad_length = b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\n{}";
        assert!(read_answer(bad_length, false).is_err());
    }

    #[test]
    fn chunked_answers_are_read_whole_in_any_pieces() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
            5\r\n{\"ris\r\n7;ext=1\r\nk\":0.5}\r\n0\r\nX-Trailer: t\r\n\r\n";
        for step in [1, 2, 3, 7, 64] {
            assert_eq!(
                read_in_steps(raw, step),
                Ok(serde_json::json!({"risk": 0.5})),
                "step {step}"
            );
        }
        let bad_size = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert!(read_answer(bad_size, false).is_err());
        let bad_chunk = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}XX0\r\n\r\n";
        assert!(read_answer(bad_chunk, false).is_err());
        let unfinished = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n";
        assert_eq!(read_answer(unfinished, false), Ok(None));
        assert!(read_answer(unfinished, true).is_err());
    }

    #[test]
    fn interim_answers_are_skipped() {
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
            HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        for step in [1, 10, 200] {
            assert_eq!(
                read_in_steps(raw, step),
                Ok(serde_json::json!({})),
                "step {step}"
            );
        }
        let switching = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n";
        assert!(read_answer(switching, false).is_err());
        // Neither length nor chunks: the body runs to the end of the connection.
        let until_close = b"HTTP/1.1 200 OK\r\n\r\n{\"a\":1}";
        assert_eq!(read_answer(until_close, false), Ok(None));
        assert_eq!(
            read_in_steps(until_close, 4),
            Ok(serde_json::json!({"a": 1}))
        );
    }
}
