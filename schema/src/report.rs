//! The load report (schema version 1): one engine's load and its GPUs, as an agent saw them.
//!
//! Every signal an engine may not expose is an `Option`: `None` means "this engine does not say",
//! never zero. [`LoadReport::validate`] enforces the rules of the contract; decoding alone does not.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::health::GpuHealth;

/// The only schema version this crate reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

/// Size limits that validation enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits;

impl Limits {
    /// Most models (base models and adapters) one report may list.
    pub const MAX_MODELS: usize = 64;
    /// Most GPUs one report may list.
    pub const MAX_GPUS: usize = 16;
    /// Longest string, in bytes, anywhere in a report.
    pub const MAX_STRING_BYTES: usize = 512;
    /// Most adapter names in each of `adapters.running` and `adapters.waiting`.
    pub const MAX_ADAPTERS: usize = 64;
}

/// One agent's report of its endpoint's load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    /// Always [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Which agent process sent this.
    pub agent: AgentInfo,
    /// +1 per report from this agent id; detects reordering and loss.
    pub seq: u64,
    /// The agent's wall clock when it sent this (informational only: pickers use their own clock).
    pub sent_at_ms: u64,
    /// The agent's scrape period.
    pub interval_ms: u64,
    /// The address gateways send traffic to, and the pod's identity.
    pub endpoint: EndpointInfo,
    /// The engine and whether the last scrape of it worked.
    pub engine: EngineStatus,
    /// Base models and LoRA adapters this endpoint serves.
    #[serde(default)]
    pub models: Vec<ModelEntry>,
    /// The normalized load.
    #[serde(default)]
    pub load: Load,
    /// The pod's GPUs.
    #[serde(default)]
    pub gpus: Vec<Gpu>,
}

/// The agent process that produced a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// New at every agent start.
    pub id: String,
    /// The agent's version.
    pub version: String,
    /// When that agent process started, Unix milliseconds.
    pub started_at_ms: u64,
}

/// The endpoint a report describes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointInfo {
    /// `host:port` that gateways connect to; the endpoint's identity in the picker's table.
    pub address: String,
    /// Pod name, from the downward API.
    #[serde(default)]
    pub pod: Option<String>,
    /// Pod namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Node name.
    #[serde(default)]
    pub node: Option<String>,
}

/// The kind of model server behind an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EngineKind {
    /// vLLM (V1 and older metric names).
    Vllm,
    /// SGLang (`sglang:` and `sglang_` prefixes).
    Sglang,
    /// Hugging Face text-generation-inference.
    Tgi,
    /// Triton Inference Server with the TensorRT-LLM backend.
    TritonTrtllm,
    /// TensorRT-LLM's own OpenAI server.
    TrtllmServe,
    /// llama.cpp's `llama-server`.
    Llamacpp,
    /// LMDeploy.
    Lmdeploy,
    /// Not yet known: `--engine auto` has not seen a recognizable exposition.
    Unknown,
}

impl EngineKind {
    /// Every real engine, in the order `--engine auto` tries them.
    pub const ALL: [EngineKind; 7] = [
        EngineKind::Vllm,
        EngineKind::Sglang,
        EngineKind::Tgi,
        EngineKind::TritonTrtllm,
        EngineKind::TrtllmServe,
        EngineKind::Llamacpp,
        EngineKind::Lmdeploy,
    ];

    /// The name used in flags, reports and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Vllm => "vllm",
            EngineKind::Sglang => "sglang",
            EngineKind::Tgi => "tgi",
            EngineKind::TritonTrtllm => "triton-trtllm",
            EngineKind::TrtllmServe => "trtllm-serve",
            EngineKind::Llamacpp => "llamacpp",
            EngineKind::Lmdeploy => "lmdeploy",
            EngineKind::Unknown => "unknown",
        }
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for EngineKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EngineKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = EngineKind::ALL.iter().map(|k| k.as_str()).collect();
                format!("unknown engine {s:?}: expected one of {}", names.join(", "))
            })
    }
}

