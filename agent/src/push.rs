//! Pushing reports to every picker replica.
//!
//! Each target (a URL, or one address of a `dns+http://` name) has its own task that waits for the
//! next report on a `watch` channel and POSTs the latest one. A slow or dead picker therefore only
//! delays its own pushes: scrapes and the other targets never wait for it, and it is sent the
//! newest report when it comes back rather than a backlog. Failures back off, bounded by
//! [`MAX_BACKOFF`] so that a restarted picker has every endpoint again within about a second.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use reqwest::{Client, Url};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::engine::error_chain;
use crate::metrics::AgentMetrics;

/// Longest wait between attempts to a failing target.
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How often `dns+http://` names are resolved again.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(5);
/// The path reports are POSTed to when a target URL has none.
pub const REPORTS_PATH: &str = "/v1/reports";

/// One `--picker` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSpec {
    /// A fixed URL.
    Url(Url),
    /// Every address `host` resolves to, each on `port`, re-resolved every [`RESOLVE_EVERY`].
    Dns {
        /// The name.
        host: String,
        /// The port.
        port: u16,
        /// The path to POST to.
        path: String,
    },
}

impl std::str::FromStr for TargetSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (dns, url) = match s.strip_prefix("dns+") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let mut url = Url::parse(url).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
        match url.scheme() {
            "http" => {}
            "https" => {
                return Err(format!(
                    "{s:?}: https targets need TLS, which this build does not include; use http://"
                ));
            }
            other => {
                return Err(format!(
                    "{s:?}: scheme {other}:// is not supported; use http:// or dns+http://"
                ));
            }
        }
        if url.path() == "/" || url.path().is_empty() {
            url.set_path(REPORTS_PATH);
        }
        if !dns {
            return Ok(TargetSpec::Url(url));
        }
        let host = url
            .host_str()
            .ok_or_else(|| format!("{s:?} has no host name"))?
            .to_string();
        let port = url
            .port_or_known_default()
            .ok_or_else(|| format!("{s:?} has no port"))?;
        Ok(TargetSpec::Dns {
            host,
            port,
            path: url.path().to_string(),
        })
    }
}

/// The bearer token file, re-read whenever its modification time changes.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    cached: Mutex<(Option<SystemTime>, Option<Arc<str>>)>,
}

impl TokenFile {
    /// A token read from `path`.
    pub fn new(path: PathBuf) -> Self {
        TokenFile {
            path,
            cached: Mutex::new((None, None)),
        }
    }

    /// The current token. A file that cannot be read keeps the last good token and logs why.
    pub fn current(&self) -> Option<Arc<str>> {
        let mtime = std::fs::metadata(&self.path).and_then(|m| m.modified());
        // A std Mutex: held only for this comparison and swap, never across an await.
        let mut cached = self.cached.lock().expect("token lock");
        match mtime {
            Ok(t) if cached.0 == Some(t) => {}
            Ok(t) => match std::fs::read_to_string(&self.path) {
                Ok(text) => {
                    let token = text.trim();
                    if token.is_empty() {
                        tracing::warn!(path = %self.path.display(), "token file is empty; pushing without a token");
                    } else if cached.1.is_some() {
                        tracing::info!(path = %self.path.display(), "token file changed; using the new token");
                    }
                    *cached = (Some(t), (!token.is_empty()).then(|| Arc::from(token)));
                }
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), "cannot read token file: {e}")
                }
            },
            Err(e) => {
                if cached.0.take().is_some() || cached.1.is_none() {
                    tracing::warn!(path = %self.path.display(), "cannot stat token file: {e}; keeping the last token");
                }
            }
        }
        cached.1.clone()
    }
}

/// A report ready to send: its JSON and the token to send it with.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// `LoadReport` JSON, serialized once for every target.
    pub body: Bytes,
    /// Bearer token.
    pub token: Option<Arc<str>>,
}

/// Starts one task per target (and per resolved address). They stop when `reports` closes.
pub fn spawn(
    specs: &[TargetSpec],
    client: Client,
    reports: watch::Receiver<Option<Outgoing>>,
    metrics: Arc<AgentMetrics>,
    interval: Duration,
) -> Vec<JoinHandle<()>> {
    specs
        .iter()
        .map(|spec| match spec.clone() {
            TargetSpec::Url(url) => tokio::spawn(push_loop(
                url,
                client.clone(),
                reports.clone(),
                metrics.clone(),
                interval,
            )),
            TargetSpec::Dns { host, port, path } => tokio::spawn(follow_dns(
                host,
                port,
                path,
                client.clone(),
                reports.clone(),
                metrics.clone(),
                interval,
            )),
        })
        .collect()
}

