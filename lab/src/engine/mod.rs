//! The engine model: a continuous-batching model server with chunked prefill, a paged KV cache
//! with preemption, a prefix cache and LoRA slots — close enough to vLLM that routing conclusions
//! carry over. Pure: time is an argument, so the simulator and the emulator drive the same code.
//!
//! The owner calls [`Engine::submit`], then [`Engine::start_step`] whenever the engine is idle; a
//! started step ends at the returned time, when the owner calls [`Engine::finish_step`] (which
//! reports first tokens and finished sequences) and starts the next one.

mod kv;
mod lora;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

pub use kv::{BlockPool, KvChanges, KvGroupChanges};
pub use lora::{Admit, LoraSlots};

/// The engine's size and speed. Defaults model Llama-3.1-8B (bf16) served by vLLM on one H100 80GB.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// KV cache capacity in tokens. Default 400,000: 80 GB − 16 GB of weights − activations leaves
    /// about 52 GB, and Llama-3-8B needs 128 KiB per token (32 layers × 8 KV heads × 128 × 2 × 2 B).
    pub kv_tokens: u64,
    /// Tokens per KV block (vLLM's default, 16).
    pub block_tokens: u32,
    /// Most sequences in the running batch (vLLM's `max_num_seqs`, default 256).
    pub max_num_seqs: u32,
    /// Token budget of one step (vLLM's `max_num_batched_tokens` with chunked prefill, 8192).
    pub max_batched_tokens: u32,
    /// Fixed cost of a step, `a`: 7 ms, the time to stream 16 GB of weights at ~2.3 TB/s effective.
    #[serde(with = "humantime_serde_compat")]
    pub step_base: Duration,
    /// Cost per prefill token, `b`: 50 µs, i.e. 20,000 prefill tokens/s (~2·8e9 FLOP per token at
    /// ~40% of the H100's 989 dense TFLOPS, as vLLM measures for 8B models).
    #[serde(with = "humantime_serde_compat")]
    pub prefill_per_token: Duration,
    /// Cost per decoding sequence in a step, `c`: 100 µs (KV reads and sampling), so a decode step
    /// is 10 ms at batch 32, 20 ms at batch 128 and 33 ms at batch 256 — vLLM's measured range.
    #[serde(with = "humantime_serde_compat")]
    pub decode_per_seq: Duration,
    /// LoRA adapters resident at once (`max_loras`).
    pub max_loras: u32,
    /// Time a step spends loading an adapter that is not resident (100 ms: a rank-16 adapter from
    /// host memory, vLLM loads synchronously inside the step).
    #[serde(with = "humantime_serde_compat")]
    pub lora_load: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            kv_tokens: 400_000,
            block_tokens: 16,
            max_num_seqs: 256,
            max_batched_tokens: 8192,
            step_base: Duration::from_millis(7),
            prefill_per_token: Duration::from_micros(50),
            decode_per_seq: Duration::from_micros(100),
            max_loras: 4,
            lora_load: Duration::from_millis(100),
        }
    }
}

/// Durations in engine profiles are humantime strings (`7ms`, `50us`).
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
    }
}

impl EngineConfig {
    /// Checks the numbers make an engine that can run; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.block_tokens == 0 {
            return Err("block_tokens: must be at least 1".into());
        }
        if self.kv_tokens < u64::from(self.block_tokens) {
            return Err(format!(
                "kv_tokens = {}: must hold at least one block of {} tokens",
                self.kv_tokens, self.block_tokens
            ));
        }
        if self.max_num_seqs == 0 {
            return Err("max_num_seqs: must be at least 1".into());
        }
        if self.max_batched_tokens <= self.max_num_seqs {
            return Err(format!(
                "max_batched_tokens = {}: must exceed max_num_seqs = {} so prefill always progresses",
                self.max_batched_tokens, self.max_num_seqs
            ));
        }
        if self.step_base.is_zero() {
            return Err("step_base: must be above zero".into());
        }
        Ok(())
    }

    /// Reads a YAML engine profile; keys not given keep their defaults. Errors name the file and key.
    pub fn load(path: &std::path::Path) -> Result<EngineConfig, ProfileError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            file: file.clone(),
            source,
        })?;
        let de = serde_norway::Deserializer::from_str(&text);
        let config: EngineConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let message = crate::workload::without_path(&path, e.into_inner().to_string());
            ProfileError::Invalid {
                file: file.clone(),
                message: format!("{path}: {message}"),
            }
        })?;
        config
            .validate()
            .map_err(|message| ProfileError::Invalid { file, message })?;
        Ok(config)
    }

    /// Blocks in the KV cache.
    pub fn kv_blocks(&self) -> u64 {
        self.kv_tokens / u64::from(self.block_tokens)
    }

    /// Time of a step that prefills `prefill` tokens while `decode` sequences decode.
    pub fn step_time(&self, prefill: u64, decode: u64) -> Duration {
        self.step_base
            + self.prefill_per_token * prefill as u32
            + self.decode_per_seq * decode as u32
    }
}

