//! One run of a [`Supervisor`]: start in order, serve, stop in reverse, and
//! the report; the state the phases share lives in [`Run`]. What it owns,
//! which thread touches what and the invariants cited here as (1)–(9) are
//! at the top of the [`supervisor`](super) module.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};

use super::notify::Notifier;
use super::restart::service_thread;
use super::{
    Outcome, Readiness, Service, ServiceReport, ServiceSpec, StopCause, Supervisor,
    SupervisorReport,
};
use crate::context::{CancelGuard, Context};
use crate::signals::SignalReceived;
use crate::threads::Running;

/// What a service thread tells the run; the only way it reaches the run.
pub(super) enum Event {
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
    /// How long the shutdown waited for it after cancelling it, whether or
    /// not it returned; `None` until then, and for good when it was not
    /// waited for.
    waited: Option<Duration>,
    /// Cancelled but not waited for: the shutdown budget was spent before
    /// its turn (7, 8).
    not_waited: bool,
}

/// One run of a supervisor: the state the phases share.
pub(super) struct Run {
    specs: Vec<ServiceSpec>,
    slots: Vec<Slot>,
    events_tx: Sender<Event>,
    events: Receiver<Event>,
    start_timeout: Duration,
    stop_timeout: Duration,
    shutdown_timeout: Duration,
    drain_delay: Duration,
    readiness: Readiness,
    /// Done when the shutdown must be given up (the second signal under
    /// `run_until_signal`); never done otherwise.
    force: Context,
    /// The signal that gave the shutdown up, once `force` is done.
    forced: Option<i32>,
    /// True from the end of the start until the shutdown begins: the only
    /// time the group may be ready.
    serving: bool,
    notify: Notifier,
}

