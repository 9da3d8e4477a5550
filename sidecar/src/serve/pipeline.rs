//! The `pipeline` service: a dispatcher that claims due reports from the
//! store ([`Op::Claim`]: each claim is this replica's for a lease) and
//! hands them to a [`quiesce::Pool`] of analysis workers.
//!
//! While it runs it renews its claims' lease every third of it
//! ([`Op::Heartbeat`]) and, every half lease, returns to the queue the
//! claims of replicas that stopped renewing theirs ([`Op::Reap`]): a
//! replica killed mid-job loses its reports to the others within a lease
//! and a half. At its stop it releases the claims it did not finish
//! ([`Op::Release`]), so the others take them at once.
//!
//! A job scores the report and, when an analyzer is configured, posts it
//! there under the job's deadline. Without an analyzer a report is scored
//! at intake and stored processed by its own insert ([`scored_at_intake`];
//! the [store]'s "Where a report is scored"): the jobs are
//! then only for the reports that were not (queued before an upgrade,
//! re-driven, or whose answers do not fit their instrument, failed for
//! good here). Its outcome goes to the store without
//! waiting for the commit, so the workers stay busy while the store groups
//! many results into one transaction; the dispatcher learns that a report
//! is settled (its result or retry committed) from the store's reply, and
//! only then forgets it. A report is therefore never worked on twice at
//! once, and a crash at any point leaves it queued.
//!
//! When a report's outcome cannot be stored (a full disk, a failing
//! store), the report stays queued as it was, and claiming it again at
//! once would fail again at once: the dispatcher backs off, per report
//! (not before the same [`Backoff`] as analyzer retries allows, doubling
//! with each failure) and globally (no claim at all until the pause after
//! the last failed store has passed), and logs such failures once per
//! interval with a count. Both end when an outcome is stored again, or the
//! store tells of a commit that succeeded after a failed one.
//!
//! On stop the dispatcher stops claiming work and the pool shuts down with
//! a deadline: running jobs finish, or are cancelled and their reports stay
//! queued (a cancelled attempt is not counted), released for another
//! replica or the next start.
//!
//! # What it owns, and who touches what
//!
//! - `pipeline` (the dispatcher thread): the `Pool`,
//!   `in_flight`, the ids of reports submitted and not yet settled, and
//!   the [`StoreBackoff`] (the reports held back after a failed store, the
//!   global pause, the throttled log). Nothing else touches them, so they
//!   need no lock.
//! - `analysis-N` (the pool's workers): run one job each; they touch only
//!   the job's own report, the store handle and the `settled` sender.
//! - `store-sync`: calls the reply of a job's store command, which sends
//!   the report's settlement to the dispatcher.
//!
//! # Invariants
//!
//! 1. An id is in `in_flight` from its job's submit until its settlement
//!    is received; each submitted job settles exactly once: on the job's
//!    own path (cancelled, or the store refused the command) or through
//!    its store reply. (A reply is only lost if the store stops first,
//!    which the stop order rules out: the pipeline stops before the store.)
//! 2. The dispatcher never submits an id that is in `in_flight`, so one
//!    report is never worked on by two jobs at once in this process; nor
//!    one it has not claimed, so never by two replicas at once while its
//!    lease is renewed (a claim skips reports claimed by others).
//! 3. An attempt is counted only with its outcome (`Op::Retry`, `Fail`,
//!    `Complete`): a job cancelled by the stop, or never started, writes
//!    nothing, and its report stays `queued` as it was.
//! 4. A report whose outcome could not be stored (its settlement is
//!    [`Settlement::NotStored`]) is not submitted again before its
//!    not-before time: `retry_backoff.delay(n - 1)` after its n-th such
//!    failure in a row. Its row is unchanged (still due), so this hold, in
//!    memory, is what keeps it from being claimed again at once.
//! 5. While the store fails, the dispatcher claims nothing until the
//!    global pause has passed: `retry_backoff.delay(n - 1)` after the n-th
//!    failed round (failures settled within one pause are one round).
//!    A report's hold ends when its own outcome is stored, the pause when
//!    any outcome is, and both on a store recovery
//!    ([`store::Health::recoveries`] changed); both are lost with the
//!    process, which is safe: the reports are still queued.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::analyzer::Analyzer;
use super::report::{Assessment, Report};
use super::store::{
    self, CallError, Claiming, LOG_EVERY, Op, Outcome, Scored, StoreHandle, Throttle, now_ms,
};
use crossbeam_channel::{Receiver, Sender, select, tick};
use quiesce::{Backoff, BoxError, Context, Pool, Service, ServiceContext};

