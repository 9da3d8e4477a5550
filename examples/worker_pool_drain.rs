//! Stop intake, drain the queue, exit: Go's worker pool shut down on
//! SIGTERM without losing a queued job.
//!
//! # The Go pattern
//!
//! A buffered `jobs` channel feeds a few workers. On SIGTERM the producer
//! stops and closes the channel; the workers finish what is queued (a
//! `range` over a closed channel still yields the buffered values) and a
//! WaitGroup tells `main` when they are done:
//!
//! ```go
//! jobs := make(chan Report, 100)
//! var wg sync.WaitGroup
//! for w := 0; w < 3; w++ {
//!     wg.Add(1)
//!     go func() { defer wg.Done(); for r := range jobs { analyse(r) } }()
//! }
//! go produce(jobs) // must stop sending before the close below, or it panics
//! sig := make(chan os.Signal, 1)
//! signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
//! <-sig
//! close(jobs) // a send after this panics: "send on closed channel"
//! wg.Wait()   // no bound: one stuck analysis and the pod is SIGKILLed
//! ```
//!
//! # The Rust way
//!
//! [`Pool`] is the channel and the workers (`analysis-0` …).
//! [`Pool::shutdown`] is the `close(jobs)` + `wg.Wait()` above, made safe
//! and bounded: it closes intake, lets the workers run every queued job
//! until the deadline, cancels the ones still running at the deadline
//! through their [`Context`], joins the workers and reports
//! (completed / cancelled / never started / stuck). A submit that comes
//! after shutdown has begun does not panic and does not vanish: it fails
//! with [`Refused::Closed`] and hands the job back inside the error, to be
//! kept for the next start.
//!
//! By default the program stops by itself once the `--jobs` reports are
//! submitted, as if SIGTERM had come then. With `--signal` it keeps
//! receiving one more report every `--interval-ms` and waits for a real
//! SIGINT or SIGTERM, delivered by `signal_hook::iterator::Signals` to a
//! named thread (the handler itself only writes to a pipe); the intake
//! thread meets the closed pool at its next submit and stops.
//!
//! # Running it
//!
//! ```text
//! cargo run --example worker_pool_drain
//! cargo run --example worker_pool_drain -- --signal   # then Ctrl-C, or kill -TERM <pid>
//! cargo run --example worker_pool_drain -- --jobs 40 --work-ms 20
//! ```
//!
//! Exits 0 when every accepted report was analysed (or, past the deadline,
//! cancelled or handed back) and no worker is stuck.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use quiesce::{Context, Pool, Threads, pool::Job, pool::Refused};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// How long `main` waits for its own threads (intake, signals).
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

struct Options {
    jobs: u32,
    workers: usize,
    queue: usize,
    /// The longest an analysis takes; each takes between half of it and all.
    work: Duration,
    deadline: Duration,
    /// Wait for SIGINT/SIGTERM instead of stopping after `jobs`.
    signal: bool,
    /// With `--signal`: one more report arrives this often.
    interval: Duration,
}

/// What the intake side did, shared with the intake thread.
#[derive(Default)]
struct Intake {
    /// Reports the pool accepted.
    submitted: AtomicU64,
    /// Reports refused and handed back, kept for the next start.
    kept: Mutex<Vec<(String, Job)>>,
}

impl Intake {
    /// Submits report `number` (waiting while the queue is full); a refused
    /// report is kept, with the job the pool handed back.
    fn submit(&self, pool: &Pool, number: u32, max_work: Duration) -> Result<(), Refused> {
        let id = format!("R-{number:04}");
        let work = work_for(number, max_work);
        let report_id = id.clone();
        match pool.submit(move |ctx| analyse(ctx, &report_id, work)) {
            Ok(()) => {
                self.submitted.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
            Err(err) => {
                let reason = err.reason;
                println!(
                    "{id}: refused: {reason:?} ({err}); the job was handed back, kept for the next start"
                );
                self.kept.lock().push((id, err.into_job()));
                Err(reason)
            }
        }
    }
}

fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(options) => options,
        Err(msg) => {
            eprintln!("worker_pool_drain: {msg}");
            eprintln!(
                "usage: worker_pool_drain [--jobs N] [--workers N] [--queue N] [--work-ms N] \
                 [--deadline-ms N] [--signal [--interval-ms N]]"
            );
            return ExitCode::from(2);
        }
    };
    match run(&options) {
        Ok(code) => code,
        Err(problem) => {
            eprintln!("worker_pool_drain: {problem}");
            // A thread may still be running: leave at once rather than wait
            // for it in a destructor.
            std::process::exit(1);
        }
    }
}

