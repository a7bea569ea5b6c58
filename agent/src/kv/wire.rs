//! The engines' KV-event wire format: ZeroMQ multipart `[topic, seq, payload]`, the payload a
//! msgpack `KVEventBatch` of msgspec structs.
//!
//! Every shape found in the engines' own sources is read:
//!
//! | source | batch | events |
//! |---|---|---|
//! | vLLM `vllm/distributed/kv_events.py` at b4e69e0a (first release with events) | `[ts, events]` | arrays: `["BlockStored", hashes, parent, token_ids, block_size, lora_id]`, `["BlockRemoved", hashes]`, `["AllBlocksCleared"]` |
//! | vLLM releases between (`medium`, `lora_name`, `data_parallel_rank` added) | `[ts, events, dp_rank]` | arrays, `medium` and `lora_name` appended, optional trailing fields omitted when default |
//! | vLLM at 0181ea31 (current; msgspec structs without `array_like`) | `[ts, events, dp_rank]` or a map | maps keyed by field name with `"type"` as the tag, plus `extra_keys`, `group_idx`, `kv_cache_spec_*` |
//! | SGLang `python/sglang/srt/disaggregation/kv_events.py` at 006d053f and 612d5790 | `[ts, events]`, later `[ts, events, attn_dp_rank]` | arrays as vLLM's first |
//!
//! The block size is positional in the array form, so vLLM's early `num_toks_per_block` name reads
//! the same; in the map form both names are accepted. Block hashes are integers (unsigned 64-bit,
//! or negative: SGLang uses Python's `hash`) or byte strings (vLLM's `ExternalBlockHash` may be
//! `bytes`): each becomes a `u64` that names the block in the agent's mirror, never on the wire.

use super::msgpack::{DecodeError, Int, Kind, Reader};

/// Largest payload decoded; a larger one is refused whole.
pub const MAX_PAYLOAD_BYTES: usize = 8 << 20;
/// Most events in one batch.
pub const MAX_EVENTS: usize = 65_536;
/// Most block hashes over one batch's events.
pub const MAX_HASHES: usize = 262_144;
/// Most token ids over one batch's events.
pub const MAX_TOKENS: usize = 2 << 20;
/// Longest string kept from an event (medium, adapter name).
pub const MAX_NAME_BYTES: usize = 512;

/// A `KVEventBatch`.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// The engine's timestamp, seconds since the epoch.
    pub ts: f64,
    /// The events, in order.
    pub events: Vec<Event>,
    /// The data-parallel rank that published it, when the engine says.
    pub dp_rank: Option<i64>,
}

/// One event of a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `BlockStored`.
    Stored(Stored),
    /// `BlockRemoved`.
    Removed(Removed),
    /// `AllBlocksCleared`.
    Cleared,
    /// An event this agent does not know, skipped; its tag is kept for the count.
    Unknown(String),
}

/// `BlockStored`: full blocks now held, each chained from the previous (the first from `parent`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Stored {
    /// Engine hashes of the blocks, in chain order.
    pub hashes: Vec<u64>,
    /// Engine hash of the first block's parent; `None` for a first block.
    pub parent: Option<u64>,
    /// Token ids of every block, `block_size` per block.
    pub token_ids: Vec<u32>,
    /// Tokens per block.
    pub block_size: u32,
    /// The LoRA adapter's engine id (deprecated by vLLM for `lora_name`).
    pub lora_id: Option<i64>,
    /// The LoRA adapter's name.
    pub lora_name: Option<String>,
    /// Where the blocks live (`GPU`, `CPU`, …); absent in older versions, meaning the GPU.
    pub medium: Option<String>,
    /// The KV-cache group (hybrid models have several); absent means the only one.
    pub group_idx: Option<u64>,
}

/// `BlockRemoved`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Removed {
    /// Engine hashes of the blocks evicted.
    pub hashes: Vec<u64>,
    /// Where they were.
    pub medium: Option<String>,
    /// The KV-cache group.
    pub group_idx: Option<u64>,
}