/// How the pipeline works.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Analysis workers.
    pub workers: usize,
    /// Each job's deadline.
    pub job_timeout: Duration,
    /// Attempts before a report is failed for good.
    pub max_attempts: u32,
    /// The waits between attempts (the first is `--retry-backoff`,
    /// doubling, up to 5 minutes).
    pub retry_backoff: Backoff,
    /// A total above this raises an alert.
    pub alert_total: u32,
    /// The external analysis service, if any.
    pub analyzer: Option<Analyzer>,
    /// At a stop, how long running jobs have to finish.
    pub drain: Duration,
}

/// The dispatcher service.
pub struct Pipeline {
    claiming: Claiming,
    store: StoreHandle,
    work_added: Receiver<()>,
    settings: Arc<Settings>,
    metrics: super::metrics::Metrics,
    shared: Arc<store::Live>,
}

/// A report claimed for processing.
struct Claim {
    report: Report,
    attempts: u32,
    /// Why the stored answers could not be read back, if they could not.
    unreadable: Option<String>,
}

/// How a submitted job ended, for the dispatcher.
#[derive(Debug)]
enum Settlement {
    /// Its outcome was committed.
    Stored,
    /// Its outcome could not be stored (the store failed it, or did not
    /// take it): held back (4, 5).
    NotStored(String),
    /// Cancelled by the stop: nothing was attempted (3).
    Cancelled,
}

/// A report settled.
type Settled = (String, Settlement);

/// A report held back after its outcome could not be stored (4).
#[derive(Debug)]
struct Held {
    failures: u32,
    not_before: Instant,
}

/// The dispatcher's backoff after failed stores, per report (4) and
/// global (5), and its throttled log.
#[derive(Debug)]
struct StoreBackoff {
    backoff: Backoff,
    held: HashMap<String, Held>,
    /// Failed rounds in a row, and the end of the current pause.
    rounds: u32,
    paused_until: Option<Instant>,
    /// The store's recovery count last seen.
    recoveries: u64,
    log: Throttle,
}

impl StoreBackoff {
    fn new(backoff: Backoff, recoveries: u64) -> StoreBackoff {
        StoreBackoff {
            backoff,
            held: HashMap::new(),
            rounds: 0,
            paused_until: None,
            recoveries,
            log: Throttle::new(LOG_EVERY),
        }
    }

    /// The outcome of `id` could not be stored, at `now` (4, 5).
    fn not_stored(&mut self, id: String, now: Instant, err: &str) {
        let held = self.held.entry(id).or_insert(Held {
            failures: 0,
            not_before: now,
        });
        held.failures = held.failures.saturating_add(1);
        held.not_before = now + self.backoff.delay(held.failures - 1);
        if self.paused_until.is_none_or(|until| now >= until) {
            self.rounds = self.rounds.saturating_add(1);
            self.paused_until = Some(now + self.backoff.delay(self.rounds - 1));
        }
        if let Some(n) = self.log.hit(now) {
            log::error!(
                "{n} report outcome(s) could not be stored since the last such line ({err}); \
                 they stay queued; claims paused for {:?}, {} report(s) held back",
                self.backoff.delay(self.rounds - 1),
                self.held.len()
            );
        }
    }

    /// The outcome of `id` was stored: the store works (4, 5).
    fn stored(&mut self, id: &str) {
        self.held.remove(id);
        self.clear_pause();
    }

    /// The store tells how many times it recovered: a change ends every
    /// hold (4, 5).
    fn observe(&mut self, recoveries: u64) {
        if recoveries != self.recoveries {
            self.recoveries = recoveries;
            self.held.clear();
            self.clear_pause();
        }
    }

    fn clear_pause(&mut self) {
        if self.rounds > 0 {
            self.rounds = 0;
            self.paused_until = None;
            let held = self.log.reset();
            log::info!(
                "report outcomes are stored again ({held} failure(s) since the last logged one)"
            );
        }
    }

    /// Whether claims may be made at `now` (5).
    fn may_claim(&self, now: Instant) -> bool {
        self.paused_until.is_none_or(|until| now >= until)
    }

    /// Whether `id` is held back at `now` (4).
    fn holds(&self, id: &str, now: Instant) -> bool {
        self.held.get(id).is_some_and(|h| now < h.not_before)
    }
}

