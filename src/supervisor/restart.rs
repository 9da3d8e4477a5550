//! Restarting a failed service: the [`RestartPolicy`] (a budget within a
//! sliding window, exponential [`Backoff`]) and the service thread's loop
//! that applies it.

use std::collections::VecDeque;
use std::error::Error;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::run::Event;
use super::{Outcome, Service, ServiceContext};
use crate::backoff::Backoff;
use crate::context::Context;

/// Restart a failed service with exponential backoff, at most `max` times
/// within a sliding window of `within`; one more failure stops the group.
///
/// # Examples
///
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::sync::Arc;
/// use std::time::Duration;
/// use quiesce::{Context, RestartPolicy, Supervisor, supervisor::Outcome};
///
/// let runs = Arc::new(AtomicU32::new(0));
/// let counter = runs.clone();
/// let quick = Duration::from_millis(1);
/// let mut sup = Supervisor::new();
/// sup.add_fn("peer-sync", move |_ctx| {
///     counter.fetch_add(1, Ordering::SeqCst);
///     Err("peer API unreachable".into())
/// })
/// .restart(RestartPolicy::new(2, Duration::from_secs(60)).backoff(quick, quick));
/// let report = sup.run(&Context::background());
/// assert_eq!(runs.load(Ordering::SeqCst), 3); // the first run and two restarts
/// assert_eq!(report.services[0].restarts, 2);
/// assert_eq!(report.services[0].outcome, Outcome::Failed("peer API unreachable".into()));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartPolicy {
    max: u32,
    within: Duration,
    backoff: Backoff,
}

impl RestartPolicy {
    /// At most `max` restarts within `within`; backoff 100 ms, doubling, at
    /// most 10 s.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use quiesce::RestartPolicy;
    ///
    /// let policy = RestartPolicy::new(5, Duration::from_secs(60)); // 5 a minute at most
    /// let defaults = policy.backoff(Duration::from_millis(100), Duration::from_secs(10));
    /// assert_eq!(policy, defaults);
    /// ```
    pub fn new(max: u32, within: Duration) -> RestartPolicy {
        RestartPolicy {
            max,
            within,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(10)),
        }
    }

    /// The first backoff and the cap of the doubling: the waits of a
    /// [`Backoff::new(initial, max)`](Backoff::new).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use quiesce::RestartPolicy;
    ///
    /// let policy = RestartPolicy::new(3, Duration::from_secs(60));
    /// let (two, one) = (Duration::from_secs(2), Duration::from_secs(1));
    /// // the cap is never below the first backoff
    /// assert_eq!(policy.backoff(two, one), policy.backoff(two, two));
    /// ```
    pub fn backoff(mut self, initial: Duration, max: Duration) -> RestartPolicy {
        self.backoff = Backoff::new(initial, max);
        self
    }

    /// The wait before restart number `n` (0-based) within the window.
    fn delay(&self, n: u32) -> Duration {
        self.backoff.delay(n)
    }
}

/// An error and its sources, `outer: inner: innermost`.
fn error_chain(err: &(dyn Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The body of a service's thread: run, and restart under the policy. It
/// reaches the run only through `events`, and its last act is the one
/// `Exited` (supervisor invariant 3). A service whose context is done is
/// not restarted: only the run cancels it, to stop it (invariant 2).
///
/// Apart from `name()`, the user code it calls runs under the panic catch:
/// the service's `run`, the `Display` of the error it returns, and its
/// `Drop`, which is part of its stop and so comes before `Exited`.
pub(super) fn service_thread(
    index: usize,
    mut service: Box<dyn Service>,
    ctx: &Context,
    events: &Sender<Event>,
    policy: Option<RestartPolicy>,
) {
    let mut restarts = 0u32;
    let mut recent: VecDeque<Instant> = VecDeque::new();
    let outcome = loop {
        // A fresh context per run: at most one `Ready` each (invariant 3).
        let sctx = ServiceContext {
            ctx: ctx.clone(),
            index,
            events: events.clone(),
            ready_sent: AtomicBool::new(false),
        };
        let run = || service.run(&sctx).map_err(|err| error_chain(err.as_ref()));
        let failure = match crate::panic::catch(run) {
            Ok(Ok(())) if ctx.is_done() => break Outcome::Clean,
            Ok(Ok(())) => break Outcome::ExitedEarly,
            Ok(Err(message)) => Outcome::Failed(message),
            Err(panic) => Outcome::Panicked(panic),
        };
        if ctx.is_done() {
            break failure;
        }
        let Some(policy) = policy else { break failure };
        let now = Instant::now();
        while recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > policy.within)
        {
            recent.pop_front();
        }
        if recent.len() >= policy.max as usize {
            log::error!(
                "service {}: restart budget spent ({} within {:?})",
                service.name(),
                policy.max,
                policy.within
            );
            break failure;
        }
        let backoff = policy.delay(recent.len() as u32);
        restarts += 1;
        let _ = events.send(Event::Restarting {
            index,
            attempt: restarts,
            error: failure.to_string(),
            backoff,
        });
        if ctx.sleep(backoff).is_err() {
            break failure;
        }
        recent.push_back(Instant::now());
    };
    let name = service.name().to_string();
    let outcome = match crate::panic::catch(move || drop(service)) {
        Ok(()) => outcome,
        Err(panic) if matches!(outcome, Outcome::Clean | Outcome::ExitedEarly) => {
            Outcome::Panicked(panic)
        }
        Err(panic) => {
            log::error!("service {name}: its drop {panic} (after it {outcome})");
            outcome
        }
    };
    // The last act (invariant 3).
    let _ = events.send(Event::Exited {
        index,
        outcome,
        restarts,
    });
}
