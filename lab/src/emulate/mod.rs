//! `emulate`: one model server in real time. The [engine model](crate::engine) runs on a driver
//! task that sleeps until each step ends; HTTP handlers submit requests and stream the tokens the
//! engine produces; `/metrics` shows the engine's state in the chosen engine's dialect.
//!
//! Prompts are tokenized with a `tokenizer.json` (the [lab's own](crate::tokenizer) unless
//! another is given), and the prefix cache holds blocks of token ids keyed as the picker keys them
//! ([`inferpick_schema::kv::block_keys`], per adapter), so equal leading tokens hit the cache as
//! in a real engine; responses report `usage.prompt_tokens_details.cached_tokens`. Every request
//! generates exactly `max_tokens` tokens (as with `ignore_eos`).

pub mod exposition;
pub mod fault;
pub mod kv_events;
mod openai;
mod peers;
mod publish;
mod request;

pub use fault::{Condition, Degrade};
pub use publish::KvEndpoints;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use inferpick_schema::EngineKind;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};

use crate::engine::{Engine, EngineConfig, EngineEvent, EngineState, SeqSpec, SubmitError};
use exposition::{AdapterNames, E2E_BUCKETS, Histogram, Observed, TOKEN_BUCKETS, TTFT_BUCKETS};

pub use openai::router;

/// What one emulated server serves.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Whose `/metrics` dialect to speak.
    pub kind: EngineKind,
    /// The base model's name.
    pub model: String,
    /// LoRA adapters of the base model it serves.
    pub adapters: Vec<String>,
    /// Size and speed.
    pub engine: EngineConfig,
    /// Turns prompt text into token ids.
    pub tokenizer: Arc<tokenizers::Tokenizer>,
}

/// What the driver sends a request's handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Prompt tokens the prefix cache saved (sent with the first token).
    Cached(u32),
    /// Output tokens generated so far (sent whenever it grows).
    Tokens(u32),
    /// The last token is out.
    Done,
    /// The engine died (its GPU was lost): nothing more comes.
    Failed,
}

