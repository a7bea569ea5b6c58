//! The agent's `/metrics`: the normalized load as `inferpick_endpoint_*` and `inferpick_gpu_*`
//! gauges (one dashboard for every engine) and the agent's own `inferpick_agent_*` health.
//!
//! A signal the engine does not give has no series at all, rather than a zero.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use inferpick_schema::{GpuHealth, LoadReport};
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
struct ThrottleLabels {
    endpoint: String,
    gpu: String,
    uuid: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct XidLabels {
    endpoint: String,
    gpu: String,
    uuid: String,
    xid: String,
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
    gpu_lost: Family<GpuLabels, FGauge>,
    gpu_fatal: Family<GpuLabels, FGauge>,
    gpu_sm_clock: Family<GpuLabels, FGauge>,
    gpu_ecc: Family<GpuLabels, FGauge>,
    gpu_pages_pending: Family<GpuLabels, FGauge>,
    gpu_rows_pending: Family<GpuLabels, FGauge>,
    gpu_rows_failed: Family<GpuLabels, FGauge>,
    gpu_pcie_width: Family<GpuLabels, FGauge>,
    gpu_pcie_generation: Family<GpuLabels, FGauge>,
    gpu_throttle: Family<ThrottleLabels, FGauge>,
    gpu_xid: Family<XidLabels, FGauge>,
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
        let gpu_lost = gpu_gauge(
            "inferpick_gpu_lost",
            "1 when NVML answers GPU lost for this GPU (fallen off the bus or in need of a reset), else 0",
        );
        let gpu_fatal = gpu_gauge(
            "inferpick_gpu_fatal",
            "1 when the GPU has a condition that stops routing to it (lost, uncorrectable ECC errors, a failed row remapping, an XID from the fatal set), else 0",
        );
        let gpu_sm_clock = gpu_gauge(
            "inferpick_gpu_sm_clock_ratio",
            "SM clock over its maximum (0..1)",
        );
        let gpu_ecc = gpu_gauge(
            "inferpick_gpu_ecc_uncorrectable_errors",
            "Uncorrectable ECC errors since the driver loaded",
        );
        let gpu_pages_pending = gpu_gauge(
            "inferpick_gpu_retired_pages_pending",
            "1 when retired memory pages wait for a GPU reset, else 0",
        );
        let gpu_rows_pending = gpu_gauge(
            "inferpick_gpu_remapped_rows_pending",
            "1 when memory rows wait to be remapped at the next GPU reset, else 0",
        );
        let gpu_rows_failed = gpu_gauge(
            "inferpick_gpu_remapped_rows_failed",
            "1 when a memory row remapping failed, else 0",
        );
        let gpu_pcie_width = gpu_gauge(
            "inferpick_gpu_pcie_link_width_ratio",
            "PCIe lanes in use over the most the GPU and its slot support (0..1)",
        );
        let gpu_pcie_generation = gpu_gauge(
            "inferpick_gpu_pcie_link_generation_ratio",
            "PCIe link generation in use over the highest supported (0..1; idle GPUs drop it to save power)",
        );
        let gpu_throttle = Family::<ThrottleLabels, FGauge>::default();
        registry.register(
            "inferpick_gpu_throttle_active",
            "1 for each reason that now holds the GPU's clocks down (sw-thermal, hw-thermal, hw-slowdown, hw-power-brake, sw-power-cap)",
            gpu_throttle.clone(),
        );
        let gpu_xid = Family::<XidLabels, FGauge>::default();
        registry.register(
            "inferpick_gpu_xid_errors",
            "1 for each XID error code the GPU raised since the agent started",
            gpu_xid.clone(),
        );
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
            gpu_lost,
            gpu_fatal,
            gpu_sm_clock,
            gpu_ecc,
            gpu_pages_pending,
            gpu_rows_pending,
            gpu_rows_failed,
            gpu_pcie_width,
            gpu_pcie_generation,
            gpu_throttle,
            gpu_xid,
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
            &self.gpu_lost,
            &self.gpu_fatal,
            &self.gpu_sm_clock,
            &self.gpu_ecc,
            &self.gpu_pages_pending,
            &self.gpu_rows_pending,
            &self.gpu_rows_failed,
            &self.gpu_pcie_width,
            &self.gpu_pcie_generation,
        ] {
            family.clear();
        }
        self.gpu_throttle.clear();
        self.gpu_xid.clear();
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
            if let Some(health) = &gpu.health {
                self.set_health(&labels, health);
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

    /// The health series of one GPU; a reading the report leaves out exports nothing.
    fn set_health(&self, labels: &GpuLabels, h: &GpuHealth) {
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        let ratio = |now: Option<u32>, max: Option<u32>| match (now, max) {
            (Some(now), Some(max)) if max > 0 => Some(f64::from(now) / f64::from(max)),
            _ => None,
        };
        for (family, value) in [
            (&self.gpu_lost, Some(flag(h.lost))),
            (&self.gpu_fatal, Some(flag(h.fatal().is_some()))),
            (
                &self.gpu_sm_clock,
                ratio(h.sm_clock_mhz, h.sm_clock_max_mhz),
            ),
            (&self.gpu_ecc, h.ecc_uncorrectable_errors.map(|n| n as f64)),
            (&self.gpu_pages_pending, h.retired_pages_pending.map(flag)),
            (&self.gpu_rows_pending, h.remapped_rows_pending.map(flag)),
            (&self.gpu_rows_failed, h.remapped_rows_failed.map(flag)),
            (
                &self.gpu_pcie_width,
                ratio(h.pcie_link_width, h.pcie_link_width_max),
            ),
            (
                &self.gpu_pcie_generation,
                ratio(h.pcie_link_generation, h.pcie_link_generation_max),
            ),
        ] {
            if let Some(v) = value {
                family.get_or_create(labels).set(v);
            }
        }
        for reason in &h.throttle {
            self.gpu_throttle
                .get_or_create(&ThrottleLabels {
                    endpoint: labels.endpoint.clone(),
                    gpu: labels.gpu.clone(),
                    uuid: labels.uuid.clone(),
                    reason: reason.as_str(),
                })
                .set(1.0);
        }
        for code in &h.xid_errors {
            self.gpu_xid
                .get_or_create(&XidLabels {
                    endpoint: labels.endpoint.clone(),
                    gpu: labels.gpu.clone(),
                    uuid: labels.uuid.clone(),
                    xid: code.to_string(),
                })
                .set(1.0);
        }
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
mod tests;
