//! Pushing reports to every picker replica.
//!
//! Each target (a URL, or one address of a `dns+http(s)://` name) has its own task that waits for the
//! next report on a `watch` channel and POSTs the latest one. A slow or dead picker therefore only
//! delays its own pushes: scrapes and the other targets never wait for it, and it is sent the
//! newest report when it comes back rather than a backlog. After a first failure the next report is
//! tried, so a picker that restarts at once has every endpoint again within two intervals; repeated
//! failures back off (2, 4, … intervals), bounded by [`MAX_BACKOFF`] so that one down for longer
//! has every endpoint again within about a second of coming back.
//! When the agent stops, a last report (marked [`Outgoing::last`]) pre-empts whatever a target's
//! task is doing, so the pickers hear of the shutdown at once.

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
    /// A fixed URL (`http://` or `https://`).
    Url(Url),
    /// Every address `host` resolves to, each on `port`, re-resolved every [`RESOLVE_EVERY`].
    Dns {
        /// The name.
        host: String,
        /// The port.
        port: u16,
        /// The path to POST to.
        path: String,
        /// `dns+https://`: TLS to each address, its certificate checked against `host`.
        tls: bool,
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
        let tls = match url.scheme() {
            "http" => false,
            "https" => true,
            other => {
                return Err(format!(
                    "{s:?}: scheme {other}:// is not supported; use http://, https://, dns+http:// or dns+https://"
                ));
            }
        };
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
            tls,
        })
    }
}

impl TargetSpec {
    /// The same target with its URL's path replaced by `path` (`/v1/kv-events` beside the
    /// reports' path).
    pub fn with_path(&self, path: &str) -> TargetSpec {
        match self {
            TargetSpec::Url(url) => {
                let mut url = url.clone();
                url.set_path(path);
                TargetSpec::Url(url)
            }
            TargetSpec::Dns {
                host, port, tls, ..
            } => TargetSpec::Dns {
                host: host.clone(),
                port: *port,
                path: path.to_string(),
                tls: *tls,
            },
        }
    }
}

/// Backoff after failed pushes to one target: the next attempt after a first failure is
/// immediate (a restarted picker is whole again within two intervals), then every 2, 4, …
/// intervals up to [`MAX_BACKOFF`].
#[derive(Debug)]
pub struct Backoff {
    interval: Duration,
    failures: u32,
    retry_at: Instant,
}

impl Backoff {
    /// No failures yet.
    pub fn new(interval: Duration) -> Self {
        Backoff {
            interval,
            failures: 0,
            retry_at: Instant::now(),
        }
    }

    /// Whether an attempt may be made now.
    pub fn ready(&self) -> bool {
        Instant::now() >= self.retry_at
    }

    /// Records a success; returns how many failures it ended.
    pub fn succeeded(&mut self) -> u32 {
        std::mem::take(&mut self.failures)
    }

    /// Records a failure; returns the failures in a row and the wait before the next attempt,
    /// and whether this one should be logged (the first, then one in fifty).
    pub fn failed(&mut self) -> (u32, Duration, bool) {
        self.failures += 1;
        let backoff = self
            .interval
            .saturating_mul(1 << (self.failures - 1).min(6))
            .min(MAX_BACKOFF);
        // Half an interval early, so the report that arrives at the deadline is sent.
        self.retry_at = Instant::now() + backoff.saturating_sub(self.interval / 2);
        let log = self.failures == 1 || self.failures.is_multiple_of(50);
        (self.failures, backoff, log)
    }
}

/// Builds the HTTP clients pushes go through: bounded in time, TLS trusting `--ca-file` (or the
/// system's roots).
#[derive(Clone)]
pub struct Clients {
    timeout: Duration,
    tls: Option<rustls::ClientConfig>,
}

impl Clients {
    /// Clients whose requests take at most `timeout`; https trusts only `ca_roots` when given.
    pub fn new(timeout: Duration, ca_roots: Option<Arc<rustls::RootCertStore>>) -> Self {
        Clients {
            timeout,
            tls: ca_roots.map(crate::tls::client_config),
        }
    }

