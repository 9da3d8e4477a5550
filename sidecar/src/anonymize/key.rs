//! The secret key: from `--key-file` or `QUIESCE_ANON_KEY`, never a
//! default one.

use std::fmt;
use std::path::Path;

use super::args::Usage;

/// The environment variable holding the key itself.
pub(crate) const KEY_ENV: &str = "QUIESCE_ANON_KEY";

/// The shortest key accepted, in bytes.
pub(crate) const MIN_KEY_LEN: usize = 16;

/// The key's bytes. Its `Debug` does not show them.
pub(crate) struct Key(Vec<u8>);

impl Key {
    /// The content of `key_file` if given, else of `QUIESCE_ANON_KEY`;
    /// trailing `\n`/`\r` are ignored in both, so `echo`ed keys and
    /// `$(cat key)` agree.
    ///
    /// # Errors
    ///
    /// No key at all, an unreadable file, a key shorter than
    /// [`MIN_KEY_LEN`].
    pub(crate) fn load(key_file: Option<&Path>) -> Result<Key, Usage> {
        let (bytes, source) = match key_file {
            Some(path) => {
                if std::env::var_os(KEY_ENV).is_some() {
                    log::info!("using the key in {}; {KEY_ENV} is ignored", path.display());
                }
                warn_if_readable_by_others(path);
                let bytes = std::fs::read(path).map_err(|err| {
                    Usage(format!(
                        "cannot read the key file {}: {err}",
                        path.display()
                    ))
                })?;
                (bytes, format!("the key file {}", path.display()))
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
                "the key in {source} is {} bytes long; at least {MIN_KEY_LEN} are needed \
                 (make one with `openssl rand -hex 32 > anon.key`)",
                bytes.len()
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

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            log::warn!(
                "the key file {} can be read by other users (mode {:o}); `chmod 600` it",
                path.display(),
                mode & 0o777
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

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
}
