//! /proc: memory and CPU of the sidecar, its threads and the machine, and
//! the sampler that reads them during a run.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::client::SetOnDrop;
use crate::http::{Metrics, metrics};

/// Linux `USER_HZ`: the unit of CPU times in `/proc/*/stat`.
pub(crate) const TICKS_PER_SECOND: f64 = 100.0;

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`).
pub(crate) fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// A `stat` line's thread name and user + system CPU ticks.
pub(crate) fn parse_stat(text: &str) -> Option<(String, u64)> {
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
pub(crate) fn process_ticks(pid: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|t| parse_stat(&t))
        .map_or(0, |(_, ticks)| ticks)
}

/// The fields of a `stat` line after the name: `[0]` is field 3 (state),
/// `[1]` the ppid, `[11..=14]` utime, stime, cutime, cstime.
fn stat_fields(text: &str) -> Vec<u64> {
    let Some(close) = text.rfind(')') else {
        return Vec::new();
    };
    text[close + 1..]
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect()
}

/// CPU ticks of a process and of all its children, living or gone: its
/// own utime + stime, its cutime + cstime (the children it has reaped,
/// e.g. PostgreSQL backends that ended), and the utime + stime of each
/// living child (any process whose ppid is `pid`). Grandchildren are not
/// looked for (a postmaster's processes are all its children).
pub(crate) fn process_tree_ticks(pid: u32) -> u64 {
    let own = fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_or_else(|_| Vec::new(), |t| stat_fields(&t));
    let mut ticks: u64 = own.get(11..15).map_or(0, |f| f.iter().sum());
    let Ok(entries) = fs::read_dir("/proc") else {
        return ticks;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(child) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if child == pid {
            continue;
        }
        let Ok(text) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let fields = stat_fields(&text);
        if fields.get(1).is_some_and(|&ppid| ppid == u64::from(pid)) {
            ticks += fields.get(11..13).map_or(0, |f| f.iter().sum::<u64>());
        }
    }
    ticks
}

/// CPU ticks of each thread of `pid`, by thread id.
pub(crate) fn thread_ticks(pid: u32) -> HashMap<String, (String, u64)> {
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

/// Context switches of a process so far, summed over its threads (living
/// ones: a thread that ended took its count with it): voluntary (the
/// thread blocked: a wait, a sleep, I/O) and involuntary (the scheduler
/// took the core from it).
pub(crate) fn context_switches(pid: u32) -> (u64, u64) {
    let mut total = (0, 0);
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return total;
    };
    for entry in entries.flatten() {
        let Ok(status) = fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|rest| rest.trim().parse().ok())
                .unwrap_or(0)
        };
        total.0 += field("voluntary_ctxt_switches");
        total.1 += field("nonvoluntary_ctxt_switches");
    }
    total
}

/// CPU used between two `thread_ticks`, in cores (CPU seconds per second),
/// by thread group (`http-3` and `http-17` are `http-*`), largest first.
pub(crate) fn cpu_by_group(
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

pub(crate) fn format_groups(groups: &[(String, f64)]) -> String {
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
pub(crate) struct MachineCpu {
    pub(crate) busy: u64,
    pub(crate) total: u64,
}

impl MachineCpu {
    pub(crate) fn busy_share(&self, before: &MachineCpu) -> f64 {
        let total = self.total.saturating_sub(before.total).max(1);
        self.busy.saturating_sub(before.busy) as f64 / total as f64
    }
}

pub(crate) fn machine_cpu() -> MachineCpu {
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

pub(crate) fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// What the sampler saw.
#[derive(Default)]
pub(crate) struct Samples {
    pub(crate) peak_rss_kb: u64,
    pub(crate) hwm_kb: u64,
    /// Seconds since the start, and the metrics then (every second).
    pub(crate) series: Vec<(f64, Metrics)>,
}

impl Samples {
    pub(crate) fn peak_kb(&self) -> u64 {
        self.peak_rss_kb.max(self.hwm_kb)
    }

    /// The backlog every `every` seconds.
    pub(crate) fn backlog_series(&self, every: f64) -> String {
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
pub(crate) fn sampled<R>(
    pid: u32,
    addr: Option<SocketAddr>,
    body: impl FnOnce() -> R,
) -> (Samples, R) {
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
                    if let Some(addr) = addr
                        && Instant::now() >= next_metrics
                    {
                        if let Ok(m) = metrics(addr) {
                            samples.series.push((started.elapsed().as_secs_f64(), m));
                        }
                        next_metrics += Duration::from_secs(1);
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
