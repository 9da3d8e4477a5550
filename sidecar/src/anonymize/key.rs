//! The secret key: from `--key-file` or `QUIESCE_ANON_KEY`, never a
//! default one.
//!
//! A key file is held the way ssh holds a private key:
//!
//! 1. It is opened without blocking (a FIFO with no writer cannot hang the
//!    run) and everything else is decided on the open file (`fstat`), not
//!    on the path, so the file checked is the file read.
//! 2. Only a regular file or a pipe (`--key-file <(pass show key)`) is
//!    read; a directory or a device (`/dev/zero`, a terminal) is refused.
//! 3. A file group or others can access (`mode & 0o077`) is refused with
//!    the `chmod 600` that fixes it, unless `--allow-insecure-key` (then
//!    it is a warning).
//! 4. At most [`MAX_KEY_FILE`] + 1 bytes are ever read: a regular file
//!    larger than that is refused from its size without reading it, a
//!    pipe that gives more is refused after that many bytes.

use std::fmt;
use std::fs::{FileType, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use super::args::Usage;
use super::shown;

/// The environment variable holding the key itself.
pub(crate) const KEY_ENV: &str = "QUIESCE_ANON_KEY";

/// The shortest key accepted, in bytes.
pub(crate) const MIN_KEY_LEN: usize = 16;

/// The largest key file accepted, in bytes (a trailing newline included).
pub(crate) const MAX_KEY_FILE: u64 = 1024;

/// The key's bytes. Its `Debug` does not show them.
pub(crate) struct Key(Vec<u8>);

impl Key {
    /// The content of `key_file` if given, else of `QUIESCE_ANON_KEY`;
    /// trailing `\n`/`\r` are ignored in both, so `echo`ed keys and
    /// `$(cat key)` agree. `allow_insecure` accepts a key file that other
    /// users can access (with a warning).
    ///
    /// # Errors
    ///
    /// No key at all; a key file that cannot be read, is not a regular
    /// file or a pipe, is accessible to group or others (unless
    /// `allow_insecure`) or is larger than [`MAX_KEY_FILE`]; a key shorter
    /// than [`MIN_KEY_LEN`].
    pub(crate) fn load(key_file: Option<&Path>, allow_insecure: bool) -> Result<Key, Usage> {
        let (bytes, source) = match key_file {
            Some(path) => {
                if std::env::var_os(KEY_ENV).is_some() {
                    log::info!(
                        "using the key in {}; {KEY_ENV} is ignored",
                        shown::path(path)
                    );
                }
                let bytes = read_key_file(path, allow_insecure)?;
                (bytes, format!("the key file {}", shown::path(path)))
            }
            None => match std::env::var_os(KEY_ENV) {
                Some(value) => (value.into_encoded_bytes(), KEY_ENV.to_string()),
                None => {
                    return Err(Usage(format!(
                        "no key: give --key-file FILE or set {KEY_ENV} (there is no default \
                         key, on purpose; make one with `openssl rand -hex 32 > anon.key`)"
                    )));
                }
            },
        };
        Key::from_bytes(bytes, &source)
    }

    fn from_bytes(mut bytes: Vec<u8>, source: &str) -> Result<Key, Usage> {
        while matches!(bytes.last(), Some(b'\n' | b'\r')) {
            bytes.pop();
        }
        if bytes.is_empty() {
            return Err(Usage(format!("the key in {source} is empty")));
        }
        if bytes.len() < MIN_KEY_LEN {
            return Err(Usage(format!(
                "the key in {source} is {} long; at least {MIN_KEY_LEN} are needed \
                 (make one with `openssl rand -hex 32 > anon.key`)",
                super::summary::plural(bytes.len() as u64, "byte")
            )));
        }
        Ok(Key(bytes))
    }

    /// The key's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({} bytes)", self.0.len())
    }
}

/// Reads a key file under the rules of the module docs.
fn read_key_file(path: &Path, allow_insecure: bool) -> Result<Vec<u8>, Usage> {
    let name = shown::path(path);
    let cannot = |err: io::Error| Usage(format!("cannot read the key file {name}: {err}"));
    // Rule 1: O_NONBLOCK, so that opening a FIFO nobody writes to returns.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(cannot)?;
    let meta = file.metadata().map_err(cannot)?;
    let kind = meta.file_type();
    // Rule 2.
    if !kind.is_file() && !kind.is_fifo() {
        return Err(Usage(format!(
            "the key file {name} is {}, not a regular file",
            describe(kind)
        )));
    }
    check_mode(&meta, path, allow_insecure)?;
    let too_large = || {
        Usage(format!(
            "the key file {name} is larger than {MAX_KEY_FILE} bytes; a key is at least \
             {MIN_KEY_LEN} bytes, and `openssl rand -hex 32` makes one of 65"
        ))
    };
    // Rule 4, from the size alone.
    if kind.is_file() && meta.len() > MAX_KEY_FILE {
        return Err(too_large());
    }
    if kind.is_fifo() {
        // A pipe is read blocking, as any reader would (to its end).
        let flags = rustix::fs::fcntl_getfl(&file).map_err(|e| cannot(e.into()))?;
        rustix::fs::fcntl_setfl(&file, flags - rustix::fs::OFlags::NONBLOCK)
            .map_err(|e| cannot(e.into()))?;
    }
    let mut bytes = Vec::new();
    file.take(MAX_KEY_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() as u64 > MAX_KEY_FILE {
        return Err(too_large());
    }
    Ok(bytes)
}

/// Rule 3: refuses (or, with `allow_insecure`, warns about) a key file
/// group or others can access.
fn check_mode(meta: &Metadata, path: &Path, allow_insecure: bool) -> Result<(), Usage> {
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    let name = shown::path(path);
    if allow_insecure {
        log::warn!(
            "the key file {name} is accessible to other users (mode {mode:04o}); using it \
             because of --allow-insecure-key"
        );
        return Ok(());
    }
    Err(Usage(format!(
        "the key file {name} is accessible to other users (mode {mode:04o}); a key must be \
         private: run `chmod 600 {}` (or give --allow-insecure-key)",
        shell_quoted(&name)
    )))
}

/// What a file that is neither a regular file nor a pipe is, for a message.
fn describe(kind: FileType) -> &'static str {
    if kind.is_dir() {
        "a directory"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}

/// `text` as one shell word, to paste into a command.
fn shell_quoted(text: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_./-+=:,@%".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_newlines_are_ignored() {
        let key = Key::from_bytes(b"0123456789abcdef\r\n".to_vec(), "test").unwrap();
        assert_eq!(key.bytes(), b"0123456789abcdef");
        assert_eq!(format!("{key:?}"), "Key(16 bytes)");
    }

    #[test]
    fn empty_and_short_keys_are_refused() {
        let empty = Key::from_bytes(b"\n".to_vec(), "test").unwrap_err();
        assert!(empty.0.contains("empty"), "{empty}");
        let short = Key::from_bytes(b"secret".to_vec(), "test").unwrap_err();
        assert!(short.0.contains("6 bytes long"), "{short}");
    }

    #[test]
    fn paths_are_quoted_for_the_shell_when_needed() {
        assert_eq!(shell_quoted("keys/anon.key"), "keys/anon.key");
        assert_eq!(shell_quoted("my keys/it's"), "'my keys/it'\\''s'");
    }
}
