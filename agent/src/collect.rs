//! One scrape's outcome turned into the engine status, load and models of a report.
//!
//! Pure: the caller does the I/O and passes the time, so every failure path is unit-tested.

use std::time::Duration;

use inferpick_schema::{EngineKind, EngineStatus, Load, ModelEntry};

use crate::cli::EngineChoice;
use crate::dialect::{self, Dialect};
use crate::engine::ScrapeError;
use crate::expo::Exposition;
use crate::rates::{Rates, merge_models};

/// What a report says about the engine after one scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// Kind, readiness, error, scrape time.
    pub engine: EngineStatus,
    /// Normalized load (empty when the scrape failed).
    pub load: Load,
    /// Served models (the last known ones when the scrape failed).
    pub models: Vec<ModelEntry>,
    /// `ok`, or the kind of failure ([`ScrapeError::kind`]).
    pub outcome: &'static str,
}

/// Scrapes in a row that may time out before a ready engine is reported not ready. A busy engine
/// answers `/metrics` late exactly when routing needs it most (a Python API server shares its
/// event loop with the requests); taking one late answer for an outage would send every request
/// away from it, and a fleet on an overloaded host to 503. A hung engine still goes not ready
/// after this many intervals; an unreachable or failing one at once.
pub const SLOW_SCRAPES_TOLERATED: u32 = 2;

/// Scrape-to-scrape state: the chosen dialect, counter history, last known models and load.
pub struct Collector {
    choice: EngineChoice,
    dialect: Option<&'static dyn Dialect>,
    rates: Rates,
    listed: Option<Vec<ModelEntry>>,
    models: Vec<ModelEntry>,
    url: String,
    /// The load of the last good scrape, while every scrape since has timed out.
    last_load: Option<Load>,
    /// Timed-out scrapes since `last_load`.
    slow: u32,
    /// `--tensor-parallel-size`: no engine's metrics say it, so only the operator does.
    tensor_parallel_size: Option<u32>,
}

impl Collector {
    /// A collector for the engine at `url`.
    pub fn new(choice: EngineChoice, url: &str) -> Self {
        let dialect = match choice {
            EngineChoice::Fixed(kind) => dialect::for_kind(kind),
            EngineChoice::Auto => None,
        };
        Collector {
            choice,
            dialect,
            rates: Rates::default(),
            listed: None,
            models: Vec::new(),
            url: url.to_string(),
            last_load: None,
            slow: 0,
            tensor_parallel_size: None,
        }
    }

    /// Reports `tp` as the engine's tensor parallel size in every observation.
    pub fn with_tensor_parallel_size(mut self, tp: Option<u32>) -> Self {
        self.tensor_parallel_size = tp;
        self
    }

    /// The engine kind known so far.
    pub fn kind(&self) -> EngineKind {
        self.dialect.map_or(EngineKind::Unknown, |d| d.kind())
    }

    /// Records what `/v1/models` listed (`None`: it listed nothing or did not answer).
    pub fn set_listed_models(&mut self, listed: Option<Vec<ModelEntry>>) {
        if listed.is_some() {
            self.listed = listed;
        }
    }

    /// Turns one scrape (the body, or why there is none) taken at `at` into an observation.
    pub fn observe(
        &mut self,
        scrape: Result<String, ScrapeError>,
        at: Duration,
        took: Duration,
    ) -> Observation {
        let scrape_ms = Some(took.as_secs_f64() * 1e3);
        match scrape.and_then(|text| self.read(&text, at)) {
            Ok((load, models)) => {
                self.models = models.clone();
                self.last_load = Some(load.clone());
                self.slow = 0;
                Observation {
                    engine: EngineStatus {
                        kind: self.kind(),
                        ready: true,
                        error: None,
                        scrape_ms,
                        tensor_parallel_size: self.tensor_parallel_size,
                    },
                    load,
                    models,
                    outcome: "ok",
                }
            }
            Err(e @ ScrapeError::Timeout { .. })
                if self.last_load.is_some() && self.slow < SLOW_SCRAPES_TOLERATED =>
            {
                self.slow += 1;
                Observation {
                    outcome: e.kind(),
                    engine: EngineStatus {
                        kind: self.kind(),
                        ready: true,
                        error: Some(truncate(format!(
                            "{e}; its last load is reported again ({} of {SLOW_SCRAPES_TOLERATED} \
                             slow scrapes tolerated)",
                            self.slow
                        ))),
                        scrape_ms,
                        tensor_parallel_size: self.tensor_parallel_size,
                    },
                    load: self.last_load.clone().unwrap_or_default(),
                    models: self.models.clone(),
                }
            }
            Err(e) => {
                self.last_load = None;
                Observation {
                    outcome: e.kind(),
                    engine: EngineStatus {
                        kind: self.kind(),
                        ready: false,
                        error: Some(truncate(e.to_string())),
                        scrape_ms,
                        tensor_parallel_size: self.tensor_parallel_size,
                    },
                    load: Load::default(),
                    models: self.models.clone(),
                }
            }
        }
    }

