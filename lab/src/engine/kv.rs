//! The paged KV cache: a pool of fixed-size blocks, plus a prefix cache of hashed blocks that
//! stay resident (in LRU order) after their last user finished, until the space is needed.

use std::collections::{BTreeMap, HashMap};

/// One hashed (shareable) block: how many running sequences use it, and when it was last released.
#[derive(Debug, Clone, Copy)]
struct Hashed {
    refs: u32,
    stamp: u64,
}

/// A pool of KV blocks. Blocks are either in use by running sequences, cached (hashed, no user,
/// evictable), or empty. Cached blocks count as free: allocating evicts the least recently used.
#[derive(Debug)]
pub struct BlockPool {
    total: u64,
    used: u64,
    hashed: HashMap<u64, Hashed>,
    lru: BTreeMap<u64, u64>,
    clock: u64,
}

impl BlockPool {
    /// A pool of `total` empty blocks.
    pub fn new(total: u64) -> Self {
        Self {
            total,
            used: 0,
            hashed: HashMap::new(),
            lru: BTreeMap::new(),
            clock: 0,
        }
    }

    /// Blocks in the pool.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Blocks held by running sequences.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Blocks that can be allocated now (empty or evictable cache).
    pub fn free(&self) -> u64 {
        self.total - self.used
    }

    /// Cached blocks nobody uses (the evictable prefix cache).
    pub fn cached_idle(&self) -> usize {
        self.lru.len()
    }

    /// How many of `hashes`, from the start, are resident: the prefix a new sequence can skip.
    pub fn cached_prefix(&self, hashes: &[u64]) -> usize {
        hashes
            .iter()
            .take_while(|h| self.hashed.contains_key(h))
            .count()
    }

    /// Blocks that acquiring `hashes` and `private` more blocks would take from the free pool.
    pub fn cost(&self, hashes: &[u64], private: u64) -> u64 {
        let shared_in_use = hashes
            .iter()
            .filter(|h| self.hashed.get(h).is_some_and(|e| e.refs > 0))
            .count() as u64;
        hashes.len() as u64 - shared_in_use + private
    }

    /// Takes `hashes` (shared with other users when resident) and `private` blocks.
    /// Returns false and changes nothing when they do not fit.
    pub fn acquire(&mut self, hashes: &[u64], private: u64) -> bool {
        if self.cost(hashes, private) > self.free() {
            return false;
        }
        // Pin every resident block first, so that evictions below cannot take one we are about to use.
        for h in hashes {
            if let Some(e) = self.hashed.get_mut(h) {
                if e.refs == 0 {
                    self.lru.remove(&e.stamp);
                    self.used += 1;
                }
                e.refs += 1;
            }
        }
        for h in hashes {
            if !self.hashed.contains_key(h) {
                self.take(1);
                self.hashed.insert(*h, Hashed { refs: 1, stamp: 0 });
            }
        }
        self.take(private);
        true
    }

    /// Takes `n` more private blocks; false (and nothing taken) when they do not fit.
    pub fn grow(&mut self, n: u64) -> bool {
        if n > self.free() {
            return false;
        }
        self.take(n);
        true
    }

    /// Gives back `private` blocks and one use of each of `hashes`; unused hashed blocks stay cached.
    pub fn release(&mut self, hashes: &[u64], private: u64) {
        self.used -= private;
        // Released in reverse so that a prefix's first blocks are the most recently used: the
        // cache then evicts the tail of a prefix before its head, as vLLM does.
        for h in hashes.iter().rev() {
            if let Some(e) = self.hashed.get_mut(h) {
                e.refs -= 1;
                if e.refs == 0 {
                    self.clock += 1;
                    e.stamp = self.clock;
                    self.lru.insert(self.clock, *h);
                    self.used -= 1;
                }
            }
        }
    }

    /// Marks `n` blocks used, evicting idle cached blocks when no empty block is left.
    fn take(&mut self, n: u64) {
        debug_assert!(n <= self.free());
        let empty = self.total - self.used - self.lru.len() as u64;
        for _ in empty.min(n)..n {
            if let Some((_, h)) = self.lru.pop_first() {
                self.hashed.remove(&h);
            }
        }
        self.used += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_prefix_stays_cached_until_space_is_needed() {
        let mut pool = BlockPool::new(10);
        assert!(pool.acquire(&[1, 2, 3], 2));
        assert_eq!(pool.used(), 5);
        pool.release(&[1, 2, 3], 2);
        assert_eq!(pool.used(), 0);
        assert_eq!(pool.cached_prefix(&[1, 2, 3, 4]), 3);
        // 7 empty blocks plus 3 cached: taking 8 evicts one cached block, the prefix's tail first.
        assert!(pool.grow(8));
        assert_eq!(pool.cached_prefix(&[1, 2, 3]), 2);
    }

    #[test]
    fn shared_blocks_are_counted_once() {
        let mut pool = BlockPool::new(10);
        assert!(pool.acquire(&[1, 2], 1));
        assert_eq!(pool.cost(&[1, 2, 9], 1), 2);
        assert!(pool.acquire(&[1, 2, 9], 1));
        assert_eq!(pool.used(), 5);
        pool.release(&[1, 2], 1);
        assert_eq!(
            pool.used(),
            4,
            "blocks 1 and 2 are still used by the second sequence"
        );
    }

    #[test]
    fn acquire_that_does_not_fit_changes_nothing() {
        let mut pool = BlockPool::new(4);
        assert!(pool.acquire(&[], 3));
        assert!(!pool.acquire(&[7, 8], 0));
        assert_eq!(pool.used(), 3);
        assert_eq!(pool.cached_prefix(&[7]), 0);
    }
}
