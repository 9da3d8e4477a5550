//! What a run reports: each service's [`Outcome`], why the group stopped
//! ([`StopCause`]), the [`SupervisorReport`] and the process [`exit`]
//! codes it maps to.

use std::fmt;
use std::time::Duration;

use crate::panic::Panic;
use crate::threads::Running;

/// Exit codes for a process whose life is a [`Supervisor`](crate::Supervisor) run; see
/// [`SupervisorReport::exit_code`].
///
/// # Examples
///
/// ```
/// use quiesce::{exit, Context, Supervisor};
///
/// let mut sup = Supervisor::new();
/// sup.add_fn("import", |_ctx| Err("unreadable export file".into()));
/// let report = sup.run(&Context::background());
/// assert_eq!(report.exit_code(), exit::SERVICE_FAILED);
/// // at the end of `main`: std::process::exit(report.exit_code())
/// ```
pub mod exit {
    /// Graceful stop. (Not 143: systemd counts 128+SIGTERM as a failure.)
    ///
    /// See the [module's example](self).
    pub const OK: i32 = 0;
    /// A service failed, panicked, exited on its own, or could not start.
    ///
    /// See the [module's example](self).
    pub const SERVICE_FAILED: i32 = 1;
    /// The shutdown deadline passed with a service still running.
    ///
    /// See the [module's example](self).
    pub const DEADLINE_EXCEEDED: i32 = 3;
    /// A second signal during shutdown: 128 + the signal's number (130 for
    /// SIGINT, 143 for SIGTERM), the code a report given up by that signal
    /// calls for (see [`signals`](crate::signals#ending-the-process)). The
    /// one place this number is computed.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(quiesce::exit::forced(2), 130); // SIGINT
    /// assert_eq!(quiesce::exit::forced(15), 143); // SIGTERM
    /// ```
    pub const fn forced(signal: i32) -> i32 {
        128 + signal
    }
}

/// How one service ended.
///
/// # Examples
///
/// ```
/// use quiesce::{Context, Supervisor, supervisor::Outcome};
///
/// let mut sup = Supervisor::new();
/// sup.add_fn("store", |_ctx| Err("database locked".into())); // fails before it is up
/// sup.add_fn("intake", |ctx| { ctx.ready(); let _ = ctx.done().recv(); Ok(()) });
/// let report = sup.run(&Context::background());
/// let outcomes: Vec<&Outcome> = report.services.iter().map(|s| &s.outcome).collect();
/// assert_eq!(outcomes, [&Outcome::Failed("database locked".into()), &Outcome::NotStarted]);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Returned `Ok` after its context was cancelled.
    Clean,
    /// Returned an error (its message, with its sources).
    Failed(String),
    /// Panicked.
    Panicked(Panic),
    /// Returned `Ok` on its own, before being asked to stop.
    ExitedEarly,
    /// Still running at its stop deadline (it was left running); how long
    /// its thread had run. How long the shutdown waited for it is in
    /// [`ServiceReport::waited`].
    Stuck(Duration),
    /// Cancelled but never waited for: the shutdown budget was spent before
    /// its turn (it was left running, like a stuck one, and is named in
    /// [`SupervisorReport::stuck`]). Each service keeps a minimum share of
    /// the budget (see [`Supervisor`](crate::Supervisor#the-shutdown-budget)),
    /// so this happens only when that share is zero: a zero shutdown or
    /// stop timeout, or a drain delay and stops that ran past their share.
    NotWaited,
    /// Never started (an earlier service failed to come up).
    NotStarted,
}