    /// A client; with `pinned`, the name always resolves to that address (so one address of a
    /// `dns+https://` name is reached while its certificate is checked against the name).
    pub fn build(&self, pinned: Option<(&str, SocketAddr)>) -> Result<Client, reqwest::Error> {
        let mut builder = Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.timeout)
            .pool_idle_timeout(Duration::from_secs(30));
        if let Some(config) = &self.tls {
            builder = builder.tls_backend_preconfigured(config.clone());
        }
        if let Some((host, addr)) = pinned {
            builder = builder.resolve(host, addr);
        }
        builder.build()
    }
}

/// Keeps a task running only as long as its owner: dropping this aborts the task.
#[derive(Debug)]
pub struct AbortOnDrop(pub JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
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
    /// The agent's last report (it is shutting down): sent at once, even to a target in backoff
    /// or with a push still in flight, and then the target's task ends.
    pub last: bool,
}

/// One address pushes are POSTed to.
#[derive(Clone)]
pub struct Target {
    /// Where to POST.
    pub url: Url,
    /// How logs and metrics name it: the URL, with the address in place of a `dns+` name.
    pub label: String,
    /// The client to POST with.
    pub client: Client,
}

/// Starts one target's push loop.
pub type StartTarget = Arc<dyn Fn(Target) -> JoinHandle<()> + Send + Sync>;
/// Resolves when a `dns+` target should stop following its name, once its tasks end.
pub type Finished = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Starts `start` for every target: once for a URL, and for every address of a `dns+` name
/// (following the name as it changes, until `finished()` resolves and its tasks end).
pub fn spawn_targets(
    specs: &[TargetSpec],
    clients: Clients,
    start: StartTarget,
    finished: impl Fn() -> Finished,
) -> Result<Vec<JoinHandle<()>>, reqwest::Error> {
    let shared = clients.build(None)?;
    Ok(specs
        .iter()
        .map(|spec| match spec.clone() {
            TargetSpec::Url(url) => start(Target {
                label: url.to_string(),
                url,
                client: shared.clone(),
            }),
            TargetSpec::Dns {
                host,
                port,
                path,
                tls,
            } => tokio::spawn(follow_dns(
                DnsTarget {
                    host,
                    port,
                    path,
                    tls,
                },
                clients.clone(),
                shared.clone(),
                start.clone(),
                finished(),
            )),
        })
        .collect())
}

/// Starts one task per target (and per resolved address). Each ends after sending a report
/// marked [`Outgoing::last`], or when `reports` closes.
pub fn spawn(
    specs: &[TargetSpec],
    clients: Clients,
    reports: watch::Receiver<Option<Outgoing>>,
    metrics: Arc<AgentMetrics>,
    interval: Duration,
) -> Result<Vec<JoinHandle<()>>, reqwest::Error> {
    let rx = reports.clone();
    let start: StartTarget = Arc::new(move |target| {
        tokio::spawn(push_loop(target, rx.clone(), metrics.clone(), interval))
    });
    spawn_targets(specs, clients, start, move || {
        let reports = reports.clone();
        Box::pin(async move {
            last_report(&reports).await;
        })
    })
}

struct DnsTarget {
    host: String,
    port: u16,
    path: String,
    tls: bool,
}

impl DnsTarget {
    /// The push target for one of the name's addresses.
    fn at(&self, addr: SocketAddr, clients: &Clients, shared: &Client) -> Result<Target, String> {
        let label = format!(
            "{}://{addr}{}",
            if self.tls { "https" } else { "http" },
            self.path
        );
        if !self.tls {
            return Ok(Target {
                url: Url::parse(&label).expect("an address makes a URL"),
                label,
                client: shared.clone(),
            });
        }
        // TLS checks the certificate against the name, so the URL keeps the name and this
        // target's client resolves it to this one address.
        let url = Url::parse(&format!("https://{}:{}{}", self.host, self.port, self.path))
            .map_err(|e| format!("{}: {e}", self.host))?;
        let client = clients
            .build(Some((&self.host, addr)))
            .map_err(|e| error_chain(&e))?;
        Ok(Target { url, label, client })
    }
}

