//! Workloads: what requests arrive, when, and how long they are. The built-in ones and YAML files
//! share one format (SCHEDULING.md):
//!
//! ```yaml
//! name: my-workload
//! arrival: { process: poisson, rate_per_pod: 2.5 }   # or { process: bursty, rate_per_pod: 2.5, burst_factor: 2, period: 30s }
//! duration: 600s
//! classes:                         # a request draws its class by weight
//!   - { weight: 70, priority: 0,  prompt_tokens: { lognormal: { median: 600, sigma: 0.8 } }, output_tokens: { uniform: [50, 400] } }
//!   - { weight: 20, priority: 10, prompt_tokens: { fixed: 4000 }, output_tokens: { fixed: 200 }, shared_prefix: { groups: 40, tokens: 3000 } }
//!   - { weight: 10, priority: -1, prompt_tokens: { fixed: 8000 }, output_tokens: { fixed: 500 }, adapters: { count: 12, zipf: 1.1 } }
//! pods: { count: 8, max_loras: 3, kv_tokens: 400000 }
//! ```
//!
//! `prompt_tokens` is the whole prompt; with `shared_prefix`, its first `tokens` are one of
//! `groups` prefixes shared by the class's requests (a prompt drawn shorter than the prefix is
//! lengthened to the prefix plus one token).

mod builtin;
mod sample;

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

pub use builtin::BUILTIN;
pub use sample::{Generator, Request, prompt_text, prompt_token_ids, push_prompt_token_ids};

/// A workload: arrivals, request classes, and the fleet it was written for.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Shown in reports.
    pub name: String,
    /// How requests arrive.
    pub arrival: Arrival,
    /// Simulated time to run (default 600 s).
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub duration: Option<Duration>,
    /// Request classes, drawn by weight.
    pub classes: Vec<Class>,
    /// The fleet this workload is meant for.
    #[serde(default)]
    pub pods: Pods,
}

/// Arrival process; the rate is per pod, so a workload scales with the fleet.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "process", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Arrival {
    /// Poisson arrivals at a constant rate.
    Poisson {
        /// Requests per second per pod.
        rate_per_pod: f64,
    },
    /// On/off arrivals: for `1/burst_factor` of every period at `burst_factor ×` the mean rate,
    /// then nothing until the period ends. The mean rate is `rate_per_pod`.
    Bursty {
        /// Mean requests per second per pod.
        rate_per_pod: f64,
        /// Rate during a burst over the mean (default 2).
        #[serde(default = "default_burst_factor")]
        burst_factor: f64,
        /// One on/off cycle (default 30 s).
        #[serde(default = "default_period", deserialize_with = "de_duration")]
        period: Duration,
    },
}

fn default_burst_factor() -> f64 {
    2.0
}

fn default_period() -> Duration {
    Duration::from_secs(30)
}

impl Arrival {
    /// Mean requests per second per pod.
    pub fn rate_per_pod(&self) -> f64 {
        match self {
            Arrival::Poisson { rate_per_pod } | Arrival::Bursty { rate_per_pod, .. } => {
                *rate_per_pod
            }
        }
    }

    /// The same process at another mean rate.
    pub fn with_rate(&self, rate: f64) -> Arrival {
        let mut a = self.clone();
        match &mut a {
            Arrival::Poisson { rate_per_pod } | Arrival::Bursty { rate_per_pod, .. } => {
                *rate_per_pod = rate
            }
        }
        a
    }
}

/// One kind of request.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Class {
    /// Relative share of requests (default 1).
    #[serde(default = "default_weight")]
    pub weight: f64,
    /// Scheduling priority; negative is sheddable.
    #[serde(default)]
    pub priority: i32,
    /// Whole prompt length.
    pub prompt_tokens: Dist,
    /// Output length.
    pub output_tokens: Dist,
    /// A prefix shared by groups of requests (system prompts, documents).
    #[serde(default)]
    pub shared_prefix: Option<SharedPrefix>,
    /// LoRA adapters the class's requests ask for.
    #[serde(default)]
    pub adapters: Option<AdapterMix>,
    /// Requests are turns of conversations: each resends the whole history. `prompt_tokens` is
    /// then each turn's new user message, `output_tokens` each answer, and `shared_prefix` the
    /// system prompt a conversation starts with.
    #[serde(default)]
    pub conversation: Option<Conversation>,
    /// Requests carry retrieved documents (RAG): the system prompt (`shared_prefix`), then
    /// `per_request` of the class's documents, then the question (`prompt_tokens`).
    #[serde(default)]
    pub documents: Option<Documents>,
}

