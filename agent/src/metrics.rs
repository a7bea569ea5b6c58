//! The agent's `/metrics`: the normalized load as `inferpick_endpoint_*` and `inferpick_gpu_*`
//! gauges (one dashboard for every engine) and the agent's own `inferpick_agent_*` health.
//!
//! A signal the engine does not give has no series at all, rather than a zero.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use inferpick_schema::LoadReport;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The content type of both expositions, so Prometheus parses them as OpenMetrics.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type FGauge = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GpuLabels {
    endpoint: String,
    gpu: String,
    uuid: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PushLabels {
    target: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    version: &'static str,
    engine: &'static str,
}

/// Every family the agent exports, in its own registry.
pub struct AgentMetrics {
    registry: Registry,
    /// Serializes "replace the load series" against rendering, so a scrape never sees half a report.
    update: Mutex<()>,
    waiting: Family<EndpointLabels, FGauge>,
    running: Family<EndpointLabels, FGauge>,
    kv_utilization: Family<EndpointLabels, FGauge>,
    kv_capacity: Family<EndpointLabels, FGauge>,
    prefix_hit: Family<EndpointLabels, FGauge>,
    prompt_tps: Family<EndpointLabels, FGauge>,
    generation_tps: Family<EndpointLabels, FGauge>,
    adapters_running: Family<EndpointLabels, FGauge>,
    ready: Family<EndpointLabels, FGauge>,
    gpu_memory_used: Family<GpuLabels, FGauge>,
    gpu_memory_total: Family<GpuLabels, FGauge>,
    gpu_utilization: Family<GpuLabels, FGauge>,
    gpu_temperature: Family<GpuLabels, FGauge>,
    gpu_power: Family<GpuLabels, FGauge>,
    scrapes: Family<ResultLabels, Counter>,
    scrape_duration: Histogram,
    pushes: Family<PushLabels, Counter>,
    push_duration: Histogram,
    info: Family<InfoLabels, Gauge>,
    /// The KV-event families (`inferpick_agent_kv_events_*`).
    pub kv: crate::kv::metrics::KvMetrics,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl AgentMetrics {
    /// A registry holding every agent family.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let mut gauge = |name: &str, help: &str| {
            let family = Family::<EndpointLabels, FGauge>::default();
            registry.register(name, help, family.clone());
            family
        };
        let waiting = gauge(
            "inferpick_endpoint_requests_waiting",
            "Requests queued in the engine, not yet scheduled",
        );
        let running = gauge(
            "inferpick_endpoint_requests_running",
            "Requests in the engine's running batch",
        );
        let kv_utilization = gauge(
            "inferpick_endpoint_kv_cache_utilization",
            "Fraction of the KV cache in use (0..1); the fullest engine of a data-parallel server",
        );
        let kv_capacity = gauge(
            "inferpick_endpoint_kv_cache_capacity_tokens",
            "Tokens the KV cache holds when full",
        );
        let prefix_hit = gauge(
            "inferpick_endpoint_prefix_cache_hit_ratio",
            "Prefix-cache hits over queries in the last interval that had queries (0..1)",
        );
        let prompt_tps = gauge(
            "inferpick_endpoint_prompt_tokens_per_second",
            "Prompt tokens processed per second",
        );
        let generation_tps = gauge(
            "inferpick_endpoint_generation_tokens_per_second",
            "Tokens generated per second",
        );
        let adapters_running = gauge(
            "inferpick_endpoint_adapters_running",
            "LoRA adapters with running requests",
        );
        let ready = gauge(
            "inferpick_endpoint_ready",
            "1 when the last scrape of the engine succeeded and it is ready, else 0",
        );
        let mut gpu_gauge = |name: &str, help: &str| {
            let family = Family::<GpuLabels, FGauge>::default();
            registry.register(name, help, family.clone());
            family
        };
        let gpu_memory_used = gpu_gauge(
            "inferpick_gpu_memory_used_bytes",
            "GPU memory in use, bytes",
        );
        let gpu_memory_total = gpu_gauge(
            "inferpick_gpu_memory_total_bytes",
            "GPU memory on the card, bytes",
        );
        let gpu_utilization = gpu_gauge(
            "inferpick_gpu_utilization_ratio",
            "GPU busy time over NVML's sample period (0..1)",
        );
        let gpu_temperature =
            gpu_gauge("inferpick_gpu_temperature_celsius", "GPU core temperature");
        let gpu_power = gpu_gauge("inferpick_gpu_power_watts", "GPU power draw");
        let scrapes = Family::<ResultLabels, Counter>::default();
        registry.register(
            "inferpick_agent_scrapes",
            "Engine scrapes by result (ok, or the failure: unreachable, timeout, http_error, too_large, parse_error, unrecognized)",
            scrapes.clone(),
        );
        let scrape_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register(
            "inferpick_agent_scrape_duration_seconds",
            "Time to fetch and normalize one engine scrape",
            scrape_duration.clone(),
        );
        let pushes = Family::<PushLabels, Counter>::default();
        registry.register(
            "inferpick_agent_pushes",
            "Report pushes by picker target and result (ok, error)",
            pushes.clone(),
        );
        let push_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register(
            "inferpick_agent_push_duration_seconds",
            "Time of one push to one picker",
            push_duration.clone(),
        );
        let info = Family::<InfoLabels, Gauge>::default();
        registry.register(
            "inferpick_agent_info",
            "The agent's version and the engine it reads; always 1",
            info.clone(),
        );
        let kv = crate::kv::metrics::KvMetrics::register(&mut registry);
        AgentMetrics {
            kv,
            registry,
            update: Mutex::new(()),
            waiting,
            running,
            kv_utilization,
            kv_capacity,
            prefix_hit,
            prompt_tps,
            generation_tps,
            adapters_running,
            ready,
            gpu_memory_used,
            gpu_memory_total,
            gpu_utilization,
            gpu_temperature,
            gpu_power,
            scrapes,
            scrape_duration,
            pushes,
            push_duration,
            info,
        }
    }

    /// Counts one scrape and its duration; `result` is `ok` or the failure's kind.
    pub fn observe_scrape(&self, result: &'static str, took: Duration) {
        self.scrapes.get_or_create(&ResultLabels { result }).inc();
        self.scrape_duration.observe(took.as_secs_f64());
    }

    /// Counts one push to `target`.
    pub fn observe_push(&self, target: &str, ok: bool, took: Duration) {
        let labels = PushLabels {
            target: target.to_string(),
            result: if ok { "ok" } else { "error" },
        };
        self.pushes.get_or_create(&labels).inc();
        self.push_duration.observe(took.as_secs_f64());
    }

    /// Replaces the load and GPU series with `report`'s.
    pub fn set_report(&self, report: &LoadReport) {
        let _guard = self.update.lock().expect("metrics lock");
        let endpoint = &report.endpoint.address;
        let model = report
            .models
            .iter()
            .find(|m| m.adapter_of.is_none())
            .map_or(String::new(), |m| m.name.clone());
        let labels = EndpointLabels {
            endpoint: endpoint.clone(),
            model,
        };
        let load = &report.load;
        let adapters = load.adapters.as_ref().map(|a| a.running.len() as f64);
        for (family, value) in [
            (&self.waiting, load.requests_waiting.map(f64::from)),
            (&self.running, load.requests_running.map(f64::from)),
            (&self.kv_utilization, load.kv_cache_utilization),
            (
                &self.kv_capacity,
                load.kv_cache_capacity_tokens.map(|v| v as f64),
            ),
            (&self.prefix_hit, load.prefix_cache_hit_ratio),
            (&self.prompt_tps, load.prompt_tokens_per_second),
            (&self.generation_tps, load.generation_tokens_per_second),
            (&self.adapters_running, adapters),
            (
                &self.ready,
                Some(if report.engine.ready { 1.0 } else { 0.0 }),
            ),
        ] {
            family.clear();
            if let Some(v) = value {
                family.get_or_create(&labels).set(v);
            }
        }
        for family in [
            &self.gpu_memory_used,
            &self.gpu_memory_total,
            &self.gpu_utilization,
            &self.gpu_temperature,
            &self.gpu_power,
        ] {
            family.clear();
        }
        for gpu in &report.gpus {
            let labels = GpuLabels {
                endpoint: endpoint.clone(),
                gpu: gpu.index.map_or(String::new(), |i| i.to_string()),
                uuid: gpu.uuid.clone(),
            };
            for (family, value) in [
                (
                    &self.gpu_memory_used,
                    gpu.memory_used_bytes.map(|v| v as f64),
                ),
                (
                    &self.gpu_memory_total,
                    gpu.memory_total_bytes.map(|v| v as f64),
                ),
                (
                    &self.gpu_utilization,
                    gpu.utilization_percent.map(|p| p / 100.0),
                ),
                (&self.gpu_temperature, gpu.temperature_celsius),
                (&self.gpu_power, gpu.power_watts),
            ] {
                if let Some(v) = value {
                    family.get_or_create(&labels).set(v);
                }
            }
        }
        self.info.clear();
        self.info
            .get_or_create(&InfoLabels {
                version: env!("CARGO_PKG_VERSION"),
                engine: report.engine.kind.as_str(),
            })
            .set(1);
    }

    /// The OpenMetrics exposition.
    pub fn render(&self) -> String {
        let _guard = self.update.lock().expect("metrics lock");
        let mut out = String::with_capacity(8192);
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use inferpick_schema::Gpu;
    use inferpick_schema::testing::{self, ReportBuilder};

    use super::*;

    /// A ready endpoint serving `m`, with 3 waiting, no running count, and one GPU that does not
    /// report its temperature.
    fn report() -> LoadReport {
        let gpu = Gpu {
            temperature_celsius: None,
            ..testing::gpu(0)
        };
        ReportBuilder::new("10.0.0.1:8000")
            .models(&["m"])
            .waiting(3)
            .running(None)
            .kv_utilization(0.5)
            .gpus(vec![gpu])
            .build()
    }

    #[test]
    fn exports_present_signals_only() {
        let m = AgentMetrics::new();
        m.set_report(&report());
        m.observe_scrape("ok", Duration::from_millis(2));
        m.observe_push("http://p:9000/v1/reports", false, Duration::from_millis(1));
        let text = m.render();
        let gpu = format!(
            "endpoint=\"10.0.0.1:8000\",gpu=\"0\",uuid=\"{}\"",
            testing::gpu(0).uuid
        );
        for line in [
            "inferpick_endpoint_requests_waiting{endpoint=\"10.0.0.1:8000\",model=\"m\"} 3.0"
                .into(),
            "inferpick_endpoint_kv_cache_utilization{endpoint=\"10.0.0.1:8000\",model=\"m\"} 0.5"
                .into(),
            "inferpick_endpoint_ready{endpoint=\"10.0.0.1:8000\",model=\"m\"} 1.0".into(),
            format!("inferpick_gpu_utilization_ratio{{{gpu}}} 0.87"),
            format!("inferpick_gpu_power_watts{{{gpu}}} 455.5"),
            "inferpick_agent_scrapes_total{result=\"ok\"} 1".into(),
            "inferpick_agent_pushes_total{target=\"http://p:9000/v1/reports\",result=\"error\"} 1"
                .into(),
            "inferpick_agent_info{version=\"0.1.0\",engine=\"vllm\"} 1".into(),
            "# EOF".to_string(),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(
            !text.contains("inferpick_endpoint_requests_running{"),
            "absent signal exported:\n{text}"
        );
        assert!(
            !text.contains("inferpick_gpu_temperature_celsius{"),
            "absent GPU signal exported"
        );
    }

    #[test]
    fn a_newer_report_replaces_the_old_series() {
        let m = AgentMetrics::new();
        m.set_report(&report());
        let mut r = report();
        r.load.requests_waiting = None;
        r.engine.ready = false;
        r.gpus.clear();
        m.set_report(&r);
        let text = m.render();
        assert!(!text.contains("inferpick_endpoint_requests_waiting{"));
        assert!(
            text.contains("inferpick_endpoint_ready{endpoint=\"10.0.0.1:8000\",model=\"m\"} 0.0")
        );
        assert!(!text.contains("inferpick_gpu_memory_used_bytes{"));
    }
}