/// Running totals that keep one batch within the module's bounds.
#[derive(Default)]
struct Budget {
    hashes: usize,
    tokens: usize,
}

impl Budget {
    fn spend(&mut self, r: &Reader<'_>, hashes: usize, tokens: usize) -> Result<(), DecodeError> {
        self.hashes += hashes;
        self.tokens += tokens;
        if self.hashes > MAX_HASHES {
            return Err(r.error(format!("batch holds more than {MAX_HASHES} block hashes")));
        }
        if self.tokens > MAX_TOKENS {
            return Err(r.error(format!("batch holds more than {MAX_TOKENS} token ids")));
        }
        Ok(())
    }
}

/// Decodes one payload. Errors say what was wrong and where; nothing is partly decoded.
pub fn decode(payload: &[u8]) -> Result<Batch, DecodeError> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(DecodeError {
            offset: 0,
            problem: format!(
                "payload is {} bytes, at most {MAX_PAYLOAD_BYTES} are read",
                payload.len()
            ),
        });
    }
    let mut r = Reader::new(payload);
    let mut budget = Budget::default();
    let batch = match r.peek()? {
        Kind::Array => {
            let n = r.array()?;
            if !(2..=16).contains(&n) {
                return Err(r.error(format!("batch array has {n} fields, expected 2 or 3")));
            }
            let ts = r.float()?;
            let events = events(&mut r, &mut budget)?;
            let dp_rank = if n > 2 { opt_int(&mut r)? } else { None };
            for _ in 3..n {
                r.skip()?;
            }
            Batch {
                ts,
                events,
                dp_rank,
            }
        }
        Kind::Map => {
            let n = r.map()?;
            let (mut ts, mut evs, mut dp_rank) = (None, None, None);
            for _ in 0..n {
                match r.str()? {
                    "ts" => ts = Some(r.float()?),
                    "events" => evs = Some(events(&mut r, &mut budget)?),
                    "data_parallel_rank" | "attn_dp_rank" => dp_rank = opt_int(&mut r)?,
                    _ => r.skip()?,
                }
            }
            Batch {
                ts: ts.ok_or_else(|| r.error("batch map has no \"ts\""))?,
                events: evs.ok_or_else(|| r.error("batch map has no \"events\""))?,
                dp_rank,
            }
        }
        other => return Err(r.error(format!("a batch must be an array or a map, found {other}"))),
    };
    if r.remaining() > 0 {
        return Err(r.error(format!("{} bytes follow the batch", r.remaining())));
    }
    Ok(batch)
}

fn events(r: &mut Reader<'_>, budget: &mut Budget) -> Result<Vec<Event>, DecodeError> {
    let n = r.array()?;
    if n > MAX_EVENTS {
        return Err(r.error(format!(
            "batch has {n} events, at most {MAX_EVENTS} are read"
        )));
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let event = match r.peek()? {
            Kind::Array => array_event(r, budget),
            Kind::Map => map_event(r, budget),
            other => Err(r.error(format!("an event must be an array or a map, found {other}"))),
        }
        .map_err(|e| DecodeError {
            offset: e.offset,
            problem: format!("event {i}: {}", e.problem),
        })?;
        out.push(event);
    }
    Ok(out)
}

