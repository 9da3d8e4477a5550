//! [`SupervisorBuilder`]: the supervisor's settings, and `build`, which
//! gives the [`Supervisor`] the services are added to. The same style as
//! [`PoolBuilder`](crate::PoolBuilder): `X::builder()`, consuming setters,
//! `build()`.

use std::time::Duration;

use super::{Readiness, Supervisor};

/// Configures a [`Supervisor`]; `Supervisor::builder()` starts one.
/// Services are added to the built supervisor
/// ([`add`](Supervisor::add), [`add_fn`](Supervisor::add_fn)), each with
/// its own settings ([`ServiceSpec`](super::ServiceSpec)).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use quiesce::Supervisor;
///
/// let mut sup = Supervisor::builder()
///     .start_timeout(Duration::from_secs(60))
///     .stop_timeout(Duration::from_secs(10))
///     .shutdown_timeout(Duration::from_secs(25))
///     .drain_delay(Duration::from_secs(5))
///     .build();
/// sup.add_fn("store", |ctx| { ctx.ready(); let _ = ctx.done().recv(); Ok(()) })
///     .stop_timeout(Duration::from_secs(20)); // this one flushes longer
/// assert_eq!(format!("{sup:?}"), r#"Supervisor { services: ["store"] }"#);
/// // then: let report = sup.run_until_signal()?;
/// ```
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until build()"]
pub struct SupervisorBuilder {
    start_timeout: Duration,
    stop_timeout: Duration,
    shutdown_timeout: Duration,
    drain_delay: Duration,
}

impl Default for SupervisorBuilder {
    fn default() -> Self {
        SupervisorBuilder {
            start_timeout: Duration::from_secs(30),
            stop_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(25),
            drain_delay: Duration::ZERO,
        }
    }
}

impl SupervisorBuilder {
    /// A builder with the defaults: start timeout 30 s, stop timeout 10 s
    /// per service, shutdown timeout 25 s in all (under Kubernetes' 30 s
    /// grace period), no drain delay.
    ///
    /// # Examples
    ///
    /// ```
    /// use quiesce::{Supervisor, SupervisorBuilder};
    ///
    /// let sup: Supervisor = SupervisorBuilder::new().build(); // as Supervisor::new()
    /// assert!(!sup.readiness().is_ready());
    /// ```
    pub fn new() -> SupervisorBuilder {
        SupervisorBuilder::default()
    }

    /// The default time a service has to come up (a service's own:
    /// [`ServiceSpec::start_timeout`](super::ServiceSpec::start_timeout)).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use quiesce::{exit, Context, StopCause, Supervisor};
    ///
    /// let mut sup = Supervisor::builder().start_timeout(Duration::from_millis(5)).build();
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

    /// The default time a service has to stop once cancelled (a service's
    /// own: [`ServiceSpec::stop_timeout`](super::ServiceSpec::stop_timeout)).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use quiesce::{Context, Supervisor, supervisor::Outcome};
    ///
    /// let (release, hold) = crossbeam_channel::bounded::<()>(0);
    /// let mut sup = Supervisor::builder().stop_timeout(Duration::from_millis(5)).build();
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
    /// assert_eq!(report.stop_order, ["stubborn", "store"]); // it moved on after 5 ms
    /// assert!(matches!(report.services[1].outcome, Outcome::Stuck(_)));
    /// assert_eq!(report.services[0].outcome, Outcome::Clean);
    /// drop(release); // lets the detached thread end
    /// ```
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }

    /// The time the whole shutdown may take (see
    /// [the shutdown budget](Supervisor#the-shutdown-budget)).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use quiesce::{exit, Context, Supervisor};
    ///
    /// let (release, hold) = crossbeam_channel::bounded::<()>(0);
    /// let mut sup = Supervisor::builder().shutdown_timeout(Duration::from_millis(5)).build();
    /// sup.add_fn("stubborn", move |ctx| { ctx.ready(); let _ = hold.recv(); Ok(()) });
    /// let stop = Context::background().with_cancel();
    /// stop.cancel();
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
    /// let mut sup = Supervisor::builder().drain_delay(Duration::from_millis(2)).build();
    /// let readiness = sup.readiness();
    /// sup.add_fn("http", move |ctx| {
    ///     ctx.ready();
    ///     let _ = ctx.done().recv();
    ///     assert!(!readiness.is_ready(), "not ready since the drain began");
    ///     Ok(())
    /// });
    /// let stop = Context::background().with_cancel();
    /// stop.cancel();
    /// assert_eq!(sup.run(&stop).exit_code(), 0);
    /// ```
    pub fn drain_delay(mut self, delay: Duration) -> Self {
        self.drain_delay = delay;
        self
    }

    /// The supervisor, with no services yet and its own [`Readiness`]
    /// flag. Cannot fail: no thread starts before
    /// [`run`](Supervisor::run).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use quiesce::Supervisor;
    ///
    /// let settings = Supervisor::builder().shutdown_timeout(Duration::from_secs(5));
    /// let (a, b) = (settings.clone().build(), settings.build()); // one flag each
    /// assert!(!a.readiness().is_ready() && !b.readiness().is_ready());
    /// ```
    pub fn build(self) -> Supervisor {
        Supervisor {
            specs: Vec::new(),
            start_timeout: self.start_timeout,
            stop_timeout: self.stop_timeout,
            shutdown_timeout: self.shutdown_timeout,
            drain_delay: self.drain_delay,
            readiness: Readiness::new(),
        }
    }
}
