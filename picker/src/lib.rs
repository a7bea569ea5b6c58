//! inferpick's picker: ingests load reports and decides which endpoint serves each LLM request.
//!
//! Module map:
//! - [`table`]: the endpoint table (`Table`, `Snapshot`, `Endpoint`), staleness, restart and
//!   reordering detection, the in-flight estimate and `done` feedback. No I/O, time is an argument.
//! - [`prefix`]: the approximate prefix index (chained 64-byte block hashes, LRU per endpoint).
//! - [`scheduler`]: `Policy`, `Scheduler::pick` and the profiles (`inferpick`, `gie`,
//!   `least-request`, `round-robin`, `random`). No I/O, time is an argument.
//! - [`config`]: flags (`Args`) over the YAML file, resolved and validated into `Settings`.
//! - [`service`]: `AppState` (table, scheduler, tokens, metrics), config reload, and [`run`].
//! - [`http`]: `router(state)` — the HTTP API, its body limits, authentication and errors.
//! - [`extproc`]: the Gateway API Inference Extension's endpoint-picker protocol (Envoy ext_proc)
//!   on `--grpc-listen`, with the gRPC health service.
//! - [`metrics`]: the `inferpick_picker_*` families in an explicit registry.
//! - [`server`]: accepting connections on both listeners, TLS, and the timeouts that bound what a
//!   client controls (handshakes, request heads, bodies, idle connections).
//! - [`trust`]: which peer may report for which endpoint (`--trusted-proxies`).
//! - [`tls`]: the certificate and key of `--tls-cert`/`--tls-key`.
//!
//! The library and the service share one rule: the scheduler reads no clock and does no I/O, so the
//! lab's simulator drives exactly the code the service runs.
pub mod clock;
pub mod config;
pub mod error;
pub mod extproc;
pub mod front;
pub mod http;
pub mod metrics;
pub mod prefix;
pub mod scheduler;
pub mod server;
pub mod service;
pub mod state;
pub mod table;
pub mod tls;
pub mod trust;

pub use clock::Clock;
pub use config::{Args, Settings};
pub use http::router;
pub use service::{RunError, run, serve};
pub use state::AppState;
