//! De-identify three ePRO exports concurrently and wait for all of them:
//! Go's `sync.WaitGroup`.
//!
//! # The Go bug it fixes
//!
//! ```go
//! for _, f := range []string{"site-a.csv", "site-b.csv", "site-c.csv"} {
//!     go deidentify(f)
//! }
//! // main returns here: the program exits before the goroutines finish,
//! // leaving files half written or never touched, and nothing complains.
//! ```
//!
//! # The Go fix
//!
//! ```go
//! var wg sync.WaitGroup
//! for _, f := range files {
//!     wg.Add(1) // before `go`, not inside the goroutine (that races Wait)
//!     go func(f string) {
//!         defer wg.Done() // forget it, or return early without it: Wait hangs
//!         deidentify(f)
//!     }(f)
//! }
//! wg.Wait() // no timeout: a stuck file hangs the program forever
//! ```
//!
//! # The Rust way
//!
//! [`WaitGroup::add`] returns a [`quiesce::WaitGuard`] and `Done()` is its
//! drop. The guard is made before the thread starts and moved into it, so
//! the count can never be added too late, and dropping it happens on every
//! path out of the thread, panics included: `Done()` cannot be forgotten.
//! [`WaitGroup::wait_timeout`] bounds the wait and says whether all the
//! work finished, so a stuck file is reported instead of hanging the
//! program. The threads are named (`deidentify-site-a`, …) and their
//! handles are joined at the end: nothing is left running.
//!
//! # Running it
//!
//! ```text
//! cargo run --example wait_group
//! ```

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use quiesce::WaitGroup;

/// A generous bound for all the files; each "takes" a few hundred ms.
const WAIT_TIMEOUT: Duration = Duration::from_secs(30);

/// The exports to de-identify: file name, site, and how long the
/// (simulated) work on it takes. The first one started is the last to end.
const FILES: [(&str, &str, u64); 3] = [
    ("site-a-week12.csv", "a", 300),
    ("site-b-week12.csv", "b", 100),
    ("site-c-week12.csv", "c", 200),
];

fn main() -> ExitCode {
    let started = Instant::now();
    let wg = WaitGroup::new();
    let mut handles = Vec::new();
    for (file, site, work_ms) in FILES {
        // wg.Add(1), before the thread exists.
        let guard = wg.add();
        let spawned = thread::Builder::new()
            .name(format!("deidentify-site-{site}"))
            .spawn(move || {
                // Dropped when this closure ends, however it ends: wg.Done().
                let _guard = guard;
                let rows = deidentify(site, Duration::from_millis(work_ms));
                println!("de-identified {file}: {rows} rows");
                rows
            });
        match spawned {
            Ok(handle) => handles.push((file, handle)),
            Err(err) => {
                // The guard went down with the closure: the count is right.
                eprintln!("wait_group: cannot start a thread for {file}: {err}");
            }
        }
    }
    println!("started {} de-identification threads", handles.len());

    if !wg.wait_timeout(WAIT_TIMEOUT) {
        // Joining now could block forever: report and leave with an error.
        eprintln!(
            "wait_group: {} file(s) still not done after {WAIT_TIMEOUT:?}",
            wg.count()
        );
        return ExitCode::FAILURE;
    }

    // Every guard is dropped, so every thread has finished its work; the
    // joins only collect the results.
    let mut failed = handles.len() != FILES.len();
    let mut rows = 0;
    for (file, handle) in handles {
        match handle.join() {
            Ok(n) => rows += n,
            Err(_) => {
                eprintln!("wait_group: the thread for {file} panicked");
                failed = true;
            }
        }
    }
    if failed {
        return ExitCode::FAILURE;
    }
    println!(
        "all {} files de-identified ({rows} rows) in {:.2?}",
        FILES.len(),
        started.elapsed()
    );
    ExitCode::SUCCESS
}

/// Simulates de-identifying one site's export: replaces each patient id by
/// a keyed pseudonym, taking `work` to do it. Returns the number of rows.
fn deidentify(site: &str, work: Duration) -> usize {
    let patients: Vec<String> = (1..=4).map(|n| format!("{site}-P{n:03}")).collect();
    let pseudonyms: Vec<String> = patients.iter().map(|p| pseudonym(p)).collect();
    thread::sleep(work);
    debug_assert!(pseudonyms.iter().all(|p| p.len() == 10));
    pseudonyms.len()
}

/// A stable stand-in for a keyed hash (a real export would use an HMAC).
fn pseudonym(patient_id: &str) -> String {
    let mut hasher = DefaultHasher::new();
    "trial-key-2024".hash(&mut hasher);
    patient_id.hash(&mut hasher);
    format!("PX{:08x}", hasher.finish() as u32)
}
