//! Capacity: how many prompt tokens per second an endpoint can prefill and how long its decode
//! steps take per running sequence, learned from its own reports, shared within its hardware
//! class, seeded by what its hardware is known to do, scaled by how throttled its GPUs are.
//!
//! The prefill rate is a slow moving average of the prompt rate over the report intervals in which the engine had
//! requests waiting (only then is the rate bounded by capacity rather than demand), each sample
//! capped so that a few long prompts finishing in one interval cannot make the endpoint look
//! several times faster. Unknown until the endpoint has queued. The rate is of tokens the engine
//! computed: engines count a prompt's cached tokens as prompt tokens, which on a workload whose
//! prompts mostly hit the prefix cache would make an endpoint look several times faster than it
//! prefills, and the cost model would then undervalue both queues and cache hits.

/// Weight of one busy interval's prompt rate in the estimate.
const WEIGHT: f64 = 0.05;
/// A busy interval's rate counts at most this multiple of the current estimate.
const SAMPLE_CAP: f64 = 2.0;
/// Prefill rate assumed before an estimate exists, to cap the first samples (tokens/s).
const FIRST_CAP: f64 = 20_000.0;

/// The prompt tokens per second the engine computed: its prompt rate less the share its prefix
/// cache served (engines count a prompt's cached tokens as prompt tokens too).
pub(crate) fn computed_prompt_rate(load: &inferpick_schema::Load) -> Option<f64> {
    let hit = load
        .prefix_cache_hit_ratio
        .filter(|h| h.is_finite())
        .map_or(0.0, |h| h.clamp(0.0, 1.0));
    load.prompt_tokens_per_second.map(|r| r * (1.0 - hit))
}

/// The estimate after a report that observed `observed` tokens/s with `waiting` queued.
pub(crate) fn next(previous: Option<f64>, observed: Option<f64>, waiting: u32) -> Option<f64> {
    match observed {
        Some(o) if waiting > 0 && o.is_finite() && o > 0.0 => {
            let base = previous.unwrap_or(FIRST_CAP);
            let sample = o.min(base * SAMPLE_CAP);
            Some(match previous {
                Some(p) => p + WEIGHT * (sample - p),
                None => sample,
            })
        }
        _ => previous,
    }
}

/// Weight of one interval's decode step in the decode fit.
const DECODE_WEIGHT: f64 = 0.05;
/// Intervals of decoding before the fit is trusted.
const DECODE_MIN_SAMPLES: u32 = 20;
/// Busy intervals before an endpoint's own prefill estimate may stand apart from its class's.
const OWN_MIN_SAMPLES: u32 = 20;
/// An endpoint's own estimate replaces its class's only when one is more than this multiple of the
/// other: estimates of identical hardware differ by noise (in the lab's 8-pod `mixed` runs, by up
/// to half the class's mean: believing that much sent the long prompts to whichever endpoint's
/// estimate ran high, and TTFT p99 went from 0.72 to 2.8 s), so only a gross difference — a
/// misconfigured or starved engine — counts as the endpoint's own.
const OWN_RATIO: f64 = 2.0;

/// The decode step time as a line in the running batch, `a + b × running`, fitted by
/// exponentially weighted moments over the intervals in which the engine decoded.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DecodeFit {
    samples: u32,
    mean_x: f64,
    mean_y: f64,
    mean_xx: f64,
    mean_xy: f64,
}

impl DecodeFit {
    /// The fit after an interval with `running` sequences generating `tokens_per_second` (each
    /// running sequence gains one token per step, so a step took `running / tokens_per_second`)
    /// on GPUs at `speed` of their full clock (the fit is kept at full speed).
    fn next(self, running: Option<u32>, tokens_per_second: Option<f64>, speed: f64) -> Self {
        let (Some(n), Some(tps)) = (running, tokens_per_second) else {
            return self;
        };
        if n == 0 || !tps.is_finite() || tps <= 0.0 {
            return self;
        }
        let (x, y) = (f64::from(n), f64::from(n) / tps * speed);
        if self.samples == 0 {
            return Self {
                samples: 1,
                mean_x: x,
                mean_y: y,
                mean_xx: x * x,
                mean_xy: x * y,
            };
        }
        let w = DECODE_WEIGHT;
        Self {
            samples: self.samples.saturating_add(1),
            mean_x: self.mean_x + w * (x - self.mean_x),
            mean_y: self.mean_y + w * (y - self.mean_y),
            mean_xx: self.mean_xx + w * (x * x - self.mean_xx),
            mean_xy: self.mean_xy + w * (x * y - self.mean_xy),
        }
    }

