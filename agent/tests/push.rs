//! A running agent pushing to fake pickers: every target gets every report, in order, with the
//! token; a dead or hanging target does not slow the others.

mod common;

use std::time::Duration;

use common::*;

const VLLM: &str = "vllm:num_requests_waiting{model_name=\"m\"} 2\nvllm:num_requests_running{model_name=\"m\"} 1\n";

#[tokio::test]
async fn reports_reach_every_picker_in_order_with_the_token() {
    let engine = FakeEngine::start(Behavior::Serve(VLLM.into())).await;
    let (a, b) = (FakePicker::start().await, FakePicker::start().await);
    let dir = tempdir("push-token");
    let token = dir.join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let pickers = format!("{},{}", a.url(), b.url());
    let agent = Agent::start(
        &engine.url(),
        &[
            "--picker",
            &pickers,
            "--interval",
            "50ms",
            "--token-file",
            token.to_str().unwrap(),
        ],
    )
    .await;
    wait_until(Duration::from_secs(10), "5 reports at each picker", || {
        a.count() >= 5 && b.count() >= 5
    })
    .await;
    for picker in [&a, &b] {
        let seqs = picker.seqs();
        assert!(
            seqs.windows(2).all(|w| w[1] > w[0]),
            "seq not increasing: {seqs:?}"
        );
        let received = picker.received.lock().unwrap();
        let (first, auth, _) = &received[0];
        assert_eq!(auth.as_deref(), Some("Bearer s3cret"));
        assert_eq!(first.load.requests_waiting, Some(2));
        assert_eq!(first.endpoint.address, "10.0.0.1:8000");
        let ids: std::collections::HashSet<_> = received
            .iter()
            .map(|(r, _, _)| r.agent.id.clone())
            .collect();
        assert_eq!(ids.len(), 1, "one agent id per process");
    }
    // A new token is picked up without a restart.
    std::fs::write(&token, "rotated").unwrap();
    let later = std::time::SystemTime::now() + Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(&token)
        .unwrap()
        .set_modified(later)
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "a push with the rotated token",
        || {
            a.received
                .lock()
                .unwrap()
                .iter()
                .any(|(_, auth, _)| auth.as_deref() == Some("Bearer rotated"))
        },
    )
    .await;
    agent.stop().await;
}

#[tokio::test]
async fn a_dead_or_hanging_picker_does_not_slow_the_others() {
    let engine = FakeEngine::start(Behavior::Serve(VLLM.into())).await;
    let healthy = FakePicker::start().await;
    let hanging = FakePicker::start_hanging().await;
    let doomed = FakePicker::start().await;
    let pickers = format!("{},{},{}", healthy.url(), hanging.url(), doomed.url());
    let agent = Agent::start(&engine.url(), &["--picker", &pickers, "--interval", "50ms"]).await;
    wait_until(
        Duration::from_secs(10),
        "reports at the live pickers",
        || healthy.count() >= 3 && doomed.count() >= 3,
    )
    .await;
    doomed.kill();

    // The healthy picker keeps receiving nearly every report: the agent's own seq advances and the
    // healthy picker's latest seq follows it, while the other two fail.
    let start_seq = agent.report().await.unwrap().seq;
    let target = start_seq + 20;
    agent
        .wait_for_report(Duration::from_secs(10), "20 more scrapes", |r| {
            r.seq >= target
        })
        .await;
    wait_until(
        Duration::from_secs(2),
        "the healthy picker to be sent the latest reports",
        || healthy.seqs().last().copied().unwrap_or(0) >= target - 1,
    )
    .await;
    let after: Vec<u64> = healthy
        .seqs()
        .into_iter()
        .filter(|s| *s > start_seq)
        .collect();
    assert!(
        after.len() >= 15,
        "the healthy picker missed reports: got {} of ~20: {after:?}",
        after.len()
    );
    assert_eq!(hanging.count(), 0);
    agent.stop().await;
}

#[tokio::test]
async fn dns_targets_push_to_every_address_of_the_name() {
    let engine = FakeEngine::start(Behavior::Serve(VLLM.into())).await;
    let picker = FakePicker::start().await;
    let target = format!("dns+http://localhost:{}", picker.addr.port());
    let agent = Agent::start(&engine.url(), &["--picker", &target, "--interval", "50ms"]).await;
    wait_until(
        Duration::from_secs(10),
        "reports through the DNS target",
        || picker.count() >= 3,
    )
    .await;
    agent.stop().await;
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("inferpick-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
