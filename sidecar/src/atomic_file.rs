//! A file that appears whole or not at all: written to a hidden temporary
//! file beside its final name, flushed to disk, then renamed over it, and
//! the directory flushed. Dropped before [`Pending::commit`] (an error, a
//! cancel, a panic unwinding), it removes the temporary file. The one way
//! the binary writes a file others read: anonymize's outputs, serve's
//! summaries and `listen.addr`.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

/// Marks temporary outputs; never ends in `.csv`, so a later run that
/// searches the same directory does not take one for an input.
const TEMP_MARK: &str = ".quiesce-tmp-";

/// A temporary output waiting to be renamed into place.
#[derive(Debug)]
pub(crate) struct Pending {
    temp: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl Pending {
    /// Creates `.{name}.quiesce-tmp-{pid}` beside `target` (and the
    /// directories leading to it) and opens it for writing.
    ///
    /// # Errors
    ///
    /// When the directory or the file cannot be created.
    pub(crate) fn create(target: &Path) -> io::Result<(Pending, File)> {
        let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the output path has no file name",
            ));
        };
        fs::create_dir_all(dir)?;
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!("{TEMP_MARK}{}", std::process::id()));
        let temp = dir.join(temp_name);
        let file = match create_new(&temp) {
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                // Left by an earlier process with our pid, killed hard.
                log::debug!("replacing a stale {}", temp.display());
                fs::remove_file(&temp)?;
                create_new(&temp)?
            }
            other => other?,
        };
        let pending = Pending {
            temp,
            target: target.to_path_buf(),
            committed: false,
        };
        Ok((pending, file))
    }

    /// Flushes `file` (the one [`create`](Pending::create) returned, all
    /// written) to disk, renames it into place, and flushes the directory
    /// entry.
    ///
    /// # Errors
    ///
    /// When the flush or the rename fails; the temporary file is removed.
    pub(crate) fn commit(mut self, file: File) -> io::Result<()> {
        file.sync_all()?;
        drop(file);
        fs::rename(&self.temp, &self.target)?;
        self.committed = true;
        if let Some(dir) = self.target.parent()
            && let Err(err) = File::open(dir).and_then(|d| d.sync_all())
        {
            log::warn!("cannot flush the directory {}: {err}", dir.display());
        }
        Ok(())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        match fs::remove_file(&self.temp) {
            Ok(()) => log::debug!("removed the partial output {}", self.temp.display()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => log::warn!(
                "cannot remove the partial output {}: {err}",
                self.temp.display()
            ),
        }
    }
}

/// Writes `bytes` to `path` so that it is whole or absent, even after a
/// crash.
///
/// # Errors
///
/// When the temporary file cannot be created, written, flushed or renamed
/// (it is then removed).
pub(crate) fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let (pending, mut file) = Pending::create(path)?;
    io::Write::write_all(&mut file, bytes)?;
    pending.commit(file)
}

fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new().write(true).create_new(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("quiesce-output-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn commit_renames_and_drop_removes() {
        use std::io::Write;
        let dir = scratch("unit");
        let target = dir.join("sub").join("a.csv");
        let (pending, mut file) = Pending::create(&target).unwrap();
        file.write_all(b"x\n").unwrap();
        pending.commit(file).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"x\n");

        let (pending, _file) = Pending::create(&dir.join("b.csv")).unwrap();
        drop(pending);
        let mut left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["sub"]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
