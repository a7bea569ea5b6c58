//! The running service, on top of everything else: both listeners over one [`AppState`], the
//! background tasks (config and token files, forgetting silent endpoints, SIGHUP), and the
//! shutdown sequence. [`run`] serves until `shutdown` resolves.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::{ConfigError, ConfigIssue, Settings};
use crate::state::AppState;

/// How often the config file and token files are checked for changes, and silent endpoints forgotten.
const WATCH_PERIOD: Duration = Duration::from_secs(1);

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
    state.start_draining();
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
