//! llama.cpp's `llama-server` (started with `--metrics`). Its `*_seconds` gauges cover only the
//! time since the previous scrape, so rates come from the `_total` counters instead. Current
//! servers no longer expose KV usage; older ones had `kv_cache_usage_ratio`, read when present.

use inferpick_schema::EngineKind;

use super::{Agg, Counters, Dialect, Reading, agg};
use crate::expo::Exposition;

pub(crate) struct Llamacpp;

impl Dialect for Llamacpp {
    fn kind(&self) -> EngineKind {
        EngineKind::Llamacpp
    }

    fn recognizes(&self, expo: &Exposition<'_>) -> bool {
        expo.has_prefix("llamacpp:")
    }

    fn read(&self, expo: &Exposition<'_>) -> Reading {
        Reading {
            requests_waiting: agg(expo, &["llamacpp:requests_deferred"], Agg::Sum),
            requests_running: agg(expo, &["llamacpp:requests_processing"], Agg::Sum),
            kv_cache_utilization: agg(expo, &["llamacpp:kv_cache_usage_ratio"], Agg::Max),
            counters: Counters {
                prompt_tokens: agg(expo, &["llamacpp:prompt_tokens_total"], Agg::Sum),
                generation_tokens: agg(expo, &["llamacpp:tokens_predicted_total"], Agg::Sum),
                cached_prompt_tokens: agg(expo, &["llamacpp:prompt_tokens_cached_total"], Agg::Sum),
                ..Counters::default()
            },
            ..Reading::default()
        }
    }
}
