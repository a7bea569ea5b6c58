//! The `random` profile: uniformly at random, fallbacks too.

use rand::Rng;
use rand::rngs::SmallRng;

use super::{Policy, Profile, Reads};
use crate::scheduler::candidates::Candidate;
use crate::scheduler::request::ResolvedRequest;

/// The `random` profile.
#[derive(Debug)]
pub(crate) struct Random;

impl Profile for Random {
    fn policy(&self) -> Policy {
        Policy::Random
    }

    fn reads(&self) -> Reads {
        Reads::default()
    }

    fn choose(
        &self,
        cands: &[Candidate],
        n: usize,
        _request: &ResolvedRequest<'_>,
        rng: &mut SmallRng,
    ) -> Vec<usize> {
        let len = cands.len();
        let n = n.min(len);
        let mut idx: Vec<usize> = (0..len).collect();
        for i in 0..n {
            let j = rng.random_range(i..len);
            idx.swap(i, j);
        }
        idx.truncate(n);
        idx
    }
}
