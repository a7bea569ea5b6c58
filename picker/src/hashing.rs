//! Fast, stable hashing for keys that are already hashes (prompt block hashes, model keys,
//! random decision ids) and for the prompt blocks themselves.
//!
//! `std`'s SipHash resists collision attacks on keys an attacker chooses; these keys are outputs
//! of a hash already, or endpoint ids the picker hands out, so a multiply-and-fold is enough and a
//! pick's dozens of map operations cost a fraction of SipHash's. Block hashes must be the same in
//! every replica and in the lab's emulator, so they use fixed constants, no random keys.

use std::hash::{BuildHasherDefault, Hasher};

/// Mixes 64 bits so every input bit affects every output bit (the MurmurHash3 finalizer).
#[inline]
pub(crate) fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The chained hash of one prompt block: the previous block's hash and this block's bytes.
#[inline]
pub(crate) fn chain(prev: u64, block: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = mix(prev ^ K) ^ block.len() as u64;
    let mut words = block.chunks_exact(8);
    for w in &mut words {
        let w = u64::from_le_bytes(w.try_into().expect("chunks of 8"));
        h = (h ^ mix(w)).rotate_left(27).wrapping_mul(K);
    }
    for &b in words.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(K);
    }
    mix(h)
}

/// A [`Hasher`] for keys that are hashes or small ids: folds what it is given and mixes once.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    #[inline]
    fn finish(&self) -> u64 {
        mix(self.0)
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        self.0 = chain(self.0, bytes);
    }

    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.0 = self.0.rotate_left(32) ^ u64::from(n);
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.0 = self.0.rotate_left(32) ^ n;
    }

    #[inline]
    fn write_u128(&mut self, n: u128) {
        self.0 = self.0.rotate_left(32) ^ (n as u64) ^ mix((n >> 64) as u64);
    }
}

/// Builds [`KeyHasher`]s, for `HashMap<K, V, KeyHashing>`.
pub(crate) type KeyHashing = BuildHasherDefault<KeyHasher>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn block_hashes_spread_and_depend_on_every_byte_and_the_chain() {
        let base = [b'a'; 64];
        let h = chain(0, &base);
        let mut seen = HashSet::new();
        for i in 0..64 {
            let mut b = base;
            b[i] = b'b';
            assert!(seen.insert(chain(0, &b)), "byte {i} collides");
            assert_ne!(chain(0, &b), h);
        }
        assert_ne!(chain(1, &base), h, "the previous block counts");
        // Low and high bits both vary (hash tables use both).
        let hashes: Vec<u64> = (0..1000u64).map(|i| chain(i, &base)).collect();
        let low: HashSet<u64> = hashes.iter().map(|h| h & 0xff).collect();
        let high: HashSet<u64> = hashes.iter().map(|h| h >> 56).collect();
        assert!(
            low.len() > 200 && high.len() > 200,
            "{} {}",
            low.len(),
            high.len()
        );
    }
}
