//! The harness shared by the black-box tests of `quiesce serve`: start the
//! real binary on `127.0.0.1:0` with a fresh data directory, under a
//! watchdog; talk HTTP/1.1 to it with a small client of our own on
//! `std::net::TcpStream` that says precisely how a request ended; send it
//! real signals with `kill`; read its SQLite file; stand in for the
//! external analyzer. Each test binary uses part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// A server still running this long after its start is killed and the
/// test fails.
pub const WATCHDOG: Duration = Duration::from_secs(60);
/// The read and write timeout of the test client's sockets: far longer
/// than any answer should take, short enough to fail rather than hang.
pub const IO_TIMEOUT: Duration = Duration::from_secs(15);
/// A `submitted_at` safely in the past.
pub const SUBMITTED_AT: &str = "2025-06-01T09:30:00Z";

/// Serialises the heavy tests (load, crashes) of one test binary, so that
/// two of them do not compete for a small machine's cores.
pub fn heavy() -> MutexGuard<'static, ()> {
    static HEAVY: Mutex<()> = Mutex::new(());
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------
// Temporary directories

/// A fresh directory under the system's temporary directory, removed with
/// everything in it when dropped.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "quiesce-serve-{tag}-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create a temporary directory");
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------
// The server process

/// How a server process ended.
#[derive(Debug)]
pub struct Exit {
    pub status: ExitStatus,
    /// From the last signal sent (or from the call to wait, without one)
    /// to the exit being seen.
    pub elapsed: Duration,
    /// Everything it logged.
    pub log: String,
}

