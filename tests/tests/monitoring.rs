//! dashboards/: the alert rules pass `promtool check rules` and `promtool test rules` (every alert
//! has a unit test that fires it); the dashboards are well-formed Grafana models that read only
//! metrics of the contract; and every query of every panel, variable and alert returns data from
//! a real Prometheus scraping a running fleet (emulated engines, agents, pickers, load).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use inferpick_lab::engine::EngineConfig;
use inferpick_schema::{EngineKind, Gpu, GpuHealth, PickRequest, ThrottleReason, testing};
use inferpick_tests::contract;
use inferpick_tests::fleet::{Fleet, FleetSpec, PickOutcome, PodSpec};
use inferpick_tests::grafana::{self, Dashboard};
use inferpick_tests::prometheus::{self, Prometheus, ScrapeJob};
use inferpick_tests::tool::{PROMETHEUS, PROMTOOL};
use inferpick_tests::{ScratchDir, promql, repo_root, wait_until_async};
use serde_json::Value;

fn dashboards_dir() -> PathBuf {
    repo_root().join("dashboards")
}

fn dashboards() -> Vec<Dashboard> {
    ["inferpick-fleet.json", "inferpick-picker.json"]
        .iter()
        .map(|name| {
            Dashboard::load(&dashboards_dir().join(name)).unwrap_or_else(|e| panic!("{e:#}"))
        })
        .collect()
}

fn alert_rules() -> Vec<grafana::RuleDef> {
    grafana::load_rules(&dashboards_dir().join("alerts.yaml")).unwrap_or_else(|e| panic!("{e:#}"))
}

fn promtool(args: &[&str]) -> Option<String> {
    let promtool = PROMTOOL.or_skip("promtool")?;
    let output = Command::new(&promtool)
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "promtool {}:\n{text}",
        args.join(" ")
    );
    Some(text)
}

#[test]
fn alert_rules_pass_promtool_check_rules() {
    if let Some(out) = promtool(&["check", "rules", "dashboards/alerts.yaml"]) {
        assert!(
            out.contains(&format!("SUCCESS: {} rules found", alert_rules().len())),
            "{out}"
        );
    }
}

#[test]
fn alert_rules_pass_their_promtool_unit_tests() {
    if let Some(out) = promtool(&["test", "rules", "dashboards/alerts.test.yaml"]) {
        assert!(out.contains("SUCCESS"), "{out}");
    }
}

/// Every alert has a unit test case in which it fires (and one at which it is still silent).
#[test]
fn every_alert_has_a_unit_test_that_fires_it() {
    let text = std::fs::read_to_string(dashboards_dir().join("alerts.test.yaml")).unwrap();
    let tests: Value = serde_norway::from_str(&text).unwrap();
    assert_eq!(tests["rule_files"], serde_json::json!(["alerts.yaml"]));
    let mut fired = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for case in tests["tests"].as_array().unwrap() {
        for check in case["alert_rule_test"].as_array().unwrap_or(&Vec::new()) {
            let name = check["alertname"].as_str().unwrap().to_owned();
            let alerts = check["exp_alerts"].as_array().map_or(0, Vec::len);
            if alerts > 0 {
                fired.insert(name)
            } else {
                silent.insert(name)
            };
        }
    }
    let alerts: BTreeSet<String> = alert_rules()
        .into_iter()
        .filter(|r| r.alerting)
        .map(|r| r.name)
        .collect();
    assert_eq!(
        fired, alerts,
        "alerts without a test that fires them, or tests of unknown alerts"
    );
    assert_eq!(
        silent, alerts,
        "each alert also needs a case where it does not fire"
    );
}

/// The six alerts of issue 6, each with a severity and a summary and description.
#[test]
fn alert_rules_cover_the_issue_and_are_documented() {
    let rules = alert_rules();
    let names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
    for required in [
        "InferpickNoFreshEndpoint",
        "InferpickPoolSaturated",
        "InferpickShedding",
        "InferpickStaleReports",
        "InferpickAgentScrapeErrors",
        "InferpickGpuMemoryNearFull",
    ] {
        assert!(names.contains(&required), "missing {required}");
    }
    for rule in &rules {
        assert!(
            matches!(
                rule.labels["severity"].as_str(),
                Some("critical" | "warning")
            ),
            "{}: severity",
            rule.name
        );
        for key in ["summary", "description"] {
            assert!(
                rule.annotations[key]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "{}: {key}",
                rule.name
            );
        }
        assert!(
            promql::split_comparison(&rule.expr).is_some(),
            "{}: compares nothing",
            rule.name
        );
    }
}

