//! Drawing requests from a workload: arrival times, classes, lengths, prompt tokens and adapters.
//! Deterministic for a seed.
//!
//! Prompts are token ids of the [lab's vocabulary](crate::tokenizer), derived from what they
//! stand for: a shared prefix's tokens from (class, group, position), a document's from (class,
//! document, position), a conversation's from (conversation, turn, position), and a request's
//! unique tail from its id. Equal content gives equal tokens, so the engine's prefix cache, the
//! picker and the emulator all see shared prefixes as shared.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use inferpick_schema::kv;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::{Arrival, Class, Dist, DocumentOrder, Workload, adapter_name};
use crate::tokenizer;

/// One request drawn from a workload.
#[derive(Debug, Clone)]
pub struct Request {
    /// Sequence number from 0.
    pub id: u64,
    /// Arrival time from the start.
    pub at: Duration,
    /// Index of its class in the workload.
    pub class: usize,
    /// Scheduling priority.
    pub priority: i32,
    /// Whole prompt length.
    pub prompt_tokens: u32,
    /// Tokens to generate.
    pub output_tokens: u32,
    /// Token ids of the prompt's leading part that other requests may share (a system prompt,
    /// documents, a conversation's history); the rest of the prompt is unique to the request.
    /// Shared, not copied, between requests with the same prefix.
    pub prefix_tokens: Arc<[u32]>,
    /// Keys of `prefix_tokens`' full blocks ([`kv::block_keys`] from the adapter's root): what
    /// the engine caches.
    pub prefix: Arc<[u64]>,
    /// Which shared prefix (group) it uses.
    pub group: Option<u32>,
    /// LoRA adapter number, 1-based (see [`super::adapter_name`]).
    pub adapter: Option<u32>,
}

/// A conversation between turns.
#[derive(Debug)]
struct Chat {
    class: usize,
    /// Turns still to come after the one last sent.
    turns_left: u32,
    turn: u32,
    adapter: Option<u32>,
    group: Option<u32>,
    /// The last turn's prompt and answer tokens.
    history: Vec<u32>,
    /// Keys of the last turn's prompt's full blocks.
    keys: Vec<u64>,
}

/// An endless, deterministic stream of requests until `duration`.
#[derive(Debug)]
pub struct Generator {
    classes: Vec<Class>,
    cumulative: Vec<f64>,
    zipf: Vec<Option<Vec<f64>>>,
    arrival: Arrival,
    rate: f64,
    rng: SmallRng,
    /// Seconds of "on" time consumed so far (equal to wall time for Poisson arrivals).
    clock: f64,
    end: Duration,
    next_id: u64,
    block_tokens: u32,
    /// Each class's Zipf CDF over its documents.
    doc_cdf: Vec<Option<Vec<f64>>>,
    /// Tokens of shared prefixes by (class, group), and their keys by (class, group, adapter).
    prefix_tokens: HashMap<(usize, u32), Arc<[u32]>>,
    prefix_keys: HashMap<(usize, u32, Option<u32>), Arc<[u64]>>,
    /// Tokens of each (class, document).
    documents: HashMap<(usize, u32), Arc<[u32]>>,
    /// Key roots: the base model's at 0, adapter `k`'s at `k`.
    roots: Vec<u64>,
    /// The next fresh arrival (a request, or a conversation's first turn), drawn ahead.
    fresh: Option<Duration>,
    /// Conversations' next turns, earliest first (time in ns, conversation id).
    turns: BinaryHeap<Reverse<(u64, u64)>>,
    chats: HashMap<u64, Chat>,
    next_chat: u64,
    /// The empty prefix of requests without one, shared rather than allocated for each.
    no_tokens: Arc<[u32]>,
    no_prefix: Arc<[u64]>,
}

