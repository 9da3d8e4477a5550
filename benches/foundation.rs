//! Foundation benchmarks: quiesce's primitives against peer crates, in one run.
//!
//! Run everything (about two minutes of measuring, plus the build):
//!
//! ```text
//! CARGO_TARGET_DIR=target/bench-helper cargo bench --bench foundation
//! ```
//!
//! A criterion filter narrows it, e.g. `cargo bench --bench foundation -- wakeup`.
//! `cargo bench --bench foundation -- --test` runs every routine once (smoke
//! test, short latency sampling).
//!
//! What is measured, and what each comparison means:
//!
//! 1. `context_child` — making and dropping one child of a long-lived,
//!    cancellable parent: `drop(root.with_cancel())` (the dropped guard cancels).
//!    The peer is tokio-util's `CancellationToken::child_token()` on a
//!    long-lived token, then dropping the child (which unlinks it, as our
//!    guard does). Both link the child into the parent and unlink it again;
//!    the number is the cost of the `defer cancel()` pattern per call.
//!    Ours only: `with_timeout(30s)` (a child with its own deadline, so one
//!    entry in the shared timer, added and removed) and a child of
//!    `Context::background()` (nothing to link). Goal: `with_cancel` at most
//!    1.0x the peer.
//! 2. `cancel_fanout_100k` — cancelling a root with 100,000 live
//!    descendants, in two shapes: 100,000 direct children (`flat`), and
//!    1,000 children with 99 children each (`tree_1000x99`). Only the root's
//!    cancel is timed (`iter_batched`, one tree per iteration); building and
//!    freeing the tree are not. The peer does the same with child tokens.
//!    Ours only: the flat shape where every child's `done()` receiver exists
//!    (as when each is watched in a `select!`), so the cancel also
//!    disconnects 100,000 channels. Goal: at most 1.0x the peer.
//! 3. `wakeup` — latency from `cancel()` on this thread to a thread blocked in
//!    `crossbeam_channel::select!` on `ctx.done()` plus an idle channel
//!    returning from the `select!`. The criterion line is the mean; before it
//!    the bench prints p50/p90/p99/max over 2,000 samples for: our context,
//!    the same `select!` woken by a plain message instead (crossbeam's own
//!    floor), `quiesce::shutdown()`'s `Done`, and a `std::sync::Condvar`
//!    wait (the classic baseline). Each sample waits until the waiting thread
//!    is really asleep (Linux: its `/proc` state is `S`) before firing, so
//!    it measures a real wake-up, not a spin. Goal: p99 under 1 ms.
//! 4. `waitgroup` — `let g = wg.add(); drop(g)` against crossbeam-utils'
//!    `WaitGroup` clone + drop (its `Add(1)` + `Done()`). Ours also with one
//!    guard held throughout, so the count never reaches zero (as
//!    crossbeam's, whose own handle counts one, never does).
//! 5. `counters_read` — one `get` of a 64-key `Counters<String>` while one
//!    other thread `add`s in a tight loop, against the same map (counts plus
//!    total) behind `std::sync::RwLock`, `std::sync::Mutex` and
//!    `parking_lot::RwLock` used directly. Printed too: the writer's
//!    throughput during each run (a lock that makes reads cheap by starving
//!    the writer shows it there), and the distribution of 300,000 single
//!    reads, each timed on its own. With a writer that never pauses, the
//!    mean is set by rare reads that wait (spin, then park) for the writer,
//!    so it swings between runs; the percentiles show the shape. Ours also
//!    with no writer, for reference.
//!
//! The machine these were written on has 2 cores and other builds running:
//! numbers are noisy, and the two-thread benches (3, 5) compete with
//! everything else for the second core. Every thread a bench starts is
//! joined before its bench function returns.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{
    BatchSize, BenchmarkGroup, Criterion, SamplingMode, criterion_group, criterion_main,
};
use crossbeam_channel::{Receiver, Sender, select, unbounded};
use quiesce::{CancelGuard, Context, Counters, WaitGroup};
use tokio_util::sync::CancellationToken;

const MEASURE: Duration = Duration::from_secs(3);
const WARM_UP: Duration = Duration::from_secs(1);

