//! Drawing requests from a workload: arrival times, classes, lengths, prefixes and adapters.
//! Deterministic for a seed.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::{Arrival, Class, Dist, Workload};

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
    /// Chained hashes of the shared prefix's full blocks (empty without one).
    pub prefix: Arc<[u64]>,
    /// Which shared prefix (group) it uses.
    pub group: Option<u32>,
    /// LoRA adapter number, 1-based (see [`super::adapter_name`]).
    pub adapter: Option<u32>,
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
    prefixes: HashMap<(usize, u32), Arc<[u64]>>,
    /// The prefix of requests without one, shared rather than allocated for each.
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
        let total: f64 = workload.classes.iter().map(|c| c.weight).sum();
        let cumulative = workload
            .classes
            .iter()
            .scan(0.0, |acc, c| {
                *acc += c.weight / total;
                Some(*acc)
            })
            .collect();
        let zipf = workload
            .classes
            .iter()
            .map(|c| {
                c.adapters.map(|a| {
                    let w: Vec<f64> = (1..=a.count).map(|k| f64::from(k).powf(-a.zipf)).collect();
                    let sum: f64 = w.iter().sum();
                    w.iter()
                        .scan(0.0, |acc, x| {
                            *acc += x / sum;
                            Some(*acc)
                        })
                        .collect()
                })
            })
            .collect();
        Self {
            classes: workload.classes.clone(),
            cumulative,
            zipf,
            arrival: workload.arrival.clone(),
            rate: rate_per_pod * f64::from(pods),
            rng: SmallRng::seed_from_u64(seed),
            clock: 0.0,
            end: duration,
            next_id: 0,
            block_tokens: block_tokens.max(1),
            prefixes: HashMap::new(),
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
        match *dist {
            Dist::Fixed(n) => n,
            Dist::Uniform([lo, hi]) => self.rng.random_range(lo..=hi),
            Dist::Lognormal { median, sigma, max } => {
                let x = (median * (sigma * standard_normal(&mut self.rng)).exp()).round();
                let x = x.clamp(1.0, f64::from(max.unwrap_or(u32::MAX)));
                x as u32
            }
        }
    }

    fn prefix(&mut self, class: usize, group: u32, tokens: u32) -> Arc<[u64]> {
        let blocks = tokens / self.block_tokens;
        Arc::clone(self.prefixes.entry((class, group)).or_insert_with(|| {
            let mut prev = 0u64;
            (0..blocks)
                .map(|i| {
                    let mut h = DefaultHasher::new();
                    (prev, class, group, i).hash(&mut h);
                    prev = h.finish();
                    prev
                })
                .collect::<Vec<_>>()
                .into()
        }))
    }
}

impl Iterator for Generator {
    type Item = Request;

    fn next(&mut self) -> Option<Request> {
        let burst = match &self.arrival {
            Arrival::Poisson { .. } => 1.0,
            Arrival::Bursty { burst_factor, .. } => *burst_factor,
        };
        let gap = -(1.0 - self.rng.random::<f64>()).ln() / (self.rate * burst);
        self.clock += gap;
        let at = Duration::from_secs_f64(self.wall_time(self.clock));
        if at >= self.end {
            return None;
        }
        let u: f64 = self.rng.random();
        let class = self
            .cumulative
            .iter()
            .position(|&c| u < c)
            .unwrap_or(self.classes.len() - 1);
        let c = self.classes[class].clone();
        let mut prompt_tokens = self.draw(&c.prompt_tokens);
        let output_tokens = self.draw(&c.output_tokens).max(1);
        let (prefix, group) = match c.shared_prefix {
            Some(p) => {
                let group = self.rng.random_range(0..p.groups);
                prompt_tokens = prompt_tokens.max(p.tokens + 1);
                (self.prefix(class, group, p.tokens), Some(group))
            }
            None => (Arc::clone(&self.no_prefix), None),
        };
        let adapter = self.zipf[class].as_ref().map(|cdf| {
            let u: f64 = self.rng.random();
            cdf.iter().position(|&c| u < c).unwrap_or(cdf.len() - 1) as u32 + 1
        });
        let id = self.next_id;
        self.next_id += 1;
        Some(Request {
            id,
            at,
            class,
            priority: c.priority,
            prompt_tokens,
            output_tokens,
            prefix,
            group,
            adapter,
        })
    }
}

/// A standard normal draw (Box–Muller).
fn standard_normal(rng: &mut SmallRng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Characters per token in generated prompt text (the usual English average, and what the
/// emulator assumes when it counts tokens).
pub const CHARS_PER_TOKEN: usize = 4;

/// Prompt text for `req`: each shared-prefix block (16 tokens) becomes 64 characters derived from
/// its hash, so equal prefixes give equal text and prefix-aware pickers and the emulator's cache
/// see them as such. With `full`, unique text follows up to `prompt_tokens × 4` characters;
/// without it, a short unique tail only (enough for a picker's prefix index).
pub fn prompt_text(req: &Request, full: bool) -> String {
    let prefix_chars = req.prefix.len() * 64;
    let want = if full {
        (req.prompt_tokens as usize * CHARS_PER_TOKEN).max(prefix_chars + 1)
    } else {
        prefix_chars + 24
    };
    let mut s = String::with_capacity(want + 32);
    for h in req.prefix.iter() {
        for _ in 0..4 {
            let _ = write!(s, "{h:016x}");
        }
    }
    let _ = write!(s, " request {} ", req.id);
    let filler = "lorem ipsum dolor sit amet ";
    while s.len() < want {
        let take = (want - s.len()).min(filler.len());
        s.push_str(&filler[..take]);
    }
    s
}
