//! SIGTERM to the agent binary: the pickers receive a last report saying the agent is shutting
//! down (not ready), and the process exits 0 promptly, even with a picker that never answers.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const VLLM: &str = "vllm:num_requests_waiting{model_name=\"m\"} 2\nvllm:num_requests_running{model_name=\"m\"} 1\n";

#[tokio::test]
async fn sigterm_pushes_a_last_not_ready_report_and_exits_0() {
    let engine = FakeEngine::start(Behavior::Serve(VLLM.into())).await;
    let picker = FakePicker::start().await;
    let hanging = FakePicker::start_hanging().await;
    let pickers = format!("{},{}", picker.url(), hanging.url());
    // A push may take 2 s at this interval: only the 1 s bound on the last push lets the agent
    // exit in time with a picker that never answers.
    let extra = ["--interval", "1s", "--picker", &pickers];
    let mut agent = AgentProcess::spawn(&engine.url(), &extra, Stdio::null());
    wait_until(
        Duration::from_secs(10),
        "ready reports at the picker",
        || picker.count() >= 1 && picker.last().is_some_and(|r| r.engine.ready),
    )
    .await;

    let killed = Command::new("kill")
        .args(["-TERM", &agent.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // The last push is bounded by a second even though one picker never answers.
    let signalled = Instant::now();
    let status = agent.exited_within(Duration::from_secs(5)).await;
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "exit took {:?}",
        signalled.elapsed()
    );
    assert!(status.success(), "exit status {status:?}");

    let last = picker.last().unwrap();
    assert!(!last.engine.ready, "{last:?}");
    assert_eq!(last.engine.error.as_deref(), Some("agent shutting down"));
    last.validate().unwrap();
    let seqs = picker.seqs();
    assert!(seqs.windows(2).all(|w| w[1] > w[0]), "{seqs:?}");
}
