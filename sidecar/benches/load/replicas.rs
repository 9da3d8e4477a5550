//! SQLite vs PostgreSQL replicas (issue 11): the same load generator
//! against one `quiesce serve` on SQLite (the default), one replica on
//! PostgreSQL, and two replicas sharing one PostgreSQL database (the
//! clients split between them), in interleaved rounds.
//!
//! PostgreSQL is a real cluster, started once for the run the way the
//! tests start theirs (`tests/support/pg.rs`: `initdb` into a temporary
//! directory, as the `postgres` OS user when running as root, its own
//! port, the server's default durability: `fsync` and
//! `synchronous_commit` on), with a fresh database per target run
//! (dropped after it, which also makes the server checkpoint, so each run
//! starts from a similar state). The replicas connect over TCP on
//! 127.0.0.1 (as replicas on other nodes would, minus the network). The
//! cluster is stopped and removed at the end. Without server binaries the
//! PostgreSQL targets are skipped with a loud `SKIPPED:` line and SQLite
//! still runs.
//!
//! Each target run: start the server(s); for `LOAD_SECONDS` the clients
//! post (closed loop, `LOAD_CLIENTS` in all, client `i` to replica
//! `i % n`); then wait until the backlog is 0 on every replica; then
//! SIGTERM each and check the database. Measured:
//! - 202/s: the 202s answered within the window, over the window;
//! - quiesce CPU: utime + stime of the `quiesce` process(es)
//!   (`/proc/<pid>/stat`), over the window ÷ the 202s of the window
//!   (µs/accepted: intake, and whatever processing ran meanwhile), and
//!   from the start of the load to the drained backlog ÷ the reports
//!   processed in that time (µs/processed: every report accepted and
//!   processed, nothing left over);
//! - PostgreSQL CPU the same two ways, separately: the postmaster's own
//!   utime + stime, its reaped children's (cutime + cstime) and each living
//!   child's (backends, WAL writer, checkpointer, autovacuum...): the whole
//!   cluster, which serves only this bench;
//! - processed/s within the window (the `processed` counters of all
//!   replicas), the backlog at the end of the window, the time to drain it;
//! - the machine: its busy share, and the CPU used by everything else on it
//!   (machine busy time − quiesce − PostgreSQL − this process), in cores.
//!
//! The order of the targets rotates from one round to the next, so that
//! a drift of the machine's load does not always favour the same target;
//! the summary gives every run and the median of each target.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::client::{Load, run_load_split};
use crate::config::{Config, Target};
use crate::db;
use crate::http::{Metrics, metrics};
use crate::pg::{Cluster, Database, psql};
use crate::proc::{
    TICKS_PER_SECOND, cpu_by_group, format_groups, load_average, machine_cpu, process_ticks,
    process_tree_ticks, thread_ticks,
};
use crate::scenarios::DRAIN_TIMEOUT;
use crate::sidecar::{Sidecar, exit_code};
use crate::summary::commit_stats;
use crate::temp::TempDir;

/// One target run's figures.
pub(crate) struct Run {
    target: Target,
    round: usize,
    load: Load,
    /// Wall time of the window, as the CPU readings saw it.
    window: Duration,
    /// From the start of the load to the drained backlog.
    total: Duration,
    /// CPU ticks of the quiesce process(es): in the window, in total.
    quiesce_window: u64,
    quiesce_total: u64,
    /// CPU ticks of the PostgreSQL cluster (PostgreSQL targets only).
    pg_window: Option<u64>,
    pg_total: Option<u64>,
    /// Reports processed (all replicas): in the window, in total.
    processed_window: f64,
    processed_total: f64,
    backlog_at_end: f64,
    drained_in: Option<Duration>,
    /// Machine busy share in the window, and the CPU (cores) of everything
    /// else on the machine in it.
    machine_busy: f64,
    others_cores: f64,
}

impl Run {
    fn accepted(&self) -> f64 {
        self.load.tally.accepted_us.len() as f64
    }

