//! The running service: shared state, config reload, token refresh, forgetting silent endpoints,
//! and [`run`], which serves the HTTP API until `shutdown` resolves.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::config::{ConfigError, ConfigIssue, Settings, read_token};
use crate::metrics::Metrics;
use crate::scheduler::Scheduler;
use crate::table::Table;

/// How often the config file and token files are checked for changes, and silent endpoints forgotten.
const WATCH_PERIOD: Duration = Duration::from_secs(1);

/// The picker's monotonic clock: time since the process (or state) started.
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    /// A clock starting now.
    pub fn start() -> Self {
        Clock(Instant::now())
    }

    /// Time since start: the `now` passed to the table and the scheduler.
    pub fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

#[derive(Debug, Clone)]
struct Token {
    path: PathBuf,
    value: String,
    modified: Option<SystemTime>,
}

impl Token {
    fn load(path: &Path) -> Result<Token, String> {
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        Ok(Token {
            path: path.to_path_buf(),
            value: read_token(path)?,
            modified,
        })
    }
}

#[derive(Debug, Clone, Default)]
struct Tokens {
    report: Option<Token>,
    pick: Option<Token>,
}

/// Which bearer token a route requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `POST /v1/reports`.
    Report,
    /// Pick, authz and done.
    Pick,
}

#[derive(Debug)]
struct Shared {
    table: Arc<Table>,
    scheduler: Arc<ArcSwap<Scheduler>>,
    settings: ArcSwap<Settings>,
    tokens: ArcSwap<Tokens>,
    metrics: Metrics,
    registry: Registry,
    clock: Clock,
    ready: AtomicBool,
    /// Set on shutdown: readiness is down while requests in flight finish.
    draining: AtomicBool,
}

/// Everything the HTTP handlers share. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Shared>,
}

impl AppState {
    /// Builds the table, scheduler, metrics and tokens for `settings`.
    pub fn new(settings: Settings) -> Result<AppState, ConfigError> {
        let tokens = load_tokens(&settings, None)?;
        let table = Arc::new(Table::new(settings.table_config()));
        let scheduler = Arc::new(ArcSwap::from_pointee(Scheduler::new(
            settings.policy,
            settings.scheduler_config(),
        )));
        let clock = Clock::start();
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry, table.clone(), scheduler.clone(), clock);
        metrics.set_policy(settings.policy);
        Ok(AppState {
            inner: Arc::new(Shared {
                table,
                scheduler,
                settings: ArcSwap::from_pointee(settings),
                tokens: ArcSwap::from_pointee(tokens),
                metrics,
                registry,
                clock,
                ready: AtomicBool::new(true),
                draining: AtomicBool::new(false),
            }),
        })
    }

    /// The picker's clock reading, for the table and the scheduler.
    pub fn now(&self) -> Duration {
        self.inner.clock.now()
    }

    /// The endpoint table.
    pub fn table(&self) -> &Table {
        &self.inner.table
    }

    /// The scheduler in force.
    pub fn scheduler(&self) -> Arc<Scheduler> {
        self.inner.scheduler.load_full()
    }

    /// The settings in force.
    pub fn settings(&self) -> Arc<Settings> {
        self.inner.settings.load_full()
    }

    /// The event metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Whether the service is ready: config loaded and not shutting down.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire) && !self.is_draining()
    }

    /// Whether the service is shutting down (readiness down, finishing what is in flight).
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// The exposition of every metric, in the OpenMetrics text format.
    pub fn render_metrics(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry);
        out
    }

    /// The same metrics in the classic Prometheus text format (0.0.4), counter families named
    /// with their `_total`, as `promtool check metrics` reads it.
    pub fn render_metrics_classic(&self) -> String {
        let mut out = String::with_capacity(4096);
        let _ =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.inner.registry);
        out
    }

    /// The bearer token `scope` requires, if one is configured.
    pub fn token(&self, scope: Scope) -> Option<String> {
        let t = self.inner.tokens.load();
        match scope {
            Scope::Report => t.report.as_ref().map(|t| t.value.clone()),
            Scope::Pick => t.pick.as_ref().map(|t| t.value.clone()),
        }
    }

    /// Puts new settings in force. Listen addresses only change with a restart.
    pub fn apply(&self, settings: Settings) -> Result<(), ConfigError> {
        let tokens = load_tokens(&settings, Some(&self.inner.tokens.load()))?;
        let old = self.settings();
        if old.listen != settings.listen || old.grpc_listen != settings.grpc_listen {
            tracing::warn!("listen addresses change only with a restart; keeping the current ones");
        }
        if old.tls != settings.tls {
            tracing::warn!("TLS files change only with a restart; keeping the current ones");
        }
        self.inner.table.set_config(settings.table_config());
        let scheduler = self.inner.scheduler.load();
        if scheduler.policy() != settings.policy
            || *scheduler.config() != settings.scheduler_config()
        {
            self.inner.scheduler.store(Arc::new(Scheduler::new(
                settings.policy,
                settings.scheduler_config(),
            )));
            self.inner.metrics.set_policy(settings.policy);
        }
        self.inner.tokens.store(Arc::new(tokens));
        self.inner.settings.store(Arc::new(settings));
        Ok(())
    }

    /// Re-reads the config file; a bad file is logged and the old config kept. True if applied.
    pub fn reload(&self) -> bool {
        match self.settings().reload().and_then(|s| self.apply(s)) {
            Ok(()) => {
                tracing::info!(policy = %self.settings().policy, "configuration reloaded");
                true
            }
            Err(e) => {
                tracing::error!("configuration not reloaded, keeping the previous one: {e}");
                false
            }
        }
    }

    /// Re-reads token files whose modification time changed; an unreadable one keeps the old token.
    pub fn refresh_tokens(&self) {
        let current = self.inner.tokens.load_full();
        let refresh = |t: &Option<Token>| -> Option<Token> {
            let t = t.as_ref()?;
            let modified = std::fs::metadata(&t.path).and_then(|m| m.modified()).ok();
            if modified == t.modified {
                return Some(t.clone());
            }
            match Token::load(&t.path) {
                Ok(new) => {
                    tracing::info!(path = %t.path.display(), "token file re-read");
                    Some(new)
                }
                Err(e) => {
                    tracing::warn!("{e}; keeping the previous token");
                    Some(Token {
                        modified,
                        ..t.clone()
                    })
                }
            }
        };
        let next = Tokens {
            report: refresh(&current.report),
            pick: refresh(&current.pick),
        };
        self.inner.tokens.store(Arc::new(next));
    }
}