/// Metric names a query may read: contract families (histograms through their series) and the
/// series Prometheus records per target.
fn assert_contract_metrics(what: &str, expr: &str) -> BTreeSet<&'static str> {
    let names = promql::metric_names(expr).unwrap_or_else(|e| panic!("{what}: {e}: {expr}"));
    assert!(!names.is_empty(), "{what} reads no metric: {expr}");
    let mut families = BTreeSet::new();
    for name in &names {
        match contract::family_of(name) {
            Some(family) => {
                families.insert(family.name);
            }
            None => assert!(
                contract::SCRAPE_SERIES.contains(&name.as_str()),
                "{what} reads {name}, which is not a metric of CONTRACTS.md: {expr}"
            ),
        }
    }
    families
}

#[test]
fn dashboards_and_alerts_read_only_contract_metrics() {
    let mut used: BTreeSet<&str> = BTreeSet::new();
    for dashboard in dashboards() {
        for query in &dashboard.queries {
            let what = format!("{} / {} / {}", dashboard.title, query.panel, query.ref_id);
            used.extend(assert_contract_metrics(&what, &query.expr));
        }
        for variable in dashboard.variables.iter().filter(|v| v.kind == "query") {
            let (query, _) = grafana::label_values_query(&variable.query).unwrap();
            assert_contract_metrics(
                &format!("{} variable {}", dashboard.title, variable.name),
                &query,
            );
        }
    }
    for rule in alert_rules() {
        assert_contract_metrics(&format!("alert {}", rule.name), &rule.expr);
    }
    // Every exported family is shown somewhere, so nothing a user needs is missing.
    for metric in contract::METRICS {
        let shown = used.contains(metric.name);
        let deliberately_hidden = matches!(
            metric.name,
            // Capacity and adapters are in the agents' /v1/report and the picker's table; their
            // panels would be empty for engines that do not say.
            "inferpick_endpoint_kv_cache_capacity_tokens" | "inferpick_endpoint_adapters_running"
        );
        assert!(
            shown || deliberately_hidden,
            "no panel shows {}",
            metric.name
        );
    }
}

#[test]
fn dashboards_are_templated_grafana_models() {
    let mut uids = BTreeSet::new();
    for dashboard in dashboards() {
        let title = &dashboard.title;
        assert!(
            uids.insert(dashboard.uid.clone()),
            "duplicate uid {}",
            dashboard.uid
        );
        let variables: Vec<(&str, &str)> = dashboard
            .variables
            .iter()
            .map(|v| (v.name.as_str(), v.kind.as_str()))
            .collect();
        assert_eq!(
            variables,
            [
                ("datasource", "datasource"),
                ("model", "query"),
                ("endpoint", "query")
            ],
            "{title}"
        );
        assert_eq!(
            dashboard.variables[0].query, "prometheus",
            "{title}: a Prometheus data source"
        );
        for variable in &dashboard.variables[1..] {
            assert_eq!(
                variable.raw["datasource"]["uid"], "${datasource}",
                "{title}: {}",
                variable.name
            );
            assert_eq!(
                variable.raw["includeAll"], true,
                "{title}: {}",
                variable.name
            );
            assert_eq!(variable.raw["allValue"], ".*", "{title}: {}", variable.name);
            assert_eq!(variable.raw["multi"], true, "{title}: {}", variable.name);
        }
        assert!(
            dashboard.variables[2].query.contains("$model"),
            "{title}: the endpoint list follows the chosen model"
        );

        let mut ids = BTreeSet::new();
        let mut cells = BTreeSet::new();
        for panel in &dashboard.panels {
            let name = panel["title"].as_str().unwrap();
            assert!(
                ids.insert(panel["id"].as_u64().unwrap()),
                "{title}: duplicate id at {name}"
            );
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{title} / {name}"
            );
            assert!(
                panel["description"].as_str().is_some_and(|d| d.len() > 20),
                "{title} / {name}: a description tells what the panel shows"
            );
            let grid = &panel["gridPos"];
            let (x, y, w, h) = ["x", "y", "w", "h"]
                .map(|k| grid[k].as_u64().unwrap())
                .into();
            assert!(x + w <= 24, "{title} / {name}: wider than the dashboard");
            for cx in x..x + w {
                for cy in y..y + h {
                    assert!(
                        cells.insert((cx, cy)),
                        "{title} / {name} overlaps another panel"
                    );
                }
            }
        }
        for query in &dashboard.queries {
            assert_eq!(
                query.datasource, "${datasource}",
                "{title} / {}",
                query.panel
            );
        }
    }
}

