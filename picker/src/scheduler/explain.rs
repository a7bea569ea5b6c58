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
    /// `stale`, `not_ready`, `excluded` or `not in candidates`.
    pub reason: &'static str,
    /// Age of its report.
    pub age_ms: f64,
}
