//! A real Prometheus server for tests: started on a loopback port with a config the test writes,
//! waited for by polling `/-/ready`, queried through its HTTP API, stopped on drop.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::{ChildGuard, free_port, wait_until_async};

/// How long Prometheus may take to open its TSDB and become ready.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts at binding a probed port that another process took in between.
const PORT_ATTEMPTS: u32 = 3;

/// One `scrape_configs` entry with static targets.
#[derive(Debug, Clone)]
pub struct ScrapeJob {
    /// `job_name`.
    pub name: String,
    /// `host:port` targets.
    pub targets: Vec<String>,
    /// `metrics_path` (usually `/metrics`).
    pub metrics_path: String,
}

impl ScrapeJob {
    /// A job scraping `/metrics` of `targets`.
    pub fn new(name: &str, targets: impl IntoIterator<Item = String>) -> Self {
        Self {
            name: name.to_owned(),
            targets: targets.into_iter().collect(),
            metrics_path: "/metrics".into(),
        }
    }
}

/// A `prometheus.yml` with the given interval (scrape and rule evaluation), jobs and rule files.
pub fn config_yaml(interval: Duration, jobs: &[ScrapeJob], rule_files: &[PathBuf]) -> String {
    let interval = format!("{}ms", interval.as_millis());
    let mut yaml = format!(
        "global:\n  scrape_interval: {interval}\n  scrape_timeout: {interval}\n  evaluation_interval: {interval}\n"
    );
    if !rule_files.is_empty() {
        yaml.push_str("rule_files:\n");
        for file in rule_files {
            yaml.push_str(&format!(
                "  - {}\n",
                json_string(&file.display().to_string())
            ));
        }
    }
    yaml.push_str("scrape_configs:\n");
    for job in jobs {
        let targets: Vec<String> = job.targets.iter().map(|t| json_string(t)).collect();
        yaml.push_str(&format!(
            "  - job_name: {}\n    metrics_path: {}\n    static_configs:\n      - targets: [{}]\n",
            json_string(&job.name),
            json_string(&job.metrics_path),
            targets.join(", ")
        ));
    }
    yaml
}

/// JSON string quoting, which is also valid YAML flow scalar quoting.
fn json_string(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

/// One sample of an instant query's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series' labels (`__name__` included when the result kept it).
    pub labels: BTreeMap<String, String>,
    /// The value (the last one, for a range vector).
    pub value: f64,
}

/// A scrape target as Prometheus sees it.
#[derive(Debug, Clone)]
pub struct Target {
    /// `job` label.
    pub job: String,
    /// The URL it scrapes.
    pub scrape_url: String,
    /// `up`, `down` or `unknown`.
    pub health: String,
    /// The last scrape's error, empty when it succeeded.
    pub last_error: String,
}

/// A loaded rule and its evaluation state.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Alert name or recorded series name.
    pub name: String,
    /// `alerting` or `recording`.
    pub kind: String,
    /// The PromQL expression.
    pub query: String,
    /// `ok`, `err` or `unknown`.
    pub health: String,
    /// The last evaluation's error.
    pub last_error: String,
}

/// An alert that is pending or firing.
#[derive(Debug, Clone)]
pub struct ActiveAlert {
    /// `alertname`.
    pub name: String,
    /// `pending` or `firing`.
    pub state: String,
    /// Every label, `alertname` included.
    pub labels: BTreeMap<String, String>,
}

/// A running Prometheus.
#[derive(Debug)]
pub struct Prometheus {
    child: ChildGuard,
    url: String,
    http: reqwest::Client,
}

