//! `Supervisor`: a group of long-running services with one lifecycle. The
//! public docs, with the Go libraries it follows, are on [`Supervisor`].
//! This file is the public face (adding services, running); the machinery
//! is beside it:
//!
//! - `builder`: [`SupervisorBuilder`], the supervisor's settings;
//! - `service`: the [`Service`] trait, closures as services, what a service
//!   is given ([`ServiceContext`]) and its settings ([`ServiceSpec`]);
//! - `readiness`: the [`Readiness`] flag;
//! - `restart`: [`RestartPolicy`] (its waits are a [`Backoff`](crate::Backoff)),
//!   and the service thread's loop (run the service, restart it
//!   with backoff within the budget);
//! - `run`: one run (start, serve, stop) as a state machine over `Run`;
//! - `report`: [`Outcome`], [`StopCause`], [`SupervisorReport`], [`exit`]
//!   codes;
//! - `notify`: systemd notifications (`READY=1`, `STATUS=`, `STOPPING=1`,
//!   watchdog).
//!
//! # What a run owns
//!
//! [`Supervisor::run`] turns the supervisor into a `Run`, which owns, until
//! it returns the report: the specs of the services not started yet; one
//! `Slot` per started service (its cancel guard, its thread's handle, and
//! what the run knows of it: up, restarting, how it ended); the receiving
//! end of the event channel; every write to the [`Readiness`] flag; and the
//! systemd notifier.
//!
//! # Which thread touches what
//!
//! - **The caller's thread**, inside [`Supervisor::run`]: all of `Run`. It
//!   alone receives events, reads and writes slots, cancels services and
//!   writes readiness.
//! - **One thread per service**, named after it (`restart::service_thread`):
//!   runs the service with a fresh [`ServiceContext`] each time, applies its
//!   restart policy, and reaches the run only by sending events (`Ready`,
//!   `Restarting`, `Exited`) on the channel.
//! - **`quiesce-watchdog`** (feature `systemd`, when systemd asks for
//!   watchdog pings): reads readiness and the notifier's stopping flag;
//!   owned by the notifier, which joins it when the run ends.
//! - **`quiesce-signals`** (only under [`Supervisor::run_until_signal`]):
//!   cancels the stop context at the first SIGINT or SIGTERM and the force
//!   context at the second (see [`crate::signals`]); owned by
//!   `run_until_signal`, which joins it after the run.
//! - Any thread may read [`Readiness`].
//!
//! # Invariants of a run
//!
//! 1. **Start in order, one at a time.** Service n+1's thread is spawned
//!    only after service n has sent `Ready`. `slots[i]` is the i-th service
//!    added; `slots` holds exactly the services whose thread was spawned,
//!    each once, and `specs` those never reached (reported `NotStarted`).
//! 2. **Only the run cancels a service.** Each service has its own root
//!    context, not a child of the stop context: the stop context being done
//!    starts the shutdown, and the shutdown cancels services one at a time
//!    (6).
//! 3. **One `Exited` per service, last.** A service thread sends at most one
//!    `Ready` per run of the service and exactly one `Exited`, as its last
//!    act: the service's code (its `run`, its error's message, its `Drop`)
//!    has finished by then and a panic in it has been caught. The run then
//!    joins the thread, which waits only for its return. A slot's report is set by
//!    that event, once. (When the thread cannot be spawned, the run sends
//!    its `Exited` itself.)
//! 4. **Every event names a slot.** Events are received only on the
//!    caller's thread, which pushes a service's slot right after spawning it
//!    and before it next receives.
//! 5. **Readiness is true only while serving**: after every service has
//!    come up, before the shutdown begins, and while none is restarting or
//!    has ended. It turns false at the first moment of the shutdown (before
//!    the drain delay and any cancel) and is never true again in the run.
//! 6. **Stop in reverse, in layers.** The shutdown cancels the started
//!    services from the last to the first, waiting for each to exit (or for
//!    its deadline) before cancelling the next. Only started services are
//!    stopped (1), the one being started when the start failed included (it
//!    may be half set up); one that has exited already is not cancelled and
//!    not in `stop_order`.
//! 7. **Deadlines nest, and each service keeps its share.** The overall
//!    shutdown deadline starts when the shutdown begins; the drain delay
//!    and each service's stop deadline end at the latest with it. Each
//!    started service still running when the shutdown begins has a minimum
//!    share, `min(its stop timeout, shutdown timeout / (2 * those
//!    services))`; the drain and each stop end early enough to leave the
//!    shares of the services still to stop after them (those that have
//!    ended need none). The shares come to at most half the budget.
//! 8. **A service still running at its deadline is left running**: its
//!    thread's handle is dropped, it is reported `Stuck` (with how long the
//!    shutdown waited for it, `ServiceReport::waited`) and the exit code is
//!    [`exit::DEADLINE_EXCEEDED`]. A service whose turn comes when what is
//!    left of the budget for it is spent (its share was zero) is cancelled
//!    but not waited for, reported `NotWaited`, never `Stuck`, and left
//!    running the same way; both are in `stuck` and `stop_order`. These are
//!    the library's one detached threads (the process is about to exit);
//!    every other service thread has been joined when `run` returns.
//! 9. **A forced shutdown returns at once.** When the force context is
//!    done (the second signal under `run_until_signal`), every wait of the
//!    shutdown ends, no further service is cancelled, and the report names
//!    the services not waited for as stuck, with the signal in `forced`
//!    and [`exit::forced`] as its exit code. The library never exits the
//!    process; the caller does, with that code.

