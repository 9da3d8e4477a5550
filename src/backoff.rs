//! `Backoff`: exponential waits between retries, for the supervisor's
//! restarts and any other retry loop.

use std::time::Duration;

/// Exponential backoff: the wait before a retry, `initial` for the first,
/// doubling with each retry after it, never more than `max`. No jitter.
///
/// The restarts of a [`RestartPolicy`](crate::RestartPolicy) wait this way; it is public for any
/// other retry loop, so that a program has one backoff, not one per loop
/// (cenkalti/backoff's `ExponentialBackOff` in Go, without the
/// randomization). Sleeping is left to the caller: under a
/// [`Context`](crate::Context),
/// `ctx.sleep(backoff.delay(n))` gives up the wait when the context is
/// done.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use quiesce::Backoff;
///
/// let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
/// let waits: Vec<u64> = (0..10).map(|retry| backoff.delay(retry).as_secs()).collect();
/// assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]);
/// assert_eq!(backoff.delay(u32::MAX), Duration::from_secs(300)); // no overflow
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
}

impl Backoff {
    /// `initial` before the first retry, doubling, at most `max` (a `max`
    /// below `initial` is taken as `initial`).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use quiesce::Backoff;
    ///
    /// let (two, one) = (Duration::from_secs(2), Duration::from_secs(1));
    /// assert_eq!(Backoff::new(two, one), Backoff::new(two, two));
    /// assert_eq!(Backoff::new(two, one).delay(5), two);
    /// ```
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
        }
    }

    /// The wait before retry number `retry`, counted from 0: `initial`
    /// times 2^`retry`, at most `max`. Never panics or overflows.
    ///
    /// # Examples
    ///
    /// A retry loop that gives up its wait when its context is done:
    ///
    /// ```
    /// use std::time::Duration;
    /// use quiesce::{Backoff, Context};
    ///
    /// let backoff = Backoff::new(Duration::from_millis(1), Duration::from_millis(4));
    /// let ctx = Context::background();
    /// let mut attempts = 0;
    /// let result = loop {
    ///     attempts += 1;
    ///     let outcome: Result<&str, &str> = if attempts < 4 { Err("busy") } else { Ok("sent") };
    ///     match outcome {
    ///         Ok(sent) => break Ok(sent),
    ///         Err(_) if attempts == 10 => break outcome,
    ///         Err(_) => {
    ///             if ctx.sleep(backoff.delay(attempts - 1)).is_err() {
    ///                 break outcome; // cancelled while waiting
    ///             }
    ///         }
    ///     }
    /// };
    /// assert_eq!((result, attempts), (Ok("sent"), 4));
    /// ```
    pub fn delay(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}
