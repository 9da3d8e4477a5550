//! quiesce vs an axum + tokio peer (issue 14, `LOAD_TARGETS=peers`): the
//! same load generator against `quiesce serve` (SQLite, its defaults) and
//! against `quiesce-peer-axum` (package `peers/axum/`: axum + tokio, one
//! writer thread owning a rusqlite connection, WAL, `synchronous = FULL`,
//! group commit, `202` only after the commit; see its `main.rs`), in
//! interleaved rounds at each concurrency of `LOAD_PEER_CLIENTS`
//! (comma-separated, default `32,128`); `LOAD_ROUNDS` rounds, the order of
//! the two servers alternating from one round to the next.
//!
//! `LOAD_BASELINE_BIN=path/to/quiesce` adds a third server to every round:
//! another build of `quiesce` (the one before a change, say), measured as
//! quiesce is. On shared cores the peer's own figure moves by a fifth from
//! one run to the next; a change is judged against its baseline in the
//! same rounds, not against an earlier run.
//!
//! The peer is built here with `cargo build --release -p quiesce-peer-axum`
//! (into the bench's target directory: the bench profile's binaries sit
//! in `release/` too); tokio and axum never enter the library or the binary.
//!
//! Each run: start the server (fresh data directory); read the utime +
//! stime of its process (`/proc/<pid>/stat`); `LOAD_SECONDS` of load; read
//! them again at the end of the window. Measured:
//! - 202/s within the window, latencies, how many clients got any 202;
//! - CPU µs per accepted report: the server's CPU in the window ÷ the 202s
//!   in the window (for quiesce this includes whatever processing ran
//!   meanwhile);
//! - quiesce only: CPU µs per processed report, from the start of the load
//!   until its backlog is 0 ÷ the reports processed in that time (every
//!   report accepted and processed), the processed/s in the window and the
//!   backlog at its end. The peer processes nothing, so its figure is for
//!   intake alone: the goal compares the two;
//! - the machine: busy share in the window, the load generator's CPU,
//!   everything else's CPU (machine − server − this process), in cores,
//!   and the load average after the window;
//! - where the server's CPU went: CPU µs per 202 by thread group (`http-*`,
//!   `store`, `tokio-rt-worker`, ...), and its context switches per 202,
//!   voluntary (a thread went to sleep, to be woken again) and involuntary
//!   (a thread lost its core), in the window.
//!
//! The summary gives every run and, per server and concurrency, medians.
//!
//! Checked after each run (a failed check panics: the bench fails, which
//! is what `.ci/run`'s short smoke run relies on; no speed is asserted):
//! the server answered at least one `202`, exited 0 on SIGTERM, and every
//! report it answered `202` is in its database (`quiesce.db`, `peer.db`);
//! for quiesce, once its backlog was drained, every one is `processed`.

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use crate::client::{Load, run_load};
use crate::config::Config;
use crate::db;
use crate::http::metrics;
use crate::proc::{
    TICKS_PER_SECOND, context_switches, cpu_by_group, load_average, machine_cpu, process_ticks,
    thread_ticks,
};
use crate::scenarios::DRAIN_TIMEOUT;
use crate::sidecar::{Sidecar, exit_code};
use crate::temp::TempDir;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Server {
    Quiesce,
    /// Another build of quiesce (`LOAD_BASELINE_BIN`), to measure a change
    /// against the binary before it in the same run.
    Baseline,
    Peer,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Quiesce => "quiesce serve",
            Server::Baseline => "quiesce serve (LOAD_BASELINE_BIN)",
            Server::Peer => "axum + tokio peer",
        }
    }

    fn is_quiesce(self) -> bool {
        matches!(self, Server::Quiesce | Server::Baseline)
    }
}

/// The servers measured: quiesce, the baseline build when
/// `LOAD_BASELINE_BIN` names one, and the peer.
fn servers() -> Vec<Server> {
    let mut servers = vec![Server::Quiesce];
    if env::var_os("LOAD_BASELINE_BIN").is_some() {
        servers.push(Server::Baseline);
    }
    servers.push(Server::Peer);
    servers
}