/// An engine profile that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The file could not be read.
    #[error("{file}: {source}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A key is unknown or a value is wrong.
    #[error("{file}: {message}")]
    Invalid {
        /// The file.
        file: String,
        /// The key and the problem.
        message: String,
    },
}

/// A request as the engine sees it.
#[derive(Debug, Clone)]
pub struct SeqSpec {
    /// Caller's id, echoed in events.
    pub id: u64,
    /// Prompt length.
    pub prompt_tokens: u32,
    /// Tokens to generate (at least 1).
    pub output_tokens: u32,
    /// Keys of the prompt's cacheable leading full blocks
    /// ([`inferpick_schema::kv::block_keys`] over its token ids, from the root of its adapter).
    pub prefix: Arc<[u64]>,
    /// LoRA adapter, by index.
    pub adapter: Option<u32>,
}

/// Why the engine refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// Prompt plus output can never fit in the KV cache.
    #[error("prompt_tokens + output_tokens = {needed} exceeds the KV cache of {capacity} tokens")]
    TooLong {
        /// Tokens the request needs.
        needed: u64,
        /// Tokens the cache holds.
        capacity: u64,
    },
    /// More shared-prefix blocks than the prompt has.
    #[error("prefix of {blocks} blocks is longer than the {prompt_tokens}-token prompt")]
    PrefixTooLong {
        /// Blocks in the prefix.
        blocks: usize,
        /// The prompt's length.
        prompt_tokens: u32,
    },
}

/// What happened at the end of a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineEvent {
    /// The request's first output token is out.
    FirstToken {
        /// The request.
        id: u64,
        /// Prompt tokens the prefix cache saved it.
        cached_tokens: u32,
    },
    /// The request generated its last token and left the engine.
    Finished {
        /// The request.
        id: u64,
    },
}

/// Monotonic counters, as engines export them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Prompt tokens of requests whose prefill completed (cached ones included, as vLLM counts).
    pub prompt_tokens: u64,
    /// Output tokens generated.
    pub generation_tokens: u64,
    /// Prompt tokens looked up in the prefix cache.
    pub prefix_queries: u64,
    /// Of those, tokens found cached.
    pub prefix_hits: u64,
    /// Requests finished.
    pub finished: u64,
    /// Sequences preempted (KV full).
    pub preemptions: u64,
    /// Adapter loads.
    pub lora_loads: u64,
}

/// A read-only view of the engine's state, for metrics and reports.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineState {
    /// Queued, not yet admitted.
    pub waiting: u32,
    /// In the running batch (prefilling or decoding).
    pub running: u32,
    /// KV blocks used by running sequences.
    pub kv_used_blocks: u64,
    /// KV blocks in all.
    pub kv_total_blocks: u64,
    /// Counters since start.
    pub counters: Counters,
    /// Adapters with running sequences.
    pub adapters_running: Vec<u32>,
    /// Adapters that queued sequences wait for (not resident).
    pub adapters_waiting: Vec<u32>,
}

impl EngineState {
    /// Fraction of the KV cache in use, 0..1.
    pub fn kv_utilization(&self) -> f64 {
        self.kv_used_blocks as f64 / self.kv_total_blocks.max(1) as f64
    }
}