/// Multi-turn conversations. Turn 1 is the system prompt and a user message; turn `k` is turn
/// `k − 1`'s prompt, its answer and a new user message.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conversation {
    /// Turns per conversation.
    pub turns: Dist,
    /// Seconds from one turn's arrival to the next's: reading the answer and typing. Open loop:
    /// the next turn does not wait for the answer, so a slow fleet does not lower the load.
    pub think_seconds: Dist,
    /// A conversation ends before a turn whose prompt would exceed this (default 16,000 tokens).
    #[serde(default = "default_max_context")]
    pub max_context_tokens: u32,
}

fn default_max_context() -> u32 {
    16_000
}

/// Documents retrieved into prompts, by Zipf popularity.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Documents {
    /// Documents in the corpus (1 is the most popular).
    pub count: u32,
    /// Documents in each prompt, distinct.
    pub per_request: u32,
    /// Length of each document (drawn once per document).
    pub tokens: Dist,
    /// Zipf exponent of document popularity (default 1).
    #[serde(default = "default_zipf")]
    pub zipf: f64,
    /// The order documents appear in the prompt (default `retrieval`).
    #[serde(default)]
    pub order: DocumentOrder,
}

/// How a prompt orders its documents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DocumentOrder {
    /// By the retriever's score for the question, best first, as RAG frameworks (LangChain,
    /// LlamaIndex) concatenate them: here, the order they were drawn, so the popular documents
    /// tend to lead but two questions with the same documents may order them differently.
    #[default]
    Retrieval,
    /// By document id: an application that sorts its context so prompts share prefixes.
    Sorted,
}

fn default_weight() -> f64 {
    1.0
}

/// A token-count distribution, written as a one-key map: `{ fixed: 4000 }`,
/// `{ uniform: [50, 400] }` or `{ lognormal: { median: 600, sigma: 0.8, max: 8000 } }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "DistSpec")]
pub enum Dist {
    /// Always this many.
    Fixed(u32),
    /// Uniform between the two bounds, inclusive.
    Uniform([u32; 2]),
    /// Log-normal: `median · e^(sigma·N(0,1))`, rounded, at least 1, at most `max` when given.
    Lognormal {
        /// The median.
        median: f64,
        /// Spread of the logarithm.
        sigma: f64,
        /// Upper bound (default none).
        max: Option<u32>,
    },
}

/// The file form of [`Dist`]: exactly one of its keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DistSpec {
    #[serde(default)]
    fixed: Option<u32>,
    #[serde(default)]
    uniform: Option<[u32; 2]>,
    #[serde(default)]
    lognormal: Option<LognormalSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LognormalSpec {
    median: f64,
    sigma: f64,
    #[serde(default)]
    max: Option<u32>,
}

impl TryFrom<DistSpec> for Dist {
    type Error = String;

    fn try_from(spec: DistSpec) -> Result<Dist, String> {
        match (spec.fixed, spec.uniform, spec.lognormal) {
            (Some(n), None, None) => Ok(Dist::Fixed(n)),
            (None, Some(b), None) => Ok(Dist::Uniform(b)),
            (None, None, Some(l)) => Ok(Dist::Lognormal {
                median: l.median,
                sigma: l.sigma,
                max: l.max,
            }),
            _ => Err("give exactly one of `fixed`, `uniform`, `lognormal`".into()),
        }
    }
}

/// Requests of a class share one of `groups` prefixes of `tokens` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedPrefix {
    /// Distinct prefixes (customers, documents), chosen uniformly.
    pub groups: u32,
    /// Tokens in each prefix.
    pub tokens: u32,
}

/// Requests of a class use one of `count` LoRA adapters, Zipf-distributed.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterMix {
    /// Distinct adapters, named `adapter-1` … `adapter-N` (1 is the most popular).
    pub count: u32,
    /// Zipf exponent (default 1; 0 is uniform).
    #[serde(default = "default_zipf")]
    pub zipf: f64,
}

