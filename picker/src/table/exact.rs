//! Token-exact prefix state: which endpoint holds which KV block, as its engine said in its KV
//! events (relayed by its agent as `KvEvents` messages, `POST /v1/kv-events`).
//!
//! One index per model: block key ([`inferpick_schema::kv::block_key`]) → the endpoints holding
//! it, each list sorted by endpoint id so a lookup walks the prompt's keys and merges. Each
//! endpoint's stream keeps its own set of keys (to apply `BlockRemoved`, a reset or the endpoint's
//! departure), bounded by `max_blocks`, and all of them together by `max_total`: past either, newly
//! stored blocks are not recorded (and counted), so neither a hostile or broken agent nor a large
//! fleet can grow the picker's memory without bound.
//!
//! An endpoint is routed on this index only while its stream is live (its agent said so within
//! the last `max_age`); otherwise it falls back to the approximate index, and the counter cell's
//! `exact_until_ns` is what the scan reads to tell which.

use std::collections::HashMap;

use inferpick_schema::kv::{BASE_ROOT, KvAck, KvEvents, KvStreamState, adapter_root, block_key};

use super::{EndpointId, ModelKey};
use crate::hashing::KeyHashing;

/// Most distinct block sizes one model's endpoints may use (engines of one model almost always
/// share one); keys are computed once per size at pick time.
const MAX_BLOCK_SIZES: usize = 4;

/// One model's blocks: key → holders sorted by endpoint id.
#[derive(Debug, Default)]
struct ModelBlocks {
    holders: HashMap<u64, Vec<EndpointId>, KeyHashing>,
    /// Block sizes in use by this model's streams, with how many streams use each.
    block_sizes: Vec<(u32, u32)>,
    /// Keys chain from this root: the adapter's for an adapter, the base model's otherwise.
    root: u64,
}

impl ModelBlocks {
    fn add(&mut self, key: u64, id: EndpointId) {
        let list = self.holders.entry(key).or_default();
        if let Err(at) = list.binary_search(&id) {
            list.insert(at, id);
        }
    }

    fn remove(&mut self, key: u64, id: EndpointId) {
        if let Some(list) = self.holders.get_mut(&key) {
            if let Ok(at) = list.binary_search(&id) {
                list.remove(at);
            }
            if list.is_empty() {
                self.holders.remove(&key);
            }
        }
    }

    fn use_size(&mut self, size: u32, delta: i32) {
        match self.block_sizes.iter().position(|&(s, _)| s == size) {
            Some(i) => {
                let n = self.block_sizes[i].1 as i64 + i64::from(delta);
                if n <= 0 {
                    self.block_sizes.swap_remove(i);
                } else {
                    self.block_sizes[i].1 = n as u32;
                }
            }
            None if delta > 0 => self.block_sizes.push((size, delta as u32)),
            None => {}
        }
    }
}

/// One endpoint's event stream as this picker follows it.
#[derive(Debug)]
struct Stream {
    name: String,
    next_seq: u64,
    block_size: u32,
    /// Whether the last message said the agent's view is complete and current.
    live: bool,
    /// Set by a gap: nothing is applied until a reset.
    needs_reset: bool,
    /// Every key this endpoint holds, with its model.
    keys: HashMap<u64, ModelKey, KeyHashing>,
    /// Models this stream has registered its block size with.
    models: Vec<ModelKey>,
}

/// What applying one message did (for metrics and the HTTP answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvOutcome {
    /// The answer to the agent.
    pub ack: KvAck,
    /// Blocks stored and removed by the message, as applied.
    pub stored: usize,
    pub removed: usize,
    /// Stored blocks not recorded because the endpoint was at its bound.
    pub over_bound: usize,
    /// The message was not applied: it needs a reset first (unknown stream or a gap).
    pub refused: bool,
}

/// Every model's exact index and every endpoint's stream.
#[derive(Debug)]
pub(crate) struct Exact {
    by_model: HashMap<ModelKey, ModelBlocks, KeyHashing>,
    streams: HashMap<EndpointId, Stream, KeyHashing>,
    max_blocks: usize,
    /// Blocks held over every stream, and the most there may be.
    total: usize,
    max_total: usize,
}

/// The leading tokens each endpoint of one model holds, for one prompt.
#[derive(Debug, Default)]
pub(crate) struct ExactMatch {
    /// `(endpoint, cached leading tokens)`, sorted by endpoint id, holders of ≥ 1 block only.
    pub(crate) tokens: Vec<(EndpointId, u32)>,
}

