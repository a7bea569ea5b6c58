//! KV-event delivery in the simulator: each pod's agent turns its engine's prefix-cache changes
//! into [`KvEvents`] messages (at most one per pod every [`KV_BATCH`]), and each reaches the
//! picker `delay` later unless it is lost. The picker's [`KvAck`] asks for a resync when it saw a
//! gap (a lost message), and the pod's next message is then a reset with its whole cache.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use inferpick_schema::{KvAck, KvEvents, KvGroup, KvLimits, KvStreamState, SCHEMA_VERSION};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::{Event, Router};

use crate::engine::{Engine, KvGroupChanges};

/// The shortest time between two messages from one pod: about one engine step, as vLLM publishes
/// one batch per step.
pub const KV_BATCH: Duration = Duration::from_millis(10);
/// A stream with nothing to say still sends an empty message this often, so the picker keeps
/// routing on it (its `kv_max_age` is 5 s by default).
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// How the pods' KV events reach the picker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KvDelivery {
    /// From a message's production to its arrival.
    pub delay: Duration,
    /// Fraction of messages lost on the way (0 to 1).
    pub loss: f64,
}

impl Default for KvDelivery {
    fn default() -> Self {
        Self {
            delay: Duration::from_millis(50),
            loss: 0.0,
        }
    }
}

/// What receives the pods' messages: the picker's table.
pub trait KvReceiver {
    /// Applies one message; the answer tells the sender what to send next.
    fn receive(&self, msg: KvEvents, now: Duration) -> Result<KvAck, String>;
}

/// The picker library's table, as the service applies `POST /v1/kv-events`.
impl KvReceiver for inferpick_picker::table::Table {
    fn receive(&self, msg: KvEvents, now: Duration) -> Result<KvAck, String> {
        self.ingest_kv(msg, now)
            .map(|outcome| outcome.ack)
            .map_err(|e| e.to_string())
    }
}

/// One pod's agent side of the stream.
#[derive(Debug)]
pub struct KvPublisher {
    endpoint: String,
    stream: String,
    seq: u64,
    /// The next message must be a reset (the stream is new, or the picker asked).
    reset: bool,
    last_build: Option<Duration>,
    /// When the last message was built (a quiet stream still sends one every [`HEARTBEAT`]).
    last_sent: Option<Duration>,
    /// Whether a build is scheduled.
    pub build_scheduled: bool,
    /// Built messages on their way, with their arrival times.
    in_flight: VecDeque<(Duration, KvEvents)>,
    rng: SmallRng,
    /// Messages sent, lost, and resets sent.
    pub counts: KvCounts,
}

/// What one pod's stream did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvCounts {
    /// Messages built.
    pub sent: u64,
    /// Of those, lost on the way.
    pub lost: u64,
    /// Resets sent (the first message, and one after each resync).
    pub resets: u64,
    /// Block keys carried.
    pub keys: u64,
}

impl KvPublisher {
    /// The stream of the pod at `endpoint`; `seed` draws its losses.
    pub fn new(endpoint: String, seed: u64) -> Self {
        Self {
            stream: format!("sim-{endpoint}"),
            endpoint,
            seq: 0,
            reset: true,
            last_build: None,
            last_sent: None,
            build_scheduled: false,
            in_flight: VecDeque::new(),
            rng: SmallRng::seed_from_u64(seed),
            counts: KvCounts::default(),
        }
    }

    /// Whether a quiet stream is due its heartbeat (an empty message saying it is live), as the
    /// agent sends one every report interval at least.
    pub fn heartbeat_due(&self, now: Duration) -> bool {
        !self.build_scheduled && self.last_sent.is_none_or(|t| now >= t + HEARTBEAT)
    }

    fn heartbeat_due_at(&self, now: Duration) -> bool {
        self.last_sent.is_none_or(|t| now >= t + HEARTBEAT)
    }

    /// When the next message may be built, at the earliest.
    pub fn next_build(&self, now: Duration) -> Duration {
        self.last_build.map_or(now, |t| (t + KV_BATCH).max(now))
    }

