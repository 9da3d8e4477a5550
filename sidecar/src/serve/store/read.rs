//! Reads: a report for `GET /v1/reports/{id}`, and the rows of a periodic
//! summary. With SQLite each reader has a read-only connection of its own
//! (opened by its thread, kept for its life); with PostgreSQL the readers
//! of one process share a few connections ([`postgres::Readers`]), so that
//! sixty-four HTTP threads on three replicas do not take 192 of the
//! server's connections.

use std::path::PathBuf;

use rusqlite::{Connection, OptionalExtension};

use super::postgres;

use super::sqlite::open_reader;

/// A report as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredReport {
    /// Its id.
    pub report_id: String,
    /// `queued`, `processed` or `failed`.
    pub status: String,
    /// Its site.
    pub site_id: String,
    /// Its patient.
    pub patient_id: String,
    /// Its instrument.
    pub instrument: String,
    /// When it was submitted, as sent.
    pub submitted_at: String,
    /// When it was received (ms since the epoch).
    pub received_at: i64,
    /// Attempts made.
    pub attempts: i64,
    /// The last attempt's error, if any.
    pub last_error: Option<String>,
    /// The result (JSON text), once processed.
    pub result: Option<String>,
    /// When it was processed (ms since the epoch), once processed.
    pub processed_at: Option<i64>,
    /// The resource as a FHIR client sent it, verbatim.
    pub raw: Option<String>,
}

/// Which reports to list, a page at a time, by `report_id` (keyset
/// pagination: the next page starts after the last id of this one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Only reports with this status.
    pub status: Option<String>,
    /// Only reports of this site.
    pub site: Option<String>,
    /// Only reports received at or after this time (ms since the epoch).
    pub since_ms: Option<i64>,
    /// Only reports whose id sorts after this one.
    pub after: Option<String>,
    /// At most this many.
    pub limit: usize,
}

/// A report as listed: what an operator needs to find and re-drive it;
/// no patient id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedReport {
    /// Its id.
    pub report_id: String,
    /// `queued`, `processed` or `failed`.
    pub status: String,
    /// Its site.
    pub site_id: String,
    /// Its instrument.
    pub instrument: String,
    /// When it was received (ms since the epoch).
    pub received_at: i64,
    /// Attempts made.
    pub attempts: i64,
    /// The last attempt's error, if any.
    pub last_error: Option<String>,
}

/// Which audit rows to export, a page at a time by id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Rows at or after this time (ms since the epoch).
    pub since_ms: Option<i64>,
    /// Rows before this time (ms since the epoch).
    pub until_ms: Option<i64>,
    /// Rows about this report.
    pub report_id: Option<String>,
    /// Rows of this caller.
    pub caller: Option<String>,
    /// Rows after this id.
    pub after_id: i64,
    /// At most this many.
    pub limit: usize,
}

/// One row of the audit trail, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRow {
    /// Its place in the trail.
    pub id: i64,
    /// When (ms since the epoch, UTC).
    pub at: i64,
    /// What happened.
    pub action: String,
    /// For whom.
    pub caller: Option<String>,
    /// From where.
    pub remote: Option<String>,
    /// The request's id.
    pub request_id: Option<String>,
    /// Which report.
    pub report_id: Option<String>,
    /// SHA-256 of what was sent.
    pub body_sha256: Option<String>,
    /// How it ended.
    pub outcome: Option<String>,
    /// More, as JSON text.
    pub detail: Option<String>,
}

/// One site's line of a summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteSummary {
    /// The site.
    pub site_id: String,
    /// Reports received in the period.
    pub reports: i64,
    /// Alerts raised (reports processed with an alert) in the period.
    pub alerts: i64,
    /// Distinct patients among the reports received in the period.
    pub patients: i64,
}

/// Makes a [`Reader`] for each thread that reads.
#[derive(Clone)]
pub enum ReaderFactory {
    /// Opens a read-only SQLite connection.
    Sqlite(PathBuf),
    /// Hands out the shared PostgreSQL connections.
    Postgres(postgres::Readers),
}

impl ReaderFactory {
    pub(super) fn sqlite(path: PathBuf) -> ReaderFactory {
        ReaderFactory::Sqlite(path)
    }

    pub(super) fn postgres(url: String) -> ReaderFactory {
        ReaderFactory::Postgres(postgres::Readers::new(url))
    }

    /// A reader for one thread.
    ///
    /// # Errors
    ///
    /// When the SQLite file cannot be opened (PostgreSQL connects lazily).
    pub fn reader(&self) -> std::io::Result<Reader> {
        match self {
            ReaderFactory::Sqlite(path) => open_reader(path)
                .map(Reader::Sqlite)
                .map_err(std::io::Error::other),
            ReaderFactory::Postgres(readers) => Ok(Reader::Postgres(readers.clone())),
        }
    }
}

/// One thread's way to read the store.
pub enum Reader {
    /// A read-only SQLite connection.
    Sqlite(Connection),
    /// The shared PostgreSQL connections.
    Postgres(postgres::Readers),
}

impl Reader {
    /// The report `id`, if stored.
    ///
    /// # Errors
    ///
    /// When the store cannot be read.
    pub fn report(&mut self, id: &str) -> Result<Option<StoredReport>, String> {
        match self {
            Reader::Sqlite(db) => sqlite_report(db, id).map_err(|e| e.to_string()),
            Reader::Postgres(readers) => readers.report(id),
        }
    }

    /// The reports `filter` selects, in `report_id` order.
    ///
    /// # Errors
    ///
    /// When the store cannot be read.
    pub fn list(&mut self, filter: &ListFilter) -> Result<Vec<ListedReport>, String> {
        match self {
            Reader::Sqlite(db) => sqlite_list(db, filter).map_err(|e| e.to_string()),
            Reader::Postgres(readers) => readers.list(filter),
        }
    }

