//! Idle-connection bench of `quiesce serve` (issue 12, finding 1): `GET
//! /livez` latency and POST throughput on one sidecar, first with no other
//! connection open ("quiet"), then with `IDLE_CONNS` idle connections
//! (connected, never a byte) and `IDLE_SLOW` slowloris connections (each
//! sends a request head a byte at a time, one byte per connection every
//! ~second) open ("hostile"), in the same run.
//!
//! ```text
//! CARGO_TARGET_DIR=target/idle cargo bench -p quiesce-sidecar --bench idle
//! IDLE_SECONDS=3 IDLE_CONNS=500 cargo bench -p quiesce-sidecar --bench idle
//! ```
//!
//! Knobs (environment): `IDLE_SECONDS` (5: POST load per phase),
//! `IDLE_CLIENTS` (16 keep-alive POST clients, closed loop), `IDLE_PROBES`
//! (500 `GET /livez`, each on a fresh connection, one after another, as a
//! liveness probe does), `IDLE_CONNS` (2000), `IDLE_SLOW` (500). The
//! sidecar runs with `--max-connections 4000` and header and idle
//! timeouts of 10 minutes, so that nothing it holds times out during the
//! run; its other settings are the defaults (64 handler threads). All
//! traffic is on 127.0.0.1; the data directory is under cargo's target tmp
//! dir and removed at the end. Each process needs a file descriptor per
//! connection (`ulimit -n`).

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Sidecar {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start() -> Sidecar {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("idle-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("data dir");
    let child = Command::new(env!("CARGO_BIN_EXE_quiesce"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .args([
            "--max-connections",
            "4000",
            "--header-timeout",
            "10m",
            "--idle-timeout",
            "10m",
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start the sidecar");
    let mut sidecar = Sidecar {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        dir: dir.clone(),
    };
    let started = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(dir.join("listen.addr"))
            && let Ok(addr) = text.trim().parse()
        {
            sidecar.addr = addr;
            return sidecar;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the sidecar never listened"
        );
        if let Ok(Some(status)) = sidecar.child.try_wait() {
            panic!("the sidecar exited ({status}) before listening");
        }
        thread::sleep(Duration::from_millis(5));
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

/// Reads one answer (head and `Content-Length` body): its status.
fn read_answer(stream: &mut TcpStream, buf: &mut Vec<u8>) -> u16 {
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
            }
        }
        let n = stream.read(&mut chunk).expect("read an answer");
        assert!(n > 0, "closed before answering");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `GET /livez` latencies (µs), each on a fresh connection.
fn probes(addr: SocketAddr, n: u64) -> Vec<u64> {
    let mut buf = Vec::new();
    let mut times = Vec::new();
    for _ in 0..n {
        let started = Instant::now();
        let mut stream = connect(addr);
        stream
            .write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .expect("write");
        assert_eq!(read_answer(&mut stream, &mut buf), 200);
        times.push(started.elapsed().as_micros() as u64);
    }
    times.sort_unstable();
    times
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// 202s per second from `clients` keep-alive clients posting for `secs`.
fn posts(addr: SocketAddr, tag: &str, clients: u64, secs: u64) -> f64 {
    let until = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let tag = tag.to_string();
            thread::spawn(move || {
                let mut stream = connect(addr);
                let (mut buf, mut req, mut ok) = (Vec::new(), String::new(), 0u64);
                let mut seq = 0u64;
                while Instant::now() < until {
                    seq += 1;
                    let body = format!(
                        r#"{{"report_id":"{tag}-{c}-{seq}","patient_id":"P-{c}-{}","site_id":"site-{}","instrument":"daily-diary","submitted_at":"2026-01-15T09:30:00Z","answers":{{"q1":1,"q2":2,"q3":0}}}}"#,
                        seq % 1000,
                        c % 8
                    );
                    req.clear();
                    let _ = write!(
                        req,
                        "POST /v1/reports HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    stream.write_all(req.as_bytes()).expect("post");
                    if read_answer(&mut stream, &mut buf) == 202 {
                        ok += 1;
                    }
                }
                ok
            })
        })
        .collect();
    let ok: u64 = handles.into_iter().map(|h| h.join().expect("client")).sum();
    ok as f64 / started.elapsed().as_secs_f64()
}

fn measure(addr: SocketAddr, phase: &str, tag: &str) -> String {
    let (n, clients, secs) = (
        knob("IDLE_PROBES", 500),
        knob("IDLE_CLIENTS", 16),
        knob("IDLE_SECONDS", 5),
    );
    let times = probes(addr, n);
    let rate = posts(addr, tag, clients, secs);
    format!(
        "| {phase} | {:.2} | {:.2} | {:.2} | {rate:.0} |",
        pct(&times, 0.5),
        pct(&times, 0.99),
        pct(&times, 1.0),
    )
}

fn main() {
    let sidecar = start();
    let addr = sidecar.addr;
    let (idle_n, slow_n) = (knob("IDLE_CONNS", 2000), knob("IDLE_SLOW", 500));
    let quiet = measure(addr, "quiet", "quiet");
    // The hostile clients: idle ones send nothing; slowloris ones trickle
    // a head, one byte per connection about every second.
    let idle: Vec<TcpStream> = (0..idle_n).map(|_| connect(addr)).collect();
    let slow: Vec<TcpStream> = (0..slow_n).map(|_| connect(addr)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let trickler = {
        let stop = stop.clone();
        thread::spawn(move || {
            let head = b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Padding: ";
            let mut slow = slow;
            let mut sent = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let byte = head.get(sent).copied().unwrap_or(b'a');
                for stream in &mut slow {
                    stream.write_all(&[byte]).expect("trickle");
                }
                sent += 1;
                thread::sleep(Duration::from_secs(1));
            }
            slow
        })
    };
    thread::sleep(Duration::from_secs(2));
    let hostile = measure(
        addr,
        &format!("{idle_n} idle + {slow_n} slowloris"),
        "hostile",
    );
    stop.store(true, Ordering::SeqCst);
    let slow = trickler.join().expect("trickler");
    // Still open: the server neither dropped nor timed them out.
    let mut probe = [0u8; 1];
    let mut alive = 0;
    for stream in idle.iter().chain(slow.iter()) {
        stream.set_nonblocking(true).expect("nonblocking");
        if matches!((&*stream).read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        {
            alive += 1;
        }
    }
    println!("| connections open | GET /livez p50 (ms) | p99 (ms) | max (ms) | POST 202/s |");
    println!("|---|---|---|---|---|");
    println!("{quiet}");
    println!("{hostile}");
    println!(
        "hostile connections still open at the end: {alive} of {}",
        idle_n + slow_n
    );
    drop(sidecar);
}
