//! Token-exact prefix-cache state: the block keys both sides compute, and the KV-event message an
//! agent pushes to every picker (`POST /v1/kv-events`).
//!
//! Engines (vLLM, SGLang) publish which KV blocks they store and evict, naming each block by a hash
//! of their own (which depends on the engine's hash function and, for some, on `PYTHONHASHSEED`).
//! The agent does not forward those hashes: it recomputes every stored block's key from the block's
//! token ids with [`block_key`], chained from its parent's key, and the picker computes the same keys
//! from the prompt it tokenizes. Equal keys mean equal token prefixes, whatever the engine hashes.
//!
//! The message stream, per endpoint and per picker, is ordered by `seq`: each message carries the
//! changes since the previous one. A picker that sees a `seq` it did not expect (it restarted, a push
//! was lost) answers `409` and keeps the endpoint on its approximate index until the agent sends a
//! `reset` message: every block the engine holds now, replacing what the picker knew.

use serde::{Deserialize, Serialize};

use crate::report::{Limits, ValidationError, check_address};

/// The key of a base model's first block's parent (adapters get [`adapter_root`]).
pub const BASE_ROOT: u64 = 0x6b76_2d72_6f6f_7430;

/// The parent key of an adapter's first block: blocks cached under a LoRA adapter never match the
/// base model's (engines key their caches by adapter too).
pub fn adapter_root(adapter: &str) -> u64 {
    let mut h = BASE_ROOT;
    for chunk in adapter.as_bytes().chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        h = mix(h ^ u64::from_le_bytes(word));
    }
    mix(h ^ adapter.len() as u64)
}

/// The root for `adapter`, or [`BASE_ROOT`] for the base model.
pub fn root(adapter: Option<&str>) -> u64 {
    adapter.map_or(BASE_ROOT, adapter_root)
}

/// The key of one full block of `tokens`, chained from its parent's key (the root for a first block).
///
/// Stable: the agent and the picker may be built by different compilers and versions, so this is
/// written out here (splitmix64's finalizer over the token ids, two per step) rather than taken from
/// `std::hash`, whose algorithm may change.
pub fn block_key(parent: u64, tokens: &[u32]) -> u64 {
    let mut h = mix(parent ^ 0x9e37_79b9_7f4a_7c15 ^ (tokens.len() as u64));
    for pair in tokens.chunks(2) {
        let lo = u64::from(pair[0]);
        let hi = pair.get(1).map_or(u64::MAX << 32, |&t| u64::from(t) << 32);
        h = mix(h ^ lo ^ hi);
    }
    h
}

/// Keys of the leading full blocks of `tokens` (a partial last block is not cached by engines, so it
/// has no key), at most `max_blocks`.
pub fn block_keys(root: u64, tokens: &[u32], block_size: usize, max_blocks: usize) -> Vec<u64> {
    if block_size == 0 {
        return Vec::new();
    }
    let mut parent = root;
    tokens
        .chunks_exact(block_size)
        .take(max_blocks)
        .map(|block| {
            parent = block_key(parent, block);
            parent
        })
        .collect()
}

/// splitmix64's output function: every input bit moves every output bit.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Bounds a [`KvEvents`] message must keep.
#[derive(Debug, Clone, Copy)]
pub struct KvLimits;

impl KvLimits {
    /// Most block keys (stored and removed, over every group) in one message. A `reset` of a larger
    /// cache is sent as a reset message followed by ordinary ones.
    pub const MAX_KEYS: usize = 65_536;
    /// Most model groups in one message.
    pub const MAX_GROUPS: usize = Limits::MAX_ADAPTERS + 1;
    /// Largest block size, in tokens.
    pub const MAX_BLOCK_SIZE: u32 = 4096;
}

/// The state of an agent's subscription to its engine's KV events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvStreamState {
    /// Events arrive and are complete: the picker may route on them.
    Live,
    /// The engine published before but has been silent, or a gap could not be replayed and no
    /// reset has followed yet: the picker falls back to its approximate index for this endpoint.
    Stale,
}

/// `POST /v1/kv-events`: what changed in one endpoint's prefix cache since the previous message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KvEvents {
    /// Always [`crate::SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The endpoint, as in its load reports (`host:port`).
    pub endpoint: String,
    /// Names this agent's event stream; new at every agent start. A message from a stream the
    /// picker does not know must be a `reset`.
    pub stream: String,
    /// +1 per message on this stream to this picker.
    pub seq: u64,
    /// Whether the agent's view is complete and current.
    pub state: KvStreamState,
    /// Tokens per block: the block size the keys were computed with.
    pub block_size: u32,
    /// The picker drops everything it knew of this endpoint's blocks before applying this message.
    #[serde(default)]
    pub reset: bool,
    /// The engine dropped its whole cache (`AllBlocksCleared`), applied before `groups`.
    #[serde(default)]
    pub cleared: bool,
    /// Changes per model: one group for the base model and one per LoRA adapter with changes.
    #[serde(default)]
    pub groups: Vec<KvGroup>,
}

/// Blocks stored and removed under one model (the base model, or one adapter).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvGroup {
    /// The LoRA adapter's name, as the endpoint's report lists it; `None` for the base model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
    /// Keys ([`block_key`]) of blocks now held, in the order they were stored.
    #[serde(default)]
    pub stored: Vec<u64>,
    /// Keys of blocks no longer held.
    #[serde(default)]
    pub removed: Vec<u64>,
}

/// The picker's answer to a `KvEvents` push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvAck {
    /// The `seq` the picker expects next on this stream; when it is not the one just sent +1, the
    /// agent's next message must be a `reset`.
    pub next_seq: u64,
    /// The picker needs a `reset` (it did not know the stream, or saw a gap).
    pub resync: bool,
}