    /// Drains `engine`'s changes into messages that arrive at `now + delay`; returns how many
    /// were built. `adapters[k − 1]` names adapter `k`.
    pub fn build(
        &mut self,
        engine: &mut Engine,
        adapters: &[String],
        now: Duration,
        delivery: KvDelivery,
    ) -> usize {
        self.build_scheduled = false;
        self.last_build = Some(now);
        let changes = engine.drain_kv_changes();
        let block_size = engine.config().block_tokens;
        let (reset, cleared, groups) = if self.reset || changes.overflowed {
            (true, false, engine.cached_blocks())
        } else if changes.is_empty() && !self.heartbeat_due_at(now) {
            return 0;
        } else {
            (false, changes.cleared, changes.groups)
        };
        self.reset = false;
        let name = |a: Option<u32>| a.map(|k| adapters[k as usize - 1].clone());
        let mut messages = Vec::new();
        let mut current: Vec<KvGroup> = Vec::new();
        let mut keys = 0usize;
        let flush = |current: &mut Vec<KvGroup>, messages: &mut Vec<Vec<KvGroup>>| {
            messages.push(std::mem::take(current));
        };
        for g in groups {
            let KvGroupChanges {
                adapter,
                stored,
                removed,
            } = g;
            // A group larger than what one message may carry is split over several.
            let mut stored = stored.as_slice();
            let mut removed = removed.as_slice();
            while !stored.is_empty() || !removed.is_empty() {
                if keys == KvLimits::MAX_KEYS {
                    flush(&mut current, &mut messages);
                    keys = 0;
                }
                let room = KvLimits::MAX_KEYS - keys;
                let r = removed.len().min(room);
                let s = stored.len().min(room - r);
                current.push(KvGroup {
                    adapter: name(adapter),
                    stored: stored[..s].to_vec(),
                    removed: removed[..r].to_vec(),
                });
                keys += s + r;
                stored = &stored[s..];
                removed = &removed[r..];
            }
        }
        if !current.is_empty() || messages.is_empty() {
            flush(&mut current, &mut messages);
        }
        let built = messages.len();
        for (i, groups) in messages.into_iter().enumerate() {
            self.seq += 1;
            let msg = KvEvents {
                schema_version: SCHEMA_VERSION,
                endpoint: self.endpoint.clone(),
                stream: self.stream.clone(),
                seq: self.seq,
                state: KvStreamState::Live,
                block_size,
                reset: reset && i == 0,
                cleared: cleared && i == 0,
                groups,
            };
            self.counts.sent += 1;
            self.counts.resets += u64::from(msg.reset);
            self.counts.keys += msg.key_count() as u64;
            self.in_flight.push_back((now + delivery.delay, msg));
        }
        if built > 0 {
            self.last_sent = Some(now);
        }
        built
    }

    /// Takes the oldest message on its way (due at `now`); `None` when it was lost.
    pub fn arrive(&mut self, delivery: KvDelivery) -> Option<KvEvents> {
        let (_, msg) = self.in_flight.pop_front()?;
        if delivery.loss > 0.0 && self.rng.random::<f64>() < delivery.loss {
            self.counts.lost += 1;
            return None;
        }
        Some(msg)
    }

    /// Reads the picker's answer: a resync makes the next message a reset.
    pub fn acked(&mut self, ack: &KvAck) {
        if ack.resync {
            self.reset = true;
        }
    }

    /// Whether the next message must be a reset.
    pub fn reset_due(&self) -> bool {
        self.reset
    }

    /// Asks for a reset at the next build (the picker refused a message).
    pub fn resync(&mut self) {
        self.reset = true;
    }
}

/// The picker's side of the protocol as CONTRACTS.md and `inferpick_schema::kv` state it: a
/// stream is followed only from a reset, and a gap in `seq` drops the endpoint's blocks until the
/// next reset. It holds each endpoint's block keys per model, so tests can compare them with the
/// engine's cache.
#[derive(Debug, Default)]
pub struct KvMirror {
    endpoints: std::sync::Mutex<HashMap<String, MirrorStream>>,
}

