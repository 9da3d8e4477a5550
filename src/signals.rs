//! SIGINT and SIGTERM as a [`Context`]: the first signal cancels it (a
//! graceful shutdown starts); a second one cancels a second context,
//! [`SignalGuard::forced`], which says "stop waiting for the graceful
//! shutdown": [`Supervisor::run_until_signal`] then returns at once with
//! exit code 128 + the signal's number, and a program that waits by
//! itself selects on it.
//!
//! Go programs write this by hand with `signal.Notify(ch, os.Interrupt,
//! syscall.SIGTERM)` and a goroutine, or use `ctx, stop :=
//! signal.NotifyContext(…)` with `defer stop()`. Here [`signal_context`]
//! returns one value, a [`SignalGuard`], that is the context (it derefs to
//! [`Context`]) and owns the listening thread (`quiesce-signals`): dropping
//! it stops listening, joins the thread and cancels the context, as Go's
//! `stop()` does. Hand plain contexts to other threads with
//! [`context()`](SignalGuard::context).
//!
//! The signal handlers themselves only write to a pipe (signal-hook's
//! `iterator`); everything else — cancelling, logging — happens on the
//! `quiesce-signals` thread.
//!
//! ```no_run
//! let ctx = quiesce::signals::signal_context(&quiesce::Context::background()).unwrap();
//! // ... start work under `ctx` ...
//! let _ = ctx.done().recv(); // blocks until Ctrl-C or SIGTERM
//! println!("stopping after {:?}", ctx.received());
//! ```
//!
//! Go's `ctx, _ := signal.NotifyContext(…)` habit does not compile (with
//! a guard dropped at once, the program would stop listening and ignore
//! SIGINT and SIGTERM from then on):
//!
//! ```compile_fail,E0308
//! let (ctx, _) = quiesce::signals::signal_context(&quiesce::Context::background()).unwrap();
//! ```
//!
//! Signal dispositions are process-wide: use one `signal_context` at a time
//! (tests that touch signals belong in their own test binary).
//!
//! # Ending the process
//!
//! The library never ends the process: nothing in it calls
//! `std::process::exit`. Once these handlers are installed, SIGINT and
//! SIGTERM no longer end the process by themselves, so whoever waits for
//! the graceful shutdown must also give it up at the second signal:
//! [`Supervisor::run_until_signal`] does (it returns a report whose
//! [`exit_code`](crate::SupervisorReport::exit_code) is
//! [`exit::forced`](crate::exit::forced): 130 after SIGINT, 143 after
//! SIGTERM, and names the services still running), and the program then
//! exits with that code. Code that waits by itself (a join, a pool's drain)
//! selects on [`SignalGuard::forced`] beside its own wait.
//!
//! [`Supervisor::run_until_signal`]: crate::Supervisor::run_until_signal

use std::fmt;
use std::io;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::thread::JoinHandle;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};

use crate::context::{CancelGuard, Context};

/// The cause given to the context when a signal cancels it.
///
/// # Examples
///
/// What code reading the cause sees (the cause is set by hand here; a real
/// signal sets it on the `quiesce-signals` thread):
///
/// ```
/// use quiesce::signals::SignalReceived;
/// use quiesce::Context;
///
/// let ctx = Context::background().with_cancel();
/// ctx.cancel_with_cause(SignalReceived(15)); // SIGTERM
/// let cause = ctx.cause().unwrap();
/// assert_eq!(cause.downcast_ref::<SignalReceived>(), Some(&SignalReceived(15)));
/// assert_eq!(cause.to_string(), "received SIGTERM");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignalReceived(pub i32);

impl SignalReceived {
    /// The signal's name (`SIGTERM`, `SIGHUP`, …), or `signal N`.
    ///
    /// # Examples
    ///
    /// ```
    /// use quiesce::signals::SignalReceived;
    ///
    /// assert_eq!(SignalReceived(2).name(), "SIGINT");
    /// assert_eq!(SignalReceived(1).name(), "SIGHUP");
    /// assert_eq!(SignalReceived(40).name(), "signal 40"); // no name of its own
    /// ```
    pub fn name(&self) -> String {
        signal_name(self.0)
    }
}

