//! The SQLite backend: the schema and its migrations, the writer's
//! [`Engine`](super::writer::Engine) (one transaction of commands on the
//! write connection; invariants 4 and 5 of the [store](super)), and the
//! read-only connections.
//!
//! One process per database (the data directory's lock): its claims need
//! no `SKIP LOCKED`, and whatever an earlier process had claimed when it
//! died is released when the store opens.

use std::path::{Path, PathBuf};
use std::time::Duration;

use quiesce::BoxError;
use rusqlite::{
    Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior, params,
};

use super::writer::{Applied, Counts, Effect, changed};
use super::{AuditEntry, Claimed, Claiming, Enrolled, Failure, Op, Outcome, audit_rows, now_ms};

/// The schema, one migration per version (`PRAGMA user_version`); each is
/// applied in a transaction of its own, with the version it brings.
const MIGRATIONS: &[(i64, Migration)] = &[
    (
        1,
        Migration::Sql(
            "
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
-- out when it can commit again (see `Engine::probe`).
CREATE TABLE IF NOT EXISTS probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at INTEGER NOT NULL
);
",
        ),
    ),
    (
        2,
        Migration::Sql(
            "
-- A failed report was never processed.
UPDATE reports SET processed_at = NULL WHERE status = 'failed';
-- Claims: which replica works on a queued report, and until when.
ALTER TABLE reports ADD COLUMN claimed_by TEXT;
ALTER TABLE reports ADD COLUMN lease_until INTEGER;
-- Only the claimed rows (a few per worker): cheap to keep, and what the
-- heartbeat, the reaper and the release look up.
CREATE INDEX reports_claimed ON reports (claimed_by) WHERE claimed_by IS NOT NULL;
",
        ),
    ),
    (
        3,
        Migration::Sql(
            "
-- The audit trail: append-only (the triggers refuse any change), written
-- in the transaction of the change it records. No answers, no patient ids.
CREATE TABLE audit (
    id          INTEGER PRIMARY KEY,
    at          INTEGER NOT NULL,
    action      TEXT NOT NULL,
    caller      TEXT,
    remote      TEXT,
    request_id  TEXT,
    report_id   TEXT,
    body_sha256 TEXT,
    outcome     TEXT,
    detail      TEXT
);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
",
        ),
    ),
    (
        4,
        Migration::Sql(
            "
-- The resource as a FHIR client sent it, verbatim, beside the report.
ALTER TABLE reports ADD COLUMN raw TEXT;
",
        ),
    ),
    (
        5,
        Migration::Sql(
            "
-- Reports whose answers raise an alert are claimed first (their own lane,
-- their own small index), not queued behind a backlog of routine ones.
ALTER TABLE reports ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
CREATE INDEX reports_urgent ON reports (next_attempt_at) WHERE status = 'queued' AND priority > 0;
",
        ),
    ),
    (6, Migration::Code(status_check_as_comparisons)),
];

/// The newest schema version this binary knows.
pub(super) const SCHEMA_VERSION: i64 = 6;

/// One step of the schema.
enum Migration {
    /// Statements, run as one batch.
    Sql(&'static str),
    /// A change SQL cannot make, in the step's transaction.
    Code(fn(&Transaction<'_>) -> Result<(), BoxError>),
}

/// `reports.status`'s CHECK as written by version 1, and as version 6
/// writes it: the same rows pass both.
const STATUS_CHECK_AS_IN_LIST: &str = "CHECK (status IN ('queued', 'processed', 'failed'))";
const STATUS_CHECK_AS_COMPARISONS: &str =
    "CHECK (status = 'queued' OR status = 'processed' OR status = 'failed')";

/// Version 6: `reports.status`'s CHECK as three comparisons instead of an
/// `IN` list.
///
/// SQLite looks an `IN` list of more than two values up in a temporary
/// B-tree, which it built, filled and freed on every insert into `reports`
/// (and on every update that sets `status`): a pager opened and closed per
/// report, 6% of the `store` thread's time in a profile under load.
/// Comparisons cost nothing of the kind.
///
/// No data depends on a CHECK, and the two accept the same rows, so the
/// table's definition is edited in place, by the procedure SQLite documents
/// for changes that leave the file's content as it is
/// (<https://sqlite.org/lang_altertable.html#otheralter>): the schema row
/// rewritten under `writable_schema`, the schema cookie moved on so every
/// connection reads it again. No copy of the table, whatever its size.
/// A database whose CHECK is not the one version 1 wrote is left as it is.
///
/// # Errors
///
/// When a statement fails, or the edited schema does not read back: the
/// step's transaction is then rolled back and the store does not open.
fn status_check_as_comparisons(tx: &Transaction<'_>) -> Result<(), BoxError> {
    let cookie: i64 = tx.query_row("PRAGMA schema_version", [], |r| r.get(0))?;
    tx.execute_batch("PRAGMA writable_schema = ON")?;
    let edited = tx
        .execute(
            "UPDATE sqlite_schema SET sql = replace(sql, ?1, ?2)
             WHERE type = 'table' AND name = 'reports' AND instr(sql, ?1) > 0",
            [STATUS_CHECK_AS_IN_LIST, STATUS_CHECK_AS_COMPARISONS],
        )
        .and_then(|edited| {
            tx.pragma_update(None, "schema_version", cookie + 1)?;
            Ok(edited)
        });
    // A connection setting, not part of the transaction: off whatever
    // happened above.
    tx.execute_batch("PRAGMA writable_schema = OFF")?;
    if edited? == 0 {
        log::warn!(
            "reports.status's CHECK is not the one quiesce wrote; left as it is \
             (inserts build a temporary B-tree to check it)"
        );
        return Ok(());
    }
    // Read back in this transaction: a definition that did not parse is
    // an error here, rolled back, not a database that cannot be opened.
    let sql: String = tx.query_row(
        "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = 'reports'",
        [],
        |r| r.get(0),
    )?;
    tx.prepare("SELECT status FROM reports LIMIT 0")?;
    if !sql.contains(STATUS_CHECK_AS_COMPARISONS) {
        return Err("reports.status's CHECK did not read back as written".into());
    }
    Ok(())
}

/// Brings the schema of `conn` to [`SCHEMA_VERSION`].
///
/// # Errors
///
/// When a migration fails, or the database is newer than this binary.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), BoxError> {
    migrate_to(conn, path, SCHEMA_VERSION)
}

/// Brings the schema of `conn` to version `target` (tests stop short of
/// the newest to check a migration).
fn migrate_to(conn: &mut Connection, path: &Path, target: i64) -> Result<(), BoxError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(format!(
            "{} has schema version {version}, newer than this quiesce knows ({SCHEMA_VERSION}): \
             it was written by a newer release; run that release (or newer) on it",
            path.display()
        )
        .into());
    }
    for (to, step) in MIGRATIONS
        .iter()
        .filter(|(v, _)| *v > version && *v <= target)
    {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let done = match step {
            Migration::Sql(sql) => tx.execute_batch(sql).map_err(BoxError::from),
            Migration::Code(change) => change(&tx),
        };
        done.map_err(|e| format!("schema migration to version {to} failed: {e}"))?;
        tx.pragma_update(None, "user_version", to)?;
        tx.commit()?;
        if version > 0 {
            log::info!("{}: schema migrated to version {to}", path.display());
        }
    }
    Ok(())
}

