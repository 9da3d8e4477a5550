//! Load benchmark of `quiesce serve` (issue 5, "Performance"): durable
//! intake throughput against a bare HTTP server measured by the same load
//! generator in the same run, latency, peak memory, whether processing keeps
//! pace with intake, memory with a backlog of 1,000,000 reports, and
//! SIGTERM-to-exit time idle and under load.
//!
//! ```text
//! CARGO_TARGET_DIR=target/load cargo bench --bench load   # 30 s per target: 2-3 minutes, plus the builds
//! LOAD_SECONDS=5 cargo bench --bench load                 # a quick run
//! ```
//!
//! Nothing to install. Cargo builds the binary for the bench (the `bench`
//! profile: release optimisations with debug info), and the bench brings
//! its own load generator: `LOAD_CLIENTS` threads, each with one keep-alive
//! `TcpStream`, each posting unique valid reports (the README's JSON shape,
//! nine answers) one after another — a closed loop: the next request leaves
//! when the previous one is answered — and timing each one from its first
//! byte written to the last byte of the answer read. All traffic is on
//! 127.0.0.1. Data directories live under cargo's target tmp dir
//! (`<target dir>/tmp/load-<pid>/`, on the target dir's disk, so fsyncs are
//! real fsyncs) and are removed at the end (`LOAD_KEEP=1` keeps them, with
//! each sidecar's log).
//!
//! Knobs (environment): `LOAD_SECONDS` (30; fractions allowed), `LOAD_CLIENTS`
//! (32), `LOAD_BACKLOG` (1000000), `LOAD_BACKLOG_SECONDS` (20),
//! `LOAD_IDLE_ROUNDS` (5).
//!
//! What is measured, in this order:
//!
//! 1. **bare** — a minimal HTTP/1.1 keep-alive server in this process (thread
//!    per connection; it reads each request's head and `Content-Length`
//!    body and answers `202` with a small JSON body, nothing else): the
//!    ceiling that the loopback, the kernel and this load generator allow
//!    on this machine.
//! 2. **sidecar** — `quiesce serve --listen 127.0.0.1:0 --data-dir <tmp>`
//!    with its defaults, under the same load for the same time. A `202` from
//!    it means the report is committed (SQLite WAL, `synchronous=FULL`), so
//!    its 202/s is the durable accepted reports/s. Sampled meanwhile, every
//!    50 ms: its VmRSS and VmHWM (`/proc/<pid>/status`); every second:
//!    `GET /metrics` (backlog, accepted, processed). When the load ends:
//!    the CPU time of each of its threads (`/proc/<pid>/task/*/stat`, the
//!    threads are named), the store's commit statistics, the backlog, and
//!    then the time until the backlog is 0. Then SIGTERM (idle by then) and,
//!    once it has exited, every report that got a 202 is looked up in the
//!    database file: each must be there, `processed`.
//! 3. **SIGTERM under load** — a fresh sidecar; `min(LOAD_SECONDS, 5)` s of
//!    the same load, then SIGTERM while the clients keep posting; the time
//!    to its exit, its exit code, what the clients got after the signal
//!    (answers by status, errors by kind: after the exit, reconnecting
//!    clients get `connect: ConnectionRefused`, which is expected), and the
//!    database check (every 202 there, `queued` or `processed`).
//! 4. **SIGTERM idle** — `LOAD_IDLE_ROUNDS` fresh sidecars, each signalled
//!    300 ms after it listens, with no client ever connected.
//! 5. **1M backlog** — start a sidecar once (it creates its schema), stop
//!    it, insert `LOAD_BACKLOG` `queued` reports straight into its
//!    `quiesce.db` in one transaction, start it with `--workers 2`, and for
//!    `LOAD_BACKLOG_SECONDS` (or until the backlog is 0, if sooner) sample
//!    its RSS and count what it processes; then SIGTERM (with every worker
//!    busy, unless the backlog is gone).
//!
//! A SIGTERM is sent with `kill(1)` (no `unsafe` here): each time is from
//! just before spawning `kill` to the moment `waitpid` sees the exit (polled
//! every 0.5 ms), so it includes the spawn of `kill`, which the summary
//! gives as "kill(1) spawn" (`kill -0` to the same process) for reference.
//! Also printed: the disk's flush time (4 KiB overwritten + `fdatasync`,
//! 200 times, next to the data directories), the machine's load average and
//! CPU use during the bench, and the CPU this process (load generator, bare
//! server) used.
//!
//! How to read it: the summary at the end is a markdown table (ready for
//! the issue) with one line per figure and, where the issue sets a goal,
//! the goal and whether it was met:
//! sidecar 202/s at least half the bare server's; every 202 in the database
//! after the stop; processing keeping pace (the backlog at the end of the
//! load at most one second of intake); RSS bounded with the 1M backlog
//! (under 100 MiB, whatever the backlog); idle SIGTERM-to-exit under 100 ms.
//! The machine is small (2 cores shared by the clients, the server and
//! anything else running) so the load generator takes CPU from the server
//! it measures, for both targets alike; compare figures of one run, and
//! look at the load average printed with them. With closed-loop clients,
//! throughput = clients / mean latency, so a slow tail costs throughput;
//! the "ceiling" line is what the durable commit alone allows (each
//! request waits for at least one commit). The CPU-by-thread lines say
//! where the sidecar's time went.
//!
//! Every thread started here is joined; every child process is killed if
//! the bench fails (its guard's `Drop`).

use std::collections::{BTreeMap, HashMap};
use std::env;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// How long a client waits for one answer before counting an error.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a sidecar may take to write its `listen.addr`.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a sidecar may take to exit after SIGTERM (its own deadline is
/// 25 s).
const EXIT_TIMEOUT: Duration = Duration::from_secs(40);
/// How long to wait for the backlog to reach 0 after the load.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);
/// Linux `USER_HZ`: the unit of CPU times in `/proc/*/stat`.
const TICKS_PER_SECOND: f64 = 100.0;
/// The largest RSS still "bounded" with the big backlog (the issue says
/// tens of MB).
const RSS_BOUND_KB: u64 = 100 * 1024;

