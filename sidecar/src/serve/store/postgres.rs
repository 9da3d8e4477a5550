//! The PostgreSQL backend, shared by every replica: the schema and its
//! migrations, the writer's [`Engine`](super::writer::Engine), and the
//! readers' shared connections ([`Readers`]).
//!
//! The client is diesel's synchronous `PgConnection` over libpq: no async
//! runtime. Each connection string gets bounded waits unless it sets its
//! own ([`with_defaults`]): a connect timeout, TCP keepalives and a TCP
//! user timeout, so that a server that vanishes fails a call instead of
//! hanging it; and every session a statement timeout.
//!
//! What replicas share, and how (invariants 4 and 5 of the [store](super)):
//! - the reports: the primary key decides duplicates and conflicts, across
//!   replicas (`ON CONFLICT DO NOTHING`, then a look at the row);
//! - the work: a claim takes due rows with `FOR UPDATE SKIP LOCKED`, so
//!   two replicas never claim the same report, and stamps them with the
//!   replica and a lease measured on the server's clock;
//! - the counts (the backlog, enrolled patients per site): one row each,
//!   updated by every committing transaction with its own changes, last
//!   (the backlog row first, then the sites in order: one lock order for
//!   all), so a replica's view converges by reading them back;
//! - the summaries: one per period, written by whichever replica gets the
//!   advisory lock first and finds no newer one;
//! - the schema: migrated at start under an advisory lock, so replicas
//!   that start together come up with one schema.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::result::{DatabaseErrorKind, Error as DbError};
use diesel::sql_types::{BigInt, Bool, Integer, Nullable, Text};
use diesel::{Connection, QueryableByName, RunQueryDsl, sql_query};
use quiesce::BoxError;

use super::read::{AuditFilter, AuditRow, ListFilter, ListedReport, SiteSummary, StoredReport};
use super::writer::{Applied, Counts, Effect, changed};
use super::{AuditEntry, Claimed, Claiming, Enrolled, Failure, Op, Outcome, audit_rows, now_ms};

/// The schema, one migration per version (versions 1 to 5 are SQLite's;
/// SQLite's version 6 rewrote a CHECK that PostgreSQL checks as it is);
/// each applied in a transaction of its own with its row in
/// `quiesce_schema`.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "
CREATE TABLE reports (
    report_id       TEXT PRIMARY KEY,
    patient_id      TEXT NOT NULL,
    site_id         TEXT NOT NULL,
    instrument      TEXT NOT NULL,
    submitted_at    TEXT NOT NULL,
    answers         TEXT NOT NULL,
    content_hash    TEXT NOT NULL,
    received_at     BIGINT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('queued', 'processed', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL DEFAULT 0,
    last_error      TEXT,
    result          TEXT,
    alert           BOOLEAN,
    processed_at    BIGINT
);
CREATE INDEX reports_due ON reports (next_attempt_at) WHERE status = 'queued';
CREATE TABLE enrollment (
    site_id     TEXT NOT NULL,
    patient_id  TEXT NOT NULL,
    enrolled_at BIGINT NOT NULL,
    PRIMARY KEY (site_id, patient_id)
);
CREATE TABLE summaries (
    id           BIGSERIAL PRIMARY KEY,
    period_start BIGINT NOT NULL,
    period_end   BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    body         TEXT NOT NULL
);
CREATE TABLE probe (
    replica TEXT PRIMARY KEY,
    at      BIGINT NOT NULL
);
",
    ),
    (
        2,
        "
ALTER TABLE reports ADD COLUMN claimed_by TEXT, ADD COLUMN lease_until BIGINT;
CREATE INDEX reports_claimed ON reports (claimed_by) WHERE claimed_by IS NOT NULL;
CREATE TABLE counts (
    name TEXT PRIMARY KEY,
    n    BIGINT NOT NULL
);
INSERT INTO counts (name, n) SELECT 'backlog', COUNT(*) FROM reports WHERE status = 'queued';
CREATE TABLE site_counts (
    site_id  TEXT PRIMARY KEY,
    patients BIGINT NOT NULL
);
INSERT INTO site_counts (site_id, patients) SELECT site_id, COUNT(*) FROM enrollment GROUP BY site_id;
",
    ),
    (
        3,
        "
CREATE TABLE audit (
    id          BIGSERIAL PRIMARY KEY,
    at          BIGINT NOT NULL,
    action      TEXT NOT NULL,
    caller      TEXT,
    remote      TEXT,
    request_id  TEXT,
    report_id   TEXT,
    body_sha256 TEXT,
    outcome     TEXT,
    detail      TEXT
);
CREATE FUNCTION quiesce_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit trail is append-only';
END
$$;
CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION quiesce_audit_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION quiesce_audit_append_only();
",
    ),
    (
        4,
        "
ALTER TABLE reports ADD COLUMN raw TEXT;
",
    ),
    (
        5,
        "
ALTER TABLE reports ADD COLUMN priority SMALLINT NOT NULL DEFAULT 0;
CREATE INDEX reports_urgent ON reports (next_attempt_at) WHERE status = 'queued' AND priority > 0;
",
    ),
];

/// The newest schema version this binary knows.
const SCHEMA_VERSION: i32 = 5;

