//! The discrete-event simulator: every pod runs the [engine model](crate::engine), and a picker
//! built from the picker library's real `Table` and `Scheduler` routes each request, seeing the
//! pods only through load reports that are produced every `staleness` and arrive `report_delay`
//! later — exactly what the production picker sees. `oracle` instead reads every engine's exact
//! state at decision time and picks the lowest predicted time to first token.
//!
//! Deterministic for a seed: one thread per policy, and every random choice seeded.

pub mod capacity;
pub mod kv;
mod live;
mod results;

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use inferpick_picker::scheduler::{PickError, Policy, Scheduler, SchedulerConfig};
use inferpick_picker::table::{Table, TableConfig};
use inferpick_schema::{
    Adapters, AgentInfo, EndpointInfo, EngineKind, EngineStatus, Load, LoadReport, ModelEntry,
    PickRequest, SCHEMA_VERSION,
};

use crate::engine::{Counters, Engine, EngineConfig, EngineEvent, SeqSpec};
use crate::workload::{Generator, Request, Workload, adapter_name, push_prompt_token_ids};
use kv::{KvDelivery, KvMirror, KvPublisher};
use live::Live;

pub use results::{E2e, PolicyResult, Samples, SimReport, Ttft, ms, percentile};

/// The base model every simulated pod serves.
pub const BASE_MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

/// A policy the simulator can run: one of the picker's profiles, or the oracle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimPolicy {
    /// The picker library's scheduler with this profile.
    Picker(Policy),
    /// Exact engine state, lowest predicted TTFT: the practical limit for a picker.
    Oracle,
}

impl SimPolicy {
    /// The six policies, in the order the sweep reports them.
    pub const ALL: [SimPolicy; 6] = [
        SimPolicy::Picker(Policy::RoundRobin),
        SimPolicy::Picker(Policy::Random),
        SimPolicy::Picker(Policy::LeastRequest),
        SimPolicy::Picker(Policy::Gie),
        SimPolicy::Picker(Policy::Inferpick),
        SimPolicy::Oracle,
    ];
}

impl fmt::Display for SimPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimPolicy::Picker(p) => f.write_str(p.as_str()),
            SimPolicy::Oracle => f.write_str("oracle"),
        }
    }
}

impl FromStr for SimPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "oracle" {
            return Ok(SimPolicy::Oracle);
        }
        s.parse().map(SimPolicy::Picker).map_err(|_| {
            format!(
                "unknown policy {s:?}: expected round-robin, random, least-request, gie, inferpick or oracle"
            )
        })
    }
}

/// One simulation's settings.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// What arrives.
    pub workload: Workload,
    /// Pods in the fleet.
    pub pods: u32,
    /// Offered requests per second per pod.
    pub rate_per_pod: f64,
    /// Seed of arrivals, lengths and every policy's random choices.
    pub seed: u64,
    /// Report period of every pod's agent.
    pub staleness: Duration,
    /// Time from a report's production to its arrival at the picker.
    pub report_delay: Duration,
    /// Simulated time during which requests arrive.
    pub duration: Duration,
    /// Each pod's engine.
    pub engine: EngineConfig,
    /// How the engines' KV events reach the picker; `None`: they publish none, and pick requests
    /// carry prompt text only (the picker's approximate prefix index).
    pub kv_events: Option<KvDelivery>,
}

impl SimConfig {
    /// Latency is measured for requests arriving after this warm-up (10% of the run, at most 60 s).
    pub fn warmup(&self) -> Duration {
        (self.duration / 10).min(Duration::from_secs(60))
    }

    /// How long after the last arrival the run keeps going so queued requests can finish.
    pub fn drain(&self) -> Duration {
        Duration::from_secs(300)
    }
}

