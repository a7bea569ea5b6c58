//! TensorRT-LLM's own OpenAI server (`trtllm-serve`), `trtllm_` names. Some deployments re-export
//! them as `trtllm:` or `tensorrt_llm:`; those prefixes are read too.

use inferpick_schema::EngineKind;

use super::{Agg, Counters, Dialect, Reading, agg, models_from_label};
use crate::expo::Exposition;

pub(crate) struct TrtllmServe;

const PREFIXES: [&str; 3] = ["trtllm_", "trtllm:", "tensorrt_llm:"];

impl Dialect for TrtllmServe {
    fn kind(&self) -> EngineKind {
        EngineKind::TrtllmServe
    }

    fn recognizes(&self, expo: &Exposition<'_>) -> bool {
        PREFIXES.iter().any(|p| expo.has_prefix(p))
    }

    fn read(&self, expo: &Exposition<'_>) -> Reading {
        let prefix = PREFIXES
            .into_iter()
            .find(|p| expo.has_prefix(p))
            .unwrap_or(PREFIXES[0]);
        let name = |suffix: &str| format!("{prefix}{suffix}");
        let one = |suffix: &str, how: Agg| agg(expo, &[&name(suffix)], how);
        let max_blocks = one("kv_cache_max_blocks", Agg::Sum);
        let tokens_per = one("kv_cache_tokens_per_block", Agg::Max);
        Reading {
            requests_waiting: one("num_requests_waiting", Agg::Sum),
            requests_running: one("num_requests_running", Agg::Sum),
            kv_cache_utilization: one("kv_cache_utilization", Agg::Max),
            kv_cache_capacity_tokens: max_blocks.zip(tokens_per).map(|(b, t)| b * t),
            kv_block_size_tokens: tokens_per,
            prefix_cache_hit_ratio: one("kv_cache_hit_rate", Agg::Mean),
            counters: Counters {
                prompt_tokens: one("prompt_tokens_total", Agg::Sum),
                generation_tokens: one("generation_tokens_total", Agg::Sum),
                ..Counters::default()
            },
            adapters: None,
            models: models_from_label(
                expo,
                &[&name("num_requests_running"), &name("num_requests_waiting")],
                "model_name",
            ),
        }
    }
}