struct Run {
    server: Server,
    clients: usize,
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    served: usize,
    per_accepted: f64,
    /// quiesce only.
    per_processed: Option<f64>,
    processed_rate: Option<f64>,
    backlog_at_end: Option<f64>,
    server_cores: f64,
    bench_cores: f64,
    others_cores: f64,
    machine_busy: f64,
    load_avg: String,
    /// CPU µs per 202 by thread group, largest first.
    by_thread: Vec<(String, f64)>,
    /// Context switches per 202: voluntary, involuntary.
    switches: (f64, f64),
}

/// `cargo build --release -p quiesce-peer-axum`, into this bench's target
/// directory; the binary's path.
fn build_peer(bin: &Path) -> PathBuf {
    let dir = bin.parent().expect("the binary's directory");
    let target_dir = dir.parent().expect("the target directory");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "-p",
            "quiesce-peer-axum",
            "--target-dir",
        ])
        .arg(target_dir)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .status()
        .expect("run cargo build for the peer");
    assert!(status.success(), "cargo build -p quiesce-peer-axum failed");
    let peer = target_dir.join("release").join("quiesce-peer-axum");
    assert!(peer.is_file(), "no peer binary at {}", peer.display());
    println!("peer: {}", peer.display());
    peer
}

fn concurrencies() -> Vec<usize> {
    let spec = env::var("LOAD_PEER_CLIENTS").unwrap_or_else(|_| "32,128".into());
    spec.split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .map(|w| {
            w.parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .unwrap_or_else(|| panic!("LOAD_PEER_CLIENTS: {w:?} is not a count"))
        })
        .collect()
}

pub(crate) fn compare(bin: &Path, tmp: &TempDir, config: &Config) {
    let peer = build_peer(bin);
    let baseline = env::var_os("LOAD_BASELINE_BIN").map_or_else(PathBuf::new, PathBuf::from);
    assert!(
        baseline.as_os_str().is_empty() || baseline.is_file(),
        "LOAD_BASELINE_BIN: no binary at {}",
        baseline.display()
    );
    let levels = concurrencies();
    println!(
        "quiesce vs axum + tokio peer: {} round(s) of {} s per server at {:?} clients; load average {}",
        config.rounds,
        config.window.as_secs_f64(),
        levels,
        load_average()
    );
    let mut runs = Vec::new();
    for round in 0..config.rounds {
        for &clients in &levels {
            let mut order = servers();
            if round % 2 == 1 {
                order.reverse();
            }
            for server in order {
                let exe = match server {
                    Server::Quiesce => bin,
                    Server::Baseline => &baseline,
                    Server::Peer => &peer,
                };
                println!(
                    "[round {}/{}] {} at {clients} clients",
                    round + 1,
                    config.rounds,
                    server.name()
                );
                runs.push(run_one(exe, tmp, config, server, clients, round));
            }
        }
    }
    print_summary(&runs, &levels, config);
}

