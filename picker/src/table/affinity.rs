//! The table's prefix affinity: one approximate [`PrefixIndex`] per model, keyed by endpoint id.

use std::collections::HashMap;

use super::{EndpointId, ExactMatch, ModelKey};
use crate::hashing::KeyHashing;
use crate::prefix::PrefixIndex;

/// Endpoints that probably hold a request's leading blocks, and those that served its session.
/// Each list is sorted by endpoint id, with the number of leading keys held.
#[derive(Debug, Default)]
pub(crate) struct Holders {
    pub(crate) prefix: Vec<(EndpointId, u32)>,
    pub(crate) session: Vec<(EndpointId, u32)>,
    /// Leading tokens held by the KV events' account (read only for endpoints whose stream is live).
    pub(crate) exact: ExactMatch,
}

impl Holders {
    /// How many leading blocks `id` holds (0 when none).
    #[inline]
    pub(crate) fn blocks(&self, id: EndpointId) -> u32 {
        lookup(&self.prefix, id)
    }

    /// Whether `id` served the session.
    #[inline]
    pub(crate) fn session_hit(&self, id: EndpointId) -> bool {
        lookup(&self.session, id) > 0
    }

    /// Every endpoint named, sorted and without repeats.
    pub(crate) fn ids(&self) -> Vec<EndpointId> {
        let mut ids: Vec<EndpointId> = self
            .prefix
            .iter()
            .chain(&self.session)
            .chain(&self.exact.tokens)
            .map(|&(id, _)| id)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

fn lookup(list: &[(EndpointId, u32)], id: EndpointId) -> u32 {
    if list.is_empty() {
        return 0;
    }
    list.binary_search_by_key(&id, |&(e, _)| e)
        .map(|i| list[i].1)
        .unwrap_or(0)
}

/// One [`PrefixIndex`] per model.
#[derive(Debug)]
pub(crate) struct Affinity {
    by_model: HashMap<ModelKey, PrefixIndex, KeyHashing>,
    capacity: usize,
}

impl Affinity {
    /// Empty, keeping at most `capacity` blocks per endpoint and model.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            by_model: HashMap::default(),
            capacity,
        }
    }

    /// Applies a new bound to every model's index (endpoints over it are trimmed at their next insert).
    pub(crate) fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity;
        for index in self.by_model.values_mut() {
            index.set_capacity(capacity);
        }
    }

    /// The holders of `blocks` and of `session` in `model`'s index.
    pub(crate) fn holders(&self, model: ModelKey, blocks: &[u64], session: Option<u64>) -> Holders {
        let Some(index) = self.by_model.get(&model) else {
            return Holders::default();
        };
        let typed = |m: Vec<(u32, u32)>| m.into_iter().map(|(id, n)| (EndpointId(id), n)).collect();
        Holders {
            prefix: typed(index.matches(blocks)),
            session: session.map_or_else(Vec::new, |k| typed(index.matches(&[k]))),
            exact: ExactMatch::default(),
        }
    }

    /// Records that `id` now holds `blocks` and served `session` in `model`'s index.
    pub(crate) fn insert(
        &mut self,
        model: ModelKey,
        id: EndpointId,
        blocks: &[u64],
        session: Option<u64>,
    ) {
        if blocks.is_empty() && session.is_none() {
            return;
        }
        let capacity = self.capacity;
        let index = self
            .by_model
            .entry(model)
            .or_insert_with(|| PrefixIndex::new(capacity));
        if !blocks.is_empty() {
            index.insert(id.0, blocks);
        }
        if let Some(key) = session {
            index.insert(id.0, &[key]);
        }
    }

    /// Drops everything recorded for `id`, in every model.
    pub(crate) fn forget(&mut self, id: EndpointId) {
        self.by_model.retain(|_, index| {
            index.forget(id.0);
            !index.is_empty()
        });
    }

    /// Blocks recorded for `id` in `model`'s index.
    #[cfg(test)]
    pub(crate) fn blocks_of(&self, model: ModelKey, id: EndpointId) -> usize {
        self.by_model.get(&model).map_or(0, |i| i.blocks_of(id.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prefix::{BLOCK_BYTES, HOLDERS_PER_BLOCK, block_hashes};

    #[test]
    fn models_keep_separate_holders_and_a_new_bound_applies() {
        let mut a = Affinity::new(4);
        let (m1, m2) = (ModelKey::of("m1"), ModelKey::of("m2"));
        let keys = block_hashes(&"s".repeat(4 * BLOCK_BYTES), 16);
        a.insert(m1, EndpointId(1), &keys, None);
        // Another model's traffic with the same prompt does not touch m1's holders.
        for id in 0..(HOLDERS_PER_BLOCK as u32 + 5) {
            a.insert(m2, EndpointId(100 + id), &keys, None);
        }
        assert_eq!(a.holders(m1, &keys, None).prefix, vec![(EndpointId(1), 4)]);
        assert!(a.holders(ModelKey::of("m3"), &keys, None).prefix.is_empty());
        a.set_capacity(2);
        a.insert(
            m1,
            EndpointId(1),
            &block_hashes(&"t".repeat(BLOCK_BYTES), 1),
            None,
        );
        assert!(
            a.blocks_of(m1, EndpointId(1)) <= 2,
            "the lower bound applied"
        );
        a.forget(EndpointId(1));
        assert!(a.holders(m1, &keys, None).prefix.is_empty());
    }
}
