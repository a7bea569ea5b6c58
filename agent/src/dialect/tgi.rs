//! Hugging Face text-generation-inference. No model label: models come from `/v1/models` or `/info`.

use inferpick_schema::EngineKind;

use super::{Agg, Counters, Dialect, Reading, agg};
use crate::expo::Exposition;

pub(crate) struct Tgi;

impl Dialect for Tgi {
    fn kind(&self) -> EngineKind {
        EngineKind::Tgi
    }

    fn recognizes(&self, expo: &Exposition<'_>) -> bool {
        expo.has_prefix("tgi_")
    }

    fn read(&self, expo: &Exposition<'_>) -> Reading {
        let capacity = agg(expo, &["tgi_batch_max_total_tokens"], Agg::Sum);
        let reserved = agg(expo, &["tgi_batch_current_max_tokens"], Agg::Sum);
        let utilization = match (reserved, capacity) {
            (Some(r), Some(c)) if c > 0.0 => Some(r / c),
            _ => None,
        };
        Reading {
            requests_waiting: agg(expo, &["tgi_queue_size"], Agg::Sum),
            requests_running: agg(expo, &["tgi_batch_current_size"], Agg::Sum),
            kv_cache_utilization: utilization,
            kv_cache_capacity_tokens: capacity,
            counters: Counters {
                prompt_tokens: agg(expo, &["tgi_request_input_length_sum"], Agg::Sum),
                generation_tokens: agg(expo, &["tgi_request_generated_tokens_sum"], Agg::Sum),
                ..Counters::default()
            },
            ..Reading::default()
        }
    }
}
