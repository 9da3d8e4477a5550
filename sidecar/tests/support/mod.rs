//! The harness shared by the black-box tests of the binary: start the
//! real `quiesce` (`serve` on `127.0.0.1:0` with a fresh data directory,
//! or `anonymize` over files in a temporary directory) under a watchdog;
//! read its log as it comes; send it real signals with `kill`; talk
//! HTTP/1.1 to `serve` with a small client of our own on
//! `std::net::TcpStream` that says precisely how a request ended; read its
//! SQLite file; run a real PostgreSQL; stand in for the external
//! analyzer. Each test binary uses part of it; the benches include
//! `temp.rs` and `process.rs` with `#[path]`.
//!
//! One idea per file: `temp` (temporary directories), `process` (a child
//! process under a watchdog, signals, how it ended), `serve` (a running
//! `quiesce serve`), `http` (the client), `api` (the sidecar's API as the
//! tests speak it), `db` (its SQLite file), `backend` (the store backend
//! a test runs on, its database read the same way for both, and
//! `both_backends!`: one test per backend), `pg` (a real PostgreSQL
//! cluster started by the tests, a database per test, `psql`), `analyzer`
//! (stand-ins for the external analyzer, over HTTP or TLS), `pki`
//! (certificates made with rcgen, for the stand-in analyzer), `rng` (a
//! seeded generator), `load` (load clients), `tls` (certificates made in
//! the test for `serve`'s TLS, a TLS client).
#![allow(dead_code)]

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

mod analyzer;
mod api;
mod backend;
mod db;
mod http;
mod load;
mod pg;
mod pki;
mod process;
mod rng;
mod serve;
mod temp;
mod tls;

// Each test binary uses part of it.
#[allow(unused_imports)]
pub use self::{
    analyzer::*, api::*, backend::*, db::*, http::*, load::*, pg::*, pki::*, process::*, rng::*,
    serve::*, temp::*, tls::*,
};

/// The read and write timeout of the test client's sockets: far longer
/// than any answer should take, short enough to fail rather than hang.
pub const IO_TIMEOUT: Duration = Duration::from_secs(15);
/// A `submitted_at` safely in the past.
pub const SUBMITTED_AT: &str = "2025-06-01T09:30:00Z";

/// Polls `done` every `every` until it holds; fails naming `what` if it
/// still does not after `limit` (a bound on a wait, not a speed
/// assertion).
#[track_caller]
pub fn wait_until(limit: Duration, every: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let give_up = std::time::Instant::now() + limit;
    while !done() {
        assert!(
            std::time::Instant::now() < give_up,
            "{what} (waited {limit:?})"
        );
        std::thread::sleep(every);
    }
}

/// Serialises the heavy tests (load, crashes) of one test binary, so that
/// two of them do not compete for a small machine's cores.
pub fn heavy() -> MutexGuard<'static, ()> {
    static HEAVY: Mutex<()> = Mutex::new(());
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}
