//! `scope`: bounded concurrency over borrowed data. The public docs, with
//! the Go pattern it replaces, are on [`scope()`].

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_channel::{Receiver, Sender};

use crate::context::Context;
use crate::handle::{self, JobHandle};

type ScopeJob<'env> = Box<dyn FnOnce(&Context) + Send + 'env>;
type StartWorker<'a> = dyn Fn(usize) -> io::Result<()> + Sync + 'a;

/// Runs `f` with a [`Scope`] whose jobs run at most `limit` at once (a
/// limit of zero counts as one), under a child of `ctx`; returns what `f`
/// returns, once every job spawned in the scope is done: bounded
/// concurrency over borrowed data.
///
/// Go's "semaphore + WaitGroup" loop —
///
/// ```go
/// sem := make(chan struct{}, 10)
/// var wg sync.WaitGroup
/// for _, f := range files {
///     wg.Add(1)
///     sem <- struct{}{}
///     go func(f string) { defer wg.Done(); defer func() { <-sem }(); work(ctx, f) }(f)
/// }
/// wg.Wait()
/// ```
///
/// — in one call. Jobs may borrow from the caller's stack (like
/// `std::thread::scope`), at most `limit` run at once on named worker
/// threads, and the call returns only when every job is done. Each job's
/// result, or its panic, comes back through its [`JobHandle`].
///
/// Worker threads are named `quiesce-scope-{n}`; at most `limit` are
/// started, lazily, and all are joined before `scope` returns.
///
/// Cancelling the context given to `scope` (or its deadline passing) stops
/// the jobs not yet started — their handles report
/// [`JobError::NotRun`](crate::JobError::NotRun) — and reaches the running
/// ones through the [`Context`] each job gets.
///
/// # Panics
///
/// A job's panic is caught and returned by its handle (and logged at
/// `warn`). A panic of the closure given to `scope` cancels the scope's
/// context (queued jobs are skipped), waits for the running jobs, and is
/// then resumed on the caller, as `std::thread::scope` does.
///
/// # Examples
///
/// ```
/// use quiesce::{scope, Context};
///
/// let files = vec!["part-a.csv".to_string(), "part-b.csv".to_string(), "part-c.csv".to_string()];
/// let sizes = scope(2, &Context::background(), |s| {
///     let handles: Vec<_> = files.iter().map(|f| s.spawn(move |_ctx| f.len())).collect();
///     handles.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>()
/// });
/// assert_eq!(sizes, vec![10, 10, 10]);
/// ```
pub fn scope<'env, F, R>(limit: usize, ctx: &Context, f: F) -> R
where
    F: for<'s> FnOnce(&'s Scope<'s, 'env>) -> R,
{
    let limit = limit.max(1);
    let ctx = ctx.with_cancel();
    let (tx, rx) = crossbeam_channel::unbounded::<ScopeJob<'env>>();
    let outcome = std::thread::scope(|std_scope| {
        let start_worker = |index: usize| -> io::Result<()> {
            let (rx, ctx) = (rx.clone(), ctx.clone());
            let name = format!("quiesce-scope-{index}");
            crate::leak::spawn_scoped(std_scope, name, move || worker(&rx, &ctx)).map(drop)
        };
        let s = Scope {
            ctx: ctx.clone(),
            tx,
            limit,
            workers: AtomicUsize::new(0),
            start_worker: &start_worker,
            _env: PhantomData,
        };
        let outcome = crate::panic::catch_payload(|| f(&s));
        if outcome.is_err() {
            ctx.cancel();
        }
        // Dropping the sender ends the workers once the queue is empty;
        // std's scope then joins them.
        drop(s);
        outcome
    });
    drop(ctx);
    match outcome {
        Ok(r) => r,
        Err(payload) => std::panic::resume_unwind(payload),
    }
}

fn worker(rx: &Receiver<ScopeJob<'_>>, ctx: &Context) {
    for job in rx.iter() {
        job(ctx);
    }
}