/// Advisory lock keys (`pg_advisory_lock`): the migrations, and the
/// summary of a period.
const LOCK_MIGRATE: i64 = 0x7175_6965_7363_0001;
const LOCK_SUMMARY: i64 = 0x7175_6965_7363_0002;

/// The server's clock in ms since the epoch: leases are set and judged on
/// one clock, whatever the replicas' clocks say.
const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// The longest a statement may run (a session setting).
const STATEMENT_TIMEOUT: &str = "30s";

/// How many connections the readers of one process share.
const READERS: usize = 4;
/// How long a reader waits for one of them.
const READER_WAIT: Duration = Duration::from_secs(5);

/// Checks `url` is a PostgreSQL connection string and adds the bounded
/// waits it does not set itself: `connect_timeout` (10 s),
/// `tcp_user_timeout` (30 s) and keepalives.
///
/// # Errors
///
/// When it is neither a `postgres://`/`postgresql://` URL nor `key=value`
/// pairs.
pub fn with_defaults(url: &str) -> Result<String, String> {
    let url = url.trim();
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    if !is_url && !url.contains('=') {
        return Err(
            "--database-url must be a PostgreSQL connection string: postgres://user@host/db, \
             postgresql:///db?host=/run/postgresql, or host=... dbname=..."
                .into(),
        );
    }
    let defaults = [
        ("connect_timeout", "10"),
        ("tcp_user_timeout", "30000"),
        ("keepalives", "1"),
        ("keepalives_idle", "10"),
        ("keepalives_interval", "5"),
        ("keepalives_count", "3"),
    ];
    let mut out = url.to_string();
    for (key, value) in defaults {
        if out.contains(&format!("{key}=")) {
            continue;
        }
        if is_url {
            out.push(if out.contains('?') { '&' } else { '?' });
            out.push_str(&format!("{key}={value}"));
        } else {
            out.push_str(&format!(" {key}={value}"));
        }
    }
    Ok(out)
}

/// Opens a connection with the session settings every one of ours has.
fn connect(url: &str, role: &str) -> Result<PgConnection, String> {
    let mut conn =
        PgConnection::establish(url).map_err(|e| format!("cannot reach PostgreSQL: {e}"))?;
    conn.batch_execute(&format!(
        "SET synchronous_commit = on; SET statement_timeout = '{STATEMENT_TIMEOUT}'; \
         SET lock_timeout = '10s'; SET idle_in_transaction_session_timeout = '60s'; \
         SET application_name = 'quiesce {}'",
        role.replace('\'', "")
    ))
    .map_err(|e| format!("cannot set up the PostgreSQL session: {e}"))?;
    Ok(conn)
}

/// Brings the schema to [`SCHEMA_VERSION`] under the migration lock.
fn migrate(conn: &mut PgConnection, replica: &str) -> Result<(), BoxError> {
    #[derive(QueryableByName)]
    struct Version {
        #[diesel(sql_type = Integer)]
        version: i32,
    }
    // Held by the session: released at the end, or by the server if this
    // process dies meanwhile.
    conn.batch_execute(&format!("SELECT pg_advisory_lock({LOCK_MIGRATE})"))?;
    let result = (|| -> Result<(), BoxError> {
        conn.batch_execute(
            "CREATE TABLE IF NOT EXISTS quiesce_schema (
                 version    INTEGER PRIMARY KEY,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                 applied_by TEXT NOT NULL
             )",
        )?;
        let version = sql_query("SELECT COALESCE(MAX(version), 0) AS version FROM quiesce_schema")
            .get_result::<Version>(conn)?
            .version;
        if version > SCHEMA_VERSION {
            return Err(format!(
                "the database has schema version {version}, newer than this quiesce knows \
                 ({SCHEMA_VERSION}): it was migrated by a newer release; run that release \
                 (or newer) on it"
            )
            .into());
        }
        for (to, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > version) {
            conn.transaction::<_, DbError, _>(|c| {
                c.batch_execute(sql)?;
                sql_query("INSERT INTO quiesce_schema (version, applied_by) VALUES ($1, $2)")
                    .bind::<Integer, _>(*to)
                    .bind::<Text, _>(replica)
                    .execute(c)?;
                Ok(())
            })
            .map_err(|e| format!("schema migration to version {to} failed: {e}"))?;
            log::info!("PostgreSQL schema migrated to version {to}");
        }
        Ok(())
    })();
    let unlocked = conn.batch_execute(&format!("SELECT pg_advisory_unlock({LOCK_MIGRATE})"));
    result?;
    unlocked?;
    Ok(())
}

#[derive(QueryableByName)]
struct Hash {
    #[diesel(sql_type = Text)]
    content_hash: String,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = Nullable<Text>)]
    site_id: Option<String>,
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct ClaimRow {
    #[diesel(sql_type = Text)]
    report_id: String,
    #[diesel(sql_type = Text)]
    patient_id: String,
    #[diesel(sql_type = Text)]
    site_id: String,
    #[diesel(sql_type = Text)]
    instrument: String,
    #[diesel(sql_type = Text)]
    submitted_at: String,
    #[diesel(sql_type = Text)]
    answers: String,
    #[diesel(sql_type = Integer)]
    attempts: i32,
}

