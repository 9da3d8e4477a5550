//! The SQLite side of the store: the schema, the connections, and the
//! writer service ([`Store`]) that applies commands in batches (invariants
//! 1, 4 and 5 of the [store](super)).

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, select, tick};
use quiesce::{Backoff, BoxError, Service, ServiceContext};
use rusqlite::{
    Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior, params,
};

use super::sync::{Replies, Syncer};
use super::{Command, Failure, LOG_EVERY, Live, Op, Outcome, StoreHandle, Throttle, now_ms};

/// Most commands in one transaction.
const MAX_BATCH: usize = 512;

/// How often the writer looks whether a failing store should be probed.
const PROBE_TICK: Duration = Duration::from_millis(250);

/// While the store fails, when to try a commit of its own (7): with no
/// work and no traffic (a load balancer stops sending to an unready
/// sidecar), nothing else would find out that it can commit again.
struct Probe {
    backoff: Backoff,
    failures: u32,
    next: Option<Instant>,
}

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
-- One row, rewritten by the writer while the store is failing, to find
-- out when it can commit again (see `Store::probe`).
CREATE TABLE IF NOT EXISTS probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at INTEGER NOT NULL
);
PRAGMA user_version = 1;
";

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
    /// Failed commits, logged once per interval (7).
    failures: RefCell<Throttle>,
}

