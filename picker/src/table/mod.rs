//! The endpoint table: the latest report of every endpoint, published as immutable snapshots, and
//! what the picker itself knows between reports (what it routed, where prompts went).
//!
//! Writers (ingest, forgetting) build a new copy of one shard and swap it in with `arc-swap`;
//! readers take a [`Snapshot`] without ever waiting for a writer. What changes between reports — the
//! in-flight estimate, the routed prefill — lives in atomics shared by every snapshot of the same
//! endpoint (`counters`). Decisions are recorded in one explicit step, `Table::record`, and
//! closed by [`Table::done`].
//!
//! - `endpoint`: one endpoint as of its report, and the record a pick scans.
//! - `snapshot`: the published view.
//! - `ingest`: which report replaces which (restarts, reordering, the cap).
//! - `counters`: per-endpoint atomics and the ids that index them.
//! - `ledger`: decisions open for `done` feedback.
//! - `capacity`: the per-endpoint prefill capacity estimate.
//! - `affinity`: the prefix index of each model (which endpoint probably holds which blocks).
//! - `exact`: the token-exact index of each model, from the engines' KV events.
//!
//! Time is an argument everywhere (`now`, from an arbitrary origin), so the simulator can drive the
//! same code with simulated time.

mod affinity;
mod capacity;
mod counters;
mod endpoint;
mod exact;
mod hardware;
mod ingest;
mod ledger;
mod snapshot;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use inferpick_schema::ValidationError;
use inferpick_schema::kv::{KvEvents, KvStreamState};

pub use capacity::{Capacity, DecodeFit, Learned, Source as CapacitySource};
pub use counters::{EndpointId, Inflight};
pub use endpoint::{Endpoint, EndpointState, ModelKey};
pub use exact::{KvOutcome, StreamView};
pub use hardware::{CapacityPin, Hardware, PinMatch};
pub use ingest::{IngestError, IngestOutcome};
pub use ledger::{DoneOutcome, Prediction};
pub use snapshot::Snapshot;

pub(crate) use endpoint::{ScanRecord, duration_ns};
pub(crate) use ledger::Routed;
pub(crate) use snapshot::{ShardView, Slot};

pub(crate) use affinity::Holders;
pub(crate) use exact::ExactMatch;

use affinity::Affinity;
use capacity::Classes;
use counters::IdAllocator;
use exact::Exact;
use ledger::Ledger;
use snapshot::SHARDS;

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
    /// Most prompt blocks the prefix index keeps per endpoint and model.
    pub prefix_blocks_per_endpoint: usize,
    /// Most endpoints the table holds: a report for a new endpoint beyond it is refused, so a flood
    /// of made-up endpoints cannot exhaust memory. Endpoints already in the table keep updating.
    pub max_endpoints: usize,
    /// Most KV blocks the exact index keeps per endpoint (from its engine's KV events); blocks
    /// stored past it are not recorded.
    pub exact_blocks_per_endpoint: usize,
    /// Most KV blocks the exact index keeps over every endpoint.
    pub exact_blocks_total: usize,
    /// An endpoint whose KV-event stream was last heard live longer ago than this is routed on the
    /// approximate index.
    pub kv_max_age: Duration,
    /// Prefill rates the operator fixed for some endpoints; the first match wins.
    pub capacity_pins: Vec<CapacityPin>,
}

impl Default for TableConfig {
    fn default() -> Self {
        Self {
            max_report_age: Duration::from_secs(1),
            forget_after: Duration::from_secs(60),
            max_open_decisions: 100_000,
            prefix_blocks_per_endpoint: 8192,
            max_endpoints: DEFAULT_MAX_ENDPOINTS,
            exact_blocks_per_endpoint: 262_144,
            exact_blocks_total: 4_194_304,
            kv_max_age: Duration::from_secs(5),
            capacity_pins: Vec::new(),
        }
    }
}

/// The thread-safe endpoint table. Reads never block; see the module docs.
#[derive(Debug)]
pub struct Table {
    config: ArcSwap<TableConfig>,
    /// One writer lock per shard; readers never take them.
    writers: Box<[Mutex<()>]>,
    /// The whole table as last published: a pick takes it with one atomic load.
    published: ArcSwap<Snapshot>,
    /// Serializes publishing (taken after a shard's writer lock, never before).
    publish: Mutex<()>,
    ledger: Mutex<Ledger>,
    affinity: Mutex<Affinity>,
    exact: Mutex<Exact>,
    ids: Mutex<IdAllocator>,
    /// The hardware classes' capacity estimates (taken inside a shard's writer lock).
    classes: Mutex<Classes>,
    /// Endpoints in the table. A push reserves room for its new endpoints here before it changes
    /// anything, so the cap holds across shards written concurrently.
    len: AtomicUsize,
}