/// The backlog and the enrolled patients per site, from the shared counts.
fn read_counts(conn: &mut PgConnection) -> Result<Counts, DbError> {
    let rows = sql_query(
        "SELECT NULL::text AS site_id, n FROM counts WHERE name = 'backlog'
         UNION ALL SELECT site_id, patients AS n FROM site_counts",
    )
    .load::<Count>(conn)?;
    let mut counts = Counts::default();
    for row in rows {
        match row.site_id {
            None => counts.backlog = row.n,
            Some(site) => counts.sites.push((site, u64::try_from(row.n).unwrap_or(0))),
        }
    }
    Ok(counts)
}

/// The PostgreSQL engine: the write connection, while it is up.
pub(super) struct Engine {
    url: String,
    claiming: Claiming,
    conn: Option<PgConnection>,
    /// Pairs whose enrollment row is committed (by any replica).
    known: Enrolled,
}

impl Engine {
    pub(super) fn new(url: String, claiming: Claiming) -> Engine {
        Engine {
            url,
            claiming,
            conn: None,
            known: Enrolled::default(),
        }
    }

    /// Whether the connection still answers; dropped when it does not, so
    /// that the probe connects anew (7).
    fn alive(&mut self) -> bool {
        let alive = self
            .conn
            .as_mut()
            .is_some_and(|c| c.batch_execute("SELECT 1").is_ok());
        if !alive {
            self.conn = None;
        }
        alive
    }

    /// One transaction of `ops`: each command's effect, or the error that
    /// aborted the transaction and whether it was the COMMIT's.
    fn transaction(&mut self, ops: &[&Op], backlog: i64) -> Result<Vec<Effect>, (DbError, bool)> {
        let claiming = self.claiming.clone();
        let known = &mut self.known;
        let conn = self.conn.as_mut().expect("connected");
        let mut body_done = false;
        let result = conn.transaction::<_, DbError, _>(|c| {
            let mut tx = Tx {
                conn: c,
                claiming: &claiming,
                backlog,
                backlog_delta: 0,
                enrolled: Vec::new(),
                known: &mut *known,
            };
            if ops
                .iter()
                .any(|op| matches!(op, Op::Insert { .. } | Op::InsertMany { .. }))
            {
                // (5): judged on the shared backlog, as of now.
                tx.backlog = read_counts(tx.conn)?.backlog;
            }
            let effects = ops
                .iter()
                .map(|op| {
                    let effect = tx.apply(op)?;
                    for row in audit_rows(op, &effect.outcome, &claiming.replica) {
                        tx.audit(&row)?;
                    }
                    Ok(effect)
                })
                .collect::<Result<Vec<_>, DbError>>()?;
            tx.update_counts()?;
            body_done = true;
            Ok(effects)
        });
        known.ended(result.is_ok());
        result.map_err(|e| (e, body_done))
    }
}

impl super::writer::Engine for Engine {
    fn open(&mut self) -> Result<Counts, BoxError> {
        let mut conn = connect(&self.url, &self.claiming.replica)?;
        migrate(&mut conn, &self.claiming.replica)?;
        // Recount the shared counts from the rows (they heal if anything
        // ever set them wrong). Under the backlog row's lock, which every
        // committing transaction takes before it changes a count: a
        // transaction that committed is in the recount, one that has not
        // adds its own changes after it.
        conn.transaction::<_, DbError, _>(|c| {
            c.batch_execute(
                "SELECT n FROM counts WHERE name = 'backlog' FOR UPDATE;
                 UPDATE counts SET n = (SELECT COUNT(*) FROM reports WHERE status = 'queued')
                  WHERE name = 'backlog';
                 DELETE FROM site_counts;
                 INSERT INTO site_counts (site_id, patients)
                  SELECT site_id, COUNT(*) FROM enrollment GROUP BY site_id;",
            )
        })
        .map_err(|e| format!("cannot recount the shared counts: {e}"))?;
        let counts = read_counts(&mut conn)?;
        self.conn = Some(conn);
        Ok(counts)
    }

    fn flush_file(&mut self) -> Option<std::fs::File> {
        // COMMIT returns once durable (`synchronous_commit = on`).
        None
    }

    fn apply(&mut self, ops: &[&Op], backlog: i64) -> Applied {
        if self.conn.is_none() {
            // Reconnecting is the probe's (7): a batch does not wait out a
            // connect timeout past its callers' deadlines.
            let err = "not connected to PostgreSQL (reconnecting)".to_string();
            return Applied {
                results: Err(Failure::NotStored(err.clone())),
                fault: Some(err),
            };
        }
        match self.transaction(ops, backlog) {
            Ok(effects) => Applied {
                results: Ok(effects.into_iter().map(Ok).collect()),
                fault: None,
            },
            Err((err, at_commit)) => {
                let alive = self.alive();
                if at_commit {
                    // (8): the server refused the COMMIT (rolled back) if
                    // the session still answers; otherwise it may have
                    // committed before the connection went.
                    let failure = if alive {
                        Failure::NotStored(err.to_string())
                    } else {
                        Failure::Unknown(format!("connection lost while committing: {err}"))
                    };
                    return Applied {
                        fault: Some(failure.error().to_string()),
                        results: Err(failure),
                    };
                }
                if !alive || store_fault(&err) {
                    let err = err.to_string();
                    return Applied {
                        results: Err(Failure::NotStored(err.clone())),
                        fault: Some(err),
                    };
                }
                // One command's statement failed and aborted the whole
                // transaction (a deadlock with another replica, say): each
                // command again, alone, so that one cannot fail the others.
                self.one_by_one(ops)
            }
        }
    }

