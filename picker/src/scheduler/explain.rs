//! Explain: what each stage of one pick saw and decided, returned with `?explain=true`.

use std::collections::BTreeMap;

use serde::Serialize;

use super::candidates::Tally;

/// One pick, stage by stage.
#[derive(Debug, Clone, Serialize)]
pub struct Explain {
    /// The profile that decided.
    pub policy: &'static str,
    /// Resolve: the model after rewrites.
    pub model: String,
    /// Resolve: the effective priority.
    pub priority: i32,
    /// Resolve: the prompt's tokens, as sent or estimated.
    pub prompt_tokens: u64,
    /// Resolve: leading prompt blocks hashed for prefix affinity.
    pub prompt_blocks: usize,
    /// Resolve: leading prompt tokens looked up in the token-exact index (sent as ids, or from the
    /// model's tokenizer; 0 without either).
    pub prefix_tokens: usize,
    /// Candidates: why the endpoints serving the model that were left out were.
    pub tally: Tally,
    /// Score: what a candidate's `score` means.
    pub score_is: &'static str,
    /// Saturation: whether every candidate was saturated.
    pub pool_saturated: bool,
    /// The staleness bound in force.
    pub max_report_age_ms: f64,
    /// Every candidate with its signals, score and rank.
    pub candidates: Vec<ExplainedCandidate>,
    /// Endpoints serving the model that were left out, with why.
    pub excluded: Vec<Excluded>,
}

/// One candidate as scored.
#[derive(Debug, Clone, Serialize)]
pub struct ExplainedCandidate {
    /// Its address.
    pub endpoint: String,
    /// Its pod, when the agent said.
    pub pod: Option<String>,
    /// Age of its report.
    pub age_ms: f64,
    /// Waiting requests as reported.
    pub requests_waiting: u64,
    /// Running requests as reported.
    pub requests_running: u64,
    /// Routed here since the report and not seen done.
    pub inflight_requests: u64,
    /// Their prompt tokens.
    pub inflight_prompt_tokens: u64,
    /// KV cache utilization as reported.
    pub kv_cache_utilization: Option<f64>,
    /// Its prefill rate as costed (tokens/s, throttling included); `null` until learned, when the
    /// cost assumes the floor scaled by its GPUs' relative speed.
    pub prefill_tokens_per_second: Option<f64>,
    /// Where that rate comes from: `pinned`, `own`, `class`, `fleet` or `prior`.
    pub capacity_source: crate::table::CapacitySource,
    /// Its slowest GPU's clock as a fraction of the maximum while throttled, else 1.
    pub gpu_speed: f64,
    /// Its decode step time per running sequence relative to an H100's.
    pub decode_scale: f64,
    /// `cached_tokens` in the approximate index's blocks (about 16 tokens each).
    pub cached_blocks: u32,
    /// Leading prompt tokens it holds.
    pub cached_tokens: u32,
    /// `cached_tokens` is exact: from its engine's KV events (its stream is live); otherwise the
    /// approximate index's guess from past decisions.
    pub cached_exact: bool,
    /// It served this session before.
    pub session_hit: bool,
    /// How the requested model relates to its adapters.
    pub adapter: &'static str,
    /// Whether it counts as saturated.
    pub saturated: bool,
    /// The profile's score (see `score_is`).
    pub score: f64,
    /// The score's parts, by name.
    pub parts: BTreeMap<&'static str, f64>,
    /// 0 for the chosen endpoint, 1… for fallbacks, absent otherwise.
    pub rank: Option<usize>,
}

/// An endpoint left out, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Excluded {
    /// Its address.
    pub endpoint: String,
    /// `stale`, `not_ready`, `gpu_failed`, `excluded` or `not in candidates`.
    pub reason: &'static str,
    /// For `gpu_failed`: which GPU and what (`GPU-…: XID 79 (GPU has fallen off the bus)`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_failure: Option<String>,
    /// Age of its report.
    pub age_ms: f64,
}
