//! `Consumer`: one named thread that drains a channel until the channel is
//! closed, then hands back what it made of it.
//!
//! What it owns: the sending half of the channel (`tx`, until closed), the
//! thread's `JoinHandle`, and the [`JobHandle`] the thread fills with its
//! result. Two threads touch it: the owner (send, close, finish, drop) and
//! the consumer thread (receives, then completes the handle).
//!
//! Invariants:
//!
//! 1. The channel has exactly one sender, `tx`: closing is dropping it, so
//!    the consumer's `recv` ends only after every item sent before the
//!    close was received (nothing sent is skipped).
//! 2. The consumer thread completes the handle before it ends: with the
//!    function's value, or with its panic, or (if it could not even run)
//!    the handle is marked not run by the dropped completer. So a wait on
//!    the handle always ends, and after it ends the thread is about to
//!    exit: joining it then does not block on user code.
//! 3. The thread is joined by whoever ends the consumer: `finish`, a
//!    `finish_deadline` that saw the result, or `Drop`.

use std::fmt;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::thread::JoinHandle as ThreadHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, SendError, SendTimeoutError, Sender};

use crate::handle::{JobError, JobHandle};
use crate::panic::Panic;

/// A named thread that consumes a channel until the channel is closed, and
/// returns a value when it is done.
///
/// The Go pattern it replaces:
///
/// ```go
/// ch := make(chan Item, 64)
/// done := make(chan Result)
/// go func() { var r Result; for it := range ch { r.add(it) }; done <- r }()
/// // ... ch <- item ...
/// close(ch)
/// result := <-done
/// ```
///
/// Here closing the channel and waiting for the result are one call,
/// [`finish`](Consumer::finish), the thread is named, registered with
/// [`leak`](crate::leak) while it runs, and always joined; a panic in the
/// consuming function is caught and returned as [`JobError::Panicked`].
/// Sends after the thread is gone fail and hand the item back.
///
/// # Panics
///
/// None of its own. A panic in the consuming function ends the thread (the
/// channel's receiver is dropped, so later sends fail) and is reported by
/// `finish` as a value. If each item must survive the panic of another,
/// catch it per item inside the function.
///
/// # Drop
///
/// Dropping an unfinished consumer closes the channel and **blocks until
/// the thread has drained it and returned**; a panic is then logged. Call
/// [`finish_deadline`](Consumer::finish_deadline) first to bound that wait.
///
/// # Examples
///
/// ```
/// use quiesce::Consumer;
///
/// // A writer thread that batches lines, as a log or a file sink would.
/// let sink = Consumer::bounded("line-sink", 16, |lines| {
///     let mut written = 0;
///     for line in lines.iter() {
///         let _: String = line; // write it somewhere
///         written += 1;
///     }
///     written
/// })?;
/// for i in 0..100 {
///     sink.send(format!("line {i}")).unwrap();
/// }
/// assert_eq!(sink.finish(), Ok(100)); // closes the channel, waits, joins
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Consumer<T, R = ()> {
    name: String,
    tx: Option<Sender<T>>,
    thread: Option<ThreadHandle<()>>,
    result: JobHandle<R>,
}

impl<T: Send + 'static, R: Send + 'static> Consumer<T, R> {
    /// Starts a thread named `name` running `consume` on the receiving end
    /// of a channel that holds at most `capacity` items (a send waits while
    /// it is full: backpressure). A `capacity` of 0 makes every send wait
    /// for the thread to take the item.
    ///
    /// # Errors
    ///
    /// When the thread cannot be started.
    ///
    /// # Examples
    ///
    /// ```
    /// let sums = quiesce::Consumer::bounded("sum", 4, |rx| rx.iter().sum::<u64>())?;
    /// for n in 1..=10 {
    ///     sums.send(n).unwrap();
    /// }
    /// assert_eq!(sums.finish(), Ok(55));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn bounded<F>(name: impl Into<String>, capacity: usize, consume: F) -> io::Result<Self>
    where
        F: FnOnce(Receiver<T>) -> R + Send + 'static,
    {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        Self::start(name.into(), tx, rx, consume)
    }

