//! systemd notification (`sd_notify`), behind the `systemd` feature: when
//! `NOTIFY_SOCKET` is set, a [`Supervisor`](crate::Supervisor) sends
//! `READY=1` once every service is up, `STATUS=` lines as it goes,
//! `STOPPING=1` at shutdown, and, when `WATCHDOG_USEC` asks for it,
//! `WATCHDOG=1` at half that interval while the group is serving or
//! stopping, from a thread named `quiesce-watchdog`. Without the feature,
//! or without `NOTIFY_SOCKET`, all of it does nothing.

use super::Readiness;

#[cfg(feature = "systemd")]
pub(crate) use with_systemd::Notifier;
#[cfg(not(feature = "systemd"))]
pub(crate) use without_systemd::Notifier;

#[cfg(feature = "systemd")]
mod with_systemd {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::thread::JoinHandle;

    use sd_notify::NotifyState;

    use super::Readiness;
    use crate::context::{CancelGuard, Context};

    pub(crate) struct Notifier {
        enabled: bool,
        readiness: Readiness,
        stopping: Arc<AtomicBool>,
        watchdog: Option<(CancelGuard, JoinHandle<()>)>,
    }

    fn send(states: &[NotifyState<'_>]) {
        if let Err(err) = sd_notify::notify(states) {
            log::warn!("systemd notification failed: {err}");
        }
    }

    impl Notifier {
        pub(crate) fn new(readiness: Readiness) -> Notifier {
            Notifier {
                enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
                readiness,
                stopping: Arc::new(AtomicBool::new(false)),
                watchdog: None,
            }
        }

        pub(crate) fn ready(&mut self, status: &str) {
            if !self.enabled {
                return;
            }
            send(&[NotifyState::Ready, NotifyState::Status(status)]);
            if let Some(interval) = sd_notify::watchdog_enabled() {
                self.start_watchdog(interval / 2);
            }
        }

        pub(crate) fn status(&self, status: &str) {
            if self.enabled {
                send(&[NotifyState::Status(status)]);
            }
        }

        pub(crate) fn stopping(&self) {
            self.stopping.store(true, Ordering::SeqCst);
            if self.enabled {
                send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
            }
        }

        fn start_watchdog(&mut self, every: std::time::Duration) {
            let guard = Context::background().with_cancel();
            let ctx = guard.context();
            let (readiness, stopping) = (self.readiness.clone(), self.stopping.clone());
            let thread = crate::leak::spawn("quiesce-watchdog".to_string(), move || {
                while ctx.sleep(every).is_ok() {
                    if readiness.is_ready() || stopping.load(Ordering::SeqCst) {
                        send(&[NotifyState::Watchdog]);
                    }
                }
            });
            match thread {
                Ok(thread) => self.watchdog = Some((guard, thread)),
                Err(err) => log::warn!("cannot start the systemd watchdog thread: {err}"),
            }
        }
    }

    impl Drop for Notifier {
        fn drop(&mut self) {
            if let Some((guard, thread)) = self.watchdog.take() {
                drop(guard);
                let _ = thread.join();
            }
        }
    }
}

#[cfg(not(feature = "systemd"))]
mod without_systemd {
    use super::Readiness;

    pub(crate) struct Notifier;

    impl Notifier {
        pub(crate) fn new(_readiness: Readiness) -> Notifier {
            Notifier
        }
        pub(crate) fn ready(&mut self, _status: &str) {}
        pub(crate) fn status(&self, _status: &str) {}
        pub(crate) fn stopping(&self) {}
    }
}