/// `true` when criterion runs each routine only once (`--test`, or not
/// under `cargo bench`).
fn smoke_test() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--test") || !args.iter().any(|a| a == "--bench")
}

// ---------------------------------------------------------------------------
// 1. Child create + drop
// ---------------------------------------------------------------------------

fn context_child(c: &mut Criterion) {
    let mut group = c.benchmark_group("context_child");
    group.measurement_time(MEASURE).warm_up_time(WARM_UP);

    let root = Context::background().with_cancel();
    group.bench_function("quiesce/with_cancel", |b| {
        b.iter(|| {
            drop(black_box(&root).with_cancel());
        })
    });
    group.bench_function("quiesce/with_timeout_30s", |b| {
        b.iter(|| {
            drop(black_box(&root).with_timeout(Duration::from_secs(30)));
        })
    });
    assert_eq!(root.children(), 0, "dropped children must be unlinked");
    drop(root);

    let background = Context::background();
    group.bench_function("quiesce/with_cancel_of_background", |b| {
        b.iter(|| {
            drop(black_box(&background).with_cancel());
        })
    });

    let parent = CancellationToken::new();
    group.bench_function("tokio_util/child_token", |b| {
        b.iter(|| {
            let child = black_box(&parent).child_token();
            drop(child);
        })
    });
    group.finish();
}

// ---------------------------------------------------------------------------
// 2. Cancel fan-out to 100,000 descendants
// ---------------------------------------------------------------------------

const FANOUT: usize = 100_000;
const TREE_CHILDREN: usize = 1_000;
const TREE_GRANDCHILDREN: usize = FANOUT / TREE_CHILDREN - 1; // 99