    /// Like [`bounded`](Consumer::bounded), with a channel that never
    /// fills: a send never waits.
    ///
    /// # Errors
    ///
    /// When the thread cannot be started.
    ///
    /// # Examples
    ///
    /// ```
    /// let seen = quiesce::Consumer::unbounded("collect", |rx| rx.iter().collect::<Vec<u32>>())?;
    /// seen.send(7).unwrap();
    /// seen.send(9).unwrap();
    /// assert_eq!(seen.finish(), Ok(vec![7, 9]));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn unbounded<F>(name: impl Into<String>, consume: F) -> io::Result<Self>
    where
        F: FnOnce(Receiver<T>) -> R + Send + 'static,
    {
        let (tx, rx) = crossbeam_channel::unbounded();
        Self::start(name.into(), tx, rx, consume)
    }

    fn start<F>(name: String, tx: Sender<T>, rx: Receiver<T>, consume: F) -> io::Result<Self>
    where
        F: FnOnce(Receiver<T>) -> R + Send + 'static,
    {
        let (completer, result) = JobHandle::pair();
        // (2): the completer is filled with the value or the panic; if the
        // closure never runs, dropping it marks the handle not run.
        let thread = crate::leak::spawn(name.clone(), move || {
            let outcome = catch_unwind(AssertUnwindSafe(|| consume(rx)));
            completer.finish(outcome.map_err(Panic::from_payload));
        })?;
        Ok(Consumer {
            name,
            tx: Some(tx),
            thread: Some(thread),
            result,
        })
    }
}

