//! What happened to each file, the table printed at the end, and the exit
//! status.

use std::fmt;
use std::process::ExitCode;
use std::time::Duration;

use indicatif::HumanBytes;

/// Every file was anonymized.
pub(crate) const EXIT_DONE: u8 = 0;
/// Some files failed; the others were written.
pub(crate) const EXIT_FAILED: u8 = 1;
/// Bad usage (clap uses 2 as well).
pub(crate) const EXIT_USAGE: u8 = 2;
/// Stopped by a signal or the deadline before every file was done.
pub(crate) const EXIT_STOPPED: u8 = 3;

/// The fate of one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    /// Written whole and renamed into place.
    Done,
    /// Not written, for this reason.
    Failed(String),
    /// Stopped while in progress (signal or deadline); not written.
    Cancelled,
    /// Never started: the run was stopped first.
    NotStarted,
}

impl Status {
    /// Cut short by a signal or the deadline.
    pub(crate) fn is_stopped(&self) -> bool {
        matches!(self, Status::Cancelled | Status::NotStarted)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Done => f.write_str("done"),
            Status::Failed(why) => write!(f, "failed: {why}"),
            Status::Cancelled => f.write_str("cancelled (partial output removed)"),
            Status::NotStarted => f.write_str("not started"),
        }
    }
}

/// One row of the summary.
#[derive(Clone, Debug)]
pub(crate) struct FileReport {
    /// The input, as named.
    pub(crate) name: String,
    /// Data rows written (or read, for a file that did not finish).
    pub(crate) rows: u64,
    /// Input bytes read.
    pub(crate) bytes: u64,
    pub(crate) elapsed: Duration,
    pub(crate) status: Status,
}

/// Why the run stopped early, if it did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum EarlyStop {
    Signal(String),
    Deadline(Duration),
}

impl fmt::Display for EarlyStop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EarlyStop::Signal(name) => write!(f, "stopped by {name}"),
            EarlyStop::Deadline(d) => write!(
                f,
                "stopped: the --timeout of {} passed",
                humantime::format_duration(*d)
            ),
        }
    }
}

/// The whole run.
#[derive(Debug)]
pub(crate) struct Summary {
    pub(crate) files: Vec<FileReport>,
    pub(crate) elapsed: Duration,
    pub(crate) stop: Option<EarlyStop>,
}

impl Summary {
    /// 3 if any file was cut short, else 1 if any failed, else 0.
    pub(crate) fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.exit_status())
    }

    fn exit_status(&self) -> u8 {
        if self.files.iter().any(|f| f.status.is_stopped()) {
            EXIT_STOPPED
        } else if self
            .files
            .iter()
            .any(|f| matches!(f.status, Status::Failed(_)))
        {
            EXIT_FAILED
        } else {
            EXIT_DONE
        }
    }

    fn count(&self, pred: impl Fn(&Status) -> bool) -> usize {
        self.files.iter().filter(|f| pred(&f.status)).count()
    }

    /// The closing line: counts, totals, and why it stopped early.
    pub(crate) fn verdict(&self) -> String {
        let done = self.count(|s| *s == Status::Done);
        let failed = self.count(|s| matches!(s, Status::Failed(_)));
        let cancelled = self.count(|s| *s == Status::Cancelled);
        let not_started = self.count(|s| *s == Status::NotStarted);
        let rows: u64 = self.files.iter().map(|f| f.rows).sum();
        let bytes: u64 = self.files.iter().map(|f| f.bytes).sum();
        let secs = self.elapsed.as_secs_f64();
        let rate = if secs > 0.0 { bytes as f64 / secs } else { 0.0 };
        let mut line = format!(
            "{done} of {} done, {failed} failed, {cancelled} cancelled, {not_started} not started; \
             {} read, {} in {} ({}/s)",
            plural(self.files.len() as u64, "file"),
            plural(rows, "row"),
            HumanBytes(bytes),
            seconds(self.elapsed),
            HumanBytes(rate as u64),
        );
        if let Some(stop) = &self.stop {
            line.push_str(&format!("\n{stop}"));
            if not_started + cancelled == 0 {
                line.push_str(" after every file was done");
            } else {
                line.push_str(": only the files marked done were written");
            }
        }
        line
    }
}

impl fmt::Display for Summary {
    /// A table: file, rows, bytes, time, status; then the verdict.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows: Vec<[String; 5]> = self
            .files
            .iter()
            .map(|r| {
                [
                    r.name.clone(),
                    r.rows.to_string(),
                    HumanBytes(r.bytes).to_string(),
                    seconds(r.elapsed),
                    r.status.to_string(),
                ]
            })
            .collect();
        let head = ["FILE", "ROWS", "BYTES", "TIME", "STATUS"].map(String::from);
        let mut width = [0usize; 4];
        for row in std::iter::once(&head).chain(&rows) {
            for (w, cell) in width.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        for row in std::iter::once(&head).chain(&rows) {
            writeln!(
                f,
                "{:<w0$}  {:>w1$}  {:>w2$}  {:>w3$}  {}",
                row[0],
                row[1],
                row[2],
                row[3],
                row[4],
                w0 = width[0],
                w1 = width[1],
                w2 = width[2],
                w3 = width[3],
            )?;
        }
        writeln!(f, "{}", self.verdict())
    }
}

/// `1 row`, `2 rows`.
pub(crate) fn plural(n: u64, what: &str) -> String {
    if n == 1 {
        format!("{n} {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// `0.42s`, `12.3s`, `4m 05s`.
pub(crate) fn seconds(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 10.0 {
        format!("{secs:.2}s")
    } else if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        format!("{}m {:02}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(name: &str, status: Status) -> FileReport {
        FileReport {
            name: name.to_string(),
            rows: 10,
            bytes: 2048,
            elapsed: Duration::from_millis(250),
            status,
        }
    }

    #[test]
    fn exit_status_precedence() {
        let mut s = Summary {
            files: vec![report("a.csv", Status::Done)],
            elapsed: Duration::from_secs(1),
            stop: None,
        };
        assert_eq!(s.exit_status(), EXIT_DONE);
        s.files
            .push(report("b.csv", Status::Failed("line 3: bad".into())));
        assert_eq!(s.exit_status(), EXIT_FAILED);
        s.files.push(report("c.csv", Status::NotStarted));
        assert_eq!(s.exit_status(), EXIT_STOPPED);
    }

    #[test]
    fn table_is_aligned() {
        let s = Summary {
            files: vec![
                report("site-a/visits.csv", Status::Done),
                report("b.csv", Status::Cancelled),
            ],
            elapsed: Duration::from_secs(1),
            stop: Some(EarlyStop::Signal("SIGINT".into())),
        };
        let text = s.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("FILE               ROWS"), "{text}");
        assert!(lines[1].ends_with("done"), "{text}");
        assert!(lines[2].starts_with("b.csv  "), "{text}");
        assert!(
            text.contains("stopped by SIGINT: only the files marked done"),
            "{text}"
        );
    }
}
