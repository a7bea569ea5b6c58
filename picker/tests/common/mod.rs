//! Shared by the socket-level tests: an in-process picker on 127.0.0.1:0 stopped by a Drop guard,
//! a raw HTTP/1.1 client whose every byte the test controls, and report builders.

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use inferpick_picker::{AppState, Settings, serve};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;

pub use inferpick_schema::testing::MODEL;

/// A picker served in this process; stopped when dropped.
pub struct InProcess {
    pub addr: SocketAddr,
    pub state: AppState,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

impl InProcess {
    /// Resolves the shutdown future `serve` was given (as SIGTERM does in the binary).
    pub fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Whether `serve` has returned.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// Starts a picker with `settings` (its listen address is ignored: it binds 127.0.0.1:0).
pub async fn start(settings: Settings) -> InProcess {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = AppState::new(settings).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn({
        let state = state.clone();
        async move {
            serve(state, listener, async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        }
    });
    InProcess {
        addr,
        state,
        stop: Some(stop),
        task,
    }
}

/// One HTTP response as read off the socket.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `error` code of a JSON error body.
    pub fn code(&self) -> Option<String> {
        serde_json::from_slice::<Value>(&self.body)
            .ok()?
            .get("error")?
            .as_str()
            .map(str::to_string)
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// Parses one response (Content-Length or chunked body) from the start of `bytes`.
pub fn parse(bytes: &[u8]) -> Option<Reply> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
    let status = head.get(9..12)?.parse().ok()?;
    let rest = &bytes[end + 4..];
    let mut reply = Reply {
        status,
        head,
        body: Vec::new(),
    };
    if let Some(n) = reply.header("content-length") {
        let n: usize = n.parse().ok()?;
        reply.body = rest.get(..n)?.to_vec();
    } else if reply
        .header("transfer-encoding")
        .is_some_and(|t| t.contains("chunked"))
    {
        let mut at = rest;
        loop {
            let line_end = at.windows(2).position(|w| w == b"\r\n")?;
            let size =
                usize::from_str_radix(std::str::from_utf8(&at[..line_end]).ok()?, 16).ok()?;
            at = &at[line_end + 2..];
            if size == 0 {
                break;
            }
            reply.body.extend_from_slice(at.get(..size)?);
            at = at.get(size + 2..)?;
        }
    }
    Some(reply)
}

/// Request bytes with `Connection: close`, `Host` and the given headers; `Content-Length` is
/// added for a non-empty body unless a header sets the framing.
pub fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nhost: picker\r\nconnection: close\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    let framed = headers.iter().any(|(k, _)| {
        k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding")
    });
    if !framed && !body.is_empty() {
        r.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    r.push_str("\r\n");
    let mut bytes = r.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Connects to `addr` from the loopback address `source` (127.0.0.0/8 are all this host's).
pub async fn connect_from(source: IpAddr, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Sends `bytes` (from a separate task, so a server that answers before reading everything is
/// not blocked on) and reads until the server closes; returns the response, if one came.
pub async fn exchange_on(stream: TcpStream, bytes: Vec<u8>) -> Option<Reply> {
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&bytes).await;
        write
    });
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match tokio::time::timeout(Duration::from_secs(20), read.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no response within 20 s"),
        }
    }
    writer.abort();
    parse(&got)
}

pub async fn exchange(addr: SocketAddr, bytes: Vec<u8>) -> Option<Reply> {
    exchange_on(TcpStream::connect(addr).await.unwrap(), bytes).await
}

/// Sends a request and returns the response, failing the test if none came.
pub async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    exchange(addr, request(method, path, headers, body))
        .await
        .unwrap_or_else(|| panic!("{method} {path}: the connection closed without a response"))
}

/// The table as `/v1/endpoints` lists it, without what moves with the clock.
pub async fn table(addr: SocketAddr) -> Value {
    let mut v = call(addr, "GET", "/v1/endpoints", &[], b"").await.json();
    for e in v["endpoints"].as_array_mut().unwrap() {
        let e = e.as_object_mut().unwrap();
        e.remove("age_ms");
        e.remove("state");
    }
    v
}

/// A valid report for `address`, as JSON.
pub fn report(address: &str, seq: u64, ready: bool) -> Value {
    let r = inferpick_schema::testing::ReportBuilder::new(address)
        .seq(seq)
        .ready(ready)
        .running(1)
        .kv_utilization(0.1)
        .build();
    serde_json::to_value(r).unwrap()
}

/// Polls `check` every 10 ms until it holds or `within` passes; true if it held.
pub async fn eventually<F: std::future::Future<Output = bool>>(
    within: Duration,
    mut check: impl FnMut() -> F,
) -> bool {
    let deadline = Instant::now() + within;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while Instant::now() < deadline {
        tick.tick().await;
        if check().await {
            return true;
        }
    }
    false
}

/// An unused loopback port (bound, then released).
pub fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// hyper's HTTP/2 client connection as the tower service tonic's generated clients want.
#[derive(Clone)]
pub struct H2(pub hyper::client::conn::http2::SendRequest<tonic::body::Body>);

impl tower::Service<http::Request<tonic::body::Body>> for H2 {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, hyper::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(request))
    }
}

/// An HTTP/2 connection over `io` (plain TCP or TLS), driven in the background.
pub async fn h2<IO>(io: IO) -> H2
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(io),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    H2(send)
}

/// This process's resident set size in bytes, from /proc/self/status.
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS in /proc/self/status");
    kb * 1024
}
