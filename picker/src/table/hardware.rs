//! What an endpoint runs on, as its report says (GPU product, count, tensor parallelism), and how
//! fast that is relative to one H100 SXM: the prior of its capacity until its own reports (or its
//! hardware class's) have shown it, and the class whose endpoints share one estimate.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use inferpick_schema::LoadReport;

/// Relative speeds of known GPUs against the H100 SXM: `(name contains, compute, bandwidth)`.
/// Compute is dense BF16 tensor TFLOPS (prefill is compute-bound), bandwidth is HBM/GDDR TB/s
/// (decode is memory-bound), both from NVIDIA's data sheets. The first entry whose pattern the
/// product name contains wins, so the more specific names come first.
const GPUS: &[(&str, f64, f64)] = &[
    ("B200", 2250.0, 8.0),
    ("H200", 989.0, 4.8),
    ("H100 PCIe", 756.0, 2.0),
    ("H100 NVL", 835.0, 3.9),
    ("H100", 989.0, 3.35),
    ("H800", 989.0, 3.35),
    ("H20", 148.0, 4.0),
    ("GH200", 989.0, 4.0),
    ("A100-SXM4-40GB", 312.0, 1.555),
    ("A100-PCIE-40GB", 312.0, 1.555),
    ("A100", 312.0, 2.0),
    ("A800", 312.0, 2.0),
    ("L40S", 362.0, 0.864),
    ("L40", 181.0, 0.864),
    ("A10G", 70.0, 0.6),
    ("A10", 125.0, 0.6),
    ("L4", 121.0, 0.3),
    ("T4", 65.0, 0.32),
    ("V100", 125.0, 0.9),
];

/// The H100 SXM's figures, the unit of [`Hardware::compute`] and [`Hardware::bandwidth`].
const REFERENCE: (f64, f64) = (989.0, 3.35);

/// Each GPU past the first adds this much of one GPU's speed (tensor-parallel all-reduce and
/// imperfect splitting cost the rest).
const EXTRA_GPU_EFFICIENCY: f64 = 0.85;

/// An endpoint's hardware class and its relative speed.
#[derive(Debug, Clone, PartialEq)]
pub struct Hardware {
    /// `NVIDIA H100 80GB HBM3 ×2 tp2`, or `unknown` when the report names no GPU.
    pub label: String,
    /// Identity of the class: endpoints with equal keys share capacity estimates.
    pub(crate) key: u64,
    /// Prefill speed relative to one H100 SXM (1 when the GPU is unknown).
    pub compute: f64,
    /// Decode speed relative to one H100 SXM (1 when the GPU is unknown).
    pub bandwidth: f64,
}

impl Hardware {
    /// The hardware a report describes: its first GPU's product name, its GPU count and tensor
    /// parallel size. A report without GPUs is of class `unknown`, at the reference speed: the
    /// estimates its own reports give then decide alone.
    pub fn of(report: &LoadReport) -> Self {
        let gpus = report.gpus.len() as u32;
        let name = report.gpus.iter().find_map(|g| g.name.as_deref());
        let tp = report.engine.tensor_parallel_size;
        let Some(name) = name else {
            return Self::unknown(tp);
        };
        let (compute, bandwidth) = GPUS
            .iter()
            .find(|(pattern, ..)| contains_word(name, pattern))
            .map_or((1.0, 1.0), |&(_, c, b)| (c / REFERENCE.0, b / REFERENCE.1));
        // A replica spans its tensor-parallel group; without the engine saying, all the pod's GPUs.
        let span = tp.unwrap_or(gpus).max(1);
        let scale = 1.0 + EXTRA_GPU_EFFICIENCY * f64::from(span - 1);
        let label = match (gpus, tp) {
            (1, None | Some(1)) => name.to_string(),
            (n, None) => format!("{name} ×{n}"),
            (n, Some(t)) => format!("{name} ×{n} tp{t}"),
        };
        Self {
            key: key_of(&label),
            label,
            compute: compute * scale,
            bandwidth: bandwidth * scale,
        }
    }

    /// Whether two reports describe the same hardware (what [`Hardware::of`] reads is equal), so
    /// that the usual report reuses its predecessor's class without formatting it again.
    pub(crate) fn same(a: &LoadReport, b: &LoadReport) -> bool {
        a.gpus.len() == b.gpus.len()
            && a.engine.tensor_parallel_size == b.engine.tensor_parallel_size
            && a.gpus.iter().find_map(|g| g.name.as_deref())
                == b.gpus.iter().find_map(|g| g.name.as_deref())
    }

    fn unknown(tp: Option<u32>) -> Self {
        let label = match tp {
            None | Some(1) => "unknown".to_string(),
            Some(t) => format!("unknown tp{t}"),
        };
        Self {
            key: key_of(&label),
            label,
            compute: 1.0,
            bandwidth: 1.0,
        }
    }
}

fn key_of(label: &str) -> u64 {
    let mut h = DefaultHasher::new();
    label.hash(&mut h);
    h.finish()
}

