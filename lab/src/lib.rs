//! inferpick-lab: an emulated fleet, a simulator that runs the picker's real scheduler, a load
//! generator and the demo.
//!
//! - [`bench`]: the bake-off against peer routers, each on a fresh identical fleet.
//! - [`cli`]: the command line (subcommands and flags of CONTRACTS.md).
//! - [`demo`]: the whole fleet on loopback, the built-in gateway, and the comparison.
//! - [`emulate`]: one emulated model server (OpenAI API, `/metrics` in seven dialects), real time.
//! - [`engine`]: the model-server model (continuous batching, paged KV, prefix cache, LoRA slots).
//! - [`load`]: the open-loop load generator (streams, TTFT from the first token, errors by status).
//! - [`sim`]: the discrete-event simulator with the picker's real scheduler, the oracle, capacity.
//! - [`workload`]: built-in and YAML workloads, and the deterministic request generator.
pub mod bench;
pub mod cli;
pub mod demo;
pub mod emulate;
pub mod engine;
pub mod load;
pub mod sim;
pub mod tokenizer;
pub mod workload;