impl Pipeline {
    /// A pipeline claiming work as `claiming` says through `store`, woken
    /// by `work_added`.
    pub fn new(
        claiming: Claiming,
        store: StoreHandle,
        work_added: Receiver<()>,
        settings: Settings,
        shared: &Arc<store::Live>,
    ) -> Pipeline {
        Pipeline {
            claiming,
            store,
            work_added,
            settings: Arc::new(settings),
            metrics: shared.metrics.clone(),
            shared: shared.clone(),
        }
    }
}

impl Service for Pipeline {
    fn name(&self) -> &str {
        "pipeline"
    }

    fn run(&mut self, ctx: &ServiceContext) -> Result<(), BoxError> {
        let workers = self.settings.workers.max(1);
        // Claimed at most: running plus waiting in the pool's queue.
        let capacity = (8 * workers).max(64);
        let pool = Pool::builder()
            .workers(workers)
            .queue(capacity)
            .name("analysis")
            .stop_grace(Duration::from_millis(500))
            .build()?;
        let (settled_tx, settled_rx) = crossbeam_channel::unbounded::<Settled>();
        let mut in_flight: HashSet<String> = HashSet::new();
        let mut backoff =
            StoreBackoff::new(self.settings.retry_backoff, self.shared.health.recoveries());
        ctx.ready();
        let ticker = tick(Duration::from_millis(250));
        let heartbeat = tick(self.claiming.lease / 3);
        let reaper = tick(self.claiming.lease / 2);
        let mut claim_failures = Throttle::new(LOG_EVERY);
        let mut refill = true;
        loop {
            for settled in settled_rx.try_iter() {
                settle(&mut in_flight, &mut backoff, settled);
                refill = true;
            }
            backoff.observe(self.shared.health.recoveries());
            // Refill when half the capacity is free (or when told to), so a
            // busy pool does not cost a query per finished job; not while
            // the store fails (5): `refill` stays set, the ticker comes back.
            if refill && in_flight.len() <= capacity / 2 && backoff.may_claim(Instant::now()) {
                refill = false;
                match self.dispatch(&pool, &mut in_flight, &backoff, capacity, &settled_tx) {
                    Ok(()) => {
                        if let n @ 1.. = claim_failures.reset() {
                            log::info!("dispatcher: claims work again ({n} failed claim(s))");
                        }
                    }
                    Err(err) => {
                        if let Some(n) = claim_failures.hit(Instant::now()) {
                            log::error!(
                                "dispatcher: cannot claim work: {err} ({n} time(s) since the last such line)"
                            );
                        }
                    }
                }
            }
            select! {
                recv(self.work_added) -> _ => refill = true,
                recv(settled_rx) -> settled => {
                    if let Ok(settled) = settled {
                        settle(&mut in_flight, &mut backoff, settled);
                        refill = true;
                    }
                }
                recv(ticker) -> _ => refill = true,
                recv(heartbeat) -> _ => {
                    self.lease_call(Op::Heartbeat);
                }
                recv(reaper) -> _ => {
                    if let Some(n @ 1..) = self.lease_call(Op::Reap) {
                        log::warn!(
                            "returned {n} report(s) to the queue: their replica stopped renewing its claim"
                        );
                        refill = true;
                    }
                }
                recv(ctx.done()) -> _ => break,
            }
        }
        log::info!(
            "pipeline: no more claims; {} job(s) in flight, draining for up to {:?}",
            in_flight.len(),
            self.settings.drain
        );
        let report = pool.shutdown_deadline(Instant::now() + self.settings.drain);
        log::info!(
            "pipeline stopped: {} completed, {} cancelled (left queued), {} never started (left queued){}",
            report.completed,
            report.cancelled,
            report.never_started.len(),
            if report.stuck.is_empty() {
                String::new()
            } else {
                format!(", stuck: {:?}", report.stuck)
            }
        );
        // The handed-back jobs are dropped on purpose: their reports are
        // still queued in the database (3), and released now for another
        // replica to take at once (or the next start).
        drop(report);
        match self
            .store
            .call(Op::Release, Instant::now() + Duration::from_secs(5))
        {
            Ok(Outcome::Rows(n)) if n > 0 => {
                log::info!("pipeline: released {n} unfinished claim(s)");
            }
            Ok(_) => {}
            Err(err) => log::warn!(
                "pipeline: cannot release the unfinished claims ({err}); they return to the queue when their lease runs out"
            ),
        }
        Ok(())
    }
}