    fn rate(&self) -> f64 {
        self.load.rate()
    }

    fn us_per(ticks: u64, n: f64) -> f64 {
        if n <= 0.0 {
            return f64::NAN;
        }
        ticks as f64 * 1e6 / TICKS_PER_SECOND / n
    }

    fn quiesce_per_accepted(&self) -> f64 {
        Run::us_per(self.quiesce_window, self.accepted())
    }

    fn pg_per_accepted(&self) -> Option<f64> {
        self.pg_window.map(|t| Run::us_per(t, self.accepted()))
    }

    fn processed_rate(&self) -> f64 {
        self.processed_window / self.window.as_secs_f64()
    }

    fn quiesce_per_processed(&self) -> f64 {
        Run::us_per(self.quiesce_total, self.processed_total)
    }

    fn pg_per_processed(&self) -> Option<f64> {
        self.pg_total.map(|t| Run::us_per(t, self.processed_total))
    }

    fn quiesce_cores(&self) -> f64 {
        self.quiesce_window as f64 / TICKS_PER_SECOND / self.window.as_secs_f64()
    }

    fn pg_cores(&self) -> Option<f64> {
        self.pg_window
            .map(|t| t as f64 / TICKS_PER_SECOND / self.window.as_secs_f64())
    }
}

/// The directory of the PostgreSQL server binaries, looked for as
/// `tests/support/pg.rs` does (`pg_config --bindir`, else
/// `/usr/lib/postgresql/*/bin`), but only to decide to skip: `pg.rs`
/// panics when `CI` is set and there are none, and a bench should not.
fn pg_server_available() -> bool {
    let has_server = |dir: &Path| dir.join("postgres").is_file() && dir.join("initdb").is_file();
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .is_some_and(|out| has_server(Path::new(String::from_utf8_lossy(&out.stdout).trim())));
    from_pg_config
        || std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .any(|entry| has_server(&entry.path().join("bin")))
}

/// Runs the comparison and prints its summary.
pub(crate) fn compare(bin: &Path, tmp: &TempDir, config: &Config) {
    let mut targets = config.replica_targets.clone();
    let wants_pg = targets.iter().any(|t| matches!(t, Target::Postgres(_)));
    let cluster = if wants_pg && pg_server_available() {
        let started = Instant::now();
        let cluster = Cluster::new();
        if let Some(cluster) = &cluster {
            println!(
                "PostgreSQL: a cluster of its own on 127.0.0.1:{}, started in {:.1} s (server defaults: fsync on, synchronous_commit on)",
                cluster.port(),
                started.elapsed().as_secs_f64()
            );
        }
        cluster
    } else {
        None
    };
    if wants_pg && cluster.is_none() {
        let skipped: Vec<String> = targets
            .iter()
            .filter(|t| matches!(t, Target::Postgres(_)))
            .map(|t| t.name())
            .collect();
        eprintln!(
            "SKIPPED: no PostgreSQL server binaries (neither `pg_config --bindir` nor \
             /usr/lib/postgresql/*/bin has `postgres` and `initdb`; install postgresql-15): \
             the targets {} do not run",
            skipped.join(", ")
        );
        println!(
            "SKIPPED: PostgreSQL targets {} (no server binaries)",
            skipped.join(", ")
        );
        targets.retain(|t| *t == Target::Sqlite);
    }
    if targets.is_empty() {
        return;
    }
    let load_before = load_average();
    let started = Instant::now();
    let mut runs = Vec::new();
    for round in 0..config.rounds {
        for i in 0..targets.len() {
            let target = targets[(i + round) % targets.len()];
            println!(
                "[replicas {}/{}] {}: {} s, {} clients, load average {}",
                round + 1,
                config.rounds,
                target.name(),
                config.window.as_secs_f64(),
                config.clients,
                load_average()
            );
            runs.push(run_target(
                bin,
                tmp,
                config,
                cluster.as_ref(),
                target,
                round,
            ));
        }
    }
    let load_after = load_average();
    drop(cluster);
    print_summary(
        config,
        &targets,
        &runs,
        &load_before,
        &load_after,
        started.elapsed(),
    );
}

