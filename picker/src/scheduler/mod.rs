//! The scheduler: one pipeline of stages around a pluggable `Profile`.
//!
//! 1. **resolve** (`request`): validate the request; the model after rewrites, the priority, the
//!    prompt's size and block hashes, the session key — once per pick.
//! 2. **affinity**: which endpoints hold the prompt's blocks or served the session, from the
//!    table's prefix index for that model.
//! 3. **candidates** (`candidates`): one pass over the snapshot keeps the endpoints that serve
//!    the model, are ready and fresh and pass `candidates`/`exclude` (a random window of a large
//!    pool, for profiles that allow it).
//! 4. **score**: the profile fills each candidate's cost.
//! 5. **saturation** (`saturation`): one rule; a sheddable request is refused when the whole
//!    pool is saturated (a windowed scan is widened to the whole pool first).
//! 6. **choose**: the profile picks the endpoint and its fallbacks.
//! 7. **record**: the decision goes into the table (in-flight estimate, prefix index, open
//!    decisions) in one explicit step.
//!
//! Stages 3–6 are pure over the snapshot and read no clock (`now` is an argument). Randomness
//! comes from a generator seeded from the OS in production (so replicas never make the same
//! draws) and from a fixed seed in the lab and in tests; decision ids are random from the OS,
//! independent of it.

mod candidates;
mod explain;
mod profile;
mod request;
mod saturation;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::tokenize::Tokenizers;
use inferpick_schema::{Decision, PickRequest};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

pub use candidates::Tally;
pub use explain::{Excluded, Explain, ExplainedCandidate};
pub use profile::{CostModel, Policy, UnknownPolicy};
pub use saturation::Saturation;

use crate::table::{Endpoint, Holders, Prediction, Routed, Slot, Snapshot, Table, duration_ns};
use candidates::{Candidate, CandidateBuffer, Scan};
use profile::{Parts, Profile};
use request::ResolvedRequest;
use saturation::LoadSignals;

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
    /// Seed of the scheduling randomness (ties, power-of-k samples, rewrites). `None`, the
    /// default, draws one from the OS, so that replicas differ; the lab and tests set one to
    /// replay a run exactly.
    pub seed: Option<u64>,
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
    /// Most leading prompt tokens looked up in the token-exact index (and tokenized for it).
    pub prefix_max_tokens: usize,
    /// Each model's tokenizer, for the token-exact index.
    pub tokenizers: Tokenizers,
    /// `gie`: an endpoint whose report is older than this counts as saturated (GIE uses 200 ms).
    pub gie_stale_after: Duration,
    /// Most fallbacks a request may ask for.
    pub max_fallbacks: u32,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            seed: None,
            objectives: HashMap::new(),
            rewrites: HashMap::new(),
            saturation: Saturation::default(),
            cost: CostModel::default(),
            prefix_max_blocks: 256,
            prefix_max_tokens: 8192,
            tokenizers: Tokenizers::default(),
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
    /// Every stage's view, when asked for.
    pub explain: Option<Box<Explain>>,
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
            explain: self.explain.and_then(|e| serde_json::to_value(e).ok()),
        }
    }
}

