//! The `scheduler` service: every `--summary-interval`, a summary of the
//! period since the last one — per site, reports received, alerts raised
//! (reports processed in the period with an alert) and distinct patients
//! among the reports received — stored in the database and written as a JSON
//! file in `<data-dir>/summaries/`, atomically (a temporary file, fsynced,
//! renamed, and the directory fsynced). The first summary covers the time
//! since the first report (or since the service started, with none); only
//! the newest `--summary-keep` files are kept.

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
    keep: usize,
    /// When the service started (ms since the epoch): the first summary's
    /// start when there is no report yet.
    started_ms: i64,
}

impl Scheduler {
    /// Summaries of `db_path` every `interval`, written to `dir`, which
    /// keeps the newest `keep` files.
    pub fn new(
        db_path: PathBuf,
        dir: PathBuf,
        store: StoreHandle,
        interval: Duration,
        keep: usize,
    ) -> Scheduler {
        Scheduler {
            db_path,
            dir,
            store,
            interval,
            keep: keep.max(1),
            started_ms: now_ms(),
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
                Ok(path) => {
                    log::info!("summary written to {}", path.display());
                    self.prune();
                }
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
        // Since the last summary; the first one since the first report
        // (not since 1970), or since the start when there is none yet.
        let start: i64 = reader.query_row(
            "SELECT COALESCE((SELECT MAX(period_end) FROM summaries),
                             (SELECT MIN(received_at) FROM reports),
                             ?1)",
            [self.started_ms],
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

impl Scheduler {
    /// Removes the oldest summary files beyond `keep` (by the period end in
    /// their name). A file that cannot be removed is logged and left.
    fn prune(&self) {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(err) => {
                log::warn!("cannot list {}: {err}", self.dir.display());
                return;
            }
        };
        let mut files: Vec<(i64, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let name = entry.file_name();
                let end = name
                    .to_str()?
                    .strip_prefix("summary-")?
                    .strip_suffix(".json")?
                    .parse()
                    .ok()?;
                Some((end, entry.path()))
            })
            .collect();
        if files.len() <= self.keep {
            return;
        }
        files.sort_unstable();
        let excess = files.len() - self.keep;
        for (_, path) in files.into_iter().take(excess) {
            if let Err(err) = fs::remove_file(&path) {
                log::warn!("cannot remove the old summary {}: {err}", path.display());
            }
        }
    }
}
