//! Progress on stderr: a bar (files done, bytes, rows/s) when stderr is a
//! terminal, else one plain line per finished file; with `--quiet`, only
//! the files that failed.
//!
//! Workers add to atomic counters; the bar is redrawn by the caller's
//! ticker thread ([`Progress::tick`]), never by indicatif's own thread.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use indicatif::{HumanBytes, HumanCount, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::summary::{FileReport, Status, plural, seconds};

const BAR_TEMPLATE: &str = "{elapsed_precise} [{wide_bar}] {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec}) {msg}";

enum Mode {
    Quiet,
    Lines,
    Bar(ProgressBar),
}

/// Shared by the workers of one run.
pub(crate) struct Progress {
    mode: Mode,
    files_total: usize,
    files_done: AtomicUsize,
    rows: AtomicU64,
    bytes: AtomicU64,
    started: Instant,
}

impl Progress {
    /// Chooses the mode from `quiet` and whether stderr is a terminal.
    pub(crate) fn new(quiet: bool, files_total: usize, bytes_total: u64) -> Progress {
        let mode = if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            let bar =
                ProgressBar::with_draw_target(Some(bytes_total), ProgressDrawTarget::stderr());
            match ProgressStyle::with_template(BAR_TEMPLATE) {
                Ok(style) => bar.set_style(style.progress_chars("=> ")),
                Err(err) => log::debug!("progress bar template: {err}"),
            }
            Mode::Bar(bar)
        } else {
            Mode::Lines
        };
        let progress = Progress {
            mode,
            files_total,
            files_done: AtomicUsize::new(0),
            rows: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            started: Instant::now(),
        };
        progress.tick();
        progress
    }

    /// `true` when [`tick`](Progress::tick) should be called periodically.
    pub(crate) fn has_bar(&self) -> bool {
        matches!(self.mode, Mode::Bar(_))
    }

    /// Counts `rows` more rows and `bytes` more input bytes.
    pub(crate) fn advance(&self, rows: u64, bytes: u64) {
        self.rows.fetch_add(rows, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A file ended (done, failed or cancelled): tells the user.
    pub(crate) fn finished(&self, report: &FileReport) {
        self.files_done.fetch_add(1, Ordering::Relaxed);
        let line = match &report.status {
            Status::Done => format!(
                "done: {} ({}, {}, {})",
                report.name,
                plural(report.rows, "row"),
                HumanBytes(report.bytes),
                seconds(report.elapsed)
            ),
            Status::Failed(why) => format!("failed: {}: {why}", report.name),
            Status::Cancelled => format!(
                "cancelled: {} after {} (partial output removed)",
                report.name,
                plural(report.rows, "row")
            ),
            Status::NotStarted => return,
        };
        match &self.mode {
            Mode::Quiet => {
                if let Status::Failed(why) = &report.status {
                    say(&format!("quiesce: {}: {why}", report.name));
                }
            }
            Mode::Lines => say(&line),
            Mode::Bar(bar) => {
                bar.println(line);
                self.tick();
            }
        }
    }

    /// Redraws the bar (no-op without one).
    pub(crate) fn tick(&self) {
        let Mode::Bar(bar) = &self.mode else {
            return;
        };
        let rows = self.rows.load(Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { rows as f64 / secs } else { 0.0 };
        bar.set_position(self.bytes.load(Ordering::Relaxed));
        bar.set_message(format!(
            "{}/{} files, {} rows/s",
            self.files_done.load(Ordering::Relaxed),
            self.files_total,
            HumanCount(rate as u64)
        ));
    }

    /// Removes the bar, before the summary is printed.
    pub(crate) fn clear(&self) {
        if let Mode::Bar(bar) = &self.mode {
            bar.finish_and_clear();
        }
    }
}

/// Writes a line to stderr; a closed stderr is not worth a panic.
pub(crate) fn say(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Writes `text` to stdout; a closed stdout (`| head`) is not an error.
pub(crate) fn show(text: &str) {
    let mut out = std::io::stdout().lock();
    if let Err(err) = out.write_all(text.as_bytes()).and_then(|()| out.flush())
        && err.kind() != std::io::ErrorKind::BrokenPipe
    {
        log::warn!("cannot write the summary to stdout: {err}");
    }
}