/// A request the HTTP layer hands to the emulator.
#[derive(Debug, Clone)]
pub struct Submission {
    /// The prompt text.
    pub prompt: String,
    /// Tokens to generate.
    pub max_tokens: u32,
    /// Adapter name, or None for the base model.
    pub adapter: Option<String>,
}

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum EmulateError {
    /// Neither the base model nor an adapter.
    #[error("the model {0:?} does not exist")]
    UnknownModel(String),
    /// The engine can never fit it.
    #[error(transparent)]
    TooLong(#[from] SubmitError),
    /// The tokenizer failed on the prompt.
    #[error("{0}")]
    Tokenize(String),
    /// The GPU is lost; the engine serves nothing.
    #[error("EngineDeadError: the engine's GPU is lost")]
    Lost,
}

struct Stream {
    tx: mpsc::UnboundedSender<Progress>,
    sent: u32,
    arrival: Instant,
    prompt_tokens: u32,
    max_tokens: u32,
}

struct Core {
    engine: Engine,
    streams: HashMap<u64, Stream>,
    next_id: u64,
    observed: Observed,
    /// Where the prefix cache's KV events go, once [`Emulator::publish_kv_events`] was called.
    kv: Option<KvOut>,
    /// The GPU's speed, or that it is lost.
    condition: Condition,
    /// When each generation request arrived, once [`Emulator::record_arrivals`] was called.
    arrivals: Option<Vec<Instant>>,
}

/// The KV-event publisher's side of the core: the sockets' channel and the blocks' token ids.
struct KvOut {
    batches: mpsc::UnboundedSender<Vec<u8>>,
    book: publish::BlockBook,
}

/// One emulated model server; cheap to clone (shared state).
#[derive(Clone)]
pub struct Emulator {
    config: Arc<EmulatorConfig>,
    core: Arc<Mutex<Core>>,
    wake: Arc<Notify>,
    origin: Instant,
    /// Random per emulator, so that response ids differ across pods as well as across requests.
    instance: u64,
    /// The emulated GPU's NVML UUID, random per emulator.
    gpu_uuid: Arc<str>,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// An NVML-shaped GPU UUID (`GPU-8-4-4-4-12` hex digits) from 128 random bits.
fn gpu_uuid(bits: u128) -> String {
    let h = format!("{bits:032x}");
    format!(
        "GPU-{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Emulator {
    /// A new emulator; call [`Emulator::drive`] (or use [`spawn`]) to make time pass.
    pub fn new(config: EmulatorConfig) -> Self {
        let engine = Engine::new(config.engine.clone());
        let observed = Observed {
            model: config.model.clone(),
            block_tokens: config.engine.block_tokens,
            max_loras: if config.adapters.is_empty() {
                0
            } else {
                config.engine.max_loras
            },
            started_unix: unix_now(),
            now_unix: unix_now(),
            requests_received: 0,
            ttft: Histogram::new(TTFT_BUCKETS),
            e2e: Histogram::new(E2E_BUCKETS),
            input_length: Histogram::new(TOKEN_BUCKETS),
            generated: Histogram::new(TOKEN_BUCKETS),
            lora_info: Vec::new(),
        };
        Self {
            config: Arc::new(config),
            core: Arc::new(Mutex::new(Core {
                engine,
                streams: HashMap::new(),
                next_id: 0,
                observed,
                kv: None,
                condition: Condition::default(),
                arrivals: None,
            })),
            wake: Arc::new(Notify::new()),
            origin: Instant::now(),
            instance: rand::random(),
            gpu_uuid: gpu_uuid(rand::random()).into(),
        }
    }

    /// A response id (`prefix-…`) for the request the engine knows as `seq`: unique across
    /// emulators and requests, as clients that key on ids expect.
    pub fn response_id(&self, prefix: &str, seq: u64) -> String {
        format!("{prefix}-{:016x}{seq:08x}", self.instance)
    }

    /// The configuration.
    pub fn config(&self) -> &EmulatorConfig {
        &self.config
    }

    // A std mutex: the engine is only touched for microseconds and never across an await.
    fn lock(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Queues a request; progress arrives on the returned channel. Dropping the receiver cancels it.
    pub fn submit(
        &self,
        sub: Submission,
    ) -> Result<(u64, u32, mpsc::UnboundedReceiver<Progress>), EmulateError> {
        let ids = self.tokenize(&sub.prompt)?;
        self.submit_ids(ids, sub.max_tokens, sub.adapter.as_deref())
    }

    /// The token ids of `text` under the emulator's tokenizer.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, EmulateError> {
        crate::tokenizer::encode(&self.config.tokenizer, text).map_err(EmulateError::Tokenize)
    }

    /// Queues a prompt given as token ids (a completions `prompt` of ids), which go to the prefix
    /// cache as they are; otherwise as [`Emulator::submit`].
    pub fn submit_ids(
        &self,
        ids: Vec<u32>,
        max_tokens: u32,
        adapter_name: Option<&str>,
    ) -> Result<(u64, u32, mpsc::UnboundedReceiver<Progress>), EmulateError> {
        let adapter = match adapter_name {
            None => None,
            Some(name) => Some(
                self.config
                    .adapters
                    .iter()
                    .position(|a| a == name)
                    .ok_or_else(|| EmulateError::UnknownModel(name.to_string()))?
                    as u32,
            ),
        };
        let vocab = self.config.tokenizer.get_vocab_size(true) as u32;
        if let Some(bad) = ids.iter().find(|&&t| t >= vocab) {
            return Err(EmulateError::Tokenize(format!(
                "token id {bad} is out of vocabulary (ids run from 0 to {})",
                vocab.saturating_sub(1)
            )));
        }
        // An empty prompt still costs the one token engines prefill (the BOS).
        let tokens = (ids.len() as u32).max(1);
        let max_tokens = max_tokens.max(1);
        let bt = self.config.engine.block_tokens as usize;
        // Prefix-cache keys of the prompt's full blocks, under the model's root.
        let root = inferpick_schema::kv::root(adapter_name);
        let blocks = inferpick_schema::kv::block_keys(root, &ids, bt, usize::MAX);
        let (tx, rx) = mpsc::unbounded_channel();
        let id = {
            let mut core = self.lock();
            if core.condition.lost {
                return Err(EmulateError::Lost);
            }
            let id = core.next_id;
            core.next_id += 1;
            if let Some(kv) = &mut core.kv {
                kv.book.record(&blocks, &ids, bt);
            }
            core.engine.submit(SeqSpec {
                id,
                prompt_tokens: tokens,
                output_tokens: max_tokens,
                prefix: blocks.into(),
                adapter,
            })?;
            core.observed.requests_received += 1;
            core.streams.insert(
                id,
                Stream {
                    tx,
                    sent: 0,
                    arrival: Instant::now(),
                    prompt_tokens: tokens,
                    max_tokens,
                },
            );
            id
        };
        self.wake.notify_one();
        Ok((id, tokens, rx))
    }

    /// The engine's state now.
    pub fn state(&self) -> EngineState {
        self.lock().engine.state()
    }

    /// How the GPU is doing now.
    pub fn condition(&self) -> Condition {
        self.lock().condition
    }

    /// Applies a fault or a recovery and returns the condition it leaves. A throttle slows every
    /// step from the next one on; losing the GPU fails every request in the engine at once (their
    /// handlers answer as vLLM's do when its engine dies) and refuses new ones until recovery.
    pub fn degrade(&self, change: Degrade) -> Condition {
        let mut guard = self.lock();
        let core = &mut *guard;
        if let Some(speed) = change.speed {
            core.engine.set_speed(speed);
            core.condition.speed = speed;
        }
        if let Some(lost) = change.lost {
            if lost && !core.condition.lost {
                for (id, stream) in core.streams.drain() {
                    let _ = stream.tx.send(Progress::Failed);
                    core.engine.cancel(id);
                }
            }
            core.condition.lost = lost;
        }
        core.condition
    }

    /// The GPUs an agent beside this engine reads (`GET /lab/gpus`): one [`fault::H100`] in the
    /// engine's condition.
    pub fn gpus(&self) -> Vec<inferpick_schema::Gpu> {
        fault::gpus(&fault::H100, &self.gpu_uuid, self.condition())
    }

    /// Starts recording when each generation request arrives (whether or not it is served), for
    /// [`Emulator::arrivals`].
    pub fn record_arrivals(&self) {
        self.lock().arrivals.get_or_insert_with(Vec::new);
    }

    /// When each generation request arrived since [`Emulator::record_arrivals`] (empty before).
    pub fn arrivals(&self) -> Vec<Instant> {
        self.lock().arrivals.clone().unwrap_or_default()
    }

    /// Notes a generation request's arrival, if arrivals are recorded.
    fn note_arrival(&self) {
        if let Some(a) = &mut self.lock().arrivals {
            a.push(Instant::now());
        }
    }

    /// `/metrics` in the configured dialect.
    pub fn metrics(&self) -> String {
        let mut core = self.lock();
        let state = core.engine.state();
        let names = self.adapter_names(&state);
        core.observed.now_unix = unix_now();
        if core.observed.max_loras > 0 {
            let (running, waiting) = (names.running.join(","), names.waiting.join(","));
            let now = core.observed.now_unix;
            let info = &mut core.observed.lora_info;
            match info
                .iter_mut()
                .find(|(r, w, _)| *r == running && *w == waiting)
            {
                Some(entry) => entry.2 = now,
                None => info.push((running, waiting, now)),
            }
        }
        exposition::render(self.config.kind, &state, &names, &core.observed)
    }

    fn adapter_names(&self, state: &EngineState) -> AdapterNames {
        let name = |i: &u32| self.config.adapters[*i as usize].clone();
        AdapterNames {
            running: state.adapters_running.iter().map(name).collect(),
            waiting: state.adapters_waiting.iter().map(name).collect(),
        }
    }

    /// Runs the engine in real time until `shutdown` resolves.
    pub async fn drive(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut events = Vec::new();
        loop {
            let end = {
                let mut core = self.lock();
                core.engine.start_step(self.now())
            };
            match end {
                Some(end) => {
                    let at = tokio::time::Instant::from_std(self.origin + end);
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = &mut shutdown => return,
                    }
                    self.finish_step(&mut events);
                }
                None => {
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = &mut shutdown => return,
                    }
                }
            }
        }
    }

    /// Publishes the prefix cache's stored and evicted blocks from now on, as vLLM does with
    /// `--kv-events-config` (see the `publish` module): batches on a PUB socket bound at `events`, and a
    /// ROUTER replay socket at `replay`. Returns where they are bound (`tcp://127.0.0.1:0` picks a
    /// port).
    pub async fn publish_kv_events(
        &self,
        events: &str,
        replay: Option<&str>,
    ) -> Result<KvEndpoints, String> {
        let (batches, bound) = publish::start(events, replay).await?;
        let mut core = self.lock();
        // Four blocks remembered per block of cache: enough for prompts waiting to be admitted.
        let book = publish::BlockBook::new(4 * self.config.engine.kv_blocks() as usize);
        core.engine.keep_kv_journal(1 << 16);
        core.kv = Some(KvOut { batches, book });
        Ok(bound)
    }

    fn finish_step(&self, events: &mut Vec<EngineEvent>) {
        let mut guard = self.lock();
        let core = &mut *guard;
        core.engine.finish_step(events);
        if let Some(kv) = &mut core.kv
            && core.engine.kv_changed()
        {
            let changes = core.engine.drain_kv_changes();
            let wire = kv.book.events(
                changes,
                &self.config.adapters,
                self.config.engine.block_tokens,
            );
            if !wire.is_empty() {
                let _ = kv.batches.send(publish::batch(unix_now(), &wire));
            }
        }
        let mut gone = Vec::new();
        for ev in events.drain(..) {
            match ev {
                EngineEvent::FirstToken { id, cached_tokens } => {
                    if let Some(s) = core.streams.get(&id) {
                        let _ = s.tx.send(Progress::Cached(cached_tokens));
                        core.observed
                            .ttft
                            .observe(s.arrival.elapsed().as_secs_f64());
                    }
                }
                EngineEvent::Finished { id } => {
                    if let Some(s) = core.streams.remove(&id) {
                        // A finished request generated all it was asked for.
                        let total = s.max_tokens;
                        let _ = s.tx.send(Progress::Tokens(total));
                        let _ = s.tx.send(Progress::Done);
                        core.observed.e2e.observe(s.arrival.elapsed().as_secs_f64());
                        core.observed
                            .input_length
                            .observe(f64::from(s.prompt_tokens));
                        core.observed.generated.observe(f64::from(total));
                    }
                }
            }
        }
        for (id, s) in core.streams.iter_mut() {
            let n = core.engine.generated(*id).unwrap_or(0);
            if n > s.sent {
                s.sent = n;
                if s.tx.send(Progress::Tokens(n)).is_err() {
                    gone.push(*id);
                }
            } else if s.tx.is_closed() {
                gone.push(*id);
            }
        }
        for id in gone {
            core.streams.remove(&id);
            core.engine.cancel(id);
        }
    }
}

/// A running emulator: its address, and a guard that stops it when dropped.
#[derive(Debug)]
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The emulator (to read its true state).
    pub emulator: Emulator,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops the server and the engine and waits for them.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// Serves `emulator` on `listener` (HTTP) and drives its engine, until the returned guard is
/// stopped or dropped.
pub fn spawn(emulator: Emulator, listener: TcpListener) -> std::io::Result<Running> {
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = router(emulator.clone());
    let driver = emulator.clone();
    let task = tokio::spawn(async move {
        let (tx, _) = tokio::sync::broadcast::channel::<()>(1);
        let mut rx_server = tx.subscribe();
        let mut rx_driver = tx.subscribe();
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = rx_server.recv().await;
        });
        let drive = driver.drive(async move {
            let _ = rx_driver.recv().await;
        });
        let server = tokio::spawn(async move { server.await });
        let drive = tokio::spawn(drive);
        let _ = stopped.await;
        let _ = tx.send(());
        let _ = drive.await;
        // Open streams keep a graceful shutdown waiting; give them a moment, then stop.
        let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    });
    Ok(Running {
        addr,
        emulator,
        stop: Some(stop),
        task: Some(task),
    })
}

#[cfg(test)]
mod tests;