/// The engine's state as of the last scrape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineStatus {
    /// Which engine this is.
    pub kind: EngineKind,
    /// The last scrape succeeded and the engine serves requests.
    pub ready: bool,
    /// Why it is not ready, in one sentence.
    #[serde(default)]
    pub error: Option<String>,
    /// How long the last scrape took, milliseconds.
    #[serde(default)]
    pub scrape_ms: Option<f64>,
    /// GPUs one model replica spans (tensor parallelism), where the engine or the operator says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensor_parallel_size: Option<u32>,
}

/// A model an endpoint serves: a base model, or a LoRA adapter of one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ModelEntry {
    /// The name clients put in `model`.
    pub name: String,
    /// For an adapter, the base model it applies to.
    #[serde(default)]
    pub adapter_of: Option<String>,
}

/// The normalized load. Every field may be absent: absent means the engine does not say.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Load {
    /// Requests queued, not yet scheduled.
    #[serde(default)]
    pub requests_waiting: Option<u32>,
    /// Requests in the running batch.
    #[serde(default)]
    pub requests_running: Option<u32>,
    /// Fraction of the KV cache in use, 0..1.
    #[serde(default)]
    pub kv_cache_utilization: Option<f64>,
    /// Tokens the KV cache holds when full.
    #[serde(default)]
    pub kv_cache_capacity_tokens: Option<u64>,
    /// Tokens per KV block.
    #[serde(default)]
    pub kv_block_size_tokens: Option<u32>,
    /// Prefix-cache hits over queries in the last interval that had queries, 0..1.
    #[serde(default)]
    pub prefix_cache_hit_ratio: Option<f64>,
    /// Prompt (prefill) tokens processed per second over the last interval.
    #[serde(default)]
    pub prompt_tokens_per_second: Option<f64>,
    /// Generated tokens per second over the last interval.
    #[serde(default)]
    pub generation_tokens_per_second: Option<f64>,
    /// LoRA adapters loaded and wanted.
    #[serde(default)]
    pub adapters: Option<Adapters>,
}

/// LoRA adapter state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adapters {
    /// Adapters with running requests (loaded).
    #[serde(default)]
    pub running: Vec<String>,
    /// Adapters that queued requests wait for.
    #[serde(default)]
    pub waiting: Vec<String>,
    /// How many adapters fit at once.
    #[serde(default)]
    pub max_loaded: Option<u32>,
}

/// One GPU of the pod, as NVML reports it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Gpu {
    /// NVML UUID (`GPU-…`).
    pub uuid: String,
    /// NVML index on the node.
    #[serde(default)]
    pub index: Option<u32>,
    /// Product name.
    #[serde(default)]
    pub name: Option<String>,
    /// Memory in use, bytes.
    #[serde(default)]
    pub memory_used_bytes: Option<u64>,
    /// Memory on the card, bytes.
    #[serde(default)]
    pub memory_total_bytes: Option<u64>,
    /// Busy time over the last sample period, 0..100.
    #[serde(default)]
    pub utilization_percent: Option<f64>,
    /// Core temperature.
    #[serde(default)]
    pub temperature_celsius: Option<f64>,
    /// Power draw.
    #[serde(default)]
    pub power_watts: Option<f64>,
    /// Throttling, errors and link state. Absent from agents that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<GpuHealth>,
}

/// A rule of the contract that a report breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ValidationError {
    /// Path of the field, as in the JSON (`load.kv_cache_utilization`, `gpus[1].power_watts`).
    pub field: String,
    /// What is wrong, with the value.
    pub problem: String,
}