    fn probe(&mut self) -> Result<(), String> {
        if self.conn.is_none() {
            self.conn = Some(connect(&self.url, &self.claiming.replica)?);
        }
        let replica = self.claiming.replica.clone();
        let conn = self.conn.as_mut().expect("connected");
        let written = sql_query(format!(
            "INSERT INTO probe (replica, at) VALUES ($1, {NOW_MS})
             ON CONFLICT (replica) DO UPDATE SET at = EXCLUDED.at"
        ))
        .bind::<Text, _>(&replica)
        .execute(conn);
        match written {
            Ok(_) => Ok(()),
            Err(err) => {
                self.alive();
                Err(err.to_string())
            }
        }
    }

    fn refresh(&mut self) -> Option<Result<Counts, String>> {
        let conn = self.conn.as_mut()?;
        Some(read_counts(conn).map_err(|e| e.to_string()))
    }

    fn close(&mut self) -> Result<(), String> {
        self.conn = None;
        Ok(())
    }
}

impl Engine {
    /// Each of `ops` in a transaction of its own.
    fn one_by_one(&mut self, ops: &[&Op]) -> Applied {
        let mut fault = None;
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            if let Some(err) = &fault {
                results.push(Err(format!("not attempted: {err}")));
                continue;
            }
            if self.conn.is_none() {
                fault = Some("not connected to PostgreSQL".to_string());
                results.push(Err("not connected to PostgreSQL".to_string()));
                continue;
            }
            // The writer's count is as good as any here: the shared one
            // is read again when the command is an insert.
            match self.transaction(&[op], 0) {
                Ok(mut effects) => results.push(Ok(effects.remove(0))),
                Err((err, at_commit)) => {
                    let alive = self.alive();
                    if at_commit && !alive {
                        // (8): this one may be stored; say so, and stop.
                        let failure =
                            Failure::Unknown(format!("connection lost while committing: {err}"));
                        return Applied {
                            fault: Some(failure.error().to_string()),
                            results: Err(failure),
                        };
                    }
                    if !alive || store_fault(&err) {
                        fault = Some(err.to_string());
                    }
                    results.push(Err(err.to_string()));
                }
            }
        }
        Applied {
            results: Ok(results),
            fault,
        }
    }
}

/// Whether an error is the store's own (7): the server cannot take writes
/// (a read-only standby) or the connection is gone.
fn store_fault(err: &DbError) -> bool {
    matches!(
        err,
        DbError::DatabaseError(
            DatabaseErrorKind::ReadOnlyTransaction
                | DatabaseErrorKind::ClosedConnection
                | DatabaseErrorKind::UnableToSendCommand,
            _
        )
    )
}

/// Milliseconds as stored.
fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// One transaction's commands, and the count changes they make.
struct Tx<'a> {
    conn: &'a mut PgConnection,
    claiming: &'a Claiming,
    backlog: i64,
    backlog_delta: i64,
    /// Sites where a patient enrolled for the first time.
    enrolled: Vec<String>,
    /// Pairs known to be enrolled, and those this transaction enrolls.
    known: &'a mut Enrolled,
}