impl Run {
    pub(super) fn new(sup: Supervisor) -> Run {
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
            notify: Notifier::new(sup.readiness.clone()),
            readiness: sup.readiness,
            force: Context::background(),
            forced: None,
            serving: false,
        }
    }

    /// Runs until `stop` is done (then stops the services), or until the
    /// shutdown is given up because `force` is done (9).
    pub(super) fn run(mut self, stop: &Context, force: &Context) -> SupervisorReport {
        self.force = force.clone();
        let cause = match self.start_all(stop) {
            Err(cause) => cause,
            Ok(()) => {
                self.serving = true;
                // A service restarting meanwhile keeps the group not ready.
                self.readiness.set(self.all_up());
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
        // Those never reached stay, to be reported as not started (1).
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
                    // Only now may the next one be spawned (1).
                    Some(i) if i == index && self.slots[i].ready => {
                        log::info!("service {name} is up");
                        break;
                    }
                    Some(i) if self.slots[i].report.is_some() => {
                        let ended = &self.slots[i];
                        let reason = ended.report.as_ref().expect("checked").0.to_string();
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

    fn spawn(&mut self, index: usize, service: Box<dyn Service>, spec: ServiceSpec) {
        // Its own root, not a child of the stop context (2).
        let cancel = Context::background().with_cancel();
        let ctx = cancel.context();
        let events = self.events_tx.clone();
        let policy = spec.restart;
        let name = spec.name.clone();
        let thread = crate::leak::spawn(name.clone(), move || {
            service_thread(index, service, &ctx, &events, policy);
        });
        let thread = match thread {
            Ok(thread) => Some(thread),
            Err(err) => {
                // No thread to send it: its one `Exited` comes from here (3).
                let _ = self.events_tx.send(Event::Exited {
                    index,
                    outcome: Outcome::Failed(format!("cannot start its thread: {err}")),
                    restarts: 0,
                });
                None
            }
        };
        // Before the next receive: every event names a slot (4).
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
            waited: None,
            not_waited: false,
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
                    // It sent this as its last act: only the return is left (3).
                    let _ = thread.join();
                }
                slot.report = Some((outcome, restarts)); // once (3)
                Some(index)
            }
        }
    }

    /// Whether the group is serving: every service started and up, none
    /// restarting or ended, and no shutdown begun (5).
    fn all_up(&self) -> bool {
        self.serving
            && self
                .slots
                .iter()
                .all(|s| s.ready && !s.restarting && s.report.is_none())
    }

    fn update_readiness(&self) {
        let serving = self.all_up();
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
                            log::warn!("service {} ended: {}", self.slots[i].name, outcome);
                            return StopCause::ServiceEnded(self.slots[i].name.clone());
                        }
                    }
                }
                recv(stop.done()) -> _ => return requested(stop),
            }
        }
    }

    /// Stops the started services in reverse order, each within its own
    /// deadline and all within the shutdown timeout, each keeping its
    /// minimum share of it (7).
    fn shutdown(mut self, cause: StopCause) -> SupervisorReport {
        let began = Instant::now();
        // False from the first moment, and for the rest of the run (5).
        self.serving = false;
        self.readiness.set(false);
        self.notify.stopping();
        log::info!("shutting down: {cause}");
        // Every wait below ends at the latest with this one (7).
        let overall = crate::deadline::after(self.shutdown_timeout);
        let running = self.slots.iter().filter(|s| s.report.is_none()).count();
        let share = min_share(self.shutdown_timeout, running);
        if !self.drain_delay.is_zero() && !self.slots.is_empty() {
            log::info!("draining for {:.1?} before stopping", self.drain_delay);
            // Not into the shares of the services to stop (7).
            let budget = self.budget_end(overall, self.slots.len(), share);
            let until = crate::deadline::min(crate::deadline::after(self.drain_delay), budget);
            // Services that end meanwhile are recorded as they go.
            self.wait_events_until(until, None);
        }
        let mut stop_order = Vec::new();
        // Last to first, one layer at a time; only started services (6).
        for i in (0..self.slots.len()).rev() {
            if self.forced.is_some() {
                break; // given up (9): no more cancels, no more waits
            }
            let name = self.slots[i].name.clone();
            if self.slots[i].report.is_some() {
                continue; // ended already (the cause, or during the drain)
            }
            self.notify.status(&format!("stopping {name}"));
            let cancelled = Instant::now();
            self.slots[i].cancel.cancel();
            stop_order.push(name.clone());
            // What is left of the budget once the shares of those below
            // it are put aside (7).
            let budget = self.budget_end(overall, i, share);
            if budget.is_some_and(|end| cancelled >= end) {
                // Cancelled, so that it may still end, but not waited for (8).
                self.slots[i].not_waited = true;
                log::error!("service {name} not waited for: the shutdown budget is spent");
                continue;
            }
            let own = crate::deadline::after(self.slots[i].stop_timeout);
            let deadline = crate::deadline::min(own, budget);
            self.wait_events_until(deadline, Some(i));
            let waited = cancelled.elapsed();
            self.slots[i].waited = Some(waited);
            if self.slots[i].report.is_some() {
                self.slots[i].stop_time = Some(waited);
                log::info!("service {name} stopped in {waited:.1?}");
            } else {
                log::error!(
                    "service {name} is still running at its stop deadline \
                     (waited {waited:.1?}); moving on"
                );
            }
        }
        let report = self.report(cause, stop_order, began);
        log::info!("{report}");
        report
    }

    /// The end of the shutdown budget for what happens before the services
    /// `slots[..below]` are stopped: the overall deadline less the minimum
    /// share of each of them still running (7). `None` is "never".
    fn budget_end(
        &self,
        overall: Option<Instant>,
        below: usize,
        share: Duration,
    ) -> Option<Instant> {
        // At most half the budget in all (see `min_share`): no overflow.
        let reserved: Duration = self.slots[..below]
            .iter()
            .filter(|s| s.report.is_none())
            .map(|s| s.stop_timeout.min(share))
            .sum();
        overall.map(|end| end.checked_sub(reserved).unwrap_or(end))
    }

    /// Records events until `deadline`, or until service `until_exited` has
    /// exited, or until the shutdown is given up (9).
    fn wait_events_until(&mut self, deadline: Option<Instant>, until_exited: Option<usize>) {
        let timer = deadline.map_or_else(crossbeam_channel::never, crossbeam_channel::at);
        loop {
            let exited = until_exited.is_some_and(|i| self.slots[i].report.is_some());
            if exited || self.forced.is_some() {
                return;
            }
            select! {
                recv(self.events) -> event => match event {
                    Ok(event) => {
                        self.record(event);
                    }
                    Err(_) => return,
                },
                recv(self.force.done()) -> _ => self.give_up(),
                recv(timer) -> _ => return,
            }
        }
    }

    /// `force` is done: remember the signal that did it. A `force` done
    /// without a signal as its cause gives nothing up and is not listened
    /// to again.
    fn give_up(&mut self) {
        let signal = self
            .force
            .cause()
            .and_then(|cause| cause.downcast_ref::<SignalReceived>().map(|s| s.0));
        match signal {
            Some(signal) => {
                log::warn!("giving up the shutdown: {}", SignalReceived(signal));
                self.forced = Some(signal);
            }
            None => self.force = Context::background(),
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
        for mut slot in std::mem::take(&mut self.slots) {
            let (outcome, restarts) = match slot.report.take() {
                Some(report) => report,
                None => {
                    let age = now.saturating_duration_since(slot.started);
                    stuck.push(Running {
                        name: slot.name.clone(),
                        age,
                    });
                    // Left running, deliberately and loudly: the process is
                    // about to exit with DEADLINE_EXCEEDED (8), or with the
                    // forced code (9).
                    drop(slot.thread.take());
                    if self.forced.is_some() {
                        // Given up (9): not cancelled now either, as dropping
                        // its guard would do; the process is about to exit.
                        std::mem::forget(slot.cancel);
                    }
                    let outcome = if slot.not_waited {
                        Outcome::NotWaited
                    } else {
                        Outcome::Stuck(age)
                    };
                    (outcome, 0)
                }
            };
            services.push(ServiceReport {
                name: slot.name.clone(),
                outcome,
                restarts,
                stop_time: slot.stop_time,
                waited: slot.waited,
            });
        }
        for spec in &self.specs {
            services.push(ServiceReport {
                name: spec.name.clone(),
                outcome: Outcome::NotStarted,
                restarts: 0,
                stop_time: None,
                waited: None,
            });
        }
        if !stuck.is_empty() {
            let names: Vec<String> = stuck.iter().map(ToString::to_string).collect();
            let why = if self.forced.is_some() {
                "shutdown given up"
            } else {
                "shutdown deadline exceeded"
            };
            log::error!("{why}; still running: {}", names.join(", "));
        }
        SupervisorReport {
            cause,
            forced: self.forced,
            services,
            stop_order,
            stuck,
            shutdown_time: began.elapsed(),
        }
    }
}

/// The minimum share of the shutdown budget each of `services` keeps
/// (capped by its own stop timeout) whatever those stopped before it take:
/// `budget / (2 * services)`, so that the shares come to at most half the
/// budget (7).
fn min_share(budget: Duration, services: usize) -> Duration {
    let services = u32::try_from(services).unwrap_or(u32::MAX).max(1);
    budget / services.saturating_mul(2)
}

fn requested(stop: &Context) -> StopCause {
    let why = stop
        .cause()
        .map_or_else(|| "stop context done".to_string(), |c| c.to_string());
    StopCause::Requested(why)
}