fn load_tokens(settings: &Settings, previous: Option<&Tokens>) -> Result<Tokens, ConfigError> {
    let mut issues = Vec::new();
    let mut load = |name: &str, path: &Option<PathBuf>, prev: Option<&Token>| {
        let path = path.as_ref()?;
        if let Some(p) = prev.filter(|p| p.path == *path) {
            return Some(p.clone());
        }
        match Token::load(path) {
            Ok(t) => Some(t),
            Err(message) => {
                issues.push(ConfigIssue {
                    source: "settings".into(),
                    path: name.into(),
                    message,
                });
                None
            }
        }
    };
    let tokens = Tokens {
        report: load(
            "report_token_file",
            &settings.report_token_file,
            previous.and_then(|p| p.report.as_ref()),
        ),
        pick: load(
            "pick_token_file",
            &settings.pick_token_file,
            previous.and_then(|p| p.pick.as_ref()),
        ),
    };
    if issues.is_empty() {
        Ok(tokens)
    } else {
        Err(ConfigError { issues })
    }
}

/// Why the service stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The settings could not be put in force (token files).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Serving failed.
    #[error("serving HTTP failed: {0}")]
    Io(#[from] std::io::Error),
    /// Serving ext_proc failed.
    #[error("serving gRPC ext_proc failed: {0}")]
    Grpc(#[source] tonic::transport::Error),
}

/// Aborts background tasks when the service stops.
struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Serves the picker on `listener` until `shutdown` resolves, then shuts down gracefully (see
/// [`serve`]).
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let state = AppState::new(settings)?;
    serve(state, listener, shutdown).await
}

/// Like [`run`], with a state built by the caller (the lab keeps a handle on the table).
///
/// When `shutdown` resolves: readiness drops at once (`/readyz` 503, gRPC health NOT_SERVING)
/// while both listeners keep serving for the shutdown delay, so load balancers stop sending new
/// requests; then they stop accepting and the requests and ext_proc streams in flight get up to
/// the drain timeout to finish; then this returns. Each step is logged.
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let settings = state.settings();
    let tls_config = |alpn: &[&[u8]]| {
        settings
            .tls
            .as_ref()
            .map(|t| t.server_config(alpn))
            .transpose()
            .map_err(|message| {
                RunError::Config(ConfigError {
                    issues: vec![ConfigIssue {
                        source: "settings".into(),
                        path: "tls".into(),
                        message,
                    }],
                })
            })
    };
    let http_tls = tls_config(&[b"h2", b"http/1.1"])?;
    let grpc_tls = tls_config(&[b"h2"])?;
    let mut tasks = vec![tokio::spawn(watch(state.clone()))];
    #[cfg(unix)]
    if settings.config_file.is_some() {
        tasks.push(tokio::spawn(reload_on_sighup(state.clone())));
    }
    let _tasks = Tasks(tasks);
    // One signal for both listeners to stop accepting and drain.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (health, health_service) = crate::extproc::health();
    let mut grpc = match settings.grpc_listen {
        Some(addr) => {
            let listener = TcpListener::bind(addr).await?;
            let mut stopped = stopped.clone();
            let serving = crate::extproc::serve(
                state.clone(),
                listener,
                grpc_tls,
                settings.request_timeout,
                (health.clone(), health_service),
                async move {
                    let _ = stopped.wait_for(|s| *s).await;
                },
            );
            Some(tokio::spawn(serving))
        }
        None => None,
    };
    let http = tokio::spawn(crate::server::accept_http(
        listener,
        crate::http::router(state.clone()),
        http_tls.map(tokio_rustls::TlsAcceptor::from),
        {
            let state = state.clone();
            move || state.settings().request_timeout
        },
        settings.max_connections,
        stopped,
    ));
    let grpc_ended = async {
        match grpc.as_mut() {
            Some(g) => g.await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = shutdown => {}
        ended = grpc_ended => {
            // The gRPC server stopped on its own: stop the HTTP side too and report why.
            let _ = stop.send(true);
            http.abort();
            return match ended {
                Ok(Err(e)) => Err(RunError::Grpc(e)),
                _ => Ok(()),
            };
        }
    }

    shut_down(&state, &health, stop, http, grpc).await
}

type Serving<T> = tokio::task::JoinHandle<T>;

/// The shutdown sequence: readiness down at once, serve on for the shutdown delay, stop
/// accepting, then wait up to the drain timeout for what is in flight.
async fn shut_down(
    state: &AppState,
    health: &tonic_health::server::HealthReporter,
    stop: tokio::sync::watch::Sender<bool>,
    http: Serving<tokio::task::JoinSet<()>>,
    mut grpc: Option<Serving<Result<(), tonic::transport::Error>>>,
) -> Result<(), RunError> {
    // As configured now: a reload may have changed them since the start.
    let (delay, drain) = {
        let now = state.settings();
        (now.shutdown_delay, now.drain_timeout)
    };
    state.inner.draining.store(true, Ordering::Release);
    crate::extproc::set_not_serving(health).await;
    tracing::info!(
        shutdown_delay = %humantime::format_duration(delay),
        "shutting down: /readyz now answers 503 and gRPC health NOT_SERVING; still serving for the shutdown delay"
    );
    tokio::time::sleep(delay).await;
    let _ = stop.send(true);
    tracing::info!(
        drain_timeout = %humantime::format_duration(drain),
        "stopped accepting connections; waiting for requests and streams in flight"
    );
    let mut connections = match http.await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("the HTTP accept loop failed: {e}");
            tokio::task::JoinSet::new()
        }
    };
    let drained = tokio::time::timeout(drain, async {
        while connections.join_next().await.is_some() {}
        match grpc.as_mut() {
            Some(g) => g.await.ok(),
            None => None,
        }
    })
    .await;
    match drained {
        Ok(Some(Err(e))) => return Err(RunError::Grpc(e)),
        Ok(_) => tracing::info!("drained: every request in flight finished"),
        Err(_) => {
            tracing::warn!(
                http_connections = connections.len(),
                "drain timeout: closing the connections and ext_proc streams still open"
            );
            connections.abort_all();
            if let Some(g) = &grpc {
                g.abort();
            }
        }
    }
    Ok(())
}

/// Polls the config file's and token files' modification times, and forgets silent endpoints.
async fn watch(state: AppState) {
    let mtime = |p: &Option<PathBuf>| {
        p.as_ref()
            .and_then(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
    };
    let mut seen = mtime(&state.settings().config_file);
    let mut tick = tokio::time::interval(WATCH_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = mtime(&state.settings().config_file);
        if now != seen {
            seen = now;
            tracing::info!("config file changed");
            state.reload();
        }
        state.refresh_tokens();
        let forgotten = state.table().forget_silent(state.now());
        if forgotten > 0 {
            tracing::info!(forgotten, "forgot silent endpoints");
        }
    }
}

#[cfg(unix)]
async fn reload_on_sighup(state: AppState) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot listen for SIGHUP ({e}); the config file is still polled");
            return;
        }
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading configuration");
        state.reload();
    }
}
