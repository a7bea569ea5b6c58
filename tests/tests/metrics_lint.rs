//! Both expositions pass Prometheus' own naming lint: the agent's and the picker's `/metrics`,
//! taken from a running fleet, rendered as the classic text format (counter families named with
//! their `_total`, no `# EOF`), and fed to `promtool check metrics`, which must report nothing.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use inferpick_schema::{EngineKind, Gpu, GpuHealth, PickRequest, ThrottleReason, testing};
use inferpick_tests::fleet::{Fleet, FleetSpec, PodSpec};
use inferpick_tests::tool::PROMTOOL;

/// OpenMetrics text as the classic 0.0.4 format: counter `TYPE`/`HELP` lines name the `_total`
/// series, and the OpenMetrics-only lines (`# EOF`, `# UNIT`) go.
fn classic(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::new();
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# TYPE ", "# HELP "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

fn promtool_check(what: &str, text: &str) {
    let Some(promtool) = PROMTOOL.or_skip("metrics_lint") else {
        return;
    };
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics on the {what}'s exposition:\n{said}\n--- exposition ---\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_and_picker_metrics_pass_promtool_check_metrics() {
    if PROMTOOL.or_skip("metrics_lint").is_none() {
        return;
    }
    // Every GPU health reading, so that each of their families is linted too.
    let gpu = Gpu {
        health: Some(GpuHealth {
            throttle: vec![ThrottleReason::SwPowerCap],
            sm_clock_mhz: Some(1755),
            sm_clock_max_mhz: Some(1980),
            xid_errors: vec![13],
            ecc_uncorrectable_errors: Some(0),
            retired_pages_pending: Some(false),
            remapped_rows_pending: Some(false),
            remapped_rows_failed: Some(false),
            pcie_link_generation: Some(5),
            pcie_link_generation_max: Some(5),
            pcie_link_width: Some(16),
            pcie_link_width_max: Some(16),
            ..GpuHealth::default()
        }),
        ..testing::gpu(0)
    };
    let pod = |engine| PodSpec {
        engine,
        model: "meta-llama/Llama-3.1-8B-Instruct".into(),
        gpu: Some(gpu.clone()),
        agent_args: Vec::new(),
        kv_events: false,
    };
    let fleet = Fleet::start(FleetSpec {
        pods: vec![pod(EngineKind::Vllm), pod(EngineKind::Sglang)],
        dead_push_target: true,
        ..FleetSpec::default()
    })
    .await
    .unwrap();
    fleet
        .wait_until_routable(Duration::from_secs(30))
        .await
        .unwrap();
    for _ in 0..5 {
        fleet.pick(0, &PickRequest::default()).await.unwrap();
    }
    let http = reqwest::Client::new();
    for (what, addr) in [
        ("agent", fleet.agents[0].metrics),
        ("picker", fleet.pickers[0].addr),
    ] {
        let text = http
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            text.ends_with("# EOF\n"),
            "the {what} does not serve OpenMetrics"
        );
        promtool_check(what, &classic(&text));
    }
}

#[test]
fn classic_rendering_names_counters_with_total() {
    let om = "# HELP x_requests Requests.\n# TYPE x_requests counter\nx_requests_total 3\n# TYPE g gauge\ng 1\n# EOF\n";
    assert_eq!(
        classic(om),
        "# HELP x_requests_total Requests.\n# TYPE x_requests_total counter\nx_requests_total 3\n# TYPE g gauge\ng 1\n"
    );
}