/// The one description of an outcome, in the report's line and in the log:
/// lowercase, no trailing period.
///
/// # Examples
///
/// ```
/// use quiesce::supervisor::Outcome;
///
/// assert_eq!(Outcome::Clean.to_string(), "stopped cleanly");
/// assert_eq!(Outcome::Failed("disk full".into()).to_string(), "failed: disk full");
/// assert_eq!(Outcome::ExitedEarly.to_string(), "exited on its own");
/// assert_eq!(Outcome::NotStarted.to_string(), "not started");
/// assert_eq!(
///     Outcome::NotWaited.to_string(),
///     "not waited for (the shutdown budget was spent)"
/// );
/// ```
impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Clean => f.write_str("stopped cleanly"),
            Outcome::Failed(e) => write!(f, "failed: {e}"),
            Outcome::Panicked(p) => write!(f, "{p}"),
            Outcome::ExitedEarly => f.write_str("exited on its own"),
            Outcome::Stuck(age) => write!(f, "still running after {age:.1?}"),
            Outcome::NotStarted => f.write_str("not started"),
            Outcome::NotWaited => f.write_str("not waited for (the shutdown budget was spent)"),
        }
    }
}

/// One service in a [`SupervisorReport`].
///
/// # Examples
///
/// ```
/// use quiesce::{Context, Supervisor, supervisor::Outcome};
///
/// let mut sup = Supervisor::new();
/// sup.add_fn("store", |ctx| { ctx.ready(); let _ = ctx.done().recv(); Ok(()) });
/// let stop = Context::background().with_cancel();
/// stop.cancel();
/// let report = sup.run(&stop);
/// let store = &report.services[0];
/// assert_eq!((store.name.as_str(), store.restarts), ("store", 0));
/// assert_eq!(store.outcome, Outcome::Clean);
/// assert!(store.stop_time.is_some()); // it was stopped, and returned
/// assert_eq!(store.waited, store.stop_time); // the wait ended with its return
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceReport {
    /// The service's name.
    pub name: String,
    /// How it ended.
    pub outcome: Outcome,
    /// How many times it was restarted.
    pub restarts: u32,
    /// How long its stop took (from its cancel to its return), if it was
    /// stopped.
    pub stop_time: Option<Duration>,
    /// How long the shutdown waited for it once cancelled, whether or not
    /// it returned: for a [stuck](Outcome::Stuck) service, the part of the
    /// shutdown budget it took. `None` when the shutdown did not wait for
    /// it (it had ended already, was never started, or was
    /// [not waited for](Outcome::NotWaited)).
    pub waited: Option<Duration>,
}

/// Why the group stopped.
///
/// # Examples
///
/// ```
/// use quiesce::{Context, StopCause, Supervisor};
///
/// let mut sup = Supervisor::new();
/// sup.add_fn("intake", |ctx| { ctx.ready(); let _ = ctx.done().recv(); Ok(()) });
/// let stop = Context::background().with_cancel();
/// stop.cancel_with_cause("maintenance window"); // a signal gives `received SIGTERM`
/// let report = sup.run(&stop);
/// assert_eq!(report.cause, StopCause::Requested("maintenance window".into()));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopCause {
    /// The stop context was done; its cause (e.g. `received SIGTERM`).
    Requested(String),
    /// A service failed, panicked or exited on its own.
    ServiceEnded(String),
    /// A service did not come up.
    StartFailed {
        /// The service.
        service: String,
        /// Why.
        reason: String,
    },
}

/// Why the group stopped, for a log line: lowercase, no trailing period.
///
/// # Examples
///
/// ```
/// use quiesce::StopCause;
///
/// let requested = StopCause::Requested("received SIGTERM".into());
/// assert_eq!(requested.to_string(), "stop requested (received SIGTERM)");
/// assert_eq!(StopCause::ServiceEnded("intake".into()).to_string(), "service intake ended");
/// let start_failed = StopCause::StartFailed {
///     service: "store".into(),
///     reason: "failed: database locked".into(),
/// };
/// assert_eq!(start_failed.to_string(), "service store did not start: failed: database locked");
/// ```
impl fmt::Display for StopCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopCause::Requested(why) => write!(f, "stop requested ({why})"),
            StopCause::ServiceEnded(name) => write!(f, "service {name} ended"),
            StopCause::StartFailed { service, reason } => {
                write!(f, "service {service} did not start: {reason}")
            }
        }
    }
}

