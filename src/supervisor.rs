//! `Supervisor`: a group of long-running services with one lifecycle. The
//! public docs, with the Go libraries it follows, are on [`Supervisor`].

use std::collections::VecDeque;
use std::error::Error;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};

use crate::context::{CancelGuard, Context};
use crate::panic::Panic;
use crate::threads::Running;

/// The error type a [`Service`] returns: any error.
///
/// # Examples
///
/// ```
/// use quiesce::BoxError;
///
/// fn open_store(path: &str, pool_size: &str) -> Result<u32, BoxError> {
///     if path.is_empty() {
///         return Err("no database path".into()); // a message
///     }
///     Ok(pool_size.parse()?) // or any error, with `?`
/// }
/// assert_eq!(open_store("", "4").unwrap_err().to_string(), "no database path");
/// assert!(open_store("epro.db", "four").is_err());
/// assert_eq!(open_store("epro.db", "4").unwrap(), 4);
/// ```
pub type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// Exit codes for a process whose life is a [`Supervisor`] run; see
/// [`SupervisorReport::exit_code`].
///
/// # Examples
///
/// ```
/// use quiesce::{exit, Context, Supervisor};
///
/// let mut sup = Supervisor::new();
/// sup.add_fn("import", |_ctx| Err("unreadable diary export".into()));
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
    /// SIGINT, 143 for SIGTERM).
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

/// A long-running part of a program, run by a [`Supervisor`] on its own
/// thread.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
/// use quiesce::{BoxError, Context, Outcome, Service, ServiceContext, Supervisor};
///
/// struct DiaryStore {
///     path: String,
/// }
///
/// impl Service for DiaryStore {
///     fn name(&self) -> &str {
///         "diary-store"
///     }
///
///     fn run(&mut self, ctx: &ServiceContext) -> Result<(), BoxError> {
///         // open `self.path`, then:
///         ctx.ready();
///         let _ = ctx.done().recv(); // serve until told to stop
///         Ok(()) // flush and close
///     }
/// }
///
/// let mut sup = Supervisor::new();
/// sup.add(DiaryStore { path: "epro.db".into() });
/// let readiness = sup.readiness();
/// let (stop, stop_now) = Context::background().with_cancel();
/// let runner = std::thread::spawn(move || sup.run(&stop));
/// let give_up = Instant::now() + Duration::from_secs(10);
/// while !readiness.is_ready() && Instant::now() < give_up {
///     std::thread::sleep(Duration::from_millis(1));
/// }
/// drop(stop_now);
/// let report = runner.join().unwrap();
/// assert_eq!(report.services[0].name, "diary-store");
/// assert_eq!(report.services[0].outcome, Outcome::Clean);
/// ```
pub trait Service: Send + 'static {
    /// The service's name: its thread's name, and how reports and logs call
    /// it.
    ///
    /// # Examples
    ///
    /// See the implementation in [`Service`]'s example.
    fn name(&self) -> &str;

    /// Runs the service: set up, call [`ctx.ready()`](ServiceContext::ready)
    /// once it is up, work until `ctx` is done, clean up, return. Returning
    /// before `ctx` is done — with or without an error — ends the group
    /// (unless a [`RestartPolicy`] restarts it after an error). Called again
    /// after a restart.
    ///
    /// # Errors
    ///
    /// Whatever stopped the service; it is named in the report.
    ///
    /// # Examples
    ///
    /// See the implementation in [`Service`]'s example.
    fn run(&mut self, ctx: &ServiceContext) -> Result<(), BoxError>;
}

/// What a [`Service`] is given: its [`Context`] (through `Deref`: `ctx.done()`,
/// `ctx.sleep(…)`, …) and a way to say it is up.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use quiesce::{Context, ServiceContext, Supervisor};
///
/// let mut sup = Supervisor::new();
/// sup.add_fn("visit-reminders", |ctx: &ServiceContext| {
///     ctx.ready();
///     while ctx.sleep(Duration::from_millis(1)).is_ok() {} // a `Context` method
///     Ok(())
/// });
/// let (stop, stop_now) = Context::background().with_cancel();
/// drop(stop_now); // stop at once: the service is started, then cancelled
/// assert_eq!(sup.run(&stop).exit_code(), 0);
/// ```
pub struct ServiceContext {
    ctx: Context,
    index: usize,
    events: Sender<Event>,
    ready_sent: AtomicBool,
}

