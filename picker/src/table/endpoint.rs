//! One endpoint as of its latest accepted report, and the one-cache-line record a pick scans.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use inferpick_schema::{LoadReport, ModelEntry};

use super::capacity::{Capacity, Classes, Learned, Share};
use super::counters::{EndpointCounters, EndpointId, Inflight};
use super::hardware::{CapacityPin, Hardware, gpu_condition};

/// What a new entry learns with: the hardware classes' estimates (updated with its own) and the
/// operator's pins.
#[derive(Debug)]
pub(crate) struct Learning<'a> {
    pub(crate) classes: &'a mut Classes,
    pub(crate) pins: &'a [CapacityPin],
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
    /// Fresh report, but one of its GPUs reports a fatal condition (lost, uncorrectable ECC
    /// errors, a fatal XID): nothing is routed there until a report says otherwise.
    GpuFailed,
}

impl EndpointState {
    /// Every state, in metric order.
    pub const ALL: [EndpointState; 4] = [Self::Ready, Self::Stale, Self::NotReady, Self::GpuFailed];

    /// The name used in metrics and `/v1/endpoints`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Stale => "stale",
            Self::NotReady => "not_ready",
            Self::GpuFailed => "gpu_failed",
        }
    }

    /// The state of an endpoint whose report is `age_ns` old, against the staleness bound.
    #[inline]
    fn of(age_ns: u64, max_report_age_ns: u64, ready: bool, gpu_failed: bool) -> Self {
        if age_ns > max_report_age_ns {
            Self::Stale
        } else if !ready {
            Self::NotReady
        } else if gpu_failed {
            Self::GpuFailed
        } else {
            Self::Ready
        }
    }
}

/// A model name's key: two independent 64-bit SipHash values, so distinct names do not collide in
/// practice (odds about 2^-128 per pair). Matching a request's model against thousands of
/// endpoints then compares integers, not strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ModelKey(u128);

impl ModelKey {
    /// The key of `name`.
    pub fn of(name: &str) -> Self {
        let mut h = DefaultHasher::new();
        ("inferpick-model-b", name).hash(&mut h);
        ModelKey((u128::from(name_hash(name)) << 64) | u128::from(h.finish()))
    }
}

/// SipHash with fixed keys: stable across runs and replicas.
pub(crate) fn name_hash(name: &str) -> u64 {
    let mut h = DefaultHasher::new();
    name.hash(&mut h);
    h.finish()
}

/// The keys of the model names an endpoint lists, the first two inline.
#[derive(Debug, Clone)]
struct ModelKeys {
    first: [ModelKey; 2],
    rest: Box<[ModelKey]>,
    len: usize,
    /// Bit i set: model i is a LoRA adapter (reports list at most 64 models).
    adapters: u64,
}

