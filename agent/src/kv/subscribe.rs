//! The subscription to the engine's KV-event stream: a ZeroMQ SUB socket on the publisher, the
//! engine's sequence numbers tracked, gaps filled from the replay socket when there is one.
//!
//! The stream is `live` while events arrive complete. It goes `stale` when the subscription is
//! disconnected (the engine's process is gone), or when no event has come for [`silence`] while
//! the engine's scrape says it is not ready: vLLM publishes only when its cache changes, so an idle
//! engine is silent and still right. A gap the replay cannot fill drops the mirror and sends every
//! picker a reset (the mirror is rebuilt from what follows); so does an engine restart (its
//! sequence starts again at 0, its cache empty).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use inferpick_schema::kv::KvStreamState;
use tokio::sync::watch;
use zeromq::{
    DealerSocket, Socket, SocketEvent, SocketOptions, SocketRecv, SocketSend, SubSocket, ZmqMessage,
};

use super::mirror::KvState;
use super::wire;
use crate::metrics::AgentMetrics;

/// vLLM's default publisher endpoint, tried by `--kv-events auto`.
pub const VLLM_DEFAULT: &str = "tcp://127.0.0.1:5557";
/// Most batches one gap may ask the replay for (vLLM keeps 10,000 by default); a longer gap
/// is not asked for and starts the mirror over.
pub const MAX_REPLAY: u64 = 10_000;
/// Bound on one replay exchange.
pub const REPLAY_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on one connection attempt; attempts repeat every [`RETRY_EVERY`].
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between connection attempts.
pub const RETRY_EVERY: Duration = Duration::from_secs(1);
/// Least time between two logs of malformed messages.
pub const LOG_MALFORMED_EVERY: Duration = Duration::from_secs(10);

/// How long the stream may be silent while the engine is not ready before it is `stale`:
/// three report intervals, at least a second.
pub fn silence(interval: Duration) -> Duration {
    (interval * 3).max(Duration::from_secs(1))
}

/// Where to read events from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The publisher, `tcp://host:port`.
    pub endpoint: String,
    /// The replay (ROUTER) socket, when the engine has one.
    pub replay: Option<String>,
    /// `--kv-events auto`: nothing may be there; say nothing until something is.
    pub auto: bool,
}

/// What the subscription shares with the rest of the agent.
#[derive(Clone)]
pub struct Shared {
    /// The mirror and its log.
    pub state: Arc<Mutex<KvState>>,
    /// The agent's metrics.
    pub metrics: Arc<AgentMetrics>,
    /// Bumped after every applied batch, so pushes with many pending changes go early.
    pub changed: watch::Sender<u64>,
}

/// Reads the stream until the task is dropped: connects (again and again while nothing
/// listens), then follows it.
pub async fn run(
    source: Source,
    shared: Shared,
    engine_ready: watch::Receiver<bool>,
    interval: Duration,
) {
    let mut attempts = 0u64;
    loop {
        let mut options = SocketOptions::default();
        options.connect_timeout(CONNECT_TIMEOUT);
        let mut socket = SubSocket::with_options(options);
        let monitor = socket.monitor();
        let connected = async {
            socket.subscribe("").await?;
            socket.connect(&source.endpoint).await
        }
        .await;
        match connected {
            Ok(()) => {
                tracing::info!(endpoint = %source.endpoint, "subscribed to the engine's KV events");
                let mut follower = Follower::new(&source, &shared);
                follower
                    .follow(socket, monitor, engine_ready.clone(), silence(interval))
                    .await;
            }
            Err(e) => {
                attempts += 1;
                if source.auto {
                    tracing::debug!(endpoint = %source.endpoint, "no KV-event publisher: {e}");
                } else if attempts == 1 || attempts.is_multiple_of(60) {
                    tracing::warn!(endpoint = %source.endpoint, attempts, "cannot subscribe to KV events: {e}");
                }
                tokio::time::sleep(RETRY_EVERY).await;
            }
        }
    }
}

/// Follows one subscription, tracking the engine's sequence numbers.
struct Follower<'a> {
    source: &'a Source,
    shared: &'a Shared,
    /// The sequence number expected next; `None` before the first message.
    expected: Option<u64>,
    last_event: Instant,
    last_malformed_log: Option<Instant>,
}