impl Exit {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// Asserts an exit after SIGTERM was graceful: exit code 0.
#[track_caller]
pub fn assert_graceful(exit: &Exit) {
    assert_eq!(
        exit.code(),
        Some(0),
        "a graceful stop exits 0; got {}\n{}",
        exit.status,
        exit.log
    );
}

/// A running `quiesce serve`, killed by its watchdog after [`WATCHDOG`] and
/// when dropped.
pub struct Serve {
    child: Arc<Mutex<Child>>,
    pid: u32,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    log: Arc<Mutex<String>>,
    log_reader: Option<JoinHandle<()>>,
    watchdog: Option<JoinHandle<()>>,
    watchdog_stop: Option<crossbeam_channel::Sender<()>>,
    fired: Arc<AtomicBool>,
    started: Instant,
    signalled: Option<Instant>,
    exit: Option<ExitStatus>,
}

impl Serve {
    /// Starts `quiesce serve --listen 127.0.0.1:0 --data-dir <data_dir>`
    /// plus `extra`, and waits until it has written its address.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Serve {
        let addr_file = data_dir.join("listen.addr");
        // A previous run's address must not be mistaken for this one's.
        let _ = std::fs::remove_file(&addr_file);
        let mut command = Command::new(env!("CARGO_BIN_EXE_quiesce"));
        command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env(
                "RUST_LOG",
                std::env::var("QUIESCE_TEST_LOG").unwrap_or_else(|_| "info".into()),
            );
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("QUIESCE_") {
                command.env_remove(key);
            }
        }
        let mut child = command.spawn().expect("start quiesce serve");
        let pid = child.id();
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let log_reader = {
            let log = log.clone();
            thread::Builder::new()
                .name(format!("serve-{pid}-log"))
                .spawn(move || {
                    for line in BufReader::new(stderr).lines() {
                        let Ok(line) = line else { break };
                        let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                        log.push_str(&line);
                        log.push('\n');
                    }
                })
                .expect("spawn the log reader")
        };
        let child = Arc::new(Mutex::new(child));
        let fired = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let (watchdog_stop, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let watchdog = {
            let (child, fired) = (child.clone(), fired.clone());
            thread::Builder::new()
                .name(format!("serve-{pid}-watchdog"))
                .spawn(move || {
                    loop {
                        match stop_rx.recv_timeout(Duration::from_millis(50)) {
                            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                            _ => return,
                        }
                        let mut child = child.lock().unwrap_or_else(|e| e.into_inner());
                        if !matches!(child.try_wait(), Ok(None)) {
                            return;
                        }
                        if started.elapsed() > WATCHDOG {
                            fired.store(true, Ordering::SeqCst);
                            let _ = child.kill();
                            return;
                        }
                    }
                })
                .expect("spawn the watchdog")
        };
        let mut serve = Serve {
            child,
            pid,
            addr: "127.0.0.1:1".parse().expect("an address"),
            data_dir: data_dir.to_path_buf(),
            log,
            log_reader: Some(log_reader),
            watchdog: Some(watchdog),
            watchdog_stop: Some(watchdog_stop),
            fired,
            started,
            signalled: None,
            exit: None,
        };
        loop {
            if let Ok(text) = std::fs::read_to_string(&addr_file) {
                if let Ok(addr) = text.trim().parse() {
                    serve.addr = addr;
                    break;
                }
            }
            if let Some(status) = serve.try_exit() {
                serve.fail(&format!("exited with {status} before listening"));
            }
            if started.elapsed() > WATCHDOG / 2 {
                serve.fail("never wrote listen.addr");
            }
            thread::sleep(Duration::from_millis(10));
        }
        // The address is written as intake starts, a moment before the
        // whole group is up: wait for /readyz.
        loop {
            let ready = Conn::open(serve.addr)
                .and_then(|mut c| c.send(&request("GET", "/readyz", &[], None, false)))
                .is_ok_and(|r| r.status == 200);
            if ready {
                return serve;
            }
            if let Some(status) = serve.try_exit() {
                serve.fail(&format!("exited with {status} before it was ready"));
            }
            if started.elapsed() > WATCHDOG / 2 {
                serve.fail("never ready");
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
            if let Ok(Some(status)) = child.try_wait() {
                self.exit = Some(status);
            }
        }
        self.exit
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.try_exit().is_none()
    }

    /// Sends `kill -<sig>` (`TERM`, `INT`, `KILL`) to the process, which
    /// must still be running (it cannot have been reaped meanwhile: only
    /// the holder of the lock reaps it).
    pub fn signal(&mut self, sig: &str) {
        let status = {
            let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
            if let Ok(Some(status)) = child.try_wait() {
                self.exit = Some(status);
                None
            } else {
                Some(
                    Command::new("kill")
                        .arg(format!("-{sig}"))
                        .arg(self.pid.to_string())
                        .status()
                        .expect("run kill"),
                )
            }
        };
        let Some(status) = status else {
            self.fail(&format!(
                "cannot send SIG{sig}: it already exited with {:?}",
                self.exit
            ));
        };
        assert!(status.success(), "kill -{sig} {} failed", self.pid);
        self.signalled = Some(Instant::now());
    }

    /// Waits for the exit, at most `limit` (and within the watchdog);
    /// kills the process and fails past it.
    pub fn wait_exit(&mut self, limit: Duration) -> Exit {
        let called = Instant::now();
        let give_up = (called + limit).min(self.started + WATCHDOG);
        let status = loop {
            if let Some(status) = self.try_exit() {
                break status;
            }
            if Instant::now() > give_up {
                self.fail(&format!(
                    "still running {:?} after the wait began",
                    called.elapsed()
                ));
            }
            thread::sleep(Duration::from_millis(5));
        };
        let elapsed = self.signalled.unwrap_or(called).elapsed();
        self.finish_threads();
        assert!(
            !self.fired.load(Ordering::SeqCst),
            "the watchdog killed the server after {WATCHDOG:?}\n{}",
            self.log()
        );
        Exit {
            status,
            elapsed,
            log: self.log(),
        }
    }

    /// SIGTERM, then the exit (within `limit`).
    pub fn terminate(&mut self, limit: Duration) -> Exit {
        self.signal("TERM");
        self.wait_exit(limit)
    }

    /// SIGTERM, and an exit 0 within `limit`.
    pub fn stop_ok(&mut self, limit: Duration) -> Exit {
        let exit = self.terminate(limit);
        assert_graceful(&exit);
        exit
    }

    /// SIGKILL, and its death.
    pub fn kill9(&mut self) -> Exit {
        self.signal("KILL");
        self.wait_exit(Duration::from_secs(20))
    }

    fn finish_threads(&mut self) {
        drop(self.watchdog_stop.take());
        if let Some(watchdog) = self.watchdog.take() {
            let _ = watchdog.join();
        }
        if let Some(reader) = self.log_reader.take() {
            let _ = reader.join();
        }
    }

    /// Kills the process and fails, with its log.
    pub fn fail(&mut self, why: &str) -> ! {
        {
            let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
            let _ = child.kill();
            let _ = child.wait();
        }
        self.finish_threads();
        panic!(
            "quiesce serve (pid {}): {why}; killed. Its log:\n{}",
            self.pid,
            self.log()
        );
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        {
            let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        self.finish_threads();
        if thread::panicking() {
            eprintln!(
                "--- log of quiesce serve (pid {}) ---\n{}",
                self.pid,
                self.log()
            );
        }
    }
}

/// Runs `quiesce <args>` to its end (killed, and the test failed, past
/// `limit`); returns its exit status and what it wrote to stderr.
pub fn run_to_exit(args: &[&str], limit: Duration) -> (ExitStatus, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_quiesce"));
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("QUIESCE_") {
            command.env_remove(key);
        }
    }
    let mut child = command.spawn().expect("start quiesce");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let give_up = Instant::now() + limit.min(WATCHDOG);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for quiesce") {
            break status;
        }
        if Instant::now() > give_up {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "quiesce {args:?} still running after {limit:?}; killed:\n{}",
                reader.join().unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(10));
    };
    (status, reader.join().unwrap_or_default())
}