/// Phase of a sequence in the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Waiting,
    Prefill,
    Decode { start_step: u64, base: u32 },
}

#[derive(Debug)]
struct Seq {
    spec: SeqSpec,
    phase: Phase,
    /// Tokens to prefill: the prompt, plus generated tokens after a preemption (recompute).
    target: u32,
    /// Of those, tokens whose KV is computed (or was found cached).
    computed: u32,
    /// Output tokens generated so far.
    generated: u32,
    /// Prefix blocks this sequence holds in the pool (0 while waiting).
    shared_blocks: usize,
    /// Whether the first token was already sent (a recompute sends no second one).
    first_sent: bool,
    /// Prompt tokens the prefix cache saved at the first admission.
    cached: u32,
    /// Bumped at every preemption, to drop stale finish entries.
    epoch: u32,
    /// Estimated prompt tokens still to compute, counted in `queued_prefill` while queued.
    queued_estimate: u64,
}

/// When a decoding sequence emits its last token: `(step, slot, epoch)` packed into one integer
/// that orders as the tuple does, so the finish heap compares one `u128` and holds 16 bytes an
/// entry instead of 24.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Finish(u128);

impl Finish {
    fn new(step: u64, slot: usize, epoch: u32) -> Self {
        let slot = u32::try_from(slot).expect("fewer than 2^32 sequence slots");
        Finish((u128::from(step) << 64) | (u128::from(slot) << 32) | u128::from(epoch))
    }

    fn step(self) -> u64 {
        (self.0 >> 64) as u64
    }

    fn slot(self) -> usize {
        (self.0 >> 32) as u32 as usize
    }

    fn epoch(self) -> u32 {
        self.0 as u32
    }
}

/// A planned step, applied by [`Engine::finish_step`].
#[derive(Debug)]
struct Plan {
    end: Duration,
    chunks: Vec<(usize, u32)>,
    decoding: u32,
}

/// One model server's scheduler and memory.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    pool: BlockPool,
    loras: LoraSlots,
    seqs: Vec<Option<Seq>>,
    free_slots: Vec<usize>,
    /// Slots by request id: built at the first lookup by id ([`generated`](Self::generated),
    /// [`cancel`](Self::cancel)) and kept from then on. The simulator never looks a request up
    /// by id, and keeping the map cost it a cache miss per request submitted and finished.
    by_id: Option<HashMap<u64, usize>>,
    waiting: VecDeque<usize>,
    /// Running sequences in admission order (the last is preempted first).
    running: Vec<usize>,
    /// The running sequences still prefilling, in admission order (a subset of `running`).
    prefilling: Vec<usize>,
    decoding: u32,
    /// Decoding sequences by `(kv tokens − step) mod block size`: those needing a block at a step.
    residue: Vec<u32>,
    /// Decode finish step per sequence (min-heap, lazily invalidated by epoch).
    finishes: BinaryHeap<Reverse<Finish>>,
    step: u64,
    plan: Option<Plan>,
    /// Prompt tokens still to prefill, for prediction: running remainders plus waiting estimates.
    queued_prefill: u64,
    /// Whether this step's decode blocks are allocated already.
    grown: bool,
    /// Cancels that arrived during a step, applied when it ends.
    cancels: Vec<u64>,
    /// The last applied plan's chunk list, emptied, for the next plan to fill.
    spare_chunks: Vec<(usize, u32)>,
    counters: Counters,
    /// Fraction of the profile's speed the GPU runs at (1: full; 0.5: every step takes twice as
    /// long, as on a GPU throttled to half its clock).
    speed: f64,
}

impl Engine {
    /// An idle engine. The config must pass [`EngineConfig::validate`].
    pub fn new(config: EngineConfig) -> Self {
        let pool = BlockPool::new(config.kv_blocks());
        let loras = LoraSlots::new(config.max_loras);
        let residue = vec![0; config.block_tokens as usize];
        Self {
            config,
            pool,
            loras,
            seqs: Vec::new(),
            free_slots: Vec::new(),
            by_id: None,
            waiting: VecDeque::new(),
            running: Vec::new(),
            prefilling: Vec::new(),
            decoding: 0,
            residue,
            finishes: BinaryHeap::new(),
            step: 0,
            plan: None,
            queued_prefill: 0,
            grown: false,
            cancels: Vec::new(),
            spare_chunks: Vec::new(),
            counters: Counters::default(),
            speed: 1.0,
        }
    }