/// Runs every policy on the same request stream (one thread each, at most `threads` at once).
pub fn run(config: &SimConfig, policies: &[SimPolicy], threads: usize) -> SimReport {
    let mut results: Vec<Option<PolicyResult>> = vec![None; policies.len()];
    for chunk in (0..policies.len())
        .collect::<Vec<_>>()
        .chunks(threads.max(1))
    {
        std::thread::scope(|s| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|&i| (i, s.spawn(move || run_policy(config, policies[i]))))
                .collect();
            for (i, h) in handles {
                results[i] = Some(h.join().expect("simulation thread panicked"));
            }
        });
    }
    SimReport {
        workload: config.workload.name.clone(),
        pods: config.pods,
        results: results.into_iter().flatten().collect(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// A pod's step ends.
    Step(u32),
    /// A pod's agent produces a report.
    Produce(u32),
    /// A pod's oldest pending report reaches the picker.
    Deliver(u32),
    /// A pod's agent turns its engine's KV changes into messages.
    KvBuild(u32),
    /// A pod's oldest KV-event message reaches the picker (or is lost).
    KvDeliver(u32),
}

/// An event in the queue. The earliest comes first, and events due at the same time come in the
/// order they were scheduled. The time is kept in nanoseconds: an entry is 24 bytes, not 32, and
/// the queue (pushed and popped tens of millions of times in a large run) compares integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Scheduled {
    at_ns: u64,
    /// Scheduling order: unique, so no two entries compare equal.
    order: u64,
    event: Event,
}

impl Scheduled {
    fn at(&self) -> Duration {
        Duration::from_nanos(self.at_ns)
    }
}

impl Ord for Scheduled {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the earliest first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at_ns, other.order).cmp(&(self.at_ns, self.order))
    }
}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Debug)]
struct Pod {
    engine: Engine,
    address: String,
    agent_id: String,
    seq: u64,
    prev: Counters,
    hit_ratio: Option<f64>,
    pending: VecDeque<(Duration, LoadReport)>,
    /// The agent's KV-event stream, when the engines publish.
    kv: Option<KvPublisher>,
}

#[derive(Debug)]
struct InFlight {
    pod: u32,
    decision: Option<u128>,
    arrival: Duration,
    first_token: Option<Duration>,
    output_tokens: u32,
    measured: bool,
}

enum Router {
    Picker {
        table: Box<Table>,
        scheduler: Box<Scheduler>,
    },
    Oracle {
        next: u32,
    },
}

struct Run<'a> {
    config: &'a SimConfig,
    pods: Vec<Pod>,
    router: Router,
    heap: BinaryHeap<Scheduled>,
    tiebreak: u64,
    /// Requests in flight; the key of each is the sequence id its engine knows it by.
    live: Live<InFlight>,
    samples: Samples,
    models: Vec<ModelEntry>,
    adapter_names: Vec<String>,
    /// The pick request for each model (the base model, then adapter k at index k): a request
    /// fills in its own fields, so the model name is not copied at every pick.
    asks: Vec<PickRequest>,
    requests: u64,
    completed: u64,
    shed: u64,
    out: Vec<EngineEvent>,
    /// Receives the KV-event messages of an oracle run (which routes on the engines themselves):
    /// the lab's model of the picker's side of the protocol. Picker runs deliver to the table.
    kv_receiver: KvMirror,
    /// The text of recent prompt prefixes, by the address of their shared tokens (the `Arc` kept
    /// alongside, so the address is not reused): writing 6,000 words for every pick was a third
    /// of a `shared-prefix` run's time.
    prefix_text: std::collections::HashMap<usize, (Arc<[u32]>, String)>,
}