impl Generator {
    /// Requests of `workload` for `pods` pods at `rate_per_pod` requests/s each, until `duration`.
    pub fn new(
        workload: &Workload,
        pods: u32,
        rate_per_pod: f64,
        duration: Duration,
        seed: u64,
        block_tokens: u32,
    ) -> Self {
        // A class's weight is its share of requests; a conversation class starts conversations at
        // that share over its mean turns, so fresh arrivals run at `rate × Σ share / turns`.
        let total: f64 = workload.classes.iter().map(|c| c.weight).sum();
        let starts: Vec<f64> = workload
            .classes
            .iter()
            .map(|c| {
                let turns = c
                    .conversation
                    .as_ref()
                    .map_or(1.0, |v| v.turns.mean().max(1.0));
                c.weight / total / turns
            })
            .collect();
        let fresh_share: f64 = starts.iter().sum();
        let cumulative = starts
            .iter()
            .scan(0.0, |acc, s| {
                *acc += s / fresh_share;
                Some(*acc)
            })
            .collect();
        let doc_cdf = workload
            .classes
            .iter()
            .map(|c| c.documents.as_ref().map(|d| zipf_cdf(d.count, d.zipf)))
            .collect();
        let adapters = workload
            .classes
            .iter()
            .filter_map(|c| c.adapters.map(|a| a.count))
            .max()
            .unwrap_or(0);
        let roots = std::iter::once(kv::BASE_ROOT)
            .chain((1..=adapters).map(|k| kv::adapter_root(&adapter_name(k))))
            .collect();
        let zipf = workload
            .classes
            .iter()
            .map(|c| c.adapters.map(|a| zipf_cdf(a.count, a.zipf)))
            .collect();
        Self {
            classes: workload.classes.clone(),
            cumulative,
            zipf,
            arrival: workload.arrival.clone(),
            rate: rate_per_pod * f64::from(pods) * fresh_share,
            rng: SmallRng::seed_from_u64(seed),
            clock: 0.0,
            end: duration,
            next_id: 0,
            block_tokens: block_tokens.max(1),
            doc_cdf,
            prefix_tokens: HashMap::new(),
            prefix_keys: HashMap::new(),
            documents: HashMap::new(),
            roots,
            fresh: None,
            turns: BinaryHeap::new(),
            chats: HashMap::new(),
            next_chat: 0,
            no_tokens: Arc::from([]),
            no_prefix: Arc::from([]),
        }
    }

    /// Maps consumed "on" time to wall time: bursty arrivals happen only in the on part of a period.
    fn wall_time(&self, on_seconds: f64) -> f64 {
        match &self.arrival {
            Arrival::Poisson { .. } => on_seconds,
            Arrival::Bursty {
                burst_factor,
                period,
                ..
            } => {
                let period = period.as_secs_f64();
                let on = period / burst_factor;
                (on_seconds / on).floor() * period + on_seconds % on
            }
        }
    }

    fn draw(&mut self, dist: &Dist) -> u32 {
        draw(&mut self.rng, dist)
    }

    /// The root key of `adapter`'s blocks.
    fn root(&self, adapter: Option<u32>) -> u64 {
        self.roots[adapter.map_or(0, |a| a as usize)]
    }

    /// Keys of the full blocks of `tokens` under `adapter`.
    fn keys(&self, tokens: &[u32], adapter: Option<u32>) -> Vec<u64> {
        kv::block_keys(
            self.root(adapter),
            tokens,
            self.block_tokens as usize,
            usize::MAX,
        )
    }

    /// Shared prefix `group` of `class`: its tokens and its keys under `adapter`.
    fn prefix(
        &mut self,
        class: usize,
        group: u32,
        tokens: u32,
        adapter: Option<u32>,
    ) -> (Arc<[u32]>, Arc<[u64]>) {
        let ids = Arc::clone(
            self.prefix_tokens
                .entry((class, group))
                .or_insert_with(|| derived_tokens(&[1, class as u64, u64::from(group)], tokens)),
        );
        if let Some(keys) = self.prefix_keys.get(&(class, group, adapter)) {
            return (ids, Arc::clone(keys));
        }
        let keys: Arc<[u64]> = self.keys(&ids, adapter).into();
        self.prefix_keys
            .insert((class, group, adapter), Arc::clone(&keys));
        (ids, keys)
    }

    /// Document `doc` of `class`: its length is drawn once, from its own seed.
    fn document(&mut self, class: usize, doc: u32) -> Arc<[u32]> {
        if let Some(d) = self.documents.get(&(class, doc)) {
            return Arc::clone(d);
        }
        let dist = self.classes[class]
            .documents
            .as_ref()
            .expect("a documents class")
            .tokens
            .clone();
        let mut rng =
            SmallRng::seed_from_u64(splitmix((class as u64) << 32 ^ u64::from(doc) ^ 0xd0c5));
        let len = draw(&mut rng, &dist);
        let ids = derived_tokens(&[2, class as u64, u64::from(doc)], len);
        self.documents.insert((class, doc), Arc::clone(&ids));
        ids
    }

    fn pick(&mut self, cdf: &[f64]) -> u32 {
        let u: f64 = self.rng.random();
        cdf.iter().position(|&c| u < c).unwrap_or(cdf.len() - 1) as u32
    }

    /// Draws the time of the next fresh arrival, if it is before the end.
    fn next_fresh(&mut self) -> Option<Duration> {
        if self.fresh.is_none() {
            let burst = match &self.arrival {
                Arrival::Poisson { .. } => 1.0,
                Arrival::Bursty { burst_factor, .. } => *burst_factor,
            };
            let gap = -(1.0 - self.rng.random::<f64>()).ln() / (self.rate * burst);
            self.clock += gap;
            let at = Duration::from_secs_f64(self.wall_time(self.clock));
            self.fresh = Some(at);
        }
        self.fresh.filter(|&at| at < self.end)
    }

