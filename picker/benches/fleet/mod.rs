//! The fleet the picker's benchmarks measure against: one vLLM-like report per endpoint, with
//! loads that vary by index so profiles have something to choose between.

use inferpick_schema::{
    AgentInfo, EndpointInfo, EngineKind, EngineStatus, Load, LoadReport, ModelEntry,
};

/// The one model every benchmark endpoint serves.
pub const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

/// Endpoint `i`'s report, numbered `seq`.
pub fn report(i: usize, seq: u64) -> LoadReport {
    LoadReport {
        schema_version: 1,
        agent: AgentInfo {
            id: format!("agent-{i}"),
            version: "0.1.0".into(),
            started_at_ms: 1,
        },
        seq,
        sent_at_ms: 1,
        interval_ms: 100,
        endpoint: EndpointInfo {
            address: format!("10.{}.{}.{}:8000", i / 65536, (i / 256) % 256, i % 256),
            pod: Some(format!("vllm-{i}")),
            namespace: Some("llm".into()),
            node: None,
        },
        engine: EngineStatus {
            kind: EngineKind::Vllm,
            ready: true,
            error: None,
            scrape_ms: Some(2.0),
        },
        models: vec![ModelEntry {
            name: MODEL.into(),
            adapter_of: None,
        }],
        load: Load {
            requests_waiting: Some((i % 7) as u32),
            requests_running: Some((i % 31) as u32),
            kv_cache_utilization: Some((i % 10) as f64 / 12.0),
            kv_cache_capacity_tokens: Some(245_760),
            kv_block_size_tokens: Some(16),
            prompt_tokens_per_second: Some(9_000.0 + (i % 5) as f64 * 1_000.0),
            ..Load::default()
        },
        gpus: vec![],
    }
}