    /// The audit rows `filter` selects, in id order.
    ///
    /// # Errors
    ///
    /// When the store cannot be read.
    pub fn audit(&mut self, filter: &AuditFilter) -> Result<Vec<AuditRow>, String> {
        match self {
            Reader::Sqlite(db) => sqlite_audit(db, filter).map_err(|e| e.to_string()),
            Reader::Postgres(readers) => readers.audit(filter),
        }
    }

    /// Where the next summary's period starts: the end of the last one,
    /// else the first report's arrival, else `fallback` (ms since the
    /// epoch).
    ///
    /// # Errors
    ///
    /// When the store cannot be read.
    pub fn summary_start(&mut self, fallback: i64) -> Result<i64, String> {
        match self {
            Reader::Sqlite(db) => db
                .query_row(
                    "SELECT COALESCE((SELECT MAX(period_end) FROM summaries),
                                     (SELECT MIN(received_at) FROM reports),
                                     ?1)",
                    [fallback],
                    |r| r.get(0),
                )
                .map_err(|e| e.to_string()),
            Reader::Postgres(readers) => readers.summary_start(fallback),
        }
    }

    /// Per site, what arrived and what raised an alert in `[start, end)`.
    ///
    /// # Errors
    ///
    /// When the store cannot be read.
    pub fn summary(&mut self, start: i64, end: i64) -> Result<Vec<SiteSummary>, String> {
        match self {
            Reader::Sqlite(db) => sqlite_summary(db, start, end).map_err(|e| e.to_string()),
            Reader::Postgres(readers) => readers.summary(start, end),
        }
    }
}

fn sqlite_report(db: &Connection, id: &str) -> rusqlite::Result<Option<StoredReport>> {
    db.prepare_cached(
        "SELECT report_id, status, site_id, patient_id, instrument, submitted_at, received_at,
                attempts, last_error, result, processed_at, raw
         FROM reports WHERE report_id = ?1",
    )?
    .query_row([id], |r| {
        Ok(StoredReport {
            report_id: r.get(0)?,
            status: r.get(1)?,
            site_id: r.get(2)?,
            patient_id: r.get(3)?,
            instrument: r.get(4)?,
            submitted_at: r.get(5)?,
            received_at: r.get(6)?,
            attempts: r.get(7)?,
            last_error: r.get(8)?,
            result: r.get(9)?,
            processed_at: r.get(10)?,
            raw: r.get(11)?,
        })
    })
    .optional()
}

fn sqlite_list(db: &Connection, filter: &ListFilter) -> rusqlite::Result<Vec<ListedReport>> {
    db.prepare_cached(
        "SELECT report_id, status, site_id, instrument, received_at, attempts, last_error
         FROM reports
         WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR site_id = ?2)
           AND (?3 IS NULL OR received_at >= ?3) AND report_id > ?4
         ORDER BY report_id LIMIT ?5",
    )?
    .query_map(
        rusqlite::params![
            filter.status,
            filter.site,
            filter.since_ms,
            filter.after.as_deref().unwrap_or(""),
            i64::try_from(filter.limit).unwrap_or(i64::MAX)
        ],
        |r| {
            Ok(ListedReport {
                report_id: r.get(0)?,
                status: r.get(1)?,
                site_id: r.get(2)?,
                instrument: r.get(3)?,
                received_at: r.get(4)?,
                attempts: r.get(5)?,
                last_error: r.get(6)?,
            })
        },
    )?
    .collect()
}

fn sqlite_audit(db: &Connection, filter: &AuditFilter) -> rusqlite::Result<Vec<AuditRow>> {
    db.prepare_cached(
        "SELECT id, at, action, caller, remote, request_id, report_id, body_sha256, outcome, detail
         FROM audit
         WHERE id > ?1 AND (?2 IS NULL OR at >= ?2) AND (?3 IS NULL OR at < ?3)
           AND (?4 IS NULL OR report_id = ?4) AND (?5 IS NULL OR caller = ?5)
         ORDER BY id LIMIT ?6",
    )?
    .query_map(
        rusqlite::params![
            filter.after_id,
            filter.since_ms,
            filter.until_ms,
            filter.report_id,
            filter.caller,
            i64::try_from(filter.limit).unwrap_or(i64::MAX)
        ],
        |r| {
            Ok(AuditRow {
                id: r.get(0)?,
                at: r.get(1)?,
                action: r.get(2)?,
                caller: r.get(3)?,
                remote: r.get(4)?,
                request_id: r.get(5)?,
                report_id: r.get(6)?,
                body_sha256: r.get(7)?,
                outcome: r.get(8)?,
                detail: r.get(9)?,
            })
        },
    )?
    .collect()
}

fn sqlite_summary(db: &Connection, start: i64, end: i64) -> rusqlite::Result<Vec<SiteSummary>> {
    let mut stmt = db.prepare_cached(
        // Reports and patients by when they arrived; alerts by when they
        // were raised (processed), so each is counted in one period.
        "SELECT site_id,
                SUM(received_at >= ?1 AND received_at < ?2),
                SUM(alert = 1 AND processed_at >= ?1 AND processed_at < ?2),
                COUNT(DISTINCT CASE WHEN received_at >= ?1 AND received_at < ?2 THEN patient_id END)
         FROM reports
         WHERE (received_at >= ?1 AND received_at < ?2) OR (processed_at >= ?1 AND processed_at < ?2)
         GROUP BY site_id ORDER BY site_id",
    )?;
    stmt.query_map([start, end], |r| {
        Ok(SiteSummary {
            site_id: r.get(0)?,
            reports: r.get(1)?,
            alerts: r.get(2)?,
            patients: r.get(3)?,
        })
    })?
    .collect()
}
