//! The listeners' connection handling: accepting, the optional TLS handshake, and the bounds on
//! every phase a client controls, so a slow or idle client cannot hold a connection forever.
//!
//! HTTP: each connection is served by hyper (HTTP/1.1 and HTTP/2) with its peer address in every
//! request's extensions (`ConnectInfo<SocketAddr>`, read by the report origin check). A watchdog
//! closes a connection with no request in flight once it has been quiet for the request timeout:
//! that covers a client dribbling its request head (slowloris, including the first bytes hyper
//! reads to tell HTTP/1 from HTTP/2) and idle keep-alive connections. Bodies are bounded in the
//! handlers (`408 request_timeout`).
//!
//! gRPC: connections are accepted here (TCP_NODELAY, TLS) and handed to tonic already past their
//! TLS handshake; `Handshake` closes one whose HTTP/2 preface does not follow in time.
//!
//! Each listener holds at most `--max-connections` connections (`limit`); at the cap it stops
//! accepting until one closes.

mod limit;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use self::limit::{ConnectionLimit, Slot};

/// A byte stream a listener serves: plain TCP or TLS over it.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// How long an accept loop waits after a failed `accept` (e.g. out of file descriptors) before
/// trying again, so it does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts HTTP connections on `listener` until `stop` turns true, then returns the connections
/// still open; each of them finishes its request in flight and closes (HTTP/2: GOAWAY). Each
/// connection is bounded by `request_timeout()` as it is when the connection is accepted; at most
/// `max_connections` are open at once.
pub(crate) async fn accept_http(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    request_timeout: impl Fn() -> Duration + Send + 'static,
    max_connections: usize,
    stop: watch::Receiver<bool>,
) -> JoinSet<()> {
    let mut limit = ConnectionLimit::new("HTTP", max_connections);
    let mut connections = JoinSet::new();
    let draining = stop.clone();
    let stopping = stopped(stop);
    tokio::pin!(stopping);
    loop {
        while connections.try_join_next().is_some() {}
        let slot = tokio::select! {
            () = &mut stopping => break,
            slot = limit.admit() => slot,
        };
        let accepted = tokio::select! {
            () = &mut stopping => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let conn = http_connection(
                    stream,
                    peer,
                    router.clone(),
                    tls.clone(),
                    request_timeout(),
                    draining.clone(),
                );
                connections.spawn(async move {
                    conn.await;
                    drop(slot);
                });
            }
            Err(e) => {
                tracing::warn!("HTTP listener: accept failed: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
    connections
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn http_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    tls: Option<TlsAcceptor>,
    timeout: Duration,
    stop: watch::Receiver<bool>,
) {
    // Small request/response pairs: without it a reply can wait out a delayed ACK.
    let _ = stream.set_nodelay(true);
    let io: Box<dyn Io> = match tls {
        None => Box::new(stream),
        Some(acceptor) => match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => Box::new(tls),
            Ok(Err(e)) => {
                tracing::debug!(%peer, "TLS handshake failed: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake not finished within {timeout:?}: closed");
                return;
            }
        },
    };
    serve_http(io, peer, router, timeout, stop).await;
}

/// When a connection last started or finished a request, and how many it has in flight.
struct Activity {
    start: Instant,
    /// Nanoseconds after `start`.
    last_ns: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn touch(&self) {
        let ns = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_ns.store(ns, Ordering::Release);
    }

    /// When the connection has been quiet for `timeout`, if nothing is in flight by then.
    fn idle_deadline(&self, timeout: Duration) -> Instant {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Instant::now() + timeout;
        }
        self.start + Duration::from_nanos(self.last_ns.load(Ordering::Acquire)) + timeout
    }

    fn idle_for(&self, timeout: Duration) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0 && self.idle_deadline(timeout) <= Instant::now()
    }
}

/// Counts one request in flight until dropped.
struct Busy(Arc<Activity>);

impl Busy {
    fn begin(activity: &Arc<Activity>) -> Busy {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.touch();
        Busy(activity.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn serve_http(
    io: Box<dyn Io>,
    peer: SocketAddr,
    router: Router,
    timeout: Duration,
    stop: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity {
        start: Instant::now(),
        last_ns: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
    });
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            let busy = Busy::begin(&activity);
            let router = router.clone();
            async move {
                let response = router.oneshot(request.map(Body::new)).await;
                drop(busy);
                response
            }
        })
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(timeout)
        .keep_alive_timeout(timeout);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let mut draining = false;
    let stopping = stopped(stop);
    tokio::pin!(stopping);
    loop {
        let idle = tokio::time::sleep_until(activity.idle_deadline(timeout));
        tokio::select! {
            done = connection.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(%peer, "HTTP connection ended: {e}");
                }
                return;
            }
            () = &mut stopping, if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
            _ = idle => {
                if activity.idle_for(timeout) {
                    tracing::debug!(%peer, "closing a connection quiet for {timeout:?} with no request in flight");
                    return;
                }
            }
        }
    }
}

