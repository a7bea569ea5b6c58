//! Prefix and session affinity: which endpoint has probably cached which prompt blocks.
//!
//! The picker cannot see the engines' prefix caches, so it remembers its own decisions: a prompt is
//! cut into fixed-size blocks, each block's hash is chained with the previous one (so a hash names the
//! whole prefix up to it), and the blocks of every routed prompt are recorded for the endpoint that got
//! it. The table keeps one [`PrefixIndex`] per model (`table/affinity.rs`): engines key their caches
//! by model (and LoRA adapter) too, so one model's prompts never push out another's holders. A
//! session id is one more key in the same index.

mod index;

use std::hash::{DefaultHasher, Hash, Hasher};

use crate::hashing::chain;

pub use index::PrefixIndex;

/// Bytes per prompt block (64 characters of ASCII text).
pub const BLOCK_BYTES: usize = 64;

/// Most endpoints remembered per block, most recent kept. A prefix every endpoint holds (a shared
/// system prompt) says nothing about where to route, and an unbounded holder list would make every
/// lookup and insert walk the whole pool.
pub const HOLDERS_PER_BLOCK: usize = 32;

/// Chained hashes of the first `max_blocks` full blocks of `prompt`; a trailing partial block is not
/// hashed because engines do not cache partial blocks either. The lab's emulated engines key their
/// prefix caches with the same function.
pub fn block_hashes(prompt: &str, max_blocks: usize) -> Vec<u64> {
    let mut prev = 0u64;
    prompt
        .as_bytes()
        .chunks_exact(BLOCK_BYTES)
        .take(max_blocks)
        .map(|block| {
            prev = chain(prev, block);
            prev
        })
        .collect()
}

/// The index key of a session id; kept apart from block hashes by a domain prefix.
pub fn session_hash(session: &str) -> u64 {
    let mut h = DefaultHasher::new();
    "inferpick-session".hash(&mut h);
    session.hash(&mut h);
    h.finish()
}
