//! The state every transport shares: the table, the scheduler in force, settings, tokens, metrics
//! and the clock — and putting a new configuration in force. Nothing here serves a request.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, Guard};
use prometheus_client::registry::Registry;

use crate::clock::Clock;
use crate::config::{ConfigError, ConfigIssue, Settings, read_token};
use crate::metrics::Metrics;
use crate::scheduler::Scheduler;
use crate::table::Table;

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

    /// The scheduler in force, for as long as the guard is held (hold it briefly). A guard
    /// rather than an `Arc`: no reference count that every pick on every core would write.
    pub fn scheduler(&self) -> Guard<Arc<Scheduler>> {
        self.inner.scheduler.load()
    }

    /// The settings in force.
    pub fn settings(&self) -> Arc<Settings> {
        self.inner.settings.load_full()
    }

    /// The event metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Whether the service is ready: it is, from the moment it has a state (the configuration
    /// is loaded before) until it starts shutting down.
    pub fn is_ready(&self) -> bool {
        !self.is_draining()
    }

    /// Starts the shutdown: readiness goes down, requests in flight go on.
    pub(crate) fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::Release);
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

    /// Calls `f` with the bearer token `scope` requires, if one is configured; borrowed, so
    /// checking a request does not copy the token.
    pub fn with_token<R>(&self, scope: Scope, f: impl FnOnce(Option<&str>) -> R) -> R {
        let t = self.inner.tokens.load();
        let token = match scope {
            Scope::Report => &t.report,
            Scope::Pick => &t.pick,
        };
        f(token.as_ref().map(|t| t.value.as_str()))
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
