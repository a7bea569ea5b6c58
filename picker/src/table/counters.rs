//! The per-endpoint counters that change between reports (in-flight estimate, routed prefill,
//! routed total), and the allocator of the small ids that index them.
//!
//! Counters live in dense chunks of [`CHUNK`] endpoints, side by side: a pick reading the in-flight
//! estimate of every candidate touches one small array instead of one allocation each. Ids of
//! forgotten endpoints are reused, so memory follows the number of endpoints in the table, not the
//! number ever seen.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// An endpoint's small, stable id while it is in the table: the index of its counters, the
/// prefix index's key, and what an open decision remembers. Reused after the endpoint is forgotten
/// (a reused id starts a new epoch, so nothing recorded for the forgotten endpoint applies to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointId(pub(crate) u32);

impl EndpointId {
    fn chunk(self) -> usize {
        self.0 as usize / CHUNK
    }

    fn cell(self) -> usize {
        self.0 as usize % CHUNK
    }
}

/// What the picker routed to an endpoint since its last report and has not seen finish.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Inflight {
    /// Requests.
    pub requests: u64,
    /// Their prompt tokens (estimated when the gateway did not say).
    pub prompt_tokens: u64,
}

/// The atomics of one endpoint.
#[derive(Debug, Default)]
pub(crate) struct CounterCell {
    pub(crate) inflight_requests: AtomicU64,
    pub(crate) inflight_tokens: AtomicU64,
    /// Bumped by every accepted report: decisions of an older epoch are already in the engine's counts.
    pub(crate) epoch: AtomicU64,
    /// When the prefill work routed here is plausibly done (nanoseconds on the picker's clock):
    /// each decision extends it by its prompt's prefill time. Reports do not reset it, because a
    /// report shows a routed request as one more running request, not the prefill it still carries.
    pub(crate) prefill_busy_until_ns: AtomicU64,
    pub(crate) routed_total: AtomicU64,
    /// Prompt tokens routed here, and of those the cached tokens the picks counted on: over time,
    /// the hit ratio the picker predicts, to set beside the one the engine reports.
    pub(crate) routed_prompt_tokens: AtomicU64,
    pub(crate) predicted_cached_tokens: AtomicU64,
    /// Until when (nanoseconds on the picker's clock) the endpoint is routed on its exact KV blocks:
    /// its KV-event stream was last heard live, plus `kv_max_age`; 0 when it has no live stream.
    pub(crate) exact_until_ns: AtomicU64,
    /// Where the endpoint was last published: shard in the high 32 bits, index in the low ones.
    /// A reader checks it against its snapshot (it may be newer), see `Snapshot::locate`.
    pub(crate) position: AtomicU64,
}

impl CounterCell {
    pub(crate) fn inflight(&self) -> Inflight {
        Inflight {
            requests: self.inflight_requests.load(Ordering::Acquire),
            prompt_tokens: self.inflight_tokens.load(Ordering::Acquire),
        }
    }

    /// Bounds the routed prefill backlog to end by `until_ns`.
    pub(crate) fn bound_prefill(&self, until_ns: u64) {
        let _ = self
            .prefill_busy_until_ns
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                Some(b.min(until_ns))
            });
    }

    /// Starts a new epoch: nothing routed before it counts as in flight any more.
    pub(crate) fn close_epoch(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.inflight_requests.store(0, Ordering::Release);
        self.inflight_tokens.store(0, Ordering::Release);
    }
}

/// Endpoints per [`CounterChunk`].
const CHUNK: usize = 1024;

/// The counters of [`CHUNK`] consecutive endpoint ids.
#[derive(Debug)]
pub(crate) struct CounterChunk {
    cells: Box<[CounterCell]>,
}

impl CounterChunk {
    fn new() -> Self {
        Self {
            cells: (0..CHUNK).map(|_| CounterCell::default()).collect(),
        }
    }
}

/// Every chunk handed out so far, by chunk index. Replaced (never changed) when it grows, so a
/// snapshot holds the list it was published with and finds every id it names.
pub(crate) type Chunks = Arc<Vec<Arc<CounterChunk>>>;

/// The counters of `id` in `chunks`, if `chunks` is recent enough to hold it.
#[inline]
pub(crate) fn cell(chunks: &Chunks, id: EndpointId) -> Option<&CounterCell> {
    chunks.get(id.chunk()).map(|c| &c.cells[id.cell()])
}

/// An endpoint's handle on its counters: its id and the chunk that holds them.
#[derive(Debug, Clone)]
pub(crate) struct EndpointCounters {
    pub(crate) id: EndpointId,
    chunk: Arc<CounterChunk>,
}

impl EndpointCounters {
    #[inline]
    pub(crate) fn cell(&self) -> &CounterCell {
        &self.chunk.cells[self.id.cell()]
    }
}

/// Hands out endpoint ids and their counters, reusing the ids of forgotten endpoints.
#[derive(Debug, Default)]
pub(crate) struct IdAllocator {
    next: u32,
    free: Vec<u32>,
    chunks: Chunks,
}

impl IdAllocator {
    /// The chunk list as of now (every id handed out so far is in it).
    pub(crate) fn chunks(&self) -> Chunks {
        self.chunks.clone()
    }

    /// A fresh id with zeroed counters.
    pub(crate) fn take(&mut self) -> EndpointCounters {
        let id = EndpointId(self.free.pop().unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        }));
        if self.chunks.len() <= id.chunk() {
            let mut grown = self.chunks.as_ref().clone();
            grown.resize_with(id.chunk() + 1, || Arc::new(CounterChunk::new()));
            self.chunks = Arc::new(grown);
        }
        let counters = EndpointCounters {
            id,
            chunk: self.chunks[id.chunk()].clone(),
        };
        // A reused id starts afresh; the epoch only grows, so decisions made for the forgotten
        // endpoint cannot undo anything when their `done` arrives.
        let c = counters.cell();
        c.close_epoch();
        c.routed_total.store(0, Ordering::Relaxed);
        c.routed_prompt_tokens.store(0, Ordering::Relaxed);
        c.predicted_cached_tokens.store(0, Ordering::Relaxed);
        c.prefill_busy_until_ns.store(0, Ordering::Release);
        c.exact_until_ns.store(0, Ordering::Release);
        counters
    }

    /// Gives ids back once their endpoints are out of every published snapshot's shard lists.
    pub(crate) fn release(&mut self, ids: impl IntoIterator<Item = EndpointId>) {
        self.free.extend(ids.into_iter().map(|id| id.0));
    }
}

/// Subtracts without going below zero.
pub(crate) fn saturating_sub(a: &AtomicU64, n: u64) {
    let _ = a.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
        Some(v.saturating_sub(n))
    });
}
