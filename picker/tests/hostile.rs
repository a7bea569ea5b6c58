//! Hostile clients against a real picker on loopback: every route hit with malformed, mistyped,
//! oversized, slow and unauthenticated requests, forged and flooding reports, slowloris and idle
//! connections. Each is refused with its documented status and error code, leaves the table as it
//! was, and the picker keeps answering; memory stays bounded.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{
    InProcess, MODEL, call, connect_from, eventually, exchange, exchange_on, report, request,
    rss_bytes, start, table,
};
use inferpick_picker::Settings;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REPORT_TOKEN: &str = "report-secret";
const PICK_TOKEN: &str = "pick-secret";
const REQUEST_TIMEOUT: Duration = Duration::from_millis(300);
/// The endpoint already in the table: reported by the test from 127.0.0.1 for itself, not ready,
/// so a pick that gets through finds nothing to route to and changes nothing.
const KNOWN: &str = "127.0.0.1:18001";
/// A loopback source address listed in `--trusted-proxies`.
const PROXY: &str = "127.0.0.3";
const MAX_ENDPOINTS: usize = 20;

/// The memory test measures this process's RSS: it runs alone, the others alongside each other.
static SERIAL: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn token_files() -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("inferpick-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (report, pick) = (dir.join("report-token"), dir.join("pick-token"));
    std::fs::write(&report, REPORT_TOKEN).unwrap();
    std::fs::write(&pick, PICK_TOKEN).unwrap();
    (report, pick)
}

/// A picker with tokens, a 300 ms request timeout, a 20-endpoint cap and one trusted proxy,
/// holding [`KNOWN`].
async fn picker() -> InProcess {
    let (report_token, pick_token) = token_files();
    let p = start(Settings {
        grpc_listen: None,
        report_token_file: Some(report_token),
        pick_token_file: Some(pick_token),
        request_timeout: REQUEST_TIMEOUT,
        max_endpoints: MAX_ENDPOINTS,
        trusted_proxies: vec![PROXY.parse().unwrap()],
        max_report_age: Duration::from_secs(60),
        forget_after: Duration::from_secs(600),
        shutdown_delay: Duration::ZERO,
        ..Settings::default()
    })
    .await;
    let r = push(p.addr, &report(KNOWN, 1, false)).await;
    assert_eq!(r.status, 204, "{}", r.text());
    p
}

async fn push(addr: SocketAddr, body: &Value) -> common::Reply {
    push_from("127.0.0.1", addr, body).await
}

async fn push_from(source: &str, addr: SocketAddr, body: &Value) -> common::Reply {
    let stream = connect_from(source.parse().unwrap(), addr).await;
    let auth = format!("Bearer {REPORT_TOKEN}");
    let bytes = request(
        "POST",
        "/v1/reports",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body.to_string().as_bytes(),
    );
    exchange_on(stream, bytes).await.expect("a response")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Reports,
    Pick,
    Authz,
    AuthzRest,
    Done,
    Endpoints,
    Metrics,
    Healthz,
    Readyz,
    Unknown,
}

const ROUTES: [Route; 10] = [
    Route::Reports,
    Route::Pick,
    Route::Authz,
    Route::AuthzRest,
    Route::Done,
    Route::Endpoints,
    Route::Metrics,
    Route::Healthz,
    Route::Readyz,
    Route::Unknown,
];

