//! Every route and every error code, through `router(state).oneshot(…)` without a socket.

use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use http::{HeaderMap, Request, StatusCode};
use inferpick_schema::{Decision, ErrorBody, LoadReport};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::router;
use crate::config::Settings;
use crate::state::AppState;
use crate::table::tests::{MODEL, report};

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    /// Asserts the contract's error shape and returns the message.
    fn error(&self, status: u16, code: &str) -> String {
        assert_eq!(
            self.status.as_u16(),
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        let e: ErrorBody = self.json();
        assert_eq!(e.error, code, "{}", e.message);
        assert!(!e.message.is_empty());
        e.message
    }
}

async fn call(app: &Router, req: Request<Body>) -> Reply {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    Reply {
        status,
        headers,
        body,
    }
}

fn json_req(path: &str, body: &Value) -> Request<Body> {
    raw_req(path, body.to_string())
}

fn raw_req(path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path)
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap()
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

/// The TCP peer every request comes from, as the accept loop would record it.
const PEER: &str = "127.0.0.1:40000";

/// A router whose requests come from [`PEER`], which is a trusted proxy: the tests report for
/// made-up pod addresses, as a proxy pushing for a fleet does.
fn app_with(mut settings: Settings) -> (AppState, Router) {
    settings.trusted_proxies.push("127.0.0.1".parse().unwrap());
    app_from(settings, PEER)
}

/// A router whose requests come from `peer`, with `settings` as given.
fn app_from(settings: Settings, peer: &str) -> (AppState, Router) {
    let state = AppState::new(settings).unwrap();
    let peer: std::net::SocketAddr = peer.parse().unwrap();
    let app = router(state.clone()).layer(axum::Extension(axum::extract::ConnectInfo(peer)));
    (state, app)
}

fn app() -> (AppState, Router) {
    app_with(Settings::default())
}

fn pod(address: &str, waiting: u32, kv: f64) -> LoadReport {
    let mut r = report(address, 1);
    r.load.requests_waiting = Some(waiting);
    r.load.kv_cache_utilization = Some(kv);
    r
}

fn to_json(r: &LoadReport) -> Value {
    serde_json::to_value(r).unwrap()
}

