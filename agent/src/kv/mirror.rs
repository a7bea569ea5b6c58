//! The agent's mirror of the engine's prefix cache, and the log of its changes that each
//! picker's push reads from.
//!
//! The mirror maps an engine block hash to the block's key ([`block_key`] of its token ids,
//! chained from its parent's key) and its model group; it holds at most `max_blocks` entries and
//! evicts the oldest past that. Every change is appended to one bounded log; each picker target
//! keeps a cursor into it, so a slow or dead picker costs nothing: when its cursor falls off the
//! log's start, its pending changes are gone and it is sent a reset (the whole mirror) instead.
//!
//! Memory: a mirrored block costs about 56 bytes (a 32-byte hash-map slot at the map's load
//! factor, and a 16-byte entry in the eviction order), so the default 1,000,000 blocks is about
//! 56 MiB at most; the log holds [`LOG_CAPACITY`] changes of 16 bytes (4 MiB).

use std::collections::{HashMap, VecDeque};

use inferpick_schema::kv::{KvGroup, KvLimits, KvStreamState, block_key, root};

use super::metrics::{KindLabels, KvMetrics, ReasonLabels};
use super::wire::{Event, Removed, Stored};

/// Changes kept for targets that are behind; one further behind is sent a reset.
pub const LOG_CAPACITY: usize = 4 * KvLimits::MAX_KEYS;

/// One change to the mirror, as pickers are told of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Stored { group: u16, key: u64 },
    Removed { group: u16, key: u64 },
    Cleared,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: u64,
    group: u16,
    /// Which insertion this is, to tell a live place in `order` from a stale one.
    generation: u64,
}

/// The mirror, its change log and the stream's state: what the subscriber writes and the push
/// tasks read, under one lock held for one batch or one message at a time.
#[derive(Debug)]
pub struct KvState {
    blocks: HashMap<u64, Entry>,
    /// Engine hashes in insertion order, with the generation they were inserted at; entries
    /// whose generation no longer matches were removed and are skipped (and compacted away).
    order: VecDeque<(u64, u64)>,
    next_generation: u64,
    max_blocks: usize,
    /// Model groups: index 0 is the base model, the rest adapters by name.
    groups: Vec<Option<String>>,
    log: VecDeque<Change>,
    /// Position of `log[0]` in the whole history of changes.
    log_start: u64,
    /// Bumped whenever every picker must be sent a reset (gap, engine restart, block size).
    epoch: u64,
    block_size: Option<u32>,
    state: Option<KvStreamState>,
}

/// Where one picker target stands in the change log.
#[derive(Debug, Clone, Default)]
pub struct Cursor {
    /// Next change to send.
    pos: u64,
    /// The epoch the target was last reset in; `None` before its first reset.
    epoch: Option<u64>,
    /// The rest of a reset too large for one message.
    reset_rest: VecDeque<KvGroup>,
}

impl Cursor {
    /// Forces a reset as the next message (the picker asked, or a push failed).
    pub fn force_reset(&mut self) {
        self.epoch = None;
        self.reset_rest.clear();
    }
}

/// What goes into one `KvEvents` message, before the target stamps its `seq`.
#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    /// The stream's state.
    pub state: KvStreamState,
    /// Tokens per block.
    pub block_size: u32,
    /// Replace what the picker knows.
    pub reset: bool,
    /// The engine dropped its cache.
    pub cleared: bool,
    /// Changes per model.
    pub groups: Vec<KvGroup>,
    /// Keys in `groups`.
    pub keys: usize,
}

impl KvState {
    /// An empty mirror of at most `max_blocks` blocks; off until the first event.
    pub fn new(max_blocks: usize) -> Self {
        KvState {
            blocks: HashMap::new(),
            order: VecDeque::new(),
            next_generation: 0,
            max_blocks: max_blocks.max(1),
            groups: vec![None],
            log: VecDeque::new(),
            log_start: 0,
            epoch: 0,
            block_size: None,
            state: None,
        }
    }

