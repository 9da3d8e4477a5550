//! Text from the inputs, made safe to print: file names, header names and
//! anything else read from a file or a directory listing reach the
//! terminal only through these functions.
//!
//! A file name or a header is whatever bytes someone put there; printed
//! raw, an escape sequence in it (`\x1b]0;…\x07`, `\x1b[2J`) is obeyed by
//! the terminal: it can retitle the window, clear the screen, hide the
//! rest of a line or rewrite what an earlier line said. So control
//! characters (C0, DEL, C1), the Unicode marks that reorder or hide text
//! (bidirectional overrides and isolates), and bytes that are not UTF-8
//! are shown escaped, as `\x1b`, `\u{202e}`, `\xff`. Everything else,
//! including non-ASCII letters, is shown as it is.

use std::fmt::Write as _;
use std::path::Path;

/// `bytes` as text, escaped.
pub(crate) fn bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            push_char(&mut out, c);
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// `text`, escaped.
pub(crate) fn text(text: &str) -> String {
    bytes(text.as_bytes())
}

/// A path, escaped (its bytes as the system gave them, not a lossy
/// conversion).
pub(crate) fn path(path: &Path) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        bytes(path.as_os_str().as_bytes())
    }
    #[cfg(not(unix))]
    {
        text(&path.to_string_lossy())
    }
}

fn push_char(out: &mut String, c: char) {
    if c.is_control() {
        // C0, DEL and C1: all below U+0100.
        let _ = write!(out, "\\x{:02x}", u32::from(c));
    } else if is_reordering(c) {
        let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
    } else {
        out.push(c);
    }
}

/// The invisible marks that change how the text around them is shown:
/// bidirectional embeddings, overrides and isolates, the directional and
/// zero-width marks, and the byte order mark.
fn is_reordering(c: char) -> bool {
    matches!(
        c,
        '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_and_bad_bytes_are_escaped() {
        assert_eq!(bytes(b"a\x1b[2Jb\x07\x7f"), "a\\x1b[2Jb\\x07\\x7f");
        assert_eq!(bytes(b"tab\there\nnext"), "tab\\x09here\\x0anext");
        assert_eq!(bytes(b"\xff\xfe ok"), "\\xff\\xfe ok");
        assert_eq!(text("\u{9b}31m"), "\\x9b31m");
        assert_eq!(text("abc\u{202e}fdp.exe"), "abc\\u{202e}fdp.exe");
    }

    #[test]
    fn ordinary_text_is_unchanged() {
        let plain = "site-a/visits 2026 (é, ü, 日本).csv";
        assert_eq!(text(plain), plain);
        assert_eq!(path(Path::new(plain)), plain);
    }
}
