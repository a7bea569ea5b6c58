//! The candidate stage: one pass over the snapshot that keeps the endpoints that may serve the
//! request, with the signals every profile reads, and counts why the others were left out.

use std::cell::Cell;
use std::sync::Arc;

use super::profile::Reads;
use super::request::ResolvedRequest;
use crate::table::{
    Endpoint, EndpointState, Holders, Inflight, ModelKey, ScanRecord, ShardView, Slot, Snapshot,
};
use std::sync::atomic::Ordering;

/// How the requested model relates to an endpoint's adapters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AdapterState {
    /// The request is for a base model.
    NotAdapter,
    /// The engine does not report adapter state.
    Unknown,
    /// The adapter is loaded (has running requests).
    Loaded,
    /// The adapter is not loaded.
    NotLoaded {
        /// Requests already wait for it.
        waiting: bool,
        /// Fewer adapters run than the engine has slots.
        running_below_max: bool,
        /// Fewer adapters run or wait than the engine has slots (GIE's test for a free slot).
        loaded_or_waiting_below_max: bool,
    },
}

impl AdapterState {
    fn of(endpoint: &Endpoint, model: &str) -> Self {
        let Some(a) = &endpoint.report.load.adapters else {
            return AdapterState::Unknown;
        };
        if a.running.iter().any(|n| n == model) {
            return AdapterState::Loaded;
        }
        let distinct_waiting = a.waiting.iter().filter(|w| !a.running.contains(w)).count();
        let below = |n: usize| a.max_loaded.is_none_or(|m| (n as u64) < u64::from(m));
        AdapterState::NotLoaded {
            waiting: a.waiting.iter().any(|n| n == model),
            running_below_max: below(a.running.len()),
            loaded_or_waiting_below_max: below(a.running.len() + distinct_waiting),
        }
    }

    /// The name shown by explain.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AdapterState::NotAdapter => "not_adapter",
            AdapterState::Unknown => "unknown",
            AdapterState::Loaded => "loaded",
            AdapterState::NotLoaded { waiting: true, .. } => "waiting",
            AdapterState::NotLoaded {
                running_below_max: true,
                ..
            } => "free_slot",
            AdapterState::NotLoaded { .. } => "slots_full",
        }
    }
}

/// An endpoint that passed the filters, with the signals every profile reads.
#[derive(Debug)]
pub(crate) struct Candidate {
    /// Where the endpoint is in the snapshot.
    pub(crate) slot: Slot,
    /// When its report arrived (nanoseconds on the picker's clock).
    pub(crate) arrived_ns: u64,
    /// Prefill rate (tokens/s) its capacity says, throttling included; 0 when unknown.
    pub(crate) prefill_tokens_per_second: f64,
    /// Its speed relative to one H100 at full clock (what scales the assumed floor).
    pub(crate) prior_scale: f64,
    /// Its decode step time per running sequence relative to an H100's.
    pub(crate) decode_scale: f64,
    /// Seconds until the prefill this picker routed here is plausibly done (0 when not read).
    pub(crate) prefill_backlog_seconds: f64,
    /// Seconds this request's own prefill would add here (set by the `inferpick` cost).
    pub(crate) ask_prefill_seconds: f64,
    /// KV capacity in tokens, 0 when unknown.
    pub(crate) kv_capacity_tokens: u64,
    /// Waiting requests as reported.
    pub(crate) waiting: u64,
    /// Running requests as reported.
    pub(crate) running: u64,
    /// Routed here since the last report (0 when the profile does not read it).
    pub(crate) inflight_requests: u64,
    pub(crate) inflight_tokens: u64,
    pub(crate) kv: Option<f64>,
    /// Leading prompt tokens it holds: by its engine's KV events when its stream is live, else
    /// as the approximate index guesses.
    pub(crate) cached_tokens: u32,
    /// `cached_tokens` comes from the KV events.
    pub(crate) cached_exact: bool,
    /// It served this session before.
    pub(crate) session_hit: bool,
    pub(crate) adapter: AdapterState,
    /// Lower is better (profiles that maximize a score store its negation).
    pub(crate) cost: f64,
}

impl Candidate {
    /// The endpoint itself.
    pub(crate) fn endpoint<'s>(&self, snapshot: &'s Snapshot) -> &'s Arc<Endpoint> {
        snapshot.entry(self.slot)
    }

    /// Requests the endpoint holds or will hold: waiting + running + routed since its report.
    pub(crate) fn load(&self) -> u64 {
        self.waiting + self.running + self.inflight_requests
    }
}