impl ValidationError {
    fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

type Check = Result<(), ValidationError>;

fn check_str(field: &str, value: &str) -> Check {
    if value.len() > Limits::MAX_STRING_BYTES {
        return Err(ValidationError::new(
            field,
            format!(
                "{} bytes: must be at most {}",
                value.len(),
                Limits::MAX_STRING_BYTES
            ),
        ));
    }
    Ok(())
}

fn check_opt_str(field: &str, value: &Option<String>) -> Check {
    value.as_deref().map_or(Ok(()), |v| check_str(field, v))
}

fn check_nonempty(field: &str, value: &str) -> Check {
    if value.is_empty() {
        return Err(ValidationError::new(field, "empty: must be set"));
    }
    check_str(field, value)
}

fn check_range(field: &str, value: Option<f64>, lo: f64, hi: f64) -> Check {
    match value {
        Some(v) if !v.is_finite() => Err(ValidationError::new(
            field,
            format!("{v}: must be a finite number"),
        )),
        Some(v) if v < lo || v > hi => Err(ValidationError::new(
            field,
            format!("{v}: must be within {lo}..{hi}"),
        )),
        _ => Ok(()),
    }
}

fn check_nonneg(field: &str, value: Option<f64>) -> Check {
    check_range(field, value, 0.0, f64::MAX)
}

/// Checks that `address` is `host:port` with a non-empty host and a port in 1..=65535.
/// IPv6 hosts are written in brackets (`[fd00::1]:8000`).
pub fn check_address(address: &str) -> Result<(), String> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("{address:?} is not host:port"))?;
    if host.is_empty() {
        return Err(format!("{address:?} has no host"));
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(format!("{address:?}: an IPv6 host must be in brackets"));
    }
    if host
        .chars()
        .any(|c| c.is_whitespace() || c == '/' || c == ',' || c == '@')
    {
        return Err(format!(
            "{address:?}: host has a character a host cannot have"
        ));
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("{address:?}: port must be 1..65535")),
        Ok(_) => Ok(()),
    }
}

impl LoadReport {
    /// Checks every rule of the contract; the error names the first field that breaks one.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.schema_version != SCHEMA_VERSION {
            return Err(ValidationError::new(
                "schema_version",
                format!(
                    "{}: unknown schema version (this picker reads {SCHEMA_VERSION})",
                    self.schema_version
                ),
            ));
        }
        check_nonempty("agent.id", &self.agent.id)?;
        check_str("agent.version", &self.agent.version)?;
        check_str("endpoint.address", &self.endpoint.address)?;
        check_address(&self.endpoint.address)
            .map_err(|p| ValidationError::new("endpoint.address", p))?;
        check_opt_str("endpoint.pod", &self.endpoint.pod)?;
        check_opt_str("endpoint.namespace", &self.endpoint.namespace)?;
        check_opt_str("endpoint.node", &self.endpoint.node)?;
        check_opt_str("engine.error", &self.engine.error)?;
        check_nonneg("engine.scrape_ms", self.engine.scrape_ms)?;
        if self.engine.tensor_parallel_size == Some(0) {
            return Err(ValidationError::new(
                "engine.tensor_parallel_size",
                "0: must be at least 1",
            ));
        }
        if self.models.len() > Limits::MAX_MODELS {
            return Err(ValidationError::new(
                "models",
                format!(
                    "{} entries: at most {} allowed",
                    self.models.len(),
                    Limits::MAX_MODELS
                ),
            ));
        }
        for (i, m) in self.models.iter().enumerate() {
            check_nonempty(&format!("models[{i}].name"), &m.name)?;
            check_opt_str(&format!("models[{i}].adapter_of"), &m.adapter_of)?;
        }
        self.load.validate()?;
        if self.gpus.len() > Limits::MAX_GPUS {
            return Err(ValidationError::new(
                "gpus",
                format!(
                    "{} entries: at most {} allowed",
                    self.gpus.len(),
                    Limits::MAX_GPUS
                ),
            ));
        }
        for (i, g) in self.gpus.iter().enumerate() {
            g.validate(i)?;
        }
        Ok(())
    }
}

impl Load {
    fn validate(&self) -> Check {
        check_range(
            "load.kv_cache_utilization",
            self.kv_cache_utilization,
            0.0,
            1.0,
        )?;
        check_range(
            "load.prefix_cache_hit_ratio",
            self.prefix_cache_hit_ratio,
            0.0,
            1.0,
        )?;
        check_nonneg(
            "load.prompt_tokens_per_second",
            self.prompt_tokens_per_second,
        )?;
        check_nonneg(
            "load.generation_tokens_per_second",
            self.generation_tokens_per_second,
        )?;
        if let Some(a) = &self.adapters {
            for (name, list) in [("running", &a.running), ("waiting", &a.waiting)] {
                if list.len() > Limits::MAX_ADAPTERS {
                    return Err(ValidationError::new(
                        format!("load.adapters.{name}"),
                        format!(
                            "{} entries: at most {} allowed",
                            list.len(),
                            Limits::MAX_ADAPTERS
                        ),
                    ));
                }
                for (i, s) in list.iter().enumerate() {
                    check_nonempty(&format!("load.adapters.{name}[{i}]"), s)?;
                }
            }
        }
        Ok(())
    }
}

