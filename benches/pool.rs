//! Pool benchmarks: quiesce's `Pool`, `scope` and `Group` against peer
//! crates and plain std, in one run.
//!
//! Run everything (about two and a half minutes of measuring on a quiet
//! 2-core machine, up to twice that when other processes load it, plus the
//! build):
//!
//! ```text
//! CARGO_TARGET_DIR=target/bench-helper cargo bench --bench pool
//! ```
//!
//! A criterion filter narrows it, e.g. `cargo bench --bench pool -- pool_1m_noop`.
//! `cargo bench --bench pool -- --test` runs every routine once (smoke test).
//!
//! How to read it: every line is a batch of jobs with
//! `Throughput::Elements(jobs)`, so criterion's `thrpt` column is jobs per
//! second and `time / jobs` is the cost of one job. Before each group the
//! bench prints the job count of its lines. At the end it prints a
//! markdown table: ns/job of every line (median and mean of criterion's
//! measured samples; the median is steadier when other processes compete
//! for the cores) and its ratio, by median, to the group's reference line
//! (the bare bounded channel in groups 1 and 2, the sequential loop in
//! group 3, the std scope in group 4). The `interleaved` table (5) comes
//! just before it.
//!
//! What is measured:
//!
//! 1. `pool_1m_noop` — 1,000,000 no-op jobs on 2 worker threads, the
//!    submitting thread being a third (except rayon's, see below). Every
//!    job is a zero-sized closure, so boxing it allocates nothing, except in
//!    rayon, whose `spawn` wraps it with a scope pointer and so allocates
//!    each job. Lines:
//!    - `quiesce_pool/queue_N` — a fresh `Pool::builder().workers(2)
//!      .queue(N)` per iteration; every job through `submit` (blocking on a
//!      full queue), then `shutdown(now + 60 s)`, which drains the queue
//!      and joins the workers. `queue_128` is the default (64 per worker).
//!      Building the pool (2 thread spawns) and shutting it down are inside
//!      the timing: about 0.1 ns per job at this count, and the same as the
//!      bare channel line pays.
//!    - `quiesce_pool_reused/queue_1024` — one pool for the whole line;
//!      each iteration submits the jobs, then 2 barrier jobs that meet the
//!      caller on a `Barrier(3)`: the queue is FIFO and each worker runs
//!      one job at a time, so once both workers are in the barrier every
//!      earlier job has returned. Tells whether the per-iteration build +
//!      shutdown matters (it should not: equal to `queue_1024` within
//!      noise).
//!    - `crossbeam_channel/bounded_N` and `/unbounded` — the floor: two
//!      `std::thread`s looping `for job in rx { job() }` over a
//!      `crossbeam_channel` of `Box<dyn FnOnce() + Send>`, fresh per
//!      iteration; send every job, drop the sender, join. The bounded one
//!      with the pool's queue capacity is the reference of the ratios.
//!    - `threadpool` — `threadpool::ThreadPool::new(2)`, `execute` each job,
//!      then `join()`. One pool for the line (threadpool cannot join its
//!      threads; the bench waits for them to exit after dropping it, see
//!      `exit_watch`).
//!    - `rayon_scope` — a 2-thread `rayon::ThreadPool`,
//!      `pool.scope(|s| for _ in 0..N { s.spawn(|_| ()) })`. Note that the
//!      scope's body runs on one of the pool's own 2 threads, so rayon has
//!      2 busy threads where the other lines have 3 on 2 cores.
//!    - `thread_per_job` — `std::thread::spawn` + `join` per job, 2,000
//!      jobs (all spawned, then all joined), reported per job.
//! 2. `pool_1m_capture` — the same 1,000,000 jobs through the bare channel,
//!    the pool (queue 1,024), threadpool and rayon, but each job owns a
//!    `u64` (`move |_| { black_box(i); }`), so every line allocates and
//!    frees one box per job, as real jobs do.
//! 3. `borrowed_sum` — 10,000 jobs, each summing its own 256-element chunk
//!    of a borrowed `Vec<u64>` (20 MB), results collected and checked:
//!    `quiesce::scope(2, &Context::background(), ..)` (one `JobHandle` per
//!    job, joined), `rayon`'s `pool.scope` on a 2-thread pool (each job
//!    writes its slot of a result vector), `std::thread::scope` with one
//!    thread per job (1,000 jobs only, reported per job), and the same
//!    loop on the calling thread, which is the reference: a line's excess
//!    over it is the per-job overhead (minus whatever the second core
//!    buys back).
//! 4. `group_1000_tasks` — `quiesce::Group` with `set_limit(2)`, spawning
//!    1,000 no-op tasks (a named thread each, at most 2 at once), then
//!    `wait()`, against `std::thread::scope` spawning the same 1,000
//!    threads with no limit.
//! 5. `interleaved` — the main lines of groups 1 and 2 once more, outside
//!    criterion: 10 rounds, each running every line once, back to back, so
//!    a burst of load from other processes hits all lines of a round
//!    alike. Printed as its own table: min and median ns/job, and the
//!    median over rounds of each line's ratio to the same round's bare
//!    channel. On a shared machine this ratio is steadier than criterion's
//!    numbers, which are taken minutes apart.
//!
//! The machine these were written on has 2 cores and other builds running:
//! numbers are noisy, so run twice and compare. Every thread a bench
//! starts is joined (or, for threadpool and rayon, seen to exit) before its
//! bench function returns.

