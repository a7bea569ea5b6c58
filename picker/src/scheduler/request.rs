//! The resolve stage: a [`PickRequest`] validated and turned into what the later stages read —
//! the model after rewrites, the priority, the prompt's size and block hashes, the session key.
//! Resolved once per pick: every later stage (and a shed re-check) sees the same answer.

use std::borrow::Cow;

use inferpick_schema::PickRequest;
use rand::Rng;
use rand::rngs::SmallRng;

use super::profile::Reads;
use super::{PickError, RewriteTarget, SchedulerConfig};
use crate::prefix::{BLOCK_BYTES, block_hashes, session_hash};
use inferpick_schema::kv::block_keys;

/// Tokens per block when the approximate index keys a prompt given as token ids.
const TOKEN_BLOCK: usize = 16;
/// Their chain's root, apart from the exact index's roots.
const TOKEN_ROOT: u64 = 0x6170_7072_6f78_2d74;
use crate::table::{ModelKey, Snapshot};

/// Most entries in `candidates` or `exclude`.
const MAX_ADDRESS_LIST: usize = 4096;

/// What one request asks, resolved.
#[derive(Debug)]
pub(crate) struct ResolvedRequest<'r> {
    /// The model endpoints must serve (after rewrites).
    pub(crate) model: &'r str,
    pub(crate) model_key: ModelKey,
    pub(crate) priority: i32,
    /// The prompt's tokens, as sent or estimated.
    pub(crate) prompt_tokens: u64,
    /// Chained hashes of the prompt's leading blocks for the approximate index (empty when the
    /// profile does not read them).
    pub(crate) blocks: Vec<u64>,
    /// Prompt tokens one approximate block stands for.
    pub(crate) tokens_per_block: f64,
    /// The prompt's leading token ids, for the token-exact index: as sent, or from the model's
    /// tokenizer (empty when neither, or when the profile does not read the prefix).
    pub(crate) tokens: Cow<'r, [u32]>,
    /// The session's key (when the profile reads it).
    pub(crate) session: Option<u64>,
    /// Endpoints to choose among, when the request names them.
    pub(crate) candidates: Option<&'r [String]>,
    /// Endpoints not to choose.
    pub(crate) exclude: &'r [String],
    /// How many endpoints to return: the chosen one and its fallbacks.
    pub(crate) endpoints: usize,
}

/// Validates `r` and resolves it. `model` is where the resolved name lives (borrowed by the result).
pub(crate) fn resolve<'r>(
    config: &SchedulerConfig,
    reads: Reads,
    r: &'r PickRequest,
    model: &'r str,
) -> Result<ResolvedRequest<'r>, PickError> {
    let cost = &config.cost;
    let ids = r.prompt_token_ids.as_deref();
    let prompt_tokens = r
        .prompt_tokens
        .map(u64::from)
        .or_else(|| ids.map(|t| t.len() as u64))
        .or_else(|| {
            r.prompt
                .as_ref()
                .map(|p| (p.len() as f64 / cost.chars_per_token).ceil() as u64)
        })
        .unwrap_or(cost.default_prompt_tokens);
    let max_tokens = config.prefix_max_tokens;
    let tokenizer = config.tokenizers.get(model);
    let tokens: Cow<'r, [u32]> = match (ids, tokenizer) {
        _ if !reads.prefix => Cow::Borrowed(&[]),
        (Some(ids), _) => Cow::Borrowed(&ids[..ids.len().min(max_tokens)]),
        (None, Some(t)) => {
            // A chat request is rendered with the model's template, as its engine renders it;
            // without a template its text is tokenized as a completion prompt.
            let chat = r
                .messages
                .as_deref()
                .and_then(|m| t.chat_tokens(m, max_tokens));
            match (chat, &r.prompt) {
                (Some(ids), _) => Cow::Owned(ids),
                (None, Some(p)) => Cow::Owned(t.leading_tokens(p, max_tokens)),
                (None, None) => Cow::Borrowed(&[]),
            }
        }
        (None, None) => Cow::Borrowed(&[]),
    };
    // A prompt the tokenizer read whole (under the lookup bound) has an exact length: better than
    // a characters-per-token estimate, which would misprice its uncached part against the exact
    // cached tokens.
    let prompt_tokens = match (r.prompt_tokens, ids) {
        (None, None) if !tokens.is_empty() && tokens.len() < max_tokens => tokens.len() as u64,
        _ => prompt_tokens,
    };
    // The approximate index keys text by 64-byte blocks and token ids by the engines' usual
    // 16-token blocks; either stands for about 16 tokens.
    let (blocks, tokens_per_block) = match (&r.prompt, ids) {
        _ if !reads.prefix => (Vec::new(), 1.0),
        (Some(p), _) => (
            block_hashes(p, config.prefix_max_blocks),
            BLOCK_BYTES as f64 / cost.chars_per_token,
        ),
        (None, Some(ids)) => (
            block_keys(TOKEN_ROOT, ids, TOKEN_BLOCK, config.prefix_max_blocks),
            TOKEN_BLOCK as f64,
        ),
        (None, None) => (Vec::new(), 1.0),
    };
    let session = r
        .session
        .as_deref()
        .filter(|_| reads.session)
        .map(session_hash);
    Ok(ResolvedRequest {
        model,
        model_key: ModelKey::of(model),
        priority: priority(config, r)?,
        prompt_tokens,
        blocks,
        tokens_per_block,
        tokens,
        session,
        candidates: r.candidates.as_deref(),
        exclude: r.exclude.as_deref().unwrap_or(&[]),
        endpoints: r
            .fallbacks
            .unwrap_or(inferpick_schema::pick::DEFAULT_FALLBACKS) as usize
            + 1,
    })
}