    /// A fresh arrival of a class that is not a conversation's follow-up turn.
    fn fresh_request(&mut self, at: Duration) -> Request {
        let u: f64 = self.rng.random();
        let class = self
            .cumulative
            .iter()
            .position(|&c| u < c)
            .unwrap_or(self.classes.len() - 1);
        let c = &self.classes[class];
        let (prompt_dist, output_dist, shared) = (
            c.prompt_tokens.clone(),
            c.output_tokens.clone(),
            c.shared_prefix,
        );
        let conversation = c.conversation.is_some();
        let documents = c.documents.clone();
        let mut prompt_tokens = self.draw(&prompt_dist);
        let output_tokens = self.draw(&output_dist).max(1);
        let group = shared.map(|p| self.rng.random_range(0..p.groups));
        let adapter = self.zipf[class].clone().map(|cdf| self.pick(&cdf) + 1);
        let (mut tokens, mut keys) = match (shared, group) {
            (Some(p), Some(g)) => self.prefix(class, g, p.tokens, adapter),
            _ => (Arc::clone(&self.no_tokens), Arc::clone(&self.no_prefix)),
        };
        if conversation {
            // The first turn: the system prompt and the first user message, all of it history.
            let mut history = tokens.to_vec();
            let chat_id = self.next_chat;
            self.next_chat += 1;
            history.extend(derived_tokens(&[3, chat_id, 0], prompt_tokens).iter());
            let mut chat = Chat {
                class,
                turns_left: 0,
                turn: 0,
                adapter,
                group,
                history,
                keys: keys.to_vec(),
            };
            let turns = self.draw(
                &self.classes[class]
                    .conversation
                    .as_ref()
                    .unwrap()
                    .turns
                    .clone(),
            );
            chat.turns_left = turns.saturating_sub(1);
            return self.turn(chat_id, chat, at, output_tokens);
        }
        if let Some(d) = documents {
            let cdf = self.doc_cdf[class].clone().expect("a documents class");
            let mut picked: Vec<u32> = Vec::with_capacity(d.per_request as usize);
            while picked.len() < d.per_request as usize {
                let doc = self.pick(&cdf);
                if !picked.contains(&doc) {
                    picked.push(doc);
                }
            }
            if d.order == DocumentOrder::Sorted {
                picked.sort_unstable();
            }
            let mut ids = tokens.to_vec();
            for doc in picked {
                ids.extend(self.document(class, doc).iter());
            }
            keys = self.keys(&ids, adapter).into();
            tokens = ids.into();
            prompt_tokens += tokens.len() as u32;
        } else if let Some(p) = shared {
            prompt_tokens = prompt_tokens.max(p.tokens + 1);
        }
        self.request(
            at,
            class,
            prompt_tokens,
            output_tokens,
            tokens,
            keys,
            group,
            adapter,
        )
    }

    /// Sends conversation `id`'s next turn (its history is the whole prompt) and schedules the
    /// one after it.
    fn turn(&mut self, id: u64, mut chat: Chat, at: Duration, output_tokens: u32) -> Request {
        let conv = self.classes[chat.class]
            .conversation
            .clone()
            .expect("a conversation class");
        let prompt: Arc<[u32]> = chat.history.as_slice().into();
        // Keys of the blocks the previous turn's prompt already had are kept; the rest chain on.
        let bt = self.block_tokens as usize;
        let known = chat.keys.len();
        let parent = chat.keys.last().copied().unwrap_or(self.root(chat.adapter));
        chat.keys.extend(kv::block_keys(
            parent,
            &prompt[known * bt..],
            bt,
            usize::MAX,
        ));
        let keys: Arc<[u64]> = chat.keys.as_slice().into();
        let request = self.request(
            at,
            chat.class,
            prompt.len() as u32,
            output_tokens,
            Arc::clone(&prompt),
            keys,
            chat.group,
            chat.adapter,
        );
        // The next turn: this prompt, this answer, a new user message.
        if chat.turns_left > 0 {
            chat.turns_left -= 1;
            chat.turn += 1;
            let class = &self.classes[chat.class];
            let user_dist = class.prompt_tokens.clone();
            let user = self.draw(&user_dist);
            let think = Duration::from_secs(u64::from(self.draw(&conv.think_seconds)));
            let next = chat.history.len() as u64 + u64::from(output_tokens) + u64::from(user);
            if next <= u64::from(conv.max_context_tokens) && at + think < self.end {
                let turn = u64::from(chat.turn);
                chat.history
                    .extend(derived_tokens(&[4, id, turn], output_tokens).iter());
                chat.history
                    .extend(derived_tokens(&[3, id, turn], user).iter());
                let at_ns = u64::try_from((at + think).as_nanos()).unwrap_or(u64::MAX);
                self.turns.push(Reverse((at_ns, id)));
                self.chats.insert(id, chat);
            }
        }
        request
    }

