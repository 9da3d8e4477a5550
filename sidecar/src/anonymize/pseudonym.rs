//! Pseudonyms: `anon_` + the first 16 hex digits of HMAC-SHA256(key,
//! value), with bounded caches in front (identifiers repeat: a patient has
//! many rows, and one HMAC costs more than reading and writing a row).
//!
//! Each worker borrows a cache for the file it is doing and gives it back
//! after ([`Pseudonymizer::cache`]), so a cache stays warm from one file to
//! the next without being shared between threads; there are never more
//! caches than files in progress at once, and each holds at most
//! [`CACHE_ENTRIES`] values, so memory stays flat.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::ops::{Deref, DerefMut};

use csv::ByteRecord;
use hmac::{Hmac, KeyInit, Mac};
use parking_lot::Mutex;
use sha2::Sha256;

use super::key::Key;

const PREFIX: &[u8] = b"anon_";
/// Hex digits kept from the tag: 64 bits.
const HEX_DIGITS: usize = 16;
/// Length of a pseudonym in bytes.
pub(crate) const LEN: usize = PREFIX.len() + HEX_DIGITS;

/// Values one cache holds at most; it is emptied when full.
const CACHE_ENTRIES: usize = 1 << 16;
/// Longer values are hashed every time rather than cached.
const CACHE_VALUE_MAX: usize = 64;

/// Computes pseudonyms under one key. Shared by all workers.
pub(crate) struct Pseudonymizer {
    /// HMAC state with the key already absorbed; cloned per value.
    keyed: Hmac<Sha256>,
    /// Caches not lent out.
    spare: Mutex<Vec<Cache>>,
}

impl Pseudonymizer {
    /// A pseudonymizer for `key`.
    pub(crate) fn new(key: &Key) -> anyhow::Result<Pseudonymizer> {
        let keyed = Hmac::<Sha256>::new_from_slice(key.bytes())
            .map_err(|err| anyhow::anyhow!("cannot key HMAC-SHA256: {err}"))?;
        Ok(Pseudonymizer {
            keyed,
            spare: Mutex::new(Vec::new()),
        })
    }

    /// The pseudonym of `value`.
    pub(crate) fn pseudonym(&self, value: &[u8]) -> [u8; LEN] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut mac = self.keyed.clone();
        mac.update(value);
        let tag = mac.finalize().into_bytes();
        let mut out = [0u8; LEN];
        out[..PREFIX.len()].copy_from_slice(PREFIX);
        for (i, byte) in tag.iter().take(HEX_DIGITS / 2).enumerate() {
            out[PREFIX.len() + 2 * i] = HEX[usize::from(byte >> 4)];
            out[PREFIX.len() + 2 * i + 1] = HEX[usize::from(byte & 0xf)];
        }
        out
    }

    /// A cache to use for one file, given back when dropped.
    pub(crate) fn cache(&self) -> Lent<'_> {
        let cache = self.spare.lock().pop().unwrap_or_else(Cache::new);
        Lent { owner: self, cache }
    }
}

/// Known pseudonyms, by value.
pub(crate) struct Cache {
    seen: HashMap<Box<[u8]>, [u8; LEN], Seeded>,
}

impl Cache {
    fn new() -> Cache {
        Cache {
            seen: HashMap::with_hasher(Seeded::new()),
        }
    }

    /// Pushes onto `record` the pseudonym of `value` under `p`, or an empty
    /// field if `value` is empty.
    pub(crate) fn push(&mut self, p: &Pseudonymizer, value: &[u8], record: &mut ByteRecord) {
        if value.is_empty() {
            record.push_field(b"");
        } else if value.len() > CACHE_VALUE_MAX {
            record.push_field(&p.pseudonym(value));
        } else if let Some(known) = self.seen.get(value) {
            record.push_field(known);
        } else {
            let fresh = p.pseudonym(value);
            if self.seen.len() >= CACHE_ENTRIES {
                self.seen.clear();
            }
            self.seen.insert(value.into(), fresh);
            record.push_field(&fresh);
        }
    }
}

/// A cache lent by a [`Pseudonymizer`]; goes back to it on drop.
pub(crate) struct Lent<'a> {
    owner: &'a Pseudonymizer,
    cache: Cache,
}

impl Deref for Lent<'_> {
    type Target = Cache;
    fn deref(&self) -> &Cache {
        &self.cache
    }
}

impl DerefMut for Lent<'_> {
    fn deref_mut(&mut self) -> &mut Cache {
        &mut self.cache
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        // An empty map does not allocate.
        let cache = std::mem::replace(&mut self.cache, Cache::new());
        self.owner.spare.lock().push(cache);
    }
}

/// A fast hash for short byte strings (a multiply-rotate over 8-byte
/// words, as rustc's FxHash, plus a final mix), seeded at random per
/// process so that crafted input cannot aim at collisions. SipHash, the
/// std default, cost as much as the HMAC the cache saves.
#[derive(Clone)]
struct Seeded(u64);

impl Seeded {
    fn new() -> Seeded {
        Seeded(RandomState::new().build_hasher().finish() | 1)
    }
}

impl BuildHasher for Seeded {
    type Hasher = Fast;
    fn build_hasher(&self) -> Fast {
        Fast(self.0)
    }
}

struct Fast(u64);

impl Fast {
    const K: u64 = 0x517c_c1b7_2722_0a95;

    #[inline]
    fn mix(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(Self::K);
    }
}

impl Hasher for Fast {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.mix(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59));
        }
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // murmur3's fmix64: spreads the bits hashbrown reads (the top 7).
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudonymizer(key: &[u8]) -> Pseudonymizer {
        Pseudonymizer {
            keyed: Hmac::<Sha256>::new_from_slice(key).unwrap(),
            spare: Mutex::new(Vec::new()),
        }
    }

    #[test]
    fn known_answer() {
        // RFC 4231 test case 2: HMAC-SHA256("Jefe", "what do ya want for
        // nothing?") = 5bdcc146bf60754e6a042426089575c7...
        let p = pseudonymizer(b"Jefe");
        assert_eq!(
            &p.pseudonym(b"what do ya want for nothing?"),
            b"anon_5bdcc146bf60754e"
        );
    }

    #[test]
    fn cache_gives_the_same_answer_and_keeps_empty_empty() {
        let p = pseudonymizer(b"0123456789abcdef");
        let mut record = ByteRecord::new();
        let long = vec![b'x'; CACHE_VALUE_MAX + 1];
        for _ in 0..2 {
            let mut cache = p.cache();
            for value in [&b"P-001"[..], b"P-001", b"", &long] {
                cache.push(&p, value, &mut record);
            }
        }
        assert_eq!(
            p.spare.lock().len(),
            1,
            "the cache came back and was reused"
        );
        assert_eq!(&record[0], &p.pseudonym(b"P-001")[..]);
        assert_eq!(&record[1], &record[0]);
        assert_eq!(&record[2], b"");
        assert_eq!(&record[3], &p.pseudonym(&long)[..]);
        let fields: Vec<&[u8]> = record.iter().collect();
        assert_eq!(fields[4..], fields[..4]);
    }

    #[test]
    fn the_hash_tells_near_values_apart() {
        let build = Seeded(1);
        let hash = |v: &[u8]| build.hash_one(v);
        assert_ne!(hash(b"P-0001"), hash(b"P-0002"));
        assert_ne!(hash(b"P-0001"), hash(b"P-0001\0"));
        assert_ne!(hash(b""), hash(b"\0"));
    }
}
