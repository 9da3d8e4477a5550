//! The `store-sync` thread: flushes the WAL, then calls the replies of the
//! commands it covers (invariants 2, 3 and 6 of the [store](super)).

use std::sync::Arc;
use std::time::Instant;

use quiesce::{Consumer, Panic};

use super::{Failure, LOG_EVERY, Live, Outcome, Reply, Throttle};

/// A committed batch's replies, each with its outcome.
pub(super) type Replies = Vec<(Reply, Result<Outcome, Failure>)>;

/// Makes commits durable and replies to their callers, on a thread of its own
/// (`store-sync`), so that the writer can run the next transaction while
/// the disk flushes the last one.
///
/// How it stays as durable as `synchronous = FULL`: the writer connection
/// runs with `synchronous = NORMAL`, so a commit writes its WAL frames
/// (into the OS page cache) without flushing them; this thread then calls
/// `fdatasync` on the WAL file — which flushes every frame written before
/// the call, whatever the file descriptor — and only then replies. One
/// flush covers every batch handed over meanwhile. SQLite itself still
/// flushes the WAL before a checkpoint copies it into the database, the
/// database after, and the WAL header when the WAL is reused; and a
/// process crash (SIGKILL) loses nothing in either mode: the frames are in
/// the page cache. No caller hears of a commit before it is on disk.
///
/// It also takes the wake-ups off the writer: waking thirty callers is
/// thirty system calls, which the writer would otherwise make between two
/// commits.
///
/// A reply that panics is logged and the others are still called: the
/// thread outlives it. If the thread dies anyway, [`Syncer::deliver`] fails
/// every reply it is given and [`Syncer::is_alive`] turns false, and the
/// store service stops with an error (the supervisor then shuts the
/// sidecar down, readiness false) rather than fail every commit as a
/// failure while it looks healthy.
pub(super) struct Syncer {
    thread: Consumer<Replies>,
}

impl Syncer {
    /// `wal`: the WAL file to flush before replying (`None` when each
    /// commit flushes itself, `synchronous = FULL`).
    pub(super) fn start(wal: Option<std::fs::File>, shared: Arc<Live>) -> std::io::Result<Syncer> {
        let thread = Consumer::unbounded("store-sync", move |rx| {
            let mut failures = Throttle::new(LOG_EVERY);
            while let Ok(first) = rx.recv() {
                let mut batches = vec![first];
                batches.extend(rx.try_iter());
                let flushed = match &wal {
                    None => Ok(()),
                    Some(wal) => {
                        let started = Instant::now();
                        let flushed = wal.sync_data();
                        shared
                            .metrics
                            .fsync_seconds
                            .observe(started.elapsed().as_secs_f64());
                        flushed.map_err(|e| {
                            let err = format!("flushing to disk failed: {e}");
                            // (7): the store cannot commit durably.
                            shared.health.failed(&err);
                            shared.metrics.store_failures.inc();
                            shared.metrics.store_healthy.set(0);
                            if let Some(n) = failures.hit(Instant::now()) {
                                log::error!("{err} ({n} time(s) since the last such line)");
                            }
                            err
                        })
                    }
                };
                // (2): flushed (or failed to) before any reply is called;
                // (8): committed, not flushed: it may or may not last.
                for (reply, outcome) in batches.into_iter().flatten() {
                    let outcome = match (&flushed, outcome) {
                        (Err(err), Ok(_)) => Err(Failure::Unknown(err.clone())),
                        (_, outcome) => outcome,
                    };
                    give(reply, outcome);
                }
            }
        })?;
        Ok(Syncer { thread })
    }

    pub(super) fn deliver(&self, replies: Replies) {
        if let Err(unsent) = self.thread.send(replies) {
            // The thread is gone: nothing is flushed, say so (2, 3).
            for (reply, outcome) in unsent.into_inner() {
                let err = "the store cannot flush to disk".to_string();
                let failure = match outcome {
                    // (8): committed, its flush unknown.
                    Ok(_) => Failure::Unknown(err),
                    Err(failure) => failure,
                };
                give(reply, Err(failure));
            }
        }
    }

