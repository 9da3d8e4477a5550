//! `Counters<K>`: named counts behind one `parking_lot::RwLock`. The public
//! docs, with the Go pattern it replaces, are on [`Counters`].

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;

use parking_lot::RwLock;

/// Counts per key, plus their total. Go's `map[string]int` guarded by a
/// `sync.RWMutex`, where the map cannot be reached without the lock and a
/// snapshot is one consistent view.
///
/// Writers take the write lock for one map update; readers share the read
/// lock. `total` is kept beside the map, under the same lock, so it always
/// equals the sum of the counts anyone can see. Counts saturate at
/// `u64::MAX` instead of overflowing.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use quiesce::Counters;
///
/// let requests = Arc::new(Counters::new());
/// let handles: Vec<_> = (0..4)
///     .map(|worker| {
///         let requests = requests.clone();
///         std::thread::spawn(move || {
///             for _ in 0..250 {
///                 requests.add(format!("worker-{worker}"), 1);
///             }
///         })
///     })
///     .collect();
/// for h in handles { h.join().unwrap(); }
/// assert_eq!(requests.total(), 1000);
/// assert_eq!(requests.get("worker-2"), 250);
/// let snapshot = requests.snapshot();
/// assert_eq!(snapshot.counts.values().sum::<u64>(), snapshot.total);
/// ```
pub struct Counters<K> {
    state: RwLock<State<K>>,
}

struct State<K> {
    counts: HashMap<K, u64>,
    total: u64,
}

/// One consistent view of a [`Counters`], taken under one read lock.
///
/// # Examples
///
/// ```
/// let uploads = quiesce::Counters::new();
/// uploads.add("eu-west", 2);
/// let before = uploads.snapshot();
/// uploads.add("eu-west", 1);
/// assert_eq!(before.counts["eu-west"], 2); // a copy: later adds do not change it
/// assert_eq!(before.total, 2);
/// assert_eq!(uploads.snapshot().total, 3);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot<K: Eq + Hash> {
    /// Count per key (keys never added are absent).
    pub counts: HashMap<K, u64>,
    /// The sum of `counts`.
    pub total: u64,
}

impl<K: Eq + Hash> Snapshot<K> {
    /// The counts sorted by key.
    ///
    /// # Examples
    ///
    /// ```
    /// let orders: quiesce::Counters<_> = [("us-east", 3), ("eu-west", 5)].into_iter().collect();
    /// let snapshot = orders.snapshot();
    /// assert_eq!(snapshot.sorted(), vec![(&"eu-west", 5), (&"us-east", 3)]);
    /// ```
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
    ///
    /// # Examples
    ///
    /// ```
    /// let counters = quiesce::Counters::<String>::new();
    /// assert!(counters.is_empty());
    /// assert_eq!(counters.total(), 0);
    /// ```
    pub fn new() -> Counters<K> {
        Counters::default()
    }

    /// Adds `n` to `key`'s count (and to the total).
    ///
    /// # Examples
    ///
    /// ```
    /// let uploads = quiesce::Counters::new();
    /// uploads.add("eu-west", 2);
    /// uploads.add("eu-west", 1);
    /// assert_eq!(uploads.get("eu-west"), 3);
    /// uploads.add("eu-west", u64::MAX); // saturates, never overflows
    /// assert_eq!(uploads.get("eu-west"), u64::MAX);
    /// ```
    pub fn add(&self, key: K, n: u64) {
        self.add_all([(key, n)]);
    }

    /// Adds every `(key, n)` under one write lock: readers see all of them
    /// or none.
    ///
    /// # Examples
    ///
    /// ```
    /// let requests = quiesce::Counters::new();
    /// requests.add_all([("GET", 4), ("POST", 1), ("GET", 1)]);
    /// assert_eq!(requests.get("GET"), 5);
    /// assert_eq!(requests.total(), 6);
    /// ```
    pub fn add_all(&self, items: impl IntoIterator<Item = (K, u64)>) {
        let mut state = self.state.write();
        for (key, n) in items {
            let count = state.counts.entry(key).or_insert(0);
            *count = count.saturating_add(n);
            state.total = state.total.saturating_add(n);
        }
    }

    /// `key`'s count; zero for a key never added.
    ///
    /// # Examples
    ///
    /// ```
    /// let counters: quiesce::Counters<String> = [("eu-west".to_string(), 7)].into_iter().collect();
    /// assert_eq!(counters.get("eu-west"), 7); // a `&str` looks up a `String` key
    /// assert_eq!(counters.get("ap-south"), 0);
    /// ```
    pub fn get<Q>(&self, key: &Q) -> u64
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.state.read().counts.get(key).copied().unwrap_or(0)
    }

    /// The sum of all counts.
    ///
    /// # Examples
    ///
    /// ```
    /// let counters: quiesce::Counters<_> = [("eu-west", 7), ("us-east", 5)].into_iter().collect();
    /// assert_eq!(counters.total(), 12);
    /// ```
    pub fn total(&self) -> u64 {
        self.state.read().total
    }

    /// How many keys have a count.
    ///
    /// # Examples
    ///
    /// ```
    /// let counters = quiesce::Counters::new();
    /// counters.add("eu-west", 1);
    /// counters.add("eu-west", 1);
    /// counters.add("us-east", 0); // a key added with zero has a count too
    /// assert_eq!(counters.len(), 2);
    /// ```
    pub fn len(&self) -> usize {
        self.state.read().counts.len()
    }

    /// `true` when nothing was ever added.
    ///
    /// # Examples
    ///
    /// ```
    /// let counters = quiesce::Counters::new();
    /// assert!(counters.is_empty());
    /// counters.add("eu-west", 1);
    /// assert!(!counters.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.state.read().counts.is_empty()
    }

    /// Every count and the total, as one consistent view.
    ///
    /// # Examples
    ///
    /// ```
    /// let counters = quiesce::Counters::new();
    /// counters.add_all([("eu-west", 2), ("us-east", 3)]);
    /// let snapshot = counters.snapshot();
    /// assert_eq!(snapshot.total, 5);
    /// assert_eq!(snapshot.counts.len(), 2);
    /// ```
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