impl ModelKeys {
    fn new(models: &[ModelEntry]) -> Self {
        let keys: Vec<ModelKey> = models.iter().map(|m| ModelKey::of(&m.name)).collect();
        let mut first = [ModelKey::default(); 2];
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

    /// The keys of `models` when they list what `previous` listed (the usual report: no model
    /// came or went), without hashing the names again.
    fn reuse(previous: &[ModelEntry], keys: &ModelKeys, models: &[ModelEntry]) -> Self {
        let same = previous.len() == models.len()
            && previous
                .iter()
                .zip(models)
                .all(|(p, m)| p.name == m.name && p.adapter_of.is_some() == m.adapter_of.is_some());
        if same {
            keys.clone()
        } else {
            Self::new(models)
        }
    }

    fn position(&self, key: ModelKey) -> Option<usize> {
        let inline = self.len.min(2);
        if let Some(i) = self.first[..inline].iter().position(|&k| k == key) {
            return Some(i);
        }
        self.rest.iter().position(|&k| k == key).map(|i| i + 2)
    }
}

/// Agent ids an endpoint has had before its current one: a late push from one of them is a
/// leftover of a restart, not a new restart. Bounded; an agent id names one process, so an old one
/// never comes back legitimately.
const RETIRED_AGENTS: usize = 8;

/// One endpoint as of its latest accepted report. Immutable; a new report makes a new one.
#[derive(Debug)]
pub struct Endpoint {
    /// `host:port`, the endpoint's identity.
    pub address: Arc<str>,
    /// The report as received.
    pub report: Arc<LoadReport>,
    /// When it arrived, on the picker's clock.
    pub arrived_at: Duration,
    /// What its GPUs are and how fast that is.
    pub hardware: Hardware,
    /// What its own reports have shown of its speed.
    pub learned: Learned,
    /// Its capacity as picks read it, see `capacity`.
    pub capacity: Capacity,
    /// Which GPU has a fatal condition and what, when one does.
    pub gpu_failure: Option<Arc<str>>,
    /// Its contribution to its hardware class's estimates.
    pub(crate) share: Share,
    /// Agents that reported for this address before the current one, newest last.
    pub(crate) retired_agents: Arc<[Arc<str>]>,
    model_keys: ModelKeys,
    pub(crate) counters: EndpointCounters,
}

impl Endpoint {
    /// A new entry for `report`. `previous` is the entry it replaces (same address), whose
    /// learned capacity it continues; `classes` is updated with its own estimates.
    pub(crate) fn new(
        report: LoadReport,
        arrived_at: Duration,
        previous: Option<&Endpoint>,
        retired_agents: Arc<[Arc<str>]>,
        counters: EndpointCounters,
        learning: Learning<'_>,
    ) -> Self {
        debug_assert!(previous.is_none_or(|p| *p.address == *report.endpoint.address));
        let (address, model_keys) = match previous {
            Some(p) => (
                p.address.clone(),
                ModelKeys::reuse(&p.report.models, &p.model_keys, &report.models),
            ),
            None => (
                report.endpoint.address.as_str().into(),
                ModelKeys::new(&report.models),
            ),
        };
        let hardware = match previous {
            Some(p) if Hardware::same(&p.report, &report) => p.hardware.clone(),
            _ => Hardware::of(&report),
        };
        let (speed, gpu_failure) = gpu_condition(&report);
        let learned = Learned::next(
            previous.map(|p| p.learned).unwrap_or_default(),
            &report.load,
            speed,
        );
        let pinned = CapacityPin::find(learning.pins, &report);
        let (capacity, share) = learning.classes.learn(
            previous.map(|p| &p.share),
            &hardware,
            &learned,
            speed,
            pinned,
        );
        Self {
            address,
            model_keys,
            report: Arc::new(report),
            arrived_at,
            hardware,
            learned,
            capacity,
            gpu_failure,
            share,
            retired_agents,
            counters,
        }
    }

    /// The retired list after `self`'s agent is replaced by another.
    pub(crate) fn retire_agent(&self) -> Arc<[Arc<str>]> {
        let skip = (self.retired_agents.len() + 1).saturating_sub(RETIRED_AGENTS);
        self.retired_agents
            .iter()
            .skip(skip)
            .cloned()
            .chain(std::iter::once(Arc::from(self.report.agent.id.as_str())))
            .collect()
    }

    /// Whether `agent` reported for this address before the current agent took over.
    pub(crate) fn is_retired(&self, agent: &str) -> bool {
        self.retired_agents.iter().any(|a| &**a == agent)
    }

    /// Its id in the table.
    pub fn id(&self) -> EndpointId {
        self.counters.id
    }

    /// How long ago its last report arrived.
    pub fn age(&self, now: Duration) -> Duration {
        now.saturating_sub(self.arrived_at)
    }

    /// Ready, stale or not ready, as of `now`.
    pub fn state(&self, now: Duration, max_report_age: Duration) -> EndpointState {
        EndpointState::of(
            duration_ns(self.age(now)),
            duration_ns(max_report_age),
            self.report.engine.ready,
            self.gpu_failure.is_some(),
        )
    }

    /// The in-flight estimate now.
    pub fn inflight(&self) -> Inflight {
        self.counters.cell().inflight()
    }

    /// Prompt tokens of the requests routed here whose prefix was looked up, and the cached tokens
    /// the picks counted on among them, since the endpoint entered the table.
    pub fn routed_prefix_tokens(&self) -> (u64, u64) {
        let c = self.counters.cell();
        (
            c.routed_prompt_tokens.load(Ordering::Relaxed),
            c.predicted_cached_tokens.load(Ordering::Relaxed),
        )
    }

