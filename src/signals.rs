//! SIGINT and SIGTERM as a [`Context`]: the first signal cancels it (a
//! graceful shutdown starts), a second one ends the process at once with
//! exit code 128 + the signal's number.
//!
//! Go programs write this by hand with `signal.Notify(ch, os.Interrupt,
//! syscall.SIGTERM)` and a goroutine, or use `signal.NotifyContext`. Here
//! [`signal_context`] returns the context and a guard that owns the
//! listening thread (`quiesce-signals`); dropping the guard stops listening
//! and joins the thread.
//!
//! The signal handlers themselves only write to a pipe (signal-hook's
//! `iterator`); everything else — cancelling, logging, exiting — happens on
//! the `quiesce-signals` thread.
//!
//! ```no_run
//! let (ctx, signals) = quiesce::signals::signal_context(&quiesce::Context::background()).unwrap();
//! // ... start work under `ctx` ...
//! let _ = ctx.done().recv(); // blocks until Ctrl-C or SIGTERM
//! println!("stopping after {:?}", signals.received());
//! ```
//!
//! Signal dispositions are process-wide: use one `signal_context` at a time
//! (tests that touch signals belong in their own test binary).
//!
//! # Ending the process
//!
//! The second signal is the one place where the library ends the process
//! itself (`exit_at_once`, with [`exit::forced`](crate::exit::forced): 130
//! after SIGINT, 143 after SIGTERM, logged at WARN first). Nothing else in
//! the library calls `std::process::exit`; [`Supervisor::run`] and every
//! other blocking call return, and the caller decides how to exit.
//!
//! It stays, rather than being handed back as a value, because of who
//! could act on it: a second signal means the graceful shutdown is taking
//! too long, and at that moment the caller's thread is blocked in exactly
//! that shutdown ([`Supervisor::run`], a join, a pool's drain). Only the
//! `quiesce-signals` thread is free to act. It is also what the user asked
//! for by calling [`signal_context`] or [`Supervisor::run_until_signal`],
//! whose first lines say so: once handlers are installed, SIGINT and SIGTERM
//! no longer end the process by themselves, and without this a stuck
//! shutdown could only be ended by SIGKILL. (signal-hook makes the same
//! choice explicit with `flag::register_conditional_shutdown`.) A program
//! that wants another policy keeps its own signal handling and cancels a
//! [`Context`] it gives to [`Supervisor::run`], which never exits the
//! process.
//!
//! [`Supervisor::run`]: crate::Supervisor::run
//! [`Supervisor::run_until_signal`]: crate::Supervisor::run_until_signal

use std::fmt;
use std::io;
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
/// let (ctx, guard) = Context::background().with_cancel();
/// guard.cancel_with_cause(SignalReceived(15)); // SIGTERM
/// let cause = ctx.cause().unwrap();
/// assert_eq!(cause.downcast_ref::<SignalReceived>(), Some(&SignalReceived(15)));
/// assert_eq!(cause.to_string(), "received SIGTERM");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignalReceived(pub i32);

impl SignalReceived {
    /// `SIGTERM`, `SIGINT`, or the number.
    ///
    /// # Examples
    ///
    /// ```
    /// use quiesce::signals::SignalReceived;
    ///
    /// assert_eq!(SignalReceived(2).name(), "SIGINT");
    /// assert_eq!(SignalReceived(1).name(), "signal 1"); // SIGHUP: not one listened to
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

/// `SIGTERM`, `SIGINT`, or `signal N`.
///
/// # Examples
///
/// ```
/// use quiesce::signals::signal_name;
///
/// assert_eq!(signal_name(15), "SIGTERM");
/// assert_eq!(signal_name(2), "SIGINT");
/// assert_eq!(signal_name(10), "signal 10");
/// ```
pub fn signal_name(signal: i32) -> String {
    match signal {
        SIGINT => "SIGINT".to_string(),
        SIGTERM => "SIGTERM".to_string(),
        n => format!("signal {n}"),
    }
}

/// Owns the `quiesce-signals` thread of a [`signal_context`]; dropping it
/// stops listening (the handlers are unregistered) and joins the thread.
///
/// The process's original disposition is not restored (signal-hook cannot
/// do it): once the guard is dropped, SIGINT and SIGTERM are ignored. Drop
/// it as part of the shutdown, not to go back to Ctrl-C ending the program.
///
/// # Examples
///
/// Not run: a doctest must not touch the test process's signals.
///
/// ```no_run
/// use quiesce::{signals, Context};
///
/// let (ctx, guard) = signals::signal_context(&Context::background())?;
/// // ... serve until `ctx` is done ...
/// let _ = ctx.done().recv();
/// drop(guard); // stops the `quiesce-signals` thread and joins it
/// # Ok::<(), std::io::Error>(())
/// ```
#[must_use = "dropping the guard stops listening for signals at once"]
pub struct SignalGuard {
    handle: Handle,
    thread: Option<JoinHandle<()>>,
    received: Arc<AtomicI32>,
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
    /// let (ctx, guard) = signals::signal_context(&Context::background())?;
    /// assert_eq!(guard.received(), None);
    /// let _ = ctx.done().recv(); // until Ctrl-C or SIGTERM
    /// let signal = guard.received().expect("only a signal cancels this context");
    /// eprintln!("stopping on {}", signals::signal_name(signal));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn received(&self) -> Option<i32> {
        match self.received.load(Ordering::SeqCst) {
            0 => None,
            n => Some(n),
        }
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
            .field("received", &self.received())
            .finish()
    }
}

/// A child of `parent` cancelled by the first SIGINT or SIGTERM, with
/// [`SignalReceived`] as its [cause](Context::cause); a second signal exits
/// the process at once with [`exit::forced`](crate::exit::forced) (128 + its
/// number; see [Ending the process](self#ending-the-process)).
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
/// let (ctx, guard) = signals::signal_context(&Context::background())?;
/// let mut threads = Threads::new(&ctx);
/// threads.spawn("intake", |ctx| while ctx.sleep(Duration::from_millis(100)).is_ok() {})?;
/// let _ = ctx.done().recv(); // until Ctrl-C or SIGTERM; a second one exits at once
/// assert!(ctx.cause().unwrap().downcast_ref::<SignalReceived>().is_some());
/// let report = threads.join_timeout(Duration::from_secs(10));
/// assert!(report.running.is_empty(), "stuck: {:?}", report.running);
/// drop(guard);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn signal_context(parent: &Context) -> io::Result<(Context, SignalGuard)> {
    let (ctx, cancel) = parent.with_cancel();
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    let handle = signals.handle();
    let received = Arc::new(AtomicI32::new(0));
    let first = received.clone();
    let thread = crate::leak::spawn("quiesce-signals".to_string(), move || {
        listen(&mut signals, &cancel, &first);
    })?;
    let guard = SignalGuard {
        handle,
        thread: Some(thread),
        received,
    };
    Ok((ctx, guard))
}

fn listen(signals: &mut Signals, cancel: &CancelGuard, first: &AtomicI32) {
    for signal in signals.forever() {
        if first
            .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            log::info!(
                "{}: shutting down gracefully (send it again to exit at once)",
                SignalReceived(signal)
            );
            cancel.cancel_with_cause(SignalReceived(signal));
        } else {
            exit_at_once(signal);
        }
    }
}

/// The library's one call to `std::process::exit`: a second signal while
/// the shutdown the first one started is under way (see the module's
/// "Ending the process").
fn exit_at_once(signal: i32) -> ! {
    let code = crate::exit::forced(signal);
    log::warn!(
        "{} again: exiting now with code {code}",
        signal_name(signal)
    );
    std::process::exit(code)
}
