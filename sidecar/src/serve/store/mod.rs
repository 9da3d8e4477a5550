//! The SQLite store: one writer thread (the `store` service) owns the write
//! connection and commits whatever is waiting in one transaction — many
//! inserts, results and retries — and the `store-sync` thread flushes the
//! WAL to disk (one fsync for one or more transactions) before it replies
//! to each caller (see [`Syncer`]). Readers open their own connections.
//!
//! The `reports` table is both the archive and the work queue: a report is
//! `queued` until a result (`processed`) or its last failed attempt
//! (`failed`) is committed, so a crash at any moment loses nothing, and
//! every update is conditional on `status = 'queued'`, so processing a
//! report twice (after a crash) stores it once.
//!
//! # What it owns, and who touches what
//!
//! - `store` (the service thread): the write connection, the command
//!   channel's receiving end, and every change to [`Live`]'s backlog and
//!   enrollment counters.
//! - `store-sync` (a [`quiesce::Consumer`]): the WAL file handle, and the
//!   calling of every [`Reply`].
//! - Callers (HTTP handlers, analysis workers, the scheduler) hold a
//!   [`StoreHandle`]: they send commands and wait on their reply, nothing
//!   else. Readers (GET handlers, the dispatcher, the scheduler's summary)
//!   use read-only connections of their own.
//!
//! # Invariants
//!
//! 1. Every write is made by the `store` thread, one transaction per batch
//!    of commands; a batch's accounting ([`Live`]'s backlog and counters)
//!    is done after its commit, in command order, before the next batch
//!    starts (the next batch's backlog check sees it).
//! 2. No reply tells of a commit before its WAL frames are on disk:
//!    `store-sync` flushes, then replies (or each commit flushes itself,
//!    `synchronous = FULL`, when the WAL file could not be opened).
//! 3. Every command gets exactly one reply: its outcome or its failure; a
//!    command dropped unanswered (the store stopped) drops its reply, which
//!    [`StoreHandle::call`] reports as "stopped".
//! 4. A report's status moves only `queued` → `processed` or `failed`,
//!    by updates conditional on `queued`: a second result for a report
//!    changes nothing (`Outcome::Unchanged`).
//! 5. At every batch boundary, [`Live::backlog`] is the number of `queued`
//!    rows: counted at start, +1 per accepted insert, −1 per report
//!    processed or failed.
//! 6. Replies run on `store-sync`, never on the writer, each under
//!    `catch_unwind`: one broken reply neither delays a commit nor keeps
//!    the other replies from being called (3).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};
use quiesce::{BoxError, Consumer, Counters, JobError, JobHandle, Panic, Service, ServiceContext};
use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, params};

use super::metrics::Metrics;
use super::report::Report;

