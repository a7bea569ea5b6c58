//! Hostile and broken clients of the agent's own listener: every route, unknown paths, wrong
//! methods, oversized heads, a slowloris head dribble, silent and idle connections. Each gets a
//! clear answer or a closed connection, and the agent keeps its schedule (`seq` keeps advancing).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use inferpick_schema::{ErrorBody, LoadReport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const VLLM: &str = "vllm:num_requests_waiting{model_name=\"m\"} 2\nvllm:num_requests_running{model_name=\"m\"} 1\n";

/// An agent on a 50 ms schedule whose listener times requests out after `request_timeout`.
async fn agent(engine: &FakeEngine, request_timeout: &str) -> Agent {
    let agent = Agent::start(
        &engine.url(),
        &["--interval", "50ms", "--request-timeout", request_timeout],
    )
    .await;
    agent
        .wait_for_report(Duration::from_secs(10), "a first report", |_| true)
        .await;
    agent
}

/// Waits until the agent has published reports past `seq`: its schedule is intact.
async fn still_on_schedule(agent: &Agent, seq: u64) {
    agent
        .wait_for_report(Duration::from_secs(10), &format!("seq past {seq}"), |r| {
            r.seq > seq + 2
        })
        .await;
}

async fn current_seq(agent: &Agent) -> u64 {
    agent.report().await.expect("a report").seq
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// What a raw client saw: the response's first line, or that the server closed the connection.
#[derive(Debug, PartialEq)]
enum Seen {
    Status(String),
    Closed,
}

/// Reads until a response's head is in or the connection closes, for at most `within`.
async fn read_answer(stream: &mut TcpStream, within: Duration) -> Seen {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => panic!(
                "neither an answer nor a close within {within:?}; got {:?}",
                String::from_utf8_lossy(&got)
            ),
            Ok(Err(_)) => 0, // reset: closed
            Ok(Ok(n)) => n,
        };
        if n == 0 {
            return match got.is_empty() {
                true => Seen::Closed,
                false => Seen::Status(first_line(&got)),
            };
        }
        got.extend_from_slice(&buf[..n]);
        if got.windows(4).any(|w| w == b"\r\n\r\n") {
            return Seen::Status(first_line(&got));
        }
    }
}

fn first_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Sends `request` on a fresh connection and reads the answer.
async fn raw(addr: SocketAddr, request: &[u8]) -> Seen {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // A server that closes early may reset the rest of a large write; the answer still counts.
    let _ = stream.write_all(request).await;
    read_answer(&mut stream, Duration::from_secs(10)).await
}

/// Waits until the server closes `stream`, asserting it sends no response first.
async fn closed_by_server(stream: &mut TcpStream, within: Duration) {
    assert_eq!(read_answer(stream, within).await, Seen::Closed);
}

#[tokio::test]
async fn every_route_and_bad_paths_and_methods_get_clear_answers() {
    let engine = FakeEngine::start(Behavior::Serve(VLLM.into())).await;
    let agent = agent(&engine, "2s").await;
    let seq = current_seq(&agent).await;
    let http = client();
    let base = format!("http://{}", agent.addr);

    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(
        metrics.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    assert!(
        metrics
            .text()
            .await
            .unwrap()
            .contains("inferpick_agent_scrapes_total")
    );
    let healthz = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(healthz.status(), 200);
    assert_eq!(healthz.text().await.unwrap(), "ok\n");
    // The same port speaks HTTP/2 (prior knowledge) too.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(h2.version(), reqwest::Version::HTTP_2);
    assert_eq!(h2.status(), 200);
    let readyz = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(readyz.status(), 200);
    let report = http.get(format!("{base}/v1/report")).send().await.unwrap();
    assert_eq!(report.status(), 200);
    report
        .json::<LoadReport>()
        .await
        .unwrap()
        .validate()
        .unwrap();

    let unknown = http
        .get(format!("{base}/v1/reports/../../etc/passwd?x=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let body: ErrorBody = unknown.json().await.unwrap();
    assert_eq!(body.error, "not_found");
    assert!(body.message.contains("/v1/report"), "{}", body.message);

    for (method, path) in [
        (reqwest::Method::POST, "/v1/report"),
        (reqwest::Method::DELETE, "/metrics"),
        (reqwest::Method::PUT, "/readyz"),
        (reqwest::Method::PATCH, "/healthz"),
    ] {
        let resp = http
            .request(method.clone(), format!("{base}{path}"))
            .body(vec![b'x'; 256 * 1024])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 405, "{method} {path}");
        let body: ErrorBody = resp.json().await.unwrap();
        assert_eq!(body.error, "method_not_allowed", "{method} {path}");
        assert!(
            body.message.contains(method.as_str()) && body.message.contains(path),
            "{}",
            body.message
        );
    }

    // Not HTTP at all, and a request line hyper cannot parse: 400 or a closed connection.
    for junk in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n"[..],
        b"GET /metrics HTTP/9.9\r\n\r\n",
        b"GET\x00/metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        match raw(agent.addr, junk).await {
            Seen::Closed => {}
            Seen::Status(line) => assert!(line.contains(" 400 "), "{junk:?} got {line}"),
        }
    }
    still_on_schedule(&agent, seq).await;
}

