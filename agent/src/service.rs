//! The running agent: a scrape loop on a fixed period, GPU sampling beside it, push tasks fed
//! through a `watch` channel, and the HTTP endpoints.
//!
//! The scrape loop never waits on a picker: it publishes each report and moves on. A scrape is
//! bounded below the interval, so the loop stays on schedule even when the engine hangs.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use inferpick_schema::{Gpu, LoadReport};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::collect::{Collector, Observation};
use crate::config::Config;
use crate::engine::Engine;
use crate::gpu::{self, GpuSource};
use crate::http::{AppState, SHUTTING_DOWN, router};
use crate::listener;
use crate::metrics::AgentMetrics;
use crate::push::{self, Clients, Outgoing, TokenFile};
use crate::report::ReportBuilder;

/// How often `/v1/models` is read again once it has listed names (models change rarely; metrics
/// every interval). Until then it is read at every scrape.
pub const MODELS_EVERY: Duration = Duration::from_secs(5);
/// How often GPUs are sampled (NVML's own utilization window is about a second).
pub const GPU_EVERY: Duration = Duration::from_secs(1);
/// How long the last report may take to reach the pickers when the agent stops.
pub const LAST_REPORT_WITHIN: Duration = Duration::from_secs(1);

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration cannot work.
    #[error("invalid configuration:\n  {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Config(Vec<crate::config::ConfigError>),
    /// The listener could not be bound or served.
    #[error("cannot serve on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP client for pushes could not be built (its TLS settings).
    #[error("cannot build the push client: {0}")]
    Client(String),
    /// `--once` could not produce a ready report.
    #[error("{0}")]
    Once(String),
}

/// The engine side of the agent, shared by the service and `--once`.
struct Scraper {
    engine: Engine,
    collector: Collector,
    started: Instant,
    models_due: Instant,
}

impl Scraper {
    fn new(config: &Config) -> Self {
        Scraper {
            engine: Engine::new(config.engine_url.clone(), config.scrape_timeout),
            collector: Collector::new(config.engine, config.engine_url.as_str())
                .with_tensor_parallel_size(config.tensor_parallel_size),
            started: Instant::now(),
            models_due: Instant::now(),
        }
    }

    /// One scrape, and concurrently one models listing when one is due: every [`MODELS_EVERY`]
    /// after a listing with names, at the next scrape after one that failed or listed none.
    async fn scrape(&mut self, metrics: Option<&AgentMetrics>) -> Observation {
        let t0 = Instant::now();
        let list_models = t0 >= self.models_due;
        let (scrape, listed) = tokio::join!(self.engine.scrape(), async {
            if list_models {
                self.engine.models().await
            } else {
                None
            }
        });
        if list_models {
            // An engine that is still loading answers 503 (llama.cpp, vLLM); asking again only
            // after MODELS_EVERY would keep a ready pod's names out of its reports that long.
            self.models_due = if listed.is_some() {
                t0 + MODELS_EVERY
            } else {
                t0
            };
            self.collector.set_listed_models(listed);
        }
        let observation = self
            .collector
            .observe(scrape, t0 - self.started, t0.elapsed());
        if let Some(m) = metrics {
            m.observe_scrape(observation.outcome, t0.elapsed());
        }
        observation
    }
}

/// Scrapes once and returns the report, or the one-line reason it is not ready.
pub async fn once(config: Config) -> Result<LoadReport, AgentError> {
    let mut scraper = Scraper::new(&config);
    let source = gpu::open_configured(&config).await;
    let gpus = match source {
        Some(s) => tokio::task::spawn_blocking(move || s.read())
            .await
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let observation = scraper.scrape(None).await;
    let report = ReportBuilder::new(&config).build(observation, gpus);
    if !report.engine.ready {
        return Err(AgentError::Once(
            report.engine.error.clone().unwrap_or_default(),
        ));
    }
    Ok(report)
}

/// Runs the agent on `listener` until `shutdown` resolves.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    serve_with(config, listener, None, shutdown).await
}

