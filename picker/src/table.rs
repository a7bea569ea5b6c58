//! The endpoint table: the latest report of every endpoint, published as immutable snapshots.
//!
//! Writers (ingest, forgetting) build a new copy of one shard and swap it in with `arc-swap`; readers
//! take a [`Snapshot`] without ever waiting for a writer. Sharding keeps a report's copy small when the
//! table holds thousands of endpoints. What changes between reports — the in-flight estimate, the
//! routed counter — lives in atomics shared by every snapshot of the same endpoint.
//!
//! Time is an argument everywhere (`now`, from an arbitrary origin), so the simulator can drive the
//! same code with simulated time.

use std::collections::{HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use inferpick_schema::{LoadReport, ValidationError};

use crate::prefix::PrefixIndex;

const SHARDS: usize = 64;

/// The default of [`TableConfig::max_endpoints`] (`--max-endpoints`).
pub const DEFAULT_MAX_ENDPOINTS: usize = 10_000;

/// How the table ages and bounds what it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct TableConfig {
    /// An endpoint whose last report arrived longer ago than this is stale and is not picked.
    pub max_report_age: Duration,
    /// An endpoint silent this long is dropped by [`Table::forget_silent`].
    pub forget_after: Duration,
    /// Most decisions kept open for `done` feedback; the oldest are dropped first.
    pub max_open_decisions: usize,
    /// Most prompt blocks the prefix index keeps per endpoint.
    pub prefix_blocks_per_endpoint: usize,
    /// Most endpoints the table holds: a report for a new endpoint beyond it is refused, so a flood
    /// of made-up endpoints cannot exhaust memory. Endpoints already in the table keep updating.
    pub max_endpoints: usize,
}

impl Default for TableConfig {
    fn default() -> Self {
        Self {
            max_report_age: Duration::from_secs(1),
            forget_after: Duration::from_secs(60),
            max_open_decisions: 100_000,
            prefix_blocks_per_endpoint: 8192,
            max_endpoints: DEFAULT_MAX_ENDPOINTS,
        }
    }
}

/// Whether an endpoint may be picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndpointState {
    /// Fresh report, engine ready.
    Ready,
    /// The last report is older than `max_report_age`.
    Stale,
    /// Fresh report, but the engine is not ready (or its agent could not scrape it).
    NotReady,
}

impl EndpointState {
    /// Every state, in metric order.
    pub const ALL: [EndpointState; 3] = [Self::Ready, Self::Stale, Self::NotReady];

    /// The name used in metrics and `/v1/endpoints`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Stale => "stale",
            Self::NotReady => "not_ready",
        }
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

/// The counters of one endpoint that change between reports.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    inflight_requests: AtomicU64,
    inflight_tokens: AtomicU64,
    /// Bumped by every accepted report: decisions of an older epoch are already in the engine's counts.
    epoch: AtomicU64,
    /// When the prefill work routed here is plausibly done (nanoseconds on the picker's clock):
    /// each decision extends it by its prompt's prefill time. Reports do not reset it, because a
    /// report shows a routed request as one more running request, not the prefill it still carries.
    prefill_busy_until_ns: AtomicU64,
    routed_total: AtomicU64,
    /// Where the endpoint was last published: shard in the high 32 bits, index in the low ones.
    /// A reader checks it against its snapshot (it may be newer), see [`Snapshot::locate`].
    position: AtomicU64,
}

/// Endpoints per [`CounterChunk`].
const CHUNK: usize = 1024;

/// The counters of [`CHUNK`] consecutive endpoint ids, side by side: a pick reading the in-flight
/// estimate of every endpoint touches one small dense array instead of one allocation each.
#[derive(Debug)]
pub(crate) struct CounterChunk {
    cells: Box<[Counters]>,
}

impl CounterChunk {
    fn new() -> Self {
        Self {
            cells: (0..CHUNK).map(|_| Counters::default()).collect(),
        }
    }
}

/// Per-endpoint state that outlives a single report: its id and its counters.
#[derive(Debug, Clone)]
pub(crate) struct Live {
    /// Small stable id, used as the prefix index's key. Reused after the endpoint is forgotten.
    pub(crate) id: u32,
    chunk: Arc<CounterChunk>,
}

impl Live {
    #[inline]
    fn counters(&self) -> &Counters {
        &self.chunk.cells[self.id as usize % CHUNK]
    }

    #[inline]
    pub(crate) fn inflight(&self) -> Inflight {
        let c = self.counters();
        Inflight {
            requests: c.inflight_requests.load(Ordering::Acquire),
            prompt_tokens: c.inflight_tokens.load(Ordering::Acquire),
        }
    }

    /// Bounds the routed prefill backlog to end by `until_ns`.
    fn bound_prefill(&self, until_ns: u64) {
        let _ = self.counters().prefill_busy_until_ns.fetch_update(
            Ordering::AcqRel,
            Ordering::Acquire,
            |b| Some(b.min(until_ns)),
        );
    }

    /// Starts a new epoch: nothing routed before it counts as in flight any more.
    fn close_epoch(&self) {
        let c = self.counters();
        c.epoch.fetch_add(1, Ordering::AcqRel);
        c.inflight_requests.store(0, Ordering::Release);
        c.inflight_tokens.store(0, Ordering::Release);
    }
}

/// Hands out endpoint ids and their counters; ids of forgotten endpoints are reused, so memory
/// follows the number of endpoints in the table, not the number ever seen.
#[derive(Debug, Default)]
struct Ids {
    next: u32,
    free: Vec<u32>,
    /// Replaced (not changed) when it grows, so a snapshot can hold the list it was published with.
    chunks: Arc<Vec<Arc<CounterChunk>>>,
}

impl Ids {
    fn counters(&self, id: u32) -> Option<&Counters> {
        self.chunks
            .get(id as usize / CHUNK)
            .map(|c| &c.cells[id as usize % CHUNK])
    }
}

impl Ids {
    fn take(&mut self) -> Live {
        let id = self.free.pop().unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        });
        let chunk = id as usize / CHUNK;
        if self.chunks.len() <= chunk {
            let mut grown = self.chunks.as_ref().clone();
            grown.resize_with(chunk + 1, || Arc::new(CounterChunk::new()));
            self.chunks = Arc::new(grown);
        }
        let live = Live {
            id,
            chunk: self.chunks[chunk].clone(),
        };
        // A reused id starts afresh; the epoch only grows, so decisions made for the forgotten
        // endpoint cannot undo anything when their `done` arrives.
        live.close_epoch();
        live.counters().routed_total.store(0, Ordering::Relaxed);
        live.counters()
            .prefill_busy_until_ns
            .store(0, Ordering::Release);
        live
    }
}

/// One endpoint as of its latest accepted report. Immutable; a new report makes a new one.
#[derive(Debug)]
pub struct Endpoint {
    /// `host:port`, the endpoint's identity.
    pub address: Arc<str>,
    /// The report as received.
    pub report: Arc<LoadReport>,
    /// When it arrived, on the picker's clock.
    pub arrived_at: Duration,
    /// Estimated prefill capacity (tokens/s): a slow moving average of the prompt rate over the
    /// report intervals in which the engine had requests waiting (only then is the rate bounded by
    /// capacity rather than demand), each sample capped so that a few long prompts finishing in one
    /// interval cannot make the endpoint look several times faster. Unknown until it has queued.
    pub peak_prompt_tokens_per_second: Option<f64>,
    /// The report's load signals the scheduler reads for every endpoint, copied here so a pick
    /// over thousands of endpoints does not chase a pointer to each report.
    pub(crate) signals: Signals,
    model_keys: ModelKeys,
    pub(crate) live: Arc<Live>,
}

