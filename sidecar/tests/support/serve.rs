//! The server process: a running `quiesce serve` under a watchdog.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::WATCHDOG;
use super::http::{Conn, request};
use super::process::{Exit, assert_graceful};

/// A running `quiesce serve`, killed by its watchdog after [`WATCHDOG`] and
/// when dropped.
pub struct Serve {
    child: Arc<Mutex<Child>>,
    pid: u32,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    log: Arc<Mutex<String>>,
    log_reader: Option<JoinHandle<()>>,
    watchdog: Option<JoinHandle<()>>,
    watchdog_stop: Option<crossbeam_channel::Sender<()>>,
    fired: Arc<AtomicBool>,
    started: Instant,
    signalled: Option<Instant>,
    exit: Option<ExitStatus>,
}

impl Serve {
    /// Starts `quiesce serve --listen 127.0.0.1:0 --data-dir <data_dir>`
    /// plus `extra`, and waits until it has written its address.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Serve {
        let addr_file = data_dir.join("listen.addr");
        // A previous run's address must not be mistaken for this one's.
        let _ = std::fs::remove_file(&addr_file);
        let mut command = Command::new(env!("CARGO_BIN_EXE_quiesce"));
        command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env(
                "RUST_LOG",
                std::env::var("QUIESCE_TEST_LOG").unwrap_or_else(|_| "info".into()),
            );
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("QUIESCE_") {
                command.env_remove(key);
            }
        }
        let mut child = command.spawn().expect("start quiesce serve");
        let pid = child.id();
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let log_reader = {
            let log = log.clone();
            thread::Builder::new()
                .name(format!("serve-{pid}-log"))
                .spawn(move || {
                    for line in BufReader::new(stderr).lines() {
                        let Ok(line) = line else { break };
                        let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                        log.push_str(&line);
                        log.push('\n');
                    }
                })
                .expect("spawn the log reader")
        };
        let child = Arc::new(Mutex::new(child));
        let fired = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let (watchdog_stop, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let watchdog = {
            let (child, fired) = (child.clone(), fired.clone());
            thread::Builder::new()
                .name(format!("serve-{pid}-watchdog"))
                .spawn(move || {
                    loop {
                        match stop_rx.recv_timeout(Duration::from_millis(50)) {
                            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                            _ => return,
                        }
                        let mut child = child.lock().unwrap_or_else(|e| e.into_inner());
                        if !matches!(child.try_wait(), Ok(None)) {
                            return;
                        }
                        if started.elapsed() > WATCHDOG {
                            fired.store(true, Ordering::SeqCst);
                            let _ = child.kill();
                            return;
                        }
                    }
                })
                .expect("spawn the watchdog")
        };
        let mut serve = Serve {
            child,
            pid,
            addr: "127.0.0.1:1".parse().expect("an address"),
            data_dir: data_dir.to_path_buf(),
            log,
            log_reader: Some(log_reader),
            watchdog: Some(watchdog),
            watchdog_stop: Some(watchdog_stop),
            fired,
            started,
            signalled: None,
            exit: None,
        };
        loop {
            if let Ok(text) = std::fs::read_to_string(&addr_file) {
                if let Ok(addr) = text.trim().parse() {
                    serve.addr = addr;
                    break;
                }
            }
            if let Some(status) = serve.try_exit() {
                serve.fail(&format!("exited with {status} before listening"));
            }
            if started.elapsed() > WATCHDOG / 2 {
                serve.fail("never wrote listen.addr");
            }
            thread::sleep(Duration::from_millis(10));
        }
        // The address is written as intake starts, a moment before the
        // whole group is up: wait for /readyz.
        loop {
            let ready = Conn::open(serve.addr)
                .and_then(|mut c| c.send(&request("GET", "/readyz", &[], None, false)))
                .is_ok_and(|r| r.status == 200);
            if ready {
                return serve;
            }
            if let Some(status) = serve.try_exit() {
                serve.fail(&format!("exited with {status} before it was ready"));
            }
            if started.elapsed() > WATCHDOG / 2 {
                serve.fail("never ready");
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
            if let Ok(Some(status)) = child.try_wait() {
                self.exit = Some(status);
            }
        }
        self.exit
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.try_exit().is_none()
    }

    /// Sends `kill -<sig>` (`TERM`, `INT`, `KILL`) to the process, which
    /// must still be running (it cannot have been reaped meanwhile: only
    /// the holder of the lock reaps it).
    pub fn signal(&mut self, sig: &str) {
        let status = {
            let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
            if let Ok(Some(status)) = child.try_wait() {
                self.exit = Some(status);
                None
            } else {
                Some(
                    Command::new("kill")
                        .arg(format!("-{sig}"))
                        .arg(self.pid.to_string())
                        .status()
                        .expect("run kill"),
                )
            }
        };
        let Some(status) = status else {
            self.fail(&format!(
                "cannot send SIG{sig}: it already exited with {:?}",
                self.exit
            ));
        };
        assert!(status.success(), "kill -{sig} {} failed", self.pid);
        self.signalled = Some(Instant::now());
    }

    /// Waits for the exit, at most `limit` (and within the watchdog);
    /// kills the process and fails past it.
    pub fn wait_exit(&mut self, limit: Duration) -> Exit {
        let called = Instant::now();
        let give_up = (called + limit).min(self.started + WATCHDOG);
        let status = loop {
            if let Some(status) = self.try_exit() {
                break status;
            }
            if Instant::now() > give_up {
                self.fail(&format!(
                    "still running {:?} after the wait began",
                    called.elapsed()
                ));
            }
            thread::sleep(Duration::from_millis(5));
        };
        let elapsed = self.signalled.unwrap_or(called).elapsed();
        self.finish_threads();
        assert!(
            !self.fired.load(Ordering::SeqCst),
            "the watchdog killed the server after {WATCHDOG:?}\n{}",
            self.log()
        );
        Exit {
            status,
            elapsed,
            log: self.log(),
        }
    }

    /// SIGTERM, then the exit (within `limit`).
    pub fn terminate(&mut self, limit: Duration) -> Exit {
        self.signal("TERM");
        self.wait_exit(limit)
    }

    /// SIGTERM, and an exit 0 within `limit`.
    pub fn stop_ok(&mut self, limit: Duration) -> Exit {
        let exit = self.terminate(limit);
        assert_graceful(&exit);
        exit
    }

    /// SIGKILL, and its death.
    pub fn kill9(&mut self) -> Exit {
        self.signal("KILL");
        self.wait_exit(Duration::from_secs(20))
    }

    fn finish_threads(&mut self) {
        drop(self.watchdog_stop.take());
        if let Some(watchdog) = self.watchdog.take() {
            let _ = watchdog.join();
        }
        if let Some(reader) = self.log_reader.take() {
            let _ = reader.join();
        }
    }

    /// Kills the process and fails, with its log.
    pub fn fail(&mut self, why: &str) -> ! {
        {
            let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
            let _ = child.kill();
            let _ = child.wait();
        }
        self.finish_threads();
        panic!(
            "quiesce serve (pid {}): {why}; killed. Its log:\n{}",
            self.pid,
            self.log()
        );
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        {
            let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        self.finish_threads();
        if thread::panicking() {
            eprintln!(
                "--- log of quiesce serve (pid {}) ---\n{}",
                self.pid,
                self.log()
            );
        }
    }
}