/// Opens (creating if needed) the database for writing: WAL,
/// `synchronous = FULL` (each commit flushes itself), schema in place. The
/// writer then hands the flushing to its `store-sync` thread and switches
/// to `NORMAL` (see [`Syncer`](super::sync::Syncer)): as durable, fewer
/// flushes.
///
/// # Errors
///
/// When the file cannot be opened or the schema applied.
pub fn open_writer(path: &Path) -> Result<Connection, BoxError> {
    let mut conn = match super::walbuf::register() {
        Ok(vfs) => Connection::open_with_flags_and_vfs(path, OpenFlags::default(), vfs)?,
        Err(err) => {
            log::warn!("{err}: the WAL is written frame by frame (slower)");
            Connection::open(path)?
        }
    };
    conn.busy_timeout(Duration::from_secs(5))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        log::warn!("SQLite refused WAL mode (got {mode}); commits stay durable, readers may wait");
    }
    // secure_delete: freed pages are zeroed, so deleted patient data does
    // not linger in the file.
    conn.execute_batch(
        "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA secure_delete = ON;",
    )?;
    migrate(&mut conn, path)?;
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
/// `synchronous = NORMAL` (see [`Syncer`](super::sync::Syncer)); `None`,
/// and `FULL` stays, when the WAL file cannot be opened.
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

/// The SQLite engine: the write connection, once open.
pub(super) struct Engine {
    path: PathBuf,
    claiming: Claiming,
    conn: Option<Connection>,
    enrolled: Enrolled,
}

impl Engine {
    pub(super) fn new(path: PathBuf, claiming: Claiming) -> Engine {
        Engine {
            path,
            claiming,
            conn: None,
            enrolled: Enrolled::default(),
        }
    }

    fn conn(&mut self) -> &mut Connection {
        self.conn.as_mut().expect("the store is open")
    }
}

impl super::writer::Engine for Engine {
    fn open(&mut self) -> Result<Counts, BoxError> {
        let conn = open_writer(&self.path)
            .map_err(|e| format!("cannot open {}: {e}", self.path.display()))?;
        // This process holds the data directory's lock: claims left by an
        // earlier one (it died) are nobody's now.
        let released = conn.execute(
            "UPDATE reports SET claimed_by = NULL, lease_until = NULL WHERE claimed_by IS NOT NULL",
            [],
        )?;
        if released > 0 {
            log::info!("{released} report(s) claimed by an earlier run returned to the queue");
        }
        let backlog: i64 = conn.query_row(
            "SELECT COUNT(*) FROM reports WHERE status = 'queued'",
            [],
            |r| r.get(0),
        )?;
        let mut stmt = conn.prepare("SELECT site_id, COUNT(*) FROM enrollment GROUP BY site_id")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut sites = Vec::new();
        for row in rows {
            let (site, n) = row?;
            sites.push((site, u64::try_from(n).unwrap_or(0)));
        }
        drop(stmt);
        self.conn = Some(conn);
        Ok(Counts { backlog, sites })
    }

