//! The load generator: closed-loop clients on keep-alive connections.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::http::{connect, read_message, status_of};
use crate::proc::{TICKS_PER_SECOND, process_ticks};
use crate::summary::{ms, percentile};

/// What some requests got.
#[derive(Default)]
pub(crate) struct Tally {
    /// Latency of each 202, in microseconds.
    pub(crate) accepted_us: Vec<u32>,
    /// Other answers, by status.
    pub(crate) statuses: BTreeMap<u16, u64>,
    /// Failures without an answer, by kind (`read: ConnectionReset`).
    pub(crate) errors: BTreeMap<String, u64>,
}

impl Tally {
    pub(crate) fn error(&mut self, kind: String) {
        *self.errors.entry(kind).or_default() += 1;
    }

    pub(crate) fn merge(&mut self, other: Tally) {
        self.accepted_us.extend(other.accepted_us);
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
    }

    pub(crate) fn describe(&self) -> String {
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
pub(crate) struct ClientOutcome {
    /// Requests that ended within the window.
    pub(crate) window: Tally,
    /// Requests that ended after it.
    pub(crate) after: Tally,
    /// Sequence numbers of the reports that got a 202 (any time).
    pub(crate) accepted: Vec<u64>,
}

/// A load run's results.
pub(crate) struct Load {
    pub(crate) tag: String,
    pub(crate) window: Duration,
    /// Within the window; latencies sorted.
    pub(crate) tally: Tally,
    /// After it (a SIGTERM, or requests in flight when the window closed).
    pub(crate) after: Tally,
    /// Per client, sequence numbers that got a 202.
    pub(crate) accepted: Vec<Vec<u64>>,
    /// CPU this process used during the window, in cores.
    pub(crate) bench_cpu: f64,
}

impl Load {
    pub(crate) fn rate(&self) -> f64 {
        self.tally.accepted_us.len() as f64 / self.window.as_secs_f64()
    }

    pub(crate) fn latency(&self, p: f64) -> u32 {
        percentile(&self.tally.accepted_us, p)
    }

    pub(crate) fn latencies(&self) -> String {
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

    pub(crate) fn line(&self) -> String {
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
    pub(crate) fn accepted_ids(&self) -> impl Iterator<Item = String> + '_ {
        self.accepted
            .iter()
            .enumerate()
            .flat_map(move |(c, seqs)| seqs.iter().map(move |seq| report_id(&self.tag, c, *seq)))
    }

    pub(crate) fn accepted_count(&self) -> usize {
        self.accepted.iter().map(Vec::len).sum()
    }
}

pub(crate) fn report_id(tag: &str, client: usize, seq: u64) -> String {
    format!("{tag}-c{client}-{seq}")
}

/// Writes a `POST /v1/reports` with a unique, valid report into `out`.
pub(crate) fn build_request(out: &mut Vec<u8>, tag: &str, client: usize, seq: u64) {
    let mut answers = String::with_capacity(64);
    for item in 1..=9u64 {
        let value = (seq.wrapping_mul(item + 2) + client as u64 + item) % 5;
        if item > 1 {
            answers.push(',');
        }
        answers.push_str(&format!("\"q{item}\":{value}"));
    }
    let body = format!(
        r#"{{"report_id":"{}","patient_id":"P-{client}-{}","site_id":"site-{}","instrument":"daily-diary","submitted_at":"2026-01-15T09:30:00Z","answers":{{{answers}}}}}"#,
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

pub(crate) fn client(
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
pub(crate) struct SetOnDrop<'a>(pub(crate) &'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Runs `clients` clients against `addr`; at the end of `window`, runs
/// `at_window_end` while they go on posting, then stops them.
pub(crate) fn run_load<R>(
    addr: SocketAddr,
    clients: usize,
    tag: &str,
    window: Duration,
    at_window_end: impl FnOnce() -> R,
) -> (Load, R) {
    run_load_split(&[addr], clients, tag, window, at_window_end)
}

/// [`run_load`] with the clients split across `addrs`: client `i` posts
/// to `addrs[i % addrs.len()]` (one load generator for several replicas).
pub(crate) fn run_load_split<R>(
    addrs: &[SocketAddr],
    clients: usize,
    tag: &str,
    window: Duration,
    at_window_end: impl FnOnce() -> R,
) -> (Load, R) {
    assert!(!addrs.is_empty(), "run_load_split: no address");
    let stop = AtomicBool::new(false);
    let cpu_before = process_ticks("self");
    let started = Instant::now();
    let window_end = started + window;
    thread::scope(|s| {
        let stop_guard = SetOnDrop(&stop);
        let handles: Vec<_> = (0..clients)
            .map(|i| {
                let stop = &stop;
                let addr = addrs[i % addrs.len()];
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
