//! One file, streamed row by row: read a record, replace the identifier
//! fields by their pseudonyms, leave out the dropped ones, write it. Memory
//! stays flat (two buffers, two records, a bounded cache); the context is
//! checked every [`CHECK_EVERY`] rows.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt as _;
use std::time::Instant;

use csv::{ByteRecord, Reader, Terminator};
use quiesce::Context;

use super::columns::{Action, Columns};
use super::committer::Committer;
use super::dialect::{self, BOM, Dialect};
use super::inputs::{FileId, Job};
use super::progress::Progress;
use super::pseudonym::Pseudonymizer;
use super::shown;
use super::source::{MAX_RECORD, Source};
use super::summary::{FileReport, Status, plural};
use crate::atomic_file::Pending;

/// Rows between two looks at the context (and two progress updates).
const CHECK_EVERY: u64 = 256;
/// Read and write buffer size.
const BUFFER: usize = 256 * 1024;

/// Why a file did not finish.
enum Unfinished {
    Cancelled,
    Failed(String),
}

/// Rows and input bytes done so far, and what of them the progress
/// counters have been told.
struct Tally<'a> {
    progress: &'a Progress,
    rows: u64,
    bytes: u64,
    told: (u64, u64),
}

impl Tally<'_> {
    /// Tells the progress counters about the rows since the last call and
    /// the bytes up to `bytes`.
    fn publish(&mut self, bytes: u64) {
        self.bytes = self.bytes.max(bytes);
        let (rows, told_bytes) = self.told;
        self.progress
            .advance(self.rows - rows, self.bytes.saturating_sub(told_bytes));
        self.told = (self.rows, self.bytes);
    }
}

/// What one file needs besides itself.
pub(crate) struct Transform<'a> {
    pub(crate) columns: &'a Columns,
    pub(crate) pseudonyms: &'a Pseudonymizer,
    pub(crate) progress: &'a Progress,
    pub(crate) committer: &'a Committer,
}

impl Transform<'_> {
    /// Anonymizes `job.input` into `job.output`, stopping between rows once
    /// `ctx` is done; reports what happened (the output exists only if the
    /// status is [`Status::Done`]).
    pub(crate) fn file(&self, job: &Job, ctx: &Context) -> FileReport {
        let started = Instant::now();
        let mut tally = Tally {
            progress: self.progress,
            rows: 0,
            bytes: 0,
            told: (0, 0),
        };
        let status = match self.stream(job, ctx, &mut tally) {
            Ok(()) => Status::Done,
            Err(Unfinished::Cancelled) => Status::Cancelled,
            Err(Unfinished::Failed(why)) => {
                // The rest of the file counts as handled, for the bar.
                tally.publish(0);
                let rest = job.size.saturating_sub(tally.bytes);
                self.progress.advance(0, rest);
                Status::Failed(why)
            }
        };
        let report = FileReport {
            name: job.name(),
            rows: tally.rows,
            bytes: tally.bytes,
            elapsed: started.elapsed(),
            status,
        };
        self.progress.finished(&report);
        report
    }

    fn stream(&self, job: &Job, ctx: &Context, tally: &mut Tally<'_>) -> Result<(), Unfinished> {
        let mut file = File::open(&job.input).map_err(|e| fail(format!("cannot open: {e}")))?;
        // Invariant 2 of `inputs`: the file read is the file found and
        // checked (a path swapped since, e.g. for a link, is not read).
        let meta = file
            .metadata()
            .map_err(|e| fail(format!("cannot open: {e}")))?;
        if FileId::of(&meta) != job.id {
            return Err(fail(
                "not read: it was replaced since the run started".to_string(),
            ));
        }
        let dialect = Dialect::sniff(&mut file).map_err(|e| fail(format!("cannot read: {e}")))?;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .buffer_capacity(BUFFER)
            .from_reader(Source::new(file, MAX_RECORD));

        let mut header = ByteRecord::new();
        if !read(&mut reader, &mut header)? {
            return Err(fail("the file is empty: no header row".to_string()));
        }
        let plan = self.columns.plan(&header).map_err(Unfinished::Failed)?;

        let (pending, out_file) = Pending::create(&job.output)
            .map_err(|e| fail(format!("cannot create {}: {e}", shown::path(&job.output))))?;
        let mut writer = writer(out_file, dialect)
            .map_err(|e| fail(format!("cannot write {}: {e}", shown::path(&job.output))))?;
        let write_err =
            |e: csv::Error| fail(format!("cannot write {}: {e}", shown::path(&job.output)));

        writer
            .write_byte_record(&header_out(&header, &plan))
            .map_err(write_err)?;

        let mut cache = self.pseudonyms.cache();
        let (mut row, mut out) = (ByteRecord::new(), ByteRecord::new());
        let (mut last_start, mut last_line) = (0u64, 1u64);
        loop {
            let next = reader.position().byte();
            reader.get_mut().record_starts(next);
            match read(&mut reader, &mut row) {
                Ok(true) => {}
                Ok(false) => break,
                Err(stop) => {
                    tally.publish(reader.position().byte());
                    return Err(stop);
                }
            }
            tally.rows += 1;
            if let Some(pos) = row.position() {
                (last_start, last_line) = (pos.byte(), pos.line());
            }
            out.clear();
            for (field, action) in row.iter().zip(&plan) {
                match action {
                    Action::Keep => out.push_field(field),
                    Action::Pseudonymize => cache.push(self.pseudonyms, field, &mut out),
                    Action::Drop => {}
                }
            }
            writer.write_byte_record(&out).map_err(write_err)?;
            if tally.rows.is_multiple_of(CHECK_EVERY) {
                tally.publish(reader.position().byte());
                if ctx.is_done() {
                    return Err(Unfinished::Cancelled);
                }
            }
        }
        tally.publish(reader.position().byte());

        if dialect::ends_inside_quotes(&job.input, last_start)
            .map_err(|e| fail(format!("cannot read: {e}")))?
        {
            let line = physical_line(reader.get_ref().inner(), last_start).unwrap_or(last_line);
            return Err(fail(format!(
                "line {line}: a quoted field is never closed (unclosed quote)"
            )));
        }
        let out_file = writer.into_inner().map_err(|e| {
            fail(format!(
                "cannot write {}: {}",
                shown::path(&job.output),
                e.error()
            ))
        })?;
        // The fsync and rename happen on the commit thread; a failure there
        // turns this report into a failure afterwards.
        self.committer
            .submit(job.name(), pending, out_file)
            .map_err(|e| fail(format!("cannot write {}: {e}", shown::path(&job.output))))
    }
}

