//! What TLS in the process costs (issue 13, item 3): the same sidecar,
//! once plain and once with `--tls-cert`, in interleaved rounds of one
//! run, measured by the server's CPU time (utime + stime from
//! `/proc/<pid>/stat`) per unit of work, beside throughput:
//!
//! - durable reports: `TLS_CLIENTS` keep-alive clients post unique reports
//!   for `TLS_SECONDS` (each answered `202` once committed, and processed);
//! - new connections: `TLS_CONNECTS` (2000) `GET /livez`, each on a fresh
//!   connection, one after another: with TLS, once resuming the session
//!   (the client keeps the server's tickets, as real clients do), once
//!   with full handshakes (ECDSA P-256 certificate, TLS 1.3).
//!
//! ```text
//! cargo bench -p quiesce-sidecar --bench tls
//! TLS_SECONDS=10 TLS_ROUNDS=5 TLS_CLIENTS=32 cargo bench -p quiesce-sidecar --bench tls
//! ```
//!
//! Certificates are made in the run (rcgen); traffic is on 127.0.0.1; the
//! data directories are under cargo's target tmp dir and removed. The
//! client runs on the same cores as the server (2 here): throughput says
//! little on its own, CPU per unit of work is the figure to compare.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A CA and a server certificate for 127.0.0.1, written to `dir`.
fn certificates(dir: &Path) -> (CertificateDer<'static>, PathBuf, PathBuf) {
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca_cert = ca.self_signed(&ca_key).expect("CA");
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("certificate");
    let (cert_file, key_file) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert_file, cert.pem()).expect("write");
    std::fs::write(&key_file, key.serialize_pem()).expect("write");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    (ca_cert.der().clone(), cert_file, key_file)
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