    /// Runs every step from the next one on at `speed` (0 < speed ≤ 1) of the profile's speed:
    /// a step takes `1 / speed` times as long, as on a GPU whose clocks are throttled.
    pub fn set_speed(&mut self, speed: f64) {
        assert!(
            speed > 0.0 && speed <= 1.0,
            "speed {speed} is outside (0, 1]"
        );
        self.speed = speed;
    }

    /// The fraction of the profile's speed steps run at.
    pub fn speed(&self) -> f64 {
        self.speed
    }

    /// The engine's configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Queues a request. Refuses one that could never run.
    pub fn submit(&mut self, spec: SeqSpec) -> Result<(), SubmitError> {
        let bt = u64::from(self.config.block_tokens);
        let needed = u64::from(spec.prompt_tokens) + u64::from(spec.output_tokens.max(1));
        if needed.div_ceil(bt) > self.pool.total() {
            return Err(SubmitError::TooLong {
                needed,
                capacity: self.pool.total() * bt,
            });
        }
        if spec.prefix.len() as u64 * bt > u64::from(spec.prompt_tokens) {
            return Err(SubmitError::PrefixTooLong {
                blocks: spec.prefix.len(),
                prompt_tokens: spec.prompt_tokens,
            });
        }
        let cached = self.cached_tokens(&spec.prefix, spec.prompt_tokens);
        let estimate = u64::from(spec.prompt_tokens - cached);
        self.queued_prefill += estimate;
        let seq = Seq {
            target: spec.prompt_tokens,
            phase: Phase::Waiting,
            computed: 0,
            generated: 0,
            shared_blocks: 0,
            first_sent: false,
            cached: 0,
            epoch: 0,
            queued_estimate: estimate,
            spec: SeqSpec {
                output_tokens: spec.output_tokens.max(1),
                ..spec
            },
        };
        let id = seq.spec.id;
        let slot = match self.free_slots.pop() {
            Some(s) => {
                self.seqs[s] = Some(seq);
                s
            }
            None => {
                self.seqs.push(Some(seq));
                self.seqs.len() - 1
            }
        };
        if let Some(by_id) = &mut self.by_id {
            by_id.insert(id, slot);
        }
        self.waiting.push_back(slot);
        Ok(())
    }

    /// End time of the step in progress, if one is.
    pub fn step_end(&self) -> Option<Duration> {
        self.plan.as_ref().map(|p| p.end)
    }

    /// Whether any request is queued or running.
    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    /// Output tokens generated so far by request `id` (None once it left the engine).
    pub fn generated(&mut self, id: u64) -> Option<u32> {
        let slot = self.slot_of(id)?;
        let seq = self.seqs[slot].as_ref()?;
        Some(match seq.phase {
            Phase::Decode { start_step, base } => base + (self.step - start_step) as u32,
            _ => seq.generated,
        })
    }

    /// Removes a request (its client went away), freeing what it holds. A request that is part
    /// of the step in flight leaves when that step ends.
    pub fn cancel(&mut self, id: u64) {
        if self.plan.is_some() {
            self.cancels.push(id);
            return;
        }
        let Some(slot) = self.slot_of(id) else {
            return;
        };
        if let Some(pos) = self.waiting.iter().position(|&s| s == slot) {
            self.waiting.remove(pos);
            self.queued_prefill -= self.seq(slot).queued_estimate.min(self.queued_prefill);
        } else {
            self.stop_running(slot);
        }
        self.remove(slot);
    }