mod builder;
mod notify;
mod readiness;
mod report;
mod restart;
mod run;
mod service;

use std::fmt;
use std::time::Duration;

use crate::context::Context;

pub use builder::SupervisorBuilder;
pub use readiness::Readiness;
pub use report::{Outcome, ServiceReport, StopCause, SupervisorReport, exit};
pub use restart::RestartPolicy;
pub use service::{BoxError, Service, ServiceContext, ServiceSpec};

use run::Run;
use service::FnService;

/// Runs services with one lifecycle: a group of long-running services.
/// go-zero's `ServiceGroup`, `oklog/run` and uber-go/fx's start/stop hooks,
/// for threads.
///
/// - **Start** in the order added, each on its own thread named after it;
///   the next starts only when the previous one is *up* (it calls
///   [`ServiceContext::ready`]), within its start timeout. If one fails to
///   come up, those already up are stopped in reverse order and the start
///   fails (fx rolls back the same way).
/// - **Run** until the stop context is done (a signal, with
///   [`Supervisor::run_until_signal`]) or a service ends. By default a
///   service that fails, panics or returns on its own stops the whole group
///   (`oklog/run`); with a [`RestartPolicy`] a failed one is restarted with
///   exponential backoff, within a budget, and a spent budget stops the
///   group.
/// - **Stop** in reverse order, one layer at a time: cancel a service's
///   context, wait for its `run` to return within its stop timeout, then the
///   next — all within the overall shutdown timeout, of which each service
///   keeps a minimum share (see [below](#the-shutdown-budget)). A service
///   still running at its deadline is named in the report and the shutdown
///   moves on; its thread is left running, detached (the process is
///   expected to exit with [`exit::DEADLINE_EXCEEDED`]). (go-zero stops
///   everything at once; stopping in layers lets an intake service stop
///   before the store it writes to.)
/// - [`Readiness`] is true once every service is up and false from the first
///   moment of shutdown (and while a service restarts): serve it on
///   `/readyz`. Under systemd (`NOTIFY_SOCKET`, feature `systemd`) the
///   supervisor sends `READY=1`, `STATUS=…`, `STOPPING=1` and watchdog pings.
/// - The [`SupervisorReport`] names each service's outcome and maps to an
///   [exit code](SupervisorReport::exit_code).
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
/// use quiesce::{Context, Supervisor};
///
/// let mut sup = Supervisor::builder().shutdown_timeout(Duration::from_secs(5)).build();
/// sup.add_fn("store", |ctx| {
///     // open the database, then:
///     ctx.ready();
///     let _ = ctx.done().recv(); // serve until told to stop
///     Ok(()) // flush, close
/// });
/// sup.add_fn("intake", |ctx| {
///     ctx.ready();
///     while ctx.sleep(Duration::from_millis(1)).is_ok() {}
///     Ok(())
/// });
/// let stop_now = Context::background().with_cancel();
/// let stop = stop_now.context();
/// let readiness = sup.readiness();
/// let runner = std::thread::spawn(move || sup.run(&stop));
/// let give_up = Instant::now() + Duration::from_secs(10);
/// while !readiness.is_ready() && Instant::now() < give_up {
///     std::thread::sleep(Duration::from_millis(1));
/// }
/// assert!(readiness.is_ready());
/// drop(stop_now); // SIGTERM, say
/// let report = runner.join().unwrap();
/// assert_eq!(report.exit_code(), 0);
/// let order: Vec<&str> = report.stop_order.iter().map(String::as_str).collect();
/// assert_eq!(order, ["intake", "store"]);
/// ```
///
/// # The shutdown budget
///
/// The [shutdown timeout](SupervisorBuilder::shutdown_timeout) is the budget of
/// the whole shutdown: the drain delay, then each service's stop, in turn.
/// A stuck service must not spend it all and leave nothing for the
/// well-behaved services below it, so each service running when the
/// shutdown begins keeps a minimum share:
///
/// `share = min(its stop timeout, shutdown timeout / (2 * services to stop))`
///
/// The drain and each service's wait end early enough to leave the shares
/// of the services still to stop after them. With the defaults (25 s, four
/// services) each keeps about 3.1 s: a stuck intake service can take at
/// most 25 − 3 × 3.1 s, and the store below it still has its 3.1 s to
/// flush. The shares come to at most half the budget, so the first service
/// stopped always has at least half of it (less the drain). How long the
/// shutdown waited for each service is in [`ServiceReport::waited`]; a
/// service whose turn comes when its part of the budget is spent (a share
/// of zero: a zero shutdown or stop timeout) is reported
/// [`Outcome::NotWaited`], never [`Outcome::Stuck`].
///
/// ```
/// use std::time::{Duration, Instant};
/// use quiesce::{exit, Context, Supervisor, supervisor::Outcome};
///
/// let (release, hold) = crossbeam_channel::bounded::<()>(0);
/// let mut sup = Supervisor::builder()
///     .shutdown_timeout(Duration::from_secs(1))
///     .stop_timeout(Duration::from_secs(60))
///     .build();
/// sup.add_fn("store", |ctx| { ctx.ready(); let _ = ctx.done().recv(); Ok(()) });
/// sup.add_fn("stubborn", move |ctx| { ctx.ready(); let _ = hold.recv(); Ok(()) });
/// let readiness = sup.readiness();
/// let stop_now = Context::background().with_cancel();
/// let stop = stop_now.context();
/// let runner = std::thread::spawn(move || sup.run(&stop));
/// let give_up = Instant::now() + Duration::from_secs(10);
/// while !readiness.is_ready() && Instant::now() < give_up {
///     std::thread::sleep(Duration::from_millis(1));
/// }
/// drop(stop_now);
/// let report = runner.join().unwrap();
/// // stubborn took its part (up to 1 s - 250 ms), the store kept its 250 ms:
/// assert!(matches!(report.services[1].outcome, Outcome::Stuck(_)));
/// assert!(report.services[1].waited.is_some()); // how long: in the report's line
/// assert_eq!(report.services[0].outcome, Outcome::Clean);
/// assert_eq!(report.exit_code(), exit::DEADLINE_EXCEEDED);
/// drop(release); // lets the detached thread end
/// ```
pub struct Supervisor {
    specs: Vec<ServiceSpec>,
    start_timeout: Duration,
    stop_timeout: Duration,
    shutdown_timeout: Duration,
    drain_delay: Duration,
    readiness: Readiness,
}

