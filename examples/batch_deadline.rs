//! A batch of 100 ePRO reports, 10 at a time, under an overall deadline
//! that runs out: Go's semaphore + WaitGroup loop with
//! `context.WithTimeout`.
//!
//! # The Go pattern
//!
//! The loop stops handing out work when the deadline passes, and each
//! report gives up at its next `select` on `ctx.Done()`; `wg.Wait()` then
//! returns promptly instead of after the whole batch:
//!
//! ```go
//! ctx, cancel := context.WithTimeout(context.Background(), time.Second)
//! defer cancel()
//! sem := make(chan struct{}, 10)
//! var wg sync.WaitGroup
//! outcome := make([]string, 100)
//! loop:
//! for p := range outcome {
//!     select {
//!     case sem <- struct{}{}:
//!     case <-ctx.Done():
//!         break loop // the rest never start
//!     }
//!     wg.Add(1)
//!     go func(p int) {
//!         defer wg.Done()
//!         defer func() { <-sem }()
//!         select {
//!         case <-time.After(workFor(p)):
//!             outcome[p] = "finished"
//!         case <-ctx.Done():
//!             outcome[p] = "cancelled: " + ctx.Err().Error()
//!         }
//!     }(p)
//! }
//! wg.Wait()
//! ```
//!
//! # The Rust way
//!
//! [`Context::with_timeout`] gives the batch its context with a deadline,
//! one value that cancels when dropped: no `defer cancel()` to forget.
//! [`quiesce::scope`]`(10, &ctx, ..)` is the semaphore, the WaitGroup and
//! the loop in one call: at most ten jobs run at once on named workers
//! (`quiesce-scope-0` …), and `scope` returns only when every job is done.
//! When the deadline passes, the jobs still queued are not started — their
//! [`quiesce::JobHandle`] reports [`JobError::NotRun`] — and the running
//! ones see it through the [`Context`] each job is given: here
//! [`Context::sleep`] returns `DeadlineExceeded` at once. Each handle gives
//! back its job's own result, so the three outcomes are counted without
//! shared state.
//!
//! (A [`quiesce::Pool`] would do too: `pool.shutdown_deadline(t)` cancels the
//! running jobs and hands back the queued ones. `scope` is shorter when the
//! batch is known up front, and its jobs may borrow from the caller.)
//!
//! # Running it
//!
//! ```text
//! cargo run --example batch_deadline
//! cargo run --example batch_deadline -- --min-ms 200 --max-ms 200 --deadline-ms 500
//! ```
//!
//! By default each report takes 100 to 300 ms under a 1 s deadline: about
//! half the batch finishes, up to ten reports are cut short, and the rest
//! never start.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use quiesce::{Context, ContextError, JobError};

struct Options {
    reports: u32,
    limit: usize,
    min_work: Duration,
    max_work: Duration,
    deadline: Duration,
}

fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(options) => options,
        Err(msg) => {
            eprintln!("batch_deadline: {msg}");
            eprintln!(
                "usage: batch_deadline [--reports N] [--limit N] [--min-ms N] [--max-ms N] [--deadline-ms N]"
            );
            return ExitCode::from(2);
        }
    };
    println!(
        "batch: {} ePRO reports, at most {} at a time, each {:?} to {:?}, deadline {:?}",
        options.reports, options.limit, options.min_work, options.max_work, options.deadline
    );

    let started = Instant::now();
    // `ctx` cancels the batch's context when dropped.
    let ctx = Context::background().with_timeout(options.deadline);
    let outcomes: Vec<Result<Result<Duration, ContextError>, JobError>> =
        quiesce::scope(options.limit, &ctx, |s| {
            let handles: Vec<_> = (1..=options.reports)
                .map(|patient| {
                    let work = work_for(patient, &options);
                    s.spawn(move |ctx| generate_report(ctx, work))
                })
                .collect();
            handles.into_iter().map(|h| h.join()).collect()
        });
    let elapsed = started.elapsed();
    let why = ctx.err();
    drop(ctx);

    let (mut finished, mut cancelled, mut never_started) = (0u32, Vec::new(), 0u32);
    for (patient, outcome) in (1..).zip(&outcomes) {
        match outcome {
            Ok(Ok(_)) => finished += 1,
            Ok(Err(_)) => cancelled.push(patient),
            Err(JobError::NotRun) => never_started += 1,
            Err(other) => {
                eprintln!("batch_deadline: report for patient {patient}: {other}");
                return ExitCode::FAILURE;
            }
        }
    }
    let listed: Vec<String> = cancelled.iter().map(|p| p.to_string()).collect();
    let cancelled = cancelled.len() as u32;
    println!("finished: {finished}");
    println!(
        "cancelled mid-report: {cancelled}{}",
        if listed.is_empty() {
            String::new()
        } else {
            format!(" (patients {})", listed.join(", "))
        }
    );
    println!("never started: {never_started}");
    println!(
        "total: {} = {finished} + {cancelled} + {never_started}",
        finished + cancelled + never_started
    );
    // `why` is read after the batch: only meaningful if something stopped.
    let how = match why {
        Some(err) if finished < options.reports => err.to_string(),
        _ => "every report finished before the deadline".to_string(),
    };
    println!("batch ended after {elapsed:.2?}: {how}");

    if let Err(leaked) = quiesce::leak::check_all(Duration::from_secs(5)) {
        eprintln!("batch_deadline: {leaked}");
        return ExitCode::FAILURE;
    }
    if finished + cancelled + never_started != options.reports {
        eprintln!("batch_deadline: a report is missing");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// The simulated report: "takes" `work` unless the batch's context is done
/// first; returns how long it took, or why it stopped.
fn generate_report(ctx: &Context, work: Duration) -> Result<Duration, ContextError> {
    let started = Instant::now();
    ctx.sleep(work)?;
    Ok(started.elapsed())
}

/// Between `min_work` and `max_work`, the same for a patient every run.
fn work_for(patient: u32, options: &Options) -> Duration {
    let spread = options.max_work.saturating_sub(options.min_work);
    options.min_work + spread * (u64::from(patient) * 7919 % 101) as u32 / 100
}

fn parse_args() -> Result<Options, String> {
    let mut options = Options {
        reports: 100,
        limit: 10,
        min_work: Duration::from_millis(100),
        max_work: Duration::from_millis(300),
        deadline: Duration::from_millis(1000),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let known = [
            "--reports",
            "--limit",
            "--min-ms",
            "--max-ms",
            "--deadline-ms",
        ];
        if !known.contains(&arg.as_str()) {
            return Err(format!("unknown argument: {arg}"));
        }
        let value = args.next().ok_or(format!("{arg} needs a value"))?;
        let n: u32 = value
            .parse()
            .map_err(|_| format!("{arg}: not a number: {value}"))?;
        let ms = Duration::from_millis(u64::from(n));
        match arg.as_str() {
            "--reports" => options.reports = n,
            "--limit" => options.limit = (n as usize).max(1),
            "--min-ms" => options.min_work = ms,
            "--max-ms" => options.max_work = ms,
            "--deadline-ms" => options.deadline = ms,
            _ => unreachable!("checked above"),
        }
    }
    if options.max_work < options.min_work {
        return Err("--max-ms must be at least --min-ms".into());
    }
    Ok(options)
}