/// msgspec's `array_like` form: the tag, then the fields in declaration order, trailing
/// defaults omitted.
fn array_event(r: &mut Reader<'_>, budget: &mut Budget) -> Result<Event, DecodeError> {
    let n = r.array()?;
    if n == 0 {
        return Err(r.error("event array is empty (no tag)"));
    }
    let tag = name(r, "tag")?;
    let mut fields = 1;
    // Whether the struct has one more field (msgspec omits trailing defaults); counts it.
    let mut more = || {
        let present = fields < n;
        if present {
            fields += 1;
        }
        present
    };
    let event = match tag.as_str() {
        "BlockStored" => {
            let mut s = Stored::default();
            if !more() {
                return Err(r.error("BlockStored has no block_hashes"));
            }
            s.hashes = hashes(r, budget)?;
            if !more() {
                return Err(r.error("BlockStored has no parent_block_hash"));
            }
            s.parent = opt_hash(r)?;
            if !more() {
                return Err(r.error("BlockStored has no token_ids"));
            }
            s.token_ids = tokens(r, budget)?;
            if !more() {
                return Err(r.error("BlockStored has no block_size"));
            }
            s.block_size = block_size(r)?;
            if more() {
                s.lora_id = opt_int(r)?;
            }
            if more() {
                s.medium = opt_name(r, "medium")?;
            }
            if more() {
                s.lora_name = opt_name(r, "lora_name")?;
            }
            if more() {
                r.skip()?; // extra_keys: multimodal and salt inputs, not part of our keys
            }
            if more() {
                s.group_idx = opt_uint(r, "group_idx")?;
            }
            Event::Stored(s)
        }
        "BlockRemoved" => {
            let mut d = Removed::default();
            if !more() {
                return Err(r.error("BlockRemoved has no block_hashes"));
            }
            d.hashes = hashes(r, budget)?;
            if more() {
                d.medium = opt_name(r, "medium")?;
            }
            if more() {
                d.group_idx = opt_uint(r, "group_idx")?;
            }
            Event::Removed(d)
        }
        "AllBlocksCleared" => Event::Cleared,
        _ => Event::Unknown(tag),
    };
    while fields < n {
        r.skip()?;
        fields += 1;
    }
    Ok(event)
}

/// msgspec's default struct form: a map of field names, the tag under `"type"`.
fn map_event(r: &mut Reader<'_>, budget: &mut Budget) -> Result<Event, DecodeError> {
    let n = r.map()?;
    let mut tag = None;
    let mut s = Stored::default();
    let (mut have_hashes, mut have_tokens, mut have_size) = (false, false, false);
    for _ in 0..n {
        match r.str()? {
            "type" => tag = Some(name(r, "type")?),
            "block_hashes" => {
                s.hashes = hashes(r, budget)?;
                have_hashes = true;
            }
            "parent_block_hash" => s.parent = opt_hash(r)?,
            "token_ids" => {
                s.token_ids = tokens(r, budget)?;
                have_tokens = true;
            }
            "block_size" | "num_toks_per_block" => {
                s.block_size = block_size(r)?;
                have_size = true;
            }
            "lora_id" => s.lora_id = opt_int(r)?,
            "lora_name" => s.lora_name = opt_name(r, "lora_name")?,
            "medium" => s.medium = opt_name(r, "medium")?,
            "group_idx" => s.group_idx = opt_uint(r, "group_idx")?,
            _ => r.skip()?,
        }
    }
    let Some(tag) = tag else {
        return Err(r.error("event map has no \"type\""));
    };
    Ok(match tag.as_str() {
        "BlockStored" => {
            for (have, field) in [
                (have_hashes, "block_hashes"),
                (have_tokens, "token_ids"),
                (have_size, "block_size"),
            ] {
                if !have {
                    return Err(r.error(format!("BlockStored has no {field}")));
                }
            }
            Event::Stored(s)
        }
        "BlockRemoved" => {
            if !have_hashes {
                return Err(r.error("BlockRemoved has no block_hashes"));
            }
            Event::Removed(Removed {
                hashes: s.hashes,
                medium: s.medium,
                group_idx: s.group_idx,
            })
        }
        "AllBlocksCleared" => Event::Cleared,
        _ => Event::Unknown(tag),
    })
}

fn name(r: &mut Reader<'_>, what: &str) -> Result<String, DecodeError> {
    let s = r.str()?;
    if s.len() > MAX_NAME_BYTES {
        return Err(r.error(format!(
            "{what} is {} bytes, at most {MAX_NAME_BYTES}",
            s.len()
        )));
    }
    Ok(s.to_string())
}