    /// Seconds each running sequence adds to a step (`b`), once enough intervals with different
    /// batch sizes were seen; never negative.
    pub fn seconds_per_sequence(&self) -> Option<f64> {
        let var = self.mean_xx - self.mean_x * self.mean_x;
        if self.samples < DECODE_MIN_SAMPLES || var < 1.0 {
            return None;
        }
        let b = (self.mean_xy - self.mean_x * self.mean_y) / var;
        (b.is_finite()).then_some(b.max(0.0))
    }

    /// Seconds of a step with no sequence decoding (`a`); never negative.
    pub fn seconds_per_step(&self) -> Option<f64> {
        let b = self.seconds_per_sequence()?;
        Some((self.mean_y - b * self.mean_x).max(0.0))
    }
}

/// What one endpoint's own reports have shown, at its GPUs' full speed. Carried from report to
/// report while the agent stays the same.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Learned {
    /// Prefill tokens/s; `None` until the endpoint has queued.
    pub prefill: Option<f64>,
    /// Busy intervals behind `prefill`.
    pub prefill_samples: u32,
    /// The decode step fit.
    pub decode: DecodeFit,
}

impl Learned {
    /// What `previous` becomes after a report whose GPUs run at `speed`.
    pub(crate) fn next(previous: Learned, load: &inferpick_schema::Load, speed: f64) -> Learned {
        let waiting = load.requests_waiting.unwrap_or(0);
        let observed = computed_prompt_rate(load).map(|r| r / speed);
        let busy = waiting > 0 && observed.is_some_and(|o| o.is_finite() && o > 0.0);
        let prefill = next(previous.prefill, observed, waiting);
        Learned {
            prefill,
            prefill_samples: previous.prefill_samples + u32::from(busy),
            decode: previous.decode.next(
                load.requests_running,
                load.generation_tokens_per_second,
                speed,
            ),
        }
    }
}

/// Where an endpoint's prefill rate comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The operator pinned it (`capacity.pins`).
    Pinned,
    /// The endpoint's own reports, which differ from its hardware class's.
    Own,
    /// The mean of the own estimates of endpoints with the same hardware.
    Class,
    /// Another class's estimates, scaled by the relative speed of the two GPUs.
    Fleet,
    /// Nothing learned yet: the cost model's floor, scaled by the GPU's relative speed.
    Prior,
}

impl Source {
    /// The name in `/v1/endpoints`, explain and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Pinned => "pinned",
            Source::Own => "own",
            Source::Class => "class",
            Source::Fleet => "fleet",
            Source::Prior => "prior",
        }
    }
}

/// The running sums behind one hardware class's estimates (or, normalized to an H100's speed,
/// the whole fleet's).
#[derive(Debug, Clone, Copy, Default)]
struct Sums {
    prefill: f64,
    prefill_members: u32,
    decode: f64,
    decode_members: u32,
}

impl Sums {
    fn add(&mut self, prefill: Option<f64>, decode: Option<f64>, sign: f64) {
        if let Some(p) = prefill {
            self.prefill += sign * p;
            self.prefill_members = add_signed(self.prefill_members, sign);
        }
        if let Some(d) = decode {
            self.decode += sign * d;
            self.decode_members = add_signed(self.decode_members, sign);
        }
    }

    fn prefill(&self) -> Option<f64> {
        (self.prefill_members > 0)
            .then(|| (self.prefill / f64::from(self.prefill_members)).max(0.0))
    }

    fn decode(&self) -> Option<f64> {
        (self.decode_members > 0).then(|| (self.decode / f64::from(self.decode_members)).max(0.0))
    }
}

fn add_signed(n: u32, sign: f64) -> u32 {
    if sign > 0.0 {
        n + 1
    } else {
        n.saturating_sub(1)
    }
}

/// One endpoint's contribution to the sums, remembered so it can be taken back.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Share {
    class: u64,
    compute: f64,
    bandwidth: f64,
    prefill: Option<f64>,
    decode: Option<f64>,
}

/// The estimates of every hardware class and of the fleet, kept as sums of the members' own
/// estimates so that each report updates them in constant time.
#[derive(Debug, Default)]
pub(crate) struct Classes {
    by_class: std::collections::HashMap<u64, Sums>,
    /// Own estimates divided by their hardware's relative speed: an H100's worth.
    fleet: Sums,
}

impl Classes {
    /// Replaces an endpoint's contribution `old` with `new`.
    pub(crate) fn update(&mut self, old: Option<&Share>, new: Option<&Share>) {
        for (share, sign) in [(old, -1.0), (new, 1.0)] {
            let Some(s) = share else { continue };
            self.by_class
                .entry(s.class)
                .or_default()
                .add(s.prefill, s.decode, sign);
            self.fleet.add(
                s.prefill.map(|p| p / s.compute),
                s.decode.map(|d| d * s.bandwidth),
                sign,
            );
        }
        if let Some(s) = old
            && self
                .by_class
                .get(&s.class)
                .is_some_and(|c| c.prefill_members == 0 && c.decode_members == 0)
        {
            self.by_class.remove(&s.class);
        }
    }

