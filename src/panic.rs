//! A caught panic, as a value.

use std::any::Any;
use std::fmt;

/// A panic caught by quiesce in user code (a thread, a job, a task), carried
/// back as a value instead of being lost or re-raised.
///
/// Only the message is kept: `&str` and `String` payloads (what `panic!`
/// produces) are copied; any other payload is described as such. Keeping
/// just the text keeps reports `Send + Sync` and printable.
///
/// # Examples
///
/// ```
/// let mut threads = quiesce::Threads::<()>::new(&quiesce::Context::background());
/// threads.spawn("doomed", |_ctx| panic!("disk full")).unwrap();
/// let report = threads.join_timeout(std::time::Duration::from_secs(5));
/// let panic = report.finished[0].result.as_ref().unwrap_err();
/// assert_eq!(panic.message(), "disk full");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Panic {
    message: String,
}

impl Panic {
    /// Builds a `Panic` from the payload `std::panic::catch_unwind` returned.
    ///
    /// # Examples
    ///
    /// ```
    /// use quiesce::Panic;
    ///
    /// let payload = std::panic::catch_unwind(|| panic!("disk {} offline", 4)).unwrap_err();
    /// assert_eq!(Panic::from_payload(payload).message(), "disk 4 offline");
    ///
    /// let odd = std::panic::catch_unwind(|| std::panic::panic_any(42)).unwrap_err();
    /// let panic = Panic::from_payload(odd);
    /// assert_eq!(panic.message(), "<panic payload that is not a string>");
    /// ```
    pub fn from_payload(payload: Box<dyn Any + Send>) -> Panic {
        let message = match payload.downcast::<String>() {
            Ok(s) => *s,
            Err(payload) => match payload.downcast::<&'static str>() {
                Ok(s) => (*s).to_string(),
                Err(_) => "<panic payload that is not a string>".to_string(),
            },
        };
        Panic { message }
    }

    /// The panic's message, e.g. `"disk full"` for `panic!("disk full")`.
    ///
    /// # Examples
    ///
    /// ```
    /// let payload = std::panic::catch_unwind(|| panic!("disk full")).unwrap_err();
    /// let panic = quiesce::Panic::from_payload(payload);
    /// assert_eq!(panic.message(), "disk full");
    /// assert_eq!(panic.to_string(), "panicked: disk full"); // `Display` says what it is
    /// ```
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Panic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "panicked: {}", self.message)
    }
}

impl std::error::Error for Panic {}

/// Runs `f`, turning a panic into `Err(Panic)`.
pub(crate) fn catch<T>(f: impl FnOnce() -> T) -> Result<T, Panic> {
    catch_payload(f).map_err(Panic::from_payload)
}

/// Runs `f`, keeping a panic's payload (to resume it later).
pub(crate) fn catch_payload<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
}