fn opt_name(r: &mut Reader<'_>, what: &str) -> Result<Option<String>, DecodeError> {
    if r.nil()? {
        return Ok(None);
    }
    name(r, what).map(Some)
}

fn opt_int(r: &mut Reader<'_>) -> Result<Option<i64>, DecodeError> {
    if r.nil()? {
        return Ok(None);
    }
    let at = r.offset();
    match r.int()? {
        Int::I(v) => Ok(Some(v)),
        Int::U(v) => i64::try_from(v).map(Some).map_err(|_| DecodeError {
            offset: at,
            problem: format!("{v} does not fit a signed 64-bit integer"),
        }),
    }
}

fn opt_uint(r: &mut Reader<'_>, what: &str) -> Result<Option<u64>, DecodeError> {
    if r.nil()? {
        return Ok(None);
    }
    r.uint(what, u64::MAX).map(Some)
}

fn block_size(r: &mut Reader<'_>) -> Result<u32, DecodeError> {
    let v = r.uint(
        "block_size",
        u64::from(inferpick_schema::kv::KvLimits::MAX_BLOCK_SIZE),
    )?;
    if v == 0 {
        return Err(r.error("block_size is 0"));
    }
    Ok(v as u32)
}

/// One engine block hash as the mirror's `u64`: integers as their 64 bits, byte strings folded.
fn hash(r: &mut Reader<'_>) -> Result<u64, DecodeError> {
    match r.peek()? {
        Kind::Int => Ok(match r.int()? {
            Int::U(v) => v,
            Int::I(v) => v as u64,
        }),
        Kind::Bin => {
            let b = r.bin()?;
            if b.is_empty() || b.len() > 64 {
                return Err(r.error(format!("a block hash of {} bytes", b.len())));
            }
            Ok(fold(b))
        }
        other => Err(r.error(format!(
            "a block hash must be an integer or bytes, found {other}"
        ))),
    }
}

