//! The `pipeline` service: a dispatcher that claims due reports from the
//! database and hands them to a [`quiesce::Pool`] of analysis workers.
//!
//! A job scores the report and, when an analyzer is configured, posts it
//! there under the job's deadline. Its outcome goes to the store without
//! waiting for the commit, so the workers stay busy while the store groups
//! many results into one transaction; the dispatcher learns that a report
//! is settled (its result or retry committed) from the store's reply, and
//! only then forgets it. A report is therefore never worked on twice at
//! once, and a crash at any point leaves it queued.
//!
//! On stop the dispatcher stops claiming work and the pool shuts down with
//! a deadline: running jobs finish, or are cancelled and their reports stay
//! queued for the next start (a cancelled attempt is not counted).
//!
//! # What it owns, and who touches what
//!
//! - `pipeline` (the dispatcher thread): the read connection, the `Pool`,
//!   and `in_flight`, the ids of reports submitted and not yet settled.
//!   Nothing else touches `in_flight`, so it needs no lock.
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
//!    report is never worked on by two jobs at once in this process.
//! 3. An attempt is counted only with its outcome (`Op::Retry`, `Fail`,
//!    `Complete`): a job cancelled by the stop, or never started, writes
//!    nothing, and its report stays `queued` as it was.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select, tick};
use quiesce::{Backoff, BoxError, Context, Pool, Service, ServiceContext};
use rusqlite::Connection;

use super::analyzer::Analyzer;
use super::report::Report;
use super::store::{self, Op, Outcome, StoreHandle, now_ms};

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
    db_path: PathBuf,
    store: StoreHandle,
    work_added: Receiver<()>,
    settings: Arc<Settings>,
    metrics: super::metrics::Metrics,
}

/// A report claimed for processing.
struct Claim {
    report: Report,
    attempts: u32,
    /// Why the stored answers could not be read back, if they could not.
    unreadable: Option<String>,
}

/// A report settled: `true` when its outcome was committed.
type Settled = (String, bool);

impl Pipeline {
    /// A pipeline reading `db_path`, writing through `store`, woken by
    /// `work_added`.
    pub fn new(
        db_path: PathBuf,
        store: StoreHandle,
        work_added: Receiver<()>,
        settings: Settings,
        shared: &store::Live,
    ) -> Pipeline {
        Pipeline {
            db_path,
            store,
            work_added,
            settings: Arc::new(settings),
            metrics: shared.metrics.clone(),
        }
    }
}

impl Service for Pipeline {
    fn name(&self) -> &str {
        "pipeline"
    }

    fn run(&mut self, ctx: &ServiceContext) -> Result<(), BoxError> {
        let reader = store::open_reader(&self.db_path)?;
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
        ctx.ready();
        let ticker = tick(Duration::from_millis(250));
        let mut refill = true;
        loop {
            for (id, _) in settled_rx.try_iter() {
                in_flight.remove(&id);
                refill = true;
            }
            // Refill when half the capacity is free (or when told to), so a
            // busy pool does not cost a query per finished job.
            if refill && in_flight.len() <= capacity / 2 {
                refill = false;
                if let Err(err) =
                    self.dispatch(&reader, &pool, &mut in_flight, capacity, &settled_tx)
                {
                    log::error!("dispatcher: cannot read the queue: {err}");
                }
            }
            select! {
                recv(self.work_added) -> _ => refill = true,
                recv(settled_rx) -> settled => {
                    if let Ok((id, _)) = settled {
                        in_flight.remove(&id);
                        refill = true;
                    }
                }
                recv(ticker) -> _ => refill = true,
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
        // still queued in the database (3).
        drop(report);
        Ok(())
    }
}

impl Pipeline {
    /// Claims due reports not in flight, up to `capacity`, and submits them.
    fn dispatch(
        &self,
        reader: &Connection,
        pool: &Pool,
        in_flight: &mut HashSet<String>,
        capacity: usize,
        settled: &Sender<Settled>,
    ) -> rusqlite::Result<()> {
        if in_flight.len() >= capacity {
            return Ok(());
        }
        // The claims in flight are still queued, so the first `capacity`
        // due rows cover them and every free place. The limit is written
        // into the SQL: a bound LIMIT makes SQLite re-plan the statement on
        // every run.
        let mut stmt = reader.prepare_cached(&format!(
            "SELECT report_id, patient_id, site_id, instrument, submitted_at, answers, attempts
             FROM reports WHERE status = 'queued' AND next_attempt_at <= ?1
             ORDER BY next_attempt_at, rowid LIMIT {capacity}"
        ))?;
        let rows = stmt.query_map(rusqlite::params![now_ms()], |r| {
            let report_id: String = r.get(0)?;
            if in_flight.contains(&report_id) {
                // (2)
                return Ok(None);
            }
            let answers: String = r.get(5)?;
            let (answers, unreadable) = match serde_json::from_str(&answers) {
                Ok(answers) => (answers, None),
                Err(err) => (
                    Default::default(),
                    Some(format!("stored answers unreadable: {err}")),
                ),
            };
            Ok(Some(Claim {
                report: Report {
                    report_id,
                    patient_id: r.get(1)?,
                    site_id: r.get(2)?,
                    instrument: r.get(3)?,
                    submitted_at: r.get(4)?,
                    answers,
                },
                attempts: r.get(6)?,
                unreadable,
            }))
        })?;
        let mut claims = Vec::new();
        for claim in rows {
            claims.extend(claim?);
        }
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
            let (ctx, _deadline) = pool_ctx.with_timeout(settings.job_timeout);
            let outcome = match &claim.unreadable {
                // Retrying cannot help: fail it for good, with the reason.
                Some(why) => Err(why.clone()),
                None => process(&claim.report, &ctx, &settings),
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
                    let _ = settled.send((id, false));
                    return;
                }
                Err(error) if attempts >= settings.max_attempts || claim.unreadable.is_some() => {
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
            let reply: store::Reply = Box::new(move |result: Result<Outcome, String>| {
                if let Err(err) = &result {
                    log::error!(
                        "report {reply_id}: its outcome could not be stored ({err}); it stays queued"
                    );
                }
                let _ = notify.send((reply_id, result.is_ok()));
            });
            if let Err(err) = store.send(op, reply, Instant::now() + Duration::from_secs(30)) {
                log::error!("report {id}: {err}; it stays queued");
                // (1): refused by the store, the job settles itself.
                let _ = settled.send((id, false));
            }
        }
    }
}

/// Scores a report and, with an analyzer, gets its analysis; the result as
/// JSON text, and whether it raised an alert.
fn process(report: &Report, ctx: &Context, settings: &Settings) -> Result<(String, bool), String> {
    ctx.check().map_err(|e| e.to_string())?;
    let score = report.score(settings.alert_total);
    let analysis = match &settings.analyzer {
        None => serde_json::Value::Null,
        Some(analyzer) => {
            let body = serde_json::to_vec(&serde_json::json!({ "report": report, "score": score }))
                .map_err(|e| e.to_string())?;
            analyzer.analyze(ctx, &body)?
        }
    };
    let result = serde_json::json!({
        "score": score,
        "analysis": analysis,
    });
    Ok((result.to_string(), score.alert))
}