/// 128-bit keys of the model names an endpoint lists, the first two inline: matching a request's
/// model against thousands of endpoints then reads no string and follows no pointer.
#[derive(Debug)]
struct ModelKeys {
    first: [u128; 2],
    rest: Box<[u128]>,
    len: usize,
    /// Bit i set: model i is a LoRA adapter (reports list at most 64 models).
    adapters: u64,
}

impl ModelKeys {
    fn new(models: &[inferpick_schema::ModelEntry]) -> Self {
        let keys: Vec<u128> = models.iter().map(|m| model_key(&m.name)).collect();
        let mut first = [0; 2];
        for (slot, k) in first.iter_mut().zip(&keys) {
            *slot = *k;
        }
        let adapters = models
            .iter()
            .take(64)
            .enumerate()
            .filter(|(_, m)| m.adapter_of.is_some())
            .fold(0u64, |acc, (i, _)| acc | (1 << i));
        Self {
            first,
            rest: keys.iter().skip(2).copied().collect(),
            len: keys.len(),
            adapters,
        }
    }

    fn position(&self, key: u128) -> Option<usize> {
        let inline = self.len.min(2);
        if let Some(i) = self.first[..inline].iter().position(|&k| k == key) {
            return Some(i);
        }
        self.rest.iter().position(|&k| k == key).map(|i| i + 2)
    }
}

/// A model name's key: two independent 64-bit SipHash values, so distinct names do not collide in
/// practice (odds about 2^-128 per pair).
pub(crate) fn model_key(name: &str) -> u128 {
    let mut h = DefaultHasher::new();
    ("inferpick-model-b", name).hash(&mut h);
    (u128::from(name_hash(name)) << 64) | u128::from(h.finish())
}

/// Hot copies of report fields (absent counts read as zero, as every profile treats them).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Signals {
    pub(crate) ready: bool,
    pub(crate) kv: Option<f64>,
    pub(crate) kv_capacity_tokens: Option<u64>,
}

/// How far past its arrival a report showing an empty queue lets the routed prefill backlog run.
const IDLE_REPORT_PREFILL_BOUND: Duration = Duration::from_secs(1);

/// Weight of one busy interval's prompt rate in the capacity estimate.
const CAPACITY_WEIGHT: f64 = 0.05;
/// A busy interval's rate counts at most this multiple of the current estimate.
const CAPACITY_SAMPLE_CAP: f64 = 2.0;
/// Prefill rate assumed before an estimate exists, to cap the first samples (tokens/s).
const CAPACITY_FIRST_CAP: f64 = 20_000.0;

/// The capacity estimate after a report that observed `observed` tokens/s with `waiting` queued.
fn next_capacity(previous: Option<f64>, observed: Option<f64>, waiting: u32) -> Option<f64> {
    match observed {
        Some(o) if waiting > 0 && o.is_finite() && o > 0.0 => {
            let base = previous.unwrap_or(CAPACITY_FIRST_CAP);
            let sample = o.min(base * CAPACITY_SAMPLE_CAP);
            Some(match previous {
                Some(p) => p + CAPACITY_WEIGHT * (sample - p),
                None => sample,
            })
        }
        _ => previous,
    }
}

pub(crate) fn name_hash(name: &str) -> u64 {
    let mut h = DefaultHasher::new();
    name.hash(&mut h);
    h.finish()
}

impl Endpoint {
    fn new(
        report: LoadReport,
        arrived_at: Duration,
        previous_peak: Option<f64>,
        live: Arc<Live>,
    ) -> Self {
        let peak = next_capacity(
            previous_peak,
            report.load.prompt_tokens_per_second,
            report.load.requests_waiting.unwrap_or(0),
        );
        let model_keys = ModelKeys::new(&report.models);
        let load = &report.load;
        let signals = Signals {
            ready: report.engine.ready,
            kv: load.kv_cache_utilization,
            kv_capacity_tokens: load.kv_cache_capacity_tokens,
        };
        Self {
            address: report.endpoint.address.as_str().into(),
            report: Arc::new(report),
            arrived_at,
            peak_prompt_tokens_per_second: peak,
            signals,
            model_keys,
            live,
        }
    }

    /// How long ago its last report arrived.
    pub fn age(&self, now: Duration) -> Duration {
        now.saturating_sub(self.arrived_at)
    }

    /// Ready, stale or not ready, as of `now`.
    pub fn state(&self, now: Duration, max_report_age: Duration) -> EndpointState {
        if self.age(now) > max_report_age {
            EndpointState::Stale
        } else if !self.signals.ready {
            EndpointState::NotReady
        } else {
            EndpointState::Ready
        }
    }

    /// The in-flight estimate now.
    pub fn inflight(&self) -> Inflight {
        self.live.inflight()
    }

    /// Decisions routed here since the endpoint entered the table.
    pub fn routed_total(&self) -> u64 {
        self.live.counters().routed_total.load(Ordering::Relaxed)
    }

    /// The model entry this endpoint lists under `name` (base model or adapter), if any.
    pub fn model(&self, name: &str) -> Option<&inferpick_schema::ModelEntry> {
        self.report.models.iter().find(|m| m.name == name)
    }

    /// Whether this endpoint serves the model with key `key`, and if so whether it is an adapter.
    pub(crate) fn serves(&self, key: u128) -> Option<bool> {
        self.model_keys
            .position(key)
            .map(|i| i < 64 && self.model_keys.adapters & (1 << i) != 0)
    }
}

/// The result of accepting (or deliberately ignoring) a valid report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestOutcome {
    /// A new endpoint entered the table.
    Added,
    /// A newer report from the same agent replaced the previous one.
    Updated,
    /// A different (newer) agent now reports for this endpoint: the agent or its pod restarted.
    Restarted,
    /// Ignored: not newer than what the table holds (a reordered or duplicated push).
    OutOfOrder,
    /// Ignored: sent by an agent older than the one that reports for this endpoint now.
    Superseded,
}

impl IngestOutcome {
    /// Whether the table changed.
    pub fn accepted(self) -> bool {
        matches!(self, Self::Added | Self::Updated | Self::Restarted)
    }
}

/// A report or batch the table refused; nothing was changed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    /// A report broke a validation rule.
    #[error("{prefix}{source} (report for {address})", prefix = index_prefix(*index))]
    Invalid {
        /// Position in a batch, when the report came in one.
        index: Option<usize>,
        /// The endpoint address the report claimed.
        address: String,
        /// The rule it broke.
        #[source]
        source: ValidationError,
    },
    /// Accepting the new endpoints would grow the table past [`TableConfig::max_endpoints`].
    #[error(
        "{prefix}report for new endpoint {address} refused: the table holds {held} of at most {max_endpoints} endpoints and this push adds {new} (raise --max-endpoints / limits.max_endpoints if the fleet is really this large)",
        prefix = index_prefix(*index)
    )]
    TableFull {
        /// Position in a batch of the first new endpoint's report.
        index: Option<usize>,
        /// The first new endpoint's address.
        address: String,
        /// Endpoints in the table when the push was refused.
        held: usize,
        /// New endpoints the push would have added.
        new: usize,
        /// The cap.
        max_endpoints: usize,
    },
}

fn index_prefix(index: Option<usize>) -> String {
    index.map(|i| format!("[{i}].")).unwrap_or_default()
}

impl IngestError {
    /// The JSON path of the offending field (`[2].load.kv_cache_utilization`), or of the report
    /// (`[2]`) when the report as a whole was refused.
    pub fn field(&self) -> String {
        match self {
            IngestError::Invalid { index, source, .. } => match index {
                Some(i) => format!("[{i}].{}", source.field),
                None => source.field.clone(),
            },
            IngestError::TableFull { index, .. } => {
                index.map(|i| format!("[{i}]")).unwrap_or_default()
            }
        }
    }
}