    /// Plans the next step if idle and there is work; returns when it ends.
    pub fn start_step(&mut self, now: Duration) -> Option<Duration> {
        if self.plan.is_some() {
            return self.step_end();
        }
        if !self.has_work() {
            return None;
        }
        self.make_room_for_decode();
        let mut budget = self.config.max_batched_tokens.saturating_sub(self.decoding);
        let mut chunks = std::mem::take(&mut self.spare_chunks);
        let mut prefill: u64 = 0;
        for &slot in &self.prefilling {
            if budget == 0 {
                break;
            }
            let seq = self.seqs[slot].as_ref().expect("prefilling slot");
            let chunk = (seq.target - seq.computed).min(budget);
            budget -= chunk;
            prefill += u64::from(chunk);
            chunks.push((slot, chunk));
        }
        let loads = self.admit(&mut budget, &mut chunks, &mut prefill);
        if chunks.is_empty() && self.decoding == 0 {
            self.spare_chunks = chunks;
            return None;
        }
        let work = self.config.step_time(prefill, u64::from(self.decoding))
            + self.config.lora_load * loads;
        let end = now + work.div_f64(self.speed);
        self.plan = Some(Plan {
            end,
            chunks,
            decoding: self.decoding,
        });
        Some(end)
    }

    /// Applies the step in progress and reports what it produced into `out`.
    pub fn finish_step(&mut self, out: &mut Vec<EngineEvent>) {
        let Some(plan) = self.plan.take() else {
            return;
        };
        let step = self.step;
        self.counters.generation_tokens += u64::from(plan.decoding);
        // Decoding sequences whose last token came out in this step.
        while let Some(&Reverse(f)) = self.finishes.peek() {
            let (at, slot, epoch) = (f.step(), f.slot(), f.epoch());
            if at > step {
                break;
            }
            self.finishes.pop();
            let live = self.seqs[slot]
                .as_ref()
                .is_some_and(|s| s.epoch == epoch && matches!(s.phase, Phase::Decode { .. }));
            if live {
                self.finish(slot, out);
            }
        }
        let mut chunks = plan.chunks;
        for (slot, chunk) in chunks.drain(..) {
            let Some(seq) = self.seqs[slot].as_mut() else {
                continue;
            };
            seq.computed += chunk;
            self.queued_prefill -= u64::from(chunk).min(self.queued_prefill);
            if seq.computed < seq.target {
                continue;
            }
            remove_item(&mut self.prefilling, slot);
            seq.generated += 1;
            self.counters.generation_tokens += 1;
            if !seq.first_sent {
                seq.first_sent = true;
                self.counters.prompt_tokens += u64::from(seq.spec.prompt_tokens);
                out.push(EngineEvent::FirstToken {
                    id: seq.spec.id,
                    cached_tokens: seq.cached,
                });
            }
            let seq = self.seq(slot);
            if seq.generated >= seq.spec.output_tokens {
                self.finish(slot, out);
            } else {
                self.start_decode(slot, step + 1);
            }
        }
        self.spare_chunks = chunks;
        self.step += 1;
        self.grown = false;
        for id in std::mem::take(&mut self.cancels) {
            self.cancel(id);
        }
    }

    /// Starts journaling the prefix cache's stored and evicted blocks, at most `limit` changes
    /// between drains ([`drain_kv_changes`](Self::drain_kv_changes) says when that overflowed).
    pub fn keep_kv_journal(&mut self, limit: usize) {
        self.pool.keep_journal(limit);
    }

    /// The prefix cache's net changes since the previous drain: what a vLLM engine would have
    /// published as KV events.
    pub fn drain_kv_changes(&mut self) -> KvChanges {
        self.pool.drain_changes()
    }

    /// Whether the prefix cache changed since the previous drain.
    pub fn kv_changed(&self) -> bool {
        self.pool.has_changes()
    }

    /// Every block the prefix cache holds now, per adapter (for a full resend).
    pub fn cached_blocks(&self) -> Vec<KvGroupChanges> {
        self.pool.cached_blocks()
    }

    /// Drops the whole prefix cache, as vLLM's `/reset_prefix_cache` does; refused (false) while
    /// a request holds cached blocks.
    pub fn reset_prefix_cache(&mut self) -> bool {
        self.pool.clear_cache()
    }

