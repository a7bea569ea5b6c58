//! inferpick's wire types, shared by the agent, the picker and the lab.
//!
//! - [`report`]: the `LoadReport` an agent pushes (schema version 1) and its validation.
//! - [`pick`]: the picker API's `PickRequest`, `Decision`, `Done` and error body.
//! - [`kv`]: the block keys of token-exact prefix routing and the `KvEvents` message agents push.
//! - [`health`]: a GPU's health (throttling, XID and ECC errors, link state) and what counts as fatal.
//! - [`decode`]: JSON decoding whose errors name the field that was wrong.
//! - `testing` (feature `testing`): valid reports and GPUs, and a builder, for other crates' tests.

pub mod decode;
pub mod health;
pub mod kv;
pub mod pick;
pub mod report;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use decode::{DecodeError, decode_json, decode_reports};
pub use health::{FATAL_XIDS, GpuHealth, ThrottleReason};
pub use kv::{KvAck, KvEvents, KvGroup, KvLimits, KvStreamState};
pub use pick::{ChatMessage, Decision, DoneRequest, ErrorBody, PickRequest};
pub use report::{
    Adapters, AgentInfo, EndpointInfo, EngineKind, EngineStatus, Gpu, Limits, Load, LoadReport,
    ModelEntry, SCHEMA_VERSION, ValidationError,
};
