//! The input side of one file: a reader that counts what it hands to the
//! CSV parser and refuses a record that grows past a limit, so an unclosed
//! quote early in a 1 GB file fails the file instead of filling memory.

use std::io::{self, Read};

/// Bytes one record may span before the file fails.
pub(crate) const MAX_RECORD: u64 = 64 * 1024 * 1024;

/// Wraps the file given to the `csv` reader.
#[derive(Debug)]
pub(crate) struct Source<R> {
    inner: R,
    /// Bytes handed out so far.
    read: u64,
    /// Where the record being parsed starts.
    record_start: u64,
    limit: u64,
    tripped: bool,
}

impl<R: Read> Source<R> {
    /// Reads `inner`, allowing records of `limit` bytes (plus what the
    /// parser's buffer reads ahead).
    pub(crate) fn new(inner: R, limit: u64) -> Source<R> {
        Source {
            inner,
            read: 0,
            record_start: 0,
            limit,
            tripped: false,
        }
    }

    /// The parser is about to read the record starting at byte `start`.
    pub(crate) fn record_starts(&mut self, start: u64) {
        self.record_start = start;
    }

    /// What it wraps (the file, to read a line number from it again).
    pub(crate) fn inner(&self) -> &R {
        &self.inner
    }

    /// `true` once a record went past the limit (the read error was ours).
    pub(crate) fn tripped(&self) -> bool {
        self.tripped
    }
}

impl<R: Read> Read for Source<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.read.saturating_sub(self.record_start) > self.limit {
            self.tripped = true;
            return Err(io::Error::other("record too long"));
        }
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_record_trips_the_limit() {
        let data = [b'x'; 100];
        let mut source = Source::new(&data[..], 10);
        let mut buf = [0u8; 16];
        assert_eq!(source.read(&mut buf).unwrap(), 16);
        assert!(source.read(&mut buf).is_err());
        assert!(source.tripped());
        source.record_starts(16);
        source.tripped = false;
        assert_eq!(source.read(&mut buf).unwrap(), 16);
    }
}
