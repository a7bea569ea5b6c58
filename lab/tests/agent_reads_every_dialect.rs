//! The real agent (`--once`, with `--engine auto`) reads each of the emulator's seven dialects and
//! recognizes the engine, and its normalized counts match the emulator's true state.

use std::time::{Duration, Instant};

use clap::Parser as _;
use inferpick_lab::emulate::{self, Emulator, EmulatorConfig, Progress, Submission};
use inferpick_lab::engine::EngineConfig;
use inferpick_schema::EngineKind;
use tokio::sync::mpsc::UnboundedReceiver;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_recognizes_and_normalizes_every_dialect() {
    for kind in EngineKind::ALL {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = emulate::spawn(
            Emulator::new(EmulatorConfig {
                tokenizer: inferpick_lab::tokenizer::builtin(),
                kind,
                model: "meta-llama/Llama-3.1-8B-Instruct".into(),
                adapters: vec![],
                engine: EngineConfig {
                    // Frozen: the first step lasts a minute, so the state holds still.
                    step_base: Duration::from_secs(60),
                    max_num_seqs: 2,
                    ..EngineConfig::default()
                },
            }),
            listener,
        )
        .unwrap();
        let em = server.emulator.clone();
        let _held: Vec<UnboundedReceiver<Progress>> = (0..5)
            .map(|i| {
                em.submit(Submission {
                    prompt: format!("{i} {}", "y".repeat(2_000)),
                    max_tokens: 100,
                    adapter: None,
                })
                .unwrap()
                .2
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(5);
        while em.state().running == 0 {
            assert!(Instant::now() < deadline, "{kind}: nothing admitted");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let truth = em.state();
        let args = inferpick_agent::Args::try_parse_from([
            "inferpick-agent".to_string(),
            format!("--engine-url=http://{}/metrics", server.addr),
            format!("--endpoint={}", server.addr),
            "--engine=auto".into(),
            "--gpu=none".into(),
            "--once".into(),
        ])
        .unwrap();
        let config = inferpick_agent::Config::from_args(&args).unwrap();
        let report = inferpick_agent::once(config)
            .await
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(report.engine.kind, kind, "auto-detection");
        assert!(report.engine.ready, "{kind}: {:?}", report.engine.error);
        let load = &report.load;
        assert_eq!(
            load.requests_waiting,
            Some(truth.waiting),
            "{kind}: waiting"
        );
        assert_eq!(
            load.requests_running,
            Some(truth.running),
            "{kind}: running"
        );
        if kind != EngineKind::Llamacpp {
            let kv = load
                .kv_cache_utilization
                .unwrap_or_else(|| panic!("{kind}: no KV"));
            assert!(
                (kv - truth.kv_utilization()).abs() < 1e-6,
                "{kind}: kv {kv} vs {}",
                truth.kv_utilization()
            );
        }
        assert!(
            report
                .models
                .iter()
                .any(|m| m.name == "meta-llama/Llama-3.1-8B-Instruct"),
            "{kind}: models {:?}",
            report.models
        );
        server.stop().await;
    }
}