/// Whether `name` contains `pattern` not followed by an alphanumeric character (`A10` is not in
/// `A100`, `L4` not in `L40S`).
fn contains_word(name: &str, pattern: &str) -> bool {
    name.match_indices(pattern).any(|(i, _)| {
        !name[i + pattern.len()..]
            .chars()
            .next()
            .is_some_and(char::is_alphanumeric)
    })
}

/// What the report's GPUs say of their health: the slowest GPU's speed (see
/// [`GpuHealth::speed`](inferpick_schema::GpuHealth::speed)) and, when a GPU has a fatal
/// condition, which one and why.
pub(crate) fn gpu_condition(report: &LoadReport) -> (f64, Option<Arc<str>>) {
    let mut speed: f64 = 1.0;
    let mut failure = None;
    for g in &report.gpus {
        let Some(h) = &g.health else { continue };
        speed = speed.min(h.speed());
        if failure.is_none()
            && let Some(why) = h.fatal()
        {
            failure = Some(Arc::from(format!("{}: {why}", g.uuid)));
        }
    }
    (speed, failure)
}

/// An operator's fixed prefill rate for the endpoints one rule matches (`capacity.pins`).
#[derive(Debug, Clone, PartialEq)]
pub struct CapacityPin {
    /// Which endpoints.
    pub matches: PinMatch,
    /// Their prefill rate at full clock, tokens/s.
    pub prefill_tokens_per_second: f64,
}

/// What a pin matches.
#[derive(Debug, Clone, PartialEq)]
pub enum PinMatch {
    /// One endpoint, by `host:port`.
    Address(String),
    /// Endpoints whose pod name starts with this.
    PodPrefix(String),
    /// Endpoints whose first GPU has exactly this product name (`NVIDIA L4`).
    Gpu(String),
}

impl CapacityPin {
    /// The first pin in `pins` that matches `report`'s endpoint, as a rate.
    pub(crate) fn find(pins: &[CapacityPin], report: &LoadReport) -> Option<f64> {
        pins.iter()
            .find(|p| match &p.matches {
                PinMatch::Address(a) => *a == report.endpoint.address,
                PinMatch::PodPrefix(prefix) => report
                    .endpoint
                    .pod
                    .as_deref()
                    .is_some_and(|pod| pod.starts_with(prefix.as_str())),
                PinMatch::Gpu(name) => {
                    report.gpus.first().and_then(|g| g.name.as_deref()) == Some(name.as_str())
                }
            })
            .map(|p| p.prefill_tokens_per_second)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use inferpick_schema::testing::{ReportBuilder, gpu};

    fn hardware(names: &[&str], tp: Option<u32>) -> Hardware {
        let gpus = names
            .iter()
            .enumerate()
            .map(|(i, n)| inferpick_schema::Gpu {
                name: Some(n.to_string()),
                ..gpu(i as u32)
            })
            .collect();
        let mut r = ReportBuilder::new("10.0.0.1:8000").gpus(gpus).build();
        r.engine.tensor_parallel_size = tp;
        Hardware::of(&r)
    }

    #[test]
    fn nvml_product_names_map_to_their_speeds() {
        let h100 = hardware(&["NVIDIA H100 80GB HBM3"], None);
        assert_eq!((h100.compute, h100.bandwidth), (1.0, 1.0));
        assert_eq!(h100.label, "NVIDIA H100 80GB HBM3");
        let a100 = hardware(&["NVIDIA A100-SXM4-80GB"], None);
        assert!((a100.compute - 312.0 / 989.0).abs() < 1e-9);
        let l4 = hardware(&["NVIDIA L4"], None);
        assert!((l4.bandwidth - 0.3 / 3.35).abs() < 1e-9, "L4 is not L40S");
        let l40s = hardware(&["NVIDIA L40S"], None);
        assert!((l40s.compute - 362.0 / 989.0).abs() < 1e-9);
        let a10 = hardware(&["NVIDIA A10"], None);
        assert!(
            (a10.compute - 125.0 / 989.0).abs() < 1e-9,
            "A10 is not A100"
        );
        let odd = hardware(&["Some Future GPU"], None);
        assert_eq!((odd.compute, odd.bandwidth), (1.0, 1.0));
        assert_ne!(odd.key, h100.key);
    }

    #[test]
    fn tensor_parallel_groups_are_their_own_class_and_faster() {
        let one = hardware(&["NVIDIA H100 80GB HBM3"], None);
        let tp2 = hardware(&["NVIDIA H100 80GB HBM3"; 2], Some(2));
        assert_eq!(tp2.label, "NVIDIA H100 80GB HBM3 ×2 tp2");
        assert_ne!(tp2.key, one.key);
        assert!((tp2.compute - 1.85).abs() < 1e-9);
        let no_gpu = Hardware::of(&ReportBuilder::new("10.0.0.1:8000").build());
        assert_eq!(no_gpu.label, "unknown");
    }
}
