//! inferpick-agent: the sidecar that turns a model server's metrics and GPUs into load reports.
pub mod dialect;
pub mod expo;
pub mod rates;