    /// The stream's state; `None` until the engine has published.
    pub fn state(&self) -> Option<KvStreamState> {
        self.state
    }

    /// Blocks held.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether no block is held.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Changes not yet sent to the target at `cursor` (as far as the log still holds them).
    pub fn pending(&self, cursor: &Cursor) -> usize {
        (self.log_end() - cursor.pos.max(self.log_start)) as usize
    }

    /// Whether the target at `cursor` has more to send now (a reset's rest, or changes).
    pub fn has_more(&self, cursor: &Cursor) -> bool {
        !cursor.reset_rest.is_empty() || self.pending(cursor) > 0
    }

    fn log_end(&self) -> u64 {
        self.log_start + self.log.len() as u64
    }

    /// Sets the stream's state; returns whether it changed.
    pub fn set_state(&mut self, state: KvStreamState, metrics: &KvMetrics) -> bool {
        let changed = self.state != Some(state);
        self.state = Some(state);
        metrics.set_state(state == KvStreamState::Live);
        changed
    }

    /// Drops every block and makes every picker start over with a reset: the view was lost
    /// (a gap replay could not fill, an engine restart, a new block size).
    pub fn start_over(&mut self, metrics: &KvMetrics) {
        self.blocks.clear();
        self.order.clear();
        self.log_start = self.log_end();
        self.log.clear();
        self.epoch += 1;
        metrics.blocks.set(0);
    }

    fn record(&mut self, change: Change, metrics: &KvMetrics) {
        if self.log.len() >= LOG_CAPACITY {
            self.log.pop_front();
            self.log_start += 1;
            metrics.dropped_changes.inc();
        }
        self.log.push_back(change);
    }

    /// Applies one decoded batch's events in order.
    pub fn apply(&mut self, events: &[Event], metrics: &KvMetrics) {
        for event in events {
            let kind = match event {
                Event::Stored(s) => {
                    self.store(s, metrics);
                    "block_stored"
                }
                Event::Removed(r) => {
                    self.remove(r, metrics);
                    "block_removed"
                }
                Event::Cleared => {
                    self.blocks.clear();
                    self.order.clear();
                    self.record(Change::Cleared, metrics);
                    "all_blocks_cleared"
                }
                Event::Unknown(_) => "unknown",
            };
            metrics.events.get_or_create(&KindLabels { kind }).inc();
        }
        metrics.blocks.set(self.blocks.len() as i64);
    }

    fn skip(metrics: &KvMetrics, reason: &'static str, blocks: usize) {
        metrics
            .skipped_blocks
            .get_or_create(&ReasonLabels { reason })
            .inc_by(blocks as u64);
    }

