//! The writer service, common to both backends: it takes commands off the
//! channel in batches, has its [`Engine`] apply each batch in one
//! transaction, keeps [`Live`] in step (invariants 1 and 5 of the
//! [store](super)), tells the store's health and probes it while it fails
//! (7), and hands the replies to `store-sync` (2, 3, 6).

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, select, tick};
use quiesce::{Backoff, BoxError, Service, ServiceContext};

use super::sync::{Replies, Syncer};
use serde_json::json;

use super::{AuditEvent, Command, Failure, LOG_EVERY, Live, Op, Outcome, Throttle, Who};

/// Most commands in one transaction.
pub(super) const MAX_BATCH: usize = 512;

/// How often the writer looks whether a failing store should be probed,
/// and refreshes the counts other replicas share (PostgreSQL).
const TICK: Duration = Duration::from_millis(250);

/// The state rebuilt from the database: the backlog and the enrolled
/// patients per site.
#[derive(Debug, Default)]
pub(super) struct Counts {
    pub(super) backlog: i64,
    pub(super) sites: Vec<(String, u64)>,
}

/// What one command did, once its transaction committed.
#[derive(Debug)]
pub(super) struct Effect {
    pub(super) outcome: Outcome,
    /// A patient enrolled at the command's site for the first time.
    pub(super) new_enrollment: bool,
    /// Each item's effect ([`Op::InsertMany`]), in order; empty otherwise.
    pub(super) items: Vec<Effect>,
}

impl From<Outcome> for Effect {
    fn from(outcome: Outcome) -> Effect {
        Effect {
            outcome,
            new_enrollment: false,
            items: Vec::new(),
        }
    }
}

impl Effect {
    /// The effect of an [`Op::InsertMany`]: its items'.
    pub(super) fn many(items: Vec<Effect>) -> Effect {
        Effect {
            outcome: Outcome::Many(items.iter().map(|e| e.outcome.clone()).collect()),
            new_enrollment: false,
            items,
        }
    }
}

/// How a batch went: each command's effect (or why its statement failed)
/// once the transaction committed, or the transaction's failure (8).
pub(super) struct Applied {
    pub(super) results: Result<Vec<Result<Effect, String>>, Failure>,
    /// A statement refused for a reason of the store's own (7), even when
    /// the commit of the rest succeeded.
    pub(super) fault: Option<String>,
}

/// One backend's side of the writer: its connection, its schema, and the
/// SQL of each command.
pub(super) trait Engine: Send {
    /// Opens the database (connects, applies the migrations) and counts
    /// what [`Live`] is rebuilt from.
    ///
    /// # Errors
    ///
    /// When the database cannot be reached or its schema is not one this
    /// binary knows.
    fn open(&mut self) -> Result<Counts, BoxError>;

    /// The file `store-sync` must flush before it replies (SQLite's WAL,
    /// with the writer at `synchronous = NORMAL`), or `None` when each
    /// commit is durable by itself.
    fn flush_file(&mut self) -> Option<std::fs::File>;

    /// Applies `ops` in one transaction; `backlog` is the writer's count
    /// of queued reports (5).
    fn apply(&mut self, ops: &[&Op], backlog: i64) -> Applied;

    /// A one-row write of its own, to find out whether the store can
    /// commit again (7).
    ///
    /// # Errors
    ///
    /// Why it cannot.
    fn probe(&mut self) -> Result<(), String>;

    /// The shared counts, read afresh, when other processes change them
    /// (PostgreSQL); `None` when this process is the only writer.
    fn refresh(&mut self) -> Option<Result<Counts, String>>;

    /// Closes the database at the stop (SQLite folds its WAL in).
    ///
    /// # Errors
    ///
    /// When closing failed.
    fn close(&mut self) -> Result<(), String>;
}

/// While the store fails, when to try a commit of its own (7): with no
/// work and no traffic (a load balancer stops sending to an unready
/// sidecar), nothing else would find out that it can commit again.
struct Probe {
    backoff: Backoff,
    failures: u32,
    next: Option<Instant>,
}

/// The writer service (`store`).
pub struct Writer {
    engine: Box<dyn Engine>,
    /// This replica's id, for its audit rows.
    replica: String,
    rx: Receiver<Command>,
    shared: Arc<Live>,
    /// Failed commits, logged once per interval (7).
    failures: RefCell<Throttle>,
}

impl Writer {
    pub(super) fn new(
        engine: Box<dyn Engine>,
        replica: String,
        rx: Receiver<Command>,
        shared: Arc<Live>,
    ) -> Writer {
        Writer {
            engine,
            replica,
            rx,
            shared,
            failures: RefCell::new(Throttle::new(LOG_EVERY)),
        }
    }
}

impl Service for Writer {
    fn name(&self) -> &str {
        "store"
    }