use std::cell::RefCell;
use std::convert::Infallible;
use std::hint::black_box;
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use quiesce::{Context, Group, Pool};

const WORKERS: usize = 2;
const JOBS: u64 = 1_000_000;
const THREAD_JOBS: u64 = 2_000;
const QUEUES: [usize; 2] = [1024, 64 * WORKERS];

const CHUNKS: usize = 10_000;
const CHUNK_LEN: usize = 256;
const STD_SCOPE_JOBS: usize = 1_000;

const GROUP_TASKS: u64 = 1_000;

const SAMPLES: usize = 10;
/// Rounds of the interleaved comparison.
const ROUNDS: usize = 10;
const MEASURE: Duration = Duration::from_secs(3);
const WARM_UP: Duration = Duration::from_secs(1);

type BoxedJob = Box<dyn FnOnce() + Send>;

/// One line of the summary printed at the end.
struct Row {
    group: &'static str,
    line: String,
    /// ns/job over all measured iterations.
    mean: f64,
    /// ns/job of the median sample: steadier than the mean when other
    /// processes compete for the cores.
    median: f64,
}

static RESULTS: Mutex<Vec<Row>> = Mutex::new(Vec::new());

/// `true` when criterion runs each routine only once (`--test`, or not
/// under `cargo bench`).
fn smoke_test() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--test") || !args.iter().any(|a| a == "--bench")
}

/// One criterion group whose lines are also kept for the summary.
struct Lines<'c> {
    group: BenchmarkGroup<'c, WallTime>,
    name: &'static str,
}

