//! The agent's exposition: present signals only, GPU health series, replacement by newer reports.

use inferpick_schema::Gpu;
use inferpick_schema::testing::{self, ReportBuilder};

use super::*;

/// A ready endpoint serving `m`, with 3 waiting, no running count, and one GPU that does not
/// report its temperature.
fn report() -> LoadReport {
    let gpu = Gpu {
        temperature_celsius: None,
        ..testing::gpu(0)
    };
    ReportBuilder::new("10.0.0.1:8000")
        .models(&["m"])
        .waiting(3)
        .running(None)
        .kv_utilization(0.5)
        .gpus(vec![gpu])
        .build()
}

#[test]
fn exports_present_signals_only() {
    let m = AgentMetrics::new();
    m.set_report(&report());
    m.observe_scrape("ok", Duration::from_millis(2));
    m.observe_push("http://p:9000/v1/reports", false, Duration::from_millis(1));
    let text = m.render();
    let gpu = format!(
        "endpoint=\"10.0.0.1:8000\",gpu=\"0\",uuid=\"{}\"",
        testing::gpu(0).uuid
    );
    for line in [
        "inferpick_endpoint_requests_waiting{endpoint=\"10.0.0.1:8000\",model=\"m\"} 3.0".into(),
        "inferpick_endpoint_kv_cache_utilization{endpoint=\"10.0.0.1:8000\",model=\"m\"} 0.5"
            .into(),
        "inferpick_endpoint_ready{endpoint=\"10.0.0.1:8000\",model=\"m\"} 1.0".into(),
        format!("inferpick_gpu_utilization_ratio{{{gpu}}} 0.87"),
        format!("inferpick_gpu_power_watts{{{gpu}}} 455.5"),
        "inferpick_agent_scrapes_total{result=\"ok\"} 1".into(),
        "inferpick_agent_pushes_total{target=\"http://p:9000/v1/reports\",result=\"error\"} 1"
            .into(),
        "inferpick_agent_info{version=\"0.1.0\",engine=\"vllm\"} 1".into(),
        "# EOF".to_string(),
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    assert!(
        !text.contains("inferpick_endpoint_requests_running{"),
        "absent signal exported:\n{text}"
    );
    assert!(
        !text.contains("inferpick_gpu_temperature_celsius{"),
        "absent GPU signal exported"
    );
}

fn gpu_line(text: &str, name: &str, extra: &str) -> Option<String> {
    let labels = format!(
        "endpoint=\"10.0.0.1:8000\",gpu=\"0\",uuid=\"{}\"{extra}",
        testing::gpu(0).uuid
    );
    let head = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&head).map(str::to_string))
}

fn with_health(health: GpuHealth) -> LoadReport {
    let mut r = report();
    r.gpus[0].health = Some(health);
    r
}

#[test]
fn each_gpu_health_condition_has_its_series() {
    use inferpick_schema::ThrottleReason;
    let m = AgentMetrics::new();
    m.set_report(&with_health(GpuHealth {
        throttle: vec![ThrottleReason::HwThermal, ThrottleReason::SwPowerCap],
        sm_clock_mhz: Some(990),
        sm_clock_max_mhz: Some(1980),
        xid_errors: vec![13, 79],
        ecc_uncorrectable_errors: Some(2),
        retired_pages_pending: Some(true),
        remapped_rows_pending: Some(false),
        remapped_rows_failed: Some(true),
        pcie_link_generation: Some(4),
        pcie_link_generation_max: Some(5),
        pcie_link_width: Some(8),
        pcie_link_width_max: Some(16),
        ..GpuHealth::default()
    }));
    let text = m.render();
    for (name, extra, value) in [
        ("inferpick_gpu_lost", "", "0.0"),
        ("inferpick_gpu_fatal", "", "1.0"),
        ("inferpick_gpu_sm_clock_ratio", "", "0.5"),
        ("inferpick_gpu_ecc_uncorrectable_errors", "", "2.0"),
        ("inferpick_gpu_retired_pages_pending", "", "1.0"),
        ("inferpick_gpu_remapped_rows_pending", "", "0.0"),
        ("inferpick_gpu_remapped_rows_failed", "", "1.0"),
        ("inferpick_gpu_pcie_link_width_ratio", "", "0.5"),
        ("inferpick_gpu_pcie_link_generation_ratio", "", "0.8"),
        (
            "inferpick_gpu_throttle_active",
            ",reason=\"hw-thermal\"",
            "1.0",
        ),
        (
            "inferpick_gpu_throttle_active",
            ",reason=\"sw-power-cap\"",
            "1.0",
        ),
        ("inferpick_gpu_xid_errors", ",xid=\"13\"", "1.0"),
        ("inferpick_gpu_xid_errors", ",xid=\"79\"", "1.0"),
    ] {
        assert_eq!(
            gpu_line(&text, name, extra).as_deref(),
            Some(value),
            "{name}{extra} in\n{text}"
        );
    }
    assert_eq!(text.matches("inferpick_gpu_throttle_active{").count(), 2);
}

#[test]
fn a_lost_gpu_exports_lost_and_fatal_and_nothing_it_cannot_read() {
    let m = AgentMetrics::new();
    m.set_report(&with_health(GpuHealth {
        sm_clock_mhz: Some(1980),
        sm_clock_max_mhz: Some(1980),
        ..GpuHealth::default()
    }));
    let healthy = m.render();
    assert_eq!(
        gpu_line(&healthy, "inferpick_gpu_fatal", "").as_deref(),
        Some("0.0")
    );
    assert_eq!(
        gpu_line(&healthy, "inferpick_gpu_sm_clock_ratio", "").as_deref(),
        Some("1.0")
    );
    m.set_report(&with_health(GpuHealth {
        lost: true,
        ..GpuHealth::default()
    }));
    let lost = m.render();
    assert_eq!(
        gpu_line(&lost, "inferpick_gpu_lost", "").as_deref(),
        Some("1.0")
    );
    assert_eq!(
        gpu_line(&lost, "inferpick_gpu_fatal", "").as_deref(),
        Some("1.0")
    );
    for absent in [
        "inferpick_gpu_sm_clock_ratio{",
        "inferpick_gpu_ecc_uncorrectable_errors{",
        "inferpick_gpu_pcie_link_width_ratio{",
        "inferpick_gpu_throttle_active{",
        "inferpick_gpu_xid_errors{",
    ] {
        assert!(!lost.contains(absent), "{absent} exported:\n{lost}");
    }
    // GPUs from agents or sources without health export no health series at all.
    m.set_report(&report());
    assert!(!m.render().contains("inferpick_gpu_lost{"));
}

#[test]
fn a_newer_report_replaces_the_old_series() {
    let m = AgentMetrics::new();
    m.set_report(&report());
    let mut r = report();
    r.load.requests_waiting = None;
    r.engine.ready = false;
    r.gpus.clear();
    m.set_report(&r);
    let text = m.render();
    assert!(!text.contains("inferpick_endpoint_requests_waiting{"));
    assert!(text.contains("inferpick_endpoint_ready{endpoint=\"10.0.0.1:8000\",model=\"m\"} 0.0"));
    assert!(!text.contains("inferpick_gpu_memory_used_bytes{"));
}
