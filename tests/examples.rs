//! Black-box tests of the example programs: each test runs a built example
//! (`cargo test` builds them next to the test binaries), with arguments that
//! keep it short, under a watchdog that kills it if it hangs, and checks
//! what it printed and how it exited. No assertion depends on how fast the
//! machine is.

mod common;

use std::process::Command;

use common::{Output, Running, assert_contains, assert_success, run};

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
