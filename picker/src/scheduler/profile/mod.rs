//! The scheduling profiles behind one trait: each scores the candidates its own way and chooses
//! among them; the scheduler runs the same stages around every one of them.
//!
//! | profile | file | scores by |
//! |---|---|---|
//! | `inferpick` | [`inferpick`] | predicted seconds to first token, with the in-flight estimate, prefix credit and power-of-k |
//! | `gie` | [`gie`] | the Gateway API Inference Extension's weighted scorers |
//! | `least-request` | [`least_request`] | fewest requests held or routed |
//! | `round-robin` | [`round_robin`] | nothing: each in turn, per model |
//! | `random` | [`random`] | nothing: uniformly at random |

mod gie;
mod inferpick;
mod least_request;
mod random;
mod round_robin;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::rngs::SmallRng;

pub use inferpick::CostModel;

use super::SchedulerConfig;
use super::candidates::Candidate;
use super::request::ResolvedRequest;

/// A scheduling profile's name, as in `--policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    /// Predicted time to first token with in-flight estimate, prefix credit and power-of-k.
    Inferpick,
    /// The Gateway API Inference Extension's weighted scorers (queue 2, KV 2, prefix 3, LoRA 1).
    Gie,
    /// Fewest requests (waiting + running + routed since the last report).
    LeastRequest,
    /// Each ready endpoint in turn.
    RoundRobin,
    /// Uniformly at random.
    Random,
}

impl Policy {
    /// Every profile.
    pub const ALL: [Policy; 5] = [
        Policy::Inferpick,
        Policy::Gie,
        Policy::LeastRequest,
        Policy::RoundRobin,
        Policy::Random,
    ];

    /// The CLI and config name.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Inferpick => "inferpick",
            Policy::Gie => "gie",
            Policy::LeastRequest => "least-request",
            Policy::RoundRobin => "round-robin",
            Policy::Random => "random",
        }
    }

    /// The profile that implements it.
    pub(crate) fn profile(self, config: &SchedulerConfig) -> Box<dyn Profile> {
        match self {
            Policy::Inferpick => Box::new(inferpick::Inferpick::new(config.cost.clone())),
            Policy::Gie => Box::new(gie::Gie::new(config.gie_stale_after)),
            Policy::LeastRequest => Box::new(least_request::LeastRequest),
            Policy::RoundRobin => Box::new(round_robin::RoundRobin::default()),
            Policy::Random => Box::new(random::Random),
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A policy name that is not one of [`Policy::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown policy {0:?}: expected one of inferpick, gie, least-request, round-robin, random")]
pub struct UnknownPolicy(pub String);

impl FromStr for Policy {
    type Err = UnknownPolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Policy::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownPolicy(s.to_string()))
    }
}

/// What the candidate stage reads for a profile (reading less is faster).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Reads {
    /// The in-flight estimate and the routed prefill backlog; they also count toward saturation.
    pub(crate) inflight: bool,
    /// The prompt's blocks, looked up in the prefix index.
    pub(crate) prefix: bool,
    /// The session key, looked up in the prefix index.
    pub(crate) session: bool,
    /// A pool larger than the scan limit may be scored on a random window of it.
    pub(crate) window: bool,
    /// Saturation counts an endpoint whose report is older than this as saturated.
    pub(crate) saturated_after: Option<Duration>,
    /// Sheddable requests are refused when the pool is saturated (the baselines never shed,
    /// like the plain balancers they stand for).
    pub(crate) sheds: bool,
}

/// Explained parts of one candidate's score, named by [`Profile::part_names`].
pub(crate) type Parts = [f64; 5];

/// One scheduling profile: how candidates are scored, and how one is chosen among them.
pub(crate) trait Profile: fmt::Debug + Send + Sync {
    /// Its name.
    fn policy(&self) -> Policy;

    /// What the candidate stage must read.
    fn reads(&self) -> Reads;

    /// Fills each candidate's `cost` (lower is better; profiles that maximize a score store its
    /// negation), and pushes each one's parts to `parts` when asked.
    fn score(
        &self,
        _cands: &mut [Candidate],
        _request: &ResolvedRequest<'_>,
        _parts: Option<&mut Vec<Parts>>,
    ) {
    }

    /// The chosen candidate first, then up to `n - 1` fallbacks: indices into `cands` (not empty).
    fn choose(
        &self,
        cands: &[Candidate],
        n: usize,
        request: &ResolvedRequest<'_>,
        rng: &mut SmallRng,
    ) -> Vec<usize>;

    /// When a shed request should try again.
    fn retry_after(&self, _cands: &[Candidate]) -> Duration {
        Duration::from_secs(1)
    }

    /// The names of the parts [`score`](Self::score) explains.
    fn part_names(&self) -> &'static [&'static str] {
        &[]
    }

    /// What a candidate's score means, for explain.
    fn score_is(&self) -> &'static str {
        "cost (lower is better)"
    }

    /// The prefill (seconds) the chosen candidate adds to its routed backlog, for profiles that
    /// cost one.
    fn routed_prefill(&self, _chosen: &Candidate) -> Option<f64> {
        None
    }
}

/// `first`, then the `n - 1` lowest-cost others, best first. One pass keeping a short sorted list:
/// `n` is small (fallbacks + 1), the pool may be large.
pub(crate) fn best_rest(cands: &[Candidate], first: usize, n: usize) -> Vec<usize> {
    let k = n.saturating_sub(1);
    let mut rest: Vec<(f64, usize)> = Vec::with_capacity(k + 1);
    if k > 0 {
        for (i, c) in cands.iter().enumerate() {
            if i == first || (rest.len() == k && c.cost >= rest[k - 1].0) {
                continue;
            }
            let at = rest.partition_point(|&(cost, _)| cost <= c.cost);
            rest.insert(at, (c.cost, i));
            rest.truncate(k);
        }
    }
    std::iter::once(first)
        .chain(rest.into_iter().map(|(_, i)| i))
        .collect()
}

/// A lowest-cost candidate, ties broken at random, then the next best.
pub(crate) fn lowest_cost(cands: &[Candidate], n: usize, rng: &mut SmallRng) -> Vec<usize> {
    use rand::Rng;
    let best = cands.iter().map(|c| c.cost).fold(f64::INFINITY, f64::min);
    let ties: Vec<usize> = (0..cands.len())
        .filter(|&i| cands[i].cost <= best + 1e-9)
        .collect();
    let first = ties[rng.random_range(0..ties.len())];
    best_rest(cands, first, n)
}