impl Tx<'_> {
    fn seen(&mut self, report_id: &str, hash: &str) -> Result<Option<Outcome>, DbError> {
        let existing = sql_query("SELECT content_hash FROM reports WHERE report_id = $1")
            .bind::<Text, _>(report_id)
            .load::<Hash>(self.conn)?;
        Ok(existing.into_iter().next().map(|e| {
            if e.content_hash == hash {
                Outcome::Duplicate
            } else {
                Outcome::Conflict
            }
        }))
    }

    /// Appends `row` to the audit trail.
    fn audit(&mut self, row: &AuditEntry<'_>) -> Result<(), DbError> {
        sql_query(
            "INSERT INTO audit (at, action, caller, remote, request_id, report_id, body_sha256, outcome, detail)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind::<BigInt, _>(now_ms())
        .bind::<Text, _>(row.action)
        .bind::<Nullable<Text>, _>(row.caller)
        .bind::<Nullable<Text>, _>(row.remote)
        .bind::<Nullable<Text>, _>(row.request_id)
        .bind::<Nullable<Text>, _>(row.report_id)
        .bind::<Nullable<Text>, _>(row.body_sha256)
        .bind::<Nullable<Text>, _>(row.outcome)
        .bind::<Nullable<Text>, _>(row.detail.as_deref())
        .execute(self.conn)?;
        Ok(())
    }

    /// Enrolls `patient_id` at `site_id`: whether it is the first time
    /// (then counted in the site's shared count at the commit). A pair
    /// `known` to be enrolled sends no statement.
    fn enroll(&mut self, site_id: &str, patient_id: &str, now: i64) -> Result<bool, DbError> {
        let key = self.known.key(site_id, patient_id);
        if self.known.known(key) {
            return Ok(false);
        }
        let enrolled = sql_query(
            "INSERT INTO enrollment (site_id, patient_id, enrolled_at) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind::<Text, _>(site_id)
        .bind::<Text, _>(patient_id)
        .bind::<BigInt, _>(now)
        .execute(self.conn)?;
        self.known.note(key);
        if enrolled > 0 {
            self.enrolled.push(site_id.to_string());
        }
        Ok(enrolled > 0)
    }

    fn apply(&mut self, op: &Op) -> Result<Effect, DbError> {
        let me = self.claiming.replica.as_str();
        match op {
            Op::InsertMany { items } => {
                let mut effects = Vec::with_capacity(items.len());
                for item in items {
                    // Its audit rows are written with the batch's.
                    effects.push(self.apply(item)?);
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
                if self.backlog + self.backlog_delta >= *max_backlog {
                    let seen = self.seen(&report.report_id, hash)?;
                    return Ok(seen.unwrap_or(Outcome::BacklogFull).into());
                }
                let answers = serde_json::to_string(&report.answers).expect("answers serialise");
                let now = now_ms();
                // Waits for another replica inserting the same id to commit
                // or roll back, then sees its row: the key decides. Scored
                // at intake: stored as `Op::Complete` leaves a report (its
                // first attempt), never queued.
                let inserted = sql_query(
                    "INSERT INTO reports (report_id, patient_id, site_id, instrument, submitted_at,
                                          answers, content_hash, received_at, status, raw, priority,
                                          result, alert, attempts, processed_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
                     ON CONFLICT (report_id) DO NOTHING",
                )
                .bind::<Text, _>(&report.report_id)
                .bind::<Text, _>(&report.patient_id)
                .bind::<Text, _>(&report.site_id)
                .bind::<Text, _>(&report.instrument)
                .bind::<Text, _>(&report.submitted_at)
                .bind::<Text, _>(&answers)
                .bind::<Text, _>(hash)
                .bind::<BigInt, _>(now)
                .bind::<Text, _>(if scored.is_some() {
                    "processed"
                } else {
                    "queued"
                })
                .bind::<Nullable<Text>, _>(raw.as_deref())
                .bind::<diesel::sql_types::SmallInt, _>(i16::from(*urgent))
                .bind::<Nullable<Text>, _>(scored.as_ref().map(|s| s.result.as_str()))
                .bind::<Nullable<Bool>, _>(scored.as_ref().map(|s| s.alert))
                .bind::<Integer, _>(i32::from(scored.is_some()))
                .bind::<Nullable<BigInt>, _>(scored.is_some().then_some(now))
                .execute(self.conn)?;
                if inserted == 0 {
                    let seen = self.seen(&report.report_id, hash)?;
                    return Ok(seen.unwrap_or(Outcome::Conflict).into());
                }
                if scored.is_none() {
                    self.backlog_delta += 1;
                    return Ok(Outcome::Accepted.into());
                }
                let mut effect = Effect::from(Outcome::Accepted);
                effect.new_enrollment = self.enroll(&report.site_id, &report.patient_id, now)?;
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
                // (4): conditional on `queued` and this replica's claim.
                let now = now_ms();
                let rows = sql_query(
                    "UPDATE reports SET status = 'processed', result = $2, alert = $3, attempts = $4,
                                        processed_at = $5, last_error = NULL,
                                        claimed_by = NULL, lease_until = NULL
                     WHERE report_id = $1 AND status = 'queued' AND claimed_by = $6",
                )
                .bind::<Text, _>(report_id)
                .bind::<Text, _>(result)
                .bind::<Bool, _>(*alert)
                .bind::<Integer, _>(i32::try_from(*attempts).unwrap_or(i32::MAX))
                .bind::<BigInt, _>(now)
                .bind::<Text, _>(me)
                .execute(self.conn)?;
                let mut effect = Effect::from(changed(rows));
                if rows > 0 {
                    self.backlog_delta -= 1;
                    effect.new_enrollment = self.enroll(site_id, patient_id, now)?;
                }
                Ok(effect)
            }
            Op::Retry {
                report_id,
                attempts,
                error,
                next_at_ms,
            } => {
                let rows = sql_query(
                    "UPDATE reports SET attempts = $2, last_error = $3, next_attempt_at = $4,
                                        claimed_by = NULL, lease_until = NULL
                     WHERE report_id = $1 AND status = 'queued' AND claimed_by = $5",
                )
                .bind::<Text, _>(report_id)
                .bind::<Integer, _>(i32::try_from(*attempts).unwrap_or(i32::MAX))
                .bind::<Text, _>(error)
                .bind::<BigInt, _>(*next_at_ms)
                .bind::<Text, _>(me)
                .execute(self.conn)?;
                Ok(changed(rows).into())
            }
            Op::Fail {
                report_id,
                attempts,
                error,
            } => {
                let rows = sql_query(
                    "UPDATE reports SET status = 'failed', attempts = $2, last_error = $3,
                                        claimed_by = NULL, lease_until = NULL
                     WHERE report_id = $1 AND status = 'queued' AND claimed_by = $4",
                )
                .bind::<Text, _>(report_id)
                .bind::<Integer, _>(i32::try_from(*attempts).unwrap_or(i32::MAX))
                .bind::<Text, _>(error)
                .bind::<Text, _>(me)
                .execute(self.conn)?;
                if rows > 0 {
                    self.backlog_delta -= 1;
                }
                Ok(changed(rows).into())
            }
            // The row itself is written with every command's.
            Op::Audit(_) => Ok(Outcome::Changed.into()),
            Op::Redrive { report_id, .. } => {
                let rows = sql_query(
                    "UPDATE reports SET status = 'queued', attempts = 0, next_attempt_at = 0,
                                        claimed_by = NULL, lease_until = NULL
                     WHERE report_id = $1 AND status = 'failed'",
                )
                .bind::<Text, _>(report_id)
                .execute(self.conn)?;
                if rows > 0 {
                    self.backlog_delta += 1;
                }
                Ok(changed(rows).into())
            }
            Op::Claim { limit } => {
                // Two lanes, urgent first, each on its own partial index.
                let mut claimed = Vec::new();
                for lane in ["priority > 0", "priority = 0"] {
                    let room = limit.saturating_sub(claimed.len());
                    if room == 0 {
                        break;
                    }
                    let rows = sql_query(format!(
                        "WITH due AS (
                             SELECT report_id FROM reports
                             WHERE status = 'queued' AND {lane} AND next_attempt_at <= $3
                               AND (claimed_by IS NULL OR claimed_by = $1)
                             ORDER BY next_attempt_at, received_at
                             LIMIT $4
                             FOR UPDATE SKIP LOCKED)
                         UPDATE reports r SET claimed_by = $1, lease_until = {NOW_MS} + $2
                         FROM due WHERE r.report_id = due.report_id
                         RETURNING r.report_id, r.patient_id, r.site_id, r.instrument, r.submitted_at,
                                   r.answers, r.attempts"
                    ))
                    .bind::<Text, _>(me)
                    .bind::<BigInt, _>(ms(self.claiming.lease))
                    .bind::<BigInt, _>(now_ms())
                    .bind::<BigInt, _>(i64::try_from(room).unwrap_or(i64::MAX))
                    .load::<ClaimRow>(self.conn)?;
                    claimed.extend(rows.into_iter().map(|r| Claimed {
                        report_id: r.report_id,
                        patient_id: r.patient_id,
                        site_id: r.site_id,
                        instrument: r.instrument,
                        submitted_at: r.submitted_at,
                        answers: r.answers,
                        attempts: u32::try_from(r.attempts).unwrap_or(0),
                    }));
                }
                Ok(Outcome::Claimed(claimed).into())
            }
            Op::Heartbeat => {
                let rows = sql_query(format!(
                    "UPDATE reports SET lease_until = {NOW_MS} + $2 WHERE claimed_by = $1"
                ))
                .bind::<Text, _>(me)
                .bind::<BigInt, _>(ms(self.claiming.lease))
                .execute(self.conn)?;
                Ok(Outcome::Rows(rows as u64).into())
            }
            Op::Reap => {
                let rows = sql_query(format!(
                    "UPDATE reports SET claimed_by = NULL, lease_until = NULL
                     WHERE claimed_by IS NOT NULL AND lease_until < {NOW_MS}"
                ))
                .execute(self.conn)?;
                Ok(Outcome::Rows(rows as u64).into())
            }
            Op::Release => {
                let rows = sql_query(
                    "UPDATE reports SET claimed_by = NULL, lease_until = NULL WHERE claimed_by = $1",
                )
                .bind::<Text, _>(me)
                .execute(self.conn)?;
                Ok(Outcome::Rows(rows as u64).into())
            }
            Op::Summary {
                period_start,
                period_end,
                body,
            } => {
                // One replica per period: the advisory lock keeps two from
                // writing at once, and none writes over a newer period. The
                // lock is taken in a statement of its own, so that the
                // INSERT's snapshot comes after it and sees the period that
                // the lock's last holder committed. (In one statement the
                // snapshot came first: two replicas could each find no newer
                // period and store the same one.)
                #[derive(QueryableByName)]
                struct Locked {
                    #[diesel(sql_type = Bool)]
                    locked: bool,
                }
                let lock = sql_query(format!(
                    "SELECT pg_try_advisory_xact_lock({LOCK_SUMMARY}) AS locked"
                ))
                .get_result::<Locked>(self.conn)?;
                if !lock.locked {
                    return Ok(changed(0).into());
                }
                let rows = sql_query(
                    "INSERT INTO summaries (period_start, period_end, created_at, body)
                     SELECT $1, $2, $3, $4
                     WHERE NOT EXISTS (SELECT 1 FROM summaries WHERE period_end > $1)",
                )
                .bind::<BigInt, _>(*period_start)
                .bind::<BigInt, _>(*period_end)
                .bind::<BigInt, _>(now_ms())
                .bind::<Text, _>(body)
                .execute(self.conn)?;
                Ok(changed(rows).into())
            }
        }
    }

    /// The transaction's changes to the shared counts, last: the backlog
    /// row first, then the sites in order (one lock order for every
    /// replica, and the recount at start).
    fn update_counts(&mut self) -> Result<(), DbError> {
        if self.backlog_delta == 0 && self.enrolled.is_empty() {
            return Ok(());
        }
        sql_query("UPDATE counts SET n = n + $1 WHERE name = 'backlog'")
            .bind::<BigInt, _>(self.backlog_delta)
            .execute(self.conn)?;
        let mut counted: std::collections::BTreeMap<String, i64> = Default::default();
        for site in std::mem::take(&mut self.enrolled) {
            *counted.entry(site).or_default() += 1;
        }
        for (site, n) in counted {
            sql_query(
                "INSERT INTO site_counts (site_id, patients) VALUES ($1, $2)
                 ON CONFLICT (site_id) DO UPDATE SET patients = site_counts.patients + EXCLUDED.patients",
            )
            .bind::<Text, _>(&site)
            .bind::<BigInt, _>(n)
            .execute(self.conn)?;
        }
        Ok(())
    }
}

/// The connections the readers of one process share: at most [`READERS`],
/// opened when first needed, each handed to one reader at a time; one that
/// failed is dropped and opened anew by the next reader.
#[derive(Clone)]
pub struct Readers {
    inner: Arc<ReaderSlots>,
}

struct ReaderSlots {
    url: String,
    /// A free slot: a connection, or room for one.
    free: (Sender<Option<PgConnection>>, Receiver<Option<PgConnection>>),
}

#[derive(QueryableByName)]
struct ReportRow {
    #[diesel(sql_type = Text)]
    report_id: String,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Text)]
    site_id: String,
    #[diesel(sql_type = Text)]
    patient_id: String,
    #[diesel(sql_type = Text)]
    instrument: String,
    #[diesel(sql_type = Text)]
    submitted_at: String,
    #[diesel(sql_type = BigInt)]
    received_at: i64,
    #[diesel(sql_type = Integer)]
    attempts: i32,
    #[diesel(sql_type = Nullable<Text>)]
    last_error: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    result: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    processed_at: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    raw: Option<String>,
}

