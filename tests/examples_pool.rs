//! Black-box tests of the bounded-concurrency examples: `semaphore_batch`,
//! `pool_uploads`, `batch_deadline`, `errgroup_tasks` and
//! `worker_pool_drain`. Each test runs a built example with arguments that
//! keep it short, under a watchdog that kills it if it hangs, and checks
//! what it printed and how it exited. No assertion depends on how fast the
//! machine is: counts are checked against bounds that hold however slowly
//! the threads run.
//!
//! The harness (finding and building the examples, the watchdog) is in
//! `tests/common`; a test binary of its own keeps these examples' signals
//! and processes apart from the others.

mod common;

use std::process::Command;

use common::{Output, Running, assert_contains, assert_success, run};

/// The first line that starts with `prefix`.
#[track_caller]
fn line<'a>(out: &'a Output, prefix: &str) -> &'a str {
    out.stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?}:\n{}", out.stdout))
}

/// The number right after the first `label` in `text`.
#[track_caller]
fn number_after(text: &str, label: &str) -> u64 {
    let at = text
        .find(label)
        .unwrap_or_else(|| panic!("{label:?} not in {text:?}"));
    let digits: String = text[at + label.len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number after {label:?} in {text:?}"))
}

// ---------------------------------------------------------------- semaphore

/// Checks the two summary lines of `semaphore_batch`.
#[track_caller]
fn assert_batch_within(out: &Output, patients: u64, limit: u64) {
    let max = number_after(
        line(out, "max concurrency observed: "),
        "max concurrency observed: ",
    );
    assert!(
        (1..=limit).contains(&max),
        "max concurrency {max} outside 1..={limit}\n{}",
        out.stdout
    );
    assert_contains(out, &format!("(limit {limit})"));
    let generated = line(out, "reports generated: ");
    assert!(
        generated.starts_with(&format!("reports generated: {patients} of {patients} ")),
        "{generated:?}\n{}",
        out.stdout
    );
}

#[test]
fn semaphore_batch_runs_at_most_ten_reports_at_a_time() {
    let out = run("semaphore_batch", &[]);
    assert_success("semaphore_batch", &out);
    assert_batch_within(&out, 100, 10);
    for patient in ["025", "050", "075", "100"] {
        assert_contains(&out, &format!("patient {patient}: report ready"));
    }
}

#[test]
fn semaphore_batch_scope_form_keeps_the_same_bound() {
    let out = run("semaphore_batch", &["--scope", "--work-ms", "10"]);
    assert_success("semaphore_batch", &out);
    assert_contains(&out, "at most 10 at a time (quiesce::scope)");
    assert_batch_within(&out, 100, 10);
}

#[test]
fn semaphore_batch_honours_a_smaller_limit() {
    let args = ["--patients", "30", "--limit", "3", "--work-ms", "5"];
    let out = run("semaphore_batch", &args);
    assert_success("semaphore_batch", &out);
    assert_batch_within(&out, 30, 3);
}

// ------------------------------------------------------------- pool uploads

/// `report: completed C, cancelled X, panicked P, never started N …, stuck S`
struct PoolReport {
    completed: u64,
    cancelled: u64,
    panicked: u64,
    never_started: u64,
    stuck: u64,
}

#[track_caller]
fn pool_report(out: &Output) -> PoolReport {
    let report = line(out, "report: ");
    PoolReport {
        completed: number_after(report, "completed "),
        cancelled: number_after(report, "cancelled "),
        panicked: number_after(report, "panicked "),
        never_started: number_after(report, "never started "),
        stuck: number_after(report, "stuck "),
    }
}

/// Checks that every upload submitted is completed, cancelled (and rolled
/// back) or handed back; returns the report.
#[track_caller]
fn assert_no_upload_lost(out: &Output, uploads: u64) -> PoolReport {
    let producer = line(out, "producer: ");
    assert_eq!(
        number_after(producer, "producer: "),
        uploads,
        "{producer:?}"
    );
    assert!(
        producer.contains("try_submit handed the upload back"),
        "{producer:?}"
    );
    let report = pool_report(out);
    assert_eq!(report.stuck, 0, "{}", out.stdout);
    assert_eq!(report.panicked, 0, "{}", out.stdout);
    assert_eq!(
        report.completed + report.cancelled + report.never_started,
        uploads,
        "{}",
        out.stdout
    );
    let check = line(out, "check: ");
    assert!(
        check.ends_with(&format!("= {uploads} of {uploads} submitted")),
        "{check:?}"
    );
    let ledger = line(out, "ledger: ");
    assert!(ledger.ends_with("; lost 0"), "{ledger:?}");
    assert_eq!(
        number_after(ledger, "rolled back, "),
        report.never_started,
        "{ledger:?}"
    );
    report
}

#[test]
fn pool_uploads_processes_every_upload_before_shutdown_returns() {
    let out = run("pool_uploads", &["--uploads", "500", "--work-ms", "4"]);
    assert_success("pool_uploads", &out);
    assert_contains(&out, "500 device uploads arriving");
    let report = assert_no_upload_lost(&out, 500);
    assert_eq!(report.completed, 500, "{}", out.stdout);
    assert_eq!(report.never_started, 0, "{}", out.stdout);
    assert_contains(&out, "ledger: 500 stored, 0 rolled back, 0 kept");
}

#[test]
fn pool_uploads_past_its_deadline_hands_back_what_did_not_run() {
    // Uploads of 20-40 ms, 4 workers, and a shutdown deadline that has
    // already passed: the queued uploads are handed back, the running ones
    // cancelled; whatever the timing, none is lost.
    let args = ["--uploads", "200", "--work-ms", "40", "--deadline-ms", "0"];
    let out = run("pool_uploads", &args);
    assert_success("pool_uploads", &out);
    let report = assert_no_upload_lost(&out, 200);
    // Only the jobs running at the deadline can be cancelled.
    assert!(report.cancelled <= 4, "{}", out.stdout);
}

// ----------------------------------------------------------- batch deadline

/// `(finished, cancelled, never started)` from `batch_deadline`'s summary,
/// checked to add up to `reports`.
#[track_caller]
fn batch_counts(out: &Output, reports: u64) -> (u64, u64, u64) {
    let finished = number_after(line(out, "finished: "), "finished: ");
    let cancelled = number_after(
        line(out, "cancelled mid-report: "),
        "cancelled mid-report: ",
    );
    let never = number_after(line(out, "never started: "), "never started: ");
    assert_eq!(
        finished + cancelled + never,
        reports,
        "finished {finished} + cancelled {cancelled} + never started {never}\n{}",
        out.stdout
    );
    assert_contains(
        out,
        &format!("total: {reports} = {finished} + {cancelled} + {never}"),
    );
    (finished, cancelled, never)
}

#[test]
fn batch_deadline_cuts_the_batch_short_and_ends() {
    // Defaults: 100 reports of 100-300 ms, ten at a time, 1 s deadline.
    // Ten workers cannot do the ~20 s of work in 1 s, whatever the speed.
    let out = run("batch_deadline", &[]);
    assert_success("batch_deadline", &out);
    let (finished, cancelled, never) = batch_counts(&out, 100);
    assert!(finished < 100, "{}", out.stdout);
    assert!(cancelled <= 10, "at most the running ten:\n{}", out.stdout);
    assert!(cancelled + never > 0, "{}", out.stdout);
    let last = line(&out, "batch ended after ");
    assert!(
        last.ends_with(": context deadline exceeded"),
        "{last:?}\n{}",
        out.stdout
    );
}

#[test]
fn batch_deadline_with_fixed_work_has_exact_bounds() {
    // Every report takes at least 200 ms and the deadline is 500 ms: each of
    // the ten workers finishes at most two, and is cut short in at most one
    // more, so at least 70 never start.
    let args = ["--min-ms", "200", "--max-ms", "200", "--deadline-ms", "500"];
    let out = run("batch_deadline", &args);
    assert_success("batch_deadline", &out);
    let (finished, cancelled, never) = batch_counts(&out, 100);
    assert!(finished <= 20, "{}", out.stdout);
    assert!(cancelled <= 10, "{}", out.stdout);
    assert!(never >= 70, "{}", out.stdout);
    assert_contains(&out, ": context deadline exceeded");
}

#[test]
fn batch_deadline_finishes_everything_under_a_generous_deadline() {
    let args = ["--min-ms", "1", "--max-ms", "3", "--deadline-ms", "25000"];
    let out = run("batch_deadline", &args);
    assert_success("batch_deadline", &out);
    assert_eq!(batch_counts(&out, 100), (100, 0, 0), "{}", out.stdout);
    assert_contains(&out, "every report finished before the deadline");
}

// ----------------------------------------------------------- errgroup tasks

/// Each task's outcome line, `task-N: …`, in task order.
fn task_outcomes(out: &Output) -> Vec<String> {
    (1..=5)
        .map(|n| line(out, &format!("task-{n}: ")).to_string())
        .collect()
}

/// The failing task failed, the group's error names it, and every other
/// task was cancelled or never started; none completed.
#[track_caller]
fn assert_group_failed_on(out: &Output, failing: usize) {
    let outcomes = task_outcomes(out);
    for (i, outcome) in outcomes.iter().enumerate() {
        let task = i + 1;
        if task == failing {
            assert!(
                outcome.starts_with(&format!(
                    "task-{task}: failed: site {task}'s export is corrupt"
                )),
                "{outcome:?}\n{}",
                out.stdout
            );
        } else {
            assert!(
                (outcome.starts_with(&format!("task-{task}: cancelled: "))
                    && outcome.ends_with(": context canceled"))
                    || outcome.starts_with(&format!("task-{task}: not started: ")),
                "{outcome:?}\n{}",
                out.stdout
            );
        }
    }
    let error = line(out, "group error: ");
    assert!(
        error.starts_with(&format!(
            "group error: task task-{failing} failed: site {failing}'s export is corrupt"
        )),
        "{error:?}\n{}",
        out.stdout
    );
}

#[test]
fn errgroup_tasks_reports_task_3_and_cancels_the_others() {
    let out = run("errgroup_tasks", &[]);
    assert_success("errgroup_tasks", &out);
    assert_group_failed_on(&out, 3);
}

#[test]
fn errgroup_tasks_names_whichever_task_fails() {
    let out = run("errgroup_tasks", &["--fail-task", "5"]);
    assert_success("errgroup_tasks", &out);
    assert_group_failed_on(&out, 5);
}

#[test]
fn errgroup_tasks_with_no_failure_completes_every_task() {
    let out = run("errgroup_tasks", &["--fail-task", "0", "--step-ms", "2"]);
    assert_success("errgroup_tasks", &out);
    for outcome in task_outcomes(&out) {
        assert!(outcome.ends_with(": completed (30 chunks)"), "{outcome:?}");
    }
    assert_contains(
        &out,
        "group: every task completed ([30, 30, 30, 30, 30] chunks)",
    );
    assert!(!out.stdout.contains("group error"), "{}", out.stdout);
}

// -------------------------------------------------------- worker pool drain

/// The drain report adds up, the late submit was refused with the job
/// handed back, and the program said it exits cleanly. Returns the report
/// and the number of reports submitted.
#[track_caller]
fn assert_drained(out: &Output) -> (PoolReport, u64) {
    let report = pool_report(out);
    assert_eq!(report.stuck, 0, "{}", out.stdout);
    assert_eq!(report.panicked, 0, "{}", out.stdout);
    let check = line(out, "check: ");
    let submitted = number_after(check, " of ");
    assert_eq!(
        report.completed + report.cancelled + report.never_started,
        submitted,
        "{check:?}"
    );
    assert_contains(
        out,
        "late submit after the stop: refused with Refused::Closed, the job handed back",
    );
    assert_contains(out, "R-9999: refused: Closed (");
    let last = out.stdout.lines().last().unwrap_or_default();
    assert_eq!(
        last,
        "exiting: every accepted report accounted for, every thread joined"
    );
    (report, submitted)
}

#[test]
fn worker_pool_drain_drains_the_queue_and_refuses_late_submits() {
    let out = run("worker_pool_drain", &["--jobs", "20", "--work-ms", "30"]);
    assert_success("worker_pool_drain", &out);
    let (report, submitted) = assert_drained(&out);
    assert_eq!(submitted, 20, "{}", out.stdout);
    assert_eq!(report.completed, 20, "{}", out.stdout);
    assert_eq!(report.never_started, 0, "{}", out.stdout);
    for n in 1..=20 {
        assert_contains(&out, &format!("R-{n:04}: analysed on analysis-"));
    }
    // The drain comes after the stop, and the late submit after the drain
    // began.
    let text = &out.stdout;
    let stop = text.find("stopping: closing intake").expect("stop line");
    let late = text.find("late submit after the stop").expect("late line");
    assert!(stop < late, "{text}");
}

#[test]
fn worker_pool_drain_past_its_deadline_hands_back_the_queue() {
    // Analyses of 1.5-3 s and a 100 ms deadline: the running ones are
    // cancelled, the queued ones handed back; all are accounted for.
    let args = ["--jobs", "20", "--work-ms", "3000", "--deadline-ms", "100"];
    let out = run("worker_pool_drain", &args);
    assert_success("worker_pool_drain", &out);
    let (report, submitted) = assert_drained(&out);
    assert_eq!(submitted, 20, "{}", out.stdout);
    assert!(report.cancelled <= 3, "{}", out.stdout);
}

/// Starts `worker_pool_drain --signal`, waits for its first line, sends it
/// `signal` with kill(1), and checks that it drains and exits 0.
fn drains_on(signal: &str) {
    let args = [
        "--signal",
        "--jobs",
        "10",
        "--work-ms",
        "60",
        "--interval-ms",
        "20",
    ];
    let mut example = Running::start("worker_pool_drain", &args);
    let first = example.wait_for_line("worker-pool:");
    assert!(
        first.contains("waiting for SIGINT or SIGTERM"),
        "first line: {first:?}"
    );
    let pid = example.child.id().to_string();
    let kill = Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .expect("run kill(1)");
    assert!(kill.success(), "kill -{signal} {pid} failed: {kill}");
    let out = example.finish();
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    assert_contains(
        &out,
        &format!("received SIG{signal}: stopping intake, draining the queue"),
    );
    let (report, submitted) = assert_drained(&out);
    // A 10 s deadline leaves time to drain everything accepted.
    assert!(submitted >= 10, "{}", out.stdout);
    assert_eq!(report.completed, submitted, "{}", out.stdout);
    assert_eq!(report.never_started, 0, "{}", out.stdout);
    // The intake thread met the closed pool too: two refusals in all.
    let refused = out
        .stdout
        .lines()
        .filter(|l| l.contains(": refused: Closed ("))
        .count();
    assert_eq!(refused, 2, "{}", out.stdout);
    assert_contains(&out, "2 refused after the stop and kept");
}

#[test]
fn worker_pool_drain_drains_on_sigterm() {
    drains_on("TERM");
}

#[test]
fn worker_pool_drain_drains_on_sigint() {
    drains_on("INT");
}

// ---------------------------------------------------------------- arguments

#[test]
fn every_example_rejects_an_unknown_argument_with_status_2() {
    for name in [
        "semaphore_batch",
        "pool_uploads",
        "batch_deadline",
        "errgroup_tasks",
        "worker_pool_drain",
    ] {
        let out = run(name, &["--bogus"]);
        assert_eq!(out.status.code(), Some(2), "{name}: {}", out.stderr);
        assert!(
            out.stderr.contains("unknown argument: --bogus") && out.stderr.contains("usage: "),
            "{name}: {}",
            out.stderr
        );
    }
}