fn main() {
    let config = Config::from_env();
    println!(
        "quiesce load bench: {} clients, {:?} per target, {} CPU(s), load average {}",
        config.clients,
        config.window,
        thread::available_parallelism().map_or(1, |n| n.get()),
        load_average()
    );
    let bin = build_sidecar();
    println!("source: {}", source_version());
    let tmp = TempDir::new();
    println!("data under {}", tmp.path.display());
    let machine_before = machine_cpu();
    let load_before = load_average();
    let bench_started = Instant::now();

    let fsync = fsync_probe(&tmp.path, 200);
    println!(
        "[0/5] disk: one 4 KiB overwrite + fdatasync: p50 {}, p99 {}",
        ms(percentile(&fsync, 0.50)),
        ms(percentile(&fsync, 0.99))
    );

    println!("[1/5] bare server: {} s", config.window.as_secs_f64());
    let bare = bare_run(&config);
    println!("      {}", bare.load.line());

    println!("[2/5] sidecar: {} s", config.window.as_secs_f64());
    let main_run = sidecar_run(&bin, &tmp, &config);
    println!("      {}", main_run.load.line());

    println!(
        "[3/5] SIGTERM under load (after {} s of load)",
        config.sigterm_after.as_secs_f64()
    );
    let under_load = sigterm_under_load(&bin, &tmp, &config);
    println!(
        "      exit {} after {}",
        under_load.status,
        ms_of(under_load.took)
    );

    println!(
        "[4/5] SIGTERM idle: {} fresh sidecar(s)",
        config.idle_rounds
    );
    let idle = sigterm_idle(&bin, &tmp, &config);

    println!(
        "[5/5] backlog: {} queued reports, {} s with --workers 2",
        config.backlog_reports,
        config.backlog_window.as_secs_f64()
    );
    let backlog = backlog_run(&bin, &tmp, &config);

    let machine_after = machine_cpu();
    let summary = Summary {
        config: &config,
        fsync: &fsync,
        bare: &bare,
        main: &main_run,
        under_load: &under_load,
        idle: &idle,
        backlog: &backlog,
        load_before,
        load_after: load_average(),
        machine_busy: machine_after.busy_share(&machine_before),
        wall: bench_started.elapsed(),
    };
    summary.print();
}

// ---------------------------------------------------------------------------
// Configuration, temporary files, the binary
// ---------------------------------------------------------------------------

struct Config {
    window: Duration,
    clients: usize,
    sigterm_after: Duration,
    backlog_reports: u64,
    backlog_window: Duration,
    idle_rounds: usize,
}

impl Config {
    fn from_env() -> Config {
        let seconds = |name: &str, default: f64| {
            let secs = env::var(name).map_or(default, |v| {
                v.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0)
                    .unwrap_or_else(|| panic!("{name}={v:?} is not a number of seconds"))
            });
            Duration::from_secs_f64(secs)
        };
        let count = |name: &str, default: u64| {
            env::var(name).map_or(default, |v| {
                v.trim()
                    .parse::<u64>()
                    .unwrap_or_else(|_| panic!("{name}={v:?} is not a count"))
            })
        };
        let window = seconds("LOAD_SECONDS", 30.0);
        Config {
            window,
            clients: usize::try_from(count("LOAD_CLIENTS", 32).max(1)).unwrap_or(32),
            sigterm_after: window.min(Duration::from_secs(5)),
            backlog_reports: count("LOAD_BACKLOG", 1_000_000),
            backlog_window: seconds("LOAD_BACKLOG_SECONDS", 20.0),
            idle_rounds: usize::try_from(count("LOAD_IDLE_ROUNDS", 5).max(1)).unwrap_or(5),
        }
    }
}

/// A directory removed (with everything in it) when dropped.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new() -> TempDir {
        let base = env::var_os("CARGO_TARGET_TMPDIR")
            .map_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")), PathBuf::from);
        let path = base.join(format!("load-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TempDir { path }
    }

    /// A fresh, empty subdirectory.
    fn sub(&self, name: &str) -> PathBuf {
        let path = self.path.join(name);
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if env::var_os("LOAD_KEEP").is_some() {
            eprintln!("LOAD_KEEP: leaving {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// The binary cargo built for this bench (the `bench` profile: release
/// optimisations with debug info, for profilers).
fn build_sidecar() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_quiesce"));
    assert!(bin.is_file(), "no binary at {}", bin.display());
    println!("binary: {}", bin.display());
    bin
}

/// The commit the binary was built from, and whether the tree had local
/// changes (from `git`, when there is one).
fn source_version() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(commit) => match git(&["status", "--porcelain", "--untracked-files=no"]) {
            Some(changes) if !changes.is_empty() => format!(
                "commit {commit} + local changes to {} file(s)",
                changes.lines().count()
            ),
            _ => format!("commit {commit}"),
        },
        None => "unknown (no git)".into(),
    }
}

// ---------------------------------------------------------------------------
// The sidecar process
// ---------------------------------------------------------------------------

/// A running `quiesce serve`; killed when dropped if it still runs.
struct Sidecar {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    log: PathBuf,
    /// From spawn to `listen.addr` written (every service up).
    started_in: Duration,
    /// VmRSS once listening.
    rss_at_start_kb: u64,
}

impl Sidecar {
    fn start(bin: &Path, data_dir: &Path, extra: &[&str]) -> Sidecar {
        let addr_file = data_dir.join("listen.addr");
        // A stale address must not be read before the new process removes it.
        let _ = fs::remove_file(&addr_file);
        let log = data_dir.with_extension("log");
        let log_file =
            File::create(&log).unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let started = Instant::now();
        let child = Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        // From here on, the guard kills it if anything fails.
        let mut sidecar = Sidecar {
            pid: child.id(),
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
            started_in: Duration::ZERO,
            rss_at_start_kb: 0,
        };
        loop {
            if let Ok(text) = fs::read_to_string(&addr_file) {
                if let Ok(addr) = text.trim().parse() {
                    sidecar.addr = addr;
                    break;
                }
            }
            if let Ok(Some(status)) = sidecar.child.try_wait() {
                panic!(
                    "the sidecar exited ({status}) before listening; its log:\n{}",
                    sidecar.log_tail()
                );
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "the sidecar did not listen within {START_TIMEOUT:?}; its log:\n{}",
                sidecar.log_tail()
            );
            thread::sleep(Duration::from_millis(2));
        }
        sidecar.started_in = started.elapsed();
        sidecar.rss_at_start_kb = proc_status_kb(sidecar.pid, "VmRSS").unwrap_or(0);
        sidecar
    }

    /// Sends SIGTERM and waits for the exit: the time from just before
    /// spawning `kill` to the exit being seen, and the exit status.
    fn sigterm(&mut self) -> (Duration, ExitStatus) {
        let sent = Instant::now();
        send_signal("-TERM", self.pid);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return (sent.elapsed(), status),
                Ok(None) => {}
                Err(err) => panic!("waiting for the sidecar: {err}"),
            }
            assert!(
                sent.elapsed() < EXIT_TIMEOUT,
                "the sidecar still runs {EXIT_TIMEOUT:?} after SIGTERM; its log:\n{}",
                self.log_tail()
            );
            thread::sleep(Duration::from_micros(500));
        }
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn send_signal(signal: &str, pid: u32) {
    let status = Command::new("kill")
        .arg(signal)
        .arg(pid.to_string())
        .status()
        .unwrap_or_else(|e| panic!("cannot run kill(1): {e}"));
    assert!(status.success(), "kill {signal} {pid}: {status}");
}

/// The time `send_signal` itself takes (spawning `kill -0`).
fn kill_spawn_time(pid: u32) -> Duration {
    let started = Instant::now();
    send_signal("-0", pid);
    started.elapsed()
}

fn exit_code(status: ExitStatus) -> String {
    status
        .code()
        .map_or_else(|| status.to_string(), |c| c.to_string())
}

// ---------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`).
fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// A `stat` line's thread name and user + system CPU ticks.
fn parse_stat(text: &str) -> Option<(String, u64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let name = text[open + 1..close].to_string();
    // Fields after the name start at field 3 (state); utime and stime are
    // fields 14 and 15.
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

/// CPU ticks of a whole process (`self` or a pid).
fn process_ticks(pid: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|t| parse_stat(&t))
        .map_or(0, |(_, ticks)| ticks)
}

/// CPU ticks of each thread of `pid`, by thread id.
fn thread_ticks(pid: u32) -> HashMap<String, (String, u64)> {
    let mut threads = HashMap::new();
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return threads;
    };
    for entry in entries.flatten() {
        let tid = entry.file_name().to_string_lossy().into_owned();
        if let Some(stat) = fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|t| parse_stat(&t))
        {
            threads.insert(tid, stat);
        }
    }
    threads
}