    /// Only the GPU's blocks (a CPU or disk copy is another namespace of the same hashes) of the
    /// first KV-cache group (hybrid models publish a group per attention kind) are mirrored.
    fn tracked(medium: Option<&str>, group_idx: Option<u64>) -> Result<(), &'static str> {
        if !matches!(medium, None | Some("GPU") | Some("gpu")) {
            return Err("other_medium");
        }
        if !matches!(group_idx, None | Some(0)) {
            return Err("other_group");
        }
        Ok(())
    }

    fn store(&mut self, s: &Stored, metrics: &KvMetrics) {
        let n = s.hashes.len();
        if let Err(reason) = Self::tracked(s.medium.as_deref(), s.group_idx) {
            return Self::skip(metrics, reason, n);
        }
        if s.token_ids.len() != n * s.block_size as usize {
            return Self::skip(metrics, "partial_block", n);
        }
        if self.block_size.is_some_and(|b| b != s.block_size) {
            tracing::warn!(
                was = self.block_size,
                now = s.block_size,
                "the engine's block size changed; starting the mirror over"
            );
            self.start_over(metrics);
        }
        self.block_size = Some(s.block_size);
        // An event naming only a LoRA id (vLLM before lora_name, which no listing maps to a
        // name) is mirrored under the base model.
        let adapter = s.lora_name.as_deref();
        let Some(group) = self.group(adapter) else {
            return Self::skip(metrics, "too_many_adapters", n);
        };
        let mut parent = match s.parent {
            None => root(adapter),
            Some(p) => match self.blocks.get(&p) {
                Some(e) => e.key,
                // The parent was evicted from the mirror or never seen: the chain's keys
                // cannot be computed.
                None => return Self::skip(metrics, "unknown_parent", n),
            },
        };
        for (hash, tokens) in s
            .hashes
            .iter()
            .zip(s.token_ids.chunks_exact(s.block_size as usize))
        {
            let key = block_key(parent, tokens);
            parent = key;
            let generation = self.next_generation;
            self.next_generation += 1;
            if let Some(old) = self.blocks.insert(
                *hash,
                Entry {
                    key,
                    group,
                    generation,
                },
            ) {
                if old.key == key && old.group == group {
                    // Stored again: keep its place in the order.
                    self.blocks.get_mut(hash).expect("just inserted").generation = old.generation;
                    continue;
                }
                self.record(
                    Change::Removed {
                        group: old.group,
                        key: old.key,
                    },
                    metrics,
                );
            }
            self.order.push_back((*hash, generation));
            self.record(Change::Stored { group, key }, metrics);
        }
        self.evict(metrics);
    }

    fn group(&mut self, adapter: Option<&str>) -> Option<u16> {
        if let Some(i) = self.groups.iter().position(|g| g.as_deref() == adapter) {
            return Some(i as u16);
        }
        if self.groups.len() >= KvLimits::MAX_GROUPS {
            return None;
        }
        self.groups.push(adapter.map(str::to_string));
        Some((self.groups.len() - 1) as u16)
    }

    fn evict(&mut self, metrics: &KvMetrics) {
        while self.blocks.len() > self.max_blocks {
            let Some((hash, generation)) = self.order.pop_front() else {
                break;
            };
            if self
                .blocks
                .get(&hash)
                .is_some_and(|e| e.generation == generation)
            {
                let e = self.blocks.remove(&hash).expect("present");
                self.record(
                    Change::Removed {
                        group: e.group,
                        key: e.key,
                    },
                    metrics,
                );
                metrics.evicted.inc();
            }
        }
        // Removed blocks leave stale places behind; drop them once they outnumber live ones.
        if self.order.len() > 2 * self.blocks.len() + 1024 {
            let blocks = &self.blocks;
            self.order
                .retain(|(h, g)| blocks.get(h).is_some_and(|e| e.generation == *g));
        }
    }

    fn remove(&mut self, r: &Removed, metrics: &KvMetrics) {
        if Self::tracked(r.medium.as_deref(), r.group_idx).is_err() {
            return;
        }
        for hash in &r.hashes {
            if let Some(e) = self.blocks.remove(hash) {
                self.record(
                    Change::Removed {
                        group: e.group,
                        key: e.key,
                    },
                    metrics,
                );
            }
        }
        self.evict(metrics);
    }

    /// The next message for the target at `cursor`, and moves the cursor past it; `None` while
    /// the stream is off (no event yet, so no block size).
    pub fn next_message(&self, cursor: &mut Cursor, metrics: &KvMetrics) -> Option<Draft> {
        let state = self.state?;
        let block_size = self.block_size?;
        let mut draft = Draft {
            state,
            block_size,
            reset: false,
            cleared: false,
            groups: Vec::new(),
            keys: 0,
        };
        if cursor.epoch != Some(self.epoch) || cursor.pos < self.log_start {
            // A reset: every block, oldest first (a parent before its children), in as many
            // messages as MAX_KEYS needs.
            cursor.epoch = Some(self.epoch);
            cursor.pos = self.log_end();
            cursor.reset_rest = self.snapshot();
            draft.reset = true;
            metrics.resets.inc();
        }
        if !cursor.reset_rest.is_empty() {
            while draft.keys < KvLimits::MAX_KEYS {
                let Some(mut g) = cursor.reset_rest.pop_front() else {
                    break;
                };
                let room = KvLimits::MAX_KEYS - draft.keys;
                if g.stored.len() > room {
                    let rest = g.stored.split_off(room);
                    cursor.reset_rest.push_front(KvGroup {
                        adapter: g.adapter.clone(),
                        stored: rest,
                        removed: Vec::new(),
                    });
                }
                draft.keys += g.stored.len();
                draft.groups.push(g);
            }
            return Some(draft);
        }
        if draft.reset {
            return Some(draft);
        }
        let start = (cursor.pos - self.log_start) as usize;
        let mut groups: Vec<Option<KvGroup>> = vec![None; self.groups.len()];
        let mut taken = 0;
        for change in self.log.range(start..) {
            match *change {
                Change::Cleared if draft.keys == 0 => draft.cleared = true,
                // A clear after other changes goes first in the next message.
                Change::Cleared => break,
                Change::Stored { group, key } | Change::Removed { group, key } => {
                    if draft.keys >= KvLimits::MAX_KEYS {
                        break;
                    }
                    let g = groups[group as usize].get_or_insert_with(|| KvGroup {
                        adapter: self.groups[group as usize].clone(),
                        ..KvGroup::default()
                    });
                    if matches!(change, Change::Stored { .. }) {
                        g.stored.push(key);
                    } else {
                        g.removed.push(key);
                    }
                    draft.keys += 1;
                }
            }
            taken += 1;
        }
        cursor.pos += taken as u64;
        draft.groups = groups.into_iter().flatten().collect();
        Some(draft)
    }

    fn snapshot(&self) -> VecDeque<KvGroup> {
        let mut groups: Vec<KvGroup> = self
            .groups
            .iter()
            .map(|a| KvGroup {
                adapter: a.clone(),
                ..KvGroup::default()
            })
            .collect();
        for (hash, generation) in &self.order {
            if let Some(e) = self
                .blocks
                .get(hash)
                .filter(|e| e.generation == *generation)
            {
                groups[e.group as usize].stored.push(e.key);
            }
        }
        groups
            .into_iter()
            .filter(|g| !g.stored.is_empty())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use inferpick_schema::kv::{BASE_ROOT, block_keys};
    use prometheus_client::registry::Registry;

    use super::*;

    fn metrics() -> KvMetrics {
        KvMetrics::register(&mut Registry::default())
    }

    fn stored(hashes: &[u64], parent: Option<u64>, first_token: u32) -> Event {
        Event::Stored(Stored {
            hashes: hashes.to_vec(),
            parent,
            token_ids: (first_token..first_token + 4 * hashes.len() as u32).collect(),
            block_size: 4,
            ..Stored::default()
        })
    }

    fn live(max: usize, m: &KvMetrics) -> KvState {
        let mut s = KvState::new(max);
        s.set_state(KvStreamState::Live, m);
        s
    }

    #[test]
    fn keys_chain_through_the_parent_across_events() {
        let m = metrics();
        let mut s = live(100, &m);
        s.apply(
            &[stored(&[10, 11], None, 0), stored(&[12], Some(11), 8)],
            &m,
        );
        let expected = block_keys(BASE_ROOT, &(0..12).collect::<Vec<u32>>(), 4, 10);
        let mut c = Cursor::default();
        let d = s.next_message(&mut c, &m).unwrap();
        assert!(d.reset);
        assert_eq!(d.groups[0].stored, expected);
        // Nothing new: an empty heartbeat.
        let d = s.next_message(&mut c, &m).unwrap();
        assert!(!d.reset && d.groups.is_empty());
        s.apply(
            &[Event::Removed(Removed {
                hashes: vec![12, 999],
                ..Removed::default()
            })],
            &m,
        );
        let d = s.next_message(&mut c, &m).unwrap();
        assert_eq!(d.groups[0].removed, [expected[2]]);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn adapters_get_their_own_group_and_root() {
        let m = metrics();
        let mut s = live(100, &m);
        let Event::Stored(mut e) = stored(&[1], None, 0) else {
            unreachable!()
        };
        e.lora_name = Some("sql-lora".into());
        s.apply(&[Event::Stored(e)], &m);
        let d = s.next_message(&mut Cursor::default(), &m).unwrap();
        assert_eq!(d.groups[0].adapter.as_deref(), Some("sql-lora"));
        assert_eq!(
            d.groups[0].stored,
            block_keys(root(Some("sql-lora")), &[0, 1, 2, 3], 4, 1)
        );
    }

    #[test]
    fn over_the_bound_the_oldest_blocks_go_and_pickers_hear_of_it() {
        let m = metrics();
        let mut s = live(3, &m);
        let mut c = Cursor::default();
        s.apply(&[stored(&[100], None, 100)], &m);
        assert!(s.next_message(&mut c, &m).unwrap().reset);
        s.apply(&[stored(&[1, 2, 3, 4, 5], None, 0)], &m);
        assert_eq!(s.len(), 3);
        assert_eq!(m.evicted.get(), 3);
        let d = s.next_message(&mut c, &m).unwrap();
        assert_eq!(d.groups[0].stored.len(), 5);
        assert_eq!(d.groups[0].removed.len(), 3);
    }

    #[test]
    fn skipped_blocks_change_nothing() {
        let m = metrics();
        let mut s = live(100, &m);
        let Event::Stored(mut cpu) = stored(&[1], None, 0) else {
            unreachable!()
        };
        cpu.medium = Some("CPU".into());
        let Event::Stored(mut partial) = stored(&[2], None, 0) else {
            unreachable!()
        };
        partial.token_ids.pop();
        s.apply(
            &[
                Event::Stored(cpu),
                Event::Stored(partial),
                stored(&[3], Some(77), 0),
            ],
            &m,
        );
        assert!(s.is_empty());
        for reason in ["other_medium", "partial_block", "unknown_parent"] {
            assert_eq!(
                m.skipped_blocks
                    .get_or_create(&ReasonLabels { reason })
                    .get(),
                1
            );
        }
    }

    #[test]
    fn a_target_left_behind_gets_a_reset_not_a_backlog() {
        let m = metrics();
        let mut s = live(10, &m);
        let mut c = Cursor::default();
        s.apply(&[stored(&[u64::MAX], None, 0)], &m);
        assert!(s.next_message(&mut c, &m).unwrap().reset);
        // Each store past the bound is two changes (stored, and the oldest removed).
        for i in 0..(LOG_CAPACITY as u64 / 2 + 10) {
            s.apply(&[stored(&[i], None, i as u32)], &m);
        }
        assert!(s.log.len() <= LOG_CAPACITY);
        let d = s.next_message(&mut c, &m).unwrap();
        assert!(d.reset, "fell off the log");
        assert_eq!(d.keys, 10);
    }

    #[test]
    fn a_large_reset_spans_messages_and_clears_come_first() {
        let m = metrics();
        let mut s = live(usize::MAX, &m);
        let n = KvLimits::MAX_KEYS + 5;
        for i in 0..n as u64 {
            s.apply(&[stored(&[i], None, i as u32)], &m);
        }
        let mut c = Cursor::default();
        let first = s.next_message(&mut c, &m).unwrap();
        assert!(first.reset);
        assert_eq!(first.keys, KvLimits::MAX_KEYS);
        let second = s.next_message(&mut c, &m).unwrap();
        assert!(!second.reset);
        assert_eq!(second.keys, 5);
        s.apply(&[stored(&[1_000_000], None, 0), Event::Cleared], &m);
        let d = s.next_message(&mut c, &m).unwrap();
        assert!(!d.cleared && d.keys == 1);
        let d = s.next_message(&mut c, &m).unwrap();
        assert!(d.cleared && d.keys == 0);
        assert!(s.is_empty());
    }

    #[test]
    fn off_until_the_first_event() {
        let m = metrics();
        let s = KvState::new(10);
        assert!(s.next_message(&mut Cursor::default(), &m).is_none());
    }
}