/// Most candidates a thread keeps buffered between picks (about 1.5 MiB).
const MAX_BUFFERED_CANDIDATES: usize = 16_384;

thread_local! {
    static CANDIDATE_BUFFER: Cell<Vec<Candidate>> = const { Cell::new(Vec::new()) };
}

/// A candidate list borrowed from this thread's reusable buffer and given back, emptied, when
/// dropped: a pick over thousands of endpoints allocates no list of them.
pub(crate) struct CandidateBuffer(Vec<Candidate>);

impl CandidateBuffer {
    pub(crate) fn take() -> Self {
        CandidateBuffer(CANDIDATE_BUFFER.try_with(Cell::take).unwrap_or_default())
    }
}

impl Drop for CandidateBuffer {
    fn drop(&mut self) {
        let mut list = std::mem::take(&mut self.0);
        if list.capacity() <= MAX_BUFFERED_CANDIDATES {
            list.clear();
            // During thread teardown the buffer is gone; the list is then simply freed.
            let _ = CANDIDATE_BUFFER.try_with(|b| b.set(list));
        }
    }
}

impl std::ops::Deref for CandidateBuffer {
    type Target = Vec<Candidate>;
    fn deref(&self) -> &Vec<Candidate> {
        &self.0
    }
}

impl std::ops::DerefMut for CandidateBuffer {
    fn deref_mut(&mut self) -> &mut Vec<Candidate> {
        &mut self.0
    }
}

/// Why endpoints serving the model were left out, counted.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Tally {
    /// Endpoints that list the model (among those looked at).
    pub serving: usize,
    /// Of those, stale.
    pub stale: usize,
    /// Not ready.
    pub not_ready: usize,
    /// Fresh and ready, but a GPU reports a fatal condition.
    pub gpu_failed: usize,
    /// Left out by `candidates` / `exclude`.
    pub filtered: usize,
}

/// One pick's pass over the snapshot.
pub(crate) struct Scan<'s, 'r> {
    snapshot: &'s Snapshot,
    model: ModelKey,
    request: &'r ResolvedRequest<'r>,
    holders: &'r Holders,
    filters: bool,
    /// The profile (or explain) reads the in-flight estimate; the others skip the counters.
    read_inflight: bool,
    now_ns: u64,
    max_age_ns: u64,
    explain: bool,
    pub(crate) tally: Tally,
    pub(crate) excluded: Vec<(&'s Arc<Endpoint>, &'static str)>,
}

impl<'s, 'r> Scan<'s, 'r> {
    pub(crate) fn new(
        snapshot: &'s Snapshot,
        request: &'r ResolvedRequest<'r>,
        holders: &'r Holders,
        reads: Reads,
        now_ns: u64,
        explain: bool,
    ) -> Self {
        Self {
            snapshot,
            model: request.model_key,
            request,
            holders,
            filters: request.candidates.is_some() || !request.exclude.is_empty(),
            read_inflight: explain || reads.inflight,
            now_ns,
            max_age_ns: crate::table::duration_ns(snapshot.max_report_age),
            explain,
            tally: Tally::default(),
            excluded: Vec::new(),
        }
    }

    /// Every endpoint of the snapshot.
    pub(crate) fn whole(&mut self, cands: &mut Vec<Candidate>) {
        for (s, shard) in self.snapshot.shards.iter().enumerate() {
            for (i, (record, endpoint)) in shard.records.iter().zip(&shard.entries).enumerate() {
                let slot = Slot {
                    shard: s as u32,
                    index: i as u32,
                };
                self.consider(slot, record, endpoint, cands);
            }
        }
    }