/// [`serve`], reading GPUs from `gpus` instead of the source `--gpu` selects (tests, embedders).
///
/// When `shutdown` resolves: `/readyz` answers 503 at once, a last report (`engine.ready: false`,
/// `engine.error: "agent shutting down"`) goes to every picker within [`LAST_REPORT_WITHIN`], the
/// listener lets open requests finish, and this returns `Ok`.
pub async fn serve_with(
    config: Config,
    listener: TcpListener,
    gpus: Option<Arc<dyn GpuSource>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let metrics = Arc::new(AgentMetrics::new());
    let (latest_tx, latest_rx) = watch::channel::<Option<Arc<LoadReport>>>(None);
    let (out_tx, out_rx) = watch::channel::<Option<Outgoing>>(None);
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    let clients = Clients::new(config.push_timeout, config.ca_roots.clone());
    let pushers = push::spawn(
        &config.pickers,
        clients,
        out_rx,
        metrics.clone(),
        config.interval,
    )
    .map_err(|e| AgentError::Client(crate::engine::error_chain(&e)))?;
    tracing::info!(
        engine_url = %config.engine_url,
        endpoint = %config.endpoint,
        pickers = config.pickers.len(),
        interval = ?config.interval,
        listen = %addr,
        "inferpick-agent started"
    );

    let (engine_ready_tx, engine_ready_rx) = watch::channel(true);
    let token_file = config
        .token_file
        .clone()
        .map(|p| Arc::new(TokenFile::new(p)));
    let kv_tasks = start_kv_events(&config, &metrics, engine_ready_rx, token_file.clone())?;

    let gpu_override = gpus;
    let gpus = Arc::new(Mutex::new(Vec::<Gpu>::new()));
    let gpu_task = tokio::spawn(sample_gpus(config.clone(), gpu_override, gpus.clone()));

    let app = router(AppState {
        metrics: metrics.clone(),
        latest: latest_rx,
        stopping: stop_rx.clone(),
        request_timeout: config.request_timeout,
    });
    // The listener outlives the stop signal until the last report is out, so `/readyz` can be
    // seen failing meanwhile.
    let (http_stop_tx, mut http_stop) = watch::channel(false);
    let http = tokio::spawn(listener::serve(
        listener,
        app,
        config.request_timeout,
        async move {
            let _ = http_stop.wait_for(|s| *s).await;
        },
    ));

    let token = token_file;
    let mut scraper = Scraper::new(&config);
    let mut builder = ReportBuilder::new(&config);
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut stop = stop_rx;
    let mut was_ready = None;
    let publish = |report: LoadReport, last: bool| {
        metrics.set_report(&report);
        let body = Bytes::from(serde_json::to_vec(&report).expect("a report serializes"));
        let _ = out_tx.send(Some(Outgoing {
            body,
            token: token.as_ref().and_then(|t| t.current()),
            last,
        }));
        let _ = latest_tx.send(Some(Arc::new(report)));
    };
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        // A scrape in progress does not hold up the shutdown.
        let observation = tokio::select! {
            observation = scraper.scrape(Some(&metrics)) => observation,
            _ = stop.wait_for(|s| *s) => break,
        };
        let ready = observation.engine.ready;
        engine_ready_tx.send_replace(ready);
        if was_ready != Some(ready) {
            match &observation.engine.error {
                None => tracing::info!(engine = %observation.engine.kind, "engine ready"),
                Some(e) => tracing::warn!("engine not ready: {e}"),
            }
            was_ready = Some(ready);
        }
        let sample = gpus.lock().expect("gpu lock").clone();
        publish(builder.build(observation, sample), false);
    }

    drop(kv_tasks);
    tracing::info!("stopping: /readyz fails from now; pushing the last report");
    gpu_task.abort();
    let sample = gpus.lock().expect("gpu lock").clone();
    publish(
        builder.build(scraper.collector.stopping(SHUTTING_DOWN), sample),
        true,
    );
    let aborts: Vec<_> = pushers.iter().map(|p| p.abort_handle()).collect();
    if tokio::time::timeout(LAST_REPORT_WITHIN, futures::future::join_all(pushers))
        .await
        .is_err()
    {
        tracing::warn!("the last report did not reach every picker within {LAST_REPORT_WITHIN:?}");
    }
    for a in aborts {
        a.abort();
    }
    drop(out_tx);
    let _ = http_stop_tx.send(true);
    let _ = http.await;
    tracing::info!("inferpick-agent stopped");
    Ok(())
}

/// Starts the KV-event subscription and its pushes to every picker (nothing with
/// `--kv-events off`); the tasks end when the returned handles are dropped.
fn start_kv_events(
    config: &Config,
    metrics: &Arc<AgentMetrics>,
    engine_ready: watch::Receiver<bool>,
    token: Option<Arc<TokenFile>>,
) -> Result<Vec<push::AbortOnDrop>, AgentError> {
    let Some(source) = config.kv_events.clone() else {
        return Ok(Vec::new());
    };
    let state = Arc::new(Mutex::new(crate::kv::mirror::KvState::new(
        config.kv_max_blocks,
    )));
    let (changed_tx, changed_rx) = watch::channel(0u64);
    let context = Arc::new(crate::kv::push::Context {
        state: state.clone(),
        metrics: metrics.clone(),
        changed: changed_rx,
        endpoint: config.endpoint.clone(),
        stream: uuid::Uuid::new_v4().to_string(),
        token,
        interval: config.interval,
    });
    let clients = Clients::new(config.push_timeout, config.ca_roots.clone());
    let mut tasks: Vec<push::AbortOnDrop> =
        crate::kv::push::spawn(&config.pickers, clients, context)
            .map_err(|e| AgentError::Client(crate::engine::error_chain(&e)))?
            .into_iter()
            .map(push::AbortOnDrop)
            .collect();
    let shared = crate::kv::subscribe::Shared {
        state,
        metrics: metrics.clone(),
        changed: changed_tx,
    };
    tasks.push(push::AbortOnDrop(tokio::spawn(crate::kv::subscribe::run(
        source,
        shared,
        engine_ready,
        config.interval,
    ))));
    Ok(tasks)
}

/// Samples the GPUs into `into`, off the async runtime (NVML blocks): every [`GPU_EVERY`], or
/// every interval from a `--gpu-state-url` (an emulated GPU's change must reach the next report).
async fn sample_gpus(
    config: Config,
    source: Option<Arc<dyn GpuSource>>,
    into: Arc<Mutex<Vec<Gpu>>>,
) {
    let source = match source {
        Some(s) => s,
        None => match gpu::open_configured(&config).await {
            Some(s) => Arc::from(s),
            None => return,
        },
    };
    let every = if config.gpu_state_url.is_some() {
        config.interval
    } else {
        GPU_EVERY
    };
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let s = source.clone();
        if let Ok(sample) = tokio::task::spawn_blocking(move || s.read()).await {
            *into.lock().expect("gpu lock") = sample;
        }
    }
}