impl ExactMatch {
    /// Cached leading tokens of `id` (0 when none).
    #[inline]
    pub(crate) fn tokens(&self, id: EndpointId) -> u32 {
        if self.tokens.is_empty() {
            return 0;
        }
        self.tokens
            .binary_search_by_key(&id, |&(e, _)| e)
            .map(|i| self.tokens[i].1)
            .unwrap_or(0)
    }
}

impl Exact {
    pub(crate) fn new(max_blocks: usize) -> Self {
        Self {
            by_model: HashMap::default(),
            streams: HashMap::default(),
            max_blocks: max_blocks.max(1),
            total: 0,
            max_total: usize::MAX,
        }
    }

    /// Bounds the blocks held over every endpoint.
    pub(crate) fn set_max_total(&mut self, max_total: usize) {
        self.max_total = max_total.max(1);
    }

    pub(crate) fn set_max_blocks(&mut self, max_blocks: usize) {
        self.max_blocks = max_blocks.max(1);
    }

    /// Applies one message from endpoint `id`, whose base model is `base` (`None` when its report
    /// lists no single base model: base-model groups are then not recorded).
    pub(crate) fn apply(
        &mut self,
        id: EndpointId,
        base: Option<ModelKey>,
        msg: &KvEvents,
    ) -> KvOutcome {
        let known = self
            .streams
            .get(&id)
            .is_some_and(|s| s.name == msg.stream && s.block_size == msg.block_size);
        if msg.reset || !known {
            if !msg.reset {
                // Unknown stream (the agent restarted, this picker restarted): drop what we had
                // and ask for everything.
                self.forget(id);
                return KvOutcome::refused(0);
            }
            self.forget(id);
            self.streams.insert(
                id,
                Stream {
                    name: msg.stream.clone(),
                    next_seq: msg.seq,
                    block_size: msg.block_size,
                    live: false,
                    needs_reset: false,
                    keys: HashMap::default(),
                    models: Vec::new(),
                },
            );
        }
        let stream = self.streams.get_mut(&id).expect("inserted above");
        if stream.needs_reset || msg.seq != stream.next_seq {
            stream.needs_reset = true;
            stream.live = false;
            return KvOutcome::refused(stream.next_seq);
        }
        stream.next_seq = msg.seq + 1;
        stream.live = msg.state == KvStreamState::Live;
        let mut out = KvOutcome {
            ack: KvAck {
                next_seq: stream.next_seq,
                resync: false,
            },
            stored: 0,
            removed: 0,
            over_bound: 0,
            refused: false,
        };
        if msg.cleared {
            let keys = std::mem::take(&mut stream.keys);
            out.removed += keys.len();
            self.total -= keys.len();
            for (key, model) in keys {
                if let Some(m) = self.by_model.get_mut(&model) {
                    m.remove(key, id);
                }
            }
        }
        for group in &msg.groups {
            let (model, root) = match &group.adapter {
                Some(a) => (ModelKey::of(a), adapter_root(a)),
                None => match base {
                    Some(b) => (b, BASE_ROOT),
                    None => continue,
                },
            };
            let blocks = self.by_model.entry(model).or_insert_with(|| ModelBlocks {
                root,
                ..ModelBlocks::default()
            });
            if !stream.models.contains(&model) {
                if blocks.block_sizes.len() >= MAX_BLOCK_SIZES
                    && !blocks.block_sizes.iter().any(|&(s, _)| s == msg.block_size)
                {
                    continue;
                }
                stream.models.push(model);
                blocks.use_size(msg.block_size, 1);
            }
            for &key in &group.removed {
                if stream.keys.remove(&key).is_some() {
                    blocks.remove(key, id);
                    out.removed += 1;
                    self.total -= 1;
                }
            }
            for &key in &group.stored {
                let full = stream.keys.len() >= self.max_blocks || self.total >= self.max_total;
                if full && !stream.keys.contains_key(&key) {
                    out.over_bound += 1;
                    continue;
                }
                if stream.keys.insert(key, model).is_none() {
                    blocks.add(key, id);
                    out.stored += 1;
                    self.total += 1;
                }
            }
        }
        out
    }

    /// `id`'s stream (for `/v1/endpoints`); `None` when it has none.
    pub(crate) fn stream_of(&self, id: EndpointId) -> Option<StreamView> {
        self.streams.get(&id).map(|s| StreamView {
            routing: false,
            live: s.live && !s.needs_reset,
            blocks: s.keys.len(),
            block_size: s.block_size,
        })
    }

