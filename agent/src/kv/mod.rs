//! Engine KV-cache events: read from the engine's ZeroMQ stream, mirrored, and pushed to every
//! picker as block keys of token ids (issue 12, token-exact prefix routing).
//!
//! - [`msgpack`]: a bounded MessagePack reader; [`wire`]: the engines' event batches.
//! - [`subscribe`]: the ZeroMQ subscription, sequence tracking and gap replay.
//! - [`mirror`]: the engine hash → block key mirror and the change log every picker reads.
//! - [`push`]: `POST /v1/kv-events` to every picker; [`metrics`]: `inferpick_agent_kv_events_*`.

pub mod metrics;
pub mod mirror;
pub mod msgpack;
pub mod push;
pub mod subscribe;
pub mod wire;
