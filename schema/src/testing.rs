//! Reports and GPUs for tests in every crate: one valid report shape, changed by a small builder.

use crate::{
    AgentInfo, EndpointInfo, EngineKind, EngineStatus, Gpu, Load, LoadReport, ModelEntry,
    SCHEMA_VERSION,
};

/// The model [`report`] serves.
pub const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

/// A valid report for `address` serving [`MODEL`]: ready, idle, no GPUs.
pub fn report(address: &str, seq: u64) -> LoadReport {
    ReportBuilder::new(address).seq(seq).build()
}

/// A plausible H100 80GB under load, NVML index `index`, with a uuid unique to that index.
pub fn gpu(index: u32) -> Gpu {
    Gpu {
        uuid: format!("GPU-00000000-0000-0000-0000-{index:012}"),
        index: Some(index),
        name: Some("NVIDIA H100 80GB HBM3".into()),
        memory_used_bytes: Some(72_000_000_000),
        memory_total_bytes: Some(85_520_809_984),
        utilization_percent: Some(87.0),
        temperature_celsius: Some(61.0),
        power_watts: Some(455.5),
        health: None,
    }
}

/// A [`report`] with some fields changed: `ReportBuilder::new(a).waiting(3).build()`.
#[derive(Debug, Clone)]
pub struct ReportBuilder {
    report: LoadReport,
}

impl ReportBuilder {
    /// Starts from [`report`]`(address, 1)`.
    pub fn new(address: &str) -> Self {
        ReportBuilder {
            report: LoadReport {
                schema_version: SCHEMA_VERSION,
                agent: AgentInfo {
                    id: format!("agent-{address}"),
                    version: "0.1.0".into(),
                    started_at_ms: 1_000,
                },
                seq: 1,
                sent_at_ms: 2_000,
                interval_ms: 100,
                endpoint: EndpointInfo {
                    address: address.into(),
                    pod: Some(format!("pod-{address}")),
                    namespace: None,
                    node: None,
                },
                engine: EngineStatus {
                    kind: EngineKind::Vllm,
                    ready: true,
                    error: None,
                    scrape_ms: Some(1.0),
                    tensor_parallel_size: None,
                },
                models: vec![ModelEntry {
                    name: MODEL.into(),
                    adapter_of: None,
                }],
                load: Load {
                    requests_waiting: Some(0),
                    requests_running: Some(0),
                    kv_cache_utilization: Some(0.0),
                    kv_cache_capacity_tokens: Some(200_000),
                    ..Load::default()
                },
                gpus: Vec::new(),
            },
        }
    }

    /// The report's sequence number.
    pub fn seq(mut self, seq: u64) -> Self {
        self.report.seq = seq;
        self
    }

    /// The id of the agent that sent it.
    pub fn agent_id(mut self, id: impl Into<String>) -> Self {
        self.report.agent.id = id.into();
        self
    }

    /// When that agent started, Unix milliseconds.
    pub fn started_at_ms(mut self, ms: u64) -> Self {
        self.report.agent.started_at_ms = ms;
        self
    }

    /// When the agent sent it, by its own clock, Unix milliseconds.
    pub fn sent_at_ms(mut self, ms: u64) -> Self {
        self.report.sent_at_ms = ms;
        self
    }

    /// Whether the engine is ready; a not-ready one says why, as the agent's reports do.
    pub fn ready(mut self, ready: bool) -> Self {
        self.report.engine.ready = ready;
        self.report.engine.error = (!ready).then(|| "engine not ready".to_string());
        self
    }

    /// Requests queued (`None`: the engine does not say).
    pub fn waiting(mut self, n: impl Into<Option<u32>>) -> Self {
        self.report.load.requests_waiting = n.into();
        self
    }

    /// Requests running (`None`: the engine does not say).
    pub fn running(mut self, n: impl Into<Option<u32>>) -> Self {
        self.report.load.requests_running = n.into();
        self
    }

    /// Fraction of the KV cache in use, 0..1 (`None`: the engine does not say).
    pub fn kv_utilization(mut self, ratio: impl Into<Option<f64>>) -> Self {
        self.report.load.kv_cache_utilization = ratio.into();
        self
    }

    /// Tokens the KV cache holds when full (`None`: the engine does not say).
    pub fn kv_capacity_tokens(mut self, tokens: impl Into<Option<u64>>) -> Self {
        self.report.load.kv_cache_capacity_tokens = tokens.into();
        self
    }

    /// The base models served, in place of [`MODEL`] (adapters added so far are kept).
    pub fn models(mut self, names: &[&str]) -> Self {
        self.report.models.retain(|m| m.adapter_of.is_some());
        let bases = names.iter().map(|n| ModelEntry {
            name: (*n).into(),
            adapter_of: None,
        });
        self.report.models.splice(0..0, bases);
        self
    }

    /// Adds LoRA adapter `name` of base model `base`.
    pub fn adapter(mut self, name: &str, base: &str) -> Self {
        self.report.models.push(ModelEntry {
            name: name.into(),
            adapter_of: Some(base.into()),
        });
        self
    }

    /// The pod's GPUs.
    pub fn gpus(mut self, gpus: Vec<Gpu>) -> Self {
        self.report.gpus = gpus;
        self
    }

    /// The report.
    pub fn build(self) -> LoadReport {
        self.report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_report_is_valid_and_idle() {
        let r = report("10.0.0.1:8000", 7);
        r.validate().unwrap();
        assert_eq!(r.seq, 7);
        assert_eq!(r.agent.id, "agent-10.0.0.1:8000");
        assert_eq!(r.endpoint.pod.as_deref(), Some("pod-10.0.0.1:8000"));
        assert_eq!(
            r.models,
            vec![ModelEntry {
                name: MODEL.into(),
                adapter_of: None
            }]
        );
        assert_eq!(r.load.requests_waiting, Some(0));
        assert!(r.gpus.is_empty());
    }

    #[test]
    fn every_setter_sets_its_field_and_keeps_the_report_valid() {
        let built = ReportBuilder::new("[fd00::1]:8000")
            .seq(9)
            .agent_id("a-2")
            .started_at_ms(5)
            .sent_at_ms(6)
            .ready(false)
            .waiting(3)
            .running(None)
            .kv_utilization(0.5)
            .kv_capacity_tokens(1_000)
            .adapter("sql-lora", "base")
            .models(&["base", "other"])
            .gpus((0..8).map(gpu).collect())
            .build();
        built.validate().unwrap();

        let mut want = report("[fd00::1]:8000", 9);
        want.agent.id = "a-2".into();
        want.agent.started_at_ms = 5;
        want.sent_at_ms = 6;
        want.engine.ready = false;
        want.engine.error = Some("engine not ready".into());
        want.load.requests_waiting = Some(3);
        want.load.requests_running = None;
        want.load.kv_cache_utilization = Some(0.5);
        want.load.kv_cache_capacity_tokens = Some(1_000);
        want.models = [("base", None), ("other", None), ("sql-lora", Some("base"))]
            .into_iter()
            .map(|(name, base): (&str, Option<&str>)| ModelEntry {
                name: name.into(),
                adapter_of: base.map(Into::into),
            })
            .collect();
        want.gpus = (0..8).map(gpu).collect();
        assert_eq!(built, want);
    }

    #[test]
    fn gpus_are_valid_and_unique_by_index() {
        let (a, b) = (gpu(0), gpu(1));
        assert_ne!(a.uuid, b.uuid);
        assert_eq!(b.index, Some(1));
        ReportBuilder::new("10.0.0.1:8000")
            .gpus(vec![a, b])
            .build()
            .validate()
            .unwrap();
    }
}