/// Takes a settled report out of `in_flight` (1), and into or out of the
/// backoff (4, 5).
fn settle(in_flight: &mut HashSet<String>, backoff: &mut StoreBackoff, (id, how): Settled) {
    in_flight.remove(&id);
    match how {
        Settlement::Stored => backoff.stored(&id),
        Settlement::NotStored(err) => backoff.not_stored(id, Instant::now(), &err),
        Settlement::Cancelled => {}
    }
}

impl Pipeline {
    /// Renews or reaps leases (`op`): the rows changed, `None` when the
    /// store could not (logged; the next round tries again).
    fn lease_call(&self, op: Op) -> Option<u64> {
        let what = match op {
            Op::Heartbeat => "renew this replica's claims",
            _ => "return expired claims to the queue",
        };
        match self
            .store
            .call(op, Instant::now() + self.claiming.lease / 4)
        {
            Ok(Outcome::Rows(n)) => Some(n),
            Ok(other) => {
                log::error!("pipeline: the store answered {other:?} to a lease command");
                None
            }
            Err(err) => {
                log::warn!("pipeline: cannot {what}: {err}");
                None
            }
        }
    }

    /// Claims due reports neither in flight nor held back, up to
    /// `capacity`, and submits them.
    fn dispatch(
        &self,
        pool: &Pool,
        in_flight: &mut HashSet<String>,
        backoff: &StoreBackoff,
        capacity: usize,
        settled: &Sender<Settled>,
    ) -> Result<(), CallError> {
        if in_flight.len() >= capacity {
            return Ok(());
        }
        // The claims in flight and the reports held back are still queued
        // and this replica's, so the first `capacity` + held due rows it
        // may claim cover them and every free place.
        let limit = capacity + backoff.held.len();
        let claimed = match self.store.call(
            Op::Claim { limit },
            Instant::now() + Duration::from_secs(10),
        )? {
            Outcome::Claimed(claimed) => claimed,
            other => {
                return Err(CallError::Failed(format!(
                    "the store answered {other:?} to a claim"
                )));
            }
        };
        let now = Instant::now();
        let claims = claimed.into_iter().filter_map(|row| {
            if in_flight.contains(&row.report_id) || backoff.holds(&row.report_id, now) {
                // (2), (4)
                return None;
            }
            let (answers, unreadable) = match serde_json::from_str(&row.answers) {
                Ok(answers) => (answers, None),
                Err(err) => (
                    Default::default(),
                    Some(format!("stored answers unreadable: {err}")),
                ),
            };
            Some(Claim {
                report: Report {
                    report_id: row.report_id,
                    patient_id: row.patient_id,
                    site_id: row.site_id,
                    instrument: row.instrument,
                    submitted_at: row.submitted_at,
                    answers,
                },
                attempts: row.attempts,
                unreadable,
            })
        });
        let claims: Vec<Claim> = claims.collect();
        for claim in claims {
            let id = claim.report.report_id.clone();
            let job = self.job(claim, settled.clone());
            match pool.try_submit(job) {
                Ok(()) => {
                    in_flight.insert(id);
                }
                Err(refused) => {
                    log::debug!("dispatcher: {refused}; will retry {id}");
                    break;
                }
            }
        }
        Ok(())
    }

