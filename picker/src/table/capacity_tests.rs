//! Capacity through the table: hardware classes share estimates, a throttled GPU slows its
//! endpoint, a fatal GPU condition takes it out of routing, pins override, forgetting takes an
//! endpoint's estimates back.

use std::time::Duration;

use inferpick_schema::{Gpu, GpuHealth, LoadReport, ThrottleReason};

use super::tests::report;
use super::*;

const T0: Duration = Duration::from_secs(10);
const H100: &str = "NVIDIA H100 80GB HBM3";
const A100: &str = "NVIDIA A100-SXM4-80GB";

fn on(address: &str, seq: u64, gpu: &str, health: Option<GpuHealth>) -> LoadReport {
    let mut r = report(address, seq);
    r.gpus = vec![Gpu {
        uuid: format!("GPU-{address}"),
        name: Some(gpu.into()),
        health,
        ..Default::default()
    }];
    r
}

/// A report of an endpoint that prefilled `rate` tokens/s with requests waiting.
fn busy(address: &str, seq: u64, gpu: &str, rate: f64, health: Option<GpuHealth>) -> LoadReport {
    let mut r = on(address, seq, gpu, health);
    r.load.prompt_tokens_per_second = Some(rate);
    r.load.requests_waiting = Some(3);
    r
}

fn capacity(t: &Table, address: &str) -> Capacity {
    t.snapshot().get(address).unwrap().capacity
}

fn throttled(fraction: f64) -> GpuHealth {
    GpuHealth {
        throttle: vec![ThrottleReason::HwThermal],
        sm_clock_mhz: Some((1980.0 * fraction) as u32),
        sm_clock_max_mhz: Some(1980),
        ..Default::default()
    }
}

#[test]
fn endpoints_of_one_class_share_an_estimate_and_other_classes_scale_it() {
    let t = Table::new(TableConfig::default());
    t.ingest(busy("10.0.0.1:8000", 1, H100, 15_000.0, None), T0)
        .unwrap();
    t.ingest(busy("10.0.0.2:8000", 1, H100, 17_000.0, None), T0)
        .unwrap();
    // Each learned its own figure; both pick on their class's mean.
    let one = t.snapshot().get("10.0.0.1:8000").unwrap().clone();
    assert_eq!(one.learned.prefill, Some(15_000.0));
    // The first one's entry was made before the second joined its class; its next report sees it.
    t.ingest(on("10.0.0.1:8000", 2, H100, None), T0).unwrap();
    for a in ["10.0.0.1:8000", "10.0.0.2:8000"] {
        let c = capacity(&t, a);
        assert_eq!(c.prefill_source, CapacitySource::Class, "{a}");
        assert_eq!(c.prefill_tokens_per_second, Some(16_000.0), "{a}");
    }
    // An A100 that never queued: the fleet's H100 figure scaled by the A100's relative compute.
    t.ingest(on("10.0.0.3:8000", 1, A100, None), T0).unwrap();
    let a100 = capacity(&t, "10.0.0.3:8000");
    assert_eq!(a100.prefill_source, CapacitySource::Fleet);
    let expected = 16_000.0 * 312.0 / 989.0;
    assert!(
        (a100.prefill_tokens_per_second.unwrap() - expected).abs() < 1.0,
        "{a100:?}"
    );
    assert!((a100.prior_scale - 312.0 / 989.0).abs() < 1e-9);
    assert!(a100.decode_scale > 1.5, "an A100 decodes slower: {a100:?}");
    // Once an A100 has shown its own rate, its class has one.
    t.ingest(busy("10.0.0.3:8000", 2, A100, 7_000.0, None), T0)
        .unwrap();
    t.ingest(on("10.0.0.4:8000", 1, A100, None), T0).unwrap();
    let other = capacity(&t, "10.0.0.4:8000");
    assert_eq!(other.prefill_source, CapacitySource::Class);
    assert_eq!(other.prefill_tokens_per_second, Some(7_000.0));
}

#[test]
fn an_endpoint_clearly_unlike_its_class_uses_its_own_estimate() {
    let t = Table::new(TableConfig::default());
    let mut seq = 0;
    for _ in 0..30 {
        seq += 1;
        t.ingest(busy("10.0.0.1:8000", seq, H100, 16_000.0, None), T0)
            .unwrap();
        t.ingest(busy("10.0.0.2:8000", seq, H100, 4_000.0, None), T0)
            .unwrap();
    }
    let slow = t.snapshot().get("10.0.0.2:8000").unwrap().clone();
    assert!(slow.learned.prefill_samples >= 20);
    assert_eq!(slow.capacity.prefill_source, CapacitySource::Own);
    let fast = capacity(&t, "10.0.0.1:8000");
    assert!(
        fast.prefill_tokens_per_second.unwrap()
            > 2.0 * slow.capacity.prefill_tokens_per_second.unwrap(),
        "{fast:?} {:?}",
        slow.capacity
    );
}