    /// Drops everything known of `id`'s blocks and its stream.
    pub(crate) fn forget(&mut self, id: EndpointId) {
        let Some(stream) = self.streams.remove(&id) else {
            return;
        };
        self.total -= stream.keys.len();
        for (key, model) in &stream.keys {
            if let Some(m) = self.by_model.get_mut(model) {
                m.remove(*key, id);
            }
        }
        for model in &stream.models {
            if let Some(m) = self.by_model.get_mut(model) {
                m.use_size(stream.block_size, -1);
                if m.block_sizes.is_empty() && m.holders.is_empty() {
                    self.by_model.remove(model);
                }
            }
        }
    }

    /// For `tokens` of a prompt to `model`: how many leading tokens each endpoint holds.
    pub(crate) fn matches(&self, model: ModelKey, tokens: &[u32]) -> ExactMatch {
        let Some(m) = self.by_model.get(&model) else {
            return ExactMatch::default();
        };
        let mut best: Vec<(EndpointId, u32)> = Vec::new();
        for &(size, _) in &m.block_sizes {
            // Keys are computed as the walk goes: it stops at the first block nobody holds.
            let mut blocks = tokens.chunks_exact(size as usize);
            let Some(mut key) = blocks.next().map(|b| block_key(m.root, b)) else {
                continue;
            };
            let Some(first) = m.holders.get(&key) else {
                continue;
            };
            // Only holders of every earlier block can progress, so each depth is one merge.
            let mut matched: Vec<(EndpointId, u32)> = first.iter().map(|&id| (id, 1)).collect();
            for (depth, block) in blocks.enumerate().map(|(d, b)| (d + 1, b)) {
                key = block_key(key, block);
                let Some(holders) = m.holders.get(&key) else {
                    break;
                };
                let mut progressed = false;
                let mut j = 0;
                for e in matched.iter_mut().filter(|e| e.1 as usize == depth) {
                    while j < holders.len() && holders[j] < e.0 {
                        j += 1;
                    }
                    if j < holders.len() && holders[j] == e.0 {
                        e.1 += 1;
                        progressed = true;
                    }
                }
                if !progressed {
                    break;
                }
            }
            // Endpoints of other block sizes never hold these keys, so lists only add up.
            best.extend(
                matched
                    .into_iter()
                    .filter(|&(id, _)| self.streams.get(&id).is_some_and(|s| s.block_size == size))
                    .map(|(id, blocks)| (id, blocks * size)),
            );
        }
        best.sort_unstable_by_key(|&(id, _)| id);
        ExactMatch { tokens: best }
    }

    /// Blocks held in all, over every endpoint.
    pub(crate) fn blocks(&self) -> usize {
        self.total
    }
}

/// One endpoint's stream, as `/v1/endpoints` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct StreamView {
    /// Picks use its exact blocks now: the stream is live and was heard within `kv_max_age`.
    pub routing: bool,
    /// Its agent's last message said the stream is complete and current.
    pub live: bool,
    /// Blocks it holds.
    pub blocks: usize,
    /// Tokens per block.
    pub block_size: u32,
}

