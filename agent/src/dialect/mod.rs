//! Engine dialects: how each model server's metric names map to one [`Reading`].
//!
//! A dialect only reads one exposition; turning counters into rates across scrapes is
//! [`crate::rates`]'s job, so every engine gets the same reset handling.

mod llamacpp;
mod lmdeploy;
mod sglang;
mod tgi;
mod triton;
mod trtllm_serve;
mod vllm;

use inferpick_schema::{Adapters, EngineKind, ModelEntry};

use crate::expo::{Exposition, Sample};

/// What one scrape says, before counters become rates. `None`: the engine does not say.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading {
    /// Queued requests (summed over engines and models).
    pub requests_waiting: Option<f64>,
    /// Running requests (summed).
    pub requests_running: Option<f64>,
    /// KV cache fraction in use (the fullest engine's).
    pub kv_cache_utilization: Option<f64>,
    /// KV capacity in tokens (summed).
    pub kv_cache_capacity_tokens: Option<f64>,
    /// Tokens per KV block.
    pub kv_block_size_tokens: Option<f64>,
    /// A prefix-cache hit ratio the engine computes itself (a gauge).
    pub prefix_cache_hit_ratio: Option<f64>,
    /// Monotonic counters, turned into rates between scrapes.
    pub counters: Counters,
    /// LoRA adapter state.
    pub adapters: Option<Adapters>,
    /// Models named in the metrics' labels.
    pub models: Vec<ModelEntry>,
}

/// Counter totals as read; only their differences mean anything.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counters {
    /// Prompt tokens processed.
    pub prompt_tokens: Option<f64>,
    /// Tokens generated.
    pub generation_tokens: Option<f64>,
    /// Prefix-cache hits (tokens or blocks, same unit as queries).
    pub prefix_hits: Option<f64>,
    /// Prefix-cache queries.
    pub prefix_queries: Option<f64>,
    /// Prompt tokens served from cache, counted apart from `prompt_tokens` (llama.cpp).
    pub cached_prompt_tokens: Option<f64>,
}

/// One engine's metric names and rules.
pub trait Dialect: Send + Sync {
    /// The engine this dialect reads.
    fn kind(&self) -> EngineKind;
    /// Whether these samples look like this engine's (used by `--engine auto`).
    fn recognizes(&self, expo: &Exposition<'_>) -> bool;
    /// Maps one scrape to a reading.
    fn read(&self, expo: &Exposition<'_>) -> Reading;
}

/// The dialect for `kind`; `None` for [`EngineKind::Unknown`].
pub fn for_kind(kind: EngineKind) -> Option<&'static dyn Dialect> {
    Some(match kind {
        EngineKind::Vllm => &vllm::Vllm,
        EngineKind::Sglang => &sglang::Sglang,
        EngineKind::Tgi => &tgi::Tgi,
        EngineKind::TritonTrtllm => &triton::TritonTrtllm,
        EngineKind::TrtllmServe => &trtllm_serve::TrtllmServe,
        EngineKind::Llamacpp => &llamacpp::Llamacpp,
        EngineKind::Lmdeploy => &lmdeploy::Lmdeploy,
        EngineKind::Unknown => return None,
    })
}

/// The first dialect that recognizes `expo`, trying engines in [`EngineKind::ALL`] order.
pub fn detect(expo: &Exposition<'_>) -> Option<&'static dyn Dialect> {
    EngineKind::ALL
        .into_iter()
        .filter_map(for_kind)
        .find(|d| d.recognizes(expo))
}

/// How to combine the series of one name (several engines, ranks or models).
#[derive(Clone, Copy)]
pub(crate) enum Agg {
    /// Counts and capacities add up.
    Sum,
    /// The fullest engine is the one that queues.
    Max,
    /// Ratios average.
    Mean,
}

/// Aggregates the finite values of the first name in `names` that has any sample (so list the
/// current name before older ones), keeping only samples for which `keep` holds.
pub(crate) fn aggregate(
    expo: &Exposition<'_>,
    names: &[&str],
    agg: Agg,
    keep: impl Fn(&Sample<'_>) -> bool,
) -> Option<f64> {
    for name in names {
        let mut n = 0usize;
        let mut acc = match agg {
            Agg::Max => f64::NEG_INFINITY,
            Agg::Sum | Agg::Mean => 0.0,
        };
        for s in expo.named(name).filter(|s| keep(s)) {
            if !s.value.is_finite() {
                continue;
            }
            n += 1;
            acc = match agg {
                Agg::Max => acc.max(s.value),
                Agg::Sum | Agg::Mean => acc + s.value,
            };
        }
        if n > 0 {
            return Some(match agg {
                Agg::Mean => acc / n as f64,
                Agg::Sum | Agg::Max => acc,
            });
        }
    }
    None
}

/// [`aggregate`] over every sample of the names.
pub(crate) fn agg(expo: &Exposition<'_>, names: &[&str], how: Agg) -> Option<f64> {
    aggregate(expo, names, how, |_| true)
}

/// Base models named by `label` on samples of the given names, in order of first appearance.
pub(crate) fn models_from_label(
    expo: &Exposition<'_>,
    names: &[&str],
    label: &str,
) -> Vec<ModelEntry> {
    let mut out: Vec<ModelEntry> = Vec::new();
    for name in names {
        for s in expo.named(name) {
            if let Some(m) = expo.label(s, label)
                && !m.is_empty()
                && !out.iter().any(|e| e.name == m)
            {
                out.push(ModelEntry {
                    name: m.to_string(),
                    adapter_of: None,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
