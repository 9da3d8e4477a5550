//! `Counters<K>`: named counts behind one `parking_lot::RwLock`. Go's
//! `map[string]int` guarded by a `sync.RWMutex`, where the map cannot be
//! reached without the lock and a snapshot is one consistent view.
//!
//! ```
//! use std::sync::Arc;
//! use quiesce::Counters;
//!
//! let enrollment = Arc::new(Counters::new());
//! let handles: Vec<_> = (0..4)
//!     .map(|site| {
//!         let enrollment = enrollment.clone();
//!         std::thread::spawn(move || {
//!             for _ in 0..250 {
//!                 enrollment.add(format!("SITE-{site}"), 1);
//!             }
//!         })
//!     })
//!     .collect();
//! for h in handles { h.join().unwrap(); }
//! assert_eq!(enrollment.total(), 1000);
//! assert_eq!(enrollment.get("SITE-2"), 250);
//! let snapshot = enrollment.snapshot();
//! assert_eq!(snapshot.counts.values().sum::<u64>(), snapshot.total);
//! ```
//!
//! Writers take the write lock for one map update; readers share the read
//! lock. `total` is kept beside the map, under the same lock, so it always
//! equals the sum of the counts anyone can see. Counts saturate at
//! `u64::MAX` instead of overflowing.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;

use parking_lot::RwLock;

/// Counts per key, plus their total; see the [module docs](self).
pub struct Counters<K> {
    state: RwLock<State<K>>,
}

struct State<K> {
    counts: HashMap<K, u64>,
    total: u64,
}

/// One consistent view of a [`Counters`], taken under one read lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot<K: Eq + Hash> {
    /// Count per key (keys never added are absent).
    pub counts: HashMap<K, u64>,
    /// The sum of `counts`.
    pub total: u64,
}

impl<K: Eq + Hash> Snapshot<K> {
    /// The counts sorted by key.
    pub fn sorted(&self) -> Vec<(&K, u64)>
    where
        K: Ord,
    {
        let mut v: Vec<(&K, u64)> = self.counts.iter().map(|(k, n)| (k, *n)).collect();
        v.sort();
        v
    }
}

impl<K: Eq + Hash> Default for Counters<K> {
    fn default() -> Self {
        Counters {
            state: RwLock::new(State {
                counts: HashMap::new(),
                total: 0,
            }),
        }
    }
}

impl<K: Eq + Hash> Counters<K> {
    /// No counts.
    pub fn new() -> Counters<K> {
        Counters::default()
    }

    /// Adds `n` to `key`'s count (and to the total).
    pub fn add(&self, key: K, n: u64) {
        self.add_all([(key, n)]);
    }

    /// Adds every `(key, n)` under one write lock: readers see all of them
    /// or none.
    pub fn add_all(&self, items: impl IntoIterator<Item = (K, u64)>) {
        let mut state = self.state.write();
        for (key, n) in items {
            let count = state.counts.entry(key).or_insert(0);
            *count = count.saturating_add(n);
            state.total = state.total.saturating_add(n);
        }
    }

    /// `key`'s count; zero for a key never added.
    pub fn get<Q>(&self, key: &Q) -> u64
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.state.read().counts.get(key).copied().unwrap_or(0)
    }

    /// The sum of all counts.
    pub fn total(&self) -> u64 {
        self.state.read().total
    }

    /// How many keys have a count.
    pub fn len(&self) -> usize {
        self.state.read().counts.len()
    }

    /// `true` when nothing was ever added.
    pub fn is_empty(&self) -> bool {
        self.state.read().counts.is_empty()
    }

    /// Every count and the total, as one consistent view.
    pub fn snapshot(&self) -> Snapshot<K>
    where
        K: Clone,
    {
        let state = self.state.read();
        Snapshot {
            counts: state.counts.clone(),
            total: state.total,
        }
    }
}

impl<K: Eq + Hash> FromIterator<(K, u64)> for Counters<K> {
    fn from_iter<I: IntoIterator<Item = (K, u64)>>(items: I) -> Self {
        let counters = Counters::new();
        counters.add_all(items);
        counters
    }
}

impl<K: Eq + Hash + fmt::Debug> fmt::Debug for Counters<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.read();
        f.debug_struct("Counters")
            .field("counts", &state.counts)
            .field("total", &state.total)
            .finish()
    }
}
