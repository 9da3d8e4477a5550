//! What the `csv` crate reads but does not tell: whether a file starts
//! with a UTF-8 byte order mark and ends its lines with CRLF (both kept in
//! the output), and whether it ends inside a quoted field (an unclosed
//! quote, which the crate silently accepts).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

/// The UTF-8 byte order mark.
pub(crate) const BOM: &[u8] = b"\xEF\xBB\xBF";

/// How far into a file [`Dialect::sniff`] looks for the first line end.
const SNIFF_LEN: u64 = 64 * 1024;

/// The byte-level habits of one file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Dialect {
    /// Starts with a UTF-8 byte order mark.
    pub(crate) bom: bool,
    /// The first line ends with `\r\n`.
    pub(crate) crlf: bool,
}

impl Dialect {
    /// Reads the start of `file` and seeks it back to the beginning.
    pub(crate) fn sniff(file: &mut File) -> io::Result<Dialect> {
        let mut head = Vec::new();
        file.by_ref().take(SNIFF_LEN).read_to_end(&mut head)?;
        file.seek(SeekFrom::Start(0))?;
        Ok(Dialect::of(&head))
    }

    fn of(head: &[u8]) -> Dialect {
        let bom = head.starts_with(BOM);
        let mut in_quotes = false;
        let mut crlf = false;
        for (i, &b) in head.iter().enumerate() {
            match b {
                b'"' => in_quotes = !in_quotes,
                b'\n' if !in_quotes => {
                    crlf = i > 0 && head[i - 1] == b'\r';
                    break;
                }
                _ => {}
            }
        }
        Dialect { bom, crlf }
    }
}

/// `true` if `path`, read from byte `start` (where a record starts) to
/// its end, ends inside a quoted field.
pub(crate) fn ends_inside_quotes(path: &Path, start: u64) -> io::Result<bool> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(start))?;
    ends_inside_quotes_from(BufReader::with_capacity(64 * 1024, file), start == 0)
}

/// The quoting states of `csv-core` (default settings: `"` quotes, `""`
/// escapes one, fields end at `,`, `\r` or `\n`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    FieldStart,
    Unquoted,
    Quoted,
    QuoteInQuoted,
}

fn ends_inside_quotes_from(mut reader: impl BufRead, at_file_start: bool) -> io::Result<bool> {
    let mut state = State::FieldStart;
    let mut skip_bom = at_file_start;
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            return Ok(state == State::Quoted);
        }
        let mut bytes = chunk;
        if std::mem::take(&mut skip_bom) && bytes.starts_with(BOM) {
            bytes = &bytes[BOM.len()..];
        }
        for &b in bytes {
            state = match (state, b) {
                (State::Quoted, b'"') => State::QuoteInQuoted,
                (State::Quoted, _) => State::Quoted,
                (State::FieldStart, b'"') | (State::QuoteInQuoted, b'"') => State::Quoted,
                (_, b',' | b'\r' | b'\n') => State::FieldStart,
                _ => State::Unquoted,
            };
        }
        let n = chunk.len();
        reader.consume(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bom_and_line_ends() {
        assert_eq!(
            Dialect::of(b"a,b\r\n1,2\r\n"),
            Dialect {
                bom: false,
                crlf: true
            }
        );
        assert_eq!(
            Dialect::of(b"\xEF\xBB\xBFa,b\n"),
            Dialect {
                bom: true,
                crlf: false
            }
        );
        assert_eq!(
            Dialect::of(b"\"a\r\nb\",c\n"),
            Dialect {
                bom: false,
                crlf: false
            }
        );
        assert_eq!(Dialect::of(b""), Dialect::default());
    }

    #[test]
    fn unclosed_quotes() {
        let ends = |s: &str| ends_inside_quotes_from(s.as_bytes(), true).unwrap();
        assert!(!ends("1,\"a \"\"b\"\", c\"\n"));
        assert!(!ends("1,ab\"c\n2,x\n"));
        assert!(!ends("\"a\"\"\""));
        assert!(ends("1,\"never closed\n3,x\n"));
        assert!(ends("1,\"a\"\"\n"));
        assert!(ends("\u{feff}\"a"));
    }
}
