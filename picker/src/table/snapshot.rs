//! An immutable view of the whole table: what a pick reads, without waiting for any writer.

use std::cell::RefCell;
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

/// Most buffers of each kind a thread keeps for its next publishes.
const SPARE_BUFFERS: usize = 4;

/// The buffers of views this thread replaced and was the last to hold. A record list is
/// allocated 64-byte aligned, which the system allocator makes slow: in the simulator, allocating
/// and freeing one per report was a fifth of the report's cost.
struct Spare {
    records: Vec<Vec<ScanRecord>>,
    entries: Vec<Vec<Arc<Endpoint>>>,
}

thread_local! {
    static SPARE: RefCell<Spare> = const {
        RefCell::new(Spare {
            records: Vec::new(),
            entries: Vec::new(),
        })
    };
}

impl ShardView {
    /// A copy of the entry list to edit into the next view's (in a spare buffer when this thread
    /// has one).
    pub(crate) fn entries_to_edit(&self) -> Vec<Arc<Endpoint>> {
        let mut entries = SPARE
            .try_with(|s| s.borrow_mut().entries.pop())
            .ok()
            .flatten()
            .unwrap_or_default();
        entries.extend(self.entries.iter().cloned());
        entries
    }

    /// The view that follows `previous` with `entries`: an entry that sits at the same index in
    /// both keeps its record (a record is a function of its immutable entry), the others get a
    /// new one.
    pub(crate) fn succeed(previous: &ShardView, entries: Vec<Arc<Endpoint>>) -> Self {
        let mut records = SPARE
            .try_with(|s| s.borrow_mut().records.pop())
            .ok()
            .flatten()
            .unwrap_or_default();
        records.extend(
            entries
                .iter()
                .enumerate()
                .map(|(i, e)| match previous.entries.get(i) {
                    Some(p) if Arc::ptr_eq(p, e) => previous.records[i].clone(),
                    _ => ScanRecord::of(e),
                }),
        );
        Self { entries, records }
    }

    /// Lets go of a replaced view; if no snapshot or reader holds it any more, this thread keeps
    /// its buffers for its next publishes.
    pub(crate) fn retire(view: Arc<ShardView>) {
        let Some(ShardView {
            mut entries,
            mut records,
        }) = Arc::into_inner(view)
        else {
            return;
        };
        entries.clear();
        records.clear();
        // During thread teardown the pool is gone; the buffers are then simply freed.
        let _ = SPARE.try_with(|s| {
            let mut s = s.borrow_mut();
            if s.entries.len() < SPARE_BUFFERS {
                s.entries.push(entries);
            }
            if s.records.len() < SPARE_BUFFERS {
                s.records.push(records);
            }
        });
    }

    /// The position of `address` in this shard.
    pub(crate) fn find(&self, address: &str) -> Result<usize, usize> {
        self.entries.binary_search_by(|e| (*e.address).cmp(address))
    }
}

/// Shards per group: the shard list is two levels deep, so that publishing one shard copies one
/// group and the list of groups (2 × 8 references) rather than all 64 — each copied reference is
/// an atomic increment now and a decrement when the snapshot goes, and at thousands of reports a
/// second those dominated the cost of a report.
const GROUP: usize = 8;

/// Groups of shards.
const GROUPS: usize = SHARDS / GROUP;

const _: () = assert!(GROUPS * GROUP == SHARDS);

/// Every shard of a snapshot, in shard order, read like a slice of `Arc<ShardView>`
/// (`shards[i]`, `iter`, `len`, `for shard in &shards`).
#[derive(Debug, Clone)]
pub(crate) struct Shards {
    groups: [Arc<[Arc<ShardView>; GROUP]>; GROUPS],
    /// Endpoints in all the shards together.
    endpoints: usize,
}

impl Shards {
    /// How many shards (always [`SHARDS`]).
    #[inline]
    pub(crate) fn len(&self) -> usize {
        SHARDS
    }

    /// The shard `i`, if there is one.
    #[inline]
    pub(crate) fn get(&self, i: usize) -> Option<&Arc<ShardView>> {
        (i < SHARDS).then(|| &self.groups[i / GROUP][i % GROUP])
    }

    /// Every shard, in shard order.
    pub(crate) fn iter(&self) -> ShardIter<'_> {
        ShardIter {
            shards: self,
            next: 0,
        }
    }

    /// The same shards with shard `i` replaced by `view`; everything else is shared.
    pub(crate) fn with(&self, i: usize, view: Arc<ShardView>) -> Shards {
        let (g, k) = (i / GROUP, i % GROUP);
        let mut view = Some(view);
        let group: [Arc<ShardView>; GROUP] = std::array::from_fn(|j| {
            if j == k {
                view.take().expect("taken once")
            } else {
                self.groups[g][j].clone()
            }
        });
        let endpoints = self.endpoints - self[i].entries.len() + group[k].entries.len();
        let mut group = Some(Arc::new(group));
        Shards {
            endpoints,
            groups: std::array::from_fn(|j| {
                if j == g {
                    group.take().expect("taken once")
                } else {
                    self.groups[j].clone()
                }
            }),
        }
    }
}

impl std::ops::Index<usize> for Shards {
    type Output = Arc<ShardView>;

    #[inline]
    fn index(&self, i: usize) -> &Arc<ShardView> {
        &self.groups[i / GROUP][i % GROUP]
    }
}

impl<'a> IntoIterator for &'a Shards {
    type Item = &'a Arc<ShardView>;
    type IntoIter = ShardIter<'a>;

    fn into_iter(self) -> ShardIter<'a> {
        self.iter()
    }
}

/// The shards of a [`Shards`], in shard order.
#[derive(Debug, Clone)]
pub(crate) struct ShardIter<'a> {
    shards: &'a Shards,
    next: usize,
}

impl<'a> Iterator for ShardIter<'a> {
    type Item = &'a Arc<ShardView>;

    #[inline]
    fn next(&mut self) -> Option<&'a Arc<ShardView>> {
        let view = self.shards.get(self.next)?;
        self.next += 1;
        Some(view)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = SHARDS - self.next;
        (left, Some(left))
    }
}

impl ExactSizeIterator for ShardIter<'_> {}

/// Collects exactly [`SHARDS`] views, in shard order (panics on any other count).
impl FromIterator<Arc<ShardView>> for Shards {
    fn from_iter<I: IntoIterator<Item = Arc<ShardView>>>(iter: I) -> Self {
        let mut views = iter.into_iter();
        let groups: [Arc<[Arc<ShardView>; GROUP]>; GROUPS] = std::array::from_fn(|_| {
            Arc::new(std::array::from_fn(|_| {
                views.next().expect("one view per shard")
            }))
        });
        assert!(views.next().is_none(), "one view per shard");
        let endpoints = groups
            .iter()
            .flat_map(|g| g.iter())
            .map(|v| v.entries.len())
            .sum();
        Shards { groups, endpoints }
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
    pub(crate) shards: Shards,
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
        self.shards.endpoints
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.shards.endpoints == 0
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
