//! What a supervisor runs: the [`Service`] trait, the closure form
//! ([`FnService`]), what a service is given ([`ServiceContext`]) and its
//! per-service settings ([`ServiceSpec`]).

use std::error::Error;
use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crossbeam_channel::Sender;

use super::RestartPolicy;
use super::run::Event;
use crate::context::Context;

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
/// assert!(open_store("jobs.db", "four").is_err());
/// assert_eq!(open_store("jobs.db", "4").unwrap(), 4);
/// ```
pub type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// A long-running part of a program, run by a [`Supervisor`](crate::Supervisor) on its own
/// thread.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
/// use quiesce::{BoxError, Context, Service, ServiceContext, Supervisor, supervisor::Outcome};
///
/// struct JobStore {
///     path: String,
/// }
///
/// impl Service for JobStore {
///     fn name(&self) -> &str {
///         "job-store"
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
/// sup.add(JobStore { path: "jobs.db".into() });
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
/// assert_eq!(report.services[0].name, "job-store");
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
/// sup.add_fn("reminders", |ctx: &ServiceContext| {
///     ctx.ready();
///     while ctx.sleep(Duration::from_millis(1)).is_ok() {} // a `Context` method
///     Ok(())
/// });
/// let stop = Context::background().with_cancel();
/// stop.cancel(); // stop at once: the service is started, then cancelled
/// assert_eq!(sup.run(&stop).exit_code(), 0);
/// ```
pub struct ServiceContext {
    pub(super) ctx: Context,
    pub(super) index: usize,
    pub(super) events: Sender<Event>,
    pub(super) ready_sent: AtomicBool,
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
    /// let stop_now = Context::background().with_cancel();
    /// let stop = stop_now.context();
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
        // At most one `Ready` per run of the service (supervisor invariant 3).
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
    /// let stop = Context::background().with_cancel();
    /// stop.cancel();
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

/// Per-service settings; [`Supervisor::add`](crate::Supervisor::add) returns it.
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
/// let stop = Context::background().with_cancel();
/// stop.cancel();
/// assert_eq!(sup.run(&stop).exit_code(), 0);
/// ```
#[derive(Debug)]
pub struct ServiceSpec {
    pub(super) name: String,
    pub(super) start_timeout: Option<Duration>,
    pub(super) stop_timeout: Option<Duration>,
    pub(super) restart: Option<RestartPolicy>,
    pub(super) service: Option<Box<dyn Service>>,
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
    /// use quiesce::{exit, Context, Supervisor, supervisor::Outcome};
    ///
    /// let (release, hold) = crossbeam_channel::bounded::<()>(0);
    /// let mut sup = Supervisor::new();
    /// sup.add_fn("stubborn-export", move |ctx| {
    ///     ctx.ready();
    ///     let _ = hold.recv(); // ignores its context
    ///     Ok(())
    /// })
    /// .stop_timeout(Duration::from_millis(5));
    /// let stop = Context::background().with_cancel();
    /// stop.cancel();
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
    /// use quiesce::{Context, RestartPolicy, Supervisor, supervisor::Outcome};
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
    /// let stop_now = Context::background().with_cancel();
    /// let stop = stop_now.context();
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

pub(super) struct FnService<F> {
    pub(super) name: String,
    pub(super) f: F,
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
