//! The KV-event path end to end on loopback: a real ZeroMQ publisher (and replay ROUTER) written
//! here in vLLM's wire format, the agent, and a fake picker recording `POST /v1/kv-events`.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use common::{Agent, wait_until};
use inferpick_agent::kv::msgpack::write as w;
use inferpick_schema::kv::{BASE_ROOT, KvAck, KvEvents, KvStreamState, block_keys};
use zeromq::{PubSocket, RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

#[derive(Clone, Default)]
struct Picker {
    received: Arc<Mutex<Vec<KvEvents>>>,
    /// Messages still to be answered 409.
    conflicts: Arc<AtomicUsize>,
}

async fn ingest(State(p): State<Picker>, body: Bytes) -> Response {
    let m: KvEvents = serde_json::from_slice(&body).unwrap();
    m.validate().unwrap();
    let seq = m.seq;
    p.received.lock().unwrap().push(m);
    if p.conflicts
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return StatusCode::CONFLICT.into_response();
    }
    axum::Json(KvAck {
        next_seq: seq + 1,
        resync: false,
    })
    .into_response()
}

impl Picker {
    async fn start() -> (Self, String) {
        let p = Picker::default();
        let app = Router::new()
            .route("/v1/kv-events", post(ingest))
            .with_state(p.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (p, url)
    }

    fn messages(&self) -> Vec<KvEvents> {
        self.received.lock().unwrap().clone()
    }
}

/// vLLM's array-form batch holding one `BlockStored` of `blocks` blocks of 4 tokens from `first`.
fn stored(hashes: &[u64], parent: Option<u64>, first: u32) -> Vec<u8> {
    let mut b = Vec::new();
    w::array(&mut b, 3);
    w::float(&mut b, 1.0);
    w::array(&mut b, 1);
    w::array(&mut b, 8);
    w::str(&mut b, "BlockStored");
    w::array(&mut b, hashes.len());
    for h in hashes {
        w::uint(&mut b, *h);
    }
    match parent {
        Some(p) => w::uint(&mut b, p),
        None => w::nil(&mut b),
    }
    w::array(&mut b, 4 * hashes.len());
    for t in first..first + 4 * hashes.len() as u32 {
        w::uint(&mut b, u64::from(t));
    }
    w::uint(&mut b, 4);
    w::nil(&mut b);
    w::str(&mut b, "GPU");
    w::nil(&mut b);
    w::uint(&mut b, 0);
    b
}

fn empty_batch() -> Vec<u8> {
    let mut b = Vec::new();
    w::array(&mut b, 2);
    w::float(&mut b, 1.0);
    w::array(&mut b, 0);
    b
}

fn frame(seq: u64, payload: Vec<u8>) -> ZmqMessage {
    ZmqMessage::try_from(vec![
        Bytes::new(),
        Bytes::copy_from_slice(&seq.to_be_bytes()),
        Bytes::from(payload),
    ])
    .unwrap()
}

fn keys(first: u32, blocks: usize) -> Vec<u64> {
    let tokens: Vec<u32> = (first..first + 4 * blocks as u32).collect();
    block_keys(BASE_ROOT, &tokens, 4, blocks)
}

async fn publisher() -> (PubSocket, String) {
    let mut socket = PubSocket::new();
    let endpoint = socket.bind("tcp://127.0.0.1:0").await.unwrap();
    (socket, endpoint.to_string())
}

async fn metric(agent: &Agent, line: &str) -> bool {
    let Ok(resp) = reqwest::get(format!("http://{}/metrics", agent.addr)).await else {
        return false;
    };
    resp.text()
        .await
        .unwrap_or_default()
        .lines()
        .any(|l| l == line)
}

/// A fake picker, a publisher and an agent following it (with `extra` flags), past the handshake.
async fn follow(extra: &[&str]) -> (Picker, PubSocket, Agent) {
    let (picker, url) = Picker::start().await;
    let (mut pub_socket, endpoint) = publisher().await;
    let mut args = vec![
        "--picker",
        &url,
        "--interval",
        "50ms",
        "--kv-events",
        &endpoint,
    ];
    args.extend_from_slice(extra);
    let agent = Agent::start("http://127.0.0.1:9/metrics", &args).await;
    handshake(&mut pub_socket, &agent).await;
    (picker, pub_socket, agent)
}

/// Publishes seq 0 (an empty batch) until the agent has it: a PUB socket drops what it sends
/// before the subscription reaches it.
async fn handshake(pub_socket: &mut PubSocket, agent: &Agent) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        pub_socket.send(frame(0, empty_batch())).await.unwrap();
        if metric(agent, "inferpick_agent_kv_events_messages_total 1").await {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never received seq 0"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_for(picker: &Picker, what: &str, check: impl Fn(&KvEvents) -> bool) -> KvEvents {
    let mut found = None;
    wait_until(Duration::from_secs(10), what, || {
        found = picker.messages().into_iter().find(|m| check(m));
        found.is_some()
    })
    .await;
    found.unwrap()
}

#[tokio::test]
async fn blocks_reach_the_picker_as_keys_and_an_unfillable_gap_resets_it() {
    let (picker, mut pub_socket, agent) = follow(&[]).await;
    pub_socket
        .send(frame(1, stored(&[10, 11], None, 0)))
        .await
        .unwrap();
    pub_socket
        .send(frame(2, stored(&[12], Some(11), 8)))
        .await
        .unwrap();
    let all = keys(0, 3);
    wait_for(&picker, "the three keys", |_| {
        let stored: Vec<u64> = picker
            .messages()
            .iter()
            .flat_map(|m| m.groups.iter().flat_map(|g| g.stored.clone()))
            .collect();
        stored == all
    })
    .await;
    let messages = picker.messages();
    assert!(messages[0].reset, "the first message is a reset");
    assert!(messages.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    assert!(
        messages
            .iter()
            .all(|m| m.block_size == 4 && m.state == KvStreamState::Live)
    );

    // Seqs 3 and 4 never come and there is no replay socket: the picker is reset and the
    // mirror rebuilt from what follows.
    let before = picker.messages().len();
    pub_socket
        .send(frame(5, stored(&[20], None, 100)))
        .await
        .unwrap();
    let reset = wait_for(&picker, "a reset after the gap", |m| {
        m.reset && m.seq as usize > before
    })
    .await;
    assert_eq!(reset.groups.len(), 1);
    assert_eq!(reset.groups[0].stored, keys(100, 1));
    assert!(metric(&agent, "inferpick_agent_kv_events_gaps_total 1").await);

    // The picker forgets the stream (409): the next message is a reset again.
    picker.conflicts.store(1, Ordering::SeqCst);
    let n = picker.messages().len();
    wait_for(&picker, "a reset after the 409", |m| {
        m.reset && m.seq as usize > n + 1
    })
    .await;

    // The engine's process goes away: the stream goes stale.
    drop(pub_socket);
    wait_for(&picker, "a stale heartbeat", |m| {
        m.state == KvStreamState::Stale
    })
    .await;
}

#[tokio::test]
async fn a_gap_is_filled_from_the_replay_socket() {
    let mut router = RouterSocket::new();
    let replay = router.bind("tcp://127.0.0.1:0").await.unwrap().to_string();
    // vLLM's ROUTER: [identity, "", start] in; [identity, "", seq, payload]… then seq -1 out.
    tokio::spawn(async move {
        loop {
            let request = router.recv().await.unwrap();
            let frames: Vec<Bytes> = request.into_vec();
            assert_eq!(frames.len(), 3, "identity, delimiter, start seq");
            let start = u64::from_be_bytes(frames[2][..].try_into().unwrap());
            for seq in start..=3 {
                let mut m = frame(seq, stored(&[100 + seq], None, 10 * seq as u32));
                m.push_front(frames[0].clone());
                router.send(m).await.unwrap();
            }
            let mut end = ZmqMessage::try_from(vec![
                Bytes::new(),
                Bytes::copy_from_slice(&(-1i64).to_be_bytes()),
                Bytes::new(),
            ])
            .unwrap();
            end.push_front(frames[0].clone());
            router.send(end).await.unwrap();
        }
    });
    let (picker, mut pub_socket, agent) = follow(&["--kv-events-replay", &replay]).await;
    // Seqs 1..=3 are only in the replay buffer.
    pub_socket
        .send(frame(4, stored(&[104], None, 40)))
        .await
        .unwrap();
    let mut expected: Vec<u64> = (1..=4).flat_map(|s| keys(10 * s, 1)).collect();
    expected.sort_unstable();
    wait_until(
        Duration::from_secs(10),
        "four blocks, replayed ones first",
        || {
            let mut got: Vec<u64> = picker
                .messages()
                .iter()
                .flat_map(|m| m.groups.iter().flat_map(|g| g.stored.clone()))
                .collect();
            got.sort_unstable();
            got == expected
        },
    )
    .await;
    assert!(
        metric(
            &agent,
            "inferpick_agent_kv_events_replays_total{result=\"filled\"} 1"
        )
        .await
    );
    assert!(
        picker.messages().iter().filter(|m| m.reset).count() == 1,
        "a filled gap needs no reset"
    );
}

#[tokio::test]
async fn a_hostile_publisher_changes_nothing_and_is_counted() {
    let (picker, mut pub_socket, agent) = follow(&["--kv-events-max-blocks", "100"]).await;
    // Garbage, a 100 M-element array declared in 5 bytes, a wrong frame count.
    pub_socket
        .send(frame(1, vec![0xc1, 0xff, 0x00]))
        .await
        .unwrap();
    pub_socket
        .send(frame(
            2,
            vec![
                0x92, 0xcb, 0, 0, 0, 0, 0, 0, 0, 0, 0xdd, 0x05, 0xf5, 0xe1, 0x00,
            ],
        ))
        .await
        .unwrap();
    pub_socket
        .send(ZmqMessage::from("just one frame"))
        .await
        .unwrap();
    // A flood: far more blocks than the mirror may hold.
    for i in 0..50u64 {
        let hashes: Vec<u64> = (i * 1000..i * 1000 + 100).collect();
        pub_socket
            .send(frame(3 + i, stored(&hashes, None, i as u32)))
            .await
            .unwrap();
    }
    // Polled with awaits: the agent answers its metrics on this same runtime.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !metric(&agent, "inferpick_agent_kv_events_messages_total 54").await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for every message to be counted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(metric(&agent, "inferpick_agent_kv_events_malformed_total 3").await);
    assert!(metric(&agent, "inferpick_agent_kv_events_blocks 100").await);
    assert!(
        metric(
            &agent,
            "inferpick_agent_kv_events_evicted_blocks_total 4900"
        )
        .await
    );
    assert!(picker.messages().iter().all(|m| m.key_count() <= 65_536));
}