    fn run(&mut self, ctx: &ServiceContext) -> Result<(), BoxError> {
        let counts = self.engine.open()?;
        let backlog = counts.backlog;
        self.recover(counts);
        self.audit_now(
            "server.started",
            json!({ "version": env!("CARGO_PKG_VERSION"), "backlog": backlog }),
        );
        let flush = self.engine.flush_file();
        let syncer = Syncer::start(flush, self.shared.clone())?;
        ctx.ready();
        let ticker = tick(TICK);
        let mut probe = Probe {
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(30)),
            failures: 0,
            next: None,
        };
        loop {
            select! {
                recv(ticker) -> _ => {
                    self.probe(&mut probe);
                    self.refresh();
                }
                recv(self.rx) -> cmd => match cmd {
                    Ok(cmd) => {
                        self.commit_batch(cmd, &syncer);
                        if !syncer.is_alive() {
                            syncer.finish();
                            return Err("the store-sync thread died: commits can no longer be confirmed".into());
                        }
                    }
                    // Every producer has gone (the services above stopped
                    // first): nothing more can come, but the store stops
                    // when it is told to, not on its own.
                    Err(_) => {
                        let _ = ctx.done().recv();
                        break;
                    }
                },
                recv(ctx.done()) -> _ => break,
            }
        }
        // Stopped last: every producer has stopped, but commands may still
        // be waiting. Commit them, then close.
        while let Ok(cmd) = self.rx.try_recv() {
            self.commit_batch(cmd, &syncer);
        }
        syncer.finish();
        let metrics = &self.shared.metrics;
        self.audit_now(
            "server.stopped",
            json!({
                "accepted": metrics.accepted.get(),
                "processed": metrics.processed.get(),
                "failed": metrics.failed.get(),
                "backlog": self.shared.backlog.load(Ordering::SeqCst),
            }),
        );
        self.engine.close()?;
        log::info!("store closed cleanly");
        Ok(())
    }
}

impl Writer {
    /// Appends a row about this process (its start, its stop) to the
    /// audit trail, at once; a failure is logged (the store's health
    /// tells the rest).
    fn audit_now(&mut self, action: &'static str, detail: serde_json::Value) {
        let mut event = AuditEvent::new(
            action,
            Who {
                caller: Some("quiesce serve".into()),
                remote: Some(self.replica.clone()),
                request_id: None,
            },
        );
        event.detail = Some(detail.to_string());
        let op = Op::Audit(event);
        let backlog = self.shared.backlog.load(Ordering::SeqCst);
        let applied = self.engine.apply(&[&op], backlog);
        let failed = match applied.results {
            Err(failure) => Some(failure.to_string()),
            Ok(results) => results.into_iter().find_map(Result::err),
        };
        if let Some(err) = failed {
            log::error!("cannot record {action} in the audit trail: {err}");
        }
    }

    /// Rebuilds the in-memory state from the database's counts.
    fn recover(&self, counts: Counts) {
        let backlog = counts.backlog;
        self.shared.backlog.store(backlog, Ordering::SeqCst);
        self.shared.metrics.backlog.set(backlog);
        self.shared.enrollment.add_all(counts.sites);
        log::info!(
            "store open: {backlog} report(s) queued, {} patient(s) enrolled",
            self.shared.enrollment.total()
        );
        if backlog > 0 {
            let _ = self.shared.work_added.try_send(());
        }
    }

    /// Brings [`Live`] to the shared counts other replicas change too (5);
    /// the enrolled patients per site only grow, so the difference is
    /// added.
    fn refresh(&mut self) {
        let counts = match self.engine.refresh() {
            None => return,
            Some(Ok(counts)) => counts,
            // A failing database is told by the commits and the probe.
            Some(Err(err)) => {
                log::debug!("cannot refresh the shared counts: {err}");
                return;
            }
        };
        let shared = &self.shared;
        let before = shared.backlog.swap(counts.backlog, Ordering::SeqCst);
        shared.metrics.backlog.set(counts.backlog);
        if counts.backlog > before {
            // Reports accepted by another replica: work for this one too.
            let _ = shared.work_added.try_send(());
        }
        let missing: Vec<(String, u64)> = counts
            .sites
            .into_iter()
            .filter_map(|(site, n)| {
                let known = shared.enrollment.get(&site);
                (n > known).then(|| (site, n - known))
            })
            .collect();
        if !missing.is_empty() {
            shared.enrollment.add_all(missing);
        }
    }

    /// Commits `first` and whatever else is waiting, in one transaction.
    fn commit_batch(&mut self, first: Command, syncer: &Syncer) {
        let mut batch = vec![first];
        batch.extend(self.rx.try_iter().take(MAX_BATCH - 1));
        self.commit_batch_of(batch, syncer);
    }

