//! SGLang, whose names start with `sglang:` before v0.5.4 and `sglang_` since.

use inferpick_schema::EngineKind;

use super::{Agg, Counters, Dialect, Reading, agg, models_from_label};
use crate::expo::Exposition;

pub(crate) struct Sglang;

impl Dialect for Sglang {
    fn kind(&self) -> EngineKind {
        EngineKind::Sglang
    }

    fn recognizes(&self, expo: &Exposition<'_>) -> bool {
        expo.has_prefix("sglang:") || expo.has_prefix("sglang_")
    }

    fn read(&self, expo: &Exposition<'_>) -> Reading {
        let prefix = if expo.has_prefix("sglang:") {
            "sglang:"
        } else {
            "sglang_"
        };
        let name = |suffix: &str| format!("{prefix}{suffix}");
        let one = |suffix: &str, how: Agg| agg(expo, &[&name(suffix)], how);
        Reading {
            requests_waiting: one("num_queue_reqs", Agg::Sum),
            requests_running: one("num_running_reqs", Agg::Sum),
            kv_cache_utilization: one("token_usage", Agg::Max),
            kv_cache_capacity_tokens: one("max_total_num_tokens", Agg::Sum),
            kv_block_size_tokens: None,
            prefix_cache_hit_ratio: one("cache_hit_rate", Agg::Mean),
            counters: Counters {
                prompt_tokens: one("prompt_tokens_total", Agg::Sum),
                generation_tokens: one("generation_tokens_total", Agg::Sum),
                ..Counters::default()
            },
            adapters: None,
            models: models_from_label(
                expo,
                &[&name("num_running_reqs"), &name("num_queue_reqs")],
                "model_name",
            ),
        }
    }
}