    /// The engine's state now.
    pub fn state(&self) -> EngineState {
        let mut waiting_adapters: Vec<u32> = self
            .waiting
            .iter()
            .filter_map(|&s| self.seq(s).spec.adapter)
            .filter(|a| !self.loras.is_resident(*a))
            .collect();
        waiting_adapters.sort_unstable();
        waiting_adapters.dedup();
        let mut running: Vec<u32> = self.loras.running().collect();
        running.sort_unstable();
        EngineState {
            waiting: self.waiting.len() as u32,
            running: self.running.len() as u32,
            kv_used_blocks: self.pool.used(),
            kv_total_blocks: self.pool.total(),
            counters: self.counters,
            adapters_running: running,
            adapters_waiting: waiting_adapters,
        }
    }

    /// Predicted time from `now` until a request like `spec`, submitted now, has its first token:
    /// the oracle's cost. It reads the exact queue, cache and adapter state, and replays the
    /// scheduler arithmetically (step count from the token budget, KV waits from finish steps).
    pub fn predict_ttft(&self, spec: &SeqSpec, now: Duration) -> Duration {
        let c = &self.config;
        let remaining = self
            .step_end()
            .map_or(Duration::ZERO, |end| end.saturating_sub(now));
        let cached = self.cached_tokens(&spec.prefix, spec.prompt_tokens);
        let prefill = self.queued_prefill + u64::from(spec.prompt_tokens - cached);
        // Everything running now decodes while this request's prefill waits its turn.
        let decoding = self.running.len() as u64;
        let budget = u64::from(c.max_batched_tokens)
            .saturating_sub(decoding)
            .max(1);
        let steps = prefill.div_ceil(budget).max(1);
        let step_time = c.step_time(0, decoding);
        let mut t = step_time * steps as u32 + c.prefill_per_token * prefill as u32;
        // Admission waits for a free batch slot and for KV blocks; both free up as sequences finish.
        let queued = self.waiting.len() as u64 + 1;
        let bt = u64::from(c.block_tokens);
        let need_blocks: u64 = self
            .waiting
            .iter()
            .map(|&s| u64::from(self.seq(s).target).div_ceil(bt))
            .sum::<u64>()
            + u64::from(spec.prompt_tokens - cached).div_ceil(bt);
        let free_seqs = u64::from(c.max_num_seqs).saturating_sub(self.running.len() as u64);
        let short_blocks = need_blocks.saturating_sub(self.pool.free());
        let short_seqs = queued.saturating_sub(free_seqs);
        if short_blocks > 0 || short_seqs > 0 {
            t += step_time * self.steps_until_freed(short_blocks, short_seqs) as u32;
        }
        if let Some(adapter) = spec.adapter {
            match self.loras.check(adapter) {
                Admit::Resident => {}
                Admit::Load => t += c.lora_load,
                Admit::Blocked => {
                    let drain = self
                        .loras
                        .earliest_drain_step()
                        .map_or(256, |s| s.saturating_sub(self.step));
                    t += step_time * drain as u32 + c.lora_load;
                }
            }
        }
        // The step in flight already ends at a real time; what follows runs at today's speed.
        remaining + t.div_f64(self.speed)
    }

    /// Decode steps until finishing sequences free `blocks` KV blocks and `seqs` batch slots.
    fn steps_until_freed(&self, blocks: u64, seqs: u64) -> u64 {
        let mut ends: Vec<(u64, u64)> = self
            .finishes
            .iter()
            .filter_map(|&Reverse(f)| {
                let seq = self.seqs[f.slot()].as_ref()?;
                (seq.epoch == f.epoch()).then(|| (f.step(), self.blocks_held(f.slot())))
            })
            .collect();
        ends.sort_unstable();
        let (mut freed_blocks, mut freed_seqs) = (0, 0);
        for (at, b) in &ends {
            freed_blocks += b;
            freed_seqs += 1;
            if freed_blocks >= blocks && freed_seqs >= seqs {
                return at.saturating_sub(self.step) + 1;
            }
        }
        ends.last()
            .map_or(1, |(at, _)| at.saturating_sub(self.step) + 1)
    }

