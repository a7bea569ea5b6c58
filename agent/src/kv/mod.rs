//! Engine KV-cache events: read from the engine's ZeroMQ stream, mirrored, and pushed to every
//! picker as block keys of token ids (issue 12, token-exact prefix routing).
//!
//! - [`msgpack`]: a bounded MessagePack reader; [`wire`]: the engines' event batches.

pub mod metrics;
pub mod mirror;
pub mod msgpack;
pub mod push;
pub mod subscribe;
pub mod wire;
