//! Two emulated engines (vLLM and SGLang dialects), the real agent beside each, and the real
//! picker, in this process on loopback: each agent's normalized report must follow its emulator's
//! true queue, batch and KV use within one report interval.

use std::time::{Duration, Instant};

use inferpick_lab::demo::Fleet;
use inferpick_lab::emulate::{Progress, Submission};
use inferpick_lab::engine::{EngineConfig, EngineState};
use inferpick_schema::{EngineKind, LoadReport};
use tokio::sync::mpsc::UnboundedReceiver;

const INTERVAL: Duration = Duration::from_millis(200);
/// Scheduling noise on a busy two-core machine, on top of the interval.
const SLACK: Duration = Duration::from_millis(150);

/// An engine whose steps last a minute: once a step is planned its state holds still, so what the
/// agent reports can be compared with the truth exactly.
fn frozen_engine() -> EngineConfig {
    EngineConfig {
        step_base: Duration::from_secs(60),
        max_num_seqs: 4,
        kv_tokens: 64_000,
        ..EngineConfig::default()
    }
}

async fn report(client: &reqwest::Client, agent: std::net::SocketAddr) -> Option<LoadReport> {
    client
        .get(format!("http://{agent}/v1/report"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

fn matches(r: &LoadReport, truth: &EngineState) -> bool {
    let l = &r.load;
    l.requests_waiting == Some(truth.waiting)
        && l.requests_running == Some(truth.running)
        && l.kv_cache_utilization
            .is_some_and(|k| (k - truth.kv_utilization()).abs() < 1e-9)
}

/// Polls the agent until its report matches the emulator's state; returns how long that took.
async fn lag_until_reported(
    client: &reqwest::Client,
    fleet: &Fleet,
    pod: usize,
    since: Instant,
) -> Duration {
    let truth = fleet.emulators[pod].emulator.state();
    let deadline = since + INTERVAL * 10;
    loop {
        if let Some(r) = report(client, fleet.agents[pod]).await
            && matches(&r, &truth)
        {
            return since.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "pod {pod}: the agent never reported the true state {truth:?}; last report: {:?}",
            report(client, fleet.agents[pod]).await.map(|r| r.load)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn submit(fleet: &Fleet, pod: usize, n: usize, chars: usize) -> Vec<UnboundedReceiver<Progress>> {
    (0..n)
        .map(|i| {
            fleet.emulators[pod]
                .emulator
                .submit(Submission {
                    prompt: format!("{i:>8}") + &"x".repeat(chars),
                    max_tokens: 1000,
                    adapter: None,
                })
                .expect("the emulator accepts it")
                .2
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_report_the_emulators_true_queue_and_kv_within_one_interval() {
    let fleet = Fleet::start(
        2,
        &[EngineKind::Vllm, EngineKind::Sglang],
        &[],
        frozen_engine(),
        INTERVAL,
        false,
    )
    .await
    .expect("fleet starts");
    let client = reqwest::Client::new();

    // Idle: both agents report empty engines.
    for pod in 0..2 {
        lag_until_reported(&client, &fleet, pod, Instant::now()).await;
    }

    // Pod 0 takes six requests: at most four run (max_num_seqs), the rest wait; pod 1 takes three.
    // The first step is planned as soon as the driver wakes, with whatever had arrived by then.
    let start = Instant::now();
    let _held0 = submit(&fleet, 0, 6, 8_000);
    let _held1 = submit(&fleet, 1, 3, 8_000);
    let wait_for_step = Instant::now() + Duration::from_secs(5);
    while fleet.emulators[0].emulator.state().running == 0
        || fleet.emulators[1].emulator.state().running == 0
    {
        assert!(
            Instant::now() < wait_for_step,
            "the emulators never admitted the requests"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let truth0 = fleet.emulators[0].emulator.state();
    let truth1 = fleet.emulators[1].emulator.state();
    assert!(truth0.waiting >= 2, "{truth0:?}");
    assert!(truth0.kv_used_blocks > 0 && truth1.kv_used_blocks > 0);
    for pod in 0..2 {
        let lag = lag_until_reported(&client, &fleet, pod, start).await;
        eprintln!("pod {pod}: reported the new state after {lag:?}");
        assert!(
            lag <= INTERVAL + SLACK,
            "pod {pod} took {lag:?}, more than one interval"
        );
    }

    // More arrive while the step runs: the queue grows, and the agents follow.
    let start = Instant::now();
    let before = fleet.emulators[0].emulator.state().waiting;
    let _more = submit(&fleet, 0, 3, 4_000);
    assert_eq!(fleet.emulators[0].emulator.state().waiting, before + 3);
    let lag = lag_until_reported(&client, &fleet, 0, start).await;
    eprintln!("pod 0: reported the longer queue after {lag:?}");
    assert!(lag <= INTERVAL + SLACK, "took {lag:?}");

    // And the picker holds what the agents pushed.
    let endpoints: serde_json::Value = client
        .get(format!("http://{}/v1/endpoints", fleet.picker))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed = endpoints["endpoints"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{endpoints}");
    fleet.shutdown().await;
}
