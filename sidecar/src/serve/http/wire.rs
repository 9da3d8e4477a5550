//! A response's bytes on the wire, and writing them.

use std::io::{self, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::Response;

/// Sends what the socket takes now, without waiting: the count sent.
pub(super) fn send_now(stream: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
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

/// The statuses this server and its handlers answer with: the code as
/// text and the reason phrase. The one table of them.
fn known(status: u16) -> Option<(&'static str, &'static str)> {
    Some(match status {
        200 => ("200", "OK"),
        201 => ("201", "Created"),
        202 => ("202", "Accepted"),
        400 => ("400", "Bad Request"),
        401 => ("401", "Unauthorized"),
        403 => ("403", "Forbidden"),
        404 => ("404", "Not Found"),
        405 => ("405", "Method Not Allowed"),
        408 => ("408", "Request Timeout"),
        409 => ("409", "Conflict"),
        411 => ("411", "Length Required"),
        413 => ("413", "Content Too Large"),
        415 => ("415", "Unsupported Media Type"),
        429 => ("429", "Too Many Requests"),
        431 => ("431", "Request Header Fields Too Large"),
        500 => ("500", "Internal Server Error"),
        501 => ("501", "Not Implemented"),
        503 => ("503", "Service Unavailable"),
        _ => return None,
    })
}

/// `status.to_string()` without the allocation, for the statuses in the
/// table (a metrics label, say); `None` for others.
pub fn status_text(status: u16) -> Option<&'static str> {
    known(status).map(|(text, _)| text)
}

/// The reason phrase of the status line; empty for a status not in the
/// table (allowed: clients ignore it).
fn reason(status: u16) -> &'static str {
    known(status).map_or("", |(_, reason)| reason)
}

pub(super) fn write_response(
    mut stream: &TcpStream,
    response: &Response,
    close: bool,
) -> io::Result<()> {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    stream.write_all(&encode(response, close))?;
    stream.flush()
}

/// A response's head only, as the answer to `HEAD`: its `Content-Length`
/// is the length of the body it would have.
pub(super) fn encode_head(response: &Response, close: bool) -> Vec<u8> {
    let mut bytes = encode(response, close);
    bytes.truncate(bytes.len() - response.body.len());
    bytes
}

/// A response's bytes on the wire.
pub(super) fn encode(response: &Response, close: bool) -> Vec<u8> {
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

    #[test]
    fn the_status_table_gives_both_the_code_as_text_and_the_reason() {
        for status in [
            200, 201, 202, 400, 401, 403, 404, 405, 408, 409, 411, 413, 415, 429, 431, 500, 501,
            503,
        ] {
            assert_eq!(status_text(status), Some(status.to_string().as_str()));
            assert!(!reason(status).is_empty(), "{status} has a reason phrase");
        }
        assert_eq!(status_text(418), None);
        assert_eq!(reason(418), "");
    }

    #[test]
    fn a_503_of_the_server_asks_to_retry_after_the_shared_delay_and_closes() {
        let bytes = encode(&Response::unavailable("busy"), true);
        let text = String::from_utf8(bytes).expect("utf-8");
        assert!(
            text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "\r\nRetry-After: {}\r\n",
                super::super::RETRY_AFTER
            )),
            "{text}"
        );
        assert!(text.contains("\r\nConnection: close\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n{\"error\":\"busy\"}"), "{text}");
    }
}
