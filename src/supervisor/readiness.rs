//! [`Readiness`]: whether the group is serving, for a health endpoint.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether the group is serving: true once every service is up, false from
/// the first moment of shutdown and while a service restarts. Cheap to
/// clone and to read (one atomic load).
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
/// use quiesce::{Context, Supervisor};
///
/// let mut sup = Supervisor::new();
/// sup.add_fn("intake", |ctx| { ctx.ready(); let _ = ctx.done().recv(); Ok(()) });
/// let readiness = sup.readiness(); // for a `/readyz` handler
/// assert!(!readiness.is_ready());
/// let stop_now = Context::background().with_cancel();
/// let stop = stop_now.context();
/// let runner = std::thread::spawn(move || sup.run(&stop));
/// let give_up = Instant::now() + Duration::from_secs(10);
/// while !readiness.is_ready() && Instant::now() < give_up {
///     std::thread::sleep(Duration::from_millis(1));
/// }
/// assert!(readiness.is_ready()); // every service is up
/// drop(stop_now);
/// let _ = runner.join().unwrap();
/// assert!(!readiness.is_ready()); // false from the first moment of shutdown
/// ```
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// A readiness flag, initially false.
    ///
    /// # Examples
    ///
    /// ```
    /// // a placeholder for a health endpoint built before the supervisor
    /// let readiness = quiesce::Readiness::new();
    /// assert!(!readiness.is_ready());
    /// ```
    pub fn new() -> Readiness {
        Readiness::default()
    }

    /// `true` while serving.
    ///
    /// # Examples
    ///
    /// See [`Readiness`]'s example.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Written only by the run, on the caller's thread (supervisor
    /// invariant 5).
    pub(super) fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }
}
