//! The runs: bare, sidecar, SIGTERM under load and idle, the big backlog,
//! and the disk's flush time.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
use std::process::ExitStatus;
use std::thread;
use std::time::{Duration, Instant};

use crate::bare::BareServer;
use crate::client::{Load, run_load};
use crate::config::Config;
use crate::db::{self, Found};
use crate::http::{Metrics, metrics};
use crate::proc::{Samples, cpu_by_group, sampled, thread_ticks};
use crate::sidecar::{Sidecar, exit_code, kill_spawn_time};
use crate::summary::ms_of;
use crate::temp::TempDir;

/// How long to wait for the backlog to reach 0 after the load.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);

pub(crate) struct BareRun {
    pub(crate) load: Load,
}

pub(crate) fn bare_run(config: &Config) -> BareRun {
    let mut server = BareServer::start();
    let (load, ()) = run_load(server.addr, config.clients, "bare", config.window, || ());
    server.stop();
    BareRun { load }
}

pub(crate) struct MainRun {
    pub(crate) load: Load,
    pub(crate) samples: Samples,
    pub(crate) rss_at_start_kb: u64,
    /// Sidecar CPU during the window, by thread group.
    pub(crate) cpu: Vec<(String, f64)>,
    /// Metrics when the load started and when it ended.
    pub(crate) at_start: Metrics,
    pub(crate) at_end: Metrics,
    /// Time from the end of the load to a zero backlog.
    pub(crate) drained_in: Option<Duration>,
    pub(crate) exit_took: Duration,
    pub(crate) exit: ExitStatus,
    pub(crate) found: Found,
}

pub(crate) fn sidecar_run(bin: &Path, tmp: &TempDir, config: &Config) -> MainRun {
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

pub(crate) struct UnderLoad {
    pub(crate) load: Load,
    pub(crate) took: Duration,
    pub(crate) status: String,
    pub(crate) found: Found,
}

pub(crate) fn sigterm_under_load(bin: &Path, tmp: &TempDir, config: &Config) -> UnderLoad {
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

pub(crate) struct Idle {
    /// Each round's SIGTERM-to-exit time and exit code.
    pub(crate) rounds: Vec<(Duration, String)>,
    /// Each round's `kill -0` time.
    pub(crate) kill_spawn: Vec<Duration>,
    pub(crate) started_in: Vec<Duration>,
}

pub(crate) fn sigterm_idle(bin: &Path, tmp: &TempDir, config: &Config) -> Idle {
    let mut idle = Idle {
        rounds: Vec::new(),
        kill_spawn: Vec::new(),
        started_in: Vec::new(),
    };
    for round in 0..config.idle_rounds {
        let data = tmp.sub(format!("idle-{round}"));
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

pub(crate) struct Backlog {
    pub(crate) reports: u64,
    pub(crate) fill_took: Duration,
    pub(crate) started_in: Duration,
    pub(crate) rss_at_start_kb: u64,
    pub(crate) samples: Samples,
    pub(crate) window: Duration,
    pub(crate) before: Metrics,
    pub(crate) after: Metrics,
    pub(crate) cpu: Vec<(String, f64)>,
    pub(crate) exit_took: Duration,
    pub(crate) exit: String,
}

pub(crate) fn backlog_run(bin: &Path, tmp: &TempDir, config: &Config) -> Backlog {
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
pub(crate) fn fsync_probe(dir: &Path, n: usize) -> Vec<u32> {
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