    /// `false` once the thread has ended while the store still runs.
    pub(super) fn is_alive(&self) -> bool {
        !self.thread.is_finished()
    }

    /// Waits until every reply handed over is called.
    pub(super) fn finish(self) {
        if let Err(err) = self.thread.finish() {
            log::error!("the store-sync thread failed: {err}");
        }
    }
}

/// Calls one reply, catching its panic: one caller's broken reply must not
/// leave the others uncalled.
fn give(reply: Reply, outcome: Result<Outcome, Failure>) {
    // (6)
    let called = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reply(outcome)));
    if let Err(payload) = called {
        log::error!(
            "a store reply panicked (its caller got no reply): {}",
            Panic::from_payload(payload).message()
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicI64;
    use std::time::Duration;

    use quiesce::Counters;

    use super::*;
    use crate::serve::metrics::Metrics;

    fn shared() -> Arc<Live> {
        Arc::new(Live {
            enrollment: Counters::new(),
            backlog: AtomicI64::new(0),
            metrics: Metrics::new(),
            work_added: crossbeam_channel::unbounded().0,
            health: Default::default(),
        })
    }

    #[test]
    fn a_panicking_reply_leaves_the_sync_thread_replying_to_the_others() {
        let syncer = Syncer::start(None, shared()).unwrap();
        let (got_tx, got_rx) = crossbeam_channel::unbounded();
        let (after_tx, after_rx) = crossbeam_channel::unbounded();
        let panicking: Reply = Box::new(|_| panic!("broken reply"));
        let replied: Reply = Box::new(move |outcome| got_tx.send(outcome).unwrap());
        syncer.deliver(vec![
            (panicking, Ok(Outcome::Accepted)),
            (replied, Ok(Outcome::Duplicate)),
        ]);
        // A later batch still gets its reply: the thread lived on.
        let later: Reply = Box::new(move |outcome| after_tx.send(outcome).unwrap());
        let full = Failure::NotStored("disk full".to_string());
        syncer.deliver(vec![(later, Err(full.clone()))]);
        let wait = Duration::from_secs(30);
        assert_eq!(got_rx.recv_timeout(wait), Ok(Ok(Outcome::Duplicate)));
        assert_eq!(after_rx.recv_timeout(wait), Ok(Err(full)));
        assert!(syncer.is_alive());
        syncer.finish();
    }

    #[test]
    fn a_commit_whose_flush_fails_is_told_unknown_not_unstored() {
        // fdatasync on a pipe fails (EINVAL): a flush that fails.
        let (read, _write) = std::io::pipe().unwrap();
        let wal = std::fs::File::from(std::os::fd::OwnedFd::from(read));
        let shared = shared();
        let syncer = Syncer::start(Some(wal), shared.clone()).unwrap();
        let (got_tx, got_rx) = crossbeam_channel::unbounded();
        let reply = |tx: crossbeam_channel::Sender<_>| -> Reply {
            Box::new(move |outcome| tx.send(outcome).unwrap())
        };
        let full = Failure::NotStored("database or disk is full".to_string());
        syncer.deliver(vec![
            (reply(got_tx.clone()), Ok(Outcome::Accepted)),
            (reply(got_tx), Err(full.clone())),
        ]);
        let wait = Duration::from_secs(30);
        let committed = got_rx.recv_timeout(wait).unwrap();
        assert!(
            matches!(&committed, Err(Failure::Unknown(err)) if err.starts_with("flushing to disk failed")),
            "{committed:?}"
        );
        // Not committed stays not stored.
        assert_eq!(got_rx.recv_timeout(wait).unwrap(), Err(full));
        assert!(shared.health.failure().is_some());
        syncer.finish();
    }
}
