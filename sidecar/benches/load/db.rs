//! The database, read and filled directly.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};

/// Where the reports that got a 202 are in the database.
#[derive(Debug, Default)]
pub(crate) struct Found {
    pub(crate) processed: u64,
    pub(crate) queued: u64,
    pub(crate) failed: u64,
    pub(crate) missing: u64,
}

impl Found {
    pub(crate) fn present(&self) -> u64 {
        self.processed + self.queued + self.failed
    }
}

/// Looks up each id (the sidecar has exited).
pub(crate) fn find(path: &Path, ids: impl Iterator<Item = String>) -> rusqlite::Result<Found> {
    let conn = Connection::open(path)?;
    let mut found = Found::default();
    let mut stmt = conn.prepare("SELECT status FROM reports WHERE report_id = ?1")?;
    for id in ids {
        let status: Option<String> = stmt.query_row([&id], |r| r.get(0)).optional()?;
        match status.as_deref() {
            Some("processed") => found.processed += 1,
            Some("queued") => found.queued += 1,
            Some(_) => found.failed += 1,
            None => found.missing += 1,
        }
    }
    Ok(found)
}

/// Inserts `n` queued reports in one transaction, into the schema the
/// sidecar created. Fast and not durable (rollback journal,
/// `synchronous = OFF`); WAL mode is restored at the end.
pub(crate) fn fill(path: &Path, n: u64) -> rusqlite::Result<()> {
    let mut conn = Connection::open(path)?;
    conn.execute_batch(
        "PRAGMA journal_mode = DELETE; PRAGMA synchronous = OFF; PRAGMA cache_size = -262144;",
    )?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare(
            "INSERT INTO reports (report_id, patient_id, site_id, instrument, submitted_at,
                                  answers, content_hash, received_at, status)
             VALUES (?1, ?2, ?3, 'daily-diary', '2026-01-15T09:30:00Z', ?4, ?5, ?6, 'queued')",
        )?;
        let mut answers = String::with_capacity(96);
        for i in 0..n {
            answers.clear();
            answers.push('{');
            for item in 1..=9u64 {
                if item > 1 {
                    answers.push(',');
                }
                answers.push_str(&format!("\"q{item}\":{}", (i + item) % 5));
            }
            answers.push('}');
            insert.execute(params![
                format!("backlog-{i:08}"),
                format!("P-{}", i % 10_000),
                format!("SITE-{}", i % 20),
                answers,
                format!("{i:064x}"),
                now,
            ])?;
        }
    }
    tx.commit()?;
    conn.execute_batch("PRAGMA journal_mode = WAL;")?;
    conn.close().map_err(|(_, e)| e)
}
