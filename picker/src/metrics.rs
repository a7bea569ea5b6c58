//! The picker's Prometheus metrics (`inferpick_picker_*`, CONTRACTS.md), in an explicit registry.
//!
//! Decision and report counters are updated as events happen. The per-endpoint families (age,
//! in-flight estimate, routed count) and the pool saturation are read from the table at scrape time
//! by a collector, so forgotten endpoints disappear from the exposition and nothing per endpoint is
//! kept twice.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::clock::Clock;
use crate::scheduler::{PickError, Policy, Scheduler};
use crate::table::{EndpointState, KvOutcome, Prediction, Table};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    model: String,
    outcome: &'static str,
    policy: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    version: &'static str,
    policy: &'static str,
}

/// A counter of `decisions` and the outcome and policy it counts (its model is the map's key).
#[derive(Debug, Clone)]
struct DecisionCounter {
    outcome: &'static str,
    policy: &'static str,
    counter: Counter,
}

/// The event-driven metrics; the table-driven ones are a [`Collector`] registered beside them.
#[derive(Debug)]
pub struct Metrics {
    decisions: Family<DecisionLabels, Counter>,
    /// The counters of `decisions` created so far, by model. Counting a decision finds its
    /// counter here, without building a label set (a `String`) or taking the family's lock,
    /// both written by every pick on every core; a label set's first decision creates its
    /// counter in the family and adds it here. The family is never cleared, so these stay its
    /// counters.
    decision_counters: ArcSwap<HashMap<Box<str>, Vec<DecisionCounter>>>,
    decision_duration: Histogram,
    reports: Family<ResultLabels, Counter>,
    kv_events: Family<ResultLabels, Counter>,
    kv_blocks: Family<ChangeLabels, Counter>,
    prediction_error: Family<IndexLabels, Histogram>,
    predicted_tokens: Family<IndexLabels, Counter>,
    actual_tokens: Family<IndexLabels, Counter>,
    info: Family<InfoLabels, Gauge>,
    done: Family<DoneLabels, Counter>,
    first_byte: Histogram,
    /// Per pushed thing and refusal reason: when it was last logged, and how many since were counted only.
    refusals_logged: Mutex<HashMap<RefusalKey, (Instant, u64)>>,
}

/// What was refused (`report`, `kv-events`) and why (the metric's `result`).
type RefusalKey = (&'static str, &'static str);

/// A refusal reason is logged at most once per this period, so a flood of bad pushes cannot
/// flood the log; the next line says how many went unlogged.
const REFUSAL_LOG_PERIOD: Duration = Duration::from_secs(1);