impl ServiceContext {
    /// Tells the supervisor this service is up: the next one may start.
    /// Idempotent.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use std::time::{Duration, Instant};
    /// use quiesce::{Context, Supervisor};
    ///
    /// let started = Arc::new(Mutex::new(Vec::new()));
    /// let mut sup = Supervisor::new();
    /// for name in ["store", "intake"] {
    ///     let started = started.clone();
    ///     sup.add_fn(name, move |ctx| {
    ///         started.lock().unwrap().push(name);
    ///         ctx.ready(); // only now does the next one start
    ///         let _ = ctx.done().recv();
    ///         Ok(())
    ///     });
    /// }
    /// let readiness = sup.readiness();
    /// let (stop, stop_now) = Context::background().with_cancel();
    /// let runner = std::thread::spawn(move || sup.run(&stop));
    /// let give_up = Instant::now() + Duration::from_secs(10);
    /// while !readiness.is_ready() && Instant::now() < give_up {
    ///     std::thread::sleep(Duration::from_millis(1));
    /// }
    /// drop(stop_now);
    /// assert_eq!(runner.join().unwrap().exit_code(), 0);
    /// assert_eq!(*started.lock().unwrap(), ["store", "intake"]);
    /// ```
    pub fn ready(&self) {
        if !self.ready_sent.swap(true, Ordering::SeqCst) {
            let _ = self.events.send(Event::Ready(self.index));
        }
    }

    /// The service's context (also reachable through `Deref`).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use quiesce::{Context, Pool, Supervisor};
    ///
    /// let mut sup = Supervisor::new();
    /// sup.add_fn("uploads", |ctx| {
    ///     // the pool's jobs are cancelled with the service
    ///     let pool = Pool::builder().workers(2).context(ctx.context()).build()?;
    ///     ctx.ready();
    ///     let _ = ctx.done().recv();
    ///     assert!(pool.shutdown_timeout(Duration::from_secs(5)).stuck.is_empty());
    ///     Ok(())
    /// });
    /// let (stop, stop_now) = Context::background().with_cancel();
    /// drop(stop_now);
    /// assert_eq!(sup.run(&stop).exit_code(), 0);
    /// ```
    pub fn context(&self) -> &Context {
        &self.ctx
    }
}

impl Deref for ServiceContext {
    type Target = Context;
    fn deref(&self) -> &Context {
        &self.ctx
    }
}

impl fmt::Debug for ServiceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceContext")
            .field("ctx", &self.ctx)
            .field("ready", &self.ready_sent.load(Ordering::Relaxed))
            .finish()
    }
}

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
/// let (stop, stop_now) = Context::background().with_cancel();
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

    fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }
}

/// Restart a failed service with exponential backoff, at most `max` times
/// within a sliding window of `within`; one more failure stops the group.
///
/// # Examples
///
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::sync::Arc;
/// use std::time::Duration;
/// use quiesce::{Context, Outcome, RestartPolicy, Supervisor};
///
/// let runs = Arc::new(AtomicU32::new(0));
/// let counter = runs.clone();
/// let quick = Duration::from_millis(1);
/// let mut sup = Supervisor::new();
/// sup.add_fn("site-sync", move |_ctx| {
///     counter.fetch_add(1, Ordering::SeqCst);
///     Err("site API unreachable".into())
/// })
/// .restart(RestartPolicy::new(2, Duration::from_secs(60)).backoff(quick, quick));
/// let report = sup.run(&Context::background());
/// assert_eq!(runs.load(Ordering::SeqCst), 3); // the first run and two restarts
/// assert_eq!(report.services[0].restarts, 2);
/// assert_eq!(report.services[0].outcome, Outcome::Failed("site API unreachable".into()));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartPolicy {
    max: u32,
    within: Duration,
    initial_backoff: Duration,
    max_backoff: Duration,
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
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }

    /// The first backoff and the cap of the doubling.
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
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    /// The wait before restart number `n` (0-based) within the window.
    fn delay(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// Per-service settings; [`Supervisor::add`] returns it.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use quiesce::{Context, RestartPolicy, Supervisor};
///
/// let mut sup = Supervisor::new();
/// sup.add_fn("store", |ctx| { ctx.ready(); let _ = ctx.done().recv(); Ok(()) })
///     .start_timeout(Duration::from_secs(60)) // a large database to open
///     .stop_timeout(Duration::from_secs(20)) // and to flush
///     .restart(RestartPolicy::new(3, Duration::from_secs(300)));
/// let (stop, stop_now) = Context::background().with_cancel();
/// drop(stop_now);
/// assert_eq!(sup.run(&stop).exit_code(), 0);
/// ```
#[derive(Debug)]
pub struct ServiceSpec {
    name: String,
    start_timeout: Option<Duration>,
    stop_timeout: Option<Duration>,
    restart: Option<RestartPolicy>,
    service: Option<Box<dyn Service>>,
}

impl fmt::Debug for dyn Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Service({})", self.name())
    }
}

