//! Turning timeouts into deadlines, crossbeam's way: a duration too large to
//! add to "now" means "no deadline" (wait forever), never a panic.

use std::time::{Duration, Instant};

use crate::context::Context;

/// The instant `timeout` from now, or `None` when that overflows `Instant`.
pub(crate) fn after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// The earlier of two optional deadlines (`None` is "never").
pub(crate) fn min(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// When a blocking operation that can also be tried or bounded gives up:
/// at once (`try_`), at a deadline (`None`: never), or when a context is
/// done.
#[derive(Clone, Copy)]
pub(crate) enum Until<'a> {
    Now,
    Deadline(Option<Instant>),
    Context(&'a Context),
}
