//! Finished outputs are flushed to disk and renamed into place here, on a
//! thread of their own (`anon-commit`, a [`quiesce::Consumer`]), while the
//! worker that wrote one goes on with its next file: the fsync is disk
//! time, and a worker waiting for it would leave its core idle (the
//! anonymize bench measures it).
//!
//! The queue is bounded, so a fast worker cannot get far ahead of the
//! disk. A commit that fails turns its file's report into a failure (and
//! removes the temporary file, as [`Pending`] does when dropped).

use std::fs::File;
use std::io;

use quiesce::Consumer;

use crate::atomic_file::Pending;

/// A file waiting for its commit, named as in its report.
type Work = (String, Pending, File);

/// Commits that failed, by report name.
type Failed = Vec<(String, io::Error)>;

/// The commit thread; [`Committer::finish`] waits for the last commit.
pub(crate) struct Committer {
    thread: Option<Consumer<Work, Failed>>,
}

impl Committer {
    /// Starts the thread; at most `queue` files wait for it.
    ///
    /// # Errors
    ///
    /// When the thread cannot be started.
    pub(crate) fn start(queue: usize) -> io::Result<Committer> {
        let thread = Consumer::bounded("anon-commit", queue.max(1), |rx| {
            let mut failed = Vec::new();
            for (name, pending, file) in rx.iter() {
                if let Err(err) = Pending::commit(pending, file) {
                    failed.push((name, err));
                }
            }
            failed
        })?;
        Ok(Committer {
            thread: Some(thread),
        })
    }

    /// Hands a finished output over (waiting while the queue is full).
    ///
    /// # Errors
    ///
    /// When the commit thread is gone (it panicked); the output is then
    /// dropped, which removes its temporary file.
    pub(crate) fn submit(&self, name: String, pending: Pending, file: File) -> io::Result<()> {
        let thread = self.thread.as_ref().expect("submit before finish");
        thread
            .send((name, pending, file))
            .map_err(|_| io::Error::other("the commit thread is gone"))
    }

    /// Waits for every commit; returns the files whose commit failed, by
    /// report name.
    pub(crate) fn finish(mut self) -> Failed {
        self.wait()
    }

    fn wait(&mut self) -> Failed {
        match self.thread.take().map(Consumer::finish) {
            Some(Ok(failed)) => failed,
            Some(Err(err)) => {
                log::error!("the commit thread failed: {err}");
                Vec::new()
            }
            None => Vec::new(),
        }
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        for (name, err) in self.wait() {
            log::error!("{name}: cannot write the output: {err}");
        }
    }
}
