//! inferpick-lab: an emulated fleet, a simulator that runs the picker's real scheduler, a load
//! generator and the demo.
//!
//! - [`engine`]: the model-server model (continuous batching, paged KV, prefix cache, LoRA slots).
pub mod engine;
