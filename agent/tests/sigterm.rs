//! SIGTERM to the agent binary: the pickers receive a last report saying the agent is shutting
//! down (not ready), and the process exits 0 promptly, even with a picker that never answers.

mod common;

use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;

const VLLM: &str = "vllm:num_requests_waiting{model_name=\"m\"} 2\nvllm:num_requests_running{model_name=\"m\"} 1\n";

/// The agent binary; killed on drop if it is still running.
struct Binary(Child);

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Binary {
    /// Polls for the exit status for up to `within`.
    async fn exited_within(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "still running after {within:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test]
async fn sigterm_pushes_a_last_not_ready_report_and_exits_0() {
    let engine = FakeEngine::start(Behavior::Serve(VLLM.into())).await;
    let picker = FakePicker::start().await;
    let hanging = FakePicker::start_hanging().await;
    let mut agent = Binary(
        Command::new(env!("CARGO_BIN_EXE_inferpick-agent"))
            .args([
                "--engine-url",
                &engine.url(),
                "--endpoint",
                "10.0.0.1:8000",
                "--gpu",
                "none",
                "--listen",
                "127.0.0.1:0",
                // A push may take 2 s at this interval: only the 1 s bound on the last push
                // lets the agent exit in time with a picker that never answers.
                "--interval",
                "1s",
                "--picker",
                &format!("{},{}", picker.url(), hanging.url()),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
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