impl<'a> Follower<'a> {
    fn new(source: &'a Source, shared: &'a Shared) -> Self {
        Follower {
            source,
            shared,
            expected: None,
            last_event: Instant::now(),
            last_malformed_log: None,
        }
    }

    async fn follow(
        &mut self,
        mut socket: SubSocket,
        mut monitor: futures::channel::mpsc::Receiver<SocketEvent>,
        engine_ready: watch::Receiver<bool>,
        silence: Duration,
    ) {
        use futures::StreamExt;
        let mut check = tokio::time::interval(silence / 3);
        let mut monitoring = true;
        loop {
            tokio::select! {
                message = socket.recv() => match message {
                    Ok(m) => self.on_message(m).await,
                    Err(e) => {
                        tracing::warn!(endpoint = %self.source.endpoint, "KV-event subscription failed: {e}; subscribing again");
                        self.set_state(KvStreamState::Stale, "the subscription failed");
                        return;
                    }
                },
                event = monitor.next(), if monitoring => match event {
                    Some(SocketEvent::Disconnected(_)) => {
                        self.set_state(KvStreamState::Stale, "the publisher disconnected");
                    }
                    Some(SocketEvent::Connected(..)) => {
                        tracing::info!(endpoint = %self.source.endpoint, "KV-event publisher connected again");
                    }
                    Some(_) => {}
                    // The socket dropped its monitor: disconnections now show as silence.
                    None => monitoring = false,
                },
                _ = check.tick() => {
                    if self.last_event.elapsed() > silence && !*engine_ready.borrow() {
                        self.set_state(KvStreamState::Stale, "no events while the engine is not ready");
                    }
                }
            }
        }
    }

    /// Sets the state if the stream is on; logs a transition.
    fn set_state(&self, state: KvStreamState, why: &str) {
        let mut s = self.shared.state.lock().expect("kv state lock");
        if s.state().is_none() || s.state() == Some(state) {
            return;
        }
        s.set_state(state, &self.shared.metrics.kv);
        drop(s);
        match state {
            KvStreamState::Stale => tracing::warn!("KV-event stream stale: {why}"),
            KvStreamState::Live => tracing::info!("KV-event stream live: {why}"),
        }
        self.shared.changed.send_modify(|n| *n += 1);
    }

    fn malformed(&mut self, problem: &str) {
        let m = &self.shared.metrics.kv;
        m.malformed.inc();
        let due = self
            .last_malformed_log
            .is_none_or(|t| t.elapsed() >= LOG_MALFORMED_EVERY);
        if due {
            self.last_malformed_log = Some(Instant::now());
            tracing::warn!(
                endpoint = %self.source.endpoint,
                total = m.malformed.get(),
                "malformed KV-event message ignored: {problem}"
            );
        }
    }

    async fn on_message(&mut self, message: ZmqMessage) {
        self.shared.metrics.kv.messages.inc();
        let Some((seq, payload)) = frames(&message) else {
            let shape: Vec<usize> = message.iter().map(Bytes::len).collect();
            return self.malformed(&format!(
                "expected 3 frames [topic, 8-byte seq, payload], got frames of {shape:?} bytes"
            ));
        };
        match self.expected {
            None => tracing::info!(seq, "first KV event from the engine"),
            Some(e) if seq == e => {}
            Some(_) if seq == 0 => {
                tracing::info!(
                    "the engine's KV-event sequence started again at 0 (engine restart): starting the mirror over"
                );
                self.start_over();
            }
            Some(e) if seq < e => return, // already applied (a replay overlapped)
            Some(e) => {
                self.shared.metrics.kv.gaps.inc();
                tracing::warn!(expected = e, got = seq, "gap in the engine's KV events");
                if !self.fill(e, seq).await {
                    self.start_over();
                }
            }
        }
        self.expected = Some(seq + 1);
        self.apply(seq, payload);
    }

    fn apply(&mut self, seq: u64, payload: &[u8]) {
        match wire::decode(payload) {
            Ok(batch) => {
                self.last_event = Instant::now();
                let mut s = self.shared.state.lock().expect("kv state lock");
                s.apply(&batch.events, &self.shared.metrics.kv);
                let became_live = s.set_state(KvStreamState::Live, &self.shared.metrics.kv);
                drop(s);
                if became_live {
                    tracing::info!(seq, "KV-event stream live");
                }
                self.shared.changed.send_modify(|n| *n += 1);
            }
            Err(e) => self.malformed(&format!("seq {seq}: {e}")),
        }
    }