fn default_zipf() -> f64 {
    1.0
}

/// The fleet a workload describes.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pods {
    /// Pods (default 8; `--pods` overrides).
    #[serde(default = "default_pods")]
    pub count: u32,
    /// LoRA slots per pod (default: the engine's, 4).
    #[serde(default)]
    pub max_loras: Option<u32>,
    /// KV cache tokens per pod (default: the engine's, 400,000).
    #[serde(default)]
    pub kv_tokens: Option<u64>,
}

impl Default for Pods {
    fn default() -> Self {
        Self {
            count: default_pods(),
            max_loras: None,
            kv_tokens: None,
        }
    }
}

fn default_pods() -> u32 {
    8
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s)
        .map_err(|e| serde::de::Error::custom(format!("{s:?} is not a duration like 600s: {e}")))
}

fn de_opt_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

/// A workload that could not be loaded; the message names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// Not a built-in name, and no such file. The I/O error is part of the message, not a
    /// source, so that a report of the error chain says it once.
    #[error(
        "workload {0:?}: neither a built-in ({builtins}) nor a readable file: {1}",
        builtins = BUILTIN.join(", ")
    )]
    NotFound(String, std::io::Error),
    /// The file is not valid YAML for the format.
    #[error("{file}: {path}: {message}")]
    Parse {
        /// The file.
        file: String,
        /// Key path of the problem (`classes[1].prompt_tokens`), `.` for the document.
        path: String,
        /// What was wrong.
        message: String,
    },
    /// A value is out of range.
    #[error("{file}: {path}: {message}")]
    Invalid {
        /// The file.
        file: String,
        /// Key path of the problem.
        path: String,
        /// What was wrong.
        message: String,
    },
}

impl Workload {
    /// A built-in workload by name, or else a YAML file at that path.
    pub fn load(name_or_path: &str) -> Result<Workload, WorkloadError> {
        if let Some(w) = builtin::get(name_or_path) {
            return Ok(w);
        }
        let text = std::fs::read_to_string(Path::new(name_or_path))
            .map_err(|e| WorkloadError::NotFound(name_or_path.to_string(), e))?;
        Workload::parse(&text, name_or_path)
    }