/// A root guard and the guards of its descendants (the guards keep them
/// live and linked; the contexts themselves are not needed).
type OurTree = (CancelGuard, Vec<CancelGuard>);
type TheirTree = (CancellationToken, Vec<CancellationToken>);
/// A named way to build a tree.
type Shape<T> = (&'static str, fn() -> T);

fn our_flat(with_done_rx: bool) -> OurTree {
    let root = Context::background().with_cancel();
    let guards = (0..FANOUT)
        .map(|_| {
            let child = root.with_cancel();
            if with_done_rx {
                black_box(child.done());
            }
            child
        })
        .collect();
    (root, guards)
}

fn our_tree() -> OurTree {
    let root = Context::background().with_cancel();
    let mut guards = Vec::with_capacity(FANOUT);
    for _ in 0..TREE_CHILDREN {
        let child = root.with_cancel();
        for _ in 0..TREE_GRANDCHILDREN {
            guards.push(child.with_cancel());
        }
        guards.push(child);
    }
    (root, guards)
}

fn their_flat() -> TheirTree {
    let root = CancellationToken::new();
    let children = (0..FANOUT).map(|_| root.child_token()).collect();
    (root, children)
}

fn their_tree() -> TheirTree {
    let root = CancellationToken::new();
    let mut tokens = Vec::with_capacity(FANOUT);
    for _ in 0..TREE_CHILDREN {
        let child = root.child_token();
        for _ in 0..TREE_GRANDCHILDREN {
            tokens.push(child.child_token());
        }
        tokens.push(child);
    }
    (root, tokens)
}

/// Checks once, outside any timing (the first time criterion runs the
/// routine, so a filter that skips it skips this too), that cancelling the
/// root reaches every descendant.
fn check_our_tree(build: fn() -> OurTree) {
    let (root, guards) = build();
    assert_eq!(guards.len(), FANOUT);
    assert!(guards.iter().all(|g| !g.context().is_done()));
    root.cancel();
    assert!(guards.iter().all(|g| g.context().is_done()));
}

fn check_their_tree(build: fn() -> TheirTree) {
    let (root, tokens) = build();
    assert_eq!(tokens.len(), FANOUT);
    assert!(tokens.iter().all(|t| !t.is_cancelled()));
    root.cancel();
    assert!(tokens.iter().all(|t| t.is_cancelled()));
}

fn cancel_fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("cancel_fanout_100k");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .measurement_time(MEASURE)
        .warm_up_time(WARM_UP);

    let ours: [Shape<OurTree>; 3] = [
        ("quiesce/flat", || our_flat(false)),
        ("quiesce/tree_1000x99", our_tree),
        ("quiesce/flat_with_done_rx", || our_flat(true)),
    ];
    for (name, build) in ours {
        let mut checked = false;
        group.bench_function(name, |b| {
            if !checked {
                checked = true;
                check_our_tree(build);
            }
            b.iter_batched(
                build,
                |(root, descendants)| {
                    root.cancel();
                    // Returned, so freeing the tree is not timed.
                    (root, descendants)
                },
                BatchSize::PerIteration,
            )
        });
    }

    let theirs: [Shape<TheirTree>; 2] = [
        ("tokio_util/flat", their_flat),
        ("tokio_util/tree_1000x99", their_tree),
    ];
    for (name, build) in theirs {
        let mut checked = false;
        group.bench_function(name, |b| {
            if !checked {
                checked = true;
                check_their_tree(build);
            }
            b.iter_batched(
                build,
                |(root, descendants)| {
                    root.cancel();
                    (root, descendants)
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

// ---------------------------------------------------------------------------
// 3. Wake-up latency
// ---------------------------------------------------------------------------

/// A thread that, for each job it is sent, signals that it is about to
/// block, blocks in `wait(job)`, and sends back the instant it woke.
struct Waiter<J: Send + 'static> {
    jobs: Option<Sender<J>>,
    ready: Receiver<()>,
    woke: Receiver<Instant>,
    /// Linux thread id, to see in `/proc` when it is asleep.
    tid: Option<u32>,
    handle: Option<JoinHandle<()>>,
}

impl<J: Send + 'static> Waiter<J> {
    fn spawn(wait: impl Fn(J) + Send + 'static) -> Self {
        let (jobs_tx, jobs_rx) = unbounded::<J>();
        let (ready_tx, ready) = unbounded();
        let (woke_tx, woke) = unbounded();
        let (tid_tx, tid_rx) = unbounded();
        let handle = thread::Builder::new()
            .name("bench-waiter".into())
            .spawn(move || {
                let _ = tid_tx.send(current_tid());
                for job in jobs_rx {
                    let _ = ready_tx.send(());
                    wait(job);
                    let now = Instant::now();
                    let _ = woke_tx.send(now);
                }
            })
            .expect("spawn the waiter thread");
        let tid = tid_rx.recv().expect("waiter sends its tid");
        Waiter {
            jobs: Some(jobs_tx),
            ready,
            woke,
            tid,
            handle: Some(handle),
        }
    }

    /// One sample: hands `job` to the waiter, waits until it is asleep in
    /// `wait`, then times `fire()` until the waiter is running again.
    /// Returns the latency and whether the waiter was seen asleep.
    fn sample(&self, job: J, fire: impl FnOnce()) -> (Duration, bool) {
        self.jobs
            .as_ref()
            .expect("waiter running")
            .send(job)
            .expect("waiter alive");
        self.ready.recv().expect("waiter alive");
        let asleep = wait_until_asleep(self.tid);
        let start = Instant::now();
        fire();
        let woke = self.woke.recv().expect("waiter alive");
        (woke.saturating_duration_since(start), asleep)
    }

    /// Ends the thread and joins it.
    fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        drop(self.jobs.take());
        if let Some(handle) = self.handle.take() {
            handle.join().expect("waiter thread panicked");
        }
    }
}

impl<J: Send + 'static> Drop for Waiter<J> {
    fn drop(&mut self) {
        self.shut_down();
    }
}

#[cfg(target_os = "linux")]
fn current_tid() -> Option<u32> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

#[cfg(not(target_os = "linux"))]
fn current_tid() -> Option<u32> {
    None
}

/// `Some(true)` when the thread is in interruptible or uninterruptible
/// sleep.
#[cfg(target_os = "linux")]
fn is_asleep(tid: u32) -> Option<bool> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
    Some(matches!(state, 'S' | 'D'))
}

#[cfg(not(target_os = "linux"))]
fn is_asleep(_tid: u32) -> Option<bool> {
    None
}

/// Waits until thread `tid` sleeps (it is about to block and does nothing
/// else that sleeps). Without `/proc`, sleeps 200 µs instead and returns
/// `false`.
fn wait_until_asleep(tid: Option<u32>) -> bool {
    if let Some(tid) = tid {
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(100) {
            match is_asleep(tid) {
                Some(true) => return true,
                Some(false) => thread::yield_now(),
                None => break,
            }
        }
    }
    thread::sleep(Duration::from_micros(200));
    false
}

/// A waiter blocked in `select!` on a context's `done()` and an idle
/// channel.
fn context_waiter() -> Waiter<Context> {
    let (idle_tx, idle_rx) = unbounded::<()>();
    Waiter::spawn(move |ctx: Context| {
        let _keep_idle_open = &idle_tx;
        select! {
            recv(idle_rx) -> _ => unreachable!("nothing is sent on the idle channel"),
            recv(ctx.done()) -> _ => {}
        }
        assert!(ctx.is_done());
    })
}

fn context_sample(waiter: &Waiter<Context>, root: &Context) -> (Duration, bool) {
    let guard = root.with_cancel();
    // Create the channel here, so the waiter's `done()` is a plain load.
    let _ = guard.done();
    waiter.sample(guard.context(), move || guard.cancel())
}

/// The same `select!`, woken by a message on its other channel.
fn message_waiter() -> Waiter<Receiver<()>> {
    let (idle_tx, idle_rx) = unbounded::<()>();
    Waiter::spawn(move |rx: Receiver<()>| {
        let _keep_idle_open = &idle_tx;
        select! {
            recv(idle_rx) -> _ => unreachable!("nothing is sent on the idle channel"),
            recv(rx) -> msg => msg.expect("a message"),
        }
    })
}

fn message_sample(waiter: &Waiter<Receiver<()>>) -> (Duration, bool) {
    let (tx, rx) = crossbeam_channel::bounded(1);
    waiter.sample(rx, move || tx.send(()).expect("waiter holds the receiver"))
}

fn shutdown_waiter() -> Waiter<quiesce::Done> {
    let (idle_tx, idle_rx) = unbounded::<()>();
    Waiter::spawn(move |done: quiesce::Done| {
        let _keep_idle_open = &idle_tx;
        select! {
            recv(idle_rx) -> _ => unreachable!("nothing is sent on the idle channel"),
            recv(done.channel()) -> _ => {}
        }
    })
}

fn shutdown_sample(waiter: &Waiter<quiesce::Done>) -> (Duration, bool) {
    let (trigger, done) = quiesce::shutdown();
    waiter.sample(done, move || trigger.fire())
}

type Flag = Arc<(Mutex<bool>, Condvar)>;

fn condvar_waiter() -> Waiter<Flag> {
    Waiter::spawn(|flag: Flag| {
        let (lock, cvar) = &*flag;
        let mut set = lock.lock().unwrap();
        while !*set {
            set = cvar.wait(set).unwrap();
        }
    })
}

fn condvar_sample(waiter: &Waiter<Flag>) -> (Duration, bool) {
    let flag: Flag = Arc::new((Mutex::new(false), Condvar::new()));
    let job = flag.clone();
    waiter.sample(job, move || {
        *flag.0.lock().unwrap() = true;
        flag.1.notify_one();
    })
}

/// Takes `n` samples and prints their distribution.
fn print_latencies(label: &str, n: usize, mut sample: impl FnMut() -> (Duration, bool)) {
    let mut all = Vec::with_capacity(n);
    let mut asleep = 0;
    for _ in 0..n {
        let (latency, was_asleep) = sample();
        all.push(latency);
        asleep += usize::from(was_asleep);
    }
    all.sort_unstable();
    let pct = |p: usize| all[(all.len() * p / 100).min(all.len() - 1)];
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let mean = all.iter().sum::<Duration>() / n as u32;
    println!(
        "wakeup latency {label:<38} n={n} (asleep when fired: {asleep}): \
         p50 {:>7.1} µs  p90 {:>7.1} µs  p99 {:>7.1} µs  max {:>8.1} µs  mean {:>7.1} µs",
        us(pct(50)),
        us(pct(90)),
        us(pct(99)),
        us(all[all.len() - 1]),
        us(mean),
    );
}

fn wakeup(c: &mut Criterion) {
    let n = if smoke_test() { 50 } else { 2_000 };
    let root = Context::background().with_cancel();

    let mut group = c.benchmark_group("wakeup");
    group
        .measurement_time(MEASURE)
        .warm_up_time(WARM_UP)
        .sample_size(30);

    // The percentiles are taken once, the first time criterion runs the
    // routine (so a filter that skips the routine skips them too).
    let waiter = context_waiter();
    let mut printed = false;
    group.bench_function("quiesce/select_on_ctx_done", |b| {
        if !printed {
            printed = true;
            print_latencies("quiesce Context, select! on done()", n, || {
                context_sample(&waiter, &root)
            });
            let messages = message_waiter();
            print_latencies("crossbeam select!, woken by a message", n, || {
                message_sample(&messages)
            });
            messages.stop();
            let shutdowns = shutdown_waiter();
            print_latencies("quiesce::shutdown Done, select!", n, || {
                shutdown_sample(&shutdowns)
            });
            shutdowns.stop();
        }
        b.iter_custom(|iters| (0..iters).map(|_| context_sample(&waiter, &root).0).sum())
    });
    waiter.stop();

    let waiter = condvar_waiter();
    let mut printed = false;
    group.bench_function("std/condvar", |b| {
        if !printed {
            printed = true;
            print_latencies("std Condvar (baseline)", n, || condvar_sample(&waiter));
        }
        b.iter_custom(|iters| (0..iters).map(|_| condvar_sample(&waiter).0).sum())
    });
    waiter.stop();
    group.finish();

    assert_eq!(root.children(), 0);
    drop(root);
}

// ---------------------------------------------------------------------------
// 4. WaitGroup add + done
// ---------------------------------------------------------------------------

fn waitgroup(c: &mut Criterion) {
    let mut group = c.benchmark_group("waitgroup");
    group.measurement_time(MEASURE).warm_up_time(WARM_UP);

    let wg = WaitGroup::new();
    group.bench_function("quiesce/add_drop", |b| {
        b.iter(|| {
            let g = black_box(&wg).add();
            drop(g);
        })
    });
    let held = wg.add();
    group.bench_function("quiesce/add_drop_one_held", |b| {
        b.iter(|| {
            let g = black_box(&wg).add();
            drop(g);
        })
    });
    drop(held);
    assert_eq!(wg.count(), 0);

    let cwg = crossbeam_utils::sync::WaitGroup::new();
    group.bench_function("crossbeam_utils/clone_drop", |b| {
        b.iter(|| {
            let g = black_box(&cwg).clone();
            drop(g);
        })
    });
    group.finish();
}

// ---------------------------------------------------------------------------
// 5. Counters reads under one writer
// ---------------------------------------------------------------------------

const KEYS: usize = 64;

fn keys() -> Vec<String> {
    (0..KEYS).map(|i| format!("SITE-{i:03}")).collect()
}

/// What `Counters` keeps under its lock, for the baselines.
#[derive(Default)]
struct Plain {
    counts: HashMap<String, u64>,
    total: u64,
}

impl Plain {
    fn add(&mut self, key: String, n: u64) {
        let count = self.counts.entry(key).or_insert(0);
        *count = count.saturating_add(n);
        self.total = self.total.saturating_add(n);
    }

    fn get(&self, key: &str) -> u64 {
        self.counts.get(key).copied().unwrap_or(0)
    }
}

/// Runs `body` while a thread calls `add(key)` in a loop; stops and joins
/// that thread before returning, and prints how many adds it did.
fn with_writer<M: Send + Sync + 'static>(
    label: &str,
    map: &Arc<M>,
    add: fn(&M, String),
    body: impl FnOnce(),
) {
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let handle = {
        let (map, stop, writes) = (map.clone(), stop.clone(), writes.clone());
        thread::Builder::new()
            .name("bench-writer".into())
            .spawn(move || {
                let keys = keys();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    add(&map, keys[n as usize % KEYS].clone());
                    n += 1;
                }
                writes.store(n, Ordering::Relaxed);
            })
            .expect("spawn the writer thread")
    };
    let start = Instant::now();
    // Stop and join the writer even if `body` panics.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let stopper = StopOnDrop(stop);
    body();
    drop(stopper);
    handle.join().expect("writer thread panicked");
    let elapsed = start.elapsed().as_secs_f64();
    let writes = writes.load(Ordering::Relaxed);
    println!(
        "counters writer during {label:<28}: {writes} adds in {elapsed:.1} s ({:.2} M adds/s)",
        writes as f64 / elapsed / 1e6
    );
}

