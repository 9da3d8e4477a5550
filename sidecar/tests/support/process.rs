//! Processes of the binary under a watchdog: start `quiesce <subcommand>`
//! with a clean environment, read its stderr as it comes, send it real
//! signals with `kill`, wait for its exit and say how it ended.
//!
//! Threads: a [`Process`] owns two or three of its own — one reads stderr
//! line by line into the log (and wakes [`Process::wait_for_line`]), one
//! reads stdout to its end when it is piped, and the watchdog kills the
//! child once it has run [`WATCHDOG`]. All are joined when the exit is
//! seen, on [`Process::fail`], and on drop.
//!
//! Invariants:
//! 1. The child is reaped only by a holder of its lock (`try_wait`,
//!    `wait`), so a pid checked as running under the lock is still this
//!    child's when `kill` is sent under the same lock.
//! 2. Dropping a `Process` kills the child if it still runs, reaps it and
//!    joins every thread; on a panic it prints the child's log.
//! 3. The stderr reader appends each line, and sets `ended` after the
//!    last, under the log's lock and then notifies; a waiter checks both
//!    under that lock before it sleeps, so no line and no end is missed.
//!
//! Self-contained (std and crossbeam-channel only), so that the benches
//! can include it with `#[path]`.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// A process still running this long after its start is killed and the
/// test fails.
pub const WATCHDOG: Duration = Duration::from_secs(60);

/// `quiesce <args>` with nothing on stdin and stdout, stderr piped, and no
/// `QUIESCE_*` variable of the caller's environment (a test sets the ones
/// it means).
pub fn quiesce(args: &[&str]) -> Command {
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
    command
}

/// Sends `kill -<sig> <pid>` (`TERM`, `INT`, `KILL`, `0`), with `kill(1)`:
/// no `unsafe` in the tests.
#[track_caller]
pub fn send_signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap_or_else(|e| panic!("cannot run kill(1): {e}"));
    assert!(status.success(), "kill -{sig} {pid}: {status}");
}