/// FNV-1a over the bytes then splitmix's finalizer: a byte hash (vLLM's sha256 ones) as 64 bits.
fn fold(b: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &x in b {
        h = (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn opt_hash(r: &mut Reader<'_>) -> Result<Option<u64>, DecodeError> {
    if r.nil()? {
        return Ok(None);
    }
    hash(r).map(Some)
}

fn hashes(r: &mut Reader<'_>, budget: &mut Budget) -> Result<Vec<u64>, DecodeError> {
    let n = r.array()?;
    budget.spend(r, n, 0)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(hash(r)?);
    }
    Ok(out)
}

fn tokens(r: &mut Reader<'_>, budget: &mut Budget) -> Result<Vec<u32>, DecodeError> {
    let n = r.array()?;
    budget.spend(r, 0, n)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(r.uint("a token id", u64::from(u32::MAX))? as u32);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::msgpack::write as w;
    use super::*;

    #[test]
    fn trailing_bytes_and_wrong_shapes_are_errors_naming_the_event() {
        let mut b = Vec::new();
        w::array(&mut b, 2);
        w::float(&mut b, 1.0);
        w::array(&mut b, 1);
        w::array(&mut b, 2);
        w::str(&mut b, "BlockRemoved");
        w::str(&mut b, "not a list");
        let err = decode(&b).unwrap_err();
        assert!(
            err.problem.starts_with("event 0: expected an array"),
            "{err}"
        );
        let mut ok = Vec::new();
        w::array(&mut ok, 2);
        w::float(&mut ok, 1.0);
        w::array(&mut ok, 0);
        assert!(decode(&ok).unwrap().events.is_empty());
        ok.push(0x00);
        assert!(
            decode(&ok)
                .unwrap_err()
                .problem
                .contains("follow the batch")
        );
    }

    fn tokens16(from: u64, blocks: usize, out: &mut Vec<u8>) {
        w::array(out, 16 * blocks);
        for t in from..from + 16 * blocks as u64 {
            w::uint(out, t);
        }
    }

    /// vLLM b4e69e0a `vllm/distributed/kv_events.py` (and SGLang 006d053f): `array_like` batch of
    /// two fields, `BlockStored` with five, `BlockRemoved` with one.
    #[test]
    fn vllm_first_release_arrays() {
        let mut b = Vec::new();
        w::array(&mut b, 2);
        w::float(&mut b, 1_750_000_000.25);
        w::array(&mut b, 3);
        w::array(&mut b, 6);
        w::str(&mut b, "BlockStored");
        w::array(&mut b, 2);
        w::uint(&mut b, u64::MAX - 1);
        w::uint(&mut b, 7);
        w::nil(&mut b);
        tokens16(100, 2, &mut b);
        w::uint(&mut b, 16);
        w::nil(&mut b);
        w::array(&mut b, 2);
        w::str(&mut b, "BlockRemoved");
        w::array(&mut b, 1);
        w::uint(&mut b, 7);
        w::array(&mut b, 1);
        w::str(&mut b, "AllBlocksCleared");
        let batch = decode(&b).unwrap();
        assert_eq!(batch.ts, 1_750_000_000.25);
        assert_eq!(batch.dp_rank, None);
        let Event::Stored(s) = &batch.events[0] else {
            panic!("{:?}", batch.events[0])
        };
        assert_eq!(s.hashes, [u64::MAX - 1, 7]);
        assert_eq!(s.parent, None);
        assert_eq!(s.token_ids, (100..132).collect::<Vec<u32>>());
        assert_eq!(
            (s.block_size, s.lora_id, s.medium.as_deref()),
            (16, None, None)
        );
        assert_eq!(
            batch.events[1],
            Event::Removed(Removed {
                hashes: vec![7],
                medium: None,
                group_idx: None
            })
        );
        assert_eq!(batch.events[2], Event::Cleared);
    }

    /// vLLM releases after b4e69e0a that kept `array_like` and added `medium`, `lora_name` and
    /// the batch's `data_parallel_rank` (the fields as 0181ea31 declares them, in array form),
    /// with `ExternalBlockHash` as bytes.
    #[test]
    fn vllm_arrays_with_medium_lora_name_and_byte_hashes() {
        let mut b = Vec::new();
        w::array(&mut b, 3);
        w::float(&mut b, 2.0);
        w::array(&mut b, 2);
        w::array(&mut b, 8);
        w::str(&mut b, "BlockStored");
        w::array(&mut b, 1);
        w::bin(&mut b, &[9; 32]);
        w::bin(&mut b, &[8; 32]);
        tokens16(0, 1, &mut b);
        w::uint(&mut b, 16);
        w::uint(&mut b, 3);
        w::str(&mut b, "GPU");
        w::str(&mut b, "sql-lora");
        w::array(&mut b, 3);
        w::str(&mut b, "BlockRemoved");
        w::array(&mut b, 1);
        w::bin(&mut b, &[9; 32]);
        w::str(&mut b, "GPU");
        w::uint(&mut b, 2);
        let batch = decode(&b).unwrap();
        assert_eq!(batch.dp_rank, Some(2));
        let Event::Stored(s) = &batch.events[0] else {
            panic!()
        };
        assert_eq!(s.hashes, [fold(&[9; 32])]);
        assert_eq!(s.parent, Some(fold(&[8; 32])));
        assert_eq!(s.lora_id, Some(3));
        assert_eq!(s.lora_name.as_deref(), Some("sql-lora"));
        assert_eq!(s.medium.as_deref(), Some("GPU"));
        let Event::Removed(d) = &batch.events[1] else {
            panic!()
        };
        assert_eq!(d.hashes, s.hashes);
    }

    /// vLLM 0181ea31 (`EventBatch` and `KVCacheEvent` without `array_like`): events as maps with
    /// the tag under `"type"` and the newer fields; the batch as an array (as v0.26 sends it,
    /// kthena issue 1535) or as a map.
    #[test]
    fn vllm_current_maps() {
        let event = |b: &mut Vec<u8>| {
            w::map(b, 11);
            w::str(b, "type");
            w::str(b, "BlockStored");
            w::str(b, "block_hashes");
            w::array(b, 1);
            w::uint(b, 15_760_518_052_499_183_552);
            w::str(b, "parent_block_hash");
            w::nil(b);
            w::str(b, "token_ids");
            tokens16(151_000, 1, b);
            w::str(b, "block_size");
            w::uint(b, 16);
            w::str(b, "lora_id");
            w::nil(b);
            w::str(b, "medium");
            w::str(b, "GPU");
            w::str(b, "lora_name");
            w::nil(b);
            w::str(b, "extra_keys");
            w::array(b, 1);
            w::nil(b);
            w::str(b, "group_idx");
            w::uint(b, 0);
            w::str(b, "kv_cache_spec_kind");
            w::str(b, "full_attention");
        };
        let mut a = Vec::new();
        w::array(&mut a, 3);
        w::float(&mut a, 3.0);
        w::array(&mut a, 1);
        event(&mut a);
        w::uint(&mut a, 0);
        let mut m = Vec::new();
        w::map(&mut m, 3);
        w::str(&mut m, "ts");
        w::float(&mut m, 3.0);
        w::str(&mut m, "events");
        w::array(&mut m, 1);
        event(&mut m);
        w::str(&mut m, "data_parallel_rank");
        w::uint(&mut m, 0);
        let (a, m) = (decode(&a).unwrap(), decode(&m).unwrap());
        assert_eq!(a, m);
        let Event::Stored(s) = &a.events[0] else {
            panic!()
        };
        assert_eq!(s.hashes, [15_760_518_052_499_183_552]);
        assert_eq!((s.group_idx, s.medium.as_deref()), (Some(0), Some("GPU")));
        assert_eq!(s.token_ids.len(), 16);
    }

    /// SGLang 612d5790 `python/sglang/srt/disaggregation/kv_events.py`: arrays, the batch's
    /// third field `attn_dp_rank`, hashes from Python's `hash` (negative ones included), and
    /// an event tag this agent does not know, skipped.
    #[test]
    fn sglang_arrays_with_negative_hashes_and_unknown_events() {
        let mut b = Vec::new();
        w::array(&mut b, 3);
        w::uint(&mut b, 5); // an integer timestamp reads too
        w::array(&mut b, 2);
        w::array(&mut b, 6);
        w::str(&mut b, "BlockStored");
        w::array(&mut b, 1);
        w::int(&mut b, -5);
        w::int(&mut b, -3);
        tokens16(0, 1, &mut b);
        w::uint(&mut b, 16);
        w::nil(&mut b);
        w::array(&mut b, 2);
        w::str(&mut b, "BlockPromoted");
        w::array(&mut b, 1);
        w::uint(&mut b, 1);
        w::uint(&mut b, 1);
        let batch = decode(&b).unwrap();
        assert_eq!(batch.dp_rank, Some(1));
        let Event::Stored(s) = &batch.events[0] else {
            panic!()
        };
        assert_eq!(s.hashes, [-5i64 as u64]);
        assert_eq!(s.parent, Some(-3i64 as u64));
        assert_eq!(batch.events[1], Event::Unknown("BlockPromoted".into()));
    }

    #[test]
    fn oversized_batches_are_refused_whole() {
        let mut b = Vec::new();
        w::array(&mut b, 2);
        w::float(&mut b, 1.0);
        w::array(&mut b, MAX_EVENTS + 1);
        b.resize(b.len() + MAX_EVENTS + 1, 0x90);
        assert!(decode(&b).unwrap_err().problem.contains("events"));
        assert!(decode(&vec![0; MAX_PAYLOAD_BYTES + 1]).is_err());
    }

    #[test]
    fn byte_hashes_fold_stably() {
        assert_eq!(fold(&[1, 2, 3]), fold(&[1, 2, 3]));
        assert_ne!(fold(&[1, 2, 3]), fold(&[1, 2, 4]));
    }
}
