//! The paged KV cache: a pool of fixed-size blocks, plus a prefix cache of keyed blocks that
//! stay resident (in LRU order) after their last user finished, until the space is needed.
//!
//! Blocks are keyed by [`inferpick_schema::kv::block_keys`] over the prompt's token ids, chained
//! from the root of the model they were computed for (the base model or a LoRA adapter), so a key
//! names a whole token prefix under one model. The pool can keep a journal of the blocks it
//! stored and evicted, which owners drain into KV-event messages (vLLM's `BlockStored` and
//! `BlockRemoved`).

use std::collections::{BTreeMap, HashMap};

/// One keyed (shareable) block: how many running sequences use it, when it was last released,
/// and the model (adapter) it was computed for.
#[derive(Debug, Clone, Copy)]
struct Hashed {
    refs: u32,
    stamp: u64,
    adapter: Option<u32>,
}

/// One change to the set of keyed blocks, in the order it happened.
#[derive(Debug, Clone, Copy)]
struct Change {
    adapter: Option<u32>,
    key: u64,
    stored: bool,
}

/// What changed in the prefix cache since the last [`BlockPool::drain_changes`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvChanges {
    /// The journal outgrew its bound and was dropped: what changed is unknown, so the reader must
    /// start over from [`BlockPool::cached_blocks`].
    pub overflowed: bool,
    /// The whole cache was dropped before the changes in `groups`.
    pub cleared: bool,
    /// Net changes per model (`None` is the base model), models in ascending order.
    pub groups: Vec<KvGroupChanges>,
}

/// Net changes under one model: a block stored and evicted within one drain appears in neither
/// list, one evicted and stored again appears in neither, so `stored` and `removed` never share
/// a key and may be applied in either order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvGroupChanges {
    /// The adapter, by index; `None` for the base model.
    pub adapter: Option<u32>,
    /// Keys now held that were not before, in the order they were (last) stored.
    pub stored: Vec<u64>,
    /// Keys held before that are no longer.
    pub removed: Vec<u64>,
}

