//! An immutable view of the whole table: what a pick reads, without waiting for any writer.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::counters::{Chunks, CounterCell, EndpointId, Inflight, cell};
use super::endpoint::{Endpoint, ScanRecord, name_hash};

/// Shards of the table: a report's copy-on-write touches one shard's list, not the whole table.
pub(crate) const SHARDS: usize = 64;

/// The shard of `address`.
pub(crate) fn shard_of(address: &str) -> usize {
    (name_hash(address) % SHARDS as u64) as usize
}

/// One shard as published: its endpoints sorted by address, and their [`ScanRecord`]s in the same
/// order. Immutable; a write publishes a new one.
#[derive(Debug, Default, Clone)]
pub(crate) struct ShardView {
    pub(crate) entries: Vec<Arc<Endpoint>>,
    pub(crate) records: Vec<ScanRecord>,
}

impl ShardView {
    /// The view that follows `previous` with `entries`: an entry that sits at the same index in
    /// both keeps its record (a record is a function of its immutable entry), the others get a
    /// new one.
    pub(crate) fn succeed(previous: &ShardView, entries: Vec<Arc<Endpoint>>) -> Self {
        let records = entries
            .iter()
            .enumerate()
            .map(|(i, e)| match previous.entries.get(i) {
                Some(p) if Arc::ptr_eq(p, e) => previous.records[i].clone(),
                _ => ScanRecord::of(e),
            })
            .collect();
        Self { entries, records }
    }

    /// The position of `address` in this shard.
    pub(crate) fn find(&self, address: &str) -> Result<usize, usize> {
        self.entries.binary_search_by(|e| (*e.address).cmp(address))
    }
}

/// Where an endpoint sits in a snapshot: its shard and its index there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    pub(crate) shard: u32,
    pub(crate) index: u32,
}

/// An immutable view of the whole table.
#[derive(Debug)]
pub struct Snapshot {
    pub(crate) shards: Vec<Arc<ShardView>>,
    /// The counters of every endpoint id in this snapshot, by id.
    pub(crate) chunks: Chunks,
    /// The staleness bound in force when the snapshot was taken.
    pub max_report_age: Duration,
}

impl Snapshot {
    /// Every endpoint, in a stable order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Endpoint>> {
        self.shards.iter().flat_map(|s| s.entries.iter())
    }

    /// How many endpoints the table holds.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.entries.len()).sum()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(|s| s.entries.is_empty())
    }

    /// The endpoint at `address`.
    pub fn get(&self, address: &str) -> Option<&Arc<Endpoint>> {
        let shard = &self.shards[shard_of(address)];
        shard.find(address).ok().map(|i| &shard.entries[i])
    }

    /// The counters of `id` (an id of this snapshot).
    #[inline]
    pub(crate) fn cell(&self, id: EndpointId) -> &CounterCell {
        cell(&self.chunks, id).expect("a snapshot's chunk list holds every id it names")
    }

    /// The in-flight estimate now of the endpoint `id`.
    #[inline]
    pub(crate) fn inflight(&self, id: EndpointId) -> Inflight {
        self.cell(id).inflight()
    }

    /// When the prefill routed to the endpoint `id` is plausibly done (nanoseconds).
    #[inline]
    pub(crate) fn prefill_busy_until_ns(&self, id: EndpointId) -> u64 {
        self.cell(id).prefill_busy_until_ns.load(Ordering::Acquire)
    }

    /// The endpoint at `slot`.
    #[inline]
    pub(crate) fn entry(&self, slot: Slot) -> &Arc<Endpoint> {
        &self.shards[slot.shard as usize].entries[slot.index as usize]
    }

    /// Where the endpoint `id` is in this snapshot, if it is there. Reads the position its
    /// counters remember, which may come from a newer publication: trusted only if this snapshot
    /// has the endpoint there.
    pub(crate) fn locate(&self, id: EndpointId) -> Option<Slot> {
        let packed = cell(&self.chunks, id)?.position.load(Ordering::Acquire);
        let slot = Slot {
            shard: (packed >> 32) as u32,
            index: packed as u32,
        };
        let found = self
            .shards
            .get(slot.shard as usize)?
            .records
            .get(slot.index as usize)?;
        (found.id == id).then_some(slot)
    }
}
