//! Device uploads taken in quickly and processed in the background by a
//! fixed pool, then a shutdown that loses none: Go's `ants` goroutine pool.
//!
//! # The Go pattern
//!
//! Patients' devices upload ePRO questionnaires in bursts. The handler must
//! not start a goroutine per upload, so it hands each one to a pool of a
//! few workers and returns; when the pool is saturated it either waits or
//! is told "overloaded":
//!
//! ```go
//! pool, _ := ants.NewPool(4, ants.WithNonblocking(true))
//! var wg sync.WaitGroup
//! for _, u := range uploads {
//!     wg.Add(1)
//!     err := pool.Submit(func() { defer wg.Done(); process(u) })
//!     if errors.Is(err, ants.ErrPoolOverload) {
//!         wg.Done()
//!         // Not taken, and the error carries nothing: to retry, build
//!         // the task again from `u`, or lose the upload.
//!     }
//! }
//! wg.Wait()
//! pool.Release() // or ReleaseTimeout(d), which says "timeout", not which tasks
//! ```
//!
//! # The Rust way
//!
//! [`Pool`] has a fixed set of named workers (`upload-0` …) fed by a
//! bounded queue. [`Pool::submit`] waits while the queue is full, which
//! slows the producer down to the pace of the workers (backpressure).
//! [`Pool::try_submit`] never waits: when the queue is full it refuses with
//! [`Refused::Full`] and hands the job itself back inside the error, so the
//! producer can resubmit exactly that job later (here with
//! [`Pool::submit_job_blocking`]), run it elsewhere, or save it.
//!
//! At the end, [`Pool::shutdown`] closes intake, lets the workers run what
//! is queued until the deadline, then cancels the [`quiesce::Context`] of
//! the jobs still running, joins the workers and returns a
//! [`quiesce::ShutdownReport`]: how many jobs completed, how many were
//! cancelled, the jobs that never started (handed back, to keep for the
//! next start) and the workers stuck past the deadline, by name.
//!
//! Each upload keeps a ledger entry (queued → processing → stored, or
//! rolled back if it was cancelled half way), and the example checks that
//! every upload is accounted for exactly once:
//! `completed + cancelled + handed back == submitted`.
//!
//! # Running it
//!
//! ```text
//! cargo run --example pool_uploads
//! cargo run --example pool_uploads -- --uploads 200 --work-ms 20 --deadline-ms 100
//! ```
//!
//! The defaults give the pool time to drain: everything completes. A short
//! `--deadline-ms` stops it early: some uploads are cancelled half way and
//! rolled back, the queued ones are handed back, none is lost.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use quiesce::{Context, Pool, Threads, pool::Refused};

/// How long `main` waits for the producer thread.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

struct Options {
    uploads: u32,
    workers: usize,
    queue: usize,
    /// The longest an upload takes; each takes between half of it and all.
    work: Duration,
    deadline: Duration,
}

/// Where each upload is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    /// Accepted by the pool, not started.
    Queued,
    /// A worker is on it.
    Processing,
    /// Processed and stored.
    Stored,
    /// Cancelled half way and rolled back: to be processed again.
    RolledBack,
}

/// One entry per upload accepted by the pool.
type Ledger = Arc<Mutex<Vec<State>>>;

/// What the producer did.
struct Produced {
    submitted: u32,
    /// `try_submit` found the queue full and handed the upload back.
    handed_back_full: u32,
}

fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(options) => options,
        Err(msg) => {
            eprintln!("pool_uploads: {msg}");
            eprintln!(
                "usage: pool_uploads [--uploads N] [--workers N] [--queue N] [--work-ms N] [--deadline-ms N]"
            );
            return ExitCode::from(2);
        }
    };
    match run(&options) {
        Ok(code) => code,
        Err(problem) => {
            eprintln!("pool_uploads: {problem}");
            // A thread may still be running: leave at once rather than wait
            // for it in a destructor.
            std::process::exit(1);
        }
    }
}

