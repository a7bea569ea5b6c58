//! LMDeploy's api_server.

use inferpick_schema::EngineKind;

use super::{Agg, Counters, Dialect, Reading, agg, models_from_label};
use crate::expo::Exposition;

pub(crate) struct Lmdeploy;

impl Dialect for Lmdeploy {
    fn kind(&self) -> EngineKind {
        EngineKind::Lmdeploy
    }

    fn recognizes(&self, expo: &Exposition<'_>) -> bool {
        expo.has_prefix("lmdeploy:")
    }

    fn read(&self, expo: &Exposition<'_>) -> Reading {
        Reading {
            requests_waiting: agg(expo, &["lmdeploy:num_requests_waiting"], Agg::Sum),
            requests_running: agg(expo, &["lmdeploy:num_requests_running"], Agg::Sum),
            kv_cache_utilization: agg(expo, &["lmdeploy:gpu_cache_usage_perc"], Agg::Max),
            counters: Counters {
                prompt_tokens: agg(expo, &["lmdeploy:prompt_tokens_total"], Agg::Sum),
                generation_tokens: agg(expo, &["lmdeploy:generation_tokens_total"], Agg::Sum),
                ..Counters::default()
            },
            models: models_from_label(
                expo,
                &[
                    "lmdeploy:num_requests_running",
                    "lmdeploy:num_requests_waiting",
                ],
                "model_name",
            ),
            ..Reading::default()
        }
    }
}