impl Prometheus {
    /// Starts `binary` with `config` (a `prometheus.yml` text), its data and log under `dir`, on a
    /// free loopback port, and waits until it is ready.
    pub async fn start(binary: &Path, dir: &Path, config: &str) -> anyhow::Result<Self> {
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let mut last_error = None;
        for attempt in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            let mut command = Command::new(binary);
            command
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join(format!("data-{attempt}")).display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--web.enable-lifecycle")
                .arg("--log.level=info");
            let mut child = ChildGuard::spawn(&format!("prometheus-{attempt}"), command, dir)?;
            let url = format!("http://127.0.0.1:{port}");
            // The probe ends the wait with Ok(Err(log)) when Prometheus exited: no point polling on.
            let ready = wait_until_async(START_TIMEOUT, "Prometheus /-/ready", || {
                let exited = child.check_running().err();
                let probe = http.get(format!("{url}/-/ready")).send();
                async move {
                    if let Some(exited) = exited {
                        return Ok(Err(exited));
                    }
                    match probe.await {
                        Ok(r) if r.status().is_success() => Ok(Ok(())),
                        Ok(r) => Err(format!("status {}", r.status())),
                        Err(e) => Err(e.to_string()),
                    }
                }
            })
            .await;
            match ready {
                Ok(Ok(())) => return Ok(Self { child, url, http }),
                Ok(Err(exited)) if exited.contains("address already in use") => {
                    last_error = Some(exited);
                }
                Ok(Err(exited)) => bail!("Prometheus did not start: {exited}"),
                Err(timeout) => bail!("{timeout}\n--- prometheus log ---\n{}", child.log()),
            }
        }
        bail!(
            "Prometheus could not bind a free port: {}",
            last_error.unwrap_or_default()
        )
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Everything Prometheus logged so far.
    pub fn log(&self) -> String {
        self.child.log()
    }

    /// Evaluates `expr` now; a scalar comes back as one sample without labels. A PromQL error is an
    /// error carrying Prometheus' message.
    pub async fn query(&self, expr: &str) -> anyhow::Result<Vec<Sample>> {
        let data = self
            .api("/api/v1/query", &[("query", expr)])
            .await
            .with_context(|| format!("query {expr}"))?;
        parse_result(&data).with_context(|| format!("result of {expr}"))
    }

    /// The active scrape targets.
    pub async fn targets(&self) -> anyhow::Result<Vec<Target>> {
        let data = self.api("/api/v1/targets", &[("state", "active")]).await?;
        let targets = data["activeTargets"]
            .as_array()
            .context("no activeTargets")?;
        Ok(targets
            .iter()
            .map(|t| Target {
                job: str_at(&t["labels"]["job"]),
                scrape_url: str_at(&t["scrapeUrl"]),
                health: str_at(&t["health"]),
                last_error: str_at(&t["lastError"]),
            })
            .collect())
    }

    /// Every loaded rule with its health.
    pub async fn rules(&self) -> anyhow::Result<Vec<Rule>> {
        let data = self.api("/api/v1/rules", &[]).await?;
        let mut rules = Vec::new();
        for group in data["groups"].as_array().context("no groups")? {
            for rule in group["rules"].as_array().context("group without rules")? {
                rules.push(Rule {
                    name: str_at(&rule["name"]),
                    kind: str_at(&rule["type"]),
                    query: str_at(&rule["query"]),
                    health: str_at(&rule["health"]),
                    last_error: str_at(&rule["lastError"]),
                });
            }
        }
        Ok(rules)
    }

    /// The alerts that are pending or firing now.
    pub async fn alerts(&self) -> anyhow::Result<Vec<ActiveAlert>> {
        let data = self.api("/api/v1/alerts", &[]).await?;
        let alerts = data["alerts"].as_array().context("no alerts")?;
        Ok(alerts
            .iter()
            .map(|a| ActiveAlert {
                name: str_at(&a["labels"]["alertname"]),
                state: str_at(&a["state"]),
                labels: parse_labels(&a["labels"]),
            })
            .collect())
    }