    fn flush_file(&mut self) -> Option<std::fs::File> {
        let path = self.path.clone();
        wal_for_flushing(self.conn(), &path)
    }

    fn apply(&mut self, ops: &[&Op], mut backlog: i64) -> Applied {
        let claiming = self.claiming.clone();
        // (7): a statement refused for a reason of the store's own (locked
        // by another process, corrupt, no room), not of the command's.
        let mut fault: Option<String> = None;
        // The audit rows of the commands that succeeded, written after
        // them: all of them, or the batch is not committed.
        let mut rows: Vec<AuditEntry<'_>> = Vec::new();
        // A command that failed after some of its statements had changed
        // rows (a report inserted, then its enrollment refused).
        let mut midway: Option<String> = None;
        // The connection and the known enrollments, borrowed apart.
        let enrolled = &mut self.enrolled;
        let conn = self.conn.as_mut().expect("the store is open");
        let results = match conn.transaction() {
            Ok(tx) => {
                let results: Vec<Result<Effect, String>> = ops
                    .iter()
                    .map(|op| {
                        if let Some(err) = fault.as_ref().or(midway.as_ref()) {
                            // The store cannot write, or the batch will be
                            // rolled back: the rest of it is not tried
                            // (after a store fault each statement would
                            // wait out the busy timeout again, past its
                            // caller's deadline).
                            return Err(format!("not attempted: {err}"));
                        }
                        // (A failed statement undoes its own changes and
                        // counts none.)
                        let changes = tx.total_changes();
                        apply_sql(&tx, op, &mut backlog, &claiming, enrolled)
                            .inspect(|effect| {
                                rows.extend(audit_rows(op, &effect.outcome, &claiming.replica));
                            })
                            .map_err(|e| {
                                if store_fault(&e) {
                                    fault = Some(e.to_string());
                                }
                                if tx.total_changes() != changes && midway.is_none() {
                                    midway = Some(e.to_string());
                                }
                                e.to_string()
                            })
                    })
                    .collect();
                // A change is never committed without its audit rows: when
                // they cannot be written, or a failed command left changes
                // of its own (which have none), nothing of the batch is (the
                // transaction is rolled back as it drops), and every
                // command is told so.
                if let Some(err) = midway {
                    Err(Failure::NotStored(format!(
                        "a command failed midway, so none of its batch was kept: {err}"
                    )))
                } else {
                    match insert_audit(&tx, &rows) {
                        Ok(()) => tx.commit().map(|()| results).map_err(commit_failure),
                        Err(err) => Err(Failure::NotStored(format!(
                            "cannot write the audit trail: {err}"
                        ))),
                    }
                }
            }
            Err(err) => Err(Failure::NotStored(err.to_string())),
        };
        enrolled.ended(results.is_ok());
        Applied { results, fault }
    }

    fn probe(&mut self) -> Result<(), String> {
        self.conn()
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .and_then(|tx| {
                tx.execute(
                    "INSERT OR REPLACE INTO probe (id, at) VALUES (1, ?1)",
                    [now_ms()],
                )?;
                tx.commit()
            })
            .map_err(|e| e.to_string())
    }

    fn refresh(&mut self) -> Option<Result<Counts, String>> {
        // The only writer: the counts in memory are exact (5).
        None
    }

    fn close(&mut self) -> Result<(), String> {
        let Some(conn) = self.conn.take() else {
            return Ok(());
        };
        // Fold the WAL into the database.
        if let Err(err) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);") {
            log::warn!("final WAL checkpoint failed: {err}");
        }
        conn.close()
            .map_err(|(_, e)| format!("closing the database: {e}"))
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

/// Appends `rows` to the audit trail, in order, all at the same moment
/// (one transaction).
fn insert_audit(tx: &Transaction<'_>, rows: &[AuditEntry<'_>]) -> rusqlite::Result<()> {
    let at = now_ms();
    let mut stmt = tx.prepare_cached(
        "INSERT INTO audit (at, action, caller, remote, request_id, report_id, body_sha256, outcome, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    for row in rows {
        stmt.execute(params![
            at,
            row.action,
            row.caller,
            row.remote,
            row.request_id,
            row.report_id,
            row.body_sha256,
            row.outcome,
            row.detail
        ])?;
    }
    Ok(())
}

/// Enrolls `patient_id` at `site_id`: whether it is the first time. A
/// pair `known` to be enrolled runs no statement.
fn enroll(
    tx: &Transaction<'_>,
    known: &mut Enrolled,
    site_id: &str,
    patient_id: &str,
    now: i64,
) -> rusqlite::Result<bool> {
    let key = known.key(site_id, patient_id);
    if known.known(key) {
        return Ok(false);
    }
    let enrolled = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO enrollment (site_id, patient_id, enrolled_at) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![site_id, patient_id, now])?;
    known.note(key);
    Ok(enrolled > 0)
}

/// Milliseconds as SQLite stores them.
fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A new report, queued for the pipeline.
const INSERT_QUEUED: &str =
    "INSERT INTO reports (report_id, patient_id, site_id, instrument, submitted_at, answers,
                          content_hash, received_at, status, raw, priority)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'queued', ?9, ?10)
     ON CONFLICT (report_id) DO NOTHING";

