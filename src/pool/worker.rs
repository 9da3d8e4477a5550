//! The worker loop: take a job, run it, wait for work, exit.

use std::io;

use crossbeam_channel::Select;

use crate::context::Context;
use crate::sync::{Arc, Ordering};
use crate::threads::Threads;

use super::Shared;
use super::job::Job;
use super::stats::{Ended, WorkerStats};

/// Starts worker `index` on a thread of its own, among `threads`.
#[cfg(not(quiesce_loom))]
pub(super) fn start(
    threads: &mut Threads<()>,
    shared: &Arc<Shared>,
    index: usize,
) -> io::Result<()> {
    let shared = Arc::clone(shared);
    let name = format!("{}-{index}", shared.name);
    threads.spawn(name, move |ctx| worker(&shared, ctx, index))
}

/// Under loom no worker thread is started. The worker loop waits in a
/// crossbeam `Select`, which parks the thread where loom cannot see it (a
/// model would hang), and a thread loom did not start cannot touch loom's
/// objects. The place in `workers` is taken all the same (invariant 5); the models
/// in `tests/loom.rs` play the worker's part through the hooks in
/// `model.rs`, which run the worker's own code.
#[cfg(quiesce_loom)]
pub(super) fn start(
    _threads: &mut Threads<()>,
    _shared: &Arc<Shared>,
    _index: usize,
) -> io::Result<()> {
    let _: fn(&Arc<Shared>, &Context, usize) = worker;
    Ok(())
}

impl Shared {
    pub(super) fn run_job(&self, job: Job, ctx: &Context, stats: &WorkerStats) {
        if ctx.is_done() {
            // Cancelled (abort, deadline, parent): hand it back, unstarted,
            // for the stop's report (invariant 7).
            self.returned.lock().push(job);
            self.jobs_over(1); // invariant 10
            return;
        }
        stats.started();
        let panic = (job.f)(ctx);
        match panic {
            Some(panic) => {
                stats.ended(Ended::Panicked);
                log::warn!("pool {}: a job {panic}", self.name);
                if let Some(handler) = &self.panic_handler {
                    if let Err(p) = crate::panic::catch(|| handler(&panic)) {
                        log::error!("pool {}: the panic handler {p}", self.name);
                    }
                }
            }
            None if ctx.is_done() => stats.ended(Ended::Cancelled),
            None => stats.ended(Ended::Completed),
        }
        self.jobs_over(1); // invariant 10
    }
}

/// Decrements the live worker count when a worker ends, however it ends,
/// unless the worker already left the count (retire).
struct WorkerExit<'a> {
    shared: &'a Shared,
    counted: bool,
    index: usize,
    stats: Arc<WorkerStats>,
}

impl Drop for WorkerExit<'_> {
    fn drop(&mut self) {
        self.shared.stats.retire(&self.stats);
        if self.counted {
            // Once per worker (invariant 5).
            self.shared.workers.fetch_sub(1, Ordering::SeqCst);
        }
        if let Some(hook) = &self.shared.on_exit {
            let index = self.index;
            if let Err(p) = crate::panic::catch(|| hook(index)) {
                log::error!("pool {}: the on_exit hook {p}", self.shared.name);
            }
        }
    }
}

/// What woke an idle worker.
enum Wake {
    Job(Job),
    /// A message on `wake`: look at `max` and `draining` again.
    Recheck,
    Stop,
    IdleTimeout,
}

/// How many times an idle worker yields, looking at the queue in between,
/// before it parks.
///
/// Parking and being woken costs a few microseconds (two system calls and
/// a context switch), which every job pays when the submitter is only a
/// little slower than the workers and the queue keeps running empty. A
/// couple of yields (which give the CPU to the submitter meanwhile) keep the
/// workers awake across such gaps (the gain is measured by
/// `benches/pool.rs`; the figures are in the commit that set this and in
/// the README). More yields cost CPU when jobs are sparse: each is a system
/// call, made again after every job by a worker that then parks.
const BACKOFF_YIELDS: usize = 2;

/// Looks at the queue between yields, [`BACKOFF_YIELDS`] times.
fn try_recv_a_while(shared: &Shared) -> Option<Job> {
    for _ in 0..BACKOFF_YIELDS {
        std::thread::yield_now();
        if let Ok(job) = shared.queue_rx.try_recv() {
            return Some(job);
        }
    }
    None
}

fn worker(shared: &Arc<Shared>, ctx: &Context, index: usize) {
    let stats = shared.stats.register();
    let mut exit = WorkerExit {
        shared,
        counted: true,
        index,
        stats: stats.clone(),
    };
    if let Some(hook) = &shared.on_start {
        if let Err(p) = crate::panic::catch(|| hook(index)) {
            log::error!("pool {}: the on_start hook {p}", shared.name);
        }
    }
    loop {
        if ctx.is_done() {
            return;
        }
        // Fast path: take queued work without building a `Select`.
        if let Ok(job) = shared.queue_rx.try_recv() {
            Shared::took_job(shared);
            shared.run_job(job, ctx, &stats);
            continue;
        }
        if shared.draining.load(Ordering::SeqCst) {
            // Intake was sealed before `draining` was set (invariant 4), so every job
            // ever sent is in the queue by now: look once more (the look
            // above may predate the last sends), then leave when empty.
            if shared.queue_rx.is_empty() {
                return;
            }
            continue;
        }
        if let Some(job) = try_recv_a_while(shared) {
            Shared::took_job(shared);
            shared.run_job(job, ctx, &stats);
            continue;
        }
        match wait_for_work(shared, ctx) {
            Wake::Job(job) => {
                Shared::took_job(shared);
                shared.run_job(job, ctx, &stats);
            }
            Wake::Recheck => {
                // A resize may have lowered `max`; or the drain began, which
                // the loop sees next (invariant 4).
                if shared.retire(false) {
                    // Left the count already (invariant 5).
                    exit.counted = false;
                    return;
                }
            }
            Wake::IdleTimeout => {
                if shared.leave_when_idle() {
                    exit.counted = false;
                    return;
                }
            }
            Wake::Stop => return,
        }
    }
}

fn wait_for_work(shared: &Shared, ctx: &Context) -> Wake {
    let mut sel = Select::new();
    let job = sel.recv(&shared.queue_rx);
    let wake = sel.recv(&shared.wake_rx);
    sel.recv(ctx.done());
    shared.idle.fetch_add(1, Ordering::SeqCst);
    let oper = if shared.elastic() {
        sel.select_timeout(shared.idle_timeout)
    } else {
        Ok(sel.select())
    };
    shared.idle.fetch_sub(1, Ordering::SeqCst);
    let Ok(oper) = oper else {
        return Wake::IdleTimeout;
    };
    match oper.index() {
        i if i == job => match oper.recv(&shared.queue_rx) {
            Ok(job) => Wake::Job(job),
            Err(_) => Wake::Stop,
        },
        i if i == wake => {
            let _ = oper.recv(&shared.wake_rx);
            Wake::Recheck
        }
        _ => {
            let _ = oper.recv(ctx.done());
            Wake::Stop
        }
    }
}