/// Spawns jobs inside [`scope()`]; see there for the rules.
///
/// # Examples
///
/// ```
/// use quiesce::{scope, Context};
///
/// let mut totals = vec![0u32; 3];
/// scope(2, &Context::background(), |s| {
///     for (shard, total) in totals.iter_mut().enumerate() {
///         s.spawn(move |_ctx| *total = (shard as u32 + 1) * 10);
///     }
/// });
/// assert_eq!(totals, [10, 20, 30]); // the jobs wrote into the caller's stack
/// ```
pub struct Scope<'s, 'env> {
    ctx: Context,
    tx: Sender<ScopeJob<'env>>,
    limit: usize,
    workers: AtomicUsize,
    start_worker: &'s StartWorker<'s>,
    _env: PhantomData<&'env mut &'env ()>,
}

impl<'env> Scope<'_, 'env> {
    /// Queues `f` to run on one of the scope's workers with the scope's
    /// context; returns a handle to its result or panic. Never blocks.
    ///
    /// If no worker thread can be started at all (the OS refuses), the job
    /// runs here, on the calling thread, rather than never.
    ///
    /// # Examples
    ///
    /// ```
    /// use quiesce::{scope, Context};
    ///
    /// let outcome = scope(1, &Context::background(), |s| {
    ///     let bad = s.spawn(|_ctx| -> u32 { panic!("bad input row") });
    ///     let good = s.spawn(|_ctx| 12);
    ///     (bad.join().map_err(|e| e.to_string()), good.join())
    /// });
    /// assert_eq!(outcome, (Err("the job panicked: bad input row".into()), Ok(12)));
    /// ```
    pub fn spawn<F, T>(&self, f: F) -> JobHandle<T>
    where
        F: FnOnce(&Context) -> T + Send + 'env,
        T: Send + 'env,
    {
        let (completer, handle) = handle::pair();
        let job: ScopeJob<'env> = Box::new(move |ctx: &Context| {
            if ctx.is_done() {
                // Dropping the completer marks the job "never ran".
                return;
            }
            let result = crate::panic::catch(|| f(ctx));
            if let Err(panic) = &result {
                log::warn!("a scope job {panic}");
            }
            completer.finish(result);
        });
        let job = match self.ensure_worker() {
            Ok(()) => match self.tx.send(job) {
                Ok(()) => return handle,
                Err(err) => err.into_inner(),
            },
            Err(job_runs_here) => {
                log::warn!(
                    "scope: no worker thread could be started ({job_runs_here}); running the job on the caller"
                );
                job
            }
        };
        job(&self.ctx);
        handle
    }

    /// The context the scope's jobs get.
    ///
    /// # Examples
    ///
    /// ```
    /// use quiesce::{scope, Context, JobError};
    ///
    /// let ctx = Context::background().with_cancel();
    /// scope(2, &ctx, |s| {
    ///     assert!(!s.context().is_done());
    ///     ctx.cancel(); // cancelling `ctx` reaches the scope's own context
    ///     assert!(s.context().is_done());
    ///     assert_eq!(s.spawn(|_ctx| "skipped").join(), Err(JobError::NotRun));
    /// });
    /// ```
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// Starts one more worker while below the limit: one per job spawned,
    /// up to `limit`, so jobs never wait for a worker that could exist.
    /// `Err` only when no worker exists and none could be started.
    fn ensure_worker(&self) -> io::Result<()> {
        let started = self
            .workers
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                (w < self.limit).then_some(w + 1)
            });
        let Ok(index) = started else {
            return Ok(());
        };
        match (self.start_worker)(index) {
            Ok(()) => Ok(()),
            Err(err) => {
                let before = self.workers.fetch_sub(1, Ordering::SeqCst);
                if before == 1 {
                    Err(err)
                } else {
                    log::warn!("scope: cannot start another worker thread: {err}");
                    Ok(())
                }
            }
        }
    }
}

impl fmt::Debug for Scope<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scope")
            .field("limit", &self.limit)
            .field("workers", &self.workers.load(Ordering::Relaxed))
            .field("queued", &self.tx.len())
            .finish()
    }
}
