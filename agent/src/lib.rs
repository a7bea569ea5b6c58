//! inferpick-agent: the sidecar that turns a model server's metrics and GPUs into load reports
//! and pushes them to every inferpick picker.
//!
//! - [`expo`]: Prometheus text parser (names with `:`, escapes, OpenMetrics).
//! - [`dialect`]: each engine's metric names mapped to one reading; [`rates`] turns counters into
//!   rates; [`collect`] makes a scrape's outcome (or failure) into the report's engine and load.
//! - [`engine`]: HTTP to the engine, bounded in time and bytes.
//! - [`gpu`]: which GPUs are the pod's (kubelet pod-resources API) and what NVML says of them.
//! - [`push`]: one task per picker target, fed the latest report; [`report`] stamps reports;
//!   [`tls`]: rustls for `https://` pickers and `--ca-file`.
//! - [`metrics`] and [`http`]: the agent's own `/metrics`, `/healthz`, `/readyz`, `/v1/report`;
//!   [`listener`]: the accept loop that bounds every connection in time and size.
//! - [`kv`]: the engine's KV-cache events, mirrored and pushed to pickers as block keys.
//! - [`service`]: the loop that ties them together; [`run`] is the whole agent from its flags.

pub mod cli;
pub mod collect;
pub mod config;
pub mod dialect;
pub mod engine;
pub mod expo;
pub mod gpu;
pub mod http;
pub mod kv;
pub mod listener;
pub mod metrics;
pub mod push;
pub mod rates;
pub mod report;
pub mod service;
pub mod tls;

use std::future::Future;

pub use cli::Args;
pub use config::Config;
pub use service::{AgentError, once, serve, serve_with};

/// Runs the agent from its flags until `shutdown` resolves: resolves the configuration, binds
/// `--listen` and serves. (`--once` is [`once`]; `main` handles it before calling this.)
pub async fn run(
    args: Args,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    let config = Config::from_args(&args).map_err(AgentError::Config)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| AgentError::Listen {
            addr: config.listen.to_string(),
            source,
        })?;
    serve(config, listener, shutdown).await
}