/// Runs one policy to the end and measures it.
pub fn run_policy(config: &SimConfig, policy: SimPolicy) -> PolicyResult {
    let mut run = Run::new(config, policy);
    let generator = Generator::new(
        &config.workload,
        config.pods,
        config.rate_per_pod,
        config.duration,
        config.seed,
        config.engine.block_tokens,
    );
    let warmup = config.warmup();
    let end = config.duration;
    let mut tokens_at_warmup = None;
    let mut tokens_at_end = None;
    let mut arrivals = generator.peekable();
    loop {
        let next_event = run.heap.peek().map(Scheduled::at);
        let next_arrival = arrivals.peek().map(|r| r.at);
        let now = match (next_event, next_arrival) {
            (None, None) => break,
            (Some(e), Some(a)) => e.min(a),
            (e, a) => e.or(a).expect("one is some"),
        };
        if tokens_at_warmup.is_none() && now >= warmup {
            tokens_at_warmup = Some(run.generated_tokens());
        }
        if tokens_at_end.is_none() && now >= end {
            tokens_at_end = Some(run.generated_tokens());
        }
        if now > end + config.drain() || (now >= end && run.live.is_empty()) {
            break;
        }
        if next_arrival == Some(now) && next_event.is_none_or(|e| now < e) {
            let req = arrivals.next().expect("peeked");
            run.arrive(req, now >= warmup);
            continue;
        }
        let Some(next) = run.heap.pop() else {
            break;
        };
        let (now, event) = (next.at(), next.event);
        match event {
            Event::Step(p) => run.step_end(p, now),
            Event::Produce(p) => run.produce(p, now),
            Event::Deliver(p) => run.deliver(p, now),
            Event::KvBuild(p) => run.kv_build(p, now),
            Event::KvDeliver(p) => run.kv_deliver(p, now),
        }
    }
    let stop = run.now_hint(end);
    let tokens_at_end = tokens_at_end.unwrap_or_else(|| run.generated_tokens());
    let tokens = tokens_at_end - tokens_at_warmup.unwrap_or(0);
    // Requests still unfinished when the run stops count with the latency they had reached.
    let cut: Vec<InFlight> = run.live.drain().collect();
    for f in cut.into_iter().filter(|f| f.measured) {
        let ttft = f.first_token.unwrap_or(stop) - f.arrival;
        run.samples
            .record(ttft, stop.saturating_sub(f.arrival), f.output_tokens, false);
    }
    let window = (end - warmup).as_secs_f64();
    let (hits, queries) = run.pods.iter().fold((0, 0), |(h, q), p| {
        let c = p.engine.state().counters;
        (h + c.prefix_hits, q + c.prefix_queries)
    });
    PolicyResult {
        policy: policy.to_string(),
        requests: run.requests,
        completed: run.completed,
        shed: run.shed,
        throughput_tokens_per_s: tokens as f64 / window,
        ttft_ms: run.samples.ttft(),
        e2e_ms: run.samples.e2e(),
        goodput: run.samples.good() as f64 / window,
        prefix_hit_ratio: Some(if queries > 0 {
            hits as f64 / queries as f64
        } else {
            0.0
        }),
    }
}

/// The address of pod `i`: a private IPv4 `host:port`, as a gateway would see it.
pub fn pod_address(i: u32) -> String {
    format!("10.{}.{}.{}:8000", (i >> 16) & 255, (i >> 8) & 255, i & 255)
}

/// The pod whose [`pod_address`] is `address` (pods 0 to 2^24 − 1): read back from the address
/// rather than looked up by it, since every pick needs it.
pub fn pod_of(address: &str) -> Option<u32> {
    let host = address.strip_prefix("10.")?.strip_suffix(":8000")?;
    let mut octets = host.split('.');
    let mut pod = 0u32;
    for _ in 0..3 {
        let octet = octets.next()?;
        // Only what `pod_address` writes: decimal digits, no sign, no leading zero.
        let canonical = !octet.is_empty()
            && octet.bytes().all(|b| b.is_ascii_digit())
            && (octet == "0" || !octet.starts_with('0'));
        if !canonical {
            return None;
        }
        let octet: u8 = octet.parse().ok()?;
        pod = (pod << 8) | u32::from(octet);
    }
    octets.next().is_none().then_some(pod)
}

