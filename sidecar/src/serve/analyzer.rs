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
        loop {
            stream
                .set_read_timeout(timeout())
                .map_err(|e| io("socket", e))?;
            match stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    response.extend_from_slice(&chunk[..n]);
                    if response.len() > MAX_RESPONSE {
                        return Err("analyzer answer larger than 1 MiB".to_string());
                    }
                    if complete(&response) {
                        break;
                    }
                }
                Err(e) => return Err(io("read", e)),
            }
        }
        parse_response(&response)
    }
}

/// Whether `buf` holds a whole response (head and `Content-Length` body).
fn complete(buf: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(head)) => {
            content_length(resp.headers).is_some_and(|len| buf.len() >= head + len)
        }
        _ => false,
    }
}

fn content_length(headers: &[httparse::Header<'_>]) -> Option<usize> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .and_then(|v| v.trim().parse().ok())
}

fn parse_response(buf: &[u8]) -> Result<serde_json::Value, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return Err("analyzer closed the connection mid-answer".to_string());
        }
        Err(e) => return Err(format!("analyzer sent a malformed answer: {e}")),
    };
    let status = resp.code.unwrap_or(0);
    let mut body = &buf[head..];
    if let Some(len) = content_length(resp.headers) {
        body = &body[..len.min(body.len())];
    }
    if !(200..300).contains(&status) {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]).to_string();
        return Err(format!("analyzer answered {status}: {}", text.trim()));
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

    #[test]
    fn responses_are_checked() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n{\"risk\":0.2}";
        assert!(complete(ok));
        assert_eq!(
            parse_response(ok).unwrap(),
            serde_json::json!({"risk": 0.2})
        );
        let err = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy";
        assert_eq!(
            parse_response(err).unwrap_err(),
            "analyzer answered 503: busy"
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nnot").is_err());
        assert!(!complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}"
        ));
    }
}