/// Locks a mutex whose data stays consistent even if a holder panicked (every critical section
/// here leaves it consistent), so poisoning is not a reason to stop routing.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Table {
    /// An empty table.
    pub fn new(config: TableConfig) -> Self {
        Self {
            published: ArcSwap::from_pointee(Snapshot {
                shards: (0..SHARDS).map(|_| Arc::default()).collect(),
                chunks: Arc::default(),
                max_report_age: config.max_report_age,
            }),
            affinity: Mutex::new(Affinity::new(config.prefix_blocks_per_endpoint)),
            exact: Mutex::new({
                let mut exact = Exact::new(config.exact_blocks_per_endpoint);
                exact.set_max_total(config.exact_blocks_total);
                exact
            }),
            config: ArcSwap::from_pointee(config),
            writers: (0..SHARDS).map(|_| Mutex::new(())).collect(),
            publish: Mutex::new(()),
            ledger: Mutex::new(Ledger::default()),
            ids: Mutex::new(IdAllocator::default()),
            classes: Mutex::new(Classes::default()),
            len: AtomicUsize::new(0),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<TableConfig> {
        self.config.load_full()
    }

    /// Replaces the configuration (config reload): the staleness bound applies to the next
    /// snapshot, the prefix bound to every endpoint's next insert, the caps at once.
    pub fn set_config(&self, config: TableConfig) {
        let _publishing = lock(&self.publish);
        lock(&self.affinity).set_capacity(config.prefix_blocks_per_endpoint);
        let mut exact = lock(&self.exact);
        exact.set_max_blocks(config.exact_blocks_per_endpoint);
        exact.set_max_total(config.exact_blocks_total);
        drop(exact);
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

    /// How many endpoints the table holds.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Whether the table holds no endpoint.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The published view of shard `i` (stable while the caller holds that shard's writer lock).
    fn shard_view(&self, i: usize) -> Arc<ShardView> {
        self.published.load().shards[i].clone()
    }

    /// Replaces shard `i` in the published table. The caller holds that shard's writer lock.
    fn publish_shard(&self, i: usize, entries: Vec<Arc<Endpoint>>) {
        // The view being replaced (stable under the writer lock): an entry found at the same
        // index there keeps its position and its scan record, so only what changed is redone.
        let previous = self.shard_view(i);
        for (index, e) in entries.iter().enumerate() {
            if previous
                .entries
                .get(index)
                .is_some_and(|p| Arc::ptr_eq(p, e))
            {
                continue;
            }
            e.counters
                .cell()
                .position
                .store(((i as u64) << 32) | index as u64, Ordering::Release);
        }
        let view = Arc::new(ShardView::succeed(&previous, entries));
        drop(previous);
        let _publishing = lock(&self.publish);
        // Every id in `view` was handed out before this, so its chunk is in the list.
        let chunks = lock(&self.ids).chunks();
        let current = self.published.load();
        self.published.store(Arc::new(Snapshot {
            shards: current.shards.with(i, view),
            chunks,
            max_report_age: current.max_report_age,
        }));
    }

    /// Drops endpoints silent for longer than `forget_after`; returns how many.
    pub fn forget_silent(&self, now: Duration) -> usize {
        let forget_after = self.config.load().forget_after;
        let mut forgotten = Vec::new();
        for (s, writer) in self.writers.iter().enumerate() {
            if self
                .shard_view(s)
                .entries
                .iter()
                .all(|e| e.age(now) <= forget_after)
            {
                continue;
            }
            let _writer = lock(writer);
            let (keep, gone): (Vec<_>, Vec<_>) = self
                .shard_view(s)
                .entries
                .iter()
                .cloned()
                .partition(|e| e.age(now) <= forget_after);
            forgotten.extend(gone.iter().map(|e| e.id()));
            let mut classes = lock(&self.classes);
            for e in &gone {
                classes.update(Some(&e.share), None);
            }
            drop(classes);
            self.publish_shard(s, keep);
            self.len.fetch_sub(gone.len(), Ordering::AcqRel);
        }
        if !forgotten.is_empty() {
            let mut affinity = lock(&self.affinity);
            for id in &forgotten {
                affinity.forget(*id);
            }
            drop(affinity);
            let mut exact = lock(&self.exact);
            for id in &forgotten {
                exact.forget(*id);
            }
            drop(exact);
            lock(&self.ids).release(forgotten.iter().copied());
        }
        forgotten.len()
    }

    /// The endpoints that probably hold `blocks` and that served `session`, in `model`'s index.
    pub(crate) fn holders(&self, model: ModelKey, blocks: &[u64], session: Option<u64>) -> Holders {
        if blocks.is_empty() && session.is_none() {
            return Holders::default();
        }
        lock(&self.affinity).holders(model, blocks, session)
    }

    /// How many leading `tokens` each endpoint of `model` holds, by its engine's KV events.
    pub(crate) fn exact_matches(&self, model: ModelKey, tokens: &[u32]) -> ExactMatch {
        if tokens.is_empty() {
            return ExactMatch::default();
        }
        lock(&self.exact).matches(model, tokens)
    }

    /// Applies one endpoint's KV-event message (`POST /v1/kv-events`). An endpoint the table does
    /// not hold yet (its first report has not arrived) is answered with a resync, applying nothing.
    pub fn ingest_kv(&self, msg: KvEvents, now: Duration) -> Result<KvOutcome, ValidationError> {
        msg.validate()?;
        let snapshot = self.snapshot();
        let Some(endpoint) = snapshot.get(&msg.endpoint) else {
            return Ok(KvOutcome::refused(0));
        };
        let mut bases = endpoint
            .report
            .models
            .iter()
            .filter(|m| m.adapter_of.is_none());
        let base = match (bases.next(), bases.next()) {
            (Some(m), None) => Some(ModelKey::of(&m.name)),
            _ => None,
        };
        let id = endpoint.id();
        let outcome = lock(&self.exact).apply(id, base, &msg);
        let live = !outcome.refused && msg.state == KvStreamState::Live;
        let until = if live {
            duration_ns(now + self.config.load().kv_max_age)
        } else {
            0
        };
        endpoint
            .counters
            .cell()
            .exact_until_ns
            .store(until, Ordering::Release);
        Ok(outcome)
    }

    /// `endpoint`'s KV-event stream, when it has one, and whether picks use it at `now`.
    pub fn kv_stream(&self, endpoint: &Endpoint, now: Duration) -> Option<StreamView> {
        let mut view = lock(&self.exact).stream_of(endpoint.id())?;
        view.routing = endpoint
            .counters
            .cell()
            .exact_until_ns
            .load(Ordering::Acquire)
            > duration_ns(now);
        Some(view)
    }

    /// KV blocks the exact index holds, over every endpoint.
    pub fn exact_blocks(&self) -> usize {
        lock(&self.exact).blocks()
    }

    /// Records a decision: counts `routed` into `endpoint`'s in-flight estimate, remembers the
    /// prompt's `blocks` and the `session` for it in `model`'s prefix index, and keeps the decision
    /// open for `done` feedback under `decision`.
    pub(crate) fn record(
        &self,
        endpoint: &Endpoint,
        decision: u128,
        model: ModelKey,
        routed: Routed,
        (blocks, session): (&[u64], Option<u64>),
    ) {
        if !blocks.is_empty() || session.is_some() {
            lock(&self.affinity).insert(model, endpoint.id(), blocks, session);
        }
        let cap = self.config.load().max_open_decisions;
        lock(&self.ledger).open(
            decision,
            endpoint.id(),
            endpoint.counters.cell(),
            routed,
            cap,
        );
    }

    /// Closes an open decision: a request the gateway saw finish no longer counts as in flight.
    pub fn done(&self, decision: u128, now: Duration) -> DoneOutcome {
        self.close(decision, now).0
    }

    /// [`Table::done`], also returning the prefix-cache hit the pick counted on (when it looked the
    /// prompt up), to compare with what the engine reports.
    pub fn close(&self, decision: u128, now: Duration) -> (DoneOutcome, Option<Prediction>) {
        let chunks = self.published.load().chunks.clone();
        lock(&self.ledger).close(decision, &chunks, duration_ns(now))
    }

    /// How many decisions are open for `done` feedback.
    pub fn open_decisions(&self) -> usize {
        lock(&self.ledger).len()
    }
}

#[cfg(test)]
mod capacity_tests;
#[cfg(test)]
pub(crate) mod tests;
