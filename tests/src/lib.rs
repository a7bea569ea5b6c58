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
//! - [`grafana`]: the queries and variables of dashboards, the rules of rules files.
//! - [`kube`]: rendering kustomizations and validating manifests (`kubernetes-validate`, CRD schemas,
//!   `yamllint`).
//! - [`kustomize`]: a strict renderer for the kustomize subset `deploy/` uses, where no kustomize is
//!   installed.

pub mod child;
pub mod contract;
pub mod fleet;
pub mod grafana;
pub mod kube;
pub mod kustomize;
pub mod port;
pub mod prometheus;
pub mod promql;
pub mod scratch;
pub mod tool;
pub mod wait;

pub use child::ChildGuard;
pub use port::free_port;
pub use scratch::ScratchDir;
pub use tool::Tool;
pub use wait::{wait_until, wait_until_async};

use std::path::{Path, PathBuf};

/// The repository root (the workspace directory), whatever directory the test runs in.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives one level below the workspace root")
        .to_path_buf()
}