impl ServiceSpec {
    /// How long it may take to call `ready()`. Default: the supervisor's.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use quiesce::{Context, StopCause, Supervisor};
    ///
    /// let mut sup = Supervisor::new();
    /// sup.add_fn("slow-store", |ctx| { let _ = ctx.done().recv(); Ok(()) }) // never up
    ///     .start_timeout(Duration::from_millis(5));
    /// let report = sup.run(&Context::background());
    /// let StopCause::StartFailed { service, .. } = report.cause else { panic!("it started") };
    /// assert_eq!(service, "slow-store");
    /// ```
    pub fn start_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.start_timeout = Some(timeout);
        self
    }

    /// How long it may take to return once its context is cancelled.
    /// Default: the supervisor's; always within the overall shutdown
    /// timeout.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use quiesce::{exit, Context, Outcome, Supervisor};
    ///
    /// let (release, hold) = crossbeam_channel::bounded::<()>(0);
    /// let mut sup = Supervisor::new();
    /// sup.add_fn("stubborn-export", move |ctx| {
    ///     ctx.ready();
    ///     let _ = hold.recv(); // ignores its context
    ///     Ok(())
    /// })
    /// .stop_timeout(Duration::from_millis(5));
    /// let (stop, stop_now) = Context::background().with_cancel();
    /// drop(stop_now);
    /// let report = sup.run(&stop); // gives up on it after 5 ms
    /// assert!(matches!(report.services[0].outcome, Outcome::Stuck(_)));
    /// assert_eq!(report.exit_code(), exit::DEADLINE_EXCEEDED);
    /// drop(release); // lets the detached thread end
    /// ```
    pub fn stop_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.stop_timeout = Some(timeout);
        self
    }

    /// Restart it on failure (an error or a panic) under `policy`, instead
    /// of stopping the group.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use std::time::{Duration, Instant};
    /// use quiesce::{Context, Outcome, RestartPolicy, Supervisor};
    ///
    /// let runs = AtomicU32::new(0);
    /// let quick = Duration::from_millis(1);
    /// let mut sup = Supervisor::new();
    /// sup.add_fn("intake", move |ctx| {
    ///     if runs.fetch_add(1, Ordering::SeqCst) == 0 {
    ///         panic!("first run crashes");
    ///     }
    ///     ctx.ready();
    ///     let _ = ctx.done().recv();
    ///     Ok(())
    /// })
    /// .restart(RestartPolicy::new(1, Duration::from_secs(60)).backoff(quick, quick));
    /// let readiness = sup.readiness();
    /// let (stop, stop_now) = Context::background().with_cancel();
    /// let runner = std::thread::spawn(move || sup.run(&stop));
    /// let give_up = Instant::now() + Duration::from_secs(10);
    /// while !readiness.is_ready() && Instant::now() < give_up {
    ///     std::thread::sleep(Duration::from_millis(1));
    /// }
    /// drop(stop_now);
    /// let report = runner.join().unwrap();
    /// assert_eq!(report.services[0].restarts, 1);
    /// assert_eq!(report.services[0].outcome, Outcome::Clean);
    /// ```
    pub fn restart(&mut self, policy: RestartPolicy) -> &mut Self {
        self.restart = Some(policy);
        self
    }
}

/// How one service ended.
///
/// # Examples
///
/// ```
/// use quiesce::{Context, Outcome, Supervisor};
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
    /// Still running at its stop deadline (it was left running).
    Stuck(Duration),
    /// Never started (an earlier service failed to come up).
    NotStarted,
}

