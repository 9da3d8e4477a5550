//! Stand-in analyzers: silent, scripted, over HTTP or TLS.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// A listener on 127.0.0.1 that accepts connections, reads whatever is
/// sent, and never answers. Counts the connections.
pub struct SilentAnalyzer {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SilentAnalyzer {
    pub fn start() -> SilentAnalyzer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the silent analyzer");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("its address");
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (connections, stop) = (connections.clone(), stop.clone());
            thread::Builder::new()
                .name("silent-analyzer".into())
                .spawn(move || {
                    let mut open: Vec<TcpStream> = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !stop.load(Ordering::SeqCst) {
                        while let Ok((stream, _)) = listener.accept() {
                            let _ = stream.set_nonblocking(true);
                            connections.fetch_add(1, Ordering::SeqCst);
                            open.push(stream);
                        }
                        // Read and discard; forget the connections the
                        // other side closed.
                        open.retain_mut(|s| {
                            loop {
                                match s.read(&mut chunk) {
                                    Ok(0) => break false,
                                    Ok(_) => continue,
                                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break true,
                                    Err(_) => break false,
                                }
                            }
                        });
                        thread::sleep(Duration::from_millis(5));
                    }
                })
                .expect("spawn the silent analyzer")
        };
        SilentAnalyzer {
            addr,
            connections,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/v1/analyze", self.addr)
    }
}

impl Drop for SilentAnalyzer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A request an analyzer received: its head and its body.
pub type Received = (String, Vec<u8>);

/// An analyzer that answers each connection with the next of its scripted
/// answers (the last one repeats), and keeps every request body; over
/// plain HTTP, or TLS ([`start_tls`](Self::start_tls)).
pub struct ScriptedAnalyzer {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Received>>>,
    /// Connections that ended before a whole request was read: under TLS,
    /// a handshake the client refused.
    pub unfinished: Arc<AtomicUsize>,
    tls: bool,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// A connection the scripted analyzer accepted, plain or TLS (a rustls
/// `ServerConnection` on the analyzer's own thread).
enum Accepted {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

impl Accepted {
    /// Sends `out`, and ends the connection (with a TLS close_notify).
    fn answer(self, out: &[u8]) {
        match self {
            Accepted::Plain(mut stream) => {
                let _ = stream.write_all(out);
                let _ = stream.shutdown(Shutdown::Write);
            }
            Accepted::Tls(mut stream) => {
                let _ = stream.write_all(out);
                stream.conn.send_close_notify();
                let _ = stream.flush();
                let _ = stream.sock.shutdown(Shutdown::Write);
            }
        }
    }
}

impl Read for Accepted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Accepted::Plain(stream) => stream.read(buf),
            Accepted::Tls(stream) => stream.read(buf),
        }
    }
}

impl ScriptedAnalyzer {
    /// `script`: (status, JSON body) answers, in order.
    pub fn start(script: Vec<(u16, String)>) -> ScriptedAnalyzer {
        ScriptedAnalyzer::start_raw(answers(script))
    }

    /// `script`: whole answers, bytes on the wire, in order.
    pub fn start_raw(script: Vec<Vec<u8>>) -> ScriptedAnalyzer {
        ScriptedAnalyzer::start_delayed(script, Duration::ZERO)
    }

    /// An analyzer that answers every request `200 {}` after `delay`, one
    /// request at a time: a slow external service.
    pub fn slow(delay: Duration) -> ScriptedAnalyzer {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}".to_vec();
        ScriptedAnalyzer::start_delayed(vec![ok], delay)
    }

    /// The report ids of the requests received, in order.
    pub fn report_ids(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|(_, body)| {
                let body: serde_json::Value =
                    serde_json::from_slice(body).expect("the analyzer request is JSON");
                body["report"]["report_id"]
                    .as_str()
                    .expect("the request names its report")
                    .to_string()
            })
            .collect()
    }

    /// `script` as [`start`](Self::start), over TLS with `config` (see
    /// `ServerCert::server_config`).
    pub fn start_tls(
        script: Vec<(u16, String)>,
        config: Arc<rustls::ServerConfig>,
    ) -> ScriptedAnalyzer {
        ScriptedAnalyzer::run(answers(script), Duration::ZERO, Some(config))
    }

    /// `script` as [`start_tls`](Self::start_tls), each answer sent
    /// `delay` after its request was read.
    pub fn start_tls_delayed(
        script: Vec<(u16, String)>,
        config: Arc<rustls::ServerConfig>,
        delay: Duration,
    ) -> ScriptedAnalyzer {
        ScriptedAnalyzer::run(answers(script), delay, Some(config))
    }

    /// `script` as [`start_raw`](Self::start_raw), each answer sent `delay`
    /// after its request was read.
    pub fn start_delayed(script: Vec<Vec<u8>>, delay: Duration) -> ScriptedAnalyzer {
        ScriptedAnalyzer::run(script, delay, None)
    }

    fn run(
        script: Vec<Vec<u8>>,
        delay: Duration,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> ScriptedAnalyzer {
        assert!(!script.is_empty());
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the analyzer");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("its address");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let unfinished = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let with_tls = tls.is_some();
        let thread = {
            let (requests, unfinished, stop) = (requests.clone(), unfinished.clone(), stop.clone());
            thread::Builder::new()
                .name(
                    if with_tls {
                        "tls-analyzer"
                    } else {
                        "scripted-analyzer"
                    }
                    .into(),
                )
                .spawn(move || {
                    let mut next = 0;
                    while !stop.load(Ordering::SeqCst) {
                        let Ok((stream, _)) = listener.accept() else {
                            thread::sleep(Duration::from_millis(5));
                            continue;
                        };
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                        let mut stream = match &tls {
                            None => Accepted::Plain(stream),
                            Some(config) => {
                                let conn = rustls::ServerConnection::new(config.clone())
                                    .expect("a TLS server connection");
                                Accepted::Tls(Box::new(rustls::StreamOwned::new(conn, stream)))
                            }
                        };
                        // Under TLS the handshake is made by the first read.
                        let Some((head, body)) = read_request(&mut stream) else {
                            unfinished.fetch_add(1, Ordering::SeqCst);
                            continue;
                        };
                        requests
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((head, body));
                        thread::sleep(delay);
                        let out = &script[next.min(script.len() - 1)];
                        next += 1;
                        stream.answer(out);
                    }
                })
                .expect("spawn the analyzer")
        };
        ScriptedAnalyzer {
            addr,
            requests,
            unfinished,
            tls: with_tls,
            stop,
            thread: Some(thread),
        }
    }

    /// Its URL: `https://` when it speaks TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}/v1/analyze", self.addr)
    }

    pub fn requests(&self) -> Vec<Received> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for ScriptedAnalyzer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// (status, JSON body) answers as bytes on the wire.
fn answers(script: Vec<(u16, String)>) -> Vec<Vec<u8>> {
    script
        .into_iter()
        .map(|(status, answer)| {
            format!(
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            )
            .into_bytes()
        })
        .collect()
}

/// Reads a request's head and its Content-Length body.
fn read_request(stream: &mut impl Read) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let length = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        while buf.len() < end + 4 + length {
            let n = stream.read(&mut chunk).ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        return Some((head, buf[end + 4..end + 4 + length].to_vec()));
    }
}
