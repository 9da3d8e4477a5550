//! The summary: one markdown table of every figure, with the goals.

use std::thread;
use std::time::Duration;

use crate::config::Config;
use crate::http::Metrics;
use crate::proc::format_groups;
use crate::scenarios::{Backlog, BareRun, DRAIN_TIMEOUT, Idle, MainRun, UnderLoad};
use crate::sidecar::exit_code;

/// The largest RSS still "bounded" with the big backlog (the issue says
/// tens of MB).
pub(crate) const RSS_BOUND_KB: u64 = 100 * 1024;

/// Store commits between two readings of the metrics.
pub(crate) fn commit_stats(before: &Metrics, after: &Metrics, secs: f64) -> String {
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
pub(crate) fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Microseconds as milliseconds.
pub(crate) fn ms(us: u32) -> String {
    format!("{:.2} ms", f64::from(us) / 1000.0)
}

pub(crate) fn ms_of(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

pub(crate) fn mb(kb: u64) -> String {
    format!("{:.1} MiB", kb as f64 / 1024.0)
}

pub(crate) fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

pub(crate) struct Summary<'a> {
    pub(crate) config: &'a Config,
    pub(crate) fsync: &'a [u32],
    pub(crate) bare: &'a BareRun,
    pub(crate) main: &'a MainRun,
    pub(crate) under_load: &'a UnderLoad,
    pub(crate) idle: &'a Idle,
    pub(crate) backlog: &'a Backlog,
    pub(crate) load_before: String,
    pub(crate) load_after: String,
    pub(crate) machine_busy: f64,
    pub(crate) wall: Duration,
}

impl Summary<'_> {
    pub(crate) fn print(&self) {
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