    /// What the agent reports when it stops: not ready for `reason`, the last known models,
    /// no load.
    pub fn stopping(&self, reason: &str) -> Observation {
        Observation {
            engine: EngineStatus {
                kind: self.kind(),
                ready: false,
                error: Some(reason.to_string()),
                scrape_ms: None,
                tensor_parallel_size: self.tensor_parallel_size,
            },
            load: Load::default(),
            models: self.models.clone(),
            outcome: "stopping",
        }
    }

    fn read(&mut self, text: &str, at: Duration) -> Result<(Load, Vec<ModelEntry>), ScrapeError> {
        let expo = Exposition::parse(text).map_err(|e| ScrapeError::Parse {
            url: self.url.clone(),
            cause: e.to_string(),
        })?;
        let dialect = match (self.choice, self.dialect) {
            (EngineChoice::Fixed(kind), Some(d)) => {
                if !d.recognizes(&expo) {
                    return Err(ScrapeError::WrongEngine {
                        url: self.url.clone(),
                        kind,
                    });
                }
                d
            }
            (_, Some(d)) if d.recognizes(&expo) => d,
            _ => {
                let found = dialect::detect(&expo).ok_or_else(|| ScrapeError::Unrecognized {
                    url: self.url.clone(),
                })?;
                if let Some(old) = self.dialect {
                    tracing::warn!(from = %old.kind(), to = %found.kind(), "engine changed; re-detected");
                }
                self.rates.reset();
                self.dialect = Some(found);
                found
            }
        };
        let reading = dialect.read(&expo);
        let load = self.rates.normalize(&reading, at);
        Ok((load, merge_models(self.listed.as_deref(), &reading)))
    }
}

