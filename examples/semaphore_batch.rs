//! ePRO reports for 100 patients, at most 10 generated at a time: Go's
//! buffered-channel semaphore next to a `sync.WaitGroup`.
//!
//! # The Go pattern
//!
//! A channel with room for ten tokens is the semaphore: sending a token
//! blocks while ten are out, and each goroutine takes its token back when
//! it ends. The WaitGroup makes `main` wait for the last report:
//!
//! ```go
//! sem := make(chan struct{}, 10)
//! var wg sync.WaitGroup
//! for p := 1; p <= 100; p++ {
//!     sem <- struct{}{} // blocks while ten reports are being generated
//!     wg.Add(1)
//!     go func(p int) {
//!         defer wg.Done()
//!         defer func() { <-sem }() // forget it and the loop stalls for good
//!         generateReport(p)
//!     }(p)
//! }
//! wg.Wait()
//! ```
//!
//! # The Rust way
//!
//! [`Semaphore::new`]`(10)` holds the ten tokens. `acquire()` returns a
//! [`quiesce::Permit`] that goes back to the semaphore when it is dropped,
//! so the `defer func() { <-sem }()` cannot be forgotten, and a panicking
//! report gives its permit back too. As in Go, the permit is taken in the
//! loop, *before* the thread starts, so at most ten report threads exist at
//! once; it is then moved into the thread.
//!
//! The threads are started by [`quiesce::Threads`]: each one is named
//! (`report-patient-042`), finished ones are joined as the loop goes on,
//! and `join_timeout` at the end is `wg.Wait()` with a bound, naming any
//! report still running instead of hanging.
//!
//! The example counts how many reports run at the same moment and prints
//! the highest count seen: never more than the limit.
//!
//! The same batch in one call, with worker threads instead of a thread per
//! report, is [`quiesce::scope`]`(10, &ctx, |s| for p in patients { s.spawn(..) })`;
//! `--scope` runs it that way.
//!
//! # Running it
//!
//! ```text
//! cargo run --example semaphore_batch
//! cargo run --example semaphore_batch -- --scope
//! cargo run --example semaphore_batch -- --patients 30 --limit 3 --work-ms 5
//! ```

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use quiesce::{Context, JobError, Semaphore, Threads};

/// A generous bound on the whole batch.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

struct Options {
    patients: u32,
    limit: usize,
    /// The longest a report takes; each takes between half of it and all.
    work: Duration,
    scope: bool,
}

/// How many reports are being generated now, and the most ever at once.
#[derive(Default)]
struct InFlight {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl InFlight {
    /// Counts one report in; the returned guard counts it out on drop.
    fn enter(&self) -> Leave<'_> {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        Leave(self)
    }
}

