//! Processes of the binary: how one ended, and a run to its end.

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::WATCHDOG;

/// How a server process ended.
#[derive(Debug)]
pub struct Exit {
    pub status: ExitStatus,
    /// From the last signal sent (or from the call to wait, without one)
    /// to the exit being seen.
    pub elapsed: Duration,
    /// Everything it logged.
    pub log: String,
}

impl Exit {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// Asserts an exit after SIGTERM was graceful: exit code 0.
#[track_caller]
pub fn assert_graceful(exit: &Exit) {
    assert_eq!(
        exit.code(),
        Some(0),
        "a graceful stop exits 0; got {}\n{}",
        exit.status,
        exit.log
    );
}

/// Runs `quiesce <args>` to its end (killed, and the test failed, past
/// `limit`); returns its exit status and what it wrote to stderr.
pub fn run_to_exit(args: &[&str], limit: Duration) -> (ExitStatus, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_quiesce"));
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("QUIESCE_") {
            command.env_remove(key);
        }
    }
    let mut child = command.spawn().expect("start quiesce");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let give_up = Instant::now() + limit.min(WATCHDOG);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for quiesce") {
            break status;
        }
        if Instant::now() > give_up {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "quiesce {args:?} still running after {limit:?}; killed:\n{}",
                reader.join().unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(10));
    };
    (status, reader.join().unwrap_or_default())
}
