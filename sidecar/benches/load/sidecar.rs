//! The sidecar process: `quiesce serve` started, signalled, waited for.

use std::fs::{self, File};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::proc::proc_status_kb;
use crate::process::send_signal;

/// How long a sidecar may take to write its `listen.addr`.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a sidecar may take to exit after SIGTERM (its own deadline is
/// 25 s).
pub(crate) const EXIT_TIMEOUT: Duration = Duration::from_secs(40);

/// A running `quiesce serve`; killed when dropped if it still runs.
pub(crate) struct Sidecar {
    pub(crate) child: Child,
    pub(crate) pid: u32,
    pub(crate) addr: SocketAddr,
    pub(crate) log: PathBuf,
    /// From spawn to `listen.addr` written (every service up).
    pub(crate) started_in: Duration,
    /// VmRSS once listening.
    pub(crate) rss_at_start_kb: u64,
}

impl Sidecar {
    pub(crate) fn start(bin: &Path, data_dir: &Path, extra: &[&str]) -> Sidecar {
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
            if let Ok(text) = fs::read_to_string(&addr_file)
                && let Ok(addr) = text.trim().parse()
            {
                sidecar.addr = addr;
                break;
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
    pub(crate) fn sigterm(&mut self) -> (Duration, ExitStatus) {
        let sent = Instant::now();
        send_signal(self.pid, "TERM");
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

    pub(crate) fn log_tail(&self) -> String {
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

/// The time `send_signal` itself takes (spawning `kill -0`).
pub(crate) fn kill_spawn_time(pid: u32) -> Duration {
    let started = Instant::now();
    send_signal(pid, "0");
    started.elapsed()
}

pub(crate) fn exit_code(status: ExitStatus) -> String {
    status
        .code()
        .map_or_else(|| status.to_string(), |c| c.to_string())
}