/// A store service and the handle to reach it.
pub fn new(path: PathBuf, shared: Arc<Live>, capacity: usize) -> (Store, StoreHandle) {
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    let failures = RefCell::new(Throttle::new(LOG_EVERY));
    (
        Store {
            path,
            rx,
            shared,
            failures,
        },
        StoreHandle { tx },
    )
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
        let ticker = tick(PROBE_TICK);
        let mut probe = Probe {
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(30)),
            failures: 0,
            next: None,
        };
        loop {
            select! {
                recv(ticker) -> _ => self.probe(&mut conn, &mut probe),
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
        // (7): a statement refused for a reason of the store's own (locked
        // by another process, corrupt, no room), not of the command's.
        let mut fault: Option<String> = None;
        let applied = match conn.transaction() {
            Ok(tx) => {
                let results: Vec<Result<Effect, String>> = batch
                    .iter()
                    .map(|c| {
                        if let Some(err) = &fault {
                            // The store cannot write: the rest of the batch
                            // is not tried (each statement would wait out
                            // the busy timeout again, past its caller's
                            // deadline).
                            return Err(format!("not attempted: {err}"));
                        }
                        apply_sql(&tx, &c.op, &mut backlog).map_err(|e| {
                            if store_fault(&e) {
                                fault = Some(e.to_string());
                            }
                            e.to_string()
                        })
                    })
                    .collect();
                tx.commit().map(|()| results).map_err(commit_failure)
            }
            Err(err) => Err(Failure::NotStored(err.to_string())),
        };
        let metrics = &self.shared.metrics;
        metrics.commit_batch.observe(batch.len() as f64);
        metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        // (7): the store is failing when its commit failed, or a statement
        // was refused for a reason of its own.
        let fault = match &applied {
            Err(failure) => Some(failure.error().to_string()),
            Ok(_) => fault,
        };
        self.note(fault);
        let replies: Replies = match applied {
            Ok(results) => {
                let mut woke = false;
                batch
                    .into_iter()
                    .zip(results)
                    .map(|(cmd, result)| {
                        let outcome = result.map_err(Failure::NotStored).map(|effect| {
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
    fn probe(&self, conn: &mut Connection, probe: &mut Probe) {
        if self.shared.health.failure().is_none() {
            probe.failures = 0;
            probe.next = None;
            return;
        }
        let now = Instant::now();
        if probe.next.is_some_and(|next| now < next) {
            return;
        }
        let written = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .and_then(|tx| {
                tx.execute(
                    "INSERT OR REPLACE INTO probe (id, at) VALUES (1, ?1)",
                    [now_ms()],
                )?;
                tx.commit()
            });
        match written {
            Ok(()) => {
                probe.failures = 0;
                probe.next = None;
                self.note(None);
            }
            Err(err) => {
                probe.failures = probe.failures.saturating_add(1);
                probe.next = Some(now + probe.backoff.delay(probe.failures - 1));
                self.note(Some(err.to_string()));
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
        match (op, effect.outcome) {
            (Op::Insert { .. }, Outcome::Accepted) => {
                metrics.accepted.inc();
                backlog(1);
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
            _ => {}
        }
    }
}

/// What a failed COMMIT means for the batch (8): not stored when SQLite
/// found no room (the commit frame, written last, was not written, and
/// the transaction is rolled back); otherwise unknown (a failed sync may
/// leave a whole transaction in the WAL, a busy COMMIT leaves it open).
fn commit_failure(err: rusqlite::Error) -> Failure {
    match err.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => Failure::NotStored(err.to_string()),
        _ => Failure::Unknown(err.to_string()),
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
        Outcome::Changed
    }
}

/// Whether a statement failed for a reason of the store's own (it cannot
/// write: locked by another process, corrupt, no room, I/O), which no
/// command of any batch would escape.
fn store_fault(err: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode as E;
    matches!(
        err.sqlite_error_code(),
        Some(
            E::DatabaseBusy
                | E::DatabaseLocked
                | E::DiskFull
                | E::SystemIoFailure
                | E::DatabaseCorrupt
                | E::NotADatabase
                | E::ReadOnly
                | E::CannotOpen
                | E::OutOfMemory
                | E::FileLockingProtocolFailed
        )
    )
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
            Ok(Outcome::Changed.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::ffi;

    use super::*;

    fn sqlite_error(code: std::ffi::c_int) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(ffi::Error::new(code), None)
    }

    #[test]
    fn a_commit_refused_for_want_of_room_is_not_stored_any_other_failure_unknown() {
        assert!(matches!(
            commit_failure(sqlite_error(ffi::SQLITE_FULL)),
            Failure::NotStored(_)
        ));
        for code in [
            ffi::SQLITE_BUSY,
            ffi::SQLITE_IOERR,
            ffi::SQLITE_IOERR_FSYNC,
            ffi::SQLITE_CORRUPT,
        ] {
            let failure = commit_failure(sqlite_error(code));
            assert!(
                matches!(failure, Failure::Unknown(_)),
                "{code}: {failure:?}"
            );
        }
    }

    #[test]
    fn a_statement_failing_for_the_store_s_own_reason_is_a_store_fault() {
        for code in [
            ffi::SQLITE_BUSY,
            ffi::SQLITE_FULL,
            ffi::SQLITE_CORRUPT,
            ffi::SQLITE_IOERR_WRITE,
        ] {
            assert!(store_fault(&sqlite_error(code)), "{code}");
        }
        assert!(!store_fault(&sqlite_error(ffi::SQLITE_CONSTRAINT)));
        assert!(!store_fault(&rusqlite::Error::QueryReturnedNoRows));
    }

    #[test]
    fn while_another_process_holds_the_lock_a_batch_tries_once_and_marks_the_store_failing() {
        use std::sync::atomic::AtomicI64;

        use quiesce::Counters;

        use crate::serve::metrics::Metrics;
        use crate::serve::report::Report;

        let dir = std::env::temp_dir().join(format!(
            "quiesce-store-locked-{}-{}",
            std::process::id(),
            now_ms()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("quiesce.db");
        let shared = Arc::new(Live {
            enrollment: Counters::new(),
            backlog: AtomicI64::new(0),
            metrics: Metrics::new(),
            work_added: crossbeam_channel::unbounded().0,
            health: Default::default(),
        });
        let (store, handle) = new(path.clone(), shared.clone(), 16);
        let mut conn = open_writer(&path).unwrap();
        conn.busy_timeout(Duration::from_millis(50)).unwrap();
        let holder = Connection::open(&path).unwrap();
        holder.execute_batch("BEGIN IMMEDIATE").unwrap();
        let syncer = Syncer::start(None, shared.clone()).unwrap();
        let (got_tx, got_rx) = crossbeam_channel::unbounded();
        for id in ["a", "b", "c"] {
            let report = Report {
                report_id: id.to_string(),
                patient_id: "p".into(),
                site_id: "S".into(),
                instrument: "i".into(),
                submitted_at: "2025-06-01T09:30:00Z".into(),
                answers: [("q1".to_string(), 1)].into(),
            };
            let op = Op::Insert {
                report,
                hash: id.to_string(),
                max_backlog: 100,
            };
            let tx = got_tx.clone();
            let reply: super::super::Reply = Box::new(move |outcome| tx.send(outcome).unwrap());
            handle
                .send(op, reply, Instant::now() + Duration::from_secs(5))
                .unwrap();
        }
        let first = store.rx.recv().unwrap();
        store.commit_batch(&mut conn, first, &syncer);
        let wait = Duration::from_secs(30);
        let got: Vec<_> = (0..3).map(|_| got_rx.recv_timeout(wait).unwrap()).collect();
        assert!(
            matches!(&got[0], Err(Failure::NotStored(e)) if e.contains("locked")),
            "{got:?}"
        );
        for later in &got[1..] {
            assert!(
                matches!(later, Err(Failure::NotStored(e)) if e.starts_with("not attempted")),
                "{got:?}"
            );
        }
        assert!(
            shared
                .health
                .failure()
                .is_some_and(|e| e.contains("locked"))
        );
        // The lock released, the next batch stores and the store recovers.
        holder.execute_batch("ROLLBACK").unwrap();
        let op = Op::Summary {
            period_start: 0,
            period_end: 1,
            body: "{}".into(),
        };
        let tx = got_tx.clone();
        let reply: super::super::Reply = Box::new(move |outcome| tx.send(outcome).unwrap());
        handle
            .send(op, reply, Instant::now() + Duration::from_secs(5))
            .unwrap();
        let next = store.rx.recv().unwrap();
        store.commit_batch(&mut conn, next, &syncer);
        assert_eq!(got_rx.recv_timeout(wait).unwrap(), Ok(Outcome::Changed));
        assert_eq!(shared.health.failure(), None);
        assert_eq!(shared.health.recoveries(), 1);
        syncer.finish();
        drop(conn);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
