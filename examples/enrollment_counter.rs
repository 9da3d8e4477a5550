//! 100 sites enrolling patients at the same time, counted exactly: Go's
//! `map` guarded by a `sync.RWMutex`.
//!
//! # The Go bug
//!
//! A shared map written by many goroutines, without a lock:
//!
//! ```go
//! enrolled := map[string]int{}
//! var wg sync.WaitGroup
//! for s := 1; s <= 100; s++ {
//!     wg.Add(1)
//!     go func(site string) {
//!         defer wg.Done()
//!         for i := 0; i < 10; i++ {
//!             enrolled[site]++ // data race: no lock
//!         }
//!     }(fmt.Sprintf("SITE-%03d", s))
//! }
//! wg.Wait()
//! ```
//!
//! It compiles. Run it and it dies with "fatal error: concurrent map
//! writes", or, when the race detector is off and the timing is kind,
//! reports a total that is not 1000. The fix is a `sync.RWMutex` taken
//! around every access, which nothing forces anyone to remember.
//!
//! # The Rust way
//!
//! The racy version does not compile: a `HashMap` cannot be mutated from
//! several threads without a lock. [`quiesce::Counters`] is the locked
//! version, ready made: the map sits behind a `parking_lot::RwLock` and can
//! only be reached through methods that take it; `add` takes the write
//! lock, `get`/`total` the read lock, and `snapshot` gives one consistent
//! view (its `total` always equals the sum of its counts).
//!
//! One named thread per site (`site-001` … `site-100`) runs under
//! [`quiesce::Threads`], which joins them all against a deadline. The total
//! is always exactly 1000; the program exits non-zero if it is not.
//!
//! # Running it
//!
//! ```text
//! cargo run --example enrollment_counter
//! ```

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use quiesce::{Context, Counters, Threads};

const SITES: u64 = 100;
const ENROLLMENTS_PER_SITE: u64 = 10;

/// A generous bound for joining all the site threads.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    let enrolled: Arc<Counters<String>> = Arc::new(Counters::new());

    let mut sites = Threads::<()>::new(&Context::background());
    for site in 1..=SITES {
        let enrolled = enrolled.clone();
        let name = site_name(site);
        let spawned = sites.spawn(format!("site-{site:03}"), move |_ctx| {
            for _patient in 0..ENROLLMENTS_PER_SITE {
                enrolled.add(name.clone(), 1); // write lock, one update
            }
        });
        if let Err(err) = spawned {
            eprintln!("enrollment_counter: cannot start the thread for site {site}: {err}");
            return ExitCode::FAILURE;
        }
    }
    println!("started {SITES} site threads, {ENROLLMENTS_PER_SITE} enrollments each");

    let report = sites.join_timeout(JOIN_TIMEOUT);
    if !report.running.is_empty() {
        for stuck in &report.running {
            eprintln!("enrollment_counter: still running: {stuck}");
        }
        // Dropping `sites` would join the stuck threads forever: leave now.
        std::process::exit(1);
    }
    if let Some(failed) = report.finished.iter().find(|f| f.result.is_err()) {
        eprintln!("enrollment_counter: thread {} panicked", failed.name);
        return ExitCode::FAILURE;
    }

    // One consistent view, under one read lock.
    let snapshot = enrolled.snapshot();
    for site in [1, 2, 50, 100] {
        let name = site_name(site);
        println!(
            "{name}: {} enrolled",
            snapshot.counts.get(&name).copied().unwrap_or(0)
        );
    }
    let expected = SITES * ENROLLMENTS_PER_SITE;
    let sites_ok = snapshot.counts.values().all(|&n| n == ENROLLMENTS_PER_SITE);
    println!(
        "total enrolled: {} across {} sites (expected {expected})",
        snapshot.total,
        snapshot.counts.len()
    );
    if snapshot.total != expected || snapshot.counts.len() as u64 != SITES || !sites_ok {
        eprintln!("enrollment_counter: counts are wrong");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn site_name(site: u64) -> String {
    format!("SITE-{site:03}")
}