impl<'a> Run<'a> {
    fn new(config: &'a SimConfig, policy: SimPolicy) -> Self {
        let mut engine = config.engine.clone();
        if let Some(m) = config.workload.pods.max_loras {
            engine.max_loras = m;
        }
        if let Some(k) = config.workload.pods.kv_tokens {
            engine.kv_tokens = k;
        }
        let publish = config.kv_events.is_some() && matches!(policy, SimPolicy::Picker(_));
        let pods: Vec<Pod> = (0..config.pods)
            .map(|i| {
                let mut e = Engine::new(engine.clone());
                if publish {
                    e.keep_kv_journal(inferpick_schema::KvLimits::MAX_KEYS);
                }
                Pod {
                    engine: e,
                    address: pod_address(i),
                    agent_id: format!("sim-agent-{i}"),
                    seq: 0,
                    prev: Counters::default(),
                    hit_ratio: None,
                    pending: VecDeque::new(),
                    kv: publish.then(|| {
                        KvPublisher::new(
                            pod_address(i),
                            splitmix(config.seed ^ 0x6b76 ^ u64::from(i)),
                        )
                    }),
                }
            })
            .collect();
        let adapter_names = config.workload.adapter_names();
        let mut models = vec![ModelEntry {
            name: BASE_MODEL.into(),
            adapter_of: None,
        }];
        models.extend(adapter_names.iter().map(|a| ModelEntry {
            name: a.clone(),
            adapter_of: Some(BASE_MODEL.into()),
        }));
        let router = match policy {
            SimPolicy::Picker(p) => Router::Picker {
                table: Box::new(Table::new(TableConfig::default())),
                scheduler: Box::new(Scheduler::new(
                    p,
                    SchedulerConfig {
                        seed: Some(config.seed),
                        ..SchedulerConfig::default()
                    },
                )),
            },
            SimPolicy::Oracle => Router::Oracle { next: 0 },
        };
        let mut run = Run {
            config,
            pods,
            router,
            heap: BinaryHeap::new(),
            tiebreak: 0,
            live: Live::default(),
            samples: Samples::default(),
            models,
            asks: std::iter::once(BASE_MODEL)
                .chain(adapter_names.iter().map(String::as_str))
                .map(|model| PickRequest {
                    model: Some(model.into()),
                    fallbacks: Some(0),
                    ..PickRequest::default()
                })
                .collect(),
            adapter_names,
            requests: 0,
            completed: 0,
            shed: 0,
            out: Vec::new(),
            kv_receiver: KvMirror::default(),
            prefix_text: std::collections::HashMap::new(),
        };
        if matches!(run.router, Router::Picker { .. }) {
            // Every agent reports once before traffic starts, then every `staleness`, each with its
            // own phase so that reports do not all arrive at the same instant.
            let staleness = config.staleness.as_nanos() as u64;
            for p in 0..config.pods {
                run.produce_report(p, Duration::ZERO);
                run.deliver(p, Duration::ZERO);
                let phase = splitmix(config.seed ^ u64::from(p)) % staleness.max(1);
                run.schedule(Duration::from_nanos(phase), Event::Produce(p));
                // Every event stream starts with a reset (of an empty cache).
                if run.pods[p as usize].kv.is_some() {
                    run.kv_build(p, Duration::ZERO);
                }
            }
        }
        run
    }

    fn schedule(&mut self, at: Duration, event: Event) {
        self.tiebreak += 1;
        self.heap.push(Scheduled {
            at_ns: u64::try_from(at.as_nanos()).expect("simulated time within 584 years"),
            order: self.tiebreak,
            event,
        });
    }

    fn now_hint(&self, end: Duration) -> Duration {
        self.heap
            .peek()
            .map_or(end, Scheduled::at)
            .min(end + self.config.drain())
            .max(end)
    }

    fn generated_tokens(&self) -> u64 {
        self.pods
            .iter()
            .map(|p| p.engine.state().counters.generation_tokens)
            .sum()
    }

    /// What the engine is given; its `id` is set to the request's key in `live` once routed.
    fn spec(req: &Request) -> SeqSpec {
        SeqSpec {
            id: req.id,
            prompt_tokens: req.prompt_tokens,
            output_tokens: req.output_tokens,
            prefix: Arc::clone(&req.prefix),
            adapter: req.adapter,
        }
    }