    #[allow(clippy::too_many_arguments)]
    fn request(
        &mut self,
        at: Duration,
        class: usize,
        prompt_tokens: u32,
        output_tokens: u32,
        prefix_tokens: Arc<[u32]>,
        prefix: Arc<[u64]>,
        group: Option<u32>,
        adapter: Option<u32>,
    ) -> Request {
        let id = self.next_id;
        self.next_id += 1;
        Request {
            id,
            at,
            class,
            priority: self.classes[class].priority,
            prompt_tokens,
            output_tokens,
            prefix_tokens,
            prefix,
            group,
            adapter,
        }
    }
}

impl Iterator for Generator {
    type Item = Request;

    fn next(&mut self) -> Option<Request> {
        let fresh = self.next_fresh();
        let turn = self
            .turns
            .peek()
            .map(|&Reverse((at, id))| (Duration::from_nanos(at), id));
        match (fresh, turn) {
            (_, Some((at, id))) if fresh.is_none_or(|f| at <= f) => {
                self.turns.pop();
                let chat = self.chats.remove(&id).expect("a scheduled conversation");
                let output_dist = self.classes[chat.class].output_tokens.clone();
                let output = self.draw(&output_dist).max(1);
                Some(self.turn(id, chat, at, output))
            }
            (Some(at), _) => {
                self.fresh = None;
                Some(self.fresh_request(at))
            }
            (None, _) => None,
        }
    }
}

/// The cumulative Zipf distribution over `count` items with exponent `s`.
fn zipf_cdf(count: u32, s: f64) -> Vec<f64> {
    let w: Vec<f64> = (1..=count).map(|k| f64::from(k).powf(-s)).collect();
    let sum: f64 = w.iter().sum();
    w.iter()
        .scan(0.0, |acc, x| {
            *acc += x / sum;
            Some(*acc)
        })
        .collect()
}

/// `len` token ids derived from `what` (a kind tag and the ids naming the content) and the
/// position: the same content always has the same tokens, in any run.
fn derived_tokens(what: &[u64], len: u32) -> Arc<[u32]> {
    let mut seed = 0x746f_6b65_6e73u64;
    for &w in what {
        seed = splitmix(seed ^ w);
    }
    (0..u64::from(len))
        .map(|i| tokenizer::token_of_hash(splitmix(seed ^ i)))
        .collect()
}

/// A well-mixed 64-bit hash of `x` (SplitMix64's finalizer).
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn draw(rng: &mut SmallRng, dist: &Dist) -> u32 {
    match *dist {
        Dist::Fixed(n) => n,
        Dist::Uniform([lo, hi]) => rng.random_range(lo..=hi),
        Dist::Lognormal { median, sigma, max } => {
            let x = (median * (sigma * standard_normal(rng)).exp()).round();
            let x = x.clamp(1.0, f64::from(max.unwrap_or(u32::MAX)));
            x as u32
        }
    }
}

/// A standard normal draw (Box–Muller).
fn standard_normal(rng: &mut SmallRng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Tokens of unique text after the prefix in a short prompt (what a prefix index needs to tell
/// the request's own text from the next one's).
const SHORT_TAIL_TOKENS: u32 = 6;

/// Appends `req`'s prompt token ids to `out`: its prefix tokens, then tokens unique to the
/// request — up to `prompt_tokens` with `full`, else a short tail only (enough for a picker).
pub fn push_prompt_token_ids(req: &Request, full: bool, out: &mut Vec<u32>) {
    out.extend_from_slice(&req.prefix_tokens);
    let rest = req
        .prompt_tokens
        .saturating_sub(req.prefix_tokens.len() as u32);
    let tail = if full {
        rest
    } else {
        rest.min(SHORT_TAIL_TOKENS)
    };
    let seed = splitmix(req.id ^ 0x7461_696c);
    out.extend((0..u64::from(tail)).map(|i| tokenizer::token_of_hash(splitmix(seed ^ i))));
}

/// `req`'s prompt token ids (see [`push_prompt_token_ids`]).
pub fn prompt_token_ids(req: &Request, full: bool) -> Vec<u32> {
    let mut ids = Vec::with_capacity(if full {
        req.prompt_tokens as usize
    } else {
        req.prefix_tokens.len() + SHORT_TAIL_TOKENS as usize
    });
    push_prompt_token_ids(req, full, &mut ids);
    ids
}

/// Prompt text for `req`: the words of its [token ids](prompt_token_ids) in the lab's
/// vocabulary, which the lab's tokenizer turns back into exactly those ids.
pub fn prompt_text(req: &Request, full: bool) -> String {
    crate::tokenizer::text_of(&prompt_token_ids(req, full))
}