impl KvOutcome {
    /// Nothing applied: the agent must send a reset; `next_seq` is what this stream expects.
    pub(crate) fn refused(next_seq: u64) -> Self {
        KvOutcome {
            ack: KvAck {
                next_seq,
                resync: true,
            },
            stored: 0,
            removed: 0,
            over_bound: 0,
            refused: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use inferpick_schema::kv::{KvGroup, block_keys, root};

    use super::*;

    fn msg(seq: u64, reset: bool, stored: &[u64], removed: &[u64]) -> KvEvents {
        KvEvents {
            schema_version: inferpick_schema::SCHEMA_VERSION,
            endpoint: "10.0.0.1:8000".into(),
            stream: "s1".into(),
            seq,
            state: KvStreamState::Live,
            block_size: 4,
            reset,
            cleared: false,
            groups: vec![KvGroup {
                adapter: None,
                stored: stored.to_vec(),
                removed: removed.to_vec(),
            }],
        }
    }

    fn keys(tokens: &[u32]) -> Vec<u64> {
        block_keys(root(None), tokens, 4, usize::MAX)
    }

    const M: fn() -> ModelKey = || ModelKey::of("m");

    #[test]
    fn stored_blocks_match_by_leading_tokens_and_removed_ones_stop_matching() {
        let mut x = Exact::new(100);
        let prompt: Vec<u32> = (0..12).collect();
        let k = keys(&prompt);
        let (a, b) = (EndpointId(1), EndpointId(2));
        assert!(!x.apply(a, Some(M()), &msg(0, true, &k, &[])).refused);
        assert!(!x.apply(b, Some(M()), &msg(7, true, &k[..1], &[])).refused);
        let m = x.matches(M(), &prompt);
        assert_eq!(m.tokens, vec![(a, 12), (b, 4)]);
        // A prompt that diverges in the second block matches one block only.
        let mut other = prompt.clone();
        other[5] = 99;
        assert_eq!(x.matches(M(), &other).tokens, vec![(a, 4), (b, 4)]);
        // BlockRemoved of the middle block cuts the chain there.
        let out = x.apply(a, Some(M()), &msg(1, false, &[], &k[1..2]));
        assert_eq!((out.removed, out.ack.next_seq), (1, 2));
        assert_eq!(x.matches(M(), &prompt).tokens(a), 4);
        // Another model's index is separate.
        assert!(x.matches(ModelKey::of("other"), &prompt).tokens.is_empty());
    }

    #[test]
    fn a_gap_or_an_unknown_stream_asks_for_a_reset_and_applies_nothing() {
        let mut x = Exact::new(100);
        let k = keys(&(0..8).collect::<Vec<_>>());
        let a = EndpointId(3);
        // Not a reset, never seen: refused.
        let out = x.apply(a, Some(M()), &msg(5, false, &k, &[]));
        assert!(out.refused && out.ack.resync);
        assert!(x.stream_of(a).is_none());
        x.apply(a, Some(M()), &msg(5, true, &k, &[]));
        // seq 7 after 5: a gap; the endpoint stops being live and nothing applies until a reset.
        let out = x.apply(a, Some(M()), &msg(7, false, &[], &k));
        assert!(out.refused && out.ack.resync);
        assert_eq!(out.ack.next_seq, 6);
        assert!(!x.stream_of(a).unwrap().live);
        assert_eq!(x.stream_of(a).unwrap().blocks, 2);
        let out = x.apply(a, Some(M()), &msg(6, false, &[], &k));
        assert!(out.refused, "still waiting for a reset");
        let out = x.apply(a, Some(M()), &msg(8, true, &k[..1], &[]));
        assert!(!out.refused);
        assert_eq!(x.stream_of(a).unwrap().blocks, 1);
        assert!(x.stream_of(a).unwrap().live);
    }

    #[test]
    fn cleared_and_forget_drop_everything_and_the_bound_holds() {
        let mut x = Exact::new(3);
        let k = keys(&(0..40).collect::<Vec<_>>());
        let a = EndpointId(0);
        let out = x.apply(a, Some(M()), &msg(0, true, &k, &[]));
        assert_eq!((out.stored, out.over_bound), (3, 7));
        assert_eq!(x.blocks(), 3);
        let mut clear = msg(1, false, &k[..1], &[]);
        clear.cleared = true;
        let out = x.apply(a, Some(M()), &clear);
        assert_eq!((out.removed, out.stored), (3, 1));
        x.forget(a);
        assert_eq!(x.blocks(), 0);
        assert!(x.by_model.is_empty(), "an emptied model index is dropped");
    }

    #[test]
    fn the_bound_over_every_endpoint_holds() {
        let mut x = Exact::new(100);
        x.set_max_total(5);
        let k = keys(&(0..40).collect::<Vec<_>>());
        x.apply(EndpointId(1), Some(M()), &msg(0, true, &k[..4], &[]));
        let out = x.apply(EndpointId(2), Some(M()), &msg(0, true, &k[4..], &[]));
        assert_eq!((out.stored, out.over_bound), (1, 5));
        assert_eq!(x.blocks(), 5);
        x.forget(EndpointId(1));
        assert_eq!(x.blocks(), 1);
    }

    #[test]
    fn adapters_key_their_own_index_and_endpoints_without_a_base_model_skip_base_blocks() {
        let mut x = Exact::new(100);
        let prompt: Vec<u32> = (0..8).collect();
        let mut m = msg(0, true, &[], &[]);
        m.groups = vec![
            KvGroup {
                adapter: Some("sql".into()),
                stored: block_keys(adapter_root("sql"), &prompt, 4, 8),
                removed: vec![],
            },
            KvGroup {
                adapter: None,
                stored: keys(&prompt),
                removed: vec![],
            },
        ];
        x.apply(EndpointId(1), None, &m);
        assert_eq!(
            x.matches(ModelKey::of("sql"), &prompt)
                .tokens(EndpointId(1)),
            8
        );
        assert!(x.matches(M(), &prompt).tokens.is_empty());
        assert_eq!(x.blocks(), 2);
    }
}
