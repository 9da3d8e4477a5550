//! The server process: a running `quiesce serve` under a watchdog, on
//! `127.0.0.1:0` with the data directory it is given.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use super::http::{Conn, request};
use super::process::{Exit, Process, WATCHDOG, assert_graceful, quiesce};

/// A running `quiesce serve`, killed by its watchdog after [`WATCHDOG`] and
/// when dropped (see [`Process`]).
pub struct Serve {
    process: Process,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
}

impl Serve {
    /// Starts `quiesce serve --listen 127.0.0.1:0 --data-dir <data_dir>`
    /// plus `extra`, and waits until it has written its address.
    #[track_caller]
    pub fn start(data_dir: &Path, extra: &[&str]) -> Serve {
        Serve::start_probed(data_dir, extra, &|addr| {
            Conn::open(addr)
                .and_then(|mut c| c.send(&request("GET", "/readyz", &[], None, false)))
                .is_ok_and(|r| r.status == 200)
        })
    }

    /// [`Serve::start`], with `ready` saying when the server at an address
    /// is ready (over TLS, say).
    #[track_caller]
    pub fn start_probed(
        data_dir: &Path,
        extra: &[&str],
        ready: &dyn Fn(SocketAddr) -> bool,
    ) -> Serve {
        let addr_file = data_dir.join("listen.addr");
        // A previous run's address must not be mistaken for this one's.
        let _ = std::fs::remove_file(&addr_file);
        let mut command = quiesce(&["serve"]);
        command
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env(
                "RUST_LOG",
                std::env::var("QUIESCE_TEST_LOG").unwrap_or_else(|_| "info".into()),
            );
        let mut serve = Serve {
            process: Process::start(command),
            addr: "127.0.0.1:1".parse().expect("an address"),
            data_dir: data_dir.to_path_buf(),
        };
        let started = serve.process.started();
        loop {
            if let Ok(text) = std::fs::read_to_string(&addr_file)
                && let Ok(addr) = text.trim().parse()
            {
                serve.addr = addr;
                break;
            }
            if let Some(status) = serve.process.try_exit() {
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
            if ready(serve.addr) {
                return serve;
            }
            if let Some(status) = serve.process.try_exit() {
                serve.fail(&format!("exited with {status} before it was ready"));
            }
            if started.elapsed() > WATCHDOG / 2 {
                serve.fail("never ready");
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.process.running()
    }

    /// Sends `kill -<sig>` (`TERM`, `INT`, `KILL`) to the process, which
    /// must still be running.
    #[track_caller]
    pub fn signal(&mut self, sig: &str) {
        self.process.signal(sig);
    }

    /// Waits for the exit, at most `limit` (and within the watchdog);
    /// kills the process and fails past it.
    #[track_caller]
    pub fn wait_exit(&mut self, limit: Duration) -> Exit {
        self.process.wait_exit(limit)
    }

    /// SIGTERM, then the exit (within `limit`).
    #[track_caller]
    pub fn terminate(&mut self, limit: Duration) -> Exit {
        self.signal("TERM");
        self.wait_exit(limit)
    }

    /// SIGTERM, and an exit 0 within `limit`.
    #[track_caller]
    pub fn stop_ok(&mut self, limit: Duration) -> Exit {
        let exit = self.terminate(limit);
        assert_graceful(&exit);
        exit
    }

    /// SIGKILL, and its death.
    #[track_caller]
    pub fn kill9(&mut self) -> Exit {
        self.signal("KILL");
        self.wait_exit(Duration::from_secs(20))
    }

    /// Kills the process and fails, with its log.
    #[track_caller]
    pub fn fail(&mut self, why: &str) -> ! {
        self.process.fail(why)
    }
}