impl fmt::Display for SignalReceived {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "received {}", signal_name(self.0))
    }
}

impl std::error::Error for SignalReceived {}

/// The name of a signal that ends a process by default (`SIGINT`, `SIGTERM`,
/// `SIGHUP`, `SIGQUIT`, `SIGUSR1`, `SIGUSR2`, `SIGALRM`), or `signal N`.
///
/// # Examples
///
/// ```
/// use quiesce::signals::signal_name;
///
/// assert_eq!(signal_name(15), "SIGTERM");
/// assert_eq!(signal_name(2), "SIGINT");
/// assert_eq!(signal_name(10), "SIGUSR1");
/// assert_eq!(signal_name(40), "signal 40");
/// ```
pub fn signal_name(signal: i32) -> String {
    use signal_hook::consts::{SIGALRM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
    let name = match signal {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        SIGHUP => "SIGHUP",
        SIGQUIT => "SIGQUIT",
        SIGUSR1 => "SIGUSR1",
        SIGUSR2 => "SIGUSR2",
        SIGALRM => "SIGALRM",
        n => return format!("signal {n}"),
    };
    name.to_string()
}

/// The context of a [`signal_context`], owning its `quiesce-signals`
/// thread. It derefs to [`Context`] (`ctx.done()`, `ctx.check()`, `&ctx`
/// as a `&Context` argument); [`context`](SignalGuard::context) gives a
/// plain `Context` for other threads. Dropping it stops listening (the
/// handlers are unregistered), joins the thread and cancels the context.
///
/// The process's original disposition is not restored (signal-hook cannot
/// do it): once the guard is dropped, SIGINT and SIGTERM are ignored. Keep
/// it for the whole life of the program (`let ctx = …` in `main`) and drop
/// it as part of the shutdown, not to go back to Ctrl-C ending the program.
/// `let _ = signal_context(&parent)?;` drops it at once: nothing is left
/// that listens, and both signals are ignored.
///
/// # Examples
///
/// Not run: a doctest must not touch the test process's signals.
///
/// ```no_run
/// use quiesce::{signals, Context};
///
/// let ctx = signals::signal_context(&Context::background())?;
/// // ... serve until `ctx` is done ...
/// let _ = ctx.done().recv();
/// drop(ctx); // stops the `quiesce-signals` thread and joins it
/// # Ok::<(), std::io::Error>(())
/// ```
#[must_use = "dropping the guard stops listening for signals at once"]
pub struct SignalGuard {
    ctx: Context,
    handle: Handle,
    thread: Option<JoinHandle<()>>,
    received: Arc<AtomicI32>,
    forced: Context,
}

impl SignalGuard {
    /// The first signal received, if any.
    ///
    /// # Examples
    ///
    /// Not run: a doctest must not touch the test process's signals.
    ///
    /// ```no_run
    /// use quiesce::{signals, Context};
    ///
    /// let ctx = signals::signal_context(&Context::background())?;
    /// assert_eq!(ctx.received(), None);
    /// let _ = ctx.done().recv(); // until Ctrl-C or SIGTERM
    /// let signal = ctx.received().expect("only a signal cancels this context");
    /// eprintln!("stopping on {}", signals::signal_name(signal));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn received(&self) -> Option<i32> {
        match self.received.load(Ordering::SeqCst) {
            0 => None,
            n => Some(n),
        }
    }

    /// A context done at the second SIGINT or SIGTERM, with
    /// [`SignalReceived`] as its [cause](Context::cause): the graceful
    /// shutdown is taking too long and should be given up. (It is also done,
    /// without that cause, once the guard is dropped.)
    ///
    /// # Examples
    ///
    /// Not run: a doctest must not touch the test process's signals.
    ///
    /// ```no_run
    /// use crossbeam_channel::select;
    /// use quiesce::signals::{self, SignalReceived};
    /// use quiesce::{Context, exit};
    ///
    /// let ctx = signals::signal_context(&Context::background())?;
    /// let (finished_tx, finished) = crossbeam_channel::bounded::<()>(1);
    /// // ... work under `ctx` that sends on `finished_tx` once it has stopped ...
    /// # drop(finished_tx);
    /// let _ = ctx.done().recv(); // the first signal
    /// select! {
    ///     recv(finished) -> _ => {}  // stopped gracefully
    ///     recv(ctx.forced().done()) -> _ => {
    ///         let cause = ctx.forced().cause();
    ///         if let Some(SignalReceived(n)) = cause.and_then(|c| c.downcast_ref().copied()) {
    ///             std::process::exit(exit::forced(n)); // the program decides to exit
    ///         }
    ///     }
    /// }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn forced(&self) -> &Context {
        &self.forced
    }

    /// A plain [`Context`] for the same context, to move into a thread or
    /// store; it does not own the signal handling (dropping it does
    /// nothing). The same as `clone()` on the guard, which derefs to
    /// `Context`.
    ///
    /// # Examples
    ///
    /// Not run: a doctest must not touch the test process's signals.
    ///
    /// ```no_run
    /// use quiesce::{signals, Context};
    ///
    /// let ctx = signals::signal_context(&Context::background())?;
    /// let worker_ctx = ctx.context();
    /// let worker = std::thread::spawn(move || worker_ctx.done().recv());
    /// let _ = worker.join(); // until Ctrl-C or SIGTERM
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn context(&self) -> Context {
        self.ctx.clone()
    }
}

