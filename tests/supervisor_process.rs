//! The supervisor under real signals, as a user would see it: a small
//! supervised program runs as a child process (this test binary, re-run
//! with `QUIESCE_CHILD=<scenario>` on its ignored `child` entry), the test
//! sends it SIGTERM with `kill`, and reads its output, its exit code and
//! its systemd notifications.
//!
//! Signals are process-wide, so this lives in its own test binary, and
//! every child has a watchdog: a child still alive after a minute is
//! killed and the test fails.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use quiesce::{Supervisor, exit};

const WATCHDOG: Duration = Duration::from_secs(60);

/// The supervised program, run in the child process.
#[test]
#[ignore = "the child process entry, run by the other tests"]
fn child() {
    let Ok(scenario) = std::env::var("QUIESCE_CHILD") else {
        return;
    };
    let _ = env_logger::builder().is_test(false).try_init();
    signal_context_child(&scenario);
    let mut sup = Supervisor::builder()
        .shutdown_timeout(Duration::from_secs(30))
        .build();
    for name in ["store", "pipeline", "intake"] {
        let stubborn = scenario == "stubborn" && name == "pipeline";
        let stuck = scenario == "stuck" && name == "pipeline";
        sup.add_fn(name, move |ctx| {
            println!("start {name}");
            ctx.ready();
            let _ = ctx.done().recv();
            println!("stopping {name}");
            if stubborn || stuck {
                // Takes its time (or forever) to stop.
                thread::sleep(Duration::from_secs(120));
            }
            println!("stop {name}");
            Ok(())
        })
        .stop_timeout(if stuck {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(30)
        });
    }
    println!("ready");
    let report = sup.run_until_signal().expect("signal handlers");
    println!("report: {report}");
    println!("exit {}", report.exit_code());
    std::process::exit(report.exit_code());
}

/// The `signal_context` scenarios (issue 17): the one value it returns,
/// bound to a name, listens until the end of its scope; `let _ =` drops it
/// at once, and then nothing listens and SIGTERM is ignored (as
/// `SignalGuard`'s docs say: the default disposition is not restored).
fn signal_context_child(scenario: &str) {
    use quiesce::{Context, signals};
    match scenario {
        "signal_context" => {
            let ctx = signals::signal_context(&Context::background()).expect("signal handlers");
            println!("\nlistening"); // on a line of its own, after libtest's
            println!("signal thread: {}", signal_thread_runs());
            let _ = ctx.done().recv();
            println!("cancelled: {}", ctx.cause().expect("done"));
            std::process::exit(exit::OK);
        }
        "signal_context_dropped" => {
            let _ = signals::signal_context(&Context::background()).expect("signal handlers");
            println!("\ndropped");
            println!("signal thread: {}", signal_thread_runs());
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).expect("stdin");
            println!("still running");
            std::process::exit(exit::OK);
        }
        _ => {}
    }
}

fn signal_thread_runs() -> bool {
    quiesce::leak::live_threads()
        .iter()
        .any(|t| t.name == "quiesce-signals")
}

struct Spawned {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

fn spawn_child(scenario: &str, env: &[(&str, &str)]) -> Spawned {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "child",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("QUIESCE_CHILD", scenario)
    .env_remove("NOTIFY_SOCKET")
    .env_remove("WATCHDOG_USEC")
    .env_remove("WATCHDOG_PID")
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Spawned {
        child,
        lines,
        seen: Vec::new(),
    }
}

impl Spawned {
    /// Waits for a line equal to `want` (failing after the watchdog).
    fn expect_line(&mut self, want: &str) {
        let give_up = Instant::now() + WATCHDOG;
        loop {
            let left = give_up.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line == want;
                    self.seen.push(line);
                    if found {
                        return;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    panic!("never saw {want:?}; output so far: {:#?}", self.seen);
                }
            }
        }
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the exit (failing after the watchdog); returns the code
    /// and every line printed.
    fn finish(mut self) -> (i32, Vec<String>) {
        let give_up = Instant::now() + WATCHDOG;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > give_up {
                let _ = self.child.kill();
                panic!("child did not exit; output: {:#?}", self.seen);
            }
            thread::sleep(Duration::from_millis(5));
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        (status.code().expect("exited, not killed"), self.seen)
    }
}

fn ours(lines: &[String]) -> Vec<&str> {
    lines
        .iter()
        .map(String::as_str)
        .filter(|l| l.starts_with("start ") || l.starts_with("stop "))
        .collect()
}

#[test]
fn sigterm_stops_the_services_in_reverse_order_and_exits_zero() {
    let mut child = spawn_child("graceful", &[]);
    child.expect_line("start intake");
    child.signal("TERM");
    let (code, lines) = child.finish();
    assert_eq!(code, exit::OK, "{lines:#?}");
    assert_eq!(
        ours(&lines),
        [
            "start store",
            "start pipeline",
            "start intake",
            "stop intake",
            "stop pipeline",
            "stop store"
        ]
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("stop requested (received SIGTERM)")),
        "{lines:#?}"
    );
}