/// CPU used between two `thread_ticks`, in cores (CPU seconds per second),
/// by thread group (`http-3` and `http-17` are `http-*`), largest first.
fn cpu_by_group(
    before: &HashMap<String, (String, u64)>,
    after: &HashMap<String, (String, u64)>,
    wall: Duration,
) -> Vec<(String, f64)> {
    let mut groups: BTreeMap<String, u64> = BTreeMap::new();
    for (tid, (name, ticks)) in after {
        let used = ticks - before.get(tid).map_or(0, |(_, t)| *t).min(*ticks);
        let trimmed = name.trim_end_matches(|c: char| c.is_ascii_digit());
        let group = if trimmed.len() < name.len() {
            format!("{trimmed}*")
        } else {
            name.clone()
        };
        *groups.entry(group).or_default() += used;
    }
    let mut out: Vec<(String, f64)> = groups
        .into_iter()
        .filter(|(_, ticks)| *ticks > 0)
        .map(|(g, ticks)| (g, ticks as f64 / TICKS_PER_SECOND / wall.as_secs_f64()))
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out
}

fn format_groups(groups: &[(String, f64)]) -> String {
    let total: f64 = groups.iter().map(|(_, c)| c).sum();
    let parts: Vec<String> = groups
        .iter()
        .take(8)
        .map(|(g, c)| format!("{g} {c:.2}"))
        .collect();
    format!("{total:.2} cores: {}", parts.join(", "))
}

/// The machine's CPU time: busy and total jiffies (`/proc/stat`).
#[derive(Clone, Copy)]
struct MachineCpu {
    busy: u64,
    total: u64,
}

impl MachineCpu {
    fn busy_share(&self, before: &MachineCpu) -> f64 {
        let total = self.total.saturating_sub(before.total).max(1);
        self.busy.saturating_sub(before.busy) as f64 / total as f64
    }
}

fn machine_cpu() -> MachineCpu {
    let text = fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().take(8).sum();
    // idle and iowait
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    MachineCpu {
        busy: total.saturating_sub(idle),
        total,
    }
}

fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------
// HTTP: one message reader for both sides, a GET for /metrics
// ---------------------------------------------------------------------------

/// A request or response read from a keep-alive connection.
struct Message {
    /// The request line or status line.
    first_line: String,
    /// `Connection: close` was sent.
    close: bool,
    body: Vec<u8>,
}