impl<'c> Lines<'c> {
    fn new(c: &'c mut Criterion, name: &'static str) -> Lines<'c> {
        let mut group = c.benchmark_group(name);
        group
            .sampling_mode(SamplingMode::Flat)
            .sample_size(SAMPLES)
            .measurement_time(MEASURE)
            .warm_up_time(WARM_UP);
        Lines { group, name }
    }

    /// Runs one line with `Throughput::Elements(jobs)` and records its
    /// ns/job for the summary: the mean over criterion's measured samples
    /// (in flat sampling, the last `SAMPLES` calls of the routine; the
    /// warm-up calls before them are left out).
    fn line<F: FnMut()>(&mut self, name: &str, jobs: u64, mut routine: F) {
        self.group.throughput(Throughput::Elements(jobs));
        let mut calls: Vec<(u64, Duration)> = Vec::new();
        self.group.bench_function(name, |b| {
            b.iter_custom(|n| {
                let start = Instant::now();
                for _ in 0..n {
                    routine();
                }
                let elapsed = start.elapsed();
                calls.push((n, elapsed));
                elapsed
            })
        });
        let measured = &calls[calls.len().saturating_sub(SAMPLES)..];
        let mut per_job: Vec<f64> = measured
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, d)| d.as_nanos() as f64 / (*n as f64 * jobs as f64))
            .collect();
        if per_job.is_empty() {
            return;
        }
        per_job.sort_by(f64::total_cmp);
        let iters: u64 = measured.iter().map(|(n, _)| n).sum();
        let total: Duration = measured.iter().map(|(_, d)| *d).sum();
        RESULTS.lock().unwrap().push(Row {
            group: self.name,
            line: name.to_string(),
            mean: total.as_nanos() as f64 / (iters as f64 * jobs as f64),
            median: per_job[per_job.len() / 2],
        });
    }

    fn finish(self) {
        self.group.finish();
    }
}

// ---------------------------------------------------------------------------
// Waiting for threads we cannot join
// ---------------------------------------------------------------------------

thread_local! {
    /// Dropped when its thread exits: the sender it holds then disconnects
    /// (once every watched thread has exited) the watcher's receiver.
    static EXIT_SIGNAL: RefCell<Option<Sender<()>>> = const { RefCell::new(None) };
}

/// Marks `threads` threads of a pool: returns the jobs to run on it (one
/// per thread, each blocking on a barrier until all are in, so each lands
/// on a different thread) and a receiver that disconnects once every one
/// of those threads has exited (their thread-local destructors ran).
fn exit_watch(threads: usize) -> (Vec<impl FnOnce() + Send + 'static>, Receiver<()>) {
    let (tx, rx) = bounded::<()>(0);
    let barrier = Arc::new(Barrier::new(threads));
    let jobs = (0..threads)
        .map(|_| {
            let (tx, barrier) = (tx.clone(), barrier.clone());
            move || {
                EXIT_SIGNAL.with(|s| *s.borrow_mut() = Some(tx));
                barrier.wait();
            }
        })
        .collect();
    (jobs, rx)
}

/// Waits (at most 10 s) for the receiver of [`exit_watch`] to disconnect.
fn wait_exited(rx: &Receiver<()>, what: &str) {
    let res = rx.recv_timeout(Duration::from_secs(10));
    assert!(
        matches!(res, Err(crossbeam_channel::RecvTimeoutError::Disconnected)),
        "{what}: worker threads still alive 10 s after the pool was dropped"
    );
}

// ---------------------------------------------------------------------------
// 1. One million no-op jobs
// ---------------------------------------------------------------------------

fn far() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

fn submit<F: FnOnce(&Context) + Send + 'static>(pool: &Pool, f: F) {
    if pool.submit(f).is_err() {
        panic!("submit refused on an open pool");
    }
}

/// Submits job `i`: a no-op zero-sized closure, or with `CAPTURE` one that
/// owns `i` (so boxing it allocates, as a real job's box does).
fn submit_job<const CAPTURE: bool>(pool: &Pool, i: u64) {
    if CAPTURE {
        submit(pool, move |_ctx| {
            black_box(i);
        });
    } else {
        submit(pool, |_ctx| ());
    }
}

fn boxed_job<const CAPTURE: bool>(i: u64) -> BoxedJob {
    if CAPTURE {
        Box::new(move || {
            black_box(i);
        })
    } else {
        Box::new(|| ())
    }
}

fn quiesce_pool_run<const CAPTURE: bool>(queue: usize) {
    let pool = Pool::builder()
        .workers(WORKERS)
        .queue(queue)
        .name("bench-pool")
        .build()
        .expect("start pool");
    for i in 0..JOBS {
        submit_job::<CAPTURE>(&pool, i);
    }
    let report = pool.shutdown_deadline(far());
    assert_eq!(report.completed, JOBS);
    assert!(report.never_started.is_empty() && report.stuck.is_empty());
}