#[tokio::test]
async fn oversized_request_heads_are_refused() {
    let engine = FakeEngine::start(Behavior::Serve(VLLM.into())).await;
    let agent = agent(&engine, "2s").await;
    let seq = current_seq(&agent).await;

    let huge_header = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(256 * 1024)
    );
    let huge_path = format!(
        "GET /{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "p".repeat(256 * 1024)
    );
    let many_headers = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\n{}\r\n",
        (0..1000)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    for request in [huge_header, huge_path, many_headers] {
        match raw(agent.addr, request.as_bytes()).await {
            Seen::Closed => {}
            Seen::Status(line) => assert!(
                line.contains(" 431 ") || line.contains(" 414 ") || line.contains(" 400 "),
                "{}… got {line}",
                &request[..40]
            ),
        }
    }
    // A modest head still works on the same listener.
    assert!(matches!(
        raw(agent.addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await,
        Seen::Status(line) if line.contains(" 200 ")
    ));
    still_on_schedule(&agent, seq).await;
}

#[tokio::test]
async fn slowloris_head_dribble_is_disconnected_within_the_request_timeout() {
    let engine = FakeEngine::start(Behavior::Serve(VLLM.into())).await;
    let agent = agent(&engine, "300ms").await;
    let seq = current_seq(&agent).await;

    // HTTP/1: a header line every 50 ms, never the blank line that ends the head.
    let mut dribble = TcpStream::connect(agent.addr).await.unwrap();
    dribble
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut closed = false;
    for i in 0..200 {
        let line = format!("X-Slow-{i}: y\r\n");
        if dribble.write_all(line.as_bytes()).await.is_err() {
            closed = true;
            break;
        }
        let mut byte = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(50), dribble.read(&mut byte)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(_)) => {
                // hyper may answer 408 before closing; that is a clear answer too.
                closed = true;
                break;
            }
            Err(_) => {}
        }
    }
    assert!(closed, "a dribbled head was still open after 10 s");
    // It was the timeout that closed it, not the cap on head size.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed only after {:?}",
        started.elapsed()
    );

    // A client that connects and says nothing, and one that stalls inside the HTTP/2 preface.
    let mut silent = TcpStream::connect(agent.addr).await.unwrap();
    let mut half_preface = TcpStream::connect(agent.addr).await.unwrap();
    half_preface.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    closed_by_server(&mut silent, Duration::from_secs(5)).await;
    closed_by_server(&mut half_preface, Duration::from_secs(5)).await;
    still_on_schedule(&agent, seq).await;
}

#[tokio::test]
async fn many_idle_connections_are_closed_and_the_listener_recovers() {
    let engine = FakeEngine::start(Behavior::Serve(VLLM.into())).await;
    let agent = agent(&engine, "300ms").await;
    let seq = current_seq(&agent).await;

    // More idle connections than the listener serves at once.
    let mut idle = Vec::new();
    for _ in 0..(inferpick_agent::listener::MAX_CONNECTIONS + 50) {
        idle.push(TcpStream::connect(agent.addr).await.unwrap());
    }
    // A keep-alive connection that made one request and then idles.
    let mut kept = TcpStream::connect(agent.addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_answer(&mut kept, Duration::from_secs(5)).await;
    assert!(
        matches!(&answer, Seen::Closed)
            || matches!(&answer, Seen::Status(l) if l.contains(" 200 ")),
        "{answer:?}"
    );
    for stream in &mut idle {
        closed_by_server(stream, Duration::from_secs(10)).await;
    }
    if answer != Seen::Closed {
        let mut rest = [0u8; 64];
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match kept.read(&mut rest).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "an idle keep-alive connection stayed open");
    }
    // Once they are gone the listener serves again.
    let healthz = client()
        .get(format!("http://{}/healthz", agent.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(healthz.status(), 200);
    still_on_schedule(&agent, seq).await;
}

#[tokio::test]
async fn stopping_fails_readyz_at_once_and_pushes_a_last_not_ready_report() {
    let engine = FakeEngine::start(Behavior::Serve(VLLM.into())).await;
    let picker = FakePicker::start().await;
    // A picker that never answers holds the last push open for its full second, long enough
    // to watch /readyz fail meanwhile.
    let hanging = FakePicker::start_hanging().await;
    let pickers = format!("{},{}", picker.url(), hanging.url());
    // At a 1 s interval a push may take 2 s, so only the 1 s bound on the last push ends it.
    let mut agent = Agent::start(&engine.url(), &["--interval", "1s", "--picker", &pickers]).await;
    wait_until(
        Duration::from_secs(10),
        "ready reports at the picker",
        || picker.last().is_some_and(|r| r.engine.ready),
    )
    .await;
    let readyz = format!("http://{}/readyz", agent.addr);
    assert_eq!(client().get(&readyz).send().await.unwrap().status(), 200);

    let stopped_at = Instant::now();
    agent.signal_stop();
    // The stop signal crosses a task; /readyz must fail well inside the last push's second.
    let http = client();
    let body: ErrorBody = loop {
        let resp = http.get(&readyz).send().await.unwrap();
        if resp.status() == 503 {
            break resp.json().await.unwrap();
        }
        assert!(
            stopped_at.elapsed() < Duration::from_millis(500),
            "/readyz still {} after {:?}",
            resp.status(),
            stopped_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(body.error, "not_ready");
    assert_eq!(body.message, "agent shutting down");

    tokio::time::timeout(Duration::from_secs(10), &mut agent.task)
        .await
        .expect("the agent stops")
        .unwrap()
        .unwrap();
    let took = stopped_at.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(5),
        "stopping took {took:?} with a hanging picker; the last push is bounded by 1 s"
    );
    let last = picker.last().unwrap();
    assert!(!last.engine.ready);
    assert_eq!(last.engine.error.as_deref(), Some("agent shutting down"));
    let seqs = picker.seqs();
    assert!(seqs.windows(2).all(|w| w[1] > w[0]), "{seqs:?}");
}