    /// The slot of request `id`, if it is in the engine.
    fn slot_of(&mut self, id: u64) -> Option<usize> {
        let seqs = &self.seqs;
        let by_id = self.by_id.get_or_insert_with(|| {
            seqs.iter()
                .enumerate()
                .filter_map(|(slot, s)| Some((s.as_ref()?.spec.id, slot)))
                .collect()
        });
        by_id.get(&id).copied()
    }

    fn seq(&self, slot: usize) -> &Seq {
        self.seqs[slot].as_ref().expect("live slot")
    }

    fn seq_mut(&mut self, slot: usize) -> &mut Seq {
        self.seqs[slot].as_mut().expect("live slot")
    }

    /// Prompt tokens of a prompt with `prefix` that the cache would save now (never the whole
    /// prompt: the last token is always computed, as in vLLM).
    fn cached_tokens(&self, prefix: &[u64], prompt: u32) -> u32 {
        let blocks = self.pool.cached_prefix(prefix) as u32;
        (blocks * self.config.block_tokens).min(prompt.saturating_sub(1))
    }

    /// KV tokens a running sequence holds after the decode steps allocated so far.
    fn kv_tokens(&self, slot: usize) -> u64 {
        let seq = self.seq(slot);
        match seq.phase {
            Phase::Decode { start_step, .. } if start_step <= self.step => {
                u64::from(seq.target) + (self.step - start_step) + u64::from(self.grown)
            }
            _ => u64::from(seq.target),
        }
    }

    fn blocks_held(&self, slot: usize) -> u64 {
        self.kv_tokens(slot)
            .div_ceil(u64::from(self.config.block_tokens))
    }

    fn residue_of(&self, target: u32, start_step: u64) -> usize {
        let bt = i64::from(self.config.block_tokens);
        (start_step as i64 - i64::from(target)).rem_euclid(bt) as usize
    }

    /// Allocates this step's new decode blocks, preempting the newest sequences until they fit.
    fn make_room_for_decode(&mut self) {
        loop {
            let bt = self.config.block_tokens as u64;
            let need = u64::from(self.residue[(self.step % bt) as usize]);
            if self.pool.grow(need) {
                self.grown = true;
                return;
            }
            let Some(&victim) = self.running.last() else {
                return;
            };
            self.preempt(victim);
        }
    }

    /// Evicts a running sequence back to the front of the queue; it will recompute its KV.
    fn preempt(&mut self, slot: usize) {
        self.counters.preemptions += 1;
        self.stop_running(slot);
        let generated = self.generated_now(slot);
        let seq = self.seq_mut(slot);
        seq.generated = generated;
        seq.target = seq.spec.prompt_tokens + generated;
        seq.computed = 0;
        seq.phase = Phase::Waiting;
        seq.epoch += 1;
        seq.queued_estimate = u64::from(seq.target);
        self.queued_prefill += u64::from(seq.target);
        self.waiting.push_front(slot);
    }

    fn generated_now(&self, slot: usize) -> u32 {
        let seq = self.seq(slot);
        match seq.phase {
            Phase::Decode { start_step, base } => {
                base + self.step.saturating_sub(start_step) as u32
            }
            _ => seq.generated,
        }
    }

    /// Takes a running sequence out of the batch and gives back its memory and adapter use.
    fn stop_running(&mut self, slot: usize) {
        let held = self.blocks_held(slot);
        let seq = self.seq(slot);
        let phase = seq.phase;
        let prefix = Arc::clone(&seq.spec.prefix);
        let shared = seq.shared_blocks;
        let adapter = seq.spec.adapter;
        let (target, computed) = (seq.target, seq.computed);
        if phase == Phase::Prefill {
            let left = u64::from(target - computed);
            self.queued_prefill -= left.min(self.queued_prefill);
            remove_item(&mut self.prefilling, slot);
        }
        if let Phase::Decode { start_step, .. } = phase {
            self.decoding -= 1;
            let r = self.residue_of(target, start_step);
            self.residue[r] -= 1;
        }
        self.pool.release(&prefix[..shared], held - shared as u64);
        if let Some(a) = adapter {
            self.loras.stop(a);
        }
        remove_item(&mut self.running, slot);
    }

