//! Graceful shutdown and bounded concurrency for synchronous Rust.
//!
//! quiesce gives threads the tools Go programmers reach for — `close(done)`,
//! `context`, `sync.WaitGroup`, a weighted semaphore, `RWMutex`-guarded
//! counters, goleak — on OS threads and crossbeam channels, with no async
//! runtime. Ownership does the work Go leaves to discipline: a cancel that
//! cannot be forgotten (it is a guard's `Drop`), a `Done()` that happens
//! even when the work panics, a permit that comes back on its own. Every
//! blocking call has a timeout, deadline or [`Context`] form, and every
//! thread the library starts has a name and an owner that joins it (the one
//! deliberate exception: a [`Supervisor`] service still running at the
//! shutdown deadline is reported and left running, as the process is about
//! to exit).
//!
//! # Go → Rust
//!
//! | Go | quiesce |
//! |----|---------|
//! | `done := make(chan struct{})`; `close(done)`; `case <-done:` | [`shutdown()`] → ([`Shutdown`], [`Done`]); [`Shutdown::fire`]; `recv(done.channel()) -> _` in `select!` |
//! | `context.Background()` | [`Context::background()`] |
//! | `ctx, cancel := context.WithCancel(parent)`; `defer cancel()` | `let ctx = parent.with_cancel();` — one value, a [`CancelGuard`] that derefs to [`Context`] and cancels on drop |
//! | `cancel()`; `go f(ctx)` | [`ctx.cancel()`](CancelGuard::cancel); [`ctx.context()`](CancelGuard::context) (a plain `Context`, which cancels nothing) moved into the thread |
//! | `context.WithTimeout` / `WithDeadline` | [`Context::with_timeout`] / [`Context::with_deadline`] (the same one value: `let (ctx, _) = …` does not compile) |
//! | `context.WithCancelCause`; `cancel(err)`; `context.Cause(ctx)` | [`Context::with_cancel_cause`]; [`CancelGuard::cancel_with_cause`]; [`Context::cause`] |
//! | `<-ctx.Done()`, `ctx.Err()` | [`Context::done`] in `select!`, [`Context::err`] ([`ContextError::Canceled`] / [`ContextError::DeadlineExceeded`]) |
//! | `select { case <-time.After(d): case <-ctx.Done(): }` | [`Context::sleep`] |
//! | `select { case v := <-ch: case <-ctx.Done(): }` | [`Context::recv`] / [`Context::send`] |
//! | `context.AfterFunc(ctx, f)` | [`Context::on_cancel`] |
//! | `var wg sync.WaitGroup`; `wg.Add(1)`; `defer wg.Done()`; `wg.Wait()` | [`WaitGroup::add`] → [`WaitGuard`] (done on drop); [`WaitGroup::wait_timeout`] |
//! | `go f()` (and hoping it ends) | [`Threads::spawn`], [`Threads::join_deadline`] naming what still runs |
//! | `sem := make(chan struct{}, n)`; `semaphore.NewWeighted(n)` | [`Semaphore::new`]; [`Semaphore::acquire_ctx`] → [`Permit`] (released on drop) |
//! | `mu sync.RWMutex` + `map[string]int` | [`Counters`] |
//! | `goleak.VerifyNone(t)` | [`leak::track`] … [`leak::Tracker::assert_none`] |
//! | `g, ctx := errgroup.WithContext(ctx)`; `g.SetLimit(n)`; `g.Go(f)`; `g.Wait()` | `let (group, ctx) =` [`Group::with_context`]`(&parent)`; [`Group::set_limit`]; [`Group::spawn`]; [`Group::wait`] ([`GroupError`] names the task) |
//! | `jobs := make(chan Job, 100)` + N worker goroutines; an `ants` pool | [`Pool::builder`] … [`Pool::submit`] (the job comes back in [`SubmitError`]); [`Pool::shutdown`] → [`ShutdownReport`] |
//! | semaphore + `WaitGroup` loop over a slice | [`scope()`] → [`Scope::spawn`] → [`JobHandle`] |
//! | `go func() { for it := range ch { … }; done <- r }()`; `close(ch)`; `<-done` | [`Consumer::bounded`]; [`Consumer::send`]; [`Consumer::finish`] |
//! | `res := make(chan T, 1)` handed to another goroutine | [`JobHandle::pair`] → ([`Completer`], [`JobHandle`]) |
//! | `ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)`; `defer stop()` | `let ctx = signals::signal_context(&parent)?;` — one value, a [`signals::SignalGuard`] that derefs to [`Context`]; dropping it stops listening |
//! | go-zero `ServiceGroup`, `oklog/run`, fx start/stop hooks | [`Supervisor`]; [`Supervisor::run_until_signal`] → [`SupervisorReport::exit_code`] |
//!
//! Constructors that return a pair put the side that acts first and the
//! side that watches second, as `std::sync::mpsc::channel()` returns
//! `(Sender, Receiver)`: [`shutdown()`] → `(Shutdown, Done)`,
//! [`JobHandle::pair`] → `(Completer, JobHandle)`, [`Group::with_context`]
//! → `(Group, Context)`. A context and its cancellation are not a pair but
//! one value, so there is no cancel function to throw away.
//!
//! # A first program
//!
//! A background job that stops, within a deadline, when the program is
//! asked to stop:
//!
//! ```
//! use std::time::Duration;
//! use quiesce::{Context, Threads};
//!
//! let root = Context::background().with_cancel();
//! let mut threads = Threads::new(&root);
//! threads
//!     .spawn("daily-report", |ctx| {
//!         let mut reports = 0u32;
//!         while ctx.sleep(Duration::from_millis(1)).is_ok() {
//!             reports += 1; // write a report
//!         }
//!         reports
//!     })
//!     .unwrap();
//!
//! root.cancel(); // Ctrl-C, say
//! let report = threads.join_timeout(Duration::from_secs(5));
//! assert!(report.running.is_empty(), "stuck: {:?}", report.running);
//! ```
//!
//! # Threads
//!
//! Threads the library starts are named (`quiesce-timer`,
//! `quiesce-worker-3`, `quiesce-scope-0`, `quiesce-signals`, or the name you
//! give) and recorded in a registry while they run
//! ([`leak::live_threads`]). Deadlines of all contexts are fired by one
//! shared thread, `quiesce-timer`, which exists only while a deadline is
//! pending (and for a second after the last one).
//!
//! # Panics
//!
//! Panics in user code (a thread given to [`Threads`], a callback) are
//! caught and handed back as [`Panic`] values or logged, as each type's docs
//! say. The library itself does not panic on misuse such as zero or huge
//! durations, past deadlines, cancelling twice, or asking a semaphore for
//! more than it has.
//!
//! # Logging
//!
//! Through the `log` crate; the library never prints.
//!
//! # Features
//!
//! - `systemd` (on by default): a [`Supervisor`] under systemd
//!   (`Type=notify`, `NOTIFY_SOCKET` set) sends `READY=1`, `STATUS=`,
//!   `STOPPING=1` and watchdog pings, through the `sd-notify` crate. Without
//!   the feature, or without `NOTIFY_SOCKET`, nothing is sent.
//!
//! The library needs Rust 1.85 or newer; CI checks that no dependency asks
//! for more.

