//! Triton Inference Server with the TensorRT-LLM backend. Every series carries `model` and
//! `version`; several TRT-LLM models may be loaded, so counts and capacity add up over models and
//! utilization is the fullest model's. Older backends lack the `fraction` block type: used/max then.

use inferpick_schema::EngineKind;

use super::{Agg, Dialect, Reading, aggregate, models_from_label};
use crate::expo::Exposition;

pub(crate) struct TritonTrtllm;

const REQUESTS: &str = "nv_trt_llm_request_metrics";
const KV: &str = "nv_trt_llm_kv_cache_block_metrics";

/// One loaded model's KV block figures.
#[derive(Default)]
struct ModelKv<'a> {
    model: &'a str,
    max: Option<f64>,
    used: Option<f64>,
    tokens_per: Option<f64>,
    fraction: Option<f64>,
}

impl Dialect for TritonTrtllm {
    fn kind(&self) -> EngineKind {
        EngineKind::TritonTrtllm
    }

    fn recognizes(&self, expo: &Exposition<'_>) -> bool {
        expo.has_prefix("nv_trt_llm_")
    }

    fn read(&self, expo: &Exposition<'_>) -> Reading {
        let requests = |kind: &str| {
            aggregate(expo, &[REQUESTS], Agg::Sum, |s| {
                expo.label(s, "request_type") == Some(kind)
            })
        };
        let mut per_model: Vec<ModelKv<'_>> = Vec::new();
        for s in expo.named(KV).filter(|s| s.value.is_finite()) {
            let model = expo.label(s, "model").unwrap_or("");
            let entry = match per_model.iter().position(|m| m.model == model) {
                Some(i) => &mut per_model[i],
                None => {
                    per_model.push(ModelKv {
                        model,
                        ..ModelKv::default()
                    });
                    per_model.last_mut().expect("just pushed")
                }
            };
            match expo.label(s, "kv_cache_block_type").unwrap_or("") {
                "max" | "max_blocks" => entry.max = Some(s.value),
                "used" | "used_blocks" => entry.used = Some(s.value),
                "tokens_per" | "tokens_per_block" => entry.tokens_per = Some(s.value),
                "fraction" | "cache_block_fraction" => entry.fraction = Some(s.value),
                _ => {}
            }
        }
        let utilization = per_model
            .iter()
            .filter_map(|m| {
                m.fraction.or(match (m.used, m.max) {
                    (Some(u), Some(x)) if x > 0.0 => Some(u / x),
                    _ => None,
                })
            })
            .reduce(f64::max);
        let capacities: Vec<f64> = per_model
            .iter()
            .filter_map(|m| Some(m.max? * m.tokens_per?))
            .collect();
        Reading {
            requests_waiting: requests("waiting"),
            requests_running: requests("scheduled"),
            kv_cache_utilization: utilization,
            kv_cache_capacity_tokens: (!capacities.is_empty()).then(|| capacities.iter().sum()),
            kv_block_size_tokens: per_model.iter().find_map(|m| m.tokens_per),
            models: models_from_label(expo, &[REQUESTS, KV], "model"),
            ..Reading::default()
        }
    }
}