impl Sidecar {
    fn start(tag: &str, tls: Option<(&Path, &Path)>) -> Sidecar {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("tls-bench-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut command = Command::new(env!("CARGO_BIN_EXE_quiesce"));
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((cert, key)) = tls {
            command
                .arg("--tls-cert")
                .arg(cert)
                .arg("--tls-key")
                .arg(key);
        }
        let child = command.spawn().expect("start quiesce");
        let started = Instant::now();
        let addr = loop {
            if let Ok(text) = std::fs::read_to_string(dir.join("listen.addr"))
                && let Ok(addr) = text.trim().parse()
            {
                break addr;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "never listened"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Sidecar { child, addr, dir }
    }

    /// Waits (30 s at most) until `/readyz` answers 200 (over TLS with
    /// `tls`): the whole group is up.
    fn wait_ready(&self, tls: Option<&Arc<ClientConfig>>) {
        let request = b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
        let started = Instant::now();
        let mut buf = Vec::new();
        while exchange(connect(self.addr, tls).as_mut(), request, &mut buf) != 200 {
            assert!(started.elapsed() < Duration::from_secs(30), "never ready");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// utime + stime of the process so far.
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("read /proc stat");
        // Fields after the command name (which may hold spaces).
        let rest = &stat[stat.rfind(')').expect("a stat line") + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        let ticks: u64 =
            fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_secs_f64(ticks as f64 / hz as f64)
    }
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

fn connect(addr: SocketAddr, tls: Option<&Arc<ClientConfig>>) -> Box<dyn Stream> {
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    tcp.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    match tls {
        None => Box::new(tcp),
        Some(config) => {
            let name = ServerName::try_from("127.0.0.1").expect("name");
            let session = ClientConnection::new(config.clone(), name).expect("session");
            Box::new(StreamOwned::new(session, tcp))
        }
    }
}

/// Sends `request` and reads one answer; its status.
fn exchange(stream: &mut dyn Stream, request: &[u8], buf: &mut Vec<u8>) -> u16 {
    stream.write_all(request).expect("write");
    stream.flush().expect("flush");
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).expect("read");
        assert!(n > 0, "closed before an answer");
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut response = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = response.parse(buf) {
            let length: usize = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                .unwrap_or(0);
            if buf.len() >= head + length {
                return response.code.unwrap_or(0);
            }
        }
    }
}

fn post(id: &str) -> Vec<u8> {
    let body = format!(
        r#"{{"report_id":"{id}","patient_id":"P-{id}","site_id":"site-1","instrument":"daily-diary","submitted_at":"2025-06-01T09:30:00Z","answers":{{"q1":1}}}}"#
    );
    format!(
        "POST /v1/reports HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Durable reports for `seconds` from `clients` keep-alive clients: the
/// count acknowledged and the server's CPU meanwhile.
fn reports(
    sidecar: &Sidecar,
    tls: Option<&Arc<ClientConfig>>,
    clients: u64,
    seconds: u64,
    tag: &str,
) -> (u64, Duration, Duration) {
    let before = sidecar.cpu();
    let started = Instant::now();
    let end = started + Duration::from_secs(seconds);
    let acked: u64 = std::thread::scope(|s| {
        let workers: Vec<_> = (0..clients)
            .map(|c| {
                let tls = tls.cloned();
                std::thread::Builder::new()
                    .name(format!("tls-bench-client-{c}"))
                    .spawn_scoped(s, move || {
                        let mut stream = connect(sidecar.addr, tls.as_ref());
                        let mut buf = Vec::new();
                        let mut acked = 0u64;
                        let mut i = 0u64;
                        while Instant::now() < end {
                            let status = exchange(
                                stream.as_mut(),
                                &post(&format!("{tag}-{c}-{i}")),
                                &mut buf,
                            );
                            assert_eq!(status, 202, "a report not acknowledged");
                            acked += 1;
                            i += 1;
                        }
                        acked
                    })
                    .expect("spawn a client")
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("client")).sum()
    });
    (acked, started.elapsed(), sidecar.cpu() - before)
}

/// `n` `GET /livez`, each on a new connection: the server's CPU, and how
/// many TLS handshakes were resumed (the client's config keeps the
/// server's session tickets, as a real client's does).
fn connects(
    sidecar: &Sidecar,
    tls: Option<&Arc<ClientConfig>>,
    n: u64,
) -> (Duration, Duration, u64) {
    let request = b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    let before = sidecar.cpu();
    let started = Instant::now();
    let mut buf = Vec::new();
    let mut resumed = 0;
    for _ in 0..n {
        match tls {
            None => {
                let mut stream = connect(sidecar.addr, None);
                assert_eq!(exchange(stream.as_mut(), request, &mut buf), 200);
            }
            Some(config) => {
                let tcp = TcpStream::connect(sidecar.addr).expect("connect");
                let name = ServerName::try_from("127.0.0.1").expect("name");
                let session = ClientConnection::new(config.clone(), name).expect("session");
                let mut stream = StreamOwned::new(session, tcp);
                assert_eq!(exchange(&mut stream, request, &mut buf), 200);
                if stream.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                    resumed += 1;
                }
            }
        }
    }
    (started.elapsed(), sidecar.cpu() - before, resumed)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken.
    let seconds = knob("TLS_SECONDS", 5);
    let rounds = knob("TLS_ROUNDS", 3);
    let clients = knob("TLS_CLIENTS", 16);
    let connect_count = knob("TLS_CONNECTS", 2000);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("tls-bench-certs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (ca, cert, key) = certificates(&dir);
    let mut roots = RootCertStore::empty();
    roots.add(ca).expect("root");
    let mut base =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    let config = Arc::new(base.clone());
    // Every handshake a full one: no session kept.
    base.resumption = rustls::client::Resumption::disabled();
    let full = Arc::new(base);
    println!(
        "TLS bench: {rounds} round(s) of {seconds} s, {clients} keep-alive clients, \
         {connect_count} fresh connections; plain and TLS interleaved"
    );
    // (per report µs, reports/s, per connection µs, connections/s) per round,
    // plain and TLS (resumed handshakes); then TLS with full handshakes
    // (per connection µs, connections/s).
    let mut results: [Vec<(f64, f64, f64, f64)>; 2] = [Vec::new(), Vec::new()];
    let mut full_results: Vec<(f64, f64)> = Vec::new();
    for round in 0..rounds {
        for (which, tls) in [None, Some(&config)].into_iter().enumerate() {
            let tag = format!("r{round}{}", ["plain", "tls"][which]);
            let files = tls.map(|_| (cert.as_path(), key.as_path()));
            let sidecar = Sidecar::start(&tag, files);
            sidecar.wait_ready(tls);
            let (acked, wall, cpu) = reports(&sidecar, tls, clients, seconds, &tag);
            let (cwall, ccpu, resumed) = connects(&sidecar, tls, connect_count);
            let row = (
                cpu.as_secs_f64() * 1e6 / acked as f64,
                acked as f64 / wall.as_secs_f64(),
                ccpu.as_secs_f64() * 1e6 / connect_count as f64,
                connect_count as f64 / cwall.as_secs_f64(),
            );
            println!(
                "round {round} {:5}: {acked} reports, {:.1} µs CPU/report, {:.0}/s; \
                 connections {:.1} µs CPU each, {:.0}/s ({resumed} TLS sessions resumed)",
                ["plain", "TLS"][which],
                row.0,
                row.1,
                row.2,
                row.3
            );
            results[which].push(row);
            if tls.is_some() {
                let (fwall, fcpu, resumed) = connects(&sidecar, Some(&full), connect_count);
                assert_eq!(resumed, 0, "a session was resumed with resumption off");
                let full_row = (
                    fcpu.as_secs_f64() * 1e6 / connect_count as f64,
                    connect_count as f64 / fwall.as_secs_f64(),
                );
                println!(
                    "round {round} TLS  : full handshakes {:.1} µs CPU each, {:.0}/s",
                    full_row.0, full_row.1
                );
                full_results.push(full_row);
            }
        }
    }
    println!();
    println!(
        "| server | CPU µs per durable report | reports/s | CPU µs per new connection | connections/s |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (which, name) in ["plain HTTP", "TLS (rustls, in process)"]
        .iter()
        .enumerate()
    {
        let r = &results[which];
        println!(
            "| {name} | {:.1} | {:.0} | {:.1} | {:.0} |",
            median(r.iter().map(|x| x.0).collect()),
            median(r.iter().map(|x| x.1).collect()),
            median(r.iter().map(|x| x.2).collect()),
            median(r.iter().map(|x| x.3).collect()),
        );
    }
    println!(
        "| TLS, full handshakes (no resumption) | | | {:.1} | {:.0} |",
        median(full_results.iter().map(|x| x.0).collect()),
        median(full_results.iter().map(|x| x.1).collect()),
    );
    let _ = std::fs::remove_dir_all(&dir);
}