#[derive(QueryableByName)]
struct AuditDbRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = BigInt)]
    at: i64,
    #[diesel(sql_type = Text)]
    action: String,
    #[diesel(sql_type = Nullable<Text>)]
    caller: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    remote: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    request_id: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    report_id: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    body_sha256: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    outcome: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    detail: Option<String>,
}

#[derive(QueryableByName)]
struct ListRow {
    #[diesel(sql_type = Text)]
    report_id: String,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Text)]
    site_id: String,
    #[diesel(sql_type = Text)]
    instrument: String,
    #[diesel(sql_type = BigInt)]
    received_at: i64,
    #[diesel(sql_type = Integer)]
    attempts: i32,
    #[diesel(sql_type = Nullable<Text>)]
    last_error: Option<String>,
}

#[derive(QueryableByName)]
struct SummaryRow {
    #[diesel(sql_type = Text)]
    site_id: String,
    #[diesel(sql_type = BigInt)]
    reports: i64,
    #[diesel(sql_type = BigInt)]
    alerts: i64,
    #[diesel(sql_type = BigInt)]
    patients: i64,
}

#[derive(QueryableByName)]
struct Start {
    #[diesel(sql_type = BigInt)]
    start: i64,
}

impl Readers {
    pub(super) fn new(url: String) -> Readers {
        let free = crossbeam_channel::bounded(READERS);
        for _ in 0..READERS {
            free.0.send(None).expect("room for every slot");
        }
        Readers {
            inner: Arc::new(ReaderSlots { url, free }),
        }
    }