/// Most commands in one transaction.
const MAX_BATCH: usize = 512;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS reports (
    report_id       TEXT PRIMARY KEY,
    patient_id      TEXT NOT NULL,
    site_id         TEXT NOT NULL,
    instrument      TEXT NOT NULL,
    submitted_at    TEXT NOT NULL,
    answers         TEXT NOT NULL,
    content_hash    TEXT NOT NULL,
    received_at     INTEGER NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('queued', 'processed', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    result          TEXT,
    alert           INTEGER,
    processed_at    INTEGER
);
CREATE INDEX IF NOT EXISTS reports_due ON reports (next_attempt_at) WHERE status = 'queued';
-- No index on received_at or processed_at: every index is written by every
-- commit, and only the scheduler's summary (once per interval) reads them.
DROP INDEX IF EXISTS reports_received;
DROP INDEX IF EXISTS reports_processed;
CREATE TABLE IF NOT EXISTS enrollment (
    site_id     TEXT NOT NULL,
    patient_id  TEXT NOT NULL,
    enrolled_at INTEGER NOT NULL,
    PRIMARY KEY (site_id, patient_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS summaries (
    id           INTEGER PRIMARY KEY,
    period_start INTEGER NOT NULL,
    period_end   INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    body         TEXT NOT NULL
);
PRAGMA user_version = 1;
";

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// Opens (creating if needed) the database for writing: WAL,
/// `synchronous = FULL` (each commit flushes itself), schema in place. The
/// store service then hands the flushing to its `store-sync` thread and
/// switches to `NORMAL` (see [`Syncer`]): as durable, fewer flushes.
///
/// # Errors
///
/// When the file cannot be opened or the schema applied.
pub fn open_writer(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        log::warn!("SQLite refused WAL mode (got {mode}); commits stay durable, readers may wait");
    }
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

/// Opens a read-only connection.
///
/// # Errors
///
/// When the file cannot be opened.
pub fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

/// What a writer command does.
#[derive(Debug)]
pub enum Op {
    /// Store a new report (or recognise a duplicate or a conflict).
    Insert {
        /// The report.
        report: Report,
        /// Its [`Report::content_hash`] (computed by the caller, off the
        /// writer thread).
        hash: String,
        /// Refuse a new report ([`Outcome::BacklogFull`]) when this many
        /// are queued; a duplicate is still recognised.
        max_backlog: i64,
    },
    /// Store a report's result and mark it processed.
    Complete {
        /// Which report.
        report_id: String,
        /// Its site, for enrollment.
        site_id: String,
        /// Its patient, for enrollment.
        patient_id: String,
        /// The result, as JSON.
        result: String,
        /// Whether it raised an alert.
        alert: bool,
        /// Attempts made, this one included.
        attempts: u32,
    },
    /// Record a failed attempt and when to try again.
    Retry {
        /// Which report.
        report_id: String,
        /// Attempts made.
        attempts: u32,
        /// The attempt's error.
        error: String,
        /// Not before this (ms since the epoch).
        next_at_ms: i64,
    },
    /// Mark a report failed for good.
    Fail {
        /// Which report.
        report_id: String,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        error: String,
    },
    /// Store a periodic summary.
    Summary {
        /// Its period, ms since the epoch.
        period_start: i64,
        /// End of the period (exclusive).
        period_end: i64,
        /// The summary, as JSON.
        body: String,
    },
}

/// How a command went, once committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A new report, now durable.
    Accepted,
    /// The same report again.
    Duplicate,
    /// Another report with the same id.
    Conflict,
    /// A new report, refused: the backlog is at its limit.
    BacklogFull,
    /// An update that changed a row.
    Done,
    /// An update that found nothing to change (already processed).
    Unchanged,
}

/// Called with the outcome once the command's transaction has committed
/// (or failed).
pub type Reply = Box<dyn FnOnce(Result<Outcome, String>) + Send + 'static>;

struct Command {
    op: Op,
    reply: Reply,
}

/// The store's live state, kept in memory and shared with the rest of the
/// sidecar: counters, the backlog, metrics, and the dispatcher's wake-up.
pub struct Live {
    /// Distinct patients per site, among processed reports.
    pub enrollment: Counters<String>,
    /// Reports queued (accepted, not yet processed or failed).
    pub backlog: AtomicI64,
    /// Metrics.
    pub metrics: Metrics,
    /// Wakes the dispatcher when new work is committed.
    pub work_added: Sender<()>,
}

/// A cheap handle to send commands to the store.
#[derive(Clone)]
pub struct StoreHandle {
    tx: Sender<Command>,
}

/// Why a store command got no reply.
#[derive(Debug)]
pub enum CallError {
    /// The store did not take or reply to the command before the deadline
    /// (busy, or stopped).
    Unavailable(&'static str),
    /// The transaction failed (e.g. disk full).
    Failed(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unavailable(why) => write!(f, "store unavailable: {why}"),
            CallError::Failed(err) => write!(f, "store failed: {err}"),
        }
    }
}

impl std::error::Error for CallError {}

impl StoreHandle {
    /// Sends `op` and waits (until `deadline`) for it to be committed.
    ///
    /// # Errors
    ///
    /// [`CallError`].
    pub fn call(&self, op: Op, deadline: Instant) -> Result<Outcome, CallError> {
        // The library's one-shot slot (a mutex and a condition variable)
        // rather than a channel: the wait is a commit (hundreds of
        // microseconds, an fsync), and a channel's receive spins and yields
        // first, which only burns CPU here. A command dropped without a reply
        // (the store stopped) drops the completer: `NotRun`.
        let (completer, reply) = JobHandle::pair();
        self.send(
            op,
            Box::new(move |outcome| completer.complete(outcome)),
            deadline,
        )?;
        match reply.join_deadline(deadline) {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(err)) => Err(CallError::Failed(err)),
            Err(JobError::Timeout) => Err(CallError::Unavailable("no reply in time")),
            Err(_) => Err(CallError::Unavailable("stopped")),
        }
    }

    /// Queues `op` (waiting until `deadline` for room) without waiting for
    /// its commit; `reply` gets the outcome once committed.
    ///
    /// # Errors
    ///
    /// [`CallError::Unavailable`] when the store did not take it in time;
    /// `reply` is then dropped uncalled.
    pub fn send(&self, op: Op, reply: Reply, deadline: Instant) -> Result<(), CallError> {
        self.tx
            .send_deadline(Command { op, reply }, deadline)
            .map_err(|e| match e {
                crossbeam_channel::SendTimeoutError::Timeout(_) => CallError::Unavailable("busy"),
                crossbeam_channel::SendTimeoutError::Disconnected(_) => {
                    CallError::Unavailable("stopped")
                }
            })
    }
}

/// A committed batch's replies, each with its outcome.
type Replies = Vec<(Reply, Result<Outcome, String>)>;

/// Makes commits durable and replies to their callers, on a thread of its own
/// (`store-sync`), so that the writer can run the next transaction while
/// the disk flushes the last one.
///
/// How it stays as durable as `synchronous = FULL`: the writer connection
/// runs with `synchronous = NORMAL`, so a commit writes its WAL frames
/// (into the OS page cache) without flushing them; this thread then calls
/// `fdatasync` on the WAL file — which flushes every frame written before
/// the call, whatever the file descriptor — and only then replies. One
/// flush covers every batch handed over meanwhile. SQLite itself still
/// flushes the WAL before a checkpoint copies it into the database, the
/// database after, and the WAL header when the WAL is reused; and a
/// process crash (SIGKILL) loses nothing in either mode: the frames are in
/// the page cache. No caller hears of a commit before it is on disk.
///
/// It also takes the wake-ups off the writer: waking thirty callers is
/// thirty system calls, which the writer would otherwise make between two
/// commits.
///
/// A reply that panics is logged and the others are still called: the
/// thread outlives it. If the thread dies anyway, [`Syncer::deliver`] fails
/// every reply it is given and [`Syncer::is_alive`] turns false, and the
/// store service stops with an error (the supervisor then shuts the
/// sidecar down, readiness false) rather than fail every commit as a
/// failure while it looks healthy.
struct Syncer {
    thread: Consumer<Replies>,
}

impl Syncer {
    /// `wal`: the WAL file to flush before replying (`None` when each
    /// commit flushes itself, `synchronous = FULL`).
    fn start(wal: Option<std::fs::File>, shared: Arc<Live>) -> std::io::Result<Syncer> {
        let thread = Consumer::unbounded("store-sync", move |rx| {
            while let Ok(first) = rx.recv() {
                let mut batches = vec![first];
                batches.extend(rx.try_iter());
                let flushed = match &wal {
                    None => Ok(()),
                    Some(wal) => {
                        let started = Instant::now();
                        let flushed = wal.sync_data();
                        shared
                            .metrics
                            .fsync_seconds
                            .observe(started.elapsed().as_secs_f64());
                        flushed.map_err(|e| {
                            log::error!("flushing the WAL to disk failed: {e}");
                            format!("flushing to disk failed: {e}")
                        })
                    }
                };
                // (2): flushed (or failed to) before any reply is called.
                for (reply, outcome) in batches.into_iter().flatten() {
                    let outcome = match &flushed {
                        Ok(()) => outcome,
                        Err(err) => Err(err.clone()),
                    };
                    give(reply, outcome);
                }
            }
        })?;
        Ok(Syncer { thread })
    }

    fn deliver(&self, replies: Replies) {
        if let Err(unsent) = self.thread.send(replies) {
            // The thread is gone: nothing is flushed, say so (2, 3).
            for (reply, _) in unsent.into_inner() {
                give(reply, Err("the store cannot flush to disk".to_string()));
            }
        }
    }

    /// `false` once the thread has ended while the store still runs.
    fn is_alive(&self) -> bool {
        !self.thread.is_finished()
    }

    /// Waits until every reply handed over is called.
    fn finish(self) {
        if let Err(err) = self.thread.finish() {
            log::error!("the store-sync thread failed: {err}");
        }
    }
}

/// Calls one reply, catching its panic: one caller's broken reply must not
/// leave the others uncalled.
fn give(reply: Reply, outcome: Result<Outcome, String>) {
    // (6)
    let called = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reply(outcome)));
    if let Err(payload) = called {
        log::error!(
            "a store reply panicked (its caller got no reply): {}",
            Panic::from_payload(payload).message()
        );
    }
}

