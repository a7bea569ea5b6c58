//! A hash map keyed by request ids, with a hash that costs one multiply.
//!
//! The simulator and the engine model look a request up by id several times over its life — tens
//! of millions of times in a 1,000-pod run — and SipHash, the standard map's hash, was a visible
//! share of that. Request ids here come from a counter (the workload generator, the emulator),
//! never from a peer that could choose colliding keys, so the standard map's defence against
//! hash flooding buys nothing. Only lookups use the hash: no result depends on map order.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A map from request id to `V`.
pub type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// Fibonacci hashing of one `u64`: the multiply spreads consecutive ids over the table's low bits
/// and fills the high bits the map uses as tags.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed here; any other input is still hashed, byte by byte.
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_ids_land_in_distinct_buckets_and_are_all_found() {
        let mut m: IdMap<u64> = IdMap::default();
        for id in 0..100_000 {
            m.insert(id, id * 2);
        }
        assert_eq!(m.len(), 100_000);
        assert!((0..100_000).all(|id| m[&id] == id * 2));
        assert_eq!(m.remove(&7), Some(14));
        assert!(!m.contains_key(&7));
    }
}