/// Keeps one push task per address of the target's name, adding and removing them as DNS
/// changes. Once `finished` resolves it waits for those tasks to end.
async fn follow_dns(
    target: DnsTarget,
    clients: Clients,
    shared: Client,
    start: StartTarget,
    mut finished: Finished,
) {
    let host = target.host.clone();
    let mut tasks: BTreeMap<SocketAddr, AbortOnDrop> = BTreeMap::new();
    loop {
        match tokio::net::lookup_host((host.as_str(), target.port)).await {
            Ok(addrs) => {
                let addrs: Vec<SocketAddr> = addrs.collect();
                tasks.retain(|addr, _| {
                    let keep = addrs.contains(addr);
                    if !keep {
                        tracing::info!(%host, %addr, "picker address gone from DNS; no longer pushing to it");
                    }
                    keep
                });
                for addr in addrs {
                    if tasks.contains_key(&addr) {
                        continue;
                    }
                    match target.at(addr, &clients, &shared) {
                        Ok(t) => {
                            tracing::info!(%host, target = %t.label, "pushing to picker address");
                            tasks.insert(addr, AbortOnDrop(start(t)));
                        }
                        Err(e) => {
                            tracing::warn!(%host, %addr, "cannot push to picker address: {e}")
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(%host, "cannot resolve picker name: {e}; keeping {} known addresses", tasks.len())
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RESOLVE_EVERY) => {}
            _ = &mut finished => {
                for task in tasks.values_mut() {
                    let _ = (&mut task.0).await;
                }
                return;
            }
        }
    }
}

/// Resolves with the last report once one is published; never while the channel stays open
/// without one, nor once it closes (the push in flight then finishes as usual). Watches through
/// a clone so that reports published meanwhile stay unseen by `reports`, and the newest is pushed
/// as soon as the push in flight is done.
async fn last_report(reports: &watch::Receiver<Option<Outgoing>>) -> Outgoing {
    let found = reports
        .clone()
        .wait_for(|o| o.as_ref().is_some_and(|o| o.last))
        .await
        .ok()
        .and_then(|o| o.clone());
    match found {
        Some(out) => out,
        None => std::future::pending().await,
    }
}

/// Pushes every new report to the target until the last one, or until the channel closes.
async fn push_loop(
    target: Target,
    mut reports: watch::Receiver<Option<Outgoing>>,
    metrics: Arc<AgentMetrics>,
    interval: Duration,
) {
    let mut backoff = Backoff::new(interval);
    while reports.changed().await.is_ok() {
        let Some(out) = reports.borrow_and_update().clone() else {
            continue;
        };
        if out.last {
            push_last(&target, out, &metrics).await;
            return;
        }
        if !backoff.ready() {
            continue;
        }
        // The last report does not wait behind a push to a slow picker.
        let result = tokio::select! {
            result = push_one(&target, out, &metrics) => result,
            last = last_report(&reports) => {
                push_last(&target, last, &metrics).await;
                return;
            }
        };
        match result {
            Ok(()) => {
                let after = backoff.succeeded();
                if after > 0 {
                    tracing::info!(target = %target.label, after, "push works again");
                }
            }
            Err(e) => {
                let (failures, backoff, log) = backoff.failed();
                if log {
                    tracing::warn!(target = %target.label, failures, ?backoff, "push failed: {e}");
                }
            }
        }
    }
}

async fn push_last(target: &Target, out: Outgoing, metrics: &AgentMetrics) {
    match push_one(target, out, metrics).await {
        Ok(()) => tracing::info!(target = %target.label, "pushed the last report"),
        Err(e) => tracing::warn!(target = %target.label, "the last report was not delivered: {e}"),
    }
}

/// POSTs one report; the error says what went wrong in one line.
async fn push_one(target: &Target, out: Outgoing, metrics: &AgentMetrics) -> Result<(), String> {
    let started = Instant::now();
    let mut req = target
        .client
        .post(target.url.clone())
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
        Err(e) if crate::tls::is_certificate_error(&e) => Err(format!(
            "TLS: the picker's certificate was refused (is it signed by a CA in --ca-file, or by a \
             system root without it?): {}",
            error_chain(&e)
        )),
        Err(e) => Err(error_chain(&e)),
    };
    metrics.observe_push(&target.label, result.is_ok(), started.elapsed());
    result
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
                path: "/v1/reports".into(),
                tls: false,
            }
        );
        assert_eq!(
            "https://p:9443".parse::<TargetSpec>().unwrap(),
            TargetSpec::Url(Url::parse("https://p:9443/v1/reports").unwrap())
        );
        assert_eq!(
            "dns+https://p-headless:9443/in"
                .parse::<TargetSpec>()
                .unwrap(),
            TargetSpec::Dns {
                host: "p-headless".into(),
                port: 9443,
                path: "/in".into(),
                tls: true,
            }
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
