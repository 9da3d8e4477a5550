//! The harness shared by the black-box tests of the example programs:
//! find (and build) an example, run it under a watchdog, read what it
//! prints. Each test binary uses part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

/// How long an example may run before the watchdog kills it.
pub const WATCHDOG: Duration = Duration::from_secs(30);

/// `<target>/<profile>/examples/NAME`, found from this test binary, which
/// is `<target>/<profile>/deps/<test>-…`.
///
/// A plain `cargo test` builds the examples before it runs any test, but
/// `cargo test --test <name>` does not, and an example left from an older
/// build may be stale; so the first test to get here runs
/// `cargo build --examples` into the same target directory (a no-op when
/// they are up to date).
pub fn example_path(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let exe = std::env::current_exe().expect("path of the test binary");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lives in <target>/<profile>/deps");
    let built = BUILT.get_or_init(|| build_examples(profile_dir));
    if let Err(err) = built {
        panic!("cannot build the examples: {err}");
    }
    let path = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "example binary {} not found after `cargo build --examples`",
        path.display()
    );
    path
}

/// `cargo build --examples` into the target directory `profile_dir` is in.
fn build_examples(profile_dir: &Path) -> Result<(), String> {
    let target_dir = profile_dir
        .parent()
        .ok_or("the profile directory has no parent")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut command = Command::new(cargo);
    command
        .args(["build", "--quiet", "--examples", "--manifest-path"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        .stdin(Stdio::null());
    if profile_dir.file_name() == Some("release".as_ref()) {
        command.arg("--release");
    }
    let out = command
        .output()
        .map_err(|err| format!("cannot run cargo: {err}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "cargo build --examples: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A running example whose stdout arrives line by line.
pub struct Running {
    pub name: String,
    pub child: Child,
    pub lines: Receiver<String>,
    pub stdout: Vec<String>,
    pub stdout_reader: Option<JoinHandle<()>>,
    pub stderr_reader: Option<JoinHandle<String>>,
    pub started: Instant,
}

/// What a finished example printed, and how it exited.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Running {
    pub fn start(name: &str, args: &[&str]) -> Running {
        let mut child = Command::new(example_path(name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start example {name}: {err}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = crossbeam_channel::unbounded();
        let stdout_reader = thread::Builder::new()
            .name(format!("{name}-stdout"))
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })
            .expect("spawn stdout reader");
        let stderr_reader = thread::Builder::new()
            .name(format!("{name}-stderr"))
            .spawn(move || {
                let mut text = String::new();
                let _ = stderr.read_to_string(&mut text);
                text
            })
            .expect("spawn stderr reader");
        Running {
            name: name.to_string(),
            child,
            lines,
            stdout: Vec::new(),
            stdout_reader: Some(stdout_reader),
            stderr_reader: Some(stderr_reader),
            started: Instant::now(),
        }
    }

    fn deadline(&self) -> Instant {
        self.started + WATCHDOG
    }

    /// Reads stdout until a line contains `needle`; kills the example and
    /// fails if it does not come before the watchdog.
    pub fn wait_for_line(&mut self, needle: &str) -> String {
        loop {
            match self.lines.recv_deadline(self.deadline()) {
                Ok(line) => {
                    self.stdout.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => self.kill_and_fail(&format!(
                    "no line containing {needle:?} within {WATCHDOG:?}"
                )),
                Err(RecvTimeoutError::Disconnected) => self.kill_and_fail(&format!(
                    "stdout closed before a line containing {needle:?}"
                )),
            }
        }
    }

    /// Waits for the example to exit (killing it and failing past the
    /// watchdog) and collects all it printed.
    pub fn finish(mut self) -> Output {
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    // The pipes close when the process exits; drain them.
                    let reader = self.stdout_reader.take().expect("stdout reader");
                    reader.join().expect("stdout reader panicked");
                    self.stdout.extend(self.lines.try_iter());
                    let stderr = self
                        .stderr_reader
                        .take()
                        .expect("stderr reader")
                        .join()
                        .expect("stderr reader panicked");
                    return Output {
                        status,
                        stdout: self.stdout.join("\n"),
                        stderr,
                    };
                }
                Ok(None) if Instant::now() < self.deadline() => {
                    thread::sleep(Duration::from_millis(20));
                }
                Ok(None) => self.kill_and_fail(&format!("still running after {WATCHDOG:?}")),
                Err(err) => self.kill_and_fail(&format!("cannot wait for it: {err}")),
            }
        }
    }

    pub fn kill_and_fail(&mut self, why: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stdout.extend(self.lines.try_iter());
        panic!(
            "example {}: {why}; killed. stdout so far:\n{}",
            self.name,
            self.stdout.join("\n")
        );
    }
}

/// Runs an example to the end under the watchdog.
pub fn run(name: &str, args: &[&str]) -> Output {
    Running::start(name, args).finish()
}

#[track_caller]
pub fn assert_success(name: &str, out: &Output) {
    assert!(
        out.status.success(),
        "example {name} exited with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
}

#[track_caller]
pub fn assert_contains(out: &Output, needle: &str) {
    assert!(
        out.stdout.contains(needle),
        "stdout lacks {needle:?}:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
}