    /// Runs `read` on a shared connection (waiting at most
    /// [`READER_WAIT`] for one).
    fn with<T>(
        &self,
        read: impl FnOnce(&mut PgConnection) -> Result<T, DbError>,
    ) -> Result<T, String> {
        let slots = &self.inner;
        let slot = slots
            .free
            .1
            .recv_timeout(READER_WAIT)
            .map_err(|_| format!("all {READERS} PostgreSQL read connections busy"))?;
        let mut conn = match slot {
            Some(conn) => conn,
            None => match connect(&slots.url, "reader") {
                Ok(conn) => conn,
                Err(err) => {
                    let _ = slots.free.0.send(None);
                    return Err(err);
                }
            },
        };
        let result = read(&mut conn);
        // A connection whose statement failed may be broken: not kept.
        let back = if result.is_ok() { Some(conn) } else { None };
        let _ = slots.free.0.send(back);
        result.map_err(|e| e.to_string())
    }

    pub(super) fn report(&self, id: &str) -> Result<Option<StoredReport>, String> {
        let rows = self.with(|c| {
            sql_query(
                "SELECT report_id, status, site_id, patient_id, instrument, submitted_at, received_at,
                        attempts, last_error, result, processed_at, raw
                 FROM reports WHERE report_id = $1",
            )
            .bind::<Text, _>(id)
            .load::<ReportRow>(c)
        })?;
        Ok(rows.into_iter().next().map(|r| StoredReport {
            report_id: r.report_id,
            status: r.status,
            site_id: r.site_id,
            patient_id: r.patient_id,
            instrument: r.instrument,
            submitted_at: r.submitted_at,
            received_at: r.received_at,
            attempts: i64::from(r.attempts),
            last_error: r.last_error,
            result: r.result,
            processed_at: r.processed_at,
            raw: r.raw,
        }))
    }