/// Keeps an error message within the report's string limit, on a character boundary.
fn truncate(mut s: String) -> String {
    let max = inferpick_schema::Limits::MAX_STRING_BYTES;
    if s.len() > max {
        let mut cut = max - 3;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const VLLM: &str =
        "vllm:num_requests_waiting{model_name=\"m\"} 2\nvllm:kv_cache_usage_perc 0.5\n";

    fn ok(c: &mut Collector, text: &str) -> Observation {
        c.observe(
            Ok(text.to_string()),
            Duration::from_secs(1),
            Duration::from_millis(3),
        )
    }

    #[test]
    fn auto_detects_then_reports_ready() {
        let mut c = Collector::new(EngineChoice::Auto, "http://e/metrics");
        let o = ok(&mut c, VLLM);
        assert!(o.engine.ready);
        assert_eq!(o.engine.kind, EngineKind::Vllm);
        assert_eq!(o.load.requests_waiting, Some(2));
        assert_eq!(o.models[0].name, "m");
        assert_eq!(o.engine.scrape_ms, Some(3.0));
    }

    #[test]
    fn the_tensor_parallel_size_given_is_in_every_observation() {
        let mut c = Collector::new(EngineChoice::Auto, "http://e/metrics");
        assert_eq!(ok(&mut c, VLLM).engine.tensor_parallel_size, None);
        let mut c = Collector::new(EngineChoice::Auto, "http://e/metrics")
            .with_tensor_parallel_size(Some(2));
        assert_eq!(ok(&mut c, VLLM).engine.tensor_parallel_size, Some(2));
        let failed = c.observe(
            Err(ScrapeError::Unrecognized {
                url: "http://e/metrics".into(),
            }),
            Duration::from_secs(2),
            Duration::from_millis(1),
        );
        assert!(!failed.engine.ready);
        assert_eq!(failed.engine.tensor_parallel_size, Some(2));
        assert_eq!(c.stopping("bye").engine.tensor_parallel_size, Some(2));
    }

    fn timeout(c: &mut Collector) -> Observation {
        c.observe(
            Err(ScrapeError::Timeout {
                url: "http://e/metrics".into(),
                timeout: Duration::from_millis(80),
            }),
            Duration::from_secs(2),
            Duration::from_millis(80),
        )
    }

    #[test]
    fn a_few_slow_scrapes_repeat_the_last_load_then_a_hung_engine_is_not_ready() {
        let mut c = Collector::new(EngineChoice::Auto, "http://e/metrics");
        let good = ok(&mut c, VLLM);
        for k in 1..=SLOW_SCRAPES_TOLERATED {
            let slow = timeout(&mut c);
            assert!(slow.engine.ready, "slow scrape {k}");
            assert_eq!(slow.load, good.load);
            assert_eq!(slow.outcome, "timeout");
            let e = slow.engine.error.unwrap();
            assert!(e.contains("did not answer within 80ms"), "{e}");
            assert!(
                e.contains(&format!("{k} of {SLOW_SCRAPES_TOLERATED}")),
                "{e}"
            );
        }
        let down = timeout(&mut c);
        assert!(!down.engine.ready);
        assert_eq!(down.engine.kind, EngineKind::Vllm);
        assert_eq!(down.load, Load::default());
        assert_eq!(down.models[0].name, "m", "last known models stay");
        // Once it answers again, the count starts over.
        ok(&mut c, VLLM);
        assert!(timeout(&mut c).engine.ready);
    }

    #[test]
    fn an_unreachable_engine_is_not_ready_at_once_and_a_later_timeout_is_not_excused() {
        let mut c = Collector::new(EngineChoice::Auto, "http://e/metrics");
        ok(&mut c, VLLM);
        let refused = c.observe(
            Err(ScrapeError::Unreachable {
                url: "http://e/metrics".into(),
                cause: "connection refused".into(),
            }),
            Duration::from_secs(2),
            Duration::from_millis(1),
        );
        assert!(!refused.engine.ready);
        assert!(refused.engine.error.unwrap().contains("connection refused"));
        assert!(!timeout(&mut c).engine.ready);
    }

    #[test]
    fn garbage_is_a_parse_error_naming_the_line() {
        let mut c = Collector::new(EngineChoice::Auto, "http://e/metrics");
        let o = ok(&mut c, "<html><body>502 Bad Gateway</body></html>");
        assert!(!o.engine.ready);
        let e = o.engine.error.unwrap();
        assert!(e.contains("not a Prometheus exposition: line 1"), "{e}");
    }

    #[test]
    fn unknown_metrics_and_wrong_engine_are_explained() {
        let mut c = Collector::new(EngineChoice::Auto, "http://e/metrics");
        let o = ok(&mut c, "go_goroutines 12\n");
        assert!(
            o.engine
                .error
                .unwrap()
                .contains("no known engine's metrics")
        );
        assert_eq!(o.engine.kind, EngineKind::Unknown);

        let mut c = Collector::new(EngineChoice::Fixed(EngineKind::Sglang), "http://e/metrics");
        let o = ok(&mut c, VLLM);
        assert!(o.engine.error.unwrap().contains("no sglang metrics"));
        assert_eq!(o.engine.kind, EngineKind::Sglang);
    }

    #[test]
    fn listed_models_win_over_labels() {
        let mut c = Collector::new(EngineChoice::Auto, "http://e/metrics");
        c.set_listed_models(Some(vec![ModelEntry {
            name: "served-name".into(),
            adapter_of: None,
        }]));
        c.set_listed_models(None);
        let o = ok(&mut c, VLLM);
        assert_eq!(o.models.len(), 1);
        assert_eq!(o.models[0].name, "served-name");
    }

    #[test]
    fn long_errors_fit_the_schema() {
        let s = truncate("é".repeat(600));
        assert!(s.len() <= inferpick_schema::Limits::MAX_STRING_BYTES);
        assert!(s.ends_with("..."));
    }
}