impl<T, R> Consumer<T, R> {
    /// The thread's name.
    ///
    /// # Examples
    ///
    /// ```
    /// let sink = quiesce::Consumer::<u8>::unbounded("audit-sink", |rx| for _ in rx.iter() {})?;
    /// assert_eq!(sink.name(), "audit-sink");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends `item`, waiting while the channel is full.
    ///
    /// # Errors
    ///
    /// The item comes back in a [`SendError`] when the channel is closed or
    /// the thread is gone (its function returned or panicked).
    ///
    /// # Examples
    ///
    /// ```
    /// let audit = quiesce::Consumer::bounded("audit", 1, |rx| rx.iter().count())?;
    /// audit.send("report stored").unwrap();
    /// assert_eq!(audit.finish(), Ok(1));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn send(&self, item: T) -> Result<(), SendError<T>> {
        match &self.tx {
            Some(tx) => tx.send(item),
            None => Err(SendError(item)),
        }
    }

    /// Sends `item`, waiting at most `timeout` for room.
    ///
    /// # Errors
    ///
    /// [`SendTimeoutError::Timeout`] when the channel stayed full,
    /// [`SendTimeoutError::Disconnected`] when it is closed or the thread
    /// is gone; either way the item comes back.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use crossbeam_channel::SendTimeoutError;
    ///
    /// let (release, hold) = crossbeam_channel::bounded::<()>(0);
    /// let slow = quiesce::Consumer::bounded("slow", 1, move |rx| {
    ///     let _ = hold.recv(); // busy until released
    ///     rx.iter().count()
    /// })?;
    /// slow.send(1).unwrap(); // fills the one place
    /// let full = slow.send_timeout(2, Duration::from_millis(5));
    /// assert!(matches!(full, Err(SendTimeoutError::Timeout(2))));
    /// drop(release);
    /// assert_eq!(slow.finish(), Ok(1));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn send_timeout(&self, item: T, timeout: Duration) -> Result<(), SendTimeoutError<T>> {
        match crate::deadline::after(timeout) {
            Some(deadline) => self.send_deadline(item, deadline),
            None => self
                .send(item)
                .map_err(|SendError(item)| SendTimeoutError::Disconnected(item)),
        }
    }

    /// Sends `item`, waiting until `deadline` at most for room.
    ///
    /// # Errors
    ///
    /// As [`send_timeout`](Consumer::send_timeout).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    ///
    /// let sink = quiesce::Consumer::bounded("sink", 8, |rx| rx.iter().count())?;
    /// sink.send_deadline("a", Instant::now() + Duration::from_secs(10)).unwrap();
    /// assert_eq!(sink.finish(), Ok(1));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn send_deadline(&self, item: T, deadline: Instant) -> Result<(), SendTimeoutError<T>> {
        match &self.tx {
            Some(tx) => tx.send_deadline(item, deadline),
            None => Err(SendTimeoutError::Disconnected(item)),
        }
    }

    /// Closes the channel: the thread receives what was sent before, then
    /// its iteration ends. Later sends hand their item back. Closing twice
    /// is harmless.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut sink = quiesce::Consumer::unbounded("sink", |rx| rx.iter().count())?;
    /// sink.send(1).unwrap();
    /// sink.close();
    /// assert!(sink.send(2).is_err());
    /// assert_eq!(sink.finish(), Ok(1));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn close(&mut self) {
        // (1): the only sender.
        self.tx = None;
    }

    /// `true` once the thread's function has returned or panicked: a
    /// consumer that is finished while its channel is still open has died
    /// early, and its owner should treat that as a failure.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let sink = quiesce::Consumer::<u8, ()>::unbounded("fragile", |_rx| panic!("bad disk"))?;
    /// while !sink.is_finished() {
    ///     std::thread::sleep(Duration::from_millis(1));
    /// }
    /// assert!(sink.send(1).is_err());
    /// assert!(matches!(sink.finish(), Err(quiesce::JobError::Panicked(p)) if p.message() == "bad disk"));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn is_finished(&self) -> bool {
        self.result.is_finished()
    }

    /// Closes the channel, waits for the thread to consume what is left and
    /// return, and joins it.
    ///
    /// # Errors
    ///
    /// [`JobError::Panicked`] when the function panicked.
    ///
    /// # Examples
    ///
    /// ```
    /// let words = quiesce::Consumer::bounded("words", 2, |rx| rx.iter().collect::<Vec<_>>().join(" "))?;
    /// for w in ["stop", "when", "told"] {
    ///     words.send(w).unwrap();
    /// }
    /// assert_eq!(words.finish().as_deref(), Ok("stop when told"));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn finish(mut self) -> Result<R, JobError> {
        self.close();
        let result = self.result.join_until(None);
        self.join_thread();
        result
    }

    /// Like [`finish`](Consumer::finish), waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// As [`finish_deadline`](Consumer::finish_deadline).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let mut sink = quiesce::Consumer::unbounded("sink", |rx| rx.iter().count())?;
    /// sink.send(()).unwrap();
    /// assert_eq!(sink.finish_timeout(Duration::from_secs(10)), Ok(1));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn finish_timeout(&mut self, timeout: Duration) -> Result<R, JobError> {
        let deadline = crate::deadline::after(timeout);
        self.close();
        let result = self.result.join_until(deadline);
        if !matches!(result, Err(JobError::Timeout)) {
            self.join_thread();
        }
        result
    }

    /// Closes the channel and waits until `deadline` at most for the thread
    /// to consume what is left and return; then joins it.
    ///
    /// # Errors
    ///
    /// [`JobError::Timeout`] when the thread is still busy at the deadline
    /// (call again, or drop the consumer to wait without a bound);
    /// [`JobError::Panicked`] when the function panicked;
    /// [`JobError::AlreadyJoined`] after an earlier call returned the
    /// result.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use quiesce::JobError;
    ///
    /// let (release, hold) = crossbeam_channel::bounded::<()>(0);
    /// let mut stuck = quiesce::Consumer::<u8, &str>::unbounded("stuck", move |_rx| {
    ///     let _ = hold.recv();
    ///     "released"
    /// })?;
    /// let soon = Instant::now() + Duration::from_millis(5);
    /// assert_eq!(stuck.finish_deadline(soon), Err(JobError::Timeout));
    /// drop(release);
    /// let later = Instant::now() + Duration::from_secs(10);
    /// assert_eq!(stuck.finish_deadline(later), Ok("released"));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn finish_deadline(&mut self, deadline: Instant) -> Result<R, JobError> {
        self.close();
        let result = self.result.join_until(Some(deadline));
        if !matches!(result, Err(JobError::Timeout)) {
            self.join_thread();
        }
        result
    }

    /// Joins the thread; only called once its result is in (2), so this
    /// does not wait for user code.
    fn join_thread(&mut self) {
        if let Some(thread) = self.thread.take() {
            // The closure catches panics, so the join cannot fail but for
            // a panic in the completer itself, which is ours and cannot
            // happen; say so rather than unwrap.
            if thread.join().is_err() {
                log::error!("consumer thread {} ended abnormally", self.name);
            }
        }
    }
}

impl<T, R> fmt::Debug for Consumer<T, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("name", &self.name)
            .field("open", &self.tx.is_some())
            .field("finished", &self.is_finished())
            .finish()
    }
}

impl<T, R> Drop for Consumer<T, R> {
    fn drop(&mut self) {
        if self.thread.is_none() {
            return;
        }
        self.close();
        // (3): joined by whoever ends it; here, without a bound (documented).
        if let Err(JobError::Panicked(panic)) = self.result.join_until(None) {
            log::warn!("consumer thread {} {panic}", self.name);
        }
        self.join_thread();
    }
}