impl Default for Supervisor {
    fn default() -> Self {
        Supervisor::new()
    }
}

impl Supervisor {
    /// An empty group with the default settings: `Supervisor::builder().build()`
    /// (see [`SupervisorBuilder::new`] for the defaults).
    ///
    /// # Examples
    ///
    /// ```
    /// use quiesce::{Context, StopCause, Supervisor};
    ///
    /// let sup = Supervisor::new(); // no services yet
    /// let stop = Context::background().with_cancel();
    /// stop.cancel();
    /// let report = sup.run(&stop); // returns once `stop` is done
    /// assert!(report.services.is_empty());
    /// assert!(matches!(report.cause, StopCause::Requested(_)));
    /// ```
    pub fn new() -> Supervisor {
        SupervisorBuilder::new().build()
    }

    /// A builder with the defaults: set the timeouts and the drain delay,
    /// then `build()`, then add the services.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use quiesce::{Context, Supervisor};
    ///
    /// let mut sup = Supervisor::builder()
    ///     .shutdown_timeout(Duration::from_secs(5))
    ///     .drain_delay(Duration::from_millis(1))
    ///     .build();
    /// sup.add_fn("intake", |ctx| { ctx.ready(); let _ = ctx.done().recv(); Ok(()) });
    /// let stop = Context::background().with_cancel();
    /// stop.cancel();
    /// assert_eq!(sup.run(&stop).exit_code(), 0);
    /// ```
    pub fn builder() -> SupervisorBuilder {
        SupervisorBuilder::new()
    }

