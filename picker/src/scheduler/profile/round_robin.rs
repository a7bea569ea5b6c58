//! The `round-robin` profile: each ready endpoint in turn, with one position per model, so that
//! models sharing endpoints do not take turns from each other.

use std::collections::HashMap;
use std::sync::Mutex;

use rand::rngs::SmallRng;

use super::{Policy, Profile, Reads};
use crate::scheduler::candidates::Candidate;
use crate::scheduler::request::ResolvedRequest;
use crate::table::{ModelKey, lock};

/// Most models with a position of their own; past it the positions start over (a turn is lost,
/// nothing else), so a flood of made-up model names cannot grow it.
const MAX_MODELS: usize = 4096;

/// The `round-robin` profile.
#[derive(Debug, Default)]
pub(crate) struct RoundRobin {
    next: Mutex<HashMap<ModelKey, usize>>,
}

impl Profile for RoundRobin {
    fn policy(&self) -> Policy {
        Policy::RoundRobin
    }

    fn reads(&self) -> Reads {
        Reads::default()
    }

    fn choose(
        &self,
        cands: &[Candidate],
        n: usize,
        request: &ResolvedRequest<'_>,
        _rng: &mut SmallRng,
    ) -> Vec<usize> {
        let len = cands.len();
        let start = {
            let mut next = lock(&self.next);
            if next.len() >= MAX_MODELS && !next.contains_key(&request.model_key) {
                next.clear();
            }
            let position = next.entry(request.model_key).or_insert(0);
            let start = *position % len;
            *position = start + 1;
            start
        };
        (0..n.min(len)).map(|i| (start + i) % len).collect()
    }
}
