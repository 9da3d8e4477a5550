//! Property tests of the chunked body reader (RFC 9112 §7.1), through a
//! real [`Server`] on loopback: the reader takes its bytes from the socket
//! as they come, so the properties drive it with real writes, split at
//! random places, to a handler that echoes the body it was given.
//!
//! What must hold:
//! 1. Any well-formed chunked body (chunk sizes in any case, with leading
//!    zeros, with chunk extensions), written in any pieces, is read as the
//!    bytes it encodes: the echo is the body.
//! 2. A chunked body past the body limit is `413`, whatever the chunking.
//! 3. Any mutation of a well-formed request (bytes flipped, dropped,
//!    inserted) gets one answer or a close, never a hang past the body
//!    deadline, never a panic (the server answers the next connection).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, RngSeed};

use super::{Handler, Later, Limits, Request, Response, Server};

const MAX_BODY: usize = 4096;

struct Echo;

impl Handler<()> for Echo {
    fn handle(
        &self,
        _state: &mut (),
        request: &Request,
        _stopping: bool,
        _later: &Later<'_>,
    ) -> Option<Response> {
        Some(Response {
            status: 200,
            content_type: "application/octet-stream",
            headers: Vec::new(),
            body: request.body.clone(),
        })
    }

    fn refused(&self, _status: u16, _why: &str, _head: Option<(&str, &str)>) {}
}

fn start() -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let limits = Limits {
        handlers: 2,
        active: 2,
        max_connections: 32,
        header_timeout: Duration::from_millis(500),
        body_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_secs(2),
        max_body: MAX_BODY,
        max_head: 8192,
        close_grace: Duration::from_millis(50),
    };
    Server::start("chunk-test", listener, None, limits, || Ok(()), Echo).expect("start")
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: RngSeed::Fixed(0x6368_756e_6b65_6421),
        failure_persistence: None,
        ..Config::default()
    }
}

/// How one chunk is written.
#[derive(Clone, Debug)]
struct Chunk {
    len: usize,
    upper: bool,
    zeros: usize,
    extension: Option<String>,
}

/// A chunked encoding of `body`, cut into `chunks` (their lengths wrap
/// around what is left of the body), then the last chunk and its CRLF.
fn encode(body: &[u8], chunks: &[Chunk]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = 0;
    for chunk in chunks {
        if at == body.len() {
            break;
        }
        let len = 1 + chunk.len % (body.len() - at);
        let size = if chunk.upper {
            format!("{len:X}")
        } else {
            format!("{len:x}")
        };
        out.extend(std::iter::repeat_n(b'0', chunk.zeros));
        out.extend_from_slice(size.as_bytes());
        if let Some(ext) = &chunk.extension {
            out.extend_from_slice(format!(";{ext}").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&body[at..at + len]);
        out.extend_from_slice(b"\r\n");
        at += len;
    }
    if at < body.len() {
        out.extend_from_slice(format!("{:x}\r\n", body.len() - at).as_bytes());
        out.extend_from_slice(&body[at..]);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

fn request(encoded: &[u8]) -> Vec<u8> {
    let mut out = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    out.extend_from_slice(encoded);
    out
}

/// Writes `bytes` in pieces cut at `cuts` (fractions), a moment apart, then
/// reads until the server closes: the status and body of the answer, if
/// one came.
fn exchange(addr: SocketAddr, bytes: &[u8], cuts: &[u16]) -> Option<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut at: Vec<usize> = cuts
        .iter()
        .map(|c| usize::from(*c) * bytes.len() / usize::from(u16::MAX))
        .collect();
    at.push(bytes.len());
    at.sort_unstable();
    let mut from = 0;
    for to in at {
        if to > from {
            if stream.write_all(&bytes[from..to]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_micros(300));
            from = to;
        }
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            // Neither an answer nor a close within the read timeout (20
            // times the body deadline): the server hung.
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("no answer and no close in 10 s: the server hung")
            }
            Err(_) => break,
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(head)) = response.parse(&got) else {
        return None;
    };
    Some((response.code.unwrap_or(0), got[head..].to_vec()))
}

fn chunk() -> impl Strategy<Value = Chunk> {
    (
        0usize..600,
        any::<bool>(),
        prop_oneof![8 => Just(0usize), 1 => 1usize..4],
        prop_oneof![6 => Just(None), 1 => "[a-z]{1,8}(=[a-z0-9]{1,8})?".prop_map(Some)],
    )
        .prop_map(|(len, upper, zeros, extension)| Chunk {
            len,
            upper,
            zeros,
            extension,
        })
}

proptest! {
    #![proptest_config(config(150))]

    /// Property 1.
    #[test]
    fn well_formed_chunked_bodies_are_read_as_they_encode(
        body in proptest::collection::vec(any::<u8>(), 0..MAX_BODY),
        chunks in proptest::collection::vec(chunk(), 0..12),
        cuts in proptest::collection::vec(any::<u16>(), 0..6),
    ) {
        let server = start();
        let answer = exchange(server.local_addr(), &request(&encode(&body, &chunks)), &cuts);
        server.stop(Instant::now() + Duration::from_secs(5));
        prop_assert_eq!(answer, Some((200, body)));
    }

    /// Property 2.
    #[test]
    fn chunked_bodies_past_the_limit_are_413(
        extra in 1usize..2048,
        chunks in proptest::collection::vec(chunk(), 0..12),
        cuts in proptest::collection::vec(any::<u16>(), 0..6),
    ) {
        let server = start();
        let body = vec![b'x'; MAX_BODY + extra];
        let answer = exchange(server.local_addr(), &request(&encode(&body, &chunks)), &cuts);
        server.stop(Instant::now() + Duration::from_secs(5));
        prop_assert_eq!(answer.map(|(status, _)| status), Some(413));
    }

    /// Property 3.
    #[test]
    fn mutated_chunked_requests_get_an_answer_or_a_close(
        body in proptest::collection::vec(any::<u8>(), 0..512),
        chunks in proptest::collection::vec(chunk(), 0..6),
        edits in proptest::collection::vec((any::<u16>(), 0u8..3, any::<u8>()), 1..4),
        cuts in proptest::collection::vec(any::<u16>(), 0..4),
    ) {
        let server = start();
        let addr = server.local_addr();
        let mut bytes = request(&encode(&body, &chunks));
        // Only the body's bytes are edited: the head stays chunked.
        let head = bytes.windows(4).position(|w| w == b"\r\n\r\n").expect("a head") + 4;
        for (at, kind, byte) in edits {
            let span = bytes.len() - head;
            let at = head + usize::from(at) * span / (usize::from(u16::MAX) + 1);
            match kind {
                0 if at < bytes.len() => bytes[at] = byte,
                1 if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, byte),
            }
        }
        let answer = exchange(addr, &bytes, &cuts);
        if let Some((status, _)) = &answer {
            prop_assert!(
                [200, 400, 408, 413].contains(status),
                "status {} for {:?}", status, String::from_utf8_lossy(&bytes)
            );
        }
        // Still serving.
        let next = exchange(addr, &request(b"3\r\nabc\r\n0\r\n\r\n"), &[]);
        server.stop(Instant::now() + Duration::from_secs(5));
        prop_assert_eq!(next, Some((200, b"abc".to_vec())));
    }
}