    /// Waits until every target has been scraped successfully at least once.
    pub async fn wait_for_targets_up(&self, timeout: Duration) -> anyhow::Result<Vec<Target>> {
        let targets = wait_until_async(timeout, "every scrape target up", || async {
            let targets = self.targets().await.map_err(|e| e.to_string())?;
            let down: Vec<String> = targets
                .iter()
                .filter(|t| t.health != "up")
                .map(|t| format!("{} {} {} {}", t.job, t.scrape_url, t.health, t.last_error))
                .collect();
            if targets.is_empty() {
                Err("no targets yet".to_owned())
            } else if down.is_empty() {
                Ok(targets)
            } else {
                Err(down.join("; "))
            }
        })
        .await?;
        Ok(targets)
    }

    async fn api(&self, path: &str, params: &[(&str, &str)]) -> anyhow::Result<Value> {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .query(params)
            .send()
            .await?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .with_context(|| format!("{path}: status {status}"))?;
        if body["status"] != "success" {
            bail!(
                "{path}: {} {}",
                str_at(&body["errorType"]),
                str_at(&body["error"])
            );
        }
        Ok(body["data"].clone())
    }
}

fn str_at(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

fn parse_value(pair: &Value) -> anyhow::Result<f64> {
    let text = pair[1].as_str().context("sample value is not a string")?;
    match text {
        "NaN" => Ok(f64::NAN),
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        _ => text
            .parse()
            .with_context(|| format!("sample value {text:?}")),
    }
}

fn parse_labels(metric: &Value) -> BTreeMap<String, String> {
    metric
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), str_at(v))).collect())
        .unwrap_or_default()
}

fn parse_result(data: &Value) -> anyhow::Result<Vec<Sample>> {
    let result = &data["result"];
    match data["resultType"].as_str() {
        Some("vector") => result
            .as_array()
            .context("vector without samples")?
            .iter()
            .map(|s| {
                Ok(Sample {
                    labels: parse_labels(&s["metric"]),
                    value: parse_value(&s["value"])?,
                })
            })
            .collect(),
        Some("matrix") => result
            .as_array()
            .context("matrix without series")?
            .iter()
            .map(|s| {
                let last = s["values"]
                    .as_array()
                    .and_then(|v| v.last())
                    .context("empty series")?;
                Ok(Sample {
                    labels: parse_labels(&s["metric"]),
                    value: parse_value(last)?,
                })
            })
            .collect(),
        Some("scalar") => Ok(vec![Sample {
            labels: BTreeMap::new(),
            value: parse_value(result)?,
        }]),
        other => bail!("unexpected resultType {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn config_quotes_targets_and_lists_rule_files() {
        let yaml = config_yaml(
            Duration::from_millis(500),
            &[ScrapeJob::new(
                "agents",
                ["127.0.0.1:9400".to_owned(), "127.0.0.1:9401".to_owned()],
            )],
            &[PathBuf::from("/tmp/rules.yaml")],
        );
        assert!(yaml.contains("scrape_interval: 500ms"), "{yaml}");
        assert!(yaml.contains("- \"/tmp/rules.yaml\""), "{yaml}");
        assert!(
            yaml.contains("targets: [\"127.0.0.1:9400\", \"127.0.0.1:9401\"]"),
            "{yaml}"
        );
    }

    #[test]
    fn parses_vector_scalar_and_special_values() {
        let vector = json!({"resultType": "vector", "result": [
            {"metric": {"__name__": "up", "job": "a"}, "value": [1.0, "1"]},
            {"metric": {}, "value": [1.0, "NaN"]}]});
        let samples = parse_result(&vector).unwrap();
        assert_eq!(samples[0].labels["job"], "a");
        assert_eq!(samples[0].value, 1.0);
        assert!(samples[1].value.is_nan());
        let scalar = json!({"resultType": "scalar", "result": [1.0, "+Inf"]});
        assert_eq!(parse_result(&scalar).unwrap()[0].value, f64::INFINITY);
        let bad = json!({"resultType": "string", "result": [1.0, "x"]});
        assert!(
            parse_result(&bad)
                .unwrap_err()
                .to_string()
                .contains("string")
        );
    }
}