/// Why no endpoint was chosen.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PickError {
    /// No endpoint in the table lists the model.
    #[error("model {model:?} is not served by any endpoint in the table")]
    UnknownModel {
        /// The requested (rewritten) model.
        model: String,
    },
    /// The pool is saturated and the request is sheddable.
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
    /// Endpoints serve the model, but none may be picked now.
    #[error("no ready endpoint serves {model:?}: {reason}")]
    NoReadyEndpoint {
        /// The model.
        model: String,
        /// Why each endpoint was left out.
        reason: String,
    },
    /// The request itself is invalid.
    #[error("{field}: {message}")]
    InvalidRequest {
        /// The request field at fault.
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

impl PickError {
    fn invalid(field: &str, message: impl Into<String>) -> Self {
        PickError::InvalidRequest {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// What stages 3–6 decided, over one snapshot.
struct Choice {
    /// The chosen endpoint, then its fallbacks.
    order: Vec<Slot>,
    /// The prefill the chosen endpoint's backlog grows by (seconds), for profiles that cost it.
    routed_prefill: Option<f64>,
    /// The cached tokens counted on at the chosen endpoint, when the prompt was looked up.
    predicted: Option<Prediction>,
    explain: Option<Box<Explain>>,
}

/// Decides, per request, which endpoint serves it. Cheap to share (`&self` everywhere).
#[derive(Debug)]
pub struct Scheduler {
    profile: Box<dyn Profile>,
    config: SchedulerConfig,
    /// The seed in force: the configured one, or one drawn from the OS.
    seed: u64,
    /// Counts picks: each pick's generator is its own stream of the seed.
    picks: AtomicU64,
}

impl Scheduler {
    /// A scheduler running `policy`.
    pub fn new(policy: Policy, config: SchedulerConfig) -> Self {
        Self {
            profile: policy.profile(&config),
            seed: config.seed.unwrap_or_else(rand::random),
            config,
            picks: AtomicU64::new(0),
        }
    }

    /// The profile.
    pub fn policy(&self) -> Policy {
        self.profile.policy()
    }

    /// The configuration.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Chooses an endpoint for `request` and records the choice into `table`.
    pub fn pick(
        &self,
        table: &Table,
        request: &PickRequest,
        now: Duration,
    ) -> Result<Pick, PickError> {
        self.run(table, request, now, false)
    }

    /// Like [`pick`](Self::pick), and fills [`Pick::explain`] with what every stage saw.
    pub fn pick_explained(
        &self,
        table: &Table,
        request: &PickRequest,
        now: Duration,
    ) -> Result<Pick, PickError> {
        self.run(table, request, now, true)
    }

    /// Per model, the fraction of its ready endpoints that are saturated, by the rule that sheds.
    pub fn saturation_by_model<'s>(
        &self,
        snapshot: &'s Snapshot,
        now: Duration,
    ) -> std::collections::BTreeMap<&'s str, f64> {
        self.config
            .saturation
            .by_model(snapshot, self.profile.reads(), now)
    }

    fn rng(&self) -> SmallRng {
        let n = self.picks.fetch_add(1, Ordering::Relaxed);
        SmallRng::seed_from_u64(self.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    fn run(
        &self,
        table: &Table,
        request: &PickRequest,
        now: Duration,
        explain: bool,
    ) -> Result<Pick, PickError> {
        let mut rng = self.rng();
        let snapshot = table.snapshot();
        let reads = self.profile.reads();
        // 1. resolve
        let model = request::model(&self.config, &snapshot, request, &mut rng)?;
        let resolved = request::resolve(&self.config, reads, request, &model)?;
        // 2. affinity
        let mut holders = table.holders(resolved.model_key, &resolved.blocks, resolved.session);
        if reads.prefix {
            holders.exact = table.exact_matches(resolved.model_key, &resolved.tokens);
        }
        // 3–6. candidates, score, saturation, choose
        let choice = self.choose(&snapshot, &resolved, &holders, now, explain, &mut rng)?;
        // 7. record
        let chosen: &Endpoint = snapshot.entry(choice.order[0]);
        let decision_id = decision_id();
        let routed = Routed {
            prompt_tokens: resolved.prompt_tokens,
            prefill: choice
                .routed_prefill
                .map(|s| (duration_ns(now), (s * 1e9) as u64)),
            predicted: choice.predicted,
        };
        table.record(
            chosen,
            decision_id.as_u128(),
            resolved.model_key,
            routed,
            (&resolved.blocks, resolved.session),
        );
        Ok(Pick {
            endpoint: chosen.address.clone(),
            fallbacks: choice.order[1..]
                .iter()
                .map(|&s| snapshot.entry(s).address.clone())
                .collect(),
            decision_id,
            pod: chosen.report.endpoint.pod.clone(),
            model: resolved.model.to_string(),
            policy: self.policy(),
            priority: resolved.priority,
            explain: choice.explain,
        })
    }

    /// Stages 3–6 over one snapshot.
    fn choose(
        &self,
        snapshot: &Snapshot,
        request: &ResolvedRequest<'_>,
        holders: &Holders,
        now: Duration,
        explain: bool,
        rng: &mut SmallRng,
    ) -> Result<Choice, PickError> {
        let reads = self.profile.reads();
        let now_ns = duration_ns(now);
        let mut cands = CandidateBuffer::take();
        let mut scan = Scan::new(snapshot, request, holders, reads, now_ns, explain);
        let limit = self.config.cost.scan_limit;
        let total = snapshot.len();
        let windowed = reads.window && !explain && limit > 0 && total > limit;
        let sampled = if windowed {
            scan.window(&mut cands, limit, rng.random_range(0..total))
        } else {
            scan.whole(&mut cands);
            false
        };
        self.check_candidates(snapshot, request, &scan, &cands)?;
        let mut parts = Vec::new();
        self.score(&mut cands, request, explain.then_some(&mut parts));
        let mut saturated = self.config.saturation.pool(&cands, reads, now_ns);
        let sheddable = reads.sheds && request.priority < 0;
        if saturated && sheddable && sampled {
            // Only part of the pool was scored: confirm on the whole pool before shedding, with
            // the request as resolved (a rewrite is not drawn again).
            cands.clear();
            scan = Scan::new(snapshot, request, holders, reads, now_ns, explain);
            scan.whole(&mut cands);
            self.score(&mut cands, request, None);
            saturated = self.config.saturation.pool(&cands, reads, now_ns);
        }
        if saturated && sheddable {
            return Err(PickError::Shed {
                model: request.model.to_string(),
                priority: request.priority,
                retry_after: self.profile.retry_after(&cands),
            });
        }
        let order = self.profile.choose(&cands, request.endpoints, request, rng);
        let chosen = &cands[order[0]];
        let explain = explain.then(|| {
            Box::new(self.explain(
                snapshot, request, &scan, &cands, &parts, &order, saturated, now,
            ))
        });
        let looked_up = !request.tokens.is_empty() || !request.blocks.is_empty();
        Ok(Choice {
            routed_prefill: self.profile.routed_prefill(chosen),
            predicted: looked_up.then_some(Prediction {
                cached_tokens: chosen.cached_tokens,
                exact: chosen.cached_exact,
            }),
            order: order.iter().map(|&i| cands[i].slot).collect(),
            explain,
        })
    }

    /// The profile's scores, with a cost that is not a number made the worst there is, so that
    /// no cost model can make a pick fail.
    fn score(
        &self,
        cands: &mut [Candidate],
        request: &ResolvedRequest<'_>,
        parts: Option<&mut Vec<Parts>>,
    ) {
        self.profile.score(cands, request, parts);
        for c in cands.iter_mut().filter(|c| c.cost.is_nan()) {
            c.cost = f64::INFINITY;
        }
    }

    /// Turns an empty candidate list into the error that says why.
    fn check_candidates(
        &self,
        snapshot: &Snapshot,
        request: &ResolvedRequest<'_>,
        scan: &Scan<'_, '_>,
        cands: &[Candidate],
    ) -> Result<(), PickError> {
        let t = scan.tally;
        if t.serving == 0 {
            return Err(if snapshot.is_empty() {
                PickError::NoReadyEndpoint {
                    model: request.model.to_string(),
                    reason: "the table is empty (no agent has reported yet)".into(),
                }
            } else {
                PickError::UnknownModel {
                    model: request.model.to_string(),
                }
            });
        }
        if cands.is_empty() {
            return Err(PickError::NoReadyEndpoint {
                model: request.model.to_string(),
                reason: format!(
                    "{} endpoint(s) serve it: {} stale (no report within {:?}), {} not ready, {} with a failed GPU, {} left out by candidates/exclude",
                    t.serving,
                    t.stale,
                    snapshot.max_report_age,
                    t.not_ready,
                    t.gpu_failed,
                    t.filtered
                ),
            });
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn explain(
        &self,
        snapshot: &Snapshot,
        request: &ResolvedRequest<'_>,
        scan: &Scan<'_, '_>,
        cands: &[Candidate],
        parts: &[Parts],
        order: &[usize],
        saturated: bool,
        now: Duration,
    ) -> Explain {
        let reads = self.profile.reads();
        let now_ns = duration_ns(now);
        let names = self.profile.part_names();
        let age_ms = |e: &Endpoint| e.age(now).as_secs_f64() * 1e3;
        let candidates = cands
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let endpoint = c.endpoint(snapshot);
                ExplainedCandidate {
                    endpoint: endpoint.address.to_string(),
                    pod: endpoint.report.endpoint.pod.clone(),
                    age_ms: age_ms(endpoint),
                    requests_waiting: c.waiting,
                    requests_running: c.running,
                    inflight_requests: c.inflight_requests,
                    inflight_prompt_tokens: c.inflight_tokens,
                    kv_cache_utilization: c.kv,
                    prefill_tokens_per_second: endpoint.capacity.prefill_tokens_per_second,
                    capacity_source: endpoint.capacity.prefill_source,
                    gpu_speed: endpoint.capacity.speed,
                    decode_scale: c.decode_scale,
                    cached_blocks: (f64::from(c.cached_tokens) / request.tokens_per_block) as u32,
                    cached_tokens: c.cached_tokens,
                    cached_exact: c.cached_exact,
                    session_hit: c.session_hit,
                    adapter: c.adapter.as_str(),
                    saturated: self
                        .config
                        .saturation
                        .endpoint(LoadSignals::of(c), reads, now_ns),
                    score: c.cost,
                    parts: names
                        .iter()
                        .copied()
                        .zip(parts.get(i).copied().unwrap_or_default())
                        .collect(),
                    rank: order.iter().position(|&o| o == i),
                }
            })
            .collect();
        let excluded = scan
            .excluded
            .iter()
            .map(|(e, why)| Excluded {
                endpoint: e.address.to_string(),
                reason: why,
                gpu_failure: (*why == "gpu_failed")
                    .then(|| e.gpu_failure.as_deref().map(str::to_string))
                    .flatten(),
                age_ms: age_ms(e),
            })
            .collect();
        Explain {
            policy: self.policy().as_str(),
            model: request.model.to_string(),
            priority: request.priority,
            prompt_tokens: request.prompt_tokens,
            prompt_blocks: request.blocks.len(),
            prefix_tokens: request.tokens.len(),
            tally: scan.tally,
            score_is: self.profile.score_is(),
            pool_saturated: saturated,
            max_report_age_ms: snapshot.max_report_age.as_secs_f64() * 1e3,
            candidates,
            excluded,
        }
    }
}

/// A fresh decision id: random bits from a generator the OS seeds per thread, so ids never repeat
/// across replicas or restarts, whatever the scheduling seed.
fn decision_id() -> uuid::Uuid {
    uuid::Builder::from_random_bytes(rand::rng().random()).into_uuid()
}

#[cfg(test)]
mod tests;