    /// Commits `batch` in one transaction.
    pub(super) fn commit_batch_of(&mut self, batch: Vec<Command>, syncer: &Syncer) {
        let started = Instant::now();
        let backlog = self.shared.backlog.load(Ordering::SeqCst);
        let ops: Vec<&Op> = batch.iter().map(|c| &c.op).collect();
        let applied = self.engine.apply(&ops, backlog);
        let metrics = &self.shared.metrics;
        metrics.commit_batch.observe(batch.len() as f64);
        metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        // (7): the store is failing when its commit failed, or a statement
        // was refused for a reason of its own.
        let fault = match &applied.results {
            Err(failure) => Some(failure.error().to_string()),
            Ok(_) => applied.fault,
        };
        self.note(fault);
        let replies: Replies = match applied.results {
            Ok(results) => {
                batch
                    .into_iter()
                    .zip(results)
                    .map(|(cmd, result)| {
                        let outcome = result.map_err(Failure::NotStored).map(|effect| {
                            // Here, before the next batch reads the backlog (1).
                            self.account(&cmd.op, &effect);
                            effect.outcome
                        });
                        (cmd.reply, outcome)
                    })
                    .collect()
            }
            Err(err) => batch
                .into_iter()
                .map(|cmd| (cmd.reply, Err(err.clone())))
                .collect(),
        };
        syncer.deliver(replies);
    }

    /// Records in [`Live::health`] how the last transaction went: `None`
    /// when it stored what it was asked, or why not (7); failures logged
    /// once per interval, the recovery once.
    fn note(&self, fault: Option<String>) {
        match fault {
            None => {
                self.shared.metrics.store_healthy.set(1);
                if self.shared.health.committed() {
                    let held = self.failures.borrow_mut().reset();
                    log::warn!(
                        "the store commits again ({held} failure(s) since the last logged one)"
                    );
                }
            }
            Some(err) => {
                self.shared.metrics.store_failures.inc();
                self.shared.metrics.store_healthy.set(0);
                self.shared.health.failed(&err);
                if let Some(n) = self.failures.borrow_mut().hit(Instant::now()) {
                    log::error!(
                        "the store cannot commit: {err} ({n} failure(s) since the last such \
                         line; /readyz is 503 until a commit succeeds)"
                    );
                }
            }
        }
    }

    /// While the store fails, commits a one-row write now and then (after
    /// 1 s, doubling up to 30 s), so that it finds out by itself when it
    /// can commit again (7).
    fn probe(&mut self, probe: &mut Probe) {
        if self.shared.health.failure().is_none() {
            probe.failures = 0;
            probe.next = None;
            return;
        }
        let now = Instant::now();
        if probe.next.is_some_and(|next| now < next) {
            return;
        }
        match self.engine.probe() {
            Ok(()) => {
                probe.failures = 0;
                probe.next = None;
                self.note(None);
            }
            Err(err) => {
                probe.failures = probe.failures.saturating_add(1);
                probe.next = Some(now + probe.backoff.delay(probe.failures - 1));
                self.note(Some(err));
            }
        }
    }

    /// Updates counters and metrics for a committed command.
    fn account(&self, op: &Op, effect: &Effect) {
        let shared = &self.shared;
        let metrics = &shared.metrics;
        let backlog = |delta: i64| {
            let now = shared.backlog.fetch_add(delta, Ordering::SeqCst) + delta;
            metrics.backlog.set(now);
        };
        match (op, &effect.outcome) {
            (Op::Insert { scored: None, .. }, Outcome::Accepted) => {
                metrics.accepted.inc();
                backlog(1);
                // Work for the pipeline (the channel holds one wake-up:
                // the rest of a batch's find it taken).
                let _ = shared.work_added.try_send(());
            }
            (
                Op::Insert {
                    scored: Some(scored),
                    report,
                    ..
                },
                Outcome::Accepted,
            ) => {
                // Stored processed: no backlog, no work for the pipeline.
                metrics.accepted.inc();
                metrics.processed.inc();
                if effect.new_enrollment {
                    shared.enrollment.add(report.site_id.clone(), 1);
                }
                // The alerts raised, counted once: with the report that
                // stored them (as the pipeline does with a result).
                for (instrument, rule) in &scored.alert_labels {
                    metrics.alerts.with_label_values(&[instrument, rule]).inc();
                }
            }
            (Op::Complete { site_id, .. }, Outcome::Changed) => {
                metrics.processed.inc();
                backlog(-1);
                if effect.new_enrollment {
                    shared.enrollment.add(site_id.clone(), 1);
                }
            }
            (Op::Fail { .. }, Outcome::Changed) => {
                metrics.failed.inc();
                backlog(-1);
            }
            (Op::Retry { .. }, Outcome::Changed) => metrics.retried.inc(),
            (Op::Redrive { .. }, Outcome::Changed) => {
                metrics.redriven.inc();
                backlog(1);
                let _ = shared.work_added.try_send(());
            }
            (Op::Complete { .. } | Op::Retry { .. } | Op::Fail { .. }, Outcome::Unchanged) => {
                metrics.results_discarded.inc();
            }
            (Op::InsertMany { items }, Outcome::Many(_)) => {
                for (item, effect) in items.iter().zip(&effect.items) {
                    self.account(item, effect);
                }
            }
            (Op::Reap, Outcome::Rows(n)) => metrics.leases_reclaimed.inc_by(*n),
            (Op::Release, Outcome::Rows(n)) => metrics.claims_released.inc_by(*n),
            _ => {}
        }
    }
}

/// Whether `n` rows changed.
pub(super) fn changed(rows: usize) -> Outcome {
    if rows == 0 {
        Outcome::Unchanged
    } else {
        Outcome::Changed
    }
}