#[derive(Debug, Default)]
struct MirrorStream {
    stream: String,
    next_seq: u64,
    /// Whether the blocks below are complete (a reset was applied and no gap followed).
    synced: bool,
    blocks: HashMap<Option<String>, std::collections::HashSet<u64>>,
}

impl KvMirror {
    /// The blocks known for `endpoint` under `adapter`, if its stream is in sync.
    pub fn blocks(&self, endpoint: &str, adapter: Option<&str>) -> Option<Vec<u64>> {
        let endpoints = self.endpoints.lock().expect("mirror lock");
        let s = endpoints.get(endpoint).filter(|s| s.synced)?;
        let mut keys: Vec<u64> = s
            .blocks
            .get(&adapter.map(str::to_string))
            .map(|b| b.iter().copied().collect())
            .unwrap_or_default();
        keys.sort_unstable();
        Some(keys)
    }
}

impl KvReceiver for KvMirror {
    fn receive(&self, msg: KvEvents, _now: Duration) -> Result<KvAck, String> {
        msg.validate().map_err(|e| e.to_string())?;
        let mut endpoints = self.endpoints.lock().expect("mirror lock");
        let s = endpoints.entry(msg.endpoint.clone()).or_default();
        let in_order = s.stream == msg.stream && s.next_seq == msg.seq;
        if msg.reset {
            s.stream = msg.stream.clone();
            s.blocks.clear();
            s.synced = true;
        } else if !in_order {
            s.synced = false;
            s.blocks.clear();
            s.next_seq = msg.seq + 1;
            return Ok(KvAck {
                next_seq: s.next_seq,
                resync: true,
            });
        }
        if msg.cleared {
            s.blocks.clear();
        }
        for g in msg.groups {
            let blocks = s.blocks.entry(g.adapter).or_default();
            for k in g.removed {
                blocks.remove(&k);
            }
            blocks.extend(g.stored);
        }
        s.next_seq = msg.seq + 1;
        Ok(KvAck {
            next_seq: s.next_seq,
            resync: !s.synced,
        })
    }
}
/// The simulator's steps of the stream: build a pod's messages when its cache changed, and
/// deliver them to the picker's table (or, in an oracle run, to the lab's model of it).
impl super::Run<'_> {
    /// Schedules a build of the pod's KV-event messages if its cache changed and none is due.
    pub(super) fn kv_changed(&mut self, pod: u32, now: Duration) {
        let p = &mut self.pods[pod as usize];
        let Some(kv) = &mut p.kv else {
            return;
        };
        if kv.build_scheduled || !p.engine.kv_changed() {
            return;
        }
        kv.build_scheduled = true;
        let at = kv.next_build(now);
        self.schedule(at, Event::KvBuild(pod));
    }

    pub(super) fn kv_build(&mut self, pod: u32, now: Duration) {
        let delivery = self.config.kv_events.unwrap_or_default();
        let p = &mut self.pods[pod as usize];
        let Some(kv) = &mut p.kv else {
            return;
        };
        let built = kv.build(&mut p.engine, &self.adapter_names, now, delivery);
        for _ in 0..built {
            self.schedule(now + delivery.delay, Event::KvDeliver(pod));
        }
    }

    pub(super) fn kv_deliver(&mut self, pod: u32, now: Duration) {
        let delivery = self.config.kv_events.unwrap_or_default();
        let Some(kv) = &mut self.pods[pod as usize].kv else {
            return;
        };
        let Some(msg) = kv.arrive(delivery) else {
            return;
        };
        let receiver: &dyn KvReceiver = match &self.router {
            Router::Picker { table, .. } => table.as_ref(),
            Router::Oracle { .. } => &self.kv_receiver,
        };
        match receiver.receive(msg, now) {
            Ok(ack) => kv.acked(&ack),
            Err(e) => {
                tracing::warn!(error = %e, "simulated KV events refused");
                kv.resync();
            }
        }
        // A resync is answered by a reset at the next build, changes or not.
        if !kv.build_scheduled && kv.reset_due() {
            kv.build_scheduled = true;
            let at = kv.next_build(now);
            self.schedule(at, Event::KvBuild(pod));
        }
    }
}