impl KvEvents {
    /// Checks the contract's rules; the error names the field.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let bad = |field: &str, problem: String| ValidationError {
            field: field.to_string(),
            problem,
        };
        if self.schema_version != crate::SCHEMA_VERSION {
            return Err(bad(
                "schema_version",
                format!(
                    "is {}, this picker reads version {}",
                    self.schema_version,
                    crate::SCHEMA_VERSION
                ),
            ));
        }
        check_address(&self.endpoint).map_err(|p| bad("endpoint", p))?;
        if self.stream.is_empty() || self.stream.len() > Limits::MAX_STRING_BYTES {
            return Err(bad(
                "stream",
                format!(
                    "must be 1 to {} bytes, is {}",
                    Limits::MAX_STRING_BYTES,
                    self.stream.len()
                ),
            ));
        }
        if self.block_size == 0 || self.block_size > KvLimits::MAX_BLOCK_SIZE {
            return Err(bad(
                "block_size",
                format!(
                    "must be 1 to {}, is {}",
                    KvLimits::MAX_BLOCK_SIZE,
                    self.block_size
                ),
            ));
        }
        if self.groups.len() > KvLimits::MAX_GROUPS {
            return Err(bad(
                "groups",
                format!(
                    "lists {} groups, at most {} are allowed",
                    self.groups.len(),
                    KvLimits::MAX_GROUPS
                ),
            ));
        }
        let mut keys = 0usize;
        for (i, g) in self.groups.iter().enumerate() {
            if let Some(a) = &g.adapter
                && (a.is_empty() || a.len() > Limits::MAX_STRING_BYTES)
            {
                return Err(bad(
                    &format!("groups[{i}].adapter"),
                    format!(
                        "must be 1 to {} bytes, is {}",
                        Limits::MAX_STRING_BYTES,
                        a.len()
                    ),
                ));
            }
            keys += g.stored.len() + g.removed.len();
        }
        if keys > KvLimits::MAX_KEYS {
            return Err(bad(
                "groups",
                format!(
                    "hold {keys} block keys, at most {} are allowed in one message",
                    KvLimits::MAX_KEYS
                ),
            ));
        }
        Ok(())
    }

    /// Block keys in this message, stored and removed.
    pub fn key_count(&self) -> usize {
        self.groups
            .iter()
            .map(|g| g.stored.len() + g.removed.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> KvEvents {
        KvEvents {
            schema_version: crate::SCHEMA_VERSION,
            endpoint: "10.0.0.1:8000".into(),
            stream: "agent-1".into(),
            seq: 1,
            state: KvStreamState::Live,
            block_size: 16,
            reset: true,
            cleared: false,
            groups: vec![KvGroup {
                adapter: None,
                stored: vec![1, 2, 3],
                removed: vec![],
            }],
        }
    }

    #[test]
    fn keys_chain_so_a_key_names_the_whole_prefix() {
        let a: Vec<u32> = (0..64).collect();
        let mut b = a.clone();
        b[3] = 999; // differs in the first block only
        let ka = block_keys(BASE_ROOT, &a, 16, usize::MAX);
        let kb = block_keys(BASE_ROOT, &b, 16, usize::MAX);
        assert_eq!(ka.len(), 4);
        assert!(ka.iter().zip(&kb).all(|(x, y)| x != y));
        // The same tokens under an adapter never match the base model.
        let kl = block_keys(root(Some("sql-lora")), &a, 16, usize::MAX);
        assert!(ka.iter().zip(&kl).all(|(x, y)| x != y));
        // A shared prefix gives shared leading keys.
        let mut c = a.clone();
        c[40] = 7;
        let kc = block_keys(BASE_ROOT, &c, 16, usize::MAX);
        assert_eq!(ka[..2], kc[..2]);
        assert_ne!(ka[2], kc[2]);
    }

    #[test]
    fn keys_are_stable_across_builds() {
        // Fixed values: agents and pickers built apart must agree, so the function may never change.
        assert_eq!(block_key(BASE_ROOT, &[1, 2, 3]), 0x4451_4728_2736_8839);
        assert_ne!(
            block_key(BASE_ROOT, &[1, 2]),
            block_key(BASE_ROOT, &[1, 2, 0])
        );
        assert_ne!(adapter_root("a"), adapter_root("a\0"));
    }

    #[test]
    fn partial_blocks_and_zero_block_size_have_no_key() {
        assert_eq!(block_keys(BASE_ROOT, &[1; 31], 16, usize::MAX).len(), 1);
        assert!(block_keys(BASE_ROOT, &[1; 31], 0, usize::MAX).is_empty());
        assert_eq!(block_keys(BASE_ROOT, &[1; 160], 16, 3).len(), 3);
    }

    #[test]
    fn validation_names_the_field() {
        assert!(message().validate().is_ok());
        let mut m = message();
        m.block_size = 0;
        assert_eq!(m.validate().unwrap_err().field, "block_size");
        let mut m = message();
        m.groups[0].stored = vec![0; KvLimits::MAX_KEYS + 1];
        assert_eq!(m.validate().unwrap_err().field, "groups");
        let mut m = message();
        m.groups[0].adapter = Some(String::new());
        assert_eq!(m.validate().unwrap_err().field, "groups[0].adapter");
        let mut m = message();
        m.endpoint = "nope".into();
        assert_eq!(m.validate().unwrap_err().field, "endpoint");
    }

    #[test]
    fn round_trips_through_json() {
        let m = message();
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains(r#""state":"live""#), "{json}");
        assert_eq!(crate::decode_json::<KvEvents>(json.as_bytes()).unwrap(), m);
    }
}
