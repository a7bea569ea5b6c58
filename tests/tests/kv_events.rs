//! Token-exact prefix routing end to end, against vLLM's own KV-event publisher (its
//! `vllm/distributed/kv_events.py`, see `tests/fixtures/vllm_kv_publisher.py`): the agent reads
//! what vLLM's code publishes, recomputes the block keys from the token ids and pushes them to a
//! picker, which routes a prompt to the endpoint that holds its head, follows removals, resets
//! after a gap that replay cannot fill, and falls back to its approximate index when the stream dies.

use std::process::Stdio;
use std::time::Duration;

use inferpick_schema::{EngineKind, PickRequest};
use inferpick_tests::fleet::{Fleet, FleetSpec, PodSpec};
use inferpick_tests::tool::VLLM_KV_PUBLISHER;
use inferpick_tests::{free_port, wait_until_async};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";
const BLOCK: usize = 16;

/// vLLM's publisher, driven one command per line.
struct Publisher {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Publisher {
    async fn start(program: &std::path::Path, port: u16, replay: u16) -> Self {
        let mut child = Command::new(program)
            .args([port.to_string(), replay.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("vllm-kv-publisher starts");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), stdout.next_line())
            .await
            .expect("the publisher is ready within 30 s")
            .unwrap();
        assert_eq!(ready.as_deref(), Some("ready"));
        Self {
            child,
            stdin,
            stdout,
        }
    }