/// Checks the request's bounds and names the model it is for, after rewrites (drawn once, here).
pub(crate) fn model<'r>(
    config: &SchedulerConfig,
    snapshot: &Snapshot,
    r: &'r PickRequest,
    rng: &mut SmallRng,
) -> Result<Cow<'r, str>, PickError> {
    if let Some(n) = r.fallbacks
        && n > config.max_fallbacks
    {
        return Err(PickError::invalid(
            "fallbacks",
            format!("{n}: at most {} allowed", config.max_fallbacks),
        ));
    }
    for (field, list) in [("candidates", &r.candidates), ("exclude", &r.exclude)] {
        if let Some(l) = list
            && l.len() > MAX_ADDRESS_LIST
        {
            return Err(PickError::invalid(
                field,
                format!("{} entries: at most {MAX_ADDRESS_LIST} allowed", l.len()),
            ));
        }
    }
    let requested = match &r.model {
        Some(m) if m.is_empty() => {
            return Err(PickError::invalid("model", "empty: name a model"));
        }
        Some(m) => Cow::Borrowed(m.as_str()),
        None => Cow::Owned(only_model(snapshot)?),
    };
    Ok(match config.rewrites.get(&*requested) {
        Some(targets) => weighted(targets, rng).map_or(requested, |t| Cow::Owned(t.to_string())),
        None => requested,
    })
}

fn priority(config: &SchedulerConfig, r: &PickRequest) -> Result<i32, PickError> {
    Ok(match (&r.objective, r.priority) {
        (_, Some(p)) => p,
        (Some(name), None) => *config.objectives.get(name).ok_or_else(|| {
            let mut known: Vec<&str> = config.objectives.keys().map(String::as_str).collect();
            known.sort_unstable();
            PickError::invalid(
                "objective",
                format!(
                    "{name:?} is not a configured objective (configured: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            )
        })?,
        (None, None) => 0,
    })
}

/// The one base model of the table, when the request names none.
fn only_model(snapshot: &Snapshot) -> Result<String, PickError> {
    let mut found: Option<&str> = None;
    let mut others: Vec<&str> = Vec::new();
    for e in snapshot.iter() {
        for m in e.report.models.iter().filter(|m| m.adapter_of.is_none()) {
            match found {
                None => found = Some(&m.name),
                Some(f) if f == m.name => {}
                Some(_) => {
                    if others.len() < 4 && !others.contains(&m.name.as_str()) {
                        others.push(&m.name);
                    }
                }
            }
        }
    }
    match (found, others.is_empty()) {
        (Some(m), true) => Ok(m.to_string()),
        (Some(m), false) => Err(PickError::invalid(
            "model",
            format!(
                "required: the table holds several models ({m}, {}…)",
                others.join(", ")
            ),
        )),
        (None, _) => Err(PickError::NoReadyEndpoint {
            model: String::new(),
            reason: "the table holds no model yet (no agent has reported one)".into(),
        }),
    }
}

fn weighted<'t>(targets: &'t [RewriteTarget], rng: &mut SmallRng) -> Option<&'t str> {
    let total: u64 = targets.iter().map(|t| u64::from(t.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut x = rng.random_range(0..total);
    for t in targets {
        if x < u64::from(t.weight) {
            return Some(&t.model);
        }
        x -= u64::from(t.weight);
    }
    None
}