/// The header without the dropped columns (identifier columns keep their
/// names).
fn header_out(header: &ByteRecord, plan: &[Action]) -> ByteRecord {
    header
        .iter()
        .zip(plan)
        .filter(|(_, action)| **action != Action::Drop)
        .map(|(field, _)| field)
        .collect()
}

fn fail(why: String) -> Unfinished {
    Unfinished::Failed(why)
}

/// A CSV writer keeping the input's byte order mark and line ends.
fn writer(mut file: File, dialect: Dialect) -> std::io::Result<csv::Writer<File>> {
    if dialect.bom {
        file.write_all(BOM)?;
    }
    let terminator = if dialect.crlf {
        Terminator::CRLF
    } else {
        Terminator::Any(b'\n')
    };
    Ok(csv::WriterBuilder::new()
        .terminator(terminator)
        .buffer_capacity(BUFFER)
        .from_writer(file))
}

/// Reads the next record; `Ok(false)` at the end. A malformed record fails
/// the file with its line number: the physical one, counted in the file
/// itself, since the parser's own count is off after a `\r\n` line end.
fn read(reader: &mut Reader<Source<File>>, record: &mut ByteRecord) -> Result<bool, Unfinished> {
    let start = reader.position().clone();
    reader.read_byte_record(record).map_err(|err| {
        let line_of = |pos: &csv::Position| {
            physical_line(reader.get_ref().inner(), pos.byte()).unwrap_or(pos.line())
        };
        let line = line_of(&start);
        if reader.get_ref().tripped() {
            return fail(format!(
                "line {line}: a record longer than {} MiB (an unclosed quote?)",
                MAX_RECORD / (1024 * 1024)
            ));
        }
        match err.kind() {
            csv::ErrorKind::UnequalLengths {
                pos,
                expected_len,
                len,
            } => fail(format!(
                "line {}: {} where the header has {expected_len}",
                pos.as_ref().map_or(line, line_of),
                plural(*len, "field")
            )),
            csv::ErrorKind::Io(e) => fail(format!("cannot read (near line {line}): {e}")),
            _ => fail(format!("line {line}: {err}")),
        }
    })
}

/// The physical line of the record the parser places at byte `offset` of
/// `file`: one more than the `\n` bytes before its first byte, whatever the
/// line ends (`\n`, `\r\n`, or a line break in a quoted field). The parser
/// places a record just after the previous record's first terminator byte
/// (on the `\n` of a `\r\n`, or on blank lines it skips), so line-end bytes
/// at `offset` are counted too. Read with `pread`, leaving the parser's
/// position alone; only called when a file fails.
fn physical_line(file: &File, offset: u64) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let (mut at, mut newlines) = (0u64, 0u64);
    loop {
        let n = file.read_at(&mut buf, at)?;
        if n == 0 {
            return Ok(newlines + 1);
        }
        for (i, &b) in buf[..n].iter().enumerate() {
            let here = at + i as u64;
            if here >= offset && b != b'\r' && b != b'\n' {
                return Ok(newlines + 1);
            }
            newlines += u64::from(b == b'\n');
        }
        at += n as u64;
    }
}
