//! Load benchmark of `quiesce serve` (issue 5, "Performance"): durable
//! intake throughput against a bare HTTP server measured by the same load
//! generator in the same run, latency, peak memory, whether processing keeps
//! pace with intake, memory with a backlog of 1,000,000 reports, and
//! SIGTERM-to-exit time idle and under load.
//!
//! ```text
//! CARGO_TARGET_DIR=target/load cargo bench --bench load   # 30 s per target: 2-3 minutes, plus the builds
//! LOAD_SECONDS=5 cargo bench --bench load                 # a quick run
//! LOAD_SECONDS=5 LOAD_TARGETS=replicas cargo bench -p quiesce-sidecar --bench load
//!                     # only the comparison of SQLite and PostgreSQL replicas (issue 11)
//! LOAD_SECONDS=15 LOAD_ROUNDS=3 LOAD_TARGETS=peers cargo bench -p quiesce-sidecar --bench load
//!                     # only quiesce vs the axum + tokio peer (issue 14), at LOAD_PEER_CLIENTS
//!                     # (32,128); builds the peer package peers/axum first
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
//! (`<target dir>/tmp/load-<pid>-…/`, on the target dir's disk, so fsyncs are
//! real fsyncs) and are removed at the end (`LOAD_KEEP=1` keeps them, with
//! each sidecar's log).
//!
//! Knobs (environment): `LOAD_SECONDS` (30; fractions allowed), `LOAD_CLIENTS`
//! (32), `LOAD_BACKLOG` (1000000), `LOAD_BACKLOG_SECONDS` (20),
//! `LOAD_IDLE_ROUNDS` (5), `LOAD_ROUNDS` (3, of the replica comparison),
//! `LOAD_TARGETS` (`all`): what runs, a comma-separated list of `intake`
//! (the five runs below), `replicas` (the comparison of SQLite and
//! PostgreSQL replicas, see `replicas.rs`; it needs the PostgreSQL server
//! binaries, else its PostgreSQL targets are skipped loudly), or single
//! targets of that comparison, `sqlite`, `pg-1`, `pg-2`; `all` is
//! `intake,replicas`; `peers` (quiesce vs an axum + tokio peer, issue 14,
//! see `peers.rs`; `LOAD_PEER_CLIENTS`, default `32,128`) only when named.
//!
//! What `intake` measures, in this order:
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
//!
//! One idea per file: `config` (knobs, the data directory, the binary),
//! `sidecar` (the process, SIGTERM), `proc` (/proc readings and the
//! sampler), `http` (one message reader for both sides, `/metrics`),
//! `bare` (the bare server), `client` (the load generator), `scenarios`
//! (the five runs and the disk probe), `db` (the database check and fill),
//! `summary` (the table), `replicas` (the comparison of SQLite and
//! PostgreSQL replicas, with its own table), `peers` (quiesce vs the axum +
//! tokio peer of `peers/axum/`, with its own table). `temp`, `process` and `pg` are
//! the tests' harness files (`tests/support/`), included for `TempDir`,
//! `send_signal` and the PostgreSQL cluster.

// The tests' harness: one TempDir and one kill(1) for tests and benches.
#[allow(dead_code)]
#[path = "../../tests/support/process.rs"]
mod process;
#[allow(dead_code)]
#[path = "../../tests/support/temp.rs"]
mod temp;
// The tests' PostgreSQL cluster (initdb in a temporary directory, its own
// port, stopped and removed at the end), for the replica comparison.
#[allow(dead_code)]
#[path = "../../tests/support/pg.rs"]
mod pg;

mod bare;
mod client;
mod config;
mod db;
mod http;
mod peers;
mod proc;
mod replicas;
mod scenarios;
mod sidecar;
mod summary;

use std::path::Path;
use std::thread;
use std::time::Instant;

use config::{Config, build_sidecar, data_dir, source_version};
use proc::{load_average, machine_cpu};
use scenarios::{
    backlog_run, bare_run, fsync_probe, sidecar_run, sigterm_idle, sigterm_under_load,
};
use summary::{Summary, ms, ms_of, percentile};
use temp::TempDir;

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
    let tmp = data_dir();
    println!("data under {}", tmp.path().display());
    if config.intake {
        intake(&bin, &tmp, &config);
    }
    if !config.replica_targets.is_empty() {
        replicas::compare(&bin, &tmp, &config);
    }
    if config.peers {
        peers::compare(&bin, &tmp, &config);
    }
}

/// The five runs of issue 5 and their summary (`LOAD_TARGETS` `intake`).
fn intake(bin: &Path, tmp: &TempDir, config: &Config) {
    let machine_before = machine_cpu();
    let load_before = load_average();
    let bench_started = Instant::now();

    let fsync = fsync_probe(tmp.path(), 200);
    println!(
        "[0/5] disk: one 4 KiB overwrite + fdatasync: p50 {}, p99 {}",
        ms(percentile(&fsync, 0.50)),
        ms(percentile(&fsync, 0.99))
    );

    println!("[1/5] bare server: {} s", config.window.as_secs_f64());
    let bare = bare_run(config);
    println!("      {}", bare.load.line());

    println!("[2/5] sidecar: {} s", config.window.as_secs_f64());
    let main_run = sidecar_run(bin, tmp, config);
    println!("      {}", main_run.load.line());

    println!(
        "[3/5] SIGTERM under load (after {} s of load)",
        config.sigterm_after.as_secs_f64()
    );
    let under_load = sigterm_under_load(bin, tmp, config);
    println!(
        "      exit {} after {}",
        under_load.status,
        ms_of(under_load.took)
    );

    println!(
        "[4/5] SIGTERM idle: {} fresh sidecar(s)",
        config.idle_rounds
    );
    let idle = sigterm_idle(bin, tmp, config);

    println!(
        "[5/5] backlog: {} queued reports, {} s with --workers 2",
        config.backlog_reports,
        config.backlog_window.as_secs_f64()
    );
    let backlog = backlog_run(bin, tmp, config);

    let machine_after = machine_cpu();
    let summary = Summary {
        config,
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
