//! The signals that end a process by default besides SIGINT and SIGTERM
//! (which the library's `signal_context` turns into a graceful stop):
//! SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 and SIGALRM. Without a handler each
//! of them kills the process at once, with no log line and an exit code
//! outside the documented ones; with [`watch`], each is handed to a
//! callback on a named thread (`signals-other`) instead, which logs it and
//! decides. The handlers themselves only write to signal-hook's pipe.
//!
//! SIGKILL and SIGSTOP cannot be caught; SIGPIPE is already ignored by the
//! Rust runtime.

use std::io;

use quiesce::{Context, Threads};
use signal_hook::consts::{SIGALRM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
use signal_hook::iterator::{Handle, Signals};

/// The signals [`watch`] takes over.
pub(crate) const WATCHED: [i32; 5] = [SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGALRM];

/// Owns the `signals-other` thread; dropping it stops listening and joins
/// the thread. (The handlers stay installed: once taken over, the signals
/// no longer kill the process, also after the drop.)
pub(crate) struct OtherSignals {
    handle: Handle,
    _thread: Threads,
}

impl Drop for OtherSignals {
    fn drop(&mut self) {
        // Ends the thread's iteration; `Threads` joins it when dropped next.
        self.handle.close();
    }
}

/// Calls `on_signal` with each of [`WATCHED`] as it arrives, on a thread of
/// its own.
///
/// # Errors
///
/// When the handlers cannot be installed or the thread cannot start.
pub(crate) fn watch(on_signal: impl Fn(i32) + Send + 'static) -> io::Result<OtherSignals> {
    let mut signals = Signals::new(WATCHED)?;
    let handle = signals.handle();
    let mut thread = Threads::new(&Context::background());
    thread.spawn("signals-other", move |_ctx| {
        for signal in signals.forever() {
            on_signal(signal);
        }
    })?;
    Ok(OtherSignals {
        handle,
        _thread: thread,
    })
}