fn channel_run<const CAPTURE: bool>(tx: Sender<BoxedJob>, rx: Receiver<BoxedJob>) {
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let rx = rx.clone();
            thread::spawn(move || {
                for job in rx {
                    job();
                }
            })
        })
        .collect();
    drop(rx);
    for i in 0..JOBS {
        tx.send(boxed_job::<CAPTURE>(i)).expect("workers alive");
    }
    drop(tx);
    for w in workers {
        w.join().expect("channel worker");
    }
}

fn threadpool_run<const CAPTURE: bool>(pool: &threadpool::ThreadPool) {
    for i in 0..JOBS {
        if CAPTURE {
            pool.execute(move || {
                black_box(i);
            });
        } else {
            pool.execute(|| ());
        }
    }
    pool.join();
}

fn rayon_run<const CAPTURE: bool>(pool: &rayon::ThreadPool) {
    pool.scope(|s| {
        for i in 0..JOBS {
            if CAPTURE {
                s.spawn(move |_| {
                    black_box(i);
                });
            } else {
                s.spawn(|_| ());
            }
        }
    })
}

fn threadpool_line<const CAPTURE: bool>(g: &mut Lines<'_>) {
    let pool = threadpool::ThreadPool::new(WORKERS);
    let (marks, exited) = exit_watch(WORKERS);
    for mark in marks {
        pool.execute(mark);
    }
    pool.join();
    g.line("threadpool", JOBS, || threadpool_run::<CAPTURE>(&pool));
    assert_eq!(pool.panic_count(), 0);
    drop(pool);
    wait_exited(&exited, "threadpool");
}

/// A 2-thread rayon pool, and a receiver that gets one message per
/// thread as it exits.
fn rayon_pool() -> (rayon::ThreadPool, Receiver<()>) {
    let (exit_tx, exit_rx) = unbounded::<()>();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(WORKERS)
        .exit_handler(move |_| {
            let _ = exit_tx.send(());
        })
        .build()
        .expect("rayon pool");
    (pool, exit_rx)
}

/// Drops a pool from [`rayon_pool`] and waits for its threads to exit.
fn rayon_drop(pool: rayon::ThreadPool, exited: Receiver<()>) {
    drop(pool);
    for _ in 0..WORKERS {
        exited
            .recv_timeout(Duration::from_secs(10))
            .expect("rayon worker exits after its pool is dropped");
    }
}

fn rayon_line<const CAPTURE: bool>(g: &mut Lines<'_>) {
    let (pool, exited) = rayon_pool();
    g.line("rayon_scope", JOBS, || rayon_run::<CAPTURE>(&pool));
    rayon_drop(pool, exited);
}

fn pool_1m_noop(c: &mut Criterion) {
    let mut g = Lines::new(c, "pool_1m_noop");
    println!("pool_1m_noop: {JOBS} jobs per line (thread_per_job: {THREAD_JOBS})");

    for queue in QUEUES {
        g.line(&format!("crossbeam_channel/bounded_{queue}"), JOBS, || {
            let (tx, rx) = bounded::<BoxedJob>(queue);
            channel_run::<false>(tx, rx);
        });
        g.line(&format!("quiesce_pool/queue_{queue}"), JOBS, || {
            quiesce_pool_run::<false>(queue)
        });
    }
    g.line("crossbeam_channel/unbounded", JOBS, || {
        let (tx, rx) = unbounded::<BoxedJob>();
        channel_run::<false>(tx, rx);
    });

    {
        let pool = Pool::builder()
            .workers(WORKERS)
            .queue(QUEUES[0])
            .name("bench-pool")
            .build()
            .expect("start pool");
        let barrier = Arc::new(Barrier::new(WORKERS + 1));
        let mut expected = 0;
        g.line("quiesce_pool_reused/queue_1024", JOBS, || {
            for i in 0..JOBS {
                submit_job::<false>(&pool, i);
            }
            for _ in 0..WORKERS {
                let barrier = barrier.clone();
                submit(&pool, move |_ctx| {
                    barrier.wait();
                });
            }
            barrier.wait();
            expected += JOBS + WORKERS as u64;
        });
        let report = pool.shutdown_deadline(far());
        assert_eq!(report.completed, expected);
    }

    threadpool_line::<false>(&mut g);
    rayon_line::<false>(&mut g);

    g.line("thread_per_job", THREAD_JOBS, || {
        let handles: Vec<_> = (0..THREAD_JOBS).map(|_| thread::spawn(|| ())).collect();
        for h in handles {
            h.join().expect("thread");
        }
    });
    g.finish();
}