/// What a pick reads of one endpoint, copied out of its report when the shard is published and
/// laid out contiguously, shard by shard: a pick over thousands of endpoints is then a linear scan
/// of small records that never dereferences an endpoint unless a filter or an adapter needs it.
/// One cache line each.
#[derive(Debug, Clone)]
#[repr(C, align(64))]
pub(crate) struct Hot {
    /// Key of the first model the endpoint lists (`0` when it lists none).
    pub(crate) model: u128,
    /// Arrival of its report, in nanoseconds on the picker's clock.
    pub(crate) arrived_ns: u64,
    /// KV cache utilization; NaN when not reported.
    pub(crate) kv: f64,
    /// KV capacity in tokens; 0 when unknown (the cost treats both alike).
    pub(crate) kv_capacity_tokens: u64,
    /// Prefill capacity estimate (tokens/s); 0 when unknown.
    pub(crate) peak_prompt_tokens_per_second: f64,
    pub(crate) waiting: u32,
    pub(crate) running: u32,
    /// The endpoint's id: its counters are [`Snapshot::counters`]`(id)`.
    pub(crate) id: u32,
    pub(crate) ready: bool,
    /// The first model is a LoRA adapter.
    pub(crate) model_is_adapter: bool,
    /// It lists more than one model: other keys are in the endpoint's [`ModelKeys`].
    pub(crate) more_models: bool,
}

const _: () = assert!(std::mem::size_of::<Hot>() == 64);

impl Hot {
    fn of(e: &Endpoint) -> Self {
        let keys = &e.model_keys;
        Self {
            model: if keys.len > 0 { keys.first[0] } else { 0 },
            model_is_adapter: keys.adapters & 1 != 0,
            more_models: keys.len > 1,
            ready: e.signals.ready,
            arrived_ns: duration_ns(e.arrived_at),
            waiting: e.report.load.requests_waiting.unwrap_or(0),
            running: e.report.load.requests_running.unwrap_or(0),
            kv: e.signals.kv.unwrap_or(f64::NAN),
            kv_capacity_tokens: e.signals.kv_capacity_tokens.unwrap_or(0),
            peak_prompt_tokens_per_second: e.peak_prompt_tokens_per_second.unwrap_or(0.0),
            id: e.live.id,
        }
    }

    /// Whether the endpoint serves the model with key `key` (and if so whether as an adapter);
    /// `entry` is the endpoint itself, read only when it lists several models.
    #[inline]
    pub(crate) fn serves(&self, key: u128, entry: &Endpoint) -> Option<bool> {
        if self.model == key {
            Some(self.model_is_adapter)
        } else if self.more_models {
            entry.serves(key)
        } else {
            None
        }
    }

    /// Ready, stale or not ready, as of `now_ns` — the same rule as [`Endpoint::state`].
    #[inline]
    pub(crate) fn state(&self, now_ns: u64, max_report_age_ns: u64) -> EndpointState {
        if now_ns.saturating_sub(self.arrived_ns) > max_report_age_ns {
            EndpointState::Stale
        } else if !self.ready {
            EndpointState::NotReady
        } else {
            EndpointState::Ready
        }
    }

    /// KV utilization as reported, if it was.
    #[inline]
    pub(crate) fn kv(&self) -> Option<f64> {
        (!self.kv.is_nan()).then_some(self.kv)
    }
}

/// A duration in whole nanoseconds, saturating (u64 nanoseconds span 584 years).
pub(crate) fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// One shard as published: its endpoints sorted by address, and their [`Hot`] records in the same
/// order. Immutable; a write publishes a new one.
#[derive(Debug, Default, Clone)]
pub(crate) struct ShardView {
    pub(crate) entries: Vec<Arc<Endpoint>>,
    pub(crate) hot: Vec<Hot>,
}

impl ShardView {
    fn new(entries: Vec<Arc<Endpoint>>) -> Self {
        let hot = entries.iter().map(|e| Hot::of(e)).collect();
        Self { entries, hot }
    }
}

/// An immutable view of the whole table.
#[derive(Debug)]
pub struct Snapshot {
    pub(crate) shards: Vec<Arc<ShardView>>,
    /// The counters of every endpoint id in this snapshot, by id.
    chunks: Arc<Vec<Arc<CounterChunk>>>,
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
        let shard = &self.shards[shard_of(address)].entries;
        shard
            .binary_search_by(|e| (*e.address).cmp(address))
            .ok()
            .map(|i| &shard[i])
    }

    /// The in-flight estimate now of the endpoint with id `id` (an id of this snapshot).
    #[inline]
    pub(crate) fn inflight(&self, id: u32) -> Inflight {
        let c = &self.chunks[id as usize / CHUNK].cells[id as usize % CHUNK];
        Inflight {
            requests: c.inflight_requests.load(Ordering::Acquire),
            prompt_tokens: c.inflight_tokens.load(Ordering::Acquire),
        }
    }

    /// When the prefill routed to the endpoint with id `id` is plausibly done (nanoseconds).
    #[inline]
    pub(crate) fn prefill_busy_until_ns(&self, id: u32) -> u64 {
        self.chunks[id as usize / CHUNK].cells[id as usize % CHUNK]
            .prefill_busy_until_ns
            .load(Ordering::Acquire)
    }

    /// The endpoint at position `index` of shard `shard`, as the scheduler's scan numbers them.
    pub(crate) fn entry(&self, shard: u32, index: u32) -> &Arc<Endpoint> {
        &self.shards[shard as usize].entries[index as usize]
    }
}

fn shard_of(address: &str) -> usize {
    (name_hash(address) % SHARDS as u64) as usize
}

/// Serializes the writers of one shard; readers never take it.
#[derive(Debug, Default)]
struct Shard {
    write: Mutex<()>,
}

/// A decision still waiting for `done` feedback.
#[derive(Debug)]
struct Open {
    live: Arc<Live>,
    epoch: u64,
    prompt_tokens: u64,
    /// Its share of the routed prefill backlog: when that backlog reached its end, and its length
    /// (nanoseconds).
    prefill: Option<(u64, u64)>,
}

#[derive(Debug, Default)]
struct OpenDecisions {
    open: HashMap<u128, Open>,
    order: VecDeque<u128>,
}

/// What `done` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DoneOutcome {
    /// The decision was open and its in-flight share was removed (or was already covered by a newer report).
    Closed,
    /// No open decision has this id (already closed, dropped for memory, or never made here).
    Unknown,
}

/// The thread-safe endpoint table. Reads never block; see the module docs.
#[derive(Debug)]
pub struct Table {
    config: ArcSwap<TableConfig>,
    shards: Box<[Shard]>,
    /// The whole table as last published: a pick takes it with one atomic load.
    published: ArcSwap<Snapshot>,
    /// Serializes publishing (taken after a shard's writer lock, never before).
    publish: Mutex<()>,
    decisions: Mutex<OpenDecisions>,
    prefix: Mutex<PrefixIndex>,
    ids: Mutex<Ids>,
    /// Endpoints in the table. A push reserves room for its new endpoints here before it changes
    /// anything, so the cap holds across shards written concurrently.
    len: AtomicUsize,
}

