//! The files on the scoped pool: at most `limit` in progress at once, each
//! job borrowing its [`Job`] and the shared settings from the caller's
//! stack, all under one [`Context`] (signals and deadline).
//!
//! Each job logs `start FILE (in progress: k of N)` and `end FILE: STATUS
//! (in progress: k of N)` at debug level, so the bound can be watched.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use quiesce::{Context, JobError};

use super::inputs::Job;
use super::summary::{FileReport, Status};

/// Runs `work` on every job, at most `limit` at once, largest files first
/// (a long file started last would finish last); returns one report per
/// job, in the order of `jobs`. Jobs not started when `ctx` is done are
/// reported [`Status::NotStarted`].
pub(crate) fn run<W>(jobs: &[Job], limit: usize, ctx: &Context, work: W) -> Vec<FileReport>
where
    W: Fn(&Job, &Context) -> FileReport + Sync,
{
    let in_progress = AtomicUsize::new(0);
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(jobs[i].size));
    let (work, in_progress) = (&work, &in_progress);

    let mut reports: Vec<Option<FileReport>> = vec![None; jobs.len()];
    let finished = quiesce::scope(limit, ctx, |s| {
        let handles: Vec<_> = order
            .iter()
            .map(|&i| {
                let job = &jobs[i];
                let handle = s.spawn(move |ctx| {
                    let k = in_progress.fetch_add(1, Ordering::SeqCst) + 1;
                    log::debug!("start {} (in progress: {k} of {limit})", job.name());
                    let report = work(job, ctx);
                    let k = in_progress.fetch_sub(1, Ordering::SeqCst) - 1;
                    log::debug!(
                        "end {}: {} (in progress: {k} of {limit})",
                        job.name(),
                        report.status
                    );
                    report
                });
                (i, handle)
            })
            .collect();
        handles
            .into_iter()
            .map(|(i, handle)| (i, handle.join()))
            .collect::<Vec<_>>()
    });
    for (i, result) in finished {
        let job = &jobs[i];
        let report = match result {
            Ok(report) => report,
            Err(JobError::NotRun) => blank(job, Status::NotStarted),
            Err(err) => {
                log::error!("{}: {err}", job.name());
                blank(job, Status::Failed(format!("internal error: {err}")))
            }
        };
        reports[i] = Some(report);
    }
    reports
        .into_iter()
        .zip(jobs)
        .map(|(report, job)| report.unwrap_or_else(|| blank(job, Status::NotStarted)))
        .collect()
}

fn blank(job: &Job, status: Status) -> FileReport {
    FileReport {
        name: job.name(),
        rows: 0,
        bytes: 0,
        elapsed: Duration::ZERO,
        status,
    }
}