async fn push(app: &Router, reports: &[LoadReport]) {
    let body: Vec<Value> = reports.iter().map(to_json).collect();
    let r = call(app, json_req("/v1/reports", &Value::Array(body))).await;
    assert_eq!(
        r.status,
        StatusCode::NO_CONTENT,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
}

/// The table as `/v1/endpoints` shows it, minus the ages (they move with the clock).
async fn table_json(app: &Router) -> Value {
    let mut v: Value = call(app, get("/v1/endpoints")).await.json();
    for e in v["endpoints"].as_array_mut().unwrap() {
        e.as_object_mut().unwrap().remove("age_ms");
        e.as_object_mut().unwrap().remove("state");
    }
    v
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "inferpick-picker-http-{name}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test]
async fn a_report_for_another_pods_address_is_403_unless_the_sender_is_a_trusted_proxy() {
    let (state, app) = app_from(Settings::default(), "10.0.0.1:40000");
    push(&app, &[pod("10.0.0.1:8000", 0, 0.1)]).await;
    let before = table_json(&app).await;
    // One forged report in a batch refuses the whole batch.
    let batch = json!([
        to_json(&pod("10.0.0.1:8000", 1, 0.2)),
        to_json(&pod("10.0.0.9:8000", 0, 0.1))
    ]);
    let r = call(&app, json_req("/v1/reports", &batch)).await;
    let message = r.error(403, "forbidden");
    assert!(message.contains("[1]."), "{message}");
    assert!(
        message.contains("10.0.0.9:8000") && message.contains("10.0.0.1"),
        "{message}"
    );
    assert_eq!(table_json(&app).await, before);
    assert!(
        state
            .render_metrics()
            .contains("inferpick_picker_reports_total{result=\"forbidden\"} 1")
    );
    // A malformed report is a 400 naming its field, whoever sends it.
    let mut malformed = pod("10.0.0.1:8000", 0, 0.1);
    malformed.endpoint.address = "no-port".into();
    let r = call(&app, json_req("/v1/reports", &to_json(&malformed))).await;
    assert!(r.error(400, "invalid_request").contains("endpoint.address"));
    // An IPv4-mapped IPv6 peer is the same IPv4 address.
    let (_, mapped) = app_from(Settings::default(), "[::ffff:10.0.0.1]:40000");
    push(&mapped, &[pod("10.0.0.1:8000", 0, 0.1)]).await;
    // A trusted proxy may report for anyone.
    let trusting = Settings {
        trusted_proxies: vec!["10.0.0.0/24".parse().unwrap()],
        ..Settings::default()
    };
    let (_, proxy) = app_from(trusting, "10.0.0.200:40000");
    push(
        &proxy,
        &[pod("10.0.0.9:8000", 0, 0.1), pod("10.0.0.10:8000", 0, 0.1)],
    )
    .await;
    // Without a known peer (the router used without `serve`), reports are refused, not trusted.
    let bare = router(AppState::new(Settings::default()).unwrap());
    let r = call(
        &bare,
        json_req("/v1/reports", &to_json(&pod("10.0.0.1:8000", 0, 0.1))),
    )
    .await;
    r.error(403, "forbidden");
}

#[tokio::test]
async fn a_push_that_would_grow_the_table_past_max_endpoints_is_503_table_full() {
    let (state, app) = app_with(Settings {
        max_endpoints: 2,
        ..Settings::default()
    });
    push(
        &app,
        &[pod("10.0.0.1:8000", 0, 0.1), pod("10.0.0.2:8000", 0, 0.1)],
    )
    .await;
    let before = table_json(&app).await;
    let r = call(
        &app,
        json_req("/v1/reports", &to_json(&pod("10.0.0.3:8000", 0, 0.1))),
    )
    .await;
    let message = r.error(503, "table_full");
    assert!(
        message.contains("--max-endpoints") && message.contains('2'),
        "{message}"
    );
    assert_eq!(table_json(&app).await, before);
    let mut update = pod("10.0.0.1:8000", 3, 0.5);
    update.seq = 2;
    push(&app, &[update]).await;
    assert!(
        state
            .render_metrics()
            .contains("inferpick_picker_reports_total{result=\"table_full\"} 1")
    );
}

#[tokio::test]
async fn reports_single_and_array_are_accepted_and_listed() {
    let (_, app) = app();
    let r = call(
        &app,
        json_req("/v1/reports", &to_json(&pod("10.0.0.1:8000", 1, 0.1))),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    push(
        &app,
        &[pod("10.0.0.2:8000", 0, 0.1), pod("10.0.0.3:8000", 0, 0.1)],
    )
    .await;
    let t: Value = call(&app, get("/v1/endpoints")).await.json();
    let eps = t["endpoints"].as_array().unwrap();
    assert_eq!(eps.len(), 3);
    assert_eq!(eps[0]["address"], "10.0.0.1:8000");
    assert_eq!(eps[0]["state"], "ready");
    assert_eq!(eps[0]["report"]["load"]["requests_waiting"], 1);
    assert_eq!(eps[0]["inflight"]["requests"], 0);
}

#[tokio::test]
async fn report_token_is_required_when_configured_and_refusals_change_nothing() {
    let dir = scratch("token");
    let token = dir.join("report-token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let (state, app) = app_with(Settings {
        report_token_file: Some(token.clone()),
        ..Settings::default()
    });
    let body = to_json(&pod("10.0.0.1:8000", 0, 0.1)).to_string();

    let none = call(&app, raw_req("/v1/reports", body.clone())).await;
    assert!(none.error(401, "unauthorized").contains("missing"));
    assert_eq!(none.headers["www-authenticate"], "Bearer");
    let wrong = Request::post("/v1/reports")
        .header("authorization", "Bearer nope")
        .body(Body::from(body.clone()))
        .unwrap();
    assert!(
        call(&app, wrong)
            .await
            .error(401, "unauthorized")
            .contains("wrong")
    );
    assert!(state.table().snapshot().is_empty());

    let right = Request::post("/v1/reports")
        .header("authorization", "Bearer s3cret")
        .body(Body::from(body.clone()))
        .unwrap();
    assert_eq!(call(&app, right).await.status, StatusCode::NO_CONTENT);
    assert_eq!(state.table().snapshot().len(), 1);

    // The token file is re-read when it changes.
    std::fs::write(&token, "rotated").unwrap();
    let f = std::fs::File::options().append(true).open(&token).unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    state.refresh_tokens();
    let old = Request::post("/v1/reports")
        .header("authorization", "Bearer s3cret")
        .body(Body::from(body.clone()))
        .unwrap();
    call(&app, old).await.error(401, "unauthorized");
    let new = Request::post("/v1/reports")
        .header("authorization", "Bearer rotated")
        .body(Body::from(body))
        .unwrap();
    assert_eq!(call(&app, new).await.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn bad_reports_are_400_naming_the_field_and_change_nothing() {
    let (_, app) = app();
    push(&app, &[pod("10.0.0.1:8000", 2, 0.3)]).await;
    let before = table_json(&app).await;

    let mut nan = to_json(&pod("10.0.0.1:8000", 0, 0.1)).to_string();
    nan = nan.replace(
        "\"kv_cache_utilization\":0.1",
        "\"kv_cache_utilization\":NaN",
    );
    assert!(nan.contains("NaN"));
    let mut negative = to_json(&pod("10.0.0.1:8000", 0, 0.1));
    negative["seq"] = json!(2);
    negative["load"]["requests_waiting"] = json!(-3);
    let mut version = to_json(&pod("10.0.0.1:8000", 0, 0.1));
    version["seq"] = json!(3);
    version["schema_version"] = json!(2);
    let mut ratio = to_json(&pod("10.0.0.9:8000", 0, 0.1));
    ratio["load"]["kv_cache_utilization"] = json!(1.5);
    let array = json!([to_json(&pod("10.0.0.5:8000", 0, 0.1)), ratio.clone()]);

    let cases: Vec<(String, &str)> = vec![
        ("{\"schema_version\": 1,".into(), "line 1"),
        (nan, "load.kv_cache_utilization"),
        (negative.to_string(), "load.requests_waiting"),
        (
            version.to_string(),
            "schema_version: 2: unknown schema version",
        ),
        (ratio.to_string(), "load.kv_cache_utilization: 1.5"),
        (array.to_string(), "[1].load.kv_cache_utilization"),
    ];
    for (body, says) in cases {
        let msg = call(&app, raw_req("/v1/reports", body))
            .await
            .error(400, "invalid_request");
        assert!(msg.contains(says), "{msg:?} lacks {says:?}");
    }
    assert_eq!(table_json(&app).await, before);
}

#[tokio::test]
async fn oversized_and_non_json_bodies_are_refused() {
    let (state, app) = app();
    let big = vec![b' '; 2 << 20];
    call(&app, raw_req("/v1/reports", big.clone()))
        .await
        .error(413, "payload_too_large");
    let declared = Request::post("/v1/reports")
        .header("content-length", big.len())
        .body(Body::from(big))
        .unwrap();
    call(&app, declared).await.error(413, "payload_too_large");
    let text = Request::post("/v1/reports")
        .header("content-type", "text/plain")
        .body(Body::from(
            to_json(&pod("10.0.0.1:8000", 0, 0.1)).to_string(),
        ))
        .unwrap();
    call(&app, text).await.error(415, "unsupported_media_type");
    assert!(state.table().snapshot().is_empty());
    let metrics = state.render_metrics();
    assert!(
        metrics.contains("inferpick_picker_reports_total{result=\"too_large\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn pick_returns_a_decision_and_counts_it_in_flight() {
    let (state, app) = app();
    push(
        &app,
        &[pod("10.0.0.1:8000", 4, 0.5), pod("10.0.0.2:8000", 0, 0.1)],
    )
    .await;
    let r = call(
        &app,
        json_req("/v1/pick", &json!({"model": MODEL, "prompt_tokens": 100})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let d: Decision = r.json();
    assert_eq!(d.endpoint, "10.0.0.2:8000");
    assert_eq!(d.fallbacks, ["10.0.0.1:8000"]);
    assert_eq!(d.policy, "inferpick");
    assert_eq!(d.pod.as_deref(), Some("pod-10.0.0.2:8000"));
    assert!(d.explain.is_none());
    let e = state
        .table()
        .snapshot()
        .get("10.0.0.2:8000")
        .unwrap()
        .inflight();
    assert_eq!((e.requests, e.prompt_tokens), (1, 100));

    // done closes it.
    let done = call(
        &app,
        json_req(
            "/v1/done",
            &json!({"decision_id": d.decision_id, "ttft_ms": 120.5}),
        ),
    )
    .await;
    assert_eq!(done.status, StatusCode::NO_CONTENT);
    assert_eq!(
        state
            .table()
            .snapshot()
            .get("10.0.0.2:8000")
            .unwrap()
            .inflight()
            .requests,
        0
    );
    call(&app, json_req("/v1/done", &json!({"decision_id": "zzz"})))
        .await
        .error(400, "invalid_request");
    call(
        &app,
        json_req(
            "/v1/done",
            &json!({"decision_id": d.decision_id, "ttft_ms": -1.0}),
        ),
    )
    .await
    .error(400, "invalid_request");

    let r = call(
        &app,
        json_req("/v1/pick?explain=true", &json!({"model": MODEL})),
    )
    .await;
    let d: Decision = r.json();
    assert_eq!(
        d.explain.unwrap()["candidates"].as_array().unwrap().len(),
        2
    );
    call(
        &app,
        json_req("/v1/pick?explain=maybe", &json!({"model": MODEL})),
    )
    .await
    .error(400, "invalid_request");
}

#[tokio::test]
async fn pick_errors_have_their_codes_and_change_nothing() {
    let (state, app) = app();
    // Empty table: the client's model name does not become a label value.
    call(&app, json_req("/v1/pick", &json!({"model": "made-up"})))
        .await
        .error(503, "no_ready_endpoint");
    assert!(!state.render_metrics().contains("made-up"));
    push(
        &app,
        &[pod("10.0.0.1:8000", 9, 0.9), pod("10.0.0.2:8000", 6, 0.5)],
    )
    .await;
    let before = table_json(&app).await;

    let msg = call(&app, json_req("/v1/pick", &json!({"model": "gpt-5"})))
        .await
        .error(404, "unknown_model");
    assert!(msg.contains("gpt-5"));
    let msg = call(
        &app,
        json_req("/v1/pick", &json!({"model": MODEL, "max_token": 5})),
    )
    .await
    .error(400, "invalid_request");
    assert!(msg.contains("max_token"), "{msg}");
    call(&app, raw_req("/v1/pick", "{not json"))
        .await
        .error(400, "invalid_request");
    let msg = call(
        &app,
        json_req("/v1/pick", &json!({"model": MODEL, "priority": "high"})),
    )
    .await
    .error(400, "invalid_request");
    assert!(msg.starts_with("priority"), "{msg}");

    let shed = call(
        &app,
        json_req("/v1/pick", &json!({"model": MODEL, "priority": -1})),
    )
    .await;
    shed.error(429, "shed");
    let retry: u64 = shed.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    assert_eq!(
        table_json(&app).await,
        before,
        "rejected picks leave the table alone"
    );

    // Nothing fresh: every endpoint not ready.
    let mut down = pod("10.0.0.1:8000", 0, 0.1);
    down.seq = 2;
    down.engine.ready = false;
    let mut down2 = pod("10.0.0.2:8000", 0, 0.1);
    down2.seq = 2;
    down2.engine.ready = false;
    push(&app, &[down, down2]).await;
    let msg = call(&app, json_req("/v1/pick", &json!({"model": MODEL})))
        .await
        .error(503, "no_ready_endpoint");
    assert!(msg.contains("2 not ready"), "{msg}");

    let m = state.render_metrics();
    for outcome in ["shed", "no_endpoint", "unknown_model", "invalid"] {
        assert!(
            m.contains(&format!("outcome=\"{outcome}\"")),
            "{outcome} missing from {m}"
        );
    }
}

#[tokio::test]
async fn stale_endpoints_are_503() {
    let (_, app) = app_with(Settings {
        max_report_age: Duration::from_nanos(1),
        ..Settings::default()
    });
    push(&app, &[pod("10.0.0.1:8000", 0, 0.1)]).await;
    let msg = call(&app, json_req("/v1/pick", &json!({"model": MODEL})))
        .await
        .error(503, "no_ready_endpoint");
    assert!(msg.contains("1 stale"), "{msg}");
}

#[tokio::test]
async fn pick_token_guards_pick_authz_and_done() {
    let dir = scratch("pick-token");
    let token = dir.join("pick-token");
    std::fs::write(&token, "p1ck").unwrap();
    let (_, app) = app_with(Settings {
        pick_token_file: Some(token),
        ..Settings::default()
    });
    push(&app, &[pod("10.0.0.1:8000", 0, 0.1)]).await;
    call(&app, json_req("/v1/pick", &json!({"model": MODEL})))
        .await
        .error(401, "unauthorized");
    call(&app, get("/v1/authz"))
        .await
        .error(401, "unauthorized");
    call(
        &app,
        json_req("/v1/done", &json!({"decision_id": uuid::Uuid::nil()})),
    )
    .await
    .error(401, "unauthorized");
    let ok = Request::post("/v1/pick")
        .header("authorization", "Bearer p1ck")
        .body(Body::from(json!({"model": MODEL}).to_string()))
        .unwrap();
    assert_eq!(call(&app, ok).await.status, StatusCode::OK);
}

#[tokio::test]
async fn authz_reads_headers_and_answers_with_the_destination_header() {
    let (state, app) = app();
    push(
        &app,
        &[
            pod("10.0.0.1:8000", 3, 0.3),
            pod("10.0.0.2:8000", 0, 0.1),
            pod("10.0.0.3:8000", 1, 0.2),
        ],
    )
    .await;
    let r = call(
        &app,
        Request::get("/v1/authz")
            .header("x-gateway-model-name", MODEL)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["x-gateway-destination-endpoint"], "10.0.0.2:8000");
    assert_eq!(
        r.headers["x-inferpick-fallbacks"],
        "10.0.0.3:8000,10.0.0.1:8000"
    );
    assert!(uuid::Uuid::parse_str(r.headers["x-inferpick-decision-id"].to_str().unwrap()).is_ok());

    // Any method, any sub-path; the model from a JSON body; a candidate subset.
    let r = call(
        &app,
        Request::put("/v1/authz/v1/chat/completions")
            .header(
                "x-gateway-destination-endpoint-subset",
                "10.0.0.1:8000, 10.0.0.3:8000",
            )
            .body(Body::from(
                json!({"model": MODEL, "messages": []}).to_string(),
            ))
            .unwrap(),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.headers["x-gateway-destination-endpoint"], "10.0.0.3:8000");

    // No model anywhere: the table's only model.
    let r = call(
        &app,
        Request::post("/v1/authz")
            .body(Body::from("not json"))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);

    let bad = Request::get("/v1/authz")
        .header("x-inferpick-priority", "urgent")
        .body(Body::empty())
        .unwrap();
    assert!(
        call(&app, bad)
            .await
            .error(400, "invalid_request")
            .contains("x-inferpick-priority")
    );
    let unknown = Request::get("/v1/authz")
        .header("x-gateway-model-name", "nope")
        .body(Body::empty())
        .unwrap();
    call(&app, unknown).await.error(404, "unknown_model");

    // Saturated pool, sheddable request.
    let mut busy: Vec<LoadReport> = (1..=3)
        .map(|i| pod(&format!("10.0.0.{i}:8000"), 8, 0.9))
        .collect();
    for r in &mut busy {
        r.seq = 2;
    }
    state.table().ingest_batch(busy, state.now()).unwrap();
    let shed = Request::get("/v1/authz")
        .header("x-inferpick-priority", "-1")
        .body(Body::empty())
        .unwrap();
    let r = call(&app, shed).await;
    r.error(429, "shed");
    assert!(r.headers.contains_key("retry-after"));
    let objective = Request::get("/v1/authz")
        .header("x-gateway-inference-objective", "chat")
        .body(Body::empty())
        .unwrap();
    assert!(
        call(&app, objective)
            .await
            .error(400, "invalid_request")
            .contains("objective")
    );
}

#[tokio::test]
async fn metrics_health_and_readiness() {
    let (_, app) = app();
    push(&app, &[pod("10.0.0.1:8000", 0, 0.1)]).await;
    call(&app, json_req("/v1/pick", &json!({"model": MODEL}))).await;
    let r = call(&app, get("/metrics")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.headers["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = String::from_utf8(r.body.to_vec()).unwrap();
    for line in [
        "inferpick_picker_decisions_total{model=\"meta-llama/Llama-3.1-8B-Instruct\",outcome=\"routed\",policy=\"inferpick\"} 1",
        "# TYPE inferpick_picker_decision_duration_seconds histogram",
        "inferpick_picker_decision_duration_seconds_bucket{le=\"0.000001\"}",
        "inferpick_picker_reports_total{result=\"accepted\"} 1",
        "inferpick_picker_endpoints{state=\"ready\"} 1",
        "inferpick_picker_endpoints{state=\"stale\"} 0",
        "inferpick_picker_report_age_seconds{endpoint=\"10.0.0.1:8000\"}",
        "inferpick_picker_inflight_estimate{endpoint=\"10.0.0.1:8000\"} 1",
        "inferpick_picker_routed_total{endpoint=\"10.0.0.1:8000\"} 1",
        "inferpick_picker_pool_saturation{model=\"meta-llama/Llama-3.1-8B-Instruct\"} 0.0",
        "inferpick_picker_info{version=\"0.1.0\",policy=\"inferpick\"} 1",
        "# EOF",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
    for family in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let name = family.split(' ').next().unwrap();
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} has no help"
        );
    }
    let classic = call(
        &app,
        Request::get("/metrics")
            .header("accept", "text/plain")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert!(
        classic.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    assert!(
        String::from_utf8_lossy(&classic.body)
            .contains("# TYPE inferpick_picker_routed_total counter")
    );

    assert_eq!(call(&app, get("/healthz")).await.status, StatusCode::OK);
    assert_eq!(call(&app, get("/readyz")).await.status, StatusCode::OK);
    call(&app, get("/v2/nothing")).await.error(404, "not_found");
}

#[tokio::test]
async fn reload_applies_a_good_file_and_keeps_the_old_config_on_a_bad_one() {
    let dir = scratch("reload");
    let file = dir.join("picker.yaml");
    std::fs::write(
        &file,
        "policy: gie\nobjectives: [{ name: batch, priority: -1 }]\n",
    )
    .unwrap();
    let settings = Settings::from_args(crate::config::Args {
        config: Some(file.clone()),
        // Flags survive a reload: the test's peer stays a trusted proxy.
        trusted_proxies: Some("127.0.0.1".into()),
        ..Default::default()
    })
    .unwrap();
    let (state, app) = app_from(settings, PEER);
    assert_eq!(state.scheduler().policy().as_str(), "gie");

    std::fs::write(&file, "policy: round-robin\n").unwrap();
    assert!(state.reload());
    assert_eq!(state.scheduler().policy().as_str(), "round-robin");
    assert!(state.render_metrics().contains("policy=\"round-robin\"} 1"));

    std::fs::write(&file, "policy: fastest\nbogus: 1\n").unwrap();
    assert!(!state.reload());
    assert_eq!(
        state.scheduler().policy().as_str(),
        "round-robin",
        "the bad file was not applied"
    );
    push(&app, &[pod("10.0.0.1:8000", 0, 0.1)]).await;
    let d: Decision = call(&app, json_req("/v1/pick", &json!({}))).await.json();
    assert_eq!(d.policy, "round-robin");
}

/// The pool saturation the metrics show for [`MODEL`].
fn pool_saturation(state: &AppState) -> f64 {
    let text = state.render_metrics();
    let prefix = format!("inferpick_picker_pool_saturation{{model=\"{MODEL}\"}} ");
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no pool saturation in\n{text}"));
    line.parse().unwrap()
}

#[tokio::test]
async fn the_saturation_gauge_shows_what_sheds() {
    let sheddable = json!({"model": MODEL, "priority": -1});
    // gie does not count its own decisions: five routed requests saturate nothing, for shedding
    // and for the gauge alike.
    let (state, gie) = app_with(Settings {
        policy: crate::scheduler::Policy::Gie,
        ..Settings::default()
    });
    push(&gie, &[pod("10.0.0.1:8000", 0, 0.1)]).await;
    for _ in 0..5 {
        call(&gie, json_req("/v1/pick", &json!({"model": MODEL}))).await;
    }
    assert_eq!(
        call(&gie, json_req("/v1/pick", &sheddable)).await.status,
        200
    );
    assert_eq!(pool_saturation(&state), 0.0);

    // inferpick counts the prompt tokens it routed into the KV estimate: two 1,000-token prompts
    // on a 10,000-token cache at 70% make it 90%, past the 80% threshold.
    let (state, app) = app();
    let mut r = pod("10.0.0.1:8000", 0, 0.7);
    r.load.kv_cache_capacity_tokens = Some(10_000);
    push(&app, &[r]).await;
    assert_eq!(pool_saturation(&state), 0.0);
    for _ in 0..2 {
        let ask = json!({"model": MODEL, "prompt_tokens": 1000});
        assert_eq!(call(&app, json_req("/v1/pick", &ask)).await.status, 200);
    }
    call(&app, json_req("/v1/pick", &sheddable))
        .await
        .error(429, "shed");
    assert_eq!(pool_saturation(&state), 1.0);
}

/// Log lines written while `f` runs on this thread.
async fn logged<F: std::future::Future<Output = ()>>(f: F) -> String {
    #[derive(Clone, Default)]
    struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    f.await;
    String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
}

#[tokio::test]
async fn refused_reports_are_logged_with_the_reason_and_counted() {
    let (state, app) = app();
    let mut bad = to_json(&pod("10.0.0.1:8000", 0, 0.1));
    bad["load"]["kv_cache_utilization"] = json!(1.7);
    let log = logged(async {
        for _ in 0..3 {
            call(&app, json_req("/v1/reports", &bad))
                .await
                .error(400, "invalid_request");
        }
    })
    .await;
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("report refused"))
        .collect();
    assert_eq!(lines.len(), 1, "a burst logs once:\n{log}");
    assert!(
        lines[0].contains("kv_cache_utilization") && lines[0].contains("127.0.0.1:40000"),
        "{}",
        lines[0]
    );
    assert!(
        state
            .render_metrics()
            .contains("inferpick_picker_reports_total{result=\"invalid\"} 3")
    );
}

fn kv_body(address: &str, seq: u64, reset: bool, stored: &[u64]) -> Value {
    json!({
        "schema_version": 1, "endpoint": address, "stream": "agent-a", "seq": seq,
        "state": "live", "block_size": 16, "reset": reset,
        "groups": [{"stored": stored, "removed": []}],
    })
}

#[tokio::test]
async fn kv_events_apply_in_order_ask_for_a_reset_on_a_gap_and_show_in_endpoints() {
    let (state, app) = app();
    // Before the endpoint's first report: 409, resync, nothing applied.
    let r = call(
        &app,
        json_req("/v1/kv-events", &kv_body("10.0.0.1:8000", 0, true, &[1])),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.json::<Value>()["resync"], true);
    push(&app, &[pod("10.0.0.1:8000", 0, 0.1)]).await;
    let r = call(
        &app,
        json_req("/v1/kv-events", &kv_body("10.0.0.1:8000", 0, true, &[1, 2])),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.json::<Value>(), json!({"next_seq": 1, "resync": false}));
    let endpoints = table_json(&app).await;
    let e = &endpoints["endpoints"][0];
    assert_eq!(e["prefix_index"], "exact", "{e}");
    assert_eq!(e["kv_events"]["blocks"], 2, "{e}");
    // seq 3 after 0: a gap → 409 with the seq expected, and the endpoint falls back.
    let r = call(
        &app,
        json_req("/v1/kv-events", &kv_body("10.0.0.1:8000", 3, false, &[9])),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.json::<Value>(), json!({"next_seq": 1, "resync": true}));
    assert_eq!(
        table_json(&app).await["endpoints"][0]["prefix_index"],
        "approximate"
    );
    assert_eq!(state.table().exact_blocks(), 2);
    // Bad bodies are 400 naming the field, and change nothing.
    let mut bad = kv_body("10.0.0.1:8000", 1, true, &[5]);
    bad["block_size"] = json!(0);
    let msg = call(&app, json_req("/v1/kv-events", &bad))
        .await
        .error(400, "invalid_request");
    assert!(msg.contains("block_size"), "{msg}");
    let msg = call(&app, raw_req("/v1/kv-events", "{\"seq\": NaN}"))
        .await
        .error(400, "invalid_request");
    assert!(!msg.is_empty());
    assert_eq!(state.table().exact_blocks(), 2);
    let metrics = String::from_utf8(call(&app, get("/metrics")).await.body.to_vec()).unwrap();
    assert!(
        metrics.contains("inferpick_picker_kv_events_total{result=\"resync\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("inferpick_picker_kv_blocks_total{change=\"stored\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("inferpick_picker_kv_stream_live{endpoint=\"10.0.0.1:8000\"} 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn kv_events_for_another_pods_address_are_403_from_an_untrusted_peer() {
    let (_, app) = app_from(Settings::default(), "10.0.0.7:4000");
    let r = call(
        &app,
        json_req("/v1/kv-events", &kv_body("10.0.0.1:8000", 0, true, &[1])),
    )
    .await;
    r.error(403, "forbidden");
}

#[tokio::test]
async fn done_with_the_engines_cached_tokens_measures_the_prefix_prediction() {
    let (_, app) = app();
    push(&app, &[pod("10.0.0.1:8000", 0, 0.1)]).await;
    let prompt = "You are a helpful assistant. ".repeat(40);
    let d: Decision = call(
        &app,
        json_req("/v1/pick", &json!({"model": MODEL, "prompt": prompt})),
    )
    .await
    .json();
    // The first pick of a prompt counts on no cached tokens; the engine says it had 320.
    let r = call(
        &app,
        json_req(
            "/v1/done",
            &json!({"decision_id": d.decision_id, "cached_tokens": 320}),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let metrics = String::from_utf8(call(&app, get("/metrics")).await.body.to_vec()).unwrap();
    assert!(
        metrics.contains("inferpick_picker_prefix_actual_tokens_total{index=\"approximate\"} 320"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "inferpick_picker_prefix_prediction_error_tokens_count{index=\"approximate\"} 1"
        ),
        "{metrics}"
    );
    // A negative count is refused, naming the field.
    let msg = call(
        &app,
        json_req(
            "/v1/done",
            &json!({"decision_id": d.decision_id, "cached_tokens": -1}),
        ),
    )
    .await
    .error(400, "invalid_request");
    assert!(msg.contains("cached_tokens"), "{msg}");
}
