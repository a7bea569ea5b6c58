//! inferpick-lab: an emulated fleet, a simulator that runs the picker's real scheduler, a load
//! generator and the demo.
//!
//! - [`engine`]: the model-server model (continuous batching, paged KV, prefix cache, LoRA slots).
//! - [`workload`]: built-in and YAML workloads, and the deterministic request generator.
pub mod engine;
pub mod workload;