fn run_one(
    exe: &Path,
    tmp: &TempDir,
    config: &Config,
    server: Server,
    clients: usize,
    round: usize,
) -> Run {
    let tag = format!(
        "p{round}-{}-{clients}",
        match server {
            Server::Quiesce => "q",
            Server::Baseline => "b",
            Server::Peer => "a",
        }
    );
    let data = tmp.sub(&tag);
    // The connection cap (256 by default, past it an immediate 503) set
    // for the clients, as an operator expecting them would: the peer has
    // no cap. The other settings are the defaults.
    let cap = (clients + 64).max(256).to_string();
    let extra: &[&str] = if server.is_quiesce() {
        &["--max-connections", &cap]
    } else {
        &[]
    };
    let mut process = Sidecar::start(exe, &data, extra);
    let pid = process.pid.to_string();
    let quiesce = server.is_quiesce();
    let processed_now = || {
        metrics(process.addr)
            .unwrap_or_else(|e| panic!("GET /metrics: {e}"))
            .processed
    };
    let processed_0 = quiesce.then(processed_now);
    let machine_before = machine_cpu();
    let self_before = process_ticks("self");
    let threads_0 = thread_ticks(process.pid);
    let switches_0 = context_switches(process.pid);
    let t0 = process_ticks(&pid);
    let started = Instant::now();
    let (load, (t1, window, machine_after, self_after, at_end, threads)) =
        run_load(process.addr, clients, &tag, config.window, || {
            let t1 = process_ticks(&pid);
            let window = started.elapsed();
            let threads = (thread_ticks(process.pid), context_switches(process.pid));
            let machine_after = machine_cpu();
            let self_after = process_ticks("self");
            // None when every HTTP thread is taken by a client (quiesce at
            // more clients than --http-threads): then no processed/s and
            // backlog at the window's end.
            let at_end = if quiesce {
                metrics(process.addr).ok()
            } else {
                None
            };
            (t1, window, machine_after, self_after, at_end, threads)
        });
    let (threads_1, switches_1) = threads;
    let load_avg = load_average();
    let mut per_processed = None;
    let mut drained = false;
    if let Some(p0) = processed_0 {
        let drain_started = Instant::now();
        while drain_started.elapsed() < DRAIN_TIMEOUT {
            if metrics(process.addr).is_ok_and(|m| m.backlog <= 0.0) {
                drained = true;
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let t2 = process_ticks(&pid);
        let processed = processed_now() - p0;
        per_processed = Some((t2 - t0) as f64 * 1e6 / TICKS_PER_SECOND / processed);
    }
    let (took, status) = process.sigterm();
    check(server, clients, &data, &load, status, drained);
    let secs = window.as_secs_f64();
    let accepted = load.tally.accepted_us.len() as f64;
    let server_ticks = t1 - t0;
    let busy = machine_after.busy.saturating_sub(machine_before.busy);
    let run = Run {
        server,
        clients,
        rate: load.rate(),
        p50_ms: f64::from(load.latency(0.50)) / 1000.0,
        p99_ms: f64::from(load.latency(0.99)) / 1000.0,
        served: load.accepted.iter().filter(|a| !a.is_empty()).count(),
        per_accepted: server_ticks as f64 * 1e6 / TICKS_PER_SECOND / accepted,
        per_processed,
        processed_rate: match (&at_end, processed_0) {
            (Some(m), Some(p0)) => Some((m.processed - p0) / secs),
            _ => None,
        },
        backlog_at_end: at_end.as_ref().map(|m| m.backlog),
        server_cores: server_ticks as f64 / TICKS_PER_SECOND / secs,
        bench_cores: load.bench_cpu,
        others_cores: (busy as f64 - server_ticks as f64 - (self_after - self_before) as f64)
            / TICKS_PER_SECOND
            / secs,
        machine_busy: machine_after.busy_share(&machine_before),
        load_avg,
        by_thread: cpu_by_group(&threads_0, &threads_1, window)
            .into_iter()
            .map(|(group, cores)| (group, cores * secs * 1e6 / accepted))
            .collect(),
        switches: (
            switches_1.0.saturating_sub(switches_0.0) as f64 / accepted,
            switches_1.1.saturating_sub(switches_0.1) as f64 / accepted,
        ),
    };
    println!("      {}", load.line());
    println!(
        "      server {:.2} cores, {:.1} CPU µs per 202{}; load generator {:.2} cores; everything else {:.2}; machine busy {:.0}%; load average {}; {} of {clients} clients got a 202; exit {} after {:.0} ms",
        run.server_cores,
        run.per_accepted,
        match (run.per_processed, run.processed_rate, run.backlog_at_end) {
            (Some(pp), Some(pr), Some(b)) => format!(
                ", {pp:.1} per processed report (load start to drained backlog); processed {pr:.0}/s in the window, backlog at its end {b:.0}"
            ),
            _ => String::new(),
        },
        run.bench_cores,
        run.others_cores,
        100.0 * run.machine_busy,
        run.load_avg,
        run.served,
        exit_code(status),
        took.as_secs_f64() * 1000.0
    );
    println!("      {}", run.threads_line());
    run
}

impl Run {
    /// CPU µs per 202 by thread group, and context switches per 202.
    fn threads_line(&self) -> String {
        let groups: Vec<String> = self
            .by_thread
            .iter()
            .filter(|(_, us)| *us >= 0.05)
            .map(|(group, us)| format!("{group} {us:.1}"))
            .collect();
        format!(
            "CPU µs per 202 by thread: {}; context switches per 202: {:.2} voluntary, {:.2} involuntary",
            groups.join(", "),
            self.switches.0,
            self.switches.1
        )
    }
}

/// The run's promises (see the module's doc): panics when one is broken.
fn check(
    server: Server,
    clients: usize,
    data: &Path,
    load: &Load,
    status: ExitStatus,
    drained: bool,
) {
    let what = format!("{} at {clients} clients", server.name());
    let accepted = load.accepted_count() as u64;
    assert!(accepted > 0, "{what}: no report was answered 202");
    assert!(
        status.success(),
        "{what}: exit {} after SIGTERM",
        exit_code(status)
    );
    let file = data.join(match server {
        Server::Quiesce | Server::Baseline => "quiesce.db",
        Server::Peer => "peer.db",
    });
    let found = db::find(&file, load.accepted_ids())
        .unwrap_or_else(|e| panic!("{what}: cannot read {}: {e}", file.display()));
    assert_eq!(
        found.missing,
        0,
        "{what}: {} of {accepted} report(s) answered 202 are not in {}",
        found.missing,
        file.display()
    );
    if server.is_quiesce() && drained {
        assert_eq!(
            found.processed, accepted,
            "{what}: the backlog was drained, but of {accepted} report(s) answered 202 only {} are processed ({found:?})",
            found.processed
        );
    }
    println!(
        "      database: all {accepted} report(s) answered 202 are in {}{}",
        file.display(),
        if server.is_quiesce() && drained {
            ", processed"
        } else {
            ""
        }
    );
}

fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn print_summary(runs: &[Run], levels: &[usize], config: &Config) {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## quiesce vs axum + tokio peer: medians of {} round(s), {} s each\n",
        config.rounds,
        config.window.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "| server | clients | 202/s | CPU µs per 202 | CPU µs per processed report | processed/s (window) | backlog at end | p50 / p99 ms | clients served | server cores | load gen. cores | others cores | machine busy |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for &clients in levels {
        for server in servers() {
            let these: Vec<&Run> = runs
                .iter()
                .filter(|r| r.server == server && r.clients == clients)
                .collect();
            let m = |f: &dyn Fn(&Run) -> f64| median(these.iter().map(|r| f(r)).collect());
            let opt = |f: &dyn Fn(&Run) -> Option<f64>, digits: usize| {
                let v = median(these.iter().filter_map(|r| f(r)).collect());
                if v.is_nan() {
                    "—".to_string()
                } else {
                    format!("{v:.digits$}")
                }
            };
            let _ = writeln!(
                out,
                "| {} | {clients} | {:.0} | {:.1} | {} | {} | {} | {:.2} / {:.2} | {:.0} | {:.2} | {:.2} | {:.2} | {:.0}% |",
                server.name(),
                m(&|r| r.rate),
                m(&|r| r.per_accepted),
                opt(&|r| r.per_processed, 1),
                opt(&|r| r.processed_rate, 0),
                opt(&|r| r.backlog_at_end, 0),
                m(&|r| r.p50_ms),
                m(&|r| r.p99_ms),
                m(&|r| r.served as f64),
                m(&|r| r.server_cores),
                m(&|r| r.bench_cores),
                m(&|r| r.others_cores),
                100.0 * m(&|r| r.machine_busy),
            );
        }
    }
    let _ = writeln!(
        out,
        "\nEvery run (202/s, CPU µs per 202, per processed; load average after the window; by thread):"
    );
    for r in runs {
        let _ = writeln!(
            out,
            "- {} c={}: {:.0}/s, {:.1} µs/202, {} µs/processed; load {}; {}",
            r.server.name(),
            r.clients,
            r.rate,
            r.per_accepted,
            r.per_processed.map_or("—".into(), |v| format!("{v:.1}")),
            r.load_avg,
            r.threads_line()
        );
    }
    print!("{out}");
}