/// How a process ended.
#[derive(Debug)]
pub struct Exit {
    pub status: ExitStatus,
    /// From the last signal sent (or from the call to wait, without one)
    /// to the exit being seen.
    pub elapsed: Duration,
    /// Everything it wrote to stderr (its log).
    pub log: String,
    /// Everything it wrote to stdout, when that was piped.
    pub stdout: String,
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

/// Runs `quiesce <args>` to its end (30 s at most): its status, its
/// standard output and its log (standard error).
pub fn cli(args: &[&str]) -> (ExitStatus, String, String) {
    let mut command = quiesce(args);
    command.stdout(std::process::Stdio::piped());
    let exit = Process::start(command).wait_exit(Duration::from_secs(30));
    (exit.status, exit.stdout, exit.log)
}

/// Runs `quiesce <args>` to its end (killed, and the test failed, past
/// `limit`); returns its exit status and what it wrote to stderr.
pub fn run_to_exit(args: &[&str], limit: Duration) -> (ExitStatus, String) {
    let exit = Process::start(quiesce(args)).wait_exit(limit);
    (exit.status, exit.log)
}

/// The stderr lines read so far, and whether the stream has ended.
#[derive(Default)]
struct Log {
    lines: Vec<String>,
    ended: bool,
}

/// A running child process, killed by its watchdog after [`WATCHDOG`] and
/// when dropped.
pub struct Process {
    /// `quiesce <subcommand>`, for messages.
    what: String,
    /// Inv. 1: reaped only under this lock.
    child: Arc<Mutex<Child>>,
    pid: u32,
    log: Arc<(Mutex<Log>, Condvar)>,
    /// The first line [`Process::wait_for_line`] has not looked at yet.
    cursor: usize,
    log_reader: Option<JoinHandle<()>>,
    stdout_reader: Option<JoinHandle<String>>,
    watchdog: Option<JoinHandle<()>>,
    watchdog_stop: Option<crossbeam_channel::Sender<()>>,
    fired: Arc<AtomicBool>,
    started: Instant,
    signalled: Option<Instant>,
    exit: Option<ExitStatus>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Process {
    /// Spawns `command` with its stderr piped (and read into the log); its
    /// stdout is read to its end too when the caller piped it.
    pub fn start(mut command: Command) -> Process {
        let what = std::iter::once(OsStr::new("quiesce"))
            .chain(command.get_args().take(1))
            .map(OsStr::to_string_lossy)
            .collect::<Vec<_>>()
            .join(" ");
        let mut child = command
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {what}: {e}"));
        let pid = child.id();
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new((Mutex::new(Log::default()), Condvar::new()));
        let log_reader = {
            let log = log.clone();
            thread::Builder::new()
                .name(format!("test-{pid}-stderr"))
                .spawn(move || {
                    let (text, more) = &*log;
                    let mut stderr = BufReader::new(stderr);
                    let mut line = Vec::new();
                    loop {
                        line.clear();
                        if !matches!(stderr.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                            break;
                        }
                        let line = String::from_utf8_lossy(&line);
                        let line = line.strip_suffix('\n').unwrap_or(&line);
                        lock(text).lines.push(line.to_string());
                        more.notify_all();
                    }
                    lock(text).ended = true;
                    more.notify_all();
                })
                .expect("spawn the stderr reader")
        };
        let stdout_reader = child.stdout.take().map(|mut stdout| {
            thread::Builder::new()
                .name(format!("test-{pid}-stdout"))
                .spawn(move || {
                    let mut text = Vec::new();
                    let _ = stdout.read_to_end(&mut text);
                    String::from_utf8_lossy(&text).into_owned()
                })
                .expect("spawn the stdout reader")
        });
        let child = Arc::new(Mutex::new(child));
        let fired = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let (watchdog_stop, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let watchdog = {
            let (child, fired) = (child.clone(), fired.clone());
            thread::Builder::new()
                .name(format!("test-{pid}-watchdog"))
                .spawn(move || {
                    loop {
                        match stop_rx.recv_timeout(Duration::from_millis(50)) {
                            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                            _ => return,
                        }
                        let mut child = lock(&child);
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
        Process {
            what,
            child,
            pid,
            log,
            cursor: 0,
            log_reader: Some(log_reader),
            stdout_reader,
            watchdog: Some(watchdog),
            watchdog_stop: Some(watchdog_stop),
            fired,
            started,
            signalled: None,
            exit: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// When it was spawned.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Everything logged (written to stderr) so far.
    pub fn log(&self) -> String {
        let log = lock(&self.log.0);
        let mut text = String::new();
        for line in &log.lines {
            text.push_str(line);
            text.push('\n');
        }
        text
    }

    /// Waits (within the watchdog) for a line of stderr containing
    /// `needle`, after the one the previous call returned; kills the
    /// process and fails if stderr ends first.
    #[track_caller]
    pub fn wait_for_line(&mut self, needle: &str) -> String {
        let give_up = self.started + WATCHDOG;
        let found = {
            let (text, more) = &*self.log;
            let mut log = lock(text);
            loop {
                if let Some(i) = log.lines[self.cursor..]
                    .iter()
                    .position(|l| l.contains(needle))
                {
                    self.cursor += i + 1;
                    break Some(log.lines[self.cursor - 1].clone());
                }
                self.cursor = log.lines.len();
                let left = give_up.saturating_duration_since(Instant::now());
                if log.ended || left.is_zero() {
                    break None;
                }
                // Inv. 3: checked under the lock; woken by the next line.
                log = more
                    .wait_timeout(log, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        };
        match found {
            Some(line) => line,
            None => self.fail(&format!("no line with {needle:?} on stderr")),
        }
    }

    /// The exit status, if it has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            let mut child = lock(&self.child);
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

    /// Sends `kill -<sig>` (`TERM`, `INT`, `KILL`) if the process still
    /// runs; false (and no signal) if it has exited.
    pub fn try_signal(&mut self, sig: &str) -> bool {
        {
            let mut child = lock(&self.child);
            if let Ok(Some(status)) = child.try_wait() {
                self.exit = Some(status);
                return false;
            }
            // Inv. 1: not reaped before the lock is released.
            send_signal(self.pid, sig);
        }
        self.signalled = Some(Instant::now());
        true
    }

    /// Sends `kill -<sig>` to the process, which must still be running.
    #[track_caller]
    pub fn signal(&mut self, sig: &str) {
        if !self.try_signal(sig) {
            self.fail(&format!(
                "cannot send SIG{sig}: it already exited with {:?}",
                self.exit
            ));
        }
    }

    /// Waits for the exit, at most `limit` (and within the watchdog);
    /// kills the process and fails past it.
    #[track_caller]
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
        let stdout = self.finish_threads();
        assert!(
            !self.fired.load(Ordering::SeqCst),
            "the watchdog killed {} after {WATCHDOG:?}\n{}",
            self.what,
            self.log()
        );
        Exit {
            status,
            elapsed,
            log: self.log(),
            stdout,
        }
    }

    /// Joins the threads (the child has exited or been killed); returns
    /// its stdout.
    fn finish_threads(&mut self) -> String {
        drop(self.watchdog_stop.take());
        if let Some(watchdog) = self.watchdog.take() {
            let _ = watchdog.join();
        }
        if let Some(reader) = self.log_reader.take() {
            let _ = reader.join();
        }
        self.stdout_reader
            .take()
            .map(|reader| reader.join().unwrap_or_default())
            .unwrap_or_default()
    }

    /// Kills the process and fails, with its log.
    #[track_caller]
    pub fn fail(&mut self, why: &str) -> ! {
        {
            let mut child = lock(&self.child);
            let _ = child.kill();
            let _ = child.wait();
        }
        self.finish_threads();
        panic!(
            "{} (pid {}): {why}; killed. Its log:\n{}",
            self.what,
            self.pid,
            self.log()
        );
    }
}

impl Drop for Process {
    /// Inv. 2.
    fn drop(&mut self) {
        {
            let mut child = lock(&self.child);
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        self.finish_threads();
        if thread::panicking() {
            eprintln!(
                "--- log of {} (pid {}) ---\n{}",
                self.what,
                self.pid,
                self.log()
            );
        }
    }
}
