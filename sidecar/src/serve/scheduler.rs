//! The `scheduler` service: every `--summary-interval`, a summary of the
//! period since the last one — per site, reports received, alerts raised
//! (reports processed in the period with an alert) and distinct patients
//! among the reports received — stored in the database and written as a JSON
//! file in `<data-dir>/summaries/`, atomically (a temporary file, fsynced,
//! renamed, and the directory fsynced). The first summary covers the time
//! since the first report (or since the service started, with none); only
//! the newest `--summary-keep` files are kept.
//!
//! A summary is due one interval after the end of the last one stored,
//! whichever replica stored it: with several replicas on one PostgreSQL
//! database each wakes when one is due, and the store keeps only the first
//! (it refuses a summary whose period another one already covers); the
//! replica whose summary was stored writes the file.

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use quiesce::{BoxError, Service, ServiceContext};
use serde_json::json;

use super::report::rfc3339_ms;
use super::store::{Op, Outcome, Reader, ReaderFactory, StoreHandle, now_ms};
use crate::atomic_file;

/// The summary service.
pub struct Scheduler {
    readers: ReaderFactory,
    dir: PathBuf,
    store: StoreHandle,
    interval: Duration,
    keep: usize,
    /// When the service started (ms since the epoch): the first summary's
    /// start when there is no report yet.
    started_ms: i64,
}

impl Scheduler {
    /// Summaries read through `readers` every `interval`, written to
    /// `dir`, which keeps the newest `keep` files.
    pub fn new(
        readers: ReaderFactory,
        dir: PathBuf,
        store: StoreHandle,
        interval: Duration,
        keep: usize,
    ) -> Scheduler {
        Scheduler {
            readers,
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
        let mut reader = self.readers.reader()?;
        ctx.ready();
        let interval = i64::try_from(self.interval.as_millis()).unwrap_or(i64::MAX);
        // The first one interval after the start (not at once, even when
        // the last summary is older: a restart loop must not write one per
        // start).
        let mut due = now_ms().saturating_add(interval);
        loop {
            let wait = u64::try_from(due.saturating_sub(now_ms())).unwrap_or(0);
            if ctx.sleep(Duration::from_millis(wait)).is_err() {
                break;
            }
            match self.summarise(&mut reader, interval) {
                Ok(Summarised::Written(path)) => {
                    log::info!("summary written to {}", path.display());
                    self.prune();
                    due = now_ms().saturating_add(interval);
                }
                // Another replica wrote it, or it is not due yet: next
                // one interval after the last one's end.
                Ok(Summarised::NotDue(last_end)) => due = last_end.saturating_add(interval),
                // A summary that fails is logged and tried again next time;
                // it does not take the sidecar down.
                Err(err) => {
                    log::error!("summary failed: {err}");
                    due = now_ms().saturating_add(interval);
                }
            }
        }
        Ok(())
    }
}

/// What a round of the scheduler did.
enum Summarised {
    /// This replica's summary was stored and written to this file.
    Written(PathBuf),
    /// None was due: the last one (maybe another replica's) ends here.
    NotDue(i64),
}

impl Scheduler {
    fn summarise(&self, reader: &mut Reader, interval: i64) -> Result<Summarised, BoxError> {
        // Since the last summary; the first one since the first report
        // (not since 1970), or since the start when there is none yet.
        let start = reader.summary_start(self.started_ms)?;
        let end = now_ms();
        if start > self.started_ms && end < start.saturating_add(interval) {
            // A summary ended less than an interval ago (another replica's).
            return Ok(Summarised::NotDue(start));
        }
        let mut sites = Vec::new();
        let (mut reports, mut alerts) = (0i64, 0i64);
        for site in reader.summary(start, end)? {
            reports += site.reports;
            alerts += site.alerts;
            sites.push(json!({
                "site_id": site.site_id,
                "reports": site.reports,
                "alerts": site.alerts,
                "patients": site.patients,
            }));
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
        let stored = self.store.call(
            Op::Summary {
                period_start: start,
                period_end: end,
                body: body.clone(),
            },
            Instant::now() + Duration::from_secs(30),
        )?;
        if stored != Outcome::Changed {
            // Another replica's summary covers this period already.
            let last_end = reader.summary_start(self.started_ms)?;
            return Ok(Summarised::NotDue(last_end));
        }
        let path = self.dir.join(format!("summary-{end}.json"));
        atomic_file::write(&path, body.as_bytes())?;
        Ok(Summarised::Written(path))
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