    fn job(
        &self,
        claim: Claim,
        settled: Sender<Settled>,
    ) -> impl FnOnce(&Context) + Send + 'static + use<> {
        let (settings, store, metrics) = (
            self.settings.clone(),
            self.store.clone(),
            self.metrics.clone(),
        );
        move |pool_ctx: &Context| {
            metrics.jobs_running.inc();
            let started = Instant::now();
            let ctx = pool_ctx.with_timeout(settings.job_timeout);
            // Scored by its instrument's rules (or the generic ones); a
            // report stored before its instrument was validated may not
            // fit them: retrying cannot help, it fails for good.
            let assessed = match &claim.unreadable {
                Some(why) => Err(why.clone()),
                None => claim
                    .report
                    .assess(settings.alert_total)
                    .map_err(|invalid| {
                        let fields: Vec<String> = invalid
                            .iter()
                            .map(|i| format!("{}: {}", i.field, i.message))
                            .collect();
                        format!(
                            "the answers do not fit the instrument: {}",
                            fields.join("; ")
                        )
                    }),
            };
            let unfit = assessed.is_err();
            let alerts = alert_labels(assessed.as_ref().ok());
            let outcome = match assessed {
                // Retrying cannot help: fail it for good, with the reason.
                Err(why) => Err(why),
                Ok(assessment) => process(&claim.report, &assessment, &ctx, &settings),
            };
            metrics.job_seconds.observe(started.elapsed().as_secs_f64());
            metrics.jobs_running.dec();
            let id = claim.report.report_id.clone();
            let attempts = claim.attempts + 1;
            let op = match outcome {
                Ok((result, alert)) => Op::Complete {
                    report_id: id.clone(),
                    site_id: claim.report.site_id.clone(),
                    patient_id: claim.report.patient_id.clone(),
                    result,
                    alert,
                    attempts,
                },
                Err(err) if pool_ctx.is_done() => {
                    // Cancelled by the shutdown: not an attempt (3). The
                    // report stays queued for the next start; settled (1).
                    log::debug!("job {id} cancelled by the shutdown ({err})");
                    let _ = settled.send((id, Settlement::Cancelled));
                    return;
                }
                Err(error) if attempts >= settings.max_attempts || unfit => {
                    log::warn!("report {id} failed after {attempts} attempt(s): {error}");
                    Op::Fail {
                        report_id: id.clone(),
                        attempts,
                        error,
                    }
                }
                Err(error) => {
                    // Attempt n failed: the wait before retry n - 1.
                    let delay = settings.retry_backoff.delay(attempts.saturating_sub(1));
                    log::info!(
                        "report {id}: attempt {attempts} failed ({error}); retrying in {delay:?}"
                    );
                    Op::Retry {
                        report_id: id.clone(),
                        attempts,
                        error,
                        next_at_ms: now_ms()
                            .saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)),
                    }
                }
            };
            let notify = settled.clone();
            let reply_id = id.clone();
            let is_complete = matches!(op, Op::Complete { .. });
            let alert_metric = metrics.alerts.clone();
            // Failures are logged by the dispatcher, once per interval (4).
            let reply: store::Reply = Box::new(move |result: Result<Outcome, store::Failure>| {
                // An unknown outcome is treated as not stored: the report
                // is claimed again after the backoff, and its updates are
                // conditional on `queued`, so a second outcome changes
                // nothing if the first one was stored.
                let how = match result {
                    Ok(Outcome::Unchanged) => {
                        // (4) of the store: no longer this replica's.
                        log::warn!(
                            "report {reply_id}: outcome discarded: the report was no longer \
                             claimed by this replica (its lease ran out) or already settled"
                        );
                        Settlement::Stored
                    }
                    Ok(outcome) => {
                        // The alerts raised, counted once: with the
                        // result that stored them.
                        if outcome == Outcome::Changed && is_complete {
                            for (instrument, rule) in &alerts {
                                alert_metric.with_label_values(&[instrument, rule]).inc();
                            }
                        }
                        Settlement::Stored
                    }
                    Err(err) => Settlement::NotStored(err.to_string()),
                };
                let _ = notify.send((reply_id, how));
            });
            if let Err(err) = store.send(op, reply, Instant::now() + Duration::from_secs(30)) {
                // (1): refused by the store, the job settles itself.
                let _ = settled.send((id, Settlement::NotStored(err.to_string())));
            }
        }
    }
}

/// The alerts an assessment raised, as metric labels: the instrument (a
/// registered one's name, else `unregistered`: a client must not make new
/// series at will) and the rule.
fn alert_labels(assessment: Option<&Assessment>) -> Vec<(&'static str, &'static str)> {
    match assessment {
        Some(Assessment::Instrument(scored)) => scored
            .alerts
            .iter()
            .map(|alert| (scored.instrument, alert.rule))
            .collect(),
        Some(Assessment::Generic(score)) if score.alert => vec![("unregistered", "generic")],
        _ => Vec::new(),
    }
}

/// Gets the analysis of a scored report, when an analyzer is configured;
/// the result as JSON text, and whether it raised an alert.
fn process(
    report: &Report,
    score: &Assessment,
    ctx: &Context,
    settings: &Settings,
) -> Result<(String, bool), String> {
    ctx.check().map_err(|e| e.to_string())?;
    let analysis = match &settings.analyzer {
        None => serde_json::Value::Null,
        Some(analyzer) => {
            let body = serde_json::to_vec(&serde_json::json!({ "report": report, "score": score }))
                .map_err(|e| e.to_string())?;
            analyzer.analyze(ctx, &body)?
        }
    };
    Ok((result_json(score, &analysis), score.alert()))
}