/// What a [`Supervisor`](crate::Supervisor) run did.
///
/// # Examples
///
/// ```
/// use quiesce::{Context, StopCause, Supervisor};
///
/// let mut sup = Supervisor::new();
/// sup.add_fn("import", |ctx| { ctx.ready(); Ok(()) }); // returns before it is asked to
/// let report = sup.run(&Context::background());
/// assert_eq!(report.cause, StopCause::ServiceEnded("import".into()));
/// let line = report.to_string(); // for the log
/// assert!(line.starts_with("service import ended; stopped in "));
/// assert!(line.ends_with(" import=exited on its own"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use = "the report says whether the stop was clean"]
pub struct SupervisorReport {
    /// Why the group stopped.
    pub cause: StopCause,
    /// The signal that made the shutdown give up waiting (the second
    /// SIGINT or SIGTERM under
    /// [`run_until_signal`](crate::Supervisor::run_until_signal)), if one
    /// did; the services it did not wait for are in `stuck`.
    pub forced: Option<i32>,
    /// Every service, in the order added.
    pub services: Vec<ServiceReport>,
    /// The services in the order they were stopped.
    pub stop_order: Vec<String>,
    /// Service threads still running when the shutdown gave up on them;
    /// they are left running, detached.
    pub stuck: Vec<Running>,
    /// From the start of the shutdown to its end.
    pub shutdown_time: Duration,
}

impl SupervisorReport {
    /// The process exit code this report calls for: [`exit::forced`] of the
    /// signal when a second signal gave the shutdown up, else [`exit::OK`]
    /// after a graceful stop, [`exit::DEADLINE_EXCEEDED`] when a service was
    /// still running at the deadline, else [`exit::SERVICE_FAILED`] when a
    /// service failed, panicked, exited on its own or did not start.
    ///
    /// # Examples
    ///
    /// ```
    /// use quiesce::{exit, Context, Supervisor};
    ///
    /// let mut graceful = Supervisor::new();
    /// graceful.add_fn("intake", |ctx| { ctx.ready(); let _ = ctx.done().recv(); Ok(()) });
    /// let stop = Context::background().with_cancel();
    /// stop.cancel();
    /// assert_eq!(graceful.run(&stop).exit_code(), exit::OK);
    ///
    /// let mut failing = Supervisor::new();
    /// failing.add_fn("import", |_ctx| Err("bad file".into()));
    /// assert_eq!(failing.run(&Context::background()).exit_code(), exit::SERVICE_FAILED);
    /// ```
    pub fn exit_code(&self) -> i32 {
        if let Some(signal) = self.forced {
            return exit::forced(signal);
        }
        if !self.stuck.is_empty() {
            return exit::DEADLINE_EXCEEDED;
        }
        let failed = self.services.iter().any(|s| {
            matches!(
                s.outcome,
                Outcome::Failed(_) | Outcome::Panicked(_) | Outcome::ExitedEarly
            )
        });
        if failed || !matches!(self.cause, StopCause::Requested(_)) {
            exit::SERVICE_FAILED
        } else {
            exit::OK
        }
    }
}

impl fmt::Display for SupervisorReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.cause)?;
        if let Some(signal) = self.forced {
            write!(
                f,
                "; given up at {}",
                crate::signals::SignalReceived(signal)
            )?;
        }
        write!(f, "; stopped in {:.1?}:", self.shutdown_time)?;
        for (i, s) in self.services.iter().enumerate() {
            f.write_str(if i == 0 { " " } else { "; " })?;
            write!(f, "{}={}", s.name, s.outcome)?;
            if let (Outcome::Stuck(_), Some(waited)) = (&s.outcome, s.waited) {
                write!(f, " (waited {waited:.1?} of the shutdown budget)")?;
            }
            if s.restarts > 0 {
                write!(f, " ({} restarts)", s.restarts)?;
            }
        }
        Ok(())
    }
}