    fn finish(&mut self, slot: usize, out: &mut Vec<EngineEvent>) {
        self.stop_running(slot);
        self.counters.finished += 1;
        out.push(EngineEvent::Finished {
            id: self.seq(slot).spec.id,
        });
        self.remove(slot);
    }

    fn remove(&mut self, slot: usize) {
        if let Some(seq) = self.seqs[slot].take() {
            if let Some(by_id) = &mut self.by_id {
                by_id.remove(&seq.spec.id);
            }
            self.free_slots.push(slot);
        }
    }

    fn start_decode(&mut self, slot: usize, start_step: u64) {
        let seq = self.seq(slot);
        let base = seq.generated;
        let finish_step = start_step + u64::from(seq.spec.output_tokens - base) - 1;
        let r = self.residue_of(seq.target, start_step);
        let epoch = seq.epoch;
        let adapter = seq.spec.adapter;
        self.residue[r] += 1;
        self.decoding += 1;
        self.finishes
            .push(Reverse(Finish::new(finish_step, slot, epoch)));
        if let Some(a) = adapter {
            self.loras.note_finish_step(a, finish_step);
        }
        self.seq_mut(slot).phase = Phase::Decode { start_step, base };
    }

    /// Admits queued sequences FCFS while the batch, the KV cache and the token budget allow;
    /// a sequence whose adapter cannot be loaded is skipped (vLLM does the same). Returns the
    /// number of adapters loaded.
    fn admit(
        &mut self,
        budget: &mut u32,
        chunks: &mut Vec<(usize, u32)>,
        prefill: &mut u64,
    ) -> u32 {
        let bt = u64::from(self.config.block_tokens);
        let mut loads = 0;
        let mut i = 0;
        let window = self.config.max_num_seqs as usize;
        while i < self.waiting.len().min(window) && *budget > 0 {
            if self.running.len() >= self.config.max_num_seqs as usize {
                break;
            }
            let slot = self.waiting[i];
            let seq = self.seq(slot);
            let adapter = seq.spec.adapter;
            if let Some(a) = adapter
                && self.loras.check(a) == Admit::Blocked
            {
                i += 1;
                continue;
            }
            let hashes = Arc::clone(&seq.spec.prefix);
            let target = seq.target;
            let first = !seq.first_sent;
            let estimate = seq.queued_estimate;
            let prompt = seq.spec.prompt_tokens;
            let private = u64::from(target).div_ceil(bt) - hashes.len() as u64;
            let cached = self.cached_tokens(&hashes, target);
            if !self.pool.acquire(&hashes, private, adapter) {
                break; // FCFS: the head waits for memory, and so does everyone behind it.
            }
            self.waiting.remove(i);
            if let Some(a) = adapter
                && self.loras.start(a)
            {
                loads += 1;
                self.counters.lora_loads += 1;
            }
            let seq = self.seq_mut(slot);
            seq.shared_blocks = hashes.len();
            seq.computed = cached;
            seq.phase = Phase::Prefill;
            let left = u64::from(seq.target - cached);
            // Swap the queue estimate for the exact remainder now that the cache was consulted.
            self.queued_prefill = self.queued_prefill - estimate.min(self.queued_prefill) + left;
            if first {
                self.counters.prefix_queries += u64::from(prompt);
                self.counters.prefix_hits += u64::from(cached);
                self.seq_mut(slot).cached = cached;
            }
            self.running.push(slot);
            self.prefilling.push(slot);
            let seq = self.seq(slot);
            let chunk = (seq.target - seq.computed).min(*budget);
            *budget -= chunk;
            *prefill += u64::from(chunk);
            chunks.push((slot, chunk));
        }
        loads
    }
}

/// Removes `item` from `v`, keeping the order of the rest. The last item (a preemption's victim)
/// is checked first, then the list from the front: what leaves the batch otherwise (a finished
/// sequence, a completed prefill) was mostly admitted early.
fn remove_item(v: &mut Vec<usize>, item: usize) {
    if v.last() == Some(&item) {
        v.pop();
    } else if let Some(pos) = v.iter().position(|&x| x == item) {
        v.remove(pos);
    }
}

#[cfg(test)]
mod tests;
