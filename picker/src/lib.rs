//! inferpick's picker: ingests load reports and decides which endpoint serves each LLM request.
//!
//! Module map:
//! - [`table`]: the endpoint table (`Table`, `Snapshot`, `Endpoint`), staleness, restart and
//!   reordering detection, the in-flight estimate and `done` feedback. No I/O, time is an argument.
//! - [`prefix`]: the approximate prefix index (chained 64-byte block hashes, LRU per endpoint).
//! - [`scheduler`]: `Policy`, `Scheduler::pick` and the profiles (`inferpick`, `gie`,
//!   `least-request`, `round-robin`, `random`). No I/O, time is an argument.
pub mod prefix;
pub mod scheduler;
pub mod table;
