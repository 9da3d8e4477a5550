//! Finished outputs are flushed to disk and renamed into place here, on a
//! thread of their own (`quiesce-anon-commit`), while the worker that wrote
//! one goes on with its next file: the fsync is disk time, and a worker
//! waiting for it would leave its core idle (on the benchmark's disk the
//! fsyncs were a fifth of the run).
//!
//! The queue is bounded, so a fast worker cannot get far ahead of the
//! disk. A commit that fails turns its file's report into a failure (and
//! removes the temporary file, as [`Pending`] does when dropped).

use std::fs::File;
use std::io;
use std::thread::JoinHandle;

use crossbeam_channel::Sender;

use super::output::Pending;

/// A file waiting for its commit, named as in its report.
type Work = (String, Pending, File);

/// The commit thread; [`Committer::finish`] waits for the last commit.
pub(crate) struct Committer {
    tx: Option<Sender<Work>>,
    thread: Option<JoinHandle<Vec<(String, io::Error)>>>,
}

impl Committer {
    /// Starts the thread; at most `queue` files wait for it.
    ///
    /// # Errors
    ///
    /// When the thread cannot be started.
    pub(crate) fn start(queue: usize) -> io::Result<Committer> {
        let (tx, rx) = crossbeam_channel::bounded::<Work>(queue.max(1));
        let thread = std::thread::Builder::new()
            .name("quiesce-anon-commit".to_string())
            .spawn(move || {
                let mut failed = Vec::new();
                for (name, pending, file) in rx.iter() {
                    if let Err(err) = pending.commit(file) {
                        failed.push((name, err));
                    }
                }
                failed
            })?;
        Ok(Committer {
            tx: Some(tx),
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
        let tx = self.tx.as_ref().expect("submit before finish");
        tx.send((name, pending, file))
            .map_err(|_| io::Error::other("the commit thread is gone"))
    }

    /// Waits for every commit; returns the files whose commit failed, by
    /// report name.
    pub(crate) fn finish(mut self) -> Vec<(String, io::Error)> {
        self.wait()
    }

    fn wait(&mut self) -> Vec<(String, io::Error)> {
        drop(self.tx.take());
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(failed)) => failed,
            Some(Err(_)) => {
                log::error!("the commit thread panicked");
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