fn pool_1m_capture(c: &mut Criterion) {
    let mut g = Lines::new(c, "pool_1m_capture");
    println!("pool_1m_capture: {JOBS} jobs per line, each owning a u64");
    let queue = QUEUES[0];
    g.line(&format!("crossbeam_channel/bounded_{queue}"), JOBS, || {
        let (tx, rx) = bounded::<BoxedJob>(queue);
        channel_run::<true>(tx, rx);
    });
    g.line(&format!("quiesce_pool/queue_{queue}"), JOBS, || {
        quiesce_pool_run::<true>(queue)
    });
    threadpool_line::<true>(&mut g);
    rayon_line::<true>(&mut g);
    g.finish();
}

// ---------------------------------------------------------------------------
// 2. Jobs over borrowed data
// ---------------------------------------------------------------------------

fn chunk_sum(chunk: &[u64]) -> u64 {
    black_box(chunk)
        .iter()
        .fold(0u64, |acc, &x| acc.wrapping_add(x ^ (x >> 7)))
}

fn borrowed_sum(c: &mut Criterion) {
    let mut g = Lines::new(c, "borrowed_sum");
    println!(
        "borrowed_sum: {CHUNKS} jobs of {CHUNK_LEN} u64 each (std_thread_scope: {STD_SCOPE_JOBS})"
    );
    let data: Vec<u64> = (0..(CHUNKS * CHUNK_LEN) as u64).collect();
    let expected: u64 = data
        .chunks(CHUNK_LEN)
        .map(chunk_sum)
        .fold(0, u64::wrapping_add);
    let expected_std: u64 = data
        .chunks(CHUNK_LEN)
        .take(STD_SCOPE_JOBS)
        .map(chunk_sum)
        .fold(0, u64::wrapping_add);
    let data = &data;

    g.line("sequential", CHUNKS as u64, || {
        let total = data
            .chunks(CHUNK_LEN)
            .map(chunk_sum)
            .fold(0, u64::wrapping_add);
        assert_eq!(total, expected);
    });

    let background = Context::background();
    g.line("quiesce_scope", CHUNKS as u64, || {
        let total = quiesce::scope(WORKERS, &background, |s| {
            let handles: Vec<_> = data
                .chunks(CHUNK_LEN)
                .map(|chunk| s.spawn(move |_ctx| chunk_sum(chunk)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("job ran"))
                .fold(0, u64::wrapping_add)
        });
        assert_eq!(total, expected);
    });

    {
        let (pool, exited) = rayon_pool();
        g.line("rayon_scope", CHUNKS as u64, || {
            let mut out = vec![0u64; CHUNKS];
            pool.scope(|s| {
                for (chunk, slot) in data.chunks(CHUNK_LEN).zip(out.iter_mut()) {
                    s.spawn(move |_| *slot = chunk_sum(chunk));
                }
            });
            assert_eq!(out.iter().fold(0u64, |a, &x| a.wrapping_add(x)), expected);
        });
        rayon_drop(pool, exited);
    }

    g.line("std_thread_scope", STD_SCOPE_JOBS as u64, || {
        let total = thread::scope(|s| {
            let handles: Vec<_> = data
                .chunks(CHUNK_LEN)
                .take(STD_SCOPE_JOBS)
                .map(|chunk| s.spawn(move || chunk_sum(chunk)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .fold(0, u64::wrapping_add)
        });
        assert_eq!(total, expected_std);
    });
    g.finish();
}

// ---------------------------------------------------------------------------
// 3. Group with a limit
// ---------------------------------------------------------------------------

fn group_tasks(c: &mut Criterion) {
    let mut g = Lines::new(c, "group_1000_tasks");
    println!("group_1000_tasks: {GROUP_TASKS} no-op tasks per line");

    g.line("std_thread_scope", GROUP_TASKS, || {
        thread::scope(|s| {
            for _ in 0..GROUP_TASKS {
                s.spawn(|| ());
            }
        });
    });
    g.line("quiesce_group_limit_2", GROUP_TASKS, || {
        let mut group = Group::<(), Infallible>::new();
        group.set_limit(WORKERS).expect("no task running yet");
        for _ in 0..GROUP_TASKS {
            group.spawn("task", |_ctx| Ok(())).expect("spawn");
        }
        let values = group.wait().expect("no task fails");
        assert_eq!(values.len() as u64, GROUP_TASKS);
    });
    g.finish();
}

// ---------------------------------------------------------------------------
// Groups 1 and 2, interleaved
// ---------------------------------------------------------------------------

/// The main lines of groups 1 and 2 again, interleaved: each round runs
/// every line once, back to back, so a burst of load from other processes
/// hits all of them alike. Printed: min and median ns/job over the rounds,
/// and the median over rounds of each line's ratio to the bare channel of
/// the same round.
fn interleaved(_c: &mut Criterion) {
    if smoke_test() || !filter_matches("interleaved") {
        return;
    }
    let threadpool = threadpool::ThreadPool::new(WORKERS);
    let (marks, threadpool_exited) = exit_watch(WORKERS);
    for mark in marks {
        threadpool.execute(mark);
    }
    threadpool.join();
    let (rayon, rayon_exited) = rayon_pool();
    let queue = QUEUES[0];
    type Run<'a> = (&'static str, Box<dyn Fn() + 'a>);
    let lines: Vec<Run<'_>> = vec![
        (
            "noop/crossbeam_channel/bounded_1024",
            Box::new(|| {
                let (tx, rx) = bounded::<BoxedJob>(queue);
                channel_run::<false>(tx, rx);
            }),
        ),
        (
            "noop/quiesce_pool/queue_1024",
            Box::new(|| quiesce_pool_run::<false>(queue)),
        ),
        (
            "noop/quiesce_pool/queue_128",
            Box::new(|| quiesce_pool_run::<false>(QUEUES[1])),
        ),
        (
            "noop/threadpool",
            Box::new(|| threadpool_run::<false>(&threadpool)),
        ),
        ("noop/rayon_scope", Box::new(|| rayon_run::<false>(&rayon))),
        (
            "capture/crossbeam_channel/bounded_1024",
            Box::new(|| {
                let (tx, rx) = bounded::<BoxedJob>(queue);
                channel_run::<true>(tx, rx);
            }),
        ),
        (
            "capture/quiesce_pool/queue_1024",
            Box::new(|| quiesce_pool_run::<true>(queue)),
        ),
        (
            "capture/threadpool",
            Box::new(|| threadpool_run::<true>(&threadpool)),
        ),
        (
            "capture/rayon_scope",
            Box::new(|| rayon_run::<true>(&rayon)),
        ),
    ];
    // One untimed round to warm up.
    for (_, run) in &lines {
        run();
    }
    let mut ns: Vec<Vec<f64>> = vec![Vec::new(); lines.len()];
    for _ in 0..ROUNDS {
        for (i, (_, run)) in lines.iter().enumerate() {
            let start = Instant::now();
            run();
            ns[i].push(start.elapsed().as_nanos() as f64 / JOBS as f64);
        }
    }
    drop(lines);
    drop(threadpool);
    wait_exited(&threadpool_exited, "threadpool");
    rayon_drop(rayon, rayon_exited);

    println!();
    println!("interleaved: {ROUNDS} rounds of {JOBS} jobs per line");
    println!("| line | min ns/job | median ns/job | median ratio to the channel of its round |");
    println!("|---|---:|---:|---:|");
    let names = [
        "noop/crossbeam_channel/bounded_1024",
        "noop/quiesce_pool/queue_1024",
        "noop/quiesce_pool/queue_128",
        "noop/threadpool",
        "noop/rayon_scope",
        "capture/crossbeam_channel/bounded_1024",
        "capture/quiesce_pool/queue_1024",
        "capture/threadpool",
        "capture/rayon_scope",
    ];
    for (i, name) in names.iter().enumerate() {
        let base = if name.starts_with("noop/") { 0 } else { 5 };
        let mut ratios: Vec<f64> = ns[i].iter().zip(&ns[base]).map(|(a, b)| a / b).collect();
        ratios.sort_by(f64::total_cmp);
        let mut v = ns[i].clone();
        v.sort_by(f64::total_cmp);
        println!(
            "| {name} | {:.1} | {:.1} | {:.2}x |",
            v[0],
            v[v.len() / 2],
            ratios[ratios.len() / 2]
        );
    }
}

/// `false` when a criterion filter was given that does not match `name`.
fn filter_matches(name: &str) -> bool {
    // criterion options that take a value (the value is not a filter).
    const WITH_VALUE: [&str; 12] = [
        "--save-baseline",
        "--baseline",
        "--baseline-lenient",
        "--load-baseline",
        "--profile-time",
        "--sample-size",
        "--warm-up-time",
        "--measurement-time",
        "--nresamples",
        "--noise-threshold",
        "--significance-level",
        "--output-format",
    ];
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut filters = Vec::new();
    let mut skip_next = false;
    for arg in &args {
        if std::mem::take(&mut skip_next) {
            continue;
        }
        if arg.starts_with('-') {
            skip_next = WITH_VALUE.contains(&arg.as_str());
        } else {
            filters.push(arg.as_str());
        }
    }
    filters.is_empty() || filters.iter().any(|f| name.contains(f))
}

// ---------------------------------------------------------------------------
// Summary
// ---------------------------------------------------------------------------

/// The line each group's ratios are relative to.
fn reference(group: &str) -> &'static str {
    match group {
        "pool_1m_noop" | "pool_1m_capture" => "crossbeam_channel/bounded_1024",
        "borrowed_sum" => "sequential",
        _ => "std_thread_scope",
    }
}

fn summary(_c: &mut Criterion) {
    let results = RESULTS.lock().unwrap();
    if results.is_empty() || smoke_test() {
        return;
    }
    println!();
    println!("| group | line | ns/job (median) | ns/job (mean) | ratio (median) |");
    println!("|---|---|---:|---:|---:|");
    for row in results.iter() {
        let base = results
            .iter()
            .find(|r| r.group == row.group && r.line == reference(row.group))
            .map(|r| r.median);
        let ratio = base.map_or("-".to_string(), |b| format!("{:.2}x", row.median / b));
        println!(
            "| {} | {} | {:.1} | {:.1} | {ratio} |",
            row.group, row.line, row.median, row.mean
        );
    }
    let mut groups: Vec<&str> = results.iter().map(|r| r.group).collect();
    groups.dedup();
    println!(
        "ns/job over criterion's {SAMPLES} measured samples (warm-up left out). Ratio to: {}.",
        groups
            .iter()
            .map(|g| format!("{g} -> {}", reference(g)))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

criterion_group!(
    benches,
    pool_1m_noop,
    pool_1m_capture,
    borrowed_sum,
    group_tasks,
    interleaved,
    summary
);
criterion_main!(benches);
