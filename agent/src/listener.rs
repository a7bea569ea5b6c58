//! The agent's accept loop: HTTP/1 and HTTP/2 on one port, each connection bounded in time.
//!
//! A hostile or broken client cannot hold the agent's resources:
//! - a request head must arrive whole within the request timeout (hyper's header read timeout
//!   for HTTP/1, and this module's idle rule for the protocol sniffing before it and for HTTP/2),
//!   so a slowloris client is disconnected;
//! - a connection with no request in flight for the request timeout is closed (idle keep-alive);
//! - heads are capped at [`MAX_HEAD_BYTES`] (HTTP/1 answers 431);
//! - at most [`MAX_CONNECTIONS`] connections are served at once; more are closed on accept.
//!
//! Handlers are bounded by the router's own timeout layer.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::ServiceExt;

/// Largest request head accepted (request line and headers).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Connections served at once; the agent's clients are a Prometheus and a kubelet or two.
pub const MAX_CONNECTIONS: usize = 256;
/// How long connections still open at shutdown get to finish.
pub const DRAIN_WITHIN: Duration = Duration::from_secs(1);

/// When a connection last had a request in flight, and how many it has now.
struct Activity {
    born: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `born` that the last request finished (0: none yet).
    last_done_ms: AtomicU64,
}

/// Counts a request in flight until dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let ms = self.0.born.elapsed().as_millis() as u64;
        self.0.last_done_ms.store(ms, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Release);
    }
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Activity {
            born: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_done_ms: AtomicU64::new(0),
        })
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Acquire);
        InFlight(self.clone())
    }

    /// When the connection will have idled for `timeout`, or `None` while a request is in flight.
    fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_done_ms.load(Ordering::Relaxed));
        Some(self.born + last + timeout)
    }
}

/// Serves `app` on `listener` until `stop` resolves, then lets open connections finish their
/// requests for up to [`DRAIN_WITHIN`].
pub async fn serve(
    listener: TcpListener,
    app: Router,
    request_timeout: Duration,
    stop: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(request_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        .max_concurrent_streams(64)
        .keep_alive_interval(request_timeout)
        .keep_alive_timeout(request_timeout);
    let (draining_tx, draining) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut refused = 0u64;
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, or a connection reset before it was accepted: wait a
                // little rather than spin.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if connections.len() >= MAX_CONNECTIONS {
            refused += 1;
            if refused == 1 || refused.is_multiple_of(1000) {
                tracing::warn!(
                    refused,
                    "{MAX_CONNECTIONS} connections open; closing new ones"
                );
            }
            continue;
        }
        let _ = stream.set_nodelay(true);
        connections.spawn(connection(
            builder.clone(),
            stream,
            app.clone(),
            request_timeout,
            draining.clone(),
        ));
    }
    drop(listener);
    let _ = draining_tx.send(true);
    let drained = tokio::time::timeout(DRAIN_WITHIN, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "connections still open after {DRAIN_WITHIN:?}; closing them"
        );
    }
}

/// Serves one connection until the client closes it, it idles past `timeout`, or the listener
/// drains.
async fn connection(
    builder: auto::Builder<TokioExecutor>,
    stream: tokio::net::TcpStream,
    app: Router,
    timeout: Duration,
    mut draining: watch::Receiver<bool>,
) {
    let activity = Activity::new();
    let counted = activity.clone();
    let service = tower::service_fn(move |req: http::Request<Incoming>| {
        let in_flight = counted.begin();
        let app = app.clone();
        async move {
            let response = app.oneshot(req.map(axum::body::Body::new)).await;
            drop(in_flight);
            response
        }
    });
    let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        let idle_check = activity
            .idle_deadline(timeout)
            .unwrap_or_else(|| Instant::now() + timeout);
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!("connection ended: {e}");
                }
                return;
            }
            _ = tokio::time::sleep_until(idle_check) => {
                if activity.idle_deadline(timeout).is_some_and(|d| d <= Instant::now()) {
                    tracing::debug!(?timeout, "closing a connection with no request in flight");
                    return;
                }
            }
            _ = draining.wait_for(|d| *d), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}