/// One service in a [`SupervisorReport`].
///
/// # Examples
///
/// ```
/// use quiesce::{Context, Outcome, Supervisor};
///
/// let mut sup = Supervisor::new();
/// sup.add_fn("store", |ctx| { ctx.ready(); let _ = ctx.done().recv(); Ok(()) });
/// let (stop, stop_now) = Context::background().with_cancel();
/// drop(stop_now);
/// let report = sup.run(&stop);
/// let store = &report.services[0];
/// assert_eq!((store.name.as_str(), store.restarts), ("store", 0));
/// assert_eq!(store.outcome, Outcome::Clean);
/// assert!(store.stop_time.is_some()); // it was stopped, and returned
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
/// let (stop, stop_now) = Context::background().with_cancel();
/// stop_now.cancel_with_cause("maintenance window"); // a signal gives `received SIGTERM`
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

/// What a [`Supervisor`] run did.
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
    /// The process exit code this report calls for: [`exit::OK`] after a
    /// graceful stop, [`exit::DEADLINE_EXCEEDED`] when a service was still
    /// running at the deadline, else [`exit::SERVICE_FAILED`] when a service
    /// failed, panicked, exited on its own or did not start.
    ///
    /// # Examples
    ///
    /// ```
    /// use quiesce::{exit, Context, Supervisor};
    ///
    /// let mut graceful = Supervisor::new();
    /// graceful.add_fn("intake", |ctx| { ctx.ready(); let _ = ctx.done().recv(); Ok(()) });
    /// let (stop, stop_now) = Context::background().with_cancel();
    /// drop(stop_now);
    /// assert_eq!(graceful.run(&stop).exit_code(), exit::OK);
    ///
    /// let mut failing = Supervisor::new();
    /// failing.add_fn("import", |_ctx| Err("bad file".into()));
    /// assert_eq!(failing.run(&Context::background()).exit_code(), exit::SERVICE_FAILED);
    /// ```
    pub fn exit_code(&self) -> i32 {
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
        let cause = match &self.cause {
            StopCause::Requested(why) => format!("stop requested ({why})"),
            StopCause::ServiceEnded(name) => format!("service {name} ended"),
            StopCause::StartFailed { service, reason } => {
                format!("service {service} did not start: {reason}")
            }
        };
        write!(f, "{cause}; stopped in {:.1?}:", self.shutdown_time)?;
        for (i, s) in self.services.iter().enumerate() {
            f.write_str(if i == 0 { " " } else { "; " })?;
            let outcome = match &s.outcome {
                Outcome::Clean => "clean".to_string(),
                Outcome::Failed(e) => format!("failed: {e}"),
                Outcome::Panicked(p) => p.to_string(),
                Outcome::ExitedEarly => "exited on its own".to_string(),
                Outcome::Stuck(age) => format!("still running after {age:.1?}"),
                Outcome::NotStarted => "not started".to_string(),
            };
            write!(f, "{}={outcome}", s.name)?;
            if s.restarts > 0 {
                write!(f, " ({} restarts)", s.restarts)?;
            }
        }
        Ok(())
    }
}

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
///   next — all within the overall shutdown timeout. A service still running
///   at its deadline is named in the report and the shutdown moves on; its
///   thread is left running, detached (the process is expected to exit with
///   [`exit::DEADLINE_EXCEEDED`]). (go-zero stops everything at once;
///   stopping in layers lets an intake service stop before the store it
///   writes to.)
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
/// let mut sup = Supervisor::new().shutdown_timeout(Duration::from_secs(5));
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
/// let (stop, stop_now) = Context::background().with_cancel();
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

enum Event {
    Ready(usize),
    Restarting {
        index: usize,
        attempt: u32,
        error: String,
        backoff: Duration,
    },
    Exited {
        index: usize,
        outcome: Outcome,
        restarts: u32,
    },
}

/// A service's thread and what the supervisor knows of it.
struct Slot {
    name: String,
    cancel: CancelGuard,
    thread: Option<JoinHandle<()>>,
    started: Instant,
    stop_timeout: Duration,
    ready: bool,
    restarting: bool,
    report: Option<(Outcome, u32)>,
    stop_time: Option<Duration>,
}