/// Prints the distribution of single reads (each timed with its own pair of
/// `Instant::now()`, whose cost, a few tens of ns here, is included).
fn print_read_latencies(label: &str, n: usize, mut read: impl FnMut(usize) -> u64) {
    let mut all: Vec<u64> = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        black_box(read(i));
        all.push(start.elapsed().as_nanos() as u64);
    }
    all.sort_unstable();
    let per_mille = |p: usize| all[(all.len() * p / 1000).min(all.len() - 1)];
    let mean = all.iter().sum::<u64>() as f64 / n as f64;
    println!(
        "counters read latency {label:<32} n={n}: p50 {:>6} ns  p90 {:>6} ns  p99 {:>7} ns  \
         p99.9 {:>8} ns  max {:>9} ns  mean {mean:>7.1} ns",
        per_mille(500),
        per_mille(900),
        per_mille(990),
        per_mille(999),
        all[all.len() - 1],
    );
}

/// A criterion line for `read` over the keys in turn; the first time it
/// runs, also the distribution of single reads.
fn bench_reads(
    group: &mut BenchmarkGroup<'_, WallTime>,
    id: &str,
    keys: &[String],
    read: impl Fn(&str) -> u64,
) {
    let n = if smoke_test() { 1_000 } else { 300_000 };
    let mut printed = false;
    group.bench_function(id, |b| {
        if !printed {
            printed = true;
            print_read_latencies(id, n, |i| read(&keys[i % KEYS]));
        }
        let mut i = 0usize;
        b.iter(|| {
            i = i.wrapping_add(1);
            read(black_box(keys[i % KEYS].as_str()))
        })
    });
}