#[test]
fn throttling_scales_capacity_and_is_not_learned_as_the_gpus_speed() {
    let t = Table::new(TableConfig::default());
    t.ingest(busy("10.0.0.1:8000", 1, H100, 16_000.0, None), T0)
        .unwrap();
    // Throttled to half its clock it prefills half as fast; what it learns stays at full speed.
    t.ingest(
        busy("10.0.0.1:8000", 2, H100, 8_000.0, Some(throttled(0.5))),
        T0,
    )
    .unwrap();
    let e = t.snapshot().get("10.0.0.1:8000").unwrap().clone();
    assert_eq!(e.learned.prefill, Some(16_000.0));
    assert_eq!(e.capacity.speed, 0.5);
    assert_eq!(e.capacity.prefill_tokens_per_second, Some(8_000.0));
    assert_eq!(e.capacity.prior_scale, 0.5);
    assert!(e.capacity.decode_scale >= 2.0 - 1e-9);
    assert_eq!(e.state(T0, Duration::from_secs(1)), EndpointState::Ready);
    // The clocks recover: so does its capacity.
    t.ingest(on("10.0.0.1:8000", 3, H100, Some(GpuHealth::default())), T0)
        .unwrap();
    assert_eq!(capacity(&t, "10.0.0.1:8000").speed, 1.0);
}

#[test]
fn a_fatal_gpu_condition_takes_the_endpoint_out_until_a_report_clears_it() {
    let t = Table::new(TableConfig::default());
    let fatal = [
        GpuHealth {
            lost: true,
            ..Default::default()
        },
        GpuHealth {
            ecc_uncorrectable_errors: Some(1),
            ..Default::default()
        },
        GpuHealth {
            xid_errors: vec![79],
            ..Default::default()
        },
        GpuHealth {
            remapped_rows_failed: Some(true),
            ..Default::default()
        },
    ];
    let mut seq = 0;
    for health in fatal {
        seq += 1;
        t.ingest(on("10.0.0.1:8000", seq, H100, Some(health.clone())), T0)
            .unwrap();
        let e = t.snapshot().get("10.0.0.1:8000").unwrap().clone();
        assert_eq!(
            e.state(T0, Duration::from_secs(1)),
            EndpointState::GpuFailed,
            "{health:?}"
        );
        let why = e.gpu_failure.as_deref().unwrap();
        assert!(why.starts_with("GPU-10.0.0.1:8000: "), "{why}");
        assert_eq!(
            why,
            format!("GPU-10.0.0.1:8000: {}", health.fatal().unwrap())
        );
        seq += 1;
        t.ingest(on("10.0.0.1:8000", seq, H100, None), T0).unwrap();
        let back = t.snapshot().get("10.0.0.1:8000").unwrap().clone();
        assert_eq!(back.state(T0, Duration::from_secs(1)), EndpointState::Ready);
    }
    // Warnings alone change nothing.
    seq += 1;
    let pending = GpuHealth {
        remapped_rows_pending: Some(true),
        pcie_link_width: Some(8),
        pcie_link_width_max: Some(16),
        ..Default::default()
    };
    t.ingest(on("10.0.0.1:8000", seq, H100, Some(pending)), T0)
        .unwrap();
    let e = t.snapshot().get("10.0.0.1:8000").unwrap().clone();
    assert_eq!(e.state(T0, Duration::from_secs(1)), EndpointState::Ready);
    assert_eq!(e.capacity.speed, 1.0);
}

#[test]
fn pins_override_what_was_learned() {
    let t = Table::new(TableConfig {
        capacity_pins: vec![
            CapacityPin {
                matches: PinMatch::Address("10.0.0.2:8000".into()),
                prefill_tokens_per_second: 3_000.0,
            },
            CapacityPin {
                matches: PinMatch::Gpu(A100.into()),
                prefill_tokens_per_second: 6_000.0,
            },
        ],
        ..TableConfig::default()
    });
    t.ingest(busy("10.0.0.1:8000", 1, H100, 16_000.0, None), T0)
        .unwrap();
    t.ingest(busy("10.0.0.2:8000", 1, H100, 16_000.0, None), T0)
        .unwrap();
    t.ingest(on("10.0.0.3:8000", 1, A100, Some(throttled(0.5))), T0)
        .unwrap();
    assert_eq!(
        capacity(&t, "10.0.0.2:8000").prefill_tokens_per_second,
        Some(3_000.0)
    );
    let a100 = capacity(&t, "10.0.0.3:8000");
    assert_eq!(a100.prefill_source, CapacitySource::Pinned);
    assert_eq!(
        a100.prefill_tokens_per_second,
        Some(3_000.0),
        "pinned, then throttled"
    );
}

#[test]
fn forgotten_endpoints_take_their_estimates_with_them() {
    let t = Table::new(TableConfig::default());
    t.ingest(busy("10.0.0.1:8000", 1, H100, 16_000.0, None), T0)
        .unwrap();
    let later = T0 + TableConfig::default().forget_after;
    t.ingest(on("10.0.0.2:8000", 1, A100, None), later).unwrap();
    assert_eq!(
        capacity(&t, "10.0.0.2:8000").prefill_source,
        CapacitySource::Fleet
    );
    assert_eq!(t.forget_silent(later + Duration::from_secs(1)), 1);
    t.ingest(on("10.0.0.2:8000", 2, A100, None), later).unwrap();
    let c = capacity(&t, "10.0.0.2:8000");
    assert_eq!(
        (c.prefill_source, c.prefill_tokens_per_second),
        (CapacitySource::Prior, None)
    );
}