#[test]
fn a_signal_context_bound_to_a_name_listens_until_its_scope_ends() {
    let mut child = spawn_child("signal_context", &[]);
    child.expect_line("listening");
    child.signal("TERM");
    let (code, lines) = child.finish();
    assert_eq!(code, exit::OK, "{lines:#?}");
    assert!(
        lines.contains(&"signal thread: true".to_string()),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l == "cancelled: received SIGTERM"),
        "{lines:#?}"
    );
}

#[test]
fn a_signal_context_bound_to_underscore_is_dropped_at_once_and_sigterm_is_ignored() {
    let mut child = spawn_child("signal_context_dropped", &[]);
    child.expect_line("dropped");
    child.signal("TERM"); // handled (by no one) before the read below returns
    let mut stdin = child.child.stdin.take().expect("piped");
    writeln!(stdin, "go on").unwrap();
    drop(stdin);
    let (code, lines) = child.finish(); // fails if SIGTERM ended the child
    assert_eq!(code, exit::OK, "{lines:#?}");
    assert!(
        lines.contains(&"signal thread: false".to_string()),
        "{lines:#?}"
    );
    assert!(lines.iter().any(|l| l == "still running"), "{lines:#?}");
}

#[test]
fn sigint_works_the_same_way() {
    let mut child = spawn_child("graceful", &[]);
    child.expect_line("start intake");
    child.signal("INT");
    let (code, lines) = child.finish();
    assert_eq!(code, exit::OK, "{lines:#?}");
    assert!(
        lines.iter().any(|l| l.contains("received SIGINT")),
        "{lines:#?}"
    );
}

#[test]
fn a_second_signal_exits_at_once_with_128_plus_the_signal() {
    let mut child = spawn_child("stubborn", &[]);
    child.expect_line("start intake");
    child.signal("TERM");
    // The shutdown is under way and stuck in "pipeline" for two minutes.
    child.expect_line("stopping pipeline");
    child.signal("TERM");
    let (code, lines) = child.finish();
    assert_eq!(code, exit::forced(15), "{lines:#?}");
    // `run_until_signal` returned at once (the library does not exit the
    // process): the services it gave up on are named, and the store below
    // them was never told to stop.
    let report = lines.iter().find(|l| l.starts_with("report: ")).unwrap();
    assert!(report.contains("given up at received SIGTERM"), "{report}");
    assert!(report.contains("pipeline=still running"), "{report}");
    assert!(report.contains("store=still running"), "{report}");
    assert!(!lines.iter().any(|l| l == "stopping store"), "{lines:#?}");
}

#[test]
fn a_stuck_service_is_named_and_the_exit_code_says_deadline_exceeded() {
    let mut child = spawn_child("stuck", &[]);
    child.expect_line("start intake");
    child.signal("TERM");
    let (code, lines) = child.finish();
    assert_eq!(code, exit::DEADLINE_EXCEEDED, "{lines:#?}");
    let report = lines.iter().find(|l| l.starts_with("report: ")).unwrap();
    assert!(report.contains("pipeline=still running"), "{report}");
    // The shutdown moved on past it.
    assert!(lines.iter().any(|l| l == "stop store"), "{lines:#?}");
}

#[test]
fn systemd_gets_ready_watchdog_and_stopping_on_the_notify_socket() {
    let dir = std::env::temp_dir().join(format!("quiesce-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(WATCHDOG)).unwrap();
    let path_str = path.to_str().unwrap().to_string();
    let mut child = spawn_child(
        "graceful",
        &[("NOTIFY_SOCKET", &path_str), ("WATCHDOG_USEC", "100000")],
    );
    let mut messages = Vec::new();
    let receive_until = |want: &str, messages: &mut Vec<String>| {
        let mut buf = [0u8; 4096];
        loop {
            let n = socket
                .recv(&mut buf)
                .expect("a notification before the watchdog");
            let text = String::from_utf8_lossy(&buf[..n]).to_string();
            let found = text.lines().any(|l| l == want);
            messages.push(text);
            if found {
                return;
            }
        }
    };
    receive_until("READY=1", &mut messages);
    receive_until("WATCHDOG=1", &mut messages);
    child.expect_line("start intake");
    child.signal("TERM");
    receive_until("STOPPING=1", &mut messages);
    let (code, lines) = child.finish();
    assert_eq!(code, exit::OK, "{lines:#?}");
    assert!(
        messages.iter().any(|m| m.contains("STATUS=")),
        "{messages:#?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