/// Reads one message (head, then `Content-Length` bytes of body) from
/// `stream`, keeping extra bytes in `buf`. `None` on a clean end of stream
/// before its first byte. On a read timeout, what was read stays in `buf`
/// and the next call goes on from there.
fn read_message(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<Message>> {
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
fn status_of(first_line: &str) -> u16 {
    first_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    Ok(stream)
}

/// `GET path` on a connection of its own: the status and the body.
fn http_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
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
struct Metrics {
    backlog: f64,
    accepted: f64,
    processed: f64,
    failed: f64,
    commits: f64,
    commit_seconds: f64,
    flushes: f64,
    flush_seconds: f64,
    batched: f64,
    jobs: f64,
    job_seconds: f64,
}

fn metrics(addr: SocketAddr) -> io::Result<Metrics> {
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

// ---------------------------------------------------------------------------
// The bare server
// ---------------------------------------------------------------------------

/// A minimal HTTP/1.1 keep-alive server answering every request `202`:
/// one thread per connection, all joined by `stop` (or on drop).
struct BareServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl BareServer {
    fn start() -> BareServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the bare server");
        let addr = listener.local_addr().expect("its address");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let acceptor = thread::Builder::new()
            .name("bare-accept".into())
            .spawn(move || {
                let mut conns: Vec<thread::JoinHandle<()>> = Vec::new();
                for (n, stream) in listener.incoming().enumerate() {
                    if flag.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else {
                        continue;
                    };
                    let (done, running): (Vec<_>, Vec<_>) =
                        conns.into_iter().partition(|h| h.is_finished());
                    for handle in done {
                        let _ = handle.join();
                    }
                    conns = running;
                    let flag = flag.clone();
                    match thread::Builder::new()
                        .name(format!("bare-{n}"))
                        .spawn(move || serve_bare(stream, &flag))
                    {
                        Ok(handle) => conns.push(handle),
                        Err(err) => eprintln!("bare server: cannot start a thread: {err}"),
                    }
                }
                for handle in conns {
                    let _ = handle.join();
                }
            })
            .expect("start the bare server");
        BareServer {
            addr,
            stop,
            acceptor: Some(acceptor),
        }
    }

    fn stop(&mut self) {
        let Some(acceptor) = self.acceptor.take() else {
            return;
        };
        self.stop.store(true, Ordering::SeqCst);
        // Wake accept() with a connection of our own.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        let _ = acceptor.join();
    }
}

impl Drop for BareServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve_bare(mut stream: TcpStream, stop: &AtomicBool) {
    const BODY: &str = r#"{"report_id":"bare","status":"accepted"}"#;
    let answer = format!(
        "HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = stream.set_nodelay(true);
    // Wake up now and then to notice the stop.
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = Vec::with_capacity(4096);
    loop {
        match read_message(&mut stream, &mut buf) {
            Ok(Some(request)) => {
                if stream.write_all(answer.as_bytes()).is_err() || request.close {
                    return;
                }
            }
            Ok(None) => return,
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

// ---------------------------------------------------------------------------
// The load generator
// ---------------------------------------------------------------------------

/// What some requests got.
#[derive(Default)]
struct Tally {
    /// Latency of each 202, in microseconds.
    accepted_us: Vec<u32>,
    /// Other answers, by status.
    statuses: BTreeMap<u16, u64>,
    /// Failures without an answer, by kind (`read: ConnectionReset`).
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn error(&mut self, kind: String) {
        *self.errors.entry(kind).or_default() += 1;
    }

    fn merge(&mut self, other: Tally) {
        self.accepted_us.extend(other.accepted_us);
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
    }

    fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .statuses
            .iter()
            .map(|(s, n)| format!("{n} x {s}"))
            .collect();
        parts.extend(self.errors.iter().map(|(k, n)| format!("{n} x {k}")));
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    }
}

/// One client's results.
struct ClientOutcome {
    /// Requests that ended within the window.
    window: Tally,
    /// Requests that ended after it.
    after: Tally,
    /// Sequence numbers of the reports that got a 202 (any time).
    accepted: Vec<u64>,
}

/// A load run's results.
struct Load {
    tag: String,
    window: Duration,
    /// Within the window; latencies sorted.
    tally: Tally,
    /// After it (a SIGTERM, or requests in flight when the window closed).
    after: Tally,
    /// Per client, sequence numbers that got a 202.
    accepted: Vec<Vec<u64>>,
    /// CPU this process used during the window, in cores.
    bench_cpu: f64,
}

impl Load {
    fn rate(&self) -> f64 {
        self.tally.accepted_us.len() as f64 / self.window.as_secs_f64()
    }

    fn latency(&self, p: f64) -> u32 {
        percentile(&self.tally.accepted_us, p)
    }

    fn latencies(&self) -> String {
        let all = &self.tally.accepted_us;
        let mean = all.iter().map(|&us| u64::from(us)).sum::<u64>() / (all.len() as u64).max(1);
        format!(
            "{} / {} / {} (mean {})",
            ms(self.latency(0.50)),
            ms(self.latency(0.99)),
            ms(self.latency(1.0)),
            ms(u32::try_from(mean).unwrap_or(u32::MAX))
        )
    }

    fn line(&self) -> String {
        format!(
            "{} x 202 in {:.1} s = {:.0}/s; p50/p99/max {}; other answers and errors: {}",
            self.tally.accepted_us.len(),
            self.window.as_secs_f64(),
            self.rate(),
            self.latencies(),
            self.tally.describe()
        )
    }

    /// Every report id that got a 202.
    fn accepted_ids(&self) -> impl Iterator<Item = String> + '_ {
        self.accepted
            .iter()
            .enumerate()
            .flat_map(move |(c, seqs)| seqs.iter().map(move |seq| report_id(&self.tag, c, *seq)))
    }

    fn accepted_count(&self) -> usize {
        self.accepted.iter().map(Vec::len).sum()
    }
}

fn report_id(tag: &str, client: usize, seq: u64) -> String {
    format!("{tag}-c{client}-{seq}")
}

/// Writes a `POST /v1/reports` with a unique, valid report into `out`.
fn build_request(out: &mut Vec<u8>, tag: &str, client: usize, seq: u64) {
    let mut answers = String::with_capacity(64);
    for item in 1..=9u64 {
        let value = (seq.wrapping_mul(item + 2) + client as u64 + item) % 5;
        if item > 1 {
            answers.push(',');
        }
        answers.push_str(&format!("\"q{item}\":{value}"));
    }
    let body = format!(
        r#"{{"report_id":"{}","patient_id":"P-{client}-{}","site_id":"site-{}","instrument":"PHQ-9","submitted_at":"2026-01-15T09:30:00Z","answers":{{{answers}}}}}"#,
        report_id(tag, client, seq),
        seq % 1000,
        client % 8,
    );
    out.clear();
    let _ = write!(
        out,
        "POST /v1/reports HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
}

fn client(
    index: usize,
    addr: SocketAddr,
    tag: &str,
    window_end: Instant,
    stop: &AtomicBool,
) -> ClientOutcome {
    let mut out = ClientOutcome {
        window: Tally::default(),
        after: Tally::default(),
        accepted: Vec::new(),
    };
    let mut conn: Option<(TcpStream, Vec<u8>)> = None;
    let mut request = Vec::with_capacity(512);
    let mut seq = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let (stream, buf) = match conn.as_mut() {
            Some(conn) => conn,
            None => match connect(addr) {
                Ok(stream) => conn.insert((stream, Vec::with_capacity(4096))),
                Err(err) => {
                    let tally = if Instant::now() <= window_end {
                        &mut out.window
                    } else {
                        &mut out.after
                    };
                    tally.error(format!("connect: {:?}", err.kind()));
                    thread::sleep(Duration::from_millis(10));
                    continue;
                }
            },
        };
        seq += 1;
        build_request(&mut request, tag, index, seq);
        let started = Instant::now();
        let result = match stream.write_all(&request) {
            Ok(()) => read_message(stream, buf).map_err(|e| ("read", e)),
            Err(err) => Err(("write", err)),
        };
        let ended = Instant::now();
        let tally = if ended <= window_end {
            &mut out.window
        } else {
            &mut out.after
        };
        match result {
            Ok(Some(answer)) => {
                let status = status_of(&answer.first_line);
                if status == 202 {
                    let us = (ended - started).as_micros();
                    tally
                        .accepted_us
                        .push(u32::try_from(us).unwrap_or(u32::MAX));
                    out.accepted.push(seq);
                } else {
                    *tally.statuses.entry(status).or_default() += 1;
                }
                if answer.close {
                    conn = None;
                }
            }
            Ok(None) => {
                tally.error("read: closed before answering".into());
                conn = None;
            }
            Err((op, err)) => {
                tally.error(format!("{op}: {:?}", err.kind()));
                conn = None;
            }
        }
    }
    out
}

/// Sets its flag when dropped (also when unwinding), so that the threads
/// watching it end and can be joined.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Runs `clients` clients against `addr`; at the end of `window`, runs
/// `at_window_end` while they go on posting, then stops them.
fn run_load<R>(
    addr: SocketAddr,
    clients: usize,
    tag: &str,
    window: Duration,
    at_window_end: impl FnOnce() -> R,
) -> (Load, R) {
    let stop = AtomicBool::new(false);
    let cpu_before = process_ticks("self");
    let started = Instant::now();
    let window_end = started + window;
    thread::scope(|s| {
        let stop_guard = SetOnDrop(&stop);
        let handles: Vec<_> = (0..clients)
            .map(|i| {
                let stop = &stop;
                thread::Builder::new()
                    .name(format!("load-{i}"))
                    .spawn_scoped(s, move || client(i, addr, tag, window_end, stop))
                    .expect("start a load client")
            })
            .collect();
        if let Some(left) = window_end.checked_duration_since(Instant::now()) {
            thread::sleep(left);
        }
        let bench_cpu = (process_ticks("self") - cpu_before) as f64
            / TICKS_PER_SECOND
            / started.elapsed().as_secs_f64();
        let result = at_window_end();
        drop(stop_guard);
        let mut load = Load {
            tag: tag.to_string(),
            window,
            tally: Tally::default(),
            after: Tally::default(),
            accepted: Vec::with_capacity(clients),
            bench_cpu,
        };
        for handle in handles {
            let outcome = handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            load.tally.merge(outcome.window);
            load.after.merge(outcome.after);
            load.accepted.push(outcome.accepted);
        }
        load.tally.accepted_us.sort_unstable();
        load.after.accepted_us.sort_unstable();
        (load, result)
    })
}

/// What the sampler saw.
#[derive(Default)]
struct Samples {
    peak_rss_kb: u64,
    hwm_kb: u64,
    /// Seconds since the start, and the metrics then (every second).
    series: Vec<(f64, Metrics)>,
}

impl Samples {
    fn peak_kb(&self) -> u64 {
        self.peak_rss_kb.max(self.hwm_kb)
    }

    /// The backlog every `every` seconds.
    fn backlog_series(&self, every: f64) -> String {
        let mut next = 0.0;
        let mut parts = Vec::new();
        for (t, m) in &self.series {
            if *t >= next {
                parts.push(format!("{:.0}s: {:.0}", t, m.backlog));
                next = (t / every).floor() * every + every;
            }
        }
        parts.join(", ")
    }
}

/// Runs `body` while a thread samples `pid`'s memory (every 50 ms) and,
/// with `addr`, its metrics (every second).
fn sampled<R>(pid: u32, addr: Option<SocketAddr>, body: impl FnOnce() -> R) -> (Samples, R) {
    let stop = AtomicBool::new(false);
    thread::scope(|s| {
        let stop_guard = SetOnDrop(&stop);
        let stop = &stop;
        let sampler = thread::Builder::new()
            .name("load-sampler".into())
            .spawn_scoped(s, move || {
                let started = Instant::now();
                let mut next_metrics = started;
                let mut samples = Samples::default();
                while !stop.load(Ordering::SeqCst) {
                    if let Some(rss) = proc_status_kb(pid, "VmRSS") {
                        samples.peak_rss_kb = samples.peak_rss_kb.max(rss);
                    }
                    if let Some(hwm) = proc_status_kb(pid, "VmHWM") {
                        samples.hwm_kb = samples.hwm_kb.max(hwm);
                    }
                    if let Some(addr) = addr {
                        if Instant::now() >= next_metrics {
                            if let Ok(m) = metrics(addr) {
                                samples.series.push((started.elapsed().as_secs_f64(), m));
                            }
                            next_metrics += Duration::from_secs(1);
                        }
                    }
                    thread::sleep(Duration::from_millis(50));
                }
                samples
            })
            .expect("start the sampler");
        let result = body();
        drop(stop_guard);
        let samples = sampler
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (samples, result)
    })
}

// ---------------------------------------------------------------------------
// The runs
// ---------------------------------------------------------------------------

struct BareRun {
    load: Load,
}

fn bare_run(config: &Config) -> BareRun {
    let mut server = BareServer::start();
    let (load, ()) = run_load(server.addr, config.clients, "bare", config.window, || ());
    server.stop();
    BareRun { load }
}

struct MainRun {
    load: Load,
    samples: Samples,
    rss_at_start_kb: u64,
    /// Sidecar CPU during the window, by thread group.
    cpu: Vec<(String, f64)>,
    /// Metrics when the load started and when it ended.
    at_start: Metrics,
    at_end: Metrics,
    /// Time from the end of the load to a zero backlog.
    drained_in: Option<Duration>,
    exit_took: Duration,
    exit: ExitStatus,
    found: Found,
}

fn sidecar_run(bin: &Path, tmp: &TempDir, config: &Config) -> MainRun {
    let data = tmp.sub("sidecar");
    let mut sidecar = Sidecar::start(bin, &data, &[]);
    let (pid, addr) = (sidecar.pid, sidecar.addr);
    let at_start = metrics(addr).expect("GET /metrics before the load");
    let (samples, (load, cpu, at_end, drained_in)) = sampled(pid, Some(addr), || {
        let ticks_before = thread_ticks(pid);
        let started = Instant::now();
        let (load, ticks_after) = run_load(addr, config.clients, "s1", config.window, || {
            thread_ticks(pid)
        });
        let cpu = cpu_by_group(&ticks_before, &ticks_after, started.elapsed());
        let at_end = metrics(addr).expect("GET /metrics after the load");
        let drain_started = Instant::now();
        let mut drained_in = None;
        while drain_started.elapsed() < DRAIN_TIMEOUT {
            match metrics(addr) {
                Ok(m) if m.backlog <= 0.0 => {
                    drained_in = Some(drain_started.elapsed());
                    break;
                }
                Ok(_) => {}
                Err(err) => eprintln!("GET /metrics: {err}"),
            }
            thread::sleep(Duration::from_millis(20));
        }
        (load, cpu, at_end, drained_in)
    });
    let (exit_took, exit) = sidecar.sigterm();
    let found = db::find(&data.join("quiesce.db"), load.accepted_ids())
        .expect("read the database after the run");
    MainRun {
        load,
        samples,
        rss_at_start_kb: sidecar.rss_at_start_kb,
        cpu,
        at_start,
        at_end,
        drained_in,
        exit_took,
        exit,
        found,
    }
}

struct UnderLoad {
    load: Load,
    took: Duration,
    status: String,
    found: Found,
}

fn sigterm_under_load(bin: &Path, tmp: &TempDir, config: &Config) -> UnderLoad {
    let data = tmp.sub("sigterm-load");
    let mut sidecar = Sidecar::start(bin, &data, &[]);
    let addr = sidecar.addr;
    let (load, (took, status)) = run_load(addr, config.clients, "s2", config.sigterm_after, || {
        sidecar.sigterm()
    });
    let found = db::find(&data.join("quiesce.db"), load.accepted_ids())
        .expect("read the database after the run");
    UnderLoad {
        load,
        took,
        status: exit_code(status),
        found,
    }
}

struct Idle {
    /// Each round's SIGTERM-to-exit time and exit code.
    rounds: Vec<(Duration, String)>,
    /// Each round's `kill -0` time.
    kill_spawn: Vec<Duration>,
    started_in: Vec<Duration>,
}

fn sigterm_idle(bin: &Path, tmp: &TempDir, config: &Config) -> Idle {
    let mut idle = Idle {
        rounds: Vec::new(),
        kill_spawn: Vec::new(),
        started_in: Vec::new(),
    };
    for round in 0..config.idle_rounds {
        let data = tmp.sub(&format!("idle-{round}"));
        let mut sidecar = Sidecar::start(bin, &data, &[]);
        idle.started_in.push(sidecar.started_in);
        thread::sleep(Duration::from_millis(150));
        idle.kill_spawn.push(kill_spawn_time(sidecar.pid));
        thread::sleep(Duration::from_millis(150));
        let (took, status) = sidecar.sigterm();
        println!(
            "      round {}: exit {} after {}",
            round + 1,
            exit_code(status),
            ms_of(took)
        );
        idle.rounds.push((took, exit_code(status)));
    }
    idle
}

struct Backlog {
    reports: u64,
    fill_took: Duration,
    started_in: Duration,
    rss_at_start_kb: u64,
    samples: Samples,
    window: Duration,
    before: Metrics,
    after: Metrics,
    cpu: Vec<(String, f64)>,
    exit_took: Duration,
    exit: String,
}

fn backlog_run(bin: &Path, tmp: &TempDir, config: &Config) -> Backlog {
    let data = tmp.sub("backlog");
    let workers = ["--workers", "2"];
    {
        // Once, so that it creates the database and its schema.
        let mut sidecar = Sidecar::start(bin, &data, &workers);
        let (_, status) = sidecar.sigterm();
        assert!(status.success(), "first start and stop: {status}");
    }
    let filling = Instant::now();
    db::fill(&data.join("quiesce.db"), config.backlog_reports)
        .expect("fill the database with queued reports");
    let fill_took = filling.elapsed();
    println!(
        "      {} reports inserted in {:.1} s",
        config.backlog_reports,
        fill_took.as_secs_f64()
    );
    let mut sidecar = Sidecar::start(bin, &data, &workers);
    let (pid, addr) = (sidecar.pid, sidecar.addr);
    let before = metrics(addr).expect("GET /metrics");
    let ticks_before = thread_ticks(pid);
    let started = Instant::now();
    let (samples, (window, ticks_after, after)) = sampled(pid, Some(addr), || {
        // Until the window ends or the backlog is gone, whichever is first.
        let end = started + config.backlog_window;
        while Instant::now() < end {
            thread::sleep(Duration::from_millis(50));
            if metrics(addr).is_ok_and(|m| m.backlog <= 0.0) {
                break;
            }
        }
        let ticks = thread_ticks(pid);
        let window = started.elapsed();
        (window, ticks, metrics(addr).expect("GET /metrics"))
    });
    let (exit_took, status) = sidecar.sigterm();
    Backlog {
        reports: config.backlog_reports,
        fill_took,
        started_in: sidecar.started_in,
        rss_at_start_kb: sidecar.rss_at_start_kb,
        samples,
        window,
        before,
        after,
        cpu: cpu_by_group(&ticks_before, &ticks_after, window),
        exit_took,
        exit: exit_code(status),
    }
}

/// Overwrites 4 KiB of a 64 KiB file and `fdatasync`s, `n` times (the
/// file's size never changes, as a WAL being reused): each time in
/// microseconds, sorted.
fn fsync_probe(dir: &Path, n: usize) -> Vec<u32> {
    use std::io::{Seek, SeekFrom};
    let path = dir.join("fsync.probe");
    let mut file = File::create(&path).expect("create the fsync probe");
    let block = [0x5au8; 4096];
    for _ in 0..16 {
        file.write_all(&block).expect("write the probe");
    }
    file.sync_all().expect("fsync the probe");
    let mut times: Vec<u32> = (0..n)
        .map(|i| {
            let started = Instant::now();
            file.seek(SeekFrom::Start(4096 * (i as u64 % 16)))
                .expect("seek the probe");
            file.write_all(&block).expect("write the probe");
            file.sync_data().expect("fdatasync the probe");
            u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX)
        })
        .collect();
    let _ = fs::remove_file(&path);
    times.sort_unstable();
    times
}

// ---------------------------------------------------------------------------
// The database, read and filled directly
// ---------------------------------------------------------------------------

/// Where the reports that got a 202 are in the database.
#[derive(Debug, Default)]
struct Found {
    processed: u64,
    queued: u64,
    failed: u64,
    missing: u64,
}

impl Found {
    fn present(&self) -> u64 {
        self.processed + self.queued + self.failed
    }
}

mod db {
    use std::path::Path;
    use std::time::{SystemTime, UNIX_EPOCH};

    use rusqlite::{Connection, OptionalExtension, params};

    use super::Found;

    /// Looks up each id (the sidecar has exited).
    pub fn find(path: &Path, ids: impl Iterator<Item = String>) -> rusqlite::Result<Found> {
        let conn = Connection::open(path)?;
        let mut found = Found::default();
        let mut stmt = conn.prepare("SELECT status FROM reports WHERE report_id = ?1")?;
        for id in ids {
            let status: Option<String> = stmt.query_row([&id], |r| r.get(0)).optional()?;
            match status.as_deref() {
                Some("processed") => found.processed += 1,
                Some("queued") => found.queued += 1,
                Some(_) => found.failed += 1,
                None => found.missing += 1,
            }
        }
        Ok(found)
    }

    /// Inserts `n` queued reports in one transaction, into the schema the
    /// sidecar created. Fast and not durable (rollback journal,
    /// `synchronous = OFF`); WAL mode is restored at the end.
    pub fn fill(path: &Path, n: u64) -> rusqlite::Result<()> {
        let mut conn = Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode = DELETE; PRAGMA synchronous = OFF; PRAGMA cache_size = -262144;",
        )?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare(
                "INSERT INTO reports (report_id, patient_id, site_id, instrument, submitted_at,
                                      answers, content_hash, received_at, status)
                 VALUES (?1, ?2, ?3, 'PHQ-9', '2026-01-15T09:30:00Z', ?4, ?5, ?6, 'queued')",
            )?;
            let mut answers = String::with_capacity(96);
            for i in 0..n {
                answers.clear();
                answers.push('{');
                for item in 1..=9u64 {
                    if item > 1 {
                        answers.push(',');
                    }
                    answers.push_str(&format!("\"q{item}\":{}", (i + item) % 5));
                }
                answers.push('}');
                insert.execute(params![
                    format!("backlog-{i:08}"),
                    format!("P-{}", i % 10_000),
                    format!("SITE-{}", i % 20),
                    answers,
                    format!("{i:064x}"),
                    now,
                ])?;
            }
        }
        tx.commit()?;
        conn.execute_batch("PRAGMA journal_mode = WAL;")?;
        conn.close().map_err(|(_, e)| e)
    }
}