/// Accepts gRPC connections until `stop` turns true: each is set TCP_NODELAY (each small ext_proc
/// message would otherwise wait out a delayed ACK, 40 ms at p99, measured), taken through TLS when
/// configured, and yielded to tonic with its HTTP/2 preface bounded by `timeout`. Handshakes run
/// concurrently, so a slow one delays nobody else. At most `max_connections` are open at once,
/// handshakes included.
pub(crate) fn accept_grpc(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    timeout: Duration,
    max_connections: usize,
    stop: watch::Receiver<bool>,
) -> mpsc::Receiver<io::Result<Handshake>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut limit = ConnectionLimit::new("gRPC", max_connections);
        let mut handshakes = JoinSet::new();
        let stopping = stopped(stop);
        tokio::pin!(stopping);
        loop {
            while handshakes.try_join_next().is_some() {}
            let slot = tokio::select! {
                () = &mut stopping => break,
                _ = tx.closed() => break,
                slot = limit.admit() => slot,
            };
            let accepted = tokio::select! {
                () = &mut stopping => break,
                _ = tx.closed() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let tx = tx.clone();
                    let tls = tls.clone();
                    handshakes.spawn(async move {
                        if let Some(conn) = grpc_handshake(stream, peer, tls, timeout, slot).await {
                            let _ = tx.send(Ok(conn)).await;
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("gRPC listener: accept failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    });
    rx
}

async fn grpc_handshake(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    timeout: Duration,
    slot: Slot,
) -> Option<Handshake> {
    let _ = stream.set_nodelay(true);
    let info = tonic::transport::server::TcpConnectInfo {
        local_addr: stream.local_addr().ok(),
        remote_addr: Some(peer),
    };
    let deadline = Instant::now() + timeout;
    let io: Box<dyn Io> = match tls {
        None => Box::new(stream),
        Some(acceptor) => match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => Box::new(tls),
            Ok(Err(e)) => {
                tracing::debug!(%peer, "gRPC TLS handshake failed: {e}");
                return None;
            }
            Err(_) => {
                tracing::debug!(%peer, "gRPC TLS handshake not finished within {timeout:?}: closed");
                return None;
            }
        },
    };
    Some(Handshake {
        io,
        info,
        deadline: Some(Box::pin(tokio::time::sleep_until(deadline))),
        remaining: HTTP2_HANDSHAKE_BYTES,
        _slot: slot,
    })
}

/// The client's side of an HTTP/2 handshake: the 24-byte connection preface and the 9-byte header
/// of its SETTINGS frame.
const HTTP2_HANDSHAKE_BYTES: usize = 24 + 9;

/// A gRPC connection whose reads fail with `TimedOut` if the client's HTTP/2 handshake has not
/// arrived by the deadline; after that it is the plain stream.
pub(crate) struct Handshake {
    io: Box<dyn Io>,
    info: tonic::transport::server::TcpConnectInfo,
    deadline: Option<Pin<Box<Sleep>>>,
    remaining: usize,
    /// Room under the listener's connection cap, given back when tonic drops the connection.
    _slot: Slot,
}

impl AsyncRead for Handshake {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                this.remaining = this.remaining.saturating_sub(n);
                if this.remaining == 0 {
                    this.deadline = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if let Some(deadline) = &mut this.deadline
                    && deadline.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client's HTTP/2 handshake did not arrive within the request timeout",
                    )));
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl AsyncWrite for Handshake {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Handshake {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_grpc_listener_holds_no_more_than_its_cap() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_stop, stopped) = watch::channel(false);
        let mut incoming = accept_grpc(listener, None, Duration::from_secs(60), 1, stopped);

        let _a = TcpStream::connect(addr).await.unwrap();
        let first = tokio::time::timeout(Duration::from_secs(5), incoming.recv())
            .await
            .expect("the first is accepted");
        let first = first.unwrap().unwrap();
        let b = TcpStream::connect(addr).await.unwrap();
        let early = tokio::time::timeout(Duration::from_millis(300), incoming.recv()).await;
        assert!(early.is_err(), "a second connection got past a cap of 1");

        // tonic drops a connection when it closes; that gives its room back.
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(5), incoming.recv())
            .await
            .expect("the second is accepted once the first closed");
        let second = second.unwrap().unwrap();
        assert_eq!(second.info.remote_addr, Some(b.local_addr().unwrap()));
    }
}