impl KvChanges {
    /// Whether there is nothing to tell.
    pub fn is_empty(&self) -> bool {
        !self.overflowed && !self.cleared && self.groups.is_empty()
    }
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
    /// Changes since the last drain, while a journal is kept (`journal_limit > 0`).
    journal: Vec<Change>,
    journal_limit: usize,
    journal_overflowed: bool,
    cleared: bool,
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
            journal: Vec::new(),
            journal_limit: 0,
            journal_overflowed: false,
            cleared: false,
        }
    }

    /// Starts keeping a journal of stored and evicted blocks, of at most `limit` changes between
    /// drains (past that it is dropped and the next drain says so). 0 stops it.
    pub fn keep_journal(&mut self, limit: usize) {
        self.journal_limit = limit;
        self.journal.clear();
        self.journal_overflowed = false;
        self.cleared = false;
    }

    /// Whether anything was journaled since the previous drain.
    pub fn has_changes(&self) -> bool {
        !self.journal.is_empty() || self.journal_overflowed || self.cleared
    }

    /// The net changes since the previous drain (or since the journal was started).
    pub fn drain_changes(&mut self) -> KvChanges {
        let overflowed = std::mem::take(&mut self.journal_overflowed);
        let cleared = std::mem::take(&mut self.cleared);
        let journal = std::mem::take(&mut self.journal);
        if overflowed {
            return KvChanges {
                overflowed,
                cleared,
                groups: Vec::new(),
            };
        }
        // Per key: whether its first and last changes were stores, and where the last was. A
        // key's changes alternate (stored, removed, stored…), so those decide its net change.
        let mut net: HashMap<u64, (bool, bool, usize, Option<u32>)> =
            HashMap::with_capacity(journal.len());
        for (i, c) in journal.iter().enumerate() {
            net.entry(c.key)
                .and_modify(|e| {
                    e.1 = c.stored;
                    e.2 = i;
                })
                .or_insert((c.stored, c.stored, i, c.adapter));
        }
        let mut changes: Vec<(usize, Option<u32>, u64, bool)> = net
            .into_iter()
            .filter(|(_, (first, last, _, _))| first == last)
            .map(|(key, (_, last, at, adapter))| (at, adapter, key, last))
            .collect();
        changes.sort_unstable_by_key(|&(at, adapter, ..)| (adapter, at));
        let mut groups: Vec<KvGroupChanges> = Vec::new();
        for (_, adapter, key, stored) in changes {
            if groups.last().is_none_or(|g| g.adapter != adapter) {
                groups.push(KvGroupChanges {
                    adapter,
                    ..KvGroupChanges::default()
                });
            }
            let g = groups.last_mut().expect("pushed above");
            if stored {
                g.stored.push(key);
            } else {
                g.removed.push(key);
            }
        }
        self.journal = journal;
        self.journal.clear();
        KvChanges {
            overflowed,
            cleared,
            groups,
        }
    }

    /// Every keyed block held now, per model (ascending, `None` first): what a reader that lost
    /// track is sent. Within a model, blocks in use come first, then idle ones from the most
    /// recently used.
    pub fn cached_blocks(&self) -> Vec<KvGroupChanges> {
        let mut all: Vec<(Option<u32>, u64, u64)> = self
            .hashed
            .iter()
            .map(|(&key, e)| (e.adapter, u64::MAX - e.stamp, key))
            .collect();
        all.sort_unstable();
        let mut groups: Vec<KvGroupChanges> = Vec::new();
        for (adapter, _, key) in all {
            if groups.last().is_none_or(|g| g.adapter != adapter) {
                groups.push(KvGroupChanges {
                    adapter,
                    ..KvGroupChanges::default()
                });
            }
            groups.last_mut().expect("pushed above").stored.push(key);
        }
        groups
    }

    /// Drops every idle cached block (vLLM's `reset_prefix_cache`), journaled as a clear. Refused
    /// (false) while any keyed block is in use, as vLLM refuses it.
    pub fn clear_cache(&mut self) -> bool {
        if self.hashed.len() != self.lru.len() {
            return false;
        }
        self.hashed.clear();
        self.lru.clear();
        if self.journal_limit > 0 {
            self.journal.clear();
            self.cleared = true;
        }
        true
    }

    fn note(&mut self, adapter: Option<u32>, key: u64, stored: bool) {
        if self.journal_limit == 0 || self.journal_overflowed {
            return;
        }
        if self.journal.len() >= self.journal_limit {
            self.journal.clear();
            self.journal_overflowed = true;
            return;
        }
        self.journal.push(Change {
            adapter,
            key,
            stored,
        });
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

    /// Takes `hashes` (keys computed for `adapter`, shared with other users when resident) and
    /// `private` blocks. Returns false and changes nothing when they do not fit.
    pub fn acquire(&mut self, hashes: &[u64], private: u64, adapter: Option<u32>) -> bool {
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
                self.hashed.insert(
                    *h,
                    Hashed {
                        refs: 1,
                        stamp: 0,
                        adapter,
                    },
                );
                self.note(adapter, *h, true);
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
            if let Some((_, h)) = self.lru.pop_first()
                && let Some(e) = self.hashed.remove(&h)
            {
                self.note(e.adapter, h, false);
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
        assert!(pool.acquire(&[1, 2, 3], 2, None));
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
        assert!(pool.acquire(&[1, 2], 1, None));
        assert_eq!(pool.cost(&[1, 2, 9], 1), 2);
        assert!(pool.acquire(&[1, 2, 9], 1, None));
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
        assert!(pool.acquire(&[], 3, None));
        assert!(!pool.acquire(&[7, 8], 0, None));
        assert_eq!(pool.used(), 3);
        assert_eq!(pool.cached_prefix(&[7]), 0);
    }

    #[test]
    fn the_journal_gives_net_changes_per_model() {
        let mut pool = BlockPool::new(4);
        pool.keep_journal(100);
        assert!(pool.acquire(&[1, 2], 0, None));
        assert!(pool.acquire(&[7], 0, Some(3)));
        pool.release(&[1, 2], 0);
        pool.release(&[7], 0);
        let c = pool.drain_changes();
        assert_eq!(
            c.groups,
            vec![
                KvGroupChanges {
                    adapter: None,
                    stored: vec![1, 2],
                    removed: vec![],
                },
                KvGroupChanges {
                    adapter: Some(3),
                    stored: vec![7],
                    removed: vec![],
                },
            ]
        );
        // 1 empty block and 3 idle ones (LRU order 2, 1, 7): storing 5 with 2 private blocks
        // evicts 2 and 1; growing by 4 then evicts 7 and 5, so 5 nets nothing.
        assert!(pool.acquire(&[5], 2, None));
        pool.release(&[5], 2);
        assert!(pool.grow(4));
        let c = pool.drain_changes();
        let removed: Vec<u64> = c.groups.iter().flat_map(|g| g.removed.clone()).collect();
        let stored: Vec<u64> = c.groups.iter().flat_map(|g| g.stored.clone()).collect();
        assert!(stored.is_empty(), "5 was stored and evicted: {c:?}");
        let mut removed_sorted = removed.clone();
        removed_sorted.sort_unstable();
        assert_eq!(removed_sorted, vec![1, 2, 7]);
        assert!(pool.drain_changes().is_empty());
    }

    #[test]
    fn an_overflowing_journal_says_so_and_the_full_state_follows() {
        let mut pool = BlockPool::new(100);
        pool.keep_journal(3);
        assert!(pool.acquire(&[1, 2, 3, 4], 0, None));
        let c = pool.drain_changes();
        assert!(c.overflowed && c.groups.is_empty());
        let all = pool.cached_blocks();
        assert_eq!(all.len(), 1);
        let mut keys = all[0].stored.clone();
        keys.sort_unstable();
        assert_eq!(keys, vec![1, 2, 3, 4]);
        // The journal restarts after a drain.
        pool.release(&[1, 2, 3, 4], 0);
        assert!(pool.acquire(&[9], 0, None));
        assert_eq!(pool.drain_changes().groups[0].stored, vec![9]);
    }

    #[test]
    fn clearing_is_refused_while_blocks_are_in_use() {
        let mut pool = BlockPool::new(10);
        pool.keep_journal(10);
        assert!(pool.acquire(&[1], 0, None));
        assert!(!pool.clear_cache());
        pool.release(&[1], 0);
        assert!(pool.clear_cache());
        assert_eq!(pool.cached_prefix(&[1]), 0);
        let c = pool.drain_changes();
        assert!(c.cleared && c.groups.is_empty(), "{c:?}");
    }
}