impl Supervisor {
    /// An empty group. Defaults: start timeout 30 s, stop timeout 10 s per
    /// service, shutdown timeout 25 s in all (under Kubernetes' 30 s grace
    /// period), no drain delay.
    ///
    /// # Examples
    ///
    /// ```
    /// use quiesce::{Context, StopCause, Supervisor};
    ///
    /// let sup = Supervisor::new(); // no services yet
    /// let (stop, stop_now) = Context::background().with_cancel();
    /// drop(stop_now);
    /// let report = sup.run(&stop); // returns once `stop` is done
    /// assert!(report.services.is_empty());
    /// assert!(matches!(report.cause, StopCause::Requested(_)));
    /// ```
    pub fn new() -> Supervisor {
        Supervisor {
            specs: Vec::new(),
            start_timeout: Duration::from_secs(30),
            stop_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(25),
            drain_delay: Duration::ZERO,
            readiness: Readiness::new(),
        }
    }

    /// The default time a service has to come up.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use quiesce::{exit, Context, StopCause, Supervisor};
    ///
    /// let mut sup = Supervisor::new().start_timeout(Duration::from_millis(5));
    /// sup.add_fn("forgetful", |ctx| { let _ = ctx.done().recv(); Ok(()) }); // no ready()
    /// let report = sup.run(&Context::background());
    /// assert_eq!(report.exit_code(), exit::SERVICE_FAILED);
    /// let StopCause::StartFailed { reason, .. } = report.cause else { panic!("it started") };
    /// assert!(reason.contains("does it call ctx.ready()?"));
    /// ```
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// The default time a service has to stop once cancelled.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use quiesce::{Context, Outcome, Supervisor};
    ///
    /// let (release, hold) = crossbeam_channel::bounded::<()>(0);
    /// let mut sup = Supervisor::new().stop_timeout(Duration::from_millis(5));
    /// sup.add_fn("store", |ctx| { ctx.ready(); let _ = ctx.done().recv(); Ok(()) });
    /// sup.add_fn("stubborn", move |ctx| { ctx.ready(); let _ = hold.recv(); Ok(()) });
    /// let readiness = sup.readiness();
    /// let (stop, stop_now) = Context::background().with_cancel();
    /// let runner = std::thread::spawn(move || sup.run(&stop));
    /// let give_up = Instant::now() + Duration::from_secs(10);
    /// while !readiness.is_ready() && Instant::now() < give_up {
    ///     std::thread::sleep(Duration::from_millis(1));
    /// }
    /// drop(stop_now);
    /// let report = runner.join().unwrap();
    /// assert_eq!(report.stop_order, ["stubborn", "store"]); // it moved on after 5 ms
    /// assert!(matches!(report.services[1].outcome, Outcome::Stuck(_)));
    /// assert_eq!(report.services[0].outcome, Outcome::Clean);
    /// drop(release); // lets the detached thread end
    /// ```
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }

    /// The time the whole shutdown may take.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use quiesce::{exit, Context, Supervisor};
    ///
    /// let (release, hold) = crossbeam_channel::bounded::<()>(0);
    /// let mut sup = Supervisor::new().shutdown_timeout(Duration::from_millis(5));
    /// sup.add_fn("stubborn", move |ctx| { ctx.ready(); let _ = hold.recv(); Ok(()) });
    /// let (stop, stop_now) = Context::background().with_cancel();
    /// drop(stop_now);
    /// let report = sup.run(&stop);
    /// assert_eq!(report.stuck[0].name, "stubborn");
    /// assert_eq!(report.exit_code(), exit::DEADLINE_EXCEEDED);
    /// drop(release); // lets the detached thread end
    /// ```
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Between readiness turning false and the first service being
    /// cancelled: time for a load balancer to stop sending traffic (5 s is
    /// usual under Kubernetes). Counts against the shutdown timeout.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use quiesce::{Context, Supervisor};
    ///
    /// let mut sup = Supervisor::new().drain_delay(Duration::from_millis(2));
    /// let readiness = sup.readiness();
    /// sup.add_fn("http", move |ctx| {
    ///     ctx.ready();
    ///     let _ = ctx.done().recv();
    ///     assert!(!readiness.is_ready(), "not ready since the drain began");
    ///     Ok(())
    /// });
    /// let (stop, stop_now) = Context::background().with_cancel();
    /// drop(stop_now);
    /// assert_eq!(sup.run(&stop).exit_code(), 0);
    /// ```
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
    /// let (stop, stop_now) = Context::background().with_cancel();
    /// drop(stop_now);
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
    /// use quiesce::{Context, Outcome, StopCause, Supervisor};
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
        Run::new(self).run(stop)
    }

    /// [`run`](Supervisor::run) until SIGINT or SIGTERM: the first signal
    /// starts the graceful shutdown, a second exits the process at once
    /// with 128 + its number.
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
        let (stop, signals) = crate::signals::signal_context(&Context::background())?;
        let report = self.run(&stop);
        drop(signals);
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

