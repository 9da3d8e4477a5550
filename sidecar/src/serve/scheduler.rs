//! The `scheduler` service: every `--summary-interval`, a summary of the
//! period since the last one — per site, reports received, alerts raised
//! (reports processed in the period with an alert) and distinct patients
//! among the reports received — stored in the database and written as a JSON
//! file in `<data-dir>/summaries/`, atomically (a temporary file, fsynced,
//! renamed, and the directory fsynced).

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use quiesce::{BoxError, Service, ServiceContext};
use rusqlite::Connection;
use serde_json::json;

use super::report::rfc3339_ms;
use super::store::{self, Op, StoreHandle, now_ms};
use crate::atomic_file;

/// The summary service.
pub struct Scheduler {
    db_path: PathBuf,
    dir: PathBuf,
    store: StoreHandle,
    interval: Duration,
}

impl Scheduler {
    /// Summaries of `db_path` every `interval`, written to `dir`.
    pub fn new(
        db_path: PathBuf,
        dir: PathBuf,
        store: StoreHandle,
        interval: Duration,
    ) -> Scheduler {
        Scheduler {
            db_path,
            dir,
            store,
            interval,
        }
    }
}

impl Service for Scheduler {
    fn name(&self) -> &str {
        "scheduler"
    }

    fn run(&mut self, ctx: &ServiceContext) -> Result<(), BoxError> {
        fs::create_dir_all(&self.dir)
            .map_err(|e| format!("cannot create {}: {e}", self.dir.display()))?;
        let reader = store::open_reader(&self.db_path)?;
        ctx.ready();
        while ctx.sleep(self.interval).is_ok() {
            match self.summarise(&reader) {
                Ok(path) => log::info!("summary written to {}", path.display()),
                // A summary that fails is logged and tried again next time;
                // it does not take the sidecar down.
                Err(err) => log::error!("summary failed: {err}"),
            }
        }
        Ok(())
    }
}

impl Scheduler {
    fn summarise(&self, reader: &Connection) -> Result<PathBuf, BoxError> {
        let start: i64 = reader.query_row(
            "SELECT COALESCE(MAX(period_end), 0) FROM summaries",
            [],
            |r| r.get(0),
        )?;
        let end = now_ms();
        let mut stmt = reader.prepare_cached(
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
        let mut sites = Vec::new();
        let (mut reports, mut alerts) = (0i64, 0i64);
        for row in stmt.query_map([start, end], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })? {
            let (site, n, a, patients) = row?;
            reports += n;
            alerts += a;
            sites.push(json!({ "site_id": site, "reports": n, "alerts": a, "patients": patients }));
        }
        let ms = |t: i64| rfc3339_ms(t).unwrap_or_default();
        let body = json!({
            "period_start": ms(start),
            "period_end": ms(end),
            "reports": reports,
            "alerts": alerts,
            "sites": sites,
        })
        .to_string();
        self.store.call(
            Op::Summary {
                period_start: start,
                period_end: end,
                body: body.clone(),
            },
            Instant::now() + Duration::from_secs(30),
        )?;
        let path = self.dir.join(format!("summary-{end}.json"));
        atomic_file::write(&path, body.as_bytes())?;
        Ok(path)
    }
}