    /// The old form of [`SupervisorBuilder::start_timeout`].
    #[deprecated(
        since = "0.2.0",
        note = "set it on the builder: `Supervisor::builder().start_timeout(d).build()`"
    )]
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// The old form of [`SupervisorBuilder::stop_timeout`].
    #[deprecated(
        since = "0.2.0",
        note = "set it on the builder: `Supervisor::builder().stop_timeout(d).build()`"
    )]
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }

    /// The old form of [`SupervisorBuilder::shutdown_timeout`].
    #[deprecated(
        since = "0.2.0",
        note = "set it on the builder: `Supervisor::builder().shutdown_timeout(d).build()`"
    )]
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// The old form of [`SupervisorBuilder::drain_delay`].
    #[deprecated(
        since = "0.2.0",
        note = "set it on the builder: `Supervisor::builder().drain_delay(d).build()`"
    )]
    pub fn drain_delay(mut self, delay: Duration) -> Self {
        self.drain_delay = delay;
        self
    }

    /// Adds a service; it starts after the ones added before it and stops
    /// before them.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use quiesce::{BoxError, Context, Service, ServiceContext, Supervisor};
    ///
    /// struct Heartbeat;
    /// impl Service for Heartbeat {
    ///     fn name(&self) -> &str {
    ///         "heartbeat"
    ///     }
    ///     fn run(&mut self, ctx: &ServiceContext) -> Result<(), BoxError> {
    ///         ctx.ready();
    ///         while ctx.sleep(Duration::from_millis(1)).is_ok() {}
    ///         Ok(())
    ///     }
    /// }
    /// let mut sup = Supervisor::new();
    /// sup.add(Heartbeat).stop_timeout(Duration::from_secs(1));
    /// let stop = Context::background().with_cancel();
    /// stop.cancel();
    /// assert_eq!(sup.run(&stop).stop_order, ["heartbeat"]);
    /// ```
    pub fn add<S: Service>(&mut self, service: S) -> &mut ServiceSpec {
        let name = service.name().to_string();
        self.specs.push(ServiceSpec {
            name,
            start_timeout: None,
            stop_timeout: None,
            restart: None,
            service: Some(Box::new(service)),
        });
        self.specs.last_mut().expect("just pushed")
    }

    /// Adds a closure as a service named `name`.
    ///
    /// # Examples
    ///
    /// ```
    /// use quiesce::{Context, StopCause, Supervisor};
    ///
    /// let mut sup = Supervisor::new();
    /// sup.add_fn("config-check", |ctx| {
    ///     let _workers: u32 = "four".parse()?; // any error fails the service
    ///     ctx.ready();
    ///     Ok(())
    /// });
    /// let report = sup.run(&Context::background());
    /// let reason = "failed: invalid digit found in string".to_string();
    /// assert_eq!(report.cause, StopCause::StartFailed { service: "config-check".into(), reason });
    /// ```
    pub fn add_fn<F>(&mut self, name: impl Into<String>, f: F) -> &mut ServiceSpec
    where
        F: FnMut(&ServiceContext) -> Result<(), BoxError> + Send + 'static,
    {
        self.add(FnService {
            name: name.into(),
            f,
        })
    }

    /// The group's readiness flag (clone it into a health endpoint).
    ///
    /// # Examples
    ///
    /// ```
    /// let sup = quiesce::Supervisor::new();
    /// let (for_http, for_metrics) = (sup.readiness(), sup.readiness());
    /// assert!(!for_http.is_ready() && !for_metrics.is_ready()); // until every service is up
    /// ```
    ///
    /// A whole run: see [`Readiness`]'s example.
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// Starts the services, runs until `stop` is done or a service ends,
    /// then stops them in reverse order; blocks throughout and returns the
    /// report.
    ///
    /// # Examples
    ///
    /// ```
    /// use quiesce::{Context, StopCause, Supervisor, supervisor::Outcome};
    ///
    /// let mut sup = Supervisor::new();
    /// sup.add_fn("store", |ctx| { ctx.ready(); let _ = ctx.done().recv(); Ok(()) });
    /// sup.add_fn("intake", |ctx| { ctx.ready(); Err("port 8080 in use".into()) });
    /// let report = sup.run(&Context::background()); // returns when a service ends
    /// assert_eq!(report.cause, StopCause::ServiceEnded("intake".into()));
    /// assert_eq!(report.stop_order, ["store"]); // intake had ended already
    /// assert_eq!(report.services[1].outcome, Outcome::Failed("port 8080 in use".into()));
    /// ```
    pub fn run(self, stop: &Context) -> SupervisorReport {
        Run::new(self).run(stop, &Context::background())
    }

    /// [`run`](Supervisor::run) until SIGINT or SIGTERM: the first signal
    /// starts the graceful shutdown; a second gives it up, and this returns
    /// at once with a report whose [`exit_code`](SupervisorReport::exit_code)
    /// is [`exit::forced`] (128 + the signal's number), the services not
    /// waited for named in [`stuck`](SupervisorReport::stuck). Exit with
    /// that code right away: those services are still running (see
    /// [`signals`](crate::signals#ending-the-process)).
    ///
    /// When it returns, the handlers are unregistered and SIGINT and
    /// SIGTERM are ignored (see [`SignalGuard`](crate::signals::SignalGuard)):
    /// exit soon after.
    ///
    /// # Errors
    ///
    /// When the signal handlers cannot be installed (nothing was started).
    ///
    /// # Examples
    ///
    /// Not run: a doctest must not touch the test process's signals.
    ///
    /// ```no_run
    /// use quiesce::Supervisor;
    ///
    /// let mut sup = Supervisor::new();
    /// sup.add_fn("intake", |ctx| { ctx.ready(); let _ = ctx.done().recv(); Ok(()) });
    /// let report = sup.run_until_signal().expect("cannot install the signal handlers");
    /// eprintln!("{report}");
    /// std::process::exit(report.exit_code()); // 0 after a graceful stop
    /// ```
    pub fn run_until_signal(self) -> std::io::Result<SupervisorReport> {
        let stop = crate::signals::signal_context(&Context::background())?;
        let report = Run::new(self).run(&stop, stop.forced());
        drop(stop);
        Ok(report)
    }
}

impl fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.specs.iter().map(|s| s.name.as_str()).collect();
        f.debug_struct("Supervisor")
            .field("services", &names)
            .finish()
    }
}