    pub(super) fn list(&self, filter: &ListFilter) -> Result<Vec<ListedReport>, String> {
        let rows = self.with(|c| {
            sql_query(
                "SELECT report_id, status, site_id, instrument, received_at, attempts, last_error
                 FROM reports
                 WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR site_id = $2)
                   AND ($3::bigint IS NULL OR received_at >= $3) AND report_id > $4
                 ORDER BY report_id LIMIT $5",
            )
            .bind::<Nullable<Text>, _>(filter.status.as_deref())
            .bind::<Nullable<Text>, _>(filter.site.as_deref())
            .bind::<Nullable<BigInt>, _>(filter.since_ms)
            .bind::<Text, _>(filter.after.as_deref().unwrap_or(""))
            .bind::<BigInt, _>(i64::try_from(filter.limit).unwrap_or(i64::MAX))
            .load::<ListRow>(c)
        })?;
        Ok(rows
            .into_iter()
            .map(|r| ListedReport {
                report_id: r.report_id,
                status: r.status,
                site_id: r.site_id,
                instrument: r.instrument,
                received_at: r.received_at,
                attempts: i64::from(r.attempts),
                last_error: r.last_error,
            })
            .collect())
    }

    pub(super) fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRow>, String> {
        let rows = self.with(|c| {
            sql_query(
                "SELECT id, at, action, caller, remote, request_id, report_id, body_sha256, outcome, detail
                 FROM audit
                 WHERE id > $1 AND ($2::bigint IS NULL OR at >= $2) AND ($3::bigint IS NULL OR at < $3)
                   AND ($4::text IS NULL OR report_id = $4) AND ($5::text IS NULL OR caller = $5)
                 ORDER BY id LIMIT $6",
            )
            .bind::<BigInt, _>(filter.after_id)
            .bind::<Nullable<BigInt>, _>(filter.since_ms)
            .bind::<Nullable<BigInt>, _>(filter.until_ms)
            .bind::<Nullable<Text>, _>(filter.report_id.as_deref())
            .bind::<Nullable<Text>, _>(filter.caller.as_deref())
            .bind::<BigInt, _>(i64::try_from(filter.limit).unwrap_or(i64::MAX))
            .load::<AuditDbRow>(c)
        })?;
        Ok(rows
            .into_iter()
            .map(|r| AuditRow {
                id: r.id,
                at: r.at,
                action: r.action,
                caller: r.caller,
                remote: r.remote,
                request_id: r.request_id,
                report_id: r.report_id,
                body_sha256: r.body_sha256,
                outcome: r.outcome,
                detail: r.detail,
            })
            .collect())
    }

    pub(super) fn summary_start(&self, fallback: i64) -> Result<i64, String> {
        self.with(|c| {
            sql_query(
                "SELECT COALESCE((SELECT MAX(period_end) FROM summaries),
                                 (SELECT MIN(received_at) FROM reports),
                                 $1) AS start",
            )
            .bind::<BigInt, _>(fallback)
            .get_result::<Start>(c)
        })
        .map(|s| s.start)
    }

    pub(super) fn summary(&self, start: i64, end: i64) -> Result<Vec<SiteSummary>, String> {
        let rows = self.with(|c| {
            sql_query(
                // As SQLite's: arrivals and patients by when they arrived,
                // alerts by when they were raised.
                "SELECT site_id,
                        COUNT(*) FILTER (WHERE received_at >= $1 AND received_at < $2) AS reports,
                        COUNT(*) FILTER (WHERE alert AND processed_at >= $1 AND processed_at < $2) AS alerts,
                        COUNT(DISTINCT patient_id) FILTER (WHERE received_at >= $1 AND received_at < $2) AS patients
                 FROM reports
                 WHERE (received_at >= $1 AND received_at < $2) OR (processed_at >= $1 AND processed_at < $2)
                 GROUP BY site_id ORDER BY site_id COLLATE \"C\"",
            )
            .bind::<BigInt, _>(start)
            .bind::<BigInt, _>(end)
            .load::<SummaryRow>(c)
        })?;
        Ok(rows
            .into_iter()
            .map(|r| SiteSummary {
                site_id: r.site_id,
                reports: r.reports,
                alerts: r.alerts,
                patients: r.patients,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_string_gets_bounded_waits_unless_it_sets_its_own() {
        let url = with_defaults("postgres://app@db.example/quiesce").unwrap();
        assert!(url.starts_with("postgres://app@db.example/quiesce?connect_timeout=10&"));
        assert!(url.contains("&tcp_user_timeout=30000"));
        let url =
            with_defaults("postgresql:///quiesce?host=/run/postgresql&connect_timeout=3").unwrap();
        assert!(url.contains("connect_timeout=3") && !url.contains("connect_timeout=10"));
        assert!(url.contains("&keepalives_idle=10"));
        let url = with_defaults("host=/run/postgresql dbname=quiesce").unwrap();
        assert!(url.starts_with("host=/run/postgresql dbname=quiesce connect_timeout=10 "));
        assert!(with_defaults("mysql://db/quiesce").is_err());
        assert!(with_defaults("quiesce.db").is_err());
    }
}