    fn start_over(&mut self) {
        let mut s = self.shared.state.lock().expect("kv state lock");
        if s.state().is_some() {
            s.set_state(KvStreamState::Stale, &self.shared.metrics.kv);
        }
        s.start_over(&self.shared.metrics.kv);
        drop(s);
        tracing::warn!(
            "KV mirror dropped; every picker is sent a reset and the mirror rebuilt from the events that follow"
        );
    }

    /// Asks the replay socket for `from..to` and applies it; whether every batch came.
    async fn fill(&mut self, from: u64, to: u64) -> bool {
        let replays = &self.shared.metrics.kv.replays;
        let Some(endpoint) = self.source.replay.clone() else {
            replays
                .get_or_create(&super::metrics::ResultLabels {
                    result: "not_configured",
                })
                .inc();
            tracing::warn!(
                missing = to - from,
                "gap cannot be replayed: no --kv-events-replay"
            );
            return false;
        };
        if to - from > MAX_REPLAY {
            replays
                .get_or_create(&super::metrics::ResultLabels { result: "failed" })
                .inc();
            tracing::warn!(
                missing = to - from,
                "gap longer than {MAX_REPLAY} batches: not replayed"
            );
            return false;
        }
        let result = tokio::time::timeout(REPLAY_TIMEOUT, self.replay(&endpoint, from, to)).await;
        let outcome = match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("no complete answer within {REPLAY_TIMEOUT:?}")),
        };
        let result = if outcome.is_ok() { "filled" } else { "failed" };
        replays
            .get_or_create(&super::metrics::ResultLabels { result })
            .inc();
        match outcome {
            Ok(()) => {
                tracing::info!(from, to, "gap filled from the replay socket");
                true
            }
            Err(e) => {
                tracing::warn!(from, to, %endpoint, "gap replay failed: {e}");
                false
            }
        }
    }

    /// vLLM's replay protocol: a DEALER sends `["", start_seq]`; the ROUTER answers
    /// `["", seq, payload]` for every buffered batch from there, then `["", -1, ""]`.
    async fn replay(&mut self, endpoint: &str, from: u64, to: u64) -> Result<(), String> {
        let mut options = SocketOptions::default();
        options.connect_timeout(REPLAY_TIMEOUT);
        let mut dealer = DealerSocket::with_options(options);
        dealer.connect(endpoint).await.map_err(|e| e.to_string())?;
        let request = ZmqMessage::try_from(vec![
            Bytes::new(),
            Bytes::copy_from_slice(&from.to_be_bytes()),
        ])
        .map_err(|e| format!("{e:?}"))?;
        dealer.send(request).await.map_err(|e| e.to_string())?;
        let mut next = from;
        loop {
            let reply = dealer.recv().await.map_err(|e| e.to_string())?;
            let parts: Vec<&Bytes> = reply.iter().collect();
            let (seq, payload) = match parts.as_slice() {
                [empty, seq, payload] if empty.is_empty() && seq.len() == 8 => (
                    i64::from_be_bytes(seq[..].try_into().expect("8 bytes")),
                    *payload,
                ),
                _ => {
                    return Err(format!(
                        "a replay answer of {} frames, expected 3",
                        parts.len()
                    ));
                }
            };
            if seq < 0 {
                break;
            }
            let seq = seq as u64;
            if seq < next {
                continue;
            }
            if seq != next {
                return Err(format!(
                    "the replay buffer has no batch {next} (it starts at {seq})"
                ));
            }
            if seq >= to {
                // The rest is what the subscription delivers.
                continue;
            }
            self.shared.metrics.kv.messages.inc();
            self.apply(seq, payload);
            next += 1;
        }
        if next < to {
            return Err(format!("the replay ended at batch {next}, before {to}"));
        }
        Ok(())
    }
}

/// `[topic, seq, payload]` with an 8-byte big-endian seq.
fn frames(message: &ZmqMessage) -> Option<(u64, &[u8])> {
    if message.len() != 3 {
        return None;
    }
    let seq: [u8; 8] = message.get(1)?[..].try_into().ok()?;
    Some((u64::from_be_bytes(seq), &message.get(2)?[..]))
}