/// Locks a mutex whose data stays consistent even if a holder panicked (every critical section
/// here leaves it consistent), so poisoning is not a reason to stop routing.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Table {
    /// An empty table.
    pub fn new(config: TableConfig) -> Self {
        let prefix = PrefixIndex::new(config.prefix_blocks_per_endpoint);
        Self {
            published: ArcSwap::from_pointee(Snapshot {
                shards: (0..SHARDS).map(|_| Arc::default()).collect(),
                chunks: Arc::default(),
                max_report_age: config.max_report_age,
            }),
            config: ArcSwap::from_pointee(config),
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            publish: Mutex::new(()),
            decisions: Mutex::new(OpenDecisions::default()),
            prefix: Mutex::new(prefix),
            ids: Mutex::new(Ids::default()),
            len: AtomicUsize::new(0),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<TableConfig> {
        self.config.load_full()
    }

    /// Replaces the configuration (config reload). The prefix bound applies to new insertions.
    pub fn set_config(&self, config: TableConfig) {
        let _publishing = lock(&self.publish);
        let max_report_age = config.max_report_age;
        self.config.store(Arc::new(config));
        let current = self.published.load();
        self.published.store(Arc::new(Snapshot {
            shards: current.shards.clone(),
            chunks: current.chunks.clone(),
            max_report_age,
        }));
    }

    /// The current table, without waiting for writers.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.published.load_full()
    }

    /// The published view of shard `i` (stable while the caller holds that shard's writer lock).
    fn shard_view(&self, i: usize) -> Arc<ShardView> {
        self.published.load().shards[i].clone()
    }

    /// Replaces shard `i` in the published table. The caller holds that shard's writer lock.
    fn publish_shard(&self, i: usize, entries: Vec<Arc<Endpoint>>) {
        for (index, e) in entries.iter().enumerate() {
            e.live
                .counters()
                .position
                .store(((i as u64) << 32) | index as u64, Ordering::Release);
        }
        let view = Arc::new(ShardView::new(entries));
        let _publishing = lock(&self.publish);
        // Every id in `view` was handed out before this, so its chunk is in the list.
        let chunks = lock(&self.ids).chunks.clone();
        let current = self.published.load();
        let mut shards = current.shards.clone();
        shards[i] = view;
        self.published.store(Arc::new(Snapshot {
            shards,
            chunks,
            max_report_age: current.max_report_age,
        }));
    }

    /// Validates and applies one report.
    pub fn ingest(&self, report: LoadReport, now: Duration) -> Result<IngestOutcome, IngestError> {
        report.validate().map_err(|source| IngestError::Invalid {
            index: None,
            address: report.endpoint.address.clone(),
            source,
        })?;
        self.apply(vec![report], now)
            .map(|o| o[0])
            .map_err(|e| match e {
                IngestError::TableFull {
                    address,
                    held,
                    new,
                    max_endpoints,
                    ..
                } => IngestError::TableFull {
                    index: None,
                    address,
                    held,
                    new,
                    max_endpoints,
                },
                e => e,
            })
    }

    /// Validates every report, then applies them all (publishing each touched shard once); if one
    /// is invalid, or the batch's new endpoints do not fit under the cap, none is applied and the
    /// error names the index.
    pub fn ingest_batch(
        &self,
        reports: Vec<LoadReport>,
        now: Duration,
    ) -> Result<Vec<IngestOutcome>, IngestError> {
        for (i, r) in reports.iter().enumerate() {
            r.validate().map_err(|source| IngestError::Invalid {
                index: Some(i),
                address: r.endpoint.address.clone(),
                source,
            })?;
        }
        self.apply(reports, now)
    }

    /// How many endpoints the table holds.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Whether the table holds no endpoint.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn apply(
        &self,
        reports: Vec<LoadReport>,
        now: Duration,
    ) -> Result<Vec<IngestOutcome>, IngestError> {
        let mut outcomes = vec![IngestOutcome::OutOfOrder; reports.len()];
        let mut by_shard: Vec<Vec<(usize, LoadReport)>> = Vec::new();
        by_shard.resize_with(SHARDS, Vec::new);
        for (i, r) in reports.into_iter().enumerate() {
            by_shard[shard_of(&r.endpoint.address)].push((i, r));
        }
        // Every touched shard's writer lock, taken in shard order (so concurrent pushes cannot
        // deadlock) and held until the batch is applied: the new endpoints counted below stay new.
        let writers: Vec<_> = self
            .shards
            .iter()
            .zip(&by_shard)
            .map(|(shard, group)| (!group.is_empty()).then(|| lock(&shard.write)))
            .collect();
        self.reserve(&by_shard)?;
        for (s, group) in by_shard.into_iter().enumerate() {
            if group.is_empty() {
                continue;
            }
            let mut entries: Vec<Arc<Endpoint>> = self.shard_view(s).entries.clone();
            let mut changed = false;
            for (i, report) in group {
                let outcome = self.apply_one(&mut entries, report, now);
                changed |= outcome.accepted();
                outcomes[i] = outcome;
            }
            if changed {
                self.publish_shard(s, entries);
            }
        }
        drop(writers);
        Ok(outcomes)
    }

    /// Counts the distinct endpoints of `by_shard` the table does not hold yet and reserves room
    /// for them under the cap, or refuses the whole push. The caller holds the touched shards'
    /// writer locks.
    fn reserve(&self, by_shard: &[Vec<(usize, LoadReport)>]) -> Result<(), IngestError> {
        let mut new = 0usize;
        let mut first: Option<(usize, &str)> = None;
        for (s, group) in by_shard.iter().enumerate() {
            if group.is_empty() {
                continue;
            }
            let view = self.shard_view(s);
            let mut seen: Vec<&str> = Vec::new();
            for (i, r) in group {
                let address = r.endpoint.address.as_str();
                let held = view
                    .entries
                    .binary_search_by(|e| (*e.address).cmp(address))
                    .is_ok();
                if !held && !seen.contains(&address) {
                    seen.push(address);
                    new += 1;
                    if first.is_none_or(|(f, _)| *i < f) {
                        first = Some((*i, address));
                    }
                }
            }
        }
        if new == 0 {
            return Ok(());
        }
        let max_endpoints = self.config.load().max_endpoints;
        self.len
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held.saturating_add(new) <= max_endpoints).then_some(held + new)
            })
            .map(|_| ())
            .map_err(|held| {
                let (index, address) = first.unwrap_or_default();
                IngestError::TableFull {
                    index: Some(index),
                    address: address.to_string(),
                    held,
                    new,
                    max_endpoints,
                }
            })
    }

    fn apply_one(
        &self,
        entries: &mut Vec<Arc<Endpoint>>,
        report: LoadReport,
        now: Duration,
    ) -> IngestOutcome {
        let address = report.endpoint.address.as_str();
        match entries.binary_search_by(|e| (*e.address).cmp(address)) {
            Err(pos) => {
                let live = Arc::new(lock(&self.ids).take());
                entries.insert(pos, Arc::new(Endpoint::new(report, now, None, live)));
                IngestOutcome::Added
            }
            Ok(pos) => {
                let prev = &entries[pos];
                let outcome = if prev.report.agent.id == report.agent.id {
                    if report.seq <= prev.report.seq {
                        return IngestOutcome::OutOfOrder;
                    }
                    IngestOutcome::Updated
                } else {
                    if report.agent.started_at_ms < prev.report.agent.started_at_ms {
                        return IngestOutcome::Superseded;
                    }
                    IngestOutcome::Restarted
                };
                // The engine's own counts now include everything routed before this report.
                prev.live.close_epoch();
                let live = prev.live.clone();
                if outcome == IngestOutcome::Restarted {
                    // A restarted engine holds none of the work routed to its predecessor.
                    live.bound_prefill(0);
                } else if report.load.requests_waiting == Some(0) {
                    // Nothing queued: whatever was routed before the report is admitted and at
                    // most a prefill in progress remains, so the backlog cannot run far ahead.
                    live.bound_prefill(
                        duration_ns(now).saturating_add(duration_ns(IDLE_REPORT_PREFILL_BOUND)),
                    );
                }
                let peak = prev.peak_prompt_tokens_per_second;
                entries[pos] = Arc::new(Endpoint::new(report, now, peak, live));
                outcome
            }
        }
    }

    /// Drops endpoints silent for longer than `forget_after`; returns how many.
    pub fn forget_silent(&self, now: Duration) -> usize {
        let forget_after = self.config.load().forget_after;
        let mut forgotten = Vec::new();
        for (s, shard) in self.shards.iter().enumerate() {
            if self
                .shard_view(s)
                .entries
                .iter()
                .all(|e| e.age(now) <= forget_after)
            {
                continue;
            }
            let _writer = lock(&shard.write);
            let (keep, gone): (Vec<_>, Vec<_>) = self
                .shard_view(s)
                .entries
                .iter()
                .cloned()
                .partition(|e| e.age(now) <= forget_after);
            forgotten.extend(gone.iter().map(|e| e.live.id));
            self.publish_shard(s, keep);
            self.len.fetch_sub(gone.len(), Ordering::AcqRel);
        }
        if !forgotten.is_empty() {
            let mut prefix = lock(&self.prefix);
            for id in &forgotten {
                prefix.forget(*id);
            }
            drop(prefix);
            lock(&self.ids).free.extend(&forgotten);
        }
        forgotten.len()
    }

    /// Counts a decision into `endpoint`'s in-flight estimate and the prefix index, and keeps it
    /// open for `done` feedback.
    #[cfg(test)]
    pub(crate) fn record(
        &self,
        endpoint: &Endpoint,
        decision_id: u128,
        prompt_tokens: u64,
        prefix_keys: &[u64],
    ) {
        self.record_with_prefill(endpoint, decision_id, prompt_tokens, prefix_keys, None);
    }

    /// [`record`](Self::record), and when `prefill` is `(now_ns, prefill_ns)` also adds
    /// `prefill_ns` of prefill work routed at `now_ns` to the endpoint's backlog: it is done
    /// `prefill_ns` after the later of now and the work already routed there.
    pub(crate) fn record_with_prefill(
        &self,
        endpoint: &Endpoint,
        decision_id: u128,
        prompt_tokens: u64,
        prefix_keys: &[u64],
        prefill: Option<(u64, u64)>,
    ) {
        let live = &endpoint.live;
        let prefill = prefill.filter(|&(_, n)| n > 0).map(|(now_ns, n)| {
            let grow = |b: u64| b.max(now_ns).saturating_add(n);
            let before = live
                .counters()
                .prefill_busy_until_ns
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| Some(grow(b)))
                .unwrap_or_else(|b| b);
            (grow(before), n)
        });
        let c = live.counters();
        let epoch = c.epoch.load(Ordering::Acquire);
        c.inflight_requests.fetch_add(1, Ordering::AcqRel);
        c.inflight_tokens.fetch_add(prompt_tokens, Ordering::AcqRel);
        c.routed_total.fetch_add(1, Ordering::Relaxed);
        if !prefix_keys.is_empty() {
            lock(&self.prefix).insert(live.id, prefix_keys);
        }
        let cap = self.config.load().max_open_decisions;
        let mut d = lock(&self.decisions);
        d.open.insert(
            decision_id,
            Open {
                live: live.clone(),
                epoch,
                prompt_tokens,
                prefill,
            },
        );
        d.order.push_back(decision_id);
        while d.open.len() > cap {
            match d.order.pop_front() {
                Some(old) => {
                    d.open.remove(&old);
                }
                None => break,
            }
        }
        // Ids of decisions already closed by `done` stay in `order` until it is compacted; doing
        // so once they outnumber the open ones keeps memory with the open count (amortized O(1)).
        if d.order.len() > 2 * d.open.len() + 64 {
            let OpenDecisions { open, order } = &mut *d;
            order.retain(|id| open.contains_key(id));
        }
    }

    /// Closes an open decision: a request the gateway saw finish no longer counts as in flight.
    pub fn done(&self, decision_id: u128, now: Duration) -> DoneOutcome {
        let Some(open) = lock(&self.decisions).open.remove(&decision_id) else {
            return DoneOutcome::Unknown;
        };
        // A finished request's prefill is over: take out what the backlog still holds of it.
        if let Some((end_ns, len_ns)) = open.prefill {
            let left = end_ns.saturating_sub(duration_ns(now)).min(len_ns);
            if left > 0 {
                saturating_sub(&open.live.counters().prefill_busy_until_ns, left);
            }
        }
        // A newer report already counts (or no longer counts) this request: nothing to undo.
        let c = open.live.counters();
        if c.epoch.load(Ordering::Acquire) == open.epoch {
            saturating_sub(&c.inflight_requests, 1);
            saturating_sub(&c.inflight_tokens, open.prompt_tokens);
        }
        DoneOutcome::Closed
    }

    /// How many decisions are open for `done` feedback.
    pub fn open_decisions(&self) -> usize {
        lock(&self.decisions).open.len()
    }

    /// Where each endpoint of `ids` is in `snapshot` (shard, index), for those that are there.
    pub(crate) fn locate(
        &self,
        snapshot: &Snapshot,
        ids: impl Iterator<Item = u32>,
    ) -> Vec<(u32, u32)> {
        let all = lock(&self.ids);
        ids.filter_map(|id| {
            let packed = all.counters(id)?.position.load(Ordering::Acquire);
            let (shard, index) = ((packed >> 32) as u32, packed as u32);
            // The position may come from a newer publication than `snapshot`: trust it only if
            // the snapshot has this endpoint there.
            let found = snapshot
                .shards
                .get(shard as usize)?
                .hot
                .get(index as usize)?;
            (found.id == id).then_some((shard, index))
        })
        .collect()
    }

    /// For each endpoint id that probably holds the leading blocks of `keys`: how many.
    pub(crate) fn prefix_matches(&self, keys: &[u64]) -> Vec<(u32, u32)> {
        if keys.is_empty() {
            return Vec::new();
        }
        lock(&self.prefix).matches(keys)
    }
}

