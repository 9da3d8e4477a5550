//! A five-step ePRO processing task under a deadline: Go's
//! `context.WithTimeout`.
//!
//! # The Go pattern
//!
//! Each step waits on its own work *or* on `ctx.Done()`, whichever comes
//! first; when the deadline passes, the task stops at the step it reached
//! and `ctx.Err()` says why:
//!
//! ```go
//! ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
//! defer cancel() // forget this and `go vet` complains: the timer leaks
//! for _, step := range []string{"validate", "de-identify", "score", "store", "notify"} {
//!     select {
//!     case <-time.After(time.Second): // the step's work
//!         fmt.Println("done:", step)
//!     case <-ctx.Done():
//!         fmt.Println("stopped at", step+":", ctx.Err()) // context deadline exceeded
//!         return
//!     }
//! }
//! ```
//!
//! # The Rust way
//!
//! [`Context::with_timeout`] returns the child context as one value, a
//! [`quiesce::CancelGuard`] that derefs to [`Context`] and cancels when it
//! is dropped, so the `defer cancel()` cannot be forgotten (and Go's
//! `ctx, _ :=` has nothing to throw away). [`Context::sleep`] is the
//! `select { case <-time.After(d): case <-ctx.Done(): }` above: it returns
//! `Ok(())` when the step's time is up, or the context's error as soon as
//! the context is done. [`Context::err`] gives the same
//! "context deadline exceeded" as Go's `ctx.Err()`.
//!
//! At the end, [`quiesce::leak::check_all`] checks (like goleak at the end
//! of `main`) that no quiesce thread is left, and stops the shared
//! `quiesce-timer` thread that fired the deadline.
//!
//! # Running it
//!
//! ```text
//! cargo run --example context_timeout
//! cargo run --example context_timeout -- --step-ms 50 --timeout-ms 120
//! ```
//!
//! By default each step takes 1 s under a 3 s deadline. The deadline falls
//! where step 3 would end; it started before step 1 and every step costs a
//! little more than its sleep, so the deadline comes first: two steps
//! complete and step 3 is cut short. With `--step-ms 50 --timeout-ms 120`
//! the deadline falls in the middle of step 3, with no tie to decide.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use quiesce::Context;

/// The steps one ePRO report goes through, in order.
const STEPS: [&str; 5] = ["validate", "de-identify", "score", "store", "notify"];

struct Options {
    step: Duration,
    timeout: Duration,
}

fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(options) => options,
        Err(msg) => {
            eprintln!("context_timeout: {msg}");
            eprintln!("usage: context_timeout [--step-ms N] [--timeout-ms N]");
            return ExitCode::from(2);
        }
    };
    let report_id = "ePRO-2024-0042";
    println!(
        "processing {report_id}: {} steps of {:?} each, deadline {:?}",
        STEPS.len(),
        options.step,
        options.timeout
    );

    let started = Instant::now();
    // `ctx` cancels itself when it is dropped: the deferred cancel() that
    // cannot be forgotten.
    let ctx = Context::background().with_timeout(options.timeout);
    let completed = process(&ctx, options.step);

    if completed.len() == STEPS.len() {
        println!(
            "{report_id}: all {} steps completed in {:.2?}",
            STEPS.len(),
            started.elapsed()
        );
    } else {
        let stopped_at = STEPS[completed.len()];
        // `process` only stops early when the context is done.
        let why = ctx
            .err()
            .map_or("stopped for no reason".to_string(), |e| e.to_string());
        println!(
            "{report_id}: stopped at step {} ({stopped_at}) after {:.2?}: {why}",
            completed.len() + 1,
            started.elapsed()
        );
    }
    let listed = if completed.is_empty() {
        "none".to_string()
    } else {
        completed.join(", ")
    };
    println!("completed steps: {listed}");

    drop(ctx);
    if let Err(leaked) = quiesce::leak::check_all(Duration::from_secs(5)) {
        eprintln!("context_timeout: {leaked}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Runs the steps in order until one is cut short by `ctx`; returns the
/// steps that completed.
fn process(ctx: &Context, step_time: Duration) -> Vec<&'static str> {
    let mut completed = Vec::new();
    for (i, step) in STEPS.into_iter().enumerate() {
        println!("step {}/{} {step}: started", i + 1, STEPS.len());
        // The step's work, simulated: it "takes" `step_time` unless the
        // deadline passes first.
        match ctx.sleep(step_time) {
            Ok(()) => {
                println!("step {}/{} {step}: done", i + 1, STEPS.len());
                completed.push(step);
            }
            Err(err) => {
                println!("step {}/{} {step}: cut short: {err}", i + 1, STEPS.len());
                break;
            }
        }
    }
    completed
}

fn parse_args() -> Result<Options, String> {
    let mut options = Options {
        step: Duration::from_millis(1000),
        timeout: Duration::from_millis(3000),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let slot = match arg.as_str() {
            "--step-ms" => &mut options.step,
            "--timeout-ms" => &mut options.timeout,
            other => return Err(format!("unknown argument: {other}")),
        };
        let value = args.next().ok_or(format!("{arg} needs a value"))?;
        let ms: u64 = value
            .parse()
            .map_err(|_| format!("{arg}: not a number of milliseconds: {value}"))?;
        *slot = Duration::from_millis(ms);
    }
    Ok(options)
}
