//! Load: clients posting unique reports and recording what each got.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::api::{post_request, report};
use super::http::{Conn, FailKind};

/// What one load client saw.
#[derive(Debug, Default)]
pub struct Load {
    /// Reports answered 202.
    pub accepted: Vec<String>,
    /// Reports answered 200 (duplicate).
    pub duplicates: Vec<String>,
    /// Reports answered 503.
    pub unavailable: Vec<String>,
    /// Reports answered anything else.
    pub other: Vec<(String, u16, String)>,
    /// Reports sent whose fate the client does not know (no answer).
    pub unknown: Vec<String>,
    /// Requests resent on a fresh connection after a reused keep-alive one
    /// closed before any byte of an answer.
    pub retried: usize,
    /// Requests that got no answer where one was owed: a fresh
    /// connection closed or reset after the request was sent, a partial
    /// answer, a timeout.
    pub violations: Vec<String>,
    /// 503 answers without Retry-After.
    pub missing_retry_after: usize,
    /// Fresh connections closed before any byte of an answer just as the
    /// listener closed (the next connection was refused): the kernel
    /// resets what is still in the listen queue of a closed listener.
    pub reset_at_close: usize,
    /// Requests sent (retries included).
    pub sent: usize,
    /// Whether the client stopped because a fresh connection was refused.
    pub refused: bool,
}

/// A client posting unique reports `{prefix}-{n}` on a keep-alive
/// connection until `stop` is set, a fresh connection is refused, or
/// `max` reports were tried. After a 503 it waits as Retry-After says (at
/// most a second) before the next report. A reused connection closed before any byte of
/// an answer is the HTTP/1.1 race: the request is resent on a fresh
/// connection (as Go's and curl's clients do). `strict`: any other
/// missing answer is a violation; otherwise (the server is being killed)
/// it is an unknown fate, and the client goes on with a fresh connection.
pub fn load_client(
    addr: SocketAddr,
    prefix: &str,
    stop: &AtomicBool,
    max: usize,
    give_up: Instant,
    strict: bool,
) -> Load {
    let mut load = Load::default();
    let mut conn: Option<Conn> = None;
    let mut n = 0usize;
    'reports: while n < max && !stop.load(Ordering::SeqCst) && Instant::now() < give_up {
        let id = format!("{prefix}-{n}");
        n += 1;
        let body = report(
            &id,
            &format!("P-{}", n % 37),
            &format!("site-{}", n % 4),
            &[("q1", (n % 5) as u8), ("q2", (n % 3) as u8), ("q3", 1)],
        )
        .to_string();
        let raw = post_request(body.as_bytes(), true);
        // Whether the request went out at least once (its fate is then
        // unknown unless answered).
        let mut sent_once = false;
        loop {
            let mut current = match conn.take() {
                Some(c) if !c.closed => c,
                _ => match Conn::open(addr) {
                    Ok(c) => c,
                    // Refused, or reset in the handshake as the listener
                    // closes: the server is gone.
                    Err(f) if f.kind == FailKind::Refused || f.detail.contains("reset") => {
                        if sent_once {
                            load.unknown.push(id.clone());
                        }
                        load.refused = true;
                        break 'reports;
                    }
                    Err(f) => {
                        if sent_once {
                            load.unknown.push(id.clone());
                        }
                        if strict {
                            load.violations.push(format!("{id}: connect: {f:?}"));
                        }
                        break 'reports;
                    }
                },
            };
            load.sent += 1;
            sent_once = true;
            let reused = current.reused();
            match current.send(&raw) {
                Ok(response) => {
                    match response.status {
                        202 => load.accepted.push(id.clone()),
                        200 => load.duplicates.push(id.clone()),
                        503 => {
                            // A well-behaved client honours Retry-After
                            // (here, at most a second) before it sends the
                            // next report.
                            match response.header("retry-after").map(str::parse::<u64>) {
                                Some(Ok(secs)) => thread::sleep(Duration::from_secs(secs.min(1))),
                                _ => load.missing_retry_after += 1,
                            }
                            load.unavailable.push(id.clone());
                        }
                        status => load.other.push((id.clone(), status, response.text())),
                    }
                    if !current.closed {
                        conn = Some(current);
                    }
                    continue 'reports;
                }
                Err(f) if reused && f.closed_before_answer() => {
                    load.retried += 1;
                    continue;
                }
                Err(f) if f.closed_before_answer() && gone(addr) => {
                    // A fresh connection still in the listen queue when the
                    // listener closed is reset by the kernel: the server is
                    // gone, as the next connection shows.
                    load.reset_at_close += 1;
                    load.unknown.push(id.clone());
                    load.refused = true;
                    break 'reports;
                }
                Err(f) => {
                    if strict {
                        load.violations.push(format!(
                            "{id}: {} connection: {f:?}",
                            if reused { "reused" } else { "fresh" }
                        ));
                    }
                    load.unknown.push(id.clone());
                    continue 'reports;
                }
            }
        }
    }
    load
}

/// Whether nobody listens at `addr` any more.
fn gone(addr: SocketAddr) -> bool {
    match Conn::open(addr) {
        Err(f) => f.kind == FailKind::Refused || f.detail.contains("reset"),
        Ok(_) => false,
    }
}

/// Runs `clients` load clients on threads; returns what each saw.
pub fn run_load(
    addr: SocketAddr,
    tag: &str,
    clients: usize,
    stop: &Arc<AtomicBool>,
    max_each: usize,
    give_up: Instant,
    strict: bool,
) -> Vec<JoinHandle<Load>> {
    (0..clients)
        .map(|i| {
            let stop = stop.clone();
            let prefix = format!("{tag}c{i}");
            thread::Builder::new()
                .name(prefix.clone())
                .spawn(move || load_client(addr, &prefix, &stop, max_each, give_up, strict))
                .expect("spawn a load client")
        })
        .collect()
}