// ---------------------------------------------------------------------------
// The summary
// ---------------------------------------------------------------------------

/// Store commits between two readings of the metrics.
fn commit_stats(before: &Metrics, after: &Metrics, secs: f64) -> String {
    let commits = after.commits - before.commits;
    if commits <= 0.0 {
        return "none".into();
    }
    let flushes = after.flushes - before.flushes;
    let flushed = if flushes > 0.0 {
        format!(
            "; WAL flushes (fdatasync, on store-sync) {:.0}/s, {:.2} ms each, {:.1} commits each",
            flushes / secs,
            1000.0 * (after.flush_seconds - before.flush_seconds) / flushes,
            commits / flushes
        )
    } else {
        " (fsync included: each commit flushed itself)".to_string()
    };
    format!(
        "{:.0}/s, {:.1} commands each ({:.1} new reports, {:.1} results), {:.2} ms each{flushed}",
        commits / secs,
        (after.batched - before.batched) / commits,
        (after.accepted - before.accepted) / commits,
        (after.processed - before.processed) / commits,
        1000.0 * (after.commit_seconds - before.commit_seconds) / commits
    )
}

/// The `p` quantile (0..=1) of sorted `values` (0 when empty).
fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Microseconds as milliseconds.
fn ms(us: u32) -> String {
    format!("{:.2} ms", f64::from(us) / 1000.0)
}