fn run_target(
    bin: &Path,
    tmp: &TempDir,
    config: &Config,
    cluster: Option<&Cluster>,
    target: Target,
    round: usize,
) -> Run {
    let tag = format!("r{round}-{}", target.name());
    let mut sidecars = Vec::new();
    let mut data_dirs = Vec::new();
    let database: Option<Database> = match target {
        Target::Sqlite => {
            let data = tmp.sub(&tag);
            sidecars.push(Sidecar::start(bin, &data, &[]));
            data_dirs.push(data);
            None
        }
        Target::Postgres(n) => {
            let database = cluster.expect("a PostgreSQL cluster").database();
            let url = database.url();
            for i in 0..n {
                let data = tmp.sub(format!("{tag}-{i}"));
                let id = format!("bench-replica-{i}");
                sidecars.push(Sidecar::start(
                    bin,
                    &data,
                    &["--database-url", &url, "--replica-id", &id],
                ));
                data_dirs.push(data);
            }
            Some(database)
        }
    };
    let addrs: Vec<SocketAddr> = sidecars.iter().map(|s| s.addr).collect();
    let pids: Vec<u32> = sidecars.iter().map(|s| s.pid).collect();
    let quiesce_ticks = || -> u64 { pids.iter().map(|p| process_ticks(&p.to_string())).sum() };
    let pg_ticks = || -> Option<u64> {
        match target {
            Target::Sqlite => None,
            Target::Postgres(_) => cluster.and_then(Cluster::pid).map(process_tree_ticks),
        }
    };
    let all_metrics = |what: &str| -> Vec<Metrics> {
        addrs
            .iter()
            .map(|a| metrics(*a).unwrap_or_else(|e| panic!("GET /metrics {what}: {e}")))
            .collect()
    };

    let at_start = all_metrics("before the load");
    let threads_before: Vec<_> = pids.iter().map(|p| thread_ticks(*p)).collect();
    let machine_before = machine_cpu();
    let self_before = process_ticks("self");
    let (q0, p0) = (quiesce_ticks(), pg_ticks());
    let started = Instant::now();
    let (load, (q1, p1, window, machine_after, self_after, threads_after, at_end)) =
        run_load_split(&addrs, config.clients, &tag, config.window, || {
            let (q1, p1) = (quiesce_ticks(), pg_ticks());
            let window = started.elapsed();
            let machine_after = machine_cpu();
            let self_after = process_ticks("self");
            let threads: Vec<_> = pids.iter().map(|p| thread_ticks(*p)).collect();
            (
                q1,
                p1,
                window,
                machine_after,
                self_after,
                threads,
                all_metrics("at the end of the load"),
            )
        });
    // Until every replica sees a zero backlog (with PostgreSQL, each reads
    // the shared count).
    let drain_started = Instant::now();
    let mut drained_in = None;
    while drain_started.elapsed() < DRAIN_TIMEOUT {
        let backlog = addrs
            .iter()
            .map(|a| metrics(*a).map_or(f64::INFINITY, |m| m.backlog))
            .fold(0.0, f64::max);
        if backlog <= 0.0 {
            drained_in = Some(drain_started.elapsed());
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let (q2, p2) = (quiesce_ticks(), pg_ticks());
    let total = started.elapsed();
    let at_drained = all_metrics("after the drain");

    let sum = |ms: &[Metrics], f: fn(&Metrics) -> f64| ms.iter().map(f).sum::<f64>();
    let processed = |m: &Metrics| m.processed;
    let run = Run {
        target,
        round,
        window,
        total,
        quiesce_window: q1 - q0,
        quiesce_total: q2 - q0,
        pg_window: p1.zip(p0).map(|(b, a)| b.saturating_sub(a)),
        pg_total: p2.zip(p0).map(|(b, a)| b.saturating_sub(a)),
        processed_window: sum(&at_end, processed) - sum(&at_start, processed),
        processed_total: sum(&at_drained, processed) - sum(&at_start, processed),
        backlog_at_end: at_end.iter().map(|m| m.backlog).fold(0.0, f64::max),
        drained_in,
        machine_busy: machine_after.busy_share(&machine_before),
        others_cores: {
            let busy = machine_after.busy.saturating_sub(machine_before.busy);
            let ours = (q1 - q0)
                + p1.zip(p0).map_or(0, |(b, a)| b.saturating_sub(a))
                + (self_after - self_before);
            (busy as f64 - ours as f64) / TICKS_PER_SECOND / window.as_secs_f64()
        },
        load,
    };
    println!("      {}", run.load.line());
    for (i, (before, after)) in threads_before.iter().zip(&threads_after).enumerate() {
        println!(
            "      quiesce {i} (pid {}): {}; store {}",
            pids[i],
            format_groups(&cpu_by_group(before, after, window)),
            commit_stats(&at_start[i], &at_end[i], window.as_secs_f64())
        );
    }
    println!(
        "      quiesce {:.2} cores{}; load generator {:.2}; everything else {:.2}; machine busy {:.0}%",
        run.quiesce_cores(),
        run.pg_cores()
            .map_or(String::new(), |c| format!(", PostgreSQL {c:.2} cores")),
        run.load.bench_cpu,
        run.others_cores,
        100.0 * run.machine_busy
    );
    println!(
        "      processed {:.0}/s in the window; backlog at its end {:.0}; drained {}; CPU µs per report accepted {:.1} (PostgreSQL {}), per report processed {:.1} (PostgreSQL {})",
        run.processed_rate(),
        run.backlog_at_end,
        run.drained_in.map_or_else(
            || format!("NOT within {DRAIN_TIMEOUT:?}"),
            |d| format!("in {:.2} s", d.as_secs_f64())
        ),
        run.quiesce_per_accepted(),
        opt(run.pg_per_accepted()),
        run.quiesce_per_processed(),
        opt(run.pg_per_processed()),
    );

    let mut exits = Vec::new();
    for sidecar in &mut sidecars {
        let (_, status) = sidecar.sigterm();
        if !status.success() {
            println!(
                "      quiesce pid {} exited {}; its log:\n{}",
                sidecar.pid,
                exit_code(status),
                sidecar.log_tail()
            );
        }
        exits.push(exit_code(status));
    }
    let accepted = run.load.accepted_count();
    match &database {
        None => {
            let found = db::find(&data_dirs[0].join("quiesce.db"), run.load.accepted_ids())
                .expect("read the database after the run");
            println!(
                "      exit {}; of {accepted} 202s: {} processed, {} queued, {} failed, {} MISSING",
                exits.join(", "),
                found.processed,
                found.queued,
                found.failed,
                found.missing
            );
        }
        Some(database) => {
            let rows = database
                .query("SELECT status, COUNT(*) FROM reports GROUP BY status ORDER BY status");
            let in_db: Vec<String> = rows.iter().map(|r| r.join(": ")).collect();
            let stored: u64 = rows
                .iter()
                .filter_map(|r| r.get(1).and_then(|n| n.parse::<u64>().ok()))
                .sum();
            println!(
                "      exit {}; {accepted} 202s; in the database: {} ({})",
                exits.join(", "),
                in_db.join(", "),
                if stored >= accepted as u64 {
                    "every 202 can be there"
                } else {
                    "FEWER ROWS THAN 202s"
                }
            );
            // Also makes the server checkpoint: the next run starts clean.
            let port = cluster.expect("a PostgreSQL cluster").port();
            psql(
                &format!("postgresql://postgres@127.0.0.1:{port}/postgres"),
                &format!("DROP DATABASE {}", database.name()),
            );
        }
    }
    drop(sidecars);
    run
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "—".into(), |v| format!("{v:.1}"))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| !v.is_nan());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

fn print_summary(
    config: &Config,
    targets: &[Target],
    runs: &[Run],
    load_before: &str,
    load_after: &str,
    wall: Duration,
) {
    println!();
    println!(
        "## SQLite vs PostgreSQL replicas: {} clients, {} s per run, {} round(s), {:.0} s in all; load average {load_before} before, {load_after} after",
        config.clients,
        config.window.as_secs_f64(),
        config.rounds,
        wall.as_secs_f64()
    );
    println!();
    println!(
        "| target | clients | 202/s | quiesce CPU µs/accepted | PostgreSQL CPU µs/accepted | processed/s | backlog at end | drained in | quiesce CPU µs/processed | PostgreSQL CPU µs/processed | quiesce cores | PostgreSQL cores | load generator cores | other load, cores |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let clients = |t: Target| match t {
        Target::Sqlite | Target::Postgres(1) => config.clients.to_string(),
        Target::Postgres(n) => {
            let per: Vec<String> = (0..n)
                .map(|i| (config.clients / n + usize::from(i < config.clients % n)).to_string())
                .collect();
            format!("{} ({})", config.clients, per.join("+"))
        }
    };
    for &target in targets {
        let mine: Vec<&Run> = runs.iter().filter(|r| r.target == target).collect();
        let med = |f: &dyn Fn(&Run) -> f64| median(mine.iter().map(|r| f(r)).collect());
        let med_opt = |f: &dyn Fn(&Run) -> Option<f64>| {
            let values: Vec<f64> = mine.iter().filter_map(|r| f(r)).collect();
            (!values.is_empty()).then(|| median(values))
        };
        let drained = |r: &Run| r.drained_in.map_or(f64::NAN, |d| d.as_secs_f64());
        println!(
            "| **{} (median of {})** | {} | **{:.0}** | **{:.1}** | **{}** | {:.0} | {:.0} | {:.2} s | **{:.1}** | **{}** | {:.2} | {} | {:.2} | {:.2} |",
            target.name(),
            mine.len(),
            clients(target),
            med(&Run::rate),
            med(&Run::quiesce_per_accepted),
            opt(med_opt(&Run::pg_per_accepted)),
            med(&Run::processed_rate),
            med(&|r| r.backlog_at_end),
            med(&drained),
            med(&Run::quiesce_per_processed),
            opt(med_opt(&Run::pg_per_processed)),
            med(&Run::quiesce_cores),
            med_opt(&Run::pg_cores).map_or_else(|| "—".into(), |c| format!("{c:.2}")),
            med(&|r| r.load.bench_cpu),
            med(&|r| r.others_cores),
        );
        for r in &mine {
            println!(
                "| {} round {} | {} | {:.0} | {:.1} | {} | {:.0} | {:.0} | {} | {:.1} | {} | {:.2} | {} | {:.2} | {:.2} |",
                target.name(),
                r.round + 1,
                clients(target),
                r.rate(),
                r.quiesce_per_accepted(),
                opt(r.pg_per_accepted()),
                r.processed_rate(),
                r.backlog_at_end,
                r.drained_in
                    .map_or_else(|| "no".into(), |d| format!("{:.2} s", d.as_secs_f64())),
                r.quiesce_per_processed(),
                opt(r.pg_per_processed()),
                r.quiesce_cores(),
                r.pg_cores()
                    .map_or_else(|| "—".into(), |c| format!("{c:.2}")),
                r.load.bench_cpu,
                r.others_cores,
            );
        }
    }
    println!();
    println!(
        "202/s: 202s within the window over the window. CPU µs/accepted: CPU in the window ÷ 202s in the window. \
         CPU µs/processed: CPU from the start of the load to a zero backlog ÷ reports processed in that time \
         (everything accepted, then processed). PostgreSQL: the whole cluster (postmaster, its living and reaped children). \
         Other load: machine busy time in the window − quiesce − PostgreSQL − this process (load generator), in cores."
    );
    let total: f64 = runs.iter().map(|r| r.total.as_secs_f64()).sum();
    println!("Measured time (load + drain) in all: {total:.0} s.");
}
