//! HTTP: one message reader for both sides, a GET for /metrics.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long a client waits for one answer before counting an error.
pub(crate) const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// A request or response read from a keep-alive connection.
pub(crate) struct Message {
    /// The request line or status line.
    pub(crate) first_line: String,
    /// `Connection: close` was sent.
    pub(crate) close: bool,
    pub(crate) body: Vec<u8>,
}

/// Reads one message (head, then `Content-Length` bytes of body) from
/// `stream`, keeping extra bytes in `buf`. `None` on a clean end of stream
/// before its first byte. On a read timeout, what was read stays in `buf`
/// and the next call goes on from there.
pub(crate) fn read_message(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> io::Result<Option<Message>> {
    let mut chunk = [0u8; 4096];
    let head_len = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too large"));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_len])
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let first_line = lines.next().unwrap_or_default().to_string();
    let (mut length, mut close) = (0usize, false);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("content-length") {
            length = value
                .trim()
                .parse()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad Content-Length"))?;
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.trim().eq_ignore_ascii_case("close");
        }
    }
    while buf.len() < head_len + length {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[head_len..head_len + length].to_vec();
    buf.drain(..head_len + length);
    Ok(Some(Message {
        first_line,
        close,
        body,
    }))
}

/// The status code of a status line (0 when there is none).
pub(crate) fn status_of(first_line: &str) -> u16 {
    first_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

pub(crate) fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    Ok(stream)
}

/// `GET path` on a connection of its own: the status and the body.
pub(crate) fn http_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let mut stream = connect(addr)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    let message = read_message(&mut stream, &mut buf)?.ok_or(io::ErrorKind::UnexpectedEof)?;
    Ok((
        status_of(&message.first_line),
        String::from_utf8_lossy(&message.body).into_owned(),
    ))
}

/// The sidecar's metrics that the bench reads (`GET /metrics`).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Metrics {
    pub(crate) backlog: f64,
    pub(crate) accepted: f64,
    pub(crate) processed: f64,
    pub(crate) failed: f64,
    pub(crate) commits: f64,
    pub(crate) commit_seconds: f64,
    pub(crate) flushes: f64,
    pub(crate) flush_seconds: f64,
    pub(crate) batched: f64,
    pub(crate) jobs: f64,
    pub(crate) job_seconds: f64,
}

pub(crate) fn metrics(addr: SocketAddr) -> io::Result<Metrics> {
    let (status, text) = http_get(addr, "/metrics")?;
    if status != 200 {
        return Err(io::Error::other(format!("GET /metrics: {status}")));
    }
    let mut m = Metrics::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        match name {
            "quiesce_backlog" => m.backlog = value,
            "quiesce_reports_accepted_total" => m.accepted = value,
            "quiesce_reports_processed_total" => m.processed = value,
            "quiesce_reports_failed_total" => m.failed = value,
            "quiesce_store_commit_seconds_count" => m.commits = value,
            "quiesce_store_commit_seconds_sum" => m.commit_seconds = value,
            "quiesce_store_commit_batch_size_sum" => m.batched = value,
            "quiesce_store_fsync_seconds_count" => m.flushes = value,
            "quiesce_store_fsync_seconds_sum" => m.flush_seconds = value,
            "quiesce_job_duration_seconds_count" => m.jobs = value,
            "quiesce_job_duration_seconds_sum" => m.job_seconds = value,
            _ => {}
        }
    }
    Ok(m)
}
