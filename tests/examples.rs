//! Black-box tests of the example programs: each test runs a built example
//! (`cargo test` builds them next to the test binaries), with arguments that
//! keep it short, under a watchdog that kills it if it hangs, and checks
//! what it printed and how it exited. No assertion depends on how fast the
//! machine is.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

/// How long an example may run before the watchdog kills it.
const WATCHDOG: Duration = Duration::from_secs(30);

/// `<target>/<profile>/examples/NAME`, found from this test binary, which
/// is `<target>/<profile>/deps/examples-…`.
///
/// A plain `cargo test` builds the examples before it runs any test, but
/// `cargo test --test examples` does not, and an example left from an older
/// build may be stale; so the first test to get here runs
/// `cargo build --examples` into the same target directory (a no-op when
/// they are up to date).
fn example_path(name: &str) -> PathBuf {
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
struct Running {
    name: String,
    child: Child,
    lines: Receiver<String>,
    stdout: Vec<String>,
    stdout_reader: Option<JoinHandle<()>>,
    stderr_reader: Option<JoinHandle<String>>,
    started: Instant,
}

/// What a finished example printed, and how it exited.
struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Running {
    fn start(name: &str, args: &[&str]) -> Running {
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
    fn wait_for_line(&mut self, needle: &str) -> String {
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
    fn finish(mut self) -> Output {
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

    fn kill_and_fail(&mut self, why: &str) -> ! {
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
fn run(name: &str, args: &[&str]) -> Output {
    Running::start(name, args).finish()
}

#[track_caller]
fn assert_success(name: &str, out: &Output) {
    assert!(
        out.status.success(),
        "example {name} exited with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
}

#[track_caller]
fn assert_contains(out: &Output, needle: &str) {
    assert!(
        out.stdout.contains(needle),
        "stdout lacks {needle:?}:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
}

#[test]
fn done_channel_stops_itself_after_the_given_ticks() {
    let out = run("done_channel", &["--ticks", "3"]);
    assert_success("done_channel", &out);
    for n in 1..=3 {
        assert_contains(&out, &format!("daily-report #{n}:"));
    }
    assert!(!out.stdout.contains("daily-report #4:"), "{}", out.stdout);
    let last = out.stdout.lines().last().unwrap_or_default();
    assert_eq!(last, "daily-report: stopped cleanly after 3 reports");
}

/// Starts `done_channel` with no tick limit, waits for its first report,
/// sends it `signal` with kill(1), and checks that it stops cleanly.
fn stops_cleanly_on(signal: &str) {
    let mut example = Running::start("done_channel", &[]);
    example.wait_for_line("daily-report #1:");
    let pid = example.child.id().to_string();
    let kill = Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .expect("run kill(1)");
    assert!(kill.success(), "kill -{signal} {pid} failed: {kill}");
    let out = example.finish();
    assert_success("done_channel", &out);
    assert_contains(
        &out,
        &format!("daily-report: received SIG{signal}, stopping"),
    );
    let last = out.stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("daily-report: stopped cleanly after ") && last.ends_with(" reports"),
        "last line: {last:?}\n{}",
        out.stdout
    );
}

#[test]
fn done_channel_stops_cleanly_on_sigint() {
    stops_cleanly_on("INT");
}

#[test]
fn done_channel_stops_cleanly_on_sigterm() {
    stops_cleanly_on("TERM");
}

#[test]
fn done_channel_rejects_a_bad_argument() {
    let out = run("done_channel", &["--ticks", "many"]);
    assert_eq!(out.status.code(), Some(2), "stderr: {}", out.stderr);
    assert!(out.stderr.contains("--ticks"), "stderr: {}", out.stderr);
}

#[test]
fn context_timeout_stops_at_the_deadline_and_says_why() {
    // 5 steps of 200 ms under a 500 ms deadline: at most two steps can
    // finish (three need 600 ms of sleep); a slow machine may finish fewer.
    let out = run(
        "context_timeout",
        &["--step-ms", "200", "--timeout-ms", "500"],
    );
    assert_success("context_timeout", &out);
    assert_contains(&out, ": context deadline exceeded");
    assert!(
        !out.stdout.contains("all 5 steps completed"),
        "{}",
        out.stdout
    );
    let completed = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("completed steps: "))
        .unwrap_or_else(|| panic!("no 'completed steps' line:\n{}", out.stdout));
    let allowed = ["none", "validate", "validate, de-identify"];
    assert!(
        allowed.contains(&completed),
        "completed steps: {completed:?}\n{}",
        out.stdout
    );
    // The step it stopped at is the one after the completed ones.
    let stopped_at = match completed {
        "none" => "step 1 (validate)",
        "validate" => "step 2 (de-identify)",
        _ => "step 3 (score)",
    };
    assert_contains(&out, &format!("stopped at {stopped_at}"));
}

#[test]
fn context_timeout_completes_every_step_under_a_generous_deadline() {
    let out = run(
        "context_timeout",
        &["--step-ms", "10", "--timeout-ms", "20000"],
    );
    assert_success("context_timeout", &out);
    assert_contains(&out, "all 5 steps completed");
    assert_contains(
        &out,
        "completed steps: validate, de-identify, score, store, notify",
    );
    assert!(!out.stdout.contains("deadline exceeded"), "{}", out.stdout);
}

#[test]
fn wait_group_waits_for_every_file() {
    let out = run("wait_group", &[]);
    assert_success("wait_group", &out);
    for file in [
        "site-a-week12.csv",
        "site-b-week12.csv",
        "site-c-week12.csv",
    ] {
        assert_contains(&out, &format!("de-identified {file}: 4 rows"));
    }
    // The summary comes after every file's line.
    let last = out.stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("all 3 files de-identified (12 rows)"),
        "last line: {last:?}\n{}",
        out.stdout
    );
}

#[test]
fn leak_names_the_stuck_call_and_the_deadline_fixes_it() {
    let out = run("leak", &[]);
    assert_success("leak", &out);
    let lines: Vec<&str> = out.stdout.lines().collect();
    let leak_line = lines
        .iter()
        .find(|l| l.starts_with("leak check: 1 quiesce thread(s) still running"))
        .unwrap_or_else(|| panic!("no failed leak check:\n{}", out.stdout));
    assert!(
        leak_line.contains("analysis-call-no-deadline"),
        "the leak report does not name the thread: {leak_line}"
    );
    assert_contains(&out, "analysis-call-no-deadline: read returned 0 bytes");
    assert_contains(&out, "analysis-call-with-deadline: gave up after");
    assert_contains(&out, ": context deadline exceeded");
    let passed = lines
        .iter()
        .filter(|l| **l == "leak check: passed, no call thread left running")
        .count();
    assert_eq!(
        passed, 2,
        "both ways must end with no thread left:\n{}",
        out.stdout
    );
    assert_contains(&out, "final check: no quiesce thread left running");
}

#[test]
fn enrollment_counter_counts_exactly_1000() {
    let out = run("enrollment_counter", &[]);
    assert_success("enrollment_counter", &out);
    assert_contains(
        &out,
        "total enrolled: 1000 across 100 sites (expected 1000)",
    );
    for site in ["SITE-001", "SITE-050", "SITE-100"] {
        assert_contains(&out, &format!("{site}: 10 enrolled"));
    }
}

/// The lines of the service group's own services that say they stopped,
/// in order.
fn service_stops(out: &Output) -> Vec<&str> {
    out.stdout
        .lines()
        .filter_map(|l| l.split_once(": stopped").map(|(name, _)| name))
        .collect()
}

#[test]
fn service_group_stops_in_reverse_order_on_its_own_sigterm() {
    let out = run("service_group", &["--stop-after-ms", "400"]);
    assert_success("service_group", &out);
    assert_eq!(
        service_stops(&out),
        ["scheduler", "report-processor", "ehr-sync"]
    );
    assert_contains(&out, "stop requested (received SIGTERM)");
    assert_contains(&out, "exit code 0");
}

#[test]
fn service_group_stops_on_ctrl_c() {
    let mut example = Running::start("service_group", &[]);
    example.wait_for_line("service group starting");
    // Every service is up once the first tick of the slowest one is seen.
    example.wait_for_line("scheduler: daily summary #1");
    let pid = example.child.id().to_string();
    let kill = Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("run kill(1)");
    assert!(kill.success());
    let out = example.finish();
    assert_success("service_group", &out);
    assert_eq!(
        service_stops(&out),
        ["scheduler", "report-processor", "ehr-sync"]
    );
    assert_contains(&out, "received SIGINT");
}