    fn arrive(&mut self, req: Request, measured: bool) {
        let now = req.at;
        self.requests += 1;
        let spec = Self::spec(&req);
        let routed = match self.router {
            Router::Oracle { .. } => Ok((self.oracle_pick(&spec, now), None)),
            Router::Picker { .. } => self.picker_pick(&req, now),
        };
        let (pod, decision) = match routed {
            Ok(r) => r,
            Err(PickError::Shed { .. }) => {
                self.shed += 1;
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "request {} not routed", req.id);
                return;
            }
        };
        let key = self.live.insert(InFlight {
            pod,
            decision,
            arrival: now,
            first_token: None,
            output_tokens: req.output_tokens,
            measured,
        });
        let engine = &mut self.pods[pod as usize].engine;
        if engine.submit(SeqSpec { id: key, ..spec }).is_err() {
            self.live.remove(key);
            self.close_decision(decision, now);
            return;
        }
        if engine.step_end().is_none()
            && let Some(end) = engine.start_step(now)
        {
            self.schedule(end, Event::Step(pod));
        }
    }

    /// The pod with the lowest predicted TTFT from exact engine state; ties go round robin.
    fn oracle_pick(&mut self, spec: &SeqSpec, now: Duration) -> u32 {
        let Router::Oracle { next } = &mut self.router else {
            unreachable!("oracle_pick on a picker run")
        };
        let n = self.pods.len() as u32;
        let start = *next;
        *next = (*next + 1) % n;
        (0..n)
            .map(|k| (start + k) % n)
            .min_by_key(|&p| self.pods[p as usize].engine.predict_ttft(spec, now))
            .expect("at least one pod")
    }

    /// Asks the picker library, as a gateway asks `POST /v1/pick`.
    fn picker_pick(
        &mut self,
        req: &Request,
        now: Duration,
    ) -> Result<(u32, Option<u128>), PickError> {
        let prefixed = !req.prefix_tokens.is_empty();
        let text = prefixed.then(|| self.short_prompt_text(req));
        let Router::Picker { table, scheduler } = &self.router else {
            unreachable!("picker_pick on an oracle run")
        };
        let ask = &mut self.asks[req.adapter.map_or(0, |a| a as usize)];
        ask.priority = Some(req.priority);
        ask.prompt = text;
        if self.config.kv_events.is_some() && prefixed {
            let mut ids = ask.prompt_token_ids.take().unwrap_or_default();
            ids.clear();
            push_prompt_token_ids(req, false, &mut ids);
            ask.prompt_token_ids = Some(ids);
        } else if let Some(ids) = &mut ask.prompt_token_ids {
            ids.clear();
        }
        ask.prompt_tokens = Some(req.prompt_tokens);
        ask.max_tokens = Some(req.output_tokens);
        let pick = scheduler.pick(table, ask, now)?;
        let pod = pod_of(&pick.endpoint)
            .filter(|&p| p < self.config.pods)
            .expect("the picker picks among the pods' addresses");
        Ok((pod, Some(pick.decision_id.as_u128())))
    }

    /// [`prompt_text`]`(req, false)`, with the prefix's words written once per prefix.
    fn short_prompt_text(&mut self, req: &Request) -> String {
        const KEPT: usize = 4096;
        let key = req.prefix_tokens.as_ptr() as usize;
        if !self.prefix_text.contains_key(&key) {
            if self.prefix_text.len() >= KEPT {
                self.prefix_text.clear();
            }
            let text = crate::tokenizer::text_of(&req.prefix_tokens);
            self.prefix_text
                .insert(key, (Arc::clone(&req.prefix_tokens), text));
        }
        let prefix = &self.prefix_text[&key].1;
        let ids = prompt_token_ids_tail(req);
        let mut s = String::with_capacity(prefix.len() + 8 * ids.len());
        s.push_str(prefix);
        crate::tokenizer::push_text(&mut s, &ids);
        s
    }

    fn close_decision(&self, decision: Option<u128>, now: Duration) {
        if let (Router::Picker { table, .. }, Some(id)) = (&self.router, decision) {
            table.done(id, now);
        }
    }

    fn step_end(&mut self, pod: u32, now: Duration) {
        let mut out = std::mem::take(&mut self.out);
        let engine = &mut self.pods[pod as usize].engine;
        engine.finish_step(&mut out);
        let next = engine.start_step(now);
        for ev in out.drain(..) {
            match ev {
                EngineEvent::FirstToken { id, .. } => {
                    if let Some(f) = self.live.get_mut(id) {
                        f.first_token = Some(now);
                    }
                }
                EngineEvent::Finished { id } => {
                    if let Some(f) = self.live.remove(id) {
                        self.completed += 1;
                        // The gateway's end-of-stream feedback (ext_proc or `POST /v1/done`).
                        self.close_decision(f.decision, now);
                        debug_assert_eq!(f.pod, pod);
                        if f.measured {
                            let ttft = f.first_token.unwrap_or(now) - f.arrival;
                            self.samples
                                .record(ttft, now - f.arrival, f.output_tokens, true);
                        }
                    }
                }
            }
        }
        self.out = out;
        if let Some(end) = next {
            self.schedule(end, Event::Step(pod));
        }
        self.kv_changed(pod, now);
    }

    fn produce(&mut self, pod: u32, now: Duration) {
        if now > self.config.duration + self.config.drain() {
            return;
        }
        self.produce_report(pod, now);
        self.schedule(now + self.config.report_delay, Event::Deliver(pod));
        if let Some(kv) = &mut self.pods[pod as usize].kv
            && kv.heartbeat_due(now)
        {
            kv.build_scheduled = true;
            let at = kv.next_build(now);
            self.schedule(at, Event::KvBuild(pod));
        }
        self.schedule(now + self.config.staleness, Event::Produce(pod));
    }

    /// What the pod's agent would push now: the engine's vLLM metrics, normalized.
    fn produce_report(&mut self, pod: u32, now: Duration) {
        let interval = self.config.staleness;
        let p = &mut self.pods[pod as usize];
        let state = p.engine.state();
        let c = state.counters;
        let secs = interval.as_secs_f64();
        let queries = c.prefix_queries - p.prev.prefix_queries;
        if queries > 0 {
            p.hit_ratio = Some((c.prefix_hits - p.prev.prefix_hits) as f64 / queries as f64);
        }
        let first = p.seq == 0;
        let rate = |now: u64, prev: u64| (!first).then(|| (now - prev) as f64 / secs);
        let name = |a: &u32| adapter_name(*a);
        let load = Load {
            requests_waiting: Some(state.waiting),
            requests_running: Some(state.running),
            kv_cache_utilization: Some(state.kv_utilization()),
            kv_cache_capacity_tokens: Some(
                state.kv_total_blocks * u64::from(p.engine.config().block_tokens),
            ),
            kv_block_size_tokens: Some(p.engine.config().block_tokens),
            prefix_cache_hit_ratio: p.hit_ratio,
            prompt_tokens_per_second: rate(c.prompt_tokens, p.prev.prompt_tokens),
            generation_tokens_per_second: rate(c.generation_tokens, p.prev.generation_tokens),
            adapters: (!self.adapter_names.is_empty()).then(|| Adapters {
                running: state.adapters_running.iter().map(name).collect(),
                waiting: state.adapters_waiting.iter().map(name).collect(),
                max_loaded: Some(p.engine.config().max_loras),
            }),
        };
        p.prev = c;
        p.seq += 1;
        let report = LoadReport {
            schema_version: SCHEMA_VERSION,
            agent: AgentInfo {
                id: p.agent_id.clone(),
                version: env!("CARGO_PKG_VERSION").into(),
                started_at_ms: 1,
            },
            seq: p.seq,
            sent_at_ms: now.as_millis() as u64,
            interval_ms: interval.as_millis() as u64,
            endpoint: EndpointInfo {
                address: p.address.clone(),
                pod: None,
                namespace: None,
                node: None,
            },
            engine: EngineStatus {
                kind: EngineKind::Vllm,
                ready: true,
                error: None,
                scrape_ms: None,
                tensor_parallel_size: None,
            },
            models: self.models.clone(),
            load,
            gpus: Vec::new(),
        };
        p.pending
            .push_back((now + self.config.report_delay, report));
    }

    fn deliver(&mut self, pod: u32, now: Duration) {
        let Some((_, report)) = self.pods[pod as usize].pending.pop_front() else {
            return;
        };
        if let Router::Picker { table, .. } = &self.router
            && let Err(e) = table.ingest(report, now)
        {
            tracing::warn!(error = %e, "simulated report refused");
        }
    }
}

/// The token ids of `req`'s short prompt after its prefix.
fn prompt_token_ids_tail(req: &Request) -> Vec<u32> {
    let mut ids = Vec::with_capacity(req.prefix_tokens.len() + 8);
    push_prompt_token_ids(req, false, &mut ids);
    ids.split_off(req.prefix_tokens.len())
}

/// A well-mixed 64-bit hash of `x` (SplitMix64's finalizer).
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests;