/// Opens the WAL file of `db` for flushing and switches the writer to
/// `synchronous = NORMAL` (see [`Syncer`]); `None`, and `FULL` stays, when
/// the WAL file cannot be opened.
fn wal_for_flushing(conn: &Connection, db: &Path) -> Option<std::fs::File> {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    let wal = match std::fs::File::open(&name) {
        Ok(wal) => wal,
        Err(err) => {
            log::warn!(
                "cannot open {} ({err}): every commit flushes itself (slower)",
                PathBuf::from(name).display()
            );
            return None;
        }
    };
    match conn.execute_batch("PRAGMA synchronous = NORMAL;") {
        Ok(()) => Some(wal),
        Err(err) => {
            log::warn!("cannot set synchronous = NORMAL ({err}): every commit flushes itself");
            None
        }
    }
}

/// The writer service.
pub struct Store {
    path: PathBuf,
    rx: Receiver<Command>,
    shared: Arc<Live>,
}

/// A store service and the handle to reach it.
pub fn new(path: PathBuf, shared: Arc<Live>, capacity: usize) -> (Store, StoreHandle) {
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    (Store { path, rx, shared }, StoreHandle { tx })
}

impl Service for Store {
    fn name(&self) -> &str {
        "store"
    }

    fn run(&mut self, ctx: &ServiceContext) -> Result<(), BoxError> {
        let mut conn = open_writer(&self.path)
            .map_err(|e| format!("cannot open {}: {e}", self.path.display()))?;
        self.recover(&conn)?;
        let wal = wal_for_flushing(&conn, &self.path);
        let syncer = Syncer::start(wal, self.shared.clone())?;
        ctx.ready();
        loop {
            select! {
                recv(self.rx) -> cmd => match cmd {
                    Ok(cmd) => {
                        self.commit_batch(&mut conn, cmd, &syncer);
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
        // be waiting. Commit them, then fold the WAL into the database.
        while let Ok(cmd) = self.rx.try_recv() {
            self.commit_batch(&mut conn, cmd, &syncer);
        }
        syncer.finish();
        if let Err(err) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);") {
            log::warn!("final WAL checkpoint failed: {err}");
        }
        conn.close()
            .map_err(|(_, e)| format!("closing the database: {e}"))?;
        log::info!("store closed cleanly");
        Ok(())
    }
}

impl Store {
    /// Rebuilds the in-memory state from the database: the backlog and the
    /// enrollment counters.
    fn recover(&self, conn: &Connection) -> Result<(), BoxError> {
        let backlog: i64 = conn.query_row(
            "SELECT COUNT(*) FROM reports WHERE status = 'queued'",
            [],
            |r| r.get(0),
        )?;
        self.shared.backlog.store(backlog, Ordering::SeqCst);
        self.shared.metrics.backlog.set(backlog);
        let mut stmt = conn.prepare("SELECT site_id, COUNT(*) FROM enrollment GROUP BY site_id")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut sites = Vec::new();
        for row in rows {
            let (site, n) = row?;
            sites.push((site, u64::try_from(n).unwrap_or(0)));
        }
        self.shared.enrollment.add_all(sites);
        log::info!(
            "store open: {backlog} report(s) queued, {} patient(s) enrolled",
            self.shared.enrollment.total()
        );
        if backlog > 0 {
            let _ = self.shared.work_added.try_send(());
        }
        Ok(())
    }

    /// Commits `first` and whatever else is waiting, in one transaction.
    fn commit_batch(&self, conn: &mut Connection, first: Command, syncer: &Syncer) {
        let mut batch = vec![first];
        batch.extend(self.rx.try_iter().take(MAX_BATCH - 1));
        let started = Instant::now();
        // The backlog as this transaction sees it (its own inserts count; (5)).
        let mut backlog = self.shared.backlog.load(Ordering::SeqCst);
        let applied = match conn.transaction() {
            Ok(tx) => {
                let results: Vec<Result<Effect, String>> = batch
                    .iter()
                    .map(|c| apply(&tx, &c.op, &mut backlog))
                    .collect();
                tx.commit().map(|()| results).map_err(|e| e.to_string())
            }
            Err(err) => Err(err.to_string()),
        };
        let metrics = &self.shared.metrics;
        metrics.commit_batch.observe(batch.len() as f64);
        metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        let replies: Replies = match applied {
            Ok(results) => {
                let mut woke = false;
                batch
                    .into_iter()
                    .zip(results)
                    .map(|(cmd, result)| {
                        let outcome = result.map(|effect| {
                            if effect.outcome == Outcome::Accepted && !woke {
                                woke = true;
                                let _ = self.shared.work_added.try_send(());
                            }
                            // Here, before the next batch reads the backlog (1).
                            self.account(&cmd.op, &effect);
                            effect.outcome
                        });
                        (cmd.reply, outcome)
                    })
                    .collect()
            }
            Err(err) => {
                log::error!("store commit of {} command(s) failed: {err}", batch.len());
                batch
                    .into_iter()
                    .map(|cmd| (cmd.reply, Err(err.clone())))
                    .collect()
            }
        };
        syncer.deliver(replies);
    }

    /// Updates counters and metrics for a committed command.
    fn account(&self, op: &Op, effect: &Effect) {
        let shared = &self.shared;
        let metrics = &shared.metrics;
        let backlog = |delta: i64| {
            let now = shared.backlog.fetch_add(delta, Ordering::SeqCst) + delta;
            metrics.backlog.set(now);
        };
        match (op, effect.outcome) {
            (Op::Insert { .. }, Outcome::Accepted) => {
                metrics.accepted.inc();
                backlog(1);
            }
            (Op::Complete { site_id, .. }, Outcome::Done) => {
                metrics.processed.inc();
                backlog(-1);
                if effect.new_enrollment {
                    shared.enrollment.add(site_id.clone(), 1);
                }
            }
            (Op::Fail { .. }, Outcome::Done) => {
                metrics.failed.inc();
                backlog(-1);
            }
            (Op::Retry { .. }, Outcome::Done) => metrics.retried.inc(),
            _ => {}
        }
    }
}

struct Effect {
    outcome: Outcome,
    new_enrollment: bool,
}

impl From<Outcome> for Effect {
    fn from(outcome: Outcome) -> Effect {
        Effect {
            outcome,
            new_enrollment: false,
        }
    }
}

fn changed(rows: usize) -> Outcome {
    if rows == 0 {
        Outcome::Unchanged
    } else {
        Outcome::Done
    }
}

fn apply(tx: &Transaction<'_>, op: &Op, backlog: &mut i64) -> Result<Effect, String> {
    apply_sql(tx, op, backlog).map_err(|e| e.to_string())
}

fn apply_sql(tx: &Transaction<'_>, op: &Op, backlog: &mut i64) -> rusqlite::Result<Effect> {
    match op {
        Op::Insert {
            report,
            hash,
            max_backlog,
        } => {
            // A retry of the same report, or another one with its id?
            let seen = |tx: &Transaction<'_>| -> rusqlite::Result<Option<Outcome>> {
                let existing: Option<String> = tx
                    .prepare_cached("SELECT content_hash FROM reports WHERE report_id = ?1")?
                    .query_row([&report.report_id], |r| r.get(0))
                    .optional()?;
                Ok(existing.map(|e| {
                    if e == *hash {
                        Outcome::Duplicate
                    } else {
                        Outcome::Conflict
                    }
                }))
            };
            if *backlog >= *max_backlog {
                return Ok(seen(tx)?.unwrap_or(Outcome::BacklogFull).into());
            }
            // Usually a new report: insert first, look only if the id is
            // taken (one lookup saved per new report).
            let answers = serde_json::to_string(&report.answers).expect("answers serialise");
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO reports (report_id, patient_id, site_id, instrument, submitted_at, answers,
                                          content_hash, received_at, status)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'queued')
                     ON CONFLICT (report_id) DO NOTHING",
                )?
                .execute(params![
                    report.report_id,
                    report.patient_id,
                    report.site_id,
                    report.instrument,
                    report.submitted_at,
                    answers,
                    hash,
                    now_ms()
                ])?;
            if inserted == 0 {
                return Ok(seen(tx)?.unwrap_or(Outcome::Conflict).into());
            }
            *backlog += 1;
            Ok(Outcome::Accepted.into())
        }
        Op::Complete {
            report_id,
            site_id,
            patient_id,
            result,
            alert,
            attempts,
        } => {
            // (4): every update below is conditional on `queued`.
            let now = now_ms();
            let rows = tx
                .prepare_cached(
                    "UPDATE reports SET status = 'processed', result = ?2, alert = ?3, attempts = ?4,
                                        processed_at = ?5, last_error = NULL
                     WHERE report_id = ?1 AND status = 'queued'",
                )?
                .execute(params![report_id, result, alert, attempts, now])?;
            let mut effect = Effect::from(changed(rows));
            if rows > 0 {
                let enrolled = tx
                    .prepare_cached(
                        "INSERT OR IGNORE INTO enrollment (site_id, patient_id, enrolled_at) VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![site_id, patient_id, now])?;
                effect.new_enrollment = enrolled > 0;
            }
            Ok(effect)
        }
        Op::Retry {
            report_id,
            attempts,
            error,
            next_at_ms,
        } => {
            let rows = tx
                .prepare_cached(
                    "UPDATE reports SET attempts = ?2, last_error = ?3, next_attempt_at = ?4
                     WHERE report_id = ?1 AND status = 'queued'",
                )?
                .execute(params![report_id, attempts, error, next_at_ms])?;
            Ok(changed(rows).into())
        }
        Op::Fail {
            report_id,
            attempts,
            error,
        } => {
            let rows = tx
                .prepare_cached(
                    "UPDATE reports SET status = 'failed', attempts = ?2, last_error = ?3, processed_at = ?4
                     WHERE report_id = ?1 AND status = 'queued'",
                )?
                .execute(params![report_id, attempts, error, now_ms()])?;
            Ok(changed(rows).into())
        }
        Op::Summary {
            period_start,
            period_end,
            body,
        } => {
            tx.prepare_cached(
                "INSERT INTO summaries (period_start, period_end, created_at, body) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![period_start, period_end, now_ms(), body])?;
            Ok(Outcome::Done.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Arc<Live> {
        Arc::new(Live {
            enrollment: Counters::new(),
            backlog: AtomicI64::new(0),
            metrics: Metrics::new(),
            work_added: crossbeam_channel::unbounded().0,
        })
    }

    #[test]
    fn a_panicking_reply_leaves_the_sync_thread_replying_to_the_others() {
        let syncer = Syncer::start(None, shared()).unwrap();
        let (got_tx, got_rx) = crossbeam_channel::unbounded();
        let (after_tx, after_rx) = crossbeam_channel::unbounded();
        let panicking: Reply = Box::new(|_| panic!("broken reply"));
        let replied: Reply = Box::new(move |outcome| got_tx.send(outcome).unwrap());
        syncer.deliver(vec![
            (panicking, Ok(Outcome::Accepted)),
            (replied, Ok(Outcome::Duplicate)),
        ]);
        // A later batch still gets its reply: the thread lived on.
        let later: Reply = Box::new(move |outcome| after_tx.send(outcome).unwrap());
        syncer.deliver(vec![(later, Err("disk full".to_string()))]);
        let wait = Duration::from_secs(30);
        assert_eq!(got_rx.recv_timeout(wait), Ok(Ok(Outcome::Duplicate)));
        assert_eq!(
            after_rx.recv_timeout(wait),
            Ok(Err("disk full".to_string()))
        );
        assert!(syncer.is_alive());
        syncer.finish();
    }

    #[test]
    fn a_call_whose_command_is_dropped_without_a_reply_is_told_the_store_stopped() {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let handle = StoreHandle { tx };
        let dropper = std::thread::spawn(move || drop(rx.recv()));
        let op = Op::Retry {
            report_id: "r".into(),
            attempts: 1,
            error: "e".into(),
            next_at_ms: 0,
        };
        let got = handle.call(op, Instant::now() + Duration::from_secs(30));
        assert!(
            matches!(got, Err(CallError::Unavailable("stopped"))),
            "{got:?}"
        );
        dropper.join().unwrap();
    }
}
