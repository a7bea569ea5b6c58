//! One model's approximate prefix index: block hash → endpoints that probably hold it, with an
//! LRU bound per endpoint, so memory is bounded by `capacity × endpoints`.

use std::collections::{HashMap, VecDeque};

use super::HOLDERS_PER_BLOCK;
#[cfg(test)]
use super::{BLOCK_BYTES, block_hashes};
use crate::hashing::KeyHashing;

/// One endpoint's recency list. Entries whose stamp no longer matches `holders` are stale and are
/// skipped (lazy deletion keeps touches O(1)).
#[derive(Debug, Default)]
struct Lru {
    order: VecDeque<(u64, u64)>,
    live: usize,
}

/// Block hash → endpoints that probably hold it (each list sorted by endpoint id, so a lookup
/// intersects lists by merging), with per-endpoint LRU bounds.
#[derive(Debug)]
pub struct PrefixIndex {
    holders: HashMap<u64, Vec<(u32, u64)>, KeyHashing>,
    lrus: HashMap<u32, Lru, KeyHashing>,
    capacity: usize,
    tick: u64,
}

impl PrefixIndex {
    /// An empty index keeping at most `capacity` blocks per endpoint.
    pub fn new(capacity: usize) -> Self {
        Self {
            holders: HashMap::default(),
            lrus: HashMap::default(),
            capacity: capacity.max(1),
            tick: 0,
        }
    }

    /// For every endpoint holding at least the first block: how many leading blocks it holds.
    /// Sorted by endpoint id.
    pub fn matches(&self, hashes: &[u64]) -> Vec<(u32, u32)> {
        let Some(first) = hashes.first().and_then(|h| self.holders.get(h)) else {
            return Vec::new();
        };
        // Holder lists are sorted by id, so `matched` is too, and each depth is one merge.
        let mut matched: Vec<(u32, u32)> = first.iter().map(|&(id, _)| (id, 1)).collect();
        for (depth, hash) in hashes.iter().enumerate().skip(1) {
            let Some(holders) = self.holders.get(hash) else {
                break;
            };
            let mut progressed = false;
            let mut j = 0;
            for m in matched.iter_mut().filter(|m| m.1 as usize == depth) {
                while j < holders.len() && holders[j].0 < m.0 {
                    j += 1;
                }
                if j < holders.len() && holders[j].0 == m.0 {
                    m.1 += 1;
                    progressed = true;
                }
            }
            if !progressed {
                break;
            }
        }
        matched
    }

    /// Records that endpoint `id` now holds these blocks (most recent last).
    pub fn insert(&mut self, id: u32, hashes: &[u64]) {
        let mut added = 0;
        let mut touched = Vec::with_capacity(hashes.len());
        for &hash in hashes {
            self.tick += 1;
            let stamp = self.tick;
            let holders = self.holders.entry(hash).or_default();
            match holders.binary_search_by_key(&id, |&(e, _)| e) {
                Ok(i) => holders[i].1 = stamp,
                Err(at) if holders.len() >= HOLDERS_PER_BLOCK => {
                    // Full: the least recent holder gives its place, and the list is rotated so
                    // the newcomer lands where its id sorts (one move instead of two).
                    let oldest = (0..holders.len())
                        .min_by_key(|&i| holders[i].1)
                        .expect("a full holder list is not empty");
                    let displaced = std::mem::replace(&mut holders[oldest], (id, stamp)).0;
                    if oldest < at {
                        holders[oldest..at].rotate_left(1);
                    } else {
                        holders[at..=oldest].rotate_right(1);
                    }
                    // Its recency entry goes stale and is skipped when it comes up.
                    if let Some(l) = self.lrus.get_mut(&displaced) {
                        l.live -= 1;
                    }
                    added += 1;
                }
                Err(at) => {
                    holders.insert(at, (id, stamp));
                    added += 1;
                }
            }
            touched.push((hash, stamp));
        }
        let lru = self.lrus.entry(id).or_default();
        lru.live += added;
        lru.order.extend(touched);
        while lru.live > self.capacity {
            let Some((hash, stamp)) = lru.order.pop_front() else {
                break;
            };
            if remove_holder(&mut self.holders, hash, id, Some(stamp)) {
                lru.live -= 1;
            }
        }
        // Stale entries (re-touched or displaced blocks) are dropped once they outnumber the live
        // ones: memory follows what the endpoint holds, and each compaction is paid for by the
        // touches that made it necessary.
        if lru.order.len() > 2 * lru.live + 64 {
            let holders = &self.holders;
            lru.order.retain(|&(hash, stamp)| {
                holders.get(&hash).is_some_and(|hs| {
                    hs.binary_search_by_key(&id, |&(e, _)| e)
                        .is_ok_and(|i| hs[i].1 == stamp)
                })
            });
        }
    }