impl Gpu {
    fn validate(&self, i: usize) -> Check {
        check_nonempty(&format!("gpus[{i}].uuid"), &self.uuid)?;
        check_opt_str(&format!("gpus[{i}].name"), &self.name)?;
        check_range(
            &format!("gpus[{i}].utilization_percent"),
            self.utilization_percent,
            0.0,
            100.0,
        )?;
        check_range(
            &format!("gpus[{i}].temperature_celsius"),
            self.temperature_celsius,
            -273.15,
            1000.0,
        )?;
        check_nonneg(&format!("gpus[{i}].power_watts"), self.power_watts)?;
        if let Some(h) = &self.health {
            h.validate(&format!("gpus[{i}].health"))?;
        }
        if let (Some(used), Some(total)) = (self.memory_used_bytes, self.memory_total_bytes)
            && used > total
        {
            return Err(ValidationError::new(
                format!("gpus[{i}].memory_used_bytes"),
                format!("{used}: more than memory_total_bytes {total}"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A complete, valid report like the contract's example.
    pub(crate) fn example() -> LoadReport {
        LoadReport {
            schema_version: 1,
            agent: AgentInfo {
                id: "3f0c".into(),
                version: "0.1.0".into(),
                started_at_ms: 1_764_000_000_000,
            },
            seq: 4182,
            sent_at_ms: 1_764_000_012_345,
            interval_ms: 100,
            endpoint: EndpointInfo {
                address: "10.4.2.17:8000".into(),
                pod: Some("vllm-7".into()),
                namespace: Some("llm".into()),
                node: Some("gpu-node-3".into()),
            },
            engine: EngineStatus {
                kind: EngineKind::Vllm,
                ready: true,
                error: None,
                scrape_ms: Some(3.1),
                tensor_parallel_size: None,
            },
            models: vec![
                ModelEntry {
                    name: "meta-llama/Llama-3.1-8B-Instruct".into(),
                    adapter_of: None,
                },
                ModelEntry {
                    name: "sql-lora".into(),
                    adapter_of: Some("meta-llama/Llama-3.1-8B-Instruct".into()),
                },
            ],
            load: Load {
                requests_waiting: Some(3),
                requests_running: Some(17),
                kv_cache_utilization: Some(0.62),
                kv_cache_capacity_tokens: Some(245_760),
                kv_block_size_tokens: Some(16),
                prefix_cache_hit_ratio: Some(0.41),
                prompt_tokens_per_second: Some(5210.5),
                generation_tokens_per_second: Some(1830.2),
                adapters: Some(Adapters {
                    running: vec!["sql-lora".into()],
                    waiting: vec![],
                    max_loaded: Some(4),
                }),
            },
            gpus: vec![Gpu {
                uuid: "GPU-1".into(),
                index: Some(0),
                name: Some("NVIDIA H100 80GB HBM3".into()),
                memory_used_bytes: Some(76_543_210_000),
                memory_total_bytes: Some(85_520_809_984),
                utilization_percent: Some(97.0),
                temperature_celsius: Some(61.0),
                power_watts: Some(612.5),
                health: None,
            }],
        }
    }

    #[test]
    fn example_round_trips_and_validates() {
        let r = example();
        r.validate().unwrap();
        let json = serde_json::to_string(&r).unwrap();
        let back: LoadReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
    }

    /// Versions mix because decoding ignores fields it does not know, at every level: a picker
    /// from before `gpus[].health` and `engine.tensor_parallel_size` reads a newer agent's report,
    /// and a newer picker reads an older agent's report (every new field is optional).
    #[test]
    fn reports_from_newer_and_older_agents_both_decode() {
        let newer = r#"{ "schema_version": 1,
          "agent": {"id": "a", "version": "9.9.9", "started_at_ms": 1, "build": "x"},
          "seq": 1, "sent_at_ms": 1, "interval_ms": 100,
          "endpoint": {"address": "10.0.0.1:8000", "zone": "z"},
          "engine": {"kind": "vllm", "ready": true, "tensor_parallel_size": 2, "dp": 1},
          "load": {"requests_waiting": 1, "spec_decode_acceptance": 0.7},
          "gpus": [{"uuid": "GPU-1", "name": "NVIDIA H100 80GB HBM3",
                    "health": {"throttle": ["hw-thermal", "from-the-future"],
                               "sm_clock_mhz": 990, "sm_clock_max_mhz": 1980,
                               "xid_errors": [79], "nvlink_errors": 3},
                    "fan_percent": 40}],
          "future_section": {"anything": [1, 2, 3]} }"#;
        let r: LoadReport = serde_json::from_str(newer).unwrap();
        r.validate().unwrap();
        assert_eq!(r.engine.tensor_parallel_size, Some(2));
        let health = r.gpus[0].health.as_ref().unwrap();
        assert_eq!(health.speed(), 0.5);
        assert_eq!(
            health.fatal().as_deref(),
            Some("XID 79 (GPU has fallen off the bus)")
        );
        let older = r#"{ "schema_version": 1,
          "agent": {"id": "a", "version": "0.1.0", "started_at_ms": 1},
          "seq": 1, "sent_at_ms": 1, "interval_ms": 100,
          "endpoint": {"address": "10.0.0.1:8000"},
          "engine": {"kind": "vllm", "ready": true},
          "gpus": [{"uuid": "GPU-1", "name": "NVIDIA A100-SXM4-80GB"}] }"#;
        let r: LoadReport = serde_json::from_str(older).unwrap();
        r.validate().unwrap();
        assert_eq!(
            (r.engine.tensor_parallel_size, &r.gpus[0].health),
            (None, &None)
        );
        // A report without health serializes without it, byte for byte what older agents sent.
        assert!(!serde_json::to_string(&r).unwrap().contains("health"));
    }

    #[test]
    fn oversized_health_lists_and_zero_tensor_parallelism_are_refused() {
        let mut r = example();
        r.gpus[0].health = Some(GpuHealth {
            xid_errors: (0..17).collect(),
            ..Default::default()
        });
        let e = r.validate().unwrap_err();
        assert_eq!(e.field, "gpus[0].health.xid_errors");
        let mut r = example();
        r.engine.tensor_parallel_size = Some(0);
        assert_eq!(
            r.validate().unwrap_err().field,
            "engine.tensor_parallel_size"
        );
    }

    #[test]
    fn contract_example_json_decodes() {
        let json = r#"{ "schema_version": 1,
          "agent": {"id": "3f0c", "version": "0.1.0", "started_at_ms": 1764000000000},
          "seq": 4182, "sent_at_ms": 1764000012345, "interval_ms": 100,
          "endpoint": {"address": "10.4.2.17:8000", "pod": "p", "namespace": "n", "node": "x"},
          "engine": {"kind": "triton-trtllm", "ready": true, "error": null, "scrape_ms": 3.1},
          "models": [{"name": "m", "adapter_of": null}],
          "load": {"requests_waiting": 3, "kv_cache_utilization": null},
          "gpus": [{"uuid": "GPU-1"}] }"#;
        let r: LoadReport = serde_json::from_str(json).unwrap();
        r.validate().unwrap();
        assert_eq!(r.engine.kind, EngineKind::TritonTrtllm);
        assert_eq!(r.load.requests_waiting, Some(3));
        assert_eq!(r.load.requests_running, None);
        assert_eq!(r.gpus[0].power_watts, None);
    }

    fn rejects(mutate: impl FnOnce(&mut LoadReport), field: &str, says: &str) {
        let mut r = example();
        mutate(&mut r);
        let err = r.validate().unwrap_err();
        assert_eq!(err.field, field, "{err}");
        assert!(err.to_string().contains(says), "{err} lacks {says:?}");
    }

    #[test]
    fn rejections_name_field_and_value() {
        rejects(
            |r| r.schema_version = 2,
            "schema_version",
            "2: unknown schema version",
        );
        rejects(
            |r| r.load.kv_cache_utilization = Some(1.7),
            "load.kv_cache_utilization",
            "1.7: must be within 0..1",
        );
        rejects(
            |r| r.load.prefix_cache_hit_ratio = Some(-0.1),
            "load.prefix_cache_hit_ratio",
            "-0.1",
        );
        rejects(
            |r| r.load.kv_cache_utilization = Some(f64::NAN),
            "load.kv_cache_utilization",
            "NaN: must be a finite number",
        );
        rejects(
            |r| r.load.prompt_tokens_per_second = Some(f64::INFINITY),
            "load.prompt_tokens_per_second",
            "inf",
        );
        rejects(
            |r| r.load.generation_tokens_per_second = Some(-1.0),
            "load.generation_tokens_per_second",
            "-1",
        );
        rejects(
            |r| r.endpoint.address = "10.0.0.1".into(),
            "endpoint.address",
            "not host:port",
        );
        rejects(
            |r| r.endpoint.address = "10.0.0.1:0".into(),
            "endpoint.address",
            "port",
        );
        rejects(
            |r| r.endpoint.address = "10.0.0.1:99999".into(),
            "endpoint.address",
            "port",
        );
        rejects(
            |r| r.endpoint.address = ":8000".into(),
            "endpoint.address",
            "no host",
        );
        rejects(
            |r| r.endpoint.address = "fd00::1:8000".into(),
            "endpoint.address",
            "brackets",
        );
        rejects(|r| r.agent.id = String::new(), "agent.id", "empty");
        rejects(
            |r| r.endpoint.pod = Some("x".repeat(513)),
            "endpoint.pod",
            "513 bytes",
        );
        rejects(
            |r| r.models = vec![r.models[0].clone(); 65],
            "models",
            "65 entries",
        );
        rejects(
            |r| r.gpus = vec![r.gpus[0].clone(); 17],
            "gpus",
            "17 entries",
        );
        rejects(
            |r| r.gpus[0].utilization_percent = Some(101.0),
            "gpus[0].utilization_percent",
            "101",
        );
        rejects(
            |r| r.gpus[0].memory_used_bytes = Some(u64::MAX),
            "gpus[0].memory_used_bytes",
            "more than",
        );
        rejects(
            |r| {
                r.load
                    .adapters
                    .as_mut()
                    .unwrap()
                    .running
                    .push(String::new())
            },
            "load.adapters.running[1]",
            "empty",
        );
    }

    #[test]
    fn bracketed_ipv6_and_names_are_addresses() {
        for ok in ["[fd00::1]:8000", "vllm-0.llm.svc:8000", "127.0.0.1:1"] {
            check_address(ok).unwrap();
        }
    }

    #[test]
    fn engine_kind_names_round_trip() {
        for k in EngineKind::ALL {
            assert_eq!(k.as_str().parse::<EngineKind>().unwrap(), k);
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
        assert!(
            "vllm2"
                .parse::<EngineKind>()
                .unwrap_err()
                .contains("triton-trtllm")
        );
    }

    fn arb_opt_f64() -> impl Strategy<Value = Option<f64>> {
        prop_oneof![
            Just(None),
            any::<f64>().prop_map(Some),
            (0.0f64..1.0).prop_map(Some)
        ]
    }

    proptest! {
        /// Validation accepts exactly the reports whose ratios are finite and within 0..1.
        #[test]
        fn ratio_rule_is_exact(kv in arb_opt_f64(), hit in arb_opt_f64()) {
            let mut r = example();
            r.load.kv_cache_utilization = kv;
            r.load.prefix_cache_hit_ratio = hit;
            let ok = |v: Option<f64>| v.is_none_or(|v| v.is_finite() && (0.0..=1.0).contains(&v));
            prop_assert_eq!(r.validate().is_ok(), ok(kv) && ok(hit));
        }

        /// Whatever bytes arrive, decoding and validating never panic.
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(rs) = crate::decode_reports(&bytes) {
                for r in rs { let _ = r.validate(); }
            }
        }

        /// Every valid report survives a JSON round trip unchanged.
        #[test]
        fn valid_reports_round_trip(seq in any::<u64>(), waiting in any::<Option<u32>>(), kv in proptest::option::of(0.0f64..=1.0)) {
            let mut r = example();
            r.seq = seq;
            r.load.requests_waiting = waiting;
            r.load.kv_cache_utilization = kv;
            r.validate().unwrap();
            let back: LoadReport = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
            prop_assert_eq!(back, r);
        }
    }
}