    /// Decisions routed here since the endpoint entered the table.
    pub fn routed_total(&self) -> u64 {
        self.counters.cell().routed_total.load(Ordering::Relaxed)
    }

    /// The model entry this endpoint lists under `name` (base model or adapter), if any.
    pub fn model(&self, name: &str) -> Option<&ModelEntry> {
        self.report.models.iter().find(|m| m.name == name)
    }

    /// Whether this endpoint serves the model with key `key`, and if so whether it is an adapter.
    pub(crate) fn serves(&self, key: ModelKey) -> Option<bool> {
        self.model_keys
            .position(key)
            .map(|i| i < 64 && self.model_keys.adapters & (1 << i) != 0)
    }
}

/// What a pick reads of one endpoint, copied out of its report when the shard is published and
/// laid out contiguously, shard by shard: a pick over thousands of endpoints is then a linear scan
/// of small records that never dereferences an endpoint unless a filter or an adapter needs it.
/// One cache line each.
#[derive(Debug, Clone)]
#[repr(C, align(64))]
pub(crate) struct ScanRecord {
    /// Key of the first model the endpoint lists (zero when it lists none).
    pub(crate) model: ModelKey,
    /// Arrival of its report, in nanoseconds on the picker's clock.
    pub(crate) arrived_ns: u64,
    /// KV cache utilization; NaN when not reported.
    pub(crate) kv: f32,
    /// [`Capacity::decode_scale`].
    pub(crate) decode_scale: f32,
    /// KV capacity in tokens; 0 when unknown (the cost treats both alike).
    pub(crate) kv_capacity_tokens: u64,
    /// [`Capacity::prefill_tokens_per_second`]; 0 when unknown.
    pub(crate) prefill_tokens_per_second: f32,
    /// [`Capacity::prior_scale`].
    pub(crate) prior_scale: f32,
    pub(crate) waiting: u32,
    pub(crate) running: u32,
    /// The endpoint's id: its counters are `Snapshot::cell(id)`.
    pub(crate) id: EndpointId,
    pub(crate) ready: bool,
    /// A GPU reports a fatal condition.
    pub(crate) gpu_failed: bool,
    /// The first model is a LoRA adapter.
    pub(crate) model_is_adapter: bool,
    /// It lists more than one model: other keys are in the endpoint's [`ModelKeys`].
    pub(crate) more_models: bool,
}

const _: () = assert!(std::mem::size_of::<ScanRecord>() == 64);

impl ScanRecord {
    pub(crate) fn of(e: &Endpoint) -> Self {
        let keys = &e.model_keys;
        let load = &e.report.load;
        Self {
            model: if keys.len > 0 {
                keys.first[0]
            } else {
                ModelKey::default()
            },
            model_is_adapter: keys.adapters & 1 != 0,
            more_models: keys.len > 1,
            ready: e.report.engine.ready,
            arrived_ns: duration_ns(e.arrived_at),
            waiting: load.requests_waiting.unwrap_or(0),
            running: load.requests_running.unwrap_or(0),
            gpu_failed: e.gpu_failure.is_some(),
            kv: load.kv_cache_utilization.unwrap_or(f64::NAN) as f32,
            decode_scale: e.capacity.decode_scale as f32,
            kv_capacity_tokens: load.kv_cache_capacity_tokens.unwrap_or(0),
            prefill_tokens_per_second: e.capacity.prefill_tokens_per_second.unwrap_or(0.0) as f32,
            prior_scale: e.capacity.prior_scale as f32,
            id: e.counters.id,
        }
    }

    /// Whether the endpoint serves the model with key `key` (and if so whether as an adapter);
    /// `entry` is the endpoint itself, read only when it lists several models.
    #[inline]
    pub(crate) fn serves(&self, key: ModelKey, entry: &Endpoint) -> Option<bool> {
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
        EndpointState::of(
            now_ns.saturating_sub(self.arrived_ns),
            max_report_age_ns,
            self.ready,
            self.gpu_failed,
        )
    }

    /// KV utilization as reported, if it was.
    #[inline]
    pub(crate) fn kv(&self) -> Option<f64> {
        (!self.kv.is_nan()).then_some(f64::from(self.kv))
    }
}

/// A duration in whole nanoseconds, saturating (u64 nanoseconds span 584 years).
pub(crate) fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