/// A new report scored at intake: stored processed, its first attempt.
const INSERT_SCORED: &str =
    "INSERT INTO reports (report_id, patient_id, site_id, instrument, submitted_at, answers,
                          content_hash, received_at, status, raw, priority,
                          result, alert, attempts, processed_at)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'processed', ?9, ?10, ?11, ?12, 1, ?8)
     ON CONFLICT (report_id) DO NOTHING";

fn apply_sql(
    tx: &Transaction<'_>,
    op: &Op,
    backlog: &mut i64,
    claiming: &Claiming,
    enrolled: &mut Enrolled,
) -> rusqlite::Result<Effect> {
    let me = claiming.replica.as_str();
    match op {
        Op::InsertMany { items } => {
            let mut effects = Vec::with_capacity(items.len());
            for item in items {
                // Its audit rows are written with the batch's (see `apply`).
                effects.push(apply_sql(tx, item, backlog, claiming, enrolled)?);
            }
            Ok(Effect::many(effects))
        }
        Op::Insert {
            report,
            hash,
            max_backlog,
            raw,
            urgent,
            scored,
            ..
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
            let now = now_ms();
            let urgent = i64::from(*urgent);
            let (result, alert) = scored
                .as_ref()
                .map_or((None, None), |s| (Some(&s.result), Some(s.alert)));
            let values: [&dyn rusqlite::ToSql; 12] = [
                &report.report_id,
                &report.patient_id,
                &report.site_id,
                &report.instrument,
                &report.submitted_at,
                &answers,
                hash,
                &now,
                raw,
                &urgent,
                &result,
                &alert,
            ];
            let inserted = match scored {
                None => tx.prepare_cached(INSERT_QUEUED)?.execute(&values[..10])?,
                // Scored at intake: stored as `Op::Complete` leaves a
                // report (its first attempt), never queued.
                Some(_) => tx.prepare_cached(INSERT_SCORED)?.execute(&values[..])?,
            };
            if inserted == 0 {
                return Ok(seen(tx)?.unwrap_or(Outcome::Conflict).into());
            }
            if scored.is_none() {
                *backlog += 1;
                return Ok(Outcome::Accepted.into());
            }
            let mut effect = Effect::from(Outcome::Accepted);
            effect.new_enrollment = enroll(tx, enrolled, &report.site_id, &report.patient_id, now)?;
            Ok(effect)
        }
        Op::Complete {
            report_id,
            site_id,
            patient_id,
            result,
            alert,
            attempts,
        } => {
            // (4): every update below is conditional on `queued` and on
            // this replica's claim, which it gives up.
            let now = now_ms();
            let rows = tx
                .prepare_cached(
                    "UPDATE reports SET status = 'processed', result = ?2, alert = ?3, attempts = ?4,
                                        processed_at = ?5, last_error = NULL,
                                        claimed_by = NULL, lease_until = NULL
                     WHERE report_id = ?1 AND status = 'queued' AND claimed_by = ?6",
                )?
                .execute(params![report_id, result, alert, attempts, now, me])?;
            let mut effect = Effect::from(changed(rows));
            if rows > 0 {
                effect.new_enrollment = enroll(tx, enrolled, site_id, patient_id, now)?;
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
                    "UPDATE reports SET attempts = ?2, last_error = ?3, next_attempt_at = ?4,
                                        claimed_by = NULL, lease_until = NULL
                     WHERE report_id = ?1 AND status = 'queued' AND claimed_by = ?5",
                )?
                .execute(params![report_id, attempts, error, next_at_ms, me])?;
            Ok(changed(rows).into())
        }
        Op::Fail {
            report_id,
            attempts,
            error,
        } => {
            let rows = tx
                .prepare_cached(
                    "UPDATE reports SET status = 'failed', attempts = ?2, last_error = ?3,
                                        claimed_by = NULL, lease_until = NULL
                     WHERE report_id = ?1 AND status = 'queued' AND claimed_by = ?4",
                )?
                .execute(params![report_id, attempts, error, me])?;
            Ok(changed(rows).into())
        }
        // The row itself is written with every command's (see `apply`).
        Op::Audit(_) => Ok(Outcome::Changed.into()),
        Op::Redrive { report_id, .. } => {
            let rows = tx
                .prepare_cached(
                    "UPDATE reports SET status = 'queued', attempts = 0, next_attempt_at = 0,
                                        claimed_by = NULL, lease_until = NULL
                     WHERE report_id = ?1 AND status = 'failed'",
                )?
                .execute(params![report_id])?;
            if rows > 0 {
                *backlog += 1;
            }
            Ok(changed(rows).into())
        }
        Op::Claim { limit } => {
            // Two lanes, urgent first, each on its own partial index (one
            // ORDER BY priority would sort the whole backlog at each
            // claim). The limits are written into the SQL: a bound LIMIT
            // makes SQLite re-plan the statement on every run.
            let now = now_ms();
            let mut claimed = Vec::new();
            for lane in ["priority > 0", "priority = 0"] {
                let room = limit.saturating_sub(claimed.len());
                if room == 0 {
                    break;
                }
                let mut stmt = tx.prepare_cached(&format!(
                    "UPDATE reports SET claimed_by = ?1, lease_until = ?2 + ?3
                     WHERE report_id IN (
                         SELECT report_id FROM reports
                         WHERE status = 'queued' AND {lane} AND next_attempt_at <= ?2
                           AND (claimed_by IS NULL OR claimed_by = ?1)
                         ORDER BY next_attempt_at, rowid LIMIT {room})
                     RETURNING report_id, patient_id, site_id, instrument, submitted_at, answers, attempts"
                ))?;
                let rows = stmt.query_map(params![me, now, ms(claiming.lease)], |r| {
                    Ok(Claimed {
                        report_id: r.get(0)?,
                        patient_id: r.get(1)?,
                        site_id: r.get(2)?,
                        instrument: r.get(3)?,
                        submitted_at: r.get(4)?,
                        answers: r.get(5)?,
                        attempts: r.get(6)?,
                    })
                })?;
                for row in rows {
                    claimed.push(row?);
                }
            }
            Ok(Outcome::Claimed(claimed).into())
        }
        Op::Heartbeat => {
            let rows = tx
                .prepare_cached("UPDATE reports SET lease_until = ?2 WHERE claimed_by = ?1")?
                .execute(params![me, now_ms() + ms(claiming.lease)])?;
            Ok(Outcome::Rows(rows as u64).into())
        }
        Op::Reap => {
            let rows = tx
                .prepare_cached(
                    "UPDATE reports SET claimed_by = NULL, lease_until = NULL
                     WHERE claimed_by IS NOT NULL AND lease_until < ?1",
                )?
                .execute(params![now_ms()])?;
            Ok(Outcome::Rows(rows as u64).into())
        }
        Op::Release => {
            let rows = tx
                .prepare_cached(
                    "UPDATE reports SET claimed_by = NULL, lease_until = NULL WHERE claimed_by = ?1",
                )?
                .execute(params![me])?;
            Ok(Outcome::Rows(rows as u64).into())
        }
        Op::Summary {
            period_start,
            period_end,
            body,
        } => {
            // Not when a summary ending after this one's start is stored.
            let rows = tx
                .prepare_cached(
                    "INSERT INTO summaries (period_start, period_end, created_at, body)
                     SELECT ?1, ?2, ?3, ?4
                     WHERE NOT EXISTS (SELECT 1 FROM summaries WHERE period_end > ?1)",
                )?
                .execute(params![period_start, period_end, now_ms(), body])?;
            Ok(changed(rows).into())
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

    /// A directory of its own under the temp dir, and the database's path
    /// in it (not made).
    fn temp_db(name: &str) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "quiesce-store-{name}-{}-{}",
            std::process::id(),
            now_ms()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("quiesce.db");
        (dir, path)
    }

    /// Each command's outcome and whether it enrolled a patient, from a
    /// batch that committed with every command stored.
    fn outcomes(engine: &mut Engine, ops: &[&Op]) -> Vec<(Outcome, bool)> {
        use super::super::writer::Engine as _;

        engine
            .apply(ops, 0)
            .results
            .unwrap()
            .into_iter()
            .map(|e| e.map(|e| (e.outcome, e.new_enrollment)).unwrap())
            .collect()
    }

    /// A new database in a directory of its own under the temp dir, and
    /// an engine open on it: the directory, the database, the engine.
    fn new_engine(name: &str) -> (PathBuf, PathBuf, Engine) {
        use super::super::writer::Engine as _;

        let (dir, path) = temp_db(name);
        let claiming = Claiming {
            replica: "test".into(),
            lease: Duration::from_secs(30),
        };
        let mut engine = Engine::new(path.clone(), claiming);
        assert_eq!(engine.open().unwrap().backlog, 0);
        (dir, path, engine)
    }

    /// A new urgent report `id` of `patient` (one answer of 3), scored at
    /// intake or not.
    fn insert(id: &str, patient: &str, scored: Option<super::super::Scored>) -> Op {
        use crate::serve::report::Report;

        Op::Insert {
            report: Report {
                report_id: id.to_string(),
                patient_id: patient.into(),
                site_id: "S".into(),
                instrument: "i".into(),
                submitted_at: "2025-06-01T09:30:00Z".into(),
                answers: [("q1".to_string(), 3)].into(),
            },
            hash: format!("hash-{id}"),
            max_backlog: 100,
            who: Default::default(),
            body_sha256: String::new(),
            raw: None,
            urgent: true,
            scored,
        }
    }

    /// A result scored at intake, raising an alert or not.
    fn scored_at_intake(alert: bool) -> Option<super::super::Scored> {
        Some(super::super::Scored {
            result: "{}".into(),
            alert,
            alert_labels: Vec::new(),
        })
    }

    /// A queued report `id`, by the writer's own statement.
    fn insert_queued_row(conn: &Connection, id: &str) {
        let row = params![
            id,
            "p",
            "S",
            "i",
            "2025-06-01T09:30:00Z",
            "{}",
            "h",
            1,
            None::<String>,
            0
        ];
        assert_eq!(conn.execute(INSERT_QUEUED, row).unwrap(), 1);
    }

    /// The opcodes SQLite runs for `sql` on `conn`.
    fn opcodes(conn: &Connection, sql: &str) -> Vec<String> {
        let mut stmt = conn.prepare(&format!("EXPLAIN {sql}")).unwrap();
        // Unbound parameters: EXPLAIN runs nothing.
        let mut rows = stmt.raw_query();
        let mut ops = Vec::new();
        while let Some(row) = rows.next().unwrap() {
            ops.push(row.get(1).unwrap());
        }
        ops
    }

    #[test]
    fn version_6_checks_a_status_without_a_temporary_b_tree_and_keeps_the_check() {
        let (dir, path) = temp_db("v6");
        let mut conn = Connection::open(&path).unwrap();
        migrate_to(&mut conn, &path, 5).unwrap();
        insert_queued_row(&conn, "r1");
        let set_status = "UPDATE reports SET status = ?1 WHERE report_id = 'r1'";
        let writes = [INSERT_QUEUED, INSERT_SCORED, set_status];
        let ephemeral = |conn: &Connection, sql: &str| {
            opcodes(conn, sql).iter().any(|op| op == "OpenEphemeral")
        };
        // What version 6 is for: at version 5 every write of a status
        // builds one.
        for sql in writes {
            assert!(ephemeral(&conn, sql), "version 5: {sql}");
        }
        // Another connection, open across the migration, reads the new
        // definition too (the schema cookie moved on).
        let other = Connection::open(&path).unwrap();
        assert!(ephemeral(&other, INSERT_SCORED));

        migrate(&mut conn, &path).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 6);
        // (EXPLAIN runs no transaction, which is where a connection finds
        // the schema changed: one read first.)
        let rows: i64 = other
            .query_row("SELECT COUNT(*) FROM reports", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1);
        for sql in writes {
            assert!(!ephemeral(&conn, sql), "this connection: {sql}");
            assert!(!ephemeral(&other, sql), "the other connection: {sql}");
        }
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        // The rows pass as before: each status allowed, any other refused,
        // through either connection.
        for status in ["processed", "failed", "queued"] {
            assert_eq!(conn.execute(set_status, [status]).unwrap(), 1, "{status}");
        }
        for c in [&conn, &other] {
            let err = c.execute(set_status, ["lost"]).unwrap_err();
            assert!(err.to_string().contains("CHECK constraint failed"), "{err}");
        }
        drop(other);
        drop(conn);
        // A store opens on it as on any other, the version as it is.
        let reopened = open_writer(&path).unwrap();
        let (version, status): (i64, String) = reopened
            .query_row(
                "SELECT (SELECT user_version FROM pragma_user_version), status FROM reports",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((version, status.as_str()), (6, "queued"));
        drop(reopened);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn version_6_leaves_a_status_check_it_did_not_write_as_it_is() {
        let (dir, path) = temp_db("v6-other");
        let mut conn = Connection::open(&path).unwrap();
        migrate_to(&mut conn, &path, 5).unwrap();
        // Someone wrote the CHECK another way (no spaces after the commas).
        let other = "CHECK (status IN ('queued','processed','failed'))";
        let cookie: i64 = conn
            .query_row("PRAGMA schema_version", [], |r| r.get(0))
            .unwrap();
        conn.execute_batch("PRAGMA writable_schema = ON").unwrap();
        conn.execute(
            "UPDATE sqlite_schema SET sql = replace(sql, ?1, ?2) WHERE name = 'reports'",
            [STATUS_CHECK_AS_IN_LIST, other],
        )
        .unwrap();
        conn.pragma_update(None, "schema_version", cookie + 1)
            .unwrap();
        conn.execute_batch("PRAGMA writable_schema = OFF").unwrap();

        migrate(&mut conn, &path).unwrap();
        let (version, sql): (i64, String) = conn
            .query_row(
                "SELECT (SELECT user_version FROM pragma_user_version), sql
                 FROM sqlite_schema WHERE name = 'reports'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(version, 6);
        assert!(sql.contains(other), "{sql}");
        assert!(!sql.contains(STATUS_CHECK_AS_COMPARISONS), "{sql}");
        // Still checked.
        insert_queued_row(&conn, "r1");
        let err = conn
            .execute("UPDATE reports SET status = 'lost'", [])
            .unwrap_err();
        assert!(err.to_string().contains("CHECK constraint failed"), "{err}");
        drop(conn);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_report_scored_at_intake_is_stored_processed_by_its_insert_with_its_rows() {
        use super::super::Scored;
        use super::super::writer::Engine as _;

        let (dir, path, mut engine) = new_engine("scored");
        let scored = Some(Scored {
            result: r#"{"score":1}"#.into(),
            alert: true,
            alert_labels: vec![("unregistered", "generic")],
        });
        let ops = [
            insert("a", "p1", scored.clone()),
            insert("b", "p1", scored.clone()),
            insert("c", "p2", None),
            insert("a", "p1", scored.clone()),
        ];
        let refs: Vec<&Op> = ops.iter().collect();
        let effects = outcomes(&mut engine, &refs);
        assert_eq!(
            effects,
            [
                (Outcome::Accepted, true),
                (Outcome::Accepted, false),
                (Outcome::Accepted, false),
                (Outcome::Duplicate, false),
            ]
        );
        engine.close().unwrap();
        let conn = Connection::open(&path).unwrap();
        let row = |id: &str| -> (String, Option<String>, Option<bool>, u32, bool) {
            conn.query_row(
                "SELECT status, result, alert, attempts, processed_at IS NOT NULL FROM reports WHERE report_id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .unwrap()
        };
        let processed = (
            "processed".to_string(),
            Some(r#"{"score":1}"#.to_string()),
            Some(true),
            1,
            true,
        );
        assert_eq!(row("a"), processed);
        assert_eq!(row("b"), processed);
        assert_eq!(row("c"), ("queued".to_string(), None, None, 0, false));
        let enrolled: i64 = conn
            .query_row("SELECT COUNT(*) FROM enrollment", [], |r| r.get(0))
            .unwrap();
        assert_eq!(enrolled, 1, "p1 once; p2's report is still queued");
        let mut stmt = conn
            .prepare("SELECT report_id, action, outcome, caller FROM audit ORDER BY id")
            .unwrap();
        let audit: Vec<(String, String, String, Option<String>)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let rows: Vec<(&str, &str, &str)> = audit
            .iter()
            .map(|(id, action, outcome, _)| (id.as_str(), action.as_str(), outcome.as_str()))
            .collect();
        assert_eq!(
            rows,
            [
                ("a", "report.received", "202 accepted"),
                ("a", "attempt", "processed"),
                ("a", "alert.raised", "alert"),
                ("b", "report.received", "202 accepted"),
                ("b", "attempt", "processed"),
                ("b", "alert.raised", "alert"),
                ("c", "report.received", "202 accepted"),
                ("a", "report.received", "200 duplicate"),
            ]
        );
        assert_eq!(audit[1].3.as_deref(), Some("pipeline"), "{audit:?}");
        drop(stmt);
        drop(conn);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_batch_s_audit_rows_are_written_in_order_and_without_them_nothing_is() {
        use super::super::writer::Engine as _;

        let (dir, path, mut engine) = new_engine("audit");
        let scored = || scored_at_intake(true);
        // 13 reports, 3 rows each.
        let ops: Vec<Op> = (0..13)
            .map(|i| insert(&format!("r{i:02}"), "p", scored()))
            .collect();
        let refs: Vec<&Op> = ops.iter().collect();
        let results = engine.apply(&refs, 0).results.unwrap();
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        let conn = Connection::open(&path).unwrap();
        let audit = |conn: &Connection| -> Vec<(String, String, i64)> {
            let mut stmt = conn
                .prepare("SELECT report_id, action, at FROM audit ORDER BY id")
                .unwrap();
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        let rows = audit(&conn);
        let expected: Vec<(String, String)> = (0..13)
            .flat_map(|i| {
                ["report.received", "attempt", "alert.raised"]
                    .map(|action| (format!("r{i:02}"), action.to_string()))
            })
            .collect();
        let got: Vec<(String, String)> = rows
            .iter()
            .map(|(id, a, _)| (id.clone(), a.clone()))
            .collect();
        assert_eq!(got, expected);
        assert!(
            rows.iter().all(|row| row.2 == rows[0].2),
            "one moment: {rows:?}"
        );

        // A row the audit trail refuses: the batch's changes are not
        // committed either, and every command is told it was not stored.
        conn.execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON audit WHEN NEW.report_id = 'bad'
             BEGIN SELECT RAISE(ABORT, 'refused for the test'); END;",
        )
        .unwrap();
        let ops = [insert("fine", "p", scored()), insert("bad", "p", scored())];
        let refs: Vec<&Op> = ops.iter().collect();
        let failure = engine.apply(&refs, 0).results.unwrap_err();
        assert!(
            matches!(&failure, Failure::NotStored(e) if e.contains("refused for the test")),
            "{failure:?}"
        );
        let stored: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM reports WHERE report_id IN ('fine', 'bad')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(stored, 0);
        assert_eq!(audit(&conn).len(), 39);
        engine.close().unwrap();
        drop(conn);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_patient_known_to_be_enrolled_runs_no_enrollment_statement() {
        use super::super::writer::Engine as _;

        let (dir, path, mut engine) = new_engine("known");
        let conn = Connection::open(&path).unwrap();
        // Counts the enrollment statements that reach the table, whether
        // they insert or find the row there.
        conn.execute_batch(
            "CREATE TABLE tried (n INTEGER);
             CREATE TRIGGER count_tries BEFORE INSERT ON enrollment
             BEGIN INSERT INTO tried VALUES (1); END;",
        )
        .unwrap();
        let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
        let mut apply = |ops: &[Op]| outcomes(&mut engine, &ops.iter().collect::<Vec<_>>());
        let scored = || scored_at_intake(false);
        // In one batch the second report of "p" still runs the statement
        // (its enrollment is not committed yet) and finds the row.
        assert_eq!(
            apply(&[insert("a", "p", scored()), insert("b", "p", scored())]),
            [(Outcome::Accepted, true), (Outcome::Accepted, false)]
        );
        assert_eq!(count("SELECT COUNT(*) FROM tried"), 2);
        // Committed: the next report of "p" runs none; a new patient does.
        assert_eq!(
            apply(&[insert("c", "p", scored()), insert("d", "q", scored())]),
            [(Outcome::Accepted, false), (Outcome::Accepted, true)]
        );
        assert_eq!(count("SELECT COUNT(*) FROM tried"), 3);
        assert_eq!(count("SELECT COUNT(*) FROM enrollment"), 2);
        engine.close().unwrap();
        drop(conn);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_command_that_fails_midway_keeps_nothing_of_its_batch() {
        use super::super::writer::Engine as _;

        let (dir, path, mut engine) = new_engine("midway");
        let scored = || scored_at_intake(false);
        let conn = Connection::open(&path).unwrap();
        // The enrollment of one patient refused: that report's insert has
        // already changed a row when its command fails.
        conn.execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON enrollment WHEN NEW.patient_id = 'refused'
             BEGIN SELECT RAISE(ABORT, 'refused for the test'); END;",
        )
        .unwrap();
        let ops = [
            insert("before", "p", scored()),
            insert("midway", "refused", scored()),
            insert("after", "p", scored()),
        ];
        let refs: Vec<&Op> = ops.iter().collect();
        let failure = engine.apply(&refs, 0).results.unwrap_err();
        assert!(
            matches!(&failure, Failure::NotStored(e) if e.contains("refused for the test")),
            "{failure:?}"
        );
        let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
        assert_eq!(count("SELECT COUNT(*) FROM reports"), 0);
        assert_eq!(count("SELECT COUNT(*) FROM enrollment"), 0);
        assert_eq!(count("SELECT COUNT(*) FROM audit"), 0);

        // A command that fails before it changes anything is its own
        // failure: the rest of the batch is stored, with its rows.
        conn.execute_batch(
            "CREATE TRIGGER refuse_report BEFORE INSERT ON reports WHEN NEW.report_id = 'refused'
             BEGIN SELECT RAISE(ABORT, 'report refused for the test'); END;",
        )
        .unwrap();
        let ops = [
            insert("before", "p", scored()),
            insert("refused", "p", scored()),
            insert("after", "p", None),
        ];
        let refs: Vec<&Op> = ops.iter().collect();
        let results = engine.apply(&refs, 0).results.unwrap();
        assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
        assert!(
            matches!(&results[1], Err(e) if e.contains("report refused for the test")),
            "{results:?}"
        );
        assert_eq!(count("SELECT COUNT(*) FROM reports"), 2);
        assert_eq!(count("SELECT COUNT(*) FROM audit"), 3);
        // "p" was enrolled by the batch rolled back: not taken as known.
        assert_eq!(count("SELECT COUNT(*) FROM enrollment"), 1);
        engine.close().unwrap();
        drop(conn);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn while_another_process_holds_the_lock_a_batch_tries_once_and_marks_the_store_failing() {
        use std::sync::Arc;
        use std::sync::atomic::AtomicI64;

        use quiesce::Counters;

        use super::super::sync::Syncer;
        use super::super::writer::{Engine as _, Writer};
        use super::super::{Command, Live, Reply};
        use crate::serve::metrics::Metrics;
        use crate::serve::report::Report;

        let (dir, path) = temp_db("locked");
        let shared = Arc::new(Live {
            enrollment: Counters::new(),
            backlog: AtomicI64::new(0),
            metrics: Metrics::new(),
            work_added: crossbeam_channel::unbounded().0,
            health: Default::default(),
        });
        let claiming = Claiming {
            replica: "test".into(),
            lease: Duration::from_secs(30),
        };
        let mut engine = Engine::new(path.clone(), claiming);
        engine.open().unwrap();
        engine
            .conn()
            .busy_timeout(Duration::from_millis(50))
            .unwrap();
        let (_tx, rx) = crossbeam_channel::bounded::<Command>(16);
        let mut writer = Writer::new(Box::new(engine), "test".into(), rx, shared.clone());
        let holder = Connection::open(&path).unwrap();
        holder.execute_batch("BEGIN IMMEDIATE").unwrap();
        let syncer = Syncer::start(None, shared.clone()).unwrap();
        let (got_tx, got_rx) = crossbeam_channel::unbounded();
        let command = |op: Op| {
            let tx = got_tx.clone();
            let reply: Reply = Box::new(move |outcome| tx.send(outcome).unwrap());
            Command { op, reply }
        };
        let insert = |id: &str| Op::Insert {
            report: Report {
                report_id: id.to_string(),
                patient_id: "p".into(),
                site_id: "S".into(),
                instrument: "i".into(),
                submitted_at: "2025-06-01T09:30:00Z".into(),
                answers: [("q1".to_string(), 1)].into(),
            },
            hash: id.to_string(),
            max_backlog: 100,
            who: Default::default(),
            body_sha256: String::new(),
            raw: None,
            urgent: false,
            scored: None,
        };
        writer.commit_batch_of(
            vec![
                command(insert("a")),
                command(insert("b")),
                command(insert("c")),
            ],
            &syncer,
        );
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
        writer.commit_batch_of(vec![command(op)], &syncer);
        assert_eq!(got_rx.recv_timeout(wait).unwrap(), Ok(Outcome::Changed));
        assert_eq!(shared.health.failure(), None);
        assert_eq!(shared.health.recoveries(), 1);
        syncer.finish();
        drop(writer);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
