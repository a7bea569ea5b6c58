//! The scheduler: filters the table to the endpoints that may serve a request, scores them with the
//! chosen profile, and records the decision into the in-flight estimate.
//!
//! `pick` is synchronous, reads no clock (`now` is an argument) and draws randomness from a seeded
//! generator, so the simulator replays the production code deterministically.

mod cost;
mod gie;

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use inferpick_schema::{Decision, PickRequest};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::prefix::{block_hashes, session_hash};
use crate::table::{
    Endpoint, EndpointState, Hot, Inflight, ShardView, Snapshot, Table, duration_ns, model_key,
};

pub use cost::CostModel;

/// A scheduling profile, named as in `--policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    /// Predicted time to first token with in-flight estimate, prefix credit and power-of-k.
    Inferpick,
    /// The Gateway API Inference Extension's weighted scorers (queue 2, KV 2, prefix 3, LoRA 1).
    Gie,
    /// Fewest requests (waiting + running + routed since the last report).
    LeastRequest,
    /// Each ready endpoint in turn.
    RoundRobin,
    /// Uniformly at random.
    Random,
}

impl Policy {
    /// Every profile.
    pub const ALL: [Policy; 5] = [
        Policy::Inferpick,
        Policy::Gie,
        Policy::LeastRequest,
        Policy::RoundRobin,
        Policy::Random,
    ];