fn run(options: &Options) -> Result<ExitCode, String> {
    let (trigger, stop) = quiesce::shutdown();

    // Signals first, so a SIGTERM right after the first line is not missed.
    let mut signal_thread = Threads::<()>::new(&Context::background());
    let signals_handle = if options.signal {
        let mut signals = Signals::new([SIGINT, SIGTERM]).map_err(io("cannot catch signals"))?;
        let handle = signals.handle();
        let trigger = trigger.clone();
        signal_thread
            .spawn("signals", move |_ctx| {
                // Ends when `handle.close()` is called.
                for signal in signals.forever() {
                    let name = if signal == SIGINT {
                        "SIGINT"
                    } else {
                        "SIGTERM"
                    };
                    println!("received {name}: stopping intake, draining the queue");
                    trigger.fire();
                }
            })
            .map_err(io("cannot start the signal thread"))?;
        Some(handle)
    } else {
        None
    };

    let pool = Arc::new(
        Pool::builder()
            .workers(options.workers)
            .queue(options.queue)
            .name("analysis")
            .build()
            .map_err(io("cannot start the pool"))?,
    );
    let intake = Arc::new(Intake::default());
    for number in 1..=options.jobs {
        // The first burst fits in the queue: nothing is refused here.
        if intake.submit(&pool, number, options.work).is_err() {
            return Err("the pool refused a report before any stop".into());
        }
    }

    let mut intake_thread = Threads::<()>::new(&Context::background());
    if options.signal {
        println!(
            "worker-pool: {} workers, {} reports queued, one more every {:?}; \
             waiting for SIGINT or SIGTERM (pid {})",
            options.workers,
            options.jobs,
            options.interval,
            std::process::id()
        );
        let (pool, intake) = (pool.clone(), intake.clone());
        let (first, interval, work) = (options.jobs + 1, options.interval, options.work);
        intake_thread
            .spawn("intake", move |_ctx| {
                // Keeps taking reports until the pool refuses one.
                for number in first.. {
                    std::thread::sleep(interval);
                    if intake.submit(&pool, number, work).is_err() {
                        return;
                    }
                }
            })
            .map_err(io("cannot start the intake thread"))?;
        stop.wait();
    } else {
        println!(
            "worker-pool: {} workers, {} reports queued; stopping once all are submitted",
            options.workers, options.jobs
        );
        trigger.fire();
    }

    println!(
        "stopping: closing intake; {} queued and {} running report(s) to drain, deadline {:?}",
        pool.queued(),
        pool.running(),
        options.deadline
    );
    let started = Instant::now();
    let report = pool.shutdown_deadline(started + options.deadline);
    let drained_in = started.elapsed();

    // The pool is closed: a report arriving now is refused and handed back.
    let late = intake.submit(&pool, 9999, options.work);
    let late_refused = late == Err(Refused::Closed);
    println!(
        "late submit after the stop: {}",
        match late {
            Err(Refused::Closed) => "refused with Refused::Closed, the job handed back".to_string(),
            Err(other) => format!("refused with {other:?} (expected Closed)"),
            Ok(()) => "accepted (it should have been refused)".to_string(),
        }
    );

    // Every thread of ours ends here: the intake thread has met the closed
    // pool, and closing the signals handle ends the signal loop.
    if let Some(handle) = signals_handle {
        handle.close();
    }
    for (what, threads) in [
        ("intake", &mut intake_thread),
        ("signals", &mut signal_thread),
    ] {
        let joined = threads.join_timeout(JOIN_TIMEOUT);
        if let Some(stuck) = joined.running.first() {
            return Err(format!("{what} thread still running: {stuck}"));
        }
        if let Some(panic) = joined.finished.into_iter().find_map(|f| f.result.err()) {
            return Err(format!("{what} thread {panic}"));
        }
    }

    let handed_back = report.never_started.len() as u64;
    println!(
        "report: completed {}, cancelled {}, panicked {}, never started {handed_back} (handed back), \
         stuck {}, drained in {drained_in:.2?}",
        report.completed,
        report.cancelled,
        report.panicked,
        report.stuck.len()
    );
    for worker in &report.stuck {
        println!("stuck: {worker}");
    }
    if !report.stuck.is_empty() {
        return Err("a worker is stuck past the deadline".into());
    }
    let kept = intake.kept.lock().len();
    let submitted = intake.submitted.load(Ordering::SeqCst);
    let accounted = report.completed + report.cancelled + handed_back;
    println!(
        "check: completed {} + cancelled {} + handed back {handed_back} = {accounted} of {submitted} submitted; \
         {kept} refused after the stop and kept",
        report.completed, report.cancelled
    );
    // The handed-back jobs would be persisted here for the next start.
    drop(report.never_started);
    drop(pool);
    if let Err(leaked) = quiesce::leak::check_all(Duration::from_secs(5)) {
        eprintln!("worker_pool_drain: {leaked}");
        return Ok(ExitCode::FAILURE);
    }
    if accounted != submitted || report.panicked != 0 || !late_refused {
        eprintln!("worker_pool_drain: a report is unaccounted for, or the late submit was taken");
        return Ok(ExitCode::FAILURE);
    }
    println!("exiting: every accepted report accounted for, every thread joined");
    Ok(ExitCode::SUCCESS)
}