/// Bucket bounds of the prefix prediction error, in tokens.
const PREDICTION_ERROR_BUCKETS: [f64; 15] = [
    -8192.0, -2048.0, -512.0, -128.0, -32.0, -8.0, -1.0, 0.0, 1.0, 8.0, 32.0, 128.0, 512.0, 2048.0,
    8192.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IndexLabels {
    index: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChangeLabels {
    change: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DoneLabels {
    source: &'static str,
    result: &'static str,
}

impl Metrics {
    /// Registers every picker family into `registry`.
    pub(crate) fn register(
        registry: &mut Registry,
        table: Arc<Table>,
        scheduler: Arc<ArcSwap<Scheduler>>,
        clock: Clock,
    ) -> Self {
        let m = Metrics {
            decisions: Family::default(),
            decision_counters: ArcSwap::default(),
            // 1 µs, 2 µs, 4 µs … about 0.5 s.
            decision_duration: Histogram::new(exponential_buckets(1e-6, 2.0, 20)),
            reports: Family::default(),
            kv_events: Family::default(),
            kv_blocks: Family::default(),
            // Signed error in tokens: −8192 … 8192, finer near 0.
            prediction_error: Family::new_with_constructor(|| {
                Histogram::new(PREDICTION_ERROR_BUCKETS.iter().copied())
            }),
            predicted_tokens: Family::default(),
            actual_tokens: Family::default(),
            info: Family::default(),
            done: Family::default(),
            // 5 ms … about 80 s.
            first_byte: Histogram::new(exponential_buckets(0.005, 2.0, 15)),
            refusals_logged: Mutex::default(),
        };
        registry.register(
            "inferpick_picker_done",
            "Decisions closed by the end of their request, by source (http: POST /v1/done, extproc: the end of the stream) and result (closed, unknown)",
            m.done.clone(),
        );
        registry.register(
            "inferpick_picker_first_byte_seconds",
            "Time from a decision to the first response body bytes through ext_proc (time to first token as the gateway sees it), in seconds",
            m.first_byte.clone(),
        );
        registry.register(
            "inferpick_picker_decisions",
            "Pick decisions by resolved model, outcome (routed, shed, no_endpoint, unknown_model, invalid) and policy",
            m.decisions.clone(),
        );
        registry.register(
            "inferpick_picker_decision_duration_seconds",
            "Time to decide one pick, in seconds",
            m.decision_duration.clone(),
        );
        registry.register(
            "inferpick_picker_reports",
            "Load reports received, by result (accepted, restarted, ignored, invalid, unauthorized, forbidden, too_large, timeout, table_full)",
            m.reports.clone(),
        );
        registry.register(
            "inferpick_picker_kv_events",
            "KV-event messages from agents, by result (applied, resync: not applied until a reset, invalid, unauthorized, forbidden, too_large, timeout)",
            m.kv_events.clone(),
        );
        registry.register(
            "inferpick_picker_kv_blocks",
            "KV blocks changed in the token-exact index, by change (stored, removed, over_bound: not recorded, the endpoint at its bound)",
            m.kv_blocks.clone(),
        );
        registry.register(
            "inferpick_picker_prefix_prediction_error_tokens",
            "Per closed request whose engine reported its cached prompt tokens: the cached tokens the pick counted on minus those the engine reported (positive: the picker expected more), by the index it used (exact, approximate)",
            m.prediction_error.clone(),
        );
        registry.register(
            "inferpick_picker_prefix_predicted_tokens",
            "Cached prompt tokens the picks counted on, over the requests whose engine reported its own count, by index",
            m.predicted_tokens.clone(),
        );
        registry.register(
            "inferpick_picker_prefix_actual_tokens",
            "Cached prompt tokens the engines reported for those same requests, by index",
            m.actual_tokens.clone(),
        );
        registry.register(
            "inferpick_picker_info",
            "The picker's version and scheduling policy (value 1)",
            m.info.clone(),
        );
        registry.register_collector(Box::new(TableCollector {
            table,
            scheduler,
            clock,
        }));
        m
    }

    /// Counts one decision and how long it took.
    pub fn decision(&self, model: &str, outcome: &'static str, policy: Policy, seconds: f64) {
        let policy = policy.as_str();
        let counted = self
            .decision_counters
            .load()
            .get(model)
            .and_then(|set| {
                set.iter()
                    .find(|c| c.outcome == outcome && c.policy == policy)
            })
            .map(|c| c.counter.inc())
            .is_some();
        if !counted {
            self.new_decision_counter(model, outcome, policy).inc();
        }
        self.decision_duration.observe(seconds);
    }

    /// The family's counter for a label set not seen before, added to `decision_counters`.
    fn new_decision_counter(
        &self,
        model: &str,
        outcome: &'static str,
        policy: &'static str,
    ) -> Counter {
        let counter = self
            .decisions
            .get_or_create(&DecisionLabels {
                model: model.to_string(),
                outcome,
                policy,
            })
            .clone();
        self.decision_counters.rcu(|counters| {
            let mut counters = HashMap::clone(counters);
            let set = counters.entry(model.into()).or_default();
            if !set
                .iter()
                .any(|c| c.outcome == outcome && c.policy == policy)
            {
                set.push(DecisionCounter {
                    outcome,
                    policy,
                    counter: counter.clone(),
                });
            }
            counters
        });
        counter
    }

    /// Counts one decision closed by `source` (`http` or `extproc`).
    pub fn done(&self, source: &'static str, closed: bool) {
        let result = if closed { "closed" } else { "unknown" };
        self.done
            .get_or_create(&DoneLabels { source, result })
            .inc();
    }

    /// Records the time from a decision to its response's first body bytes.
    pub fn first_byte(&self, after: std::time::Duration) {
        self.first_byte.observe(after.as_secs_f64());
    }

    /// Counts `n` reports with `result`.
    pub fn reports(&self, result: &'static str, n: u64) {
        self.reports
            .get_or_create(&ResultLabels { result })
            .inc_by(n);
    }

    /// A refused push: counted under `result` and logged with the sender and the reason (at most
    /// once a second per result; the next line carries how many were not logged).
    pub fn report_refused(
        &self,
        result: &'static str,
        peer: Option<SocketAddr>,
        error: &dyn std::fmt::Display,
    ) {
        self.reports(result, 1);
        self.log_refusal("report", result, peer, error);
    }

    /// Logs a refused push of `what` at most once a second per (what, result); the next line
    /// carries how many were not logged.
    fn log_refusal(
        &self,
        what: &'static str,
        result: &'static str,
        peer: Option<SocketAddr>,
        error: &dyn std::fmt::Display,
    ) {
        let unlogged = {
            let mut logged = self
                .refusals_logged
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            match logged.get_mut(&(what, result)) {
                Some((at, skipped)) if now.duration_since(*at) < REFUSAL_LOG_PERIOD => {
                    *skipped += 1;
                    return;
                }
                Some((at, skipped)) => {
                    *at = now;
                    std::mem::take(skipped)
                }
                None => {
                    logged.insert((what, result), (now, 0));
                    0
                }
            }
        };
        let peer = peer.map_or_else(|| "unknown".to_string(), |p| p.to_string());
        tracing::warn!(result, %peer, unlogged, "{what} refused: {error}");
    }

    /// Compares the cached tokens a pick counted on with what the engine reported.
    pub fn prefix_prediction(&self, predicted: Prediction, actual: u32) {
        let labels = IndexLabels {
            index: if predicted.exact {
                "exact"
            } else {
                "approximate"
            },
        };
        self.prediction_error
            .get_or_create(&labels)
            .observe(f64::from(predicted.cached_tokens) - f64::from(actual));
        self.predicted_tokens
            .get_or_create(&labels)
            .inc_by(u64::from(predicted.cached_tokens));
        self.actual_tokens
            .get_or_create(&labels)
            .inc_by(u64::from(actual));
    }

    /// Counts one applied (or resync-refused) KV-event message and the blocks it changed.
    pub fn kv_applied(&self, outcome: &KvOutcome) {
        let result = if outcome.refused { "resync" } else { "applied" };
        self.kv_events.get_or_create(&ResultLabels { result }).inc();
        for (change, n) in [
            ("stored", outcome.stored),
            ("removed", outcome.removed),
            ("over_bound", outcome.over_bound),
        ] {
            if n > 0 {
                self.kv_blocks
                    .get_or_create(&ChangeLabels { change })
                    .inc_by(n as u64);
            }
        }
    }

    /// A refused KV-event message: counted under `result` and logged like a refused report.
    pub fn kv_refused(
        &self,
        result: &'static str,
        peer: Option<SocketAddr>,
        error: &dyn std::fmt::Display,
    ) {
        self.kv_events.get_or_create(&ResultLabels { result }).inc();
        self.log_refusal("kv-events", result, peer, error);
    }

    /// Sets the info series for `policy` (and removes the previous one).
    pub fn set_policy(&self, policy: Policy) {
        self.info.clear();
        self.info
            .get_or_create(&InfoLabels {
                version: env!("CARGO_PKG_VERSION"),
                policy: policy.as_str(),
            })
            .set(1);
    }
}

#[derive(Debug)]
struct TableCollector {
    table: Arc<Table>,
    scheduler: Arc<ArcSwap<Scheduler>>,
    clock: Clock,
}

impl Collector for TableCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now = self.clock.now();
        let snap = self.table.snapshot();

        let mut states = [0i64; EndpointState::ALL.len()];
        for e in snap.iter() {
            let i = EndpointState::ALL
                .iter()
                .position(|s| *s == e.state(now, snap.max_report_age))
                .unwrap_or(0);
            states[i] += 1;
        }
        let mut fam = encoder.encode_descriptor(
            "inferpick_picker_endpoints",
            "Endpoints in the table by state (ready, stale, not_ready, gpu_failed).",
            None,
            MetricType::Gauge,
        )?;
        for (state, n) in EndpointState::ALL.iter().zip(states) {
            ConstGauge::new(n).encode(fam.encode_family(&[("state", state.as_str())])?)?;
        }

        let mut fam = encoder.encode_descriptor(
            "inferpick_picker_report_age_seconds",
            "Seconds since each endpoint's last report arrived.",
            None,
            MetricType::Gauge,
        )?;
        for e in snap.iter() {
            ConstGauge::new(e.age(now).as_secs_f64())
                .encode(fam.encode_family(&[("endpoint", &*e.address)])?)?;
        }

        let mut fam = encoder.encode_descriptor(
            "inferpick_picker_endpoint_capacity_prefill_tokens_per_second",
            "Each endpoint's prefill rate as picks cost it (throttling included), by where it comes \
             from (pinned, own, class, fleet); absent while nothing is learned.",
            None,
            MetricType::Gauge,
        )?;
        for e in snap.iter() {
            if let Some(rate) = e.capacity.prefill_tokens_per_second {
                let source = e.capacity.prefill_source.as_str();
                ConstGauge::new(rate)
                    .encode(fam.encode_family(&[("endpoint", &*e.address), ("source", source)])?)?;
            }
        }
        for (name, help, value) in [
            (
                "inferpick_picker_endpoint_capacity_speed_ratio",
                "Each endpoint's slowest GPU clock over its maximum while throttled, else 1.",
                (|e: &crate::table::Endpoint| e.capacity.speed)
                    as fn(&crate::table::Endpoint) -> f64,
            ),
            (
                "inferpick_picker_endpoint_capacity_decode_scale",
                "Each endpoint's decode step time per running sequence relative to an H100's.",
                |e: &crate::table::Endpoint| e.capacity.decode_scale,
            ),
            (
                "inferpick_picker_endpoint_capacity_compute_ratio",
                "Each endpoint's GPUs' prefill compute relative to one H100, from their product name.",
                |e: &crate::table::Endpoint| e.hardware.compute,
            ),
        ] {
            let mut fam = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for e in snap.iter() {
                ConstGauge::new(value(e))
                    .encode(fam.encode_family(&[("endpoint", &*e.address)])?)?;
            }
        }

        let mut fam = encoder.encode_descriptor(
            "inferpick_picker_inflight_estimate",
            "Requests this picker routed to each endpoint since its last report and not yet seen done.",
            None,
            MetricType::Gauge,
        )?;
        for e in snap.iter() {
            ConstGauge::new(e.inflight().requests as i64)
                .encode(fam.encode_family(&[("endpoint", &*e.address)])?)?;
        }

        let mut fam = encoder.encode_descriptor(
            "inferpick_picker_routed",
            "Requests routed to each endpoint since it entered the table.",
            None,
            MetricType::Counter,
        )?;
        for e in snap.iter() {
            ConstCounter::new(e.routed_total())
                .encode(fam.encode_family(&[("endpoint", &*e.address)])?)?;
        }

        let mut fam = encoder.encode_descriptor(
            "inferpick_picker_routed_prompt_tokens",
            "Prompt tokens routed to each endpoint whose prefix was looked up (with inferpick_picker_predicted_cached_tokens, the hit ratio the picker predicts, beside the one the engine reports).",
            None,
            MetricType::Counter,
        )?;
        for e in snap.iter() {
            ConstCounter::new(e.routed_prefix_tokens().0)
                .encode(fam.encode_family(&[("endpoint", &*e.address)])?)?;
        }
        let mut fam = encoder.encode_descriptor(
            "inferpick_picker_predicted_cached_tokens",
            "Of those, the prompt tokens the picks counted on the endpoint's prefix cache holding.",
            None,
            MetricType::Counter,
        )?;
        for e in snap.iter() {
            ConstCounter::new(e.routed_prefix_tokens().1)
                .encode(fam.encode_family(&[("endpoint", &*e.address)])?)?;
        }

        let mut fam = encoder.encode_descriptor(
            "inferpick_picker_kv_stream_live",
            "Per endpoint with a KV-event stream: 1 while picks use its exact KV blocks, 0 while its stream is stale or silent and it falls back to the approximate prefix index.",
            None,
            MetricType::Gauge,
        )?;
        for e in snap.iter() {
            if let Some(stream) = self.table.kv_stream(e, now) {
                ConstGauge::new(i64::from(stream.routing))
                    .encode(fam.encode_family(&[("endpoint", &*e.address)])?)?;
            }
        }
        let fam = encoder.encode_descriptor(
            "inferpick_picker_kv_index_blocks",
            "KV blocks the token-exact prefix index holds, over every endpoint.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.table.exact_blocks() as i64).encode(fam)?;

        // Per model: the fraction of its ready endpoints that are saturated, by the rule that sheds.
        let pools = self.scheduler.load().saturation_by_model(&snap, now);
        let mut fam = encoder.encode_descriptor(
            "inferpick_picker_pool_saturation",
            "Fraction (0..1) of each model's ready endpoints that are saturated.",
            None,
            MetricType::Gauge,
        )?;
        for (model, fraction) in pools {
            ConstGauge::new(fraction).encode(fam.encode_family(&[("model", model)])?)?;
        }
        Ok(())
    }
}

/// The `outcome` label of `inferpick_picker_decisions_total` for a scheduler refusal.
pub fn outcome(e: &PickError) -> &'static str {
    match e {
        PickError::UnknownModel { .. } => "unknown_model",
        PickError::Shed { .. } => "shed",
        PickError::NoReadyEndpoint { .. } => "no_endpoint",
        PickError::InvalidRequest { .. } => "invalid",
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Settings;
    use crate::scheduler::Policy;
    use crate::state::AppState;

    #[test]
    fn decisions_are_counted_per_label_set_from_the_first() {
        let state = AppState::new(Settings {
            grpc_listen: None,
            ..Settings::default()
        })
        .unwrap();
        let m = state.metrics();
        for _ in 0..3 {
            m.decision("a", "routed", Policy::Inferpick, 1e-5);
        }
        m.decision("a", "shed", Policy::Inferpick, 1e-5);
        m.decision("a", "routed", Policy::Gie, 1e-5);
        m.decision("b", "routed", Policy::Inferpick, 1e-5);
        m.decision("", "invalid", Policy::Inferpick, 0.0);
        let text = state.render_metrics();
        let count = |model: &str, outcome: &str, policy: &str| {
            let series = format!(
                "inferpick_picker_decisions_total{{model=\"{model}\",outcome=\"{outcome}\",policy=\"{policy}\"}} "
            );
            text.lines()
                .find_map(|l| l.strip_prefix(&series))
                .unwrap_or_else(|| panic!("no {series} in\n{text}"))
                .to_string()
        };
        assert_eq!(count("a", "routed", "inferpick"), "3");
        assert_eq!(count("a", "shed", "inferpick"), "1");
        assert_eq!(count("a", "routed", "gie"), "1");
        assert_eq!(count("b", "routed", "inferpick"), "1");
        assert_eq!(count("", "invalid", "inferpick"), "1");
        assert_eq!(text.matches("inferpick_picker_decisions_total{").count(), 5);
        assert!(
            text.contains("inferpick_picker_decision_duration_seconds_count 7"),
            "{text}"
        );
    }
}
