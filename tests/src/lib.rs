//! Helpers for inferpick's cross-process tests: real binaries, real Prometheus, nginx, Envoy and
//! the Kubernetes tooling, all on loopback.
//!
//! - [`tool`]: find an external program (env override, `PATH`, `<repo>/.venv/bin`) or skip the test
//!   with one line naming the install command (fail instead when `INFERPICK_REQUIRE_E2E=1`).
//! - [`child`]: a child process that is stopped on drop, even on panic, and prints its log when the
//!   test failed.
//! - [`scratch`]: a temporary directory removed on drop (kept, and named, when the test failed).
//! - [`port`]: free loopback ports.
//! - [`wait`]: readiness polling with a deadline (the only way tests wait).
//! - [`prometheus`]: a real Prometheus scraping given targets, and its HTTP query API.
//! - [`promql`]: the metric names a PromQL expression reads.
//! - [`contract`]: the metric names of CONTRACTS.md.
//! - [`fleet`]: emulated engines, agents and pickers in this process, and a gateway's calls.
//! - [`bins`]: the workspace's binaries, built next to the tests when missing.
//! - [`procs`]: engines, agents and pickers as real processes that can be killed and restarted.
//! - [`stall`]: a loopback HTTP server that answers late or never.
//! - [`synth`]: synthetic load reports, and readings of a picker's `/metrics`.
//! - [`grafana`]: the queries and variables of dashboards, the rules of rules files.
//! - [`kube`]: rendering kustomizations and validating manifests (`kubernetes-validate`, CRD schemas,
//!   `yamllint`).
//! - [`kustomize`]: a strict renderer for the kustomize subset `deploy/` uses, where no kustomize is
//!   installed.

pub mod bins;
pub mod child;
pub mod contract;
pub mod fleet;
pub mod grafana;
pub mod kube;
pub mod kustomize;
pub mod port;
pub mod procs;
pub mod prometheus;
pub mod promql;
pub mod scratch;
pub mod stall;
pub mod synth;
pub mod tool;
pub mod wait;

pub use child::ChildGuard;
pub use port::free_port;
pub use scratch::ScratchDir;
pub use tool::Tool;
pub use wait::{wait_until, wait_until_async, wait_until_async_every};

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The repository root (the workspace directory), whatever directory the test runs in.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives one level below the workspace root")
        .to_path_buf()
}

/// An HTTP client for tests, with a whole-request `timeout`. Idle pooled connections are dropped
/// after 5 s, well inside the picker's and the agent's 10 s idle close: a request sent on a
/// connection the server is closing at that moment fails at the socket, which is the client's
/// race to avoid (as every gateway's keep-alive timeout below its upstream's does).
pub fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(5))
        .build()
        .expect("a plain HTTP client builds")
}
