//! Hooks for the loom models of the pool in `tests/loom.rs`. Compiled only
//! with `--cfg quiesce_loom`, hidden from the docs: not part of the API.
//!
//! Under loom no worker thread is started (see `worker::start`): a model
//! takes a worker's place and plays its part with these hooks, which run
//! the code the worker loop runs, and reads the state it asserts on.

use crate::sync::Ordering;

use super::{Pool, Shared};

impl Pool {
    /// `(min, max)` now.
    #[doc(hidden)]
    pub fn loom_limits(&self) -> (usize, usize) {
        let limits = self.shared.limits.load(Ordering::SeqCst);
        (limits.min, limits.max)
    }

    /// Takes a worker's place, as growing the pool does (no thread starts
    /// under loom); `false` at `max` or once closed.
    #[doc(hidden)]
    pub fn loom_add_worker(&self) -> bool {
        Shared::spawn_worker(&self.shared).unwrap_or(false)
    }

    /// What a worker whose idle wait timed out does (`Wake::IdleTimeout`
    /// in the worker loop); `true` when it leaves.
    #[doc(hidden)]
    pub fn loom_idle_timeout(&self) -> bool {
        self.shared.leave_when_idle()
    }
}