    /// Changes the bound; an endpoint over a lower one is trimmed at its next insert.
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.max(1);
    }

    /// Whether the index holds nothing.
    pub fn is_empty(&self) -> bool {
        self.holders.is_empty()
    }

    /// Drops everything recorded for endpoint `id`.
    pub fn forget(&mut self, id: u32) {
        if let Some(lru) = self.lrus.remove(&id) {
            for (hash, _) in lru.order {
                remove_holder(&mut self.holders, hash, id, None);
            }
        }
    }

    /// Blocks recorded for endpoint `id`.
    pub fn blocks_of(&self, id: u32) -> usize {
        self.lrus.get(&id).map_or(0, |l| l.live)
    }

    /// Distinct block hashes in the index.
    pub fn distinct_blocks(&self) -> usize {
        self.holders.len()
    }
}

/// Removes `id` from `hash`'s holders (only if its stamp is `stamp`, when given); true if removed.
fn remove_holder(
    holders: &mut HashMap<u64, Vec<(u32, u64)>, KeyHashing>,
    hash: u64,
    id: u32,
    stamp: Option<u64>,
) -> bool {
    let Some(list) = holders.get_mut(&hash) else {
        return false;
    };
    let Some(pos) = list
        .iter()
        .position(|&(e, s)| e == id && stamp.is_none_or(|st| st == s))
    else {
        return false;
    };
    list.remove(pos);
    if list.is_empty() {
        holders.remove(&hash);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(blocks: usize, tag: char) -> String {
        std::iter::repeat_n(tag, blocks * BLOCK_BYTES).collect()
    }

    #[test]
    fn hashes_chain_so_equal_blocks_at_different_depths_differ() {
        let h = block_hashes(&prompt(3, 'a'), 100);
        assert_eq!(h.len(), 3);
        assert_ne!(h[0], h[1]);
        assert_ne!(h[1], h[2]);
        // A partial trailing block is ignored and the cap is honoured.
        assert_eq!(
            block_hashes(&format!("{}xyz", prompt(2, 'a')), 100).len(),
            2
        );
        assert_eq!(block_hashes(&prompt(10, 'a'), 4).len(), 4);
    }

    #[test]
    fn matches_count_the_common_leading_blocks() {
        let mut idx = PrefixIndex::new(100);
        let shared = prompt(2, 's');
        let a = block_hashes(&format!("{shared}{}", prompt(2, 'a')), 100);
        let b = block_hashes(&format!("{shared}{}", prompt(1, 'b')), 100);
        idx.insert(1, &a);
        idx.insert(2, &b);
        let q = block_hashes(&format!("{shared}{}", prompt(3, 'a')), 100);
        assert_eq!(idx.matches(&q), vec![(1, 4), (2, 2)]);
        assert!(idx.matches(&block_hashes(&prompt(2, 'z'), 100)).is_empty());
    }

    #[test]
    fn each_endpoint_is_bounded_and_evicts_least_recent() {
        let mut idx = PrefixIndex::new(4);
        let old = block_hashes(&prompt(4, 'o'), 100);
        idx.insert(7, &old);
        for i in 0..50 {
            let p = format!("{}{}", i, prompt(3, 'n'));
            idx.insert(7, &block_hashes(&p, 100));
            assert!(idx.blocks_of(7) <= 4);
        }
        assert!(idx.matches(&old).is_empty(), "oldest blocks were evicted");
        assert!(idx.distinct_blocks() <= 4);
        assert!(idx.lrus[&7].order.len() <= 2 * 4 + 64);
    }

    #[test]
    fn retouching_the_same_blocks_keeps_the_recency_list_small() {
        // A large capacity that is never reached: re-touched blocks leave stale entries behind,
        // and those are dropped once they outnumber the live ones, not when the capacity is.
        let mut idx = PrefixIndex::new(8192);
        let same = block_hashes(&prompt(4, 's'), 100);
        for _ in 0..10_000 {
            idx.insert(7, &same);
        }
        assert_eq!(idx.blocks_of(7), same.len());
        assert!(idx.lrus[&7].order.len() <= 2 * same.len() + 64 + same.len());
    }

    #[test]
    fn touching_a_block_keeps_it() {
        let mut idx = PrefixIndex::new(2);
        let a = block_hashes(&prompt(1, 'a'), 1);
        let b = block_hashes(&prompt(1, 'b'), 1);
        let c = block_hashes(&prompt(1, 'c'), 1);
        idx.insert(1, &a);
        idx.insert(1, &b);
        idx.insert(1, &a); // a is now the most recent
        idx.insert(1, &c); // evicts b
        assert_eq!(idx.matches(&a), vec![(1, 1)]);
        assert!(idx.matches(&b).is_empty());
    }

    #[test]
    fn a_block_remembers_its_most_recent_holders_only() {
        let mut idx = PrefixIndex::new(100);
        let shared = block_hashes(&prompt(2, 's'), 10);
        for id in 0..(HOLDERS_PER_BLOCK as u32 + 10) {
            idx.insert(id, &shared);
        }
        let m = idx.matches(&shared);
        assert_eq!(m.len(), HOLDERS_PER_BLOCK);
        assert!(m.iter().all(|&(id, depth)| id >= 10 && depth == 2), "{m:?}");
        assert_eq!(
            idx.blocks_of(0),
            0,
            "displaced holders no longer count the block"
        );
        // A displaced endpoint can insert again, and its stale entries do not break eviction.
        idx.insert(0, &shared);
        assert!(idx.matches(&shared).iter().any(|&(id, _)| id == 0));
        for i in 0..200 {
            idx.insert(0, &block_hashes(&format!("{i}{}", prompt(1, 'x')), 10));
        }
        assert!(idx.blocks_of(0) <= 100);
    }

    #[test]
    fn holder_lists_stay_sorted_through_inserts_evictions_and_forgets() {
        let mut idx = PrefixIndex::new(3);
        let shared = block_hashes(&prompt(2, 's'), 10);
        // Ids in a scrambled order, more than a block keeps, some blocks evicted by the LRU bound.
        for k in 0..(3 * HOLDERS_PER_BLOCK as u32) {
            let id = (k * 37) % 101;
            idx.insert(id, &shared);
            if k % 5 == 0 {
                idx.insert(id, &block_hashes(&format!("{k}{}", prompt(2, 'x')), 10));
            }
            if k % 7 == 0 {
                idx.forget((k * 13) % 101);
            }
            for list in idx.holders.values() {
                assert!(list.windows(2).all(|w| w[0].0 < w[1].0), "{list:?}");
            }
        }
        let m = idx.matches(&shared);
        assert!(m.windows(2).all(|w| w[0].0 < w[1].0), "{m:?}");
        assert!(m.iter().all(|&(_, depth)| depth >= 1));
    }

    #[test]
    fn forget_removes_an_endpoint_entirely() {
        let mut idx = PrefixIndex::new(10);
        let a = block_hashes(&prompt(3, 'a'), 10);
        idx.insert(1, &a);
        idx.insert(2, &a);
        idx.forget(1);
        assert_eq!(idx.matches(&a), vec![(2, 3)]);
        idx.forget(2);
        assert_eq!(idx.distinct_blocks(), 0);
    }
}