// ---------------------------------------------------------------------------
// The HTTP client

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

/// A client connection (keep-alive capable).
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Responses read on this connection so far.
    pub answered: u32,
    /// The server said `Connection: close`, or the connection broke.
    pub closed: bool,
}

impl Conn {
    /// Connects (within 5 s).
    pub fn open(addr: SocketAddr) -> Result<Conn, Failure> {
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
        Ok(Conn {
            stream,
            buf: Vec::new(),
            answered: 0,
            closed: false,
        })
    }

    /// Whether a request was already answered on this connection.
    pub fn reused(&self) -> bool {
        self.answered > 0
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
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
            let _ = self.stream.set_read_timeout(Some(left));
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(got),
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e) if is_timeout(&e) => {}
                Err(_) => return Ok(got),
            }
        }
    }

    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
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

/// A JSON `POST /v1/reports`.
pub fn post_request(body: &[u8], keep_alive: bool) -> Vec<u8> {
    request(
        "POST",
        "/v1/reports",
        &[("Content-Type", "application/json")],
        Some(body),
        keep_alive,
    )
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

/// `POST /v1/reports` with a JSON body on a fresh connection.
#[track_caller]
pub fn post(addr: SocketAddr, body: &[u8]) -> Response {
    exchange(addr, &post_request(body, false))
}

/// Opens `n` keep-alive connections, each served one request, so that
/// each holds a handler thread until dropped.
#[track_caller]
pub fn hold_handlers(addr: SocketAddr, n: usize) -> Vec<Conn> {
    (0..n)
        .map(|_| {
            let mut conn = Conn::open(addr).expect("connect");
            let response = conn
                .send(&request("GET", "/livez", &[], None, true))
                .expect("served");
            assert_eq!(response.status, 200);
            conn
        })
        .collect()
}

/// Posts `report` as JSON.
#[track_caller]
pub fn post_json(addr: SocketAddr, report: &Value) -> Response {
    post(addr, report.to_string().as_bytes())
}

/// A valid report.
pub fn report(id: &str, patient: &str, site: &str, answers: &[(&str, u8)]) -> Value {
    let answers: serde_json::Map<String, Value> = answers
        .iter()
        .map(|(k, v)| ((*k).to_string(), json!(v)))
        .collect();
    json!({
        "report_id": id,
        "patient_id": patient,
        "site_id": site,
        "instrument": "PHQ-9",
        "submitted_at": SUBMITTED_AT,
        "answers": answers,
    })
}

/// Asserts an error answer: `status`, a JSON body with a non-empty
/// `error`, and (when given) the `field`.
#[track_caller]
pub fn assert_error(response: &Response, status: u16, field: Option<&str>, what: &str) {
    assert_eq!(
        response.status,
        status,
        "{what}: expected {status}, got {} {}",
        response.status,
        response.text()
    );
    assert!(
        response
            .header("content-type")
            .is_some_and(|ct| ct.starts_with("application/json")),
        "{what}: error bodies are JSON: {:?}",
        response.headers
    );
    let body = response.json();
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{what}: a non-empty \"error\": {body}"
    );
    if let Some(field) = field {
        assert_eq!(
            body["field"],
            json!(field),
            "{what}: the field named: {body}"
        );
    }
}