    /// Counts what an endpoint of `hardware` learned (`own`, replacing its contribution `old`)
    /// and returns its capacity with its GPUs at `speed`, and its new contribution.
    pub(crate) fn learn(
        &mut self,
        old: Option<&Share>,
        hardware: &super::Hardware,
        own: &Learned,
        speed: f64,
        pinned: Option<f64>,
    ) -> (Capacity, Share) {
        let share = Share {
            class: hardware.key,
            compute: hardware.compute,
            bandwidth: hardware.bandwidth,
            prefill: own.prefill,
            decode: own.decode.seconds_per_sequence(),
        };
        self.update(old, Some(&share));
        let class = self
            .by_class
            .get(&hardware.key)
            .copied()
            .unwrap_or_default();
        let (prefill, source) = if let Some(p) = pinned {
            (Some(p), Source::Pinned)
        } else {
            match (own.prefill, class.prefill()) {
                (Some(o), Some(c))
                    if own.prefill_samples >= OWN_MIN_SAMPLES
                        && (o > OWN_RATIO * c || o * OWN_RATIO < c) =>
                {
                    (Some(o), Source::Own)
                }
                (_, Some(c)) => (Some(c), Source::Class),
                (Some(o), None) => (Some(o), Source::Own),
                (None, None) => match self.fleet.prefill() {
                    Some(f) => (Some(f * hardware.compute), Source::Fleet),
                    None => (None, Source::Prior),
                },
            }
        };
        // Decode: the class's per-sequence step cost against an H100's worth of the fleet's.
        let decode_scale = match (class.decode(), self.fleet.decode()) {
            (Some(c), Some(f)) if f > 0.0 => c / f,
            _ => 1.0 / hardware.bandwidth,
        };
        let capacity = Capacity {
            prefill_tokens_per_second: prefill.map(|p| p * speed),
            prefill_source: source,
            prior_scale: hardware.compute * speed,
            decode_scale: (decode_scale / speed).clamp(MIN_DECODE_SCALE, MAX_DECODE_SCALE),
            speed,
        };
        (capacity, share)
    }
}

/// Bounds of [`Capacity::decode_scale`]: a fit gone wrong must not make an endpoint look free or
/// unusable.
const MIN_DECODE_SCALE: f64 = 0.1;
const MAX_DECODE_SCALE: f64 = 20.0;

/// An endpoint's capacity as the cost model reads it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Capacity {
    /// Prompt tokens per second it prefills now (its GPUs' throttling included); `None` until it
    /// or its hardware class has shown one (the cost then assumes its floor × `prior_scale`).
    pub prefill_tokens_per_second: Option<f64>,
    /// Where that figure comes from.
    pub prefill_source: Source,
    /// Its speed relative to one H100 at full clock: its GPUs' compute × `speed`.
    pub prior_scale: f64,
    /// Its decode step time per running sequence relative to an H100's (throttling included).
    pub decode_scale: f64,
    /// Its slowest GPU's clock as a fraction of the maximum while throttled, else 1.
    pub speed: f64,
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            prefill_tokens_per_second: None,
            prefill_source: Source::Prior,
            prior_scale: 1.0,
            decode_scale: 1.0,
            speed: 1.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_prompt_tokens_are_not_counted_as_computed() {
        let load = |rate: Option<f64>, hit: Option<f64>| inferpick_schema::Load {
            prompt_tokens_per_second: rate,
            prefix_cache_hit_ratio: hit,
            ..Default::default()
        };
        assert_eq!(
            computed_prompt_rate(&load(Some(10_000.0), Some(0.75))),
            Some(2_500.0)
        );
        assert_eq!(
            computed_prompt_rate(&load(Some(10_000.0), None)),
            Some(10_000.0)
        );
        // A nonsense ratio is clamped or ignored, never a negative or NaN rate.
        assert_eq!(
            computed_prompt_rate(&load(Some(10_000.0), Some(1.5))),
            Some(0.0)
        );
        assert_eq!(
            computed_prompt_rate(&load(Some(10_000.0), Some(f64::NAN))),
            Some(10_000.0)
        );
        assert_eq!(computed_prompt_rate(&load(None, Some(0.5))), None);
    }

    #[test]
    fn a_burst_of_finished_prompts_barely_moves_the_estimate() {
        assert_eq!(
            next(None, Some(50_000.0), 0),
            None,
            "idle: demand, not capacity"
        );
        let first = next(None, Some(15_000.0), 3).unwrap();
        assert_eq!(first, 15_000.0);
        // Eight times the estimate in one interval counts as twice it, at a twentieth's weight.
        let after = next(Some(first), Some(120_000.0), 3).unwrap();
        assert!((15_000.0..16_000.0).contains(&after), "{after}");
        assert_eq!(next(Some(first), Some(f64::NAN), 3), Some(first));
    }
}
