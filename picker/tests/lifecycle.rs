//! Shutdown of an in-process picker with an ext_proc stream open: gRPC health and /readyz drop
//! first, the listeners stop accepting after the shutdown delay, the open stream still completes,
//! and only then does `serve` return.

mod common;

use std::time::Duration;

use common::{MODEL, call, eventually, free_port, h2, report, request, start};
use envoy_types::pb::envoy::config::core::v3::{HeaderMap as EnvoyHeaders, HeaderValue};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response;
use envoy_types::pb::envoy::service::ext_proc::v3::{HttpHeaders, ProcessingRequest};
use inferpick_picker::Settings;
use tokio::net::TcpStream;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const ENDPOINT: &str = "127.0.0.1:18001";
const EXT_PROC: &str = "envoy.service.ext_proc.v3.ExternalProcessor";

fn headers(pairs: &[(&str, &str)], request: bool) -> ProcessingRequest {
    let headers = HttpHeaders {
        headers: Some(EnvoyHeaders {
            headers: pairs
                .iter()
                .map(|(k, v)| HeaderValue {
                    key: k.to_string(),
                    raw_value: v.as_bytes().to_vec(),
                    ..HeaderValue::default()
                })
                .collect(),
        }),
        end_of_stream: true,
        ..HttpHeaders::default()
    };
    ProcessingRequest {
        request: Some(if request {
            Request::RequestHeaders(headers)
        } else {
            Request::ResponseHeaders(headers)
        }),
        ..ProcessingRequest::default()
    }
}

#[tokio::test]
async fn shutdown_turns_grpc_health_not_serving_then_drains_an_open_ext_proc_stream() {
    let grpc = free_port();
    let mut picker = start(Settings {
        grpc_listen: Some(grpc),
        shutdown_delay: Duration::from_secs(1),
        drain_timeout: Duration::from_secs(20),
        max_report_age: Duration::from_secs(60),
        ..Settings::default()
    })
    .await;
    let auth = [("content-type", "application/json")];
    let pushed = common::exchange(
        picker.addr,
        request(
            "POST",
            "/v1/reports",
            &auth,
            report(ENDPOINT, 1, true).to_string().as_bytes(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(pushed.status, 204, "{}", pushed.text());

    let origin: http::Uri = format!("http://{grpc}").parse().unwrap();
    let connection = h2(TcpStream::connect(grpc).await.unwrap()).await;
    let health = HealthClient::with_origin(connection.clone(), origin.clone());
    let status = |service: &str| {
        let mut health = health.clone();
        let service = service.to_string();
        async move {
            health
                .check(HealthCheckRequest { service })
                .await
                .map(|r| r.into_inner().status)
                .ok()
        }
    };
    assert_eq!(status(EXT_PROC).await, Some(ServingStatus::Serving as i32));

    // An ext_proc stream: decided on its request headers, then left open (the LLM is answering).
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(headers(&[("x-gateway-model-name", MODEL)], true))
        .await
        .unwrap();
    let mut ext_proc = ExternalProcessorClient::with_origin(connection.clone(), origin);
    let mut responses = ext_proc
        .process(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let decided = responses.message().await.unwrap().unwrap();
    assert!(
        matches!(decided.response, Some(Response::RequestHeaders(_))),
        "{decided:?}"
    );

    picker.shutdown();
    for service in ["", EXT_PROC] {
        assert!(
            eventually(Duration::from_secs(5), || async {
                status(service).await == Some(ServingStatus::NotServing as i32)
            })
            .await,
            "gRPC health of {service:?} never turned NOT_SERVING"
        );
    }
    assert_eq!(
        call(picker.addr, "GET", "/readyz", &[], b"").await.status,
        503
    );
    // After the shutdown delay neither listener accepts; the stream is still open.
    assert!(
        eventually(Duration::from_secs(5), || async {
            TcpStream::connect(grpc).await.is_err()
                && TcpStream::connect(picker.addr).await.is_err()
        })
        .await,
        "still accepting connections"
    );
    assert!(!picker.is_finished(), "serve returned with a stream open");

    // The response comes back through the proxy; the stream ends normally.
    tx.send(headers(&[(":status", "200")], false))
        .await
        .unwrap();
    let echoed = responses.message().await.unwrap().unwrap();
    assert!(
        matches!(echoed.response, Some(Response::ResponseHeaders(_))),
        "{echoed:?}"
    );
    drop(tx);
    assert!(responses.message().await.unwrap().is_none());
    drop(health);
    drop(ext_proc);
    drop(connection);
    assert!(
        eventually(Duration::from_secs(10), || async { picker.is_finished() }).await,
        "serve did not return once the stream was done"
    );
}

#[tokio::test]
async fn a_request_still_in_flight_at_the_drain_timeout_is_cut_and_serve_returns() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut picker = start(Settings {
        grpc_listen: None,
        request_timeout: Duration::from_secs(30),
        shutdown_delay: Duration::ZERO,
        drain_timeout: Duration::from_millis(300),
        ..Settings::default()
    })
    .await;
    // A body that never finishes: only the drain timeout ends it.
    let mut stuck = TcpStream::connect(picker.addr).await.unwrap();
    stuck
        .write_all(b"POST /v1/pick HTTP/1.1\r\nhost: picker\r\ncontent-length: 100\r\n\r\n{\"mo")
        .await
        .unwrap();
    // Connections are accepted in arrival order: once a later one is answered, this one is
    // being served.
    assert_eq!(
        call(picker.addr, "GET", "/healthz", &[], b"").await.status,
        200
    );
    let started = std::time::Instant::now();
    picker.shutdown();
    assert!(
        eventually(Duration::from_secs(5), || async { picker.is_finished() }).await,
        "serve did not return at the drain timeout"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "returned after {took:?}"
    );
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(2), stuck.read_to_end(&mut rest)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the stuck connection was not closed: {read:?} {}",
        String::from_utf8_lossy(&rest)
    );
}