/// Polls `GET /v1/reports/{id}` until its status is not `queued`, within
/// `limit`; returns the last body.
#[track_caller]
pub fn wait_settled(addr: SocketAddr, id: &str, limit: Duration) -> Value {
    let give_up = Instant::now() + limit;
    loop {
        let response = get(addr, &format!("/v1/reports/{id}"));
        assert_eq!(response.status, 200, "GET {id}: {}", response.text());
        let body = response.json();
        if body["status"] != "queued" || Instant::now() > give_up {
            return body;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// The database

/// The server's database, opened read-only.
pub fn open_db(data_dir: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open_with_flags(
        data_dir.join("quiesce.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .expect("open quiesce.db read-only");
    conn.busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    conn
}

/// A report's row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub status: String,
    pub attempts: i64,
    pub has_result: bool,
}

/// Every report row by id, and the number of rows (to show none is
/// stored twice).
pub fn rows(data_dir: &Path) -> (HashMap<String, Row>, usize) {
    let db = open_db(data_dir);
    let mut stmt = db
        .prepare("SELECT report_id, status, attempts, result IS NOT NULL FROM reports")
        .expect("query reports");
    let mut map = HashMap::new();
    let mut count = 0;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                Row {
                    status: r.get(1)?,
                    attempts: r.get(2)?,
                    has_result: r.get(3)?,
                },
            ))
        })
        .expect("read reports");
    for row in rows {
        let (id, row) = row.expect("a report row");
        count += 1;
        map.insert(id, row);
    }
    (map, count)
}

/// Rows per `report_id` (the table's primary key says 1; this checks).
pub fn copies(data_dir: &Path) -> BTreeMap<String, i64> {
    let db = open_db(data_dir);
    let mut stmt = db
        .prepare("SELECT report_id, COUNT(*) FROM reports GROUP BY report_id")
        .expect("query reports");
    stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .expect("read reports")
        .map(|r| r.expect("a row"))
        .collect()
}

/// `PRAGMA integrity_check` of the database.
pub fn integrity(data_dir: &Path) -> String {
    let db = open_db(data_dir);
    let rows: Vec<String> = db
        .prepare("PRAGMA integrity_check")
        .expect("integrity_check")
        .query_map([], |r| r.get(0))
        .expect("integrity_check rows")
        .map(|r| r.expect("a row"))
        .collect();
    rows.join("; ")
}