struct FnService<F> {
    name: String,
    f: F,
}

impl<F> Service for FnService<F>
where
    F: FnMut(&ServiceContext) -> Result<(), BoxError> + Send + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn run(&mut self, ctx: &ServiceContext) -> Result<(), BoxError> {
        (self.f)(ctx)
    }
}

/// One run of a supervisor: the state the phases share.
struct Run {
    specs: Vec<ServiceSpec>,
    slots: Vec<Slot>,
    events_tx: Sender<Event>,
    events: Receiver<Event>,
    start_timeout: Duration,
    stop_timeout: Duration,
    shutdown_timeout: Duration,
    drain_delay: Duration,
    readiness: Readiness,
    notify: crate::notify::Notifier,
}

impl Run {
    fn new(sup: Supervisor) -> Run {
        let (events_tx, events) = crossbeam_channel::unbounded();
        Run {
            specs: sup.specs,
            slots: Vec::new(),
            events_tx,
            events,
            start_timeout: sup.start_timeout,
            stop_timeout: sup.stop_timeout,
            shutdown_timeout: sup.shutdown_timeout,
            drain_delay: sup.drain_delay,
            notify: crate::notify::Notifier::new(sup.readiness.clone()),
            readiness: sup.readiness,
        }
    }

    fn run(mut self, stop: &Context) -> SupervisorReport {
        let cause = match self.start_all(stop) {
            Err(cause) => cause,
            Ok(()) => {
                self.readiness.set(true);
                let names: Vec<&str> = self.slots.iter().map(|s| s.name.as_str()).collect();
                log::info!("all services up: {}", names.join(", "));
                self.notify
                    .ready(&format!("{} services up", self.slots.len()));
                self.serve(stop)
            }
        };
        self.shutdown(cause)
    }

    /// Starts the services in order; `Err` with the cause when one does not
    /// come up or a stop is requested meanwhile.
    fn start_all(&mut self, stop: &Context) -> Result<(), StopCause> {
        let mut specs = std::mem::take(&mut self.specs).into_iter();
        let started = self.start_each(&mut specs, stop);
        // Those never reached stay, to be reported as not started.
        self.specs.extend(specs);
        started
    }