#![deny(missing_docs)]
#![warn(rust_2018_idioms, unreachable_pub)]

mod backoff;
mod consumer;
pub mod counters;
mod deadline;
mod done;
pub mod group;
mod handle;
mod panic;
pub mod pool;
mod scope;
mod semaphore;
pub mod signals;
pub mod supervisor;
mod sync;
pub mod threads;
mod timer;
mod tree;
mod wait;

pub mod context;
pub mod leak;

pub use backoff::Backoff;
pub use consumer::Consumer;
pub use context::{CancelGuard, Cause, Context, ContextError, OnCancel};
pub use counters::Counters;
/// The channel crate the library is built on, re-exported so that
/// `select!` over [`Context::done`] or [`Done::channel`] needs no dependency
/// of your own (and always matches the version the library uses).
pub use crossbeam_channel;
/// `crossbeam_channel::select!`, for waiting on a context and a channel at
/// once:
///
/// ```
/// use std::time::Duration;
/// use quiesce::{Context, select};
///
/// let ctx = Context::background().with_cancel();
/// let (tx, rx) = quiesce::crossbeam_channel::bounded::<u32>(1);
/// tx.send(7).unwrap();
/// select! {
///     recv(rx) -> msg => assert_eq!(msg, Ok(7)),
///     recv(ctx.done()) -> _ => unreachable!("not cancelled yet"),
/// }
/// ctx.cancel();
/// select! {
///     recv(ctx.done()) -> _ => assert!(ctx.is_done()),
///     default(Duration::from_secs(10)) => panic!("the cancel did not wake select!"),
/// }
/// ```
pub use crossbeam_channel::select;
pub use done::{Done, Shutdown, shutdown};
pub use group::{Group, GroupError, LimitError, SpawnError, TrySpawnError};
pub use handle::{Completer, JobError, JobHandle};
pub use panic::Panic;
pub use pool::{Pool, PoolBuilder, ShutdownReport, SubmitError};
pub use scope::{Scope, scope};
pub use semaphore::{AcquireError, Permit, Semaphore};
pub use supervisor::{
    BoxError, Readiness, RestartPolicy, Service, ServiceContext, ServiceReport, ServiceSpec,
    StopCause, Supervisor, SupervisorBuilder, SupervisorReport, exit,
};
pub use threads::{JoinReport, Threads};
pub use wait::{WaitGroup, WaitGuard};