fn saturating_sub(a: &AtomicU64, n: u64) {
    let _ = a.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
        Some(v.saturating_sub(n))
    });
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use inferpick_schema::{AgentInfo, EndpointInfo, EngineKind, EngineStatus, Load, ModelEntry};

    pub(crate) const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

    /// A valid report for `address` serving [`MODEL`], idle.
    pub(crate) fn report(address: &str, seq: u64) -> LoadReport {
        LoadReport {
            schema_version: 1,
            agent: AgentInfo {
                id: format!("agent-{address}"),
                version: "0.1.0".into(),
                started_at_ms: 1_000,
            },
            seq,
            sent_at_ms: 2_000,
            interval_ms: 100,
            endpoint: EndpointInfo {
                address: address.into(),
                pod: Some(format!("pod-{address}")),
                namespace: None,
                node: None,
            },
            engine: EngineStatus {
                kind: EngineKind::Vllm,
                ready: true,
                error: None,
                scrape_ms: Some(1.0),
            },
            models: vec![ModelEntry {
                name: MODEL.into(),
                adapter_of: None,
            }],
            load: Load {
                requests_waiting: Some(0),
                requests_running: Some(0),
                kv_cache_utilization: Some(0.0),
                kv_cache_capacity_tokens: Some(200_000),
                ..Load::default()
            },
            gpus: vec![],
        }
    }

    const T0: Duration = Duration::from_secs(10);

    #[test]
    fn ingest_adds_then_updates_and_snapshots_are_immutable() {
        let t = Table::new(TableConfig::default());
        assert_eq!(
            t.ingest(report("10.0.0.1:8000", 1), T0).unwrap(),
            IngestOutcome::Added
        );
        let before = t.snapshot();
        let mut r = report("10.0.0.1:8000", 2);
        r.load.requests_waiting = Some(9);
        assert_eq!(t.ingest(r, T0).unwrap(), IngestOutcome::Updated);
        let get = |s: &Snapshot| s.get("10.0.0.1:8000").unwrap().report.load.requests_waiting;
        assert_eq!(get(&before), Some(0), "an old snapshot never changes");
        assert_eq!(get(&t.snapshot()), Some(9));
        assert_eq!(t.snapshot().len(), 1);
    }

    #[test]
    fn reordered_and_superseded_reports_are_ignored() {
        let t = Table::new(TableConfig::default());
        t.ingest(report("10.0.0.1:8000", 5), T0).unwrap();
        assert_eq!(
            t.ingest(report("10.0.0.1:8000", 4), T0).unwrap(),
            IngestOutcome::OutOfOrder
        );
        assert_eq!(
            t.ingest(report("10.0.0.1:8000", 5), T0).unwrap(),
            IngestOutcome::OutOfOrder
        );
        let mut restarted = report("10.0.0.1:8000", 1);
        restarted.agent.id = "new-agent".into();
        restarted.agent.started_at_ms = 5_000;
        assert_eq!(t.ingest(restarted, T0).unwrap(), IngestOutcome::Restarted);
        // A late push of the old agent must not undo the restart.
        assert_eq!(
            t.ingest(report("10.0.0.1:8000", 6), T0).unwrap(),
            IngestOutcome::Superseded
        );
        assert_eq!(
            t.snapshot().get("10.0.0.1:8000").unwrap().report.agent.id,
            "new-agent"
        );
    }

    #[test]
    fn a_full_table_refuses_a_batch_with_new_endpoints_whole_and_keeps_updating_known_ones() {
        let t = Table::new(TableConfig {
            max_endpoints: 3,
            ..TableConfig::default()
        });
        t.ingest_batch(
            vec![report("10.0.0.1:8000", 1), report("10.0.0.2:8000", 1)],
            T0,
        )
        .unwrap();
        // Two new endpoints (one listed twice) where one fits: refused whole, naming the first new one.
        let err = t
            .ingest_batch(
                vec![
                    report("10.0.0.1:8000", 2),
                    report("10.0.0.3:8000", 1),
                    report("10.0.0.4:8000", 1),
                    report("10.0.0.3:8000", 2),
                ],
                T0,
            )
            .unwrap_err();
        assert!(matches!(
            err,
            IngestError::TableFull {
                index: Some(1),
                held: 2,
                new: 2,
                max_endpoints: 3,
                ..
            }
        ));
        assert_eq!(err.field(), "[1]");
        assert!(err.to_string().contains("10.0.0.3:8000"), "{err}");
        assert!(err.to_string().contains("--max-endpoints"), "{err}");
        let s = t.snapshot();
        assert_eq!(s.len(), 2);
        assert_eq!(s.get("10.0.0.1:8000").unwrap().report.seq, 1, "unchanged");
        // A duplicate of a new endpoint counts once: exactly fills the table.
        t.ingest_batch(
            vec![report("10.0.0.3:8000", 1), report("10.0.0.3:8000", 2)],
            T0,
        )
        .unwrap();
        assert_eq!(t.len(), 3);
        assert!(matches!(
            t.ingest(report("10.0.0.5:8000", 1), T0),
            Err(IngestError::TableFull { index: None, .. })
        ));
        // Known endpoints keep updating at the cap.
        assert_eq!(
            t.ingest(report("10.0.0.1:8000", 2), T0).unwrap(),
            IngestOutcome::Updated
        );
        // Forgetting makes room again.
        let later = T0 + TableConfig::default().forget_after + Duration::from_secs(1);
        t.ingest(report("10.0.0.1:8000", 3), later).unwrap();
        assert_eq!(t.forget_silent(later), 2);
        assert_eq!(t.len(), 1);
        t.ingest_batch(
            vec![report("10.0.0.5:8000", 1), report("10.0.0.6:8000", 1)],
            later,
        )
        .unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t.snapshot().len(), 3);
    }

    proptest::proptest! {
        /// Whatever batches arrive — new and known endpoints, duplicates, an invalid report here
        /// and there — a refused batch changes nothing, an accepted one holds every address it
        /// names, and the table never exceeds its cap.
        #[test]
        fn batches_apply_whole_or_not_at_all_and_the_cap_holds(
            cap in 1usize..12,
            batches in proptest::collection::vec(
                proptest::collection::vec((0u8..24, proptest::bool::weighted(0.05)), 1..8),
                1..30,
            ),
        ) {
            let t = Table::new(TableConfig { max_endpoints: cap, ..TableConfig::default() });
            for (seq, batch) in batches.iter().enumerate() {
                let before: Vec<(String, u64)> = t
                    .snapshot()
                    .iter()
                    .map(|e| (e.address.to_string(), e.report.seq))
                    .collect();
                let reports: Vec<LoadReport> = batch
                    .iter()
                    .map(|&(host, invalid)| {
                        let mut r = report(&format!("10.0.0.{host}:8000"), seq as u64 + 1);
                        if invalid {
                            r.load.kv_cache_utilization = Some(2.0);
                        }
                        r
                    })
                    .collect();
                let addresses: Vec<String> =
                    reports.iter().map(|r| r.endpoint.address.clone()).collect();
                let result = t.ingest_batch(reports, T0);
                let after = t.snapshot();
                match result {
                    Ok(_) => {
                        for a in &addresses {
                            proptest::prop_assert!(after.get(a).is_some(), "{} missing", a);
                        }
                    }
                    Err(_) => {
                        let now: Vec<(String, u64)> = after
                            .iter()
                            .map(|e| (e.address.to_string(), e.report.seq))
                            .collect();
                        proptest::prop_assert_eq!(now, before);
                    }
                }
                proptest::prop_assert!(after.len() <= cap);
                proptest::prop_assert_eq!(after.len(), t.len());
            }
        }
    }

    #[test]
    fn concurrent_pushes_never_grow_the_table_past_its_cap() {
        let t = Arc::new(Table::new(TableConfig {
            max_endpoints: 50,
            ..TableConfig::default()
        }));
        let threads: Vec<_> = (0..4)
            .map(|w| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for b in 0..20 {
                        let batch = (0..5)
                            .map(|i| report(&format!("10.{w}.{b}.{i}:8000"), 1))
                            .collect();
                        let _ = t.ingest_batch(batch, T0);
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        assert_eq!(t.snapshot().len(), 50);
        assert_eq!(t.len(), 50);
    }

    #[test]
    fn invalid_reports_change_nothing_and_name_the_field() {
        let t = Table::new(TableConfig::default());
        let mut bad = report("10.0.0.2:8000", 1);
        bad.load.kv_cache_utilization = Some(1.5);
        let err = t
            .ingest_batch(vec![report("10.0.0.1:8000", 1), bad], T0)
            .unwrap_err();
        assert_eq!(err.field(), "[1].load.kv_cache_utilization");
        assert!(err.to_string().contains("10.0.0.2:8000"), "{err}");
        assert!(
            t.snapshot().is_empty(),
            "the valid report of the batch was not applied either"
        );
    }

    #[test]
    fn staleness_uses_arrival_time() {
        let t = Table::new(TableConfig::default());
        t.ingest(report("10.0.0.1:8000", 1), T0).unwrap();
        let s = t.snapshot();
        let e = s.get("10.0.0.1:8000").unwrap();
        assert_eq!(
            e.state(T0 + Duration::from_millis(999), s.max_report_age),
            EndpointState::Ready
        );
        assert_eq!(
            e.state(T0 + Duration::from_millis(1001), s.max_report_age),
            EndpointState::Stale
        );
        let mut down = report("10.0.0.1:8000", 2);
        down.engine.ready = false;
        t.ingest(down, T0).unwrap();
        let s = t.snapshot();
        assert_eq!(
            s.get("10.0.0.1:8000").unwrap().state(T0, s.max_report_age),
            EndpointState::NotReady
        );
    }

    #[test]
    fn forget_silent_drops_only_silent_endpoints() {
        let t = Table::new(TableConfig::default());
        t.ingest(report("10.0.0.1:8000", 1), T0).unwrap();
        t.ingest(report("10.0.0.2:8000", 1), T0 + Duration::from_secs(30))
            .unwrap();
        assert_eq!(t.forget_silent(T0 + Duration::from_secs(60)), 0);
        assert_eq!(t.forget_silent(T0 + Duration::from_secs(61)), 1);
        let s = t.snapshot();
        assert!(s.get("10.0.0.1:8000").is_none());
        assert!(s.get("10.0.0.2:8000").is_some());
    }

    #[test]
    fn inflight_is_closed_by_done_and_by_newer_reports() {
        let t = Table::new(TableConfig::default());
        t.ingest(report("10.0.0.1:8000", 1), T0).unwrap();
        let s = t.snapshot();
        let e = s.get("10.0.0.1:8000").unwrap();
        t.record(e, 1, 100, &[]);
        t.record(e, 2, 50, &[]);
        assert_eq!(
            e.inflight(),
            Inflight {
                requests: 2,
                prompt_tokens: 150
            }
        );
        assert_eq!(t.done(1, T0), DoneOutcome::Closed);
        assert_eq!(t.done(1, T0), DoneOutcome::Unknown);
        assert_eq!(
            e.inflight(),
            Inflight {
                requests: 1,
                prompt_tokens: 50
            }
        );
        t.ingest(report("10.0.0.1:8000", 2), T0).unwrap();
        let s = t.snapshot();
        let e = s.get("10.0.0.1:8000").unwrap();
        assert_eq!(e.inflight(), Inflight::default());
        // Decision 2 belongs to the previous report's epoch: closing it must not go below zero
        // nor undo a decision of the new epoch.
        t.record(e, 3, 70, &[]);
        assert_eq!(t.done(2, T0), DoneOutcome::Closed);
        assert_eq!(
            e.inflight(),
            Inflight {
                requests: 1,
                prompt_tokens: 70
            }
        );
        assert_eq!(e.routed_total(), 3);
    }

    #[test]
    fn open_decisions_are_bounded() {
        let t = Table::new(TableConfig {
            max_open_decisions: 10,
            ..TableConfig::default()
        });
        t.ingest(report("10.0.0.1:8000", 1), T0).unwrap();
        let s = t.snapshot();
        let e = s.get("10.0.0.1:8000").unwrap();
        for id in 0..1000 {
            t.record(e, id, 1, &[]);
        }
        assert_eq!(t.open_decisions(), 10);
        assert_eq!(
            t.done(0, T0),
            DoneOutcome::Unknown,
            "the oldest were dropped"
        );
        assert_eq!(t.done(999, T0), DoneOutcome::Closed);
        assert!(lock(&t.decisions).order.len() <= 2 * 10 + 64);
    }

    #[test]
    fn closed_decisions_do_not_pile_up_below_the_cap() {
        // Every decision closed by `done`, far below the cap: what is kept follows the open count,
        // not the cap (a long soak at a steady pick rate would otherwise grow by 16 bytes a pick).
        let t = Table::new(TableConfig::default());
        t.ingest(report("10.0.0.1:8000", 1), T0).unwrap();
        let s = t.snapshot();
        let e = s.get("10.0.0.1:8000").unwrap();
        for id in 0..50_000 {
            t.record(e, id, 1, &[]);
            assert_eq!(t.done(id, T0), DoneOutcome::Closed);
        }
        assert_eq!(t.open_decisions(), 0);
        assert!(lock(&t.decisions).order.len() <= 64 + 1);
    }

    #[test]
    fn prefill_capacity_survives_an_idle_report() {
        let t = Table::new(TableConfig::default());
        let mut busy = report("10.0.0.1:8000", 1);
        busy.load.prompt_tokens_per_second = Some(12_000.0);
        busy.load.requests_waiting = Some(4);
        t.ingest(busy, T0).unwrap();
        let mut idle = report("10.0.0.1:8000", 2);
        idle.load.prompt_tokens_per_second = Some(10.0);
        idle.load.requests_waiting = Some(0);
        t.ingest(idle, T0).unwrap();
        let capacity = t
            .snapshot()
            .get("10.0.0.1:8000")
            .unwrap()
            .peak_prompt_tokens_per_second
            .unwrap();
        assert_eq!(capacity, 12_000.0);
    }

    #[test]
    fn routed_prefill_outlives_reports_until_done_or_an_empty_queue_bounds_it() {
        let t = Table::new(TableConfig::default());
        let addr = "10.0.0.1:8000";
        t.ingest(report(addr, 1), T0).unwrap();
        let now = duration_ns(T0);
        let busy_until = |t: &Table| {
            let s = t.snapshot();
            s.prefill_busy_until_ns(s.get(addr).unwrap().live.id)
        };
        let e = t.snapshot().get(addr).unwrap().clone();
        t.record_with_prefill(&e, 1, 4_000, &[], Some((now, 400_000_000)));
        t.record_with_prefill(&e, 2, 2_000, &[], Some((now, 200_000_000)));
        assert_eq!(busy_until(&t), now + 600_000_000);
        // A report with a queue zeroes the in-flight requests but keeps their prefill.
        let mut queued = report(addr, 2);
        queued.load.requests_waiting = Some(2);
        t.ingest(queued, T0).unwrap();
        assert_eq!(t.snapshot().get(addr).unwrap().inflight().requests, 0);
        assert_eq!(busy_until(&t), now + 600_000_000);
        // The first request finishes 100 ms on: the 300 ms of its prefill still counted leave.
        assert_eq!(
            t.done(1, T0 + Duration::from_millis(100)),
            DoneOutcome::Closed
        );
        assert_eq!(busy_until(&t), now + 300_000_000);
        // A `done` after its share's end takes nothing from work routed later.
        t.record_with_prefill(&e, 3, 9_000, &[], Some((now + 700_000_000, 500_000_000)));
        assert_eq!(busy_until(&t), now + 1_200_000_000);
        t.done(2, T0 + Duration::from_millis(700));
        assert_eq!(busy_until(&t), now + 1_200_000_000);
        // A report that shows an empty queue bounds the backlog to a second past its arrival.
        let mut idle = report(addr, 3);
        idle.load.requests_waiting = Some(0);
        t.ingest(idle, T0 + Duration::from_millis(100)).unwrap();
        assert_eq!(busy_until(&t), now + 1_100_000_000);
    }

    #[test]
    fn a_burst_of_finished_prompts_barely_moves_the_capacity_estimate() {
        assert_eq!(next_capacity(None, Some(50_000.0), 0), None);
        let first = next_capacity(None, Some(15_000.0), 3).unwrap();
        assert_eq!(first, 15_000.0);
        // Eight times the estimate in one interval counts as twice it, at a twentieth's weight.
        let after = next_capacity(Some(first), Some(120_000.0), 3).unwrap();
        assert!((15_000.0..16_000.0).contains(&after), "{after}");
    }

    #[test]
    fn model_keys_find_every_listed_model_and_its_kind() {
        let t = Table::new(TableConfig::default());
        let mut r = report("10.0.0.1:8000", 1);
        for i in 0..5 {
            r.models.push(ModelEntry {
                name: format!("lora-{i}"),
                adapter_of: Some(MODEL.into()),
            });
        }
        t.ingest(r, T0).unwrap();
        let s = t.snapshot();
        let e = s.get("10.0.0.1:8000").unwrap();
        assert_eq!(e.serves(model_key(MODEL)), Some(false));
        assert_eq!(e.serves(model_key("lora-0")), Some(true));
        assert_eq!(
            e.serves(model_key("lora-4")),
            Some(true),
            "beyond the inline keys"
        );
        assert_eq!(e.serves(model_key("lora-5")), None);
        assert_eq!(
            e.model("lora-4").unwrap().adapter_of.as_deref(),
            Some(MODEL)
        );
        assert_ne!(model_key("a"), model_key("b"));
    }

    /// Every shard's hot records mirror its endpoints, in order.
    fn assert_hot_mirrors_entries(s: &Snapshot) {
        for shard in &s.shards {
            assert_eq!(shard.hot.len(), shard.entries.len());
            for (h, e) in shard.hot.iter().zip(&shard.entries) {
                assert_eq!(h.id, e.live.id, "{}", e.address);
                assert_eq!(h.arrived_ns, duration_ns(e.arrived_at));
                assert_eq!(h.ready, e.report.engine.ready);
                assert_eq!(h.waiting, e.report.load.requests_waiting.unwrap_or(0));
                assert_eq!(h.running, e.report.load.requests_running.unwrap_or(0));
                assert_eq!(h.kv(), e.report.load.kv_cache_utilization);
                assert_eq!(s.inflight(h.id), e.inflight());
                for m in &e.report.models {
                    assert_eq!(
                        h.serves(model_key(&m.name), e),
                        Some(m.adapter_of.is_some()),
                        "{} serves {}",
                        e.address,
                        m.name
                    );
                }
                assert_eq!(h.serves(model_key("not-served"), e), None);
            }
        }
    }

    #[test]
    fn hot_records_follow_ingest_restart_staleness_and_forget() {
        let t = Table::new(TableConfig::default());
        let batch: Vec<_> = (0..200)
            .map(|i| report(&format!("10.1.0.{i}:8000"), 1))
            .collect();
        t.ingest_batch(batch, T0).unwrap();
        assert_hot_mirrors_entries(&t.snapshot());

        // Updates: new signals, a second model, not ready.
        let mut r = report("10.1.0.7:8000", 2);
        r.load.requests_waiting = Some(42);
        r.load.kv_cache_utilization = None;
        r.models.push(ModelEntry {
            name: "lora-x".into(),
            adapter_of: Some(MODEL.into()),
        });
        t.ingest(r, T0 + Duration::from_millis(500)).unwrap();
        let mut down = report("10.1.0.8:8000", 2);
        down.engine.ready = false;
        t.ingest(down, T0).unwrap();
        let mut restarted = report("10.1.0.9:8000", 1);
        restarted.agent.id = "new-agent".into();
        restarted.agent.started_at_ms = 9_000;
        restarted.load.requests_running = Some(3);
        assert_eq!(t.ingest(restarted, T0).unwrap(), IngestOutcome::Restarted);
        let s = t.snapshot();
        assert_hot_mirrors_entries(&s);
        let hot = |addr: &str| {
            let shard = &s.shards[shard_of(addr)];
            let i = shard
                .entries
                .iter()
                .position(|e| &*e.address == addr)
                .unwrap();
            shard.hot[i].clone()
        };
        let age = s.max_report_age;
        let now = duration_ns(T0 + Duration::from_millis(1_200));
        assert_eq!(hot("10.1.0.7:8000").waiting, 42);
        assert_eq!(
            hot("10.1.0.7:8000").state(now, duration_ns(age)),
            EndpointState::Ready,
            "its report is the newest"
        );
        assert_eq!(
            hot("10.1.0.1:8000").state(now, duration_ns(age)),
            EndpointState::Stale
        );
        assert_eq!(
            hot("10.1.0.8:8000").state(duration_ns(T0), duration_ns(age)),
            EndpointState::NotReady
        );
        assert_eq!(hot("10.1.0.9:8000").running, 3);

        // The counters the scan reads are the endpoint's own.
        let e = s.get("10.1.0.3:8000").unwrap();
        t.record(e, 1, 300, &[]);
        assert_eq!(
            s.inflight(hot("10.1.0.3:8000").id),
            Inflight {
                requests: 1,
                prompt_tokens: 300
            }
        );

        // Forgetting drops the records with their endpoints.
        assert_eq!(t.forget_silent(T0 + Duration::from_millis(60_400)), 199);
        let s = t.snapshot();
        assert_eq!(s.len(), 1);
        assert_hot_mirrors_entries(&s);
    }

    #[test]
    fn a_reused_id_starts_with_clean_counters() {
        let t = Table::new(TableConfig::default());
        t.ingest(report("10.0.0.1:8000", 1), T0).unwrap();
        let s = t.snapshot();
        let old = s.get("10.0.0.1:8000").unwrap();
        let old_id = old.live.id;
        t.record(old, 1, 100, &[7, 8]);
        t.record(old, 2, 100, &[]);
        assert_eq!(t.forget_silent(T0 + Duration::from_secs(61)), 1);
        t.ingest(report("10.0.0.2:8000", 1), T0 + Duration::from_secs(61))
            .unwrap();
        let s = t.snapshot();
        let new = s.get("10.0.0.2:8000").unwrap();
        assert_eq!(new.live.id, old_id, "the forgotten endpoint's id is reused");
        assert_eq!(new.inflight(), Inflight::default());
        assert_eq!(new.routed_total(), 0);
        assert_eq!(
            lock(&t.prefix).blocks_of(new.live.id),
            0,
            "no prefix blocks inherited"
        );
        t.record(new, 3, 40, &[]);
        // A late `done` for the forgotten endpoint must not touch the new one's estimate.
        assert_eq!(t.done(1, T0), DoneOutcome::Closed);
        assert_eq!(
            new.inflight(),
            Inflight {
                requests: 1,
                prompt_tokens: 40
            }
        );
        assert_hot_mirrors_entries(&s);
    }

    #[test]
    fn ids_past_one_counter_chunk_get_their_own_counters() {
        let t = Table::new(TableConfig::default());
        let n = CHUNK + 10;
        let batch: Vec<_> = (0..n)
            .map(|i| report(&format!("10.2.{}.{}:8000", i / 250, i % 250), 1))
            .collect();
        t.ingest_batch(batch, T0).unwrap();
        let s = t.snapshot();
        for (k, e) in s.iter().enumerate() {
            t.record(e, k as u128, k as u64, &[]);
        }
        for (k, e) in s.iter().enumerate() {
            assert_eq!(
                e.inflight(),
                Inflight {
                    requests: 1,
                    prompt_tokens: k as u64
                },
                "{}",
                e.address
            );
        }
        assert_hot_mirrors_entries(&s);
    }

    #[test]
    fn set_config_republishes_the_staleness_bound() {
        let t = Table::new(TableConfig::default());
        t.ingest(report("10.0.0.1:8000", 1), T0).unwrap();
        let before = t.snapshot();
        t.set_config(TableConfig {
            max_report_age: Duration::from_secs(5),
            ..TableConfig::default()
        });
        assert_eq!(before.max_report_age, Duration::from_secs(1));
        let after = t.snapshot();
        assert_eq!(after.max_report_age, Duration::from_secs(5));
        assert_eq!(after.len(), 1, "the endpoints stay");
    }

    #[test]
    fn many_endpoints_spread_over_shards_and_stay_findable() {
        let t = Table::new(TableConfig::default());
        let batch: Vec<_> = (0..500)
            .map(|i| report(&format!("10.0.{}.{}:8000", i / 250, i % 250), 1))
            .collect();
        let outcomes = t.ingest_batch(batch, T0).unwrap();
        assert!(outcomes.iter().all(|o| *o == IngestOutcome::Added));
        let s = t.snapshot();
        assert_eq!(s.len(), 500);
        assert!(s.get("10.0.1.249:8000").is_some());
        let ids: std::collections::HashSet<u32> = s.iter().map(|e| e.live.id).collect();
        assert_eq!(ids.len(), 500, "ids are unique");
    }
}
