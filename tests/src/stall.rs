//! A loopback HTTP server that is slow on purpose: it accepts connections, reads each request's
//! head and body, and answers only after a delay, or never. It stands in for a hanging engine
//! `/metrics` or a picker that answers slowly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A running slow server; dropping it closes the listener and every connection.
#[derive(Debug)]
pub struct StallServer {
    /// Where it listens.
    pub addr: SocketAddr,
    counts: Arc<Counts>,
    task: JoinHandle<()>,
}

#[derive(Debug, Default)]
struct Counts {
    connections: AtomicU64,
    requests: AtomicU64,
}

impl StallServer {
    /// Binds `127.0.0.1:0`. Every request is answered `204 No Content` after `reply_after`, or
    /// never when it is `None` (the connection stays open until the server is dropped).
    pub async fn start(reply_after: Option<Duration>) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(Counts::default());
        let shared = counts.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                shared.connections.fetch_add(1, Ordering::Relaxed);
                connections.spawn(serve(stream, reply_after, shared.clone()));
                // Reap finished connections so a long test does not accumulate them.
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(Self { addr, counts, task })
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.counts.connections.load(Ordering::Relaxed)
    }

    /// Whole requests (head and body) read so far.
    pub fn requests(&self) -> u64 {
        self.counts.requests.load(Ordering::Relaxed)
    }
}

impl Drop for StallServer {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection task.
        self.task.abort();
    }
}

/// Reads requests from one connection and answers each late, or never.
async fn serve(mut stream: TcpStream, reply_after: Option<Duration>, counts: Arc<Counts>) {
    let mut buffer = Vec::new();
    loop {
        let Some(consumed) = read_request(&mut stream, &mut buffer).await else {
            return;
        };
        buffer.drain(..consumed);
        counts.requests.fetch_add(1, Ordering::Relaxed);
        let Some(delay) = reply_after else {
            // Hold the connection open and silent; the client must give up on its own.
            std::future::pending::<()>().await;
            return;
        };
        tokio::time::sleep(delay).await;
        let reply = b"HTTP/1.1 204 No Content\r\n\r\n";
        if stream.write_all(reply).await.is_err() {
            return;
        }
    }
}

/// Reads until `buffer` holds one whole request (head and `Content-Length` body); returns its
/// length, or `None` when the peer closed the connection first.
async fn read_request(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<usize> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(head_end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..head_end]);
            let body_len = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, value)| value.trim().parse::<usize>().ok())
                .unwrap_or(0);
            let total = head_end + 4 + body_len;
            if buffer.len() >= total {
                return Some(total);
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn answers_after_the_delay() {
        let server = StallServer::start(Some(Duration::from_millis(200)))
            .await
            .unwrap();
        let started = Instant::now();
        let response = crate::http_client(Duration::from_secs(10))
            .post(format!("http://{}/v1/reports", server.addr))
            .body("{\"x\": 1}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204);
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(server.requests(), 1);
        assert_eq!(server.connections(), 1);
    }

    #[tokio::test]
    async fn never_answers_when_told_so() {
        let server = StallServer::start(None).await.unwrap();
        let err = crate::http_client(Duration::from_millis(200))
            .get(format!("http://{}/metrics", server.addr))
            .send()
            .await
            .unwrap_err();
        assert!(err.is_timeout(), "{err}");
        assert_eq!(server.requests(), 1);
    }
}