struct Leave<'a>(&'a InFlight);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(options) => options,
        Err(msg) => {
            eprintln!("semaphore_batch: {msg}");
            eprintln!("usage: semaphore_batch [--patients N] [--limit N] [--work-ms N] [--scope]");
            return ExitCode::from(2);
        }
    };
    println!(
        "generating ePRO reports for {} patients, at most {} at a time ({})",
        options.patients,
        options.limit,
        if options.scope {
            "quiesce::scope"
        } else {
            "semaphore + a thread per report"
        }
    );
    let started = Instant::now();
    let in_flight = Arc::new(InFlight::default());
    let generated = if options.scope {
        with_scope(&options, &in_flight)
    } else {
        with_semaphore(&options, &in_flight)
    };
    let generated = match generated {
        Ok(n) => n,
        Err(problem) => {
            eprintln!("semaphore_batch: {problem}");
            // A report thread may still be running: leave at once rather
            // than wait for it in a destructor.
            std::process::exit(1);
        }
    };

    let max = in_flight.max.load(Ordering::SeqCst);
    println!("max concurrency observed: {max} (limit {})", options.limit);
    println!(
        "reports generated: {generated} of {} in {:.2?}",
        options.patients,
        started.elapsed()
    );
    if let Err(leaked) = quiesce::leak::check_all(Duration::from_secs(5)) {
        eprintln!("semaphore_batch: {leaked}");
        return ExitCode::FAILURE;
    }
    if max > options.limit || generated != options.patients {
        eprintln!("semaphore_batch: the limit was exceeded or a report is missing");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// The article's step: a permit per report, taken before its thread starts.
fn with_semaphore(options: &Options, in_flight: &Arc<InFlight>) -> Result<u32, String> {
    let sem = Semaphore::new(options.limit);
    let mut threads = Threads::<u32>::new(&Context::background());
    let mut generated = 0;
    for patient in 1..=options.patients {
        // sem <- struct{}{}: waits while `limit` reports are being made.
        let permit = sem.acquire().map_err(|e| e.to_string())?;
        let in_flight = in_flight.clone();
        let work = work_for(patient, options.work);
        threads
            .spawn(format!("report-patient-{patient:03}"), move |_ctx| {
                // Released when the thread ends, however it ends: <-sem.
                let _permit = permit;
                generate_report(patient, work, &in_flight)
            })
            .map_err(|e| format!("cannot start the thread for patient {patient}: {e}"))?;
        // Join the reports that are done, so finished threads do not pile up.
        generated += count(threads.reap().into_iter().map(|f| f.result))?;
    }
    // wg.Wait(), with a bound.
    let report = threads.join_timeout(JOIN_TIMEOUT);
    if let Some(stuck) = report.running.first() {
        return Err(format!("report still running: {stuck}"));
    }
    generated += count(report.finished.into_iter().map(|f| f.result))?;
    if sem.available() != options.limit {
        return Err(format!(
            "{} permit(s) not returned",
            options.limit - sem.available()
        ));
    }
    Ok(generated)
}

/// The one-call form: `scope` runs the jobs on at most `limit` workers and
/// returns once every job is done.
fn with_scope(options: &Options, in_flight: &Arc<InFlight>) -> Result<u32, String> {
    let results: Vec<Result<u32, JobError>> =
        quiesce::scope(options.limit, &Context::background(), |s| {
            let handles: Vec<_> = (1..=options.patients)
                .map(|patient| {
                    let work = work_for(patient, options.work);
                    // Jobs may borrow: `in_flight` is not cloned.
                    s.spawn(move |_ctx| generate_report(patient, work, in_flight))
                })
                .collect();
            handles.into_iter().map(|h| h.join()).collect()
        });
    results
        .into_iter()
        .map(|r| r.map_err(|e| e.to_string()))
        .try_fold(0, |n, r| r.map(|one| n + one))
}

/// Adds up the reports of finished threads (one each); a panic is an error.
fn count(results: impl Iterator<Item = Result<u32, quiesce::Panic>>) -> Result<u32, String> {
    results
        .map(|r| r.map_err(|panic| format!("a report {panic}")))
        .try_fold(0, |n, r| r.map(|one| n + one))
}

/// The simulated report: the patient's answers are scored, which "takes"
/// `work`. Returns 1, the number of reports made.
fn generate_report(patient: u32, work: Duration, in_flight: &InFlight) -> u32 {
    let _counted = in_flight.enter();
    std::thread::sleep(work);
    let score = (patient * 37) % 41; // a made-up symptom score, 0..=40
    if patient % 25 == 0 {
        println!("patient {patient:03}: report ready, symptom score {score}");
    }
    1
}

/// Between half of `max` and all of it, the same for a patient every run.
fn work_for(patient: u32, max: Duration) -> Duration {
    let half = max / 2;
    half + half * (u64::from(patient) * 7919 % 100) as u32 / 100
}

fn parse_args() -> Result<Options, String> {
    let mut options = Options {
        patients: 100,
        limit: 10,
        work: Duration::from_millis(40),
        scope: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--scope" {
            options.scope = true;
            continue;
        }
        let mut value = || -> Result<u64, String> {
            let value = args.next().ok_or(format!("{arg} needs a value"))?;
            value
                .parse()
                .map_err(|_| format!("{arg}: not a number: {value}"))
        };
        match arg.as_str() {
            "--patients" => {
                options.patients = u32::try_from(value()?).map_err(|e| e.to_string())?
            }
            "--limit" => {
                options.limit = usize::try_from(value()?).map_err(|e| e.to_string())?;
                if options.limit == 0 {
                    return Err("--limit must be at least 1".into());
                }
            }
            "--work-ms" => options.work = Duration::from_millis(value()?),
            other => return Err(format!("unknown argument: {other}")),
        }
    }
    Ok(options)
}