    async fn send(&mut self, command: Value) {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .unwrap();
        let answer = self.stdout.next_line().await.unwrap();
        assert_eq!(answer.as_deref(), Some("ok"), "{command}");
    }
}

/// `BlockStored` of `tokens` (whole blocks), engine hashes `first..`, chained from `parent`.
fn stored(tokens: &[u32], first: u64, parent: Option<u64>) -> Value {
    let hashes: Vec<u64> = (first..).take(tokens.len() / BLOCK).collect();
    json!({"stored": {"hashes": hashes, "parent": parent, "tokens": tokens, "block_size": BLOCK}})
}

/// The first endpoint's KV-event stream as the picker shows it.
async fn stream(fleet: &Fleet) -> Value {
    let table = fleet.endpoints(fleet.pickers[0].addr).await.unwrap();
    let endpoint = fleet.engines[0].addr.to_string();
    table["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == endpoint.as_str())
        .cloned()
        .unwrap_or(Value::Null)
}

/// Waits until the picker routes the first endpoint on exactly `blocks` exact blocks.
async fn until_blocks(fleet: &Fleet, blocks: u64) {
    wait_until_async(
        Duration::from_secs(10),
        &format!("{blocks} exact blocks"),
        || async {
            let e = stream(fleet).await;
            if e["prefix_index"] == "exact" && e["kv_events"]["blocks"] == blocks {
                Ok(())
            } else {
                Err(format!("{} {}", e["prefix_index"], e["kv_events"]))
            }
        },
    )
    .await
    .unwrap();
}

/// Cached tokens the picker counts on, per candidate, for `prompt`.
async fn cached(fleet: &Fleet, prompt: &[u32]) -> (String, Vec<(String, u64, bool)>) {
    let response: Value = reqwest::Client::new()
        .post(format!(
            "http://{}/v1/pick?explain=true",
            fleet.pickers[0].addr
        ))
        .json(&PickRequest {
            model: Some(MODEL.into()),
            prompt_token_ids: Some(prompt.to_vec()),
            ..PickRequest::default()
        })
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let candidates = response["explain"]["candidates"]
        .as_array()
        .unwrap_or_else(|| panic!("{response}"))
        .iter()
        .map(|c| {
            (
                c["endpoint"].as_str().unwrap().to_string(),
                c["cached_tokens"].as_u64().unwrap(),
                c["cached_exact"].as_bool().unwrap(),
            )
        })
        .collect();
    (
        response["endpoint"].as_str().unwrap().to_string(),
        candidates,
    )
}

#[tokio::test]
async fn vllms_own_kv_events_route_prompts_to_the_endpoint_that_holds_them() {
    let test = "vllms_own_kv_events_route_prompts_to_the_endpoint_that_holds_them";
    let Some(program) = VLLM_KV_PUBLISHER.or_skip(test) else {
        return;
    };
    let (port, replay) = (free_port().unwrap(), free_port().unwrap());
    let mut publisher = Publisher::start(&program, port, replay).await;
    let pod = |agent_args: Vec<String>| PodSpec {
        engine: EngineKind::Vllm,
        model: MODEL.into(),
        gpu: None,
        agent_args,
        kv_events: false,
    };
    let fleet = Fleet::start(FleetSpec {
        pods: vec![
            pod(vec![
                format!("--kv-events=tcp://127.0.0.1:{port}"),
                format!("--kv-events-replay=tcp://127.0.0.1:{replay}"),
            ]),
            pod(Vec::new()),
        ],
        pickers: 1,
        picker_config: "policy: inferpick\n".into(),
        interval: Duration::from_millis(100),
        ..FleetSpec::default()
    })
    .await
    .unwrap_or_else(|e| panic!("starting the fleet: {e:#}"));
    let holder = fleet.engines[0].addr.to_string();

    // 8 blocks of a 160-token prompt. A subscriber that connects late misses what was published
    // before (ZeroMQ PUB drops it), so the batch goes out until the agent has it.
    let prompt: Vec<u32> = (0..160).map(|t| 1000 + t * 7).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        publisher.send(stored(&prompt[..128], 1, None)).await;
        let e = stream(&fleet).await;
        if e["kv_events"]["blocks"] == 8 && e["prefix_index"] == "exact" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent relayed nothing within 20 s: {e}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (chosen, candidates) = cached(&fleet, &prompt).await;
    assert_eq!(chosen, holder, "{candidates:?}");
    assert!(
        candidates.contains(&(holder.clone(), 128, true)),
        "{candidates:?}"
    );

    // BlockRemoved of the 5th block cuts the cached head to 4 blocks; AllBlocksCleared empties it.
    publisher.send(json!({"removed": [5]})).await;
    until_blocks(&fleet, 7).await;
    let (_, candidates) = cached(&fleet, &prompt).await;
    assert!(
        candidates.contains(&(holder.clone(), 64, true)),
        "{candidates:?}"
    );
    publisher
        .send(json!({"batch": [{"cleared": true}, stored(&prompt[..32], 100, None)]}))
        .await;
    until_blocks(&fleet, 2).await;

    // A gap that replay cannot fill (the publisher skipped sequence numbers it never sent): the
    // agent starts over, and the picker holds only what followed.
    publisher.send(json!({"skip": 3})).await;
    publisher.send(stored(&prompt[..48], 200, None)).await;
    until_blocks(&fleet, 3).await;
    let (_, candidates) = cached(&fleet, &prompt).await;
    assert!(
        candidates.contains(&(holder.clone(), 48, true)),
        "{candidates:?}"
    );

    // The publisher dies: the stream goes stale and the endpoint falls back to the approximate
    // index.
    drop(publisher.stdin);
    let _ = publisher.child.kill().await;
    wait_until_async(
        Duration::from_secs(15),
        "the endpoint to fall back to the approximate index",
        || async {
            let e = stream(&fleet).await;
            if e["prefix_index"] == "approximate" {
                Ok(())
            } else {
                Err(e["kv_events"].to_string())
            }
        },
    )
    .await
    .unwrap();
    let (_, candidates) = cached(&fleet, &prompt).await;
    assert!(candidates.iter().all(|c| !c.2), "{candidates:?}");
}

/// The lab's emulator publishes its prefix cache as vLLM does; with the model's tokenizer named in
/// the picker's config, a text prompt served once is then found, token-exact, where it went.
#[tokio::test]
async fn the_emulators_kv_events_make_text_prompts_exact_with_the_models_tokenizer() {
    let scratch = inferpick_tests::ScratchDir::new("kv-events-emulator").unwrap();
    let tokenizer = scratch
        .write(
            "tokenizer.json",
            inferpick_lab::tokenizer::tokenizer_json().to_string(),
        )
        .unwrap();
    let pod = || PodSpec {
        engine: EngineKind::Vllm,
        model: MODEL.into(),
        gpu: None,
        agent_args: Vec::new(),
        kv_events: true,
    };
    let fleet = Fleet::start(FleetSpec {
        pods: vec![pod(), pod(), pod()],
        pickers: 1,
        picker_config: format!(
            "policy: inferpick\ntokenizers:\n  {MODEL}: {}\n",
            tokenizer.display()
        ),
        interval: Duration::from_millis(100),
        ..FleetSpec::default()
    })
    .await
    .unwrap_or_else(|e| panic!("starting the fleet: {e:#}"));
    // A long system prompt of the tokenizer's words, then a question.
    let ids: Vec<u32> = (0..400).map(|i| 1 + i * 37 % 31_000).collect();
    let system = inferpick_lab::tokenizer::text_of(&ids);
    let first = PickRequest {
        model: Some(MODEL.into()),
        prompt: Some(format!("{system} first question")),
        ..PickRequest::default()
    };
    let served = match fleet.route(0, &first, 4).await.unwrap() {
        inferpick_tests::fleet::PickOutcome::Routed(d) => d.endpoint,
        other => panic!("{other:?}"),
    };
    wait_until_async(
        Duration::from_secs(10),
        "the served endpoint's blocks to reach the picker",
        || async {
            let table = fleet.endpoints(fleet.pickers[0].addr).await.unwrap();
            let e = table["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["address"] == served.as_str())
                .cloned()
                .unwrap();
            let blocks = e["kv_events"]["blocks"].as_u64().unwrap_or(0);
            if e["prefix_index"] == "exact" && blocks >= 25 {
                Ok(())
            } else {
                Err(format!("{} {}", e["prefix_index"], e["kv_events"]))
            }
        },
    )
    .await
    .unwrap();
    let response: Value = reqwest::Client::new()
        .post(format!(
            "http://{}/v1/pick?explain=true",
            fleet.pickers[0].addr
        ))
        .json(&PickRequest {
            prompt: Some(format!("{system} second question")),
            ..first.clone()
        })
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(response["endpoint"], served.as_str(), "{response}");
    let holder = response["explain"]["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["endpoint"] == served.as_str())
        .unwrap();
    assert_eq!(holder["cached_exact"], true, "{holder}");
    // 400 words are 400 tokens: the 25 full 16-token blocks.
    assert_eq!(holder["cached_tokens"], 400, "{holder}");
}