impl Deref for SignalGuard {
    type Target = Context;

    #[inline]
    fn deref(&self) -> &Context {
        &self.ctx
    }
}

impl AsRef<Context> for SignalGuard {
    #[inline]
    fn as_ref(&self) -> &Context {
        &self.ctx
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl fmt::Debug for SignalGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignalGuard")
            .field("err", &self.ctx.err())
            .field("received", &self.received())
            .finish()
    }
}

/// A child of `parent` cancelled by the first SIGINT or SIGTERM, with
/// [`SignalReceived`] as its [cause](Context::cause); a second signal
/// cancels the guard's [`forced`](SignalGuard::forced) context (see
/// [Ending the process](self#ending-the-process)). The returned
/// [`SignalGuard`] derefs to the child and owns the listening: dropping it
/// stops listening and cancels the child (Go's `stop()`).
///
/// # Errors
///
/// When the handlers cannot be installed or the thread cannot start.
///
/// # Examples
///
/// Not run: a doctest must not touch the test process's signals.
///
/// ```no_run
/// use std::time::Duration;
/// use quiesce::signals::{self, SignalReceived};
/// use quiesce::{Context, Threads};
///
/// let ctx = signals::signal_context(&Context::background())?;
/// let mut threads = Threads::new(&ctx);
/// threads.spawn("intake", |ctx| while ctx.sleep(Duration::from_millis(100)).is_ok() {})?;
/// let _ = ctx.done().recv(); // until Ctrl-C or SIGTERM
/// assert!(ctx.cause().unwrap().downcast_ref::<SignalReceived>().is_some());
/// let report = threads.join_timeout(Duration::from_secs(10));
/// assert!(report.running.is_empty(), "stuck: {:?}", report.running);
/// drop(ctx); // stops listening, joins `quiesce-signals`
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn signal_context(parent: &Context) -> io::Result<SignalGuard> {
    let cancel = parent.with_cancel();
    let ctx = cancel.context();
    let force = Context::background().with_cancel();
    let forced = force.context();
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    let handle = signals.handle();
    let received = Arc::new(AtomicI32::new(0));
    let first = received.clone();
    let thread = crate::leak::spawn("quiesce-signals".to_string(), move || {
        listen(&mut signals, &cancel, &force, &first);
    })?;
    Ok(SignalGuard {
        ctx,
        handle,
        thread: Some(thread),
        received,
        forced,
    })
}

fn listen(signals: &mut Signals, cancel: &CancelGuard, force: &CancelGuard, first: &AtomicI32) {
    for signal in signals.forever() {
        if first
            .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            log::info!(
                "{}: shutting down gracefully (send it again to stop waiting)",
                SignalReceived(signal)
            );
            cancel.cancel_with_cause(SignalReceived(signal));
        } else if !force.is_done() {
            log::warn!(
                "{} again: giving up the graceful shutdown",
                signal_name(signal)
            );
            force.cancel_with_cause(SignalReceived(signal));
        }
    }
}