/// The panels issue 6 asks for, found by the metric families their queries read.
#[test]
fn dashboards_have_the_panels_the_issue_lists() {
    let reads = |dashboard: &Dashboard, metric: &str| {
        dashboard.queries.iter().any(|q| q.expr.contains(metric))
    };
    let all = dashboards();
    let (fleet, picker) = (&all[0], &all[1]);
    for metric in [
        "inferpick_endpoint_requests_waiting",
        "inferpick_endpoint_requests_running",
        "inferpick_endpoint_kv_cache_utilization",
        "inferpick_endpoint_prefix_cache_hit_ratio",
        "inferpick_endpoint_prompt_tokens_per_second",
        "inferpick_endpoint_generation_tokens_per_second",
        "inferpick_gpu_memory_used_bytes",
        "inferpick_gpu_memory_total_bytes",
        "inferpick_gpu_utilization_ratio",
        "inferpick_gpu_temperature_celsius",
        "inferpick_gpu_power_watts",
        "inferpick_picker_report_age_seconds",
        "inferpick_endpoint_ready",
    ] {
        assert!(reads(fleet, metric), "the fleet dashboard shows {metric}");
    }
    for metric in [
        "inferpick_picker_decisions_total",
        "inferpick_picker_decision_duration_seconds_bucket",
        "inferpick_picker_routed_total",
        "inferpick_picker_inflight_estimate",
        "inferpick_picker_reports_total",
        "inferpick_picker_endpoints",
        "inferpick_picker_pool_saturation",
    ] {
        assert!(reads(picker, metric), "the picker dashboard shows {metric}");
    }
    let by =
        |d: &Dashboard, needle: &str| d.queries.iter().filter(|q| q.expr.contains(needle)).count();
    assert!(
        by(picker, "by (outcome)") >= 1 && by(picker, "by (policy)") >= 1,
        "decisions by outcome and policy"
    );
    assert!(
        by(picker, "histogram_quantile(0.5,") >= 1 && by(picker, "histogram_quantile(0.99,") >= 1
    );
    assert!(by(picker, r#"outcome="shed""#) >= 1, "shed rate by model");
    assert!(by(fleet, "by (model)") >= 4, "per-model panels");
}

/// The rate window substituted for `$__rate_interval` (Prometheus scrapes every second here).
const RATE_INTERVAL: &str = "10s";
/// Labels that Kubernetes service discovery adds to every target; absent on loopback.
const DISCOVERY_LABELS: &[&str] = &["namespace", "pod"];

/// One query the live check must see data for.
#[derive(Debug)]
struct Check {
    what: String,
    promql: String,
    /// Labels every returned sample must carry (what alert annotations print).
    labels: Vec<String>,
    /// A label some sample must carry with a non-empty value (a variable's values).
    values_of: Option<String>,
}

/// Every query of every dashboard panel and variable and every alert, as Prometheus gets them.
fn live_checks() -> Vec<Check> {
    let mut checks = Vec::new();
    for dashboard in dashboards() {
        for query in &dashboard.queries {
            checks.push(Check {
                what: format!("{} / {} / {}", dashboard.title, query.panel, query.ref_id),
                promql: grafana::expand(&query.expr, &[], RATE_INTERVAL),
                labels: Vec::new(),
                values_of: None,
            });
        }
        for variable in dashboard.variables.iter().filter(|v| v.kind == "query") {
            let (query, label) = grafana::label_values_query(&variable.query).unwrap();
            checks.push(Check {
                what: format!("{} / variable {}", dashboard.title, variable.name),
                promql: grafana::expand(&query, &[], RATE_INTERVAL),
                labels: Vec::new(),
                values_of: Some(label),
            });
        }
    }
    for rule in alert_rules() {
        // The alert fires only on bad data; what must return data is the measured operand.
        let (operand, _, _) = promql::split_comparison(&rule.expr).unwrap();
        let mut labels: Vec<String> = Vec::new();
        for template in rule.annotations.as_object().unwrap().values() {
            labels.extend(grafana::template_labels(template.as_str().unwrap()));
        }
        labels.retain(|l| !DISCOVERY_LABELS.contains(&l.as_str()));
        labels.sort();
        labels.dedup();
        checks.push(Check {
            what: format!("alert {}", rule.name),
            promql: operand.to_owned(),
            labels,
            values_of: None,
        });
    }
    checks
}

/// Why a check has no usable data yet, or None when it has.
async fn missing(prometheus: &Prometheus, check: &Check) -> Option<String> {
    let samples = match prometheus.query(&check.promql).await {
        Ok(samples) => samples,
        Err(e) => return Some(format!("{}: {e:#}", check.what)),
    };
    let usable: Vec<_> = samples.iter().filter(|s| s.value.is_finite()).collect();
    if usable.is_empty() {
        return Some(format!(
            "{}: no data ({} samples, none finite): {}",
            check.what,
            samples.len(),
            check.promql
        ));
    }
    for label in &check.labels {
        if usable
            .iter()
            .any(|s| s.labels.get(label).is_none_or(String::is_empty))
        {
            return Some(format!(
                "{}: a sample without label {label}: {}",
                check.what, check.promql
            ));
        }
    }
    if let Some(label) = &check.values_of
        && !usable
            .iter()
            .any(|s| s.labels.get(label).is_some_and(|v| !v.is_empty()))
    {
        return Some(format!(
            "{}: no value of {label}: {}",
            check.what, check.promql
        ));
    }
    None
}

/// `testing::gpu(index)` with every health reading, so that each GPU health panel has data: GPU 2
/// is slightly throttled by heat, has raised an application XID and has pages pending a reset
/// (none of which stops routing to it); the others are healthy.
fn gpu_with_health(index: u32) -> Gpu {
    let sick = index == 2;
    Gpu {
        health: Some(GpuHealth {
            throttle: if sick {
                vec![ThrottleReason::HwThermal]
            } else {
                Vec::new()
            },
            sm_clock_mhz: Some(if sick { 1780 } else { 1980 }),
            sm_clock_max_mhz: Some(1980),
            xid_errors: if sick { vec![13] } else { Vec::new() },
            ecc_uncorrectable_errors: Some(0),
            retired_pages_pending: Some(sick),
            remapped_rows_pending: Some(false),
            remapped_rows_failed: Some(false),
            pcie_link_generation: Some(5),
            pcie_link_generation_max: Some(5),
            pcie_link_width: Some(16),
            pcie_link_width_max: Some(16),
            ..GpuHealth::default()
        }),
        ..testing::gpu(index)
    }
}

/// Requests with a shared 256-character system prompt (prefix-cache hits) and a unique tail.
fn request(model: &str, priority: i32, n: u64) -> PickRequest {
    let system = "You are a helpful assistant for the inferpick fleet test. ".repeat(5);
    PickRequest {
        model: Some(model.to_owned()),
        priority: Some(priority),
        prompt: Some(format!(
            "{system}Question number {n}: how long is a piece of string?"
        )),
        max_tokens: Some(48),
        ..PickRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_dashboard_and_alert_query_returns_data_from_a_live_fleet() {
    let test = "every_dashboard_and_alert_query_returns_data_from_a_live_fleet";
    let Some(prometheus_bin) = PROMETHEUS.or_skip(test) else {
        return;
    };
    let pod = |engine, model: &str, gpu| PodSpec {
        engine,
        model: model.to_owned(),
        gpu: Some(gpu_with_health(gpu)),
        agent_args: Vec::new(),
        // The emulators publish KV events and the agents relay them: the prefix-cache panels.
        kv_events: true,
    };
    let fleet = Fleet::start(FleetSpec {
        pods: vec![
            pod(EngineKind::Vllm, "llama", 1),
            pod(EngineKind::Vllm, "llama", 2),
            pod(EngineKind::Sglang, "qwen", 3),
        ],
        pickers: 2,
        // Low thresholds, so that the test's load saturates the pools and sheddable requests are
        // shed: every outcome and the saturation gauge then have data.
        picker_config: "policy: inferpick\n\
                        staleness: {max_report_age: 1s, forget_after: 60s}\n\
                        saturation: {queue_depth_threshold: 2, kv_cache_threshold: 0.5}\n"
            .into(),
        // A small, slow engine: four sequences at a time and a short KV cache, so queues form.
        engine: EngineConfig {
            kv_tokens: 16_384,
            max_num_seqs: 4,
            ..EngineConfig::default()
        },
        interval: Duration::from_millis(100),
        agent_without_engine: true,
        dead_push_target: true,
        ..FleetSpec::default()
    })
    .await
    .unwrap_or_else(|e| panic!("starting the fleet: {e:#}"));

    let scratch = ScratchDir::new("monitoring").unwrap();
    let config = prometheus::config_yaml(
        Duration::from_secs(1),
        &[
            ScrapeJob::new("inferpick-agent", fleet.agent_targets()),
            ScrapeJob::new("inferpick-picker", fleet.picker_targets()),
        ],
        &[dashboards_dir().join("alerts.yaml")],
    );
    let prometheus = Prometheus::start(&prometheus_bin, scratch.path(), &config)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    prometheus
        .wait_for_targets_up(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));

    // Gateway traffic on both replicas: two models, a third of it sheddable, and requests for a
    // model nobody serves.
    let fleet = Arc::new(fleet);
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for worker in 0..16u64 {
        let (fleet, stop) = (fleet.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut n = worker * 1_000_000;
            let mut outcomes = std::collections::BTreeMap::<String, u64>::new();
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let model = match worker % 8 {
                    7 if n % 10 == 0 => "no-such-model",
                    5..=7 => "qwen",
                    _ => "llama",
                };
                let priority = if n % 3 == 0 { -1 } else { 0 };
                let picker = (n % 2) as usize;
                let outcome = match fleet.route(picker, &request(model, priority, n), 48).await {
                    Ok(PickOutcome::Routed(_)) => "routed".to_owned(),
                    Ok(PickOutcome::Refused(status, body)) => format!("{status} {}", body.error),
                    Err(e) => format!("error: {e:#}"),
                };
                *outcomes.entry(outcome).or_default() += 1;
            }
            outcomes
        }));
    }

    let checks = live_checks();
    let result = wait_until_async(
        Duration::from_secs(120),
        "every query to return data",
        || async {
            let mut problems = Vec::new();
            for check in &checks {
                if let Some(problem) = missing(&prometheus, check).await {
                    problems.push(problem);
                }
            }
            if problems.is_empty() {
                Ok(())
            } else {
                Err(problems.join("\n"))
            }
        },
    )
    .await;

    let filtered = if result.is_ok() {
        variables_filter(&prometheus, &fleet).await
    } else {
        Ok(())
    };
    stop.store(true, Ordering::Relaxed);
    let mut outcomes = std::collections::BTreeMap::<String, u64>::new();
    for worker in workers {
        for (outcome, n) in worker.await.unwrap() {
            *outcomes.entry(outcome).or_default() += n;
        }
    }
    eprintln!(
        "traffic outcomes: {outcomes:?}; {} queries checked",
        checks.len()
    );
    if let Err(e) = result {
        panic!("{e}\n--- Prometheus log ---\n{}", prometheus.log());
    }
    if let Err(e) = filtered {
        panic!("{e}");
    }
    assert!(
        outcomes.keys().all(|o| !o.starts_with("error")),
        "gateway calls failed: {outcomes:?}"
    );

    // The alert rules load and evaluate without errors against the same data.
    let rules = wait_until_async(Duration::from_secs(30), "every rule evaluated", || async {
        let rules = prometheus.rules().await.map_err(|e| e.to_string())?;
        if rules.iter().any(|r| r.health == "unknown") {
            Err("not evaluated yet".to_owned())
        } else {
            Ok(rules)
        }
    })
    .await
    .unwrap();
    assert_eq!(rules.len(), alert_rules().len());
    for rule in &rules {
        assert_eq!(rule.health, "ok", "{}: {}", rule.name, rule.last_error);
    }

    // The fleet has an agent whose engine never answers and a push target nobody serves: their
    // alerts become active (pending for their `for:` duration) on the real data.
    let dead_agent = fleet.agents.last().unwrap().metrics.to_string();
    let active = wait_until_async(
        Duration::from_secs(30),
        "the scrape and push alerts to be active",
        || async {
            let alerts = prometheus.alerts().await.map_err(|e| e.to_string())?;
            let is_active = |name: &str, label: &str, value: Option<&str>| {
                alerts.iter().any(|a| {
                    a.name == name
                        && a.labels
                            .get(label)
                            .is_some_and(|v| value.is_none_or(|want| v == want))
                })
            };
            if is_active("InferpickAgentScrapeErrors", "instance", Some(&dead_agent))
                && is_active("InferpickAgentPushErrors", "target", None)
            {
                Ok(alerts)
            } else {
                Err(format!("active: {alerts:?}"))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    for alert in &active {
        assert!(
            ["pending", "firing"].contains(&alert.state.as_str()),
            "{alert:?}"
        );
    }
}

/// Choosing a model or an endpoint in the dashboards' variables narrows every panel to it: with
/// model = qwen (one SGLang pod) no panel shows another model or another endpoint; with one llama
/// endpoint chosen, no panel shows another endpoint.
async fn variables_filter(prometheus: &Prometheus, fleet: &Fleet) -> Result<(), String> {
    let qwen = fleet.engines[2].addr.to_string();
    let llama = fleet.engines[0].addr.to_string();
    let mut problems = Vec::new();
    for dashboard in dashboards() {
        let endpoint_variable = &dashboard.variables[2];
        let (query, label) = grafana::label_values_query(&endpoint_variable.query).unwrap();
        let query = grafana::expand(&query, &[("model", "qwen")], RATE_INTERVAL);
        let values: BTreeSet<String> = prometheus
            .query(&query)
            .await
            .map_err(|e| format!("{e:#}"))?
            .into_iter()
            .filter_map(|s| s.labels.get(&label).cloned())
            .collect();
        if values != BTreeSet::from([qwen.clone()]) {
            problems.push(format!(
                "{}: with model qwen the endpoint list is {values:?}",
                dashboard.title
            ));
        }
        for query in &dashboard.queries {
            let what = format!("{} / {} / {}", dashboard.title, query.panel, query.ref_id);
            let by_model = grafana::expand(&query.expr, &[("model", "qwen")], RATE_INTERVAL);
            for sample in prometheus
                .query(&by_model)
                .await
                .map_err(|e| format!("{what}: {e:#}"))?
            {
                let model = sample.labels.get("model");
                let endpoint = sample.labels.get("endpoint");
                if model.is_some_and(|m| m != "qwen") || endpoint.is_some_and(|e| *e != qwen) {
                    problems.push(format!("{what}: model qwen shows {:?}", sample.labels));
                }
            }
            let by_endpoint = grafana::expand(&query.expr, &[("endpoint", &llama)], RATE_INTERVAL);
            for sample in prometheus
                .query(&by_endpoint)
                .await
                .map_err(|e| format!("{what}: {e:#}"))?
            {
                if query.expr.contains("$endpoint")
                    && sample.labels.get("endpoint").is_some_and(|e| *e != llama)
                {
                    problems.push(format!(
                        "{what}: endpoint {llama} shows {:?}",
                        sample.labels
                    ));
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}
