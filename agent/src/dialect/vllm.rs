//! vLLM (V1 names, and the older `gpu_*` names of 0.8-era servers).
//!
//! Data parallelism labels every series with `engine` (the rank): counts and capacity add up over
//! engines, KV utilization is the fullest engine's. LoRA state is an info gauge whose value is a
//! timestamp; every label combination ever seen stays, so the newest (largest value) is current.

use inferpick_schema::{Adapters, EngineKind};

use super::{Agg, Counters, Dialect, Reading, agg, models_from_label};
use crate::expo::Exposition;

pub(crate) struct Vllm;

impl Dialect for Vllm {
    fn kind(&self) -> EngineKind {
        EngineKind::Vllm
    }

    fn recognizes(&self, expo: &Exposition<'_>) -> bool {
        expo.has_prefix("vllm:")
    }

    fn read(&self, expo: &Exposition<'_>) -> Reading {
        let (capacity, block) = cache_config(expo);
        Reading {
            requests_waiting: agg(expo, &["vllm:num_requests_waiting"], Agg::Sum),
            requests_running: agg(expo, &["vllm:num_requests_running"], Agg::Sum),
            kv_cache_utilization: agg(
                expo,
                &["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"],
                Agg::Max,
            ),
            kv_cache_capacity_tokens: capacity,
            kv_block_size_tokens: block,
            // V0 servers computed the ratio themselves; V1 exposes hit and query counters.
            prefix_cache_hit_ratio: agg(expo, &["vllm:gpu_prefix_cache_hit_rate"], Agg::Mean),
            counters: Counters {
                prompt_tokens: agg(expo, &["vllm:prompt_tokens_total"], Agg::Sum),
                generation_tokens: agg(expo, &["vllm:generation_tokens_total"], Agg::Sum),
                prefix_hits: agg(
                    expo,
                    &[
                        "vllm:prefix_cache_hits_total",
                        "vllm:gpu_prefix_cache_hits_total",
                    ],
                    Agg::Sum,
                ),
                prefix_queries: agg(
                    expo,
                    &[
                        "vllm:prefix_cache_queries_total",
                        "vllm:gpu_prefix_cache_queries_total",
                    ],
                    Agg::Sum,
                ),
                cached_prompt_tokens: None,
            },
            adapters: lora(expo),
            models: models_from_label(
                expo,
                &["vllm:num_requests_running", "vllm:num_requests_waiting"],
                "model_name",
            ),
        }
    }
}

/// KV capacity (Σ `num_gpu_blocks` × `block_size` over engines) and block size, from the
/// `cache_config_info` labels, which are strings and may say `"None"` before profiling ends.
fn cache_config(expo: &Exposition<'_>) -> (Option<f64>, Option<f64>) {
    let mut capacity = 0.0;
    let mut block_size = None;
    let mut complete = false;
    for s in expo.named("vllm:cache_config_info") {
        let num = |l: &str| expo.label(s, l).and_then(|v| v.parse::<f64>().ok());
        let (Some(blocks), Some(size)) = (num("num_gpu_blocks"), num("block_size")) else {
            return (None, block_size.or(num("block_size")));
        };
        capacity += blocks * size;
        block_size = Some(size);
        complete = true;
    }
    (complete.then_some(capacity), block_size)
}

fn lora(expo: &Exposition<'_>) -> Option<Adapters> {
    let newest = expo
        .named("vllm:lora_requests_info")
        .filter(|s| !s.value.is_nan())
        .max_by(|a, b| a.value.total_cmp(&b.value))?;
    let list = |label: &str| -> Vec<String> {
        expo.label(newest, label)
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect()
    };
    Some(Adapters {
        running: list("running_lora_adapters"),
        waiting: list("waiting_lora_adapters"),
        max_loaded: expo
            .label(newest, "max_lora")
            .and_then(|v| v.trim().parse().ok()),
    })
}