/// Formats an I/O error with what was being done.
fn io(what: &'static str) -> impl Fn(std::io::Error) -> String {
    move |e| format!("{what}: {e}")
}

/// The simulated analysis: scoring in three steps, checking `ctx` between
/// them (past the shutdown deadline it stops half way).
fn analyse(ctx: &Context, id: &str, work: Duration) {
    for _step in ["score", "flag alerts", "store"] {
        if ctx.sleep(work / 3).is_err() {
            println!(
                "{id}: cancelled at the deadline, rolled back, to be analysed at the next start"
            );
            return;
        }
    }
    let worker = std::thread::current();
    println!(
        "{id}: analysed on {}",
        worker.name().unwrap_or("an unnamed thread")
    );
}

/// Between half of `max` and all of it, the same for a report every run.
fn work_for(number: u32, max: Duration) -> Duration {
    let half = max / 2;
    half + half * (u64::from(number) * 7919 % 100) as u32 / 100
}

fn parse_args() -> Result<Options, String> {
    let mut options = Options {
        jobs: 20,
        workers: 3,
        queue: 100,
        work: Duration::from_millis(150),
        deadline: Duration::from_secs(10),
        signal: false,
        interval: Duration::from_millis(50),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--signal" {
            options.signal = true;
            continue;
        }
        let known = [
            "--jobs",
            "--workers",
            "--queue",
            "--work-ms",
            "--deadline-ms",
            "--interval-ms",
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
            "--jobs" => options.jobs = n,
            "--workers" => options.workers = (n as usize).max(1),
            "--queue" => options.queue = n as usize,
            "--work-ms" => options.work = ms,
            "--deadline-ms" => options.deadline = ms,
            "--interval-ms" => options.interval = ms,
            _ => unreachable!("checked above"),
        }
    }
    // The first burst must fit in the queue, so that the stop finds it
    // queued (and no submit of the burst waits for room).
    if (options.jobs as usize) > options.queue {
        return Err(format!(
            "--jobs ({}) must not exceed --queue ({})",
            options.jobs, options.queue
        ));
    }
    Ok(options)
}
