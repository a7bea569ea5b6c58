//! The `least-request` profile: fewest requests waiting, running and routed since the last report.

use rand::rngs::SmallRng;

use super::{Parts, Policy, Profile, Reads, lowest_cost};
use crate::scheduler::candidates::Candidate;
use crate::scheduler::request::ResolvedRequest;

/// The `least-request` profile.
#[derive(Debug)]
pub(crate) struct LeastRequest;

impl Profile for LeastRequest {
    fn policy(&self) -> Policy {
        Policy::LeastRequest
    }

    fn reads(&self) -> Reads {
        Reads {
            inflight: true,
            ..Reads::default()
        }
    }

    fn score(
        &self,
        cands: &mut [Candidate],
        _request: &ResolvedRequest<'_>,
        _parts: Option<&mut Vec<Parts>>,
    ) {
        for c in cands.iter_mut() {
            c.cost = c.load() as f64;
        }
    }

    fn choose(
        &self,
        cands: &[Candidate],
        n: usize,
        _request: &ResolvedRequest<'_>,
        rng: &mut SmallRng,
    ) -> Vec<usize> {
        lowest_cost(cands, n, rng)
    }
}
