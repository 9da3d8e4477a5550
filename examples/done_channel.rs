//! A background "daily report" that stops on Ctrl-C: Go's `close(done)`.
//!
//! # The Go pattern
//!
//! One goroutine writes a report on every tick; `main` closes a `done`
//! channel on SIGINT/SIGTERM, and every goroutine selecting on `<-done`
//! returns at once:
//!
//! ```go
//! done := make(chan struct{})
//! finished := make(chan int)
//! go func() {
//!     ticker := time.NewTicker(200 * time.Millisecond)
//!     defer ticker.Stop()
//!     n := 0
//!     for {
//!         select {
//!         case <-ticker.C:
//!             n++
//!             fmt.Println("daily-report", n)
//!         case <-done:
//!             finished <- n
//!             return
//!         }
//!     }
//! }()
//! sig := make(chan os.Signal, 1)
//! signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
//! <-sig
//! close(done)
//! fmt.Println("stopped cleanly after", <-finished, "reports")
//! ```
//!
//! # The Rust way
//!
//! [`quiesce::shutdown()`] returns the two ends of that channel: a
//! [`Shutdown`] trigger (`fire()` is `close(done)`, idempotent, and dropping
//! the last trigger fires too) and a [`Done`] whose `channel()` goes into
//! `crossbeam_channel::select!` next to the ticker. The reporter runs on a
//! named thread owned by [`quiesce::Threads`], which joins it against a
//! deadline and hands back its result, so "did it really stop?" has an
//! answer instead of a hope.
//!
//! Signals arrive through `signal_hook::iterator::Signals` on a helper
//! thread (the handler itself only writes to a pipe); that thread fires the
//! trigger. At the end, `main` closes the `Signals` handle, which ends the
//! helper's loop, and joins it too: no thread outlives `main`.
//!
//! # Running it
//!
//! ```text
//! cargo run --example done_channel              # press Ctrl-C to stop
//! cargo run --example done_channel -- --ticks 3 # stops itself after 3 reports
//! ```

use std::process::ExitCode;
use std::time::Duration;

use crossbeam_channel::select;
use quiesce::{Context, Done, JoinReport, Shutdown, Threads};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// How often the "daily" report is written (short, so the demo is visible).
const TICK: Duration = Duration::from_millis(200);

/// How long `main` waits for its threads once shutdown has begun.
const JOIN_TIMEOUT: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let ticks = match parse_args() {
        Ok(ticks) => ticks,
        Err(msg) => {
            eprintln!("done_channel: {msg}");
            eprintln!("usage: done_channel [--ticks N]");
            return ExitCode::from(2);
        }
    };
    match run(ticks) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("done_channel: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(ticks: Option<u32>) -> std::io::Result<ExitCode> {
    let (trigger, done) = quiesce::shutdown();

    // Register the handlers before the first report, so a Ctrl-C after the
    // first line is never missed.
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    let signals_handle = signals.handle();
    let mut signal_thread = Threads::<()>::new(&Context::background());
    let fire_on_signal = trigger.clone();
    signal_thread.spawn("signals", move |_ctx| {
        // Ends when `signals_handle.close()` is called.
        for signal in signals.forever() {
            let name = if signal == SIGINT {
                "SIGINT"
            } else {
                "SIGTERM"
            };
            println!("daily-report: received {name}, stopping");
            fire_on_signal.fire();
        }
    })?;

    let mut reporter = Threads::<u32>::new(&Context::background());
    let reporter_done = done.clone();
    let fire_after_ticks = trigger.clone();
    reporter.spawn("daily-report", move |_ctx| {
        daily_report(&reporter_done, &fire_after_ticks, ticks)
    })?;
    println!(
        "daily-report: writing a report every {TICK:?}; press Ctrl-C to stop{}",
        ticks.map_or(String::new(), |n| format!(" (or wait for {n} reports)"))
    );

    // The main thread has nothing else to do: wait for close(done).
    done.wait();

    // Stop listening for signals and join every thread, within a deadline.
    signals_handle.close();
    let outcome = joined(signal_thread.join_timeout(JOIN_TIMEOUT))
        .and_then(|_| joined(reporter.join_timeout(JOIN_TIMEOUT)));
    match outcome.as_deref() {
        Ok([reports]) => {
            println!("daily-report: stopped cleanly after {reports} reports");
            Ok(ExitCode::SUCCESS)
        }
        Ok(_) => {
            eprintln!("daily-report: the reporter thread is missing from the join report");
            Ok(ExitCode::FAILURE)
        }
        Err(problem) => {
            eprintln!("daily-report: {problem}");
            // Returning would drop the `Threads`, whose drop joins a stuck
            // thread forever: report it and leave at once instead.
            std::process::exit(1);
        }
    }
}

/// The threads' results, or what went wrong: one still running at the
/// deadline (named, with its age) or one that panicked.
fn joined<T>(report: JoinReport<T>) -> Result<Vec<T>, String> {
    if let Some(stuck) = report.running.first() {
        return Err(format!("thread still running: {stuck}"));
    }
    report
        .finished
        .into_iter()
        .map(|f| {
            f.result
                .map_err(|panic| format!("thread {} {panic}", f.name))
        })
        .collect()
}

/// Writes one report per tick until `done` is closed; returns how many it
/// wrote. With `limit`, fires `trigger` itself after that many reports.
fn daily_report(done: &Done, trigger: &Shutdown, limit: Option<u32>) -> u32 {
    let ticker = crossbeam_channel::tick(TICK);
    let mut reports = 0u32;
    loop {
        select! {
            recv(ticker) -> _ => {
                reports += 1;
                // A made-up but plausible day at the trial's sites.
                let received = 40 + (reports * 7) % 13;
                let alerts = reports % 3;
                println!(
                    "daily-report #{reports}: {received} ePRO reports received, {alerts} alerts flagged"
                );
                if limit == Some(reports) {
                    // close(done) for everyone else (main waits on it), and
                    // stop here: `select!` picks at random among ready
                    // cases, so a tick already due could still win a round.
                    trigger.fire();
                    return reports;
                }
            }
            recv(done.channel()) -> _ => return reports,
        }
    }
}

/// `--ticks N`, if given.
fn parse_args() -> Result<Option<u32>, String> {
    let mut ticks = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--ticks" => {
                let value = args.next().ok_or("--ticks needs a value")?;
                let n: u32 = value
                    .parse()
                    .map_err(|_| format!("--ticks: not a number: {value}"))?;
                if n == 0 {
                    return Err("--ticks must be at least 1".into());
                }
                ticks = Some(n);
            }
            other => return Err(format!("unknown argument: {other}")),
        }
    }
    Ok(ticks)
}