impl Route {
    fn method(self) -> &'static str {
        match self {
            Route::Endpoints | Route::Metrics | Route::Healthz | Route::Readyz => "GET",
            _ => "POST",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Route::Reports => "/v1/reports",
            Route::Pick => "/v1/pick",
            Route::Authz => "/v1/authz",
            Route::AuthzRest => "/v1/authz/x",
            Route::Done => "/v1/done",
            Route::Endpoints => "/v1/endpoints",
            Route::Metrics => "/metrics",
            Route::Healthz => "/healthz",
            Route::Readyz => "/readyz",
            Route::Unknown => "/v1/nope",
        }
    }

    fn token(self) -> &'static str {
        match self {
            Route::Reports => REPORT_TOKEN,
            _ => PICK_TOKEN,
        }
    }

    /// The route's body limit (the contract's 1 MiB for reports).
    fn limit(self) -> usize {
        match self {
            Route::Pick | Route::Authz | Route::AuthzRest => 4 << 20,
            Route::Done => 64 << 10,
            _ => 1 << 20,
        }
    }

    /// A body the route would accept (with the right token).
    fn valid_body(self) -> Value {
        match self {
            Route::Reports => report(KNOWN, 99, true),
            Route::Pick => json!({"model": MODEL}),
            Route::Done => json!({"decision_id": "0190a3c4-5b6d-7e8f-9a0b-1c2d3e4f5a6b"}),
            _ => json!({"model": MODEL, "prompt": "hello"}),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Case {
    MissingToken,
    WrongToken,
    GarbledToken,
    NotBearer,
    MalformedJson,
    WrongTypes,
    NanAsString,
    InfinityAsString,
    NumberOutOfRange,
    OversizedDeclared,
    OversizedChunked,
    WrongContentType,
    SlowBody,
}

const CASES: [Case; 13] = [
    Case::MissingToken,
    Case::WrongToken,
    Case::GarbledToken,
    Case::NotBearer,
    Case::MalformedJson,
    Case::WrongTypes,
    Case::NanAsString,
    Case::InfinityAsString,
    Case::NumberOutOfRange,
    Case::OversizedDeclared,
    Case::OversizedChunked,
    Case::WrongContentType,
    Case::SlowBody,
];

/// The documented answer: status and error code (`None` for a success).
fn expected(route: Route, case: Case) -> (u16, Option<&'static str>) {
    let authz = matches!(route, Route::Authz | Route::AuthzRest);
    match route {
        Route::Unknown => (404, Some("not_found")),
        // No authentication and no body: whatever comes with the request is ignored.
        Route::Endpoints | Route::Metrics | Route::Healthz | Route::Readyz => (200, None),
        _ => match case {
            Case::MissingToken | Case::WrongToken | Case::GarbledToken | Case::NotBearer => {
                (401, Some("unauthorized"))
            }
            // authz reads the gateway's headers; a body that is not JSON is the user's, and
            // ignored: the only model in the table has no ready endpoint.
            Case::MalformedJson | Case::WrongContentType if authz => {
                (503, Some("no_ready_endpoint"))
            }
            Case::MalformedJson
            | Case::WrongTypes
            | Case::NanAsString
            | Case::InfinityAsString
            | Case::NumberOutOfRange => (400, Some("invalid_request")),
            Case::OversizedDeclared | Case::OversizedChunked => (413, Some("payload_too_large")),
            Case::WrongContentType => (415, Some("unsupported_media_type")),
            Case::SlowBody => (408, Some("request_timeout")),
        },
    }
}

/// What a bad value looks like in this route's body (or, for authz, its headers).
fn bad_body(route: Route, case: Case) -> (Vec<u8>, Vec<(&'static str, String)>) {
    let mut body = route.valid_body();
    let mut headers = Vec::new();
    let (field, header_value): (Value, &str) = match case {
        Case::MalformedJson => return (b"{\"model\": ".to_vec(), headers),
        Case::WrongTypes => (json!("many"), "high"),
        Case::NanAsString => (json!("NaN"), "NaN"),
        Case::InfinityAsString => (json!("Infinity"), "inf"),
        Case::NumberOutOfRange => {
            let text = body.to_string();
            let text = match route {
                Route::Reports => text.replace(
                    "\"kv_cache_utilization\":0.1",
                    "\"kv_cache_utilization\":1e999",
                ),
                Route::Done => text.replace('}', ",\"ttft_ms\":1e999}"),
                _ => text.replace('}', ",\"max_tokens\":1e999}"),
            };
            headers.push(("x-inferpick-priority", "1e999".to_string()));
            return (text.into_bytes(), headers);
        }
        _ => return (body.to_string().into_bytes(), headers),
    };
    match route {
        Route::Reports => {
            body["load"]["kv_cache_utilization"] = field.clone();
            if matches!(case, Case::WrongTypes) {
                body["seq"] = field;
            }
        }
        Route::Pick => body["max_tokens"] = field,
        Route::Done => body["ttft_ms"] = field,
        _ => {}
    }
    headers.push(("x-inferpick-priority", header_value.to_string()));
    (body.to_string().into_bytes(), headers)
}

/// Sends `case` to `route` and returns the response.
async fn hit(addr: SocketAddr, route: Route, case: Case) -> Option<common::Reply> {
    let good_auth = format!("Bearer {}", route.token());
    let mut headers: Vec<(&str, String)> = vec![("content-type", "application/json".into())];
    match case {
        Case::MissingToken => {}
        Case::WrongToken => headers.push(("authorization", "Bearer not-the-token".into())),
        Case::GarbledToken => {
            headers.push(("authorization", "Bearer p\u{00ef}ck-s\u{00e9}cret".into()))
        }
        Case::NotBearer => headers.push(("authorization", "Basic cGlja2VyOnNlY3JldA==".into())),
        _ => headers.push(("authorization", good_auth)),
    }
    if matches!(case, Case::WrongContentType) {
        headers[0].1 = "text/plain".into();
    }
    let (body, extra) = bad_body(route, case);
    headers.extend(extra);
    let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (method, path) = (route.method(), route.path());
    let bytes = match case {
        Case::OversizedDeclared => {
            let mut pairs = pairs.clone();
            let n = (route.limit() + 1).to_string();
            pairs.push(("content-length", &n));
            // The head alone: a refusal must not wait for a body the client never sends.
            request(method, path, &pairs, b"")
        }
        Case::OversizedChunked => {
            let mut pairs = pairs.clone();
            pairs.push(("transfer-encoding", "chunked"));
            let mut bytes = request(method, path, &pairs, b"");
            let chunk = vec![b' '; 64 << 10];
            for _ in 0..=(route.limit() / chunk.len()) {
                bytes.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                bytes.extend_from_slice(&chunk);
                bytes.extend_from_slice(b"\r\n");
            }
            bytes.extend_from_slice(b"0\r\n\r\n");
            bytes
        }
        Case::SlowBody => {
            // Declares 100 bytes, sends 10, then nothing (the connection stays open).
            let mut pairs = pairs.clone();
            pairs.push(("content-length", "100"));
            request(method, path, &pairs, &body[..10.min(body.len())])
        }
        _ => request(method, path, &pairs, &body),
    };
    exchange(addr, bytes).await
}

#[tokio::test]
async fn every_route_refuses_malformed_mistyped_oversized_slow_and_unauthenticated_requests() {
    let _shared = SERIAL.read().await;
    let p = picker().await;
    let before = table(p.addr).await;
    assert_eq!(before["endpoints"].as_array().unwrap().len(), 1);
    let mut failures = Vec::new();
    for route in ROUTES {
        for case in CASES {
            let (status, code) = expected(route, case);
            let started = Instant::now();
            match hit(p.addr, route, case).await {
                None => failures.push(format!(
                    "{route:?} {case:?}: the connection closed without a response"
                )),
                Some(r) => {
                    if r.status != status || (code.is_some() && r.code().as_deref() != code) {
                        failures.push(format!(
                            "{route:?} {case:?}: expected {status} {code:?}, got {} {}",
                            r.status,
                            r.text()
                        ));
                    }
                    if code.is_some() {
                        let message = r.json()["message"].as_str().unwrap_or("").to_string();
                        if message.is_empty() {
                            failures.push(format!("{route:?} {case:?}: no message"));
                        }
                    }
                }
            }
            if matches!(case, Case::SlowBody) && status == 408 {
                let took = started.elapsed();
                assert!(
                    took >= REQUEST_TIMEOUT && took < REQUEST_TIMEOUT * 10,
                    "{route:?}: 408 after {took:?}"
                );
            }
            assert_eq!(
                table(p.addr).await,
                before,
                "{route:?} {case:?} changed the table"
            );
            assert_eq!(call(p.addr, "GET", "/healthz", &[], b"").await.status, 200);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let metrics = call(p.addr, "GET", "/metrics", &[], b"").await.text();
    for result in ["unauthorized", "invalid", "too_large", "timeout"] {
        assert!(
            metrics.contains(&format!(
                "inferpick_picker_reports_total{{result=\"{result}\"}}"
            )),
            "{result} not counted"
        );
    }
}

#[tokio::test]
async fn a_report_claiming_another_pods_ip_is_403_and_a_trusted_proxy_may_report_for_any() {
    let _shared = SERIAL.read().await;
    let p = picker().await;
    let before = table(p.addr).await;
    // 127.0.0.2 reports for 127.0.0.1's endpoint, alone and hidden in a batch.
    for body in [
        report(KNOWN, 50, true),
        json!([report("127.0.0.2:8000", 1, true), report(KNOWN, 50, true)]),
    ] {
        let r = push_from("127.0.0.2", p.addr, &body).await;
        assert_eq!(
            (r.status, r.code().as_deref()),
            (403, Some("forbidden")),
            "{}",
            r.text()
        );
        let message = r.json()["message"].as_str().unwrap().to_string();
        assert!(
            message.contains(KNOWN) && message.contains("127.0.0.2"),
            "{message}"
        );
        assert_eq!(
            table(p.addr).await,
            before,
            "a forged report changed the table"
        );
    }
    // Its own address is fine; so is anything from the trusted proxy.
    let r = push_from("127.0.0.2", p.addr, &report("127.0.0.2:8000", 1, true)).await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = push_from(
        PROXY,
        p.addr,
        &json!([report("10.9.9.9:8000", 1, true), report(KNOWN, 2, true)]),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let listed: Vec<String> = table(p.addr).await["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["address"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        listed,
        ["10.9.9.9:8000", "127.0.0.1:18001", "127.0.0.2:8000"]
    );
    let metrics = call(p.addr, "GET", "/metrics", &[], b"").await.text();
    assert!(metrics.contains("inferpick_picker_reports_total{result=\"forbidden\"} 2"));
}

#[tokio::test]
async fn a_flood_of_made_up_endpoints_stops_at_max_endpoints() {
    let _shared = SERIAL.read().await;
    let p = picker().await;
    let batch = |from: usize, n: usize| -> Value {
        Value::Array(
            (from..from + n)
                .map(|i| report(&format!("10.66.0.{i}:8000"), 1, true))
                .collect(),
        )
    };
    // KNOWN + 2 × 8 = 17; the next 8 would make 25 > 20: refused whole.
    for b in 0..2 {
        let r = push_from(PROXY, p.addr, &batch(b * 8, 8)).await;
        assert_eq!(r.status, 204, "{}", r.text());
    }
    let full = table(p.addr).await;
    for flood in 0..20 {
        let r = push_from(PROXY, p.addr, &batch(100 + flood * 8, 8)).await;
        assert_eq!(
            (r.status, r.code().as_deref()),
            (503, Some("table_full")),
            "{}",
            r.text()
        );
        assert!(r.text().contains("--max-endpoints"), "{}", r.text());
    }
    assert_eq!(table(p.addr).await, full);
    // What fits still goes in, and known endpoints keep updating at the cap.
    let r = push_from(PROXY, p.addr, &batch(16, 3)).await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = push_from(PROXY, p.addr, &batch(19, 1)).await;
    assert_eq!(r.code().as_deref(), Some("table_full"), "{}", r.text());
    let r = push(p.addr, &report(KNOWN, 2, true)).await;
    assert_eq!(r.status, 204, "{}", r.text());
    let t = table(p.addr).await;
    assert_eq!(t["endpoints"].as_array().unwrap().len(), MAX_ENDPOINTS);
    let metrics = call(p.addr, "GET", "/metrics", &[], b"").await.text();
    assert!(metrics.contains("inferpick_picker_reports_total{result=\"table_full\"} 21"));
}

/// Reads until the server closes the connection; how long that took, or `None` if it stayed
/// open for `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at((started + within).into(), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
            Err(_) => return None,
        }
    }
}

#[tokio::test]
async fn a_slowloris_client_dribbling_its_request_head_is_disconnected() {
    let _shared = SERIAL.read().await;
    let p = picker().await;
    // From the first byte (while the server still tells HTTP/1 from HTTP/2) and after a whole
    // request line.
    for prefix in ["", "POST /v1/reports HTTP/1.1\r\nhost: picker\r\n"] {
        let stream = TcpStream::connect(p.addr).await.unwrap();
        let (mut read, mut write) = stream.into_split();
        let started = Instant::now();
        let dribble = tokio::spawn(async move {
            write.write_all(prefix.as_bytes()).await?;
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            for byte in b"x-slow-header-that-never-ends: ".iter().cycle() {
                tick.tick().await;
                write.write_all(&[*byte]).await?;
            }
            Ok::<_, std::io::Error>(())
        });
        let mut buf = [0u8; 256];
        let closed = loop {
            match tokio::time::timeout(Duration::from_secs(5), read.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break Some(started.elapsed()),
                Ok(Ok(_)) => {}
                Err(_) => break None,
            }
        };
        dribble.abort();
        let took = closed.expect("a dribbling client kept its connection for 5 s");
        assert!(
            took >= REQUEST_TIMEOUT / 2 && took < REQUEST_TIMEOUT * 5,
            "closed after {took:?}"
        );
    }
    assert_eq!(call(p.addr, "GET", "/healthz", &[], b"").await.status, 200);
}

#[tokio::test]
async fn many_idle_connections_are_closed_after_the_request_timeout() {
    let _shared = SERIAL.read().await;
    let p = picker().await;
    let mut idle = Vec::new();
    for i in 0..100 {
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        if i % 2 == 1 {
            // A keep-alive request answered, then nothing.
            s.write_all(b"GET /healthz HTTP/1.1\r\nhost: picker\r\n\r\n")
                .await
                .unwrap();
        }
        idle.push(s);
    }
    let closed = futures::future::join_all(
        idle.iter_mut()
            .map(|s| closed_within(s, REQUEST_TIMEOUT * 10)),
    )
    .await;
    let open = closed.iter().filter(|c| c.is_none()).count();
    assert_eq!(
        open, 0,
        "{open} of 100 idle connections were still open after 3 s"
    );
    assert_eq!(call(p.addr, "GET", "/healthz", &[], b"").await.status, 200);
}

#[tokio::test]
async fn memory_stays_bounded_over_200_oversized_and_slow_requests() {
    let _alone = SERIAL.write().await;
    let p = picker().await;
    let round = |n: usize| {
        let addr = p.addr;
        async move {
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..n {
                let (route, case) = match i % 4 {
                    0 => (Route::Reports, Case::OversizedChunked),
                    1 => (Route::Pick, Case::OversizedDeclared),
                    2 => (Route::Reports, Case::SlowBody),
                    _ => (Route::Pick, Case::SlowBody),
                };
                tasks.spawn(async move {
                    let r = hit(addr, route, case).await.expect("a response");
                    assert_eq!(r.status, expected(route, case).0, "{}", r.text());
                });
                if tasks.len() >= 50 {
                    tasks.join_next().await.unwrap().unwrap();
                }
            }
            while let Some(r) = tasks.join_next().await {
                r.unwrap();
            }
        }
    };
    // Warm-up: allocator arenas, the runtime's worker threads, lazily built state.
    round(40).await;
    let before = rss_bytes();
    round(200).await;
    let after = rss_bytes();
    let growth = after.saturating_sub(before);
    eprintln!(
        "RSS before {:.1} MiB, after {:.1} MiB, growth {:.1} MiB",
        before as f64 / (1 << 20) as f64,
        after as f64 / (1 << 20) as f64,
        growth as f64 / (1 << 20) as f64
    );
    assert!(
        growth < 32 << 20,
        "RSS grew by {growth} bytes over 200 refused requests"
    );
    assert!(
        eventually(Duration::from_secs(2), || async {
            call(p.addr, "GET", "/healthz", &[], b"").await.status == 200
        })
        .await
    );
}