fn run(options: &Options) -> Result<ExitCode, String> {
    let started = Instant::now();
    let pool = Arc::new(
        Pool::builder()
            .workers(options.workers)
            .queue(options.queue)
            .name("upload")
            .build()
            .map_err(|e| format!("cannot start the pool: {e}"))?,
    );
    let ledger: Ledger = Arc::new(Mutex::new(Vec::new()));
    println!(
        "pool: {} workers, queue of {}; {} device uploads arriving",
        options.workers, options.queue, options.uploads
    );

    // The producer: the intake side, on its own named thread.
    let mut producer = Threads::<Produced>::new(&Context::background());
    {
        let (pool, ledger) = (pool.clone(), ledger.clone());
        let (uploads, work) = (options.uploads, options.work);
        producer
            .spawn("device-intake", move |_ctx| {
                produce(&pool, &ledger, uploads, work)
            })
            .map_err(|e| format!("cannot start the producer: {e}"))?;
    }
    let report = producer.join_timeout(JOIN_TIMEOUT);
    if let Some(stuck) = report.running.first() {
        return Err(format!("producer still running: {stuck}"));
    }
    let produced = match report.finished.into_iter().next().map(|f| f.result) {
        Some(Ok(produced)) => produced,
        Some(Err(panic)) => return Err(format!("the producer {panic}")),
        None => return Err("the producer is missing from the join report".into()),
    };
    println!(
        "producer: {} uploads submitted in {:.2?}; queue full {} time(s): \
         try_submit handed the upload back, resubmitted with backpressure",
        produced.submitted,
        started.elapsed(),
        produced.handed_back_full
    );
    println!(
        "shutting down: {} queued, {} running, deadline {:?}",
        pool.queued(),
        pool.running(),
        options.deadline
    );

    let report = pool.shutdown_deadline(Instant::now() + options.deadline);
    let handed_back = report.never_started.len() as u64;
    println!(
        "report: completed {}, cancelled {}, panicked {}, never started {} (handed back), stuck {}",
        report.completed,
        report.cancelled,
        report.panicked,
        handed_back,
        report.stuck.len()
    );
    for worker in &report.stuck {
        println!("stuck: {worker}");
    }
    if !report.stuck.is_empty() {
        return Err("a worker is stuck past the deadline".into());
    }
    // The handed-back jobs are kept for the next start; here we only count
    // them (dropping a `Job` never runs it).
    drop(report.never_started);

    let ledger = ledger.lock().clone();
    let count = |state| ledger.iter().filter(|s| **s == state).count() as u64;
    let (stored, rolled_back, queued) = (
        count(State::Stored),
        count(State::RolledBack),
        count(State::Queued),
    );
    let submitted = u64::from(produced.submitted);
    let accounted = report.completed + report.cancelled + handed_back;
    println!(
        "check: completed {} + cancelled {} + handed back {handed_back} = {accounted} of {submitted} submitted",
        report.completed, report.cancelled
    );
    // A job that stores its upload just as the deadline passes counts as
    // cancelled in the report (it returned after the cancel) but stored in
    // the ledger; so compare the sums.
    let consistent = accounted == submitted
        && ledger.len() as u64 == submitted
        && stored + rolled_back == report.completed + report.cancelled
        && rolled_back <= report.cancelled
        && queued == handed_back
        && report.panicked == 0;
    if !consistent {
        eprintln!(
            "pool_uploads: the ledger disagrees: stored {stored}, rolled back {rolled_back}, \
             still queued {queued}, entries {}",
            ledger.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    println!(
        "ledger: {stored} stored, {rolled_back} rolled back, {queued} kept for the next start; lost 0"
    );

    drop(pool);
    if let Err(leaked) = quiesce::leak::check_all(Duration::from_secs(5)) {
        eprintln!("pool_uploads: {leaked}");
        return Ok(ExitCode::FAILURE);
    }
    println!("all threads joined in {:.2?}", started.elapsed());
    Ok(ExitCode::SUCCESS)
}

/// Submits every upload: `try_submit` first; when the queue is full the
/// job comes back and is resubmitted with `submit_job_blocking`, which
/// waits for room.
fn produce(pool: &Pool, ledger: &Ledger, uploads: u32, max_work: Duration) -> Produced {
    let mut produced = Produced {
        submitted: 0,
        handed_back_full: 0,
    };
    for upload in 0..uploads {
        // The ledger entry exists before the job can run.
        let slot = {
            let mut ledger = ledger.lock();
            ledger.push(State::Queued);
            ledger.len() - 1
        };
        let job_ledger = ledger.clone();
        let work = work_for(upload, max_work);
        let job = move |ctx: &Context| process_upload(ctx, &job_ledger, slot, work);
        let refused = match pool.try_submit(job) {
            Ok(()) => None,
            Err(err) if err.reason == Refused::Full => {
                // The job itself came back: no copy of the upload needed.
                produced.handed_back_full += 1;
                pool.submit_job_blocking(err.into_job()).err()
            }
            Err(err) => Some(err),
        };
        if let Some(err) = refused {
            // Not taken (the pool is closing): this upload is not ours to
            // count; the device will send it again.
            println!("upload {upload}: {err}");
            ledger.lock().pop();
            break;
        }
        produced.submitted += 1;
    }
    produced
}

/// The simulated processing: three steps, checking `ctx` between them; a
/// cancelled upload is rolled back so it can be processed again later.
fn process_upload(ctx: &Context, ledger: &Ledger, slot: usize, work: Duration) {
    ledger.lock()[slot] = State::Processing;
    let step = work / 3;
    for _step in ["validate", "score", "store"] {
        if ctx.sleep(step).is_err() {
            ledger.lock()[slot] = State::RolledBack;
            return;
        }
    }
    ledger.lock()[slot] = State::Stored;
}

/// Between half of `max` and all of it, the same for an upload every run.
fn work_for(upload: u32, max: Duration) -> Duration {
    let half = max / 2;
    half + half * (u64::from(upload) * 7919 % 100) as u32 / 100
}

fn parse_args() -> Result<Options, String> {
    let mut options = Options {
        uploads: 500,
        workers: 4,
        queue: 32,
        work: Duration::from_millis(12),
        deadline: Duration::from_secs(20),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let known = [
            "--uploads",
            "--workers",
            "--queue",
            "--work-ms",
            "--deadline-ms",
        ];
        if !known.contains(&arg.as_str()) {
            return Err(format!("unknown argument: {arg}"));
        }
        let value = args.next().ok_or(format!("{arg} needs a value"))?;
        let n: u64 = value
            .parse()
            .map_err(|_| format!("{arg}: not a number: {value}"))?;
        let as_usize = || usize::try_from(n).map_err(|e| format!("{arg}: {e}"));
        match arg.as_str() {
            "--uploads" => options.uploads = u32::try_from(n).map_err(|e| format!("{arg}: {e}"))?,
            "--workers" => options.workers = as_usize()?.max(1),
            "--queue" => options.queue = as_usize()?,
            "--work-ms" => options.work = Duration::from_millis(n),
            "--deadline-ms" => options.deadline = Duration::from_millis(n),
            _ => unreachable!("checked above"),
        }
    }
    Ok(options)
}