    /// Looks at the endpoint in `slot` and adds it to `cands` if it may serve the request.
    #[inline]
    fn consider(
        &mut self,
        slot: Slot,
        record: &ScanRecord,
        endpoint: &'s Arc<Endpoint>,
        cands: &mut Vec<Candidate>,
    ) {
        let Some(is_adapter) = record.serves(self.model, endpoint) else {
            return;
        };
        self.tally.serving += 1;
        let mut reason = None;
        if self.filters {
            let address: &str = &endpoint.address;
            if self
                .request
                .candidates
                .is_some_and(|c| !c.iter().any(|a| a == address))
            {
                self.tally.filtered += 1;
                reason = Some("not in candidates");
            } else if self.request.exclude.iter().any(|a| a == address) {
                self.tally.filtered += 1;
                reason = Some("excluded");
            }
        }
        let reason = reason.or_else(|| match record.state(self.now_ns, self.max_age_ns) {
            EndpointState::Ready => None,
            EndpointState::Stale => {
                self.tally.stale += 1;
                Some("stale")
            }
            EndpointState::NotReady => {
                self.tally.not_ready += 1;
                Some("not_ready")
            }
            EndpointState::GpuFailed => {
                self.tally.gpu_failed += 1;
                Some("gpu_failed")
            }
        });
        if let Some(reason) = reason {
            if self.explain {
                self.excluded.push((endpoint, reason));
            }
            return;
        }
        let id = record.id;
        let (inflight, prefill_backlog_seconds) = if self.read_inflight {
            let busy_until = self.snapshot.prefill_busy_until_ns(id);
            (
                self.snapshot.inflight(id),
                busy_until.saturating_sub(self.now_ns) as f64 / 1e9,
            )
        } else {
            (Inflight::default(), 0.0)
        };
        let cached_exact = !self.request.tokens.is_empty()
            && self
                .snapshot
                .cell(id)
                .exact_until_ns
                .load(Ordering::Acquire)
                > self.now_ns;
        let cached_tokens = if cached_exact {
            self.holders.exact.tokens(id)
        } else {
            (f64::from(self.holders.blocks(id)) * self.request.tokens_per_block) as u32
        };
        cands.push(Candidate {
            slot,
            arrived_ns: record.arrived_ns,
            prefill_tokens_per_second: f64::from(record.prefill_tokens_per_second),
            prior_scale: f64::from(record.prior_scale),
            decode_scale: f64::from(record.decode_scale),
            prefill_backlog_seconds,
            ask_prefill_seconds: 0.0,
            kv_capacity_tokens: record.kv_capacity_tokens,
            waiting: record.waiting.into(),
            running: record.running.into(),
            inflight_requests: inflight.requests,
            inflight_tokens: inflight.prompt_tokens,
            kv: record.kv(),
            cached_tokens,
            cached_exact,
            session_hit: self.holders.session_hit(id),
            adapter: if is_adapter {
                AdapterState::of(endpoint, self.request.model)
            } else {
                AdapterState::NotAdapter
            },
            cost: 0.0,
        });
    }

    /// The bounded scan of a large pool: endpoints in snapshot order from position `start`,
    /// wrapping, until `limit` candidates are found (or every endpoint was seen), plus every
    /// endpoint the prefix index or the session names, wherever it is. The window starts at a
    /// random place and shards order endpoints by address hash, so it is a random sample.
    /// Returns whether part of the pool was left unseen.
    pub(crate) fn window(
        &mut self,
        cands: &mut Vec<Candidate>,
        limit: usize,
        start: usize,
    ) -> bool {
        let snapshot: &'s Snapshot = self.snapshot;
        let shards = &snapshot.shards;
        let total = snapshot.len();
        let (mut s, mut i) = (0, start);
        while i >= shards[s].records.len() {
            i -= shards[s].records.len();
            s += 1;
        }
        let mut seen = 0;
        while seen < total && cands.len() < limit {
            let shard: &'s ShardView = &shards[s];
            let (records, entries) = (&shard.records[..], &shard.entries[..]);
            while i < records.len() && seen < total && cands.len() < limit {
                let slot = Slot {
                    shard: s as u32,
                    index: i as u32,
                };
                self.consider(slot, &records[i], &entries[i], cands);
                i += 1;
                seen += 1;
            }
            if i >= records.len() {
                (s, i) = ((s + 1) % shards.len(), 0);
            }
        }
        if seen == total {
            return false;
        }
        let ids = self.holders.ids();
        if ids.is_empty() {
            return true;
        }
        let mut offsets = Vec::with_capacity(shards.len());
        let mut sum = 0;
        for shard in shards {
            offsets.push(sum);
            sum += shard.records.len();
        }
        for slot in ids.into_iter().filter_map(|id| snapshot.locate(id)) {
            let rank = offsets[slot.shard as usize] + slot.index as usize;
            if (rank + total - start) % total >= seen {
                let shard: &'s ShardView = &shards[slot.shard as usize];
                let i = slot.index as usize;
                self.consider(slot, &shard.records[i], &shard.entries[i], cands);
            }
        }
        true
    }
}