    fn start_each(
        &mut self,
        specs: &mut impl Iterator<Item = ServiceSpec>,
        stop: &Context,
    ) -> Result<(), StopCause> {
        for mut spec in specs {
            let index = self.slots.len();
            let service = spec.service.take().expect("each spec is started once");
            let start_timeout = spec.start_timeout.unwrap_or(self.start_timeout);
            let name = spec.name.clone();
            self.spawn(index, service, spec);
            self.notify.status(&format!("starting {name}"));
            let deadline = crate::deadline::after(start_timeout);
            loop {
                let event = match deadline {
                    Some(deadline) => select! {
                        recv(self.events) -> e => e.ok(),
                        recv(stop.done()) -> _ => return Err(requested(stop)),
                        default(deadline.saturating_duration_since(Instant::now())) => {
                            return Err(StopCause::StartFailed {
                                service: name,
                                reason: format!(
                                    "not ready within {start_timeout:?} (does it call ctx.ready()?)"
                                ),
                            });
                        }
                    },
                    None => select! {
                        recv(self.events) -> e => e.ok(),
                        recv(stop.done()) -> _ => return Err(requested(stop)),
                    },
                };
                let Some(event) = event else { continue };
                match self.record(event) {
                    Some(i) if i == index && self.slots[i].ready => {
                        log::info!("service {name} is up");
                        break;
                    }
                    Some(i) if self.slots[i].report.is_some() => {
                        let ended = &self.slots[i];
                        let reason = describe(&ended.report.as_ref().expect("checked").0);
                        if i == index {
                            return Err(StopCause::StartFailed {
                                service: name,
                                reason,
                            });
                        }
                        return Err(StopCause::ServiceEnded(ended.name.clone()));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    fn spawn(&mut self, index: usize, mut service: Box<dyn Service>, spec: ServiceSpec) {
        let (ctx, cancel) = Context::background().with_cancel();
        let events = self.events_tx.clone();
        let policy = spec.restart;
        let name = spec.name.clone();
        let thread = crate::leak::spawn(name.clone(), move || {
            service_thread(index, service.as_mut(), &ctx, &events, policy);
        });
        let thread = match thread {
            Ok(thread) => Some(thread),
            Err(err) => {
                let _ = self.events_tx.send(Event::Exited {
                    index,
                    outcome: Outcome::Failed(format!("cannot start its thread: {err}")),
                    restarts: 0,
                });
                None
            }
        };
        self.slots.push(Slot {
            name,
            cancel,
            thread,
            started: Instant::now(),
            stop_timeout: spec.stop_timeout.unwrap_or(self.stop_timeout),
            ready: false,
            restarting: false,
            report: None,
            stop_time: None,
        });
    }

    /// Updates the slots from an event; returns the service it was about.
    fn record(&mut self, event: Event) -> Option<usize> {
        match event {
            Event::Ready(i) => {
                let slot = self.slots.get_mut(i)?;
                slot.ready = true;
                if slot.restarting {
                    slot.restarting = false;
                    log::info!("service {} is up again", slot.name);
                    self.update_readiness();
                }
                Some(i)
            }
            Event::Restarting {
                index,
                attempt,
                error,
                backoff,
            } => {
                let slot = self.slots.get_mut(index)?;
                slot.restarting = true;
                log::warn!(
                    "service {} failed ({error}); restart {attempt} in {backoff:.1?}",
                    slot.name
                );
                self.update_readiness();
                Some(index)
            }
            Event::Exited {
                index,
                outcome,
                restarts,
            } => {
                let slot = self.slots.get_mut(index)?;
                if let Some(thread) = slot.thread.take() {
                    // It sent this as its last act: only the return is left.
                    let _ = thread.join();
                }
                slot.report = Some((outcome, restarts));
                Some(index)
            }
        }
    }

    fn update_readiness(&self) {
        let serving = self
            .slots
            .iter()
            .all(|s| s.ready && !s.restarting && s.report.is_none());
        if serving != self.readiness.is_ready() {
            self.readiness.set(serving);
            self.notify.status(if serving {
                "serving"
            } else {
                "a service is restarting"
            });
        }
    }

    /// Runs until a stop is requested or a service ends.
    fn serve(&mut self, stop: &Context) -> StopCause {
        loop {
            select! {
                recv(self.events) -> event => {
                    let Ok(event) = event else { continue };
                    if let Some(i) = self.record(event) {
                        if let Some((outcome, _)) = &self.slots[i].report {
                            log::warn!("service {} ended: {}", self.slots[i].name, describe(outcome));
                            return StopCause::ServiceEnded(self.slots[i].name.clone());
                        }
                    }
                }
                recv(stop.done()) -> _ => return requested(stop),
            }
        }
    }

    /// Stops the started services in reverse order, each within its own
    /// deadline and all within the shutdown timeout.
    fn shutdown(mut self, cause: StopCause) -> SupervisorReport {
        let began = Instant::now();
        self.readiness.set(false);
        self.notify.stopping();
        log::info!("shutting down: {}", describe_cause(&cause));
        let overall = crate::deadline::after(self.shutdown_timeout);
        if !self.drain_delay.is_zero() && !self.slots.is_empty() {
            log::info!("draining for {:.1?} before stopping", self.drain_delay);
            let until = crate::deadline::min(crate::deadline::after(self.drain_delay), overall);
            // Services that end meanwhile are recorded as they go.
            self.wait_events_until(until, None);
        }
        let mut stop_order = Vec::new();
        for i in (0..self.slots.len()).rev() {
            let name = self.slots[i].name.clone();
            if self.slots[i].report.is_some() {
                continue; // ended already (the cause, or during the drain)
            }
            self.notify.status(&format!("stopping {name}"));
            let cancelled = Instant::now();
            self.slots[i].cancel.cancel();
            let own = crate::deadline::after(self.slots[i].stop_timeout);
            let deadline = crate::deadline::min(own, overall);
            self.wait_events_until(deadline, Some(i));
            stop_order.push(name.clone());
            if self.slots[i].report.is_some() {
                self.slots[i].stop_time = Some(cancelled.elapsed());
                log::info!("service {name} stopped in {:.1?}", cancelled.elapsed());
            } else {
                log::error!("service {name} is still running at its stop deadline; moving on");
            }
        }
        let report = self.report(cause, stop_order, began);
        log::info!("{report}");
        report
    }

    /// Records events until `deadline`, or until service `until_exited` has
    /// exited.
    fn wait_events_until(&mut self, deadline: Option<Instant>, until_exited: Option<usize>) {
        loop {
            if let Some(i) = until_exited {
                if self.slots[i].report.is_some() {
                    return;
                }
            }
            let event = match deadline {
                Some(deadline) => self.events.recv_deadline(deadline).ok(),
                None => self.events.recv().ok(),
            };
            match event {
                Some(event) => {
                    self.record(event);
                }
                None => return,
            }
        }
    }

    fn report(
        mut self,
        cause: StopCause,
        stop_order: Vec<String>,
        began: Instant,
    ) -> SupervisorReport {
        let now = Instant::now();
        let mut stuck = Vec::new();
        let mut services = Vec::new();
        for slot in &mut self.slots {
            let (outcome, restarts) = match slot.report.take() {
                Some(report) => report,
                None => {
                    let age = now.saturating_duration_since(slot.started);
                    stuck.push(Running {
                        name: slot.name.clone(),
                        age,
                    });
                    // Left running, deliberately and loudly: the process is
                    // about to exit with DEADLINE_EXCEEDED.
                    drop(slot.thread.take());
                    (Outcome::Stuck(age), 0)
                }
            };
            services.push(ServiceReport {
                name: slot.name.clone(),
                outcome,
                restarts,
                stop_time: slot.stop_time,
            });
        }
        for spec in &self.specs {
            services.push(ServiceReport {
                name: spec.name.clone(),
                outcome: Outcome::NotStarted,
                restarts: 0,
                stop_time: None,
            });
        }
        if !stuck.is_empty() {
            let names: Vec<String> = stuck.iter().map(ToString::to_string).collect();
            log::error!(
                "shutdown deadline exceeded; still running: {}",
                names.join(", ")
            );
        }
        SupervisorReport {
            cause,
            services,
            stop_order,
            stuck,
            shutdown_time: began.elapsed(),
        }
    }
}

fn requested(stop: &Context) -> StopCause {
    let why = stop
        .cause()
        .map_or_else(|| "stop context done".to_string(), |c| c.to_string());
    StopCause::Requested(why)
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Clean => "returned".to_string(),
        Outcome::Failed(e) => format!("failed: {e}"),
        Outcome::Panicked(p) => p.to_string(),
        Outcome::ExitedEarly => "returned before being asked to stop".to_string(),
        Outcome::Stuck(age) => format!("still running after {age:.1?}"),
        Outcome::NotStarted => "not started".to_string(),
    }
}

fn describe_cause(cause: &StopCause) -> String {
    match cause {
        StopCause::Requested(why) => why.clone(),
        StopCause::ServiceEnded(name) => format!("service {name} ended"),
        StopCause::StartFailed { service, reason } => {
            format!("service {service} did not start: {reason}")
        }
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

/// The body of a service's thread: run, and restart under the policy.
fn service_thread(
    index: usize,
    service: &mut dyn Service,
    ctx: &Context,
    events: &Sender<Event>,
    policy: Option<RestartPolicy>,
) {
    let mut restarts = 0u32;
    let mut recent: VecDeque<Instant> = VecDeque::new();
    let outcome = loop {
        let sctx = ServiceContext {
            ctx: ctx.clone(),
            index,
            events: events.clone(),
            ready_sent: AtomicBool::new(false),
        };
        let failure = match crate::panic::catch(|| service.run(&sctx)) {
            Ok(Ok(())) if ctx.is_done() => break Outcome::Clean,
            Ok(Ok(())) => break Outcome::ExitedEarly,
            Ok(Err(err)) => Outcome::Failed(error_chain(err.as_ref())),
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
            error: describe(&failure),
            backoff,
        });
        if ctx.sleep(backoff).is_err() {
            break failure;
        }
        recent.push_back(Instant::now());
    };
    let _ = events.send(Event::Exited {
        index,
        outcome,
        restarts,
    });
}