fn ms_of(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn mb(kb: u64) -> String {
    format!("{:.1} MiB", kb as f64 / 1024.0)
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

struct Summary<'a> {
    config: &'a Config,
    fsync: &'a [u32],
    bare: &'a BareRun,
    main: &'a MainRun,
    under_load: &'a UnderLoad,
    idle: &'a Idle,
    backlog: &'a Backlog,
    load_before: String,
    load_after: String,
    machine_busy: f64,
    wall: Duration,
}

impl Summary<'_> {
    fn print(&self) {
        let (c, bare, main, under, idle, backlog) = (
            self.config,
            self.bare,
            self.main,
            self.under_load,
            self.idle,
            self.backlog,
        );
        let mut rows: Vec<[String; 3]> = Vec::new();
        let mut row = |what: &str, value: String, goal: String| {
            rows.push([what.to_string(), value, goal]);
        };

        let ratio = main.load.rate() / bare.load.rate().max(f64::MIN_POSITIVE);
        row(
            "bare server: 202/s",
            format!("{:.0}", bare.load.rate()),
            String::new(),
        );
        row(
            "sidecar: durable 202/s",
            format!("{:.0}", main.load.rate()),
            String::new(),
        );
        row(
            "sidecar / bare",
            format!("{ratio:.2}"),
            format!(">= 0.50: {}", met(ratio >= 0.5)),
        );
        row(
            "latency p50 / p99 / max (mean), bare",
            bare.load.latencies(),
            String::new(),
        );
        row(
            "latency p50 / p99 / max (mean), sidecar",
            main.load.latencies(),
            String::new(),
        );
        row(
            "other answers and errors, bare",
            bare.load.tally.describe(),
            String::new(),
        );
        row(
            "other answers and errors, sidecar",
            main.load.tally.describe(),
            String::new(),
        );
        let f = &main.found;
        row(
            "202s in the database after the stop",
            format!(
                "{} of {} ({} processed, {} queued, {} failed)",
                f.present(),
                main.load.accepted_count(),
                f.processed,
                f.queued,
                f.failed
            ),
            format!("all: {}", met(f.missing == 0)),
        );
        row(
            "sidecar RSS at start / peak (load + drain)",
            format!(
                "{} / {}",
                mb(main.rss_at_start_kb),
                mb(main.samples.peak_kb())
            ),
            String::new(),
        );
        let window = c.window.as_secs_f64();
        let e = &main.at_end;
        let intake_per_s = e.accepted / window;
        row(
            "processing during the load",
            format!(
                "accepted {:.0} ({intake_per_s:.0}/s), processed {:.0} ({:.0}/s), backlog at the end {:.0} = {:.1} s of intake",
                e.accepted,
                e.processed,
                e.processed / window,
                e.backlog,
                e.backlog / intake_per_s.max(f64::MIN_POSITIVE)
            ),
            format!(
                "keeps pace (backlog <= 1 s of intake): {}",
                met(e.backlog <= intake_per_s)
            ),
        );
        row(
            "backlog during the load",
            main.samples.backlog_series(5.0),
            String::new(),
        );
        row(
            "backlog drained after the load",
            match main.drained_in {
                Some(_) if e.backlog <= 0.0 => "nothing to drain: 0 when the load ended".into(),
                Some(d) => format!(
                    "in {:.2} s ({:.0} reports/s)",
                    d.as_secs_f64(),
                    e.backlog / d.as_secs_f64().max(1e-3)
                ),
                None => format!("not within {DRAIN_TIMEOUT:?}"),
            },
            String::new(),
        );
        row(
            "store commits during the load",
            commit_stats(&main.at_start, e, window),
            String::new(),
        );
        if e.commits > main.at_start.commits {
            let commit_s = (e.commit_seconds - main.at_start.commit_seconds)
                / (e.commits - main.at_start.commits);
            let flushes = e.flushes - main.at_start.flushes;
            let flush_s = if flushes > 0.0 {
                (e.flush_seconds - main.at_start.flush_seconds) / flushes
            } else {
                0.0
            };
            row(
                "ceiling: clients / (commit + flush time)",
                format!(
                    "{} clients, each waiting for at least one commit and one flush: at most {:.0}/s",
                    c.clients,
                    c.clients as f64 / (commit_s + flush_s)
                ),
                String::new(),
            );
        }
        row(
            "disk: 4 KiB overwrite + fdatasync",
            format!(
                "p50 {}, p99 {}",
                ms(percentile(self.fsync, 0.5)),
                ms(percentile(self.fsync, 0.99))
            ),
            String::new(),
        );
        row(
            "sidecar CPU during the load",
            format_groups(&main.cpu),
            String::new(),
        );
        row(
            "this process (clients) CPU, bare / sidecar run",
            format!(
                "{:.2} / {:.2} cores",
                bare.load.bench_cpu, main.load.bench_cpu
            ),
            String::new(),
        );
        let mut idle_times: Vec<Duration> = idle.rounds.iter().map(|(d, _)| *d).collect();
        idle_times.sort();
        let codes: Vec<&str> = idle.rounds.iter().map(|(_, c)| c.as_str()).collect();
        let mut kill_times = idle.kill_spawn.clone();
        kill_times.sort();
        let mut started = idle.started_in.clone();
        started.sort();
        let worst_idle = idle_times.last().copied().unwrap_or_default();
        row(
            "SIGTERM-to-exit, idle (min / median / max)",
            format!(
                "{} / {} / {} over {} fresh sidecars; exit codes {}; kill(1) spawn {} of it; started (spawn to listening) in {}",
                ms_of(idle_times[0]),
                ms_of(idle_times[idle_times.len() / 2]),
                ms_of(worst_idle),
                idle_times.len(),
                codes.join(","),
                ms_of(kill_times[kill_times.len() / 2]),
                ms_of(started[started.len() / 2])
            ),
            format!(
                "< 100 ms: {}",
                met(worst_idle < Duration::from_millis(100) && codes.iter().all(|c| *c == "0"))
            ),
        );
        row(
            "SIGTERM-to-exit, under load",
            format!(
                "{} (exit code {}) after {:.0} s at {:.0}/s",
                ms_of(under.took),
                under.status,
                c.sigterm_after.as_secs_f64(),
                under.load.rate()
            ),
            format!("exit 0: {}", met(under.status == "0")),
        );
        row(
            "answers after that SIGTERM",
            format!(
                "{} x 202, {}",
                under.load.after.accepted_us.len(),
                under.load.after.describe()
            ),
            String::new(),
        );
        let u = &under.found;
        row(
            "202s in the database after that stop",
            format!(
                "{} of {} ({} processed, {} queued)",
                u.present(),
                under.load.accepted_count(),
                u.processed,
                u.queued
            ),
            format!("all: {}", met(u.missing == 0)),
        );
        row(
            "SIGTERM-to-exit after the load, drained",
            format!(
                "{} (exit code {})",
                ms_of(main.exit_took),
                exit_code(main.exit)
            ),
            String::new(),
        );
        let b = backlog;
        row(
            "backlog: fill, then start (spawn to listening)",
            format!(
                "{} queued reports inserted in {:.1} s; started in {}",
                b.reports,
                b.fill_took.as_secs_f64(),
                ms_of(b.started_in)
            ),
            String::new(),
        );
        row(
            "backlog: RSS at start / peak",
            format!(
                "{} / {} over {:.0} s",
                mb(b.rss_at_start_kb),
                mb(b.samples.peak_kb()),
                b.window.as_secs_f64()
            ),
            format!(
                "bounded (< {}): {}",
                mb(RSS_BOUND_KB),
                met(b.samples.peak_kb() < RSS_BOUND_KB)
            ),
        );
        row(
            "backlog: processed with --workers 2",
            format!(
                "{:.0} in {:.1} s = {:.0} reports/s; {}",
                b.after.processed - b.before.processed,
                b.window.as_secs_f64(),
                (b.after.processed - b.before.processed) / b.window.as_secs_f64(),
                if b.after.backlog <= 0.0 {
                    "all processed".to_string()
                } else {
                    format!("{:.0} still queued", b.after.backlog)
                }
            ),
            String::new(),
        );
        row(
            "backlog: store commits",
            commit_stats(&b.before, &b.after, b.window.as_secs_f64()),
            String::new(),
        );
        row("backlog: sidecar CPU", format_groups(&b.cpu), String::new());
        row(
            if b.after.backlog > 0.0 {
                "backlog: SIGTERM-to-exit, workers busy"
            } else {
                "backlog: SIGTERM-to-exit, drained"
            },
            format!("{} (exit code {})", ms_of(b.exit_took), b.exit),
            String::new(),
        );
        row(
            "machine",
            format!(
                "{} CPUs; load average {} at start, {} at end; CPU busy {:.0}% over the {:.0} s bench",
                thread::available_parallelism().map_or(1, |n| n.get()),
                self.load_before,
                self.load_after,
                100.0 * self.machine_busy,
                self.wall.as_secs_f64()
            ),
            String::new(),
        );

        println!();
        println!(
            "## quiesce serve under load: {} clients, {:.0} s per target",
            c.clients, window
        );
        println!();
        let width = |i: usize| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0);
        let (w0, w1, w2) = (width(0), width(1), width(2).max(4));
        println!("| {:w0$} | {:w1$} | {:w2$} |", "measure", "value", "goal");
        println!(
            "|{}|{}|{}|",
            "-".repeat(w0 + 2),
            "-".repeat(w1 + 2),
            "-".repeat(w2 + 2)
        );
        for [what, value, goal] in &rows {
            println!("| {what:w0$} | {value:w1$} | {goal:w2$} |");
        }
    }
}