fn counters_read(c: &mut Criterion) {
    let keys = keys();
    let mut group = c.benchmark_group("counters_read");
    group.measurement_time(MEASURE).warm_up_time(WARM_UP);

    let ours: Arc<Counters<String>> = Arc::new(keys.iter().map(|k| (k.clone(), 1)).collect());
    bench_reads(&mut group, "quiesce/get_no_writer", &keys, |k| ours.get(k));
    with_writer(
        "quiesce Counters",
        &ours,
        |m, k| m.add(k, 1),
        || bench_reads(&mut group, "quiesce/get", &keys, |k| ours.get(k)),
    );

    let plain = || {
        let mut p = Plain::default();
        for k in &keys {
            p.add(k.clone(), 1);
        }
        p
    };

    let std_rw = Arc::new(RwLock::new(plain()));
    with_writer(
        "std RwLock",
        &std_rw,
        |m, k| m.write().unwrap().add(k, 1),
        || {
            bench_reads(&mut group, "std_rwlock/get", &keys, |k| {
                std_rw.read().unwrap().get(k)
            })
        },
    );

    let std_mutex = Arc::new(Mutex::new(plain()));
    with_writer(
        "std Mutex",
        &std_mutex,
        |m, k| m.lock().unwrap().add(k, 1),
        || {
            bench_reads(&mut group, "std_mutex/get", &keys, |k| {
                std_mutex.lock().unwrap().get(k)
            })
        },
    );

    let pl_rw = Arc::new(parking_lot::RwLock::new(plain()));
    with_writer(
        "parking_lot RwLock",
        &pl_rw,
        |m, k| m.write().add(k, 1),
        || {
            bench_reads(&mut group, "parking_lot_rwlock/get", &keys, |k| {
                pl_rw.read().get(k)
            })
        },
    );
    group.finish();
}

criterion_group!(
    benches,
    context_child,
    cancel_fanout,
    wakeup,
    waitgroup,
    counters_read
);
criterion_main!(benches);