/// Waits (within `limit`) until no report is `queued` in the database;
/// returns the rows.
pub fn wait_none_queued(data_dir: &Path, limit: Duration) -> HashMap<String, Row> {
    let give_up = Instant::now() + limit;
    loop {
        let (rows, _) = rows(data_dir);
        let queued = rows.values().filter(|r| r.status == "queued").count();
        if queued == 0 {
            return rows;
        }
        assert!(
            Instant::now() < give_up,
            "{queued} report(s) still queued after {limit:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------
// Stand-in analyzers

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
/// answers (the last one repeats), and keeps every request body.
pub struct ScriptedAnalyzer {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ScriptedAnalyzer {
    /// `script`: (status, JSON body) answers, in order.
    pub fn start(script: Vec<(u16, String)>) -> ScriptedAnalyzer {
        assert!(!script.is_empty());
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the analyzer");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("its address");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (requests, stop) = (requests.clone(), stop.clone());
            thread::Builder::new()
                .name("scripted-analyzer".into())
                .spawn(move || {
                    let mut next = 0;
                    while !stop.load(Ordering::SeqCst) {
                        let Ok((mut stream, _)) = listener.accept() else {
                            thread::sleep(Duration::from_millis(5));
                            continue;
                        };
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                        let Some((head, body)) = read_request(&mut stream) else {
                            continue;
                        };
                        requests
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((head, body));
                        let (status, answer) = &script[next.min(script.len() - 1)];
                        next += 1;
                        let out = format!(
                            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                            answer.len()
                        );
                        let _ = stream.write_all(out.as_bytes());
                        let _ = stream.shutdown(Shutdown::Write);
                    }
                })
                .expect("spawn the analyzer")
        };
        ScriptedAnalyzer {
            addr,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/v1/analyze", self.addr)
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

/// Reads a request's head and its Content-Length body.
fn read_request(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
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

// ---------------------------------------------------------------------------
// Randomness

/// A small xorshift generator; the seed comes from `QUIESCE_TEST_SEED` or
/// the clock, and is printed so that a failure can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new(test: &str) -> Rng {
        let seed = std::env::var("QUIESCE_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        println!("{test}: QUIESCE_TEST_SEED={seed}");
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }
}

// ---------------------------------------------------------------------------
// Load

/// What one load client saw.
#[derive(Debug, Default)]
pub struct Load {
    /// Reports answered 202.
    pub accepted: Vec<String>,
    /// Reports answered 200 (duplicate).
    pub duplicates: Vec<String>,
    /// Reports answered 503.
    pub unavailable: Vec<String>,
    /// Reports answered anything else.
    pub other: Vec<(String, u16, String)>,
    /// Reports sent whose fate the client does not know (no answer).
    pub unknown: Vec<String>,
    /// Requests resent on a fresh connection after a reused keep-alive one
    /// closed before any byte of an answer.
    pub retried: usize,
    /// Requests that got no answer where one was owed: a fresh
    /// connection closed or reset after the request was sent, a partial
    /// answer, a timeout.
    pub violations: Vec<String>,
    /// 503 answers without Retry-After.
    pub missing_retry_after: usize,
    /// Fresh connections closed before any byte of an answer just as the
    /// listener closed (the next connection was refused): the kernel
    /// resets what is still in the listen queue of a closed listener.
    pub reset_at_close: usize,
    /// Requests sent (retries included).
    pub sent: usize,
    /// Whether the client stopped because a fresh connection was refused.
    pub refused: bool,
}

/// A client posting unique reports `{prefix}-{n}` on a keep-alive
/// connection until `stop` is set, a fresh connection is refused, or
/// `max` reports were tried. After a 503 it waits as Retry-After says (at
/// most a second) before the next report. A reused connection closed before any byte of
/// an answer is the HTTP/1.1 race: the request is resent on a fresh
/// connection (as Go's and curl's clients do). `strict`: any other
/// missing answer is a violation; otherwise (the server is being killed)
/// it is an unknown fate, and the client goes on with a fresh connection.
pub fn load_client(
    addr: SocketAddr,
    prefix: &str,
    stop: &AtomicBool,
    max: usize,
    give_up: Instant,
    strict: bool,
) -> Load {
    let mut load = Load::default();
    let mut conn: Option<Conn> = None;
    let mut n = 0usize;
    'reports: while n < max && !stop.load(Ordering::SeqCst) && Instant::now() < give_up {
        let id = format!("{prefix}-{n}");
        n += 1;
        let body = report(
            &id,
            &format!("P-{}", n % 37),
            &format!("site-{}", n % 4),
            &[("q1", (n % 5) as u8), ("q2", (n % 3) as u8), ("q3", 1)],
        )
        .to_string();
        let raw = post_request(body.as_bytes(), true);
        // Whether the request went out at least once (its fate is then
        // unknown unless answered).
        let mut sent_once = false;
        loop {
            let mut current = match conn.take() {
                Some(c) if !c.closed => c,
                _ => match Conn::open(addr) {
                    Ok(c) => c,
                    // Refused, or reset in the handshake as the listener
                    // closes: the server is gone.
                    Err(f) if f.kind == FailKind::Refused || f.detail.contains("reset") => {
                        if sent_once {
                            load.unknown.push(id.clone());
                        }
                        load.refused = true;
                        break 'reports;
                    }
                    Err(f) => {
                        if sent_once {
                            load.unknown.push(id.clone());
                        }
                        if strict {
                            load.violations.push(format!("{id}: connect: {f:?}"));
                        }
                        break 'reports;
                    }
                },
            };
            load.sent += 1;
            sent_once = true;
            let reused = current.reused();
            match current.send(&raw) {
                Ok(response) => {
                    match response.status {
                        202 => load.accepted.push(id.clone()),
                        200 => load.duplicates.push(id.clone()),
                        503 => {
                            // A well-behaved client honours Retry-After
                            // (here, at most a second) before it sends the
                            // next report.
                            match response.header("retry-after").map(str::parse::<u64>) {
                                Some(Ok(secs)) => thread::sleep(Duration::from_secs(secs.min(1))),
                                _ => load.missing_retry_after += 1,
                            }
                            load.unavailable.push(id.clone());
                        }
                        status => load.other.push((id.clone(), status, response.text())),
                    }
                    if !current.closed {
                        conn = Some(current);
                    }
                    continue 'reports;
                }
                Err(f) if reused && f.closed_before_answer() => {
                    load.retried += 1;
                    continue;
                }
                Err(f) if f.closed_before_answer() && gone(addr) => {
                    // A fresh connection still in the listen queue when the
                    // listener closed is reset by the kernel: the server is
                    // gone, as the next connection shows.
                    load.reset_at_close += 1;
                    load.unknown.push(id.clone());
                    load.refused = true;
                    break 'reports;
                }
                Err(f) => {
                    if strict {
                        load.violations.push(format!(
                            "{id}: {} connection: {f:?}",
                            if reused { "reused" } else { "fresh" }
                        ));
                    }
                    load.unknown.push(id.clone());
                    continue 'reports;
                }
            }
        }
    }
    load
}

/// Whether nobody listens at `addr` any more.
fn gone(addr: SocketAddr) -> bool {
    match Conn::open(addr) {
        Err(f) => f.kind == FailKind::Refused || f.detail.contains("reset"),
        Ok(_) => false,
    }
}

/// Runs `clients` load clients on threads; returns what each saw.
pub fn run_load(
    addr: SocketAddr,
    tag: &str,
    clients: usize,
    stop: &Arc<AtomicBool>,
    max_each: usize,
    give_up: Instant,
    strict: bool,
) -> Vec<JoinHandle<Load>> {
    (0..clients)
        .map(|i| {
            let stop = stop.clone();
            let prefix = format!("{tag}c{i}");
            thread::Builder::new()
                .name(prefix.clone())
                .spawn(move || load_client(addr, &prefix, &stop, max_each, give_up, strict))
                .expect("spawn a load client")
        })
        .collect()
}