    /// The CLI and config name.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Inferpick => "inferpick",
            Policy::Gie => "gie",
            Policy::LeastRequest => "least-request",
            Policy::RoundRobin => "round-robin",
            Policy::Random => "random",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A policy name that is not one of [`Policy::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown policy {0:?}: expected one of inferpick, gie, least-request, round-robin, random")]
pub struct UnknownPolicy(pub String);

impl FromStr for Policy {
    type Err = UnknownPolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Policy::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownPolicy(s.to_string()))
    }
}

/// When an endpoint counts as saturated (GIE's saturation detector; thresholds from the config).
#[derive(Debug, Clone, PartialEq)]
pub struct Saturation {
    /// Waiting requests (plus routed in flight, for `inferpick`) at or above this saturate an endpoint.
    pub queue_depth_threshold: u32,
    /// KV cache utilization at or above this saturates an endpoint.
    pub kv_cache_threshold: f64,
}

impl Default for Saturation {
    fn default() -> Self {
        Self {
            queue_depth_threshold: 5,
            kv_cache_threshold: 0.8,
        }
    }
}

/// One target of a model rewrite, chosen with probability proportional to `weight`.
#[derive(Debug, Clone, PartialEq)]
pub struct RewriteTarget {
    /// The model name endpoints serve.
    pub model: String,
    /// Relative weight (> 0).
    pub weight: u32,
}

/// Everything a [`Scheduler`] needs besides the table.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    /// Seed of every random choice (ties, power-of-k samples, rewrites, decision ids).
    pub seed: u64,
    /// Named objectives: name → priority.
    pub objectives: HashMap<String, i32>,
    /// Model rewrites: requested name → weighted targets.
    pub rewrites: HashMap<String, Vec<RewriteTarget>>,
    /// Saturation thresholds (shedding of negative priority).
    pub saturation: Saturation,
    /// The `inferpick` profile's cost model.
    pub cost: CostModel,
    /// Most leading prompt blocks hashed for prefix affinity.
    pub prefix_max_blocks: usize,
    /// `gie`: an endpoint whose report is older than this counts as saturated (GIE uses 200 ms).
    pub gie_stale_after: Duration,
    /// Most fallbacks a request may ask for.
    pub max_fallbacks: u32,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            seed: 0x1f_e2_d3_c4,
            objectives: HashMap::new(),
            rewrites: HashMap::new(),
            saturation: Saturation::default(),
            cost: CostModel::default(),
            prefix_max_blocks: 256,
            gie_stale_after: Duration::from_millis(200),
            max_fallbacks: 16,
        }
    }
}

/// A decision: where to send the request, and what to try next.
#[derive(Debug, Clone)]
pub struct Pick {
    /// The chosen endpoint.
    pub endpoint: Arc<str>,
    /// Next-best endpoints, best first.
    pub fallbacks: Vec<Arc<str>>,
    /// Identifies the decision in `done` feedback.
    pub decision_id: uuid::Uuid,
    /// The model after rewrites.
    pub model: String,
    /// The chosen endpoint's pod, when its agent said.
    pub pod: Option<String>,
    /// The profile that decided.
    pub policy: Policy,
    /// The request's effective priority.
    pub priority: i32,
    /// Every candidate with its signals and score, when asked for.
    pub explain: Option<Value>,
}

impl Pick {
    /// The wire form.
    pub fn into_decision(self) -> Decision {
        Decision {
            endpoint: self.endpoint.to_string(),
            fallbacks: self.fallbacks.iter().map(|f| f.to_string()).collect(),
            decision_id: self.decision_id.to_string(),
            model: self.model,
            pod: self.pod,
            policy: self.policy.as_str().to_string(),
            explain: self.explain,
        }
    }
}

/// Why no endpoint was chosen; each maps to one error code of the contract.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PickError {
    /// `unknown_model` (404): no endpoint in the table lists the model.
    #[error("model {model:?} is not served by any endpoint in the table")]
    UnknownModel {
        /// The requested (rewritten) model.
        model: String,
    },
    /// `shed` (429): the pool is saturated and the request is sheddable.
    #[error(
        "every endpoint serving {model:?} is saturated and priority {priority} is sheddable; retry after {}s",
        retry_after.as_secs()
    )]
    Shed {
        /// The model.
        model: String,
        /// The request's priority (negative).
        priority: i32,
        /// When to retry.
        retry_after: Duration,
    },
    /// `no_ready_endpoint` (503): endpoints serve the model, but none may be picked now.
    #[error("no ready endpoint serves {model:?}: {reason}")]
    NoReadyEndpoint {
        /// The model.
        model: String,
        /// Why each endpoint was left out.
        reason: String,
    },
    /// `invalid_request` (400).
    #[error("{field}: {message}")]
    InvalidRequest {
        /// The request field at fault.
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

impl PickError {
    /// The contract's error code.
    pub fn code(&self) -> &'static str {
        match self {
            PickError::UnknownModel { .. } => "unknown_model",
            PickError::Shed { .. } => "shed",
            PickError::NoReadyEndpoint { .. } => "no_ready_endpoint",
            PickError::InvalidRequest { .. } => "invalid_request",
        }
    }

    /// The HTTP status of [`code`](Self::code).
    pub fn http_status(&self) -> u16 {
        match self {
            PickError::UnknownModel { .. } => 404,
            PickError::Shed { .. } => 429,
            PickError::NoReadyEndpoint { .. } => 503,
            PickError::InvalidRequest { .. } => 400,
        }
    }

    /// The `outcome` label of `inferpick_picker_decisions_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            PickError::UnknownModel { .. } => "unknown_model",
            PickError::Shed { .. } => "shed",
            PickError::NoReadyEndpoint { .. } => "no_endpoint",
            PickError::InvalidRequest { .. } => "invalid",
        }
    }

    fn invalid(field: &str, message: impl Into<String>) -> Self {
        PickError::InvalidRequest {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// Most entries in `candidates` or `exclude`.
const MAX_ADDRESS_LIST: usize = 4096;

/// How the requested model relates to an endpoint's adapters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AdapterState {
    /// The request is for a base model.
    NotAdapter,
    /// The engine does not report adapter state.
    Unknown,
    /// The adapter is loaded (has running requests).
    Loaded,
    /// Requests already wait for it.
    Waiting,
    /// Not loaded, and a slot is free.
    FreeSlot,
    /// Not loaded, and every slot is busy.
    SlotsFull,
}

impl AdapterState {
    fn of(endpoint: &Endpoint, model: &str, is_adapter: bool) -> Self {
        if !is_adapter {
            return AdapterState::NotAdapter;
        }
        let Some(a) = &endpoint.report.load.adapters else {
            return AdapterState::Unknown;
        };
        if a.running.iter().any(|n| n == model) {
            AdapterState::Loaded
        } else if a.waiting.iter().any(|n| n == model) {
            AdapterState::Waiting
        } else if a.max_loaded.is_none_or(|m| (a.running.len() as u32) < m) {
            AdapterState::FreeSlot
        } else {
            AdapterState::SlotsFull
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            AdapterState::NotAdapter => "not_adapter",
            AdapterState::Unknown => "unknown",
            AdapterState::Loaded => "loaded",
            AdapterState::Waiting => "waiting",
            AdapterState::FreeSlot => "free_slot",
            AdapterState::SlotsFull => "slots_full",
        }
    }
}

/// An endpoint that passed the filters, with the signals every profile reads.
#[derive(Debug)]
pub(crate) struct Candidate {
    /// Where the endpoint is in the snapshot ([`Snapshot::entry`]).
    pub(crate) shard: u32,
    pub(crate) index: u32,
    /// When its report arrived (nanoseconds on the picker's clock).
    pub(crate) arrived_ns: u64,
    /// Prefill capacity estimate (tokens/s), 0 when unknown.
    pub(crate) peak_prompt_tokens_per_second: f64,
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
    /// Routed here since the last report.
    pub(crate) inflight_requests: u64,
    pub(crate) inflight_tokens: u64,
    pub(crate) kv: Option<f64>,
    /// Leading prompt blocks the prefix index says it holds.
    pub(crate) cached_blocks: u32,
    /// It served this session before.
    pub(crate) session_hit: bool,
    pub(crate) adapter: AdapterState,
    /// Lower is better (profiles that maximize a score store its negation).
    pub(crate) cost: f64,
}

impl Candidate {
    /// The endpoint itself.
    pub(crate) fn endpoint<'s>(&self, snapshot: &'s Snapshot) -> &'s Arc<Endpoint> {
        snapshot.entry(self.shard, self.index)
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
struct CandidateBuffer(Vec<Candidate>);

fn take_buffer() -> CandidateBuffer {
    CandidateBuffer(CANDIDATE_BUFFER.try_with(Cell::take).unwrap_or_default())
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

/// What one request asks, resolved.
#[derive(Debug)]
pub(crate) struct Ask {
    pub(crate) model: String,
    pub(crate) priority: i32,
    pub(crate) prompt_tokens: u64,
    pub(crate) blocks: Vec<u64>,
    pub(crate) session: Option<u64>,
}

/// Decides, per request, which endpoint serves it. Cheap to share (`&self` everywhere).
#[derive(Debug)]
pub struct Scheduler {
    policy: Policy,
    config: SchedulerConfig,
    /// Counts picks: the round-robin position, and the stream index of each pick's random generator.
    counter: AtomicU64,
}

impl Scheduler {
    /// A scheduler running `policy`.
    pub fn new(policy: Policy, config: SchedulerConfig) -> Self {
        Self {
            policy,
            config,
            counter: AtomicU64::new(0),
        }
    }

    /// The profile.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// The configuration.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Chooses an endpoint for `request` and records the choice into the in-flight estimate and
    /// the prefix index of `table`.
    pub fn pick(
        &self,
        table: &Table,
        request: &PickRequest,
        now: Duration,
    ) -> Result<Pick, PickError> {
        self.decide(table, request, now, false, false)
    }

    /// Like [`pick`](Self::pick), and fills [`Pick::explain`] with every endpoint's signals and score.
    pub fn pick_explained(
        &self,
        table: &Table,
        request: &PickRequest,
        now: Duration,
    ) -> Result<Pick, PickError> {
        self.decide(table, request, now, true, false)
    }

    fn rng(&self) -> SmallRng {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        SmallRng::seed_from_u64(self.config.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    fn decide(
        &self,
        table: &Table,
        request: &PickRequest,
        now: Duration,
        explain: bool,
        full: bool,
    ) -> Result<Pick, PickError> {
        let mut rng = self.rng();
        let snapshot = table.snapshot();
        let ask = self.resolve(&snapshot, request, &mut rng)?;
        let fallbacks = request
            .fallbacks
            .unwrap_or(inferpick_schema::pick::DEFAULT_FALLBACKS);
        let candidates_filter = request.candidates.as_deref();
        let exclude = request.exclude.as_deref().unwrap_or(&[]);

        let mut cands = take_buffer();
        let matches = if matches!(self.policy, Policy::Inferpick | Policy::Gie) {
            let m = table.prefix_matches(&ask.blocks);
            let s = ask
                .session
                .map(|k| table.prefix_matches(&[k]))
                .unwrap_or_default();
            (m, s)
        } else {
            (Vec::new(), Vec::new())
        };
        let mut scan = Scan {
            snapshot: &snapshot,
            model: model_key(&ask.model),
            ask_model: &ask.model,
            candidates_filter,
            exclude,
            filters: candidates_filter.is_some() || !exclude.is_empty(),
            read_inflight: explain
                || matches!(self.policy, Policy::Inferpick | Policy::LeastRequest),
            now_ns: duration_ns(now),
            max_age_ns: duration_ns(snapshot.max_report_age),
            explain,
            prefix_holders: &matches.0,
            session_holders: &matches.1,
            serving: 0,
            stale: 0,
            not_ready: 0,
            filtered: 0,
            excluded: Vec::new(),
        };
        let limit = self.config.cost.scan_limit;
        let total = snapshot.len();
        let sampled = if !full
            && !explain
            && self.policy == Policy::Inferpick
            && limit > 0
            && total > limit
        {
            scan.window(table, &mut cands, limit, rng.random_range(0..total))
        } else {
            for (s, shard) in snapshot.shards.iter().enumerate() {
                for (i, (hot, endpoint)) in shard.hot.iter().zip(&shard.entries).enumerate() {
                    scan.consider((s, i), hot, endpoint, &mut cands);
                }
            }
            false
        };
        let Scan {
            serving,
            stale,
            not_ready,
            filtered,
            excluded,
            ..
        } = scan;
        if serving == 0 {
            return Err(if snapshot.is_empty() {
                PickError::NoReadyEndpoint {
                    model: ask.model,
                    reason: "the table is empty (no agent has reported yet)".into(),
                }
            } else {
                PickError::UnknownModel { model: ask.model }
            });
        }
        if cands.is_empty() {
            return Err(PickError::NoReadyEndpoint {
                model: ask.model,
                reason: format!(
                    "{serving} endpoint(s) serve it: {stale} stale (no report within {:?}), {not_ready} not ready, {filtered} left out by candidates/exclude",
                    snapshot.max_report_age
                ),
            });
        }

        // Per-candidate cost parts are kept only when they will be shown.
        let mut parts = Vec::new();
        let parts_out = explain.then_some(&mut parts);
        let saturated = match self.policy {
            Policy::Inferpick => {
                cost::score(&mut cands, &ask, &self.config, parts_out);
                cost::pool_saturated(&cands, &self.config)
            }
            Policy::Gie => {
                gie::score(&mut cands, &ask, parts_out);
                gie::pool_saturated(&cands, &self.config, now)
            }
            Policy::LeastRequest => {
                for c in cands.iter_mut() {
                    c.cost = c.load() as f64;
                }
                false
            }
            Policy::RoundRobin | Policy::Random => false,
        };
        if saturated && ask.priority < 0 && sampled {
            // Only part of the pool was scored: confirm on the whole pool before shedding.
            drop(cands);
            return self.decide(table, request, now, explain, true);
        }
        if saturated && ask.priority < 0 {
            let best = cands.iter().map(|c| c.cost).fold(f64::INFINITY, f64::min);
            let retry_after = match self.policy {
                Policy::Inferpick => Duration::from_secs(best.ceil().clamp(1.0, 30.0) as u64),
                _ => Duration::from_secs(1),
            };
            return Err(PickError::Shed {
                model: ask.model,
                priority: ask.priority,
                retry_after,
            });
        }

        let order = self.choose(&cands, fallbacks as usize + 1, &mut rng);
        let chosen = cands[order[0]].endpoint(&snapshot);
        let decision_id = uuid::Builder::from_random_bytes(rng.random()).into_uuid();
        let mut keys = ask.blocks.clone();
        keys.extend(ask.session);
        let prefill = (self.policy == Policy::Inferpick).then(|| {
            let seconds = cands[order[0]].ask_prefill_seconds;
            (duration_ns(now), (seconds * 1e9) as u64)
        });
        table.record_with_prefill(
            chosen,
            decision_id.as_u128(),
            ask.prompt_tokens,
            &keys,
            prefill,
        );

        let explain = explain.then(|| {
            self.explain(
                &ask, &cands, &parts, &order, &excluded, saturated, now, &snapshot,
            )
        });
        Ok(Pick {
            endpoint: chosen.address.clone(),
            fallbacks: order[1..]
                .iter()
                .map(|&i| cands[i].endpoint(&snapshot).address.clone())
                .collect(),
            decision_id,
            pod: chosen.report.endpoint.pod.clone(),
            model: ask.model,
            policy: self.policy,
            priority: ask.priority,
            explain,
        })
    }

    /// Validates the request and resolves its model, priority, token estimate and prefix keys.
    fn resolve(
        &self,
        snapshot: &Snapshot,
        r: &PickRequest,
        rng: &mut SmallRng,
    ) -> Result<Ask, PickError> {
        if let Some(n) = r.fallbacks
            && n > self.config.max_fallbacks
        {
            return Err(PickError::invalid(
                "fallbacks",
                format!("{n}: at most {} allowed", self.config.max_fallbacks),
            ));
        }
        for (field, list) in [("candidates", &r.candidates), ("exclude", &r.exclude)] {
            if let Some(l) = list
                && l.len() > MAX_ADDRESS_LIST
            {
                return Err(PickError::invalid(
                    field,
                    format!("{} entries: at most {MAX_ADDRESS_LIST} allowed", l.len()),
                ));
            }
        }
        let priority = match (&r.objective, r.priority) {
            (_, Some(p)) => p,
            (Some(name), None) => *self.config.objectives.get(name).ok_or_else(|| {
                let mut known: Vec<&str> =
                    self.config.objectives.keys().map(String::as_str).collect();
                known.sort_unstable();
                PickError::invalid(
                    "objective",
                    format!(
                        "{name:?} is not a configured objective (configured: {})",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                )
            })?,
            (None, None) => 0,
        };
        let requested = match &r.model {
            Some(m) if m.is_empty() => {
                return Err(PickError::invalid("model", "empty: name a model"));
            }
            Some(m) => m.clone(),
            None => only_model(snapshot)?,
        };
        let model = match self.config.rewrites.get(&requested) {
            Some(targets) => weighted(targets, rng).unwrap_or(requested),
            None => requested,
        };
        let cost = &self.config.cost;
        let prompt_tokens = r
            .prompt_tokens
            .map(u64::from)
            .or_else(|| {
                r.prompt
                    .as_ref()
                    .map(|p| (p.len() as f64 / cost.chars_per_token).ceil() as u64)
            })
            .unwrap_or(cost.default_prompt_tokens);
        let blocks = match (&r.prompt, self.policy) {
            (Some(p), Policy::Inferpick | Policy::Gie) => {
                block_hashes(p, self.config.prefix_max_blocks)
            }
            _ => Vec::new(),
        };
        let session = match self.policy {
            Policy::Inferpick => r.session.as_deref().map(session_hash),
            _ => None,
        };
        Ok(Ask {
            model,
            priority,
            prompt_tokens,
            blocks,
            session,
        })
    }

    /// Indices into `cands`: the chosen one first, then up to `n - 1` fallbacks.
    fn choose(&self, cands: &[Candidate], n: usize, rng: &mut SmallRng) -> Vec<usize> {
        let len = cands.len();
        let n = n.min(len);
        match self.policy {
            Policy::RoundRobin => {
                let start = self.counter.load(Ordering::Relaxed) as usize;
                (0..n).map(|i| (start + i) % len).collect()
            }
            Policy::Random => {
                let mut idx: Vec<usize> = (0..len).collect();
                for i in 0..n {
                    let j = rng.random_range(i..len);
                    idx.swap(i, j);
                }
                idx.truncate(n);
                idx
            }
            Policy::Inferpick => {
                let first = cost::power_of_k(cands, &self.config.cost, rng);
                best_rest(cands, first, n)
            }
            Policy::Gie | Policy::LeastRequest => {
                let best = cands.iter().map(|c| c.cost).fold(f64::INFINITY, f64::min);
                let ties: Vec<usize> = (0..len).filter(|&i| cands[i].cost <= best + 1e-9).collect();
                let first = ties[rng.random_range(0..ties.len())];
                best_rest(cands, first, n)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn explain(
        &self,
        ask: &Ask,
        cands: &[Candidate],
        parts: &[[f64; 5]],
        order: &[usize],
        excluded: &[(&Arc<Endpoint>, &'static str)],
        saturated: bool,
        now: Duration,
        snapshot: &Snapshot,
    ) -> Value {
        let part_names: &[&str] = match self.policy {
            Policy::Inferpick => &[
                "prefill_s",
                "batch_s",
                "kv_pressure_s",
                "adapter_s",
                "session_credit_s",
            ],
            Policy::Gie => &["queue", "kv_cache", "prefix", "lora", "total"],
            _ => &[],
        };
        let candidates: Vec<Value> = cands
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let endpoint = c.endpoint(snapshot);
                let parts: serde_json::Map<String, Value> = part_names
                    .iter()
                    .zip(parts.get(i).copied().unwrap_or_default())
                    .map(|(k, v)| (k.to_string(), json!(v)))
                    .collect();
                json!({
                    "endpoint": &*endpoint.address,
                    "pod": endpoint.report.endpoint.pod,
                    "age_ms": endpoint.age(now).as_secs_f64() * 1e3,
                    "requests_waiting": c.waiting,
                    "requests_running": c.running,
                    "inflight_requests": c.inflight_requests,
                    "inflight_prompt_tokens": c.inflight_tokens,
                    "kv_cache_utilization": c.kv,
                    "cached_blocks": c.cached_blocks,
                    "session_hit": c.session_hit,
                    "adapter": c.adapter.as_str(),
                    "score": c.cost,
                    "parts": parts,
                    "rank": order.iter().position(|&o| o == i),
                })
            })
            .collect();
        let excluded: Vec<Value> = excluded
            .iter()
            .map(|(e, why)| json!({"endpoint": &*e.address, "reason": why, "age_ms": e.age(now).as_secs_f64() * 1e3}))
            .collect();
        json!({
            "policy": self.policy.as_str(),
            "model": ask.model,
            "priority": ask.priority,
            "prompt_tokens": ask.prompt_tokens,
            "prompt_blocks": ask.blocks.len(),
            "score_is": if self.policy == Policy::Gie { "negated weighted score (lower is better)" } else { "cost (lower is better)" },
            "pool_saturated": saturated,
            "max_report_age_ms": snapshot.max_report_age.as_secs_f64() * 1e3,
            "candidates": candidates,
            "excluded": excluded,
        })
    }
}

/// One pick's pass over the snapshot: filters endpoints into candidates and counts why others
/// were left out.
struct Scan<'s, 'a> {
    snapshot: &'s Snapshot,
    model: u128,
    ask_model: &'a str,
    candidates_filter: Option<&'s [String]>,
    exclude: &'s [String],
    filters: bool,
    /// The profile (or explain) reads the in-flight estimate; the others skip the counters.
    read_inflight: bool,
    now_ns: u64,
    max_age_ns: u64,
    explain: bool,
    /// Endpoint id → leading prompt blocks it holds, sorted by id.
    prefix_holders: &'s [(u32, u32)],
    /// Endpoints that served this session, sorted by id.
    session_holders: &'s [(u32, u32)],
    serving: usize,
    stale: usize,
    not_ready: usize,
    filtered: usize,
    excluded: Vec<(&'s Arc<Endpoint>, &'static str)>,
}

impl<'s> Scan<'s, '_> {
    /// Looks at endpoint `i` of shard `s` and adds it to `cands` if it may serve the request.
    #[inline]
    fn consider(
        &mut self,
        (s, i): (usize, usize),
        hot: &Hot,
        endpoint: &'s Arc<Endpoint>,
        cands: &mut Vec<Candidate>,
    ) {
        let Some(is_adapter) = hot.serves(self.model, endpoint) else {
            return;
        };
        self.serving += 1;
        let mut reason = None;
        if self.filters {
            let address: &str = &endpoint.address;
            if self
                .candidates_filter
                .is_some_and(|c| !c.iter().any(|a| a == address))
            {
                self.filtered += 1;
                reason = Some("not in candidates");
            } else if self.exclude.iter().any(|a| a == address) {
                self.filtered += 1;
                reason = Some("excluded");
            }
        }
        let reason = reason.or_else(|| match hot.state(self.now_ns, self.max_age_ns) {
            EndpointState::Ready => None,
            EndpointState::Stale => {
                self.stale += 1;
                Some("stale")
            }
            EndpointState::NotReady => {
                self.not_ready += 1;
                Some("not_ready")
            }
        });
        if let Some(reason) = reason {
            if self.explain {
                self.excluded.push((endpoint, reason));
            }
            return;
        }
        let id = hot.id;
        let (inflight, prefill_backlog_seconds) = if self.read_inflight {
            let busy_until = self.snapshot.prefill_busy_until_ns(id);
            (
                self.snapshot.inflight(id),
                busy_until.saturating_sub(self.now_ns) as f64 / 1e9,
            )
        } else {
            (Inflight::default(), 0.0)
        };
        let lookup = |m: &[(u32, u32)]| {
            if m.is_empty() {
                return 0;
            }
            m.binary_search_by_key(&id, |&(e, _)| e)
                .map(|i| m[i].1)
                .unwrap_or(0)
        };
        cands.push(Candidate {
            shard: s as u32,
            index: i as u32,
            arrived_ns: hot.arrived_ns,
            peak_prompt_tokens_per_second: hot.peak_prompt_tokens_per_second,
            prefill_backlog_seconds,
            ask_prefill_seconds: 0.0,
            kv_capacity_tokens: hot.kv_capacity_tokens,
            waiting: hot.waiting.into(),
            running: hot.running.into(),
            inflight_requests: inflight.requests,
            inflight_tokens: inflight.prompt_tokens,
            kv: hot.kv(),
            cached_blocks: lookup(self.prefix_holders),
            session_hit: lookup(self.session_holders) > 0,
            adapter: if is_adapter {
                AdapterState::of(endpoint, self.ask_model, is_adapter)
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
    fn window(
        &mut self,
        table: &Table,
        cands: &mut Vec<Candidate>,
        limit: usize,
        start: usize,
    ) -> bool {
        let snapshot: &'s Snapshot = self.snapshot;
        let shards = &snapshot.shards;
        let total = snapshot.len();
        let (mut s, mut i) = (0, start);
        while i >= shards[s].hot.len() {
            i -= shards[s].hot.len();
            s += 1;
        }
        let mut seen = 0;
        while seen < total && cands.len() < limit {
            let shard: &'s ShardView = &shards[s];
            let (hot, entries) = (&shard.hot[..], &shard.entries[..]);
            while i < hot.len() && seen < total && cands.len() < limit {
                self.consider((s, i), &hot[i], &entries[i], cands);
                i += 1;
                seen += 1;
            }
            if i >= hot.len() {
                (s, i) = ((s + 1) % shards.len(), 0);
            }
        }
        if seen == total {
            return false;
        }
        let mut ids: Vec<u32> = self
            .prefix_holders
            .iter()
            .chain(self.session_holders)
            .map(|&(id, _)| id)
            .collect();
        if ids.is_empty() {
            return true;
        }
        ids.sort_unstable();
        ids.dedup();
        let mut offsets = Vec::with_capacity(shards.len());
        let mut sum = 0;
        for shard in shards {
            offsets.push(sum);
            sum += shard.hot.len();
        }
        for (hs, hi) in table.locate(self.snapshot, ids.into_iter()) {
            let rank = offsets[hs as usize] + hi as usize;
            if (rank + total - start) % total >= seen {
                let (hs, hi) = (hs as usize, hi as usize);
                let shard: &'s ShardView = &shards[hs];
                self.consider((hs, hi), &shard.hot[hi], &shard.entries[hi], cands);
            }
        }
        true
    }
}

/// `first`, then the `n - 1` lowest-cost others, best first. One pass keeping a short sorted list:
/// `n` is small (fallbacks + 1), the pool may be large.
fn best_rest(cands: &[Candidate], first: usize, n: usize) -> Vec<usize> {
    let k = n.saturating_sub(1);
    let mut rest: Vec<(f64, usize)> = Vec::with_capacity(k + 1);
    if k > 0 {
        for (i, c) in cands.iter().enumerate() {
            if i == first || (rest.len() == k && c.cost >= rest[k - 1].0) {
                continue;
            }
            let at = rest.partition_point(|&(cost, _)| cost <= c.cost);
            rest.insert(at, (c.cost, i));
            rest.truncate(k);
        }
    }
    std::iter::once(first)
        .chain(rest.into_iter().map(|(_, i)| i))
        .collect()
}

/// The one base model of the table, when the request names none.
fn only_model(snapshot: &Snapshot) -> Result<String, PickError> {
    let mut found: Option<&str> = None;
    let mut others: Vec<&str> = Vec::new();
    for e in snapshot.iter() {
        for m in e.report.models.iter().filter(|m| m.adapter_of.is_none()) {
            match found {
                None => found = Some(&m.name),
                Some(f) if f == m.name => {}
                Some(_) => {
                    if others.len() < 4 && !others.contains(&m.name.as_str()) {
                        others.push(&m.name);
                    }
                }
            }
        }
    }
    match (found, others.is_empty()) {
        (Some(m), true) => Ok(m.to_string()),
        (Some(m), false) => Err(PickError::invalid(
            "model",
            format!(
                "required: the table holds several models ({m}, {}…)",
                others.join(", ")
            ),
        )),
        (None, _) => Err(PickError::NoReadyEndpoint {
            model: String::new(),
            reason: "the table holds no model yet (no agent has reported one)".into(),
        }),
    }
}

fn weighted(targets: &[RewriteTarget], rng: &mut SmallRng) -> Option<String> {
    let total: u64 = targets.iter().map(|t| u64::from(t.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut x = rng.random_range(0..total);
    for t in targets {
        if x < u64::from(t.weight) {
            return Some(t.model.clone());
        }
        x -= u64::from(t.weight);
    }
    None
}

#[cfg(test)]
mod tests;
