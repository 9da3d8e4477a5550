//! `Shutdown` / `Done`: broadcast "stop" by closing a channel. The public
//! docs, with the Go pattern it replaces, are on [`shutdown()`].

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use parking_lot::Mutex;

/// The trigger end. Cloning shares it; the channel closes at the first
/// [`fire`](Shutdown::fire) or when the last clone is dropped.
///
/// # Examples
///
/// ```
/// let (trigger, done) = quiesce::shutdown();
/// let second = trigger.clone();
/// drop(trigger);
/// assert!(!done.is_fired()); // a clone still holds the channel open
/// drop(second);
/// assert!(done.is_fired());
/// ```
#[derive(Clone)]
pub struct Shutdown {
    tx: Arc<Mutex<Option<Sender<Infallible>>>>,
    done: Done,
}

/// The waiting end. Cloning is cheap; every clone sees the same signal.
///
/// # Examples
///
/// ```
/// let (trigger, done) = quiesce::shutdown();
/// let waiters: Vec<_> = (0..3)
///     .map(|_| {
///         let done = done.clone();
///         std::thread::spawn(move || done.wait())
///     })
///     .collect();
/// trigger.fire();
/// for waiter in waiters {
///     waiter.join().unwrap(); // every clone saw it
/// }
/// assert!(done.is_fired());
/// ```
#[derive(Clone)]
pub struct Done {
    rx: Receiver<Infallible>,
}

/// A linked trigger and waiting end: broadcast "stop" by closing a
/// channel. Go's `done := make(chan struct{})` … `close(done)`, which every
/// goroutine selecting on `<-done` sees at once.
///
/// [`Shutdown::fire`] (or dropping the last `Shutdown`) disconnects the
/// channel behind [`Done::channel`], so any number of threads, each in its
/// own `crossbeam_channel::select!`, return from it together. Nothing is
/// ever sent; disconnection is the signal, and it cannot be missed by a
/// thread that starts waiting later.
///
/// For cancellation that nests, carries deadlines or causes, use
/// [`Context`](crate::Context); `Shutdown`/`Done` is the plain, flat form.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use crossbeam_channel::{select, tick};
///
/// let (trigger, done) = quiesce::shutdown();
/// let reporter = std::thread::spawn(move || {
///     let ticker = tick(Duration::from_millis(1));
///     let mut reports = 0;
///     loop {
///         select! {
///             recv(ticker) -> _ => reports += 1,
///             recv(done.channel()) -> _ => return reports,
///         }
///     }
/// });
/// trigger.fire(); // close(done)
/// let _reports = reporter.join().unwrap(); // it returned: it saw the close
/// assert!(trigger.is_fired());
/// ```
pub fn shutdown() -> (Shutdown, Done) {
    let (tx, rx) = crossbeam_channel::bounded(0);
    let done = Done { rx };
    let trigger = Shutdown {
        tx: Arc::new(Mutex::new(Some(tx))),
        done: done.clone(),
    };
    (trigger, done)
}

impl Shutdown {
    /// Closes the channel: every waiter returns. Idempotent.
    ///
    /// # Examples
    ///
    /// ```
    /// let (trigger, done) = quiesce::shutdown();
    /// trigger.fire();
    /// trigger.fire(); // harmless
    /// assert!(done.is_fired());
    /// ```
    pub fn fire(&self) {
        let tx = self.tx.lock().take();
        drop(tx);
    }

    /// `true` once fired.
    ///
    /// # Examples
    ///
    /// ```
    /// let (trigger, _done) = quiesce::shutdown();
    /// assert!(!trigger.is_fired());
    /// trigger.fire();
    /// assert!(trigger.is_fired());
    /// ```
    pub fn is_fired(&self) -> bool {
        self.done.is_fired()
    }

    /// Another waiting end for this trigger.
    ///
    /// # Examples
    ///
    /// ```
    /// let (trigger, _done) = quiesce::shutdown();
    /// let late_waiter = trigger.done(); // made later, same signal
    /// trigger.fire();
    /// assert!(late_waiter.is_fired());
    /// ```
    pub fn done(&self) -> Done {
        self.done.clone()
    }
}

impl Done {
    /// The channel to put in `select!` (`recv(done.channel()) -> _ => …`);
    /// it becomes disconnected when the trigger fires.
    ///
    /// # Examples
    ///
    /// ```
    /// use crossbeam_channel::{select, unbounded};
    ///
    /// let (trigger, done) = quiesce::shutdown();
    /// let (_jobs_tx, jobs) = unbounded::<String>();
    /// trigger.fire();
    /// let stopped = select! {
    ///     recv(jobs) -> _ => false,
    ///     recv(done.channel()) -> msg => msg.is_err(), // disconnected, never a message
    /// };
    /// assert!(stopped);
    /// ```
    pub fn channel(&self) -> &Receiver<Infallible> {
        &self.rx
    }

    /// `true` once fired.
    ///
    /// # Examples
    ///
    /// ```
    /// let (trigger, done) = quiesce::shutdown();
    /// assert!(!done.is_fired());
    /// drop(trigger); // dropping the last trigger fires too
    /// assert!(done.is_fired());
    /// ```
    pub fn is_fired(&self) -> bool {
        matches!(self.rx.try_recv(), Err(TryRecvError::Disconnected))
    }

    /// Blocks until fired. See the bounded forms.
    ///
    /// # Examples
    ///
    /// ```
    /// let (trigger, done) = quiesce::shutdown();
    /// let intake = std::thread::spawn(move || {
    ///     done.wait();
    ///     "intake stopped"
    /// });
    /// trigger.fire();
    /// assert_eq!(intake.join().unwrap(), "intake stopped");
    /// ```
    pub fn wait(&self) {
        let _ = self.rx.recv();
    }

    /// Blocks until fired or `timeout`; `true` if fired. A timeout too large
    /// to represent waits forever.
    ///
    /// # Examples
    ///
    /// ```
    /// let (trigger, done) = quiesce::shutdown();
    /// assert!(!done.wait_timeout(std::time::Duration::from_millis(1)));
    /// drop(trigger); // dropping the last trigger fires too
    /// assert!(done.wait_timeout(std::time::Duration::from_secs(1)));
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        !matches!(
            self.rx.recv_timeout(timeout),
            Err(RecvTimeoutError::Timeout)
        )
    }

    /// Blocks until fired or `deadline`; `true` if fired.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    ///
    /// let (trigger, done) = quiesce::shutdown();
    /// assert!(!done.wait_deadline(Instant::now() + Duration::from_millis(1)));
    /// trigger.fire();
    /// assert!(done.wait_deadline(Instant::now() + Duration::from_secs(1)));
    /// ```
    pub fn wait_deadline(&self, deadline: Instant) -> bool {
        !matches!(
            self.rx.recv_deadline(deadline),
            Err(RecvTimeoutError::Timeout)
        )
    }
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shutdown")
            .field("fired", &self.is_fired())
            .finish()
    }
}

impl fmt::Debug for Done {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Done")
            .field("fired", &self.is_fired())
            .finish()
    }
}