    /// Parses and validates a workload file's text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Workload, WorkloadError> {
        let de = serde_norway::Deserializer::from_str(text);
        let w: Workload = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let message = without_path(&path, e.into_inner().to_string());
            WorkloadError::Parse {
                file: file.to_string(),
                path,
                message,
            }
        })?;
        w.validate()
            .map_err(|(path, message)| WorkloadError::Invalid {
                file: file.to_string(),
                path,
                message,
            })?;
        Ok(w)
    }

    /// Simulated time to run.
    pub fn duration(&self) -> Duration {
        self.duration.unwrap_or(Duration::from_secs(600))
    }

    /// Checks every value; returns the key path and the problem of the first bad one.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let rate = self.arrival.rate_per_pod();
        if !(rate.is_finite() && rate > 0.0) {
            return Err((
                "arrival.rate_per_pod".into(),
                format!("{rate}: must be a positive number"),
            ));
        }
        if let Arrival::Bursty {
            burst_factor,
            period,
            ..
        } = &self.arrival
        {
            if !(burst_factor.is_finite() && *burst_factor >= 1.0) {
                return Err((
                    "arrival.burst_factor".into(),
                    format!("{burst_factor}: must be at least 1"),
                ));
            }
            if period.is_zero() {
                return Err(("arrival.period".into(), "must be above zero".into()));
            }
        }
        if self.duration.is_some_and(|d| d.is_zero()) {
            return Err(("duration".into(), "must be above zero".into()));
        }
        if self.classes.is_empty() {
            return Err(("classes".into(), "at least one class is needed".into()));
        }
        for (i, c) in self.classes.iter().enumerate() {
            let at = |key: &str| format!("classes[{i}].{key}");
            if !(c.weight.is_finite() && c.weight > 0.0) {
                return Err((at("weight"), format!("{}: must be positive", c.weight)));
            }
            c.prompt_tokens
                .validate()
                .map_err(|m| (at("prompt_tokens"), m))?;
            c.output_tokens
                .validate()
                .map_err(|m| (at("output_tokens"), m))?;
            if let Some(p) = &c.shared_prefix
                && (p.groups == 0 || p.tokens == 0)
            {
                return Err((
                    at("shared_prefix"),
                    "groups and tokens must both be at least 1".into(),
                ));
            }
            if c.conversation.is_some() && c.documents.is_some() {
                return Err((
                    at("documents"),
                    "a class has either `conversation` or `documents`, not both".into(),
                ));
            }
            if let Some(conv) = &c.conversation {
                conv.turns
                    .validate()
                    .map_err(|m| (at("conversation.turns"), m))?;
                conv.think_seconds
                    .validate()
                    .map_err(|m| (at("conversation.think_seconds"), m))?;
                if conv.max_context_tokens == 0 {
                    return Err((
                        at("conversation.max_context_tokens"),
                        "must be at least 1".into(),
                    ));
                }
            }
            if let Some(d) = &c.documents {
                if d.count == 0 || d.per_request == 0 || d.per_request > d.count {
                    return Err((
                        at("documents"),
                        format!(
                            "per_request = {}, count = {}: need 1 ≤ per_request ≤ count",
                            d.per_request, d.count
                        ),
                    ));
                }
                d.tokens
                    .validate()
                    .map_err(|m| (at("documents.tokens"), m))?;
                if !(d.zipf.is_finite() && d.zipf >= 0.0) {
                    return Err((at("documents.zipf"), format!("{}: must be ≥ 0", d.zipf)));
                }
            }
            if let Some(a) = &c.adapters {
                if a.count == 0 {
                    return Err((at("adapters.count"), "must be at least 1".into()));
                }
                if !(a.zipf.is_finite() && a.zipf >= 0.0) {
                    return Err((at("adapters.zipf"), format!("{}: must be ≥ 0", a.zipf)));
                }
            }
        }
        if self.pods.count == 0 {
            return Err(("pods.count".into(), "must be at least 1".into()));
        }
        if self.pods.kv_tokens.is_some_and(|k| k < 16) {
            return Err(("pods.kv_tokens".into(), "must be at least 16".into()));
        }
        Ok(())
    }

    /// Names of every LoRA adapter some class uses.
    pub fn adapter_names(&self) -> Vec<String> {
        let most = self
            .classes
            .iter()
            .filter_map(|c| c.adapters.map(|a| a.count))
            .max()
            .unwrap_or(0);
        (1..=most).map(adapter_name).collect()
    }
}

/// serde_norway starts its messages with the path of the enclosing value; the error already names
/// the (more precise) path, so say it once.
pub(crate) fn without_path(path: &str, message: String) -> String {
    match message.split_once(": ") {
        Some((head, rest)) if !head.is_empty() && path.starts_with(head) => rest.to_string(),
        _ => message,
    }
}

/// The model name of adapter `k` (1-based).
pub fn adapter_name(k: u32) -> String {
    format!("adapter-{k}")
}

impl Dist {
    fn validate(&self) -> Result<(), String> {
        match *self {
            Dist::Fixed(0) => Err("fixed: must be at least 1".into()),
            Dist::Uniform([lo, hi]) if lo == 0 || lo > hi => {
                Err(format!("uniform: [{lo}, {hi}] must have 1 ≤ low ≤ high"))
            }
            Dist::Lognormal { median, sigma, max } => {
                if !(median.is_finite() && median >= 1.0) {
                    Err(format!("lognormal.median = {median}: must be at least 1"))
                } else if !(sigma.is_finite() && sigma >= 0.0) {
                    Err(format!("lognormal.sigma = {sigma}: must be ≥ 0"))
                } else if max == Some(0) {
                    Err("lognormal.max: must be at least 1".into())
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    /// The distribution's mean (of the clamped, rounded values, estimated for log-normals).
    pub fn mean(&self) -> f64 {
        match *self {
            Dist::Fixed(n) => f64::from(n),
            Dist::Uniform([lo, hi]) => (f64::from(lo) + f64::from(hi)) / 2.0,
            Dist::Lognormal { median, sigma, max } => {
                let m = median * (sigma * sigma / 2.0).exp();
                max.map_or(m, |x| m.min(f64::from(x)))
            }
        }
    }
}

#[cfg(test)]
mod tests;