/// Keeps one push task per address of `host`, adding and removing them as DNS changes.
async fn follow_dns(
    host: String,
    port: u16,
    path: String,
    client: Client,
    reports: watch::Receiver<Option<Outgoing>>,
    metrics: Arc<AgentMetrics>,
    interval: Duration,
) {
    let mut tasks: BTreeMap<SocketAddr, JoinHandle<()>> = BTreeMap::new();
    let mut closed = reports.clone();
    loop {
        match tokio::net::lookup_host((host.as_str(), port)).await {
            Ok(addrs) => {
                let addrs: Vec<SocketAddr> = addrs.collect();
                tasks.retain(|addr, task| {
                    let keep = addrs.contains(addr);
                    if !keep {
                        tracing::info!(%host, %addr, "picker address gone from DNS; no longer pushing to it");
                        task.abort();
                    }
                    keep
                });
                for addr in addrs {
                    tasks.entry(addr).or_insert_with(|| {
                        let url = Url::parse(&format!("http://{addr}{path}"))
                            .expect("an address makes a URL");
                        tracing::info!(%host, %url, "pushing to picker address");
                        tokio::spawn(push_loop(
                            url,
                            client.clone(),
                            reports.clone(),
                            metrics.clone(),
                            interval,
                        ))
                    });
                }
            }
            Err(e) => {
                tracing::warn!(%host, "cannot resolve picker name: {e}; keeping {} known addresses", tasks.len())
            }
        }
        // Wait for the next resolution, waking on every report only to notice a closed channel.
        let next = tokio::time::Instant::now() + RESOLVE_EVERY;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => break,
                changed = closed.changed() => if changed.is_err() {
                    for task in tasks.values() {
                        task.abort();
                    }
                    return;
                },
            }
        }
    }
}

/// Pushes every new report to `url` until the channel closes.
async fn push_loop(
    url: Url,
    client: Client,
    mut reports: watch::Receiver<Option<Outgoing>>,
    metrics: Arc<AgentMetrics>,
    interval: Duration,
) {
    let target = url.to_string();
    let mut failures = 0u32;
    let mut retry_at = Instant::now();
    while reports.changed().await.is_ok() {
        let Some(out) = reports.borrow_and_update().clone() else {
            continue;
        };
        if Instant::now() < retry_at {
            continue;
        }
        let started = Instant::now();
        let mut req = client
            .post(url.clone())
            .header("content-type", "application/json")
            .body(out.body);
        if let Some(token) = &out.token {
            req = req.bearer_auth(token);
        }
        let result = match req.send().await {
            Ok(resp) if resp.status().is_success() => Ok(()),
            Ok(resp) => {
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                Err(format!(
                    "HTTP {status}: {}",
                    body.chars().take(200).collect::<String>()
                ))
            }
            Err(e) if e.is_timeout() => Err("timed out".to_string()),
            Err(e) => Err(error_chain(&e)),
        };
        metrics.observe_push(&target, result.is_ok(), started.elapsed());
        match result {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!(%target, after = failures, "push works again");
                }
                failures = 0;
            }
            Err(e) => {
                failures += 1;
                let backoff = interval
                    .saturating_mul(1 << failures.min(6))
                    .min(MAX_BACKOFF);
                retry_at = Instant::now() + backoff;
                // The first failure and then one in fifty, so a long outage does not flood the log.
                if failures == 1 || failures.is_multiple_of(50) {
                    tracing::warn!(%target, failures, ?backoff, "push failed: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_with_default_path() {
        assert_eq!(
            "http://picker:9000".parse::<TargetSpec>().unwrap(),
            TargetSpec::Url(Url::parse("http://picker:9000/v1/reports").unwrap())
        );
        assert_eq!(
            "dns+http://inferpick-picker-headless:9000"
                .parse::<TargetSpec>()
                .unwrap(),
            TargetSpec::Dns {
                host: "inferpick-picker-headless".into(),
                port: 9000,
                path: "/v1/reports".into()
            }
        );
        assert!(
            "https://p:9000"
                .parse::<TargetSpec>()
                .unwrap_err()
                .contains("TLS")
        );
        assert!(
            "picker:9000"
                .parse::<TargetSpec>()
                .unwrap_err()
                .contains("not supported")
        );
    }

    #[test]
    fn token_file_is_reread_when_it_changes() {
        let dir = std::env::temp_dir().join(format!("inferpick-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "first\n").unwrap();
        let token = TokenFile::new(path.clone());
        assert_eq!(token.current().as_deref(), Some("first"));
        std::fs::write(&path, "second").unwrap();
        // Make the change visible even on filesystems with coarse modification times.
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert_eq!(token.current().as_deref(), Some("second"));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            token.current().as_deref(),
            Some("second"),
            "a vanished file keeps the last token"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