/// A report's result as stored: its score and the analyzer's answer
/// (`null` without an analyzer).
fn result_json(score: &Assessment, analysis: &serde_json::Value) -> String {
    /// Written straight from the score: no tree built per report. Keys in
    /// the score's own order, which readers of this JSON ignore.
    #[derive(serde::Serialize)]
    struct Stored<'a> {
        analysis: &'a serde_json::Value,
        score: &'a Assessment,
    }
    serde_json::to_string(&Stored { analysis, score }).expect("a result serialises")
}

/// What a job would store for a report scored as `score` when no analyzer
/// is configured: intake sends it with the report's insert, which stores
/// the report processed (see the [store]'s "Where a report
/// is scored"), and the report never comes here.
pub(super) fn scored_at_intake(score: &Assessment) -> Scored {
    Scored {
        result: result_json(score, &serde_json::Value::Null),
        alert: score.alert(),
        alert_labels: alert_labels(Some(score)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_report_whose_outcome_is_not_stored_is_held_back_doubling() {
        let mut backoff = StoreBackoff::new(Backoff::new(100 * MS, 1000 * MS), 0);
        let t0 = Instant::now();
        let mut now = t0;
        for (failure, wait) in [100, 200, 400, 800, 1000, 1000].into_iter().enumerate() {
            backoff.not_stored("r1".into(), now, "database or disk is full");
            assert!(backoff.holds("r1", now), "failure {failure}");
            assert!(
                backoff.holds("r1", now + (wait - 1) * MS),
                "failure {failure}"
            );
            assert!(!backoff.holds("r1", now + wait * MS), "failure {failure}");
            assert!(!backoff.holds("r2", now), "another report is not held");
            now += wait * MS;
        }
        // Stored at last: no longer held, the next failure starts over.
        backoff.stored("r1");
        assert!(!backoff.holds("r1", now));
        backoff.not_stored("r1".into(), now, "e");
        assert!(!backoff.holds("r1", now + 100 * MS));
    }

    #[test]
    fn failures_within_one_pause_are_one_round_and_the_pause_doubles() {
        let mut backoff = StoreBackoff::new(Backoff::new(100 * MS, 1000 * MS), 0);
        let t0 = Instant::now();
        assert!(backoff.may_claim(t0));
        // Sixty-four jobs fail at once: one round, a pause of 100 ms.
        for i in 0..64 {
            backoff.not_stored(format!("r{i}"), t0 + i * MS / 10, "e");
        }
        assert!(!backoff.may_claim(t0 + 99 * MS));
        assert!(backoff.may_claim(t0 + 100 * MS));
        // The next failure after the pause: round two, 200 ms.
        let t1 = t0 + 100 * MS;
        backoff.not_stored("r0".into(), t1, "e");
        assert!(!backoff.may_claim(t1 + 199 * MS));
        assert!(backoff.may_claim(t1 + 200 * MS));
    }

    #[test]
    fn a_store_recovery_ends_every_hold() {
        let mut backoff = StoreBackoff::new(Backoff::new(100 * MS, 1000 * MS), 7);
        let t0 = Instant::now();
        backoff.not_stored("r1".into(), t0, "e");
        backoff.not_stored("r2".into(), t0, "e");
        backoff.observe(7);
        assert!(backoff.holds("r1", t0) && !backoff.may_claim(t0));
        backoff.observe(8);
        assert!(!backoff.holds("r1", t0) && !backoff.holds("r2", t0));
        assert!(backoff.may_claim(t0));
    }

    #[test]
    fn a_result_is_its_score_and_the_analysis() {
        let score = Assessment::Generic(crate::serve::report::Score {
            total: 7,
            max_item: 3,
            alert: true,
            alert_items: vec!["q2".into()],
        });
        let analysis = serde_json::json!({ "risk": "high" });
        for analysis in [serde_json::Value::Null, analysis] {
            let stored: serde_json::Value =
                serde_json::from_str(&result_json(&score, &analysis)).unwrap();
            assert_eq!(
                stored,
                serde_json::json!({ "score": score, "analysis": analysis })
            );
        }
        assert_eq!(
            scored_at_intake(&score).result,
            r#"{"analysis":null,"score":{"total":7,"max_item":3,"alert":true,"alert_items":["q2"]}}"#
        );
    }
}
